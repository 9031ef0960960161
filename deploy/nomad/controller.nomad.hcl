# The rexray CSI controller plugin for Nomad: one instance, on the ebs service. AWS credentials
# come from the client's instance role, or from EBS_ACCESSKEY / EBS_SECRETKEY in env below.
job "rexray-csi-controller" {
  datacenters = ["dc1"]
  type        = "service"

  group "controller" {
    count = 1

    task "plugin" {
      driver = "docker"

      config {
        image = "rexray/rexray:0.1.0"
        args  = ["service", "start", "-f", "--nopid"]
      }

      env {
        CSI_ENDPOINT       = "unix:///csi/csi.sock"
        CSI_MODE           = "controller"
        LIBSTORAGE_SERVICE = "ebs"
        REXRAY_LOGLEVEL    = "info"
      }

      csi_plugin {
        id        = "ebs.csi.rexray.io"
        type      = "controller"
        mount_dir = "/csi"
      }

      resources {
        cpu    = 100
        memory = 64
      }
    }
  }
}
