//! Docker's calls against the EBS backend on fakes, in virtual time.
//!
//! - Deadlines: a Mount whose device never appears answers inside Docker's 2 minutes with this
//!   daemon's message, after rolling back; a Mount whose client went away still rolls back; a
//!   Mount queued behind a stuck one gives up in time.
//! - Honest lists: with EC2 unreachable, List serves what EC2 listed last and says how old it
//!   is in each volume's Status, within a bounded time; one that never listed is an error,
//!   not "no volumes".

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use http_body_util::BodyExt;
use hyper::body::Bytes;
use hyper::Request;
use serde_json::{json, Value};
use tokio::time::Instant;

use crate::backend::ebs::fake::{FakeDeviceHost, FakeEc2};
use crate::backend::ebs::identity::Imds;
use crate::backend::ebs::{CloudParts, EbsController};
use crate::backend::Environment;
use crate::config::{BackendKind, Integration, ServiceConfig};
use crate::os::fake::FakeOs;
use crate::server::Handler;
use crate::service::{ServiceHandle, VolumeService};

const INSTANCE: &str = "i-deadline";
const AZ: &str = "us-east-1a";
/// Docker's own limit for Create and Mount.
const DOCKER_MOUNT_TIMEOUT: Duration = Duration::from_secs(120);

struct World {
    ec2: Arc<FakeEc2>,
    devices: Arc<FakeDeviceHost>,
    handler: Handler,
    _state: tempfile::TempDir,
}

fn service_config() -> ServiceConfig {
    // REX-Ray's defaults: a 2 minute statusTimeout, as long as Docker's Mount timeout.
    let ebs: BTreeMap<String, String> =
        [("instanceid", INSTANCE), ("availabilityzone", AZ), ("region", "us-east-1"), ("devicelinksdir", "/links")]
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
    ServiceConfig {
        name: "ebs".into(),
        backend: BackendKind::Ebs,
        integration: Integration { mount_path: "/mnt".into(), ..Integration::defaults(Path::new("/var/lib/rexray")) },
        vfs_root: "/vfs".into(),
        loop_root: "/loop".into(),
        ebs,
        ebs_origins: BTreeMap::new(),
    }
}

async fn world() -> World {
    let ec2 = Arc::new(FakeEc2::new());
    ec2.add_instance(INSTANCE, AZ);
    let devices = Arc::new(FakeDeviceHost::new(Arc::clone(&ec2), INSTANCE, "/links"));
    let os = Arc::new(FakeOs::new());
    let cloud = Arc::new(CloudParts::with_api(Arc::new(Imds::new("http://127.0.0.1:9", true)), ec2.clone()));
    let env = Environment { os: os.clone(), devices: devices.clone(), host: os, ebs: Some(cloud.clone()) };
    let config = service_config();
    let backend = Arc::new(EbsController::new(&config, &env, cloud).unwrap()).backend();
    let state = tempfile::tempdir().unwrap();
    let service = VolumeService::open("ebs", backend, config.integration, state.path().join("state"), Some("b".into()))
        .await
        .unwrap();
    let handler = super::router(Arc::new(ServiceHandle::ready(Arc::new(service))));
    World { ec2, devices, handler, _state: state }
}

impl World {
    /// One Docker call through the handler: the `Err` text, or the body.
    async fn call(&self, method: &str, body: &Value) -> Value {
        call(&self.handler, method, body).await
    }

    fn attachments(&self) -> usize {
        self.ec2.by_name("v").iter().map(|v| v.attachments.len()).sum()
    }
}

async fn call(handler: &Handler, method: &str, body: &Value) -> Value {
    let request = Request::post(format!("/VolumeDriver.{method}")).body(Bytes::from(body.to_string())).unwrap();
    let reply = handler(request).await;
    let bytes = reply.into_body().collect().await.unwrap().to_bytes();
    serde_json::from_slice(&bytes).unwrap()
}

fn mount(id: &str) -> Value {
    json!({"Name": "v", "ID": id})
}

#[tokio::test(start_paused = true)]
async fn a_device_that_never_appears_fails_inside_dockers_deadline_with_our_message() {
    let w = world().await;
    assert_eq!(w.call("Create", &json!({"Name": "v"})).await, json!({}));
    w.devices.set_link_delay(u32::MAX);
    let start = Instant::now();
    let reply = w.call("Mount", &mount("c1")).await;
    let took = start.elapsed();
    assert!(took < Duration::from_secs(101), "answered after {took:?}, Docker gives up at {DOCKER_MOUNT_TIMEOUT:?}");
    let err = reply["Err"].as_str().unwrap_or_else(|| panic!("{reply}"));
    assert!(err.contains("no device appeared for volume v"), "{err}");
    // What is left of the budget after the attach (noticed by the fallback poll, 1 s after the
    // AttachVolume rounded up to the 1 s grid).
    let left: u32 = err
        .split_once("the wait was cut from 2 min to ")
        .and_then(|(_, rest)| rest.split_once(" s to answer within Docker's 2 min Mount timeout"))
        .and_then(|(secs, _)| secs.parse().ok())
        .unwrap_or_else(|| panic!("{err}"));
    assert!((68..=70).contains(&left), "{err}");
    assert!(err.contains("/links/nvme-Amazon_Elastic_Block_Store_vol"), "{err}");
    // Rolled back in EC2, and the cache says so.
    assert_eq!(w.attachments(), 0);
    let got = w.call("Get", &json!({"Name": "v"})).await;
    assert_eq!(got["Volume"]["Status"]["state"], "available", "{got}");
    assert_eq!(got["Volume"]["Status"]["holders"], 0, "{got}");
    // The next Mount, with the device there, works.
    w.devices.set_link_delay(0);
    let ok = w.call("Mount", &mount("c1")).await;
    assert!(ok["Mountpoint"].as_str().is_some_and(|p| !p.is_empty()), "{ok}");
}

#[tokio::test(start_paused = true)]
async fn a_mount_whose_client_went_away_still_rolls_back() {
    let w = world().await;
    w.call("Create", &json!({"Name": "v"})).await;
    w.devices.set_link_delay(u32::MAX);
    // The client hangs up after 5 s, long before the wait ends.
    let gone = tokio::time::timeout(Duration::from_secs(5), w.call("Mount", &mount("c1"))).await;
    assert!(gone.is_err());
    assert_eq!(w.attachments(), 1, "attached while the wait goes on");
    tokio::time::sleep(Duration::from_secs(120)).await;
    assert_eq!(w.attachments(), 0, "the rollback finished without a client");
    let got = w.call("Get", &json!({"Name": "v"})).await;
    assert_eq!(got["Volume"]["Status"]["state"], "available", "{got}");
    assert_eq!(got["Volume"]["Status"]["holders"], 0, "{got}");
}

#[tokio::test(start_paused = true)]
async fn a_mount_queued_behind_a_stuck_one_gives_up_in_time() {
    let w = world().await;
    w.call("Create", &json!({"Name": "v"})).await;
    w.devices.set_link_delay(u32::MAX);
    // The first Mount's rollback takes a few seconds: its detach needs three polls.
    w.ec2.set_detach_polls(3);
    let handler = Arc::clone(&w.handler);
    let first = tokio::spawn(async move { call(&handler, "Mount", &mount("c1")).await });
    tokio::time::sleep(Duration::from_millis(10)).await;
    let start = Instant::now();
    let second = w.call("Mount", &mount("c2")).await;
    assert!(start.elapsed() < Duration::from_secs(101), "{:?}", start.elapsed());
    let err = second["Err"].as_str().unwrap_or_else(|| panic!("{second}"));
    assert!(err.contains("another operation on the volume was still running after 70 s"), "{err}");
    assert!(err.contains("Docker's 2 min Mount timeout"), "{err}");
    let first = first.await.unwrap();
    assert!(first["Err"].as_str().is_some_and(|e| e.contains("no device appeared")), "{first}");
    assert_eq!(w.attachments(), 0);
}

#[tokio::test(start_paused = true)]
async fn an_unreachable_ec2_gets_the_last_known_list_marked_with_its_age() {
    let w = world().await;
    w.call("Create", &json!({"Name": "v"})).await;
    let listed = w.call("List", &json!({})).await;
    assert_eq!(listed["Volumes"][0]["Name"], "v", "{listed}");
    assert!(listed.get("Stale").is_none() && listed["Volumes"][0].get("Status").is_none(), "{listed}");
    // Later, EC2 stops answering.
    w.ec2.set_unreachable(true);
    tokio::time::sleep(Duration::from_secs(300)).await;
    let start = Instant::now();
    let listed = w.call("List", &json!({})).await;
    assert!(start.elapsed() <= Duration::from_secs(10), "bounded: {:?}", start.elapsed());
    assert_eq!(listed["Volumes"][0]["Name"], "v", "{listed}");
    let note = listed["Volumes"][0]["Status"]["stale"].as_str().unwrap_or_else(|| panic!("{listed}"));
    assert!(note.contains("connection refused") && note.contains("listed 5 min"), "{note}");
    assert_eq!(listed["Stale"], note);
    let got = w.call("Get", &json!({"Name": "v"})).await;
    assert!(got["Volume"]["Status"]["stale"].as_str().is_some_and(|s| s.contains("ago")), "{got}");
    // Back again: fresh, and no note.
    w.ec2.set_unreachable(false);
    tokio::time::sleep(Duration::from_secs(11)).await;
    let listed = w.call("List", &json!({})).await;
    assert!(listed.get("Stale").is_none(), "{listed}");
}

#[tokio::test(start_paused = true)]
async fn a_list_that_never_reached_ec2_is_an_error_not_an_empty_list() {
    let w = world().await;
    w.ec2.set_unreachable(true);
    let start = Instant::now();
    let listed = w.call("List", &json!({})).await;
    assert!(start.elapsed() <= Duration::from_secs(10), "bounded: {:?}", start.elapsed());
    let err = listed["Err"].as_str().unwrap_or_else(|| panic!("{listed}"));
    assert!(err.contains("could not list the volumes") && err.contains("connection refused"), "{err}");
    assert!(err.contains("has not answered a listing yet"), "{err}");
}
