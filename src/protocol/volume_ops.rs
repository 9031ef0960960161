//! The admin socket's volume operations beyond Docker's VolumeDriver protocol, served under
//! `/services/<name>/` (see [`super::admin`]):
//!
//! | endpoint | request | reply |
//! |---|---|---|
//! | `Volume.Resize` | `{"Name", "SizeGiB"}` | `{"SizeGiB"}`: the size the volume has now |
//! | `Volume.Modify` | `{"Name", "Changes": {"volumeType"?, "iops"?, "throughput"?}}` | `{"Options"}`: the volume's options now |
//! | `Volume.Move` | `{"Name", "Zone", "DeleteSource"?}` | `{"Options"}`: the volume's options now |
//! | `Volume.Orphans` | `{"NamedAfterSecs", "AnonymousAfterSecs"}` | `{"Orphans": [{"Name", "Anonymous", "LastUsed", "IdleSecs"}]}` |

use std::collections::BTreeMap;

use hyper::body::Bytes;
use serde::{Deserialize, Serialize};

use super::error::ProtocolError;
use super::routes::{decode, ok, Outcome, ServiceSource};
use crate::backend::options::get_u64;
use crate::server::Reply;

/// `Volume.Resize` request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResizeRequest {
    /// The volume.
    #[serde(rename = "Name")]
    pub name: String,
    /// The size it grows to, in GiB.
    #[serde(rename = "SizeGiB")]
    pub size_gib: u64,
}

/// `Volume.Resize` reply.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResizeResponse {
    /// The volume's size after, in GiB.
    #[serde(rename = "SizeGiB")]
    pub size_gib: u64,
}

/// `Volume.Modify` request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModifyRequest {
    /// The volume.
    #[serde(rename = "Name")]
    pub name: String,
    /// The settings to change, in Docker's option spelling.
    #[serde(rename = "Changes")]
    pub changes: BTreeMap<String, String>,
}

/// `Volume.Modify` reply.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModifyResponse {
    /// The volume's options after.
    #[serde(rename = "Options")]
    pub options: BTreeMap<String, String>,
}

/// `Volume.Move` request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MoveRequest {
    /// The volume.
    #[serde(rename = "Name")]
    pub name: String,
    /// The availability zone it moves to.
    #[serde(rename = "Zone")]
    pub zone: String,
    /// Whether the old volume is deleted once the new one has the name.
    #[serde(rename = "DeleteSource", default)]
    pub delete_source: bool,
}

/// `Volume.Orphans` request: how long a named and an anonymous volume must have gone unused.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrphansRequest {
    /// For named volumes, in seconds.
    #[serde(rename = "NamedAfterSecs")]
    pub named_after_secs: u64,
    /// For Docker's anonymous volumes, in seconds.
    #[serde(rename = "AnonymousAfterSecs")]
    pub anonymous_after_secs: u64,
}

/// One volume nothing uses.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrphanEntry {
    /// The name.
    #[serde(rename = "Name")]
    pub name: String,
    /// Docker's anonymous volume (64 hex digits).
    #[serde(rename = "Anonymous")]
    pub anonymous: bool,
    /// When it was last used (or created), RFC 3339; empty when not known.
    #[serde(rename = "LastUsed")]
    pub last_used: String,
    /// How long ago, in seconds.
    #[serde(rename = "IdleSecs")]
    pub idle_secs: u64,
}

/// `Volume.Orphans` reply.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrphansResponse {
    /// The volumes nothing uses, by name.
    #[serde(rename = "Orphans")]
    pub orphans: Vec<OrphanEntry>,
}

impl From<crate::service::Orphan> for OrphanEntry {
    fn from(o: crate::service::Orphan) -> Self {
        Self { name: o.name, anonymous: o.anonymous, last_used: o.last_used, idle_secs: o.idle.as_secs() }
    }
}

/// Answers the volume endpoint `endpoint` of service `s`, or `None` when it is not one.
pub async fn answer(s: &ServiceSource, endpoint: &str, body: &Bytes) -> Option<Reply> {
    let result = match endpoint {
        "Volume.Resize" => resize(s, body).await,
        "Volume.Modify" => modify(s, body).await,
        "Volume.Move" => relocate(s, body).await,
        "Volume.Orphans" => orphans(s, body).await,
        _ => return None,
    };
    Some(result.unwrap_or_else(ProtocolError::into_reply))
}

async fn resize(s: &ServiceSource, body: &Bytes) -> Outcome {
    let req: ResizeRequest = decode("/Volume.Resize", body)?;
    let record = s.get().await?.resize(&req.name, req.size_gib).await?;
    ok(&ResizeResponse { size_gib: get_u64(&record.options, "size").unwrap_or(req.size_gib) })
}

async fn modify(s: &ServiceSource, body: &Bytes) -> Outcome {
    let req: ModifyRequest = decode("/Volume.Modify", body)?;
    let record = s.get().await?.modify(&req.name, &req.changes).await?;
    ok(&ModifyResponse { options: record.options })
}

async fn relocate(s: &ServiceSource, body: &Bytes) -> Outcome {
    let req: MoveRequest = decode("/Volume.Move", body)?;
    let record = s.get().await?.relocate(&req.name, &req.zone, req.delete_source).await?;
    ok(&ModifyResponse { options: record.options })
}

async fn orphans(s: &ServiceSource, body: &Bytes) -> Outcome {
    use std::time::Duration;
    let req: OrphansRequest = decode("/Volume.Orphans", body)?;
    let found = s
        .get()
        .await?
        .orphans(Duration::from_secs(req.named_after_secs), Duration::from_secs(req.anonymous_after_secs))
        .await?;
    ok(&OrphansResponse { orphans: found.into_iter().map(OrphanEntry::from).collect() })
}
