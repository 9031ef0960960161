//! Hostile and clumsy HTTP clients against the daemon's server, on a real Unix socket: bodies
//! sent apart from their headers, keep-alive, stalled headers and bodies, oversize bodies, too
//! many connections, and shutdown while clients hold connections half-sent.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rexray::backend::fake::FakeBackend;
use rexray::config::Integration;
use rexray::server::Limits;
use rexray::service::{ServiceHandle, VolumeService};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;

struct Server {
    socket: PathBuf,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<()>,
    _dir: tempfile::TempDir,
}

async fn start(limits: Limits, fake: Arc<FakeBackend>) -> Server {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("plugins/hostile.sock");
    let settings = Integration::defaults(Path::new("/var/lib/rexray"));
    let service = VolumeService::open("test", FakeBackend::backend(&fake), settings, dir.path().join("state"), None)
        .await
        .unwrap();
    let handler = rexray::protocol::router(Arc::new(ServiceHandle::ready(Arc::new(service))));
    let bound = rexray::server::bind(&socket, None).unwrap();
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(async move {
        rexray::server::serve(vec![(bound, handler)], limits, async move {
            let _ = rx.await;
        })
        .await
        .unwrap();
    });
    Server { socket, stop: Some(tx), task, _dir: dir }
}

fn limits() -> Limits {
    Limits {
        header_timeout: Duration::from_millis(400),
        body_timeout: Duration::from_millis(400),
        max_body: 1 << 20,
        max_connections: 8,
        grace: Duration::from_secs(5),
    }
}

impl Server {
    /// Signals shutdown and returns how long serving took to end.
    async fn stop(mut self) -> Duration {
        let start = Instant::now();
        self.stop.take().unwrap().send(()).unwrap();
        tokio::time::timeout(Duration::from_secs(20), &mut self.task).await.unwrap().unwrap();
        start.elapsed()
    }
}

/// Reads one reply (status, body) from `reader`.
async fn read_reply(reader: &mut BufReader<UnixStream>) -> Option<(u16, String)> {
    let mut head = String::new();
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).await.ok()? == 0 {
            return None;
        }
        if line == "\r\n" {
            break;
        }
        head.push_str(&line);
    }
    let status = head.split(' ').nth(1)?.parse().ok()?;
    let len = head
        .lines()
        .find_map(|l| {
            l.to_ascii_lowercase().strip_prefix("content-length:").map(|v| v.trim().parse::<usize>().unwrap())
        })
        .unwrap_or(0);
    let mut body = vec![0; len];
    reader.read_exact(&mut body).await.ok()?;
    Some((status, String::from_utf8_lossy(&body).into_owned()))
}

fn head(endpoint: &str, len: usize) -> String {
    format!("POST /{endpoint} HTTP/1.1\r\nHost: plugin\r\nAccept: application/vnd.docker.plugins.v1.2+json\r\nContent-Length: {len}\r\n\r\n")
}

/// Whether the server closed `reader`'s connection (EOF) within `within`.
async fn closed(reader: &mut BufReader<UnixStream>, within: Duration) -> bool {
    let mut buf = [0u8; 256];
    matches!(tokio::time::timeout(within, reader.read(&mut buf)).await, Ok(Ok(0) | Err(_)))
}

#[tokio::test]
async fn a_body_sent_apart_from_its_headers_is_read_and_the_connection_kept() {
    // Python's http.client writes the headers, then the body: every endpoint must wait for it.
    let s = start(limits(), Arc::new(FakeBackend::default())).await;
    let stream = UnixStream::connect(&s.socket).await.unwrap();
    let mut reader = BufReader::new(stream);
    for endpoint in [
        "VolumeDriver.List",
        "VolumeDriver.Capabilities",
        "Plugin.Activate",
        "VolumeDriver.Nope",
        "VolumeDriver.Create",
    ] {
        let body = if endpoint == "VolumeDriver.Create" { "{\"Name\":\"v\"}\n" } else { "{}\n" };
        reader.get_mut().write_all(head(endpoint, body.len()).as_bytes()).await.unwrap();
        reader.get_mut().flush().await.unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
        reader.get_mut().write_all(body.as_bytes()).await.unwrap();
        let (status, reply) = read_reply(&mut reader).await.unwrap_or_else(|| panic!("{endpoint}: no reply"));
        let expected = if endpoint.ends_with("Nope") { 404 } else { 200 };
        assert_eq!(status, expected, "{endpoint}: {reply}");
    }
    // Still the same connection: the next request is answered on it.
    reader.get_mut().write_all(head("VolumeDriver.Get", 13).as_bytes()).await.unwrap();
    reader.get_mut().write_all(b"{\"Name\":\"v\"}\n").await.unwrap();
    let (status, reply) = read_reply(&mut reader).await.unwrap();
    assert_eq!(status, 200, "{reply}");
    s.stop().await;
}

#[tokio::test]
async fn an_oversize_content_length_is_refused_at_once() {
    let s = start(limits(), Arc::new(FakeBackend::default())).await;
    let mut reader = BufReader::new(UnixStream::connect(&s.socket).await.unwrap());
    reader.get_mut().write_all(head("VolumeDriver.Create", 2_000_000).as_bytes()).await.unwrap();
    let started = Instant::now();
    let (status, reply) = read_reply(&mut reader).await.unwrap();
    assert_eq!(status, 413, "{reply}");
    assert!(reply.contains("2000000 bytes") && reply.contains("limit"), "{reply}");
    assert!(started.elapsed() < Duration::from_millis(300), "refused without waiting for the body");
    // A body that turns out larger than its limit (chunked, no length) is refused too.
    let mut reader = BufReader::new(UnixStream::connect(&s.socket).await.unwrap());
    let chunk = "x".repeat(600_000);
    let request = format!(
        "POST /VolumeDriver.Create HTTP/1.1\r\nHost: p\r\nTransfer-Encoding: chunked\r\n\r\n{:x}\r\n{chunk}\r\n{:x}\r\n{chunk}\r\n0\r\n\r\n",
        chunk.len(),
        chunk.len()
    );
    let _ = reader.get_mut().write_all(request.as_bytes()).await;
    assert_eq!(read_reply(&mut reader).await.unwrap().0, 413);
    s.stop().await;
}

#[tokio::test]
async fn stalled_headers_and_bodies_are_dropped_after_their_timeouts() {
    let s = start(limits(), Arc::new(FakeBackend::default())).await;
    // Slowloris: half a header line, then nothing.
    let mut slow = BufReader::new(UnixStream::connect(&s.socket).await.unwrap());
    slow.get_mut().write_all(b"POST /VolumeDriver.List HTTP/1.1\r\nHost: pl").await.unwrap();
    assert!(closed(&mut slow, Duration::from_secs(3)).await, "a stalled header is not held forever");
    // Headers, and only part of the body.
    let mut partial = BufReader::new(UnixStream::connect(&s.socket).await.unwrap());
    partial.get_mut().write_all(head("VolumeDriver.Create", 100).as_bytes()).await.unwrap();
    partial.get_mut().write_all(b"{\"Name\":").await.unwrap();
    let reply = tokio::time::timeout(Duration::from_secs(3), read_reply(&mut partial)).await.unwrap();
    assert_eq!(reply.map(|r| r.0), Some(408), "a stalled body is answered 408");
    s.stop().await;
}

#[tokio::test]
async fn headers_trickled_a_byte_at_a_time_are_cut_off_at_the_header_timeout() {
    let s = start(limits(), Arc::new(FakeBackend::default())).await;
    // One byte every 50 ms keeps the connection busy but never finishes the headers in the
    // 400 ms allowed: the timeout runs from the start of the request, not from the last byte.
    let mut trickle = UnixStream::connect(&s.socket).await.unwrap();
    let started = std::time::Instant::now();
    let request = head("VolumeDriver.List", 2);
    let mut cut_off = false;
    for byte in request.as_bytes() {
        if trickle.write_all(&[*byte]).await.is_err() {
            cut_off = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        if started.elapsed() > Duration::from_secs(3) {
            break;
        }
    }
    let mut reader = BufReader::new(trickle);
    assert!(cut_off || closed(&mut reader, Duration::from_secs(1)).await, "a trickling client is not held forever");
    assert!(started.elapsed() < Duration::from_secs(3), "cut off after {:?}", started.elapsed());

    // A client that keeps asking is served past the timeout; once idle that long, it is closed.
    let mut busy = BufReader::new(UnixStream::connect(&s.socket).await.unwrap());
    let started = std::time::Instant::now();
    while started.elapsed() < Duration::from_millis(1000) {
        busy.get_mut().write_all(format!("{}{{}}", head("VolumeDriver.List", 2)).as_bytes()).await.unwrap();
        assert_eq!(read_reply(&mut busy).await.map(|r| r.0), Some(200));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(closed(&mut busy, Duration::from_secs(3)).await, "an idle connection is closed after the header timeout");
    s.stop().await;
}

#[tokio::test]
async fn connections_beyond_the_cap_are_refused_and_served_again_once_some_close() {
    let s = start(limits(), Arc::new(FakeBackend::default())).await;
    let mut held = Vec::new();
    for _ in 0..8 {
        let mut r = BufReader::new(UnixStream::connect(&s.socket).await.unwrap());
        r.get_mut().write_all(head("VolumeDriver.List", 3).as_bytes()).await.unwrap();
        r.get_mut().write_all(b"{}\n").await.unwrap();
        assert_eq!(read_reply(&mut r).await.unwrap().0, 200);
        held.push(r);
    }
    let mut extra = BufReader::new(UnixStream::connect(&s.socket).await.unwrap());
    assert!(closed(&mut extra, Duration::from_secs(2)).await, "the ninth connection is refused");
    held.pop();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let mut again = BufReader::new(UnixStream::connect(&s.socket).await.unwrap());
    again.get_mut().write_all(head("VolumeDriver.List", 3).as_bytes()).await.unwrap();
    again.get_mut().write_all(b"{}\n").await.unwrap();
    assert_eq!(read_reply(&mut again).await.unwrap().0, 200);
    s.stop().await;
}

#[tokio::test]
async fn shutdown_finishes_calls_in_flight_and_drops_idle_and_half_sent_connections() {
    let fake = Arc::new(FakeBackend::with_delay(Duration::from_millis(300)));
    let s = start(Limits { header_timeout: Duration::from_secs(60), ..limits() }, fake.clone()).await;
    // Idle keep-alive connection.
    let mut idle = BufReader::new(UnixStream::connect(&s.socket).await.unwrap());
    idle.get_mut().write_all(head("VolumeDriver.List", 3).as_bytes()).await.unwrap();
    idle.get_mut().write_all(b"{}\n").await.unwrap();
    assert_eq!(read_reply(&mut idle).await.unwrap().0, 200);
    // Half-sent request (its header timeout is a minute away).
    let mut half = BufReader::new(UnixStream::connect(&s.socket).await.unwrap());
    half.get_mut().write_all(b"POST /VolumeDriver.Mount HTTP/1.1\r\nHo").await.unwrap();
    // A mount in flight: its backend takes 300 ms per step.
    let mut busy = BufReader::new(UnixStream::connect(&s.socket).await.unwrap());
    let body = "{\"Name\":\"slow\",\"ID\":\"a\"}\n";
    busy.get_mut().write_all(head("VolumeDriver.Mount", body.len()).as_bytes()).await.unwrap();
    busy.get_mut().write_all(body.as_bytes()).await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let reply = tokio::spawn(async move { read_reply(&mut busy).await });
    let took = s.stop().await;
    assert_eq!(reply.await.unwrap().map(|r| r.0), Some(200), "the call in flight was answered");
    assert!(took < Duration::from_secs(3), "shutdown waited for the half-sent connection: {took:?}");
    assert!(closed(&mut idle, Duration::from_secs(1)).await);
    assert!(closed(&mut half, Duration::from_secs(1)).await);
    assert!(fake.active("slow"));
}

#[tokio::test]
async fn garbage_and_bad_json_get_clear_errors_and_the_server_stays_up() {
    let s = start(limits(), Arc::new(FakeBackend::default())).await;
    for request in [
        b"\x00\x01\x02 garbage\r\n\r\n".to_vec(),
        b"GET /VolumeDriver.List HTTP/1.1\r\nHost: p\r\n\r\n".to_vec(),
        format!("{}{}", head("VolumeDriver.Mount", 9), "{not json").into_bytes(),
        format!("{}{}", head("VolumeDriver.Mount", 11), "{\"Name\":42}").into_bytes(),
    ] {
        let mut r = BufReader::new(UnixStream::connect(&s.socket).await.unwrap());
        r.get_mut().write_all(&request).await.unwrap();
        if let Some((status, body)) = read_reply(&mut r).await {
            assert!((400..500).contains(&status), "{status} {body}");
            assert!(!body.contains("Error {") && !body.contains("line:"), "a person reads this: {body}");
        }
    }
    let big_name = "n".repeat(500_000);
    let body = format!("{{\"Name\":{big_name:?},\"ID\":\"x\"}}");
    let mut r = BufReader::new(UnixStream::connect(&s.socket).await.unwrap());
    r.get_mut().write_all(head("VolumeDriver.Mount", body.len()).as_bytes()).await.unwrap();
    r.get_mut().write_all(body.as_bytes()).await.unwrap();
    let (status, reply) = read_reply(&mut r).await.unwrap();
    assert_eq!(status, 500);
    assert!(reply.len() < 400, "the name is quoted in part only: {} bytes", reply.len());
    let mut r = BufReader::new(UnixStream::connect(&s.socket).await.unwrap());
    r.get_mut().write_all(head("VolumeDriver.List", 3).as_bytes()).await.unwrap();
    r.get_mut().write_all(b"{}\n").await.unwrap();
    assert_eq!(read_reply(&mut r).await.unwrap().0, 200, "still serving");
    s.stop().await;
}
