//! The metrics listener's endpoints: `GET /metrics` (OpenMetrics text) and `GET /health`
//! (200 `{"status":"ok",…}` when every service is open, else 503 `{"status":"unavailable",…}`
//! with each service's state).

use std::sync::Arc;

use http_body_util::Full;
use hyper::body::Bytes;
use hyper::{header, Request, Response, StatusCode};

use crate::metrics::Health;
use crate::server::{Handler, Reply};

fn reply(status: StatusCode, content_type: &'static str, body: String) -> Reply {
    let mut reply = Response::new(Full::new(Bytes::from(body)));
    *reply.status_mut() = status;
    reply.headers_mut().insert(header::CONTENT_TYPE, header::HeaderValue::from_static(content_type));
    reply
}

/// The handler of the metrics listener.
pub fn router(health: Health) -> Handler {
    Arc::new(move |request: Request<Bytes>| {
        let health = health.clone();
        Box::pin(async move {
            match request.uri().path() {
                "/metrics" => reply(StatusCode::OK, crate::metrics::OPENMETRICS, crate::metrics::render()),
                "/health" => {
                    let (ok, body) = health.body();
                    let status = if ok { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
                    reply(status, "application/json", body)
                }
                _ => reply(StatusCode::NOT_FOUND, "text/plain", "not found: try /metrics or /health\n".into()),
            }
        })
    })
}

#[cfg(test)]
mod tests {
    use http_body_util::BodyExt;

    use super::*;
    use crate::metrics::ServiceState;

    async fn get(handler: &Handler, path: &str) -> (StatusCode, String, String) {
        let reply = handler(Request::get(path).body(Bytes::new()).unwrap()).await;
        let status = reply.status();
        let kind = reply.headers()[header::CONTENT_TYPE].to_str().unwrap().to_owned();
        let body = reply.into_body().collect().await.unwrap().to_bytes();
        (status, kind, String::from_utf8_lossy(&body).into_owned())
    }

    #[tokio::test]
    async fn health_and_metrics_are_served() {
        let health = Health::default();
        health.set("a", ServiceState::Ready);
        health.set("b", ServiceState::Opening);
        let handler = router(health.clone());
        let (status, _, body) = get(&handler, "/health").await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert!(body.contains("\"b\":\"opening\""), "{body}");
        health.set("b", ServiceState::Ready);
        assert_eq!(get(&handler, "/health").await.0, StatusCode::OK);
        let (status, kind, body) = get(&handler, "/metrics").await;
        assert_eq!(status, StatusCode::OK);
        assert!(kind.starts_with("application/openmetrics-text"), "{kind}");
        assert!(body.contains("rexray_service_up{service=\"b\"} 1"), "{body}");
        assert_eq!(get(&handler, "/nope").await.0, StatusCode::NOT_FOUND);
    }
}
