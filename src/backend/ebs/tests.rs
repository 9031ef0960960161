//! The EBS backend against [`FakeEc2`], [`FakeDeviceHost`] and [`FakeOs`], on tokio's paused
//! clock: every wait and retry runs in virtual time.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use super::api::{AttachState, CloudError, VolumeState};
use super::fake::{Ec2Call, FakeDeviceHost, FakeEc2, Op};
use super::identity::Imds;
use super::watch::GATHER;
use super::*;
use crate::backend::{Backend, Environment};
use crate::config::{BackendKind, Integration};
use crate::os::fake::{Call, CallKind, FakeOs};
use crate::os::{FsType, MountFlags, Probe};

pub(super) const AZ: &str = "us-east-1a";

pub(super) fn name(s: &str) -> VolumeName {
    VolumeName::new(s).unwrap()
}

pub(super) fn service(instance: &str, az: &str, preempt: bool, extra: &[(&str, &str)]) -> ServiceConfig {
    let mut ebs: BTreeMap<String, String> = [
        ("instanceid", instance),
        ("availabilityzone", az),
        ("region", "us-east-1"),
        ("devicelinksdir", "/links"),
        ("statusinitialdelay", "100ms"),
        ("statusmaxattempts", "10"),
        ("statustimeout", "2m"),
    ]
    .iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    for (k, v) in extra {
        ebs.insert(k.to_string(), v.to_string());
    }
    ServiceConfig {
        name: "ebs".into(),
        backend: BackendKind::Ebs,
        integration: Integration {
            preempt,
            mount_path: "/mnt".into(),
            ..Integration::defaults(Path::new("/var/lib/rexray"))
        },
        vfs_root: "/vfs".into(),
        loop_root: "/loop".into(),
        ebs,
        ebs_origins: BTreeMap::new(),
    }
}

/// One host: a backend on its own fake OS and device view, sharing an EC2.
pub(super) struct Host {
    pub(super) ec2: Arc<FakeEc2>,
    pub(super) os: Arc<FakeOs>,
    pub(super) devices: Arc<FakeDeviceHost>,
    /// Both halves, as the service uses them.
    pub(super) backend: Backend,
    /// The controller with its EBS-only methods.
    pub(super) ebs: Arc<EbsController>,
    pub(super) connects: Arc<AtomicU32>,
}

/// A host over `os` and `devices` whose EC2 clients come from `factory`.
pub(super) fn host_from(
    ec2: &Arc<FakeEc2>,
    os: Arc<FakeOs>,
    devices: Arc<FakeDeviceHost>,
    service: &ServiceConfig,
    factory: ApiFactory,
) -> Host {
    let cloud = Arc::new(CloudParts { metadata: Arc::new(Imds::new("http://127.0.0.1:9", true)), factory });
    let env = Environment { os: os.clone(), devices: devices.clone(), host: os.clone(), ebs: Some(cloud.clone()) };
    let ebs = Arc::new(EbsController::new(service, &env, cloud).unwrap());
    let backend = ebs.backend();
    Host { ec2: Arc::clone(ec2), os, devices, backend, ebs, connects: Arc::new(AtomicU32::new(0)) }
}

pub(super) fn host_with(ec2: &Arc<FakeEc2>, instance: &str, service: &ServiceConfig) -> Host {
    let os = Arc::new(FakeOs::new());
    let devices = Arc::new(FakeDeviceHost::new(Arc::clone(ec2), instance, "/links"));
    let connects = Arc::new(AtomicU32::new(0));
    let (api, counter): (Arc<dyn Ec2Api>, Arc<AtomicU32>) = (ec2.clone(), connects.clone());
    let factory: ApiFactory = Box::new(move |conn| {
        assert_eq!(conn.region, "us-east-1");
        counter.fetch_add(1, Ordering::SeqCst);
        let api = Arc::clone(&api);
        Box::pin(async move { api })
    });
    Host { connects, ..host_from(ec2, os, devices, service, factory) }
}

pub(super) fn world() -> Arc<FakeEc2> {
    let ec2 = Arc::new(FakeEc2::new());
    ec2.add_instance("i-a", AZ);
    ec2.add_instance("i-b", AZ);
    ec2.add_instance("i-c", "us-east-1b");
    ec2
}

pub(super) fn host(ec2: &Arc<FakeEc2>, instance: &str) -> Host {
    host_with(ec2, instance, &service(instance, AZ, false, &[]))
}

pub(super) fn opts(h: &Host, pairs: &[(&str, &str)]) -> Options {
    h.backend.controller.parse_options(&pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()).unwrap()
}

pub(super) fn ops(calls: &[Ec2Call]) -> Vec<Op> {
    calls.iter().map(Ec2Call::op).collect()
}

pub(super) fn only(ec2: &FakeEc2, tag: &str) -> Volume {
    let mut v = ec2.by_name(tag);
    assert_eq!(v.len(), 1, "{v:?}");
    v.pop().unwrap()
}

#[tokio::test(start_paused = true)]
async fn building_makes_no_call_and_the_first_operation_connects_once() {
    let ec2 = world();
    let h = host(&ec2, "i-a");
    assert_eq!(h.connects.load(Ordering::SeqCst), 0);
    assert!(ec2.calls().is_empty());
    assert_eq!(h.backend.kind(), "ebs");
    assert_eq!(h.backend.controller.scope(), Scope::Global);
    let o = opts(&h, &[]);
    h.backend.controller.create(&name("v1"), &o, false).await.unwrap();
    h.backend.controller.create(&name("v2"), &o, false).await.unwrap();
    assert_eq!(h.connects.load(Ordering::SeqCst), 1);
    let ident = h.ebs.identity().await.unwrap();
    assert_eq!((ident.instance_id.as_str(), ident.availability_zone.as_str()), ("i-a", AZ));
}

#[tokio::test(start_paused = true)]
async fn only_the_instance_id_configured_reads_the_az_from_describe_instances() {
    let ec2 = world();
    let mut svc = service("i-c", AZ, false, &[]);
    svc.ebs.remove("availabilityzone");
    let h = host_with(&ec2, "i-c", &svc);
    assert_eq!(h.ebs.identity().await.unwrap().availability_zone, "us-east-1b");
    assert_eq!(ops(&ec2.calls()), [Op::DescribeInstances]);
}

#[tokio::test(start_paused = true)]
async fn create_sets_every_tag_in_the_create_call_with_a_name_token() {
    let ec2 = world();
    let h = host(&ec2, "i-a");
    let o = opts(
        &h,
        &[
            ("size", "20"),
            ("type", "io2"),
            ("iops", "4000"),
            ("encrypted", "true"),
            ("fsType", "xfs"),
            ("uid", "1000"),
            ("mode", "0750"),
            ("tags", "team=db;cost=42"),
        ],
    );
    h.backend.controller.create(&name("db1"), &o, false).await.unwrap();
    let v = only(&ec2, "db1");
    assert_eq!((v.size_gib, v.volume_type.as_str(), v.iops, v.encrypted), (20, "io2", Some(4000), true));
    assert_eq!(v.availability_zone, AZ, "this instance's AZ by default");
    let expect: BTreeMap<String, String> = [
        ("Name", "db1"),
        (OWNER_TAG, OWNER_VALUE),
        ("rexray-rs/fsType", "xfs"),
        ("rexray-rs/uid", "1000"),
        ("rexray-rs/mode", "0750"),
        ("team", "db"),
        ("cost", "42"),
    ]
    .iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    assert_eq!(v.tags, expect);
    let calls = ec2.calls();
    assert_eq!(ops(&calls), [Op::DescribeVolumes, Op::CreateVolume, Op::DescribeVolumes]);
    assert!(
        matches!(&calls[1], Ec2Call::CreateVolume { name: Some(n), token } if n == "db1" && *token == client_token("db1") && token.len() == 64)
    );
    assert!(!ops(&calls).contains(&Op::CreateTags), "no separate CreateTags: the volume is never untagged");

    // Idempotent: the existing volume is found by name; nothing is created.
    ec2.take_calls();
    h.backend.controller.create(&name("db1"), &o, false).await.unwrap();
    assert_eq!(ops(&ec2.take_calls()), [Op::DescribeVolumes]);
    assert_eq!(ec2.by_name("db1").len(), 1);
}

#[tokio::test(start_paused = true)]
async fn implicit_volumes_are_16_gib_gp3_and_encryption_uses_the_configured_key() {
    let ec2 = world();
    let h = host_with(&ec2, "i-a", &service("i-a", AZ, false, &[("kmskeyid", "alias/team")]));
    h.backend
        .controller
        .create(&name("v"), &h.backend.controller.parse_options(&BTreeMap::new()).unwrap(), false)
        .await
        .unwrap();
    let v = only(&ec2, "v");
    assert_eq!((v.size_gib, v.volume_type.as_str(), v.encrypted, v.kms_key_id.clone()), (16, "gp3", false, None));
    h.backend.controller.create(&name("e"), &opts(&h, &[("encrypted", "yes")]), false).await.unwrap();
    let e = only(&ec2, "e");
    assert_eq!((e.encrypted, e.kms_key_id.as_deref()), (true, Some("alias/team")));
    h.backend
        .controller
        .create(&name("k"), &opts(&h, &[("kmsKeyID", "arn:aws:kms:us-east-1:1:key/x")]), false)
        .await
        .unwrap();
    assert_eq!(only(&ec2, "k").kms_key_id.as_deref(), Some("arn:aws:kms:us-east-1:1:key/x"));
}

#[tokio::test(start_paused = true)]
async fn a_tag_namespace_applies_to_create_lookup_and_list() {
    let ec2 = world();
    let h = host_with(&ec2, "i-a", &service("i-a", AZ, false, &[("tag", "prod")]));
    let o = opts(&h, &[]);
    h.backend.controller.create(&name("db"), &o, false).await.unwrap();
    assert_eq!(only(&ec2, "prod/db").tags[OWNER_TAG], OWNER_VALUE);
    assert!(ec2.by_name("db").is_empty());
    h.backend.controller.create(&name("db"), &o, false).await.unwrap();
    assert_eq!(ec2.by_name("prod/db").len(), 1, "found through the prefixed name");
    // Another namespace's and an unprefixed owned volume are not listed.
    ec2.add_volume(AZ, 1, &[("Name", "dev/db"), (OWNER_TAG, OWNER_VALUE)]);
    ec2.add_volume(AZ, 1, &[("Name", "plain"), (OWNER_TAG, OWNER_VALUE)]);
    let listed = h.ebs.list_all(true).await;
    assert_eq!(listed.keys().collect::<Vec<_>>(), ["db"]);
    assert_eq!(h.backend.controller.status(&name("db"), &o)["ebsName"], "prod/db");
}

#[tokio::test(start_paused = true)]
async fn lookup_spans_the_region_and_names_the_other_az() {
    let ec2 = world();
    let h = host(&ec2, "i-a");
    let id = ec2.add_volume("us-east-1b", 5, &[("Name", "db1"), (OWNER_TAG, OWNER_VALUE)]);
    let o = opts(&h, &[]);
    // Create finds it (no duplicate in this AZ) ...
    h.backend.controller.create(&name("db1"), &o, false).await.unwrap();
    assert_eq!(ec2.by_name("db1").len(), 1);
    // ... unless asked for another AZ explicitly.
    let err = h
        .backend
        .controller
        .create(&name("db1"), &opts(&h, &[("availabilityZone", AZ)]), false)
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("already exists in us-east-1b") && err.contains(&id), "{err}");
    // Mount says where it is.
    ec2.take_calls();
    let err = h.backend.activate_here(&name("db1"), &o).await.unwrap_err().to_string();
    assert!(err.starts_with("volume db1 is in us-east-1b; this instance is in us-east-1a"), "{err}");
    assert!(!ops(&ec2.calls()).contains(&Op::AttachVolume));
}

#[tokio::test(start_paused = true)]
async fn a_wrong_configured_az_is_caught_by_describe_instances_and_ec2s_zone_mismatch_is_mapped() {
    // The configured AZ is wrong about the instance: DescribeInstances tells the truth.
    let ec2 = world();
    let h = host_with(&ec2, "i-c", &service("i-c", AZ, false, &[]));
    ec2.add_volume(AZ, 1, &[("Name", "v"), (OWNER_TAG, OWNER_VALUE)]);
    let err = h.backend.activate_here(&name("v"), &opts(&h, &[])).await.unwrap_err().to_string();
    assert!(err.starts_with("volume v is in us-east-1a; this instance is in us-east-1b"), "{err}");
    assert_eq!(ec2.count(Op::AttachVolume), 0);
    // EC2's own refusal names the AZ too.
    let h = host(&ec2, "i-a");
    ec2.fail_next(
        Op::AttachVolume,
        CloudError::from_code("InvalidVolume.ZoneMismatch", "not in the same AZ", Some(400)),
    );
    let err = h.backend.activate_here(&name("v"), &opts(&h, &[])).await.unwrap_err().to_string();
    assert!(err.contains("volume v is in us-east-1a") && err.contains("InvalidVolume.ZoneMismatch"), "{err}");
}

#[tokio::test(start_paused = true)]
async fn two_volumes_with_one_name_are_an_error_listing_both() {
    let ec2 = world();
    let h = host(&ec2, "i-a");
    let a = ec2.add_volume(AZ, 1, &[("Name", "dup")]);
    let b = ec2.add_volume("us-east-1b", 1, &[("Name", "dup")]);
    let o = opts(&h, &[]);
    for err in [
        h.backend.controller.create(&name("dup"), &o, false).await.unwrap_err(),
        h.backend.activate_here(&name("dup"), &o).await.unwrap_err(),
        h.backend.controller.delete(&name("dup"), &o).await.unwrap_err(),
    ] {
        let msg = err.to_string();
        assert!(msg.contains("2 EC2 volumes are named dup") && msg.contains(&a) && msg.contains(&b), "{msg}");
    }
    assert_eq!(ec2.volumes().len(), 2);
}

#[tokio::test(start_paused = true)]
async fn an_unowned_volume_is_adopted_by_name() {
    let ec2 = world();
    let h = host(&ec2, "i-a");
    let id = ec2.add_volume(AZ, 3, &[("Name", "old")]);
    h.backend.controller.create(&name("old"), &opts(&h, &[]), false).await.unwrap();
    assert_eq!(ec2.volume(&id).unwrap().tags[OWNER_TAG], OWNER_VALUE);
    assert_eq!(ops(&ec2.calls()), [Op::DescribeVolumes, Op::CreateTags]);
    assert!(h.ebs.list_all(true).await.contains_key("old"));
}

#[tokio::test(start_paused = true)]
async fn idempotent_parameter_mismatch_retries_with_a_new_token() {
    let ec2 = world();
    let h = host(&ec2, "i-a");
    ec2.fail_next(Op::CreateVolume, CloudError::from_code("IdempotentParameterMismatch", "used", Some(400)));
    h.backend.controller.create(&name("v"), &opts(&h, &[]), false).await.unwrap();
    let tokens: Vec<String> = ec2
        .calls()
        .into_iter()
        .filter_map(|c| match c {
            Ec2Call::CreateVolume { token, .. } => Some(token),
            _ => None,
        })
        .collect();
    assert_eq!(tokens, [client_token("v"), client_token("v-1")]);
    assert_eq!(ec2.by_name("v").len(), 1);
}

#[tokio::test(start_paused = true)]
async fn a_volume_that_vanishes_after_create_is_reported_as_a_kms_problem() {
    let ec2 = world();
    let h = host(&ec2, "i-a");
    ec2.add_bad_kms_key("alias/broken");
    let err = h
        .backend
        .controller
        .create(&name("secret"), &opts(&h, &[("kmsKeyID", "alias/broken")]), false)
        .await
        .unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.contains("vanished") && msg.contains("KMS key alias/broken") && msg.contains("kms:CreateGrant"),
        "{msg}"
    );
    assert_eq!(ec2.count(Op::CreateVolume), 2, "one retry with a fresh token");
    assert!(ec2.by_name("secret").is_empty());
}

#[tokio::test(start_paused = true)]
async fn a_token_reused_after_delete_gets_a_fresh_one() {
    let ec2 = world();
    let h = host(&ec2, "i-a");
    let o = opts(&h, &[]);
    h.backend.controller.create(&name("re"), &o, false).await.unwrap();
    h.backend.controller.delete(&name("re"), &o).await.unwrap();
    // EC2 answers the old token with the deleted volume; the backend moves on to a new token.
    h.backend.controller.create(&name("re"), &o, false).await.unwrap();
    assert_eq!(ec2.by_name("re").len(), 1);
    assert_eq!(ec2.count(Op::CreateVolume), 3);
}

#[tokio::test(start_paused = true)]
async fn create_waits_while_creating() {
    let ec2 = world();
    let h = host(&ec2, "i-a");
    ec2.set_create_polls(3);
    let start = Instant::now();
    h.backend.controller.create(&name("slow"), &opts(&h, &[]), false).await.unwrap();
    // The look-up by name and three polls, each batched (each gathers for 2 ms, a little longer
    // when another look-up joins); the polls at 0, 0.1 and 0.3 s.
    let took = start.elapsed();
    let least = Duration::from_millis(100 + 200) + 4 * GATHER;
    assert!(took >= least && took <= least + 4 * GATHER, "{took:?}");
    assert_eq!(only(&ec2, "slow").state, VolumeState::Available);
}

#[tokio::test(start_paused = true)]
async fn create_options_are_checked_before_any_aws_call() {
    let ec2 = world();
    let h = host(&ec2, "i-a");
    for pairs in [
        &[("iops", "abc")][..],
        &[("throughput", "1")][..],
        &[("tags", "=x")][..],
        &[("size", "0")][..],
        &[("type", "gp2"), ("iops", "3000")][..],
        &[("type", "io1")][..],
    ] {
        let raw: BTreeMap<String, String> = pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        assert!(h.backend.controller.parse_options(&raw).is_err(), "{pairs:?}");
    }
    assert!(ec2.calls().is_empty());
    assert_eq!(h.connects.load(Ordering::SeqCst), 0);
}

const DEV_PREFIX: &str = "/dev/nvme";

/// Whether `call` is a wait's volume-state poll (batched: a `volume-id` filter).
fn is_state_poll(call: &Ec2Call) -> bool {
    matches!(call, Ec2Call::DescribeVolumes(q) if q.filters.iter().any(|(n, _)| n == "volume-id"))
}

#[tokio::test(start_paused = true)]
async fn mount_of_a_detached_volume_costs_three_calls_besides_the_attach_wait() {
    let ec2 = world();
    let h = host(&ec2, "i-a");
    let o = opts(&h, &[]);
    h.backend.controller.create(&name("v1"), &o, false).await.unwrap();
    ec2.set_attach_polls(3);
    ec2.take_calls();
    let start = Instant::now();
    let path = h.backend.activate_here(&name("v1"), &o).await.unwrap();
    assert_eq!(path, Path::new("/mnt/v1/data"));
    let calls = ec2.take_calls();
    let not_polls: Vec<Op> = calls.iter().filter(|c| !is_state_poll(c)).map(Ec2Call::op).collect();
    assert_eq!(not_polls, [Op::DescribeVolumes, Op::DescribeInstances, Op::AttachVolume]);
    assert_eq!(calls.len(), 3 + 3, "three polls: attaching, attaching, attached");
    // The device shows only once EC2 says `attached`, so the fallback polls end the wait: at
    // 1 s after the AttachVolume rounded up to the shared 1 s grid, then 1 and 2 s later.
    let took = start.elapsed();
    assert!(took >= Duration::from_secs(4) && took < Duration::from_secs(5), "{took:?}");
    let v = only(&ec2, "v1");
    assert_eq!(v.attachments[0].instance_id, "i-a");
    assert_eq!(v.attachments[0].device, "/dev/xvdf");
    // The pipeline ran on the NVMe device the link points at.
    let dev = FakeDeviceHost::device_of(&v.id);
    assert!(dev.to_str().unwrap().starts_with(DEV_PREFIX));
    let os_calls = h.os.calls();
    assert!(os_calls.contains(&Call::Mkfs { device: dev.clone(), fs: FsType::Ext4, extra: vec![] }), "{os_calls:?}");
    assert_eq!(h.os.mounted(Path::new("/mnt/v1")).unwrap().source, dev);
    // Get/inspect reads the cache: no EC2 call.
    ec2.take_calls();
    let s = h.backend.controller.status(&name("v1"), &o);
    tokio::task::yield_now().await;
    assert_eq!(s["volumeID"], v.id.as_str());
    assert_eq!(s["sizeGiB"], 16);
    assert_eq!(s["volumeType"], "gp3");
    assert_eq!(s["availabilityZone"], AZ);
    assert_eq!(s["state"], "in-use");
    assert_eq!(s["attachedInstance"], "i-a");
    assert_eq!(s["device"], "/dev/xvdf");
    assert_eq!(s["encrypted"], false);
    assert_eq!(s["iops"], 3000);
    assert_eq!(s["throughput"], 125);
    assert_eq!(s["fsType"], "ext4");
}

#[tokio::test(start_paused = true)]
async fn the_fs_type_tag_wins_over_the_local_record() {
    let ec2 = world();
    let a = host(&ec2, "i-a");
    a.backend.controller.create(&name("x"), &opts(&a, &[("fsType", "xfs"), ("uid", "7")]), false).await.unwrap();
    // Host B learnt of the volume through an implicit create: its record holds the defaults.
    let b = host(&ec2, "i-b");
    let defaults = opts(&b, &[]);
    b.backend.controller.create(&name("x"), &defaults, false).await.unwrap();
    b.backend.activate_here(&name("x"), &defaults).await.unwrap();
    let calls = b.os.calls();
    assert!(calls.iter().any(|c| matches!(c, Call::Mkfs { fs: FsType::Xfs, .. })), "{calls:?}");
    assert!(
        calls.iter().any(|c| matches!(c, Call::Mount { fs: FsType::Xfs, data, .. } if data == "nouuid")),
        "{calls:?}"
    );
    assert!(calls.iter().any(|c| matches!(c, Call::EnsureDirBeneath { spec, .. } if spec.uid == Some(7))), "{calls:?}");
}

#[tokio::test(start_paused = true)]
async fn stuck_attaching_detaches_fails_clearly_and_the_retry_uses_another_name() {
    let ec2 = world();
    let h = host(&ec2, "i-a");
    let o = opts(&h, &[]);
    h.backend.controller.create(&name("v"), &o, false).await.unwrap();
    ec2.set_stuck_attaching(true);
    let start = Instant::now();
    let err = h.backend.activate_here(&name("v"), &o).await.unwrap_err().to_string();
    // Polled until ebs.statusTimeout (2 min), then detached again at once.
    assert!(start.elapsed() <= Duration::from_secs(122), "{:?}", start.elapsed());
    assert!(err.contains("still attaching as /dev/xvdf") && err.contains("detached it again"), "{err}");
    let v = only(&ec2, "v");
    assert!(v.attachments.is_empty(), "{v:?}");
    assert!(ec2.calls().iter().any(|c| matches!(c, Ec2Call::DetachVolume { force: false, .. })));
    assert!(!h.os.calls().iter().any(|c| c.kind() == CallKind::Mkfs));

    ec2.set_stuck_attaching(false);
    h.backend.activate_here(&name("v"), &o).await.unwrap();
    assert_eq!(only(&ec2, "v").attachments[0].device, "/dev/xvdg", "the stuck name is not reused at once");
}

#[tokio::test(start_paused = true)]
async fn throttling_is_retried_within_the_call() {
    let ec2 = world();
    let h = host(&ec2, "i-a");
    let o = opts(&h, &[]);
    h.backend.controller.create(&name("v"), &o, false).await.unwrap();
    ec2.throttle(Op::AttachVolume, 3);
    ec2.throttle(Op::DescribeVolumes, 2);
    let start = Instant::now();
    h.backend.activate_here(&name("v"), &o).await.unwrap();
    assert_eq!(ec2.count(Op::AttachVolume), 4);
    assert!(start.elapsed() < Duration::from_secs(10), "{:?}", start.elapsed());
    // Throttled for good: the error says so, within the retry budget.
    ec2.throttle(Op::DescribeVolumes, 1_000);
    let start = Instant::now();
    let err = h.backend.deactivate_here(&name("v"), &o).await.unwrap_err().to_string();
    assert!(err.contains("RequestLimitExceeded") && err.contains("throttling"), "{err}");
    assert!(start.elapsed() <= Duration::from_secs(45), "{:?}", start.elapsed());
}

#[tokio::test(start_paused = true)]
async fn attached_elsewhere_without_preempt_names_the_instance() {
    let ec2 = world();
    let h = host(&ec2, "i-b");
    let id = ec2.add_volume(AZ, 1, &[("Name", "shared"), (OWNER_TAG, OWNER_VALUE)]);
    ec2.attach_existing(&id, "i-a", "/dev/xvdf");
    ec2.take_calls();
    let err = h.backend.activate_here(&name("shared"), &opts(&h, &[])).await.unwrap_err().to_string();
    assert!(err.contains("is attached to instance i-a (as /dev/xvdf, attached)") && err.contains("preempt"), "{err}");
    let calls = ops(&ec2.calls());
    assert!(!calls.contains(&Op::AttachVolume) && !calls.contains(&Op::DetachVolume), "{calls:?}");
    assert_eq!(ec2.volume(&id).unwrap().attachments[0].instance_id, "i-a");
}

#[tokio::test(start_paused = true)]
async fn preempt_force_detaches_there_waits_and_attaches_here() {
    let ec2 = world();
    let h = host_with(&ec2, "i-b", &service("i-b", AZ, true, &[]));
    let id = ec2.add_volume(AZ, 1, &[("Name", "shared"), (OWNER_TAG, OWNER_VALUE)]);
    ec2.attach_existing(&id, "i-a", "/dev/xvdf");
    ec2.set_detach_polls(2);
    ec2.take_calls();
    h.backend.activate_here(&name("shared"), &opts(&h, &[])).await.unwrap();
    let calls = ec2.calls();
    let detach = calls
        .iter()
        .position(|c| matches!(c, Ec2Call::DetachVolume { instance, force: true, .. } if instance == "i-a"));
    let attach = calls.iter().position(|c| matches!(c, Ec2Call::AttachVolume { instance, .. } if instance == "i-b"));
    assert!(detach.unwrap() < attach.unwrap(), "{calls:?}");
    let v = ec2.volume(&id).unwrap();
    assert_eq!(v.attachments.len(), 1);
    assert_eq!((v.attachments[0].instance_id.as_str(), &v.attachments[0].state), ("i-b", &AttachState::Attached));
    assert!(ec2.instance_devices("i-a").iter().all(|d| d != "/dev/xvdf"));
}

#[tokio::test(start_paused = true)]
async fn an_attachment_here_is_reused() {
    let ec2 = world();
    let h = host(&ec2, "i-a");
    let id = ec2.add_volume(AZ, 1, &[("Name", "v"), (OWNER_TAG, OWNER_VALUE), ("rexray-rs/fsType", "ext4")]);
    ec2.attach_existing(&id, "i-a", "/dev/xvdk");
    h.os.set_probe(FakeDeviceHost::device_of(&id), Probe::Filesystem("ext4".into()));
    ec2.take_calls();
    h.backend.activate_here(&name("v"), &opts(&h, &[])).await.unwrap();
    assert_eq!(ops(&ec2.calls()), [Op::DescribeVolumes]);
    assert!(h.os.calls().contains(&Call::Mount {
        device: FakeDeviceHost::device_of(&id),
        target: "/mnt/v".into(),
        fs: FsType::Ext4,
        flags: MountFlags::empty(),
        data: String::new(),
    }));
}

#[tokio::test(start_paused = true)]
async fn concurrent_attaches_never_share_a_device_name() {
    let ec2 = world();
    ec2.set_attach_polls(2);
    let h = host(&ec2, "i-a");
    let o = opts(&h, &[]);
    for n in ["c1", "c2", "c3"] {
        h.backend.controller.create(&name(n), &o, false).await.unwrap();
    }
    let (n1, n2, n3) = (name("c1"), name("c2"), name("c3"));
    let (a, b, c) = tokio::join!(
        h.backend.activate_here(&n1, &o),
        h.backend.activate_here(&n2, &o),
        h.backend.activate_here(&n3, &o)
    );
    a.unwrap();
    b.unwrap();
    c.unwrap();
    let mut devices: Vec<String> =
        ["c1", "c2", "c3"].iter().map(|n| only(&ec2, n).attachments[0].device.clone()).collect();
    devices.sort();
    assert_eq!(devices, ["/dev/xvdf", "/dev/xvdg", "/dev/xvdh"]);
}

#[tokio::test(start_paused = true)]
async fn a_device_name_in_use_on_the_instance_is_skipped() {
    let ec2 = world();
    let h = host(&ec2, "i-a");
    let o = opts(&h, &[]);
    h.backend.controller.create(&name("v"), &o, false).await.unwrap();
    ec2.fail_next(
        Op::AttachVolume,
        CloudError::from_code("InvalidParameterValue", "Attachment point /dev/xvdf is already in use", Some(400)),
    );
    h.backend.activate_here(&name("v"), &o).await.unwrap();
    assert_eq!(only(&ec2, "v").attachments[0].device, "/dev/xvdg");
}

#[tokio::test(start_paused = true)]
async fn attaches_within_a_minute_reuse_the_instance_description_with_their_own_changes() {
    let ec2 = world();
    let h = host(&ec2, "i-a");
    let o = opts(&h, &[]);
    for n in ["a", "b", "c", "other"] {
        h.backend.controller.create(&name(n), &o, false).await.unwrap();
    }
    h.backend.activate_here(&name("a"), &o).await.unwrap();
    assert_eq!(ec2.count(Op::DescribeInstances), 1);
    // The next attach asks EC2 nothing about the instance, and takes the next free name.
    h.backend.activate_here(&name("b"), &o).await.unwrap();
    assert_eq!(ec2.count(Op::DescribeInstances), 1);
    assert_eq!(only(&ec2, "b").attachments[0].device, "/dev/xvdg");
    h.backend.deactivate_here(&name("a"), &o).await.unwrap();
    // Someone else attached as /dev/xvdf meanwhile: EC2 refuses that name, the description is
    // asked for again, and the attach goes on with a free one.
    let other = only(&ec2, "other").id;
    ec2.attach_existing(&other, "i-a", "/dev/xvdf");
    h.backend.activate_here(&name("c"), &o).await.unwrap();
    assert_eq!(only(&ec2, "c").attachments[0].device, "/dev/xvdh");
    assert_eq!(ec2.count(Op::DescribeInstances), 2, "asked again after /dev/xvdf was refused");
    h.backend.deactivate_here(&name("c"), &o).await.unwrap();
    h.backend.deactivate_here(&name("b"), &o).await.unwrap();
    h.backend.activate_here(&name("b"), &o).await.unwrap();
    assert_eq!(only(&ec2, "b").attachments[0].device, "/dev/xvdg", "the names this daemon freed are free");
    assert_eq!(ec2.count(Op::DescribeInstances), 2);
    // Past a minute, EC2 is asked again.
    h.backend.deactivate_here(&name("b"), &o).await.unwrap();
    tokio::time::advance(std::time::Duration::from_secs(61)).await;
    h.backend.activate_here(&name("b"), &o).await.unwrap();
    assert_eq!(ec2.count(Op::DescribeInstances), 3);
}

#[tokio::test(start_paused = true)]
async fn deactivate_unmounts_then_detaches_and_waits_and_is_idempotent() {
    let ec2 = world();
    let h = host(&ec2, "i-a");
    let o = opts(&h, &[]);
    h.backend.controller.create(&name("v"), &o, false).await.unwrap();
    h.backend.activate_here(&name("v"), &o).await.unwrap();
    ec2.set_detach_polls(2);
    h.os.take_calls();
    ec2.take_calls();
    h.backend.deactivate_here(&name("v"), &o).await.unwrap();
    let os_calls = h.os.take_calls();
    assert!(
        matches!(os_calls[..], [Call::MountedAt { .. }, Call::Syncfs { .. }, Call::Unmount { lazy: false, .. }]),
        "{os_calls:?}"
    );
    // The last-use tag is written in the background.
    tokio::time::sleep(Duration::from_millis(10)).await;
    let calls = ec2.take_calls();
    assert!(calls
        .iter()
        .any(|c| matches!(c, Ec2Call::CreateTags(_, tags) if tags.contains_key(super::naming::LAST_USED_TAG))));
    assert!(calls
        .iter()
        .any(|c| matches!(c, Ec2Call::DetachVolume { instance, force: false, .. } if instance == "i-a")));
    assert!(only(&ec2, "v").attachments.is_empty());
    assert_eq!(only(&ec2, "v").state, VolumeState::Available);
    assert!(!h.backend.node.is_staged(&name("v"), &h.backend.node.staging_path(&name("v"))).await.unwrap());
    h.backend.deactivate_here(&name("v"), &o).await.unwrap();
    assert_eq!(ops(&ec2.take_calls()), [Op::DescribeVolumes], "nothing to detach");
}

#[tokio::test(start_paused = true)]
async fn remove_is_refused_while_attached_and_gone_is_success() {
    let ec2 = world();
    let h = host(&ec2, "i-a");
    let o = opts(&h, &[]);
    h.backend.controller.create(&name("v"), &o, false).await.unwrap();
    h.backend.activate_here(&name("v"), &o).await.unwrap();
    let err = h.backend.controller.delete(&name("v"), &o).await.unwrap_err().to_string();
    assert!(err.contains("attached to instance i-a"), "{err}");
    assert!(!ops(&ec2.calls()).contains(&Op::DeleteVolume));
    h.backend.deactivate_here(&name("v"), &o).await.unwrap();
    h.backend.controller.delete(&name("v"), &o).await.unwrap();
    assert!(ec2.by_name("v").is_empty());
    h.backend.controller.delete(&name("v"), &o).await.unwrap();
    // Deleted between the lookup and DeleteVolume: also success.
    h.backend.controller.create(&name("w"), &o, false).await.unwrap();
    ec2.fail_next(Op::DeleteVolume, CloudError::from_code("InvalidVolume.NotFound", "gone", Some(400)));
    h.backend.controller.delete(&name("w"), &o).await.unwrap();
    // Attached here but not mounted (an earlier detach failed): the controller alone refuses;
    // the Docker front's remove releases it here first, then deletes.
    let id = ec2.add_volume(AZ, 1, &[("Name", "left"), (OWNER_TAG, OWNER_VALUE)]);
    ec2.attach_existing(&id, "i-a", "/dev/xvdz");
    let err = h.backend.controller.delete(&name("left"), &o).await.unwrap_err().to_string();
    assert!(err.contains("attached to instance i-a") && err.contains("unmount it on this host"), "{err}");
    h.backend.deactivate_here(&name("left"), &o).await.unwrap();
    h.backend.controller.delete(&name("left"), &o).await.unwrap();
    assert!(ec2.volume(&id).is_none());
    // Attached to another instance: refused even so.
    let id = ec2.add_volume(AZ, 1, &[("Name", "theirs"), (OWNER_TAG, OWNER_VALUE)]);
    ec2.attach_existing(&id, "i-b", "/dev/xvdz");
    let err = h.backend.controller.delete(&name("theirs"), &o).await.unwrap_err().to_string();
    assert!(err.contains("attached to instance i-b"), "{err}");
}

#[tokio::test(start_paused = true)]
async fn a_device_that_never_appears_is_detached_and_the_error_lists_the_paths() {
    let ec2 = world();
    let h = host(&ec2, "i-a");
    let o = opts(&h, &[]);
    h.backend.controller.create(&name("v"), &o, false).await.unwrap();
    h.devices.set_link_delay(u32::MAX);
    let start = Instant::now();
    let err = h.backend.activate_here(&name("v"), &o).await.unwrap_err().to_string();
    assert!(start.elapsed() <= Duration::from_secs(122), "{:?}", start.elapsed());
    assert!(err.contains("/links/nvme-Amazon_Elastic_Block_Store_vol") && err.contains("/dev/xvdf"), "{err}");
    assert!(only(&ec2, "v").attachments.is_empty(), "rolled back");
}

#[tokio::test(start_paused = true)]
async fn udev_lag_is_waited_for() {
    let ec2 = world();
    let h = host(&ec2, "i-a");
    let o = opts(&h, &[]);
    h.backend.controller.create(&name("v"), &o, false).await.unwrap();
    h.devices.set_link_delay(3);
    h.backend.activate_here(&name("v"), &o).await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn a_device_with_another_volumes_serial_is_refused() {
    let ec2 = world();
    let h = host(&ec2, "i-a");
    let o = opts(&h, &[]);
    h.backend.controller.create(&name("v"), &o, false).await.unwrap();
    let id = only(&ec2, "v").id;
    h.devices.set_serial(&id, "vol0ffffffffffffffff");
    let err = h.backend.activate_here(&name("v"), &o).await.unwrap_err().to_string();
    assert!(err.contains("serial vol0ffffffffffffffff") && err.contains("another volume"), "{err}");
    assert!(!h.os.calls().iter().any(|c| c.kind() == CallKind::Mkfs));
    assert!(only(&ec2, "v").attachments.is_empty(), "rolled back");
}

#[tokio::test(start_paused = true)]
async fn list_is_one_paginated_describe_of_owned_volumes() {
    let ec2 = world();
    ec2.set_page_size(500);
    for i in 0..5000 {
        ec2.add_volume(AZ, 1, &[("Name", &format!("v{i}")), (OWNER_TAG, OWNER_VALUE)]);
    }
    ec2.add_volume(AZ, 8, &[("Name", "root-disk")]);
    let h = host(&ec2, "i-a");
    let listed = h.ebs.list_all(false).await;
    assert_eq!(listed.len(), 5000);
    assert!(!listed.contains_key("root-disk"), "unowned volumes are not listed");
    let calls = ec2.take_calls();
    assert_eq!(calls.len(), 10, "5000 volumes in pages of 500");
    assert!(calls.iter().all(|c| matches!(c, Ec2Call::DescribeVolumes(q) if q.filters == vec![(format!("tag:{OWNER_TAG}"), vec![OWNER_VALUE.to_owned()])])));
    // Within the refresh period, list and status cost nothing.
    h.ebs.list_all(false).await;
    let o = opts(&h, &[]);
    for i in 0..100 {
        assert_eq!(h.backend.controller.status(&name(&format!("v{i}")), &o)["sizeGiB"], 1);
    }
    tokio::task::yield_now().await;
    assert!(ec2.calls().is_empty());
}

#[tokio::test(start_paused = true)]
async fn a_failing_refresh_keeps_what_is_known() {
    let ec2 = world();
    let h = host(&ec2, "i-a");
    let o = opts(&h, &[]);
    h.backend.controller.create(&name("v"), &o, false).await.unwrap();
    tokio::time::advance(cache::REFRESH_AFTER).await;
    ec2.fail_next(Op::DescribeVolumes, CloudError::from_code("InternalError", "boom", Some(500)));
    ec2.fail_next(Op::DescribeVolumes, CloudError::from_code("UnauthorizedOperation", "no", Some(403)));
    let listed = h.ebs.list_all(true).await;
    assert!(listed.contains_key("v"), "{listed:?}");
    assert_eq!(h.backend.controller.status(&name("v"), &o)["state"], "available");
}

#[tokio::test(start_paused = true)]
async fn status_of_an_uncached_volume_refreshes_in_the_background() {
    let ec2 = world();
    ec2.add_volume(AZ, 9, &[("Name", "elsewhere"), (OWNER_TAG, OWNER_VALUE)]);
    let h = host(&ec2, "i-a");
    let o = opts(&h, &[]);
    let s = h.backend.controller.status(&name("elsewhere"), &o);
    assert!(!s.contains_key("volumeID"));
    // Let the background refresh run.
    for _ in 0..10 {
        tokio::task::yield_now().await;
    }
    tokio::time::sleep(Duration::from_millis(10)).await;
    assert_eq!(h.backend.controller.status(&name("elsewhere"), &o)["sizeGiB"], 9);
}

#[tokio::test(start_paused = true)]
async fn failover_between_two_hosts_on_one_ec2() {
    let ec2 = world();
    let a = host(&ec2, "i-a");
    let b_off = host(&ec2, "i-b");
    let b_on = host_with(&ec2, "i-b", &service("i-b", AZ, true, &[]));
    let o = opts(&a, &[]);
    a.backend.controller.create(&name("db"), &o, false).await.unwrap();
    a.backend.activate_here(&name("db"), &o).await.unwrap();
    // A dies with the volume attached. B without preempt is refused, naming A.
    let err = b_off.backend.activate_here(&name("db"), &o).await.unwrap_err().to_string();
    assert!(err.contains("instance i-a"), "{err}");
    // With preempt, B takes it over.
    b_on.backend.activate_here(&name("db"), &o).await.unwrap();
    let v = only(&ec2, "db");
    assert_eq!(v.attachments.len(), 1);
    assert_eq!(v.attachments[0].instance_id, "i-b");
    // A's view (were it alive) sees nothing to detach any more.
    ec2.take_calls();
    a.backend.deactivate_here(&name("db"), &o).await.unwrap();
    assert!(!ops(&ec2.calls()).contains(&Op::DetachVolume));
    let _ = &b_off.ec2;
}

#[test]
fn client_tokens_are_64_hex_characters() {
    let t = client_token("db1");
    assert_eq!(t.len(), 64);
    assert!(t.bytes().all(|b| b.is_ascii_hexdigit()));
    assert_ne!(t, client_token("db1-1"));
    assert_eq!(super::naming::filter_literal("a*b?c\\"), "a\\*b\\?c\\\\");
    assert_eq!(nvme_link_name("vol-0abc"), "nvme-Amazon_Elastic_Block_Store_vol0abc");
}

#[tokio::test(start_paused = true)]
async fn a_detach_tags_the_volume_with_its_last_use_and_usage_sees_every_host() {
    let ec2 = world();
    let a = host(&ec2, "i-a");
    let o = opts(&a, &[]);
    a.backend.controller.create(&name("v"), &o, false).await.unwrap();
    let usage = a.backend.controller.usage(&name("v"));
    assert!(usage.published_to.is_empty());
    assert_eq!(usage.last_used, only(&ec2, "v").create_time, "never used: its creation");
    a.backend.activate_here(&name("v"), &o).await.unwrap();
    assert_eq!(a.backend.controller.usage(&name("v")).published_to, ["i-a"]);
    // Another host sees it attached to i-a (after its cache refresh).
    let b = host(&ec2, "i-b");
    assert!(b.backend.controller.knows(&name("v")).await);
    assert_eq!(b.backend.controller.usage(&name("v")).published_to, ["i-a"]);
    let before = std::time::SystemTime::now();
    a.backend.deactivate_here(&name("v"), &o).await.unwrap();
    // The tag is written in the background.
    tokio::time::sleep(Duration::from_millis(10)).await;
    let tag = only(&ec2, "v").tags.get(super::naming::LAST_USED_TAG).cloned().expect("tagged at the detach");
    let at = humantime::parse_rfc3339(&tag).unwrap();
    assert!(at + Duration::from_secs(2) >= before, "{tag}");
    let usage = a.backend.controller.usage(&name("v"));
    assert!(usage.published_to.is_empty());
    assert_eq!(usage.last_used.as_deref(), Some(tag.as_str()));
}
