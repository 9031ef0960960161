//! The managed plugin's settings: `plugin/config.json` declares exactly the variables of the
//! README's plugin table, with the same defaults; every variable of the configuration reference
//! is settable in the plugin unless it makes no sense there; and every variable an error
//! message tells users to set is one of them.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn readme() -> String {
    std::fs::read_to_string(root().join("README.md")).unwrap()
}

/// config.json's `env`: name → default value.
fn declared() -> BTreeMap<String, String> {
    let text = std::fs::read_to_string(root().join("plugin/config.json")).unwrap();
    let json: serde_json::Value = serde_json::from_str(&text).unwrap();
    json["env"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| (e["name"].as_str().unwrap().to_owned(), e["value"].as_str().unwrap_or_default().to_owned()))
        .collect()
}

/// The rows of the first table after `heading`: first column → second column, backticks off.
fn table_after(text: &str, heading: &str) -> BTreeMap<String, String> {
    let start = text.find(heading).unwrap_or_else(|| panic!("README has no {heading:?}"));
    let mut rows = BTreeMap::new();
    let mut seen_table = false;
    for line in text[start..].lines().skip(1) {
        if line.starts_with('|') {
            seen_table = true;
            let cells: Vec<&str> = line.trim_matches('|').split('|').map(str::trim).collect();
            if cells.len() >= 2 && cells[0].starts_with('`') {
                let default = if cells[1] == "–" { String::new() } else { cells[1].trim_matches('`').to_owned() };
                rows.insert(cells[0].trim_matches('`').to_owned(), default);
            }
        } else if seen_table {
            break;
        }
    }
    rows
}

/// Every environment variable named in a table row of the README's configuration reference
/// (from "## Configuration" up to "## Volume options", and the EBS settings table), with the
/// `…_` shorthand expanded.
fn reference_variables(text: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let sections = [("## Configuration", "## Volume options"), ("| key | env | default | meaning |", "\n\n")];
    for (from, to) in sections {
        let start = text.find(from).unwrap_or_else(|| panic!("README has no {from:?}"));
        let end = start + text[start..].find(to).unwrap_or(text.len() - start);
        for line in text[start..end].lines().filter(|l| l.starts_with('|')) {
            for token in line.split('`').skip(1).step_by(2) {
                let token = token.replace('…', "LIBSTORAGE_INTEGRATION_VOLUME_OPERATIONS");
                let is_var = token.len() > 3
                    && token.chars().all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_')
                    && token.contains('_');
                if is_var {
                    out.insert(token);
                }
            }
        }
    }
    out
}

/// Variables of the configuration reference that a managed plugin does not offer, and why.
const NOT_FOR_THE_PLUGIN: &[(&str, &str)] = &[
    ("REXRAY_DEBUG", "REXRAY_LOGLEVEL=debug says the same"),
    ("RUST_LOG", "REXRAY_LOGLEVEL covers it"),
    ("REXRAY_STORAGEDRIVERS", "REX-Ray 0.3's spelling of LIBSTORAGE_SERVICE"),
    ("LIBSTORAGE_INTEGRATION_VOLUME_OPERATIONS_MOUNT_PREEMPT", "REXRAY_PREEMPT is its shortcut"),
    ("LIBSTORAGE_INTEGRATION_VOLUME_OPERATIONS_CREATE_DEFAULT_FSTYPE", "REXRAY_FSTYPE is its shortcut"),
    ("LIBSTORAGE_INTEGRATION_VOLUME_OPERATIONS_MOUNT_PATH", "mounts live under the propagated mount"),
    ("LIBSTORAGE_INTEGRATION_VOLUME_OPERATIONS_CREATE_DISABLE", "a plugin that cannot create is no plugin"),
    ("LIBSTORAGE_INTEGRATION_VOLUME_OPERATIONS_REMOVE_DISABLE", "docker plugin set can change it only while disabled"),
    (
        "CSI_ENDPOINT",
        "the VolumeDriver plugin serves no CSI; `plugin/build.sh --csi` builds the CSI plugin, which sets it",
    ),
    ("CSI_MODE", "the VolumeDriver plugin serves no CSI; the CSI plugin (`plugin/build.sh --csi`) offers it"),
];

#[test]
fn config_json_declares_exactly_the_readme_table() {
    let text = readme();
    let table = table_after(&text, "The plugin's settings (`docker plugin set");
    let declared = declared();
    assert_eq!(
        table.keys().collect::<Vec<_>>(),
        declared.keys().collect::<Vec<_>>(),
        "README's plugin table and plugin/config.json name different variables"
    );
    assert_eq!(table, declared, "README's plugin table and plugin/config.json give different defaults");
}

#[test]
fn every_reference_variable_is_settable_in_the_plugin_or_said_why_not() {
    let declared = declared();
    let reference = reference_variables(&readme());
    assert!(reference.contains("EBS_INSTANCEID") && reference.contains("LIBSTORAGE_SERVICE"), "{reference:?}");
    let excused: BTreeMap<&str, &str> = NOT_FOR_THE_PLUGIN.iter().copied().collect();
    let missing: Vec<&String> = reference
        .iter()
        .filter(|v| !v.starts_with("REXRAY_HOME") && !declared.contains_key(*v) && !excused.contains_key(v.as_str()))
        .collect();
    assert!(missing.is_empty(), "in the configuration reference but not settable in the plugin: {missing:?}");
    for (var, _) in NOT_FOR_THE_PLUGIN {
        assert!(!declared.contains_key(*var), "{var} is excused and declared");
    }
}

#[test]
fn every_variable_an_error_tells_users_to_set_is_settable() {
    let declared = declared();
    let mut files = Vec::new();
    let mut dirs = vec![root().join("src")];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(dir).unwrap().flatten() {
            let path = entry.path();
            if path.is_dir() {
                dirs.push(path);
            } else if path.extension().is_some_and(|e| e == "rs") {
                files.push(path);
            }
        }
    }
    let mut problems = Vec::new();
    for file in files {
        let text = std::fs::read_to_string(&file).unwrap();
        for line in text.lines().filter(|l| l.contains("set ") || l.contains("turn on") || l.contains("or REXRAY_")) {
            for word in line.split(|c: char| !(c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_')) {
                let ours =
                    ["EBS_", "REXRAY_", "LIBSTORAGE_", "LINUX_", "LOOP_", "VFS_"].iter().any(|p| word.starts_with(p));
                if ours && word.len() > 5 && !word.ends_with('_') && !declared.contains_key(word) {
                    let hinted = ["REXRAY_HOME", "REXRAY_CRASH_AT"].iter().all(|p| !word.starts_with(p));
                    if hinted && !word.contains("SPECS") && !word.contains("SETTINGS") {
                        problems.push(format!("{}: {word}", file.display()));
                    }
                }
            }
        }
    }
    assert!(problems.is_empty(), "hinted at but not settable in the plugin:\n{}", problems.join("\n"));
}
