//! Flattened file entries + environment → [`Config`], collecting every invalid value.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use super::keys::{self, env_name, Known, Setting, MODULES, SERVICES};
use super::yaml::{Document, Value};
use super::{
    location, BackendKind, Config, ConfigError, CsiMode, CsiModule, Integration, ModuleConfig, ModuleKind, Paths,
    Problem, ServiceConfig,
};

/// Where Docker looks for plugin sockets.
const PLUGIN_DIR: &str = "/run/docker/plugins";

/// Whether `name` is a driver name as CSI's GetPluginInfo allows: at most 63 characters,
/// alphanumerics, `-`, `_` and `.`, beginning and ending with an alphanumeric.
fn is_csi_driver_name(name: &str) -> bool {
    let edge_ok = |c: Option<char>| c.is_some_and(|c| c.is_ascii_alphanumeric());
    name.len() <= 63
        && edge_ok(name.chars().next())
        && edge_ok(name.chars().last())
        && name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

/// Where a CSI module's socket is by default: `<this>/<driver>/csi.sock`, as the kubelet expects.
const KUBELET_PLUGINS: &str = "/var/lib/kubelet/plugins";

/// The environment variable every CO sets to the CSI socket (`unix:///…` or a path).
const CSI_ENDPOINT_ENV: &str = "CSI_ENDPOINT";

/// The environment variable that sets a CSI module's mode.
const CSI_MODE_ENV: &str = "CSI_MODE";

/// The module served when `rexray.modules` is not configured and `CSI_ENDPOINT` is set.
const DEFAULT_CSI_MODULE: &str = "csi";

/// The module used when `rexray.modules` is not configured.
const DEFAULT_MODULE: &str = "rexray";

/// REX-Ray's name for its default module, which listens on `rexray.sock`.
const REXRAY_DEFAULT_MODULE: &str = "default-docker";

/// The longest socket path `sockaddr_un` can hold (108 bytes with the trailing NUL).
const MAX_SOCKET_PATH: usize = 107;

/// The longest service or module name.
const MAX_NAME: usize = 64;

/// Accepted driver names, for messages.
const DRIVERS: &str = "vfs, loop, ebs (or its aliases ec2, aws)";

/// Where a value came from.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Origin {
    /// The file: the key as written and its line.
    File {
        /// Dotted key as written.
        key: String,
        /// 1-based line.
        line: u64,
    },
    /// An env var standing for a key.
    Env {
        /// The variable.
        var: String,
        /// The key it stands for, in the documented spelling.
        key: String,
    },
}

impl From<Origin> for super::ValueOrigin {
    fn from(origin: Origin) -> Self {
        match origin {
            Origin::File { key, line } => Self { key, line: Some(line), env: None },
            Origin::Env { var, key } => Self { key, line: None, env: Some(var) },
        }
    }
}

/// A raw value and where it came from.
#[derive(Debug, Clone)]
struct Found {
    /// The text.
    value: String,
    /// Its origin.
    origin: Origin,
}

/// A module before it is bound to a service.
#[derive(Debug)]
struct ModuleDraft {
    /// Module name.
    name: String,
    /// Socket path; `None` for a CSI module with no endpoint set (it follows the driver name).
    socket: Option<PathBuf>,
    /// For a CSI module: its driver name if set, and its mode.
    csi: Option<(Option<String>, CsiMode)>,
    /// Socket group.
    group: Option<String>,
    /// The module's own `libstorage.service`, if set, and where it was set.
    service: Option<(String, Origin)>,
}

/// Resolution state: inputs plus everything found wrong so far.
struct Resolver<'a> {
    /// The flattened file.
    doc: &'a Document,
    /// The environment.
    env: &'a BTreeMap<String, String>,
    /// The file, for messages.
    file: Option<&'a Path>,
    /// Invalid values found so far (deduplicated).
    problems: Vec<Problem>,
    /// Warnings found so far (deduplicated).
    warnings: Vec<String>,
}

/// Builds the [`Config`] from a parsed document, its parse warnings and the environment.
///
/// # Errors
///
/// [`ConfigError::Invalid`] with every invalid value, else [`ConfigError::NoSuchService`].
pub(crate) fn resolve(
    doc: &Document,
    warnings: Vec<String>,
    file: Option<&Path>,
    env: &BTreeMap<String, String>,
) -> Result<Config, ConfigError> {
    let paths = super::paths_from_env(env);
    let mut r = Resolver { doc, env, file, problems: Vec::new(), warnings };
    let log_level = r.log_level();
    let log_json = r.log_json();
    let metrics_listen = r.metrics_listen();
    let root_service = r.root_service();
    let drafts = r.module_drafts();
    let services = r.services(root_service.as_ref(), &drafts, &paths);
    let first = services.first().map_or_else(|| BackendKind::Vfs.as_str().to_string(), |s| s.name.clone());
    let root_name = root_service.map(|(name, _)| name);
    let modules: Vec<ModuleConfig> = drafts
        .into_iter()
        .map(|d| {
            let service =
                d.service.map(|(name, _)| name).or_else(|| root_name.clone()).unwrap_or_else(|| first.clone());
            let (kind, socket) = match d.csi {
                None => (ModuleKind::Docker, d.socket.unwrap_or_default()),
                Some((driver, mode)) => {
                    let backend = services.iter().find(|s| s.name == service).map_or("vfs", |s| s.backend.as_str());
                    let driver = driver.unwrap_or_else(|| format!("{backend}.csi.rexray.io"));
                    let socket = d.socket.unwrap_or_else(|| Path::new(KUBELET_PLUGINS).join(&driver).join("csi.sock"));
                    (ModuleKind::Csi(CsiModule { driver, mode }), socket)
                }
            };
            ModuleConfig { service, name: d.name, socket, group: d.group, kind }
        })
        .collect();
    r.unknown_keys();
    r.client_server_keys();

    if !r.problems.is_empty() {
        return Err(ConfigError::Invalid { problems: r.problems, warnings: r.warnings });
    }
    for m in &modules {
        if !services.iter().any(|s| s.name == m.service) {
            return Err(ConfigError::NoSuchService {
                module: m.name.clone(),
                service: m.service.clone(),
                configured: services.iter().map(|s| s.name.clone()).collect(),
            });
        }
    }
    Ok(Config {
        file: file.map(Path::to_path_buf),
        log_level,
        log_json,
        metrics_listen,
        paths,
        services,
        modules,
        warnings: r.warnings,
    })
}

impl Resolver<'_> {
    // ----- raw lookups -------------------------------------------------------------------

    /// A non-empty env var.
    fn env_found(&self, var: &str, key: &str) -> Option<Found> {
        let value = self.env.get(var).filter(|v| !v.trim().is_empty())?;
        Some(Found { value: value.clone(), origin: Origin::Env { var: var.to_string(), key: key.to_string() } })
    }

    /// A scalar file value for a lower-cased key; `None` if absent or null. A list where a
    /// single value is expected is a problem.
    fn file_value(&mut self, lower: &str) -> Option<Found> {
        let entry = self.doc.get(lower)?;
        let origin = Origin::File { key: entry.key.clone(), line: entry.line };
        match &entry.value {
            Value::Null => None,
            Value::Scalar(s) => Some(Found { value: s.clone(), origin }),
            Value::List(_) | Value::Nested => {
                self.problem(&origin, "expected a single value, not a list".to_string());
                None
            }
        }
    }

    /// A setting, looked up in the documented order (see the module docs of `config`):
    /// scoped file keys, the key's env var, shortcut env vars, the root file key, then old
    /// spellings.
    fn lookup(&mut self, scope: Option<&str>, s: &Setting) -> Option<Found> {
        if let Some(scope) = scope {
            for key in std::iter::once(s.key).chain(s.aliases.iter().map(|a| a.key)) {
                let scoped = format!("{scope}.{}", key.to_ascii_lowercase());
                if let Some(found) = self.file_value(&scoped) {
                    return Some(found);
                }
            }
        }
        if let Some(found) = self.env_found(&env_name(s.key), s.key) {
            return Some(found);
        }
        for var in s.shortcuts {
            if let Some(found) = self.env_found(var, s.key) {
                return Some(found);
            }
        }
        if let Some(found) = self.file_value(&s.key.to_ascii_lowercase()) {
            return Some(found);
        }
        for alias in s.aliases {
            if alias.env {
                if let Some(found) = self.env_found(&env_name(alias.key), alias.key) {
                    return Some(found);
                }
            }
            if let Some(found) = self.file_value(&alias.key.to_ascii_lowercase()) {
                return Some(found);
            }
        }
        None
    }

    /// Records an invalid value (once).
    fn problem(&mut self, origin: &Origin, message: String) {
        let problem = match origin {
            Origin::File { key, line } => Problem {
                file: self.file.map(Path::to_path_buf),
                line: Some(*line),
                env: None,
                key: key.clone(),
                message,
            },
            Origin::Env { var, key } => {
                Problem { file: None, line: None, env: Some(var.clone()), key: key.clone(), message }
            }
        };
        if !self.problems.contains(&problem) {
            self.problems.push(problem);
        }
    }

    /// Records a warning (once), prefixed with where it comes from.
    fn warn(&mut self, origin: Option<&Origin>, text: String) {
        let at = match origin {
            Some(Origin::File { line, .. }) => location(self.file, Some(*line)),
            Some(Origin::Env { var, .. }) => format!("env {var}"),
            None => String::new(),
        };
        let warning = if at.is_empty() { text } else { format!("{at}: {text}") };
        if !self.warnings.contains(&warning) {
            self.warnings.push(warning);
        }
    }

    // ----- typed lookups -----------------------------------------------------------------

    /// A boolean from a found value, or `default` (with a problem) if it is not one.
    fn found_bool(&mut self, found: Option<Found>, default: bool) -> bool {
        let Some(f) = found else { return default };
        parse_bool(&f.value).unwrap_or_else(|| {
            self.problem(&f.origin, format!("{:?} is not a boolean (true/false, yes/no, 1/0)", f.value));
            default
        })
    }

    /// A boolean setting.
    fn bool(&mut self, scope: Option<&str>, s: &Setting, default: bool) -> bool {
        let found = self.lookup(scope, s);
        self.found_bool(found, default)
    }

    /// A trimmed, non-empty string setting.
    fn opt_string(&mut self, scope: Option<&str>, s: &Setting) -> Option<String> {
        let f = self.lookup(scope, s)?;
        let v = f.value.trim();
        (!v.is_empty()).then(|| v.to_string())
    }

    /// `create.default.size`: a positive whole number of GiB.
    fn size(&mut self, scope: Option<&str>) -> u64 {
        const DEFAULT: u64 = 16;
        let Some(f) = self.lookup(scope, &keys::SIZE) else {
            return DEFAULT;
        };
        match f.value.trim().parse::<u64>() {
            Ok(0) => {
                self.problem(&f.origin, "the size must be at least 1 GiB".to_string());
                DEFAULT
            }
            Ok(n) => n,
            Err(_) => {
                self.problem(&f.origin, format!("{:?} is not a whole number of GiB", f.value));
                DEFAULT
            }
        }
    }

    /// `create.default.IOPS`: a whole number; 0 means unset, as in REX-Ray.
    fn iops(&mut self, scope: Option<&str>) -> Option<u64> {
        let f = self.lookup(scope, &keys::IOPS)?;
        match f.value.trim().parse::<u64>() {
            Ok(0) => None,
            Ok(n) => Some(n),
            Err(_) => {
                self.problem(&f.origin, format!("{:?} is not a whole number", f.value));
                None
            }
        }
    }

    /// `create.default.fsType`: ext4 or xfs, lower-cased.
    fn fs_type(&mut self, scope: Option<&str>) -> String {
        const DEFAULT: &str = "ext4";
        let Some(f) = self.lookup(scope, &keys::FS_TYPE) else {
            return DEFAULT.to_string();
        };
        let v = f.value.trim().to_ascii_lowercase();
        match v.as_str() {
            "ext4" | "xfs" => v,
            _ => {
                self.problem(&f.origin, format!("{:?} is not a supported filesystem (ext4, xfs)", f.value));
                DEFAULT.to_string()
            }
        }
    }

    /// An absolute directory setting.
    fn abs_path(&mut self, scope: Option<&str>, s: &Setting, default: PathBuf) -> PathBuf {
        let Some(f) = self.lookup(scope, s) else {
            return default;
        };
        let v = f.value.trim();
        if v.starts_with('/') && !v.contains('\0') {
            PathBuf::from(v)
        } else {
            self.problem(&f.origin, format!("{:?} is not an absolute path", f.value));
            default
        }
    }

    /// `mount.rootPath` (or `linux.volume.rootpath`): kept as given; "" means the mount root.
    fn root_path(&mut self, scope: Option<&str>) -> String {
        const DEFAULT: &str = "/data";
        let Some(f) = self.lookup(scope, &keys::ROOT_PATH) else {
            return DEFAULT.to_string();
        };
        let v = f.value.trim();
        if v.contains('\0') || v.split('/').any(|c| c == "..") {
            self.problem(&f.origin, format!("{:?} must stay inside the volume (no \"..\")", f.value));
            return DEFAULT.to_string();
        }
        v.to_string()
    }

    /// `linux.volume.filemode`: octal, at most 07777.
    fn file_mode(&mut self, scope: Option<&str>) -> u32 {
        const DEFAULT: u32 = 0o700;
        let Some(f) = self.lookup(scope, &keys::FILE_MODE) else {
            return DEFAULT;
        };
        parse_mode(&f.value).unwrap_or_else(|| {
            self.problem(&f.origin, format!("{:?} is not an octal file mode such as 0700", f.value));
            DEFAULT
        })
    }

    // ----- global settings ---------------------------------------------------------------

    /// `REXRAY_DEBUG=true` → debug, else `rexray.logLevel`, else info.
    fn log_level(&mut self) -> String {
        if let Some(f) = self.env_found("REXRAY_DEBUG", "debug") {
            if self.found_bool(Some(f), false) {
                return "debug".to_string();
            }
        }
        let Some(f) = self.lookup(None, &keys::LOG_LEVEL) else {
            return "info".to_string();
        };
        let level = match f.value.trim().to_ascii_lowercase().as_str() {
            "trace" => "trace",
            "debug" => "debug",
            "info" => "info",
            "warn" | "warning" => "warn",
            "error" | "fatal" | "panic" => "error",
            _ => {
                self.problem(
                    &f.origin,
                    format!("{:?} is not a log level (trace, debug, info, warn, error, fatal, panic)", f.value),
                );
                "info"
            }
        };
        level.to_string()
    }

    /// `rexray.logFormat`: text or json.
    fn log_json(&mut self) -> bool {
        let Some(f) = self.lookup(None, &keys::LOG_FORMAT) else {
            return false;
        };
        match f.value.trim().to_ascii_lowercase().as_str() {
            "json" => true,
            "text" => false,
            _ => {
                self.problem(&f.origin, format!("{:?} is not a log format (text, json)", f.value));
                false
            }
        }
    }

    /// `rexray.metrics.listen`: `IP:PORT`, `[IPv6]:PORT`, `localhost:PORT` or `:PORT` (all
    /// addresses); unset or empty means no metrics endpoint.
    fn metrics_listen(&mut self) -> Option<std::net::SocketAddr> {
        let f = self.lookup(None, &keys::METRICS_LISTEN)?;
        let v = f.value.trim();
        if v.is_empty() {
            return None;
        }
        let parsed = match v.rsplit_once(':') {
            Some(("", port)) => port.parse::<u16>().ok().map(|p| std::net::SocketAddr::from(([0, 0, 0, 0], p))),
            Some((host, port)) if host.eq_ignore_ascii_case("localhost") => {
                port.parse::<u16>().ok().map(|p| std::net::SocketAddr::from(([127, 0, 0, 1], p)))
            }
            _ => v.parse::<std::net::SocketAddr>().ok(),
        };
        if parsed.is_none() {
            self.problem(
                &f.origin,
                format!("{:?} is not an address and port (e.g. 127.0.0.1:9100, [::1]:9100, :9100)", f.value),
            );
        }
        parsed
    }

    /// The root service name: `libstorage.service`, else the first `rexray.storageDrivers`.
    fn root_service(&mut self) -> Option<(String, Origin)> {
        if let Some(f) = self.lookup(None, &keys::SERVICE) {
            let name = f.value.trim().to_ascii_lowercase();
            if !name.is_empty() {
                return Some((name, f.origin));
            }
        }
        let key = keys::STORAGE_DRIVERS.key;
        let (drivers, origin) = match self.env_found(&env_name(key), key) {
            Some(f) => (split_list(&f.value), f.origin),
            None => {
                let entry = self.doc.get(&key.to_ascii_lowercase())?;
                let origin = Origin::File { key: entry.key.clone(), line: entry.line };
                match &entry.value {
                    Value::Null => return None,
                    Value::Scalar(s) => (split_list(s), origin),
                    Value::List(items) => (items.iter().flat_map(|i| split_list(i)).collect::<Vec<_>>(), origin),
                    Value::Nested => {
                        self.problem(&origin, "expected a list of driver names".to_string());
                        return None;
                    }
                }
            }
        };
        let first = drivers.first()?.to_ascii_lowercase();
        if drivers.len() > 1 {
            self.warn(
                Some(&origin),
                format!("only the first storage driver ({first}) is used; the others are ignored"),
            );
        }
        Some((first, origin))
    }

    // ----- services ----------------------------------------------------------------------

    /// The names declared under `prefix.` (services or modules) in order of appearance, each
    /// with the origin of its first key. Checks the shape of the section.
    fn declared(&mut self, prefix: &str, what: &str) -> Vec<(String, Origin)> {
        let doc = self.doc;
        let depth = prefix.split('.').count();
        let mut names: Vec<(String, Origin)> = Vec::new();
        for (lower, entry) in doc.iter() {
            if lower == prefix {
                if entry.value != Value::Null {
                    let origin = Origin::File { key: entry.key.clone(), line: entry.line };
                    self.problem(&origin, format!("expected a mapping of {what} names to their settings"));
                }
                continue;
            }
            let Some(rest) = lower.strip_prefix(prefix).and_then(|r| r.strip_prefix('.')) else {
                continue;
            };
            let name = rest.split('.').next().unwrap_or_default().to_string();
            let written = entry.key.split('.').take(depth + 1).collect::<Vec<_>>().join(".");
            let origin = Origin::File { key: written, line: entry.line };
            if rest == name && entry.value != Value::Null {
                self.problem(&origin, format!("expected a mapping of settings for the {what}"));
                continue;
            }
            if !names.iter().any(|(n, _)| *n == name) {
                names.push((name, origin));
            }
        }
        names
    }

    /// Checks a service or module name; records a problem if it is not usable.
    fn check_name(&mut self, name: &str, origin: &Origin, what: &str) -> bool {
        let ok = name.len() <= MAX_NAME
            && name.bytes().next().is_some_and(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
            && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_');
        if !ok {
            self.problem(
                origin,
                format!(
                    "{name:?} is not a valid {what} name (up to {MAX_NAME} lowercase letters, digits, '-' and '_', starting with a letter or digit)"
                ),
            );
        }
        ok
    }

    /// The services: those declared under `libstorage.server.services`, else (auto service
    /// mode) the root service plus any service a module names, else `vfs`.
    fn services(
        &mut self,
        root: Option<&(String, Origin)>,
        drafts: &[ModuleDraft],
        paths: &Paths,
    ) -> Vec<ServiceConfig> {
        let declared = self.declared(SERVICES, "service");
        if !declared.is_empty() {
            let mut services = Vec::with_capacity(declared.len());
            for (name, origin) in declared {
                if self.check_name(&name, &origin, "service") {
                    services.push(self.service(&name, Some(&origin), true, paths));
                }
            }
            return services;
        }
        let mut names: Vec<(String, Option<Origin>)> = Vec::new();
        if let Some((name, origin)) = root {
            names.push((name.clone(), Some(origin.clone())));
        }
        for d in drafts {
            if let Some((name, origin)) = &d.service {
                if !names.iter().any(|(n, _)| n == name) {
                    names.push((name.clone(), Some(origin.clone())));
                }
            }
        }
        if names.is_empty() {
            names.push((BackendKind::Vfs.as_str().to_string(), None));
        }
        let mut services = Vec::with_capacity(names.len());
        for (name, origin) in names {
            let ok = match &origin {
                Some(o) => self.check_name(&name, o, "service"),
                None => true,
            };
            if ok {
                services.push(self.service(&name, origin.as_ref(), false, paths));
            }
        }
        services
    }

    /// One service. `scoped` services read `libstorage.server.services.<name>.*` first.
    fn service(&mut self, name: &str, origin: Option<&Origin>, scoped: bool, paths: &Paths) -> ServiceConfig {
        let scope_key = format!("{SERVICES}.{name}");
        let scope = scoped.then_some(scope_key.as_str());
        let backend = self.backend(name, origin, scope);
        let integration = Integration {
            preempt: self.bool(scope, &keys::PREEMPT, false),
            ignore_used_count: self.bool(scope, &keys::IGNORE_USED_COUNT, false),
            implicit_create: self.bool(scope, &keys::IMPLICIT_CREATE, true),
            create_disable: self.bool(scope, &keys::CREATE_DISABLE, false),
            remove_disable: self.bool(scope, &keys::REMOVE_DISABLE, false),
            default_size_gib: self.size(scope),
            default_fs_type: self.fs_type(scope),
            default_volume_type: self.opt_string(scope, &keys::VOLUME_TYPE),
            default_iops: self.iops(scope),
            default_availability_zone: self.opt_string(scope, &keys::AVAILABILITY_ZONE),
            mount_path: self.abs_path(scope, &keys::MOUNT_PATH, paths.lib.join("volumes")),
            root_path: self.root_path(scope),
            file_mode: self.file_mode(scope),
        };
        let vfs_root = self.abs_path(scope, &keys::VFS_ROOT, paths.lib.join("vfs"));
        let loop_root = self.abs_path(scope, &keys::LOOP_ROOT, paths.lib.join("loop"));
        let mut ebs = BTreeMap::new();
        let mut ebs_origins = BTreeMap::new();
        if backend == BackendKind::Ebs {
            for s in keys::EBS_SETTINGS {
                if let Some(f) = self.lookup(scope, s) {
                    let key = s.key.trim_start_matches("ebs.").to_ascii_lowercase();
                    ebs.insert(key.clone(), f.value.trim().to_string());
                    ebs_origins.insert(key, f.origin.into());
                }
            }
        }
        ServiceConfig { name: name.to_string(), backend, integration, vfs_root, loop_root, ebs, ebs_origins }
    }

    /// The service's driver: its scoped `driver`, else its name.
    fn backend(&mut self, name: &str, origin: Option<&Origin>, scope: Option<&str>) -> BackendKind {
        if let Some(f) = scope.and_then(|s| self.file_value(&format!("{s}.driver"))) {
            return parse_driver(&f.value).unwrap_or_else(|| {
                self.problem(&f.origin, format!("{:?} is not a supported driver ({DRIVERS})", f.value));
                BackendKind::Vfs
            });
        }
        parse_driver(name).unwrap_or_else(|| {
            if let Some(origin) = origin {
                let message = if scope.is_some() {
                    format!("no driver is set and the service name {name:?} is not a driver ({DRIVERS})")
                } else {
                    format!("{name:?} is not a supported driver ({DRIVERS})")
                };
                self.problem(origin, message);
            }
            BackendKind::Vfs
        })
    }

    // ----- modules -----------------------------------------------------------------------

    /// The enabled docker modules, or the default `rexray` module if none are configured.
    fn module_drafts(&mut self) -> Vec<ModuleDraft> {
        let declared = self.declared(MODULES, "module");
        if declared.is_empty() && self.env.get(CSI_ENDPOINT_ENV).is_some_and(|v| !v.trim().is_empty()) {
            // Started as a CSI plugin (a Swarm managed plugin, a Kubernetes or Nomad container):
            // serve CSI where the orchestrator says, and no Docker socket.
            let scope = format!("{MODULES}.{DEFAULT_CSI_MODULE}");
            let Some(csi) = self.csi_settings(&scope) else { return Vec::new() };
            let Some(found) = self.csi_endpoint(&scope) else { return Vec::new() };
            return match parse_csi_endpoint(&found.value) {
                Ok(socket) => vec![ModuleDraft {
                    name: DEFAULT_CSI_MODULE.to_string(),
                    socket: Some(socket),
                    csi: Some(csi),
                    group: None,
                    service: None,
                }],
                Err(message) => {
                    self.problem(&found.origin, message);
                    Vec::new()
                }
            };
        }
        if declared.is_empty() {
            return vec![ModuleDraft {
                name: DEFAULT_MODULE.to_string(),
                socket: Some(Path::new(PLUGIN_DIR).join(format!("{DEFAULT_MODULE}.sock"))),
                csi: None,
                group: None,
                service: None,
            }];
        }
        let mut drafts: Vec<ModuleDraft> = Vec::new();
        let mut sockets: BTreeMap<PathBuf, String> = BTreeMap::new();
        for (name, origin) in declared {
            if !self.check_name(&name, &origin, "module") {
                continue;
            }
            let scope = format!("{MODULES}.{name}");
            let mut is_csi = false;
            if let Some(f) = self.file_value(&format!("{scope}.type")) {
                match f.value.trim().to_ascii_lowercase().as_str() {
                    "docker" => {}
                    "csi" => is_csi = true,
                    _ => {
                        self.problem(&f.origin, format!("{:?} is not a supported module type (docker, csi)", f.value));
                        continue;
                    }
                }
            }
            let disabled = self.file_value(&format!("{scope}.disabled"));
            if self.found_bool(disabled, false) {
                continue;
            }
            let csi = if is_csi {
                let Some(csi) = self.csi_settings(&scope) else { continue };
                Some(csi)
            } else {
                None
            };
            let host = if is_csi { self.csi_endpoint(&scope) } else { self.file_value(&format!("{scope}.host")) };
            let parse = if is_csi { parse_csi_endpoint } else { parse_host };
            let socket = match host {
                Some(f) => match parse(&f.value) {
                    Ok(path) => Some((path, f.origin)),
                    Err(message) => {
                        self.problem(&f.origin, message);
                        continue;
                    }
                },
                None if is_csi => None,
                None => {
                    let file = if name == REXRAY_DEFAULT_MODULE { DEFAULT_MODULE } else { name.as_str() };
                    Some((Path::new(PLUGIN_DIR).join(format!("{file}.sock")), origin))
                }
            };
            if let Some((socket, socket_origin)) = &socket {
                if let Some(other) = sockets.get(socket) {
                    self.problem(
                        socket_origin,
                        format!("socket {} is already used by module \"{other}\"", socket.display()),
                    );
                    continue;
                }
                sockets.insert(socket.clone(), name.clone());
            }
            let socket = socket.map(|(path, _)| path);
            let group = self
                .file_value(&format!("{scope}.group"))
                .map(|f| f.value.trim().to_string())
                .filter(|g| !g.is_empty());
            let service = self
                .file_value(&format!("{scope}.libstorage.service"))
                .map(|f| (f.value.trim().to_ascii_lowercase(), f.origin))
                .filter(|(s, _)| !s.is_empty());
            drafts.push(ModuleDraft { name, socket, csi, group, service });
        }
        if drafts.iter().filter(|d| d.csi.is_some()).count() > 1 && self.env.contains_key(CSI_ENDPOINT_ENV) {
            self.problem(
                &Origin::Env { var: CSI_ENDPOINT_ENV.to_string(), key: format!("{MODULES}.<module>.csi.endpoint") },
                "CSI_ENDPOINT names one socket, but more than one CSI module is configured: set csi.endpoint in each module instead".to_string(),
            );
        }
        if drafts.is_empty() && self.problems.is_empty() {
            self.warn(None, "every module is disabled: no Docker plugin socket will be served".to_string());
        }
        drafts
    }

    /// A CSI module's endpoint: `CSI_ENDPOINT` (what every CO sets), else `csi.endpoint`, else
    /// `host`; `None` when none is set.
    fn csi_endpoint(&mut self, scope: &str) -> Option<Found> {
        if let Some(value) = self.env.get(CSI_ENDPOINT_ENV).filter(|v| !v.trim().is_empty()) {
            let key = format!("{scope}.csi.endpoint");
            return Some(Found {
                value: value.clone(),
                origin: Origin::Env { var: CSI_ENDPOINT_ENV.to_string(), key },
            });
        }
        self.file_value(&format!("{scope}.csi.endpoint")).or_else(|| self.file_value(&format!("{scope}.host")))
    }

    /// A CSI module's driver name (if set) and mode; `None` after recording a problem.
    fn csi_settings(&mut self, scope: &str) -> Option<(Option<String>, CsiMode)> {
        let mode = match self.env.get(CSI_MODE_ENV).filter(|v| !v.trim().is_empty()) {
            Some(v) => {
                let key = format!("{scope}.csi.mode");
                Some(Found { value: v.clone(), origin: Origin::Env { var: CSI_MODE_ENV.to_string(), key } })
            }
            None => self.file_value(&format!("{scope}.csi.mode")),
        };
        let mode = match mode {
            None => CsiMode::Both,
            Some(f) => match f.value.trim().to_ascii_lowercase().as_str() {
                "controller" => CsiMode::Controller,
                "node" => CsiMode::Node,
                "both" | "all" | "monolith" | "" => CsiMode::Both,
                _ => {
                    self.problem(&f.origin, format!("{:?} is not a CSI mode (controller, node or both)", f.value));
                    return None;
                }
            },
        };
        let driver = match self.file_value(&format!("{scope}.csi.driver")) {
            None => None,
            Some(f) => {
                let driver = f.value.trim().to_string();
                if !is_csi_driver_name(&driver) {
                    self.problem(
                        &f.origin,
                        format!("{driver:?} is not a CSI driver name (at most 63 letters, digits, '-', '_' and '.', starting and ending with a letter or digit)"),
                    );
                    return None;
                }
                Some(driver)
            }
        };
        Some((driver, mode))
    }

    // ----- unknown keys ------------------------------------------------------------------

    /// Warns about REX-Ray's client/server keys: this daemon is its own server and client.
    /// `libstorage.host` on a unix socket (REX-Ray's embedded default) is not a remote server
    /// and passes quietly.
    fn client_server_keys(&mut self) {
        let doc = self.doc;
        for (lower, entry) in doc.iter() {
            let Some((_, bare)) = lower.rsplit_once("libstorage.") else { continue };
            let remote =
                matches!(&entry.value, Value::Scalar(v) if !v.trim().is_empty() && !v.trim().starts_with("unix://"));
            let what = if bare == "host" && remote {
                "REX-Ray's client/server mode (a libStorage server at this address)"
            } else if bare.starts_with("client.") || bare == "client" {
                "a libStorage client setting"
            } else {
                continue;
            };
            let origin = Origin::File { key: entry.key.clone(), line: entry.line };
            self.warn(
                Some(&origin),
                format!(
                    "{}: {what} is not implemented: this daemon serves Docker on its own sockets and talks to the storage itself; the key is ignored",
                    entry.key
                ),
            );
        }
    }

    /// Warns about every key we do not know, with the nearest known key when close.
    fn unknown_keys(&mut self) {
        let known = Known::new();
        let doc = self.doc;
        for (lower, entry) in doc.iter() {
            if let Some(text) = known.check(&lower, &entry.key, entry.value == Value::Null) {
                let origin = Origin::File { key: entry.key.clone(), line: entry.line };
                self.warn(Some(&origin), text);
            }
        }
    }
}

/// `true/false`, `yes/no`, `on/off`, `y/n`, `1/0`, any case.
fn parse_bool(v: &str) -> Option<bool> {
    match v.trim().to_ascii_lowercase().as_str() {
        "true" | "yes" | "y" | "on" | "1" => Some(true),
        "false" | "no" | "n" | "off" | "0" => Some(false),
        _ => None,
    }
}

/// An octal mode: `0755`, `755` or `0o755`, at most `07777`.
fn parse_mode(v: &str) -> Option<u32> {
    let v = v.trim();
    let digits = v.strip_prefix("0o").or_else(|| v.strip_prefix("0O")).unwrap_or(v);
    if digits.is_empty() || digits.len() > 8 || !digits.bytes().all(|b| (b'0'..=b'7').contains(&b)) {
        return None;
    }
    u32::from_str_radix(digits, 8).ok().filter(|&m| m <= 0o7777)
}

/// `vfs`, `loop`, `ebs`, `ec2`, `aws`, any case.
fn parse_driver(v: &str) -> Option<BackendKind> {
    match v.trim().to_ascii_lowercase().as_str() {
        "vfs" => Some(BackendKind::Vfs),
        "loop" => Some(BackendKind::Loop),
        "ebs" | "ec2" | "aws" => Some(BackendKind::Ebs),
        _ => None,
    }
}

/// `unix:///absolute/path.sock` → the path.
fn parse_host(v: &str) -> Result<PathBuf, String> {
    let trimmed = v.trim();
    let path = trimmed
        .get(..7)
        .filter(|scheme| scheme.eq_ignore_ascii_case("unix://"))
        .and_then(|_| trimmed.get(7..))
        .filter(|p| p.starts_with('/') && p.len() > 1 && !p.contains('\0'))
        .ok_or_else(|| format!("{v:?} is not a unix socket address (expected unix:///absolute/path.sock)"))?;
    if path.len() > MAX_SOCKET_PATH {
        return Err(format!("socket path {path:?} is longer than {MAX_SOCKET_PATH} bytes"));
    }
    Ok(PathBuf::from(path))
}

/// A CSI endpoint: `unix:///absolute/path.sock` or, as Docker sets `CSI_ENDPOINT` for a managed
/// plugin, the bare absolute path.
fn parse_csi_endpoint(v: &str) -> Result<PathBuf, String> {
    let trimmed = v.trim();
    if trimmed.starts_with('/') {
        return parse_host(&format!("unix://{trimmed}"));
    }
    parse_host(trimmed).map_err(|_| {
        format!("{v:?} is not a CSI endpoint (expected unix:///absolute/path.sock or /absolute/path.sock)")
    })
}

/// A space- or comma-separated list (`REXRAY_STORAGEDRIVERS="ec2 xtremio"`).
fn split_list(v: &str) -> Vec<String> {
    v.split(|c: char| c.is_whitespace() || c == ',').filter(|s| !s.is_empty()).map(str::to_string).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn booleans() {
        for t in ["true", "TRUE", "yes", "Y", "on", "1", " true "] {
            assert_eq!(parse_bool(t), Some(true), "{t}");
        }
        for f in ["false", "No", "off", "n", "0"] {
            assert_eq!(parse_bool(f), Some(false), "{f}");
        }
        for bad in ["", "maybe", "2", "truee"] {
            assert_eq!(parse_bool(bad), None, "{bad}");
        }
    }

    #[test]
    fn modes() {
        assert_eq!(parse_mode("0700"), Some(0o700));
        assert_eq!(parse_mode("755"), Some(0o755));
        assert_eq!(parse_mode("0o644"), Some(0o644));
        assert_eq!(parse_mode("07777"), Some(0o7777));
        for bad in ["", "0o", "999", "0x1f", "17777", "-1", "rwx", "000000000000000700"] {
            assert_eq!(parse_mode(bad), None, "{bad}");
        }
    }

    #[test]
    fn drivers() {
        assert_eq!(parse_driver("VFS"), Some(BackendKind::Vfs));
        assert_eq!(parse_driver("loop"), Some(BackendKind::Loop));
        for e in ["ebs", "ec2", "AWS"] {
            assert_eq!(parse_driver(e), Some(BackendKind::Ebs));
        }
        assert_eq!(parse_driver("nfs"), None);
    }

    #[test]
    fn hosts() {
        assert_eq!(parse_host("unix:///run/docker/plugins/x.sock"), Ok(PathBuf::from("/run/docker/plugins/x.sock")));
        assert_eq!(parse_host("UNIX:///tmp/a.sock"), Ok(PathBuf::from("/tmp/a.sock")));
        for bad in
            ["", "unix://", "unix:///", "unix://relative.sock", "tcp://127.0.0.1:7979", "/run/x.sock", "ünix:///x"]
        {
            assert!(parse_host(bad).is_err(), "{bad}");
        }
        let long = format!("unix:///{}", "a".repeat(120));
        assert!(parse_host(&long).expect_err("too long").contains("longer than"));
    }

    #[test]
    fn lists() {
        assert_eq!(split_list("ec2 xtremio"), vec!["ec2", "xtremio"]);
        assert_eq!(split_list(" ec2,, x "), vec!["ec2", "x"]);
        assert!(split_list("  ").is_empty());
    }
}
