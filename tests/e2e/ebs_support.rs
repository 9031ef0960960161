//! Shared parts of the EBS tests with real parts (included with `#[path]` by `tests/ebs_*.rs`):
//! the moto EC2 emulator, a raw EC2 query client for what the backend never calls
//! (RunInstances), the test "hypervisor" (`tools/ebs_test_host.py`) that backs attached volumes with loop devices, and a
//! VolumeDriver client for the daemon's socket.
//!
//! Prerequisites are checked by [`require`]: a missing one skips the test with a printed reason,
//! except when `CI` is set, where it fails the test.
#![allow(dead_code)]

use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use rexray::backend::ebs::api::{Ec2Api, Volume, VolumeQuery};
use rexray::backend::ebs::cloud::{AwsEc2, Connection};

/// Whether CI is set (then missing prerequisites fail instead of skipping).
pub fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| !matches!(v.as_str(), "" | "0" | "false"))
}

/// Skips (returns `false` after printing why) or, in CI, panics, when `reason` is `Some`.
pub fn require(test: &str, reason: Option<String>) -> bool {
    match reason {
        None => true,
        Some(reason) if in_ci() => panic!("{test}: cannot run in CI: {reason}"),
        Some(reason) => {
            let _ = writeln!(std::io::stderr(), "skipping {test}: {reason}");
            false
        }
    }
}

/// Whether this process runs as root.
pub fn is_root() -> bool {
    rustix::process::geteuid().is_root()
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr").port()
}

fn find_in_path(program: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path).map(|d| d.join(program)).find(|p| p.is_file())
}

/// A moto server: the one at `MOTO_ENDPOINT`, or one this test starts (killed on drop).
#[derive(Debug)]
pub struct Moto {
    /// `http://127.0.0.1:PORT`.
    pub endpoint: String,
    child: Option<Child>,
}

impl Drop for Moto {
    fn drop(&mut self) {
        if let Some(child) = &mut self.child {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Moto {
    /// Finds or starts moto.
    ///
    /// # Errors
    /// Why moto is not available (no `MOTO_ENDPOINT`, no `moto_server` on PATH, or it did not
    /// answer).
    pub fn start() -> Result<Moto, String> {
        if let Ok(endpoint) = std::env::var("MOTO_ENDPOINT") {
            if !endpoint.is_empty() {
                wait_http(&endpoint, Duration::from_secs(10))?;
                return Ok(Moto { endpoint, child: None });
            }
        }
        let program = std::env::var_os("MOTO_SERVER")
            .map(PathBuf::from)
            .or_else(|| find_in_path("moto_server"))
            .ok_or("moto is not installed: pip install 'moto[server]==5.2.5' (or set MOTO_ENDPOINT)")?;
        let port = free_port();
        let child = Command::new(&program)
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("cannot start {}: {e}", program.display()))?;
        let moto = Moto { endpoint: format!("http://127.0.0.1:{port}"), child: Some(child) };
        wait_http(&moto.endpoint, Duration::from_secs(30))?;
        Ok(moto)
    }

    /// Finds or starts moto for `test`; `None` (after [`require`] printed why, or panicked in
    /// CI) when it is not available.
    pub fn for_test(test: &str) -> Option<Moto> {
        match Moto::start() {
            Ok(m) => Some(m),
            Err(e) => {
                require(test, Some(e));
                None
            }
        }
    }

    /// An EC2 client for `region` (signed for it, which picks moto's backend).
    pub async fn api(&self, region: &str) -> AwsEc2 {
        AwsEc2::connect(&Connection {
            region: region.to_owned(),
            endpoint: Some(self.endpoint.clone()),
            static_credentials: Some(("test".into(), "test".into())),
        })
        .await
    }

    /// Starts an instance in `az` (RunInstances) and returns its ID.
    pub fn run_instance(&self, region: &str, az: &str) -> String {
        self.run_instance_of(region, az, "t3.micro")
    }

    /// Starts an instance of `instance_type` in `az`; returns its ID.
    pub fn run_instance_of(&self, region: &str, az: &str, instance_type: &str) -> String {
        let body = ec2_query(
            &self.endpoint,
            region,
            &[
                ("Action", "RunInstances"),
                ("ImageId", "ami-12c6146b"),
                ("MinCount", "1"),
                ("MaxCount", "1"),
                ("InstanceType", instance_type),
                ("Placement.AvailabilityZone", az),
            ],
        )
        .expect("RunInstances");
        let start = body.find("<instanceId>").expect("instanceId in RunInstances") + "<instanceId>".len();
        let end = start + body[start..].find('<').expect("end tag");
        body[start..end].to_owned()
    }
}

fn wait_http(endpoint: &str, limit: Duration) -> Result<(), String> {
    let addr = endpoint.trim_start_matches("http://").trim_end_matches('/').to_owned();
    let deadline = Instant::now() + limit;
    loop {
        if TcpStream::connect(&addr).is_ok() {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(format!("moto did not answer at {endpoint} within {limit:?}"));
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn url_encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// Splits a raw HTTP/1.1 response into status and (de-chunked) body.
fn parse_response(raw: &[u8]) -> Result<(u16, String), String> {
    let text = String::from_utf8_lossy(raw).to_string();
    let (head, body) = text.split_once("\r\n\r\n").ok_or("no header end")?;
    let status: u16 = head.split_whitespace().nth(1).and_then(|s| s.parse().ok()).ok_or("no status")?;
    let chunked = head.to_ascii_lowercase().contains("transfer-encoding: chunked");
    if !chunked {
        return Ok((status, body.to_owned()));
    }
    let mut out = String::new();
    let mut rest = body;
    loop {
        let (size, after) = rest.split_once("\r\n").ok_or("bad chunk")?;
        let size = usize::from_str_radix(size.trim(), 16).map_err(|e| e.to_string())?;
        if size == 0 {
            return Ok((status, out));
        }
        out.push_str(&after[..size]);
        rest = &after[size + 2..];
    }
}

/// One EC2 Query API call, unsigned but with a credential scope naming `region` (moto routes
/// by it and checks no signature). Returns the XML body of a 200 answer.
///
/// # Errors
/// The transport failure, or the status and body of a non-200 answer.
pub fn ec2_query(endpoint: &str, region: &str, params: &[(&str, &str)]) -> Result<String, String> {
    let addr = endpoint.trim_start_matches("http://").trim_end_matches('/');
    let mut body: Vec<String> = params.iter().map(|(k, v)| format!("{}={}", url_encode(k), url_encode(v))).collect();
    body.push("Version=2016-11-15".into());
    let body = body.join("&");
    let request = format!(
        "POST / HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/x-www-form-urlencoded; charset=utf-8\r\n\
         Authorization: AWS4-HMAC-SHA256 Credential=test/20260101/{region}/ec2/aws4_request, SignedHeaders=host, Signature=0\r\n\
         X-Amz-Date: 20260101T000000Z\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let mut stream = TcpStream::connect(addr).map_err(|e| e.to_string())?;
    stream.set_read_timeout(Some(Duration::from_secs(30))).map_err(|e| e.to_string())?;
    stream.write_all(request.as_bytes()).map_err(|e| e.to_string())?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).map_err(|e| e.to_string())?;
    let (status, text) = parse_response(&raw)?;
    if status == 200 {
        Ok(text)
    } else {
        Err(format!("{status}: {text}"))
    }
}

/// Calls `method` (`VolumeDriver.Mount`, …) on the daemon's socket the way Docker does (no
/// Content-Type) and returns the status and the JSON answer.
pub fn plugin_call(socket: &Path, method: &str, body: &serde_json::Value) -> (u16, serde_json::Value) {
    let body = body.to_string();
    let request = format!(
        "POST /{method} HTTP/1.1\r\nHost: plugin\r\nAccept: application/vnd.docker.plugins.v1.2+json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let mut stream = UnixStream::connect(socket).unwrap_or_else(|e| panic!("connect {}: {e}", socket.display()));
    stream.set_read_timeout(Some(Duration::from_secs(180))).expect("timeout");
    stream.write_all(request.as_bytes()).expect("write request");
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).expect("read response");
    let (status, text) = parse_response(&raw).expect("HTTP response");
    let json = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{method}: not JSON ({e}): {text}"));
    (status, json)
}

/// A `rexray service start -f -c FILE` process.
#[derive(Debug)]
pub struct Daemon {
    /// The socket it serves.
    pub socket: PathBuf,
    /// Its log file.
    pub log: PathBuf,
    child: Option<Child>,
}

impl Daemon {
    /// Starts the daemon with `config` and `REXRAY_HOME=home` (plus `env`) and waits until the
    /// socket answers Plugin.Activate.
    pub fn start(config: &Path, home: &Path, socket: &Path, log: &Path, env: &[(&str, &str)]) -> Daemon {
        let out = std::fs::OpenOptions::new().create(true).append(true).open(log).expect("log file");
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_rexray"));
        cmd.args(["service", "start", "-f", "-c"])
            .arg(config)
            .env("REXRAY_HOME", home)
            .env("RUST_LOG", "rexray=debug")
            .stdin(Stdio::null())
            .stdout(out.try_clone().expect("log"))
            .stderr(out);
        for (k, v) in env {
            cmd.env(k, v);
        }
        let child = cmd.spawn().expect("start the daemon");
        let daemon = Daemon { socket: socket.to_path_buf(), log: log.to_path_buf(), child: Some(child) };
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if UnixStream::connect(socket).is_ok() {
                let (status, _) = plugin_call(socket, "Plugin.Activate", &serde_json::Value::Null);
                if status == 200 {
                    return daemon;
                }
            }
            assert!(
                Instant::now() < deadline,
                "daemon did not listen on {}; log:\n{}",
                socket.display(),
                daemon.log_text()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The log so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// `kill -9`, as a crash would.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGTERM and wait.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let pid = rustix::process::Pid::from_child(&child);
            let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
            let deadline = Instant::now() + Duration::from_secs(20);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = child.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.stop();
    }
}

fn run(cmd: &str, args: &[&str]) -> Result<String, String> {
    let out = Command::new(cmd).args(args).output().map_err(|e| format!("{cmd}: {e}"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
    } else {
        Err(format!("{cmd} {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim()))
    }
}

/// Volumes named with this prefix never get a device from the [`Hypervisor`].
pub const NO_DEVICE_PREFIX: &str = "rxe2e-nodevice";

/// The test "hypervisor": `tools/ebs_test_host.py serve`, the device host the README's "Try EBS
/// without AWS" uses. Every 100 ms it asks the emulator which volumes are attached to the
/// instances it serves and backs each with a loop device over `<sim>/<volume-id>.img`, linked as
/// `<links>/nvme-Amazon_Elastic_Block_Store_vol<hex>` in that instance's link directory; when the
/// attachment goes away it lazily unmounts whatever still mounts the device (a dead host's
/// mounts), removes the link and releases the loop device. Volumes whose Name tag starts with
/// [`NO_DEVICE_PREFIX`] are never plugged: their device never appears, as on a host whose udev
/// does not make the links. Stopped (SIGTERM) on [`Hypervisor::stop`] or drop, it unplugs all.
#[derive(Debug)]
pub struct Hypervisor {
    child: Option<Child>,
    readers: Vec<JoinHandle<()>>,
    /// Errors it reported (checked by the test).
    pub errors: Arc<Mutex<Vec<String>>>,
}

/// The device host tool in this repository.
pub fn device_host_tool() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tools/ebs_test_host.py")
}

impl Hypervisor {
    /// Starts serving `instances` (instance ID → link directory) of `region` of the emulator at
    /// `endpoint`, with the image files under `sim`; returns once it serves.
    pub fn start(endpoint: &str, region: &str, sim: &Path, instances: BTreeMap<String, PathBuf>) -> Hypervisor {
        let mut cmd = Command::new("python3");
        cmd.arg(device_host_tool())
            .args(["--endpoint", endpoint, "--region", region, "serve", "--images"])
            .arg(sim)
            .args(["--never-plug", NO_DEVICE_PREFIX]);
        for (instance, links) in &instances {
            cmd.arg("--instance").arg(format!("{instance}={}", links.display()));
        }
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start python3 tools/ebs_test_host.py");
        let errors = Arc::new(Mutex::new(Vec::new()));
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let stdout = child.stdout.take().expect("stdout");
        let stderr = child.stderr.take().expect("stderr");
        let errors2 = errors.clone();
        let readers = vec![
            std::thread::spawn(move || {
                for line in std::io::BufRead::lines(std::io::BufReader::new(stdout)).map_while(Result::ok) {
                    if line == "serving" {
                        let _ = ready_tx.send(());
                    }
                    eprintln!("hypervisor: {line}");
                }
            }),
            std::thread::spawn(move || {
                for line in std::io::BufRead::lines(std::io::BufReader::new(stderr)).map_while(Result::ok) {
                    eprintln!("hypervisor: {line}");
                    errors2.lock().unwrap().push(line);
                }
            }),
        ];
        let ready = ready_rx.recv_timeout(Duration::from_secs(20)).is_ok();
        let mut hv = Hypervisor { child: Some(child), readers, errors };
        if !ready {
            hv.stop();
            panic!("tools/ebs_test_host.py did not start serving: {:?}", hv.errors.lock().unwrap());
        }
        hv
    }

    /// Stops serving (SIGTERM, then SIGKILL after 30 s) once it has unplugged everything.
    pub fn stop(&mut self) {
        let Some(mut child) = self.child.take() else { return };
        if let Ok(pid) = i32::try_from(child.id()) {
            if let Some(pid) = rustix::process::Pid::from_raw(pid) {
                let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
            }
        }
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline && matches!(child.try_wait(), Ok(None)) {
            std::thread::sleep(Duration::from_millis(50));
        }
        if matches!(child.try_wait(), Ok(None)) {
            self.errors.lock().unwrap().push("did not stop within 30 s of SIGTERM".into());
            let _ = child.kill();
        }
        let _ = child.wait();
        for reader in self.readers.drain(..) {
            let _ = reader.join();
        }
    }
}

impl Drop for Hypervisor {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The volumes of `region` whose Name tag is `name`.
pub async fn volumes_named(api: &AwsEc2, name: &str) -> Vec<Volume> {
    api.describe_volumes(&VolumeQuery::filtered(vec![("tag:Name".into(), vec![name.to_owned()])]))
        .await
        .expect("DescribeVolumes")
        .volumes
}

/// Loop devices backed by files under `sim` (to check nothing leaks).
pub fn loops_under(sim: &Path) -> BTreeSet<String> {
    run("losetup", &["-n", "-O", "NAME,BACK-FILE"])
        .unwrap_or_default()
        .lines()
        .filter(|l| l.contains(&sim.display().to_string()))
        .filter_map(|l| l.split_whitespace().next().map(str::to_owned))
        .collect()
}
