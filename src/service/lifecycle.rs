//! Create, Mount, Unmount and Remove, and the activation they compose from the backend's
//! halves: publish to this node → stage → hand out, and back.
//!
//! Each writes its intent ([`Pending`]) before its first side effect and marks its steps as
//! crash points; see the service documentation for what a restart does at each of them.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use tracing::{debug, info, warn};

use super::holder::Holder;
use super::state::{Pending, VolumeRecord};
use super::{now_rfc3339, Cause, ServiceError, VolumeService, MAX_MOUNTS_PER_ID};
use crate::backend::{BackendError, ErrorKind, Options};
use crate::crashpoint::hit;
use crate::name::{excerpt, VolumeName};

impl VolumeService {
    /// Creates a volume. Idempotent: an existing volume is success and keeps its options.
    ///
    /// # Errors
    /// An invalid name or option, or the backend's failure.
    pub async fn create(self: &Arc<Self>, raw_name: &str, opts: &BTreeMap<String, String>) -> Result<(), ServiceError> {
        const OP: &str = "create";
        debug!(volume = %excerpt(raw_name), ?opts, "create");
        let name = Self::validate(OP, raw_name)?;
        let opts = opts.clone();
        self.detached(OP, raw_name, move |s| async move {
            let _guard = s.lock(OP, &name).await?;
            if let Some(existing) = s.settle(OP, &name).await? {
                if !opts.is_empty() {
                    debug!(volume = %name, "volume exists; create options ignored");
                }
                return s.check_backend(OP, &existing);
            }
            let options = s.backend.controller.parse_options(&opts).map_err(s.backend_err(OP, &name))?;
            if s.settings.create_disable {
                info!(volume = %name, "create is disabled by configuration; nothing done");
                return Ok(());
            }
            s.create_locked(OP, &name, options).await.map(drop)
        })
        .await
    }

    /// Creates `name` with `options` under its lock: intent, backend create, record.
    pub(super) async fn create_locked(
        &self,
        op: &'static str,
        name: &VolumeName,
        options: Options,
    ) -> Result<VolumeRecord, ServiceError> {
        let mut record = VolumeRecord {
            name: name.to_string(),
            backend: self.backend.kind().to_owned(),
            created_at: now_rfc3339(),
            options,
            holders: BTreeMap::new(),
            anonymous: false,
            active: false,
            pending: Some(Pending::Creating),
            last_used: None,
            csi: super::state::OrchestratorClaims::default(),
        };
        self.commit(op, record.clone()).await?;
        hit("create intent recorded");
        if let Err(e) = self.backend.controller.create(name, &record.options, false).await {
            // The backend undid what it did; an error saying the name is taken made nothing.
            if let Err(forget) = self.forget(op, name).await {
                warn!(volume = %name, error = %forget.chain(), "could not drop the record of a failed create; the next open does");
            }
            return Err(self.backend_err(op, name)(e));
        }
        hit("created");
        record.pending = None;
        self.commit(op, record.clone()).await?;
        hit("create recorded");
        info!(volume = %name, service = %self.name, "volume created");
        Ok(record)
    }

    /// Removes a volume and its data. Refused while anyone holds it; a missing volume is success.
    ///
    /// # Errors
    /// [`Cause::InUse`] while held, or the backend's failure.
    pub async fn remove(self: &Arc<Self>, raw_name: &str) -> Result<(), ServiceError> {
        const OP: &str = "remove";
        debug!(volume = %excerpt(raw_name), "remove");
        let name = Self::validate(OP, raw_name)?;
        self.detached(OP, raw_name, move |s| async move {
            let _guard = s.lock(OP, &name).await?;
            let Some(mut record) = s.settle(OP, &name).await? else {
                return s.remove_unrecorded(&name).await;
            };
            s.check_backend(OP, &record)?;
            let holders = record.holder_count();
            if holders > 0 {
                return Err(ServiceError::new(OP, name.as_str(), Cause::InUse { holders }));
            }
            s.refuse_orchestrated(OP, &record)?;
            if s.settings.remove_disable {
                info!(volume = %name, "remove is disabled by configuration; nothing done");
                return Ok(());
            }
            record.pending = Some(Pending::Removing);
            s.commit(OP, record.clone()).await?;
            hit("remove intent recorded");
            s.finish_remove(OP, &name, record).await
        })
        .await
    }

    /// A Remove of a name with no record: a volume another host made (global namespaces) is
    /// removed from the storage, after letting go of what this host may still hold of it (no
    /// record means no holder here); anything else is left alone.
    async fn remove_unrecorded(&self, name: &VolumeName) -> Result<(), ServiceError> {
        const OP: &str = "remove";
        if !self.settings.remove_disable && self.backend.controller.knows(name).await {
            let options =
                self.backend.controller.parse_options(&BTreeMap::new()).map_err(self.backend_err(OP, name))?;
            self.deactivate(name, &options).await.map_err(self.backend_err(OP, name))?;
            self.backend.controller.delete(name, &options).await.map_err(self.backend_err(OP, name))?;
            info!(volume = %name, "volume removed");
        } else {
            debug!(volume = %name, "remove of an unknown volume");
        }
        Ok(())
    }

    /// The rest of a remove whose intent is recorded: tear down on this host, delete, forget.
    /// A delete the backend refuses (still in use elsewhere) or fails changes nothing: the
    /// record is kept, at rest. A failed teardown leaves the record to be settled again.
    pub(super) async fn finish_remove(
        &self,
        op: &'static str,
        name: &VolumeName,
        mut record: VolumeRecord,
    ) -> Result<(), ServiceError> {
        if let Err(e) = self.deactivate(name, &record.options).await {
            record.pending = Some(Pending::Deactivating);
            self.commit(op, record).await?;
            return Err(self.backend_err(op, name)(e));
        }
        if record.active {
            record.active = false;
            self.publish(name.as_str(), Some(record.clone()));
        }
        hit("torn down for remove");
        if let Err(e) = self.backend.controller.delete(name, &record.options).await {
            record.pending = None;
            self.commit(op, record).await?;
            return Err(self.backend_err(op, name)(e));
        }
        hit("deleted");
        self.backend.node.forget(name).await;
        self.forget(op, name).await?;
        hit("remove recorded");
        info!(volume = %name, "volume removed");
        Ok(())
    }

    /// Mounts a volume for `holder` and returns its host path. The first holder activates it.
    /// An unknown name is adopted when the storage has it (made by another host), else created
    /// when implicit create is on.
    ///
    /// # Errors
    /// [`Cause::NotFound`] (implicit create off), or the backend's failure.
    pub async fn mount(self: &Arc<Self>, raw_name: &str, id: Option<&str>) -> Result<PathBuf, ServiceError> {
        const OP: &str = "mount";
        debug!(volume = %excerpt(raw_name), id = %excerpt(id.unwrap_or("")), "mount");
        let name = Self::validate(OP, raw_name)?;
        let holder = Holder::from_request(id);
        self.detached(OP, raw_name, move |s| async move {
            let _guard = s.lock(OP, &name).await?;
            let record = match s.settle(OP, &name).await? {
                Some(r) => r,
                None if s.settings.implicit_create || s.backend.controller.knows(&name).await => {
                    let options =
                        s.backend.controller.parse_options(&BTreeMap::new()).map_err(s.backend_err(OP, &name))?;
                    s.create_locked(OP, &name, options).await?
                }
                None => return Err(ServiceError::new(OP, name.as_str(), Cause::NotFound)),
            };
            s.check_backend(OP, &record)?;
            s.refuse_orchestrated(OP, &record)?;
            s.mount_locked(OP, &name, record, &holder).await
        })
        .await
    }

    async fn mount_locked(
        &self,
        op: &'static str,
        name: &VolumeName,
        mut record: VolumeRecord,
        holder: &Holder,
    ) -> Result<PathBuf, ServiceError> {
        if let Holder::Id(id) = holder {
            let count = record.holders.get(id).copied().unwrap_or(0);
            if count >= MAX_MOUNTS_PER_ID {
                return Err(ServiceError::new(op, name.as_str(), Cause::TooManyMounts { id: excerpt(id), count }));
            }
        }
        let activated = !record.active;
        let path = if record.active {
            self.backend.node.data_path(name)
        } else {
            record.pending = Some(Pending::Activating);
            self.commit(op, record.clone()).await?;
            hit("mount intent recorded");
            let path = self.activate(name, &record.options).await.map_err(|e| self.backend_err(op, name)(e));
            let path = match path {
                Ok(path) => path,
                Err(e) => {
                    record.pending = None;
                    self.commit(op, record).await?;
                    return Err(e);
                }
            };
            record.active = true;
            record.last_used = Some(now_rfc3339());
            info!(volume = %name, path = %path.display(), "volume activated");
            path
        };
        match holder {
            Holder::Anonymous => record.anonymous = true,
            Holder::Id(id) => *record.holders.entry(id.clone()).or_insert(0) += 1,
        }
        record.pending = None;
        if let Err(e) = self.commit(op, record.clone()).await {
            // Not durable, so not granted: undo an activation nobody else relies on.
            if activated {
                if let Err(undo) = crate::deadline::rollback(self.deactivate(name, &record.options)).await {
                    warn!(volume = %name, error = %undo, "rollback of activation failed; the next open releases it");
                }
            }
            return Err(e);
        }
        hit("mount recorded");
        debug!(volume = %name, %holder, holders = record.holder_count(), "mounted");
        Ok(path)
    }

    /// Releases `holder`'s mount. The last holder out deactivates the volume (every Unmount
    /// does when `ignoreusedcount` is set). Unknown volumes and IDs are success.
    ///
    /// # Errors
    /// The backend's failure to deactivate; the holder is released regardless, and the next
    /// operation on the volume (or the next start) finishes the deactivation.
    pub async fn unmount(self: &Arc<Self>, raw_name: &str, id: Option<&str>) -> Result<(), ServiceError> {
        const OP: &str = "unmount";
        debug!(volume = %excerpt(raw_name), id = %excerpt(id.unwrap_or("")), "unmount");
        let name = Self::validate(OP, raw_name)?;
        let holder = Holder::from_request(id);
        self.detached(OP, raw_name, move |s| async move {
            let _guard = s.lock(OP, &name).await?;
            let Some(mut record) = s.settle(OP, &name).await? else {
                debug!(volume = %name, "unmount of an unknown volume");
                return Ok(());
            };
            s.check_backend(OP, &record)?;
            let before = record.holder_count();
            match &holder {
                Holder::Anonymous => record.anonymous = false,
                Holder::Id(id) => {
                    if let Some(count) = record.holders.get_mut(id) {
                        *count = count.saturating_sub(1);
                        if *count == 0 {
                            record.holders.remove(id);
                        }
                    }
                }
            }
            if s.settings.ignore_used_count {
                record.holders.clear();
                record.anonymous = false;
            }
            let release = record.active && record.holder_count() == 0;
            if record.holder_count() == before && !release {
                debug!(volume = %name, %holder, holders = before, "unmount of a holder that holds nothing");
                return Ok(());
            }
            if release {
                record.pending = Some(Pending::Deactivating);
            }
            s.commit(OP, record.clone()).await?;
            hit("holder released");
            if release {
                s.deactivate(&name, &record.options).await.map_err(s.backend_err(OP, &name))?;
                record.active = false;
                record.pending = None;
                record.last_used = Some(now_rfc3339());
                s.commit(OP, record.clone()).await?;
                hit("unmount recorded");
                info!(volume = %name, "volume deactivated");
            }
            debug!(volume = %name, %holder, holders = record.holder_count(), "unmounted");
            Ok(())
        })
        .await
    }

    /// Refuses a volume an orchestrator holds through the CSI front.
    pub(super) fn refuse_orchestrated(&self, op: &'static str, record: &VolumeRecord) -> Result<(), ServiceError> {
        if record.csi.is_empty() {
            return Ok(());
        }
        Err(ServiceError::new(op, &record.name, Cause::HeldByOrchestrator { what: record.csi.describe() }))
    }

    /// The Docker front's activation ([`Backend::activate_here`]), measured.
    pub(super) async fn activate(&self, name: &VolumeName, opts: &Options) -> Result<PathBuf, BackendError> {
        let start = Instant::now();
        let result = self.backend.activate_here(name, opts).await;
        let outcome = crate::backend::instrumented::outcome(&result);
        crate::metrics::backend_operation(self.backend.kind(), "activate", outcome, start.elapsed());
        result
    }

    /// The Docker front's deactivation ([`Backend::deactivate_here`]), measured. Idempotent:
    /// it is also how a volume left half-active by a crash is released.
    pub(super) async fn deactivate(&self, name: &VolumeName, opts: &Options) -> Result<(), BackendError> {
        let start = Instant::now();
        let result = self.backend.deactivate_here(name, opts).await;
        let outcome = crate::backend::instrumented::outcome(&result);
        crate::metrics::backend_operation(self.backend.kind(), "deactivate", outcome, start.elapsed());
        if let Err(e) = &result {
            if e.kind() == ErrorKind::Cancelled {
                warn!(volume = %name, "deactivation cancelled; the next start finishes it");
            }
        }
        result
    }
}
