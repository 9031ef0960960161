//! The Docker VolumeDriver protocol: wire types and request handling.
//!
//! Requests are decoded whatever their headers say (Docker sends no Content-Type), with
//! `Opts` and `ID` optional; replies are HTTP 200 with a JSON body, errors `{"Err": …}`.
//!
//! - [`routes`]: the VolumeDriver endpoints (decode → one service call → encode), with a
//!   request span and metrics per call;
//! - [`admin`]: the private admin socket (`rexray volume …` through the daemon);
//! - [`snapshots`]: its snapshot endpoints;
//! - [`telemetry`]: `/metrics` and `/health`;
//! - [`error`]: the one place errors become replies; [`wire`]: the JSON bodies; `encode`:
//!   the Get reply written without serde's generic machinery.

pub mod admin;
mod encode;
pub mod error;
pub mod routes;
pub mod snapshots;
pub mod telemetry;
pub mod volume_ops;
pub mod wire;

#[cfg(all(test, feature = "ebs"))]
mod ebs_front_tests;

pub use routes::{router, ServiceSource};
