//! The CSI front: the Container Storage Interface's Identity, Controller and Node services
//! over gRPC on a Unix socket, on the same services (and so the same volumes, locks and
//! records) as the Docker front.
//!
//! Handlers check the request's required fields, turn it into one service call, and encode the
//! answer; failures become gRPC codes in one place ([`status`]). A volume's CSI ID is its
//! name, so a volume made with `docker volume create` is the same volume to an orchestrator.
//!
//! Every call runs within the caller's deadline (`grpc-timeout`, else [`DEFAULT_BUDGET`]), and
//! a call the caller gives up on still finishes or rolls back (the service runs it on a task
//! of its own).

pub mod capability;
mod controller;
mod identity;
mod node;
pub mod proto;
pub mod status;

use std::sync::Arc;
use std::time::Duration;

use tonic::{Request, Status};

use crate::config::CsiMode;
use crate::service::{ServiceHandle, VolumeService};

/// The topology key of a volume's availability zone (zonal backends).
pub const ZONE_KEY: &str = "topology.rexray.io/zone";

/// The topology of one availability zone.
fn zone_topology(zone: &str) -> proto::Topology {
    proto::Topology { segments: [(ZONE_KEY.to_owned(), zone.to_owned())].into_iter().collect() }
}

/// How long a call may take when its caller sets no `grpc-timeout`.
pub const DEFAULT_BUDGET: Duration = Duration::from_secs(100);

/// One CSI plugin: a driver name and mode bound to one service.
#[derive(Debug, Clone)]
pub struct Plugin {
    /// The driver name GetPluginInfo reports.
    pub driver: String,
    /// Which services are served besides Identity.
    pub mode: CsiMode,
    /// The service the calls go to.
    pub handle: Arc<ServiceHandle>,
}

impl Plugin {
    /// The service, opened.
    async fn service(&self) -> Result<&Arc<VolumeService>, Status> {
        self.handle.get().await.map_err(|e| status::from_service(&e))
    }
}

/// The gRPC services of `plugin`, ready to serve: Identity always, Controller and Node as its
/// mode says.
pub fn routes(plugin: &Plugin) -> tonic::service::Routes {
    let mut routes =
        tonic::service::Routes::new(proto::identity_server::IdentityServer::new(identity::Identity(plugin.clone())));
    if plugin.mode.controller() {
        routes =
            routes.add_service(proto::controller_server::ControllerServer::new(controller::Controller(plugin.clone())));
    }
    if plugin.mode.node() {
        routes = routes.add_service(proto::node_server::NodeServer::new(node::Node(plugin.clone())));
    }
    routes
}

/// Serves `plugin` on `listener` until `shutdown` resolves.
///
/// # Errors
/// The server failed.
pub async fn serve(
    listener: tokio::net::UnixListener,
    plugin: &Plugin,
    shutdown: impl std::future::Future<Output = ()> + Send,
) -> Result<(), tonic::transport::Error> {
    let incoming = tokio_stream::wrappers::UnixListenerStream::new(listener);
    tonic::transport::Server::builder()
        .add_routes(routes(plugin))
        .serve_with_incoming_shutdown(incoming, shutdown)
        .await
}

/// Runs a handler's service call within the caller's deadline.
async fn within<T, F>(req_timeout: Option<Duration>, call: F) -> T
where
    F: std::future::Future<Output = T>,
{
    let total = req_timeout.map_or(DEFAULT_BUDGET, |t| t.saturating_sub(Duration::from_millis(500)));
    let budget = crate::deadline::Budget { caller: "the CSI caller's timeout", total, reserve: total / 4 };
    crate::deadline::within(budget, call).await
}

/// The caller's `grpc-timeout`, if it set one.
fn timeout_of<T>(req: &Request<T>) -> Option<Duration> {
    let value = req.metadata().get("grpc-timeout")?.to_str().ok()?;
    let (digits, unit) = value.split_at(value.len().checked_sub(1)?);
    let n: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n.saturating_mul(3600)),
        "M" => Duration::from_secs(n.saturating_mul(60)),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

/// `field` of a request, which must not be empty.
fn required<'a>(value: &'a str, field: &str) -> Result<&'a str, Status> {
    if value.is_empty() {
        Err(status::invalid(format!("{field} is missing")))
    } else {
        Ok(value)
    }
}
