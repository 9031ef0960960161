//! The composition root: config → backends → services → sockets.

use std::future::Future;
use std::sync::Arc;

use anyhow::Context;
use tracing::{info, warn};

use crate::config::{Config, ServiceConfig};
use crate::service::{Cause, ServiceError, ServiceHandle, VolumeService};

/// A handle that opens `svc` (backend and state) on first use.
fn service_handle(config: &Config, svc: &ServiceConfig) -> Arc<ServiceHandle> {
    let svc = svc.clone();
    let state_dir = config.paths.lib.join("state").join(&svc.name);
    Arc::new(ServiceHandle::lazy(&svc.name.clone(), move || {
        let (svc, state_dir) = (svc.clone(), state_dir.clone());
        async move {
            let backend = crate::backend::build(&svc).map_err(|source| {
                ServiceError::new("open", svc.name.clone(), Cause::Backend { backend: svc.backend.as_str(), source })
            })?;
            VolumeService::open(&svc.name, backend, svc.integration.clone(), state_dir).await
        }
    }))
}

/// The private admin socket of a daemon with this config: `<paths.run>/rexray-admin.sock`.
pub fn admin_socket(config: &Config) -> std::path::PathBuf {
    config.paths.run.join(crate::protocol::admin::SOCKET_NAME)
}

/// Binds every module's socket and the private admin socket, then opens the services in the
/// background, and serves until `shutdown` resolves.
///
/// The admin socket (mode 0600) serves every service by name for `rexray volume …`; a daemon
/// already answering on it makes this one refuse to start, as two daemons sharing one state
/// directory would corrupt each other's mount accounting.
///
/// # Errors
/// A socket could not be bound or failed while serving.
pub async fn run(config: Config, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
    let handles: Vec<(String, Arc<ServiceHandle>)> =
        config.services.iter().map(|s| (s.name.clone(), service_handle(&config, s))).collect();
    let mut sockets = Vec::new();
    let admin_path = admin_socket(&config);
    let admin = crate::server::bind(&admin_path, None).with_context(|| {
        format!("admin socket {} (is another rexray daemon running with the same REXRAY_HOME?)", admin_path.display())
    })?;
    let admin_services = config
        .services
        .iter()
        .zip(&handles)
        .map(|(svc, (name, handle))| crate::protocol::admin::AdminService {
            name: name.clone(),
            backend: svc.backend.as_str(),
            handle: handle.clone(),
        })
        .collect();
    let config_file = config.file.as_ref().map(|f| f.display().to_string());
    info!(socket = %admin_path.display(), "admin socket listening");
    sockets.push((admin, crate::protocol::admin::router(admin_services, config_file)));
    for module in &config.modules {
        let handle = handles
            .iter()
            .find(|(name, _)| *name == module.service)
            .map(|(_, h)| h.clone())
            .with_context(|| format!("module {} names unknown service {}", module.name, module.service))?;
        let socket = crate::server::bind(&module.socket, module.group.as_deref())
            .with_context(|| format!("module {}", module.name))?;
        info!(module = %module.name, socket = %module.socket.display(), service = %module.service, "listening");
        sockets.push((socket, crate::protocol::router(handle)));
    }
    for (name, handle) in &handles {
        let (name, handle) = (name.clone(), handle.clone());
        tokio::spawn(async move {
            if let Err(e) = handle.get().await {
                warn!(service = %name, error = %e.chain(), "service could not open; it will be retried on the next request");
            }
        });
    }
    crate::server::serve(sockets, shutdown).await.context("serve")?;
    info!("stopped");
    Ok(())
}
