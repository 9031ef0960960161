//! The `vfs` backend: a volume is a directory under `vfs.root`.
//!
//! Activation hands the directory itself to Docker; nothing is mounted. Scope `local`.

use std::collections::BTreeMap;
use std::path::PathBuf;

use async_trait::async_trait;

use super::options::{self, Kind, OptionSpec, Options};
use super::{volume_path, Backend, BackendError, Scope};
use crate::service::name::VolumeName;

/// Options a `vfs` volume accepts. `size` is accepted (and recorded) for configs moved over from
/// block backends; `uid`, `gid` and `mode` set the directory's owner and mode.
const SPECS: &[OptionSpec] = &[
    OptionSpec::new("size", Kind::SizeGib),
    OptionSpec::new("uid", Kind::Count),
    OptionSpec::new("gid", Kind::Count),
    OptionSpec::new("mode", Kind::Mode),
];

/// Directories under a root.
#[derive(Debug)]
pub struct VfsBackend {
    /// `vfs.root`.
    root: PathBuf,
}

impl VfsBackend {
    /// A backend keeping its volumes under `root` (created on first use).
    pub fn new(root: PathBuf) -> Self {
        Self { root }
    }

    fn dir(&self, name: &VolumeName) -> PathBuf {
        volume_path(&self.root, name)
    }
}

fn io(op: &'static str, path: &std::path::Path) -> impl FnOnce(std::io::Error) -> BackendError {
    let path = path.to_path_buf();
    move |source| BackendError::Io { op, path, source }
}

#[async_trait]
impl Backend for VfsBackend {
    fn kind(&self) -> &'static str {
        "vfs"
    }

    fn scope(&self) -> Scope {
        Scope::Local
    }

    fn parse_options(&self, raw: &BTreeMap<String, String>) -> Result<Options, BackendError> {
        options::normalize(SPECS, raw)
    }

    async fn create(&self, name: &VolumeName, opts: &Options) -> Result<(), BackendError> {
        let root = self.root.clone();
        let dir = self.dir(name);
        let mode = options::get_mode(opts, "mode");
        let uid = options::get_u64(opts, "uid");
        let gid = options::get_u64(opts, "gid");
        tokio::task::spawn_blocking(move || {
            use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o755)
                .create(&root)
                .map_err(io("create directory", &root))?;
            match std::fs::DirBuilder::new().mode(0o755).create(&dir) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => return Ok(()),
                Err(e) => return Err(io("create directory", &dir)(e)),
            }
            if let Some(mode) = mode {
                std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(mode))
                    .map_err(io("set mode of", &dir))?;
            }
            if uid.is_some() || gid.is_some() {
                let to_id = |v: Option<u64>| v.and_then(|v| u32::try_from(v).ok());
                std::os::unix::fs::chown(&dir, to_id(uid), to_id(gid)).map_err(io("set owner of", &dir))?;
            }
            Ok(())
        })
        .await
        .map_err(|e| BackendError::Refused(format!("create task failed: {e}")))?
    }

    async fn activate(&self, name: &VolumeName, opts: &Options) -> Result<PathBuf, BackendError> {
        // A directory deleted behind our back is made again rather than handed out missing.
        let dir = self.dir(name);
        if tokio::fs::metadata(&dir).await.is_err() {
            self.create(name, opts).await?;
        }
        Ok(dir)
    }

    async fn deactivate(&self, _name: &VolumeName, _opts: &Options) -> Result<(), BackendError> {
        Ok(())
    }

    async fn remove(&self, name: &VolumeName, _opts: &Options) -> Result<(), BackendError> {
        let dir = self.dir(name);
        match tokio::fs::remove_dir_all(&dir).await {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(io("remove directory", &dir)(e)),
        }
    }

    async fn is_active(&self, name: &VolumeName, _opts: &Options) -> Result<bool, BackendError> {
        Ok(tokio::fs::metadata(self.dir(name)).await.is_ok())
    }

    fn mountpoint(&self, name: &VolumeName, _opts: &Options) -> PathBuf {
        self.dir(name)
    }

    fn status(&self, name: &VolumeName, _opts: &Options) -> BTreeMap<String, serde_json::Value> {
        BTreeMap::from([("path".to_owned(), self.dir(name).display().to_string().into())])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn name(s: &str) -> VolumeName {
        VolumeName::new(s).unwrap()
    }

    #[tokio::test]
    async fn lifecycle_is_idempotent() {
        let tmp = tempfile::tempdir().unwrap();
        let b = VfsBackend::new(tmp.path().join("vfs"));
        let opts = b.parse_options(&BTreeMap::from([("MODE".into(), "0750".into())])).unwrap();
        b.create(&name("v1"), &opts).await.unwrap();
        std::fs::write(tmp.path().join("vfs/v1/f"), b"x").unwrap();
        b.create(&name("v1"), &opts).await.unwrap();
        assert!(tmp.path().join("vfs/v1/f").exists(), "create must not wipe an existing volume");
        let mode = std::os::unix::fs::PermissionsExt::mode(
            &std::fs::metadata(tmp.path().join("vfs/v1")).unwrap().permissions(),
        );
        assert_eq!(mode & 0o7777, 0o750);
        assert_eq!(b.activate(&name("v1"), &opts).await.unwrap(), tmp.path().join("vfs/v1"));
        assert!(b.is_active(&name("v1"), &opts).await.unwrap());
        b.deactivate(&name("v1"), &opts).await.unwrap();
        b.remove(&name("v1"), &opts).await.unwrap();
        b.remove(&name("v1"), &opts).await.unwrap();
        assert!(!tmp.path().join("vfs/v1").exists());
    }

    #[test]
    fn unknown_option_is_refused() {
        let b = VfsBackend::new("/nonexistent".into());
        let err = b.parse_options(&BTreeMap::from([("bogus".into(), "1".into())])).unwrap_err();
        assert!(err.to_string().contains("bogus"));
    }
}
