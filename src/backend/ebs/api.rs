//! The narrow EC2 surface the EBS backend uses: [`Ec2Api`], its SDK-free types, and
//! [`CloudError`] with the one mapping from EC2 error codes to sentinel kinds.
//!
//! The real implementation is [`super::cloud::AwsEc2`] (the only code that names `aws_sdk_*`);
//! [`super::fake::FakeEc2`] is an in-process state machine for tests.

use std::collections::BTreeMap;
use std::fmt;

use async_trait::async_trait;

/// The state of a volume, as EC2 reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VolumeState {
    /// Being created.
    Creating,
    /// Ready and not attached.
    Available,
    /// Attached to an instance.
    InUse,
    /// Being deleted.
    Deleting,
    /// Deleted.
    Deleted,
    /// Failed (for example, a KMS key the account cannot use).
    Error,
    /// Anything else EC2 may add.
    Other(String),
}

impl VolumeState {
    /// Parses EC2's spelling.
    pub fn parse(s: &str) -> Self {
        match s {
            "creating" => Self::Creating,
            "available" => Self::Available,
            "in-use" => Self::InUse,
            "deleting" => Self::Deleting,
            "deleted" => Self::Deleted,
            "error" => Self::Error,
            other => Self::Other(other.to_owned()),
        }
    }

    /// EC2's spelling.
    pub fn as_str(&self) -> &str {
        match self {
            Self::Creating => "creating",
            Self::Available => "available",
            Self::InUse => "in-use",
            Self::Deleting => "deleting",
            Self::Deleted => "deleted",
            Self::Error => "error",
            Self::Other(s) => s,
        }
    }

    /// Whether the volume is usable (available or in use).
    pub fn is_ready(&self) -> bool {
        matches!(self, Self::Available | Self::InUse)
    }

    /// Whether the volume is on its way out (deleting, deleted, error).
    pub fn is_gone(&self) -> bool {
        matches!(self, Self::Deleting | Self::Deleted | Self::Error)
    }
}

/// The state of one attachment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AttachState {
    /// AttachVolume accepted, not done yet.
    Attaching,
    /// Attached.
    Attached,
    /// DetachVolume accepted, not done yet.
    Detaching,
    /// Detached (an attachment in this state is as good as none).
    Detached,
    /// Detach requested while the instance still uses the device.
    Busy,
    /// Anything else.
    Other(String),
}

impl AttachState {
    /// Parses EC2's spelling.
    pub fn parse(s: &str) -> Self {
        match s {
            "attaching" => Self::Attaching,
            "attached" => Self::Attached,
            "detaching" => Self::Detaching,
            "detached" => Self::Detached,
            "busy" => Self::Busy,
            other => Self::Other(other.to_owned()),
        }
    }

    /// EC2's spelling.
    pub fn as_str(&self) -> &str {
        match self {
            Self::Attaching => "attaching",
            Self::Attached => "attached",
            Self::Detaching => "detaching",
            Self::Detached => "detached",
            Self::Busy => "busy",
            Self::Other(s) => s,
        }
    }
}

/// One attachment of a volume to an instance.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VolumeAttachment {
    /// The instance.
    pub instance_id: String,
    /// The device name requested at attach time (`/dev/xvdf`).
    pub device: String,
    /// Where the attachment is.
    pub state: AttachState,
}

/// A volume as DescribeVolumes/CreateVolume report it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Volume {
    /// `vol-…`.
    pub id: String,
    /// Size in GiB.
    pub size_gib: u64,
    /// `gp3`, `io2`, …
    pub volume_type: String,
    /// Provisioned IOPS, if any.
    pub iops: Option<u64>,
    /// Provisioned throughput in MiB/s (gp3), if any.
    pub throughput: Option<u64>,
    /// The availability zone.
    pub availability_zone: String,
    /// The volume's state.
    pub state: VolumeState,
    /// Whether it is encrypted.
    pub encrypted: bool,
    /// The KMS key, when encrypted.
    pub kms_key_id: Option<String>,
    /// The snapshot it was created from.
    pub snapshot_id: Option<String>,
    /// Its tags.
    pub tags: BTreeMap<String, String>,
    /// Its attachments (at most one unless multi-attach).
    pub attachments: Vec<VolumeAttachment>,
    /// When it was created, RFC 3339, if known.
    pub create_time: Option<String>,
}

impl Volume {
    /// The `Name` tag.
    pub fn name_tag(&self) -> Option<&str> {
        self.tags.get("Name").map(String::as_str)
    }

    /// The attachment to `instance`, ignoring `detached` ones.
    pub fn attachment_to(&self, instance: &str) -> Option<&VolumeAttachment> {
        self.live_attachments().find(|a| a.instance_id == instance)
    }

    /// Attachments that are not `detached`.
    pub fn live_attachments(&self) -> impl Iterator<Item = &VolumeAttachment> {
        self.attachments.iter().filter(|a| a.state != AttachState::Detached)
    }
}

/// CreateVolume's parameters.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct CreateVolumeRequest {
    /// Size in GiB (`None` with a snapshot: the snapshot's size).
    pub size_gib: Option<u64>,
    /// The AZ.
    pub availability_zone: String,
    /// The volume type.
    pub volume_type: String,
    /// IOPS (io1/io2/gp3).
    pub iops: Option<u64>,
    /// Throughput in MiB/s (gp3).
    pub throughput: Option<u64>,
    /// Encrypt.
    pub encrypted: bool,
    /// The KMS key (implies `encrypted`).
    pub kms_key_id: Option<String>,
    /// Create from this snapshot.
    pub snapshot_id: Option<String>,
    /// Tags, set in the same call (TagSpecifications).
    pub tags: BTreeMap<String, String>,
    /// The idempotency token.
    pub client_token: String,
}

/// A DescribeVolumes query (one page).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct VolumeQuery {
    /// Volume IDs (EC2 refuses `max_results` with IDs).
    pub ids: Vec<String>,
    /// Filters: name → accepted values.
    pub filters: Vec<(String, Vec<String>)>,
    /// Page size.
    pub max_results: Option<u32>,
    /// The page to fetch.
    pub next_token: Option<String>,
}

impl VolumeQuery {
    /// A query for one volume ID.
    pub fn by_id(id: &str) -> Self {
        Self { ids: vec![id.to_owned()], ..Self::default() }
    }

    /// A query with the given filters.
    pub fn filtered(filters: Vec<(String, Vec<String>)>) -> Self {
        Self { filters, ..Self::default() }
    }
}

/// One page of DescribeVolumes.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct VolumePage {
    /// The volumes.
    pub volumes: Vec<Volume>,
    /// The next page, if any.
    pub next_token: Option<String>,
}

/// The state of a snapshot, as EC2 reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SnapshotState {
    /// Being copied off the volume.
    Pending,
    /// Usable.
    Completed,
    /// Failed for good.
    Error,
    /// Anything else EC2 may add (`recoverable`, `recovering`, …).
    Other(String),
}

impl SnapshotState {
    /// Parses EC2's spelling.
    pub fn parse(s: &str) -> Self {
        match s {
            "pending" => Self::Pending,
            "completed" => Self::Completed,
            "error" => Self::Error,
            other => Self::Other(other.to_owned()),
        }
    }

    /// EC2's spelling.
    pub fn as_str(&self) -> &str {
        match self {
            Self::Pending => "pending",
            Self::Completed => "completed",
            Self::Error => "error",
            Self::Other(s) => s,
        }
    }
}

/// A snapshot as DescribeSnapshots/CreateSnapshot report it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Snapshot {
    /// `snap-…`.
    pub id: String,
    /// The volume it was taken from (for a copy: the source's volume, or EC2's placeholder).
    pub volume_id: String,
    /// Its state.
    pub state: SnapshotState,
    /// EC2's progress text (`"42%"`), if given.
    pub progress: Option<String>,
    /// The size of the volume it was taken from, in GiB.
    pub size_gib: u64,
    /// Its description.
    pub description: String,
    /// Whether it is encrypted.
    pub encrypted: bool,
    /// The account that owns it.
    pub owner_id: Option<String>,
    /// When it was started, RFC 3339, if known.
    pub start_time: Option<String>,
    /// Its tags.
    pub tags: BTreeMap<String, String>,
}

/// CreateSnapshot's parameters.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct CreateSnapshotRequest {
    /// The volume to snapshot.
    pub volume_id: String,
    /// The description.
    pub description: String,
    /// Tags, set in the same call (TagSpecifications).
    pub tags: BTreeMap<String, String>,
}

/// CopySnapshot's parameters (sent to the destination region).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct CopySnapshotRequest {
    /// The snapshot to copy.
    pub source_snapshot_id: String,
    /// The region it is in.
    pub source_region: String,
    /// The copy's description.
    pub description: String,
    /// The copy's tags (TagSpecifications).
    pub tags: BTreeMap<String, String>,
}

/// A DescribeSnapshots query (one page).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct SnapshotQuery {
    /// Snapshot IDs.
    pub ids: Vec<String>,
    /// Owners (`self` for this account's).
    pub owners: Vec<String>,
    /// Filters: name → accepted values.
    pub filters: Vec<(String, Vec<String>)>,
    /// Page size (not with IDs).
    pub max_results: Option<u32>,
    /// The page to fetch.
    pub next_token: Option<String>,
}

/// One page of DescribeSnapshots.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct SnapshotPage {
    /// The snapshots.
    pub snapshots: Vec<Snapshot>,
    /// The next page, if any.
    pub next_token: Option<String>,
}

/// ModifyVolume: a new size, type, IOPS or throughput (what is `None` stays).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ModifyVolumeRequest {
    /// `vol-…`.
    pub volume_id: String,
    /// The new size in GiB.
    pub size_gib: Option<u64>,
    /// The new volume type.
    pub volume_type: Option<String>,
    /// The new provisioned IOPS.
    pub iops: Option<u64>,
    /// The new throughput in MiB/s (gp3).
    pub throughput: Option<u64>,
}

/// Where a volume modification is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ModificationState {
    /// Under way; the old size and performance still apply.
    Modifying,
    /// The new size is usable; performance is still moving to the new figures.
    Optimizing,
    /// Done.
    Completed,
    /// EC2 gave up on it.
    Failed,
    /// A state this code does not know.
    Other(String),
}

impl ModificationState {
    /// EC2's word.
    pub fn as_str(&self) -> &str {
        match self {
            ModificationState::Modifying => "modifying",
            ModificationState::Optimizing => "optimizing",
            ModificationState::Completed => "completed",
            ModificationState::Failed => "failed",
            ModificationState::Other(s) => s,
        }
    }

    /// From EC2's word.
    pub fn parse(s: &str) -> Self {
        match s {
            "modifying" => ModificationState::Modifying,
            "optimizing" => ModificationState::Optimizing,
            "completed" => ModificationState::Completed,
            "failed" => ModificationState::Failed,
            other => ModificationState::Other(other.to_owned()),
        }
    }
}

/// A volume's modification, as ModifyVolume or DescribeVolumesModifications report it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VolumeModification {
    /// `vol-…`.
    pub volume_id: String,
    /// Where it is.
    pub state: ModificationState,
    /// The size it goes to, in GiB.
    pub target_size_gib: Option<u64>,
    /// The type it goes to.
    pub target_type: Option<String>,
    /// The IOPS it goes to.
    pub target_iops: Option<u64>,
    /// The throughput it goes to.
    pub target_throughput: Option<u64>,
    /// Percent done.
    pub progress: Option<u64>,
    /// EC2's words on a failure.
    pub status_message: Option<String>,
}

/// What the backend needs to know about an instance.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Instance {
    /// `i-…`.
    pub id: String,
    /// Its AZ.
    pub availability_zone: String,
    /// Device names in its block device mapping (root device, attached volumes).
    pub device_names: Vec<String>,
    /// Its instance type (`m5.large`).
    pub instance_type: String,
    /// How many network interfaces it has (on most Nitro types they share the attachment
    /// slots with EBS volumes).
    pub network_interfaces: u32,
}

/// What an instance type allows of EBS attachments (DescribeInstanceTypes).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InstanceTypeLimits {
    /// `EbsInfo.MaximumEbsAttachments`: EBS volumes it takes with one network interface.
    pub max_attachments: Option<u32>,
    /// Whether network interfaces and instance-store disks share those slots (limit type
    /// `shared`; `dedicated` types keep them apart).
    pub shared: bool,
    /// Its instance-store NVMe disks.
    pub instance_store_disks: u32,
}

/// The sentinel kinds of EC2 errors the backend branches on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloudErrorKind {
    /// `InvalidVolume.NotFound`, `InvalidInstanceID.NotFound`, …
    NotFound,
    /// `IncorrectState`, `InvalidAttachment.NotFound`: for a detach, already detached.
    IncorrectState,
    /// `IdempotentParameterMismatch`: the client token was used with other parameters.
    IdempotentParameterMismatch,
    /// `InvalidVolume.ZoneMismatch`: volume and instance are in different AZs.
    ZoneMismatch,
    /// `InvalidParameterValue … already in use`: the device name is taken on the instance.
    DeviceInUse,
    /// `VolumeInUse`: attached (to attach again, or to delete).
    VolumeInUse,
    /// `RequestLimitExceeded`, `Throttling`, …: back off and retry.
    Throttled,
    /// Network failures, timeouts, HTTP 5xx: retry.
    Transient,
    /// `AttachmentLimitExceeded`, `VolumeLimitExceeded`, …
    LimitExceeded,
    /// `InvalidParameter*`, `UnknownVolumeType`, …: the request is wrong.
    InvalidParameter,
    /// `AuthFailure`, `UnauthorizedOperation`, …
    Unauthorized,
    /// Anything else.
    Other,
}

/// An EC2 error: its kind, EC2's code and message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CloudError {
    /// The sentinel kind.
    pub kind: CloudErrorKind,
    /// EC2's error code (or a description of the transport failure).
    pub code: String,
    /// EC2's message.
    pub message: String,
}

impl fmt::Display for CloudError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.code.is_empty() {
            f.write_str(&self.message)
        } else if self.message.is_empty() {
            f.write_str(&self.code)
        } else {
            write!(f, "{}: {}", self.code, self.message)
        }
    }
}

impl std::error::Error for CloudError {}

impl CloudError {
    /// An error classified from EC2's code, message and HTTP status (the one mapping).
    pub fn from_code(code: &str, message: &str, http_status: Option<u16>) -> Self {
        Self { kind: classify(code, message, http_status), code: code.to_owned(), message: message.to_owned() }
    }

    /// A transport failure (no EC2 answer).
    pub fn transient(what: impl Into<String>) -> Self {
        Self { kind: CloudErrorKind::Transient, code: String::new(), message: what.into() }
    }

    /// A failure EC2's answers showed (no error code), for example an attachment it dropped.
    pub fn other(what: impl Into<String>) -> Self {
        Self { kind: CloudErrorKind::Other, code: String::new(), message: what.into() }
    }

    /// Whether a retry may succeed.
    pub fn is_retryable(&self) -> bool {
        matches!(self.kind, CloudErrorKind::Throttled | CloudErrorKind::Transient)
    }
}

/// Maps an EC2 error code (and message, HTTP status) to its [`CloudErrorKind`].
pub fn classify(code: &str, message: &str, http_status: Option<u16>) -> CloudErrorKind {
    use CloudErrorKind as K;
    match code {
        "RequestLimitExceeded"
        | "Throttling"
        | "ThrottlingException"
        | "RequestThrottled"
        | "RequestThrottledException"
        | "TooManyRequestsException"
        | "ProvisionedThroughputExceededException"
        | "TransactionInProgressException"
        | "SlowDown"
        | "EC2ThrottledException" => K::Throttled,
        "IdempotentParameterMismatch" => K::IdempotentParameterMismatch,
        "InvalidVolume.ZoneMismatch" => K::ZoneMismatch,
        "IncorrectState" | "InvalidAttachment.NotFound" => K::IncorrectState,
        "VolumeInUse" => K::VolumeInUse,
        "AttachmentLimitExceeded"
        | "VolumeLimitExceeded"
        | "VolumeModificationSizeLimitExceeded"
        | "MaxIOPSLimitExceeded"
        | "SnapshotLimitExceeded"
        | "ResourceLimitExceeded" => K::LimitExceeded,
        "AuthFailure"
        | "UnauthorizedOperation"
        | "InvalidClientTokenId"
        | "SignatureDoesNotMatch"
        | "OptInRequired"
        | "Blocked"
        | "AccessDenied"
        | "AccessDeniedException" => K::Unauthorized,
        "InternalError"
        | "InternalFailure"
        | "ServiceUnavailable"
        | "Unavailable"
        | "RequestTimeout"
        | "RequestTimeoutException" => K::Transient,
        "InvalidParameterValue" if message.contains("already in use") => K::DeviceInUse,
        c if c.ends_with(".NotFound") => K::NotFound,
        c if c.starts_with("InvalidParameter")
            || c.starts_with("InvalidVolume")
            || c.starts_with("InvalidSnapshot")
            || c.starts_with("InvalidKmsKey")
            || c.starts_with("InvalidZone")
            || matches!(
                c,
                "UnknownParameter"
                    | "UnknownVolumeType"
                    | "UnsupportedOperation"
                    | "ValidationError"
                    | "MissingParameter"
            ) =>
        {
            K::InvalidParameter
        }
        _ => match http_status {
            Some(s) if s >= 500 => K::Transient,
            Some(429) => K::Throttled,
            _ => K::Other,
        },
    }
}

/// The EC2 calls the EBS backend makes. Every method is one API call (one page for describes).
///
/// Implementations do no retries of their own: the backend retries throttling and transient
/// failures with its own bounded, jittered backoff (tested against the fake).
#[async_trait]
pub trait Ec2Api: Send + Sync + fmt::Debug {
    /// CreateVolume with the tags in TagSpecifications.
    ///
    /// # Errors
    /// EC2's error.
    async fn create_volume(&self, req: &CreateVolumeRequest) -> Result<Volume, CloudError>;

    /// One page of DescribeVolumes.
    ///
    /// # Errors
    /// EC2's error (`NotFound` for an unknown ID).
    async fn describe_volumes(&self, query: &VolumeQuery) -> Result<VolumePage, CloudError>;

    /// AttachVolume; returns the attachment's state.
    ///
    /// # Errors
    /// EC2's error.
    async fn attach_volume(&self, volume_id: &str, instance_id: &str, device: &str) -> Result<AttachState, CloudError>;

    /// DetachVolume from `instance_id`, forced when `force`.
    ///
    /// # Errors
    /// EC2's error (`IncorrectState`/`NotFound` when already detached).
    async fn detach_volume(&self, volume_id: &str, instance_id: &str, force: bool) -> Result<(), CloudError>;

    /// DeleteVolume.
    ///
    /// # Errors
    /// EC2's error (`VolumeInUse` while attached, `NotFound` when gone).
    async fn delete_volume(&self, volume_id: &str) -> Result<(), CloudError>;

    /// CreateTags on one resource.
    ///
    /// # Errors
    /// EC2's error.
    async fn create_tags(&self, resource_id: &str, tags: &BTreeMap<String, String>) -> Result<(), CloudError>;

    /// DescribeInstances for one instance.
    ///
    /// # Errors
    /// EC2's error (`NotFound` for an unknown instance).
    async fn describe_instance(&self, instance_id: &str) -> Result<Instance, CloudError>;

    /// DescribeInstanceTypes for one instance type.
    ///
    /// # Errors
    /// EC2's error (an unknown type).
    async fn describe_instance_type(&self, instance_type: &str) -> Result<InstanceTypeLimits, CloudError>;

    /// CreateSnapshot with the tags in TagSpecifications.
    ///
    /// # Errors
    /// EC2's error (`NotFound` for an unknown volume).
    async fn create_snapshot(&self, req: &CreateSnapshotRequest) -> Result<Snapshot, CloudError>;

    /// One page of DescribeSnapshots.
    ///
    /// # Errors
    /// EC2's error (`NotFound` for an unknown ID).
    async fn describe_snapshots(&self, query: &SnapshotQuery) -> Result<SnapshotPage, CloudError>;

    /// DeleteSnapshot.
    ///
    /// # Errors
    /// EC2's error (`NotFound` when gone, `InvalidSnapshot.InUse` while an image uses it).
    async fn delete_snapshot(&self, snapshot_id: &str) -> Result<(), CloudError>;

    /// CopySnapshot, sent to the region the copy goes to; returns the copy's ID.
    ///
    /// # Errors
    /// EC2's error.
    async fn copy_snapshot(&self, req: &CopySnapshotRequest) -> Result<String, CloudError>;

    /// ModifyVolume; returns the modification it started.
    ///
    /// # Errors
    /// EC2's error (`IncorrectModificationState` while another modification runs or within
    /// six hours of the last one).
    async fn modify_volume(&self, req: &ModifyVolumeRequest) -> Result<VolumeModification, CloudError>;

    /// DescribeVolumesModifications of one volume: its latest modification, `None` if it has
    /// never been modified.
    ///
    /// # Errors
    /// EC2's error.
    async fn describe_modification(&self, volume_id: &str) -> Result<Option<VolumeModification>, CloudError>;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_codes_map_to_kinds() {
        use CloudErrorKind as K;
        for (code, message, status, kind) in [
            ("RequestLimitExceeded", "Request limit exceeded.", Some(503), K::Throttled),
            ("Throttling", "", None, K::Throttled),
            ("IdempotentParameterMismatch", "", Some(400), K::IdempotentParameterMismatch),
            ("InvalidVolume.ZoneMismatch", "", Some(400), K::ZoneMismatch),
            ("InvalidVolume.NotFound", "The volume 'vol-1' does not exist.", Some(400), K::NotFound),
            ("InvalidInstanceID.NotFound", "", Some(400), K::NotFound),
            ("IncorrectState", "", Some(400), K::IncorrectState),
            ("InvalidAttachment.NotFound", "", Some(400), K::IncorrectState),
            ("VolumeInUse", "", Some(400), K::VolumeInUse),
            ("InvalidParameterValue", "Attachment point /dev/xvdf is already in use", Some(400), K::DeviceInUse),
            ("InvalidParameterValue", "Invalid iops", Some(400), K::InvalidParameter),
            ("InvalidParameterCombination", "", Some(400), K::InvalidParameter),
            ("InvalidVolume.Malformed", "", Some(400), K::InvalidParameter),
            ("UnknownVolumeType", "", Some(400), K::InvalidParameter),
            ("AttachmentLimitExceeded", "", Some(400), K::LimitExceeded),
            ("UnauthorizedOperation", "", Some(403), K::Unauthorized),
            ("InternalError", "", Some(500), K::Transient),
            ("SomethingNew", "", Some(502), K::Transient),
            ("SomethingNew", "", Some(400), K::Other),
        ] {
            assert_eq!(classify(code, message, status), kind, "{code} {message}");
        }
        let e = CloudError::from_code("RequestLimitExceeded", "slow down", Some(503));
        assert!(e.is_retryable());
        assert_eq!(e.to_string(), "RequestLimitExceeded: slow down");
        assert!(!CloudError::from_code("VolumeInUse", "x", Some(400)).is_retryable());
    }

    #[test]
    fn states_round_trip() {
        for s in ["creating", "available", "in-use", "deleting", "deleted", "error", "weird"] {
            assert_eq!(VolumeState::parse(s).as_str(), s);
        }
        for s in ["attaching", "attached", "detaching", "detached", "busy", "weird"] {
            assert_eq!(AttachState::parse(s).as_str(), s);
        }
        assert!(VolumeState::InUse.is_ready() && VolumeState::Error.is_gone());
        for s in ["pending", "completed", "error", "recoverable"] {
            assert_eq!(SnapshotState::parse(s).as_str(), s);
        }
    }
}
