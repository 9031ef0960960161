//! Crash injection, in process, on every backend: each operation (create, mount, unmount,
//! remove, and on the block backends resize) is crashed after each of its steps in turn (a panic of the operation's task at the
//! N-th crash point, N = 1, 2, … until the operation completes), the service is dropped and
//! opened again on the same state directory and the same simulated world (files, loop devices,
//! mounts, EC2), and the invariants are checked:
//!
//! - nothing is left half-done: no record keeps an intent;
//! - holders match reality: the volume is staged (mounted) and published (attached) exactly
//!   when it has holders;
//! - what was written before the crash is still there, and nothing is formatted twice;
//! - once nothing holds the volume, nothing of it stays attached or mounted;
//! - Remove is always possible afterwards, and leaves nothing behind;
//! - Create never adopts silently: a volume that exists after a crashed create has the
//!   options the create asked for;
//! - a resize is all or nothing: the recorded size is the old or the new one, and the storage
//!   has exactly the recorded size;
//! - so is a modification (EBS): the recorded throughput is the old or the new one, and EC2's
//!   volume has exactly the recorded one;
//! - and a move (EBS): exactly one volume answers to the name, in the zone the record says;
//!   moved, it is a copy made from a snapshot, and neither the snapshot nor (with
//!   `--delete-source`) the old volume is left.
//!
//! The real-binary suite (`tests/crash_points.rs`) does the same with `kill -9`-like aborts
//! against the kernel.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::VolumeService;
use crate::backend::ebs::fake::{FakeDeviceHost, FakeEc2};
use crate::backend::ebs::identity::Imds;
use crate::backend::ebs::{CloudParts, EbsController};
use crate::backend::{Backend, Environment};
use crate::config::{BackendKind, Integration, ServiceConfig};
use crate::crashpoint::Plan;
use crate::os::fake::{CallKind, FakeOs};
use crate::os::{FsType, Probe};

const INSTANCE: &str = "i-crash";
const AZ: &str = "us-east-1a";
const VOLUME: &str = "v";
const OTHER_AZ: &str = "us-east-1b";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Vfs,
    Loop,
    Ebs,
}

/// Everything that outlives a crash: the state directory and the simulated world.
struct World {
    kind: Kind,
    os: Arc<FakeOs>,
    ec2: Arc<FakeEc2>,
    devices: Arc<FakeDeviceHost>,
    state: tempfile::TempDir,
}

impl World {
    fn new(kind: Kind) -> Self {
        let ec2 = Arc::new(FakeEc2::new());
        ec2.add_instance(INSTANCE, AZ);
        let devices = Arc::new(FakeDeviceHost::new(Arc::clone(&ec2), INSTANCE, "/links"));
        Self { kind, os: Arc::new(FakeOs::new()), ec2, devices, state: tempfile::tempdir().unwrap() }
    }

    fn service_config(&self) -> ServiceConfig {
        let ebs: BTreeMap<String, String> = [
            ("instanceid", INSTANCE),
            ("availabilityzone", AZ),
            ("region", "us-east-1"),
            ("devicelinksdir", "/links"),
            ("statusinitialdelay", "100ms"),
            ("statusmaxattempts", "10"),
            ("statustimeout", "2m"),
        ]
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
        ServiceConfig {
            name: "crash".into(),
            backend: match self.kind {
                Kind::Vfs => BackendKind::Vfs,
                Kind::Loop => BackendKind::Loop,
                Kind::Ebs => BackendKind::Ebs,
            },
            integration: Integration {
                mount_path: "/mnt".into(),
                default_size_gib: 1,
                ..Integration::defaults(Path::new("/var/lib/rexray"))
            },
            vfs_root: "/vfs".into(),
            loop_root: "/loop".into(),
            ebs,
            ebs_origins: BTreeMap::new(),
        }
    }

    /// A new backend over the world, as a restarted daemon builds it.
    fn backend(&self) -> Backend {
        let cloud = Arc::new(CloudParts::with_api(Arc::new(Imds::new("http://127.0.0.1:9", true)), self.ec2.clone()));
        let env = Environment {
            os: self.os.clone(),
            devices: self.devices.clone(),
            host: self.os.clone(),
            ebs: Some(cloud.clone()),
        };
        let service = self.service_config();
        match self.kind {
            Kind::Ebs => Arc::new(EbsController::new(&service, &env, cloud).unwrap()).backend(),
            _ => crate::backend::build(&service, &env).unwrap(),
        }
    }

    async fn open(&self, plan: Option<Plan>) -> Arc<VolumeService> {
        let service = VolumeService::open_crashing(
            "crash",
            self.backend(),
            self.service_config().integration,
            self.state.path().to_path_buf(),
            Some("boot".into()),
            plan,
        )
        .await
        .unwrap();
        Arc::new(service)
    }

    fn staging(&self) -> PathBuf {
        match self.kind {
            Kind::Vfs => PathBuf::from("/vfs/v"),
            _ => PathBuf::from("/mnt/v"),
        }
    }

    /// Whether the volume is mounted (block) on this host.
    fn mounted(&self) -> bool {
        self.kind != Kind::Vfs && self.os.mounted(&self.staging()).is_some()
    }

    /// Whether the volume is attached to this host (loop device or EC2 attachment).
    fn attached(&self) -> bool {
        match self.kind {
            Kind::Vfs => false,
            Kind::Loop => self.os.attached(Path::new("/loop/v.img")).is_some(),
            Kind::Ebs => self.ec2.by_name(VOLUME).iter().any(|v| v.attachment_to(INSTANCE).is_some()),
        }
    }

    /// Whether the storage holds the volume.
    fn exists(&self) -> bool {
        match self.kind {
            Kind::Vfs => self.os.dir_exists(Path::new("/vfs/v")),
            Kind::Loop => self.os.file(Path::new("/loop/v.img")).is_some(),
            Kind::Ebs => !self.ec2.by_name(VOLUME).is_empty(),
        }
    }

    /// The storage's size of the volume in GiB, where the storage has one.
    fn size_gib(&self) -> Option<u64> {
        match self.kind {
            Kind::Vfs => None,
            Kind::Loop => self.os.file(Path::new("/loop/v.img")).map(|b| b >> 30),
            Kind::Ebs => self.ec2.by_name(VOLUME).first().map(|v| v.size_gib),
        }
    }

    /// Writes "data": a file in a vfs volume; for block volumes, the file system itself (made
    /// by the first mount) is the data, and a second format would destroy it.
    fn write_data(&self) {
        if self.kind == Kind::Vfs {
            self.os.add_file("/vfs/v/precious", 7);
        }
    }

    fn data_intact(&self) -> bool {
        match self.kind {
            Kind::Vfs => self.os.file(Path::new("/vfs/v/precious")) == Some(7),
            Kind::Loop => {
                self.os.signature(Path::new("/loop/v.img")) == Probe::Filesystem(FsType::Ext4.as_str().into())
            }
            Kind::Ebs => {
                let Some(v) = self.ec2.by_name(VOLUME).pop() else { return false };
                self.os.signature(&FakeDeviceHost::device_of(&v.id)) == Probe::Filesystem("ext4".into())
            }
        }
    }

    fn formats(&self) -> usize {
        self.os.calls().iter().filter(|c| c.kind() == CallKind::Mkfs).count()
    }
}

/// The operation under test, and what must hold before it runs.
#[derive(Debug, Clone, Copy)]
enum Op {
    Create,
    Mount,
    Unmount,
    Remove,
    /// From 3 to 5 GiB while mounted.
    Resize,
    /// EBS: throughput from 125 to 250 MiB/s while mounted.
    Modify,
    /// EBS: to another zone, deleting the old volume, while unmounted.
    Move,
}

impl Op {
    fn name(self) -> &'static str {
        match self {
            Op::Create => "create",
            Op::Mount => "mount",
            Op::Unmount => "unmount",
            Op::Remove => "remove",
            Op::Resize => "resize",
            Op::Modify => "modify",
            Op::Move => "move",
        }
    }
}

fn size(gib: &str) -> BTreeMap<String, String> {
    BTreeMap::from([("size".to_owned(), gib.to_owned())])
}

/// Brings the world to the state `op` starts from.
async fn prepare(world: &World, op: Op) {
    let s = world.open(None).await;
    if matches!(op, Op::Create) {
        return;
    }
    s.create(VOLUME, &size("3")).await.unwrap();
    s.mount(VOLUME, Some("writer")).await.unwrap();
    world.write_data();
    s.unmount(VOLUME, Some("writer")).await.unwrap();
    if matches!(op, Op::Unmount | Op::Resize | Op::Modify) {
        s.mount(VOLUME, Some("a")).await.unwrap();
    }
}

async fn run(s: &Arc<VolumeService>, op: Op) -> Result<(), crate::service::ServiceError> {
    match op {
        Op::Create => s.create(VOLUME, &size("3")).await,
        Op::Mount => s.mount(VOLUME, Some("a")).await.map(drop),
        Op::Unmount => s.unmount(VOLUME, Some("a")).await,
        Op::Remove => s.remove(VOLUME).await,
        Op::Resize => s.resize(VOLUME, 5).await.map(drop),
        Op::Modify => s.modify(VOLUME, &BTreeMap::from([("throughput".into(), "250".into())])).await.map(drop),
        Op::Move => s.relocate(VOLUME, OTHER_AZ, true).await.map(drop),
    }
}

/// Crashes `op` at crash point `n`; returns whether it crashed (else it ran to the end).
async fn crash_at(world: &World, op: Op, n: u32) -> bool {
    let plan = Plan { op: op.name().into(), n, abort: false };
    let s = world.open(Some(plan)).await;
    let outcome = tokio::spawn(async move { run(&s, op).await }).await;
    match outcome {
        Err(e) if e.is_panic() => true,
        Err(e) => panic!("{op:?}: {e}"),
        Ok(result) => {
            result.unwrap_or_else(|e| panic!("{op:?} failed without a crash: {}", e.chain()));
            false
        }
    }
}

/// The invariants after a restart (see the module documentation).
async fn check_after_restart(world: &World, op: Op, n: u32, formats_before: usize) {
    let at = format!("{:?} {op:?} crashed at point {n}", world.kind);
    let s = world.open(None).await;
    let info = s.get(VOLUME).await;
    if let Ok(info) = &info {
        assert!(!info.status.to_map().contains_key("pending"), "{at}: still pending: {:?}", info.status.value());
        let holders = info.status.value()["holders"].as_u64().unwrap();
        if world.kind != Kind::Vfs {
            assert_eq!(world.mounted(), holders > 0, "{at}: mounted vs {holders} holders");
            assert_eq!(world.attached(), holders > 0, "{at}: attached vs {holders} holders");
        }
        assert_eq!(info.mountpoint.is_some(), holders > 0, "{at}: mountpoint vs {holders} holders");
        assert!(world.exists(), "{at}: a recorded volume's storage is gone");
        if matches!(op, Op::Create) {
            assert_eq!(info.status.value()["options"]["size"], "3", "{at}: the create's options");
            if let Some(gib) = world.size_gib() {
                assert_eq!(gib, 3, "{at}: the storage has the create's size");
            }
        } else if matches!(op, Op::Move) {
            let named = world.ec2.by_name(VOLUME);
            assert_eq!(named.len(), 1, "{at}: one volume answers to the name: {named:?}");
            let zone = info.status.value()["options"]["availabilityZone"].as_str().unwrap_or(AZ).to_owned();
            assert_eq!(named[0].availability_zone, zone, "{at}: the record's zone vs EC2's");
            if zone == AZ {
                assert!(world.data_intact(), "{at}: data written before the crash is gone");
            } else {
                assert!(named[0].snapshot_id.is_some(), "{at}: the moved copy is made from a snapshot");
                assert!(world.ec2.snapshots().is_empty(), "{at}: the move's snapshot is left");
                assert_eq!(world.ec2.volumes().len(), 1, "{at}: the old volume is left despite --delete-source");
            }
        } else {
            assert!(world.data_intact(), "{at}: data written before the crash is gone");
        }
        if matches!(op, Op::Resize) {
            let recorded = info.status.value()["options"]["size"].as_str().unwrap_or_default().to_owned();
            assert!(recorded == "3" || recorded == "5", "{at}: recorded size {recorded}");
            assert_eq!(world.size_gib().map(|g| g.to_string()), Some(recorded), "{at}: storage vs record");
        }
        if matches!(op, Op::Modify) {
            let recorded = info.status.value()["options"]["throughput"].as_str().map(str::to_owned);
            let actual = world.ec2.by_name(VOLUME).first().and_then(|v| v.throughput);
            match recorded.as_deref() {
                Some("250") => assert_eq!(actual, Some(250), "{at}: EC2 vs the recorded 250 MiB/s"),
                None => assert_ne!(actual, Some(250), "{at}: EC2 modified, the record not"),
                other => panic!("{at}: recorded throughput {other:?}"),
            }
        }
        // Whoever held it lets go: nothing of it stays attached or mounted.
        for id in ["a", "writer"] {
            s.unmount(VOLUME, Some(id)).await.unwrap_or_else(|e| panic!("{at}: unmount: {}", e.chain()));
        }
        assert!(!world.mounted() && !world.attached(), "{at}: left attached or mounted after the last unmount");
    } else {
        assert!(info.unwrap_err().is_not_found(), "{at}");
        assert!(matches!(op, Op::Create | Op::Remove), "{at}: the volume vanished");
        assert!(!world.attached() && !world.mounted(), "{at}: an unrecorded volume is attached or mounted");
        if matches!(op, Op::Create) && world.kind != Kind::Ebs {
            assert!(!world.exists(), "{at}: storage without a record");
        }
    }
    if world.kind != Kind::Vfs && !matches!(op, Op::Create) {
        assert_eq!(world.formats(), formats_before, "{at}: formatted again");
    }
    // Remove is always possible, and leaves nothing.
    s.remove(VOLUME).await.unwrap_or_else(|e| panic!("{at}: remove: {}", e.chain()));
    assert!(s.get(VOLUME).await.unwrap_err().is_not_found(), "{at}: still listed after remove");
    assert!(!world.exists(), "{at}: storage left after remove");
    if matches!(op, Op::Move) {
        assert!(world.ec2.volumes().is_empty(), "{at}: volumes left: {:?}", world.ec2.volumes());
        assert!(world.ec2.snapshots().is_empty(), "{at}: snapshots left: {:?}", world.ec2.snapshots());
    }
    // The name is free for a new volume, which gets its own options, never the old ones.
    s.create(VOLUME, &size("5")).await.unwrap_or_else(|e| panic!("{at}: create again: {}", e.chain()));
    if let Some(gib) = world.size_gib() {
        assert_eq!(gib, 5, "{at}: a new create adopted old storage");
    }
    s.remove(VOLUME).await.unwrap();
}

/// Every crash point of every operation on `kind`.
async fn every_step_of_every_operation(kind: Kind) {
    let resize = (kind != Kind::Vfs).then_some(Op::Resize);
    let ebs_only = if kind == Kind::Ebs { vec![Op::Modify, Op::Move] } else { Vec::new() };
    for op in [Op::Create, Op::Mount, Op::Unmount, Op::Remove].into_iter().chain(resize).chain(ebs_only) {
        let mut crashed = 0;
        for n in 1.. {
            assert!(n < 40, "{kind:?} {op:?}: no end in sight");
            let world = World::new(kind);
            prepare(&world, op).await;
            let formats_before = world.formats();
            if !crash_at(&world, op, n).await {
                break;
            }
            crashed += 1;
            check_after_restart(&world, op, n, formats_before).await;
        }
        assert!(crashed >= 2, "{kind:?} {op:?}: only {crashed} crash points");
    }
}

#[tokio::test]
async fn vfs_survives_a_crash_at_every_step() {
    every_step_of_every_operation(Kind::Vfs).await;
}

#[tokio::test]
async fn loop_survives_a_crash_at_every_step() {
    every_step_of_every_operation(Kind::Loop).await;
}

#[tokio::test(start_paused = true)]
async fn ebs_survives_a_crash_at_every_step() {
    every_step_of_every_operation(Kind::Ebs).await;
}

/// The orchestrator's calls (CSI) in the order it makes them, and their undo in reverse.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Step {
    PublishToNode,
    Stage,
    PublishToTarget,
    UnpublishFromTarget,
    Unstage,
    UnpublishFromNode,
}

const STEPS: [Step; 6] = [
    Step::PublishToNode,
    Step::Stage,
    Step::PublishToTarget,
    Step::UnpublishFromTarget,
    Step::Unstage,
    Step::UnpublishFromNode,
];

const CSI_STAGING: &str = "/csi/staging";
const CSI_TARGET: &str = "/csi/pod/target";

impl Step {
    fn op(self) -> &'static str {
        match self {
            Step::PublishToNode => "ControllerPublishVolume",
            Step::Stage => "NodeStageVolume",
            Step::PublishToTarget => "NodePublishVolume",
            Step::UnpublishFromTarget => "NodeUnpublishVolume",
            Step::Unstage => "NodeUnstageVolume",
            Step::UnpublishFromNode => "ControllerUnpublishVolume",
        }
    }

    /// Runs the step; `block`: for raw block access.
    async fn run(self, s: &Arc<VolumeService>, block: bool) -> Result<(), crate::service::ServiceError> {
        let node = s.backend().controller.local_node().await.unwrap().0;
        match self {
            Step::PublishToNode => s.publish_to_node(VOLUME, &node).await.map(drop),
            Step::Stage => {
                let ctx = s.record_of(VOLUME).await?.csi.nodes[&node].clone();
                let how = crate::service::StageRequest { block, ..Default::default() };
                s.stage_on_node(VOLUME, ctx, CSI_STAGING.into(), how).await
            }
            Step::PublishToTarget => {
                s.publish_on_node(VOLUME, CSI_STAGING.into(), CSI_TARGET.into(), false, block).await
            }
            Step::UnpublishFromTarget => s.unpublish_on_node(VOLUME, CSI_TARGET.into()).await,
            Step::Unstage => s.unstage_on_node(VOLUME, CSI_STAGING.into()).await,
            Step::UnpublishFromNode => s.unpublish_from_node(VOLUME, &node).await,
        }
    }
}

/// Every orchestrator call crashed at each of its steps: after the restart the orchestrator's
/// retry of the same call succeeds, the rest of the sequence runs, and at the end nothing of the
/// volume is attached or mounted, its data is intact and it was formatted once. `block`: the
/// volume is staged and published for raw block access.
async fn every_step_of_every_orchestrator_call(kind: Kind, block: bool) {
    for (i, step) in STEPS.iter().copied().enumerate() {
        let mut crashed = 0;
        for n in 1.. {
            assert!(n < 40, "{kind:?} {step:?}: no end in sight");
            let world = World::new(kind);
            world.os.add_dir(CSI_STAGING);
            world.os.add_dir("/csi/pod");
            prepare(&world, Op::Mount).await;
            let formats_before = world.formats();
            {
                let s = world.open(None).await;
                for before in &STEPS[..i] {
                    before.run(&s, block).await.unwrap_or_else(|e| panic!("{step:?}: {before:?}: {}", e.chain()));
                }
            }
            let plan = Plan { op: step.op().into(), n, abort: false };
            let s = world.open(Some(plan)).await;
            let outcome = tokio::spawn(async move { step.run(&s, block).await }).await;
            let at = format!("{kind:?} {step:?} (block: {block}) crashed at point {n}");
            match outcome {
                Err(e) if e.is_panic() => crashed += 1,
                Err(e) => panic!("{at}: {e}"),
                Ok(result) => {
                    result.unwrap_or_else(|e| panic!("{step:?} failed without a crash: {}", e.chain()));
                    break;
                }
            }
            let s = world.open(None).await;
            for rest in &STEPS[i..] {
                rest.run(&s, block).await.unwrap_or_else(|e| panic!("{at}: {rest:?} after the restart: {}", e.chain()));
            }
            assert!(!world.attached(), "{at}: attached after the orchestrator's undo");
            assert!(world.os.mounted(Path::new(CSI_STAGING)).is_none(), "{at}: staging left mounted");
            let device_file = Path::new(CSI_STAGING).join(crate::backend::BLOCK_FILE);
            assert!(world.os.mounted(&device_file).is_none(), "{at}: device left bound");
            assert!(world.os.mounted(Path::new(CSI_TARGET)).is_none(), "{at}: target left mounted");
            assert!(s.record_of(VOLUME).await.unwrap().csi.is_empty(), "{at}: claims left");
            assert!(world.data_intact(), "{at}: data written before the crash is gone");
            assert_eq!(world.formats(), formats_before, "{at}: formatted again");
            s.remove(VOLUME).await.unwrap_or_else(|e| panic!("{at}: remove: {}", e.chain()));
            assert!(!world.exists(), "{at}: storage left after remove");
        }
        assert!(crashed >= 1, "{kind:?} {step:?}: no crash points");
    }
}

#[tokio::test]
async fn loop_orchestrator_calls_survive_a_crash_at_every_step() {
    every_step_of_every_orchestrator_call(Kind::Loop, false).await;
}

#[tokio::test]
async fn loop_raw_block_orchestrator_calls_survive_a_crash_at_every_step() {
    every_step_of_every_orchestrator_call(Kind::Loop, true).await;
}

#[tokio::test(start_paused = true)]
async fn ebs_orchestrator_calls_survive_a_crash_at_every_step() {
    every_step_of_every_orchestrator_call(Kind::Ebs, false).await;
}

#[tokio::test(start_paused = true)]
async fn ebs_raw_block_orchestrator_calls_survive_a_crash_at_every_step() {
    every_step_of_every_orchestrator_call(Kind::Ebs, true).await;
}
