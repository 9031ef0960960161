//! Request and response bodies, exactly as dockerd and dvdcli send and expect them.

use std::borrow::Cow;
use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// The media type of our replies.
pub const CONTENT_TYPE: &str = "application/vnd.docker.plugins.v1.2+json";

/// `/VolumeDriver.Create`. `Opts` may be `null` or absent (`docker run -v`).
#[derive(Debug, Deserialize)]
pub struct CreateRequest {
    /// Volume name.
    #[serde(rename = "Name")]
    pub name: String,
    /// Driver options; values are strings.
    #[serde(rename = "Opts", default)]
    pub opts: Option<BTreeMap<String, String>>,
}

/// `/VolumeDriver.{Remove,Path,Get}`. The name is borrowed from the body unless it has
/// escapes.
#[derive(Debug, Deserialize)]
pub struct NameRequest<'a> {
    /// Volume name.
    #[serde(rename = "Name", borrow)]
    pub name: Cow<'a, str>,
}

/// `/VolumeDriver.{Mount,Unmount}`. `ID` is absent when dvdcli calls.
#[derive(Debug, Deserialize)]
pub struct MountRequest {
    /// Volume name.
    #[serde(rename = "Name")]
    pub name: String,
    /// The caller's mount ID.
    #[serde(rename = "ID", default)]
    pub id: Option<String>,
}

/// `/Plugin.Activate` reply.
#[derive(Debug, Serialize)]
pub struct ActivateResponse {
    /// Always `["VolumeDriver"]`.
    #[serde(rename = "Implements")]
    pub implements: [&'static str; 1],
}

/// `/VolumeDriver.{Mount,Path}` reply.
#[derive(Debug, Serialize)]
pub struct MountpointResponse {
    /// Host path; empty when the volume is not mounted (Path only).
    #[serde(rename = "Mountpoint")]
    pub mountpoint: String,
}

/// A volume as Get and List describe it.
#[derive(Debug, Serialize)]
pub struct Volume<S: Serialize = BTreeMap<String, serde_json::Value>> {
    /// Name.
    #[serde(rename = "Name")]
    pub name: String,
    /// Host path, only while mounted.
    #[serde(rename = "Mountpoint", skip_serializing_if = "Option::is_none")]
    pub mountpoint: Option<String>,
    /// RFC 3339; omitted rather than empty (an empty string breaks Docker's decoding).
    #[serde(rename = "CreatedAt", skip_serializing_if = "Option::is_none")]
    pub created_at: Option<String>,
    /// Shown by `docker volume inspect` (Get only).
    #[serde(rename = "Status", skip_serializing_if = "Option::is_none")]
    pub status: Option<S>,
}

/// `/VolumeDriver.Get` reply (the protocol writes it directly; this is the reference its test
/// compares with).
#[derive(Debug, Serialize)]
pub struct GetResponse<S: Serialize> {
    /// The volume.
    #[serde(rename = "Volume")]
    pub volume: Volume<S>,
}

/// `/VolumeDriver.List` reply.
#[derive(Debug, Serialize)]
pub struct ListResponse {
    /// Every volume: name and mount point, and a Status only when the list is stale.
    #[serde(rename = "Volumes")]
    pub volumes: Vec<Volume<StaleNote>>,
    /// Why the storage's volumes are the ones it listed last (Docker ignores it; `rexray
    /// volume ls` reports it).
    #[serde(rename = "Stale", skip_serializing_if = "Option::is_none")]
    pub stale: Option<String>,
}

/// The Status of a volume in a stale List: how old what is known of it is.
#[derive(Debug, Clone, Serialize)]
pub struct StaleNote {
    /// Why the storage was not asked, and how long ago it last answered.
    pub stale: String,
}

/// `/VolumeDriver.Capabilities` reply.
#[derive(Debug, Serialize)]
pub struct CapabilitiesResponse {
    /// The capabilities.
    #[serde(rename = "Capabilities")]
    pub capabilities: Capabilities,
}

/// The driver's capabilities.
#[derive(Debug, Serialize)]
pub struct Capabilities {
    /// `local` or `global`.
    #[serde(rename = "Scope")]
    pub scope: &'static str,
}

/// An empty success reply: `{}`.
#[derive(Debug, Serialize)]
pub struct Empty {}

/// An error reply.
#[derive(Debug, Serialize)]
pub struct ErrorBody {
    /// The message Docker shows.
    #[serde(rename = "Err")]
    pub err: String,
}
