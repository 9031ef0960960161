//! EBS snapshots against [`FakeEc2`] on tokio's paused clock: tags, the wait, retries, the
//! namespaces of `ls`, copies across regions, and volumes made from snapshots.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;

use super::api::{CloudError, SnapshotState};
use super::fake::{Ec2Call, FakeDeviceHost, FakeEc2, Op, FAKE_ACCOUNT};
use super::snapshots::{COPIED_FROM_TAG, SNAPSHOT_VOLUME_TAG};
use super::tests::{host, host_with, name, only, opts, service, world, Host, AZ};
use super::*;
use crate::backend::snapshot::{NewSnapshot, SnapshotCopy, SnapshotFilter};
use crate::backend::{Controller, Snapshots};
use crate::os::fake::{Call, FakeOs};

fn snap_ops(h: &Host) -> &dyn Snapshots {
    h.ebs.snapshots().expect("ebs has snapshots")
}

fn named(n: &str) -> NewSnapshot {
    NewSnapshot { name: Some(n.into()), description: None }
}

async fn volume(h: &Host, n: &str) -> Volume {
    h.backend.controller.create(&name(n), &opts(h, &[]), false).await.unwrap();
    only(&h.ec2, &h.ebs.name_tag(&name(n)))
}

#[tokio::test(start_paused = true)]
async fn a_snapshot_is_tagged_in_its_create_call_after_a_sync_and_waited_for() {
    let ec2 = world();
    let h = host(&ec2, "i-a");
    let v = volume(&h, "v1").await;
    h.backend.activate_here(&name("v1"), &opts(&h, &[])).await.unwrap();
    ec2.set_snapshot_polls(3);
    h.os.take_calls();
    ec2.take_calls();

    let started = snap_ops(&h).create_snapshot(&name("v1"), &named("nightly")).await.unwrap();
    assert_eq!(started.state, "pending");
    assert_eq!((started.name.as_deref(), started.volume.as_deref()), (Some("nightly"), Some("v1")));
    assert_eq!(
        (started.volume_id.as_str(), started.size_gib, started.region.as_str()),
        (v.id.as_str(), 16, "us-east-1")
    );
    let os_calls = h.os.take_calls();
    assert!(
        os_calls.iter().any(|c| matches!(c, Call::Syncfs { target } if target == Path::new("/mnt/v1"))),
        "{os_calls:?}"
    );
    let calls = ec2.take_calls();
    let Some(Ec2Call::CreateSnapshot(req)) = calls.iter().find(|c| c.op() == Op::CreateSnapshot) else {
        panic!("{calls:?}")
    };
    assert_eq!(req.volume_id, v.id);
    assert_eq!(req.description, format!("rexray snapshot of volume v1 ({})", v.id));
    let expected: BTreeMap<String, String> =
        [("Name", "nightly"), (OWNER_TAG, OWNER_VALUE), (SNAPSHOT_VOLUME_TAG, "v1")]
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
    assert_eq!(req.tags, expected);

    let start = Instant::now();
    let done = snap_ops(&h).wait_snapshot(&started.id, None, Duration::from_secs(60)).await.unwrap();
    assert_eq!((done.state.as_str(), done.progress.as_deref()), ("completed", Some("100%")));
    assert_eq!(start.elapsed(), Duration::from_secs(1 + 2), "polls at 0 s, 1 s and 3 s");
    assert_eq!(ec2.count(Op::DescribeSnapshots), 3);
}

#[tokio::test(start_paused = true)]
async fn an_unmounted_volume_is_snapshotted_without_a_sync_under_its_own_name() {
    let ec2 = world();
    let h = host(&ec2, "i-a");
    volume(&h, "v1").await;
    h.os.take_calls();
    let s = snap_ops(&h).create_snapshot(&name("v1"), &NewSnapshot::default()).await.unwrap();
    assert_eq!(s.name.as_deref(), Some("v1"));
    assert!(!h.os.take_calls().iter().any(|c| matches!(c, Call::Syncfs { .. })));

    let err = snap_ops(&h).create_snapshot(&name("nope"), &NewSnapshot::default()).await.unwrap_err().to_string();
    assert!(err.contains("volume nope does not exist in EC2 region us-east-1"), "{err}");
    let err = snap_ops(&h).create_snapshot(&name("v1"), &named(&"x".repeat(300))).await.unwrap_err().to_string();
    assert!(err.contains("longer than 255"), "{err}");
    assert_eq!(ec2.count(Op::CreateSnapshot), 1, "bad input makes no CreateSnapshot call");
}

#[tokio::test(start_paused = true)]
async fn create_retries_throttling_but_never_a_transient_failure() {
    let ec2 = world();
    let h = host(&ec2, "i-a");
    volume(&h, "v1").await;
    ec2.fail_next(Op::CreateSnapshot, CloudError::transient("connection reset by peer"));
    let err = snap_ops(&h).create_snapshot(&name("v1"), &NewSnapshot::default()).await.unwrap_err().to_string();
    assert!(err.contains("connection reset by peer") && err.contains("rexray snapshot ls"), "{err}");
    assert_eq!(ec2.count(Op::CreateSnapshot), 1);
    ec2.throttle(Op::CreateSnapshot, 2);
    snap_ops(&h).create_snapshot(&name("v1"), &NewSnapshot::default()).await.unwrap();
    assert_eq!(ec2.count(Op::CreateSnapshot), 4);
    assert_eq!(ec2.snapshots().len(), 1);
}

#[tokio::test(start_paused = true)]
async fn a_failed_snapshot_or_the_deadline_ends_the_wait() {
    let ec2 = world();
    let h = host(&ec2, "i-a");
    volume(&h, "v1").await;
    ec2.set_failing_snapshots(true);
    let s = snap_ops(&h).create_snapshot(&name("v1"), &NewSnapshot::default()).await.unwrap();
    let err = snap_ops(&h).wait_snapshot(&s.id, None, Duration::from_secs(60)).await.unwrap_err().to_string();
    assert!(err.contains(&format!("snapshot {} in us-east-1 failed", s.id)), "{err}");

    ec2.set_failing_snapshots(false);
    ec2.set_snapshot_polls(1_000);
    let s = snap_ops(&h).create_snapshot(&name("v1"), &NewSnapshot::default()).await.unwrap();
    let start = Instant::now();
    let err = snap_ops(&h).wait_snapshot(&s.id, None, Duration::from_secs(40)).await.unwrap_err().to_string();
    assert!(err.contains("is still pending (50%)") && err.contains("EC2 goes on with it"), "{err}");
    assert_eq!(start.elapsed(), Duration::from_secs(40));

    let err = snap_ops(&h).wait_snapshot("snap-0000000000000000f", None, Duration::from_secs(5)).await.unwrap_err();
    assert!(err.to_string().contains("does not exist in EC2 region us-east-1"), "{err}");
}

#[tokio::test(start_paused = true)]
async fn ls_shows_rexrays_snapshots_in_its_namespace_every_owned_one_or_the_given_ids() {
    let ec2 = world();
    let h = host_with(&ec2, "i-a", &service("i-a", AZ, false, &[("tag", "prod")]));
    let v = volume(&h, "db").await;
    assert_eq!(v.name_tag(), Some("prod/db"));
    let ours = snap_ops(&h).create_snapshot(&name("db"), &named("nightly")).await.unwrap();
    assert_eq!(ec2.snapshot(&ours.id).unwrap().tags["Name"], "prod/nightly");
    // Made elsewhere: AWS Backup's snapshot of our volume, another namespace's, another account's.
    let backup = ec2.add_snapshot(&v.id, 16, FAKE_ACCOUNT, &[("aws:backup:source-resource", "x")]);
    let other_ns = ec2.add_snapshot("vol-1", 8, FAKE_ACCOUNT, &[("Name", "dev/x"), (OWNER_TAG, OWNER_VALUE)]);
    let public = ec2.add_snapshot("vol-2", 8, "999999999999", &[]);

    let managed = snap_ops(&h).list_snapshots(&SnapshotFilter::Managed).await.unwrap();
    assert_eq!(managed.iter().map(|s| s.id.as_str()).collect::<Vec<_>>(), [ours.id.as_str()]);
    assert_eq!(managed[0].name.as_deref(), Some("nightly"), "the namespace is not shown");
    let all = snap_ops(&h).list_snapshots(&SnapshotFilter::All).await.unwrap();
    let mut ids: Vec<&str> = all.iter().map(|s| s.id.as_str()).collect();
    ids.sort_unstable();
    let mut expected = vec![ours.id.as_str(), backup.as_str(), other_ns.as_str()];
    expected.sort_unstable();
    assert_eq!(ids, expected, "only this account's");
    let b = all.iter().find(|s| s.id == backup).unwrap();
    assert_eq!(b.volume.as_deref(), Some("db"), "the volume is named from the cache");
    let by_id = snap_ops(&h).list_snapshots(&SnapshotFilter::Ids(vec![public.clone()])).await.unwrap();
    assert_eq!(by_id.len(), 1);
    assert_eq!((by_id[0].volume.as_deref(), by_id[0].volume_id.as_str()), (None, "vol-2"));

    ec2.take_calls();
    let err = snap_ops(&h).list_snapshots(&SnapshotFilter::Ids(vec!["snap-00000000000000abc".into()])).await;
    assert!(err.unwrap_err().to_string().contains("InvalidSnapshot.NotFound"));
    let err = snap_ops(&h).list_snapshots(&SnapshotFilter::Ids(vec!["vol-1".into()])).await.unwrap_err();
    assert!(err.to_string().contains("\"vol-1\": it is not an EBS snapshot ID"), "{err}");
    assert_eq!(err.kind(), crate::backend::ErrorKind::NotFound, "a malformed ID names no snapshot");
    assert_eq!(ec2.count(Op::DescribeSnapshots), 1, "a malformed ID makes no call");
}

#[tokio::test(start_paused = true)]
async fn rm_deletes_and_names_a_missing_snapshot() {
    let ec2 = world();
    let h = host(&ec2, "i-a");
    volume(&h, "v1").await;
    let s = snap_ops(&h).create_snapshot(&name("v1"), &NewSnapshot::default()).await.unwrap();
    snap_ops(&h).remove_snapshot(&s.id).await.unwrap();
    assert!(ec2.snapshots().is_empty());
    let err = snap_ops(&h).remove_snapshot(&s.id).await.unwrap_err().to_string();
    assert_eq!(err, format!("snapshot {} does not exist in EC2 region us-east-1", s.id));
    ec2.take_calls();
    assert!(snap_ops(&h).remove_snapshot("../etc").await.is_err());
    assert!(ec2.calls().is_empty());
}

/// A host whose client factory serves `us-east-1` from `east` and `us-west-2` from `west`,
/// recording the regions it is asked for.
fn two_region_host(east: &Arc<FakeEc2>, west: &Arc<FakeEc2>) -> (Host, Arc<Mutex<Vec<String>>>) {
    let asked = Arc::new(Mutex::new(Vec::new()));
    let (e, w, log): (Arc<dyn Ec2Api>, Arc<dyn Ec2Api>, _) = (east.clone(), west.clone(), asked.clone());
    let os = Arc::new(FakeOs::new());
    let devices = Arc::new(FakeDeviceHost::new(Arc::clone(east), "i-a", "/links"));
    let factory: ApiFactory = Box::new(move |conn| {
        log.lock().unwrap().push(conn.region.clone());
        let api = if conn.region == "us-west-2" { Arc::clone(&w) } else { Arc::clone(&e) };
        Box::pin(async move { api })
    });
    let svc = service("i-a", AZ, false, &[]);
    (super::tests::host_from(east, os, devices, &svc, factory), asked)
}

#[tokio::test(start_paused = true)]
async fn copy_is_sent_to_the_destination_region_with_the_source_region_and_tags() {
    let east = world();
    let west = Arc::new(FakeEc2::new());
    west.add_peer("us-east-1", Arc::clone(&east));
    let (h, asked) = two_region_host(&east, &west);
    volume(&h, "v1").await;
    let source = snap_ops(&h).create_snapshot(&name("v1"), &named("nightly")).await.unwrap();

    west.set_snapshot_polls(2);
    let req = SnapshotCopy { name: Some("dr".into()), description: None, destination_region: Some("us-west-2".into()) };
    let copy = snap_ops(&h).copy_snapshot(&source.id, &req).await.unwrap();
    assert_eq!(
        (copy.region.as_str(), copy.name.as_deref(), copy.volume.as_deref()),
        ("us-west-2", Some("dr"), Some("v1"))
    );
    assert_ne!(copy.id, source.id);
    let calls = west.calls();
    let Some(Ec2Call::CopySnapshot(sent)) = calls.iter().find(|c| c.op() == Op::CopySnapshot) else {
        panic!("{calls:?}")
    };
    assert_eq!((sent.source_snapshot_id.as_str(), sent.source_region.as_str()), (source.id.as_str(), "us-east-1"));
    assert_eq!(sent.description, format!("Copy of {} from us-east-1", source.id));
    assert_eq!(sent.tags[COPIED_FROM_TAG], format!("us-east-1/{}", source.id));
    assert_eq!(sent.tags[SNAPSHOT_VOLUME_TAG], "v1");
    assert_eq!(east.count(Op::CopySnapshot), 0);

    let done = snap_ops(&h).wait_snapshot(&copy.id, Some("us-west-2"), Duration::from_secs(60)).await.unwrap();
    assert_eq!(done.state, SnapshotState::Completed.as_str());
    // A second copy reuses the west client; a same-region copy uses the host's.
    snap_ops(&h).copy_snapshot(&source.id, &SnapshotCopy::default()).await.unwrap();
    snap_ops(&h).copy_snapshot(&source.id, &req).await.unwrap();
    assert_eq!(*asked.lock().unwrap(), ["us-east-1", "us-west-2"]);
    assert_eq!(east.snapshots().len(), 2, "the source and its same-region copy");

    let bad = SnapshotCopy { destination_region: Some("Mars".into()), ..SnapshotCopy::default() };
    let err = snap_ops(&h).copy_snapshot(&source.id, &bad).await.unwrap_err().to_string();
    assert!(err.contains("\"Mars\" is not an AWS region name"), "{err}");
    let missing = snap_ops(&h).copy_snapshot("snap-000000000000000ff", &req).await.unwrap_err().to_string();
    assert!(missing.contains("snapshot snap-000000000000000ff does not exist in EC2 region us-east-1"), "{missing}");
}

#[tokio::test(start_paused = true)]
async fn a_volume_is_created_from_a_snapshot_with_the_snapshots_size() {
    let ec2 = world();
    let h = host(&ec2, "i-a");
    volume(&h, "v1").await;
    let s = snap_ops(&h).create_snapshot(&name("v1"), &NewSnapshot::default()).await.unwrap();
    let o = opts(&h, &[("snapshotID", s.id.as_str())]);
    assert!(!o.contains_key("size"), "{o:?}");
    h.backend.controller.create(&name("restored"), &o, false).await.unwrap();
    let restored = only(&ec2, "restored");
    assert_eq!((restored.snapshot_id.as_deref(), restored.size_gib), (Some(s.id.as_str()), 16));

    let o = opts(&h, &[("snapshotID", "snap-0000000000000dead")]);
    let err = h.backend.controller.create(&name("r2"), &o, false).await.unwrap_err().to_string();
    assert!(err.contains("InvalidSnapshot.NotFound"), "{err}");
}
