//! The `loop` backend: a volume is a sparse image file attached as a loop device.
//!
//! - **Layout.** Volume `v` is the image `<loop.root>/v.img`, created sparse (`ftruncate`) at the
//!   requested size, so it uses no disk until written. Because `v.img` must fit one path
//!   component (255 bytes), names longer than [`MAX_NAME_BYTES`] (251) are refused at create.
//! - **Attach/detach.** A free loop device over the image and its release, with the loop ioctls
//!   (`LOOP_CTL_GET_FREE` + `LOOP_CONFIGURE`, `LOOP_CLR_FD`; no `losetup` process), bound as
//!   `losetup --find --show --direct-io=off` would and without auto-clear. An existing
//!   attachment is found by its backing file (`/sys/block/loop*/loop/backing_file`), so after a
//!   `kill -9` and restart the daemon picks its devices up again instead of attaching twice.
//! - **Everything else** (probe, format if blank, mount at `<mount.path>/v`, grow, data directory,
//!   unmount) is the shared [`BlockPipeline`].
//! - **Create** refuses a size larger than the free space of `loop.root` (the image is sparse, but
//!   promising space that does not exist only moves the failure to a container's write).
//! - **Remove** deletes the image; it is refused while the image is attached. A missing image is
//!   success. A deactivated volume keeps its image and data.
//!
//! Scope `local`: the images live on this host.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use async_trait::async_trait;

use super::block::{blocking, step_error, Attacher, Attachment, BlockDefaults, BlockPipeline, MountLayout};
use super::options::Options;
use super::{Backend, BackendError, Scope};
use crate::config::ServiceConfig;
use crate::os::linux::LinuxOs;
use crate::os::{BlockOs, DirSpec};
use crate::service::name::VolumeName;

/// The longest volume name this backend accepts, in bytes: `<name>.img` must fit in 255.
pub const MAX_NAME_BYTES: usize = 251;

/// Mode of `loop.root` when this backend creates it: the images hold every volume's data.
const ROOT_MODE: u32 = 0o700;

/// One GiB.
const GIB: u64 = 1 << 30;

/// The image file of volume `name` under `root`: `<root>/<name>.img`.
pub fn image_path(root: &Path, name: &VolumeName) -> PathBuf {
    // VolumeName is one normal path component; appending ".img" keeps it one.
    root.join(format!("{}.img", name.as_str()))
}

fn check_name(name: &VolumeName) -> Result<(), BackendError> {
    let len = name.as_str().len();
    if len > MAX_NAME_BYTES {
        return Err(BackendError::Refused(format!(
            "volume name is {len} bytes long; the loop backend stores <name>.img and allows at most {MAX_NAME_BYTES} bytes"
        )));
    }
    Ok(())
}

/// Attaches a volume's image as a loop device: the `loop` backend's [`Attacher`].
#[derive(Debug, Clone)]
pub struct LoopAttacher {
    /// Every syscall and tool.
    os: Arc<dyn BlockOs>,
    /// `loop.root`: where the images are.
    root: PathBuf,
}

impl LoopAttacher {
    /// An attacher for the images under `root`.
    pub fn new(os: Arc<dyn BlockOs>, root: PathBuf) -> Self {
        Self { os, root }
    }

    /// The image file of volume `name`.
    pub fn image_path(&self, name: &VolumeName) -> PathBuf {
        image_path(&self.root, name)
    }
}

#[async_trait]
impl Attacher for LoopAttacher {
    async fn attach(&self, name: &VolumeName, _opts: &Options) -> Result<Attachment, BackendError> {
        let image = self.image_path(name);
        blocking(&self.os, "attach", move |os| {
            if let Some(device) = os.loop_find(&image).map_err(step_error("find the loop device of", &image))? {
                return Ok(Attachment { device, newly_attached: false });
            }
            let device = os.loop_attach(&image).map_err(step_error("attach", &image))?;
            Ok(Attachment { device, newly_attached: true })
        })
        .await
    }

    async fn detach(&self, name: &VolumeName, _opts: &Options) -> Result<(), BackendError> {
        let image = self.image_path(name);
        let volume = name.clone();
        blocking(&self.os, "detach", move |os| {
            match os.loop_find(&image).map_err(step_error("find the loop device of", &image))? {
                Some(device) => {
                    os.loop_detach(&device).map_err(step_error("detach", &device))?;
                    tracing::info!(volume = %volume, device = %device.display(), "detached");
                }
                None => tracing::debug!(volume = %volume, image = %image.display(), "not attached"),
            }
            Ok(())
        })
        .await
    }

    async fn find_attached(&self, name: &VolumeName, _opts: &Options) -> Result<Option<PathBuf>, BackendError> {
        let image = self.image_path(name);
        blocking(&self.os, "find attachment", move |os| {
            os.loop_find(&image).map_err(step_error("find the loop device of", &image))
        })
        .await
    }
}

/// Sparse image files under `loop.root`, attached as loop devices.
#[derive(Debug, Clone)]
pub struct LoopBackend {
    /// `loop.root`.
    root: PathBuf,
    /// Every syscall and tool (shared with the pipeline and the attacher).
    os: Arc<dyn BlockOs>,
    /// Attach → format-if-blank → mount, and back.
    pipeline: BlockPipeline,
}

impl LoopBackend {
    /// The backend a `loop` service is configured with, on the real operating system.
    ///
    /// # Errors
    /// [`BackendError::Refused`] for a `mount.rootPath` that leaves the volume.
    pub fn new(service: &ServiceConfig) -> Result<Self, BackendError> {
        Self::with_os(service, Arc::new(LinuxOs::new()))
    }

    /// The same on the given OS layer (a [`crate::os::fake::FakeOs`] in tests).
    ///
    /// # Errors
    /// As [`LoopBackend::new`].
    pub fn with_os(service: &ServiceConfig, os: Arc<dyn BlockOs>) -> Result<Self, BackendError> {
        let root = service.loop_root.clone();
        let attacher = Arc::new(LoopAttacher::new(Arc::clone(&os), root.clone()));
        let defaults = BlockDefaults {
            size_gib: service.integration.default_size_gib,
            fs_type: service.integration.default_fs_type.clone(),
        };
        let layout = MountLayout::from_integration(&service.integration)?;
        let pipeline = BlockPipeline::new(Arc::clone(&os), attacher, layout, defaults);
        Ok(Self { root, os, pipeline })
    }

    /// The image file of volume `name`.
    pub fn image_path(&self, name: &VolumeName) -> PathBuf {
        image_path(&self.root, name)
    }
}

#[async_trait]
impl Backend for LoopBackend {
    fn kind(&self) -> &'static str {
        "loop"
    }

    fn scope(&self) -> Scope {
        Scope::Local
    }

    fn parse_options(&self, raw: &BTreeMap<String, String>) -> Result<Options, BackendError> {
        self.pipeline.parse_options(raw, &[])
    }

    async fn create(&self, name: &VolumeName, opts: &Options) -> Result<(), BackendError> {
        check_name(name)?;
        let size = self.pipeline.block_options(opts)?.size_bytes();
        let root = self.root.clone();
        let image = self.image_path(name);
        let volume = name.clone();
        blocking(&self.os, "create", move |os| {
            os.ensure_dir(&root, DirSpec { mode: ROOT_MODE, uid: None, gid: None })
                .map_err(step_error("create directory", &root))?;
            if let Some(existing) = os.file_size(&image).map_err(step_error("examine", &image))? {
                tracing::debug!(volume = %volume, image = %image.display(), bytes = existing, "image exists");
                return Ok(());
            }
            let free = os.free_space(&root).map_err(step_error("read free space of", &root))?;
            if size > free {
                // Display only: a rounded figure is what a person reads.
                #[allow(clippy::cast_precision_loss)]
                let free_gib = free as f64 / GIB as f64;
                return Err(BackendError::Refused(format!(
                    "not enough space for {}: the volume needs {} GiB ({size} bytes) but {} has only {free_gib:.1} GiB ({free} bytes) free",
                    image.display(),
                    size / GIB,
                    root.display(),
                )));
            }
            if os.create_sparse(&image, size).map_err(step_error("create image", &image))? {
                tracing::info!(volume = %volume, image = %image.display(), bytes = size, "created image");
            }
            Ok(())
        })
        .await
    }

    async fn activate(&self, name: &VolumeName, opts: &Options) -> Result<PathBuf, BackendError> {
        self.pipeline.activate(name, opts).await
    }

    async fn deactivate(&self, name: &VolumeName, opts: &Options) -> Result<(), BackendError> {
        self.pipeline.deactivate(name, opts).await
    }

    async fn remove(&self, name: &VolumeName, opts: &Options) -> Result<(), BackendError> {
        if let Some(device) = self.pipeline.find_attached(name, opts).await? {
            return Err(BackendError::Refused(format!(
                "{} is still attached as {}: deactivate the volume (unmount it everywhere) before removing it",
                self.image_path(name).display(),
                device.display()
            )));
        }
        let image = self.image_path(name);
        let volume = name.clone();
        blocking(&self.os, "remove", move |os| {
            if os.remove_file(&image).map_err(step_error("remove image", &image))? {
                tracing::info!(volume = %volume, image = %image.display(), "removed image");
            } else {
                tracing::warn!(volume = %volume, image = %image.display(), "image already gone");
            }
            Ok(())
        })
        .await?;
        self.pipeline.remove_mount_dir(name).await;
        Ok(())
    }

    async fn is_active(&self, name: &VolumeName, _opts: &Options) -> Result<bool, BackendError> {
        self.pipeline.is_active(name).await
    }

    fn mountpoint(&self, name: &VolumeName, _opts: &Options) -> PathBuf {
        self.pipeline.mountpoint(name)
    }

    /// `image`, `sizeGiB` (of the image file when it exists), `fsType`, and `device` while
    /// attached. Reads one `stat` and the loop devices' sysfs entries: memory-only, so it runs
    /// inline.
    fn status(&self, name: &VolumeName, opts: &Options) -> BTreeMap<String, serde_json::Value> {
        let image = self.image_path(name);
        let mut status = BTreeMap::from([("image".to_owned(), image.display().to_string().into())]);
        let size = match self.os.file_size(&image) {
            Ok(Some(bytes)) => Some(bytes / GIB),
            _ => self.pipeline.block_options(opts).ok().map(|b| b.size_gib),
        };
        if let Some(size) = size {
            status.insert("sizeGiB".into(), size.into());
        }
        if let Ok(block) = self.pipeline.block_options(opts) {
            status.insert("fsType".into(), block.fs_type.as_str().into());
        }
        if let Ok(Some(device)) = self.os.loop_find(&image) {
            status.insert("device".into(), device.display().to_string().into());
        }
        status
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{BackendKind, Integration};
    use crate::os::fake::{Call, CallKind, Failure, FakeOs};
    use crate::os::FsType;

    fn name(s: &str) -> VolumeName {
        VolumeName::new(s).unwrap()
    }

    fn service() -> ServiceConfig {
        ServiceConfig {
            name: "loop".into(),
            backend: BackendKind::Loop,
            integration: Integration {
                mount_path: "/mnt".into(),
                ..Integration::defaults(Path::new("/var/lib/rexray"))
            },
            vfs_root: "/vfs".into(),
            loop_root: "/loop".into(),
            ebs: BTreeMap::new(),
            ebs_origins: BTreeMap::new(),
        }
    }

    fn backend() -> (Arc<FakeOs>, LoopBackend) {
        let os = Arc::new(FakeOs::new());
        let b = LoopBackend::with_os(&service(), os.clone()).unwrap();
        (os, b)
    }

    fn opts(b: &LoopBackend, pairs: &[(&str, &str)]) -> Options {
        b.parse_options(&pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()).unwrap()
    }

    #[tokio::test]
    async fn create_makes_a_sparse_image_once() {
        let (os, b) = backend();
        let o = opts(&b, &[("size", "2")]);
        b.create(&name("v1"), &o).await.unwrap();
        let spec = DirSpec { mode: 0o700, uid: None, gid: None };
        assert_eq!(
            os.take_calls(),
            vec![
                Call::EnsureDir { path: "/loop".into(), spec },
                Call::FileSize { path: "/loop/v1.img".into() },
                Call::FreeSpace { dir: "/loop".into() },
                Call::CreateSparse { path: "/loop/v1.img".into(), size: 2 << 30 },
            ]
        );
        b.create(&name("v1"), &o).await.unwrap();
        assert_eq!(
            os.take_calls(),
            vec![Call::EnsureDir { path: "/loop".into(), spec }, Call::FileSize { path: "/loop/v1.img".into() }],
            "an existing image is kept as it is"
        );
        assert_eq!(os.file(Path::new("/loop/v1.img")), Some(2 << 30));
    }

    #[tokio::test]
    async fn create_beyond_free_space_is_refused_with_both_numbers() {
        let (os, b) = backend();
        os.set_free_space(5 << 30);
        let err = b.create(&name("big"), &opts(&b, &[("size", "1000000")])).await.unwrap_err();
        let msg = err.to_string();
        assert!(matches!(err, BackendError::Refused(_)), "{msg}");
        assert!(msg.contains("1000000 GiB") && msg.contains("5.0 GiB") && msg.contains("/loop"), "{msg}");
        assert_eq!(os.file(Path::new("/loop/big.img")), None);
        assert!(!os.calls().iter().any(|c| c.kind() == CallKind::CreateSparse));
    }

    #[tokio::test]
    async fn long_names_are_refused_at_create() {
        let (os, b) = backend();
        let o = opts(&b, &[]);
        let long = "a".repeat(252);
        let msg = b.create(&name(&long), &o).await.unwrap_err().to_string();
        assert!(msg.contains("252 bytes") && msg.contains("251"), "{msg}");
        assert!(os.calls().is_empty());
        b.create(&name(&"a".repeat(251)), &o).await.unwrap();
    }

    #[tokio::test]
    async fn remove_is_refused_while_attached_and_idempotent() {
        let (os, b) = backend();
        let o = opts(&b, &[("size", "1")]);
        let v = name("v1");
        b.create(&v, &o).await.unwrap();
        assert_eq!(b.activate(&v, &o).await.unwrap(), Path::new("/mnt/v1/data"));
        let msg = b.remove(&v, &o).await.unwrap_err().to_string();
        assert!(msg.contains("/dev/loop0") && msg.contains("still attached"), "{msg}");
        assert_eq!(os.file(Path::new("/loop/v1.img")), Some(1 << 30), "image kept");

        b.deactivate(&v, &o).await.unwrap();
        assert_eq!(os.file(Path::new("/loop/v1.img")), Some(1 << 30), "deactivate keeps the data");
        os.take_calls();
        b.remove(&v, &o).await.unwrap();
        assert_eq!(
            os.take_calls(),
            vec![
                Call::LoopFind { image: "/loop/v1.img".into() },
                Call::RemoveFile { path: "/loop/v1.img".into() },
                Call::RemoveEmptyDir { path: "/mnt/v1".into() },
            ]
        );
        assert_eq!(os.file(Path::new("/loop/v1.img")), None);
        b.remove(&v, &o).await.unwrap();
    }

    #[tokio::test]
    async fn rediscovers_an_attached_and_mounted_volume_after_a_restart() {
        let os = Arc::new(FakeOs::new());
        os.add_file("/loop/v1.img", 1 << 30);
        let device = os.attach_existing("/loop/v1.img");
        os.set_probe("/loop/v1.img", crate::os::Probe::Filesystem("ext4".into()));
        os.mount_existing(&device, "/mnt/v1", FsType::Ext4);
        os.add_dir("/mnt/v1/data");

        let b = LoopBackend::with_os(&service(), os.clone()).unwrap();
        let o = opts(&b, &[]);
        assert!(b.is_active(&name("v1"), &o).await.unwrap());
        os.take_calls();
        assert_eq!(b.activate(&name("v1"), &o).await.unwrap(), Path::new("/mnt/v1/data"));
        let calls = os.take_calls();
        assert!(
            !calls.iter().any(|c| matches!(c.kind(), CallKind::LoopAttach | CallKind::Mount | CallKind::Mkfs)),
            "{calls:?}"
        );
        assert_eq!(b.status(&name("v1"), &o)["device"], "/dev/loop0");
    }

    #[tokio::test]
    async fn status_reports_image_size_fs_and_device() {
        let (os, b) = backend();
        let o = opts(&b, &[("size", "3"), ("fsType", "xfs")]);
        b.create(&name("v1"), &o).await.unwrap();
        let s = b.status(&name("v1"), &o);
        assert_eq!(s["image"], "/loop/v1.img");
        assert_eq!(s["sizeGiB"], 3);
        assert_eq!(s["fsType"], "xfs");
        assert!(!s.contains_key("device"));
        b.activate(&name("v1"), &o).await.unwrap();
        assert_eq!(b.status(&name("v1"), &o)["device"], "/dev/loop0");
        let mounted = os.mounted(Path::new("/mnt/v1")).unwrap();
        assert_eq!(mounted.fs_type, "xfs");
        assert_eq!(b.kind(), "loop");
        assert_eq!(b.scope(), Scope::Local);
        assert_eq!(b.mountpoint(&name("v1"), &o), Path::new("/mnt/v1/data"));
    }

    #[tokio::test]
    async fn activate_of_a_missing_image_names_it_and_leaves_nothing() {
        let (os, b) = backend();
        os.fail_next(CallKind::LoopAttach, Failure::Io(std::io::ErrorKind::NotFound));
        let err = b.activate(&name("ghost"), &opts(&b, &[])).await.unwrap_err();
        assert!(
            matches!(&err, BackendError::Step { step: "attach", device, .. } if device == Path::new("/loop/ghost.img")),
            "{err}"
        );
        assert_eq!(
            os.calls(),
            vec![
                Call::LoopFind { image: "/loop/ghost.img".into() },
                Call::LoopAttach { image: "/loop/ghost.img".into() }
            ]
        );
    }
}
