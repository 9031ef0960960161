//! Loop devices: the ioctls of linux/loop.h, and finding a bound device by its backing file.

use std::ffi::{c_void, OsStr};
use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use rustix::io::Errno;
use rustix::ioctl::{ioctl, opcode, Getter, IntegerSetter, Ioctl, IoctlOutput, NoArg, Opcode, Setter};

use super::sys;
use crate::os::OsError;

/// Where the kernel lists block devices (each loop device has `loop/backing_file` while bound).
const SYS_BLOCK: &str = "/sys/block";
/// How long a detach waits for the last other opener of the device to close it.
const DETACH_WAIT: Duration = Duration::from_secs(2);
/// The first pause while waiting for a detach to finish; it doubles up to
/// [`DETACH_POLL_MAX`], so a detach that completes at once costs no sleep at all.
const DETACH_POLL_FIRST: Duration = Duration::from_millis(1);
/// The longest pause between two checks of a pending detach.
const DETACH_POLL_MAX: Duration = Duration::from_millis(50);

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

/// The control device that hands out free loop devices.
pub(super) const LOOP_CONTROL: &str = "/dev/loop-control";
/// `LOOP_SET_FD`: binds the file whose descriptor is the (integer) argument. Pre-5.8 kernels.
const LOOP_SET_FD: Opcode = opcode::none(b'L', 0x00);
/// `LOOP_CLR_FD`: marks the device for detaching; the kernel detaches it on the last close.
const LOOP_CLR_FD: Opcode = opcode::none(b'L', 0x01);
/// `LOOP_SET_CAPACITY`: re-reads the size of the bound file.
const LOOP_SET_CAPACITY: Opcode = opcode::none(b'L', 0x07);
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
    let open = |write: bool| super::files::open_nofollow(image, OpenOptions::new().read(true).write(write));
    let (file, read_only) = match open(true) {
        Ok(file) => (file, false),
        Err(e) if matches!(e.kind(), io::ErrorKind::PermissionDenied | io::ErrorKind::ReadOnlyFilesystem) => {
            tracing::debug!(image = %image.display(), error = %e, "image is not writable; attaching it read-only");
            (open(false).map_err(|e| super::files::open_error(image, e))?, true)
        }
        Err(e) => return Err(super::files::open_error(image, e)),
    };
    let meta = file.metadata().map_err(sys(format!("examine {}", image.display())))?;
    if !meta.is_file() {
        return Err(OsError::Unexpected(format!("{} is not a regular file", image.display())));
    }
    Ok((file, read_only))
}

/// Which ioctls bind a file to a loop device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum BindWith {
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
pub(super) fn attach_image(image: &Path, how: BindWith) -> Result<PathBuf, OsError> {
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

/// Makes loop device `device` take its backing file's new size (see
/// [`BlockOs::loop_refresh_size`]).
pub(super) fn refresh_size(device: &Path) -> Result<(), OsError> {
    let loop_dev = File::open(device).map_err(sys(format!("open {}", device.display())))?;
    // SAFETY: LOOP_SET_CAPACITY takes no argument and reads or writes no memory.
    unsafe { ioctl(&loop_dev, NoArg::<LOOP_SET_CAPACITY>::new()) }.map_err(ioctl_error("LOOP_SET_CAPACITY", device))
}

/// Detaches the loop device `device` (see [`BlockOs::loop_detach`]).
pub(super) fn detach_device(device: &Path) -> Result<(), OsError> {
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

/// Whether loop device `number` is bound to the very file `image` (same device and inode). The
/// sysfs `backing_file` is a path as the attaching process saw it: a device attached in another
/// mount namespace that has since gone (a managed plugin before its restart) shows a path
/// relative to a detached mount, such as `/loop/v1.img`, so only the inode tells.
fn same_backing_file(number: u32, image: &Path) -> bool {
    backed_by(Path::new(&format!("/dev/loop{number}")), image).unwrap_or(false)
}

/// Whether the loop device `device` is bound to the very file `image` (same device and
/// inode); `image` is examined without following a link.
///
/// # Errors
/// `image` is missing or a link, or the device cannot be opened.
pub(super) fn backed_by(device: &Path, image: &Path) -> Result<bool, OsError> {
    use std::os::unix::fs::MetadataExt;
    let meta = fs::symlink_metadata(image).map_err(sys(format!("examine {}", image.display())))?;
    if meta.file_type().is_symlink() {
        return Err(super::files::is_a_link(image));
    }
    let file = File::open(device).map_err(sys(format!("open {}", device.display())))?;
    // SAFETY: LOOP_GET_STATUS64 writes one `struct loop_info64`, which `LoopInfo64` mirrors
    // field for field; the kernel reads nothing from it.
    match unsafe { ioctl(&file, Getter::<LOOP_GET_STATUS64, LoopInfo64>::new()) } {
        Ok(info) => Ok(info.lo_device == meta.dev() && info.lo_inode == meta.ino()),
        // Not bound (any more).
        Err(e) if e == Errno::NXIO => Ok(false),
        Err(e) => Err(ioctl_error("LOOP_GET_STATUS64", device)(e)),
    }
}

/// The bound loop devices (not being detached), with their backing files as sysfs shows them.
fn bound_devices() -> Result<Vec<(u32, PathBuf)>, OsError> {
    let mut buf = [0u8; SYSFS_ATTR_MAX];
    let entries = fs::read_dir(SYS_BLOCK).map_err(sys(format!("list {SYS_BLOCK}")))?;
    let mut found = Vec::new();
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
            Ok(b) => PathBuf::from(OsStr::from_bytes(b.strip_suffix(b"\n").unwrap_or(b))),
            // Not bound (no backing_file): not ours.
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            // A device being set up or torn down right now (by someone else: ours are not in
            // flux while we hold the volume's lock) can fail to answer: not ours either.
            Err(e) => {
                tracing::debug!(device = ?name, error = %e, "skipping a loop device whose backing file cannot be read");
                continue;
            }
        };
        // We never set autoclear, so it means a detach is pending until the last opener goes:
        // the device is on its way out and must not be used again.
        if read_sysfs_attr(&dir.join("autoclear"), &mut buf).is_ok_and(|a| a.starts_with(b"1")) {
            tracing::debug!(device = ?name, backing = %backing.display(), "skipping a loop device that is being detached");
            continue;
        }
        found.push((number, backing));
    }
    // Lowest number first, so answers are stable if an image is (wrongly) attached twice.
    found.sort_unstable();
    Ok(found)
}

/// The loop device backed by `image` (see [`crate::os::BlockOs::loop_find`]).
///
/// # Errors
/// `image` is a symbolic link, or the loop devices could not be listed.
pub(super) fn find(image: &Path) -> Result<Option<PathBuf>, OsError> {
    match fs::symlink_metadata(image) {
        Ok(meta) if meta.file_type().is_symlink() => return Err(super::files::is_a_link(image)),
        _ => {}
    }
    // The path as the kernel shows it (directory resolved): worked out only when a bound device
    // shows a path that is not `image` as given.
    let mut resolved: Option<PathBuf> = None;
    let mut found = Vec::new();
    for (number, backing) in bound_devices()? {
        if backing == image
            || backing == *resolved.get_or_insert_with(|| resolved_image_path(image))
            || (backing.file_name() == image.file_name() && same_backing_file(number, image))
        {
            found.push(number);
        }
    }
    if found.len() > 1 {
        let devices: Vec<String> = found.iter().map(|n| format!("/dev/loop{n}")).collect();
        tracing::warn!(image = %image.display(), devices = %devices.join(", "), "image is attached to several loop devices");
    }
    Ok(found.first().map(|n| PathBuf::from(format!("/dev/loop{n}"))))
}

/// Every bound loop device whose backing file is directly in `dir`, as (device, file name).
///
/// # Errors
/// The loop devices could not be listed.
pub(super) fn devices_in(dir: &Path) -> Result<Vec<(PathBuf, String)>, OsError> {
    let resolved = fs::canonicalize(dir).unwrap_or_else(|_| dir.to_path_buf());
    let mut out = Vec::new();
    for (number, backing) in bound_devices()? {
        let Some(file) = backing.file_name().and_then(OsStr::to_str) else { continue };
        let device = PathBuf::from(format!("/dev/loop{number}"));
        let in_dir = backing.parent() == Some(dir) || backing.parent() == Some(resolved.as_path());
        // A device attached in another mount namespace shows a path of that namespace: the
        // inode tells whether it is the file here.
        if in_dir || same_backing_file(number, &dir.join(file)) {
            out.push((device, file.to_owned()));
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::os::linux::LinuxOs;
    use crate::os::BlockOs;

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
