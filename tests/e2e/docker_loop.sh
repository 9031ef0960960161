#!/usr/bin/env bash
# Real-Docker end-to-end scenarios for the `loop` backend (sparse image files on loop devices).
#
#     cargo build && bash tests/e2e/docker_loop.sh
#
# Needs root and loop devices. Checks what only a block backend has: a sparse image per volume,
# one loop device and one mount however many containers use it, format once, the size a container
# sees, per-volume fsType and data-directory owner, and that no loop device or mount is left
# behind when no container uses a volume — including after a kill -9 of the daemon.
set -uo pipefail
# shellcheck source=tests/e2e/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

V1=rxe2e-loop1 V2=rxe2e-loop2 V3=rxe2e-loop3 V4=rxe2e-loop4 V5=rxe2e-loop5 V6=rxe2e-loop6
C1=rxe2e-lc1 C2=rxe2e-lc2

# loop_devices IMAGE: the loop devices backed by IMAGE (empty when none).
loop_devices() { losetup -n -O NAME -j "$1" 2>/dev/null; }

# rexray_cli ARGS…: the CLI against this run's daemon (through its admin socket).
rexray_cli() { env REXRAY_HOME="$E2E_REXRAY_HOME" "$REXRAY_BIN" "$@" -c "$CONFIG"; }

# has_cap_sys_resource: whether this shell (and the daemon it starts) has CAP_SYS_RESOURCE.
has_cap_sys_resource() { (( 16#$(awk '/^CapEff/ {print $2}' /proc/self/status) & (1 << 24) )); }

# df_kib VOLUME: the size in KiB of /data as a container sees it.
df_kib() { docker run --rm -v "$1:/data" "$IMG" sh -c "df -k /data | tail -n 1" | awk '{print $2}'; }

loop_scenarios() {
    step "create -o size=1: a sparse 1 GiB image, no loop device yet"
    assert_ok docker volume create -d "$DRIVER" -o size=1 "$V1"
    check "image $LOOP_ROOT/$V1.img exists" test -f "$LOOP_ROOT/$V1.img"
    assert_eq "$(stat -c %s "$LOOP_ROOT/$V1.img")" "1073741824" "image size in bytes"
    assert_eq "$(du -k "$LOOP_ROOT/$V1.img" | cut -f1)" "0" "disk used by the sparse image (KiB)"
    assert_eq "$(loop_devices "$LOOP_ROOT/$V1.img")" "" "loop devices before the first mount"
    assert_ok docker volume inspect --format '{{.Scope}}' "$V1"
    assert_eq "$OUT" "local" "inspect .Scope"

    step "a container sees a 1 GiB ext4 filesystem and its data outlives the container"
    kib=$(df_kib "$V1")
    check "df inside the container shows about 1 GiB ($kib KiB)" test "${kib:-0}" -gt 900000 -a "${kib:-0}" -le 1048576
    assert_eq "$(blkid -p -s TYPE -o value "$LOOP_ROOT/$V1.img")" "ext4" "filesystem on the image"
    assert_ok docker run --rm -v "$V1:/data" "$IMG" sh -c 'echo persisted > /data/f && sync'
    assert_eq "$(loop_devices "$LOOP_ROOT/$V1.img")" "" "loop devices once no container uses the volume"
    check "nothing mounted at the volume's mount path" sh -c "! grep -q ' $MOUNT_PATH/$V1 ' /proc/self/mountinfo"
    assert_ok docker run --rm -v "$V1:/data" "$IMG" cat /data/f
    assert_eq "$OUT" "persisted" "a second container reads the data"
    assert_holders "$V1" 0

    step "two containers share one loop device; the last one out releases it"
    assert_ok docker run -d --name "$C1" -v "$V1:/data" "$IMG" sleep 300
    assert_ok docker run -d --name "$C2" -v "$V1:/data" "$IMG" sleep 300
    assert_eq "$(loop_devices "$LOOP_ROOT/$V1.img" | wc -l)" "1" "loop devices while two containers run"
    assert_holders "$V1" 2
    assert_ok vol_status "$V1"
    assert_contains "$OUT" '"device":"/dev/loop' "Status while mounted"
    assert_ok docker exec "$C1" sh -c 'echo from-c1 > /data/c1 && sync'
    assert_ok docker exec "$C2" cat /data/c1
    assert_eq "$OUT" "from-c1" "c2 reads c1's write"
    assert_fails docker volume rm "$V1"
    assert_ok plugin_call VolumeDriver.Remove "{\"Name\":\"$V1\"}"
    assert_contains "$OUT" "in use" "plugin Remove while mounted"
    assert_ok docker rm -f "$C1"
    assert_ok docker exec "$C2" cat /data/c1
    assert_eq "$OUT" "from-c1" "c2 still reads after c1 is gone"
    assert_ok docker rm -f "$C2"
    assert_eq "$(loop_devices "$LOOP_ROOT/$V1.img")" "" "loop devices after both containers"

    step "rexray volume resize grows an xfs volume while a container keeps writing to it"
    assert_ok docker volume create -d "$DRIVER" -o size=1 -o fsType=xfs "$V6"
    assert_ok docker run -d --name "$C1" -v "$V6:/data" "$IMG" sh -c 'i=0; while true; do i=$((i+1)); echo $i >> /data/log; sleep 0.1; done'
    retry 10 docker exec "$C1" test -s /data/log
    assert_ok docker exec "$C1" sh -c 'df -k /data | tail -n 1'
    before=$(awk '{print $2}' <<<"$OUT")
    assert_ok rexray_cli volume resize "$V6" 2GiB
    assert_contains "$OUT" "2 GiB" "the resize's table"
    assert_eq "$(stat -c %s "$LOOP_ROOT/$V6.img")" "2147483648" "image size after the resize"
    assert_ok docker exec "$C1" sh -c 'df -k /data | tail -n 1'
    after=$(awk '{print $2}' <<<"$OUT")
    check "df in the running container grew from $before to $after KiB" test "${after:-0}" -gt 1900000
    assert_ok docker exec "$C1" sh -c 'a=$(tail -n 1 /data/log); sleep 0.5; b=$(tail -n 1 /data/log); test "$b" -gt "$a"'
    assert_fails rexray_cli volume resize "$V6" 1
    assert_contains "$ERR" "never shrink" "a smaller size"
    assert_ok docker rm -f "$C1"
    assert_ok vol_status "$V6"
    assert_contains "$OUT" '"size":"2"' "Status after the resize"

    step "an ext4 volume in use grows online with CAP_SYS_RESOURCE, else at its next mount (and says so)"
    assert_ok docker run -d --name "$C1" -v "$V1:/data" "$IMG" sleep 300
    if has_cap_sys_resource; then
        assert_ok rexray_cli volume resize "$V1" 2
        assert_ok docker exec "$C1" sh -c 'df -k /data | tail -n 1'
    else
        assert_fails rexray_cli volume resize "$V1" 2
        assert_contains "$ERR" "CAP_SYS_RESOURCE" "why ext4 cannot grow while mounted"
        assert_ok docker rm -f "$C1"
        assert_ok docker run --rm -v "$V1:/data" "$IMG" sh -c 'df -k /data | tail -n 1'
    fi
    check "df after the resize ($(awk '{print $2}' <<<"$OUT") KiB)" test "$(awk '{print $2}' <<<"$OUT")" -gt 1900000
    docker rm -f "$C1" >/dev/null 2>&1
    assert_ok docker run --rm -v "$V1:/data" "$IMG" cat /data/f
    assert_eq "$OUT" "persisted" "the data from before the resize"

    step "implicit create: a 16 GiB volume"
    assert_ok docker run --rm --volume-driver "$DRIVER" -v "$V2:/data" "$IMG" sh -c 'echo x > /data/y'
    kib=$(df_kib "$V2")
    check "df shows about 16 GiB ($kib KiB)" test "${kib:-0}" -gt 16000000 -a "${kib:-0}" -le 16777216
    assert_eq "$(stat -c %s "$LOOP_ROOT/$V2.img")" "17179869184" "implicit image size"

    step "per-volume fsType=xfs and a data directory a non-root container can write"
    assert_ok docker volume create -d "$DRIVER" -o size=1 -o fsType=xfs -o uid=1000 -o gid=1000 -o mode=0750 "$V3"
    assert_ok docker run --rm --user 1000:1000 -v "$V3:/data" "$IMG" sh -c 'echo mine > /data/own && cat /data/own'
    assert_eq "$OUT" "mine" "uid 1000 writes in /data"
    assert_eq "$(blkid -p -s TYPE -o value "$LOOP_ROOT/$V3.img")" "xfs" "filesystem on the xfs image"
    assert_ok docker run --rm -v "$V3:/data" "$IMG" stat -c '%u:%g %a' /data
    assert_eq "$OUT" "1000:1000 750" "owner and mode of /data"

    step "bad options are refused with a message naming them"
    assert_fails docker volume create -d "$DRIVER" -o fsType=btrfs "$V5"
    assert_contains "$ERR" "fsType" "error for fsType=btrfs"
    assert_fails docker volume create -d "$DRIVER" -o size=100000000 "$V5"
    assert_contains "$ERR" "free" "error for a size beyond the free space"

    step "kill -9 while a container holds a volume, then restart"
    assert_ok docker volume create -d "$DRIVER" -o size=1 "$V4"
    assert_ok docker run -d --name "$C1" -v "$V4:/data" "$IMG" sh -c 'echo survived > /data/s && sync && sleep 300'
    retry 10 docker exec "$C1" cat /data/s
    assert_eq "$OUT" "survived" "written before the kill"
    kill9_daemon
    start_daemon "$DRIVER" "$CONFIG"
    assert_holders "$V4" 1
    assert_eq "$(loop_devices "$LOOP_ROOT/$V4.img" | wc -l)" "1" "loop devices after the restart (rediscovered, not doubled)"
    assert_ok docker stop -t 1 "$C1"
    assert_holders "$V4" 0
    assert_eq "$(loop_devices "$LOOP_ROOT/$V4.img")" "" "loop devices after the stop"
    assert_ok docker rm "$C1"
    assert_ok docker run --rm -v "$V4:/data" "$IMG" cat /data/s
    assert_eq "$OUT" "survived" "data after kill -9 and restart"

    step "docker volume rm deletes the image"
    for v in "$V1" "$V2" "$V3" "$V4"; do
        assert_ok docker volume rm "$v"
        check "image of $v is gone" test ! -e "$LOOP_ROOT/$v.img"
    done
    assert_eq "$(losetup -a | grep -c "$LOOP_ROOT" || true)" "0" "loop devices over our images at the end"
}


e2e_init docker_loop
ensure_docker
ensure_image "$E2E_IMAGE"
apt_install xfsprogs

IMG=$E2E_IMAGE
DRIVER=rexray-e2e-loop
LOOP_ROOT=$E2E_TMP/loop
MOUNT_PATH=$E2E_TMP/volumes
CONFIG=$E2E_TMP/rexray.yml

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
        service: loop
libstorage:
  server:
    services:
      loop:
        driver: loop
  integration:
    volume:
      operations:
        mount:
          path: $MOUNT_PATH
loop:
  root: $LOOP_ROOT
EOF

track_container "$C1" "$C2"
track_volume "$V1" "$V2" "$V3" "$V4" "$V5" "$V6"
start_daemon "$DRIVER" "$CONFIG"
e2e_preclean
loop_scenarios
