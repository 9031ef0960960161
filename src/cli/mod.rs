//! The command line: the only place with `anyhow` and exit codes.
//!
//! # Layout
//!
//! - this file: the clap commands (REX-Ray's names, aliases and flags) and their dispatch;
//! - `daemon`: the composition root of `service start` (plugin sockets and the admin socket);
//! - `volume`: `volume …`, through the daemon's admin socket or in-process;
//! - `snapshot`: `snapshot …`, the same way;
//! - `dvdcli`: the dvdcli-compatible mode (argv[0] `dvdcli`, or `rexray dvdcli …`);
//! - `marathon`: `marathon check`, Marathon's rules for apps with external volumes;
//! - `config_cmd`: `config check` and `env`;
//! - `systemd`: `service install|uninstall`, the systemd units;
//! - `client`: the small plugin-protocol HTTP client they share.

mod client;
#[macro_use]
mod output;
mod config_cmd;
mod daemon;
pub mod dvdcli;
mod managed;
pub mod marathon;
mod snapshot;
pub mod systemd;
mod volume;
mod waiting;

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::{CommandFactory, Parser, Subcommand};

use volume::{Format, Target, CLI_HOLDER};

/// rexray: Docker volume plugin daemon, a drop-in replacement for REX-Ray.
#[derive(Debug, Parser)]
#[command(
    name = "rexray",
    version,
    about,
    propagate_version = true,
    after_help = "Examples:\n  rexray service start -f -c /etc/rexray/rexray.yml\n  rexray volume ls\n  rexray config check -c /etc/rexray/rexray.yml\n  dvdcli mount --volumedriver=rexray --volumename=data   (argv[0] dvdcli: the dvdcli mode)"
)]
pub struct Cli {
    /// Config file (default: /etc/rexray/rexray.yml, then /etc/rexray/config.yml; REXRAY_HOME relocates /etc/rexray).
    #[arg(short = 'c', long = "config", global = true, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Log level (trace, debug, info, warn, error); overrides the config and REXRAY_LOGLEVEL.
    #[arg(short = 'l', long = "logLevel", global = true, value_name = "LEVEL")]
    log_level: Option<String>,
    /// Act through the daemon inside the managed Docker plugin NAME (found through Docker's API,
    /// with the plugin's own settings), never on this host's local state.
    #[arg(long = "plugin", global = true, value_name = "NAME", conflicts_with = "config")]
    plugin: Option<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Manage the daemon.
    #[command(
        subcommand,
        after_help = "Examples:\n  rexray service start -f -c /etc/rexray/rexray.yml\n  rexray service status\n  rexray service install"
    )]
    Service(ServiceCommand),
    /// Start the daemon (same as `service start`).
    #[command(after_help = "Example:\n  rexray start -f -c /etc/rexray/rexray.yml")]
    Start(StartArgs),
    /// Tell whether the daemon answers on each configured socket (same as `service status`).
    #[command(after_help = "Example:\n  rexray status -c /etc/rexray/rexray.yml")]
    Status,
    /// Print the version, commit, build date and the backends built in.
    #[command(after_help = "Example:\n  rexray version")]
    Version,
    /// Print the effective configuration as environment variables (secrets redacted).
    #[command(after_help = "Example:\n  rexray env -c /etc/rexray/rexray.yml | grep EBS_")]
    Env,
    /// Check the configuration file.
    #[command(subcommand, after_help = "Example:\n  rexray config check -c /etc/rexray/rexray.yml")]
    Config(ConfigCommand),
    /// Manage volumes (through the running daemon when there is one).
    Volume(VolumeArgs),
    /// Manage snapshots (for backends that have them).
    Snapshot(snapshot::SnapshotArgs),
    /// Run as dvdcli, the Docker Volume Driver CLI that Mesos runs (also: a `dvdcli` symlink).
    #[command(
        disable_help_flag = true,
        after_help = "Example:\n  rexray dvdcli mount --volumedriver=rexray --volumename=data1 --volumeopts=size=5\n\nRun `rexray dvdcli --help` for dvdcli's own commands and flags."
    )]
    Dvdcli {
        /// dvdcli's arguments.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true, num_args = 0..)]
        args: Vec<OsString>,
    },
    /// Check Marathon app definitions that declare external volumes.
    #[command(subcommand, after_help = "Example:\n  rexray marathon check app.json")]
    Marathon(MarathonCommand),
    /// Print a shell completion script.
    #[command(after_help = "Example:\n  rexray completion bash > /etc/bash_completion.d/rexray")]
    Completion {
        /// The shell.
        shell: clap_complete::Shell,
    },
}

#[derive(Debug, Subcommand)]
enum ServiceCommand {
    /// Serve the Docker VolumeDriver protocol on each configured socket until SIGTERM/SIGINT.
    #[command(after_help = "Example:\n  rexray service start -f -c /etc/rexray/rexray.yml")]
    Start(StartArgs),
    /// Tell whether the daemon answers on each configured socket and on its admin socket.
    /// Exit status: 0 all answer, 1 some answer, 3 none answers.
    #[command(after_help = "Example:\n  rexray service status -c /etc/rexray/rexray.yml")]
    Status,
    /// Install and enable the systemd units: rexray.socket (socket activation on every plugin
    /// socket) and rexray.service (started before docker.service). Runs no systemctl command.
    #[command(
        after_help = "Examples:\n  rexray service install && systemctl daemon-reload && systemctl start rexray.socket rexray.service\n  rexray -c /etc/rexray/rexray.yml service install --bin /usr/local/bin/rexray\n  rexray service install --root /tmp/image   (writes /tmp/image/etc/systemd/system/…)"
    )]
    Install(InstallArgs),
    /// Remove the systemd units written by `service install` (stop them first; volumes stay mounted).
    #[command(
        after_help = "Example:\n  systemctl stop rexray.service rexray.socket && rexray service uninstall && systemctl daemon-reload"
    )]
    Uninstall {
        /// Root directory of the system to change (units go to ROOT/etc/systemd/system).
        #[arg(long, value_name = "DIR", default_value = "/")]
        root: PathBuf,
    },
}

#[derive(Debug, clap::Args)]
struct InstallArgs {
    /// Root directory of the system to change (units go to ROOT/etc/systemd/system).
    #[arg(long, value_name = "DIR", default_value = "/")]
    root: PathBuf,
    /// The binary systemd runs (default: this binary).
    #[arg(long = "bin", value_name = "PATH")]
    bin: Option<PathBuf>,
    /// Replace units of the same name that rexray did not write.
    #[arg(long)]
    force: bool,
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

#[derive(Debug, Subcommand)]
enum ConfigCommand {
    /// Validate the config file: prints `file:line: key: problem` for each error (and the
    /// warnings), and exits non-zero when there is an error.
    #[command(after_help = "Example:\n  rexray config check -c /etc/rexray/rexray.yml")]
    Check,
}

#[derive(Debug, Subcommand)]
enum MarathonCommand {
    /// Validate Marathon app (or group) JSON with Marathon's rules for DVDI external volumes.
    /// Prints `file: path: message` per problem and exits 1 when there is any.
    #[command(
        after_help = "Examples:\n  rexray marathon check app.json\n  rexray marathon check --marathon 1.2 -f json apps/*.json"
    )]
    Check(MarathonCheckArgs),
}

#[derive(Debug, clap::Args)]
struct MarathonCheckArgs {
    /// App or group definitions (JSON); together they form the cluster for the name uniqueness rule.
    #[arg(required = true, value_name = "FILE")]
    files: Vec<PathBuf>,
    /// The Marathon version whose rules apply; the default is the newest release line, 1.11.
    /// 1.2 has the rules of the external volumes document: minimumHealthCapacity at most 0.5,
    /// no '/' in a Mesos containerPath, an absolute Docker containerPath. 1.3+:
    /// minimumHealthCapacity up to 1. 1.4+: relative Docker paths. 1.5+: nested Mesos paths.
    /// 1.9+: `external.shared`.
    #[arg(long = "marathon", value_name = "VERSION", default_value = "1.11", conflicts_with = "marathon_1_4")]
    marathon: marathon::Version,
    /// Same as `--marathon 1.4` (minimumHealthCapacity may be up to 1).
    #[arg(long = "marathon-1.4")]
    marathon_1_4: bool,
    /// Output format.
    #[arg(short = 'f', long = "format", value_enum, default_value = "table")]
    format: Format,
}

#[derive(Debug, clap::Args)]
#[command(
    after_help = "Examples:\n  rexray volume create --size 10 data1\n  rexray volume ls --path\n  rexray volume mount data1\n  rexray volume unmount data1"
)]
struct VolumeArgs {
    /// The service (default: the first configured).
    #[arg(short = 's', long = "service", global = true, value_name = "NAME")]
    service: Option<String>,
    /// Output format.
    #[arg(short = 'f', long = "format", global = true, value_enum, default_value = "table")]
    format: Format,
    #[command(subcommand)]
    command: VolumeCommand,
}

#[derive(Debug, clap::Args)]
struct Names {
    /// Volume names.
    #[arg(required = true, value_name = "NAME")]
    names: Vec<String>,
    /// Go on with the next volume after a failure (the exit status still says it failed).
    #[arg(long = "continueOnError")]
    continue_on_error: bool,
}

#[derive(Debug, Subcommand)]
enum VolumeCommand {
    /// List volumes (all, or the ones named).
    #[command(visible_aliases = ["l", "list", "get", "inspect"], after_help = "Examples:\n  rexray volume ls\n  rexray volume ls --attached --path\n  rexray volume inspect -f jsonp data1")]
    Ls {
        /// Volume names (default: all).
        names: Vec<String>,
        /// Only volumes attached (active) on this host.
        #[arg(long, conflicts_with = "available")]
        attached: bool,
        /// Only volumes not attached on this host.
        #[arg(long)]
        available: bool,
        /// Show the host path of attached volumes.
        #[arg(long)]
        path: bool,
        /// Print only the names.
        #[arg(short, long)]
        quiet: bool,
        /// Only volumes nothing uses: no holder here, attached to no host, and idle for --older-than (Docker's anonymous volumes: for an hour, or --older-than if shorter).
        #[arg(long, conflicts_with_all = ["attached", "available", "path"])]
        orphans: bool,
        /// With --orphans: how long a volume must have gone unused (`30d`, `12h`).
        #[arg(long, value_name = "AGE", default_value = "30d", value_parser = parse_age, requires = "orphans")]
        older_than: Duration,
    },
    /// Create volumes.
    #[command(visible_aliases = ["c", "n", "new"], after_help = "Examples:\n  rexray volume create --size 10 data1\n  rexray volume create -o uid=1000 -o mode=0750 shared-dir")]
    Create(CreateArgs),
    /// Remove volumes.
    #[command(visible_aliases = ["r", "remove", "delete", "del"], after_help = "Example:\n  rexray volume rm data1")]
    Rm {
        #[command(flatten)]
        names: Names,
        /// Release the CLI's own holds (`volume mount`) first. Volumes held by containers are never removed.
        #[arg(long)]
        force: bool,
    },
    /// Attach volumes to this host: the same as `mount` for these backends (holder `cli`).
    #[command(visible_aliases = ["a"], after_help = "Example:\n  rexray volume attach data1")]
    Attach {
        #[command(flatten)]
        names: Names,
        /// Accepted for REX-Ray compatibility (a volume attached elsewhere is taken over only with `mount.preempt`).
        #[arg(long)]
        force: bool,
    },
    /// Detach volumes: the same as `unmount` (releases holder `cli`).
    #[command(visible_aliases = ["d"], after_help = "Example:\n  rexray volume detach data1")]
    Detach {
        #[command(flatten)]
        names: Names,
        /// Release every hold of the CLI (after repeated mounts), not just one.
        #[arg(long)]
        force: bool,
    },
    /// Mount volumes for the CLI (holder `cli`) and print their host paths.
    #[command(visible_aliases = ["m"], after_help = "Example:\n  cd \"$(rexray volume mount data1)\"")]
    Mount {
        #[command(flatten)]
        names: Names,
        /// Filesystem for a volume that does not exist yet (it is created first).
        #[arg(long = "fsType", value_name = "FS")]
        fs_type: Option<String>,
        /// Not supported: a device that already has a filesystem is never formatted.
        #[arg(long = "overwriteFS")]
        overwrite_fs: bool,
    },
    /// Release the CLI's mount of volumes (holder `cli`); other holders keep theirs.
    #[command(visible_aliases = ["u", "umount"], after_help = "Example:\n  rexray volume unmount data1")]
    Unmount {
        #[command(flatten)]
        names: Names,
        /// Release every hold of the CLI (after repeated mounts), not just one.
        #[arg(long)]
        force: bool,
    },
    /// Grow a volume (block and EBS volumes), online: a mounted volume's file system grows while its containers keep running.
    #[command(visible_aliases = ["grow", "expand"], after_help = "Examples:\n  rexray volume resize data1 100\n  rexray volume resize data1 100GiB")]
    Resize {
        /// The volume.
        #[arg(value_name = "NAME")]
        name: String,
        /// The new size, in GiB (`100`, `100G`, `100GiB`); volumes never shrink.
        #[arg(value_name = "SIZE", value_parser = parse_gib)]
        size: u64,
    },
    /// Change an EBS volume's type, IOPS or throughput in place, while it stays in use; checked against EBS's limits for the type and size before anything is asked of EC2. `volume inspect` shows the modification while EBS carries it out.
    #[command(
        after_help = "Examples:\n  rexray volume modify data1 --type gp3 --iops 6000 --throughput 500\n  rexray volume modify data1 --type io2 --iops 16000"
    )]
    Modify {
        /// The volume.
        #[arg(value_name = "NAME")]
        name: String,
        /// The new volume type (gp2, gp3, io1, io2, st1, sc1, standard).
        #[arg(long = "type", value_name = "TYPE")]
        volume_type: Option<String>,
        /// The new provisioned IOPS (gp3, io1, io2).
        #[arg(long, value_name = "IOPS")]
        iops: Option<u64>,
        /// The new throughput in MiB/s (gp3).
        #[arg(long, value_name = "MIB_S")]
        throughput: Option<u64>,
    },
    /// Move an EBS volume to another availability zone (through a snapshot), so hosts there can use it; refused while it is attached anywhere. The old volume is kept, no longer answering to the name, until --delete-source. An interrupted move is finished by the daemon's next start, the next operation on the volume, or the same command again.
    #[command(
        after_help = "Examples:\n  rexray volume move data1 --zone us-east-1b\n  rexray volume move data1 --zone us-east-1b --delete-source   # also after a move, to delete the old volume"
    )]
    Move {
        /// The volume.
        #[arg(value_name = "NAME")]
        name: String,
        /// The availability zone it moves to.
        #[arg(long, value_name = "ZONE")]
        zone: String,
        /// Delete the old volume once the new one has the name.
        #[arg(long)]
        delete_source: bool,
    },
    /// Remove the volumes nothing uses (those `volume ls --orphans` lists); a dry run that only lists them unless --yes.
    #[command(
        after_help = "Examples:\n  rexray volume prune                       # list what would go\n  rexray volume prune --yes\n  rexray volume prune --anonymous --yes     # Docker's anonymous volumes only\n  rexray volume prune --older-than 90d --yes"
    )]
    Prune {
        /// Only Docker's anonymous volumes (64 hex digits).
        #[arg(long)]
        anonymous: bool,
        /// How long a volume must have gone unused (`30d`, `12h`); anonymous ones: an hour, or this if shorter.
        #[arg(long, value_name = "AGE", default_value = "30d", value_parser = parse_age)]
        older_than: Duration,
        /// Remove them (without it, only list them).
        #[arg(long, short = 'y')]
        yes: bool,
    },
    /// Print the host path of mounted volumes.
    #[command(after_help = "Example:\n  rexray volume path data1")]
    Path {
        /// Volume names.
        #[arg(required = true, value_name = "NAME")]
        names: Vec<String>,
    },
}

#[derive(Debug, clap::Args)]
struct CreateArgs {
    #[command(flatten)]
    names: Names,
    /// Size in GiB.
    #[arg(long, value_name = "GIB")]
    size: Option<u64>,
    /// Volume type (EBS: gp2, gp3, io1, …).
    #[arg(long = "volumeType", value_name = "TYPE")]
    volume_type: Option<String>,
    /// Provisioned IOPS.
    #[arg(long, value_name = "N")]
    iops: Option<u64>,
    /// Availability zone.
    #[arg(long = "availabilityZone", value_name = "AZ")]
    availability_zone: Option<String>,
    /// Create the volume from this snapshot (backends with snapshots only).
    #[arg(long = "snapshotID", value_name = "ID")]
    snapshot_id: Option<String>,
    /// Encrypt the volume.
    #[arg(long)]
    encrypted: bool,
    /// Encryption key (EBS: a KMS key ID).
    #[arg(long = "encryptionKey", value_name = "KEY")]
    encryption_key: Option<String>,
    /// Filesystem (ext4, xfs) for block backends.
    #[arg(long = "fsType", value_name = "FS")]
    fs_type: Option<String>,
    /// Accepted for REX-Ray compatibility; creating an existing volume is already a no-op.
    #[arg(long)]
    force: bool,
    /// Any other backend option, KEY=VALUE (vfs: uid, gid, mode); repeatable.
    #[arg(short = 'o', long = "opt", value_name = "KEY=VALUE")]
    opts: Vec<String>,
}

/// Parses the command line, runs the command, and maps the outcome to an exit code.
///
/// Run as `dvdcli` (argv[0]) or as `rexray dvdcli …`, it is the dvdcli-compatible CLI.
pub fn main() -> ExitCode {
    let args: Vec<OsString> = std::env::args_os().collect();
    let argv0 = args.first().map(|a| Path::new(a).file_name().unwrap_or_default().to_owned()).unwrap_or_default();
    if argv0 == "dvdcli" {
        return dvdcli::main(args[1..].to_vec());
    }
    if args.get(1).is_some_and(|a| a == "dvdcli") {
        return dvdcli::main(args[2..].to_vec());
    }
    let cli = Cli::parse_from(args);
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("rexray: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn env_map() -> BTreeMap<String, String> {
    std::env::vars().collect()
}

fn load_config(cli: &Cli) -> anyhow::Result<crate::config::Config> {
    if let Some(name) = &cli.plugin {
        let env = env_map();
        let found = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .context("start the async runtime")?
            .block_on(managed::find(name, &env))?;
        volume::require_daemon(&found.name);
        return found.config();
    }
    crate::config::load(cli.config.as_deref(), &env_map()).context("configuration")
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("start the async runtime")
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match &cli.command {
        Command::Service(ServiceCommand::Start(_)) | Command::Start(_) => {
            let config = load_config(&cli)?;
            // Every setting is checked before anything listens: a daemon whose backend would
            // refuse its settings on the first request does not start.
            let problems = config_cmd::build_problems(&config);
            if !problems.is_empty() {
                bail!("invalid configuration ({} problem(s)):\n  {}", problems.len(), problems.join("\n  "));
            }
            let level = cli.log_level.clone().unwrap_or_else(|| config.log_level.clone());
            crate::telemetry::init(&level, config.log_json, config_cmd::secrets(&config));
            for warning in &config.warnings {
                tracing::warn!("{warning}");
            }
            // Before the runtime starts its threads: this reads the environment.
            let inherited = crate::server::Inherited::from_env();
            runtime()?.block_on(async {
                let shutdown = crate::server::shutdown_signals().context("listen for SIGTERM and SIGINT")?;
                daemon::run(config, inherited, shutdown).await
            })?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Service(ServiceCommand::Status) | Command::Status => status(&load_config(&cli)?),
        Command::Service(ServiceCommand::Install(args)) => {
            let config = load_config(&cli)?;
            let bin = match &args.bin {
                Some(bin) => bin.clone(),
                None => std::env::current_exe().context("find this binary's path (pass --bin)")?,
            };
            if !bin.is_absolute() {
                bail!("--bin {}: systemd needs an absolute path", bin.display());
            }
            let explicit = cli.config.as_ref().map(|c| std::path::absolute(c).unwrap_or_else(|_| c.clone()));
            let units = systemd::Units::for_config(&config, bin, explicit);
            for line in systemd::install(&args.root, &units, args.force)? {
                outln!("{line}");
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Service(ServiceCommand::Uninstall { root }) => {
            for line in systemd::uninstall(root)? {
                outln!("{line}");
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Version => {
            outln!("rexray {}", env!("CARGO_PKG_VERSION"));
            outln!("Commit:   {}", env!("REXRAY_COMMIT"));
            outln!("Built:    {}", env!("REXRAY_BUILD_DATE"));
            outln!("Backends: {}", config_cmd::compiled_backends().join(", "));
            outln!("OsArch:   {}-{}", std::env::consts::OS, std::env::consts::ARCH);
            Ok(ExitCode::SUCCESS)
        }
        Command::Env => {
            for line in config_cmd::env_lines(&load_config(&cli)?) {
                outln!("{line}");
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Config(ConfigCommand::Check) => Ok(config_check(cli.config.as_deref())),
        Command::Volume(args) => {
            let config = load_config(&cli)?;
            crate::telemetry::init(cli.log_level.as_deref().unwrap_or("warn"), false, config_cmd::secrets(&config));
            runtime()?.block_on(volume_command(&config, args))
        }
        Command::Snapshot(args) => {
            let config = load_config(&cli)?;
            volume::snapshot_support(volume::pick_service(&config, args.service.as_deref())?.backend)?;
            crate::telemetry::init(cli.log_level.as_deref().unwrap_or("warn"), false, config_cmd::secrets(&config));
            runtime()?.block_on(snapshot::run(&config, args))
        }
        Command::Dvdcli { args } => Ok(dvdcli::main(args.clone())),
        Command::Marathon(MarathonCommand::Check(args)) => marathon_check(args),
        Command::Completion { shell } => {
            let mut script = Vec::new();
            clap_complete::generate(*shell, &mut Cli::command(), "rexray", &mut script);
            output::bytes(&script);
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// `config check`.
fn config_check(explicit: Option<&Path>) -> ExitCode {
    let env = env_map();
    let shown_file = explicit.map(Path::to_path_buf);
    match crate::config::load(explicit, &env) {
        Ok(config) => {
            for warning in &config.warnings {
                outln!("warning: {warning}");
            }
            let problems = config_cmd::build_problems(&config);
            for p in &problems {
                outln!("{p}");
            }
            let file = config
                .file
                .as_ref()
                .map_or_else(|| "(no config file: defaults and environment)".to_string(), |f| f.display().to_string());
            if problems.is_empty() {
                outln!("{file}: ok ({} service(s), {} module(s))", config.services.len(), config.modules.len());
                ExitCode::SUCCESS
            } else {
                eprintln!("{file}: {} error(s)", problems.len());
                ExitCode::FAILURE
            }
        }
        Err(e) => {
            if let crate::config::ConfigError::Invalid { warnings, .. } = &e {
                for warning in warnings {
                    outln!("warning: {warning}");
                }
            }
            let lines = config_cmd::error_lines(&e, shown_file.as_deref());
            for line in &lines {
                outln!("{line}");
            }
            eprintln!("configuration: {} error(s)", lines.len());
            ExitCode::FAILURE
        }
    }
}

/// `service status`.
fn status(config: &crate::config::Config) -> anyhow::Result<ExitCode> {
    runtime()?.block_on(async {
        let mut rows = Vec::new();
        let mut answering = 0;
        let mut total = 0;
        for m in &config.modules {
            total += 1;
            let state = if volume::plugin_answers(&m.socket).await {
                answering += 1;
                "running".to_string()
            } else if m.socket.exists() {
                "not answering (stale socket file)".to_string()
            } else {
                "stopped".to_string()
            };
            rows.push(vec![m.name.clone(), m.socket.display().to_string(), m.service.clone(), state]);
        }
        total += 1;
        let admin = daemon::admin_socket(config);
        let admin_state = match volume::daemon_info(config).await {
            Ok(Some(info)) => {
                answering += 1;
                format!("running (pid {}, version {})", info.pid, info.version)
            }
            Ok(None) if admin.exists() => "not answering (stale socket file)".to_string(),
            Ok(None) => "stopped".to_string(),
            Err(e) => format!("{e:#}"),
        };
        rows.push(vec!["(admin)".into(), admin.display().to_string(), "-".into(), admin_state]);
        outln!("{}", volume::table(&["MODULE", "SOCKET", "SERVICE", "STATE"], &rows));
        Ok(if answering == total {
            ExitCode::SUCCESS
        } else if answering == 0 {
            ExitCode::from(3)
        } else {
            ExitCode::FAILURE
        })
    })
}

/// Failures over several volumes: the first one stops the command unless `--continueOnError`.
struct Failures {
    /// Whether to go on after a failure.
    go_on: bool,
    /// How many failed.
    count: usize,
}

impl Failures {
    fn new(names: &Names) -> Self {
        Self { go_on: names.continue_on_error, count: 0 }
    }

    /// Passes `result` on, or counts and reports it when going on.
    fn record(&mut self, result: anyhow::Result<()>) -> anyhow::Result<()> {
        match result {
            Err(e) if self.go_on => {
                eprintln!("rexray: {e:#}");
                self.count += 1;
                Ok(())
            }
            other => other,
        }
    }

    fn code(&self) -> ExitCode {
        if self.count == 0 {
            ExitCode::SUCCESS
        } else {
            ExitCode::FAILURE
        }
    }
}

/// How long `volume ls` may wait for the storage, all looks together: past it, it reports what
/// it could not ask.
const LS_BUDGET: crate::deadline::Budget = crate::deadline::Budget {
    caller: "rexray volume ls's 15 s limit",
    total: std::time::Duration::from_secs(15),
    reserve: std::time::Duration::ZERO,
};

async fn volume_command(config: &crate::config::Config, args: &VolumeArgs) -> anyhow::Result<ExitCode> {
    if matches!(args.command, VolumeCommand::Ls { .. }) {
        return crate::deadline::within(LS_BUDGET, volume_command_unbounded(config, args)).await;
    }
    volume_command_unbounded(config, args).await
}

async fn volume_command_unbounded(config: &crate::config::Config, args: &VolumeArgs) -> anyhow::Result<ExitCode> {
    if let VolumeCommand::Create(c) = &args.command {
        if c.snapshot_id.is_some() {
            volume::snapshot_support(volume::pick_service(config, args.service.as_deref())?.backend)
                .context("--snapshotID")?;
        }
    }
    if let VolumeCommand::Mount { overwrite_fs: true, .. } = &args.command {
        bail!("--overwriteFS is not supported: rexray never formats a device that already has a filesystem");
    }
    let target = Target::open(config, args.service.as_deref()).await?;
    let format = args.format;
    match &args.command {
        VolumeCommand::Ls { orphans: true, older_than, quiet, .. } => {
            let found = target.orphans(*older_than, anonymous_idle(*older_than)).await?;
            print_orphans(format, &found, *quiet)?;
            Ok(ExitCode::SUCCESS)
        }
        VolumeCommand::Prune { anonymous, older_than, yes } => {
            let mut found = target.orphans(*older_than, anonymous_idle(*older_than)).await?;
            found.retain(|o| !anonymous || o.anonymous);
            if !yes {
                print_orphans(format, &found, false)?;
                if format == Format::Table && !found.is_empty() {
                    eprintln!("rexray: a dry run: {} volume(s) would be removed; --yes removes them", found.len());
                }
                return Ok(ExitCode::SUCCESS);
            }
            let mut failed = 0;
            let mut removed = Vec::new();
            for orphan in &found {
                // Removal checks again, under the volume's lock: one a container took meanwhile stays.
                match target.remove(&orphan.name).await {
                    Ok(()) => removed.push(orphan.clone()),
                    Err(e) => {
                        eprintln!("rexray: {e:#}");
                        failed += 1;
                    }
                }
            }
            print_orphans(format, &removed, true)?;
            Ok(if failed == 0 { ExitCode::SUCCESS } else { ExitCode::FAILURE })
        }
        VolumeCommand::Ls { names, attached, available, path, quiet, .. } => {
            let (mut views, stale) = if names.is_empty() {
                target.list().await?
            } else {
                let mut out = Vec::new();
                for n in names {
                    out.push(target.get(n).await?);
                }
                (out, None)
            };
            views.retain(|v| (!attached || v.attached()) && (!available || !v.attached()));
            if format == Format::Table {
                if *quiet {
                    views.iter().for_each(|v| outln!("{}", v.name));
                } else {
                    outln!("{}", volume::volume_table(&views, *path));
                }
            } else {
                format.print_json(&views)?;
            }
            // Never "no volumes" when the storage could not be asked: say so, and fail.
            if let Some(stale) = stale {
                eprintln!("warning: {stale}");
                return Ok(ExitCode::FAILURE);
            }
            Ok(ExitCode::SUCCESS)
        }
        VolumeCommand::Create(c) => {
            let encrypted = c.encrypted.then(|| "true".to_string());
            let opts = volume::create_opts(
                &[
                    ("size", c.size.map(|v| v.to_string())),
                    ("volumeType", c.volume_type.clone()),
                    ("iops", c.iops.map(|v| v.to_string())),
                    ("availabilityZone", c.availability_zone.clone()),
                    ("snapshotID", c.snapshot_id.clone()),
                    ("encrypted", encrypted),
                    ("encryptionKey", c.encryption_key.clone()),
                    ("fsType", c.fs_type.clone()),
                ],
                &c.opts,
            )?;
            let mut created = Vec::new();
            let mut failures = Failures::new(&c.names);
            for name in &c.names.names {
                let result = async {
                    target.create(name, &opts).await?;
                    created.push(target.get(name).await?);
                    Ok(())
                }
                .await;
                failures.record(result)?;
            }
            print_views(format, &created)?;
            Ok(failures.code())
        }
        VolumeCommand::Rm { names, force } => {
            let mut failures = Failures::new(names);
            for name in &names.names {
                let result = async {
                    if *force && target.get(name).await.is_ok() {
                        target.unmount_all(name, CLI_HOLDER).await?;
                    }
                    target.remove(name).await?;
                    if format == Format::Table {
                        outln!("{name}");
                    }
                    Ok(())
                }
                .await;
                failures.record(result)?;
            }
            Ok(failures.code())
        }
        VolumeCommand::Attach { names, .. } => mount_each(&target, names, None, format).await,
        VolumeCommand::Mount { names, fs_type, .. } => mount_each(&target, names, fs_type.as_deref(), format).await,
        VolumeCommand::Detach { names, force } | VolumeCommand::Unmount { names, force } => {
            let mut failures = Failures::new(names);
            for name in &names.names {
                let result = async {
                    target.get(name).await?;
                    if *force {
                        target.unmount_all(name, CLI_HOLDER).await?;
                    } else {
                        target.unmount(name, CLI_HOLDER).await?;
                    }
                    if format == Format::Table {
                        outln!("{name}");
                    }
                    // The release is done; a failure to look again only loses the notice.
                    if let Some(after) = target.get(name).await.ok().filter(volume::View::attached) {
                        // Not an error (other holders are never released here), but say so.
                        eprintln!(
                            "rexray: volume {name:?} stays mounted: {} hold(s) remain (containers, dvdcli, or the CLI's repeated mounts; --force releases all of the CLI's)",
                            after.holders()
                        );
                    }
                    Ok(())
                }
                .await;
                failures.record(result)?;
            }
            Ok(failures.code())
        }
        VolumeCommand::Resize { name, size } => {
            target.resize(name, *size).await?;
            print_views(format, &[target.get(name).await?])?;
            Ok(ExitCode::SUCCESS)
        }
        VolumeCommand::Modify { name, volume_type, iops, throughput } => {
            let changes: BTreeMap<String, String> = [
                ("volumeType", volume_type.clone()),
                ("iops", iops.map(|n| n.to_string())),
                ("throughput", throughput.map(|n| n.to_string())),
            ]
            .into_iter()
            .filter_map(|(k, v)| Some((k.to_owned(), v?)))
            .collect();
            if changes.is_empty() {
                bail!("nothing to change: give --type, --iops or --throughput");
            }
            target.modify(name, &changes).await?;
            print_views(format, &[target.get(name).await?])?;
            Ok(ExitCode::SUCCESS)
        }
        VolumeCommand::Move { name, zone, delete_source } => {
            target.relocate(name, zone, *delete_source).await?;
            print_views(format, &[target.get(name).await?])?;
            Ok(ExitCode::SUCCESS)
        }
        VolumeCommand::Path { names } => {
            let mut out = Vec::new();
            for name in names {
                let view = target.get(name).await?;
                let Some(path) = view.mountpoint else {
                    bail!("volume {name:?} is not mounted on this host");
                };
                if format == Format::Table {
                    outln!("{path}");
                }
                out.push(serde_json::json!({ "Name": name, "Mountpoint": path }));
            }
            format.print_json(&out)?;
            Ok(ExitCode::SUCCESS)
        }
    }
}

async fn mount_each(target: &Target, names: &Names, fs_type: Option<&str>, format: Format) -> anyhow::Result<ExitCode> {
    let mut out = Vec::new();
    let mut failures = Failures::new(names);
    for name in &names.names {
        let result = async {
            if let Some(fs) = fs_type {
                if target.get(name).await.is_err() {
                    target.create(name, &BTreeMap::from([("fsType".to_string(), fs.to_string())])).await?;
                }
            }
            let path = target.mount(name, CLI_HOLDER).await?;
            if format == Format::Table {
                outln!("{path}");
            }
            out.push(serde_json::json!({ "Name": name, "Mountpoint": path }));
            Ok(())
        }
        .await;
        failures.record(result)?;
    }
    format.print_json(&out)?;
    Ok(failures.code())
}

/// A size in whole GiB: `100`, `100G`, `100GB` or `100GiB`.
fn parse_gib(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let digits = ["GiB", "GB", "G", "gib", "gb", "g"].iter().find_map(|u| t.strip_suffix(u)).unwrap_or(t).trim();
    match digits.parse::<u64>() {
        Ok(n) if n >= 1 => Ok(n),
        _ => Err(format!("expected a whole number of GiB, at least 1 (such as 100 or 100GiB), not {s:?}")),
    }
}

/// How long an anonymous volume must have gone unused to be an orphan: an hour (Docker makes
/// one for every `docker run -v /path`), or less when asked.
fn anonymous_idle(older_than: Duration) -> Duration {
    older_than.min(Duration::from_secs(3_600))
}

/// Orphans as a table (names only with `quiet`) or JSON.
fn print_orphans(
    format: Format,
    orphans: &[crate::protocol::volume_ops::OrphanEntry],
    quiet: bool,
) -> anyhow::Result<()> {
    if format != Format::Table {
        return format.print_json(&orphans);
    }
    if quiet {
        orphans.iter().for_each(|o| outln!("{}", o.name));
    } else {
        outln!("{}", volume::orphan_table(orphans));
    }
    Ok(())
}

/// An age such as `30d`, `12h` or `90min`.
fn parse_age(text: &str) -> Result<Duration, String> {
    humantime::parse_duration(text).map_err(|e| format!("{text:?} is not an age such as 30d or 12h: {e}"))
}

fn print_views(format: Format, views: &[volume::View]) -> anyhow::Result<()> {
    if format == Format::Table {
        if !views.is_empty() {
            outln!("{}", volume::volume_table(views, false));
        }
        Ok(())
    } else {
        format.print_json(&views)
    }
}

/// `marathon check`.
fn marathon_check(args: &MarathonCheckArgs) -> anyhow::Result<ExitCode> {
    let version = if args.marathon_1_4 { marathon::Version(1, 4) } else { args.marathon };
    let mut docs = Vec::new();
    let mut unreadable = Vec::new();
    for file in &args.files {
        let name = file.display().to_string();
        let parsed = std::fs::read_to_string(file).map_err(|e| e.to_string()).and_then(|text| {
            serde_json::from_str::<serde_json::Value>(&text).map_err(|e| format!("invalid JSON: {e}"))
        });
        match parsed {
            Ok(doc) => docs.push((name, doc)),
            Err(e) => unreadable.push(format!("{name}: {e}")),
        }
    }
    let (problems, counts) = marathon::check(&docs, version);
    if args.format == Format::Table {
        for line in &unreadable {
            outln!("{line}");
        }
        for p in &problems {
            outln!("{p}");
            if let Some(hint) = &p.hint {
                outln!("    hint: {hint}");
            }
        }
    } else {
        args.format.print_json(&problems)?;
        for line in &unreadable {
            eprintln!("{line}");
        }
    }
    let errors = problems.len() + unreadable.len();
    eprintln!(
        "marathon {version} rules: {} app(s), {} DVDI volume(s) in {} file(s): {}",
        counts.apps,
        counts.volumes,
        args.files.len(),
        if errors == 0 { "ok".to_string() } else { format!("{errors} problem(s)") }
    );
    Ok(if errors == 0 { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clap_definition_is_valid() {
        Cli::command().debug_assert();
    }

    #[test]
    fn every_command_has_an_example() {
        fn walk(cmd: &clap::Command, path: String, missing: &mut Vec<String>) {
            let help = cmd.get_after_help().map(std::string::ToString::to_string).unwrap_or_default();
            if !help.contains("Example") {
                missing.push(path.clone());
            }
            for sub in cmd.get_subcommands().filter(|s| s.get_name() != "help") {
                walk(sub, format!("{path} {}", sub.get_name()), missing);
            }
        }
        let mut missing = Vec::new();
        let mut root = Cli::command();
        root.build();
        walk(&root, "rexray".into(), &mut missing);
        assert!(missing.is_empty(), "commands without an example: {missing:?}");
        let mut dvdcli = dvdcli::DvdcliCli::command();
        dvdcli.build();
        walk(&dvdcli, "dvdcli".into(), &mut missing);
        assert!(missing.is_empty(), "commands without an example: {missing:?}");
    }

    #[test]
    fn rexray_aliases() {
        for args in [
            ["rexray", "volume", "list"],
            ["rexray", "volume", "inspect"],
            ["rexray", "volume", "get"],
            ["rexray", "volume", "l"],
        ] {
            let cli = Cli::try_parse_from(args).unwrap();
            assert!(matches!(cli.command, Command::Volume(VolumeArgs { command: VolumeCommand::Ls { .. }, .. })));
        }
        let cli = Cli::try_parse_from(["rexray", "volume", "new", "--size", "2", "--volumeType", "gp2", "v"]).unwrap();
        let Command::Volume(VolumeArgs { command: VolumeCommand::Create(c), .. }) = cli.command else { panic!() };
        assert_eq!((c.size, c.volume_type.as_deref()), (Some(2), Some("gp2")));
        let cli = Cli::try_parse_from(["rexray", "volume", "umount", "-s", "loop", "v"]).unwrap();
        let Command::Volume(a) = cli.command else { panic!() };
        assert_eq!(a.service.as_deref(), Some("loop"));
        assert!(Cli::try_parse_from(["rexray", "-c", "/x.yml", "volume", "del", "--force", "a", "b"]).is_ok());
        assert!(Cli::try_parse_from(["rexray", "snapshot", "new", "--volumeid", "v"]).is_ok());
    }
}
