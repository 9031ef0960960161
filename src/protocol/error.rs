//! The one place where errors become `{"Err": …}` replies.

use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};

use super::wire::{ErrorBody, CONTENT_TYPE};
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

/// Encodes a JSON reply with our media type.
pub fn json_response(status: StatusCode, body: &impl serde::Serialize) -> Response {
    match serde_json::to_vec(body) {
        Ok(bytes) => (status, [(header::CONTENT_TYPE, CONTENT_TYPE)], bytes).into_response(),
        Err(e) => {
            tracing::error!(error = %e, "could not encode a reply");
            (
                StatusCode::INTERNAL_SERVER_ERROR,
                [(header::CONTENT_TYPE, CONTENT_TYPE)],
                r#"{"Err":"could not encode reply"}"#,
            )
                .into_response()
        }
    }
}

impl IntoResponse for ProtocolError {
    fn into_response(self) -> Response {
        let (status, message) = match &self {
            ProtocolError::Decode { .. } => (StatusCode::BAD_REQUEST, self.to_string()),
            ProtocolError::Service(e) => (StatusCode::INTERNAL_SERVER_ERROR, e.chain()),
        };
        match &self {
            ProtocolError::Service(e) if e.is_not_found() => tracing::debug!(error = %message, "request failed"),
            _ => tracing::warn!(error = %message, "request failed"),
        }
        json_response(status, &ErrorBody { err: message })
    }
}
