//! The `loop` backend against the real kernel: loop devices, mkfs, mount(2), resize, blkid.
//!
//! Needs root. As another user every test prints why it is skipped and passes. Each test works
//! in its own temporary directory; a guard unmounts and detaches everything under it on drop,
//! so a failing test leaves no mounts or loop devices behind.

use std::collections::BTreeMap;
use std::os::unix::fs::{FileExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;

use std::sync::Arc;

use rexray::backend::options::get_u64;
use rexray::backend::{Backend, BackendError, Environment, Options};
use rexray::config::{BackendKind, ServiceConfig};
use rexray::name::VolumeName;
use rexray::os::linux::LinuxOs;

const GIB: u64 = 1 << 30;

fn is_root() -> bool {
    rustix::process::geteuid().is_root()
}

/// Returns early (passing) from a test that cannot run here, saying why.
macro_rules! require {
    (root) => {
        if !is_root() {
            eprintln!("skipping: needs root for loop devices and mount(2)");
            return;
        }
    };
    (xfs) => {
        require!(root);
        if !has_tool("mkfs.xfs") || !has_tool("xfs_growfs") {
            eprintln!("skipping: mkfs.xfs/xfs_growfs not installed (apt-get install xfsprogs)");
            return;
        }
    };
}

/// Whether this process has CAP_SYS_RESOURCE (online ext4 growth needs it; some sandboxes and
/// containers drop it).
fn has_cap_sys_resource() -> bool {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok())
        .is_some_and(|caps| caps & (1 << 24) != 0)
}

fn has_tool(name: &str) -> bool {
    ["/usr/sbin", "/sbin", "/usr/bin", "/bin"].iter().any(|d| Path::new(d).join(name).exists())
}

/// The loop backend, used as the Docker front uses it (both halves composed here).
struct Loop(Backend);

impl Loop {
    fn parse_options(&self, raw: &BTreeMap<String, String>) -> Result<Options, BackendError> {
        self.0.controller.parse_options(raw)
    }
    async fn create(&self, name: &VolumeName, opts: &Options) -> Result<(), BackendError> {
        self.0.controller.create(name, opts, false).await
    }
    async fn activate(&self, name: &VolumeName, opts: &Options) -> Result<PathBuf, BackendError> {
        self.0.activate_here(name, opts).await
    }
    async fn deactivate(&self, name: &VolumeName, opts: &Options) -> Result<(), BackendError> {
        self.0.deactivate_here(name, opts).await
    }
    async fn remove(&self, name: &VolumeName, opts: &Options) -> Result<(), BackendError> {
        self.0.controller.delete(name, opts).await?;
        self.0.node.forget(name).await;
        Ok(())
    }
    async fn is_active(&self, name: &VolumeName, _opts: &Options) -> Result<bool, BackendError> {
        self.0.node.is_staged(name, &self.0.node.staging_path(name)).await
    }
    fn mountpoint(&self, name: &VolumeName, _opts: &Options) -> PathBuf {
        self.0.node.data_path(name)
    }
    fn status(&self, name: &VolumeName, opts: &Options) -> BTreeMap<String, serde_json::Value> {
        self.0.controller.status(name, opts)
    }
}

/// A temporary world: `loop.root` and `mount.path` under one temp dir, torn down on drop.
struct World {
    dir: tempfile::TempDir,
    service: ServiceConfig,
}

impl World {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let env = BTreeMap::from([("REXRAY_HOME".to_owned(), dir.path().display().to_string())]);
        let config = rexray::config::parse("", None, &env).expect("default config");
        let mut service = config.services.into_iter().next().expect("a default service");
        service.name = "loop".into();
        service.backend = BackendKind::Loop;
        service.loop_root = dir.path().join("loop");
        service.integration.mount_path = dir.path().join("volumes");
        service.integration.root_path = "/data".into();
        service.integration.file_mode = 0o700;
        service.integration.default_size_gib = 1;
        service.integration.default_fs_type = "ext4".into();
        Self { dir, service }
    }

    fn backend(&self) -> Loop {
        let os = Arc::new(LinuxOs::new());
        Loop(rexray::backend::build(&self.service, &Environment::local(os.clone(), os.clone(), os)).unwrap())
    }

    fn image(&self, name: &str) -> PathBuf {
        self.dir.path().join("loop").join(format!("{name}.img"))
    }

    fn mount_dir(&self, name: &str) -> PathBuf {
        self.dir.path().join("volumes").join(name)
    }
}

impl Drop for World {
    fn drop(&mut self) {
        let Ok(root) = std::fs::canonicalize(self.dir.path()) else { return };
        // Deepest mounts first.
        let mut mounts: Vec<PathBuf> =
            mounts().into_iter().map(|m| m.mount_point).filter(|p| p.starts_with(&root)).collect();
        mounts.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
        for m in mounts {
            eprintln!("cleanup: unmounting {}", m.display());
            let _ = Command::new("umount").arg("-l").arg(&m).status();
        }
        for (device, backing) in loop_devices() {
            if backing.starts_with(&root) {
                eprintln!("cleanup: detaching {device} ({})", backing.display());
                let _ = Command::new("losetup").arg("-d").arg(&device).status();
            }
        }
    }
}

fn mounts() -> Vec<rexray::os::MountEntry> {
    rexray::os::mountinfo::parse(&std::fs::read_to_string("/proc/self/mountinfo").unwrap())
}

fn mount_at(path: &Path) -> Option<rexray::os::MountEntry> {
    let path = std::fs::canonicalize(path).ok()?;
    mounts().into_iter().rev().find(|m| m.mount_point == path)
}

/// Every bound loop device and its backing file.
fn loop_devices() -> Vec<(String, PathBuf)> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir("/sys/block").unwrap().flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if let Ok(backing) = std::fs::read_to_string(entry.path().join("loop/backing_file")) {
            out.push((format!("/dev/{name}"), PathBuf::from(backing.trim_end())));
        }
    }
    out
}

/// What `losetup -j IMAGE` prints: one line per loop device over the image.
fn losetup_j(image: &Path) -> Vec<String> {
    let out = Command::new("losetup").arg("-j").arg(image).output().unwrap();
    assert!(out.status.success(), "losetup -j: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap().lines().map(str::to_owned).collect()
}

/// Asserts that no loop device is left over `image`. The kernel may finish a detach when the
/// device's last opener goes (a failed mount can release it a moment later), so this waits up to
/// five seconds.
fn assert_detached(image: &Path) {
    for _ in 0..50 {
        if losetup_j(image).is_empty() {
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    panic!("still attached: {:?}", losetup_j(image));
}

fn name(s: &str) -> VolumeName {
    VolumeName::new(s).unwrap()
}

fn opts(b: &Loop, pairs: &[(&str, &str)]) -> Options {
    b.parse_options(&pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()).unwrap()
}

/// Total size of the file system holding `path`, as `df` would show it.
fn fs_bytes(path: &Path) -> u64 {
    let st = rustix::fs::statvfs(path).unwrap();
    st.f_blocks * st.f_frsize
}

/// create → activate → write → deactivate → activate (no reformat, data kept) → deactivate → remove.
async fn lifecycle(fs: &str) {
    let w = World::new();
    let b = w.backend();
    let v = name("v1");
    let o = opts(&b, &[("size", "1"), ("fsType", fs)]);
    assert_eq!(o["fsType"], fs, "the stored options record fsType");

    b.create(&v, &o).await.unwrap();
    let img = w.image("v1");
    let meta = std::fs::metadata(&img).unwrap();
    assert_eq!(meta.len(), GIB);
    assert!(meta.blocks() < 64, "the image must start sparse");

    let path = b.activate(&v, &o).await.unwrap();
    assert_eq!(path, w.mount_dir("v1").join("data"));
    assert_eq!(path, b.mountpoint(&v, &o));
    let m = mount_at(&w.mount_dir("v1")).expect("mounted");
    assert_eq!(m.fs_type, fs);
    if fs == "xfs" {
        let super_opts = std::fs::read_to_string("/proc/self/mounts").unwrap();
        let line = super_opts.lines().find(|l| l.contains(&*w.mount_dir("v1").to_string_lossy())).unwrap();
        assert!(line.contains("nouuid"), "xfs is mounted with nouuid: {line}");
    }
    assert!(b.is_active(&v, &o).await.unwrap());
    let device = b.status(&v, &o)["device"].as_str().unwrap().to_owned();
    assert_eq!(losetup_j(&img).len(), 1);
    assert!(losetup_j(&img)[0].starts_with(&format!("{device}:")));
    assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o7777, 0o700);

    std::fs::write(path.join("hello.txt"), b"kept across mounts").unwrap();
    b.deactivate(&v, &o).await.unwrap();
    assert!(mount_at(&w.mount_dir("v1")).is_none(), "unmounted");
    assert!(losetup_j(&img).is_empty(), "detached: {:?}", losetup_j(&img));
    assert!(!b.is_active(&v, &o).await.unwrap());
    b.deactivate(&v, &o).await.unwrap();

    let again = b.activate(&v, &o).await.unwrap();
    assert_eq!(again, path);
    assert_eq!(std::fs::read(path.join("hello.txt")).unwrap(), b"kept across mounts", "formatted only once");
    b.deactivate(&v, &o).await.unwrap();

    b.remove(&v, &o).await.unwrap();
    assert!(!img.exists());
    assert!(!w.mount_dir("v1").exists(), "the empty mount directory goes with the volume");
    b.remove(&v, &o).await.unwrap();
}

#[tokio::test]
async fn ext4_lifecycle() {
    require!(root);
    lifecycle("ext4").await;
}

#[tokio::test]
async fn xfs_lifecycle() {
    require!(xfs);
    lifecycle("xfs").await;
}

/// activate → deactivate → enlarge the image → activate: the file system grew.
async fn grows(fs: &str) {
    let w = World::new();
    let b = w.backend();
    let v = name("g");
    let o = opts(&b, &[("size", "1"), ("fsType", fs)]);
    b.create(&v, &o).await.unwrap();
    let path = b.activate(&v, &o).await.unwrap();
    let before = fs_bytes(&path);
    assert!(before < GIB, "{before}");
    b.deactivate(&v, &o).await.unwrap();

    std::fs::OpenOptions::new().write(true).open(w.image("g")).unwrap().set_len(3 * GIB).unwrap();
    let path = b.activate(&v, &o).await.unwrap();
    let after = fs_bytes(&path);
    assert!(after > 2 * GIB, "{fs} grew from {before} to {after} bytes");
    assert_eq!(b.status(&v, &o)["sizeGiB"], 3);
    b.deactivate(&v, &o).await.unwrap();
}

/// Online resize: the volume stays mounted, a file stays open and is written across it.
async fn grows_online(fs: &str) {
    use std::io::Write;
    let w = World::new();
    let b = w.backend();
    let v = name("online");
    let o = opts(&b, &[("size", "1"), ("fsType", fs)]);
    b.create(&v, &o).await.unwrap();
    let path = b.activate(&v, &o).await.unwrap();
    let before = fs_bytes(&path);
    let mut open = std::fs::File::create(path.join("log")).unwrap();
    open.write_all(b"before\n").unwrap();

    // Shrinking is refused, with both sizes.
    let err = b.0.controller.expand(&v, &o, 0).await.unwrap_err().to_string();
    assert!(err.contains("never shrink"), "{err}");
    assert_eq!(b.0.controller.expand(&v, &o, 3).await.unwrap(), 3);
    assert_eq!(std::fs::metadata(w.image("online")).unwrap().len(), 3 * GIB);
    let grown = b.0.node.expand_fs(&v, &o, &b.0.node.staging_path(&v), get_u64(&o, "size")).await;
    if fs == "ext4" && !has_cap_sys_resource() {
        // Online ext4 growth needs CAP_SYS_RESOURCE: refused with a message that says so; the
        // file system grows at the next mount instead.
        let err = grown.unwrap_err().to_string();
        assert!(err.contains("CAP_SYS_RESOURCE") && err.contains("next mount"), "{err}");
        open.write_all(b"after\n").unwrap();
        drop(open);
        b.deactivate(&v, &o).await.unwrap();
        let path = b.activate(&v, &o).await.unwrap();
        assert!(fs_bytes(&path) > 2 * GIB, "grown at the next mount");
        assert_eq!(std::fs::read_to_string(path.join("log")).unwrap(), "before\nafter\n");
        b.deactivate(&v, &o).await.unwrap();
        return;
    }
    grown.unwrap();
    let after = fs_bytes(&path);
    assert!(after > 2 * GIB, "{fs} grew online from {before} to {after} bytes");
    assert!(mount_at(&w.mount_dir("online")).is_some(), "still mounted");
    open.write_all(b"after\n").unwrap();
    open.sync_all().unwrap();
    drop(open);
    assert_eq!(std::fs::read_to_string(path.join("log")).unwrap(), "before\nafter\n");
    // Again: nothing to do, nothing fails.
    assert_eq!(b.0.controller.expand(&v, &o, 3).await.unwrap(), 3);
    b.0.node.expand_fs(&v, &o, &b.0.node.staging_path(&v), get_u64(&o, "size")).await.unwrap();
    b.deactivate(&v, &o).await.unwrap();
    // The remount sees the grown file system and the data.
    let path = b.activate(&v, &o).await.unwrap();
    assert!(fs_bytes(&path) > 2 * GIB);
    assert_eq!(std::fs::read_to_string(path.join("log")).unwrap(), "before\nafter\n");
    b.deactivate(&v, &o).await.unwrap();
}

#[tokio::test]
async fn ext4_grows_online_while_mounted() {
    require!(root);
    grows_online("ext4").await;
}

#[tokio::test]
async fn xfs_grows_online_while_mounted() {
    require!(xfs);
    grows_online("xfs").await;
}

#[tokio::test]
async fn ext4_grows_after_the_image_is_enlarged() {
    require!(root);
    grows("ext4").await;
}

#[tokio::test]
async fn xfs_grows_after_the_image_is_enlarged() {
    require!(xfs);
    grows("xfs").await;
}

#[tokio::test]
async fn data_directory_mode_and_owner() {
    require!(root);
    let w = World::new();
    let b = w.backend();
    let v = name("owned");
    let o = opts(&b, &[("size", "1"), ("mode", "0750"), ("uid", "1000"), ("gid", "1000")]);
    b.create(&v, &o).await.unwrap();
    let path = b.activate(&v, &o).await.unwrap();
    let meta = std::fs::metadata(&path).unwrap();
    assert_eq!(meta.permissions().mode() & 0o7777, 0o750);
    assert_eq!((meta.uid(), meta.gid()), (1000, 1000));
    // A later activation leaves the directory as its owner made it.
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    b.deactivate(&v, &o).await.unwrap();
    let path = b.activate(&v, &o).await.unwrap();
    assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o7777, 0o755);
    b.deactivate(&v, &o).await.unwrap();
}

#[tokio::test]
async fn a_failed_mount_point_rolls_back_the_attachment() {
    require!(root);
    let w = World::new();
    let b = w.backend();
    let v = name("rb");
    let o = opts(&b, &[("size", "1")]);
    b.create(&v, &o).await.unwrap();
    // The mount point is a regular file: the step after formatting fails.
    std::fs::create_dir_all(w.dir.path().join("volumes")).unwrap();
    std::fs::write(w.mount_dir("rb"), b"in the way").unwrap();
    let err = b.activate(&v, &o).await.unwrap_err();
    assert!(matches!(err, BackendError::Step { step: "create mount directory", .. }), "{err:?}");
    assert_detached(&w.image("rb"));
    std::fs::remove_file(w.mount_dir("rb")).unwrap();
    b.activate(&v, &o).await.unwrap();
    b.deactivate(&v, &o).await.unwrap();
}

#[tokio::test]
async fn a_mount_the_kernel_refuses_rolls_back_the_attachment() {
    require!(xfs);
    let w = World::new();
    let b = w.backend();
    let v = name("kr");
    // Passes validation (allocsize=N[k|m|g]) but the kernel wants at least the page size.
    let o = opts(&b, &[("size", "1"), ("fsType", "xfs"), ("mountOptions", "allocsize=1k")]);
    b.create(&v, &o).await.unwrap();
    let err = b.activate(&v, &o).await.unwrap_err();
    let msg = format!("{err}: {}", std::error::Error::source(&err).map(ToString::to_string).unwrap_or_default());
    assert!(
        matches!(&err, BackendError::Step { step: "mount", device, .. } if device.to_string_lossy().starts_with("/dev/loop")),
        "{msg} ({err:?})"
    );
    assert!(mount_at(&w.mount_dir("kr")).is_none());
    assert_detached(&w.image("kr"));
}

#[tokio::test]
async fn rediscovers_its_devices_after_a_restart() {
    require!(root);
    let w = World::new();
    let v = name("r");
    let path = {
        let b = w.backend();
        let o = opts(&b, &[("size", "1")]);
        b.create(&v, &o).await.unwrap();
        let path = b.activate(&v, &o).await.unwrap();
        std::fs::write(path.join("f"), b"x").unwrap();
        path
        // The backend is dropped here with the volume attached and mounted, as after kill -9.
    };
    let b = w.backend();
    let o = opts(&b, &[("size", "1")]);
    assert!(b.is_active(&v, &o).await.unwrap());
    let before = losetup_j(&w.image("r"));
    assert_eq!(before.len(), 1);
    assert_eq!(b.activate(&v, &o).await.unwrap(), path);
    assert_eq!(losetup_j(&w.image("r")), before, "no second loop device");
    assert_eq!(std::fs::read(path.join("f")).unwrap(), b"x");
    b.deactivate(&v, &o).await.unwrap();
    assert_detached(&w.image("r"));
}

#[tokio::test]
async fn remove_is_refused_while_attached() {
    require!(root);
    let w = World::new();
    let b = w.backend();
    let v = name("busy");
    let o = opts(&b, &[("size", "1")]);
    b.create(&v, &o).await.unwrap();
    b.activate(&v, &o).await.unwrap();
    let device = b.status(&v, &o)["device"].as_str().unwrap().to_owned();
    let err = b.remove(&v, &o).await.unwrap_err();
    assert!(matches!(err, BackendError::InUse { .. }), "{err:?}");
    assert!(err.to_string().contains(&device), "{err:?}");
    assert!(w.image("busy").exists());
    b.deactivate(&v, &o).await.unwrap();
    b.remove(&v, &o).await.unwrap();
    assert!(!w.image("busy").exists());
}

#[tokio::test]
async fn create_beyond_free_space_is_refused() {
    require!(root);
    let w = World::new();
    let b = w.backend();
    let v = name("huge");
    let err = b.create(&v, &opts(&b, &[("size", "1000000")])).await.unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, BackendError::NoSpace { .. }), "{msg} ({err:?})");
    assert!(msg.contains("1000000 GiB") && msg.contains("free"), "{msg} ({err:?})");
    assert!(!w.image("huge").exists());
}

#[tokio::test]
async fn foreign_signatures_are_refused_and_left_alone() {
    require!(root);
    let w = World::new();
    let b = w.backend();
    let o = opts(&b, &[("size", "1")]);

    // A swap signature.
    let swap = name("swap");
    b.create(&swap, &o).await.unwrap();
    let out = Command::new("mkswap").arg(w.image("swap")).output().unwrap();
    assert!(out.status.success(), "mkswap: {}", String::from_utf8_lossy(&out.stderr));
    let err = b.activate(&swap, &o).await.unwrap_err();
    assert!(err.to_string().contains("swap signature"), "{err:?}");
    assert_detached(&w.image("swap"));
    let out = Command::new("blkid").args(["-p", "-s", "TYPE", "-o", "value"]).arg(w.image("swap")).output().unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "swap", "not formatted");

    // A DOS partition table: one Linux partition from sector 2048.
    let part = name("part");
    b.create(&part, &o).await.unwrap();
    let mut mbr = vec![0u8; 512];
    mbr[0x1BE + 4] = 0x83;
    mbr[0x1BE + 8..0x1BE + 12].copy_from_slice(&2048u32.to_le_bytes());
    mbr[0x1BE + 12..0x1BE + 16].copy_from_slice(&8192u32.to_le_bytes());
    mbr[0x1FE] = 0x55;
    mbr[0x1FF] = 0xAA;
    {
        use std::io::Write;
        let mut f = std::fs::OpenOptions::new().write(true).open(w.image("part")).unwrap();
        f.write_all(&mbr).unwrap();
    }
    let err = b.activate(&part, &o).await.unwrap_err();
    assert!(err.to_string().contains("partition table (dos)"), "{err:?}");
    assert_detached(&w.image("part"));
}

#[tokio::test]
async fn names_with_spaces_are_found_in_the_mount_table() {
    require!(root);
    let w = World::new();
    let b = w.backend();
    // mountinfo escapes the space as \040; is_active must still see the mount.
    let v = name("my vol");
    let o = opts(&b, &[("size", "1")]);
    b.create(&v, &o).await.unwrap();
    let path = b.activate(&v, &o).await.unwrap();
    assert_eq!(path, w.mount_dir("my vol").join("data"));
    assert!(b.is_active(&v, &o).await.unwrap());
    assert_eq!(b.activate(&v, &o).await.unwrap(), path, "found mounted, not mounted twice");
    assert_eq!(mounts().iter().filter(|m| m.mount_point == w.mount_dir("my vol")).count(), 1);
    b.deactivate(&v, &o).await.unwrap();
    assert!(!b.is_active(&v, &o).await.unwrap());
    assert_detached(&w.image("my vol"));
}

// ---------------------------------------------------------------------------------------------
// The loop ioctls themselves (LinuxOs::loop_attach / loop_find / loop_detach), no backend.
// ---------------------------------------------------------------------------------------------

/// A sparse image of `bytes` under the world's directory.
fn sparse_image(w: &World, name: &str, bytes: u64) -> PathBuf {
    use rexray::os::BlockOs;
    std::fs::create_dir_all(w.dir.path().join("loop")).unwrap();
    let image = w.image(name);
    assert!(LinuxOs::new().create_sparse(&image, bytes).unwrap());
    image
}

/// A loop device's sysfs attribute `loop/<attr>`, trimmed; `None` when it is not bound.
fn loop_attr(device: &Path, attr: &str) -> Option<String> {
    let dir = Path::new("/sys/block").join(device.file_name().unwrap()).join("loop");
    std::fs::read_to_string(dir.join(attr)).ok().map(|s| s.trim_end().to_owned())
}

#[test]
fn ioctl_attach_find_and_detach() {
    use rexray::os::BlockOs;
    require!(root);
    let w = World::new();
    let os = LinuxOs::new();
    let image = sparse_image(&w, "a", GIB);

    let device = os.loop_attach(&image).unwrap();
    assert!(device.to_string_lossy().starts_with("/dev/loop"), "{}", device.display());
    let listed = losetup_j(&image);
    assert_eq!(listed.len(), 1, "{listed:?}");
    assert!(listed[0].starts_with(&format!("{}:", device.display())), "{listed:?}");
    assert_eq!(os.loop_find(&image).unwrap().as_deref(), Some(device.as_path()));
    // Bound the way `losetup --find --show --direct-io=off` binds: read-write, whole file, no
    // auto-clear (so that a restarted daemon finds it), no direct I/O.
    assert_eq!(loop_attr(&device, "autoclear").as_deref(), Some("0"));
    assert_eq!(loop_attr(&device, "dio").as_deref(), Some("0"));
    assert_eq!(loop_attr(&device, "offset").as_deref(), Some("0"));
    assert_eq!(loop_attr(&device, "sizelimit").as_deref(), Some("0"));
    assert_eq!(loop_attr(&device, "backing_file").map(PathBuf::from), Some(std::fs::canonicalize(&image).unwrap()));
    let ro = std::fs::read_to_string(Path::new("/sys/block").join(device.file_name().unwrap()).join("ro")).unwrap();
    assert_eq!(ro.trim(), "0", "read-write");
    // The device reads the image.
    std::fs::OpenOptions::new().write(true).open(&image).unwrap().write_all_at(b"hello", 4096).unwrap();
    let mut buf = [0u8; 5];
    std::fs::File::open(&device).unwrap().read_exact_at(&mut buf, 4096).unwrap();
    assert_eq!(&buf, b"hello");

    os.loop_detach(&device).unwrap();
    assert!(losetup_j(&image).is_empty(), "gone as soon as detach returns: {:?}", losetup_j(&image));
    assert_eq!(os.loop_find(&image).unwrap(), None);
    // (The device itself may already serve another test's image.)
    assert_ne!(loop_attr(&device, "backing_file").map(PathBuf::from), Some(std::fs::canonicalize(&image).unwrap()));
}

#[test]
fn ioctl_attach_errors_name_the_image() {
    use rexray::os::BlockOs;
    require!(root);
    let w = World::new();
    let os = LinuxOs::new();
    let missing = w.image("missing");
    let err = os.loop_attach(&missing).unwrap_err();
    assert!(err.is_not_found() && err.to_string().contains("missing.img"), "{err:?}");
    let err = os.loop_attach(w.dir.path()).unwrap_err();
    assert!(err.to_string().contains("not a regular file"), "{err:?}");
}

#[test]
fn concurrent_ioctl_attaches_get_different_devices() {
    use rexray::os::BlockOs;
    require!(root);
    const OURS: usize = 6;
    const THEIRS: usize = 2;
    let w = World::new();
    let images: Vec<PathBuf> = (0..OURS + THEIRS).map(|i| sparse_image(&w, &format!("c{i}"), 64 << 20)).collect();
    let start = std::sync::Arc::new(std::sync::Barrier::new(OURS + THEIRS));
    let threads: Vec<_> = images
        .iter()
        .enumerate()
        .map(|(i, image)| {
            let (image, start) = (image.clone(), start.clone());
            std::thread::spawn(move || {
                start.wait();
                if i < OURS {
                    LinuxOs::new().loop_attach(&image).unwrap()
                } else {
                    // Someone else taking free devices at the same moment.
                    let out = Command::new("losetup").args(["--find", "--show"]).arg(&image).output().unwrap();
                    assert!(out.status.success(), "losetup: {}", String::from_utf8_lossy(&out.stderr));
                    PathBuf::from(String::from_utf8(out.stdout).unwrap().trim())
                }
            })
        })
        .collect();
    let devices: Vec<PathBuf> = threads.into_iter().map(|t| t.join().unwrap()).collect();
    let distinct: std::collections::BTreeSet<&PathBuf> = devices.iter().collect();
    assert_eq!(distinct.len(), devices.len(), "one device each: {devices:?}");
    let os = LinuxOs::new();
    for (image, device) in images.iter().zip(&devices) {
        assert_eq!(os.loop_find(image).unwrap().as_ref(), Some(device), "{}", image.display());
        assert_eq!(losetup_j(image).len(), 1, "{}", image.display());
    }
    for (image, device) in images.iter().zip(&devices) {
        os.loop_detach(device).unwrap();
        assert!(losetup_j(image).is_empty(), "{}: {:?}", image.display(), losetup_j(image));
    }
}

#[test]
fn a_detach_while_someone_holds_the_device_finishes_on_their_close() {
    use rexray::os::BlockOs;
    require!(root);
    let w = World::new();
    let os = LinuxOs::new();
    let image = sparse_image(&w, "held", 64 << 20);
    let device = os.loop_attach(&image).unwrap();
    let holder = std::fs::File::open(&device).unwrap();
    // Returns after a bounded wait, with the detach pending.
    os.loop_detach(&device).unwrap();
    assert_eq!(losetup_j(&image).len(), 1, "still bound while held open");
    assert_eq!(loop_attr(&device, "autoclear").as_deref(), Some("1"), "marked for detach");
    assert_eq!(os.loop_find(&image).unwrap(), None, "a device on its way out is not reused");
    drop(holder);
    assert_detached(&image);
}
