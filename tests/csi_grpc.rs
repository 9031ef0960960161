//! The CSI front through a gRPC client built from the same protos, against the built daemon on
//! its Unix socket: every RPC of the Identity, Controller and Node services on the vfs and loop
//! backends, their idempotent repeats, and the error codes the CSI specification lists.
//!
//! The controller tests need nothing special. The node tests mount (vfs: bind mounts; loop:
//! loop devices, mkfs, mount) and need root; as another user they print why they are skipped.

mod common;

use std::path::{Path, PathBuf};

use common::csi::{code, mount_cap};
use common::is_mounted;
use rexray::csi::proto::controller_client::ControllerClient;
use rexray::csi::proto::identity_client::IdentityClient;
use rexray::csi::proto::node_client::NodeClient;
use rexray::csi::proto::volume_capability::{access_mode::Mode, AccessMode, AccessType, BlockVolume};
use rexray::csi::proto::*;
use tonic::transport::Channel;
use tonic::Code;

fn is_root() -> bool {
    rustix::process::geteuid().is_root()
}

/// A daemon serving one CSI module (mode both) and one Docker module on `backend`, in a temp dir.
struct Setup {
    dir: tempfile::TempDir,
    _daemon: common::Daemon,
}

impl Setup {
    fn new(backend: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().display();
        let config = format!(
            "rexray:\n  logLevel: debug\n  modules:\n    default-docker:\n      disabled: true\n    docker:\n      type: docker\n      host: unix://{d}/plugins/rxt.sock\n    csi:\n      type: csi\n      csi:\n        endpoint: unix://{d}/csi/csi.sock\n        driver: test.csi.rexray.io\nlibstorage:\n  service: {backend}\n  integration:\n    volume:\n      operations:\n        create:\n          default:\n            size: 1\nvfs:\n  root: {d}/vfs\nloop:\n  root: {d}/loop\n"
        );
        std::fs::write(dir.path().join("rexray.yml"), config).unwrap();
        let daemon = common::start_daemon(
            &dir.path().join("rexray.yml"),
            &dir.path().join("home"),
            &dir.path().join("daemon.log"),
            &[dir.path().join("plugins/rxt.sock"), dir.path().join("csi/csi.sock")],
        );
        Self { dir, _daemon: daemon }
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    async fn clients(&self) -> (IdentityClient<Channel>, ControllerClient<Channel>, NodeClient<Channel>) {
        let c = common::csi::connect(&self.path("csi/csi.sock")).await;
        (c.identity, c.controller, c.node)
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.path("daemon.log")).unwrap_or_default()
    }
}

fn writer() -> VolumeCapability {
    mount_cap("", Mode::SingleNodeWriter)
}

fn create(name: &str, required: i64, limit: i64) -> CreateVolumeRequest {
    CreateVolumeRequest {
        name: name.into(),
        capacity_range: Some(CapacityRange { required_bytes: required, limit_bytes: limit }),
        volume_capabilities: vec![writer()],
        ..Default::default()
    }
}

const GIB: i64 = 1 << 30;

#[tokio::test]
async fn identity_reports_the_driver_its_services_and_readiness() {
    let setup = Setup::new("loop");
    let (mut identity, _, _) = setup.clients().await;
    let info = identity.get_plugin_info(GetPluginInfoRequest {}).await.unwrap().into_inner();
    assert_eq!(info.name, "test.csi.rexray.io");
    assert_eq!(info.vendor_version, env!("CARGO_PKG_VERSION"));
    let caps = identity.get_plugin_capabilities(GetPluginCapabilitiesRequest {}).await.unwrap().into_inner();
    let text = format!("{caps:?}");
    assert!(text.contains("ControllerService"), "{text}");
    assert!(text.contains("VolumeExpansion"), "online expansion on loop: {text}");
    let probe = identity.probe(ProbeRequest {}).await.unwrap().into_inner();
    assert_eq!(probe.ready, Some(true));
}

#[tokio::test]
async fn controller_creates_idempotently_lists_pages_and_deletes() {
    let setup = Setup::new("vfs");
    let (_, mut ctl, _) = setup.clients().await;
    let caps = ctl.controller_get_capabilities(ControllerGetCapabilitiesRequest {}).await.unwrap().into_inner();
    assert!(format!("{caps:?}").contains("CreateDeleteVolume"), "{caps:?}");

    // A 128-character name, as csi-sanity makes; the same request twice is one volume.
    let long = format!("pvc-{}", "a".repeat(124));
    let first = ctl.create_volume(create(&long, GIB, 0)).await.unwrap().into_inner().volume.unwrap();
    assert_eq!(first.volume_id, long);
    assert_eq!(first.capacity_bytes, GIB);
    let again = ctl.create_volume(create(&long, GIB, 0)).await.unwrap().into_inner().volume.unwrap();
    assert_eq!(again, first);
    assert!(setup.path("vfs").join(&long).is_dir());
    // The same name with another size is ALREADY_EXISTS.
    assert_eq!(code(ctl.create_volume(create(&long, 3 * GIB, 0)).await), Code::AlreadyExists);

    // Missing fields and impossible ranges.
    assert_eq!(code(ctl.create_volume(create("", GIB, 0)).await), Code::InvalidArgument);
    let mut no_caps = create("nocaps", GIB, 0);
    no_caps.volume_capabilities.clear();
    assert_eq!(code(ctl.create_volume(no_caps).await), Code::InvalidArgument);
    assert_eq!(code(ctl.create_volume(create("toolarge", GIB + 1, GIB + 10)).await), Code::OutOfRange);
    let mut bad_param = create("badparam", GIB, 0);
    bad_param.parameters.insert("colour".into(), "blue".into());
    let status = ctl.create_volume(bad_param).await.unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(status.message().contains("colour"), "{status:?}");
    let mut multi = create("multi", GIB, 0);
    multi.volume_capabilities = vec![mount_cap("", Mode::MultiNodeMultiWriter)];
    assert_eq!(code(ctl.create_volume(multi).await), Code::InvalidArgument);
    // The sidecars' metadata parameters are context, not options.
    let mut with_meta = create("meta", GIB, 0);
    with_meta.parameters.insert("csi.storage.k8s.io/pvc/name".into(), "data".into());
    ctl.create_volume(with_meta).await.unwrap();

    // ValidateVolumeCapabilities confirms what is served and says why not otherwise.
    let validate = |id: &str, cap: VolumeCapability| ValidateVolumeCapabilitiesRequest {
        volume_id: id.into(),
        volume_capabilities: vec![cap],
        ..Default::default()
    };
    let ok = ctl.validate_volume_capabilities(validate(&long, writer())).await.unwrap().into_inner();
    assert!(ok.confirmed.is_some(), "{ok:?}");
    let no = ctl
        .validate_volume_capabilities(validate(&long, mount_cap("", Mode::MultiNodeReaderOnly)))
        .await
        .unwrap()
        .into_inner();
    assert!(no.confirmed.is_none() && no.message.contains("one node"), "{no:?}");
    assert_eq!(code(ctl.validate_volume_capabilities(validate("nosuch", writer())).await), Code::NotFound);
    assert_eq!(code(ctl.validate_volume_capabilities(validate("", writer())).await), Code::InvalidArgument);

    // ListVolumes pages through every volume once, even when one is deleted between pages.
    for n in 0..5 {
        ctl.create_volume(create(&format!("page-{n}"), GIB, 0)).await.unwrap();
    }
    let mut seen = Vec::new();
    let mut token = String::new();
    loop {
        let page = ctl
            .list_volumes(ListVolumesRequest { max_entries: 2, starting_token: token.clone() })
            .await
            .unwrap()
            .into_inner();
        assert!(page.entries.len() <= 2);
        seen.extend(page.entries.iter().map(|e| e.volume.as_ref().unwrap().volume_id.clone()));
        if seen.len() == 2 {
            // Deleting an entry already listed must not break paging.
            ctl.delete_volume(DeleteVolumeRequest { volume_id: seen[0].clone(), ..Default::default() }).await.unwrap();
        }
        if page.next_token.is_empty() {
            break;
        }
        token = page.next_token;
    }
    let mut expected: Vec<String> = (0..5).map(|n| format!("page-{n}")).collect();
    expected.extend(["meta".to_owned(), long.clone()]);
    expected.sort();
    assert_eq!(seen, expected);
    let bad = ListVolumesRequest { max_entries: 0, starting_token: "not-a-token".into() };
    assert_eq!(code(ctl.list_volumes(bad).await), Code::Aborted);

    // GetCapacity: the free space of vfs.root's file system.
    let capacity = ctl.get_capacity(GetCapacityRequest::default()).await.unwrap().into_inner();
    assert!(capacity.available_capacity > 0, "{capacity:?}");

    // ControllerGetVolume, and publishing: only this host is a node of a local backend.
    let got =
        ctl.controller_get_volume(ControllerGetVolumeRequest { volume_id: long.clone() }).await.unwrap().into_inner();
    assert_eq!(got.volume.unwrap().volume_id, long);
    assert_eq!(
        code(ctl.controller_get_volume(ControllerGetVolumeRequest { volume_id: "nosuch".into() }).await),
        Code::NotFound
    );
    let publish = |id: &str, node: &str| ControllerPublishVolumeRequest {
        volume_id: id.into(),
        node_id: node.into(),
        volume_capability: Some(writer()),
        ..Default::default()
    };
    assert_eq!(code(ctl.controller_publish_volume(publish("nosuch", "anywhere")).await), Code::NotFound);
    assert_eq!(code(ctl.controller_publish_volume(publish(&long, "not-this-host")).await), Code::NotFound);
    assert_eq!(code(ctl.controller_publish_volume(publish(&long, "")).await), Code::InvalidArgument);
    let mut no_cap = publish(&long, "x");
    no_cap.volume_capability = None;
    assert_eq!(code(ctl.controller_publish_volume(no_cap).await), Code::InvalidArgument);

    // Expansion is not offered for vfs (its volumes have no size of their own).
    let expand = ControllerExpandVolumeRequest {
        volume_id: long.clone(),
        capacity_range: Some(CapacityRange { required_bytes: 2 * GIB, limit_bytes: 0 }),
        ..Default::default()
    };
    assert_eq!(code(ctl.controller_expand_volume(expand).await), Code::InvalidArgument);

    // DeleteVolume: gone, then gone again is OK; a missing ID is INVALID_ARGUMENT.
    ctl.delete_volume(DeleteVolumeRequest { volume_id: long.clone(), ..Default::default() }).await.unwrap();
    ctl.delete_volume(DeleteVolumeRequest { volume_id: long.clone(), ..Default::default() }).await.unwrap();
    assert!(!setup.path("vfs").join(&long).exists());
    assert_eq!(code(ctl.delete_volume(DeleteVolumeRequest::default()).await), Code::InvalidArgument);
    assert!(!setup.log().contains("panicked"), "{}", setup.log());
}

/// The whole life of a volume on a node: publish to the node, stage, publish to two targets
/// (one read-only), write, measure, and back; each step repeated.
async fn node_lifecycle(setup: &Setup, fs: &str, size_gib: i64) {
    let (_, mut ctl, mut node) = setup.clients().await;
    let info = node.node_get_info(NodeGetInfoRequest {}).await.unwrap().into_inner();
    assert!(!info.node_id.is_empty());
    let ncaps = node.node_get_capabilities(NodeGetCapabilitiesRequest {}).await.unwrap().into_inner();
    assert!(format!("{ncaps:?}").contains("StageUnstageVolume"), "{ncaps:?}");

    let cap = mount_cap(fs, Mode::SingleNodeWriter);
    let mut req = create("data", size_gib * GIB, 0);
    req.volume_capabilities = vec![cap.clone()];
    let vol = ctl.create_volume(req).await.unwrap().into_inner().volume.unwrap();
    let publish = ControllerPublishVolumeRequest {
        volume_id: vol.volume_id.clone(),
        node_id: info.node_id.clone(),
        volume_capability: Some(cap.clone()),
        ..Default::default()
    };
    let ctx = ctl.controller_publish_volume(publish.clone()).await.unwrap().into_inner().publish_context;
    assert_eq!(ctl.controller_publish_volume(publish.clone()).await.unwrap().into_inner().publish_context, ctx);

    let staging = setup.path("kubelet/staging");
    std::fs::create_dir_all(&staging).unwrap();
    let stage = NodeStageVolumeRequest {
        volume_id: vol.volume_id.clone(),
        publish_context: ctx.clone(),
        staging_target_path: staging.display().to_string(),
        volume_capability: Some(cap.clone()),
        ..Default::default()
    };
    node.node_stage_volume(stage.clone()).await.unwrap();
    node.node_stage_volume(stage.clone()).await.unwrap();
    let mut elsewhere = stage.clone();
    elsewhere.staging_target_path = setup.path("kubelet/other").display().to_string();
    assert_eq!(code(node.node_stage_volume(elsewhere).await), Code::FailedPrecondition);

    // The Docker front cannot mount a volume the orchestrator holds.
    let (_, body) = common::plugin_call(
        &setup.path("plugins/rxt.sock"),
        "VolumeDriver.Mount",
        &serde_json::json!({"Name": "data", "ID": "c1"}),
    );
    assert!(body["Err"].as_str().unwrap_or("").contains("orchestrator"), "{body}");

    let target = |t: &str| setup.path(&format!("kubelet/pods/{t}"));
    std::fs::create_dir_all(setup.path("kubelet/pods")).unwrap();
    let publish_at = |t: &str, readonly: bool| NodePublishVolumeRequest {
        volume_id: vol.volume_id.clone(),
        publish_context: ctx.clone(),
        staging_target_path: staging.display().to_string(),
        target_path: target(t).display().to_string(),
        volume_capability: Some(cap.clone()),
        readonly,
        ..Default::default()
    };
    node.node_publish_volume(publish_at("rw", false)).await.unwrap();
    node.node_publish_volume(publish_at("rw", false)).await.unwrap();
    node.node_publish_volume(publish_at("ro", true)).await.unwrap();
    std::fs::write(target("rw").join("hello"), b"kept").unwrap();
    assert_eq!(std::fs::read(target("ro").join("hello")).unwrap(), b"kept");
    let refused = std::fs::write(target("ro").join("nope"), b"x").unwrap_err();
    assert_eq!(refused.raw_os_error(), Some(30), "EROFS: {refused}");
    assert_eq!(code(node.node_publish_volume(publish_at("rw", true)).await), Code::AlreadyExists);
    let mut unstaged = publish_at("x", false);
    unstaged.staging_target_path = setup.path("kubelet/not-staged").display().to_string();
    assert_eq!(code(node.node_publish_volume(unstaged).await), Code::FailedPrecondition);
    let mut no_target = publish_at("x", false);
    no_target.target_path.clear();
    assert_eq!(code(node.node_publish_volume(no_target).await), Code::InvalidArgument);

    let stats = node
        .node_get_volume_stats(NodeGetVolumeStatsRequest {
            volume_id: vol.volume_id.clone(),
            volume_path: target("rw").display().to_string(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(stats.usage.len(), 2, "bytes and inodes: {stats:?}");
    assert!(stats.usage.iter().all(|u| u.total > 0), "{stats:?}");
    assert!(!stats.volume_condition.unwrap().abnormal);
    assert!(format!("{ncaps:?}").contains("VolumeCondition"), "{ncaps:?}");
    let unknown = NodeGetVolumeStatsRequest {
        volume_id: vol.volume_id.clone(),
        volume_path: setup.path("nowhere").display().to_string(),
        ..Default::default()
    };
    assert_eq!(code(node.node_get_volume_stats(unknown).await), Code::NotFound);

    // The volume cannot be deleted while the orchestrator holds it.
    let delete = DeleteVolumeRequest { volume_id: vol.volume_id.clone(), ..Default::default() };
    assert_eq!(code(ctl.delete_volume(delete.clone()).await), Code::FailedPrecondition);
    let list = ctl.list_volumes(ListVolumesRequest::default()).await.unwrap().into_inner();
    assert_eq!(list.entries[0].status.as_ref().unwrap().published_node_ids, vec![info.node_id.clone()]);

    if size_gib > 0 {
        let expand = ControllerExpandVolumeRequest {
            volume_id: vol.volume_id.clone(),
            capacity_range: Some(CapacityRange { required_bytes: (size_gib + 1) * GIB, limit_bytes: 0 }),
            ..Default::default()
        };
        let grown = ctl.controller_expand_volume(expand.clone()).await.unwrap().into_inner();
        assert_eq!(grown.capacity_bytes, (size_gib + 1) * GIB);
        assert!(grown.node_expansion_required);
        assert_eq!(
            ctl.controller_expand_volume(expand).await.unwrap().into_inner().capacity_bytes,
            grown.capacity_bytes
        );
        let node_grown = node
            .node_expand_volume(NodeExpandVolumeRequest {
                volume_id: vol.volume_id.clone(),
                volume_path: target("rw").display().to_string(),
                staging_target_path: staging.display().to_string(),
                capacity_range: Some(CapacityRange { required_bytes: (size_gib + 1) * GIB, limit_bytes: 0 }),
                ..Default::default()
            })
            .await;
        match node_grown {
            Ok(r) => assert_eq!(r.into_inner().capacity_bytes, (size_gib + 1) * GIB),
            // ext4 grows online only with CAP_SYS_RESOURCE, which some hosts withhold.
            Err(e) if fs == "ext4" && e.message().contains("CAP_SYS_RESOURCE") => {}
            Err(e) => panic!("NodeExpandVolume: {e:?}"),
        }
    }

    for t in ["rw", "ro"] {
        let unpublish = NodeUnpublishVolumeRequest {
            volume_id: vol.volume_id.clone(),
            target_path: target(t).display().to_string(),
        };
        node.node_unpublish_volume(unpublish.clone()).await.unwrap();
        node.node_unpublish_volume(unpublish).await.unwrap();
    }
    let unstage = NodeUnstageVolumeRequest {
        volume_id: vol.volume_id.clone(),
        staging_target_path: staging.display().to_string(),
    };
    node.node_unstage_volume(unstage.clone()).await.unwrap();
    node.node_unstage_volume(unstage).await.unwrap();
    let unpublish = ControllerUnpublishVolumeRequest {
        volume_id: vol.volume_id.clone(),
        node_id: info.node_id.clone(),
        ..Default::default()
    };
    ctl.controller_unpublish_volume(unpublish.clone()).await.unwrap();
    ctl.controller_unpublish_volume(unpublish).await.unwrap();
    assert!(!is_mounted(&staging) && !is_mounted(&target("rw")));

    // Released by the orchestrator, the Docker front may use it: the data is there.
    let sock = setup.path("plugins/rxt.sock");
    let (_, body) = common::plugin_call(&sock, "VolumeDriver.Mount", &serde_json::json!({"Name": "data", "ID": "c1"}));
    let mountpoint = body["Mountpoint"].as_str().unwrap_or_else(|| panic!("{body}")).to_owned();
    let data_root = if fs.is_empty() {
        Path::new(&mountpoint).to_path_buf()
    } else {
        Path::new(&mountpoint).parent().unwrap().to_path_buf()
    };
    assert_eq!(std::fs::read(data_root.join("hello")).unwrap(), b"kept");
    // ... and while it does, the orchestrator may not stage it.
    assert_eq!(code(node.node_stage_volume(stage).await), Code::FailedPrecondition);
    common::plugin_call(&sock, "VolumeDriver.Unmount", &serde_json::json!({"Name": "data", "ID": "c1"}));
    ctl.delete_volume(delete.clone()).await.unwrap();
    ctl.delete_volume(delete).await.unwrap();
    assert!(!setup.log().contains("panicked"), "{}", setup.log());
}

#[tokio::test]
async fn node_stages_and_publishes_a_vfs_volume() {
    if !is_root() {
        eprintln!("skipping: needs root for bind mounts");
        return;
    }
    let setup = Setup::new("vfs");
    node_lifecycle(&setup, "", 0).await;
    // vfs volumes are directories: raw block access is refused in words, not served half-way.
    let (_, mut ctl, _) = setup.clients().await;
    let mut block = create("raw", GIB, 0);
    block.volume_capabilities = vec![block_cap()];
    let status = ctl.create_volume(block).await.unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(status.message().contains("block"), "{status:?}");
}

#[tokio::test]
async fn node_stages_publishes_and_grows_a_loop_volume() {
    if !is_root() {
        eprintln!("skipping: needs root for loop devices and mount(2)");
        return;
    }
    let setup = Setup::new("loop");
    node_lifecycle(&setup, "ext4", 1).await;
    let (_, mut ctl, mut node) = setup.clients().await;

    // Docker Swarm unpublishes from the node without unstaging first: the volume is unstaged
    // (flushed, unmounted) before its device goes, and refused while a target still uses it.
    let cap = mount_cap("ext4", Mode::SingleNodeWriter);
    ctl.create_volume(create("swarmlike", GIB, 0)).await.unwrap();
    let here = node.node_get_info(NodeGetInfoRequest {}).await.unwrap().into_inner().node_id;
    let publish = ControllerPublishVolumeRequest {
        volume_id: "swarmlike".into(),
        node_id: here.clone(),
        volume_capability: Some(cap.clone()),
        ..Default::default()
    };
    let ctx = ctl.controller_publish_volume(publish).await.unwrap().into_inner().publish_context;
    let staging = setup.path("swarm/staged");
    let target = setup.path("swarm/published");
    node.node_stage_volume(NodeStageVolumeRequest {
        volume_id: "swarmlike".into(),
        publish_context: ctx.clone(),
        staging_target_path: staging.display().to_string(),
        volume_capability: Some(cap.clone()),
        ..Default::default()
    })
    .await
    .unwrap();
    node.node_publish_volume(NodePublishVolumeRequest {
        volume_id: "swarmlike".into(),
        publish_context: ctx,
        staging_target_path: staging.display().to_string(),
        target_path: target.display().to_string(),
        volume_capability: Some(cap),
        ..Default::default()
    })
    .await
    .unwrap();
    let detach =
        ControllerUnpublishVolumeRequest { volume_id: "swarmlike".into(), node_id: here, ..Default::default() };
    assert_eq!(code(ctl.controller_unpublish_volume(detach.clone()).await), Code::FailedPrecondition);
    node.node_unpublish_volume(NodeUnpublishVolumeRequest {
        volume_id: "swarmlike".into(),
        target_path: target.display().to_string(),
    })
    .await
    .unwrap();
    ctl.controller_unpublish_volume(detach).await.unwrap();
    assert!(!is_mounted(&staging), "unstaged before the device went");
    ctl.delete_volume(DeleteVolumeRequest { volume_id: "swarmlike".into(), ..Default::default() }).await.unwrap();

    let capacity = ctl.get_capacity(GetCapacityRequest::default()).await.unwrap().into_inner();
    assert!(capacity.available_capacity > 0, "{capacity:?}");

    // A volume unmounted behind the plugin's back shows as abnormal.
    let cap = mount_cap("ext4", Mode::SingleNodeWriter);
    ctl.create_volume(create("lost", GIB, 0)).await.unwrap();
    let publish = ControllerPublishVolumeRequest {
        volume_id: "lost".into(),
        node_id: node.node_get_info(NodeGetInfoRequest {}).await.unwrap().into_inner().node_id,
        volume_capability: Some(cap.clone()),
        ..Default::default()
    };
    let ctx = ctl.controller_publish_volume(publish.clone()).await.unwrap().into_inner().publish_context;
    let staging = setup.path("lost/staging");
    let stage = NodeStageVolumeRequest {
        volume_id: "lost".into(),
        publish_context: ctx,
        staging_target_path: staging.display().to_string(),
        volume_capability: Some(cap),
        ..Default::default()
    };
    node.node_stage_volume(stage).await.unwrap();
    assert!(std::process::Command::new("umount").arg(&staging).status().unwrap().success());
    let stats = NodeGetVolumeStatsRequest {
        volume_id: "lost".into(),
        volume_path: staging.display().to_string(),
        ..Default::default()
    };
    let condition = node.node_get_volume_stats(stats).await.unwrap().into_inner().volume_condition.unwrap();
    assert!(condition.abnormal && condition.message.contains("no longer mounted"), "{condition:?}");
    let unstage =
        NodeUnstageVolumeRequest { volume_id: "lost".into(), staging_target_path: staging.display().to_string() };
    node.node_unstage_volume(unstage).await.unwrap();
    let unpublish = ControllerUnpublishVolumeRequest {
        volume_id: "lost".into(),
        node_id: publish.node_id.clone(),
        ..Default::default()
    };
    ctl.controller_unpublish_volume(unpublish).await.unwrap();
    ctl.delete_volume(DeleteVolumeRequest { volume_id: "lost".into(), ..Default::default() }).await.unwrap();
}

fn block_cap() -> VolumeCapability {
    VolumeCapability {
        access_type: Some(AccessType::Block(BlockVolume {})),
        access_mode: Some(AccessMode { mode: Mode::SingleNodeWriter.into() }),
    }
}

#[tokio::test]
async fn node_hands_out_a_loop_volume_as_a_raw_block_device() {
    use std::io::{Read, Seek, SeekFrom, Write};
    use std::os::unix::fs::FileTypeExt;
    if !is_root() {
        eprintln!("skipping: needs root for loop devices and mount(2)");
        return;
    }
    let setup = Setup::new("loop");
    let (_, mut ctl, mut node) = setup.clients().await;
    let mut req = create("raw", GIB, 0);
    req.volume_capabilities = vec![block_cap()];
    ctl.create_volume(req).await.unwrap();
    let here = node.node_get_info(NodeGetInfoRequest {}).await.unwrap().into_inner().node_id;
    let publish = ControllerPublishVolumeRequest {
        volume_id: "raw".into(),
        node_id: here.clone(),
        volume_capability: Some(block_cap()),
        ..Default::default()
    };
    let ctx = ctl.controller_publish_volume(publish).await.unwrap().into_inner().publish_context;
    let staging = setup.path("block/staging");
    std::fs::create_dir_all(&staging).unwrap();
    let stage = NodeStageVolumeRequest {
        volume_id: "raw".into(),
        publish_context: ctx.clone(),
        staging_target_path: staging.display().to_string(),
        volume_capability: Some(block_cap()),
        ..Default::default()
    };
    node.node_stage_volume(stage.clone()).await.unwrap();
    node.node_stage_volume(stage.clone()).await.unwrap();
    let device = staging.join("block");
    assert!(is_mounted(&device), "the device is bound in the staging directory");
    assert!(std::fs::metadata(&device).unwrap().file_type().is_block_device());
    let mut as_mount = stage.clone();
    as_mount.volume_capability = Some(mount_cap("ext4", Mode::SingleNodeWriter));
    assert_eq!(code(node.node_stage_volume(as_mount).await), Code::AlreadyExists);

    std::fs::create_dir_all(setup.path("block/pods")).unwrap();
    let target = setup.path("block/pods/dev");
    let publish_at = |cap: VolumeCapability, at: &Path| NodePublishVolumeRequest {
        volume_id: "raw".into(),
        publish_context: ctx.clone(),
        staging_target_path: staging.display().to_string(),
        target_path: at.display().to_string(),
        volume_capability: Some(cap),
        ..Default::default()
    };
    node.node_publish_volume(publish_at(block_cap(), &target)).await.unwrap();
    node.node_publish_volume(publish_at(block_cap(), &target)).await.unwrap();
    let other = setup.path("block/pods/fs");
    let refused = node.node_publish_volume(publish_at(mount_cap("", Mode::SingleNodeWriter), &other)).await;
    assert_eq!(code(refused), Code::AlreadyExists);

    // The device itself, never formatted: blank until written, and the same bytes through
    // the staging file and the target.
    let mut dev = std::fs::OpenOptions::new().read(true).write(true).open(&target).unwrap();
    let mut head = vec![0u8; 1 << 16];
    dev.read_exact(&mut head).unwrap();
    assert!(head.iter().all(|b| *b == 0), "a raw block volume is never formatted");
    dev.seek(SeekFrom::Start(1 << 20)).unwrap();
    dev.write_all(b"raw bytes").unwrap();
    dev.sync_all().unwrap();
    drop(dev);
    let mut again = std::fs::File::open(&device).unwrap();
    again.seek(SeekFrom::Start(1 << 20)).unwrap();
    let mut read = [0u8; 9];
    again.read_exact(&mut read).unwrap();
    assert_eq!(&read, b"raw bytes");
    drop(again);

    let stats = NodeGetVolumeStatsRequest {
        volume_id: "raw".into(),
        volume_path: target.display().to_string(),
        ..Default::default()
    };
    let stats = node.node_get_volume_stats(stats).await.unwrap().into_inner();
    assert_eq!(stats.usage.len(), 1, "bytes only: {stats:?}");
    assert_eq!(stats.usage[0].total, GIB);
    assert!(!stats.volume_condition.unwrap().abnormal);

    let unpublish = NodeUnpublishVolumeRequest { volume_id: "raw".into(), target_path: target.display().to_string() };
    node.node_unpublish_volume(unpublish.clone()).await.unwrap();
    node.node_unpublish_volume(unpublish).await.unwrap();
    assert!(!target.exists(), "the target file goes with the publication");
    let unstage =
        NodeUnstageVolumeRequest { volume_id: "raw".into(), staging_target_path: staging.display().to_string() };
    node.node_unstage_volume(unstage.clone()).await.unwrap();
    node.node_unstage_volume(unstage).await.unwrap();
    assert!(!device.exists() && staging.is_dir());
    let detach = ControllerUnpublishVolumeRequest { volume_id: "raw".into(), node_id: here, ..Default::default() };
    ctl.controller_unpublish_volume(detach).await.unwrap();
    ctl.delete_volume(DeleteVolumeRequest { volume_id: "raw".into(), ..Default::default() }).await.unwrap();
    assert!(!setup.log().contains("panicked"), "{}", setup.log());
}
