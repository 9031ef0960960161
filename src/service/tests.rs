//! The service over the fake backend: mount accounting, the Docker front's composition, and
//! what a restart does with every state a crash can leave behind.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use super::state::{Pending, StateStore};
use super::*;
use crate::backend::fake::FakeBackend;

pub(crate) fn settings() -> Integration {
    Integration::defaults(std::path::Path::new("/var/lib/rexray"))
}

const BOOT: &str = "boot-1";

async fn open_in(
    dir: &std::path::Path,
    fake: Arc<FakeBackend>,
    settings: Integration,
    boot: &str,
) -> Arc<VolumeService> {
    let backend = FakeBackend::backend(&fake);
    Arc::new(VolumeService::open("test", backend, settings, dir.to_path_buf(), Some(boot.into())).await.unwrap())
}

async fn open(dir: &std::path::Path, fake: Arc<FakeBackend>, settings: Integration) -> Arc<VolumeService> {
    open_in(dir, fake, settings, BOOT).await
}

fn no_opts() -> BTreeMap<String, String> {
    BTreeMap::new()
}

async fn holders(s: &VolumeService, name: &str) -> u64 {
    s.get(name).await.unwrap().status.value()["holders"].as_u64().unwrap()
}

#[tokio::test]
async fn create_is_idempotent_and_validates() {
    let dir = tempfile::tempdir().unwrap();
    let fake = Arc::new(FakeBackend::default());
    let s = open(dir.path(), fake.clone(), settings()).await;
    s.create("v1", &BTreeMap::from([("SIZE".into(), "2".into())])).await.unwrap();
    s.create("v1", &BTreeMap::from([("size".into(), "5".into())])).await.unwrap();
    assert_eq!(fake.count("create"), 1);
    let info = s.get("v1").await.unwrap();
    assert_eq!(info.status.value()["options"]["size"], "2");
    assert!(info.mountpoint.is_none());
    assert!(humantime::parse_rfc3339(&info.created_at).is_ok(), "{}", info.created_at);
    let err = s.create("v2", &BTreeMap::from([("bogus".into(), "1".into())])).await.unwrap_err().chain();
    assert!(err.contains("create \"v2\"") && err.contains("bogus") && err.contains("size, label"), "{err}");
    let err = s.create("v2", &BTreeMap::from([("size".into(), "abc".into())])).await.unwrap_err().chain();
    assert!(err.contains("size") && err.contains("abc"), "{err}");
    let err = s.create("../x", &no_opts()).await.unwrap_err().chain();
    assert!(err.contains("create \"../x\"") && err.contains("'/'"), "{err}");
    assert_eq!(s.list().await.unwrap().volumes.len(), 1);
}

#[tokio::test]
async fn docker_cp_counts_the_same_id_twice() {
    let dir = tempfile::tempdir().unwrap();
    let fake = Arc::new(FakeBackend::default());
    let s = open(dir.path(), fake.clone(), settings()).await;
    s.create("v", &no_opts()).await.unwrap();
    let p1 = s.mount("v", Some("id1")).await.unwrap();
    let p2 = s.mount("v", Some("id1")).await.unwrap();
    assert_eq!(p1, p2);
    s.unmount("v", Some("id1")).await.unwrap();
    assert_eq!(fake.count("deactivate"), 0, "the running container still uses it");
    assert_eq!(s.path("v").await.unwrap(), Some(p1));
    s.unmount("v", Some("id1")).await.unwrap();
    assert_eq!(fake.calls(), ["create:v", "activate:v", "deactivate:v"]);
    assert_eq!(
        fake.steps(),
        ["create:v", "publish:v", "stage:v", "hand_out:v", "unstage:v", "unpublish:v"],
        "publish to this node, stage, hand out; and back"
    );
    assert_eq!(s.path("v").await.unwrap(), None);
}

#[tokio::test]
async fn anonymous_holder_has_set_semantics() {
    let dir = tempfile::tempdir().unwrap();
    let fake = Arc::new(FakeBackend::default());
    let s = open(dir.path(), fake.clone(), settings()).await;
    for _ in 0..3 {
        s.mount("dv", None).await.unwrap();
    }
    assert_eq!(holders(&s, "dv").await, 1);
    s.unmount("dv", Some("")).await.unwrap();
    assert_eq!(fake.calls(), ["create:dv", "activate:dv", "deactivate:dv"]);
}

#[tokio::test]
async fn unknown_unmounts_succeed_and_remove_is_refused_while_held() {
    let dir = tempfile::tempdir().unwrap();
    let fake = Arc::new(FakeBackend::default());
    let s = open(dir.path(), fake.clone(), settings()).await;
    s.unmount("nope", Some("x")).await.unwrap();
    s.mount("v", Some("a")).await.unwrap();
    s.unmount("v", Some("never-mounted")).await.unwrap();
    let err = s.remove("v").await.unwrap_err().chain();
    assert!(err.contains("remove \"v\"") && err.contains("in use"), "{err}");
    s.unmount("v", Some("a")).await.unwrap();
    s.remove("v").await.unwrap();
    s.remove("v").await.unwrap();
    assert!(s.get("v").await.is_err());
    assert_eq!(fake.calls(), ["create:v", "activate:v", "deactivate:v", "remove:v"]);
}

#[tokio::test]
async fn implicit_create_can_be_turned_off() {
    let dir = tempfile::tempdir().unwrap();
    let fake = Arc::new(FakeBackend::default());
    let s = open(dir.path(), fake.clone(), Integration { implicit_create: false, ..settings() }).await;
    let err = s.mount("v", Some("a")).await.unwrap_err().chain();
    assert!(err.contains("mount \"v\"") && err.contains("no such volume"), "{err}");
    assert!(fake.calls().is_empty());
}

#[tokio::test]
async fn ignore_used_count_deactivates_on_every_unmount() {
    let dir = tempfile::tempdir().unwrap();
    let fake = Arc::new(FakeBackend::default());
    let s = open(dir.path(), fake.clone(), Integration { ignore_used_count: true, ..settings() }).await;
    s.mount("v", Some("a")).await.unwrap();
    s.mount("v", Some("b")).await.unwrap();
    s.unmount("v", Some("a")).await.unwrap();
    assert_eq!(fake.count("deactivate"), 1);
    assert_eq!(holders(&s, "v").await, 0);
}

#[tokio::test]
async fn create_and_remove_can_be_disabled() {
    let dir = tempfile::tempdir().unwrap();
    let fake = Arc::new(FakeBackend::default());
    let s = open(dir.path(), fake.clone(), Integration { create_disable: true, ..settings() }).await;
    s.create("v", &no_opts()).await.unwrap();
    assert!(fake.calls().is_empty());
    let dir2 = tempfile::tempdir().unwrap();
    let s2 = open(dir2.path(), fake.clone(), Integration { remove_disable: true, ..settings() }).await;
    s2.create("w", &no_opts()).await.unwrap();
    s2.remove("w").await.unwrap();
    assert_eq!(fake.count("remove"), 0);
    assert!(s2.get("w").await.is_ok());
}

#[tokio::test]
async fn failed_activation_grants_nothing_and_rolls_back() {
    let dir = tempfile::tempdir().unwrap();
    let fake = Arc::new(FakeBackend::default());
    let s = open(dir.path(), fake.clone(), settings()).await;
    s.create("v", &no_opts()).await.unwrap();
    fake.set_failing("activate", true);
    let err = s.mount("v", Some("a")).await.unwrap_err().chain();
    assert!(err.contains("mount \"v\": fake backend: injected activate failure"), "{err}");
    assert_eq!(holders(&s, "v").await, 0);
    assert!(!fake.active("v") && !fake.state.lock().unwrap().published.contains("v"), "rolled back");
    assert!(!s.get("v").await.unwrap().status.to_map().contains_key("pending"));
    fake.set_failing("activate", false);
    s.mount("v", Some("a")).await.unwrap();
    assert_eq!(holders(&s, "v").await, 1);
}

#[tokio::test]
async fn failed_deactivation_is_retried_by_the_next_operation() {
    let dir = tempfile::tempdir().unwrap();
    let fake = Arc::new(FakeBackend::default());
    let s = open(dir.path(), fake.clone(), settings()).await;
    s.mount("v", Some("a")).await.unwrap();
    fake.set_failing("deactivate", true);
    assert!(s.unmount("v", Some("a")).await.is_err());
    assert_eq!(holders(&s, "v").await, 0);
    assert_eq!(s.get("v").await.unwrap().status.value()["pending"], "deactivating");
    fake.set_failing("deactivate", false);
    s.remove("v").await.unwrap();
    assert_eq!(fake.count("unstage"), 3, "the failed one, the retry, remove's own");
    assert_eq!(fake.count("deactivate"), 1);
    assert_eq!(fake.count("remove"), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn parallel_mounts_activate_once_and_parallel_unmounts_deactivate_once_last() {
    let dir = tempfile::tempdir().unwrap();
    let fake = Arc::new(FakeBackend::with_delay(Duration::from_millis(20)));
    let s = open(dir.path(), fake.clone(), settings()).await;
    s.create("v", &no_opts()).await.unwrap();
    let mounts: Vec<_> = (0..16)
        .map(|i| {
            let s = s.clone();
            tokio::spawn(async move { s.mount("v", Some(&format!("id{i}"))).await })
        })
        .collect();
    for m in mounts {
        assert_eq!(m.await.unwrap().unwrap(), PathBuf::from("/fake/v"));
    }
    assert_eq!(fake.count("activate"), 1);
    assert_eq!(holders(&s, "v").await, 16);
    let unmounts: Vec<_> = (0..16)
        .map(|i| {
            let s = s.clone();
            tokio::spawn(async move { s.unmount("v", Some(&format!("id{i}"))).await })
        })
        .collect();
    for u in unmounts {
        u.await.unwrap().unwrap();
    }
    assert_eq!(fake.count("deactivate"), 1);
    assert_eq!(fake.calls().last().unwrap(), "deactivate:v");
    assert_eq!(holders(&s, "v").await, 0);
}

#[tokio::test]
async fn a_mount_abandoned_by_its_caller_still_finishes() {
    let dir = tempfile::tempdir().unwrap();
    let fake = Arc::new(FakeBackend::with_delay(Duration::from_millis(50)));
    let s = open(dir.path(), fake.clone(), settings()).await;
    s.create("v", &no_opts()).await.unwrap();
    // The client gives up (Docker's timeout, a closed connection) while the mount runs.
    let abandoned = tokio::time::timeout(Duration::from_millis(10), s.mount("v", Some("a"))).await;
    assert!(abandoned.is_err());
    // It finishes on its own task: wait for it (bounded), however loaded the machine is.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while holders(&s, "v").await == 0 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(holders(&s, "v").await, 1, "the mount completed and was recorded");
    assert!(fake.active("v"));
}

#[tokio::test]
async fn restart_keeps_active_holders_reactivates_lost_mounts_and_releases_leaks() {
    let dir = tempfile::tempdir().unwrap();
    let fake = Arc::new(FakeBackend::default());
    {
        let s = open(dir.path(), fake.clone(), settings()).await;
        s.mount("kept", Some("a")).await.unwrap();
        s.mount("kept", None).await.unwrap();
        s.mount("vanished", Some("c")).await.unwrap();
        s.create("leaked", &no_opts()).await.unwrap();
        s.create("idle", &BTreeMap::from([("size".into(), "3".into())])).await.unwrap();
    }
    // The daemon restarts in the same boot: the mount of "vanished" is gone (a managed plugin's
    // can be), and "leaked" is published and staged with no holders (a crash between its
    // activation and the record).
    fake.state.lock().unwrap().staged.remove("vanished");
    fake.state.lock().unwrap().published.insert("leaked".into());
    fake.state.lock().unwrap().staged.insert("leaked".into());
    let calls_before = fake.calls().len();
    let s = open(dir.path(), fake.clone(), settings()).await;
    let mut new_calls = fake.calls()[calls_before..].to_vec();
    new_calls.sort();
    assert_eq!(new_calls, ["activate:vanished", "deactivate:leaked"]);
    assert_eq!(holders(&s, "kept").await, 2);
    assert_eq!(s.path("kept").await.unwrap(), Some(PathBuf::from("/fake/kept")));
    assert_eq!(holders(&s, "vanished").await, 1);
    assert_eq!(s.path("vanished").await.unwrap(), Some(PathBuf::from("/fake/vanished")));
    assert_eq!(s.path("leaked").await.unwrap(), None);
    assert!(!fake.active("leaked"));
    assert_eq!(s.get("idle").await.unwrap().status.value()["options"]["size"], "3");
    assert_eq!(s.list().await.unwrap().volumes.len(), 4);
    s.unmount("kept", Some("a")).await.unwrap();
    s.unmount("kept", None).await.unwrap();
    assert!(!fake.active("kept"));
}

#[tokio::test]
async fn a_restart_releases_what_an_interrupted_mount_attached() {
    // Issue: a Mount killed between attach and mount left the device attached, holders 0,
    // and Remove refused for good. Here the crash left the volume published, not staged.
    let dir = tempfile::tempdir().unwrap();
    let fake = Arc::new(FakeBackend::default());
    {
        let s = open(dir.path(), fake.clone(), settings()).await;
        s.create("v", &no_opts()).await.unwrap();
    }
    let store = StateStore::open(dir.path()).unwrap();
    let mut record = store.load().unwrap().pop().unwrap();
    record.pending = Some(Pending::Activating);
    store.save(&record).unwrap();
    fake.state.lock().unwrap().published.insert("v".into());
    let s = open(dir.path(), fake.clone(), settings()).await;
    assert!(!fake.state.lock().unwrap().published.contains("v"), "released");
    let info = s.get("v").await.unwrap();
    assert_eq!(info.status.value()["holders"], 0);
    assert!(!info.status.to_map().contains_key("pending"));
    s.remove("v").await.unwrap();
    assert!(s.get("v").await.is_err());
}

#[tokio::test]
async fn a_restart_finishes_an_interrupted_remove() {
    // Issue: a Remove killed between deleting the data and deleting the record left a volume
    // that List and Get still showed.
    let dir = tempfile::tempdir().unwrap();
    let fake = Arc::new(FakeBackend::default());
    {
        let s = open(dir.path(), fake.clone(), settings()).await;
        s.create("v", &no_opts()).await.unwrap();
    }
    let store = StateStore::open(dir.path()).unwrap();
    let mut record = store.load().unwrap().pop().unwrap();
    record.pending = Some(Pending::Removing);
    store.save(&record).unwrap();
    fake.state.lock().unwrap().volumes.remove("v");
    let s = open(dir.path(), fake.clone(), settings()).await;
    assert!(s.get("v").await.unwrap_err().is_not_found());
    assert!(s.list().await.unwrap().volumes.is_empty());
    assert!(store.load().unwrap().is_empty(), "the record is gone for good");
    // The name can be used again, for a new volume.
    s.create("v", &no_opts()).await.unwrap();
    assert!(fake.state.lock().unwrap().volumes.contains("v"));
}

#[tokio::test]
async fn a_restart_finishes_an_interrupted_create_or_discards_it() {
    let dir = tempfile::tempdir().unwrap();
    let fake = Arc::new(FakeBackend::default());
    {
        let s = open(dir.path(), fake.clone(), settings()).await;
        s.create("done", &no_opts()).await.unwrap();
        s.create("broken", &no_opts()).await.unwrap();
    }
    let store = StateStore::open(dir.path()).unwrap();
    for mut record in store.load().unwrap() {
        record.pending = Some(Pending::Creating);
        store.save(&record).unwrap();
    }
    // A create that can be finished, and one whose storage cannot be made any more.
    fake.set_failing("create", true);
    let s = open(dir.path(), fake.clone(), settings()).await;
    assert!(s.get("done").await.unwrap_err().is_not_found() && s.get("broken").await.unwrap_err().is_not_found());
    assert_eq!(fake.count("discard"), 2);
    fake.set_failing("create", false);
    let dir2 = tempfile::tempdir().unwrap();
    {
        let s = open(dir2.path(), fake.clone(), settings()).await;
        s.create("v", &no_opts()).await.unwrap();
    }
    let store = StateStore::open(dir2.path()).unwrap();
    let mut record = store.load().unwrap().pop().unwrap();
    record.pending = Some(Pending::Creating);
    store.save(&record).unwrap();
    let s = open(dir2.path(), fake.clone(), settings()).await;
    assert!(!s.get("v").await.unwrap().status.to_map().contains_key("pending"), "finished");
    assert_eq!(s.list().await.unwrap().volumes.len(), 1);
}

#[tokio::test]
async fn an_interrupted_unmount_is_finished() {
    let dir = tempfile::tempdir().unwrap();
    let fake = Arc::new(FakeBackend::default());
    {
        let s = open(dir.path(), fake.clone(), settings()).await;
        s.mount("v", Some("a")).await.unwrap();
    }
    // Killed after the holder was released, before the teardown.
    let store = StateStore::open(dir.path()).unwrap();
    let mut record = store.load().unwrap().pop().unwrap();
    record.holders.clear();
    record.pending = Some(Pending::Deactivating);
    store.save(&record).unwrap();
    let s = open(dir.path(), fake.clone(), settings()).await;
    assert!(!fake.active("v"));
    assert_eq!(s.path("v").await.unwrap(), None);
}

#[tokio::test]
async fn holder_counts_never_wrap() {
    let dir = tempfile::tempdir().unwrap();
    let fake = Arc::new(FakeBackend::default());
    {
        let s = open(dir.path(), fake.clone(), settings()).await;
        s.mount("v", Some("a")).await.unwrap();
    }
    let store = StateStore::open(dir.path()).unwrap();
    let mut record = store.load().unwrap().pop().unwrap();
    record.holders.insert("a".into(), u32::MAX);
    store.save(&record).unwrap();
    let s = open(dir.path(), fake.clone(), settings()).await;
    let err = s.mount("v", Some("a")).await.unwrap_err().chain();
    assert!(err.contains("mount ID a holds the volume 4294967295 times"), "{err}");
    assert_eq!(holders(&s, "v").await, u64::from(u32::MAX));
    assert_eq!(s.get("v").await.unwrap().status.value()["active"], true);
}

#[tokio::test]
async fn error_texts_quote_at_most_a_little_of_a_bad_name() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(dir.path(), Arc::new(FakeBackend::default()), settings()).await;
    let huge = format!("{}/{}", "x".repeat(500_000), "y".repeat(500_000));
    let err = s.mount(&huge, Some("a")).await.unwrap_err().chain();
    assert!(err.len() < 400, "{} bytes: {}", err.len(), &err[..400.min(err.len())]);
    assert!(err.contains("1000001 bytes long"), "{err}");
    let err = s.create(&format!("{}/x", "y".repeat(200)), &no_opts()).await.unwrap_err().chain();
    assert!(err.len() < 400 && err.contains("contains '/'"), "{err}");
}

/// Makes the next open of `dir` look like the first one after a reboot.
fn pretend_reboot(dir: &std::path::Path) {
    std::fs::write(dir.join("boot_id"), "an-earlier-boot").unwrap();
}

#[tokio::test]
async fn after_a_reboot_holders_are_dropped_and_a_mount_activates_again() {
    let dir = tempfile::tempdir().unwrap();
    let fake = Arc::new(FakeBackend::default());
    {
        let s = open(dir.path(), fake.clone(), settings()).await;
        s.mount("v", Some("b")).await.unwrap();
    }
    fake.state.lock().unwrap().published.clear();
    fake.state.lock().unwrap().staged.clear();
    pretend_reboot(dir.path());
    let s = open(dir.path(), fake.clone(), settings()).await;
    assert_eq!(holders(&s, "v").await, 0);
    assert_eq!(s.path("v").await.unwrap(), None);
    assert_eq!(fake.count("activate"), 1, "nothing re-activated after a reboot");
    s.mount("v", Some("b")).await.unwrap();
    assert_eq!(fake.count("activate"), 2);
    assert_eq!(s.path("v").await.unwrap(), Some(PathBuf::from("/fake/v")));
}

#[tokio::test]
async fn volumes_made_by_another_host_are_listed_adopted_and_removable() {
    let (dir_a, dir_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let storage = Arc::new(FakeBackend::global());
    let host_a = open(dir_a.path(), storage.clone(), settings()).await;
    let host_b = open(dir_b.path(), storage.clone(), Integration { implicit_create: false, ..settings() }).await;
    host_a.create("shared", &no_opts()).await.unwrap();
    host_a.create("gone", &no_opts()).await.unwrap();
    let names: Vec<String> = host_b.list().await.unwrap().volumes.into_iter().map(|v| v.name).collect();
    assert_eq!(names, ["gone", "shared"]);
    let info = host_b.get("shared").await.unwrap();
    assert_eq!(info.status.value()["holders"], 0);
    assert!(info.mountpoint.is_none());
    assert!(host_b.get("never-made").await.unwrap_err().is_not_found());
    // Implicit create is off on B, but the volume exists: B adopts it, never creates a twin.
    assert_eq!(host_b.mount("shared", Some("x")).await.unwrap(), PathBuf::from("/fake/shared"));
    assert_eq!(holders(&host_b, "shared").await, 1);
    assert!(host_b.mount("never-made", Some("x")).await.unwrap_err().is_not_found());
    host_b.remove("gone").await.unwrap();
    assert!(!storage.state.lock().unwrap().volumes.contains("gone"));
    assert_eq!(host_b.list().await.unwrap().volumes.len(), 1);
}

#[tokio::test]
async fn a_volume_of_another_backend_is_not_touched() {
    let dir = tempfile::tempdir().unwrap();
    let fake = Arc::new(FakeBackend::default());
    {
        let s = open(dir.path(), fake.clone(), settings()).await;
        s.create("v", &no_opts()).await.unwrap();
    }
    let path = dir.path().join("volumes/v");
    let text = std::fs::read_to_string(&path).unwrap().replace("\"fake\"", "\"loop\"");
    std::fs::write(&path, text).unwrap();
    let s = open(dir.path(), fake.clone(), settings()).await;
    let err = s.mount("v", Some("a")).await.unwrap_err().chain();
    assert!(err.contains("belongs to backend loop"), "{err}");
}

#[tokio::test]
async fn resize_grows_a_mounted_volume_records_the_size_and_never_shrinks() {
    let dir = tempfile::tempdir().unwrap();
    let fake = Arc::new(FakeBackend::default());
    let s = open(dir.path(), fake.clone(), settings()).await;
    s.create("v1", &BTreeMap::from([("size".into(), "2".into())])).await.unwrap();
    // Not mounted: only the storage grows (the file system grows at the next mount).
    s.resize("v1", 3).await.unwrap();
    assert_eq!(fake.count("expand"), 1);
    assert_eq!(fake.count("grow_fs"), 0);
    s.mount("v1", Some("c1")).await.unwrap();
    let record = s.resize("v1", 5).await.unwrap();
    assert_eq!(record.options["size"], "5");
    assert_eq!(fake.count("grow_fs"), 1, "the mounted file system grows too");
    let info = s.get("v1").await.unwrap();
    assert_eq!(info.status.value()["options"]["size"], "5");
    assert!(info.mountpoint.is_some(), "still mounted");
    let err = s.resize("v1", 4).await.unwrap_err().chain();
    assert!(err.contains("is 5 GiB") && err.contains("never shrink") && err.contains("4 GiB"), "{err}");
    assert_eq!(fake.count("expand"), 2);
    assert!(s.resize("nope", 9).await.unwrap_err().is_not_found());
}

#[tokio::test]
async fn a_failed_resize_keeps_the_old_size_and_leaves_no_intent() {
    let dir = tempfile::tempdir().unwrap();
    let fake = Arc::new(FakeBackend::default());
    let s = open(dir.path(), fake.clone(), settings()).await;
    s.create("v1", &BTreeMap::from([("size".into(), "2".into())])).await.unwrap();
    fake.set_failing("expand", true);
    let err = s.resize("v1", 3).await.unwrap_err().chain();
    assert!(err.contains("resize \"v1\"") && err.contains("injected expand failure"), "{err}");
    let info = s.get("v1").await.unwrap();
    assert_eq!(info.status.value()["options"]["size"], "2");
    assert!(!info.status.to_map().contains_key("pending"));
    // The volume works as before.
    fake.set_failing("expand", false);
    s.mount("v1", Some("c1")).await.unwrap();
}

#[tokio::test]
async fn an_interrupted_resize_is_finished_at_the_next_start() {
    let dir = tempfile::tempdir().unwrap();
    let fake = Arc::new(FakeBackend::default());
    {
        let s = open(dir.path(), fake.clone(), settings()).await;
        s.create("v1", &BTreeMap::from([("size".into(), "2".into())])).await.unwrap();
        s.mount("v1", Some("c1")).await.unwrap();
    }
    let store = StateStore::open(dir.path()).unwrap();
    let mut record = store.load().unwrap().into_iter().find(|r| r.name == "v1").unwrap();
    record.pending = Some(Pending::Resizing { size_gib: 7 });
    store.save(&record).unwrap();
    let s = open(dir.path(), fake.clone(), settings()).await;
    let info = s.get("v1").await.unwrap();
    assert_eq!(info.status.value()["options"]["size"], "7");
    assert!(!info.status.to_map().contains_key("pending"));
    assert_eq!(fake.count("expand"), 1);
    assert_eq!(fake.count("grow_fs"), 1);
}

#[tokio::test]
async fn a_modification_records_the_new_settings_and_a_refused_one_keeps_the_old() {
    let dir = tempfile::tempdir().unwrap();
    let fake = Arc::new(FakeBackend::default());
    let s = open(dir.path(), fake.clone(), settings()).await;
    s.create("v1", &BTreeMap::from([("label".into(), "old".into())])).await.unwrap();
    s.mount("v1", Some("c1")).await.unwrap();
    let record = s.modify("v1", &BTreeMap::from([("label".into(), "new".into())])).await.unwrap();
    assert_eq!(record.options["label"], "new");
    assert_eq!(s.get("v1").await.unwrap().status.value()["options"]["label"], "new");
    assert_eq!(fake.count("modify"), 1);
    // A setting the backend does not change in place: refused before it is asked.
    let err = s.modify("v1", &BTreeMap::from([("size".into(), "9".into())])).await.unwrap_err().chain();
    assert!(err.contains("modify \"v1\"") && err.contains("size"), "{err}");
    assert_eq!(fake.count("modify"), 1);
    // Refused by the storage: the old settings stay, with no intent left.
    fake.set_failing("modify", true);
    let err = s.modify("v1", &BTreeMap::from([("label".into(), "newer".into())])).await.unwrap_err().chain();
    assert!(err.contains("injected modify failure"), "{err}");
    let info = s.get("v1").await.unwrap();
    assert_eq!(info.status.value()["options"]["label"], "new");
    assert!(!info.status.to_map().contains_key("pending"));
    assert!(s.modify("nope", &BTreeMap::from([("label".into(), "x".into())])).await.unwrap_err().is_not_found());
    // Still mounted and usable throughout.
    assert!(info.mountpoint.is_some());
}

#[tokio::test]
async fn an_interrupted_modification_is_finished_at_the_next_start() {
    let dir = tempfile::tempdir().unwrap();
    let fake = Arc::new(FakeBackend::default());
    {
        let s = open(dir.path(), fake.clone(), settings()).await;
        s.create("v1", &BTreeMap::from([("label".into(), "old".into())])).await.unwrap();
    }
    let store = StateStore::open(dir.path()).unwrap();
    let mut record = store.load().unwrap().into_iter().find(|r| r.name == "v1").unwrap();
    let mut target = record.options.clone();
    target.insert("label".into(), "new".into());
    record.pending = Some(Pending::Modifying { target });
    store.save(&record).unwrap();
    let s = open(dir.path(), fake.clone(), settings()).await;
    let info = s.get("v1").await.unwrap();
    assert_eq!(info.status.value()["options"]["label"], "new");
    assert!(!info.status.to_map().contains_key("pending"));
    assert_eq!(fake.count("modify"), 1);
}

#[tokio::test]
async fn a_move_is_refused_while_held_recorded_when_done_and_finished_when_interrupted() {
    let dir = tempfile::tempdir().unwrap();
    let fake = Arc::new(FakeBackend::default());
    let s = open(dir.path(), fake.clone(), settings()).await;
    s.create("v1", &BTreeMap::new()).await.unwrap();
    s.mount("v1", Some("c1")).await.unwrap();
    let err = s.relocate("v1", "zone-b", false).await.unwrap_err().chain();
    assert!(err.contains("move \"v1\"") && err.contains("in use"), "{err}");
    assert_eq!(fake.count("move"), 0, "refused before the backend is asked");
    s.unmount("v1", Some("c1")).await.unwrap();
    let record = s.relocate("v1", "zone-b", false).await.unwrap();
    assert_eq!(record.options["availabilityZone"], "zone-b");
    assert_eq!(s.get("v1").await.unwrap().status.value()["options"]["availabilityZone"], "zone-b");
    // Undone by the backend: the intent goes, the zone stays.
    fake.set_failing("move", true);
    let err = s.relocate("v1", "zone-c", false).await.unwrap_err().chain();
    assert!(err.contains("injected move failure"), "{err}");
    fake.set_failing("move", false);
    let info = s.get("v1").await.unwrap();
    assert_eq!(info.status.value()["options"]["availabilityZone"], "zone-b");
    assert!(!info.status.to_map().contains_key("pending"));
    // Out of time: the intent stays (shown), and the next operation on the volume finishes it.
    let err = s.relocate("v1", "slow-d", false).await.unwrap_err().chain();
    assert!(err.contains("fake move"), "{err}");
    assert_eq!(s.get("v1").await.unwrap().status.value()["pending"], "moving");
    s.mount("v1", Some("c2")).await.unwrap();
    let info = s.get("v1").await.unwrap();
    assert_eq!(info.status.value()["options"]["availabilityZone"], "slow-d");
    assert!(!info.status.to_map().contains_key("pending"));
    assert!(s.relocate("nope", "zone-b", false).await.unwrap_err().is_not_found());
}

#[tokio::test]
async fn an_interrupted_move_is_finished_at_the_next_start() {
    let dir = tempfile::tempdir().unwrap();
    let fake = Arc::new(FakeBackend::default());
    {
        let s = open(dir.path(), fake.clone(), settings()).await;
        s.create("v1", &BTreeMap::new()).await.unwrap();
    }
    let store = StateStore::open(dir.path()).unwrap();
    let mut record = store.load().unwrap().into_iter().find(|r| r.name == "v1").unwrap();
    let plan = crate::backend::Relocation { zone: "zone-b".into(), source: "v1".into(), id: "m".into() };
    record.pending = Some(Pending::Moving { plan, delete_source: true });
    store.save(&record).unwrap();
    let s = open(dir.path(), fake.clone(), settings()).await;
    let info = s.get("v1").await.unwrap();
    assert_eq!(info.status.value()["options"]["availabilityZone"], "zone-b");
    assert!(!info.status.to_map().contains_key("pending"));
    assert_eq!(fake.count("move"), 1);
}

#[tokio::test]
async fn orphans_are_the_volumes_nothing_used_for_long_enough() {
    use std::time::Duration;
    let dir = tempfile::tempdir().unwrap();
    let fake = Arc::new(FakeBackend::default());
    let anonymous = "ab".repeat(32);
    {
        let s = open(dir.path(), fake.clone(), settings()).await;
        for name in ["old", "recent", "held", "used-lately", anonymous.as_str()] {
            s.create(name, &no_opts()).await.unwrap();
        }
        s.mount("held", Some("c1")).await.unwrap();
    }
    // Back-date them: created 40 days ago; "used-lately" was last released a day ago, the
    // anonymous one two hours ago.
    let ago = |d: Duration| humantime::format_rfc3339_seconds(std::time::SystemTime::now() - d).to_string();
    let store = StateStore::open(dir.path()).unwrap();
    for mut record in store.load().unwrap() {
        if record.name != "recent" {
            record.created_at = ago(Duration::from_secs(40 * 86_400));
        }
        record.last_used = match record.name.as_str() {
            "used-lately" => Some(ago(Duration::from_secs(86_400))),
            n if n == anonymous => Some(ago(Duration::from_secs(7_200))),
            _ => None,
        };
        store.save(&record).unwrap();
    }
    let s = open(dir.path(), fake.clone(), settings()).await;
    let names = |found: Vec<Orphan>| found.into_iter().map(|o| (o.name, o.anonymous)).collect::<Vec<_>>();
    let month = Duration::from_secs(30 * 86_400);
    let hour = Duration::from_secs(3_600);
    assert_eq!(names(s.orphans(month, hour).await.unwrap()), [(anonymous.clone(), true), ("old".into(), false)]);
    let found = s.orphans(Duration::from_secs(12 * 3_600), hour).await.unwrap();
    assert_eq!(found.iter().map(|o| o.name.as_str()).collect::<Vec<_>>(), [anonymous.as_str(), "old", "used-lately"]);
    let lately = found.iter().find(|o| o.name == "used-lately").unwrap();
    assert!(lately.idle >= Duration::from_secs(86_400) && lately.idle < Duration::from_secs(86_500), "{lately:?}");
    assert_eq!(names(s.orphans(month, Duration::from_secs(3 * 3_600)).await.unwrap()), [("old".into(), false)]);
    // Nothing that is held, even when old; and an unmount makes it used just now.
    assert!(s.orphans(Duration::ZERO, Duration::ZERO).await.unwrap().iter().all(|o| o.name != "held"));
    s.unmount("held", Some("c1")).await.unwrap();
    assert!(s.orphans(Duration::from_secs(60), hour).await.unwrap().iter().all(|o| o.name != "held"));
    // A volume a container took after the listing is not removed by a prune.
    s.mount("old", Some("c2")).await.unwrap();
    assert!(s.remove("old").await.unwrap_err().chain().contains("in use"));
}
