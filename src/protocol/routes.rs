//! The VolumeDriver endpoints: each call decodes, makes one service call, and encodes.
//!
//! Every call runs in a tracing span of its own (`front`, `op`, `volume`, `caller`, `req`), so
//! every log line of a Mount says which request it belongs to, and is counted in the metrics
//! by endpoint and by the outcome its typed result names.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use hyper::body::Bytes;
use hyper::{Method, Request, StatusCode};
use serde::Deserialize;
use tracing::Instrument;

use super::error::{bytes_reply, json_reply, ProtocolError};
use super::wire::*;
use crate::name::excerpt;
use crate::server::{Handler, Reply};
use crate::service::ServiceHandle;

/// The service a socket serves (opened lazily).
pub type ServiceSource = Arc<ServiceHandle>;

/// The largest request body accepted.
pub const MAX_BODY_BYTES: usize = 1 << 20;

/// What every call returns; errors become `{"Err": …}` in one place.
pub(super) type Outcome = Result<Reply, ProtocolError>;

/// The endpoints of the VolumeDriver protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint {
    /// `/Plugin.Activate`.
    Activate,
    /// `/VolumeDriver.Create`.
    Create,
    /// `/VolumeDriver.Remove`.
    Remove,
    /// `/VolumeDriver.Mount`.
    Mount,
    /// `/VolumeDriver.Unmount`.
    Unmount,
    /// `/VolumeDriver.Path`.
    Path,
    /// `/VolumeDriver.Get`.
    Get,
    /// `/VolumeDriver.List`.
    List,
    /// `/VolumeDriver.Capabilities`.
    Capabilities,
}

impl Endpoint {
    /// The endpoint a request path names.
    pub fn from_path(path: &str) -> Option<Self> {
        Some(match path.strip_prefix('/')? {
            "Plugin.Activate" => Endpoint::Activate,
            "VolumeDriver.Create" => Endpoint::Create,
            "VolumeDriver.Remove" => Endpoint::Remove,
            "VolumeDriver.Mount" => Endpoint::Mount,
            "VolumeDriver.Unmount" => Endpoint::Unmount,
            "VolumeDriver.Path" => Endpoint::Path,
            "VolumeDriver.Get" => Endpoint::Get,
            "VolumeDriver.List" => Endpoint::List,
            "VolumeDriver.Capabilities" => Endpoint::Capabilities,
            _ => return None,
        })
    }

    /// The name, as the metrics label it.
    pub fn label(self) -> &'static str {
        match self {
            Endpoint::Activate => "Plugin.Activate",
            Endpoint::Create => "VolumeDriver.Create",
            Endpoint::Remove => "VolumeDriver.Remove",
            Endpoint::Mount => "VolumeDriver.Mount",
            Endpoint::Unmount => "VolumeDriver.Unmount",
            Endpoint::Path => "VolumeDriver.Path",
            Endpoint::Get => "VolumeDriver.Get",
            Endpoint::List => "VolumeDriver.List",
            Endpoint::Capabilities => "VolumeDriver.Capabilities",
        }
    }

    /// Whether the call changes a volume (its request span is then at `info`, so the info and
    /// warning lines of the operation carry it; the reads' spans are at `debug`, where their
    /// own lines are, and cost nothing at the default level).
    pub fn changes_state(self) -> bool {
        matches!(self, Endpoint::Create | Endpoint::Remove | Endpoint::Mount | Endpoint::Unmount)
    }

    /// How long Docker waits for this call (Create and Mount 2 min, the rest 1 min; moby's
    /// plugin client since 18.02, and dvdcli's Mesos isolator gives a Mount 2 min too), and the
    /// part of it kept for rolling back a failed step: the reply leaves well before the caller
    /// gives up, with this daemon's own error, after the undoing.
    pub fn budget(self) -> crate::deadline::Budget {
        use crate::deadline::Budget;
        use std::time::Duration;
        let caller = match self {
            Endpoint::Create => "Docker's 2 min Create timeout",
            Endpoint::Mount => "Docker's 2 min Mount timeout",
            Endpoint::Unmount => "Docker's 1 min Unmount timeout",
            Endpoint::Remove => "Docker's 1 min Remove timeout",
            _ => "Docker's 1 min timeout",
        };
        match self {
            Endpoint::Create | Endpoint::Mount => {
                Budget { caller, total: Duration::from_secs(100), reserve: Duration::from_secs(30) }
            }
            Endpoint::Unmount | Endpoint::Remove => {
                Budget { caller, total: Duration::from_secs(50), reserve: Duration::from_secs(15) }
            }
            _ => Budget { caller, total: Duration::from_secs(50), reserve: Duration::ZERO },
        }
    }

    fn path(self) -> &'static str {
        match self {
            Endpoint::Activate => "/Plugin.Activate",
            Endpoint::Create => "/VolumeDriver.Create",
            Endpoint::Remove => "/VolumeDriver.Remove",
            Endpoint::Mount => "/VolumeDriver.Mount",
            Endpoint::Unmount => "/VolumeDriver.Unmount",
            Endpoint::Path => "/VolumeDriver.Path",
            Endpoint::Get => "/VolumeDriver.Get",
            Endpoint::List => "/VolumeDriver.List",
            Endpoint::Capabilities => "/VolumeDriver.Capabilities",
        }
    }
}

/// The VolumeDriver handler for one service: each call within Docker's deadline for it
/// ([`Endpoint::budget`]).
pub fn router(service: ServiceSource) -> Handler {
    Arc::new(move |request: Request<Bytes>| {
        let service = Arc::clone(&service);
        Box::pin(async move {
            let (parts, body) = request.into_parts();
            let path = parts.uri.path();
            let call = answer(&service, &parts.method, path, &body);
            match Endpoint::from_path(path) {
                Some(endpoint) => crate::deadline::within(endpoint.budget(), call).await,
                None => call.await,
            }
        })
    })
}

/// The span of one request at `level` (a span's level is fixed where it is written).
macro_rules! request_span {
    ($level:ident, $endpoint:expr) => {
        tracing::span!(
            tracing::Level::$level,
            "request",
            front = "docker",
            op = $endpoint.label(),
            req = next_request_id(),
            volume = tracing::field::Empty,
            caller = tracing::field::Empty,
        )
    };
}

/// The number of the next request (for log lines).
fn next_request_id() -> u64 {
    static NEXT: AtomicU64 = AtomicU64::new(1);
    NEXT.fetch_add(1, Ordering::Relaxed)
}

/// Answers one VolumeDriver call at `path` (the admin socket strips its prefix first).
pub async fn answer(service: &ServiceSource, method: &Method, path: &str, body: &Bytes) -> Reply {
    let start = Instant::now();
    let Some(endpoint) = Endpoint::from_path(path) else {
        crate::metrics::record_request("other", crate::metrics::UNKNOWN_ENDPOINT, start.elapsed());
        return unknown(path);
    };
    if method != Method::POST {
        crate::metrics::record_request(endpoint.label(), crate::metrics::BAD_REQUEST, start.elapsed());
        return json_reply(StatusCode::METHOD_NOT_ALLOWED, &ErrorBody { err: format!("{path} takes POST") });
    }
    let span = if endpoint.changes_state() { request_span!(INFO, endpoint) } else { request_span!(DEBUG, endpoint) };
    let result = call(service, endpoint, body).instrument(span.clone()).await;
    let _entered = span.enter();
    let (reply, outcome) = match result {
        Ok(reply) => (reply, crate::metrics::OK),
        Err(e) => {
            let outcome = e.label();
            (e.into_reply(), outcome)
        }
    };
    crate::metrics::record_request(endpoint.label(), outcome, start.elapsed());
    reply
}

/// Decodes a body as JSON whatever the headers say.
pub(super) fn decode<'a, T: Deserialize<'a>>(endpoint: &'static str, body: &'a [u8]) -> Result<T, ProtocolError> {
    serde_json::from_slice(body).map_err(|e| ProtocolError::Decode { endpoint, message: e.to_string() })
}

/// A 200 reply with `body` as JSON.
pub(super) fn ok(body: &impl serde::Serialize) -> Outcome {
    Ok(json_reply(StatusCode::OK, body))
}

/// Notes the volume (and caller) a call is about in its span.
fn note(volume: &str, caller: Option<&str>) {
    let span = tracing::Span::current();
    if span.is_disabled() {
        return;
    }
    span.record("volume", excerpt(volume));
    if let Some(caller) = caller {
        span.record("caller", excerpt(caller));
    }
}

async fn call(s: &ServiceSource, endpoint: Endpoint, body: &Bytes) -> Outcome {
    let path = endpoint.path();
    match endpoint {
        Endpoint::Activate => ok(&ActivateResponse { implements: ["VolumeDriver"] }),
        Endpoint::Create => {
            let req: CreateRequest = decode(path, body)?;
            note(&req.name, None);
            s.get().await?.create(&req.name, &req.opts.unwrap_or_default()).await?;
            ok(&Empty {})
        }
        Endpoint::Remove => {
            let req: NameRequest = decode(path, body)?;
            note(&req.name, None);
            s.get().await?.remove(&req.name).await?;
            ok(&Empty {})
        }
        Endpoint::Mount => {
            let req: MountRequest = decode(path, body)?;
            note(&req.name, req.id.as_deref());
            let mountpoint = s.get().await?.mount(&req.name, req.id.as_deref()).await?;
            ok(&MountpointResponse { mountpoint: path_text(mountpoint) })
        }
        Endpoint::Unmount => {
            let req: MountRequest = decode(path, body)?;
            note(&req.name, req.id.as_deref());
            s.get().await?.unmount(&req.name, req.id.as_deref()).await?;
            ok(&Empty {})
        }
        Endpoint::Path => {
            let req: NameRequest = decode(path, body)?;
            let mountpoint = s.get().await?.path(&req.name).await?;
            ok(&MountpointResponse { mountpoint: mountpoint.map(path_text).unwrap_or_default() })
        }
        Endpoint::Get => {
            let req: NameRequest = decode(path, body)?;
            let info = s.get().await?.get(&req.name).await?;
            let mountpoint = info.mountpoint.as_deref().map(|p| p.to_string_lossy());
            Ok(bytes_reply(super::encode::get_reply(&info, mountpoint.as_deref())))
        }
        Endpoint::List => {
            let listing = s.get().await?.list().await?;
            let stale = listing.stale.map(|stale| stale.to_string());
            let note = stale.as_ref().map(|stale| StaleNote { stale: stale.clone() });
            let volumes = listing
                .volumes
                .into_iter()
                .map(|v| Volume { name: v.name, mountpoint: v.mountpoint, created_at: None, status: note.clone() })
                .collect();
            ok(&ListResponse { volumes, stale })
        }
        Endpoint::Capabilities => {
            let scope = s.get().await?.scope().as_str();
            ok(&CapabilitiesResponse { capabilities: Capabilities { scope } })
        }
    }
}

/// A host path as reply text (lossy only for a path that is not UTF-8, which names never make).
fn path_text(path: std::path::PathBuf) -> String {
    path.into_os_string().into_string().unwrap_or_else(|raw| raw.to_string_lossy().into_owned())
}

/// The reply to a path that is no endpoint.
pub(super) fn unknown(path: &str) -> Reply {
    json_reply(StatusCode::NOT_FOUND, &ErrorBody { err: format!("unknown endpoint {}", excerpt(path)) })
}
