//! The Controller service: volumes made, deleted, published to nodes and listed, on the
//! service's backend. A volume's ID is its name.

use std::collections::BTreeMap;

use tonic::{Request, Response, Status};

use super::capability::{self, bytes};
use super::proto::controller_service_capability::{rpc, Rpc};
use super::proto::{self, controller_server, ControllerServiceCapability};
use super::{required, status, timeout_of, within, Plugin};
use crate::backend::options::get_u64;
use crate::backend::Scope;
use crate::service::state::VolumeRecord;
use crate::service::VolumeService;

/// Parameter prefixes the Kubernetes sidecars add (`--extra-create-metadata`): context, not
/// volume options.
const METADATA_PREFIXES: &[&str] = &["csi.storage.k8s.io/"];

/// The start of every ListVolumes token: tokens are `<this><name to start after>`.
const TOKEN_PREFIX: &str = "after:";

/// The Controller service of one plugin.
#[derive(Debug)]
pub(super) struct Controller(pub(super) Plugin);

/// The CSI view of a volume record.
fn volume_of(record: &VolumeRecord) -> proto::Volume {
    let capacity = get_u64(&record.options, "size").map_or(0, bytes);
    let content_source =
        record.options.get("snapshotID").filter(|s| !s.is_empty()).map(|id| proto::VolumeContentSource {
            r#type: Some(proto::volume_content_source::Type::Snapshot(proto::volume_content_source::SnapshotSource {
                snapshot_id: id.clone(),
            })),
        });
    let accessible_topology = record
        .options
        .get("availabilityZone")
        .filter(|z| !z.is_empty())
        .map(|zone| proto::Topology { segments: [(super::ZONE_KEY.to_owned(), zone.clone())].into_iter().collect() })
        .into_iter()
        .collect();
    proto::Volume {
        capacity_bytes: capacity,
        volume_id: record.name.clone(),
        volume_context: BTreeMap::new().into_iter().collect(),
        content_source,
        accessible_topology,
    }
}

/// The nodes a volume is published to: the orchestrator's, and this host while the Docker
/// front holds it.
fn published_nodes(record: &VolumeRecord, here: Option<&str>) -> Vec<String> {
    let mut nodes: Vec<String> = record.csi.nodes.keys().cloned().collect();
    if let Some(here) = here.filter(|_| record.active) {
        if !nodes.iter().any(|n| n == here) {
            nodes.push(here.to_owned());
        }
    }
    nodes
}

impl Controller {
    /// The create options for a CreateVolume: its parameters (less the sidecars' metadata), the
    /// size it asks for, the file system of its capabilities, its snapshot, its zone.
    fn create_options(
        svc: &VolumeService,
        req: &proto::CreateVolumeRequest,
        access: &[capability::Access],
    ) -> Result<BTreeMap<String, String>, Status> {
        let mut opts: BTreeMap<String, String> = req
            .parameters
            .iter()
            .filter(|(k, _)| !METADATA_PREFIXES.iter().any(|p| k.starts_with(p)))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        let has = |opts: &BTreeMap<String, String>, key: &str| opts.keys().any(|k| k.eq_ignore_ascii_case(key));
        let sized = svc.backend().controller.kind() != "vfs";
        if sized || req.capacity_range.is_some() {
            let gib = capability::size_gib(req.capacity_range.as_ref(), svc.settings().default_size_gib)
                .map_err(Status::out_of_range)?;
            if !has(&opts, "size") {
                opts.insert("size".into(), gib.to_string());
            }
        }
        if let Some(fs) = access.iter().map(|a| a.mount.fs_type.as_str()).find(|f| !f.is_empty()) {
            if sized && !has(&opts, "fsType") {
                opts.insert("fsType".into(), fs.to_owned());
            }
        }
        match req.volume_content_source.as_ref().and_then(|s| s.r#type.as_ref()) {
            None => {}
            Some(proto::volume_content_source::Type::Snapshot(snap)) => {
                opts.insert(
                    "snapshotID".into(),
                    required(&snap.snapshot_id, "volume_content_source.snapshot.snapshot_id")?.to_owned(),
                );
            }
            Some(proto::volume_content_source::Type::Volume(_)) => {
                return Err(status::invalid(
                    "cloning a volume is not supported by this plugin; create it from a snapshot",
                ))
            }
        }
        if svc.scope() == Scope::Global {
            if let Some(zone) = wanted_zone(req.accessibility_requirements.as_ref()) {
                opts.insert("availabilityZone".into(), zone);
            }
        }
        Ok(opts)
    }

    /// The service, and this host's node ID (for the local backends, the only node).
    async fn here(svc: &VolumeService) -> Option<String> {
        svc.backend().controller.local_node().await.ok().map(|n| n.0)
    }
}

/// The zone the topology requirement prefers, else the first it allows.
fn wanted_zone(req: Option<&proto::TopologyRequirement>) -> Option<String> {
    let req = req?;
    req.preferred
        .iter()
        .chain(&req.requisite)
        .find_map(|t| t.segments.get(super::ZONE_KEY).filter(|z| !z.is_empty()).cloned())
}

/// A capability of the Controller service.
fn rpc_capability(t: rpc::Type) -> ControllerServiceCapability {
    ControllerServiceCapability {
        r#type: Some(proto::controller_service_capability::Type::Rpc(Rpc { r#type: t.into() })),
    }
}

#[tonic::async_trait]
impl controller_server::Controller for Controller {
    async fn create_volume(
        &self,
        req: Request<proto::CreateVolumeRequest>,
    ) -> Result<Response<proto::CreateVolumeResponse>, Status> {
        let timeout = timeout_of(&req);
        let req = req.into_inner();
        let name = required(&req.name, "name")?;
        let access = capability::all(&req.volume_capabilities).map_err(status::invalid)?;
        let svc = self.0.service().await?;
        let opts = Self::create_options(svc, &req, &access)?;
        let record =
            within(timeout, svc.create_for_orchestrator(name, &opts)).await.map_err(|e| status::from_service(&e))?;
        Ok(Response::new(proto::CreateVolumeResponse { volume: Some(volume_of(&record)) }))
    }

    async fn delete_volume(
        &self,
        req: Request<proto::DeleteVolumeRequest>,
    ) -> Result<Response<proto::DeleteVolumeResponse>, Status> {
        let timeout = timeout_of(&req);
        let id = required(&req.get_ref().volume_id, "volume_id")?.to_owned();
        let svc = self.0.service().await?;
        match within(timeout, svc.remove(&id)).await {
            Ok(()) => Ok(Response::new(proto::DeleteVolumeResponse {})),
            Err(e) if e.is_not_found() => Ok(Response::new(proto::DeleteVolumeResponse {})),
            Err(e) => Err(status::from_service(&e)),
        }
    }

    async fn controller_publish_volume(
        &self,
        req: Request<proto::ControllerPublishVolumeRequest>,
    ) -> Result<Response<proto::ControllerPublishVolumeResponse>, Status> {
        let timeout = timeout_of(&req);
        let req = req.into_inner();
        let id = required(&req.volume_id, "volume_id")?;
        let node = required(&req.node_id, "node_id")?;
        let cap = req.volume_capability.as_ref().ok_or_else(|| status::invalid("volume_capability is missing"))?;
        capability::access(cap).map_err(status::invalid)?;
        let svc = self.0.service().await?;
        svc.record_of(id).await.map_err(|e| status::from_service(&e))?;
        if svc.scope() == Scope::Local && Self::here(svc).await.as_deref() != Some(node) {
            return Err(Status::not_found(format!(
                "node {node:?} is not known: {} volumes live on one host, so they are published to it only",
                svc.backend().controller.kind()
            )));
        }
        let ctx = within(timeout, svc.publish_to_node(id, node)).await.map_err(|e| status::from_service(&e))?;
        Ok(Response::new(proto::ControllerPublishVolumeResponse {
            publish_context: ctx.entries().clone().into_iter().collect(),
        }))
    }

    async fn controller_unpublish_volume(
        &self,
        req: Request<proto::ControllerUnpublishVolumeRequest>,
    ) -> Result<Response<proto::ControllerUnpublishVolumeResponse>, Status> {
        let timeout = timeout_of(&req);
        let req = req.into_inner();
        let id = required(&req.volume_id, "volume_id")?;
        let svc = self.0.service().await?;
        let nodes = if req.node_id.is_empty() {
            // Unpublish from every node.
            svc.record_of(id).await.map(|r| r.csi.nodes.keys().cloned().collect()).unwrap_or_default()
        } else {
            vec![req.node_id.clone()]
        };
        for node in nodes {
            within(timeout, svc.unpublish_from_node(id, &node)).await.map_err(|e| status::from_service(&e))?;
        }
        Ok(Response::new(proto::ControllerUnpublishVolumeResponse {}))
    }

    async fn validate_volume_capabilities(
        &self,
        req: Request<proto::ValidateVolumeCapabilitiesRequest>,
    ) -> Result<Response<proto::ValidateVolumeCapabilitiesResponse>, Status> {
        let req = req.into_inner();
        let id = required(&req.volume_id, "volume_id")?;
        if req.volume_capabilities.is_empty() {
            return Err(status::invalid("volume_capabilities is empty"));
        }
        let svc = self.0.service().await?;
        svc.record_of(id).await.map_err(|e| status::from_service(&e))?;
        let response = match capability::all(&req.volume_capabilities) {
            Ok(_) => proto::ValidateVolumeCapabilitiesResponse {
                confirmed: Some(proto::validate_volume_capabilities_response::Confirmed {
                    volume_context: req.volume_context,
                    volume_capabilities: req.volume_capabilities,
                    parameters: req.parameters,
                    mutable_parameters: Default::default(),
                }),
                message: String::new(),
            },
            Err(why) => proto::ValidateVolumeCapabilitiesResponse { confirmed: None, message: why },
        };
        Ok(Response::new(response))
    }

    async fn list_volumes(
        &self,
        req: Request<proto::ListVolumesRequest>,
    ) -> Result<Response<proto::ListVolumesResponse>, Status> {
        let req = req.into_inner();
        let max = usize::try_from(req.max_entries)
            .map_err(|_| status::invalid(format!("max_entries {} is negative", req.max_entries)))?;
        let after = match req.starting_token.as_str() {
            "" => None,
            token => Some(
                token
                    .strip_prefix(TOKEN_PREFIX)
                    .ok_or_else(|| Status::aborted(format!("starting_token {token:?} is not one this plugin gave")))?
                    .to_owned(),
            ),
        };
        let svc = self.0.service().await?;
        let here = Self::here(svc).await;
        let records = svc.records();
        let mut page = records.iter().filter(|r| after.as_ref().is_none_or(|a| r.name > *a)).peekable();
        let mut entries = Vec::new();
        for record in page.by_ref() {
            entries.push(proto::list_volumes_response::Entry {
                volume: Some(volume_of(record)),
                status: Some(proto::list_volumes_response::VolumeStatus {
                    published_node_ids: published_nodes(record, here.as_deref()),
                    volume_condition: None,
                }),
            });
            if max > 0 && entries.len() == max {
                break;
            }
        }
        let next_token = match (page.peek(), entries.last()) {
            (Some(_), Some(last)) => {
                format!("{TOKEN_PREFIX}{}", last.volume.as_ref().map_or("", |v| v.volume_id.as_str()))
            }
            _ => String::new(),
        };
        Ok(Response::new(proto::ListVolumesResponse { entries, next_token }))
    }

    async fn get_capacity(
        &self,
        _req: Request<proto::GetCapacityRequest>,
    ) -> Result<Response<proto::GetCapacityResponse>, Status> {
        let svc = self.0.service().await?;
        let free = svc.backend().controller.capacity().await.map_err(|e| Status::internal(e.to_string()))?;
        Ok(Response::new(proto::GetCapacityResponse {
            available_capacity: free.map_or(0, |b| i64::try_from(b).unwrap_or(i64::MAX)),
            maximum_volume_size: None,
            minimum_volume_size: None,
        }))
    }

    async fn controller_get_capabilities(
        &self,
        _req: Request<proto::ControllerGetCapabilitiesRequest>,
    ) -> Result<Response<proto::ControllerGetCapabilitiesResponse>, Status> {
        let svc = self.0.service().await?;
        let kind = svc.backend().controller.kind();
        let mut types = vec![
            rpc::Type::CreateDeleteVolume,
            rpc::Type::PublishUnpublishVolume,
            rpc::Type::ListVolumes,
            rpc::Type::ListVolumesPublishedNodes,
            rpc::Type::GetVolume,
        ];
        if kind != "ebs" {
            types.push(rpc::Type::GetCapacity);
        }
        if kind != "vfs" {
            types.push(rpc::Type::ExpandVolume);
        }
        Ok(Response::new(proto::ControllerGetCapabilitiesResponse {
            capabilities: types.into_iter().map(rpc_capability).collect(),
        }))
    }

    async fn create_snapshot(
        &self,
        _req: Request<proto::CreateSnapshotRequest>,
    ) -> Result<Response<proto::CreateSnapshotResponse>, Status> {
        Err(Status::unimplemented("snapshots are not served over CSI by this plugin yet"))
    }

    async fn delete_snapshot(
        &self,
        _req: Request<proto::DeleteSnapshotRequest>,
    ) -> Result<Response<proto::DeleteSnapshotResponse>, Status> {
        Err(Status::unimplemented("snapshots are not served over CSI by this plugin yet"))
    }

    async fn list_snapshots(
        &self,
        _req: Request<proto::ListSnapshotsRequest>,
    ) -> Result<Response<proto::ListSnapshotsResponse>, Status> {
        Err(Status::unimplemented("snapshots are not served over CSI by this plugin yet"))
    }

    async fn controller_expand_volume(
        &self,
        req: Request<proto::ControllerExpandVolumeRequest>,
    ) -> Result<Response<proto::ControllerExpandVolumeResponse>, Status> {
        let timeout = timeout_of(&req);
        let req = req.into_inner();
        let id = required(&req.volume_id, "volume_id")?;
        let range = req.capacity_range.as_ref().ok_or_else(|| status::invalid("capacity_range is missing"))?;
        let svc = self.0.service().await?;
        let current = svc.record_of(id).await.map_err(|e| status::from_service(&e))?;
        let have = get_u64(&current.options, "size").unwrap_or(0);
        let gib = capability::size_gib(Some(range), have).map_err(Status::out_of_range)?;
        let record = if gib <= have {
            current
        } else {
            within(timeout, svc.resize(id, gib)).await.map_err(|e| status::from_service(&e))?
        };
        Ok(Response::new(proto::ControllerExpandVolumeResponse {
            capacity_bytes: get_u64(&record.options, "size").map_or(0, bytes),
            node_expansion_required: true,
        }))
    }

    async fn controller_get_volume(
        &self,
        req: Request<proto::ControllerGetVolumeRequest>,
    ) -> Result<Response<proto::ControllerGetVolumeResponse>, Status> {
        let id = required(&req.get_ref().volume_id, "volume_id")?.to_owned();
        let svc = self.0.service().await?;
        let record = svc.record_of(&id).await.map_err(|e| status::from_service(&e))?;
        let here = Self::here(svc).await;
        Ok(Response::new(proto::ControllerGetVolumeResponse {
            volume: Some(volume_of(&record)),
            status: Some(proto::controller_get_volume_response::VolumeStatus {
                published_node_ids: published_nodes(&record, here.as_deref()),
                volume_condition: None,
            }),
        }))
    }

    async fn controller_modify_volume(
        &self,
        _req: Request<proto::ControllerModifyVolumeRequest>,
    ) -> Result<Response<proto::ControllerModifyVolumeResponse>, Status> {
        Err(Status::unimplemented("modifying volumes is not served over CSI by this plugin yet"))
    }
}
