//! The dvdcli mode against the real daemon (Mesos' sequence: mount per container, one unmount)
//! and against a recording fake plugin (the exact calls and bodies dvdcli sends).

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use assert_cmd::Command;
use predicates::prelude::*;
use serde_json::{json, Value};

mod common;

use common::{plugin_call, Daemon, BIN};

/// A temp dir with a config whose one module socket is `<dir>/plugins/rxt.sock` (vfs service).
struct Setup {
    dir: tempfile::TempDir,
}

impl Setup {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let config = format!(
            "rexray:\n  logLevel: debug\n  modules:\n    default-docker:\n      disabled: true\n    t:\n      type: docker\n      host: unix://{0}/plugins/rxt.sock\n      libstorage:\n        service: vfs\nlibstorage:\n  server:\n    services:\n      vfs:\n        driver: vfs\nvfs:\n  root: {0}/vfs\n",
            dir.path().display()
        );
        std::fs::write(dir.path().join("rexray.yml"), config).unwrap();
        Self { dir }
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    /// `rexray dvdcli …` (or the binary through a `dvdcli` symlink when `symlink`).
    fn dvdcli(&self, symlink: bool) -> Command {
        let mut cmd = if symlink {
            let link = self.path("bin/dvdcli");
            if !link.exists() {
                std::fs::create_dir_all(self.path("bin")).unwrap();
                std::os::unix::fs::symlink(BIN, &link).unwrap();
            }
            Command::new(link)
        } else {
            let mut c = Command::new(BIN);
            c.arg("dvdcli");
            c
        };
        cmd.env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("DVDCLI_PLUGINS_DIR", self.path("plugins"))
            .env("DVDCLI_SPEC_DIRS", self.path("specs"))
            .env("DVDCLI_PLUGIN_WAIT", "0")
            .timeout(Duration::from_secs(60));
        cmd
    }

    fn start_daemon(&self) -> Daemon {
        common::start_daemon(
            &self.path("rexray.yml"),
            &self.path("home"),
            &self.path("daemon.log"),
            &[self.path("plugins/rxt.sock")],
        )
    }
}

fn volume(socket: &Path, name: &str) -> Value {
    let (status, body) = plugin_call(socket, "VolumeDriver.Get", &json!({ "Name": name }));
    assert_eq!(status, 200, "{body}");
    body["Volume"].clone()
}

#[test]
fn mesos_sequence_against_the_daemon() {
    let setup = Setup::new();
    let daemon = setup.start_daemon();
    let args = ["--volumedriver=rxt", "--volumename=mesos1"];

    // The isolator mounts for the first container: the volume is created with the options.
    let out = setup.dvdcli(true).arg("mount").args(args).arg("--volumeopts=size=1,mode=0750").assert().success();
    let path = String::from_utf8(out.get_output().stdout.clone()).unwrap();
    let path = path.trim_end();
    assert_eq!(path, setup.path("vfs/mesos1").display().to_string());
    let stderr = String::from_utf8_lossy(&out.get_output().stderr).to_string();
    assert!(stderr.contains("level=info"), "logs go to stderr: {stderr}");
    std::fs::write(Path::new(path).join("data.txt"), "hello").unwrap();
    let v = volume(&daemon.socket, "mesos1");
    assert_eq!(v["Status"]["options"]["size"], "1");
    assert_eq!(v["Status"]["options"]["mode"], "0750");
    assert_eq!(v["Status"]["holders"], 1);

    // A second container: Mesos runs mount again; same path, still one (anonymous) holder.
    setup.dvdcli(false).arg("mount").args(args).assert().success().stdout(format!("{path}\n"));
    assert_eq!(volume(&daemon.socket, "mesos1")["Status"]["holders"], 1);
    // Docker mounts it too (a holder with an ID) and sees the data.
    let (status, body) =
        plugin_call(&daemon.socket, "VolumeDriver.Mount", &json!({"Name": "mesos1", "ID": "docker-c1"}));
    assert_eq!((status, body["Mountpoint"].as_str().unwrap()), (200, path));
    assert_eq!(std::fs::read_to_string(Path::new(path).join("data.txt")).unwrap(), "hello");
    assert_eq!(volume(&daemon.socket, "mesos1")["Status"]["holders"], 2);

    // Mesos' one unmount releases its hold only: the volume stays mounted for Docker.
    setup.dvdcli(true).arg("unmount").args(args).assert().success().stdout("");
    let v = volume(&daemon.socket, "mesos1");
    assert_eq!((v["Mountpoint"].as_str(), v["Status"]["holders"].as_u64()), (Some(path), Some(1)));
    setup.dvdcli(true).arg("path").args(args).assert().success().stdout(format!("{path}\n"));

    // The last holder out unmounts it.
    let (status, _) =
        plugin_call(&daemon.socket, "VolumeDriver.Unmount", &json!({"Name": "mesos1", "ID": "docker-c1"}));
    assert_eq!(status, 200);
    let v = volume(&daemon.socket, "mesos1");
    assert!(v.get("Mountpoint").is_none(), "{v}");
    setup.dvdcli(true).arg("path").args(args).assert().success().stdout("");
    setup.dvdcli(true).arg("get").args(args).assert().success().stdout("mesos1\n");
    setup.dvdcli(true).arg("list").arg("--volumedriver=rxt").assert().success().stdout("mesos1\n");
    setup.dvdcli(true).arg("remove").args(args).assert().success();
    setup.dvdcli(true).arg("get").args(args).assert().code(1).stderr(predicate::str::contains("no such volume"));
    // --explicitcreate: a missing volume is an error, nothing is created.
    setup
        .dvdcli(true)
        .args(["mount", "--volumedriver=rxt", "--volumename=nope", "--explicitcreate"])
        .assert()
        .code(1)
        .stdout("");
    assert_eq!(plugin_call(&daemon.socket, "VolumeDriver.Get", &json!({"Name": "nope"})).0, 500);
    // An unmount of an unknown volume fails on its Get, as dvdcli's does.
    setup.dvdcli(true).args(["unmount", "--volumedriver=rxt", "--volumename=nope"]).assert().code(1);
}

/// A fake plugin that records every request and answers from a table of volumes.
struct FakePlugin {
    calls: Arc<Mutex<Vec<(String, String, Value)>>>,
}

impl FakePlugin {
    /// Serves on `socket`; `existing` volumes have the given mountpoints.
    fn start(socket: &Path, existing: &[(&str, &str)]) -> Self {
        std::fs::create_dir_all(socket.parent().unwrap()).unwrap();
        let listener = UnixListener::bind(socket).unwrap();
        let calls = Arc::new(Mutex::new(Vec::new()));
        let recorded = calls.clone();
        let volumes: Vec<(String, String)> = existing.iter().map(|(n, m)| (n.to_string(), m.to_string())).collect();
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(conn) = conn else { return };
                let mut reader = BufReader::new(conn);
                let mut head = String::new();
                loop {
                    let mut line = String::new();
                    if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                        break;
                    }
                    head.push_str(&line);
                }
                let len = head
                    .lines()
                    .find_map(|l| {
                        l.to_ascii_lowercase().strip_prefix("content-length:").map(|v| v.trim().parse().unwrap())
                    })
                    .unwrap_or(0usize);
                let mut body = vec![0; len];
                reader.read_exact(&mut body).unwrap();
                let method = head.split_whitespace().nth(1).unwrap_or_default().trim_start_matches('/').to_string();
                let body: Value = if body.is_empty() { Value::Null } else { serde_json::from_slice(&body).unwrap() };
                recorded.lock().unwrap().push((method.clone(), head.clone(), body.clone()));
                let name = body["Name"].as_str().unwrap_or_default();
                let found = volumes.iter().find(|(n, _)| n == name);
                let (status, reply) = match method.as_str() {
                    "Plugin.Activate" => (200, json!({"Implements": ["VolumeDriver"]})),
                    "VolumeDriver.Get" => match found {
                        Some((n, m)) => (200, json!({"Volume": {"Name": n, "Mountpoint": m}})),
                        None => (500, json!({"Err": "no such volume"})),
                    },
                    "VolumeDriver.Mount" => (200, json!({"Mountpoint": format!("/mnt/{name}")})),
                    "VolumeDriver.Path" => (200, json!({"Mountpoint": "/from/path"})),
                    "VolumeDriver.List" => (200, json!({"Volumes": [{"Name": "a"}, {"Name": "b"}]})),
                    _ => (200, json!({})),
                };
                let reply = reply.to_string();
                let mut conn = reader.into_inner();
                let _ = write!(
                    conn,
                    "HTTP/1.1 {status} X\r\nContent-Type: application/vnd.docker.plugins.v1.2+json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{reply}",
                    reply.len()
                );
            }
        });
        Self { calls }
    }

    /// The calls so far (method, body), emptied.
    fn take(&self) -> Vec<(String, Value)> {
        let calls = std::mem::take(&mut *self.calls.lock().unwrap());
        for (method, head, _) in &calls {
            let head = head.to_ascii_lowercase();
            assert!(head.contains("accept: application/vnd.docker.plugins.v1.2+json"), "{method}: {head}");
            assert!(!head.contains("content-type"), "{method} sent a Content-Type: {head}");
        }
        calls.into_iter().map(|(m, _, b)| (m, b)).collect()
    }
}

fn calls(list: &[(&str, Value)]) -> Vec<(String, Value)> {
    list.iter().map(|(m, b)| (m.to_string(), b.clone())).collect()
}

#[test]
fn exact_calls_to_any_plugin() {
    let setup = Setup::new();
    let plugin = FakePlugin::start(&setup.path("plugins/other.sock"), &[("have", "/mnt/have")]);
    let d = ["--volumedriver=other"];

    // mount of a missing volume: Get, Create with the options, Mount without an ID.
    setup
        .dvdcli(true)
        .args(["mount", "--volumename=new"])
        .args(d)
        .args(["--volumeopts=size=5", "--volumeopts", "volumetype=gp2,iops=100"])
        .assert()
        .success()
        .stdout("/mnt/new\n");
    assert_eq!(
        plugin.take(),
        calls(&[
            ("Plugin.Activate", Value::Null),
            ("VolumeDriver.Get", json!({"Name": "new"})),
            ("VolumeDriver.Create", json!({"Name": "new", "Opts": {"size": "5", "volumetype": "gp2", "iops": "100"}})),
            ("VolumeDriver.Mount", json!({"Name": "new"})),
        ])
    );
    // mount of an existing volume: no Create; Opts are always an object.
    setup.dvdcli(false).args(["mount", "--volumename=have"]).args(d).assert().success().stdout("/mnt/have\n");
    assert_eq!(
        plugin.take(),
        calls(&[
            ("Plugin.Activate", Value::Null),
            ("VolumeDriver.Get", json!({"Name": "have"})),
            ("VolumeDriver.Mount", json!({"Name": "have"})),
        ])
    );
    setup.dvdcli(true).args(["create", "--volumename=c"]).args(d).assert().success();
    assert_eq!(
        plugin.take(),
        calls(&[("Plugin.Activate", Value::Null), ("VolumeDriver.Create", json!({"Name": "c", "Opts": {}}))])
    );
    // --explicitcreate and a missing volume: Get only, exit 1.
    setup.dvdcli(true).args(["mount", "--volumename=new", "--explicitcreate"]).args(d).assert().code(1);
    assert_eq!(plugin.take(), calls(&[("Plugin.Activate", Value::Null), ("VolumeDriver.Get", json!({"Name": "new"}))]));
    // unmount: Get then Unmount without an ID.
    setup.dvdcli(true).args(["unmount", "--volumename=have"]).args(d).assert().success();
    assert_eq!(
        plugin.take(),
        calls(&[
            ("Plugin.Activate", Value::Null),
            ("VolumeDriver.Get", json!({"Name": "have"})),
            ("VolumeDriver.Unmount", json!({"Name": "have"})),
        ])
    );
    // path: the Mountpoint from Get, with no Path call.
    setup.dvdcli(true).args(["path", "--volumename=have"]).args(d).assert().success().stdout("/mnt/have\n");
    assert_eq!(
        plugin.take(),
        calls(&[("Plugin.Activate", Value::Null), ("VolumeDriver.Get", json!({"Name": "have"}))])
    );
    setup.dvdcli(true).args(["remove", "--volumename=have"]).args(d).assert().success();
    assert_eq!(
        plugin.take(),
        calls(&[
            ("Plugin.Activate", Value::Null),
            ("VolumeDriver.Get", json!({"Name": "have"})),
            ("VolumeDriver.Remove", json!({"Name": "have"})),
        ])
    );
    setup.dvdcli(true).args(["list"]).args(d).assert().success().stdout("a\nb\n");
    assert_eq!(plugin.take(), calls(&[("Plugin.Activate", Value::Null), ("VolumeDriver.List", json!({}))]));

    // A malformed --volumeopts is an error before anything is sent (dvdcli panicked here).
    setup
        .dvdcli(true)
        .args(["mount", "--volumename=x", "--volumeopts=size"])
        .args(d)
        .assert()
        .code(1)
        .stdout("")
        .stderr(predicate::str::contains("invalid --volumeopts \\\"size\\\": expected KEY=VALUE"));
    assert_eq!(plugin.take(), []);
}

#[test]
fn spec_files_and_missing_plugins() {
    let setup = Setup::new();
    let plugin = FakePlugin::start(&setup.path("elsewhere/p.sock"), &[("v", "/mnt/v")]);
    std::fs::create_dir_all(setup.path("specs")).unwrap();
    std::fs::write(setup.path("specs/viaspec.spec"), format!("unix://{}\n", setup.path("elsewhere/p.sock").display()))
        .unwrap();
    setup.dvdcli(true).args(["get", "--volumedriver=viaspec", "--volumename=v"]).assert().success().stdout("v\n");
    assert_eq!(plugin.take().len(), 2);

    let started = Instant::now();
    setup
        .dvdcli(true)
        .args(["mount", "--volumedriver=absent", "--volumename=v"])
        .assert()
        .code(1)
        .stdout("")
        .stderr(predicate::str::contains("Error looking up volume plugin absent: plugin not found"));
    assert!(started.elapsed() < Duration::from_secs(10));
    // With a wait, it looks for the plugin for the whole window (dvdcli's 15 s by default),
    // not only for the waits that fit whole, and finds one that appears meanwhile.
    let started = Instant::now();
    setup
        .dvdcli(true)
        .env("DVDCLI_PLUGIN_WAIT", "2.5")
        .args(["get", "--volumedriver=absent", "--volumename=v"])
        .assert()
        .code(1)
        .stderr(predicate::str::contains("plugin not found"));
    assert!(started.elapsed() >= Duration::from_millis(2500), "gave up after {:?}", started.elapsed());
    let late = setup.path("specs/late.spec");
    let late_socket = setup.path("elsewhere/p.sock");
    let writer = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(2200));
        std::fs::write(late, format!("unix://{}\n", late_socket.display())).unwrap();
    });
    setup
        .dvdcli(true)
        .env("DVDCLI_PLUGIN_WAIT", "3")
        .args(["get", "--volumedriver=late", "--volumename=v"])
        .assert()
        .success()
        .stdout("v\n");
    writer.join().unwrap();
    setup
        .dvdcli(true)
        .args(["mount", "--volumename=v"])
        .assert()
        .code(1)
        .stderr(predicate::str::contains("Missing volume driver name"));
    setup.dvdcli(true).arg("--help").assert().success().stdout(predicate::str::contains("--volumedriver"));
    setup.dvdcli(true).arg("version").assert().success().stdout(predicate::str::contains("dvdcli"));
    setup.dvdcli(true).arg("bogus").assert().code(1);
}

/// The real-Docker scenario in tests/e2e/dvdcli.sh (root, CI or REXRAY_E2E=1 only).
#[test]
fn docker_e2e_dvdcli() {
    use std::os::unix::fs::MetadataExt;
    let ci = std::env::var("CI").is_ok_and(|v| !matches!(v.as_str(), "" | "0" | "false"));
    let asked = std::env::var("REXRAY_E2E").is_ok_and(|v| v == "1");
    let root = std::fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0);
    if !(ci || asked) || !root {
        let _ = writeln!(std::io::stderr(), "skipping tests/e2e/dvdcli.sh: needs root and CI or REXRAY_E2E=1");
        return;
    }
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
    let status = std::process::Command::new("bash")
        .arg(repo.join("tests/e2e/dvdcli.sh"))
        .current_dir(repo)
        .env("REXRAY_BIN", BIN)
        .status()
        .unwrap();
    assert!(status.success(), "tests/e2e/dvdcli.sh: {status}");
}
