//! Every config key we know: settings with their old (0.3) aliases and env shortcuts, the keys
//! accepted without effect, and the unknown-key check with "did you mean" suggestions.

/// Where services are declared.
pub(crate) const SERVICES: &str = "libstorage.server.services";

/// Where modules are declared.
pub(crate) const MODULES: &str = "rexray.modules";

/// An older spelling of a setting.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Alias {
    /// The old dotted key.
    pub key: &'static str,
    /// Whether the old key's env var form is also read.
    pub env: bool,
}

/// One setting: its key, older spellings and extra env names.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Setting {
    /// The canonical dotted key, in the documented spelling.
    pub key: &'static str,
    /// Older keys used when the canonical key is not set, in order.
    pub aliases: &'static [Alias],
    /// Env vars read after the key's own env var (`REXRAY_PREEMPT`, …).
    pub shortcuts: &'static [&'static str],
}

/// A setting with no alias and no shortcut.
const fn plain(key: &'static str) -> Setting {
    Setting { key, aliases: &[], shortcuts: &[] }
}

/// A file-only old spelling.
const fn old(key: &'static str) -> Alias {
    Alias { key, env: false }
}

/// `libstorage.service`: the service the client (and docker modules) use.
pub(crate) const SERVICE: Setting = plain("libstorage.service");
/// `rexray.storageDrivers` (0.3): the first entry names the service.
pub(crate) const STORAGE_DRIVERS: Setting = plain("rexray.storageDrivers");
/// `rexray.logLevel`.
pub(crate) const LOG_LEVEL: Setting = plain("rexray.logLevel");
/// `rexray.logFormat`.
pub(crate) const LOG_FORMAT: Setting = plain("rexray.logFormat");
/// `rexray.metrics.listen`: `ADDR:PORT` of the Prometheus endpoint (off when unset).
pub(crate) const METRICS_LISTEN: Setting = plain("rexray.metrics.listen");

/// `…mount.preempt`.
pub(crate) const PREEMPT: Setting = Setting {
    key: "libstorage.integration.volume.operations.mount.preempt",
    aliases: &[old("rexray.volume.mount.preempt"), old("volume.mount.preempt")],
    shortcuts: &["REXRAY_PREEMPT"],
};
/// `…mount.path`.
pub(crate) const MOUNT_PATH: Setting = Setting {
    key: "libstorage.integration.volume.operations.mount.path",
    aliases: &[old("docker.mountDirPath")],
    shortcuts: &[],
};
/// `…mount.rootPath`.
pub(crate) const ROOT_PATH: Setting = Setting {
    key: "libstorage.integration.volume.operations.mount.rootPath",
    aliases: &[Alias { key: "linux.volume.rootpath", env: true }],
    shortcuts: &[],
};
/// `…unmount.ignoreusedcount`.
pub(crate) const IGNORE_USED_COUNT: Setting = Setting {
    key: "libstorage.integration.volume.operations.unmount.ignoreusedcount",
    aliases: &[old("rexray.volume.unmount.ignoreusedcount"), old("volume.unmount.ignoreusedcount")],
    shortcuts: &[],
};
/// `…create.implicit`.
pub(crate) const IMPLICIT_CREATE: Setting = plain("libstorage.integration.volume.operations.create.implicit");
/// `…create.disable`.
pub(crate) const CREATE_DISABLE: Setting = Setting {
    key: "libstorage.integration.volume.operations.create.disable",
    aliases: &[old("rexray.volume.create.disable"), old("volume.create.disable")],
    shortcuts: &[],
};
/// `…remove.disable`.
pub(crate) const REMOVE_DISABLE: Setting = Setting {
    key: "libstorage.integration.volume.operations.remove.disable",
    aliases: &[old("rexray.volume.remove.disable"), old("volume.remove.disable")],
    shortcuts: &[],
};
/// `…create.default.size`.
pub(crate) const SIZE: Setting = Setting {
    key: "libstorage.integration.volume.operations.create.default.size",
    aliases: &[old("docker.size")],
    shortcuts: &[],
};
/// `…create.default.fsType`.
pub(crate) const FS_TYPE: Setting = Setting {
    key: "libstorage.integration.volume.operations.create.default.fsType",
    aliases: &[old("docker.fsType")],
    shortcuts: &["REXRAY_FSTYPE"],
};
/// `…create.default.type`.
pub(crate) const VOLUME_TYPE: Setting = Setting {
    key: "libstorage.integration.volume.operations.create.default.type",
    aliases: &[old("docker.volumeType")],
    shortcuts: &[],
};
/// `…create.default.IOPS`.
pub(crate) const IOPS: Setting = Setting {
    key: "libstorage.integration.volume.operations.create.default.IOPS",
    aliases: &[old("docker.iops")],
    shortcuts: &[],
};
/// `…create.default.availabilityZone`.
pub(crate) const AVAILABILITY_ZONE: Setting = Setting {
    key: "libstorage.integration.volume.operations.create.default.availabilityZone",
    aliases: &[old("docker.availabilityZone")],
    shortcuts: &[],
};
/// `linux.volume.filemode`.
pub(crate) const FILE_MODE: Setting = plain("linux.volume.filemode");
/// `vfs.root`.
pub(crate) const VFS_ROOT: Setting = plain("vfs.root");
/// `loop.root`.
pub(crate) const LOOP_ROOT: Setting = plain("loop.root");

/// Global (root-only) settings.
pub(crate) const GLOBAL_SETTINGS: &[Setting] = &[SERVICE, STORAGE_DRIVERS, LOG_LEVEL, LOG_FORMAT, METRICS_LISTEN];

/// Settings that may also be scoped under `libstorage.server.services.<svc>.`.
pub(crate) const SERVICE_SETTINGS: &[Setting] = &[
    PREEMPT,
    MOUNT_PATH,
    ROOT_PATH,
    IGNORE_USED_COUNT,
    IMPLICIT_CREATE,
    CREATE_DISABLE,
    REMOVE_DISABLE,
    SIZE,
    FS_TYPE,
    VOLUME_TYPE,
    IOPS,
    AVAILABILITY_ZONE,
    FILE_MODE,
    VFS_ROOT,
    LOOP_ROOT,
];

/// The EBS settings, collected into `ServiceConfig::ebs` under the lower-cased name after `ebs.`.
/// `ec2.*` and `aws.*` are the 0.3 spellings of the first eight.
pub(crate) const EBS_SETTINGS: &[Setting] = &[
    Setting { key: "ebs.accessKey", aliases: &[old("ec2.accessKey"), old("aws.accessKey")], shortcuts: &[] },
    Setting { key: "ebs.secretKey", aliases: &[old("ec2.secretKey"), old("aws.secretKey")], shortcuts: &[] },
    Setting { key: "ebs.region", aliases: &[old("ec2.region"), old("aws.region")], shortcuts: &[] },
    Setting { key: "ebs.endpoint", aliases: &[old("ec2.endpoint"), old("aws.endpoint")], shortcuts: &[] },
    Setting { key: "ebs.maxRetries", aliases: &[old("ec2.maxRetries"), old("aws.maxRetries")], shortcuts: &[] },
    Setting { key: "ebs.tag", aliases: &[old("ec2.tag"), old("aws.tag")], shortcuts: &[] },
    Setting { key: "ebs.rexrayTag", aliases: &[old("ec2.rexrayTag"), old("aws.rexrayTag")], shortcuts: &[] },
    Setting { key: "ebs.kmsKeyID", aliases: &[old("ec2.kmsKeyID"), old("aws.kmsKeyID")], shortcuts: &[] },
    plain("ebs.statusMaxAttempts"),
    plain("ebs.statusInitialDelay"),
    plain("ebs.statusTimeout"),
    plain("ebs.useLargeDeviceRange"),
    plain("ebs.nvmeBinPath"),
    plain("ebs.instanceID"),
    plain("ebs.availabilityZone"),
    plain("ebs.deviceLinksDir"),
    plain("ebs.defaultVolumeType"),
];

/// Keys that may appear under `rexray.modules.<mod>.`.
pub(crate) const MODULE_KEYS: &[&str] = &[
    "type",
    "host",
    "disabled",
    "desc",
    "spec",
    "group",
    "libstorage.service",
    "csi.endpoint",
    "csi.mode",
    "csi.driver",
];

/// Keys REX-Ray accepted that we do not act on; `.*` also accepts everything below.
/// They are accepted at the root and under a service or module scope.
pub(crate) const IGNORED: &[&str] = &[
    "libstorage.host",
    "libstorage.embedded",
    "libstorage.debug",
    "libstorage.client.*",
    "libstorage.server.autoEndpointMode",
    "libstorage.server.endpoints.*",
    "libstorage.server.tasks.*",
    "libstorage.server.auth.*",
    "libstorage.server.parseRequestOpts",
    "libstorage.logging.*",
    "libstorage.tls.*",
    "libstorage.http.*",
    "libstorage.executor.*",
    "libstorage.os.driver",
    "libstorage.integration.driver",
    "libstorage.storage.driver",
    "libstorage.device.*",
    "libstorage.integration.volume.operations.mount.retryCount",
    "libstorage.integration.volume.operations.mount.retryWait",
    "libstorage.integration.volume.operations.path.cache.*",
    "libstorage.integration.volume.operations.remove.force",
    "volume.path.cache.*",
    "rexray.volume.path.cache.*",
    "csi.*",
    "rexray.host",
    "rexray.service",
    "rexray.module.*",
    "rexray.osDrivers",
    "rexray.volumeDrivers",
    "rexray.docker.*",
    "rexray.csi.*",
];

/// The env var form of a dotted key: upper case, `.` → `_`.
pub(crate) fn env_name(key: &str) -> String {
    key.to_ascii_uppercase().replace('.', "_")
}

/// One segment of a known-key pattern.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Seg {
    /// A literal key component: lower-cased for matching, documented spelling for display.
    Lit { lower: String, display: String },
    /// A service or module name.
    Name,
}

/// What a key pattern stands for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// A setting's canonical key: offered in suggestions, including by last component.
    Canonical,
    /// An old spelling or structural key: offered in suggestions by edit distance only.
    Other,
    /// Accepted without effect, with everything below it when `rest` is set.
    Ignored,
}

/// A known key, possibly with a service or module name in it.
#[derive(Debug, Clone)]
struct Pattern {
    /// Components.
    segs: Vec<Seg>,
    /// Whether any key below this one also matches.
    rest: bool,
    /// What the key is.
    kind: Kind,
}

impl Pattern {
    /// Builds a pattern from a scope prefix (`""`, `libstorage.server.services.*`) and a key;
    /// a trailing `.*` on the key sets `rest`.
    fn new(prefix: &str, key: &str, kind: Kind) -> Pattern {
        let (key, rest) = match key.strip_suffix(".*") {
            Some(k) => (k, true),
            None => (key, false),
        };
        let segs =
            prefix
                .split('.')
                .chain(key.split('.'))
                .filter(|s| !s.is_empty())
                .map(|s| {
                    if s == "*" {
                        Seg::Name
                    } else {
                        Seg::Lit { lower: s.to_ascii_lowercase(), display: s.to_string() }
                    }
                })
                .collect();
        Pattern { segs, rest, kind }
    }

    /// Whether `parts` (lower-cased components) is this key (or below it, when `rest`).
    fn matches(&self, parts: &[&str]) -> bool {
        let len_ok = if self.rest { parts.len() >= self.segs.len() } else { parts.len() == self.segs.len() };
        len_ok && self.segs.iter().zip(parts).all(|(s, p)| seg_matches(s, p))
    }

    /// Whether `parts` is a proper section above this key (`libstorage.integration`).
    fn is_below(&self, parts: &[&str]) -> bool {
        parts.len() < self.segs.len() && self.segs.iter().zip(parts).all(|(s, p)| seg_matches(s, p))
    }

    /// The key spelled as documented, with names taken from `parts`; `None` if `parts` is too
    /// short to supply them.
    fn render(&self, parts: &[&str]) -> Option<String> {
        let mut out = Vec::with_capacity(self.segs.len());
        for (i, seg) in self.segs.iter().enumerate() {
            match seg {
                Seg::Lit { display, .. } => out.push(display.clone()),
                Seg::Name => out.push((*parts.get(i)?).to_string()),
            }
        }
        Some(out.join("."))
    }

    /// The last literal component, lower-cased.
    fn last(&self) -> Option<&str> {
        match self.segs.last()? {
            Seg::Lit { lower, .. } => Some(lower),
            Seg::Name => None,
        }
    }

    /// Which scope the key lives in.
    fn scope(&self) -> Scope {
        scope_of_segs(&self.segs)
    }
}

/// Whether one segment matches one lower-cased component.
fn seg_matches(seg: &Seg, part: &str) -> bool {
    match seg {
        Seg::Lit { lower, .. } => lower == part,
        Seg::Name => !part.is_empty(),
    }
}

/// Where a key lives: at the root, under a service, or under a module.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Scope {
    /// Root.
    Root,
    /// `libstorage.server.services.<svc>.…`.
    Service,
    /// `rexray.modules.<mod>.…`.
    Module,
}

/// The scope of a pattern.
fn scope_of_segs(segs: &[Seg]) -> Scope {
    let lits: Vec<Option<&str>> = segs
        .iter()
        .take(3)
        .map(|s| match s {
            Seg::Lit { lower, .. } => Some(lower.as_str()),
            Seg::Name => None,
        })
        .collect();
    match lits.as_slice() {
        [Some("libstorage"), Some("server"), Some("services"), ..] if segs.len() > 4 => Scope::Service,
        [Some("rexray"), Some("modules"), ..] if segs.len() > 3 => Scope::Module,
        _ => Scope::Root,
    }
}

/// The scope of a key given as lower-cased components.
fn scope_of_parts(parts: &[&str]) -> Scope {
    match parts {
        ["libstorage", "server", "services", _, _, ..] => Scope::Service,
        ["rexray", "modules", _, _, ..] => Scope::Module,
        _ => Scope::Root,
    }
}

/// Every known key pattern.
fn patterns() -> Vec<Pattern> {
    let svc = format!("{SERVICES}.*");
    let module = format!("{MODULES}.*");
    let mut out = Vec::new();
    for s in GLOBAL_SETTINGS {
        out.push(Pattern::new("", s.key, Kind::Canonical));
    }
    for prefix in ["", svc.as_str()] {
        for s in SERVICE_SETTINGS.iter().chain(EBS_SETTINGS) {
            out.push(Pattern::new(prefix, s.key, Kind::Canonical));
            for a in s.aliases {
                out.push(Pattern::new(prefix, a.key, Kind::Other));
            }
        }
    }
    out.push(Pattern::new(&svc, "driver", Kind::Canonical));
    for k in MODULE_KEYS {
        out.push(Pattern::new(&module, k, Kind::Canonical));
    }
    // The sections themselves; their shape is checked when services and modules are built.
    for k in [SERVICES, svc.as_str(), MODULES, module.as_str()] {
        // As a prefix with an empty key, so that a trailing `*` stays a name (no `rest`).
        out.push(Pattern::new(k, "", Kind::Other));
    }
    for prefix in ["", svc.as_str(), module.as_str()] {
        for k in IGNORED {
            out.push(Pattern::new(prefix, k, Kind::Ignored));
        }
    }
    out
}

/// Every known key, built once per parse.
#[derive(Debug, Clone)]
pub(crate) struct Known(Vec<Pattern>);

impl Known {
    /// Builds the key table.
    pub(crate) fn new() -> Known {
        Known(patterns())
    }

    /// Checks one lower-cased dotted key (`written` is its original spelling, `is_section`
    /// whether its value is empty, as for `libstorage:` with nothing under it). `None` if the
    /// key is known, else the warning text without location, e.g.
    /// `unknown key "vfs.rot" (did you mean "vfs.root"?)`.
    pub(crate) fn check(&self, lower: &str, written: &str, is_section: bool) -> Option<String> {
        check_key(&self.0, lower, written, is_section)
    }
}

/// See [`Known::check`].
fn check_key(all: &[Pattern], lower: &str, written: &str, is_section: bool) -> Option<String> {
    let parts: Vec<&str> = lower.split('.').collect();
    if all.iter().any(|p| p.matches(&parts)) {
        return None;
    }
    if is_section && all.iter().any(|p| p.is_below(&parts)) {
        return None;
    }
    if let (Scope::Module, Some(rest)) = (scope_of_parts(&parts), parts.get(3..)) {
        let as_root = all.iter().any(|p| p.scope() == Scope::Root && p.kind != Kind::Ignored && p.matches(rest));
        if as_root {
            let module: Vec<&str> = written.split('.').take(3).collect();
            return Some(format!(
                "key \"{written}\" has no effect under a module; set it under {SERVICES}.<service> or at the top level (module \"{}\")",
                module.get(2).copied().unwrap_or_default()
            ));
        }
    }
    Some(match suggest(all, &parts, lower) {
        Some(s) => format!("unknown key \"{written}\" (did you mean \"{s}\"?)"),
        None => format!("unknown key \"{written}\""),
    })
}

/// The nearest known key, if reasonably close.
fn suggest(all: &[Pattern], parts: &[&str], lower: &str) -> Option<String> {
    let scope = scope_of_parts(parts);
    let mut best: Option<(usize, String)> = None;
    for p in all.iter().filter(|p| p.kind != Kind::Ignored || !p.rest) {
        let Some(candidate) = p.render(parts) else {
            continue;
        };
        let d = edit_distance(lower, &candidate.to_ascii_lowercase());
        if best.as_ref().is_none_or(|(bd, _)| d < *bd) {
            best = Some((d, candidate));
        }
    }
    let len = lower.chars().count();
    if let Some((d, s)) = best {
        if d > 0 && d <= 3 && d * 5 <= len {
            return Some(s);
        }
    }
    // Same last component as exactly one documented key in the same scope
    // (`libstorage.volume.operations.mount.preempt` → the full key).
    if parts.len() < 2 {
        return None;
    }
    let last = parts.last()?;
    let mut found: Vec<String> = all
        .iter()
        .filter(|p| p.kind == Kind::Canonical && p.scope() == scope && p.last() == Some(last))
        .filter_map(|p| p.render(parts))
        .collect();
    found.dedup();
    match found.as_slice() {
        [one] => Some(one.clone()),
        _ => None,
    }
}

/// Levenshtein distance over chars.
pub(crate) fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    let mut cur = vec![0; b.len() + 1];
    for (i, ca) in a.chars().enumerate() {
        cur[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let cost = usize::from(ca != *cb);
            cur[j + 1] = (prev[j] + cost).min(prev[j + 1] + 1).min(cur[j] + 1);
        }
        std::mem::swap(&mut prev, &mut cur);
    }
    prev[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(key: &str) -> Option<String> {
        Known::new().check(&key.to_lowercase(), key, false)
    }

    #[test]
    fn env_names() {
        assert_eq!(env_name(PREEMPT.key), "LIBSTORAGE_INTEGRATION_VOLUME_OPERATIONS_MOUNT_PREEMPT");
        assert_eq!(env_name("vfs.root"), "VFS_ROOT");
        assert_eq!(env_name("rexray.logLevel"), "REXRAY_LOGLEVEL");
    }

    #[test]
    fn known_keys_pass() {
        for k in [
            "libstorage.service",
            "LIBSTORAGE.Service",
            "libstorage.integration.volume.operations.create.default.IOPS",
            "libstorage.server.services.ebs2.driver",
            "libstorage.server.services.ebs2.ebs.region",
            "libstorage.server.services.ebs2.aws.region",
            "libstorage.server.services.x.libstorage.integration.volume.operations.mount.preempt",
            "rexray.modules.default-docker.host",
            "rexray.modules.m.libstorage.service",
            "rexray.modules.m.libstorage.host",
            "docker.mountDirPath",
            "aws.rexrayTag",
            "ec2.kmsKeyID",
            "ebs.nvmeBinPath",
            "libstorage.tls.certFile",
            "libstorage.logging.level",
            "csi.driver",
            "rexray.osDrivers",
            "libstorage.integration.volume.operations.path.cache.enabled",
        ] {
            assert_eq!(check(k), None, "{k}");
        }
    }

    #[test]
    fn sections_pass_only_as_sections() {
        let known = Known::new();
        assert_eq!(known.check("libstorage.integration", "libstorage.integration", true), None);
        assert_eq!(known.check("libstorage.server.services.vfs", "x", true), None);
        assert!(known.check("libstorage.nope", "libstorage.nope", true).is_some());
        assert!(known.check("libstorage.integration", "libstorage.integration", false).is_some());
    }

    #[test]
    fn suggestions() {
        let w = check("libstorage.integration.volume.operations.mount.prempt").expect("unknown");
        assert_eq!(
            w,
            "unknown key \"libstorage.integration.volume.operations.mount.prempt\" (did you mean \"libstorage.integration.volume.operations.mount.preempt\"?)"
        );
        let w = check("ebs.regoin").expect("unknown");
        assert!(w.contains("did you mean \"ebs.region\""), "{w}");
        let w = check("libstorage.server.services.ebs2.drivr").expect("unknown");
        assert!(w.contains("did you mean \"libstorage.server.services.ebs2.driver\""), "{w}");
        let w = check("libstorage.volume.operations.mount.preempt").expect("unknown");
        assert!(w.contains("did you mean \"libstorage.integration.volume.operations.mount.preempt\""), "{w}");
        let w = check("rexray.modules.m.hots").expect("unknown");
        assert!(w.contains("did you mean \"rexray.modules.m.host\""), "{w}");
        assert_eq!(check("completely.different").as_deref(), Some("unknown key \"completely.different\""));
        let w = check("ebs.bogus").expect("unknown");
        assert!(!w.contains("did you mean"), "{w}");
    }

    #[test]
    fn module_scoped_service_keys_warn() {
        let w = check("rexray.modules.m.libstorage.integration.volume.operations.mount.preempt").expect("warning");
        assert!(w.contains("no effect under a module"), "{w}");
    }

    #[test]
    fn aws_only_compat_keys() {
        assert_eq!(check("aws.region"), None);
        let w = check("aws.useLargeDeviceRange").expect("unknown");
        assert!(w.contains("ebs.useLargeDeviceRange"), "{w}");
    }

    #[test]
    fn distance() {
        assert_eq!(edit_distance("", ""), 0);
        assert_eq!(edit_distance("abc", ""), 3);
        assert_eq!(edit_distance("prempt", "preempt"), 1);
        assert_eq!(edit_distance("kitten", "sitting"), 3);
    }
}
