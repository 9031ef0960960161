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

/// The CSI view of a volume record; `zone` is where a zonal backend makes volumes that name none.
fn volume_of(record: &VolumeRecord, zone: Option<&str>) -> proto::Volume {
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
        .map(String::as_str)
        .filter(|z| !z.is_empty())
        .or(zone)
        .map(super::zone_topology)
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
        // Mutable parameters (a VolumeAttributesClass) are create options too, which ControllerModifyVolume changes later.
        for (key, value) in &req.mutable_parameters {
            match opts.iter().find(|(k, _)| k.eq_ignore_ascii_case(key)) {
                Some((k, v)) if v != value => {
                    return Err(status::invalid(format!(
                        "mutable parameter {key}={value:?} contradicts parameter {k}={v:?}"
                    )))
                }
                Some(_) => {}
                None => drop(opts.insert(key.clone(), value.clone())),
            }
        }
        Ok(opts)
    }

    /// This host's node ID (for the local backends, the only node).
    async fn here(svc: &VolumeService) -> Option<String> {
        svc.backend().controller.local_node().await.ok().map(|n| n.0)
    }

    /// The zone a zonal backend makes volumes in when they name none: this host's.
    async fn default_zone(svc: &VolumeService) -> Option<String> {
        svc.backend().controller.local_zone().await.ok().flatten()
    }
}

/// The name or ID a page starts after, from a `starting_token` (`""`: the first page).
///
/// # Errors
/// `ABORTED` for a token this plugin did not give.
fn token_after(token: &str) -> Result<Option<String>, Status> {
    if token.is_empty() {
        return Ok(None);
    }
    token
        .strip_prefix(TOKEN_PREFIX)
        .map(|after| Some(after.to_owned()))
        .ok_or_else(|| Status::aborted(format!("starting_token {token:?} is not one this plugin gave")))
}

/// The CSI view of a snapshot of volume `source`.
fn snapshot_of(s: &crate::backend::snapshot::SnapshotInfo, source: &str) -> proto::Snapshot {
    let creation_time = s
        .start_time
        .as_deref()
        .and_then(|t| humantime::parse_rfc3339_weak(t).ok())
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map(|d| prost_types::Timestamp {
            seconds: i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
            nanos: i32::try_from(d.subsec_nanos()).unwrap_or(0),
        });
    proto::Snapshot {
        size_bytes: bytes(s.size_gib),
        snapshot_id: s.id.clone(),
        source_volume_id: source.to_owned(),
        creation_time,
        ready_to_use: s.state == "completed",
        group_snapshot_id: String::new(),
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
        capability::served_by(&access, svc.backend().controller.kind()).map_err(status::invalid)?;
        let opts = Self::create_options(svc, &req, &access)?;
        let record =
            within(timeout, svc.create_for_orchestrator(name, &opts)).await.map_err(|e| status::from_service(&e))?;
        let zone = Self::default_zone(svc).await;
        Ok(Response::new(proto::CreateVolumeResponse { volume: Some(volume_of(&record, zone.as_deref())) }))
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
        let access = capability::access(cap).map_err(status::invalid)?;
        let svc = self.0.service().await?;
        capability::served_by(&[access], svc.backend().controller.kind()).map_err(status::invalid)?;
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
        let kind = svc.backend().controller.kind();
        let response = match capability::all(&req.volume_capabilities).and_then(|a| capability::served_by(&a, kind)) {
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
        let after = token_after(&req.starting_token)?;
        let svc = self.0.service().await?;
        let here = Self::here(svc).await;
        let zone = Self::default_zone(svc).await;
        let records = svc.records();
        let mut page = records.iter().filter(|r| after.as_ref().is_none_or(|a| r.name > *a)).peekable();
        let mut entries = Vec::new();
        for record in page.by_ref() {
            entries.push(proto::list_volumes_response::Entry {
                volume: Some(volume_of(record, zone.as_deref())),
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
        let free = svc.backend().controller.capacity().await.map_err(|e| status::from_backend(&e))?;
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
        if svc.backend().controller.snapshots().is_some() {
            types.extend([rpc::Type::CreateDeleteSnapshot, rpc::Type::ListSnapshots]);
        }
        if kind == "ebs" {
            types.push(rpc::Type::ModifyVolume);
        }
        Ok(Response::new(proto::ControllerGetCapabilitiesResponse {
            capabilities: types.into_iter().map(rpc_capability).collect(),
        }))
    }

    async fn create_snapshot(
        &self,
        req: Request<proto::CreateSnapshotRequest>,
    ) -> Result<Response<proto::CreateSnapshotResponse>, Status> {
        let timeout = timeout_of(&req);
        let req = req.into_inner();
        let source = required(&req.source_volume_id, "source_volume_id")?;
        let name = required(&req.name, "name")?;
        let svc = self.0.service().await?;
        let snapshot =
            within(timeout, svc.snapshot_for_orchestrator(source, name)).await.map_err(|e| status::from_service(&e))?;
        Ok(Response::new(proto::CreateSnapshotResponse { snapshot: Some(snapshot_of(&snapshot, source)) }))
    }

    async fn delete_snapshot(
        &self,
        req: Request<proto::DeleteSnapshotRequest>,
    ) -> Result<Response<proto::DeleteSnapshotResponse>, Status> {
        let timeout = timeout_of(&req);
        let id = required(&req.get_ref().snapshot_id, "snapshot_id")?.to_owned();
        let svc = self.0.service().await?;
        match within(timeout, svc.snapshot_remove(&id)).await {
            Ok(()) => Ok(Response::new(proto::DeleteSnapshotResponse {})),
            Err(e) if status::from_service(&e).code() == tonic::Code::NotFound => {
                Ok(Response::new(proto::DeleteSnapshotResponse {}))
            }
            Err(e) => Err(status::from_service(&e)),
        }
    }

    async fn list_snapshots(
        &self,
        req: Request<proto::ListSnapshotsRequest>,
    ) -> Result<Response<proto::ListSnapshotsResponse>, Status> {
        let req = req.into_inner();
        let max = usize::try_from(req.max_entries)
            .map_err(|_| status::invalid(format!("max_entries {} is negative", req.max_entries)))?;
        let after = token_after(&req.starting_token)?;
        let svc = self.0.service().await?;
        let filter = if req.snapshot_id.is_empty() {
            crate::backend::snapshot::SnapshotFilter::Managed
        } else {
            crate::backend::snapshot::SnapshotFilter::Ids(vec![req.snapshot_id.clone()])
        };
        let listed = match svc.snapshot_list(&filter).await {
            Ok(listed) => listed,
            // An unknown ID lists nothing.
            Err(e) if !req.snapshot_id.is_empty() && status::from_service(&e).code() == tonic::Code::NotFound => {
                Vec::new()
            }
            Err(e) => return Err(status::from_service(&e)),
        };
        let mut snapshots: Vec<proto::Snapshot> = listed
            .iter()
            .filter_map(|s| s.volume.as_deref().map(|v| snapshot_of(s, v)))
            .filter(|s| req.source_volume_id.is_empty() || s.source_volume_id == req.source_volume_id)
            .filter(|s| after.as_ref().is_none_or(|a| s.snapshot_id > *a))
            .collect();
        snapshots.sort_by(|a, b| a.snapshot_id.cmp(&b.snapshot_id));
        let next_token = if max > 0 && snapshots.len() > max {
            snapshots.truncate(max);
            snapshots.last().map(|s| format!("{TOKEN_PREFIX}{}", s.snapshot_id)).unwrap_or_default()
        } else {
            String::new()
        };
        let entries =
            snapshots.into_iter().map(|s| proto::list_snapshots_response::Entry { snapshot: Some(s) }).collect();
        Ok(Response::new(proto::ListSnapshotsResponse { entries, next_token }))
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
        let zone = Self::default_zone(svc).await;
        Ok(Response::new(proto::ControllerGetVolumeResponse {
            volume: Some(volume_of(&record, zone.as_deref())),
            status: Some(proto::controller_get_volume_response::VolumeStatus {
                published_node_ids: published_nodes(&record, here.as_deref()),
                volume_condition: None,
            }),
        }))
    }

    /// The mutable parameters are the settings `rexray volume modify` changes in place (EBS:
    /// `volumeType`, `iops`, `throughput`).
    async fn controller_modify_volume(
        &self,
        req: Request<proto::ControllerModifyVolumeRequest>,
    ) -> Result<Response<proto::ControllerModifyVolumeResponse>, Status> {
        let timeout = timeout_of(&req);
        let req = req.into_inner();
        let id = required(&req.volume_id, "volume_id")?;
        let svc = self.0.service().await?;
        // An unknown volume is NOT_FOUND whatever is asked of it; nothing asked changes nothing.
        svc.record_of(id).await.map_err(|e| status::from_service(&e))?;
        if req.mutable_parameters.is_empty() {
            return Ok(Response::new(proto::ControllerModifyVolumeResponse {}));
        }
        let changes: BTreeMap<String, String> = req.mutable_parameters.into_iter().collect();
        within(timeout, svc.modify(id, &changes)).await.map_err(|e| status::from_service(&e))?;
        Ok(Response::new(proto::ControllerModifyVolumeResponse {}))
    }
}
