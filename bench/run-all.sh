#!/usr/bin/env bash
# The whole benchmark suite of issue 7, in well under 15 minutes on a 2-core machine (as root):
#
#     bash bench/run-all.sh                  # every stage; refreshes BENCHMARKS.md's tables
#     bash bench/run-all.sh protocol scale   # some stages only (the other tables keep their text)
#
# Stages: machine protocol footprint scale loop csi ebs-latency docker ebs (see bench/suite.py). Results go to
# bench/target/results/<UTC time>/ (one JSON file per stage, tables.md, suite.log), linked as
# bench/target/results/latest.
#
# Environment:
#   BENCH_SKIP_BUILD=1   use the binaries as they are (target/release/rexray, bench/target/release/rxbench)
#   BENCH_BUILD_EBS=1    also build the daemon with --features ebs (in bench/target/ebs-build, so the
#                        main target dir is untouched; about 10 minutes the first time, not counted
#                        in the suite's run time) for the ebs stage; REXRAY_EBS_BIN=PATH uses a given one
#   BENCH_NO_WRITE=1     print the tables instead of writing them into BENCHMARKS.md
#   BENCH_QUICK=1        smoke-test the harness (seconds per stage; the numbers mean nothing)
#   and suite.py's: BENCH_ROUNDS, BENCH_DURATION, BENCH_DOCKER_RUNS, BENCH_LOOP_RUNS, BENCH_CSI_SAMPLES,
#   BENCH_CSI_CALLS, BENCH_PIN, …
#
# The docker stage takes the e2e lock (/run/lock/rexray-e2e.lock) so it never overlaps an e2e run,
# starts dockerd only if none answers (and then stops it at the end), and builds the busybox image
# with tests/e2e/lib.sh's helpers.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
if [[ $(id -u) != 0 ]]; then
    echo "run-all.sh: run as root (Docker, loop devices, mounts)" >&2
    exit 1
fi

ALL=(machine protocol footprint scale loop csi ebs-latency docker ebs)
STAGES=("$@")
((${#STAGES[@]})) || STAGES=("${ALL[@]}")
want() { local s; for s in "${STAGES[@]}"; do [[ $s == "$1" ]] && return 0; done; return 1; }
# machine information goes with every run
want machine || STAGES=(machine "${STAGES[@]}")

RESULTS=$ROOT/bench/target/results
OUT=${BENCH_OUT:-$RESULTS/$(date -u +%Y%m%dT%H%M%SZ)}
RUN_DIR=$OUT   # lib.sh (sourced below in subshells) has an OUT variable of its own
mkdir -p "$OUT"
ln -sfn "$OUT" "$RESULTS/latest"
exec > >(tee -a "$OUT/suite.log") 2>&1
say() { printf '[%(%H:%M:%S)T] %s\n' -1 "$*"; }
say "run-all: stages ${STAGES[*]}; results in $OUT"

# ---------------------------------------------------------------------------------------------
# Builds (not counted in the suite's time)
if [[ ${BENCH_SKIP_BUILD:-} != 1 ]]; then
    say "build: cargo build --release (daemon)"
    cargo build --release --quiet
    say "build: bench tools (bench/target)"
    (cd bench && cargo build --release --quiet)
    if want ebs && [[ ${BENCH_BUILD_EBS:-} == 1 && -z ${REXRAY_EBS_BIN:-} ]]; then
        say "build: cargo build --release --features ebs (bench/target/ebs-build)"
        nice cargo build --release --quiet --features ebs --target-dir bench/target/ebs-build
    fi
fi
[[ -x target/release/rexray ]] || { echo "no target/release/rexray" >&2; exit 1; }
# The binary under test, frozen for this run (others may rebuild target/ meanwhile).
cp target/release/rexray "$OUT/rexray"
export REXRAY_BIN=$OUT/rexray
if [[ -z ${REXRAY_EBS_BIN:-} && -x bench/target/ebs-build/release/rexray ]]; then
    cp bench/target/ebs-build/release/rexray "$OUT/rexray-ebs"
    export REXRAY_EBS_BIN=$OUT/rexray-ebs BENCH_EBS_RELEASE=1
fi
T0=$SECONDS

# ---------------------------------------------------------------------------------------------
# Stages without Docker
NODOCKER=()
for s in "${STAGES[@]}"; do [[ $s == docker || $s == ebs ]] || NODOCKER+=("$s"); done
status=0
python3 bench/suite.py "$OUT" "${NODOCKER[@]}" || status=1

# ---------------------------------------------------------------------------------------------
# Stages with Docker (docker, ebs's `docker volume ls`), under the e2e lock
DOCKERD_PID=""
if want docker || want ebs; then
    mkdir -p /run/lock
    exec 9>/run/lock/rexray-e2e.lock
    say "docker: waiting for the e2e lock (up to 5 min)"
    if flock -w 300 9; then
        docker_ok=1
        if ! timeout 10 /usr/bin/docker info >/dev/null 2>&1; then
            before=$(pgrep -x dockerd || true)
            # lib.sh's helpers: install docker.io if missing, start dockerd, build the image.
            if ! (
                set +eu
                # shellcheck source=tests/e2e/lib.sh
                source tests/e2e/lib.sh
                E2E_TMP=$RUN_DIR/docker-setup
                mkdir -p "$E2E_TMP"
                ensure_docker && ensure_image "${BENCH_IMAGE:-rexray-test-busybox}"
            ); then
                docker_ok=0
            fi
            # the dockerd this run started (also when it failed to answer in time): stopped at the end
            DOCKERD_PID=$(pgrep -x dockerd | grep -vxF "${before:-none}" | head -1 || true)
        else
            (
                set +eu
                source tests/e2e/lib.sh
                E2E_TMP=$RUN_DIR/docker-setup
                mkdir -p "$E2E_TMP"
                _pick_docker_bin
                ensure_image "${BENCH_IMAGE:-rexray-test-busybox}"
            ) || docker_ok=0
        fi
        ((docker_ok)) || say "docker: no Docker Engine; the docker stage will record a skip"
        DSTAGES=()
        want docker && DSTAGES+=(docker)
        want ebs && DSTAGES+=(ebs)
        python3 bench/suite.py "$OUT" "${DSTAGES[@]}" || status=1
        if [[ -n $DOCKERD_PID ]]; then
            say "docker: stopping the dockerd this run started (pid $DOCKERD_PID)"
            kill -TERM "$DOCKERD_PID" 2>/dev/null || true
            for _ in $(seq 1 150); do kill -0 "$DOCKERD_PID" 2>/dev/null || break; sleep 0.2; done
        fi
    else
        say "docker: the e2e lock stayed busy; skipping the docker stages"
    fi
    flock -u 9 || true
fi

SUITE_SECS=$((SECONDS - T0))
say "run-all: suite took ${SUITE_SECS} s (builds excluded)"
echo "{\"suite_secs\": $SUITE_SECS}" >"$OUT/suite.json"

# ---------------------------------------------------------------------------------------------
# Tables
if [[ ${BENCH_NO_WRITE:-} == 1 || ${BENCH_QUICK:-} == 1 ]]; then
    python3 bench/report.py "$OUT"
else
    python3 bench/report.py "$OUT" --write BENCHMARKS.md >/dev/null
    say "run-all: BENCHMARKS.md tables updated (also in $OUT/tables.md)"
fi
exit $status
