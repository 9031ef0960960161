//! How soon attaches and detaches are noticed, and what the waits cost in EC2 calls, against
//! the fake with attachments that take a set time (tokio's paused clock): the device on this
//! host is watched, EC2 is asked once to confirm, polls of concurrent waits are batched, and
//! waits are bounded by time, not by a count of polls.

use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use super::api::AttachState;
use super::fake::{Ec2Call, FakeEc2};
use super::tests::{host_with, name, only, opts, service, world, Host, AZ};
use super::wait::{FALLBACK_GRID, LOCAL_LOOK};
use super::watch::GATHER;
use crate::backend::options::Options;
use crate::os::fake::CallKind;

/// The most a change may be noticed after it happened: one local look, one batched poll (whose
/// round may gather twice).
const NOTICED_WITHIN: Duration = LOCAL_LOOK.saturating_add(GATHER.saturating_mul(4));

fn state_polls(ec2: &FakeEc2) -> usize {
    ec2.calls()
        .iter()
        .filter(|c| matches!(c, Ec2Call::DescribeVolumes(q) if q.filters.iter().any(|(n, _)| n == "volume-id")))
        .count()
}

/// Host i-a (with the large device range, for 32 attachments) and the volumes `names`.
async fn created(ec2: &Arc<FakeEc2>, names: &[&str]) -> (Host, Options) {
    let h = host_with(ec2, "i-a", &service("i-a", AZ, false, &[("uselargedevicerange", "true")]));
    let o = opts(&h, &[]);
    for n in names {
        h.backend.controller.create(&name(n), &o, false).await.unwrap();
    }
    ec2.take_calls();
    (h, o)
}

#[tokio::test(start_paused = true)]
async fn an_attach_is_noticed_when_its_device_appears_not_at_the_next_poll() {
    for delta in [Duration::from_secs(2), Duration::from_secs(5)] {
        let ec2 = world();
        let (h, o) = created(&ec2, &["v"]).await;
        ec2.set_attach_time(Some(delta), false);
        let start = Instant::now();
        h.backend.activate_here(&name("v"), &o).await.unwrap();
        let overhead = start.elapsed() - delta;
        // The doubling schedule alone (0, 0.1, 0.3, 0.7, 1.5, 3.1, 6.3 s) would see it at 3.1 s
        // for Δ = 2 s and at 6.3 s for Δ = 5 s.
        assert!(overhead <= NOTICED_WITHIN, "Δ {delta:?}: noticed {overhead:?} late");
        assert!(state_polls(&ec2) <= 8, "Δ {delta:?}: {} polls", state_polls(&ec2));
        assert_eq!(only(&ec2, "v").attachments[0].state, AttachState::Attached);
    }
}

#[tokio::test(start_paused = true)]
async fn the_last_unmount_notices_the_detach_when_the_device_goes() {
    let ec2 = world();
    let (h, o) = created(&ec2, &["v"]).await;
    h.backend.activate_here(&name("v"), &o).await.unwrap();
    let delta = Duration::from_secs(1);
    ec2.set_detach_time(Some(delta));
    let start = Instant::now();
    h.backend.deactivate_here(&name("v"), &o).await.unwrap();
    let overhead = start.elapsed() - delta;
    assert!(overhead <= NOTICED_WITHIN, "noticed {overhead:?} late");
    assert!(only(&ec2, "v").attachments.is_empty());
}

#[tokio::test(start_paused = true)]
async fn an_attach_slower_than_rexrays_ten_polls_succeeds() {
    // REX-Ray's 10 polls from 100 ms gave up after 40.5 s; real attaches can take 30–60 s.
    let ec2 = world();
    let (h, o) = created(&ec2, &["v"]).await;
    let delta = Duration::from_secs(55);
    ec2.set_attach_time(Some(delta), false);
    let start = Instant::now();
    h.backend.activate_here(&name("v"), &o).await.unwrap();
    assert!(start.elapsed() - delta <= NOTICED_WITHIN, "{:?}", start.elapsed());
}

#[tokio::test(start_paused = true)]
async fn an_attachment_ec2_drops_fails_the_mount_at_once_and_formats_nothing() {
    let ec2 = world();
    let (h, o) = created(&ec2, &["v"]).await;
    ec2.set_attach_time(Some(Duration::from_secs(2)), true);
    let start = Instant::now();
    let err = h.backend.activate_here(&name("v"), &o).await.unwrap_err().to_string();
    assert!(err.contains("dropped the attachment"), "{err}");
    assert!(start.elapsed() < Duration::from_secs(10), "{:?}", start.elapsed());
    assert!(only(&ec2, "v").attachments.is_empty());
    assert!(!h.os.calls().iter().any(|c| c.kind() == CallKind::Mkfs));
    // The next mount attaches again.
    ec2.set_attach_time(None, false);
    h.backend.activate_here(&name("v"), &o).await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn without_its_device_an_attach_is_still_noticed_by_the_slow_fallback_poll() {
    // The host never shows the device (udev makes no link): EC2's answer ends the wait, on the
    // fallback schedule (1 s after the AttachVolume rounded up to the 1 s grid, then 1, 2 s
    // later), not the 100 ms doubling one.
    let ec2 = world();
    let (h, o) = created(&ec2, &["v"]).await;
    h.devices.set_link_delay(u32::MAX);
    let delta = Duration::from_secs(2);
    ec2.set_attach_time(Some(delta), false);
    let start = Instant::now();
    h.backend.controller.publish(&name("v"), &o, &crate::backend::NodeId("i-a".into())).await.unwrap();
    let took = start.elapsed();
    assert!(took >= delta && took <= delta + FALLBACK_GRID, "noticed after {took:?}");
    assert!((2..=4).contains(&state_polls(&ec2)), "{} state polls", state_polls(&ec2));
    assert_eq!(only(&ec2, "v").attachments[0].state, AttachState::Attached);
}

/// The state polls of `n` concurrent Mounts of detached volumes, each attach taking 2 s.
async fn concurrent_mount_polls(n: usize) -> (usize, usize, Duration) {
    let ec2 = world();
    let names: Vec<String> = (0..n).map(|i| format!("v{i}")).collect();
    let refs: Vec<&str> = names.iter().map(String::as_str).collect();
    let (h, o) = created(&ec2, &refs).await;
    let delta = Duration::from_secs(2);
    ec2.set_attach_time(Some(delta), false);
    let polls_before = state_polls(&ec2);
    ec2.take_calls();
    let start = Instant::now();
    let mounts: Vec<_> = names
        .iter()
        .map(|n| {
            let (backend, o, n) = (h.backend.clone(), o.clone(), name(n));
            tokio::spawn(async move { backend.activate_here(&n, &o).await })
        })
        .collect();
    for mount in mounts {
        mount.await.expect("mount task").expect("mount");
    }
    let overhead = start.elapsed() - delta;
    let describes =
        ec2.calls().iter().filter(|c| matches!(c, Ec2Call::DescribeVolumes(_) | Ec2Call::DescribeInstances(_))).count();
    (state_polls(&ec2) + polls_before, describes, overhead)
}

#[tokio::test(start_paused = true)]
async fn concurrent_mounts_share_their_polls() {
    let (one, one_describes, _) = concurrent_mount_polls(1).await;
    for n in [8, 32] {
        let (polls, describes, overhead) = concurrent_mount_polls(n).await;
        assert!(polls <= 2 * one, "{n} mounts: {polls} state polls, one mount: {one}");
        // Look-ups by name and DescribeInstances are shared too: every describe call of 32
        // mounts together costs at most twice one mount's.
        assert!(describes <= 2 * one_describes, "{n} mounts: {describes} describe calls, one mount: {one_describes}");
        assert!(overhead <= Duration::from_millis(250), "{n} mounts: the last noticed {overhead:?} late");
    }
}
