//! Storage backends: the [`Backend`] trait and its implementations.
//!
//! A backend knows how to create, activate (make usable at a host path), deactivate and remove
//! one volume. It keeps no mount accounting: the service decides when to activate and
//! deactivate, holding the volume's lock, so a backend sees at most one call per volume at a time.

pub mod block;
#[cfg(feature = "ebs")]
pub mod ebs;
pub mod fake;
pub mod loopback;
pub mod options;
pub mod snapshot;
pub mod vfs;

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use async_trait::async_trait;

use crate::config::{BackendKind, ServiceConfig};
use crate::service::name::VolumeName;
pub use options::Options;
pub use snapshot::Snapshots;

/// Docker's volume scope, from `/VolumeDriver.Capabilities`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// Volumes exist on this host only.
    Local,
    /// Volumes are visible from every host (a cluster-wide namespace).
    Global,
}

impl Scope {
    /// The wire spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Scope::Local => "local",
            Scope::Global => "global",
        }
    }
}

/// Errors from a backend. Display texts name the subject; the cause is the `source`.
#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    /// A create option the backend does not know.
    #[error("unknown option {key:?} (accepted options: {accepted})")]
    UnknownOption {
        /// The key as given.
        key: String,
        /// The accepted canonical keys, comma-separated.
        accepted: String,
    },
    /// A create option with a malformed value.
    #[error("option {key}={value:?}: {reason}")]
    InvalidOption {
        /// The key as given.
        key: String,
        /// The value as given.
        value: String,
        /// What was expected.
        reason: String,
    },
    /// A file-system operation on a path failed.
    #[error("{op} {}", path.display())]
    Io {
        /// What was being done (`create directory`, `remove image`, …).
        op: &'static str,
        /// The path it was done to.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// A step of the block pipeline failed on a device.
    #[error("{step} {}", device.display())]
    Step {
        /// The step (`attach`, `probe`, `format`, `mount`, …).
        step: &'static str,
        /// The device or path the step worked on.
        device: PathBuf,
        /// The cause.
        #[source]
        source: crate::os::OsError,
    },
    /// The backend refuses the operation (volume attached, no space, device not blank, …).
    #[error("{0}")]
    Refused(String),
    /// The backend is not built into this binary.
    #[error("backend {0} is not available in this build")]
    Unavailable(&'static str),
}

/// A storage backend.
#[async_trait]
pub trait Backend: Send + Sync + Debug {
    /// The driver name (`vfs`, `loop`, `ebs`).
    fn kind(&self) -> &'static str;

    /// What `/VolumeDriver.Capabilities` reports.
    fn scope(&self) -> Scope;

    /// Validates Docker's `Opts` for a new volume and returns them in canonical form, with the
    /// defaults that must stay fixed for the volume's life (size, fsType, …) filled in.
    ///
    /// # Errors
    /// [`BackendError::UnknownOption`] or [`BackendError::InvalidOption`].
    fn parse_options(&self, raw: &BTreeMap<String, String>) -> Result<Options, BackendError>;

    /// Creates the volume. Idempotent: an existing volume is success.
    ///
    /// # Errors
    /// Whatever stopped the volume being created; nothing is left half-made.
    async fn create(&self, name: &VolumeName, opts: &Options) -> Result<(), BackendError>;

    /// Makes the volume usable on this host and returns the path to hand to containers.
    /// Idempotent: an already active volume returns the same path.
    ///
    /// # Errors
    /// The step that failed; steps already done are rolled back.
    async fn activate(&self, name: &VolumeName, opts: &Options) -> Result<PathBuf, BackendError>;

    /// Undoes [`Backend::activate`]. Idempotent: an inactive volume is success. The data stays.
    ///
    /// # Errors
    /// The step that failed.
    async fn deactivate(&self, name: &VolumeName, opts: &Options) -> Result<(), BackendError>;

    /// Deletes the volume and its data. Idempotent: a missing volume is success.
    ///
    /// # Errors
    /// [`BackendError::Refused`] while the volume is still active, or the failure.
    async fn remove(&self, name: &VolumeName, opts: &Options) -> Result<(), BackendError>;

    /// Whether the volume is active on this host right now (used to reconcile after a restart).
    ///
    /// # Errors
    /// The volume's state could not be read.
    async fn is_active(&self, name: &VolumeName, opts: &Options) -> Result<bool, BackendError>;

    /// The path [`Backend::activate`] returns, computed without side effects.
    fn mountpoint(&self, name: &VolumeName, opts: &Options) -> PathBuf;

    /// Backend-specific entries for `docker volume inspect`'s Status.
    fn status(&self, _name: &VolumeName, _opts: &Options) -> BTreeMap<String, serde_json::Value> {
        BTreeMap::new()
    }

    /// For backends with a cluster-wide namespace ([`Scope::Global`]): the names of every volume
    /// the storage holds that this host may use, including ones other hosts created. Served from
    /// a cache; never fails (a backend that cannot refresh answers with what it knows).
    async fn known_volumes(&self) -> Vec<String> {
        Vec::new()
    }

    /// Whether the storage holds a volume `name` that this host may use although this host never
    /// created it (see [`Backend::known_volumes`]). Served from a cache.
    async fn knows(&self, _name: &VolumeName) -> bool {
        false
    }

    /// The backend's snapshot operations, if it has them.
    fn snapshots(&self) -> Option<&dyn Snapshots> {
        None
    }
}

/// Joins a validated volume name under a root; the result never leaves `root`.
pub fn volume_path(root: &Path, name: &VolumeName) -> PathBuf {
    // VolumeName guarantees one normal path component (no '/', not '.' or '..').
    root.join(name.as_str())
}

/// Builds the backend a service is configured with.
///
/// # Errors
/// [`BackendError::Unavailable`] when the backend is not built into this binary.
pub fn build(service: &ServiceConfig) -> Result<Arc<dyn Backend>, BackendError> {
    match service.backend {
        BackendKind::Vfs => Ok(Arc::new(vfs::VfsBackend::new(service.vfs_root.clone()))),
        BackendKind::Loop => Ok(Arc::new(loopback::LoopBackend::new(service)?)),
        #[cfg(feature = "ebs")]
        BackendKind::Ebs => Ok(Arc::new(ebs::EbsBackend::new(service)?)),
        #[cfg(not(feature = "ebs"))]
        BackendKind::Ebs => Err(BackendError::Unavailable("ebs")),
    }
}

/// Every problem [`build`] would find with a service's backend settings, where it would stop at
/// the first (the `ebs.*` settings are all checked).
pub fn settings_problems(service: &ServiceConfig) -> Vec<BackendError> {
    #[cfg(feature = "ebs")]
    if service.backend == BackendKind::Ebs {
        if let Err(problems) = ebs::settings::EbsSettings::parse_all(&service.ebs) {
            return problems;
        }
    }
    build(service).err().into_iter().collect()
}
