#!/usr/bin/env bash
# Benchmark: create + first mount of a 16 GiB `loop` volume through the daemon's socket, versus
# the bare shell sequence (truncate; losetup; mkfs.ext4; mount) on the same machine, interleaved
# in one run. Also times remount (Mount of an existing, formatted volume) and Unmount.
#
#     cargo build --release && sudo bash bench/loop_create_mount.sh [RUNS]
#
# Prints a markdown table of medians (ms) and the ratio daemon / bare. Needs root, loop devices,
# curl and python3.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
RUNS=${1:-9}
BIN=${REXRAY_BIN:-target/release/rexray}
[[ $(id -u) == 0 ]] || { echo "needs root" >&2; exit 1; }
[[ -x $BIN ]] || { echo "build first: cargo build --release" >&2; exit 1; }

TMP=$(mktemp -d /tmp/rexray-bench.XXXXXX)
SOCK=$TMP/bench.sock
cat >"$TMP/rexray.yml" <<YML
rexray:
  logLevel: warn
  modules:
    bench:
      host: unix://$SOCK
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
          path: $TMP/volumes
loop:
  root: $TMP/loop
YML
REXRAY_HOME=$TMP/home "$BIN" service start -f -c "$TMP/rexray.yml" 2>"$TMP/daemon.log" &
DAEMON=$!
cleanup() {
    kill "$DAEMON" 2>/dev/null || true
    wait "$DAEMON" 2>/dev/null || true
    for m in $(grep -o "$TMP/[^ ]*" /proc/self/mounts | sort -r); do umount "$m" 2>/dev/null || true; done
    for d in $(losetup -n -O NAME -j "$TMP"/bare.img 2>/dev/null); do losetup -d "$d"; done
    rm -rf "$TMP"
}
trap cleanup EXIT
for _ in $(seq 100); do [[ -S $SOCK ]] && break; sleep 0.05; done

call() { curl -sf --unix-socket "$SOCK" -X POST -H 'Accept: application/vnd.docker.plugins.v1.2+json' -d "$2" "http://plugin/$1" >/dev/null; }
now_ms() { date +%s%N | awk '{printf "%.3f", $1/1e6}'; }
elapsed() { awk -v a="$1" -v b="$2" 'BEGIN{printf "%.1f", b-a}'; }

declare -a d_create d_remount d_unmount b_create b_remount b_unmount
for i in $(seq "$RUNS"); do
    # Through the daemon: Create + Mount (attach, probe, mkfs, mount, data dir).
    t0=$(now_ms); call VolumeDriver.Create "{\"Name\":\"b$i\",\"Opts\":{\"size\":\"16\"}}"
    call VolumeDriver.Mount "{\"Name\":\"b$i\",\"ID\":\"x\"}"; t1=$(now_ms)
    call VolumeDriver.Unmount "{\"Name\":\"b$i\",\"ID\":\"x\"}"; t2=$(now_ms)
    call VolumeDriver.Mount "{\"Name\":\"b$i\",\"ID\":\"y\"}"; t3=$(now_ms)
    call VolumeDriver.Unmount "{\"Name\":\"b$i\",\"ID\":\"y\"}"
    call VolumeDriver.Remove "{\"Name\":\"b$i\"}"
    d_create+=("$(elapsed "$t0" "$t1")"); d_unmount+=("$(elapsed "$t1" "$t2")"); d_remount+=("$(elapsed "$t2" "$t3")")

    # The bare sequence, same mkfs options as the daemon.
    img=$TMP/bare.img mnt=$TMP/bare-mnt
    mkdir -p "$mnt"
    t0=$(now_ms)
    truncate -s 16G "$img"
    dev=$(losetup --find --show "$img")
    mkfs.ext4 -q -F -m0 -E lazy_itable_init=1,lazy_journal_init=1 "$dev"
    mount -t ext4 "$dev" "$mnt"
    t1=$(now_ms)
    sync -f "$mnt"; umount "$mnt"; losetup -d "$dev"
    t2=$(now_ms)
    dev=$(losetup --find --show "$img"); mount -t ext4 "$dev" "$mnt"
    t3=$(now_ms)
    umount "$mnt"; losetup -d "$dev"; rm -f "$img"
    b_create+=("$(elapsed "$t0" "$t1")"); b_unmount+=("$(elapsed "$t1" "$t2")"); b_remount+=("$(elapsed "$t2" "$t3")")
done

median() { printf '%s\n' "$@" | sort -n | awk '{a[NR]=$1} END{print (NR%2)?a[(NR+1)/2]:(a[NR/2]+a[NR/2+1])/2}'; }
row() {
    local d b
    d=$(median "${@:2:$RUNS}"); b=$(median "${@:$((RUNS + 2))}")
    printf '| %s | %s | %s | %s |\n' "$1" "$d" "$b" "$(awk -v d="$d" -v b="$b" 'BEGIN{printf "%.2f", d/b}')"
}
echo "runs: $RUNS, $(nproc) cores, kernel $(uname -r), $(date -u +%Y-%m-%d)"
echo
echo "| 16 GiB loop volume | daemon (ms, median) | bare shell (ms, median) | ratio |"
echo "|---|---|---|---|"
row "create + first mount" "${d_create[@]}" "${b_create[@]}"
row "remount" "${d_remount[@]}" "${b_remount[@]}"
row "unmount" "${d_unmount[@]}" "${b_unmount[@]}"
