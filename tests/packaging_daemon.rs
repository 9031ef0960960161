//! The daemon as systemd runs it, without root or Docker: socket activation through
//! `systemd-socket-activate` (a request reaches the daemon through the inherited fd), `Type=notify`
//! readiness, the metrics listener, and `service install|uninstall` checked by `systemd-analyze`.
//!
//! Each daemon here serves the `vfs` service on sockets in a temp dir (`REXRAY_HOME` there too).
//! Tests that need `systemd-socket-activate` or `systemd-analyze` (Debian: systemd) say why
//! they skip when it is missing, except under CI, where a missing tool fails them.

use std::io::{Read, Write};
use std::os::unix::net::{UnixDatagram, UnixStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_rexray");

fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| !matches!(v.as_str(), "" | "0" | "false"))
}

/// The path of `tool`, or `None` (with a message) when it is missing outside CI.
fn tool(name: &str) -> Option<PathBuf> {
    for dir in ["/usr/bin", "/bin", "/usr/sbin", "/sbin"] {
        let path = Path::new(dir).join(name);
        if path.exists() {
            return Some(path);
        }
    }
    assert!(!in_ci(), "{name} is missing (Debian package systemd); .ci/run installs it");
    let _ = writeln!(std::io::stderr(), "skipping: {name} is not installed (Debian package systemd)");
    None
}

/// A config serving vfs on `<dir>/plugins/rexray.sock`, plus `extra` YAML at the top level.
fn setup(dir: &Path, extra: &str) -> (PathBuf, PathBuf) {
    let socket = dir.join("plugins/rexray.sock");
    std::fs::create_dir_all(socket.parent().unwrap()).unwrap();
    let config = dir.join("rexray.yml");
    std::fs::write(
        &config,
        format!(
            "rexray:\n  logLevel: debug\n  modules:\n    default-docker:\n      host: unix://{}\n{extra}libstorage:\n  service: vfs\n",
            socket.display()
        ),
    )
    .unwrap();
    (config, socket)
}

/// One `Connection: close` POST on a Unix socket; the status code and body.
fn post(socket: &Path, path: &str, body: &str) -> (u16, String) {
    let mut stream = UnixStream::connect(socket).unwrap_or_else(|e| panic!("connect {}: {e}", socket.display()));
    stream.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let request = format!(
        "POST {path} HTTP/1.1\r\nHost: plugin\r\nAccept: application/vnd.docker.plugins.v1.2+json\r\nConnection: close\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes()).unwrap();
    let mut reply = String::new();
    stream.read_to_string(&mut reply).unwrap();
    parse_reply(&reply)
}

/// One `Connection: close` GET over TCP; the status code and body.
fn get_tcp(addr: &str, path: &str) -> (u16, String) {
    let mut stream = std::net::TcpStream::connect(addr).unwrap_or_else(|e| panic!("connect {addr}: {e}"));
    stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    stream.write_all(format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").as_bytes()).unwrap();
    let mut reply = String::new();
    stream.read_to_string(&mut reply).unwrap();
    parse_reply(&reply)
}

fn parse_reply(reply: &str) -> (u16, String) {
    let status = reply.get(9..12).and_then(|s| s.parse().ok()).unwrap_or_else(|| panic!("not HTTP: {reply:?}"));
    let body = reply.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default();
    (status, body)
}

fn wait_for(what: &str, timeout: Duration, mut ok: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !ok() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// SIGTERM, then the exit status within 15 s.
fn terminate(child: &mut Child) -> std::process::ExitStatus {
    let _ = Command::new("kill").arg("-TERM").arg(child.id().to_string()).status();
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("the daemon did not exit within 15 s of SIGTERM");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Kills the child if a test panics before it stopped it.
struct Guard(Option<Child>);

impl Drop for Guard {
    fn drop(&mut self) {
        if let Some(child) = &mut self.0 {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

#[test]
fn socket_activation_serves_through_the_inherited_socket() {
    let Some(activate) = tool("systemd-socket-activate") else { return };
    let dir = tempfile::tempdir().unwrap();
    let (config, socket) = setup(dir.path(), "");
    let home = dir.path().join("home");
    let log = dir.path().join("daemon.log");
    let log_file = std::fs::File::create(&log).unwrap();
    let child = Command::new(activate)
        .arg("-l")
        .arg(&socket)
        .arg(format!("--setenv=REXRAY_HOME={}", home.display()))
        .arg(BIN)
        .args(["-c", config.to_str().unwrap(), "service", "start", "-f"])
        .stdin(Stdio::null())
        .stdout(log_file.try_clone().unwrap())
        .stderr(log_file)
        .spawn()
        .unwrap();
    let mut guard = Guard(Some(child));
    wait_for("the activation socket", Duration::from_secs(10), || socket.exists());
    let admin = home.join("var/run/rexray/rexray-admin.sock");
    assert!(!admin.exists(), "the daemon must not run before the first connection");

    // The first connection starts the daemon, which answers it on the socket it inherited.
    let (status, body) = post(&socket, "/Plugin.Activate", "");
    assert_eq!(status, 200, "{body}");
    assert!(body.contains(r#""Implements":["VolumeDriver"]"#), "{body}");
    let (status, body) = post(&socket, "/VolumeDriver.Create", r#"{"Name":"sa1","Opts":{"mode":"0750"}}"#);
    assert_eq!(status, 200, "{body}");
    let (status, body) = post(&socket, "/VolumeDriver.Get", r#"{"Name":"sa1"}"#);
    assert_eq!(status, 200, "{body}");
    assert!(body.contains(r#""Name":"sa1""#), "{body}");
    assert!(admin.exists(), "the daemon binds its admin socket itself");
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(text.contains("using the socket passed by systemd"), "{text}");

    let status = terminate(guard.0.as_mut().unwrap());
    guard.0 = None;
    assert!(status.success(), "{status}");
    assert!(socket.exists(), "the socket file is systemd's: the daemon leaves it in place");
    assert!(!admin.exists(), "the daemon removes the sockets it bound");
}

#[test]
fn the_daemon_tells_systemd_when_it_is_ready_and_when_it_stops() {
    let dir = tempfile::tempdir().unwrap();
    let (config, socket) = setup(dir.path(), "");
    let notify_path = dir.path().join("notify.sock");
    let notify = UnixDatagram::bind(&notify_path).unwrap();
    notify.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
    let child = Command::new(BIN)
        .args(["-c", config.to_str().unwrap(), "service", "start", "-f"])
        .env("REXRAY_HOME", dir.path().join("home"))
        .env("NOTIFY_SOCKET", &notify_path)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut guard = Guard(Some(child));
    let mut buf = [0u8; 256];
    let n = notify.recv(&mut buf).expect("READY=1 within 15 s");
    assert_eq!(&buf[..n], b"READY=1");
    // Ready means listening.
    let (status, _) = post(&socket, "/Plugin.Activate", "");
    assert_eq!(status, 200);
    let status = terminate(guard.0.as_mut().unwrap());
    guard.0 = None;
    assert!(status.success(), "{status}");
    let n = notify.recv(&mut buf).expect("STOPPING=1");
    assert_eq!(&buf[..n], b"STOPPING=1");
}

#[test]
fn metrics_and_health_are_served_when_configured() {
    let dir = tempfile::tempdir().unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let addr = format!("127.0.0.1:{port}");
    let (config, socket) = setup(dir.path(), &format!("  metrics:\n    listen: {addr}\n"));
    let child = Command::new(BIN)
        .args(["-c", config.to_str().unwrap(), "service", "start", "-f"])
        .env("REXRAY_HOME", dir.path().join("home"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut guard = Guard(Some(child));
    wait_for("the plugin socket", Duration::from_secs(10), || UnixStream::connect(&socket).is_ok());
    assert_eq!(post(&socket, "/VolumeDriver.Create", r#"{"Name":"m1"}"#).0, 200);
    assert_eq!(post(&socket, "/VolumeDriver.Mount", r#"{"Name":"m1","ID":"c1"}"#).0, 200);
    assert_eq!(post(&socket, "/VolumeDriver.Get", r#"{"Name":"nope"}"#).0, 500);
    wait_for("the health answer", Duration::from_secs(10), || get_tcp(&addr, "/health").0 == 200);
    let (_, health) = get_tcp(&addr, "/health");
    assert!(health.contains(r#""status":"ok""#) && health.contains(r#""vfs":"ready""#), "{health}");
    let (status, metrics) = get_tcp(&addr, "/metrics");
    assert_eq!(status, 200);
    for want in [
        r#"rexray_requests_total{endpoint="VolumeDriver.Mount",outcome="ok"} 1"#,
        r#"rexray_requests_total{endpoint="VolumeDriver.Get",outcome="not_found"} 1"#,
        r#"rexray_request_duration_seconds_count{endpoint="VolumeDriver.Create"} 1"#,
        r#"rexray_volumes{service="vfs"} 1"#,
        r#"rexray_volumes_active{service="vfs"} 1"#,
        r#"rexray_mount_holders{service="vfs"} 1"#,
        r#"rexray_backend_operations_total{backend="vfs",operation="activate",outcome="ok"} 1"#,
        r#"rexray_service_up{service="vfs"} 1"#,
        "# TYPE rexray_ec2_api_calls counter",
    ] {
        assert!(metrics.contains(want), "missing {want} in:\n{metrics}");
    }
    assert_eq!(get_tcp(&addr, "/nope").0, 404);
    let status = terminate(guard.0.as_mut().unwrap());
    guard.0 = None;
    assert!(status.success(), "{status}");
}

#[test]
fn service_install_writes_units_systemd_accepts_and_uninstall_removes_them() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    let (config, socket) = setup(dir.path(), "");
    let out = Command::new(BIN)
        .args(["-c", config.to_str().unwrap(), "service", "install", "--root"])
        .arg(&root)
        .args(["--bin", BIN])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("next: systemctl daemon-reload"), "{stdout}");
    let units = root.join("etc/systemd/system");
    let service = std::fs::read_to_string(units.join("rexray.service")).unwrap();
    let socket_unit = std::fs::read_to_string(units.join("rexray.socket")).unwrap();
    assert!(service.contains(&format!("ExecStart={BIN} -c {} service start -f\n", config.display())), "{service}");
    assert!(socket_unit.contains(&format!("ListenStream={}\n", socket.display())), "{socket_unit}");
    assert!(units.join("sockets.target.wants/rexray.socket").is_symlink());
    assert!(units.join("multi-user.target.wants/rexray.service").is_symlink());

    if let Some(analyze) = tool("systemd-analyze") {
        let out = Command::new(analyze)
            .arg("verify")
            .arg(units.join("rexray.socket"))
            .arg(units.join("rexray.service"))
            .output()
            .unwrap();
        let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        // Only complaints about our units count (the host's own units may have some).
        let ours: Vec<&str> = text.lines().filter(|l| l.contains("rexray")).collect();
        assert!(ours.is_empty(), "systemd-analyze verify: {text}");
    }

    let out = Command::new(BIN).args(["service", "uninstall", "--root"]).arg(&root).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(!units.join("rexray.service").exists() && !units.join("rexray.socket").exists());
    assert!(!units.join("sockets.target.wants/rexray.socket").exists());
}
