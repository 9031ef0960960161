//! What the two halves of a backend pass each other: the node a volume is published to, and
//! what the controller tells that node about it.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

/// A node as the controller half addresses it: an EC2 instance ID for EBS, the host name for
/// the local backends.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct NodeId(pub String);

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// What [`super::Controller::publish`] tells the node half about a published volume: how to find
/// its device, and the volume options the storage fixes for every host (EBS keeps the file
/// system type and the data directory's owner in tags). A string map, as CSI's
/// `publish_context` is.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PublishContext(BTreeMap<String, String>);

impl PublishContext {
    /// The block device (loop: `/dev/loop3`).
    pub const DEVICE: &'static str = "device";
    /// The storage's volume ID (EBS: `vol-…`).
    pub const VOLUME_ID: &'static str = "volumeId";
    /// The device name the volume was attached as (EBS: `/dev/xvdf`).
    pub const DEVICE_NAME: &'static str = "deviceName";

    /// An empty context (vfs).
    pub fn new() -> Self {
        Self::default()
    }

    /// This context with `key` set to `value`.
    #[must_use]
    pub fn with(mut self, key: &str, value: impl Into<String>) -> Self {
        self.0.insert(key.to_owned(), value.into());
        self
    }

    /// The value of `key`.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).map(String::as_str)
    }

    /// Every entry.
    pub fn entries(&self) -> &BTreeMap<String, String> {
        &self.0
    }

    /// A context from entries (as a CSI request carries them).
    pub fn from_entries(entries: BTreeMap<String, String>) -> Self {
        Self(entries)
    }

    /// This context with the volume options the storage fixes (`opts`' [`FIXED_OPTIONS`] that
    /// are set) added.
    #[must_use]
    pub fn with_fixed_options(mut self, opts: &super::Options) -> Self {
        for key in FIXED_OPTIONS {
            if let Some(v) = opts.get(*key).filter(|v| !v.is_empty()) {
                self.0.insert((*key).to_owned(), v.clone());
            }
        }
        self
    }

    /// The stored options `opts` with the ones this context fixes laid over them.
    pub fn fixed_over(&self, opts: &super::Options) -> super::Options {
        let mut merged = opts.clone();
        for key in FIXED_OPTIONS {
            if let Some(v) = self.get(key).filter(|v| !v.is_empty()) {
                merged.insert((*key).to_owned(), v.to_owned());
            }
        }
        merged
    }
}

/// The volume options the storage may fix for every host (EBS keeps them in tags) and the
/// controller then passes in the [`PublishContext`]: they win over the options stored with a
/// host's record.
pub const FIXED_OPTIONS: &[&str] = &["fsType", "uid", "gid", "mode", "mkfsOptions", "mountOptions"];
