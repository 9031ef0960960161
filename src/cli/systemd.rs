//! `rexray service install|uninstall`: the systemd units that start the daemon before Docker.
//!
//! Two units, written to `<root>/etc/systemd/system/` and enabled with the symbolic links
//! `systemctl enable` would make:
//!
//! - `rexray.socket` listens on every configured plugin socket (`ListenStream=`), so a call from
//!   Docker waits in the socket's queue while the daemon starts instead of failing with "plugin
//!   not found" (moby #22653); the daemon takes the sockets from `LISTEN_FDS`;
//! - `rexray.service` (`Type=notify`, `Before=docker.service`) runs `rexray service start`.
//!
//! `dist/systemd/` holds the units as rendered for the defaults (a test keeps them equal).

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};

use crate::config::Config;

/// The first line of every unit we write; a unit without it is not ours to overwrite or remove.
pub const MARKER: &str = "# Installed by `rexray service install`; `rexray service uninstall` removes it.";

/// The service unit's file name.
pub const SERVICE_UNIT: &str = "rexray.service";

/// The socket unit's file name.
pub const SOCKET_UNIT: &str = "rexray.socket";

/// Where unit files go, relative to the root.
const UNIT_DIR: &str = "etc/systemd/system";

/// What the units are rendered from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Units {
    /// The daemon binary, as systemd will run it.
    pub bin: PathBuf,
    /// The config file passed with `-c`, when not the default search.
    pub config: Option<PathBuf>,
    /// The plugin sockets (one `ListenStream=` each).
    pub sockets: Vec<PathBuf>,
    /// The group that owns the sockets (mode 0660), if any.
    pub group: Option<String>,
}

impl Units {
    /// The units for a configuration: its module sockets and socket group.
    pub fn for_config(config: &Config, bin: PathBuf, explicit_config: Option<PathBuf>) -> Self {
        Self {
            bin,
            config: explicit_config,
            sockets: config.modules.iter().map(|m| m.socket.clone()).collect(),
            group: config.modules.iter().find_map(|m| m.group.clone()),
        }
    }

    /// `rexray.service`.
    pub fn service(&self) -> String {
        let config = self.config.as_ref().map(|c| format!(" -c {}", quote(c))).unwrap_or_default();
        format!(
            "{MARKER}
[Unit]
Description=rexray: Docker volume plugin (REX-Ray replacement)
# Docker finds the plugin when it starts (restored volumes, containers with a restart policy).
Before=docker.service
After=network-online.target local-fs.target {SOCKET_UNIT}
Wants=network-online.target
Requires={SOCKET_UNIT}

[Service]
Type=notify
ExecStart={bin}{config} service start -f
# Settings such as EBS_ACCESSKEY or REXRAY_LOGLEVEL, one NAME=value per line.
EnvironmentFile=-/etc/default/rexray
# The daemon mounts volumes for Docker, so it must share the host's mount namespace: no
# PrivateTmp=, ProtectSystem=, PrivateDevices= or MountFlags= here.
Restart=on-failure
RestartSec=2
# SIGTERM lets calls in flight finish (Docker allows them 2 minutes); volumes stay mounted.
KillMode=mixed
TimeoutStopSec=130
LimitNOFILE=65536

[Install]
WantedBy=multi-user.target
",
            bin = quote(&self.bin),
        )
    }

    /// `rexray.socket`.
    pub fn socket(&self) -> String {
        let listen: String = self.sockets.iter().map(|s| format!("ListenStream={}\n", s.display())).collect();
        let access = match &self.group {
            Some(group) => format!("SocketMode=0660\nSocketGroup={group}\n"),
            None => "SocketMode=0600\n".to_string(),
        };
        format!(
            "{MARKER}
[Unit]
Description=rexray: Docker volume plugin sockets
# Listening before Docker starts: its calls wait here until the daemon answers.
Before=docker.service

[Socket]
{listen}{access}DirectoryMode=0755
# No stale socket file once stopped (a dead socket makes Docker retry for 15 s per call).
RemoveOnStop=yes

[Install]
WantedBy=sockets.target
"
        )
    }
}

/// A path as systemd reads it in `ExecStart=` (quoted when it has spaces).
fn quote(path: &Path) -> String {
    let text = path.display().to_string();
    if text.contains(char::is_whitespace) || text.contains('"') {
        format!("\"{}\"", text.replace('\\', "\\\\").replace('"', "\\\""))
    } else {
        text
    }
}

/// The unit files and their enable links under `root`: (unit file, link, link target).
fn layout(root: &Path) -> [(PathBuf, PathBuf, PathBuf); 2] {
    let dir = root.join(UNIT_DIR);
    let entry = |unit: &str, target: &str| {
        (dir.join(unit), dir.join(format!("{target}.wants")).join(unit), Path::new("/").join(UNIT_DIR).join(unit))
    };
    [entry(SERVICE_UNIT, "multi-user.target"), entry(SOCKET_UNIT, "sockets.target")]
}

/// Whether `path` holds a unit we wrote (or nothing).
fn ours_or_missing(path: &Path) -> io::Result<bool> {
    match fs::read_to_string(path) {
        Ok(text) => Ok(text.starts_with(MARKER)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(true),
        Err(e) => Err(e),
    }
}

/// Writes both units under `root` and enables them. Returns the lines to print.
///
/// # Errors
/// A unit exists that we did not write (unless `force`), or a file could not be written.
pub fn install(root: &Path, units: &Units, force: bool) -> anyhow::Result<Vec<String>> {
    if units.sockets.is_empty() {
        bail!("the configuration enables no docker module, so there is no socket to listen on");
    }
    let mut out = Vec::new();
    let layout = layout(root);
    for (unit, _, _) in &layout {
        if !force && !ours_or_missing(unit).with_context(|| format!("read {}", unit.display()))? {
            bail!("{} exists and was not written by rexray; use --force to replace it", unit.display());
        }
    }
    let contents = [units.service(), units.socket()];
    for ((unit, link, target), text) in layout.iter().zip(contents) {
        let dir = unit.parent().expect("unit files live in a directory");
        fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
        let tmp = unit.with_extension("rexray-tmp");
        fs::write(&tmp, &text).with_context(|| format!("write {}", tmp.display()))?;
        fs::rename(&tmp, unit).with_context(|| format!("rename {} to {}", tmp.display(), unit.display()))?;
        out.push(format!("wrote {}", unit.display()));
        let wants = link.parent().expect("links live in a directory");
        fs::create_dir_all(wants).with_context(|| format!("create {}", wants.display()))?;
        match fs::symlink_metadata(link) {
            Ok(_) => fs::remove_file(link).with_context(|| format!("replace {}", link.display()))?,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e).with_context(|| format!("inspect {}", link.display())),
        }
        std::os::unix::fs::symlink(target, link).with_context(|| format!("link {}", link.display()))?;
        out.push(format!("enabled {} ({} → {})", unit.display(), link.display(), target.display()));
    }
    let bin_on_root = root.join(units.bin.strip_prefix("/").unwrap_or(&units.bin));
    if !bin_on_root.exists() {
        out.push(format!("warning: {} does not exist; install the binary there or pass --bin", bin_on_root.display()));
    }
    out.push(format!(
        "next: systemctl daemon-reload && systemctl restart {SOCKET_UNIT} && systemctl start {SERVICE_UNIT}"
    ));
    Ok(out)
}

/// Removes both units and their enable links from under `root`. Returns the lines to print.
///
/// # Errors
/// A unit exists that we did not write, or a file could not be removed.
pub fn uninstall(root: &Path) -> anyhow::Result<Vec<String>> {
    let mut out = Vec::new();
    let layout = layout(root);
    for (unit, _, _) in &layout {
        if !ours_or_missing(unit).with_context(|| format!("read {}", unit.display()))? {
            bail!("{} was not written by rexray; not removing it", unit.display());
        }
    }
    for (unit, link, _) in layout {
        for path in [&link, &unit] {
            match fs::remove_file(path) {
                Ok(()) => out.push(format!("removed {}", path.display())),
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(e).with_context(|| format!("remove {}", path.display())),
            }
        }
    }
    if out.is_empty() {
        out.push("nothing to remove: the rexray units are not installed".to_string());
    } else {
        out.push(format!(
            "next: systemctl stop {SERVICE_UNIT} {SOCKET_UNIT} && systemctl daemon-reload (volumes stay mounted)"
        ));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn defaults() -> Units {
        let config = crate::config::parse("", None, &Default::default()).unwrap();
        Units::for_config(&config, PathBuf::from("/usr/bin/rexray"), None)
    }

    #[test]
    fn dist_units_are_the_rendered_defaults() {
        let units = defaults();
        assert_eq!(units.service(), include_str!("../../dist/systemd/rexray.service"));
        assert_eq!(units.socket(), include_str!("../../dist/systemd/rexray.socket"));
    }

    #[test]
    fn units_follow_the_configured_sockets_group_and_file() {
        let text = "rexray:\n  modules:\n    default-docker: {}\n    rexray-loop:\n      host: unix:///run/docker/plugins/rexray-loop.sock\n      group: docker\n";
        let config = crate::config::parse(text, None, &Default::default()).unwrap();
        let units = Units::for_config(&config, PathBuf::from("/opt/rex ray/rexray"), Some("/etc/rexray/a.yml".into()));
        let socket = units.socket();
        assert!(
            socket.contains(
                "ListenStream=/run/docker/plugins/rexray.sock\nListenStream=/run/docker/plugins/rexray-loop.sock\n"
            ),
            "{socket}"
        );
        assert!(socket.contains("SocketMode=0660\nSocketGroup=docker\n"), "{socket}");
        let service = units.service();
        assert!(
            service.contains("ExecStart=\"/opt/rex ray/rexray\" -c /etc/rexray/a.yml service start -f\n"),
            "{service}"
        );
        assert!(service.contains("Before=docker.service\n") && service.contains("Type=notify\n"), "{service}");
    }

    #[test]
    fn install_and_uninstall_under_a_root() {
        let root = tempfile::tempdir().unwrap();
        let units = defaults();
        let lines = install(root.path(), &units, false).unwrap();
        assert!(lines.iter().any(|l| l.contains("does not exist")), "{lines:?}");
        let dir = root.path().join("etc/systemd/system");
        assert_eq!(fs::read_to_string(dir.join("rexray.service")).unwrap(), units.service());
        assert_eq!(fs::read_to_string(dir.join("rexray.socket")).unwrap(), units.socket());
        assert_eq!(
            fs::read_link(dir.join("sockets.target.wants/rexray.socket")).unwrap(),
            Path::new("/etc/systemd/system/rexray.socket")
        );
        assert_eq!(
            fs::read_link(dir.join("multi-user.target.wants/rexray.service")).unwrap(),
            Path::new("/etc/systemd/system/rexray.service")
        );
        // Again: idempotent.
        install(root.path(), &units, false).unwrap();

        let lines = uninstall(root.path()).unwrap();
        assert_eq!(lines.iter().filter(|l| l.starts_with("removed")).count(), 4, "{lines:?}");
        assert!(!dir.join("rexray.service").exists() && !dir.join("sockets.target.wants/rexray.socket").exists());
        assert!(uninstall(root.path()).unwrap()[0].starts_with("nothing to remove"));
    }

    #[test]
    fn a_foreign_unit_is_left_alone() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("etc/systemd/system");
        fs::create_dir_all(&dir).unwrap();
        fs::write(dir.join("rexray.service"), "[Service]\nExecStart=/usr/bin/true\n").unwrap();
        let err = install(root.path(), &defaults(), false).unwrap_err().to_string();
        assert!(err.contains("was not written by rexray") && err.contains("--force"), "{err}");
        let err = uninstall(root.path()).unwrap_err().to_string();
        assert!(err.contains("not removing it"), "{err}");
        install(root.path(), &defaults(), true).unwrap();
        assert!(fs::read_to_string(dir.join("rexray.service")).unwrap().starts_with(MARKER));
    }
}
