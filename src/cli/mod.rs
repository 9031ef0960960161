//! The command line: the only place with `anyhow` and exit codes.

mod daemon;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};

/// rexray: Docker volume plugin daemon, a drop-in replacement for REX-Ray.
#[derive(Debug, Parser)]
#[command(name = "rexray", version, about, propagate_version = true)]
pub struct Cli {
    /// Config file (default: /etc/rexray/rexray.yml, then /etc/rexray/config.yml; REXRAY_HOME relocates /etc/rexray).
    #[arg(short = 'c', long = "config", global = true, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Log level (trace, debug, info, warn, error); overrides the config and REXRAY_LOGLEVEL.
    #[arg(short = 'l', long = "logLevel", global = true, value_name = "LEVEL")]
    log_level: Option<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Manage the daemon.
    #[command(subcommand)]
    Service(ServiceCommand),
    /// Start the daemon (same as `service start`).
    #[command(after_help = "Example:\n  rexray start -f -c /etc/rexray/rexray.yml")]
    Start(StartArgs),
    /// Print the version and the backends built in.
    Version,
}

#[derive(Debug, Subcommand)]
enum ServiceCommand {
    /// Serve the Docker VolumeDriver protocol on each configured socket until SIGTERM/SIGINT.
    #[command(after_help = "Example:\n  rexray service start -f -c /etc/rexray/rexray.yml")]
    Start(StartArgs),
}

#[derive(Debug, clap::Args)]
struct StartArgs {
    /// Stay in the foreground. The daemon never forks, so this is always the case; the flag is accepted for REX-Ray compatibility.
    #[arg(short = 'f', long = "foreground")]
    foreground: bool,
    /// Accepted for REX-Ray compatibility; no pid file is written.
    #[arg(long = "nopid")]
    nopid: bool,
}

/// Parses the command line, runs the command, and maps the outcome to an exit code.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("rexray: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn env_map() -> BTreeMap<String, String> {
    std::env::vars().collect()
}

fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Service(ServiceCommand::Start(_)) | Command::Start(_) => {
            let env = env_map();
            let config = crate::config::load(cli.config.as_deref(), &env).context("configuration")?;
            let level = cli.log_level.clone().unwrap_or_else(|| config.log_level.clone());
            crate::telemetry::init(&level, config.log_json);
            for warning in &config.warnings {
                tracing::warn!("{warning}");
            }
            let runtime =
                tokio::runtime::Builder::new_multi_thread().enable_all().build().context("start the async runtime")?;
            runtime.block_on(daemon::run(config, crate::server::shutdown_signal()))
        }
        Command::Version => {
            println!("rexray {}", env!("CARGO_PKG_VERSION"));
            println!("backends: vfs, loop");
            Ok(())
        }
    }
}
