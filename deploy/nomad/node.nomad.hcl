# The rexray CSI node plugin for Nomad: on every client, privileged (it attaches, formats and
# mounts), with /dev from the host for the attached EBS devices.
job "rexray-csi-node" {
  datacenters = ["dc1"]
  type        = "system"

  group "node" {
    task "plugin" {
      driver = "docker"

      config {
        image        = "rexray/rexray:0.1.0"
        args         = ["service", "start", "-f", "--nopid"]
        privileged   = true
        network_mode = "host"

        mount {
          type     = "bind"
          source   = "/dev"
          target   = "/dev"
          readonly = false
        }

        mount {
          type     = "bind"
          source   = "/var/lib/rexray-csi-node"
          target   = "/var/lib/rexray"
          readonly = false
        }
      }

      env {
        CSI_ENDPOINT       = "unix:///csi/csi.sock"
        CSI_MODE           = "node"
        LIBSTORAGE_SERVICE = "ebs"
        REXRAY_LOGLEVEL    = "info"
      }

      csi_plugin {
        id        = "ebs.csi.rexray.io"
        type      = "node"
        mount_dir = "/csi"
      }

      resources {
        cpu    = 100
        memory = 64
      }
    }
  }
}
