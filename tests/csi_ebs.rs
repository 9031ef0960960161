//! The CSI front on EBS, split as an orchestrator runs it: a controller daemon on host A
//! (`csi.mode: controller`) and a node daemon on host B (`csi.mode: node`), two instances of one
//! EC2 (moto). The test "hypervisor" (`tests/e2e/ebs_support.rs`) backs every volume moto
//! attaches with a loop device linked into the attached instance's link directory, so the node's
//! format and mounts are real. A gRPC client built from the same protos drives every call the
//! way the Kubernetes sidecars and the kubelet do: the controller creates the volume in the
//! node's zone, attaches it to the node's instance, the node stages and publishes it, and back.
//!
//! Needs root, loop devices, mkfs.ext4 and moto; without them it prints why it is skipped,
//! except in CI (`CI` set), where that is a failure.
#![cfg(feature = "ebs")]

#[path = "e2e/ebs_support.rs"]
mod support;

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use common::csi::{code, connect, mount_cap};
use common::is_mounted;
use rexray::csi::proto::volume_capability::access_mode::Mode;
use rexray::csi::proto::*;
use support::{is_root, require, volumes_named, Daemon, Hypervisor, Moto};
use tonic::Code;

const REGION: &str = "ap-south-1";
const AZ: &str = "ap-south-1a";
const OTHER_AZ: &str = "ap-south-1b";
const GIB: i64 = 1 << 30;

fn prerequisites() -> Option<String> {
    if !is_root() {
        return Some("needs root for loop devices and mount(2)".into());
    }
    if !Path::new("/dev/loop-control").exists() {
        return Some("no /dev/loop-control".into());
    }
    None
}

/// One host: its directories and config, a daemon with a Docker socket (for readiness) and a
/// CSI socket in `mode`.
struct Host {
    csi: PathBuf,
    links: PathBuf,
    daemon: Daemon,
}

fn host(root: &Path, name: &str, moto: &Moto, instance: &str, mode: &str) -> Host {
    let dir = root.join(name);
    let (home, links) = (dir.join("home"), dir.join("links"));
    std::fs::create_dir_all(&home).unwrap();
    std::fs::create_dir_all(&links).unwrap();
    let (docker, csi) = (dir.join("docker.sock"), dir.join("csi.sock"));
    let config = format!(
        "rexray:\n  modules:\n    default-docker:\n      host: unix://{docker}\n    csi:\n      type: csi\n      csi:\n        endpoint: unix://{csi}\n        mode: {mode}\n\
         libstorage:\n  service: ebs\n\
         ebs:\n  endpoint: {endpoint}\n  region: {REGION}\n  accessKey: test\n  secretKey: test\n  instanceID: {instance}\n\
         \x20 availabilityZone: {AZ}\n  deviceLinksDir: {links}\n  statusInitialDelay: 100ms\n  statusTimeout: 60s\n",
        docker = docker.display(),
        csi = csi.display(),
        endpoint = moto.endpoint,
        links = links.display(),
    );
    let config_file = dir.join("rexray.yml");
    std::fs::write(&config_file, config).unwrap();
    let daemon = Daemon::start(&config_file, &home, &docker, &dir.join("daemon.log"), &[]);
    Host { csi, links, daemon }
}

/// Two instances of one moto, a controller daemon on the first and a node daemon on the second,
/// and the device host backing both.
struct Cluster {
    _tmp: tempfile::TempDir,
    root: PathBuf,
    a_id: String,
    b_id: String,
    a: Host,
    b: Host,
    hv: Hypervisor,
}

fn cluster(moto: &Moto) -> Cluster {
    let tmp = tempfile::Builder::new().prefix("rexray-csi-ebs").tempdir().unwrap();
    let root = tmp.path().to_path_buf();
    let a_id = moto.run_instance(REGION, AZ);
    let b_id = moto.run_instance(REGION, AZ);
    let a = host(&root, "controller", moto, &a_id, "controller");
    let b = host(&root, "node", moto, &b_id, "node");
    let hv = Hypervisor::start(
        &moto.endpoint,
        REGION,
        &root.join("sim"),
        BTreeMap::from([(a_id.clone(), a.links.clone()), (b_id.clone(), b.links.clone())]),
    );
    Cluster { _tmp: tmp, root, a_id, b_id, a, b, hv }
}

fn zone(z: &str) -> Topology {
    Topology { segments: [(rexray::csi::ZONE_KEY.to_owned(), z.to_owned())].into_iter().collect() }
}

#[test]
fn controller_on_one_host_node_on_another_through_csi() {
    let test = "controller_on_one_host_node_on_another_through_csi";
    if !require(test, prerequisites()) {
        return;
    }
    let Some(moto) = Moto::for_test(test) else { return };
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let api = rt.block_on(moto.api(REGION));
    let Cluster { _tmp, root, a_id, b_id, a, b, mut hv } = cluster(&moto);

    let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        rt.block_on(async {
            let mut ctl = connect(&a.csi).await;
            let mut node = connect(&b.csi).await;

            // Identity: the controller serves the Controller service, zonal volumes, online growth.
            let caps =
                ctl.identity.get_plugin_capabilities(GetPluginCapabilitiesRequest {}).await.unwrap().into_inner();
            let text = format!("{caps:?}");
            for want in ["ControllerService", "VolumeAccessibilityConstraints", "Online"] {
                assert!(text.contains(want), "{want}: {text}");
            }
            let info = ctl.identity.get_plugin_info(GetPluginInfoRequest {}).await.unwrap().into_inner();
            assert_eq!(info.name, "ebs.csi.rexray.io");
            // A node-mode daemon serves no Controller service, and the reverse.
            let unserved = node.controller.controller_get_capabilities(ControllerGetCapabilitiesRequest {}).await;
            assert_eq!(unserved.unwrap_err().code(), Code::Unimplemented);
            assert_eq!(ctl.node.node_get_info(NodeGetInfoRequest {}).await.unwrap_err().code(), Code::Unimplemented);

            // NodeGetInfo: the instance ID and its zone.
            let me = node.node.node_get_info(NodeGetInfoRequest {}).await.unwrap().into_inner();
            assert_eq!(me.node_id, b_id);
            assert_eq!(me.accessible_topology, Some(zone(AZ)));
            // A t3.micro takes 27 volumes beside its one interface, less its root volume: 26,
            // but the default device-name range (/dev/xvd[f-p]) has 11 names.
            assert_eq!(me.max_volumes_per_node, 11);

            // CreateVolume in the node's zone, with EBS options as parameters.
            let cap = mount_cap("ext4", Mode::SingleNodeWriter);
            let create = CreateVolumeRequest {
                name: "pvc-3f8e1c2a".into(),
                capacity_range: Some(CapacityRange { required_bytes: GIB / 2, limit_bytes: 0 }),
                volume_capabilities: vec![cap.clone()],
                parameters: [("volumeType".to_owned(), "gp3".to_owned())].into_iter().collect(),
                accessibility_requirements: Some(TopologyRequirement {
                    requisite: vec![zone(AZ)],
                    preferred: vec![zone(AZ)],
                }),
                ..Default::default()
            };
            let vol = ctl.controller.create_volume(create.clone()).await.unwrap().into_inner().volume.unwrap();
            assert_eq!(vol.capacity_bytes, GIB, "rounded up to whole GiB");
            assert_eq!(vol.accessible_topology, vec![zone(AZ)]);
            assert_eq!(ctl.controller.create_volume(create.clone()).await.unwrap().into_inner().volume.unwrap(), vol);
            let found = volumes_named(&api, &vol.volume_id).await;
            assert_eq!(found.len(), 1, "one EBS volume: {found:?}");
            assert_eq!(
                (found[0].size_gib, found[0].volume_type.as_str(), found[0].availability_zone.as_str()),
                (1, "gp3", AZ)
            );
            let mut bigger = create.clone();
            bigger.capacity_range = Some(CapacityRange { required_bytes: 3 * GIB, limit_bytes: 0 });
            assert_eq!(code(ctl.controller.create_volume(bigger).await), Code::AlreadyExists);
            let mut elsewhere = create.clone();
            elsewhere.name = "pvc-other-zone".into();
            elsewhere.accessibility_requirements =
                Some(TopologyRequirement { requisite: vec![zone(OTHER_AZ)], preferred: vec![zone(OTHER_AZ)] });
            let other = ctl.controller.create_volume(elsewhere).await.unwrap().into_inner().volume.unwrap();
            assert_eq!(other.accessible_topology, vec![zone(OTHER_AZ)]);
            assert_eq!(volumes_named(&api, "pvc-other-zone").await[0].availability_zone, OTHER_AZ);

            // ControllerPublish to the node's instance: attached in EC2, the context says how to find it.
            let publish = ControllerPublishVolumeRequest {
                volume_id: vol.volume_id.clone(),
                node_id: b_id.clone(),
                volume_capability: Some(cap.clone()),
                ..Default::default()
            };
            let ctx =
                ctl.controller.controller_publish_volume(publish.clone()).await.unwrap().into_inner().publish_context;
            assert!(ctx.get("volumeId").is_some_and(|v| v.starts_with("vol-")), "{ctx:?}");
            let again = ctl.controller.controller_publish_volume(publish.clone()).await.unwrap().into_inner();
            assert_eq!(again.publish_context, ctx);
            let attached = volumes_named(&api, &vol.volume_id).await;
            assert!(attached[0].attachment_to(&b_id).is_some(), "attached to the node: {attached:?}");
            // Published to another instance while attached here: FAILED_PRECONDITION.
            let mut to_a = publish.clone();
            to_a.node_id = a_id.clone();
            assert_eq!(code(ctl.controller.controller_publish_volume(to_a).await), Code::FailedPrecondition);

            // The node stages (a real format and mount) and publishes it.
            let staging = root.join("kubelet/staging/pvc");
            let target = root.join("kubelet/pods/p1/volume");
            std::fs::create_dir_all(&staging).unwrap();
            std::fs::create_dir_all(target.parent().unwrap()).unwrap();
            let stage = NodeStageVolumeRequest {
                volume_id: vol.volume_id.clone(),
                publish_context: ctx.clone(),
                staging_target_path: staging.display().to_string(),
                volume_capability: Some(cap.clone()),
                ..Default::default()
            };
            node.node.node_stage_volume(stage.clone()).await.unwrap();
            node.node.node_stage_volume(stage.clone()).await.unwrap();
            assert!(is_mounted(&staging));
            let publish_at = NodePublishVolumeRequest {
                volume_id: vol.volume_id.clone(),
                publish_context: ctx.clone(),
                staging_target_path: staging.display().to_string(),
                target_path: target.display().to_string(),
                volume_capability: Some(cap.clone()),
                ..Default::default()
            };
            node.node.node_publish_volume(publish_at.clone()).await.unwrap();
            node.node.node_publish_volume(publish_at).await.unwrap();
            std::fs::write(target.join("hello"), b"from the pod").unwrap();
            let stats = node
                .node
                .node_get_volume_stats(NodeGetVolumeStatsRequest {
                    volume_id: vol.volume_id.clone(),
                    volume_path: target.display().to_string(),
                    ..Default::default()
                })
                .await
                .unwrap()
                .into_inner();
            assert!(stats.usage.iter().any(|u| u.total > GIB / 2), "{stats:?}");
            assert!(!stats.volume_condition.unwrap().abnormal);

            // Both daemons are ready; the node stages, grows and reports conditions.
            for c in [&mut ctl, &mut node] {
                let ready = c.identity.probe(ProbeRequest {}).await.unwrap().into_inner().ready;
                assert_eq!(ready, Some(true));
            }
            let ncaps = node.node.node_get_capabilities(NodeGetCapabilitiesRequest {}).await.unwrap().into_inner();
            for want in ["StageUnstageVolume", "ExpandVolume", "GetVolumeStats", "VolumeCondition"] {
                assert!(format!("{ncaps:?}").contains(want), "{want}: {ncaps:?}");
            }
            // Mount and raw block access by one node are confirmed; by many nodes, not.
            let block = VolumeCapability {
                access_type: Some(volume_capability::AccessType::Block(volume_capability::BlockVolume {})),
                access_mode: Some(volume_capability::AccessMode { mode: Mode::SingleNodeWriter.into() }),
            };
            let validate = |caps: Vec<VolumeCapability>| ValidateVolumeCapabilitiesRequest {
                volume_id: vol.volume_id.clone(),
                volume_capabilities: caps,
                ..Default::default()
            };
            let ok = ctl.controller.validate_volume_capabilities(validate(vec![cap.clone(), block])).await.unwrap();
            assert!(ok.into_inner().confirmed.is_some());
            let many = mount_cap("ext4", Mode::MultiNodeMultiWriter);
            let refused = ctl.controller.validate_volume_capabilities(validate(vec![many])).await.unwrap().into_inner();
            assert!(refused.confirmed.is_none() && refused.message.contains("one node"), "{refused:?}");
            // EBS has no pool of its own: GetCapacity is not advertised and reports nothing.
            let ccaps = ctl.controller.controller_get_capabilities(ControllerGetCapabilitiesRequest {}).await.unwrap();
            assert!(!format!("{:?}", ccaps.into_inner()).contains("GetCapacity"));
            let capacity = ctl.controller.get_capacity(GetCapacityRequest::default()).await.unwrap().into_inner();
            assert_eq!(capacity.available_capacity, 0);
            // Grown while published: ModifyVolume on the controller, the file system on the node.
            let expand = ControllerExpandVolumeRequest {
                volume_id: vol.volume_id.clone(),
                capacity_range: Some(CapacityRange { required_bytes: 2 * GIB, limit_bytes: 0 }),
                volume_capability: Some(cap.clone()),
                ..Default::default()
            };
            let grown = ctl.controller.controller_expand_volume(expand.clone()).await.unwrap().into_inner();
            assert_eq!((grown.capacity_bytes, grown.node_expansion_required), (2 * GIB, true));
            assert_eq!(
                ctl.controller.controller_expand_volume(expand).await.unwrap().into_inner().capacity_bytes,
                2 * GIB
            );
            let node_grown = node
                .node
                .node_expand_volume(NodeExpandVolumeRequest {
                    volume_id: vol.volume_id.clone(),
                    volume_path: target.display().to_string(),
                    staging_target_path: staging.display().to_string(),
                    // As the kubelet says it: the size the controller grew it to.
                    capacity_range: Some(CapacityRange { required_bytes: 2 * GIB, limit_bytes: 0 }),
                    ..Default::default()
                })
                .await;
            match node_grown {
                Ok(r) => {
                    assert_eq!(r.into_inner().capacity_bytes, 2 * GIB);
                    let grown_fs = std::process::Command::new("df").arg("-B1").arg(&target).output().unwrap();
                    let text = String::from_utf8_lossy(&grown_fs.stdout).into_owned();
                    let size: i64 =
                        text.lines().nth(1).and_then(|l| l.split_whitespace().nth(1)).unwrap().parse().unwrap();
                    assert!(size > 3 * GIB / 2, "{text}");
                }
                // ext4 grows online only with CAP_SYS_RESOURCE, which some hosts withhold.
                Err(e) if e.message().contains("CAP_SYS_RESOURCE") => {}
                Err(e) => panic!("NodeExpandVolume: {e:?}"),
            }

            // The controller sees where it is published.
            let got = ctl
                .controller
                .controller_get_volume(ControllerGetVolumeRequest { volume_id: vol.volume_id.clone() })
                .await
                .unwrap()
                .into_inner();
            assert_eq!(got.status.unwrap().published_node_ids, vec![b_id.clone()]);
            let list = ctl.controller.list_volumes(ListVolumesRequest::default()).await.unwrap().into_inner();
            assert_eq!(list.entries.len(), 2, "{list:?}");
            // Not deleted while published.
            let delete = DeleteVolumeRequest { volume_id: vol.volume_id.clone(), ..Default::default() };
            assert_eq!(code(ctl.controller.delete_volume(delete.clone()).await), Code::FailedPrecondition);

            // And back: unpublish, unstage, detach, delete; each twice.
            let unpublish = NodeUnpublishVolumeRequest {
                volume_id: vol.volume_id.clone(),
                target_path: target.display().to_string(),
            };
            node.node.node_unpublish_volume(unpublish.clone()).await.unwrap();
            node.node.node_unpublish_volume(unpublish).await.unwrap();
            let unstage = NodeUnstageVolumeRequest {
                volume_id: vol.volume_id.clone(),
                staging_target_path: staging.display().to_string(),
            };
            node.node.node_unstage_volume(unstage.clone()).await.unwrap();
            node.node.node_unstage_volume(unstage).await.unwrap();
            assert!(!is_mounted(&staging) && !is_mounted(&target));
            let detach = ControllerUnpublishVolumeRequest {
                volume_id: vol.volume_id.clone(),
                node_id: b_id.clone(),
                ..Default::default()
            };
            ctl.controller.controller_unpublish_volume(detach.clone()).await.unwrap();
            ctl.controller.controller_unpublish_volume(detach).await.unwrap();
            let detached = volumes_named(&api, &vol.volume_id).await;
            assert!(detached[0].attachment_to(&b_id).is_none(), "detached: {detached:?}");

            // The data is on the volume: staged again on the node, the file is there.
            ctl.controller.controller_publish_volume(publish.clone()).await.unwrap();
            node.node.node_stage_volume(stage.clone()).await.unwrap();
            assert_eq!(std::fs::read(staging.join("hello")).unwrap(), b"from the pod");
            node.node
                .node_unstage_volume(NodeUnstageVolumeRequest {
                    volume_id: vol.volume_id.clone(),
                    staging_target_path: staging.display().to_string(),
                })
                .await
                .unwrap();
            // A controller with no record of the volume (moved to another host) still detaches it.
            let moved = host(&root, "moved-controller", &moto, &a_id, "controller");
            let mut moved_ctl = connect(&moved.csi).await;
            moved_ctl
                .controller
                .controller_unpublish_volume(ControllerUnpublishVolumeRequest {
                    volume_id: vol.volume_id.clone(),
                    node_id: b_id.clone(),
                    ..Default::default()
                })
                .await
                .unwrap();
            let detached = volumes_named(&api, &vol.volume_id).await;
            assert!(detached[0].attachment_to(&b_id).is_none(), "detached by the moved controller: {detached:?}");
            drop(moved);
            // Back on the first controller, the same call finds it detached and drops its claim.
            ctl.controller
                .controller_unpublish_volume(ControllerUnpublishVolumeRequest {
                    volume_id: vol.volume_id.clone(),
                    node_id: b_id.clone(),
                    ..Default::default()
                })
                .await
                .unwrap();

            // Snapshots: one per name, found again by name; a volume made from one.
            let snap_req = CreateSnapshotRequest {
                source_volume_id: vol.volume_id.clone(),
                name: "snapshot-1".into(),
                ..Default::default()
            };
            let snap = ctl.controller.create_snapshot(snap_req.clone()).await.unwrap().into_inner().snapshot.unwrap();
            assert!(snap.snapshot_id.starts_with("snap-"), "{snap:?}");
            assert_eq!(
                (snap.source_volume_id.as_str(), snap.size_bytes),
                (vol.volume_id.as_str(), 2 * GIB),
                "the size it was grown to"
            );
            let again = ctl.controller.create_snapshot(snap_req.clone()).await.unwrap().into_inner().snapshot.unwrap();
            assert_eq!(again.snapshot_id, snap.snapshot_id, "the same name is the same snapshot");
            let mut of_other = snap_req.clone();
            of_other.source_volume_id = other.volume_id.clone();
            assert_eq!(code(ctl.controller.create_snapshot(of_other).await), Code::AlreadyExists);
            let mut no_name = snap_req.clone();
            no_name.name.clear();
            assert_eq!(code(ctl.controller.create_snapshot(no_name).await), Code::InvalidArgument);
            let listed = ctl
                .controller
                .list_snapshots(ListSnapshotsRequest { source_volume_id: vol.volume_id.clone(), ..Default::default() })
                .await
                .unwrap()
                .into_inner();
            assert_eq!(listed.entries.len(), 1, "{listed:?}");
            let none = ctl
                .controller
                .list_snapshots(ListSnapshotsRequest {
                    snapshot_id: "snap-0123456789abcdef0".into(),
                    ..Default::default()
                })
                .await
                .unwrap()
                .into_inner();
            assert!(none.entries.is_empty(), "{none:?}");
            let restored = CreateVolumeRequest {
                name: "pvc-restored".into(),
                volume_capabilities: vec![cap.clone()],
                volume_content_source: Some(VolumeContentSource {
                    r#type: Some(volume_content_source::Type::Snapshot(volume_content_source::SnapshotSource {
                        snapshot_id: snap.snapshot_id.clone(),
                    })),
                }),
                ..Default::default()
            };
            let restored = ctl.controller.create_volume(restored).await.unwrap().into_inner().volume.unwrap();
            assert!(restored.content_source.is_some(), "{restored:?}");
            assert_eq!(
                volumes_named(&api, "pvc-restored").await[0].snapshot_id.as_deref(),
                Some(snap.snapshot_id.as_str())
            );
            ctl.controller
                .delete_volume(DeleteVolumeRequest { volume_id: restored.volume_id.clone(), ..Default::default() })
                .await
                .unwrap();
            let delete_snap = DeleteSnapshotRequest { snapshot_id: snap.snapshot_id.clone(), ..Default::default() };
            ctl.controller.delete_snapshot(delete_snap.clone()).await.unwrap();
            ctl.controller.delete_snapshot(delete_snap).await.unwrap();

            // ControllerModifyVolume: the throughput changes in place.
            let modify = ControllerModifyVolumeRequest {
                volume_id: vol.volume_id.clone(),
                mutable_parameters: [("throughput".to_owned(), "250".to_owned())].into_iter().collect(),
                ..Default::default()
            };
            ctl.controller.controller_modify_volume(modify).await.unwrap();
            assert_eq!(volumes_named(&api, &vol.volume_id).await[0].throughput, Some(250));
            let unknown = ControllerModifyVolumeRequest {
                volume_id: vol.volume_id.clone(),
                mutable_parameters: [("colour".to_owned(), "blue".to_owned())].into_iter().collect(),
                ..Default::default()
            };
            assert_eq!(code(ctl.controller.controller_modify_volume(unknown).await), Code::InvalidArgument);

            ctl.controller.delete_volume(delete.clone()).await.unwrap();
            ctl.controller.delete_volume(delete).await.unwrap();
            assert!(volumes_named(&api, &vol.volume_id).await.is_empty(), "deleted in EC2");
            ctl.controller
                .delete_volume(DeleteVolumeRequest { volume_id: other.volume_id.clone(), ..Default::default() })
                .await
                .unwrap();
        });
    }));
    let errors = hv.errors.lock().unwrap().clone();
    hv.stop();
    if let Err(panic) = outcome {
        eprintln!("controller log:\n{}\nnode log:\n{}", a.daemon.log_text(), b.daemon.log_text());
        std::panic::resume_unwind(panic);
    }
    assert!(errors.is_empty(), "the device host reported errors: {errors:?}");
    for log in [a.daemon.log_text(), b.daemon.log_text()] {
        assert!(!log.contains("panicked") && !log.contains("secretKey: test"), "{log}");
    }
}

/// The two codes a busy node and a full instance answer: `ABORTED` for a call that finds another
/// operation on its volume in flight past its deadline (and the one in flight, given up on by its
/// caller, still undoes its claim), and `RESOURCE_EXHAUSTED` for an attach past the instance's
/// device names, as many as NodeGetInfo's `max_volumes_per_node` said.
#[test]
fn busy_volumes_abort_and_a_full_instance_is_resource_exhausted() {
    let test = "busy_volumes_abort_and_a_full_instance_is_resource_exhausted";
    if !require(test, prerequisites()) {
        return;
    }
    let Some(moto) = Moto::for_test(test) else { return };
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let Cluster { _tmp, root, b_id, a, b, mut hv, .. } = cluster(&moto);
    let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        rt.block_on(async {
            let mut ctl = connect(&a.csi).await;
            let mut node = connect(&b.csi).await;
            let cap = mount_cap("ext4", Mode::SingleNodeWriter);
            let limit = node.node.node_get_info(NodeGetInfoRequest {}).await.unwrap().into_inner().max_volumes_per_node;
            assert_eq!(limit, 11);
            // Volumes whose device never appears on the node (the device host never plugs them).
            // A limit that cannot be found out (EC2 does not know the type) is reported as none,
            // and the node still registers.
            let odd_id = moto.run_instance_of(REGION, AZ, "x9.unknown");
            let odd = host(&root, "odd-node", &moto, &odd_id, "node");
            let info = connect(&odd.csi).await.node.node_get_info(NodeGetInfoRequest {}).await.unwrap().into_inner();
            assert_eq!((info.node_id.as_str(), info.max_volumes_per_node), (odd_id.as_str(), 0));
            assert!(odd.daemon.log_text().contains("attachment limit is not known"), "{}", odd.daemon.log_text());

            let names: Vec<String> = (0..=limit).map(|n| format!("{}-{n}", support::NO_DEVICE_PREFIX)).collect();
            let mut contexts = Vec::new();
            for (n, name) in names.iter().enumerate() {
                let create = CreateVolumeRequest {
                    name: name.clone(),
                    capacity_range: Some(CapacityRange { required_bytes: GIB, limit_bytes: 0 }),
                    volume_capabilities: vec![cap.clone()],
                    ..Default::default()
                };
                ctl.controller.create_volume(create).await.unwrap();
                let publish = ControllerPublishVolumeRequest {
                    volume_id: name.clone(),
                    node_id: b_id.clone(),
                    volume_capability: Some(cap.clone()),
                    ..Default::default()
                };
                let published = ctl.controller.controller_publish_volume(publish).await;
                if n < 11 {
                    contexts.push(published.unwrap().into_inner().publish_context);
                } else {
                    // The twelfth attach finds every device name taken.
                    assert_eq!(code(published), Code::ResourceExhausted);
                }
            }

            // A NodeStage waits for a device that never comes; another call on that volume
            // meanwhile, with a short deadline, is ABORTED rather than left waiting.
            let staging = root.join("node/kubelet/staging");
            std::fs::create_dir_all(&staging).unwrap();
            let stage = NodeStageVolumeRequest {
                volume_id: names[0].clone(),
                publish_context: contexts[0].clone(),
                staging_target_path: staging.display().to_string(),
                volume_capability: Some(cap.clone()),
                ..Default::default()
            };
            let mut slow = tonic::Request::new(stage.clone());
            slow.set_timeout(std::time::Duration::from_secs(6));
            let mut waiting = node.node.clone();
            let in_flight = tokio::spawn(async move { waiting.node_stage_volume(slow).await });
            tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
            let mut hurried = tonic::Request::new(stage.clone());
            hurried.set_timeout(std::time::Duration::from_secs(2));
            assert_eq!(code(node.node.node_stage_volume(hurried).await), Code::Aborted);
            // The server's answer (DEADLINE_EXCEEDED) or the client's own deadline (CANCELLED).
            let given_up = code(in_flight.await.unwrap());
            assert!(matches!(given_up, Code::DeadlineExceeded | Code::Cancelled), "{given_up:?}");
            // The claim went with it: the volume is not staged, so a detach goes through.
            assert!(!is_mounted(&staging));

            for name in &names {
                let unpublish = ControllerUnpublishVolumeRequest {
                    volume_id: name.clone(),
                    node_id: b_id.clone(),
                    ..Default::default()
                };
                ctl.controller.controller_unpublish_volume(unpublish).await.unwrap();
                let delete = DeleteVolumeRequest { volume_id: name.clone(), ..Default::default() };
                ctl.controller.delete_volume(delete).await.unwrap();
            }
        });
    }));
    hv.stop();
    if let Err(panic) = outcome {
        eprintln!("controller log:\n{}\nnode log:\n{}", a.daemon.log_text(), b.daemon.log_text());
        std::panic::resume_unwind(panic);
    }
}
