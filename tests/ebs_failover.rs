//! Two hosts, one EC2 (moto), real block devices: the failover the product exists for.
//!
//! Two `rexray service start` daemons play hosts A and B (distinct `ebs.instanceID` from
//! RunInstances, `REXRAY_HOME`, socket and device-link directory). The test "hypervisor"
//! (`tests/e2e/ebs_support.rs`) backs every volume attached in moto with a loop device over
//! `<sim>/<volume-id>.img`, linked as the NVMe by-id link into the attached instance's link
//! directory, so mkfs, mount and the data are real. The test talks to the daemons' sockets the
//! way Docker does.
//!
//! Scenario: create with options (moto holds the tags, size, type); an implicit volume is 16 GiB;
//! write and unmount → detached in EC2; A writes and is killed with `kill -9`; B's mount is
//! refused naming A's instance while preemption is off; with preemption on (`REXRAY_PREEMPT`)
//! B takes the volume over and reads exactly what A wrote.
//!
//! Needs root, loop devices, mkfs.ext4 and moto; without them it prints why it is skipped,
//! except in CI (`CI` set), where that is a failure.
#![cfg(feature = "ebs")]

#[path = "e2e/ebs_support.rs"]
mod support;

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use serde_json::json;
use sha2::{Digest, Sha256};
use support::{in_ci, is_root, loops_under, plugin_call, require, volumes_named, Daemon, Hypervisor, Moto};

const REGION: &str = "us-east-2";
const AZ: &str = "us-east-2a";

fn prerequisites() -> Option<String> {
    if !is_root() {
        return Some("needs root for loop devices and mount(2)".into());
    }
    if !Path::new("/dev/loop-control").exists() {
        return Some("no /dev/loop-control".into());
    }
    for tool in ["losetup", "mkfs.ext4", "blkid", "umount"] {
        let found = ["/usr/sbin", "/sbin", "/usr/bin", "/bin"].iter().any(|d| Path::new(d).join(tool).exists());
        if !found {
            return Some(format!("{tool} is not installed"));
        }
    }
    None
}

struct HostDirs {
    home: PathBuf,
    links: PathBuf,
    socket: PathBuf,
    log: PathBuf,
    config: PathBuf,
}

fn host_dirs(root: &Path, name: &str, moto: &Moto, instance: &str) -> HostDirs {
    let dir = root.join(name);
    let dirs = HostDirs {
        home: dir.join("home"),
        links: dir.join("links"),
        socket: dir.join(format!("{name}.sock")),
        log: dir.join("daemon.log"),
        config: dir.join("rexray.yml"),
    };
    std::fs::create_dir_all(&dirs.home).unwrap();
    std::fs::create_dir_all(&dirs.links).unwrap();
    let config = format!(
        "rexray:\n  logLevel: info\n  modules:\n    {name}:\n      type: docker\n      host: unix://{socket}\n\
         libstorage:\n  service: ebs\n  integration:\n    volume:\n      operations:\n        mount:\n          preempt: false\n\
         ebs:\n  endpoint: {endpoint}\n  region: {REGION}\n  accessKey: test\n  secretKey: test\n  instanceID: {instance}\n\
         \x20 availabilityZone: {AZ}\n  deviceLinksDir: {links}\n  statusInitialDelay: 100ms\n  statusTimeout: 60s\n",
        socket = dirs.socket.display(),
        endpoint = moto.endpoint,
        links = dirs.links.display(),
    );
    std::fs::write(&dirs.config, config).unwrap();
    dirs
}

/// Pseudo-random bytes (xorshift), so a checksum means something.
fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x.to_le_bytes()[3]
        })
        .collect()
}

fn sha256_file(path: &Path) -> String {
    let data = std::fs::read(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    Sha256::digest(&data).iter().map(|b| format!("{b:02x}")).collect()
}

fn ok(socket: &Path, method: &str, body: serde_json::Value) -> serde_json::Value {
    let (status, answer) = plugin_call(socket, method, &body);
    assert_eq!(status, 200, "{method} {body}: {answer}");
    assert!(answer.get("Err").is_none_or(|e| e.as_str() == Some("")), "{method}: {answer}");
    answer
}

fn mountpoint(answer: &serde_json::Value) -> PathBuf {
    PathBuf::from(answer["Mountpoint"].as_str().expect("Mountpoint"))
}

#[test]
fn two_host_failover_with_real_devices() {
    let test = "two_host_failover_with_real_devices";
    if !require(test, prerequisites()) {
        return;
    }
    let Some(moto) = Moto::for_test(test) else { return };
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let api = rt.block_on(moto.api(REGION));
    let tmp = tempfile::Builder::new().prefix("rexray-ebs-e2e").tempdir().unwrap();
    let root = tmp.path().to_path_buf();
    let sim = root.join("sim");
    let a_id = moto.run_instance(REGION, AZ);
    let b_id = moto.run_instance(REGION, AZ);
    let a = host_dirs(&root, "host-a", &moto, &a_id);
    let b = host_dirs(&root, "host-b", &moto, &b_id);
    let mut hv = Hypervisor::start(
        &moto.endpoint,
        REGION,
        &sim,
        BTreeMap::from([(a_id.clone(), a.links.clone()), (b_id.clone(), b.links.clone())]),
    );
    let mut daemon_a = Daemon::start(&a.config, &a.home, &a.socket, &a.log, &[]);

    let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        // Capabilities: global.
        let caps = ok(&a.socket, "VolumeDriver.Capabilities", serde_json::Value::Null);
        assert_eq!(caps["Capabilities"]["Scope"], "global");

        // 1. Create with options: moto holds the tags, size and type.
        ok(
            &a.socket,
            "VolumeDriver.Create",
            json!({"Name": "fo-opts", "Opts": {"size": "2", "volumeType": "gp2", "tags": "team=qa;env=ci"}}),
        );
        let v = rt.block_on(volumes_named(&api, "fo-opts"));
        assert_eq!(v.len(), 1, "{v:?}");
        assert_eq!((v[0].size_gib, v[0].volume_type.as_str(), v[0].availability_zone.as_str()), (2, "gp2", AZ));
        assert_eq!(v[0].tags.get("team").map(String::as_str), Some("qa"));
        assert_eq!(v[0].tags.get("rexray-rs/managed").map(String::as_str), Some("true"));
        assert_eq!(v[0].tags.get("rexray-rs/fsType").map(String::as_str), Some("ext4"));
        let got = ok(&a.socket, "VolumeDriver.Get", json!({"Name": "fo-opts"}));
        assert_eq!(got["Volume"]["Status"]["volumeID"], v[0].id.as_str(), "{got}");
        assert_eq!(got["Volume"]["Status"]["sizeGiB"], 2, "{got}");
        ok(&a.socket, "VolumeDriver.Remove", json!({"Name": "fo-opts"}));
        assert!(rt.block_on(volumes_named(&api, "fo-opts")).is_empty());

        // 2. An implicit volume is 16 GiB; write, unmount → detached in EC2.
        let m = ok(&a.socket, "VolumeDriver.Mount", json!({"Name": "fo-imp", "ID": "c0"}));
        let path = mountpoint(&m);
        std::fs::write(path.join("hello"), b"implicit\n").unwrap();
        let v = rt.block_on(volumes_named(&api, "fo-imp"));
        assert_eq!((v[0].size_gib, v[0].volume_type.as_str()), (16, "gp3"));
        assert_eq!(v[0].attachments[0].instance_id, a_id);
        ok(&a.socket, "VolumeDriver.Unmount", json!({"Name": "fo-imp", "ID": "c0"}));
        let v = rt.block_on(volumes_named(&api, "fo-imp"));
        assert!(v[0].attachments.is_empty(), "detached in EC2: {v:?}");
        let m = ok(&a.socket, "VolumeDriver.Mount", json!({"Name": "fo-imp", "ID": "c0b"}));
        assert_eq!(std::fs::read(mountpoint(&m).join("hello")).unwrap(), b"implicit\n", "data survives");
        ok(&a.socket, "VolumeDriver.Unmount", json!({"Name": "fo-imp", "ID": "c0b"}));
        ok(&a.socket, "VolumeDriver.Remove", json!({"Name": "fo-imp"}));

        // 3. A mounts, writes, syncs, and dies.
        ok(&a.socket, "VolumeDriver.Create", json!({"Name": "fo-db", "Opts": {"size": "1"}}));
        let m = ok(&a.socket, "VolumeDriver.Mount", json!({"Name": "fo-db", "ID": "c1"}));
        let path_a = mountpoint(&m);
        let data = noise(4 << 20, 0x5eed_1234);
        {
            let mut f = std::fs::File::create(path_a.join("payload.bin")).unwrap();
            f.write_all(&data).unwrap();
            f.sync_all().unwrap();
        }
        std::fs::File::open(&path_a).unwrap().sync_all().unwrap();
        let written = sha256_file(&path_a.join("payload.bin"));
        assert_eq!(written, Sha256::digest(&data).iter().map(|b| format!("{b:02x}")).collect::<String>());
        daemon_a.kill9();
        assert_eq!(rt.block_on(volumes_named(&api, "fo-db"))[0].attachments[0].instance_id, a_id, "still on A");

        // 4. B without preemption: refused, naming A's instance.
        let mut daemon_b = Daemon::start(&b.config, &b.home, &b.socket, &b.log, &[]);
        // The namespace is global: B sees the volume A made, attached to A, before any Create.
        let (status, got) = plugin_call(&b.socket, "VolumeDriver.Get", &json!({"Name": "fo-db"}));
        assert_eq!(status, 200, "{got}");
        assert_eq!(got["Volume"]["Status"]["attachedInstance"].as_str(), Some(a_id.as_str()), "{got}");
        assert_eq!(got["Volume"]["Status"]["holders"], 0, "{got}");
        ok(&b.socket, "VolumeDriver.Create", json!({"Name": "fo-db"}));
        let (status, refused) = plugin_call(&b.socket, "VolumeDriver.Mount", &json!({"Name": "fo-db", "ID": "c2"}));
        assert_eq!(status, 500, "{refused}");
        let err = refused["Err"].as_str().unwrap_or_default();
        assert!(err.contains(&a_id) && err.contains("preempt"), "{err}");
        assert_eq!(rt.block_on(volumes_named(&api, "fo-db"))[0].attachments[0].instance_id, a_id, "untouched");
        daemon_b.stop();

        // 5. B with preemption: takes the volume over and reads exactly what A wrote.
        let mut daemon_b = Daemon::start(&b.config, &b.home, &b.socket, &b.log, &[("REXRAY_PREEMPT", "true")]);
        let m = ok(&b.socket, "VolumeDriver.Mount", json!({"Name": "fo-db", "ID": "c2"}));
        let path_b = mountpoint(&m);
        assert!(path_b.starts_with(&b.home), "{}", path_b.display());
        let v = rt.block_on(volumes_named(&api, "fo-db"));
        assert_eq!(v[0].attachments.len(), 1);
        assert_eq!(v[0].attachments[0].instance_id, b_id);
        assert_eq!(sha256_file(&path_b.join("payload.bin")), written, "B reads exactly what A wrote");
        let got = ok(&b.socket, "VolumeDriver.Get", json!({"Name": "fo-db"}));
        assert_eq!(got["Volume"]["Status"]["attachedInstance"], b_id.as_str(), "{got}");
        ok(&b.socket, "VolumeDriver.Unmount", json!({"Name": "fo-db", "ID": "c2"}));
        assert!(rt.block_on(volumes_named(&api, "fo-db"))[0].attachments.is_empty());
        ok(&b.socket, "VolumeDriver.Remove", json!({"Name": "fo-db"}));
        assert!(rt.block_on(volumes_named(&api, "fo-db")).is_empty());
        daemon_b.stop();
    }));

    daemon_a.stop();
    hv.stop();
    let leaked = loops_under(&sim);
    if let Err(panic) = outcome {
        for (host, log) in [("A", &a.log), ("B", &b.log)] {
            let text = std::fs::read_to_string(log).unwrap_or_default();
            let tail: Vec<&str> = text.lines().rev().take(60).collect();
            eprintln!("---- daemon {host} log (last lines) ----");
            for line in tail.iter().rev() {
                eprintln!("{line}");
            }
        }
        eprintln!("hypervisor errors: {:?}", hv.errors.lock().unwrap());
        if !in_ci() {
            eprintln!("keeping {}", tmp.keep().display());
        }
        std::panic::resume_unwind(panic);
    }
    assert!(leaked.is_empty(), "loop devices left behind: {leaked:?}");
    assert!(hv.errors.lock().unwrap().is_empty(), "hypervisor errors: {:?}", hv.errors.lock().unwrap());
}

/// The same failover driven through a real Docker Engine (`tests/e2e/ebs_docker.sh`): runs
/// when `CI` or `REXRAY_E2E=1` is set, like the other real-Docker tests.
#[test]
fn docker_failover_with_real_devices() {
    let test = "docker_failover_with_real_devices";
    let asked = std::env::var("REXRAY_E2E").is_ok_and(|v| v == "1");
    if !(in_ci() || asked) {
        eprintln!("skipping {test}: set REXRAY_E2E=1 (or CI) to run the real-Docker EBS scenario");
        return;
    }
    if !require(test, prerequisites()) {
        return;
    }
    let Some(moto) = Moto::for_test(test) else { return };
    let (region, az) = ("ca-central-1", "ca-central-1a");
    let tmp = tempfile::Builder::new().prefix("rexray-ebs-docker").tempdir().unwrap();
    let (links_a, links_b) = (tmp.path().join("links-a"), tmp.path().join("links-b"));
    let a_id = moto.run_instance(region, az);
    let b_id = moto.run_instance(region, az);
    let mut hv = Hypervisor::start(
        &moto.endpoint,
        region,
        &tmp.path().join("sim"),
        BTreeMap::from([(a_id.clone(), links_a.clone()), (b_id.clone(), links_b.clone())]),
    );
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let status = std::process::Command::new("bash")
        .arg(root.join("tests/e2e/ebs_docker.sh"))
        .current_dir(root)
        .env("REXRAY_BIN", env!("CARGO_BIN_EXE_rexray"))
        .env("EBS_E2E_ENDPOINT", &moto.endpoint)
        .env("EBS_E2E_REGION", region)
        .env("EBS_E2E_AZ", az)
        .env("EBS_E2E_A", &a_id)
        .env("EBS_E2E_LINKS_A", &links_a)
        .env("EBS_E2E_B", &b_id)
        .env("EBS_E2E_LINKS_B", &links_b)
        .status()
        .expect("run bash tests/e2e/ebs_docker.sh");
    hv.stop();
    let leaked = loops_under(&tmp.path().join("sim"));
    assert!(status.success(), "tests/e2e/ebs_docker.sh: {status}; hypervisor errors: {:?}", hv.errors.lock().unwrap());
    assert!(leaked.is_empty(), "loop devices left behind: {leaked:?}");
}

/// The README's "Try EBS without AWS", steps 2–5 as written (`tests/e2e/try_ebs.sh`), on
/// Docker; runs when `CI` or `REXRAY_E2E=1` is set, like the other real-Docker tests.
#[test]
fn readme_try_ebs_steps() {
    let test = "readme_try_ebs_steps";
    let asked = std::env::var("REXRAY_E2E").is_ok_and(|v| v == "1");
    if !(in_ci() || asked) {
        eprintln!("skipping {test}: set REXRAY_E2E=1 (or CI) to run the README's EBS steps on Docker");
        return;
    }
    if !require(test, prerequisites()) {
        return;
    }
    let Some(moto) = Moto::for_test(test) else { return };
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let status = std::process::Command::new("bash")
        .arg(root.join("tests/e2e/try_ebs.sh"))
        .env("REXRAY_BIN", env!("CARGO_BIN_EXE_rexray"))
        .env("TRY_EBS_ENDPOINT", &moto.endpoint)
        .status()
        .expect("run bash tests/e2e/try_ebs.sh");
    assert!(status.success(), "tests/e2e/try_ebs.sh: {status}");
}
