# shellcheck shell=bash
# Helpers for the managed-plugin scenarios (plugin.sh, swarm.sh, dockerfile.sh), on top of lib.sh.
#
#     e2e_init NAME; ensure_docker; ensure_image
#     plugin_create rexray                  # plugin/build.sh + docker plugin create (disabled)
#     assert_ok docker plugin set rexray LIBSTORAGE_SERVICE=loop
#     plugin_enable rexray                  # asserts it is enabled within Docker's 10 s window
#
# plugin_create installs an EXIT trap that runs before lib.sh's: it runs the functions listed in
# E2E_PRE_EXIT (a swarm to leave…), removes the tracked containers and volumes while the plugin
# is still enabled (Docker reaches a plugin's volumes only through it), then disables and removes
# the plugin, and hands over to lib.sh's trap.
#
# Environment:
#   REXRAY_PLUGIN_BIN   the binary packaged in the plugin (default: $REXRAY_RELEASE_BIN, else
#                       <repo>/target/release/rexray, else $REXRAY_BIN, the debug binary)

E2E_PLUGIN=""       # the plugin this run created
E2E_PRE_EXIT=()     # functions the EXIT trap runs first

# plugin_bin: prints the binary to package.
plugin_bin() {
    local b
    for b in "${REXRAY_PLUGIN_BIN:-}" "${REXRAY_RELEASE_BIN:-}" "$E2E_ROOT/target/release/rexray" "$REXRAY_BIN"; do
        [[ -z $b ]] && continue
        case $b in /*) ;; *) b=$E2E_ROOT/$b ;; esac
        if [[ -x $b ]]; then
            printf '%s\n' "$b"
            return 0
        fi
        # An explicitly named release binary must exist: CI builds it once, before the tests.
        if [[ $b == "${REXRAY_RELEASE_BIN:-}" || $b == "$E2E_ROOT/${REXRAY_RELEASE_BIN:-}" ]]; then
            return 1
        fi
    done
    return 1
}

# plugin_remove NAME: disables (forcibly) and removes a plugin, if it exists.
plugin_remove() {
    docker plugin inspect "$1" >/dev/null 2>&1 || return 0
    docker plugin disable -f "$1" >/dev/null 2>&1
    docker plugin rm -f "$1" >/dev/null 2>&1
}

# plugin_create NAME [BUILD_ARGS…]: builds the plugin (plugin/build.sh, into the run's temp dir)
# and creates it, disabled; a stale plugin of that name from an aborted run is removed first.
plugin_create() {
    local name=$1 bin
    shift
    if docker plugin inspect "$name" >/dev/null 2>&1; then
        say "removing a plugin $name left by an earlier run"
        plugin_remove "$name"
    fi
    bin=$(plugin_bin) || e2e_die "no release binary (REXRAY_RELEASE_BIN=${REXRAY_RELEASE_BIN:-}); run cargo build --release first"
    E2E_PLUGIN=$name
    trap _plugin_exit EXIT
    local t0=$SECONDS
    assert_ok bash "$E2E_ROOT/plugin/build.sh" --bin "$bin" --out "$E2E_TMP/plugin" --create "$name" "$@"
    ((RC == 0)) || e2e_die "plugin/build.sh failed: $(_oneline "$ERR")"
    say "  (plugin built from $bin and created in $((SECONDS - t0)) s)"
}

# plugin_enable NAME: enables it and asserts that took less than Docker's ~10 s window.
plugin_enable() {
    local t0 took
    t0=$(date +%s.%N)
    assert_ok docker plugin enable "$1"
    took=$(awk -v a="$t0" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }')
    if awk -v t="$took" 'BEGIN { exit !(t < 10) }'; then
        pass "plugin $1 enabled in $took s (Docker gives up after about 10 s)"
    else
        fail "plugin $1 took $took s to enable"
    fi
    assert_eq "$(docker plugin inspect -f '{{.Enabled}}' "$1" 2>&1)" true "$1 enabled"
}

# assert_no_loop_devices VOLUME…: no loop device is left over the volumes' images. Matched by
# file name: a device attached inside a plugin that has since stopped shows its backing file
# relative to the plugin's (gone) mount, e.g. /loop/NAME.img.
assert_no_loop_devices() {
    local v left
    for v in "$@"; do
        left=$(losetup -l -n -O NAME,BACK-FILE 2>/dev/null | grep -F "/$v.img" | tr '\n' ' ')
        assert_eq "$left" "" "loop devices over $v.img"
    done
}

# plugin_id NAME
plugin_id() { docker plugin inspect -f '{{.Id}}' "$1"; }

# plugin_log NAME: the lines the plugin wrote, from dockerd's log. Exit status 2 when this run
# did not start dockerd (its log is elsewhere).
plugin_log() {
    local id
    [[ -f $E2E_TMP/dockerd.log && -n $E2E_DOCKERD_PID ]] || return 2
    id=$(plugin_id "$1") || return 1
    grep -F "plugin=$id" "$E2E_TMP/dockerd.log"
}

_plugin_exit() {
    local status=$? f c v
    trap - EXIT
    set +e
    for f in "${E2E_PRE_EXIT[@]}"; do "$f"; done
    if [[ -n $E2E_PLUGIN ]] && _docker_answers && docker plugin inspect "$E2E_PLUGIN" >/dev/null 2>&1; then
        if [[ $(docker plugin inspect -f '{{.Enabled}}' "$E2E_PLUGIN") != true ]]; then
            docker plugin enable "$E2E_PLUGIN" >/dev/null 2>&1
        fi
        for c in "${E2E_CONTAINERS[@]}"; do docker rm -f "$c" >/dev/null 2>&1; done
        for v in "${E2E_VOLUMES[@]}"; do docker volume rm -f "$v" >/dev/null 2>&1; done
        E2E_VOLUMES_CLEAN=1
        plugin_remove "$E2E_PLUGIN"
    fi
    (exit "$status")
    _e2e_exit
}

# Swarm services (swarm.sh, swarm_csi.sh): the service under test is $SVC.

# task_container: the ID of the service's running container.
task_container() { docker ps -q --filter "label=com.docker.swarm.service.name=$SVC" --filter status=running; }

# wait_task OLD: waits (E2E_TASK_WAIT, default 60 s) for one running task container other than
# OLD; prints its ID.
wait_task() {
    local old=${1:-} deadline=$((SECONDS + ${E2E_TASK_WAIT:-60})) c
    while ((SECONDS < deadline)); do
        c=$(task_container)
        if [[ -n $c && $c != *$'\n'* && $c != "$old" ]]; then
            printf '%s\n' "$c"
            return 0
        fi
        sleep 0.5
    done
    return 1
}
