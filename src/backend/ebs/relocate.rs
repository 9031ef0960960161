//! Moving a volume to another availability zone: EBS volumes attach only within their zone, so
//! the data travels as a snapshot.
//!
//! 1. **Plan** (no change): the volume answering to the name, attached nowhere; a move ID.
//! 2. **Snapshot** of it, tagged [`MOVE_TAG`] = the move ID in the CreateSnapshot call itself,
//!    and waited for until `completed`.
//! 3. **A new volume** in the zone from that snapshot, with the source's type, IOPS,
//!    throughput, encryption key and tags but **no Name**, tagged [`MOVE_TAG`] and
//!    [`MOVED_FROM_TAG`] (and a client token of the move ID), waited for until `available`.
//! 4. **The name leaves the source**: its Name becomes `<name>/moved-to-<new ID>` (a slash no
//!    Docker name has, so no host takes it for a volume) and [`MOVED_TO_TAG`] names the new
//!    volume, in one CreateTags. This is the point of no return.
//! 5. **The name comes to the new volume** (Name and ownership, one CreateTags); the snapshot is
//!    deleted; with `delete_source`, so is the source.
//!
//! Each step is found again from EC2 by the move ID and the source's ID, so a move interrupted
//! anywhere is finished by running it again. Between steps 4 and 5 no volume answers to the name
//! (the daemon's intent finishes it); at no time do two. A move that fails for good before step
//! 4 (the zone does not exist, the snapshot failed, the new volume vanished) is undone: what it
//! made is deleted and the volume stays where it was. One that ran out of time is left as it is
//! (EC2 goes on) for the next run to finish.

use std::collections::BTreeMap;

use super::api::{
    CloudErrorKind, CreateVolumeRequest, Ec2Api, SnapshotQuery, SnapshotState, Volume, VolumeQuery, VolumeState,
};
use super::core::Core;
use super::errors::{attached_elsewhere, cloud_error, cloud_failed};
use super::naming::{client_token, OWNER_TAG, OWNER_VALUE};
use super::options::{iops_range, is_zone};
use super::snapshots::{snapshot_schedule, SNAPSHOT_VOLUME_TAG};
use super::wait::{Poll, WaitError};
use crate::backend::{BackendError, Moved, Relocation};
use crate::name::VolumeName;

/// The tag on a move's snapshot and new volume: the move's ID.
pub const MOVE_TAG: &str = "rexray-rs/move";
/// The tag on a moved volume: the volume ID it was copied from.
pub const MOVED_FROM_TAG: &str = "rexray-rs/movedFrom";
/// The tag on a volume the name left: the volume ID that answers to it now.
pub const MOVED_TO_TAG: &str = "rexray-rs/movedTo";
/// EC2's limit on a tag value.
const MAX_TAG_VALUE: usize = 255;

/// The Name a source gets once the name left it: `<name tag>/moved-to-<new ID>`, the name tag
/// cut short to keep within EC2's limit.
fn moved_name(name_tag: &str, new_id: &str) -> String {
    let suffix = format!("/moved-to-{new_id}");
    let keep = MAX_TAG_VALUE.saturating_sub(suffix.chars().count());
    let head: String = name_tag.chars().take(keep).collect();
    format!("{head}{suffix}")
}

/// Whether EC2 reports the volume as going or gone.
fn is_dead(v: &Volume) -> bool {
    matches!(v.state, VolumeState::Deleting | VolumeState::Deleted)
}

impl Core {
    /// Plans moving `name` to `zone` (see the module documentation).
    pub(super) async fn plan_move(&self, name: &VolumeName, zone: &str) -> Result<Relocation, BackendError> {
        if !is_zone(zone) {
            return Err(BackendError::InvalidOption {
                key: "zone".into(),
                value: zone.to_owned(),
                reason: "expected an availability zone such as us-east-1b".into(),
            });
        }
        let (ident, api) = self.connect().await?;
        let source = self.require_one(api.as_ref(), &ident, name).await?;
        if source.live_attachments().next().is_some() {
            return Err(attached_elsewhere(name, &source, "stop its containers (or unmount it) before moving it"));
        }
        if !source.state.is_ready() {
            return Err(BackendError::InUse {
                what: format!("volume {name} ({})", source.id),
                holders: format!("EC2 reports it {}", source.state.as_str()),
                hint: "move it once it is available".into(),
            });
        }
        let started = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
        let id = client_token(&format!("move/{}/{zone}/{}", source.id, started.as_nanos()))[..20].to_owned();
        Ok(Relocation { zone: zone.to_owned(), source: source.id, id })
    }

    /// Carries out or finishes the move `plan` (see the module documentation).
    pub(super) async fn relocate(
        &self,
        name: &VolumeName,
        plan: &Relocation,
        delete_source: bool,
    ) -> Result<Moved, BackendError> {
        let (_, api) = self.connect().await?;
        let api = api.as_ref();
        let name_tag = self.naming.name_tag(name);
        let source = self.volume_by_id(api, name, &plan.source).await?;
        let copy = self.move_copy(api, name, plan).await?;
        let Some(source) = source else {
            // The source is gone (deleted by --delete-source, or by hand): the copy, if the move
            // made one, holds the data and takes the name.
            let Some(copy) = copy else {
                // Nothing to finish or undo: the intent ends (a remove of the name then works).
                return Ok(Moved::Undone(BackendError::not_found(format!(
                    "volume {name}'s EBS volume {} is gone, and the move made no copy of it in {}",
                    plan.source, plan.zone
                ))));
            };
            if copy.name_tag() != Some(name_tag.as_str()) {
                self.take_name(api, name, &copy).await?;
                self.delete_move_snapshots(api, name, plan).await;
            }
            return Ok(Moved::Done);
        };
        if copy.is_none() && source.availability_zone == plan.zone {
            // Nothing to copy: the volume is in the zone already (moved earlier, or made there).
            tracing::info!(volume = %name, id = %source.id, zone = %plan.zone, "volume is in the zone already");
            if let Some(earlier) = source.tags.get(MOVED_FROM_TAG).filter(|_| delete_source) {
                if let Err(e) = self.delete_moved_source(api, name, earlier, &source.id).await {
                    return Ok(Moved::SourceKept(e));
                }
            }
            return Ok(Moved::Done);
        }
        let copy = match (source.tags.get(MOVED_TO_TAG).filter(|to| !to.is_empty()), copy) {
            (None, copy) => {
                let made = async {
                    let copy = self.copy_to_zone(api, name, plan, &source, copy).await?;
                    self.hand_over_name(api, name, &source, &copy).await?;
                    Ok::<_, BackendError>(copy)
                };
                match made.await {
                    Ok(copy) => copy,
                    Err(e) if e.is_transient() => return Err(e),
                    Err(e) => {
                        self.undo_move(api, name, plan).await;
                        return Ok(Moved::Undone(e));
                    }
                }
            }
            (Some(_), Some(copy)) => copy,
            (Some(to), None) => {
                // The copy is gone (deleted by hand) before it took the name: the name goes back.
                self.give_back_name(api, name, &source).await?;
                self.delete_move_snapshots(api, name, plan).await;
                return Ok(Moved::Undone(BackendError::not_found(format!(
                    "volume {name}: its copy {to} in {} is gone, so the name went back to {} in {}",
                    plan.zone, source.id, source.availability_zone
                ))));
            }
        };
        self.take_name(api, name, &copy).await?;
        crate::crashpoint::hit("name moved to the new volume");
        self.delete_move_snapshots(api, name, plan).await;
        tracing::info!(volume = %name, from = %source.id, to = %copy.id, zone = %plan.zone, "moved EBS volume");
        if delete_source {
            if let Err(e) = self.delete_moved_source(api, name, &source.id, &copy.id).await {
                return Ok(Moved::SourceKept(e));
            }
        }
        Ok(Moved::Done)
    }

    /// Volume `id`, or `None` when EC2 does not know it (or it is being deleted).
    async fn volume_by_id(
        &self,
        api: &dyn Ec2Api,
        name: &VolumeName,
        id: &str,
    ) -> Result<Option<Volume>, BackendError> {
        match self.describe_all(api, VolumeQuery::by_id(id)).await {
            Ok(found) => Ok(found.into_iter().find(|v| v.id == id && !is_dead(v))),
            Err(e) if e.kind == CloudErrorKind::NotFound => Ok(None),
            Err(e) => Err(cloud_failed("look up", name, Some(id), &e)),
        }
    }

    /// The new volume the move made, if it made one yet.
    async fn move_copy(
        &self,
        api: &dyn Ec2Api,
        name: &VolumeName,
        plan: &Relocation,
    ) -> Result<Option<Volume>, BackendError> {
        let query = VolumeQuery::filtered(vec![(format!("tag:{MOVE_TAG}"), vec![plan.id.clone()])]);
        let found =
            self.describe_all(api, query).await.map_err(|e| cloud_failed("look up the copy of", name, None, &e))?;
        let mut live: Vec<Volume> = found.into_iter().filter(|v| !is_dead(v)).collect();
        live.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(live.into_iter().next())
    }

    /// Steps 2 and 3: the snapshot and the new volume (either found, else made), both waited for.
    async fn copy_to_zone(
        &self,
        api: &dyn Ec2Api,
        name: &VolumeName,
        plan: &Relocation,
        source: &Volume,
        copy: Option<Volume>,
    ) -> Result<Volume, BackendError> {
        if let Some(copy) = copy {
            return self.wait_copy(name, &copy.id).await;
        }
        if source.live_attachments().next().is_some() {
            return Err(attached_elsewhere(
                name,
                source,
                "the move was given up; stop its containers and move it again",
            ));
        }
        let snapshot = self.move_snapshot(api, name, plan, source).await?;
        let mut tags: BTreeMap<String, String> = source
            .tags
            .iter()
            .filter(|(k, _)| !k.starts_with("aws:") && k.as_str() != "Name" && k.as_str() != MOVED_FROM_TAG)
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        tags.insert(MOVE_TAG.into(), plan.id.clone());
        tags.insert(MOVED_FROM_TAG.into(), source.id.clone());
        let req = CreateVolumeRequest {
            size_gib: Some(source.size_gib),
            availability_zone: plan.zone.clone(),
            volume_type: source.volume_type.clone(),
            iops: source.iops.filter(|_| iops_range(&source.volume_type).is_some()),
            throughput: source.throughput.filter(|_| source.volume_type == "gp3"),
            encrypted: source.encrypted,
            kms_key_id: source.kms_key_id.clone(),
            snapshot_id: Some(snapshot),
            tags,
            client_token: client_token(&format!("move/{}", plan.id)),
        };
        let created =
            self.retry.run("CreateVolume", || api.create_volume(&req)).await.map_err(|e| {
                cloud_failed(&format!("create the copy in {} of", plan.zone), name, Some(&source.id), &e)
            })?;
        crate::crashpoint::hit("move CreateVolume sent");
        tracing::info!(volume = %name, from = %source.id, copy = %created.id, zone = %plan.zone, "creating the moved copy");
        self.wait_copy(name, &created.id).await
    }

    /// Waits until the new volume `id` is available.
    async fn wait_copy(&self, name: &VolumeName, id: &str) -> Result<Volume, BackendError> {
        match self.wait_created(name, id).await {
            Ok(v) => Ok(v),
            Err(super::create::CreateWait::Vanished(state)) => Err(Self::vanished(name, id, &state, None)),
            Err(super::create::CreateWait::Failed(e)) => Err(e),
        }
    }

    /// Step 2: the move's snapshot (found, else made), once it is complete.
    async fn move_snapshot(
        &self,
        api: &dyn Ec2Api,
        name: &VolumeName,
        plan: &Relocation,
        source: &Volume,
    ) -> Result<String, BackendError> {
        let snapshot_failed = |e: &super::api::CloudError| {
            cloud_error(format!("snapshot volume {name} ({}) to move it", source.id), e, "")
        };
        let found = self.move_snapshots(api, plan).await.map_err(|e| snapshot_failed(&e))?;
        let id = match found.into_iter().next() {
            Some(s) => s.id,
            None => {
                let request = super::api::CreateSnapshotRequest {
                    volume_id: source.id.clone(),
                    description: format!("rexray move of volume {name} ({}) to {}", source.id, plan.zone),
                    tags: BTreeMap::from([
                        ("Name".to_owned(), self.naming.name_tag(format!("{name}/move-to-{}", plan.zone))),
                        (OWNER_TAG.to_owned(), OWNER_VALUE.to_owned()),
                        (SNAPSHOT_VOLUME_TAG.to_owned(), name.to_string()),
                        (MOVE_TAG.to_owned(), plan.id.clone()),
                    ]),
                };
                // No idempotency token: only throttling is retried (a blind retry could make two).
                let made = self
                    .retry
                    .run_once("CreateSnapshot", || api.create_snapshot(&request))
                    .await
                    .map_err(|e| snapshot_failed(&e))?;
                crate::crashpoint::hit("move CreateSnapshot sent");
                tracing::info!(volume = %name, id = %source.id, snapshot = %made.id, "snapshotting the volume to move it");
                made.id
            }
        };
        crate::progress::waiting_for(format!("snapshot {id} of volume {name} to complete"));
        let result = snapshot_schedule()
            .run(|| async {
                let query = SnapshotQuery { ids: vec![id.clone()], ..SnapshotQuery::default() };
                match self.retry.run("DescribeSnapshots", || api.describe_snapshots(&query)).await {
                    Ok(page) => match page.snapshots.into_iter().find(|s| s.id == id) {
                        Some(s) if s.state == SnapshotState::Completed => Ok(Poll::Ready(())),
                        Some(s) if s.state == SnapshotState::Error => Err(BackendError::Cloud {
                            op: format!("snapshot {id} of volume {name}"),
                            failure: crate::backend::CloudFailure::Refused,
                            code: "error".into(),
                            message: "EC2 reports the snapshot failed".into(),
                            hint: "; the move was given up",
                        }),
                        Some(s) => Ok(Poll::Pending(
                            s.progress
                                .map_or_else(|| s.state.as_str().to_owned(), |p| format!("{} ({p})", s.state.as_str())),
                        )),
                        None => Err(BackendError::not_found(format!("snapshot {id} of volume {name} vanished"))),
                    },
                    Err(e) if e.kind == CloudErrorKind::NotFound => {
                        Err(BackendError::not_found(format!("snapshot {id} of volume {name} vanished")))
                    }
                    Err(e) => Err(snapshot_failed(&e)),
                }
            })
            .await;
        match result {
            Ok(()) => Ok(id),
            Err(WaitError::Failed(e)) => Err(e),
            Err(WaitError::TimedOut { last, attempts, elapsed, cut }) => Err(BackendError::Timeout {
                op: format!("snapshot {id} of volume {name}"),
                elapsed,
                last_seen: last,
                hint: format!(
                    " ({attempts} polls){cut}; the move goes on: run the same `rexray volume move` again to finish it"
                ),
            }),
        }
    }

    /// This move's snapshots.
    async fn move_snapshots(
        &self,
        api: &dyn Ec2Api,
        plan: &Relocation,
    ) -> Result<Vec<super::api::Snapshot>, super::api::CloudError> {
        let query = SnapshotQuery {
            owners: vec!["self".into()],
            filters: vec![(format!("tag:{MOVE_TAG}"), vec![plan.id.clone()])],
            ..SnapshotQuery::default()
        };
        self.describe_snapshots_all(api, query).await
    }

    /// Step 4: the source lets go of the name (one CreateTags).
    async fn hand_over_name(
        &self,
        api: &dyn Ec2Api,
        name: &VolumeName,
        source: &Volume,
        copy: &Volume,
    ) -> Result<(), BackendError> {
        let tags = BTreeMap::from([
            ("Name".to_owned(), moved_name(&self.naming.name_tag(name), &copy.id)),
            (MOVED_TO_TAG.to_owned(), copy.id.clone()),
        ]);
        self.retry
            .run("CreateTags", || api.create_tags(&source.id, &tags))
            .await
            .map_err(|e| cloud_failed("rename the old EBS volume of", name, Some(&source.id), &e))?;
        crate::crashpoint::hit("name left the old volume");
        self.cache.forget(name.as_str(), &source.id);
        Ok(())
    }

    /// Undoes step 4: the source answers to the name again (its [`MOVED_TO_TAG`] emptied).
    async fn give_back_name(&self, api: &dyn Ec2Api, name: &VolumeName, source: &Volume) -> Result<(), BackendError> {
        let tags =
            BTreeMap::from([("Name".to_owned(), self.naming.name_tag(name)), (MOVED_TO_TAG.to_owned(), String::new())]);
        self.retry
            .run("CreateTags", || api.create_tags(&source.id, &tags))
            .await
            .map_err(|e| cloud_failed("give the name back to the old EBS volume of", name, Some(&source.id), &e))?;
        tracing::warn!(volume = %name, id = %source.id, "the moved copy is gone; the name is back on the old volume");
        let mut source = source.clone();
        source.tags.extend(tags);
        self.cache.put(name.as_str(), vec![source]);
        Ok(())
    }

    /// Step 5: the new volume takes the name.
    async fn take_name(&self, api: &dyn Ec2Api, name: &VolumeName, copy: &Volume) -> Result<(), BackendError> {
        let name_tag = self.naming.name_tag(name);
        let mut copy = copy.clone();
        // A volume made under the name by another host while no volume answered to it keeps
        // it: two never answer to one name.
        let others: Vec<Volume> = self.lookup(api, name).await?.into_iter().filter(|v| v.id != copy.id).collect();
        if let Some(other) = others.first() {
            return Err(BackendError::AlreadyExists {
                what: format!(
                    "volume {name}: EBS volume {} took the name while {} was being moved to it",
                    other.id, copy.id
                ),
                mismatch: format!("the moved data is in {}; remove one of them, then run the move again", copy.id),
            });
        }
        if copy.name_tag() != Some(name_tag.as_str())
            || copy.tags.get(OWNER_TAG).map(String::as_str) != Some(OWNER_VALUE)
        {
            let tags = BTreeMap::from([("Name".to_owned(), name_tag), (OWNER_TAG.to_owned(), OWNER_VALUE.to_owned())]);
            self.retry
                .run("CreateTags", || api.create_tags(&copy.id, &tags))
                .await
                .map_err(|e| cloud_failed("name the moved copy of", name, Some(&copy.id), &e))?;
            copy.tags.extend(tags);
        }
        self.cache.put(name.as_str(), vec![copy]);
        Ok(())
    }

    /// Deletes this move's snapshots (they served their purpose); failures are only logged.
    async fn delete_move_snapshots(&self, api: &dyn Ec2Api, name: &VolumeName, plan: &Relocation) {
        let found = match self.move_snapshots(api, plan).await {
            Ok(found) => found,
            Err(e) => {
                tracing::warn!(volume = %name, error = %e, "could not look for the move's snapshot to delete it");
                return;
            }
        };
        for s in found {
            match self.retry.run("DeleteSnapshot", || api.delete_snapshot(&s.id)).await {
                Ok(()) => tracing::debug!(volume = %name, snapshot = %s.id, "deleted the move's snapshot"),
                Err(e) if e.kind == CloudErrorKind::NotFound => {}
                Err(e) => {
                    tracing::warn!(volume = %name, snapshot = %s.id, error = %e, "could not delete the move's snapshot; delete it by hand");
                }
            }
        }
    }

    /// Deletes `old`, the volume `name` moved away from to `new`: only if EC2 says so of it
    /// and it is attached nowhere.
    async fn delete_moved_source(
        &self,
        api: &dyn Ec2Api,
        name: &VolumeName,
        old: &str,
        new: &str,
    ) -> Result<(), BackendError> {
        let Some(source) = self.volume_by_id(api, name, old).await? else {
            return Ok(());
        };
        if source.tags.get(MOVED_TO_TAG).map(String::as_str) != Some(new) || new.is_empty() {
            return Err(BackendError::invalid(format!(
                "volume {name}: EBS volume {old} is not marked as moved to {new}; it is left alone"
            )));
        }
        if source.live_attachments().next().is_some() {
            return Err(attached_elsewhere(name, &source, "the old volume is attached; detach it before deleting it"));
        }
        match self.retry.run("DeleteVolume", || api.delete_volume(old)).await {
            Ok(()) => {
                tracing::info!(volume = %name, id = %old, "deleted the volume's old EBS volume");
                Ok(())
            }
            Err(e) if e.kind == CloudErrorKind::NotFound => Ok(()),
            Err(e) => Err(cloud_failed("delete the old EBS volume of", name, Some(old), &e)),
        }
    }

    /// Undoes a move that failed before the name moved: deletes its copy (never one that
    /// answers to a name) and its snapshots. Failures are only logged, with what is left.
    async fn undo_move(&self, api: &dyn Ec2Api, name: &VolumeName, plan: &Relocation) {
        crate::deadline::rollback(async {
            match self.move_copy(api, name, plan).await {
                Ok(Some(copy)) if copy.name_tag().is_none() => {
                    match self.retry.run("DeleteVolume", || api.delete_volume(&copy.id)).await {
                        Ok(()) => tracing::info!(volume = %name, copy = %copy.id, "deleted the copy of a move that failed"),
                        Err(e) if e.kind == CloudErrorKind::NotFound => {}
                        Err(e) => tracing::warn!(volume = %name, copy = %copy.id, error = %e, "could not delete the copy of a move that failed; delete it by hand"),
                    }
                }
                Ok(_) => {}
                Err(e) => tracing::warn!(volume = %name, error = %e, "could not look for the copy of a move that failed"),
            }
            self.delete_move_snapshots(api, name, plan).await;
        })
        .await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_moved_name_is_no_docker_name_and_fits_ec2() {
        assert_eq!(moved_name("db", "vol-1"), "db/moved-to-vol-1");
        let long = "x".repeat(255);
        let moved = moved_name(&long, "vol-0123456789abcdef0");
        assert_eq!(moved.chars().count(), 255);
        assert!(moved.ends_with("/moved-to-vol-0123456789abcdef0"));
    }
}
