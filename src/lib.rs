//! rexray-rs: a Docker volume plugin daemon, a maintained drop-in replacement for REX-Ray.
//!
//! # Layout
//!
//! Dependencies point down this list only (see `ARCHITECTURE.md`; `tests/layering.rs` fails on
//! an import that points up):
//!
//! - [`cli`]: clap commands and the composition root (`cli::daemon`); the only place for
//!   `anyhow` and exit codes.
//! - [`protocol`]: the Docker VolumeDriver wire types and request handling: each call decodes,
//!   makes one [`service::VolumeService`] call and encodes; nothing else.
//! - [`service`]: names, options, per-volume locks, mount accounting, durable state and the
//!   crash-safe intents of every operation. It owns all state and composes the backend's two
//!   halves for the Docker front.
//! - [`backend`]: the [`backend::Controller`] and [`backend::Node`] halves of each backend
//!   (`vfs`, `loop`, `ebs`); block backends share one node half.
//! - [`os`]: every syscall, external tool and sysfs read behind small traits with fakes.
//! - Leaves, used by any layer above: [`server`] (sockets, HTTP/1 serving, shutdown),
//!   [`config`] (`rexray.yml` in both REX-Ray formats plus environment overrides, to typed
//!   config), [`metrics`] (Prometheus registry and recording functions), [`name`] (volume
//!   names), [`crashpoint`] (where tests crash operations), [`deadline`] (the caller's deadline
//!   carried with a request's work), [`human`] (values worded for messages), [`progress`] (what long operations wait for),
//!   [`telemetry`]
//!   (logging setup).

pub mod backend;
pub mod cli;
pub mod config;
pub mod crashpoint;
pub mod csi;
pub mod deadline;
pub mod human;
pub mod metrics;
pub mod name;
pub mod os;
pub mod progress;
pub mod protocol;
pub mod server;
pub mod service;
pub mod telemetry;
