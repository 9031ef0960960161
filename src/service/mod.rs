//! The volume service: the only owner of volume state.
//!
//! It validates names, routes options to the backend, serializes calls per volume, counts who
//! holds each mount, and makes every change durable before it answers. The first holder in
//! activates the volume in the backend; the last one out deactivates it.

pub mod error;
pub mod handle;
pub mod locks;
pub mod name;
mod snapshots;
pub mod state;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use tracing::{debug, info, warn};

use crate::backend::{Backend, Options, Scope};
use crate::config::Integration;
pub use error::{Cause, ServiceError};
pub use handle::ServiceHandle;
use locks::VolumeLocks;
use name::{Holder, VolumeName};
use state::{StateStore, VolumeRecord};

/// What `Get` and `List` report about a volume.
#[derive(Debug, Clone, PartialEq)]
pub struct VolumeInfo {
    /// The name.
    pub name: String,
    /// The host path while the volume is active.
    pub mountpoint: Option<PathBuf>,
    /// When it was created, RFC 3339.
    pub created_at: String,
    /// Details for `docker volume inspect`.
    pub status: BTreeMap<String, serde_json::Value>,
}

/// One storage service: a backend, its settings, its state and its locks.
#[derive(Debug)]
pub struct VolumeService {
    /// The service name (`vfs`, `ebs`, …).
    name: String,
    /// The backend doing the storage work.
    backend: Arc<dyn Backend>,
    /// Volume operation settings (preempt, ignoreusedcount, implicit create, …).
    settings: Integration,
    /// Where records are made durable.
    store: Arc<StateStore>,
    /// The in-memory copy of every record; `Get`/`List` read only this. A std lock: held for
    /// short copies, never across `.await`.
    volumes: RwLock<BTreeMap<String, VolumeRecord>>,
    /// One async lock per volume for the whole of each operation.
    locks: VolumeLocks,
    /// Active volumes and holders over all records, kept up to date by [`Self::publish`].
    totals: std::sync::Mutex<Totals>,
}

/// Sums over every record, for the metrics.
#[derive(Debug, Default, Clone, Copy)]
struct Totals {
    /// Volumes active on this host.
    active: usize,
    /// Holders over all volumes.
    holders: u64,
}

/// Runs blocking state I/O off the async threads.
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    match tokio::task::spawn_blocking(f).await {
        Ok(v) => v,
        Err(e) => std::panic::resume_unwind(e.into_panic()),
    }
}

fn now_rfc3339() -> String {
    humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string()
}

/// The file in a state directory that holds the boot ID of the last open.
const BOOT_ID_FILE: &str = "boot_id";

/// Whether the state in `dir` was last opened during this boot of the host (so a volume its
/// holders still use lost its mount to a daemon restart, not to a reboot); records this boot.
/// Unknown (no boot ID, first open) counts as another boot.
fn same_boot(dir: &Path) -> bool {
    let Some(current) = crate::os::boot::boot_id() else {
        return false;
    };
    let file = dir.join(BOOT_ID_FILE);
    let recorded = std::fs::read_to_string(&file).ok();
    let same = recorded.as_deref().map(str::trim) == Some(current.as_str());
    if !same {
        let tmp = dir.join(format!("{BOOT_ID_FILE}.tmp"));
        if let Err(e) = std::fs::write(&tmp, &current).and_then(|()| std::fs::rename(&tmp, &file)) {
            warn!(file = %file.display(), error = %e, "could not record the boot ID");
        }
    }
    same
}

impl VolumeService {
    /// Opens the service: loads its state from `state_dir` and reconciles it with the backend.
    /// A volume that is no longer active but still has holders is activated again when the
    /// host has not rebooted since the last open (the daemon restarted and lost its mounts, as
    /// a managed plugin does on `docker plugin disable`/`enable`); after a reboot its holders
    /// are dropped instead (their containers are gone).
    ///
    /// # Errors
    /// The state directory cannot be used.
    pub async fn open(
        name: &str,
        backend: Arc<dyn Backend>,
        settings: Integration,
        state_dir: PathBuf,
    ) -> Result<Self, ServiceError> {
        let (store, records, same_boot) = blocking(move || {
            let store = StateStore::open(&state_dir)?;
            let records = store.load()?;
            Ok::<_, state::StateError>((store, records, same_boot(&state_dir)))
        })
        .await
        .map_err(|e| ServiceError::new("open", name, Cause::State(e)))?;
        let service = Self {
            name: name.to_owned(),
            backend,
            settings,
            store: Arc::new(store),
            volumes: RwLock::new(BTreeMap::new()),
            locks: VolumeLocks::default(),
            totals: std::sync::Mutex::default(),
        };
        for record in records {
            let record = service.reconcile(record, same_boot).await;
            service.volumes.write().expect("volume map poisoned").insert(record.name.clone(), record);
        }
        service.record_metrics();
        info!(service = %service.name, backend = service.backend.kind(), volumes = service.volumes.read().expect("volume map poisoned").len(), "service ready");
        Ok(service)
    }

    /// Counts every record once (at open) and publishes the totals to the metrics.
    fn record_metrics(&self) {
        let volumes = self.volumes.read().expect("volume map poisoned");
        let active = volumes.values().filter(|r| r.active).count();
        let holders = volumes.values().map(VolumeRecord::holder_count).sum();
        *self.totals.lock().expect("totals poisoned") = Totals { active, holders };
        crate::metrics::service_volumes(&self.name, volumes.len(), active, holders);
    }

    /// Replaces (or with `None`, removes) one record in memory and publishes the new totals,
    /// adjusted by the difference alone, so the cost does not grow with the number of volumes.
    fn publish(&self, name: &str, record: Option<VolumeRecord>) {
        let mut volumes = self.volumes.write().expect("volume map poisoned");
        let added = record.as_ref().map_or((0, 0), |r| (usize::from(r.active), r.holder_count()));
        let old = match record {
            Some(r) => volumes.insert(name.to_owned(), r),
            None => volumes.remove(name),
        };
        let removed = old.as_ref().map_or((0, 0), |r| (usize::from(r.active), r.holder_count()));
        let mut totals = self.totals.lock().expect("totals poisoned");
        totals.active = (totals.active + added.0).saturating_sub(removed.0);
        totals.holders = (totals.holders + added.1).saturating_sub(removed.1);
        crate::metrics::service_volumes(&self.name, volumes.len(), totals.active, totals.holders);
    }

    /// Brings one loaded record in line with what the backend reports:
    /// - active with holders: kept as is (a daemon restart; containers still use it);
    /// - active with no holders (a crash between activation and its reply): released;
    /// - not active but held, in the same boot (the daemon restarted and its mounts vanished,
    ///   as a managed plugin's can): activated again for the containers still using it;
    /// - not active but held, after a reboot: the holders went with their containers; dropped.
    async fn reconcile(&self, mut record: VolumeRecord, same_boot: bool) -> VolumeRecord {
        let Ok(name) = VolumeName::new(&record.name) else {
            return record;
        };
        let active = match self.backend.is_active(&name, &record.options).await {
            Ok(active) => active,
            Err(e) => {
                warn!(volume = %name, error = %e, "cannot tell whether the volume is active; keeping its state");
                return record;
            }
        };
        let before = record.clone();
        let held = record.holder_count() > 0;
        match (active, held) {
            (true, true) => record.active = true,
            (true, false) => match self.backend.deactivate(&name, &record.options).await {
                Ok(()) => {
                    info!(volume = %name, "released a volume that was active with no holders");
                    record.active = false;
                }
                Err(e) => {
                    warn!(volume = %name, error = %e, "could not release an unheld volume; the next unmount or remove retries");
                    record.active = true;
                }
            },
            (false, true) if same_boot => match self.backend.activate(&name, &record.options).await {
                Ok(path) => {
                    info!(volume = %name, path = %path.display(), holders = record.holder_count(), "re-activated a volume still in use");
                    record.active = true;
                }
                Err(e) => {
                    warn!(volume = %name, error = %e, "could not re-activate a volume still in use; dropping its holders");
                    record.holders.clear();
                    record.anonymous = false;
                    record.active = false;
                }
            },
            (false, true) => {
                warn!(volume = %name, holders = record.holder_count(), "volume is no longer active after a reboot; dropping its holders");
                record.holders.clear();
                record.anonymous = false;
                record.active = false;
            }
            (false, false) => record.active = false,
        }
        if record != before {
            if let Err(e) = self.save(record.clone()).await {
                warn!(volume = %name, error = %e, "could not save reconciled state");
            }
        }
        record
    }

    /// The service name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The backend's Docker scope.
    pub fn scope(&self) -> Scope {
        self.backend.scope()
    }

    fn validate(op: &'static str, raw: &str) -> Result<VolumeName, ServiceError> {
        VolumeName::new(raw).map_err(|e| ServiceError::new(op, raw, Cause::InvalidName(e)))
    }

    fn backend_err(
        &self,
        op: &'static str,
        name: &VolumeName,
    ) -> impl FnOnce(crate::backend::BackendError) -> ServiceError {
        let (backend, volume) = (self.backend.kind(), name.to_string());
        move |source| ServiceError::new(op, volume, Cause::Backend { backend, source })
    }

    fn record(&self, name: &VolumeName) -> Option<VolumeRecord> {
        self.volumes.read().expect("volume map poisoned").get(name.as_str()).cloned()
    }

    /// Makes `record` durable, then publishes it in memory.
    async fn commit(&self, op: &'static str, record: VolumeRecord) -> Result<(), ServiceError> {
        self.save(record.clone()).await.map_err(|e| ServiceError::new(op, record.name.clone(), Cause::State(e)))?;
        self.publish(&record.name.clone(), Some(record));
        Ok(())
    }

    async fn save(&self, record: VolumeRecord) -> Result<(), state::StateError> {
        let store = self.store.clone();
        blocking(move || store.save(&record)).await
    }

    /// Creates a volume. Idempotent: an existing volume is success and keeps its options.
    ///
    /// # Errors
    /// An invalid name or option, or the backend's failure.
    pub async fn create(&self, raw_name: &str, opts: &BTreeMap<String, String>) -> Result<(), ServiceError> {
        const OP: &str = "create";
        debug!(volume = raw_name, ?opts, "create");
        let name = Self::validate(OP, raw_name)?;
        let _guard = self.locks.lock(name.as_str()).await;
        if let Some(existing) = self.record(&name) {
            if !opts.is_empty() {
                debug!(volume = %name, "volume exists; create options ignored");
            }
            return self.check_backend(OP, &existing);
        }
        let options = self.backend.parse_options(opts).map_err(self.backend_err(OP, &name))?;
        if self.settings.create_disable {
            info!(volume = %name, "create is disabled by configuration; nothing done");
            return Ok(());
        }
        self.create_locked(OP, &name, options).await
    }

    async fn create_locked(&self, op: &'static str, name: &VolumeName, options: Options) -> Result<(), ServiceError> {
        self.backend.create(name, &options).await.map_err(self.backend_err(op, name))?;
        let record = VolumeRecord {
            name: name.to_string(),
            backend: self.backend.kind().to_owned(),
            created_at: now_rfc3339(),
            options,
            holders: BTreeMap::new(),
            anonymous: false,
            active: false,
        };
        self.commit(op, record).await?;
        info!(volume = %name, service = %self.name, "volume created");
        Ok(())
    }

    fn check_backend(&self, op: &'static str, record: &VolumeRecord) -> Result<(), ServiceError> {
        if record.backend == self.backend.kind() {
            Ok(())
        } else {
            Err(ServiceError::new(
                op,
                record.name.clone(),
                Cause::WrongBackend { recorded: record.backend.clone(), configured: self.backend.kind() },
            ))
        }
    }

    /// Removes a volume and its data. Refused while anyone holds it; a missing volume is success.
    ///
    /// # Errors
    /// [`Cause::InUse`] while held, or the backend's failure.
    pub async fn remove(&self, raw_name: &str) -> Result<(), ServiceError> {
        const OP: &str = "remove";
        debug!(volume = raw_name, "remove");
        let name = Self::validate(OP, raw_name)?;
        let _guard = self.locks.lock(name.as_str()).await;
        let Some(mut record) = self.record(&name) else {
            if !self.settings.remove_disable && self.backend.knows(&name).await {
                // Created by another host (a global namespace): remove it from the storage.
                let options = self.backend.parse_options(&BTreeMap::new()).map_err(self.backend_err(OP, &name))?;
                self.backend.remove(&name, &options).await.map_err(self.backend_err(OP, &name))?;
                info!(volume = %name, "volume removed");
            } else {
                debug!(volume = %name, "remove of an unknown volume");
            }
            return Ok(());
        };
        self.check_backend(OP, &record)?;
        let holders = record.holder_count();
        if holders > 0 {
            return Err(ServiceError::new(OP, name.as_str(), Cause::InUse { holders }));
        }
        if self.settings.remove_disable {
            info!(volume = %name, "remove is disabled by configuration; nothing done");
            return Ok(());
        }
        if record.active {
            self.backend.deactivate(&name, &record.options).await.map_err(self.backend_err(OP, &name))?;
            record.active = false;
            self.commit(OP, record.clone()).await?;
        }
        self.backend.remove(&name, &record.options).await.map_err(self.backend_err(OP, &name))?;
        let (store, store_name) = (self.store.clone(), name.to_string());
        blocking(move || store.delete(&store_name))
            .await
            .map_err(|e| ServiceError::new(OP, name.as_str(), Cause::State(e)))?;
        self.publish(name.as_str(), None);
        info!(volume = %name, "volume removed");
        Ok(())
    }

    /// Mounts a volume for `holder` and returns its host path. The first holder activates it.
    /// An unknown name is adopted when the storage has it (made by another host), else created
    /// when implicit create is on.
    ///
    /// # Errors
    /// [`Cause::NotFound`] (implicit create off), or the backend's failure.
    pub async fn mount(&self, raw_name: &str, id: Option<&str>) -> Result<PathBuf, ServiceError> {
        const OP: &str = "mount";
        debug!(volume = raw_name, id = id.unwrap_or(""), "mount");
        let name = Self::validate(OP, raw_name)?;
        let holder = Holder::from_request(id);
        let _guard = self.locks.lock(name.as_str()).await;
        let mut record = match self.record(&name) {
            Some(r) => r,
            None if self.settings.implicit_create || self.backend.knows(&name).await => {
                let options = self.backend.parse_options(&BTreeMap::new()).map_err(self.backend_err(OP, &name))?;
                self.create_locked(OP, &name, options).await?;
                self.record(&name).ok_or_else(|| ServiceError::new(OP, name.as_str(), Cause::NotFound))?
            }
            None => return Err(ServiceError::new(OP, name.as_str(), Cause::NotFound)),
        };
        self.check_backend(OP, &record)?;
        let path = if record.active {
            self.backend.mountpoint(&name, &record.options)
        } else {
            let path = self.backend.activate(&name, &record.options).await.map_err(self.backend_err(OP, &name))?;
            record.active = true;
            info!(volume = %name, path = %path.display(), "volume activated");
            path
        };
        match &holder {
            Holder::Anonymous => record.anonymous = true,
            Holder::Id(id) => *record.holders.entry(id.clone()).or_insert(0) += 1,
        }
        if let Err(e) = self.commit(OP, record.clone()).await {
            // Not durable, so not granted: undo an activation nobody else relies on.
            if record.holder_count() == 1 {
                if let Err(undo) = self.backend.deactivate(&name, &record.options).await {
                    warn!(volume = %name, error = %undo, "rollback of activation failed");
                }
            }
            return Err(e);
        }
        debug!(volume = %name, %holder, holders = record.holder_count(), "mounted");
        Ok(path)
    }

    /// Releases `holder`'s mount. The last holder out deactivates the volume (every Unmount
    /// does when `ignoreusedcount` is set). Unknown volumes and IDs are success.
    ///
    /// # Errors
    /// The backend's failure to deactivate; the holder is released regardless, and the next
    /// Unmount or Remove retries the deactivation.
    pub async fn unmount(&self, raw_name: &str, id: Option<&str>) -> Result<(), ServiceError> {
        const OP: &str = "unmount";
        debug!(volume = raw_name, id = id.unwrap_or(""), "unmount");
        let name = Self::validate(OP, raw_name)?;
        let holder = Holder::from_request(id);
        let _guard = self.locks.lock(name.as_str()).await;
        let Some(mut record) = self.record(&name) else {
            debug!(volume = %name, "unmount of an unknown volume");
            return Ok(());
        };
        self.check_backend(OP, &record)?;
        let before = record.holder_count();
        match &holder {
            Holder::Anonymous => record.anonymous = false,
            Holder::Id(id) => {
                if let Some(count) = record.holders.get_mut(id) {
                    *count -= 1;
                    if *count == 0 {
                        record.holders.remove(id);
                    }
                }
            }
        }
        if self.settings.ignore_used_count {
            record.holders.clear();
            record.anonymous = false;
        }
        let release = record.active && record.holder_count() == 0;
        if record.holder_count() != before || release {
            let mut result = Ok(());
            if release {
                match self.backend.deactivate(&name, &record.options).await {
                    Ok(()) => {
                        record.active = false;
                        info!(volume = %name, "volume deactivated");
                    }
                    Err(e) => result = Err(self.backend_err(OP, &name)(e)),
                }
            }
            self.commit(OP, record.clone()).await?;
            result?;
        }
        debug!(volume = %name, %holder, holders = record.holder_count(), "unmounted");
        Ok(())
    }

    /// The host path of an active volume, or `None` when it is not active.
    ///
    /// # Errors
    /// [`Cause::NotFound`].
    pub async fn path(&self, raw_name: &str) -> Result<Option<PathBuf>, ServiceError> {
        // The common case needs only the record, not the whole Status that Get builds.
        if let Ok(name) = VolumeName::new(raw_name) {
            if let Some(record) = self.record(&name) {
                return Ok(record.active.then(|| self.backend.mountpoint(&name, &record.options)));
            }
        }
        let info = self.get(raw_name).await.map_err(|mut e| {
            e.op = "path";
            e
        })?;
        Ok(info.mountpoint)
    }

    /// Describes one volume from local state, or from the backend's cache for a volume another
    /// host created (global backends). Never waits for the storage's API.
    ///
    /// # Errors
    /// [`Cause::NotFound`] or an invalid name.
    pub async fn get(&self, raw_name: &str) -> Result<VolumeInfo, ServiceError> {
        const OP: &str = "get";
        debug!(volume = raw_name, "get");
        let name = Self::validate(OP, raw_name)?;
        if let Some(record) = self.record(&name) {
            return Ok(self.info(&name, &record));
        }
        if self.backend.knows(&name).await {
            return Ok(self.remote_info(&name));
        }
        Err(ServiceError::new(OP, raw_name, Cause::NotFound))
    }

    /// Describes every volume: local state, plus the volumes of a global backend that other
    /// hosts created.
    pub async fn list(&self) -> Vec<VolumeInfo> {
        debug!("list");
        // First: it may refresh the backend's cache, which the local volumes' Status reads.
        let known = self.backend.known_volumes().await;
        let records: Vec<VolumeRecord> = self.volumes.read().expect("volume map poisoned").values().cloned().collect();
        let mut infos: Vec<VolumeInfo> =
            records.iter().filter_map(|r| VolumeName::new(&r.name).ok().map(|n| self.info(&n, r))).collect();
        let local: std::collections::BTreeSet<&str> = records.iter().map(|r| r.name.as_str()).collect();
        for remote in known {
            if local.contains(remote.as_str()) {
                continue;
            }
            if let Ok(name) = VolumeName::new(&remote) {
                infos.push(self.remote_info(&name));
            }
        }
        infos
    }

    /// A volume this host has no record of, as the backend reports it.
    fn remote_info(&self, name: &VolumeName) -> VolumeInfo {
        let mut status = self.backend.status(name, &Options::new());
        status.insert("service".into(), self.name.clone().into());
        status.insert("backend".into(), self.backend.kind().into());
        status.insert("holders".into(), 0.into());
        status.insert("active".into(), false.into());
        VolumeInfo { name: name.to_string(), mountpoint: None, created_at: String::new(), status }
    }

    fn info(&self, name: &VolumeName, record: &VolumeRecord) -> VolumeInfo {
        let mut status = self.backend.status(name, &record.options);
        status.insert("service".into(), self.name.clone().into());
        status.insert("backend".into(), record.backend.clone().into());
        status.insert("holders".into(), record.holder_count().into());
        status.insert("active".into(), record.active.into());
        status.insert(
            "options".into(),
            serde_json::Value::Object(record.options.iter().map(|(k, v)| (k.clone(), v.clone().into())).collect()),
        );
        VolumeInfo {
            name: record.name.clone(),
            mountpoint: record.active.then(|| self.backend.mountpoint(name, &record.options)),
            created_at: record.created_at.clone(),
            status,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::fake::FakeBackend;
    use std::time::Duration;

    pub(crate) fn settings() -> Integration {
        Integration::defaults(std::path::Path::new("/var/lib/rexray"))
    }

    async fn open(dir: &std::path::Path, fake: Arc<FakeBackend>, settings: Integration) -> VolumeService {
        VolumeService::open("test", fake, settings, dir.to_path_buf()).await.unwrap()
    }

    fn no_opts() -> BTreeMap<String, String> {
        BTreeMap::new()
    }

    async fn holders(s: &VolumeService, name: &str) -> u64 {
        s.get(name).await.unwrap().status["holders"].as_u64().unwrap()
    }

    #[tokio::test]
    async fn create_is_idempotent_and_validates() {
        let dir = tempfile::tempdir().unwrap();
        let fake = Arc::new(FakeBackend::default());
        let s = open(dir.path(), fake.clone(), settings()).await;
        s.create("v1", &BTreeMap::from([("SIZE".into(), "2".into())])).await.unwrap();
        s.create("v1", &BTreeMap::from([("size".into(), "5".into())])).await.unwrap();
        assert_eq!(fake.count("create"), 1);
        let info = s.get("v1").await.unwrap();
        assert_eq!(info.status["options"]["size"], "2");
        assert!(info.mountpoint.is_none());
        assert!(humantime::parse_rfc3339(&info.created_at).is_ok(), "{}", info.created_at);
        let err = s.create("v2", &BTreeMap::from([("bogus".into(), "1".into())])).await.unwrap_err().chain();
        assert!(err.contains("create \"v2\"") && err.contains("bogus") && err.contains("size, label"), "{err}");
        let err = s.create("v2", &BTreeMap::from([("size".into(), "abc".into())])).await.unwrap_err().chain();
        assert!(err.contains("size") && err.contains("abc"), "{err}");
        let err = s.create("../x", &no_opts()).await.unwrap_err().chain();
        assert!(err.contains("create \"../x\"") && err.contains("'/'"), "{err}");
        assert_eq!(s.list().await.len(), 1);
    }

    #[tokio::test]
    async fn docker_cp_counts_the_same_id_twice() {
        let dir = tempfile::tempdir().unwrap();
        let fake = Arc::new(FakeBackend::default());
        let s = open(dir.path(), fake.clone(), settings()).await;
        s.create("v", &no_opts()).await.unwrap();
        let p1 = s.mount("v", Some("id1")).await.unwrap();
        let p2 = s.mount("v", Some("id1")).await.unwrap();
        assert_eq!(p1, p2);
        s.unmount("v", Some("id1")).await.unwrap();
        assert_eq!(fake.count("deactivate"), 0, "the running container still uses it");
        assert_eq!(s.path("v").await.unwrap(), Some(p1));
        s.unmount("v", Some("id1")).await.unwrap();
        assert_eq!(fake.calls(), ["create:v", "activate:v", "deactivate:v"]);
        assert_eq!(s.path("v").await.unwrap(), None);
    }

    #[tokio::test]
    async fn anonymous_holder_has_set_semantics() {
        let dir = tempfile::tempdir().unwrap();
        let fake = Arc::new(FakeBackend::default());
        let s = open(dir.path(), fake.clone(), settings()).await;
        for _ in 0..3 {
            s.mount("dv", None).await.unwrap();
        }
        assert_eq!(holders(&s, "dv").await, 1);
        s.unmount("dv", Some("")).await.unwrap();
        assert_eq!(fake.calls(), ["create:dv", "activate:dv", "deactivate:dv"]);
    }

    #[tokio::test]
    async fn unknown_unmounts_succeed_and_remove_is_refused_while_held() {
        let dir = tempfile::tempdir().unwrap();
        let fake = Arc::new(FakeBackend::default());
        let s = open(dir.path(), fake.clone(), settings()).await;
        s.unmount("nope", Some("x")).await.unwrap();
        s.mount("v", Some("a")).await.unwrap();
        s.unmount("v", Some("never-mounted")).await.unwrap();
        let err = s.remove("v").await.unwrap_err().chain();
        assert!(err.contains("remove \"v\"") && err.contains("in use"), "{err}");
        s.unmount("v", Some("a")).await.unwrap();
        s.remove("v").await.unwrap();
        s.remove("v").await.unwrap();
        assert!(s.get("v").await.is_err());
        assert_eq!(fake.calls(), ["create:v", "activate:v", "deactivate:v", "remove:v"]);
    }

    #[tokio::test]
    async fn implicit_create_can_be_turned_off() {
        let dir = tempfile::tempdir().unwrap();
        let fake = Arc::new(FakeBackend::default());
        let s = open(dir.path(), fake.clone(), Integration { implicit_create: false, ..settings() }).await;
        let err = s.mount("v", Some("a")).await.unwrap_err().chain();
        assert!(err.contains("mount \"v\"") && err.contains("no such volume"), "{err}");
        assert!(fake.calls().is_empty());
    }

    #[tokio::test]
    async fn ignore_used_count_deactivates_on_every_unmount() {
        let dir = tempfile::tempdir().unwrap();
        let fake = Arc::new(FakeBackend::default());
        let s = open(dir.path(), fake.clone(), Integration { ignore_used_count: true, ..settings() }).await;
        s.mount("v", Some("a")).await.unwrap();
        s.mount("v", Some("b")).await.unwrap();
        s.unmount("v", Some("a")).await.unwrap();
        assert_eq!(fake.count("deactivate"), 1);
        assert_eq!(holders(&s, "v").await, 0);
    }

    #[tokio::test]
    async fn create_and_remove_can_be_disabled() {
        let dir = tempfile::tempdir().unwrap();
        let fake = Arc::new(FakeBackend::default());
        let s = open(dir.path(), fake.clone(), Integration { create_disable: true, ..settings() }).await;
        s.create("v", &no_opts()).await.unwrap();
        assert!(fake.calls().is_empty());
        let dir2 = tempfile::tempdir().unwrap();
        let s2 = open(dir2.path(), fake.clone(), Integration { remove_disable: true, ..settings() }).await;
        s2.create("w", &no_opts()).await.unwrap();
        s2.remove("w").await.unwrap();
        assert_eq!(fake.count("remove"), 0);
        assert!(s2.get("w").await.is_ok());
    }

    #[tokio::test]
    async fn failed_activation_grants_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let fake = Arc::new(FakeBackend::default());
        let s = open(dir.path(), fake.clone(), settings()).await;
        s.create("v", &no_opts()).await.unwrap();
        fake.set_failing("activate", true);
        let err = s.mount("v", Some("a")).await.unwrap_err().chain();
        assert!(err.contains("mount \"v\": fake backend: injected activate failure"), "{err}");
        assert_eq!(holders(&s, "v").await, 0);
        fake.set_failing("activate", false);
        s.mount("v", Some("a")).await.unwrap();
        assert_eq!(holders(&s, "v").await, 1);
    }

    #[tokio::test]
    async fn failed_deactivation_is_retried_by_the_next_release() {
        let dir = tempfile::tempdir().unwrap();
        let fake = Arc::new(FakeBackend::default());
        let s = open(dir.path(), fake.clone(), settings()).await;
        s.mount("v", Some("a")).await.unwrap();
        fake.set_failing("deactivate", true);
        assert!(s.unmount("v", Some("a")).await.is_err());
        assert_eq!(holders(&s, "v").await, 0);
        fake.set_failing("deactivate", false);
        s.remove("v").await.unwrap();
        assert_eq!(fake.count("deactivate"), 2);
        assert_eq!(fake.count("remove"), 1);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn parallel_mounts_activate_once_and_parallel_unmounts_deactivate_once_last() {
        let dir = tempfile::tempdir().unwrap();
        let fake = Arc::new(FakeBackend::with_delay(Duration::from_millis(20)));
        let s = Arc::new(open(dir.path(), fake.clone(), settings()).await);
        s.create("v", &no_opts()).await.unwrap();
        let mounts: Vec<_> = (0..16)
            .map(|i| {
                let s = s.clone();
                tokio::spawn(async move { s.mount("v", Some(&format!("id{i}"))).await })
            })
            .collect();
        for m in mounts {
            assert_eq!(m.await.unwrap().unwrap(), PathBuf::from("/fake/v"));
        }
        assert_eq!(fake.count("activate"), 1);
        assert_eq!(holders(&s, "v").await, 16);
        let unmounts: Vec<_> = (0..16)
            .map(|i| {
                let s = s.clone();
                tokio::spawn(async move { s.unmount("v", Some(&format!("id{i}"))).await })
            })
            .collect();
        for u in unmounts {
            u.await.unwrap().unwrap();
        }
        assert_eq!(fake.count("deactivate"), 1);
        assert_eq!(fake.calls().last().unwrap(), "deactivate:v");
        assert_eq!(holders(&s, "v").await, 0);
    }

    /// Makes the next open of `dir` look like the first one after a reboot.
    fn pretend_reboot(dir: &std::path::Path) {
        std::fs::write(dir.join(BOOT_ID_FILE), "an-earlier-boot").unwrap();
    }

    #[tokio::test]
    async fn restart_keeps_active_holders_reactivates_lost_mounts_and_releases_leaks() {
        let dir = tempfile::tempdir().unwrap();
        let fake = Arc::new(FakeBackend::default());
        {
            let s = open(dir.path(), fake.clone(), settings()).await;
            s.mount("kept", Some("a")).await.unwrap();
            s.mount("kept", None).await.unwrap();
            s.mount("vanished", Some("c")).await.unwrap();
            s.create("leaked", &no_opts()).await.unwrap();
            s.create("idle", &BTreeMap::from([("size".into(), "3".into())])).await.unwrap();
        }
        // The daemon restarts in the same boot: the mount of "vanished" is gone (a managed
        // plugin's can be), and "leaked" is active with no holders (a crash between its
        // activation and the reply).
        fake.state.lock().unwrap().active.remove("vanished");
        fake.state.lock().unwrap().active.insert("leaked".into());
        let calls_before = fake.calls().len();
        let s = open(dir.path(), fake.clone(), settings()).await;
        let mut new_calls = fake.calls()[calls_before..].to_vec();
        new_calls.sort();
        assert_eq!(new_calls, ["activate:vanished", "deactivate:leaked"]);
        assert_eq!(holders(&s, "kept").await, 2);
        assert_eq!(s.path("kept").await.unwrap(), Some(PathBuf::from("/fake/kept")));
        assert_eq!(holders(&s, "vanished").await, 1);
        assert_eq!(s.path("vanished").await.unwrap(), Some(PathBuf::from("/fake/vanished")));
        assert_eq!(s.path("leaked").await.unwrap(), None);
        assert_eq!(s.get("idle").await.unwrap().status["options"]["size"], "3");
        assert_eq!(s.list().await.len(), 4);
        s.unmount("kept", Some("a")).await.unwrap();
        s.unmount("kept", None).await.unwrap();
        assert!(!fake.state.lock().unwrap().active.contains("kept"));
    }

    #[tokio::test]
    async fn after_a_reboot_holders_are_dropped_and_a_mount_activates_again() {
        let dir = tempfile::tempdir().unwrap();
        let fake = Arc::new(FakeBackend::default());
        {
            let s = open(dir.path(), fake.clone(), settings()).await;
            s.mount("v", Some("b")).await.unwrap();
        }
        fake.state.lock().unwrap().active.clear();
        pretend_reboot(dir.path());
        let s = open(dir.path(), fake.clone(), settings()).await;
        assert_eq!(holders(&s, "v").await, 0);
        assert_eq!(s.path("v").await.unwrap(), None);
        assert_eq!(fake.count("activate"), 1, "nothing re-activated after a reboot");
        s.mount("v", Some("b")).await.unwrap();
        assert_eq!(fake.count("activate"), 2);
        assert_eq!(s.path("v").await.unwrap(), Some(PathBuf::from("/fake/v")));
    }

    #[tokio::test]
    async fn volumes_made_by_another_host_are_listed_adopted_and_removable() {
        let (dir_a, dir_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let storage = Arc::new(FakeBackend::default());
        let host_a = open(dir_a.path(), storage.clone(), settings()).await;
        let host_b = open(dir_b.path(), storage.clone(), Integration { implicit_create: false, ..settings() }).await;
        host_a.create("shared", &no_opts()).await.unwrap();
        host_a.create("gone", &no_opts()).await.unwrap();
        let names: Vec<String> = host_b.list().await.into_iter().map(|v| v.name).collect();
        assert_eq!(names, ["gone", "shared"]);
        let info = host_b.get("shared").await.unwrap();
        assert_eq!(info.status["holders"], 0);
        assert!(info.mountpoint.is_none());
        assert!(host_b.get("never-made").await.unwrap_err().is_not_found());
        // Implicit create is off on B, but the volume exists: B adopts it, never creates a twin.
        assert_eq!(host_b.mount("shared", Some("x")).await.unwrap(), PathBuf::from("/fake/shared"));
        assert_eq!(holders(&host_b, "shared").await, 1);
        assert!(host_b.mount("never-made", Some("x")).await.unwrap_err().is_not_found());
        host_b.remove("gone").await.unwrap();
        assert!(!storage.state.lock().unwrap().volumes.contains("gone"));
        assert_eq!(host_b.list().await.len(), 1);
    }

    #[tokio::test]
    async fn a_volume_of_another_backend_is_not_touched() {
        let dir = tempfile::tempdir().unwrap();
        let fake = Arc::new(FakeBackend::default());
        {
            let s = open(dir.path(), fake.clone(), settings()).await;
            s.create("v", &no_opts()).await.unwrap();
        }
        let path = dir.path().join("volumes/v");
        let text = std::fs::read_to_string(&path).unwrap().replace("\"fake\"", "\"loop\"");
        std::fs::write(&path, text).unwrap();
        let s = open(dir.path(), fake.clone(), settings()).await;
        let err = s.mount("v", Some("a")).await.unwrap_err().chain();
        assert!(err.contains("belongs to backend loop"), "{err}");
    }
}
