//! The real `aws-sdk-ec2` client ([`AwsEc2`]) and the EBS backend against moto's EC2, on the
//! wire. No root needed: the OS side is the recording fake; the kernel side is in
//! `tests/ebs_failover.rs`.
//!
//! Needs moto (`MOTO_ENDPOINT`, or `moto_server` on PATH); without it each test prints why it
//! is skipped, except in CI (`CI` set), where that is a failure. Each test uses its own region,
//! so they share one moto server safely.
#![cfg(feature = "ebs")]

#[path = "e2e/ebs_support.rs"]
mod support;

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rexray::backend::ebs::api::{AttachState, CloudErrorKind, CreateVolumeRequest, Ec2Api, VolumeQuery, VolumeState};
use rexray::backend::ebs::identity::Imds;
use rexray::backend::ebs::{client_token, CloudParts, EbsController, OWNER_TAG};
use rexray::backend::{Backend, BackendError, Environment, Options};
use rexray::config::ServiceConfig;
use rexray::name::VolumeName;
use rexray::os::fake::{Call, FakeOs};
use rexray::os::DeviceHost;
use support::{volumes_named, Moto};

#[tokio::test]
async fn sdk_client_speaks_ec2_to_moto() {
    let Some(moto) = Moto::for_test("sdk_client_speaks_ec2_to_moto") else { return };
    let region = "us-west-1";
    let api = moto.api(region).await;
    let instance = moto.run_instance(region, "us-west-1b");

    let tags: BTreeMap<String, String> = [("Name", "wire1"), (OWNER_TAG, "true"), ("team", "qa")]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let created = api
        .create_volume(&CreateVolumeRequest {
            size_gib: Some(3),
            availability_zone: "us-west-1b".into(),
            volume_type: "gp3".into(),
            iops: Some(4000),
            throughput: Some(250),
            encrypted: false,
            kms_key_id: None,
            snapshot_id: None,
            tags: tags.clone(),
            client_token: client_token("wire1"),
        })
        .await
        .unwrap();
    assert!(created.id.starts_with("vol-"), "{created:?}");
    let found = volumes_named(&api, "wire1").await;
    assert_eq!(found.len(), 1);
    let v = &found[0];
    assert_eq!((v.size_gib, v.volume_type.as_str(), v.availability_zone.as_str()), (3, "gp3", "us-west-1b"));
    assert_eq!(v.iops, Some(4000));
    assert_eq!(v.tags, tags, "tags set in the CreateVolume call");
    assert_eq!(v.state, VolumeState::Available);

    // Filter on the ownership tag with a page size.
    let page = api
        .describe_volumes(&VolumeQuery {
            filters: vec![(format!("tag:{OWNER_TAG}"), vec!["true".into()])],
            max_results: Some(500),
            ..VolumeQuery::default()
        })
        .await
        .unwrap();
    assert_eq!(page.volumes.iter().map(|v| v.id.as_str()).collect::<Vec<_>>(), [created.id.as_str()]);

    // Attach, see it in the instance's mapping (next to the root device), detach.
    let inst = api.describe_instance(&instance).await.unwrap();
    assert_eq!(inst.availability_zone, "us-west-1b");
    assert!(inst.device_names.iter().any(|d| d == "/dev/sda1"), "{inst:?}");
    api.attach_volume(&created.id, &instance, "/dev/xvdf").await.unwrap();
    let v = &api.describe_volumes(&VolumeQuery::by_id(&created.id)).await.unwrap().volumes[0];
    assert_eq!(v.attachments.len(), 1);
    assert_eq!(
        (v.attachments[0].instance_id.as_str(), v.attachments[0].device.as_str()),
        (instance.as_str(), "/dev/xvdf")
    );
    assert_eq!(v.attachments[0].state, AttachState::Attached);
    let attached = api
        .describe_volumes(&VolumeQuery::filtered(vec![("attachment.instance-id".into(), vec![instance.clone()])]))
        .await
        .unwrap();
    assert!(attached.volumes.iter().any(|x| x.id == created.id));
    assert!(api.describe_instance(&instance).await.unwrap().device_names.contains(&"/dev/xvdf".to_owned()));

    // Error codes map to the sentinels the backend branches on.
    let in_use = api.delete_volume(&created.id).await.unwrap_err();
    assert_eq!(in_use.kind, CloudErrorKind::VolumeInUse, "{in_use}");
    api.detach_volume(&created.id, &instance, true).await.unwrap();
    let again = api.detach_volume(&created.id, &instance, false).await.unwrap_err();
    assert_eq!(again.kind, CloudErrorKind::IncorrectState, "{again}");
    api.delete_volume(&created.id).await.unwrap();
    let gone = api.describe_volumes(&VolumeQuery::by_id(&created.id)).await.unwrap_err();
    assert_eq!(gone.kind, CloudErrorKind::NotFound, "{gone}");
    let no_instance = api.describe_instance("i-00000000000000000").await.unwrap_err();
    assert_eq!(no_instance.kind, CloudErrorKind::NotFound, "{no_instance}");
}

#[tokio::test]
async fn an_unreachable_endpoint_is_a_transient_error() {
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let api = rexray::backend::ebs::cloud::AwsEc2::connect(&rexray::backend::ebs::cloud::Connection {
        region: "us-east-1".into(),
        endpoint: Some(format!("http://127.0.0.1:{port}")),
        static_credentials: Some(("test".into(), "test".into())),
    })
    .await;
    let err = api.describe_volumes(&VolumeQuery::default()).await.unwrap_err();
    assert_eq!(err.kind, CloudErrorKind::Transient, "{err}");
    assert!(err.is_retryable());
    // In words: the cause once, no Debug dump of the SDK's error types.
    let text = err.to_string();
    assert!(text.starts_with("EC2 did not answer: ") && text.to_lowercase().contains("connection refused"), "{text}");
    for dump in ["DispatchFailure", "ConnectorError", "{", "Os {"] {
        assert!(!text.contains(dump), "{dump} in {text}");
    }
}

/// Every volume attached to `instance` shows up as `/dev/fake-<id>` (no kernel involved).
#[derive(Debug)]
struct LinkEverything {
    links: PathBuf,
}

impl DeviceHost for LinkEverything {
    fn resolve(&self, path: &Path) -> Option<PathBuf> {
        let name = path.strip_prefix(&self.links).ok()?.to_str()?;
        name.strip_prefix("nvme-Amazon_Elastic_Block_Store_").map(|v| PathBuf::from(format!("/dev/fake-{v}")))
    }
    fn serial(&self, _device: &Path) -> Option<String> {
        None
    }
}

fn service(moto: &Moto, region: &str, instance: &str, az: &str, preempt: bool, tag: Option<&str>) -> ServiceConfig {
    let home = tempfile::tempdir().unwrap().keep();
    let env = BTreeMap::from([("REXRAY_HOME".to_owned(), home.display().to_string())]);
    let mut text = format!(
        "libstorage:\n  service: ebs\n  integration:\n    volume:\n      operations:\n        mount:\n          preempt: {preempt}\n\
         ebs:\n  endpoint: {}\n  region: {region}\n  accessKey: test\n  secretKey: test\n  instanceID: {instance}\n  availabilityZone: {az}\n  deviceLinksDir: /links\n",
        moto.endpoint
    );
    if let Some(t) = tag {
        text.push_str(&format!("  tag: {t}\n"));
    }
    let config = rexray::config::parse(&text, None, &env).expect("config");
    assert!(config.warnings.is_empty(), "{:?}", config.warnings);
    config.services.into_iter().find(|s| s.name == "ebs").expect("ebs service")
}

/// One host's EBS backend, used as the Docker front uses it (both halves composed here).
struct Ebs {
    backend: Backend,
    ebs: Arc<EbsController>,
}

impl Ebs {
    fn parse_options(&self, raw: &BTreeMap<String, String>) -> Result<Options, BackendError> {
        self.backend.controller.parse_options(raw)
    }
    async fn create(&self, name: &VolumeName, opts: &Options) -> Result<(), BackendError> {
        self.backend.controller.create(name, opts, false).await
    }
    async fn activate(&self, name: &VolumeName, opts: &Options) -> Result<PathBuf, BackendError> {
        self.backend.activate_here(name, opts).await
    }
    async fn deactivate(&self, name: &VolumeName, opts: &Options) -> Result<(), BackendError> {
        self.backend.deactivate_here(name, opts).await
    }
    async fn remove(&self, name: &VolumeName, opts: &Options) -> Result<(), BackendError> {
        self.backend.controller.delete(name, opts).await
    }
    fn status(&self, name: &VolumeName, opts: &Options) -> BTreeMap<String, serde_json::Value> {
        self.backend.controller.status(name, opts)
    }
    async fn list(&self, force: bool) -> BTreeMap<String, Vec<rexray::backend::ebs::api::Volume>> {
        self.ebs.list_all(force).await
    }
}

fn backend(svc: &ServiceConfig) -> (Arc<FakeOs>, Ebs) {
    let os = Arc::new(FakeOs::new());
    let moto_conn = svc.ebs.clone();
    let cloud = Arc::new(CloudParts {
        metadata: Arc::new(Imds::new("http://127.0.0.1:9", true)),
        factory: Box::new(move |conn| {
            assert_eq!(conn.endpoint.as_deref(), moto_conn.get("endpoint").map(String::as_str));
            Box::pin(async move {
                let api: Arc<dyn Ec2Api> = Arc::new(rexray::backend::ebs::cloud::AwsEc2::connect(&conn).await);
                api
            })
        }),
    });
    let env = Environment {
        os: os.clone(),
        devices: Arc::new(LinkEverything { links: "/links".into() }),
        host: os.clone(),
        ebs: Some(cloud.clone()),
    };
    let ebs = Arc::new(EbsController::new(svc, &env, cloud).unwrap());
    (os, Ebs { backend: ebs.backend(), ebs })
}

fn name(s: &str) -> VolumeName {
    VolumeName::new(s).unwrap()
}

#[tokio::test]
async fn backend_lifecycle_and_takeover_on_moto() {
    let Some(moto) = Moto::for_test("backend_lifecycle_and_takeover_on_moto") else { return };
    let region = "eu-west-1";
    let api = moto.api(region).await;
    let a_id = moto.run_instance(region, "eu-west-1a");
    let b_id = moto.run_instance(region, "eu-west-1a");
    let c_id = moto.run_instance(region, "eu-west-1b");
    let (a_os, a) = backend(&service(&moto, region, &a_id, "eu-west-1a", false, None));
    let (_, b_off) = backend(&service(&moto, region, &b_id, "eu-west-1a", false, None));
    let (b_os, b_on) = backend(&service(&moto, region, &b_id, "eu-west-1a", true, None));
    let (_, c) = backend(&service(&moto, region, &c_id, "eu-west-1b", false, None));

    // Create with options: the emulator holds the tags, size and type.
    let raw: BTreeMap<String, String> = [("size", "2"), ("volumeType", "gp2"), ("fsType", "xfs"), ("tags", "team=qa")]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let opts = a.parse_options(&raw).unwrap();
    a.create(&name("db"), &opts).await.unwrap();
    a.create(&name("db"), &opts).await.unwrap();
    let vols = volumes_named(&api, "db").await;
    assert_eq!(vols.len(), 1, "create is idempotent");
    let v = &vols[0];
    assert_eq!((v.size_gib, v.volume_type.as_str(), v.availability_zone.as_str()), (2, "gp2", "eu-west-1a"));
    assert_eq!(v.tags.get(OWNER_TAG).map(String::as_str), Some("true"));
    assert_eq!(v.tags.get("rexray-rs/fsType").map(String::as_str), Some("xfs"));
    assert_eq!(v.tags.get("team").map(String::as_str), Some("qa"));

    // Mount on A: attached in EC2 at a device of the default range, formatted xfs.
    let path = a.activate(&name("db"), &opts).await.unwrap();
    assert!(path.ends_with("volumes/db/data"), "{}", path.display());
    let v = &volumes_named(&api, "db").await[0];
    assert_eq!(v.attachments[0].instance_id, a_id);
    assert_eq!(v.attachments[0].device, "/dev/xvdf");
    assert!(a_os.calls().iter().any(|c| matches!(c, Call::Mkfs { fs: rexray::os::FsType::Xfs, .. })));
    let status = a.status(&name("db"), &opts);
    assert_eq!(status["attachedInstance"], a_id.as_str());
    assert_eq!(status["sizeGiB"], 2);

    // moto would let anyone attach it; the backend refuses without preempt, naming A.
    let b_opts = b_off.parse_options(&BTreeMap::new()).unwrap();
    b_off.create(&name("db"), &b_opts).await.unwrap();
    let err = b_off.activate(&name("db"), &b_opts).await.unwrap_err().to_string();
    assert!(err.contains(&format!("attached to instance {a_id}")), "{err}");
    assert_eq!(volumes_named(&api, "db").await[0].attachments[0].instance_id, a_id);
    // A host in another AZ is told where the volume is.
    let err = c.activate(&name("db"), &b_opts).await.unwrap_err().to_string();
    assert!(err.starts_with("volume db is in eu-west-1a; this instance is in eu-west-1b"), "{err}");

    // Preempt: B takes it over; its record says ext4 but the tag says xfs.
    b_on.activate(&name("db"), &b_opts).await.unwrap();
    let v = &volumes_named(&api, "db").await[0];
    assert_eq!(v.attachments.len(), 1);
    assert_eq!(v.attachments[0].instance_id, b_id);
    assert!(b_os.calls().iter().any(|c| matches!(c, Call::Mkfs { fs: rexray::os::FsType::Xfs, .. })));

    // Unmount: detached in EC2. Remove: deleted; again: fine.
    b_on.deactivate(&name("db"), &b_opts).await.unwrap();
    let v = &volumes_named(&api, "db").await[0];
    assert!(v.attachments.is_empty(), "{v:?}");
    assert_eq!(v.state, VolumeState::Available);
    b_on.remove(&name("db"), &b_opts).await.unwrap();
    assert!(volumes_named(&api, "db").await.is_empty());
    b_on.remove(&name("db"), &b_opts).await.unwrap();

    // An implicit volume is 16 GiB gp3.
    b_on.create(&name("imp"), &b_opts).await.unwrap();
    let v = volumes_named(&api, "imp").await.remove(0);
    assert_eq!((v.size_gib, v.volume_type.as_str()), (16, "gp3"));

    // snapshotID: a volume restored from a snapshot takes its size unless one is given.
    let xml = support::ec2_query(&moto.endpoint, region, &[("Action", "CreateSnapshot"), ("VolumeId", &v.id)]).unwrap();
    let start = xml.find("<snapshotId>").unwrap() + "<snapshotId>".len();
    let snap = xml[start..start + xml[start..].find('<').unwrap()].to_owned();
    let raw = BTreeMap::from([("snapshotId".to_owned(), snap.clone())]);
    let restored_opts = b_on.parse_options(&raw).unwrap();
    assert!(!restored_opts.contains_key("size"), "{restored_opts:?}");
    b_on.create(&name("restored"), &restored_opts).await.unwrap();
    let r = &volumes_named(&api, "restored").await[0];
    assert_eq!((r.size_gib, r.snapshot_id.as_deref()), (16, Some(snap.as_str())));
    let raw = BTreeMap::from([("snapshotID".to_owned(), snap.clone()), ("size".to_owned(), "20".to_owned())]);
    b_on.create(&name("bigger"), &b_on.parse_options(&raw).unwrap()).await.unwrap();
    assert_eq!(volumes_named(&api, "bigger").await[0].size_gib, 20);
    for n in ["imp", "restored", "bigger"] {
        b_on.remove(&name(n), &b_opts).await.unwrap();
    }
}

#[tokio::test]
async fn namespaces_duplicates_and_lists_on_moto() {
    let Some(moto) = Moto::for_test("namespaces_duplicates_and_lists_on_moto") else { return };
    let region = "ap-southeast-2";
    let api = moto.api(region).await;
    let i = moto.run_instance(region, "ap-southeast-2a");
    let (_, plain) = backend(&service(&moto, region, &i, "ap-southeast-2a", false, None));
    let (_, scoped) = backend(&service(&moto, region, &i, "ap-southeast-2a", false, Some("prod")));
    let opts = plain.parse_options(&BTreeMap::new()).unwrap();
    scoped.create(&name("db"), &opts).await.unwrap();
    assert_eq!(volumes_named(&api, "prod/db").await.len(), 1);
    assert!(volumes_named(&api, "db").await.is_empty());
    plain.create(&name("other"), &opts).await.unwrap();
    assert_eq!(scoped.list(true).await.keys().collect::<Vec<_>>(), ["db"]);
    assert_eq!(plain.list(true).await.keys().collect::<Vec<_>>(), ["other"]);

    // A second volume with the same Name (moto ignores client tokens): an error listing both.
    let dup = api
        .create_volume(&CreateVolumeRequest {
            size_gib: Some(1),
            availability_zone: "ap-southeast-2b".into(),
            volume_type: "gp3".into(),
            tags: BTreeMap::from([("Name".to_owned(), "prod/db".to_owned())]),
            client_token: "other".into(),
            ..CreateVolumeRequest::default()
        })
        .await
        .unwrap();
    let err = scoped.activate(&name("db"), &opts).await.unwrap_err().to_string();
    assert!(err.contains("2 EC2 volumes are named prod/db") && err.contains(&dup.id), "{err}");
    api.delete_volume(&dup.id).await.unwrap();
    scoped.remove(&name("db"), &opts).await.unwrap();
    plain.remove(&name("other"), &opts).await.unwrap();
}

#[tokio::test]
async fn sdk_snapshot_calls_on_moto() {
    use rexray::backend::ebs::api::{CopySnapshotRequest, CreateSnapshotRequest, SnapshotQuery, SnapshotState};
    let Some(moto) = Moto::for_test("sdk_snapshot_calls_on_moto") else { return };
    let (region, other) = ("ca-central-1", "sa-east-1");
    let api = moto.api(region).await;
    let vol = api
        .create_volume(&CreateVolumeRequest {
            size_gib: Some(5),
            availability_zone: "ca-central-1a".into(),
            volume_type: "gp3".into(),
            client_token: "snapvol".into(),
            ..CreateVolumeRequest::default()
        })
        .await
        .unwrap();
    let tags = BTreeMap::from([("Name".to_owned(), "nightly".to_owned()), (OWNER_TAG.to_owned(), "true".to_owned())]);
    let snap = api
        .create_snapshot(&CreateSnapshotRequest {
            volume_id: vol.id.clone(),
            description: "wire test".into(),
            tags: tags.clone(),
        })
        .await
        .unwrap();
    assert!(snap.id.starts_with("snap-"), "{snap:?}");
    assert_eq!((snap.volume_id.as_str(), snap.size_gib), (vol.id.as_str(), 5));

    // Found by the ownership tag (with owners=self and a page size), and by ID.
    let page = api
        .describe_snapshots(&SnapshotQuery {
            owners: vec!["self".into()],
            filters: vec![(format!("tag:{OWNER_TAG}"), vec!["true".into()])],
            max_results: Some(1000),
            ..SnapshotQuery::default()
        })
        .await
        .unwrap();
    assert_eq!(page.snapshots.iter().map(|s| s.id.as_str()).collect::<Vec<_>>(), [snap.id.as_str()]);
    let found = &page.snapshots[0];
    assert_eq!(found.tags, tags, "tags set in the CreateSnapshot call");
    assert_eq!((found.state.clone(), found.description.as_str()), (SnapshotState::Completed, "wire test"));
    assert!(found.start_time.is_some() && found.owner_id.is_some(), "{found:?}");

    // CopySnapshot is sent to the destination region, naming the source region.
    let west = moto.api(other).await;
    let copy_tags = BTreeMap::from([("Name".to_owned(), "dr".to_owned())]);
    let copy_id = west
        .copy_snapshot(&CopySnapshotRequest {
            source_snapshot_id: snap.id.clone(),
            source_region: region.into(),
            description: "Copy".into(),
            tags: copy_tags.clone(),
        })
        .await
        .unwrap();
    let copied = west
        .describe_snapshots(&SnapshotQuery { ids: vec![copy_id.clone()], ..SnapshotQuery::default() })
        .await
        .unwrap();
    assert_eq!(copied.snapshots.len(), 1);
    assert_eq!((copied.snapshots[0].tags.clone(), copied.snapshots[0].size_gib), (copy_tags, 5));
    let not_here =
        api.describe_snapshots(&SnapshotQuery { ids: vec![copy_id.clone()], ..SnapshotQuery::default() }).await;
    assert_eq!(not_here.unwrap_err().kind, CloudErrorKind::NotFound);

    // A volume from the snapshot; then delete, and a second delete is NotFound.
    let restored = api
        .create_volume(&CreateVolumeRequest {
            availability_zone: "ca-central-1a".into(),
            volume_type: "gp3".into(),
            snapshot_id: Some(snap.id.clone()),
            client_token: "restored".into(),
            ..CreateVolumeRequest::default()
        })
        .await
        .unwrap();
    assert_eq!((restored.snapshot_id.as_deref(), restored.size_gib), (Some(snap.id.as_str()), 5));
    api.delete_snapshot(&snap.id).await.unwrap();
    let again = api.delete_snapshot(&snap.id).await.unwrap_err();
    assert_eq!(again.kind, CloudErrorKind::NotFound, "{again}");
    west.delete_snapshot(&copy_id).await.unwrap();
}

/// `rexray snapshot …` and `volume create --snapshotID` through the built binary against moto:
/// in-process first, then through a running daemon's admin socket.
#[test]
fn snapshot_commands_on_moto_in_process_and_through_the_daemon() {
    use serde_json::Value;

    let Some(moto) = Moto::for_test("snapshot_commands_on_moto_in_process_and_through_the_daemon") else { return };
    let (region, other, az) = ("eu-central-1", "eu-north-1", "eu-central-1a");
    let setup = CliSetup::new(&moto, (region, az), "snapcli", |_| String::new());
    let (dir, config, home) = (setup.dir.path(), &setup.config, &setup.home);
    let rexray = |args: &[&str]| cli(config, home, args);
    let json = |args: &[&str]| -> Value {
        let out = rexray(args).assert().success().get_output().stdout.clone();
        serde_json::from_slice(&out).unwrap_or_else(|e| panic!("{args:?}: {e}: {}", String::from_utf8_lossy(&out)))
    };

    // In-process (no daemon): create a volume, snapshot it, list it, copy it to another region.
    rexray(&["volume", "create", "--size", "2", "data1"]).assert().success();
    let created = json(&["snapshot", "create", "--volumeid", "data1", "--snapshotname", "nightly", "-f", "json"]);
    let snap = &created[0];
    let id = snap["ID"].as_str().unwrap().to_owned();
    assert_eq!((snap["State"].as_str(), snap["Name"].as_str()), (Some("completed"), Some("nightly")), "{snap}");
    assert_eq!((snap["Volume"].as_str(), snap["SizeGiB"].as_u64()), (Some("data1"), Some(2)), "{snap}");
    assert_eq!(snap["Tags"]["Name"], "snapcli/nightly");
    let listed = json(&["snapshot", "ls", "-f", "json"]);
    assert_eq!(listed.as_array().unwrap().iter().map(|s| s["ID"].as_str().unwrap()).collect::<Vec<_>>(), [id.as_str()]);
    let table = rexray(&["snapshot", "ls"]).assert().success().get_output().stdout.clone();
    let table = String::from_utf8(table).unwrap();
    assert!(table.starts_with("ID ") && table.contains(&id) && table.contains("nightly"), "{table}");
    let all = json(&["snapshot", "ls", "--all", "-f", "json"]);
    assert!(all.as_array().unwrap().iter().any(|s| s["ID"] == id.as_str()));
    let copy = json(&[
        "snapshot",
        "copy",
        "--snapshotid",
        &id,
        "--destinationregion",
        other,
        "--destinationsnapshotname",
        "dr",
        "-f",
        "json",
    ]);
    assert_eq!((copy[0]["Region"].as_str(), copy[0]["Name"].as_str()), (Some(other), Some("dr")), "{copy}");
    assert_eq!(copy[0]["State"], "completed");
    assert_eq!(copy[0]["Tags"]["rexray-rs/copiedFrom"], format!("{region}/{id}"));

    // A volume from the snapshot keeps the snapshot's size and says where it came from.
    rexray(&["volume", "create", "--snapshotID", &id, "restored"]).assert().success();
    let restored = json(&["volume", "ls", "restored", "-f", "json"]);
    assert_eq!(restored[0]["Status"]["snapshotID"], id.as_str(), "{restored}");
    assert_eq!(restored[0]["Status"]["sizeGiB"], 2, "{restored}");
    let volumes = json(&["volume", "ls", "-f", "json"]);
    assert_eq!(volumes.as_array().unwrap().len(), 2, "{volumes}");

    // Through a running daemon: the same commands act via its admin socket.
    let admin = home.join("var/run/rexray/rexray-admin.sock");
    let daemon = common::start_daemon(config, home, &dir.join("daemon.log"), &[dir.join("plugins/ebs.sock"), admin]);
    let second = json(&["snapshot", "create", "--volumeid", "restored", "--runasync", "-f", "json"]);
    let second_id = second[0]["ID"].as_str().unwrap().to_owned();
    assert_eq!(second[0]["Name"], "restored", "default name: the volume's");
    let listed = json(&["snapshot", "ls", "-f", "json"]);
    assert_eq!(listed.as_array().unwrap().len(), 2, "{listed}");
    let log = std::fs::read_to_string(dir.join("daemon.log")).unwrap();
    assert!(log.contains("started EBS snapshot"), "the daemon took the snapshot: {log}");
    rexray(&["snapshot", "create", "--volumeid", "nosuch"])
        .assert()
        .code(1)
        .stderr(predicates::str::contains("snapshot \"nosuch\": no such volume"));
    rexray(&["snapshot", "rm", &second_id, &id]).assert().success();
    rexray(&["snapshot", "rm", &id])
        .assert()
        .code(1)
        .stderr(predicates::str::contains(format!("snapshot {id} does not exist in EC2 region {region}")));
    rexray(&["snapshot", "ls", "snap-0/x"])
        .assert()
        .code(1)
        .stderr(predicates::str::contains("not an EBS snapshot ID"));
    assert_eq!(json(&["snapshot", "ls", "-f", "json"]), serde_json::json!([]));
    drop(daemon);
}

/// No credential (access key ID, secret key, session token) reaches the log at any level, the
/// SDK's own trace output included: with the keys in the config, and from the environment.
#[test]
fn no_credential_reaches_the_log_even_at_trace_level() {
    let Some(moto) = Moto::for_test("no_credential_reaches_the_log_even_at_trace_level") else { return };
    let (region, az) = ("sa-east-1", "sa-east-1a");
    let instance = moto.run_instance(region, az);
    const KEY_ID: &str = "AKIAZZLEAKCHECK00001";
    const SECRET: &str = "leakCheckSecret/0123456789abcdefghijklmnop";
    const TOKEN: &str = "leakCheckSessionToken0123456789abcdefghijklmnopqrstuvwxyz";
    for (variant, keys_in_config) in [("config", true), ("environment", false)] {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("rexray.yml");
        let keys =
            if keys_in_config { format!("  accessKey: {KEY_ID}\n  secretKey: {SECRET}\n") } else { String::new() };
        std::fs::write(
            &config,
            format!(
                "rexray:\n  logLevel: trace\n  modules:\n    default-docker:\n      host: unix://{0}/plugins/ebs.sock\nlibstorage:\n  service: ebs\n\
                 ebs:\n  endpoint: {1}\n  region: {region}\n{keys}  instanceID: {instance}\n  availabilityZone: {az}\n  tag: leak{variant}\n",
                dir.path().display(),
                moto.endpoint
            ),
        )
        .unwrap();
        let home = dir.path().join("home");
        let log = dir.path().join("daemon.log");
        let mut daemon = std::process::Command::new(common::BIN);
        daemon
            .args(["service", "start", "-f", "-c"])
            .arg(&config)
            .env("REXRAY_HOME", &home)
            .env("RUST_LOG", "trace")
            .env_remove("AWS_PROFILE")
            .stdout(std::process::Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap());
        if !keys_in_config {
            daemon
                .env("AWS_ACCESS_KEY_ID", KEY_ID)
                .env("AWS_SECRET_ACCESS_KEY", SECRET)
                .env("AWS_SESSION_TOKEN", TOKEN);
        }
        let child = daemon.spawn().unwrap();
        let socket = dir.path().join("plugins/ebs.sock");
        let _daemon = common::Daemon { child, socket: socket.clone() };
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        while std::os::unix::net::UnixStream::connect(&socket).is_err() {
            assert!(std::time::Instant::now() < deadline, "{}", std::fs::read_to_string(&log).unwrap_or_default());
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        let rexray = |args: &[&str]| {
            let mut cmd = assert_cmd::Command::new(common::BIN);
            cmd.args(args)
                .arg("-c")
                .arg(&config)
                .env("REXRAY_HOME", &home)
                .timeout(std::time::Duration::from_secs(120));
            cmd
        };
        rexray(&["volume", "create", "--size", "1", "secretive"]).assert().success();
        rexray(&["volume", "ls"]).assert().success();
        rexray(&["volume", "inspect", "secretive"]).assert().success();
        rexray(&["volume", "rm", "secretive"]).assert().success();
        let text = std::fs::read_to_string(&log).unwrap();
        assert!(text.contains("TRACE"), "{variant}: the log is at trace level");
        assert!(
            text.contains("CreateVolume") || text.contains("create_volume"),
            "{variant}: the SDK's calls are in it"
        );
        for secret in [KEY_ID, SECRET, TOKEN] {
            let at = text.find(secret).map(|i| &text[i.saturating_sub(300)..(i + 100).min(text.len())]);
            assert!(at.is_none(), "{variant}: {secret} is in the log: …{}…", at.unwrap_or_default());
        }
    }
}

/// Long CLI operations say on stderr what they wait for, in process and through the daemon;
/// `rexray volume modify` against moto, in process and through the daemon: the type, IOPS and
/// throughput change on EC2's volume and in the record, and a change EBS would refuse is refused
/// before EC2 is asked, with what to do instead.
#[test]
fn modify_on_moto_in_process_and_through_the_daemon() {
    use serde_json::Value;

    let Some(moto) = Moto::for_test("modify_on_moto_in_process_and_through_the_daemon") else { return };
    let (region, az) = ("sa-east-1", "sa-east-1a");
    let setup = CliSetup::new(&moto, (region, az), "modcli", |_| String::new());
    let (dir, config, home) = (setup.dir.path(), &setup.config, &setup.home);
    let rexray = |args: &[&str]| cli(config, home, args);
    let status = |name: &str| -> Value {
        let out = rexray(&["volume", "inspect", name, "-f", "json"]).assert().success().get_output().stdout.clone();
        let v: Value = serde_json::from_slice(&out).unwrap();
        v[0]["Status"].clone()
    };
    let refused = |args: &[&str]| -> String {
        String::from_utf8(rexray(args).assert().failure().get_output().stderr.clone()).unwrap()
    };

    rexray(&["volume", "create", "--size", "20", "data1"]).assert().success();
    // In process: gp3 to 6000 IOPS and 500 MiB/s.
    rexray(&["volume", "modify", "data1", "--iops", "6000", "--throughput", "500"]).assert().success();
    let s = status("data1");
    assert_eq!(
        (s["volumeType"].as_str(), s["iops"].as_u64(), s["throughput"].as_u64()),
        (Some("gp3"), Some(6000), Some(500)),
        "{s}"
    );
    assert_eq!(
        (s["options"]["iops"].as_str(), s["options"]["throughput"].as_str()),
        (Some("6000"), Some("500")),
        "{s}"
    );
    // Refused before any call, each with what would work.
    let e = refused(&["volume", "modify", "data1", "--iops", "20000"]);
    assert!(e.contains("a 20 GiB gp3 volume takes at most 10000 iops") && e.contains("grow it to 40 GiB"), "{e}");
    let e = refused(&["volume", "modify", "data1", "--type", "io1"]);
    assert!(e.contains("at most 1000 iops (50 per GiB)"), "{e}");
    let e = refused(&["volume", "modify", "data1"]);
    assert!(e.contains("nothing to change"), "{e}");

    // Through the daemon: to io2 with its IOPS; the throughput goes with gp3.
    let socket = dir.join("plugins/ebs.sock");
    let admin = home.join("var/run/rexray/rexray-admin.sock");
    let _daemon = common::start_daemon(config, home, &dir.join("daemon.log"), &[socket, admin]);
    rexray(&["volume", "modify", "data1", "--type", "io2", "--iops", "8000"]).assert().success();
    let s = status("data1");
    assert_eq!((s["volumeType"].as_str(), s["iops"].as_u64()), (Some("io2"), Some(8000)), "{s}");
    assert!(s["options"].get("throughput").is_none(), "{s}");
    let e = refused(&["volume", "modify", "data1", "--throughput", "300"]);
    assert!(e.contains("only gp3 takes throughput, not io2"), "{e}");
}

/// `rexray volume move` against moto, in process and through the daemon: the name follows a
/// copy in the other zone (made from a snapshot, with the same type, IOPS and tags), the old
/// volume is kept under a name no host takes until `--delete-source`, the move's snapshot is
/// gone, and a zone that is not one is refused before anything happens.
#[test]
fn move_on_moto_in_process_and_through_the_daemon() {
    use serde_json::Value;

    let Some(moto) = Moto::for_test("move_on_moto_in_process_and_through_the_daemon") else { return };
    let (region, az, other) = ("eu-west-3", "eu-west-3a", "eu-west-3c");
    let setup = CliSetup::new(&moto, (region, az), "movecli", |_| String::new());
    let (dir, config, home) = (setup.dir.path(), &setup.config, &setup.home);
    let rexray = |args: &[&str]| cli(config, home, args);
    let status = |name: &str| -> Value {
        let out = rexray(&["volume", "inspect", name, "-f", "json"]).assert().success().get_output().stdout.clone();
        let v: Value = serde_json::from_slice(&out).unwrap();
        v[0]["Status"].clone()
    };
    let rt = tokio::runtime::Runtime::new().unwrap();
    let api = rt.block_on(moto.api(region));
    let volume = |id: &str| {
        rt.block_on(api.describe_volumes(&VolumeQuery::by_id(id))).ok().and_then(|p| p.volumes.into_iter().next())
    };

    rexray(&["volume", "create", "--size", "6", "--volumeType", "io1", "--iops", "300", "data1"]).assert().success();
    let old = status("data1")["volumeID"].as_str().unwrap().to_owned();
    let e = String::from_utf8(
        rexray(&["volume", "move", "data1", "--zone", "Mars"]).assert().failure().get_output().stderr.clone(),
    )
    .unwrap();
    assert!(e.contains("zone") && e.contains("Mars"), "{e}");

    // In process.
    rexray(&["volume", "move", "data1", "--zone", other]).assert().success();
    let s = status("data1");
    let new = s["volumeID"].as_str().unwrap().to_owned();
    assert_ne!(new, old);
    assert_eq!(s["availabilityZone"], other, "{s}");
    assert_eq!(s["options"]["availabilityZone"], other, "{s}");
    assert_eq!(s["movedFrom"], old.as_str(), "{s}");
    assert_eq!(
        (s["volumeType"].as_str(), s["iops"].as_u64(), s["sizeGiB"].as_u64()),
        (Some("io1"), Some(300), Some(6))
    );
    let kept = volume(&old).expect("the old volume is kept");
    assert_eq!(kept.tags["Name"], format!("movecli/data1/moved-to-{new}"));
    assert_eq!(kept.availability_zone, az);
    let copy = volume(&new).unwrap();
    let snapshot = copy.snapshot_id.clone().expect("made from a snapshot");
    let snapshots = rt.block_on(api.describe_snapshots(&rexray::backend::ebs::api::SnapshotQuery {
        ids: vec![snapshot.clone()],
        ..Default::default()
    }));
    assert!(snapshots.map_or(true, |p| p.snapshots.is_empty()), "the move's snapshot {snapshot} is left");
    let out = rexray(&["volume", "ls", "-f", "json"]).assert().success().get_output().stdout.clone();
    let listed: Value = serde_json::from_slice(&out).unwrap();
    let names: Vec<&str> = listed.as_array().unwrap().iter().filter_map(|v| v["Name"].as_str()).collect();
    assert_eq!(names, vec!["data1"], "the old volume answers to no name");

    // Through the daemon: once more, now deleting the old volume.
    let socket = dir.join("plugins/ebs.sock");
    let admin = home.join("var/run/rexray/rexray-admin.sock");
    let _daemon = common::start_daemon(config, home, &dir.join("daemon.log"), &[socket, admin]);
    rexray(&["volume", "move", "data1", "--zone", other, "--delete-source"]).assert().success();
    assert!(volume(&old).is_none_or(|v| v.state == VolumeState::Deleted), "--delete-source deletes the old volume");
    assert_eq!(status("data1")["volumeID"], new.as_str());
    rexray(&["volume", "move", "data1", "--zone", az]).assert().success();
    let back = status("data1");
    assert_eq!(back["availabilityZone"], az, "{back}");
    assert_eq!(back["movedFrom"], new.as_str(), "{back}");
}

/// `volume ls` shows the EC2 volume ID and zone.
#[test]
fn cli_progress_and_ebs_columns_on_moto() {
    let Some(moto) = Moto::for_test("cli_progress_and_ebs_columns_on_moto") else { return };
    let (region, az) = ("ap-southeast-2", "ap-southeast-2a");
    let setup = CliSetup::new(&moto, (region, az), "progress", |dir| {
        // No device ever appears in this links directory: the mount waits for it until statusTimeout.
        let links = dir.join("links");
        std::fs::create_dir_all(&links).unwrap();
        format!("  deviceLinksDir: {}\n  statusTimeout: 5s\n", links.display())
    });
    let (dir, config, home) = (setup.dir.path(), &setup.config, &setup.home);
    let rexray = |args: &[&str]| cli(config, home, args);
    rexray(&["volume", "create", "--size", "1", "slow"]).assert().success();
    let table = String::from_utf8(rexray(&["volume", "ls"]).assert().success().get_output().stdout.clone()).unwrap();
    let mut lines = table.lines();
    assert!(
        lines.next().unwrap().starts_with("NAME  ") && table.contains(" ID ") && table.contains(" ZONE "),
        "{table}"
    );
    let row = lines.next().unwrap();
    assert!(row.starts_with("slow ") && row.contains(" vol-") && row.contains(az) && row.contains("1 GiB"), "{table}");

    let check = |stderr: &str| {
        assert!(
            stderr.contains("mount slow: waiting for the device of volume slow (vol-")
                && stderr.contains("to appear: none of ")
                && stderr.contains("/dev/xvdf, /dev/sdf exists ("),
            "{stderr}"
        );
        assert!(stderr.contains("no device appeared for volume slow"), "{stderr}");
    };
    // In process.
    let out = rexray(&["volume", "mount", "slow"]).assert().failure();
    check(&String::from_utf8_lossy(&out.get_output().stderr));
    // Through the daemon.
    let socket = dir.join("plugins/ebs.sock");
    let admin = home.join("var/run/rexray/rexray-admin.sock");
    let _daemon = common::start_daemon(config, home, &dir.join("daemon.log"), &[socket, admin]);
    let out = rexray(&["volume", "mount", "slow"]).assert().failure();
    check(&String::from_utf8_lossy(&out.get_output().stderr));
}

/// `rexray ARGS… -c CONFIG` with a clean environment and REXRAY_HOME at `home`.
/// A config for the CLI and the daemon on moto: one EBS service in `region` as an instance in
/// `az` (run in moto), names under `ebs.tag: tag`, and what `extra` adds to the `ebs` section.
struct CliSetup {
    dir: tempfile::TempDir,
    config: PathBuf,
    home: PathBuf,
}

impl CliSetup {
    fn new(moto: &Moto, (region, az): (&str, &str), tag: &str, extra: impl FnOnce(&Path) -> String) -> Self {
        let instance = moto.run_instance(region, az);
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("rexray.yml");
        std::fs::write(
            &config,
            format!(
                "rexray:\n  modules:\n    default-docker:\n      host: unix://{0}/plugins/ebs.sock\nlibstorage:\n  service: ebs\n\
                 ebs:\n  endpoint: {1}\n  region: {region}\n  accessKey: test\n  secretKey: test\n  instanceID: {instance}\n  availabilityZone: {az}\n  tag: {tag}\n{2}",
                dir.path().display(),
                moto.endpoint,
                extra(dir.path())
            ),
        )
        .unwrap();
        let home = dir.path().join("home");
        Self { dir, config, home }
    }
}

fn cli(config: &Path, home: &Path, args: &[&str]) -> assert_cmd::Command {
    let mut cmd = assert_cmd::Command::new(common::BIN);
    cmd.args(args)
        .arg("-c")
        .arg(config)
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("REXRAY_HOME", home)
        .timeout(std::time::Duration::from_secs(120));
    cmd
}
