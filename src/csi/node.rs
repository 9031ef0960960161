//! The Node service: a published volume staged on this host (device found, formatted only if
//! blank, mounted at the staging path), bind-mounted to each target, measured and grown.

use std::path::PathBuf;

use tonic::{Request, Response, Status};

use super::capability::{self, bytes};
use super::proto::node_service_capability::{rpc, Rpc};
use super::proto::volume_usage::Unit;
use super::proto::{self, node_server, NodeServiceCapability};
use super::{required, status, timeout_of, within, Plugin};
use crate::backend::PublishContext;

/// The Node service of one plugin.
#[derive(Debug)]
pub(super) struct Node(pub(super) Plugin);

/// A path field of a request, which must be absolute.
fn path(value: &str, field: &str) -> Result<PathBuf, Status> {
    let value = required(value, field)?;
    let path = PathBuf::from(value);
    if !path.is_absolute() {
        return Err(status::invalid(format!("{field} {value:?} is not an absolute path")));
    }
    Ok(path)
}

/// A byte or inode count as CSI's `int64`.
fn count(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

#[tonic::async_trait]
impl node_server::Node for Node {
    async fn node_stage_volume(
        &self,
        req: Request<proto::NodeStageVolumeRequest>,
    ) -> Result<Response<proto::NodeStageVolumeResponse>, Status> {
        let timeout = timeout_of(&req);
        let req = req.into_inner();
        let id = required(&req.volume_id, "volume_id")?;
        let staging = path(&req.staging_target_path, "staging_target_path")?;
        let cap = req.volume_capability.as_ref().ok_or_else(|| status::invalid("volume_capability is missing"))?;
        let access = capability::access(cap).map_err(status::invalid)?;
        let ctx = PublishContext::from_entries(req.publish_context.into_iter().collect());
        let svc = self.0.service().await?;
        within(timeout, svc.stage_on_node(id, ctx, staging, access.mount))
            .await
            .map_err(|e| status::from_service(&e))?;
        Ok(Response::new(proto::NodeStageVolumeResponse {}))
    }

    async fn node_unstage_volume(
        &self,
        req: Request<proto::NodeUnstageVolumeRequest>,
    ) -> Result<Response<proto::NodeUnstageVolumeResponse>, Status> {
        let timeout = timeout_of(&req);
        let req = req.into_inner();
        let id = required(&req.volume_id, "volume_id")?;
        let staging = path(&req.staging_target_path, "staging_target_path")?;
        let svc = self.0.service().await?;
        within(timeout, svc.unstage_on_node(id, staging)).await.map_err(|e| status::from_service(&e))?;
        Ok(Response::new(proto::NodeUnstageVolumeResponse {}))
    }

    async fn node_publish_volume(
        &self,
        req: Request<proto::NodePublishVolumeRequest>,
    ) -> Result<Response<proto::NodePublishVolumeResponse>, Status> {
        let timeout = timeout_of(&req);
        let req = req.into_inner();
        let id = required(&req.volume_id, "volume_id")?;
        let target = path(&req.target_path, "target_path")?;
        let cap = req.volume_capability.as_ref().ok_or_else(|| status::invalid("volume_capability is missing"))?;
        let access = capability::access(cap).map_err(status::invalid)?;
        if req.staging_target_path.is_empty() {
            return Err(Status::failed_precondition(
                "staging_target_path is missing: this plugin stages volumes (STAGE_UNSTAGE_VOLUME) before publishing them",
            ));
        }
        let staging = path(&req.staging_target_path, "staging_target_path")?;
        let read_only = req.readonly || access.read_only;
        let svc = self.0.service().await?;
        within(timeout, svc.publish_on_node(id, staging, target, read_only))
            .await
            .map_err(|e| status::from_service(&e))?;
        Ok(Response::new(proto::NodePublishVolumeResponse {}))
    }

    async fn node_unpublish_volume(
        &self,
        req: Request<proto::NodeUnpublishVolumeRequest>,
    ) -> Result<Response<proto::NodeUnpublishVolumeResponse>, Status> {
        let timeout = timeout_of(&req);
        let req = req.into_inner();
        let id = required(&req.volume_id, "volume_id")?;
        let target = path(&req.target_path, "target_path")?;
        let svc = self.0.service().await?;
        within(timeout, svc.unpublish_on_node(id, target)).await.map_err(|e| status::from_service(&e))?;
        Ok(Response::new(proto::NodeUnpublishVolumeResponse {}))
    }

    async fn node_get_volume_stats(
        &self,
        req: Request<proto::NodeGetVolumeStatsRequest>,
    ) -> Result<Response<proto::NodeGetVolumeStatsResponse>, Status> {
        let req = req.into_inner();
        let id = required(&req.volume_id, "volume_id")?;
        let at = path(&req.volume_path, "volume_path")?;
        let svc = self.0.service().await?;
        let stats = svc.stats_on_node(id, &at).await.map_err(|e| status::from_service(&e))?;
        let usage = vec![
            proto::VolumeUsage {
                available: count(stats.available_bytes),
                total: count(stats.total_bytes),
                used: count(stats.used_bytes),
                unit: Unit::Bytes.into(),
            },
            proto::VolumeUsage {
                available: count(stats.free_inodes),
                total: count(stats.total_inodes),
                used: count(stats.used_inodes),
                unit: Unit::Inodes.into(),
            },
        ];
        Ok(Response::new(proto::NodeGetVolumeStatsResponse { usage, volume_condition: None }))
    }

    async fn node_expand_volume(
        &self,
        req: Request<proto::NodeExpandVolumeRequest>,
    ) -> Result<Response<proto::NodeExpandVolumeResponse>, Status> {
        let timeout = timeout_of(&req);
        let req = req.into_inner();
        let id = required(&req.volume_id, "volume_id")?;
        path(&req.volume_path, "volume_path")?;
        let svc = self.0.service().await?;
        let record = svc.record_of(id).await.map_err(|e| status::from_service(&e))?;
        let staging = match req.staging_target_path.as_str() {
            "" => record.csi.staged.clone().ok_or_else(|| {
                Status::failed_precondition(format!(
                    "volume {id} is not staged on this node, so it cannot be grown here"
                ))
            })?,
            given => path(given, "staging_target_path")?,
        };
        let gib = within(timeout, svc.expand_on_node(id, staging)).await.map_err(|e| status::from_service(&e))?;
        Ok(Response::new(proto::NodeExpandVolumeResponse { capacity_bytes: bytes(gib) }))
    }

    async fn node_get_capabilities(
        &self,
        _req: Request<proto::NodeGetCapabilitiesRequest>,
    ) -> Result<Response<proto::NodeGetCapabilitiesResponse>, Status> {
        let svc = self.0.service().await?;
        let mut types = vec![rpc::Type::StageUnstageVolume, rpc::Type::GetVolumeStats];
        if svc.backend().controller.kind() != "vfs" {
            types.push(rpc::Type::ExpandVolume);
        }
        let capabilities = types
            .into_iter()
            .map(|t| NodeServiceCapability {
                r#type: Some(proto::node_service_capability::Type::Rpc(Rpc { r#type: t.into() })),
            })
            .collect();
        Ok(Response::new(proto::NodeGetCapabilitiesResponse { capabilities }))
    }

    async fn node_get_info(
        &self,
        _req: Request<proto::NodeGetInfoRequest>,
    ) -> Result<Response<proto::NodeGetInfoResponse>, Status> {
        let svc = self.0.service().await?;
        let controller = &svc.backend().controller;
        let node = controller.local_node().await.map_err(|e| Status::unavailable(e.to_string()))?;
        let zone = controller.local_zone().await.map_err(|e| Status::unavailable(e.to_string()))?;
        Ok(Response::new(proto::NodeGetInfoResponse {
            node_id: node.0,
            max_volumes_per_node: 0,
            accessible_topology: zone.as_deref().map(super::zone_topology),
        }))
    }
}
