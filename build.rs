//! Build metadata for `rexray version`: the git commit, the build date and the backends compiled
//! in, passed to the crate as `REXRAY_COMMIT`, `REXRAY_BUILD_DATE` and `REXRAY_BACKENDS`.
//!
//! The commit comes from `git rev-parse` when git and a repository are there, else `unknown`.
//! The date honours `SOURCE_DATE_EPOCH` (reproducible builds), else it is the time of the build.
//!
//! It also generates the CSI messages, servers and clients from `proto/csi.proto`: protox (a
//! pure-Rust protobuf compiler) parses it, and tonic-prost-build writes the Rust code into
//! `OUT_DIR`, so a build needs no `protoc`.

use std::process::Command;
use std::time::{SystemTime, UNIX_EPOCH};

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-changed=src");
    println!("cargo:rerun-if-changed=Cargo.toml");
    println!("cargo:rerun-if-env-changed=SOURCE_DATE_EPOCH");
    for git_file in [".git/HEAD", ".git/packed-refs"] {
        if std::path::Path::new(git_file).exists() {
            println!("cargo:rerun-if-changed={git_file}");
        }
    }
    if let Some(reference) = git(&["symbolic-ref", "-q", "HEAD"]) {
        let path = format!(".git/{reference}");
        if std::path::Path::new(&path).exists() {
            println!("cargo:rerun-if-changed={path}");
        }
    }

    let commit = git(&["rev-parse", "--short=12", "HEAD"]).unwrap_or_else(|| "unknown".to_string());
    let dirty = git(&["status", "--porcelain", "--untracked-files=no"]).is_some_and(|s| !s.is_empty());
    let commit = if dirty && commit != "unknown" { format!("{commit}-dirty") } else { commit };
    println!("cargo:rustc-env=REXRAY_COMMIT={commit}");

    let seconds = std::env::var("SOURCE_DATE_EPOCH")
        .ok()
        .and_then(|s| s.trim().parse::<u64>().ok())
        .unwrap_or_else(|| SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs()));
    println!("cargo:rustc-env=REXRAY_BUILD_DATE={}", rfc3339(seconds));

    let mut backends = vec!["vfs", "loop"];
    if std::env::var_os("CARGO_FEATURE_EBS").is_some() {
        backends.push("ebs");
    }
    println!("cargo:rustc-env=REXRAY_BACKENDS={}", backends.join(","));

    csi_bindings();
}

/// Generates `csi.v1.rs` (messages, the three services' server traits and clients).
fn csi_bindings() {
    println!("cargo:rerun-if-changed=proto/csi.proto");
    let descriptors = protox::compile(["csi.proto"], ["proto"]).unwrap_or_else(|e| panic!("proto/csi.proto: {e}"));
    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        .compile_fds(descriptors)
        .unwrap_or_else(|e| panic!("generating the CSI bindings: {e}"));
}

/// The trimmed stdout of a successful `git` command, if any.
fn git(args: &[&str]) -> Option<String> {
    let out = Command::new("git").args(args).output().ok()?;
    out.status.success().then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// Seconds since the epoch as `YYYY-MM-DDTHH:MM:SSZ` (civil-from-days, proleptic Gregorian).
fn rfc3339(seconds: u64) -> String {
    let days = i64::try_from(seconds / 86_400).unwrap_or(0);
    let rem = seconds % 86_400;
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!("{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z", rem / 3600, rem / 60 % 60, rem % 60)
}
