//! The block pipeline shared by every block backend (`loop` now, `ebs` later).
//!
//! A block backend only knows how to get a device for a volume: it implements [`Attacher`].
//! [`BlockPipeline`] does everything after that, the same way for every backend:
//!
//! - **activate**: attach → probe (an ext4/XFS superblock is recognised directly; anything else
//!   goes to `blkid -p`) → format only when blank → mount at `<mount.path>/<name>` (XFS with
//!   `nouuid`, plus the volume's `mountOptions`) → create the `rootPath` directory (default
//!   `data`) with the volume's mode and owner → return `<mount.path>/<name>/<rootPath>`. A file system smaller than its device (the image or disk
//!   was enlarged) is grown: ext4 before mounting (`e2fsck -f -p`, `resize2fs`), XFS right after
//!   (`xfs_growfs`). The sizes are compared from the superblock first, so an ordinary mount runs
//!   no extra tool.
//! - **deactivate**: `syncfs` → unmount (a lazy `MNT_DETACH` only as a logged last resort after
//!   `EBUSY`) → detach. The data stays.
//!
//! Every step checks reality first (already attached, formatted, mounted → go on), so both are
//! idempotent and pick up where a killed daemon left off. A failure rolls back the steps this
//! call did, in reverse order (a mount it made is unmounted, a device it attached is detached;
//! a created mount directory may stay), and the error names the step and the device. A device
//! holding a partition table or any signature other than ext4/XFS is refused, never formatted.
//!
//! OS work runs through [`BlockOs`] inside `spawn_blocking`, so the pipeline is unit-tested
//! against [`crate::os::fake::FakeOs`] with exact call sequences.

pub mod options;

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;

use async_trait::async_trait;

pub use options::{BlockDefaults, BlockOptions, MountOptions, BLOCK_SPECS};

use super::options::{OptionSpec, Options};
use super::{volume_path, BackendError};
use crate::config::Integration;
use crate::os::{BlockOs, DirSpec, FsType, OsError, Probe};
use crate::service::name::VolumeName;

/// A device made available for a volume by [`Attacher::attach`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attachment {
    /// The block device, with symbolic links resolved (`/dev/loop3`, `/dev/nvme1n1`): it is
    /// compared with the mount table's source.
    pub device: PathBuf,
    /// Whether this call attached it (so a failed activation detaches it again), as opposed to
    /// finding it already attached.
    pub newly_attached: bool,
}

/// The backend-specific part of a block backend: getting a volume's device and letting it go.
///
/// Implementations take the volume's stored options (canonical, as returned by the backend's
/// `parse_options`) and may read their own keys from them.
#[async_trait]
pub trait Attacher: Send + Sync + Debug {
    /// Makes the volume's device available on this host. Idempotent: an attached volume returns
    /// its device with `newly_attached: false`.
    ///
    /// # Errors
    /// The device could not be attached (the error names the volume's image/ID).
    async fn attach(&self, name: &VolumeName, opts: &Options) -> Result<Attachment, BackendError>;

    /// Releases the volume's device. Idempotent: a detached volume is success.
    ///
    /// # Errors
    /// The device could not be detached.
    async fn detach(&self, name: &VolumeName, opts: &Options) -> Result<(), BackendError>;

    /// The volume's device if it is attached to this host right now.
    ///
    /// # Errors
    /// The attachments could not be listed.
    async fn find_attached(&self, name: &VolumeName, opts: &Options) -> Result<Option<PathBuf>, BackendError>;
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
    /// [`BackendError::Refused`] when `root_path` contains `..`.
    pub fn new(mount_root: PathBuf, root_path: &str, file_mode: u32) -> Result<Self, BackendError> {
        let mut rel = PathBuf::new();
        for component in Path::new(root_path).components() {
            match component {
                Component::RootDir | Component::CurDir => {}
                Component::Normal(part) => rel.push(part),
                Component::ParentDir | Component::Prefix(_) => {
                    return Err(BackendError::Refused(format!(
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
        let mount_dir = self.mount_dir(name);
        if self.root_path.as_os_str().is_empty() {
            mount_dir
        } else {
            mount_dir.join(&self.root_path)
        }
    }
}

/// Runs `f` against the OS layer on the blocking pool. A panic in `f` is resumed here.
///
/// # Errors
/// `f`'s error, or [`BackendError::Refused`] if the runtime cancelled the task (shutdown).
pub async fn blocking<T, F>(os: &Arc<dyn BlockOs>, what: &'static str, f: F) -> Result<T, BackendError>
where
    T: Send + 'static,
    F: FnOnce(&dyn BlockOs) -> Result<T, BackendError> + Send + 'static,
{
    let os = Arc::clone(os);
    match tokio::task::spawn_blocking(move || f(os.as_ref())).await {
        Ok(result) => result,
        Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
        Err(_) => Err(BackendError::Refused(format!("{what}: the task was cancelled (shutting down)"))),
    }
}

/// Builds a [`BackendError::Step`] for `step` on `device`.
pub fn step_error(step: &'static str, device: &Path) -> impl FnOnce(OsError) -> BackendError {
    let device = device.to_path_buf();
    move |source| BackendError::Step { step, device, source }
}

/// Everything activation needs to know, computed up front so it can move to a blocking thread.
#[derive(Debug, Clone)]
struct Plan {
    mount_dir: PathBuf,
    /// The root path directory; `None` when the mount root is handed out.
    data_dir: Option<PathBuf>,
    block: BlockOptions,
    dir_spec: DirSpec,
}

impl Plan {
    fn handed_out(&self) -> PathBuf {
        self.data_dir.clone().unwrap_or_else(|| self.mount_dir.clone())
    }

    /// Whether the volume sets an owner or mode of its own (applied to a fresh mount root).
    fn has_own_dir_spec(&self) -> bool {
        self.block.uid.is_some() || self.block.gid.is_some() || self.block.mode.is_some()
    }
}

/// attach → probe → format-if-blank → mount → grow → root path directory, and back.
#[derive(Debug, Clone)]
pub struct BlockPipeline {
    /// Every syscall and tool.
    os: Arc<dyn BlockOs>,
    /// The backend's way to get a device.
    attacher: Arc<dyn Attacher>,
    /// Where volumes are mounted.
    layout: MountLayout,
    /// The config's default size and file system.
    defaults: BlockDefaults,
}

impl BlockPipeline {
    /// A pipeline over `os` getting devices from `attacher`.
    pub fn new(
        os: Arc<dyn BlockOs>,
        attacher: Arc<dyn Attacher>,
        layout: MountLayout,
        defaults: BlockDefaults,
    ) -> Self {
        Self { os, attacher, layout, defaults }
    }

    /// The OS layer.
    pub fn os(&self) -> &Arc<dyn BlockOs> {
        &self.os
    }

    /// The mount layout.
    pub fn layout(&self) -> &MountLayout {
        &self.layout
    }

    /// The config defaults.
    pub fn defaults(&self) -> &BlockDefaults {
        &self.defaults
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

    /// The path [`BlockPipeline::activate`] returns.
    pub fn mountpoint(&self, name: &VolumeName) -> PathBuf {
        self.layout.data_dir(name)
    }

    fn plan(&self, name: &VolumeName, block: BlockOptions) -> Plan {
        let mount_dir = self.layout.mount_dir(name);
        let data_dir = self.layout.data_dir(name);
        let dir_spec = DirSpec { mode: block.mode.unwrap_or(self.layout.file_mode), uid: block.uid, gid: block.gid };
        Plan { data_dir: (data_dir != mount_dir).then_some(data_dir), mount_dir, block, dir_spec }
    }

    /// Attaches, formats if blank, mounts, grows and prepares the root path directory; returns
    /// the path to hand to containers. Idempotent.
    ///
    /// # Errors
    /// The failing step with its device ([`BackendError::Step`]), or [`BackendError::Refused`]
    /// for a device that is not blank and not ext4/XFS. Steps this call did are rolled back.
    pub async fn activate(&self, name: &VolumeName, opts: &Options) -> Result<PathBuf, BackendError> {
        let plan = self.plan(name, self.block_options(opts)?);
        let attachment = self.attacher.attach(name, opts).await?;
        if attachment.newly_attached {
            tracing::info!(volume = %name, device = %attachment.device.display(), "attached");
        }
        let device = attachment.device.clone();
        let result = blocking(&self.os, "activate", move |os| activate_local(os, &plan, &device)).await;
        match result {
            Ok(path) => Ok(path),
            Err(err) => {
                if attachment.newly_attached {
                    if let Err(cleanup) = self.attacher.detach(name, opts).await {
                        tracing::warn!(
                            volume = %name, device = %attachment.device.display(), error = %err, %cleanup,
                            "rollback: could not detach the device after a failed activation"
                        );
                    } else {
                        tracing::info!(volume = %name, device = %attachment.device.display(), "rollback: detached");
                    }
                }
                Err(err)
            }
        }
    }

    /// Syncs, unmounts and detaches. Idempotent: an inactive volume is success. The data stays.
    ///
    /// # Errors
    /// The failing step ([`BackendError::Step`]).
    pub async fn deactivate(&self, name: &VolumeName, opts: &Options) -> Result<(), BackendError> {
        let mount_dir = self.layout.mount_dir(name);
        blocking(&self.os, "deactivate", move |os| deactivate_local(os, &mount_dir)).await?;
        self.attacher.detach(name, opts).await
    }

    /// Whether the volume is mounted at `<mount.path>/<name>` right now.
    ///
    /// # Errors
    /// The mount table could not be read.
    pub async fn is_active(&self, name: &VolumeName) -> Result<bool, BackendError> {
        let mount_dir = self.layout.mount_dir(name);
        blocking(&self.os, "is_active", move |os| {
            os.mounted_at(&mount_dir).map(|m| m.is_some()).map_err(step_error("read mounts for", &mount_dir))
        })
        .await
    }

    /// Flushes the volume's file system to its device when it is mounted here (before a
    /// snapshot); returns whether it was mounted.
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

    /// The device the volume is attached as, if any.
    ///
    /// # Errors
    /// The attachments could not be listed.
    pub async fn find_attached(&self, name: &VolumeName, opts: &Options) -> Result<Option<PathBuf>, BackendError> {
        self.attacher.find_attached(name, opts).await
    }

    /// Removes the volume's mount directory if it is empty (after the volume is removed). A
    /// failure is only logged: it leaves an empty directory behind, nothing more.
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

/// The local part of activation, on a blocking thread: everything after attach.
fn activate_local(os: &dyn BlockOs, plan: &Plan, device: &Path) -> Result<PathBuf, BackendError> {
    let mount_dir = &plan.mount_dir;
    match os.mounted_at(mount_dir).map_err(step_error("read mounts for", mount_dir))? {
        Some(entry) if entry.source == device => {
            tracing::debug!(device = %device.display(), mount = %mount_dir.display(), "already mounted");
            prepare_root_path(os, plan, false)?;
            return Ok(plan.handed_out());
        }
        Some(entry) => {
            return Err(BackendError::Refused(format!(
                "{} is already mounted from {}, not from the volume's device {}",
                mount_dir.display(),
                entry.source.display(),
                device.display()
            )))
        }
        None => {}
    }

    let (fs, formatted) = format_if_blank(os, plan, device)?;

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

    let rest = (|| {
        if grow && fs.grows_mounted() {
            os.grow(device, fs, Some(mount_dir)).map_err(step_error("grow", device))?;
            tracing::info!(device = %device.display(), %fs, "grew the file system to fill the device");
        }
        prepare_root_path(os, plan, formatted)
    })();
    match rest {
        Ok(()) => Ok(plan.handed_out()),
        Err(err) => {
            match unmount(os, mount_dir, device) {
                Ok(()) => {
                    tracing::info!(device = %device.display(), mount = %mount_dir.display(), "rollback: unmounted")
                }
                Err(cleanup) => tracing::warn!(
                    device = %device.display(), mount = %mount_dir.display(), error = %err, %cleanup,
                    "rollback: could not unmount after a failed activation"
                ),
            }
            Err(err)
        }
    }
}

/// Probes `device`; formats it when blank. Returns the file system to mount and whether it was
/// made just now.
fn format_if_blank(os: &dyn BlockOs, plan: &Plan, device: &Path) -> Result<(FsType, bool), BackendError> {
    let wanted = plan.block.fs_type;
    match os.probe(device).map_err(step_error("probe", device))? {
        Probe::Blank => {
            if plan.block.mount.read_only() {
                return Err(BackendError::Refused(format!(
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
            None => Err(BackendError::Refused(format!(
                "{} holds a {found} signature, not ext4 or xfs: refusing to mount or format it",
                device.display()
            ))),
        },
        Probe::PartitionTable(table) => Err(BackendError::Refused(format!(
            "{} holds a partition table ({table}): refusing to mount or format it",
            device.display()
        ))),
        Probe::Unrecognized(what) => Err(BackendError::Refused(format!(
            "{} is not blank ({what}): refusing to mount or format it",
            device.display()
        ))),
    }
}

/// Creates the root path directory with the volume's mode and owner. With no root path, a
/// file system made just now gets the volume's own mode/owner (if it sets one) on its root.
fn prepare_root_path(os: &dyn BlockOs, plan: &Plan, formatted: bool) -> Result<(), BackendError> {
    match &plan.data_dir {
        Some(dir) => {
            if os.ensure_dir(dir, plan.dir_spec).map_err(step_error("create data directory", dir))? {
                tracing::info!(path = %dir.display(), mode = format!("{:04o}", plan.dir_spec.mode), uid = ?plan.dir_spec.uid,
                    gid = ?plan.dir_spec.gid, "created data directory");
            }
            Ok(())
        }
        None if formatted && plan.has_own_dir_spec() => os
            .set_owner_mode(&plan.mount_dir, plan.dir_spec)
            .map_err(step_error("set owner and mode of", &plan.mount_dir)),
        None => Ok(()),
    }
}

/// The local part of deactivation: sync and unmount if mounted.
fn deactivate_local(os: &dyn BlockOs, mount_dir: &Path) -> Result<(), BackendError> {
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
    use crate::backend::loopback::LoopAttacher;
    use crate::os::fake::{Call, CallKind, Failure, FakeOs};
    use crate::os::MountFlags;

    const IMG: &str = "/loop/v1.img";
    const DEV: &str = "/dev/loop0";
    const MNT: &str = "/mnt/v1";
    const DATA: &str = "/mnt/v1/data";
    const SPEC: DirSpec = DirSpec { mode: 0o700, uid: None, gid: None };

    fn setup(root_path: &str) -> (Arc<FakeOs>, BlockPipeline) {
        let os = Arc::new(FakeOs::new());
        os.add_file(IMG, 1 << 30);
        let attacher = Arc::new(LoopAttacher::new(os.clone(), "/loop".into()));
        let layout = MountLayout::new("/mnt".into(), root_path, 0o700).unwrap();
        let defaults = BlockDefaults { size_gib: 16, fs_type: "ext4".into() };
        (os.clone(), BlockPipeline::new(os, attacher, layout, defaults))
    }

    fn opts(p: &BlockPipeline, pairs: &[(&str, &str)]) -> Options {
        p.parse_options(&pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(), &[]).unwrap()
    }

    fn v1() -> VolumeName {
        VolumeName::new("v1").unwrap()
    }

    fn find() -> Call {
        Call::LoopFind { image: IMG.into() }
    }
    fn attach() -> Call {
        Call::LoopAttach { image: IMG.into() }
    }
    fn detach(dev: &str) -> Call {
        Call::LoopDetach { device: dev.into() }
    }
    fn mounted_at() -> Call {
        Call::MountedAt { target: MNT.into() }
    }
    fn probe(dev: &str) -> Call {
        Call::Probe { device: dev.into() }
    }
    fn mkfs(fs: FsType, extra: &[&str]) -> Call {
        Call::Mkfs { device: DEV.into(), fs, extra: extra.iter().map(|s| s.to_string()).collect() }
    }
    fn make_dir() -> Call {
        Call::MakeDir { path: MNT.into() }
    }
    fn mount(dev: &str, fs: FsType, flags: MountFlags, data: &str) -> Call {
        Call::Mount { device: dev.into(), target: MNT.into(), fs, flags, data: data.into() }
    }
    fn needs_grow(dev: &str, fs: FsType) -> Call {
        Call::NeedsGrow { device: dev.into(), fs }
    }
    fn grow(dev: &str, fs: FsType, mounted: bool) -> Call {
        Call::Grow { device: dev.into(), fs, mountpoint: mounted.then(|| MNT.into()) }
    }
    fn ensure_data(spec: DirSpec) -> Call {
        Call::EnsureDir { path: DATA.into(), spec }
    }
    fn unmount(lazy: bool) -> Call {
        Call::Unmount { target: MNT.into(), lazy }
    }

    #[tokio::test]
    async fn first_activation_of_a_blank_device_formats_and_mounts() {
        let (os, p) = setup("/data");
        let path = p.activate(&v1(), &opts(&p, &[])).await.unwrap();
        assert_eq!(path, Path::new(DATA));
        assert_eq!(
            os.calls(),
            vec![
                find(),
                attach(),
                mounted_at(),
                probe(DEV),
                mkfs(FsType::Ext4, &[]),
                make_dir(),
                mount(DEV, FsType::Ext4, MountFlags::empty(), ""),
                // No grow: a file system made just now fills its device.
                ensure_data(SPEC),
            ]
        );
        assert_eq!(os.mounted(Path::new(MNT)).unwrap().source, Path::new(DEV));
        assert_eq!(p.mountpoint(&v1()), Path::new(DATA));
    }

    #[tokio::test]
    async fn second_activation_of_a_formatted_device_does_not_format() {
        let (os, p) = setup("/data");
        let o = opts(&p, &[]);
        p.activate(&v1(), &o).await.unwrap();
        p.deactivate(&v1(), &o).await.unwrap();
        os.take_calls();
        assert_eq!(p.activate(&v1(), &o).await.unwrap(), Path::new(DATA));
        let dev = "/dev/loop1";
        assert_eq!(
            os.calls(),
            vec![
                find(),
                attach(),
                mounted_at(),
                probe(dev),
                needs_grow(dev, FsType::Ext4),
                make_dir(),
                mount(dev, FsType::Ext4, MountFlags::empty(), ""),
                ensure_data(SPEC),
            ]
        );
    }

    #[tokio::test]
    async fn an_enlarged_ext4_device_is_grown_before_mounting() {
        let (os, p) = setup("/data");
        os.set_probe(IMG, Probe::Filesystem("ext4".into()));
        os.set_needs_grow(IMG);
        p.activate(&v1(), &opts(&p, &[])).await.unwrap();
        assert_eq!(
            os.calls(),
            vec![
                find(),
                attach(),
                mounted_at(),
                probe(DEV),
                needs_grow(DEV, FsType::Ext4),
                grow(DEV, FsType::Ext4, false),
                make_dir(),
                mount(DEV, FsType::Ext4, MountFlags::empty(), ""),
                ensure_data(SPEC),
            ]
        );
    }

    #[tokio::test]
    async fn an_enlarged_xfs_device_is_grown_after_mounting() {
        let (os, p) = setup("/data");
        os.set_probe(IMG, Probe::Filesystem("xfs".into()));
        os.set_needs_grow(IMG);
        p.activate(&v1(), &opts(&p, &[("fsType", "xfs")])).await.unwrap();
        assert_eq!(
            os.calls(),
            vec![
                find(),
                attach(),
                mounted_at(),
                probe(DEV),
                needs_grow(DEV, FsType::Xfs),
                make_dir(),
                mount(DEV, FsType::Xfs, MountFlags::empty(), "nouuid"),
                grow(DEV, FsType::Xfs, true),
                ensure_data(SPEC),
            ]
        );
    }

    #[tokio::test]
    async fn an_already_mounted_volume_is_not_mounted_again() {
        let (os, p) = setup("/data");
        let o = opts(&p, &[]);
        p.activate(&v1(), &o).await.unwrap();
        os.take_calls();
        assert_eq!(p.activate(&v1(), &o).await.unwrap(), Path::new(DATA));
        assert_eq!(os.calls(), vec![find(), mounted_at(), ensure_data(SPEC)]);
        assert!(p.is_active(&v1()).await.unwrap());
    }

    #[tokio::test]
    async fn deactivate_syncs_unmounts_and_detaches_and_is_idempotent() {
        let (os, p) = setup("/data");
        let o = opts(&p, &[]);
        p.activate(&v1(), &o).await.unwrap();
        os.take_calls();
        p.deactivate(&v1(), &o).await.unwrap();
        assert_eq!(
            os.take_calls(),
            vec![mounted_at(), Call::Syncfs { target: MNT.into() }, unmount(false), find(), detach(DEV)]
        );
        assert!(!p.is_active(&v1()).await.unwrap());
        assert_eq!(os.attached(Path::new(IMG)), None);
        os.take_calls();
        p.deactivate(&v1(), &o).await.unwrap();
        assert_eq!(os.calls(), vec![mounted_at(), find()]);
    }

    #[tokio::test]
    async fn mkfs_failure_detaches() {
        let (os, p) = setup("/data");
        os.fail_next(CallKind::Mkfs, Failure::Tool("mkfs.ext4: no space".into()));
        let err = p.activate(&v1(), &opts(&p, &[])).await.unwrap_err();
        assert!(matches!(&err, BackendError::Step { step: "format", device, .. } if device == Path::new(DEV)), "{err}");
        assert_eq!(
            os.calls(),
            vec![find(), attach(), mounted_at(), probe(DEV), mkfs(FsType::Ext4, &[]), find(), detach(DEV)]
        );
        assert_eq!(os.attached(Path::new(IMG)), None);
    }

    #[tokio::test]
    async fn mount_failure_detaches() {
        let (os, p) = setup("/data");
        os.fail_next(CallKind::Mount, Failure::Io(ErrorKind::InvalidInput));
        let err = p.activate(&v1(), &opts(&p, &[])).await.unwrap_err();
        assert!(matches!(&err, BackendError::Step { step: "mount", device, .. } if device == Path::new(DEV)), "{err}");
        assert_eq!(
            os.calls(),
            vec![
                find(),
                attach(),
                mounted_at(),
                probe(DEV),
                mkfs(FsType::Ext4, &[]),
                make_dir(),
                mount(DEV, FsType::Ext4, MountFlags::empty(), ""),
                find(),
                detach(DEV),
            ]
        );
        assert_eq!(os.attached(Path::new(IMG)), None);
        // The file system made before the failure stays: the next try does not format again.
        os.take_calls();
        p.activate(&v1(), &opts(&p, &[])).await.unwrap();
        assert!(!os.calls().iter().any(|c| c.kind() == CallKind::Mkfs));
    }

    #[tokio::test]
    async fn mount_directory_failure_detaches() {
        let (os, p) = setup("/data");
        os.fail_next(CallKind::MakeDir, Failure::Io(ErrorKind::PermissionDenied));
        let err = p.activate(&v1(), &opts(&p, &[])).await.unwrap_err();
        assert!(matches!(&err, BackendError::Step { step: "create mount directory", .. }), "{err}");
        assert_eq!(os.calls()[5..], [make_dir(), find(), detach(DEV)]);
    }

    #[tokio::test]
    async fn data_directory_failure_unmounts_and_detaches() {
        let (os, p) = setup("/data");
        os.fail_next(CallKind::EnsureDir, Failure::Io(ErrorKind::PermissionDenied));
        let err = p.activate(&v1(), &opts(&p, &[])).await.unwrap_err();
        assert!(
            matches!(&err, BackendError::Step { step: "create data directory", device, .. } if device == Path::new(DATA)),
            "{err}"
        );
        assert_eq!(
            os.calls(),
            vec![
                find(),
                attach(),
                mounted_at(),
                probe(DEV),
                mkfs(FsType::Ext4, &[]),
                make_dir(),
                mount(DEV, FsType::Ext4, MountFlags::empty(), ""),
                ensure_data(SPEC),
                unmount(false),
                find(),
                detach(DEV),
            ]
        );
        assert!(os.mounted(Path::new(MNT)).is_none());
        assert_eq!(os.attached(Path::new(IMG)), None);
    }

    #[tokio::test]
    async fn offline_grow_failure_detaches() {
        let (os, p) = setup("/data");
        os.set_probe(IMG, Probe::Filesystem("ext4".into()));
        os.set_needs_grow(IMG);
        os.fail_next(CallKind::Grow, Failure::Tool("e2fsck: UNEXPECTED INCONSISTENCY".into()));
        let err = p.activate(&v1(), &opts(&p, &[])).await.unwrap_err();
        assert!(matches!(&err, BackendError::Step { step: "grow", device, .. } if device == Path::new(DEV)), "{err}");
        assert_eq!(
            os.calls(),
            vec![
                find(),
                attach(),
                mounted_at(),
                probe(DEV),
                needs_grow(DEV, FsType::Ext4),
                grow(DEV, FsType::Ext4, false),
                find(),
                detach(DEV),
            ]
        );
    }

    #[tokio::test]
    async fn online_grow_failure_unmounts_and_detaches() {
        let (os, p) = setup("/data");
        os.set_probe(IMG, Probe::Filesystem("xfs".into()));
        os.set_needs_grow(IMG);
        os.fail_next(CallKind::Grow, Failure::Tool("xfs_growfs: bad superblock".into()));
        let err = p.activate(&v1(), &opts(&p, &[("fsType", "xfs")])).await.unwrap_err();
        assert!(matches!(&err, BackendError::Step { step: "grow", .. }), "{err}");
        assert_eq!(
            os.calls(),
            vec![
                find(),
                attach(),
                mounted_at(),
                probe(DEV),
                needs_grow(DEV, FsType::Xfs),
                make_dir(),
                mount(DEV, FsType::Xfs, MountFlags::empty(), "nouuid"),
                grow(DEV, FsType::Xfs, true),
                unmount(false),
                find(),
                detach(DEV),
            ]
        );
        assert!(os.mounted(Path::new(MNT)).is_none());
    }

    #[tokio::test]
    async fn a_device_attached_before_is_not_detached_on_failure() {
        let (os, p) = setup("/data");
        let dev = os.attach_existing(IMG);
        os.fail_next(CallKind::Mount, Failure::Io(ErrorKind::InvalidInput));
        p.activate(&v1(), &opts(&p, &[])).await.unwrap_err();
        assert!(!os.calls().iter().any(|c| c.kind() == CallKind::LoopDetach), "{:?}", os.calls());
        assert_eq!(os.attached(Path::new(IMG)), Some(dev));
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
            let err = p.activate(&v1(), &opts(&p, &[])).await.unwrap_err();
            let msg = err.to_string();
            assert!(matches!(err, BackendError::Refused(_)), "{msg}");
            assert!(msg.contains(needle) && msg.contains(DEV), "{msg}");
            assert_eq!(
                os.calls(),
                vec![find(), attach(), mounted_at(), probe(DEV), find(), detach(DEV)],
                "{probe_result:?}"
            );
            assert_eq!(os.signature(Path::new(IMG)), probe_result, "untouched");
        }
    }

    #[tokio::test]
    async fn a_blank_read_only_volume_is_not_formatted() {
        let (os, p) = setup("/data");
        let err = p.activate(&v1(), &opts(&p, &[("mountOptions", "ro")])).await.unwrap_err();
        assert!(err.to_string().contains("read-only"), "{err}");
        assert!(!os.calls().iter().any(|c| c.kind() == CallKind::Mkfs));
    }

    #[tokio::test]
    async fn a_read_only_volume_mounts_read_only_and_does_not_grow() {
        let (os, p) = setup("/data");
        os.set_probe(IMG, Probe::Filesystem("ext4".into()));
        os.set_needs_grow(IMG);
        p.activate(&v1(), &opts(&p, &[("mountOptions", "ro,noatime")])).await.unwrap();
        let calls = os.calls();
        assert!(calls.contains(&mount(DEV, FsType::Ext4, MountFlags::RDONLY | MountFlags::NOATIME, "")), "{calls:?}");
        assert!(!calls.iter().any(|c| matches!(c.kind(), CallKind::Grow | CallKind::NeedsGrow)));
    }

    #[tokio::test]
    async fn unmount_ebusy_falls_back_to_a_logged_lazy_unmount() {
        let (os, p) = setup("/data");
        let o = opts(&p, &[]);
        p.activate(&v1(), &o).await.unwrap();
        os.take_calls();
        os.fail_next(CallKind::Unmount, Failure::Io(ErrorKind::ResourceBusy));
        p.deactivate(&v1(), &o).await.unwrap();
        assert_eq!(
            os.take_calls(),
            vec![mounted_at(), Call::Syncfs { target: MNT.into() }, unmount(false), unmount(true), find(), detach(DEV)]
        );

        // The same, synchronously, under a subscriber that captures the warning.
        p.activate(&v1(), &o).await.unwrap();
        os.fail_next(CallKind::Unmount, Failure::Errno(16)); // EBUSY
        let log = Arc::new(std::sync::Mutex::new(Vec::<u8>::new()));
        let writer = CaptureWriter(log.clone());
        let subscriber = tracing_subscriber::fmt().with_writer(move || writer.clone()).with_ansi(false).finish();
        tracing::subscriber::with_default(subscriber, || deactivate_local(os.as_ref(), Path::new(MNT))).unwrap();
        let log = String::from_utf8(log.lock().unwrap().clone()).unwrap();
        assert!(log.contains("WARN") && log.contains("MNT_DETACH") && log.contains("/dev/loop1"), "{log}");
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
    async fn other_unmount_failures_are_errors_and_keep_the_device() {
        let (os, p) = setup("/data");
        let o = opts(&p, &[]);
        p.activate(&v1(), &o).await.unwrap();
        os.take_calls();
        os.fail_next(CallKind::Unmount, Failure::Io(ErrorKind::PermissionDenied));
        let err = p.deactivate(&v1(), &o).await.unwrap_err();
        assert!(
            matches!(&err, BackendError::Step { step: "unmount", device, .. } if device == Path::new(DEV)),
            "{err}"
        );
        assert_eq!(os.calls(), vec![mounted_at(), Call::Syncfs { target: MNT.into() }, unmount(false)]);
        assert!(os.attached(Path::new(IMG)).is_some());
    }

    #[tokio::test]
    async fn xfs_gets_nouuid_and_the_volume_options() {
        let (os, p) = setup("/data");
        let o = opts(&p, &[("fsType", "xfs"), ("mountOptions", "noatime,inode64"), ("mkfsOptions", "-L v1 -m crc=1")]);
        p.activate(&v1(), &o).await.unwrap();
        let calls = os.calls();
        assert_eq!(calls[4], mkfs(FsType::Xfs, &["-L", "v1", "-m", "crc=1"]));
        assert_eq!(calls[6], mount(DEV, FsType::Xfs, MountFlags::NOATIME, "nouuid,inode64"));
    }

    #[tokio::test]
    async fn an_existing_file_system_of_another_type_is_mounted_as_it_is() {
        let (os, p) = setup("/data");
        os.set_probe(IMG, Probe::Filesystem("xfs".into()));
        p.activate(&v1(), &opts(&p, &[("fsType", "ext4")])).await.unwrap();
        let calls = os.calls();
        assert!(calls.contains(&mount(DEV, FsType::Xfs, MountFlags::empty(), "nouuid")), "{calls:?}");
        assert!(!calls.iter().any(|c| c.kind() == CallKind::Mkfs));
    }

    #[tokio::test]
    async fn data_directory_gets_the_volume_mode_and_owner() {
        let (os, p) = setup("/data");
        p.activate(&v1(), &opts(&p, &[("mode", "0750"), ("uid", "1000"), ("gid", "1000")])).await.unwrap();
        assert!(os.calls().contains(&ensure_data(DirSpec { mode: 0o750, uid: Some(1000), gid: Some(1000) })));
    }

    #[tokio::test]
    async fn empty_root_path_hands_out_the_mount_root() {
        let (os, p) = setup("");
        let path = p.activate(&v1(), &opts(&p, &[("uid", "1000")])).await.unwrap();
        assert_eq!(path, Path::new(MNT));
        let spec = DirSpec { mode: 0o700, uid: Some(1000), gid: None };
        assert_eq!(os.calls().last(), Some(&Call::SetOwnerMode { path: MNT.into(), spec }));
        // Without own mode/owner the fresh root is left alone; remounts never touch it.
        let (os, p) = setup("");
        p.activate(&v1(), &opts(&p, &[])).await.unwrap();
        assert!(!os.calls().iter().any(|c| c.kind() == CallKind::SetOwnerMode));
    }

    #[tokio::test]
    async fn a_mount_point_used_by_another_device_is_refused() {
        let (os, p) = setup("/data");
        os.mount_existing("/dev/sdz", MNT, FsType::Ext4);
        let err = p.activate(&v1(), &opts(&p, &[])).await.unwrap_err();
        assert!(err.to_string().contains("/dev/sdz"), "{err}");
        assert_eq!(os.calls(), vec![find(), attach(), mounted_at(), find(), detach(DEV)]);
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
