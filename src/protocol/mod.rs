//! The Docker VolumeDriver protocol: wire types and HTTP routing.
//!
//! Requests are decoded whatever their headers say (Docker sends no Content-Type), with
//! `Opts` and `ID` optional; replies are HTTP 200 with a JSON body, errors `{"Err": …}`.

pub mod admin;
pub mod error;
pub mod routes;
pub mod snapshots;
pub mod wire;

pub use routes::{router, ServiceSource};
