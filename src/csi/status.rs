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
        Cause::Backend { source, .. } => match source.kind() {
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
            ErrorKind::Cloud | ErrorKind::Os => Code::Internal,
        },
    }
}
