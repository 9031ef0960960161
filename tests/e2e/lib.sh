# shellcheck shell=bash
# Helpers for the real-Docker end-to-end scenarios (tests/e2e/docker_*.sh).
#
# A scenario script does:
#
#     set -uo pipefail                      # not -e: a failed assertion is counted, not fatal
#     source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
#     e2e_init NAME                         # root check, lock, temp dir, EXIT trap
#     ensure_docker; ensure_image "$E2E_IMAGE"
#     track_volume v1; track_container c1   # what the cleanup removes
#     start_daemon DRIVER CONFIG
#     step "…"; assert_ok docker …; assert_eq "$OUT" …
#
# and simply ends: the EXIT trap removes the tracked containers and volumes (while the plugin
# still runs: Docker cannot remove a plugin's volumes when the plugin is down), stops the daemon
# and any dockerd this run started, prints the daemon log tail if something failed, and prints
# the one final line `e2e: N passed, M failed`; the exit status is 0 only when M is 0.
#
# Environment:
#   REXRAY_BIN          the daemon binary (default: <repo>/target/debug/rexray; a relative
#                       path is taken from the repository root)
#   E2E_ENGINE          20.10 (default: Debian 12's docker.io), 26 (Debian 13's) or 28 (Debian
#                       unstable's, for Swarm cluster volumes), the latter two unpacked and
#                       run beside it on its own socket; see ensure_docker)
#   E2E_DOCKER_BIN      the docker CLI (default: the engine's own, else `docker`)
#   E2E_DOCKER_TIMEOUT  seconds any one docker command may take (default 180)
#   E2E_KEEP=1          keep the run's temp dir (it is always kept when something failed)

E2E_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
E2E_IMAGE=${E2E_IMAGE:-rexray-test-busybox}
REXRAY_BIN=${REXRAY_BIN:-${CARGO_TARGET_DIR:-$E2E_ROOT/target}/debug/rexray}
case $REXRAY_BIN in /*) ;; *) REXRAY_BIN=$E2E_ROOT/$REXRAY_BIN ;; esac

E2E_PASSED=0
E2E_FAILED=0
E2E_FAILURES=()
E2E_STEP=""
E2E_CONTAINERS=()
E2E_VOLUMES=()
E2E_VOLUMES_CLEAN=0     # set to 1 once the script itself removed every tracked volume
E2E_TMP=""
E2E_NAME=""
E2E_START=$SECONDS
E2E_APT_UPDATED=0
E2E_DOCKER_BIN=${E2E_DOCKER_BIN:-}
E2E_DOCKERD_PID=""      # set only when this run started dockerd
E2E_DAEMON_PID=""
E2E_DAEMON_CONFIG=""    # set once the daemon has answered: the cleanup may restart it with this
E2E_DAEMON_LOG=""
E2E_REXRAY_HOME=""
E2E_SOCK=""
OUT="" ERR="" RC=0

# ---------------------------------------------------------------------------------------------
# Output, counting, assertions

say() { printf '%s\n' "$*"; }

# step "description": starts a scenario step.
step() {
    E2E_STEP=$1
    printf '\n== %s\n' "$1"
}

pass() {
    E2E_PASSED=$((E2E_PASSED + 1))
    printf '  ok    %s\n' "$1"
}

fail() {
    E2E_FAILED=$((E2E_FAILED + 1))
    E2E_FAILURES+=("[${E2E_STEP:-setup}] $1")
    printf '  FAIL  %s\n' "$1"
}

# e2e_die MSG: counts a failure and ends the run (the EXIT trap cleans up and summarizes).
e2e_die() {
    fail "$1"
    exit 1
}

# run CMD…: runs CMD, leaving its stdout in $OUT, stderr in $ERR and exit status in $RC.
run() {
    local errf=$E2E_TMP/run.stderr
    OUT=$("$@" 2>"$errf")
    RC=$?
    ERR=$(<"$errf")
}

# One line of a possibly long multi-line text, for messages.
_oneline() {
    local s=${1//$'\n'/ | }
    ((${#s} > 400)) && s="${s:0:400}…"
    printf '%s' "$s"
}

# assert_ok CMD…: passes when CMD succeeds. $OUT/$ERR/$RC are left for further checks.
assert_ok() {
    run "$@"
    if ((RC == 0)); then
        pass "$*"
    else
        fail "$*  → exit $RC: $(_oneline "$ERR")"
    fi
}

# assert_fails CMD…: passes only when CMD fails; its stderr stays in $ERR for content checks.
assert_fails() {
    run "$@"
    if ((RC != 0)); then
        pass "$*  (fails as it should: $(_oneline "$ERR"))"
    else
        fail "$*  → succeeded but should have failed; stdout: $(_oneline "$OUT")"
    fi
}

# assert_eq ACTUAL EXPECTED [WHAT]
assert_eq() {
    local what=${3:-value}
    if [[ $1 == "$2" ]]; then
        pass "$what = $(_oneline "$2")"
    else
        fail "$what: expected '$(_oneline "$2")', got '$(_oneline "$1")'"
    fi
}

# assert_contains HAYSTACK NEEDLE [WHAT]
assert_contains() {
    local what=${3:-text}
    if [[ $1 == *"$2"* ]]; then
        pass "$what contains '$2'"
    else
        fail "$what does not contain '$2': '$(_oneline "$1")'"
    fi
}

# assert_not_contains HAYSTACK NEEDLE [WHAT]
assert_not_contains() {
    local what=${3:-text}
    if [[ $1 != *"$2"* ]]; then
        pass "$what does not contain '$2'"
    else
        fail "$what contains '$2': '$(_oneline "$1")'"
    fi
}

# assert_match HAYSTACK ERE [WHAT]
assert_match() {
    local what=${3:-text}
    if [[ $1 =~ $2 ]]; then
        pass "$what matches /$2/"
    else
        fail "$what does not match /$2/: '$(_oneline "$1")'"
    fi
}

# check COND_DESCRIPTION CMD…: passes when CMD (a test, not a tool) succeeds; nothing captured.
check() {
    local what=$1
    shift
    if "$@"; then pass "$what"; else fail "$what"; fi
}

# retry SECONDS CMD…: reruns CMD (via `run`) every 0.2 s until it succeeds or time is up.
retry() {
    local deadline=$((SECONDS + $1))
    shift
    while :; do
        run "$@"
        ((RC == 0)) && return 0
        ((SECONDS >= deadline)) && return 1
        sleep 0.2
    done
}

# ---------------------------------------------------------------------------------------------
# Setup and teardown

# e2e_init NAME: must be called first. Checks root, serializes e2e runs on this machine (they
# share socket names and container names), makes the temp dir and installs the traps.
e2e_init() {
    E2E_NAME=$1
    E2E_TMP=$(mktemp -d "/tmp/rexray-e2e-$1.XXXXXX") || { echo "e2e: cannot make a temp dir" >&2; exit 1; }
    trap _e2e_exit EXIT
    trap 'exit 130' INT
    trap 'exit 143' TERM
    say "e2e $E2E_NAME: temp dir $E2E_TMP, daemon $REXRAY_BIN"
    if [[ $(id -u) != 0 ]]; then
        e2e_die "must run as root (it starts dockerd, serves /run/docker/plugins and mounts)"
    fi
    mkdir -p /run/lock
    exec 9>/run/lock/rexray-e2e.lock
    if ! flock -n 9; then
        say "another e2e run holds /run/lock/rexray-e2e.lock; waiting for it (up to 15 min)"
        flock -w 900 9 || e2e_die "timed out waiting for /run/lock/rexray-e2e.lock"
    fi
}

# apt_install PKG…: installs the packages that are missing (apt-get update once per run).
apt_install() {
    local missing=() p
    for p in "$@"; do
        dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
    done
    ((${#missing[@]})) || return 0
    say "installing ${missing[*]} (log: $E2E_TMP/apt.log)"
    if ((E2E_APT_UPDATED == 0)); then
        DEBIAN_FRONTEND=noninteractive apt-get update -qq >>"$E2E_TMP/apt.log" 2>&1 ||
            { tail -n 20 "$E2E_TMP/apt.log"; e2e_die "apt-get update failed"; }
        E2E_APT_UPDATED=1
    fi
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" </dev/null >>"$E2E_TMP/apt.log" 2>&1 ||
        { tail -n 20 "$E2E_TMP/apt.log"; e2e_die "apt-get install ${missing[*]} failed"; }
}

# The engine a run uses: E2E_ENGINE=20.10 (default: Debian 12's docker.io on the default socket),
# E2E_ENGINE=26 (Debian 13's docker.io 26.1 with its containerd and docker-cli) or E2E_ENGINE=28
# (Debian unstable's docker.io 28.5 with its containerd 2.1 and docker-cli: the first engine here
# whose Swarm loads CSI plugins, moby#48133 being fixed in 28.2). The unpacked engines come from
# their .debs into E2E_DOCKER26_ROOT (the engine's own cache), run beside 20.10 with their own
# data root, exec root, socket and containerd namespaces, and Debian 12's runc, since the newer
# suites' need a newer glibc.
E2E_ENGINE=${E2E_ENGINE:-20.10}
case $E2E_ENGINE in
28) E2E_ENGINE_SUITE=sid ;;
*) E2E_ENGINE_SUITE=trixie ;;
esac
E2E_DOCKER26_CACHE=${E2E_DOCKER26_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/rexray-ci/docker$E2E_ENGINE}
E2E_DOCKER26_ROOT=$E2E_DOCKER26_CACHE/root
E2E_DOCKER26_RUN=/run/rexray-e2e-docker$E2E_ENGINE
# Whether the engine is one of the unpacked ones.
_unpacked_engine() { [[ $E2E_ENGINE == 26 || $E2E_ENGINE == 28 ]]; }
if _unpacked_engine; then
    export DOCKER_HOST=unix://$E2E_DOCKER26_RUN/docker.sock
fi

_pick_docker_bin() {
    [[ -n $E2E_DOCKER_BIN ]] && return
    if _unpacked_engine; then
        E2E_DOCKER_BIN=$E2E_DOCKER26_ROOT/usr/bin/docker
    elif [[ -x /usr/bin/docker ]]; then
        E2E_DOCKER_BIN=/usr/bin/docker
    else
        E2E_DOCKER_BIN=docker
    fi
}

# docker …: the docker CLI with a deadline, so that a hung call fails the run instead of hanging it.
docker() {
    timeout -k 5 "${E2E_DOCKER_TIMEOUT:-180}" "$E2E_DOCKER_BIN" "$@"
}

_docker_answers() {
    [[ -n $E2E_DOCKER_BIN && -x $E2E_DOCKER_BIN ]] || [[ $E2E_DOCKER_BIN == docker ]] || return 1
    timeout -k 2 10 "$E2E_DOCKER_BIN" info >/dev/null 2>&1
}

# _install_docker26: the unpacked engine's docker.io, containerd and docker-cli (Debian 13's, or
# unstable's for E2E_ENGINE=28), fetched with a private apt configuration (that suite's index
# never reaches the system's) and unpacked, once per machine.
_install_docker26() {
    [[ -x $E2E_DOCKER26_ROOT/usr/sbin/dockerd && -x $E2E_DOCKER26_ROOT/usr/bin/docker ]] && return 0
    apt_install runc ca-certificates
    local c=$E2E_DOCKER26_CACHE opts deb
    mkdir -p "$c/apt/lists/partial" "$c/apt/cache/archives/partial" "$c/debs"
    echo "deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://deb.debian.org/debian $E2E_ENGINE_SUITE main" \
        >"$c/apt/sources.list"
    opts=(-o "Dir::Etc::SourceList=$c/apt/sources.list" -o Dir::Etc::SourceParts=/dev/null
        -o "Dir::State::Lists=$c/apt/lists" -o "Dir::Cache=$c/apt/cache" -o Debug::NoLocking=1
        -o APT::Sandbox::User=root)
    say "docker $E2E_ENGINE: fetching Debian $E2E_ENGINE_SUITE's docker.io, containerd and docker-cli into $c (log: $E2E_TMP/apt.log)"
    apt-get "${opts[@]}" update >>"$E2E_TMP/apt.log" 2>&1 || { tail -n 20 "$E2E_TMP/apt.log"; e2e_die "apt-get update ($E2E_ENGINE_SUITE) failed"; }
    rm -f "$c"/debs/*.deb
    (cd "$c/debs" && apt-get "${opts[@]}" download docker.io containerd docker-cli) >>"$E2E_TMP/apt.log" 2>&1 ||
        { tail -n 20 "$E2E_TMP/apt.log"; e2e_die "apt-get download ($E2E_ENGINE_SUITE) failed"; }
    rm -rf "$E2E_DOCKER26_ROOT.new"
    mkdir -p "$E2E_DOCKER26_ROOT.new"
    for deb in "$c"/debs/*.deb; do
        dpkg-deb -x "$deb" "$E2E_DOCKER26_ROOT.new" || e2e_die "dpkg-deb -x $deb failed"
    done
    # Debian 13's runc needs glibc 2.38: the system's runc (Debian 12) must be the one found.
    # (docker.io does not ship runc; the line below only guards against a future one that does.)
    rm -f "$E2E_DOCKER26_ROOT.new/usr/sbin/runc" "$E2E_DOCKER26_ROOT.new/usr/bin/runc"
    rm -rf "$E2E_DOCKER26_ROOT" && mv "$E2E_DOCKER26_ROOT.new" "$E2E_DOCKER26_ROOT"
}

# _start_dockerd: starts the engine E2E_ENGINE names, logging to $E2E_TMP/dockerd.log.
_start_dockerd() {
    if _unpacked_engine; then
        mkdir -p "$E2E_DOCKER26_RUN" "/var/lib/rexray-e2e-docker$E2E_ENGINE"
        PATH=$E2E_DOCKER26_ROOT/usr/sbin:$E2E_DOCKER26_ROOT/usr/bin:/usr/sbin:/usr/bin:/sbin:/bin \
            "$E2E_DOCKER26_ROOT/usr/sbin/dockerd" --data-root "/var/lib/rexray-e2e-docker$E2E_ENGINE" \
            --exec-root "$E2E_DOCKER26_RUN/exec" --pidfile "$E2E_DOCKER26_RUN/dockerd.pid" \
            -H "unix://$E2E_DOCKER26_RUN/docker.sock" --bridge=none --iptables=false \
            --containerd-namespace "rexray-e2e-$E2E_ENGINE" --containerd-plugins-namespace "rexray-e2e-$E2E_ENGINE-plugins" \
            >"$E2E_TMP/dockerd.log" 2>&1 </dev/null 9>&- &
    else
        dockerd --pidfile "$E2E_TMP/dockerd.pid" >"$E2E_TMP/dockerd.log" 2>&1 </dev/null 9>&- &
    fi
    E2E_DOCKERD_PID=$!
}

# _engine_pid: the pid of a running dockerd of this run's engine, if any.
_engine_pid() {
    local pidfile=/var/run/docker.pid
    _unpacked_engine && pidfile=$E2E_DOCKER26_RUN/dockerd.pid
    [[ -f $pidfile ]] && _proc_alive "$(cat "$pidfile")" && cat "$pidfile"
}

# ensure_docker: makes sure a Docker Engine of E2E_ENGINE answers. Installs it (and
# busybox-static) when it is missing, starts it in the background when none runs, and waits up
# to 60 s. An engine that was already running is left alone; one started here is stopped at exit.
ensure_docker() {
    _pick_docker_bin
    if _docker_answers; then
        say "docker: engine $(docker version --format '{{.Server.Version}}' 2>/dev/null) (already running)"
        return 0
    fi
    if _unpacked_engine; then
        apt_install docker.io busybox-static
        _install_docker26
    elif ! command -v dockerd >/dev/null 2>&1 || [[ ! -x /usr/bin/docker ]]; then
        apt_install docker.io busybox-static
        E2E_DOCKER_BIN=""
        _pick_docker_bin
    fi
    local deadline=$((SECONDS + 60))
    if [[ -n $(_engine_pid) ]]; then
        say "docker: a dockerd ($E2E_ENGINE) is running but not answering yet; waiting for it"
    else
        say "docker: starting dockerd $E2E_ENGINE (log: $E2E_TMP/dockerd.log)"
        _start_dockerd
    fi
    until _docker_answers; do
        if [[ -n $E2E_DOCKERD_PID ]] && ! _proc_alive "$E2E_DOCKERD_PID"; then
            tail -n 30 "$E2E_TMP/dockerd.log"
            E2E_DOCKERD_PID=""
            e2e_die "dockerd exited while starting (log above)"
        fi
        if ((SECONDS >= deadline)); then
            [[ -f $E2E_TMP/dockerd.log ]] && tail -n 30 "$E2E_TMP/dockerd.log"
            e2e_die "docker info did not answer within 60 s"
        fi
        sleep 0.5
    done
    say "docker: engine $(docker version --format '{{.Server.Version}}' 2>/dev/null) answers"
}

# restart_dockerd: stops and starts again the engine this run started (Docker's caches and its
# plugin handles are gone after it). Fails the step when this run did not start the engine.
restart_dockerd() {
    if [[ -z $E2E_DOCKERD_PID ]]; then
        fail "restart_dockerd: this run did not start the Docker Engine, so it does not restart it"
        return 1
    fi
    _stop_dockerd
    mv -f "$E2E_TMP/dockerd.log" "$E2E_TMP/dockerd.log.1" 2>/dev/null
    ensure_docker
}

_stop_dockerd() {
    [[ -n $E2E_DOCKERD_PID ]] || return 0
    kill -TERM "$E2E_DOCKERD_PID" 2>/dev/null
    local deadline=$((SECONDS + 30))
    while _proc_alive "$E2E_DOCKERD_PID" && ((SECONDS < deadline)); do sleep 0.2; done
    _proc_alive "$E2E_DOCKERD_PID" && kill -KILL "$E2E_DOCKERD_PID" 2>/dev/null
    wait "$E2E_DOCKERD_PID" 2>/dev/null
    E2E_DOCKERD_PID=""
}

# ensure_image [NAME]: a tiny image from busybox-static, made with `docker import` (no registry
# is needed), unless an image of that name exists already.
ensure_image() {
    local name=${1:-$E2E_IMAGE}
    if docker image inspect "$name" >/dev/null 2>&1; then
        return 0
    fi
    apt_install busybox-static
    local dir=$E2E_TMP/image t
    mkdir -p "$dir/bin" "$dir/tmp"
    cp /bin/busybox "$dir/bin/busybox" || e2e_die "cannot copy /bin/busybox"
    for t in sh cat echo ls df sleep sync mkdir touch sha256sum stat id dd head wc grep test true \
        false mount cut awk tr rm mv cp; do
        ln -s busybox "$dir/bin/$t"
    done
    if tar -C "$dir" -c . | docker import - "$name" >/dev/null; then
        say "image: built $name from busybox-static"
    else
        e2e_die "docker import of $name failed"
    fi
}

# track_container NAME… / track_volume NAME…: what the cleanup removes (stale ones from an
# aborted earlier run are removed by e2e_preclean).
track_container() { E2E_CONTAINERS+=("$@"); }
track_volume() { E2E_VOLUMES+=("$@"); }

_remove_tracked() {
    local c v
    for c in "${E2E_CONTAINERS[@]}"; do
        docker rm -f "$c" >/dev/null 2>&1
    done
    for v in "${E2E_VOLUMES[@]}"; do
        docker volume rm -f "$v" >/dev/null 2>&1
    done
}

# e2e_preclean: removes containers and volumes of the tracked names left by an aborted earlier
# run. Call it after start_daemon (volume removal goes through the plugin).
e2e_preclean() {
    _remove_tracked
}

_proc_alive() {
    local state
    [[ -r /proc/$1/stat ]] || return 1
    read -r _ _ state _ <"/proc/$1/stat" 2>/dev/null || return 1
    [[ $state != Z ]]
}

# ---------------------------------------------------------------------------------------------
# The plugin daemon

# plugin_call METHOD [BODY]: POSTs to the daemon's socket the way Docker does (no Content-Type,
# Accept v1.2, JSON plus a newline) and prints the response body.
plugin_call() {
    local method=$1 body=${2:-}
    [[ -n $body ]] && body+=$'\n'
    curl -sS --max-time 30 --unix-socket "$E2E_SOCK" \
        -H 'Accept: application/vnd.docker.plugins.v1.2+json' -H 'Content-Type:' -H 'Expect:' \
        -X POST --data-binary "$body" "http://plugin.moby.localhost/$method"
}

_daemon_answers() {
    local resp
    [[ -S $E2E_SOCK ]] || return 1
    resp=$(curl -s --max-time 2 --unix-socket "$E2E_SOCK" -H 'Content-Type:' -X POST \
        "http://plugin.moby.localhost/Plugin.Activate" 2>/dev/null) || return 1
    [[ ${resp//[[:space:]]/} == *'"Implements":["VolumeDriver"]'* ]]
}

# start_daemon NAME CONFIG: starts `$REXRAY_BIN service start -f -c CONFIG` in the background
# with REXRAY_HOME=<run temp>/rexray-home (kept across restarts), logging to <run temp>/daemon.log,
# and waits up to 10 s for /run/docker/plugins/NAME.sock to answer Plugin.Activate.
start_daemon() {
    local name=$1 config=$2
    E2E_SOCK=/run/docker/plugins/$name.sock
    E2E_DAEMON_LOG=$E2E_TMP/daemon.log
    E2E_REXRAY_HOME=${E2E_REXRAY_HOME:-$E2E_TMP/rexray-home}
    mkdir -p "$E2E_REXRAY_HOME"
    command -v curl >/dev/null 2>&1 || apt_install curl
    [[ -x $REXRAY_BIN ]] || e2e_die "no daemon binary at $REXRAY_BIN (run cargo build, or set REXRAY_BIN)"
    if _daemon_answers; then
        e2e_die "$E2E_SOCK is already served by another process; stop it first"
    fi
    printf -- '----- %s: %s service start -f -c %s\n' "$(date -Is)" "$REXRAY_BIN" "$config" >>"$E2E_DAEMON_LOG"
    REXRAY_HOME=$E2E_REXRAY_HOME "$REXRAY_BIN" service start -f -c "$config" >>"$E2E_DAEMON_LOG" 2>&1 </dev/null 9>&- &
    E2E_DAEMON_PID=$!
    local t0=$SECONDS deadline=$((SECONDS + 10))
    until _daemon_answers; do
        if ! _proc_alive "$E2E_DAEMON_PID"; then
            wait "$E2E_DAEMON_PID" 2>/dev/null
            local rc=$?
            E2E_DAEMON_PID=""
            e2e_die "daemon exited with status $rc while starting (log below)"
        fi
        if ((SECONDS >= deadline)); then
            e2e_die "$E2E_SOCK did not answer Plugin.Activate within 10 s (log below)"
        fi
        sleep 0.1
    done
    E2E_DAEMON_CONFIG=$config
    pass "daemon (pid $E2E_DAEMON_PID) answers Plugin.Activate on $E2E_SOCK after $((SECONDS - t0)) s"
}

# kill9_daemon: SIGKILL, as a crash would (the socket file stays behind).
kill9_daemon() {
    [[ -n $E2E_DAEMON_PID ]] || return 0
    kill -KILL "$E2E_DAEMON_PID" 2>/dev/null
    wait "$E2E_DAEMON_PID" 2>/dev/null
    say "  (daemon pid $E2E_DAEMON_PID killed with SIGKILL)"
    E2E_DAEMON_PID=""
}

# stop_daemon [--no-check]: SIGTERM and wait (15 s, then SIGKILL). Unless --no-check, asserts a
# prompt exit with status 0 and that the socket file is gone.
stop_daemon() {
    local checks=1
    [[ ${1:-} == --no-check ]] && checks=0
    [[ -n $E2E_DAEMON_PID ]] || return 0
    local pid=$E2E_DAEMON_PID t0=$SECONDS deadline=$((SECONDS + 15)) rc killed=0
    kill -TERM "$pid" 2>/dev/null
    while _proc_alive "$pid" && ((SECONDS < deadline)); do sleep 0.1; done
    if _proc_alive "$pid"; then
        kill -KILL "$pid" 2>/dev/null
        killed=1
    fi
    wait "$pid" 2>/dev/null
    rc=$?
    E2E_DAEMON_PID=""
    ((checks)) || return 0
    if ((killed)); then
        fail "daemon did not exit within 15 s of SIGTERM (killed)"
    else
        pass "daemon exited $((SECONDS - t0)) s after SIGTERM"
        assert_eq "$rc" 0 "daemon exit status after SIGTERM"
    fi
    if [[ -e $E2E_SOCK ]]; then
        fail "socket file $E2E_SOCK still exists after the daemon stopped"
    else
        pass "socket file $E2E_SOCK removed"
    fi
}

daemon_alive() { [[ -n $E2E_DAEMON_PID ]] && _proc_alive "$E2E_DAEMON_PID"; }

# vol_status VOL: `docker volume inspect`'s Status as compact JSON.
vol_status() { docker volume inspect --format '{{json .Status}}' "$1"; }

# vol_holders VOL: Status.holders as a count (a number as is; a list or map by its length;
# `missing` when absent).
vol_holders() {
    docker volume inspect --format '{{$h := index .Status "holders"}}{{if eq (printf "%T" $h) "float64"}}{{$h}}{{else if eq (printf "%T" $h) "<nil>"}}missing{{else}}{{len $h}}{{end}}' "$1"
}

# assert_holders VOL N
assert_holders() {
    run vol_holders "$1"
    if ((RC != 0)); then
        fail "docker volume inspect $1 (for holders) → exit $RC: $(_oneline "$ERR")"
    else
        assert_eq "$OUT" "$2" "Status.holders of $1"
    fi
}

# ---------------------------------------------------------------------------------------------
# The EXIT trap

_e2e_exit() {
    local status=$?
    trap - EXIT INT TERM
    set +e
    if ((status != 0 && E2E_FAILED == 0)); then
        fail "the script ended early with status $status"
    fi
    if [[ -n $E2E_DOCKER_BIN ]] && _docker_answers; then
        # Docker reaches a plugin's volumes only through the plugin (removing a container calls
        # Unmount, removing a volume calls Remove): bring the daemon back first if it is down.
        local c v left=()
        for c in "${E2E_CONTAINERS[@]}"; do
            docker container inspect "$c" >/dev/null 2>&1 && left+=("$c")
        done
        if ((${#left[@]} || (${#E2E_VOLUMES[@]} && !E2E_VOLUMES_CLEAN))) &&
            ! daemon_alive && [[ -n $E2E_DAEMON_CONFIG && -x $REXRAY_BIN ]]; then
            say "cleanup: restarting the daemon to remove the test containers and volumes"
            REXRAY_HOME=$E2E_REXRAY_HOME "$REXRAY_BIN" service start -f -c "$E2E_DAEMON_CONFIG" \
                >>"$E2E_DAEMON_LOG" 2>&1 </dev/null 9>&- &
            E2E_DAEMON_PID=$!
            local deadline=$((SECONDS + 10))
            until _daemon_answers || ! daemon_alive || ((SECONDS >= deadline)); do sleep 0.1; done
        fi
        for c in "${left[@]}"; do docker rm -f "$c" >/dev/null 2>&1; done
        if ((!E2E_VOLUMES_CLEAN)); then
            for v in "${E2E_VOLUMES[@]}"; do docker volume rm -f "$v" >/dev/null 2>&1; done
        fi
    fi
    stop_daemon --no-check
    if ((E2E_FAILED)) && [[ -n $E2E_DAEMON_LOG && -f $E2E_DAEMON_LOG ]]; then
        say ""
        say "----- last 60 lines of the daemon log ($E2E_DAEMON_LOG)"
        tail -n 60 "$E2E_DAEMON_LOG" | sed 's/\x1b\[[0-9;]*m//g'
        say "-----"
    fi
    _stop_dockerd
    if ((E2E_FAILED)) || [[ ${E2E_KEEP:-} == 1 ]]; then
        say ""
        say "e2e: kept $E2E_TMP (daemon log, config, vfs root)"
    else
        rm -rf "$E2E_TMP"
    fi
    say ""
    if ((E2E_FAILED)); then
        say "e2e $E2E_NAME failures:"
        local f
        for f in "${E2E_FAILURES[@]}"; do say "  - $f"; done
    fi
    say "e2e $E2E_NAME: took $((SECONDS - E2E_START)) s"
    say "e2e: $E2E_PASSED passed, $E2E_FAILED failed"
    ((E2E_FAILED == 0)) && exit 0
    exit 1
}
