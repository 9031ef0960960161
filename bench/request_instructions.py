#!/usr/bin/env python3
"""User-space instructions per request, counted by valgrind's callgrind: a figure that does not
move with the machine's noise (CPU time per request on a shared VM varies by ±20 % between runs
of the same binary).

    sudo python3 bench/request_instructions.py [--ops get,path,list] [LABEL=BINARY ...]

Each daemon (vfs, 8 volumes, half of them mounted, as in the protocol stage) and the bare hyper
server (`rxbench serve` with the daemon's own reply) runs under callgrind; after 2 s of warm-up
the counters are zeroed, 4 connections send the call for 5 s, and the instructions executed in
that window are divided by the requests answered. Needs valgrind and the bench tools
(bench/target/release/rxbench). Prints a Markdown table.
"""

import json
import os
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import suite  # noqa: E402

NAMES = [f"bench{i}" for i in range(8)]


def wait_ready(sock, proc, timeout=120):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}")
        try:
            suite.rx("call", "--socket", sock, "Plugin.Activate")
            return
        except Exception:  # noqa: BLE001 - not listening yet
            time.sleep(0.2)
    raise RuntimeError(f"no answer on {sock} within {timeout} s")


def count(cmd, sock, op, names, env=None, workdir="."):
    """Runs `cmd` under callgrind and returns (requests, instructions per request)."""
    out = os.path.join(workdir, f"callgrind.{op}.{time.monotonic_ns()}")
    vg = ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}"]
    proc = subprocess.Popen(vg + cmd, env=env, stdin=subprocess.DEVNULL,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_ready(sock, proc)
        load = ["load", "--socket", sock, "--op", op, "--names", names, "--conns", 4,
                "--warmup", 0, "--server-pid", proc.pid]
        suite.rx(*load, "--duration", 2, "--label", "warm-up")
        subprocess.run(["callgrind_control", "-z", str(proc.pid)], check=True, stdout=subprocess.DEVNULL)
        res = suite.rx(*load, "--duration", 5, "--label", "counted")
        subprocess.run(["callgrind_control", "-d", str(proc.pid)], check=True, stdout=subprocess.DEVNULL)
        time.sleep(1)
    finally:
        proc.terminate()
        proc.wait(timeout=60)
    total = 0
    for f in os.listdir(workdir):
        if f.startswith(os.path.basename(out) + "."):  # the dump after zeroing: out.1
            with open(os.path.join(workdir, f)) as fh:
                for line in fh:
                    if line.startswith("totals:"):
                        total = max(total, int(line.split()[1]))
    return res["requests"], total // max(res["requests"], 1)


def main():
    args = sys.argv[1:]
    ops = ["get", "path", "list"]
    if args[:1] == ["--ops"]:
        ops, args = args[1].split(","), args[2:]
    binaries = [a.split("=", 1) for a in args] or [["ours", os.path.join(suite.ROOT, "target/release/rexray")]]
    work = tempfile.mkdtemp(prefix="rexray-instr.")
    rows = []
    for op in ops:
        row = {"op": op}
        reply = None
        for label, binary in binaries:
            d = suite.Daemon(binary, work).start()
            suite.populate_protocol(d, NAMES)
            if reply is None:
                body = {} if op == "list" else {"Name": NAMES[0]}
                reply = json.dumps(d.call(f"VolumeDriver.{op.capitalize()}", json.dumps(body)), separators=(",", ":"))
            cmd, env = d.cmd(), d.env
            d.stop()
            row[label] = count(cmd, d.sock, op, ",".join(NAMES), env=env, workdir=work)
        sock = os.path.join(work, "bare.sock")
        row["bare"] = count([suite.RXBENCH, "serve", "--socket", sock, "--body", reply], sock, op, NAMES[0],
                            workdir=work)
        rows.append(row)
        print(f"{op}: " + ", ".join(f"{k} {v[1]} instructions/request ({v[0]} requests)"
                                   for k, v in row.items() if k != "op"), file=sys.stderr, flush=True)
    labels = [label for label, _ in binaries] + ["bare"]
    print("| call | " + " | ".join(labels) + " | " + " | ".join(f"{lb} / bare" for lb in labels[:-1]) + " |")
    print("|---|" + "---:|" * (2 * len(labels) - 1))
    for row in rows:
        bare = row["bare"][1]
        cells = [f"{row[lb][1]:,}" for lb in labels] + [f"{row[lb][1] / bare:.2f}" for lb in labels[:-1]]
        print(f"| {row['op'].capitalize()} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
