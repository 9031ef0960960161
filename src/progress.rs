//! What long operations are waiting for, so that whoever waits on them can say so.
//!
//! An operation registers itself on the process's [`Board`] with [`begin`] (its name and its
//! subject: a volume or snapshot) and runs inside [`Entry::scope`]; the waits it makes deep down
//! ([`waiting_for`] before a wait, [`seen`] at each look) update its entry. The CLI shows the
//! entries of the operation it waits for: read here when the operation runs in the same
//! process, or through the daemon's admin socket (`/Admin.Progress`). Work spawned onto another
//! task takes the entry along with [`carry`].

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::Instant;

/// What one running operation is doing now.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Note {
    /// The operation (`mount`, `snapshot create`).
    pub op: String,
    /// What it is about (a volume name, a snapshot ID).
    pub subject: String,
    /// What it waits for now (`volume db1 (vol-1) to attach as /dev/xvdf`); empty while it
    /// waits for nothing in particular.
    pub waiting_for: String,
    /// What the last look found (`attaching`).
    pub seen: String,
    /// Seconds since the current wait began.
    pub seconds: u64,
}

#[derive(Debug)]
struct Slot {
    op: String,
    subject: String,
    waiting_for: String,
    seen: String,
    since: Instant,
}

/// The running operations of this process.
#[derive(Debug, Default)]
pub struct Board {
    slots: Mutex<BTreeMap<u64, Slot>>,
}

fn board() -> &'static Board {
    static BOARD: OnceLock<Board> = OnceLock::new();
    BOARD.get_or_init(Board::default)
}

tokio::task_local! {
    static CURRENT: Option<u64>;
}

/// An operation on the board; it leaves the board when dropped.
#[derive(Debug)]
pub struct Entry {
    id: u64,
}

/// Puts operation `op` on `subject` on the board.
pub fn begin(op: &str, subject: &str) -> Entry {
    static NEXT: AtomicU64 = AtomicU64::new(1);
    let id = NEXT.fetch_add(1, Ordering::Relaxed);
    let slot = Slot {
        op: op.to_owned(),
        subject: subject.to_owned(),
        waiting_for: String::new(),
        seen: String::new(),
        since: Instant::now(),
    };
    board().slots.lock().expect("progress board poisoned").insert(id, slot);
    Entry { id }
}

impl Entry {
    /// Runs `fut` as this operation: its waits update this entry.
    pub async fn scope<F: Future>(&self, fut: F) -> F::Output {
        CURRENT.scope(Some(self.id), fut).await
    }
}

impl Drop for Entry {
    fn drop(&mut self) {
        board().slots.lock().expect("progress board poisoned").remove(&self.id);
    }
}

/// Runs `fut` with the entry of the task that calls this (for work spawned elsewhere).
pub fn carry<F: Future>(fut: F) -> impl Future<Output = F::Output> {
    CURRENT.scope(CURRENT.try_with(|c| *c).ok().flatten(), fut)
}

fn update(f: impl FnOnce(&mut Slot)) {
    let Some(id) = CURRENT.try_with(|c| *c).ok().flatten() else { return };
    if let Some(slot) = board().slots.lock().expect("progress board poisoned").get_mut(&id) {
        f(slot);
    }
}

/// The current operation starts waiting for `what`.
pub fn waiting_for(what: impl Into<String>) {
    let what = what.into();
    update(|slot| {
        slot.waiting_for = what;
        slot.seen.clear();
        slot.since = Instant::now();
    });
}

/// The current wait's latest look found `what`.
pub fn seen(what: impl Into<String>) {
    let what = what.into();
    update(|slot| slot.seen = what);
}

/// Every running operation, oldest first.
pub fn notes() -> Vec<Note> {
    board()
        .slots
        .lock()
        .expect("progress board poisoned")
        .values()
        .map(|s| Note {
            op: s.op.clone(),
            subject: s.subject.clone(),
            waiting_for: s.waiting_for.clone(),
            seen: s.seen.clone(),
            seconds: s.since.elapsed().as_secs(),
        })
        .collect()
}

impl std::fmt::Display for Note {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.waiting_for.is_empty() {
            return write!(f, "{} {}: working ({} s)", self.op, self.subject, self.seconds);
        }
        write!(f, "{} {}: waiting for {}", self.op, self.subject, self.waiting_for)?;
        if !self.seen.is_empty() {
            write!(f, ": {}", self.seen)?;
        }
        write!(f, " ({} s)", self.seconds)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn waits_show_on_the_board_until_the_operation_ends() {
        let entry = begin("mount", "progress-test-volume");
        let mine = || notes().into_iter().filter(|n| n.subject == "progress-test-volume").collect::<Vec<_>>();
        entry
            .scope(async {
                waiting_for("volume db1 (vol-1) to attach as /dev/xvdf");
                seen("attaching");
                let spawned = tokio::spawn(carry(async { seen("attached") }));
                spawned.await.unwrap();
            })
            .await;
        let now = mine();
        assert_eq!(now.len(), 1);
        assert_eq!(
            now[0].to_string(),
            "mount progress-test-volume: waiting for volume db1 (vol-1) to attach as /dev/xvdf: attached (0 s)"
        );
        // Outside any operation, notes go nowhere.
        seen("ignored");
        drop(entry);
        assert!(mine().is_empty());
    }
}
