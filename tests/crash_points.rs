//! Crash injection against the real binary and the kernel: every step of Create, Mount, Unmount
//! and Remove on the `vfs` and `loop` backends. For each operation and each N = 1, 2, …, a
//! daemon started with `REXRAY_CRASH_AT=OP:N` aborts at the N-th crash point of that operation
//! (as `kill -9` would: no destructor, no cleanup); a new daemon is started on the same state,
//! and the invariants are checked against the kernel's own tables (`/proc/self/mountinfo`,
//! `/sys/block/loop*/loop/backing_file`):
//!
//! - the volume's holders match its mounts and loop devices;
//! - the data written before the crash reads back;
//! - after the last unmount nothing of it is mounted or attached;
//! - Remove is always possible and leaves no image, directory, mount or device;
//! - a volume that survives a crashed Create has the size that Create asked for, and the name
//!   can be created again with other options afterwards.
//!
//! Needs root (loop devices, mount(2)); as another user each test says why it is skipped.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use common::{plugin_call, Daemon, BIN};

fn is_root() -> bool {
    rustix::process::geteuid().is_root()
}

/// One daemon home: config, state, roots and socket under a temp dir.
struct Home {
    dir: tempfile::TempDir,
    backend: &'static str,
}

impl Home {
    fn new(backend: &'static str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("plugin.sock");
        let config = format!(
            "rexray:\n  logLevel: debug\n  modules:\n    default-docker:\n      host: unix://{}\nlibstorage:\n  service: {backend}\n  integration:\n    volume:\n      operations:\n        create:\n          default:\n            size: 1\n",
            socket.display()
        );
        std::fs::write(dir.path().join("rexray.yml"), config).unwrap();
        Self { dir, backend }
    }

    fn socket(&self) -> PathBuf {
        self.dir.path().join("plugin.sock")
    }

    fn lib(&self) -> PathBuf {
        self.dir.path().join("var/lib/rexray")
    }

    fn image(&self) -> PathBuf {
        self.lib().join("loop/v.img")
    }

    fn volume_dir(&self) -> PathBuf {
        match self.backend {
            "vfs" => self.lib().join("vfs/v"),
            _ => self.lib().join("volumes/v"),
        }
    }

    /// Starts a daemon, crashing at `crash` (`OP:N`) if given.
    fn start(&self, crash: Option<&str>, log: &str) -> Daemon {
        let mut command = Command::new(BIN);
        command
            .args(["service", "start", "-f", "-c"])
            .arg(self.dir.path().join("rexray.yml"))
            .env("REXRAY_HOME", self.dir.path())
            .env_remove("REXRAY_CRASH_AT")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(self.dir.path().join(log)).unwrap());
        if let Some(crash) = crash {
            command.env("REXRAY_CRASH_AT", crash);
        }
        let child = command.spawn().unwrap();
        let daemon = Daemon { child, socket: self.socket() };
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::os::unix::net::UnixStream::connect(self.socket()).is_err() {
            assert!(Instant::now() < deadline, "the daemon did not listen: {}", self.log(log));
            std::thread::sleep(Duration::from_millis(20));
        }
        daemon
    }

    fn log(&self, name: &str) -> String {
        std::fs::read_to_string(self.dir.path().join(name)).unwrap_or_default()
    }

    fn call(&self, method: &str, body: Value) -> (u16, Value) {
        plugin_call(&self.socket(), method, &body)
    }

    fn ok(&self, method: &str, body: Value) -> Value {
        let (status, reply) = self.call(method, body.clone());
        assert_eq!(status, 200, "{method} {body}: {reply}");
        reply
    }
}

/// Stops a daemon with SIGTERM and waits for it.
fn stop(mut daemon: Daemon) {
    let pid = rustix::process::Pid::from_raw(i32::try_from(daemon.child.id()).unwrap()).unwrap();
    let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
    let _ = daemon.child.wait();
}

/// What the kernel says about the volume: (mounted at its mount directory, loop devices of its
/// image).
fn reality(home: &Home) -> (bool, usize) {
    let target =
        std::fs::canonicalize(home.lib()).map(|l| l.join(if home.backend == "vfs" { "vfs/v" } else { "volumes/v" }));
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    let mounted = target.is_ok_and(|t| rexray::os::mountinfo::parse(&mounts).iter().any(|m| m.mount_point == t));
    let image = std::fs::canonicalize(home.lib().join("loop")).map(|d| d.join("v.img")).ok();
    let mut devices = 0;
    for entry in std::fs::read_dir("/sys/block").unwrap().flatten() {
        if let Ok(backing) = std::fs::read_to_string(entry.path().join("loop/backing_file")) {
            if image.as_deref() == Some(Path::new(backing.trim_end())) {
                devices += 1;
            }
        }
    }
    (mounted, devices)
}

/// The operations, and what each starts from.
#[derive(Debug, Clone, Copy)]
enum Op {
    Create,
    Mount,
    Unmount,
    Remove,
}

impl Op {
    fn name(self) -> &'static str {
        match self {
            Op::Create => "create",
            Op::Mount => "mount",
            Op::Unmount => "unmount",
            Op::Remove => "remove",
        }
    }

    fn request(self) -> (&'static str, Value) {
        match self {
            Op::Create => ("VolumeDriver.Create", json!({"Name": "v", "Opts": {"size": "2"}})),
            Op::Mount => ("VolumeDriver.Mount", json!({"Name": "v", "ID": "a"})),
            Op::Unmount => ("VolumeDriver.Unmount", json!({"Name": "v", "ID": "a"})),
            Op::Remove => ("VolumeDriver.Remove", json!({"Name": "v"})),
        }
    }
}

/// Brings a new home to where `op` starts: a volume holding a file, mounted for `Unmount`.
fn prepare(home: &Home, op: Op) {
    if matches!(op, Op::Create) {
        return;
    }
    let daemon = home.start(None, "prepare.log");
    home.ok("VolumeDriver.Create", json!({"Name": "v", "Opts": {"size": "2"}}));
    let path =
        home.ok("VolumeDriver.Mount", json!({"Name": "v", "ID": "writer"}))["Mountpoint"].as_str().unwrap().to_owned();
    std::fs::write(Path::new(&path).join("precious"), b"written before the crash").unwrap();
    home.ok("VolumeDriver.Unmount", json!({"Name": "v", "ID": "writer"}));
    if matches!(op, Op::Unmount) {
        home.ok("VolumeDriver.Mount", json!({"Name": "v", "ID": "a"}));
    }
    stop(daemon);
}

/// One call whose connection may die with the daemon: `None` when no whole reply came.
fn try_call(socket: &Path, method: &str, body: &Value) -> Option<(u16, Value)> {
    use std::io::{Read, Write};
    let mut stream = std::os::unix::net::UnixStream::connect(socket).ok()?;
    let body = format!("{body}\n");
    let request = format!(
        "POST /{method} HTTP/1.1\r\nHost: plugin\r\nConnection: close\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes()).ok()?;
    let mut reply = String::new();
    stream.read_to_string(&mut reply).ok()?;
    let status = reply.get(9..12)?.parse().ok()?;
    let (_, body) = reply.split_once("\r\n\r\n")?;
    Some((status, serde_json::from_str(body.trim()).unwrap_or(Value::Null)))
}

/// Runs `op` in a daemon set to crash at its `n`-th point; whether it crashed.
fn crash_at(home: &Home, op: Op, n: u32) -> bool {
    let mut daemon = home.start(Some(&format!("{}:{n}", op.name())), "crash.log");
    let (method, body) = op.request();
    let reply = try_call(&home.socket(), method, &body);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(status) = daemon.child.try_wait().unwrap() {
            use std::os::unix::process::ExitStatusExt;
            assert_eq!(status.signal(), Some(6), "the crash is an abort: {}", home.log("crash.log"));
            assert!(home.log("crash.log").contains(&format!("crash point {}:{n}", op.name())));
            // As after kill -9: the socket file stays; the next daemon replaces it.
            return true;
        }
        if matches!(reply, Some((200, _))) || Instant::now() > deadline {
            assert!(matches!(reply, Some((200, _))), "{op:?} at {n}: no crash and no reply: {}", home.log("crash.log"));
            stop(daemon);
            return false;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn holders(home: &Home) -> Option<u64> {
    let (status, reply) = home.call("VolumeDriver.Get", json!({"Name": "v"}));
    (status == 200).then(|| reply["Volume"]["Status"]["holders"].as_u64().unwrap())
}

/// The invariants after a restart (see the module documentation).
fn check_after_restart(home: &Home, op: Op, n: u32) {
    let at = format!("{} {op:?} crashed at point {n}", home.backend);
    let daemon = home.start(None, "restart.log");
    let block = home.backend == "loop";
    match holders(home) {
        Some(h) => {
            let (status, reply) = home.call("VolumeDriver.Get", json!({"Name": "v"}));
            assert_eq!(status, 200);
            let st = &reply["Volume"]["Status"];
            assert!(st.get("pending").is_none(), "{at}: an intent is left: {st}");
            if block {
                assert_eq!(reality(home), (h > 0, usize::from(h > 0)), "{at}: {h} holders vs the kernel");
            }
            if matches!(op, Op::Create) {
                assert_eq!(st["options"]["size"], "2", "{at}: {st}");
                if block {
                    assert_eq!(std::fs::metadata(home.image()).unwrap().len(), 2 << 30, "{at}: image size");
                }
            } else {
                // The data reads back (mounted for someone else or, here, for a reader).
                let path = home.ok("VolumeDriver.Mount", json!({"Name": "v", "ID": "reader"}))["Mountpoint"]
                    .as_str()
                    .unwrap()
                    .to_owned();
                assert_eq!(
                    std::fs::read(Path::new(&path).join("precious")).unwrap(),
                    b"written before the crash",
                    "{at}"
                );
                home.ok("VolumeDriver.Unmount", json!({"Name": "v", "ID": "reader"}));
            }
            for id in ["a", "writer"] {
                home.ok("VolumeDriver.Unmount", json!({"Name": "v", "ID": id}));
            }
            assert_eq!(holders(home), Some(0), "{at}");
            if block {
                assert_eq!(reality(home), (false, 0), "{at}: left mounted or attached after the last unmount");
            }
        }
        None => {
            assert!(matches!(op, Op::Remove), "{at}: the volume vanished: {}", home.log("restart.log"));
            assert_eq!(reality(home), (false, 0), "{at}");
        }
    }
    home.ok("VolumeDriver.Remove", json!({"Name": "v"}));
    assert_eq!(holders(home), None, "{at}: still there after Remove");
    assert!(!home.image().exists() && !home.lib().join("vfs/v").exists(), "{at}: storage left after Remove");
    assert_eq!(reality(home), (false, 0), "{at}");
    home.ok("VolumeDriver.Create", json!({"Name": "v", "Opts": {"size": "3"}}));
    if block {
        assert_eq!(std::fs::metadata(home.image()).unwrap().len(), 3 << 30, "{at}: old storage adopted");
    }
    home.ok("VolumeDriver.Remove", json!({"Name": "v"}));
    assert!(!home.volume_dir().exists() || !block, "{at}: mount directory left");
    stop(daemon);
}

fn every_step_of_every_operation(backend: &'static str) {
    if !is_root() {
        eprintln!("skipping: needs root for loop devices and mount(2)");
        return;
    }
    for op in [Op::Create, Op::Mount, Op::Unmount, Op::Remove] {
        let mut crashed = 0;
        for n in 1.. {
            assert!(n < 40, "{backend} {op:?}: no end in sight");
            let home = Home::new(backend);
            prepare(&home, op);
            if !crash_at(&home, op, n) {
                break;
            }
            crashed += 1;
            check_after_restart(&home, op, n);
        }
        assert!(crashed >= 2, "{backend} {op:?}: only {crashed} crash points");
        eprintln!("{backend} {op:?}: survived a crash at each of its {crashed} steps");
    }
}

#[test]
fn vfs_survives_kill_at_every_step() {
    every_step_of_every_operation("vfs");
}

#[test]
fn loop_survives_kill_at_every_step() {
    every_step_of_every_operation("loop");
}
