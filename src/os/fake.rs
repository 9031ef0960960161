//! [`FakeOs`]: a recording [`BlockOs`] with a small simulated world, for tests.
//!
//! Every call is recorded as a typed [`Call`] (also the ones that fail), so a test can assert
//! the exact sequence. Failures are injected per [`CallKind`] with [`FakeOs::fail_next`]. The
//! simulated world keeps just enough state for idempotency to show: files (images), directories,
//! loop devices (device → image), signatures per medium (a loop device's signature lives on its
//! image, so it survives detach and re-attach), and a mount table. Like the kernel, a mount
//! fails on a blank medium, on a file-system type that does not match, or on a missing target.
//!
//! Symbolic links can be planted ([`FakeOs::add_symlink`]): like the real implementation, every
//! operation refuses a link where a volume's file or directory should be.
//!
//! Compiled for unit tests and with the `testing` feature (integration tests), never into the
//! release binary.

use std::collections::{BTreeMap, BTreeSet};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};

use super::{BlockOs, DirSpec, Entry, FsStats, FsType, HostInfo, MountEntry, MountFlags, OsError, Probe};

/// One recorded call, with its arguments.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Call {
    /// [`BlockOs::probe`].
    Probe {
        /// The device probed.
        device: PathBuf,
    },
    /// [`BlockOs::mkfs`].
    Mkfs {
        /// The device formatted.
        device: PathBuf,
        /// The file system made.
        fs: FsType,
        /// The extra arguments.
        extra: Vec<String>,
    },
    /// [`BlockOs::mount`].
    Mount {
        /// The device mounted.
        device: PathBuf,
        /// The mount point.
        target: PathBuf,
        /// The file-system type.
        fs: FsType,
        /// `MS_*` flags.
        flags: MountFlags,
        /// The data string.
        data: String,
    },
    /// [`BlockOs::unmount`].
    Unmount {
        /// The mount point.
        target: PathBuf,
        /// Whether `MNT_DETACH` was used.
        lazy: bool,
    },
    /// [`BlockOs::syncfs`].
    Syncfs {
        /// The mount point.
        target: PathBuf,
    },
    /// [`BlockOs::mounted_at`].
    MountedAt {
        /// The path looked up.
        target: PathBuf,
    },
    /// [`BlockOs::mounts_under`].
    MountsUnder {
        /// The directory.
        dir: PathBuf,
    },
    /// [`BlockOs::needs_grow`].
    NeedsGrow {
        /// The device.
        device: PathBuf,
        /// The file-system type.
        fs: FsType,
    },
    /// [`BlockOs::grow`].
    Grow {
        /// The device.
        device: PathBuf,
        /// The file-system type.
        fs: FsType,
        /// Where it is mounted (`None`: grown offline).
        mountpoint: Option<PathBuf>,
    },
    /// [`BlockOs::make_root`].
    MakeRoot {
        /// The directory.
        path: PathBuf,
        /// Its mode.
        mode: u32,
    },
    /// [`BlockOs::make_dir`].
    MakeDir {
        /// The directory.
        path: PathBuf,
    },
    /// [`BlockOs::ensure_dir`].
    EnsureDir {
        /// The directory.
        path: PathBuf,
        /// Mode and owner asked for.
        spec: DirSpec,
    },
    /// [`BlockOs::set_owner_mode`].
    SetOwnerMode {
        /// The path.
        path: PathBuf,
        /// Mode and owner set.
        spec: DirSpec,
    },
    /// [`BlockOs::remove_empty_dir`].
    RemoveEmptyDir {
        /// The directory.
        path: PathBuf,
    },
    /// [`BlockOs::loop_find`].
    LoopFind {
        /// The backing file looked for.
        image: PathBuf,
    },
    /// [`BlockOs::loop_attach`].
    LoopAttach {
        /// The backing file.
        image: PathBuf,
    },
    /// [`BlockOs::loop_detach`].
    LoopDetach {
        /// The loop device.
        device: PathBuf,
    },
    /// [`BlockOs::device_size`].
    DeviceSize {
        /// The device.
        device: PathBuf,
    },
    /// [`BlockOs::loop_refresh_size`].
    LoopRefreshSize {
        /// The loop device.
        device: PathBuf,
    },
    /// [`BlockOs::file_size`].
    FileSize {
        /// The file.
        path: PathBuf,
    },
    /// [`BlockOs::create_sparse`].
    CreateSparse {
        /// The file.
        path: PathBuf,
        /// Its size in bytes.
        size: u64,
    },
    /// [`BlockOs::free_space`].
    FreeSpace {
        /// The directory.
        dir: PathBuf,
    },
    /// [`BlockOs::remove_file`].
    RemoveFile {
        /// The file.
        path: PathBuf,
    },
    /// [`BlockOs::entry`].
    Entry {
        /// The path examined.
        path: PathBuf,
    },
    /// [`BlockOs::list_dir`].
    ListDir {
        /// The directory.
        dir: PathBuf,
    },
    /// [`BlockOs::remove_tree`].
    RemoveTree {
        /// The directory.
        path: PathBuf,
    },
    /// [`BlockOs::grow_file`].
    GrowFile {
        /// The file.
        path: PathBuf,
        /// The size asked for.
        size: u64,
    },
    /// [`BlockOs::ensure_dir_beneath`].
    EnsureDirBeneath {
        /// The directory walked from.
        base: PathBuf,
        /// The path below it.
        rel: PathBuf,
        /// Mode and owner asked for.
        spec: DirSpec,
    },
    /// [`BlockOs::bind_mount`].
    BindMount {
        /// What is mounted.
        source: PathBuf,
        /// Where.
        target: PathBuf,
        /// Read-only.
        read_only: bool,
    },
    /// [`BlockOs::statfs`].
    Statfs {
        /// The path.
        path: PathBuf,
    },
    /// [`BlockOs::loop_backed_by`].
    LoopBackedBy {
        /// The loop device.
        device: PathBuf,
        /// The image it should be backed by.
        image: PathBuf,
    },
    /// [`BlockOs::loop_devices_in`].
    LoopDevicesIn {
        /// The directory.
        dir: PathBuf,
    },
}

/// The kind of a [`Call`], used to inject failures.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CallKind {
    /// [`Call::Probe`].
    Probe,
    /// [`Call::Mkfs`].
    Mkfs,
    /// [`Call::Mount`].
    Mount,
    /// [`Call::Unmount`].
    Unmount,
    /// [`Call::Syncfs`].
    Syncfs,
    /// [`Call::MountedAt`].
    MountedAt,
    /// [`Call::MountsUnder`].
    MountsUnder,
    /// [`Call::NeedsGrow`].
    NeedsGrow,
    /// [`Call::Grow`].
    Grow,
    /// [`Call::MakeRoot`].
    MakeRoot,
    /// [`Call::MakeDir`].
    MakeDir,
    /// [`Call::EnsureDir`].
    EnsureDir,
    /// [`Call::SetOwnerMode`].
    SetOwnerMode,
    /// [`Call::RemoveEmptyDir`].
    RemoveEmptyDir,
    /// [`Call::LoopFind`].
    LoopFind,
    /// [`Call::LoopAttach`].
    LoopAttach,
    /// [`Call::LoopDetach`].
    LoopDetach,
    /// [`Call::LoopRefreshSize`].
    LoopRefreshSize,
    /// [`Call::DeviceSize`].
    DeviceSize,
    /// [`Call::FileSize`].
    FileSize,
    /// [`Call::CreateSparse`].
    CreateSparse,
    /// [`Call::FreeSpace`].
    FreeSpace,
    /// [`Call::RemoveFile`].
    RemoveFile,
    /// [`Call::Entry`].
    Entry,
    /// [`Call::ListDir`].
    ListDir,
    /// [`Call::RemoveTree`].
    RemoveTree,
    /// [`Call::GrowFile`].
    GrowFile,
    /// [`Call::EnsureDirBeneath`].
    EnsureDirBeneath,
    /// [`Call::BindMount`].
    BindMount,
    /// [`Call::Statfs`].
    Statfs,
    /// [`Call::LoopBackedBy`].
    LoopBackedBy,
    /// [`Call::LoopDevicesIn`].
    LoopDevicesIn,
}

impl Call {
    /// This call's kind.
    pub fn kind(&self) -> CallKind {
        match self {
            Call::Probe { .. } => CallKind::Probe,
            Call::Mkfs { .. } => CallKind::Mkfs,
            Call::Mount { .. } => CallKind::Mount,
            Call::Unmount { .. } => CallKind::Unmount,
            Call::Syncfs { .. } => CallKind::Syncfs,
            Call::MountedAt { .. } => CallKind::MountedAt,
            Call::MountsUnder { .. } => CallKind::MountsUnder,
            Call::NeedsGrow { .. } => CallKind::NeedsGrow,
            Call::Grow { .. } => CallKind::Grow,
            Call::MakeRoot { .. } => CallKind::MakeRoot,
            Call::MakeDir { .. } => CallKind::MakeDir,
            Call::EnsureDir { .. } => CallKind::EnsureDir,
            Call::SetOwnerMode { .. } => CallKind::SetOwnerMode,
            Call::RemoveEmptyDir { .. } => CallKind::RemoveEmptyDir,
            Call::LoopFind { .. } => CallKind::LoopFind,
            Call::LoopAttach { .. } => CallKind::LoopAttach,
            Call::LoopDetach { .. } => CallKind::LoopDetach,
            Call::LoopRefreshSize { .. } => CallKind::LoopRefreshSize,
            Call::DeviceSize { .. } => CallKind::DeviceSize,
            Call::FileSize { .. } => CallKind::FileSize,
            Call::CreateSparse { .. } => CallKind::CreateSparse,
            Call::FreeSpace { .. } => CallKind::FreeSpace,
            Call::RemoveFile { .. } => CallKind::RemoveFile,
            Call::Entry { .. } => CallKind::Entry,
            Call::ListDir { .. } => CallKind::ListDir,
            Call::RemoveTree { .. } => CallKind::RemoveTree,
            Call::GrowFile { .. } => CallKind::GrowFile,
            Call::EnsureDirBeneath { .. } => CallKind::EnsureDirBeneath,
            Call::BindMount { .. } => CallKind::BindMount,
            Call::Statfs { .. } => CallKind::Statfs,
            Call::LoopBackedBy { .. } => CallKind::LoopBackedBy,
            Call::LoopDevicesIn { .. } => CallKind::LoopDevicesIn,
        }
    }
}

/// An injected failure.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Failure {
    /// A syscall failure ([`OsError::Sys`]) of this kind, e.g. `ResourceBusy` for `EBUSY`.
    Io(io::ErrorKind),
    /// A syscall failure ([`OsError::Sys`]) with this raw errno.
    Errno(i32),
    /// A tool failure ([`OsError::Tool`]) printing this on stderr.
    Tool(String),
}

impl Failure {
    fn to_error(&self, call: &Call) -> OsError {
        match self {
            Failure::Io(kind) => OsError::Sys { op: format!("fake {call:?}"), source: io::Error::from(*kind) },
            Failure::Errno(errno) => {
                OsError::Sys { op: format!("fake {call:?}"), source: io::Error::from_raw_os_error(*errno) }
            }
            Failure::Tool(stderr) => OsError::Tool {
                tool: format!("fake {:?}", call.kind()),
                status: "exit status: 1".into(),
                stderr: stderr.clone(),
            },
        }
    }
}

/// The free space [`FakeOs`] reports until told otherwise: 1 TiB.
pub const DEFAULT_FREE_SPACE: u64 = 1 << 40;

#[derive(Debug)]
struct World {
    calls: Vec<Call>,
    failures: Vec<(CallKind, Failure)>,
    /// Regular files (images) and their sizes.
    files: BTreeMap<PathBuf, u64>,
    /// Directories that exist.
    dirs: BTreeSet<PathBuf>,
    /// Loop device → backing image.
    loops: BTreeMap<PathBuf, PathBuf>,
    /// Number of the next loop device handed out.
    next_loop: u32,
    /// Medium (an image, or a non-loop device) → what a probe finds; absent = blank.
    signatures: BTreeMap<PathBuf, Probe>,
    /// Media whose device is larger than their file system.
    grow_pending: BTreeSet<PathBuf>,
    /// The mount table, in mount order.
    mounts: Vec<MountEntry>,
    /// What `free_space` answers.
    free_space: u64,
    /// Symbolic links planted where a file or directory should be.
    links: BTreeSet<PathBuf>,
    /// What [`HostInfo::boot_id`] answers.
    boot_id: Option<String>,
}

impl World {
    /// Where a device's content lives: a loop device's image, else the device itself.
    fn medium(&self, device: &Path) -> PathBuf {
        self.loops.get(device).cloned().unwrap_or_else(|| device.to_path_buf())
    }

    /// Refuses `path` if a link was planted there, as the real implementation does.
    fn no_link(&self, path: &Path) -> Result<(), OsError> {
        if self.links.contains(path) {
            Err(OsError::Symlink(path.to_path_buf()))
        } else {
            Ok(())
        }
    }

    fn entry(&self, path: &Path) -> Entry {
        if self.links.contains(path) {
            Entry::Symlink
        } else if let Some(size) = self.files.get(path) {
            Entry::File { size: *size }
        } else if self.dirs.contains(path) {
            Entry::Directory
        } else {
            Entry::Missing
        }
    }
}

/// A recording fake of the operating system. See the module documentation.
#[derive(Debug)]
pub struct FakeOs {
    world: Mutex<World>,
}

impl Default for FakeOs {
    fn default() -> Self {
        Self::new()
    }
}

fn not_found(what: &Path) -> OsError {
    OsError::Sys { op: format!("fake: {} does not exist", what.display()), source: io::ErrorKind::NotFound.into() }
}

fn invalid(op: String) -> OsError {
    OsError::Sys { op, source: io::ErrorKind::InvalidInput.into() }
}

impl FakeOs {
    /// An empty world: no files, directories, devices or mounts; [`DEFAULT_FREE_SPACE`] free.
    pub fn new() -> Self {
        Self {
            world: Mutex::new(World {
                calls: Vec::new(),
                failures: Vec::new(),
                files: BTreeMap::new(),
                dirs: BTreeSet::new(),
                loops: BTreeMap::new(),
                next_loop: 0,
                signatures: BTreeMap::new(),
                grow_pending: BTreeSet::new(),
                mounts: Vec::new(),
                free_space: DEFAULT_FREE_SPACE,
                links: BTreeSet::new(),
                boot_id: Some("fake-boot-1".into()),
            }),
        }
    }

    fn world(&self) -> MutexGuard<'_, World> {
        // A poisoned lock means a test already panicked; keep going so it reports that panic.
        self.world.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Records `call`, then fails it if a failure was injected for its kind.
    fn enter(&self, call: Call) -> Result<MutexGuard<'_, World>, OsError> {
        let mut w = self.world();
        let kind = call.kind();
        w.calls.push(call.clone());
        if let Some(i) = w.failures.iter().position(|(k, _)| *k == kind) {
            let (_, failure) = w.failures.remove(i);
            return Err(failure.to_error(&call));
        }
        Ok(w)
    }

    /// Every call so far, in order.
    pub fn calls(&self) -> Vec<Call> {
        self.world().calls.clone()
    }

    /// Every call so far, in order, and forgets them (the world stays).
    pub fn take_calls(&self) -> Vec<Call> {
        std::mem::take(&mut self.world().calls)
    }

    /// Makes the next call of `kind` fail with `failure`. Several failures queue up in order.
    pub fn fail_next(&self, kind: CallKind, failure: Failure) {
        self.world().failures.push((kind, failure));
    }

    /// Sets what a probe finds on `medium` (an image path, or a device path of a non-loop
    /// device). Media start blank; [`BlockOs::mkfs`] sets `Filesystem`.
    pub fn set_probe(&self, medium: impl Into<PathBuf>, probe: Probe) {
        self.world().signatures.insert(medium.into(), probe);
    }

    /// Makes `medium` (an image, or a non-loop device) larger than its file system, as after an
    /// image or EBS volume was enlarged: [`BlockOs::needs_grow`] says yes until it is grown.
    pub fn set_needs_grow(&self, medium: impl Into<PathBuf>) {
        self.world().grow_pending.insert(medium.into());
    }

    /// Sets what [`BlockOs::free_space`] answers.
    pub fn set_free_space(&self, bytes: u64) {
        self.world().free_space = bytes;
    }

    /// Puts a regular file of `size` bytes into the world (and its parent directories).
    pub fn add_file(&self, path: impl Into<PathBuf>, size: u64) {
        let path = path.into();
        let mut w = self.world();
        if let Some(parent) = path.parent() {
            add_dir_all(&mut w.dirs, parent);
        }
        w.files.insert(path, size);
    }

    /// Puts a directory (and its parents) into the world.
    pub fn add_dir(&self, path: impl AsRef<Path>) {
        add_dir_all(&mut self.world().dirs, path.as_ref());
    }

    /// Makes the host look rebooted: a new boot ID, no mounts, no loop devices.
    pub fn reboot(&self) {
        let mut w = self.world();
        let next = w.boot_id.as_deref().and_then(|b| b.strip_prefix("fake-boot-")).and_then(|n| n.parse::<u32>().ok());
        w.boot_id = Some(format!("fake-boot-{}", next.unwrap_or(0) + 1));
        w.mounts.clear();
        w.loops.clear();
    }

    /// Plants a symbolic link at `path` (pointing out of its root); every operation on `path`
    /// then refuses it, as the real implementation does.
    pub fn add_symlink(&self, path: impl Into<PathBuf>) {
        let path = path.into();
        let mut w = self.world();
        if let Some(parent) = path.parent() {
            add_dir_all(&mut w.dirs, parent);
        }
        w.links.insert(path);
    }

    /// Attaches `image` to the next loop device as if someone had done so earlier (not
    /// recorded) and returns the device. The image need not exist.
    pub fn attach_existing(&self, image: impl Into<PathBuf>) -> PathBuf {
        let mut w = self.world();
        let device = PathBuf::from(format!("/dev/loop{}", w.next_loop));
        w.next_loop += 1;
        w.loops.insert(device.clone(), image.into());
        device
    }

    /// Mounts `device` on `target` as `fs` as if someone had done so earlier (not recorded).
    pub fn mount_existing(&self, device: impl Into<PathBuf>, target: impl Into<PathBuf>, fs: FsType) {
        let mut w = self.world();
        let target = target.into();
        add_dir_all(&mut w.dirs, &target);
        w.mounts.push(entry(device.into(), target, fs));
    }

    /// The loop device backed by `image`, if attached.
    pub fn attached(&self, image: &Path) -> Option<PathBuf> {
        self.world().loops.iter().find(|(_, i)| i.as_path() == image).map(|(d, _)| d.clone())
    }

    /// What is mounted at `target`, if anything.
    pub fn mounted(&self, target: &Path) -> Option<MountEntry> {
        self.world().mounts.iter().rev().find(|m| m.mount_point == target).cloned()
    }

    /// Whether the regular file `path` exists, and its size.
    pub fn file(&self, path: &Path) -> Option<u64> {
        self.world().files.get(path).copied()
    }

    /// Whether the directory `path` exists.
    pub fn dir_exists(&self, path: &Path) -> bool {
        self.world().dirs.contains(path)
    }

    /// The signature on `medium` (an image or a non-loop device); `Blank` when none.
    pub fn signature(&self, medium: &Path) -> Probe {
        self.world().signatures.get(medium).cloned().unwrap_or(Probe::Blank)
    }
}

fn add_dir_all(dirs: &mut BTreeSet<PathBuf>, path: &Path) {
    for ancestor in path.ancestors() {
        if ancestor.as_os_str().is_empty() {
            break;
        }
        dirs.insert(ancestor.to_path_buf());
    }
}

fn entry(source: PathBuf, mount_point: PathBuf, fs: FsType) -> MountEntry {
    MountEntry {
        mount_point,
        source,
        fs_type: fs.as_str().to_owned(),
        root: PathBuf::from("/"),
        options: "rw,relatime".into(),
        dev: "7:0".into(),
    }
}

impl BlockOs for FakeOs {
    fn probe(&self, device: &Path) -> Result<Probe, OsError> {
        let w = self.enter(Call::Probe { device: device.to_path_buf() })?;
        let medium = w.medium(device);
        Ok(w.signatures.get(&medium).cloned().unwrap_or(Probe::Blank))
    }

    fn mkfs(&self, device: &Path, fs: FsType, extra: &[String]) -> Result<(), OsError> {
        let mut w = self.enter(Call::Mkfs { device: device.to_path_buf(), fs, extra: extra.to_vec() })?;
        let medium = w.medium(device);
        w.signatures.insert(medium, Probe::Filesystem(fs.as_str().to_owned()));
        Ok(())
    }

    fn mount(&self, device: &Path, target: &Path, fs: FsType, flags: MountFlags, data: &str) -> Result<(), OsError> {
        let mut w = self.enter(Call::Mount {
            device: device.to_path_buf(),
            target: target.to_path_buf(),
            fs,
            flags,
            data: data.to_owned(),
        })?;
        w.no_link(target)?;
        if !w.dirs.contains(target) {
            return Err(not_found(target));
        }
        let medium = w.medium(device);
        match w.signatures.get(&medium) {
            Some(Probe::Filesystem(found)) if found == fs.as_str() => {}
            other => return Err(invalid(format!("fake: mount {} as {fs}: medium holds {other:?}", device.display()))),
        }
        w.mounts.push(entry(device.to_path_buf(), target.to_path_buf(), fs));
        Ok(())
    }

    fn unmount(&self, target: &Path, lazy: bool) -> Result<(), OsError> {
        let mut w = self.enter(Call::Unmount { target: target.to_path_buf(), lazy })?;
        match w.mounts.iter().rposition(|m| m.mount_point == target) {
            Some(i) => {
                w.mounts.remove(i);
                Ok(())
            }
            None => Err(invalid(format!("fake: {} is not mounted", target.display()))),
        }
    }

    fn syncfs(&self, target: &Path) -> Result<(), OsError> {
        let w = self.enter(Call::Syncfs { target: target.to_path_buf() })?;
        w.no_link(target)
    }

    fn mounted_at(&self, target: &Path) -> Result<Option<MountEntry>, OsError> {
        let w = self.enter(Call::MountedAt { target: target.to_path_buf() })?;
        Ok(w.mounts.iter().rev().find(|m| m.mount_point == target).cloned())
    }

    fn mounts_under(&self, dir: &Path) -> Result<Vec<(String, MountEntry)>, OsError> {
        let w = self.enter(Call::MountsUnder { dir: dir.to_path_buf() })?;
        Ok(w.mounts
            .iter()
            .filter(|m| m.mount_point.parent() == Some(dir))
            .filter_map(|m| Some((m.mount_point.file_name()?.to_str()?.to_owned(), m.clone())))
            .collect())
    }

    fn needs_grow(&self, device: &Path, fs: FsType) -> Result<bool, OsError> {
        let w = self.enter(Call::NeedsGrow { device: device.to_path_buf(), fs })?;
        Ok(w.grow_pending.contains(&w.medium(device)))
    }

    fn grow(&self, device: &Path, fs: FsType, mountpoint: Option<&Path>) -> Result<(), OsError> {
        let mut w =
            self.enter(Call::Grow { device: device.to_path_buf(), fs, mountpoint: mountpoint.map(Path::to_path_buf) })?;
        let mounted = w.mounts.iter().any(|m| m.source == device && Some(m.mount_point.as_path()) == mountpoint);
        if fs.grows_mounted() && !mounted {
            return Err(invalid(format!("fake: {fs} on {} can only grow while mounted", device.display())));
        }
        let medium = w.medium(device);
        w.grow_pending.remove(&medium);
        Ok(())
    }

    fn make_root(&self, path: &Path, mode: u32) -> Result<bool, OsError> {
        let mut w = self.enter(Call::MakeRoot { path: path.to_path_buf(), mode })?;
        if w.files.contains_key(path) {
            return Err(OsError::Unexpected(format!("fake: {} is a file", path.display())));
        }
        let created = !w.dirs.contains(path);
        add_dir_all(&mut w.dirs, path);
        Ok(created)
    }

    fn make_dir(&self, path: &Path) -> Result<(), OsError> {
        let mut w = self.enter(Call::MakeDir { path: path.to_path_buf() })?;
        w.no_link(path)?;
        if w.files.contains_key(path) {
            return Err(OsError::Unexpected(format!("fake: {} is a file", path.display())));
        }
        add_dir_all(&mut w.dirs, path);
        Ok(())
    }

    fn ensure_dir(&self, path: &Path, spec: DirSpec) -> Result<bool, OsError> {
        let mut w = self.enter(Call::EnsureDir { path: path.to_path_buf(), spec })?;
        w.no_link(path)?;
        if w.files.contains_key(path) {
            return Err(OsError::Unexpected(format!("fake: {} exists and is not a directory", path.display())));
        }
        if w.dirs.contains(path) {
            return Ok(false);
        }
        add_dir_all(&mut w.dirs, path);
        Ok(true)
    }

    fn set_owner_mode(&self, path: &Path, spec: DirSpec) -> Result<(), OsError> {
        let w = self.enter(Call::SetOwnerMode { path: path.to_path_buf(), spec })?;
        w.no_link(path)?;
        if w.dirs.contains(path) || w.files.contains_key(path) {
            Ok(())
        } else {
            Err(not_found(path))
        }
    }

    fn remove_empty_dir(&self, path: &Path) -> Result<bool, OsError> {
        let mut w = self.enter(Call::RemoveEmptyDir { path: path.to_path_buf() })?;
        if !w.dirs.contains(path) {
            return Ok(false);
        }
        if w.mounts.iter().any(|m| m.mount_point == path) {
            return Err(OsError::Sys {
                op: format!("fake: remove directory {}", path.display()),
                source: io::ErrorKind::ResourceBusy.into(),
            });
        }
        let has_children =
            w.dirs.iter().any(|d| d != path && d.starts_with(path)) || w.files.keys().any(|f| f.starts_with(path));
        if has_children {
            return Ok(false);
        }
        w.dirs.remove(path);
        Ok(true)
    }

    fn loop_find(&self, image: &Path) -> Result<Option<PathBuf>, OsError> {
        let w = self.enter(Call::LoopFind { image: image.to_path_buf() })?;
        w.no_link(image)?;
        Ok(w.loops.iter().find(|(_, i)| i.as_path() == image).map(|(d, _)| d.clone()))
    }

    fn loop_attach(&self, image: &Path) -> Result<PathBuf, OsError> {
        let mut w = self.enter(Call::LoopAttach { image: image.to_path_buf() })?;
        w.no_link(image)?;
        if !w.files.contains_key(image) {
            return Err(not_found(image));
        }
        let device = PathBuf::from(format!("/dev/loop{}", w.next_loop));
        w.next_loop += 1;
        w.loops.insert(device.clone(), image.to_path_buf());
        Ok(device)
    }

    fn loop_detach(&self, device: &Path) -> Result<(), OsError> {
        let mut w = self.enter(Call::LoopDetach { device: device.to_path_buf() })?;
        match w.loops.remove(device) {
            Some(_) => Ok(()),
            // As the kernel answers LOOP_CLR_FD on an unbound device.
            None => Err(OsError::Ioctl {
                request: "LOOP_CLR_FD",
                subject: device.to_path_buf(),
                source: io::Error::from_raw_os_error(6), // ENXIO
            }),
        }
    }

    fn device_size(&self, device: &Path) -> Result<u64, OsError> {
        let w = self.enter(Call::DeviceSize { device: device.to_path_buf() })?;
        // A loop device is as large as its image; other fake devices as large as asked.
        Ok(w.files.get(&w.medium(device)).copied().unwrap_or(u64::MAX))
    }

    fn loop_refresh_size(&self, device: &Path) -> Result<(), OsError> {
        let w = self.enter(Call::LoopRefreshSize { device: device.to_path_buf() })?;
        if w.loops.contains_key(device) {
            Ok(())
        } else {
            Err(OsError::Ioctl {
                request: "LOOP_SET_CAPACITY",
                subject: device.to_path_buf(),
                source: io::Error::from_raw_os_error(6), // ENXIO
            })
        }
    }

    fn file_size(&self, path: &Path) -> Result<Option<u64>, OsError> {
        let w = self.enter(Call::FileSize { path: path.to_path_buf() })?;
        w.no_link(path)?;
        Ok(w.files.get(path).copied())
    }

    fn create_sparse(&self, path: &Path, size: u64) -> Result<bool, OsError> {
        let mut w = self.enter(Call::CreateSparse { path: path.to_path_buf(), size })?;
        if w.files.contains_key(path) || w.links.contains(path) {
            return Ok(false);
        }
        if !path.parent().is_some_and(|p| w.dirs.contains(p)) {
            return Err(not_found(path));
        }
        w.files.insert(path.to_path_buf(), size);
        Ok(true)
    }

    fn free_space(&self, dir: &Path) -> Result<u64, OsError> {
        let w = self.enter(Call::FreeSpace { dir: dir.to_path_buf() })?;
        Ok(w.free_space)
    }

    fn remove_file(&self, path: &Path) -> Result<bool, OsError> {
        let mut w = self.enter(Call::RemoveFile { path: path.to_path_buf() })?;
        w.no_link(path)?;
        let existed = w.files.remove(path).is_some();
        if existed {
            w.signatures.remove(path);
        }
        Ok(existed)
    }

    fn entry(&self, path: &Path) -> Result<Entry, OsError> {
        let w = self.enter(Call::Entry { path: path.to_path_buf() })?;
        Ok(w.entry(path))
    }

    fn list_dir(&self, dir: &Path) -> Result<Vec<(String, Entry)>, OsError> {
        let w = self.enter(Call::ListDir { dir: dir.to_path_buf() })?;
        let children: BTreeSet<&Path> = w
            .files
            .keys()
            .chain(w.dirs.iter())
            .chain(w.links.iter())
            .filter(|p| p.parent() == Some(dir))
            .map(PathBuf::as_path)
            .collect();
        Ok(children.into_iter().filter_map(|p| Some((p.file_name()?.to_str()?.to_owned(), w.entry(p)))).collect())
    }

    fn remove_tree(&self, path: &Path) -> Result<bool, OsError> {
        let mut w = self.enter(Call::RemoveTree { path: path.to_path_buf() })?;
        w.no_link(path)?;
        if w.files.contains_key(path) {
            return Err(OsError::Unexpected(format!("fake: {} is not a directory", path.display())));
        }
        if !w.dirs.contains(path) {
            return Ok(false);
        }
        if w.mounts.iter().any(|m| m.mount_point.starts_with(path)) {
            return Err(OsError::Sys {
                op: format!("fake: remove {}", path.display()),
                source: io::ErrorKind::ResourceBusy.into(),
            });
        }
        w.dirs.retain(|d| !d.starts_with(path));
        w.files.retain(|f, _| !f.starts_with(path));
        w.links.retain(|l| !l.starts_with(path));
        Ok(true)
    }

    fn grow_file(&self, path: &Path, size: u64) -> Result<bool, OsError> {
        let mut w = self.enter(Call::GrowFile { path: path.to_path_buf(), size })?;
        w.no_link(path)?;
        match w.files.get_mut(path) {
            Some(len) if *len < size => {
                *len = size;
                Ok(true)
            }
            Some(_) => Ok(false),
            None => Err(not_found(path)),
        }
    }

    fn ensure_dir_beneath(&self, base: &Path, rel: &Path, spec: DirSpec) -> Result<bool, OsError> {
        let mut w = self.enter(Call::EnsureDirBeneath { base: base.to_path_buf(), rel: rel.to_path_buf(), spec })?;
        w.no_link(base)?;
        let mut path = base.to_path_buf();
        for part in rel.components() {
            if let std::path::Component::Normal(part) = part {
                path.push(part);
                w.no_link(&path)?;
                if w.files.contains_key(&path) {
                    return Err(OsError::Unexpected(format!("fake: {} is not a directory", path.display())));
                }
            }
        }
        if w.dirs.contains(&path) {
            return Ok(false);
        }
        add_dir_all(&mut w.dirs, &path);
        Ok(true)
    }

    fn bind_mount(&self, source: &Path, target: &Path, read_only: bool) -> Result<(), OsError> {
        let mut w =
            self.enter(Call::BindMount { source: source.to_path_buf(), target: target.to_path_buf(), read_only })?;
        w.no_link(target)?;
        if !w.dirs.contains(target) && !w.files.contains_key(target) {
            return Err(not_found(target));
        }
        let from = w.mounts.iter().rev().find(|m| source.starts_with(&m.mount_point)).cloned();
        let mut bound = match from {
            Some(m) => MountEntry { mount_point: target.to_path_buf(), ..m },
            None => entry(source.to_path_buf(), target.to_path_buf(), FsType::Ext4),
        };
        if read_only {
            bound.options = "ro,relatime".into();
        }
        w.mounts.push(bound);
        Ok(())
    }

    fn statfs(&self, path: &Path) -> Result<FsStats, OsError> {
        let _w = self.enter(Call::Statfs { path: path.to_path_buf() })?;
        Ok(FsStats {
            total_bytes: 1 << 30,
            available_bytes: 3 << 28,
            used_bytes: 1 << 28,
            total_inodes: 65536,
            free_inodes: 65000,
            used_inodes: 536,
        })
    }

    fn loop_backed_by(&self, device: &Path, image: &Path) -> Result<bool, OsError> {
        let w = self.enter(Call::LoopBackedBy { device: device.to_path_buf(), image: image.to_path_buf() })?;
        w.no_link(image)?;
        if !w.files.contains_key(image) {
            return Err(not_found(image));
        }
        Ok(w.loops.get(device).is_some_and(|i| i == image))
    }

    fn loop_devices_in(&self, dir: &Path) -> Result<Vec<(PathBuf, String)>, OsError> {
        let w = self.enter(Call::LoopDevicesIn { dir: dir.to_path_buf() })?;
        Ok(w.loops
            .iter()
            .filter(|(_, image)| image.parent() == Some(dir))
            .filter_map(|(device, image)| Some((device.clone(), image.file_name()?.to_str()?.to_owned())))
            .collect())
    }
}

impl HostInfo for FakeOs {
    fn boot_id(&self) -> Option<String> {
        self.world().boot_id.clone()
    }

    fn hostname(&self) -> String {
        "fakehost".into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_calls_and_simulates_a_loop_device() {
        let os = FakeOs::new();
        os.add_file("/r/a.img", 1 << 30);
        let dev = os.loop_attach(Path::new("/r/a.img")).unwrap();
        assert_eq!(dev, Path::new("/dev/loop0"));
        assert_eq!(os.probe(&dev).unwrap(), Probe::Blank);
        os.make_dir(Path::new("/m/a")).unwrap();
        assert!(os.mount(&dev, Path::new("/m/a"), FsType::Ext4, MountFlags::empty(), "").is_err(), "blank");
        os.mkfs(&dev, FsType::Ext4, &[]).unwrap();
        assert!(os.mount(&dev, Path::new("/m/a"), FsType::Xfs, MountFlags::empty(), "").is_err(), "wrong type");
        os.mount(&dev, Path::new("/m/a"), FsType::Ext4, MountFlags::empty(), "").unwrap();
        assert_eq!(os.mounted_at(Path::new("/m/a")).unwrap().unwrap().source, dev);
        os.unmount(Path::new("/m/a"), false).unwrap();
        os.loop_detach(&dev).unwrap();
        // The signature lives on the image, so it survives a new attachment.
        let dev2 = os.loop_attach(Path::new("/r/a.img")).unwrap();
        assert_eq!(dev2, Path::new("/dev/loop1"));
        assert_eq!(os.probe(&dev2).unwrap(), Probe::Filesystem("ext4".into()));
        assert_eq!(os.calls().len(), 12);
        assert_eq!(os.take_calls()[0], Call::LoopAttach { image: "/r/a.img".into() });
        assert!(os.calls().is_empty());
    }

    #[test]
    fn injected_failures_fire_once_in_order() {
        let os = FakeOs::new();
        os.fail_next(CallKind::Unmount, Failure::Io(io::ErrorKind::ResourceBusy));
        os.fail_next(CallKind::Unmount, Failure::Tool("boom".into()));
        assert!(os.unmount(Path::new("/x"), false).unwrap_err().is_busy());
        let err = os.unmount(Path::new("/x"), false).unwrap_err();
        assert!(err.to_string().contains("boom"), "{err}");
        // Third call: no failure left; fails only because nothing is mounted.
        assert!(!os.unmount(Path::new("/x"), true).unwrap_err().is_busy());
        assert_eq!(os.calls().len(), 3);
    }
}
