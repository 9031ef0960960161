//! Moving a volume to another zone against the fake EC2: the name follows the copy and never
//! answers for two volumes, the old volume is kept (renamed) until asked to delete it, repeats
//! change nothing, refusals come before any change, a move EC2 refuses is undone, and one that
//! runs out of time is finished by the next call.

use std::time::Duration;

use std::sync::Arc;

use super::api::{CloudError, Volume};
use super::fake::{Ec2Call, FakeEc2, Op};
use super::relocate::{MOVED_FROM_TAG, MOVED_TO_TAG, MOVE_TAG};
use super::tests::{host, host_with, name, only, opts, service, world, Host};
use crate::backend::{ErrorKind, Moved, NodeId, Options, PageRequest};

/// A fake EC2 with volume `v` made by host `i-a` in us-east-1a with `pairs`: the host, the
/// options, and EC2's volume.
async fn volume_v(pairs: &[(&str, &str)]) -> (Arc<FakeEc2>, Host, Options, Volume) {
    let ec2 = world();
    let a = host(&ec2, "i-a");
    let o = opts(&a, pairs);
    a.backend.controller.create(&name("v"), &o, false).await.unwrap();
    let old = only(&ec2, "v");
    (ec2, a, o, old)
}

fn count(calls: &[Ec2Call], op: Op) -> usize {
    calls.iter().filter(|c| c.op() == op).count()
}

#[tokio::test(start_paused = true)]
async fn a_volume_moves_and_its_name_follows_the_copy() {
    let (ec2, a, o, old) =
        volume_v(&[("size", "20"), ("volumeType", "gp3"), ("throughput", "250"), ("tags", "team=db")]).await;
    let (c, v) = (&a.backend.controller, name("v"));
    ec2.set_snapshot_polls(2);
    ec2.take_calls();

    let plan = c.plan_move(&v, "us-east-1b").await.unwrap();
    assert_eq!((plan.zone.as_str(), plan.source.as_str()), ("us-east-1b", old.id.as_str()));
    assert!(ec2.take_calls().iter().all(|c| matches!(c.op(), Op::DescribeVolumes)), "planning changes nothing");
    assert!(matches!(c.relocate(&v, &plan, false).await.unwrap(), Moved::Done));
    let calls = ec2.take_calls();
    assert_eq!((count(&calls, Op::CreateSnapshot), count(&calls, Op::CreateVolume)), (1, 1), "{calls:?}");

    let new = only(&ec2, "v");
    assert_ne!(new.id, old.id);
    assert_eq!(new.availability_zone, "us-east-1b");
    assert_eq!((new.size_gib, new.volume_type.as_str(), new.throughput), (20, "gp3", Some(250)));
    assert_eq!(new.tags.get("team").map(String::as_str), Some("db"), "the user's tags travel");
    assert_eq!(new.tags.get("rexray-rs/fsType"), old.tags.get("rexray-rs/fsType"), "so do the fixed options");
    assert_eq!(new.tags.get(MOVED_FROM_TAG), Some(&old.id));
    let snap = new.snapshot_id.clone().expect("made from the move's snapshot");
    assert!(ec2.snapshot(&snap).is_none(), "the move's snapshot is deleted once it served");
    let kept = ec2.volume(&old.id).expect("the old volume is kept");
    assert_eq!(kept.tags["Name"], format!("v/moved-to-{}", new.id));
    assert_eq!(kept.tags.get(MOVED_TO_TAG), Some(&new.id));
    assert_eq!(kept.availability_zone, "us-east-1a");
    let status = c.status(&v, &o);
    assert_eq!(status["availabilityZone"], "us-east-1b");
    assert_eq!(status["movedFrom"], old.id.as_str());

    // Every host lists the name once; the renamed old volume is no one's name.
    let b = host(&ec2, "i-b");
    let page = b.backend.controller.list(&PageRequest::default()).await.unwrap();
    assert_eq!(page.names, vec!["v".to_owned()]);
    // A host in the new zone uses it; one in the old zone is told where it is.
    let cz = host_with(&ec2, "i-c", &service("i-c", "us-east-1b", false, &[]));
    cz.backend.controller.publish(&v, &o, &NodeId("i-c".into())).await.unwrap();
    cz.backend.controller.unpublish(&v, &o, &NodeId("i-c".into())).await.unwrap();
    let e = b.backend.controller.publish(&v, &o, &NodeId("i-b".into())).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::WrongZone, "{e}");

    // The same move again changes nothing; asked again with --delete-source it deletes the old one.
    assert!(matches!(c.relocate(&v, &plan, false).await.unwrap(), Moved::Done));
    let calls = ec2.take_calls();
    assert!(
        !calls.iter().any(|c| matches!(c.op(), Op::CreateSnapshot | Op::CreateVolume | Op::DeleteVolume)),
        "{calls:?}"
    );
    let again = c.plan_move(&v, "us-east-1b").await.unwrap();
    assert_eq!(again.source, new.id);
    assert!(matches!(c.relocate(&v, &again, true).await.unwrap(), Moved::Done));
    assert!(ec2.volume(&old.id).is_none(), "--delete-source deletes the old volume");
    assert_eq!(only(&ec2, "v").id, new.id);
    assert_eq!(ec2.volumes().len(), 1);
}

#[tokio::test(start_paused = true)]
async fn a_move_is_refused_before_any_change_when_it_cannot_be_made() {
    let (ec2, a, o, _) = volume_v(&[("size", "1")]).await;
    let (c, v) = (&a.backend.controller, name("v"));
    let e = c.plan_move(&v, "Mars").await.unwrap_err();
    assert!(e.to_string().contains("zone") && e.to_string().contains("Mars"), "{e}");
    let e = c.plan_move(&name("nope"), "us-east-1b").await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::NotFound, "{e}");
    let b = host(&ec2, "i-b");
    b.backend.controller.publish(&v, &o, &NodeId("i-b".into())).await.unwrap();
    let e = c.plan_move(&v, "us-east-1b").await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::AttachedElsewhere, "{e}");
    assert!(e.to_string().contains("i-b"), "{e}");
    assert!(!ec2.calls().iter().any(|c| matches!(c.op(), Op::CreateSnapshot)), "nothing was snapshotted");

    // Attached after the plan, before the snapshot: refused then, and nothing is left.
    b.backend.controller.unpublish(&v, &o, &NodeId("i-b".into())).await.unwrap();
    let plan = c.plan_move(&v, "us-east-1b").await.unwrap();
    b.backend.controller.publish(&v, &o, &NodeId("i-b".into())).await.unwrap();
    match c.relocate(&v, &plan, true).await.unwrap() {
        Moved::Undone(e) => assert_eq!(e.kind(), ErrorKind::AttachedElsewhere, "{e}"),
        other => panic!("{other:?}"),
    }
    assert_eq!((ec2.volumes().len(), ec2.snapshots().len()), (1, 0));
}

#[tokio::test(start_paused = true)]
async fn a_move_ec2_refuses_is_undone() {
    let (ec2, a, _, old) = volume_v(&[("size", "1")]).await;
    let (c, v) = (&a.backend.controller, name("v"));

    // The zone is not one of the region's: CreateVolume refuses it.
    let plan = c.plan_move(&v, "us-east-1z").await.unwrap();
    ec2.fail_next(
        Op::CreateVolume,
        CloudError::from_code("InvalidParameterValue", "Invalid availability zone: [us-east-1z]", Some(400)),
    );
    match c.relocate(&v, &plan, true).await.unwrap() {
        Moved::Undone(e) => assert!(e.to_string().contains("us-east-1z"), "{e}"),
        other => panic!("{other:?}"),
    }
    assert_eq!(only(&ec2, "v").id, old.id, "the volume stays where it was");
    assert_eq!((ec2.volumes().len(), ec2.snapshots().len()), (1, 0), "nothing of the move is left");

    // The snapshot fails.
    ec2.set_failing_snapshots(true);
    let plan = c.plan_move(&v, "us-east-1b").await.unwrap();
    assert!(matches!(c.relocate(&v, &plan, false).await.unwrap(), Moved::Undone(_)));
    ec2.set_failing_snapshots(false);
    assert_eq!(only(&ec2, "v").id, old.id);
    assert_eq!((ec2.volumes().len(), ec2.snapshots().len()), (1, 0));

    // The copy vanishes (an encryption key EC2 cannot use).
    let plan = c.plan_move(&v, "us-east-1b").await.unwrap();
    ec2.fail_next(Op::CreateTags, CloudError::from_code("UnauthorizedOperation", "not allowed to tag", Some(403)));
    assert!(matches!(c.relocate(&v, &plan, false).await.unwrap(), Moved::Undone(_)));
    assert_eq!(only(&ec2, "v").id, old.id, "the old volume keeps its name when it cannot be renamed");
    assert_eq!((ec2.volumes().len(), ec2.snapshots().len()), (1, 0));
}

#[tokio::test(start_paused = true)]
async fn a_slow_snapshot_leaves_the_move_for_the_next_call() {
    let (ec2, a, _, old) = volume_v(&[("size", "1")]).await;
    let (c, v) = (&a.backend.controller, name("v"));
    ec2.set_snapshot_polls(10);
    let plan = c.plan_move(&v, "us-east-1b").await.unwrap();
    let budget =
        crate::deadline::Budget { caller: "a test's 30 s", total: Duration::from_secs(30), reserve: Duration::ZERO };
    let e = crate::deadline::within(budget, c.relocate(&v, &plan, false)).await.unwrap_err();
    assert!(e.is_transient() && e.to_string().contains("run the same `rexray volume move` again"), "{e}");
    assert_eq!(only(&ec2, "v").id, old.id, "the name stays until the copy exists");
    assert_eq!(ec2.snapshots().len(), 1, "EC2 goes on with the snapshot");
    // The next call finds the snapshot again rather than making a second one.
    assert!(matches!(crate::deadline::within(budget, c.relocate(&v, &plan, false)).await.unwrap(), Moved::Done));
    assert_eq!(ec2.count(Op::CreateSnapshot), 1);
    let new = only(&ec2, "v");
    assert_eq!(new.availability_zone, "us-east-1b");
    assert_eq!(new.tags.get(MOVE_TAG), Some(&plan.id));
}

#[tokio::test(start_paused = true)]
async fn a_copy_deleted_by_hand_before_it_took_the_name_gives_the_name_back() {
    let (ec2, a, _, old) = volume_v(&[("size", "1")]).await;
    let (c, v) = (&a.backend.controller, name("v"));
    let plan = c.plan_move(&v, "us-east-1b").await.unwrap();
    // The move got as far as renaming the old volume (step 4), then its copy was deleted.
    let copy = ec2.add_volume("us-east-1b", 1, &[(MOVE_TAG, plan.id.as_str()), (MOVED_FROM_TAG, old.id.as_str())]);
    let renamed = std::collections::BTreeMap::from([
        ("Name".to_owned(), format!("v/moved-to-{copy}")),
        (MOVED_TO_TAG.to_owned(), copy.clone()),
    ]);
    super::api::Ec2Api::create_tags(ec2.as_ref(), &old.id, &renamed).await.unwrap();
    super::api::Ec2Api::delete_volume(ec2.as_ref(), &copy).await.unwrap();
    assert!(ec2.by_name("v").is_empty());
    match c.relocate(&v, &plan, true).await.unwrap() {
        Moved::Undone(e) => assert!(e.to_string().contains("went back"), "{e}"),
        other => panic!("{other:?}"),
    }
    assert_eq!(only(&ec2, "v").id, old.id, "the name is back on the old volume");
    // Moved again later, it moves as any volume does.
    let plan = c.plan_move(&v, "us-east-1b").await.unwrap();
    assert!(matches!(c.relocate(&v, &plan, true).await.unwrap(), Moved::Done));
    assert_eq!(only(&ec2, "v").availability_zone, "us-east-1b");
    assert!(ec2.volume(&old.id).is_none());
}

#[tokio::test(start_paused = true)]
async fn a_source_deleted_by_hand_mid_move_leaves_the_name_to_the_copy() {
    let (ec2, a, _, old) = volume_v(&[("size", "1")]).await;
    let (c, v) = (&a.backend.controller, name("v"));
    let plan = c.plan_move(&v, "us-east-1b").await.unwrap();
    let copy = ec2.add_volume("us-east-1b", 1, &[(MOVE_TAG, plan.id.as_str()), (MOVED_FROM_TAG, old.id.as_str())]);
    super::api::Ec2Api::delete_volume(ec2.as_ref(), &old.id).await.unwrap();
    assert!(matches!(c.relocate(&v, &plan, false).await.unwrap(), Moved::Done));
    assert_eq!(only(&ec2, "v").id, copy);
    // With neither left, the move says what is gone.
    super::api::Ec2Api::delete_volume(ec2.as_ref(), &copy).await.unwrap();
    match c.relocate(&v, &plan, false).await.unwrap() {
        Moved::Undone(e) => assert_eq!(e.kind(), ErrorKind::NotFound, "{e}"),
        other => panic!("{other:?}"),
    }
}
