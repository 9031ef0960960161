//! Growing a volume while it stays mounted and in use: the intent made durable, the
//! controller's expand, the node's online file-system grow, the new size recorded. Killed at any
//! step, the next start (or the next operation on the volume) finishes it. A resize the storage
//! refuses leaves the old size; once the storage has grown the record says so, and a file system
//! that cannot grow while mounted (ext4 without `CAP_SYS_RESOURCE`) grows at the next mount.

use std::sync::Arc;

use tracing::{info, warn};

use super::state::{Pending, VolumeRecord};
use super::{Cause, ServiceError, VolumeService};
use crate::backend::options::get_u64;
use crate::backend::BackendError;
use crate::crashpoint::hit;
use crate::name::{excerpt, VolumeName};

impl VolumeService {
    /// Grows volume `raw_name` to `size_gib` GiB and returns its record after. A volume in
    /// use grows while its containers keep running.
    ///
    /// # Errors
    /// [`Cause::NotFound`]; a smaller size than the volume's, or a backend whose volumes have
    /// no size (vfs), as the backend's [`BackendError::Invalid`]; or the backend's failure.
    pub async fn resize(self: &Arc<Self>, raw_name: &str, size_gib: u64) -> Result<VolumeRecord, ServiceError> {
        const OP: &str = "resize";
        tracing::debug!(volume = %excerpt(raw_name), size_gib, "resize");
        let name = Self::validate(OP, raw_name)?;
        self.detached(OP, raw_name, move |s| async move {
            let _guard = s.lock(OP, &name).await?;
            let Some(mut record) = s.settle(OP, &name).await? else {
                return Err(ServiceError::new(OP, name.as_str(), Cause::NotFound));
            };
            s.check_backend(OP, &record)?;
            if let Some(current) = get_u64(&record.options, "size").filter(|c| size_gib < *c) {
                return Err(s.backend_err(OP, &name)(BackendError::invalid(format!(
                    "volume {name} is {current} GiB; volumes grow, never shrink (asked for {size_gib} GiB)"
                ))));
            }
            record.pending = Some(Pending::Resizing { size_gib });
            s.commit(OP, record.clone()).await?;
            hit("resize intent recorded");
            s.finish_resize(OP, &name, record).await
        })
        .await
    }

    /// Does the recorded resize of `record` (idempotent, so it also finishes an interrupted
    /// one). On failure the intent is dropped and the record keeps its old size.
    pub(super) async fn finish_resize(
        &self,
        op: &'static str,
        name: &VolumeName,
        mut record: VolumeRecord,
    ) -> Result<VolumeRecord, ServiceError> {
        let Some(Pending::Resizing { size_gib }) = record.pending else {
            return Ok(record);
        };
        let size = match self.backend.controller.expand(name, &record.options, size_gib).await {
            Ok(size) => size,
            Err(e) => {
                record.pending = None;
                if let Err(save) = self.commit(op, record.clone()).await {
                    warn!(volume = %name, error = %save.chain(), "could not drop the intent of a failed resize");
                }
                return Err(self.backend_err(op, name)(e));
            }
        };
        hit("volume expanded");
        record.options.insert("size".into(), size.to_string());
        // The intent stays until the mounted file system has grown too, so a crash before that
        // is finished at the next start (both steps are idempotent).
        let grown = if record.active {
            let node = &self.backend.node;
            let grown = node.expand_fs(name, &record.options, &node.staging_path(name), Some(size)).await;
            hit("file system grown");
            grown
        } else {
            Ok(())
        };
        // The storage has the new size: so does the record, whatever happened to the file system.
        record.pending = None;
        self.commit(op, record.clone()).await?;
        hit("resize recorded");
        info!(volume = %name, size_gib = size, "resized");
        grown.map_err(self.backend_err(op, name))?;
        Ok(record)
    }
}
