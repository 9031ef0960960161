//! Real-Docker end-to-end tests: thin wrappers around the scripts in `tests/e2e/`.
//!
//! - `docker_vfs.sh`, `docker_loop.sh`: the daemon as a legacy plugin with the `vfs` and `loop`
//!   services, driven by the docker CLI;
//! - `plugin.sh`: the managed plugin (`plugin/`) built from the release binary, serving
//!   containers across `docker plugin disable -f` + `enable`, `docker plugin set`, metrics;
//! - `swarm.sh`: a single-node Swarm service on a rexray volume, through a rolling update;
//! - `swarm_csi.sh` (Docker 28 only, see below): a Swarm cluster volume through the CSI managed
//!   plugin, across an update, a scale 0 → 1, drain and removal;
//! - `compose.sh`: Debian's docker-compose with `driver: rexray`, data across `down` / `up`;
//! - `dockerfile.sh`: the `Dockerfile` built offline from a debootstrap base, used as a rootfs;
//! - `moby_behaviours.sh`: what moby's own volume-driver integration tests check (exact call
//!   counts, anonymous volumes, `--volumes-from`, failed mounts, engine restarts).
//!
//! Each but the Dockerfile build runs on Debian 12's Docker Engine 20.10 and (`…_on_docker26`)
//! on Debian 13's 26.1, the engine users run today (`E2E_ENGINE`, see `tests/e2e/lib.sh`).
//!
//! They need root and start (or reuse) a Docker Engine, so they run only when `CI` is set or
//! `REXRAY_E2E=1`; otherwise each test prints why it is skipped and passes. The script's output
//! is streamed, not captured, and its last line is `e2e: N passed, M failed`. The plugin and the
//! image package the release binary: `REXRAY_RELEASE_BIN` (set by `.ci/run`, which builds it
//! once), else `target/release/rexray`.
//!
//! Run them on a developer machine with `sudo REXRAY_E2E=1 cargo test --test docker_e2e`, or
//! a script directly: `cargo build && sudo bash tests/e2e/docker_vfs.sh`.

use std::io::Write;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::process::Command;

/// Why the end-to-end tests cannot run here, if they cannot.
fn skip_reason() -> Option<String> {
    let ci = std::env::var("CI").is_ok_and(|v| !matches!(v.as_str(), "" | "0" | "false"));
    let asked = std::env::var("REXRAY_E2E").is_ok_and(|v| v == "1");
    if !(ci || asked) {
        return Some("set REXRAY_E2E=1 (or CI) to run the real-Docker end-to-end tests".into());
    }
    // The owner of /proc/self is this process's effective user.
    match std::fs::metadata("/proc/self") {
        Ok(meta) if meta.uid() == 0 => None,
        Ok(meta) => Some(format!("they need root (running as uid {})", meta.uid())),
        Err(e) => Some(format!("cannot tell the uid (/proc/self: {e})")),
    }
}

/// The Docker Engines the scripts run against (see `E2E_ENGINE` in `tests/e2e/lib.sh`).
#[derive(Debug, Clone, Copy)]
enum Engine {
    /// Debian 12's docker.io 20.10 (API 1.41).
    Debian12,
    /// Debian 13's docker.io 26.1 (API 1.45), unpacked and run beside it.
    Debian13,
    /// Debian unstable's docker.io 28.5 (API 1.51), unpacked and run beside it: the first whose
    /// Swarm loads CSI plugins (moby#48133, fixed in 28.2).
    DebianUnstable,
}

impl Engine {
    fn name(self) -> &'static str {
        match self {
            Engine::Debian12 => "20.10",
            Engine::Debian13 => "26",
            Engine::DebianUnstable => "28",
        }
    }
}

/// Runs `bash tests/e2e/<script>` with the freshly built daemon against the default engine.
fn run_script(script: &str) {
    run_on(script, Engine::Debian12);
}

/// Runs `bash tests/e2e/<script>` with the freshly built daemon against `engine` and asserts it
/// exits 0.
fn run_on(script: &str, engine: Engine) {
    if let Some(reason) = skip_reason() {
        // Written to the real stderr, not through the test harness's captured `println!`, so
        // that `cargo test` shows why nothing ran.
        let _ = writeln!(std::io::stderr(), "skipping tests/e2e/{script}: {reason}");
        return;
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let status = Command::new("bash")
        .arg(root.join("tests/e2e").join(script))
        .current_dir(root)
        .env("REXRAY_BIN", env!("CARGO_BIN_EXE_rexray"))
        .env("E2E_ENGINE", engine.name())
        .status()
        .unwrap_or_else(|e| panic!("cannot run bash tests/e2e/{script}: {e}"));
    assert!(status.success(), "tests/e2e/{script} on Docker {}: {status}", engine.name());
}

#[test]
fn docker_vfs() {
    run_script("docker_vfs.sh");
}

#[test]
fn docker_loop() {
    run_script("docker_loop.sh");
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

#[test]
fn moby_behaviours() {
    run_script("moby_behaviours.sh");
}

#[test]
fn moby_behaviours_on_docker26() {
    run_on("moby_behaviours.sh", Engine::Debian13);
}

#[test]
fn docker_vfs_on_docker26() {
    run_on("docker_vfs.sh", Engine::Debian13);
}

#[test]
fn docker_loop_on_docker26() {
    run_on("docker_loop.sh", Engine::Debian13);
}

#[test]
fn managed_plugin_on_docker26() {
    run_on("plugin.sh", Engine::Debian13);
}

#[test]
fn swarm_on_docker26() {
    run_on("swarm.sh", Engine::Debian13);
}

/// Swarm cluster volumes: Docker 23 added them, but before 28.2 Swarm could not load a CSI
/// plugin (moby#48133), so Debian 13's 26.1 cannot run them; Debian unstable's 28.5 does.
#[test]
fn swarm_cluster_volumes_on_docker28() {
    run_on("swarm_csi.sh", Engine::DebianUnstable);
}

#[test]
fn compose_on_docker26() {
    run_on("compose.sh", Engine::Debian13);
}
