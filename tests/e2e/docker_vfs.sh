#!/usr/bin/env bash
# Real-Docker end-to-end scenarios for the `vfs` backend.
#
# Needs root. Starts dockerd if none answers (installing docker.io if missing), builds the tiny
# busybox image, runs the daemon ($REXRAY_BIN, default target/debug/rexray) on its own legacy
# socket /run/docker/plugins/rexray-e2e.sock (so a real `rexray` plugin is not disturbed), and
# drives it through the docker CLI. Ends with the line `e2e: N passed, M failed`.
#
#     cargo build && bash tests/e2e/docker_vfs.sh
set -uo pipefail
# shellcheck source=tests/e2e/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

e2e_init docker_vfs
ensure_docker
ensure_image "$E2E_IMAGE"

IMG=$E2E_IMAGE
DRIVER=rexray-e2e
VFS_ROOT=$E2E_TMP/vfs
CONFIG=$E2E_TMP/rexray.yml
V1=rxe2e-v1 V2=rxe2e-v2 V3=rxe2e-v3 V4=rxe2e-v4
C1=rxe2e-c1 C2=rxe2e-c2 C3=rxe2e-c3
track_container "$C1" "$C2" "$C3"
track_volume "$V1" "$V2" "$V3" "$V4"

# REX-Ray 0.4 format: one docker module on a test socket, serving the vfs service.
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

default_sock_existed=0
[[ -e /run/docker/plugins/rexray.sock ]] && default_sock_existed=1

step "start the daemon"
start_daemon "$DRIVER" "$CONFIG"
if ((!default_sock_existed)); then
    check "the disabled default-docker module opened no /run/docker/plugins/rexray.sock" \
        test ! -e /run/docker/plugins/rexray.sock
fi
e2e_preclean

# ---------------------------------------------------------------------------------------------
step "docker volume create / ls / inspect"
assert_ok docker volume create -d "$DRIVER" -o size=1 "$V1"
assert_eq "$OUT" "$V1" "docker volume create output"
check "volume directory $VFS_ROOT/$V1 exists" test -d "$VFS_ROOT/$V1"
assert_ok docker volume ls --format '{{.Driver}} {{.Name}}'
assert_contains "$OUT" "$DRIVER $V1" "docker volume ls"
assert_ok docker volume inspect --format '{{.Driver}}' "$V1"
assert_eq "$OUT" "$DRIVER" "inspect .Driver"
assert_ok docker volume inspect --format '{{.Scope}}' "$V1"
assert_eq "$OUT" "local" "inspect .Scope"
assert_ok docker volume inspect --format '{{.CreatedAt}}' "$V1"
assert_match "$OUT" '^[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}' "inspect .CreatedAt"
assert_ok vol_status "$V1"
status=$OUT
say "  Status: $status"
assert_contains "$status" '"backend":"vfs"' "Status"
assert_contains "$status" '"service":"vfs"' "Status"
assert_contains "$status" '"holders":' "Status"
assert_contains "$status" '"size":"1"' "Status (create options)"
assert_holders "$V1" 0
assert_ok docker volume create -d "$DRIVER" -o size=1 "$V1"   # again: must stay a no-op

# ---------------------------------------------------------------------------------------------
step "write in one container, read in another"
assert_ok docker run --rm -v "$V1:/data" "$IMG" sh -c 'echo hello > /data/f'
assert_ok docker run --rm -v "$V1:/data" "$IMG" cat /data/f
assert_eq "$OUT" "hello" "second container reads /data/f"
assert_eq "$(cat "$VFS_ROOT/$V1/f" 2>&1)" "hello" "host file $VFS_ROOT/$V1/f"
assert_holders "$V1" 0

# ---------------------------------------------------------------------------------------------
step "implicit create with --volume-driver"
assert_ok docker run --rm --volume-driver "$DRIVER" -v "$V2:/data" "$IMG" sh -c 'echo x > /data/y'
assert_ok docker volume inspect --format '{{.Driver}}' "$V2"
assert_eq "$OUT" "$DRIVER" "implicitly created $V2 .Driver"
assert_ok docker run --rm -v "$V2:/data" "$IMG" cat /data/y
assert_eq "$OUT" "x" "$V2:/data/y read back"
assert_holders "$V2" 0

# ---------------------------------------------------------------------------------------------
step "two containers on one volume at once"
assert_ok docker run -d --name "$C1" -v "$V1:/data" "$IMG" sleep 300
assert_ok docker run -d --name "$C2" -v "$V1:/data" "$IMG" sleep 300
assert_holders "$V1" 2
assert_ok docker exec "$C1" sh -c 'echo from-c1 > /data/c1'
assert_ok docker exec "$C2" sh -c 'echo from-c2 > /data/c2'
assert_ok docker exec "$C2" cat /data/c1
assert_eq "$OUT" "from-c1" "c2 reads c1's write"
assert_ok docker exec "$C1" cat /data/c2
assert_eq "$OUT" "from-c2" "c1 reads c2's write"
assert_ok docker stop -t 1 "$C1"
assert_holders "$V1" 1
assert_ok docker exec "$C2" cat /data/c1 /data/f
assert_eq "$OUT" $'from-c1\nhello' "c2 still reads after c1 stopped"
assert_ok docker exec "$C2" sh -c 'echo after > /data/after && sync && cat /data/after'
assert_eq "$OUT" "after" "c2 still writes after c1 stopped"
assert_eq "$(cat "$VFS_ROOT/$V1/after" 2>&1)" "after" "host file $VFS_ROOT/$V1/after"
assert_ok docker rm "$C1"
assert_holders "$V1" 1

# ---------------------------------------------------------------------------------------------
step "docker cp into and out of a running container keeps its mount"
printf 'copied\n' >"$E2E_TMP/somefile"
assert_ok docker cp "$E2E_TMP/somefile" "$C2:/data/"
assert_ok docker exec "$C2" cat /data/somefile
assert_eq "$OUT" "copied" "c2 reads the copied file"
assert_holders "$V1" 1
assert_ok docker cp "$C2:/data/c2" "$E2E_TMP/c2-out"
assert_eq "$(cat "$E2E_TMP/c2-out" 2>&1)" "from-c2" "docker cp out of the volume"
assert_ok docker exec "$C2" ls /data
assert_eq "${OUT//$'\n'/ }" "after c1 c2 f somefile" "c2's /data after the copies"
assert_holders "$V1" 1

# ---------------------------------------------------------------------------------------------
step "docker volume rm refused while in use; works after"
assert_fails docker volume rm "$V1"
assert_contains "$ERR" "in use" "docker volume rm error"
assert_ok plugin_call VolumeDriver.Remove "{\"Name\":\"$V1\"}"
say "  plugin Remove response: $OUT"
assert_contains "$OUT" '"Err"' "plugin Remove response"
assert_contains "$OUT" "in use" "plugin Remove response"
check "volume directory still exists after the refused Remove" test -f "$VFS_ROOT/$V1/f"
assert_ok docker exec "$C2" cat /data/f
assert_eq "$OUT" "hello" "c2 still reads after the refused Remove"
assert_ok docker rm -f "$C2"
assert_holders "$V1" 0
assert_ok docker volume rm "$V1"
check "volume directory $VFS_ROOT/$V1 is gone" test ! -e "$VFS_ROOT/$V1"
assert_fails docker volume inspect "$V1"
assert_ok docker volume ls --format '{{.Name}}'
assert_not_contains "$OUT" "$V1" "docker volume ls"

# ---------------------------------------------------------------------------------------------
step "an unknown create option is refused and named"
assert_fails docker volume create -d "$DRIVER" -o bogus=1 "$V3"
assert_contains "$ERR" "bogus" "docker volume create error"
assert_fails docker volume inspect "$V3"
check "no directory for the refused $V3" test ! -e "$VFS_ROOT/$V3"
assert_fails docker volume create -d "$DRIVER" -o bogus=1 -o mode=rwx -o size=big "$V3"
assert_contains "$ERR" "3 invalid options" "every invalid option at once"
assert_contains "$ERR" "bogus" "docker volume create error"
assert_contains "$ERR" "rwx" "docker volume create error"

step "options written for block and EBS backends (the README's Compose example) are recorded and shown as ignored"
assert_ok docker volume create -d "$DRIVER" -o size=10 -o fsType=xfs -o volumeType=gp3 "$V3"
assert_ok docker volume inspect --format '{{index .Status.options "fsType"}} {{index .Status "ignored"}}' "$V3"
assert_contains "$OUT" "xfs size, fsType, volumeType: recorded" "inspect"
assert_ok docker run --rm -v "$V3:/data" "$IMG" sh -c 'echo ok > /data/f && cat /data/f'
assert_eq "$OUT" "ok" "the volume works"
assert_ok docker volume rm "$V3"

# ---------------------------------------------------------------------------------------------
step "kill -9 of the daemon while a container holds a volume"
assert_ok docker volume create -d "$DRIVER" "$V4"
assert_ok docker run -d --name "$C3" -v "$V4:/data" "$IMG" sh -c 'echo survive > /data/keep && sync && sleep 300'
if retry 15 docker exec "$C3" cat /data/keep && [[ $OUT == survive ]]; then
    pass "c3 wrote /data/keep"
else
    fail "c3 did not write /data/keep within 15 s: $OUT $ERR"
fi
assert_holders "$V4" 1
kill9_daemon
start_daemon "$DRIVER" "$CONFIG"
run vol_holders "$V4"
say "  (holders of $V4 right after the restart: ${OUT:-?} ${ERR})"
assert_ok docker stop -t 1 "$C3"
assert_ok docker volume inspect "$V4"
assert_holders "$V4" 0
assert_ok docker run --rm -v "$V4:/data" "$IMG" cat /data/keep
assert_eq "$OUT" "survive" "data written before the crash"
assert_ok docker rm "$C3"
assert_ok docker volume rm "$V4"
check "volume directory $VFS_ROOT/$V4 is gone" test ! -e "$VFS_ROOT/$V4"

# ---------------------------------------------------------------------------------------------
step "SIGTERM stops the daemon and removes its socket"
assert_ok docker volume rm "$V2"
assert_ok docker volume ls --format '{{.Driver}} {{.Name}}'
assert_not_contains "$OUT" "$DRIVER " "docker volume ls (every test volume removed)"
[[ $OUT != *"$DRIVER "* ]] && E2E_VOLUMES_CLEAN=1
stop_daemon
