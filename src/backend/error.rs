//! The backend layer's error: what went wrong, as a variant the fronts can act on.
//!
//! The service maps a [`BackendError`] to its own cause in one place; the VolumeDriver front
//! renders its Display text into `{"Err"}`; the CSI front maps [`BackendError::kind`] to a gRPC
//! code; the metrics label an outcome with [`ErrorKind::label`]. Display texts name the subject
//! and end with the hint a person can act on; the cause, if any, is the `source`.

use std::path::PathBuf;
use std::time::Duration;

use crate::os::OsError;

/// What kind of failure a [`BackendError`] is, without its details.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorKind {
    /// A create option was unknown or malformed, or a request could not be carried out as given.
    Invalid,
    /// The volume (or snapshot) does not exist in the storage.
    NotFound,
    /// Something by that name exists and is not what was asked for.
    AlreadyExists,
    /// The volume is still in use (attached, mounted) where the operation needs it free.
    InUse,
    /// The volume is attached to another node.
    AttachedElsewhere,
    /// The volume and the node are in different availability zones.
    WrongZone,
    /// A wait ran out of time.
    Timeout,
    /// The device holds data (a file system or partition table this program does not use).
    NotBlank,
    /// A device that is not the volume's own.
    ForeignDevice,
    /// Not enough space (or no free device name, attachment slot, …).
    NoSpace,
    /// The cloud API failed.
    Cloud,
    /// A file or OS operation failed.
    Os,
    /// The operation was cancelled (shutdown).
    Cancelled,
    /// The backend is not built into this binary, or cannot do this.
    Unavailable,
}

impl ErrorKind {
    /// The metric label of an outcome of this kind (`rexray_*_total{outcome}`).
    pub fn label(self) -> &'static str {
        match self {
            ErrorKind::Invalid => "invalid",
            ErrorKind::NotFound => "not_found",
            ErrorKind::AlreadyExists => "already_exists",
            ErrorKind::InUse => "in_use",
            ErrorKind::AttachedElsewhere => "attached_elsewhere",
            ErrorKind::WrongZone => "wrong_zone",
            ErrorKind::Timeout => "timeout",
            ErrorKind::NotBlank => "not_blank",
            ErrorKind::ForeignDevice => "foreign_device",
            ErrorKind::NoSpace => "no_space",
            ErrorKind::Cloud => "cloud_error",
            ErrorKind::Os => "os_error",
            ErrorKind::Cancelled => "cancelled",
            ErrorKind::Unavailable => "unavailable",
        }
    }
}

/// `e` and all its causes, joined with `": "`: an error in words, for people.
pub fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

/// How a cloud API call failed (mapped once from the provider's error codes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloudFailure {
    /// Credentials or permissions.
    Unauthorized,
    /// Throttled through every retry.
    Throttled,
    /// The endpoint could not be reached or did not answer.
    Unreachable,
    /// An account or instance limit.
    LimitExceeded,
    /// What the call named does not exist (an unknown instance or snapshot).
    NotFound,
    /// Anything else the API refused.
    Refused,
}

/// Errors from a backend. See the module documentation.
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
    /// Several invalid options, each one's error (Docker's Create reports them all at once).
    #[error("{} invalid options: {}", .0.len(), .0.iter().map(ToString::to_string).collect::<Vec<_>>().join("; "))]
    InvalidOptions(Vec<BackendError>),
    /// A request or setting that cannot be carried out as given (a name too long for the
    /// backend, a malformed ID, a read-only blank volume, …).
    #[error("{what}")]
    Invalid {
        /// What is wrong, and what would be accepted.
        what: String,
    },
    /// The volume or snapshot does not exist in the storage.
    #[error("{what}")]
    NotFound {
        /// What was looked for, and where.
        what: String,
    },
    /// Something by that name exists and is not what was asked for.
    #[error("{what}: {mismatch}")]
    AlreadyExists {
        /// What exists.
        what: String,
        /// How it differs from the request, and what to do.
        mismatch: String,
    },
    /// The volume is still in use where the operation needs it free.
    #[error("{what} is still {holders}: {hint}")]
    InUse {
        /// The volume, image or device.
        what: String,
        /// Who or what uses it (`attached as /dev/loop3`, `mounted at …`).
        holders: String,
        /// What to do.
        hint: String,
    },
    /// The volume is attached to another node.
    #[error("volume {volume} is attached to {attachments}; {hint}")]
    AttachedElsewhere {
        /// The volume (name and ID).
        volume: String,
        /// Where it is attached, e.g. `instance i-0a (as /dev/xvdf, attached)`.
        attachments: String,
        /// The first instance it is attached to (for the fronts).
        instance: String,
        /// What to do.
        hint: String,
    },
    /// The volume and the node are in different availability zones.
    #[error("volume {volume} is in {volume_zone}; {host} is in {host_zone} ({hint})")]
    WrongZone {
        /// The volume (name and ID).
        volume: String,
        /// The volume's zone.
        volume_zone: String,
        /// The node (`this instance`, `instance i-…`).
        host: String,
        /// The node's zone.
        host_zone: String,
        /// Why it matters and what to do.
        hint: String,
    },
    /// A wait ran out of time.
    #[error("{op} is still {last_seen} after {}{hint}", crate::human::duration(*.elapsed))]
    Timeout {
        /// What was waited for (`volume v (vol-1) to attach as /dev/xvdf`).
        op: String,
        /// How long it waited.
        elapsed: Duration,
        /// What the last look found.
        last_seen: String,
        /// What was done about it and what to do (starts with `; `), or empty.
        hint: String,
    },
    /// An attached volume's device did not show up on this host.
    #[error("no device appeared for {what} within {}: {hint}", crate::human::duration(*.elapsed))]
    NoDevice {
        /// The volume (name and ID) and the device name its attachment asked for.
        what: String,
        /// How long it waited.
        elapsed: Duration,
        /// What to check, whether the caller's deadline cut the wait, and the paths looked at.
        hint: String,
    },
    /// The device holds something this program does not format over.
    #[error("{} {found}: refusing to mount or format it", device.display())]
    NotBlank {
        /// The device.
        device: PathBuf,
        /// What it holds (`holds a partition table (dos)`, `holds a swap signature, not ext4 or xfs`).
        found: String,
    },
    /// A device (or mount) that is not the volume's own.
    #[error("{what}; refusing to use it")]
    ForeignDevice {
        /// Which device, and whose it is.
        what: String,
    },
    /// Not enough of something: space, device names, attachment slots.
    #[error("{what}")]
    NoSpace {
        /// What ran out, with the numbers.
        what: String,
    },
    /// The cloud API failed.
    #[error("{op}: {message}{hint}")]
    Cloud {
        /// The operation and its subject (`attach volume v (vol-1)`).
        op: String,
        /// How it failed.
        failure: CloudFailure,
        /// The provider's error code (`IncorrectState`), empty when there is none.
        code: String,
        /// The provider's words (including the code).
        message: String,
        /// What to check (starts with `; `), or empty.
        hint: &'static str,
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
    /// A step of the block pipeline (or another OS operation) failed on a device or path.
    #[error("{step} {}", device.display())]
    Step {
        /// The step (`attach`, `probe`, `format`, `mount`, …).
        step: &'static str,
        /// The device or path the step worked on.
        device: PathBuf,
        /// The cause.
        #[source]
        source: OsError,
    },
    /// The operation was cancelled before it finished.
    #[error("{what}: cancelled (the daemon is shutting down)")]
    Cancelled {
        /// What was cancelled.
        what: &'static str,
    },
    /// The backend is not built into this binary.
    #[error("backend {0} is not available in this build")]
    Unavailable(&'static str),
}

impl BackendError {
    /// The kind of failure.
    pub fn kind(&self) -> ErrorKind {
        match self {
            BackendError::UnknownOption { .. }
            | BackendError::InvalidOption { .. }
            | BackendError::InvalidOptions(_)
            | BackendError::Invalid { .. } => ErrorKind::Invalid,
            BackendError::NotFound { .. } => ErrorKind::NotFound,
            BackendError::AlreadyExists { .. } => ErrorKind::AlreadyExists,
            BackendError::InUse { .. } => ErrorKind::InUse,
            BackendError::AttachedElsewhere { .. } => ErrorKind::AttachedElsewhere,
            BackendError::WrongZone { .. } => ErrorKind::WrongZone,
            BackendError::Timeout { .. } | BackendError::NoDevice { .. } => ErrorKind::Timeout,
            BackendError::NotBlank { .. } => ErrorKind::NotBlank,
            BackendError::ForeignDevice { .. } => ErrorKind::ForeignDevice,
            BackendError::NoSpace { .. } => ErrorKind::NoSpace,
            BackendError::Cloud { .. } => ErrorKind::Cloud,
            BackendError::Io { .. } | BackendError::Step { .. } => ErrorKind::Os,
            BackendError::Cancelled { .. } => ErrorKind::Cancelled,
            BackendError::Unavailable(_) => ErrorKind::Unavailable,
        }
    }

    /// `None` for no problems, the one problem, or [`BackendError::InvalidOptions`] of them.
    pub fn all(mut problems: Vec<BackendError>) -> Option<BackendError> {
        match problems.len() {
            0 => None,
            1 => problems.pop(),
            _ => Some(BackendError::InvalidOptions(problems)),
        }
    }

    /// Whether the same call may well succeed later: a wait that ran out of time, a cloud API
    /// that was throttled or could not be reached, a cancelled request.
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            BackendError::Timeout { .. }
                | BackendError::Cancelled { .. }
                | BackendError::Cloud { failure: CloudFailure::Throttled | CloudFailure::Unreachable, .. }
        )
    }

    /// Whether an account or instance limit refused the call (EC2's `AttachmentLimitExceeded`,
    /// `VolumeLimitExceeded`, …).
    pub fn is_limit(&self) -> bool {
        matches!(self, BackendError::Cloud { failure: CloudFailure::LimitExceeded, .. })
    }

    /// Whether the cloud said that something the call named does not exist.
    pub fn is_cloud_not_found(&self) -> bool {
        matches!(self, BackendError::Cloud { failure: CloudFailure::NotFound, .. })
    }

    /// An [`BackendError::Invalid`] saying `what`.
    pub fn invalid(what: impl Into<String>) -> Self {
        BackendError::Invalid { what: what.into() }
    }

    /// A [`BackendError::NotFound`] saying `what`.
    pub fn not_found(what: impl Into<String>) -> Self {
        BackendError::NotFound { what: what.into() }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_has_its_own_label() {
        let kinds = [
            ErrorKind::Invalid,
            ErrorKind::NotFound,
            ErrorKind::AlreadyExists,
            ErrorKind::InUse,
            ErrorKind::AttachedElsewhere,
            ErrorKind::WrongZone,
            ErrorKind::Timeout,
            ErrorKind::NotBlank,
            ErrorKind::ForeignDevice,
            ErrorKind::NoSpace,
            ErrorKind::Cloud,
            ErrorKind::Os,
            ErrorKind::Cancelled,
            ErrorKind::Unavailable,
        ];
        let labels: std::collections::BTreeSet<_> = kinds.iter().map(|k| k.label()).collect();
        assert_eq!(labels.len(), kinds.len());
    }
}
