#!/usr/bin/env python3
"""How soon the EBS backend notices an attachment or a detachment, and what that costs in EC2
calls, against an EC2 emulator that models EBS's latency.

    sudo python3 bench/ebs_latency.py [--json FILE] [--rounds 5] [--trace]

Set-up, all on 127.0.0.1:
  this script (plugin client)  →  the daemon  →  the latency emulator (this script)  →  moto_server
The emulator is a proxy that counts every call by its Action and gives moto's answers EBS's timing:
  - CreateVolume: the new volume shows `creating` for Δc.
  - AttachVolume is answered at once (`attaching`) and sent on to moto in the background, as EC2
    takes concurrent calls side by side. DescribeVolumes shows the attachment `attaching` until Δ
    after the call; at that moment the emulator's device host links the volume's loop device
    (made when the volume was created, over <dir>/hv/<volume-id>.img) as udev would:
    <dir>/links/nvme-Amazon_Elastic_Block_Store_vol…
  - DetachVolume likewise: `detaching` for Δd; at that moment the link goes (the loop device
    stays, as the volume's data does, until the run ends).
The emulator's threads hand Python's interpreter lock over every 0.2 ms (not every 5 ms), so
32 calls at once are each taken up, and their Δ started, as they arrive rather than after a
queue of other threads' time slices.
So an attachment completes, in EC2's answers and on the host, at one known moment. A Mount's
overhead is how long after that moment it returns (and, beside it, its whole time less Δ, which
also holds the look-up and the AttachVolume before Δ's clock starts). EC2 calls are counted per
operation, from its start to its reply.

Needs root, mkfs.xfs (xfsprogs), moto_server on PATH (or MOTO_SERVER), boto3 and an EBS build of the daemon
(REXRAY_EBS_BIN, else target/release/rexray).
"""
import argparse
import http.client
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
import xml.etree.ElementTree as ET

BENCH = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, BENCH)
sys.path.insert(0, os.path.join(os.path.dirname(BENCH), "tools"))
import ebs_bench as eb  # noqa: E402
import ebs_test_host as device_tool  # noqa: E402

EC2_NS = "http://ec2.amazonaws.com/doc/2016-11-15"
DETACH_DELTA = 1.0
CREATE_DELTA = 1.0

REPLY = """<?xml version="1.0" encoding="UTF-8"?>
<{action}Response xmlns="{ns}"><requestId>latency-emulator</requestId>\
<volumeId>{volume}</volumeId><instanceId>{instance}</instanceId><device>{device}</device>\
<status>{status}</status><attachTime>2026-12-01T00:00:00.000Z</attachTime></{action}Response>"""


def parse(data):
    """An EC2 answer's XML and a function naming its tags in the answer's own namespace."""
    root = ET.fromstring(data)
    ns = root.tag[1:].split("}", 1)[0] if root.tag.startswith("{") else ""
    if ns:
        ET.register_namespace("", ns)
    return root, (lambda tag: f"{{{ns}}}{tag}" if ns else tag)


def serialize(root):
    return ET.tostring(root, encoding="utf-8", xml_declaration=True)


class Pending:
    """A change EC2 has not finished: what DescribeVolumes shows of the volume until `until`."""

    def __init__(self, status, until, instance="", device=""):
        self.status, self.until, self.instance, self.device = status, until, instance, device


class DeviceHost:
    """The emulator's hypervisor: a loop device per volume, made when the volume is created (so
    no losetup runs while attachments are timed), linked when an attachment completes and
    unlinked when a detachment does."""

    def __init__(self, images, links):
        self.images, self.links = images, links
        self.devices = {}  # volume id -> loop device
        self.made = {}  # volume id -> set once its loop device exists
        self.lock = threading.Lock()

    def link_path(self, volume):
        return os.path.join(self.links, device_tool.LINK_PREFIX + volume.replace("-", ""))

    def prepare(self, volume, size_gib):
        with self.lock:
            made = self.made.setdefault(volume, threading.Event())
        image = os.path.join(self.images, volume + ".img")
        if not os.path.exists(image):
            with open(image, "wb") as f:
                f.truncate(max(size_gib, 1) << 30)
        device = device_tool.run("losetup", "--find", "--show", image)
        with self.lock:
            self.devices[volume] = device
        made.set()

    def link(self, volume, size_gib):
        """Links the volume's device (made now if the volume was not created through the
        emulator)."""
        with self.lock:
            made = self.made.get(volume)
        if made is None:
            self.prepare(volume, size_gib)
        elif not made.wait(60):
            raise RuntimeError(f"no loop device for {volume} after 60 s")
        with self.lock:
            device = self.devices[volume]
        os.symlink(device, self.link_path(volume))

    def unlink(self, volume):
        if os.path.lexists(self.link_path(volume)):
            os.remove(self.link_path(volume))

    def shutdown(self):
        with self.lock:
            devices = dict(self.devices)
        for volume, device in devices.items():
            self.unlink(volume)
            for target in device_tool.mounts_of(device):
                device_tool.run("umount", "-l", target)
            device_tool.run("losetup", "-d", device)


class Emulator:
    """The latency-modelling proxy in front of moto (see the module documentation)."""

    def __init__(self, moto_port, host):
        self.moto_port, self.host = moto_port, host
        self.lock = threading.Lock()
        self.delta = {"create": 0.0, "attach": 0.0, "detach": 0.0}
        self.counts = eb.Counts()
        self.pending = {}  # volume id -> Pending
        self.attached = {}  # volume id -> (instance, device), as the emulator made them
        self.sizes = {}  # volume id -> GiB
        self.completed = {}  # volume id -> when its last create, attach or detach completed
        self.describes = []  # (time, the volume IDs or Name tags a DescribeVolumes asked for)
        self.attach_calls = []  # when each AttachVolume arrived
        self.timeline = []  # (when, action, what it named) of every call, for --trace
        self.errors = []
        self.server = None

    # -- the moments ---------------------------------------------------------------------------

    def completed_at(self, volume):
        with self.lock:
            return self.completed.get(volume)

    def asked_after(self, volume, name, since):
        """Seconds from `since` to the first DescribeVolumes after it that asked for `volume`
        (by ID or by its Name tag `name`)."""
        with self.lock:
            times = [t for t, keys in self.describes if t >= since and (volume in keys or name in keys)]
        return min(times) - since if times else None

    # -- talking to moto -----------------------------------------------------------------------

    def forward(self, method, path, body, headers):
        return eb.forward(self.moto_port, method, path, body, headers)

    def background(self, what, volume, fn):
        def go():
            try:
                fn()
            except Exception as e:  # noqa: BLE001 - reported in the results
                with self.lock:
                    self.errors.append(f"{what} {volume}: {e}")
        threading.Thread(target=go, daemon=True).start()

    # -- the actions ---------------------------------------------------------------------------

    def handle(self, method, path, body, headers, params):
        action = params.get("Action", "?")
        self.counts.add(action)
        now = time.monotonic()
        named = sorted(v for k, v in params.items() if ".Value." in k or k.startswith("VolumeId") or k == "InstanceId.1")
        with self.lock:
            self.timeline.append((now, action, named))
        with self.lock:  # a create is over once Δc has passed
            for volume in [v for v, p in self.pending.items() if p.status == "creating" and p.until <= now]:
                del self.pending[volume]
        if action == "DescribeVolumes":
            keys = {v for k, v in params.items() if ".Value." in k or k.startswith("VolumeId.")}
            kind = "by ID" if params.get("Filter.1.Name") == "volume-id" or "VolumeId.1" in params else (
                "by name" if params.get("Filter.1.Name") == "tag:Name" else "other")
            self.counts.add(f"DescribeVolumes {kind}")
            with self.lock:
                self.describes.append((time.monotonic(), keys))
            status, hdrs, data = self.forward(method, path, body, headers)
            return status, hdrs, self.rewrite(data) if status == 200 else data
        if action == "CreateVolume":
            return self.create(method, path, body, headers, params)
        if action == "AttachVolume":
            return self.attach(method, path, body, headers, params)
        if action == "DetachVolume":
            return self.detach(method, path, body, headers, params)
        return self.forward(method, path, body, headers)

    def create(self, method, path, body, headers, params):
        status, hdrs, data = self.forward(method, path, body, headers)
        if status == 200:
            root, q = parse(data)
            volume = root.findtext(q("volumeId"))
            until = time.monotonic() + self.delta["create"]
            size = int(params.get("Size", "1"))
            with self.lock:
                self.sizes[volume] = size
                self.completed[volume] = until
                if self.delta["create"] > 0:
                    self.pending[volume] = Pending("creating", until)
            self.background("prepare", volume, lambda: self.host.prepare(volume, size))
            if self.delta["create"] > 0 and root.find(q("status")) is not None:
                root.find(q("status")).text = "creating"
                data = serialize(root)
        return status, hdrs, data

    def attach(self, method, path, body, headers, params):
        volume, instance, device = params.get("VolumeId", ""), params.get("InstanceId", ""), params.get("Device", "")
        now = time.monotonic()
        until = now + self.delta["attach"]
        with self.lock:
            self.attach_calls.append(now)
            known = volume in self.attached or volume in self.pending
            if not known:
                self.attached[volume] = (instance, device)
                self.pending[volume] = Pending("attaching", until, instance, device)
                size = self.sizes.get(volume, 1)
        if known:  # moto gives the error EC2 would
            return self.forward(method, path, body, headers)

        def complete():
            status, _, data = self.forward(method, path, body, headers)
            if status != 200:
                with self.lock:
                    self.pending.pop(volume, None)
                    self.attached.pop(volume, None)
                raise RuntimeError(f"moto refused it: {data[:200]!r}")
            time.sleep(max(0.0, until - time.monotonic()))
            with self.lock:
                self.pending.pop(volume, None)
                self.completed[volume] = time.monotonic()
            self.host.link(volume, size)

        self.background("attach", volume, complete)
        return self.synthetic("AttachVolume", volume, instance, device, "attaching")

    def detach(self, method, path, body, headers, params):
        volume = params.get("VolumeId", "")
        until = time.monotonic() + self.delta["detach"]
        with self.lock:
            known = volume in self.attached and volume not in self.pending
            if known:
                instance, device = self.attached.pop(volume)
                self.pending[volume] = Pending("detaching", until, instance, device)
        if not known:
            return self.forward(method, path, body, headers)

        def complete():
            status, _, data = self.forward(method, path, body, headers)
            if status != 200:
                raise RuntimeError(f"moto refused it: {data[:200]!r}")
            time.sleep(max(0.0, until - time.monotonic()))
            with self.lock:
                self.pending.pop(volume, None)
                self.completed[volume] = time.monotonic()
            self.host.unlink(volume)

        self.background("detach", volume, complete)
        return self.synthetic("DetachVolume", volume, instance, device, "detaching")

    @staticmethod
    def synthetic(action, volume, instance, device, status):
        xml = REPLY.format(action=action, ns=EC2_NS, volume=volume, instance=instance, device=device, status=status)
        return 200, [("Content-Type", "text/xml;charset=UTF-8")], xml.encode()

    def rewrite(self, data):
        """Moto's DescribeVolumes answer, with each unfinished change shown as EC2 would."""
        with self.lock:
            live = dict(self.pending)
        if not live:
            return data
        root, q = parse(data)
        changed = False
        for item in root.iter(q("item")):
            volume = item.findtext(q("volumeId"))
            p = live.get(volume)
            if p is None or item.find(q("size")) is None:  # not a volume (an attachment item)
                continue
            changed = True
            if p.status == "creating":
                item.find(q("status")).text = "creating"
                continue
            item.find(q("status")).text = "in-use"
            attachments = item.find(q("attachmentSet"))
            if attachments is None:
                attachments = ET.SubElement(item, q("attachmentSet"))
            for a in list(attachments):
                attachments.remove(a)
            a = ET.SubElement(attachments, q("item"))
            for tag, text in (("volumeId", volume), ("instanceId", p.instance), ("device", p.device),
                              ("status", p.status), ("attachTime", "2026-12-01T00:00:00.000Z"),
                              ("deleteOnTermination", "false")):
                ET.SubElement(a, q(tag)).text = text
        return serialize(root) if changed else data

    def serve(self):
        def respond(command, path, body, headers):
            params = {k: v[0] for k, v in urllib.parse.parse_qs(body.decode("utf-8", "replace")).items()}
            return self.handle(command, path, body, headers, params)

        self.server = eb.serve(respond)
        return self.server.server_address[1]


class UnixConnection(http.client.HTTPConnection):
    """HTTP over the plugin's Unix socket, as dockerd speaks it."""

    def __init__(self, path):
        super().__init__("plugin.moby.localhost", timeout=180)
        self.socket_path = path

    def connect(self):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(self.timeout)
        self.sock.connect(self.socket_path)


class Plugin:
    """VolumeDriver calls to the daemon, one at a time or many at the same instant."""

    def __init__(self, sock):
        self.sock = sock

    @staticmethod
    def send(conn, method, body):
        """Sends one call on an open connection: (sent, answered) on the monotonic clock."""
        sent = time.monotonic()
        conn.request("POST", "/" + method, json.dumps(body),
                     {"Accept": "application/vnd.docker.plugins.v1.2+json"})
        reply = conn.getresponse().read()
        answered = time.monotonic()
        conn.close()
        err = json.loads(reply or b"{}").get("Err")
        if err:
            raise RuntimeError(f"{method} {body}: {err}")
        return sent, answered

    def call(self, method, body):
        return self.send(UnixConnection(self.sock), method, body)

    def ready(self):
        try:
            self.call("Plugin.Activate", {})
            return True
        except (OSError, RuntimeError, ValueError):
            return False

    def at_once(self, method, bodies):
        """Every call of `bodies` sent at the same instant, each on its own connection opened
        beforehand: [(sent, answered)] in their order."""
        conns = [UnixConnection(self.sock) for _ in bodies]
        for c in conns:
            c.connect()
        barrier = threading.Barrier(len(bodies))
        results, failures = [None] * len(bodies), []

        def one(i):
            barrier.wait()
            try:
                results[i] = self.send(conns[i], method, bodies[i])
            except Exception as e:  # noqa: BLE001 - raised below
                failures.append(e)
        threads = [threading.Thread(target=one, args=(i,)) for i in range(len(bodies))]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        if failures:
            raise failures[0]
        return results


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


def describe_calls(calls):
    """The describe calls among `calls` (whose "DescribeVolumes by …" keys break DescribeVolumes down)."""
    return sum(n for action, n in calls.items() if action.startswith("Describe") and " " not in action)


class Bench:
    """One run: the emulator, its device host, the daemon and the measurements."""

    def __init__(self, emu, plugin, ec2, trace=False):
        self.emu, self.plugin, self.ec2, self.trace = emu, plugin, ec2, trace
        self.ids = {}

    def volume_id(self, name):
        if name not in self.ids:
            found = self.ec2.describe_volumes(Filters=[{"Name": "tag:Name", "Values": [name]}])["Volumes"]
            self.ids[name] = found[0]["VolumeId"]
        return self.ids[name]

    def settle(self):
        """Waits for the background calls an operation leaves (the last-use tag of a detach)."""
        time.sleep(0.3)

    def counted(self, fn):
        before = self.emu.counts.snapshot()
        result = fn()
        return result, eb.Counts.diff(self.emu.counts.snapshot(), before)

    def create(self, names, timed=False):
        """Creates and formats each volume (a first mount and unmount with no latency), so the
        measured Mounts only attach and mount. With `timed`, each Create waits Δc."""
        out = []
        for n in names:
            self.emu.delta["create"] = CREATE_DELTA if timed else 0.0
            (sent, answered), calls = self.counted(
                lambda n=n: self.plugin.call("VolumeDriver.Create", {"Name": n, "Opts": {"size": "1", "fsType": "xfs"}}))
            if timed:
                done = self.emu.completed_at(self.volume_id(n))
                out.append((answered - sent - CREATE_DELTA, answered - done, calls))
        self.emu.delta.update(create=0.0, attach=0.0, detach=0.0)
        for n in names:
            self.plugin.call("VolumeDriver.Mount", {"Name": n, "ID": "f" * 64})
            self.plugin.call("VolumeDriver.Unmount", {"Name": n, "ID": "f" * 64})
        self.settle()
        return out

    def mount_one(self, name, delta):
        self.emu.delta.update(attach=delta, detach=DETACH_DELTA)
        (sent, answered), calls = self.counted(lambda: self.plugin.call("VolumeDriver.Mount", {"Name": name, "ID": "a" * 64}))
        vid = self.volume_id(name)
        done = self.emu.completed_at(vid)
        asked = self.emu.asked_after(vid, name, done)
        (usent, uanswered), ucalls = self.counted(
            lambda: self.plugin.call("VolumeDriver.Unmount", {"Name": name, "ID": "a" * 64}))
        udone = self.emu.completed_at(vid)
        self.settle()
        return {"over_delta": answered - sent - delta, "over_attach": answered - done, "asked": asked or 0.0,
                "calls": calls, "unmount_over_delta": uanswered - usent - DETACH_DELTA,
                "unmount_over_detach": uanswered - udone, "unmount_calls": ucalls}

    def mount_many(self, names, delta):
        self.emu.delta.update(attach=delta, detach=DETACH_DELTA)
        began = time.monotonic()
        times, calls = self.counted(
            lambda: self.plugin.at_once("VolumeDriver.Mount", [{"Name": n, "ID": "b" * 64} for n in names]))
        done = [self.emu.completed_at(self.volume_id(n)) for n in names]
        utimes, ucalls = self.counted(
            lambda: self.plugin.at_once("VolumeDriver.Unmount", [{"Name": n, "ID": "b" * 64} for n in names]))
        udone = [self.emu.completed_at(self.volume_id(n)) for n in names]
        self.settle()
        with self.emu.lock:
            attaches = [t for t in self.emu.attach_calls if t >= began]
            timeline = [(round((t - began) * 1000, 1), a, k) for t, a, k in self.emu.timeline if t >= began]
        trace = {"timeline_ms": timeline, "sent_ms": sorted(round((s - began) * 1000, 1) for s, _ in times),
                 "answered_ms": sorted(round((a - began) * 1000, 1) for _, a in times)} if self.trace else {}
        return {
            **trace,
            "mounts": len(names),
            "attach_calls_spread_ms": round((max(attaches) - min(attaches)) * 1000, 1) if attaches else None,
            "overhead": pct([a - s - delta for s, a in times]),
            "overhead_over_attach": pct([a - d for (_, a), d in zip(times, done)]),
            "calls": calls, "describe_calls": describe_calls(calls),
            "unmount_overhead_over_detach": pct([a - d for (_, a), d in zip(utimes, udone)]),
            "unmount_calls": ucalls, "unmount_describe_calls": describe_calls(ucalls),
        }


def run(args):
    sys.setswitchinterval(0.0002)
    binary = os.environ.get("REXRAY_EBS_BIN") or os.path.join(eb.ROOT, "target/release/rexray")
    moto = os.environ.get("MOTO_SERVER") or shutil.which("moto_server")
    if not (os.access(binary, os.X_OK) and moto):
        return {"skipped": "needs an EBS build of the daemon and moto_server"}
    import boto3  # noqa: PLC0415
    tmp = tempfile.mkdtemp(prefix="rexray-bench-latency.")
    for d in ("links", "hv"):
        os.makedirs(os.path.join(tmp, d))
    moto_port = eb.free_port()
    moto_proc = subprocess.Popen([moto, "-H", "127.0.0.1", "-p", str(moto_port)], stdout=subprocess.DEVNULL,
                                 stderr=open(os.path.join(tmp, "moto.log"), "w"))
    host = DeviceHost(os.path.join(tmp, "hv"), os.path.join(tmp, "links"))
    emu = Emulator(moto_port, host)
    daemon = None
    out = {"detach_delta_s": DETACH_DELTA, "create_delta_s": CREATE_DELTA, "rounds": args.rounds}
    try:
        for _ in range(300):
            try:
                socket.create_connection(("127.0.0.1", moto_port), timeout=1).close()
                break
            except OSError:
                time.sleep(0.1)
        emu_port = emu.serve()
        ec2 = boto3.client("ec2", region_name=eb.REGION, endpoint_url=f"http://127.0.0.1:{moto_port}",
                           aws_access_key_id="testing", aws_secret_access_key="testing")
        iid = ec2.run_instances(ImageId="ami-12c6146b", MinCount=1, MaxCount=1,
                                Placement={"AvailabilityZone": eb.AZ})["Instances"][0]["InstanceId"]
        sock = os.path.join(tmp, "ebs.sock")
        plugin = Plugin(sock)
        daemon = eb.EbsDaemon(binary, tmp, sock, proxy_port=emu_port, instance_id=iid)
        with open(daemon.config, "a") as f:
            f.write("  useLargeDeviceRange: true\n")
        daemon.start(ready=plugin.ready)
        bench = Bench(emu, plugin, ec2, trace=args.trace)

        singles = []
        for d in (2.0, 5.0):
            names = [f"lat{int(d)}-{i}" for i in range(args.rounds)]
            created = bench.create(names, timed=d == 2.0)
            if created:
                out["create"] = {"overhead": pct([c[0] for c in created]),
                                 "overhead_over_create": pct([c[1] for c in created]),
                                 "calls": created[len(created) // 2][2]}
                eb.log(f"create with Δc={CREATE_DELTA}: {out['create']}")
            rows = [bench.mount_one(n, d) for n in names]
            single = {
                "delta_s": d,
                "mount_overhead": pct([r["over_delta"] for r in rows]),
                "mount_overhead_over_attach": pct([r["over_attach"] for r in rows]),
                "confirmed_after": pct([r["asked"] for r in rows]),
                "unmount_overhead": pct([r["unmount_over_delta"] for r in rows]),
                "unmount_overhead_over_detach": pct([r["unmount_over_detach"] for r in rows]),
                "mount_calls": rows[len(rows) // 2]["calls"],
                "unmount_calls": rows[len(rows) // 2]["unmount_calls"],
                "rexray_predicted_ms": round(predicted(d, 0.1, 2) * 1000),
                "ebs_csi_predicted_ms": round(predicted(d, 1.0, 1.8) * 1000),
            }
            singles.append(single)
            eb.log(f"Δ={d}: {json.dumps(single)}")
        out["single"] = singles

        concurrent = []
        for n in (1, 8, 32):
            names = [f"conc{n}-{i}" for i in range(n)]
            bench.create(names)
            row = bench.mount_many(names, 2.0)
            concurrent.append(row)
            eb.log(f"{n} mounts at once: {json.dumps(row)}")
        out["concurrent"] = concurrent
        out["emulator_errors"] = emu.errors[-5:]
        return out
    except Exception:
        if daemon:
            eb.log("daemon log:\n" + daemon.log_tail(40))
        eb.log(f"emulator errors: {emu.errors[-5:]}")
        raise
    finally:
        if daemon:
            daemon.stop()
        eb.unmount_under(tmp)
        host.shutdown()
        moto_proc.terminate()
        if emu.server:
            emu.server.shutdown()
        shutil.rmtree(tmp, ignore_errors=True)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--json")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--trace", action="store_true",
                    help="add each concurrent case's timeline of EC2 calls (ms from its start) to the JSON")
    args = ap.parse_args()
    result = run(args)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1)
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
