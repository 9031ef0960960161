#!/usr/bin/env python3
"""Benchmark of the CSI front (BENCHMARKS.md §6): NodeStage + NodePublish of a `loop` volume
against the bare kernel sequence, and the cost of a CSI round trip.

    cargo build --release && (cd bench && cargo build --release)
    sudo python3 bench/csi_bench.py [--samples 30] [--calls 2000] [--rounds 2] [--json FILE]

Normally run as the `csi` stage of `bash bench/run-all.sh csi`. The daemon serves one CSI
module (mode both: Identity, Controller, Node) on the loop backend, all under a temp dir.

- `rxbench csi-stage`: CreateVolume (1 GiB) ×3 and each volume's first cycle (its NodeStage
  formats), then N interleaved cycles, the order rotating, of
    csi   ControllerPublish (attaches the loop device), NodeStage (mount), NodePublish (bind)
          and back: NodeUnpublish, NodeUnstage (syncfs + umount), ControllerUnpublish (detach);
    proc  losetup --find --show, mount -t ext4, mount --bind, umount ×2, losetup -d, each tool
          its own process (a pre-formatted 1 GiB image, same mkfs options as the daemon);
    sys   the same steps as direct syscalls (loop ioctls, mount(2), umount2(2)): the floor.
- `rxbench csi-rpc`: GetPluginInfo, Probe and NodeGetInfo, one at a time on one connection,
  against the daemon and against `rxbench csi-serve` (bare tonic with the daemon's own replies).

Every loop is bounded in count and time. Whatever happens, the daemon and the bare server are
stopped, every mount under the temp dir is unmounted, every loop device backed by a file under
it is detached, and the temp dir is removed (it is kept, and said so, only if something under it
could not be unmounted).
"""
import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

BENCH = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(BENCH)
BIN = os.environ.get("REXRAY_BIN", os.path.join(ROOT, "target/release/rexray"))
RXBENCH = os.environ.get("RXBENCH", os.path.join(BENCH, "target/release/rxbench"))

CONFIG = """rexray:
  logLevel: warn
  modules:
    default-docker:
      disabled: true
    csi:
      type: csi
      csi:
        endpoint: unix://{dir}/csi/csi.sock
        driver: bench.csi.rexray.io
libstorage:
  service: loop
  integration:
    volume:
      operations:
        create:
          default:
            size: 1
        mount:
          path: {dir}/volumes
loop:
  root: {dir}/loop
"""


def log(msg):
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def sh(*args, timeout=120):
    r = subprocess.run(args, capture_output=True, text=True, timeout=timeout)
    if r.returncode != 0:
        raise RuntimeError(f"{' '.join(args)}: exit {r.returncode}: {r.stderr.strip()[-800:]}")
    return r.stdout.strip()


def rx(*args, timeout=600):
    return json.loads(sh(RXBENCH, *map(str, args), timeout=timeout).splitlines()[-1])


def wait_socket(path, proc, timeout=20.0, what="daemon", logf=None):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode}: {tail(logf)}")
        try:
            s = socket.socket(socket.AF_UNIX)
            s.connect(path)
            s.close()
            return
        except OSError:
            time.sleep(0.02)
    raise RuntimeError(f"{what} did not listen on {path} within {timeout} s: {tail(logf)}")


def tail(path, n=30):
    if not path:
        return ""
    try:
        with open(path, errors="replace") as f:
            return "".join(f.readlines()[-n:])
    except OSError:
        return ""


def stop(proc, timeout=20):
    if proc and proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


def mounts_under(d):
    """Mount points at or under `d`, deepest first (from /proc/self/mountinfo)."""
    out = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            mp = line.split()[4].replace("\\040", " ")
            if mp == d or mp.startswith(d + "/"):
                out.append(mp)
    return sorted(set(out), key=len, reverse=True)


def loops_under(d):
    """Loop devices whose backing file is under `d`."""
    out = []
    for name in os.listdir("/sys/block"):
        if not name.startswith("loop"):
            continue
        try:
            with open(f"/sys/block/{name}/loop/backing_file") as f:
                backing = f.read().strip()
        except OSError:
            continue
        if backing.startswith(d + "/"):
            out.append(f"/dev/{name}")
    return out


def clean_up(tmp):
    """Unmounts, detaches and removes everything of this run under `tmp`."""
    left = []
    for _ in range(3):  # bounded: nested mounts may need a second pass
        for mp in mounts_under(tmp):
            if subprocess.run(["umount", mp], capture_output=True, timeout=60).returncode != 0:
                subprocess.run(["umount", "-l", mp], capture_output=True, timeout=60)
        left = mounts_under(tmp)
        if not left:
            break
    for dev in loops_under(tmp):
        log(f"clean-up: detaching {dev}, left attached")
        subprocess.run(["losetup", "-d", dev], capture_output=True, timeout=60)
    if left:
        log(f"clean-up: still mounted, so {tmp} is kept: {' '.join(left)}")
        return False
    shutil.rmtree(tmp, ignore_errors=True)
    return not os.path.exists(tmp)


def daemon_warnings(path):
    out = []
    for line in tail(path, 10_000).splitlines():
        if " WARN " in line or " ERROR " in line or "panicked" in line:
            out.append(line.strip()[:400])
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--samples", type=int, default=30)
    ap.add_argument("--first", type=int, default=3)
    ap.add_argument("--calls", type=int, default=2000)
    ap.add_argument("--warmup", type=int, default=200)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--json")
    a = ap.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("needs root (loop devices, mount)")
    for b in (BIN, RXBENCH):
        if not os.access(b, os.X_OK):
            raise SystemExit(f"no {b}: cargo build --release (and in bench/)")

    tmp = tempfile.mkdtemp(prefix="rexray-bench-csi.")
    daemon = bare = None
    dlog = os.path.join(tmp, "daemon.log")
    result = {"samples_asked": a.samples}
    try:
        for d in ("csi", "loop", "home", "w"):
            os.makedirs(os.path.join(tmp, d))
        config = os.path.join(tmp, "rexray.yml")
        with open(config, "w") as f:
            f.write(CONFIG.format(dir=tmp))
        sock = os.path.join(tmp, "csi/csi.sock")
        env = dict(os.environ, REXRAY_HOME=os.path.join(tmp, "home"))
        daemon = subprocess.Popen([BIN, "service", "start", "-f", "-c", config], env=env,
                                  stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=open(dlog, "w"))
        wait_socket(sock, daemon, logf=dlog)
        result["daemon_pid_threads"] = int(open(f"/proc/{daemon.pid}/status").read().split("Threads:")[1].split()[0])

        # The bare image: the daemon's size and mkfs options, formatted once outside the timing.
        img = os.path.join(tmp, "bare.img")
        sh("truncate", "-s", "1G", img)
        sh("mkfs.ext4", "-q", "-F", "-m0", "-E", "lazy_itable_init=1,lazy_journal_init=1", img)

        log(f"csi: stage/publish, {a.samples} interleaved samples")
        st = rx("csi-stage", "--socket", sock, "--dir", os.path.join(tmp, "w"), "--bare-image", img,
                "--samples", a.samples, "--first", a.first, "--max-secs", 400, timeout=500)
        result["stage"] = st
        for kind in ("csi", "proc", "sys"):
            x = st[kind]
            log(f"csi: {kind:4} up (attach+stage+publish) p50 {x['up']['p50_ms']:.2f} ms, "
                f"stage+publish {x['stage+publish']['p50_ms']:.2f} ms, down {x['down']['p50_ms']:.2f} ms")

        bsock = os.path.join(tmp, "bare.sock")
        blog = os.path.join(tmp, "bare.log")
        bare = subprocess.Popen([RXBENCH, "csi-serve", "--socket", bsock, "--copy", sock],
                                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=open(blog, "w"))
        wait_socket(bsock, bare, what="rxbench csi-serve", logf=blog)
        runs = []
        for r in range(a.rounds):
            order = [("ours", sock, daemon.pid), ("bare", bsock, bare.pid)]
            for label, s, pid in (order if r % 2 == 0 else order[::-1]):
                res = rx("csi-rpc", "--socket", s, "--calls", a.calls, "--warmup", a.warmup, "--rounds", 1,
                         "--server-pid", pid, "--label", label, "--max-secs", 120, timeout=180)
                res["round"] = r
                runs.append(res)
                log(f"csi rpc {label}: " + ", ".join(
                    f"{k} p50 {v['p50_us']:.0f} µs p99 {v['p99_us']:.0f} µs {v['calls_per_s']:.0f}/s "
                    f"{v['server_cpu_us_per_call']} µs CPU" for k, v in res["rpcs"].items()))
        result["rpc"] = runs
        result["calls"], result["warmup"], result["rounds"] = a.calls, a.warmup, a.rounds
        result["daemon_rss_kib_after"] = int(open(f"/proc/{daemon.pid}/status").read().split("VmRSS:")[1].split()[0])
    except Exception as e:  # noqa: BLE001 - reported in the JSON and the exit code
        result["error"] = f"{type(e).__name__}: {e}"
        log(f"csi: FAILED: {result['error']}")
    finally:
        stop(bare)
        stop(daemon)
        result["daemon_warnings"] = daemon_warnings(dlog)
        if result.get("error"):
            result["daemon_log_tail"] = tail(dlog)
        result["cleaned_up"] = clean_up(tmp)
    result["command"] = (f"python3 bench/csi_bench.py --samples {a.samples} --calls {a.calls} "
                         f"--rounds {a.rounds}")
    if a.json:
        with open(a.json, "w") as f:
            json.dump(result, f, indent=1)
    else:
        print(json.dumps(result, indent=1))
    if result.get("error"):
        sys.exit(1)


if __name__ == "__main__":
    main()
