//! The `vfs` backend: a volume is a directory under `vfs.root`.
//!
//! - **Controller.** Create makes `<vfs.root>/<name>` with the volume's mode (default 0755) and
//!   owner; a directory already there that no record owns is refused, never adopted. Publish is
//!   nothing (the directory is on this host). Delete removes the directory and everything in it.
//! - **Node.** Staging checks that the directory is there (one deleted behind the daemon's back is
//!   made again, with the volume's mode and owner) and is a directory of its own, not a symbolic
//!   link; the Docker front hands out the directory itself; a CSI publish bind-mounts it.
//!
//! Nothing under `vfs.root` is followed through a symbolic link. Scope `local`.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use async_trait::async_trait;

use super::options::{self, Kind, OptionSpec, Options};
use super::os_call::{blocking, dir_spec, step_error};
use super::{
    volume_path, Backend, BackendError, Controller, Environment, Node, NodeId, Page, PageRequest, PublishContext,
    Scope, VolumeStats,
};
use crate::config::ServiceConfig;
use crate::name::VolumeName;
use crate::os::{BlockOs, Entry};

/// Options a `vfs` volume accepts. `size` is accepted (and recorded) for configs moved over from
/// block backends; `uid`, `gid` and `mode` set the directory's owner and mode.
const SPECS: &[OptionSpec] = &[
    OptionSpec::new("size", Kind::SizeGib),
    OptionSpec::new("uid", Kind::Count),
    OptionSpec::new("gid", Kind::Count),
    OptionSpec::new("mode", Kind::Mode),
];

/// The options of the block and EBS backends: accepted and recorded as given, so that Compose
/// files and scripts written for them work on `vfs` too, and shown as ignored in the Status.
const IGNORED: &[OptionSpec] = &[
    OptionSpec::aliased("fsType", &["newFsType", "fstype"], Kind::Text),
    OptionSpec::new("mkfsOptions", Kind::Text),
    OptionSpec::new("mountOptions", Kind::Text),
    OptionSpec::aliased("volumeType", &["type", "volumetype"], Kind::Text),
    OptionSpec::new("iops", Kind::Text),
    OptionSpec::new("throughput", Kind::Text),
    OptionSpec::new("encrypted", Kind::Text),
    OptionSpec::aliased("kmsKeyID", &["encryptionKey"], Kind::Text),
    OptionSpec::aliased("availabilityZone", &["az"], Kind::Text),
    OptionSpec::aliased("snapshotID", &["snapshotId"], Kind::Text),
    OptionSpec::new("tags", Kind::Text),
];

/// The mode of `vfs.root` and of a volume directory that sets no `mode`.
const DEFAULT_MODE: u32 = 0o755;

/// The `vfs` backend of a service, over the environment's OS.
pub fn backend(service: &ServiceConfig, env: &Environment) -> Backend {
    let vfs = Arc::new(Vfs { root: service.vfs_root.clone(), os: Arc::clone(&env.os), host: env.host.hostname() });
    Backend { controller: vfs.clone(), node: vfs }
}

/// Directories under a root; both halves of the backend.
#[derive(Debug)]
pub struct Vfs {
    /// `vfs.root`.
    root: PathBuf,
    /// Every file operation.
    os: Arc<dyn BlockOs>,
    /// This host's name: the only node it publishes to.
    host: String,
}

impl Vfs {
    fn dir(&self, name: &VolumeName) -> PathBuf {
        volume_path(&self.root, name)
    }

    /// Makes the volume's directory with its mode and owner (the root first, if missing).
    /// `existing_ok`: a directory already there is the volume's own and gets the options too.
    async fn make(&self, name: &VolumeName, opts: &Options, existing_ok: bool) -> Result<(), BackendError> {
        let (root, dir, spec) = (self.root.clone(), self.dir(name), dir_spec(opts, DEFAULT_MODE));
        blocking(&self.os, "create", move |os| {
            os.make_root(&root, DEFAULT_MODE).map_err(step_error("create directory", &root))?;
            match os.entry(&dir).map_err(step_error("examine", &dir))? {
                Entry::Missing => {}
                Entry::Directory if existing_ok => {
                    return os.set_owner_mode(&dir, spec).map_err(step_error("set mode and owner of", &dir));
                }
                Entry::Directory => {
                    return Err(BackendError::AlreadyExists {
                        what: format!("{} exists", dir.display()),
                        mismatch: "no volume record owns it (left by an older version, an interrupted operation or by hand); it is left alone: remove it or choose another name".into(),
                    })
                }
                other => return Err(step_error("create directory", &dir)(not_a_directory(&dir, &other))),
            }
            if let Err(e) = os.ensure_dir(&dir, spec) {
                // It was missing a moment ago: what is there now is this call's, half made.
                if let Err(cleanup) = os.remove_tree(&dir) {
                    tracing::warn!(path = %dir.display(), %cleanup, "could not remove a half-made volume directory");
                }
                return Err(step_error("create directory", &dir)(e));
            }
            Ok(())
        })
        .await
    }
}

/// The error for `path`, found to be `entry` where a volume directory should be.
fn not_a_directory(path: &Path, entry: &Entry) -> crate::os::OsError {
    match entry {
        Entry::Symlink => crate::os::OsError::Symlink(path.to_path_buf()),
        Entry::Missing => crate::os::OsError::Unexpected(format!("{} does not exist", path.display())),
        _ => crate::os::OsError::Unexpected(format!("{} exists and is not a directory", path.display())),
    }
}

#[async_trait]
impl Controller for Vfs {
    fn kind(&self) -> &'static str {
        "vfs"
    }

    fn scope(&self) -> Scope {
        Scope::Local
    }

    async fn capacity(&self) -> Result<Option<u64>, BackendError> {
        super::os_call::free_space(&self.os, &self.root).await.map(Some)
    }

    fn parse_options(&self, raw: &BTreeMap<String, String>) -> Result<Options, BackendError> {
        let specs: Vec<OptionSpec> = SPECS.iter().chain(IGNORED).copied().collect();
        options::normalize(&specs, raw)
    }

    async fn local_node(&self) -> Result<NodeId, BackendError> {
        Ok(NodeId(self.host.clone()))
    }

    async fn create(&self, name: &VolumeName, opts: &Options, resume: bool) -> Result<(), BackendError> {
        self.make(name, opts, resume).await
    }

    async fn discard_partial(&self, name: &VolumeName, opts: &Options) -> Result<(), BackendError> {
        self.delete(name, opts).await
    }

    async fn delete(&self, name: &VolumeName, _opts: &Options) -> Result<(), BackendError> {
        let dir = self.dir(name);
        blocking(&self.os, "remove", move |os| {
            if !os.remove_tree(&dir).map_err(step_error("remove directory", &dir))? {
                tracing::warn!(path = %dir.display(), "volume directory already gone");
            }
            Ok(())
        })
        .await
    }

    async fn publish(
        &self,
        _name: &VolumeName,
        _opts: &Options,
        _node: &NodeId,
    ) -> Result<PublishContext, BackendError> {
        Ok(PublishContext::new())
    }

    async fn unpublish(&self, _name: &VolumeName, _opts: &Options, _node: &NodeId) -> Result<(), BackendError> {
        Ok(())
    }

    async fn publications(&self, _node: &NodeId) -> Result<BTreeMap<String, PublishContext>, BackendError> {
        Ok(BTreeMap::new())
    }

    async fn list(&self, page: &PageRequest) -> Result<Page, BackendError> {
        let root = self.root.clone();
        let entries =
            blocking(&self.os, "list", move |os| os.list_dir(&root).map_err(step_error("list", &root))).await?;
        let names = entries
            .into_iter()
            .filter(|(name, entry)| *entry == Entry::Directory && VolumeName::new(name).is_ok())
            .map(|(name, _)| name);
        Ok(Page::of(names, page))
    }

    /// `path`, and `ignored` when the volume was created with options only block and EBS
    /// volumes act on (`size` among them: a directory has no size of its own).
    fn status(&self, name: &VolumeName, opts: &Options) -> BTreeMap<String, serde_json::Value> {
        let path =
            self.dir(name).into_os_string().into_string().unwrap_or_else(|raw| raw.to_string_lossy().into_owned());
        let mut status = BTreeMap::from([("path".to_owned(), path.into())]);
        let ignored: Vec<&str> = std::iter::once("size")
            .chain(IGNORED.iter().map(|s| s.key))
            .filter(|key| opts.contains_key(*key))
            .collect();
        if !ignored.is_empty() {
            status.insert(
                "ignored".to_owned(),
                format!(
                    "{}: recorded, but a vfs volume is a directory on the host's file system, with no size, file system or cloud settings of its own",
                    ignored.join(", ")
                )
                .into(),
            );
        }
        status
    }
}

#[async_trait]
impl Node for Vfs {
    fn staging_path(&self, name: &VolumeName) -> PathBuf {
        self.dir(name)
    }

    fn data_path(&self, name: &VolumeName) -> PathBuf {
        self.dir(name)
    }

    /// The directory must be there and be a directory of its own; one deleted behind the
    /// daemon's back is made again rather than handed out missing. Staged anywhere else (an
    /// orchestrator's staging path), the directory is bind-mounted there.
    async fn stage(
        &self,
        name: &VolumeName,
        opts: &Options,
        ctx: &PublishContext,
        staging: &Path,
    ) -> Result<(), BackendError> {
        let own = self.dir(name);
        if staging != own {
            self.stage(name, opts, ctx, &own).await?;
            return super::block::bind(&self.os, &own, staging, false).await.map(drop);
        }
        let dir = staging.to_path_buf();
        let entry = blocking(&self.os, "stage", move |os| os.entry(&dir).map_err(step_error("examine", &dir))).await?;
        match entry {
            Entry::Directory => Ok(()),
            Entry::Missing if staging == self.dir(name) => {
                tracing::warn!(volume = %name, path = %staging.display(), "volume directory was deleted; making it again");
                self.make(name, opts, false).await
            }
            other => Err(step_error("stage", staging)(not_a_directory(staging, &other))),
        }
    }

    async fn unstage(&self, name: &VolumeName, staging: &Path) -> Result<(), BackendError> {
        if staging == self.dir(name) {
            return Ok(());
        }
        super::block::unbind(&self.os, staging, false).await
    }

    async fn is_staged(&self, name: &VolumeName, staging: &Path) -> Result<bool, BackendError> {
        if staging != self.dir(name) {
            let path = staging.to_path_buf();
            return blocking(&self.os, "examine", move |os| {
                os.mounted_at(&path).map(|m| m.is_some()).map_err(step_error("read mounts for", &path))
            })
            .await;
        }
        let dir = staging.to_path_buf();
        let entry =
            blocking(&self.os, "examine", move |os| os.entry(&dir).map_err(step_error("examine", &dir))).await?;
        Ok(entry == Entry::Directory)
    }

    /// Nothing is ever mounted for a vfs volume.
    async fn staged(&self) -> Result<BTreeSet<String>, BackendError> {
        Ok(BTreeSet::new())
    }

    async fn publish(
        &self,
        _name: &VolumeName,
        _opts: &Options,
        staging: &Path,
        target: Option<&Path>,
        read_only: bool,
    ) -> Result<PathBuf, BackendError> {
        let Some(target) = target else {
            return Ok(staging.to_path_buf());
        };
        super::block::bind(&self.os, staging, target, read_only).await
    }

    async fn unpublish(&self, _name: &VolumeName, target: &Path) -> Result<(), BackendError> {
        super::block::unbind(&self.os, target, true).await
    }

    async fn stats(&self, path: &Path) -> Result<VolumeStats, BackendError> {
        let path = path.to_path_buf();
        blocking(&self.os, "stats", move |os| os.statfs(&path).map_err(step_error("read the usage of", &path))).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{BackendKind, Integration};
    use crate::os::linux::LinuxOs;

    fn name(s: &str) -> VolumeName {
        VolumeName::new(s).unwrap()
    }

    fn vfs(root: &Path) -> Backend {
        let service = ServiceConfig {
            name: "vfs".into(),
            backend: BackendKind::Vfs,
            integration: Integration::defaults(Path::new("/var/lib/rexray")),
            vfs_root: root.to_path_buf(),
            loop_root: "/loop".into(),
            ebs: BTreeMap::new(),
            ebs_origins: BTreeMap::new(),
        };
        let os = Arc::new(LinuxOs::new());
        backend(&service, &crate::backend::tests::environment(os.clone(), os))
    }

    fn raw(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect()
    }

    #[test]
    fn block_and_ebs_options_are_recorded_and_shown_as_ignored() {
        let tmp = tempfile::tempdir().unwrap();
        let b = vfs(&tmp.path().join("vfs"));
        let opts = b
            .controller
            .parse_options(&raw(&[("size", "10"), ("fsType", "xfs"), ("volumetype", "gp3"), ("mode", "0700")]))
            .unwrap();
        assert_eq!(opts.get("fsType").map(String::as_str), Some("xfs"));
        assert_eq!(opts.get("volumeType").map(String::as_str), Some("gp3"));
        let status = b.controller.status(&name("v"), &opts);
        let ignored = status["ignored"].as_str().unwrap();
        assert!(ignored.starts_with("size, fsType, volumeType: recorded"), "{ignored}");
        assert!(!ignored.contains("mode"), "{ignored}");
        assert!(!b.controller.status(&name("v"), &Options::new()).contains_key("ignored"));
        // Every option of the block and EBS backends is one of them.
        let known: Vec<&str> = SPECS.iter().chain(IGNORED).map(|s| s.key).collect();
        let others = crate::backend::block::options::BLOCK_SPECS.iter();
        #[cfg(feature = "ebs")]
        let others = others.chain(crate::backend::ebs::options::EBS_SPECS);
        for spec in others {
            assert!(known.contains(&spec.key), "vfs does not accept {}", spec.key);
        }
    }

    #[test]
    fn every_invalid_option_is_named_at_once() {
        let tmp = tempfile::tempdir().unwrap();
        let b = vfs(&tmp.path().join("vfs"));
        let err = b
            .controller
            .parse_options(&raw(&[("size", "big"), ("colour", "red"), ("mode", "rwx")]))
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("3 invalid options: "), "{err}");
        for part in ["unknown option \"colour\"", "option mode=\"rwx\"", "option size=\"big\""] {
            assert!(err.contains(part), "{part} in {err}");
        }
    }

    #[tokio::test]
    async fn lifecycle_on_the_real_file_system() {
        let tmp = tempfile::tempdir().unwrap();
        let b = vfs(&tmp.path().join("vfs"));
        let opts = b.controller.parse_options(&BTreeMap::from([("MODE".into(), "0750".into())])).unwrap();
        let v = name("v1");
        b.controller.create(&v, &opts, false).await.unwrap();
        std::fs::write(tmp.path().join("vfs/v1/f"), b"x").unwrap();
        let err = b.controller.create(&v, &opts, false).await.unwrap_err();
        assert!(matches!(err, BackendError::AlreadyExists { .. }), "{err}");
        assert!(err.to_string().contains("no volume record owns it"), "{err}");
        b.controller.create(&v, &opts, true).await.unwrap();
        assert!(tmp.path().join("vfs/v1/f").exists(), "create must not wipe an existing volume");
        let mode = std::os::unix::fs::PermissionsExt::mode(
            &std::fs::metadata(tmp.path().join("vfs/v1")).unwrap().permissions(),
        );
        assert_eq!(mode & 0o7777, 0o750);
        let staging = b.node.staging_path(&v);
        let ctx = b.controller.publish(&v, &opts, &NodeId("h".into())).await.unwrap();
        b.node.stage(&v, &opts, &ctx, &staging).await.unwrap();
        assert_eq!(b.node.publish(&v, &opts, &staging, None, false).await.unwrap(), tmp.path().join("vfs/v1"));
        assert!(b.node.is_staged(&v, &staging).await.unwrap());
        assert_eq!(b.controller.list(&PageRequest::default()).await.unwrap().names, ["v1"]);
        b.controller.delete(&v, &opts).await.unwrap();
        b.controller.delete(&v, &opts).await.unwrap();
        assert!(!tmp.path().join("vfs/v1").exists());
    }

    #[tokio::test]
    async fn a_planted_link_is_refused_and_what_it_points_to_is_untouched() {
        let tmp = tempfile::tempdir().unwrap();
        let outside = tmp.path().join("outside");
        std::fs::create_dir(&outside).unwrap();
        std::fs::write(outside.join("precious"), b"keep").unwrap();
        let root = tmp.path().join("vfs");
        std::fs::create_dir(&root).unwrap();
        std::os::unix::fs::symlink(&outside, root.join("evil")).unwrap();
        let b = vfs(&root);
        let v = name("evil");
        let opts = b.controller.parse_options(&BTreeMap::new()).unwrap();
        for err in [
            b.controller.create(&v, &opts, false).await.unwrap_err(),
            b.node.stage(&v, &opts, &PublishContext::new(), &b.node.staging_path(&v)).await.unwrap_err(),
            b.controller.delete(&v, &opts).await.unwrap_err(),
        ] {
            let msg = err.to_string() + &std::error::Error::source(&err).map(ToString::to_string).unwrap_or_default();
            assert!(msg.contains("evil") && msg.contains("symbolic link"), "{msg}");
        }
        assert_eq!(std::fs::read(outside.join("precious")).unwrap(), b"keep");
        assert!(b.controller.list(&PageRequest::default()).await.unwrap().names.is_empty());
    }

    #[test]
    fn unknown_option_is_refused() {
        let b = vfs(Path::new("/nonexistent"));
        let err = b.controller.parse_options(&BTreeMap::from([("bogus".into(), "1".into())])).unwrap_err();
        assert!(err.to_string().contains("bogus"));
    }
}
