//! The `ebs` backend (aliases `ec2`, `aws`): EC2 Elastic Block Store volumes that follow the
//! container from host to host.
//!
//! # Layout
//!
//! - [`api`]: the narrow [`api::Ec2Api`] trait, its SDK-free types and the one mapping of EC2
//!   error codes to sentinel kinds. [`cloud`] implements it on `aws-sdk-ec2` (the only file
//!   naming `aws_sdk_*`); [`fake`] is an in-process EC2 state machine for tests.
//! - [`settings`]: the `ebs.*` keys; [`options`]: the create options; [`identity`]: instance
//!   ID / AZ / region from config or IMDSv2; [`devices`]: device names and device discovery;
//!   [`wait`]: bounded polls and throttling retries; [`cache`]: what EC2 last said;
//!   [`snapshots`]: the snapshot operations (create, list, copy across regions, remove, wait).
//! - This file: [`EbsBackend`] (the [`Backend`]) and the [`Attacher`] that plugs EBS into the
//!   shared [`BlockPipeline`] (probe → format if blank → mount → grow → data directory).
//!
//! # Behaviour
//!
//! - **Names.** A volume's name is its EC2 `Name` tag, `<ebs.tag>/<name>` with `ebs.tag` set,
//!   on create, lookup and list alike. Lookups span the whole region: a volume in another AZ is
//!   reported as such, never duplicated; two volumes with one name are an error listing both.
//! - **Ownership.** Every volume created here carries `rexray-rs/managed=true` from its
//!   CreateVolume call on (TagSpecifications), plus its fsType and data-directory owner, so every
//!   host formats and mounts it alike. The cached list holds owned volumes only. Mounting or
//!   creating the name of an unowned volume (one REX-Ray made) adopts it (CreateTags).
//! - **Create** is idempotent: ClientToken = sha256 of the Name tag (with a suffix after a
//!   mismatch or a vanished volume), then a wait until `available`. A volume that vanishes right
//!   after CreateVolume is reported as the KMS problem it almost always is.
//! - **Attach.** Reuse our own attachment; otherwise refuse a volume attached elsewhere (naming
//!   the instance) unless `preempt` is on, in which case force-detach it there and wait. Pick a
//!   device name under the allocator's lock, AttachVolume, wait for `attached`, detach and fail if
//!   it stays `attaching`, then find the device (NVMe link or Xen name) and check its serial.
//! - **Detach.** After the pipeline unmounted and synced: DetachVolume (never forced) and wait
//!   until detached. **Remove** is refused while attached anywhere; gone already is success.
//! - **Cost.** Get/List read the [`cache::VolumeCache`]. A Mount of a detached volume makes three
//!   EC2 calls besides the attach wait: DescribeVolumes (by name), DescribeInstances (device
//!   names in use), AttachVolume.

pub mod api;
pub mod cache;
pub mod cloud;
pub mod devices;
pub mod fake;
pub mod identity;
pub mod options;
pub mod settings;
pub mod snapshots;
pub mod wait;

use std::collections::BTreeMap;
use std::fmt;
use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use sha2::{Digest, Sha256};

use self::api::{AttachState, CloudError, CloudErrorKind, CreateVolumeRequest, Ec2Api, Volume, VolumeQuery};
use self::cache::VolumeCache;
use self::devices::{find_device, DeviceAllocator, DeviceHost, Found, SysDeviceHost};
use self::identity::{Identity, Imds, Metadata};
use self::options::{EbsDefaults, EbsOptions, EBS_SPECS};
use self::settings::EbsSettings;
use self::wait::{Poll, RetryPolicy, StatusWait, WaitError};
use super::block::{Attacher, Attachment, BlockDefaults, BlockPipeline, MountLayout};
use super::options::Options;
use super::{Backend, BackendError, Scope};
use crate::config::ServiceConfig;
use crate::os::linux::LinuxOs;
use crate::os::BlockOs;
use crate::service::name::VolumeName;

/// The ownership tag every volume created here carries.
pub const OWNER_TAG: &str = "rexray-rs/managed";
/// Its value.
pub const OWNER_VALUE: &str = "true";

/// Block options kept as tags, so every host formats and mounts the volume alike:
/// (tag key, option key).
pub const BLOCK_TAGS: &[(&str, &str)] = &[
    ("rexray-rs/fsType", "fsType"),
    ("rexray-rs/uid", "uid"),
    ("rexray-rs/gid", "gid"),
    ("rexray-rs/mode", "mode"),
    ("rexray-rs/mkfsOptions", "mkfsOptions"),
    ("rexray-rs/mountOptions", "mountOptions"),
];

/// Volumes per DescribeVolumes page when listing (EC2's maximum with filters).
const LIST_PAGE: u32 = 500;

/// A future returned by a client factory.
pub type ApiFuture = Pin<Box<dyn Future<Output = Arc<dyn Ec2Api>> + Send>>;

/// Makes the EC2 client for a connection (the real SDK, or a fake in tests).
pub type ApiFactory = Box<dyn Fn(cloud::Connection) -> ApiFuture + Send + Sync>;

/// Escapes `*`, `?` and `\` for an EC2 filter value.
fn filter_literal(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for c in value.chars() {
        if matches!(c, '*' | '?' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// A hex sha256: the client token for a Name tag (64 characters, EC2's limit).
pub fn client_token(base: &str) -> String {
    Sha256::digest(base.as_bytes()).iter().map(|b| format!("{b:02x}")).collect()
}

fn refused(msg: impl Into<String>) -> BackendError {
    BackendError::Refused(msg.into())
}

/// An EC2 failure as a backend error: the operation, the volume (and ID) and EC2's words, with
/// a hint for the failures people can fix.
fn cloud_failed(op: &str, name: &VolumeName, id: Option<&str>, e: &CloudError) -> BackendError {
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
    refused(format!("{op} volume {name}{id}: {e}{hint}"))
}

fn other_az(name: &VolumeName, volume: &Volume, here: &str) -> BackendError {
    refused(format!(
        "volume {name} is in {}; this instance is in {here} (volume {}: EBS volumes attach only within their availability zone; run the container on a host in {} or move the data with a snapshot)",
        volume.availability_zone, volume.id, volume.availability_zone
    ))
}

fn describe_attachments(volume: &Volume) -> String {
    volume
        .live_attachments()
        .map(|a| format!("instance {} (as {}, {})", a.instance_id, a.device, a.state.as_str()))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Why waiting for a new volume failed.
enum CreateWait {
    /// It disappeared (or went to `error`/`deleting`); carries what was seen.
    Vanished(String),
    /// Anything else.
    Failed(BackendError),
}

/// Everything the backend and its attacher share.
struct Core {
    settings: EbsSettings,
    /// `mount.preempt`.
    preempt: bool,
    /// Config defaults for the EBS options.
    defaults: EbsDefaults,
    /// How this host shows attached volumes.
    host: Arc<dyn DeviceHost>,
    /// Instance metadata (used only when the settings leave gaps).
    metadata: Arc<dyn Metadata>,
    /// Makes the EC2 client.
    factory: ApiFactory,
    /// The identity and the client, made on first use (after the socket listens).
    connected: tokio::sync::OnceCell<(Identity, Arc<dyn Ec2Api>)>,
    /// What EC2 last said, by Docker name.
    cache: VolumeCache,
    /// Device names.
    devices: DeviceAllocator,
    /// Retries of throttled and transient calls.
    retry: RetryPolicy,
    /// Client-token suffix per Name tag (bumped after a mismatch or a vanished volume).
    token_suffix: Mutex<BTreeMap<String, u32>>,
    /// The volume `activate` just described, for its `attach` to use instead of describing again.
    fresh: Mutex<BTreeMap<String, Volume>>,
    /// EC2 clients of other regions (snapshot copies), by region.
    regional: tokio::sync::Mutex<BTreeMap<String, Arc<dyn Ec2Api>>>,
}

impl fmt::Debug for Core {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Core")
            .field("settings", &self.settings)
            .field("preempt", &self.preempt)
            .field("connected", &self.connected.get().map(|(i, _)| i))
            .finish_non_exhaustive()
    }
}

impl Core {
    fn status_wait(&self) -> StatusWait {
        StatusWait {
            max_attempts: self.settings.status_max_attempts,
            initial_delay: self.settings.status_initial_delay,
            timeout: self.settings.status_timeout,
        }
    }

    /// The identity and the EC2 client, made on the first call.
    async fn connect(&self) -> Result<(Identity, Arc<dyn Ec2Api>), BackendError> {
        let pair = self
            .connected
            .get_or_try_init(|| async {
                let found = identity::discover(&self.settings, self.metadata.as_ref())
                    .await
                    .map_err(|e| refused(format!("find this instance: {e}")))?;
                let conn = cloud::Connection {
                    region: found.region.clone(),
                    endpoint: self.settings.endpoint_url(),
                    static_credentials: self.settings.access_key.clone().zip(self.settings.secret_key.clone()),
                };
                tracing::debug!(?conn, "connecting to EC2");
                let api = (self.factory)(conn).await;
                let availability_zone = match found.availability_zone {
                    Some(az) => az,
                    None => {
                        let id = found.instance_id.clone();
                        self.retry
                            .run("DescribeInstances", || api.describe_instance(&id))
                            .await
                            .map_err(|e| refused(format!("find the availability zone of instance {id}: {e}")))?
                            .availability_zone
                    }
                };
                let identity = Identity { instance_id: found.instance_id, availability_zone, region: found.region };
                tracing::info!(instance = %identity.instance_id, az = %identity.availability_zone, region = %identity.region, "EC2 identity");
                Ok::<_, BackendError>((identity, api))
            })
            .await?;
        Ok((pair.0.clone(), Arc::clone(&pair.1)))
    }

    /// The Name tag of `name` (a volume's or a snapshot's): under the `ebs.tag` namespace if set.
    fn name_tag(&self, name: impl std::fmt::Display) -> String {
        match &self.settings.tag {
            Some(tag) => format!("{tag}/{name}"),
            None => name.to_string(),
        }
    }

    /// The name a Name tag stands for, if it is in our namespace (the inverse of [`Self::name_tag`]).
    fn untagged<'a>(&self, tag_value: &'a str) -> Option<&'a str> {
        match &self.settings.tag {
            Some(tag) => tag_value.strip_prefix(tag.as_str())?.strip_prefix('/'),
            None => Some(tag_value),
        }
    }

    /// The Docker name a Name tag stands for, if it is in our namespace.
    fn docker_name(&self, tag_value: &str) -> Option<VolumeName> {
        VolumeName::new(self.untagged(tag_value)?).ok()
    }

    /// Every page of a DescribeVolumes query.
    async fn describe_all(&self, api: &dyn Ec2Api, mut query: VolumeQuery) -> Result<Vec<Volume>, CloudError> {
        let mut all = Vec::new();
        loop {
            let page = self.retry.run("DescribeVolumes", || api.describe_volumes(&query)).await?;
            all.extend(page.volumes);
            match page.next_token {
                Some(token) => query.next_token = Some(token),
                None => return Ok(all),
            }
        }
    }

    /// The region's volumes named `name` (any AZ; not deleting or deleted), cached.
    async fn lookup(&self, api: &dyn Ec2Api, name: &VolumeName) -> Result<Vec<Volume>, BackendError> {
        let query = VolumeQuery::filtered(vec![("tag:Name".into(), vec![filter_literal(&self.name_tag(name))])]);
        let found = self
            .describe_all(api, query)
            .await
            .map_err(|e| cloud_failed("look up", name, None, &e))?
            .into_iter()
            .filter(|v| !matches!(v.state, api::VolumeState::Deleting | api::VolumeState::Deleted))
            .collect::<Vec<_>>();
        self.cache.put(name.as_str(), found.clone());
        Ok(found)
    }

    /// At most one volume, or an error listing them all.
    fn one(&self, name: &VolumeName, mut found: Vec<Volume>) -> Result<Option<Volume>, BackendError> {
        match found.len() {
            0 => Ok(None),
            1 => Ok(found.pop()),
            n => Err(refused(format!(
                "{n} EC2 volumes are named {}: {}; remove or rename all but one",
                self.name_tag(name),
                found
                    .iter()
                    .map(|v| format!("{} ({}, {})", v.id, v.availability_zone, v.state.as_str()))
                    .collect::<Vec<_>>()
                    .join(", ")
            ))),
        }
    }

    async fn require_one(&self, api: &dyn Ec2Api, ident: &Identity, name: &VolumeName) -> Result<Volume, BackendError> {
        let found = self.lookup(api, name).await?;
        self.one(name, found)?.ok_or_else(|| {
            refused(format!(
                "volume {name} does not exist in EC2 region {} (no volume is named {})",
                ident.region,
                self.name_tag(name)
            ))
        })
    }

    fn client_token(&self, name_tag: &str) -> String {
        let suffix = self.token_suffix.lock().expect("token map poisoned").get(name_tag).copied().unwrap_or(0);
        if suffix == 0 {
            client_token(name_tag)
        } else {
            client_token(&format!("{name_tag}-{suffix}"))
        }
    }

    fn bump_token(&self, name_tag: &str) {
        *self.token_suffix.lock().expect("token map poisoned").entry(name_tag.to_owned()).or_insert(0) += 1;
    }

    /// The tags a new volume gets.
    fn create_tags(&self, name: &VolumeName, opts: &Options, ebs: &EbsOptions) -> BTreeMap<String, String> {
        let mut tags = ebs.tags.clone();
        tags.insert("Name".into(), self.name_tag(name));
        tags.insert(OWNER_TAG.into(), OWNER_VALUE.into());
        for (tag, key) in BLOCK_TAGS {
            if let Some(v) = opts.get(*key) {
                tags.insert((*tag).into(), v.clone());
            }
        }
        tags
    }

    /// Waits until a new volume is usable.
    async fn wait_created(&self, api: &dyn Ec2Api, name: &VolumeName, id: &str) -> Result<Volume, CreateWait> {
        let result = self
            .status_wait()
            .run(|| async {
                let query = VolumeQuery::by_id(id);
                match self.retry.run("DescribeVolumes", || api.describe_volumes(&query)).await {
                    Ok(page) => match page.volumes.into_iter().next() {
                        Some(v) if v.state.is_ready() => Ok(Poll::Ready(v)),
                        Some(v) if v.state.is_gone() => Err(CreateWait::Vanished(v.state.as_str().to_owned())),
                        Some(v) => Ok(Poll::Pending(v.state.as_str().to_owned())),
                        None => Err(CreateWait::Vanished("not found".to_owned())),
                    },
                    Err(e) if e.kind == CloudErrorKind::NotFound => Err(CreateWait::Vanished("not found".to_owned())),
                    Err(e) => Err(CreateWait::Failed(cloud_failed("wait for new", name, Some(id), &e))),
                }
            })
            .await;
        match result {
            Ok(v) => Ok(v),
            Err(WaitError::Failed(e)) => Err(e),
            Err(WaitError::TimedOut { last, attempts, elapsed }) => Err(CreateWait::Failed(refused(format!(
                "volume {name} ({id}) is still {last} after {attempts} polls in {elapsed:?}; it is kept, and a later create or mount of {name} uses it once it is available"
            )))),
        }
    }

    /// The error for a volume that vanished right after CreateVolume.
    fn vanished(name: &VolumeName, id: &str, state: &str, kms: Option<&str>) -> BackendError {
        let key = kms.map_or_else(|| "the account's default EBS key".to_owned(), |k| format!("KMS key {k}"));
        refused(format!(
            "volume {name}: EC2 created {id} and then it vanished ({state}); EC2 does this when it cannot use the volume's encryption key ({key}): check that the key exists, is enabled, and that this instance's role may use it (kms:CreateGrant, kms:GenerateDataKeyWithoutPlaintext, kms:Decrypt, kms:DescribeKey)"
        ))
    }

    /// Creates volume `name`; `Ok` also when it exists (adopting an unowned one).
    async fn create(&self, name: &VolumeName, opts: &Options) -> Result<(), BackendError> {
        let tag = self.name_tag(name);
        if tag.chars().count() > 255 {
            return Err(refused(format!("the EC2 Name tag {tag:?} would be longer than 255 characters")));
        }
        let ebs = EbsOptions::from_options(opts, &self.defaults)?;
        let (ident, api) = self.connect().await?;
        let existing = self.lookup(api.as_ref(), name).await?;
        if let Some(v) = self.one(name, existing)? {
            if let Some(az) = opts.get("availabilityZone") {
                if *az != v.availability_zone {
                    return Err(refused(format!(
                        "volume {name} already exists in {} ({}), not in {az} as asked",
                        v.availability_zone, v.id
                    )));
                }
            }
            return self.adopt(api.as_ref(), name, v).await;
        }
        let availability_zone = ebs.availability_zone.clone().unwrap_or_else(|| ident.availability_zone.clone());
        let kms_key_id =
            ebs.kms_key_id.clone().or_else(|| if ebs.encrypted { self.settings.kms_key_id.clone() } else { None });
        let mut req = CreateVolumeRequest {
            size_gib: ebs.size_gib,
            availability_zone,
            volume_type: ebs.volume_type.clone(),
            iops: ebs.iops,
            throughput: ebs.throughput,
            encrypted: ebs.encrypted || kms_key_id.is_some(),
            kms_key_id: kms_key_id.clone(),
            snapshot_id: ebs.snapshot_id.clone(),
            tags: self.create_tags(name, opts, &ebs),
            client_token: String::new(),
        };
        for attempt in 0..2 {
            req.client_token = self.client_token(&tag);
            match self.retry.run("CreateVolume", || api.create_volume(&req)).await {
                Ok(created) => match self.wait_created(api.as_ref(), name, &created.id).await {
                    Ok(volume) => {
                        tracing::info!(volume = %name, id = %volume.id, az = %volume.availability_zone, size_gib = volume.size_gib, kind = %volume.volume_type, "created EBS volume");
                        self.cache.put(name.as_str(), vec![volume]);
                        return Ok(());
                    }
                    Err(CreateWait::Vanished(state)) => {
                        // The token now names a dead volume: the next CreateVolume needs a new one.
                        self.bump_token(&tag);
                        if attempt == 0 {
                            // Either a token reused after its volume was deleted (a fresh token
                            // fixes it) or an unusable KMS key (it vanishes again).
                            tracing::warn!(volume = %name, id = %created.id, %state, "the new volume vanished; retrying once with a new client token");
                            continue;
                        }
                        return Err(Self::vanished(name, &created.id, &state, kms_key_id.as_deref()));
                    }
                    Err(CreateWait::Failed(e)) => return Err(e),
                },
                Err(e) if e.kind == CloudErrorKind::IdempotentParameterMismatch => {
                    // Someone created the name meanwhile (other options), or the token was used
                    // for a volume deleted since.
                    if let Some(v) = self.one(name, self.lookup(api.as_ref(), name).await?)? {
                        return self.adopt(api.as_ref(), name, v).await;
                    }
                    self.bump_token(&tag);
                    if attempt == 0 {
                        tracing::warn!(volume = %name, "client token already used with other parameters; retrying with a new token");
                        continue;
                    }
                    return Err(cloud_failed("create", name, None, &e));
                }
                Err(e) => return Err(cloud_failed("create", name, None, &e)),
            }
        }
        Err(refused(format!("create volume {name}: gave up after a new client token")))
    }

    /// Accepts an existing volume as `name`, tagging it as ours if it is not yet.
    async fn adopt(&self, api: &dyn Ec2Api, name: &VolumeName, mut v: Volume) -> Result<(), BackendError> {
        if v.tags.get(OWNER_TAG).map(String::as_str) != Some(OWNER_VALUE) {
            let tags = BTreeMap::from([(OWNER_TAG.to_owned(), OWNER_VALUE.to_owned())]);
            self.retry
                .run("CreateTags", || api.create_tags(&v.id, &tags))
                .await
                .map_err(|e| cloud_failed("adopt", name, Some(&v.id), &e))?;
            tracing::info!(volume = %name, id = %v.id, "adopted an existing EBS volume (tagged {OWNER_TAG})");
            v.tags.extend(tags);
        } else {
            tracing::debug!(volume = %name, id = %v.id, "volume exists");
        }
        self.cache.put(name.as_str(), vec![v]);
        Ok(())
    }

    /// Polls volume `id` until `check` says ready.
    async fn poll_volume<T>(
        &self,
        api: &dyn Ec2Api,
        id: &str,
        check: impl Fn(Option<&Volume>) -> Poll<T>,
    ) -> Result<T, WaitError<CloudError>> {
        self.status_wait()
            .run(|| async {
                let query = VolumeQuery::by_id(id);
                match self.retry.run("DescribeVolumes", || api.describe_volumes(&query)).await {
                    Ok(page) => Ok(check(page.volumes.first())),
                    Err(e) if e.kind == CloudErrorKind::NotFound => Ok(check(None)),
                    Err(e) => Err(e),
                }
            })
            .await
    }

    /// Waits until `instance` holds no live attachment of volume `id`.
    async fn wait_detached(
        &self,
        api: &dyn Ec2Api,
        name: &VolumeName,
        id: &str,
        instance: &str,
    ) -> Result<(), BackendError> {
        let result = self
            .poll_volume(api, id, |v| match v.and_then(|v| v.attachment_to(instance)) {
                None => Poll::Ready(()),
                Some(a) => Poll::Pending(a.state.as_str().to_owned()),
            })
            .await;
        match result {
            Ok(()) => Ok(()),
            Err(WaitError::Failed(e)) => Err(cloud_failed("wait for the detach of", name, Some(id), &e)),
            Err(WaitError::TimedOut { last, attempts, elapsed }) => {
                let hint = if last == "busy" { " (busy: the device is still in use on that instance)" } else { "" };
                Err(refused(format!(
                    "volume {name} ({id}) is still {last} on instance {instance} after {attempts} polls in {elapsed:?}{hint}"
                )))
            }
        }
    }

    /// Finds the local device of volume `id` attached as `requested`, waiting for it to appear.
    async fn wait_device(&self, name: &VolumeName, id: &str, requested: &str) -> Result<PathBuf, BackendError> {
        let schedule = StatusWait {
            max_attempts: 200,
            initial_delay: std::time::Duration::from_millis(100),
            timeout: self.settings.status_timeout,
        };
        let result = schedule
            .run(|| async {
                let (host, links, vol_id, requested) = (
                    Arc::clone(&self.host),
                    self.settings.device_links_dir.clone(),
                    id.to_owned(),
                    requested.to_owned(),
                );
                let found = tokio::task::spawn_blocking(move || find_device(host.as_ref(), &links, &vol_id, &requested))
                    .await
                    .unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()));
                match found {
                    Found::Device { device, via } => Ok(Poll::Ready((device, via))),
                    Found::Missing(paths) => Ok(Poll::Pending(
                        paths.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", "),
                    )),
                    Found::WrongSerial { device, serial } => Err(refused(format!(
                        "volume {name} ({id}): device {} has serial {serial}, which names another volume; refusing to use it",
                        device.display()
                    ))),
                }
            })
            .await;
        match result {
            Ok((device, via)) => {
                tracing::debug!(volume = %name, device = %device.display(), via = %via.display(), "found the device");
                Ok(device)
            }
            Err(WaitError::Failed(e)) => Err(e),
            Err(WaitError::TimedOut { last, elapsed, .. }) => Err(refused(format!(
                "volume {name} ({id}) is attached as {requested}, but no device appeared at {last} within {elapsed:?}; on Nitro instances udev makes the nvme-Amazon_Elastic_Block_Store link: is {} the host's /dev/disk/by-id (bind-mount /dev into the plugin's container)?",
                self.settings.device_links_dir.display()
            ))),
        }
    }

    /// Detaches volume `id` from this instance (not forced) and waits; already detached is fine.
    async fn detach_from(
        &self,
        api: &dyn Ec2Api,
        name: &VolumeName,
        id: &str,
        instance: &str,
        force: bool,
    ) -> Result<(), BackendError> {
        match self.retry.run("DetachVolume", || api.detach_volume(id, instance, force)).await {
            Ok(()) => {}
            Err(e) if matches!(e.kind, CloudErrorKind::IncorrectState | CloudErrorKind::NotFound) => {
                tracing::debug!(volume = %name, %id, %instance, error = %e, "already detached");
            }
            Err(e) => return Err(cloud_failed("detach", name, Some(id), &e)),
        }
        self.wait_detached(api, name, id, instance).await
    }

    /// Attaches `vol` to this instance at a fresh device name and returns the local device.
    async fn attach_new(
        &self,
        api: &dyn Ec2Api,
        ident: &Identity,
        name: &VolumeName,
        vol: &Volume,
    ) -> Result<PathBuf, BackendError> {
        let me = ident.instance_id.as_str();
        let instance = self
            .retry
            .run("DescribeInstances", || api.describe_instance(me))
            .await
            .map_err(|e| cloud_failed("attach", name, Some(&vol.id), &e))?;
        if !instance.availability_zone.is_empty() && instance.availability_zone != vol.availability_zone {
            // The configured AZ was wrong about this instance: EC2 knows better.
            return Err(other_az(name, vol, &instance.availability_zone));
        }
        let mut used = instance.device_names;
        for _ in 0..3 {
            let reservation = self
                .devices
                .reserve(&vol.id, &used)
                .map_err(|e| refused(format!("attach volume {name} ({}): {e}", vol.id)))?;
            let device = reservation.device.clone();
            match self.retry.run("AttachVolume", || api.attach_volume(&vol.id, me, &device)).await {
                Ok(_) => {}
                Err(e) if e.kind == CloudErrorKind::DeviceInUse => {
                    tracing::warn!(volume = %name, %device, "device name in use on the instance; trying another");
                    reservation.taint();
                    used.push(device);
                    continue;
                }
                Err(e) if e.kind == CloudErrorKind::ZoneMismatch => {
                    return Err(refused(format!(
                        "volume {name} is in {}; EC2 refused to attach it to instance {me} ({e})",
                        vol.availability_zone
                    )))
                }
                Err(e) => return Err(cloud_failed("attach", name, Some(&vol.id), &e)),
            }
            let waited = self
                .poll_volume(api, &vol.id, |v| match v.and_then(|v| v.attachment_to(me)) {
                    Some(a) if a.state == AttachState::Attached => Poll::Ready(v.cloned()),
                    Some(a) => Poll::Pending(a.state.as_str().to_owned()),
                    None => Poll::Pending("not attached".to_owned()),
                })
                .await;
            match waited {
                Ok(v) => {
                    if let Some(v) = v {
                        self.cache.update(name.as_str(), v);
                    }
                }
                Err(WaitError::TimedOut { last, attempts, elapsed }) => {
                    reservation.taint();
                    let undo = self.detach_from(api, name, &vol.id, me, false).await;
                    let undo = match undo {
                        Ok(()) => "detached it again".to_owned(),
                        Err(e) => format!("and detaching it failed too: {e}"),
                    };
                    return Err(refused(format!(
                        "volume {name} ({}) was still {last} as {device} on instance {me} after {attempts} polls in {elapsed:?}; {undo}; {device} will not be used again for an hour, so a retry gets a fresh device name",
                        vol.id
                    )));
                }
                Err(WaitError::Failed(e)) => {
                    return Err(cloud_failed("wait for the attach of", name, Some(&vol.id), &e))
                }
            }
            drop(reservation);
            tracing::info!(volume = %name, id = %vol.id, %device, instance = %me, "attached EBS volume");
            return match self.wait_device(name, &vol.id, &device).await {
                Ok(path) => Ok(path),
                Err(e) => {
                    if let Err(undo) = self.detach_from(api, name, &vol.id, me, false).await {
                        tracing::warn!(volume = %name, error = %undo, "rollback: could not detach after the device did not appear");
                    }
                    Err(e)
                }
            };
        }
        Err(refused(format!("attach volume {name} ({}): every device name tried was in use", vol.id)))
    }

    async fn attach(&self, name: &VolumeName) -> Result<Attachment, BackendError> {
        let (ident, api) = self.connect().await?;
        let api = api.as_ref();
        let me = ident.instance_id.clone();
        let taken = self.fresh.lock().expect("fresh map poisoned").remove(name.as_str());
        let mut vol = match taken {
            Some(v) => v,
            None => self.require_one(api, &ident, name).await?,
        };
        if vol.availability_zone != ident.availability_zone {
            return Err(other_az(name, &vol, &ident.availability_zone));
        }
        if vol.state == api::VolumeState::Creating {
            vol = match self.wait_created(api, name, &vol.id).await {
                Ok(v) => v,
                Err(CreateWait::Vanished(state)) => {
                    return Err(Self::vanished(name, &vol.id, &state, vol.kms_key_id.as_deref()))
                }
                Err(CreateWait::Failed(e)) => return Err(e),
            };
        }
        if vol.state.is_gone() {
            return Err(refused(format!("volume {name} ({}) is {}", vol.id, vol.state.as_str())));
        }
        if let Some(mine) = vol.attachment_to(&me).cloned() {
            match mine.state {
                AttachState::Attached | AttachState::Attaching => {
                    if mine.state == AttachState::Attaching {
                        let waited = self
                            .poll_volume(api, &vol.id, |v| match v.and_then(|v| v.attachment_to(&me)) {
                                Some(a) if a.state == AttachState::Attached => Poll::Ready(()),
                                Some(a) => Poll::Pending(a.state.as_str().to_owned()),
                                None => Poll::Pending("not attached".into()),
                            })
                            .await;
                        if let Err(e) = waited {
                            let what = match e {
                                WaitError::TimedOut { last, .. } => last,
                                WaitError::Failed(e) => e.to_string(),
                            };
                            return Err(refused(format!(
                                "volume {name} ({}) is attached to this instance as {} but stays {what}",
                                vol.id, mine.device
                            )));
                        }
                    }
                    let device = self.wait_device(name, &vol.id, &mine.device).await?;
                    tracing::debug!(volume = %name, device = %device.display(), "already attached here");
                    return Ok(Attachment { device, newly_attached: false });
                }
                _ => self.wait_detached(api, name, &vol.id, &me).await?,
            }
        }
        let others: Vec<String> =
            vol.live_attachments().filter(|a| a.instance_id != me).map(|a| a.instance_id.clone()).collect();
        if !others.is_empty() {
            if !self.preempt {
                return Err(refused(format!(
                    "volume {name} ({}) is attached to {}; unmount it there, or turn on preemption (libstorage.integration.volume.operations.mount.preempt: true, or REXRAY_PREEMPT=true) to take it over",
                    vol.id,
                    describe_attachments(&vol)
                )));
            }
            for other in &others {
                tracing::warn!(volume = %name, id = %vol.id, instance = %other, "preempt: force-detaching the volume from the other instance");
                self.detach_from(api, name, &vol.id, other, true).await?;
            }
        }
        let device = self.attach_new(api, &ident, name, &vol).await?;
        Ok(Attachment { device, newly_attached: true })
    }

    async fn detach(&self, name: &VolumeName) -> Result<(), BackendError> {
        let (ident, api) = self.connect().await?;
        let api = api.as_ref();
        let Some(vol) = self.one(name, self.lookup(api, name).await?)? else {
            tracing::warn!(volume = %name, "volume not found in EC2; nothing to detach");
            return Ok(());
        };
        if vol.attachment_to(&ident.instance_id).is_none() {
            tracing::debug!(volume = %name, id = %vol.id, "not attached here");
            return Ok(());
        }
        self.detach_from(api, name, &vol.id, &ident.instance_id, false).await?;
        tracing::info!(volume = %name, id = %vol.id, instance = %ident.instance_id, "detached EBS volume");
        self.forget_attachment(name, vol, &ident.instance_id);
        Ok(())
    }

    /// Records in the cache that `vol` is no longer attached to `instance`.
    fn forget_attachment(&self, name: &VolumeName, mut vol: Volume, instance: &str) {
        vol.attachments.retain(|a| a.instance_id != instance);
        if vol.live_attachments().next().is_none() && vol.state == api::VolumeState::InUse {
            vol.state = api::VolumeState::Available;
        }
        self.cache.update(name.as_str(), vol);
    }

    async fn find_attached(&self, name: &VolumeName) -> Result<Option<PathBuf>, BackendError> {
        let (ident, api) = self.connect().await?;
        let Some(vol) = self.one(name, self.lookup(api.as_ref(), name).await?)? else { return Ok(None) };
        let Some(a) = vol.attachment_to(&ident.instance_id) else { return Ok(None) };
        let (host, links, id, dev) =
            (Arc::clone(&self.host), self.settings.device_links_dir.clone(), vol.id.clone(), a.device.clone());
        let found = tokio::task::spawn_blocking(move || find_device(host.as_ref(), &links, &id, &dev))
            .await
            .unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()));
        Ok(Some(match found {
            Found::Device { device, .. } => device,
            _ => PathBuf::from(&a.device),
        }))
    }

    /// Refreshes the cache with one paginated DescribeVolumes on the ownership tag.
    async fn refresh(&self, force: bool) -> Result<(), BackendError> {
        if !self.cache.begin_refresh(force) {
            return Ok(());
        }
        let result = async {
            let (_, api) = self.connect().await?;
            let mut filters = vec![(format!("tag:{OWNER_TAG}"), vec![OWNER_VALUE.to_owned()])];
            if let Some(tag) = &self.settings.tag {
                filters.push(("tag:Name".into(), vec![format!("{}/*", filter_literal(tag))]));
            }
            let query = VolumeQuery { filters, max_results: Some(LIST_PAGE), ..VolumeQuery::default() };
            let volumes =
                self.describe_all(api.as_ref(), query).await.map_err(|e| refused(format!("list EBS volumes: {e}")))?;
            let mut map: BTreeMap<String, Vec<Volume>> = BTreeMap::new();
            for v in volumes {
                if matches!(v.state, api::VolumeState::Deleting | api::VolumeState::Deleted) {
                    continue;
                }
                if let Some(n) = v.name_tag().and_then(|t| self.docker_name(t)) {
                    map.entry(n.to_string()).or_default().push(v);
                }
            }
            Ok::<_, BackendError>(map)
        }
        .await;
        match result {
            Ok(map) => {
                tracing::debug!(volumes = map.len(), "refreshed the EBS volume cache");
                self.cache.finish_refresh(Some(map));
                Ok(())
            }
            Err(e) => {
                tracing::warn!(error = %e, "could not refresh the EBS volume cache; keeping what it holds");
                self.cache.finish_refresh(None);
                Err(e)
            }
        }
    }
}

/// The [`Attacher`] the block pipeline calls.
#[derive(Debug, Clone)]
struct EbsAttacher(Arc<Core>);

#[async_trait]
impl Attacher for EbsAttacher {
    async fn attach(&self, name: &VolumeName, _opts: &Options) -> Result<Attachment, BackendError> {
        self.0.attach(name).await
    }

    async fn detach(&self, name: &VolumeName, _opts: &Options) -> Result<(), BackendError> {
        self.0.detach(name).await
    }

    async fn find_attached(&self, name: &VolumeName, _opts: &Options) -> Result<Option<PathBuf>, BackendError> {
        self.0.find_attached(name).await
    }
}

/// The EBS backend; see the module documentation.
#[derive(Debug, Clone)]
pub struct EbsBackend {
    core: Arc<Core>,
    pipeline: BlockPipeline,
}

/// What [`EbsBackend::with_parts`] is built from (tests swap in fakes).
pub struct Parts {
    /// Every syscall and tool of the block pipeline.
    pub os: Arc<dyn BlockOs>,
    /// How attached volumes show up.
    pub host: Arc<dyn DeviceHost>,
    /// Instance metadata.
    pub metadata: Arc<dyn Metadata>,
    /// Makes the EC2 client on first use.
    pub factory: ApiFactory,
}

impl fmt::Debug for Parts {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Parts").field("os", &self.os).field("host", &self.host).finish_non_exhaustive()
    }
}

impl Parts {
    /// Fakes or real parts around a ready EC2 client.
    pub fn with_api(
        os: Arc<dyn BlockOs>,
        host: Arc<dyn DeviceHost>,
        metadata: Arc<dyn Metadata>,
        api: Arc<dyn Ec2Api>,
    ) -> Self {
        Self {
            os,
            host,
            metadata,
            factory: Box::new(move |_| {
                let api = Arc::clone(&api);
                Box::pin(async move { api })
            }),
        }
    }
}

impl EbsBackend {
    /// The backend a service is configured with: the real OS, `/dev` links, IMDSv2 and
    /// `aws-sdk-ec2`. Makes no AWS or metadata call.
    ///
    /// # Errors
    /// [`BackendError::InvalidOption`] for a malformed `ebs.*` setting, or
    /// [`BackendError::Refused`] for a `mount.rootPath` that leaves the volume.
    pub fn new(service: &ServiceConfig) -> Result<Self, BackendError> {
        let env = |k: &str| std::env::var(k).ok();
        let parts = Parts {
            os: Arc::new(LinuxOs::new()),
            host: Arc::new(SysDeviceHost),
            metadata: Arc::new(Imds::from_env(&env)),
            factory: Box::new(|conn| {
                Box::pin(async move {
                    let api: Arc<dyn Ec2Api> = Arc::new(cloud::AwsEc2::connect(&conn).await);
                    api
                })
            }),
        };
        Self::with_parts(service, parts)
    }

    /// The backend over the given parts.
    ///
    /// # Errors
    /// As [`EbsBackend::new`].
    pub fn with_parts(service: &ServiceConfig, parts: Parts) -> Result<Self, BackendError> {
        let settings = EbsSettings::parse(&service.ebs)?;
        let integration = &service.integration;
        let defaults = EbsDefaults {
            volume_type: integration
                .default_volume_type
                .clone()
                .filter(|t| !t.is_empty())
                .map(|t| t.to_ascii_lowercase())
                .or_else(|| settings.default_volume_type.clone()),
            iops: integration.default_iops.filter(|n| *n > 0),
            availability_zone: integration.default_availability_zone.clone().filter(|a| !a.is_empty()),
        };
        let core = Arc::new(Core {
            devices: DeviceAllocator::new(settings.use_large_device_range),
            retry: RetryPolicy::new(settings.max_retries),
            settings,
            preempt: integration.preempt,
            defaults,
            host: parts.host,
            metadata: parts.metadata,
            factory: parts.factory,
            connected: tokio::sync::OnceCell::new(),
            cache: VolumeCache::default(),
            token_suffix: Mutex::default(),
            fresh: Mutex::default(),
            regional: tokio::sync::Mutex::default(),
        });
        let block_defaults =
            BlockDefaults { size_gib: integration.default_size_gib, fs_type: integration.default_fs_type.clone() };
        let layout = MountLayout::from_integration(integration)?;
        let attacher = Arc::new(EbsAttacher(Arc::clone(&core)));
        let pipeline = BlockPipeline::new(parts.os, attacher, layout, block_defaults);
        Ok(Self { core, pipeline })
    }

    /// The Name tag volume `name` has in EC2.
    pub fn name_tag(&self, name: &VolumeName) -> String {
        self.core.name_tag(name)
    }

    /// This host's identity (connecting on first use).
    ///
    /// # Errors
    /// The identity could not be found out.
    pub async fn identity(&self) -> Result<Identity, BackendError> {
        self.core.connect().await.map(|(i, _)| i)
    }

    /// Every volume this backend owns, by name, from the cache (refreshed with one paginated
    /// DescribeVolumes when older than [`cache::REFRESH_AFTER`], or when `force`). A failed
    /// refresh answers from the cache as it is.
    pub async fn list(&self, force: bool) -> BTreeMap<String, Vec<Volume>> {
        if let Err(e) = self.core.refresh(force).await {
            tracing::debug!(error = %e, "listing from the cache as it is");
        }
        self.core.cache.all()
    }

    /// What the cache holds about `name` (no EC2 call).
    pub fn cached(&self, name: &VolumeName) -> Vec<Volume> {
        self.core.cache.get(name.as_str())
    }

    /// Merges the volume's tags (fsType, owner, mount/mkfs options) into its stored options: the
    /// tags win, so every host treats the volume alike.
    fn with_tag_options(opts: &Options, volume: &Volume) -> Options {
        let mut merged = opts.clone();
        for (tag, key) in BLOCK_TAGS {
            if let Some(v) = volume.tags.get(*tag).filter(|v| !v.is_empty()) {
                merged.insert((*key).to_owned(), v.clone());
            }
        }
        merged
    }

    fn schedule_refresh(&self) {
        if let Ok(handle) = tokio::runtime::Handle::try_current() {
            let core = Arc::clone(&self.core);
            handle.spawn(async move {
                let _ = core.refresh(false).await;
            });
        }
    }
}

#[async_trait]
impl Backend for EbsBackend {
    fn kind(&self) -> &'static str {
        "ebs"
    }

    fn scope(&self) -> Scope {
        Scope::Global
    }

    fn parse_options(&self, raw: &BTreeMap<String, String>) -> Result<Options, BackendError> {
        let size_given = raw.keys().any(|k| k.eq_ignore_ascii_case("size"));
        let opts = self.pipeline.parse_options(raw, EBS_SPECS)?;
        options::complete(opts, size_given, &self.core.defaults)
    }

    async fn create(&self, name: &VolumeName, opts: &Options) -> Result<(), BackendError> {
        self.core.create(name, opts).await
    }

    async fn activate(&self, name: &VolumeName, opts: &Options) -> Result<PathBuf, BackendError> {
        let (ident, api) = self.core.connect().await?;
        let vol = self.core.require_one(api.as_ref(), &ident, name).await?;
        if vol.availability_zone != ident.availability_zone {
            return Err(other_az(name, &vol, &ident.availability_zone));
        }
        if vol.tags.get(OWNER_TAG).map(String::as_str) != Some(OWNER_VALUE) {
            self.core.adopt(api.as_ref(), name, vol.clone()).await?;
        }
        let merged = Self::with_tag_options(opts, &vol);
        self.core.fresh.lock().expect("fresh map poisoned").insert(name.to_string(), vol);
        let result = self.pipeline.activate(name, &merged).await;
        self.core.fresh.lock().expect("fresh map poisoned").remove(name.as_str());
        result
    }

    async fn deactivate(&self, name: &VolumeName, opts: &Options) -> Result<(), BackendError> {
        self.pipeline.deactivate(name, opts).await
    }

    async fn remove(&self, name: &VolumeName, _opts: &Options) -> Result<(), BackendError> {
        let (_, api) = self.core.connect().await?;
        let api = api.as_ref();
        let Some(vol) = self.core.one(name, self.core.lookup(api, name).await?)? else {
            tracing::warn!(volume = %name, "volume already gone from EC2");
            self.pipeline.remove_mount_dir(name).await;
            return Ok(());
        };
        let (ident, _) = self.core.connect().await?;
        let only_here = vol.live_attachments().all(|a| a.instance_id == ident.instance_id);
        if vol.live_attachments().next().is_some() && only_here && !self.pipeline.is_active(name).await? {
            // Left attached here by an earlier failure; nothing uses it: let it go first.
            tracing::warn!(volume = %name, id = %vol.id, "attached to this instance but not mounted; detaching before the delete");
            self.core.detach_from(api, name, &vol.id, &ident.instance_id, false).await?;
        } else if vol.live_attachments().next().is_some() {
            return Err(refused(format!(
                "volume {name} ({}) is attached to {}: unmount it there before removing it",
                vol.id,
                describe_attachments(&vol)
            )));
        }
        match self.core.retry.run("DeleteVolume", || api.delete_volume(&vol.id)).await {
            Ok(()) => tracing::info!(volume = %name, id = %vol.id, "deleted EBS volume"),
            Err(e) if e.kind == CloudErrorKind::NotFound => {
                tracing::warn!(volume = %name, id = %vol.id, "volume already gone from EC2");
            }
            Err(e) => return Err(cloud_failed("remove", name, Some(&vol.id), &e)),
        }
        self.core.cache.forget(name.as_str(), &vol.id);
        self.pipeline.remove_mount_dir(name).await;
        Ok(())
    }

    async fn is_active(&self, name: &VolumeName, _opts: &Options) -> Result<bool, BackendError> {
        self.pipeline.is_active(name).await
    }

    fn mountpoint(&self, name: &VolumeName, _opts: &Options) -> PathBuf {
        self.pipeline.mountpoint(name)
    }

    /// Every owned volume in the region, from the cache (refreshed when stale).
    async fn known_volumes(&self) -> Vec<String> {
        self.list(false).await.into_keys().collect()
    }

    /// Whether an owned volume of that name exists, from the cache (refreshed when stale).
    async fn knows(&self, name: &VolumeName) -> bool {
        if self.cached(name).is_empty() {
            self.list(false).await;
        }
        !self.cached(name).is_empty()
    }

    /// From the cache only: `volumeID`, `sizeGiB`, `volumeType`, `iops`, `throughput`,
    /// `availabilityZone`, `state`, `attachedInstance`, `device`, `encrypted` (and `kmsKeyID`,
    /// `snapshotID`, `fsType`, `ebsName`). A stale cache is refreshed in the background.
    fn status(&self, name: &VolumeName, opts: &Options) -> BTreeMap<String, serde_json::Value> {
        use serde_json::Value;
        self.schedule_refresh();
        let mut status = BTreeMap::new();
        status.insert("ebsName".into(), Value::from(self.core.name_tag(name)));
        let volumes = self.core.cache.get(name.as_str());
        if let Some(fs) = opts.get("fsType") {
            status.insert("fsType".into(), Value::from(fs.clone()));
        }
        let Some(v) = volumes.first() else {
            return status;
        };
        if volumes.len() > 1 {
            status.insert("duplicates".into(), volumes.iter().map(|v| Value::from(v.id.clone())).collect());
        }
        status.insert("volumeID".into(), v.id.clone().into());
        status.insert("sizeGiB".into(), v.size_gib.into());
        status.insert("volumeType".into(), v.volume_type.clone().into());
        status.insert("iops".into(), v.iops.map_or(Value::Null, Value::from));
        status.insert("throughput".into(), v.throughput.map_or(Value::Null, Value::from));
        status.insert("availabilityZone".into(), v.availability_zone.clone().into());
        status.insert("state".into(), v.state.as_str().into());
        status.insert("encrypted".into(), v.encrypted.into());
        if let Some(k) = &v.kms_key_id {
            status.insert("kmsKeyID".into(), k.clone().into());
        }
        if let Some(s) = &v.snapshot_id {
            status.insert("snapshotID".into(), s.clone().into());
        }
        if let Some(fs) = v.tags.get("rexray-rs/fsType") {
            status.insert("fsType".into(), fs.clone().into());
        }
        let attached = v.live_attachments().next();
        status.insert("attachedInstance".into(), attached.map_or(Value::Null, |a| a.instance_id.clone().into()));
        status.insert("device".into(), attached.map_or(Value::Null, |a| a.device.clone().into()));
        status
    }

    fn snapshots(&self) -> Option<&dyn crate::backend::Snapshots> {
        Some(self)
    }
}

/// The device an EBS volume's NVMe link is named after: `vol-0abc` → `…vol0abc`.
pub fn nvme_link_name(volume_id: &str) -> String {
    format!("nvme-Amazon_Elastic_Block_Store_{}", volume_id.replace('-', ""))
}

#[cfg(test)]
mod snapshot_tests;
#[cfg(test)]
mod tests;
