//! Batched volume-state polls: concurrent waits (attaches, detaches, new volumes) share one
//! DescribeVolumes per round with all their volume IDs, so 32 volumes moving at once cost about
//! as many EC2 calls as one.
//!
//! A poll joins the pending round; the first poll of an idle watcher starts a round task, which
//! gathers for [`GATHER`], takes up to [`MAX_IDS`] pending IDs, asks EC2 once (a `volume-id`
//! filter, which, unlike `VolumeIds`, does not fail the whole call for one deleted volume) with
//! the shared retry policy, answers every poll of the round and starts the next while polls are
//! pending. A poll waits for its answer no longer than its request's deadline.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::oneshot;

use super::api::{CloudError, Ec2Api, Volume, VolumeQuery};
use super::wait::RetryPolicy;

/// How long a round waits for other polls to join before it asks EC2.
pub const GATHER: Duration = Duration::from_millis(5);

/// The most volume IDs in one call (EC2's limit on the values of one filter).
pub const MAX_IDS: usize = 200;

/// The longest a poll waits for its round when its request has no deadline.
const ANSWER_LIMIT: Duration = Duration::from_secs(60);

type Answer = Result<Option<Volume>, CloudError>;

/// Polls waiting for the next round, by volume ID.
#[derive(Debug, Default)]
struct Rounds {
    pending: BTreeMap<String, Vec<oneshot::Sender<Answer>>>,
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
    pub async fn describe(&self, api: &Arc<dyn Ec2Api>, retry: &Arc<RetryPolicy>, id: &str) -> Answer {
        let (tx, rx) = oneshot::channel();
        let start = {
            let mut rounds = self.rounds.lock().expect("watch poisoned");
            rounds.pending.entry(id.to_owned()).or_default().push(tx);
            !std::mem::replace(&mut rounds.running, true)
        };
        if start {
            tokio::spawn(run_rounds(Arc::clone(&self.rounds), Arc::clone(api), Arc::clone(retry)));
        }
        let limit = crate::deadline::cap(ANSWER_LIMIT);
        match tokio::time::timeout(limit, rx).await {
            Ok(Ok(answer)) => answer,
            Ok(Err(_)) => Err(CloudError::transient("the DescribeVolumes round ended without an answer")),
            Err(_) => Err(CloudError::transient(format!(
                "DescribeVolumes gave no answer within {}",
                crate::human::duration(limit)
            ))),
        }
    }
}

/// Runs rounds while polls are pending.
async fn run_rounds(rounds: Arc<Mutex<Rounds>>, api: Arc<dyn Ec2Api>, retry: Arc<RetryPolicy>) {
    loop {
        tokio::time::sleep(GATHER).await;
        let batch: Vec<(String, Vec<oneshot::Sender<Answer>>)> = {
            let mut r = rounds.lock().expect("watch poisoned");
            if r.pending.is_empty() {
                r.running = false;
                return;
            }
            std::iter::from_fn(|| r.pending.pop_first()).take(MAX_IDS).collect()
        };
        let ids: Vec<String> = batch.iter().map(|(id, _)| id.clone()).collect();
        crate::metrics::ec2_state_round(batch.iter().map(|(_, w)| w.len()).sum());
        let query = VolumeQuery::filtered(vec![("volume-id".to_owned(), ids)]);
        let result = retry.run("DescribeVolumes", || api.describe_volumes(&query)).await;
        for (id, waiters) in batch {
            let answer: Answer = match &result {
                Ok(page) => Ok(page.volumes.iter().find(|v| v.id == id).cloned()),
                Err(e) => Err(e.clone()),
            };
            for tx in waiters {
                let _ = tx.send(answer.clone());
            }
        }
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
