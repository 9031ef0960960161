//! Sockets, HTTP/1 serving with limits, signals and graceful shutdown.
//!
//! Each docker module gets its own Unix socket: one that systemd passed (socket activation,
//! `LISTEN_FDS`, matched to the module by its path), else one bound here. Connections are served
//! with hyper directly: every body is read whole before the reply, headers and bodies have
//! timeouts, an oversize `Content-Length` is refused at once, and the number of connections is
//! capped ([`Limits`]). Shutdown stops accepting, closes idle connections, lets calls in flight
//! finish within a grace, drops the rest, and removes the socket files that were bound here
//! (systemd keeps its own). It never unmounts or detaches a volume: containers may still be
//! using them. A leaf module: it knows HTTP, not volumes.

use std::future::Future;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use http_body_util::{BodyExt, Full, LengthLimitError, Limited};
use hyper::body::{Bytes, Incoming};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{header, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::{TcpListener, UnixListener};
use tokio::sync::{watch, Notify, Semaphore};
use tokio::task::JoinSet;
use tracing::{debug, info, warn};

/// How long in-flight calls may take to finish after a shutdown signal by default: a Mount's
/// longest wait is bounded well inside Docker's 2-minute limit, and an operation still running
/// at exit is finished or undone at the next start.
pub const DRAIN_DEADLINE: Duration = Duration::from_secs(30);

/// Errors setting up or serving a socket.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// A filesystem or socket operation failed.
    #[error("{op} {}", path.display())]
    Io {
        /// What was being done.
        op: &'static str,
        /// The socket or directory.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// Another process answers on the socket.
    #[error("another process is already serving {}", .0.display())]
    InUse(PathBuf),
    /// Something that is not a socket is in the way.
    #[error("{} exists and is not a socket; refusing to remove it", .0.display())]
    NotASocket(PathBuf),
    /// The socket group does not exist.
    #[error("unknown group {0:?} for the socket")]
    UnknownGroup(String),
}

fn io(op: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> ServerError {
    let path = path.to_path_buf();
    move |source| ServerError::Io { op, path, source }
}

/// A bound socket and where it lives.
#[derive(Debug)]
pub struct BoundSocket {
    /// The listener.
    pub listener: UnixListener,
    /// The socket file, removed at shutdown unless `inherited`.
    pub path: PathBuf,
    /// Passed by systemd (socket activation): the file is systemd's, so it stays at shutdown.
    pub inherited: bool,
}

/// Listening Unix sockets passed by systemd socket activation (`LISTEN_FDS`, `LISTEN_PID`),
/// each with the path it is bound to (from `getsockname`).
#[derive(Debug, Default)]
pub struct Inherited {
    /// Sockets not yet taken, by path.
    sockets: Vec<(PathBuf, std::os::unix::net::UnixListener)>,
}

impl Inherited {
    /// Takes the sockets systemd passed to this process, if any. Fds that are not listening
    /// Unix stream sockets with a path are logged and closed.
    ///
    /// Call it before starting threads: it reads (and the crate may clear) environment variables.
    pub fn from_env() -> Self {
        let mut fds = listenfd::ListenFd::from_env();
        let mut sockets = Vec::new();
        for idx in 0..fds.len() {
            match fds.take_unix_listener(idx) {
                Ok(Some(listener)) => {
                    // A duplicate made with F_DUPFD_CLOEXEC, so tools we run (mkfs, blkid) do not
                    // inherit the listening socket; the original fd closes when dropped.
                    let listener = match listener.try_clone() {
                        Ok(dup) => dup,
                        Err(e) => {
                            warn!(fd = idx + 3, error = %e, "cannot duplicate an inherited socket; using it as is");
                            listener
                        }
                    };
                    match listener.local_addr().ok().and_then(|a| a.as_pathname().map(Path::to_path_buf)) {
                        Some(path) => sockets.push((path, listener)),
                        None => warn!(fd = idx + 3, "an inherited socket has no path; closing it"),
                    }
                }
                Ok(None) => {}
                Err(e) => {
                    warn!(fd = idx + 3, error = %e, "an inherited fd is not a listening Unix socket; ignoring it");
                }
            }
        }
        Self { sockets }
    }

    /// Sockets for tests and callers that got them elsewhere.
    pub fn from_sockets(sockets: Vec<(PathBuf, std::os::unix::net::UnixListener)>) -> Self {
        Self { sockets }
    }

    /// Whether no socket is left.
    pub fn is_empty(&self) -> bool {
        self.sockets.is_empty()
    }

    /// The paths of the sockets not taken.
    pub fn paths(&self) -> Vec<PathBuf> {
        self.sockets.iter().map(|(p, _)| p.clone()).collect()
    }

    /// Takes the socket bound at `path` (compared after resolving symbolic links in the
    /// directories, so `/var/run/x.sock` matches `/run/x.sock`).
    pub fn take(&mut self, path: &Path) -> Option<std::os::unix::net::UnixListener> {
        let wanted = canonical_socket_path(path);
        let idx = self.sockets.iter().position(|(p, _)| canonical_socket_path(p) == wanted)?;
        Some(self.sockets.remove(idx).1)
    }
}

/// `path` with its directory resolved (the socket file itself may not exist).
fn canonical_socket_path(path: &Path) -> PathBuf {
    match (path.parent().and_then(|d| std::fs::canonicalize(d).ok()), path.file_name()) {
        (Some(dir), Some(name)) => dir.join(name),
        _ => path.to_path_buf(),
    }
}

/// The socket for `path`: the one systemd passed for that path if there is one, else a new one
/// from [`bind`].
///
/// # Errors
/// As [`bind`]; or the inherited socket could not be made non-blocking.
pub fn bind_or_inherit(
    path: &Path,
    group: Option<&str>,
    inherited: &mut Inherited,
) -> Result<BoundSocket, ServerError> {
    let Some(std_listener) = inherited.take(path) else {
        return bind(path, group);
    };
    std_listener.set_nonblocking(true).map_err(io("set non-blocking", path))?;
    let listener = UnixListener::from_std(std_listener).map_err(io("register", path))?;
    match std::fs::metadata(path) {
        Ok(meta) if meta.permissions().mode() & 0o007 != 0 => warn!(
            socket = %path.display(),
            mode = format!("{:o}", meta.permissions().mode() & 0o7777),
            "the socket from systemd is open to every user; set SocketMode=0600 (or 0660 and SocketGroup) in the .socket unit"
        ),
        _ => {}
    }
    info!(socket = %path.display(), "using the socket passed by systemd (socket activation)");
    Ok(BoundSocket { listener, path: path.to_path_buf(), inherited: true })
}

/// Tells systemd the daemon is ready (`READY=1` on `$NOTIFY_SOCKET`, for `Type=notify`), or
/// anything else in the sd_notify protocol. Does nothing without `NOTIFY_SOCKET`; a failure is
/// only logged.
pub fn notify_systemd(state: &str) {
    let Some(target) = std::env::var_os("NOTIFY_SOCKET").filter(|v| !v.is_empty()) else {
        return;
    };
    let result = (|| {
        let socket = std::os::unix::net::UnixDatagram::unbound()?;
        let bytes = target.as_encoded_bytes();
        if let Some(name) = bytes.strip_prefix(b"@") {
            use std::os::linux::net::SocketAddrExt;
            let addr = std::os::unix::net::SocketAddr::from_abstract_name(name)?;
            socket.send_to_addr(state.as_bytes(), &addr)
        } else {
            socket.send_to(state.as_bytes(), Path::new(&target))
        }
    })();
    if let Err(e) = result {
        warn!(error = %e, notify_socket = %target.to_string_lossy(), "could not notify systemd");
    }
}

/// Binds a Unix socket at `path`: creates the directory, removes a stale socket file (refusing
/// when a live process answers on it), binds, and sets mode 0600 (0660 and the group's
/// ownership when `group` is given).
///
/// # Errors
/// The socket could not be bound or given its mode and owner.
pub fn bind(path: &Path, group: Option<&str>) -> Result<BoundSocket, ServerError> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(io("create socket directory", dir))?;
    }
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_socket() => {
            if std::os::unix::net::UnixStream::connect(path).is_ok() {
                return Err(ServerError::InUse(path.to_path_buf()));
            }
            std::fs::remove_file(path).map_err(io("remove stale socket", path))?;
            info!(socket = %path.display(), "removed a stale socket file");
        }
        Ok(_) => return Err(ServerError::NotASocket(path.to_path_buf())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(io("inspect", path)(e)),
    }
    let gid = group.map(resolve_group).transpose()?;
    let listener = UnixListener::bind(path).map_err(io("bind", path))?;
    let mode = if gid.is_some() { 0o660 } else { 0o600 };
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).map_err(io("set mode of", path))?;
    if let Some(gid) = gid {
        std::os::unix::fs::chown(path, None, Some(gid)).map_err(io("set group of", path))?;
    }
    Ok(BoundSocket { listener, path: path.to_path_buf(), inherited: false })
}

/// A group name from /etc/group, or a numeric gid.
fn resolve_group(group: &str) -> Result<u32, ServerError> {
    if let Ok(gid) = group.parse::<u32>() {
        return Ok(gid);
    }
    let text = std::fs::read_to_string("/etc/group").unwrap_or_default();
    text.lines()
        .filter_map(|line| {
            let mut fields = line.split(':');
            let name = fields.next()?;
            let gid = fields.nth(1)?.parse::<u32>().ok()?;
            (name == group).then_some(gid)
        })
        .next()
        .ok_or_else(|| ServerError::UnknownGroup(group.to_owned()))
}

/// What a socket's requests are answered by: a request whose body was read whole, in, a reply
/// out. Built by the protocol layer.
pub type Handler = Arc<dyn Fn(Request<Bytes>) -> ReplyFuture + Send + Sync>;

/// A reply on its way.
pub type ReplyFuture = Pin<Box<dyn Future<Output = Reply> + Send>>;

/// A reply: status, headers and a whole body.
pub type Reply = Response<Full<Bytes>>;

/// How the server treats its clients.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// A request's headers must arrive within this (slow or stalled clients are dropped).
    pub header_timeout: Duration,
    /// Its body must arrive within this, once the headers did.
    pub body_timeout: Duration,
    /// The largest body accepted; a larger `Content-Length` is refused at once with 413.
    pub max_body: usize,
    /// Connections open at once per socket; more are refused (and logged).
    pub max_connections: usize,
    /// After a shutdown signal, calls in flight may take this long to finish.
    pub grace: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            header_timeout: Duration::from_secs(10),
            body_timeout: Duration::from_secs(30),
            max_body: 1 << 20,
            max_connections: 512,
            grace: DRAIN_DEADLINE,
        }
    }
}

/// What every connection of one listener shares.
struct Shared {
    handler: Handler,
    limits: Limits,
    /// Where the listener is, for log lines.
    name: String,
    /// Requests being answered right now (over every listener of the server).
    inflight: Arc<InFlight>,
    /// Permits for open connections.
    connections: Arc<Semaphore>,
    /// When a refused connection was last logged, to log a burst once.
    refused_logged: std::sync::Mutex<Option<Instant>>,
}

/// Counts requests being answered; shutdown waits for it to reach zero.
#[derive(Debug, Default)]
struct InFlight {
    count: AtomicUsize,
    idle: Notify,
}

/// One request being answered; counted while it lives.
struct Answering<'a>(&'a InFlight);

impl<'a> Answering<'a> {
    fn enter(inflight: &'a InFlight) -> Self {
        inflight.count.fetch_add(1, Ordering::SeqCst);
        Self(inflight)
    }
}

impl Drop for Answering<'_> {
    fn drop(&mut self) {
        if self.0.count.fetch_sub(1, Ordering::SeqCst) == 1 {
            self.0.idle.notify_waiters();
        }
    }
}

impl InFlight {
    /// Waits until no request is being answered.
    async fn drained(&self) {
        loop {
            let notified = self.idle.notified();
            if self.count.load(Ordering::SeqCst) == 0 {
                return;
            }
            notified.await;
        }
    }
}

/// A short plain reply (413, 408, 400) that closes the connection: the rest of the request is
/// not read.
fn refusal(status: StatusCode, message: &str) -> Reply {
    let body = serde_json::json!({ "Err": message }).to_string();
    let mut reply = Response::new(Full::new(Bytes::from(body)));
    *reply.status_mut() = status;
    reply.headers_mut().insert(header::CONNECTION, header::HeaderValue::from_static("close"));
    reply.headers_mut().insert(header::CONTENT_TYPE, header::HeaderValue::from_static("application/json"));
    reply
}

/// Reads the whole body (within the limits), then answers.
async fn answer(shared: &Shared, request: Request<Incoming>) -> Reply {
    let limits = &shared.limits;
    let declared = request
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    if declared.is_some_and(|n| n > limits.max_body as u64) {
        return refusal(
            StatusCode::PAYLOAD_TOO_LARGE,
            &format!(
                "request body of {} bytes is larger than the limit of {} bytes",
                declared.unwrap_or(0),
                limits.max_body
            ),
        );
    }
    let (parts, body) = request.into_parts();
    let body = match tokio::time::timeout(limits.body_timeout, Limited::new(body, limits.max_body).collect()).await {
        Ok(Ok(collected)) => collected.to_bytes(),
        Ok(Err(e)) if e.downcast_ref::<LengthLimitError>().is_some() => {
            return refusal(
                StatusCode::PAYLOAD_TOO_LARGE,
                &format!("request body is larger than the limit of {} bytes", limits.max_body),
            )
        }
        Ok(Err(e)) => return refusal(StatusCode::BAD_REQUEST, &format!("could not read the request body: {e}")),
        Err(_) => {
            return refusal(
                StatusCode::REQUEST_TIMEOUT,
                &format!("the request body did not arrive within {} s", limits.body_timeout.as_secs()),
            )
        }
    };
    let _answering = Answering::enter(&shared.inflight);
    (shared.handler)(Request::from_parts(parts, body)).await
}

/// When a connection began waiting for its next request (it opened, or sent its last reply),
/// or `None` while it answers one: the header deadline kept without a timer per request.
#[derive(Debug)]
struct Waiting(std::sync::Mutex<Option<tokio::time::Instant>>);

impl Waiting {
    fn new() -> Self {
        Self(std::sync::Mutex::new(Some(tokio::time::Instant::now())))
    }

    fn set(&self, since: Option<tokio::time::Instant>) {
        *self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = since;
    }

    fn since(&self) -> Option<tokio::time::Instant> {
        *self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Resolves once the connection has waited `limit` for a request's headers (a client
    /// that stalls, trickles its headers, or keeps an idle connection open). It wakes only
    /// when a deadline could have passed, not at every request.
    async fn stalled(&self, limit: Duration) {
        let mut check_at = tokio::time::Instant::now() + limit;
        loop {
            tokio::time::sleep_until(check_at).await;
            check_at = match self.since() {
                Some(since) if since.elapsed() >= limit => return,
                Some(since) => since + limit,
                // Answering (the body and the call have their own limits): look again later.
                None => tokio::time::Instant::now() + limit,
            };
        }
    }
}

/// Serves one connection until it closes, or, after `stop`, until its request in flight is
/// answered. A request's headers must arrive within [`Limits::header_timeout`] of the
/// connection opening or the previous reply; else the connection is dropped.
async fn serve_connection<IO>(io: IO, shared: Arc<Shared>, mut stop: watch::Receiver<bool>)
where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let waiting = Arc::new(Waiting::new());
    let service = {
        let (shared, waiting) = (Arc::clone(&shared), Arc::clone(&waiting));
        service_fn(move |request| {
            let (shared, waiting) = (Arc::clone(&shared), Arc::clone(&waiting));
            async move {
                waiting.set(None);
                let reply = answer(&shared, request).await;
                waiting.set(Some(tokio::time::Instant::now()));
                Ok::<_, std::convert::Infallible>(reply)
            }
        })
    };
    let conn = http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(None::<Duration>)
        .keep_alive(true)
        .serve_connection(TokioIo::new(io), service);
    tokio::pin!(conn);
    let limit = shared.limits.header_timeout;
    tokio::select! {
        result = conn.as_mut() => {
            if let Err(e) = result {
                debug!(listener = %shared.name, error = %e, "connection ended with an error");
            }
        }
        () = waiting.stalled(limit) => {
            debug!(listener = %shared.name, timeout_ms = limit.as_millis(), "no request headers within the header timeout; closing the connection");
        }
        () = async { drop(stop.wait_for(|s| *s).await) } => {
            // Idle connections close at once; a request in flight is answered first.
            conn.as_mut().graceful_shutdown();
            tokio::select! {
                result = conn => {
                    if let Err(e) = result {
                        debug!(listener = %shared.name, error = %e, "connection ended with an error during shutdown");
                    }
                }
                () = waiting.stalled(limit) => {}
            }
        }
    }
}

impl Shared {
    /// Takes a connection permit, or logs (once per burst) that the limit is reached.
    fn admit(&self) -> Option<tokio::sync::OwnedSemaphorePermit> {
        if let Ok(permit) = Arc::clone(&self.connections).try_acquire_owned() {
            return Some(permit);
        }
        let mut last = self.refused_logged.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if last.is_none_or(|at| at.elapsed() > Duration::from_secs(10)) {
            *last = Some(Instant::now());
            warn!(
                listener = %self.name,
                limit = self.limits.max_connections,
                "connection limit reached: refusing new connections until some close"
            );
        }
        None
    }
}

/// Serves each socket with its handler until `shutdown` resolves, then drains and removes the
/// socket files.
///
/// # Errors
/// A socket failed while serving.
pub async fn serve(
    sockets: Vec<(BoundSocket, Handler)>,
    limits: Limits,
    shutdown: impl Future<Output = ()>,
) -> Result<(), ServerError> {
    serve_all(sockets, Vec::new(), limits, shutdown).await
}

/// [`serve`], plus TCP listeners (the metrics endpoint), which stop with the rest.
///
/// Every request's body is read whole (up to [`Limits::max_body`]) before it is answered, so a
/// client that sends headers and body apart keeps its connection; headers and bodies must
/// arrive within their timeouts. On `shutdown`: no new connections; idle ones close at once;
/// calls in flight get [`Limits::grace`] to finish; then every connection left (half-sent
/// requests among them) is dropped.
///
/// # Errors
/// A socket failed while serving.
pub async fn serve_all(
    sockets: Vec<(BoundSocket, Handler)>,
    tcp: Vec<(TcpListener, Handler)>,
    limits: Limits,
    shutdown: impl Future<Output = ()>,
) -> Result<(), ServerError> {
    let (stop_tx, stop_rx) = watch::channel(false);
    let inflight = Arc::new(InFlight::default());
    let connections = Arc::new(tokio::sync::Mutex::new(JoinSet::new()));
    let mut listeners = JoinSet::new();
    let mut paths = Vec::new();
    let shared_for = |name: String, handler: Handler| {
        Arc::new(Shared {
            handler,
            limits,
            name,
            inflight: Arc::clone(&inflight),
            connections: Arc::new(Semaphore::new(limits.max_connections)),
            refused_logged: std::sync::Mutex::new(None),
        })
    };
    for (listener, handler) in tcp {
        let addr = listener.local_addr().map(|a| a.to_string()).unwrap_or_default();
        let shared = shared_for(addr.clone(), handler);
        let (stop, conns) = (stop_rx.clone(), Arc::clone(&connections));
        listeners.spawn(async move {
            accept_loop(&shared, stop, conns, || listener.accept()).await.map_err(io("serve", Path::new(&addr)))
        });
    }
    for (socket, handler) in sockets {
        let path = socket.path.clone();
        if !socket.inherited {
            paths.push(path.clone());
        }
        let shared = shared_for(path.display().to_string(), handler);
        let (stop, conns) = (stop_rx.clone(), Arc::clone(&connections));
        listeners.spawn(async move {
            let listener = socket.listener;
            accept_loop(&shared, stop, conns, || listener.accept()).await.map_err(io("serve", &path))
        });
    }
    let failed = tokio::select! {
        () = shutdown => None,
        Some(joined) = listeners.join_next() => Some(joined),
    };
    info!("shutting down: no new connections; finishing calls in flight");
    let _ = stop_tx.send(true);
    listeners.shutdown().await;
    let drained = tokio::time::timeout(limits.grace, inflight.drained()).await.is_ok();
    if !drained {
        warn!(grace_secs = limits.grace.as_secs(), "calls still in flight after the shutdown grace; exiting anyway");
    }
    // What is left: connections that sent half a request, or whose call outlived the grace.
    connections.lock().await.shutdown().await;
    for path in &paths {
        if let Err(e) = std::fs::remove_file(path) {
            warn!(socket = %path.display(), error = %e, "could not remove the socket file");
        }
    }
    match failed {
        Some(Ok(Err(e))) => Err(e),
        _ => Ok(()),
    }
}

/// Accepts connections until `stop`, each served on a task of its own in `connections`.
async fn accept_loop<IO, Addr, A, F>(
    shared: &Arc<Shared>,
    mut stop: watch::Receiver<bool>,
    connections: Arc<tokio::sync::Mutex<JoinSet<()>>>,
    accept: F,
) -> std::io::Result<()>
where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    F: Fn() -> A,
    A: Future<Output = std::io::Result<(IO, Addr)>>,
{
    loop {
        let accepted = tokio::select! {
            accepted = accept() => accepted,
            _ = stop.wait_for(|s| *s) => return Ok(()),
        };
        let stream = match accepted {
            Ok((stream, _)) => stream,
            // Out of descriptors and the like: pause rather than spin, keep serving.
            Err(e) => {
                warn!(listener = %shared.name, error = %e, "could not accept a connection");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Some(permit) = shared.admit() else {
            drop(stream);
            continue;
        };
        let (shared, stop) = (Arc::clone(shared), stop.clone());
        let mut conns = connections.lock().await;
        // Reap finished connections so the set does not grow with every one ever served.
        while conns.try_join_next().is_some() {}
        conns.spawn(async move {
            serve_connection(stream, shared, stop).await;
            drop(permit);
        });
    }
}

/// Listens for SIGTERM and SIGINT from now on, and returns a future that resolves on the first
/// one. Registering at once (not when first polled) means a signal that comes right after the
/// daemon said it is ready (systemd stopping it during start) is not lost to the default
/// action. Must be called inside the runtime.
///
/// # Errors
/// The signal handlers could not be installed.
pub fn shutdown_signals() -> std::io::Result<impl Future<Output = ()>> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    Ok(async move {
        tokio::select! {
            _ = term.recv() => info!("SIGTERM received"),
            _ = int.recv() => info!("SIGINT received"),
        }
    })
}
