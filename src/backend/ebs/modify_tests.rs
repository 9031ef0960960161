//! Modify against the fake EC2: the limits checked before any call, ModifyVolume with only
//! what changes, the modification shown in the status while it runs, idempotence, and the
//! refusals.

use super::api::{CloudError, Ec2Api, ModifyVolumeRequest};
use super::fake::{Ec2Call, Op};
use super::tests::{host, name, only, opts, world};
use crate::backend::BackendError;

fn changes(pairs: &[(&str, &str)]) -> std::collections::BTreeMap<String, String> {
    pairs.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect()
}

fn refusal(result: Result<crate::backend::Options, BackendError>) -> String {
    result.unwrap_err().to_string()
}

#[tokio::test]
async fn changes_are_checked_against_ebs_limits_before_any_call() {
    let ec2 = world();
    let h = host(&ec2, "i-a");
    let c = &h.backend.controller;
    let v = name("v");
    let o = opts(&h, &[("size", "10"), ("volumeType", "gp3")]);
    let before = ec2.calls().len();
    let plan = |pairs: &[(&str, &str)]| c.plan_modify(&v, &o, &changes(pairs));
    assert!(refusal(plan(&[])).contains("nothing to change"));
    let e = refusal(plan(&[("size", "20")]));
    assert!(e.contains("size") && e.contains("resize"), "{e}");
    let e = refusal(plan(&[("iops", "6000")]));
    assert!(e.contains("a 10 GiB gp3 volume takes at most 5000 iops") && e.contains("grow it to 12 GiB"), "{e}");
    let e = refusal(plan(&[("throughput", "1000")]));
    assert!(e.contains("gp3 at 3000 iops takes at most 750 MiB/s") && e.contains("--iops 4000"), "{e}");
    let e = refusal(plan(&[("volumeType", "io1")]));
    assert!(e.contains("io1 needs iops"), "{e}");
    let e = refusal(plan(&[("volumeType", "io1"), ("iops", "1000")]));
    assert!(e.contains("at most 500 iops (50 per GiB)"), "{e}");
    let e = refusal(plan(&[("volumeType", "st1")]));
    assert!(e.contains("st1 volumes are 125 to 16384 GiB"), "{e}");
    let e = refusal(plan(&[("volumeType", "gp9")]));
    assert!(e.contains("gp9"), "{e}");
    assert_eq!(ec2.calls().len(), before, "no call for a refused change");

    // Accepted: aliases, and a new type that takes no IOPS drops the old ones.
    let t = plan(&[("type", "gp3"), ("IOPS", "5000"), ("throughput", "500")]).unwrap();
    assert_eq!((t["volumeType"].as_str(), t["iops"].as_str(), t["throughput"].as_str()), ("gp3", "5000", "500"));
    let gp3 = opts(&h, &[("size", "10"), ("volumeType", "gp3"), ("iops", "4000"), ("throughput", "300")]);
    let t = c.plan_modify(&v, &gp3, &changes(&[("volumeType", "gp2")])).unwrap();
    assert!(t["volumeType"] == "gp2" && !t.contains_key("iops") && !t.contains_key("throughput"), "{t:?}");
    assert_eq!(t["size"], "10");
}

#[tokio::test(start_paused = true)]
async fn a_modification_asks_ec2_once_for_what_changes_and_shows_in_the_status() {
    let ec2 = world();
    let h = host(&ec2, "i-a");
    let c = &h.backend.controller;
    let v = name("v");
    let o = opts(&h, &[("size", "20"), ("volumeType", "gp3")]);
    c.create(&v, &o, false).await.unwrap();
    ec2.set_modify_polls(3);
    let target = c.plan_modify(&v, &o, &changes(&[("iops", "6000"), ("throughput", "500")])).unwrap();
    c.modify(&v, &target).await.unwrap();
    let sent: Vec<_> = ec2
        .calls()
        .into_iter()
        .filter_map(|call| match call {
            Ec2Call::ModifyVolume(req) => Some(req),
            _ => None,
        })
        .collect();
    assert_eq!(sent.len(), 1);
    assert_eq!((sent[0].volume_type.as_deref(), sent[0].iops, sent[0].throughput), (None, Some(6000), Some(500)));
    assert_eq!(sent[0].size_gib, None);
    let status = c.status(&v, &target);
    let shown = status["modification"].as_str().unwrap();
    assert!(shown.starts_with("modifying to gp3, 6000 IOPS, 500 MiB/s"), "{shown}");

    // Again (a retry, or a restart finishing it): the one under way is this one; nothing sent.
    c.modify(&v, &target).await.unwrap();
    assert_eq!(ec2.count(Op::ModifyVolume), 1);
    // Another change while it runs is refused with what runs.
    let other = c.plan_modify(&v, &o, &changes(&[("iops", "7000")])).unwrap();
    let e = c.modify(&v, &other).await.unwrap_err().to_string();
    assert!(e.contains("a modification is under way: modifying to gp3, 6000 IOPS"), "{e}");

    // Looking at the status again later asks EC2 how far it is (in the background), once for
    // many who look at the same moment.
    tokio::time::advance(std::time::Duration::from_secs(6)).await;
    let asked = ec2.count(Op::DescribeModification);
    for _ in 0..8 {
        let _ = c.status(&v, &target);
    }
    tokio::time::sleep(std::time::Duration::from_secs(1)).await;
    assert_eq!(ec2.count(Op::DescribeModification), asked + 1, "one refresh for eight looks");
    for _ in 0..4 {
        let _ = c.status(&v, &target);
        tokio::time::sleep(std::time::Duration::from_secs(6)).await;
    }
    let vol = only(&ec2, "v");
    assert_eq!((vol.iops, vol.throughput), (Some(6000), Some(500)));
    let shown = c.status(&v, &target)["modification"].as_str().unwrap().to_owned();
    assert!(shown.starts_with("completed to gp3"), "{shown}");
    assert_eq!(c.status(&v, &target)["iops"], 6000, "the cache has the new settings");
}

#[tokio::test]
async fn a_volume_with_these_settings_already_is_left_alone_and_ec2_refusals_say_why() {
    let ec2 = world();
    let h = host(&ec2, "i-a");
    let c = &h.backend.controller;
    let v = name("v");
    let o = opts(&h, &[("size", "20"), ("volumeType", "gp3"), ("iops", "4000")]);
    c.create(&v, &o, false).await.unwrap();
    c.modify(&v, &o).await.unwrap();
    assert_eq!(ec2.count(Op::ModifyVolume), 0);

    ec2.fail_next(
        Op::ModifyVolume,
        CloudError::from_code(
            "IncorrectModificationState",
            "You've reached the maximum modification rate per volume limit.",
            Some(400),
        ),
    );
    let target = c.plan_modify(&v, &o, &changes(&[("volumeType", "io2"), ("iops", "8000")])).unwrap();
    let e = c.modify(&v, &target).await.unwrap_err().to_string();
    assert!(e.contains("maximum modification rate") && e.contains("six hours"), "{e}");
    ec2.fail_next(Op::ModifyVolume, CloudError::from_code("UnauthorizedOperation", "not allowed", Some(403)));
    let e = c.modify(&v, &target).await.unwrap_err().to_string();
    assert!(e.contains("modify") && e.contains("not allowed"), "{e}");
    assert_eq!(only(&ec2, "v").volume_type, "gp3");
    // And a modification started elsewhere to other settings is reported as such.
    let id = only(&ec2, "v").id;
    ec2.set_modify_polls(3);
    ec2.modify_volume(&ModifyVolumeRequest { volume_id: id, iops: Some(5000), ..Default::default() }).await.unwrap();
    let e = c.modify(&v, &target).await.unwrap_err().to_string();
    assert!(e.contains("under way") && e.contains("5000 IOPS"), "{e}");
}
