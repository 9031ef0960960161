//! The service layer's error: which operation, on which volume, and why.

use crate::backend::{BackendError, ErrorKind};
use crate::name::{excerpt, NameError};

use super::state::StateError;

/// A failed volume operation. Its Display names the operation and the volume (or snapshot); the
/// cause is the [`Cause`] in `source`, so the whole chain reads like
/// `mount "v1": volume "v1" does not exist`.
#[derive(Debug, thiserror::Error)]
pub struct ServiceError {
    /// The operation (`create`, `mount`, …).
    pub op: &'static str,
    /// The volume name (or snapshot ID) as the caller gave it, at most
    /// [`crate::name::EXCERPT_BYTES`] of it; empty for operations on no one subject.
    pub volume: String,
    /// Why it failed (boxed: errors stay small on the success path).
    #[source]
    pub cause: Box<Cause>,
}

impl std::fmt::Display for ServiceError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.volume.is_empty() {
            f.write_str(self.op)
        } else {
            write!(f, "{} {:?}", self.op, self.volume)
        }
    }
}

/// Why a volume operation failed.
#[derive(Debug, thiserror::Error)]
pub enum Cause {
    /// The name is not acceptable.
    #[error("invalid name")]
    InvalidName(#[source] NameError),
    /// No such volume.
    #[error("no such volume")]
    NotFound,
    /// The volume is mounted by someone.
    #[error("volume is in use ({holders} mount(s) held)")]
    InUse {
        /// How many holders.
        holders: u64,
    },
    /// One holder mounted the volume more times than a mount count can hold.
    #[error("mount ID {id} holds the volume {count} times already, the most one ID may")]
    TooManyMounts {
        /// The mount ID (an excerpt).
        id: String,
        /// Its count.
        count: u32,
    },
    /// Another operation on the volume held it for all the time the caller's deadline left.
    #[error("another operation on the volume was still running after {}, and {caller} leaves no more time; try again", crate::human::duration(*.waited))]
    Busy {
        /// How long this request waited for it.
        waited: std::time::Duration,
        /// Whose deadline ended the wait (`Docker's 2 min Mount timeout`).
        caller: &'static str,
    },
    /// The storage could not be asked for its volumes and never answered a listing.
    #[error("could not list the volumes: {stale}")]
    Unlisted {
        /// Why.
        stale: crate::backend::Stale,
    },
    /// The volume was created by another backend than this service's.
    #[error("volume belongs to backend {recorded}, but this service uses {configured}")]
    WrongBackend {
        /// The backend in the state file.
        recorded: String,
        /// The configured backend.
        configured: &'static str,
    },
    /// The backend failed.
    #[error("{backend} backend")]
    Backend {
        /// The backend name.
        backend: &'static str,
        /// Its error.
        #[source]
        source: BackendError,
    },
    /// The backend cannot take snapshots (`vfs`, `loop`).
    #[error("snapshots are not supported by the {backend} backend")]
    NoSnapshots {
        /// The backend name.
        backend: &'static str,
    },
    /// A volume of that name exists and differs from what was asked for.
    #[error("{what}")]
    Mismatch {
        /// What differs, in words.
        what: String,
    },
    /// An orchestrator has the volume staged at another path on this host.
    #[error("volume is staged at {path} already")]
    StagedElsewhere {
        /// Where it is staged.
        path: String,
    },
    /// The volume is not staged at the path given.
    #[error("volume is not staged at {path}")]
    NotStaged {
        /// The path asked for.
        path: String,
    },
    /// A container orchestrator holds the volume through the CSI front.
    #[error("volume is in use by a container orchestrator through CSI ({what})")]
    HeldByOrchestrator {
        /// What it holds, in words.
        what: String,
    },
    /// The durable state could not be written or read.
    #[error("state")]
    State(#[source] StateError),
    /// The service could not start (state directory unusable, backend unavailable).
    #[error("service {service} is not available")]
    Unavailable {
        /// The service name.
        service: String,
        /// Why.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

impl Cause {
    /// The one mapping of a backend's error to a cause of this layer.
    pub fn from_backend(backend: &'static str, source: BackendError) -> Cause {
        Cause::Backend { backend, source }
    }

    /// The metric label of a request that failed with this cause.
    pub fn label(&self) -> &'static str {
        match self {
            Cause::InvalidName(_) | Cause::TooManyMounts { .. } => ErrorKind::Invalid.label(),
            Cause::NotFound => ErrorKind::NotFound.label(),
            Cause::InUse { .. } | Cause::HeldByOrchestrator { .. } | Cause::StagedElsewhere { .. } => {
                ErrorKind::InUse.label()
            }
            Cause::Mismatch { .. } => ErrorKind::AlreadyExists.label(),
            Cause::NotStaged { .. } => ErrorKind::Invalid.label(),
            Cause::Busy { .. } => ErrorKind::Timeout.label(),
            Cause::WrongBackend { .. } => "wrong_backend",
            Cause::Backend { source, .. } => source.kind().label(),
            Cause::NoSnapshots { .. } => "unsupported",
            Cause::State(_) => "state_error",
            Cause::Unavailable { .. } | Cause::Unlisted { .. } => ErrorKind::Unavailable.label(),
        }
    }
}

impl ServiceError {
    /// Builds an error for `op` on `volume` (quoted at most [`crate::name::EXCERPT_BYTES`] long).
    pub fn new(op: &'static str, volume: impl AsRef<str>, cause: Cause) -> Self {
        Self { op, volume: excerpt(volume.as_ref()), cause: Box::new(cause) }
    }

    /// The metric label of this failure.
    pub fn label(&self) -> &'static str {
        self.cause.label()
    }

    /// The backend's error kind, when the backend failed.
    pub fn backend_kind(&self) -> Option<ErrorKind> {
        match &*self.cause {
            Cause::Backend { source, .. } => Some(source.kind()),
            _ => None,
        }
    }

    /// Whether the volume does not exist (Docker asks for unknown names all the time).
    pub fn is_not_found(&self) -> bool {
        matches!(*self.cause, Cause::NotFound)
    }

    /// The error and all its causes, joined with `": "`.
    pub fn chain(&self) -> String {
        crate::backend::error::chain(self)
    }
}
