#!/usr/bin/env bash
# Docker Swarm cluster volumes (CSI) on a single-node swarm, as root (see lib.sh). Run with
# E2E_ENGINE=28: cluster volumes came with Docker 23, but until 28.2 Swarm could not load a CSI
# plugin ("does not implement PluginAddr", moby#48133), so Debian 13's 26.1 cannot run them.
#
#   the managed plugin built with `plugin/build.sh --csi` (interface types
#   docker.csicontroller/1.0 and docker.csinode/1.0, propagatedMount /data/published) on the
#   loop service; `docker volume create --driver … --type mount --sharing onewriter
#   --availability active --required-bytes 1G` makes a cluster volume through CreateVolume; a
#   service with `--mount type=cluster,…` runs a task on it (ControllerPublish, NodeStage,
#   NodePublish); the data the first task wrote is read after `service update --force` and
#   after a scale 0 → 1; `volume update --availability drain` and `volume rm` delete it, and no
#   loop device is left.
set -uo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
source "$(dirname "${BASH_SOURCE[0]}")/plugin_lib.sh"

e2e_init swarm_csi
ensure_docker
ensure_image "$E2E_IMAGE"

PLUGIN=rexray-csi
SVC=rexray-e2e-csi-svc
VOL=rexray-e2e-csivol
E2E_SWARM=0
E2E_TASK_WAIT=90


# no_tasks: waits (60 s) until no container of the service runs.
no_tasks() {
    local deadline=$((SECONDS + 60))
    while [[ -n $(task_container) ]] && ((SECONDS < deadline)); do
        sleep 0.5
    done
    [[ -z $(task_container) ]]
}

# volume_json: the cluster volume as `docker volume inspect` shows it (nothing, and status 1,
# when it is gone).
volume_json() {
    local out
    out=$(docker volume inspect "$VOL" 2>/dev/null) || return 1
    printf '%s\n' "$out"
}

_csi_exit() {
    docker service rm "$SVC" >/dev/null 2>&1 && no_tasks
    if volume_json >/dev/null; then
        docker volume update --availability drain "$VOL" >/dev/null 2>&1
        docker volume rm -f "$VOL" >/dev/null 2>&1
    fi
    ((E2E_SWARM)) && docker swarm leave --force >/dev/null 2>&1
}
E2E_PRE_EXIT+=(_csi_exit)

api=$(docker version --format '{{.Server.APIVersion}}' 2>/dev/null)
if ! awk -v v="${api:-0}" 'BEGIN { split(v, p, "."); exit !(p[1] > 1 || (p[1] == 1 && p[2] >= 42)) }'; then
    e2e_die "this Docker Engine (API ${api:-unknown}) has no cluster volumes (needs API 1.42, Docker 23+); run with E2E_ENGINE=28"
fi
server=$(docker version --format '{{.Server.Version}}' 2>/dev/null)
if ! awk -v v="${server:-0}" 'BEGIN { split(v, p, /[.+~-]/); exit !(p[1] > 28 || (p[1] == 28 && p[2] >= 2)) }'; then
    e2e_die "Swarm in Docker ${server:-unknown} cannot load CSI plugins (\"does not implement PluginAddr\", moby#48133, fixed in 28.2); run with E2E_ENGINE=28"
fi
state=$(docker info --format '{{.Swarm.LocalNodeState}}')
if [[ $state != inactive ]]; then
    e2e_die "this Docker Engine is already in a swarm ($state); not touching it"
fi

step "the CSI managed plugin (loop service) and a single-node swarm"
plugin_create "$PLUGIN" --csi
assert_ok docker plugin inspect --format '{{json .Config.Interface.Types}} {{.Config.PropagatedMount}}' "$PLUGIN"
assert_contains "$OUT" 'docker.csinode/1.0' "the plugin's interface types"
assert_contains "$OUT" '/data/published' "the plugin's propagated mount"
assert_ok docker plugin set "$PLUGIN" LIBSTORAGE_SERVICE=loop REXRAY_LOGLEVEL=debug
plugin_enable "$PLUGIN"
assert_ok docker swarm init --advertise-addr 127.0.0.1
((RC == 0)) && E2E_SWARM=1
deadline=$((SECONDS + 60))
until [[ $(docker node inspect self --format '{{json .Description.CSIInfo}}' 2>/dev/null) == *"$PLUGIN"* ]] ||
    ((SECONDS >= deadline)); do
    sleep 1
done
assert_ok docker node inspect self --format '{{json .Description.CSIInfo}}'
assert_contains "$OUT" "\"PluginName\":\"$PLUGIN" "the node's CSI plugins (NodeGetInfo)"

step "docker volume create --type mount --sharing onewriter --required-bytes 1G"
# The driver by its full name: Swarm's managers match volumes to the nodes' CSI plugins by the
# name the plugin reports, which carries the tag.
assert_ok docker volume create --driver "$PLUGIN:latest" --type mount --scope single --sharing onewriter \
    --availability active --required-bytes 1G "$VOL"
deadline=$((SECONDS + 60))
until [[ $(volume_json) == *'"VolumeID": "'"$VOL"'"'* ]] || ((SECONDS >= deadline)); do
    sleep 1
done
assert_contains "$(volume_json)" "\"VolumeID\": \"$VOL\"" "the cluster volume is created (CreateVolume's ID)"
assert_contains "$(volume_json)" '"CapacityBytes": 1073741824' "its capacity, rounded to whole GiB"

step "a service on the cluster volume"
t0=$SECONDS
assert_ok docker service create --detach --no-resolve-image --name "$SVC" --restart-condition any \
    --update-order stop-first --update-monitor 1s \
    --mount "type=cluster,src=$VOL,dst=/data" \
    "$E2E_IMAGE" sh -c 'date >> /data/starts; sync; sleep 3600'
if c1=$(wait_task); then
    pass "a task runs after $((SECONDS - t0)) s"
else
    run docker service ps --no-trunc "$SVC"
    say "$OUT"
    run docker volume inspect "$VOL"
    say "$OUT"
    e2e_die "no task of $SVC runs after 90 s"
fi
assert_ok docker exec "$c1" sh -c 'echo cluster-data > /data/keep && sync && grep " /data " /proc/mounts'
assert_match "$OUT" '^/dev/loop[0-9]+ /data ext4' "the task's /data is the loop volume's file system"
assert_contains "$(volume_json)" '"State": "published"' "the volume is published to the node"

step "service update --force: the new task reads what the old one wrote"
assert_ok docker service update --force --detach "$SVC"
if c2=$(wait_task "$c1"); then
    pass "the new task runs"
else
    e2e_die "no new task of $SVC after 90 s"
fi
assert_ok docker exec "$c2" cat /data/keep
assert_eq "$OUT" cluster-data "data read by the updated task"

step "scale 0 → 1: the volume is released, then the data is there again"
assert_ok docker service scale --detach "$SVC=0"
check "no task left at scale 0" no_tasks
deadline=$((SECONDS + 60))
until [[ $(volume_json) != *'"State": "published"'* ]] || ((SECONDS >= deadline)); do
    sleep 1
done
assert_not_contains "$(volume_json)" '"State": "published"' "unpublished at scale 0"
assert_ok docker service scale --detach "$SVC=1"
if c3=$(wait_task "$c2"); then
    pass "a task runs again"
else
    e2e_die "no task of $SVC after scaling to 1"
fi
assert_ok docker exec "$c3" sh -c 'cat /data/keep; wc -l < /data/starts'
assert_eq "$(printf '%s' "$OUT" | tr -s '[:space:]' ' ')" "cluster-data 3" "data and the three task starts"

step "remove the service, drain and remove the volume"
assert_ok docker service rm "$SVC"
check "task containers gone" no_tasks
assert_ok docker volume update --availability drain "$VOL"
deadline=$((SECONDS + 60))
while volume_json >/dev/null && ((SECONDS < deadline)); do
    docker volume rm "$VOL" >/dev/null 2>&1
    sleep 1
done
assert_eq "$(volume_json)" "" "the cluster volume is gone"
deadline=$((SECONDS + 30))
while [[ -n $(losetup -l -n -O BACK-FILE 2>/dev/null | grep -F "/$VOL.img") ]] && ((SECONDS < deadline)); do
    sleep 1
done
assert_no_loop_devices "$VOL"
assert_ok docker swarm leave --force
E2E_SWARM=0
