//! rexray-rs: a Docker volume plugin daemon, a maintained drop-in replacement for REX-Ray.
//!
//! # Layout
//!
//! - [`protocol`]: the Docker VolumeDriver wire types and HTTP routing. Each handler decodes the
//!   request, makes one [`service::VolumeService`] call and encodes the reply; nothing else.
//! - [`service`]: names, options, per-volume locks, mount accounting and durable state. It owns
//!   all state and is the only place that decides when a backend activates or deactivates a volume.
//! - [`backend`]: the [`backend::Backend`] trait and its implementations (`vfs`, `loop`). Block
//!   backends share one attach → format-if-blank → mount pipeline.
//! - [`os`]: every syscall and external tool (mount, loop devices, blkid, mkfs) behind a small
//!   trait with a recording fake.
//! - [`config`]: `rexray.yml` in both REX-Ray formats plus environment overrides, to typed config.
//! - [`server`]: sockets (bound, or passed by systemd socket activation), signals and graceful
//!   shutdown.
//! - [`metrics`]: Prometheus metrics, `/metrics` and `/health`, and the recording API the other
//!   layers call (requests, volumes, backend operations, EC2 calls).
//! - [`cli`]: clap commands; the only place for `anyhow` and exit codes.

pub mod backend;
pub mod cli;
pub mod config;
pub mod metrics;
pub mod os;
pub mod protocol;
pub mod server;
pub mod service;
pub mod telemetry;
