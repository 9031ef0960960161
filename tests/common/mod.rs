//! Helpers shared by the integration tests that run the built `rexray` binary as a daemon.
// Each test crate uses its own subset of these helpers.
#![allow(dead_code)]

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

pub mod csi;

/// The binary under test.
pub const BIN: &str = env!("CARGO_BIN_EXE_rexray");

/// A daemon child process, killed when dropped.
pub struct Daemon {
    pub child: Child,
    /// The plugin socket it serves.
    pub socket: PathBuf,
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts `rexray service start -f -c config` with `REXRAY_HOME=home`, logging to `log`, and
/// waits (up to 20 s) until every socket in `ready` accepts connections; `ready[0]` is the
/// plugin socket.
pub fn start_daemon(config: &Path, home: &Path, log: &Path, ready: &[PathBuf]) -> Daemon {
    let child = std::process::Command::new(BIN)
        .args(["service", "start", "-f", "-c"])
        .arg(config)
        .env("REXRAY_HOME", home)
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(log).unwrap())
        .spawn()
        .unwrap();
    let daemon = Daemon { child, socket: ready[0].clone() };
    let deadline = Instant::now() + Duration::from_secs(20);
    while ready.iter().any(|s| UnixStream::connect(s).is_err()) {
        assert!(
            Instant::now() < deadline,
            "the daemon did not listen: {}",
            std::fs::read_to_string(log).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    daemon
}

/// One Docker-shaped call on a plugin socket; returns (status, JSON body).
pub fn plugin_call(socket: &Path, method: &str, body: &Value) -> (u16, Value) {
    let mut stream = UnixStream::connect(socket).unwrap();
    let body = format!("{body}\n");
    write!(
        stream,
        "POST /{method} HTTP/1.1\r\nHost: plugin\r\nAccept: application/vnd.docker.plugins.v1.2+json\r\nConnection: close\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut reply = String::new();
    stream.read_to_string(&mut reply).unwrap();
    let status = reply[9..12].parse().unwrap();
    let (_, body) = reply.split_once("\r\n\r\n").unwrap();
    (status, serde_json::from_str(body.trim()).unwrap_or(Value::Null))
}

/// Whether something is mounted at `path` (from /proc/self/mountinfo).
pub fn is_mounted(path: &Path) -> bool {
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    let path = path.display().to_string();
    mounts.lines().any(|l| l.split(' ').nth(4) == Some(path.as_str()))
}
