//! Creating a volume: idempotent by name (client token), tagged in the create call, waited for
//! until `available`; an existing volume of the name is adopted.

use std::collections::BTreeMap;

use super::api::{CloudErrorKind, CreateVolumeRequest, Ec2Api, Volume, VolumeQuery};
use super::core::Core;
use super::errors::cloud_failed;
use super::naming::{OWNER_TAG, OWNER_VALUE};
use super::options::EbsOptions;
use super::wait::{Poll, WaitError};
use crate::backend::{BackendError, Options};
use crate::name::VolumeName;

/// Why waiting for a new volume failed.
pub(super) enum CreateWait {
    /// It disappeared (or went to `error`/`deleting`); carries what was seen.
    Vanished(String),
    /// Anything else.
    Failed(BackendError),
}

impl Core {
    /// Waits until a new volume is usable.
    pub(super) async fn wait_created(
        &self,
        api: &dyn Ec2Api,
        name: &VolumeName,
        id: &str,
    ) -> Result<Volume, CreateWait> {
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
            Err(WaitError::TimedOut { last, attempts, elapsed }) => Err(CreateWait::Failed(BackendError::Timeout {
                op: format!("volume {name} ({id})"),
                elapsed,
                last_seen: last,
                hint: format!(
                    " ({attempts} polls); it is kept, and a later create or mount of {name} uses it once it is available"
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
        let existing = self.lookup(api.as_ref(), name).await?;
        if let Some(v) = self.one(name, existing)? {
            if let Some(az) = opts.get("availabilityZone") {
                if *az != v.availability_zone {
                    return Err(BackendError::AlreadyExists {
                        what: format!("volume {name} already exists in {} ({})", v.availability_zone, v.id),
                        mismatch: format!("not in {az} as asked"),
                    });
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
            tags: self.naming.create_tags(name, opts, &ebs),
            client_token: String::new(),
        };
        for attempt in 0..2 {
            req.client_token = self.client_token(&tag);
            match self.retry.run("CreateVolume", || api.create_volume(&req)).await {
                Ok(created) => {
                    crate::crashpoint::hit("CreateVolume sent");
                    match self.wait_created(api.as_ref(), name, &created.id).await {
                        Ok(volume) => {
                            tracing::info!(volume = %name, id = %volume.id, az = %volume.availability_zone, size_gib = volume.size_gib, kind = %volume.volume_type, "created EBS volume");
                            self.cache.put(name.as_str(), vec![volume]);
                            return Ok(());
                        }
                        Err(CreateWait::Vanished(state)) => {
                            // The token now names a dead volume: the next CreateVolume needs a new one.
                            self.bump_token(&tag);
                            if attempt == 0 {
                                // Either a token reused after its volume was deleted (a fresh
                                // token fixes it) or an unusable KMS key (it vanishes again).
                                tracing::warn!(volume = %name, id = %created.id, %state, "the new volume vanished; retrying once with a new client token");
                                continue;
                            }
                            return Err(Self::vanished(name, &created.id, &state, kms_key_id.as_deref()));
                        }
                        Err(CreateWait::Failed(e)) => return Err(e),
                    }
                }
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
        Err(BackendError::invalid(format!("create volume {name}: gave up after a new client token")))
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
