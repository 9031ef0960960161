//! Every operator command through the built binary, with REXRAY_HOME and the plugin sockets in
//! a temp dir (vfs backend, no root needed).

use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;

use std::path::{Path, PathBuf};
use std::time::Duration;

use assert_cmd::Command;
use clap::CommandFactory;
use predicates::prelude::*;
use serde_json::{json, Value};

mod common;

use common::{plugin_call, Daemon, BIN};

struct Setup {
    dir: tempfile::TempDir,
}

impl Setup {
    fn new() -> Self {
        Self::with_config(|dir| {
            format!(
                "rexray:\n  logLevel: debug\n  modules:\n    default-docker:\n      disabled: true\n    t:\n      type: docker\n      host: unix://{0}/plugins/rxt.sock\n      libstorage:\n        service: vfs\nlibstorage:\n  server:\n    services:\n      vfs:\n        driver: vfs\n      other:\n        driver: vfs\n        vfs:\n          root: {0}/other\nvfs:\n  root: {0}/vfs\n",
                dir.display()
            )
        })
    }

    fn with_config(config: impl FnOnce(&Path) -> String) -> Self {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("rexray.yml"), config(dir.path())).unwrap();
        Self { dir }
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    fn config(&self) -> PathBuf {
        self.path("rexray.yml")
    }

    /// `rexray ARGS… -c <config>` with a clean environment and REXRAY_HOME in the temp dir.
    fn rexray(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(BIN);
        cmd.args(args)
            .arg("-c")
            .arg(self.config())
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("REXRAY_HOME", self.path("home"))
            .timeout(Duration::from_secs(60));
        cmd
    }

    fn stdout(&self, args: &[&str]) -> String {
        let out = self.rexray(args).assert().success();
        String::from_utf8(out.get_output().stdout.clone()).unwrap()
    }

    fn json(&self, args: &[&str]) -> Value {
        serde_json::from_str(&self.stdout(args)).unwrap()
    }

    fn admin_socket(&self) -> PathBuf {
        self.path("home/var/run/rexray/rexray-admin.sock")
    }

    fn start_daemon(&self) -> Daemon {
        common::start_daemon(
            &self.config(),
            &self.path("home"),
            &self.path("daemon.log"),
            &[self.path("plugins/rxt.sock"), self.admin_socket()],
        )
    }
}

#[test]
fn version_prints_commit_date_and_backends() {
    let setup = Setup::new();
    setup
        .rexray(&["version"])
        .assert()
        .success()
        .stdout(predicate::str::starts_with(format!("rexray {}\n", env!("CARGO_PKG_VERSION"))))
        .stdout(predicate::str::is_match(r"(?m)^Commit: +\S+$").unwrap())
        .stdout(predicate::str::is_match(r"(?m)^Built: +(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ|unknown)$").unwrap())
        .stdout(predicate::str::is_match(r"(?m)^Backends: +vfs, loop").unwrap());
}

#[test]
fn completions_for_each_shell() {
    let setup = Setup::new();
    for shell in ["bash", "zsh", "fish"] {
        setup.rexray(&["completion", shell]).assert().success().stdout(predicate::str::contains("volume"));
    }
    setup.rexray(&["completion", "tcsh"]).assert().failure();
}

/// `rexray … | head -1`: a reader that goes away ends the command quietly, with no panic.
#[test]
fn output_into_a_closed_pipe_ends_quietly() {
    let setup = Setup::new();
    setup.rexray(&["volume", "create", "v1"]).assert().success();
    for args in [&["version"][..], &["completion", "bash"], &["volume", "ls"], &["env"]] {
        let (reader, writer) = std::io::pipe().unwrap();
        drop(reader);
        let out = std::process::Command::new(BIN)
            .args(args)
            .arg("-c")
            .arg(setup.config())
            .env("REXRAY_HOME", setup.path("home"))
            .stdout(writer)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{args:?}: {:?} {stderr}", out.status);
        assert!(!stderr.contains("panicked"), "{args:?}: {stderr}");
    }
    // Other write errors are reported and fail the command.
    let full = std::fs::File::options().write(true).open("/dev/full").unwrap();
    let out = std::process::Command::new(BIN).arg("version").stdout(full).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("write to standard output"));
}

#[test]
fn help_on_every_command_shows_an_example() {
    fn paths(cmd: &clap::Command, prefix: Vec<String>, out: &mut Vec<Vec<String>>) {
        for sub in cmd.get_subcommands().filter(|s| s.get_name() != "help") {
            let mut path = prefix.clone();
            path.push(sub.get_name().to_string());
            out.push(path.clone());
            paths(sub, path, out);
        }
    }
    let mut all = vec![vec![]];
    paths(&rexray::cli::Cli::command(), vec![], &mut all);
    assert!(all.len() > 25, "{all:?}");
    let setup = Setup::new();
    for path in all {
        let mut args: Vec<&str> = path.iter().map(String::as_str).collect();
        args.push("--help");
        setup
            .rexray(&args)
            .assert()
            .success()
            .stdout(predicate::str::contains("Example"))
            .stdout(predicate::str::contains("Usage"));
    }
    // The dvdcli mode's own help.
    setup.rexray(&["dvdcli", "mount", "--help"]).assert().success().stdout(predicate::str::contains("--volumeopts"));
}

#[test]
fn config_check_ok_with_warnings() {
    let setup = Setup::with_config(|_| "rexray:\n  logLevl: debug\n".into());
    setup
        .rexray(&["config", "check"])
        .assert()
        .success()
        .stdout(predicate::str::contains("warning: "))
        .stdout(predicate::str::contains("rexray.yml:2"))
        .stdout(predicate::str::contains("logLevel"))
        .stdout(predicate::str::contains(": ok (1 service(s), 1 module(s))"));
}

#[test]
fn config_check_shows_warnings_beside_errors_and_names_client_server_keys() {
    let setup = Setup::with_config(|_| {
        "rexray:\n  logLevl: debug\nlibstorage:\n  host: tcp://10.0.0.5:7979\n  client:\n    type: controller\n  integration:\n    volume:\n      operations:\n        mount:\n          preempt: maybe\n".into()
    });
    let out = setup.rexray(&["config", "check"]).assert().code(1);
    let stdout = String::from_utf8_lossy(&out.get_output().stdout).to_string();
    let file = setup.config().display().to_string();
    assert!(stdout.contains(&format!("warning: {file}:2: unknown key \"rexray.logLevl\"")), "{stdout}");
    assert!(
        stdout.contains(&format!("warning: {file}:4: libstorage.host: REX-Ray's client/server mode"))
            && stdout.contains("is not implemented"),
        "{stdout}"
    );
    assert!(
        stdout.contains(&format!("warning: {file}:6: libstorage.client.type: a libStorage client setting")),
        "{stdout}"
    );
    assert!(stdout.contains(&format!("{file}:11: ")) && stdout.contains("preempt"), "{stdout}");
    // REX-Ray's embedded default (a unix socket) is not a remote server: no warning.
    std::fs::write(
        setup.config(),
        "libstorage:\n  host: unix:///var/run/libstorage/localhost.sock\n  embedded: true\n",
    )
    .unwrap();
    setup.rexray(&["config", "check"]).assert().success().stdout(predicate::str::contains("warning").not());
}

#[test]
fn config_check_lists_every_error_as_file_line_key_problem() {
    let setup = Setup::with_config(|_| {
        "libstorage:\n  integration:\n    volume:\n      operations:\n        mount:\n          preempt: maybe\n        create:\n          default:\n            size: big\n".into()
    });
    let out = setup.rexray(&["config", "check"]).assert().code(1);
    let stdout = String::from_utf8_lossy(&out.get_output().stdout).to_string();
    let file = setup.config().display().to_string();
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 2, "{stdout}");
    assert!(lines[0].starts_with(&format!("{file}:6: ")) && lines[0].contains("preempt: "), "{stdout}");
    assert!(
        lines[1].starts_with(&format!("{file}:9: ")) && lines[1].contains("size: ") && lines[1].contains("big"),
        "{stdout}"
    );
    // YAML syntax errors too.
    std::fs::write(setup.config(), "rexray: [unclosed\n").unwrap();
    setup.rexray(&["config", "check"]).assert().code(1).stdout(predicate::str::contains(format!("{file}:")));
    // A missing file.
    Command::new(BIN)
        .args(["config", "check", "-c", "/nonexistent/rexray.yml"])
        .assert()
        .code(1)
        .stdout(predicate::str::contains("/nonexistent/rexray.yml"));
}

#[test]
fn config_check_refuses_a_backend_not_built_in() {
    let setup = Setup::with_config(|_| "libstorage:\n  service: ebs\n".into());
    let version = setup.stdout(&["version"]);
    if version.contains("ebs") {
        setup.rexray(&["config", "check"]).assert().success();
        // Built in, the backend checks its own settings: each bad one with its line or variable.
        std::fs::write(
            setup.config(),
            "libstorage:\n  service: ebs\nebs:\n  region: us-west-2\n  statusTimeout: soon\n  maxRetries: -1\n",
        )
        .unwrap();
        let file = setup.config().display().to_string();
        setup
            .rexray(&["config", "check"])
            .assert()
            .code(1)
            .stdout(predicate::str::contains(format!("{file}:5: ebs.statusTimeout: \"soon\": expected a duration")))
            .stdout(predicate::str::contains(format!("{file}:6: ebs.maxRetries: \"-1\": expected a whole number")))
            .stderr(predicate::str::contains("2 error(s)"));
        // The daemon refuses the same settings before it listens, naming each one.
        setup
            .rexray(&["service", "start", "-f"])
            .timeout(Duration::from_secs(20))
            .assert()
            .failure()
            .stderr(predicate::str::contains("2 problem(s)"))
            .stderr(predicate::str::contains(format!("{file}:5: ebs.statusTimeout")))
            .stderr(predicate::str::contains(format!("{file}:6: ebs.maxRetries")));
        assert!(!setup.path("home/var/run/rexray/rexray-admin.sock").exists());
        setup
            .rexray(&["config", "check"])
            .env("EBS_STATUSTIMEOUT", "30s")
            .env("EBS_MAXRETRIES", "many")
            .assert()
            .code(1)
            .stdout(predicate::str::contains("env EBS_MAXRETRIES: ebs.maxRetries: \"many\": expected a whole number"));
    } else {
        setup
            .rexray(&["config", "check"])
            .assert()
            .code(1)
            .stdout(predicate::str::contains("backend ebs is not built into this binary"));
    }
}

#[test]
fn volume_ls_with_ec2_unreachable_fails_and_says_why() {
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let setup = Setup::with_config(|_| {
        format!(
            "libstorage:\n  service: ebs\nebs:\n  endpoint: http://127.0.0.1:{port}\n  region: us-east-1\n  accessKey: test\n  secretKey: test\n  instanceID: i-0123456789abcdef0\n  availabilityZone: us-east-1a\n"
        )
    });
    if !setup.stdout(&["version"]).contains("ebs") {
        return;
    }
    let started = std::time::Instant::now();
    let out = setup.rexray(&["volume", "ls"]).assert().failure();
    let took = started.elapsed();
    let stderr = String::from_utf8_lossy(&out.get_output().stderr).to_string();
    let stdout = String::from_utf8_lossy(&out.get_output().stdout).to_string();
    assert!(stdout.trim().is_empty(), "no table that claims there are no volumes: {stdout}");
    assert!(stderr.contains("could not list the volumes"), "{stderr}");
    assert!(stderr.to_lowercase().contains("connection refused"), "{stderr}");
    assert!(!stderr.contains("DispatchFailure") && !stderr.contains("{ "), "{stderr}");
    // One bounded wait for EC2 (the CLI's first listing), not the 45 s retry budget.
    assert!(took < Duration::from_secs(25), "took {took:?}");
}

#[test]
fn env_shows_the_effective_config_with_secrets_redacted() {
    let setup = Setup::with_config(|dir| {
        format!(
            "libstorage:\n  service: ebs\n  integration:\n    volume:\n      operations:\n        mount:\n          preempt: true\nebs:\n  accessKey: AKIAEXAMPLE\n  secretKey: wJalrXUtnFEMI\n  region: eu-west-1\nvfs:\n  root: {}/vfs\n",
            dir.display()
        )
    });
    let out = setup.stdout(&["env"]);
    assert!(!out.contains("AKIAEXAMPLE") && !out.contains("wJalrXUtnFEMI"), "{out}");
    for line in [
        "EBS_ACCESSKEY=<redacted>",
        "EBS_SECRETKEY=<redacted>",
        "EBS_REGION=eu-west-1",
        "LIBSTORAGE_SERVICE=ebs",
        "LIBSTORAGE_INTEGRATION_VOLUME_OPERATIONS_MOUNT_PREEMPT=true",
    ] {
        assert!(out.lines().any(|l| l == line || l == line.replace("<redacted>", "'<redacted>'")), "{line} in:\n{out}");
    }
    let home = setup.path("home");
    assert!(out.contains(&format!("REXRAY_HOME_RUN={}/var/run/rexray", home.display())), "{out}");
}

#[test]
fn service_status_with_and_without_a_daemon() {
    let setup = Setup::new();
    setup.rexray(&["service", "status"]).assert().code(3).stdout(predicate::str::contains("stopped"));
    let daemon = setup.start_daemon();
    setup.rexray(&["service", "status"]).assert().success().stdout(predicate::str::contains("running (pid"));
    setup.rexray(&["status"]).assert().success();
    // The start line names the version and the config file.
    let log = std::fs::read_to_string(setup.path("daemon.log")).unwrap();
    let start = log.lines().find(|l| l.contains("rexray starting")).unwrap_or_else(|| panic!("{log}"));
    assert!(
        start.contains(env!("CARGO_PKG_VERSION")) && start.contains(&setup.config().display().to_string()),
        "{start}"
    );
    // The admin socket is private to its owner.
    let mode = std::fs::metadata(setup.admin_socket()).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    drop(daemon);
    setup.rexray(&["service", "status"]).assert().code(3).stdout(predicate::str::contains("stale socket file"));
}

#[test]
fn a_second_daemon_with_the_same_home_refuses_to_start() {
    let setup = Setup::new();
    let _daemon = setup.start_daemon();
    let mut other = Command::new(BIN);
    other
        .args(["service", "start", "-f", "-c"])
        .arg(setup.config())
        .env("REXRAY_HOME", setup.path("home"))
        .timeout(Duration::from_secs(20))
        .assert()
        .failure()
        .stderr(predicate::str::contains("admin socket"));
}

#[test]
fn volume_commands_without_a_daemon() {
    let setup = Setup::new();
    setup
        .rexray(&["volume", "create", "--size", "2", "v1", "v2"])
        .assert()
        .success()
        .stdout(predicate::str::is_match(r"(?m)^NAME +STATUS +SIZE +HOLDERS\nv1 +\w+ +2 GiB +0\nv2 ").unwrap());
    let created = setup.json(&["volume", "new", "-f", "json", "-o", "mode=0750", "v3"]);
    assert_eq!(created[0]["Name"], "v3");
    assert_eq!(created[0]["Status"]["options"]["mode"], "0750");
    assert_eq!(setup.stdout(&["volume", "ls", "-q"]), "v1\nv2\nv3\n");
    assert_eq!(setup.stdout(&["volume", "list", "-q", "--service", "other"]), "");

    let path = setup.stdout(&["volume", "mount", "v1"]);
    assert_eq!(path.trim_end(), setup.path("vfs/v1").display().to_string());
    let v1 = setup.json(&["volume", "inspect", "-f", "jsonp", "v1"]);
    assert_eq!(v1[0]["Status"]["holders"], 1);
    assert_eq!(setup.stdout(&["volume", "path", "v1"]), path);
    setup.rexray(&["volume", "rm", "v1"]).assert().code(1).stderr(predicate::str::contains("in use"));
    setup.rexray(&["volume", "m", "v1"]).assert().success();
    setup
        .rexray(&["volume", "u", "v1"])
        .assert()
        .success()
        .stdout("v1\n")
        .stderr(predicate::str::contains("volume \"v1\" stays mounted: 1 hold(s) remain"));
    assert_eq!(setup.json(&["volume", "get", "-f", "json", "v1"])[0]["Status"]["holders"], 1);
    setup.rexray(&["volume", "detach", "--force", "v1"]).assert().success().stderr("");
    assert_eq!(setup.json(&["volume", "ls", "-f", "json", "v1"])[0]["Status"]["holders"], 0);
    setup.rexray(&["volume", "attach", "v1"]).assert().success();
    setup.rexray(&["volume", "rm", "--force", "v1"]).assert().success().stdout("v1\n");

    // Unknown names, bad names, --continueOnError.
    setup.rexray(&["volume", "inspect", "nope"]).assert().code(1).stderr(predicate::str::contains("no such volume"));
    setup
        .rexray(&["volume", "create", "bad/name", "v4"])
        .assert()
        .code(1)
        .stderr(predicate::str::contains("contains '/'"));
    assert!(!setup.stdout(&["volume", "ls", "-q"]).contains("v4"));
    setup
        .rexray(&["volume", "create", "--continueOnError", "bad/name", "v4"])
        .assert()
        .code(1)
        .stdout(predicate::str::contains("v4"));
    setup.rexray(&["volume", "remove", "v2", "v3", "v4"]).assert().success();
    assert_eq!(setup.stdout(&["volume", "ls", "-q"]), "");

    // Options the backend does not know are its error; block and EBS options are recorded and
    // said to be ignored; unsupported features are refused.
    setup
        .rexray(&["volume", "create", "-o", "colour=red", "x"])
        .assert()
        .code(1)
        .stderr(predicate::str::contains("colour"));
    let made = setup.json(&["volume", "create", "--iops", "100", "-f", "json", "x"]);
    assert!(made[0]["Status"]["ignored"].as_str().is_some_and(|i| i.starts_with("iops: recorded")), "{made}");
    // vfs volumes have no size to grow; a size that is no size is refused by the parser.
    setup
        .rexray(&["volume", "resize", "x", "5GiB"])
        .assert()
        .code(1)
        .stderr(predicate::str::contains("cannot be resized: vfs volumes have no size of their own"));
    setup
        .rexray(&["volume", "resize", "x", "lots"])
        .assert()
        .code(2)
        .stderr(predicate::str::contains("whole number of GiB"));
    // Nor a type, IOPS or throughput to change.
    setup
        .rexray(&["volume", "modify", "x", "--iops", "4000"])
        .assert()
        .code(1)
        .stderr(predicate::str::contains("cannot be modified: vfs volumes have no type, IOPS or throughput"));
    setup
        .rexray(&["volume", "modify", "x"])
        .assert()
        .code(1)
        .stderr(predicate::str::contains("nothing to change: give --type, --iops or --throughput"));
    // Nor a zone to move to.
    setup
        .rexray(&["volume", "move", "x", "--zone", "us-east-1b"])
        .assert()
        .code(1)
        .stderr(predicate::str::contains("cannot be moved: vfs volumes live on this host"));
    setup.rexray(&["volume", "rm", "x"]).assert().success();
    setup
        .rexray(&["volume", "create", "--snapshotID", "snap-1", "x"])
        .assert()
        .code(1)
        .stderr(predicate::str::contains("snapshots are not supported by the vfs backend"));
    setup
        .rexray(&["volume", "mount", "--overwriteFS", "x"])
        .assert()
        .code(1)
        .stderr(predicate::str::contains("--overwriteFS is not supported"));
    setup
        .rexray(&["volume", "ls", "-s", "nope"])
        .assert()
        .code(1)
        .stderr(predicate::str::contains("no service \"nope\""));
}

#[test]
fn snapshot_commands_say_the_backend_has_none() {
    let setup = Setup::new();
    for args in [
        vec!["snapshot", "ls"],
        vec!["snapshot", "create", "--volumeid", "v1"],
        vec!["snapshot", "rm", "snap-1"],
        vec!["snapshot", "copy", "--snapshotid", "snap-1", "--destinationregion", "eu-west-1"],
        vec!["snapshot", "list", "-s", "other"],
    ] {
        setup
            .rexray(&args)
            .assert()
            .code(1)
            .stderr(predicate::str::contains("snapshots are not supported by the vfs backend"));
    }
}

#[test]
fn a_restart_with_idle_volumes_logs_no_release() {
    let setup = Setup::new();
    let daemon = setup.start_daemon();
    for name in ["idle1", "idle2"] {
        setup.rexray(&["volume", "create", name]).assert().success();
    }
    plugin_call(&daemon.socket, "VolumeDriver.Mount", &json!({"Name": "idle1", "ID": "c1"}));
    plugin_call(&daemon.socket, "VolumeDriver.Unmount", &json!({"Name": "idle1", "ID": "c1"}));
    drop(daemon);
    for _ in 0..2 {
        let daemon = setup.start_daemon();
        let (status, _) = plugin_call(&daemon.socket, "VolumeDriver.List", &json!({}));
        assert_eq!(status, 200);
        drop(daemon);
        let log = std::fs::read_to_string(setup.path("daemon.log")).unwrap();
        assert!(log.contains("service ready"), "{log}");
        assert!(!log.contains("released"), "an idle volume was reported released:\n{log}");
    }
}

#[test]
fn volume_commands_go_through_the_running_daemon() {
    let setup = Setup::new();
    let daemon = setup.start_daemon();
    setup.rexray(&["volume", "create", "--size", "3", "d1"]).assert().success();
    // The daemon knows it at once: the command went through it.
    let (status, body) = plugin_call(&daemon.socket, "VolumeDriver.Get", &json!({"Name": "d1"}));
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["Volume"]["Status"]["options"]["size"], "3");

    // A container holds it, then the CLI does: two holders, one path.
    let (_, mounted) = plugin_call(&daemon.socket, "VolumeDriver.Mount", &json!({"Name": "d1", "ID": "c1"}));
    let path = setup.stdout(&["volume", "mount", "d1"]);
    assert_eq!(path.trim_end(), mounted["Mountpoint"].as_str().unwrap());
    let listed = setup.json(&["volume", "ls", "-f", "json", "--attached"]);
    assert_eq!(listed.as_array().unwrap().len(), 1);
    assert_eq!(listed[0]["Status"]["holders"], 2);
    assert_eq!(setup.stdout(&["volume", "ls", "-q", "--available"]), "");
    // The CLI's unmount releases its own hold only.
    setup.rexray(&["volume", "unmount", "d1"]).assert().success();
    let (_, body) = plugin_call(&daemon.socket, "VolumeDriver.Get", &json!({"Name": "d1"}));
    assert_eq!(body["Volume"]["Status"]["holders"], 1);
    setup.rexray(&["volume", "rm", "--force", "d1"]).assert().code(1).stderr(predicate::str::contains("in use"));
    plugin_call(&daemon.socket, "VolumeDriver.Unmount", &json!({"Name": "d1", "ID": "c1"}));
    setup.rexray(&["volume", "path", "d1"]).assert().code(1).stderr(predicate::str::contains("not mounted"));
    setup.rexray(&["volume", "rm", "d1"]).assert().success();
    assert_eq!(plugin_call(&daemon.socket, "VolumeDriver.Get", &json!({"Name": "d1"})).0, 500);
    // The other service is reached by name.
    setup.rexray(&["volume", "create", "-s", "other", "o1"]).assert().success();
    assert_eq!(setup.stdout(&["volume", "ls", "-q", "-s", "other"]), "o1\n");
    assert_eq!(setup.stdout(&["volume", "ls", "-q"]), "");
    assert!(setup.path("other/o1").is_dir());
}

/// `volume ls --orphans` and `volume prune` through the running daemon, with Docker's calls
/// beside them: a volume a container holds is never an orphan, a dry run removes nothing,
/// `--anonymous` keeps to Docker's anonymous volumes.
#[test]
fn orphans_are_listed_and_pruned_through_the_daemon() {
    let setup = Setup::new();
    let daemon = setup.start_daemon();
    let anonymous = "0f".repeat(32);
    for name in ["idle", "held", anonymous.as_str()] {
        let (status, body) = plugin_call(&daemon.socket, "VolumeDriver.Create", &json!({"Name": name}));
        assert_eq!(status, 200, "{body}");
    }
    plugin_call(&daemon.socket, "VolumeDriver.Mount", &json!({"Name": "held", "ID": "c1"}));
    // Just created: idle for under 30 days, so no orphans by default.
    assert_eq!(setup.stdout(&["volume", "ls", "--orphans", "-q"]), "");
    let orphans = setup.json(&["volume", "ls", "--orphans", "--older-than", "0s", "-f", "json"]);
    let names: Vec<&str> = orphans.as_array().unwrap().iter().map(|o| o["Name"].as_str().unwrap()).collect();
    assert_eq!(names, [anonymous.as_str(), "idle"], "{orphans}");
    assert_eq!((orphans[0]["Anonymous"].as_bool(), orphans[1]["Anonymous"].as_bool()), (Some(true), Some(false)));
    let table = setup.stdout(&["volume", "ls", "--orphans", "--older-than", "0s"]);
    assert!(
        table.starts_with("NAME")
            && table.contains("LAST USED")
            && table.lines().any(|l| l.starts_with("idle ") && l.contains(" named ")),
        "{table}"
    );
    // A dry run lists and removes nothing.
    setup
        .rexray(&["volume", "prune", "--older-than", "0s"])
        .assert()
        .success()
        .stdout(predicate::str::contains("idle"))
        .stderr(predicate::str::contains("a dry run: 2 volume(s) would be removed; --yes removes them"));
    assert_eq!(plugin_call(&daemon.socket, "VolumeDriver.Get", &json!({"Name": "idle"})).0, 200);
    // --anonymous: only Docker's anonymous volume goes.
    let out = setup.stdout(&["volume", "prune", "--anonymous", "--older-than", "0s", "--yes"]);
    assert_eq!(out, format!("{anonymous}\n"));
    assert_eq!(plugin_call(&daemon.socket, "VolumeDriver.Get", &json!({"Name": anonymous})).0, 500);
    assert_eq!(setup.stdout(&["volume", "prune", "--older-than", "0s", "--yes"]), "idle\n");
    // The held volume stays, and is an orphan only once released.
    assert_eq!(plugin_call(&daemon.socket, "VolumeDriver.Get", &json!({"Name": "held"})).0, 200);
    plugin_call(&daemon.socket, "VolumeDriver.Unmount", &json!({"Name": "held", "ID": "c1"}));
    assert_eq!(setup.stdout(&["volume", "ls", "--orphans", "--older-than", "0s", "-q"]), "held\n");
    setup
        .rexray(&["volume", "ls", "--orphans", "--older-than", "soon"])
        .assert()
        .code(2)
        .stderr(predicate::str::contains("not an age such as 30d"));
}

#[test]
fn no_in_process_changes_behind_a_daemon_without_admin_socket() {
    let setup = Setup::new();
    // Something serves the module socket, but no admin socket answers (e.g. another REXRAY_HOME).
    std::fs::create_dir_all(setup.path("plugins")).unwrap();
    let listener = std::os::unix::net::UnixListener::bind(setup.path("plugins/rxt.sock")).unwrap();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { return };
            let mut buf = [0u8; 4096];
            let _ = conn.read(&mut buf);
            let body = r#"{"Implements":["VolumeDriver"]}"#;
            let _ =
                write!(conn, "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}", body.len());
        }
    });
    setup
        .rexray(&["volume", "ls"])
        .assert()
        .code(1)
        .stderr(predicate::str::contains("refusing to change volume state behind its back"));
}
