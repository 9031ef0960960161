//! Bounded waits and retries, all on tokio's clock (so tests run them with `time::pause()`).
//!
//! - [`StatusWait`]: polls at once, then after `initial`, `2×initial`, `4×initial`, … (each delay
//!   capped at `max_delay`) until the condition holds or the time is up: `ebs.statusTimeout`, cut
//!   to the caller's deadline. Waits are bounded by time, never by a count of polls, so a slow
//!   but healthy attach (30–60 s on real EBS) succeeds. [`StatusWait::run_signalled`] instead
//!   takes a cheap local look (is the device on this host yet?) at once and every [`LOCAL_LOOK`]:
//!   the moment it says the change happened, EC2 is asked to confirm, so the change is noticed
//!   within milliseconds. EC2 is then polled only as a fallback (a device that never appears, an
//!   attachment that fails): from [`FALLBACK_FIRST`], doubling.
//! - The looks and the fallback polls of signalled waits fall on a grid shared by every wait of
//!   the process ([`LOCAL_LOOK`], [`FALLBACK_GRID`]), so concurrent waits look, notice and poll
//!   at the same instants and their calls to EC2 join the same batched rounds
//!   ([`super::watch`]), however far apart they began.
//! - [`RetryPolicy`]: retries throttled (`RequestLimitExceeded`) and transient EC2 failures with
//!   exponential backoff and full jitter, within `ebs.maxRetries` and a time budget that keeps a
//!   call inside Docker's 1–2 minute limits.

use std::future::Future;
use std::hash::{BuildHasher, Hasher};
use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

use super::api::{CloudError, CloudErrorKind};

/// The longest delay between two EC2 polls of a volume's state (they are batched across
/// volumes, so a short cap costs few calls).
pub const MAX_POLL_DELAY: Duration = Duration::from_secs(5);

/// How often a local signal is looked at.
pub const LOCAL_LOOK: Duration = Duration::from_millis(10);

/// The delay between two EC2 polls for [`CONFIRM_WINDOW`] after the local signal said the
/// change happened (EC2's view can lag the host's by a moment).
pub const CONFIRM_POLL: Duration = Duration::from_millis(50);

/// How long EC2 is asked every [`CONFIRM_POLL`] after the local signal; then the schedule goes
/// on (a device link left from an earlier attachment must not cost a call every 50 ms).
pub const CONFIRM_WINDOW: Duration = Duration::from_secs(2);

/// The first fallback poll of a signalled wait (at least the wait's own initial delay); later
/// ones double, at most `max_delay` apart.
pub const FALLBACK_FIRST: Duration = Duration::from_secs(1);

/// The grid the fallback polls of signalled waits are rounded up to: coarse, so the waits of a
/// burst of Mounts, begun over a few hundred milliseconds, fall into one cell and share each
/// fallback round (a fallback only finds failures, so rounding up by up to a second costs
/// nothing a user sees).
pub const FALLBACK_GRID: Duration = Duration::from_secs(1);

/// The first instant at or after `t` on the process-wide grid of step `step`.
pub fn on_grid(t: Instant, step: Duration) -> Instant {
    static EPOCH: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
    let epoch = Instant::from_std(*EPOCH.get_or_init(std::time::Instant::now));
    let step_ns = step.as_nanos().max(1);
    let since = t.saturating_duration_since(epoch).as_nanos();
    let steps = since.div_ceil(step_ns);
    let at = u64::try_from(steps.saturating_mul(step_ns)).unwrap_or(u64::MAX);
    (epoch + Duration::from_nanos(at)).max(t)
}

/// The polling schedule of a wait.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StatusWait {
    /// Delay before the second poll; doubled for each later one.
    pub initial_delay: Duration,
    /// The longest delay between two polls.
    pub max_delay: Duration,
    /// Hard deadline from the first poll (cut to the caller's).
    pub timeout: Duration,
}

/// What one poll found.
#[derive(Debug)]
pub enum Poll<T> {
    /// The wait is over.
    Ready(T),
    /// Not yet; the text says what was seen (for the timeout message).
    Pending(String),
}

/// Why a wait ended without the condition.
#[derive(Debug)]
pub enum WaitError<E> {
    /// Time ran out; carries what the last poll saw, the polls and the time spent.
    TimedOut {
        /// What the last poll saw.
        last: String,
        /// Polls made.
        attempts: u32,
        /// Time spent.
        elapsed: Duration,
        /// `; the wait was cut …` when the caller's deadline ended it early, else empty.
        cut: String,
    },
    /// A poll failed for good.
    Failed(E),
}

impl StatusWait {
    /// The delay before poll `n` (0-based; poll 0 has none).
    pub fn delay_before(&self, n: u32) -> Duration {
        if n == 0 {
            return Duration::ZERO;
        }
        let factor = 1u32.checked_shl(n - 1).unwrap_or(u32::MAX);
        self.initial_delay.checked_mul(factor).unwrap_or(self.max_delay).min(self.max_delay)
    }

    /// Polls `f` on this schedule, within the request's deadline ([`crate::deadline::cap`]).
    ///
    /// # Errors
    /// [`WaitError::Failed`] with `f`'s error, or [`WaitError::TimedOut`].
    pub async fn run<T, E, F, Fut>(&self, f: F) -> Result<T, WaitError<E>>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<Poll<T>, E>>,
    {
        self.run_signalled(f, None::<fn() -> std::future::Ready<bool>>).await
    }

    /// As [`Self::run`]; with a `signal`, that is looked at once and then every [`LOCAL_LOOK`]
    /// (on the shared grid), and `f` runs only as a fallback: at [`FALLBACK_FIRST`], doubling, on
    /// the [`FALLBACK_GRID`]. Once the signal says yes, `f` runs at once, then every
    /// [`CONFIRM_POLL`] for [`CONFIRM_WINDOW`], then on the fallback schedule again, until it is
    /// ready.
    ///
    /// # Errors
    /// As [`Self::run`].
    pub async fn run_signalled<T, E, F, Fut, S, SFut>(&self, mut f: F, mut signal: Option<S>) -> Result<T, WaitError<E>>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<Poll<T>, E>>,
        S: FnMut() -> SFut,
        SFut: Future<Output = bool>,
    {
        let start = Instant::now();
        let allowed = crate::deadline::cap(self.timeout);
        let deadline = start + allowed;
        let mut attempts = 0;
        let mut signalled_at: Option<Instant> = None;
        let fallback = StatusWait { initial_delay: self.initial_delay.max(FALLBACK_FIRST), ..*self };
        let mut next =
            if signal.is_some() { on_grid(start + fallback.initial_delay, FALLBACK_GRID).min(deadline) } else { start };
        let mut last = String::new();
        loop {
            if Instant::now() >= next {
                let due = next;
                attempts += 1;
                match f().await.map_err(WaitError::Failed)? {
                    Poll::Ready(v) => return Ok(v),
                    Poll::Pending(seen) => {
                        crate::progress::seen(seen.clone());
                        last = seen;
                    }
                }
                let now = Instant::now();
                if now >= deadline {
                    break;
                }
                next = match signalled_at {
                    Some(at) if now < at + CONFIRM_WINDOW => now + CONFIRM_POLL,
                    // From when this poll was due, not from when its round answered (a round
                    // that gathered past a grid instant must not skip a whole cell).
                    _ if signal.is_some() => on_grid((due + fallback.delay_before(attempts)).max(now), FALLBACK_GRID),
                    _ => now + self.delay_before(attempts),
                }
                // The last poll happens at the deadline, not after it.
                .min(deadline);
            }
            match signal.as_mut() {
                Some(look) if signalled_at.is_none() => {
                    if look().await {
                        signalled_at = Some(Instant::now());
                        next = Instant::now();
                        continue;
                    }
                    let now = Instant::now();
                    if now >= deadline {
                        break;
                    }
                    tokio::time::sleep_until(on_grid(now + LOCAL_LOOK / 2, LOCAL_LOOK).min(next)).await;
                }
                _ => tokio::time::sleep_until(next).await,
            }
        }
        let cut = crate::deadline::cut_note(self.timeout, allowed);
        if last.is_empty() {
            "not seen on this host, and EC2 not asked yet".clone_into(&mut last);
        }
        Err(WaitError::TimedOut { last, attempts, elapsed: start.elapsed(), cut })
    }
}

/// Retries of throttled and transient EC2 calls.
#[derive(Debug)]
pub struct RetryPolicy {
    /// Retries after the first try (`ebs.maxRetries`).
    pub max_retries: u32,
    /// The backoff cap before jitter for retry 1; doubled for each later one.
    pub base: Duration,
    /// The largest backoff cap.
    pub max_delay: Duration,
    /// No retry starts after this much time since the first try (nor after the request's
    /// deadline).
    pub budget: Duration,
    /// Jitter source.
    rng: Jitter,
}

impl RetryPolicy {
    /// `max_retries` retries, 250 ms base, 10 s cap, 45 s budget.
    pub fn new(max_retries: u32) -> Self {
        Self {
            max_retries,
            base: Duration::from_millis(250),
            max_delay: Duration::from_secs(10),
            budget: Duration::from_secs(45),
            rng: Jitter::new(),
        }
    }

    /// The backoff cap of retry `n` (1-based), before jitter.
    pub fn cap(&self, n: u32) -> Duration {
        let factor = 1u32.checked_shl(n.saturating_sub(1)).unwrap_or(u32::MAX);
        self.base.checked_mul(factor).unwrap_or(self.max_delay).min(self.max_delay)
    }

    /// Runs `f`, retrying retryable errors ([`CloudError::is_retryable`]).
    ///
    /// # Errors
    /// The last error: a non-retryable one at once, a retryable one when retries or the budget
    /// are used up.
    pub async fn run<T, F, Fut>(&self, op: &str, f: F) -> Result<T, CloudError>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, CloudError>>,
    {
        self.run_retrying(op, CloudError::is_retryable, f).await
    }

    /// Runs a call that must not be sent twice (it has no idempotency token, such as
    /// CreateSnapshot): retries only throttling, which EC2 refused before doing anything. A
    /// transient failure may have been done, so it is returned as it is.
    ///
    /// # Errors
    /// As [`RetryPolicy::run`].
    pub async fn run_once<T, F, Fut>(&self, op: &str, f: F) -> Result<T, CloudError>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, CloudError>>,
    {
        self.run_retrying(op, |e| e.kind == CloudErrorKind::Throttled, f).await
    }

    async fn run_retrying<T, F, Fut>(
        &self,
        op: &str,
        retryable: impl Fn(&CloudError) -> bool,
        mut f: F,
    ) -> Result<T, CloudError>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, CloudError>>,
    {
        let start = Instant::now();
        let budget = crate::deadline::cap(self.budget);
        let mut retry = 0;
        loop {
            let call_start = Instant::now();
            let result = f().await;
            let outcome = match &result {
                Ok(_) => crate::metrics::Ec2Outcome::Ok,
                Err(e) if e.kind == CloudErrorKind::Throttled => crate::metrics::Ec2Outcome::Throttled,
                Err(_) => crate::metrics::Ec2Outcome::Error,
            };
            crate::metrics::ec2_call_timed(op, outcome, call_start.elapsed());
            match result {
                Ok(v) => return Ok(v),
                Err(e) if retryable(&e) && retry < self.max_retries => {
                    retry += 1;
                    let sleep = self.rng.below(self.cap(retry));
                    if start.elapsed() + sleep > budget {
                        tracing::warn!(op, error = %e, retries = retry - 1, "EC2 call still failing at the end of its time budget");
                        return Err(e);
                    }
                    crate::progress::seen(format!("EC2 {op}: {e}; retry {retry} of {}", self.max_retries));
                    tracing::debug!(op, error = %e, retry, sleep_ms = u64::try_from(sleep.as_millis()).unwrap_or(u64::MAX), "retrying EC2 call");
                    tokio::time::sleep(sleep).await;
                }
                Err(e) => return Err(e),
            }
        }
    }
}

/// A small xorshift generator for backoff jitter (not for anything secret).
#[derive(Debug)]
pub struct Jitter(Mutex<u64>);

impl Jitter {
    /// Seeded from the process's random hash keys.
    pub fn new() -> Self {
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u64(0x9e37_79b9_7f4a_7c15);
        Self(Mutex::new(h.finish() | 1))
    }

    fn next(&self) -> u64 {
        let mut s = self.0.lock().expect("jitter lock poisoned");
        let mut x = *s;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        *s = x;
        x
    }

    /// A uniformly random duration in `[0, max]` (full jitter).
    pub fn below(&self, max: Duration) -> Duration {
        let nanos = u64::try_from(max.as_nanos()).unwrap_or(u64::MAX);
        if nanos == 0 {
            return Duration::ZERO;
        }
        Duration::from_nanos(self.next() % (nanos.saturating_add(1)))
    }
}

impl Default for Jitter {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::ebs::api::CloudErrorKind;
    use std::sync::atomic::{AtomicU32, Ordering};

    fn wait(initial_ms: u64, timeout_s: u64) -> StatusWait {
        StatusWait {
            initial_delay: Duration::from_millis(initial_ms),
            max_delay: MAX_POLL_DELAY,
            timeout: Duration::from_secs(timeout_s),
        }
    }

    #[test]
    fn delays_double_and_are_capped() {
        let w = wait(100, 120);
        let d: Vec<u128> = (0..10).map(|n| w.delay_before(n).as_millis()).collect();
        assert_eq!(d, [0, 100, 200, 400, 800, 1600, 3200, 5000, 5000, 5000]);
        assert_eq!(w.delay_before(60), MAX_POLL_DELAY);
    }

    #[tokio::test(start_paused = true)]
    async fn ready_after_n_polls_takes_the_sum_of_the_delays() {
        let polls = AtomicU32::new(0);
        let start = Instant::now();
        let got = wait(100, 120)
            .run(|| async {
                let n = polls.fetch_add(1, Ordering::SeqCst) + 1;
                Ok::<_, ()>(if n == 4 { Poll::Ready(n) } else { Poll::Pending(format!("poll {n}")) })
            })
            .await
            .unwrap();
        assert_eq!(got, 4);
        assert_eq!(start.elapsed(), Duration::from_millis(100 + 200 + 400));
    }

    #[tokio::test(start_paused = true)]
    async fn a_slow_change_is_waited_for_by_time_not_by_a_count_of_polls() {
        // REX-Ray's 10 polls from 100 ms gave up after 40.5 s; a 55 s attach must succeed.
        let start = Instant::now();
        let got = wait(100, 120)
            .run(|| async {
                let t = start.elapsed();
                Ok::<_, ()>(if t >= Duration::from_secs(55) {
                    Poll::Ready(t)
                } else {
                    Poll::Pending("attaching".into())
                })
            })
            .await
            .unwrap();
        // Polls 5 s apart by then: …, 51.3 s, 56.3 s.
        assert!(got >= Duration::from_secs(55) && got <= Duration::from_secs(60), "{got:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn time_runs_out() {
        let start = Instant::now();
        let err = wait(100, 10).run(|| async { Ok::<Poll<()>, ()>(Poll::Pending("attaching".into())) }).await;
        match err {
            Err(WaitError::TimedOut { last, elapsed, .. }) => {
                assert_eq!(last, "attaching");
                assert_eq!(elapsed, Duration::from_secs(10));
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(start.elapsed(), Duration::from_secs(10));
    }

    #[tokio::test(start_paused = true)]
    async fn a_local_signal_gets_the_change_confirmed_at_once() {
        // The change happens at 2.03 s; the doubling schedule alone would notice at 3.1 s.
        let start = Instant::now();
        let at = Duration::from_millis(2030);
        let polls = AtomicU32::new(0);
        let got = wait(100, 120)
            .run_signalled(
                || async {
                    polls.fetch_add(1, Ordering::SeqCst);
                    Ok::<_, ()>(if start.elapsed() >= at {
                        Poll::Ready(start.elapsed())
                    } else {
                        Poll::Pending("attaching".into())
                    })
                },
                Some(|| async { start.elapsed() >= at }),
            )
            .await
            .unwrap();
        assert!(got >= at && got <= at + LOCAL_LOOK, "{got:?}");
        // The fallback polls at about 1 and 2 s (on the grid), then the confirmation; the
        // doubling schedule alone would have polled at 0, 0.1, 0.3, 0.7 and 1.5 s.
        let polls = polls.load(Ordering::SeqCst);
        assert!((2..=3).contains(&polls), "{polls} polls");
    }

    #[tokio::test(start_paused = true)]
    async fn a_signal_seen_at_the_start_is_confirmed_without_waiting() {
        let start = Instant::now();
        let polls = AtomicU32::new(0);
        wait(100, 120)
            .run_signalled(
                || async {
                    polls.fetch_add(1, Ordering::SeqCst);
                    Ok::<_, ()>(Poll::Ready(()))
                },
                Some(|| async { true }),
            )
            .await
            .unwrap();
        assert!(start.elapsed() < Duration::from_millis(1), "{:?}", start.elapsed());
        assert_eq!(polls.load(Ordering::SeqCst), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn waits_begun_apart_look_and_poll_at_the_same_instants() {
        // Two waits begun 37 ms apart, within one cell of the fallback grid; both changes
        // happen at 2.003 s. Their fallback polls and their confirmations fall on the shared
        // grid, so a batching watcher makes one call of each.
        let origin = on_grid(Instant::now(), FALLBACK_GRID);
        let change = origin + Duration::from_millis(2003);
        let one = |delay: u64| async move {
            tokio::time::sleep_until(origin + Duration::from_millis(delay)).await;
            let polled = Mutex::new(Vec::new());
            wait(100, 120)
                .run_signalled(
                    || async {
                        polled.lock().unwrap().push(Instant::now());
                        Ok::<_, ()>(if Instant::now() >= change {
                            Poll::Ready(())
                        } else {
                            Poll::Pending("attaching".into())
                        })
                    },
                    Some(|| async { Instant::now() >= change }),
                )
                .await
                .unwrap();
            polled.into_inner().unwrap()
        };
        let (a, b) = tokio::join!(one(10), one(47));
        assert_eq!(a, b, "poll instants of the two waits");
        assert!(*a.last().unwrap() <= change + LOCAL_LOOK, "{:?}", *a.last().unwrap() - origin);
    }

    #[tokio::test(start_paused = true)]
    async fn a_slow_fallback_poll_does_not_push_the_next_one_a_grid_cell_later() {
        // Each poll's round takes 5 ms to gather and answer; the fallback polls stay 1 s, then
        // 2 s apart, on the grid.
        let polled = Mutex::new(Vec::new());
        wait(100, 120)
            .run_signalled(
                || async {
                    let n = {
                        let mut at = polled.lock().unwrap();
                        at.push(Instant::now());
                        at.len()
                    };
                    tokio::time::sleep(Duration::from_millis(5)).await;
                    Ok::<_, ()>(if n == 3 { Poll::Ready(()) } else { Poll::Pending("attaching".into()) })
                },
                Some(|| async { false }),
            )
            .await
            .unwrap();
        let at = polled.into_inner().unwrap();
        // (tokio's timer fires on whole milliseconds, so "on the grid" is within one.)
        let near = |d: Duration, want: Duration| d.abs_diff(want) <= Duration::from_millis(1);
        assert!(near(at[1] - at[0], Duration::from_secs(1)) && near(at[2] - at[1], Duration::from_secs(2)), "{at:?}");
    }

    #[test]
    fn grid_instants_are_shared_and_never_early() {
        let t = Instant::now();
        let step = Duration::from_millis(250);
        let a = on_grid(t, step);
        assert!(a >= t && a < t + step);
        assert_eq!(on_grid(a, step), a);
        assert_eq!(on_grid(a + Duration::from_nanos(1), step), a + step);
        assert_eq!(on_grid(a + step - Duration::from_millis(3), step), on_grid(a + Duration::from_millis(7), step));
    }

    #[tokio::test(start_paused = true)]
    async fn after_the_signal_ec2_is_asked_often_until_it_agrees() {
        // The host sees the device at 1 s; EC2 says `attached` only at 1.2 s.
        let start = Instant::now();
        let got = wait(1000, 120)
            .run_signalled(
                || async {
                    let t = start.elapsed();
                    Ok::<_, ()>(if t >= Duration::from_millis(1200) {
                        Poll::Ready(t)
                    } else {
                        Poll::Pending("attaching".into())
                    })
                },
                Some(|| async { start.elapsed() >= Duration::from_secs(1) }),
            )
            .await
            .unwrap();
        assert!(got <= Duration::from_millis(1200) + CONFIRM_POLL, "{got:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn the_deadline_cuts_the_schedule() {
        // Polls from 1 s take 1+2+4+5+5+… s; the 10 s deadline stops them.
        let start = Instant::now();
        let err = wait(1000, 10).run(|| async { Ok::<Poll<()>, ()>(Poll::Pending("x".into())) }).await;
        let Err(WaitError::TimedOut { attempts, .. }) = err else { panic!() };
        assert_eq!(start.elapsed(), Duration::from_secs(10));
        // Polls at 0, 1, 3, 7 and at the deadline (10).
        assert_eq!(attempts, 5);
    }

    #[tokio::test(start_paused = true)]
    async fn a_failing_poll_ends_the_wait() {
        let err = wait(100, 10).run(|| async { Err::<Poll<()>, _>("boom") }).await;
        assert!(matches!(err, Err(WaitError::Failed("boom"))));
    }

    fn throttled() -> CloudError {
        CloudError::from_code("RequestLimitExceeded", "Request limit exceeded.", Some(503))
    }

    #[tokio::test(start_paused = true)]
    async fn throttling_is_retried_with_jittered_backoff() {
        let policy = RetryPolicy::new(10);
        let calls = AtomicU32::new(0);
        let start = Instant::now();
        let v = policy
            .run("DescribeVolumes", || async {
                if calls.fetch_add(1, Ordering::SeqCst) < 4 {
                    Err(throttled())
                } else {
                    Ok(7)
                }
            })
            .await
            .unwrap();
        assert_eq!((v, calls.load(Ordering::SeqCst)), (7, 5));
        // At most the sum of the caps: 250 + 500 + 1000 + 2000 ms.
        assert!(start.elapsed() <= Duration::from_millis(3750), "{:?}", start.elapsed());
    }

    #[tokio::test(start_paused = true)]
    async fn every_attempt_is_counted_in_the_metrics_by_action_and_outcome() {
        let policy = RetryPolicy::new(10);
        let calls = AtomicU32::new(0);
        policy
            .run("MetricsProbeAction", || async {
                match calls.fetch_add(1, Ordering::SeqCst) {
                    0 | 1 => Err(throttled()),
                    _ => Ok(()),
                }
            })
            .await
            .unwrap();
        policy
            .run("MetricsProbeAction", || async {
                Err::<(), _>(CloudError::from_code("InvalidVolume.NotFound", "gone", Some(400)))
            })
            .await
            .unwrap_err();
        let text = crate::metrics::render();
        let count = |outcome: &str| {
            let prefix = format!("rexray_ec2_api_calls_total{{action=\"MetricsProbeAction\",outcome=\"{outcome}\"}} ");
            text.lines().find_map(|l| l.strip_prefix(prefix.as_str())).map(str::to_owned)
        };
        assert_eq!(count("throttled").as_deref(), Some("2"), "{text}");
        assert_eq!(count("ok").as_deref(), Some("1"), "{text}");
        assert_eq!(count("error").as_deref(), Some("1"), "{text}");
    }

    #[tokio::test(start_paused = true)]
    async fn retries_and_budget_are_bounded() {
        let policy = RetryPolicy::new(3);
        let calls = AtomicU32::new(0);
        let err = policy
            .run("AttachVolume", || async {
                calls.fetch_add(1, Ordering::SeqCst);
                Err::<(), _>(throttled())
            })
            .await
            .unwrap_err();
        assert_eq!(err.kind, CloudErrorKind::Throttled);
        assert_eq!(calls.load(Ordering::SeqCst), 4);

        // A huge retry count still stops within the budget (plus at most one cap).
        let policy = RetryPolicy::new(1_000);
        let start = Instant::now();
        policy.run("x", || async { Err::<(), _>(throttled()) }).await.unwrap_err();
        assert!(start.elapsed() <= policy.budget, "{:?}", start.elapsed());
    }

    #[tokio::test(start_paused = true)]
    async fn other_errors_are_not_retried() {
        let policy = RetryPolicy::new(10);
        let calls = AtomicU32::new(0);
        let err = policy
            .run("DeleteVolume", || async {
                calls.fetch_add(1, Ordering::SeqCst);
                Err::<(), _>(CloudError::from_code("VolumeInUse", "in use", Some(400)))
            })
            .await
            .unwrap_err();
        assert_eq!(err.kind, CloudErrorKind::VolumeInUse);
        assert_eq!(calls.load(Ordering::SeqCst), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn calls_without_a_token_retry_throttling_but_not_transient_failures() {
        let policy = RetryPolicy::new(10);
        let calls = AtomicU32::new(0);
        let v = policy
            .run_once("CreateSnapshot", || async {
                if calls.fetch_add(1, Ordering::SeqCst) < 2 {
                    Err(throttled())
                } else {
                    Ok(1)
                }
            })
            .await
            .unwrap();
        assert_eq!((v, calls.load(Ordering::SeqCst)), (1, 3));
        calls.store(0, Ordering::SeqCst);
        let err = policy
            .run_once("CreateSnapshot", || async {
                calls.fetch_add(1, Ordering::SeqCst);
                Err::<(), _>(CloudError::transient("connection reset"))
            })
            .await
            .unwrap_err();
        assert_eq!((err.kind, calls.load(Ordering::SeqCst)), (CloudErrorKind::Transient, 1));
    }

    #[test]
    fn jitter_stays_in_range() {
        let j = Jitter::new();
        let max = Duration::from_millis(500);
        let samples: Vec<Duration> = (0..1000).map(|_| j.below(max)).collect();
        assert!(samples.iter().all(|d| *d <= max));
        assert!(samples.iter().any(|d| *d < max / 4) && samples.iter().any(|d| *d > max * 3 / 4));
        assert_eq!(j.below(Duration::ZERO), Duration::ZERO);
    }
}
