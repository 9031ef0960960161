//! `rexray config check` and `rexray env`.

use std::collections::BTreeMap;
use std::path::Path;

use crate::backend::BackendError;
use crate::config::{BackendKind, Config, ConfigError, Integration, ServiceConfig};

/// The backends compiled into this binary (from the build script).
pub fn compiled_backends() -> Vec<&'static str> {
    env!("REXRAY_BACKENDS").split(',').filter(|s| !s.is_empty()).collect()
}

/// The lines `config check` prints for a configuration that could not be loaded: one
/// `file:line: key: problem` per invalid value.
pub fn error_lines(err: &ConfigError, file: Option<&Path>) -> Vec<String> {
    match err {
        ConfigError::Invalid { problems, .. } => problems.iter().map(ToString::to_string).collect(),
        ConfigError::NoSuchService { .. } => {
            let at = file.map(|f| format!("{}: ", f.display())).unwrap_or_default();
            vec![format!("{at}libstorage.service: {err}")]
        }
        other => {
            let mut text = other.to_string();
            let mut source = std::error::Error::source(other);
            while let Some(s) = source {
                text.push_str(&format!(": {s}"));
                source = s.source();
            }
            vec![text]
        }
    }
}

/// Problems `config check` finds beyond the parser's: services whose backend is not built in,
/// and settings the backend refuses when it is built from the configuration (the `ebs.*`
/// values, `mount.rootPath`), each with its line or env var when known. Building a backend
/// makes no system or cloud call.
pub fn build_problems(config: &Config) -> Vec<String> {
    let compiled = compiled_backends();
    let at = config.file.as_ref().map(|f| format!("{}: ", f.display())).unwrap_or_default();
    let mut problems = Vec::new();
    for svc in &config.services {
        if !compiled.contains(&svc.backend.as_str()) {
            problems.push(format!(
                "{at}libstorage.server.services.{}.driver: backend {} is not built into this binary (built in: {})",
                svc.name,
                svc.backend.as_str(),
                compiled.join(", ")
            ));
            continue;
        }
        for e in crate::backend::settings_problems(svc) {
            problems.push(backend_problem(config, svc, &e));
        }
    }
    problems
}

/// One line for a backend's refusal of its settings.
fn backend_problem(config: &Config, svc: &ServiceConfig, e: &BackendError) -> String {
    if let BackendError::InvalidOption { key, value, reason } = e {
        let bare = key.trim_start_matches("ebs.").to_ascii_lowercase();
        if let Some(origin) = svc.ebs_origins.get(&bare) {
            let message = if is_secret(&bare) { reason.clone() } else { format!("{value:?}: {reason}") };
            return origin.problem(config.file.as_deref(), message).to_string();
        }
    }
    let at = config.file.as_ref().map(|f| format!("{}: ", f.display())).unwrap_or_default();
    format!("{at}libstorage.server.services.{}: {e}", svc.name)
}

/// Every secret value in `config` (the `ebs.*` keys that hold one), for the log to scrub.
pub fn secrets(config: &Config) -> Vec<String> {
    config
        .services
        .iter()
        .flat_map(|svc| svc.ebs.iter())
        .filter(|(key, value)| is_secret(key) && !value.is_empty())
        .map(|(_, value)| value.clone())
        .collect()
}

/// Whether an `ebs.*` setting holds a secret.
fn is_secret(key: &str) -> bool {
    let k = key.to_ascii_lowercase();
    k == "accesskey" || k.contains("secret") || k.contains("password") || k.contains("token")
}

/// Quotes a value for a POSIX shell when it needs it.
fn shell_quote(v: &str) -> String {
    if !v.is_empty() && v.bytes().all(|b| b.is_ascii_alphanumeric() || b"_./:,=@+%-".contains(&b)) {
        v.to_string()
    } else {
        format!("'{}'", v.replace('\'', "'\\''"))
    }
}

/// The env var form of a dotted key (upper case, `.` → `_`, `-` → `_`).
fn env_name(key: &str) -> String {
    key.to_ascii_uppercase().replace(['.', '-'], "_")
}

/// A service's settings as (dotted key, value).
fn service_pairs(s: &ServiceConfig) -> Vec<(String, String)> {
    const OPS: &str = "libstorage.integration.volume.operations";
    let i: &Integration = &s.integration;
    let opt = |v: &Option<String>| v.clone().unwrap_or_default();
    let mut out: Vec<(String, String)> = [
        ("mount.preempt", i.preempt.to_string()),
        ("mount.path", i.mount_path.display().to_string()),
        ("mount.rootPath", i.root_path.clone()),
        ("unmount.ignoreusedcount", i.ignore_used_count.to_string()),
        ("create.implicit", i.implicit_create.to_string()),
        ("create.disable", i.create_disable.to_string()),
        ("remove.disable", i.remove_disable.to_string()),
        ("create.default.size", i.default_size_gib.to_string()),
        ("create.default.fsType", i.default_fs_type.clone()),
        ("create.default.type", opt(&i.default_volume_type)),
        ("create.default.IOPS", i.default_iops.map(|v| v.to_string()).unwrap_or_default()),
        ("create.default.availabilityZone", opt(&i.default_availability_zone)),
    ]
    .into_iter()
    .map(|(k, v)| (format!("{OPS}.{k}"), v))
    .collect();
    out.push(("linux.volume.filemode".into(), format!("{:04o}", i.file_mode)));
    match s.backend {
        BackendKind::Vfs => out.push(("vfs.root".into(), s.vfs_root.display().to_string())),
        BackendKind::Loop => out.push(("loop.root".into(), s.loop_root.display().to_string())),
        BackendKind::Ebs => {}
    }
    out
}

/// `rexray env`: the effective configuration as `NAME=value` lines, secrets redacted.
///
/// With one service, its settings use the plain env names the daemon reads
/// (`LIBSTORAGE_INTEGRATION_VOLUME_OPERATIONS_MOUNT_PREEMPT`, `EBS_REGION`, …). With several,
/// each service's settings use the env form of their scoped key
/// (`LIBSTORAGE_SERVER_SERVICES_<NAME>_…`), which can only be set in the file.
pub fn env_lines(config: &Config) -> Vec<String> {
    let mut lines = Vec::new();
    let mut put = |name: String, value: &str| lines.push(format!("{name}={}", shell_quote(value)));
    let file = config.file.as_ref().map(|f| f.display().to_string()).unwrap_or_default();
    put("REXRAY_CONFIG_FILE".into(), &file);
    put("REXRAY_HOME_ETC".into(), &config.paths.etc.display().to_string());
    put("REXRAY_HOME_LIB".into(), &config.paths.lib.display().to_string());
    put("REXRAY_HOME_RUN".into(), &config.paths.run.display().to_string());
    put("REXRAY_HOME_LOG".into(), &config.paths.log.display().to_string());
    put("REXRAY_LOGLEVEL".into(), &config.log_level);
    put("REXRAY_LOGFORMAT".into(), if config.log_json { "json" } else { "text" });
    let metrics = config.metrics_listen.map(|a| a.to_string()).unwrap_or_default();
    put("REXRAY_METRICS_LISTEN".into(), &metrics);
    if let Some(first) = config.services.first() {
        put("LIBSTORAGE_SERVICE".into(), &first.name);
    }
    let scoped = config.services.len() > 1;
    for s in &config.services {
        let prefix = if scoped { format!("LIBSTORAGE_SERVER_SERVICES_{}_", env_name(&s.name)) } else { String::new() };
        put(format!("LIBSTORAGE_SERVER_SERVICES_{}_DRIVER", env_name(&s.name)), s.backend.as_str());
        for (key, value) in service_pairs(s) {
            put(format!("{prefix}{}", env_name(&key)), &value);
        }
        let ebs: BTreeMap<&String, &String> = s.ebs.iter().collect();
        for (key, value) in ebs {
            let shown = if is_secret(key) && !value.is_empty() { "<redacted>" } else { value.as_str() };
            put(format!("{prefix}EBS_{}", env_name(key)), shown);
        }
    }
    for m in &config.modules {
        let prefix = format!("REXRAY_MODULES_{}", env_name(&m.name));
        put(format!("{prefix}_TYPE"), "docker");
        put(format!("{prefix}_HOST"), &format!("unix://{}", m.socket.display()));
        put(format!("{prefix}_LIBSTORAGE_SERVICE"), &m.service);
        if let Some(group) = &m.group {
            put(format!("{prefix}_GROUP"), group);
        }
    }
    lines
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoting_and_secrets() {
        assert_eq!(shell_quote("/var/lib/rexray"), "/var/lib/rexray");
        assert_eq!(shell_quote(""), "''");
        assert_eq!(shell_quote("a b'c"), "'a b'\\''c'");
        assert!(is_secret("secretkey") && is_secret("accesskey") && is_secret("sessionToken"));
        assert!(!is_secret("region") && !is_secret("kmskeyid"));
    }

    #[test]
    fn env_of_a_config_redacts_secrets() {
        let text =
            "libstorage:\n  service: ebs\nebs:\n  accessKey: AKIAXXX\n  secretKey: s3cr3t\n  region: us-west-2\n";
        let config = crate::config::parse(text, Some(Path::new("/etc/rexray/rexray.yml")), &BTreeMap::new()).unwrap();
        let lines = env_lines(&config);
        let all = lines.join("\n");
        assert!(all.contains("EBS_ACCESSKEY=<redacted>") || all.contains("EBS_ACCESSKEY='<redacted>'"), "{all}");
        assert!(!all.contains("s3cr3t") && !all.contains("AKIAXXX"), "{all}");
        assert!(all.contains("EBS_REGION=us-west-2"), "{all}");
        assert!(all.contains("LIBSTORAGE_SERVICE=ebs"), "{all}");
        assert!(all.contains("REXRAY_CONFIG_FILE=/etc/rexray/rexray.yml"), "{all}");
    }

    #[cfg(feature = "ebs")]
    #[test]
    fn ebs_settings_are_checked_with_their_origin_and_secrets_stay_hidden() {
        let file = Path::new("/etc/rexray/rexray.yml");
        let check = |text: &str, env: &[(&str, &str)]| {
            let env = env.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
            build_problems(&crate::config::parse(text, Some(file), &env).unwrap())
        };
        let base = "libstorage:\n  service: ebs\nebs:\n  region: us-west-2\n";
        assert!(check(base, &[]).is_empty());
        let problems = check(&format!("{base}  statusTimeout: soon\n"), &[]);
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert!(
            problems[0].starts_with("/etc/rexray/rexray.yml:5: ebs.statusTimeout: \"soon\": expected"),
            "{problems:?}"
        );
        let problems = check(base, &[("EBS_TAG", "a/b")]);
        assert!(problems[0].starts_with("env EBS_TAG: ebs.tag: \"a/b\": expected at most 64"), "{problems:?}");
        let problems = check(&format!("{base}  accessKey: AKIASECRETVALUE\n"), &[]);
        assert!(
            problems[0].starts_with("/etc/rexray/rexray.yml:5: ebs.accessKey: ebs.accessKey and ebs.secretKey"),
            "{problems:?}"
        );
        assert!(!problems[0].contains("AKIASECRETVALUE"), "{problems:?}");
    }

    #[test]
    fn compiled_backends_include_the_built_in_ones() {
        let b = compiled_backends();
        assert!(b.contains(&"vfs") && b.contains(&"loop"), "{b:?}");
    }
}
