//! Storage backends, in two halves: a [`Controller`] and a [`Node`].
//!
//! - The **controller** half does the storage work that may run anywhere: create, delete,
//!   publish a volume to a named node (EBS: AttachVolume to that instance; loop: attach the image
//!   to a loop device; vfs: nothing) and unpublish it, list, describe, snapshots.
//! - The **node** half works on the host itself: find the device the controller's
//!   [`PublishContext`] names, check it is the volume's own, format it if blank, grow and mount
//!   it at a staging path ([`Node::stage`]); hand out its data directory or bind-mount it to a
//!   target ([`Node::publish`]); and the reverse. Block backends (loop, ebs) share one node
//!   half, [`block::BlockNode`], and differ only in how the device is found.
//!
//! The Docker front (the service) composes them on this host: the first holder in publishes
//! the volume to this node, stages and publishes it; the last one out does the reverse. The CSI
//! front calls the halves separately. Neither half keeps mount accounting: the service holds
//! the volume's lock, so a backend sees at most one call per volume at a time from it.
//!
//! Every method is idempotent and checks reality first, so an operation interrupted by a crash
//! can be finished or undone by calling the same methods again.

pub mod block;
pub mod context;
#[cfg(feature = "ebs")]
pub mod ebs;
pub mod error;
#[cfg(any(test, feature = "testing"))]
pub mod fake;
mod here;
pub mod instrumented;
pub mod loopback;
pub mod options;
pub mod os_call;
pub mod snapshot;
pub mod vfs;

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Debug;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use async_trait::async_trait;

use crate::config::{BackendKind, ServiceConfig};
use crate::name::VolumeName;
use crate::os::{BlockOs, DeviceHost, FsStats, HostInfo};
pub use context::{NodeId, PublishContext};

pub use error::{BackendError, CloudFailure, ErrorKind};
pub use options::Options;
pub use snapshot::Snapshots;

/// Docker's volume scope, from `/VolumeDriver.Capabilities`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// Volumes exist on this host only.
    Local,
    /// Volumes are visible from every host (a cluster-wide namespace).
    Global,
}

impl Scope {
    /// The wire spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Scope::Local => "local",
            Scope::Global => "global",
        }
    }
}

/// One page of [`Controller::list`].
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Page {
    /// Volume names, sorted.
    pub names: Vec<String>,
    /// The name to start the next page after, when there is one.
    pub next: Option<String>,
    /// Set when the storage could not be asked and the names are the last ones it gave.
    pub stale: Option<Stale>,
}

/// A listing the storage could not refresh: what it last said, and why it was not asked again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stale {
    /// Why the storage could not be asked.
    pub cause: String,
    /// How long ago the storage last answered a listing; `None`: not since the daemon started.
    pub listed_ago: Option<std::time::Duration>,
}

impl std::fmt::Display for Stale {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.listed_ago {
            Some(ago) => write!(
                f,
                "the storage could not be asked ({}); this is what it listed {} ago",
                self.cause,
                crate::human::duration(ago)
            ),
            None => write!(f, "the storage could not be asked ({}), and it has not answered a listing yet", self.cause),
        }
    }
}

/// Which page [`Controller::list`] returns.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct PageRequest {
    /// Start after this name (exclusive); `None` = from the first.
    pub after: Option<String>,
    /// At most this many names; 0 = all.
    pub max: usize,
}

impl Page {
    /// The page `req` selects from `names` (sorted, no duplicates).
    pub fn of(names: impl IntoIterator<Item = String>, req: &PageRequest) -> Page {
        let mut names: Vec<String> =
            names.into_iter().filter(|n| req.after.as_ref().is_none_or(|after| n > after)).collect();
        names.sort();
        names.dedup();
        if req.max > 0 && names.len() > req.max {
            names.truncate(req.max);
            let next = names.last().cloned();
            return Page { names, next, stale: None };
        }
        Page { names, next: None, stale: None }
    }
}

/// How a volume is used, as its storage knows it: what finding orphans asks of a backend.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Usage {
    /// The nodes it is published to now, any host's (EBS: the instances it is attached to).
    pub published_to: Vec<String>,
    /// When a host last let go of it, RFC 3339, where the storage records that (EBS: the
    /// `rexray-rs/lastUsed` tag), else when the storage made it; `None` when not known.
    pub last_used: Option<String>,
}

/// A planned move of a volume to another availability zone ([`Controller::plan_move`]): what
/// the intent records before the first side effect, so an interrupted move is found again.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Relocation {
    /// The zone the volume moves to.
    pub zone: String,
    /// The storage's ID of the volume being moved (EBS: its volume ID).
    pub source: String,
    /// This move's own ID: what the storage objects it makes are tagged with.
    pub id: String,
}

/// How [`Controller::relocate`] ended when it did not leave the move for a later call.
#[derive(Debug)]
pub enum Moved {
    /// The name answers to the volume in the new zone (and the source is deleted, if asked).
    Done,
    /// Moved, but the source could not be deleted as asked: why. It is kept, no longer
    /// answering to the name.
    SourceKept(BackendError),
    /// The move failed for good before the name moved, and was undone: the volume is where it
    /// was, and what the move made is deleted.
    Undone(BackendError),
}

/// Space and inodes of a published volume's file system.
pub type VolumeStats = FsStats;

/// The controller half: storage operations that may run on any host.
#[async_trait]
pub trait Controller: Send + Sync + Debug {
    /// The driver name (`vfs`, `loop`, `ebs`).
    fn kind(&self) -> &'static str;

    /// What `/VolumeDriver.Capabilities` reports.
    fn scope(&self) -> Scope;

    /// Validates Docker's `Opts` for a new volume and returns them in canonical form, with the
    /// defaults that must stay fixed for the volume's life (size, fsType, …) filled in.
    ///
    /// # Errors
    /// [`BackendError::UnknownOption`] or [`BackendError::InvalidOption`].
    fn parse_options(&self, raw: &BTreeMap<String, String>) -> Result<Options, BackendError>;

    /// This host as [`Controller::publish`] addresses it (EBS: its instance ID).
    ///
    /// # Errors
    /// The host's identity could not be found out.
    async fn local_node(&self) -> Result<NodeId, BackendError>;

    /// Creates the volume with `opts`. With `resume` the caller is finishing a create of its
    /// own that was interrupted, so what it finds is its own and is brought to `opts`; without
    /// it, data found under the name that no record owns is refused
    /// ([`BackendError::AlreadyExists`]), except where the storage itself records ownership
    /// (EBS tags), which makes the volume one this program may adopt.
    ///
    /// # Errors
    /// Whatever stopped it; work a failed call did is undone.
    async fn create(&self, name: &VolumeName, opts: &Options, resume: bool) -> Result<(), BackendError>;

    /// Removes what an interrupted create of this program left (after [`Controller::create`]
    /// with `resume` failed too), never data that existed before that create.
    ///
    /// # Errors
    /// It could not be removed.
    async fn discard_partial(&self, name: &VolumeName, opts: &Options) -> Result<(), BackendError>;

    /// Deletes the volume and its data. Idempotent: a missing volume is success.
    ///
    /// # Errors
    /// [`BackendError::InUse`] while it is published anywhere, or the failure.
    async fn delete(&self, name: &VolumeName, opts: &Options) -> Result<(), BackendError>;

    /// Makes the volume available to `node` and says how the node finds it. Idempotent: a
    /// volume published there already returns its context.
    ///
    /// # Errors
    /// [`BackendError::AttachedElsewhere`], [`BackendError::WrongZone`], a timeout, or the
    /// failure; a failed call leaves the volume as it found it.
    async fn publish(&self, name: &VolumeName, opts: &Options, node: &NodeId) -> Result<PublishContext, BackendError>;

    /// Undoes [`Controller::publish`]. Idempotent: a volume not published there is success.
    ///
    /// # Errors
    /// The failure.
    async fn unpublish(&self, name: &VolumeName, opts: &Options, node: &NodeId) -> Result<(), BackendError>;

    /// Grows the volume to `size_gib` GiB and returns its size in GiB after (the storage may
    /// round up). Idempotent: a volume that is that large already is success. Never shrinks. A
    /// published volume grows while in use; its file system is grown by [`Node::expand_fs`].
    ///
    /// # Errors
    /// [`BackendError::Invalid`] where volumes have no size of their own (vfs) or for a smaller
    /// size, [`BackendError::NoSpace`], a timeout, or the failure.
    async fn expand(&self, name: &VolumeName, opts: &Options, size_gib: u64) -> Result<u64, BackendError> {
        let _ = (opts, size_gib);
        Err(BackendError::invalid(format!(
            "volume {name} cannot be resized: {} volumes have no size of their own",
            self.kind()
        )))
    }

    /// The options the volume has once its performance settings are changed by `changes`
    /// (Docker's spelling; EBS: `volumeType`, `iops`, `throughput`), checked against the
    /// storage's limits for its type and size. Makes no call: a change the storage would refuse
    /// is refused here, before anything happens.
    ///
    /// # Errors
    /// [`BackendError::Invalid`] where volumes have no such settings, or
    /// [`BackendError::UnknownOption`] / [`BackendError::InvalidOption`] naming the setting.
    fn plan_modify(
        &self,
        name: &VolumeName,
        opts: &Options,
        changes: &BTreeMap<String, String>,
    ) -> Result<Options, BackendError> {
        let _ = (opts, changes);
        Err(BackendError::invalid(format!(
            "volume {name} cannot be modified: {} volumes have no type, IOPS or throughput of their own",
            self.kind()
        )))
    }

    /// Changes the volume in place to `target` (from [`Controller::plan_modify`]) while it
    /// stays in use, and returns once the storage has taken the change on; it may go on
    /// optimizing for hours ([`Controller::status`] says how far). Idempotent: a volume that
    /// has these settings, or is being changed to them, is success.
    ///
    /// # Errors
    /// [`BackendError::InUse`] while another change runs, or the storage's refusal.
    async fn modify(&self, name: &VolumeName, target: &Options) -> Result<(), BackendError> {
        let _ = target;
        Err(BackendError::invalid(format!(
            "volume {name} cannot be modified: {} volumes have no type, IOPS or throughput of their own",
            self.kind()
        )))
    }

    /// Plans moving the volume to availability zone `zone`: checks it may move (it exists, is
    /// attached nowhere) and says what the move works on. Makes no change.
    ///
    /// # Errors
    /// [`BackendError::Invalid`] where volumes have no zone (vfs, loop) or for a malformed
    /// zone, [`BackendError::NotFound`], [`BackendError::AttachedElsewhere`] /
    /// [`BackendError::InUse`] while attached, or the storage's failure.
    async fn plan_move(&self, name: &VolumeName, zone: &str) -> Result<Relocation, BackendError> {
        let _ = zone;
        Err(BackendError::invalid(format!(
            "volume {name} cannot be moved: {} volumes live on this host and have no availability zone",
            self.kind()
        )))
    }

    /// Carries out (or finishes) the move `plan`: a copy of the volume in the new zone takes
    /// its name, and the old one is kept, no longer answering to the name, until
    /// `delete_source`. Idempotent: every step is found again in the storage, so a move
    /// interrupted anywhere is finished by calling this again. A move that fails for good
    /// before the name moved is undone ([`Moved::Undone`]: the volume stays where it was,
    /// nothing left over). The name never answers for two volumes at once.
    ///
    /// # Errors
    /// A step that ran out of time or could not reach the storage, or any failure once the name
    /// left the source: the move is left as it is, for the next call to finish.
    async fn relocate(&self, name: &VolumeName, plan: &Relocation, delete_source: bool) -> Result<Moved, BackendError> {
        let _ = (plan, delete_source);
        Err(BackendError::invalid(format!(
            "volume {name} cannot be moved: {} volumes live on this host and have no availability zone",
            self.kind()
        )))
    }

    /// The availability zone of this host, where volumes are zonal (EBS); `None` elsewhere.
    ///
    /// # Errors
    /// The host's identity could not be found out.
    async fn local_zone(&self) -> Result<Option<String>, BackendError> {
        Ok(None)
    }

    /// How many more of its volumes this host can have attached (an orchestrator schedules no
    /// more on it); `None` where there is no such limit or it is not known.
    ///
    /// # Errors
    /// The host's identity or limits could not be found out.
    async fn attach_limit(&self) -> Result<Option<u32>, BackendError> {
        Ok(None)
    }

    /// The space left for new volumes, in bytes, where the backend has a pool of its own (the
    /// file system of `loop.root` or `vfs.root`); `None` where the storage has no such limit
    /// to report (EBS).
    ///
    /// # Errors
    /// The pool could not be measured.
    async fn capacity(&self) -> Result<Option<u64>, BackendError> {
        Ok(None)
    }

    /// How the volume is used beyond this host, from what the backend knows without asking
    /// (EBS: its cache). Local backends know nothing beyond this host's records.
    fn usage(&self, name: &VolumeName) -> Usage {
        let _ = name;
        Usage::default()
    }

    /// Every volume of this backend's that is published to `node` right now, by name: one look
    /// at reality, to reconcile records with it.
    ///
    /// # Errors
    /// The storage could not be asked.
    async fn publications(&self, node: &NodeId) -> Result<BTreeMap<String, PublishContext>, BackendError>;

    /// The names of the volumes the storage holds (for a global namespace, including the ones
    /// other hosts made), one page at a time.
    ///
    /// # Errors
    /// The storage could not be listed.
    async fn list(&self, page: &PageRequest) -> Result<Page, BackendError>;

    /// Whether the storage holds a volume `name` that this host may use although it has no
    /// record of it (global namespaces only). Served from a cache.
    async fn knows(&self, _name: &VolumeName) -> bool {
        false
    }

    /// Backend-specific entries for `docker volume inspect`'s Status, from memory or a cache
    /// (never a slow call).
    fn status(&self, _name: &VolumeName, _opts: &Options) -> BTreeMap<String, serde_json::Value> {
        BTreeMap::new()
    }

    /// The backend's snapshot operations, if it has them.
    fn snapshots(&self) -> Option<&dyn Snapshots> {
        None
    }
}

/// The file in an orchestrator's staging directory on which a raw block volume's device is
/// bound.
pub const BLOCK_FILE: &str = "block";

/// The node half: what happens on the host that uses a published volume.
#[async_trait]
pub trait Node: Send + Sync + Debug {
    /// Where the Docker front stages volume `name` (`<mount.path>/<name>`; vfs: its directory).
    fn staging_path(&self, name: &VolumeName) -> PathBuf;

    /// What [`Node::publish`] without a target hands out for a volume staged at
    /// [`Node::staging_path`] (`<mount.path>/<name>/<rootPath>`; vfs: the directory).
    fn data_path(&self, name: &VolumeName) -> PathBuf;

    /// Makes the published volume usable at `staging`: finds its device from `ctx`, checks it
    /// is the volume's own, formats it only if blank, grows and mounts it. Idempotent.
    ///
    /// # Errors
    /// The failing step; steps this call did are undone.
    async fn stage(
        &self,
        name: &VolumeName,
        opts: &Options,
        ctx: &PublishContext,
        staging: &Path,
    ) -> Result<(), BackendError>;

    /// Makes the published volume's device usable at `staging` for raw block access: finds it
    /// from `ctx`, checks it is the volume's own, and binds it on the file
    /// `<staging>/`[`BLOCK_FILE`]. Never formats. Idempotent.
    ///
    /// # Errors
    /// [`BackendError::Invalid`] where volumes have no device (vfs), or the failing step.
    async fn stage_block(&self, name: &VolumeName, ctx: &PublishContext, staging: &Path) -> Result<(), BackendError> {
        let _ = (ctx, staging);
        Err(BackendError::invalid(format!("volume {name} is a directory; it has no block device to hand out")))
    }

    /// Binds the device staged at `<staging>/`[`BLOCK_FILE`] on the file `target` (made if
    /// missing). Idempotent.
    ///
    /// # Errors
    /// [`BackendError::Invalid`] where volumes have no device (vfs), or the failing step.
    async fn publish_block(
        &self,
        name: &VolumeName,
        staging: &Path,
        target: &Path,
        read_only: bool,
    ) -> Result<(), BackendError> {
        let _ = (staging, target, read_only);
        Err(BackendError::invalid(format!("volume {name} is a directory; it has no block device to hand out")))
    }

    /// The size in bytes of the raw block volume handed out at `path`.
    ///
    /// # Errors
    /// [`BackendError::Invalid`] where volumes have no device (vfs), or it could not be read.
    async fn block_size(&self, path: &Path) -> Result<u64, BackendError> {
        Err(BackendError::invalid(format!("{} is not a block volume", path.display())))
    }

    /// Undoes [`Node::stage`] (sync, unmount). Idempotent. The data stays.
    ///
    /// # Errors
    /// The failing step.
    async fn unstage(&self, name: &VolumeName, staging: &Path) -> Result<(), BackendError>;

    /// Undoes [`Node::stage_block`] (unbinds the device, removes the file). Idempotent.
    ///
    /// # Errors
    /// The failing step.
    async fn unstage_block(&self, name: &VolumeName, staging: &Path) -> Result<(), BackendError> {
        let _ = staging;
        Err(BackendError::invalid(format!("volume {name} is a directory; it has no block device to hand out")))
    }

    /// Whether the volume is staged at `staging` right now.
    ///
    /// # Errors
    /// The mount table could not be read.
    async fn is_staged(&self, name: &VolumeName, staging: &Path) -> Result<bool, BackendError>;

    /// The names of the volumes staged at their default staging paths right now (one look at
    /// the mount table, to reconcile records with it).
    ///
    /// # Errors
    /// The mount table could not be read.
    async fn staged(&self) -> Result<BTreeSet<String>, BackendError>;

    /// Hands the staged volume out: with no `target`, prepares its data directory (mode and
    /// owner from `opts`) and returns it; with a `target`, bind-mounts the staging path there
    /// (read-only if asked) and returns the target. Idempotent.
    ///
    /// # Errors
    /// The failing step.
    async fn publish(
        &self,
        name: &VolumeName,
        opts: &Options,
        staging: &Path,
        target: Option<&Path>,
        read_only: bool,
    ) -> Result<PathBuf, BackendError>;

    /// Undoes a [`Node::publish`] to `target` (unmounts the bind mount). Idempotent.
    ///
    /// # Errors
    /// The failing step.
    async fn unpublish(&self, name: &VolumeName, target: &Path) -> Result<(), BackendError>;

    /// Grows the file system of the volume staged at `staging` to fill its device, after
    /// [`Controller::expand`], while it stays mounted and in use: once the device shows
    /// `size_gib` (`None`: the device as it is). Idempotent: a file system that fills its device
    /// already is left alone.
    ///
    /// # Errors
    /// [`BackendError::Invalid`] where volumes have no file system of their own (vfs) or the
    /// volume is not staged there, or the failing step.
    async fn expand_fs(
        &self,
        name: &VolumeName,
        opts: &Options,
        staging: &Path,
        size_gib: Option<u64>,
    ) -> Result<(), BackendError> {
        let _ = (opts, staging, size_gib);
        Err(BackendError::invalid(format!("volume {name} has no file system of its own to grow")))
    }

    /// Space and inodes of the file system at `path`.
    ///
    /// # Errors
    /// It could not be read.
    async fn stats(&self, path: &Path) -> Result<VolumeStats, BackendError>;

    /// Lets go of what the node keeps for a deleted volume (its empty Docker staging
    /// directory). Failures are only logged.
    async fn forget(&self, _name: &VolumeName) {}
}

/// A backend: its two halves.
#[derive(Debug, Clone)]
pub struct Backend {
    /// The controller half.
    pub controller: Arc<dyn Controller>,
    /// The node half.
    pub node: Arc<dyn Node>,
}

impl Backend {
    /// The driver name.
    pub fn kind(&self) -> &'static str {
        self.controller.kind()
    }
}

/// What the composition root hands to the backends: everything they touch outside the process.
/// Backends build none of it and read no environment variables.
#[derive(Clone)]
pub struct Environment {
    /// Every syscall and external tool.
    pub os: Arc<dyn BlockOs>,
    /// How this host shows attached cloud volumes (device links, serials).
    pub devices: Arc<dyn DeviceHost>,
    /// Which host this is.
    pub host: Arc<dyn HostInfo>,
    /// The EBS backend's cloud parts (instance metadata, the EC2 client factory); `None`
    /// where no EBS service can be built.
    #[cfg(feature = "ebs")]
    pub ebs: Option<Arc<ebs::CloudParts>>,
}

impl Environment {
    /// An environment without cloud parts (the local backends, tests).
    pub fn local(os: Arc<dyn BlockOs>, devices: Arc<dyn DeviceHost>, host: Arc<dyn HostInfo>) -> Self {
        Self {
            os,
            devices,
            host,
            #[cfg(feature = "ebs")]
            ebs: None,
        }
    }
}

impl Debug for Environment {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Environment").field("os", &self.os).field("devices", &self.devices).finish_non_exhaustive()
    }
}

/// Joins a validated volume name under a root; the result never leaves `root`.
pub fn volume_path(root: &Path, name: &VolumeName) -> PathBuf {
    // VolumeName guarantees one normal path component (no '/', not '.' or '..').
    root.join(name.as_str())
}

/// Builds the backend a service is configured with, over `env`, its operations measured.
///
/// # Errors
/// [`BackendError::Unavailable`] when the backend is not built into this binary, or a setting
/// it refuses.
pub fn build(service: &ServiceConfig, env: &Environment) -> Result<Backend, BackendError> {
    let backend = match service.backend {
        BackendKind::Vfs => vfs::backend(service, env),
        BackendKind::Loop => loopback::backend(service, env)?,
        #[cfg(feature = "ebs")]
        BackendKind::Ebs => ebs::backend(service, env)?,
        #[cfg(not(feature = "ebs"))]
        BackendKind::Ebs => return Err(BackendError::Unavailable("ebs")),
    };
    Ok(instrumented::instrument(backend))
}

/// Every problem [`build`] would find with a service's backend settings, where it would stop at
/// the first (the `ebs.*` settings are all checked).
pub fn settings_problems(service: &ServiceConfig) -> Vec<BackendError> {
    match service.backend {
        #[cfg(feature = "ebs")]
        BackendKind::Ebs => match ebs::settings::EbsSettings::parse_all(&service.ebs) {
            Err(problems) => problems,
            Ok(_) => block::MountLayout::from_integration(&service.integration).err().into_iter().collect(),
        },
        #[cfg(not(feature = "ebs"))]
        BackendKind::Ebs => vec![BackendError::Unavailable("ebs")],
        BackendKind::Loop => block::MountLayout::from_integration(&service.integration).err().into_iter().collect(),
        BackendKind::Vfs => Vec::new(),
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// An environment over `os` for tests of the local backends (no EC2).
    pub(crate) fn environment(os: Arc<dyn BlockOs>, host: Arc<dyn HostInfo>) -> Environment {
        Environment::local(os, Arc::new(crate::os::linux::LinuxOs::new()), host)
    }

    fn names(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn pages_follow_each_other() {
        let all = names(&["c", "a", "b", "d", "a"]);
        let first = Page::of(all.clone(), &PageRequest { after: None, max: 2 });
        assert_eq!(first, Page { names: names(&["a", "b"]), next: Some("b".into()), stale: None });
        let second = Page::of(all.clone(), &PageRequest { after: first.next, max: 2 });
        assert_eq!(second, Page { names: names(&["c", "d"]), next: None, stale: None });
        assert_eq!(Page::of(all, &PageRequest::default()).names.len(), 4);
    }
}
