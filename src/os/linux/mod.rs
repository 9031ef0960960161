//! The real [`BlockOs`]: rustix syscalls, std file operations and util-linux / e2fsprogs /
//! xfsprogs tools.
//!
//! This module is the only code in the crate that runs external programs or uses `unsafe`.
//! Tools run with `LC_ALL=C`, no stdin, the working directory `/`, and never through a shell:
//! every argument is passed as one `argv` entry.
//!
//! The hot path of a mount runs no tool at all: loop devices are set up and torn down with the
//! loop ioctls ([`loopdev`]), and an ext4 or XFS device is recognised from its superblock
//! ([`superblock::quick_probe`]); `blkid -p` only runs for what that cannot settle (a blank
//! device before its first format, foreign signatures). No path under a root is followed
//! through a symbolic link ([`files`]).
#![allow(unsafe_code)]

mod files;
mod host;
mod loopdev;
pub mod superblock;

use std::ffi::{CString, OsStr};
use std::fs::{self, File};
use std::io::{self, Seek, SeekFrom};
use std::os::fd::AsFd;
use std::os::unix::fs::{FileExt, FileTypeExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use super::{
    mountinfo, BlockOs, DirSpec, Entry, FsStats, FsType, MountEntry, MountFlags, OsError, Probe, GROW_THRESHOLD,
};
pub use superblock::{fs_bytes_from_superblock, quick_probe, QUICK_PROBE_BYTES};

/// Where the kernel lists the mounts of this process's mount namespace.
const MOUNTINFO: &str = "/proc/self/mountinfo";
/// How much of a tool's stderr an error keeps.
const MAX_STDERR: usize = 2000;
/// `blkid` exit status: nothing found ("no specified token found").
const BLKID_NOTHING_FOUND: i32 = 2;
/// `blkid` exit status: several conflicting signatures ("ambivalent probing result").
const BLKID_AMBIVALENT: i32 = 8;

/// The real operating system.
#[derive(Debug, Default, Clone, Copy)]
pub struct LinuxOs;

impl LinuxOs {
    /// The real operating system.
    pub fn new() -> Self {
        Self
    }
}

fn sys(op: impl Into<String>) -> impl FnOnce(io::Error) -> OsError {
    let op = op.into();
    move |source| OsError::Sys { op, source }
}

/// Runs `program args…` and returns its output, whatever the exit status.
fn run(program: &str, args: &[&OsStr]) -> Result<Output, OsError> {
    tracing::debug!(program, ?args, "running");
    Command::new(program)
        .args(args)
        .env("LC_ALL", "C")
        .current_dir("/")
        .stdin(Stdio::null())
        .output()
        .map_err(sys(format!("run {program}")))
}

/// Runs a tool and turns a failure into [`OsError::Tool`] named `program subject`.
fn run_ok(program: &str, args: &[&OsStr], subject: &Path) -> Result<Output, OsError> {
    let out = run(program, args)?;
    if out.status.success() {
        Ok(out)
    } else {
        Err(tool_error(program, subject, &out))
    }
}

fn tool_error(program: &str, subject: &Path, out: &Output) -> OsError {
    let text = if out.stderr.iter().all(u8::is_ascii_whitespace) { &out.stdout } else { &out.stderr };
    let mut stderr = String::from_utf8_lossy(text).trim().to_owned();
    if stderr.len() > MAX_STDERR {
        let mut cut = MAX_STDERR;
        while !stderr.is_char_boundary(cut) {
            cut -= 1;
        }
        stderr.truncate(cut);
        stderr.push('…');
    }
    OsError::Tool { tool: format!("{program} {}", subject.display()), status: out.status.to_string(), stderr }
}

/// Parses `blkid -o export` output for the `TYPE` and `PTTYPE` tokens.
fn parse_blkid_export(stdout: &str) -> Probe {
    let mut fs_type = None;
    let mut pt_type = None;
    for line in stdout.lines() {
        match line.split_once('=') {
            Some(("TYPE", v)) => fs_type = Some(v.trim().to_owned()),
            Some(("PTTYPE", v)) => pt_type = Some(v.trim().to_owned()),
            _ => {}
        }
    }
    match (pt_type, fs_type) {
        (Some(pt), _) => Probe::PartitionTable(pt),
        (None, Some(fs)) => Probe::Filesystem(fs),
        (None, None) => Probe::Unrecognized(format!("blkid found a signature it could not name: {}", stdout.trim())),
    }
}

fn require_block_device(device: &Path) -> Result<(), OsError> {
    let meta = fs::metadata(device).map_err(sys(format!("examine {}", device.display())))?;
    if meta.file_type().is_block_device() {
        Ok(())
    } else {
        Err(OsError::Unexpected(format!("{} is not a block device", device.display())))
    }
}

/// `target` with its directory resolved and its last component not: what `/proc/self/mountinfo`
/// shows for a mount there, without letting a link at the last component stand for another
/// mount point.
fn mount_point_of(target: &Path) -> Option<PathBuf> {
    let (dir, name) = (target.parent()?, target.file_name()?);
    let dir = if dir.as_os_str().is_empty() { Path::new(".") } else { dir };
    Some(fs::canonicalize(dir).ok()?.join(name))
}

fn read_mounts() -> Result<Vec<MountEntry>, OsError> {
    let bytes = fs::read(MOUNTINFO).map_err(sys(format!("read {MOUNTINFO}")))?;
    Ok(mountinfo::parse(&String::from_utf8_lossy(&bytes)))
}

impl BlockOs for LinuxOs {
    fn probe(&self, device: &Path) -> Result<Probe, OsError> {
        // blkid exits 2 for a missing device too: make sure it is there first (and not, say, a
        // FIFO, whose open would block).
        require_block_device(device)?;
        let file = File::open(device).map_err(sys(format!("open {}", device.display())))?;
        match superblock::read_head(&file) {
            Ok(head) => {
                if let Some(fs) = quick_probe(&head) {
                    tracing::debug!(device = %device.display(), %fs, "recognised the superblock");
                    return Ok(Probe::Filesystem(fs.as_str().to_owned()));
                }
            }
            // blkid reads the same bytes and reports the failure its own way.
            Err(e) => tracing::debug!(device = %device.display(), error = %e, "could not read the first bytes"),
        }
        drop(file);
        let args = [
            OsStr::new("-p"),
            OsStr::new("-s"),
            OsStr::new("TYPE"),
            OsStr::new("-s"),
            OsStr::new("PTTYPE"),
            OsStr::new("-o"),
            OsStr::new("export"),
            device.as_os_str(),
        ];
        let out = run("blkid", &args)?;
        match out.status.code() {
            Some(0) => Ok(parse_blkid_export(&String::from_utf8_lossy(&out.stdout))),
            Some(BLKID_NOTHING_FOUND) => Ok(Probe::Blank),
            Some(BLKID_AMBIVALENT) => Ok(Probe::Unrecognized("several conflicting signatures".into())),
            _ => Err(tool_error("blkid", device, &out)),
        }
    }

    fn mkfs(&self, device: &Path, fs: FsType, extra: &[String]) -> Result<(), OsError> {
        let (program, fixed): (&str, &[&str]) = match fs {
            FsType::Ext4 => ("mkfs.ext4", &["-F", "-m0", "-E", "lazy_itable_init=1,lazy_journal_init=1"]),
            FsType::Xfs => ("mkfs.xfs", &["-f"]),
        };
        let mut args: Vec<&OsStr> = fixed.iter().map(OsStr::new).collect();
        args.extend(extra.iter().map(OsStr::new));
        args.push(device.as_os_str());
        run_ok(program, &args, device).map(drop)
    }

    fn mount(&self, device: &Path, target: &Path, fs: FsType, flags: MountFlags, data: &str) -> Result<(), OsError> {
        let op = || format!("mount {} on {} ({fs}, {data:?})", device.display(), target.display());
        let data = if data.is_empty() {
            None
        } else {
            Some(CString::new(data).map_err(|_| OsError::Unexpected(format!("{}: NUL in mount data", op())))?)
        };
        // Mounted onto the checked directory's own descriptor: a link swapped in for it between
        // the check and the mount cannot redirect the mount.
        let dir = files::open_mount_target(target)?;
        rustix::mount::mount(device, files::fd_path(dir.as_fd()), fs.as_str(), flags, data.as_deref())
            .map_err(|e| OsError::Sys { op: op(), source: e.into() })
    }

    fn unmount(&self, target: &Path, lazy: bool) -> Result<(), OsError> {
        use rustix::mount::UnmountFlags;
        let flags = if lazy { UnmountFlags::DETACH } else { UnmountFlags::empty() } | UnmountFlags::NOFOLLOW;
        rustix::mount::unmount(target, flags).map_err(|e| OsError::Sys {
            op: format!("unmount {}{}", target.display(), if lazy { " (lazy)" } else { "" }),
            source: e.into(),
        })
    }

    fn syncfs(&self, target: &Path) -> Result<(), OsError> {
        files::syncfs(target)
    }

    fn mounted_at(&self, target: &Path) -> Result<Option<MountEntry>, OsError> {
        let Some(target) = mount_point_of(target) else {
            return Ok(None);
        };
        Ok(mountinfo::find_at(&read_mounts()?, &target).cloned())
    }

    fn mounts_under(&self, dir: &Path) -> Result<Vec<(String, MountEntry)>, OsError> {
        let dir = match fs::canonicalize(dir) {
            Ok(dir) => dir,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(sys(format!("resolve {}", dir.display()))(e)),
        };
        Ok(read_mounts()?
            .into_iter()
            .filter(|m| m.mount_point.parent() == Some(dir.as_path()))
            .filter_map(|m| Some((m.mount_point.file_name()?.to_str()?.to_owned(), m)))
            .collect())
    }

    fn needs_grow(&self, device: &Path, fs: FsType) -> Result<bool, OsError> {
        let mut file = fs::File::open(device).map_err(sys(format!("open {}", device.display())))?;
        let device_bytes =
            file.seek(SeekFrom::End(0)).map_err(sys(format!("read the size of {}", device.display())))?;
        let (offset, len) = superblock::superblock_location(fs);
        let mut sb = vec![0u8; len];
        file.read_exact_at(&mut sb, offset)
            .map_err(sys(format!("read the {fs} superblock of {}", device.display())))?;
        let fs_bytes = fs_bytes_from_superblock(fs, &sb)
            .ok_or_else(|| OsError::Unexpected(format!("{} holds no {fs} superblock", device.display())))?;
        tracing::debug!(device = %device.display(), device_bytes, fs_bytes, "sizes");
        Ok(device_bytes > fs_bytes.saturating_add(GROW_THRESHOLD))
    }

    fn grow(&self, device: &Path, fs: FsType, mountpoint: Option<&Path>) -> Result<(), OsError> {
        match (fs, mountpoint) {
            (FsType::Ext4, None) => {
                // resize2fs refuses an unmounted file system that was not checked just before.
                let out = run("e2fsck", &[OsStr::new("-f"), OsStr::new("-p"), device.as_os_str()])?;
                // 0: clean; 1: errors corrected. Anything else needs a person.
                if !matches!(out.status.code(), Some(0 | 1)) {
                    return Err(tool_error("e2fsck", device, &out));
                }
                run_ok("resize2fs", &[device.as_os_str()], device).map(drop)
            }
            (FsType::Ext4, Some(_)) => run_ok("resize2fs", &[device.as_os_str()], device).map(drop),
            (FsType::Xfs, Some(mnt)) => run_ok("xfs_growfs", &[OsStr::new("-d"), mnt.as_os_str()], mnt).map(drop),
            (FsType::Xfs, None) => {
                Err(OsError::Unexpected(format!("xfs on {} can only grow while mounted", device.display())))
            }
        }
    }

    fn make_root(&self, path: &Path, mode: u32) -> Result<bool, OsError> {
        files::make_root(path, mode)
    }

    fn make_dir(&self, path: &Path) -> Result<(), OsError> {
        files::make_dir(path)
    }

    fn ensure_dir(&self, path: &Path, spec: DirSpec) -> Result<bool, OsError> {
        files::ensure_dir(path, spec)
    }

    fn set_owner_mode(&self, path: &Path, spec: DirSpec) -> Result<(), OsError> {
        files::set_owner_mode(path, spec)
    }

    fn remove_empty_dir(&self, path: &Path) -> Result<bool, OsError> {
        files::remove_empty_dir(path)
    }

    fn loop_find(&self, image: &Path) -> Result<Option<PathBuf>, OsError> {
        loopdev::find(image)
    }

    fn loop_attach(&self, image: &Path) -> Result<PathBuf, OsError> {
        loopdev::attach_image(image, loopdev::BindWith::Configure)
    }

    fn loop_detach(&self, device: &Path) -> Result<(), OsError> {
        loopdev::detach_device(device)
    }

    fn device_size(&self, device: &Path) -> Result<u64, OsError> {
        let mut file = fs::File::open(device).map_err(sys(format!("open {}", device.display())))?;
        file.seek(SeekFrom::End(0)).map_err(sys(format!("read the size of {}", device.display())))
    }

    fn loop_refresh_size(&self, device: &Path) -> Result<(), OsError> {
        loopdev::refresh_size(device)
    }

    fn file_size(&self, path: &Path) -> Result<Option<u64>, OsError> {
        files::file_size(path)
    }

    fn create_sparse(&self, path: &Path, size: u64) -> Result<bool, OsError> {
        files::create_sparse(path, size)
    }

    fn free_space(&self, dir: &Path) -> Result<u64, OsError> {
        files::statfs(dir).map(|s| s.available_bytes)
    }

    fn remove_file(&self, path: &Path) -> Result<bool, OsError> {
        files::remove_file(path)
    }

    fn entry(&self, path: &Path) -> Result<Entry, OsError> {
        files::entry(path)
    }

    fn list_dir(&self, dir: &Path) -> Result<Vec<(String, Entry)>, OsError> {
        files::list_dir(dir)
    }

    fn remove_tree(&self, path: &Path) -> Result<bool, OsError> {
        files::remove_tree(path)
    }

    fn grow_file(&self, path: &Path, size: u64) -> Result<bool, OsError> {
        files::grow_file(path, size)
    }

    fn ensure_dir_beneath(&self, base: &Path, rel: &Path, spec: DirSpec) -> Result<bool, OsError> {
        files::ensure_dir_beneath(base, rel, spec)
    }

    fn bind_mount(&self, source: &Path, target: &Path, read_only: bool) -> Result<(), OsError> {
        let op = || format!("bind-mount {} on {}", source.display(), target.display());
        let dir = files::open_bind_target(target)?;
        rustix::mount::mount_bind(source, files::fd_path(dir.as_fd()))
            .map_err(|e| OsError::Sys { op: op(), source: e.into() })?;
        if read_only {
            let flags = MountFlags::BIND | MountFlags::RDONLY;
            if let Err(e) = rustix::mount::mount_remount(target, flags, "") {
                let undo = rustix::mount::unmount(target, rustix::mount::UnmountFlags::NOFOLLOW);
                if let Err(undo) = undo {
                    tracing::warn!(target = %target.display(), error = %undo, "could not undo a bind mount that stayed writable");
                }
                return Err(OsError::Sys { op: format!("{} read-only", op()), source: e.into() });
            }
        }
        Ok(())
    }

    fn statfs(&self, path: &Path) -> Result<FsStats, OsError> {
        files::statfs(path)
    }

    fn loop_backed_by(&self, device: &Path, image: &Path) -> Result<bool, OsError> {
        loopdev::backed_by(device, image)
    }

    fn loop_devices_in(&self, dir: &Path) -> Result<Vec<(PathBuf, String)>, OsError> {
        loopdev::devices_in(dir)
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    #[test]
    fn blkid_export_is_classified() {
        assert_eq!(parse_blkid_export("DEVNAME=/dev/loop0\nTYPE=ext4\n"), Probe::Filesystem("ext4".into()));
        assert_eq!(parse_blkid_export("DEVNAME=/dev/loop0\nTYPE=swap\n"), Probe::Filesystem("swap".into()));
        assert_eq!(parse_blkid_export("DEVNAME=/dev/loop0\nPTTYPE=gpt\n"), Probe::PartitionTable("gpt".into()));
        // A hybrid image (iso9660 with a partition table) counts as partitioned.
        assert_eq!(
            parse_blkid_export("DEVNAME=/dev/sr0\nTYPE=iso9660\nPTTYPE=dos\n"),
            Probe::PartitionTable("dos".into())
        );
        assert!(matches!(parse_blkid_export("DEVNAME=/dev/loop0\n"), Probe::Unrecognized(_)));
    }

    #[test]
    fn missing_files_are_reported_plainly() {
        let os = LinuxOs::new();
        let tmp = tempfile::tempdir().unwrap();
        assert_eq!(os.file_size(&tmp.path().join("nope.img")).unwrap(), None);
        assert!(!os.remove_file(&tmp.path().join("nope.img")).unwrap());
        assert!(!os.remove_empty_dir(&tmp.path().join("nope")).unwrap());
        assert_eq!(os.mounted_at(&tmp.path().join("nope")).unwrap(), None);
        assert!(os.probe(&tmp.path().join("nope")).unwrap_err().is_not_found());
    }

    #[test]
    fn sparse_files_and_dirs() {
        let os = LinuxOs::new();
        let tmp = tempfile::tempdir().unwrap();
        let img = tmp.path().join("a.img");
        assert!(os.create_sparse(&img, 1 << 30).unwrap());
        assert!(!os.create_sparse(&img, 1 << 20).unwrap(), "an existing image is kept");
        assert_eq!(os.file_size(&img).unwrap(), Some(1 << 30));
        let meta = fs::metadata(&img).unwrap();
        assert_eq!(meta.permissions().mode() & 0o777, 0o600);
        assert!(std::os::unix::fs::MetadataExt::blocks(&meta) < 64, "the image must be sparse");
        assert!(os.free_space(tmp.path()).unwrap() > 0);

        let dir = tmp.path().join("x/y/data");
        let spec = DirSpec { mode: 0o750, uid: None, gid: None };
        assert!(os.ensure_dir(&dir, spec).unwrap());
        assert_eq!(fs::metadata(&dir).unwrap().permissions().mode() & 0o7777, 0o750);
        assert!(!os.ensure_dir(&dir, spec).unwrap());
        assert!(os.ensure_dir(&img, spec).is_err(), "a file is not a directory");
        std::os::unix::fs::symlink(&dir, tmp.path().join("link")).unwrap();
        assert!(os.ensure_dir(&tmp.path().join("link"), spec).is_err(), "a symlink is refused");
        assert!(os.remove_empty_dir(&dir).unwrap());
        assert!(os.remove_file(&img).unwrap());
    }
    #[test]
    fn a_mount_point_that_is_a_link_is_not_a_mount_point() {
        let os = LinuxOs::new();
        let tmp = tempfile::tempdir().unwrap();
        std::os::unix::fs::symlink("/", tmp.path().join("root-link")).unwrap();
        assert_eq!(os.mounted_at(&tmp.path().join("root-link")).unwrap(), None, "/ is mounted, the link is not");
        assert!(matches!(
            os.mount(Path::new("/dev/null"), &tmp.path().join("root-link"), FsType::Ext4, MountFlags::empty(), ""),
            Err(OsError::Symlink(_))
        ));
    }
}
