//! HTTP routing: each handler decodes, makes one service call, and encodes.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{StatusCode, Uri};
use axum::response::Response;
use axum::routing::post;
use axum::Router;
use serde::de::DeserializeOwned;

use super::error::{json_response, ProtocolError};
use super::wire::*;
use crate::service::ServiceHandle;

/// The service a socket serves (opened lazily).
pub type ServiceSource = Arc<ServiceHandle>;

/// The largest request body accepted.
pub const MAX_BODY_BYTES: usize = 1 << 20;

/// What every handler returns; errors become `{"Err": …}` in one place.
pub(super) type Reply = Result<Response, ProtocolError>;

/// The VolumeDriver router for one service.
pub fn router(service: ServiceSource) -> Router {
    Router::new()
        .route("/Plugin.Activate", post(activate))
        .route("/VolumeDriver.Create", post(create))
        .route("/VolumeDriver.Remove", post(remove))
        .route("/VolumeDriver.Mount", post(mount))
        .route("/VolumeDriver.Unmount", post(unmount))
        .route("/VolumeDriver.Path", post(path))
        .route("/VolumeDriver.Get", post(get))
        .route("/VolumeDriver.List", post(list))
        .route("/VolumeDriver.Capabilities", post(capabilities))
        .fallback(unknown)
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .layer(axum::middleware::from_fn(crate::metrics::track_request))
        .with_state(service)
}

/// Decodes a body as JSON whatever the headers say.
pub(super) fn decode<T: DeserializeOwned>(endpoint: &'static str, body: &[u8]) -> Result<T, ProtocolError> {
    serde_json::from_slice(body).map_err(|e| ProtocolError::Decode { endpoint, message: e.to_string() })
}

/// A 200 reply with `body` as JSON.
pub(super) fn ok(body: &impl serde::Serialize) -> Reply {
    Ok(json_response(StatusCode::OK, body))
}

fn wire_volume(v: crate::service::VolumeInfo, with_status: bool) -> Volume {
    Volume {
        name: v.name,
        mountpoint: v.mountpoint.map(|p| p.display().to_string()),
        created_at: Some(v.created_at).filter(|c| !c.is_empty()),
        status: with_status.then_some(v.status),
    }
}

async fn activate() -> Reply {
    ok(&ActivateResponse { implements: ["VolumeDriver"] })
}

async fn create(State(s): State<ServiceSource>, body: Bytes) -> Reply {
    let req: CreateRequest = decode("/VolumeDriver.Create", &body)?;
    s.get().await?.create(&req.name, &req.opts.unwrap_or_default()).await?;
    ok(&Empty {})
}

async fn remove(State(s): State<ServiceSource>, body: Bytes) -> Reply {
    let req: NameRequest = decode("/VolumeDriver.Remove", &body)?;
    s.get().await?.remove(&req.name).await?;
    ok(&Empty {})
}

async fn mount(State(s): State<ServiceSource>, body: Bytes) -> Reply {
    let req: MountRequest = decode("/VolumeDriver.Mount", &body)?;
    let path = s.get().await?.mount(&req.name, req.id.as_deref()).await?;
    ok(&MountpointResponse { mountpoint: path.display().to_string() })
}

async fn unmount(State(s): State<ServiceSource>, body: Bytes) -> Reply {
    let req: MountRequest = decode("/VolumeDriver.Unmount", &body)?;
    s.get().await?.unmount(&req.name, req.id.as_deref()).await?;
    ok(&Empty {})
}

async fn path(State(s): State<ServiceSource>, body: Bytes) -> Reply {
    let req: NameRequest = decode("/VolumeDriver.Path", &body)?;
    let path = s.get().await?.path(&req.name).await?;
    ok(&MountpointResponse { mountpoint: path.map(|p| p.display().to_string()).unwrap_or_default() })
}

async fn get(State(s): State<ServiceSource>, body: Bytes) -> Reply {
    let req: NameRequest = decode("/VolumeDriver.Get", &body)?;
    let info = s.get().await?.get(&req.name).await?;
    ok(&GetResponse { volume: wire_volume(info, true) })
}

async fn list(State(s): State<ServiceSource>) -> Reply {
    let volumes = s.get().await?.list().await.into_iter().map(|v| wire_volume(v, false)).collect();
    ok(&ListResponse { volumes })
}

async fn capabilities(State(s): State<ServiceSource>) -> Reply {
    let scope = s.get().await?.scope().as_str();
    ok(&CapabilitiesResponse { capabilities: Capabilities { scope } })
}

async fn unknown(uri: Uri) -> Response {
    json_response(StatusCode::NOT_FOUND, &ErrorBody { err: format!("unknown endpoint {}", uri.path()) })
}
