//! Publishing a volume to an instance (AttachVolume at a fresh device name, waited for) and
//! unpublishing it (DetachVolume, never forced, waited for), and what is attached where.

use std::collections::BTreeMap;
use std::sync::Arc;

use super::api::{AttachState, CloudErrorKind, Ec2Api, Volume, VolumeQuery, VolumeState};
use super::core::Core;
use super::create::CreateWait;
use super::errors::{attached_elsewhere, cloud_failed, other_az};
use super::identity::Identity;
use super::naming::{tag_options, LAST_USED_TAG, OWNER_TAG, OWNER_VALUE};
use super::wait::{Poll, WaitError};
use crate::backend::{BackendError, NodeId, PublishContext};
use crate::name::VolumeName;

/// What an unmount tells a user to do about a volume attached elsewhere.
const PREEMPT_HINT: &str = "unmount it there, or turn on preemption (libstorage.integration.volume.operations.mount.preempt: true, or REXRAY_PREEMPT=true) to take it over";

/// The context the node half needs: the volume ID, the device name it is attached as, and
/// the options its tags fix.
fn context(volume: &Volume, device_name: &str) -> PublishContext {
    PublishContext::new()
        .with(PublishContext::VOLUME_ID, volume.id.clone())
        .with(PublishContext::DEVICE_NAME, device_name)
        .with_fixed_options(&tag_options(&volume.tags))
}

impl Core {
    /// Attaches volume `name` to instance `node` (see [`crate::backend::Controller::publish`]).
    pub(super) async fn publish_to(&self, name: &VolumeName, node: &NodeId) -> Result<PublishContext, BackendError> {
        let (ident, api) = self.connect().await?;
        let api = api.as_ref();
        let target = node.0.as_str();
        let mut vol = self.require_one(api, &ident, name).await?;
        if target == ident.instance_id && vol.availability_zone != ident.availability_zone {
            return Err(other_az(name, &vol, "this instance", &ident.availability_zone));
        }
        if vol.tags.get(OWNER_TAG).map(String::as_str) != Some(OWNER_VALUE) {
            self.adopt(api, name, vol.clone()).await?;
        }
        if vol.state == VolumeState::Creating {
            vol = match self.wait_created(name, &vol.id).await {
                Ok(v) => v,
                Err(CreateWait::Vanished(state)) => {
                    return Err(Self::vanished(name, &vol.id, &state, vol.kms_key_id.as_deref()))
                }
                Err(CreateWait::Failed(e)) => return Err(e),
            };
        }
        if vol.state.is_gone() {
            return Err(BackendError::not_found(format!("volume {name} ({}) is {}", vol.id, vol.state.as_str())));
        }
        if let Some(mine) = vol.attachment_to(target).cloned() {
            match mine.state {
                AttachState::Attached => return Ok(context(&vol, &mine.device)),
                AttachState::Attaching => {
                    self.wait_attached(name, &vol.id, target, &mine.device).await?;
                    return Ok(context(&vol, &mine.device));
                }
                _ => self.wait_detached(name, &vol.id, target, &mine.device).await?,
            }
        }
        let others: Vec<String> =
            vol.live_attachments().filter(|a| a.instance_id != target).map(|a| a.instance_id.clone()).collect();
        if !others.is_empty() {
            if !self.preempt {
                return Err(attached_elsewhere(name, &vol, PREEMPT_HINT));
            }
            for other in &others {
                tracing::warn!(volume = %name, id = %vol.id, instance = %other, "preempt: force-detaching the volume from the other instance");
                self.detach_from(api, name, (&vol.id, ""), other, true).await?;
            }
        }
        let device = self.attach_new(api, &ident, name, &vol, target).await?;
        Ok(context(&vol, &device))
    }

    /// Waits for an attachment of `id` to `instance` that is under way.
    async fn wait_attached(
        &self,
        name: &VolumeName,
        id: &str,
        instance: &str,
        device: &str,
    ) -> Result<(), BackendError> {
        crate::progress::waiting_for(format!("volume {name} ({id}) to attach to instance {instance} as {device}"));
        let mut seen_attaching = true;
        let waited = self
            .poll_volume(id, self.local_signal(instance, id, device, true), |v| {
                match attach_progress(v, instance, &mut seen_attaching) {
                    Poll::Ready(done) => Poll::Ready(done.map(|_| ())),
                    Poll::Pending(seen) => Poll::Pending(seen),
                }
            })
            .await;
        match waited {
            Ok(()) => Ok(()),
            Err(WaitError::TimedOut { last, elapsed, cut, .. }) => Err(BackendError::Timeout {
                op: format!("volume {name} ({id}), attached to instance {instance} as {device},"),
                elapsed,
                last_seen: last,
                hint: cut,
            }),
            Err(WaitError::Failed(e)) => Err(cloud_failed("wait for the attach of", name, Some(id), &e)),
        }
    }

    /// Detaches volume `name` from instance `node` and waits; not attached there is success.
    pub(super) async fn unpublish_from(&self, name: &VolumeName, node: &NodeId) -> Result<(), BackendError> {
        let (_, shared_api) = self.connect().await?;
        let api = shared_api.as_ref();
        let Some(vol) = self.one(name, self.lookup(api, name).await?)? else {
            tracing::warn!(volume = %name, "volume not found in EC2; nothing to detach");
            return Ok(());
        };
        let Some(device) = vol.attachment_to(&node.0).map(|a| a.device.clone()) else {
            tracing::debug!(volume = %name, id = %vol.id, "not attached there");
            return Ok(());
        };
        self.detach_from(api, name, (&vol.id, &device), &node.0, false).await?;
        tracing::info!(volume = %name, id = %vol.id, instance = %node, "detached EBS volume");
        let mut vol = vol;
        self.note_last_use(&shared_api, name, &mut vol);
        self.forget_attachment(name, vol, &node.0);
        Ok(())
    }

    /// Every owned volume attached to instance `node`, by name, with its context.
    pub(super) async fn attached_to(&self, node: &NodeId) -> Result<BTreeMap<String, PublishContext>, BackendError> {
        let (_, api) = self.connect().await?;
        let query = VolumeQuery::filtered(vec![
            ("attachment.instance-id".into(), vec![node.0.clone()]),
            (format!("tag:{OWNER_TAG}"), vec![OWNER_VALUE.to_owned()]),
        ]);
        let volumes = self
            .describe_all(api.as_ref(), query)
            .await
            .map_err(|e| super::errors::cloud_error(format!("list the volumes attached to {node}"), &e, ""))?;
        Ok(volumes
            .iter()
            .filter_map(|v| {
                let name = self.naming.docker_name(v.name_tag()?)?;
                let a = v.attachment_to(&node.0)?;
                Some((name.to_string(), context(v, &a.device)))
            })
            .collect())
    }

    /// Tags `vol` with the time a host last used it ([`LAST_USED_TAG`]), in the background so
    /// the Unmount does not wait for it. Best effort: a volume whose tag could not be written
    /// only looks unused for longer than it is.
    fn note_last_use(&self, api: &Arc<dyn Ec2Api>, name: &VolumeName, vol: &mut Volume) {
        let now = humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string();
        vol.tags.insert(LAST_USED_TAG.to_owned(), now.clone());
        let tags = BTreeMap::from([(LAST_USED_TAG.to_owned(), now)]);
        let (api, retry, name, id) = (Arc::clone(api), Arc::clone(&self.retry), name.clone(), vol.id.clone());
        tokio::spawn(async move {
            if let Err(e) = retry.run("CreateTags", || api.create_tags(&id, &tags)).await {
                tracing::warn!(volume = %name, %id, error = %e, "could not tag the volume with its last use");
            }
        });
    }

    /// Records in the cache that `vol` is no longer attached to `instance`.
    fn forget_attachment(&self, name: &VolumeName, mut vol: Volume, instance: &str) {
        vol.attachments.retain(|a| a.instance_id != instance);
        if vol.live_attachments().next().is_none() && vol.state == VolumeState::InUse {
            vol.state = VolumeState::Available;
        }
        self.cache.update(name.as_str(), vol);
    }

    /// Waits until `instance` holds no live attachment of volume `id`.
    pub(super) async fn wait_detached(
        &self,
        name: &VolumeName,
        id: &str,
        instance: &str,
        device: &str,
    ) -> Result<(), BackendError> {
        crate::progress::waiting_for(format!("volume {name} ({id}) to detach from instance {instance}"));
        let result = self
            .poll_volume(id, self.local_signal(instance, id, device, false), |v| {
                match v.and_then(|v| v.attachment_to(instance)) {
                    None => Poll::Ready(Ok(())),
                    Some(a) => Poll::Pending(a.state.as_str().to_owned()),
                }
            })
            .await;
        match result {
            Ok(()) => Ok(()),
            Err(WaitError::Failed(e)) => Err(cloud_failed("wait for the detach of", name, Some(id), &e)),
            Err(WaitError::TimedOut { last, attempts, elapsed, cut }) => {
                let busy = if last == "busy" { "; busy: the device is still in use on that instance" } else { "" };
                Err(BackendError::Timeout {
                    op: format!("volume {name} ({id})"),
                    elapsed,
                    last_seen: format!("{last} on instance {instance}"),
                    hint: format!(" ({attempts} polls){busy}{cut}"),
                })
            }
        }
    }

    /// Detaches volume `id`, attached to `instance` as `device` (empty when not known), forced if
    /// asked, and waits; already detached is fine.
    pub(super) async fn detach_from(
        &self,
        api: &dyn Ec2Api,
        name: &VolumeName,
        (id, device): (&str, &str),
        instance: &str,
        force: bool,
    ) -> Result<(), BackendError> {
        match self.retry.run("DetachVolume", || api.detach_volume(id, instance, force)).await {
            Ok(()) => {}
            Err(e) if matches!(e.kind, CloudErrorKind::IncorrectState | CloudErrorKind::NotFound) => {
                tracing::debug!(volume = %name, %id, %instance, error = %e, "already detached");
            }
            Err(e) => return Err(cloud_failed("detach", name, Some(id), &e)),
        }
        crate::crashpoint::hit("DetachVolume sent");
        self.wait_detached(name, id, instance, device).await?;
        self.instances.note_device(instance, device, false);
        Ok(())
    }

    /// Attaches `vol` to `instance` at a fresh device name and waits until it is attached;
    /// returns the device name.
    async fn attach_new(
        &self,
        api: &dyn Ec2Api,
        ident: &Identity,
        name: &VolumeName,
        vol: &Volume,
        instance: &str,
    ) -> Result<String, BackendError> {
        let (described, mut cached) = match self.recent_instance(api, instance) {
            Some(known) => (known, true),
            None => (
                self.describe_instance(api, instance)
                    .await
                    .map_err(|e| cloud_failed("attach", name, Some(&vol.id), &e))?,
                false,
            ),
        };
        if !described.availability_zone.is_empty() && described.availability_zone != vol.availability_zone {
            // The configured AZ was wrong about this instance (or the node is elsewhere): EC2
            // knows better.
            let host =
                if instance == ident.instance_id { "this instance".to_owned() } else { format!("instance {instance}") };
            return Err(other_az(name, vol, &host, &described.availability_zone));
        }
        let mut used = described.device_names;
        for _ in 0..3 {
            let reservation = self
                .devices
                .reserve(&vol.id, &used)
                .map_err(|e| BackendError::NoSpace { what: format!("attach volume {name} ({}): {e}", vol.id) })?;
            let device = reservation.device.clone();
            match self.retry.run("AttachVolume", || api.attach_volume(&vol.id, instance, &device)).await {
                Ok(_) => {}
                Err(e) if e.kind == CloudErrorKind::DeviceInUse => {
                    tracing::warn!(volume = %name, %device, "device name in use on the instance; trying another");
                    reservation.taint();
                    used.push(device);
                    if std::mem::take(&mut cached) {
                        // Someone else attached since EC2 was last asked: ask again.
                        let fresh = self.describe_instance(api, instance).await;
                        used.extend(fresh.map_err(|e| cloud_failed("attach", name, Some(&vol.id), &e))?.device_names);
                    }
                    continue;
                }
                Err(e) if e.kind == CloudErrorKind::ZoneMismatch => {
                    return Err(BackendError::WrongZone {
                        volume: name.to_string(),
                        volume_zone: vol.availability_zone.clone(),
                        host: format!("instance {instance}"),
                        host_zone: "another zone".into(),
                        hint: format!("EC2 refused to attach it: {e}"),
                    })
                }
                Err(e) => return Err(cloud_failed("attach", name, Some(&vol.id), &e)),
            }
            crate::crashpoint::hit("AttachVolume sent");
            if let Err(e) = self.wait_new_attachment(api, name, vol, instance, &device).await {
                reservation.taint();
                return Err(e);
            }
            tracing::info!(volume = %name, id = %vol.id, %device, %instance, "attached EBS volume");
            self.instances.note_device(instance, &device, true);
            return Ok(device);
        }
        Err(BackendError::NoSpace {
            what: format!("attach volume {name} ({}): every device name tried was in use", vol.id),
        })
    }

    /// Waits until the attachment of `vol` to `instance` as `device` is `attached`; one that
    /// stays `attaching` is detached again.
    async fn wait_new_attachment(
        &self,
        api: &dyn Ec2Api,
        name: &VolumeName,
        vol: &Volume,
        instance: &str,
        device: &str,
    ) -> Result<(), BackendError> {
        crate::progress::waiting_for(format!(
            "volume {name} ({}) to attach to instance {instance} as {device}",
            vol.id
        ));
        let mut seen_attaching = false;
        let waited = self
            .poll_volume(&vol.id, self.local_signal(instance, &vol.id, device, true), |v| {
                attach_progress(v, instance, &mut seen_attaching)
            })
            .await;
        match waited {
            Ok(v) => {
                if let Some(v) = v {
                    self.cache.update(name.as_str(), v);
                }
                Ok(())
            }
            Err(WaitError::TimedOut { last, attempts, elapsed, cut }) => {
                let undo =
                    match crate::deadline::rollback(self.detach_from(api, name, (&vol.id, device), instance, false))
                        .await
                    {
                        Ok(()) => {
                            self.forget_attachment(name, vol.clone(), instance);
                            "detached it again".to_owned()
                        }
                        Err(e) => format!("and detaching it failed too: {e}"),
                    };
                Err(BackendError::Timeout {
                    op: format!("volume {name} ({})", vol.id),
                    elapsed,
                    last_seen: format!("{last} as {device} on instance {instance}"),
                    hint: format!(
                        " ({attempts} polls){cut}; {undo}; {device} will not be used again for an hour, so a retry gets a fresh device name"
                    ),
                })
            }
            Err(WaitError::Failed(e)) => Err(cloud_failed("wait for the attach of", name, Some(&vol.id), &e)),
        }
    }
}

/// One look at an attachment to `instance` being made: ready once `attached`; failed once it
/// was seen `attaching` and then is gone (EC2 dropped it); pending otherwise (just after
/// AttachVolume, EC2 may not show the attachment yet).
fn attach_progress(
    v: Option<&Volume>,
    instance: &str,
    seen_attaching: &mut bool,
) -> Poll<Result<Option<Volume>, String>> {
    match v.and_then(|v| v.attachment_to(instance)) {
        Some(a) if a.state == AttachState::Attached => Poll::Ready(Ok(v.cloned())),
        Some(a) => {
            *seen_attaching |= a.state == AttachState::Attaching;
            Poll::Pending(a.state.as_str().to_owned())
        }
        None if *seen_attaching => Poll::Ready(Err(format!(
            "EC2 dropped the attachment to instance {instance}: it was attaching and is no longer attached"
        ))),
        None => Poll::Pending("not attached".to_owned()),
    }
}
