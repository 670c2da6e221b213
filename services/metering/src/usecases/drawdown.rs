//! Asynchronous drawdown: lines of usage ingested asynchronously are drawn
//! from the wallets by a task of their own, several ingest calls' lines at a
//! time. An ingest lists its lines here as soon as they are stored, then
//! answers once every earlier listing naming one of its accounts is drawn:
//! while the wallet keeps up, an account has at most one acknowledged batch
//! not yet drawn by this replica, so it can overspend by at most one batch,
//! while the next batch is already being stored and listed. The bound is
//! per replica and holds only within the 5 s an ingest waits: a draw that
//! fails (the wallet is down) counts as done here and is left to the worker,
//! and past 5 s an ingest is answered anyway.
//!
//! What is accepted is stored and claimed before it is listed, so a crash
//! of this task (or the process) loses nothing: the worker draws the stored
//! lines once their claim runs out, under the same keys.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use reservoir_common::auth::TenantId;
use reservoir_common::ids::AccountId;
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore, mpsc};

use crate::clients::wallet::WalletGateway;
use crate::error::MeteringError;
use crate::store::{Line, Store};
use crate::usecases::charge::draw_lines;

/// Listings waiting to be drawn; past this an ingest waits to list its lines.
const QUEUE_MAX: usize = 64;
/// Lines drawn together at most (in as many DrawUsage calls as they need).
const DRAW_LINES_MAX: usize = 4_000;
/// How long an ingest waits for an account's earlier batch before it answers
/// anyway (the wallet is slow or down: the worker draws what is stored).
const WAIT_MAX: Duration = Duration::from_secs(5);

/// One ingest's lines, numbered in the order they were listed.
struct Listing {
    tenant: TenantId,
    number: u64,
    lines: Vec<Line>,
    _slot: OwnedSemaphorePermit,
}

#[derive(Clone)]
pub struct Drawdown {
    queue: mpsc::UnboundedSender<Listing>,
    slots: Arc<Semaphore>,
    undrawn: Arc<Undrawn>,
}

/// What is listed and not yet drawn.
#[derive(Default)]
struct Undrawn {
    state: Mutex<Listed>,
    drawn: Notify,
}

#[derive(Default)]
struct Listed {
    /// The number the next listing gets.
    next: u64,
    /// Every listing numbered below this is drawn (they are drawn in order).
    drawn_below: u64,
    /// Each account's latest listing not yet drawn.
    latest: HashMap<(TenantId, AccountId), u64>,
}

impl Undrawn {
    fn is_drawn(&self, number: u64) -> bool {
        self.state.lock().map_or(true, |state| number < state.drawn_below)
    }

    /// Marks every listing up to `number` drawn.
    fn drawn_through(&self, tenant_lines: &[(TenantId, &[Line])], number: u64) {
        if let Ok(mut state) = self.state.lock() {
            state.drawn_below = state.drawn_below.max(number + 1);
            for (tenant, lines) in tenant_lines {
                for line in *lines {
                    let key = (*tenant, line.account_id);
                    if state.latest.get(&key).is_some_and(|latest| *latest <= number) {
                        state.latest.remove(&key);
                    }
                }
            }
        }
        self.drawn.notify_waiters();
    }
}

impl Drawdown {
    /// Starts the drawing task.
    pub fn start(store: Store, wallet: WalletGateway) -> Self {
        let (queue, receiver) = mpsc::unbounded_channel();
        let undrawn = Arc::new(Undrawn::default());
        tokio::spawn(run(store, wallet, receiver, undrawn.clone()));
        Self { queue, slots: Arc::new(Semaphore::new(QUEUE_MAX)), undrawn }
    }

    /// Lists lines just stored (and claimed) to be drawn, then waits until
    /// every earlier listing naming one of their accounts is drawn, and
    /// every listing naming one of `repeated` (the accounts of events the
    /// call repeats: a retry of a call still waiting must not be answered
    /// sooner than the call itself). Waiting stops after 5 s, slot
    /// included: past that the wallet is slow or down, and the worker draws
    /// what is stored.
    pub async fn accept(
        &self,
        tenant: TenantId,
        lines: Vec<Line>,
        repeated: &[AccountId],
    ) -> Result<(), MeteringError> {
        let deadline = tokio::time::Instant::now() + WAIT_MAX;
        let slot = if lines.is_empty() {
            None
        } else {
            let Ok(Ok(slot)) = tokio::time::timeout_at(deadline, self.slots.clone().acquire_owned()).await else {
                return Err(MeteringError::Unavailable("the drawdown is too far behind; the worker draws this".into()));
            };
            Some(slot)
        };
        let earlier = {
            let Ok(mut state) = self.undrawn.state.lock() else {
                return Err(MeteringError::internal("the drawdown's state is poisoned"));
            };
            let mut earlier =
                repeated.iter().filter_map(|account| state.latest.get(&(tenant, *account)).copied()).max();
            if let Some(slot) = slot {
                // Numbered and queued under one lock, so the queue is in number order.
                let number = state.next;
                state.next += 1;
                for line in &lines {
                    if let Some(previous) = state.latest.insert((tenant, line.account_id), number)
                        && previous != number
                    {
                        earlier = earlier.max(Some(previous));
                    }
                }
                if let Err(refused) = self.queue.send(Listing { tenant, number, lines, _slot: slot }) {
                    // Stored and claimed: the worker draws them once their claim
                    // runs out. Nothing here waits for them.
                    for line in &refused.0.lines {
                        let key = (tenant, line.account_id);
                        if state.latest.get(&key) == Some(&number) {
                            state.latest.remove(&key);
                        }
                    }
                    return Err(MeteringError::Unavailable("the drawdown has stopped".into()));
                }
            }
            earlier
        };
        let Some(earlier) = earlier else {
            return Ok(());
        };
        loop {
            let drawn = self.undrawn.drawn.notified();
            if self.undrawn.is_drawn(earlier) {
                return Ok(());
            }
            if tokio::time::timeout_at(deadline, drawn).await.is_err() {
                tracing::warn!(%tenant, "accepted usage is slow to be drawn; answering anyway");
                return Ok(());
            }
        }
    }
}

async fn run(
    store: Store,
    wallet: WalletGateway,
    mut receiver: mpsc::UnboundedReceiver<Listing>,
    undrawn: Arc<Undrawn>,
) {
    while let Some(first) = receiver.recv().await {
        // Whatever else is waiting, drawn together per tenant.
        let mut listings = vec![first];
        let mut count = listings[0].lines.len();
        while count < DRAW_LINES_MAX {
            match receiver.try_recv() {
                Ok(listing) => {
                    count += listing.lines.len();
                    listings.push(listing);
                }
                Err(_) => break,
            }
        }
        let last = listings.iter().map(|listing| listing.number).max().unwrap_or_default();
        let mut by_tenant: BTreeMap<TenantId, Vec<Line>> = BTreeMap::new();
        for listing in listings {
            by_tenant.entry(listing.tenant).or_default().extend(listing.lines);
        }
        for (tenant, lines) in &by_tenant {
            let now = reservoir_common::time::now();
            if let Err(error) = draw_lines(&store, &wallet, *tenant, lines.clone(), now).await {
                tracing::warn!(%error, %tenant, "accepted usage not drawn; the worker draws it when its claim runs out");
            }
        }
        let drawn: Vec<(TenantId, &[Line])> =
            by_tenant.iter().map(|(tenant, lines)| (*tenant, lines.as_slice())).collect();
        undrawn.drawn_through(&drawn, last);
    }
}
