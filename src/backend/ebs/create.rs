//! Creating a volume: idempotent by name (client token), tagged in the create call, waited for
//! until `available`; an existing volume of the name is adopted.

use std::collections::BTreeMap;

use super::api::{CloudErrorKind, CreateVolumeRequest, Ec2Api, Volume};
use super::core::Core;
use super::errors::cloud_failed;
use super::naming::{OWNER_TAG, OWNER_VALUE};
use super::options::EbsOptions;
use super::wait::{Poll, WaitError};
use crate::backend::{BackendError, Options};
use crate::name::VolumeName;

/// How one CreateVolume ended when it did not fail.
enum Attempt {
    /// The volume exists and is available.
    Done,
    /// EC2 made it and it vanished.
    Vanished {
        /// Its ID.
        id: String,
        /// What was seen last.
        state: String,
    },
    /// The client token was used with other parameters, and no volume has the name.
    TokenTaken(super::api::CloudError),
}

/// Why waiting for a new volume failed.
pub(super) enum CreateWait {
    /// It disappeared (or went to `error`/`deleting`); carries what was seen.
    Vanished(String),
    /// Anything else.
    Failed(BackendError),
}

impl Core {
    /// Waits until a new volume is usable.
    pub(super) async fn wait_created(&self, name: &VolumeName, id: &str) -> Result<Volume, CreateWait> {
        crate::progress::waiting_for(format!("the new EBS volume {name} ({id}) to be available"));
        let result = self
            .status_wait()
            .run(|| async {
                match self.describe_polled(id).await {
                    Ok(Some(v)) if v.state.is_ready() => Ok(Poll::Ready(v)),
                    Ok(Some(v)) if v.state.is_gone() => Err(CreateWait::Vanished(v.state.as_str().to_owned())),
                    Ok(Some(v)) => Ok(Poll::Pending(v.state.as_str().to_owned())),
                    Ok(None) => Err(CreateWait::Vanished("not found".to_owned())),
                    Err(e) if e.kind == CloudErrorKind::NotFound => Err(CreateWait::Vanished("not found".to_owned())),
                    Err(e) => Err(CreateWait::Failed(cloud_failed("wait for new", name, Some(id), &e))),
                }
            })
            .await;
        match result {
            Ok(v) => Ok(v),
            Err(WaitError::Failed(e)) => Err(e),
            Err(WaitError::TimedOut { last, attempts, elapsed, cut }) => Err(CreateWait::Failed(BackendError::Timeout {
                op: format!("volume {name} ({id})"),
                elapsed,
                last_seen: last,
                hint: format!(
                    " ({attempts} polls){cut}; it is kept, and a later create or mount of {name} uses it once it is available"
                ),
            })),
        }
    }

    /// The error for a volume that vanished right after CreateVolume.
    pub(super) fn vanished(name: &VolumeName, id: &str, state: &str, kms: Option<&str>) -> BackendError {
        let key = kms.map_or_else(|| "the account's default EBS key".to_owned(), |k| format!("KMS key {k}"));
        BackendError::Cloud {
            op: format!("volume {name}"),
            failure: crate::backend::CloudFailure::Refused,
            code: String::new(),
            message: format!(
                "EC2 created {id} and then it vanished ({state}); EC2 does this when it cannot use the volume's encryption key ({key})"
            ),
            hint: ": check that the key exists, is enabled, and that this instance's role may use it (kms:CreateGrant, kms:GenerateDataKeyWithoutPlaintext, kms:Decrypt, kms:DescribeKey)",
        }
    }

    /// Creates volume `name`; `Ok` also when it exists (adopting an unowned one).
    pub(super) async fn create(&self, name: &VolumeName, opts: &Options) -> Result<(), BackendError> {
        let tag = self.naming.name_tag(name);
        if tag.chars().count() > 255 {
            return Err(BackendError::invalid(format!(
                "the EC2 Name tag {:?} would be longer than 255 characters",
                crate::name::excerpt(&tag)
            )));
        }
        let ebs = EbsOptions::from_options(opts, &self.defaults)?;
        let (ident, api) = self.connect().await?;
        let api = api.as_ref();
        if let Some(v) = self.one(name, self.lookup(api, name).await?)? {
            if let Some(az) = opts.get("availabilityZone").filter(|az| **az != v.availability_zone) {
                return Err(BackendError::AlreadyExists {
                    what: format!("volume {name} already exists in {} ({})", v.availability_zone, v.id),
                    mismatch: format!("not in {az} as asked"),
                });
            }
            return self.adopt(api, name, v).await;
        }
        let mut req = self.create_request(name, opts, &ebs, &ident.availability_zone);
        for attempt in 0..2 {
            req.client_token = self.client_token(&tag);
            match self.create_once(api, name, &req).await? {
                Attempt::Done => return Ok(()),
                Attempt::Vanished { id, state } => {
                    // The token now names a dead volume: the next CreateVolume needs a new one.
                    self.bump_token(&tag);
                    if attempt == 1 {
                        return Err(Self::vanished(name, &id, &state, req.kms_key_id.as_deref()));
                    }
                    // Either a token reused after its volume was deleted (a fresh token fixes
                    // it) or an unusable KMS key (it vanishes again).
                    tracing::warn!(volume = %name, %id, %state, "the new volume vanished; retrying once with a new client token");
                }
                Attempt::TokenTaken(e) => {
                    self.bump_token(&tag);
                    if attempt == 1 {
                        return Err(cloud_failed("create", name, None, &e));
                    }
                    tracing::warn!(volume = %name, "client token already used with other parameters; retrying with a new token");
                }
            }
        }
        Err(BackendError::invalid(format!("create volume {name}: gave up after a new client token")))
    }

    /// The CreateVolume request for `name`: in `here` unless the options name an AZ, encrypted
    /// with the configured key when asked, tagged in the call.
    fn create_request(&self, name: &VolumeName, opts: &Options, ebs: &EbsOptions, here: &str) -> CreateVolumeRequest {
        let kms_key_id =
            ebs.kms_key_id.clone().or_else(|| if ebs.encrypted { self.settings.kms_key_id.clone() } else { None });
        CreateVolumeRequest {
            size_gib: ebs.size_gib,
            availability_zone: ebs.availability_zone.clone().unwrap_or_else(|| here.to_owned()),
            volume_type: ebs.volume_type.clone(),
            iops: ebs.iops,
            throughput: ebs.throughput,
            encrypted: ebs.encrypted || kms_key_id.is_some(),
            kms_key_id,
            snapshot_id: ebs.snapshot_id.clone(),
            tags: self.naming.create_tags(name, opts, ebs),
            client_token: String::new(),
        }
    }

    /// One CreateVolume with `req`'s token, and the wait for the volume.
    async fn create_once(
        &self,
        api: &dyn Ec2Api,
        name: &VolumeName,
        req: &CreateVolumeRequest,
    ) -> Result<Attempt, BackendError> {
        match self.retry.run("CreateVolume", || api.create_volume(req)).await {
            Ok(created) => {
                crate::crashpoint::hit("CreateVolume sent");
                match self.wait_created(name, &created.id).await {
                    Ok(volume) => {
                        tracing::info!(volume = %name, id = %volume.id, az = %volume.availability_zone, size_gib = volume.size_gib, kind = %volume.volume_type, "created EBS volume");
                        self.cache.put(name.as_str(), vec![volume]);
                        Ok(Attempt::Done)
                    }
                    Err(CreateWait::Vanished(state)) => Ok(Attempt::Vanished { id: created.id, state }),
                    Err(CreateWait::Failed(e)) => Err(e),
                }
            }
            Err(e) if e.kind == CloudErrorKind::IdempotentParameterMismatch => {
                // Someone created the name meanwhile (other options), or the token was used for
                // a volume deleted since.
                match self.one(name, self.lookup(api, name).await?)? {
                    Some(v) => self.adopt(api, name, v).await.map(|()| Attempt::Done),
                    None => Ok(Attempt::TokenTaken(e)),
                }
            }
            Err(e) => Err(cloud_failed("create", name, None, &e)),
        }
    }

    /// Accepts an existing volume as `name`, tagging it as ours if it is not yet.
    pub(super) async fn adopt(&self, api: &dyn Ec2Api, name: &VolumeName, mut v: Volume) -> Result<(), BackendError> {
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
}
