//! The real [`BlockOs`]: rustix syscalls, std file operations and util-linux / e2fsprogs /
//! xfsprogs tools.
//!
//! This is the only file in the crate that runs external programs or uses `unsafe`. Tools run
//! with `LC_ALL=C`, no stdin, the working directory `/`, and never through a shell: every
//! argument is passed as one `argv` entry.
//!
//! The hot path of a mount runs no tool at all: loop devices are set up and torn down with the
//! loop ioctls (`LOOP_CTL_GET_FREE`, `LOOP_CONFIGURE`, `LOOP_CLR_FD`), and an ext4 or XFS
//! device is recognised from its superblock ([`quick_probe`]); `blkid -p` only runs for what
//! that cannot settle (a blank device before its first format, foreign signatures).

use std::ffi::{c_void, CString, OsStr};
use std::fs::{self, DirBuilder, File, OpenOptions};
use std::io::{self, Seek, SeekFrom};
use std::os::fd::AsRawFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirBuilderExt, FileExt, FileTypeExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use rustix::io::Errno;
use rustix::ioctl::{ioctl, opcode, Getter, IntegerSetter, Ioctl, IoctlOutput, NoArg, Opcode, Setter};

use super::{mountinfo, BlockOs, DirSpec, FsType, MountEntry, MountFlags, OsError, Probe, GROW_THRESHOLD};

/// Where the kernel lists the mounts of this process's mount namespace.
const MOUNTINFO: &str = "/proc/self/mountinfo";
/// Where the kernel lists block devices (each loop device has `loop/backing_file` while bound).
const SYS_BLOCK: &str = "/sys/block";
/// How long a detach waits for the last other opener of the device to close it.
const DETACH_WAIT: Duration = Duration::from_secs(2);
/// The first pause while waiting for a detach to finish; it doubles up to
/// [`DETACH_POLL_MAX`], so a detach that completes at once costs no sleep at all.
const DETACH_POLL_FIRST: Duration = Duration::from_millis(1);
/// The longest pause between two checks of a pending detach.
const DETACH_POLL_MAX: Duration = Duration::from_millis(50);
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

/// The most a sysfs attribute holds (one page).
const SYSFS_ATTR_MAX: usize = 4096;

/// Reads the sysfs attribute `path` into `buf`: one `open` and one `read`, which is how sysfs
/// hands out an attribute (whole, up to a page).
fn read_sysfs_attr<'a>(path: &Path, buf: &'a mut [u8; SYSFS_ATTR_MAX]) -> io::Result<&'a [u8]> {
    use std::io::Read;
    let n = File::open(path)?.read(buf)?;
    Ok(&buf[..n])
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

// ---------------------------------------------------------------------------------------------
// Loop devices: the ioctls of linux/loop.h.
// ---------------------------------------------------------------------------------------------

/// The control device that hands out free loop devices.
const LOOP_CONTROL: &str = "/dev/loop-control";
/// `LOOP_SET_FD`: binds the file whose descriptor is the (integer) argument. Pre-5.8 kernels.
const LOOP_SET_FD: Opcode = opcode::none(b'L', 0x00);
/// `LOOP_CLR_FD`: marks the device for detaching; the kernel detaches it on the last close.
const LOOP_CLR_FD: Opcode = opcode::none(b'L', 0x01);
/// `LOOP_SET_STATUS64`: sets a bound device's `struct loop_info64`. Pre-5.8 kernels.
const LOOP_SET_STATUS64: Opcode = opcode::none(b'L', 0x04);
/// `LOOP_GET_STATUS64`: reads a bound device's `struct loop_info64`.
const LOOP_GET_STATUS64: Opcode = opcode::none(b'L', 0x05);
/// `LOOP_CONFIGURE` (Linux ≥ 5.8): binds a file and sets its status in one step.
const LOOP_CONFIGURE: Opcode = opcode::none(b'L', 0x0A);
/// `LOOP_CTL_GET_FREE`: returns the number of an unbound loop device, creating one if needed.
const LOOP_CTL_GET_FREE: Opcode = opcode::none(b'L', 0x82);
/// `LO_FLAGS_READ_ONLY`: the device refuses writes (set for an image we may only read).
const LO_FLAGS_READ_ONLY: u32 = 1;
/// `LO_NAME_SIZE`: the length of `lo_file_name` and `lo_crypt_name`, NUL included.
const LO_NAME_SIZE: usize = 64;
/// `LO_KEY_SIZE`: the length of `lo_encrypt_key`.
const LO_KEY_SIZE: usize = 32;
/// How many free devices an attach tries before giving up, when other processes keep taking
/// the one `LOOP_CTL_GET_FREE` named before it could be bound (`EBUSY`).
const ATTACH_ATTEMPTS: u32 = 16;

/// Serialises this process's attaches. `LOOP_CTL_GET_FREE` names the same free device to
/// everyone who asks until one of them binds it, so N volumes attached at once would race
/// each other through up to N-1 `EBUSY` retries each; this way only other processes race us.
/// Binding takes well under a millisecond.
static ATTACH_LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// `struct loop_info64` from linux/loop.h, field for field.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
struct LoopInfo64 {
    /// `lo_device` (read-only for us).
    lo_device: u64,
    /// `lo_inode` (read-only for us).
    lo_inode: u64,
    /// `lo_rdevice` (read-only for us).
    lo_rdevice: u64,
    /// `lo_offset`: where in the file the device starts; 0.
    lo_offset: u64,
    /// `lo_sizelimit`: 0 for "the whole file".
    lo_sizelimit: u64,
    /// `lo_number` (read-only for us).
    lo_number: u32,
    /// `lo_encrypt_type`: 0, no transfer function.
    lo_encrypt_type: u32,
    /// `lo_encrypt_key_size`: 0.
    lo_encrypt_key_size: u32,
    /// `lo_flags`: `LO_FLAGS_*`.
    lo_flags: u32,
    /// `lo_file_name`: the backing file's name, NUL-terminated, as `losetup` shows it.
    lo_file_name: [u8; LO_NAME_SIZE],
    /// `lo_crypt_name`: unused.
    lo_crypt_name: [u8; LO_NAME_SIZE],
    /// `lo_encrypt_key`: unused.
    lo_encrypt_key: [u8; LO_KEY_SIZE],
    /// `lo_init`: unused.
    lo_init: [u64; 2],
}

/// `struct loop_config` from linux/loop.h (the argument of `LOOP_CONFIGURE`).
#[repr(C)]
#[derive(Debug, Clone, Copy)]
struct LoopConfig {
    /// The backing file's descriptor.
    fd: u32,
    /// Logical block size; 0 for the default (512).
    block_size: u32,
    /// Offset, size limit, flags and name, as for `LOOP_SET_STATUS64`.
    info: LoopInfo64,
    /// `__reserved`: must be zero.
    reserved: [u64; 8],
}

// The kernel copies exactly these many bytes; a wrong layout would be read as garbage.
const _: () = assert!(std::mem::size_of::<LoopInfo64>() == 232);
const _: () = assert!(std::mem::size_of::<LoopConfig>() == 304);

impl LoopInfo64 {
    /// The status of a plain, whole-file binding of `image`.
    fn for_image(image: &Path, read_only: bool) -> Self {
        let mut lo_file_name = [0u8; LO_NAME_SIZE];
        // As losetup does: the name is only informational and is cut to fit, NUL kept.
        let name = image.as_os_str().as_bytes();
        let len = name.len().min(LO_NAME_SIZE - 1);
        lo_file_name[..len].copy_from_slice(&name[..len]);
        Self {
            lo_device: 0,
            lo_inode: 0,
            lo_rdevice: 0,
            lo_offset: 0,
            lo_sizelimit: 0,
            lo_number: 0,
            lo_encrypt_type: 0,
            lo_encrypt_key_size: 0,
            lo_flags: if read_only { LO_FLAGS_READ_ONLY } else { 0 },
            lo_file_name,
            lo_crypt_name: [0; LO_NAME_SIZE],
            lo_encrypt_key: [0; LO_KEY_SIZE],
            lo_init: [0; 2],
        }
    }
}

/// `LOOP_CTL_GET_FREE`, whose answer is the ioctl's return value (rustix's `NoArg` drops it).
#[derive(Debug)]
struct GetFree;

// SAFETY: LOOP_CTL_GET_FREE takes no argument (the null pointer passed is never dereferenced)
// and writes no memory: it returns a device number or fails with an errno, which rustix
// checks before `output_from_ptr` sees the value.
unsafe impl Ioctl for GetFree {
    type Output = u32;

    const IS_MUTATING: bool = false;

    fn opcode(&self) -> Opcode {
        LOOP_CTL_GET_FREE
    }

    fn as_ptr(&mut self) -> *mut c_void {
        std::ptr::null_mut()
    }

    unsafe fn output_from_ptr(out: IoctlOutput, _: *mut c_void) -> rustix::io::Result<u32> {
        u32::try_from(out).map_err(|_| Errno::INVAL)
    }
}

/// Builds an [`OsError::Ioctl`] for `request` on `subject`.
fn ioctl_error(request: &'static str, subject: &Path) -> impl FnOnce(Errno) -> OsError {
    let subject = subject.to_path_buf();
    move |e| OsError::Ioctl { request, subject, source: e.into() }
}

/// Opens `image` to back a loop device: read-write, or read-only (and says so) when the file or
/// its file system does not allow writing, as losetup does.
fn open_backing_file(image: &Path) -> Result<(File, bool), OsError> {
    let (file, read_only) = match OpenOptions::new().read(true).write(true).open(image) {
        Ok(file) => (file, false),
        Err(e) if matches!(e.kind(), io::ErrorKind::PermissionDenied | io::ErrorKind::ReadOnlyFilesystem) => {
            tracing::debug!(image = %image.display(), error = %e, "image is not writable; attaching it read-only");
            (File::open(image).map_err(sys(format!("attach {}", image.display())))?, true)
        }
        Err(e) if e.kind() == io::ErrorKind::IsADirectory => {
            return Err(OsError::Unexpected(format!("{} is not a regular file", image.display())))
        }
        Err(e) => return Err(sys(format!("attach {}", image.display()))(e)),
    };
    let meta = file.metadata().map_err(sys(format!("examine {}", image.display())))?;
    if !meta.is_file() {
        return Err(OsError::Unexpected(format!("{} is not a regular file", image.display())));
    }
    Ok((file, read_only))
}

/// Which ioctls bind a file to a loop device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum BindWith {
    /// `LOOP_CONFIGURE`, falling back to [`BindWith::Legacy`] where the kernel lacks it.
    Configure,
    /// `LOOP_SET_FD` then `LOOP_SET_STATUS64` (kernels before 5.8). Chosen directly only by
    /// tests; otherwise reached as the fallback of [`BindWith::Configure`].
    #[cfg_attr(not(test), allow(dead_code))]
    Legacy,
}

/// Binds `backing` to the open, unbound loop device `loop_dev` (at `device`).
///
/// # Errors
/// [`OsError::Ioctl`]; `EBUSY` ([`OsError::is_busy`]) when someone else bound it first.
fn bind(loop_dev: &File, device: &Path, backing: &File, info: &LoopInfo64, how: BindWith) -> Result<(), OsError> {
    let fd = backing.as_raw_fd();
    if how == BindWith::Configure {
        let config = LoopConfig {
            fd: u32::try_from(fd).map_err(|_| OsError::Unexpected(format!("bad file descriptor {fd}")))?,
            block_size: 0,
            info: *info,
            reserved: [0; 8],
        };
        // SAFETY: LOOP_CONFIGURE reads one `struct loop_config`, which `LoopConfig` mirrors
        // (#[repr(C)], size asserted above); `Setter` passes a pointer to its own copy, valid for
        // the call, and the kernel only reads it. `fd` is `backing`'s, open for the whole call.
        match unsafe { ioctl(loop_dev, Setter::<LOOP_CONFIGURE, LoopConfig>::new(config)) } {
            Ok(()) => return Ok(()),
            // Before 5.8 the request is unknown: EINVAL from the loop driver, ENOTTY elsewhere.
            Err(e) if e == Errno::INVAL || e == Errno::NOTTY => {
                tracing::debug!(device = %device.display(), error = %e, "LOOP_CONFIGURE refused; using LOOP_SET_FD");
            }
            Err(e) => return Err(ioctl_error("LOOP_CONFIGURE", device)(e)),
        }
    }
    let fd = usize::try_from(fd).map_err(|_| OsError::Unexpected(format!("bad file descriptor {fd}")))?;
    // SAFETY: LOOP_SET_FD takes the backing file's descriptor as its integer argument and
    // reads no memory; the descriptor stays open (borrowed from `backing`) for the call.
    unsafe { ioctl(loop_dev, IntegerSetter::<LOOP_SET_FD>::new_usize(fd)) }
        .map_err(ioctl_error("LOOP_SET_FD", device))?;
    // SAFETY: LOOP_SET_STATUS64 reads one `struct loop_info64`, which `LoopInfo64` mirrors
    // (#[repr(C)], size asserted above); `Setter` passes a pointer to its own copy.
    let status = unsafe { ioctl(loop_dev, Setter::<LOOP_SET_STATUS64, LoopInfo64>::new(*info)) };
    if let Err(e) = status {
        // Do not leave a half-configured device behind.
        // SAFETY: LOOP_CLR_FD takes no argument and reads or writes no memory.
        if let Err(undo) = unsafe { ioctl(loop_dev, NoArg::<LOOP_CLR_FD>::new()) } {
            tracing::warn!(device = %device.display(), error = %undo, "could not unbind a half-configured loop device");
        }
        return Err(ioctl_error("LOOP_SET_STATUS64", device)(e));
    }
    Ok(())
}

/// Attaches `image` to a free loop device with `how` and returns the device.
///
/// No `LO_FLAGS_AUTOCLEAR`: an auto-clearing device goes away when its last opener closes it,
/// which would have to be held open from here until the mount (across the probe and mkfs),
/// and whose `autoclear` flag could no longer tell it apart from a device whose detach is
/// pending (see [`BlockOs::loop_find`]), so a restarted daemon would not find its mounted
/// devices again. The device is detached explicitly by [`BlockOs::loop_detach`] instead.
fn attach_image(image: &Path, how: BindWith) -> Result<PathBuf, OsError> {
    let (backing, read_only) = open_backing_file(image)?;
    let info = LoopInfo64::for_image(image, read_only);
    // The lock guards no data: a panic while it was held leaves nothing to repair.
    let _serialised = ATTACH_LOCK.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    let control =
        OpenOptions::new().read(true).write(true).open(LOOP_CONTROL).map_err(sys(format!("open {LOOP_CONTROL}")))?;
    for attempt in 1..=ATTACH_ATTEMPTS {
        // SAFETY: see `GetFree`: no argument, no memory written, the result checked by rustix.
        let number =
            unsafe { ioctl(&control, GetFree) }.map_err(ioctl_error("LOOP_CTL_GET_FREE", Path::new(LOOP_CONTROL)))?;
        let device = PathBuf::from(format!("/dev/loop{number}"));
        let loop_dev = match OpenOptions::new().read(true).write(!read_only).open(&device) {
            Ok(file) => file,
            // The kernel made the device but no node appeared: /dev is not a devtmpfs.
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(sys(format!("open {} (no device node: is /dev a devtmpfs?)", device.display()))(e))
            }
            Err(e) => return Err(sys(format!("open {}", device.display()))(e)),
        };
        match bind(&loop_dev, &device, &backing, &info, how) {
            Ok(()) => {
                tracing::debug!(image = %image.display(), device = %device.display(), attempt, read_only, "attached");
                return Ok(device);
            }
            Err(e) if e.is_busy() => {
                tracing::debug!(device = %device.display(), attempt, "another process took the free loop device; trying the next");
            }
            Err(e) => return Err(e),
        }
    }
    Err(OsError::Unexpected(format!(
        "attach {}: other processes took each free loop device before it could be set up ({ATTACH_ATTEMPTS} tries)",
        image.display()
    )))
}

/// Detaches the loop device `device` (see [`BlockOs::loop_detach`]).
fn detach_device(device: &Path) -> Result<(), OsError> {
    let backing = device
        .file_name()
        .map(|n| Path::new(SYS_BLOCK).join(n).join("loop/backing_file"))
        .ok_or_else(|| OsError::Unexpected(format!("{} is not a device path", device.display())))?;
    {
        let loop_dev = File::open(device).map_err(sys(format!("open {}", device.display())))?;
        // SAFETY: LOOP_CLR_FD takes no argument and reads or writes no memory.
        unsafe { ioctl(&loop_dev, NoArg::<LOOP_CLR_FD>::new()) }.map_err(ioctl_error("LOOP_CLR_FD", device))?;
        // The kernel only marks the device here; it lets go of the file when the last opener
        // closes it, which is normally this descriptor, closed now.
    }
    // While anyone else has the device open (a scanner, a lazily unmounted file system) the
    // detach waits for them. Give a brief opener time to go, checking often at first.
    let deadline = Instant::now() + DETACH_WAIT;
    let mut pause = DETACH_POLL_FIRST;
    loop {
        if !backing.exists() {
            return Ok(());
        }
        let now = Instant::now();
        if now >= deadline {
            break;
        }
        std::thread::sleep(pause.min(deadline - now));
        pause = (pause * 2).min(DETACH_POLL_MAX);
    }
    tracing::warn!(
        device = %device.display(),
        "loop device is still open elsewhere; the kernel will detach it when the last user closes it"
    );
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// The superblock fast path of `probe`.
// ---------------------------------------------------------------------------------------------

/// How many bytes at the start of a device [`quick_probe`] looks at: the ext4 superblock
/// (1024..2048) and an XFS superblock sector of up to 4096 bytes.
pub const QUICK_PROBE_BYTES: usize = 4096;

/// CRC-32C (Castagnoli, reflected polynomial `0x82F63B78`), one entry per byte value.
const CRC32C_TABLE: [u32; 256] = {
    let mut table = [0u32; 256];
    let mut i = 0;
    while i < 256 {
        #[allow(clippy::cast_possible_truncation)] // i < 256
        let mut crc = i as u32;
        let mut bit = 0;
        while bit < 8 {
            crc = if crc & 1 == 1 { (crc >> 1) ^ 0x82F6_3B78 } else { crc >> 1 };
            bit += 1;
        }
        table[i] = crc;
        i += 1;
    }
    table
};

/// CRC-32C of `data` continuing from `crc`, with no inversion at either end (the kernel's and
/// libblkid's `crc32c(seed, …)`; the usual CRC-32C is `!crc32c(!0, data)`).
fn crc32c(mut crc: u32, data: &[u8]) -> u32 {
    for &byte in data {
        let index = usize::from(crc.to_le_bytes()[0] ^ byte);
        crc = CRC32C_TABLE[index] ^ (crc >> 8);
    }
    crc
}

/// The file system the first [`QUICK_PROBE_BYTES`] of a device (`head`) show beyond doubt:
/// ext4 or XFS exactly as `blkid -p` would name it. `None` means "ask blkid": a blank device,
/// ext2/ext3/jbd, a partition table or boot sector in front of an ext4 superblock, both
/// superblocks at once, a checksum that does not match, or a `head` too short.
///
/// - **ext4**: magic `0xEF53` at 1080 (LE), nothing but zeros in the 1024 bytes before it (no
///   partition table, boot sector or other label), not an external journal, and a feature
///   ext3 lacks (libblkid's own test); with `metadata_csum`, a matching superblock checksum.
/// - **XFS**: `XFSB` at 0, the geometry checks libblkid makes, no DOS boot signature at 510,
///   and for a v5 file system a matching superblock CRC.
///
/// It never answers "blank", so it can never lead to a format; a device it cannot place costs
/// only the blkid run it would have had anyway.
pub fn quick_probe(head: &[u8]) -> Option<FsType> {
    let ext4 = ext4_superblock_magic(head);
    let xfs = head.get(0..4) == Some(b"XFSB");
    match (ext4, xfs) {
        (true, false) if is_plain_ext4(head) => Some(FsType::Ext4),
        (false, true) if is_plain_xfs(head) => Some(FsType::Xfs),
        _ => None,
    }
}

fn ext4_superblock_magic(head: &[u8]) -> bool {
    head.get(1080..1082) == Some(&0xEF53u16.to_le_bytes()[..])
}

/// See [`quick_probe`]: the ext4 rules, for a `head` with the ext4 magic.
fn is_plain_ext4(head: &[u8]) -> bool {
    /// `EXT3_FEATURE_INCOMPAT_JOURNAL_DEV`: an external journal (blkid: `jbd`).
    const INCOMPAT_JOURNAL_DEV: u32 = 0x8;
    /// The incompat features ext3 knows: `filetype`, `needs_recovery`, `meta_bg`.
    const INCOMPAT_EXT3: u32 = 0x2 | 0x4 | 0x10;
    /// The ro-compat features ext3 knows: `sparse_super`, `large_file`, `btree_dir`.
    const RO_COMPAT_EXT3: u32 = 0x1 | 0x2 | 0x4;
    /// `EXT4_FEATURE_RO_COMPAT_METADATA_CSUM`.
    const RO_COMPAT_METADATA_CSUM: u32 = 0x400;
    /// `EXT2_FLAGS_TEST_FILESYS` in `s_flags` (blkid: `ext4dev`).
    const FLAGS_TEST_FILESYS: u32 = 0x4;
    /// Where `s_checksum` is; the checksum covers everything before it.
    const CHECKSUM_AT: usize = 0x3FC;

    let (Some(front), Some(sb)) = (head.get(..1024), head.get(1024..2048)) else { return false };
    if front.iter().any(|&b| b != 0) {
        return false;
    }
    let le32 = |at: usize| u32::from_le_bytes([sb[at], sb[at + 1], sb[at + 2], sb[at + 3]]);
    let (incompat, ro_compat, flags) = (le32(0x60), le32(0x64), le32(0x160));
    if incompat & INCOMPAT_JOURNAL_DEV != 0 || flags & FLAGS_TEST_FILESYS != 0 {
        return false;
    }
    if incompat & !INCOMPAT_EXT3 == 0 && ro_compat & !RO_COMPAT_EXT3 == 0 {
        return false; // ext2 or ext3
    }
    if ro_compat & RO_COMPAT_METADATA_CSUM != 0 && crc32c(!0, &sb[..CHECKSUM_AT]) != le32(CHECKSUM_AT) {
        return false;
    }
    fs_bytes_from_superblock(FsType::Ext4, sb).is_some()
}

/// See [`quick_probe`]: the XFS rules, for a `head` starting with `XFSB`.
fn is_plain_xfs(head: &[u8]) -> bool {
    /// Where `sb_crc` is (LE, unlike the rest of the superblock).
    const CRC_AT: usize = 224;
    if head.len() < 512 || head[510..512] == [0x55, 0xAA] {
        return false;
    }
    let be16 = |at: usize| u16::from_be_bytes([head[at], head[at + 1]]);
    let be32 = |at: usize| u32::from_be_bytes([head[at], head[at + 1], head[at + 2], head[at + 3]]);
    let be64 = |at: usize| (u64::from(be32(at)) << 32) | u64::from(be32(at + 4));
    let log_matches = |size: u64, log: u8| size.is_power_of_two() && size.trailing_zeros() == u32::from(log);
    let (block_size, dblocks, agcount) = (u64::from(be32(4)), be64(8), be32(88));
    let (version, sect_size, inode_size) = (be16(100), u64::from(be16(102)), u64::from(be16(104)));
    let (block_log, sect_log, inode_log, inop_log, imax_pct) = (head[120], head[121], head[122], head[123], head[127]);
    let sane = agcount > 0
        && dblocks > 0
        && (512..=32768).contains(&sect_size)
        && log_matches(sect_size, sect_log)
        && (512..=65536).contains(&block_size)
        && log_matches(block_size, block_log)
        && (256..=2048).contains(&inode_size)
        && log_matches(inode_size, inode_log)
        && block_log.checked_sub(inode_log) == Some(inop_log)
        && imax_pct <= 100;
    if !sane {
        return false;
    }
    if version & 0xF == 5 {
        let Ok(sect_size) = usize::try_from(sect_size) else { return false };
        let Some(sector) = head.get(..sect_size) else { return false };
        let crc = crc32c(!0, &sector[..CRC_AT]);
        let crc = crc32c(crc, &[0; 4]);
        let crc = !crc32c(crc, &sector[CRC_AT + 4..]);
        let stored = u32::from_le_bytes([sector[CRC_AT], sector[CRC_AT + 1], sector[CRC_AT + 2], sector[CRC_AT + 3]]);
        if crc != stored {
            return false;
        }
    }
    true
}

/// Reads up to [`QUICK_PROBE_BYTES`] from the start of `file` (less if it is shorter).
fn read_head(file: &File) -> io::Result<Vec<u8>> {
    let mut head = vec![0u8; QUICK_PROBE_BYTES];
    let mut filled = 0;
    while filled < head.len() {
        match file.read_at(&mut head[filled..], filled as u64) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    head.truncate(filled);
    Ok(head)
}

impl BlockOs for LinuxOs {
    fn probe(&self, device: &Path) -> Result<Probe, OsError> {
        // blkid exits 2 for a missing device too: make sure it is there first (and not, say, a
        // FIFO, whose open would block).
        require_block_device(device)?;
        let file = File::open(device).map_err(sys(format!("open {}", device.display())))?;
        match read_head(&file) {
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
        // The path as the kernel shows it (directory resolved): worked out only when a bound
        // device shows a path that is not `image` as given.
        let mut resolved: Option<PathBuf> = None;
        let mut buf = [0u8; SYSFS_ATTR_MAX];
        let entries = fs::read_dir(SYS_BLOCK).map_err(sys(format!("list {SYS_BLOCK}")))?;
        let mut found: Vec<u32> = Vec::new();
        for entry in entries {
            let entry = entry.map_err(sys(format!("list {SYS_BLOCK}")))?;
            let name = entry.file_name();
            let Some(number) = name.to_str().and_then(|n| n.strip_prefix("loop")).and_then(|n| n.parse::<u32>().ok())
            else {
                continue;
            };
            let dir = entry.path().join("loop");
            // One open and one read per device; an unbound one has no `loop` directory at all.
            let backing = match read_sysfs_attr(&dir.join("backing_file"), &mut buf) {
                Ok(b) => b,
                // Not bound (no backing_file): not ours.
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                // A device being set up or torn down right now (by someone else: ours are not
                // in flux while we hold the volume's lock) can fail to answer: not ours either.
                Err(e) => {
                    tracing::debug!(device = ?name, error = %e, "skipping a loop device whose backing file cannot be read");
                    continue;
                }
            };
            let backing = Path::new(OsStr::from_bytes(backing.strip_suffix(b"\n").unwrap_or(backing)));
            if backing != image
                && backing != resolved.get_or_insert_with(|| resolved_image_path(image)).as_path()
                && !(backing.file_name() == image.file_name() && same_backing_file(number, image))
            {
                continue;
            }
            // We never set autoclear, so it means a detach is pending until the last opener
            // goes: the device is on its way out and must not be used again.
            if read_sysfs_attr(&dir.join("autoclear"), &mut buf).is_ok_and(|a| a.starts_with(b"1")) {
                tracing::debug!(device = ?name, image = %image.display(), "skipping a loop device that is being detached");
                continue;
            }
            found.push(number);
        }
        // Lowest number first, so the answer is stable if an image is (wrongly) attached twice.
        found.sort_unstable();
        if found.len() > 1 {
            tracing::warn!(image = %image.display(), devices = ?found, "image is attached to several loop devices");
        }
        Ok(found.first().map(|n| PathBuf::from(format!("/dev/loop{n}"))))
    }

    fn loop_attach(&self, image: &Path) -> Result<PathBuf, OsError> {
        attach_image(image, BindWith::Configure)
    }

    fn loop_detach(&self, device: &Path) -> Result<(), OsError> {
        detach_device(device)
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

/// Whether loop device `number` is bound to the very file `image` (same device and inode). The
/// sysfs `backing_file` is a path as the attaching process saw it: a device attached in another
/// mount namespace that has since gone (a managed plugin before its restart) shows a path
/// relative to a detached mount, such as `/loop/v1.img`, so only the inode tells.
fn same_backing_file(number: u32, image: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    let Ok(meta) = fs::metadata(image) else {
        return false;
    };
    let Ok(file) = File::open(format!("/dev/loop{number}")) else {
        return false;
    };
    // SAFETY: LOOP_GET_STATUS64 writes one `struct loop_info64`, which `LoopInfo64` mirrors
    // field for field; the kernel reads nothing from it.
    match unsafe { ioctl(&file, Getter::<LOOP_GET_STATUS64, LoopInfo64>::new()) } {
        Ok(info) => info.lo_device == meta.dev() && info.lo_inode == meta.ino(),
        Err(_) => false,
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

    /// An ext4 superblock (at 1024 in a 4 KiB head) with the given features, no checksum.
    fn ext4_head(incompat: u32, ro_compat: u32) -> Vec<u8> {
        let mut head = vec![0u8; QUICK_PROBE_BYTES];
        let sb = &mut head[1024..2048];
        sb[0x38..0x3A].copy_from_slice(&0xEF53u16.to_le_bytes());
        sb[0x04..0x08].copy_from_slice(&262_144u32.to_le_bytes());
        sb[0x18..0x1C].copy_from_slice(&2u32.to_le_bytes());
        sb[0x60..0x64].copy_from_slice(&incompat.to_le_bytes());
        sb[0x64..0x68].copy_from_slice(&ro_compat.to_le_bytes());
        head
    }

    /// Sets the ext4 `metadata_csum` feature and a correct checksum.
    fn with_ext4_csum(mut head: Vec<u8>) -> Vec<u8> {
        let sb = &mut head[1024..2048];
        let ro = u32::from_le_bytes(sb[0x64..0x68].try_into().unwrap()) | 0x400;
        sb[0x64..0x68].copy_from_slice(&ro.to_le_bytes());
        let csum = crc32c(!0, &sb[..0x3FC]);
        sb[0x3FC..0x400].copy_from_slice(&csum.to_le_bytes());
        head
    }

    /// A v4 XFS superblock (4 KiB blocks, 512-byte sectors, 512-byte inodes): no CRC.
    fn xfs_head() -> Vec<u8> {
        let mut head = vec![0u8; QUICK_PROBE_BYTES];
        head[0..4].copy_from_slice(b"XFSB");
        head[4..8].copy_from_slice(&4096u32.to_be_bytes());
        head[8..16].copy_from_slice(&262_144u64.to_be_bytes());
        head[88..92].copy_from_slice(&4u32.to_be_bytes());
        head[100..102].copy_from_slice(&0xB4A4u16.to_be_bytes());
        head[102..104].copy_from_slice(&512u16.to_be_bytes());
        head[104..106].copy_from_slice(&512u16.to_be_bytes());
        head[106..108].copy_from_slice(&8u16.to_be_bytes());
        head[120..124].copy_from_slice(&[12, 9, 9, 3]);
        head[127] = 25;
        head
    }

    #[test]
    fn crc32c_matches_the_standard_check_value() {
        assert_eq!(!crc32c(!0, b"123456789"), 0xE306_9283);
        assert_eq!(crc32c(crc32c(!0, b"1234"), b"56789"), crc32c(!0, b"123456789"));
    }

    #[test]
    fn quick_probe_recognises_only_unambiguous_ext4() {
        // extents + 64bit + flex_bg: ext4.
        let ext4 = ext4_head(0x2C2, 0x1);
        assert_eq!(quick_probe(&ext4), Some(FsType::Ext4));
        // A ro-compat feature ext3 lacks (huge_file) is enough, as for blkid.
        assert_eq!(quick_probe(&ext4_head(0x2, 0x8)), Some(FsType::Ext4));
        // ext3/ext2 (filetype, sparse_super, large_file only) and an external journal: blkid.
        assert_eq!(quick_probe(&ext4_head(0x2, 0x3)), None);
        assert_eq!(quick_probe(&ext4_head(0x2C2 | 0x8, 0x1)), None);
        // ext4dev (test_fs flag).
        let mut dev = ext4.clone();
        dev[1024 + 0x160] = 0x4;
        assert_eq!(quick_probe(&dev), None);
        // Anything in front of the superblock (a DOS table, a boot sector): blkid.
        let mut mbr = ext4.clone();
        mbr[510] = 0x55;
        mbr[511] = 0xAA;
        assert_eq!(quick_probe(&mbr), None);
        // A nonsensical block size.
        let mut odd = ext4.clone();
        odd[1024 + 0x18] = 9;
        assert_eq!(quick_probe(&odd), None);
        // Truncated.
        assert_eq!(quick_probe(&ext4[..1500]), None);
    }

    #[test]
    fn quick_probe_checks_the_ext4_checksum() {
        let good = with_ext4_csum(ext4_head(0x2C2, 0x1));
        assert_eq!(quick_probe(&good), Some(FsType::Ext4));
        let mut bad = good.clone();
        bad[1024 + 0x78] ^= 1; // the volume label
        assert_eq!(quick_probe(&bad), None);
    }

    #[test]
    fn quick_probe_recognises_only_sane_xfs() {
        let xfs = xfs_head();
        assert_eq!(quick_probe(&xfs), Some(FsType::Xfs));
        for (at, value) in [(121usize, 10u8), (120, 13), (88, 0), (127, 101)] {
            let mut bad = xfs.clone();
            if at == 88 {
                bad[88..92].copy_from_slice(&0u32.to_be_bytes());
            } else {
                bad[at] = value;
            }
            assert_eq!(quick_probe(&bad), None, "byte {at} = {value}");
        }
        let mut boot = xfs.clone();
        boot[510..512].copy_from_slice(&[0x55, 0xAA]);
        assert_eq!(quick_probe(&boot), None);
        // v5 without a valid CRC.
        let mut v5 = xfs.clone();
        v5[100..102].copy_from_slice(&0xB4A5u16.to_be_bytes());
        assert_eq!(quick_probe(&v5), None);
        // Both superblocks at once: ambiguous.
        let mut both = xfs.clone();
        both[1080..1082].copy_from_slice(&0xEF53u16.to_le_bytes());
        assert_eq!(quick_probe(&both), None);
        // Blank and short devices.
        assert_eq!(quick_probe(&[0u8; QUICK_PROBE_BYTES]), None);
        assert_eq!(quick_probe(&[]), None);
        assert_eq!(quick_probe(b"XFSB"), None);
    }

    /// Whether `tool` is installed (a test that needs it passes without it, saying why).
    fn has_tool(tool: &str) -> bool {
        let found = ["/usr/sbin", "/sbin", "/usr/bin", "/bin"].iter().any(|d| Path::new(d).join(tool).exists());
        if !found {
            eprintln!("skipping the {tool} part: not installed");
        }
        found
    }

    /// Makes a sparse image of `size` bytes and runs `tool args… image` on it.
    fn image_made_by(dir: &Path, name: &str, size: u64, tool: &str, args: &[&str]) -> PathBuf {
        let image = dir.join(name);
        File::create(&image).unwrap().set_len(size).unwrap();
        let out = Command::new(tool).args(args).arg(&image).output().unwrap();
        assert!(out.status.success(), "{tool}: {}", String::from_utf8_lossy(&out.stderr));
        image
    }

    fn quick_probe_file(image: &Path) -> Option<FsType> {
        quick_probe(&read_head(&File::open(image).unwrap()).unwrap())
    }

    #[test]
    fn quick_probe_of_images_made_by_the_real_tools() {
        let tmp = tempfile::tempdir().unwrap();
        let blank = tmp.path().join("blank.img");
        File::create(&blank).unwrap().set_len(64 << 20).unwrap();
        assert_eq!(quick_probe_file(&blank), None);
        let tiny = tmp.path().join("tiny.img");
        fs::write(&tiny, b"XFSB").unwrap();
        assert_eq!(read_head(&File::open(&tiny).unwrap()).unwrap(), b"XFSB");
        assert_eq!(quick_probe_file(&tiny), None);

        if has_tool("mkfs.ext4") {
            let ext4 = image_made_by(tmp.path(), "ext4.img", 64 << 20, "mkfs.ext4", &["-q", "-F"]);
            assert_eq!(quick_probe_file(&ext4), Some(FsType::Ext4));
            // The same with the options the daemon formats with.
            let lazy = image_made_by(
                tmp.path(),
                "lazy.img",
                64 << 20,
                "mkfs.ext4",
                &["-q", "-F", "-m0", "-E", "lazy_itable_init=1,lazy_journal_init=1"],
            );
            assert_eq!(quick_probe_file(&lazy), Some(FsType::Ext4));
            // A damaged superblock is left to blkid.
            let f = OpenOptions::new().write(true).open(&ext4).unwrap();
            f.write_all_at(b"x", 1024 + 0x78).unwrap();
            assert_eq!(quick_probe_file(&ext4), None);
        }
        if has_tool("mkfs.ext3") {
            let ext3 = image_made_by(tmp.path(), "ext3.img", 64 << 20, "mkfs.ext3", &["-q", "-F"]);
            assert_eq!(quick_probe_file(&ext3), None, "ext3 is for blkid to name");
        }
        if has_tool("mkfs.ext2") {
            let ext2 = image_made_by(tmp.path(), "ext2.img", 64 << 20, "mkfs.ext2", &["-q", "-F"]);
            assert_eq!(quick_probe_file(&ext2), None, "ext2 is for blkid to name");
        }
        if has_tool("mkfs.xfs") {
            let xfs = image_made_by(tmp.path(), "xfs.img", 512 << 20, "mkfs.xfs", &["-q", "-f"]);
            assert_eq!(quick_probe_file(&xfs), Some(FsType::Xfs));
            let f = OpenOptions::new().write(true).open(&xfs).unwrap();
            f.write_all_at(b"x", 108).unwrap(); // the label, covered by the v5 CRC
            assert_eq!(quick_probe_file(&xfs), None);
        }
        if has_tool("mkswap") {
            let swap = image_made_by(tmp.path(), "swap.img", 64 << 20, "mkswap", &[]);
            assert_eq!(quick_probe_file(&swap), None);
        }
    }

    #[test]
    fn loop_structs_match_the_kernel_layout() {
        assert_eq!(std::mem::offset_of!(LoopInfo64, lo_flags), 52);
        assert_eq!(std::mem::offset_of!(LoopInfo64, lo_file_name), 56);
        assert_eq!(std::mem::offset_of!(LoopInfo64, lo_init), 216);
        assert_eq!(std::mem::offset_of!(LoopConfig, info), 8);
        assert_eq!(std::mem::offset_of!(LoopConfig, reserved), 240);
        assert_eq!(LOOP_CONFIGURE, 0x4C0A);
        assert_eq!(LOOP_CTL_GET_FREE, 0x4C82);
        let info = LoopInfo64::for_image(Path::new(&format!("/{}", "x".repeat(100))), true);
        assert_eq!(info.lo_flags, LO_FLAGS_READ_ONLY);
        assert_eq!(info.lo_file_name[0], b'/');
        assert_eq!(info.lo_file_name[LO_NAME_SIZE - 2], b'x');
        assert_eq!(info.lo_file_name[LO_NAME_SIZE - 1], 0, "NUL-terminated");
    }

    /// The pre-5.8 way (`LOOP_SET_FD` + `LOOP_SET_STATUS64`) works too. Needs root.
    #[test]
    fn legacy_attach_and_detach() {
        if !rustix::process::geteuid().is_root() || !Path::new(LOOP_CONTROL).exists() {
            eprintln!("skipping: needs root and {LOOP_CONTROL}");
            return;
        }
        let os = LinuxOs::new();
        let tmp = tempfile::tempdir().unwrap();
        let image = tmp.path().join("legacy.img");
        assert!(os.create_sparse(&image, 64 << 20).unwrap());
        let device = attach_image(&image, BindWith::Legacy).unwrap();
        let found = os.loop_find(&image);
        let size = fs::read_to_string(Path::new(SYS_BLOCK).join(device.file_name().unwrap()).join("size"));
        os.loop_detach(&device).unwrap();
        assert_eq!(found.unwrap(), Some(device.clone()));
        assert_eq!(size.unwrap().trim(), "131072", "64 MiB in 512-byte sectors");
        assert_eq!(os.loop_find(&image).unwrap(), None);
        let err = os.loop_detach(&device).unwrap_err();
        assert!(matches!(&err, OsError::Ioctl { request: "LOOP_CLR_FD", .. }), "{err:?}");
    }
}
