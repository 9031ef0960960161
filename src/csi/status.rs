//! The one mapping of this program's errors to gRPC status codes, as the CSI specification
//! lists them for each call, with the error's own words as the message.

use tonic::{Code, Status};

use crate::backend::ErrorKind;
use crate::service::{Cause, ServiceError};

/// The gRPC status for a failed service call.
pub fn from_service(e: &ServiceError) -> Status {
    Status::new(code_of(e), e.chain())
}

/// A request that lacks or misstates a field: `INVALID_ARGUMENT` naming it.
pub fn invalid(message: impl Into<String>) -> Status {
    Status::invalid_argument(message)
}

/// The CSI code of a failure.
fn code_of(e: &ServiceError) -> Code {
    match e.cause.as_ref() {
        Cause::InvalidName(_) => Code::InvalidArgument,
        Cause::NotFound => Code::NotFound,
        Cause::Mismatch { .. } => Code::AlreadyExists,
        Cause::InUse { .. }
        | Cause::HeldByOrchestrator { .. }
        | Cause::StagedElsewhere { .. }
        | Cause::NotStaged { .. }
        | Cause::WrongBackend { .. } => Code::FailedPrecondition,
        Cause::TooManyMounts { .. } => Code::ResourceExhausted,
        Cause::Busy { .. } => Code::Aborted,
        Cause::NoSnapshots { .. } => Code::Unimplemented,
        Cause::Unlisted { .. } | Cause::Unavailable { .. } => Code::Unavailable,
        Cause::State(_) => Code::Internal,
        Cause::Backend { source, .. } => backend_code(source),
    }
}

/// The gRPC status for a backend failure outside a service call (a host's identity, the
/// capacity left), with its causes in words.
pub fn from_backend(e: &crate::backend::BackendError) -> Status {
    Status::new(backend_code(e), crate::backend::error::chain(e))
}

/// The CSI code of a backend failure.
fn backend_code(source: &crate::backend::BackendError) -> Code {
    if let crate::backend::BackendError::InvalidOption { key, .. } = source {
        // A source snapshot ID of a form no snapshot has names none: the spec's NOT_FOUND.
        if key == "snapshotID" {
            return Code::NotFound;
        }
    }
    match source.kind() {
        ErrorKind::Invalid => Code::InvalidArgument,
        ErrorKind::NotFound => Code::NotFound,
        ErrorKind::AlreadyExists => Code::AlreadyExists,
        ErrorKind::InUse
        | ErrorKind::AttachedElsewhere
        | ErrorKind::WrongZone
        | ErrorKind::NotBlank
        | ErrorKind::ForeignDevice => Code::FailedPrecondition,
        ErrorKind::NoSpace => Code::ResourceExhausted,
        ErrorKind::Timeout => Code::DeadlineExceeded,
        ErrorKind::Cancelled => Code::Aborted,
        ErrorKind::Unavailable => Code::Unavailable,
        ErrorKind::Cloud if source.is_transient() => Code::Unavailable,
        ErrorKind::Cloud if source.is_limit() => Code::ResourceExhausted,
        ErrorKind::Cloud if source.is_cloud_not_found() => Code::NotFound,
        ErrorKind::Cloud | ErrorKind::Os => Code::Internal,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::{BackendError, CloudFailure};

    fn backend(source: BackendError) -> ServiceError {
        ServiceError::new("ControllerPublishVolume", "v", Cause::Backend { backend: "ebs", source })
    }

    fn cloud(failure: CloudFailure, code: &str) -> BackendError {
        BackendError::Cloud {
            op: "attach volume v (vol-1)".into(),
            failure,
            code: code.into(),
            message: format!("{code}: refused"),
            hint: "",
        }
    }

    #[test]
    fn cloud_refusals_map_to_the_codes_the_spec_lists() {
        let limit = from_service(&backend(cloud(CloudFailure::LimitExceeded, "AttachmentLimitExceeded")));
        assert_eq!(limit.code(), Code::ResourceExhausted);
        assert!(limit.message().contains("AttachmentLimitExceeded"), "{limit:?}");
        let node = from_service(&backend(cloud(CloudFailure::NotFound, "InvalidInstanceID.NotFound")));
        assert_eq!(node.code(), Code::NotFound);
        assert_eq!(
            from_service(&backend(cloud(CloudFailure::Throttled, "RequestLimitExceeded"))).code(),
            Code::Unavailable
        );
        assert_eq!(
            from_service(&backend(cloud(CloudFailure::Refused, "InvalidParameterValue"))).code(),
            Code::Internal
        );
    }

    #[test]
    fn a_source_snapshot_id_no_snapshot_can_have_is_not_found() {
        let bad = BackendError::InvalidOption {
            key: "snapshotID".into(),
            value: "nope".into(),
            reason: "expected a snapshot ID such as snap-0123456789abcdef0".into(),
        };
        assert_eq!(from_service(&backend(bad)).code(), Code::NotFound);
        let other = BackendError::InvalidOption { key: "iops".into(), value: "x".into(), reason: "a number".into() };
        assert_eq!(from_service(&backend(other)).code(), Code::InvalidArgument);
    }

    #[test]
    fn backend_failures_outside_a_call_keep_their_causes() {
        let e = BackendError::Step {
            step: "read free space of",
            device: "/srv/loop".into(),
            source: crate::os::OsError::Unexpected("disk gone".into()),
        };
        let status = from_backend(&e);
        assert_eq!(status.code(), Code::Internal);
        assert!(status.message().contains("disk gone"), "{status:?}");
    }
}
