//! Resize against the fake EC2: ModifyVolume, the wait until the new size is usable, the
//! refusals, and idempotence (an interrupted resize finished by running it again).

use std::time::Duration;

use tokio::time::Instant;

use super::api::{CloudError, Ec2Api, ModifyVolumeRequest};
use super::fake::Op;
use super::tests::{host, name, only, opts, world};

#[tokio::test(start_paused = true)]
async fn a_resize_waits_until_the_new_size_is_usable_and_runs_once() {
    let ec2 = world();
    let h = host(&ec2, "i-a");
    let o = opts(&h, &[("size", "10")]);
    h.backend.controller.create(&name("v"), &o, false).await.unwrap();
    ec2.set_modify_polls(3);
    let start = Instant::now();
    assert_eq!(h.backend.controller.expand(&name("v"), &o, 20).await.unwrap(), 20);
    assert_eq!(only(&ec2, "v").size_gib, 20);
    assert_eq!(ec2.count(Op::ModifyVolume), 1);
    assert!(start.elapsed() < Duration::from_secs(5), "{:?}", start.elapsed());
    // Again (a retry, or a restart finishing it): nothing more is asked of EC2.
    assert_eq!(h.backend.controller.expand(&name("v"), &o, 20).await.unwrap(), 20);
    assert_eq!(ec2.count(Op::ModifyVolume), 1);
}

#[tokio::test(start_paused = true)]
async fn shrinking_is_refused_before_any_modification() {
    let ec2 = world();
    let h = host(&ec2, "i-a");
    let o = opts(&h, &[("size", "10")]);
    h.backend.controller.create(&name("v"), &o, false).await.unwrap();
    let err = h.backend.controller.expand(&name("v"), &o, 5).await.unwrap_err().to_string();
    assert!(err.contains("is 10 GiB") && err.contains("never shrink") && err.contains("5 GiB"), "{err}");
    assert_eq!(ec2.count(Op::ModifyVolume), 0);
}

#[tokio::test(start_paused = true)]
async fn a_modification_to_another_size_under_way_is_refused_and_one_to_this_size_is_waited_for() {
    let ec2 = world();
    let h = host(&ec2, "i-a");
    let o = opts(&h, &[("size", "10")]);
    h.backend.controller.create(&name("v"), &o, false).await.unwrap();
    let id = only(&ec2, "v").id;
    ec2.set_modify_polls(3);
    let req = ModifyVolumeRequest { volume_id: id, size_gib: Some(30), ..Default::default() };
    ec2.modify_volume(&req).await.unwrap();
    let err = h.backend.controller.expand(&name("v"), &o, 20).await.unwrap_err().to_string();
    assert!(err.contains("a modification to 30 GiB is modifying"), "{err}");
    // The same size as the one under way (a resize interrupted after ModifyVolume): waited for.
    assert_eq!(h.backend.controller.expand(&name("v"), &o, 30).await.unwrap(), 30);
    assert_eq!(ec2.count(Op::ModifyVolume), 1);
}

#[tokio::test(start_paused = true)]
async fn ec2_refusing_a_modification_says_why_and_what_to_do() {
    let ec2 = world();
    let h = host(&ec2, "i-a");
    let o = opts(&h, &[("size", "10")]);
    h.backend.controller.create(&name("v"), &o, false).await.unwrap();
    ec2.fail_next(
        Op::ModifyVolume,
        CloudError::from_code(
            "IncorrectModificationState",
            "You've reached the maximum modification rate per volume limit.",
            Some(400),
        ),
    );
    let err = h.backend.controller.expand(&name("v"), &o, 20).await.unwrap_err().to_string();
    assert!(err.contains("maximum modification rate") && err.contains("six hours"), "{err}");
    assert_eq!(only(&ec2, "v").size_gib, 10);
}
