#!/usr/bin/env bash
# What Docker's own integration tests for external volume drivers check, as behaviours of this
# daemon with a real engine (moby's integration-cli volume driver suite: call counts and
# outcomes, ported as behaviours, not code). The daemon's /metrics counts each call:
#
#   - a named volume under `--rm`, then `volume rm`: exactly one Create, Mount, Unmount, Remove;
#   - an anonymous volume under `--rm` is removed with the container;
#   - `--volumes-from`: two Mounts and two Unmounts;
#   - Capabilities once per engine lifetime;
#   - `volume create` and `volume ls` make no Path call, and `ls` exactly one List;
#   - every Mount carries an ID;
#   - a failed Mount is never followed by an Unmount, and holds nothing;
#   - a volume created before an engine restart is usable after it;
#   - a volume deleted behind Docker's back can be created again.
#
#     cargo build && sudo bash tests/e2e/moby_behaviours.sh      # E2E_ENGINE=26 for Docker 26
set -uo pipefail
# shellcheck source=tests/e2e/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

e2e_init moby_behaviours
ensure_docker
ensure_image "$E2E_IMAGE"

IMG=$E2E_IMAGE
DRIVER=rexray-e2e-moby
VFS_ROOT=$E2E_TMP/vfs
CONFIG=$E2E_TMP/rexray.yml
PORT=$((20000 + RANDOM % 20000))
V1=rxe2e-moby-named V2=rxe2e-moby-shared V3=rxe2e-moby-broken V4=rxe2e-moby-restart V5=rxe2e-moby-behind
C1=rxe2e-moby-c1 C2=rxe2e-moby-c2 ANON=rxe2e-moby-anon
track_container "$C1" "$C2" "$ANON"
track_volume "$V1" "$V2" "$V3" "$V4" "$V5"

cat >"$CONFIG" <<CFG
rexray:
  logLevel: debug
  logFormat: json
  metrics:
    listen: 127.0.0.1:$PORT
  modules:
    default-docker:
      disabled: true
    moby:
      type: docker
      host: unix:///run/docker/plugins/$DRIVER.sock
libstorage:
  service: vfs
vfs:
  root: $VFS_ROOT
CFG

# calls ENDPOINT: how many calls of /VolumeDriver.ENDPOINT the daemon answered (any outcome).
calls() {
    curl -sS --max-time 5 "http://127.0.0.1:$PORT/metrics" |
        awk -v ep="VolumeDriver.$1" '$1 ~ "^rexray_requests_total[{]endpoint=\"" ep "\"" { n += $2 } END { print n + 0 }'
}

# snapshot_calls: the counts of the calls these checks watch, as one line.
snapshot_calls() {
    local e out=""
    for e in Create Mount Unmount Remove Path List Capabilities; do out+="$e=$(calls "$e") "; done
    printf '%s' "$out"
}

# delta BEFORE ENDPOINT: calls of ENDPOINT since the snapshot BEFORE.
delta() {
    local before=$1 ep=$2 was
    was=$(sed -n "s/.*\\b$ep=\\([0-9]*\\).*/\\1/p" <<<"$before")
    echo $(($(calls "$ep") - ${was:-0}))
}

step "start the daemon (vfs, metrics on 127.0.0.1:$PORT)"
start_daemon "$DRIVER" "$CONFIG"
e2e_preclean

step "a named volume under --rm, then volume rm: exactly one Create, Mount, Unmount and Remove"
before=$(snapshot_calls)
assert_ok docker run --rm --volume-driver "$DRIVER" -v "$V1:/data" "$IMG" sh -c 'echo one > /data/f'
assert_ok docker volume rm "$V1"
for ep in Create Mount Unmount Remove; do
    assert_eq "$(delta "$before" "$ep")" 1 "$ep calls"
done
check "the volume's directory is gone" test ! -e "$VFS_ROOT/$V1"

step "an anonymous volume under --rm is removed with the container"
before=$(snapshot_calls)
assert_ok docker run --rm --name "$ANON" --volume-driver "$DRIVER" -v /data "$IMG" sh -c 'echo anon > /data/f'
assert_eq "$(delta "$before" Create)" 1 "Create calls"
assert_eq "$(delta "$before" Remove)" 1 "Remove calls"
assert_ok docker volume ls -q --filter "driver=$DRIVER"
assert_eq "$OUT" "" "no volume of the driver is left"
check "no directory is left under the vfs root" test -z "$(ls -A "$VFS_ROOT")"

step "--volumes-from: two Mounts and two Unmounts"
assert_ok docker volume create -d "$DRIVER" "$V2"
before=$(snapshot_calls)
assert_ok docker run -d --name "$C1" -v "$V2:/data" "$IMG" sleep 300
assert_ok docker run -d --name "$C2" --volumes-from "$C1" "$IMG" sleep 300
assert_eq "$(delta "$before" Mount)" 2 "Mount calls"
assert_holders "$V2" 2
assert_ok docker rm -f "$C1" "$C2"
assert_eq "$(delta "$before" Unmount)" 2 "Unmount calls"
assert_holders "$V2" 0

step "volume create and volume ls make no Path call; ls makes exactly one List"
before=$(snapshot_calls)
assert_ok docker volume create -d "$DRIVER" "$V4"
assert_ok docker volume ls
assert_contains "$OUT" "$V4" "docker volume ls"
assert_eq "$(delta "$before" Path)" 0 "Path calls"
assert_eq "$(delta "$before" List)" 1 "List calls"

step "every Mount carries an ID"
mounts=$(grep -c '"message":"mount"' "$E2E_DAEMON_LOG")
check "the daemon logged the Mounts ($mounts)" test "$mounts" -ge 3
assert_not_contains "$(grep '"message":"mount"' "$E2E_DAEMON_LOG")" '"id":""' "a Mount without an ID"

step "a failed Mount is never followed by an Unmount, and holds nothing"
assert_ok docker volume create -d "$DRIVER" "$V3"
# A link planted where the volume's directory is: the mount is refused.
rm -rf "${VFS_ROOT:?}/$V3" && ln -s /etc "$VFS_ROOT/$V3"
before=$(snapshot_calls)
assert_fails docker run --rm -v "$V3:/data" "$IMG" true
assert_contains "$ERR" "symbolic link" "docker's error"
assert_eq "$(delta "$before" Mount)" 1 "Mount calls"
assert_eq "$(delta "$before" Unmount)" 0 "Unmount calls after the failed Mount"
assert_holders "$V3" 0
rm -f "$VFS_ROOT/$V3"
assert_ok docker volume rm "$V3"

step "Capabilities once per engine lifetime, and a volume made before an engine restart works after it"
assert_ok docker run --rm -v "$V4:/data" "$IMG" sh -c 'echo before-restart > /data/f'
caps=$(calls Capabilities)
check "Capabilities at most once in this engine lifetime so far ($caps)" test "$caps" -le 1
# Counted from before the restart: the engine may ask as it starts (it loads the drivers of
# the volumes it knows).
before=$(snapshot_calls)
if restart_dockerd; then
    assert_ok docker run --rm -v "$V4:/data" "$IMG" cat /data/f
    assert_eq "$OUT" "before-restart" "the data after the engine restart"
    assert_ok docker volume ls
    assert_ok docker run --rm -v "$V4:/data" "$IMG" true
    assert_ok docker volume create -d "$DRIVER" "$V1"
    assert_ok docker volume rm "$V1"
    assert_eq "$(delta "$before" Capabilities)" 1 "Capabilities calls in the restarted engine's lifetime"
fi
assert_ok docker volume rm "$V4"

step "a volume deleted behind Docker's back can be created again"
assert_ok docker volume create -d "$DRIVER" "$V5"
assert_ok env REXRAY_HOME="$E2E_REXRAY_HOME" "$REXRAY_BIN" volume rm -c "$CONFIG" "$V5"
check "gone from the daemon" test ! -e "$VFS_ROOT/$V5"
assert_ok docker volume create -d "$DRIVER" "$V5"
assert_ok docker run --rm -v "$V5:/data" "$IMG" sh -c 'echo again > /data/f && cat /data/f'
assert_eq "$OUT" "again" "the volume made again"
assert_ok docker volume rm "$V5"
E2E_VOLUMES_CLEAN=1
