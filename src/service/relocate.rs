//! Moving a volume to another availability zone (EBS): refused while anything holds it; the
//! backend's plan made durable before the first side effect; the backend's move, which finds
//! every step it did again; the record's zone updated. Killed at any step, the next start (or the
//! next operation on the volume) finishes it; a move the storage refuses before the name moved is
//! undone by the backend, and the intent dropped.

use std::sync::Arc;
use std::time::Duration;

use tracing::{info, warn};

use super::state::{Pending, VolumeRecord};
use super::{Cause, ServiceError, VolumeService};
use crate::backend::Moved;
use crate::crashpoint::hit;
use crate::deadline::Budget;
use crate::name::{excerpt, VolumeName};

/// How long one call moves before it leaves the rest (a snapshot that takes longer goes on in
/// the storage) for the next: inside the CLI's 10-minute wait for an admin call.
const MOVE_BUDGET: Budget =
    Budget { caller: "a move's 9 min limit", total: Duration::from_secs(540), reserve: Duration::from_secs(30) };

/// How long the daemon's start spends finishing an interrupted move before it goes on with
/// the other volumes; the rest is finished by the next operation on the volume.
pub(super) const MOVE_AT_START: Budget = Budget {
    caller: "the start-up's 60 s for an interrupted move",
    total: Duration::from_secs(60),
    reserve: Duration::ZERO,
};

impl VolumeService {
    /// Moves volume `raw_name` to availability zone `zone`, keeping the old volume (no longer
    /// answering to the name) unless `delete_source`. A volume in the zone already is left as
    /// it is (with `delete_source`, the volume it was moved from is deleted).
    ///
    /// # Errors
    /// [`Cause::NotFound`]; [`Cause::InUse`] while held here; the backend's refusal (no zones,
    /// attached somewhere); the failing step (a move that ran out of time goes on at the next
    /// call; one refused for good is undone first).
    pub async fn relocate(
        self: &Arc<Self>,
        raw_name: &str,
        zone: &str,
        delete_source: bool,
    ) -> Result<VolumeRecord, ServiceError> {
        const OP: &str = "move";
        tracing::debug!(volume = %excerpt(raw_name), zone = %excerpt(zone), delete_source, "move");
        let name = Self::validate(OP, raw_name)?;
        let zone = zone.to_owned();
        self.detached(OP, raw_name, move |s| async move {
            crate::deadline::within(MOVE_BUDGET, async {
                let _guard = s.lock(OP, &name).await?;
                let Some(mut record) = s.settle(OP, &name).await? else {
                    return Err(ServiceError::new(OP, name.as_str(), Cause::NotFound));
                };
                s.check_backend(OP, &record)?;
                let holders = record.holder_count();
                if holders > 0 || record.active {
                    return Err(ServiceError::new(OP, name.as_str(), Cause::InUse { holders }));
                }
                let plan = s.backend.controller.plan_move(&name, &zone).await.map_err(s.backend_err(OP, &name))?;
                record.pending = Some(Pending::Moving { plan, delete_source });
                s.commit(OP, record.clone()).await?;
                hit("move intent recorded");
                s.finish_move(OP, &name, record).await
            })
            .await
        })
        .await
    }

    /// Does the recorded move of `record` (idempotent, so it also finishes an interrupted one).
    /// The intent stays while the move is unfinished; it is dropped once the move is done or
    /// the backend has undone it.
    pub(super) async fn finish_move(
        &self,
        op: &'static str,
        name: &VolumeName,
        mut record: VolumeRecord,
    ) -> Result<VolumeRecord, ServiceError> {
        let Some(Pending::Moving { plan, delete_source }) = record.pending.clone() else {
            return Ok(record);
        };
        let moved = self.backend.controller.relocate(name, &plan, delete_source).await;
        let kept = match moved.map_err(self.backend_err(op, name))? {
            Moved::Done => None,
            Moved::SourceKept(e) => Some(e),
            Moved::Undone(e) => {
                record.pending = None;
                if let Err(save) = self.commit(op, record.clone()).await {
                    warn!(volume = %name, error = %save.chain(), "could not drop the intent of an undone move");
                }
                return Err(self.backend_err(op, name)(e));
            }
        };
        hit("volume moved");
        record.pending = None;
        record.options.insert("availabilityZone".into(), plan.zone.clone());
        self.commit(op, record.clone()).await?;
        info!(volume = %name, zone = %plan.zone, "moved");
        match kept {
            Some(e) => Err(self.backend_err(op, name)(e)),
            None => Ok(record),
        }
    }
}
