//! One async lock per volume name.
//!
//! Concurrent calls on one volume queue behind each other; calls on different volumes run in
//! parallel. Entries are dropped from the map when nobody holds or waits for them, so the map
//! never grows with the number of volumes ever seen.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tokio::sync::{Mutex as AsyncMutex, OwnedMutexGuard};

/// The per-volume lock table.
#[derive(Debug, Default)]
pub struct VolumeLocks {
    /// Name → lock. A std mutex: held only to look up or prune an entry, never across `.await`.
    map: Mutex<HashMap<String, Arc<AsyncMutex<()>>>>,
}

/// Holds one volume's lock; releases it (and prunes the entry if idle) on drop.
#[derive(Debug)]
pub struct VolumeGuard<'a> {
    locks: &'a VolumeLocks,
    name: String,
    entry: Arc<AsyncMutex<()>>,
    guard: Option<OwnedMutexGuard<()>>,
}

impl VolumeLocks {
    /// Waits for the lock of `name`.
    pub async fn lock(&self, name: &str) -> VolumeGuard<'_> {
        let entry = {
            let mut map = self.map.lock().expect("volume lock table poisoned");
            map.entry(name.to_owned()).or_default().clone()
        };
        let guard = entry.clone().lock_owned().await;
        VolumeGuard { locks: self, name: name.to_owned(), entry, guard: Some(guard) }
    }

    /// Waits for the lock of `name` at most `limit`; `None` when the time ran out.
    pub async fn lock_within(&self, name: &str, limit: std::time::Duration) -> Option<VolumeGuard<'_>> {
        let entry = {
            let mut map = self.map.lock().expect("volume lock table poisoned");
            map.entry(name.to_owned()).or_default().clone()
        };
        let guard = tokio::time::timeout(limit, entry.clone().lock_owned()).await.ok();
        // Built even when the wait ran out, so that dropping it prunes the entry.
        let held = VolumeGuard { locks: self, name: name.to_owned(), entry, guard };
        held.guard.is_some().then_some(held)
    }

    /// How many names have an entry (for tests).
    pub fn len(&self) -> usize {
        self.map.lock().expect("volume lock table poisoned").len()
    }

    /// Whether no name has an entry.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl Drop for VolumeGuard<'_> {
    fn drop(&mut self) {
        self.guard.take();
        let mut map = self.locks.map.lock().expect("volume lock table poisoned");
        // The map and this guard hold the only references: nobody else waits for this name.
        if Arc::strong_count(&self.entry) == 2 {
            map.remove(&self.name);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn one_volume_serializes_and_entries_are_pruned() {
        let locks = Arc::new(VolumeLocks::default());
        let inside = Arc::new(AtomicUsize::new(0));
        let mut tasks = Vec::new();
        for _ in 0..16 {
            let (locks, inside) = (locks.clone(), inside.clone());
            tasks.push(tokio::spawn(async move {
                let _g = locks.lock("v").await;
                assert_eq!(inside.fetch_add(1, Ordering::SeqCst), 0, "two holders at once");
                tokio::time::sleep(Duration::from_millis(2)).await;
                inside.fetch_sub(1, Ordering::SeqCst);
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
        assert!(locks.is_empty());
    }

    #[tokio::test]
    async fn different_volumes_do_not_block_each_other() {
        let locks = VolumeLocks::default();
        let _a = locks.lock("a").await;
        let b = tokio::time::timeout(Duration::from_secs(1), locks.lock("b")).await;
        assert!(b.is_ok());
        assert_eq!(locks.len(), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn a_bounded_wait_gives_up_and_leaves_no_entry_behind() {
        let locks = VolumeLocks::default();
        let held = locks.lock("v").await;
        assert!(locks.lock_within("v", Duration::from_secs(5)).await.is_none());
        drop(held);
        assert!(locks.is_empty());
        let again = locks.lock_within("v", Duration::from_secs(5)).await;
        assert!(again.is_some());
        drop(again);
        assert!(locks.is_empty());
    }
}
