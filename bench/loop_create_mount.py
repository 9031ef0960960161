#!/usr/bin/env python3
"""Benchmark: create + first mount, remount and unmount of a 16 GiB `loop` volume through the
daemon's socket, versus the bare shell sequence (truncate; losetup; mkfs.ext4; mount), run
interleaved on the same machine.

    cargo build --release && sudo python3 bench/loop_create_mount.py [RUNS] [--json FILE]

The daemon is driven over one keep-alive HTTP connection, as dockerd does, so the figures
contain no client process start-up. The bare sequence runs each tool as a process, as a shell
script would, with the same mkfs options the daemon uses. Prints a markdown table of medians.
"""
import http.client
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time

ARGS = [a for a in sys.argv[1:]]
JSON_OUT = None
if "--json" in ARGS:
    i = ARGS.index("--json")
    JSON_OUT = ARGS[i + 1]
    del ARGS[i:i + 2]
RUNS = int(ARGS[0]) if ARGS else 9
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.environ.get("REXRAY_BIN", os.path.join(ROOT, "target/release/rexray"))


class UnixConnection(http.client.HTTPConnection):
    def __init__(self, path):
        super().__init__("plugin.moby.localhost")
        self.path = path

    def connect(self):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.connect(self.path)


def call(conn, endpoint, body):
    conn.request("POST", "/" + endpoint, json.dumps(body) + "\n",
                 {"Accept": "application/vnd.docker.plugins.v1.2+json"})
    reply = json.loads(conn.getresponse().read())
    if reply.get("Err"):
        raise SystemExit(f"{endpoint}: {reply['Err']}")
    return reply


def sh(*args):
    return subprocess.run(args, check=True, capture_output=True, text=True).stdout.strip()


def log_tail(tmp, n=30):
    try:
        with open(os.path.join(tmp, "daemon.log"), errors="replace") as f:
            return "".join(f.readlines()[-n:])
    except OSError:
        return "(no daemon log)"


def main():
    if os.geteuid() != 0:
        raise SystemExit("needs root")
    if not os.access(BIN, os.X_OK):
        raise SystemExit("build first: cargo build --release")
    tmp = tempfile.mkdtemp(prefix="rexray-bench.")
    sock = os.path.join(tmp, "bench.sock")
    config = os.path.join(tmp, "rexray.yml")
    with open(config, "w") as f:
        f.write(f"""rexray:
  logLevel: warn
  modules:
    bench:
      host: unix://{sock}
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
          path: {tmp}/volumes
loop:
  root: {tmp}/loop
""")
    env = dict(os.environ, REXRAY_HOME=os.path.join(tmp, "home"))
    daemon = subprocess.Popen([BIN, "service", "start", "-f", "-c", config], env=env,
                              stderr=open(os.path.join(tmp, "daemon.log"), "w"))
    img, mnt = os.path.join(tmp, "bare.img"), os.path.join(tmp, "bare-mnt")
    os.makedirs(mnt)
    results = {k: [] for k in ("d_create", "d_remount", "d_unmount", "b_create", "b_remount", "b_unmount")}
    try:
        # Wait until the daemon answers (bounded: 10 s), not just until the socket file exists.
        conn = None
        for _ in range(200):
            if daemon.poll() is not None:
                raise SystemExit(f"daemon exited with {daemon.returncode}:\n" + log_tail(tmp))
            try:
                conn = UnixConnection(sock)
                call(conn, "Plugin.Activate", {})
                break
            except OSError:
                conn = None
                time.sleep(0.05)
        if conn is None:
            raise SystemExit("daemon did not answer Plugin.Activate within 10 s:\n" + log_tail(tmp))
        for i in range(RUNS):
            name = f"b{i}"
            t0 = time.perf_counter()
            call(conn, "VolumeDriver.Create", {"Name": name, "Opts": {"size": "16"}})
            call(conn, "VolumeDriver.Mount", {"Name": name, "ID": "x"})
            t1 = time.perf_counter()
            call(conn, "VolumeDriver.Unmount", {"Name": name, "ID": "x"})
            t2 = time.perf_counter()
            call(conn, "VolumeDriver.Mount", {"Name": name, "ID": "y"})
            t3 = time.perf_counter()
            call(conn, "VolumeDriver.Unmount", {"Name": name, "ID": "y"})
            call(conn, "VolumeDriver.Remove", {"Name": name})
            results["d_create"].append(t1 - t0)
            results["d_unmount"].append(t2 - t1)
            results["d_remount"].append(t3 - t2)

            t0 = time.perf_counter()
            sh("truncate", "-s", "16G", img)
            dev = sh("losetup", "--find", "--show", img)
            sh("mkfs.ext4", "-q", "-F", "-m0", "-E", "lazy_itable_init=1,lazy_journal_init=1", dev)
            sh("mount", "-t", "ext4", dev, mnt)
            t1 = time.perf_counter()
            sh("umount", mnt)
            sh("losetup", "-d", dev)
            t2 = time.perf_counter()
            dev = sh("losetup", "--find", "--show", img)
            sh("mount", "-t", "ext4", dev, mnt)
            t3 = time.perf_counter()
            sh("umount", mnt)
            sh("losetup", "-d", dev)
            os.remove(img)
            results["b_create"].append(t1 - t0)
            results["b_unmount"].append(t2 - t1)
            results["b_remount"].append(t3 - t2)
    except (OSError, http.client.HTTPException) as e:
        raise SystemExit(f"{type(e).__name__}: {e}\ndaemon log:\n{log_tail(tmp)}") from e
    finally:
        daemon.terminate()
        daemon.wait(timeout=30)
        subprocess.run(["umount", mnt], capture_output=True)
        shutil.rmtree(tmp, ignore_errors=True)

    ms = {k: statistics.median(v) * 1000 for k, v in results.items()}
    kernel = os.uname().release
    print(f"runs: {RUNS}, {os.cpu_count()} cores, kernel {kernel}, {time.strftime('%Y-%m-%d', time.gmtime())}")
    print()
    print("| 16 GiB loop volume | daemon (ms, median) | bare sequence (ms, median) | ratio |")
    print("|---|---|---|---|")
    for label, key in (("create + first mount", "create"), ("remount", "remount"), ("unmount", "unmount")):
        d, b = ms["d_" + key], ms["b_" + key]
        print(f"| {label} | {d:.1f} | {b:.1f} | {d / b:.2f} |")
    if JSON_OUT:
        with open(JSON_OUT, "w") as f:
            json.dump({"runs": RUNS, "kernel": kernel,
                       "median_ms": {k: round(v, 2) for k, v in ms.items()},
                       "all_ms": {k: [round(x * 1000, 2) for x in v] for k, v in results.items()},
                       "command": f"python3 bench/loop_create_mount.py {RUNS}"}, f, indent=1)


if __name__ == "__main__":
    main()
