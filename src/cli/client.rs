//! A small plugin-protocol HTTP client: one POST per connection, over a Unix socket or TCP,
//! shaped like Docker's (`Accept: application/vnd.docker.plugins.v1.2+json`, no Content-Type,
//! JSON plus a newline, an empty body when there are no arguments).
//!
//! Used by the dvdcli mode (any plugin), by `rexray volume …` (the daemon's admin socket) and by
//! `rexray service status`.

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;

/// The media type Docker's plugin client sends in `Accept`.
pub const ACCEPT: &str = "application/vnd.docker.plugins.v1.2+json";

/// Where a plugin listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Addr {
    /// A Unix socket.
    Unix(PathBuf),
    /// Plain HTTP over TCP, `host:port`.
    Tcp(String),
}

impl fmt::Display for Addr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Addr::Unix(p) => write!(f, "unix://{}", p.display()),
            Addr::Tcp(a) => write!(f, "tcp://{a}"),
        }
    }
}

/// Why a call failed.
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    /// Nothing could be reached at the address (no socket, connection refused, …): nothing was
    /// sent, so the call may be retried.
    #[error("cannot connect to {addr}")]
    Connect {
        /// The address.
        addr: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The connection worked but the exchange failed.
    #[error("{method}: {message}")]
    Http {
        /// The endpoint, e.g. `VolumeDriver.Mount`.
        method: String,
        /// What went wrong.
        message: String,
    },
    /// No reply within the deadline.
    #[error("{method}: no reply within {} s", .timeout.as_secs())]
    Timeout {
        /// The endpoint.
        method: String,
        /// The deadline.
        timeout: Duration,
    },
    /// The plugin answered with an error: its `Err` text (or the raw body), as Docker shows it.
    #[error("{method}: {message}")]
    Plugin {
        /// The endpoint.
        method: String,
        /// The HTTP status.
        status: u16,
        /// The plugin's message.
        message: String,
    },
}

impl CallError {
    /// Whether nothing was sent (the address could not be reached).
    pub fn is_connect(&self) -> bool {
        matches!(self, CallError::Connect { .. })
    }

    /// Whether the connection was refused for lack of permission.
    pub fn is_permission_denied(&self) -> bool {
        matches!(self, CallError::Connect { source, .. } if source.kind() == std::io::ErrorKind::PermissionDenied)
    }
}

/// POSTs `body` (`None`: an empty body) to `/<method>` and returns the reply body of a 200.
///
/// # Errors
/// [`CallError::Connect`] when nothing answers, [`CallError::Plugin`] for a non-200 reply (with
/// the `Err` text), [`CallError::Timeout`] after `timeout`, [`CallError::Http`] otherwise.
pub async fn call(
    addr: &Addr,
    method: &str,
    body: Option<&serde_json::Value>,
    timeout: Duration,
) -> Result<Bytes, CallError> {
    let payload = match body {
        Some(value) => {
            let mut bytes = serde_json::to_vec(value).map_err(|e| http_err(method, e))?;
            bytes.push(b'\n');
            bytes
        }
        None => Vec::new(),
    };
    let request = Request { verb: hyper::Method::POST, path: format!("/{method}"), method, payload };
    match tokio::time::timeout(timeout, exchange(addr, request)).await {
        Ok(result) => result,
        Err(_) => Err(CallError::Timeout { method: method.to_string(), timeout }),
    }
}

/// GETs `path` (Docker's Engine API, say `/plugins`) and decodes the reply of a 200 as JSON.
///
/// # Errors
/// As [`call`]; [`CallError::Http`] for a reply that is not JSON.
pub async fn get_json(addr: &Addr, path: &str, timeout: Duration) -> Result<serde_json::Value, CallError> {
    let request = Request { verb: hyper::Method::GET, path: path.to_owned(), method: path, payload: Vec::new() };
    let bytes = match tokio::time::timeout(timeout, exchange(addr, request)).await {
        Ok(result) => result?,
        Err(_) => return Err(CallError::Timeout { method: path.to_string(), timeout }),
    };
    serde_json::from_slice(&bytes).map_err(|e| http_err(path, format!("malformed reply: {e}")))
}

/// One request: the HTTP verb and path, the name errors use, the body.
struct Request<'a> {
    verb: hyper::Method,
    path: String,
    method: &'a str,
    payload: Vec<u8>,
}

/// [`call`], then decodes the reply as JSON; a 200 reply with a non-empty `Err` is an error too
/// (as Docker's generated proxy treats it).
///
/// # Errors
/// Those of [`call`], and [`CallError::Http`] for a reply that is not JSON.
pub async fn call_json(
    addr: &Addr,
    method: &str,
    body: Option<&serde_json::Value>,
    timeout: Duration,
) -> Result<serde_json::Value, CallError> {
    let bytes = call(addr, method, body, timeout).await?;
    let value: serde_json::Value = if bytes.iter().all(u8::is_ascii_whitespace) {
        serde_json::json!({})
    } else {
        serde_json::from_slice(&bytes).map_err(|e| http_err(method, format!("malformed reply: {e}")))?
    };
    if let Some(err) = value.get("Err").and_then(|e| e.as_str()).filter(|e| !e.is_empty()) {
        return Err(CallError::Plugin { method: method.to_string(), status: 200, message: err.to_string() });
    }
    Ok(value)
}

fn http_err(method: &str, e: impl fmt::Display) -> CallError {
    CallError::Http { method: method.to_string(), message: e.to_string() }
}

async fn exchange(addr: &Addr, request: Request<'_>) -> Result<Bytes, CallError> {
    let connect_err = |source| CallError::Connect { addr: addr.to_string(), source };
    match addr {
        Addr::Unix(path) => {
            let stream = tokio::net::UnixStream::connect(path).await.map_err(connect_err)?;
            send(stream, request).await
        }
        Addr::Tcp(host) => {
            let stream = tokio::net::TcpStream::connect(host).await.map_err(connect_err)?;
            send(stream, request).await
        }
    }
}

async fn send<S>(stream: S, request: Request<'_>) -> Result<Bytes, CallError>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let method = request.method;
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.map_err(|e| http_err(method, e))?;
    let driver = tokio::spawn(async move {
        let _ = connection.await;
    });
    let request = hyper::Request::builder()
        .method(request.verb)
        .uri(request.path)
        .header(hyper::header::HOST, "plugin.moby.localhost")
        .header(hyper::header::ACCEPT, ACCEPT)
        .body(Full::new(Bytes::from(request.payload)))
        .map_err(|e| http_err(method, e))?;
    let reply = sender.send_request(request).await.map_err(|e| http_err(method, e));
    let result = match reply {
        Ok(reply) => {
            let status = reply.status().as_u16();
            let body = reply.into_body().collect().await.map_err(|e| http_err(method, e))?.to_bytes();
            if status == 200 {
                Ok(body)
            } else {
                let message = serde_json::from_slice::<serde_json::Value>(&body)
                    .ok()
                    .and_then(|v| v.get("Err").and_then(|e| e.as_str()).map(str::to_string))
                    .filter(|e| !e.is_empty())
                    .unwrap_or_else(|| String::from_utf8_lossy(&body).trim().to_string());
                Err(CallError::Plugin { method: method.to_string(), status, message })
            }
        }
        Err(e) => Err(e),
    };
    driver.abort();
    result
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};

    /// Serves one connection with a canned reply and returns the request it read.
    fn one_shot_server(path: &std::path::Path, reply: &'static str) -> std::thread::JoinHandle<String> {
        let listener = std::os::unix::net::UnixListener::bind(path).unwrap();
        std::thread::spawn(move || {
            let (mut conn, _) = listener.accept().unwrap();
            let mut request = Vec::new();
            let mut buf = [0u8; 4096];
            loop {
                let n = conn.read(&mut buf).unwrap();
                request.extend_from_slice(&buf[..n]);
                let text = String::from_utf8_lossy(&request).to_string();
                if let Some((head, body)) = text.split_once("\r\n\r\n") {
                    let len = head
                        .lines()
                        .find_map(|l| {
                            l.to_ascii_lowercase()
                                .strip_prefix("content-length:")
                                .map(|v| v.trim().parse::<usize>().unwrap())
                        })
                        .unwrap_or(0);
                    if body.len() >= len {
                        break;
                    }
                }
                if n == 0 {
                    break;
                }
            }
            conn.write_all(reply.as_bytes()).unwrap();
            String::from_utf8_lossy(&request).to_string()
        })
    }

    #[tokio::test]
    async fn sends_docker_shaped_requests_and_reads_err() {
        let dir = tempfile::tempdir().unwrap();
        let sock = dir.path().join("p.sock");
        let server = one_shot_server(
            &sock,
            "HTTP/1.1 500 Internal Server Error\r\nContent-Length: 19\r\nConnection: close\r\n\r\n{\"Err\":\"it broke\"}\n",
        );
        let addr = Addr::Unix(sock);
        let err = call(&addr, "VolumeDriver.Mount", Some(&serde_json::json!({"Name": "v"})), Duration::from_secs(5))
            .await
            .unwrap_err();
        assert_eq!(err.to_string(), "VolumeDriver.Mount: it broke");
        let request = server.join().unwrap();
        assert!(request.starts_with("POST /VolumeDriver.Mount HTTP/1.1\r\n"), "{request}");
        assert!(request.to_ascii_lowercase().contains("accept: application/vnd.docker.plugins.v1.2+json"), "{request}");
        assert!(!request.to_ascii_lowercase().contains("content-type"), "{request}");
        assert!(request.ends_with("{\"Name\":\"v\"}\n"), "{request}");
    }

    #[tokio::test]
    async fn empty_body_for_activate_and_err_in_a_200() {
        let dir = tempfile::tempdir().unwrap();
        let sock = dir.path().join("p.sock");
        let server = one_shot_server(
            &sock,
            "HTTP/1.1 200 OK\r\nContent-Length: 13\r\nConnection: close\r\n\r\n{\"Err\":\"no\"}\n",
        );
        let err =
            call_json(&Addr::Unix(sock.clone()), "Plugin.Activate", None, Duration::from_secs(5)).await.unwrap_err();
        assert_eq!(err.to_string(), "Plugin.Activate: no");
        let request = server.join().unwrap();
        assert!(request.ends_with("\r\n\r\n"), "empty body: {request:?}");
    }

    #[tokio::test]
    async fn connect_errors_are_recognised() {
        let dir = tempfile::tempdir().unwrap();
        let err = call(&Addr::Unix(dir.path().join("none.sock")), "Plugin.Activate", None, Duration::from_secs(1))
            .await
            .unwrap_err();
        assert!(err.is_connect(), "{err:?}");
        assert!(!err.is_permission_denied());
    }
}
