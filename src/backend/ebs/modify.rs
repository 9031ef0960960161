//! Changing a volume's type, IOPS or throughput in place while it stays in use: the change
//! checked against EBS's limits for the type and size before any call, one ModifyVolume, and
//! what EC2 reports of the modification while it runs (for `docker volume inspect`).

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

use super::api::{ModificationState, ModifyVolumeRequest, VolumeModification};
use super::core::Core;
use super::errors::{cloud_failed, modify_refused};
use super::options::{iops_range, EbsDefaults, EbsOptions, EBS_SPECS};
use crate::backend::options::normalize;
use crate::backend::{BackendError, Options};
use crate::name::VolumeName;

/// The options a modification may change.
const MODIFIABLE: [&str; 3] = ["volumeType", "iops", "throughput"];

/// How often a running modification's progress is asked for while someone looks at it.
const PROGRESS_EVERY: Duration = Duration::from_secs(5);

/// The options volume `opts` has after `raw` changes (Docker's spelling, aliases accepted),
/// checked against EBS's limits for its type and size.
///
/// A new type that takes no IOPS (or no throughput) drops the old value; io1 and io2 need
/// IOPS, given or kept from the old type.
///
/// # Errors
/// Nothing to change, a setting that does not change in place, or one EBS would refuse.
pub(super) fn plan(
    opts: &Options,
    raw: &BTreeMap<String, String>,
    defaults: &EbsDefaults,
) -> Result<Options, BackendError> {
    let changes = normalize(EBS_SPECS, raw).map_err(|e| match e {
        BackendError::UnknownOption { key, .. } => BackendError::UnknownOption {
            key,
            accepted: "volumeType, iops, throughput (the size changes with resize)".into(),
        },
        other => other,
    })?;
    if changes.is_empty() {
        return Err(BackendError::invalid("nothing to change: give a volume type, IOPS or throughput"));
    }
    if let Some((key, value)) = changes.iter().find(|(k, _)| !MODIFIABLE.contains(&k.as_str())) {
        return Err(BackendError::InvalidOption {
            key: key.clone(),
            value: value.clone(),
            reason: "only volumeType, iops and throughput change in place (the size changes with resize)".into(),
        });
    }
    let mut target = opts.clone();
    if let Some(new_type) = changes.get("volumeType") {
        if iops_range(new_type).is_none() {
            target.remove("iops");
        }
        if new_type != "gp3" {
            target.remove("throughput");
        }
        if matches!(new_type.as_str(), "io1" | "io2") && !changes.contains_key("iops") && !target.contains_key("iops") {
            return Err(BackendError::InvalidOption {
                key: "iops".into(),
                value: String::new(),
                reason: format!("volume type {new_type} needs iops (e.g. --iops 3000)"),
            });
        }
    }
    target.extend(changes);
    EbsOptions::from_options(&target, defaults)?;
    Ok(target)
}

/// Modifications this daemon started or saw, by volume ID, with when they were last asked for.
#[derive(Debug, Default)]
pub(super) struct Modifications(Mutex<HashMap<String, (VolumeModification, Instant)>>);

impl Modifications {
    fn note(&self, m: VolumeModification) {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(m.volume_id.clone(), (m, Instant::now()));
    }

    /// The last known state of the modification of `volume_id`, and whether it is worth asking
    /// EC2 again (it still runs and was last asked for a while ago). Only one of concurrent
    /// callers is told to ask: the answer counts as asked for from then on.
    pub(super) fn seen(&self, volume_id: &str) -> Option<(VolumeModification, bool)> {
        let mut map = self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let (m, at) = map.get_mut(volume_id)?;
        let running = matches!(m.state, ModificationState::Modifying | ModificationState::Optimizing);
        let ask = running && at.elapsed() >= PROGRESS_EVERY;
        if ask {
            *at = Instant::now();
        }
        Some((m.clone(), ask))
    }
}

/// `modifying to gp3, 6000 IOPS, 500 MiB/s (12 %)`: what `docker volume inspect` shows.
pub(super) fn describe(m: &VolumeModification) -> String {
    let mut to = Vec::new();
    to.extend(m.target_type.clone());
    to.extend(m.target_iops.map(|i| format!("{i} IOPS")));
    to.extend(m.target_throughput.map(|t| format!("{t} MiB/s")));
    to.extend(m.target_size_gib.map(|s| format!("{s} GiB")));
    let mut text = format!("{} to {}", m.state.as_str(), to.join(", "));
    if let Some(p) = m.progress.filter(|_| m.state != ModificationState::Completed) {
        text.push_str(&format!(" ({p} %)"));
    }
    if let Some(why) = m.status_message.as_deref().filter(|s| !s.is_empty()) {
        text.push_str(&format!(": {why}"));
    }
    text
}

impl Core {
    /// Changes volume `name` to `target` (see [`crate::backend::Controller::modify`]).
    pub(super) async fn modify(&self, name: &VolumeName, target: &Options) -> Result<(), BackendError> {
        let want = EbsOptions::from_options(target, &self.defaults)?;
        let (ident, api) = self.connect().await?;
        let api = api.as_ref();
        let vol = self.require_one(api, &ident, name).await?;
        let id = vol.id.clone();
        let latest = self
            .retry
            .run("DescribeVolumesModifications", || api.describe_modification(&id))
            .await
            .map_err(|e| cloud_failed("modify", name, Some(&id), &e))?;
        let towards_want = |m: &VolumeModification| {
            m.target_type.as_deref() == Some(want.volume_type.as_str())
                && want.iops.is_none_or(|i| m.target_iops == Some(i))
                && want.throughput.is_none_or(|t| m.target_throughput == Some(t))
        };
        if let Some(m) = latest {
            let running = matches!(m.state, ModificationState::Modifying | ModificationState::Optimizing);
            if running && towards_want(&m) {
                tracing::info!(volume = %name, %id, "a modification to these settings is under way already");
                self.modifications.note(m);
                return Ok(());
            }
            if running {
                return Err(BackendError::InUse {
                    what: format!("volume {name} ({id})"),
                    holders: format!("a modification is under way: {}", describe(&m)),
                    hint: "wait until it completes (EBS allows one modification at a time)".into(),
                });
            }
        }
        let differs_type = vol.volume_type != want.volume_type;
        let req = ModifyVolumeRequest {
            volume_id: id.clone(),
            size_gib: None,
            volume_type: differs_type.then(|| want.volume_type.clone()),
            iops: want.iops.filter(|i| differs_type || vol.iops != Some(*i)),
            throughput: want.throughput.filter(|t| differs_type || vol.throughput != Some(*t)),
        };
        if req.volume_type.is_none() && req.iops.is_none() && req.throughput.is_none() {
            tracing::info!(volume = %name, %id, "the volume has these settings already");
            return Ok(());
        }
        match self.retry.run("ModifyVolume", || api.modify_volume(&req)).await {
            Ok(m) => {
                crate::crashpoint::hit("ModifyVolume sent");
                tracing::info!(volume = %name, %id, modification = %describe(&m), "modifying EBS volume");
                if matches!(m.state, ModificationState::Optimizing | ModificationState::Completed) {
                    let mut vol = vol;
                    vol.volume_type.clone_from(&want.volume_type);
                    vol.iops = m.target_iops.or(vol.iops);
                    vol.throughput = m.target_throughput.or(vol.throughput);
                    self.cache.update(name.as_str(), vol);
                }
                self.modifications.note(m);
                Ok(())
            }
            Err(e) => Err(modify_refused("modify", name, &id, &e)),
        }
    }

    /// Asks EC2 how far the modification of `volume_id` is, and remembers it; when it has
    /// completed, the volume's cached settings are refreshed too.
    pub(super) async fn refresh_modification(&self, volume_id: &str) {
        let Ok((_, api)) = self.connect().await else { return };
        match api.describe_modification(volume_id).await {
            Ok(Some(m)) => {
                // The new settings apply from `optimizing` on: refresh the cache once they do.
                let applies = |state: &ModificationState| {
                    matches!(state, ModificationState::Completed | ModificationState::Optimizing)
                };
                let before = self.modifications.seen(volume_id).map(|(old, _)| old.state);
                let now_applies = applies(&m.state) && !before.as_ref().is_some_and(applies);
                self.modifications.note(m);
                if now_applies {
                    let _ = self.refresh(true).await;
                }
            }
            Ok(None) => {}
            Err(e) => tracing::debug!(volume_id, error = %e, "could not ask how far a modification is"),
        }
    }
}
