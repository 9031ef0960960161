//! Randomized `kill -9` rounds against the real binary on the `loop` backend: clients race
//! Create, Mount, Unmount and Remove on a few volumes while the daemon is killed at a random
//! moment; after each restart every volume's holders must match the kernel's mounts and loop
//! devices, a volume that is gone must have left nothing behind, and a file written and synced
//! before any crash reads back. At the end every holder lets go and every volume is removed:
//! no image, mount or loop device may be left.
//!
//! The seed is printed; `REXRAY_TEST_SEED=N` replays a run. Needs root.

mod common;

use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use common::{Daemon, BIN};

const VOLUMES: [&str; 3] = ["r0", "r1", "r2"];
const ROUNDS: u32 = 10;
const CLIENTS: u32 = 4;

/// A small deterministic generator (xorshift64*).
#[derive(Debug, Clone)]
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

struct Home {
    dir: tempfile::TempDir,
}

impl Home {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let config = format!(
            "rexray:\n  modules:\n    default-docker:\n      host: unix://{}\nlibstorage:\n  service: loop\n  integration:\n    volume:\n      operations:\n        create:\n          default:\n            size: 1\n",
            dir.path().join("plugin.sock").display()
        );
        std::fs::write(dir.path().join("rexray.yml"), config).unwrap();
        Self { dir }
    }

    fn socket(&self) -> PathBuf {
        self.dir.path().join("plugin.sock")
    }

    fn lib(&self) -> PathBuf {
        std::fs::canonicalize(self.dir.path()).unwrap().join("var/lib/rexray")
    }

    fn start(&self, round: u32) -> Daemon {
        let log = self.dir.path().join(format!("daemon-{round}.log"));
        let child = Command::new(BIN)
            .args(["service", "start", "-f", "-c"])
            .arg(self.dir.path().join("rexray.yml"))
            .env("REXRAY_HOME", self.dir.path())
            .env_remove("REXRAY_CRASH_AT")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(30);
        while std::os::unix::net::UnixStream::connect(self.socket()).is_err() {
            assert!(Instant::now() < deadline, "no listen: {}", std::fs::read_to_string(&log).unwrap_or_default());
            std::thread::sleep(Duration::from_millis(20));
        }
        Daemon { child, socket: self.socket() }
    }
}

/// One call; `None` when the daemon died before a whole reply.
fn call(socket: &Path, method: &str, body: &Value) -> Option<(u16, Value)> {
    let mut stream = std::os::unix::net::UnixStream::connect(socket).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(60))).ok()?;
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

fn ok(socket: &Path, method: &str, body: Value) -> Value {
    let reply = call(socket, method, &body);
    match reply {
        Some((200, v)) => v,
        other => panic!("{method} {body}: {other:?}"),
    }
}

/// (mounted at its mount directory, loop devices of its image) for volume `name`.
fn reality(home: &Home, name: &str) -> (bool, usize) {
    let lib = home.lib();
    let target = lib.join("volumes").join(name);
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    let mounted = rexray::os::mountinfo::parse(&mounts).iter().any(|m| m.mount_point == target);
    let image = lib.join("loop").join(format!("{name}.img"));
    let devices = std::fs::read_dir("/sys/block")
        .unwrap()
        .flatten()
        .filter_map(|e| std::fs::read_to_string(e.path().join("loop/backing_file")).ok())
        .filter(|b| Path::new(b.trim_end()) == image)
        .count();
    (mounted, devices)
}

/// One client: random operations until told to stop.
fn client(socket: PathBuf, mut rng: Rng, id: u32, stop: Arc<Mutex<bool>>, used: Arc<Mutex<BTreeSet<String>>>) {
    let mut n = 0;
    while !*stop.lock().unwrap() {
        n += 1;
        let volume = VOLUMES[usize::try_from(rng.below(VOLUMES.len() as u64)).unwrap()];
        let holder = format!("c{id}-{}", rng.below(3));
        used.lock().unwrap().insert(holder.clone());
        let (method, body) = match rng.below(10) {
            0 => ("VolumeDriver.Create", json!({"Name": volume})),
            1 => ("VolumeDriver.Remove", json!({"Name": volume})),
            2..=5 => ("VolumeDriver.Mount", json!({"Name": volume, "ID": holder})),
            _ => ("VolumeDriver.Unmount", json!({"Name": volume, "ID": holder})),
        };
        if call(&socket, method, &body).is_none() {
            return; // the daemon is gone
        }
        if n > 10_000 {
            return;
        }
    }
}

/// The invariants after a restart: holders vs the kernel for every volume, the kept file.
fn check(home: &Home, round: u32) {
    let socket = home.socket();
    for name in VOLUMES.iter().chain(["keep"].iter()) {
        let reply = call(&socket, "VolumeDriver.Get", &json!({"Name": name})).unwrap();
        match reply {
            (200, v) => {
                let st = &v["Volume"]["Status"];
                assert!(st.get("pending").is_none(), "round {round}: {name} keeps an intent: {st}");
                let holders = st["holders"].as_u64().unwrap();
                assert_eq!(
                    reality(home, name),
                    (holders > 0, usize::from(holders > 0)),
                    "round {round}: {name} has {holders} holders"
                );
            }
            (_, v) => {
                assert!(v["Err"].as_str().unwrap_or_default().contains("no such volume"), "round {round}: {v}");
                assert_eq!(reality(home, name), (false, 0), "round {round}: {name} is gone but left a mount or device");
                assert!(
                    !home.lib().join("loop").join(format!("{name}.img")).exists(),
                    "round {round}: {name}'s image left"
                );
            }
        }
    }
    let path = ok(&socket, "VolumeDriver.Mount", json!({"Name": "keep", "ID": "checker"}))["Mountpoint"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(std::fs::read(Path::new(&path).join("precious")).unwrap(), b"synced before any crash", "round {round}");
    ok(&socket, "VolumeDriver.Unmount", json!({"Name": "keep", "ID": "checker"}));
}

#[test]
fn random_kills_leave_nothing_stuck_or_lost() {
    if !rustix::process::geteuid().is_root() {
        eprintln!("skipping: needs root for loop devices and mount(2)");
        return;
    }
    let seed = std::env::var("REXRAY_TEST_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(|| {
        u64::try_from(
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos()
                % u128::from(u64::MAX),
        )
        .unwrap()
            | 1
    });
    eprintln!("REXRAY_TEST_SEED={seed}");
    let mut rng = Rng(seed);
    let home = Home::new();
    let used = Arc::new(Mutex::new(BTreeSet::new()));
    {
        let daemon = home.start(0);
        ok(&home.socket(), "VolumeDriver.Create", json!({"Name": "keep"}));
        let path = ok(&home.socket(), "VolumeDriver.Mount", json!({"Name": "keep", "ID": "writer"}))["Mountpoint"]
            .as_str()
            .unwrap()
            .to_owned();
        let file = std::fs::File::create(Path::new(&path).join("precious")).unwrap();
        (&file).write_all(b"synced before any crash").unwrap();
        file.sync_all().unwrap();
        drop(daemon); // killed with the file's volume still mounted
    }
    for round in 1..=ROUNDS {
        let mut daemon = home.start(round);
        check(&home, round);
        let stop = Arc::new(Mutex::new(false));
        let clients: Vec<_> = (0..CLIENTS)
            .map(|id| {
                let (socket, stop, used) = (home.socket(), stop.clone(), used.clone());
                let rng = Rng(rng.next() | 1);
                std::thread::spawn(move || client(socket, rng, id, stop, used))
            })
            .collect();
        std::thread::sleep(Duration::from_millis(150 + rng.below(700)));
        daemon.child.kill().unwrap(); // SIGKILL
        daemon.child.wait().unwrap();
        *stop.lock().unwrap() = true;
        for c in clients {
            c.join().unwrap();
        }
    }
    // The last restart: check, then everyone lets go and everything is removed.
    let daemon = home.start(ROUNDS + 1);
    check(&home, ROUNDS + 1);
    let socket = home.socket();
    let mut holders: Vec<String> = used.lock().unwrap().iter().cloned().collect();
    holders.extend(["writer".to_owned(), "checker".to_owned()]);
    let count = |name: &str| {
        let reply = ok(&socket, "VolumeDriver.Get", json!({"Name": name}));
        reply["Volume"]["Status"]["holders"].as_u64().unwrap()
    };
    for name in VOLUMES.iter().chain(["keep"].iter()) {
        if call(&socket, "VolumeDriver.Get", &json!({"Name": name})).is_some_and(|(status, _)| status != 200) {
            continue;
        }
        // A Docker ID mounted N times holds N times (`docker cp`): each Unmount lets go of one.
        while count(name) > 0 {
            for holder in &holders {
                ok(&socket, "VolumeDriver.Unmount", json!({"Name": name, "ID": holder}));
            }
        }
        let st = call(&socket, "VolumeDriver.Get", &json!({"Name": name}));
        assert_eq!(reality(&home, name), (false, 0), "{name} after every holder let go: {st:?}");
        ok(&socket, "VolumeDriver.Remove", json!({"Name": name}));
    }
    let images: Vec<_> = std::fs::read_dir(home.lib().join("loop")).unwrap().flatten().map(|e| e.file_name()).collect();
    assert!(images.is_empty(), "images left: {images:?}");
    assert!(ok(&socket, "VolumeDriver.List", json!({}))["Volumes"].as_array().unwrap().is_empty());
    drop(daemon);
}
