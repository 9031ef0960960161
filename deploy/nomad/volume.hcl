# A volume for `nomad volume create deploy/nomad/volume.hcl`: 10 GiB, gp3, ext4, written by one
# allocation at a time. Parameters are rexray's volume options.
id        = "data"
name      = "data"
type      = "csi"
plugin_id = "ebs.csi.rexray.io"

capacity_min = "10GiB"
capacity_max = "10GiB"

capability {
  access_mode     = "single-node-writer"
  attachment_mode = "file-system"
}

mount_options {
  fs_type = "ext4"
}

parameters {
  volumeType = "gp3"
}
