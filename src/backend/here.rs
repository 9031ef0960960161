//! The Docker front's use of a backend: both halves composed on this host.
//!
//! Activation publishes the volume to this node, stages it at its staging path and hands out its
//! data directory; a failed step undoes the steps before it. Deactivation unstages (sync,
//! unmount) and unpublishes. Every step checks reality, so both are idempotent, and a crash
//! between any two steps is finished or undone by calling them again.

use std::path::PathBuf;

use super::{Backend, BackendError, Options};
use crate::crashpoint::hit;
use crate::name::VolumeName;

impl Backend {
    /// Publishes `name` to this node, stages and hands it out; returns the path for containers.
    ///
    /// # Errors
    /// The failing step's error; the steps before it are undone.
    pub async fn activate_here(&self, name: &VolumeName, opts: &Options) -> Result<PathBuf, BackendError> {
        let (controller, node) = (&self.controller, &self.node);
        let here = controller.local_node().await?;
        let ctx = controller.publish(name, opts, &here).await?;
        hit("published");
        let staging = node.staging_path(name);
        let opts = ctx.fixed_over(opts);
        let handed_out = match node.stage(name, &opts, &ctx, &staging).await {
            Ok(()) => {
                hit("staged");
                node.publish(name, &opts, &staging, None, false).await
            }
            Err(e) => Err(e),
        };
        match handed_out {
            Ok(path) => Ok(path),
            Err(e) => {
                // The undoing may use the time the deadline kept for it.
                crate::deadline::rollback(async {
                    if let Err(undo) = node.unstage(name, &staging).await {
                        tracing::warn!(volume = %name, error = %undo, "rollback: could not unstage after a failed activation");
                    } else if let Err(undo) = controller.unpublish(name, &opts, &here).await {
                        tracing::warn!(volume = %name, error = %undo, "rollback: could not unpublish after a failed activation");
                    } else {
                        tracing::info!(volume = %name, "rollback: released the volume after a failed activation");
                    }
                })
                .await;
                Err(e)
            }
        }
    }

    /// Unstages `name` (sync, unmount) and unpublishes it from this node. The data stays.
    ///
    /// # Errors
    /// The failing step's error.
    pub async fn deactivate_here(&self, name: &VolumeName, opts: &Options) -> Result<(), BackendError> {
        let (controller, node) = (&self.controller, &self.node);
        node.unstage(name, &node.staging_path(name)).await?;
        hit("unstaged");
        let here = controller.local_node().await?;
        controller.unpublish(name, opts, &here).await
    }
}
