//! The admin socket's snapshot endpoints, under `/services/<name>/`:
//!
//! | Endpoint | Request | Reply |
//! |---|---|---|
//! | `Snapshot.List` | `{"IDs": [..], "All": bool}` | `{"Snapshots": [Snapshot]}` |
//! | `Snapshot.Create` | `{"Volume", "Name"?, "Description"?}` | `{"Snapshot": Snapshot}` |
//! | `Snapshot.Remove` | `{"ID"}` | `{}` |
//! | `Snapshot.Copy` | `{"ID", "Name"?, "Description"?, "DestinationRegion"?}` | `{"Snapshot": Snapshot}` |
//! | `Snapshot.Wait` | `{"ID", "Region"?, "TimeoutSeconds"}` | `{"Snapshot": Snapshot}` |
//!
//! Errors are `{"Err": …}` like every other endpoint.

use std::collections::BTreeMap;
use std::time::Duration;

use hyper::body::Bytes;
use serde::{Deserialize, Serialize};

use super::error::ProtocolError;
use super::routes::{decode, ok, Outcome, ServiceSource};
use super::wire::Empty;
use crate::backend::snapshot::{NewSnapshot, SnapshotCopy, SnapshotFilter, SnapshotInfo};
use crate::server::Reply;

/// A snapshot on the wire.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Snapshot {
    /// The storage's ID.
    #[serde(rename = "ID")]
    pub id: String,
    /// Its name.
    #[serde(rename = "Name", default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// The volume's name, when known.
    #[serde(rename = "Volume", default, skip_serializing_if = "Option::is_none")]
    pub volume: Option<String>,
    /// The volume's storage ID.
    #[serde(rename = "VolumeID")]
    pub volume_id: String,
    /// `pending`, `completed`, `error`, …
    #[serde(rename = "State")]
    pub state: String,
    /// Progress text.
    #[serde(rename = "Progress", default, skip_serializing_if = "Option::is_none")]
    pub progress: Option<String>,
    /// The volume's size in GiB.
    #[serde(rename = "SizeGiB")]
    pub size_gib: u64,
    /// The description.
    #[serde(rename = "Description", default)]
    pub description: String,
    /// Whether it is encrypted.
    #[serde(rename = "Encrypted", default)]
    pub encrypted: bool,
    /// When it started, RFC 3339.
    #[serde(rename = "StartTime", default, skip_serializing_if = "Option::is_none")]
    pub start_time: Option<String>,
    /// The region.
    #[serde(rename = "Region")]
    pub region: String,
    /// Its tags.
    #[serde(rename = "Tags", default)]
    pub tags: BTreeMap<String, String>,
}

impl From<SnapshotInfo> for Snapshot {
    fn from(s: SnapshotInfo) -> Self {
        Self {
            id: s.id,
            name: s.name,
            volume: s.volume,
            volume_id: s.volume_id,
            state: s.state,
            progress: s.progress,
            size_gib: s.size_gib,
            description: s.description,
            encrypted: s.encrypted,
            start_time: s.start_time,
            region: s.region,
            tags: s.tags,
        }
    }
}

/// `Snapshot.List` request: the given IDs, or this program's snapshots, or (`All`) every one
/// the account owns.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct ListRequest {
    /// Snapshot IDs.
    #[serde(rename = "IDs", default)]
    pub ids: Vec<String>,
    /// Every snapshot of the account, not only this program's.
    #[serde(rename = "All", default)]
    pub all: bool,
}

impl ListRequest {
    /// What the request selects.
    pub fn filter(&self) -> SnapshotFilter {
        if !self.ids.is_empty() {
            SnapshotFilter::Ids(self.ids.clone())
        } else if self.all {
            SnapshotFilter::All
        } else {
            SnapshotFilter::Managed
        }
    }
}

/// `Snapshot.List` reply.
#[derive(Debug, Serialize, Deserialize)]
pub struct ListResponse {
    /// The snapshots.
    #[serde(rename = "Snapshots")]
    pub snapshots: Vec<Snapshot>,
}

/// `Snapshot.Create` request.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct CreateRequest {
    /// The volume to snapshot.
    #[serde(rename = "Volume")]
    pub volume: String,
    /// The snapshot's name.
    #[serde(rename = "Name", default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Its description.
    #[serde(rename = "Description", default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
}

impl CreateRequest {
    /// What the request asks of the new snapshot.
    pub fn new_snapshot(&self) -> NewSnapshot {
        NewSnapshot { name: self.name.clone(), description: self.description.clone() }
    }
}

/// `Snapshot.Remove` request.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct IdRequest {
    /// The snapshot ID.
    #[serde(rename = "ID")]
    pub id: String,
}

/// `Snapshot.Copy` request.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct CopyRequest {
    /// The snapshot to copy.
    #[serde(rename = "ID")]
    pub id: String,
    /// The copy's name.
    #[serde(rename = "Name", default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// The copy's description.
    #[serde(rename = "Description", default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// The region to copy to.
    #[serde(rename = "DestinationRegion", default, skip_serializing_if = "Option::is_none")]
    pub destination_region: Option<String>,
}

impl CopyRequest {
    /// What the request asks of the copy.
    pub fn snapshot_copy(&self) -> SnapshotCopy {
        SnapshotCopy {
            name: self.name.clone(),
            description: self.description.clone(),
            destination_region: self.destination_region.clone(),
        }
    }
}

/// `Snapshot.Wait` request.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct WaitRequest {
    /// The snapshot.
    #[serde(rename = "ID")]
    pub id: String,
    /// Its region (default: the service's).
    #[serde(rename = "Region", default, skip_serializing_if = "Option::is_none")]
    pub region: Option<String>,
    /// The longest wait.
    #[serde(rename = "TimeoutSeconds")]
    pub timeout_seconds: u64,
}

/// `Snapshot.{Create,Copy,Wait}` reply.
#[derive(Debug, Serialize, Deserialize)]
pub struct SnapshotResponse {
    /// The snapshot.
    #[serde(rename = "Snapshot")]
    pub snapshot: Snapshot,
}

/// Answers the snapshot endpoint `endpoint` (`Snapshot.List`, …) of service `s`, or `None`
/// when `endpoint` is not one.
pub async fn answer(s: &ServiceSource, endpoint: &str, body: &Bytes) -> Option<Reply> {
    let result = match endpoint {
        "Snapshot.List" => list(s, body).await,
        "Snapshot.Create" => create(s, body).await,
        "Snapshot.Remove" => remove(s, body).await,
        "Snapshot.Copy" => copy(s, body).await,
        "Snapshot.Wait" => wait(s, body).await,
        _ => return None,
    };
    Some(result.unwrap_or_else(ProtocolError::into_reply))
}

async fn list(s: &ServiceSource, body: &Bytes) -> Outcome {
    let req: ListRequest =
        if body.iter().all(u8::is_ascii_whitespace) { ListRequest::default() } else { decode("/Snapshot.List", body)? };
    let snapshots = s.get().await?.snapshot_list(&req.filter()).await?;
    ok(&ListResponse { snapshots: snapshots.into_iter().map(Snapshot::from).collect() })
}

async fn create(s: &ServiceSource, body: &Bytes) -> Outcome {
    let req: CreateRequest = decode("/Snapshot.Create", body)?;
    let snapshot = s.get().await?.snapshot_create(&req.volume, &req.new_snapshot()).await?;
    ok(&SnapshotResponse { snapshot: snapshot.into() })
}

async fn remove(s: &ServiceSource, body: &Bytes) -> Outcome {
    let req: IdRequest = decode("/Snapshot.Remove", body)?;
    s.get().await?.snapshot_remove(&req.id).await?;
    ok(&Empty {})
}

async fn copy(s: &ServiceSource, body: &Bytes) -> Outcome {
    let req: CopyRequest = decode("/Snapshot.Copy", body)?;
    let snapshot = s.get().await?.snapshot_copy(&req.id, &req.snapshot_copy()).await?;
    ok(&SnapshotResponse { snapshot: snapshot.into() })
}

async fn wait(s: &ServiceSource, body: &Bytes) -> Outcome {
    let req: WaitRequest = decode("/Snapshot.Wait", body)?;
    let timeout = Duration::from_secs(req.timeout_seconds);
    let snapshot = s.get().await?.snapshot_wait(&req.id, req.region.as_deref(), timeout).await?;
    ok(&SnapshotResponse { snapshot: snapshot.into() })
}
