//! The admin socket's volume operations beyond Docker's VolumeDriver protocol, served under
//! `/services/<name>/` (see [`super::admin`]):
//!
//! | endpoint | request | reply |
//! |---|---|---|
//! | `Volume.Resize` | `{"Name", "SizeGiB"}` | `{"SizeGiB"}`: the size the volume has now |
//! | `Volume.Modify` | `{"Name", "Changes": {"volumeType"?, "iops"?, "throughput"?}}` | `{"Options"}`: the volume's options now |

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

/// Answers the volume endpoint `endpoint` of service `s`, or `None` when it is not one.
pub async fn answer(s: &ServiceSource, endpoint: &str, body: &Bytes) -> Option<Reply> {
    let result = match endpoint {
        "Volume.Resize" => resize(s, body).await,
        "Volume.Modify" => modify(s, body).await,
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
