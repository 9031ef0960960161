//! `rexray volume …`, and the [`Target`] that `volume` and `snapshot` commands act on.
//!
//! When a daemon answers on the private admin socket (`<paths.run>/rexray-admin.sock`), every
//! command goes through it, so the daemon's per-volume locks and mount accounting stay right.
//! Otherwise the command opens the service in this process, on the same state directory
//! (`<paths.lib>/state/<service>`) — unless a daemon answers on one of the configured plugin
//! sockets without an admin socket, which is refused.
//!
//! `attach`/`mount` hold the volume for the holder [`CLI_HOLDER`] (as a container holds it
//! with its mount ID); `detach`/`unmount` release that hold. Docker's and dvdcli's holders are
//! never touched.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, bail, Context};
use serde::Serialize;
use serde_json::{json, Value};

use super::client::{self, Addr, CallError};
use crate::config::{BackendKind, Config, ServiceConfig};
use crate::protocol::admin::{self, InfoResponse};
use crate::protocol::volume_ops::{OrphanEntry, OrphansResponse};
use crate::service::VolumeService;

/// The mount ID the CLI holds volumes with (`rexray volume mount|attach`).
pub const CLI_HOLDER: &str = "cli";

/// How long slow admin calls (create, mount, unmount, remove) may take.
const SLOW: Duration = Duration::from_secs(600);
/// How long quick admin calls may take.
const QUICK: Duration = Duration::from_secs(30);

/// Output formats (`-f/--format`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// A table (REX-Ray's `tmpl`).
    #[value(alias = "tmpl")]
    Table,
    /// One line of JSON.
    Json,
    /// Pretty-printed JSON.
    Jsonp,
}

impl Format {
    /// Prints `value` as JSON in this format (`Table` prints nothing).
    pub fn print_json(self, value: &impl Serialize) -> anyhow::Result<()> {
        match self {
            Format::Table => {}
            Format::Json => outln!("{}", serde_json::to_string(value)?),
            Format::Jsonp => outln!("{}", serde_json::to_string_pretty(value)?),
        }
        Ok(())
    }
}

/// A volume as the commands show it (Docker's shape).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct View {
    /// Name.
    #[serde(rename = "Name")]
    pub name: String,
    /// Host path while active.
    #[serde(rename = "Mountpoint", skip_serializing_if = "Option::is_none")]
    pub mountpoint: Option<String>,
    /// RFC 3339.
    #[serde(rename = "CreatedAt", skip_serializing_if = "Option::is_none")]
    pub created_at: Option<String>,
    /// Status: service, backend, holders, active, options, backend details.
    #[serde(rename = "Status")]
    pub status: BTreeMap<String, Value>,
}

impl View {
    fn from_wire(v: &Value) -> Self {
        let text = |k: &str| v.get(k).and_then(Value::as_str).filter(|s| !s.is_empty()).map(str::to_string);
        Self {
            name: text("Name").unwrap_or_default(),
            mountpoint: text("Mountpoint"),
            created_at: text("CreatedAt"),
            status: v
                .get("Status")
                .and_then(Value::as_object)
                .map(|m| m.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
                .unwrap_or_default(),
        }
    }

    fn from_info(info: crate::service::VolumeInfo) -> Self {
        Self {
            name: info.name,
            mountpoint: info.mountpoint.map(|p| p.display().to_string()),
            created_at: Some(info.created_at).filter(|c| !c.is_empty()),
            status: info.status.to_map(),
        }
    }

    /// How many holders the volume has.
    pub fn holders(&self) -> u64 {
        self.status.get("holders").and_then(Value::as_u64).unwrap_or(0)
    }

    /// Whether the volume is active (attached and mounted) on this host.
    pub fn attached(&self) -> bool {
        self.mountpoint.is_some()
    }

    /// A Status value as text, `-` when absent.
    fn text(&self, key: &str) -> String {
        self.status.get(key).and_then(Value::as_str).filter(|s| !s.is_empty()).unwrap_or("-").to_owned()
    }

    fn size(&self) -> String {
        if let Some(gib) = self.status.get("sizeGiB").and_then(Value::as_u64) {
            return format!("{gib} GiB");
        }
        self.status
            .get("options")
            .and_then(|o| o.get("size"))
            .and_then(|s| s.as_str().map(str::to_string).or_else(|| s.as_u64().map(|n| n.to_string())))
            .map_or_else(|| "-".to_string(), |s| format!("{s} GiB"))
    }
}

/// Where the commands act: through the daemon, or on the service opened in this process.
#[derive(Debug)]
pub enum Target {
    /// The daemon's admin socket, and the service's name.
    Daemon {
        /// The admin socket.
        addr: Addr,
        /// The service.
        service: String,
    },
    /// The service, opened here.
    Local(Arc<VolumeService>),
}

/// The configured service called `name`, or the first one.
///
/// # Errors
/// No service of that name is configured.
pub fn pick_service<'a>(config: &'a Config, name: Option<&str>) -> anyhow::Result<&'a ServiceConfig> {
    let names = || config.services.iter().map(|s| s.name.as_str()).collect::<Vec<_>>().join(", ");
    match name {
        Some(name) => config
            .services
            .iter()
            .find(|s| s.name == name)
            .with_context(|| format!("no service {name:?} is configured (configured services: {})", names())),
        None => config.services.first().context("no service is configured"),
    }
}

/// Set by `--plugin NAME`: commands act through that plugin's daemon or not at all.
static REQUIRED_DAEMON: std::sync::OnceLock<String> = std::sync::OnceLock::new();

/// Makes every volume and snapshot command go through the daemon of managed plugin `name`:
/// when it does not answer, they fail instead of acting on this host's local state.
pub fn require_daemon(name: &str) {
    let _ = REQUIRED_DAEMON.set(name.to_owned());
}

/// What the daemon's admin socket says, if a daemon answers there.
///
/// # Errors
/// The socket exists but cannot be used (permission denied: it is private to root), or the
/// daemon does not answer in time.
pub async fn daemon_info(config: &Config) -> anyhow::Result<Option<InfoResponse>> {
    let path = super::daemon::admin_socket(config);
    let addr = Addr::Unix(path.clone());
    match client::call_json(&addr, "Admin.Info", None, Duration::from_secs(10)).await {
        Ok(reply) => Ok(Some(serde_json::from_value(reply).context("malformed reply from the admin socket")?)),
        Err(e) if e.is_permission_denied() => bail!(
            "permission denied on the admin socket {}: it is private to root (run this command as root)",
            path.display()
        ),
        Err(e) if e.is_connect() => Ok(None),
        Err(e) => Err(anyhow!(e).context(format!("the daemon on {} does not answer", path.display()))),
    }
}

/// Whether something answers `/Plugin.Activate` on `socket`.
pub async fn plugin_answers(socket: &std::path::Path) -> bool {
    client::call_json(&Addr::Unix(socket.to_path_buf()), "Plugin.Activate", None, Duration::from_secs(3))
        .await
        .is_ok_and(|reply| {
            reply.get("Implements").and_then(Value::as_array).is_some_and(|i| i.iter().any(|x| x == "VolumeDriver"))
        })
}

fn call_err(e: CallError) -> anyhow::Error {
    match e {
        CallError::Plugin { message, .. } => anyhow!(message),
        other => anyhow!(other),
    }
}

impl Target {
    /// Chooses the daemon when its admin socket answers, else opens the service here.
    ///
    /// # Errors
    /// Unknown service, an unusable admin socket, a daemon without admin socket, or the
    /// service could not be opened.
    pub async fn open(config: &Config, service: Option<&str>) -> anyhow::Result<Self> {
        let svc = pick_service(config, service)?;
        let info = daemon_info(config).await?;
        if let (None, Some(plugin)) = (&info, REQUIRED_DAEMON.get()) {
            bail!(
                "the daemon of plugin {plugin} does not answer on its admin socket ({}); see `docker plugin inspect {plugin}` and its log",
                super::daemon::admin_socket(config).display()
            );
        }
        if let Some(info) = info {
            if !info.services.iter().any(|s| s.name == svc.name) {
                bail!(
                    "the running daemon (pid {}) has no service {:?} (it serves: {}); was it started with another config?",
                    info.pid,
                    svc.name,
                    info.services.iter().map(|s| s.name.as_str()).collect::<Vec<_>>().join(", ")
                );
            }
            let addr = Addr::Unix(super::daemon::admin_socket(config));
            return Ok(Target::Daemon { addr, service: svc.name.clone() });
        }
        for module in &config.modules {
            if plugin_answers(&module.socket).await {
                bail!(
                    "a plugin answers on {} but no rexray daemon answers on its admin socket {}; refusing to change \
                     volume state behind its back (run with the daemon's REXRAY_HOME, or stop it first)",
                    module.socket.display(),
                    super::daemon::admin_socket(config).display()
                );
            }
        }
        let service = open_local(config, svc).await?;
        if service.scope() == crate::backend::Scope::Global {
            // A fresh process knows nothing of the cluster-wide storage yet: one listing fills
            // the backend's cache, so the Status of a volume shows the storage's details.
            // What it cannot list is reported by the command's own listing.
            let _ = service.list().await;
        }
        Ok(Target::Local(Arc::new(service)))
    }

    /// One call of `method` on the daemon's admin socket for this target's service.
    pub(super) async fn call(&self, method: &str, body: Value, timeout: Duration) -> anyhow::Result<Value> {
        let Target::Daemon { addr, service } = self else { unreachable!("daemon calls only") };
        let method = format!("{}/{method}", admin::service_prefix(service).trim_start_matches('/'));
        client::call_json(addr, &method, Some(&body), timeout).await.map_err(call_err)
    }

    /// Every volume, and why the storage's part is what it listed last when it could not be
    /// asked.
    ///
    /// # Errors
    /// The daemon's or the service's failure (a storage that never answered a listing).
    pub async fn list(&self) -> anyhow::Result<(Vec<View>, Option<String>)> {
        match self {
            Target::Local(s) => {
                let listing = s.list_detailed().await.map_err(|e| anyhow!(e.chain()))?;
                let stale = listing.stale.map(|stale| stale.to_string());
                Ok((listing.volumes.into_iter().map(View::from_info).collect(), stale))
            }
            Target::Daemon { .. } => {
                let reply = self.call("VolumeDriver.List", json!({}), QUICK).await?;
                let stale = reply.get("Stale").and_then(Value::as_str).map(str::to_owned);
                let mut out = Vec::new();
                for v in reply.get("Volumes").and_then(Value::as_array).into_iter().flatten() {
                    let name = v.get("Name").and_then(Value::as_str).unwrap_or_default();
                    // Get adds the Status; a volume removed meanwhile is skipped.
                    match self.get(name).await {
                        Ok(view) => out.push(view),
                        Err(_) => continue,
                    }
                }
                Ok((out, stale))
            }
        }
    }

    /// One volume.
    ///
    /// # Errors
    /// No such volume, or the daemon's failure.
    pub async fn get(&self, name: &str) -> anyhow::Result<View> {
        match self {
            Target::Local(s) => s.get(name).await.map(View::from_info).map_err(|e| anyhow!(e.chain())),
            Target::Daemon { .. } => {
                let reply = self.call("VolumeDriver.Get", json!({ "Name": name }), QUICK).await?;
                let volume = reply.get("Volume").context("the daemon returned no volume")?;
                Ok(View::from_wire(volume))
            }
        }
    }

    /// Where the operations of this target show their progress.
    pub(super) fn board(&self) -> super::waiting::Board {
        match self {
            Target::Daemon { addr, .. } => super::waiting::Board::Daemon(addr.clone()),
            Target::Local(_) => super::waiting::Board::Here,
        }
    }

    /// Creates a volume (idempotent).
    ///
    /// # Errors
    /// Invalid name or options, or the backend's failure.
    pub async fn create(&self, name: &str, opts: &BTreeMap<String, String>) -> anyhow::Result<()> {
        super::waiting::shown(&self.board(), name, self.create_now(name, opts)).await
    }

    async fn create_now(&self, name: &str, opts: &BTreeMap<String, String>) -> anyhow::Result<()> {
        match self {
            Target::Local(s) => s.create(name, opts).await.map_err(|e| anyhow!(e.chain())),
            Target::Daemon { .. } => {
                self.call("VolumeDriver.Create", json!({ "Name": name, "Opts": opts }), SLOW).await.map(drop)
            }
        }
    }

    /// Removes a volume.
    ///
    /// # Errors
    /// In use, or the backend's failure.
    pub async fn remove(&self, name: &str) -> anyhow::Result<()> {
        super::waiting::shown(&self.board(), name, self.remove_now(name)).await
    }

    async fn remove_now(&self, name: &str) -> anyhow::Result<()> {
        match self {
            Target::Local(s) => s.remove(name).await.map_err(|e| anyhow!(e.chain())),
            Target::Daemon { .. } => self.call("VolumeDriver.Remove", json!({ "Name": name }), SLOW).await.map(drop),
        }
    }

    /// Mounts a volume for `holder`; returns its host path.
    ///
    /// # Errors
    /// The backend's failure.
    pub async fn mount(&self, name: &str, holder: &str) -> anyhow::Result<String> {
        super::waiting::shown(&self.board(), name, self.mount_now(name, holder)).await
    }

    async fn mount_now(&self, name: &str, holder: &str) -> anyhow::Result<String> {
        match self {
            Target::Local(s) => {
                s.mount(name, Some(holder)).await.map(|p| p.display().to_string()).map_err(|e| anyhow!(e.chain()))
            }
            Target::Daemon { .. } => {
                let reply = self.call("VolumeDriver.Mount", json!({ "Name": name, "ID": holder }), SLOW).await?;
                Ok(reply.get("Mountpoint").and_then(Value::as_str).unwrap_or_default().to_string())
            }
        }
    }

    /// Releases `holder`'s mount.
    ///
    /// # Errors
    /// The backend's failure.
    pub async fn unmount(&self, name: &str, holder: &str) -> anyhow::Result<()> {
        super::waiting::shown(&self.board(), name, self.unmount_now(name, holder)).await
    }

    async fn unmount_now(&self, name: &str, holder: &str) -> anyhow::Result<()> {
        match self {
            Target::Local(s) => s.unmount(name, Some(holder)).await.map_err(|e| anyhow!(e.chain())),
            Target::Daemon { .. } => {
                self.call("VolumeDriver.Unmount", json!({ "Name": name, "ID": holder }), SLOW).await.map(drop)
            }
        }
    }

    /// Grows a volume to `size_gib` GiB (while it stays mounted); returns its size after.
    ///
    /// # Errors
    /// A smaller size, a backend without sizes, or the backend's failure.
    pub async fn resize(&self, name: &str, size_gib: u64) -> anyhow::Result<u64> {
        super::waiting::shown(&self.board(), name, self.resize_now(name, size_gib)).await
    }

    async fn resize_now(&self, name: &str, size_gib: u64) -> anyhow::Result<u64> {
        match self {
            Target::Local(s) => {
                let record = s.resize(name, size_gib).await.map_err(|e| anyhow!(e.chain()))?;
                Ok(crate::backend::options::get_u64(&record.options, "size").unwrap_or(size_gib))
            }
            Target::Daemon { .. } => {
                let reply = self.call("Volume.Resize", json!({ "Name": name, "SizeGiB": size_gib }), SLOW).await?;
                reply.get("SizeGiB").and_then(Value::as_u64).context("the daemon returned no size")
            }
        }
    }

    /// Changes a volume's performance settings (`volumeType`, `iops`, `throughput`) in place.
    ///
    /// # Errors
    /// A change the backend cannot make or the storage's limits refuse, or its failure.
    pub async fn modify(&self, name: &str, changes: &BTreeMap<String, String>) -> anyhow::Result<()> {
        super::waiting::shown(&self.board(), name, self.modify_now(name, changes)).await
    }

    async fn modify_now(&self, name: &str, changes: &BTreeMap<String, String>) -> anyhow::Result<()> {
        match self {
            Target::Local(s) => s.modify(name, changes).await.map(drop).map_err(|e| anyhow!(e.chain())),
            Target::Daemon { .. } => {
                self.call("Volume.Modify", json!({ "Name": name, "Changes": changes }), SLOW).await.map(drop)
            }
        }
    }

    /// Moves a volume to availability zone `zone` (keeping the old one unless `delete_source`).
    ///
    /// # Errors
    /// A volume that cannot move (in use, attached, a backend without zones), or the failing
    /// step.
    pub async fn relocate(&self, name: &str, zone: &str, delete_source: bool) -> anyhow::Result<()> {
        super::waiting::shown(&self.board(), name, self.relocate_now(name, zone, delete_source)).await
    }

    async fn relocate_now(&self, name: &str, zone: &str, delete_source: bool) -> anyhow::Result<()> {
        match self {
            Target::Local(s) => s.relocate(name, zone, delete_source).await.map(drop).map_err(|e| anyhow!(e.chain())),
            Target::Daemon { .. } => self
                .call("Volume.Move", json!({ "Name": name, "Zone": zone, "DeleteSource": delete_source }), SLOW)
                .await
                .map(drop),
        }
    }

    /// The volumes nothing uses: named ones idle for `named_after`, anonymous ones for
    /// `anonymous_after`.
    ///
    /// # Errors
    /// The storage could not be listed.
    pub async fn orphans(&self, named_after: Duration, anonymous_after: Duration) -> anyhow::Result<Vec<OrphanEntry>> {
        match self {
            Target::Local(s) => Ok(s
                .orphans(named_after, anonymous_after)
                .await
                .map_err(|e| anyhow!(e.chain()))?
                .into_iter()
                .map(OrphanEntry::from)
                .collect()),
            Target::Daemon { .. } => {
                let body =
                    json!({ "NamedAfterSecs": named_after.as_secs(), "AnonymousAfterSecs": anonymous_after.as_secs() });
                let reply = self.call("Volume.Orphans", body, SLOW).await?;
                let found: OrphansResponse = serde_json::from_value(reply).context("the daemon's list of orphans")?;
                Ok(found.orphans)
            }
        }
    }

    /// Releases every hold of `holder` (it counts repeated mounts, like Docker's IDs).
    ///
    /// # Errors
    /// The backend's failure.
    pub async fn unmount_all(&self, name: &str, holder: &str) -> anyhow::Result<()> {
        for _ in 0..1024 {
            let before = self.get(name).await?.holders();
            self.unmount(name, holder).await?;
            let after = self.get(name).await?.holders();
            if after == 0 || after >= before {
                break;
            }
        }
        Ok(())
    }
}

/// Opens `svc` in this process on the daemon's state directory.
async fn open_local(config: &Config, svc: &ServiceConfig) -> anyhow::Result<VolumeService> {
    super::daemon::open_service(config, svc, &super::daemon::environment()).await.map_err(|e| anyhow!(e.chain()))
}

/// Refuses snapshot commands early for backends without snapshots (the service would refuse
/// them too, after opening).
///
/// # Errors
/// "snapshots are not supported by the <backend> backend".
pub fn snapshot_support(kind: BackendKind) -> anyhow::Result<()> {
    match kind {
        BackendKind::Vfs | BackendKind::Loop => bail!("snapshots are not supported by the {} backend", kind.as_str()),
        BackendKind::Ebs => Ok(()),
    }
}

/// Left-aligned columns separated by two spaces.
pub fn table(headers: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (i, cell) in row.iter().enumerate() {
            widths[i] = widths[i].max(cell.chars().count());
        }
    }
    let line = |cells: Vec<&str>| {
        let mut out = String::new();
        for (i, cell) in cells.iter().enumerate() {
            if i + 1 == cells.len() {
                out.push_str(cell);
            } else {
                out.push_str(&format!("{cell:<w$}  ", w = widths[i]));
            }
        }
        out.trim_end().to_string()
    };
    let mut out = vec![line(headers.to_vec())];
    out.extend(rows.iter().map(|r| line(r.iter().map(String::as_str).collect())));
    out.join("\n")
}

/// The volume table (`ls`, `create`).
pub fn volume_table(views: &[View], with_path: bool) -> String {
    // EBS volumes: their EC2 volume ID and zone, as REX-Ray's table had the ID.
    let cloud = views.iter().any(|v| v.status.contains_key("volumeID"));
    let mut headers = vec!["NAME"];
    if cloud {
        headers.extend(["ID", "ZONE"]);
    }
    headers.extend(["STATUS", "SIZE", "HOLDERS"]);
    if with_path {
        headers.push("PATH");
    }
    let rows: Vec<Vec<String>> = views
        .iter()
        .map(|v| {
            let mut row = vec![v.name.clone()];
            if cloud {
                row.push(v.text("volumeID"));
                row.push(v.text("availabilityZone"));
            }
            row.extend([
                if v.attached() { "attached".into() } else { "available".into() },
                v.size(),
                v.holders().to_string(),
            ]);
            if with_path {
                row.push(v.mountpoint.clone().unwrap_or_else(|| "-".into()));
            }
            row
        })
        .collect();
    table(&headers, &rows)
}

/// Create options from the REX-Ray flags plus `-o KEY=VALUE`.
///
/// # Errors
/// A `-o` without `=`.
pub fn create_opts(flags: &[(&str, Option<String>)], extra: &[String]) -> anyhow::Result<BTreeMap<String, String>> {
    let mut opts = BTreeMap::new();
    for (key, value) in flags {
        if let Some(v) = value {
            opts.insert((*key).to_string(), v.clone());
        }
    }
    for kv in extra {
        let (k, v) = kv.split_once('=').with_context(|| format!("invalid option {kv:?}: expected KEY=VALUE"))?;
        if k.is_empty() {
            bail!("invalid option {kv:?}: the key is empty");
        }
        opts.insert(k.to_string(), v.to_string());
    }
    Ok(opts)
}

/// The orphans as a table: name, kind, when last used, how long idle.
pub fn orphan_table(orphans: &[OrphanEntry]) -> String {
    let rows: Vec<[String; 4]> = orphans
        .iter()
        .map(|o| {
            let kind = if o.anonymous { "anonymous" } else { "named" };
            let last = if o.last_used.is_empty() { "-".to_owned() } else { o.last_used.clone() };
            let idle = if o.last_used.is_empty() {
                "-".to_owned()
            } else {
                crate::human::age(Duration::from_secs(o.idle_secs))
            };
            [o.name.clone(), kind.to_owned(), last, idle]
        })
        .collect();
    let header = ["NAME", "KIND", "LAST USED", "IDLE"].map(str::to_owned);
    let widths: Vec<usize> = (0..4)
        .map(|i| rows.iter().chain(std::iter::once(&header)).map(|r| r[i].chars().count()).max().unwrap_or(0))
        .collect();
    std::iter::once(&header)
        .chain(rows.iter())
        .map(|r| {
            let cells: Vec<String> = r.iter().zip(&widths).map(|(c, w)| format!("{c:<w$}")).collect();
            cells.join("  ").trim_end().to_owned()
        })
        .collect::<Vec<_>>()
        .join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_align() {
        let t = table(&["A", "BB"], &[vec!["xxx".into(), "y".into()], vec!["z".into(), "".into()]]);
        assert_eq!(t, "A    BB\nxxx  y\nz");
    }

    #[test]
    fn views_from_the_wire() {
        let v = View::from_wire(
            &json!({"Name": "v", "Mountpoint": "", "Status": {"holders": 2, "options": {"size": "3"}}}),
        );
        assert_eq!(v.mountpoint, None);
        assert_eq!(v.holders(), 2);
        assert_eq!(v.size(), "3 GiB");
        assert_eq!(
            volume_table(&[v], true),
            "NAME  STATUS     SIZE   HOLDERS  PATH\nv     available  3 GiB  2        -"
        );
    }

    #[test]
    fn options_from_flags() {
        let opts = create_opts(&[("size", Some("2".into())), ("iops", None)], &["uid=1000".into()]).unwrap();
        assert_eq!(opts, BTreeMap::from([("size".into(), "2".into()), ("uid".into(), "1000".into())]));
        assert!(create_opts(&[], &["nope".into()]).is_err());
    }

    #[test]
    fn snapshots_are_refused_by_backends_without_them() {
        for kind in [BackendKind::Vfs, BackendKind::Loop] {
            let err = snapshot_support(kind).unwrap_err().to_string();
            assert_eq!(err, format!("snapshots are not supported by the {} backend", kind.as_str()));
        }
        assert!(snapshot_support(BackendKind::Ebs).is_ok());
    }
}
