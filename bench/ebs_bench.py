#!/usr/bin/env python3
"""EBS control plane benchmark: EC2 calls per VolumeDriver operation, counted at the emulator,
and `docker volume ls` over 5,000 volumes.

    python3 bench/ebs_bench.py [--json FILE] [--volumes 5000]

Needs root, `moto_server` (pip install 'moto[server]'), and a daemon built with the `ebs` feature:
REXRAY_EBS_BIN, else bench/target/ebs-build/release/rexray (run-all.sh builds it with
BENCH_BUILD_EBS=1). Without one it writes {"skipped": …} and exits 0.

Set-up, all on 127.0.0.1:
  moto_server  ←  counting proxy (this process: counts each request's `Action`)  ←  the daemon
  moto_server  ←  the test "hypervisor", tools/ebs_test_host.py (not counted): every 100 ms it
                  asks moto which volumes are attached to our instance and backs each with a loop device over
                  <dir>/<volume-id>.img, linked as <links>/nvme-Amazon_Elastic_Block_Store_vol…,
                  so Mount finds a real block device; on detach it removes both.
For `docker volume ls` over 5,000 volumes: one is created through the daemon, the other 4,999 are
made directly in moto with its tags and given a copy of its state record (creating thousands
through the daemon is quadratic in moto), plus 100 made in moto only, as another host would; then
the daemon restarts (cold cache) and List / `docker volume ls` are timed and counted.
"""
import argparse
import http.client
import http.server
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse

BENCH = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(BENCH)
RXBENCH = os.environ.get("RXBENCH", os.path.join(BENCH, "target/release/rxbench"))
REGION, AZ = "us-east-1", "us-east-1a"
OWNER_TAG = ("rexray-rs/managed", "true")


def log(msg):
    print(f"[{time.strftime('%H:%M:%S')}] ebs: {msg}", file=sys.stderr, flush=True)


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def rx_call(sock, method, body=""):
    args = [RXBENCH, "call", "--socket", sock, method] + ([body] if body else [])
    t0 = time.perf_counter()
    r = subprocess.run(args, capture_output=True, text=True, timeout=180)
    ms = (time.perf_counter() - t0) * 1000
    return r.returncode == 0, r.stdout.strip(), ms


# ------------------------------------------------------------------------------------------------
# The counting proxy


class Counts:
    def __init__(self):
        self.lock = threading.Lock()
        self.by_action = {}

    def add(self, action):
        with self.lock:
            self.by_action[action] = self.by_action.get(action, 0) + 1

    def snapshot(self):
        with self.lock:
            return dict(self.by_action)

    @staticmethod
    def diff(after, before):
        d = {k: after[k] - before.get(k, 0) for k in after if after[k] - before.get(k, 0)}
        return dict(sorted(d.items()))


def send_reply(handler, status, headers, data):
    """Writes an upstream answer back through a BaseHTTPRequestHandler, with its own length."""
    handler.send_response(status)
    for k, v in headers:
        if k.lower() not in ("transfer-encoding", "connection", "content-length"):
            handler.send_header(k, v)
    handler.send_header("Content-Length", str(len(data)))
    handler.end_headers()
    handler.wfile.write(data)


def serve(respond):
    """A threaded HTTP/1.1 server on 127.0.0.1 (a free port), running until the process ends,
    that answers every request with respond(command, path, body, headers) -> (status, headers,
    data). Its backlog takes 32 connections at once (Python's default of 5 would queue them)."""
    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *a):
            pass

        def _answer(self):
            n = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(n) if n else b""
            headers = {k: v for k, v in self.headers.items() if k.lower() not in ("connection", "keep-alive")}
            send_reply(self, *respond(self.command, self.path, body, headers))

        do_GET = do_POST = do_PUT = do_DELETE = _answer

    class Server(http.server.ThreadingHTTPServer):
        request_queue_size = 256

    srv = Server(("127.0.0.1", 0), Handler)
    srv.daemon_threads = True
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    return srv


def forward(port, command, path, body, headers):
    """Sends one request on to 127.0.0.1:port: (status, headers, data) of its answer."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    try:
        conn.request(command, path, body=body, headers=headers)
        resp = conn.getresponse()
        return resp.status, resp.getheaders(), resp.read()
    finally:
        conn.close()


def make_proxy(upstream_port, counts):
    """A proxy to upstream_port that counts every call by its Action."""
    def counted(command, path, body, headers):
        params = urllib.parse.parse_qs(body.decode("utf-8", "replace")) if body else {}
        params.update(urllib.parse.parse_qs(urllib.parse.urlparse(path).query))
        counts.add((params.get("Action") or [headers.get("X-Amz-Target", "?")])[0])
        return forward(upstream_port, command, path, body, headers)

    return serve(counted)


# ------------------------------------------------------------------------------------------------
# The test hypervisor: tools/ebs_test_host.py, the README's device host for moto


class Hypervisor:
    def __init__(self, endpoint, instance_id, workdir, links):
        self.args = [sys.executable, os.path.join(ROOT, "tools/ebs_test_host.py"), "--endpoint", endpoint,
                     "--region", REGION, "serve", "--images", workdir, "--instance", f"{instance_id}={links}"]
        self.proc = None
        self.errors = []

    def start(self):
        self.proc = subprocess.Popen(self.args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        if self.proc.stdout.readline().strip() != "serving":
            raise RuntimeError("tools/ebs_test_host.py did not start: " + self.proc.stderr.read()[-500:])
        threading.Thread(target=self._read_errors, daemon=True).start()
        threading.Thread(target=lambda: self.proc.stdout.read(), daemon=True).start()

    def _read_errors(self):
        for line in self.proc.stderr:
            self.errors.append(line.strip())

    def shutdown(self):
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.errors.append("did not stop within 30 s of SIGTERM")


# ------------------------------------------------------------------------------------------------


CONFIG = """rexray:
  logLevel: info
  modules:
    default-docker:
      disabled: true
    bench:
      type: docker
      host: unix://{sock}
      libstorage:
        service: ebs
libstorage:
  server:
    services:
      ebs:
        driver: ebs
  integration:
    volume:
      operations:
        mount:
          path: {dir}/volumes
ebs:
  accessKey: testing
  secretKey: testing
  region: {region}
  endpoint: http://127.0.0.1:{proxy_port}
  instanceID: {instance_id}
  availabilityZone: {az}
  deviceLinksDir: {dir}/links
"""


class EbsDaemon:
    def __init__(self, binary, workdir, sock, **cfg):
        self.binary, self.dir, self.sock = binary, workdir, sock
        self.config = os.path.join(workdir, "rexray.yml")
        with open(self.config, "w") as f:
            f.write(CONFIG.format(sock=sock, dir=workdir, region=REGION, az=AZ, **cfg))
        self.env = dict(os.environ, REXRAY_HOME=os.path.join(workdir, "home"), AWS_EC2_METADATA_DISABLED="true")
        self.proc = None

    def start(self, ready=None):
        """Starts the daemon and waits until `ready()` (default: a Plugin.Activate through rxbench)."""
        ready = ready or (lambda: rx_call(self.sock, "Plugin.Activate")[0])
        logf = open(os.path.join(self.dir, "daemon.log"), "a")
        self.proc = subprocess.Popen([self.binary, "service", "start", "-f", "-c", self.config], env=self.env,
                                     stdin=subprocess.DEVNULL, stdout=logf, stderr=logf)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"daemon exited {self.proc.returncode}: {self.log_tail()}")
            if os.path.exists(self.sock) and ready():
                return
            time.sleep(0.05)
        raise RuntimeError(f"daemon did not listen: {self.log_tail()}")

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def log_tail(self, n=15):
        try:
            with open(os.path.join(self.dir, "daemon.log")) as f:
                return "".join(f.readlines()[-n:])
        except OSError:
            return ""


def unmount_under(path):
    """Lazily unmounts whatever a failed run left mounted under `path` (deepest first)."""
    with open("/proc/self/mountinfo") as f:
        points = [line.split()[4] for line in f]
    for p in sorted((p for p in points if p.startswith(path + "/")), key=len, reverse=True):
        subprocess.run(["umount", "-l", p], capture_output=True)


def find_binary():
    for b in (os.environ.get("REXRAY_EBS_BIN"), os.path.join(BENCH, "target/ebs-build/release/rexray")):
        if b and os.access(b, os.X_OK):
            return b
    return None


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--json")
    ap.add_argument("--volumes", type=int, default=int(os.environ.get("BENCH_EBS_VOLUMES", 5000)))
    args = ap.parse_args()
    if os.environ.get("BENCH_QUICK") == "1":
        args.volumes = min(args.volumes, 200)
    result = run(args)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1)
    print(json.dumps(result, indent=1)[:3000])


def run(args):
    binary = find_binary()
    if not binary:
        return {"skipped": "no daemon built with the `ebs` feature (set REXRAY_EBS_BIN, or run "
                           "BENCH_BUILD_EBS=1 bash bench/run-all.sh ebs)"}
    moto = shutil.which("moto_server")
    if not moto:
        return {"skipped": "moto_server not installed (pip install 'moto[server]')"}
    try:
        import boto3  # noqa: PLC0415
    except ImportError:
        return {"skipped": "boto3 not installed"}
    tmp = tempfile.mkdtemp(prefix="rexray-bench-ebs.")
    os.makedirs(os.path.join(tmp, "links"))
    os.makedirs(os.path.join(tmp, "hv"))
    work_bin = os.path.join(tmp, "rexray")
    shutil.copy2(binary, work_bin)  # the build may change under us
    out = {"binary": binary, "binary_bytes": os.path.getsize(binary), "volumes_for_ls": args.volumes}
    moto_port = free_port()
    moto_proc = subprocess.Popen([moto, "-H", "127.0.0.1", "-p", str(moto_port)], stdout=subprocess.DEVNULL,
                                 stderr=open(os.path.join(tmp, "moto.log"), "w"))
    counts = Counts()
    proxy = None
    hv = None
    daemon = None
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                socket.create_connection(("127.0.0.1", moto_port), timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline or moto_proc.poll() is not None:
                    return {"skipped": "moto_server did not start"}
                time.sleep(0.1)
        proxy = make_proxy(moto_port, counts)
        ec2 = boto3.client("ec2", region_name=REGION, endpoint_url=f"http://127.0.0.1:{moto_port}",
                           aws_access_key_id="testing", aws_secret_access_key="testing")
        iid = ec2.run_instances(ImageId="ami-12c6146b", MinCount=1, MaxCount=1,
                                Placement={"AvailabilityZone": AZ})["Instances"][0]["InstanceId"]
        out["instance"] = iid
        hv = Hypervisor(f"http://127.0.0.1:{moto_port}", iid, os.path.join(tmp, "hv"), os.path.join(tmp, "links"))
        hv.start()
        docker = "/usr/bin/docker" if os.path.exists("/usr/bin/docker") else shutil.which("docker")
        try:
            docker_ok = bool(docker) and subprocess.run([docker, "info"], capture_output=True,
                                                        timeout=20).returncode == 0
        except subprocess.TimeoutExpired:
            docker_ok = False
        out["docker"] = docker_ok
        driver = "rxbench-ebs"
        sock = f"/run/docker/plugins/{driver}.sock" if docker_ok else os.path.join(tmp, "ebs.sock")
        daemon = EbsDaemon(work_bin, tmp, sock, proxy_port=proxy.server_address[1], instance_id=iid)
        daemon.start()

        # --- calls per operation, through the socket (what Docker sends for each) ---
        ops = []

        def op(label, method, body=""):
            before = counts.snapshot()
            ok, reply, ms = rx_call(sock, method, body)
            time.sleep(0.5)  # let background refreshes the call started land on this call
            calls = Counts.diff(counts.snapshot(), before)
            ops.append({"op": label, "ok": ok, "ms": round(ms, 1), "calls": calls, "total": sum(calls.values()),
                        "reply": reply[:300]})
            log(f"{label}: {'ok' if ok else 'FAILED'} {ms:.0f} ms, EC2 calls {calls}")
            return ok

        name = "rxb-ebs-0"
        mid = json.dumps({"Name": name, "ID": "a" * 64})
        op("first call (identity, cache fill): Capabilities", "VolumeDriver.Capabilities", "{}")
        op("list (warm-up)", "VolumeDriver.List", "{}")
        op("create (size 1)", "VolumeDriver.Create", json.dumps({"Name": name, "Opts": {"size": "1"}}))
        op("get / inspect", "VolumeDriver.Get", json.dumps({"Name": name}))
        op("path", "VolumeDriver.Path", json.dumps({"Name": name}))
        op("list", "VolumeDriver.List", "{}")
        op("mount (new: attach, format)", "VolumeDriver.Mount", mid)
        op("unmount (detach)", "VolumeDriver.Unmount", mid)
        op("mount existing (attach)", "VolumeDriver.Mount", mid)
        op("get while mounted", "VolumeDriver.Get", json.dumps({"Name": name}))
        op("unmount (detach) again", "VolumeDriver.Unmount", mid)
        op("remove", "VolumeDriver.Remove", json.dumps({"Name": name}))
        out["ops"] = ops
        out["hypervisor_errors"] = hv.errors[-5:]

        # --- docker volume ls over N volumes ---
        # Creating thousands through the daemon is quadratic in moto (every call filters every
        # volume), so: one volume through the daemon as the template, the others directly in moto
        # with the template's tags, and the daemon's state record of the template copied for each
        # (the record a Create through the socket would have written).
        n = args.volumes
        t0 = time.monotonic()
        template = "rxb5k-0"
        if not rx_call(sock, "VolumeDriver.Create", json.dumps({"Name": template, "Opts": {"size": "1"}}))[0]:
            raise RuntimeError("create of the template volume failed")
        tv = ec2.describe_volumes(Filters=[{"Name": "tag:Name", "Values": [template]}])["Volumes"]
        if len(tv) != 1:
            raise RuntimeError(f"template volume: {len(tv)} EC2 volumes named {template}")
        tags = [t for t in tv[0].get("Tags", []) if t["Key"] != "Name"]
        daemon.stop()
        state = os.path.join(tmp, "home/var/lib/rexray/state/ebs/volumes")
        with open(os.path.join(state, template)) as f:
            record = json.load(f)
        log(f"creating {n - 1} more volumes in moto and their state records (not counted)")
        from concurrent.futures import ThreadPoolExecutor  # noqa: PLC0415

        def make(i):
            name = f"rxb5k-{i}"
            ec2.create_volume(Size=tv[0]["Size"], AvailabilityZone=AZ, VolumeType=tv[0]["VolumeType"],
                              TagSpecifications=[{"ResourceType": "volume",
                                                  "Tags": [{"Key": "Name", "Value": name}] + tags}])
            with open(os.path.join(state, name), "w") as f:
                json.dump(dict(record, name=name), f, indent=2)

        with ThreadPoolExecutor(8) as pool:
            list(pool.map(make, range(1, n)))
        foreign = 100 if n >= 1000 else 10
        for i in range(foreign):  # as another host would: in EC2, not in our state
            ec2.create_volume(Size=1, AvailabilityZone=AZ, VolumeType="gp3", TagSpecifications=[{
                "ResourceType": "volume", "Tags": [{"Key": "Name", "Value": f"rxb-elsewhere-{i}"}] + tags}])
        out["made_elsewhere"] = foreign
        out["setup_secs"] = round(time.monotonic() - t0, 1)
        before = counts.snapshot()
        t0 = time.perf_counter()
        daemon.start()  # a cold cache
        ok, _, _ = rx_call(sock, "VolumeDriver.Get", json.dumps({"Name": template}))
        out["restart"] = {"first_get_ms": round((time.perf_counter() - t0) * 1000, 1), "ok": ok}
        time.sleep(0.5)
        out["restart"]["calls"] = Counts.diff(counts.snapshot(), before)
        log(f"restart with {n} volumes in state: {out['restart']}")
        ls = []

        def list_once(label):
            before = counts.snapshot()
            ok, reply, ms = rx_call(sock, "VolumeDriver.List", "{}")
            time.sleep(0.5)
            calls = Counts.diff(counts.snapshot(), before)
            try:
                listed = len(json.loads(reply).get("Volumes") or [])
            except ValueError:
                listed = None
            ls.append({"how": label, "ok": ok, "ms": round(ms, 1), "calls": calls, "listed": listed})
            log(f"{label}: {ms:.0f} ms, {listed} volumes, EC2 calls {calls}")

        def docker_ls(label):
            before = counts.snapshot()
            t0 = time.perf_counter()
            r = subprocess.run([docker, "volume", "ls", "-q", "--filter", f"driver={driver}"],
                               capture_output=True, text=True, timeout=300)
            ms = (time.perf_counter() - t0) * 1000
            time.sleep(0.5)
            calls = Counts.diff(counts.snapshot(), before)
            listed = len(r.stdout.split()) if r.returncode == 0 else None
            ls.append({"how": label, "ok": r.returncode == 0, "ms": round(ms, 1), "calls": calls, "listed": listed,
                       "err": r.stderr.strip()[-300:]})
            log(f"{label}: {ms:.0f} ms, {listed} volumes, EC2 calls {calls}")

        list_once("socket List, cold cache (just restarted)")
        list_once("socket List, warm cache")
        if docker_ok:
            for i in range(3):
                docker_ls(f"docker volume ls ({i + 1})")
        # how long after the restart until the volumes made by "another host" are listed too
        want = n + foreign
        t_deadline = time.monotonic() + 60
        seen = None
        while time.monotonic() < t_deadline:
            ok, reply, _ = rx_call(sock, "VolumeDriver.List", "{}")
            try:
                listed = len(json.loads(reply).get("Volumes") or [])
            except ValueError:
                listed = 0
            if listed >= want:
                seen = round(time.perf_counter() - t0, 1)
                break
            time.sleep(0.5)
        out["all_listed_after_s"] = seen
        log(f"all {want} volumes listed {seen} s after the restart" if seen else
            f"the {foreign} volumes made elsewhere were still not listed 60 s after the restart")
        out["ls"] = ls
    except Exception as e:  # noqa: BLE001
        out["error"] = str(e)
        if daemon:
            out["daemon_log_tail"] = daemon.log_tail()
    finally:
        if daemon:
            daemon.stop()
            try:
                with open(os.path.join(daemon.dir, "daemon.log"), errors="replace") as f:
                    out["daemon_warnings"] = [l.strip()[:400] for l in f if " WARN " in l or " ERROR " in l][-20:]
            except OSError:
                pass
        if hv:
            hv.shutdown()
        if proxy:
            proxy.shutdown()
        moto_proc.terminate()
        try:
            moto_proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            moto_proc.kill()
        unmount_under(tmp)
        shutil.rmtree(tmp, ignore_errors=True)
    return out


if __name__ == "__main__":
    main()
