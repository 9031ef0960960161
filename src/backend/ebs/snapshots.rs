//! EBS snapshots: [`Snapshots`] for [`EbsController`].
//!
//! - **Create.** Looks the volume up by name (any AZ of the region), flushes its file system
//!   when it is mounted on this host (a crash-consistent snapshot then holds everything written
//!   so far), and sends CreateSnapshot with its tags in the same call: `Name` (the snapshot name,
//!   default the volume's, under `ebs.tag` like volume names), [`OWNER_TAG`] and
//!   [`SNAPSHOT_VOLUME_TAG`]. CreateSnapshot has no idempotency token, so only throttling is
//!   retried: a timed-out request may have been carried out, and a blind retry would make a
//!   second snapshot.
//! - **List.** This account's snapshots with the ownership tag (and, with `ebs.tag`, a Name in
//!   that namespace); `--all`: every snapshot the account owns in the region; or the given IDs.
//! - **Copy.** CopySnapshot is sent to the destination region with `SourceRegion`, carrying the
//!   source's tags, a Name (given, or the source's) and [`COPIED_FROM_TAG`]. With `ebs.endpoint`
//!   set, the destination's endpoint is that URL with the region name in it replaced (an
//!   emulator's URL, which names no region, is used as it is).
//! - **Wait.** Polls DescribeSnapshots (1 s, doubling, at most 15 s apart) until `completed`, up to
//!   the caller's deadline; `error` or a vanished snapshot ends the wait with an error.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;

use super::api::{
    CloudError, CloudErrorKind, CopySnapshotRequest, CreateSnapshotRequest, Ec2Api, Snapshot, SnapshotQuery,
    SnapshotState,
};
use super::core::Core;
use super::errors::cloud_error;
use super::naming::{filter_literal, OWNER_TAG, OWNER_VALUE};
use super::options::is_snapshot_id;
use super::wait::{Poll, StatusWait, WaitError};
use super::{cloud, EbsController};
use crate::backend::snapshot::{NewSnapshot, SnapshotCopy, SnapshotFilter, SnapshotInfo, Snapshots};
use crate::backend::BackendError;
use crate::name::VolumeName;

/// The tag naming the volume a snapshot was taken of (its Docker name).
pub const SNAPSHOT_VOLUME_TAG: &str = "rexray-rs/volume";
/// The tag a copy carries: `<region>/<snapshot ID>` of its source.
pub const COPIED_FROM_TAG: &str = "rexray-rs/copiedFrom";
/// Snapshots per DescribeSnapshots page when listing.
const SNAPSHOT_PAGE: u32 = 1000;
/// The first delay between two polls of a snapshot.
const FIRST_POLL: Duration = Duration::from_secs(1);

/// The longest delay between two polls of a snapshot (they take minutes).
const SNAPSHOT_POLL_CAP: Duration = Duration::from_secs(15);
/// The longest wait a caller may ask for.
const MAX_WAIT: Duration = Duration::from_secs(24 * 3600);
/// How a snapshot is waited for: every [`FIRST_POLL`], doubling, at most [`SNAPSHOT_POLL_CAP`]
/// apart, up to the caller's deadline.
pub(super) fn snapshot_schedule() -> StatusWait {
    StatusWait { initial_delay: FIRST_POLL, max_delay: SNAPSHOT_POLL_CAP, timeout: MAX_WAIT }
}

/// EC2's limit on tag values and descriptions.
const MAX_TEXT: usize = 255;

/// An EC2 failure on a snapshot operation, with a hint for what people can fix.
fn snapshot_failed(what: &str, e: &CloudError) -> BackendError {
    let hint = match e.kind {
        CloudErrorKind::Unauthorized => {
            "; check the credentials and the IAM policy (ec2:CreateSnapshot, DescribeSnapshots, DeleteSnapshot, CopySnapshot, CreateTags)"
        }
        CloudErrorKind::Throttled => "; EC2 kept throttling this account (RequestLimitExceeded) through every retry",
        CloudErrorKind::Transient => {
            "; EC2 could not be reached or did not answer (for a create or copy, check `rexray snapshot ls` before trying again: it may have been done)"
        }
        CloudErrorKind::LimitExceeded => "; an account limit is reached",
        _ => "",
    };
    cloud_error(what.to_owned(), e, hint)
}

fn check_snapshot_id(id: &str) -> Result<(), BackendError> {
    if is_snapshot_id(id) {
        Ok(())
    } else {
        // A snapshot ID of another form names no snapshot.
        Err(BackendError::NotFound {
            what: format!(
                "snapshot {:?}: it is not an EBS snapshot ID (expected snap-0123456789abcdef0)",
                crate::name::excerpt(id)
            ),
        })
    }
}

fn check_text(what: &str, value: &str) -> Result<(), BackendError> {
    if value.is_empty() {
        return Err(BackendError::invalid(format!("the {what} is empty")));
    }
    if value.chars().count() > MAX_TEXT {
        return Err(BackendError::invalid(format!(
            "the {what} {:?} is longer than {MAX_TEXT} characters",
            crate::name::excerpt(value)
        )));
    }
    if value.chars().any(char::is_control) {
        return Err(BackendError::invalid(format!(
            "the {what} {:?} contains control characters",
            crate::name::excerpt(value)
        )));
    }
    Ok(())
}

/// Whether `region` looks like an AWS region name (`eu-west-1`, `us-gov-east-1`).
fn check_region(region: &str) -> Result<(), BackendError> {
    let ok = !region.is_empty()
        && region.len() <= 32
        && region.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && region.contains('-');
    if ok {
        Ok(())
    } else {
        Err(BackendError::invalid(format!(
            "{:?} is not an AWS region name (such as eu-west-1)",
            crate::name::excerpt(region)
        )))
    }
}

/// The endpoint for `to` when `endpoint` serves `from`: the region name in it swapped.
pub fn regional_endpoint(endpoint: &str, from: &str, to: &str) -> String {
    if from.is_empty() {
        endpoint.to_owned()
    } else {
        endpoint.replace(from, to)
    }
}

impl Core {
    /// The EC2 client of `region` (this host's, or one made for it and kept).
    async fn api_for(&self, region: &str) -> Result<Arc<dyn Ec2Api>, BackendError> {
        let (ident, api) = self.connect().await?;
        if region == ident.region {
            return Ok(api);
        }
        check_region(region)?;
        let mut regional = self.regional.lock().await;
        if let Some(api) = regional.get(region) {
            return Ok(Arc::clone(api));
        }
        let conn = cloud::Connection {
            region: region.to_owned(),
            endpoint: self.settings.endpoint_url().map(|e| regional_endpoint(&e, &ident.region, region)),
            static_credentials: self.settings.access_key.clone().zip(self.settings.secret_key.clone()),
        };
        tracing::debug!(?conn, "connecting to EC2 in another region");
        let api = self.client(conn).await;
        regional.insert(region.to_owned(), Arc::clone(&api));
        Ok(api)
    }

    /// Every page of a DescribeSnapshots query.
    pub(super) async fn describe_snapshots_all(
        &self,
        api: &dyn Ec2Api,
        mut query: SnapshotQuery,
    ) -> Result<Vec<Snapshot>, CloudError> {
        let mut all = Vec::new();
        loop {
            let page = self.retry.run("DescribeSnapshots", || api.describe_snapshots(&query)).await?;
            all.extend(page.snapshots);
            match page.next_token {
                Some(token) => query.next_token = Some(token),
                None => return Ok(all),
            }
        }
    }

    /// One snapshot by ID, or `None` when EC2 does not know it.
    async fn describe_snapshot(&self, api: &dyn Ec2Api, id: &str) -> Result<Option<Snapshot>, CloudError> {
        let query = SnapshotQuery { ids: vec![id.to_owned()], ..SnapshotQuery::default() };
        match self.retry.run("DescribeSnapshots", || api.describe_snapshots(&query)).await {
            Ok(page) => Ok(page.snapshots.into_iter().find(|s| s.id == id)),
            Err(e) if e.kind == CloudErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// The name a snapshot shows: its Name tag without the `ebs.tag` namespace.
    fn snapshot_name(&self, tags: &BTreeMap<String, String>) -> Option<String> {
        let name = tags.get("Name")?;
        Some(self.naming.untagged(name).unwrap_or(name).to_owned())
    }

    /// The Name tag for snapshot name `name`, both checked against EC2's limits.
    fn snapshot_name_tag(&self, name: &str) -> Result<String, BackendError> {
        check_text("snapshot name", name)?;
        let tag = self.naming.name_tag(name);
        check_text("snapshot Name tag", &tag)?;
        Ok(tag)
    }

    /// Volume ID → Docker name, from the cache (to name the volume of a snapshot made
    /// elsewhere, such as by AWS Backup).
    fn volume_names(&self) -> BTreeMap<String, String> {
        self.cache.all().into_iter().flat_map(|(name, vs)| vs.into_iter().map(move |v| (v.id, name.clone()))).collect()
    }

    /// One snapshot as the commands show it.
    fn snapshot_info(&self, s: Snapshot, region: &str, names: &BTreeMap<String, String>) -> SnapshotInfo {
        let volume = s.tags.get(SNAPSHOT_VOLUME_TAG).or_else(|| names.get(&s.volume_id)).cloned();
        SnapshotInfo {
            name: self.snapshot_name(&s.tags),
            volume,
            id: s.id,
            volume_id: s.volume_id,
            state: s.state.as_str().to_owned(),
            progress: s.progress,
            size_gib: s.size_gib,
            description: s.description,
            encrypted: s.encrypted,
            start_time: s.start_time,
            region: region.to_owned(),
            tags: s.tags,
        }
    }

    /// The query `snapshot ls` sends for `filter`.
    fn snapshot_query(&self, filter: &SnapshotFilter) -> SnapshotQuery {
        match filter {
            SnapshotFilter::Ids(ids) => SnapshotQuery { ids: ids.clone(), ..SnapshotQuery::default() },
            SnapshotFilter::All => SnapshotQuery {
                owners: vec!["self".into()],
                max_results: Some(SNAPSHOT_PAGE),
                ..SnapshotQuery::default()
            },
            SnapshotFilter::Managed => {
                let mut filters = vec![(format!("tag:{OWNER_TAG}"), vec![OWNER_VALUE.to_owned()])];
                if let Some(tag) = self.naming.namespace() {
                    filters.push(("tag:Name".into(), vec![format!("{}/*", filter_literal(tag))]));
                }
                SnapshotQuery {
                    owners: vec!["self".into()],
                    filters,
                    max_results: Some(SNAPSHOT_PAGE),
                    ..SnapshotQuery::default()
                }
            }
        }
    }
}

#[async_trait]
impl Snapshots for EbsController {
    async fn list_snapshots(&self, filter: &SnapshotFilter) -> Result<Vec<SnapshotInfo>, BackendError> {
        if let SnapshotFilter::Ids(ids) = filter {
            ids.iter().try_for_each(|id| check_snapshot_id(id))?;
        }
        let core = &self.core;
        let (ident, api) = core.connect().await?;
        let found = core.describe_snapshots_all(api.as_ref(), core.snapshot_query(filter)).await.map_err(|e| {
            if e.kind == CloudErrorKind::NotFound && matches!(filter, SnapshotFilter::Ids(_)) {
                BackendError::not_found(format!("no such snapshot in EC2 region {} ({e})", ident.region))
            } else {
                snapshot_failed(&format!("list snapshots in {}", ident.region), &e)
            }
        })?;
        let names = core.volume_names();
        let mut out: Vec<SnapshotInfo> =
            found.into_iter().map(|s| core.snapshot_info(s, &ident.region, &names)).collect();
        out.sort_by(|a, b| (&a.start_time, &a.id).cmp(&(&b.start_time, &b.id)));
        Ok(out)
    }

    async fn create_snapshot(&self, volume: &VolumeName, req: &NewSnapshot) -> Result<SnapshotInfo, BackendError> {
        let core = &self.core;
        let name = req.name.as_deref().unwrap_or(volume.as_str());
        let name_tag = core.snapshot_name_tag(name)?;
        let (ident, api) = core.connect().await?;
        let vol = core.require_one(api.as_ref(), &ident, volume).await?;
        let description =
            req.description.clone().unwrap_or_else(|| format!("rexray snapshot of volume {volume} ({})", vol.id));
        check_text("description", &description)?;
        if self.node.sync_if_mounted(volume).await? {
            tracing::debug!(volume = %volume, "flushed the mounted file system before the snapshot");
        }
        let request = CreateSnapshotRequest {
            volume_id: vol.id.clone(),
            description,
            tags: BTreeMap::from([
                ("Name".to_owned(), name_tag),
                (OWNER_TAG.to_owned(), OWNER_VALUE.to_owned()),
                (SNAPSHOT_VOLUME_TAG.to_owned(), volume.to_string()),
            ]),
        };
        let created = core
            .retry
            .run_once("CreateSnapshot", || api.create_snapshot(&request))
            .await
            .map_err(|e| snapshot_failed(&format!("snapshot volume {volume} ({})", vol.id), &e))?;
        tracing::info!(volume = %volume, volume_id = %vol.id, snapshot = %created.id, name = %name, "started EBS snapshot");
        Ok(core.snapshot_info(created, &ident.region, &core.volume_names()))
    }

    async fn remove_snapshot(&self, id: &str) -> Result<(), BackendError> {
        check_snapshot_id(id)?;
        let core = &self.core;
        let (ident, api) = core.connect().await?;
        match core.retry.run("DeleteSnapshot", || api.delete_snapshot(id)).await {
            Ok(()) => {
                tracing::info!(snapshot = %id, "deleted EBS snapshot");
                Ok(())
            }
            Err(e) if e.kind == CloudErrorKind::NotFound => {
                Err(BackendError::not_found(format!("snapshot {id} does not exist in EC2 region {}", ident.region)))
            }
            Err(e) => Err(snapshot_failed(&format!("remove snapshot {id}"), &e)),
        }
    }

    async fn copy_snapshot(&self, id: &str, req: &SnapshotCopy) -> Result<SnapshotInfo, BackendError> {
        check_snapshot_id(id)?;
        let core = &self.core;
        let (ident, api) = core.connect().await?;
        let destination = req.destination_region.clone().unwrap_or_else(|| ident.region.clone());
        check_region(&destination)?;
        let source = core
            .describe_snapshot(api.as_ref(), id)
            .await
            .map_err(|e| snapshot_failed(&format!("look up snapshot {id}"), &e))?
            .ok_or_else(|| {
                BackendError::not_found(format!("snapshot {id} does not exist in EC2 region {}", ident.region))
            })?;
        let mut tags: BTreeMap<String, String> =
            source.tags.iter().filter(|(k, _)| !k.starts_with("aws:")).map(|(k, v)| (k.clone(), v.clone())).collect();
        if let Some(name) = &req.name {
            tags.insert("Name".into(), core.snapshot_name_tag(name)?);
        }
        tags.insert(OWNER_TAG.into(), OWNER_VALUE.into());
        tags.insert(COPIED_FROM_TAG.into(), format!("{}/{id}", ident.region));
        let description = req.description.clone().unwrap_or_else(|| format!("Copy of {id} from {}", ident.region));
        check_text("description", &description)?;
        let target = core.api_for(&destination).await?;
        let request = CopySnapshotRequest {
            source_snapshot_id: id.to_owned(),
            source_region: ident.region.clone(),
            description,
            tags,
        };
        let copy_id = core
            .retry
            .run_once("CopySnapshot", || target.copy_snapshot(&request))
            .await
            .map_err(|e| snapshot_failed(&format!("copy snapshot {id} to {destination}"), &e))?;
        tracing::info!(snapshot = %id, copy = %copy_id, region = %destination, "started EBS snapshot copy");
        // The copy as EC2 shows it; right after the call it may not be visible yet.
        let shown = core.describe_snapshot(target.as_ref(), &copy_id).await.ok().flatten();
        let copy = shown.unwrap_or_else(|| Snapshot {
            id: copy_id,
            volume_id: source.volume_id.clone(),
            state: SnapshotState::Pending,
            progress: None,
            size_gib: source.size_gib,
            description: request.description.clone(),
            encrypted: source.encrypted,
            owner_id: source.owner_id.clone(),
            start_time: None,
            tags: request.tags.clone(),
        });
        Ok(core.snapshot_info(copy, &destination, &core.volume_names()))
    }

    async fn wait_snapshot(
        &self,
        id: &str,
        region: Option<&str>,
        timeout: Duration,
    ) -> Result<SnapshotInfo, BackendError> {
        check_snapshot_id(id)?;
        let core = &self.core;
        let (ident, _) = core.connect().await?;
        let region = region.unwrap_or(&ident.region).to_owned();
        let api = core.api_for(&region).await?;
        let schedule = StatusWait { timeout: timeout.min(MAX_WAIT), ..snapshot_schedule() };
        crate::progress::waiting_for(format!("snapshot {id} in {region} to complete"));
        let result = schedule
            .run(|| async {
                match core.describe_snapshot(api.as_ref(), id).await {
                    Ok(Some(s)) if s.state == SnapshotState::Completed => Ok(Poll::Ready(s)),
                    Ok(Some(s)) if s.state == SnapshotState::Error => Err(BackendError::Cloud {
                        op: format!("snapshot {id} in {region} failed"),
                        failure: crate::backend::CloudFailure::Refused,
                        code: "error".into(),
                        message: "its state is error".into(),
                        hint: "",
                    }),
                    Ok(Some(s)) => Ok(Poll::Pending(match &s.progress {
                        Some(p) => format!("{} ({p})", s.state.as_str()),
                        None => s.state.as_str().to_owned(),
                    })),
                    Ok(None) => {
                        Err(BackendError::not_found(format!("snapshot {id} does not exist in EC2 region {region}")))
                    }
                    Err(e) => Err(snapshot_failed(&format!("wait for snapshot {id}"), &e)),
                }
            })
            .await;
        match result {
            Ok(s) => Ok(core.snapshot_info(s, &region, &core.volume_names())),
            Err(WaitError::Failed(e)) => Err(e),
            Err(WaitError::TimedOut { last, attempts, elapsed, cut }) => Err(BackendError::Timeout {
                op: format!("snapshot {id} in {region}"),
                elapsed,
                last_seen: last,
                hint: format!(" ({attempts} polls){cut}; EC2 goes on with it (see `rexray snapshot ls {id}`)"),
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_follow_the_region() {
        assert_eq!(
            regional_endpoint("https://ec2.us-east-1.amazonaws.com", "us-east-1", "eu-west-1"),
            "https://ec2.eu-west-1.amazonaws.com"
        );
        assert_eq!(regional_endpoint("http://127.0.0.1:5000", "us-east-1", "eu-west-1"), "http://127.0.0.1:5000");
    }

    #[test]
    fn inputs_are_checked() {
        assert!(check_snapshot_id("snap-0123abc").is_ok());
        for bad in ["snap-", "vol-1", "snap-0/..", ""] {
            assert!(check_snapshot_id(bad).unwrap_err().to_string().contains("not an EBS snapshot ID"), "{bad}");
        }
        assert!(check_region("eu-west-1").is_ok());
        for bad in ["", "EU-WEST-1", "mars", "eu west 1"] {
            assert!(check_region(bad).is_err(), "{bad}");
        }
        assert!(check_text("name", "nightly 2026-11-25").is_ok());
        assert!(check_text("name", "").is_err());
        assert!(check_text("name", &"x".repeat(256)).unwrap_err().to_string().contains("longer than 255"));
        assert!(check_text("name", "a\nb").unwrap_err().to_string().contains("control characters"));
    }
}
