//! `rexray.yml` (REX-Ray 0.3 and 0.4+ formats) plus environment overrides → typed [`Config`].
//!
//! Pure: reads the file it is given and the environment map it is given, nothing else.
//!
//! # Layout
//!
//! - `yaml`: YAML text → flat, case-insensitive `dotted.key → value` entries with line numbers.
//! - `keys`: every key we know (with 0.3 aliases and env shortcuts) and the unknown-key check
//!   with "did you mean" suggestions.
//! - `resolve`: entries + environment → [`Config`], collecting every invalid value.
//!
//! # Lookup order
//!
//! For a setting of a service `svc` (or a module `m`), the first of these that is set wins:
//!
//! 1. the key scoped in the file, `libstorage.server.services.svc.<key>` (then its old spellings);
//! 2. the key's env var (`<key>` upper-cased, `.` → `_`), then its shortcut env vars
//!    (`REXRAY_PREEMPT`, `REXRAY_FSTYPE`);
//! 3. the key at the top level of the file;
//! 4. its old (0.3) spellings, in the file (and `LINUX_VOLUME_ROOTPATH` for the root path);
//! 5. the default.
//!
//! Keys are compared case-insensitively, and an empty env var counts as unset (Docker managed
//! plugins pass every settable variable, most of them empty).

use std::collections::BTreeMap;
use std::fmt;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};

mod keys;
mod resolve;
mod yaml;

/// Which backend a service uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BackendKind {
    /// Directories under `vfs.root`.
    Vfs,
    /// Sparse image files attached as loop devices under `loop.root`.
    Loop,
    /// EC2 Elastic Block Store (aliases `ec2`, `aws`).
    Ebs,
}

impl BackendKind {
    /// The canonical driver name.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            BackendKind::Vfs => "vfs",
            BackendKind::Loop => "loop",
            BackendKind::Ebs => "ebs",
        }
    }
}

/// Where REX-Ray keeps its files; relocated as a whole by `REXRAY_HOME`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Paths {
    /// Config directory (`/etc/rexray`).
    pub etc: PathBuf,
    /// State and data directory (`/var/lib/rexray`).
    pub lib: PathBuf,
    /// Runtime directory (`/var/run/rexray`).
    pub run: PathBuf,
    /// Log directory (`/var/log/rexray`).
    pub log: PathBuf,
}

/// `libstorage.integration.volume.operations.*` and their 0.3 aliases, resolved for one service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Integration {
    /// `mount.preempt`: take a volume over from another host.
    pub preempt: bool,
    /// `unmount.ignoreusedcount`: every Unmount deactivates.
    pub ignore_used_count: bool,
    /// `create.implicit`: a Mount of an unknown name creates it.
    pub implicit_create: bool,
    /// `create.disable`: Create succeeds without doing anything.
    pub create_disable: bool,
    /// `remove.disable`: Remove succeeds without doing anything.
    pub remove_disable: bool,
    /// `create.default.size` in GiB.
    pub default_size_gib: u64,
    /// `create.default.fsType`.
    pub default_fs_type: String,
    /// `create.default.type` (EBS volume type), if set.
    pub default_volume_type: Option<String>,
    /// `create.default.IOPS`, if set.
    pub default_iops: Option<u64>,
    /// `create.default.availabilityZone`, if set.
    pub default_availability_zone: Option<String>,
    /// `mount.path`: where block volumes are mounted (`<lib>/volumes`).
    pub mount_path: PathBuf,
    /// `mount.rootPath`: the subdirectory handed to Docker (`/data`; empty = the mount root).
    pub root_path: String,
    /// `linux.volume.filemode`: mode of the root path directory (0o700).
    pub file_mode: u32,
}

impl Integration {
    /// REX-Ray's defaults, with the mount path under `lib` (`<lib>/volumes`).
    #[must_use]
    pub fn defaults(lib: &Path) -> Self {
        Self {
            preempt: false,
            ignore_used_count: false,
            implicit_create: true,
            create_disable: false,
            remove_disable: false,
            default_size_gib: 16,
            default_fs_type: "ext4".into(),
            default_volume_type: None,
            default_iops: None,
            default_availability_zone: None,
            mount_path: lib.join("volumes"),
            root_path: "/data".into(),
            file_mode: 0o700,
        }
    }
}

/// One storage service: a name, a backend and that backend's settings.
#[derive(Debug, Clone, PartialEq)]
pub struct ServiceConfig {
    /// Service name (`libstorage.server.services.<name>`), e.g. `vfs`, `ebs`.
    pub name: String,
    /// The driver.
    pub backend: BackendKind,
    /// Volume operation settings, after scoping (service keys override root keys).
    pub integration: Integration,
    /// `vfs.root` (`<lib>/vfs`).
    pub vfs_root: PathBuf,
    /// `loop.root` (`<lib>/loop`).
    pub loop_root: PathBuf,
    /// Every known `ebs.*` setting given for an EBS service (lower-cased key without the `ebs.`
    /// prefix → value, e.g. `accesskey`), with `aws.*`/`ec2.*` folded in and `EBS_<KEY>` env
    /// overrides applied, for the EBS backend to parse. Empty for other backends.
    pub ebs: BTreeMap<String, String>,
    /// Where each value in [`ServiceConfig::ebs`] came from (same keys), so that a problem the
    /// backend finds in one can name its line or variable.
    pub ebs_origins: BTreeMap<String, ValueOrigin>,
}

/// Where a setting's value came from: a line of the config file, or an env var.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ValueOrigin {
    /// The dotted key: as written in the file, or the documented spelling for env values.
    pub key: String,
    /// 1-based line in the config file, for a value from the file.
    pub line: Option<u64>,
    /// The variable, for a value from the environment.
    pub env: Option<String>,
}

impl ValueOrigin {
    /// A [`Problem`] with this value: `message` says what is wrong; `file` is the config file.
    pub fn problem(&self, file: Option<&Path>, message: String) -> Problem {
        Problem {
            file: if self.env.is_some() { None } else { file.map(Path::to_path_buf) },
            line: self.line,
            env: self.env.clone(),
            key: self.key.clone(),
            message,
        }
    }
}

/// One module: a socket bound to one service, speaking Docker's VolumeDriver protocol or CSI.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModuleConfig {
    /// Module name (`rexray.modules.<name>`).
    pub name: String,
    /// Unix socket path (from `host: unix:///…`; default `/run/docker/plugins/<name>.sock`, for
    /// a CSI module `CSI_ENDPOINT`, `csi.endpoint` or `/var/lib/kubelet/plugins/<driver>/csi.sock`).
    pub socket: PathBuf,
    /// Name of the service the module serves (`libstorage.service`, scoped).
    pub service: String,
    /// Group that owns the socket (mode becomes 0660), if set (`group`, scoped).
    pub group: Option<String>,
    /// What the socket speaks.
    pub kind: ModuleKind,
}

/// What a module's socket speaks (`rexray.modules.<name>.type`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ModuleKind {
    /// Docker's VolumeDriver protocol (`type: docker`, the default).
    Docker,
    /// The Container Storage Interface (`type: csi`).
    Csi(CsiModule),
}

/// A CSI module's settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CsiModule {
    /// The driver name it reports (`csi.driver`; default `<backend>.csi.rexray.io`).
    pub driver: String,
    /// Which CSI services it serves (`csi.mode`, env `CSI_MODE`).
    pub mode: CsiMode,
}

/// Which CSI services a module serves besides Identity.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CsiMode {
    /// The Controller service only (a Kubernetes Deployment, a Nomad controller job).
    Controller,
    /// The Node service only (a DaemonSet, a Nomad node job).
    Node,
    /// Both (Docker Swarm, a single host, a Nomad monolith).
    Both,
}

impl CsiMode {
    /// Whether the Controller service is served.
    pub fn controller(self) -> bool {
        matches!(self, CsiMode::Controller | CsiMode::Both)
    }

    /// Whether the Node service is served.
    pub fn node(self) -> bool {
        matches!(self, CsiMode::Node | CsiMode::Both)
    }

    /// The config spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            CsiMode::Controller => "controller",
            CsiMode::Node => "node",
            CsiMode::Both => "both",
        }
    }
}

/// The effective configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// The file read, if any.
    pub file: Option<PathBuf>,
    /// `rexray.logLevel` (`REXRAY_LOGLEVEL`), lower-cased.
    pub log_level: String,
    /// Log as JSON lines (`rexray.logFormat: json`).
    pub log_json: bool,
    /// Where to serve `/metrics` and `/health` (`rexray.metrics.listen`), if anywhere.
    pub metrics_listen: Option<std::net::SocketAddr>,
    /// Directories.
    pub paths: Paths,
    /// Services, in declaration order.
    pub services: Vec<ServiceConfig>,
    /// Enabled modules (docker and CSI), in declaration order.
    pub modules: Vec<ModuleConfig>,
    /// Warnings to log at start (unknown keys with the nearest known key).
    pub warnings: Vec<String>,
}

/// One invalid value: where it came from, which key, and what is wrong.
///
/// Displays as `file:line: key: message`, or `env VAR: key: message` for an env var.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// The config file, when the value came from one.
    pub file: Option<PathBuf>,
    /// 1-based line of the key in the file, when the value came from the file.
    pub line: Option<u64>,
    /// The env var, when the value came from the environment.
    pub env: Option<String>,
    /// The dotted key: as written in the file, or the documented spelling for env values.
    pub key: String,
    /// What is wrong, e.g. `"abc" is not a whole number of GiB`.
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let at = match &self.env {
            Some(var) => format!("env {var}"),
            None => location(self.file.as_deref(), self.line),
        };
        if at.is_empty() {
            write!(f, "{}: {}", self.key, self.message)
        } else {
            write!(f, "{at}: {}: {}", self.key, self.message)
        }
    }
}

/// Why the configuration could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The config file exists (or was named explicitly) but could not be read.
    #[error("read config file {}", .path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: io::Error,
    },
    /// The file is not valid YAML (or its top level is not a mapping).
    #[error("{}", prefixed(&location(.file.as_deref(), *.line), &format!("invalid YAML: {}", .message)))]
    Syntax {
        /// The file, if any.
        file: Option<PathBuf>,
        /// 1-based line of the error, when known.
        line: Option<u64>,
        /// The parser's message, without the location.
        message: String,
    },
    /// One or more values are invalid; every problem found is listed, one per line.
    #[error("{}", join_lines(.problems))]
    Invalid {
        /// Every invalid value, in the order found.
        problems: Vec<Problem>,
        /// The warnings found meanwhile (unknown keys, …).
        warnings: Vec<String>,
    },
    /// A module is bound (by `libstorage.service`) to a service that is not configured.
    #[error("module {module:?} uses service {service:?}, which is not configured (configured services: {})", .configured.join(", "))]
    NoSuchService {
        /// The module.
        module: String,
        /// The service it names.
        service: String,
        /// The services that are configured.
        configured: Vec<String>,
    },
}

/// `file:line`, `file`, `line N` or nothing.
pub(crate) fn location(file: Option<&Path>, line: Option<u64>) -> String {
    match (file, line) {
        (Some(f), Some(l)) => format!("{}:{l}", f.display()),
        (Some(f), None) => f.display().to_string(),
        (None, Some(l)) => format!("line {l}"),
        (None, None) => String::new(),
    }
}

/// `at: text`, or `text` when `at` is empty.
fn prefixed(at: &str, text: &str) -> String {
    if at.is_empty() {
        text.to_string()
    } else {
        format!("{at}: {text}")
    }
}

/// Problems, one per line.
fn join_lines(problems: &[Problem]) -> String {
    problems.iter().map(ToString::to_string).collect::<Vec<_>>().join("\n")
}

/// The directories, from `REXRAY_HOME` and `REXRAY_HOME_{ETC,LIB,RUN,LOG}`.
///
/// Defaults are `/etc/rexray`, `/var/lib/rexray`, `/var/run/rexray` and `/var/log/rexray`.
/// `REXRAY_HOME=H` moves them to `H/etc/rexray`, `H/var/lib/rexray`, …; each
/// `REXRAY_HOME_*` variable then overrides one directory. Empty variables count as unset.
#[must_use]
pub fn paths_from_env(env: &BTreeMap<String, String>) -> Paths {
    let get = |k: &str| env.get(k).filter(|v| !v.is_empty()).map(PathBuf::from);
    let home = get("REXRAY_HOME").unwrap_or_else(|| PathBuf::from("/"));
    Paths {
        etc: get("REXRAY_HOME_ETC").unwrap_or_else(|| home.join("etc/rexray")),
        lib: get("REXRAY_HOME_LIB").unwrap_or_else(|| home.join("var/lib/rexray")),
        run: get("REXRAY_HOME_RUN").unwrap_or_else(|| home.join("var/run/rexray")),
        log: get("REXRAY_HOME_LOG").unwrap_or_else(|| home.join("var/log/rexray")),
    }
}

/// Finds, reads and parses the config file, then applies `env`.
///
/// The file is `explicit` if given, else `<etc>/rexray.yml`, else `<etc>/config.yml` (with
/// `<etc>` from [`paths_from_env`]), else none: every setting then comes from `env` or its
/// default.
///
/// # Errors
///
/// [`ConfigError::Read`] if `explicit` is missing or a file cannot be read, and everything
/// [`parse`] returns.
pub fn load(explicit: Option<&Path>, env: &BTreeMap<String, String>) -> Result<Config, ConfigError> {
    if let Some(path) = explicit {
        let text = fs::read_to_string(path).map_err(|source| ConfigError::Read { path: path.to_path_buf(), source })?;
        return parse(&text, Some(path), env);
    }
    let etc = paths_from_env(env).etc;
    for name in ["rexray.yml", "config.yml"] {
        let path = etc.join(name);
        match fs::read_to_string(&path) {
            Ok(text) => return parse(&text, Some(&path), env),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(source) => return Err(ConfigError::Read { path, source }),
        }
    }
    parse("", None, env)
}

/// Parses config text (from `file`, used in messages and [`Config::file`]) and applies `env`.
///
/// # Errors
///
/// - [`ConfigError::Syntax`] if `text` is not YAML or its top level is not a mapping;
/// - [`ConfigError::Invalid`] listing every invalid value (bad boolean, size, driver, …);
/// - [`ConfigError::NoSuchService`] if a module names a service that is not configured.
pub fn parse(text: &str, file: Option<&Path>, env: &BTreeMap<String, String>) -> Result<Config, ConfigError> {
    let (doc, warnings) = yaml::parse_document(text, file).map_err(|e| ConfigError::Syntax {
        file: file.map(Path::to_path_buf),
        line: e.line,
        message: e.message,
    })?;
    resolve::resolve(&doc, warnings, file, env)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    fn ok(text: &str, pairs: &[(&str, &str)]) -> Config {
        match parse(text, Some(Path::new("/etc/rexray/rexray.yml")), &env(pairs)) {
            Ok(c) => c,
            Err(e) => panic!("unexpected error: {e}"),
        }
    }

    fn problems(text: &str, pairs: &[(&str, &str)]) -> Vec<String> {
        match parse(text, Some(Path::new("/etc/rexray/rexray.yml")), &env(pairs)) {
            Err(ConfigError::Invalid { problems, .. }) => problems.iter().map(ToString::to_string).collect(),
            other => panic!("expected Invalid, got {other:?}"),
        }
    }

    fn service<'a>(c: &'a Config, name: &str) -> &'a ServiceConfig {
        c.services.iter().find(|s| s.name == name).unwrap_or_else(|| panic!("no service {name} in {:?}", c.services))
    }

    fn default_integration(lib: &Path) -> Integration {
        Integration::defaults(lib)
    }

    // ----- defaults, paths, load ------------------------------------------------------

    #[test]
    fn defaults_without_file() {
        let c = parse("", None, &BTreeMap::new()).expect("defaults");
        assert_eq!(c.file, None);
        assert_eq!(c.log_level, "info");
        assert!(!c.log_json);
        assert!(c.warnings.is_empty(), "{:?}", c.warnings);
        assert_eq!(
            c.paths,
            Paths {
                etc: "/etc/rexray".into(),
                lib: "/var/lib/rexray".into(),
                run: "/var/run/rexray".into(),
                log: "/var/log/rexray".into(),
            }
        );
        assert_eq!(
            c.services,
            vec![ServiceConfig {
                name: "vfs".into(),
                backend: BackendKind::Vfs,
                integration: default_integration(Path::new("/var/lib/rexray")),
                vfs_root: "/var/lib/rexray/vfs".into(),
                loop_root: "/var/lib/rexray/loop".into(),
                ebs: BTreeMap::new(),
                ebs_origins: BTreeMap::new(),
            }]
        );
        assert_eq!(
            c.modules,
            vec![ModuleConfig {
                name: "rexray".into(),
                socket: "/run/docker/plugins/rexray.sock".into(),
                service: "vfs".into(),
                group: None,
                kind: ModuleKind::Docker,
            }]
        );
    }

    #[test]
    fn rexray_home_relocates_everything() {
        let c = ok("", &[("REXRAY_HOME", "/opt/rr")]);
        assert_eq!(c.paths.etc, Path::new("/opt/rr/etc/rexray"));
        assert_eq!(c.paths.lib, Path::new("/opt/rr/var/lib/rexray"));
        assert_eq!(c.paths.run, Path::new("/opt/rr/var/run/rexray"));
        assert_eq!(c.paths.log, Path::new("/opt/rr/var/log/rexray"));
        let s = service(&c, "vfs");
        assert_eq!(s.vfs_root, Path::new("/opt/rr/var/lib/rexray/vfs"));
        assert_eq!(s.loop_root, Path::new("/opt/rr/var/lib/rexray/loop"));
        assert_eq!(s.integration.mount_path, Path::new("/opt/rr/var/lib/rexray/volumes"));
    }

    #[test]
    fn rexray_home_individual_overrides() {
        let p = paths_from_env(&env(&[
            ("REXRAY_HOME", "/h"),
            ("REXRAY_HOME_ETC", "/cfg"),
            ("REXRAY_HOME_LIB", "/data/lib"),
            ("REXRAY_HOME_RUN", "/r"),
            ("REXRAY_HOME_LOG", ""),
        ]));
        assert_eq!(p.etc, Path::new("/cfg"));
        assert_eq!(p.lib, Path::new("/data/lib"));
        assert_eq!(p.run, Path::new("/r"));
        assert_eq!(p.log, Path::new("/h/var/log/rexray"));
        let p = paths_from_env(&env(&[("REXRAY_HOME_LIB", "/x")]));
        assert_eq!(p.lib, Path::new("/x"));
        assert_eq!(p.etc, Path::new("/etc/rexray"));
    }

    #[test]
    fn load_picks_the_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let etc = dir.path().to_string_lossy().into_owned();
        let e = env(&[("REXRAY_HOME_ETC", etc.as_str())]);

        // No file at all: defaults.
        let c = load(None, &e).expect("defaults");
        assert_eq!(c.file, None);

        // config.yml is the fallback.
        let config_yml = dir.path().join("config.yml");
        fs::write(&config_yml, "rexray: {logLevel: error}\n").expect("write");
        let c = load(None, &e).expect("config.yml");
        assert_eq!(c.file.as_deref(), Some(config_yml.as_path()));
        assert_eq!(c.log_level, "error");

        // rexray.yml wins over config.yml.
        let rexray_yml = dir.path().join("rexray.yml");
        fs::write(&rexray_yml, "rexray: {logLevel: debug}\n").expect("write");
        let c = load(None, &e).expect("rexray.yml");
        assert_eq!(c.file.as_deref(), Some(rexray_yml.as_path()));
        assert_eq!(c.log_level, "debug");

        // An explicit file wins, and must exist.
        let other = dir.path().join("other.yml");
        fs::write(&other, "rexray: {logLevel: warn}\n").expect("write");
        assert_eq!(load(Some(&other), &e).expect("explicit").log_level, "warn");
        let missing = dir.path().join("missing.yml");
        match load(Some(&missing), &e) {
            Err(ConfigError::Read { path, source }) => {
                assert_eq!(path, missing);
                assert_eq!(source.kind(), io::ErrorKind::NotFound);
            }
            other => panic!("expected Read, got {other:?}"),
        }

        // Errors name the file.
        fs::write(&rexray_yml, "rexray:\n  logLevel: loud\n").expect("write");
        let err = load(None, &e).expect_err("invalid");
        assert_eq!(
            err.to_string(),
            format!(
                "{}:2: rexray.logLevel: \"loud\" is not a log level (trace, debug, info, warn, error, fatal, panic)",
                rexray_yml.display()
            )
        );
    }

    // ----- formats ---------------------------------------------------------------------

    /// §2.2 of the reference, verbatim.
    const OLD_FORMAT: &str = r#"
rexray:
  logLevel: warn            # panic|fatal|error|warn|info|debug
  osDrivers: [linux]
  storageDrivers: [ec2]     # env REXRAY_STORAGEDRIVERS="ec2 xtremio" (space-separated)
  volumeDrivers: [docker]
  volume:
    mount:   {preempt: true}
    unmount: {ignoreusedcount: true}
    create:  {disable: false}
    remove:  {disable: false}
docker: {size: 16, iops: , volumeType: , fsType: ext4, availabilityZone: , mountDirPath: }
linux:  {volume: {rootpath: /data}}
aws: {accessKey: , secretKey: , region: , rexrayTag: }   # 0.3.3 ec2 driver; tag stored as EC2 tag rexraySet=<rexrayTag>
"#;

    #[test]
    fn old_format_reference_example() {
        let c = ok(OLD_FORMAT, &[]);
        assert!(c.warnings.is_empty(), "{:?}", c.warnings);
        assert_eq!(c.log_level, "warn");
        assert_eq!(c.services.len(), 1);
        let s = service(&c, "ec2");
        assert_eq!(s.backend, BackendKind::Ebs);
        let mut expected = default_integration(Path::new("/var/lib/rexray"));
        expected.preempt = true;
        expected.ignore_used_count = true;
        assert_eq!(s.integration, expected);
        assert!(s.ebs.is_empty(), "{:?}", s.ebs);
        assert_eq!(c.modules.len(), 1);
        assert_eq!(c.modules[0].service, "ec2");
    }

    #[test]
    fn old_format_values() {
        let c = ok(
            r#"
rexray:
  storageDrivers: [ec2, xtremio]
volume:
  mount: {preempt: yes}
  create: {disable: true}
  remove: {disable: "on"}
docker:
  size: 100
  iops: 3000
  volumeType: io1
  fsType: XFS
  availabilityZone: us-east-1a
  mountDirPath: /mnt/rexray
linux: {volume: {rootpath: "", filemode: "0755"}}
aws: {accessKey: AK, secretKey: SK, region: eu-west-1, rexrayTag: prod}
ec2: {endpoint: "https://ec2.example", maxRetries: 3}
"#,
            &[],
        );
        let s = service(&c, "ec2");
        assert_eq!(s.backend, BackendKind::Ebs);
        let i = &s.integration;
        assert!(i.preempt && i.create_disable && i.remove_disable);
        assert_eq!(i.default_size_gib, 100);
        assert_eq!(i.default_iops, Some(3000));
        assert_eq!(i.default_volume_type.as_deref(), Some("io1"));
        assert_eq!(i.default_fs_type, "xfs");
        assert_eq!(i.default_availability_zone.as_deref(), Some("us-east-1a"));
        assert_eq!(i.mount_path, Path::new("/mnt/rexray"));
        assert_eq!(i.root_path, "");
        assert_eq!(i.file_mode, 0o755);
        let expect: BTreeMap<String, String> = [
            ("accesskey", "AK"),
            ("secretkey", "SK"),
            ("region", "eu-west-1"),
            ("rexraytag", "prod"),
            ("endpoint", "https://ec2.example"),
            ("maxretries", "3"),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        assert_eq!(s.ebs, expect);
        assert_eq!(c.warnings.len(), 1, "{:?}", c.warnings);
        assert!(c.warnings[0].contains("only the first storage driver (ec2)"));
    }

    #[test]
    fn new_key_wins_over_old_alias() {
        let c = ok(
            r"
rexray:
  volume: {mount: {preempt: true}}
volume:
  unmount: {ignoreusedcount: true}
docker: {size: 5, fsType: xfs}
libstorage:
  integration:
    volume:
      operations:
        mount: {preempt: false}
        unmount: {ignoreusedcount: false}
        create: {default: {size: 7}}
aws: {region: a}
ec2: {region: b}
ebs: {region: c}
libstorage.service: ebs
",
            &[],
        );
        let s = service(&c, "ebs");
        assert!(!s.integration.preempt);
        assert!(!s.integration.ignore_used_count);
        assert_eq!(s.integration.default_size_gib, 7);
        assert_eq!(s.integration.default_fs_type, "xfs");
        assert_eq!(s.ebs.get("region").map(String::as_str), Some("c"));
        let c = ok("libstorage.service: ebs\naws: {region: a}\nec2: {region: b}\n", &[]);
        assert_eq!(service(&c, "ebs").ebs.get("region").map(String::as_str), Some("b"));
    }

    /// §2.3 of the reference (with the `...` placeholders filled in).
    const NEW_FORMAT: &str = r#"
rexray:
  logLevel: warn
libstorage:
  service: ebs                # Auto Service Mode: if libstorage.host and
                              # libstorage.server.services are unset, creates service "ebs" w/ driver "ebs"
  server:
    services:
      ebs:
        driver: ebs
        ebs: {region: us-east-1}
ebs: {accessKey: AKIA, secretKey: s3cr3t}
"#;

    #[test]
    fn new_format_reference_example() {
        let c = ok(NEW_FORMAT, &[]);
        assert!(c.warnings.is_empty(), "{:?}", c.warnings);
        assert_eq!(c.log_level, "warn");
        assert_eq!(c.services.len(), 1);
        let s = service(&c, "ebs");
        assert_eq!(s.backend, BackendKind::Ebs);
        assert_eq!(s.ebs.get("region").map(String::as_str), Some("us-east-1"));
        assert_eq!(s.ebs.get("accesskey").map(String::as_str), Some("AKIA"));
        assert_eq!(s.ebs.get("secretkey").map(String::as_str), Some("s3cr3t"));
        assert_eq!(c.modules[0].service, "ebs");
        assert_eq!(c.modules[0].socket, Path::new("/run/docker/plugins/rexray.sock"));
    }

    #[test]
    fn auto_service_mode() {
        let c = ok("libstorage:\n  service: loop\n", &[]);
        assert_eq!(c.services.len(), 1);
        assert_eq!(c.services[0].name, "loop");
        assert_eq!(c.services[0].backend, BackendKind::Loop);
        let c = ok("libstorage: {service: AWS}\n", &[]);
        assert_eq!(c.services[0].name, "aws");
        assert_eq!(c.services[0].backend, BackendKind::Ebs);
        // libstorage.service wins over rexray.storageDrivers.
        let c = ok("libstorage.service: vfs\nrexray.storageDrivers: [ec2]\n", &[]);
        assert_eq!(c.services[0].name, "vfs");
        // REXRAY_STORAGEDRIVERS (space-separated) works too.
        let c = ok("", &[("REXRAY_STORAGEDRIVERS", "loop vfs")]);
        assert_eq!(c.services[0].name, "loop");
    }

    /// §7 of the reference: the managed plugin's template, with `${DRIVER}` = ebs, plus the
    /// environment Docker passes (every settable variable, most of them empty).
    const PLUGIN_TEMPLATE: &str = r"
rexray: {loglevel: warn}
libstorage:
  service: ebs
  integration: {volume: {operations: {create: {default: {fsType: ext4}}, mount: {preempt: true}}}}
  server: {services: {ebs: {driver: ebs}}}
";

    #[test]
    fn managed_plugin_template_and_env() {
        let c = ok(PLUGIN_TEMPLATE, &[]);
        assert!(c.warnings.is_empty(), "{:?}", c.warnings);
        assert!(service(&c, "ebs").integration.preempt);

        let plugin_env = [
            ("DOCKER_LEGACY", "true"),
            ("REXRAY_FSTYPE", "xfs"),
            ("REXRAY_LOGLEVEL", "debug"),
            ("REXRAY_PREEMPT", "false"),
            ("HTTP_PROXY", ""),
            ("LIBSTORAGE_INTEGRATION_VOLUME_OPERATIONS_MOUNT_ROOTPATH", ""),
            ("LINUX_VOLUME_ROOTPATH", ""),
            ("LINUX_VOLUME_FILEMODE", ""),
            ("EBS_ACCESSKEY", "AK"),
            ("EBS_ENDPOINT", ""),
            ("EBS_KMSKEYID", ""),
            ("EBS_MAXRETRIES", ""),
            ("EBS_REGION", "us-east-1"),
            ("EBS_SECRETKEY", ""),
            ("EBS_STATUSINITIALDELAY", ""),
            ("EBS_STATUSMAXATTEMPTS", ""),
            ("EBS_STATUSTIMEOUT", "5m"),
            ("EBS_USELARGEDEVICERANGE", ""),
        ];
        let c = ok(PLUGIN_TEMPLATE, &plugin_env);
        assert_eq!(c.log_level, "debug");
        let s = service(&c, "ebs");
        assert!(!s.integration.preempt);
        assert_eq!(s.integration.default_fs_type, "xfs");
        assert_eq!(s.integration.root_path, "/data");
        assert_eq!(s.integration.file_mode, 0o700);
        let expect: BTreeMap<String, String> = [("accesskey", "AK"), ("region", "us-east-1"), ("statustimeout", "5m")]
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        assert_eq!(s.ebs, expect);
    }

    // ----- keys and env ----------------------------------------------------------------

    #[test]
    fn keys_are_case_insensitive() {
        let c = ok(
            r"
REXRAY: {LogLevel: DEBUG, LOGFORMAT: JSON}
LibStorage:
  Service: LOOP
  INTEGRATION.Volume.Operations:
    Mount: {PreEmpt: TRUE, ROOTPATH: /x}
    Create.Default: {SIZE: 3, FSTYPE: Xfs, iops: 10}
LOOP.ROOT: /srv/loop
",
            &[],
        );
        assert!(c.warnings.is_empty(), "{:?}", c.warnings);
        assert_eq!(c.log_level, "debug");
        assert!(c.log_json);
        let s = service(&c, "loop");
        assert_eq!(s.backend, BackendKind::Loop);
        assert!(s.integration.preempt);
        assert_eq!(s.integration.root_path, "/x");
        assert_eq!(s.integration.default_size_gib, 3);
        assert_eq!(s.integration.default_fs_type, "xfs");
        assert_eq!(s.integration.default_iops, Some(10));
        assert_eq!(s.loop_root, Path::new("/srv/loop"));
    }

    #[test]
    fn metrics_listen_is_off_by_default_and_parsed_from_file_or_env() {
        use std::net::SocketAddr;
        assert_eq!(ok("", &[]).metrics_listen, None);
        assert_eq!(ok("rexray: {metrics: {listen: \"\"}}\n", &[]).metrics_listen, None);
        let c = ok("rexray:\n  metrics:\n    listen: 127.0.0.1:9100\n", &[]);
        assert!(c.warnings.is_empty(), "{:?}", c.warnings);
        assert_eq!(c.metrics_listen, Some("127.0.0.1:9100".parse::<SocketAddr>().unwrap()));
        let c = ok("rexray.metrics.listen: 127.0.0.1:9100\n", &[("REXRAY_METRICS_LISTEN", ":9200")]);
        assert_eq!(c.metrics_listen, Some("0.0.0.0:9200".parse::<SocketAddr>().unwrap()));
        assert_eq!(
            ok("", &[("REXRAY_METRICS_LISTEN", "localhost:9300")]).metrics_listen,
            Some("127.0.0.1:9300".parse::<SocketAddr>().unwrap())
        );
        assert_eq!(
            ok("", &[("REXRAY_METRICS_LISTEN", "[::1]:9400")]).metrics_listen,
            Some("[::1]:9400".parse::<SocketAddr>().unwrap())
        );
        let f = "/etc/rexray/rexray.yml";
        assert_eq!(
            problems("rexray:\n  metrics:\n    listen: metrics.example:99999\n", &[]),
            vec![format!(
                "{f}:3: rexray.metrics.listen: \"metrics.example:99999\" is not an address and port (e.g. 127.0.0.1:9100, [::1]:9100, :9100)"
            )]
        );
        assert_eq!(
            problems("", &[("REXRAY_METRICS_LISTEN", "9100")]),
            vec!["env REXRAY_METRICS_LISTEN: rexray.metrics.listen: \"9100\" is not an address and port (e.g. 127.0.0.1:9100, [::1]:9100, :9100)".to_string()]
        );
    }

    #[test]
    fn env_overrides() {
        let text = r#"
rexray: {logLevel: warn}
libstorage:
  service: vfs
  integration: {volume: {operations: {mount: {preempt: false, rootPath: /a}}}}
vfs: {root: /from/file}
linux: {volume: {filemode: "0700"}}
"#;
        let c = ok(
            text,
            &[
                ("LIBSTORAGE_INTEGRATION_VOLUME_OPERATIONS_MOUNT_PREEMPT", "true"),
                ("REXRAY_PREEMPT", "false"),
                ("LIBSTORAGE_SERVICE", "loop"),
                ("VFS_ROOT", "/env/vfs"),
                ("LOOP_ROOT", "/env/loop"),
                ("LINUX_VOLUME_FILEMODE", "0755"),
                ("LINUX_VOLUME_ROOTPATH", "/ignored-because-rootpath-is-set"),
                ("REXRAY_LOGLEVEL", "error"),
                ("REXRAY_LOGFORMAT", "json"),
            ],
        );
        assert_eq!(c.log_level, "error");
        assert!(c.log_json);
        let s = service(&c, "loop");
        assert!(s.integration.preempt, "the long env name beats REXRAY_PREEMPT");
        assert_eq!(s.integration.root_path, "/a");
        assert_eq!(s.integration.file_mode, 0o755);
        assert_eq!(s.vfs_root, Path::new("/env/vfs"));
        assert_eq!(s.loop_root, Path::new("/env/loop"));

        // Shortcuts beat the file; LINUX_VOLUME_ROOTPATH applies when rootPath is unset.
        let c = ok(
            "libstorage.integration.volume.operations.mount.preempt: true\n",
            &[("REXRAY_PREEMPT", "no"), ("LINUX_VOLUME_ROOTPATH", "/r")],
        );
        assert!(!c.services[0].integration.preempt);
        assert_eq!(c.services[0].integration.root_path, "/r");

        // REXRAY_DEBUG beats everything for the log level.
        let c = ok("rexray.logLevel: warn\n", &[("REXRAY_DEBUG", "true"), ("REXRAY_LOGLEVEL", "info")]);
        assert_eq!(c.log_level, "debug");
        let c = ok("rexray.logLevel: warn\n", &[("REXRAY_DEBUG", "false")]);
        assert_eq!(c.log_level, "warn");

        // Log level aliases.
        for (given, want) in [("warning", "warn"), ("fatal", "error"), ("PANIC", "error"), ("trace", "trace")] {
            assert_eq!(ok("", &[("REXRAY_LOGLEVEL", given)]).log_level, want);
        }
    }

    #[test]
    fn scoped_file_beats_root_env_and_root_file() {
        let text = r"
libstorage:
  integration: {volume: {operations: {create: {default: {size: 10}}}}}
  server:
    services:
      small:
        driver: loop
        libstorage.integration.volume.operations.create.default.size: 1
        loop.root: /small
      big:
        driver: loop
";
        let c = ok(text, &[("LIBSTORAGE_INTEGRATION_VOLUME_OPERATIONS_CREATE_DEFAULT_SIZE", "50")]);
        assert_eq!(service(&c, "small").integration.default_size_gib, 1);
        assert_eq!(service(&c, "small").loop_root, Path::new("/small"));
        assert_eq!(service(&c, "big").integration.default_size_gib, 50);
        assert_eq!(service(&c, "big").loop_root, Path::new("/var/lib/rexray/loop"));
    }

    #[test]
    fn ebs_settings_and_aliases() {
        let text = r"
libstorage:
  service: ebs2
  server:
    services:
      ebs1: {driver: ebs}
      ebs2:
        driver: ec2
        ebs: {region: us-west-2, useLargeDeviceRange: true}
        aws: {tag: scoped}
      plain:
        driver: vfs
aws: {accessKey: AK, secretKey: SK, kmsKeyID: key, tag: root}
ec2: {region: eu-central-1}
ebs: {maxRetries: 4, nvmeBinPath: /bin/nvme}
";
        let c = ok(text, &[("EBS_STATUSTIMEOUT", "1m")]);
        assert!(c.warnings.is_empty(), "{:?}", c.warnings);
        let one = service(&c, "ebs1");
        assert_eq!(one.ebs.get("region").map(String::as_str), Some("eu-central-1"));
        assert_eq!(one.ebs.get("tag").map(String::as_str), Some("root"));
        assert_eq!(one.ebs.get("accesskey").map(String::as_str), Some("AK"));
        assert_eq!(one.ebs.get("kmskeyid").map(String::as_str), Some("key"));
        assert_eq!(one.ebs.get("maxretries").map(String::as_str), Some("4"));
        assert_eq!(one.ebs.get("nvmebinpath").map(String::as_str), Some("/bin/nvme"));
        assert_eq!(one.ebs.get("statustimeout").map(String::as_str), Some("1m"));
        let two = service(&c, "ebs2");
        assert_eq!(two.backend, BackendKind::Ebs);
        assert_eq!(two.ebs.get("region").map(String::as_str), Some("us-west-2"));
        assert_eq!(two.ebs.get("uselargedevicerange").map(String::as_str), Some("true"));
        assert_eq!(two.ebs.get("tag").map(String::as_str), Some("scoped"));
        assert!(service(&c, "plain").ebs.is_empty());
        // Every module defaults to libstorage.service.
        assert_eq!(c.modules[0].service, "ebs2");
    }

    #[test]
    fn unknown_key_warnings() {
        let text = "\
rexray:
  logLevel: info
libstorage:
  integration:
    volume:
      operations:
        mount:
          prempt: true
ebs:
  regoin: x
  bogus: y
aws:
  useLargeDeviceRange: true
libstorage.tls: false
libstorage.host: unix:///x.sock
csi: {driver: libstorage}
whatever: 1
";
        let c = match parse(text, Some(Path::new("rexray.yml")), &BTreeMap::new()) {
            Ok(c) => c,
            Err(e) => panic!("{e}"),
        };
        assert_eq!(
            c.warnings,
            vec![
                "rexray.yml:8: unknown key \"libstorage.integration.volume.operations.mount.prempt\" (did you mean \"libstorage.integration.volume.operations.mount.preempt\"?)".to_string(),
                "rexray.yml:10: unknown key \"ebs.regoin\" (did you mean \"ebs.region\"?)".to_string(),
                "rexray.yml:11: unknown key \"ebs.bogus\"".to_string(),
                "rexray.yml:13: unknown key \"aws.useLargeDeviceRange\" (did you mean \"ebs.useLargeDeviceRange\"?)".to_string(),
                "rexray.yml:17: unknown key \"whatever\"".to_string(),
            ]
        );
        // The typo is not applied.
        assert!(!c.services[0].integration.preempt);
    }

    // ----- modules ---------------------------------------------------------------------

    #[test]
    fn modules_bound_to_their_services() {
        let text = r"
rexray:
  modules:
    default-docker:
      type: docker
      libstorage.service: vfs
    rexray-loop:
      host: unix:///run/docker/plugins/rexray-loop.sock
      group: docker
      libstorage: {service: loop}
    third:
      desc: uses the root service
      spec: /etc/docker/plugins/third.spec
    off:
      disabled: true
    csi-mod:
      type: csi
libstorage:
  service: loop
  server:
    services:
      vfs: {}
      loop:
";
        let c = ok(text, &[]);
        assert_eq!(c.services.len(), 2);
        assert_eq!(service(&c, "vfs").backend, BackendKind::Vfs);
        assert_eq!(service(&c, "loop").backend, BackendKind::Loop);
        assert_eq!(
            c.modules,
            vec![
                ModuleConfig {
                    name: "default-docker".into(),
                    socket: "/run/docker/plugins/rexray.sock".into(),
                    service: "vfs".into(),
                    group: None,
                    kind: ModuleKind::Docker,
                },
                ModuleConfig {
                    name: "rexray-loop".into(),
                    socket: "/run/docker/plugins/rexray-loop.sock".into(),
                    service: "loop".into(),
                    group: Some("docker".into()),
                    kind: ModuleKind::Docker,
                },
                ModuleConfig {
                    name: "third".into(),
                    socket: "/run/docker/plugins/third.sock".into(),
                    service: "loop".into(),
                    group: None,
                    kind: ModuleKind::Docker,
                },
                ModuleConfig {
                    name: "csi-mod".into(),
                    socket: "/var/lib/kubelet/plugins/loop.csi.rexray.io/csi.sock".into(),
                    service: "loop".into(),
                    group: None,
                    kind: ModuleKind::Csi(CsiModule { driver: "loop.csi.rexray.io".into(), mode: CsiMode::Both }),
                },
            ]
        );
        assert!(c.warnings.is_empty(), "{:?}", c.warnings);
    }

    #[test]
    fn csi_endpoint_alone_makes_the_daemon_a_csi_plugin() {
        let c = ok("libstorage.service: loop\n", &[("CSI_ENDPOINT", "/run/docker/plugins/csi.sock")]);
        assert_eq!(c.modules.len(), 1, "{:?}", c.modules);
        assert_eq!(c.modules[0].name, "csi");
        assert_eq!(c.modules[0].socket, Path::new("/run/docker/plugins/csi.sock"));
        assert_eq!(c.modules[0].service, "loop");
        assert_eq!(
            c.modules[0].kind,
            ModuleKind::Csi(CsiModule { driver: "loop.csi.rexray.io".into(), mode: CsiMode::Both })
        );
        let c = ok("libstorage.service: loop\n", &[("CSI_ENDPOINT", "unix:///csi/csi.sock"), ("CSI_MODE", "node")]);
        assert_eq!(
            c.modules[0].kind,
            ModuleKind::Csi(CsiModule { driver: "loop.csi.rexray.io".into(), mode: CsiMode::Node })
        );
        let found = problems("libstorage.service: loop\n", &[("CSI_ENDPOINT", "tcp://0.0.0.0:1")]);
        assert!(found.iter().any(|p| p.contains("CSI_ENDPOINT") && p.contains("unix")), "{found:?}");
    }

    #[test]
    fn csi_modules_take_endpoint_mode_and_driver_from_config_or_the_environment() {
        let text = "rexray.modules.k8s: {type: csi, csi: {endpoint: 'unix:///csi/x.sock', mode: controller, driver: my.driver}}\n";
        let c = ok(text, &[]);
        assert_eq!(c.modules[0].socket, Path::new("/csi/x.sock"));
        assert_eq!(
            c.modules[0].kind,
            ModuleKind::Csi(CsiModule { driver: "my.driver".into(), mode: CsiMode::Controller })
        );
        let c = ok(text, &[("CSI_ENDPOINT", "unix:///plugin/csi.sock"), ("CSI_MODE", "node")]);
        assert_eq!(c.modules[0].socket, Path::new("/plugin/csi.sock"));
        assert_eq!(c.modules[0].kind, ModuleKind::Csi(CsiModule { driver: "my.driver".into(), mode: CsiMode::Node }));
        let found = problems("rexray.modules.k8s: {type: csi, csi: {mode: sideways}}\n", &[]);
        assert!(found.iter().any(|p| p.contains("controller, node or both")), "{found:?}");
        let found = problems("rexray.modules.k8s: {type: csi, csi: {driver: -bad-}}\n", &[]);
        assert!(found.iter().any(|p| p.contains("not a CSI driver name")), "{found:?}");
        let found = problems("rexray.modules.k8s: {type: bogus}\n", &[]);
        assert!(found.iter().any(|p| p.contains("docker, csi")), "{found:?}");
    }

    #[test]
    fn module_defaults_to_first_service() {
        let c = ok("libstorage.server.services: {b: {driver: loop}, a: {driver: vfs}}\nrexray.modules.m: {}\n", &[]);
        assert_eq!(c.modules[0].service, "b");
        assert_eq!(c.modules[0].socket, Path::new("/run/docker/plugins/m.sock"));
    }

    #[test]
    fn auto_mode_creates_services_named_by_modules() {
        let c = ok("rexray.modules:\n  a: {libstorage.service: loop}\n  b: {}\n", &[]);
        assert_eq!(c.services.len(), 1);
        assert_eq!(c.services[0].backend, BackendKind::Loop);
        assert_eq!(c.modules[1].service, "loop");
    }

    #[test]
    fn module_with_unknown_service() {
        let text = "\
rexray.modules:
  m1: {libstorage.service: vfs}
  m2: {libstorage.service: lop}
libstorage.server.services:
  vfs: {driver: vfs}
  loop: {driver: loop}
";
        match parse(text, None, &BTreeMap::new()) {
            Err(e @ ConfigError::NoSuchService { .. }) => {
                assert_eq!(
                    e.to_string(),
                    "module \"m2\" uses service \"lop\", which is not configured (configured services: vfs, loop)"
                );
            }
            other => panic!("expected NoSuchService, got {other:?}"),
        }
        // The root libstorage.service is checked too, through the default module.
        let text = "libstorage.service: nope\nlibstorage.server.services.vfs.driver: vfs\n";
        assert!(matches!(
            parse(text, None, &BTreeMap::new()),
            Err(ConfigError::NoSuchService { module, service, .. }) if module == "rexray" && service == "nope"
        ));
    }

    #[test]
    fn all_modules_disabled() {
        let c = ok("rexray.modules.rexray.disabled: true\n", &[]);
        assert!(c.modules.is_empty());
        assert!(c.warnings.iter().any(|w| w.contains("every module is disabled")));
    }

    // ----- invalid values --------------------------------------------------------------

    #[test]
    fn invalid_size_message() {
        let text = "\
libstorage:
  integration:
    volume:
      operations:
        create:
          default:
            size: abc
";
        let err = parse(text, Some(Path::new("/etc/rexray/rexray.yml")), &BTreeMap::new()).expect_err("invalid");
        assert_eq!(
            err.to_string(),
            "/etc/rexray/rexray.yml:7: libstorage.integration.volume.operations.create.default.size: \"abc\" is not a whole number of GiB"
        );
        match err {
            ConfigError::Invalid { problems, .. } => {
                assert_eq!(
                    problems,
                    vec![Problem {
                        file: Some("/etc/rexray/rexray.yml".into()),
                        line: Some(7),
                        env: None,
                        key: "libstorage.integration.volume.operations.create.default.size".into(),
                        message: "\"abc\" is not a whole number of GiB".into(),
                    }]
                );
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn every_invalid_value_is_reported() {
        let text = r#"rexray:
  logLevel: verbose
  logFormat: xml
  modules:
    -bad: {}
    m1: {host: "tcp://127.0.0.1:7979"}
    m2: {type: nfs}
    m3: {disabled: maybe}
libstorage:
  integration:
    volume:
      operations:
        mount: {preempt: sometimes, path: relative/dir, rootPath: ../up}
        create:
          implicit: 2
          default: {size: 0, fsType: btrfs, IOPS: many}
  server:
    services:
      s1: {driver: nfs}
      nfs: {}
      s3: [a, b]
vfs.root: vfs
linux.volume.filemode: "0999"
"#;
        let p = problems(text, &[]);
        let f = "/etc/rexray/rexray.yml";
        let expected = vec![
            format!("{f}:2: rexray.logLevel: \"verbose\" is not a log level (trace, debug, info, warn, error, fatal, panic)"),
            format!("{f}:3: rexray.logFormat: \"xml\" is not a log format (text, json)"),
            format!("{f}:5: rexray.modules.-bad: \"-bad\" is not a valid module name (up to 64 lowercase letters, digits, '-' and '_', starting with a letter or digit)"),
            format!("{f}:6: rexray.modules.m1.host: \"tcp://127.0.0.1:7979\" is not a unix socket address (expected unix:///absolute/path.sock)"),
            format!("{f}:7: rexray.modules.m2.type: \"nfs\" is not a supported module type (docker, csi)"),
            format!("{f}:8: rexray.modules.m3.disabled: \"maybe\" is not a boolean (true/false, yes/no, 1/0)"),
            format!("{f}:21: libstorage.server.services.s3: expected a mapping of settings for the service"),
            format!("{f}:19: libstorage.server.services.s1.driver: \"nfs\" is not a supported driver (vfs, loop, ebs (or its aliases ec2, aws))"),
            format!("{f}:13: libstorage.integration.volume.operations.mount.preempt: \"sometimes\" is not a boolean (true/false, yes/no, 1/0)"),
            format!("{f}:15: libstorage.integration.volume.operations.create.implicit: \"2\" is not a boolean (true/false, yes/no, 1/0)"),
            format!("{f}:16: libstorage.integration.volume.operations.create.default.size: the size must be at least 1 GiB"),
            format!("{f}:16: libstorage.integration.volume.operations.create.default.fsType: \"btrfs\" is not a supported filesystem (ext4, xfs)"),
            format!("{f}:16: libstorage.integration.volume.operations.create.default.IOPS: \"many\" is not a whole number"),
            format!("{f}:13: libstorage.integration.volume.operations.mount.path: \"relative/dir\" is not an absolute path"),
            format!("{f}:13: libstorage.integration.volume.operations.mount.rootPath: \"../up\" must stay inside the volume (no \"..\")"),
            format!("{f}:23: linux.volume.filemode: \"0999\" is not an octal file mode such as 0700"),
            format!("{f}:22: vfs.root: \"vfs\" is not an absolute path"),
            format!("{f}:20: libstorage.server.services.nfs: no driver is set and the service name \"nfs\" is not a driver (vfs, loop, ebs (or its aliases ec2, aws))"),
        ];
        assert_eq!(p, expected);
        // One error, one problem per line.
        let err = parse(text, Some(Path::new(f)), &BTreeMap::new()).expect_err("invalid");
        assert_eq!(err.to_string(), expected.join("\n"));
    }

    #[test]
    fn invalid_env_values_name_the_variable() {
        let p = problems(
            "",
            &[
                ("REXRAY_PREEMPT", "maybe"),
                ("LIBSTORAGE_INTEGRATION_VOLUME_OPERATIONS_CREATE_DEFAULT_SIZE", "1.5"),
                ("REXRAY_FSTYPE", "zfs"),
                ("LINUX_VOLUME_FILEMODE", "rwx"),
                ("LIBSTORAGE_SERVICE", "nfs"),
                ("REXRAY_DEBUG", "loud"),
            ],
        );
        assert_eq!(
            p,
            vec![
                "env REXRAY_DEBUG: debug: \"loud\" is not a boolean (true/false, yes/no, 1/0)",
                "env LIBSTORAGE_SERVICE: libstorage.service: \"nfs\" is not a supported driver (vfs, loop, ebs (or its aliases ec2, aws))",
                "env REXRAY_PREEMPT: libstorage.integration.volume.operations.mount.preempt: \"maybe\" is not a boolean (true/false, yes/no, 1/0)",
                "env LIBSTORAGE_INTEGRATION_VOLUME_OPERATIONS_CREATE_DEFAULT_SIZE: libstorage.integration.volume.operations.create.default.size: \"1.5\" is not a whole number of GiB",
                "env REXRAY_FSTYPE: libstorage.integration.volume.operations.create.default.fsType: \"zfs\" is not a supported filesystem (ext4, xfs)",
                "env LINUX_VOLUME_FILEMODE: linux.volume.filemode: \"rwx\" is not an octal file mode such as 0700",
            ]
        );
    }

    #[test]
    fn shape_errors() {
        let p = problems("libstorage.service: [a, b]\n", &[]);
        assert_eq!(p, vec!["/etc/rexray/rexray.yml:1: libstorage.service: expected a single value, not a list"]);
        let p = problems("libstorage.server.services: vfs\n", &[]);
        assert_eq!(
            p,
            vec!["/etc/rexray/rexray.yml:1: libstorage.server.services: expected a mapping of service names to their settings"]
        );
        let p = problems("rexray.modules:\n  a: {}\n  b: {host: \"unix:///run/docker/plugins/a.sock\"}\n", &[]);
        assert_eq!(
            p,
            vec!["/etc/rexray/rexray.yml:3: rexray.modules.b.host: socket /run/docker/plugins/a.sock is already used by module \"a\""]
        );
    }

    #[test]
    fn problems_without_a_file() {
        match parse("vfs.root: x\n", None, &BTreeMap::new()) {
            Err(e) => assert_eq!(e.to_string(), "line 1: vfs.root: \"x\" is not an absolute path"),
            Ok(c) => panic!("{c:?}"),
        }
    }

    #[test]
    fn malformed_yaml() {
        let err = parse(
            "rexray:\n  logLevel: [warn\nlibstorage: {}\n",
            Some(Path::new("/etc/rexray/rexray.yml")),
            &BTreeMap::new(),
        )
        .expect_err("syntax");
        match &err {
            ConfigError::Syntax { file, line, message } => {
                assert_eq!(file.as_deref(), Some(Path::new("/etc/rexray/rexray.yml")));
                assert_eq!(*line, Some(3));
                assert!(!message.is_empty());
            }
            other => panic!("expected Syntax, got {other:?}"),
        }
        assert!(err.to_string().starts_with("/etc/rexray/rexray.yml:3: invalid YAML: "), "{err}");
        let err = parse("just a string", None, &BTreeMap::new()).expect_err("not a map");
        assert_eq!(err.to_string(), "line 1: invalid YAML: the top level must be a mapping of keys to values");
    }

    #[test]
    fn never_panics() {
        let inputs = [
            "",
            "~",
            "[]",
            "{}",
            "libstorage: ~",
            "libstorage.server.services: {}",
            "libstorage.server.services.: {}",
            "libstorage.server.services: {\"\": {}}",
            "rexray.modules: {\"\": {}}",
            "rexray.modules.x.host: \"unix://\"",
            "libstorage.server.services: {\"a.b\": {driver: vfs}}",
            "rexray: {modules: [a, b]}",
            "rexray.storageDrivers: [[ec2]]",
            "rexray.storageDrivers: []",
            "rexray.storageDrivers: ''",
            "a: &a [*a]",
            "linux.volume.filemode: 99999999999999999999999999",
            "libstorage.integration.volume.operations.create.default.size: -1",
            "libstorage.integration.volume.operations.create.default.size: 18446744073709551616",
            "ebs: [1, 2]",
            "\u{feff}rexray: {}",
            "é: ü",
            "libstorage.service: \"ÉBS\"",
        ];
        for input in inputs {
            let _ = parse(input, None, &BTreeMap::new());
            let _ = parse(input, None, &env(&[("REXRAY_HOME", "relative"), ("LIBSTORAGE_SERVICE", "\u{0}")]));
        }
    }

    // ----- shipped examples ------------------------------------------------------------

    #[test]
    fn example_rexray_yml() {
        let c = ok(include_str!("../../config/rexray.yml"), &[]);
        assert!(c.warnings.is_empty(), "{:?}", c.warnings);
        assert_eq!(c.services.len(), 2);
        assert_eq!(service(&c, "vfs").backend, BackendKind::Vfs);
        assert_eq!(service(&c, "vfs").integration.default_size_gib, 16);
        assert_eq!(service(&c, "loop").backend, BackendKind::Loop);
        assert_eq!(service(&c, "loop").integration.default_size_gib, 8);
        let bound: Vec<(&str, &str)> = c.modules.iter().map(|m| (m.name.as_str(), m.service.as_str())).collect();
        assert_eq!(bound, vec![("rexray", "vfs"), ("rexray-loop", "loop")]);
        assert_eq!(c.modules[1].socket, Path::new("/run/docker/plugins/rexray-loop.sock"));
    }

    #[test]
    fn example_rexray_03_yml() {
        let c = ok(include_str!("../../config/rexray-0.3.yml"), &[]);
        assert!(c.warnings.is_empty(), "{:?}", c.warnings);
        let s = service(&c, "ec2");
        assert_eq!(s.backend, BackendKind::Ebs);
        assert!(s.integration.preempt);
        assert_eq!(s.integration.default_volume_type.as_deref(), Some("gp2"));
        assert_eq!(s.ebs.get("region").map(String::as_str), Some("us-east-1"));
    }

    #[test]
    fn example_ebs_yml() {
        let c = ok(include_str!("../../config/ebs.yml"), &[]);
        assert!(c.warnings.is_empty(), "{:?}", c.warnings);
        let s = service(&c, "ebs");
        assert_eq!(s.backend, BackendKind::Ebs);
        assert!(s.integration.preempt);
        assert_eq!(s.integration.default_volume_type.as_deref(), Some("gp3"));
        assert_eq!(s.ebs.get("region").map(String::as_str), Some("us-east-1"));
        assert_eq!(s.ebs.get("statustimeout").map(String::as_str), Some("2m"));
        assert_eq!(c.modules[0].service, "ebs");
    }
}
