//! Snapshot operations of a service: checks and locking around the backend's optional
//! [`Snapshots`](crate::backend::Snapshots) capability.
//!
//! A snapshot of a volume is taken under that volume's lock, so it never races a remove or a
//! mount of the same volume on this host.

use std::time::Duration;

use tracing::debug;

use super::{Cause, ServiceError, VolumeService};
use crate::backend::snapshot::{NewSnapshot, SnapshotCopy, SnapshotFilter, SnapshotInfo};
use crate::backend::Snapshots;

impl VolumeService {
    /// The backend's snapshot operations, or [`Cause::NoSnapshots`] for `op` on `subject`.
    fn snapshot_ops(&self, op: &'static str, subject: &str) -> Result<&dyn Snapshots, ServiceError> {
        self.backend
            .controller
            .snapshots()
            .ok_or_else(|| ServiceError::new(op, subject, Cause::NoSnapshots { backend: self.backend.kind() }))
    }

    fn snapshot_err(
        &self,
        op: &'static str,
        subject: &str,
    ) -> impl FnOnce(crate::backend::BackendError) -> ServiceError {
        let (backend, subject) = (self.backend.kind(), subject.to_owned());
        move |source| ServiceError::new(op, subject, Cause::from_backend(backend, source))
    }

    /// The snapshots `filter` selects.
    ///
    /// # Errors
    /// No snapshot support, or the backend's failure.
    pub async fn snapshot_list(&self, filter: &SnapshotFilter) -> Result<Vec<SnapshotInfo>, ServiceError> {
        const OP: &str = "list snapshots";
        debug!(?filter, "snapshot list");
        self.snapshot_ops(OP, "")?.list_snapshots(filter).await.map_err(self.snapshot_err(OP, ""))
    }

    /// Starts a snapshot of volume `raw_volume`.
    ///
    /// # Errors
    /// No snapshot support, an invalid name, no such volume, or the backend's failure.
    pub async fn snapshot_create(&self, raw_volume: &str, req: &NewSnapshot) -> Result<SnapshotInfo, ServiceError> {
        const OP: &str = "snapshot";
        debug!(volume = raw_volume, ?req, "snapshot create");
        let ops = self.snapshot_ops(OP, raw_volume)?;
        let name = Self::validate(OP, raw_volume)?;
        let progress = crate::progress::begin(OP, raw_volume);
        progress
            .scope(async {
                let _guard = self.locks.lock(name.as_str()).await;
                if self.record(&name).is_none() && !self.backend.controller.knows(&name).await {
                    return Err(ServiceError::new(OP, raw_volume, Cause::NotFound));
                }
                ops.create_snapshot(&name, req).await.map_err(self.snapshot_err(OP, raw_volume))
            })
            .await
    }

    /// Deletes snapshot `id`.
    ///
    /// # Errors
    /// No snapshot support, or the backend's failure (no such snapshot, …).
    pub async fn snapshot_remove(&self, id: &str) -> Result<(), ServiceError> {
        const OP: &str = "remove snapshot";
        debug!(snapshot = id, "snapshot remove");
        self.snapshot_ops(OP, id)?.remove_snapshot(id).await.map_err(self.snapshot_err(OP, id))
    }

    /// Starts a copy of snapshot `id`.
    ///
    /// # Errors
    /// No snapshot support, or the backend's failure.
    pub async fn snapshot_copy(&self, id: &str, req: &SnapshotCopy) -> Result<SnapshotInfo, ServiceError> {
        const OP: &str = "copy snapshot";
        debug!(snapshot = id, ?req, "snapshot copy");
        let ops = self.snapshot_ops(OP, id)?;
        let progress = crate::progress::begin(OP, id);
        progress.scope(ops.copy_snapshot(id, req)).await.map_err(self.snapshot_err(OP, id))
    }

    /// Waits, at most `timeout`, until snapshot `id` (in `region`, default the service's) is
    /// complete.
    ///
    /// # Errors
    /// No snapshot support, the snapshot failed or vanished, or the deadline passed.
    pub async fn snapshot_wait(
        &self,
        id: &str,
        region: Option<&str>,
        timeout: Duration,
    ) -> Result<SnapshotInfo, ServiceError> {
        const OP: &str = "wait for snapshot";
        let ops = self.snapshot_ops(OP, id)?;
        let progress = crate::progress::begin(OP, id);
        progress.scope(ops.wait_snapshot(id, region, timeout)).await.map_err(self.snapshot_err(OP, id))
    }
}
