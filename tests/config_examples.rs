//! The example configs under `config/` load through the public API without warnings.

use std::collections::BTreeMap;
use std::path::PathBuf;

use rexray::config::{self, BackendKind};

fn example(name: &str) -> config::Config {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("config").join(name);
    let cfg = match config::load(Some(&path), &BTreeMap::new()) {
        Ok(c) => c,
        Err(e) => panic!("{}: {e}", path.display()),
    };
    assert!(cfg.warnings.is_empty(), "{name}: {:?}", cfg.warnings);
    assert_eq!(cfg.file.as_deref(), Some(path.as_path()));
    cfg
}

#[test]
fn rexray_yml() {
    let cfg = example("rexray.yml");
    let services: Vec<(&str, BackendKind)> = cfg.services.iter().map(|s| (s.name.as_str(), s.backend)).collect();
    assert_eq!(services, [("vfs", BackendKind::Vfs), ("loop", BackendKind::Loop)]);
    let modules: Vec<(&str, &str)> = cfg.modules.iter().map(|m| (m.name.as_str(), m.service.as_str())).collect();
    assert_eq!(modules, [("rexray", "vfs"), ("rexray-loop", "loop")]);
}

#[test]
fn rexray_03_yml() {
    let cfg = example("rexray-0.3.yml");
    assert_eq!(cfg.services.len(), 1);
    assert_eq!(cfg.services[0].backend, BackendKind::Ebs);
}

#[test]
fn ebs_yml() {
    let cfg = example("ebs.yml");
    assert_eq!(cfg.services.len(), 1);
    assert_eq!(cfg.services[0].name, "ebs");
    assert_eq!(cfg.services[0].backend, BackendKind::Ebs);
}

#[test]
fn env_overrides_an_example() {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("config/ebs.yml");
    let env: BTreeMap<String, String> = [("REXRAY_PREEMPT", "false"), ("EBS_REGION", "eu-west-1")]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let cfg = config::load(Some(&path), &env).expect("valid");
    let svc = &cfg.services[0];
    assert!(!svc.integration.preempt);
    assert_eq!(svc.ebs.get("region").map(String::as_str), Some("eu-west-1"));
}
