//! `rxbench`: the benchmark tools of rexray-rs (see BENCHMARKS.md and bench/run-all.sh).
//!
//! ```text
//! rxbench serve    --socket S [--body JSON] [--routes FILE] [--workers 2] [--router axum]
//!     A bare hyper 1 HTTP/1.1 server on a Unix socket that reads each request body and answers
//!     200 with a fixed JSON body: the limit a VolumeDriver daemon on this machine can approach.
//!     With --router axum the same reply comes through an axum Router shaped like the daemon's:
//!     the cost of the framework alone. --routes FILE (a JSON object: path → body) gives fixed
//!     replies per path: a stand-in plugin that Docker can use.
//! rxbench load     --socket S --op get|path|list|activate|capabilities [--names a,b,c]
//!                  [--conns 16] [--duration 5] [--requests N] [--warmup 1] [--threads 1]
//!                  [--server-pid PID] [--label TEXT]
//!     Docker-shaped requests (POST, no Content-Type, Accept v1.2, Host plugin.moby.localhost,
//!     compact JSON plus "\n") over N keep-alive connections, bounded by time and by count.
//!     Prints one JSON line: requests/s, p50/p99/max latency, errors, CPU per request of the
//!     server (when --server-pid is given) and of the load generator itself, and the CPU the rest
//!     of the machine used meanwhile (% of all cores: the noise).
//! rxbench startup  --socket S [--runs 10] [--get NAME] [--get-timeout 120] -- CMD ARGS…
//!     Starts CMD, polls connect() on S every 20 µs, and reports the time from spawn to the first
//!     accepted connection, to the first Plugin.Activate reply and (with --get) to the first Get
//!     reply; stops CMD with SIGTERM and waits for the socket file to go. Median of the runs.
//! rxbench populate --socket S --prefix P --from A --to B [--conns 8] [--opts k=v,…]
//!     Creates volumes P<A>…P<B-1> through the socket.
//! rxbench mountloop --socket S[,S2,…] --name V [--runs 200] [--list-runs 20] [--get-runs 200]
//!     Mount/Unmount of V with a new 64-hex ID each time, plus Get and List; per-call latency.
//!     With several sockets the Mount/Unmount pairs go to each in turn (side by side).
//! rxbench call     --socket S METHOD [BODY]
//!     One call; prints the reply body (for scripts).
//! rxbench csi-rpc | csi-serve | csi-stage …
//!     The CSI front: round trips, a bare tonic reference server, and NodeStage/NodePublish on
//!     loop against the bare kernel sequence (see src/csi.rs).
//! ```
//!
//! Every loop here is bounded in time and in count.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::SendRequest;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::json;
use tokio::net::UnixStream;

mod csi;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

// ------------------------------------------------------------------------------------------------
// Arguments

struct Args {
    flags: HashMap<String, String>,
    positional: Vec<String>,
    rest: Vec<String>,
}

impl Args {
    fn parse(raw: Vec<String>) -> Args {
        let mut flags = HashMap::new();
        let mut positional = Vec::new();
        let mut rest = Vec::new();
        let mut it = raw.into_iter();
        while let Some(a) = it.next() {
            if a == "--" {
                rest = it.collect();
                break;
            }
            if let Some(key) = a.strip_prefix("--") {
                if let Some((k, v)) = key.split_once('=') {
                    flags.insert(k.to_owned(), v.to_owned());
                } else {
                    let v = it.next().unwrap_or_else(|| die(&format!("--{key} needs a value")));
                    flags.insert(key.to_owned(), v);
                }
            } else {
                positional.push(a);
            }
        }
        Args { flags, positional, rest }
    }

    fn str(&self, k: &str) -> Option<&str> {
        self.flags.get(k).map(String::as_str)
    }

    fn req(&self, k: &str) -> &str {
        self.str(k).unwrap_or_else(|| die(&format!("--{k} is required")))
    }

    fn num<T: std::str::FromStr>(&self, k: &str, default: T) -> T {
        match self.str(k) {
            None => default,
            Some(v) => v.parse().unwrap_or_else(|_| die(&format!("--{k}: not a number: {v}"))),
        }
    }

    fn float(&self, k: &str, default: f64) -> f64 {
        self.num(k, default)
    }
}

fn die(msg: &str) -> ! {
    eprintln!("rxbench: {msg}");
    std::process::exit(2)
}

// ------------------------------------------------------------------------------------------------
// Statistics

/// Latencies in nanoseconds, sorted on demand.
struct Lat(Vec<u64>);

impl Lat {
    fn sorted(mut self) -> Lat {
        self.0.sort_unstable();
        self
    }
    /// The q-quantile (nearest rank) in microseconds.
    fn q_us(&self, q: f64) -> f64 {
        if self.0.is_empty() {
            return f64::NAN;
        }
        let rank = ((q * self.0.len() as f64).ceil() as usize).clamp(1, self.0.len());
        self.0[rank - 1] as f64 / 1000.0
    }
    fn summary(&self) -> serde_json::Value {
        json!({
            "n": self.0.len(),
            "p50_us": round2(self.q_us(0.50)),
            "p90_us": round2(self.q_us(0.90)),
            "p99_us": round2(self.q_us(0.99)),
            "max_us": round2(self.q_us(1.0)),
        })
    }
}

fn round2(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}

/// utime + stime of a process in seconds (from /proc/PID/stat; clock ticks of 10 ms).
fn cpu_seconds(pid: &str) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after = &stat[stat.rfind(')')? + 2..];
    let f: Vec<&str> = after.split_whitespace().collect();
    // after ")": state(3) ppid(4) … utime is field 14, stime 15 → indexes 11, 12 here.
    let ticks: f64 = f.get(11)?.parse::<f64>().ok()? + f.get(12)?.parse::<f64>().ok()?;
    Some(ticks / 100.0)
}

/// When the measured window began, and the server's, our own and the machine's CPU then.
type CpuSnapshot = (Instant, Option<f64>, Option<f64>, Option<(f64, f64)>);

/// (busy, total) CPU seconds of the whole machine since boot, from /proc/stat (USER_HZ = 100).
fn machine_cpu() -> Option<(f64, f64)> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let line = stat.lines().next()?;
    let v: Vec<f64> = line.split_whitespace().skip(1).filter_map(|x| x.parse().ok()).collect();
    let total: f64 = v.iter().take(8).sum();
    let idle = v.get(3)? + v.get(4).copied().unwrap_or(0.0);
    Some(((total - idle) / 100.0, total / 100.0))
}

// ------------------------------------------------------------------------------------------------
// Docker-shaped client

async fn connect(socket: &str) -> Result<SendRequest<Full<Bytes>>, BoxError> {
    let stream = UnixStream::connect(socket).await?;
    // Go's client writes canonical header names (`Host`, `User-Agent`); so do we.
    let (sender, conn) =
        hyper::client::conn::http1::Builder::new().title_case_headers(true).handshake(TokioIo::new(stream)).await?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(sender)
}

/// The request dockerd's plugin client sends (moby pkg/plugins/client.go + Go's transport).
fn docker_request(method: &str, body: &str) -> Request<Full<Bytes>> {
    let mut body = body.to_owned();
    if !body.is_empty() {
        body.push('\n');
    }
    Request::post(format!("/{method}"))
        .header("Host", "plugin.moby.localhost")
        .header("User-Agent", "Go-http-client/1.1")
        .header("Accept", "application/vnd.docker.plugins.v1.2+json")
        .header("Accept-Encoding", "gzip")
        .header("Content-Length", body.len())
        .body(Full::new(Bytes::from(body)))
        .expect("valid request")
}

async fn call(
    sender: &mut SendRequest<Full<Bytes>>,
    method: &str,
    body: &str,
) -> Result<(StatusCode, Bytes), BoxError> {
    sender.ready().await?;
    let resp = sender.send_request(docker_request(method, body)).await?;
    let status = resp.status();
    let bytes = resp.into_body().collect().await?.to_bytes();
    Ok((status, bytes))
}

/// A call that must succeed (status 200 and no non-empty Err).
async fn call_ok(sender: &mut SendRequest<Full<Bytes>>, method: &str, body: &str) -> Result<Bytes, BoxError> {
    let (status, bytes) = call(sender, method, body).await?;
    if status != StatusCode::OK || reply_err(&bytes) {
        return Err(format!("{method} {body}: HTTP {status}: {}", String::from_utf8_lossy(&bytes)).into());
    }
    Ok(bytes)
}

fn reply_err(bytes: &[u8]) -> bool {
    bytes.starts_with(b"{\"Err\":\"") && !bytes.starts_with(b"{\"Err\":\"\"")
}

fn op_request(op: &str, name: &str) -> (&'static str, String) {
    match op {
        "get" => ("VolumeDriver.Get", json!({ "Name": name }).to_string()),
        "path" => ("VolumeDriver.Path", json!({ "Name": name }).to_string()),
        "list" => ("VolumeDriver.List", "{}".to_owned()),
        "capabilities" => ("VolumeDriver.Capabilities", "{}".to_owned()),
        "activate" => ("Plugin.Activate", String::new()),
        other => die(&format!("unknown --op {other}")),
    }
}

// ------------------------------------------------------------------------------------------------
// load

fn cmd_load(a: &Args) {
    let threads: usize = a.num("threads", 1);
    let rt = if threads <= 1 {
        tokio::runtime::Builder::new_current_thread().enable_all().build()
    } else {
        tokio::runtime::Builder::new_multi_thread().worker_threads(threads).enable_all().build()
    }
    .expect("runtime");
    rt.block_on(load(a));
}

async fn load(a: &Args) {
    let socket = a.req("socket").to_owned();
    let op = a.req("op").to_owned();
    let conns: usize = a.num("conns", 16);
    let duration = Duration::from_secs_f64(a.float("duration", 5.0));
    let warmup = Duration::from_secs_f64(a.float("warmup", 1.0));
    let max_requests: u64 = a.num("requests", u64::MAX);
    let names: Vec<String> = a.str("names").unwrap_or("bench0").split(',').map(str::to_owned).collect();
    let server_pid = a.str("server-pid").map(str::to_owned);
    let requests: Arc<Vec<(&'static str, String)>> = Arc::new(names.iter().map(|n| op_request(&op, n)).collect());

    // Connect everything first (as dockerd's pooled transport would be), then start together.
    let mut senders = Vec::with_capacity(conns);
    for _ in 0..conns {
        senders.push(connect(&socket).await.unwrap_or_else(|e| die(&format!("connect {socket}: {e}"))));
    }
    let budget = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let measure_from = start + warmup;
    let deadline = measure_from + duration;
    let mut cpu0: Option<CpuSnapshot> = None;
    let cpu_probe = {
        let pid = server_pid.clone();
        tokio::spawn(async move {
            tokio::time::sleep_until(measure_from.into()).await;
            (Instant::now(), pid.as_deref().and_then(cpu_seconds), cpu_seconds("self"), machine_cpu())
        })
    };
    let mut tasks = Vec::new();
    for (i, mut sender) in senders.into_iter().enumerate() {
        let requests = requests.clone();
        let budget = budget.clone();
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::with_capacity(1 << 14);
            let mut errors = 0u64;
            let mut k = i;
            loop {
                let now = Instant::now();
                if now >= deadline {
                    break;
                }
                let measured = now >= measure_from;
                if measured && budget.fetch_add(1, Ordering::Relaxed) >= max_requests {
                    break;
                }
                let (method, body) = &requests[k % requests.len()];
                k += 1;
                let t0 = Instant::now();
                let ok = match call(&mut sender, method, body).await {
                    Ok((status, bytes)) => status == StatusCode::OK && !reply_err(&bytes),
                    Err(_) => {
                        errors += 1;
                        break; // the connection is gone
                    }
                };
                let dt = t0.elapsed();
                if measured {
                    lat.push(dt.as_nanos() as u64);
                    if !ok {
                        errors += 1;
                    }
                }
            }
            (lat, errors, Instant::now())
        }));
    }
    let mut all = Vec::new();
    let mut errors = 0;
    let mut end = measure_from;
    for t in tasks {
        let (lat, e, t_end) = t.await.expect("task");
        all.extend(lat);
        errors += e;
        end = end.max(t_end);
    }
    if let Ok(c) = cpu_probe.await {
        cpu0 = Some(c);
    }
    let (t_cpu0, srv0, me0, m0) = cpu0.unwrap_or((measure_from, None, None, None));
    let (srv1, me1, m1) = (server_pid.as_deref().and_then(cpu_seconds), cpu_seconds("self"), machine_cpu());
    // CPU the rest of the machine used meanwhile (other tenants, compilers…), in % of all cores.
    let other_cpu_pct = match (m0, m1, srv0, srv1, me0, me1) {
        (Some((b0, t0)), Some((b1, t1)), Some(s0), Some(s1), Some(l0), Some(l1)) if t1 > t0 => {
            json!((((b1 - b0) - (s1 - s0) - (l1 - l0)).max(0.0) * 100.0 / (t1 - t0)).round())
        }
        _ => serde_json::Value::Null,
    };
    let secs = end.saturating_duration_since(t_cpu0.max(measure_from)).as_secs_f64().max(1e-9);
    let n = all.len() as f64;
    let lat = Lat(all).sorted();
    let per_req_us = |c0: Option<f64>, c1: Option<f64>| match (c0, c1) {
        (Some(a), Some(b)) if n > 0.0 => json!(round2((b - a) * 1e6 / n)),
        _ => serde_json::Value::Null,
    };
    let mut out = json!({
        "label": a.str("label").unwrap_or(""),
        "op": op,
        "conns": conns,
        "secs": round2(secs),
        "requests": lat.0.len(),
        "errors": errors,
        "rps": (n / secs).round(),
        "server_cpu_us_per_req": per_req_us(srv0, srv1),
        "loadgen_cpu_us_per_req": per_req_us(me0, me1),
        "other_cpu_pct": other_cpu_pct,
    });
    if let (serde_json::Value::Object(o), serde_json::Value::Object(s)) = (&mut out, lat.summary()) {
        for (k, v) in s {
            if k != "n" {
                o.insert(k, v);
            }
        }
    }
    println!("{out}");
}

// ------------------------------------------------------------------------------------------------
// serve: the bare hyper reference server

fn cmd_serve(a: &Args) {
    let workers: usize = a.num("workers", 2);
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(workers)
        .enable_all()
        .build()
        .expect("runtime")
        .block_on(serve(a));
}

async fn serve(a: &Args) {
    if a.str("router") == Some("axum") {
        return serve_axum(a).await;
    }
    let socket = PathBuf::from(a.req("socket"));
    let body = Bytes::from(
        a.str("body")
            .unwrap_or(r#"{"Volume":{"Name":"bench0","CreatedAt":"2026-11-25T12:00:00Z","Status":{"active":false,"backend":"vfs","holders":0,"options":{},"service":"vfs"}}}"#)
            .to_owned(),
    );
    // Optional fixed replies by path (a JSON object path → body): a stand-in plugin for Docker.
    let routes: Arc<HashMap<String, Bytes>> = Arc::new(match a.str("routes") {
        None => HashMap::new(),
        Some(file) => {
            let text = std::fs::read_to_string(file).unwrap_or_else(|e| die(&format!("--routes {file}: {e}")));
            let map: HashMap<String, String> =
                serde_json::from_str(&text).unwrap_or_else(|e| die(&format!("--routes {file}: {e}")));
            map.into_iter().map(|(k, v)| (k, Bytes::from(v))).collect()
        }
    });
    let _ = std::fs::remove_file(&socket);
    let listener = tokio::net::UnixListener::bind(&socket).unwrap_or_else(|e| die(&format!("bind: {e}")));
    let stop = tokio::signal::ctrl_c();
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).expect("signal");
    let accept = async {
        loop {
            let Ok((stream, _)) = listener.accept().await else { continue };
            let body = body.clone();
            let routes = routes.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
                    let body = routes.get(req.uri().path()).cloned().unwrap_or_else(|| body.clone());
                    async move {
                        // Read the request body, as any real handler must.
                        let _ = req.into_body().collect().await?;
                        Ok::<_, hyper::Error>(
                            Response::builder()
                                .header("Content-Type", "application/vnd.docker.plugins.v1.2+json")
                                .body(Full::new(body))
                                .expect("response"),
                        )
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(stream), svc).await;
            });
        }
    };
    tokio::select! {
        _ = accept => {}
        _ = stop => {}
        _ = term.recv() => {}
    }
    let _ = std::fs::remove_file(&socket);
}

/// The same fixed reply behind an axum Router shaped like the daemon's (the nine plugin routes,
/// a body limit, the body read as Bytes): what the framework alone costs.
async fn serve_axum(a: &Args) {
    use axum::routing::post;
    let socket = PathBuf::from(a.req("socket"));
    let body = Bytes::from(a.str("body").unwrap_or("{}").to_owned());
    let reply = move |_b: Bytes| {
        let body = body.clone();
        async move { ([("content-type", "application/vnd.docker.plugins.v1.2+json")], body) }
    };
    let mut router = axum::Router::new();
    for path in [
        "/Plugin.Activate",
        "/VolumeDriver.Create",
        "/VolumeDriver.Remove",
        "/VolumeDriver.Mount",
        "/VolumeDriver.Unmount",
        "/VolumeDriver.Path",
        "/VolumeDriver.Get",
        "/VolumeDriver.List",
        "/VolumeDriver.Capabilities",
    ] {
        router = router.route(path, post(reply.clone()));
    }
    let router = router.layer(axum::extract::DefaultBodyLimit::max(1 << 20));
    let _ = std::fs::remove_file(&socket);
    let listener = tokio::net::UnixListener::bind(&socket).unwrap_or_else(|e| die(&format!("bind: {e}")));
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).expect("signal");
    tokio::select! {
        _ = axum::serve(listener, router) => {}
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    let _ = std::fs::remove_file(&socket);
}

// ------------------------------------------------------------------------------------------------
// startup

fn cmd_startup(a: &Args) {
    let socket = a.req("socket").to_owned();
    let runs: usize = a.num("runs", 10);
    let get = a.str("get").map(str::to_owned);
    let get_timeout = Duration::from_secs_f64(a.float("get-timeout", 120.0));
    if a.rest.is_empty() {
        die("startup needs -- CMD ARGS…");
    }
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    let (mut connect_ns, mut activate_ns, mut get_ns) = (Vec::new(), Vec::new(), Vec::new());
    let mut timeouts = 0u32;
    for _ in 0..runs {
        let _ = std::fs::remove_file(&socket);
        let t0 = Instant::now();
        let mut child = std::process::Command::new(&a.rest[0])
            .args(&a.rest[1..])
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap_or_else(|e| die(&format!("spawn {}: {e}", a.rest[0])));
        let limit = t0 + Duration::from_secs(10);
        let connected = loop {
            if std::os::unix::net::UnixStream::connect(&socket).is_ok() {
                break Some(t0.elapsed());
            }
            if Instant::now() > limit || matches!(child.try_wait(), Ok(Some(_))) {
                break None;
            }
            std::thread::sleep(Duration::from_micros(20));
        };
        let Some(c) = connected else {
            let _ = child.kill();
            let _ = child.wait();
            die("the command did not listen on the socket within 10 s (or exited)");
        };
        connect_ns.push(c.as_nanos() as u64);
        rt.block_on(async {
            let mut s = connect(&socket).await.unwrap_or_else(|e| die(&format!("connect: {e}")));
            call_ok(&mut s, "Plugin.Activate", "").await.unwrap_or_else(|e| die(&e.to_string()));
            activate_ns.push(t0.elapsed().as_nanos() as u64);
            if let Some(name) = &get {
                let body = json!({ "Name": name }).to_string();
                match tokio::time::timeout(get_timeout, call_ok(&mut s, "VolumeDriver.Get", &body)).await {
                    Ok(r) => {
                        r.unwrap_or_else(|e| die(&e.to_string()));
                        get_ns.push(t0.elapsed().as_nanos() as u64);
                    }
                    Err(_) => timeouts += 1,
                }
            }
        });
        let _ = std::process::Command::new("kill").arg("-TERM").arg(child.id().to_string()).status();
        let stop_limit = Instant::now() + Duration::from_secs(15);
        loop {
            if let Ok(Some(_)) = child.try_wait() {
                break;
            }
            if Instant::now() > stop_limit {
                let _ = child.kill();
                let _ = child.wait();
                break;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }
    let ms = |v: Vec<u64>| {
        if v.is_empty() {
            return serde_json::Value::Null;
        }
        let each: Vec<f64> = v.iter().map(|ns| round2(*ns as f64 / 1e6)).collect();
        let l = Lat(v).sorted();
        json!({
            "p50_ms": round2(l.q_us(0.5) / 1000.0),
            "min_ms": round2(l.q_us(0.0) / 1000.0),
            "max_ms": round2(l.q_us(1.0) / 1000.0),
            "each_ms": each,
        })
    };
    println!(
        "{}",
        json!({
            "runs": runs,
            "listening": ms(connect_ns),
            "first_activate": ms(activate_ns),
            "first_get": ms(get_ns),
            "first_get_timeouts": timeouts,
            "get_timeout_s": get_timeout.as_secs_f64(),
        })
    );
}

// ------------------------------------------------------------------------------------------------
// populate, mountloop, call

fn rt1() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime")
}

fn cmd_populate(a: &Args) {
    let socket = a.req("socket").to_owned();
    let prefix = a.req("prefix").to_owned();
    let from: u64 = a.num("from", 0);
    let to: u64 = a.num("to", 10);
    let conns: usize = a.num("conns", 8);
    let opts: serde_json::Map<String, serde_json::Value> = a
        .str("opts")
        .map(|s| {
            s.split(',')
                .filter_map(|kv| kv.split_once('='))
                .map(|(k, v)| (k.to_owned(), serde_json::Value::String(v.to_owned())))
                .collect()
        })
        .unwrap_or_default();
    let t0 = Instant::now();
    rt1().block_on(async {
        let next = Arc::new(AtomicU64::new(from));
        let mut tasks = Vec::new();
        for _ in 0..conns {
            let (socket, prefix, next, opts) = (socket.clone(), prefix.clone(), next.clone(), opts.clone());
            tasks.push(tokio::spawn(async move {
                let mut s = connect(&socket).await?;
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= to {
                        return Ok::<_, BoxError>(());
                    }
                    let body = json!({ "Name": format!("{prefix}{i}"), "Opts": opts }).to_string();
                    call_ok(&mut s, "VolumeDriver.Create", &body).await?;
                }
            }));
        }
        for t in tasks {
            if let Err(e) = t.await.expect("task") {
                die(&format!("populate: {e}"));
            }
        }
    });
    println!("{}", json!({ "created": to.saturating_sub(from), "secs": round2(t0.elapsed().as_secs_f64()) }));
}

fn cmd_mountloop(a: &Args) {
    // Several sockets (comma-separated) are measured interleaved, pair by pair, so that the
    // disk's fsync noise hits them alike.
    let sockets: Vec<String> = a.req("socket").split(',').map(str::to_owned).collect();
    let name = a.req("name").to_owned();
    let runs: u64 = a.num("runs", 200);
    let list_runs: u64 = a.num("list-runs", 20);
    let get_runs: u64 = a.num("get-runs", 200);
    let out = rt1().block_on(async {
        let mut conns = Vec::new();
        for s in &sockets {
            conns.push(connect(s).await.unwrap_or_else(|e| die(&format!("connect {s}: {e}"))));
        }
        let n = conns.len();
        let salt = std::process::id() as u64;
        let (mut m, mut u) = (vec![Vec::new(); n], vec![Vec::new(); n]);
        for i in 0..runs {
            let body = json!({ "Name": name, "ID": format!("{:032x}{:032x}", salt, i) }).to_string();
            for (k, s) in conns.iter_mut().enumerate() {
                let t0 = Instant::now();
                call_ok(s, "VolumeDriver.Mount", &body).await.unwrap_or_else(|e| die(&e.to_string()));
                m[k].push(t0.elapsed().as_nanos() as u64);
                let t0 = Instant::now();
                call_ok(s, "VolumeDriver.Unmount", &body).await.unwrap_or_else(|e| die(&e.to_string()));
                u[k].push(t0.elapsed().as_nanos() as u64);
            }
        }
        let get = json!({ "Name": name }).to_string();
        let mut per = Vec::new();
        for (k, s) in conns.iter_mut().enumerate() {
            let (mut g, mut l) = (Vec::new(), Vec::new());
            for _ in 0..get_runs {
                let t0 = Instant::now();
                call_ok(s, "VolumeDriver.Get", &get).await.unwrap_or_else(|e| die(&e.to_string()));
                g.push(t0.elapsed().as_nanos() as u64);
            }
            let mut list_bytes = 0;
            for _ in 0..list_runs {
                let t0 = Instant::now();
                let b = call_ok(s, "VolumeDriver.List", "{}").await.unwrap_or_else(|e| die(&e.to_string()));
                l.push(t0.elapsed().as_nanos() as u64);
                list_bytes = b.len();
            }
            per.push(json!({
                "socket": sockets[k],
                "mount": Lat(std::mem::take(&mut m[k])).sorted().summary(),
                "unmount": Lat(std::mem::take(&mut u[k])).sorted().summary(),
                "get": Lat(g).sorted().summary(),
                "list": Lat(l).sorted().summary(),
                "list_bytes": list_bytes,
            }));
        }
        if per.len() == 1 {
            per.pop().unwrap_or_default()
        } else {
            json!({ "per_socket": per })
        }
    });
    println!("{out}");
}

fn cmd_call(a: &Args) {
    let socket = a.req("socket").to_owned();
    let method = a.positional.get(1).cloned().unwrap_or_else(|| die("call needs METHOD"));
    let body = a.positional.get(2).cloned().unwrap_or_default();
    let (status, bytes) = rt1().block_on(async {
        let mut s = connect(&socket).await.unwrap_or_else(|e| die(&format!("connect: {e}")));
        call(&mut s, &method, &body).await.unwrap_or_else(|e| die(&e.to_string()))
    });
    println!("{}", String::from_utf8_lossy(&bytes));
    if status != StatusCode::OK || reply_err(&bytes) {
        std::process::exit(1);
    }
}

fn main() {
    let args = Args::parse(std::env::args().skip(1).collect());
    match args.positional.first().map(String::as_str) {
        Some("load") => cmd_load(&args),
        Some("serve") => cmd_serve(&args),
        Some("startup") => cmd_startup(&args),
        Some("populate") => cmd_populate(&args),
        Some("mountloop") => cmd_mountloop(&args),
        Some("call") => cmd_call(&args),
        Some("csi-rpc") => csi::cmd_rpc(&args),
        Some("csi-serve") => csi::cmd_serve(&args),
        Some("csi-stage") => csi::cmd_stage(&args),
        _ => die("usage: rxbench load|serve|startup|populate|mountloop|call|csi-rpc|csi-serve|csi-stage … (see the source header)"),
    }
}
