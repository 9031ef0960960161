//! `rexray marathon check`: the two app definitions of the Marathon external-volumes document
//! pass, and each rule, broken once, gives exactly Marathon's message at its JSON path.

use std::path::{Path, PathBuf};

use assert_cmd::Command;
use predicates::prelude::*;
use serde_json::{json, Value};

const BIN: &str = env!("CARGO_BIN_EXE_rexray");

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/marathon").join(name)
}

fn load(name: &str) -> Value {
    serde_json::from_str(&std::fs::read_to_string(fixture(name)).unwrap()).unwrap()
}

fn check(files: &[&Path], extra: &[&str]) -> Command {
    let mut cmd = Command::new(BIN);
    cmd.args(["marathon", "check"]).args(extra).args(files).env_clear();
    cmd
}

/// Sets the value at a JSON pointer (creating object members as needed); `None` removes it.
fn set(doc: &mut Value, pointer: &str, value: Option<Value>) {
    let (parent, key) = pointer.rsplit_once('/').unwrap();
    let mut node = doc;
    for part in parent.split('/').skip(1) {
        node = if let Ok(i) = part.parse::<usize>() {
            &mut node[i]
        } else {
            node.as_object_mut().unwrap().entry(part.replace("~1", "/")).or_insert(json!({}))
        };
    }
    let key = key.replace("~1", "/");
    match value {
        Some(v) => {
            if let Ok(i) = key.parse::<usize>() {
                let list = node.as_array_mut().unwrap();
                if i == list.len() {
                    list.push(v);
                } else {
                    list[i] = v;
                }
            } else {
                node[key.as_str()] = v;
            }
        }
        None => {
            node.as_object_mut().unwrap().remove(&key);
        }
    }
}

#[test]
fn the_documents_app_definitions_pass() {
    for name in ["mesos-app.json", "docker-app.json"] {
        for version in ["1.2", "1.4", "1.9"] {
            check(&[&fixture(name)], &["--marathon", version])
                .assert()
                .success()
                .stdout("")
                .stderr(predicate::str::contains("1 app(s), 1 DVDI volume(s) in 1 file(s): ok"));
        }
    }
}

struct Case {
    /// The rule ID the problem must carry.
    rule: &'static str,
    /// Which document app to break.
    base: &'static str,
    /// `--marathon` version.
    version: &'static str,
    /// JSON pointer edits: (pointer, new value or None to remove).
    edits: Vec<(&'static str, Option<Value>)>,
    /// Expected Marathon path and message.
    path: &'static str,
    message: &'static str,
}

fn cases() -> Vec<Case> {
    let c = |rule, base, version, edits: Vec<(&'static str, Option<Value>)>, path, message| Case {
        rule,
        base,
        version,
        edits,
        path,
        message,
    };
    vec![
        c(
            "instances",
            "mesos",
            "1.2",
            vec![("/instances", Some(json!(2)))],
            "/instances",
            "Number of instances is limited to 1 when declaring DVDI volumes in app [/hello]",
        ),
        c(
            "max-over-capacity",
            "mesos",
            "1.2",
            vec![("/upgradeStrategy/maximumOverCapacity", Some(json!(1)))],
            "/upgradeStrategy/maximumOverCapacity",
            "got 1.0, expected 0.0",
        ),
        c(
            "max-over-capacity",
            "docker",
            "1.2",
            vec![("/upgradeStrategy/maximumOverCapacity", None)],
            "/upgradeStrategy/maximumOverCapacity",
            "got 1.0, expected 0.0",
        ),
        c(
            "min-health-capacity",
            "mesos",
            "1.2",
            vec![("/upgradeStrategy/minimumHealthCapacity", Some(json!(0.75)))],
            "/upgradeStrategy/minimumHealthCapacity",
            "got 0.75, expected 0.5 or less",
        ),
        c(
            "min-health-capacity",
            "mesos",
            "1.4",
            vec![("/upgradeStrategy/minimumHealthCapacity", Some(json!(1.2)))],
            "/upgradeStrategy/minimumHealthCapacity",
            "got 1.2, expected between 0.0 and 1.0",
        ),
        c(
            "unknown-provider",
            "mesos",
            "1.2",
            vec![("/container/volumes/0/external/provider", Some(json!("dvdo")))],
            "/container/volumes(0)/external/provider",
            "is unknown provider",
        ),
        c(
            "name",
            "mesos",
            "1.2",
            vec![("/container/volumes/0/external/name", Some(json!("")))],
            "/container/volumes(0)/external/name",
            "must not be empty",
        ),
        c(
            "option-key",
            "mesos",
            "1.2",
            vec![("/container/volumes/0/external/options/volumetype", Some(json!("gp2")))],
            "/container/volumes(0)/external/options(\"volumetype\")",
            r"must match regular expression '^[a-z0-9](?:[-a-z0-9]*[a-z0-9])?/[A-Za-z0-9](?:[-A-Za-z0-9\._:]*[A-Za-z0-9])?$'",
        ),
        c(
            "driver-missing",
            "mesos",
            "1.2",
            vec![("/container/volumes/0/external/options", Some(json!({})))],
            "/container/volumes(0)/external/options(\"dvdi/driver\")",
            "not defined",
        ),
        c(
            "driver-label",
            "docker",
            "1.2",
            vec![("/container/volumes/0/external/options/dvdi~1driver", Some(json!("rexray/ebs:latest")))],
            "/container/volumes(0)/external/options(\"dvdi/driver\")",
            "must match regular expression '^[a-z0-9](?:[-a-z0-9]*[a-z0-9])?$'",
        ),
        c(
            "size",
            "mesos",
            "1.2",
            vec![("/container/volumes/0/external/size", Some(json!(0)))],
            "/container/volumes(0)/external/size",
            "got 0, expected more than 0",
        ),
        c(
            "rexray-volumetype",
            "mesos",
            "1.2",
            vec![("/container/volumes/0/external/options/dvdi~1volumetype", Some(json!("io1 ")))],
            "/container/volumes(0)/external/options(\"dvdi/volumetype\")",
            "must match regular expression '^[a-z0-9](?:[-a-z0-9]*[a-z0-9])?$'",
        ),
        c(
            "rexray-newfstype",
            "mesos",
            "1.2",
            vec![("/container/volumes/0/external/options/dvdi~1newfstype", Some(json!("XFS")))],
            "/container/volumes(0)/external/options(\"dvdi/newfstype\")",
            "must match regular expression '^[a-z0-9](?:[-a-z0-9]*[a-z0-9])?$'",
        ),
        c(
            "rexray-iops",
            "mesos",
            "1.2",
            vec![("/container/volumes/0/external/options/dvdi~1iops", Some(json!("0")))],
            "/container/volumes(0)/external/options(\"dvdi/iops\")",
            "Expected a valid, positive integer instead of 0",
        ),
        c(
            "rexray-overwritefs",
            "mesos",
            "1.2",
            vec![("/container/volumes/0/external/options/dvdi~1overwritefs", Some(json!("yes")))],
            "/container/volumes(0)/external/options(\"dvdi/overwritefs\")",
            "Expected a valid boolean",
        ),
        c(
            "container-path",
            "mesos",
            "1.5",
            vec![("/container/volumes/0/containerPath", Some(json!("..")))],
            "/container/volumes(0)/containerPath",
            "can not be one of (.,..)",
        ),
        c(
            "mesos-mode",
            "mesos",
            "1.2",
            vec![("/container/volumes/0/mode", Some(json!("RO")))],
            "/container/volumes(0)/mode",
            "does not equal RW",
        ),
        c(
            "mesos-container-path-slash",
            "mesos",
            "1.4",
            vec![("/container/volumes/0/containerPath", Some(json!("/data/vol")))],
            "/container/volumes(0)/containerPath",
            "must fully match regular expression '^[^/]*$'",
        ),
        c(
            "docker-container-path-absolute",
            "docker",
            "1.2",
            vec![("/container/volumes/0/containerPath", Some(json!("data")))],
            "/container/volumes(0)/containerPath",
            "value must be an absolute path",
        ),
        c(
            "docker-options",
            "docker",
            "1.2",
            vec![("/container/volumes/0/external/options/dvdi~1volumetype", Some(json!("gp2")))],
            "/container/volumes(0)/external/options",
            "must only contain dvdi/driver",
        ),
        c(
            "docker-size",
            "docker",
            "1.2",
            vec![("/container/volumes/0/external/size", Some(json!(10)))],
            "/container/volumes(0)/external/size",
            "must be undefined for Docker containers",
        ),
        c(
            "duplicate-in-app",
            "mesos",
            "1.2",
            vec![(
                "/container/volumes/1",
                Some(json!({
            "containerPath": "second", "mode": "RW",
            "external": {"name": "my-test-vol", "provider": "dvdi", "options": {"dvdi/driver": "rexray"}}})),
            )],
            "/container/volumes(1)/external/name",
            "Requested DVDI volume 'my-test-vol' is declared more than once within app /hello",
        ),
        c(
            "docker-one-driver",
            "docker",
            "1.2",
            vec![(
                "/container/volumes/1",
                Some(json!({
            "containerPath": "/other", "mode": "RW",
            "external": {"name": "other-vol", "provider": "dvdi", "options": {"dvdi/driver": "other"}}})),
            )],
            "/container/volumes",
            "Only one volume driver is supported",
        ),
        c(
            "option-value",
            "mesos",
            "1.2",
            vec![("/container/volumes/0/external/options/dvdi~1iops", Some(json!(100)))],
            "/container/volumes(0)/external/options(\"dvdi/iops\")",
            "expected a string value",
        ),
        c(
            "json-type",
            "mesos",
            "1.2",
            vec![("/instances", Some(json!("1")))],
            "/instances",
            "expected a whole number, 0 or more, got a string",
        ),
        c(
            "json-type",
            "docker",
            "1.2",
            vec![("/upgradeStrategy/maximumOverCapacity", Some(json!("0")))],
            "/upgradeStrategy/maximumOverCapacity",
            "expected a number, got a string",
        ),
        c(
            "json-type",
            "mesos",
            "1.2",
            vec![("/container/volumes/0/external", Some(json!("my-test-vol")))],
            "/container/volumes(0)/external",
            "expected an object, got a string",
        ),
    ]
}

#[test]
fn each_rule_broken_once() {
    let dir = tempfile::tempdir().unwrap();
    let cases = cases();
    for (i, case) in cases.iter().enumerate() {
        let mut doc = load(&format!("{}-app.json", case.base));
        for (pointer, value) in &case.edits {
            set(&mut doc, pointer, value.clone());
        }
        let file = dir.path().join(format!("case{i}-{}.json", case.rule));
        std::fs::write(&file, serde_json::to_string_pretty(&doc).unwrap()).unwrap();
        let out = check(&[&file], &["--marathon", case.version]).assert().code(1);
        let stdout = String::from_utf8_lossy(&out.get_output().stdout).to_string();
        let problems: Vec<&str> = stdout.lines().filter(|l| !l.starts_with("    hint: ")).collect();
        let want = format!("{}: {}: {}", file.display(), case.path, case.message);
        assert_eq!(problems, [want.as_str()], "rule {} (case {i})", case.rule);
        // The JSON output names the rule.
        let out = check(&[&file], &["--marathon", case.version, "-f", "json"]).assert().code(1);
        let json: Value = serde_json::from_slice(&out.get_output().stdout).unwrap();
        assert_eq!(json[0]["rule"], case.rule, "case {i}: {json}");
        assert_eq!(json[0]["path"], case.path, "case {i}");
    }
    // Every rule of the table is broken by some case (the cross-app rule in its own test).
    let covered: std::collections::BTreeSet<&str> = cases.iter().map(|c| c.rule).collect();
    let all = [
        "instances",
        "duplicate-in-app",
        "max-over-capacity",
        "min-health-capacity",
        "unknown-provider",
        "name",
        "option-key",
        "driver-missing",
        "driver-label",
        "size",
        "rexray-volumetype",
        "rexray-newfstype",
        "rexray-iops",
        "rexray-overwritefs",
        "container-path",
        "mesos-mode",
        "mesos-container-path-slash",
        "docker-container-path-absolute",
        "docker-options",
        "docker-size",
        "docker-one-driver",
        "option-value",
        "json-type",
    ];
    for rule in all {
        assert!(covered.contains(rule), "no case breaks {rule}");
    }
}

#[test]
fn newer_versions_relax_the_rules() {
    let dir = tempfile::tempdir().unwrap();
    let mut doc = load("mesos-app.json");
    set(&mut doc, "/upgradeStrategy/minimumHealthCapacity", Some(json!(1)));
    set(&mut doc, "/container/volumes/0/containerPath", Some(json!("/data/nested")));
    let file = dir.path().join("relaxed.json");
    std::fs::write(&file, doc.to_string()).unwrap();
    // The default is the newest Marathon's rules: both relaxed.
    check(&[&file], &[]).assert().success().stderr(predicate::str::contains("marathon 1.11 rules"));
    // 1.2: both rules; with hints pointing at the versions that relaxed them.
    check(&[&file], &["--marathon", "1.2"])
        .assert()
        .code(1)
        .stdout(predicate::str::contains("got 1.0, expected 0.5 or less"))
        .stdout(predicate::str::contains("hint: Marathon 1.3+ accepts up to 1"))
        .stdout(predicate::str::contains("must fully match regular expression '^[^/]*$'"));
    check(&[&file], &["--marathon-1.4"])
        .assert()
        .code(1)
        .stdout(predicate::str::contains("^[^/]*$").and(predicate::str::contains("0.5 or less").not()));
    check(&[&file], &["--marathon", "1.5"]).assert().success();
}

#[test]
fn volume_names_are_unique_across_apps_unless_shared() {
    // Both document apps use the volume name my-test-vol.
    let mesos = fixture("mesos-app.json");
    let docker = fixture("docker-app.json");
    let out = check(&[&mesos, &docker], &[]).assert().code(1);
    let stdout = String::from_utf8_lossy(&out.get_output().stdout).to_string();
    assert_eq!(
        stdout.lines().collect::<Vec<_>>(),
        [
            format!("{}: /container/volumes(0)/external/name: Volume name 'my-test-vol' in /hello conflicts with volume(s) of same name in app(s): /test-docker", mesos.display()),
            format!("{}: /container/volumes(0)/external/name: Volume name 'my-test-vol' in /test-docker conflicts with volume(s) of same name in app(s): /hello", docker.display()),
        ]
    );
    // In a group, with relative ids; `shared` exempts the volumes from Marathon 1.9 on.
    let dir = tempfile::tempdir().unwrap();
    let mut a = load("mesos-app.json");
    let mut b = load("docker-app.json");
    set(&mut b, "/id", Some(json!("test-docker")));
    let group = json!({"id": "/prod", "apps": [a.clone()], "groups": [{"id": "web", "apps": [b.clone()]}]});
    let file = dir.path().join("group.json");
    std::fs::write(&file, group.to_string()).unwrap();
    check(&[&file], &[])
        .assert()
        .code(1)
        .stdout(predicate::str::contains(": /apps(0)/container/volumes(0)/external/name: Volume name 'my-test-vol' in /prod/hello conflicts with volume(s) of same name in app(s): /prod/web/test-docker"))
        .stdout(predicate::str::contains(": /groups(0)/apps(0)/container/volumes(0)/external/name: Volume name 'my-test-vol' in /prod/web/test-docker conflicts"));
    set(&mut a, "/container/volumes/0/external/shared", Some(json!(true)));
    set(&mut b, "/container/volumes/0/external/shared", Some(json!(true)));
    let both = json!([a, b]);
    let file = dir.path().join("array.json");
    std::fs::write(&file, both.to_string()).unwrap();
    check(&[&file], &["--marathon", "1.9"]).assert().success();
    check(&[&file], &["--marathon", "1.4"])
        .assert()
        .code(1)
        .stdout(predicate::str::contains(
            "/(0)/container/volumes(0)/external/name: Volume name 'my-test-vol' in /hello conflicts",
        ))
        .stdout(predicate::str::contains(
            "hint: \"shared\": true exempts a volume from this rule only from Marathon 1.9 on",
        ));
}

#[test]
fn unreadable_files_and_apps_without_external_volumes() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.json");
    std::fs::write(&bad, "{ not json").unwrap();
    check(&[&bad], &[]).assert().code(1).stdout(predicate::str::contains("bad.json: invalid JSON"));
    let plain = dir.path().join("plain.json");
    std::fs::write(&plain, r#"{"id": "web", "instances": 5, "upgradeStrategy": {"maximumOverCapacity": 1}}"#).unwrap();
    check(&[&plain], &[]).assert().success().stderr(predicate::str::contains("1 app(s), 0 DVDI volume(s)"));
    check(&[&dir.path().join("missing.json")], &[]).assert().code(1);
    check(&[], &[]).assert().code(2);
}
