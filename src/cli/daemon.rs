//! The composition root: config → the OS and cloud parts → backends → services → sockets (and
//! the metrics listener). The only place that builds the real OS layer, the instance metadata
//! client and the EC2 client factory, and the only reader of their environment variables.

use std::future::Future;
use std::sync::Arc;

use anyhow::Context;
use tracing::{error, info, warn};

use crate::backend::Environment;
use crate::config::{Config, ModuleKind, ServiceConfig};
use crate::metrics::{Health, ServiceState};
use crate::os::linux::LinuxOs;
use crate::server::{Inherited, Limits};
use crate::service::{Cause, ServiceError, ServiceHandle, VolumeService};

/// The real environment the backends run in: this host's OS and, for EBS, IMDSv2 (at
/// `AWS_EC2_METADATA_SERVICE_ENDPOINT`, unless `AWS_EC2_METADATA_DISABLED`) and `aws-sdk-ec2`.
pub fn environment() -> Environment {
    let os = Arc::new(LinuxOs::new());
    Environment {
        os: os.clone(),
        devices: os.clone(),
        host: os,
        #[cfg(feature = "ebs")]
        ebs: Some(Arc::new(ebs_parts())),
    }
}

#[cfg(feature = "ebs")]
fn ebs_parts() -> crate::backend::ebs::CloudParts {
    use crate::backend::ebs::{api::Ec2Api, cloud::AwsEc2, identity::Imds, CloudParts};
    let env = |k: &str| std::env::var(k).ok();
    CloudParts {
        metadata: Arc::new(Imds::from_env(&env)),
        factory: Box::new(|conn| {
            Box::pin(async move {
                let api: Arc<dyn Ec2Api> = Arc::new(AwsEc2::connect(&conn).await);
                api
            })
        }),
    }
}

/// Builds `svc`'s backend over `env` and opens the service on its state directory under
/// `config`'s lib directory.
///
/// # Errors
/// The backend refuses its settings, or the state cannot be used.
pub async fn open_service(
    config: &Config,
    svc: &ServiceConfig,
    env: &Environment,
) -> Result<VolumeService, ServiceError> {
    let state_dir = config.paths.lib.join("state").join(&svc.name);
    let backend = crate::backend::build(svc, env)
        .map_err(|source| ServiceError::new("open", &svc.name, Cause::from_backend(svc.backend.as_str(), source)))?;
    VolumeService::open(&svc.name, backend, svc.integration.clone(), state_dir, env.host.boot_id()).await
}

/// A handle that opens `svc` (backend and state) on first use, reporting each attempt to `health`.
fn service_handle(config: &Config, svc: &ServiceConfig, env: &Environment, health: &Health) -> Arc<ServiceHandle> {
    let (config, svc, env) = (config.clone(), svc.clone(), env.clone());
    let health = health.clone();
    health.set(&svc.name, ServiceState::Opening);
    Arc::new(ServiceHandle::lazy(&svc.name.clone(), move || {
        let (config, svc, env, health) = (config.clone(), svc.clone(), env.clone(), health.clone());
        async move {
            let opened = open_service(&config, &svc, &env).await;
            match &opened {
                Ok(_) => health.set(&svc.name, ServiceState::Ready),
                Err(e) => health.set(&svc.name, ServiceState::Failed(e.chain())),
            }
            opened
        }
    }))
}

/// The private admin socket of a daemon with this config: `<paths.run>/rexray-admin.sock`.
pub fn admin_socket(config: &Config) -> std::path::PathBuf {
    config.paths.run.join(crate::protocol::admin::SOCKET_NAME)
}

/// Binds every module's socket (or takes the one systemd passed for its path) and the private
/// admin socket, and the metrics listener when configured; then opens the services in the
/// background, tells systemd it is ready, and serves until `shutdown` resolves.
///
/// The admin socket (mode 0600) serves every service by name for `rexray volume …`; a daemon
/// already answering on it makes this one refuse to start, as two daemons sharing one state
/// directory would corrupt each other's mount accounting.
///
/// No backend work happens before the sockets listen, so Docker's enable window (about 10 s for
/// a managed plugin) is met whatever the backend's state. A metrics address that cannot be
/// bound is logged and skipped: the volumes matter more than their metrics.
///
/// # Errors
/// A socket could not be bound or failed while serving.
pub async fn run(config: Config, mut inherited: Inherited, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
    info!(
        version = env!("CARGO_PKG_VERSION"),
        commit = env!("REXRAY_COMMIT"),
        config = %config.file.as_ref().map_or_else(|| "(none: defaults and environment)".to_owned(), |f| f.display().to_string()),
        services = config.services.len(),
        "rexray starting"
    );
    let health = Health::default();
    let env = environment();
    let handles: Vec<(String, Arc<ServiceHandle>)> =
        config.services.iter().map(|s| (s.name.clone(), service_handle(&config, s, &env, &health))).collect();
    let mut sockets = Vec::new();
    let admin_path = admin_socket(&config);
    let admin = crate::server::bind_or_inherit(&admin_path, None, &mut inherited).with_context(|| {
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
    let mut csi_servers = Vec::new();
    for module in &config.modules {
        let handle = handles
            .iter()
            .find(|(name, _)| *name == module.service)
            .map(|(_, h)| h.clone())
            .with_context(|| format!("module {} names unknown service {}", module.name, module.service))?;
        let socket = crate::server::bind_or_inherit(&module.socket, module.group.as_deref(), &mut inherited)
            .with_context(|| format!("module {}", module.name))?;
        match &module.kind {
            ModuleKind::Docker => {
                info!(module = %module.name, socket = %module.socket.display(), service = %module.service, "listening");
                sockets.push((socket, crate::protocol::router(handle)));
            }
            ModuleKind::Csi(csi) => {
                info!(module = %module.name, socket = %module.socket.display(), service = %module.service, driver = %csi.driver, mode = csi.mode.as_str(), "CSI listening");
                let plugin = crate::csi::Plugin { driver: csi.driver.clone(), mode: csi.mode, handle };
                csi_servers.push((socket, plugin));
            }
        }
    }
    if !inherited.is_empty() {
        let sockets: Vec<String> = inherited.paths().iter().map(|p| p.display().to_string()).collect();
        warn!(sockets = %sockets.join(", "), "systemd passed sockets no module is configured for; closing them");
    }
    drop(inherited);
    let mut tcp = Vec::new();
    if let Some(addr) = config.metrics_listen {
        match tokio::net::TcpListener::bind(addr).await {
            Ok(listener) => {
                info!(%addr, "metrics listening on /metrics and /health");
                tcp.push((listener, crate::protocol::telemetry::router(health.clone())));
            }
            Err(e) => error!(%addr, error = %e, "cannot listen for metrics; serving volumes without them"),
        }
    }
    for (name, handle) in &handles {
        let (name, handle) = (name.clone(), handle.clone());
        tokio::spawn(async move {
            if let Err(e) = handle.get().await {
                warn!(service = %name, error = %e.chain(), "service could not open; it will be retried on the next request");
            }
        });
    }
    let (stop_csi, csi_stopped) = tokio::sync::watch::channel(false);
    let csi_tasks: Vec<_> = csi_servers
        .into_iter()
        .map(|(socket, plugin)| tokio::spawn(serve_csi(socket, plugin, csi_stopped.clone())))
        .collect();
    crate::server::notify_systemd("READY=1");
    let shutdown = async {
        shutdown.await;
        crate::server::notify_systemd("STOPPING=1");
        // Receivers that are gone have stopped already.
        let _ = stop_csi.send(true);
    };
    let served = crate::server::serve_all(sockets, tcp, Limits::default(), shutdown).await.context("serve");
    for task in csi_tasks {
        if let Ok(Err(e)) = task.await {
            error!(error = %e, "CSI server failed");
        }
    }
    served?;
    info!("stopped");
    Ok(())
}

/// Serves one CSI plugin on `socket` until `stop` turns true, then removes the socket file
/// (unless systemd passed it).
async fn serve_csi(
    socket: crate::server::BoundSocket,
    plugin: crate::csi::Plugin,
    mut stop: tokio::sync::watch::Receiver<bool>,
) -> Result<(), tonic::transport::Error> {
    let stopped = async move {
        // A dropped sender means the daemon is going away: stop too.
        let _ = stop.wait_for(|s| *s).await;
    };
    let served = crate::csi::serve(socket.listener, &plugin, stopped).await;
    if !socket.inherited {
        if let Err(e) = std::fs::remove_file(&socket.path) {
            warn!(socket = %socket.path.display(), error = %e, "could not remove the CSI socket");
        }
    }
    served
}
