//! The private admin API, served on `<run>/rexray-admin.sock` (mode 0600, so root only).
//!
//! It lets `rexray volume …` act through the running daemon, so that the daemon's per-volume
//! locks and mount accounting stay right. It adds nothing new on the wire:
//!
//! - `POST /Admin.Info` → `{"Version", "Pid", "Config", "Services": [{"Name", "Backend"}]}`;
//! - `POST /Admin.Progress` → what the running operations wait for ([`crate::progress::Note`]s);
//! - `POST /services/<name>/VolumeDriver.*` → the Docker VolumeDriver endpoints of the service
//!   `<name>` (the same router as a plugin socket, see [`super::router`]);
//! - `POST /services/<name>/Snapshot.*` → its snapshots ([`super::snapshots`]);
//! - `POST /services/<name>/Volume.*` → volume operations Docker has no call for
//!   ([`super::volume_ops`]: resize).

use std::sync::Arc;

use hyper::body::Bytes;
use hyper::{Request, StatusCode};
use serde::{Deserialize, Serialize};

use super::error::json_reply;
use super::routes::{unknown, ServiceSource};
use crate::server::Handler;

/// The file name of the admin socket inside the daemon's run directory.
pub const SOCKET_NAME: &str = "rexray-admin.sock";

/// The path prefix under which a service's VolumeDriver endpoints are served.
pub fn service_prefix(service: &str) -> String {
    format!("/services/{service}")
}

/// One service the daemon serves.
#[derive(Debug, Clone)]
pub struct AdminService {
    /// The service name (`libstorage.server.services.<name>`).
    pub name: String,
    /// The backend kind (`vfs`, `loop`, `ebs`).
    pub backend: &'static str,
    /// The service itself (opened lazily).
    pub handle: ServiceSource,
}

/// `/Admin.Info` reply: who is answering.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InfoResponse {
    /// The daemon's version.
    #[serde(rename = "Version")]
    pub version: String,
    /// The daemon's process ID.
    #[serde(rename = "Pid")]
    pub pid: u32,
    /// The config file the daemon read, if any.
    #[serde(rename = "Config", default)]
    pub config: Option<String>,
    /// The services, in configuration order.
    #[serde(rename = "Services")]
    pub services: Vec<ServiceInfo>,
}

/// One service in [`InfoResponse`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceInfo {
    /// The service name.
    #[serde(rename = "Name")]
    pub name: String,
    /// The backend kind.
    #[serde(rename = "Backend")]
    pub backend: String,
}

/// The admin handler: `/Admin.Info` plus every service's VolumeDriver and snapshot endpoints
/// under [`service_prefix`].
pub fn router(services: Vec<AdminService>, config: Option<String>) -> Handler {
    let info = InfoResponse {
        version: env!("CARGO_PKG_VERSION").to_string(),
        pid: std::process::id(),
        config,
        services: services
            .iter()
            .map(|s| ServiceInfo { name: s.name.clone(), backend: s.backend.to_string() })
            .collect(),
    };
    let shared = Arc::new((info, services));
    Arc::new(move |request: Request<Bytes>| {
        let shared = Arc::clone(&shared);
        Box::pin(async move {
            let (info, services) = &*shared;
            let (parts, body) = request.into_parts();
            let path = parts.uri.path();
            if path == "/Admin.Info" {
                return json_reply(StatusCode::OK, info);
            }
            if path == "/Admin.Progress" {
                return json_reply(StatusCode::OK, &crate::progress::notes());
            }
            let Some((service, endpoint)) = path.strip_prefix("/services/").and_then(|rest| rest.split_once('/'))
            else {
                return unknown(path);
            };
            let Some(service) = services.iter().find(|s| s.name == service) else {
                return unknown(path);
            };
            if let Some(reply) = super::snapshots::answer(&service.handle, endpoint, &body).await {
                return reply;
            }
            if let Some(reply) = super::volume_ops::answer(&service.handle, endpoint, &body).await {
                return reply;
            }
            super::routes::answer(&service.handle, &parts.method, &format!("/{endpoint}"), &body).await
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::fake::FakeBackend;
    use crate::config::Integration;
    use crate::service::{ServiceHandle, VolumeService};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    fn settings() -> Integration {
        Integration::defaults(std::path::Path::new("/unused"))
    }

    /// One `Connection: close` POST; returns the status code and the body.
    async fn post(socket: &std::path::Path, path: &str, body: &str) -> (u16, String) {
        let mut stream = tokio::net::UnixStream::connect(socket).await.unwrap();
        let request = format!(
            "POST {path} HTTP/1.1\r\nHost: admin\r\nConnection: close\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        stream.write_all(request.as_bytes()).await.unwrap();
        let mut reply = String::new();
        stream.read_to_string(&mut reply).await.unwrap();
        let status = reply[9..12].parse().unwrap();
        let body = reply.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default();
        (status, body)
    }

    #[tokio::test]
    async fn info_and_nested_services() {
        let dir = tempfile::tempdir().unwrap();
        let fake = Arc::new(FakeBackend::default());
        let backend = FakeBackend::backend(&fake);
        let service = VolumeService::open("one", backend, settings(), dir.path().join("state"), None).await.unwrap();
        let handle = Arc::new(ServiceHandle::ready(Arc::new(service)));
        let app = router(
            vec![AdminService { name: "one".into(), backend: "fake", handle }],
            Some("/etc/rexray/rexray.yml".into()),
        );
        let socket = dir.path().join(SOCKET_NAME);
        let bound = crate::server::bind(&socket, None).unwrap();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(crate::server::serve(vec![(bound, app)], crate::server::Limits::default(), async {
            let _ = stopped.await;
        }));

        let (status, body) = post(&socket, "/Admin.Info", "").await;
        assert_eq!(status, 200, "{body}");
        let info: InfoResponse = serde_json::from_str(&body).unwrap();
        assert_eq!(info.services, vec![ServiceInfo { name: "one".into(), backend: "fake".into() }]);
        assert_eq!(info.pid, std::process::id());
        assert_eq!(info.config.as_deref(), Some("/etc/rexray/rexray.yml"));

        let (status, body) = post(&socket, "/services/one/VolumeDriver.Mount", r#"{"Name":"v","ID":"cli"}"#).await;
        assert_eq!(status, 200, "{body}");
        assert!(body.contains("/fake/v"), "{body}");
        assert_eq!(fake.calls(), ["create:v", "activate:v"]);
        let (status, _) = post(&socket, "/services/two/VolumeDriver.Get", r#"{"Name":"v"}"#).await;
        assert_eq!(status, 404);

        // Snapshot endpoints: a backend without snapshots says so; a bad body is named.
        let (status, body) = post(&socket, "/services/one/Snapshot.List", "").await;
        assert_eq!(status, 500, "{body}");
        assert_eq!(body, r#"{"Err":"list snapshots: snapshots are not supported by the fake backend"}"#);
        let (status, body) = post(&socket, "/services/one/Snapshot.Create", r#"{"Volume":"v"}"#).await;
        assert_eq!(status, 500, "{body}");
        assert!(body.contains(r#"snapshot \"v\": snapshots are not supported by the fake backend"#), "{body}");
        let (status, body) = post(&socket, "/services/one/Snapshot.Wait", r#"{"ID":"snap-1"}"#).await;
        assert_eq!(status, 400, "{body}");
        assert!(body.contains("/Snapshot.Wait: malformed request body: missing field `TimeoutSeconds`"), "{body}");
        stop.send(()).unwrap();
        server.await.unwrap().unwrap();
    }
}
