//! Changing a volume's performance settings in place (EBS: type, IOPS, throughput) while it
//! stays mounted and in use. The backend checks the change against the storage's limits first
//! (no call is made for a change it would refuse); the target is made durable; the storage is
//! asked; the record takes the new settings. Killed at any step, the next start (or the next
//! operation on the volume) finishes it; a change the storage refuses leaves the old settings.

use std::collections::BTreeMap;
use std::sync::Arc;

use tracing::{info, warn};

use super::state::{Pending, VolumeRecord};
use super::{Cause, ServiceError, VolumeService};
use crate::crashpoint::hit;
use crate::name::{excerpt, VolumeName};

impl VolumeService {
    /// Changes volume `raw_name` by `changes` (Docker's option spelling: `volumeType`, `iops`,
    /// `throughput`) and returns its record after. The storage may go on optimizing for hours;
    /// `docker volume inspect` shows how far it is.
    ///
    /// # Errors
    /// [`Cause::NotFound`]; a change the backend cannot make or the storage's limits refuse, as
    /// the backend's [`crate::backend::BackendError::Invalid`] or `InvalidOption` (before any
    /// call); or the storage's refusal.
    pub async fn modify(
        self: &Arc<Self>,
        raw_name: &str,
        changes: &BTreeMap<String, String>,
    ) -> Result<VolumeRecord, ServiceError> {
        const OP: &str = "modify";
        tracing::debug!(volume = %excerpt(raw_name), ?changes, "modify");
        let name = Self::validate(OP, raw_name)?;
        let changes = changes.clone();
        self.detached(OP, raw_name, move |s| async move {
            let _guard = s.lock(OP, &name).await?;
            let Some(mut record) = s.settle(OP, &name).await? else {
                return Err(ServiceError::new(OP, name.as_str(), Cause::NotFound));
            };
            s.check_backend(OP, &record)?;
            let target =
                s.backend.controller.plan_modify(&name, &record.options, &changes).map_err(s.backend_err(OP, &name))?;
            record.pending = Some(Pending::Modifying { target });
            s.commit(OP, record.clone()).await?;
            hit("modify intent recorded");
            s.finish_modify(OP, &name, record).await
        })
        .await
    }

    /// Does the recorded modification of `record` (idempotent, so it also finishes an
    /// interrupted one). On failure the intent is dropped and the record keeps its settings.
    pub(super) async fn finish_modify(
        &self,
        op: &'static str,
        name: &VolumeName,
        mut record: VolumeRecord,
    ) -> Result<VolumeRecord, ServiceError> {
        let Some(Pending::Modifying { target }) = record.pending.take() else {
            return Ok(record);
        };
        if let Err(e) = self.backend.controller.modify(name, &target).await {
            if let Err(save) = self.commit(op, record.clone()).await {
                warn!(volume = %name, error = %save.chain(), "could not drop the intent of a failed modification");
            }
            return Err(self.backend_err(op, name)(e));
        }
        hit("volume modified");
        record.options = target;
        self.commit(op, record.clone()).await?;
        info!(volume = %name, "modified");
        Ok(record)
    }
}
