//! The CSI v1 messages, servers and clients, generated at build time from `proto/csi.proto`.
#![allow(missing_docs, clippy::all, clippy::pedantic, missing_debug_implementations)]

tonic::include_proto!("csi.v1");
