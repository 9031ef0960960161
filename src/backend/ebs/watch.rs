//! Batched volume look-ups: concurrent waits (attaches, detaches, new volumes) and by-name
//! look-ups (every Mount, Unmount, Create and Remove begins with one) share one DescribeVolumes
//! per round and kind, so 32 volumes moving at once cost about as many EC2 calls as one.
//!
//! A look-up joins the pending round; the first of an idle watcher starts a round task, which
//! gathers for [`GATHER`] (and on, while more look-ups keep arriving, up to [`GATHER_MAX`], so a
//! burst of Mounts shares one round even when the bursts' own steps spread it out), takes up
//! to [`MAX_IDS`] pending keys, asks EC2 once per kind with a
//! filter (`volume-id`, which, unlike `VolumeIds`, does not fail the whole call for one deleted
//! volume; `tag:Name`, every page) under the shared retry policy, answers every look-up of the
//! round and starts the next while look-ups are pending. While a burst is under way (the last
//! round answered more than one look-up), the next round starts no sooner than [`BURST_GAP`]
//! after it, so the burst's stragglers (attachments completing tens of milliseconds apart) share
//! a few rounds rather than costing one each; a lone look-up is asked at once. A look-up waits
//! for its answer no longer than its request's deadline.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::oneshot;

use super::api::{CloudError, Ec2Api, Instance, Volume, VolumeQuery};
use super::naming::filter_literal;
use super::wait::RetryPolicy;

/// How long a round waits for other polls to join before it asks EC2: it asks once no new one
/// joined for this long.
pub const GATHER: Duration = Duration::from_millis(2);

/// The longest a round gathers while look-ups keep joining.
pub const GATHER_MAX: Duration = Duration::from_millis(20);

/// The least time between the starts of two rounds while a burst is under way.
pub const BURST_GAP: Duration = Duration::from_millis(100);

/// The most keys in one round (EC2's limit on the values of one filter).
pub const MAX_IDS: usize = 200;

/// The longest a poll waits for its round when its request has no deadline.
const ANSWER_LIMIT: Duration = Duration::from_secs(60);

type Answer = Result<Vec<Volume>, CloudError>;

/// What a look-up asks for.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
enum Key {
    /// The volume with this ID.
    Id(String),
    /// The volumes whose `Name` tag is this (exactly).
    Name(String),
}

/// Look-ups waiting for the next round.
#[derive(Debug, Default)]
struct Rounds {
    pending: BTreeMap<Key, Vec<oneshot::Sender<Answer>>>,
    /// Look-ups asked so far (to see whether more joined while a round gathered).
    asked: u64,
    /// Whether a round task runs.
    running: bool,
}

/// The batching watcher of one EC2 client; see the module documentation.
#[derive(Debug, Clone, Default)]
pub struct VolumeWatch {
    rounds: Arc<Mutex<Rounds>>,
}

impl VolumeWatch {
    /// Volume `id` as EC2 describes it in the next round (`None`: EC2 does not know it).
    ///
    /// # Errors
    /// The round's EC2 error (after the retry policy), or a transient error when the round did
    /// not answer within the request's deadline.
    pub async fn describe(
        &self,
        api: &Arc<dyn Ec2Api>,
        retry: &Arc<RetryPolicy>,
        id: &str,
    ) -> Result<Option<Volume>, CloudError> {
        Ok(self.ask(api, retry, Key::Id(id.to_owned())).await?.into_iter().next())
    }

    /// The volumes whose `Name` tag is `name_tag`, as EC2 describes them in the next round.
    ///
    /// # Errors
    /// As [`VolumeWatch::describe`].
    pub async fn named(
        &self,
        api: &Arc<dyn Ec2Api>,
        retry: &Arc<RetryPolicy>,
        name_tag: &str,
    ) -> Result<Vec<Volume>, CloudError> {
        self.ask(api, retry, Key::Name(name_tag.to_owned())).await
    }

    async fn ask(&self, api: &Arc<dyn Ec2Api>, retry: &Arc<RetryPolicy>, key: Key) -> Answer {
        let (tx, rx) = oneshot::channel();
        let start = {
            let mut rounds = self.rounds.lock().expect("watch poisoned");
            rounds.pending.entry(key).or_default().push(tx);
            rounds.asked += 1;
            !std::mem::replace(&mut rounds.running, true)
        };
        if start {
            tokio::spawn(run_rounds(Arc::clone(&self.rounds), Arc::clone(api), Arc::clone(retry)));
        }
        awaited("DescribeVolumes", rx).await
    }
}

/// The answer a shared call sends to `rx`, waited for at most [`ANSWER_LIMIT`] (cut to the
/// request's deadline).
async fn awaited<T>(call: &str, rx: oneshot::Receiver<Result<T, CloudError>>) -> Result<T, CloudError> {
    let limit = crate::deadline::cap(ANSWER_LIMIT);
    match tokio::time::timeout(limit, rx).await {
        Ok(Ok(answer)) => answer,
        Ok(Err(_)) => Err(CloudError::transient(format!("the shared {call} ended without an answer"))),
        Err(_) => Err(CloudError::transient(format!("{call} gave no answer within {}", crate::human::duration(limit)))),
    }
}

/// Waits until no look-up joined for [`GATHER`], or for [`GATHER_MAX`] in all.
async fn gather(rounds: &Mutex<Rounds>) {
    let start = tokio::time::Instant::now();
    let asked = || rounds.lock().expect("watch poisoned").asked;
    let mut seen = asked();
    loop {
        tokio::time::sleep(GATHER).await;
        let now = asked();
        if now == seen || start.elapsed() + GATHER > GATHER_MAX {
            return;
        }
        seen = now;
    }
}

/// Runs rounds while look-ups are pending.
async fn run_rounds(rounds: Arc<Mutex<Rounds>>, api: Arc<dyn Ec2Api>, retry: Arc<RetryPolicy>) {
    // When the last round began, if it answered more than one look-up.
    let mut burst: Option<tokio::time::Instant> = None;
    loop {
        if let Some(began) = burst.take() {
            tokio::time::sleep_until(began + BURST_GAP).await;
        }
        gather(&rounds).await;
        let batch: Vec<(Key, Vec<oneshot::Sender<Answer>>)> = {
            let mut r = rounds.lock().expect("watch poisoned");
            if r.pending.is_empty() {
                r.running = false;
                return;
            }
            std::iter::from_fn(|| r.pending.pop_first()).take(MAX_IDS).collect()
        };
        if batch.iter().map(|(_, waiters)| waiters.len()).sum::<usize>() > 1 {
            burst = Some(tokio::time::Instant::now());
        }
        let (by_id, by_name): (Vec<_>, Vec<_>) = batch.into_iter().partition(|(key, _)| matches!(key, Key::Id(_)));
        if !by_id.is_empty() {
            crate::metrics::ec2_state_round(by_id.iter().map(|(_, w)| w.len()).sum());
            let ids = by_id.iter().filter_map(|(k, _)| if let Key::Id(id) = k { Some(id.clone()) } else { None });
            let query = VolumeQuery::filtered(vec![("volume-id".to_owned(), ids.collect())]);
            let result = retry.run("DescribeVolumes", || api.describe_volumes(&query)).await.map(|page| page.volumes);
            answer(by_id, &result, |key, v| matches!(key, Key::Id(id) if *id == v.id));
        }
        if !by_name.is_empty() {
            let tags =
                by_name.iter().filter_map(|(k, _)| if let Key::Name(n) = k { Some(filter_literal(n)) } else { None });
            let result =
                every_page(&api, &retry, VolumeQuery::filtered(vec![("tag:Name".to_owned(), tags.collect())])).await;
            answer(by_name, &result, |key, v| matches!(key, Key::Name(n) if v.name_tag() == Some(n.as_str())));
        }
    }
}

/// Sends each look-up of `batch` the volumes of `result` that `matches` its key (or the error).
fn answer(
    batch: Vec<(Key, Vec<oneshot::Sender<Answer>>)>,
    result: &Result<Vec<Volume>, CloudError>,
    matches: impl Fn(&Key, &Volume) -> bool,
) {
    for (key, waiters) in batch {
        let answer: Answer = match result {
            Ok(volumes) => Ok(volumes.iter().filter(|v| matches(&key, v)).cloned().collect()),
            Err(e) => Err(e.clone()),
        };
        for tx in waiters {
            let _ = tx.send(answer.clone());
        }
    }
}

/// Every page of `query`.
async fn every_page(
    api: &Arc<dyn Ec2Api>,
    retry: &Arc<RetryPolicy>,
    mut query: VolumeQuery,
) -> Result<Vec<Volume>, CloudError> {
    let mut all = Vec::new();
    loop {
        let page = retry.run("DescribeVolumes", || api.describe_volumes(&query)).await?;
        all.extend(page.volumes);
        match page.next_token {
            Some(token) => query.next_token = Some(token),
            None => return Ok(all),
        }
    }
}

/// Who waits for an instance's description.
type InstanceWaiter = oneshot::Sender<Result<Instance, CloudError>>;

/// DescribeInstances of the same instance asked for at once (concurrent attaches to this host)
/// share one call: those that ask while one is gathering get its answer, which EC2 gave after
/// they asked. The last answer per instance is kept, with this daemon's own attachments and
/// detachments since applied to its device names ([`Self::recent`]).
#[derive(Debug, Clone, Default)]
pub struct InstanceWatch {
    pending: Arc<Mutex<BTreeMap<String, Vec<InstanceWaiter>>>>,
    known: Arc<Mutex<BTreeMap<String, (Instance, tokio::time::Instant)>>>,
}

impl InstanceWatch {
    /// What EC2 said of instance `id` at most `max_age` ago, with the device names this daemon
    /// attached or detached since ([`Self::note_device`]) applied.
    pub fn recent(&self, id: &str, max_age: Duration) -> Option<Instance> {
        let known = self.known.lock().expect("watch poisoned");
        let (instance, at) = known.get(id)?;
        (at.elapsed() <= max_age).then(|| instance.clone())
    }

    /// Records that this daemon attached (`attached`) or detached a volume as `device` on
    /// instance `id`.
    pub fn note_device(&self, id: &str, device: &str, attached: bool) {
        if device.is_empty() {
            return;
        }
        if let Some((instance, _)) = self.known.lock().expect("watch poisoned").get_mut(id) {
            instance.device_names.retain(|d| d != device);
            if attached {
                instance.device_names.push(device.to_owned());
            }
        }
    }

    /// Instance `id` as EC2 describes it, shared with the concurrent asks for it.
    ///
    /// # Errors
    /// EC2's error (after the retry policy), or a transient error past the request's deadline.
    pub async fn describe(
        &self,
        api: &Arc<dyn Ec2Api>,
        retry: &Arc<RetryPolicy>,
        id: &str,
    ) -> Result<Instance, CloudError> {
        let (tx, rx) = oneshot::channel();
        let first = {
            let mut pending = self.pending.lock().expect("watch poisoned");
            let waiters = pending.entry(id.to_owned()).or_default();
            waiters.push(tx);
            waiters.len() == 1
        };
        if first {
            let (pending, known, api, retry, id) =
                (Arc::clone(&self.pending), Arc::clone(&self.known), Arc::clone(api), Arc::clone(retry), id.to_owned());
            tokio::spawn(async move {
                tokio::time::sleep(GATHER).await;
                let waiters = pending.lock().expect("watch poisoned").remove(&id).unwrap_or_default();
                let asked = tokio::time::Instant::now();
                let result = retry.run("DescribeInstances", || api.describe_instance(&id)).await;
                if let Ok(instance) = &result {
                    known.lock().expect("watch poisoned").insert(id.clone(), (instance.clone(), asked));
                }
                for tx in waiters {
                    let _ = tx.send(result.clone());
                }
            });
        }
        awaited("DescribeInstances", rx).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::ebs::fake::{FakeEc2, Op};

    #[tokio::test(start_paused = true)]
    async fn concurrent_polls_share_one_call() {
        let fake = Arc::new(FakeEc2::new());
        let ids: Vec<String> = (0..32).map(|_| fake.add_volume("us-east-1a", 1, &[])).collect();
        let api: Arc<dyn Ec2Api> = fake.clone();
        let retry = Arc::new(RetryPolicy::new(3));
        let watch = VolumeWatch::default();
        let mut polls = tokio::task::JoinSet::new();
        for id in ids.clone() {
            let (watch, api, retry) = (watch.clone(), Arc::clone(&api), Arc::clone(&retry));
            polls.spawn(async move { (watch.describe(&api, &retry, &id).await, id) });
        }
        while let Some(joined) = polls.join_next().await {
            let (answer, id) = joined.unwrap();
            assert_eq!(answer.unwrap().unwrap().id, id);
        }
        assert_eq!(fake.count(Op::DescribeVolumes), 1);
        // An unknown volume is None, not an error for the whole round.
        let (known, unknown) =
            tokio::join!(watch.describe(&api, &retry, &ids[0]), watch.describe(&api, &retry, "vol-0000000000000dead"));
        assert!(known.unwrap().is_some());
        assert!(unknown.unwrap().is_none());
        assert_eq!(fake.count(Op::DescribeVolumes), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn the_stragglers_of_a_burst_share_rounds_and_a_lone_look_up_is_asked_at_once() {
        let fake = Arc::new(FakeEc2::new());
        let ids: Vec<String> = (0..24).map(|_| fake.add_volume("us-east-1a", 1, &[])).collect();
        let api: Arc<dyn Ec2Api> = fake.clone();
        let retry = Arc::new(RetryPolicy::new(3));
        let watch = VolumeWatch::default();
        let ask = |id: String, at: tokio::time::Instant| {
            let (watch, api, retry) = (watch.clone(), Arc::clone(&api), Arc::clone(&retry));
            async move {
                tokio::time::sleep_until(at).await;
                assert_eq!(watch.describe(&api, &retry, &id).await.unwrap().unwrap().id, id);
                at.elapsed()
            }
        };
        // A lone look-up, and a second one 10 ms later: each its own round, neither waits.
        let start = tokio::time::Instant::now();
        let (a, b) = tokio::join!(ask(ids[0].clone(), start), ask(ids[1].clone(), start + Duration::from_millis(10)));
        assert!(a <= GATHER * 2 && b <= GATHER * 2, "{a:?} {b:?}");
        assert_eq!(fake.count(Op::DescribeVolumes), 2);
        // A burst of 8 at once, then 14 stragglers 10 ms apart (attachments completing one
        // after another over 130 ms): the burst's round, then one round per gap.
        tokio::time::sleep(BURST_GAP).await;
        let start = tokio::time::Instant::now();
        let mut asks = tokio::task::JoinSet::new();
        for (i, id) in ids[2..].iter().enumerate() {
            let late = u64::try_from(i.saturating_sub(7)).unwrap() * 10;
            asks.spawn(ask(id.clone(), start + Duration::from_millis(late)));
        }
        let mut longest = Duration::ZERO;
        while let Some(waited) = asks.join_next().await {
            longest = longest.max(waited.unwrap());
        }
        assert_eq!(fake.count(Op::DescribeVolumes), 2 + 3, "rounds at 2, 102 and 202 ms");
        assert!(longest <= BURST_GAP + GATHER_MAX, "a look-up waited {longest:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn concurrent_lookups_by_name_share_one_call_and_match_exactly() {
        let fake = Arc::new(FakeEc2::new());
        for i in 0..32 {
            fake.add_volume("us-east-1a", 1, &[("Name", format!("t/v{i}").as_str())]);
        }
        fake.add_volume("us-east-1a", 1, &[("Name", "t/v0")]);
        fake.add_volume("us-east-1a", 1, &[("Name", "t/*")]);
        let api: Arc<dyn Ec2Api> = fake.clone();
        let retry = Arc::new(RetryPolicy::new(3));
        let watch = VolumeWatch::default();
        let mut lookups = tokio::task::JoinSet::new();
        for i in 0..32 {
            let (watch, api, retry) = (watch.clone(), Arc::clone(&api), Arc::clone(&retry));
            lookups.spawn(async move { (watch.named(&api, &retry, &format!("t/v{i}")).await, i) });
        }
        while let Some(joined) = lookups.join_next().await {
            let (found, i) = joined.unwrap();
            let found = found.unwrap();
            assert_eq!(found.len(), if i == 0 { 2 } else { 1 }, "t/v{i}: {found:?}");
            assert!(found.iter().all(|v| v.name_tag() == Some(format!("t/v{i}").as_str())));
        }
        assert_eq!(fake.count(Op::DescribeVolumes), 1);
        // A wildcard in a name is a literal: `t/*` is one volume, not all of them.
        let (star, polled) =
            tokio::join!(watch.named(&api, &retry, "t/*"), watch.describe(&api, &retry, "vol-0000000000000dead"));
        assert_eq!(star.unwrap().len(), 1);
        assert!(polled.unwrap().is_none());
        assert_eq!(fake.count(Op::DescribeVolumes), 3, "one call per kind in a round");
    }

    #[tokio::test(start_paused = true)]
    async fn concurrent_asks_for_one_instance_share_one_call() {
        let fake = Arc::new(FakeEc2::new());
        fake.add_instance("i-a", "us-east-1a");
        fake.add_instance("i-b", "us-east-1b");
        let api: Arc<dyn Ec2Api> = fake.clone();
        let retry = Arc::new(RetryPolicy::new(3));
        let watch = InstanceWatch::default();
        let mut asks = tokio::task::JoinSet::new();
        for i in 0..16 {
            let (watch, api, retry) = (watch.clone(), Arc::clone(&api), Arc::clone(&retry));
            let id = if i % 8 == 7 { "i-b" } else { "i-a" };
            asks.spawn(async move { (watch.describe(&api, &retry, id).await.unwrap(), id) });
        }
        while let Some(joined) = asks.join_next().await {
            let (instance, id) = joined.unwrap();
            assert_eq!(instance.id, id);
        }
        assert_eq!(fake.count(Op::DescribeInstances), 2, "one call per instance");
        watch.describe(&api, &retry, "i-a").await.unwrap();
        assert_eq!(fake.count(Op::DescribeInstances), 3, "a later ask gets a fresh answer");
    }

    #[tokio::test(start_paused = true)]
    async fn a_failed_round_fails_each_poll_of_it_and_the_next_round_runs() {
        let fake = Arc::new(FakeEc2::new());
        let id = fake.add_volume("us-east-1a", 1, &[]);
        let api: Arc<dyn Ec2Api> = fake.clone();
        let retry = Arc::new(RetryPolicy::new(0));
        let watch = VolumeWatch::default();
        fake.set_unreachable(true);
        assert!(watch.describe(&api, &retry, &id).await.is_err());
        fake.set_unreachable(false);
        assert!(watch.describe(&api, &retry, &id).await.unwrap().is_some());
    }
}
