//! Every syscall and external tool the backends use, behind small traits with fakes.
//!
//! Backends never call `mount(2)`, ioctls or `Command::new` themselves; they go through here so
//! that unit tests can record the exact call sequence and inject failures.
//!
//! - [`BlockOs`]: files, directories, mounts, loop devices and file-system tools: what the
//!   backends use.
//! - [`DeviceHost`]: how this host shows attached cloud volumes (device links, serials).
//! - [`HostInfo`]: which boot and which host this is.
//! - [`linux`]: the real implementation (the only code with `Command::new` or `unsafe`).
//! - `fake` (tests and the `testing` feature): a recording fake with a small simulated world.
//! - [`mountinfo`]: a parser for `/proc/self/mountinfo`.
//!
//! **Nothing leaves its root.** Every path a backend passes is `<configured root>/<one
//! component>` (a volume's directory, image or mount point) or a path inside a mounted volume.
//! The real implementation never follows a symbolic link at the last component of such a path
//! (`O_NOFOLLOW`, `lstat`, `UMOUNT_NOFOLLOW`, a mount onto the directory's own descriptor), and
//! walks paths inside a volume with `openat2(RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS)`; a link
//! where a volume's file should be is an error that names it.

#[cfg(any(test, feature = "testing"))]
pub mod fake;
pub mod linux;
pub mod mountinfo;

use std::fmt::Debug;
use std::path::{Path, PathBuf};

pub use mountinfo::MountEntry;
/// Mount flags (`MS_*`), as taken by [`BlockOs::mount`].
pub use rustix::mount::MountFlags;

/// Errors from the operating system layer. Display texts name the operation and its subject.
#[derive(Debug, thiserror::Error)]
pub enum OsError {
    /// An external tool ran and failed.
    #[error("{tool} failed ({status}): {stderr}")]
    Tool {
        /// The command line, shortened to the program and its main argument.
        tool: String,
        /// Exit status as text.
        status: String,
        /// What it printed on stderr (trimmed).
        stderr: String,
    },
    /// A syscall or file operation failed.
    #[error("{op}")]
    Sys {
        /// The operation and its subject, e.g. `mount /dev/loop3 on /var/lib/rexray/volumes/v1`.
        op: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// An `ioctl(2)` failed.
    #[error("{request} on {}", subject.display())]
    Ioctl {
        /// The request's name as in the kernel headers, e.g. `LOOP_CONFIGURE`.
        request: &'static str,
        /// The device (or control file) it was made on.
        subject: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// A symbolic link where a volume's own file or directory should be: never followed.
    #[error("{} is a symbolic link; refusing to follow it out of its root", .0.display())]
    Symlink(PathBuf),
    /// Something the OS reported could not be understood.
    #[error("{0}")]
    Unexpected(String),
}

impl OsError {
    /// Whether the cause is `EBUSY` (a mount still in use, a device held open).
    pub fn is_busy(&self) -> bool {
        self.io_kind() == Some(std::io::ErrorKind::ResourceBusy)
    }

    /// Whether the cause is `ENOENT` (the subject does not exist).
    pub fn is_not_found(&self) -> bool {
        self.io_kind() == Some(std::io::ErrorKind::NotFound)
    }

    /// The kind of the underlying I/O error, if there is one.
    fn io_kind(&self) -> Option<std::io::ErrorKind> {
        match self {
            OsError::Sys { source, .. } | OsError::Ioctl { source, .. } => Some(source.kind()),
            OsError::Tool { .. } | OsError::Symlink(_) | OsError::Unexpected(_) => None,
        }
    }
}

/// How much larger than its file system a device must be before the file system is grown: a
/// smaller tail may be too small for the file system to use, and checking it again on every
/// mount would cost an `e2fsck` each time.
pub const GROW_THRESHOLD: u64 = 16 << 20;

/// A file system the block backends can make, mount and grow.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FsType {
    /// ext4 (`mkfs.ext4`, `resize2fs`).
    Ext4,
    /// XFS (`mkfs.xfs`, `xfs_growfs`; always mounted with `nouuid`).
    Xfs,
}

impl FsType {
    /// Every supported type, in the order shown to users.
    pub const ALL: [FsType; 2] = [FsType::Ext4, FsType::Xfs];

    /// The name mount(2) and blkid use.
    pub fn as_str(self) -> &'static str {
        match self {
            FsType::Ext4 => "ext4",
            FsType::Xfs => "xfs",
        }
    }

    /// Whether the file system can only grow while mounted (XFS). ext4 is grown before mounting:
    /// offline growth needs no `CAP_SYS_RESOURCE`, which a plugin often lacks, and the file
    /// system is quiet then.
    pub fn grows_mounted(self) -> bool {
        matches!(self, FsType::Xfs)
    }

    /// Parses a type name (case-insensitive); `None` for anything unsupported.
    pub fn parse(name: &str) -> Option<FsType> {
        FsType::ALL.into_iter().find(|fs| fs.as_str().eq_ignore_ascii_case(name.trim()))
    }
}

impl std::fmt::Display for FsType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What a low-level probe (`blkid -p`) found on a device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Probe {
    /// No signature at all: safe to format.
    Blank,
    /// A file-system signature (`TYPE=`), e.g. `ext4`, `xfs`, `swap`, `ntfs`, `crypto_LUKS`.
    Filesystem(String),
    /// A partition table (`PTTYPE=`), e.g. `dos`, `gpt`. Never formatted.
    PartitionTable(String),
    /// Something is there but the probe could not say what (several signatures, …). Never formatted.
    Unrecognized(String),
}

/// Mode and owner for a directory the backend creates.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DirSpec {
    /// Permission bits (e.g. `0o700`), applied regardless of the umask.
    pub mode: u32,
    /// Owner to set, if any.
    pub uid: Option<u32>,
    /// Group to set, if any.
    pub gid: Option<u32>,
}

/// What a path is, looked at without following a symbolic link at its last component.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Entry {
    /// Nothing is there.
    Missing,
    /// A directory.
    Directory,
    /// A regular file of this many bytes.
    File {
        /// Its size.
        size: u64,
    },
    /// A symbolic link (never followed).
    Symlink,
    /// Anything else (a device node, a socket, a FIFO).
    Other,
}

/// Space and inodes of a file system (`statvfs`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct FsStats {
    /// Size in bytes.
    pub total_bytes: u64,
    /// Bytes available to unprivileged users.
    pub available_bytes: u64,
    /// Bytes in use.
    pub used_bytes: u64,
    /// Inodes in all.
    pub total_inodes: u64,
    /// Free inodes.
    pub free_inodes: u64,
    /// Inodes in use.
    pub used_inodes: u64,
}

/// How this host shows attached cloud volumes. Synchronous: called on the blocking pool.
pub trait DeviceHost: Send + Sync + Debug {
    /// The device `path` names after following symbolic links, if it exists and is under
    /// `/dev` (a link out of `/dev` is refused, as the EBS CSI driver does).
    fn resolve(&self, path: &Path) -> Option<PathBuf>;

    /// The serial number of `device` (NVMe EBS: `vol0123…`), if it can be read.
    fn serial(&self, device: &Path) -> Option<String>;
}

/// Which boot and which host this is.
pub trait HostInfo: Send + Sync + Debug {
    /// The kernel's random ID of the current boot, or `None` where it cannot be read.
    fn boot_id(&self) -> Option<String>;

    /// The host name (the node ID of the local backends).
    fn hostname(&self) -> String;
}

/// Every syscall and external tool the backends use.
///
/// Synchronous on purpose: callers run it inside `tokio::task::spawn_blocking`. The real
/// implementation is [`linux::LinuxOs`]; [`fake::FakeOs`] records the calls for tests.
pub trait BlockOs: Send + Sync + Debug {
    /// Probes `device` for signatures without using the blkid cache. An ext4 or XFS superblock
    /// that leaves no doubt may be recognised from the device's first bytes; anything else
    /// (blank, partitioned, other signatures) is left to a full low-level probe.
    ///
    /// # Errors
    /// The device does not exist or the probe failed.
    fn probe(&self, device: &Path) -> Result<Probe, OsError>;

    /// Makes a file system of type `fs` on `device`, passing `extra` arguments to the tool
    /// after the built-in ones (so they win).
    ///
    /// # Errors
    /// The tool failed.
    fn mkfs(&self, device: &Path, fs: FsType, extra: &[String]) -> Result<(), OsError>;

    /// `mount(2)`s `device` on `target` as `fs` with `flags` and the `data` string (may be empty).
    ///
    /// # Errors
    /// The kernel refused.
    fn mount(&self, device: &Path, target: &Path, fs: FsType, flags: MountFlags, data: &str) -> Result<(), OsError>;

    /// `umount2(2)`s `target`; `lazy` adds `MNT_DETACH`.
    ///
    /// # Errors
    /// The kernel refused (see [`OsError::is_busy`]).
    fn unmount(&self, target: &Path, lazy: bool) -> Result<(), OsError>;

    /// `syncfs(2)` on the file system mounted at `target`.
    ///
    /// # Errors
    /// The directory could not be opened or the sync reported an I/O error.
    fn syncfs(&self, target: &Path) -> Result<(), OsError>;

    /// The topmost mount at `target` per `/proc/self/mountinfo`, if any. `target` is compared
    /// after resolving symbolic links in it.
    ///
    /// # Errors
    /// The mount table could not be read.
    fn mounted_at(&self, target: &Path) -> Result<Option<MountEntry>, OsError>;

    /// The mounts whose mount point is directly in `dir` (compared after resolving `dir`'s
    /// symbolic links), by the mount point's file name: one read of the mount table.
    ///
    /// # Errors
    /// The mount table could not be read.
    fn mounts_under(&self, dir: &Path) -> Result<Vec<(String, MountEntry)>, OsError>;

    /// Whether `device` is larger than the `fs` file system on it by more than
    /// [`GROW_THRESHOLD`]. Reads the on-disk superblock, so call it while the file system is not
    /// mounted.
    ///
    /// # Errors
    /// The device could not be read, or holds no `fs` superblock.
    fn needs_grow(&self, device: &Path, fs: FsType) -> Result<bool, OsError>;

    /// Grows the `fs` file system on `device` to fill the device. With `mountpoint: None` it is
    /// grown offline (ext4: `e2fsck -f -p` then `resize2fs`); with `Some(mountpoint)` it is grown
    /// where it is mounted (XFS, which can only grow mounted: `xfs_growfs -d`; ext4: online
    /// `resize2fs`, which needs `CAP_SYS_RESOURCE`). See [`FsType::grows_mounted`].
    ///
    /// # Errors
    /// A tool failed, or XFS was asked to grow unmounted.
    fn grow(&self, device: &Path, fs: FsType, mountpoint: Option<&Path>) -> Result<(), OsError>;

    /// Creates the configured root `path` (and its missing parents, 0755) with `mode` when it
    /// does not exist; the root itself may be a symbolic link to a directory. Returns whether
    /// it was created.
    ///
    /// # Errors
    /// It could not be created, or exists and is not a directory.
    fn make_root(&self, path: &Path, mode: u32) -> Result<bool, OsError>;

    /// Creates `path` and its missing parents with mode 0755 (`mkdir -p`); the last component
    /// must be a directory of its own, not a symbolic link.
    ///
    /// # Errors
    /// A directory could not be created, or `path` exists and is not a directory.
    fn make_dir(&self, path: &Path) -> Result<(), OsError>;

    /// Creates the directory `path` (parents 0755) with `spec`'s mode and owner; an existing
    /// directory is left as it is. Returns whether it was created.
    ///
    /// # Errors
    /// It could not be created, or exists and is not a directory (a symbolic link is refused).
    fn ensure_dir(&self, path: &Path, spec: DirSpec) -> Result<bool, OsError>;

    /// Sets the mode and owner of the existing `path`.
    ///
    /// # Errors
    /// `chmod`/`chown` failed.
    fn set_owner_mode(&self, path: &Path, spec: DirSpec) -> Result<(), OsError>;

    /// Removes `path` if it is an empty directory. Returns whether it was removed; a missing or
    /// non-empty directory is `false`.
    ///
    /// # Errors
    /// Any other failure.
    fn remove_empty_dir(&self, path: &Path) -> Result<bool, OsError>;

    /// The loop device backed by `image`, if one is attached (a device whose detach is pending
    /// does not count).
    ///
    /// # Errors
    /// The loop devices could not be listed.
    fn loop_find(&self, image: &Path) -> Result<Option<PathBuf>, OsError>;

    /// Attaches `image` to a free loop device and returns the device. The device stays attached
    /// until [`BlockOs::loop_detach`] (no auto-clear), so it can be found again after a restart.
    ///
    /// # Errors
    /// The image is missing or no loop device could be set up.
    fn loop_attach(&self, image: &Path) -> Result<PathBuf, OsError>;

    /// Detaches the loop device `device`. If something else still has it open, the kernel
    /// finishes the detach when that last user closes it; this waits briefly for that.
    ///
    /// # Errors
    /// The kernel refused.
    fn loop_detach(&self, device: &Path) -> Result<(), OsError>;

    /// The size of block device `device` in bytes, as the kernel sees it now.
    ///
    /// # Errors
    /// It could not be opened.
    fn device_size(&self, device: &Path) -> Result<u64, OsError>;

    /// Tells the kernel that the backing file of loop device `device` changed size
    /// (`LOOP_SET_CAPACITY`), so the device grows while it is in use.
    ///
    /// # Errors
    /// The device is not bound, or the kernel refused.
    fn loop_refresh_size(&self, device: &Path) -> Result<(), OsError>;

    /// The size of the regular file `path` in bytes, or `None` when it does not exist.
    ///
    /// # Errors
    /// It could not be examined, or is not a regular file.
    fn file_size(&self, path: &Path) -> Result<Option<u64>, OsError>;

    /// Creates `path` (mode 0600) as a sparse file of `size` bytes. Returns `false`, changing
    /// nothing, when it already exists.
    ///
    /// # Errors
    /// It could not be created; a partly created file is removed.
    fn create_sparse(&self, path: &Path, size: u64) -> Result<bool, OsError>;

    /// Bytes available to unprivileged users on the file system holding `dir` (`statvfs`).
    ///
    /// # Errors
    /// `statvfs` failed.
    fn free_space(&self, dir: &Path) -> Result<u64, OsError>;

    /// Removes the file `path`. Returns whether it existed.
    ///
    /// # Errors
    /// Any failure but "not found".
    fn remove_file(&self, path: &Path) -> Result<bool, OsError>;

    /// What `path` is, without following a symbolic link at its last component.
    ///
    /// # Errors
    /// It could not be examined.
    fn entry(&self, path: &Path) -> Result<Entry, OsError>;

    /// The entries of the directory `dir` (not `.` and `..`), each as [`BlockOs::entry`] sees
    /// it; an empty list when `dir` does not exist.
    ///
    /// # Errors
    /// It could not be listed.
    fn list_dir(&self, dir: &Path) -> Result<Vec<(String, Entry)>, OsError>;

    /// Removes the directory `path` and everything in it, never following a symbolic link
    /// (a link inside is removed as a link). Returns whether it existed.
    ///
    /// # Errors
    /// `path` is a symbolic link or not a directory, or something could not be removed.
    fn remove_tree(&self, path: &Path) -> Result<bool, OsError>;

    /// Extends the regular file `path` to `size` bytes when it is smaller (sparse). Returns
    /// whether it grew.
    ///
    /// # Errors
    /// It is missing, a link or not a regular file, or could not be extended.
    fn grow_file(&self, path: &Path, size: u64) -> Result<bool, OsError>;

    /// Creates the directory `base/rel` (and missing directories between, mode 0755) with
    /// `spec`'s mode and owner, following no symbolic link anywhere below `base` (`base` itself
    /// is not followed either). An existing directory is left as it is. Returns whether it was
    /// created.
    ///
    /// # Errors
    /// A component is a symbolic link or not a directory, or it could not be created.
    fn ensure_dir_beneath(&self, base: &Path, rel: &Path, spec: DirSpec) -> Result<bool, OsError>;

    /// Bind-mounts `source` on `target` (read-only if asked): a directory, or a regular file
    /// for a device; never through a link.
    ///
    /// # Errors
    /// `target` is a link or neither a directory nor a file, or the kernel refused.
    fn bind_mount(&self, source: &Path, target: &Path, read_only: bool) -> Result<(), OsError>;

    /// Space and inodes of the file system holding `path`.
    ///
    /// # Errors
    /// `statvfs` failed.
    fn statfs(&self, path: &Path) -> Result<FsStats, OsError>;

    /// Whether the loop device `device` is bound to the very file `image` (same device and
    /// inode; `image` is not followed if it is a link).
    ///
    /// # Errors
    /// The device or the image could not be examined.
    fn loop_backed_by(&self, device: &Path, image: &Path) -> Result<bool, OsError>;

    /// Every bound loop device whose backing file is directly in `dir`, as (device, file name).
    ///
    /// # Errors
    /// The loop devices could not be listed.
    fn loop_devices_in(&self, dir: &Path) -> Result<Vec<(PathBuf, String)>, OsError>;
}
