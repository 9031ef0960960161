//! Request deadlines carried with the work: every wait and retry of a request ends inside the
//! caller's own timeout, and the undoing of a failed step keeps time of its own.
//!
//! A front knows how long its caller waits (Docker gives Create and Mount 2 minutes, the rest
//! 1 minute) and runs the request [`within`] a [`Budget`]. Forward work — attaching, waiting
//! for a device, retrying a throttled call — may use the budget minus its reserve; work wrapped
//! in [`rollback`] may use the whole of it, and at least [`MIN_ROLLBACK`], because undoing a
//! half-done step matters more than replying on time. Code that waits asks [`cap`] how long it
//! may. Without a budget (the CLI, the daemon's own start-up) waits keep their configured times.
//!
//! The deadline lives in a tokio task-local: work spawned onto another task takes it along with
//! [`carry`].

use std::future::Future;
use std::time::Duration;

use tokio::time::Instant;

/// The least time a rollback gets, even when the caller's deadline has passed.
pub const MIN_ROLLBACK: Duration = Duration::from_secs(10);

/// How long a caller waits for a kind of request, and how much of it is kept for undoing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Budget {
    /// Who waits, for messages (`Docker's 2 min Mount timeout`).
    pub caller: &'static str,
    /// The whole time until the reply must be sent.
    pub total: Duration,
    /// The part of `total` that forward work leaves for undoing it.
    pub reserve: Duration,
}

/// The deadline of the request running on this task.
#[derive(Debug, Clone, Copy)]
pub struct Deadline {
    caller: &'static str,
    /// Forward work ends here.
    forward_until: Instant,
    /// The reply is due here; rollbacks may run until then.
    reply_by: Instant,
    /// Inside [`rollback`].
    undoing: bool,
}

tokio::task_local! {
    static CURRENT: Option<Deadline>;
}

/// The deadline of this task's request, if it has one.
pub fn current() -> Option<Deadline> {
    CURRENT.try_with(|d| *d).ok().flatten()
}

/// Runs `fut` under `budget`, counted from now. An enclosing deadline that ends earlier wins.
pub async fn within<F: Future>(budget: Budget, fut: F) -> F::Output {
    let now = Instant::now();
    let mut deadline = Deadline {
        caller: budget.caller,
        forward_until: now + budget.total.saturating_sub(budget.reserve),
        reply_by: now + budget.total,
        undoing: false,
    };
    if let Some(outer) = current() {
        if outer.reply_by < deadline.reply_by {
            deadline = outer;
        }
    }
    CURRENT.scope(Some(deadline), fut).await
}

/// Runs `fut` with the deadline of the task that calls this (for work spawned elsewhere).
pub fn carry<F: Future>(fut: F) -> impl Future<Output = F::Output> {
    CURRENT.scope(current(), fut)
}

/// Runs `fut` as the undoing of a failed step: its waits may use the whole budget.
pub async fn rollback<F: Future>(fut: F) -> F::Output {
    let deadline = current().map(|d| Deadline { undoing: true, ..d });
    CURRENT.scope(deadline, fut).await
}

/// How long a wait configured for `configured` may take under this task's deadline.
pub fn cap(configured: Duration) -> Duration {
    current().map_or(configured, |d| configured.min(d.left()))
}

/// How much of this task's deadline is left for the current kind of work (`None`: no deadline).
pub fn left() -> Option<Duration> {
    current().map(|d| d.left())
}

/// Who waits for this task's request (`Docker's 2 min Mount timeout`), if anyone.
pub fn caller() -> Option<&'static str> {
    current().map(|d| d.caller)
}

/// `; cut to … to answer within …` when the deadline makes a wait of `configured` shorter than
/// configured, else empty: appended to timeout messages.
pub fn cut_note(configured: Duration, allowed: Duration) -> String {
    match current() {
        Some(d) if allowed < configured => format!(
            "; the wait was cut from {} to {} to answer within {}",
            crate::human::duration(configured),
            crate::human::duration(allowed),
            d.caller
        ),
        _ => String::new(),
    }
}

impl Deadline {
    /// The time left for the current kind of work (forward or undoing).
    fn left(&self) -> Duration {
        let now = Instant::now();
        if self.undoing {
            self.reply_by.saturating_duration_since(now).max(MIN_ROLLBACK)
        } else {
            self.forward_until.saturating_duration_since(now)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DOCKER_MOUNT: Budget = Budget {
        caller: "Docker's 2 min Mount timeout",
        total: Duration::from_secs(100),
        reserve: Duration::from_secs(30),
    };

    #[tokio::test(start_paused = true)]
    async fn forward_work_leaves_the_reserve_and_rollbacks_get_the_rest() {
        assert_eq!(cap(Duration::from_secs(120)), Duration::from_secs(120), "no deadline, no cut");
        within(DOCKER_MOUNT, async {
            assert_eq!(cap(Duration::from_secs(120)), Duration::from_secs(70));
            assert_eq!(cap(Duration::from_secs(5)), Duration::from_secs(5));
            tokio::time::sleep(Duration::from_secs(70)).await;
            assert_eq!(left(), Some(Duration::ZERO));
            rollback(async {
                assert_eq!(cap(Duration::from_secs(120)), Duration::from_secs(30));
            })
            .await;
            tokio::time::sleep(Duration::from_secs(60)).await;
            // Past the reply's deadline a rollback still gets its minimum.
            rollback(async { assert_eq!(cap(Duration::from_secs(120)), MIN_ROLLBACK) }).await;
        })
        .await;
    }

    #[tokio::test(start_paused = true)]
    async fn the_earlier_deadline_wins_and_spawned_work_carries_it() {
        let short = Budget { caller: "a test", total: Duration::from_secs(20), reserve: Duration::from_secs(5) };
        within(short, async {
            within(DOCKER_MOUNT, async { assert_eq!(cap(Duration::from_secs(120)), Duration::from_secs(15)) }).await;
            let spawned = tokio::spawn(carry(async { cap(Duration::from_secs(120)) }));
            assert_eq!(spawned.await.unwrap(), Duration::from_secs(15));
            let bare = tokio::spawn(async { cap(Duration::from_secs(120)) });
            assert_eq!(bare.await.unwrap(), Duration::from_secs(120));
        })
        .await;
    }

    #[tokio::test(start_paused = true)]
    async fn the_cut_is_named_in_words() {
        assert_eq!(cut_note(Duration::from_secs(120), Duration::from_secs(70)), "");
        within(DOCKER_MOUNT, async {
            assert_eq!(
                cut_note(Duration::from_secs(120), Duration::from_secs(70)),
                "; the wait was cut from 2 min to 70 s to answer within Docker's 2 min Mount timeout"
            );
            assert_eq!(cut_note(Duration::from_secs(5), Duration::from_secs(5)), "");
        })
        .await;
    }
}
