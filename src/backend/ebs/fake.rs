//! An in-process EC2 for tests: [`FakeEc2`] (volumes, instances and their state machine) and
//! [`FakeDeviceHost`] (the NVMe links an instance would see).
//!
//! Unlike moto, the fake behaves like EC2 where the backend's logic depends on it: volumes stay
//! `creating` and attachments `attaching`/`detaching` for a set number of polls (or forever) or
//! for a set time on tokio's clock (an attachment can also fail after that time),
//! AttachVolume refuses an attached volume (`VolumeInUse`), a volume in another AZ
//! (`InvalidVolume.ZoneMismatch`) and a device name in use; CreateVolume honours the client
//! token (`IdempotentParameterMismatch`); a KMS key can be marked bad so its volumes vanish right
//! after CreateVolume; snapshots stay `pending` for a set number of polls (or end in `error`),
//! CreateVolume needs a `completed` snapshot and CopySnapshot reads its source from the fake of
//! the source region; and any call can be throttled (`RequestLimitExceeded`) or failed on cue.
//! Every call is recorded, so tests count EC2 calls.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::time::Instant;

use async_trait::async_trait;

use super::api::{
    AttachState, CloudError, CopySnapshotRequest, CreateSnapshotRequest, CreateVolumeRequest, Ec2Api, Instance,
    InstanceTypeLimits, ModificationState, ModifyVolumeRequest, Snapshot, SnapshotPage, SnapshotQuery, SnapshotState,
    Volume, VolumeAttachment, VolumeModification, VolumePage, VolumeQuery, VolumeState,
};
use crate::os::DeviceHost;

/// The EC2 operations, for counting and fault injection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Op {
    /// CreateVolume.
    CreateVolume,
    /// DescribeVolumes (one page).
    DescribeVolumes,
    /// AttachVolume.
    AttachVolume,
    /// DetachVolume.
    DetachVolume,
    /// DeleteVolume.
    DeleteVolume,
    /// CreateTags.
    CreateTags,
    /// DescribeInstances.
    DescribeInstances,
    /// DescribeInstanceTypes.
    DescribeInstanceTypes,
    /// CreateSnapshot.
    CreateSnapshot,
    /// DescribeSnapshots (one page).
    DescribeSnapshots,
    /// DeleteSnapshot.
    DeleteSnapshot,
    /// CopySnapshot.
    CopySnapshot,
    /// ModifyVolume.
    ModifyVolume,
    /// DescribeVolumesModifications.
    DescribeModification,
}

/// One recorded call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ec2Call {
    /// CreateVolume with this Name tag and client token.
    CreateVolume {
        /// The Name tag.
        name: Option<String>,
        /// The client token.
        token: String,
    },
    /// DescribeVolumes.
    DescribeVolumes(VolumeQuery),
    /// AttachVolume.
    AttachVolume {
        /// Volume.
        volume: String,
        /// Instance.
        instance: String,
        /// Device name.
        device: String,
    },
    /// DetachVolume.
    DetachVolume {
        /// Volume.
        volume: String,
        /// Instance.
        instance: String,
        /// Forced.
        force: bool,
    },
    /// DeleteVolume.
    DeleteVolume(String),
    /// CreateTags.
    CreateTags(String, BTreeMap<String, String>),
    /// DescribeInstances.
    DescribeInstances(String),
    /// DescribeInstanceTypes of one type.
    DescribeInstanceTypes(String),
    /// CreateSnapshot.
    CreateSnapshot(CreateSnapshotRequest),
    /// DescribeSnapshots.
    DescribeSnapshots(SnapshotQuery),
    /// DeleteSnapshot.
    DeleteSnapshot(String),
    /// CopySnapshot.
    CopySnapshot(CopySnapshotRequest),
    /// ModifyVolume.
    ModifyVolume(ModifyVolumeRequest),
    /// DescribeVolumesModifications of one volume.
    DescribeModification(String),
}

impl Ec2Call {
    /// The operation.
    pub fn op(&self) -> Op {
        match self {
            Ec2Call::CreateVolume { .. } => Op::CreateVolume,
            Ec2Call::DescribeVolumes(_) => Op::DescribeVolumes,
            Ec2Call::AttachVolume { .. } => Op::AttachVolume,
            Ec2Call::DetachVolume { .. } => Op::DetachVolume,
            Ec2Call::DeleteVolume(_) => Op::DeleteVolume,
            Ec2Call::CreateTags(..) => Op::CreateTags,
            Ec2Call::DescribeInstances(_) => Op::DescribeInstances,
            Ec2Call::DescribeInstanceTypes(_) => Op::DescribeInstanceTypes,
            Ec2Call::CreateSnapshot(_) => Op::CreateSnapshot,
            Ec2Call::DescribeSnapshots(_) => Op::DescribeSnapshots,
            Ec2Call::DeleteSnapshot(_) => Op::DeleteSnapshot,
            Ec2Call::CopySnapshot(_) => Op::CopySnapshot,
            Ec2Call::ModifyVolume(_) => Op::ModifyVolume,
            Ec2Call::DescribeModification(_) => Op::DescribeModification,
        }
    }
}

#[derive(Debug, Clone)]
struct FakeVolume {
    volume: Volume,
    /// Polls left in `creating`.
    creating: u32,
    /// Polls left in `attaching` (per instance).
    attaching: BTreeMap<String, u32>,
    /// Polls left in `detaching` (per instance).
    detaching: BTreeMap<String, u32>,
    /// Vanishes at the first describe (bad KMS key).
    vanish: bool,
    /// Transitions due at a time (per instance).
    timed: BTreeMap<String, (Instant, Timed)>,
    /// The latest modification and the looks it still stays `modifying` for.
    modification: Option<(VolumeModification, u32)>,
}

/// A transition at a time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Timed {
    /// `attaching` → `attached`.
    Attach,
    /// `attaching` → gone (EC2 gave up on the attachment).
    FailAttach,
    /// `detaching` → gone.
    Detach,
}

#[derive(Debug, Clone)]
struct FakeSnapshot {
    snapshot: Snapshot,
    /// Polls left in `pending`.
    pending: u32,
    /// Ends in `error` instead of `completed`.
    fails: bool,
}

#[derive(Debug, Clone)]
struct FakeInstance {
    az: String,
    devices: BTreeSet<String>,
    instance_type: String,
    network_interfaces: u32,
}

#[derive(Debug, Default)]
struct World {
    volumes: BTreeMap<String, FakeVolume>,
    instances: BTreeMap<String, FakeInstance>,
    next_id: u64,
    calls: Vec<Ec2Call>,
    failures: Vec<(Op, CloudError)>,
    throttled: BTreeMap<Op, u32>,
    create_polls: u32,
    attach_polls: u32,
    detach_polls: u32,
    stuck_attaching: bool,
    page_size: usize,
    bad_kms_keys: BTreeSet<String>,
    /// Client token → (request without token, volume as created).
    tokens: BTreeMap<String, (CreateVolumeRequest, Volume)>,
    snapshots: BTreeMap<String, FakeSnapshot>,
    snapshot_polls: u32,
    failing_snapshots: bool,
    /// Every call fails as if the endpoint refused connections.
    unreachable: bool,
    /// New attachments complete (or, with `attach_fails`, fail) after this long.
    attach_time: Option<Duration>,
    attach_fails: bool,
    /// Detaches complete after this long.
    detach_time: Option<Duration>,
    /// Modifications stay `modifying` for this many DescribeVolumesModifications of them.
    modify_polls: u32,
    /// Other regions' fakes, for CopySnapshot's SourceRegion.
    peers: BTreeMap<String, Arc<FakeEc2>>,
}

/// An in-process EC2; see the module documentation.
#[derive(Debug)]
pub struct FakeEc2 {
    world: Mutex<World>,
}

impl Default for FakeEc2 {
    fn default() -> Self {
        Self::new()
    }
}

fn err(code: &str, message: impl Into<String>) -> CloudError {
    CloudError::from_code(code, &message.into(), Some(400))
}

fn glob_match(pattern: &str, value: &str) -> bool {
    // EC2 filter values: `*` any run, `?` one char, `\` escapes.
    fn go(p: &[char], v: &[char]) -> bool {
        match p.split_first() {
            None => v.is_empty(),
            Some(('\\', rest)) => match (rest.split_first(), v.split_first()) {
                (Some((c, prest)), Some((d, vrest))) => c == d && go(prest, vrest),
                _ => false,
            },
            Some(('*', rest)) => (0..=v.len()).any(|i| go(rest, &v[i..])),
            Some(('?', rest)) => !v.is_empty() && go(rest, &v[1..]),
            Some((c, rest)) => v.first() == Some(c) && go(rest, &v[1..]),
        }
    }
    go(&pattern.chars().collect::<Vec<_>>(), &value.chars().collect::<Vec<_>>())
}

fn matches_filter(v: &Volume, name: &str, values: &[String]) -> bool {
    let any = |candidates: Vec<&str>| candidates.iter().any(|c| values.iter().any(|p| glob_match(p, c)));
    if let Some(key) = name.strip_prefix("tag:") {
        return v.tags.get(key).is_some_and(|val| any(vec![val.as_str()]));
    }
    match name {
        "tag-key" => any(v.tags.keys().map(String::as_str).collect()),
        "volume-id" => any(vec![v.id.as_str()]),
        "availability-zone" => any(vec![v.availability_zone.as_str()]),
        "status" => any(vec![v.state.as_str()]),
        "attachment.instance-id" => any(v.live_attachments().map(|a| a.instance_id.as_str()).collect()),
        "volume-type" => any(vec![v.volume_type.as_str()]),
        _ => false,
    }
}

fn matches_snapshot_filter(s: &Snapshot, name: &str, values: &[String]) -> bool {
    let any = |candidate: &str| values.iter().any(|p| glob_match(p, candidate));
    if let Some(key) = name.strip_prefix("tag:") {
        return s.tags.get(key).is_some_and(|val| any(val));
    }
    match name {
        "snapshot-id" => any(&s.id),
        "volume-id" => any(&s.volume_id),
        "status" => any(s.state.as_str()),
        "owner-id" => s.owner_id.as_deref().is_some_and(any),
        _ => false,
    }
}

/// The account the fake's snapshots belong to.
pub const FAKE_ACCOUNT: &str = "123456789012";

impl FakeEc2 {
    /// An empty EC2: no instances or volumes, every transition immediate, pages of 1000.
    pub fn new() -> Self {
        Self { world: Mutex::new(World { page_size: 1000, ..World::default() }) }
    }

    fn world(&self) -> MutexGuard<'_, World> {
        let mut w = self.world.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        Self::settle(&mut w);
        w
    }

    /// Applies the timed transitions that are due.
    fn settle(w: &mut World) {
        let now = Instant::now();
        let mut freed = Vec::new();
        for fv in w.volumes.values_mut() {
            let due: Vec<(String, Timed)> =
                fv.timed.iter().filter(|(_, (at, _))| *at <= now).map(|(i, (_, t))| (i.clone(), *t)).collect();
            for (inst, change) in due {
                fv.timed.remove(&inst);
                match change {
                    Timed::Attach => {
                        for a in fv.volume.attachments.iter_mut().filter(|a| a.instance_id == inst) {
                            a.state = AttachState::Attached;
                        }
                    }
                    Timed::FailAttach | Timed::Detach => {
                        if change == Timed::FailAttach {
                            let device = fv.volume.attachment_to(&inst).map(|a| a.device.clone());
                            freed.extend(device.map(|d| (inst.clone(), d)));
                        }
                        fv.volume.attachments.retain(|a| a.instance_id != inst);
                        if fv.volume.attachments.is_empty() {
                            fv.volume.state = VolumeState::Available;
                        }
                    }
                }
            }
        }
        for (inst, device) in freed {
            if let Some(i) = w.instances.get_mut(&inst) {
                i.devices.remove(&device);
            }
        }
    }

    /// Records the call, then applies an injected throttle or failure.
    fn enter(&self, call: Ec2Call) -> Result<MutexGuard<'_, World>, CloudError> {
        let mut w = self.world();
        let op = call.op();
        w.calls.push(call);
        if w.unreachable {
            return Err(CloudError::transient("connection refused (127.0.0.1:9)"));
        }
        if let Some(n) = w.throttled.get_mut(&op) {
            if *n > 0 {
                *n -= 1;
                return Err(CloudError::from_code("RequestLimitExceeded", "Request limit exceeded.", Some(503)));
            }
        }
        if let Some(i) = w.failures.iter().position(|(o, _)| *o == op) {
            return Err(w.failures.remove(i).1);
        }
        Ok(w)
    }

    // ---- set-up ----

    /// Adds a running instance in `az` with its root device `/dev/sda1` mapped.
    pub fn add_instance(&self, id: &str, az: &str) {
        self.world().instances.insert(
            id.to_owned(),
            FakeInstance {
                az: az.to_owned(),
                devices: BTreeSet::from(["/dev/sda1".to_owned()]),
                instance_type: "m5.large".to_owned(),
                network_interfaces: 1,
            },
        );
    }

    /// Makes instance `id` (added before) of `instance_type` with `network_interfaces`.
    pub fn set_instance_shape(&self, id: &str, instance_type: &str, network_interfaces: u32) {
        if let Some(instance) = self.world().instances.get_mut(id) {
            instance.instance_type = instance_type.to_owned();
            instance.network_interfaces = network_interfaces;
        }
    }

    /// Adds an available volume with these tags; returns its ID.
    pub fn add_volume(&self, az: &str, size_gib: u64, tags: &[(&str, &str)]) -> String {
        let mut w = self.world();
        let id = Self::next_id(&mut w);
        let volume = Volume {
            id: id.clone(),
            size_gib,
            volume_type: "gp3".into(),
            iops: Some(3000),
            throughput: Some(125),
            availability_zone: az.to_owned(),
            state: VolumeState::Available,
            encrypted: false,
            kms_key_id: None,
            snapshot_id: None,
            tags: tags.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect(),
            attachments: Vec::new(),
            create_time: Some("2026-11-01T00:00:00Z".into()),
        };
        let fv = FakeVolume {
            volume,
            creating: 0,
            attaching: BTreeMap::new(),
            detaching: BTreeMap::new(),
            vanish: false,
            timed: BTreeMap::new(),
            modification: None,
        };
        w.volumes.insert(id.clone(), fv);
        id
    }

    /// Attaches `volume` to `instance` as `device`, done (not recorded).
    pub fn attach_existing(&self, volume: &str, instance: &str, device: &str) {
        let mut w = self.world();
        if let Some(i) = w.instances.get_mut(instance) {
            i.devices.insert(device.to_owned());
        }
        let v = &mut w.volumes.get_mut(volume).expect("known volume").volume;
        v.attachments.push(VolumeAttachment {
            instance_id: instance.to_owned(),
            device: device.to_owned(),
            state: AttachState::Attached,
        });
        v.state = VolumeState::InUse;
    }

    /// New volumes stay `creating` for `n` describes of them.
    pub fn set_create_polls(&self, n: u32) {
        self.world().create_polls = n;
    }

    /// New attachments stay `attaching` for `n` describes of their volume.
    pub fn set_attach_polls(&self, n: u32) {
        self.world().attach_polls = n;
    }

    /// Detaches stay `detaching` for `n` describes of their volume.
    pub fn set_detach_polls(&self, n: u32) {
        self.world().detach_polls = n;
    }

    /// New attachments stay `attaching` for `d` on tokio's clock, then are `attached` (or, with
    /// `fails`, gone again); `None` goes back to counting polls.
    pub fn set_attach_time(&self, d: Option<Duration>, fails: bool) {
        let mut w = self.world();
        w.attach_time = d;
        w.attach_fails = fails;
    }

    /// Detaches stay `detaching` for `d` on tokio's clock; `None` goes back to counting polls.
    pub fn set_detach_time(&self, d: Option<Duration>) {
        self.world().detach_time = d;
    }

    /// Modifications stay `modifying` for `n` DescribeVolumesModifications of them (then
    /// `optimizing` with the new size, then `completed`).
    pub fn set_modify_polls(&self, n: u32) {
        self.world().modify_polls = n;
    }

    /// New attachments never leave `attaching`.
    pub fn set_stuck_attaching(&self, stuck: bool) {
        self.world().stuck_attaching = stuck;
    }

    /// DescribeVolumes pages hold at most `n` volumes.
    pub fn set_page_size(&self, n: usize) {
        self.world().page_size = n.max(1);
    }

    /// Volumes created with this KMS key vanish right after CreateVolume.
    pub fn add_bad_kms_key(&self, key: &str) {
        self.world().bad_kms_keys.insert(key.to_owned());
    }

    /// New snapshots stay `pending` for `n` describes of them.
    pub fn set_snapshot_polls(&self, n: u32) {
        self.world().snapshot_polls = n;
    }

    /// New snapshots end in `error`.
    pub fn set_failing_snapshots(&self, failing: bool) {
        self.world().failing_snapshots = failing;
    }

    /// Adds a completed snapshot owned by `owner` with these tags; returns its ID.
    pub fn add_snapshot(&self, volume_id: &str, size_gib: u64, owner: &str, tags: &[(&str, &str)]) -> String {
        let mut w = self.world();
        let id = Self::next_snapshot_id(&mut w);
        let snapshot = Snapshot {
            id: id.clone(),
            volume_id: volume_id.to_owned(),
            state: SnapshotState::Completed,
            progress: Some("100%".into()),
            size_gib,
            description: String::new(),
            encrypted: false,
            owner_id: Some(owner.to_owned()),
            start_time: Some("2026-11-01T00:00:00Z".into()),
            tags: tags.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect(),
        };
        w.snapshots.insert(id.clone(), FakeSnapshot { snapshot, pending: 0, fails: false });
        id
    }

    /// Makes `peer` the EC2 of `region`, for CopySnapshot's SourceRegion.
    pub fn add_peer(&self, region: &str, peer: Arc<FakeEc2>) {
        self.world().peers.insert(region.to_owned(), peer);
    }

    /// A snapshot as it is now (no transition).
    pub fn snapshot(&self, id: &str) -> Option<Snapshot> {
        self.world().snapshots.get(id).map(|s| s.snapshot.clone())
    }

    /// Every snapshot.
    pub fn snapshots(&self) -> Vec<Snapshot> {
        self.world().snapshots.values().map(|s| s.snapshot.clone()).collect()
    }

    /// The next `n` calls of `op` fail with `RequestLimitExceeded`.
    pub fn throttle(&self, op: Op, n: u32) {
        self.world().throttled.insert(op, n);
    }

    /// From now on every call fails (or, with `false`, none does) as if the endpoint refused
    /// connections.
    pub fn set_unreachable(&self, unreachable: bool) {
        self.world().unreachable = unreachable;
    }

    /// The next call of `op` fails with `error`. Several queue up in order.
    pub fn fail_next(&self, op: Op, error: CloudError) {
        self.world().failures.push((op, error));
    }

    // ---- inspection ----

    /// Every call so far.
    pub fn calls(&self) -> Vec<Ec2Call> {
        self.world().calls.clone()
    }

    /// Every call so far, forgetting them.
    pub fn take_calls(&self) -> Vec<Ec2Call> {
        std::mem::take(&mut self.world().calls)
    }

    /// How many calls of `op` so far.
    pub fn count(&self, op: Op) -> usize {
        self.world().calls.iter().filter(|c| c.op() == op).count()
    }

    /// A volume as it is now (no transition).
    pub fn volume(&self, id: &str) -> Option<Volume> {
        self.world().volumes.get(id).map(|v| v.volume.clone())
    }

    /// Every volume.
    pub fn volumes(&self) -> Vec<Volume> {
        self.world().volumes.values().map(|v| v.volume.clone()).collect()
    }

    /// Volumes whose Name tag is `name`.
    pub fn by_name(&self, name: &str) -> Vec<Volume> {
        self.volumes().into_iter().filter(|v| v.name_tag() == Some(name)).collect()
    }

    /// Device names mapped on `instance`.
    pub fn instance_devices(&self, instance: &str) -> Vec<String> {
        self.world().instances.get(instance).map(|i| i.devices.iter().cloned().collect()).unwrap_or_default()
    }

    fn next_id(w: &mut World) -> String {
        w.next_id += 1;
        format!("vol-{:017x}", 0xa000 + w.next_id)
    }

    fn next_snapshot_id(w: &mut World) -> String {
        w.next_id += 1;
        format!("snap-{:017x}", 0x5000 + w.next_id)
    }

    /// A new pending snapshot (or a completed one when snapshots complete at once).
    fn start_snapshot(w: &mut World, mut snapshot: Snapshot) -> Snapshot {
        let pending = w.snapshot_polls;
        snapshot.id = Self::next_snapshot_id(w);
        snapshot.state = SnapshotState::Pending;
        snapshot.progress = Some("0%".into());
        snapshot.owner_id = Some(FAKE_ACCOUNT.into());
        snapshot.start_time = Some(format!("2026-11-25T00:00:{:02}Z", w.next_id % 60));
        let answer = snapshot.clone();
        let fails = w.failing_snapshots;
        let mut fake = FakeSnapshot { snapshot, pending, fails };
        if pending == 0 {
            Self::finish_snapshot(&mut fake);
        }
        w.snapshots.insert(answer.id.clone(), fake);
        answer
    }

    fn finish_snapshot(fake: &mut FakeSnapshot) {
        if fake.fails {
            fake.snapshot.state = SnapshotState::Error;
        } else {
            fake.snapshot.state = SnapshotState::Completed;
            fake.snapshot.progress = Some("100%".into());
        }
    }

    /// Advances snapshot `id` one observation.
    fn observe_snapshot(w: &mut World, id: &str) {
        let Some(fake) = w.snapshots.get_mut(id) else { return };
        if fake.pending > 0 {
            fake.pending -= 1;
            if fake.pending == 0 {
                Self::finish_snapshot(fake);
            } else {
                fake.snapshot.progress = Some("50%".into());
            }
        }
    }

    /// Advances `id` one observation along its transitions.
    fn observe(w: &mut World, id: &str) {
        let stuck = w.stuck_attaching;
        let Some(fv) = w.volumes.get_mut(id) else { return };
        if fv.creating > 0 {
            fv.creating -= 1;
            if fv.creating == 0 {
                fv.volume.state = VolumeState::Available;
            }
        }
        let mut done_attaching = Vec::new();
        for (inst, left) in &mut fv.attaching {
            if !stuck {
                *left = left.saturating_sub(1);
                if *left == 0 {
                    done_attaching.push(inst.clone());
                }
            }
        }
        for inst in done_attaching {
            fv.attaching.remove(&inst);
            for a in fv.volume.attachments.iter_mut().filter(|a| a.instance_id == inst) {
                a.state = AttachState::Attached;
            }
        }
        let mut done_detaching = Vec::new();
        for (inst, left) in &mut fv.detaching {
            *left = left.saturating_sub(1);
            if *left == 0 {
                done_detaching.push(inst.clone());
            }
        }
        for inst in done_detaching {
            fv.detaching.remove(&inst);
            fv.volume.attachments.retain(|a| a.instance_id != inst);
        }
        if fv.volume.state == VolumeState::InUse && fv.volume.attachments.is_empty() {
            fv.volume.state = VolumeState::Available;
        }
    }

    /// The volume as a modification leaves it (from `optimizing` on).
    fn apply_modification(v: &mut Volume, m: &VolumeModification) {
        v.size_gib = m.target_size_gib.unwrap_or(v.size_gib);
        v.volume_type = m.target_type.clone().unwrap_or_else(|| v.volume_type.clone());
        v.iops = m.target_iops.or(v.iops);
        v.throughput = m.target_throughput.or(v.throughput);
    }

    fn remove_attachment(w: &mut World, volume: &str, instance: &str) {
        let device = w
            .volumes
            .get(volume)
            .and_then(|fv| fv.volume.attachments.iter().find(|a| a.instance_id == instance))
            .map(|a| a.device.clone());
        if let (Some(device), Some(inst)) = (device, w.instances.get_mut(instance)) {
            inst.devices.remove(&device);
        }
    }
}

#[async_trait]
impl Ec2Api for FakeEc2 {
    async fn create_volume(&self, req: &CreateVolumeRequest) -> Result<Volume, CloudError> {
        let mut w =
            self.enter(Ec2Call::CreateVolume { name: req.tags.get("Name").cloned(), token: req.client_token.clone() })?;
        let mut params = req.clone();
        params.client_token = String::new();
        if let Some((earlier, volume)) = w.tokens.get(&req.client_token) {
            if *earlier != params {
                return Err(err(
                    "IdempotentParameterMismatch",
                    "The client token you have provided is associated with a resource that is already deleted. Please use a different client token.",
                ));
            }
            // EC2 answers with the volume the token made, even when it is gone since.
            return Ok(volume.clone());
        }
        if req.availability_zone.is_empty() {
            return Err(err("MissingParameter", "The request must contain the parameter AvailabilityZone"));
        }
        let snapshot_size = match &req.snapshot_id {
            Some(snap) => match w.snapshots.get(snap) {
                Some(s) if s.snapshot.state == SnapshotState::Completed => Some(s.snapshot.size_gib),
                Some(s) => {
                    return Err(err(
                        "IncorrectState",
                        format!("Snapshot is in invalid state - {}", s.snapshot.state.as_str()),
                    ))
                }
                None => return Err(err("InvalidSnapshot.NotFound", format!("The snapshot '{snap}' does not exist."))),
            },
            None => None,
        };
        if let (Some(size), Some(min)) = (req.size_gib, snapshot_size) {
            if size < min {
                return Err(err(
                    "InvalidParameterValue",
                    format!("Volume of {size}GiB is too small; minimum is {min}GiB."),
                ));
            }
        }
        let id = Self::next_id(&mut w);
        let creating = w.create_polls;
        let vanish = req.kms_key_id.as_ref().is_some_and(|k| w.bad_kms_keys.contains(k));
        let volume = Volume {
            id: id.clone(),
            size_gib: req.size_gib.or(snapshot_size).unwrap_or(8),
            volume_type: req.volume_type.clone(),
            iops: req.iops.or((req.volume_type == "gp3").then_some(3000)),
            throughput: req.throughput.or((req.volume_type == "gp3").then_some(125)),
            availability_zone: req.availability_zone.clone(),
            state: if creating > 0 { VolumeState::Creating } else { VolumeState::Available },
            encrypted: req.encrypted || req.kms_key_id.is_some(),
            kms_key_id: req.kms_key_id.clone(),
            snapshot_id: req.snapshot_id.clone(),
            tags: req.tags.clone(),
            attachments: Vec::new(),
            create_time: Some("2026-11-25T00:00:00Z".into()),
        };
        let mut answer = volume.clone();
        answer.state = VolumeState::Creating;
        w.tokens.insert(req.client_token.clone(), (params, answer.clone()));
        w.volumes.insert(
            id,
            FakeVolume {
                volume,
                creating,
                attaching: BTreeMap::new(),
                detaching: BTreeMap::new(),
                vanish,
                timed: BTreeMap::new(),
                modification: None,
            },
        );
        Ok(answer)
    }

    async fn describe_volumes(&self, query: &VolumeQuery) -> Result<VolumePage, CloudError> {
        let mut w = self.enter(Ec2Call::DescribeVolumes(query.clone()))?;
        // Vanishing volumes are gone by the first look.
        w.volumes.retain(|_, v| !v.vanish);
        for id in &query.ids {
            if !w.volumes.contains_key(id) {
                return Err(err("InvalidVolume.NotFound", format!("The volume '{id}' does not exist.")));
            }
        }
        let ids: Vec<String> = w
            .volumes
            .values()
            .filter(|fv| query.ids.is_empty() || query.ids.contains(&fv.volume.id))
            .filter(|fv| query.filters.iter().all(|(n, vals)| matches_filter(&fv.volume, n, vals)))
            .map(|fv| fv.volume.id.clone())
            .collect();
        let start: usize = query.next_token.as_deref().and_then(|t| t.parse().ok()).unwrap_or(0);
        let size = query.max_results.map_or(w.page_size, |m| (m as usize).min(w.page_size));
        let page: Vec<String> = ids.iter().skip(start).take(size).cloned().collect();
        let next_token = (start + page.len() < ids.len()).then(|| (start + page.len()).to_string());
        let mut volumes = Vec::with_capacity(page.len());
        for id in &page {
            Self::observe(&mut w, id);
            volumes.push(w.volumes[id].volume.clone());
        }
        Ok(VolumePage { volumes, next_token })
    }

    async fn attach_volume(&self, volume_id: &str, instance_id: &str, device: &str) -> Result<AttachState, CloudError> {
        let mut w = self.enter(Ec2Call::AttachVolume {
            volume: volume_id.to_owned(),
            instance: instance_id.to_owned(),
            device: device.to_owned(),
        })?;
        let inst = w.instances.get(instance_id).cloned().ok_or_else(|| {
            err("InvalidInstanceID.NotFound", format!("The instance ID '{instance_id}' does not exist"))
        })?;
        let (polls, stuck) = (w.attach_polls, w.stuck_attaching);
        let timed =
            w.attach_time.map(|d| (Instant::now() + d, if w.attach_fails { Timed::FailAttach } else { Timed::Attach }));
        let fv = w
            .volumes
            .get_mut(volume_id)
            .ok_or_else(|| err("InvalidVolume.NotFound", format!("The volume '{volume_id}' does not exist.")))?;
        if fv.volume.availability_zone != inst.az {
            return Err(err(
                "InvalidVolume.ZoneMismatch",
                format!("The volume '{volume_id}' is not in the same availability zone as instance '{instance_id}'"),
            ));
        }
        if fv.volume.live_attachments().next().is_some() {
            return Err(err("VolumeInUse", format!("{volume_id} is already attached to an instance")));
        }
        if fv.volume.state != VolumeState::Available {
            return Err(err("IncorrectState", format!("The volume '{volume_id}' is '{}'", fv.volume.state.as_str())));
        }
        if inst.devices.contains(device) {
            return Err(err(
                "InvalidParameterValue",
                format!("Invalid value '{device}' for unixDevice. Attachment point {device} is already in use"),
            ));
        }
        let state = if polls > 0 || stuck || timed.is_some() { AttachState::Attaching } else { AttachState::Attached };
        fv.volume.attachments.push(VolumeAttachment {
            instance_id: instance_id.to_owned(),
            device: device.to_owned(),
            state: state.clone(),
        });
        fv.volume.state = VolumeState::InUse;
        if let Some(timed) = timed.filter(|_| !stuck) {
            fv.timed.insert(instance_id.to_owned(), timed);
        } else if state == AttachState::Attaching {
            fv.attaching.insert(instance_id.to_owned(), polls.max(1));
        }
        w.instances.get_mut(instance_id).expect("checked").devices.insert(device.to_owned());
        Ok(AttachState::Attaching)
    }

    async fn detach_volume(&self, volume_id: &str, instance_id: &str, force: bool) -> Result<(), CloudError> {
        let mut w = self.enter(Ec2Call::DetachVolume {
            volume: volume_id.to_owned(),
            instance: instance_id.to_owned(),
            force,
        })?;
        let polls = w.detach_polls;
        let detach_time = w.detach_time;
        let fv = w
            .volumes
            .get_mut(volume_id)
            .ok_or_else(|| err("InvalidVolume.NotFound", format!("The volume '{volume_id}' does not exist.")))?;
        if fv.volume.attachment_to(instance_id).is_none() {
            return Err(err("IncorrectState", format!("Volume '{volume_id}' is in the 'available' state.")));
        }
        fv.attaching.remove(instance_id);
        fv.timed.remove(instance_id);
        if let Some(d) = detach_time {
            for a in fv.volume.attachments.iter_mut().filter(|a| a.instance_id == instance_id) {
                a.state = AttachState::Detaching;
            }
            fv.timed.insert(instance_id.to_owned(), (Instant::now() + d, Timed::Detach));
            Self::remove_attachment(&mut w, volume_id, instance_id);
        } else if polls > 0 {
            for a in fv.volume.attachments.iter_mut().filter(|a| a.instance_id == instance_id) {
                a.state = AttachState::Detaching;
            }
            fv.detaching.insert(instance_id.to_owned(), polls);
            Self::remove_attachment(&mut w, volume_id, instance_id);
        } else {
            Self::remove_attachment(&mut w, volume_id, instance_id);
            let fv = w.volumes.get_mut(volume_id).expect("checked");
            fv.volume.attachments.retain(|a| a.instance_id != instance_id);
            if fv.volume.attachments.is_empty() {
                fv.volume.state = VolumeState::Available;
            }
        }
        Ok(())
    }

    async fn delete_volume(&self, volume_id: &str) -> Result<(), CloudError> {
        let mut w = self.enter(Ec2Call::DeleteVolume(volume_id.to_owned()))?;
        let fv = w
            .volumes
            .get(volume_id)
            .ok_or_else(|| err("InvalidVolume.NotFound", format!("The volume '{volume_id}' does not exist.")))?;
        if fv.volume.live_attachments().next().is_some() {
            return Err(err("VolumeInUse", format!("Volume {volume_id} is currently attached to an instance")));
        }
        w.volumes.remove(volume_id);
        Ok(())
    }

    async fn create_tags(&self, resource_id: &str, tags: &BTreeMap<String, String>) -> Result<(), CloudError> {
        let mut w = self.enter(Ec2Call::CreateTags(resource_id.to_owned(), tags.clone()))?;
        if let Some(fs) = w.snapshots.get_mut(resource_id) {
            fs.snapshot.tags.extend(tags.clone());
            return Ok(());
        }
        let fv = w
            .volumes
            .get_mut(resource_id)
            .ok_or_else(|| err("InvalidVolume.NotFound", format!("The volume '{resource_id}' does not exist.")))?;
        fv.volume.tags.extend(tags.clone());
        Ok(())
    }

    async fn describe_instance(&self, instance_id: &str) -> Result<Instance, CloudError> {
        let w = self.enter(Ec2Call::DescribeInstances(instance_id.to_owned()))?;
        let inst = w.instances.get(instance_id).ok_or_else(|| {
            err("InvalidInstanceID.NotFound", format!("The instance ID '{instance_id}' does not exist"))
        })?;
        Ok(Instance {
            id: instance_id.to_owned(),
            availability_zone: inst.az.clone(),
            device_names: inst.devices.iter().cloned().collect(),
            instance_type: inst.instance_type.clone(),
            network_interfaces: inst.network_interfaces,
        })
    }

    /// Three types as EC2 describes them: a shared-limit Nitro type, one with an instance-store
    /// disk, and a dedicated-limit one.
    async fn describe_instance_type(&self, instance_type: &str) -> Result<InstanceTypeLimits, CloudError> {
        let _w = self.enter(Ec2Call::DescribeInstanceTypes(instance_type.to_owned()))?;
        let (max, shared, disks) = match instance_type {
            "m5.large" => (27, true, 0),
            "m5d.large" => (27, true, 1),
            "m7i.48xlarge" => (128, false, 0),
            other => {
                return Err(err(
                    "InvalidInstanceType",
                    format!("The following supplied instance types do not exist: [{other}]"),
                ))
            }
        };
        Ok(InstanceTypeLimits { max_attachments: Some(max), shared, instance_store_disks: disks })
    }

    async fn create_snapshot(&self, req: &CreateSnapshotRequest) -> Result<Snapshot, CloudError> {
        let mut w = self.enter(Ec2Call::CreateSnapshot(req.clone()))?;
        let volume =
            w.volumes.get(&req.volume_id).map(|fv| fv.volume.clone()).ok_or_else(|| {
                err("InvalidVolume.NotFound", format!("The volume '{}' does not exist.", req.volume_id))
            })?;
        let snapshot = Snapshot {
            id: String::new(),
            volume_id: volume.id,
            state: SnapshotState::Pending,
            progress: None,
            size_gib: volume.size_gib,
            description: req.description.clone(),
            encrypted: volume.encrypted,
            owner_id: None,
            start_time: None,
            tags: req.tags.clone(),
        };
        Ok(Self::start_snapshot(&mut w, snapshot))
    }

    async fn describe_snapshots(&self, query: &SnapshotQuery) -> Result<SnapshotPage, CloudError> {
        let mut w = self.enter(Ec2Call::DescribeSnapshots(query.clone()))?;
        if !query.ids.is_empty() && query.max_results.is_some() {
            return Err(err(
                "InvalidParameterCombination",
                "The parameter snapshotIdSet cannot be used with maxResults",
            ));
        }
        for id in &query.ids {
            if !w.snapshots.contains_key(id) {
                return Err(err("InvalidSnapshot.NotFound", format!("The snapshot '{id}' does not exist.")));
            }
        }
        let owner_ok = |s: &Snapshot| {
            query.owners.is_empty()
                || query.owners.iter().any(|o| {
                    let o = if o == "self" { FAKE_ACCOUNT } else { o.as_str() };
                    s.owner_id.as_deref() == Some(o)
                })
        };
        let ids: Vec<String> = w
            .snapshots
            .values()
            .map(|fs| &fs.snapshot)
            .filter(|s| query.ids.is_empty() || query.ids.contains(&s.id))
            .filter(|s| owner_ok(s))
            .filter(|s| query.filters.iter().all(|(n, vals)| matches_snapshot_filter(s, n, vals)))
            .map(|s| s.id.clone())
            .collect();
        let start: usize = query.next_token.as_deref().and_then(|t| t.parse().ok()).unwrap_or(0);
        let size = query.max_results.map_or(w.page_size, |m| (m as usize).min(w.page_size));
        let page: Vec<String> = ids.iter().skip(start).take(size).cloned().collect();
        let next_token = (start + page.len() < ids.len()).then(|| (start + page.len()).to_string());
        let mut snapshots = Vec::with_capacity(page.len());
        for id in &page {
            Self::observe_snapshot(&mut w, id);
            snapshots.push(w.snapshots[id].snapshot.clone());
        }
        Ok(SnapshotPage { snapshots, next_token })
    }

    async fn delete_snapshot(&self, snapshot_id: &str) -> Result<(), CloudError> {
        let mut w = self.enter(Ec2Call::DeleteSnapshot(snapshot_id.to_owned()))?;
        match w.snapshots.remove(snapshot_id) {
            Some(_) => Ok(()),
            None => Err(err("InvalidSnapshot.NotFound", format!("The snapshot '{snapshot_id}' does not exist."))),
        }
    }

    async fn copy_snapshot(&self, req: &CopySnapshotRequest) -> Result<String, CloudError> {
        let peer = {
            let w = self.enter(Ec2Call::CopySnapshot(req.clone()))?;
            w.peers.get(&req.source_region).cloned()
        };
        let not_found =
            || err("InvalidSnapshot.NotFound", format!("The snapshot '{}' does not exist.", req.source_snapshot_id));
        let source = match &peer {
            Some(peer) => peer.snapshot(&req.source_snapshot_id),
            None => self.snapshot(&req.source_snapshot_id),
        }
        .ok_or_else(not_found)?;
        if source.state != SnapshotState::Completed {
            return Err(err(
                "IncorrectState",
                format!("Snapshot {} is in invalid state - {}", source.id, source.state.as_str()),
            ));
        }
        let copy = Snapshot { description: req.description.clone(), tags: req.tags.clone(), ..source };
        Ok(Self::start_snapshot(&mut self.world(), copy).id)
    }

    async fn modify_volume(&self, req: &ModifyVolumeRequest) -> Result<VolumeModification, CloudError> {
        let mut w = self.enter(Ec2Call::ModifyVolume(req.clone()))?;
        let polls = w.modify_polls;
        let id = &req.volume_id;
        let fv = w
            .volumes
            .get_mut(id)
            .ok_or_else(|| err("InvalidVolume.NotFound", format!("The volume '{id}' does not exist.")))?;
        if let Some((m, _)) = &fv.modification {
            if matches!(m.state, ModificationState::Modifying | ModificationState::Optimizing) {
                return Err(err(
                    "IncorrectModificationState",
                    format!("Cannot modify volume {id} as it is already being modified"),
                ));
            }
        }
        let v = &fv.volume;
        if req.size_gib.is_some_and(|s| s < v.size_gib) {
            return Err(err(
                "InvalidParameterValue",
                format!("New size cannot be smaller than existing size for {id}"),
            ));
        }
        let unchanged = req.size_gib.is_none_or(|s| s == v.size_gib)
            && req.volume_type.as_ref().is_none_or(|t| *t == v.volume_type)
            && req.iops.is_none_or(|i| Some(i) == v.iops)
            && req.throughput.is_none_or(|t| Some(t) == v.throughput);
        if unchanged {
            return Err(err(
                "InvalidParameterCombination",
                format!("New configuration of volume {id} is the same as its current configuration"),
            ));
        }
        let m = VolumeModification {
            volume_id: id.clone(),
            state: if polls == 0 { ModificationState::Optimizing } else { ModificationState::Modifying },
            target_size_gib: Some(req.size_gib.unwrap_or(v.size_gib)),
            target_type: Some(req.volume_type.clone().unwrap_or_else(|| v.volume_type.clone())),
            target_iops: req.iops.or(v.iops),
            target_throughput: req.throughput.or(v.throughput),
            progress: Some(0),
            status_message: None,
        };
        if polls == 0 {
            Self::apply_modification(&mut fv.volume, &m);
        }
        fv.modification = Some((m.clone(), polls));
        Ok(m)
    }

    async fn describe_modification(&self, volume_id: &str) -> Result<Option<VolumeModification>, CloudError> {
        let mut w = self.enter(Ec2Call::DescribeModification(volume_id.to_owned()))?;
        let fv = w
            .volumes
            .get_mut(volume_id)
            .ok_or_else(|| err("InvalidVolume.NotFound", format!("The volume '{volume_id}' does not exist.")))?;
        let Some((m, left)) = fv.modification.as_mut() else { return Ok(None) };
        let seen = m.clone();
        match m.state {
            ModificationState::Modifying if *left > 1 => *left -= 1,
            ModificationState::Modifying => {
                m.state = ModificationState::Optimizing;
                m.progress = Some(50);
                let applied = m.clone();
                Self::apply_modification(&mut fv.volume, &applied);
            }
            ModificationState::Optimizing => {
                m.state = ModificationState::Completed;
                m.progress = Some(100);
            }
            _ => {}
        }
        Ok(Some(seen))
    }
}

/// The devices one fake instance sees: a volume attached (state `attached`) to it shows up as
/// `<links>/nvme-Amazon_Elastic_Block_Store_vol<hex>` → `/dev/nvme<N>n1`, with the volume's
/// serial, after `link_delay` looks (udev lag), until its detach completes.
#[derive(Debug)]
pub struct FakeDeviceHost {
    ec2: Arc<FakeEc2>,
    instance: String,
    links: PathBuf,
    state: Mutex<HostState>,
}

#[derive(Debug, Default)]
struct HostState {
    link_delay: u32,
    looks: BTreeMap<String, u32>,
    serials: BTreeMap<String, String>,
}

impl FakeDeviceHost {
    /// The host of `instance`, with links under `links`.
    pub fn new(ec2: Arc<FakeEc2>, instance: &str, links: impl Into<PathBuf>) -> Self {
        Self { ec2, instance: instance.to_owned(), links: links.into(), state: Mutex::default() }
    }

    /// Each link appears only after `n` unsuccessful looks.
    pub fn set_link_delay(&self, n: u32) {
        self.state.lock().expect("poisoned").link_delay = n;
    }

    /// The device of `volume` reports `serial` (to test the serial check).
    pub fn set_serial(&self, volume: &str, serial: &str) {
        self.state.lock().expect("poisoned").serials.insert(volume.to_owned(), serial.to_owned());
    }

    /// The device node the fake uses for `volume`.
    pub fn device_of(volume: &str) -> PathBuf {
        let n = u64::from_str_radix(volume.trim_start_matches("vol-"), 16).unwrap_or(0) & 0xff;
        PathBuf::from(format!("/dev/nvme{n}n1"))
    }
}

impl DeviceHost for FakeDeviceHost {
    fn resolve(&self, path: &Path) -> Option<PathBuf> {
        let name = path.strip_prefix(&self.links).ok()?.to_str()?;
        let hex = name.strip_prefix("nvme-Amazon_Elastic_Block_Store_vol")?;
        let id = format!("vol-{hex}");
        let volume = self.ec2.volume(&id)?;
        // The device is there from the end of the attach to the end of the detach.
        let attached = volume.attachments.iter().any(|a| {
            a.instance_id == self.instance && matches!(a.state, AttachState::Attached | AttachState::Detaching)
        });
        if !attached {
            return None;
        }
        let mut st = self.state.lock().expect("poisoned");
        let delay = st.link_delay;
        let looks = st.looks.entry(id.clone()).or_insert(0);
        if *looks < delay {
            *looks += 1;
            return None;
        }
        Some(Self::device_of(&id))
    }

    fn serial(&self, device: &Path) -> Option<String> {
        let st = self.state.lock().expect("poisoned");
        self.ec2
            .volumes()
            .into_iter()
            .find(|v| Self::device_of(&v.id) == device)
            .map(|v| st.serials.get(&v.id).cloned().unwrap_or_else(|| v.id.replace('-', "")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs() {
        assert!(glob_match("prod/*", "prod/db"));
        assert!(!glob_match("prod/*", "dev/db"));
        assert!(glob_match("a?c", "abc"));
        assert!(glob_match("a\\*c", "a*c"));
        assert!(!glob_match("a\\*c", "abc"));
    }

    #[tokio::test]
    async fn ec2_rules_moto_skips() {
        let ec2 = FakeEc2::new();
        ec2.add_instance("i-a", "us-east-1a");
        ec2.add_instance("i-b", "us-east-1b");
        let v = ec2.add_volume("us-east-1a", 1, &[("Name", "v")]);
        let zone = ec2.attach_volume(&v, "i-b", "/dev/xvdf").await.unwrap_err();
        assert_eq!(zone.code, "InvalidVolume.ZoneMismatch");
        ec2.attach_volume(&v, "i-a", "/dev/xvdf").await.unwrap();
        let again = ec2.attach_volume(&v, "i-a", "/dev/xvdg").await.unwrap_err();
        assert_eq!(again.code, "VolumeInUse");
        let v2 = ec2.add_volume("us-east-1a", 1, &[]);
        let dev = ec2.attach_volume(&v2, "i-a", "/dev/xvdf").await.unwrap_err();
        assert_eq!(dev.kind, super::super::api::CloudErrorKind::DeviceInUse);
        assert_eq!(ec2.delete_volume(&v).await.unwrap_err().code, "VolumeInUse");
        ec2.detach_volume(&v, "i-a", false).await.unwrap();
        assert_eq!(ec2.detach_volume(&v, "i-a", false).await.unwrap_err().code, "IncorrectState");
        ec2.delete_volume(&v).await.unwrap();
        assert_eq!(ec2.delete_volume(&v).await.unwrap_err().code, "InvalidVolume.NotFound");
    }

    #[tokio::test]
    async fn client_tokens_are_idempotent() {
        let ec2 = FakeEc2::new();
        let req = CreateVolumeRequest {
            size_gib: Some(1),
            availability_zone: "us-east-1a".into(),
            volume_type: "gp3".into(),
            client_token: "t1".into(),
            ..CreateVolumeRequest::default()
        };
        let a = ec2.create_volume(&req).await.unwrap();
        let b = ec2.create_volume(&req).await.unwrap();
        assert_eq!(a.id, b.id);
        assert_eq!(ec2.volumes().len(), 1);
        let other = CreateVolumeRequest { size_gib: Some(2), ..req };
        assert_eq!(ec2.create_volume(&other).await.unwrap_err().code, "IdempotentParameterMismatch");
    }

    #[tokio::test]
    async fn transitions_take_polls_and_pages_split() {
        let ec2 = FakeEc2::new();
        ec2.add_instance("i-a", "us-east-1a");
        ec2.set_attach_polls(2);
        let v = ec2.add_volume("us-east-1a", 1, &[]);
        ec2.attach_volume(&v, "i-a", "/dev/xvdf").await.unwrap();
        let state = |p: VolumePage| p.volumes[0].attachments[0].state.clone();
        assert_eq!(state(ec2.describe_volumes(&VolumeQuery::by_id(&v)).await.unwrap()), AttachState::Attaching);
        assert_eq!(state(ec2.describe_volumes(&VolumeQuery::by_id(&v)).await.unwrap()), AttachState::Attached);
        for _ in 0..4 {
            ec2.add_volume("us-east-1a", 1, &[("k", "v")]);
        }
        ec2.set_page_size(3);
        let q = VolumeQuery::filtered(vec![("tag:k".into(), vec!["v".into()])]);
        let p1 = ec2.describe_volumes(&q).await.unwrap();
        assert_eq!((p1.volumes.len(), p1.next_token.as_deref()), (3, Some("3")));
        let p2 = ec2.describe_volumes(&VolumeQuery { next_token: p1.next_token, ..q }).await.unwrap();
        assert_eq!((p2.volumes.len(), p2.next_token), (1, None));
    }
}
