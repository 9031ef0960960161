#!/usr/bin/env python3
"""How soon the EBS backend notices an attachment or a detachment, and what that costs in EC2
calls: against moto behind a proxy that models EBS's latency.

    sudo python3 bench/ebs_latency.py [--json FILE] [--rounds 5]

Set-up, all on 127.0.0.1:
  the daemon  →  the latency proxy (counts each call's Action)  →  moto_server
  tools/ebs_test_host.py (every 10 ms, straight to moto)  →  moto_server
The proxy answers AttachVolume at once with `attaching` and sends it to moto only Δ seconds
later (DetachVolume: `detaching`, sent after Δd), so moto shows the attachment exactly when a
real one would complete; the device host plugs (or unplugs) the loop device within 10 ms of
that. Overhead = how long after Δ the daemon's Mount (or last Unmount) returns; and, since moto
itself takes a moment for the AttachVolume the proxy sends on, the Mount's time less the
emulated attach (from the proxy getting AttachVolume to moto answering it: Δ plus moto's time).

Needs root, moto_server on PATH (or MOTO_SERVER), boto3, an EBS build of the daemon
(REXRAY_EBS_BIN, else target/release/rexray) and bench/target/release/rxbench.
"""
import argparse
import http.client
import http.server
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
from concurrent.futures import ThreadPoolExecutor

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import ebs_bench as eb  # noqa: E402

DETACH_DELTA = 1.0

REPLY = """<?xml version="1.0" encoding="UTF-8"?>
<{action}Response xmlns="http://ec2.amazonaws.com/doc/2016-11-15/"><requestId>latency-proxy</requestId>\
<volumeId>{volume}</volumeId><instanceId>{instance}</instanceId><device>{device}</device>\
<status>{status}</status><attachTime>2026-12-01T00:00:00.000Z</attachTime></{action}Response>"""


class Timeline:
    """When attachments completed in moto, and when DescribeVolumes calls arrived."""

    def __init__(self):
        self.lock = threading.Lock()
        self.completed = {}  # volume id -> time its AttachVolume reached moto
        self.received = {}  # volume id -> time the proxy got its AttachVolume
        self.describes = []

    def attach_took(self, volume):
        """Seconds from the proxy getting the AttachVolume to moto showing the attachment: Δ plus
        moto's own time for the call."""
        with self.lock:
            done, got = self.completed.get(volume), self.received.get(volume)
        return done - got if done is not None and got is not None else None

    def noticed_after(self, volume):
        """Seconds from the attachment's completion to the first DescribeVolumes after it."""
        with self.lock:
            done = self.completed.get(volume)
            later = [t for t in self.describes if done is not None and t >= done]
        return min(later) - done if later else None


def make_latency_proxy(upstream_port, counts, delta, timeline):
    """The proxy: forwards everything, except that AttachVolume and DetachVolume are answered
    at once and reach moto only after delta["attach"] / delta["detach"] seconds."""

    def forward(method, path, body, headers, volume=None):
        conn = http.client.HTTPConnection("127.0.0.1", upstream_port, timeout=120)
        conn.request(method, path, body=body, headers=headers)
        resp = conn.getresponse()
        data = resp.read()
        conn.close()
        if volume:
            with timeline.lock:
                timeline.completed[volume] = time.monotonic()
        return resp.status, resp.getheaders(), data

    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *a):
            pass

        def reply(self, status, headers, data):
            self.send_response(status)
            for k, v in headers:
                if k.lower() not in ("transfer-encoding", "connection", "content-length"):
                    self.send_header(k, v)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_POST(self):
            n = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(n) if n else b""
            params = {k: v[0] for k, v in urllib.parse.parse_qs(body.decode("utf-8", "replace")).items()}
            action = params.get("Action", "?")
            counts.add(action)
            if action == "DescribeVolumes":
                with timeline.lock:
                    timeline.describes.append(time.monotonic())
            headers = {k: v for k, v in self.headers.items() if k.lower() not in ("connection", "keep-alive")}
            later = {"AttachVolume": ("attach", "attaching"), "DetachVolume": ("detach", "detaching")}.get(action)
            if later:
                key, status = later
                volume = params.get("VolumeId") if action == "AttachVolume" else None
                if volume:
                    with timeline.lock:
                        timeline.received[volume] = time.monotonic()
                timer = threading.Timer(delta[key], forward, (self.command, self.path, body, headers, volume))
                timer.daemon = True
                timer.start()
                xml = REPLY.format(action=action, volume=params.get("VolumeId", ""),
                                   instance=params.get("InstanceId", ""), device=params.get("Device", ""),
                                   status=status)
                return self.reply(200, [("Content-Type", "text/xml")], xml.encode())
            return self.reply(*forward(self.command, self.path, body, headers))

    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    srv.daemon_threads = True
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    return srv


class FastHost(eb.Hypervisor):
    """The device host, looking every 10 ms: the device appears when the attachment completes."""

    def __init__(self, *a):
        super().__init__(*a)
        self.args += ["--interval", "0.01"]


def predicted(delta, first, factor, cap=None):
    """When a poll schedule (polls at 0, then `first`, × `factor`, …) first sees a change at
    `delta`: its overhead."""
    t, step = 0.0, first
    while t < delta:
        t += step
        step = min(step * factor, cap) if cap else step * factor
    return t - delta


def pct(xs):
    return {"p50_ms": round(statistics.median(xs) * 1000, 1), "max_ms": round(max(xs) * 1000, 1)}


def run(args):
    binary = os.environ.get("REXRAY_EBS_BIN") or os.path.join(eb.ROOT, "target/release/rexray")
    moto = os.environ.get("MOTO_SERVER") or shutil.which("moto_server")
    if not (os.access(binary, os.X_OK) and moto and os.access(eb.RXBENCH, os.X_OK)):
        return {"skipped": "needs an EBS build of the daemon, moto_server and rxbench"}
    import boto3  # noqa: PLC0415
    tmp = tempfile.mkdtemp(prefix="rexray-bench-latency.")
    for d in ("links", "hv"):
        os.makedirs(os.path.join(tmp, d))
    moto_port = eb.free_port()
    moto_proc = subprocess.Popen([moto, "-H", "127.0.0.1", "-p", str(moto_port)], stdout=subprocess.DEVNULL,
                                 stderr=open(os.path.join(tmp, "moto.log"), "w"))
    counts = eb.Counts()
    timeline = Timeline()
    delta = {"attach": 2.0, "detach": DETACH_DELTA}
    host = daemon = None
    out = {"detach_delta_s": DETACH_DELTA, "rounds": args.rounds}
    try:
        for _ in range(300):
            try:
                socket.create_connection(("127.0.0.1", moto_port), timeout=1).close()
                break
            except OSError:
                time.sleep(0.1)
        proxy = make_latency_proxy(moto_port, counts, delta, timeline)
        ec2 = boto3.client("ec2", region_name=eb.REGION, endpoint_url=f"http://127.0.0.1:{moto_port}",
                           aws_access_key_id="testing", aws_secret_access_key="testing")
        iid = ec2.run_instances(ImageId="ami-12c6146b", MinCount=1, MaxCount=1,
                                Placement={"AvailabilityZone": eb.AZ})["Instances"][0]["InstanceId"]
        host = FastHost(f"http://127.0.0.1:{moto_port}", iid, os.path.join(tmp, "hv"), os.path.join(tmp, "links"))
        host.start()
        sock = os.path.join(tmp, "ebs.sock")
        daemon = eb.EbsDaemon(binary, tmp, sock, proxy_port=proxy.server_address[1], instance_id=iid)
        with open(daemon.config, "a") as f:
            f.write("  useLargeDeviceRange: true\n")
        daemon.start()

        def call(method, body):
            ok, reply, ms = eb.rx_call(sock, method, json.dumps(body))
            if not ok or '"Err":"' in reply and '"Err":""' not in reply:
                raise RuntimeError(f"{method} {body}: {reply[:300]}")
            return ms / 1000

        def create(names):
            for n in names:
                call("VolumeDriver.Create", {"Name": n, "Opts": {"size": "1", "fsType": "xfs"}})
            # Format each once (first mount), so the measured mounts only attach and mount.
            delta["attach"], delta["detach"] = 0.0, 0.0
            for n in names:
                call("VolumeDriver.Mount", {"Name": n, "ID": "f" * 64})
                call("VolumeDriver.Unmount", {"Name": n, "ID": "f" * 64})

        singles = []
        for d in (2.0, 5.0):
            names = [f"lat{int(d)}-{i}" for i in range(args.rounds)]
            create(names)
            mounts, over_attach, unmounts, calls, noticed = [], [], [], [], []
            for n in names:
                delta["attach"], delta["detach"] = d, DETACH_DELTA
                before = counts.snapshot()
                took = call("VolumeDriver.Mount", {"Name": n, "ID": "a" * 64})
                mounts.append(took - d)
                vid = ec2.describe_volumes(Filters=[{"Name": "tag:Name", "Values": [n]}])["Volumes"][0]["VolumeId"]
                over_attach.append(took - (timeline.attach_took(vid) or d))
                noticed.append(timeline.noticed_after(vid) or 0.0)
                calls.append(eb.Counts.diff(counts.snapshot(), before))
                unmounts.append(call("VolumeDriver.Unmount", {"Name": n, "ID": "a" * 64}) - DETACH_DELTA)
            singles.append({"delta_s": d, "mount_overhead": pct(mounts),
                            "mount_overhead_over_attach": pct(over_attach), "unmount_overhead": pct(unmounts),
                            "confirmed_after": pct(noticed),
                            "mount_calls": calls[len(calls) // 2],
                            "rexray_predicted_ms": round(predicted(d, 0.1, 2) * 1000),
                            "ebs_csi_predicted_ms": round(predicted(d, 1.0, 1.8) * 1000)})
            eb.log(f"Δ={d}: mount {pct(mounts)} over Δ, {pct(over_attach)} over the emulated attach "
                   f"(EC2 asked {pct(noticed)} after the attach), "
                   f"unmount {pct(unmounts)}, calls {calls[len(calls) // 2]}")
        out["single"] = singles

        concurrent = []
        for n in (1, 8, 32):
            names = [f"conc{n}-{i}" for i in range(n)]
            create(names)
            delta["attach"], delta["detach"] = 2.0, DETACH_DELTA
            before = counts.snapshot()
            with ThreadPoolExecutor(n) as pool:
                times = list(pool.map(lambda v: call("VolumeDriver.Mount", {"Name": v, "ID": "b" * 64}) - 2.0, names))
            calls = eb.Counts.diff(counts.snapshot(), before)
            with ThreadPoolExecutor(n) as pool:
                list(pool.map(lambda v: call("VolumeDriver.Unmount", {"Name": v, "ID": "b" * 64}), names))
            concurrent.append({"mounts": n, "overhead": pct(times), "calls": calls,
                               "describe_volumes": calls.get("DescribeVolumes", 0)})
            eb.log(f"{n} concurrent mounts: {pct(times)}, calls {calls}")
        out["concurrent"] = concurrent
        out["device_host_errors"] = host.errors[-5:]
        return out
    finally:
        if daemon:
            daemon.stop()
        if host:
            host.shutdown()
        eb.unmount_under(tmp)
        moto_proc.terminate()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--json")
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()
    result = run(args)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1)
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
