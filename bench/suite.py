#!/usr/bin/env python3
"""The rexray-rs benchmark suite (issue 7). Normally run through `bash bench/run-all.sh`.

    python3 bench/suite.py OUT_DIR STAGE…      STAGE: machine protocol docker loop ebs scale footprint csi
                                               ebs-latency

Each stage writes OUT_DIR/<stage>.json; bench/report.py turns them into BENCHMARKS.md's tables.
Everything runs on this machine's Unix sockets and loopback, every loop is bounded in count and
time, and every daemon, server and container started here is stopped here (try/finally).

Environment (all optional):
  REXRAY_BIN          daemon binary (default target/release/rexray, copied into OUT_DIR first)
  REXRAY_EBS_BIN      a binary built with --features ebs, for the ebs stages (ebs-latency: else REXRAY_BIN)
  BENCH_EBS_LATENCY_ROUNDS  Mounts per Δ in the ebs-latency stage (5)
  RXBENCH             the tools binary (default bench/target/release/rxbench)
  BENCH_ROUNDS        protocol rounds per cell (5), BENCH_DURATION seconds per cell (2.0)
  BENCH_RESTART_TIMEOUT  seconds a restart may take to answer its first Get (120)
  BENCH_DOCKER_RUNS   pairs of `docker run` (12); inspect/ls pairs are 2x that
  BENCH_LOOP_RUNS     loop create/mount pairs (15)
  BENCH_CSI_SAMPLES   csi stage/publish cycles of each kind (30); BENCH_CSI_CALLS RPCs per cell (5000)
  BENCH_PIN=1         pin the server to CPU 0 and the load generator to CPU 1
  BENCH_QUICK=1       a short smoke run of everything (numbers meaningless)
"""
import contextlib
import json
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time

BENCH = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(BENCH)
RXBENCH = os.environ.get("RXBENCH", os.path.join(BENCH, "target/release/rxbench"))
QUICK = os.environ.get("BENCH_QUICK") == "1"
PIN = os.environ.get("BENCH_PIN") == "1" and (os.cpu_count() or 1) >= 2


def env_num(name, default, quick=None):
    if QUICK and quick is not None:
        return quick
    v = os.environ.get(name)
    return type(default)(v) if v else default


def log(msg):
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def sh(*args, check=True, timeout=120, env=None):
    r = subprocess.run(args, capture_output=True, text=True, timeout=timeout, env=env)
    if check and r.returncode != 0:
        raise RuntimeError(f"{' '.join(args)}: exit {r.returncode}: {r.stderr.strip()[-800:]}")
    return r.stdout.strip()


def rx(*args, timeout=300, env=None, pin_cpu=None):
    """Runs rxbench and returns its JSON output line."""
    cmd = [RXBENCH, *map(str, args)]
    if pin_cpu is not None:
        cmd = ["taskset", "-c", str(pin_cpu), *cmd]
    out = sh(*cmd, timeout=timeout, env=env)
    return json.loads(out.splitlines()[-1])


def cpu_seconds(pid):
    """utime + stime of a process, in seconds."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def med(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


def proc_status(pid):
    fields = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            k, _, v = line.partition(":")
            fields[k] = v.strip()
    kib = lambda k: int(fields[k].split()[0]) if k in fields else None  # noqa: E731
    return {"rss_kib": kib("VmRSS"), "hwm_kib": kib("VmHWM"), "threads": int(fields.get("Threads", 0))}


# ------------------------------------------------------------------------------------------------
# The daemon under test


VFS_CONFIG = """rexray:
  modules:
    default-docker:
      disabled: true
    bench:
      type: docker
      host: unix://{sock}
      libstorage:
        service: vfs
libstorage:
  server:
    services:
      vfs:
        driver: vfs
vfs:
  root: {dir}/vfs
"""


class Daemon:
    """One rexray daemon with its own config, socket and REXRAY_HOME under a temp dir."""

    def __init__(self, binary, workdir, sock=None, config=VFS_CONFIG, extra_env=None):
        self.binary = binary
        self.dir = tempfile.mkdtemp(prefix="d.", dir=workdir)
        self.sock = sock or os.path.join(self.dir, "bench.sock")
        self.config = os.path.join(self.dir, "rexray.yml")
        with open(self.config, "w") as f:
            f.write(config.format(sock=self.sock, dir=self.dir))
        self.env = dict(os.environ, REXRAY_HOME=os.path.join(self.dir, "home"), **(extra_env or {}))
        self.proc = None

    @property
    def pid(self):
        return self.proc.pid

    def cmd(self):
        return [self.binary, "service", "start", "-f", "-c", self.config]

    def start(self, timeout=15):
        logf = open(os.path.join(self.dir, "daemon.log"), "a")
        cmd = self.cmd()
        if PIN:
            cmd = ["taskset", "-c", "0", *cmd]
        self.proc = subprocess.Popen(cmd, env=self.env, stdin=subprocess.DEVNULL, stdout=logf, stderr=logf)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"daemon exited with {self.proc.returncode}: {self.log_tail()}")
            try:
                s = socket.socket(socket.AF_UNIX)
                s.connect(self.sock)
                s.close()
                rx("call", "--socket", self.sock, "Plugin.Activate")
                return self
            except OSError:
                time.sleep(0.02)
        raise RuntimeError(f"daemon did not listen on {self.sock} within {timeout} s: {self.log_tail()}")

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def log_tail(self, n=20):
        try:
            with open(os.path.join(self.dir, "daemon.log")) as f:
                return "".join(f.readlines()[-n:])
        except OSError:
            return ""

    def call(self, method, body=""):
        return rx("call", "--socket", self.sock, method, body) if body else rx("call", "--socket", self.sock, method)

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()


# ------------------------------------------------------------------------------------------------
# machine


def stage_machine(ctx):
    def first(*cmd):
        try:
            return sh(*cmd, check=False, timeout=20).splitlines()[0]
        except Exception:  # noqa: BLE001
            return None

    cpu = None
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    with open("/proc/meminfo") as f:
        mem_kib = int(f.readline().split()[1])
    docker_bin = "/usr/bin/docker" if os.path.exists("/usr/bin/docker") else "docker"
    git = lambda *a: sh("git", "-C", ROOT, *a, check=False)  # noqa: E731
    return {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "cores": os.cpu_count(),
        "cpu": cpu,
        "mem_gib": round(mem_kib / 1048576, 1),
        "kernel": os.uname().release,
        "docker_server": first(docker_bin, "version", "--format", "{{.Server.Version}}"),
        "docker_client": first(docker_bin, "version", "--format", "{{.Client.Version}}"),
        "dockerd": first("dockerd", "--version"),
        "rustc": first("rustc", "--version"),
        "git": git("rev-parse", "--short", "HEAD"),
        "git_dirty": bool(git("status", "--porcelain", "--untracked-files=no")),
        "loadavg_at_start": open("/proc/loadavg").read().split()[:3],
        "pinned": PIN,
    }


# ------------------------------------------------------------------------------------------------
# protocol: Get / Path / List through the socket vs a bare hyper server


def populate_protocol(d, names):
    """The protocol stage's volumes in daemon `d`: half of them mounted (replies carry a Mountpoint)."""
    rx("populate", "--socket", d.sock, "--prefix", "bench", "--from", 0, "--to", len(names))
    for n in names[:len(names) // 2]:
        d.call("VolumeDriver.Mount", json.dumps({"Name": n, "ID": "f" * 64}))


def stage_protocol(ctx):
    rounds = env_num("BENCH_ROUNDS", 4, 1)
    duration = env_num("BENCH_DURATION", 2.0, 0.5)
    warmup = 0.5 if not QUICK else 0.2
    conns_list = [1, 16, 64]
    names = [f"bench{i}" for i in range(8)]
    lg_cpu = 1 if PIN else None
    results = []
    # BENCH_BASELINE_BIN: an earlier build measured in the same cells (label "before").
    baseline = os.environ.get("BENCH_BASELINE_BIN")
    base = Daemon(baseline, ctx["tmp"]) if baseline else None
    with Daemon(ctx["bin"], ctx["tmp"]) as d, (base or contextlib.nullcontext()) as b:
        populate_protocol(d, names)
        if b:
            populate_protocol(b, names)
        bodies = {
            "get": json.dumps(d.call("VolumeDriver.Get", json.dumps({"Name": names[0]})), separators=(",", ":")),
            "path": json.dumps(d.call("VolumeDriver.Path", json.dumps({"Name": names[0]})), separators=(",", ":")),
            "list": json.dumps(d.call("VolumeDriver.List", "{}"), separators=(",", ":")),
        }
        for op in ("get", "path", "list"):
            servers = {}
            try:
                for kind in ("bare", "axum"):
                    sock = os.path.join(ctx["tmp"], f"{kind}.sock")
                    cmd = [RXBENCH, "serve", "--socket", sock, "--body", bodies[op]]
                    if kind == "axum":
                        cmd += ["--router", "axum"]
                    if PIN:
                        cmd = ["taskset", "-c", "0", *cmd]
                    servers[kind] = (subprocess.Popen(cmd, stdin=subprocess.DEVNULL), sock)
                for _, sock in servers.values():
                    for _ in range(100):
                        if os.path.exists(sock):
                            break
                        time.sleep(0.02)
                for r in range(rounds):
                    for conns in conns_list:
                        order = [("ours", d.sock, d.pid)] + [(k, sock, p.pid) for k, (p, sock) in servers.items()]
                        if b:
                            order.append(("before", b.sock, b.pid))
                        shift = r % len(order)
                        order = order[shift:] + order[:shift]  # rotate who goes first
                        for label, sock, pid in order:
                            res = rx("load", "--socket", sock, "--op", op, "--names", ",".join(names),
                                     "--conns", conns, "--duration", duration, "--warmup", warmup,
                                     "--server-pid", pid, "--label", label, pin_cpu=lg_cpu)
                            res["round"] = r
                            results.append(res)
                            log(f"protocol {op:4} c={conns:2} {label}: {res['rps']:.0f} req/s "
                                f"p50 {res['p50_us']:.0f} µs p99 {res['p99_us']:.0f} µs, "
                                f"{res['server_cpu_us_per_req']} µs CPU/req, other load {res['other_cpu_pct']} %, "
                                f"errors {res['errors']}")
            finally:
                for proc, _ in servers.values():
                    proc.terminate()
                    proc.wait(timeout=10)
        rss = proc_status(d.pid)
        list_scale = list_scaling(ctx, d, b, duration, warmup, lg_cpu)
    return {"rounds": rounds, "duration_s": duration, "warmup_s": warmup, "names": len(names),
            "reply_bytes": {k: len(v) for k, v in bodies.items()}, "runs": results, "daemon_after": rss,
            "baseline": baseline and os.path.basename(baseline), "list_scale": list_scale,
            "command": f"rxbench load --socket S --op OP --names bench0..7 --conns C --duration {duration} "
                       f"--warmup {warmup} --server-pid PID  (vs rxbench serve --socket S --body <our exact reply> "
                       f"[--router axum])"}


def list_scaling(ctx, d, b, duration, warmup, lg_cpu):
    """Server CPU per List (16 connections) at 64 and 512 volumes, ours and the baseline's, each
    beside a bare server answering the same bytes (the 8-volume cells are in the main table)."""
    out = []
    have = 8
    for total in ((64, 512) if not QUICK else (64,)):
        for daemon in (x for x in (d, b) if x):
            rx("populate", "--socket", daemon.sock, "--prefix", "bench", "--from", have, "--to", total)
        have = total
        body = json.dumps(d.call("VolumeDriver.List", "{}"), separators=(",", ":"))
        sock = os.path.join(ctx["tmp"], f"bare-list-{total}.sock")
        server = subprocess.Popen([RXBENCH, "serve", "--socket", sock, "--body", body], stdin=subprocess.DEVNULL)
        try:
            for _ in range(100):
                if os.path.exists(sock):
                    break
                time.sleep(0.02)
            cells = [("ours", d.sock, d.pid), ("bare", sock, server.pid)] + ([("before", b.sock, b.pid)] if b else [])
            for label, s_, pid in cells:
                res = rx("load", "--socket", s_, "--op", "list", "--conns", 16, "--duration", duration,
                         "--warmup", warmup, "--server-pid", pid, "--label", label, pin_cpu=lg_cpu)
                res["volumes"] = total
                res["reply_bytes"] = len(body)
                out.append(res)
                log(f"protocol list at {total} volumes {label}: {res['server_cpu_us_per_req']} µs CPU/req")
        finally:
            server.terminate()
            server.wait(timeout=10)
    return out


# ------------------------------------------------------------------------------------------------
# footprint: start-up, memory, binary size


def stage_footprint(ctx):
    out = {"binary_bytes": os.path.getsize(ctx["bin"])}
    ebs = os.environ.get("REXRAY_EBS_BIN")
    if ebs and os.path.exists(ebs) and os.environ.get("BENCH_EBS_RELEASE") == "1":
        out["binary_ebs_bytes"] = os.path.getsize(ebs)
    runs = env_num("BENCH_STARTUP_RUNS", 20, 3)
    d = Daemon(ctx["bin"], ctx["tmp"])
    # state with a few volumes, then time clean starts
    with d:
        rx("populate", "--socket", d.sock, "--prefix", "bench", "--from", 0, "--to", 8)
    cmd = d.cmd()
    if PIN:
        cmd = ["taskset", "-c", "0", *cmd]
    out["startup"] = rx("startup", "--socket", d.sock, "--runs", runs, "--get", "bench0", "--", *cmd, env=d.env)
    log(f"start-up: listening after {out['startup']['listening']['p50_ms']} ms (median of {runs})")
    # memory: idle, then after 100,000 requests
    n_req = 100_000 if not QUICK else 5_000
    with d:
        time.sleep(1.0)
        out["idle"] = proc_status(d.pid)
        out["requests"] = n_req
        load = rx("load", "--socket", d.sock, "--op", "get", "--names", ",".join(f"bench{i}" for i in range(8)),
                  "--conns", 16, "--requests", n_req, "--duration", 120, "--warmup", 0, "--server-pid", d.pid)
        out["load"] = load
        out["after_get"] = proc_status(d.pid)
        load2 = rx("load", "--socket", d.sock, "--op", "list", "--conns", 64, "--requests", n_req // 10,
                   "--duration", 60, "--warmup", 0)
        out["after_list64"] = proc_status(d.pid)
        out["load_list64"] = load2
        time.sleep(1.0)
        out["after_settle"] = proc_status(d.pid)
    log(f"memory: idle {out['idle']['rss_kib']} KiB, after {n_req} Get {out['after_get']['rss_kib']} KiB, "
        f"peak {out['after_list64']['hwm_kib']} KiB")
    return out


# ------------------------------------------------------------------------------------------------
# scale: mount/unmount with 10, 1,000 and 10,000 volumes in state


def stage_scale(ctx):
    """One daemon per level, all running at once, measured pair by pair in turn: the disk's fsync
    noise (other tenants' writes) then hits every level alike."""
    levels = [10, 1000, 10000] if not QUICK else [10, 200]
    runs = env_num("BENCH_SCALE_RUNS", 200, 20)
    get_timeout = env_num("BENCH_RESTART_TIMEOUT", 120, 60)
    out = {"levels": [], "runs": runs}
    daemons = [Daemon(ctx["bin"], ctx["tmp"]) for _ in levels]
    try:
        for d, n in zip(daemons, levels):
            d.start()
            t = rx("populate", "--socket", d.sock, "--prefix", "s", "--from", 0, "--to", n, "--conns", 4, timeout=900)
            out["levels"].append({"volumes": n, "populate_secs": t["secs"]})
            log(f"scale: {n} volumes created in {t['secs']} s")
        out["fsync_probe_before"] = fsync_probe(os.path.join(ctx["tmp"], "fsync-probe"))
        socks = ",".join(d.sock for d in daemons)
        cpu0 = [cpu_seconds(d.pid) for d in daemons]
        m = rx("mountloop", "--socket", socks, "--name", "s0", "--runs", runs, "--get-runs", 0, "--list-runs", 0,
               timeout=900)
        cpu1 = [cpu_seconds(d.pid) for d in daemons]
        g = rx("mountloop", "--socket", socks, "--name", "s0", "--runs", 0, "--get-runs", 500, "--list-runs", 10,
               timeout=900)
        out["fsync_probe"] = fsync_probe(os.path.join(ctx["tmp"], "fsync-probe"))
        for lv, d, per, pg, c0, c1 in zip(out["levels"], daemons, m["per_socket"], g["per_socket"], cpu0, cpu1):
            lv.update({k: per[k] for k in ("mount", "unmount")})
            lv.update({k: pg[k] for k in ("get", "list", "list_bytes")})
            lv["cpu_us_per_pair"] = round((c1 - c0) * 1e6 / runs, 1)
            lv["rss"] = proc_status(d.pid)
            log(f"scale {lv['volumes']:5} volumes: mount p50 {per['mount']['p50_us']:.0f} µs, unmount p50 "
                f"{per['unmount']['p50_us']:.0f} µs, {lv['cpu_us_per_pair']} µs CPU per pair, get p50 "
                f"{pg['get']['p50_us']:.0f} µs, list p50 {pg['list']['p50_us']:.0f} µs")
        # restarts: time from spawn to the first Get answered (the service loads its state then)
        for lv, d in zip(out["levels"], daemons):
            d.stop()
            # the first restart loads and reconciles the state the run left; the second is steady
            lv["restart"] = rx("startup", "--socket", d.sock, "--runs", 2, "--get", "s0", "--get-timeout",
                               get_timeout, "--", *d.cmd(), env=d.env, timeout=2 * get_timeout + 60)
            log(f"scale {lv['volumes']:5} volumes: first Get after restarts "
                f"{lv['restart']['first_get'] and lv['restart']['first_get']['each_ms']} ms, "
                f"{lv['restart']['first_get_timeouts']} timed out ({get_timeout} s)")
    finally:
        for d in daemons:
            d.stop()
    return out


def fsync_probe(path, n=50):
    """The cost of this disk's write+fsync+rename+dir-fsync, the floor of a durable state change."""
    os.makedirs(path, exist_ok=True)
    ts = []
    for i in range(n):
        t0 = time.perf_counter()
        tmp = os.path.join(path, f"t{i}")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        os.write(fd, b"x" * 200)
        os.fsync(fd)
        os.close(fd)
        os.rename(tmp, os.path.join(path, "rec"))
        dfd = os.open(path, os.O_RDONLY)
        os.fsync(dfd)
        os.close(dfd)
        ts.append((time.perf_counter() - t0) * 1e6)
    ts.sort()
    return {"n": n, "p50_us": round(ts[n // 2], 1), "p99_us": round(ts[min(n - 1, int(n * 0.99))], 1)}


# ------------------------------------------------------------------------------------------------
# docker: inspect / ls / run with our vfs driver vs Docker's local driver, interleaved


def stage_docker(ctx):
    docker = "/usr/bin/docker" if os.path.exists("/usr/bin/docker") else "docker"
    image = os.environ.get("BENCH_IMAGE", "rexray-test-busybox")
    driver = "rxbench"
    sock = f"/run/docker/plugins/{driver}.sock"
    runs = env_num("BENCH_DOCKER_RUNS", 12, 2)
    n_vol = 10
    try:
        sh(docker, "info", "--format", "{{.ServerVersion}}", timeout=15)
    except Exception as e:  # noqa: BLE001
        return {"skipped": f"no Docker Engine answers: {e}"}
    if os.path.exists(sock):
        try:
            s = socket.socket(socket.AF_UNIX)
            s.connect(sock)
            s.close()
            return {"skipped": f"{sock} is served by another process"}
        except OSError:
            os.remove(sock)

    def dk(*args, timeout=120):
        return sh(docker, *args, timeout=timeout)

    def timed(*args):
        t0 = time.perf_counter()
        dk(*args)
        return (time.perf_counter() - t0) * 1000

    vfs_vols = [f"rxb-vfs-{i}" for i in range(n_vol)]
    local_vols = [f"rxb-local-{i}" for i in range(n_vol)]
    # The stand-in plugin has exactly one volume, and only that name is ever asked of Docker: its
    # Get answers for any name, so `docker volume rm -f <other name>` would leave rows in Docker's
    # volume DB that stall every later dockerd start-up by 15 s each (seen, and cleaned up).
    bare_vols = ["rxb-bare-0"]
    bare_driver = "rxbench-bare"
    bare_sock = f"/run/docker/plugins/{bare_driver}.sock"
    d = Daemon(ctx["bin"], ctx["tmp"], sock=sock)
    bare = None
    out = {"docker": sh(docker, "version", "--format", "{{.Server.Version}}"), "image": image,
           "volumes_per_driver": n_vol, "runs": runs}
    try:
        d.start()
        for v in vfs_vols + local_vols + bare_vols:
            sh(docker, "volume", "rm", "-f", v, check=False)
        for v in vfs_vols:
            dk("volume", "create", "-d", driver, v)
        for v in local_vols:
            dk("volume", "create", v)
        # A stand-in plugin: bare hyper answering each endpoint with our daemon's own reply (names
        # changed), so Docker's own cost of going through any plugin is measured too.
        bare_dir = os.path.join(ctx["tmp"], "bare-vol")
        os.makedirs(bare_dir, exist_ok=True)
        rename = lambda body: body.replace("rxb-vfs-", "rxb-bare-")  # noqa: E731
        mp = json.dumps({"Mountpoint": bare_dir})
        routes = {
            "/Plugin.Activate": json.dumps(d.call("Plugin.Activate")),
            "/VolumeDriver.Capabilities": json.dumps(d.call("VolumeDriver.Capabilities", "{}")),
            "/VolumeDriver.Get": rename(json.dumps(d.call("VolumeDriver.Get", json.dumps({"Name": vfs_vols[0]})))),
            # only the one volume it "has": every name a plugin lists ends up in Docker's volume
            # DB, and a row whose plugin is gone stalls dockerd's start-up by 15 s
            "/VolumeDriver.List": rename(json.dumps({"Volumes": [
                v for v in d.call("VolumeDriver.List", "{}")["Volumes"] if v["Name"] == vfs_vols[0]]})),
            "/VolumeDriver.Mount": mp, "/VolumeDriver.Path": mp,
            "/VolumeDriver.Create": "{}", "/VolumeDriver.Remove": "{}", "/VolumeDriver.Unmount": "{}",
        }
        routes_file = os.path.join(ctx["tmp"], "bare-routes.json")
        with open(routes_file, "w") as f:
            json.dump(routes, f)
        if os.path.exists(bare_sock):
            os.remove(bare_sock)
        bare = subprocess.Popen([RXBENCH, "serve", "--socket", bare_sock, "--routes", routes_file],
                                stdin=subprocess.DEVNULL)
        for _ in range(100):
            if os.path.exists(bare_sock):
                break
            time.sleep(0.02)
        dk("volume", "create", "-d", bare_driver, bare_vols[0])
        cases = {
            "inspect": (lambda v: ("volume", "inspect", v), 2 * runs),
            "ls": (lambda v: ("volume", "ls", "-q", "--filter", f"driver={v}"), 2 * runs),
            "run": (lambda v: ("run", "--rm", "-v", f"{v}:/data", image, "true"), runs),
        }
        targets = {"ours": (driver, vfs_vols[0]), "local": ("local", local_vols[0]),
                   "bare": (bare_driver, bare_vols[0])}
        for what, (args, n) in cases.items():
            samples = {k: [] for k in targets}
            cmd = {k: args(drv if what == "ls" else vol) for k, (drv, vol) in targets.items()}
            for k in targets:  # warm-up
                dk(*cmd[k])
            order = list(targets)
            for i in range(n):
                for k in order[i % 3:] + order[:i % 3]:  # rotate who goes first
                    samples[k].append(timed(*cmd[k]))
            ours, local, bare_ms = samples["ours"], samples["local"], samples["bare"]
            pair_ratios = [o / l for o, l in zip(ours, local)]
            out[what] = {"ours_ms": ours, "local_ms": local, "bare_ms": bare_ms,
                         "ours_p50_ms": round(med(ours), 1), "local_p50_ms": round(med(local), 1),
                         "bare_p50_ms": round(med(bare_ms), 1), "ratio": round(med(ours) / med(local), 3),
                         "bare_ratio": round(med(bare_ms) / med(local), 3),
                         "pair_ratio_p50": round(med(pair_ratios), 3),
                         "command": " ".join(["docker", *args("<driver>" if what == "ls" else "<vol>")])}
            log(f"docker {what}: ours {med(ours):.1f} ms, local {med(local):.1f} ms, stand-in plugin "
                f"{med(bare_ms):.1f} ms, ratio {med(ours) / med(local):.3f}")
        # what Docker sends us per command (for the explanation)
        out["plugin_calls"] = plugin_calls_per_command(d, dk, image, vfs_vols[0], driver)
    finally:
        for v in vfs_vols + local_vols + bare_vols:
            sh(docker, "volume", "rm", "-f", v, check=False)
        if bare:
            bare.terminate()
            bare.wait(timeout=10)
        d.stop()
    return out


# The service's debug line for each call (Path logs as `get`: it is a Get that keeps the path).
CALL_LOG = re.compile(r"DEBUG rexray::service: (get|list|mount|unmount|create|remove)(?= |$)", re.M)


def plugin_calls_per_command(d, dk, image, vol, driver):
    """Counts the VolumeDriver calls one docker command makes, from the daemon's debug log."""
    # the daemon logs at info by default; restart it at debug on the same socket for this count
    d.stop()
    d.env["REXRAY_LOGLEVEL"] = "debug"
    d.start()
    counts = {}
    try:
        for what, args in (("inspect", ("volume", "inspect", vol)),
                           ("ls_filtered_local", ("volume", "ls", "-q", "--filter", "driver=local")),
                           ("ls_filtered_ours", ("volume", "ls", "-q", "--filter", f"driver={driver}")),
                           ("run", ("run", "--rm", "-v", f"{vol}:/data", image, "true"))):
            logf = os.path.join(d.dir, "daemon.log")
            before = os.path.getsize(logf)
            dk(*args)
            time.sleep(0.2)
            with open(logf, errors="replace") as f:
                f.seek(before)
                text = re.sub(r"\x1b\[[0-9;]*m", "", f.read())
            c = {}
            for m in CALL_LOG.finditer(text):
                c[m.group(1)] = c.get(m.group(1), 0) + 1
            counts[what] = c
    finally:
        d.stop()
        d.env.pop("REXRAY_LOGLEVEL", None)
        d.start()
    return counts


# ------------------------------------------------------------------------------------------------
# loop: create + first mount, remount, unmount of 16 GiB loop volumes (bench/loop_create_mount.py)


def stage_loop(ctx):
    runs = env_num("BENCH_LOOP_RUNS", 15, 2)
    path = os.path.join(ctx["out"], "loop.raw.json")
    env = dict(os.environ, REXRAY_BIN=ctx["bin"])
    r = subprocess.run([sys.executable, os.path.join(BENCH, "loop_create_mount.py"), str(runs), "--json", path],
                       capture_output=True, text=True, timeout=600, env=env)
    sys.stderr.write(r.stdout)
    if r.returncode != 0:
        return {"skipped": f"loop_create_mount.py failed: {r.stderr.strip()[-600:]}"}
    with open(path) as f:
        return json.load(f)


# ------------------------------------------------------------------------------------------------
# csi: NodeStage + NodePublish on loop vs the bare kernel sequence, and CSI round trips
# (bench/csi_bench.py)


def stage_csi(ctx):
    samples = env_num("BENCH_CSI_SAMPLES", 30, 3)
    calls = env_num("BENCH_CSI_CALLS", 5000, 200)
    path = os.path.join(ctx["out"], "csi.raw.json")
    env = dict(os.environ, REXRAY_BIN=ctx["bin"], RXBENCH=RXBENCH)
    r = subprocess.run([sys.executable, os.path.join(BENCH, "csi_bench.py"), "--samples", str(samples),
                        "--calls", str(calls), "--warmup", str(min(200, calls // 10)), "--rounds", "2",
                        "--json", path], capture_output=True, text=True, timeout=900, env=env)
    sys.stderr.write(r.stderr[-6000:])
    if os.path.exists(path):
        with open(path) as f:
            res = json.load(f)
        if r.returncode != 0 or res.get("error"):
            return {"skipped": f"csi_bench.py failed: {res.get('error') or r.stderr.strip()[-600:]}",
                    "raw": res}
        return res
    return {"skipped": f"csi_bench.py failed (exit {r.returncode}): {r.stderr.strip()[-800:]}"}


# ------------------------------------------------------------------------------------------------
# ebs: see bench/ebs_bench.py


def stage_ebs(ctx):
    path = os.path.join(ctx["out"], "ebs.raw.json")
    r = subprocess.run([sys.executable, os.path.join(BENCH, "ebs_bench.py"), "--json", path],
                       capture_output=True, text=True, timeout=900, env=dict(os.environ, REXRAY_BIN=ctx["bin"]))
    sys.stderr.write(r.stdout[-4000:])
    if os.path.exists(path):
        with open(path) as f:
            return json.load(f)
    return {"skipped": f"ebs_bench.py failed (exit {r.returncode}): {r.stderr.strip()[-800:]}"}


def stage_ebs_latency(ctx):
    """bench/ebs_latency.py: Mount and Unmount against the EBS latency emulator."""
    path = os.path.join(ctx["out"], "ebs-latency.raw.json")
    rounds = "2" if os.environ.get("BENCH_QUICK") == "1" else os.environ.get("BENCH_EBS_LATENCY_ROUNDS", "5")
    env = dict(os.environ, REXRAY_EBS_BIN=os.environ.get("REXRAY_EBS_BIN") or ctx["bin"])
    r = subprocess.run([sys.executable, os.path.join(BENCH, "ebs_latency.py"), "--json", path, "--rounds", rounds],
                       capture_output=True, text=True, timeout=900, env=env)
    sys.stderr.write(r.stderr[-4000:])
    if r.returncode == 0 and os.path.exists(path):
        with open(path) as f:
            return json.load(f)
    return {"skipped": f"ebs_latency.py failed (exit {r.returncode}): {r.stderr.strip()[-800:]}"}


STAGES = {
    "machine": stage_machine,
    "protocol": stage_protocol,
    "docker": stage_docker,
    "loop": stage_loop,
    "ebs": stage_ebs,
    "scale": stage_scale,
    "footprint": stage_footprint,
    "csi": stage_csi,
    "ebs-latency": stage_ebs_latency,
}


def main():
    if len(sys.argv) < 3:
        raise SystemExit(__doc__)
    out = os.path.abspath(sys.argv[1])
    os.makedirs(out, exist_ok=True)
    if os.geteuid() != 0:
        raise SystemExit("the suite needs root (Docker, loop devices, mounts)")
    binary = os.environ.get("REXRAY_BIN", os.path.join(ROOT, "target/release/rexray"))
    if not os.access(binary, os.X_OK):
        raise SystemExit(f"no daemon binary at {binary}: cargo build --release")
    if not os.access(RXBENCH, os.X_OK):
        raise SystemExit(f"no {RXBENCH}: (cd bench && cargo build --release)")
    tmp = tempfile.mkdtemp(prefix="rexray-bench.")
    ctx = {"out": out, "tmp": tmp, "bin": binary}
    failed = []
    try:
        for stage in sys.argv[2:]:
            if stage not in STAGES:
                raise SystemExit(f"unknown stage {stage}; stages: {' '.join(STAGES)}")
            log(f"stage {stage}")
            t0 = time.monotonic()
            try:
                res = STAGES[stage](ctx)
            except Exception as e:  # noqa: BLE001 - a failed stage is reported, the others still run
                log(f"stage {stage} FAILED: {e}")
                res = {"skipped": f"failed: {e}"}
                failed.append(stage)
            res["stage_secs"] = round(time.monotonic() - t0, 1)
            with open(os.path.join(out, f"{stage}.json"), "w") as f:
                json.dump(res, f, indent=1)
            log(f"stage {stage} took {res['stage_secs']} s")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    if failed:
        raise SystemExit(f"failed stages: {' '.join(failed)}")


if __name__ == "__main__":
    main()
