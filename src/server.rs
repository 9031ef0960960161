//! Sockets, signals and graceful shutdown.
//!
//! Each docker module gets its own Unix socket: one that systemd passed (socket activation,
//! `LISTEN_FDS`, matched to the module by its path), else one bound here. Shutdown stops
//! accepting, lets calls in flight finish (within a deadline), and removes the socket files that
//! were bound here (systemd keeps its own). It never unmounts or detaches a volume: containers
//! may still be using them.

use std::future::Future;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use axum::Router;
use tokio::net::{TcpListener, UnixListener};
use tokio::sync::watch;
use tracing::{info, warn};

/// How long in-flight calls may take to finish after a shutdown signal (Docker's longest
/// per-call timeout is 2 minutes).
pub const DRAIN_DEADLINE: Duration = Duration::from_secs(120);

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
                    warn!(fd = idx + 3, error = %e, "an inherited fd is not a listening Unix socket; ignoring it")
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
        warn!(error = %e, notify_socket = ?target, "could not notify systemd");
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

/// Serves each socket with its router until `shutdown` resolves, then drains and removes the
/// socket files.
///
/// # Errors
/// A socket failed while serving.
pub async fn serve(sockets: Vec<(BoundSocket, Router)>, shutdown: impl Future<Output = ()>) -> Result<(), ServerError> {
    serve_all(sockets, Vec::new(), shutdown).await
}

/// [`serve`], plus TCP listeners (the metrics endpoint), which stop with the rest.
///
/// # Errors
/// A socket failed while serving.
pub async fn serve_all(
    sockets: Vec<(BoundSocket, Router)>,
    tcp: Vec<(TcpListener, Router)>,
    shutdown: impl Future<Output = ()>,
) -> Result<(), ServerError> {
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut tasks = tokio::task::JoinSet::new();
    let mut paths = Vec::new();
    for (listener, router) in tcp {
        let mut stop = stop_rx.clone();
        let addr = listener.local_addr().map(|a| a.to_string()).unwrap_or_default();
        tasks.spawn(async move {
            let result = axum::serve(listener, router)
                .with_graceful_shutdown(async move {
                    let _ = stop.wait_for(|s| *s).await;
                })
                .await;
            result.map_err(io("serve", Path::new(&addr)))
        });
    }
    for (socket, router) in sockets {
        let mut stop = stop_rx.clone();
        let path = socket.path.clone();
        if !socket.inherited {
            paths.push(path.clone());
        }
        tasks.spawn(async move {
            let result = axum::serve(socket.listener, router)
                .with_graceful_shutdown(async move {
                    let _ = stop.wait_for(|s| *s).await;
                })
                .await;
            result.map_err(io("serve", &path))
        });
    }
    shutdown.await;
    info!("shutting down: no new connections; finishing calls in flight");
    let _ = stop_tx.send(true);
    let drained = tokio::time::timeout(DRAIN_DEADLINE, async {
        let mut result = Ok(());
        while let Some(joined) = tasks.join_next().await {
            if let Ok(Err(e)) = joined {
                result = Err(e);
            }
        }
        result
    })
    .await;
    for path in &paths {
        if let Err(e) = std::fs::remove_file(path) {
            warn!(socket = %path.display(), error = %e, "could not remove the socket file");
        }
    }
    match drained {
        Ok(result) => result,
        Err(_) => {
            warn!("calls still in flight after the drain deadline; exiting anyway");
            Ok(())
        }
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
