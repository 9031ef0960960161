//! `rexray marathon check FILE…`: Marathon's own validation rules for apps that declare DVDI
//! external volumes, with Marathon's messages, so an app definition can be checked before it is
//! posted (mesosphere/marathon `DVDIProvider.scala`, `ProviderValidationHelpers.scala`,
//! `OptionSupport.scala`, `UpgradeStrategy.scala`, `Volume.scala`).
//!
//! A file holds one app, an array of apps, or a group (`apps`, `groups`). All files together
//! form the root group for the cluster-wide volume name rule. Each problem names its path in
//! Marathon's notation (`/container/volumes(0)/external/options("dvdi/driver")`, prefixed by
//! `/apps(i)` and `/groups(i)` inside groups).
//!
//! Rules changed across Marathon versions; `--marathon VERSION` picks them (default 1.2, the
//! rules of the external-volumes document): 1.3 allowed `minimumHealthCapacity` up to 1 (it was
//! at most 0.5), 1.4 dropped the absolute-path rule for Docker containers, 1.5 allowed nested
//! and absolute `containerPath`s for Mesos containers, 1.9 added `external.shared` (a shared
//! volume is exempt from the name uniqueness rules).

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use serde::Serialize;
use serde_json::Value;

/// Marathon's label pattern (`OptionLabelPatterns.LabelRegex`).
pub const LABEL_REGEX: &str = "^[a-z0-9](?:[-a-z0-9]*[a-z0-9])?$";
/// Marathon's option key pattern (`OptionLabelPatterns.OptionKeyRegex`).
pub const OPTION_KEY_REGEX: &str = r"^[a-z0-9](?:[-a-z0-9]*[a-z0-9])?/[A-Za-z0-9](?:[-A-Za-z0-9\._:]*[A-Za-z0-9])?$";
/// Marathon's no-slash pattern for Mesos container paths before 1.5.
pub const NO_SLASHES_REGEX: &str = "^[^/]*$";
/// The option naming the Docker volume driver.
pub const DRIVER_OPTION: &str = "dvdi/driver";

/// Every rule checked: its ID (used in JSON output and tests) and what it enforces.
pub const RULES: &[(&str, &str)] = &[
    ("instances", "at most 1 instance for an app with DVDI volumes"),
    ("duplicate-in-app", "a DVDI volume name is declared once per app (unless shared, 1.9+)"),
    ("duplicate-across-apps", "a DVDI volume name is used by one app in the cluster (unless shared, 1.9+)"),
    ("max-over-capacity", "upgradeStrategy.maximumOverCapacity is 0"),
    ("min-health-capacity", "upgradeStrategy.minimumHealthCapacity ≤ 0.5 (before 1.3), between 0 and 1 (1.3+)"),
    ("unknown-provider", "external.provider is dvdi"),
    ("name", "external.name is not empty"),
    ("option-key", "option keys look like PROVIDER/NAME"),
    ("option-value", "option values are strings"),
    ("driver-missing", "options has dvdi/driver"),
    ("driver-label", "dvdi/driver is a label (lowercase letters, digits, '-')"),
    ("size", "external.size is a positive whole number"),
    ("rexray-volumetype", "rexray: dvdi/volumetype is a label"),
    ("rexray-newfstype", "rexray: dvdi/newfstype is a label"),
    ("rexray-iops", "rexray: dvdi/iops is a positive integer"),
    ("rexray-overwritefs", "rexray: dvdi/overwritefs is a boolean (Marathon accepts only true)"),
    ("container-path", "containerPath is not empty, . or .."),
    ("mesos-mode", "MESOS: mode is RW"),
    ("mesos-container-path-slash", "MESOS before 1.5: containerPath has no '/'"),
    ("docker-container-path-absolute", "DOCKER before 1.4: containerPath is absolute"),
    ("docker-options", "DOCKER: options hold only dvdi/driver"),
    ("docker-size", "DOCKER: external.size is not set"),
    ("docker-one-driver", "DOCKER: one volume driver per task (Mesos' Docker containerizer)"),
];

/// A Marathon version, `major.minor`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Version(pub u32, pub u32);

impl Version {
    /// The rules of the external-volumes document.
    pub const DOCUMENT: Version = Version(1, 2);
}

impl std::str::FromStr for Version {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim().trim_start_matches('v');
        let mut parts = s.split('.');
        let major = parts.next().and_then(|p| p.parse().ok());
        let minor = parts.next().map_or(Some(0), |p| p.parse().ok());
        match (major, minor) {
            (Some(major), Some(minor)) => Ok(Version(major, minor)),
            _ => Err(format!("{s:?} is not a Marathon version like 1.4")),
        }
    }
}

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.0, self.1)
    }
}

/// One problem found.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Problem {
    /// The file.
    pub file: String,
    /// Marathon's path of the offending value.
    pub path: String,
    /// Marathon's message.
    pub message: String,
    /// The rule ID (see [`RULES`]).
    pub rule: &'static str,
    /// Extra advice of ours, if any (not part of Marathon's message).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hint: Option<String>,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}: {}", self.file, self.path, self.message)
    }
}

/// What was checked, for the summary.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Counts {
    /// Apps seen.
    pub apps: usize,
    /// DVDI volumes seen.
    pub volumes: usize,
}

/// One app found in a document.
#[derive(Debug)]
struct App<'a> {
    file: &'a str,
    /// Path prefix of the app inside its document (`/apps(0)`, or empty).
    at: String,
    /// The absolute app ID.
    id: String,
    value: &'a Value,
}

/// One DVDI volume of an app.
#[derive(Debug)]
struct DvdiVolume<'a> {
    /// Path of the volume (`/container/volumes(i)`), without the app prefix.
    at: String,
    name: Option<&'a str>,
    shared: bool,
    driver: Option<&'a str>,
}

/// Java's `Double.toString`, as Scala prints a Double in a message.
pub fn java_double(v: f64) -> String {
    if v == 0.0 {
        return if v.is_sign_negative() { "-0.0".into() } else { "0.0".into() };
    }
    if !v.is_finite() {
        return if v.is_nan() {
            "NaN".into()
        } else if v > 0.0 {
            "Infinity".into()
        } else {
            "-Infinity".into()
        };
    }
    let abs = v.abs();
    if (1e-3..1e7).contains(&abs) {
        let s = format!("{v}");
        if s.contains('.') {
            s
        } else {
            format!("{s}.0")
        }
    } else {
        let s = format!("{v:e}");
        let (mantissa, exp) = s.split_once('e').unwrap_or((&s, "0"));
        let mantissa = if mantissa.contains('.') { mantissa.to_string() } else { format!("{mantissa}.0") };
        format!("{mantissa}E{exp}")
    }
}

/// Whether `s` matches Marathon's label pattern.
pub fn is_label(s: &str) -> bool {
    let b = s.as_bytes();
    let ok = |c: &u8| c.is_ascii_lowercase() || c.is_ascii_digit();
    !b.is_empty() && ok(&b[0]) && ok(&b[b.len() - 1]) && b.iter().all(|c| ok(c) || *c == b'-')
}

/// Whether `s` matches Marathon's option key pattern (`label/name`).
pub fn is_option_key(s: &str) -> bool {
    let Some((ns, name)) = s.split_once('/') else { return false };
    let b = name.as_bytes();
    let edge = |c: &u8| c.is_ascii_alphanumeric();
    is_label(ns)
        && !b.is_empty()
        && edge(&b[0])
        && edge(&b[b.len() - 1])
        && b.iter().all(|c| edge(c) || matches!(c, b'-' | b'.' | b'_' | b':'))
}

/// Java's `Long.parseLong` accepting the value, and the value > 0 (`validNaturalNumber`).
fn is_natural(s: &str) -> bool {
    let digits = s.strip_prefix(['+', '-']).unwrap_or(s);
    !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()) && s.parse::<i64>().is_ok_and(|v| v > 0)
}

/// Scala's `"…".toBoolean` yielding true: Marathon's `validBoolean` rejects `false` too.
fn is_scala_true(s: &str) -> bool {
    s.eq_ignore_ascii_case("true")
}

/// Joins a relative app ID to its group, as Marathon's `PathId` does.
fn absolute_id(id: &str, parent: &str) -> String {
    if id.starts_with('/') {
        return id.trim_end_matches('/').to_string();
    }
    let mut parts: Vec<&str> = parent.split('/').filter(|p| !p.is_empty()).collect();
    for part in id.split('/').filter(|p| !p.is_empty()) {
        match part {
            "." => {}
            ".." => {
                parts.pop();
            }
            p => parts.push(p),
        }
    }
    format!("/{}", parts.join("/"))
}

/// Finds the apps in one document.
fn collect_apps<'a>(file: &'a str, doc: &'a Value, out: &mut Vec<App<'a>>) {
    fn group<'a>(file: &'a str, g: &'a Value, at: &str, parent: &str, out: &mut Vec<App<'a>>) {
        let gid = g.get("id").and_then(Value::as_str).map_or_else(|| parent.to_string(), |id| absolute_id(id, parent));
        for (i, app) in g.get("apps").and_then(Value::as_array).into_iter().flatten().enumerate() {
            push_app(file, app, format!("{at}/apps({i})"), &gid, out);
        }
        for (i, sub) in g.get("groups").and_then(Value::as_array).into_iter().flatten().enumerate() {
            group(file, sub, &format!("{at}/groups({i})"), &gid, out);
        }
    }
    fn push_app<'a>(file: &'a str, app: &'a Value, at: String, parent: &str, out: &mut Vec<App<'a>>) {
        let id =
            app.get("id").and_then(Value::as_str).map_or_else(|| "(no id)".to_string(), |id| absolute_id(id, parent));
        out.push(App { file, at, id, value: app });
    }
    match doc {
        Value::Array(apps) => {
            for (i, app) in apps.iter().enumerate() {
                push_app(file, app, format!("/({i})"), "/", out);
            }
        }
        Value::Object(map) if map.contains_key("apps") || map.contains_key("groups") => group(file, doc, "", "/", out),
        _ => push_app(file, doc, String::new(), "/", out),
    }
}

/// Checks documents (file name, parsed JSON) against the rules of Marathon `version`.
pub fn check(docs: &[(String, Value)], version: Version) -> (Vec<Problem>, Counts) {
    let mut apps = Vec::new();
    for (file, doc) in docs {
        collect_apps(file, doc, &mut apps);
    }
    let mut problems = Vec::new();
    let mut counts = Counts { apps: apps.len(), volumes: 0 };
    let mut per_app = Vec::new();
    for app in &apps {
        let volumes = check_app(app, version, &mut problems);
        counts.volumes += volumes.len();
        per_app.push(volumes);
    }
    // Cluster-wide name uniqueness.
    let mut users: BTreeMap<&str, BTreeSet<&str>> = BTreeMap::new();
    for (app, volumes) in apps.iter().zip(&per_app) {
        for v in volumes.iter().filter(|v| version < Version(1, 9) || !v.shared) {
            if let Some(name) = v.name {
                users.entry(name).or_default().insert(app.id.as_str());
            }
        }
    }
    for (app, volumes) in apps.iter().zip(&per_app) {
        for v in volumes.iter().filter(|v| version < Version(1, 9) || !v.shared) {
            let Some(name) = v.name else { continue };
            let others: Vec<&str> = users.get(name).into_iter().flatten().copied().filter(|id| *id != app.id).collect();
            if others.is_empty() {
                continue;
            }
            problems.push(Problem {
                file: app.file.to_string(),
                path: format!("{}{}/external/name", app.at, v.at),
                message: format!(
                    "Volume name '{name}' in {} conflicts with volume(s) of same name in app(s): {}",
                    app.id,
                    others.join(", ")
                ),
                rule: "duplicate-across-apps",
                hint: shared_hint(v.shared, version),
            });
        }
    }
    (problems, counts)
}

fn shared_hint(shared: bool, version: Version) -> Option<String> {
    (shared && version < Version(1, 9)).then(|| {
        "\"shared\": true exempts a volume from this rule only from Marathon 1.9 on (--marathon 1.9)".to_string()
    })
}

/// Checks one app; returns its DVDI volumes for the cross-app rule.
fn check_app<'a>(app: &App<'a>, version: Version, problems: &mut Vec<Problem>) -> Vec<DvdiVolume<'a>> {
    let mut push = |path: String, message: String, rule: &'static str, hint: Option<String>| {
        problems.push(Problem { file: app.file.to_string(), path: format!("{}{path}", app.at), message, rule, hint });
    };
    let container = app.value.get("container");
    let kind = container.and_then(|c| c.get("type")).and_then(Value::as_str).unwrap_or("DOCKER").to_ascii_uppercase();
    let mut volumes = Vec::new();
    let list = container.and_then(|c| c.get("volumes")).and_then(Value::as_array);
    for (i, vol) in list.into_iter().flatten().enumerate() {
        let Some(external) = vol.get("external") else { continue };
        let at = format!("/container/volumes({i})");
        let provider = external.get("provider").and_then(Value::as_str).unwrap_or_default();
        if provider != "dvdi" {
            if provider != "csi" {
                push(format!("{at}/external/provider"), "is unknown provider".into(), "unknown-provider", None);
            }
            continue;
        }
        let name = external.get("name").and_then(Value::as_str);
        let shared = external.get("shared").and_then(Value::as_bool).unwrap_or(false);
        let options = external.get("options").and_then(Value::as_object);
        let option = |key: &str| options.and_then(|o| o.get(key));
        let driver = option(DRIVER_OPTION).and_then(Value::as_str);

        // Volume rules (DVDIProvider.volume and DVDIExternalVolumeInfo).
        if name.is_none_or(str::is_empty) {
            push(format!("{at}/external/name"), "must not be empty".into(), "name", None);
        }
        for (key, value) in options.into_iter().flatten() {
            if !is_option_key(key) {
                push(
                    format!("{at}/external/options({key:?})"),
                    format!("must match regular expression '{OPTION_KEY_REGEX}'"),
                    "option-key",
                    None,
                );
            }
            if !value.is_string() {
                push(format!("{at}/external/options({key:?})"), "expected a string value".into(), "option-value", None);
            }
        }
        if let Some(size) = external.get("size").filter(|s| !s.is_null()) {
            match size.as_i64() {
                Some(n) if n > 0 => {}
                Some(n) => push(format!("{at}/external/size"), format!("got {n}, expected more than 0"), "size", None),
                None => push(format!("{at}/external/size"), "expected a whole number".into(), "size", None),
            }
        }
        let driver_path = format!("{at}/external/options(\"{DRIVER_OPTION}\")");
        match driver {
            None => push(driver_path, "not defined".into(), "driver-missing", None),
            Some(d) if !is_label(d) => {
                push(driver_path, format!("must match regular expression '{LABEL_REGEX}'"), "driver-label", None)
            }
            Some(_) => {}
        }
        if driver == Some("rexray") {
            let text = |key: &str| option(key).and_then(Value::as_str);
            for (key, rule) in [("dvdi/volumetype", "rexray-volumetype"), ("dvdi/newfstype", "rexray-newfstype")] {
                if text(key).is_some_and(|v| !is_label(v)) {
                    push(
                        format!("{at}/external/options({key:?})"),
                        format!("must match regular expression '{LABEL_REGEX}'"),
                        rule,
                        None,
                    );
                }
            }
            if let Some(v) = text("dvdi/iops").filter(|v| !is_natural(v)) {
                push(
                    format!("{at}/external/options(\"dvdi/iops\")"),
                    format!("Expected a valid, positive integer instead of {v}"),
                    "rexray-iops",
                    None,
                );
            }
            if let Some(v) = text("dvdi/overwritefs").filter(|v| !is_scala_true(v)) {
                let hint = v
                    .eq_ignore_ascii_case("false")
                    .then(|| "Marathon rejects \"false\" here too; leave dvdi/overwritefs out instead".to_string());
                push(
                    format!("{at}/external/options(\"dvdi/overwritefs\")"),
                    "Expected a valid boolean".into(),
                    "rexray-overwritefs",
                    hint,
                );
            }
        }

        // Container rules (DVDIProvider.app's validContainer).
        let path = vol.get("containerPath").and_then(Value::as_str).unwrap_or_default();
        let path_at = format!("{at}/containerPath");
        if path.is_empty() {
            push(path_at.clone(), "must not be empty".into(), "container-path", None);
        } else if path == "." || path == ".." {
            push(path_at.clone(), "can not be one of (.,..)".into(), "container-path", None);
        }
        if kind == "MESOS" {
            let mode = vol.get("mode").and_then(Value::as_str).unwrap_or("RW");
            if mode != "RW" {
                push(format!("{at}/mode"), "does not equal RW".into(), "mesos-mode", None);
            }
            if version < Version(1, 5) && path.contains('/') {
                push(
                    path_at,
                    format!("must fully match regular expression '{NO_SLASHES_REGEX}'"),
                    "mesos-container-path-slash",
                    Some("nested and absolute container paths need Marathon 1.5+ (--marathon 1.5)".into()),
                );
            }
        } else {
            if version < Version(1, 4)
                && !path.is_empty()
                && !(path.starts_with('/') && path.len() > 1 && !path[1..].starts_with('/'))
            {
                push(path_at, "value must be an absolute path".into(), "docker-container-path-absolute", None);
            }
            if options.is_some_and(|o| o.keys().any(|k| k != DRIVER_OPTION)) {
                push(
                    format!("{at}/external/options"),
                    format!("must only contain {DRIVER_OPTION}"),
                    "docker-options",
                    Some("the Docker containerizer ignores driver options; use a MESOS container to pass them".into()),
                );
            }
            if external.get("size").is_some_and(|s| !s.is_null()) {
                push(
                    format!("{at}/external/size"),
                    "must be undefined for Docker containers".into(),
                    "docker-size",
                    None,
                );
            }
        }
        volumes.push(DvdiVolume { at, name, shared, driver });
    }
    if volumes.is_empty() {
        return volumes;
    }

    // App rules.
    let instances = app.value.get("instances").and_then(Value::as_f64).unwrap_or(1.0);
    if instances > 1.0 {
        push(
            "/instances".into(),
            format!("Number of instances is limited to 1 when declaring DVDI volumes in app [{}]", app.id),
            "instances",
            None,
        );
    }
    let mut seen: BTreeMap<&str, usize> = BTreeMap::new();
    for v in volumes.iter().filter(|v| version < Version(1, 9) || !v.shared) {
        let Some(name) = v.name else { continue };
        let count = seen.entry(name).or_insert(0);
        *count += 1;
        if *count == 2 {
            push(
                format!("{}/external/name", v.at),
                format!("Requested DVDI volume '{name}' is declared more than once within app {}", app.id),
                "duplicate-in-app",
                shared_hint(v.shared, version),
            );
        }
    }
    if let Some(strategy) = app.value.get("upgradeStrategy").filter(|s| s.is_object()) {
        // Marathon's defaults for a partial upgradeStrategy: both fields 1.
        let min = strategy.get("minimumHealthCapacity").and_then(Value::as_f64).unwrap_or(1.0);
        let max = strategy.get("maximumOverCapacity").and_then(Value::as_f64).unwrap_or(1.0);
        if version < Version(1, 3) {
            if min > 0.5 {
                push(
                    "/upgradeStrategy/minimumHealthCapacity".into(),
                    format!("got {}, expected 0.5 or less", java_double(min)),
                    "min-health-capacity",
                    (min <= 1.0).then(|| "Marathon 1.3+ accepts up to 1 (--marathon 1.4)".to_string()),
                );
            }
        } else if !(0.0..=1.0).contains(&min) {
            push(
                "/upgradeStrategy/minimumHealthCapacity".into(),
                format!("got {}, expected between 0.0 and 1.0", java_double(min)),
                "min-health-capacity",
                None,
            );
        }
        if max != 0.0 {
            push(
                "/upgradeStrategy/maximumOverCapacity".into(),
                format!("got {}, expected 0.0", java_double(max)),
                "max-over-capacity",
                None,
            );
        }
    }
    if kind != "MESOS" {
        let drivers: BTreeSet<&str> = volumes.iter().filter_map(|v| v.driver).collect();
        if drivers.len() > 1 {
            push(
                "/container/volumes".into(),
                "Only one volume driver is supported".into(),
                "docker-one-driver",
                Some(format!(
                    "Mesos' Docker containerizer fails such a task at launch (drivers: {})",
                    drivers.into_iter().collect::<Vec<_>>().join(", ")
                )),
            );
        }
    }
    volumes
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn run(doc: Value, version: Version) -> Vec<(String, String, &'static str)> {
        check(&[("app.json".into(), doc)], version).0.into_iter().map(|p| (p.path, p.message, p.rule)).collect()
    }

    #[test]
    fn java_doubles() {
        assert_eq!(java_double(1.0), "1.0");
        assert_eq!(java_double(0.0), "0.0");
        assert_eq!(java_double(0.75), "0.75");
        assert_eq!(java_double(1.2), "1.2");
        assert_eq!(java_double(-1.2), "-1.2");
        assert_eq!(java_double(1e-4), "1.0E-4");
        assert_eq!(java_double(2.5e7), "2.5E7");
    }

    #[test]
    fn patterns() {
        for ok in ["rexray", "a", "my-driver", "0x"] {
            assert!(is_label(ok), "{ok}");
        }
        for bad in ["", "Rexray", "-a", "a-", "a_b", "org/plug:latest", "a.b"] {
            assert!(!is_label(bad), "{bad}");
        }
        for ok in ["dvdi/driver", "dvdi/Size", "dvdi/a.b_c:d-e", "x-y/z"] {
            assert!(is_option_key(ok), "{ok}");
        }
        for bad in ["driver", "dvdi/", "/x", "dvdi/x-", "DVDI/x", "dvdi/x y", "dvdi/a/b"] {
            assert!(!is_option_key(bad), "{bad}");
        }
        assert!(is_natural("100") && is_natural("+5"));
        assert!(!is_natural("0") && !is_natural("-1") && !is_natural("b") && !is_natural("1.5") && !is_natural(""));
        assert!(is_scala_true("TRUE") && !is_scala_true("false") && !is_scala_true("yes"));
    }

    #[test]
    fn ids_and_groups() {
        assert_eq!(absolute_id("hello", "/"), "/hello");
        assert_eq!(absolute_id("../b", "/g/h"), "/g/b");
        assert_eq!(absolute_id("/x/", "/g"), "/x");
        let vol = |name: &str| json!({"containerPath": "/d", "external": {"name": name, "provider": "dvdi", "options": {"dvdi/driver": "rexray"}}});
        let app = |id: &str, name: &str| {
            json!({"id": id, "container": {"type": "DOCKER", "volumes": [vol(name)]},
            "upgradeStrategy": {"minimumHealthCapacity": 0, "maximumOverCapacity": 0}})
        };
        let group = json!({"id": "/", "groups": [{"id": "nested", "apps": [app("app1", "vol"), app("app2", "vol"), app("app3", "other")]}]});
        let problems = run(group, Version::DOCUMENT);
        assert_eq!(
            problems,
            [
                (
                    "/groups(0)/apps(0)/container/volumes(0)/external/name".to_string(),
                    "Volume name 'vol' in /nested/app1 conflicts with volume(s) of same name in app(s): /nested/app2"
                        .to_string(),
                    "duplicate-across-apps"
                ),
                (
                    "/groups(0)/apps(1)/container/volumes(0)/external/name".to_string(),
                    "Volume name 'vol' in /nested/app2 conflicts with volume(s) of same name in app(s): /nested/app1"
                        .to_string(),
                    "duplicate-across-apps"
                ),
            ]
        );
    }

    #[test]
    fn shared_needs_1_9() {
        let vol = json!({"containerPath": "d", "external": {"name": "v", "provider": "dvdi", "shared": true, "options": {"dvdi/driver": "rexray"}}});
        let app = json!({"id": "a", "container": {"type": "MESOS", "volumes": [vol.clone(), vol]}});
        assert_eq!(run(app.clone(), Version(1, 9)), []);
        let old = check(&[("f".into(), app)], Version(1, 4)).0;
        assert_eq!(old.len(), 1);
        assert_eq!(old[0].rule, "duplicate-in-app");
        assert!(old[0].hint.as_deref().unwrap_or_default().contains("1.9"));
    }

    #[test]
    fn partial_upgrade_strategy_uses_marathons_defaults() {
        let app = json!({"id": "a", "upgradeStrategy": {"minimumHealthCapacity": 0},
            "container": {"type": "MESOS", "volumes": [{"containerPath": "d", "mode": "RW",
                "external": {"name": "v", "provider": "dvdi", "options": {"dvdi/driver": "rexray"}}}]}});
        assert_eq!(
            run(app, Version::DOCUMENT),
            [(
                "/upgradeStrategy/maximumOverCapacity".to_string(),
                "got 1.0, expected 0.0".to_string(),
                "max-over-capacity"
            )]
        );
    }

    #[test]
    fn versions_parse() {
        assert_eq!("1.4".parse::<Version>(), Ok(Version(1, 4)));
        assert_eq!("v1.10.5".parse::<Version>(), Ok(Version(1, 10)));
        assert_eq!("2".parse::<Version>(), Ok(Version(2, 0)));
        assert!("x".parse::<Version>().is_err());
        assert_eq!(RULES.iter().map(|(id, _)| *id).collect::<BTreeSet<_>>().len(), RULES.len());
    }
}
