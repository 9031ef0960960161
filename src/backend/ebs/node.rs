//! The node half's EBS part: finding an attached volume's device on this host, waiting for it
//! to appear, and checking that its serial names the volume.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;

use super::devices::{find_device, Found};
use super::settings::EbsSettings;
use super::wait::{Poll, StatusWait, WaitError};
use crate::backend::block::DeviceSource;
use crate::backend::{BackendError, PublishContext};
use crate::name::VolumeName;
use crate::os::DeviceHost;

/// The first delay between two looks at the host while a device is expected (then doubled, up
/// to [`DEVICE_POLL_CAP`]): the controller usually saw the device already.
const DEVICE_POLL: Duration = Duration::from_millis(20);

/// The longest delay between two looks at the host for a device.
const DEVICE_POLL_CAP: Duration = Duration::from_millis(100);

/// Finds EBS volumes' devices (see the module documentation).
#[derive(Debug, Clone)]
pub struct EbsDevices {
    /// How this host shows attached volumes.
    host: Arc<dyn DeviceHost>,
    /// `ebs.deviceLinksDir`.
    links_dir: PathBuf,
    /// How long a device may take to appear (`ebs.statusTimeout`).
    timeout: Duration,
}

impl EbsDevices {
    /// Devices on `host`, linked under the settings' `deviceLinksDir`.
    pub fn new(host: Arc<dyn DeviceHost>, settings: &EbsSettings) -> Self {
        Self { host, links_dir: settings.device_links_dir.clone(), timeout: settings.status_timeout }
    }
}

impl EbsDevices {
    /// What one look at the host finds for volume `id`, attached as `requested` (on a blocking
    /// thread: it reads links and sysfs).
    async fn find(&self, id: &str, requested: &str) -> Found {
        let (host, links, vol_id, requested) =
            (Arc::clone(&self.host), self.links_dir.clone(), id.to_owned(), requested.to_owned());
        tokio::task::spawn_blocking(move || find_device(host.as_ref(), &links, &vol_id, &requested))
            .await
            .unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()))
    }

    /// Whether volume `id`'s device, attached as `requested`, is on this host now (one look).
    pub async fn present(&self, id: &str, requested: &str) -> bool {
        matches!(self.find(id, requested).await, Found::Device { .. })
    }

    /// One look for volume `id`'s device, attached as `requested`.
    async fn look(
        &self,
        name: &VolumeName,
        id: &str,
        requested: &str,
    ) -> Result<Poll<(PathBuf, PathBuf)>, BackendError> {
        match self.find(id, requested).await {
            Found::Device { device, via } => Ok(Poll::Ready((device, via))),
            Found::Missing(paths) => {
                let paths = paths.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", ");
                Ok(Poll::Pending(format!("none of {paths} exists")))
            }
            Found::WrongSerial { device, serial } => Err(BackendError::ForeignDevice {
                what: format!(
                    "volume {name} ({id}): device {} has serial {serial}, which names another volume",
                    device.display()
                ),
            }),
        }
    }
}

#[async_trait]
impl DeviceSource for EbsDevices {
    async fn device(&self, name: &VolumeName, ctx: &PublishContext) -> Result<PathBuf, BackendError> {
        let (Some(id), Some(requested)) = (ctx.get(PublishContext::VOLUME_ID), ctx.get(PublishContext::DEVICE_NAME))
        else {
            return Err(BackendError::invalid(format!(
                "the publish context of volume {name} names no EBS volume ID and device name"
            )));
        };
        let schedule = StatusWait { initial_delay: DEVICE_POLL, max_delay: DEVICE_POLL_CAP, timeout: self.timeout };
        crate::progress::waiting_for(format!("the device of volume {name} ({id}), attached as {requested}, to appear"));
        let result = schedule.run(|| self.look(name, id, requested)).await;
        match result {
            Ok((device, via)) => {
                tracing::debug!(volume = %name, device = %device.display(), via = %via.display(), "found the device");
                Ok(device)
            }
            Err(WaitError::Failed(e)) => Err(e),
            Err(WaitError::TimedOut { last, elapsed, cut, .. }) => Err(BackendError::NoDevice {
                what: format!("volume {name} ({id}), attached as {requested},"),
                elapsed,
                hint: format!(
                    "on Nitro instances udev makes the nvme-Amazon_Elastic_Block_Store link: is {} the host's /dev/disk/by-id (bind-mount /dev into the plugin's container)?{cut} ({last})",
                    self.links_dir.display()
                ),
            }),
        }
    }
}
