//! Growing a volume: ModifyVolume to the new size, waited for until the new size is usable
//! (`optimizing` counts: EBS serves the new size while it still moves the data), idempotent, so
//! a resize interrupted at any point is finished by running it again.

use super::api::{ModificationState, ModifyVolumeRequest, VolumeModification};
use super::core::Core;
use super::errors::{cloud_failed, modify_refused};
use super::wait::{Poll, WaitError};
use crate::backend::BackendError;
use crate::name::VolumeName;

/// What is seen of a modification while it runs.
fn seen(m: &VolumeModification) -> String {
    match m.progress {
        Some(p) => format!("{} ({p} %)", m.state.as_str()),
        None => m.state.as_str().to_owned(),
    }
}

/// Whether the new size of `m` is usable.
fn usable(m: &VolumeModification) -> bool {
    matches!(m.state, ModificationState::Optimizing | ModificationState::Completed)
}

impl Core {
    /// Grows volume `name` to `size_gib` GiB (see [`crate::backend::Controller::expand`]).
    pub(super) async fn expand(&self, name: &VolumeName, size_gib: u64) -> Result<u64, BackendError> {
        let (ident, api) = self.connect().await?;
        let api = api.as_ref();
        let mut vol = self.require_one(api, &ident, name).await?;
        let id = vol.id.clone();
        if size_gib < vol.size_gib {
            return Err(BackendError::invalid(format!(
                "volume {name} ({id}) is {} GiB; EBS volumes grow, never shrink (asked for {size_gib} GiB)",
                vol.size_gib
            )));
        }
        let latest = self
            .retry
            .run("DescribeVolumesModifications", || api.describe_modification(&id))
            .await
            .map_err(|e| cloud_failed("resize", name, Some(&id), &e))?;
        let ours = |m: &VolumeModification| m.target_size_gib == Some(size_gib);
        match latest.as_ref() {
            Some(m) if ours(m) && usable(m) => return Ok(size_gib),
            Some(m) if m.state == ModificationState::Modifying && !ours(m) => {
                return Err(BackendError::InUse {
                    what: format!("volume {name} ({id})"),
                    holders: format!(
                        "a modification to {} GiB is {}",
                        m.target_size_gib.unwrap_or(0),
                        m.state.as_str()
                    ),
                    hint: "wait until it is optimizing or completed, then resize again".into(),
                })
            }
            Some(m) if m.state == ModificationState::Modifying => {
                tracing::info!(volume = %name, %id, size_gib, "a resize to this size is under way; waiting for it");
            }
            _ if vol.size_gib == size_gib => return Ok(size_gib),
            _ => self.modify_size(name, &id, size_gib).await?,
        }
        self.wait_resized(name, &id, size_gib).await?;
        vol.size_gib = size_gib;
        self.cache.update(name.as_str(), vol);
        tracing::info!(volume = %name, %id, size_gib, "resized EBS volume");
        Ok(size_gib)
    }

    /// ModifyVolume to `size_gib`.
    async fn modify_size(&self, name: &VolumeName, id: &str, size_gib: u64) -> Result<(), BackendError> {
        let (_, api) = self.connect().await?;
        let req = ModifyVolumeRequest { volume_id: id.to_owned(), size_gib: Some(size_gib), ..Default::default() };
        match self.retry.run("ModifyVolume", || api.modify_volume(&req)).await {
            Ok(_) => {
                crate::crashpoint::hit("ModifyVolume sent");
                Ok(())
            }
            Err(e) => Err(modify_refused("resize", name, id, &e)),
        }
    }

    /// Waits until the modification of `id` to `size_gib` makes the new size usable.
    async fn wait_resized(&self, name: &VolumeName, id: &str, size_gib: u64) -> Result<(), BackendError> {
        let (_, api) = self.connect().await?;
        crate::progress::waiting_for(format!("volume {name} ({id}) to grow to {size_gib} GiB"));
        let waited = self
            .status_wait()
            .run(|| async {
                let m = self.retry.run("DescribeVolumesModifications", || api.describe_modification(id)).await?;
                Ok(match m {
                    Some(m) if m.state == ModificationState::Failed => {
                        Poll::Ready(Err(m.status_message.unwrap_or_default()))
                    }
                    Some(m) if usable(&m) => Poll::Ready(Ok(())),
                    Some(m) => Poll::Pending(seen(&m)),
                    None => Poll::Pending("no modification yet".into()),
                })
            })
            .await;
        match waited {
            Ok(Ok(())) => Ok(()),
            Ok(Err(why)) => Err(BackendError::Cloud {
                op: format!("resize volume {name} ({id}) to {size_gib} GiB"),
                failure: crate::backend::CloudFailure::Refused,
                code: String::new(),
                message: format!("EC2 reports the modification failed: {why}"),
                hint: "",
            }),
            Err(WaitError::Failed(e)) => Err(cloud_failed("wait for the resize of", name, Some(id), &e)),
            Err(WaitError::TimedOut { last, elapsed, cut, .. }) => Err(BackendError::Timeout {
                op: format!("the resize of volume {name} ({id}) to {size_gib} GiB"),
                elapsed,
                last_seen: last,
                hint: format!(
                    "{cut}; EC2 goes on with it: run the resize again to wait for it and grow the file system"
                ),
            }),
        }
    }
}
