//! The volume service: the only owner of volume state, and the Docker front's composition of a
//! backend's two halves on this host.
//!
//! It validates names, routes options to the backend, serializes calls per volume, counts who
//! holds each mount, and makes every change durable before it answers. The first holder in
//! publishes the volume to this node, stages it and hands it out; the last one out does the
//! reverse.
//!
//! # Crash safety
//!
//! Every multi-step operation writes its intent into the volume's record ([`Pending`]) before
//! its first side effect, and clears it in the same write that records the result. At open,
//! every record is reconciled with reality in both directions ([`reconcile`]): an interrupted
//! create is finished (or what it left discarded), an interrupted mount is finished when the
//! record has holders and undone when it has none, an interrupted unmount or remove is
//! finished, devices and mounts that no holder needs are released, and storage that no record
//! owns is reported and left alone. Each operation also settles its volume's record first, so
//! one that could not be settled at open is settled before anything else happens to it. Each
//! operation runs in a task of its own, so a client that goes away mid-call cannot cut it (or
//! its rollback) short.
//!
//! # Layout
//!
//! - this file: the service, its records, Get/List/Path;
//! - `lifecycle`: Create, Mount, Unmount, Remove and the activation they compose;
//! - `reconcile`: start-up reconciliation and settling of interrupted operations;
//! - `snapshots`: snapshot operations under the volume's lock.

pub mod error;
pub mod handle;
pub mod holder;
mod lifecycle;
pub mod locks;
mod modify;
mod orchestrated;
mod orphans;
mod reconcile;
mod relocate;
mod resize;
mod snapshots;
pub mod state;
pub mod status;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, RwLock};

use tracing::{info, warn};

use crate::backend::{Backend, Options, Scope, Stale};
use crate::config::Integration;
use crate::name::VolumeName;
pub use error::{Cause, ServiceError};
pub use handle::ServiceHandle;
use locks::VolumeLocks;
pub use orchestrated::{NodeStats, StageRequest, Usage};
pub use orphans::Orphan;
use state::{Pending, StateStore, VolumeRecord};
pub use status::{Status, StatusEntry};

/// The most times one mount ID may hold a volume (a count beyond it is refused, never wrapped).
pub const MAX_MOUNTS_PER_ID: u32 = 1 << 20;

/// What `Get` reports about a volume.
#[derive(Debug, Clone, PartialEq)]
pub struct VolumeInfo {
    /// The name.
    pub name: String,
    /// The host path while the volume is active.
    pub mountpoint: Option<PathBuf>,
    /// When it was created, RFC 3339.
    pub created_at: String,
    /// Details for `docker volume inspect`.
    pub status: Status,
}

/// The answer of a listing.
#[derive(Debug, Clone, PartialEq)]
pub struct Listing<T> {
    /// The volumes, local ones first.
    pub volumes: Vec<T>,
    /// Set when the storage could not be asked: its volumes are the ones it listed last.
    pub stale: Option<Stale>,
}

/// What `List` reports about a volume: Docker reads only these.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VolumeEntry {
    /// The name.
    pub name: String,
    /// The host path while the volume is active.
    pub mountpoint: Option<String>,
}

/// One storage service: a backend, its settings, its state and its locks.
#[derive(Debug)]
pub struct VolumeService {
    /// The service name (`vfs`, `ebs`, …).
    name: Arc<str>,
    /// The backend doing the storage work.
    backend: Backend,
    /// Volume operation settings (preempt, ignoreusedcount, implicit create, …).
    settings: Integration,
    /// Where records are made durable.
    store: Arc<StateStore>,
    /// The in-memory copy of every record; `Get`/`List` read only this. A std lock: held for
    /// short lookups, never across `.await`; records are shared, so a reader copies none.
    volumes: RwLock<BTreeMap<String, Arc<VolumeRecord>>>,
    /// One async lock per volume for the whole of each operation.
    locks: VolumeLocks,
    /// Active volumes and holders over all records, kept up to date by [`Self::publish`].
    totals: std::sync::Mutex<Totals>,
    /// Where tests crash the operations (nothing in release builds).
    crash: crate::crashpoint::Counter,
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

impl VolumeService {
    /// Opens the service: loads its state from `state_dir` and reconciles it with the backend
    /// (see the module documentation). `boot_id` is the host's current boot: a volume that is
    /// no longer active but still has holders is activated again when the host has not
    /// rebooted since the last open (the daemon restarted and lost its mounts, as a managed
    /// plugin does on `docker plugin disable`/`enable`); after a reboot its holders are dropped
    /// instead (their containers are gone).
    ///
    /// # Errors
    /// The state directory cannot be used.
    pub async fn open(
        name: &str,
        backend: Backend,
        settings: Integration,
        state_dir: PathBuf,
        boot_id: Option<String>,
    ) -> Result<Self, ServiceError> {
        Self::open_with(name, backend, settings, state_dir, boot_id, crate::crashpoint::Counter::from_env()).await
    }

    /// [`VolumeService::open`] with crash points set by a test.
    #[cfg(feature = "testing")]
    pub async fn open_crashing(
        name: &str,
        backend: Backend,
        settings: Integration,
        state_dir: PathBuf,
        boot_id: Option<String>,
        plan: Option<crate::crashpoint::Plan>,
    ) -> Result<Self, ServiceError> {
        Self::open_with(name, backend, settings, state_dir, boot_id, crate::crashpoint::Counter::with_plan(plan)).await
    }

    async fn open_with(
        name: &str,
        backend: Backend,
        settings: Integration,
        state_dir: PathBuf,
        boot_id: Option<String>,
        crash: crate::crashpoint::Counter,
    ) -> Result<Self, ServiceError> {
        let (store, records, same_boot) = blocking(move || {
            let store = StateStore::open(&state_dir)?;
            let records = store.load()?;
            let same_boot = store.record_boot(boot_id.as_deref());
            Ok::<_, state::StateError>((store, records, same_boot))
        })
        .await
        .map_err(|e| ServiceError::new("open", name, Cause::State(e)))?;
        let service = Self {
            name: Arc::from(name),
            backend,
            settings,
            store: Arc::new(store),
            volumes: RwLock::new(BTreeMap::new()),
            locks: VolumeLocks::default(),
            totals: std::sync::Mutex::default(),
            crash,
        };
        service.reconcile_all(records, same_boot).await;
        service.record_metrics();
        info!(service = %service.name, backend = service.backend.kind(), volumes = service.volumes.read().expect("volume map poisoned").len(), "service ready");
        Ok(service)
    }

    /// Counts every record once (at open) and publishes the totals to the metrics.
    fn record_metrics(&self) {
        let volumes = self.volumes.read().expect("volume map poisoned");
        let active = volumes.values().filter(|r| r.active).count();
        let holders = volumes.values().map(|r| r.holder_count()).sum();
        *self.totals.lock().expect("totals poisoned") = Totals { active, holders };
        crate::metrics::service_volumes(&self.name, volumes.len(), active, holders);
    }

    /// Replaces (or with `None`, removes) one record in memory and publishes the new totals,
    /// adjusted by the difference alone, so the cost does not grow with the number of volumes.
    fn publish(&self, name: &str, record: Option<VolumeRecord>) {
        let mut volumes = self.volumes.write().expect("volume map poisoned");
        let added = record.as_ref().map_or((0, 0), |r| (usize::from(r.active), r.holder_count()));
        let old = match record {
            Some(r) => volumes.insert(name.to_owned(), Arc::new(r)),
            None => volumes.remove(name),
        };
        let removed = old.as_ref().map_or((0, 0), |r| (usize::from(r.active), r.holder_count()));
        let mut totals = self.totals.lock().expect("totals poisoned");
        totals.active = (totals.active + added.0).saturating_sub(removed.0);
        totals.holders = totals.holders.saturating_add(added.1).saturating_sub(removed.1);
        crate::metrics::service_volumes(&self.name, volumes.len(), totals.active, totals.holders);
    }

    /// The service name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The backend's Docker scope.
    pub fn scope(&self) -> Scope {
        self.backend.controller.scope()
    }

    /// The volume operation settings (for the CSI front's defaults).
    pub fn settings(&self) -> &Integration {
        &self.settings
    }

    /// The backend (for the CSI front and the CLI).
    pub fn backend(&self) -> &Backend {
        &self.backend
    }

    /// Waits for the lock of `name`, within the request's deadline when it has one.
    ///
    /// # Errors
    /// [`Cause::Busy`] when another operation on the volume outlasts the deadline.
    async fn lock(&self, op: &'static str, name: &VolumeName) -> Result<locks::VolumeGuard<'_>, ServiceError> {
        let (Some(limit), Some(caller)) = (crate::deadline::left(), crate::deadline::caller()) else {
            return Ok(self.locks.lock(name.as_str()).await);
        };
        self.locks
            .lock_within(name.as_str(), limit)
            .await
            .ok_or_else(|| ServiceError::new(op, name.as_str(), Cause::Busy { waited: limit, caller }))
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
        move |source| ServiceError::new(op, volume, Cause::from_backend(backend, source))
    }

    /// A copy of the record of `name`, to change.
    fn record(&self, name: &VolumeName) -> Option<VolumeRecord> {
        self.shared(name.as_str()).map(|r| (*r).clone())
    }

    /// The record of `name`, shared (to read).
    fn shared(&self, name: &str) -> Option<Arc<VolumeRecord>> {
        self.volumes.read().expect("volume map poisoned").get(name).cloned()
    }

    /// Makes `record` durable, then publishes it in memory.
    async fn commit(&self, op: &'static str, record: VolumeRecord) -> Result<(), ServiceError> {
        self.save(record.clone()).await.map_err(|e| ServiceError::new(op, &record.name, Cause::State(e)))?;
        self.publish(&record.name.clone(), Some(record));
        Ok(())
    }

    async fn save(&self, record: VolumeRecord) -> Result<(), state::StateError> {
        let store = self.store.clone();
        blocking(move || store.save(&record)).await
    }

    /// Deletes the record of `name` durably, then from memory.
    async fn forget(&self, op: &'static str, name: &VolumeName) -> Result<(), ServiceError> {
        let (store, file) = (self.store.clone(), name.to_string());
        blocking(move || store.delete(&file))
            .await
            .map_err(|e| ServiceError::new(op, name.as_str(), Cause::State(e)))?;
        self.publish(name.as_str(), None);
        Ok(())
    }

    fn check_backend(&self, op: &'static str, record: &VolumeRecord) -> Result<(), ServiceError> {
        if record.backend == self.backend.kind() {
            Ok(())
        } else {
            Err(ServiceError::new(
                op,
                &record.name,
                Cause::WrongBackend { recorded: record.backend.clone(), configured: self.backend.kind() },
            ))
        }
    }

    /// Runs `op` on its own task, so that it (and its rollback) finishes even when the caller
    /// goes away, inside the service's crash scope named `name` and the request's deadline, and
    /// on the progress board as `name` of `subject`.
    async fn detached<T, F, Fut>(self: &Arc<Self>, name: &'static str, subject: &str, op: F) -> Result<T, ServiceError>
    where
        T: Send + 'static,
        F: FnOnce(Arc<Self>) -> Fut + Send + 'static,
        Fut: std::future::Future<Output = Result<T, ServiceError>> + Send + 'static,
    {
        use tracing::Instrument;
        let service = Arc::clone(self);
        let progress = crate::progress::begin(name, subject);
        let task = tokio::spawn(
            crate::deadline::carry(async move {
                let run = op(Arc::clone(&service));
                progress.scope(crate::crashpoint::scope(&service.crash, name, run)).await
            })
            .in_current_span(),
        );
        match task.await {
            Ok(result) => result,
            Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
            Err(_) => Err(ServiceError::new(
                name,
                "",
                Cause::from_backend(self.backend.kind(), crate::backend::BackendError::Cancelled { what: name }),
            )),
        }
    }

    /// The host path of an active volume, or `None` when it is not active.
    ///
    /// # Errors
    /// [`Cause::NotFound`].
    pub async fn path(&self, raw_name: &str) -> Result<Option<PathBuf>, ServiceError> {
        // The common case needs only the record, not the whole Status that Get builds.
        if let Some(record) = self.shared(raw_name).filter(|r| r.exists()) {
            if let Ok(name) = VolumeName::new(raw_name) {
                return Ok(record.active.then(|| self.backend.node.data_path(&name)));
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
        tracing::debug!(volume = %crate::name::excerpt(raw_name), "get");
        let name = Self::validate(OP, raw_name)?;
        if let Some(record) = self.shared(raw_name).filter(|r| r.exists()) {
            return Ok(self.info(&name, record));
        }
        if self.backend.controller.knows(&name).await {
            return Ok(self.remote_info(&name));
        }
        Err(ServiceError::new(OP, raw_name, Cause::NotFound))
    }

    /// Every volume: local state, plus the volumes of a global backend that other hosts
    /// created. Name and mount point only: that is all Docker reads from List. When the storage
    /// cannot be asked, its part is what it listed last, and [`Listing::stale`] says so.
    ///
    /// # Errors
    /// [`Cause::Unlisted`] when the storage cannot be asked and never answered a listing:
    /// an empty list would claim there are no volumes.
    pub async fn list(&self) -> Result<Listing<VolumeEntry>, ServiceError> {
        tracing::debug!("list");
        // First: it may refresh the backend's cache, which the local volumes' Status reads.
        let (remote, stale) =
            if self.scope() == Scope::Global { self.remote_names().await? } else { (Vec::new(), None) };
        let volumes = self.volumes.read().expect("volume map poisoned");
        let mut out = Vec::with_capacity(volumes.len() + remote.len());
        for record in volumes.values().filter(|r| r.exists()) {
            let mountpoint = record
                .active
                .then(|| VolumeName::new(&record.name).ok().map(|n| self.backend.node.data_path(&n)))
                .flatten()
                .map(|p| p.to_string_lossy().into_owned());
            out.push(VolumeEntry { name: record.name.clone(), mountpoint });
        }
        for name in remote {
            if !volumes.get(&name).is_some_and(|r| r.exists()) {
                out.push(VolumeEntry { name, mountpoint: None });
            }
        }
        Ok(Listing { volumes: out, stale })
    }

    /// Every volume with its Status, as `rexray volume ls` shows them.
    ///
    /// # Errors
    /// As [`VolumeService::list`].
    pub async fn list_detailed(&self) -> Result<Listing<VolumeInfo>, ServiceError> {
        let listing = self.list().await?;
        let mut out = Vec::with_capacity(listing.volumes.len());
        for entry in listing.volumes {
            let Ok(name) = VolumeName::new(&entry.name) else { continue };
            match self.shared(&entry.name).filter(|r| r.exists()) {
                Some(record) => out.push(self.info(&name, record)),
                None => out.push(self.remote_info(&name)),
            }
        }
        Ok(Listing { volumes: out, stale: listing.stale })
    }

    /// The names of the storage's volumes (a global namespace: every host's), from the
    /// backend's cache, and whether they are stale.
    async fn remote_names(&self) -> Result<(Vec<String>, Option<Stale>), ServiceError> {
        let page = self.backend.controller.list(&crate::backend::PageRequest::default()).await.unwrap_or_else(|e| {
            crate::backend::Page { stale: Some(Stale { cause: e.to_string(), listed_ago: None }), ..Default::default() }
        });
        if let Some(stale) = &page.stale {
            warn!(service = %self.name, "could not list the backend's volumes: {stale}");
            if stale.listed_ago.is_none() {
                return Err(ServiceError::new("list", "", Cause::Unlisted { stale: stale.clone() }));
            }
        }
        Ok((page.names, page.stale))
    }

    /// A volume this host has no record of, as the backend reports it.
    fn remote_info(&self, name: &VolumeName) -> VolumeInfo {
        let status = Status {
            service: Arc::clone(&self.name),
            backend: self.backend.kind().to_owned(),
            record: None,
            extra: self.backend.controller.status(name, &Options::new()),
        };
        VolumeInfo { name: name.to_string(), mountpoint: None, created_at: String::new(), status }
    }

    fn info(&self, name: &VolumeName, record: Arc<VolumeRecord>) -> VolumeInfo {
        VolumeInfo {
            name: record.name.clone(),
            mountpoint: record.active.then(|| self.backend.node.data_path(name)),
            created_at: record.created_at.clone(),
            status: Status {
                service: Arc::clone(&self.name),
                backend: record.backend.clone(),
                extra: self.backend.controller.status(name, &record.options),
                record: Some(record),
            },
        }
    }
}

impl VolumeRecord {
    /// Whether the volume exists as far as callers can tell (a create under way does not).
    pub fn exists(&self) -> bool {
        self.pending != Some(Pending::Creating)
    }
}

#[cfg(all(test, feature = "testing", feature = "ebs"))]
mod crash_tests;
#[cfg(test)]
mod tests;
