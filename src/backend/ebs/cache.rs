//! What EC2 last said about each volume, so `Get`/`List`/`docker volume inspect` cost no EC2 call.
//!
//! Filled wholesale by one paginated DescribeVolumes on the ownership tag (at most once per
//! [`REFRESH_AFTER`], in the background) and per volume by every operation's own describe.
//! A failed refresh keeps the old entries (a transient AWS error never makes a known volume
//! disappear) and is not retried for [`RETRY_AFTER`].

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

use super::api::Volume;

/// How old the wholesale view may get before a read triggers a background refresh.
pub const REFRESH_AFTER: Duration = Duration::from_secs(60);

/// How long after a failed refresh reads wait before triggering another.
pub const RETRY_AFTER: Duration = Duration::from_secs(10);

#[derive(Debug, Default)]
struct Inner {
    /// Docker volume name → the EC2 volumes carrying its Name tag (normally one).
    by_name: BTreeMap<String, Vec<Volume>>,
    /// When the last wholesale refresh finished.
    refreshed_at: Option<Instant>,
    /// A wholesale refresh is running.
    refreshing: bool,
    /// When the last refresh failed.
    failed_at: Option<Instant>,
}

/// The cache; see the module documentation.
#[derive(Debug, Default)]
pub struct VolumeCache {
    inner: Mutex<Inner>,
}

impl VolumeCache {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().expect("volume cache poisoned")
    }

    /// The volumes named `name`.
    pub fn get(&self, name: &str) -> Vec<Volume> {
        self.lock().by_name.get(name).cloned().unwrap_or_default()
    }

    /// Records what a describe by name found (empty = none).
    pub fn put(&self, name: &str, volumes: Vec<Volume>) {
        let mut inner = self.lock();
        if volumes.is_empty() {
            inner.by_name.remove(name);
        } else {
            inner.by_name.insert(name.to_owned(), volumes);
        }
    }

    /// Records one volume's fresh state (replacing the entry with its ID, or adding it).
    pub fn update(&self, name: &str, volume: Volume) {
        let mut inner = self.lock();
        let entry = inner.by_name.entry(name.to_owned()).or_default();
        match entry.iter_mut().find(|v| v.id == volume.id) {
            Some(slot) => *slot = volume,
            None => entry.push(volume),
        }
    }

    /// Forgets volume `id` of `name`.
    pub fn forget(&self, name: &str, id: &str) {
        let mut inner = self.lock();
        if let Some(entry) = inner.by_name.get_mut(name) {
            entry.retain(|v| v.id != id);
            if entry.is_empty() {
                inner.by_name.remove(name);
            }
        }
    }

    /// Whether a wholesale refresh is due; if so, marks one as running (the caller must call
    /// [`VolumeCache::finish_refresh`]).
    pub fn begin_refresh(&self, force: bool) -> bool {
        let mut inner = self.lock();
        let stale = inner.refreshed_at.is_none_or(|at| at.elapsed() >= REFRESH_AFTER);
        let resting = inner.failed_at.is_some_and(|at| at.elapsed() < RETRY_AFTER);
        let due = force || (stale && !resting);
        if inner.refreshing || !due {
            return false;
        }
        inner.refreshing = true;
        true
    }

    /// Ends a refresh: with `Some`, replaces every entry; with `None` (it failed) keeps them.
    pub fn finish_refresh(&self, result: Option<BTreeMap<String, Vec<Volume>>>) {
        let mut inner = self.lock();
        inner.refreshing = false;
        match result {
            Some(map) => {
                inner.by_name = map;
                inner.refreshed_at = Some(Instant::now());
                inner.failed_at = None;
            }
            None => inner.failed_at = Some(Instant::now()),
        }
    }

    /// Every cached name and its volumes.
    pub fn all(&self) -> BTreeMap<String, Vec<Volume>> {
        self.lock().by_name.clone()
    }

    /// Whether a wholesale refresh ever succeeded.
    pub fn is_warm(&self) -> bool {
        self.lock().refreshed_at.is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::ebs::api::VolumeState;

    fn vol(id: &str) -> Volume {
        Volume {
            id: id.into(),
            size_gib: 1,
            volume_type: "gp3".into(),
            iops: None,
            throughput: None,
            availability_zone: "us-east-1a".into(),
            state: VolumeState::Available,
            encrypted: false,
            kms_key_id: None,
            snapshot_id: None,
            tags: BTreeMap::new(),
            attachments: Vec::new(),
            create_time: None,
        }
    }

    #[tokio::test(start_paused = true)]
    async fn refresh_is_due_once_per_period_and_a_failure_keeps_entries() {
        let c = VolumeCache::default();
        assert!(c.begin_refresh(false));
        assert!(!c.begin_refresh(false), "one at a time");
        c.finish_refresh(Some(BTreeMap::from([("a".to_owned(), vec![vol("vol-1")])])));
        assert!(!c.begin_refresh(false), "fresh");
        tokio::time::advance(REFRESH_AFTER).await;
        assert!(c.begin_refresh(false));
        c.finish_refresh(None);
        assert_eq!(c.get("a")[0].id, "vol-1", "kept after a failed refresh");
        assert!(!c.begin_refresh(false), "a failure rests a while");
        tokio::time::advance(RETRY_AFTER).await;
        assert!(c.begin_refresh(false));
        c.finish_refresh(None);
        assert!(c.begin_refresh(true), "unless forced");
    }

    #[test]
    fn updates_and_forgets() {
        let c = VolumeCache::default();
        c.update("a", vol("vol-1"));
        let mut v = vol("vol-1");
        v.size_gib = 2;
        c.update("a", v);
        assert_eq!(c.get("a").len(), 1);
        assert_eq!(c.get("a")[0].size_gib, 2);
        c.update("a", vol("vol-2"));
        assert_eq!(c.get("a").len(), 2);
        c.forget("a", "vol-1");
        c.forget("a", "vol-2");
        assert!(c.get("a").is_empty() && c.all().is_empty());
        c.put("b", vec![vol("vol-3")]);
        c.put("b", vec![]);
        assert!(c.all().is_empty());
    }
}
