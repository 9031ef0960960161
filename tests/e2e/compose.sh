#!/usr/bin/env bash
# Docker Compose (Debian's docker-compose 1.29) with rexray run as a host service, the way the
# systemd units run it (root; see lib.sh):
#
#   a compose file with `driver: rexray` and `driver_opts` creates the volume with those options;
#   the data survives `docker-compose down` / `up`; `down -v` removes the volume. The daemon logs
#   JSON lines (rexray.logFormat: json) and serves /metrics and /health.
set -uo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
source "$(dirname "${BASH_SOURCE[0]}")/plugin_lib.sh"

e2e_init compose
ensure_docker
ensure_image "$E2E_IMAGE"
command -v docker-compose >/dev/null 2>&1 || apt_install docker-compose
command -v curl >/dev/null 2>&1 || apt_install curl

PROJECT=rexraye2e
V=${PROJECT}_data
PORT=$((20000 + RANDOM % 20000))
track_volume "$V"
# A managed plugin named rexray (left by an aborted run) would take the name from the socket.
plugin_remove rexray

CONFIG=$E2E_TMP/rexray.yml
cat >"$CONFIG" <<EOF
rexray:
  logLevel: debug
  logFormat: json
  metrics:
    listen: 127.0.0.1:$PORT
libstorage:
  service: loop
EOF
DIR=$E2E_TMP/compose
mkdir -p "$DIR"
cat >"$DIR/docker-compose.yml" <<EOF
version: "3.7"
services:
  app:
    image: $E2E_IMAGE
    command: ["sh", "-c", "date >> /data/starts; sync; sleep 3600"]
    volumes:
      - data:/data
volumes:
  data:
    driver: rexray
    driver_opts:
      size: "1"
      fsType: xfs
EOF
compose() { timeout -k 5 180 docker-compose --no-ansi -p "$PROJECT" -f "$DIR/docker-compose.yml" "$@"; }

step "the daemon as a host service (loop, JSON logs, metrics on 127.0.0.1:$PORT)"
start_daemon rexray "$CONFIG"
e2e_preclean
compose down -v >/dev/null 2>&1

step "docker-compose up creates the volume with driver_opts"
assert_ok compose up -d
assert_ok compose exec -T app sh -c 'echo compose-data > /data/keep && sync'
assert_ok docker volume inspect --format '{{.Driver}} {{index .Status.options "size"}} {{index .Status.options "fsType"}}' "$V"
assert_eq "$OUT" "rexray 1 xfs" "the volume (driver, size, fsType)"
assert_ok compose exec -T app sh -c 'df -k /data | tail -n 1'
assert_match "$OUT" "[0-9]+" "df in the service's container"
assert_holders "$V" 1

step "the data survives down / up"
assert_ok compose down
assert_holders "$V" 0
assert_ok docker volume ls -q
assert_contains "$OUT" "$V" "docker volume ls after down"
assert_ok compose up -d
assert_ok compose exec -T app cat /data/keep
assert_eq "$OUT" compose-data "data after down / up"
assert_ok compose exec -T app sh -c 'wc -l < /data/starts'
assert_eq "${OUT//[[:space:]]/}" 2 "starts recorded on the volume"

step "metrics, health and JSON logs"
assert_ok curl -sS --max-time 5 "http://127.0.0.1:$PORT/metrics"
assert_match "$OUT" 'rexray_requests_total\{endpoint="VolumeDriver.Create",outcome="ok"\} [1-9]' "/metrics"
assert_contains "$OUT" 'rexray_volumes_active{service="loop"} 1' "/metrics"
assert_contains "$OUT" 'rexray_mount_holders{service="loop"} 1' "/metrics"
assert_ok curl -sS --max-time 5 "http://127.0.0.1:$PORT/health"
assert_contains "$OUT" '"status":"ok"' "/health"
json_lines=$(grep -c '^{' "$E2E_DAEMON_LOG")
check "the daemon logs JSON lines ($json_lines)" test "$json_lines" -gt 5
bad=$(grep '^{' "$E2E_DAEMON_LOG" | python3 -c '
import json, sys
bad = 0
for line in sys.stdin:
    try:
        entry = json.loads(line)
        assert "level" in entry and "fields" in entry and "timestamp" in entry
    except Exception:
        bad += 1
print(bad)')
assert_eq "$bad" 0 "log lines that are not JSON objects with timestamp, level and fields"

step "docker-compose down -v removes the volume"
assert_ok compose down -v
assert_ok docker volume ls -q
assert_not_contains "$OUT" "$V" "docker volume ls after down -v"
assert_ok plugin_call VolumeDriver.Get "{\"Name\":\"$V\"}"
assert_contains "$OUT" "no such volume" "the daemon's Get after down -v"
E2E_VOLUMES_CLEAN=1

assert_no_loop_devices "$V"
stop_daemon
