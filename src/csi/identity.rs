//! The Identity service: who the plugin is, what it offers, and whether its backend is ready.

use tonic::{Request, Response, Status};

use super::proto::plugin_capability::{self, service, volume_expansion};
use super::proto::{self, identity_server, PluginCapability};
use super::Plugin;

/// The Identity service of one plugin.
#[derive(Debug)]
pub(super) struct Identity(pub(super) Plugin);

#[tonic::async_trait]
impl identity_server::Identity for Identity {
    async fn get_plugin_info(
        &self,
        _req: Request<proto::GetPluginInfoRequest>,
    ) -> Result<Response<proto::GetPluginInfoResponse>, Status> {
        let manifest = [("commit".to_owned(), env!("REXRAY_COMMIT").to_owned())].into_iter().collect();
        Ok(Response::new(proto::GetPluginInfoResponse {
            name: self.0.driver.clone(),
            vendor_version: env!("CARGO_PKG_VERSION").to_owned(),
            manifest,
        }))
    }

    async fn get_plugin_capabilities(
        &self,
        _req: Request<proto::GetPluginCapabilitiesRequest>,
    ) -> Result<Response<proto::GetPluginCapabilitiesResponse>, Status> {
        let service = |t: service::Type| PluginCapability {
            r#type: Some(plugin_capability::Type::Service(plugin_capability::Service { r#type: t.into() })),
        };
        let mut capabilities = Vec::new();
        if self.0.mode.controller() {
            capabilities.push(service(service::Type::ControllerService));
        }
        let svc = self.0.service().await?;
        if svc.scope() == crate::backend::Scope::Global {
            // Zonal volumes (EBS): made where the orchestrator's topology asks, used in that zone.
            capabilities.push(service(service::Type::VolumeAccessibilityConstraints));
        }
        if svc.backend().controller.kind() != "vfs" {
            capabilities.push(PluginCapability {
                r#type: Some(plugin_capability::Type::VolumeExpansion(plugin_capability::VolumeExpansion {
                    r#type: volume_expansion::Type::Online.into(),
                })),
            });
        }
        Ok(Response::new(proto::GetPluginCapabilitiesResponse { capabilities }))
    }

    /// Ready once the service has opened (its state loaded, its backend built and reconciled);
    /// a service that could not open is reported not ready, with why, rather than as an error.
    async fn probe(&self, _req: Request<proto::ProbeRequest>) -> Result<Response<proto::ProbeResponse>, Status> {
        let ready = match self.0.handle.get().await {
            Ok(_) => true,
            Err(e) => {
                tracing::warn!(service = %self.0.handle.name(), error = %e.chain(), "CSI probe: the service is not ready");
                false
            }
        };
        Ok(Response::new(proto::ProbeResponse { ready: Some(ready) }))
    }
}
