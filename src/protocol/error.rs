//! The one place where errors become `{"Err": …}` replies (and metric outcomes).

use http_body_util::Full;
use hyper::body::Bytes;
use hyper::{header, Response, StatusCode};

use super::wire::{ErrorBody, CONTENT_TYPE};
use crate::server::Reply;
use crate::service::ServiceError;

/// Everything a handler can fail with.
#[derive(Debug, thiserror::Error)]
pub enum ProtocolError {
    /// The body is not the JSON this endpoint takes.
    #[error("{endpoint}: malformed request body: {message}")]
    Decode {
        /// The endpoint path.
        endpoint: &'static str,
        /// What serde said.
        message: String,
    },
    /// The service refused or failed.
    #[error(transparent)]
    Service(#[from] ServiceError),
}

/// The buffer a reply is encoded into starts this large.
const REPLY_CAPACITY: usize = 512;

/// Encodes a JSON reply with our media type.
pub fn json_reply(status: StatusCode, body: &impl serde::Serialize) -> Reply {
    // Room for a Get's reply at once (serde_json's own start of 128 bytes grows twice for it).
    let mut buf = Vec::with_capacity(REPLY_CAPACITY);
    let (status, bytes) = match serde_json::to_writer(&mut buf, body) {
        Ok(()) => (status, Bytes::from(buf)),
        Err(e) => {
            tracing::error!(error = %e, "could not encode a reply");
            (StatusCode::INTERNAL_SERVER_ERROR, Bytes::from_static(br#"{"Err":"could not encode reply"}"#))
        }
    };
    with_status(status, bytes)
}

/// A 200 reply of JSON already encoded.
pub fn bytes_reply(json: Vec<u8>) -> Reply {
    with_status(StatusCode::OK, Bytes::from(json))
}

fn with_status(status: StatusCode, json: Bytes) -> Reply {
    let mut reply = Response::new(Full::new(json));
    *reply.status_mut() = status;
    reply.headers_mut().insert(header::CONTENT_TYPE, header::HeaderValue::from_static(CONTENT_TYPE));
    reply
}

impl ProtocolError {
    /// The metric outcome of this failure.
    pub fn label(&self) -> &'static str {
        match self {
            ProtocolError::Decode { .. } => crate::metrics::BAD_REQUEST,
            ProtocolError::Service(e) => e.label(),
        }
    }

    /// The reply: 400 for a malformed request, else 500 with the whole chain, logged once here.
    pub fn into_reply(self) -> Reply {
        let (status, message) = match &self {
            ProtocolError::Decode { endpoint, message } => (
                StatusCode::BAD_REQUEST,
                // serde may quote the offending value: a little of it is enough.
                format!("{endpoint}: malformed request body: {}", crate::name::excerpt(message)),
            ),
            ProtocolError::Service(e) => (StatusCode::INTERNAL_SERVER_ERROR, e.chain()),
        };
        match &self {
            ProtocolError::Service(e) if e.is_not_found() => tracing::debug!(error = %message, "request failed"),
            _ => tracing::warn!(error = %message, "request failed"),
        }
        json_reply(status, &ErrorBody { err: message })
    }
}
