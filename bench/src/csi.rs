//! The CSI tools of `rxbench` (BENCHMARKS.md §6, bench/csi_bench.py):
//!
//! ```text
//! rxbench csi-rpc   --socket S [--calls 2000] [--warmup 200] [--rounds 2] [--server-pid PID]
//!                   [--label TEXT] [--max-secs 60]
//!     GetPluginInfo, Probe and NodeGetInfo, one call at a time on one gRPC connection (tonic,
//!     as the daemon's own tests dial it): p50/p90/p99/max latency, calls/s, and the server's CPU
//!     per call (with --server-pid). Rounds rotate the order of the three RPCs.
//! rxbench csi-serve --socket S --copy DAEMON_SOCKET
//!     A bare tonic server (Identity + Node, 2 tokio workers as the daemon) answering
//!     GetPluginInfo, Probe and NodeGetInfo with the daemon's own replies, fetched once from
//!     DAEMON_SOCKET: the limit for those round trips on this machine.
//! rxbench csi-stage --socket S --dir W --bare-image IMG [--samples 30] [--first 3]
//!                   [--size-gib 1] [--fs ext4] [--max-secs 300] [--name bench-csi]
//!     On a loop-backed daemon: CreateVolume ×--first and each one's first cycle (its NodeStage
//!     formats), then --samples interleaved cycles (order rotating) of
//!       csi:  ControllerPublish, NodeStage, NodePublish | NodeUnpublish, NodeUnstage, ControllerUnpublish
//!       proc: losetup --find --show IMG, mount -t FS, mount --bind | umount, umount, losetup -d
//!             (each tool its own process, as a shell script runs them)
//!       sys:  LOOP_CTL_GET_FREE + LOOP_CONFIGURE, mount(2), mount(2) MS_BIND | umount2 ×2,
//!             LOOP_CLR_FD (the same steps as direct syscalls: the floor)
//!     every step timed. IMG is pre-formatted with FS. Prints one JSON line.
//! ```
//!
//! Every loop is bounded in count and in time; every RPC and tool has a 60 s deadline. On a
//! failure the cycle in progress is undone as far as it got before exiting (csi_bench.py cleans
//! up again whatever is left under its temp dir).

use std::ffi::CString;
use std::os::fd::AsRawFd;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use hyper_util::rt::TokioIo;
use serde_json::json;
use tokio::net::UnixStream;
use tonic::transport::{Channel, Endpoint};
use tonic::{Request, Response, Status};

use super::{cpu_seconds, die, round2, rt1, Args, BoxError, Lat};

#[allow(clippy::all, clippy::pedantic, missing_docs, dead_code)]
pub mod proto {
    tonic::include_proto!("csi.v1");
}

use proto::controller_client::ControllerClient;
use proto::identity_client::IdentityClient;
use proto::node_client::NodeClient;
use proto::volume_capability::{access_mode::Mode, AccessMode, AccessType, MountVolume};
use proto::*;

/// The deadline of each RPC and each tool process.
const STEP_DEADLINE: Duration = Duration::from_secs(60);

struct Clients {
    identity: IdentityClient<Channel>,
    controller: ControllerClient<Channel>,
    node: NodeClient<Channel>,
}

async fn connect(socket: &str) -> Result<Clients, BoxError> {
    let socket = PathBuf::from(socket);
    let channel = Endpoint::try_from("http://csi.invalid")?
        .connect_timeout(Duration::from_secs(10))
        .connect_with_connector(tower::service_fn(move |_| {
            let socket = socket.clone();
            async move { UnixStream::connect(socket).await.map(TokioIo::new) }
        }))
        .await?;
    Ok(Clients {
        identity: IdentityClient::new(channel.clone()),
        controller: ControllerClient::new(channel.clone()),
        node: NodeClient::new(channel),
    })
}

/// Awaits an RPC within [`STEP_DEADLINE`]; its reply or what went wrong, with `what` said.
async fn rpc<T>(
    what: &str,
    call: impl std::future::Future<Output = Result<Response<T>, Status>>,
) -> Result<T, BoxError> {
    match tokio::time::timeout(STEP_DEADLINE, call).await {
        Ok(Ok(r)) => Ok(r.into_inner()),
        Ok(Err(s)) => Err(format!("{what}: {:?}: {}", s.code(), s.message()).into()),
        Err(_) => Err(format!("{what}: no reply within {} s", STEP_DEADLINE.as_secs()).into()),
    }
}

// ------------------------------------------------------------------------------------------------
// csi-rpc

#[derive(Clone, Copy)]
enum Rpc {
    PluginInfo,
    Probe,
    NodeInfo,
}

const RPCS: [(Rpc, &str); 3] =
    [(Rpc::PluginInfo, "GetPluginInfo"), (Rpc::Probe, "Probe"), (Rpc::NodeInfo, "NodeGetInfo")];

async fn one(c: &mut Clients, r: Rpc) -> Result<(), BoxError> {
    match r {
        Rpc::PluginInfo => rpc("GetPluginInfo", c.identity.get_plugin_info(GetPluginInfoRequest {})).await.map(drop),
        Rpc::Probe => {
            let p = rpc("Probe", c.identity.probe(ProbeRequest {})).await?;
            if p.ready == Some(false) {
                return Err("Probe: ready = false".into());
            }
            Ok(())
        }
        Rpc::NodeInfo => rpc("NodeGetInfo", c.node.node_get_info(NodeGetInfoRequest {})).await.map(drop),
    }
}

pub fn cmd_rpc(a: &Args) {
    let socket = a.req("socket").to_owned();
    let calls: u64 = a.num("calls", 2000);
    let warmup: u64 = a.num("warmup", 200);
    let rounds: usize = a.num("rounds", 2);
    let max_secs = a.float("max-secs", 60.0);
    let pid = a.str("server-pid").map(str::to_owned);
    let label = a.str("label").unwrap_or("").to_owned();
    let out = rt1().block_on(async {
        let mut c = connect(&socket).await.unwrap_or_else(|e| die(&format!("connect {socket}: {e}")));
        let deadline = Instant::now() + Duration::from_secs_f64(max_secs);
        // per RPC: latencies, measured wall time, server CPU
        let mut acc: Vec<(Vec<u64>, f64, Option<f64>)> = vec![(Vec::new(), 0.0, Some(0.0)); RPCS.len()];
        for round in 0..rounds {
            for k in 0..RPCS.len() {
                let i = (k + round) % RPCS.len();
                let (r, name) = RPCS[i];
                for _ in 0..warmup {
                    one(&mut c, r).await.unwrap_or_else(|e| die(&e.to_string()));
                }
                let cpu0 = pid.as_deref().and_then(cpu_seconds);
                let t0 = Instant::now();
                for _ in 0..calls {
                    let t = Instant::now();
                    one(&mut c, r).await.unwrap_or_else(|e| die(&e.to_string()));
                    acc[i].0.push(t.elapsed().as_nanos() as u64);
                    if Instant::now() > deadline {
                        die(&format!("csi-rpc: {name} did not finish within --max-secs {max_secs}"));
                    }
                }
                acc[i].1 += t0.elapsed().as_secs_f64();
                let cpu1 = pid.as_deref().and_then(cpu_seconds);
                acc[i].2 = match (acc[i].2, cpu0, cpu1) {
                    (Some(sum), Some(a), Some(b)) => Some(sum + (b - a)),
                    _ => None,
                };
            }
        }
        let mut per = serde_json::Map::new();
        for (i, (_, name)) in RPCS.iter().enumerate() {
            let (lat, wall, cpu) = std::mem::take(&mut acc[i]);
            let n = lat.len() as f64;
            let mut s = Lat(lat).sorted().summary();
            s["calls_per_s"] = json!(round2(n / wall));
            s["server_cpu_us_per_call"] = json!(cpu.filter(|_| pid.is_some()).map(|c| round2(c * 1e6 / n)));
            per.insert((*name).to_owned(), s);
        }
        json!({ "label": label, "rounds": rounds, "calls": calls, "warmup": warmup, "rpcs": per })
    });
    println!("{out}");
}

// ------------------------------------------------------------------------------------------------
// csi-serve: a bare tonic server with the daemon's replies

struct BareIdentity(GetPluginInfoResponse);

#[tonic::async_trait]
impl proto::identity_server::Identity for BareIdentity {
    async fn get_plugin_info(
        &self,
        _: Request<GetPluginInfoRequest>,
    ) -> Result<Response<GetPluginInfoResponse>, Status> {
        Ok(Response::new(self.0.clone()))
    }

    async fn probe(&self, _: Request<ProbeRequest>) -> Result<Response<ProbeResponse>, Status> {
        Ok(Response::new(ProbeResponse { ready: Some(true) }))
    }
}

struct BareNode(NodeGetInfoResponse);

#[tonic::async_trait]
impl proto::node_server::Node for BareNode {
    async fn node_get_info(&self, _: Request<NodeGetInfoRequest>) -> Result<Response<NodeGetInfoResponse>, Status> {
        Ok(Response::new(self.0.clone()))
    }
}

pub fn cmd_serve(a: &Args) {
    let socket = a.req("socket").to_owned();
    let copy = a.req("copy").to_owned();
    let (info, node) = rt1().block_on(async {
        let mut c = connect(&copy).await.unwrap_or_else(|e| die(&format!("connect {copy}: {e}")));
        let info = rpc("GetPluginInfo", c.identity.get_plugin_info(GetPluginInfoRequest {})).await;
        let node = rpc("NodeGetInfo", c.node.node_get_info(NodeGetInfoRequest {})).await;
        (info.unwrap_or_else(|e| die(&e.to_string())), node.unwrap_or_else(|e| die(&e.to_string())))
    });
    let _ = std::fs::remove_file(&socket);
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime");
    rt.block_on(async {
        let listener = tokio::net::UnixListener::bind(&socket).unwrap_or_else(|e| die(&format!("bind {socket}: {e}")));
        let incoming = tokio_stream::wrappers::UnixListenerStream::new(listener);
        let shutdown = async {
            let mut term =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).expect("SIGTERM handler");
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
        };
        tonic::transport::Server::builder()
            .add_service(proto::identity_server::IdentityServer::new(BareIdentity(info)))
            .add_service(proto::node_server::NodeServer::new(BareNode(node)))
            .serve_with_incoming_shutdown(incoming, shutdown)
            .await
            .unwrap_or_else(|e| die(&format!("serve: {e}")));
    });
    let _ = std::fs::remove_file(&socket);
}

// ------------------------------------------------------------------------------------------------
// csi-stage

/// The six steps of a cycle, in order: three up, three down.
const STEPS: [&str; 6] = ["attach", "stage", "publish", "unpublish", "unstage", "detach"];

/// Nanoseconds per step of one cycle.
type Cycle = [u64; 6];

struct Dirs {
    staging: PathBuf,
    target: PathBuf,
}

impl Dirs {
    fn new(root: &Path, kind: &str) -> Dirs {
        let d = Dirs { staging: root.join(kind).join("staging"), target: root.join(kind).join("target") };
        for p in [&d.staging, &d.target] {
            std::fs::create_dir_all(p).unwrap_or_else(|e| die(&format!("mkdir {}: {e}", p.display())));
        }
        d
    }
}

fn mount_cap(fs: &str) -> VolumeCapability {
    VolumeCapability {
        access_type: Some(AccessType::Mount(MountVolume { fs_type: fs.into(), ..Default::default() })),
        access_mode: Some(AccessMode { mode: Mode::SingleNodeWriter.into() }),
    }
}

struct Csi<'a> {
    c: &'a mut Clients,
    node_id: String,
    cap: VolumeCapability,
    dirs: Dirs,
}

impl Csi<'_> {
    /// One whole cycle of volume `id`; on a failure, undoes what it can and says what failed.
    async fn cycle(&mut self, id: &str) -> Result<Cycle, BoxError> {
        let mut t = [0u64; 6];
        let r = self.cycle_inner(id, &mut t).await;
        if r.is_err() {
            self.undo(id).await;
        }
        r.map(|()| t)
    }

    async fn cycle_inner(&mut self, id: &str, t: &mut Cycle) -> Result<(), BoxError> {
        let staging = self.dirs.staging.display().to_string();
        let target = self.dirs.target.display().to_string();
        let cap = Some(self.cap.clone());
        let t0 = Instant::now();
        let ctx = rpc(
            "ControllerPublishVolume",
            self.c.controller.controller_publish_volume(ControllerPublishVolumeRequest {
                volume_id: id.into(),
                node_id: self.node_id.clone(),
                volume_capability: cap.clone(),
                ..Default::default()
            }),
        )
        .await?
        .publish_context;
        let t1 = Instant::now();
        rpc(
            "NodeStageVolume",
            self.c.node.node_stage_volume(NodeStageVolumeRequest {
                volume_id: id.into(),
                publish_context: ctx.clone(),
                staging_target_path: staging.clone(),
                volume_capability: cap.clone(),
                ..Default::default()
            }),
        )
        .await?;
        let t2 = Instant::now();
        rpc(
            "NodePublishVolume",
            self.c.node.node_publish_volume(NodePublishVolumeRequest {
                volume_id: id.into(),
                publish_context: ctx,
                staging_target_path: staging.clone(),
                target_path: target.clone(),
                volume_capability: cap,
                readonly: false,
                ..Default::default()
            }),
        )
        .await?;
        let t3 = Instant::now();
        rpc(
            "NodeUnpublishVolume",
            self.c.node.node_unpublish_volume(NodeUnpublishVolumeRequest { volume_id: id.into(), target_path: target }),
        )
        .await?;
        let t4 = Instant::now();
        rpc(
            "NodeUnstageVolume",
            self.c
                .node
                .node_unstage_volume(NodeUnstageVolumeRequest { volume_id: id.into(), staging_target_path: staging }),
        )
        .await?;
        let t5 = Instant::now();
        rpc(
            "ControllerUnpublishVolume",
            self.c.controller.controller_unpublish_volume(ControllerUnpublishVolumeRequest {
                volume_id: id.into(),
                node_id: self.node_id.clone(),
                ..Default::default()
            }),
        )
        .await?;
        let t6 = Instant::now();
        *t = spans([t0, t1, t2, t3, t4, t5, t6]);
        Ok(())
    }

    /// Best effort: unpublish, unstage, detach (all idempotent in CSI).
    async fn undo(&mut self, id: &str) {
        let _ = rpc(
            "NodeUnpublishVolume",
            self.c.node.node_unpublish_volume(NodeUnpublishVolumeRequest {
                volume_id: id.into(),
                target_path: self.dirs.target.display().to_string(),
            }),
        )
        .await;
        let _ = rpc(
            "NodeUnstageVolume",
            self.c.node.node_unstage_volume(NodeUnstageVolumeRequest {
                volume_id: id.into(),
                staging_target_path: self.dirs.staging.display().to_string(),
            }),
        )
        .await;
        let _ = rpc(
            "ControllerUnpublishVolume",
            self.c.controller.controller_unpublish_volume(ControllerUnpublishVolumeRequest {
                volume_id: id.into(),
                node_id: self.node_id.clone(),
                ..Default::default()
            }),
        )
        .await;
    }

    async fn create(&mut self, id: &str, bytes: i64) -> Result<(), BoxError> {
        rpc(
            "CreateVolume",
            self.c.controller.create_volume(CreateVolumeRequest {
                name: id.into(),
                capacity_range: Some(CapacityRange { required_bytes: bytes, limit_bytes: 0 }),
                volume_capabilities: vec![self.cap.clone()],
                ..Default::default()
            }),
        )
        .await
        .map(drop)
    }

    async fn delete(&mut self, id: &str) -> Result<(), BoxError> {
        rpc(
            "DeleteVolume",
            self.c.controller.delete_volume(DeleteVolumeRequest { volume_id: id.into(), ..Default::default() }),
        )
        .await
        .map(drop)
    }
}

fn spans(t: [Instant; 7]) -> Cycle {
    let mut out = [0u64; 6];
    for i in 0..6 {
        out[i] = (t[i + 1] - t[i]).as_nanos() as u64;
    }
    out
}

/// Runs a tool to completion within [`STEP_DEADLINE`]; its trimmed stdout.
async fn tool(args: &[&str]) -> Result<String, BoxError> {
    let child = tokio::process::Command::new(args[0])
        .args(&args[1..])
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(STEP_DEADLINE, child)
        .await
        .map_err(|_| format!("{}: no exit within {} s", args.join(" "), STEP_DEADLINE.as_secs()))??;
    if !out.status.success() {
        return Err(
            format!("{}: {}: {}", args.join(" "), out.status, String::from_utf8_lossy(&out.stderr).trim()).into()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

/// The bare sequence, each tool as its own process.
async fn proc_cycle(img: &str, fs: &str, d: &Dirs) -> Result<Cycle, BoxError> {
    let staging = d.staging.to_str().ok_or("path")?;
    let target = d.target.to_str().ok_or("path")?;
    let t0 = Instant::now();
    let dev = tool(&["losetup", "--find", "--show", img]).await?;
    let t1 = Instant::now();
    let up = async {
        tool(&["mount", "-t", fs, &dev, staging]).await?;
        let t2 = Instant::now();
        tool(&["mount", "--bind", staging, target]).await?;
        Ok::<_, BoxError>((t2, Instant::now()))
    }
    .await;
    let (t2, t3) = match up {
        Ok(t) => t,
        Err(e) => {
            let _ = tool(&["umount", "-l", target]).await;
            let _ = tool(&["umount", "-l", staging]).await;
            let _ = tool(&["losetup", "-d", &dev]).await;
            return Err(e);
        }
    };
    let down = async {
        tool(&["umount", target]).await?;
        let t4 = Instant::now();
        tool(&["umount", staging]).await?;
        let t5 = Instant::now();
        tool(&["losetup", "-d", &dev]).await?;
        Ok::<_, BoxError>((t4, t5, Instant::now()))
    }
    .await;
    match down {
        Ok((t4, t5, t6)) => Ok(spans([t0, t1, t2, t3, t4, t5, t6])),
        Err(e) => {
            let _ = tool(&["umount", "-l", target]).await;
            let _ = tool(&["umount", "-l", staging]).await;
            let _ = tool(&["losetup", "-d", &dev]).await;
            Err(e)
        }
    }
}

// The loop ioctls (linux/loop.h).
const LOOP_CLR_FD: libc::c_ulong = 0x4C01;
const LOOP_CONFIGURE: libc::c_ulong = 0x4C0A;
const LOOP_CTL_GET_FREE: libc::c_ulong = 0x4C82;

/// `struct loop_config` (with its `struct loop_info64`), zeroed but for the fields set.
#[repr(C)]
struct LoopConfig {
    fd: u32,
    block_size: u32,
    lo_device: u64,
    lo_inode: u64,
    lo_rdevice: u64,
    lo_offset: u64,
    lo_sizelimit: u64,
    lo_number: u32,
    lo_encrypt_type: u32,
    lo_encrypt_key_size: u32,
    lo_flags: u32,
    lo_file_name: [u8; 64],
    lo_crypt_name: [u8; 64],
    lo_encrypt_key: [u8; 32],
    lo_init: [u64; 2],
    reserved: [u64; 8],
}
const _: () = assert!(std::mem::size_of::<LoopConfig>() == 304);

fn errno(what: &str) -> BoxError {
    format!("{what}: {}", std::io::Error::last_os_error()).into()
}

fn cstr(p: &Path) -> CString {
    CString::new(p.as_os_str().as_bytes()).expect("no NUL in paths")
}

/// Binds `img` to a free loop device (as losetup --find and the daemon do); the device's path.
fn sys_attach(img: &Path) -> Result<PathBuf, BoxError> {
    let ctl = std::fs::File::open("/dev/loop-control")?;
    for _ in 0..16 {
        // SAFETY: LOOP_CTL_GET_FREE takes no argument and returns a device number or -1.
        let n = unsafe { libc::ioctl(ctl.as_raw_fd(), LOOP_CTL_GET_FREE as _) };
        if n < 0 {
            return Err(errno("LOOP_CTL_GET_FREE"));
        }
        let path = PathBuf::from(format!("/dev/loop{n}"));
        let dev = std::fs::OpenOptions::new().read(true).write(true).open(&path)?;
        let backing = std::fs::OpenOptions::new().read(true).write(true).open(img)?;
        // SAFETY: all-zero is a valid `struct loop_config`.
        let mut cfg: LoopConfig = unsafe { std::mem::zeroed() };
        cfg.fd = backing.as_raw_fd() as u32;
        let name = img.as_os_str().as_bytes();
        let len = name.len().min(63);
        cfg.lo_file_name[..len].copy_from_slice(&name[..len]);
        // SAFETY: LOOP_CONFIGURE reads one `struct loop_config`, which `cfg` mirrors (size checked).
        let r = unsafe { libc::ioctl(dev.as_raw_fd(), LOOP_CONFIGURE as _, &cfg as *const LoopConfig) };
        if r == 0 {
            return Ok(path);
        }
        let e = std::io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::EBUSY) {
            return Err(format!("LOOP_CONFIGURE {}: {e}", path.display()).into());
        }
    }
    Err("LOOP_CONFIGURE: every free device was taken (EBUSY ×16)".into())
}

fn sys_detach(dev: &Path) -> Result<(), BoxError> {
    let f = std::fs::OpenOptions::new().read(true).open(dev)?;
    // SAFETY: LOOP_CLR_FD takes no argument.
    if unsafe { libc::ioctl(f.as_raw_fd(), LOOP_CLR_FD as _, 0) } != 0 {
        return Err(errno("LOOP_CLR_FD"));
    }
    Ok(())
}

fn sys_mount(src: &Path, dst: &Path, fs: Option<&str>, flags: libc::c_ulong) -> Result<(), BoxError> {
    let (s, d) = (cstr(src), cstr(dst));
    let fs = fs.map(|f| CString::new(f).expect("fs name"));
    // SAFETY: NUL-terminated strings that outlive the call; no data argument.
    let r = unsafe {
        libc::mount(
            s.as_ptr(),
            d.as_ptr(),
            fs.as_ref().map_or(std::ptr::null(), |f| f.as_ptr()),
            flags,
            std::ptr::null(),
        )
    };
    if r != 0 {
        return Err(errno(&format!("mount {} {}", src.display(), dst.display())));
    }
    Ok(())
}

fn sys_umount(p: &Path, flags: libc::c_int) -> Result<(), BoxError> {
    let c = cstr(p);
    // SAFETY: a NUL-terminated path that outlives the call.
    if unsafe { libc::umount2(c.as_ptr(), flags) } != 0 {
        return Err(errno(&format!("umount {}", p.display())));
    }
    Ok(())
}

/// The same steps as direct syscalls.
fn sys_cycle(img: &Path, fs: &str, d: &Dirs) -> Result<Cycle, BoxError> {
    let t0 = Instant::now();
    let dev = sys_attach(img)?;
    let t1 = Instant::now();
    let up = (|| {
        sys_mount(&dev, &d.staging, Some(fs), 0)?;
        let t2 = Instant::now();
        sys_mount(&d.staging, &d.target, None, libc::MS_BIND)?;
        Ok::<_, BoxError>((t2, Instant::now()))
    })();
    let undo = || {
        let _ = sys_umount(&d.target, libc::MNT_DETACH);
        let _ = sys_umount(&d.staging, libc::MNT_DETACH);
        let _ = sys_detach(&dev);
    };
    let (t2, t3) = up.inspect_err(|_| undo())?;
    let down = (|| {
        sys_umount(&d.target, 0)?;
        let t4 = Instant::now();
        sys_umount(&d.staging, 0)?;
        let t5 = Instant::now();
        sys_detach(&dev)?;
        Ok::<_, BoxError>((t4, t5, Instant::now()))
    })();
    let (t4, t5, t6) = down.inspect_err(|_| undo())?;
    Ok(spans([t0, t1, t2, t3, t4, t5, t6]))
}

/// Per-step summaries (ms) of `cycles`, plus the sums people ask about.
fn summarize(cycles: &[Cycle]) -> serde_json::Value {
    let ms = |v: Vec<u64>| {
        let s = Lat(v).sorted();
        json!({
            "n": s.0.len(),
            "p50_ms": round3(s.q_us(0.5) / 1000.0),
            "p90_ms": round3(s.q_us(0.9) / 1000.0),
            "max_ms": round3(s.q_us(1.0) / 1000.0),
        })
    };
    let mut out = serde_json::Map::new();
    for (i, step) in STEPS.iter().enumerate() {
        out.insert((*step).to_owned(), ms(cycles.iter().map(|c| c[i]).collect()));
    }
    for (name, range) in [("stage+publish", 1..3), ("up", 0..3), ("down", 3..6), ("cycle", 0..6)] {
        out.insert(name.to_owned(), ms(cycles.iter().map(|c| c[range.clone()].iter().sum()).collect()));
    }
    serde_json::Value::Object(out)
}

fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

fn raw_ms(cycles: &[Cycle]) -> serde_json::Value {
    let mut out = serde_json::Map::new();
    for (i, step) in STEPS.iter().enumerate() {
        out.insert((*step).to_owned(), json!(cycles.iter().map(|c| round3(c[i] as f64 / 1e6)).collect::<Vec<_>>()));
    }
    serde_json::Value::Object(out)
}

pub fn cmd_stage(a: &Args) {
    let socket = a.req("socket").to_owned();
    let root = PathBuf::from(a.req("dir"));
    let img = PathBuf::from(a.req("bare-image"));
    let samples: usize = a.num("samples", 30);
    let first: usize = a.num::<usize>("first", 3).max(1);
    let size_gib: i64 = a.num("size-gib", 1);
    let fs = a.str("fs").unwrap_or("ext4").to_owned();
    let max_secs = a.float("max-secs", 300.0);
    let prefix = a.str("name").unwrap_or("bench-csi").to_owned();
    let img_s = img.to_str().unwrap_or_else(|| die("--bare-image: not UTF-8")).to_owned();
    let t_start = Instant::now();
    let deadline = t_start + Duration::from_secs_f64(max_secs);
    let out = rt1().block_on(async {
        let mut c = connect(&socket).await.unwrap_or_else(|e| die(&format!("connect {socket}: {e}")));
        let node_id = rpc("NodeGetInfo", c.node.node_get_info(NodeGetInfoRequest {}))
            .await
            .unwrap_or_else(|e| die(&e.to_string()))
            .node_id;
        let mut csi = Csi { c: &mut c, node_id: node_id.clone(), cap: mount_cap(&fs), dirs: Dirs::new(&root, "csi") };
        let (proc_dirs, sys_dirs) = (Dirs::new(&root, "proc"), Dirs::new(&root, "sys"));
        let names: Vec<String> = (0..first).map(|k| format!("{prefix}-{k}")).collect();
        let mut created: Vec<String> = Vec::new();
        let result: Result<serde_json::Value, BoxError> = async {
            // Each new volume's first cycle: its NodeStage formats the blank image.
            let (mut create_ns, mut first_cycles) = (Vec::new(), Vec::new());
            for n in &names {
                let t = Instant::now();
                csi.create(n, size_gib << 30).await?;
                create_ns.push(t.elapsed().as_nanos() as u64);
                created.push(n.clone());
                first_cycles.push(csi.cycle(n).await?);
            }
            // The steady cycles, interleaved with the bare sequences, the order rotating.
            let vol = names[0].clone();
            let (mut cc, mut pc, mut sc) = (Vec::new(), Vec::new(), Vec::new());
            let mut stopped_early = false;
            for i in 0..samples {
                if Instant::now() > deadline {
                    stopped_early = true;
                    break;
                }
                for k in 0..3 {
                    match (k + i) % 3 {
                        0 => cc.push(csi.cycle(&vol).await?),
                        1 => pc.push(proc_cycle(&img_s, &fs, &proc_dirs).await?),
                        _ => sc.push(sys_cycle(&img, &fs, &sys_dirs)?),
                    }
                }
            }
            Ok(json!({
                "samples": cc.len(),
                "stopped_early": stopped_early,
                "node_id": node_id,
                "size_gib": size_gib,
                "fs": fs,
                "create": Lat(create_ns).sorted().summary(),
                "first": summarize(&first_cycles),
                "first_raw_ms": raw_ms(&first_cycles),
                "csi": summarize(&cc),
                "proc": summarize(&pc),
                "sys": summarize(&sc),
                "raw_ms": { "csi": raw_ms(&cc), "proc": raw_ms(&pc), "sys": raw_ms(&sc) },
                "secs": round2(t_start.elapsed().as_secs_f64()),
            }))
        }
        .await;
        // The volumes go in every case (csi_bench.py's own clean-up is the second net).
        for n in &created {
            if let Err(e) = csi.delete(n).await {
                eprintln!("rxbench csi-stage: clean-up: {e}");
            }
        }
        result.unwrap_or_else(|e| die(&format!("csi-stage: {e}")))
    });
    println!("{out}");
}
