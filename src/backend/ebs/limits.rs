//! How many volumes of this program this instance can still take: its type's EBS attachment
//! limit (DescribeInstanceTypes), less the slots its network interfaces and instance-store
//! disks use where they share the limit, less the volumes attached that are not this program's
//! (the root volume, volumes attached by hand), and no more than the device names of the
//! configured range (`ebs.useLargeDeviceRange`) leave. An orchestrator reads it from
//! NodeGetInfo and schedules no more volumes on the node than that.

use super::api::{InstanceTypeLimits, VolumeQuery};
use super::core::Core;
use super::errors::cloud_error;
use super::naming::{OWNER_TAG, OWNER_VALUE};
use crate::backend::BackendError;

impl Core {
    /// The attachment slots this instance has for volumes of this program; `None` when EC2
    /// does not say what its type allows.
    ///
    /// # Errors
    /// The identity could not be found out, or EC2 failed.
    pub(super) async fn attach_limit(&self) -> Result<Option<u32>, BackendError> {
        let (identity, api) = self.connect().await?;
        let id = identity.instance_id;
        let instance = self
            .describe_instance(api.as_ref(), &id)
            .await
            .map_err(|e| cloud_error(format!("describe instance {id}"), &e, ""))?;
        let itype = instance.instance_type.clone();
        let limits = self
            .retry
            .run("DescribeInstanceTypes", || api.describe_instance_type(&itype))
            .await
            .map_err(|e| cloud_error(format!("describe instance type {itype}"), &e, ""))?;
        let attached = self
            .describe_all(
                api.as_ref(),
                VolumeQuery::filtered(vec![("attachment.instance-id".into(), vec![id.clone()])]),
            )
            .await
            .map_err(|e| cloud_error(format!("list the volumes attached to {id}"), &e, ""))?;
        let foreign: Vec<_> =
            attached.iter().filter(|v| v.tags.get(OWNER_TAG).map(String::as_str) != Some(OWNER_VALUE)).collect();
        let foreign_devices: Vec<String> =
            foreign.iter().filter_map(|v| v.attachment_to(&id)).map(|a| a.device.clone()).collect();
        let slots = free_slots(&limits, instance.network_interfaces, u32::try_from(foreign.len()).unwrap_or(u32::MAX));
        // Each attachment takes a device name of the configured range, too.
        let names = self.devices.capacity(&foreign_devices);
        let limit = slots.map(|s| s.min(names));
        tracing::info!(instance = %id, instance_type = %itype, ?slots, names, foreign = foreign.len(), ?limit, "attachment slots for volumes");
        Ok(limit)
    }
}

/// The slots left of `limits` with `network_interfaces` and `foreign` volumes attached.
/// EC2's `MaximumEbsAttachments` counts one network interface already.
pub(super) fn free_slots(limits: &InstanceTypeLimits, network_interfaces: u32, foreign: u32) -> Option<u32> {
    let max = limits.max_attachments?;
    let shared = if limits.shared {
        network_interfaces.saturating_sub(1).saturating_add(limits.instance_store_disks)
    } else {
        0
    };
    Some(max.saturating_sub(shared).saturating_sub(foreign))
}

#[cfg(test)]
mod tests {
    use super::super::api::Ec2Api;
    use super::super::tests::{host, host_with, service, world, AZ};
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn the_limit_counts_interfaces_foreign_volumes_and_device_names() {
        let ec2 = world();
        ec2.set_instance_shape("i-a", "m5.large", 3);
        let root = ec2.add_volume(AZ, 8, &[("Name", "root")]);
        ec2.attach_volume(&root, "i-a", "/dev/xvdf").await.unwrap();
        let ours = ec2.add_volume(AZ, 8, &[("Name", "v"), (OWNER_TAG, OWNER_VALUE)]);
        ec2.attach_volume(&ours, "i-a", "/dev/xvdg").await.unwrap();
        // 27 slots with one interface, 2 more interfaces, 1 volume not ours: 24 ...
        let large = host_with(&ec2, "i-a", &service("i-a", AZ, false, &[("uselargedevicerange", "true")]));
        assert_eq!(large.backend.controller.attach_limit().await.unwrap(), Some(24));
        // ... but the default range has 11 names, and the foreign volume holds one of them.
        assert_eq!(host(&ec2, "i-a").backend.controller.attach_limit().await.unwrap(), Some(10));
        // A type EC2 does not know is an error that says so.
        ec2.set_instance_shape("i-b", "x9.nothing", 1);
        let err = host(&ec2, "i-b").backend.controller.attach_limit().await.unwrap_err();
        assert!(err.to_string().contains("x9.nothing"), "{err}");
    }

    fn limits(max: Option<u32>, shared: bool, disks: u32) -> InstanceTypeLimits {
        InstanceTypeLimits { max_attachments: max, shared, instance_store_disks: disks }
    }

    #[test]
    fn shared_slots_lose_extra_interfaces_and_disks_and_foreign_volumes() {
        assert_eq!(free_slots(&limits(Some(27), true, 0), 1, 1), Some(26));
        assert_eq!(free_slots(&limits(Some(27), true, 1), 3, 1), Some(23));
        assert_eq!(free_slots(&limits(Some(128), false, 2), 4, 1), Some(127));
        assert_eq!(free_slots(&limits(Some(2), true, 0), 5, 3), Some(0));
        assert_eq!(free_slots(&limits(None, true, 0), 1, 0), None);
    }
}
