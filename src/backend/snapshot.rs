//! The optional snapshot capability of a backend ([`Snapshots`]) and its SDK-free types.
//!
//! A backend that can snapshot its volumes returns itself from [`super::Backend::snapshots`];
//! the others return `None`, and the service answers "not supported by <backend>".

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::time::Duration;

use async_trait::async_trait;

use super::BackendError;
use crate::name::VolumeName;

/// A snapshot as the commands show it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotInfo {
    /// The storage's ID (`snap-…`).
    pub id: String,
    /// Its name, if it has one (without the `ebs.tag` namespace).
    pub name: Option<String>,
    /// The volume it was taken from, by name, when known.
    pub volume: Option<String>,
    /// The volume it was taken from, by the storage's ID.
    pub volume_id: String,
    /// `pending`, `completed`, `error`, …
    pub state: String,
    /// Progress text (`"42%"`), if the storage reports it.
    pub progress: Option<String>,
    /// The size of the volume it was taken from, in GiB.
    pub size_gib: u64,
    /// Its description.
    pub description: String,
    /// Whether it is encrypted.
    pub encrypted: bool,
    /// When it was started, RFC 3339, if known.
    pub start_time: Option<String>,
    /// The region it is in.
    pub region: String,
    /// Its tags.
    pub tags: BTreeMap<String, String>,
}

/// What `snapshot create` asks for.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct NewSnapshot {
    /// The snapshot's name (default: the volume's).
    pub name: Option<String>,
    /// Its description (default: says which volume it is of).
    pub description: Option<String>,
}

/// What `snapshot copy` asks for.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct SnapshotCopy {
    /// The copy's name (default: the source's).
    pub name: Option<String>,
    /// The copy's description (default: `Copy of <id> from <region>`).
    pub description: Option<String>,
    /// The region to copy to (default: the source's).
    pub destination_region: Option<String>,
}

/// Which snapshots `snapshot ls` shows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SnapshotFilter {
    /// These IDs, whoever made them.
    Ids(Vec<String>),
    /// Those made by this program in this namespace (`ebs.tag`).
    Managed,
    /// Every snapshot the account owns in the region.
    All,
}

/// Snapshot operations of a backend. Every method is bounded in time: waits take a deadline,
/// cloud calls are retried within a budget.
#[async_trait]
pub trait Snapshots: Send + Sync + Debug {
    /// The snapshots `filter` selects, oldest first.
    ///
    /// # Errors
    /// An unknown ID, or the storage's failure.
    async fn list_snapshots(&self, filter: &SnapshotFilter) -> Result<Vec<SnapshotInfo>, BackendError>;

    /// Starts a snapshot of `volume`; returns it as it is right after the request (usually
    /// pending).
    ///
    /// # Errors
    /// No such volume, an invalid name, or the storage's failure.
    async fn create_snapshot(&self, volume: &VolumeName, req: &NewSnapshot) -> Result<SnapshotInfo, BackendError>;

    /// Deletes snapshot `id`.
    ///
    /// # Errors
    /// No such snapshot, one still in use, or the storage's failure.
    async fn remove_snapshot(&self, id: &str) -> Result<(), BackendError>;

    /// Starts a copy of snapshot `id`; returns the copy as it is right after the request.
    ///
    /// # Errors
    /// No such snapshot or region, or the storage's failure.
    async fn copy_snapshot(&self, id: &str, req: &SnapshotCopy) -> Result<SnapshotInfo, BackendError>;

    /// Waits until snapshot `id` (in `region`, default this one) is complete, at most `timeout`.
    ///
    /// # Errors
    /// It failed, vanished, or is still in progress at the deadline (it goes on regardless).
    async fn wait_snapshot(
        &self,
        id: &str,
        region: Option<&str>,
        timeout: Duration,
    ) -> Result<SnapshotInfo, BackendError>;
}
