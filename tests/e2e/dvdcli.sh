#!/usr/bin/env bash
# Real-Docker end-to-end scenario for the dvdcli mode: what Mesos' docker/volume isolator does
# (dvdcli mount per container, one dvdcli unmount), alongside a Docker container using the same
# volume through the same daemon.
#
# Needs root. Uses the helpers of tests/e2e/lib.sh; run by tests/cli_dvdcli.rs (CI or
# REXRAY_E2E=1), or directly:
#
#     cargo build && bash tests/e2e/dvdcli.sh
set -uo pipefail
# shellcheck source=tests/e2e/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

e2e_init dvdcli
ensure_docker
ensure_image "$E2E_IMAGE"

IMG=$E2E_IMAGE
DRIVER=rexray-dvd-e2e
VFS_ROOT=$E2E_TMP/vfs
CONFIG=$E2E_TMP/rexray.yml
V=rxdvd-v1
C=rxdvd-c1
track_container "$C"
track_volume "$V"

cat >"$CONFIG" <<EOF
rexray:
  logLevel: debug
  modules:
    default-docker:
      disabled: true
    e2e:
      type: docker
      host: unix:///run/docker/plugins/$DRIVER.sock
      libstorage:
        service: vfs
libstorage:
  server:
    services:
      vfs:
        driver: vfs
vfs:
  root: $VFS_ROOT
EOF

# Mesos finds `dvdcli` on PATH: a symlink to the daemon binary.
mkdir -p "$E2E_TMP/bin"
ln -sf "$REXRAY_BIN" "$E2E_TMP/bin/dvdcli"
DVDCLI=$E2E_TMP/bin/dvdcli
ARGS=(--volumedriver="$DRIVER" --volumename="$V")

step "start the daemon"
start_daemon "$DRIVER" "$CONFIG"
e2e_preclean

step "Mesos mounts for a first container (implicit create with options)"
assert_ok "$DVDCLI" mount "${ARGS[@]}" --volumeopts=size=1,mode=0755
path=$OUT
assert_eq "$path" "$VFS_ROOT/$V" "mountpoint printed on stdout"
assert_contains "$ERR" "level=info" "dvdcli log on stderr"
check "the mountpoint exists" test -d "$path"
check "write into the volume" sh -c "echo from-mesos >'$path/data.txt'"

step "Mesos mounts again for a second container (same path)"
assert_ok "$DVDCLI" mount "${ARGS[@]}"
assert_eq "$OUT" "$path" "second mount"
assert_ok "$DVDCLI" path "${ARGS[@]}"
assert_eq "$OUT" "$path" "dvdcli path"
assert_ok "$DVDCLI" get "${ARGS[@]}"
assert_eq "$OUT" "$V" "dvdcli get"

step "a Docker container mounts the same volume and reads the data"
assert_ok docker run -d --name "$C" --mount "type=volume,src=$V,dst=/data,volume-driver=$DRIVER" "$IMG" sleep 600
assert_ok docker exec "$C" cat /data/data.txt
assert_eq "$OUT" "from-mesos" "data seen by the container"
assert_holders "$V" 2

step "one unmount (Mesos' last container ended): still mounted for the Docker container"
assert_ok "$DVDCLI" unmount "${ARGS[@]}"
assert_eq "$OUT" "" "unmount prints nothing"
assert_holders "$V" 1
assert_ok "$DVDCLI" path "${ARGS[@]}"
assert_eq "$OUT" "$path" "still mounted"
assert_ok docker exec "$C" cat /data/data.txt
assert_eq "$OUT" "from-mesos" "the container still reads it"

step "the last holder out unmounts it"
assert_ok docker rm -f "$C"
assert_holders "$V" 0
assert_ok "$DVDCLI" path "${ARGS[@]}"
assert_eq "$OUT" "" "dvdcli path of an unmounted volume prints nothing"

step "Mesos' failure paths"
assert_fails "$DVDCLI" mount --volumedriver="$DRIVER" --volumename=rxdvd-missing --explicitcreate
assert_eq "$OUT" "" "no mountpoint for --explicitcreate of a missing volume"
run "$DVDCLI" get --volumedriver="$DRIVER" --volumename=rxdvd-missing
check "--explicitcreate created nothing" test "$RC" -ne 0
assert_fails "$DVDCLI" mount "${ARGS[@]}" --volumeopts=size
assert_contains "$ERR" "expected KEY=VALUE" "malformed --volumeopts"
assert_fails env DVDCLI_PLUGIN_WAIT=0 "$DVDCLI" mount --volumedriver=rxdvd-no-such-plugin --volumename=x
assert_contains "$ERR" "plugin not found" "missing plugin"

step "remove (through Docker, which forgets it too)"
assert_ok docker volume rm "$V"
assert_fails "$DVDCLI" get "${ARGS[@]}"
check "the volume directory is gone" test ! -e "$VFS_ROOT/$V"
E2E_VOLUMES_CLEAN=1
