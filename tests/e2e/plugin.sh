#!/usr/bin/env bash
# The managed plugin end to end, on a real Docker Engine (root; see lib.sh):
#
#   plugin/build.sh assembles the rootfs from the release binary and this machine's tools, and
#   `docker plugin create` takes it; enabled with the loop service it serves real containers
#   (write from one, read from another) across `docker plugin disable -f` + `enable`; a volume a
#   running container holds is mounted again when the plugin comes back (moby #32515); the
#   plugin enables within Docker's window while its storage is unusable (REX-Ray #1335);
#   `docker plugin set REXRAY_LOGLEVEL=debug` takes effect; /metrics and /health answer on the
#   host network.
set -uo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
source "$(dirname "${BASH_SOURCE[0]}")/plugin_lib.sh"

e2e_init plugin
ensure_docker
ensure_image "$E2E_IMAGE"
command -v curl >/dev/null 2>&1 || apt_install curl

P=rexray
V=rexray-e2e-pv1
V2=rexray-e2e-pv2
HOLDER=rexray-e2e-holder
PORT=$((20000 + RANDOM % 20000))
track_container "$HOLDER"
track_volume "$V" "$V2"

step "build the plugin from the release binary and create it"
plugin_create "$P"
assert_ok docker plugin inspect -f '{{.Config.Interface.Socket}} {{.Config.PropagatedMount}} {{.Config.Network.Type}} {{.Config.Linux.Capabilities}}' "$P"
assert_eq "$OUT" "rexray.sock /var/lib/rexray host [CAP_SYS_ADMIN]" "plugin config"
assert_eq "$(docker plugin inspect -f '{{.Enabled}}' "$P")" false "a new plugin is disabled"
ROOTFS=$E2E_TMP/plugin/rootfs
for f in usr/bin/rexray usr/sbin/mkfs.ext4 usr/sbin/mkfs.xfs usr/sbin/blkid usr/sbin/losetup usr/sbin/resize2fs \
    usr/sbin/e2fsck usr/sbin/xfs_growfs run/docker/plugins; do
    check "rootfs has /$f" test -e "$ROOTFS/$f"
done

step "configure (loop service, metrics on 127.0.0.1:$PORT) and enable"
assert_ok docker plugin set "$P" LIBSTORAGE_SERVICE=loop REXRAY_LOGLEVEL=info REXRAY_METRICS_LISTEN=127.0.0.1:$PORT
plugin_enable "$P"
e2e_preclean
PID_DIR=$(docker info --format "{{.DockerRootDir}}")/plugins/$(plugin_id "$P")
# Docker 20.10's `docker info` lists only legacy volume plugins; Swarm reads managed ones from
# the plugin list (swarm.sh checks the node's description).
assert_ok docker plugin ls --format '{{.Name}} {{.Enabled}}'
assert_contains "$OUT" "$P:latest true" "docker plugin ls"

step "create a loop volume through the plugin, write from one container"
assert_ok docker volume create -d "$P" -o size=1 "$V"
assert_ok docker run --rm -v "$V:/data" "$E2E_IMAGE" sh -c 'echo plugin-data > /data/f && sync && df -k /data | tail -n 1'
assert_match "$OUT" "[0-9]+" "df inside the container"
assert_ok vol_status "$V"
assert_contains "$OUT" '"backend":"loop"' "Status"
assert_contains "$OUT" '"size":"1"' "Status"
check "the image lives under the propagated mount" test -f "$PID_DIR/propagated-mount/loop/$V.img"

step "metrics and health on the host network"
assert_ok curl -sS --max-time 5 "http://127.0.0.1:$PORT/metrics"
assert_contains "$OUT" 'rexray_requests_total{endpoint="VolumeDriver.Mount",outcome="ok"}' "/metrics"
assert_contains "$OUT" 'rexray_backend_operations_total{backend="loop",operation="activate",outcome="ok"}' "/metrics"
assert_contains "$OUT" 'rexray_volumes{service="loop"} 1' "/metrics"
assert_ok curl -sS --max-time 5 -o /dev/null -w '%{http_code}' "http://127.0.0.1:$PORT/health"
assert_eq "$OUT" 200 "/health status"

step "the CLI reaches the plugin's daemon with --plugin, through a path short enough to connect to"
ADMIN=$PID_DIR/rootfs/var/run/rexray/rexray-admin.sock
check "the daemon's admin socket is in the plugin's rootfs" test -S "$ADMIN"
check "its full path (${#ADMIN} bytes) is longer than a socket address may be" test "${#ADMIN}" -gt 107
assert_ok env REXRAY_HOME="$E2E_TMP/cli-home" "$REXRAY_BIN" --plugin "$P" volume ls -q
assert_eq "$OUT" "$V" "the plugin's volumes"
assert_ok env REXRAY_HOME="$E2E_TMP/cli-home" "$REXRAY_BIN" --plugin "$P:latest" volume ls -f json
assert_contains "$OUT" '"backend":"loop"' "the plugin's service, from its own settings"
assert_ok env REXRAY_HOME="$E2E_TMP/cli-home" "$REXRAY_BIN" --plugin "$P" service status
assert_contains "$OUT" "running" "service status through the plugin"
assert_fails "$REXRAY_BIN" --plugin rexray-e2e-no-such-plugin volume ls
assert_contains "$ERR" "Docker has no plugin rexray-e2e-no-such-plugin:latest" "an unknown plugin"
check "no local state was made instead" test ! -e "$E2E_TMP/cli-home/var/lib/rexray/state"

step "docker plugin disable -f + enable, then read back from another container"
assert_ok docker plugin disable -f "$P"
assert_fails "$REXRAY_BIN" --plugin "$P" volume ls
assert_contains "$ERR" "is disabled" "--plugin on a disabled plugin"
plugin_enable "$P"
assert_ok docker run --rm -v "$V:/data" "$E2E_IMAGE" cat /data/f
assert_eq "$OUT" plugin-data "data read after the plugin restarted"

step "a volume a running container holds is mounted again after a plugin restart"
assert_ok docker run -d --name "$HOLDER" -v "$V:/data" "$E2E_IMAGE" sleep 600
assert_holders "$V" 1
assert_ok docker plugin disable -f "$P"
plugin_enable "$P"
assert_holders "$V" 1
assert_ok docker exec "$HOLDER" sh -c 'echo from-holder > /data/g && sync'
assert_ok docker run --rm -v "$V:/data" "$E2E_IMAGE" sh -c 'cat /data/f /data/g'
assert_eq "$OUT" $'plugin-data\nfrom-holder' "a new container sees the running container's files"
assert_ok docker rm -f "$HOLDER"
assert_holders "$V" 0
assert_ok docker volume inspect --format '{{index .Status "active"}}' "$V"
assert_eq "$OUT" false "Status.active once the holder is gone"
if plugin_log "$P" >"$E2E_TMP/plugin.log"; then
    assert_contains "$(<"$E2E_TMP/plugin.log")" "re-activated" "the plugin's log"
else
    say "  (skipped the log check: this run did not start dockerd, so its log is elsewhere)"
fi

step "docker plugin set REXRAY_LOGLEVEL=debug takes effect"
if plugin_log "$P" >"$E2E_TMP/plugin.log"; then
    before=$(grep -c 'DEBUG' "$E2E_TMP/plugin.log")
    assert_eq "$before" 0 "DEBUG lines logged at level info"
fi
assert_ok docker plugin disable -f "$P"
assert_ok docker plugin set "$P" REXRAY_LOGLEVEL=debug
plugin_enable "$P"
assert_ok docker plugin inspect -f '{{json .Settings.Env}}' "$P"
assert_contains "$OUT" "REXRAY_LOGLEVEL=debug" "the plugin's settings"
assert_ok docker volume inspect "$V"
sleep 1 # dockerd copies the plugin's output to its log asynchronously
if plugin_log "$P" >"$E2E_TMP/plugin.log"; then
    assert_match "$(<"$E2E_TMP/plugin.log")" "DEBUG.*get" "the plugin's log after the Get"
else
    say "  (skipped the log check: this run did not start dockerd, so its log is elsewhere)"
fi

step "the plugin enables within Docker's window while its storage is unusable (REX-Ray #1335)"
assert_ok docker plugin disable -f "$P"
assert_ok docker plugin set "$P" LOOP_ROOT=/proc/rexray-unusable REXRAY_LOGLEVEL=info
plugin_enable "$P"
assert_ok docker volume ls -q
assert_contains "$OUT" "$V" "docker volume ls while the storage is unusable"
assert_fails docker volume create -d "$P" -o size=1 "$V2"
assert_contains "$ERR" "/proc/rexray-unusable" "the create error"
assert_ok docker plugin disable -f "$P"
assert_ok docker plugin set "$P" LOOP_ROOT=
plugin_enable "$P"
assert_ok docker run --rm -v "$V:/data" "$E2E_IMAGE" cat /data/f
assert_eq "$OUT" plugin-data "data once the storage is back"

step "remove the volume through the plugin; nothing is left attached"
assert_ok docker volume rm "$V"
E2E_VOLUMES_CLEAN=1
check "the image is gone" test ! -e "$PID_DIR/propagated-mount/loop/$V.img"
assert_no_loop_devices "$V" "$V2"
assert_ok docker plugin disable "$P"
assert_ok docker plugin rm "$P"
E2E_PLUGIN=""
