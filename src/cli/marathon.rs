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
    ("json-type", "the values these rules read have the JSON types Marathon's schema gives them"),
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
    /// The newest Marathon release line (1.11, 2020); its rules are the default.
    pub const NEWEST: Version = Version(1, 11);
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

/// Finds the apps in one document; a group whose `apps` or `groups` is not an array of objects
/// is a problem.
fn collect_apps<'a>(file: &'a str, doc: &'a Value, out: &mut Vec<App<'a>>, problems: &mut Vec<Problem>) {
    struct Walk<'a, 'o> {
        file: &'a str,
        out: &'o mut Vec<App<'a>>,
        problems: &'o mut Vec<Problem>,
    }
    impl<'a> Walk<'a, '_> {
        /// Notes a value of the wrong JSON type.
        fn mistyped(&mut self, path: String, message: String) {
            self.problems.push(Problem { file: self.file.to_string(), path, message, rule: "json-type", hint: None });
        }

        /// The members of group `g`'s array `key`, or none (noted) when it is not an array.
        fn members(&mut self, g: &'a Value, at: &str, key: &str) -> &'a [Value] {
            let value = g.get(key);
            if let Some(message) = type_problem(value, Json::Array) {
                self.mistyped(format!("{at}/{key}"), message);
            }
            value.and_then(Value::as_array).map_or(&[], Vec::as_slice)
        }

        fn group(&mut self, g: &'a Value, at: &str, parent: &str) {
            if !g.is_object() {
                let path = if at.is_empty() { "/".to_string() } else { at.to_string() };
                self.mistyped(path, format!("expected an object, got {}", json_kind(g)));
                return;
            }
            let gid =
                g.get("id").and_then(Value::as_str).map_or_else(|| parent.to_string(), |id| absolute_id(id, parent));
            for (i, app) in self.members(g, at, "apps").iter().enumerate() {
                self.app(app, format!("{at}/apps({i})"), &gid);
            }
            for (i, sub) in self.members(g, at, "groups").iter().enumerate() {
                self.group(sub, &format!("{at}/groups({i})"), &gid);
            }
        }

        fn app(&mut self, app: &'a Value, at: String, parent: &str) {
            let id = app
                .get("id")
                .and_then(Value::as_str)
                .map_or_else(|| "(no id)".to_string(), |id| absolute_id(id, parent));
            self.out.push(App { file: self.file, at, id, value: app });
        }
    }
    let mut walk = Walk { file, out, problems };
    match doc {
        Value::Array(apps) => {
            for (i, app) in apps.iter().enumerate() {
                walk.app(app, format!("/({i})"), "/");
            }
        }
        Value::Object(map) if map.contains_key("apps") || map.contains_key("groups") => walk.group(doc, "", "/"),
        _ => walk.app(doc, String::new(), "/"),
    }
}

/// Checks documents (file name, parsed JSON) against the rules of Marathon `version`.
pub fn check(docs: &[(String, Value)], version: Version) -> (Vec<Problem>, Counts) {
    let mut apps = Vec::new();
    let mut problems = Vec::new();
    for (file, doc) in docs {
        collect_apps(file, doc, &mut apps, &mut problems);
    }
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

/// The JSON types of the values the rules read.
#[derive(Debug, Clone, Copy)]
enum Json {
    Object,
    Array,
    String,
    Bool,
    Number,
    /// A whole number, 0 or more (`instances`).
    Count,
}

impl Json {
    fn accepts(self, v: &Value) -> bool {
        match self {
            Json::Object => v.is_object(),
            Json::Array => v.is_array(),
            Json::String => v.is_string(),
            Json::Bool => v.is_boolean(),
            Json::Number => v.is_number(),
            Json::Count => v.is_u64(),
        }
    }

    fn expected(self) -> &'static str {
        match self {
            Json::Object => "an object",
            Json::Array => "an array",
            Json::String => "a string",
            Json::Bool => "true or false",
            Json::Number => "a number",
            Json::Count => "a whole number, 0 or more",
        }
    }
}

/// What a JSON value is, for a message.
fn json_kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// The problem, if `value` is present, not null, and not of JSON type `want`.
fn type_problem(value: Option<&Value>, want: Json) -> Option<String> {
    let v = value.filter(|v| !v.is_null() && !want.accepts(v))?;
    Some(format!("expected {}, got {}", want.expected(), json_kind(v)))
}

/// Whether `value` is present, not null, and not of JSON type `want` (see [`type_problem`]).
fn mistyped(value: Option<&Value>, want: Json) -> bool {
    type_problem(value, want).is_some()
}

/// The problems of one app: each is placed under the app's file and path.
struct Report<'p, 'a> {
    app: &'p App<'a>,
    problems: &'p mut Vec<Problem>,
}

impl Report<'_, '_> {
    /// Notes a problem at `path` inside the app (the app itself when `path` is empty).
    fn push(&mut self, path: String, message: String, rule: &'static str, hint: Option<String>) {
        let mut path = format!("{}{path}", self.app.at);
        if path.is_empty() {
            path.push('/');
        }
        self.problems.push(Problem { file: self.app.file.to_string(), path, message, rule, hint });
    }

    /// `value` (at `path`) when it is of JSON type `want`; a value of another type is noted
    /// and, like an absent or null one, gives `None`.
    fn typed<'v>(&mut self, path: &str, value: Option<&'v Value>, want: Json) -> Option<&'v Value> {
        if let Some(message) = type_problem(value, want) {
            self.push(path.to_string(), message, "json-type", None);
        }
        value.filter(|v| want.accepts(v))
    }
}

/// Checks one app; returns its DVDI volumes for the cross-app rule.
fn check_app<'a>(app: &App<'a>, version: Version, problems: &mut Vec<Problem>) -> Vec<DvdiVolume<'a>> {
    let mut r = Report { app, problems };
    let mut volumes = Vec::new();
    if !app.value.is_object() {
        r.push(String::new(), format!("expected an object, got {}", json_kind(app.value)), "json-type", None);
        return volumes;
    }
    let container = r.typed("/container", app.value.get("container"), Json::Object);
    let kind = r
        .typed("/container/type", container.and_then(|c| c.get("type")), Json::String)
        .and_then(Value::as_str)
        .unwrap_or("DOCKER")
        .to_ascii_uppercase();
    let list = r.typed("/container/volumes", container.and_then(|c| c.get("volumes")), Json::Array);
    for (i, vol) in list.and_then(Value::as_array).into_iter().flatten().enumerate() {
        let at = format!("/container/volumes({i})");
        let Some(vol) = r.typed(&at, Some(vol), Json::Object) else { continue };
        let Some(external) = r.typed(&format!("{at}/external"), vol.get("external"), Json::Object) else { continue };
        let provider = r.typed(&format!("{at}/external/provider"), external.get("provider"), Json::String);
        let provider = provider.and_then(Value::as_str).unwrap_or_default();
        if provider != "dvdi" {
            if provider != "csi" {
                r.push(format!("{at}/external/provider"), "is unknown provider".into(), "unknown-provider", None);
            }
            continue;
        }
        let name = r.typed(&format!("{at}/external/name"), external.get("name"), Json::String).and_then(Value::as_str);
        let shared = r.typed(&format!("{at}/external/shared"), external.get("shared"), Json::Bool);
        let shared = shared.and_then(Value::as_bool).unwrap_or(false);
        let options = r.typed(&format!("{at}/external/options"), external.get("options"), Json::Object);
        let options = options.and_then(Value::as_object);
        let option = |key: &str| options.and_then(|o| o.get(key));
        let driver = option(DRIVER_OPTION).and_then(Value::as_str);

        // Volume rules (DVDIProvider.volume and DVDIExternalVolumeInfo).
        if name.is_none_or(str::is_empty) && !mistyped(external.get("name"), Json::String) {
            r.push(format!("{at}/external/name"), "must not be empty".into(), "name", None);
        }
        for (key, value) in options.into_iter().flatten() {
            if !is_option_key(key) {
                r.push(
                    format!("{at}/external/options({key:?})"),
                    format!("must match regular expression '{OPTION_KEY_REGEX}'"),
                    "option-key",
                    None,
                );
            }
            if !value.is_string() {
                r.push(
                    format!("{at}/external/options({key:?})"),
                    "expected a string value".into(),
                    "option-value",
                    None,
                );
            }
        }
        if let Some(size) = external.get("size").filter(|s| !s.is_null()) {
            match size.as_i64() {
                Some(n) if n > 0 => {}
                Some(n) => {
                    r.push(format!("{at}/external/size"), format!("got {n}, expected more than 0"), "size", None);
                }
                None => r.push(format!("{at}/external/size"), "expected a whole number".into(), "size", None),
            }
        }
        let driver_path = format!("{at}/external/options(\"{DRIVER_OPTION}\")");
        match driver {
            None => r.push(driver_path, "not defined".into(), "driver-missing", None),
            Some(d) if !is_label(d) => {
                r.push(driver_path, format!("must match regular expression '{LABEL_REGEX}'"), "driver-label", None);
            }
            Some(_) => {}
        }
        if driver == Some("rexray") {
            let text = |key: &str| option(key).and_then(Value::as_str);
            for (key, rule) in [("dvdi/volumetype", "rexray-volumetype"), ("dvdi/newfstype", "rexray-newfstype")] {
                if text(key).is_some_and(|v| !is_label(v)) {
                    r.push(
                        format!("{at}/external/options({key:?})"),
                        format!("must match regular expression '{LABEL_REGEX}'"),
                        rule,
                        None,
                    );
                }
            }
            if let Some(v) = text("dvdi/iops").filter(|v| !is_natural(v)) {
                r.push(
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
                r.push(
                    format!("{at}/external/options(\"dvdi/overwritefs\")"),
                    "Expected a valid boolean".into(),
                    "rexray-overwritefs",
                    hint,
                );
            }
        }

        // Container rules (DVDIProvider.app's validContainer).
        let path_at = format!("{at}/containerPath");
        let raw_path = vol.get("containerPath");
        let path = r.typed(&path_at, raw_path, Json::String).and_then(Value::as_str).unwrap_or_default();
        // A containerPath of the wrong type is already noted.
        if path.is_empty() && !mistyped(raw_path, Json::String) {
            r.push(path_at.clone(), "must not be empty".into(), "container-path", None);
        } else if path == "." || path == ".." {
            r.push(path_at.clone(), "can not be one of (.,..)".into(), "container-path", None);
        }
        if kind == "MESOS" {
            let mode = r.typed(&format!("{at}/mode"), vol.get("mode"), Json::String);
            let mode = mode.and_then(Value::as_str).unwrap_or("RW");
            if mode != "RW" {
                r.push(format!("{at}/mode"), "does not equal RW".into(), "mesos-mode", None);
            }
            if version < Version(1, 5) && path.contains('/') {
                r.push(
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
                r.push(path_at, "value must be an absolute path".into(), "docker-container-path-absolute", None);
            }
            if options.is_some_and(|o| o.keys().any(|k| k != DRIVER_OPTION)) {
                r.push(
                    format!("{at}/external/options"),
                    format!("must only contain {DRIVER_OPTION}"),
                    "docker-options",
                    Some("the Docker containerizer ignores driver options; use a MESOS container to pass them".into()),
                );
            }
            if external.get("size").is_some_and(|s| !s.is_null()) {
                r.push(
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
    let instances = r.typed("/instances", app.value.get("instances"), Json::Count).and_then(Value::as_u64);
    if instances.unwrap_or(1) > 1 {
        r.push(
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
            r.push(
                format!("{}/external/name", v.at),
                format!("Requested DVDI volume '{name}' is declared more than once within app {}", app.id),
                "duplicate-in-app",
                shared_hint(v.shared, version),
            );
        }
    }
    if let Some(strategy) = r.typed("/upgradeStrategy", app.value.get("upgradeStrategy"), Json::Object) {
        // Marathon's defaults for a partial upgradeStrategy: both fields 1. A value of the wrong
        // type is noted and its rule skipped.
        let mut capacity = |field: &str| {
            let value = strategy.get(field);
            let typed = r.typed(&format!("/upgradeStrategy/{field}"), value, Json::Number);
            match typed {
                Some(v) => v.as_f64(),
                None if value.is_none_or(Value::is_null) => Some(1.0),
                None => None,
            }
        };
        let min = capacity("minimumHealthCapacity");
        let max = capacity("maximumOverCapacity");
        match min {
            Some(min) if version < Version(1, 3) && min > 0.5 => r.push(
                "/upgradeStrategy/minimumHealthCapacity".into(),
                format!("got {}, expected 0.5 or less", java_double(min)),
                "min-health-capacity",
                (min <= 1.0).then(|| "Marathon 1.3+ accepts up to 1 (--marathon 1.4)".to_string()),
            ),
            Some(min) if version >= Version(1, 3) && !(0.0..=1.0).contains(&min) => r.push(
                "/upgradeStrategy/minimumHealthCapacity".into(),
                format!("got {}, expected between 0.0 and 1.0", java_double(min)),
                "min-health-capacity",
                None,
            ),
            _ => {}
        }
        if let Some(max) = max.filter(|m| *m != 0.0) {
            r.push(
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
            r.push(
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
    fn values_of_the_wrong_json_type_are_named_not_skipped() {
        let problems = run(json!([1, null, {"id": "g", "apps": {"a": 1}, "groups": [3]}]), Version::DOCUMENT);
        assert_eq!(
            problems,
            [
                ("/(0)".to_string(), "expected an object, got a number".to_string(), "json-type"),
                ("/(1)".to_string(), "expected an object, got null".to_string(), "json-type"),
            ],
            "an array holds apps, not groups: the object is an app without volumes"
        );
        let group = json!({"id": "/", "apps": {"a": 1}, "groups": [3, {"apps": [null]}]});
        assert_eq!(
            run(group, Version::DOCUMENT),
            [
                ("/apps".to_string(), "expected an array, got an object".to_string(), "json-type"),
                ("/groups(0)".to_string(), "expected an object, got a number".to_string(), "json-type"),
                ("/groups(1)/apps(0)".to_string(), "expected an object, got null".to_string(), "json-type"),
            ]
        );
        // A wrong type skips the rule that reads the value (no made-up default in its message).
        let app = json!({"id": "a", "instances": 2.5, "upgradeStrategy": {"minimumHealthCapacity": "0", "maximumOverCapacity": 0},
            "container": {"type": "MESOS", "volumes": [{"containerPath": 7, "mode": "RW",
                "external": {"name": 5, "provider": "dvdi", "options": {"dvdi/driver": "rexray"}}}]}});
        let paths: Vec<String> =
            run(app, Version::DOCUMENT).into_iter().map(|(path, _, rule)| format!("{rule} {path}")).collect();
        assert_eq!(
            paths,
            [
                "json-type /container/volumes(0)/external/name",
                "json-type /container/volumes(0)/containerPath",
                "json-type /instances",
                "json-type /upgradeStrategy/minimumHealthCapacity",
            ]
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
