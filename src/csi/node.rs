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
use crate::service::{Usage, VolumeService};

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

/// Refuses what the plugin's backend cannot serve (raw block access on vfs).
fn served(svc: &VolumeService, access: &capability::Access) -> Result<(), Status> {
    capability::served_by(std::slice::from_ref(access), svc.backend().controller.kind()).map_err(status::invalid)
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
        served(svc, &access)?;
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
        served(svc, &access)?;
        within(timeout, svc.publish_on_node(id, staging, target, read_only, access.mount.block))
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
        let at = PathBuf::from(required(&req.volume_path, "volume_path")?);
        if !at.is_absolute() {
            // No volume is published at a relative path.
            return Err(Status::not_found(format!("volume {id} is not at {}: not an absolute path", at.display())));
        }
        let svc = self.0.service().await?;
        let stats = svc.stats_on_node(id, &at).await.map_err(|e| status::from_service(&e))?;
        let usage = match stats.usage {
            Usage::FileSystem(fs) => vec![
                proto::VolumeUsage {
                    available: count(fs.available_bytes),
                    total: count(fs.total_bytes),
                    used: count(fs.used_bytes),
                    unit: Unit::Bytes.into(),
                },
                proto::VolumeUsage {
                    available: count(fs.free_inodes),
                    total: count(fs.total_inodes),
                    used: count(fs.used_inodes),
                    unit: Unit::Inodes.into(),
                },
            ],
            Usage::Block { bytes } => {
                vec![proto::VolumeUsage { total: count(bytes), unit: Unit::Bytes.into(), ..Default::default() }]
            }
        };
        let volume_condition = Some(proto::VolumeCondition {
            abnormal: stats.abnormal.is_some(),
            message: stats.abnormal.unwrap_or_else(|| format!("volume {id} is mounted at {}", at.display())),
        });
        Ok(Response::new(proto::NodeGetVolumeStatsResponse { usage, volume_condition }))
    }

    async fn node_expand_volume(
        &self,
        req: Request<proto::NodeExpandVolumeRequest>,
    ) -> Result<Response<proto::NodeExpandVolumeResponse>, Status> {
        let timeout = timeout_of(&req);
        let req = req.into_inner();
        let id = required(&req.volume_id, "volume_id")?;
        required(&req.volume_path, "volume_path")?;
        let svc = self.0.service().await?;
        // An unknown volume is NOT_FOUND whatever its path.
        let record = svc.record_of(id).await.map_err(|e| status::from_service(&e))?;
        path(&req.volume_path, "volume_path")?;
        let staging = match req.staging_target_path.as_str() {
            "" => record.csi.staged.clone().ok_or_else(|| {
                Status::failed_precondition(format!(
                    "volume {id} is not staged on this node, so it cannot be grown here"
                ))
            })?,
            given => path(given, "staging_target_path")?,
        };
        let size_gib = match req.capacity_range.as_ref() {
            Some(range) if range.required_bytes > 0 || range.limit_bytes > 0 => {
                Some(capability::size_gib(Some(range), 1).map_err(Status::out_of_range)?)
            }
            _ => None,
        };
        let gib =
            within(timeout, svc.expand_on_node(id, staging, size_gib)).await.map_err(|e| status::from_service(&e))?;
        Ok(Response::new(proto::NodeExpandVolumeResponse { capacity_bytes: bytes(gib) }))
    }

    async fn node_get_capabilities(
        &self,
        _req: Request<proto::NodeGetCapabilitiesRequest>,
    ) -> Result<Response<proto::NodeGetCapabilitiesResponse>, Status> {
        let svc = self.0.service().await?;
        let mut types = vec![rpc::Type::StageUnstageVolume, rpc::Type::GetVolumeStats, rpc::Type::VolumeCondition];
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
        let node = controller.local_node().await.map_err(|e| status::from_backend(&e))?;
        let zone = controller.local_zone().await.map_err(|e| status::from_backend(&e))?;
        // A limit that cannot be found out (a policy without ec2:DescribeInstanceTypes) must not
        // keep the node from registering: it is reported as none, and the reason logged.
        let limit = controller.attach_limit().await.unwrap_or_else(|e| {
            tracing::warn!(error = %crate::backend::error::chain(&e), "the node's attachment limit is not known; reporting none");
            None
        });
        Ok(Response::new(proto::NodeGetInfoResponse {
            node_id: node.0,
            // CSI reads 0 as "no limit", so a host with no slot left says 1.
            max_volumes_per_node: limit.map_or(0, |n| i64::from(n.max(1))),
            accessible_topology: zone.as_deref().map(super::zone_topology),
        }))
    }
}
