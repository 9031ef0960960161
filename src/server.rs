//! Sockets, signals and graceful shutdown.
//!
//! Each docker module gets its own Unix socket. Shutdown stops accepting, lets calls in flight
//! finish (within a deadline), and removes the socket files. It never unmounts or detaches a
//! volume: containers may still be using them.

use std::future::Future;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use axum::Router;
use tokio::net::UnixListener;
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
    /// The socket file, removed at shutdown.
    pub path: PathBuf,
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
    Ok(BoundSocket { listener, path: path.to_path_buf() })
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
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut tasks = tokio::task::JoinSet::new();
    let mut paths = Vec::new();
    for (socket, router) in sockets {
        let mut stop = stop_rx.clone();
        let path = socket.path.clone();
        paths.push(path.clone());
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

/// Resolves on SIGTERM or SIGINT.
pub async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(e) => {
            warn!(error = %e, "cannot listen for SIGTERM");
            std::future::pending::<()>().await;
            return;
        }
    };
    tokio::select! {
        _ = term.recv() => info!("SIGTERM received"),
        _ = tokio::signal::ctrl_c() => info!("SIGINT received"),
    }
}
