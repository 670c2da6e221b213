//! Group commit. Concurrent commands queue here and are committed together:
//! one transaction locks every account the batch touches (in id order, so
//! committers never deadlock), applies the commands in arrival order, each
//! succeeding or failing on its own exactly as it would alone, records each
//! answer under its key, writes what changed, and commits once. Nobody is
//! answered before that commit, so a crash loses only unanswered requests.
//!
//! Accounts are spread over several committers by id: one account's commands
//! always go through one committer, in order, while batches of different
//! accounts commit side by side (nothing they write is shared).

mod commit;

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use reservoir_common::auth::TenantId;
use reservoir_common::db::Database;
use sea_orm::DatabaseConnection;
use tokio::sync::{Notify, mpsc, oneshot};

use self::commit::commit_and_answer;
use super::cache::WalletCache;
use super::{IdempotencyCheck, Reply};
use crate::domain::{AccountId, Command, OperationContext, Wallet};
use crate::error::WalletError;

/// Commands per transaction: large enough to spread a commit's fsync over
/// many requests, small enough to keep a batch's latency in milliseconds.
pub const BATCH_MAX: usize = 512;
/// Requests waiting per committer; past this, callers wait to enqueue,
/// which is the back-pressure a flood of requests meets.
const QUEUE_MAX: usize = 8_192;

/// Batches of one committer written at once: while one is written, the next
/// is read and decided. 3 and 4 measured slower on 2 cores (smaller batches,
/// each paying the statement's planning and commit); with the callers split
/// evenly between them (`Demand`), 3 measured the same as 2.
const IN_FLIGHT_MAX: usize = 2;

/// How long a batch waits for the requests of the previous one to come back.
const GATHER_WINDOW: Duration = Duration::from_millis(1);

/// One command waiting to be committed.
pub struct Job {
    pub tenant: TenantId,
    pub account: AccountId,
    pub check: IdempotencyCheck,
    pub ctx: OperationContext,
    pub command: Command,
    pub reply: oneshot::Sender<Result<Reply, WalletError>>,
}

/// The queues of the committers.
#[derive(Clone)]
pub struct Committers {
    queues: Vec<mpsc::Sender<Job>>,
}

/// What the committers share.
#[derive(Clone)]
pub struct Shared {
    pub database: Database,
    pub pool: DatabaseConnection,
    pub events_written: Arc<Notify>,
    pub cache: Arc<WalletCache>,
}

impl Committers {
    pub fn start(shared: Shared, count: usize) -> Self {
        let queues = (0..count.max(1))
            .map(|_| {
                let (sender, receiver) = mpsc::channel(QUEUE_MAX);
                tokio::spawn(run(shared.clone(), receiver));
                sender
            })
            .collect();
        Self { queues }
    }

    pub async fn submit(&self, job: Job) -> Result<(), WalletError> {
        let index = (job.account.0.as_u128() % self.queues.len() as u128) as usize;
        self.queues[index].send(job).await.map_err(|_| WalletError::Unavailable("the committer has stopped".into()))
    }
}

/// The accounts of a batch.
type Accounts = BTreeSet<(TenantId, AccountId)>;
/// The wallets of a batch, by account.
type Wallets = BTreeMap<(TenantId, AccountId), Wallet>;

async fn run(shared: Shared, mut receiver: mpsc::Receiver<Job>) {
    let mut demand = Demand::default();
    // The batches being written, their accounts and sizes: the next batch is
    // gathered and, if it shares no account with them, decided and written
    // beside them, so one batch's round trips overlap another's. One
    // account's commands still commit in arrival order: a batch sharing an
    // account waits.
    let mut in_flight: VecDeque<(tokio::task::JoinHandle<()>, Accounts, usize)> = VecDeque::new();
    while let Some(first) = receiver.recv().await {
        // A batch written and answered has its callers back in the queue.
        in_flight.retain(|(writing, _, _)| !writing.is_finished());
        let writing: usize = in_flight.iter().map(|(_, _, size)| size).sum();
        let callers = demand.callers();
        let share = Demand::share_of(callers);
        let mut jobs = vec![first];
        drain(&mut receiver, &mut jobs, share);
        // While the callers not in a batch come back, a new batch waits
        // briefly for them instead of committing the first few alone.
        let wanted = callers.saturating_sub(writing).clamp(1, share);
        if jobs.len() < wanted {
            let deadline = tokio::time::Instant::now() + GATHER_WINDOW;
            while jobs.len() < wanted {
                match tokio::time::timeout_at(deadline, receiver.recv()).await {
                    Ok(Some(job)) => {
                        jobs.push(job);
                        drain(&mut receiver, &mut jobs, share);
                    }
                    _ => break,
                }
            }
        }
        demand.seen(writing + jobs.len() + receiver.len());
        let mut accounts: Accounts = jobs.iter().map(|job| (job.tenant, job.account)).collect();
        // A batch sharing an account with one being written waits for it
        // (and for those before it, which finish first anyway); what joins
        // it meanwhile is checked again against those still in flight.
        while let Some(last_shared) =
            in_flight.iter().rposition(|(_, writing_accounts, _)| !writing_accounts.is_disjoint(&accounts))
        {
            for (writing, _, _) in in_flight.drain(..=last_shared) {
                let _ = writing.await;
            }
            // What queued meanwhile joins this batch.
            drain(&mut receiver, &mut jobs, share);
            accounts = jobs.iter().map(|job| (job.tenant, job.account)).collect();
        }
        let size = jobs.len();
        in_flight.push_back((tokio::spawn(commit_and_answer(shared.clone(), jobs)), accounts, size));
        // The earliest batches finish first.
        while in_flight.len() >= IN_FLIGHT_MAX {
            if let Some((writing, _, _)) = in_flight.pop_front() {
                let _ = writing.await;
            }
        }
    }
    for (writing, _, _) in in_flight {
        let _ = writing.await;
    }
}

/// How many callers a committer has had at once lately (in its batches
/// being written, the one being gathered and its queue), over its last
/// batches. Each batch takes at most an even share of them, so that the
/// batches in flight split the callers between them and take turns: one
/// is written while the callers of the other get their answers and send
/// again. Without it all the callers gathered into one batch, and the
/// database and the service waited on each other in turn (spread over
/// 100,000 accounts: batches of 2 to 48, both slots busy 58% of the time).
#[derive(Default)]
struct Demand {
    recent: VecDeque<usize>,
}

impl Demand {
    /// Batches remembered: enough to ride out one slow gathering, few enough
    /// that a load that falls away stops being waited for within
    /// milliseconds.
    const REMEMBERED: usize = 32;

    fn seen(&mut self, callers: usize) {
        if self.recent.len() == Self::REMEMBERED {
            self.recent.pop_front();
        }
        self.recent.push_back(callers);
    }

    fn callers(&self) -> usize {
        self.recent.iter().copied().max().unwrap_or(1).max(1)
    }

    /// The most a batch takes when `callers` are about.
    fn share_of(callers: usize) -> usize {
        callers.div_ceil(IN_FLIGHT_MAX).clamp(1, BATCH_MAX)
    }

    /// The share of the callers seen lately (the run loop reads `callers`
    /// once and uses `share_of`).
    #[cfg(test)]
    fn share(&self) -> usize {
        Self::share_of(self.callers())
    }
}

/// Takes what is already queued, up to `most`.
fn drain(receiver: &mut mpsc::Receiver<Job>, jobs: &mut Vec<Job>, most: usize) {
    while jobs.len() < most {
        match receiver.try_recv() {
            Ok(job) => jobs.push(job),
            Err(_) => break,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lone_caller_is_never_made_to_wait_for_others() {
        let mut demand = Demand::default();
        assert_eq!((demand.callers(), demand.share()), (1, 1));
        demand.seen(1);
        assert_eq!((demand.callers(), demand.share()), (1, 1));
    }

    #[test]
    fn the_batches_in_flight_split_the_callers_between_them() {
        let mut demand = Demand::default();
        demand.seen(48);
        assert_eq!(demand.callers(), 48);
        assert_eq!(demand.share(), 48 / IN_FLIGHT_MAX);
        demand.seen(47);
        assert_eq!(demand.share(), 48_usize.div_ceil(IN_FLIGHT_MAX), "one slow gathering does not shrink the batches");
        demand.seen(100_000);
        assert_eq!(demand.share(), BATCH_MAX);
    }

    #[test]
    fn callers_that_went_away_stop_being_waited_for() {
        let mut demand = Demand::default();
        demand.seen(48);
        for _ in 0..Demand::REMEMBERED {
            demand.seen(2);
        }
        assert_eq!((demand.callers(), demand.share()), (2, 1));
    }
}
