//! Crash points: where a test may kill the daemon in the middle of an operation.
//!
//! Each step of a multi-step operation (create, mount, unmount, remove, and the backend steps
//! inside them) calls [`hit`] (or [`Token::hit`] from a blocking thread). In builds with the
//! `testing` feature a [`Plan`] can be set — by the environment variable `REXRAY_CRASH_AT=OP:N`
//! for a daemon, or per service in in-process tests — and the N-th point reached while an `OP`
//! operation runs ends the process (`abort`, as `kill -9` would) or, in-process, panics the
//! operation's task, so that a test can restart from exactly that state and check that the
//! daemon finishes or undoes the operation. Without the feature every function here is empty.
//!
//! A leaf module: it depends on nothing in the crate.

/// Where and how to crash.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    /// The operation (`create`, `mount`, `unmount`, `remove`).
    pub op: String,
    /// Crash at the N-th point reached during that operation (1-based), counted over the life
    /// of the service.
    pub n: u32,
    /// Abort the process (a real crash) or panic the operation's task (in-process tests).
    pub abort: bool,
}

impl Plan {
    /// `OP:N` as `REXRAY_CRASH_AT` spells it.
    pub fn parse(text: &str) -> Option<Plan> {
        let (op, n) = text.split_once(':')?;
        Some(Plan { op: op.trim().to_owned(), n: n.trim().parse().ok().filter(|n| *n > 0)?, abort: true })
    }
}

#[cfg(feature = "testing")]
mod active {
    use std::collections::BTreeMap;
    use std::sync::atomic::{AtomicU32, Ordering};
    use std::sync::{Arc, Mutex};

    use super::Plan;

    /// The crash plan of one service and its counts of points reached per operation.
    #[derive(Debug, Default)]
    pub struct Counter {
        plan: Option<Plan>,
        counts: Mutex<BTreeMap<&'static str, Arc<AtomicU32>>>,
    }

    impl Counter {
        /// Counting towards `plan` (none: count only).
        pub fn new(plan: Option<Plan>) -> Self {
            Self { plan, counts: Mutex::default() }
        }

        /// From `REXRAY_CRASH_AT`.
        pub fn from_env() -> Self {
            Self::new(std::env::var("REXRAY_CRASH_AT").ok().and_then(|v| Plan::parse(&v)))
        }

        fn count(&self, op: &'static str) -> Arc<AtomicU32> {
            let mut counts = self.counts.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            Arc::clone(counts.entry(op).or_default())
        }
    }

    /// What [`super::Token`] carries: the running operation and its counter.
    #[derive(Debug, Clone)]
    pub struct Current {
        op: &'static str,
        count: Arc<AtomicU32>,
        plan: Option<Plan>,
    }

    impl Current {
        pub fn hit(&self, step: &'static str) {
            let n = self.count.fetch_add(1, Ordering::SeqCst) + 1;
            let Some(plan) = &self.plan else { return };
            if plan.op == self.op && plan.n == n {
                eprintln!("crash point {}:{n} ({step})", self.op);
                if plan.abort {
                    std::process::abort();
                }
                panic!("crash point {}:{n} ({step})", self.op);
            }
        }
    }

    tokio::task_local! {
        pub static CURRENT: Current;
    }

    pub fn current(counter: &Counter, op: &'static str) -> Current {
        Current { op, count: counter.count(op), plan: counter.plan.clone() }
    }
}

/// A service's crash plan and counts (empty without the `testing` feature).
#[derive(Debug, Default)]
pub struct Counter {
    #[cfg(feature = "testing")]
    inner: active::Counter,
}

impl Counter {
    /// A counter with the plan from `REXRAY_CRASH_AT` (builds with the `testing` feature).
    pub fn from_env() -> Self {
        Self {
            #[cfg(feature = "testing")]
            inner: active::Counter::from_env(),
        }
    }

    /// A counter towards `plan` (in-process tests).
    #[cfg(feature = "testing")]
    pub fn with_plan(plan: Option<Plan>) -> Self {
        Self { inner: active::Counter::new(plan) }
    }
}

/// The running operation, carried into blocking threads.
#[derive(Debug, Clone)]
pub struct Token {
    #[cfg(feature = "testing")]
    current: Option<active::Current>,
}

impl Token {
    /// Marks a crash point on a blocking thread.
    #[inline]
    pub fn hit(&self, _step: &'static str) {
        #[cfg(feature = "testing")]
        if let Some(current) = &self.current {
            current.hit(_step);
        }
    }
}

/// The running operation's token (to pass into `spawn_blocking`).
#[inline]
pub fn token() -> Token {
    Token {
        #[cfg(feature = "testing")]
        current: active::CURRENT.try_with(Clone::clone).ok(),
    }
}

/// Marks a crash point of the running operation.
#[inline]
pub fn hit(step: &'static str) {
    token().hit(step);
}

/// Runs `fut` as operation `op` of the service that owns `counter`.
pub async fn scope<F: std::future::Future>(_counter: &Counter, _op: &'static str, fut: F) -> F::Output {
    #[cfg(feature = "testing")]
    {
        active::CURRENT.scope(active::current(&_counter.inner, _op), fut).await
    }
    #[cfg(not(feature = "testing"))]
    {
        fut.await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plans_are_parsed_from_the_environment_spelling() {
        assert_eq!(Plan::parse("mount:3"), Some(Plan { op: "mount".into(), n: 3, abort: true }));
        assert_eq!(Plan::parse("mount:0"), None);
        assert_eq!(Plan::parse("mount"), None);
        assert_eq!(Plan::parse("mount:x"), None);
    }

    #[cfg(feature = "testing")]
    #[tokio::test]
    async fn the_nth_point_of_the_planned_operation_panics() {
        let counter = Counter::with_plan(Some(Plan { op: "mount".into(), n: 2, abort: false }));
        scope(&counter, "create", async {
            hit("a");
            hit("b");
        })
        .await;
        let task = tokio::spawn(async move {
            scope(&counter, "mount", async {
                hit("first");
                let token = token();
                tokio::task::spawn_blocking(move || token.hit("second")).await.unwrap();
            })
            .await;
        });
        let err = task.await.unwrap_err();
        assert!(err.is_panic());
    }
}
