//! The node half shared by every block backend (`loop`, `ebs`): [`BlockNode`].
//!
//! A block backend's controller gets a device attached to a node and says in the
//! [`PublishContext`] how to find it; a [`DeviceSource`] turns that context into the device,
//! checking that it is the volume's own (loop: backed by the volume's image; EBS: the serial
//! names the volume). [`BlockNode`] does everything after that, the same way for every backend:
//!
//! - **stage**: probe (an ext4/XFS superblock is recognised directly; anything else goes to
//!   `blkid -p`) → format only when blank → mount at the staging path (`<mount.path>/<name>` for
//!   the Docker front; XFS with `nouuid`, plus the volume's `mountOptions`). A file system
//!   smaller than its device (the image or disk was enlarged) is grown: ext4 before mounting
//!   (`e2fsck -f -p`, `resize2fs`), XFS right after (`xfs_growfs`). The sizes are compared from
//!   the superblock first, so an ordinary mount runs no extra tool.
//! - **publish** without a target (the Docker front): create the `rootPath` directory (default
//!   `data`) with the volume's mode and owner and hand out `<staging>/<rootPath>`; with a target
//!   (CSI): bind-mount the staging path there, read-only if asked.
//! - **unstage**: `syncfs` → unmount (a lazy `MNT_DETACH` only as a logged last resort after
//!   `EBUSY`). The data stays.
//!
//! Every step checks reality first (already formatted, mounted → go on), so each call is
//! idempotent and picks up where a killed daemon left off. A failed stage unmounts what it
//! mounted, and the error names the step and the device. A device holding a partition table or
//! any signature other than ext4/XFS is refused, never formatted; so is a device that is not the
//! volume's own.
//!
//! OS work runs through [`BlockOs`] inside `spawn_blocking`, so the node is unit-tested against
//! the recording fake with exact call sequences.

pub mod options;

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Debug;
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;

use async_trait::async_trait;

pub use options::{BlockDefaults, BlockOptions, MountOptions, BLOCK_SPECS};

use super::options::{OptionSpec, Options};
use super::os_call::{blocking, step_error};
use super::{volume_path, BackendError, Node, PublishContext, VolumeStats};
use crate::config::Integration;
use crate::name::VolumeName;
use crate::os::{BlockOs, DirSpec, Entry, FsType, Probe};

/// Turns a controller's [`PublishContext`] into the volume's block device on this host.
#[async_trait]
pub trait DeviceSource: Send + Sync + Debug {
    /// The device `ctx` names (resolved, as the mount table shows it), once it is there, after
    /// checking that it is the volume's own.
    ///
    /// # Errors
    /// [`BackendError::ForeignDevice`], a timeout, or a context that names no device.
    async fn device(&self, name: &VolumeName, ctx: &PublishContext) -> Result<PathBuf, BackendError>;
}

/// Where volumes are mounted and which directory in them is handed out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountLayout {
    /// `mount.path`: volume `v` is mounted at `<mount_root>/v`.
    mount_root: PathBuf,
    /// `mount.rootPath` as a relative path; empty = the mount root itself.
    root_path: PathBuf,
    /// `linux.volume.filemode`: mode of the root path directory unless the volume sets `mode`.
    file_mode: u32,
}

impl MountLayout {
    /// A layout mounting under `mount_root` and handing out `root_path` (`/data`, `data`, `""`).
    ///
    /// # Errors
    /// [`BackendError::Invalid`] when `root_path` contains `..`.
    pub fn new(mount_root: PathBuf, root_path: &str, file_mode: u32) -> Result<Self, BackendError> {
        let mut rel = PathBuf::new();
        for component in Path::new(root_path).components() {
            match component {
                Component::RootDir | Component::CurDir => {}
                Component::Normal(part) => rel.push(part),
                Component::ParentDir | Component::Prefix(_) => {
                    return Err(BackendError::invalid(format!(
                        "mount.rootPath {root_path:?} must stay inside the volume (no '..')"
                    )))
                }
            }
        }
        Ok(Self { mount_root, root_path: rel, file_mode })
    }

    /// The layout the config's integration settings describe.
    ///
    /// # Errors
    /// As [`MountLayout::new`].
    pub fn from_integration(integration: &Integration) -> Result<Self, BackendError> {
        Self::new(integration.mount_path.clone(), &integration.root_path, integration.file_mode)
    }

    /// Where the volume is mounted: `<mount.path>/<name>`.
    pub fn mount_dir(&self, name: &VolumeName) -> PathBuf {
        volume_path(&self.mount_root, name)
    }

    /// What is handed to Docker: `<mount.path>/<name>/<rootPath>`.
    pub fn data_dir(&self, name: &VolumeName) -> PathBuf {
        self.data_dir_in(&self.mount_dir(name))
    }

    /// `<staging>/<rootPath>`.
    fn data_dir_in(&self, staging: &Path) -> PathBuf {
        if self.root_path.as_os_str().is_empty() {
            staging.to_path_buf()
        } else {
            staging.join(&self.root_path)
        }
    }
}

/// Everything staging needs to know, computed up front so it can move to a blocking thread.
#[derive(Debug, Clone)]
struct Plan {
    mount_dir: PathBuf,
    /// The root path relative to the mount; empty when the mount root is handed out.
    root_path: PathBuf,
    block: BlockOptions,
    dir_spec: DirSpec,
}

impl Plan {
    /// Whether the volume sets an owner or mode of its own (applied to a fresh mount root).
    fn has_own_dir_spec(&self) -> bool {
        self.block.uid.is_some() || self.block.gid.is_some() || self.block.mode.is_some()
    }
}

/// The node half of a block backend; see the module documentation.
#[derive(Debug, Clone)]
pub struct BlockNode {
    /// Every syscall and tool.
    os: Arc<dyn BlockOs>,
    /// How the backend's devices are found.
    devices: Arc<dyn DeviceSource>,
    /// Where volumes are mounted.
    layout: MountLayout,
    /// The config's default size and file system.
    defaults: BlockDefaults,
}

impl BlockNode {
    /// A node over `os` finding devices with `devices`.
    pub fn new(
        os: Arc<dyn BlockOs>,
        devices: Arc<dyn DeviceSource>,
        layout: MountLayout,
        defaults: BlockDefaults,
    ) -> Self {
        Self { os, devices, layout, defaults }
    }

    /// The OS layer.
    pub fn os(&self) -> &Arc<dyn BlockOs> {
        &self.os
    }

    /// The mount layout.
    pub fn layout(&self) -> &MountLayout {
        &self.layout
    }

    /// Validates Docker's `Opts` against the block options plus the backend's `extra` specs and
    /// fills in the defaults (see [`options::parse`]).
    ///
    /// # Errors
    /// [`BackendError::UnknownOption`] or [`BackendError::InvalidOption`].
    pub fn parse_options(&self, raw: &BTreeMap<String, String>, extra: &[OptionSpec]) -> Result<Options, BackendError> {
        options::parse(raw, extra, &self.defaults)
    }

    /// The typed form of a volume's stored options.
    ///
    /// # Errors
    /// [`BackendError::InvalidOption`] for a stored value that no longer checks out.
    pub fn block_options(&self, opts: &Options) -> Result<BlockOptions, BackendError> {
        BlockOptions::from_options(opts, &self.defaults)
    }

    fn plan(&self, staging: &Path, block: BlockOptions) -> Plan {
        let dir_spec = DirSpec { mode: block.mode.unwrap_or(self.layout.file_mode), uid: block.uid, gid: block.gid };
        Plan { mount_dir: staging.to_path_buf(), root_path: self.layout.root_path.clone(), block, dir_spec }
    }

    /// Flushes the volume's file system to its device when it is mounted at its Docker staging
    /// path (before a snapshot); returns whether it was mounted.
    ///
    /// # Errors
    /// The mount table could not be read, or `syncfs` failed.
    pub async fn sync_if_mounted(&self, name: &VolumeName) -> Result<bool, BackendError> {
        let mount_dir = self.layout.mount_dir(name);
        blocking(&self.os, "sync", move |os| {
            let Some(entry) = os.mounted_at(&mount_dir).map_err(step_error("read mounts for", &mount_dir))? else {
                return Ok(false);
            };
            os.syncfs(&mount_dir).map_err(step_error("sync", &entry.source))?;
            Ok(true)
        })
        .await
    }

    /// Removes the volume's Docker staging directory if it is empty (after the volume is
    /// deleted). A failure is only logged: it leaves an empty directory behind, nothing more.
    pub async fn remove_mount_dir(&self, name: &VolumeName) {
        let mount_dir = self.layout.mount_dir(name);
        let result = blocking(&self.os, "remove mount directory", move |os| {
            os.remove_empty_dir(&mount_dir).map_err(step_error("remove mount directory", &mount_dir))
        })
        .await;
        if let Err(error) = result {
            tracing::warn!(volume = %name, %error, "could not remove the volume's mount directory");
        }
    }
}

#[async_trait]
impl Node for BlockNode {
    fn staging_path(&self, name: &VolumeName) -> PathBuf {
        self.layout.mount_dir(name)
    }

    fn data_path(&self, name: &VolumeName) -> PathBuf {
        self.layout.data_dir(name)
    }

    async fn stage(
        &self,
        name: &VolumeName,
        opts: &Options,
        ctx: &PublishContext,
        staging: &Path,
    ) -> Result<(), BackendError> {
        let plan = self.plan(staging, self.block_options(&ctx.fixed_over(opts))?);
        let device = self.devices.device(name, ctx).await?;
        crate::crashpoint::hit("device found");
        let token = crate::crashpoint::token();
        blocking(&self.os, "stage", move |os| stage_local(os, &plan, &device, &token)).await
    }

    async fn stage_block(&self, name: &VolumeName, ctx: &PublishContext, staging: &Path) -> Result<(), BackendError> {
        let device = self.devices.device(name, ctx).await?;
        crate::crashpoint::hit("device found");
        let (staging, file) = (staging.to_path_buf(), staging.join(super::BLOCK_FILE));
        blocking(&self.os, "stage", move |os| {
            if os.mounted_at(&file).map_err(step_error("read mounts for", &file))?.is_some() {
                return Ok(());
            }
            if os.entry(&staging).map_err(step_error("examine", &staging))? == Entry::Missing {
                os.make_dir(&staging).map_err(step_error("make the directory", &staging))?;
            }
            make_file(os, &file)?;
            os.bind_mount(&device, &file, false).map_err(step_error("bind the device on", &file))?;
            tracing::info!(device = %device.display(), file = %file.display(), "staged for raw block access");
            Ok(())
        })
        .await
    }

    async fn publish_block(
        &self,
        _name: &VolumeName,
        staging: &Path,
        target: &Path,
        read_only: bool,
    ) -> Result<(), BackendError> {
        bind(&self.os, &staging.join(super::BLOCK_FILE), target, read_only).await.map(drop)
    }

    async fn block_size(&self, path: &Path) -> Result<u64, BackendError> {
        let path = path.to_path_buf();
        blocking(&self.os, "stats", move |os| os.device_size(&path).map_err(step_error("read the size of", &path)))
            .await
    }

    async fn unstage(&self, _name: &VolumeName, staging: &Path) -> Result<(), BackendError> {
        let mount_dir = staging.to_path_buf();
        blocking(&self.os, "unstage", move |os| unstage_local(os, &mount_dir)).await
    }

    async fn unstage_block(&self, _name: &VolumeName, staging: &Path) -> Result<(), BackendError> {
        unbind(&self.os, &staging.join(super::BLOCK_FILE), true).await
    }

    async fn expand_fs(
        &self,
        name: &VolumeName,
        opts: &Options,
        staging: &Path,
        size_gib: Option<u64>,
    ) -> Result<(), BackendError> {
        let fs = self.block_options(opts)?.fs_type;
        let want = size_gib.unwrap_or(0).saturating_mul(1 << 30);
        let (mount_dir, volume) = (staging.to_path_buf(), name.clone());
        let limit = crate::deadline::cap(DEVICE_GROWTH_WAIT);
        blocking(&self.os, "grow", move |os| {
            let Some(entry) = os.mounted_at(&mount_dir).map_err(step_error("read mounts for", &mount_dir))? else {
                return Err(BackendError::invalid(format!(
                    "volume {volume} is not mounted at {}, so its file system cannot be grown there",
                    mount_dir.display()
                )));
            };
            let device = entry.source;
            wait_for_device_size(os, &volume, &device, want, limit)?;
            if os.needs_grow(&device, fs).map_err(step_error("read the size of", &device))? {
                os.grow(&device, fs, Some(&mount_dir)).map_err(|e| online_grow_error(&volume, &device, fs, e))?;
                tracing::info!(volume = %volume, device = %device.display(), %fs, "grew the mounted file system");
            }
            Ok(())
        })
        .await
    }

    async fn is_staged(&self, _name: &VolumeName, staging: &Path) -> Result<bool, BackendError> {
        let mount_dir = staging.to_path_buf();
        blocking(&self.os, "is_staged", move |os| {
            os.mounted_at(&mount_dir).map(|m| m.is_some()).map_err(step_error("read mounts for", &mount_dir))
        })
        .await
    }

    async fn staged(&self) -> Result<BTreeSet<String>, BackendError> {
        let root = self.layout.mount_root.clone();
        let mounts = blocking(&self.os, "staged", move |os| {
            os.mounts_under(&root).map_err(step_error("read mounts under", &root))
        })
        .await?;
        Ok(mounts.into_iter().map(|(name, _)| name).collect())
    }

    async fn publish(
        &self,
        _name: &VolumeName,
        opts: &Options,
        staging: &Path,
        target: Option<&Path>,
        read_only: bool,
    ) -> Result<PathBuf, BackendError> {
        if let Some(target) = target {
            return bind(&self.os, staging, target, read_only).await;
        }
        let plan = self.plan(staging, self.block_options(opts)?);
        let handed_out = self.layout.data_dir_in(staging);
        blocking(&self.os, "publish", move |os| prepare_root_path(os, &plan)).await?;
        Ok(handed_out)
    }

    async fn unpublish(&self, _name: &VolumeName, target: &Path) -> Result<(), BackendError> {
        unbind(&self.os, target, true).await
    }

    async fn stats(&self, path: &Path) -> Result<VolumeStats, BackendError> {
        let path = path.to_path_buf();
        blocking(&self.os, "stats", move |os| os.statfs(&path).map_err(step_error("read the usage of", &path))).await
    }

    async fn forget(&self, name: &VolumeName) {
        self.remove_mount_dir(name).await;
    }
}

/// Bind-mounts `source` on `target` (read-only if asked) unless it is bound there already. A
/// missing target is made: a directory for a directory, else an empty file (a raw block
/// volume's device).
pub(crate) async fn bind(
    os: &Arc<dyn BlockOs>,
    source: &Path,
    target: &Path,
    read_only: bool,
) -> Result<PathBuf, BackendError> {
    let (source, target) = (source.to_path_buf(), target.to_path_buf());
    blocking(os, "publish", move |os| {
        if os.mounted_at(&target).map_err(step_error("read mounts for", &target))?.is_some() {
            tracing::debug!(target = %target.display(), "already published");
            return Ok(target);
        }
        if os.entry(&target).map_err(step_error("examine", &target))? == Entry::Missing {
            // An orchestrator makes the target's parent; the target itself is the plugin's to make.
            if os.entry(&source).map_err(step_error("examine", &source))? == Entry::Directory {
                os.make_dir(&target).map_err(step_error("make the directory", &target))?;
            } else {
                make_file(os, &target)?;
            }
        }
        os.bind_mount(&source, &target, read_only).map_err(step_error("bind-mount", &target))?;
        tracing::info!(source = %source.display(), target = %target.display(), read_only, "published");
        Ok(target)
    })
    .await
}

/// Makes the empty regular file `path` for a device to be bound on, unless one is there; a
/// link or anything else in its place is refused.
fn make_file(os: &dyn BlockOs, path: &Path) -> Result<(), BackendError> {
    os.create_sparse(path, 0).map_err(step_error("make the file", path))?;
    let what = match os.entry(path).map_err(step_error("examine", path))? {
        Entry::File { .. } => return Ok(()),
        Entry::Symlink => "a symbolic link",
        Entry::Directory => "a directory",
        Entry::Missing => "missing",
        Entry::Other => "a special file",
    };
    Err(BackendError::invalid(format!(
        "{} should be a regular file for a block device to be bound on, but is {what}",
        path.display()
    )))
}

/// Unmounts the bind mount at `target`, if there is one; with `remove`, the empty directory or
/// file [`bind`] made there goes too (an orchestrator's publish target is the plugin's to make
/// and to remove; its staging directory is not).
pub(crate) async fn unbind(os: &Arc<dyn BlockOs>, target: &Path, remove: bool) -> Result<(), BackendError> {
    let target = target.to_path_buf();
    blocking(os, "unpublish", move |os| unbind_local(os, &target, remove)).await
}

/// [`unbind`] on a blocking thread.
fn unbind_local(os: &dyn BlockOs, target: &Path, remove: bool) -> Result<(), BackendError> {
    if os.entry(target).map_err(step_error("examine", target))? == Entry::Symlink {
        return Err(step_error("unmount", target)(crate::os::OsError::Symlink(target.to_path_buf())));
    }
    if os.mounted_at(target).map_err(step_error("read mounts for", target))?.is_some() {
        unmount(os, target, target)?;
        tracing::info!(target = %target.display(), "unpublished");
    }
    if !remove {
        return Ok(());
    }
    match os.entry(target).map_err(step_error("examine", target))? {
        Entry::File { size: 0 } => drop(os.remove_file(target).map_err(step_error("remove", target))?),
        Entry::Directory => drop(os.remove_empty_dir(target).map_err(step_error("remove", target))?),
        _ => {}
    }
    Ok(())
}

/// Staging on a blocking thread: everything after the device was found.
fn stage_local(
    os: &dyn BlockOs,
    plan: &Plan,
    device: &Path,
    crash: &crate::crashpoint::Token,
) -> Result<(), BackendError> {
    let mount_dir = &plan.mount_dir;
    match os.mounted_at(mount_dir).map_err(step_error("read mounts for", mount_dir))? {
        Some(entry) if entry.source == device => {
            tracing::debug!(device = %device.display(), mount = %mount_dir.display(), "already mounted");
            return Ok(());
        }
        Some(entry) => {
            return Err(BackendError::ForeignDevice {
                what: format!(
                    "{} is already mounted from {}, not from the volume's device {}",
                    mount_dir.display(),
                    entry.source.display(),
                    device.display()
                ),
            })
        }
        None => {}
    }

    let (fs, formatted) = format_if_blank(os, plan, device)?;
    crash.hit("probed or formatted");

    // A read-only mount cannot grow, and a new file system already fills its device.
    let grow = !formatted
        && !plan.block.mount.read_only()
        && os.needs_grow(device, fs).map_err(step_error("read the size of", device))?;
    if grow && !fs.grows_mounted() {
        os.grow(device, fs, None).map_err(step_error("grow", device))?;
        tracing::info!(device = %device.display(), %fs, "grew the file system to fill the device");
    }

    os.make_dir(mount_dir).map_err(step_error("create mount directory", mount_dir))?;
    let data = plan.block.mount.data_for(fs);
    os.mount(device, mount_dir, fs, plan.block.mount.flags, &data).map_err(step_error("mount", device))?;
    tracing::info!(device = %device.display(), mount = %mount_dir.display(), %fs, options = %data, "mounted");
    crash.hit("mounted");

    let rest = (|| {
        if grow && fs.grows_mounted() {
            os.grow(device, fs, Some(mount_dir)).map_err(step_error("grow", device))?;
            tracing::info!(device = %device.display(), %fs, "grew the file system to fill the device");
        }
        // With no root path, a file system made just now gets the volume's own mode and owner
        // (if it sets one) on its root.
        if formatted && plan.root_path.as_os_str().is_empty() && plan.has_own_dir_spec() {
            os.set_owner_mode(mount_dir, plan.dir_spec).map_err(step_error("set owner and mode of", mount_dir))?;
        }
        Ok(())
    })();
    if let Err(err) = rest {
        match unmount(os, mount_dir, device) {
            Ok(()) => tracing::info!(device = %device.display(), mount = %mount_dir.display(), "rollback: unmounted"),
            Err(cleanup) => tracing::warn!(
                device = %device.display(), mount = %mount_dir.display(), error = %err, %cleanup,
                "rollback: could not unmount after a failed stage"
            ),
        }
        return Err(err);
    }
    Ok(())
}

/// Probes `device`; formats it when blank. Returns the file system to mount and whether it was
/// made just now.
fn format_if_blank(os: &dyn BlockOs, plan: &Plan, device: &Path) -> Result<(FsType, bool), BackendError> {
    let wanted = plan.block.fs_type;
    match os.probe(device).map_err(step_error("probe", device))? {
        Probe::Blank => {
            if plan.block.mount.read_only() {
                return Err(BackendError::invalid(format!(
                    "{} is blank and the volume is read-only (mountOptions ro): not formatting it",
                    device.display()
                )));
            }
            os.mkfs(device, wanted, &plan.block.mkfs_options).map_err(step_error("format", device))?;
            tracing::info!(device = %device.display(), fs = %wanted, "formatted");
            Ok((wanted, true))
        }
        Probe::Filesystem(found) => match FsType::parse(&found) {
            Some(fs) => {
                if fs != wanted {
                    tracing::warn!(
                        device = %device.display(), found = %fs, fs_type = %wanted,
                        "the device holds another file system than the volume's fsType; mounting what is there"
                    );
                }
                Ok((fs, false))
            }
            None => Err(BackendError::NotBlank {
                device: device.to_path_buf(),
                found: format!("holds a {found} signature, not ext4 or xfs"),
            }),
        },
        Probe::PartitionTable(table) => Err(BackendError::NotBlank {
            device: device.to_path_buf(),
            found: format!("holds a partition table ({table})"),
        }),
        Probe::Unrecognized(what) => {
            Err(BackendError::NotBlank { device: device.to_path_buf(), found: format!("is not blank ({what})") })
        }
    }
}

/// Creates the root path directory with the volume's mode and owner, following no link inside
/// the volume (a container may have planted one).
fn prepare_root_path(os: &dyn BlockOs, plan: &Plan) -> Result<(), BackendError> {
    if plan.root_path.as_os_str().is_empty() {
        return Ok(());
    }
    let dir = plan.mount_dir.join(&plan.root_path);
    if os
        .ensure_dir_beneath(&plan.mount_dir, &plan.root_path, plan.dir_spec)
        .map_err(step_error("create data directory", &dir))?
    {
        let owner = |id: Option<u32>| id.map_or_else(|| "unchanged".to_owned(), |id| id.to_string());
        tracing::info!(path = %dir.display(), mode = format!("{:04o}", plan.dir_spec.mode), uid = %owner(plan.dir_spec.uid),
            gid = %owner(plan.dir_spec.gid), "created data directory");
    }
    Ok(())
}

/// Unstaging on a blocking thread: sync and unmount if mounted.
/// The error of an online grow; ext4's needs `CAP_SYS_RESOURCE`, which containers (and managed
/// plugins) often lack: said so, with what happens instead.
fn online_grow_error(volume: &VolumeName, device: &Path, fs: FsType, e: crate::os::OsError) -> BackendError {
    let denied = matches!(&e, crate::os::OsError::Tool { stderr, .. } if stderr.contains("Permission denied"));
    if fs == FsType::Ext4 && denied {
        return BackendError::invalid(format!(
            "volume {volume} grew, but its ext4 file system on {} cannot grow while mounted: online resize2fs needs \
             CAP_SYS_RESOURCE, which this daemon lacks; it grows at the volume's next mount (or run the daemon with \
             that capability, or use xfs)",
            device.display()
        ));
    }
    step_error("grow", device)(e)
}

/// How long a grown volume's device may take to show its new size on this host (EBS: the
/// NVMe device follows the modification after a moment).
const DEVICE_GROWTH_WAIT: std::time::Duration = std::time::Duration::from_secs(30);

/// Waits (on this blocking thread, at most `limit`) until `device` is at least `want` bytes.
fn wait_for_device_size(
    os: &dyn BlockOs,
    volume: &VolumeName,
    device: &Path,
    want: u64,
    limit: std::time::Duration,
) -> Result<(), BackendError> {
    let start = std::time::Instant::now();
    loop {
        let size = os.device_size(device).map_err(step_error("read the size of", device))?;
        if size >= want {
            return Ok(());
        }
        if start.elapsed() >= limit {
            return Err(BackendError::Timeout {
                op: format!("the device {} of volume {volume} to show its new size", device.display()),
                elapsed: start.elapsed(),
                last_seen: format!("{size} of {want} bytes"),
                hint: "; the storage has grown, and the file system grows at the next resize or mount".into(),
            });
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

fn unstage_local(os: &dyn BlockOs, mount_dir: &Path) -> Result<(), BackendError> {
    let Some(entry) = os.mounted_at(mount_dir).map_err(step_error("read mounts for", mount_dir))? else {
        tracing::debug!(mount = %mount_dir.display(), "not mounted");
        return Ok(());
    };
    os.syncfs(mount_dir).map_err(step_error("sync", &entry.source))?;
    unmount(os, mount_dir, &entry.source)?;
    tracing::info!(device = %entry.source.display(), mount = %mount_dir.display(), "unmounted");
    Ok(())
}

/// Unmounts `mount_dir`; when that fails with `EBUSY`, detaches it lazily and says so.
fn unmount(os: &dyn BlockOs, mount_dir: &Path, device: &Path) -> Result<(), BackendError> {
    match os.unmount(mount_dir, false) {
        Ok(()) => Ok(()),
        Err(busy) if busy.is_busy() => {
            tracing::warn!(
                device = %device.display(), mount = %mount_dir.display(), error = %busy,
                "unmount: still in use; detaching the mount lazily (MNT_DETACH): the file system stays alive until its last user closes it"
            );
            os.unmount(mount_dir, true).map_err(step_error("unmount", device))
        }
        Err(e) => Err(step_error("unmount", device)(e)),
    }
}

#[cfg(test)]
mod tests {
    use std::io::ErrorKind;

    use super::*;
    use crate::backend::loopback::LoopDevices;
    use crate::os::fake::{Call, CallKind, Failure, FakeOs};
    use crate::os::MountFlags;

    const IMG: &str = "/loop/v1.img";
    const DEV: &str = "/dev/loop0";
    const MNT: &str = "/mnt/v1";
    const DATA: &str = "/mnt/v1/data";
    const SPEC: DirSpec = DirSpec { mode: 0o700, uid: None, gid: None };

    fn setup(root_path: &str) -> (Arc<FakeOs>, BlockNode) {
        let os = Arc::new(FakeOs::new());
        os.add_file(IMG, 1 << 30);
        let devices = Arc::new(LoopDevices::new(os.clone(), "/loop".into()));
        let layout = MountLayout::new("/mnt".into(), root_path, 0o700).unwrap();
        let defaults = BlockDefaults { size_gib: 16, fs_type: "ext4".into() };
        (os.clone(), BlockNode::new(os, devices, layout, defaults))
    }

    /// The volume's image attached as the controller would have (not recorded).
    fn published(os: &FakeOs) -> PublishContext {
        let device = os.attach_existing(IMG);
        PublishContext::new().with(PublishContext::DEVICE, device.display().to_string())
    }

    fn opts(p: &BlockNode, pairs: &[(&str, &str)]) -> Options {
        p.parse_options(&pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(), &[]).unwrap()
    }

    fn v1() -> VolumeName {
        VolumeName::new("v1").unwrap()
    }

    /// Stages at the Docker staging path and hands the data directory out.
    async fn stage(p: &BlockNode, ctx: &PublishContext, o: &Options) -> Result<PathBuf, BackendError> {
        p.stage(&v1(), o, ctx, Path::new(MNT)).await?;
        p.publish(&v1(), o, Path::new(MNT), None, false).await
    }

    fn backed() -> Call {
        Call::LoopBackedBy { device: DEV.into(), image: IMG.into() }
    }
    fn mounted_at() -> Call {
        Call::MountedAt { target: MNT.into() }
    }
    fn probe() -> Call {
        Call::Probe { device: DEV.into() }
    }
    fn mkfs(fs: FsType, extra: &[&str]) -> Call {
        Call::Mkfs { device: DEV.into(), fs, extra: extra.iter().map(std::string::ToString::to_string).collect() }
    }
    fn make_dir() -> Call {
        Call::MakeDir { path: MNT.into() }
    }
    fn mount(fs: FsType, flags: MountFlags, data: &str) -> Call {
        Call::Mount { device: DEV.into(), target: MNT.into(), fs, flags, data: data.into() }
    }
    fn needs_grow(fs: FsType) -> Call {
        Call::NeedsGrow { device: DEV.into(), fs }
    }
    fn grow(fs: FsType, mounted: bool) -> Call {
        Call::Grow { device: DEV.into(), fs, mountpoint: mounted.then(|| MNT.into()) }
    }
    fn ensure_data(spec: DirSpec) -> Call {
        Call::EnsureDirBeneath { base: MNT.into(), rel: "data".into(), spec }
    }
    fn unmount(lazy: bool) -> Call {
        Call::Unmount { target: MNT.into(), lazy }
    }

    #[tokio::test]
    async fn first_stage_of_a_blank_device_formats_and_mounts() {
        let (os, p) = setup("/data");
        let ctx = published(&os);
        let path = stage(&p, &ctx, &opts(&p, &[])).await.unwrap();
        assert_eq!(path, Path::new(DATA));
        assert_eq!(
            os.calls(),
            vec![
                backed(),
                mounted_at(),
                probe(),
                mkfs(FsType::Ext4, &[]),
                make_dir(),
                mount(FsType::Ext4, MountFlags::empty(), ""),
                ensure_data(SPEC),
            ]
        );
        assert!(p.is_staged(&v1(), Path::new(MNT)).await.unwrap());
        assert_eq!(p.staged().await.unwrap(), BTreeSet::from(["v1".to_owned()]));
    }

    #[tokio::test]
    async fn an_enlarged_ext4_grows_before_and_xfs_after_mounting() {
        let (os, p) = setup("/data");
        os.set_probe(IMG, Probe::Filesystem("ext4".into()));
        os.set_needs_grow(IMG);
        let ctx = published(&os);
        stage(&p, &ctx, &opts(&p, &[])).await.unwrap();
        assert_eq!(
            os.take_calls(),
            vec![
                backed(),
                mounted_at(),
                probe(),
                needs_grow(FsType::Ext4),
                grow(FsType::Ext4, false),
                make_dir(),
                mount(FsType::Ext4, MountFlags::empty(), ""),
                ensure_data(SPEC),
            ]
        );
        let (os, p) = setup("/data");
        os.set_probe(IMG, Probe::Filesystem("xfs".into()));
        os.set_needs_grow(IMG);
        let ctx = published(&os);
        stage(&p, &ctx, &opts(&p, &[("fsType", "xfs")])).await.unwrap();
        assert_eq!(
            os.calls(),
            vec![
                backed(),
                mounted_at(),
                probe(),
                needs_grow(FsType::Xfs),
                make_dir(),
                mount(FsType::Xfs, MountFlags::empty(), "nouuid"),
                grow(FsType::Xfs, true),
                ensure_data(SPEC),
            ]
        );
    }

    #[tokio::test]
    async fn an_already_mounted_volume_is_not_mounted_again() {
        let (os, p) = setup("/data");
        let ctx = published(&os);
        let o = opts(&p, &[]);
        stage(&p, &ctx, &o).await.unwrap();
        os.take_calls();
        assert_eq!(stage(&p, &ctx, &o).await.unwrap(), Path::new(DATA));
        assert_eq!(os.calls(), vec![backed(), mounted_at(), ensure_data(SPEC)]);
    }

    #[tokio::test]
    async fn unstage_syncs_and_unmounts_and_is_idempotent() {
        let (os, p) = setup("/data");
        let ctx = published(&os);
        stage(&p, &ctx, &opts(&p, &[])).await.unwrap();
        os.take_calls();
        p.unstage(&v1(), Path::new(MNT)).await.unwrap();
        assert_eq!(os.take_calls(), vec![mounted_at(), Call::Syncfs { target: MNT.into() }, unmount(false)]);
        assert!(!p.is_staged(&v1(), Path::new(MNT)).await.unwrap());
        assert!(os.attached(Path::new(IMG)).is_some(), "the device is the controller's to let go");
        os.take_calls();
        p.unstage(&v1(), Path::new(MNT)).await.unwrap();
        assert_eq!(os.calls(), vec![mounted_at()]);
    }

    #[tokio::test]
    async fn a_failed_format_or_mount_leaves_nothing_mounted() {
        let (os, p) = setup("/data");
        let ctx = published(&os);
        os.fail_next(CallKind::Mkfs, Failure::Tool("mkfs.ext4: no space".into()));
        let err = stage(&p, &ctx, &opts(&p, &[])).await.unwrap_err();
        assert!(matches!(&err, BackendError::Step { step: "format", device, .. } if device == Path::new(DEV)), "{err}");
        assert_eq!(os.calls(), vec![backed(), mounted_at(), probe(), mkfs(FsType::Ext4, &[])]);

        let (os, p) = setup("/data");
        let ctx = published(&os);
        os.fail_next(CallKind::Mount, Failure::Io(ErrorKind::InvalidInput));
        let err = stage(&p, &ctx, &opts(&p, &[])).await.unwrap_err();
        assert!(matches!(&err, BackendError::Step { step: "mount", device, .. } if device == Path::new(DEV)), "{err}");
        assert!(os.mounted(Path::new(MNT)).is_none());
        // The file system made before the failure stays: the next try does not format again.
        os.take_calls();
        stage(&p, &ctx, &opts(&p, &[])).await.unwrap();
        assert!(!os.calls().iter().any(|c| c.kind() == CallKind::Mkfs));
    }

    #[tokio::test]
    async fn a_failed_mount_directory_or_data_directory_is_named() {
        let (os, p) = setup("/data");
        let ctx = published(&os);
        os.fail_next(CallKind::MakeDir, Failure::Io(ErrorKind::PermissionDenied));
        let err = stage(&p, &ctx, &opts(&p, &[])).await.unwrap_err();
        assert!(matches!(&err, BackendError::Step { step: "create mount directory", .. }), "{err}");

        let (os, p) = setup("/data");
        let ctx = published(&os);
        os.fail_next(CallKind::EnsureDirBeneath, Failure::Io(ErrorKind::PermissionDenied));
        let err = stage(&p, &ctx, &opts(&p, &[])).await.unwrap_err();
        assert!(
            matches!(&err, BackendError::Step { step: "create data directory", device, .. } if device == Path::new(DATA)),
            "{err}"
        );
    }

    #[tokio::test]
    async fn grow_failures_leave_nothing_mounted() {
        let (os, p) = setup("/data");
        os.set_probe(IMG, Probe::Filesystem("ext4".into()));
        os.set_needs_grow(IMG);
        let ctx = published(&os);
        os.fail_next(CallKind::Grow, Failure::Tool("e2fsck: UNEXPECTED INCONSISTENCY".into()));
        let err = stage(&p, &ctx, &opts(&p, &[])).await.unwrap_err();
        assert!(matches!(&err, BackendError::Step { step: "grow", device, .. } if device == Path::new(DEV)), "{err}");
        assert_eq!(
            os.calls(),
            vec![backed(), mounted_at(), probe(), needs_grow(FsType::Ext4), grow(FsType::Ext4, false)]
        );

        let (os, p) = setup("/data");
        os.set_probe(IMG, Probe::Filesystem("xfs".into()));
        os.set_needs_grow(IMG);
        let ctx = published(&os);
        os.fail_next(CallKind::Grow, Failure::Tool("xfs_growfs: bad superblock".into()));
        let err = stage(&p, &ctx, &opts(&p, &[("fsType", "xfs")])).await.unwrap_err();
        assert!(matches!(&err, BackendError::Step { step: "grow", .. }), "{err}");
        assert_eq!(
            os.calls()[5..],
            [mount(FsType::Xfs, MountFlags::empty(), "nouuid"), grow(FsType::Xfs, true), unmount(false)]
        );
        assert!(os.mounted(Path::new(MNT)).is_none());
    }

    #[tokio::test]
    async fn foreign_devices_are_refused_never_formatted() {
        for (probe_result, needle) in [
            (Probe::PartitionTable("dos".into()), "partition table (dos)"),
            (Probe::PartitionTable("gpt".into()), "partition table (gpt)"),
            (Probe::Filesystem("swap".into()), "swap signature"),
            (Probe::Filesystem("ntfs".into()), "ntfs signature"),
            (Probe::Filesystem("crypto_LUKS".into()), "crypto_LUKS signature"),
            (Probe::Unrecognized("several conflicting signatures".into()), "not blank"),
        ] {
            let (os, p) = setup("/data");
            os.set_probe(IMG, probe_result.clone());
            let ctx = published(&os);
            let err = stage(&p, &ctx, &opts(&p, &[])).await.unwrap_err();
            let msg = err.to_string();
            assert!(matches!(err, BackendError::NotBlank { .. }), "{msg}");
            assert!(msg.contains(needle) && msg.contains(DEV), "{msg}");
            assert_eq!(os.calls(), vec![backed(), mounted_at(), probe()], "{probe_result:?}");
            assert_eq!(os.signature(Path::new(IMG)), probe_result, "untouched");
        }
    }

    #[tokio::test]
    async fn a_device_that_is_not_the_volumes_own_is_never_touched() {
        let (os, p) = setup("/data");
        os.add_file("/elsewhere/other.img", 1 << 30);
        let other = os.attach_existing("/elsewhere/other.img");
        let ctx = PublishContext::new().with(PublishContext::DEVICE, other.display().to_string());
        let err = stage(&p, &ctx, &opts(&p, &[])).await.unwrap_err();
        assert!(matches!(err, BackendError::ForeignDevice { .. }), "{err}");
        assert!(err.to_string().contains("not backed by the volume's image /loop/v1.img"), "{err}");
        assert_eq!(os.calls(), vec![Call::LoopBackedBy { device: other, image: IMG.into() }]);
        let err = stage(&p, &PublishContext::new(), &opts(&p, &[])).await.unwrap_err();
        assert!(err.to_string().contains("names no loop device"), "{err}");
    }

    #[tokio::test]
    async fn links_planted_at_the_mount_point_or_in_the_volume_are_refused() {
        let (os, p) = setup("/data");
        os.add_symlink(MNT);
        let ctx = published(&os);
        let err = stage(&p, &ctx, &opts(&p, &[])).await.unwrap_err();
        let msg = format!("{err}: {}", std::error::Error::source(&err).map(ToString::to_string).unwrap_or_default());
        assert!(msg.contains(MNT) && msg.contains("symbolic link"), "{msg}");
        assert!(!os.calls().iter().any(|c| c.kind() == CallKind::Mount), "{:?}", os.calls());

        let (os, p) = setup("/data");
        let ctx = published(&os);
        p.stage(&v1(), &opts(&p, &[]), &ctx, Path::new(MNT)).await.unwrap();
        os.add_symlink(DATA);
        let err = p.publish(&v1(), &opts(&p, &[]), Path::new(MNT), None, false).await.unwrap_err();
        let msg = format!("{err}: {}", std::error::Error::source(&err).map(ToString::to_string).unwrap_or_default());
        assert!(msg.contains(DATA) && msg.contains("symbolic link"), "{msg}");
    }

    #[tokio::test]
    async fn a_blank_read_only_volume_is_not_formatted() {
        let (os, p) = setup("/data");
        let ctx = published(&os);
        let err = stage(&p, &ctx, &opts(&p, &[("mountOptions", "ro")])).await.unwrap_err();
        assert!(err.to_string().contains("read-only"), "{err}");
        assert!(!os.calls().iter().any(|c| c.kind() == CallKind::Mkfs));
    }

    #[tokio::test]
    async fn a_read_only_volume_mounts_read_only_and_does_not_grow() {
        let (os, p) = setup("/data");
        os.set_probe(IMG, Probe::Filesystem("ext4".into()));
        os.set_needs_grow(IMG);
        let ctx = published(&os);
        stage(&p, &ctx, &opts(&p, &[("mountOptions", "ro,noatime")])).await.unwrap();
        let calls = os.calls();
        assert!(calls.contains(&mount(FsType::Ext4, MountFlags::RDONLY | MountFlags::NOATIME, "")), "{calls:?}");
        assert!(!calls.iter().any(|c| matches!(c.kind(), CallKind::Grow | CallKind::NeedsGrow)));
    }

    #[tokio::test]
    async fn unmount_ebusy_falls_back_to_a_logged_lazy_unmount() {
        let (os, p) = setup("/data");
        let ctx = published(&os);
        let o = opts(&p, &[]);
        stage(&p, &ctx, &o).await.unwrap();
        os.take_calls();
        os.fail_next(CallKind::Unmount, Failure::Io(ErrorKind::ResourceBusy));
        p.unstage(&v1(), Path::new(MNT)).await.unwrap();
        assert_eq!(
            os.take_calls(),
            vec![mounted_at(), Call::Syncfs { target: MNT.into() }, unmount(false), unmount(true)]
        );

        // The same, synchronously, under a subscriber that captures the warning.
        stage(&p, &ctx, &o).await.unwrap();
        os.fail_next(CallKind::Unmount, Failure::Errno(16)); // EBUSY
        let log = Arc::new(std::sync::Mutex::new(Vec::<u8>::new()));
        let writer = CaptureWriter(log.clone());
        let subscriber = tracing_subscriber::fmt().with_writer(move || writer.clone()).with_ansi(false).finish();
        tracing::subscriber::with_default(subscriber, || unstage_local(os.as_ref(), Path::new(MNT))).unwrap();
        let log = String::from_utf8(log.lock().unwrap().clone()).unwrap();
        assert!(log.contains("WARN") && log.contains("MNT_DETACH") && log.contains("/dev/loop0"), "{log}");
    }

    #[derive(Clone)]
    struct CaptureWriter(Arc<std::sync::Mutex<Vec<u8>>>);

    impl std::io::Write for CaptureWriter {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[tokio::test]
    async fn other_unmount_failures_are_errors() {
        let (os, p) = setup("/data");
        let ctx = published(&os);
        stage(&p, &ctx, &opts(&p, &[])).await.unwrap();
        os.take_calls();
        os.fail_next(CallKind::Unmount, Failure::Io(ErrorKind::PermissionDenied));
        let err = p.unstage(&v1(), Path::new(MNT)).await.unwrap_err();
        assert!(
            matches!(&err, BackendError::Step { step: "unmount", device, .. } if device == Path::new(DEV)),
            "{err}"
        );
        assert_eq!(os.calls(), vec![mounted_at(), Call::Syncfs { target: MNT.into() }, unmount(false)]);
    }

    #[tokio::test]
    async fn xfs_gets_nouuid_and_the_volume_options() {
        let (os, p) = setup("/data");
        let ctx = published(&os);
        let o = opts(&p, &[("fsType", "xfs"), ("mountOptions", "noatime,inode64"), ("mkfsOptions", "-L v1 -m crc=1")]);
        stage(&p, &ctx, &o).await.unwrap();
        let calls = os.calls();
        assert_eq!(calls[3], mkfs(FsType::Xfs, &["-L", "v1", "-m", "crc=1"]));
        assert_eq!(calls[5], mount(FsType::Xfs, MountFlags::NOATIME, "nouuid,inode64"));
    }

    #[tokio::test]
    async fn the_storages_fixed_options_win_over_the_stored_ones() {
        let (os, p) = setup("/data");
        let ctx = published(&os).with("fsType", "xfs").with("mode", "0750");
        stage(&p, &ctx.clone(), &ctx.fixed_over(&opts(&p, &[]))).await.unwrap();
        let calls = os.calls();
        assert_eq!(calls[3], mkfs(FsType::Xfs, &[]));
        assert_eq!(calls.last(), Some(&ensure_data(DirSpec { mode: 0o750, uid: None, gid: None })));
    }

    #[tokio::test]
    async fn an_existing_file_system_of_another_type_is_mounted_as_it_is() {
        let (os, p) = setup("/data");
        os.set_probe(IMG, Probe::Filesystem("xfs".into()));
        let ctx = published(&os);
        stage(&p, &ctx, &opts(&p, &[("fsType", "ext4")])).await.unwrap();
        let calls = os.calls();
        assert!(calls.contains(&mount(FsType::Xfs, MountFlags::empty(), "nouuid")), "{calls:?}");
        assert!(!calls.iter().any(|c| c.kind() == CallKind::Mkfs));
    }

    #[tokio::test]
    async fn data_directory_gets_the_volume_mode_and_owner() {
        let (os, p) = setup("/data");
        let ctx = published(&os);
        stage(&p, &ctx, &opts(&p, &[("mode", "0750"), ("uid", "1000"), ("gid", "1000")])).await.unwrap();
        assert!(os.calls().contains(&ensure_data(DirSpec { mode: 0o750, uid: Some(1000), gid: Some(1000) })));
    }

    #[tokio::test]
    async fn empty_root_path_hands_out_the_mount_root() {
        let (os, p) = setup("");
        let ctx = published(&os);
        let path = stage(&p, &ctx, &opts(&p, &[("uid", "1000")])).await.unwrap();
        assert_eq!(path, Path::new(MNT));
        let spec = DirSpec { mode: 0o700, uid: Some(1000), gid: None };
        assert_eq!(os.calls().last(), Some(&Call::SetOwnerMode { path: MNT.into(), spec }));
        // Without own mode/owner the fresh root is left alone; remounts never touch it.
        let (os, p) = setup("");
        let ctx = published(&os);
        stage(&p, &ctx, &opts(&p, &[])).await.unwrap();
        assert!(!os.calls().iter().any(|c| c.kind() == CallKind::SetOwnerMode));
    }

    #[tokio::test]
    async fn a_mount_point_used_by_another_device_is_refused() {
        let (os, p) = setup("/data");
        os.mount_existing("/dev/sdz", MNT, FsType::Ext4);
        let ctx = published(&os);
        let err = stage(&p, &ctx, &opts(&p, &[])).await.unwrap_err();
        assert!(matches!(err, BackendError::ForeignDevice { .. }) && err.to_string().contains("/dev/sdz"), "{err}");
        assert_eq!(os.calls(), vec![backed(), mounted_at()]);
    }

    #[tokio::test]
    async fn a_target_gets_a_bind_mount_of_the_staging_path() {
        let (os, p) = setup("/data");
        let ctx = published(&os);
        let o = opts(&p, &[]);
        p.stage(&v1(), &o, &ctx, Path::new(MNT)).await.unwrap();
        os.add_dir("/pods/a");
        os.take_calls();
        let target = Path::new("/pods/a");
        assert_eq!(p.publish(&v1(), &o, Path::new(MNT), Some(target), true).await.unwrap(), target);
        assert_eq!(p.publish(&v1(), &o, Path::new(MNT), Some(target), true).await.unwrap(), target, "idempotent");
        let bind = Call::BindMount { source: MNT.into(), target: target.into(), read_only: true };
        assert_eq!(os.calls().iter().filter(|c| **c == bind).count(), 1);
        assert!(os.mounted(target).unwrap().options.starts_with("ro"));
        p.unpublish(&v1(), target).await.unwrap();
        assert!(os.mounted(target).is_none());
        p.unpublish(&v1(), target).await.unwrap();
        assert_eq!(p.stats(target).await.unwrap().total_bytes, 1 << 30);
    }

    #[test]
    fn option_validation_names_the_option() {
        let (_, p) = setup("/data");
        for (k, v) in
            [("fsType", "btrfs"), ("mountOptions", "noatime,bogus"), ("mkfsOptions", "-L `id`"), ("size", "abc")]
        {
            let raw = BTreeMap::from([(k.to_owned(), v.to_owned())]);
            let err = p.parse_options(&raw, &[]).unwrap_err();
            assert!(matches!(&err, BackendError::InvalidOption { key, .. } if key == k), "{err}");
        }
    }

    #[test]
    fn layout_paths() {
        let name = v1();
        let l = MountLayout::new("/mnt".into(), "/data/", 0o700).unwrap();
        assert_eq!(l.mount_dir(&name), Path::new("/mnt/v1"));
        assert_eq!(l.data_dir(&name), Path::new("/mnt/v1/data"));
        assert_eq!(MountLayout::new("/mnt".into(), "", 0o700).unwrap().data_dir(&name), Path::new("/mnt/v1"));
        assert_eq!(MountLayout::new("/mnt".into(), "/", 0o700).unwrap().data_dir(&name), Path::new("/mnt/v1"));
        assert_eq!(MountLayout::new("/mnt".into(), "a/b", 0o700).unwrap().data_dir(&name), Path::new("/mnt/v1/a/b"));
        assert!(MountLayout::new("/mnt".into(), "../etc", 0o700).is_err());
    }
}
