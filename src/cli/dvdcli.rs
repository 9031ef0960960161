//! dvdcli compatibility: the same binary, run as `dvdcli` (a symlink) or `rexray dvdcli …`.
//!
//! It behaves like rexray/dvdcli@7dede14, which Mesos' `docker/volume` isolator runs: it finds a
//! Docker volume plugin by name the way Docker does, activates it, and makes the same calls in
//! the same order, then prints the mountpoint on stdout (logs go to stderr):
//!
//! | command   | calls                                                                     |
//! |-----------|---------------------------------------------------------------------------|
//! | `mount`   | Get; Create{Name,Opts} if Get failed (unless `--explicitcreate`: exit 1); Mount{Name} (no ID) |
//! | `unmount` | Get (must succeed), Unmount{Name} (no ID)                                 |
//! | `create`  | Create{Name,Opts}                                                         |
//! | `remove`  | Get, Remove{Name}                                                         |
//! | `path`    | Get; Path{Name} only when Get returned no Mountpoint                      |
//! | `get`     | Get (prints the name)                                                     |
//! | `list`    | List (prints the names)                                                   |
//!
//! Every run starts with discovery and `/Plugin.Activate`; `Capabilities` is never called.
//!
//! Differences from the Go dvdcli, all on error paths: a `--volumeopts` without `=` (or with an
//! empty key) is an error (exit 1) instead of a crash; a value containing `=` is kept whole
//! instead of being cut at the second `=`; an empty `--volumename` is refused before any call;
//! each call has a deadline, so a hung plugin fails the command before Mesos kills it.
//!
//! # Environment
//!
//! - `DVDCLI_PLUGINS_DIR`: where plugin sockets are looked for (default `/run/docker/plugins`).
//! - `DVDCLI_SPEC_DIRS`: `:`-separated spec file directories (default
//!   `/etc/docker/plugins:/usr/lib/docker/plugins`).
//! - `DVDCLI_PLUGIN_WAIT`: seconds to keep retrying a plugin that is not there yet or refuses
//!   connections, as Docker does (default 15; 0 = no retry).
//! - `DVDCLI_CALL_TIMEOUT`: seconds each plugin call may take (default 110 for Create and Mount,
//!   below Mesos' 120 s kill; 60 for the others).

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::{Parser, Subcommand};
use serde_json::{json, Value};

use super::client::{self, Addr, CallError};

/// The default directory of plugin sockets.
pub const DEFAULT_PLUGINS_DIR: &str = "/run/docker/plugins";
/// The default spec file directories, in lookup order.
pub const DEFAULT_SPEC_DIRS: [&str; 2] = ["/etc/docker/plugins", "/usr/lib/docker/plugins"];

const EXAMPLES: &str = "Examples (as Mesos' docker/volume isolator runs it):
  dvdcli mount --volumedriver=rexray --volumename=data1 --volumeopts=size=5 --volumeopts=volumetype=gp2
  dvdcli unmount --volumedriver=rexray --volumename=data1
  rexray dvdcli path --volumedriver=rexray --volumename=data1";

/// dvdcli: a Docker Volume Driver CLI (rexray-rs compatibility mode).
#[derive(Debug, Parser)]
#[command(name = "dvdcli", version, arg_required_else_help = true, after_help = EXAMPLES)]
pub struct DvdcliCli {
    /// Volume driver: the plugin name (`/run/docker/plugins/NAME.sock` or a spec file).
    #[arg(
        long = "volumedriver",
        alias = "volumeDriver",
        global = true,
        value_name = "NAME",
        default_value = "",
        hide_default_value = true
    )]
    volume_driver: String,
    /// Volume name.
    #[arg(
        long = "volumename",
        alias = "volumeName",
        global = true,
        value_name = "NAME",
        default_value = "",
        hide_default_value = true
    )]
    volume_name: String,
    #[command(subcommand)]
    command: DvdCommand,
}

#[derive(Debug, Clone, clap::Args)]
struct OptsArgs {
    /// Volume options, KEY=VALUE; repeatable, and commas separate several (as pflag's StringSlice).
    #[arg(long = "volumeopts", alias = "volumeOpts", value_name = "KEY=VALUE")]
    volume_opts: Vec<String>,
}

#[derive(Debug, Subcommand)]
enum DvdCommand {
    /// Create a volume.
    #[command(after_help = "Example:\n  dvdcli create --volumedriver=rexray --volumename=data1 --volumeopts=size=5")]
    Create(OptsArgs),
    /// Remove a volume.
    #[command(after_help = "Example:\n  dvdcli remove --volumedriver=rexray --volumename=data1")]
    Remove,
    /// Mount a volume (creating it first if it does not exist) and print its path.
    #[command(after_help = "Example:\n  dvdcli mount --volumedriver=rexray --volumename=data1 --volumeopts=size=5")]
    Mount {
        #[command(flatten)]
        opts: OptsArgs,
        /// Explicit create flag to disable creating volumes that don't exist.
        #[arg(long = "explicitcreate", alias = "explicitCreate", num_args = 0..=1, require_equals = true,
              default_missing_value = "true", default_value = "false", value_parser = parse_go_bool)]
        explicit_create: bool,
    },
    /// Unmount a volume.
    #[command(after_help = "Example:\n  dvdcli unmount --volumedriver=rexray --volumename=data1")]
    Unmount,
    /// Print the path of a mounted volume.
    #[command(after_help = "Example:\n  dvdcli path --volumedriver=rexray --volumename=data1")]
    Path,
    /// Print the name of a volume if it exists.
    #[command(after_help = "Example:\n  dvdcli get --volumedriver=rexray --volumename=data1")]
    Get,
    /// List the volumes.
    #[command(after_help = "Example:\n  dvdcli list --volumedriver=rexray")]
    List,
    /// Print the version.
    #[command(after_help = "Example:\n  dvdcli version")]
    Version,
}

/// Go's `strconv.ParseBool`, which pflag uses for `--flag=value`.
fn parse_go_bool(s: &str) -> Result<bool, String> {
    match s {
        "1" | "t" | "T" | "TRUE" | "true" | "True" => Ok(true),
        "0" | "f" | "F" | "FALSE" | "false" | "False" => Ok(false),
        _ => Err(format!("strconv.ParseBool: parsing {s:?}: invalid syntax")),
    }
}

/// Splits one `--volumeopts` value as pflag's StringSlice does (a CSV record: commas separate,
/// double quotes protect commas).
///
/// # Errors
/// An unterminated quote.
pub fn split_slice(value: &str) -> Result<Vec<String>, String> {
    let mut fields = Vec::new();
    let mut field = String::new();
    let mut chars = value.chars().peekable();
    let mut at_start = true;
    let mut quoted = false;
    while let Some(c) = chars.next() {
        if quoted {
            if c == '"' {
                if chars.peek() == Some(&'"') {
                    chars.next();
                    field.push('"');
                } else {
                    quoted = false;
                }
            } else {
                field.push(c);
            }
            continue;
        }
        match c {
            ',' => {
                fields.push(std::mem::take(&mut field));
                at_start = true;
                continue;
            }
            '"' if at_start => quoted = true,
            _ => field.push(c),
        }
        at_start = false;
    }
    if quoted {
        return Err(format!("unterminated quote in {value:?}"));
    }
    fields.push(field);
    Ok(fields)
}

/// Parses every `--volumeopts` value into Docker's `Opts` (later keys win, as in a Go map).
///
/// # Errors
/// A field without `=`, or with an empty key, names the field.
pub fn parse_volume_opts(values: &[String]) -> Result<BTreeMap<String, String>, String> {
    let mut opts = BTreeMap::new();
    for value in values {
        for field in split_slice(value).map_err(|e| format!("invalid --volumeopts: {e}"))? {
            let Some((key, val)) = field.split_once('=') else {
                return Err(format!("invalid --volumeopts {field:?}: expected KEY=VALUE"));
            };
            if key.is_empty() {
                return Err(format!("invalid --volumeopts {field:?}: the key is empty"));
            }
            opts.insert(key.to_string(), val.to_string());
        }
    }
    Ok(opts)
}

/// Where to look for plugins.
#[derive(Debug, Clone)]
pub struct Roots {
    /// The socket directory.
    pub sockets: PathBuf,
    /// Spec file directories, in order.
    pub specs: Vec<PathBuf>,
}

impl Roots {
    /// From `DVDCLI_PLUGINS_DIR` and `DVDCLI_SPEC_DIRS`, else Docker's defaults.
    pub fn from_env() -> Self {
        let sockets = std::env::var_os("DVDCLI_PLUGINS_DIR")
            .filter(|v| !v.is_empty())
            .map_or_else(|| PathBuf::from(DEFAULT_PLUGINS_DIR), PathBuf::from);
        let specs = match std::env::var("DVDCLI_SPEC_DIRS") {
            Ok(v) => v.split(':').filter(|s| !s.is_empty()).map(PathBuf::from).collect(),
            Err(_) => DEFAULT_SPEC_DIRS.iter().map(PathBuf::from).collect(),
        };
        Self { sockets, specs }
    }
}

/// Why a plugin could not be found.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DiscoveryError {
    /// Nothing of that name.
    #[error("plugin not found")]
    NotFound,
    /// A spec file that cannot be used.
    #[error("spec file {}: {message}", path.display())]
    BadSpec {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
}

/// Finds plugin `name` as Docker's legacy discovery does: `<sockets>/NAME.sock`, then
/// `<sockets>/NAME/NAME.sock` (each must be a socket), then in each spec directory `NAME.spec`,
/// `NAME/NAME.spec`, `NAME.json`, `NAME/NAME.json`; the first match wins.
///
/// # Errors
/// [`DiscoveryError::NotFound`], or a spec file that is unreadable or names no usable address.
pub fn discover(name: &str, roots: &Roots) -> Result<Addr, DiscoveryError> {
    use std::os::unix::fs::FileTypeExt;
    if name.is_empty() || name.contains('/') || name == "." || name == ".." {
        return Err(DiscoveryError::NotFound);
    }
    let in_dir =
        |base: &Path, ext: &str| [base.join(format!("{name}{ext}")), base.join(name).join(format!("{name}{ext}"))];
    for path in in_dir(&roots.sockets, ".sock") {
        if std::fs::metadata(&path).is_ok_and(|m| m.file_type().is_socket()) {
            return Ok(Addr::Unix(path));
        }
    }
    let mut candidates = Vec::new();
    for dir in &roots.specs {
        candidates.extend(in_dir(dir, ".spec"));
        candidates.extend(in_dir(dir, ".json"));
    }
    for path in candidates {
        if !path.exists() {
            continue;
        }
        let bad = |message: String| DiscoveryError::BadSpec { path: path.clone(), message };
        let text = std::fs::read_to_string(&path).map_err(|e| bad(e.to_string()))?;
        let addr = if path.extension().is_some_and(|e| e == "json") {
            let spec: Value = serde_json::from_str(&text).map_err(|e| bad(e.to_string()))?;
            spec.get("Addr").and_then(Value::as_str).unwrap_or_default().to_string()
        } else {
            text.trim().to_string()
        };
        return parse_addr(&addr).map_err(bad);
    }
    Err(DiscoveryError::NotFound)
}

/// A spec file's URL: `unix:///path`, `tcp://host:port` or `http://host:port`.
fn parse_addr(url: &str) -> Result<Addr, String> {
    let Some((scheme, rest)) = url.split_once("://") else {
        return Err("Unknown protocol".to_string());
    };
    match scheme {
        "unix" if rest.starts_with('/') => Ok(Addr::Unix(PathBuf::from(rest))),
        "unix" => Err(format!("{url:?}: a unix address needs an absolute path")),
        "tcp" | "http" => {
            let host = rest.trim_end_matches('/');
            if host.is_empty() {
                Err(format!("{url:?}: no host"))
            } else {
                Ok(Addr::Tcp(host.to_string()))
            }
        }
        "https" => Err(format!("{url:?}: TLS plugin addresses are not supported")),
        _ => Err(format!("{url:?}: unsupported protocol {scheme:?}")),
    }
}

/// Per-call deadlines and the retry window.
#[derive(Debug, Clone, Copy)]
struct Timing {
    /// How long to keep retrying discovery and refused connections.
    wait: Duration,
    /// Deadline of Create and Mount.
    long: Duration,
    /// Deadline of every other call.
    short: Duration,
}

impl Timing {
    fn from_env() -> Self {
        let secs = |var: &str| std::env::var(var).ok().and_then(|v| v.trim().parse::<f64>().ok()).filter(|v| *v >= 0.0);
        let wait = Duration::from_secs_f64(secs("DVDCLI_PLUGIN_WAIT").unwrap_or(15.0));
        let call = secs("DVDCLI_CALL_TIMEOUT").map(Duration::from_secs_f64);
        Self { wait, long: call.unwrap_or(Duration::from_secs(110)), short: call.unwrap_or(Duration::from_secs(60)) }
    }

    fn for_method(&self, method: &str) -> Duration {
        if matches!(method, "VolumeDriver.Create" | "VolumeDriver.Mount") {
            self.long
        } else {
            self.short
        }
    }
}

/// Docker's backoff: 1 s, 2 s, 4 s, 8 s …, the last wait cut to what is left of `window`, so
/// the whole window is waited; `None` once it has passed.
fn backoff(retries: u32, start: Instant, window: Duration) -> Option<Duration> {
    backoff_at(retries, start.elapsed(), window)
}

fn backoff_at(retries: u32, elapsed: Duration, window: Duration) -> Option<Duration> {
    let left = window.checked_sub(elapsed).filter(|left| !left.is_zero())?;
    Some(Duration::from_secs(1u64 << retries.min(5)).min(left))
}

/// Logs a line to stderr in logrus' text format, as dvdcli does.
fn log(level: &str, message: &str, fields: &[(&str, &str)]) {
    let time = humantime::format_rfc3339_seconds(std::time::SystemTime::now());
    let mut line = format!("time=\"{time}\" level={level} msg={message:?}");
    for (k, v) in fields {
        line.push_str(&format!(" {k}={v:?}"));
    }
    eprintln!("{line}");
}

/// A connected, activated plugin.
struct Plugin {
    addr: Addr,
    timing: Timing,
}

impl Plugin {
    /// Discovery plus `/Plugin.Activate`, retrying a missing plugin or a refused connection
    /// for [`Timing::wait`].
    async fn open(name: &str, roots: &Roots, timing: Timing) -> Result<Self, String> {
        let start = Instant::now();
        let mut retries = 0;
        loop {
            let message = match discover(name, roots) {
                Ok(addr) => {
                    let plugin = Plugin { addr, timing };
                    match plugin.activate().await {
                        Ok(()) => return Ok(plugin),
                        Err(e) if e.is_connect() => e.to_string(),
                        Err(e) => return Err(e.to_string()),
                    }
                }
                Err(DiscoveryError::NotFound) => DiscoveryError::NotFound.to_string(),
                Err(e) => return Err(e.to_string()),
            };
            match backoff(retries, start, timing.wait) {
                Some(wait) => {
                    log("warning", &format!("Unable to locate plugin: {name}, retrying in {}s", wait.as_secs()), &[]);
                    tokio::time::sleep(wait).await;
                    retries += 1;
                }
                None => return Err(format!("Error looking up volume plugin {name}: {message}")),
            }
        }
    }

    async fn activate(&self) -> Result<(), CallError> {
        let reply = client::call_json(&self.addr, "Plugin.Activate", None, self.timing.short).await?;
        let implements = reply.get("Implements").and_then(Value::as_array).cloned().unwrap_or_default();
        if implements.iter().any(|i| i == "VolumeDriver") {
            Ok(())
        } else {
            Err(CallError::Http {
                method: "Plugin.Activate".into(),
                message: "Plugin does not implement the requested driver".into(),
            })
        }
    }

    /// One call; a refused connection is retried within the wait window (nothing was sent).
    async fn call(&self, method: &str, body: Value) -> Result<Value, CallError> {
        let start = Instant::now();
        let mut retries = 0;
        loop {
            match client::call_json(&self.addr, method, Some(&body), self.timing.for_method(method)).await {
                Err(e) if e.is_connect() => match backoff(retries, start, self.timing.wait) {
                    Some(wait) => {
                        log(
                            "warning",
                            &format!(
                                "Unable to connect to plugin: {}/{method}, retrying in {}s",
                                self.addr,
                                wait.as_secs()
                            ),
                            &[],
                        );
                        tokio::time::sleep(wait).await;
                        retries += 1;
                    }
                    None => return Err(e),
                },
                other => return other,
            }
        }
    }

    /// `Get`: the volume's name and mountpoint, or an error ("no such volume" when the plugin
    /// returns no volume and no error).
    async fn get(&self, name: &str) -> Result<(String, String), CallError> {
        let reply = self.call("VolumeDriver.Get", json!({ "Name": name })).await?;
        match reply.get("Volume") {
            Some(v) if v.is_object() => Ok((
                v.get("Name").and_then(Value::as_str).unwrap_or(name).to_string(),
                v.get("Mountpoint").and_then(Value::as_str).unwrap_or_default().to_string(),
            )),
            _ => Err(CallError::Http { method: "VolumeDriver.Get".into(), message: "no such volume".into() }),
        }
    }
}

/// Runs dvdcli with `args` (without the program name) and returns the exit code.
pub fn main(args: Vec<OsString>) -> ExitCode {
    let argv = std::iter::once(OsString::from("dvdcli")).chain(args);
    let cli = match DvdcliCli::try_parse_from(argv) {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            // Like dvdcli, no command at all prints the usage and succeeds; other errors exit 1.
            let help = e.kind() == clap::error::ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand;
            return if e.use_stderr() && !help { ExitCode::FAILURE } else { ExitCode::SUCCESS };
        }
    };
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            log("error", &format!("cannot start the async runtime: {e}"), &[]);
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli, Roots::from_env(), Timing::from_env())) {
        Ok(()) => ExitCode::SUCCESS,
        Err(()) => ExitCode::FAILURE,
    }
}

/// Logs `err` as dvdcli does (with the volume name) and fails.
fn fail(volume: &str, err: impl std::fmt::Display) -> Result<(), ()> {
    log("error", &err.to_string(), &[("volumeName", volume)]);
    Err(())
}

async fn run(cli: DvdcliCli, roots: Roots, timing: Timing) -> Result<(), ()> {
    let name = cli.volume_name.as_str();
    if let DvdCommand::Version = cli.command {
        outln!("dvdcli (rexray {} compatibility mode)", env!("CARGO_PKG_VERSION"));
        outln!("Commit: {}", env!("REXRAY_COMMIT"));
        outln!("Formed: {}", env!("REXRAY_BUILD_DATE"));
        return Ok(());
    }
    // Option errors are found before anything is sent.
    let opts = match &cli.command {
        DvdCommand::Create(o) | DvdCommand::Mount { opts: o, .. } => match parse_volume_opts(&o.volume_opts) {
            Ok(opts) => opts,
            Err(e) => return fail(name, e),
        },
        _ => BTreeMap::new(),
    };
    if cli.volume_driver.is_empty() {
        log("info", "Missing volume driver name", &[("volumeDriver", "")]);
        return Err(());
    }
    if name.is_empty() && !matches!(cli.command, DvdCommand::List) {
        return fail(name, "Missing volume name (--volumename)");
    }
    let plugin = match Plugin::open(&cli.volume_driver, &roots, timing).await {
        Ok(p) => p,
        Err(e) => {
            log("info", &e, &[("volumeDriver", &cli.volume_driver)]);
            return Err(());
        }
    };
    match cli.command {
        DvdCommand::Create(_) => {
            if let Err(e) = plugin.call("VolumeDriver.Create", json!({ "Name": name, "Opts": opts })).await {
                return fail(name, e);
            }
            log("info", name, &[]);
        }
        DvdCommand::Remove => {
            if let Err(e) = plugin.get(name).await {
                return fail(name, e);
            }
            if let Err(e) = plugin.call("VolumeDriver.Remove", json!({ "Name": name })).await {
                return fail(name, e);
            }
        }
        DvdCommand::Mount { explicit_create, .. } => {
            match plugin.get(name).await {
                Ok(_) => {}
                Err(e) if explicit_create => return fail(name, e),
                Err(_) => {
                    if let Err(e) = plugin.call("VolumeDriver.Create", json!({ "Name": name, "Opts": opts })).await {
                        return fail(name, e);
                    }
                }
            }
            match plugin.call("VolumeDriver.Mount", json!({ "Name": name })).await {
                Ok(reply) => {
                    let path = reply.get("Mountpoint").and_then(Value::as_str).unwrap_or_default();
                    log("info", path, &[]);
                    outln!("{path}");
                }
                Err(e) => return fail(name, e),
            }
        }
        DvdCommand::Unmount => {
            if let Err(e) = plugin.get(name).await {
                return fail(name, e);
            }
            if let Err(e) = plugin.call("VolumeDriver.Unmount", json!({ "Name": name })).await {
                return fail(name, e);
            }
        }
        DvdCommand::Path => {
            let mountpoint = match plugin.get(name).await {
                Ok((_, m)) => m,
                Err(e) => return fail(name, e),
            };
            let path = if mountpoint.is_empty() {
                match plugin.call("VolumeDriver.Path", json!({ "Name": name })).await {
                    Ok(reply) => reply.get("Mountpoint").and_then(Value::as_str).unwrap_or_default().to_string(),
                    Err(e) => {
                        // dvdcli ignores a Path error and prints nothing.
                        log("warning", &e.to_string(), &[("volumeName", name)]);
                        String::new()
                    }
                }
            } else {
                mountpoint
            };
            if !path.is_empty() {
                log("info", &path, &[]);
                outln!("{path}");
            }
        }
        DvdCommand::Get => match plugin.get(name).await {
            Ok((found, _)) => outln!("{found}"),
            Err(e) => return fail(name, e),
        },
        DvdCommand::List => match plugin.call("VolumeDriver.List", json!({})).await {
            Ok(reply) => {
                for v in reply.get("Volumes").and_then(Value::as_array).into_iter().flatten() {
                    outln!("{}", v.get("Name").and_then(Value::as_str).unwrap_or_default());
                }
            }
            Err(e) => {
                log("error", &e.to_string(), &[]);
                return Err(());
            }
        },
        DvdCommand::Version => unreachable!("handled above"),
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn volume_opts_split_like_pflag_string_slice() {
        assert_eq!(split_slice("a=1,b=2").unwrap(), ["a=1", "b=2"]);
        assert_eq!(split_slice("\"m=a,b\",c=d").unwrap(), ["m=a,b", "c=d"]);
        assert_eq!(split_slice("x=\"q\"").unwrap(), ["x=\"q\""], "quotes only count at the start of a field");
        assert!(split_slice("\"open").is_err());
        let opts = parse_volume_opts(&["size=5,volumetype=gp2".into(), "iops=100".into(), "size=7".into()]).unwrap();
        assert_eq!(
            opts,
            BTreeMap::from([
                ("iops".into(), "100".into()),
                ("size".into(), "7".into()),
                ("volumetype".into(), "gp2".into())
            ])
        );
        let opts = parse_volume_opts(&["mountOptions=uid=1000".into()]).unwrap();
        assert_eq!(opts["mountOptions"], "uid=1000", "a value with '=' is kept whole");
        assert_eq!(parse_volume_opts(&[]).unwrap(), BTreeMap::new());
    }

    #[test]
    fn malformed_volume_opts_are_errors() {
        let err = parse_volume_opts(&["size".into()]).unwrap_err();
        assert_eq!(err, "invalid --volumeopts \"size\": expected KEY=VALUE");
        let err = parse_volume_opts(&["a=1,,b=2".into()]).unwrap_err();
        assert!(err.contains("\"\""), "{err}");
        assert!(parse_volume_opts(&["=v".into()]).unwrap_err().contains("key is empty"));
    }

    #[test]
    fn flags_parse_like_dvdcli() {
        let cli = DvdcliCli::try_parse_from([
            "dvdcli",
            "mount",
            "--volumedriver=rexray",
            "--volumename",
            "v1",
            "--volumeopts=size=1",
            "--volumeopts",
            "a=b,c=d",
            "--explicitcreate",
        ])
        .unwrap();
        assert_eq!(cli.volume_driver, "rexray");
        assert_eq!(cli.volume_name, "v1");
        let DvdCommand::Mount { opts, explicit_create } = cli.command else { panic!() };
        assert!(explicit_create);
        assert_eq!(opts.volume_opts, ["size=1", "a=b,c=d"]);
        // Persistent flags may come before the command; --explicitcreate=false is a Go bool.
        let cli = DvdcliCli::try_parse_from(["dvdcli", "--volumedriver=x", "mount", "--explicitcreate=false"]).unwrap();
        assert!(matches!(cli.command, DvdCommand::Mount { explicit_create: false, .. }));
        // --volumeopts exists only on create and mount, as in dvdcli.
        assert!(DvdcliCli::try_parse_from(["dvdcli", "unmount", "--volumeopts=a=b"]).is_err());
        assert!(DvdcliCli::try_parse_from(["dvdcli", "mount", "--explicitcreate=maybe"]).is_err());
    }

    #[test]
    fn discovery_order_sockets_then_spec_files() {
        let dir = tempfile::tempdir().unwrap();
        let roots =
            Roots { sockets: dir.path().join("run"), specs: vec![dir.path().join("etc"), dir.path().join("usr")] };
        for d in ["run/p2", "etc/p3", "usr"] {
            std::fs::create_dir_all(dir.path().join(d)).unwrap();
        }
        assert_eq!(discover("p1", &roots), Err(DiscoveryError::NotFound));
        // A regular file named like a socket is not a socket.
        std::fs::write(dir.path().join("run/p1.sock"), "").unwrap();
        std::fs::write(dir.path().join("usr/p1.spec"), "unix:///elsewhere/p1.sock\n").unwrap();
        assert_eq!(discover("p1", &roots), Ok(Addr::Unix("/elsewhere/p1.sock".into())));
        std::fs::remove_file(dir.path().join("run/p1.sock")).unwrap();
        let _l = std::os::unix::net::UnixListener::bind(dir.path().join("run/p1.sock")).unwrap();
        assert_eq!(discover("p1", &roots), Ok(Addr::Unix(dir.path().join("run/p1.sock"))));
        let _l2 = std::os::unix::net::UnixListener::bind(dir.path().join("run/p2/p2.sock")).unwrap();
        assert_eq!(discover("p2", &roots), Ok(Addr::Unix(dir.path().join("run/p2/p2.sock"))));
        // Spec dirs in order; .spec before .json within one directory.
        std::fs::write(dir.path().join("etc/p3/p3.json"), r#"{"Name":"p3","Addr":"tcp://127.0.0.1:9"}"#).unwrap();
        std::fs::write(dir.path().join("usr/p3.spec"), "unix:///never").unwrap();
        assert_eq!(discover("p3", &roots), Ok(Addr::Tcp("127.0.0.1:9".into())));
        std::fs::write(dir.path().join("etc/p4.spec"), "/no/scheme.sock").unwrap();
        let err = discover("p4", &roots).unwrap_err().to_string();
        assert!(err.ends_with("p4.spec: Unknown protocol"), "{err}");
        std::fs::write(dir.path().join("etc/p5.spec"), "https://h:1").unwrap();
        assert!(discover("p5", &roots).unwrap_err().to_string().contains("not supported"));
        assert_eq!(discover("../p1", &roots), Err(DiscoveryError::NotFound));
    }

    #[test]
    fn backoff_is_bounded_by_the_window() {
        let window = Duration::from_secs(15);
        // Waits of 1, 2, 4 and 8 s fill the 15 s window exactly; then it gives up.
        let mut elapsed = Duration::ZERO;
        let mut waits = Vec::new();
        while let Some(wait) = backoff_at(u32::try_from(waits.len()).unwrap(), elapsed, window) {
            waits.push(wait.as_secs());
            elapsed += wait;
        }
        assert_eq!(waits, vec![1, 2, 4, 8]);
        assert_eq!(elapsed, window);
        // A late start gets only what is left.
        assert_eq!(backoff_at(3, Duration::from_millis(14_500), window), Some(Duration::from_millis(500)));
        assert_eq!(backoff(0, Instant::now(), Duration::ZERO), None);
    }
}
