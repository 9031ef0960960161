//! Packaging end to end on a real Docker Engine: thin wrappers around `tests/e2e/` scripts.
//!
//! - `plugin.sh`: the managed plugin (`plugin/`) built from the release binary, serving
//!   containers across `docker plugin disable -f` + `enable`, `docker plugin set`, metrics;
//! - `swarm.sh`: a single-node Swarm service on a rexray volume, through a rolling update;
//! - `compose.sh`: Debian's docker-compose with `driver: rexray`, data across `down` / `up`;
//! - `dockerfile.sh`: the `Dockerfile` built offline from a debootstrap base, used as a rootfs.
//!
//! Like `tests/docker_e2e.rs`, they run only as root with `CI` set or `REXRAY_E2E=1`, and say
//! why they skip otherwise. The plugin and the image package the release binary:
//! `REXRAY_RELEASE_BIN` (set by `.ci/run`, which builds it once), else `target/release/rexray`.
//!
//!     cargo build --release --features ebs && sudo REXRAY_E2E=1 cargo test --test packaging_e2e

use std::io::Write;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::process::Command;

/// Why the end-to-end tests cannot run here, if they cannot.
fn skip_reason() -> Option<String> {
    let ci = std::env::var("CI").is_ok_and(|v| !matches!(v.as_str(), "" | "0" | "false"));
    let asked = std::env::var("REXRAY_E2E").is_ok_and(|v| v == "1");
    if !(ci || asked) {
        return Some("set REXRAY_E2E=1 (or CI) to run the real-Docker packaging tests".into());
    }
    match std::fs::metadata("/proc/self") {
        Ok(meta) if meta.uid() == 0 => None,
        Ok(meta) => Some(format!("they need root (running as uid {})", meta.uid())),
        Err(e) => Some(format!("cannot tell the uid (/proc/self: {e})")),
    }
}

/// Runs `bash tests/e2e/<script>` and asserts it exits 0.
fn run_script(script: &str) {
    if let Some(reason) = skip_reason() {
        let _ = writeln!(std::io::stderr(), "skipping tests/e2e/{script}: {reason}");
        return;
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let status = Command::new("bash")
        .arg(root.join("tests/e2e").join(script))
        .current_dir(root)
        .env("REXRAY_BIN", env!("CARGO_BIN_EXE_rexray"))
        .status()
        .unwrap_or_else(|e| panic!("cannot run bash tests/e2e/{script}: {e}"));
    assert!(status.success(), "tests/e2e/{script}: {status}");
}

#[test]
fn managed_plugin() {
    run_script("plugin.sh");
}

#[test]
fn swarm() {
    run_script("swarm.sh");
}

#[test]
fn compose() {
    run_script("compose.sh");
}

#[test]
fn dockerfile() {
    run_script("dockerfile.sh");
}
