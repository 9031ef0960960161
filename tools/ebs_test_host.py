#!/usr/bin/env python3
"""A test device host for the `ebs` backend against an EC2 emulator (moto's server).

On EC2, attaching a volume makes a block device appear on the instance, and udev links it as
/dev/disk/by-id/nvme-Amazon_Elastic_Block_Store_vol<hex>. An emulator attaches nothing, so this
tool plays the hypervisor: it asks the emulator which volumes are attached to the instances it
serves and backs each with a loop device over a sparse image file (<images>/<volume-id>.img,
kept across detaches, so data follows the volume from one instance to another; grown, with the
loop device told so, when the volume is resized), linked into that instance's link directory
under the name udev would give it. Point the daemon's
`ebs.deviceLinksDir` at that directory. When a volume is detached, its device's mounts are
lazily unmounted (a dead host's would be gone), the link removed and the loop device released.

    ebs_test_host.py --endpoint http://127.0.0.1:5000 run-instance --zone us-east-1a
    sudo ebs_test_host.py --endpoint http://127.0.0.1:5000 serve \\
        --instance i-0123456789abcdef0=/run/rexray-try/links --images /var/tmp/rexray-try

`run-instance` starts an instance (RunInstances) and prints its ID. `serve` runs until SIGTERM or
Ctrl-C, then unplugs everything; it needs root (losetup). It prints one line per plug and unplug on
stdout, "serving" once it is ready, and "error: …" lines on stderr. Volumes whose Name tag starts
with a `--never-plug` prefix are never given a device, as on a host whose udev makes no links.

Only Python's standard library is used. The emulator must accept unsigned Query API calls, as
moto does (it reads the region from the credential scope and checks no signature); this tool is
for emulators only and never sends a real credential.
"""
import argparse
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
import xml.etree.ElementTree as ET

LINK_PREFIX = "nvme-Amazon_Elastic_Block_Store_"
ROOT_DEVICES = ("/dev/sda1", "/dev/xvda")
CALL_TIMEOUT = 20


class Ec2:
    """Unsigned EC2 Query API calls to an emulator."""

    def __init__(self, endpoint, region):
        self.endpoint, self.region = endpoint.rstrip("/") + "/", region

    def call(self, action, params):
        body = urllib.parse.urlencode({"Action": action, "Version": "2016-11-15", **params}).encode()
        req = urllib.request.Request(self.endpoint, data=body, method="POST", headers={
            "Content-Type": "application/x-www-form-urlencoded",
            "X-Amz-Date": "20260101T000000Z",
            "Authorization": "AWS4-HMAC-SHA256 Credential=test/20260101/"
                             f"{self.region}/ec2/aws4_request, SignedHeaders=host, Signature=0",
        })
        try:
            with urllib.request.urlopen(req, timeout=CALL_TIMEOUT) as resp:
                text = resp.read()
        except urllib.error.HTTPError as e:
            raise RuntimeError(f"{action} answered HTTP {e.code}: {e.read()[:300]!r}") from None
        except (urllib.error.URLError, OSError) as e:
            raise RuntimeError(f"{action}: cannot reach {self.endpoint}: {e}") from None
        root = ET.fromstring(text)
        for el in root.iter():  # drop the namespace: <{http://ec2…}item> → <item>
            el.tag = el.tag.rsplit("}", 1)[-1]
        return root

    def run_instance(self, zone, instance_type):
        root = self.call("RunInstances", {
            "ImageId": "ami-12c6146b", "MinCount": "1", "MaxCount": "1",
            "InstanceType": instance_type, "Placement.AvailabilityZone": zone,
        })
        return root.find(".//instancesSet/item/instanceId").text

    def attached_to(self, instance):
        """The volumes attached to `instance`: [(volume id, size GiB, Name tag)]."""
        root = self.call("DescribeVolumes", {
            "Filter.1.Name": "attachment.instance-id", "Filter.1.Value.1": instance,
        })
        found = []
        for vol in root.findall("./volumeSet/item"):
            name = ""
            for tag in vol.findall("./tagSet/item"):
                if tag.findtext("key") == "Name":
                    name = tag.findtext("value") or ""
            for att in vol.findall("./attachmentSet/item"):
                if att.findtext("instanceId") == instance and att.findtext("status") == "attached" \
                        and att.findtext("device") not in ROOT_DEVICES:
                    found.append((vol.findtext("volumeId"), int(vol.findtext("size")), name))
        return found


def run(*cmd):
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=60, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)}: {done.stderr.strip() or f'exit {done.returncode}'}")
    return done.stdout.strip()


def mounts_of(device):
    """Mount points whose source is `device`, deepest first."""
    targets = []
    with open("/proc/self/mountinfo", encoding="utf-8") as f:
        for line in f:
            left, _, right = line.partition(" - ")
            fields = right.split()
            if len(fields) >= 2 and fields[1] == device:
                targets.append(left.split()[4].replace("\\040", " "))
    return sorted(targets, key=len, reverse=True)


class Host:
    """The plugged volumes of the instances served: (volume, instance) → (device, link)."""

    def __init__(self, ec2, instances, images, never_plug):
        self.ec2, self.instances, self.images, self.never_plug = ec2, instances, images, never_plug
        self.plugged = {}

    def tick(self):
        want = {}
        for instance in self.instances:
            for vol, size, name in self.ec2.attached_to(instance):
                if not any(name.startswith(p) for p in self.never_plug):
                    want[(vol, instance)] = size
        for key in [k for k in self.plugged if k not in want]:
            self.unplug(key)
        for key, size in want.items():
            if key not in self.plugged:
                self.plug(key, size)
            elif size > self.plugged[key][2]:
                self.grow(key, size)

    def plug(self, key, size):
        vol, instance = key
        image = os.path.join(self.images, vol + ".img")
        if not os.path.exists(image):
            with open(image, "wb") as f:
                f.truncate(max(size, 1) << 30)
        elif os.path.getsize(image) < size << 30:  # resized while detached
            with open(image, "r+b") as f:
                f.truncate(size << 30)
        device = run("losetup", "--find", "--show", image)
        link = os.path.join(self.instances[instance], LINK_PREFIX + vol.replace("-", ""))
        if os.path.lexists(link):
            os.remove(link)
        os.symlink(device, link)
        self.plugged[key] = (device, link, size)
        print(f"plugged {vol} into {instance} as {device}", flush=True)

    def grow(self, key, size):
        """A resized volume: its image grows and its loop device takes the new size."""
        device, link, _ = self.plugged[key]
        with open(os.path.join(self.images, key[0] + ".img"), "r+b") as f:
            f.truncate(size << 30)
        run("losetup", "--set-capacity", device)
        self.plugged[key] = (device, link, size)
        print(f"grew {key[0]} on {key[1]} to {size} GiB", flush=True)

    def unplug(self, key):
        device, link, _ = self.plugged.pop(key)
        if os.path.lexists(link):
            os.remove(link)
        for target in mounts_of(device):
            run("umount", "-l", target)
        run("losetup", "-d", device)
        print(f"unplugged {key[0]} from {key[1]} ({device})", flush=True)

    def unplug_all(self):
        for key in list(self.plugged):
            try:
                self.unplug(key)
            except RuntimeError as e:
                print(f"error: unplug {key[0]} from {key[1]}: {e}", file=sys.stderr, flush=True)


def serve(args, ec2):
    instances = {}
    for spec in args.instance:
        instance, sep, links = spec.partition("=")
        if not sep or not instance or not links:
            sys.exit(f"--instance wants ID=LINKS_DIR, not {spec!r}")
        os.makedirs(links, exist_ok=True)
        instances[instance] = links
    os.makedirs(args.images, exist_ok=True)
    host = Host(ec2, instances, args.images, args.never_plug)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    print("serving", flush=True)
    while not stop.is_set():
        try:
            host.tick()
        except (RuntimeError, OSError, ET.ParseError) as e:
            print(f"error: {e}", file=sys.stderr, flush=True)
        stop.wait(args.interval)
    host.unplug_all()


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--endpoint", required=True, help="the emulator's EC2 endpoint, e.g. http://127.0.0.1:5000")
    p.add_argument("--region", default="us-east-1")
    sub = p.add_subparsers(dest="command", required=True)
    ri = sub.add_parser("run-instance", help="start an instance and print its ID")
    ri.add_argument("--zone", default="us-east-1a")
    ri.add_argument("--type", default="t3.micro")
    sv = sub.add_parser("serve", help="back attached volumes with loop devices until stopped")
    sv.add_argument("--instance", action="append", required=True, metavar="ID=LINKS_DIR")
    sv.add_argument("--images", required=True, help="directory of the volumes' image files")
    sv.add_argument("--never-plug", action="append", default=[], metavar="PREFIX")
    sv.add_argument("--interval", type=float, default=0.1, help="seconds between looks (default 0.1)")
    args = p.parse_args()
    ec2 = Ec2(args.endpoint, args.region)
    try:
        if args.command == "run-instance":
            print(ec2.run_instance(args.zone, args.type))
        else:
            serve(args, ec2)
    except RuntimeError as e:
        sys.exit(f"error: {e}")


if __name__ == "__main__":
    main()
