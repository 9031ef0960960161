//! The real [`BlockOs`]: rustix syscalls, std file operations and util-linux / e2fsprogs /
//! xfsprogs tools.
//!
//! This is the only file in the crate that runs external programs. Tools run with `LC_ALL=C`,
//! no stdin, the working directory `/`, and never through a shell: every argument is passed as
//! one `argv` entry.

use std::ffi::{CString, OsStr};
use std::fs::{self, DirBuilder, OpenOptions};
use std::io::{self, Seek, SeekFrom};
use std::os::unix::fs::{DirBuilderExt, FileExt, FileTypeExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use super::{mountinfo, BlockOs, DirSpec, FsType, MountEntry, MountFlags, OsError, Probe, GROW_THRESHOLD};

/// Where the kernel lists the mounts of this process's mount namespace.
const MOUNTINFO: &str = "/proc/self/mountinfo";
/// Where the kernel lists block devices (each loop device has `loop/backing_file` while bound).
const SYS_BLOCK: &str = "/sys/block";
/// How often, and how long apart, a detach is checked for completion (2 s in all).
const DETACH_POLLS: u32 = 40;
/// See [`DETACH_POLLS`].
const DETACH_POLL_INTERVAL: std::time::Duration = std::time::Duration::from_millis(50);
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

/// Where the primary superblock of `fs` is: (offset, length to read).
fn superblock_location(fs: FsType) -> (u64, usize) {
    match fs {
        FsType::Ext4 => (1024, 1024),
        FsType::Xfs => (0, 512),
    }
}

/// The size of the file system in bytes, from its primary superblock (as read from
/// [`superblock_location`]); `None` when the magic number does not match.
///
/// ext4: magic `0xEF53` at 0x38 (LE); blocks = `s_blocks_count_lo` (0x04) plus
/// `s_blocks_count_hi` (0x150) when the `64bit` incompat feature (0x80 in 0x60) is set; block
/// size = 1024 << `s_log_block_size` (0x18). XFS: magic `XFSB` at 0; `sb_blocksize` (BE u32 at
/// 4) × `sb_dblocks` (BE u64 at 8).
pub fn fs_bytes_from_superblock(fs: FsType, sb: &[u8]) -> Option<u64> {
    let le32 = |at: usize| sb.get(at..at + 4).map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]));
    match fs {
        FsType::Ext4 => {
            let magic = sb.get(0x38..0x3A).map(|b| u16::from_le_bytes([b[0], b[1]]))?;
            if magic != 0xEF53 {
                return None;
            }
            let log_block = le32(0x18)?;
            if log_block > 6 {
                return None;
            }
            let block_size = 1024u64 << log_block;
            let mut blocks = u64::from(le32(0x04)?);
            if le32(0x60)? & 0x80 != 0 {
                blocks |= u64::from(le32(0x150)?) << 32;
            }
            blocks.checked_mul(block_size)
        }
        FsType::Xfs => {
            if sb.get(0..4)? != b"XFSB" {
                return None;
            }
            let block_size = u32::from_be_bytes(sb.get(4..8)?.try_into().ok()?);
            let blocks = u64::from_be_bytes(sb.get(8..16)?.try_into().ok()?);
            blocks.checked_mul(u64::from(block_size))
        }
    }
}

/// The path a loop device's `backing_file` would show for `image`: its directory resolved.
fn resolved_image_path(image: &Path) -> PathBuf {
    match (image.parent(), image.file_name()) {
        (Some(dir), Some(file)) => fs::canonicalize(if dir.as_os_str().is_empty() { Path::new(".") } else { dir })
            .map(|d| d.join(file))
            .unwrap_or_else(|_| image.to_path_buf()),
        _ => image.to_path_buf(),
    }
}

impl BlockOs for LinuxOs {
    fn probe(&self, device: &Path) -> Result<Probe, OsError> {
        // blkid exits 2 for a missing device too: make sure it is there first.
        require_block_device(device)?;
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
        rustix::mount::mount(device, target, fs.as_str(), flags, data.as_deref())
            .map_err(|e| OsError::Sys { op: op(), source: e.into() })
    }

    fn unmount(&self, target: &Path, lazy: bool) -> Result<(), OsError> {
        let flags = if lazy { rustix::mount::UnmountFlags::DETACH } else { rustix::mount::UnmountFlags::empty() };
        rustix::mount::unmount(target, flags).map_err(|e| OsError::Sys {
            op: format!("unmount {}{}", target.display(), if lazy { " (lazy)" } else { "" }),
            source: e.into(),
        })
    }

    fn syncfs(&self, target: &Path) -> Result<(), OsError> {
        let dir = fs::File::open(target).map_err(sys(format!("open {}", target.display())))?;
        rustix::fs::syncfs(&dir)
            .map_err(|e| OsError::Sys { op: format!("syncfs {}", target.display()), source: e.into() })
    }

    fn mounted_at(&self, target: &Path) -> Result<Option<MountEntry>, OsError> {
        let target = match fs::canonicalize(target) {
            Ok(t) => t,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(sys(format!("resolve {}", target.display()))(e)),
        };
        let bytes = fs::read(MOUNTINFO).map_err(sys(format!("read {MOUNTINFO}")))?;
        let entries = mountinfo::parse(&String::from_utf8_lossy(&bytes));
        Ok(mountinfo::find_at(&entries, &target).cloned())
    }

    fn needs_grow(&self, device: &Path, fs: FsType) -> Result<bool, OsError> {
        let mut file = fs::File::open(device).map_err(sys(format!("open {}", device.display())))?;
        let device_bytes =
            file.seek(SeekFrom::End(0)).map_err(sys(format!("read the size of {}", device.display())))?;
        let (offset, len) = superblock_location(fs);
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

    fn make_dir(&self, path: &Path) -> Result<(), OsError> {
        DirBuilder::new()
            .recursive(true)
            .mode(0o755)
            .create(path)
            .map_err(sys(format!("create directory {}", path.display())))
    }

    fn ensure_dir(&self, path: &Path, spec: DirSpec) -> Result<bool, OsError> {
        if let Some(parent) = path.parent() {
            self.make_dir(parent)?;
        }
        match DirBuilder::new().mode(spec.mode & 0o777).create(path) {
            Ok(()) => {
                self.set_owner_mode(path, spec)?;
                Ok(true)
            }
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                let meta = fs::symlink_metadata(path).map_err(sys(format!("examine {}", path.display())))?;
                if meta.is_dir() {
                    Ok(false)
                } else {
                    Err(OsError::Unexpected(format!("{} exists and is not a directory", path.display())))
                }
            }
            Err(e) => Err(sys(format!("create directory {}", path.display()))(e)),
        }
    }

    fn set_owner_mode(&self, path: &Path, spec: DirSpec) -> Result<(), OsError> {
        // chown first: it may clear set-id bits that chmod then sets again.
        if spec.uid.is_some() || spec.gid.is_some() {
            std::os::unix::fs::chown(path, spec.uid, spec.gid)
                .map_err(sys(format!("set owner of {}", path.display())))?;
        }
        fs::set_permissions(path, fs::Permissions::from_mode(spec.mode))
            .map_err(sys(format!("set mode of {}", path.display())))
    }

    fn remove_empty_dir(&self, path: &Path) -> Result<bool, OsError> {
        match fs::remove_dir(path) {
            Ok(()) => Ok(true),
            Err(e) if matches!(e.kind(), io::ErrorKind::NotFound | io::ErrorKind::DirectoryNotEmpty) => Ok(false),
            Err(e) => Err(sys(format!("remove directory {}", path.display()))(e)),
        }
    }

    fn loop_find(&self, image: &Path) -> Result<Option<PathBuf>, OsError> {
        let wanted = resolved_image_path(image);
        let entries = fs::read_dir(SYS_BLOCK).map_err(sys(format!("list {SYS_BLOCK}")))?;
        let mut found: Vec<String> = Vec::new();
        for entry in entries {
            let entry = entry.map_err(sys(format!("list {SYS_BLOCK}")))?;
            let name = entry.file_name();
            let Some(name) = name.to_str() else { continue };
            if !name.starts_with("loop") {
                continue;
            }
            let backing = match fs::read(entry.path().join("loop/backing_file")) {
                Ok(b) => b,
                // Not bound (no backing_file): not ours.
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                // A device being set up or torn down right now (by someone else: ours are not
                // in flux while we hold the volume's lock) can fail to answer: not ours either.
                Err(e) => {
                    tracing::debug!(device = name, error = %e, "skipping a loop device whose backing file cannot be read");
                    continue;
                }
            };
            let backing = String::from_utf8_lossy(&backing);
            let backing = Path::new(backing.trim_end_matches('\n'));
            if backing != wanted && backing != image {
                continue;
            }
            // We never set autoclear, so it means a detach is pending until the last opener
            // goes: the device is on its way out and must not be used again.
            if fs::read(entry.path().join("loop/autoclear")).is_ok_and(|a| a.starts_with(b"1")) {
                tracing::debug!(device = name, image = %image.display(), "skipping a loop device that is being detached");
                continue;
            }
            found.push(name.to_owned());
        }
        // Lowest number first, so the answer is stable if an image is (wrongly) attached twice.
        found.sort_by_key(|n| n.trim_start_matches("loop").parse::<u32>().unwrap_or(u32::MAX));
        if found.len() > 1 {
            tracing::warn!(image = %image.display(), devices = ?found, "image is attached to several loop devices");
        }
        Ok(found.first().map(|n| Path::new("/dev").join(n)))
    }

    fn loop_attach(&self, image: &Path) -> Result<PathBuf, OsError> {
        let meta = fs::metadata(image).map_err(sys(format!("attach {}", image.display())))?;
        if !meta.is_file() {
            return Err(OsError::Unexpected(format!("{} is not a regular file", image.display())));
        }
        let args = [OsStr::new("--find"), OsStr::new("--show"), OsStr::new("--direct-io=off"), image.as_os_str()];
        let out = run_ok("losetup", &args, image)?;
        let device = String::from_utf8_lossy(&out.stdout).trim().to_owned();
        if device.starts_with("/dev/") && !device.contains(char::is_whitespace) {
            Ok(PathBuf::from(device))
        } else {
            Err(OsError::Unexpected(format!("losetup printed {device:?} for {}", image.display())))
        }
    }

    fn loop_detach(&self, device: &Path) -> Result<(), OsError> {
        run_ok("losetup", &[OsStr::new("-d"), device.as_os_str()], device)?;
        // While anyone else has the device open (a scanner, a lazily unmounted file system) the
        // kernel only marks it for release on last close. Give a brief opener time to go.
        let backing = device
            .file_name()
            .map(|n| Path::new(SYS_BLOCK).join(n).join("loop/backing_file"))
            .ok_or_else(|| OsError::Unexpected(format!("{} is not a device path", device.display())))?;
        for _ in 0..DETACH_POLLS {
            if !backing.exists() {
                return Ok(());
            }
            std::thread::sleep(DETACH_POLL_INTERVAL);
        }
        tracing::warn!(
            device = %device.display(),
            "loop device is still open elsewhere; the kernel will detach it when the last user closes it"
        );
        Ok(())
    }

    fn file_size(&self, path: &Path) -> Result<Option<u64>, OsError> {
        match fs::metadata(path) {
            Ok(meta) if meta.is_file() => Ok(Some(meta.len())),
            Ok(_) => Err(OsError::Unexpected(format!("{} is not a regular file", path.display()))),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(sys(format!("examine {}", path.display()))(e)),
        }
    }

    fn create_sparse(&self, path: &Path, size: u64) -> Result<bool, OsError> {
        let file = match OpenOptions::new().write(true).create_new(true).mode(0o600).open(path) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => return Ok(false),
            Err(e) => return Err(sys(format!("create {}", path.display()))(e)),
        };
        let sized = file.set_len(size).and_then(|()| file.sync_all());
        if let Err(e) = sized {
            drop(file);
            if let Err(cleanup) = fs::remove_file(path) {
                tracing::warn!(path = %path.display(), %cleanup, "could not remove a partly created image");
            }
            return Err(sys(format!("size {} to {size} bytes", path.display()))(e));
        }
        Ok(true)
    }

    fn free_space(&self, dir: &Path) -> Result<u64, OsError> {
        let st = rustix::fs::statvfs(dir)
            .map_err(|e| OsError::Sys { op: format!("statvfs {}", dir.display()), source: e.into() })?;
        Ok(st.f_bavail.saturating_mul(st.f_frsize))
    }

    fn remove_file(&self, path: &Path) -> Result<bool, OsError> {
        match fs::remove_file(path) {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(sys(format!("remove {}", path.display()))(e)),
        }
    }
}

#[cfg(test)]
mod tests {
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
    fn superblock_sizes() {
        let mut ext4 = vec![0u8; 1024];
        ext4[0x38..0x3A].copy_from_slice(&0xEF53u16.to_le_bytes());
        ext4[0x04..0x08].copy_from_slice(&262_144u32.to_le_bytes());
        ext4[0x18..0x1C].copy_from_slice(&2u32.to_le_bytes()); // 4096-byte blocks
        assert_eq!(fs_bytes_from_superblock(FsType::Ext4, &ext4), Some(1 << 30));
        ext4[0x150..0x154].copy_from_slice(&1u32.to_le_bytes());
        assert_eq!(fs_bytes_from_superblock(FsType::Ext4, &ext4), Some(1 << 30), "hi word needs 64bit");
        ext4[0x60..0x64].copy_from_slice(&0x80u32.to_le_bytes());
        assert_eq!(fs_bytes_from_superblock(FsType::Ext4, &ext4), Some((1 << 30) + (4096 << 32)));
        assert_eq!(fs_bytes_from_superblock(FsType::Xfs, &ext4), None);

        let mut xfs = vec![0u8; 512];
        xfs[0..4].copy_from_slice(b"XFSB");
        xfs[4..8].copy_from_slice(&4096u32.to_be_bytes());
        xfs[8..16].copy_from_slice(&524_288u64.to_be_bytes());
        assert_eq!(fs_bytes_from_superblock(FsType::Xfs, &xfs), Some(2 << 30));
        assert_eq!(fs_bytes_from_superblock(FsType::Ext4, &xfs), None);
        assert_eq!(fs_bytes_from_superblock(FsType::Ext4, &[0u8; 10]), None);
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
}
