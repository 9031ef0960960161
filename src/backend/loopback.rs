//! The `loop` backend: a volume is a sparse image file attached as a loop device.
//!
//! - **Layout.** Volume `v` is the image `<loop.root>/v.img`, created sparse (`ftruncate`) at the
//!   requested size, so it uses no disk until written. Because `v.img` must fit one path
//!   component (255 bytes), names longer than [`MAX_NAME_BYTES`] (251) are refused at create.
//! - **Controller.** Create makes the image, refusing a size larger than the free space of
//!   `loop.root` (the image is sparse, but promising space that does not exist only moves the
//!   failure to a container's write) and an image already there that no record owns. Publish
//!   attaches the image to a free loop device with the loop ioctls (`LOOP_CTL_GET_FREE` +
//!   `LOOP_CONFIGURE`, `LOOP_CLR_FD`; no `losetup` process), bound as `losetup --find --show
//!   --direct-io=off` would and without auto-clear; an existing attachment is found by its
//!   backing file (`/sys/block/loop*/loop/backing_file`, or the inode), so after a `kill -9` the
//!   daemon picks its devices up again instead of attaching twice. It publishes to this host
//!   only. Delete removes the image; it is refused while the image is attached. Expand grows
//!   the image (within the free space) and, when it is attached, has the loop device take the
//!   new size (`LOOP_SET_CAPACITY`), so the mounted file system can grow while in use.
//! - **Node.** The shared [`BlockNode`]; the device from the context must be backed by the
//!   volume's very image (same device and inode), so nothing but the volume's own image is ever
//!   formatted or mounted.
//!
//! Nothing under `loop.root` is followed through a symbolic link. Scope `local`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use async_trait::async_trait;

use super::block::{BlockDefaults, BlockNode, BlockOptions, DeviceSource, MountLayout};
use super::options::Options;
use super::os_call::{blocking, step_error};
use super::{Backend, BackendError, Controller, Environment, NodeId, Page, PageRequest, PublishContext, Scope};
use crate::config::ServiceConfig;
use crate::name::VolumeName;
use crate::os::{BlockOs, Entry};

/// The longest volume name this backend accepts, in bytes: `<name>.img` must fit in 255.
pub const MAX_NAME_BYTES: usize = 251;

/// Mode of `loop.root` when this backend creates it: the images hold every volume's data.
const ROOT_MODE: u32 = 0o700;

/// One GiB.
const GIB: u64 = 1 << 30;

/// The image suffix.
const IMAGE_SUFFIX: &str = ".img";

/// The image file of volume `name` under `root`: `<root>/<name>.img`.
pub fn image_path(root: &Path, name: &VolumeName) -> PathBuf {
    // VolumeName is one normal path component; appending ".img" keeps it one.
    root.join(format!("{}{IMAGE_SUFFIX}", name.as_str()))
}

fn check_name(name: &VolumeName) -> Result<(), BackendError> {
    let len = name.as_str().len();
    if len > MAX_NAME_BYTES {
        return Err(BackendError::invalid(format!(
            "volume name is {len} bytes long; the loop backend stores <name>.img and allows at most {MAX_NAME_BYTES} bytes"
        )));
    }
    Ok(())
}

/// The `loop` backend of a service, over the environment's OS.
///
/// # Errors
/// [`BackendError::Invalid`] for a `mount.rootPath` that leaves the volume.
pub fn backend(service: &ServiceConfig, env: &Environment) -> Result<Backend, BackendError> {
    let root = service.loop_root.clone();
    let defaults = BlockDefaults {
        size_gib: service.integration.default_size_gib,
        fs_type: service.integration.default_fs_type.clone(),
    };
    let layout = MountLayout::from_integration(&service.integration)?;
    let devices = Arc::new(LoopDevices::new(Arc::clone(&env.os), root.clone()));
    let node = Arc::new(BlockNode::new(Arc::clone(&env.os), devices, layout, defaults.clone()));
    let controller = Arc::new(LoopController { root, os: Arc::clone(&env.os), defaults, host: env.host.hostname() });
    Ok(Backend { controller, node })
}

/// Finds a loop volume's device from its publish context, checking its backing file.
#[derive(Debug, Clone)]
pub struct LoopDevices {
    /// Every syscall and tool.
    os: Arc<dyn BlockOs>,
    /// `loop.root`: where the images are.
    root: PathBuf,
}

impl LoopDevices {
    /// Devices backed by the images under `root`.
    pub fn new(os: Arc<dyn BlockOs>, root: PathBuf) -> Self {
        Self { os, root }
    }
}

#[async_trait]
impl DeviceSource for LoopDevices {
    async fn device(&self, name: &VolumeName, ctx: &PublishContext) -> Result<PathBuf, BackendError> {
        let Some(device) = ctx.get(PublishContext::DEVICE).map(PathBuf::from) else {
            return Err(BackendError::invalid(format!("the publish context of volume {name} names no loop device")));
        };
        let image = image_path(&self.root, name);
        blocking(&self.os, "find device", move |os| {
            if os.loop_backed_by(&device, &image).map_err(step_error("check the backing file of", &device))? {
                Ok(device)
            } else {
                Err(BackendError::ForeignDevice {
                    what: format!("{} is not backed by the volume's image {}", device.display(), image.display()),
                })
            }
        })
        .await
    }
}

/// The controller half: images under `loop.root` and their loop devices.
#[derive(Debug, Clone)]
pub struct LoopController {
    /// `loop.root`.
    root: PathBuf,
    /// Every syscall and tool.
    os: Arc<dyn BlockOs>,
    /// The config's default size and file system.
    defaults: BlockDefaults,
    /// This host's name: the only node the images attach to.
    host: String,
}

impl LoopController {
    /// The image file of volume `name`.
    pub fn image_path(&self, name: &VolumeName) -> PathBuf {
        image_path(&self.root, name)
    }

    fn check_node(&self, node: &NodeId) -> Result<(), BackendError> {
        if node.0 == self.host {
            Ok(())
        } else {
            Err(BackendError::invalid(format!(
                "the loop backend's volumes live on this host ({}); they cannot be published to node {node}",
                self.host
            )))
        }
    }
}

/// Grows `image` to `size` bytes on a blocking thread (see [`Controller::expand`]).
fn grow_image(
    os: &dyn BlockOs,
    root: &Path,
    image: &Path,
    size: u64,
    crash: &crate::crashpoint::Token,
) -> Result<(), BackendError> {
    let current = match os.entry(image).map_err(step_error("examine", image))? {
        Entry::File { .. } => os.file_size(image).map_err(step_error("read the size of", image))?.unwrap_or(0),
        Entry::Missing => return Err(BackendError::not_found(format!("the image {} does not exist", image.display()))),
        Entry::Symlink => return Err(step_error("resize image", image)(crate::os::OsError::Symlink(image.into()))),
        Entry::Directory | Entry::Other => {
            return Err(BackendError::invalid(format!("{} is not a regular file", image.display())))
        }
    };
    if size < current {
        return Err(BackendError::invalid(format!(
            "{} is {} GiB; volumes grow, never shrink (asked for {} GiB)",
            image.display(),
            current / GIB,
            size / GIB
        )));
    }
    let free = os.free_space(root).map_err(step_error("read free space of", root))?;
    if size - current > free {
        return Err(BackendError::NoSpace {
            what: format!(
                "not enough space to grow {} to {} GiB: it needs {} more bytes but {} has {free} bytes free",
                image.display(),
                size / GIB,
                size - current,
                root.display()
            ),
        });
    }
    if os.grow_file(image, size).map_err(step_error("resize image", image))? {
        tracing::info!(image = %image.display(), bytes = size, "grew image");
    }
    crash.hit("image grown");
    if let Some(device) = os.loop_find(image).map_err(step_error("find the loop device of", image))? {
        os.loop_refresh_size(&device).map_err(step_error("refresh the size of", &device))?;
    }
    Ok(())
}

/// The error for a create that finds more than it should have.
fn unrecorded(image: &Path) -> BackendError {
    BackendError::AlreadyExists {
        what: format!("{} exists", image.display()),
        mismatch: "no volume record owns it (left by an older version, an interrupted operation or by hand); it is left alone: remove it or choose another name".into(),
    }
}

/// Makes the image on a blocking thread (see [`Controller::create`]).
fn create_image(os: &dyn BlockOs, root: &Path, image: &Path, size: u64, resume: bool) -> Result<(), BackendError> {
    os.make_root(root, ROOT_MODE).map_err(step_error("create directory", root))?;
    match os.entry(image).map_err(step_error("examine", image))? {
        Entry::Missing => {}
        Entry::File { .. } if resume => {
            // An interrupted create of this program's: bring it to the size asked for.
            if os.grow_file(image, size).map_err(step_error("size image", image))? {
                tracing::info!(image = %image.display(), bytes = size, "finished an interrupted image");
            }
            return Ok(());
        }
        Entry::File { .. } | Entry::Directory | Entry::Other => return Err(unrecorded(image)),
        Entry::Symlink => return Err(step_error("create image", image)(crate::os::OsError::Symlink(image.into()))),
    }
    let free = os.free_space(root).map_err(step_error("read free space of", root))?;
    if size > free {
        // Display only: a rounded figure is what a person reads.
        #[allow(clippy::cast_precision_loss)]
        let free_gib = free as f64 / GIB as f64;
        return Err(BackendError::NoSpace {
            what: format!(
                "not enough space for {}: the volume needs {} GiB ({size} bytes) but {} has only {free_gib:.1} GiB ({free} bytes) free",
                image.display(),
                size / GIB,
                root.display(),
            ),
        });
    }
    if os.create_sparse(image, size).map_err(step_error("create image", image))? {
        tracing::info!(image = %image.display(), bytes = size, "created image");
    } else {
        return Err(unrecorded(image));
    }
    Ok(())
}

#[async_trait]
impl Controller for LoopController {
    fn kind(&self) -> &'static str {
        "loop"
    }

    fn scope(&self) -> Scope {
        Scope::Local
    }

    async fn capacity(&self) -> Result<Option<u64>, BackendError> {
        super::os_call::free_space(&self.os, &self.root).await.map(Some)
    }

    fn parse_options(&self, raw: &BTreeMap<String, String>) -> Result<Options, BackendError> {
        super::block::options::parse(raw, &[], &self.defaults)
    }

    async fn local_node(&self) -> Result<NodeId, BackendError> {
        Ok(NodeId(self.host.clone()))
    }

    async fn create(&self, name: &VolumeName, opts: &Options, resume: bool) -> Result<(), BackendError> {
        check_name(name)?;
        let size = BlockOptions::from_options(opts, &self.defaults)?.size_bytes();
        let (root, image) = (self.root.clone(), self.image_path(name));
        blocking(&self.os, "create", move |os| create_image(os, &root, &image, size, resume)).await
    }

    async fn discard_partial(&self, name: &VolumeName, opts: &Options) -> Result<(), BackendError> {
        self.delete(name, opts).await
    }

    async fn delete(&self, name: &VolumeName, _opts: &Options) -> Result<(), BackendError> {
        let image = self.image_path(name);
        blocking(&self.os, "remove", move |os| {
            if let Some(device) = os.loop_find(&image).map_err(step_error("find the loop device of", &image))? {
                return Err(BackendError::InUse {
                    what: image.display().to_string(),
                    holders: format!("attached as {}", device.display()),
                    hint: "deactivate the volume (unmount it everywhere) before removing it".into(),
                });
            }
            if os.remove_file(&image).map_err(step_error("remove image", &image))? {
                tracing::info!(image = %image.display(), "removed image");
            } else {
                tracing::warn!(image = %image.display(), "image already gone");
            }
            Ok(())
        })
        .await
    }

    async fn expand(&self, name: &VolumeName, _opts: &Options, size_gib: u64) -> Result<u64, BackendError> {
        let (root, image) = (self.root.clone(), self.image_path(name));
        let size =
            size_gib.checked_mul(GIB).ok_or_else(|| BackendError::invalid(format!("{size_gib} GiB is too large")))?;
        let crash = crate::crashpoint::token();
        blocking(&self.os, "resize", move |os| grow_image(os, &root, &image, size, &crash)).await?;
        Ok(size_gib)
    }

    async fn publish(&self, name: &VolumeName, _opts: &Options, node: &NodeId) -> Result<PublishContext, BackendError> {
        self.check_node(node)?;
        let image = self.image_path(name);
        let volume = name.clone();
        let crash = crate::crashpoint::token();
        let device = blocking(&self.os, "attach", move |os| {
            if let Some(device) = os.loop_find(&image).map_err(step_error("find the loop device of", &image))? {
                return Ok(device);
            }
            if os.entry(&image).map_err(step_error("examine", &image))? == Entry::Missing {
                return Err(BackendError::not_found(format!(
                    "the image {} of volume {volume} does not exist",
                    image.display()
                )));
            }
            let device = os.loop_attach(&image).map_err(step_error("attach", &image))?;
            tracing::info!(volume = %volume, device = %device.display(), "attached");
            crash.hit("attached");
            Ok(device)
        })
        .await?;
        Ok(PublishContext::new().with(PublishContext::DEVICE, device.display().to_string()))
    }

    async fn unpublish(&self, name: &VolumeName, _opts: &Options, node: &NodeId) -> Result<(), BackendError> {
        self.check_node(node)?;
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

    async fn publications(&self, node: &NodeId) -> Result<BTreeMap<String, PublishContext>, BackendError> {
        self.check_node(node)?;
        let root = self.root.clone();
        let devices = blocking(&self.os, "list attachments", move |os| {
            os.loop_devices_in(&root).map_err(step_error("list the loop devices of", &root))
        })
        .await?;
        Ok(devices
            .into_iter()
            .filter_map(|(device, file)| {
                let name = file.strip_suffix(IMAGE_SUFFIX)?.to_owned();
                Some((name, PublishContext::new().with(PublishContext::DEVICE, device.display().to_string())))
            })
            .collect())
    }

    async fn list(&self, page: &PageRequest) -> Result<Page, BackendError> {
        let root = self.root.clone();
        let entries =
            blocking(&self.os, "list", move |os| os.list_dir(&root).map_err(step_error("list", &root))).await?;
        let names = entries.into_iter().filter_map(|(file, entry)| {
            let name = file.strip_suffix(IMAGE_SUFFIX)?;
            (matches!(entry, Entry::File { .. }) && VolumeName::new(name).is_ok()).then(|| name.to_owned())
        });
        Ok(Page::of(names, page))
    }

    /// `image`, `sizeGiB` (of the image file when it exists), `fsType`, and `device` while
    /// attached. Reads one `lstat` and the loop devices' sysfs entries: memory-only, so it runs
    /// inline.
    fn status(&self, name: &VolumeName, opts: &Options) -> BTreeMap<String, serde_json::Value> {
        let image = self.image_path(name);
        let mut status = BTreeMap::from([("image".to_owned(), image.display().to_string().into())]);
        let block = BlockOptions::from_options(opts, &self.defaults).ok();
        let size = match self.os.file_size(&image) {
            Ok(Some(bytes)) => Some(bytes / GIB),
            _ => block.as_ref().map(|b| b.size_gib),
        };
        if let Some(size) = size {
            status.insert("sizeGiB".into(), size.into());
        }
        if let Some(block) = &block {
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

    fn loop_backend() -> (Arc<FakeOs>, Backend) {
        let os = Arc::new(FakeOs::new());
        let b = backend(&service(), &crate::backend::tests::environment(os.clone(), os.clone())).unwrap();
        (os, b)
    }

    fn opts(b: &Backend, pairs: &[(&str, &str)]) -> Options {
        b.controller.parse_options(&pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()).unwrap()
    }

    fn here() -> NodeId {
        NodeId("fakehost".into())
    }

    #[tokio::test]
    async fn create_makes_a_sparse_image_and_refuses_one_no_record_owns() {
        let (os, b) = loop_backend();
        let o = opts(&b, &[("size", "2")]);
        b.controller.create(&name("v1"), &o, false).await.unwrap();
        assert_eq!(
            os.take_calls(),
            vec![
                Call::MakeRoot { path: "/loop".into(), mode: 0o700 },
                Call::Entry { path: "/loop/v1.img".into() },
                Call::FreeSpace { dir: "/loop".into() },
                Call::CreateSparse { path: "/loop/v1.img".into(), size: 2 << 30 },
            ]
        );
        // An image already there is never silently adopted with its old size.
        let err = b.controller.create(&name("v1"), &opts(&b, &[("size", "3")]), false).await.unwrap_err();
        assert!(matches!(err, BackendError::AlreadyExists { .. }), "{err}");
        assert!(
            err.to_string().contains("/loop/v1.img exists") && err.to_string().contains("no volume record owns it"),
            "{err}"
        );
        assert_eq!(os.file(Path::new("/loop/v1.img")), Some(2 << 30));
        // Resuming an interrupted create of its own brings it to the size asked for.
        b.controller.create(&name("v1"), &opts(&b, &[("size", "3")]), true).await.unwrap();
        assert_eq!(os.file(Path::new("/loop/v1.img")), Some(3 << 30));
    }

    #[tokio::test]
    async fn create_beyond_free_space_is_refused_with_both_numbers() {
        let (os, b) = loop_backend();
        os.set_free_space(5 << 30);
        let err = b.controller.create(&name("big"), &opts(&b, &[("size", "1000000")]), false).await.unwrap_err();
        let msg = err.to_string();
        assert!(matches!(err, BackendError::NoSpace { .. }), "{msg}");
        assert!(msg.contains("1000000 GiB") && msg.contains("5.0 GiB") && msg.contains("/loop"), "{msg}");
        assert_eq!(os.file(Path::new("/loop/big.img")), None);
        assert!(!os.calls().iter().any(|c| c.kind() == CallKind::CreateSparse));
    }

    #[tokio::test]
    async fn long_names_are_refused_at_create() {
        let (os, b) = loop_backend();
        let o = opts(&b, &[]);
        let long = "a".repeat(252);
        let msg = b.controller.create(&name(&long), &o, false).await.unwrap_err().to_string();
        assert!(msg.contains("252 bytes") && msg.contains("251"), "{msg}");
        assert!(os.calls().is_empty());
        b.controller.create(&name(&"a".repeat(251)), &o, false).await.unwrap();
    }

    #[tokio::test]
    async fn publish_attaches_once_and_unpublish_detaches() {
        let (os, b) = loop_backend();
        let o = opts(&b, &[("size", "1")]);
        let v = name("v1");
        b.controller.create(&v, &o, false).await.unwrap();
        let ctx = b.controller.publish(&v, &o, &here()).await.unwrap();
        assert_eq!(ctx.get(PublishContext::DEVICE), Some("/dev/loop0"));
        assert_eq!(b.controller.publish(&v, &o, &here()).await.unwrap(), ctx, "found again, not attached twice");
        assert_eq!(os.calls().iter().filter(|c| c.kind() == CallKind::LoopAttach).count(), 1);
        let published = b.controller.publications(&here()).await.unwrap();
        assert_eq!(published.keys().collect::<Vec<_>>(), ["v1"]);
        let err = b.controller.publish(&v, &o, &NodeId("elsewhere".into())).await.unwrap_err();
        assert!(err.to_string().contains("cannot be published to node elsewhere"), "{err}");
        b.controller.unpublish(&v, &o, &here()).await.unwrap();
        assert_eq!(os.attached(Path::new("/loop/v1.img")), None);
        b.controller.unpublish(&v, &o, &here()).await.unwrap();
    }

    #[tokio::test]
    async fn delete_is_refused_while_attached_and_idempotent() {
        let (os, b) = loop_backend();
        let o = opts(&b, &[("size", "1")]);
        let v = name("v1");
        b.controller.create(&v, &o, false).await.unwrap();
        assert_eq!(b.activate_here(&v, &o).await.unwrap(), Path::new("/mnt/v1/data"));
        let err = b.controller.delete(&v, &o).await.unwrap_err();
        assert!(matches!(err, BackendError::InUse { .. }), "{err}");
        let msg = err.to_string();
        assert!(msg.contains("/dev/loop0") && msg.contains("still attached"), "{msg}");
        assert_eq!(os.file(Path::new("/loop/v1.img")), Some(1 << 30), "image kept");

        b.deactivate_here(&v, &o).await.unwrap();
        assert_eq!(os.file(Path::new("/loop/v1.img")), Some(1 << 30), "deactivate keeps the data");
        os.take_calls();
        b.controller.delete(&v, &o).await.unwrap();
        b.node.forget(&v).await;
        assert_eq!(
            os.take_calls(),
            vec![
                Call::LoopFind { image: "/loop/v1.img".into() },
                Call::RemoveFile { path: "/loop/v1.img".into() },
                Call::RemoveEmptyDir { path: "/mnt/v1".into() },
            ]
        );
        assert_eq!(os.file(Path::new("/loop/v1.img")), None);
        b.controller.delete(&v, &o).await.unwrap();
    }

    #[tokio::test]
    async fn a_failed_activation_detaches_what_it_attached() {
        let (os, b) = loop_backend();
        let o = opts(&b, &[]);
        let v = name("v1");
        b.controller.create(&v, &o, false).await.unwrap();
        os.fail_next(CallKind::Mount, Failure::Io(std::io::ErrorKind::InvalidInput));
        let err = b.activate_here(&v, &o).await.unwrap_err();
        assert!(matches!(&err, BackendError::Step { step: "mount", .. }), "{err}");
        assert_eq!(os.attached(Path::new("/loop/v1.img")), None);
        assert!(os.mounted(Path::new("/mnt/v1")).is_none());
    }

    #[tokio::test]
    async fn rediscovers_an_attached_and_mounted_volume_after_a_restart() {
        let os = Arc::new(FakeOs::new());
        os.add_file("/loop/v1.img", 1 << 30);
        let device = os.attach_existing("/loop/v1.img");
        os.set_probe("/loop/v1.img", crate::os::Probe::Filesystem("ext4".into()));
        os.mount_existing(&device, "/mnt/v1", FsType::Ext4);
        os.add_dir("/mnt/v1/data");

        let b = backend(&service(), &crate::backend::tests::environment(os.clone(), os.clone())).unwrap();
        let o = opts(&b, &[]);
        assert!(b.node.is_staged(&name("v1"), Path::new("/mnt/v1")).await.unwrap());
        os.take_calls();
        assert_eq!(b.activate_here(&name("v1"), &o).await.unwrap(), Path::new("/mnt/v1/data"));
        let calls = os.take_calls();
        assert!(
            !calls.iter().any(|c| matches!(c.kind(), CallKind::LoopAttach | CallKind::Mount | CallKind::Mkfs)),
            "{calls:?}"
        );
        assert_eq!(b.controller.status(&name("v1"), &o)["device"], "/dev/loop0");
    }

    #[tokio::test]
    async fn status_reports_image_size_fs_and_device() {
        let (os, b) = loop_backend();
        let o = opts(&b, &[("size", "3"), ("fsType", "xfs")]);
        b.controller.create(&name("v1"), &o, false).await.unwrap();
        let s = b.controller.status(&name("v1"), &o);
        assert_eq!(s["image"], "/loop/v1.img");
        assert_eq!(s["sizeGiB"], 3);
        assert_eq!(s["fsType"], "xfs");
        assert!(!s.contains_key("device"));
        b.activate_here(&name("v1"), &o).await.unwrap();
        assert_eq!(b.controller.status(&name("v1"), &o)["device"], "/dev/loop0");
        let mounted = os.mounted(Path::new("/mnt/v1")).unwrap();
        assert_eq!(mounted.fs_type, "xfs");
        assert_eq!(b.kind(), "loop");
        assert_eq!(b.controller.scope(), Scope::Local);
        assert_eq!(b.node.data_path(&name("v1")), Path::new("/mnt/v1/data"));
        assert_eq!(b.controller.list(&PageRequest::default()).await.unwrap().names, ["v1"]);
    }

    #[tokio::test]
    async fn publish_of_a_missing_image_says_so_and_attaches_nothing() {
        let (os, b) = loop_backend();
        let err = b.controller.publish(&name("ghost"), &opts(&b, &[]), &here()).await.unwrap_err();
        assert!(matches!(err, BackendError::NotFound { .. }), "{err}");
        assert_eq!(err.to_string(), "the image /loop/ghost.img of volume ghost does not exist");
        assert!(!os.calls().iter().any(|c| c.kind() == CallKind::LoopAttach));
    }

    #[tokio::test]
    async fn a_planted_image_link_is_never_attached_or_removed() {
        let (os, b) = loop_backend();
        os.add_symlink("/loop/evil.img");
        let o = opts(&b, &[]);
        let v = name("evil");
        for err in [
            b.controller.create(&v, &o, false).await.unwrap_err(),
            b.controller.publish(&v, &o, &here()).await.unwrap_err(),
            b.controller.delete(&v, &o).await.unwrap_err(),
        ] {
            let msg =
                format!("{err}: {}", std::error::Error::source(&err).map(ToString::to_string).unwrap_or_default());
            assert!(msg.contains("/loop/evil.img") && msg.contains("symbolic link"), "{msg}");
        }
        assert!(!os.calls().iter().any(|c| matches!(c.kind(), CallKind::LoopAttach | CallKind::RemoveFile)));
    }
}
