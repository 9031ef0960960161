//! A hostile file system and hostile state against the real binary: symbolic links planted in
//! the daemon's roots, storage that no record owns, and mount counts at their limit. Nothing
//! outside a root may be attached, formatted, mounted over or removed; nothing is adopted
//! silently; every refusal names what was wrong.
//!
//! The loop cases need root; the vfs cases run as anyone.

mod common;

use std::os::unix::fs::{symlink, FileExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use common::{plugin_call, Daemon, BIN};

fn is_root() -> bool {
    rustix::process::geteuid().is_root()
}

struct Home {
    dir: tempfile::TempDir,
}

impl Home {
    fn new(backend: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let config = format!(
            "rexray:\n  modules:\n    default-docker:\n      host: unix://{}\nlibstorage:\n  service: {backend}\n  integration:\n    volume:\n      operations:\n        create:\n          default:\n            size: 1\n",
            dir.path().join("plugin.sock").display()
        );
        std::fs::write(dir.path().join("rexray.yml"), config).unwrap();
        for sub in ["var/lib/rexray/vfs", "var/lib/rexray/loop", "var/lib/rexray/volumes"] {
            std::fs::create_dir_all(dir.path().join(sub)).unwrap();
        }
        Self { dir }
    }

    fn lib(&self) -> PathBuf {
        self.dir.path().join("var/lib/rexray")
    }

    fn outside(&self) -> PathBuf {
        let p = self.dir.path().join("outside");
        std::fs::create_dir_all(&p).unwrap();
        p
    }

    fn start(&self) -> Daemon {
        let socket = self.dir.path().join("plugin.sock");
        let child = Command::new(BIN)
            .args(["service", "start", "-f", "-c"])
            .arg(self.dir.path().join("rexray.yml"))
            .env("REXRAY_HOME", self.dir.path())
            .env_remove("REXRAY_CRASH_AT")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(self.dir.path().join("daemon.log")).unwrap())
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::os::unix::net::UnixStream::connect(&socket).is_err() {
            assert!(Instant::now() < deadline, "no listen: {}", self.log());
            std::thread::sleep(Duration::from_millis(20));
        }
        // The service opens in the background: wait until it answers.
        while plugin_call(&socket, "VolumeDriver.List", &json!({})).0 != 200 {
            assert!(Instant::now() < deadline, "no service: {}", self.log());
            std::thread::sleep(Duration::from_millis(20));
        }
        Daemon { child, socket }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("daemon.log")).unwrap_or_default()
    }
}

fn err(d: &Daemon, method: &str, body: Value) -> String {
    let (status, reply) = plugin_call(&d.socket, method, &body);
    assert_eq!(status, 500, "{method} {body}: {reply}");
    reply["Err"].as_str().unwrap().to_owned()
}

fn ok(d: &Daemon, method: &str, body: Value) -> Value {
    let (status, reply) = plugin_call(&d.socket, method, &body);
    assert_eq!(status, 200, "{method} {body}: {reply}");
    reply
}

fn mounted_under(dir: &Path) -> Vec<PathBuf> {
    let dir = std::fs::canonicalize(dir).unwrap();
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    rexray::os::mountinfo::parse(&mounts).into_iter().map(|m| m.mount_point).filter(|m| m.starts_with(&dir)).collect()
}

fn attached(file: &Path) -> bool {
    let file = std::fs::canonicalize(file).unwrap();
    std::fs::read_dir("/sys/block").unwrap().flatten().any(|e| {
        std::fs::read_to_string(e.path().join("loop/backing_file")).is_ok_and(|b| Path::new(b.trim_end()) == file)
    })
}

#[test]
fn a_link_in_the_vfs_root_is_never_handed_out_or_followed() {
    let home = Home::new("vfs");
    let outside = home.outside();
    std::fs::write(outside.join("precious"), b"keep").unwrap();
    symlink(&outside, home.lib().join("vfs/evil")).unwrap();
    let d = home.start();
    let e = err(&d, "VolumeDriver.Create", json!({"Name": "evil"}));
    assert!(e.contains("vfs/evil") && e.contains("symbolic link"), "{e}");
    let e = err(&d, "VolumeDriver.Mount", json!({"Name": "evil", "ID": "a"}));
    assert!(e.contains("vfs/evil") && e.contains("symbolic link"), "{e}");
    assert!(plugin_call(&d.socket, "VolumeDriver.Get", &json!({"Name": "evil"})).0 == 500, "no record was made");
    ok(&d, "VolumeDriver.Remove", json!({"Name": "evil"}));
    assert_eq!(std::fs::read(outside.join("precious")).unwrap(), b"keep");
    assert!(std::fs::symlink_metadata(home.lib().join("vfs/evil")).unwrap().file_type().is_symlink(), "left alone");
}

#[test]
fn a_vfs_directory_no_record_owns_is_reported_and_never_adopted() {
    let home = Home::new("vfs");
    std::fs::create_dir(home.lib().join("vfs/orphan")).unwrap();
    std::fs::write(home.lib().join("vfs/orphan/old"), b"someone's").unwrap();
    let d = home.start();
    let e = err(&d, "VolumeDriver.Create", json!({"Name": "orphan", "Opts": {"mode": "0700"}}));
    assert!(e.contains("vfs/orphan exists") && e.contains("no volume record owns it"), "{e}");
    assert!(err(&d, "VolumeDriver.Get", json!({"Name": "orphan"})).contains("no such volume"));
    assert!(home.log().contains("found storage for volume orphan with no volume record"), "{}", home.log());
    assert_eq!(std::fs::read(home.lib().join("vfs/orphan/old")).unwrap(), b"someone's");
}

#[test]
fn links_in_the_loop_and_mount_roots_are_refused_and_nothing_outside_is_touched() {
    if !is_root() {
        eprintln!("skipping: needs root for loop devices and mount(2)");
        return;
    }
    let home = Home::new("loop");
    let outside = home.outside();
    // An image that is somebody else's file, and a mount point that is somebody else's directory.
    let foreign = outside.join("foreign.img");
    let file = std::fs::File::create(&foreign).unwrap();
    file.set_len(1 << 30).unwrap();
    file.write_all_at(b"not yours", 0).unwrap();
    symlink(&foreign, home.lib().join("loop/evil.img")).unwrap();
    let target = outside.join("mnt");
    std::fs::create_dir(&target).unwrap();
    symlink(&target, home.lib().join("volumes/trap")).unwrap();
    let d = home.start();

    for method in ["VolumeDriver.Create", "VolumeDriver.Mount"] {
        let e = err(&d, method, json!({"Name": "evil", "ID": "a"}));
        assert!(e.contains("loop/evil.img") && e.contains("symbolic link"), "{method}: {e}");
    }
    assert!(!attached(&foreign), "the foreign file was attached");
    let mut head = [0u8; 9];
    std::fs::File::open(&foreign).unwrap().read_exact_at(&mut head, 0).unwrap();
    assert_eq!(&head, b"not yours", "the foreign file was written");

    ok(&d, "VolumeDriver.Create", json!({"Name": "trap"}));
    let e = err(&d, "VolumeDriver.Mount", json!({"Name": "trap", "ID": "a"}));
    assert!(e.contains("volumes/trap") && e.contains("symbolic link"), "{e}");
    assert!(mounted_under(&outside).is_empty(), "mounted over a directory outside the root");
    assert!(!attached(&home.lib().join("loop/trap.img")), "the failed mount left its device attached");
    let info = ok(&d, "VolumeDriver.Get", json!({"Name": "trap"}));
    assert_eq!(info["Volume"]["Status"]["holders"], 0);
    ok(&d, "VolumeDriver.Remove", json!({"Name": "trap"}));
    assert!(!home.lib().join("loop/trap.img").exists());
}

#[test]
fn a_loop_image_no_record_owns_is_never_adopted_with_its_old_size() {
    if !is_root() {
        eprintln!("skipping: needs root for loop devices and mount(2)");
        return;
    }
    let home = Home::new("loop");
    let orphan = home.lib().join("loop/orphan.img");
    std::fs::File::create(&orphan).unwrap().set_len(1 << 30).unwrap();
    let d = home.start();
    let e = err(&d, "VolumeDriver.Create", json!({"Name": "orphan", "Opts": {"size": "3"}}));
    assert!(e.contains("loop/orphan.img exists") && e.contains("no volume record owns it"), "{e}");
    let e = err(&d, "VolumeDriver.Mount", json!({"Name": "orphan", "ID": "a"}));
    assert!(e.contains("no volume record owns it"), "{e}");
    assert_eq!(std::fs::metadata(&orphan).unwrap().len(), 1 << 30, "left as it was");
    assert!(!attached(&orphan));
    assert!(err(&d, "VolumeDriver.Get", json!({"Name": "orphan"})).contains("no such volume"));
    assert!(home.log().contains("found storage for volume orphan with no volume record"), "{}", home.log());
}

#[test]
fn a_mount_count_at_its_limit_is_refused_never_wrapped() {
    let home = Home::new("vfs");
    {
        let d = home.start();
        ok(&d, "VolumeDriver.Mount", json!({"Name": "busy", "ID": "a"}));
    }
    let state = home.lib().join("state/vfs/volumes/busy");
    let text = std::fs::read_to_string(&state).unwrap().replace("\"a\": 1", "\"a\": 4294967295");
    std::fs::write(&state, text).unwrap();
    let d = home.start();
    let e = err(&d, "VolumeDriver.Mount", json!({"Name": "busy", "ID": "a"}));
    assert!(e.contains("holds the volume 4294967295 times"), "{e}");
    let info = ok(&d, "VolumeDriver.Get", json!({"Name": "busy"}));
    assert_eq!(info["Volume"]["Status"]["holders"], 4_294_967_295_u64);
    assert_eq!(info["Volume"]["Status"]["active"], true);
    ok(&d, "VolumeDriver.Mount", json!({"Name": "busy", "ID": "b"}));
    assert_eq!(ok(&d, "VolumeDriver.Get", json!({"Name": "busy"}))["Volume"]["Status"]["holders"], 4_294_967_296_u64);
}
