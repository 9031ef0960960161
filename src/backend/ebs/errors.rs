//! EC2 failures and EBS refusals as typed backend errors, with the hints people act on.

use super::api::{CloudError, CloudErrorKind, Volume};
use crate::backend::{BackendError, CloudFailure};
use crate::name::VolumeName;

/// How the backend layer classes an EC2 error kind.
fn failure_of(kind: CloudErrorKind) -> CloudFailure {
    match kind {
        CloudErrorKind::Unauthorized => CloudFailure::Unauthorized,
        CloudErrorKind::Throttled => CloudFailure::Throttled,
        CloudErrorKind::Transient => CloudFailure::Unreachable,
        CloudErrorKind::LimitExceeded => CloudFailure::LimitExceeded,
        CloudErrorKind::NotFound => CloudFailure::NotFound,
        _ => CloudFailure::Refused,
    }
}

/// A cloud error for `op`, with EC2's words and `hint`.
pub fn cloud_error(op: String, e: &CloudError, hint: &'static str) -> BackendError {
    BackendError::Cloud { op, failure: failure_of(e.kind), code: e.code.clone(), message: e.to_string(), hint }
}

/// An EC2 failure of a volume operation: the operation, the volume (and ID) and EC2's words,
/// with a hint for the failures people can fix.
pub fn cloud_failed(op: &str, name: &VolumeName, id: Option<&str>, e: &CloudError) -> BackendError {
    let id = id.map(|i| format!(" ({i})")).unwrap_or_default();
    let hint = match e.kind {
        CloudErrorKind::Unauthorized => {
            "; check the credentials and the IAM policy (ec2:CreateVolume, AttachVolume, DetachVolume, DeleteVolume, DescribeVolumes, DescribeInstances, CreateTags)"
        }
        CloudErrorKind::Throttled => "; EC2 kept throttling this account (RequestLimitExceeded) through every retry",
        CloudErrorKind::Transient => "; EC2 could not be reached (check ebs.endpoint, ebs.region and the network)",
        CloudErrorKind::LimitExceeded => "; an account or instance limit is reached",
        _ => "",
    };
    cloud_error(format!("{op} volume {name}{id}"), e, hint)
}

/// A failed ModifyVolume (for `op`, `resize` or `modify`): EC2's refusal because of another
/// modification (EBS allows one at a time, and then none for six hours) says so and when to try
/// again; any other failure is [`cloud_failed`].
pub fn modify_refused(op: &str, name: &VolumeName, id: &str, e: &CloudError) -> BackendError {
    if e.code == "IncorrectModificationState" {
        return BackendError::InUse {
            what: format!("volume {name} ({id})"),
            holders: format!("EC2 refused to modify it now: {e}"),
            hint: "EBS allows one modification at a time and then none for six hours; try again later".into(),
        };
    }
    cloud_failed(op, name, Some(id), e)
}

/// The volume is in another AZ than the instance.
pub fn other_az(name: &VolumeName, volume: &Volume, host: &str, here: &str) -> BackendError {
    BackendError::WrongZone {
        volume: name.to_string(),
        volume_zone: volume.availability_zone.clone(),
        host: host.to_owned(),
        host_zone: here.to_owned(),
        hint: format!(
            "volume {}: EBS volumes attach only within their availability zone; run the container on a host in {} or move the data with a snapshot",
            volume.id, volume.availability_zone
        ),
    }
}

/// Where a volume is attached, for messages.
pub fn describe_attachments(volume: &Volume) -> String {
    volume
        .live_attachments()
        .map(|a| format!("instance {} (as {}, {})", a.instance_id, a.device, a.state.as_str()))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The volume is attached to other instances.
pub fn attached_elsewhere(name: &VolumeName, volume: &Volume, hint: &str) -> BackendError {
    BackendError::AttachedElsewhere {
        volume: format!("{name} ({})", volume.id),
        attachments: describe_attachments(volume),
        instance: volume.live_attachments().next().map(|a| a.instance_id.clone()).unwrap_or_default(),
        hint: hint.to_owned(),
    }
}
