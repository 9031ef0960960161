#!/usr/bin/env bash
# Docker Swarm on a single-node swarm (root; see lib.sh), twice: with the managed plugin, and
# with rexray as a host service (a legacy plugin socket, as the systemd units run it):
#
#   the node advertises the driver (Swarm places tasks only on nodes that do: for a legacy
#   plugin `docker info` lists it once Docker has looked it up, for a managed one the node's
#   description lists it); `docker service create --mount type=volume,…,volume-driver=…,
#   volume-opt=size=1` runs a task on a loop volume the plugin creates; a rolling
#   `docker service update --force` replaces the task and the new one finds the data the old
#   one wrote.
set -uo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
source "$(dirname "${BASH_SOURCE[0]}")/plugin_lib.sh"

e2e_init swarm
ensure_docker
ensure_image "$E2E_IMAGE"

SVC=rexray-e2e-svc  # the service of the current phase (each phase has its own)
V1=rexray-e2e-swarmvol1
V2=rexray-e2e-swarmvol2
track_volume "$V1" "$V2"
E2E_SWARM=0

# _service_rm: removes the service and waits (30 s) for its task containers to go.
_service_rm() {
    docker service inspect "$SVC" >/dev/null 2>&1 && docker service rm "$SVC" >/dev/null 2>&1
    local deadline=$((SECONDS + 30))
    while [[ -n $(docker ps -aq --filter "label=com.docker.swarm.service.name=$SVC") ]] && ((SECONDS < deadline)); do
        sleep 0.5
    done
}

_swarm_exit() {
    _service_rm
    ((E2E_SWARM)) && docker swarm leave --force >/dev/null 2>&1
}
E2E_PRE_EXIT+=(_swarm_exit)


# service_scenario DRIVER VOLUME: a service on a DRIVER volume, through a rolling update.
service_scenario() {
    local driver=$1 vol=$2 t0 c1 c2
    SVC=rexray-e2e-svc-$driver
    step "docker service create with a $driver volume"
    t0=$SECONDS
    assert_ok docker service create --detach --no-resolve-image --name "$SVC" --restart-condition any \
        --update-order stop-first --update-monitor 1s \
        --mount "type=volume,source=$vol,target=/data,volume-driver=$driver,volume-opt=size=1" \
        "$E2E_IMAGE" sh -c 'date >> /data/starts; sync; sleep 3600'
    if c1=$(wait_task); then
        pass "a task runs after $((SECONDS - t0)) s"
    else
        run docker service ps --no-trunc "$SVC"
        e2e_die "no task of $SVC runs after ${E2E_TASK_WAIT:-60} s: $(_oneline "$OUT")"
    fi
    assert_ok docker exec "$c1" sh -c 'echo swarm-data > /data/keep && sync && df -k /data | tail -n 1'
    assert_ok docker volume inspect --format '{{.Driver}} {{index .Status "backend"}} {{index .Status.options "size"}}' "$vol"
    assert_match "$OUT" "^$driver(:latest)? loop 1\$" "the task's volume (driver, backend, size)"

    step "a rolling update keeps the data ($driver)"
    t0=$SECONDS
    assert_ok docker service update --force --detach "$SVC"
    if c2=$(wait_task "$c1"); then
        pass "the new task runs after $((SECONDS - t0)) s"
    else
        e2e_die "no new task of $SVC after 60 s"
    fi
    assert_ok docker exec "$c2" cat /data/keep
    assert_eq "$OUT" swarm-data "data read by the new task"
    assert_ok docker exec "$c2" sh -c 'wc -l < /data/starts'
    assert_eq "${OUT//[[:space:]]/}" 2 "task starts recorded on the volume"
    assert_holders "$vol" 1

    step "remove the service, then the volume ($driver)"
    assert_ok docker service rm "$SVC"
    _service_rm
    SVC=""
    assert_eq "$(docker ps -aq --filter "label=com.docker.swarm.service.name=$SVC")" "" "task containers left"
    assert_holders "$vol" 0
    assert_ok docker volume rm "$vol"
    assert_no_loop_devices "$vol"
}

state=$(docker info --format '{{.Swarm.LocalNodeState}}')
if [[ $state != inactive ]]; then
    e2e_die "this Docker Engine is already in a swarm ($state); not touching it"
fi

# The managed plugin first: Docker caches a legacy plugin by name for its lifetime, so the
# host-service phase, which uses the name rexray as a legacy plugin, comes second.
step "the managed plugin (loop service), then a single-node swarm that advertises it"
plugin_create rexray-swarm
assert_ok docker plugin set rexray-swarm LIBSTORAGE_SERVICE=loop
plugin_enable rexray-swarm
assert_ok docker swarm init --advertise-addr 127.0.0.1
((RC == 0)) && E2E_SWARM=1
deadline=$((SECONDS + 30))
until [[ $(docker node inspect self --format '{{json .Description.Engine.Plugins}}') =~ \"Type\":\"Volume\",\"Name\":\"rexray-swarm(:latest)?\" ]] ||
    ((SECONDS >= deadline)); do
    sleep 1
done
assert_ok docker node inspect self --format '{{range .Description.Engine.Plugins}}{{if eq .Type "Volume"}}{{.Name}} {{end}}{{end}}'
assert_match "$OUT" "rexray-swarm" "the node's volume plugins"
service_scenario rexray-swarm "$V1"
plugin_remove rexray-swarm
E2E_PLUGIN=""

step "rexray as a host service: docker info lists the driver once Docker looked it up"
CONFIG=$E2E_TMP/rexray.yml
printf 'libstorage:\n  service: loop\n' >"$CONFIG"
plugin_remove rexray
start_daemon rexray "$CONFIG"
assert_ok docker volume ls -q
assert_ok docker info --format '{{json .Plugins.Volume}}'
assert_contains "$OUT" '"rexray"' "docker info's volume plugins"
service_scenario rexray "$V2"
E2E_VOLUMES_CLEAN=1
assert_ok docker swarm leave --force
E2E_SWARM=0
stop_daemon
