//! [`AwsEc2`]: the [`Ec2Api`] over `aws-sdk-ec2`. The only file that names `aws_sdk_*` or
//! `aws_config`.
//!
//! The SDK's own retries are off: the backend retries throttling and transient failures itself
//! ([`super::wait::RetryPolicy`], `ebs.maxRetries`), so there is one tested retry loop, not two
//! multiplied. Every SDK error is turned into a [`CloudError`] in [`cloud_error`], the one place
//! where EC2's error codes are read.

use std::collections::BTreeMap;
use std::time::Duration;

use async_trait::async_trait;
use aws_config::retry::RetryConfig;
use aws_config::timeout::TimeoutConfig;
use aws_config::{BehaviorVersion, Region};
use aws_sdk_ec2::config::Credentials;
use aws_sdk_ec2::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_ec2::types::{Filter, ResourceType, Tag, TagSpecification, VolumeType};
use aws_sdk_ec2::Client;

use super::api::{
    AttachState, CloudError, CloudErrorKind, CopySnapshotRequest, CreateSnapshotRequest, CreateVolumeRequest, Ec2Api,
    Instance, InstanceTypeLimits, ModificationState, ModifyVolumeRequest, Snapshot, SnapshotPage, SnapshotQuery,
    SnapshotState, Volume, VolumeAttachment, VolumeModification, VolumePage, VolumeQuery, VolumeState,
};

/// How to reach EC2.
#[derive(Clone, PartialEq, Eq)]
pub struct Connection {
    /// The region to sign for.
    pub region: String,
    /// An endpoint URL other than AWS's (an emulator).
    pub endpoint: Option<String>,
    /// Static access key and secret key; `None` = the default credential chain (env, profile,
    /// web identity, ECS, instance role).
    pub static_credentials: Option<(String, String)>,
}

impl std::fmt::Debug for Connection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connection")
            .field("region", &self.region)
            .field("endpoint", &self.endpoint)
            .field("static_credentials", &self.static_credentials.as_ref().map(|_| "(redacted)"))
            .finish()
    }
}

/// The real EC2.
#[derive(Debug, Clone)]
pub struct AwsEc2 {
    client: Client,
}

impl AwsEc2 {
    /// Builds the client. Makes no request (credentials are resolved on the first call).
    pub async fn connect(conn: &Connection) -> Self {
        let timeouts = TimeoutConfig::builder()
            .connect_timeout(Duration::from_secs(5))
            .operation_attempt_timeout(Duration::from_secs(30))
            .operation_timeout(Duration::from_secs(40))
            .build();
        let mut loader = aws_config::defaults(BehaviorVersion::latest())
            .region(Region::new(conn.region.clone()))
            .retry_config(RetryConfig::disabled())
            .timeout_config(timeouts);
        if let Some(url) = &conn.endpoint {
            loader = loader.endpoint_url(url.clone());
        }
        if let Some((key, secret)) = &conn.static_credentials {
            loader = loader.credentials_provider(Credentials::new(key, secret, None, None, "rexray-ebs-config"));
        }
        let config = loader.load().await;
        Self { client: Client::new(&config) }
    }
}

/// The one mapping of SDK errors to [`CloudError`].
fn cloud_error<E>(err: SdkError<E>) -> CloudError
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
{
    match &err {
        SdkError::ServiceError(service) => {
            let status = service.raw().status().as_u16();
            let e = service.err();
            CloudError::from_code(e.code().unwrap_or("Unknown"), e.message().unwrap_or(""), Some(status))
        }
        SdkError::TimeoutError(_) | SdkError::DispatchFailure(_) | SdkError::ResponseError(_) => {
            CloudError::transient(format!("EC2 did not answer: {}", in_words(&err)))
        }
        _ => CloudError { kind: CloudErrorKind::Other, code: String::new(), message: in_words(&err) },
    }
}

/// An error and its sources in words, `: `-joined, each said once (the SDK's own context
/// rendering ends with a Debug dump of the whole error).
fn in_words(err: &(dyn std::error::Error + 'static)) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut next = Some(err);
    while let Some(e) = next {
        let text = e.to_string();
        if !text.is_empty() && !parts.iter().any(|p| p.contains(&text)) {
            parts.push(text);
        }
        next = e.source();
    }
    parts.join(": ")
}

fn to_u64(n: Option<i32>) -> Option<u64> {
    n.and_then(|n| u64::try_from(n).ok())
}

fn to_i32(n: u64) -> i32 {
    i32::try_from(n).unwrap_or(i32::MAX)
}

fn tags_of(tags: &[Tag]) -> BTreeMap<String, String> {
    tags.iter().filter_map(|t| Some((t.key()?.to_owned(), t.value().unwrap_or("").to_owned()))).collect()
}

fn sdk_tags(tags: &BTreeMap<String, String>) -> Vec<Tag> {
    tags.iter().map(|(k, v)| Tag::builder().key(k).value(v).build()).collect()
}

fn volume_of(v: &aws_sdk_ec2::types::Volume) -> Volume {
    Volume {
        id: v.volume_id().unwrap_or_default().to_owned(),
        size_gib: to_u64(v.size()).unwrap_or(0),
        volume_type: v.volume_type().map(|t| t.as_str().to_owned()).unwrap_or_default(),
        iops: to_u64(v.iops()),
        throughput: to_u64(v.throughput()),
        availability_zone: v.availability_zone().unwrap_or_default().to_owned(),
        state: VolumeState::parse(v.state().map_or("", |s| s.as_str())),
        encrypted: v.encrypted().unwrap_or(false),
        kms_key_id: v.kms_key_id().map(str::to_owned),
        snapshot_id: v.snapshot_id().filter(|s| !s.is_empty()).map(str::to_owned),
        tags: tags_of(v.tags()),
        attachments: v
            .attachments()
            .iter()
            .map(|a| VolumeAttachment {
                instance_id: a.instance_id().unwrap_or_default().to_owned(),
                device: a.device().unwrap_or_default().to_owned(),
                state: AttachState::parse(a.state().map_or("", |s| s.as_str())),
            })
            .collect(),
        create_time: v.create_time().map(ToString::to_string),
    }
}

fn sdk_filters(filters: &[(String, Vec<String>)]) -> Option<Vec<Filter>> {
    (!filters.is_empty()).then(|| {
        filters
            .iter()
            .map(|(name, values)| Filter::builder().name(name).set_values(Some(values.clone())).build())
            .collect()
    })
}

/// TagSpecifications for a create call: none without tags (EC2 refuses an empty one).
fn tag_spec(resource: ResourceType, tags: &BTreeMap<String, String>) -> Option<Vec<TagSpecification>> {
    (!tags.is_empty())
        .then(|| vec![TagSpecification::builder().resource_type(resource).set_tags(Some(sdk_tags(tags))).build()])
}

fn snapshot_of(s: &aws_sdk_ec2::types::Snapshot) -> Snapshot {
    Snapshot {
        id: s.snapshot_id().unwrap_or_default().to_owned(),
        volume_id: s.volume_id().unwrap_or_default().to_owned(),
        state: SnapshotState::parse(s.state().map_or("", |st| st.as_str())),
        progress: s.progress().filter(|p| !p.is_empty()).map(str::to_owned),
        size_gib: to_u64(s.volume_size()).unwrap_or(0),
        description: s.description().unwrap_or_default().to_owned(),
        encrypted: s.encrypted().unwrap_or(false),
        owner_id: s.owner_id().map(str::to_owned),
        start_time: s.start_time().map(ToString::to_string),
        tags: tags_of(s.tags()),
    }
}

#[async_trait]
impl Ec2Api for AwsEc2 {
    async fn create_volume(&self, req: &CreateVolumeRequest) -> Result<Volume, CloudError> {
        let spec = tag_spec(ResourceType::Volume, &req.tags);
        let out = self
            .client
            .create_volume()
            .availability_zone(&req.availability_zone)
            .set_size(req.size_gib.map(to_i32))
            .volume_type(VolumeType::from(req.volume_type.as_str()))
            .set_iops(req.iops.map(to_i32))
            .set_throughput(req.throughput.map(to_i32))
            .encrypted(req.encrypted || req.kms_key_id.is_some())
            .set_kms_key_id(req.kms_key_id.clone())
            .set_snapshot_id(req.snapshot_id.clone())
            .client_token(&req.client_token)
            .set_tag_specifications(spec)
            .send()
            .await
            .map_err(cloud_error)?;
        Ok(Volume {
            id: out.volume_id().unwrap_or_default().to_owned(),
            size_gib: to_u64(out.size()).unwrap_or(0),
            volume_type: out.volume_type().map(|t| t.as_str().to_owned()).unwrap_or_default(),
            iops: to_u64(out.iops()),
            throughput: to_u64(out.throughput()),
            availability_zone: out.availability_zone().unwrap_or_default().to_owned(),
            state: VolumeState::parse(out.state().map_or("creating", |s| s.as_str())),
            encrypted: out.encrypted().unwrap_or(false),
            kms_key_id: out.kms_key_id().map(str::to_owned),
            snapshot_id: out.snapshot_id().filter(|s| !s.is_empty()).map(str::to_owned),
            tags: tags_of(out.tags()),
            attachments: Vec::new(),
            create_time: out.create_time().map(ToString::to_string),
        })
    }

    async fn describe_volumes(&self, query: &VolumeQuery) -> Result<VolumePage, CloudError> {
        let out = self
            .client
            .describe_volumes()
            .set_volume_ids((!query.ids.is_empty()).then(|| query.ids.clone()))
            .set_filters(sdk_filters(&query.filters))
            .set_max_results(query.max_results.map(|m| i32::try_from(m).unwrap_or(1000)))
            .set_next_token(query.next_token.clone())
            .send()
            .await
            .map_err(cloud_error)?;
        Ok(VolumePage {
            volumes: out.volumes().iter().map(volume_of).collect(),
            next_token: out.next_token().filter(|t| !t.is_empty()).map(str::to_owned),
        })
    }

    async fn attach_volume(&self, volume_id: &str, instance_id: &str, device: &str) -> Result<AttachState, CloudError> {
        let out = self
            .client
            .attach_volume()
            .volume_id(volume_id)
            .instance_id(instance_id)
            .device(device)
            .send()
            .await
            .map_err(cloud_error)?;
        Ok(AttachState::parse(out.state().map_or("attaching", |s| s.as_str())))
    }

    async fn detach_volume(&self, volume_id: &str, instance_id: &str, force: bool) -> Result<(), CloudError> {
        self.client
            .detach_volume()
            .volume_id(volume_id)
            .instance_id(instance_id)
            .force(force)
            .send()
            .await
            .map_err(cloud_error)?;
        Ok(())
    }

    async fn delete_volume(&self, volume_id: &str) -> Result<(), CloudError> {
        self.client.delete_volume().volume_id(volume_id).send().await.map_err(cloud_error)?;
        Ok(())
    }

    async fn create_tags(&self, resource_id: &str, tags: &BTreeMap<String, String>) -> Result<(), CloudError> {
        self.client
            .create_tags()
            .resources(resource_id)
            .set_tags(Some(sdk_tags(tags)))
            .send()
            .await
            .map_err(cloud_error)?;
        Ok(())
    }

    async fn describe_instance(&self, instance_id: &str) -> Result<Instance, CloudError> {
        let out = self.client.describe_instances().instance_ids(instance_id).send().await.map_err(cloud_error)?;
        let instance = out
            .reservations()
            .iter()
            .flat_map(aws_sdk_ec2::types::Reservation::instances)
            .find(|i| i.instance_id() == Some(instance_id))
            .ok_or_else(|| {
                CloudError::from_code(
                    "InvalidInstanceID.NotFound",
                    &format!("The instance ID '{instance_id}' does not exist"),
                    Some(400),
                )
            })?;
        Ok(Instance {
            id: instance_id.to_owned(),
            availability_zone: instance.placement().and_then(|p| p.availability_zone()).unwrap_or_default().to_owned(),
            device_names: instance
                .block_device_mappings()
                .iter()
                .filter_map(|m| m.device_name().map(str::to_owned))
                .collect(),
            instance_type: instance.instance_type().map(|t| t.as_str().to_owned()).unwrap_or_default(),
            network_interfaces: u32::try_from(instance.network_interfaces().len()).unwrap_or(u32::MAX),
        })
    }

    async fn describe_instance_type(&self, instance_type: &str) -> Result<InstanceTypeLimits, CloudError> {
        let out = self
            .client
            .describe_instance_types()
            .instance_types(aws_sdk_ec2::types::InstanceType::from(instance_type))
            .send()
            .await
            .map_err(cloud_error)?;
        let info = out.instance_types().first().ok_or_else(|| {
            CloudError::from_code(
                "InvalidInstanceType",
                &format!("The instance type '{instance_type}' is not known"),
                Some(400),
            )
        })?;
        let ebs = info.ebs_info();
        let disks = info
            .instance_storage_info()
            .map_or(0, |s| s.disks().iter().map(|d| d.count().and_then(|c| u32::try_from(c).ok()).unwrap_or(0)).sum());
        Ok(InstanceTypeLimits {
            max_attachments: ebs
                .and_then(aws_sdk_ec2::types::EbsInfo::maximum_ebs_attachments)
                .and_then(|n| u32::try_from(n).ok()),
            shared: !matches!(
                ebs.and_then(|e| e.attachment_limit_type()),
                Some(aws_sdk_ec2::types::AttachmentLimitType::Dedicated)
            ),
            instance_store_disks: disks,
        })
    }

    async fn create_snapshot(&self, req: &CreateSnapshotRequest) -> Result<Snapshot, CloudError> {
        let out = self
            .client
            .create_snapshot()
            .volume_id(&req.volume_id)
            .description(&req.description)
            .set_tag_specifications(tag_spec(ResourceType::Snapshot, &req.tags))
            .send()
            .await
            .map_err(cloud_error)?;
        Ok(Snapshot {
            id: out.snapshot_id().unwrap_or_default().to_owned(),
            volume_id: out.volume_id().unwrap_or(&req.volume_id).to_owned(),
            state: SnapshotState::parse(out.state().map_or("pending", |st| st.as_str())),
            progress: out.progress().filter(|p| !p.is_empty()).map(str::to_owned),
            size_gib: to_u64(out.volume_size()).unwrap_or(0),
            description: out.description().unwrap_or_default().to_owned(),
            encrypted: out.encrypted().unwrap_or(false),
            owner_id: out.owner_id().map(str::to_owned),
            start_time: out.start_time().map(ToString::to_string),
            tags: tags_of(out.tags()),
        })
    }

    async fn describe_snapshots(&self, query: &SnapshotQuery) -> Result<SnapshotPage, CloudError> {
        let out = self
            .client
            .describe_snapshots()
            .set_snapshot_ids((!query.ids.is_empty()).then(|| query.ids.clone()))
            .set_owner_ids((!query.owners.is_empty()).then(|| query.owners.clone()))
            .set_filters(sdk_filters(&query.filters))
            .set_max_results(query.max_results.map(|m| i32::try_from(m).unwrap_or(1000)))
            .set_next_token(query.next_token.clone())
            .send()
            .await
            .map_err(cloud_error)?;
        Ok(SnapshotPage {
            snapshots: out.snapshots().iter().map(snapshot_of).collect(),
            next_token: out.next_token().filter(|t| !t.is_empty()).map(str::to_owned),
        })
    }

    async fn delete_snapshot(&self, snapshot_id: &str) -> Result<(), CloudError> {
        self.client.delete_snapshot().snapshot_id(snapshot_id).send().await.map_err(cloud_error)?;
        Ok(())
    }

    async fn copy_snapshot(&self, req: &CopySnapshotRequest) -> Result<String, CloudError> {
        let out = self
            .client
            .copy_snapshot()
            .source_snapshot_id(&req.source_snapshot_id)
            .source_region(&req.source_region)
            .description(&req.description)
            .set_tag_specifications(tag_spec(ResourceType::Snapshot, &req.tags))
            .send()
            .await
            .map_err(cloud_error)?;
        out.snapshot_id()
            .filter(|id| !id.is_empty())
            .map(str::to_owned)
            .ok_or_else(|| CloudError::from_code("InvalidResponse", "CopySnapshot returned no snapshot ID", None))
    }

    async fn modify_volume(&self, req: &ModifyVolumeRequest) -> Result<VolumeModification, CloudError> {
        let out = self
            .client
            .modify_volume()
            .volume_id(&req.volume_id)
            .set_size(req.size_gib.map(to_i32))
            .set_volume_type(req.volume_type.as_deref().map(VolumeType::from))
            .set_iops(req.iops.map(to_i32))
            .set_throughput(req.throughput.map(to_i32))
            .send()
            .await
            .map_err(cloud_error)?;
        out.volume_modification()
            .map(modification)
            .ok_or_else(|| CloudError::from_code("InvalidResponse", "ModifyVolume returned no modification", None))
    }

    async fn describe_modification(&self, volume_id: &str) -> Result<Option<VolumeModification>, CloudError> {
        let out = match self.client.describe_volumes_modifications().volume_ids(volume_id).send().await {
            Ok(out) => out,
            Err(e) if e.code() == Some("InvalidVolumeModification.NotFound") => return Ok(None),
            Err(e) => return Err(cloud_error(e)),
        };
        Ok(out
            .volumes_modifications()
            .iter()
            .max_by_key(|m| m.start_time().map(aws_sdk_ec2::primitives::DateTime::secs))
            .map(modification))
    }
}

fn modification(m: &aws_sdk_ec2::types::VolumeModification) -> VolumeModification {
    VolumeModification {
        volume_id: m.volume_id().unwrap_or("").to_owned(),
        state: ModificationState::parse(m.modification_state().map_or("", |s| s.as_str())),
        target_size_gib: to_u64(m.target_size()),
        target_type: m.target_volume_type().map(|t| t.as_str().to_owned()),
        target_iops: to_u64(m.target_iops()),
        target_throughput: to_u64(m.target_throughput()),
        progress: m.progress().and_then(|p| u64::try_from(p).ok()),
        status_message: m.status_message().map(str::to_owned),
    }
}
