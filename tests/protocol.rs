//! Docker-shaped requests, byte for byte, against a real Unix socket served by the daemon's
//! router over the fake backend.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rexray::backend::fake::FakeBackend;
use rexray::config::Integration;
use rexray::service::{ServiceHandle, VolumeService};
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;

struct Server {
    socket: PathBuf,
    fake: Arc<FakeBackend>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<()>,
    _dir: tempfile::TempDir,
}

fn settings() -> Integration {
    Integration::defaults(std::path::Path::new("/var/lib/rexray"))
}

async fn start_with(dir: tempfile::TempDir, fake: Arc<FakeBackend>) -> Server {
    let socket = dir.path().join("plugins/test.sock");
    let backend = FakeBackend::backend(&fake);
    let service = VolumeService::open("test", backend, settings(), dir.path().join("state"), Some("this-boot".into()))
        .await
        .unwrap();
    let router = rexray::protocol::router(Arc::new(ServiceHandle::ready(Arc::new(service))));
    let bound = rexray::server::bind(&socket, None).unwrap();
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(async move {
        rexray::server::serve(vec![(bound, router)], rexray::server::Limits::default(), async move {
            let _ = rx.await;
        })
        .await
        .unwrap();
    });
    Server { socket, fake, stop: Some(tx), task, _dir: dir }
}

async fn start() -> Server {
    start_with(tempfile::tempdir().unwrap(), Arc::new(FakeBackend::default())).await
}

impl Server {
    async fn stop(mut self) -> tempfile::TempDir {
        self.stop.take().unwrap().send(()).unwrap();
        tokio::time::timeout(Duration::from_secs(10), &mut self.task).await.unwrap().unwrap();
        assert!(!self.socket.exists(), "socket removed on clean exit");
        self._dir
    }
}

/// One raw HTTP exchange; returns (status, headers, body).
async fn raw(socket: &Path, request: &[u8]) -> (u16, String, Vec<u8>) {
    let stream = UnixStream::connect(socket).await.unwrap();
    let (read_half, mut write_half) = stream.into_split();
    let request = request.to_vec();
    // Written concurrently: the daemon may answer (and close) before it has read everything.
    let writer = tokio::spawn(async move {
        let _ = write_half.write_all(&request).await;
        write_half
    });
    let mut reader = BufReader::new(read_half);
    let mut head = String::new();
    loop {
        let mut line = String::new();
        reader.read_line(&mut line).await.unwrap();
        if line == "\r\n" || line.is_empty() {
            break;
        }
        head.push_str(&line);
    }
    let status: u16 = head.split(' ').nth(1).unwrap().parse().unwrap();
    let len = head
        .lines()
        .find_map(|l| {
            l.to_ascii_lowercase().strip_prefix("content-length:").map(|v| v.trim().parse::<usize>().unwrap())
        })
        .unwrap_or(0);
    let mut body = vec![0; len];
    reader.read_exact(&mut body).await.unwrap();
    drop(writer.await);
    (status, head, body)
}

/// A request exactly as dockerd sends it: POST, Accept only, no Content-Type, `json.Encoder` body.
fn docker_request(endpoint: &str, body: &str) -> Vec<u8> {
    format!(
        "POST /{endpoint} HTTP/1.1\r\nHost: plugin.moby.localhost\r\nUser-Agent: Go-http-client/1.1\r\nContent-Length: {}\r\nAccept: application/vnd.docker.plugins.v1.2+json\r\nAccept-Encoding: gzip\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

async fn call(server: &Server, endpoint: &str, body: &str) -> Value {
    let (status, _, bytes) = raw(&server.socket, &docker_request(endpoint, body)).await;
    let value: Value = serde_json::from_slice(&bytes).unwrap_or_else(|e| panic!("{endpoint}: bad JSON {e}: {bytes:?}"));
    if status != 200 {
        assert!(value["Err"].is_string(), "{endpoint}: non-200 without Err: {value}");
    }
    value
}

fn no_err(v: &Value) {
    assert!(v.get("Err").is_none(), "unexpected error: {v}");
}

#[tokio::test]
async fn activate_with_empty_body_and_odd_host() {
    let s = start().await;
    let req = b"POST /Plugin.Activate HTTP/1.1\r\nHost: /run/docker/plugins/test.sock\r\nContent-Length: 0\r\nAccept: application/vnd.docker.plugins.v1.2+json\r\n\r\n";
    let (status, head, body) = raw(&s.socket, req).await;
    assert_eq!(status, 200);
    assert!(head.to_ascii_lowercase().contains("content-type: application/vnd.docker.plugins.v1.2+json"));
    assert_eq!(serde_json::from_slice::<Value>(&body).unwrap(), serde_json::json!({"Implements": ["VolumeDriver"]}));
    // No Content-Length and no body at all (HTTP/1.0 style close).
    let (status, _, _) =
        raw(&s.socket, b"POST /Plugin.Activate HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n").await;
    assert_eq!(status, 200);
    s.stop().await;
}

#[tokio::test]
async fn create_accepts_null_missing_and_empty_opts() {
    let s = start().await;
    no_err(&call(&s, "VolumeDriver.Create", "{\"Name\":\"a\",\"Opts\":null}\n").await);
    no_err(&call(&s, "VolumeDriver.Create", "{\"Name\":\"b\"}\n").await);
    no_err(&call(&s, "VolumeDriver.Create", "{\"Name\":\"c\",\"Opts\":{}}\n").await);
    no_err(&call(&s, "VolumeDriver.Create", "{\"Name\":\"d\",\"Opts\":{\"Size\":\"2\"},\"Extra\":1}\n").await);
    let list = call(&s, "VolumeDriver.List", "{}\n").await;
    let names: Vec<&str> = list["Volumes"].as_array().unwrap().iter().map(|v| v["Name"].as_str().unwrap()).collect();
    assert_eq!(names, ["a", "b", "c", "d"]);
    s.stop().await;
}

#[tokio::test]
async fn errors_name_volume_operation_and_cause() {
    let s = start().await;
    let v = call(&s, "VolumeDriver.Create", "{\"Name\":\"v\",\"Opts\":{\"bogus\":\"1\"}}\n").await;
    let err = v["Err"].as_str().unwrap();
    assert!(err.starts_with("create \"v\"") && err.contains("bogus"), "{err}");
    let v = call(&s, "VolumeDriver.Create", "{\"Name\":\"v\",\"Opts\":{\"size\":\"abc\"}}\n").await;
    assert!(v["Err"].as_str().unwrap().contains("size=\"abc\""), "{v}");
    let v = call(&s, "VolumeDriver.Get", "{\"Name\":\"missing\"}\n").await;
    assert_eq!(v["Err"], "get \"missing\": no such volume");
    let v = call(&s, "VolumeDriver.Mount", "{\"Name\":\"../../etc\",\"ID\":\"x\"}\n").await;
    assert!(v["Err"].as_str().unwrap().contains("contains '/'"), "{v}");
    // Malformed JSON → 400 with Err.
    let (status, _, body) = raw(&s.socket, &docker_request("VolumeDriver.Create", "{not json")).await;
    assert_eq!(status, 400);
    assert!(serde_json::from_slice::<Value>(&body).unwrap()["Err"].as_str().unwrap().contains("malformed"));
    // Unknown endpoint → 404.
    let (status, _, _) = raw(&s.socket, &docker_request("VolumeDriver.Frobnicate", "{}\n")).await;
    assert_eq!(status, 404);
    // Bodies over 1 MiB are refused, and the daemon goes on.
    let big = format!("{{\"Name\":\"{}\"}}", "x".repeat(2 << 20));
    let (status, _, _) = raw(&s.socket, &docker_request("VolumeDriver.Create", &big)).await;
    assert_eq!(status, 413);
    no_err(&call(&s, "VolumeDriver.Capabilities", "{}\n").await);
    s.stop().await;
}

#[tokio::test]
async fn get_reports_status_and_rfc3339_created_at() {
    let s = start().await;
    call(&s, "VolumeDriver.Create", "{\"Name\":\"v\",\"Opts\":{\"size\":\"3\"}}\n").await;
    let v = call(&s, "VolumeDriver.Get", "{\"Name\":\"v\"}\n").await;
    let vol = &v["Volume"];
    assert_eq!(vol["Name"], "v");
    assert!(vol.get("Mountpoint").is_none(), "not mounted: {vol}");
    assert!(humantime::parse_rfc3339(vol["CreatedAt"].as_str().unwrap()).is_ok());
    assert_eq!(vol["Status"]["service"], "test");
    assert_eq!(vol["Status"]["backend"], "fake");
    assert_eq!(vol["Status"]["holders"], 0);
    assert_eq!(vol["Status"]["options"]["size"], "3");
    let caps = call(&s, "VolumeDriver.Capabilities", "{}\n").await;
    assert_eq!(caps, serde_json::json!({"Capabilities": {"Scope": "local"}}));
    s.stop().await;
}

/// docker-protocol.md §3.1, sequences 1–8, as the engine sends them.
#[tokio::test]
async fn engine_call_sequences() {
    let s = start().await;
    let id1 = "a".repeat(64);
    let id2 = "b".repeat(64);
    let mount = |n: &str, id: &str| format!("{{\"Name\":\"{n}\",\"ID\":\"{id}\"}}\n");
    // 1. docker run --volume-driver on an absent volume: Get (fails), Create(null), Get, Mount, Get, Unmount.
    assert!(call(&s, "VolumeDriver.Get", "{\"Name\":\"v\"}\n").await["Err"].is_string());
    no_err(&call(&s, "VolumeDriver.Create", "{\"Name\":\"v\",\"Opts\":null}\n").await);
    no_err(&call(&s, "VolumeDriver.Get", "{\"Name\":\"v\"}\n").await);
    let m = call(&s, "VolumeDriver.Mount", &mount("v", &id1)).await;
    assert_eq!(m["Mountpoint"], "/fake/v");
    let g = call(&s, "VolumeDriver.Get", "{\"Name\":\"v\"}\n").await;
    assert_eq!(g["Volume"]["Mountpoint"], "/fake/v");
    let p = call(&s, "VolumeDriver.Path", "{\"Name\":\"v\"}\n").await;
    assert_eq!(p["Mountpoint"], "/fake/v");
    no_err(&call(&s, "VolumeDriver.Unmount", &mount("v", &id1)).await);
    assert_eq!(call(&s, "VolumeDriver.Path", "{\"Name\":\"v\"}\n").await["Mountpoint"], "");
    // 2. copy-up at create: Mount(A), Unmount(A), then Mount(B) at start.
    call(&s, "VolumeDriver.Mount", &mount("v", &id1)).await;
    call(&s, "VolumeDriver.Unmount", &mount("v", &id1)).await;
    call(&s, "VolumeDriver.Mount", &mount("v", &id2)).await;
    // 3. docker cp on the running container: Mount(B) again, Unmount(B) once: still mounted.
    call(&s, "VolumeDriver.Mount", &mount("v", &id2)).await;
    call(&s, "VolumeDriver.Unmount", &mount("v", &id2)).await;
    assert_eq!(call(&s, "VolumeDriver.Path", "{\"Name\":\"v\"}\n").await["Mountpoint"], "/fake/v");
    // 5/6. Unmount failed or dockerd died: the same ID is mounted again with no Unmount between.
    call(&s, "VolumeDriver.Mount", &mount("v", &id2)).await;
    // 8. a second container, concurrently.
    let id3 = "c".repeat(64);
    call(&s, "VolumeDriver.Mount", &mount("v", &id3)).await;
    let g = call(&s, "VolumeDriver.Get", "{\"Name\":\"v\"}\n").await;
    assert_eq!(g["Volume"]["Status"]["holders"], 3);
    // Remove while held is refused and names the cause.
    let r = call(&s, "VolumeDriver.Remove", "{\"Name\":\"v\"}\n").await;
    assert!(r["Err"].as_str().unwrap().contains("in use"), "{r}");
    call(&s, "VolumeDriver.Unmount", &mount("v", &id3)).await;
    call(&s, "VolumeDriver.Unmount", &mount("v", &id2)).await;
    call(&s, "VolumeDriver.Unmount", &mount("v", &id2)).await;
    // 4. a failed mount sends no Unmount; an Unmount of an unknown ID still succeeds.
    no_err(&call(&s, "VolumeDriver.Unmount", &mount("v", "ffff")).await);
    no_err(&call(&s, "VolumeDriver.Remove", "{\"Name\":\"v\"}\n").await);
    no_err(&call(&s, "VolumeDriver.Remove", "{\"Name\":\"v\"}\n").await);
    assert_eq!(
        s.fake.calls(),
        [
            "create:v",
            "activate:v",
            "deactivate:v",
            "activate:v",
            "deactivate:v",
            "activate:v",
            "deactivate:v",
            "remove:v"
        ]
    );
    s.stop().await;
}

/// dvdcli: Activate, Get, Create, Mount with no ID (×N from Mesos), then Get and one Unmount.
#[tokio::test]
async fn dvdcli_sequence() {
    let s = start().await;
    for _ in 0..3 {
        call(&s, "VolumeDriver.Get", "{\"Name\":\"mesos1\"}\n").await;
        call(&s, "VolumeDriver.Create", "{\"Name\":\"mesos1\",\"Opts\":{\"size\":\"1\"}}\n").await;
        let m = call(&s, "VolumeDriver.Mount", "{\"Name\":\"mesos1\"}\n").await;
        assert_eq!(m["Mountpoint"], "/fake/mesos1");
    }
    no_err(&call(&s, "VolumeDriver.Get", "{\"Name\":\"mesos1\"}\n").await);
    no_err(&call(&s, "VolumeDriver.Unmount", "{\"Name\":\"mesos1\"}\n").await);
    assert_eq!(s.fake.calls(), ["create:mesos1", "activate:mesos1", "deactivate:mesos1"]);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sixteen_parallel_mounts_then_unmounts() {
    let s =
        start_with(tempfile::tempdir().unwrap(), Arc::new(FakeBackend::with_delay(Duration::from_millis(20)))).await;
    call(&s, "VolumeDriver.Create", "{\"Name\":\"p\"}\n").await;
    let socket = s.socket.clone();
    let run = |endpoint: &'static str| {
        let socket = socket.clone();
        (0..16)
            .map(move |i| {
                let socket = socket.clone();
                tokio::spawn(async move {
                    let (status, _, _) =
                        raw(&socket, &docker_request(endpoint, &format!("{{\"Name\":\"p\",\"ID\":\"{i}\"}}\n"))).await;
                    assert_eq!(status, 200);
                })
            })
            .collect::<Vec<_>>()
    };
    for t in run("VolumeDriver.Mount") {
        t.await.unwrap();
    }
    assert_eq!(s.fake.count("activate"), 1);
    for t in run("VolumeDriver.Unmount") {
        t.await.unwrap();
    }
    assert_eq!(s.fake.count("deactivate"), 1);
    assert_eq!(s.fake.calls().last().unwrap(), "deactivate:p");
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hundred_simultaneous_connections() {
    let s = start().await;
    let mut streams = Vec::new();
    for _ in 0..150 {
        streams.push(UnixStream::connect(&s.socket).await.unwrap());
    }
    let tasks: Vec<_> = streams
        .into_iter()
        .map(|mut stream| {
            tokio::spawn(async move {
                stream.write_all(&docker_request("VolumeDriver.List", "{}\n")).await.unwrap();
                let mut buf = [0u8; 12];
                stream.read_exact(&mut buf).await.unwrap();
                assert_eq!(&buf, b"HTTP/1.1 200");
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    s.stop().await;
}

#[tokio::test]
async fn restart_from_persisted_state() {
    let fake = Arc::new(FakeBackend::default());
    let s = start_with(tempfile::tempdir().unwrap(), fake.clone()).await;
    call(&s, "VolumeDriver.Create", "{\"Name\":\"r\",\"Opts\":{\"size\":\"4\"}}\n").await;
    call(&s, "VolumeDriver.Mount", "{\"Name\":\"r\",\"ID\":\"x\"}\n").await;
    let dir = s.stop().await;
    let s = start_with(dir, fake.clone()).await;
    let g = call(&s, "VolumeDriver.Get", "{\"Name\":\"r\"}\n").await;
    assert_eq!(g["Volume"]["Status"]["holders"], 1);
    assert_eq!(g["Volume"]["Status"]["options"]["size"], "4");
    assert_eq!(call(&s, "VolumeDriver.Path", "{\"Name\":\"r\"}\n").await["Mountpoint"], "/fake/r");
    no_err(&call(&s, "VolumeDriver.Unmount", "{\"Name\":\"r\",\"ID\":\"x\"}\n").await);
    assert_eq!(fake.count("deactivate"), 1);
    s.stop().await;
}

#[tokio::test]
async fn a_live_socket_is_not_stolen_and_a_stale_one_is_replaced() {
    let s = start().await;
    let err = rexray::server::bind(&s.socket, None).unwrap_err();
    assert!(err.to_string().contains("already serving"), "{err}");
    let dir = s.stop().await;
    let path = dir.path().join("stale.sock");
    drop(std::os::unix::net::UnixListener::bind(&path).unwrap());
    let bound = rexray::server::bind(&path, None).unwrap();
    let mode = std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&bound.path).unwrap().permissions());
    assert_eq!(mode & 0o777, 0o600);
    let file = dir.path().join("file");
    std::fs::write(&file, b"x").unwrap();
    assert!(rexray::server::bind(&file, None).unwrap_err().to_string().contains("not a socket"));
}
