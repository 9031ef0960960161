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
    /// When the last refresh failed, and why.
    failed: Option<(Instant, String)>,
}

/// A running wholesale refresh (see [`VolumeCache::begin_refresh`]).
#[derive(Debug)]
pub struct Refresh<'a> {
    cache: &'a VolumeCache,
    done: bool,
}

impl Refresh<'_> {
    /// Ends the refresh: with `Ok`, replaces every entry; with `Err` (why it failed) keeps them.
    pub fn finish(mut self, result: Result<BTreeMap<String, Vec<Volume>>, String>) {
        self.done = true;
        self.cache.finish_refresh(result);
    }
}

impl Drop for Refresh<'_> {
    fn drop(&mut self) {
        if !self.done {
            self.cache.finish_refresh(Err("the listing was cancelled before EC2 answered".into()));
        }
    }
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

    /// When a wholesale refresh is due, marks one as running and returns its ticket, which
    /// ends it ([`Refresh::finish`]; dropped unfinished, as when its request is cancelled, it
    /// counts as failed, so no refresh stays marked running).
    pub fn begin_refresh(&self, force: bool) -> Option<Refresh<'_>> {
        let mut inner = self.lock();
        let stale = inner.refreshed_at.is_none_or(|at| at.elapsed() >= REFRESH_AFTER);
        let resting = inner.failed.as_ref().is_some_and(|(at, _)| at.elapsed() < RETRY_AFTER);
        let due = force || (stale && !resting);
        if inner.refreshing || !due {
            return None;
        }
        inner.refreshing = true;
        Some(Refresh { cache: self, done: false })
    }

    /// Ends a refresh: with `Ok`, replaces every entry; with `Err` (why it failed) keeps them.
    fn finish_refresh(&self, result: Result<BTreeMap<String, Vec<Volume>>, String>) {
        let mut inner = self.lock();
        inner.refreshing = false;
        match result {
            Ok(map) => {
                inner.by_name = map;
                inner.refreshed_at = Some(Instant::now());
                inner.failed = None;
            }
            Err(cause) => inner.failed = Some((Instant::now(), cause)),
        }
    }

    /// Set while the last wholesale refresh failed: why, and the age of what the cache holds.
    pub fn staleness(&self) -> Option<crate::backend::Stale> {
        let inner = self.lock();
        let (_, cause) = inner.failed.as_ref()?;
        Some(crate::backend::Stale { cause: cause.clone(), listed_ago: inner.refreshed_at.map(|at| at.elapsed()) })
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
        let first = c.begin_refresh(false).unwrap();
        assert!(c.begin_refresh(false).is_none(), "one at a time");
        first.finish(Ok(BTreeMap::from([("a".to_owned(), vec![vol("vol-1")])])));
        assert!(c.begin_refresh(false).is_none(), "fresh");
        assert_eq!(c.staleness(), None);
        tokio::time::advance(REFRESH_AFTER).await;
        c.begin_refresh(false).unwrap().finish(Err("EC2 did not answer".into()));
        assert_eq!(c.get("a")[0].id, "vol-1", "kept after a failed refresh");
        assert_eq!(
            c.staleness(),
            Some(crate::backend::Stale { cause: "EC2 did not answer".into(), listed_ago: Some(REFRESH_AFTER) })
        );
        assert!(c.begin_refresh(false).is_none(), "a failure rests a while");
        tokio::time::advance(RETRY_AFTER).await;
        c.begin_refresh(false).unwrap().finish(Err("EC2 did not answer".into()));
        assert!(c.begin_refresh(true).is_some(), "unless forced");
    }

    #[tokio::test(start_paused = true)]
    async fn a_cancelled_refresh_does_not_stay_running() {
        let c = VolumeCache::default();
        drop(c.begin_refresh(false).unwrap());
        let stale = c.staleness().unwrap();
        assert!(stale.cause.contains("cancelled") && stale.listed_ago.is_none(), "{stale:?}");
        tokio::time::advance(RETRY_AFTER).await;
        assert!(c.begin_refresh(false).is_some(), "not left marked as running");
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
