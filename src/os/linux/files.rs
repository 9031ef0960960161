//! Files and directories under the daemon's roots, never followed through a symbolic link.
//!
//! Every path here is `<configured root>/<one component>` or lies inside a mounted volume. The
//! last component is opened with `O_NOFOLLOW` (or examined with `lstat`), attributes are set
//! through the descriptor that was checked, removal walks descriptors (`openat`/`unlinkat`),
//! and paths inside a volume are walked with `openat2(RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS)`.

use std::ffi::OsStr;
use std::fs::{self, DirBuilder, File, OpenOptions};
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Component, Path, PathBuf};

use rustix::fs::{AtFlags, FileType, Mode, OFlags, ResolveFlags};
use rustix::io::Errno;

use super::sys;
use crate::os::{DirSpec, Entry, FsStats, OsError};

/// How deep [`remove_tree`] goes before it gives up (each level holds a descriptor).
const MAX_TREE_DEPTH: usize = 512;

/// The error for a symbolic link where a volume's own file or directory should be.
pub(super) fn is_a_link(path: &Path) -> OsError {
    OsError::Symlink(path.to_path_buf())
}

/// `O_NOFOLLOW` for [`OpenOptionsExt::custom_flags`].
fn nofollow_flag() -> i32 {
    // O_NOFOLLOW is 0o400000 on every Linux architecture: it fits an i32.
    i32::try_from(OFlags::NOFOLLOW.bits()).unwrap_or(0)
}

/// Opens `path` with `opts`, failing with `ELOOP` if its last component is a symbolic link.
pub(super) fn open_nofollow(path: &Path, opts: &mut OpenOptions) -> io::Result<File> {
    opts.custom_flags(nofollow_flag()).open(path)
}

/// The error for a failed open of `path`: a link, a directory, or the OS's words.
pub(super) fn open_error(path: &Path, e: io::Error) -> OsError {
    match e.raw_os_error() {
        Some(code) if code == Errno::LOOP.raw_os_error() => is_a_link(path),
        Some(code) if code == Errno::ISDIR.raw_os_error() => not_a_regular_file(path),
        _ => sys(format!("open {}", path.display()))(e),
    }
}

fn not_a_regular_file(path: &Path) -> OsError {
    OsError::Unexpected(format!("{} is not a regular file", path.display()))
}

fn errno_error(op: String) -> impl FnOnce(Errno) -> OsError {
    move |e| OsError::Sys { op, source: e.into() }
}

/// Opens the directory `path` itself (not through a link) for `*at` calls.
fn open_dir_nofollow(path: &Path) -> Result<OwnedFd, OsError> {
    rustix::fs::open(path, OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC, Mode::empty())
        .map_err(|e| dir_open_error(path, e))
}

fn dir_open_error(path: &Path, e: Errno) -> OsError {
    match e {
        Errno::LOOP => is_a_link(path),
        // O_DIRECTORY is checked before O_NOFOLLOW: a link is "not a directory" too.
        Errno::NOTDIR if entry(path).is_ok_and(|e| e == Entry::Symlink) => is_a_link(path),
        Errno::NOTDIR => OsError::Unexpected(format!("{} exists and is not a directory", path.display())),
        e => errno_error(format!("open {}", path.display()))(e),
    }
}

/// Opens the directory `path` as a mount target: `O_PATH`, never through a link. A mount onto
/// `/proc/self/fd/N` of this descriptor lands on exactly this directory.
pub(super) fn open_mount_target(path: &Path) -> Result<OwnedFd, OsError> {
    rustix::fs::open(path, OFlags::PATH | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC, Mode::empty())
        .map_err(|e| dir_open_error(path, e))
}

/// Opens the directory or regular file `path` as a bind-mount target (a raw block volume's
/// device is bound on a file): `O_PATH`, never through a link.
pub(super) fn open_bind_target(path: &Path) -> Result<OwnedFd, OsError> {
    let fd = rustix::fs::open(path, OFlags::PATH | OFlags::NOFOLLOW | OFlags::CLOEXEC, Mode::empty())
        .map_err(errno_error(format!("open {}", path.display())))?;
    let stat = rustix::fs::fstat(&fd).map_err(errno_error(format!("examine {}", path.display())))?;
    match rustix::fs::FileType::from_raw_mode(stat.st_mode) {
        rustix::fs::FileType::Directory | rustix::fs::FileType::RegularFile => Ok(fd),
        rustix::fs::FileType::Symlink => Err(is_a_link(path)),
        _ => Err(OsError::Unexpected(format!("{} is neither a directory nor a regular file", path.display()))),
    }
}

/// The magic path of an open descriptor.
pub(super) fn fd_path(fd: BorrowedFd<'_>) -> PathBuf {
    use std::os::fd::AsRawFd;
    PathBuf::from(format!("/proc/self/fd/{}", fd.as_raw_fd()))
}

/// What `path` is, without following a link at its last component.
pub(super) fn entry(path: &Path) -> Result<Entry, OsError> {
    match fs::symlink_metadata(path) {
        Ok(meta) => Ok(entry_of(&meta)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(Entry::Missing),
        Err(e) => Err(sys(format!("examine {}", path.display()))(e)),
    }
}

fn entry_of(meta: &fs::Metadata) -> Entry {
    let kind = meta.file_type();
    if kind.is_symlink() {
        Entry::Symlink
    } else if kind.is_dir() {
        Entry::Directory
    } else if kind.is_file() {
        Entry::File { size: meta.len() }
    } else {
        Entry::Other
    }
}

/// The entries of `dir`; none when it does not exist. Names that are not UTF-8 are skipped
/// (no volume can have one).
pub(super) fn list_dir(dir: &Path) -> Result<Vec<(String, Entry)>, OsError> {
    let entries = match fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(sys(format!("list {}", dir.display()))(e)),
    };
    let mut out = Vec::new();
    for item in entries {
        let item = item.map_err(sys(format!("list {}", dir.display())))?;
        let Ok(name) = item.file_name().into_string() else {
            continue;
        };
        let meta = match fs::symlink_metadata(item.path()) {
            Ok(meta) => meta,
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(sys(format!("examine {}", item.path().display()))(e)),
        };
        out.push((name, entry_of(&meta)));
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(out)
}

/// Creates `path` and its missing parents (0755); the last component must end up a directory
/// of its own, not a link to one.
pub(super) fn make_dir(path: &Path) -> Result<(), OsError> {
    if entry(path)? == Entry::Symlink {
        return Err(is_a_link(path));
    }
    DirBuilder::new()
        .recursive(true)
        .mode(0o755)
        .create(path)
        .map_err(sys(format!("create directory {}", path.display())))?;
    match entry(path)? {
        Entry::Directory => Ok(()),
        Entry::Symlink => Err(is_a_link(path)),
        _ => Err(OsError::Unexpected(format!("{} exists and is not a directory", path.display()))),
    }
}

/// Creates the configured root `path` with `mode` if it is missing (a link to a directory is a
/// root like any other).
pub(super) fn make_root(path: &Path, mode: u32) -> Result<bool, OsError> {
    match fs::metadata(path) {
        Ok(meta) if meta.is_dir() => return Ok(false),
        Ok(_) => return Err(OsError::Unexpected(format!("{} exists and is not a directory", path.display()))),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(sys(format!("examine {}", path.display()))(e)),
    }
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        DirBuilder::new()
            .recursive(true)
            .mode(0o755)
            .create(parent)
            .map_err(sys(format!("create directory {}", parent.display())))?;
    }
    match DirBuilder::new().mode(mode & 0o777).create(path) {
        Ok(()) => {
            let fd = open_dir_nofollow(path)?;
            rustix::fs::fchmod(&fd, Mode::from_bits_truncate(mode))
                .map_err(errno_error(format!("set mode of {}", path.display())))?;
            Ok(true)
        }
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(false),
        Err(e) => Err(sys(format!("create directory {}", path.display()))(e)),
    }
}

/// Sets owner, then mode (chown may clear set-id bits that chmod then sets again), on `fd`.
fn set_owner_mode_fd(fd: BorrowedFd<'_>, path: &Path, spec: DirSpec) -> Result<(), OsError> {
    if spec.uid.is_some() || spec.gid.is_some() {
        // u32::MAX is chown's "leave it as it is", not an ID.
        let uid = spec.uid.filter(|u| *u != u32::MAX).map(rustix::fs::Uid::from_raw);
        let gid = spec.gid.filter(|g| *g != u32::MAX).map(rustix::fs::Gid::from_raw);
        rustix::fs::fchown(fd, uid, gid).map_err(errno_error(format!("set owner of {}", path.display())))?;
    }
    rustix::fs::fchmod(fd, Mode::from_bits_truncate(spec.mode))
        .map_err(errno_error(format!("set mode of {}", path.display())))
}

/// Sets the mode and owner of `path` (not followed if it is a link).
pub(super) fn set_owner_mode(path: &Path, spec: DirSpec) -> Result<(), OsError> {
    let fd =
        rustix::fs::open(path, OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC, Mode::empty()).map_err(|e| {
            if e == Errno::LOOP {
                is_a_link(path)
            } else {
                errno_error(format!("open {}", path.display()))(e)
            }
        })?;
    set_owner_mode_fd(fd.as_fd(), path, spec)
}

/// Creates the directory `path` (parents 0755) with `spec`; an existing directory is left as
/// it is; a link is refused. Returns whether it was created.
pub(super) fn ensure_dir(path: &Path, spec: DirSpec) -> Result<bool, OsError> {
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        make_dir(parent)?;
    }
    match DirBuilder::new().mode(spec.mode & 0o777).create(path) {
        Ok(()) => {
            let fd = open_dir_nofollow(path)?;
            set_owner_mode_fd(fd.as_fd(), path, spec)?;
            Ok(true)
        }
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => match entry(path)? {
            Entry::Directory => Ok(false),
            Entry::Symlink => Err(is_a_link(path)),
            _ => Err(OsError::Unexpected(format!("{} exists and is not a directory", path.display()))),
        },
        Err(e) => Err(sys(format!("create directory {}", path.display()))(e)),
    }
}

/// Creates `base/rel` following no link below (or at) `base`. Returns whether the last
/// directory was created.
pub(super) fn ensure_dir_beneath(base: &Path, rel: &Path, spec: DirSpec) -> Result<bool, OsError> {
    let mut parts = Vec::new();
    for component in rel.components() {
        match component {
            Component::Normal(part) => parts.push(part),
            Component::CurDir | Component::RootDir => {}
            Component::ParentDir | Component::Prefix(_) => {
                return Err(OsError::Unexpected(format!("{} leaves {}", rel.display(), base.display())))
            }
        }
    }
    let mut dir = open_dir_nofollow(base)?;
    let mut walked = base.to_path_buf();
    let mut created = false;
    for (i, part) in parts.iter().enumerate() {
        let last = i + 1 == parts.len();
        walked.push(part);
        let mode = if last { spec.mode & 0o777 } else { 0o755 };
        created = match rustix::fs::mkdirat(&dir, *part, Mode::from_bits_truncate(mode)) {
            Ok(()) => true,
            Err(Errno::EXIST) => false,
            Err(e) => return Err(errno_error(format!("create directory {}", walked.display()))(e)),
        };
        let how = ResolveFlags::BENEATH | ResolveFlags::NO_SYMLINKS | ResolveFlags::NO_MAGICLINKS;
        let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
        dir = rustix::fs::openat2(&dir, *part, flags, Mode::empty(), how).map_err(|e| dir_open_error(&walked, e))?;
        if last && created {
            set_owner_mode_fd(dir.as_fd(), &walked, spec)?;
        }
    }
    Ok(created)
}

/// Removes the directory `path` and its contents through descriptors; refuses a link.
pub(super) fn remove_tree(path: &Path) -> Result<bool, OsError> {
    let (Some(parent), Some(name)) = (path.parent(), path.file_name()) else {
        return Err(OsError::Unexpected(format!("{} cannot be removed", path.display())));
    };
    match entry(path)? {
        Entry::Missing => return Ok(false),
        Entry::Symlink => return Err(is_a_link(path)),
        Entry::Directory => {}
        _ => return Err(OsError::Unexpected(format!("{} is not a directory", path.display()))),
    }
    let parent_fd = open_dir_nofollow(if parent.as_os_str().is_empty() { Path::new(".") } else { parent })?;
    let op = || format!("remove {}", path.display());
    remove_contents(parent_fd.as_fd(), name, 0).map_err(|e| errno_error(op())(e))?;
    match rustix::fs::unlinkat(&parent_fd, name, AtFlags::REMOVEDIR) {
        Ok(()) | Err(Errno::NOENT) => Ok(true),
        Err(e) => Err(errno_error(op())(e)),
    }
}

/// Empties the directory `name` in `parent`, depth first, never following a link.
fn remove_contents(parent: BorrowedFd<'_>, name: &OsStr, depth: usize) -> Result<(), Errno> {
    if depth > MAX_TREE_DEPTH {
        return Err(Errno::LOOP);
    }
    let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    let dir = rustix::fs::openat(parent, name, flags, Mode::empty())?;
    let mut children = Vec::new();
    for item in rustix::fs::Dir::read_from(&dir)? {
        let item = item?;
        let child = item.file_name().to_bytes();
        if child == b"." || child == b".." {
            continue;
        }
        children.push((OsStr::from_bytes(child).to_os_string(), item.file_type()));
    }
    for (child, kind) in children {
        let kind = if kind == FileType::Unknown {
            rustix::fs::statat(&dir, &child, AtFlags::SYMLINK_NOFOLLOW).map(|st| FileType::from_raw_mode(st.st_mode))?
        } else {
            kind
        };
        if kind == FileType::Directory {
            remove_contents(dir.as_fd(), &child, depth + 1)?;
            rustix::fs::unlinkat(&dir, &child, AtFlags::REMOVEDIR)?;
        } else {
            rustix::fs::unlinkat(&dir, &child, AtFlags::empty())?;
        }
    }
    Ok(())
}

/// The size of the regular file `path`, `None` when it is missing; a link is refused.
pub(super) fn file_size(path: &Path) -> Result<Option<u64>, OsError> {
    match entry(path)? {
        Entry::Missing => Ok(None),
        Entry::File { size } => Ok(Some(size)),
        Entry::Symlink => Err(is_a_link(path)),
        _ => Err(not_a_regular_file(path)),
    }
}

/// Creates `path` (0600, never through a link) as a sparse file of `size` bytes; `false` when
/// it exists.
pub(super) fn create_sparse(path: &Path, size: u64) -> Result<bool, OsError> {
    let file = match open_nofollow(path, OpenOptions::new().write(true).create_new(true).mode(0o600)) {
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

/// Extends the regular file `path` (not through a link) to `size` bytes when it is smaller.
pub(super) fn grow_file(path: &Path, size: u64) -> Result<bool, OsError> {
    let file = open_nofollow(path, OpenOptions::new().write(true)).map_err(|e| open_error(path, e))?;
    let meta = file.metadata().map_err(sys(format!("examine {}", path.display())))?;
    if !meta.is_file() {
        return Err(not_a_regular_file(path));
    }
    if meta.len() >= size {
        return Ok(false);
    }
    file.set_len(size)
        .and_then(|()| file.sync_all())
        .map_err(sys(format!("size {} to {size} bytes", path.display())))?;
    Ok(true)
}

/// Removes the file `path`; `false` when it is missing; a link or a directory is refused.
pub(super) fn remove_file(path: &Path) -> Result<bool, OsError> {
    match entry(path)? {
        Entry::Missing => return Ok(false),
        Entry::Symlink => return Err(is_a_link(path)),
        Entry::Directory => return Err(not_a_regular_file(path)),
        _ => {}
    }
    match fs::remove_file(path) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(sys(format!("remove {}", path.display()))(e)),
    }
}

/// Removes `path` if it is an empty directory.
pub(super) fn remove_empty_dir(path: &Path) -> Result<bool, OsError> {
    match fs::remove_dir(path) {
        Ok(()) => Ok(true),
        Err(e) if matches!(e.kind(), io::ErrorKind::NotFound | io::ErrorKind::DirectoryNotEmpty) => Ok(false),
        Err(e) => Err(sys(format!("remove directory {}", path.display()))(e)),
    }
}

/// `syncfs(2)` on the file system mounted at the directory `target` (not through a link).
pub(super) fn syncfs(target: &Path) -> Result<(), OsError> {
    let dir = open_dir_nofollow(target)?;
    rustix::fs::syncfs(&dir).map_err(errno_error(format!("syncfs {}", target.display())))
}

/// Space and inodes of the file system holding `path`.
pub(super) fn statfs(path: &Path) -> Result<FsStats, OsError> {
    let st = rustix::fs::statvfs(path).map_err(errno_error(format!("statvfs {}", path.display())))?;
    let total_bytes = st.f_blocks.saturating_mul(st.f_frsize);
    let free_bytes = st.f_bfree.saturating_mul(st.f_frsize);
    Ok(FsStats {
        total_bytes,
        available_bytes: st.f_bavail.saturating_mul(st.f_frsize),
        used_bytes: total_bytes.saturating_sub(free_bytes),
        total_inodes: st.f_files,
        free_inodes: st.f_ffree,
        used_inodes: st.f_files.saturating_sub(st.f_ffree),
    })
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::{symlink, PermissionsExt};

    use super::*;

    const SPEC: DirSpec = DirSpec { mode: 0o750, uid: None, gid: None };

    #[test]
    fn links_are_never_followed() {
        let tmp = tempfile::tempdir().unwrap();
        let outside = tmp.path().join("outside");
        fs::create_dir(&outside).unwrap();
        fs::write(outside.join("precious"), b"keep").unwrap();
        let root = tmp.path().join("root");
        fs::create_dir(&root).unwrap();
        let link = root.join("v");
        symlink(&outside, &link).unwrap();
        let file_link = root.join("v.img");
        symlink(outside.join("precious"), &file_link).unwrap();

        assert_eq!(entry(&link).unwrap(), Entry::Symlink);
        assert!(matches!(ensure_dir(&link, SPEC), Err(OsError::Symlink(p)) if p == link));
        assert!(matches!(make_dir(&link), Err(OsError::Symlink(_))));
        assert!(matches!(remove_tree(&link), Err(OsError::Symlink(_))));
        assert!(matches!(set_owner_mode(&link, SPEC), Err(OsError::Symlink(_))));
        assert!(matches!(syncfs(&link), Err(OsError::Symlink(_))));
        assert!(matches!(open_mount_target(&link), Err(OsError::Symlink(_))));
        assert!(matches!(file_size(&file_link), Err(OsError::Symlink(_))));
        assert!(matches!(grow_file(&file_link, 1 << 20), Err(OsError::Symlink(_))));
        assert!(matches!(remove_file(&file_link), Err(OsError::Symlink(_))));
        assert!(!create_sparse(&file_link, 1 << 20).unwrap(), "an existing link is not written through");
        assert_eq!(fs::read(outside.join("precious")).unwrap(), b"keep");
        assert_eq!(fs::metadata(&outside).unwrap().permissions().mode() & 0o777, 0o755);
        let err = OsError::Symlink(link.clone()).to_string();
        assert!(err.contains(&link.display().to_string()) && err.contains("symbolic link"), "{err}");
    }

    #[test]
    fn paths_inside_a_volume_are_walked_beneath_it() {
        let tmp = tempfile::tempdir().unwrap();
        let vol = tmp.path().join("vol");
        fs::create_dir(&vol).unwrap();
        assert!(ensure_dir_beneath(&vol, Path::new("/a/b"), SPEC).unwrap());
        assert_eq!(fs::metadata(vol.join("a/b")).unwrap().permissions().mode() & 0o777, 0o750);
        assert_eq!(fs::metadata(vol.join("a")).unwrap().permissions().mode() & 0o777, 0o755);
        assert!(!ensure_dir_beneath(&vol, Path::new("a/b"), SPEC).unwrap());
        // A container replaced the data directory with a link out of the volume.
        let outside = tmp.path().join("etc");
        fs::create_dir(&outside).unwrap();
        symlink(&outside, vol.join("data")).unwrap();
        assert!(matches!(ensure_dir_beneath(&vol, Path::new("data"), SPEC), Err(OsError::Symlink(_))));
        symlink(&outside, vol.join("mid")).unwrap();
        assert!(matches!(ensure_dir_beneath(&vol, Path::new("mid/x"), SPEC), Err(OsError::Symlink(_))));
        assert!(!outside.join("x").exists());
        assert!(ensure_dir_beneath(&vol, Path::new("../x"), SPEC).is_err());
    }

    #[test]
    fn trees_are_removed_without_following_links() {
        let tmp = tempfile::tempdir().unwrap();
        let outside = tmp.path().join("outside");
        fs::create_dir(&outside).unwrap();
        fs::write(outside.join("precious"), b"keep").unwrap();
        let vol = tmp.path().join("vol");
        fs::create_dir_all(vol.join("a/b/c")).unwrap();
        fs::write(vol.join("a/b/c/f"), b"x").unwrap();
        symlink(&outside, vol.join("a/escape")).unwrap();
        assert!(remove_tree(&vol).unwrap());
        assert!(!vol.exists());
        assert_eq!(fs::read(outside.join("precious")).unwrap(), b"keep");
        assert!(!remove_tree(&vol).unwrap());
    }

    #[test]
    fn directory_listing_and_file_growth() {
        let tmp = tempfile::tempdir().unwrap();
        assert!(list_dir(&tmp.path().join("none")).unwrap().is_empty());
        fs::create_dir(tmp.path().join("d")).unwrap();
        assert!(create_sparse(&tmp.path().join("f.img"), 10).unwrap());
        symlink("/etc", tmp.path().join("l")).unwrap();
        let listing = list_dir(tmp.path()).unwrap();
        assert_eq!(
            listing,
            vec![
                ("d".to_owned(), Entry::Directory),
                ("f.img".to_owned(), Entry::File { size: 10 }),
                ("l".to_owned(), Entry::Symlink)
            ]
        );
        assert!(grow_file(&tmp.path().join("f.img"), 1 << 20).unwrap());
        assert!(!grow_file(&tmp.path().join("f.img"), 10).unwrap(), "never shrinks");
        assert_eq!(file_size(&tmp.path().join("f.img")).unwrap(), Some(1 << 20));
        let stats = statfs(tmp.path()).unwrap();
        assert!(stats.total_bytes >= stats.available_bytes && stats.total_inodes > 0);
    }
}
