//! The `ebs` backend (aliases `ec2`, `aws`): EC2 Elastic Block Store volumes that follow the
//! container from host to host.
//!
//! # Layout
//!
//! - [`api`]: the narrow [`api::Ec2Api`] trait, its SDK-free types and the one mapping of EC2
//!   error codes to sentinel kinds. [`cloud`] implements it on `aws-sdk-ec2` (the only file
//!   naming `aws_sdk_*`); `fake` (tests) is an in-process EC2 state machine.
//! - [`settings`]: the `ebs.*` keys; [`options`]: the create options; [`identity`]: instance
//!   ID / AZ / region from config or IMDSv2; [`naming`]: Name tags, ownership, tokens;
//!   [`devices`]: device names and device discovery; [`wait`]: bounded polls and throttling
//!   retries; [`cache`]: what EC2 last said; [`snapshots`]: the snapshot operations.
//! - `core`: what every operation shares (connection, lookups); `create`: CreateVolume and its
//!   wait; `attach`: AttachVolume/DetachVolume and their waits; `errors`: EC2 failures as
//!   typed errors; [`node`]: finding the attached device on this host.
//! - This file: [`EbsController`] (the controller half) and the builder that pairs it with the
//!   shared [`BlockNode`] over [`node::EbsDevices`].
//!
//! # Behaviour
//!
//! - **Names.** A volume's name is its EC2 `Name` tag, `<ebs.tag>/<name>` with `ebs.tag` set,
//!   on create, lookup and list alike. Lookups span the whole region: a volume in another AZ is
//!   reported as such, never duplicated; two volumes with one name are an error listing both.
//! - **Ownership.** Every volume created here carries `rexray-rs/managed=true` from its
//!   CreateVolume call on (TagSpecifications), plus its fsType and data-directory owner, so every
//!   host formats and mounts it alike (the publish context carries them to the node). The cached
//!   list holds owned volumes only. Mounting or creating the name of an unowned volume (one
//!   REX-Ray made) adopts it (CreateTags): the tags are the volume's record.
//! - **Create** is idempotent: ClientToken = sha256 of the Name tag (with a suffix after a
//!   mismatch or a vanished volume), then a wait until `available`. A volume that vanishes right
//!   after CreateVolume is reported as the KMS problem it almost always is.
//! - **Publish** (attach to a node, an instance ID). Reuse its attachment there; otherwise refuse
//!   a volume attached elsewhere (naming the instance) unless `preempt` is on, in which case
//!   force-detach it there and wait. Pick a device name under the allocator's lock, AttachVolume,
//!   wait for `attached`, detach and fail if it stays `attaching`. The node half then finds the
//!   device (NVMe link or Xen name) and checks its serial.
//! - **Unpublish.** After the node unmounted and synced: DetachVolume (never forced) and wait
//!   until detached. **Delete** is refused while attached elsewhere; gone already is success.
//! - **Cost.** Get/List read the [`cache::VolumeCache`]. A Mount of a detached volume makes three
//!   EC2 calls besides the attach wait: DescribeVolumes (by name), DescribeInstances (device
//!   names in use), AttachVolume.

pub mod api;
mod attach;
pub mod cache;
pub mod cloud;
mod core;
mod create;
pub mod devices;
mod errors;
#[cfg(any(test, feature = "testing"))]
pub mod fake;
pub mod identity;
mod limits;
mod modify;
pub mod naming;
pub mod node;
pub mod options;
pub mod relocate;
mod resize;
pub mod settings;
pub mod snapshots;
pub mod wait;
pub mod watch;

use std::collections::BTreeMap;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use async_trait::async_trait;

use self::api::{CloudErrorKind, Ec2Api, Volume};
use self::core::Core;
use self::errors::{attached_elsewhere, cloud_failed};
use self::identity::{Identity, Metadata};
pub use self::naming::{client_token, nvme_link_name, BLOCK_TAGS, OWNER_TAG, OWNER_VALUE};
use self::options::{EbsDefaults, EBS_SPECS};
use self::settings::EbsSettings;
use super::block::{BlockDefaults, BlockNode, MountLayout};
use super::options::Options;
use super::{Backend, BackendError, Controller, Environment, NodeId, Page, PageRequest, PublishContext, Scope};
use crate::config::ServiceConfig;
use crate::name::VolumeName;

/// A future returned by a client factory.
pub type ApiFuture = Pin<Box<dyn Future<Output = Arc<dyn Ec2Api>> + Send>>;

/// Makes the EC2 client for a connection (the real SDK, or a fake in tests).
pub type ApiFactory = Box<dyn Fn(cloud::Connection) -> ApiFuture + Send + Sync>;

/// The EBS backend's parts from outside the process, built by the composition root: instance
/// metadata and the EC2 client factory.
pub struct CloudParts {
    /// Instance metadata (IMDSv2).
    pub metadata: Arc<dyn Metadata>,
    /// Makes the EC2 client on first use.
    pub factory: ApiFactory,
}

impl fmt::Debug for CloudParts {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CloudParts").field("metadata", &self.metadata).finish_non_exhaustive()
    }
}

impl CloudParts {
    /// Parts around a ready EC2 client (tests, tools).
    pub fn with_api(metadata: Arc<dyn Metadata>, api: Arc<dyn Ec2Api>) -> Self {
        Self {
            metadata,
            factory: Box::new(move |_| {
                let api = Arc::clone(&api);
                Box::pin(async move { api })
            }),
        }
    }
}

/// The `ebs` backend of a service: [`EbsController`] and the block node over
/// [`node::EbsDevices`]. Makes no AWS or metadata call.
///
/// # Errors
/// [`BackendError::InvalidOption`] for a malformed `ebs.*` setting,
/// [`BackendError::Invalid`] for a `mount.rootPath` that leaves the volume, or
/// [`BackendError::Unavailable`] when the environment has no EC2 parts.
pub fn backend(service: &ServiceConfig, env: &Environment) -> Result<Backend, BackendError> {
    let Some(cloud) = env.ebs.as_ref() else {
        return Err(BackendError::Unavailable("ebs"));
    };
    Ok(Arc::new(EbsController::new(service, env, Arc::clone(cloud))?).backend())
}

/// The EBS controller half; see the module documentation.
#[derive(Debug, Clone)]
pub struct EbsController {
    core: Arc<Core>,
    /// The node half on this host (a snapshot syncs a volume mounted here first).
    node: Arc<BlockNode>,
}

impl EbsController {
    /// The controller of a service over `env` and `cloud`.
    ///
    /// # Errors
    /// As [`backend`].
    pub fn new(service: &ServiceConfig, env: &Environment, cloud: Arc<CloudParts>) -> Result<Self, BackendError> {
        let settings = EbsSettings::parse(&service.ebs)?;
        let integration = &service.integration;
        let defaults = EbsDefaults {
            volume_type: integration
                .default_volume_type
                .clone()
                .filter(|t| !t.is_empty())
                .map(|t| t.to_ascii_lowercase())
                .or_else(|| settings.default_volume_type.clone()),
            iops: integration.default_iops.filter(|n| *n > 0),
            availability_zone: integration.default_availability_zone.clone().filter(|a| !a.is_empty()),
        };
        let block_defaults =
            BlockDefaults { size_gib: integration.default_size_gib, fs_type: integration.default_fs_type.clone() };
        let layout = MountLayout::from_integration(integration)?;
        let devices = Arc::new(node::EbsDevices::new(Arc::clone(&env.devices), &settings));
        let node = Arc::new(BlockNode::new(Arc::clone(&env.os), Arc::clone(&devices) as _, layout, block_defaults));
        let core = Arc::new(Core::new(settings, integration.preempt, defaults, cloud, Some(Arc::clone(&devices))));
        Ok(Self { core, node })
    }

    /// Both halves: this controller and its node.
    pub fn backend(self: &Arc<Self>) -> Backend {
        Backend { controller: Arc::clone(self) as Arc<dyn Controller>, node: Arc::clone(&self.node) as _ }
    }

    /// The Name tag volume `name` has in EC2.
    pub fn name_tag(&self, name: &VolumeName) -> String {
        self.core.naming.name_tag(name)
    }

    /// This host's identity (connecting on first use).
    ///
    /// # Errors
    /// The identity could not be found out.
    pub async fn identity(&self) -> Result<Identity, BackendError> {
        self.core.connect().await.map(|(i, _)| i)
    }

    /// Every volume this backend owns, by name, from the cache (refreshed with one paginated
    /// DescribeVolumes when older than [`cache::REFRESH_AFTER`], or when `force`). A failed
    /// refresh answers from the cache as it is.
    pub async fn list_all(&self, force: bool) -> BTreeMap<String, Vec<Volume>> {
        if let Err(e) = self.core.refresh(force).await {
            tracing::debug!(error = %e, "listing from the cache as it is");
        }
        self.core.cache.all()
    }

    /// What the cache holds about `name` (no EC2 call).
    pub fn cached(&self, name: &VolumeName) -> Vec<Volume> {
        self.core.cache.get(name.as_str())
    }

    fn schedule_refresh(&self) {
        if let Ok(handle) = tokio::runtime::Handle::try_current() {
            let core = Arc::clone(&self.core);
            handle.spawn(async move {
                let _ = core.refresh(false).await;
            });
        }
    }
}

/// How long a listing waits for EC2 before it serves what EC2 said last.
pub const LIST_BUDGET: crate::deadline::Budget = crate::deadline::Budget {
    caller: "a volume listing's 10 s limit",
    total: std::time::Duration::from_secs(10),
    reserve: std::time::Duration::ZERO,
};

#[async_trait]
impl Controller for EbsController {
    fn kind(&self) -> &'static str {
        "ebs"
    }

    fn scope(&self) -> Scope {
        Scope::Global
    }

    fn parse_options(&self, raw: &BTreeMap<String, String>) -> Result<Options, BackendError> {
        let size_given = raw.keys().any(|k| k.eq_ignore_ascii_case("size"));
        let opts = self.node.parse_options(raw, EBS_SPECS)?;
        options::complete(opts, size_given, &self.core.defaults)
    }

    async fn local_node(&self) -> Result<NodeId, BackendError> {
        self.identity().await.map(|i| NodeId(i.instance_id))
    }

    async fn local_zone(&self) -> Result<Option<String>, BackendError> {
        self.identity().await.map(|i| Some(i.availability_zone))
    }

    async fn attach_limit(&self) -> Result<Option<u32>, BackendError> {
        self.core.attach_limit().await
    }

    async fn create(&self, name: &VolumeName, opts: &Options, _resume: bool) -> Result<(), BackendError> {
        // Resumed or not: EC2's tags are the record, so a volume found by name is adopted.
        self.core.create(name, opts).await
    }

    /// Nothing: an EBS volume a failed create left is kept (its tags make it the volume's), for
    /// the next create or mount of the name to use.
    async fn discard_partial(&self, name: &VolumeName, _opts: &Options) -> Result<(), BackendError> {
        tracing::debug!(volume = %name, "an EBS volume left by a failed create is kept for the next create of its name");
        Ok(())
    }

    async fn delete(&self, name: &VolumeName, _opts: &Options) -> Result<(), BackendError> {
        let core = &self.core;
        let (ident, api) = core.connect().await?;
        let api = api.as_ref();
        let Some(vol) = core.one(name, core.lookup(api, name).await?)? else {
            tracing::warn!(volume = %name, "volume already gone from EC2");
            return Ok(());
        };
        // Never detached here: whoever published the volume unpublishes it first (the Docker
        // front always does); an attachment found now belongs to someone.
        if vol.live_attachments().any(|a| a.instance_id != ident.instance_id) {
            return Err(attached_elsewhere(name, &vol, "unmount it there before removing it"));
        }
        if vol.attachment_to(&ident.instance_id).is_some() {
            return Err(BackendError::InUse {
                what: format!("volume {name} ({})", vol.id),
                holders: format!("attached to {}", errors::describe_attachments(&vol)),
                hint: "unmount it on this host before removing it".into(),
            });
        }
        match core.retry.run("DeleteVolume", || api.delete_volume(&vol.id)).await {
            Ok(()) => tracing::info!(volume = %name, id = %vol.id, "deleted EBS volume"),
            Err(e) if e.kind == CloudErrorKind::NotFound => {
                tracing::warn!(volume = %name, id = %vol.id, "volume already gone from EC2");
            }
            Err(e) => return Err(cloud_failed("remove", name, Some(&vol.id), &e)),
        }
        core.cache.forget(name.as_str(), &vol.id);
        Ok(())
    }

    async fn publish(&self, name: &VolumeName, _opts: &Options, node: &NodeId) -> Result<PublishContext, BackendError> {
        self.core.publish_to(name, node).await
    }

    async fn expand(&self, name: &VolumeName, _opts: &Options, size_gib: u64) -> Result<u64, BackendError> {
        self.core.expand(name, size_gib).await
    }

    async fn unpublish(&self, name: &VolumeName, _opts: &Options, node: &NodeId) -> Result<(), BackendError> {
        self.core.unpublish_from(name, node).await
    }

    fn plan_modify(
        &self,
        _name: &VolumeName,
        opts: &Options,
        changes: &BTreeMap<String, String>,
    ) -> Result<Options, BackendError> {
        modify::plan(opts, changes, &self.core.defaults)
    }

    async fn modify(&self, name: &VolumeName, target: &Options) -> Result<(), BackendError> {
        self.core.modify(name, target).await
    }

    async fn plan_move(&self, name: &VolumeName, zone: &str) -> Result<crate::backend::Relocation, BackendError> {
        self.core.plan_move(name, zone).await
    }

    async fn relocate(
        &self,
        name: &VolumeName,
        plan: &crate::backend::Relocation,
        delete_source: bool,
    ) -> Result<crate::backend::Moved, BackendError> {
        self.core.relocate(name, plan, delete_source).await
    }

    async fn publications(&self, node: &NodeId) -> Result<BTreeMap<String, PublishContext>, BackendError> {
        self.core.attached_to(node).await
    }

    /// Every owned volume in the region, from the cache (refreshed when stale).
    /// From the cache, refreshed first when due, waiting for EC2 at most [`LIST_BUDGET`]'s
    /// time; when EC2 cannot be asked the page is what it listed last, marked stale.
    async fn list(&self, page: &PageRequest) -> Result<Page, BackendError> {
        if let Err(e) = crate::deadline::within(LIST_BUDGET, self.core.refresh(false)).await {
            tracing::debug!(error = %e, "listing from the cache as it is");
        }
        let mut out = Page::of(self.core.cache.all().into_keys(), page);
        out.stale = self.core.cache.staleness();
        Ok(out)
    }

    /// Whether an owned volume of that name exists, from the cache (refreshed when stale).
    async fn knows(&self, name: &VolumeName) -> bool {
        if self.cached(name).is_empty() {
            self.list_all(false).await;
        }
        !self.cached(name).is_empty()
    }

    /// From the cache only: `volumeID`, `sizeGiB`, `volumeType`, `iops`, `throughput`,
    /// `availabilityZone`, `state`, `attachedInstance`, `device`, `encrypted` (and `kmsKeyID`,
    /// `snapshotID`, `fsType`, `ebsName`, `movedFrom` (the volume ID it was moved from), and `modification` while one this daemon started or
    /// saw runs). A stale cache, and a running modification's progress, are refreshed in the
    /// background.
    fn status(&self, name: &VolumeName, opts: &Options) -> BTreeMap<String, serde_json::Value> {
        use serde_json::Value;
        self.schedule_refresh();
        let mut status = BTreeMap::new();
        status.insert("ebsName".into(), Value::from(self.core.naming.name_tag(name)));
        let volumes = self.core.cache.get(name.as_str());
        if let Some(fs) = opts.get("fsType") {
            status.insert("fsType".into(), Value::from(fs.clone()));
        }
        if let Some(stale) = self.core.cache.staleness() {
            status.insert("stale".into(), Value::from(stale.to_string()));
        }
        let Some(v) = volumes.first() else {
            return status;
        };
        if volumes.len() > 1 {
            status.insert("duplicates".into(), volumes.iter().map(|v| Value::from(v.id.clone())).collect());
        }
        status.insert("volumeID".into(), v.id.clone().into());
        status.insert("sizeGiB".into(), v.size_gib.into());
        status.insert("volumeType".into(), v.volume_type.clone().into());
        status.insert("iops".into(), v.iops.map_or(Value::Null, Value::from));
        status.insert("throughput".into(), v.throughput.map_or(Value::Null, Value::from));
        status.insert("availabilityZone".into(), v.availability_zone.clone().into());
        status.insert("state".into(), v.state.as_str().into());
        status.insert("encrypted".into(), v.encrypted.into());
        if let Some(k) = &v.kms_key_id {
            status.insert("kmsKeyID".into(), k.clone().into());
        }
        if let Some(s) = &v.snapshot_id {
            status.insert("snapshotID".into(), s.clone().into());
        }
        if let Some(fs) = v.tags.get("rexray-rs/fsType") {
            status.insert("fsType".into(), fs.clone().into());
        }
        if let Some(from) = v.tags.get(relocate::MOVED_FROM_TAG) {
            status.insert("movedFrom".into(), from.clone().into());
        }
        if let Some((m, ask_again)) = self.core.modifications.seen(&v.id) {
            status.insert("modification".into(), modify::describe(&m).into());
            if ask_again {
                if let Ok(handle) = tokio::runtime::Handle::try_current() {
                    let (core, id) = (Arc::clone(&self.core), v.id.clone());
                    handle.spawn(async move { core.refresh_modification(&id).await });
                }
            }
        }
        let attached = v.live_attachments().next();
        status.insert("attachedInstance".into(), attached.map_or(Value::Null, |a| a.instance_id.clone().into()));
        status.insert("device".into(), attached.map_or(Value::Null, |a| a.device.clone().into()));
        status
    }

    /// From the cache: the instances it is attached to, and the `rexray-rs/lastUsed` tag a
    /// daemon writes when it detaches the volume (else EC2's create time).
    fn usage(&self, name: &VolumeName) -> crate::backend::Usage {
        let volumes = self.core.cache.get(name.as_str());
        let Some(v) = volumes.first() else { return crate::backend::Usage::default() };
        crate::backend::Usage {
            published_to: v.live_attachments().map(|a| a.instance_id.clone()).collect(),
            last_used: v.tags.get(naming::LAST_USED_TAG).cloned().or_else(|| v.create_time.clone()),
        }
    }

    fn snapshots(&self) -> Option<&dyn crate::backend::Snapshots> {
        Some(self)
    }
}

#[cfg(test)]
mod modify_tests;
#[cfg(test)]
mod relocate_tests;
#[cfg(test)]
mod resize_tests;
#[cfg(test)]
mod snapshot_tests;
#[cfg(test)]
mod tests;
#[cfg(test)]
mod timing_tests;
