//! The operations a container orchestrator asks for through the CSI front: the controller
//! half (create with a size, publish to a node, unpublish) and the node half (stage at the
//! orchestrator's staging path, publish to its target paths, and back), each under the volume's
//! lock shared with the Docker front.
//!
//! A volume is used by one front at a time: these refuse a volume the Docker front holds on
//! this host, and the Docker front refuses one with an orchestrator's claims
//! ([`OrchestratorClaims`]). Each claim is made durable before its side effect and dropped after
//! the undo, so a crash between the two leaves a claim the orchestrator's retry completes (every
//! step is idempotent) or its undo drops — never a device attached or mounted with no claim.
//!
//! A daemon that did not create the volume (EBS: a node, whose controller runs elsewhere, or a
//! controller moved to another host) adopts it at the first call: a record with the backend's
//! default options, which the publish context's fixed options (file system type, owner)
//! override on the node.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use tracing::{debug, info, warn};

use super::state::{OrchestratorClaims, VolumeRecord};
use super::{now_rfc3339, Cause, ServiceError, VolumeService};
use crate::backend::{NodeId, PublishContext, Scope, VolumeStats, BLOCK_FILE};
use crate::crashpoint::hit;
use crate::name::{excerpt, VolumeName};

/// What a node reports of a volume where it is staged or published.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeStats {
    /// Its usage.
    pub usage: Usage,
    /// Why it is not healthy there, if it is not (nothing is mounted there any more).
    pub abnormal: Option<String>,
}

/// The usage of a volume where a node hands it out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Usage {
    /// A file system's space and inodes.
    FileSystem(VolumeStats),
    /// A raw block volume's size in bytes.
    Block {
        /// Its size.
        bytes: u64,
    },
}

/// How a node uses a staged volume, from the orchestrator's volume capability.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StageRequest {
    /// The file system type asked for (`""`: the volume's own).
    pub fs_type: String,
    /// Extra mount options.
    pub mount_flags: Vec<String>,
    /// Raw block access: the device itself is handed out, with no file system on it.
    pub block: bool,
}

impl VolumeService {
    /// Creates volume `raw_name` with `opts` (Docker's spelling, `size` in GiB) for an
    /// orchestrator, or returns the existing one when every option asked for matches it.
    ///
    /// # Errors
    /// [`Cause::Mismatch`] naming the option a volume of that name has otherwise, an invalid
    /// name or option, or the backend's failure.
    pub async fn create_for_orchestrator(
        self: &Arc<Self>,
        raw_name: &str,
        opts: &BTreeMap<String, String>,
    ) -> Result<VolumeRecord, ServiceError> {
        const OP: &str = "CreateVolume";
        debug!(volume = %excerpt(raw_name), ?opts, "csi create");
        let name = Self::validate(OP, raw_name)?;
        let opts = opts.clone();
        self.detached(OP, raw_name, move |s| async move {
            let _guard = s.lock(OP, &name).await?;
            let wanted = s.backend.controller.parse_options(&opts).map_err(s.backend_err(OP, &name))?;
            if let Some(existing) = s.settle(OP, &name).await? {
                s.check_backend(OP, &existing)?;
                return match first_difference(&opts, &wanted, &existing) {
                    None => Ok(existing),
                    Some(what) => Err(ServiceError::new(OP, name.as_str(), Cause::Mismatch { what })),
                };
            }
            if s.settings.create_disable {
                return Err(ServiceError::new(
                    OP,
                    name.as_str(),
                    Cause::from_backend(
                        s.backend.kind(),
                        crate::backend::BackendError::invalid("creating volumes is disabled by configuration"),
                    ),
                ));
            }
            s.create_locked(OP, &name, wanted).await
        })
        .await
    }

    /// The record of `raw_name` (settled), for the orchestrator's reads.
    ///
    /// # Errors
    /// [`Cause::NotFound`] or an invalid name.
    pub async fn record_of(&self, raw_name: &str) -> Result<VolumeRecord, ServiceError> {
        const OP: &str = "get";
        let name = Self::validate(OP, raw_name)?;
        self.record(&name).filter(VolumeRecord::exists).ok_or_else(|| ServiceError::new(OP, raw_name, Cause::NotFound))
    }

    /// Every volume record at rest, sorted by name (the orchestrator's ListVolumes).
    pub fn records(&self) -> Vec<Arc<VolumeRecord>> {
        self.volumes.read().expect("volume map poisoned").values().filter(|r| r.exists()).cloned().collect()
    }

    /// Publishes volume `raw_name` to `node` and returns what the node needs to find it.
    /// Idempotent.
    ///
    /// # Errors
    /// [`Cause::NotFound`]; [`Cause::InUse`] while the Docker front holds it here; the
    /// backend's refusal (attached elsewhere, wrong zone, …) or failure.
    pub async fn publish_to_node(self: &Arc<Self>, raw_name: &str, node: &str) -> Result<PublishContext, ServiceError> {
        const OP: &str = "ControllerPublishVolume";
        let name = Self::validate(OP, raw_name)?;
        let node = NodeId(node.to_owned());
        self.detached(OP, raw_name, move |s| async move {
            let _guard = s.lock(OP, &name).await?;
            let mut record = s.adopted_record(OP, &name).await?;
            s.refuse_docker_held(OP, &record)?;
            if let Some(ctx) = record.csi.nodes.get(&node.0).filter(|c| !c.entries().is_empty()) {
                debug!(volume = %name, %node, "published to the node already");
                return Ok(ctx.clone());
            }
            let claimed = record.csi.nodes.insert(node.0.clone(), PublishContext::new()).is_none();
            s.commit(OP, record.clone()).await?;
            hit("publish claimed");
            match s.backend.controller.publish(&name, &record.options, &node).await {
                Ok(ctx) => {
                    hit("published");
                    record.csi.nodes.insert(node.0.clone(), ctx.clone());
                    s.commit(OP, record).await?;
                    info!(volume = %name, %node, "published to node");
                    Ok(ctx)
                }
                Err(e) => {
                    if claimed {
                        record.csi.nodes.remove(&node.0);
                        s.commit_logged(OP, record).await;
                    }
                    Err(s.backend_err(OP, &name)(e))
                }
            }
        })
        .await
    }

    /// Undoes [`VolumeService::publish_to_node`]. Idempotent: an unknown volume, or one not
    /// published there, is success. A volume still staged on this host when it is this host's
    /// turn to let go (Docker Swarm unpublishes from a node without unstaging first) is
    /// unstaged first: its file system is flushed and unmounted before its device goes away.
    ///
    /// # Errors
    /// [`Cause::InUse`] while it is still published to a target on this host, or the backend's
    /// failure (the claim stays, for the retry).
    pub async fn unpublish_from_node(self: &Arc<Self>, raw_name: &str, node: &str) -> Result<(), ServiceError> {
        const OP: &str = "ControllerUnpublishVolume";
        let name = Self::validate(OP, raw_name)?;
        let node = NodeId(node.to_owned());
        self.detached(OP, raw_name, move |s| async move {
            let _guard = s.lock(OP, &name).await?;
            // A volume of a global backend with no record here (made by a controller that ran
            // elsewhere) is still attached in the storage: adopted, so it is detached.
            let mut record = match s.adopted_record(OP, &name).await {
                Ok(record) => record,
                Err(e) if e.is_not_found() => {
                    debug!(volume = %name, "unpublish of an unknown volume");
                    return Ok(());
                }
                Err(e) => return Err(e),
            };
            if record.active && !record.csi.nodes.contains_key(&node.0) {
                // The Docker front holds it here: not the orchestrator's to undo.
                return Ok(());
            }
            s.unstage_before_detach(OP, &name, &mut record, &node).await?;
            s.backend.controller.unpublish(&name, &record.options, &node).await.map_err(s.backend_err(OP, &name))?;
            hit("unpublished");
            if record.csi.nodes.remove(&node.0).is_some() {
                s.commit(OP, record).await?;
                info!(volume = %name, %node, "unpublished from node");
            }
            Ok(())
        })
        .await
    }

    /// Unstages `record`'s volume from its staging path on this host before `node`, this host,
    /// lets go of it; nothing when it is not staged here or `node` is another host.
    async fn unstage_before_detach(
        &self,
        op: &'static str,
        name: &VolumeName,
        record: &mut VolumeRecord,
        node: &NodeId,
    ) -> Result<(), ServiceError> {
        let Some(staging) = record.csi.staged.clone() else { return Ok(()) };
        let here = self.backend.controller.local_node().await.map_err(self.backend_err(op, name))?;
        if here != *node {
            return Ok(());
        }
        if !record.csi.targets.is_empty() {
            let holders = record.csi.targets.len() as u64;
            return Err(ServiceError::new(op, name.as_str(), Cause::InUse { holders }));
        }
        self.unstage_as_staged(name, &staging, record.csi.block).await.map_err(self.backend_err(op, name))?;
        hit("unstaged before detach");
        record.csi.staged = None;
        record.csi.block = false;
        self.commit(op, record.clone()).await?;
        info!(volume = %name, staging = %staging.display(), "unstaged before the node lets go of it");
        Ok(())
    }

    /// Undoes the node's stage at `staging`, for raw block access or a file system.
    async fn unstage_as_staged(
        &self,
        name: &VolumeName,
        staging: &Path,
        block: bool,
    ) -> Result<(), crate::backend::BackendError> {
        if block {
            self.backend.node.unstage_block(name, staging).await
        } else {
            self.backend.node.unstage(name, staging).await
        }
    }

    /// Stages volume `raw_name` at `staging` on this host from the controller's `ctx`: finds
    /// its device, formats it only if blank, mounts it. Idempotent for the same path.
    ///
    /// # Errors
    /// [`Cause::NotFound`]; [`Cause::InUse`] while the Docker front holds it here or it is
    /// staged at another path; the backend's failure (what the call did is undone).
    pub async fn stage_on_node(
        self: &Arc<Self>,
        raw_name: &str,
        ctx: PublishContext,
        staging: PathBuf,
        how: StageRequest,
    ) -> Result<(), ServiceError> {
        const OP: &str = "NodeStageVolume";
        let name = Self::validate(OP, raw_name)?;
        self.detached(OP, raw_name, move |s| async move {
            let _guard = s.lock(OP, &name).await?;
            let mut record = s.adopted_record(OP, &name).await?;
            s.refuse_docker_held(OP, &record)?;
            match &record.csi.staged {
                Some(path) if *path == staging && record.csi.block != how.block => {
                    return Err(ServiceError::new(
                        OP,
                        name.as_str(),
                        Cause::Mismatch {
                            what: format!("it is staged at {} {}", path.display(), access(record.csi.block)),
                        },
                    ))
                }
                Some(path) if *path == staging => {}
                Some(other) => {
                    return Err(ServiceError::new(
                        OP,
                        name.as_str(),
                        Cause::StagedElsewhere { path: other.display().to_string() },
                    ))
                }
                None => {
                    record.csi.staged = Some(staging.clone());
                    record.csi.block = how.block;
                    s.commit(OP, record.clone()).await?;
                    hit("stage claimed");
                }
            }
            let staged = if how.block {
                s.backend.node.stage_block(&name, &ctx, &staging).await
            } else {
                s.backend.node.stage(&name, &stage_options(&record, &how), &ctx, &staging).await
            };
            if let Err(e) = staged {
                if record.csi.targets.is_empty() {
                    record.csi.staged = None;
                    record.csi.block = false;
                    s.commit_logged(OP, record).await;
                }
                return Err(s.backend_err(OP, &name)(e));
            }
            hit("staged");
            record.last_used = Some(now_rfc3339());
            s.commit(OP, record).await?;
            info!(volume = %name, staging = %staging.display(), "staged");
            Ok(())
        })
        .await
    }

    /// Undoes [`VolumeService::stage_on_node`] at `staging`. Idempotent.
    ///
    /// # Errors
    /// [`Cause::InUse`] while it is still published to a target, or the backend's failure.
    pub async fn unstage_on_node(self: &Arc<Self>, raw_name: &str, staging: PathBuf) -> Result<(), ServiceError> {
        const OP: &str = "NodeUnstageVolume";
        let name = Self::validate(OP, raw_name)?;
        self.detached(OP, raw_name, move |s| async move {
            let _guard = s.lock(OP, &name).await?;
            let record = s.settle(OP, &name).await?;
            if let Some(record) = &record {
                if !record.csi.targets.is_empty() && record.csi.staged.as_deref() == Some(staging.as_path()) {
                    let holders = record.csi.targets.len() as u64;
                    return Err(ServiceError::new(OP, name.as_str(), Cause::InUse { holders }));
                }
                if record.active && record.csi.staged.is_none() {
                    return Ok(());
                }
            }
            let block =
                record.as_ref().is_some_and(|r| r.csi.block && r.csi.staged.as_deref() == Some(staging.as_path()));
            s.unstage_as_staged(&name, &staging, block).await.map_err(s.backend_err(OP, &name))?;
            hit("unstaged");
            if let Some(mut record) = record.filter(|r| r.csi.staged.as_deref() == Some(staging.as_path())) {
                record.csi.staged = None;
                record.csi.block = false;
                record.last_used = Some(now_rfc3339());
                s.commit(OP, record).await?;
                info!(volume = %name, staging = %staging.display(), "unstaged");
            }
            Ok(())
        })
        .await
    }

    /// Bind-mounts the volume staged at `staging` on `target` (read-only if asked; `block`:
    /// its device, on a file). Idempotent.
    ///
    /// # Errors
    /// [`Cause::NotFound`]; [`Cause::NotStaged`] when it is not staged at `staging`;
    /// [`Cause::Mismatch`] when it is staged or published there otherwise; the backend's
    /// failure.
    pub async fn publish_on_node(
        self: &Arc<Self>,
        raw_name: &str,
        staging: PathBuf,
        target: PathBuf,
        read_only: bool,
        block: bool,
    ) -> Result<(), ServiceError> {
        const OP: &str = "NodePublishVolume";
        let name = Self::validate(OP, raw_name)?;
        self.detached(OP, raw_name, move |s| async move {
            let _guard = s.lock(OP, &name).await?;
            let mut record = s.adopted_record(OP, &name).await?;
            if record.csi.staged.as_deref() != Some(staging.as_path()) {
                return Err(ServiceError::new(
                    OP,
                    name.as_str(),
                    Cause::NotStaged { path: staging.display().to_string() },
                ));
            }
            if record.csi.block != block {
                return Err(ServiceError::new(
                    OP,
                    name.as_str(),
                    Cause::Mismatch {
                        what: format!("it is staged at {} {}", staging.display(), access(record.csi.block)),
                    },
                ));
            }
            let claimed = !record.csi.targets.contains_key(&target);
            if let Some(was) = record.csi.targets.get(&target) {
                if *was != read_only {
                    return Err(ServiceError::new(
                        OP,
                        name.as_str(),
                        Cause::Mismatch { what: format!("it is published at {} {}", target.display(), rw(*was)) },
                    ));
                }
            } else {
                record.csi.targets.insert(target.clone(), read_only);
                s.commit(OP, record.clone()).await?;
                hit("target claimed");
            }
            let published = if block {
                s.backend.node.publish_block(&name, &staging, &target, read_only).await
            } else {
                s.backend.node.publish(&name, &record.options, &staging, Some(&target), read_only).await.map(drop)
            };
            if let Err(e) = published {
                if claimed {
                    record.csi.targets.remove(&target);
                    s.commit_logged(OP, record).await;
                }
                return Err(s.backend_err(OP, &name)(e));
            }
            hit("published at target");
            info!(volume = %name, target = %target.display(), read_only, "published at target");
            Ok(())
        })
        .await
    }

    /// Undoes [`VolumeService::publish_on_node`] at `target`. Idempotent.
    ///
    /// # Errors
    /// The backend's failure (the claim stays, for the retry).
    pub async fn unpublish_on_node(self: &Arc<Self>, raw_name: &str, target: PathBuf) -> Result<(), ServiceError> {
        const OP: &str = "NodeUnpublishVolume";
        let name = Self::validate(OP, raw_name)?;
        self.detached(OP, raw_name, move |s| async move {
            let _guard = s.lock(OP, &name).await?;
            let record = s.settle(OP, &name).await?;
            s.backend.node.unpublish(&name, &target).await.map_err(s.backend_err(OP, &name))?;
            hit("unpublished from target");
            if let Some(mut record) = record.filter(|r| r.csi.targets.contains_key(&target)) {
                record.csi.targets.remove(&target);
                s.commit(OP, record).await?;
                info!(volume = %name, target = %target.display(), "unpublished from target");
            }
            Ok(())
        })
        .await
    }

    /// The usage of volume `raw_name` at `path`, where the orchestrator staged or published it
    /// (a file system's space and inodes, or a raw block volume's size), and whether it is
    /// still there.
    ///
    /// # Errors
    /// [`Cause::NotFound`] for an unknown volume or a path it is not at, or the backend's failure.
    pub async fn stats_on_node(&self, raw_name: &str, path: &Path) -> Result<NodeStats, ServiceError> {
        const OP: &str = "NodeGetVolumeStats";
        let name = Self::validate(OP, raw_name)?;
        let Some(record) = self.record(&name).filter(|r| {
            r.exists() && (r.csi.staged.as_deref() == Some(path) || r.csi.targets.contains_key(path) || r.active)
        }) else {
            return Err(ServiceError::new(OP, name.as_str(), Cause::NotFound));
        };
        let node = &self.backend.node;
        // A raw block volume's staging directory holds the file its device is bound on.
        let at = if record.csi.block && record.csi.staged.as_deref() == Some(path) {
            path.join(BLOCK_FILE)
        } else {
            path.to_path_buf()
        };
        let there = node.is_staged(&name, &at).await.map_err(self.backend_err(OP, &name))?;
        let abnormal = (!there).then(|| {
            format!("volume {name} is no longer mounted at {}: it was unmounted behind the plugin's back", at.display())
        });
        let usage = if record.csi.block && there {
            Usage::Block { bytes: node.block_size(&at).await.map_err(self.backend_err(OP, &name))? }
        } else {
            Usage::FileSystem(node.stats(path).await.map_err(self.backend_err(OP, &name))?)
        };
        Ok(NodeStats { usage, abnormal })
    }

    /// Grows the file system of volume `raw_name` staged at `staging` to fill its device, once
    /// the device shows `size_gib` (the size the orchestrator says the controller grew it to;
    /// `None`: the device as it is). Returns the size in GiB when it is known (else 0).
    ///
    /// The node's record of a volume another host's controller made or grew does not know its
    /// size, so the orchestrator's word is what the device is waited for.
    ///
    /// # Errors
    /// [`Cause::NotFound`], [`Cause::NotStaged`], or the backend's failure.
    pub async fn expand_on_node(
        self: &Arc<Self>,
        raw_name: &str,
        staging: PathBuf,
        size_gib: Option<u64>,
    ) -> Result<u64, ServiceError> {
        const OP: &str = "NodeExpandVolume";
        let name = Self::validate(OP, raw_name)?;
        self.detached(OP, raw_name, move |s| async move {
            let _guard = s.lock(OP, &name).await?;
            let record = s.adopted_record(OP, &name).await?;
            if record.csi.staged.as_deref() != Some(staging.as_path()) {
                return Err(ServiceError::new(
                    OP,
                    name.as_str(),
                    Cause::NotStaged { path: staging.display().to_string() },
                ));
            }
            // A raw block volume has no file system to grow: its device is the volume.
            if !record.csi.block {
                let grown = s.backend.node.expand_fs(&name, &record.options, &staging, size_gib).await;
                grown.map_err(s.backend_err(OP, &name))?;
            }
            Ok(size_gib.unwrap_or(0))
        })
        .await
    }

    /// A snapshot named `name` of volume `raw_volume` for an orchestrator: the one this
    /// program made under that name already (found in the storage, so a repeat after a crash
    /// finds it too), else a new one.
    ///
    /// # Errors
    /// [`Cause::Mismatch`] when a snapshot of that name is of another volume, no snapshot
    /// support, no such volume, or the backend's failure.
    pub async fn snapshot_for_orchestrator(
        &self,
        raw_volume: &str,
        name: &str,
    ) -> Result<crate::backend::snapshot::SnapshotInfo, ServiceError> {
        const OP: &str = "CreateSnapshot";
        let named = crate::backend::snapshot::SnapshotFilter::Managed;
        let existing = self.snapshot_list(&named).await?.into_iter().find(|s| s.name.as_deref() == Some(name));
        if let Some(snapshot) = existing {
            return if snapshot.volume.as_deref() == Some(raw_volume) {
                Ok(snapshot)
            } else {
                let of = snapshot.volume.as_deref().unwrap_or(&snapshot.volume_id);
                Err(ServiceError::new(
                    OP,
                    raw_volume,
                    Cause::Mismatch { what: format!("snapshot {name} exists already, of volume {of}") },
                ))
            };
        }
        let req = crate::backend::snapshot::NewSnapshot { name: Some(name.to_owned()), description: None };
        self.snapshot_create(raw_volume, &req).await
    }

    /// The record an orchestrator's call works on: this host's, or for a volume of a global
    /// backend this host has no record of (made by a controller elsewhere, or by this one before
    /// it moved to another host), a new one with the default options, made durable.
    async fn adopted_record(&self, op: &'static str, name: &VolumeName) -> Result<VolumeRecord, ServiceError> {
        if let Some(record) = self.settle(op, name).await? {
            self.check_backend(op, &record)?;
            return Ok(record);
        }
        if self.scope() != Scope::Global || !self.backend.controller.knows(name).await {
            return Err(ServiceError::new(op, name.as_str(), Cause::NotFound));
        }
        let options = self.backend.controller.parse_options(&BTreeMap::new()).map_err(self.backend_err(op, name))?;
        let record = VolumeRecord {
            name: name.to_string(),
            backend: self.backend.kind().to_owned(),
            created_at: now_rfc3339(),
            options,
            holders: BTreeMap::new(),
            anonymous: false,
            active: false,
            pending: None,
            last_used: None,
            csi: OrchestratorClaims::default(),
        };
        self.commit(op, record.clone()).await?;
        info!(volume = %name, "adopted a volume made by another host's controller");
        Ok(record)
    }

    /// Refuses a volume the Docker front holds on this host.
    fn refuse_docker_held(&self, op: &'static str, record: &VolumeRecord) -> Result<(), ServiceError> {
        let holders = record.holder_count();
        if record.active || holders > 0 {
            return Err(ServiceError::new(op, &record.name, Cause::InUse { holders: holders.max(1) }));
        }
        Ok(())
    }

    /// Commits `record`, logging (not returning) a failure: for undoing a claim after the
    /// side effect failed, where the side effect's error is the one to report.
    async fn commit_logged(&self, op: &'static str, record: VolumeRecord) {
        let name = record.name.clone();
        if let Err(e) = self.commit(op, record).await {
            warn!(volume = %name, error = %e.chain(), "could not drop a claim; it stays until the orchestrator's undo");
        }
    }
}

/// The volume's options for staging as `how` asks: its mount flags added to the volume's own
/// mount options.
fn stage_options(record: &VolumeRecord, how: &StageRequest) -> crate::backend::Options {
    let mut opts = record.options.clone();
    if !how.mount_flags.is_empty() {
        let mut flags: Vec<String> = opts
            .get("mountOptions")
            .map(|o| o.split(',').filter(|f| !f.is_empty()).map(str::to_owned).collect())
            .unwrap_or_default();
        flags.extend(how.mount_flags.iter().cloned());
        opts.insert("mountOptions".into(), flags.join(","));
    }
    opts
}

/// `read-only` or `read-write`.
/// How a volume is staged, in words.
fn access(block: bool) -> &'static str {
    if block {
        "for raw block access"
    } else {
        "as a file system"
    }
}

fn rw(read_only: bool) -> &'static str {
    if read_only {
        "read-only"
    } else {
        "read-write"
    }
}

/// The first option asked for (in `raw`, canonical in `wanted`) that `existing` has otherwise,
/// in words.
fn first_difference(
    raw: &BTreeMap<String, String>,
    wanted: &crate::backend::Options,
    existing: &VolumeRecord,
) -> Option<String> {
    let asked: Vec<&String> = wanted.keys().filter(|k| raw.keys().any(|r| r.eq_ignore_ascii_case(k))).collect();
    asked.into_iter().find_map(|key| {
        let have = existing.options.get(key).map_or("", String::as_str);
        let want = wanted.get(key).map_or("", String::as_str);
        (have != want).then(|| format!("a volume of that name exists with {key}={have:?}, not {want:?}"))
    })
}
