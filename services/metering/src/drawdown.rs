//! Asynchronous drawdown: lines of usage ingested asynchronously are drawn
//! from the wallets by a task of their own, as soon as it can take them and
//! several ingest calls' lines at a time, while the callers already have
//! their answer. An account never has more than one accepted batch not yet
//! drawn: an ingest naming an account that is still being drawn stores its
//! events, then waits for that draw before it answers, so an account can
//! overspend by at most one batch.
//!
//! What is accepted is stored and listed before it is answered, so a crash
//! of this task (or the process) loses nothing: the worker draws the listed
//! lines once their claim runs out, under the same keys.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use reservoir_common::auth::TenantId;
use tokio::sync::{Notify, mpsc};
use uuid::Uuid;

use crate::charge::draw_lines;
use crate::error::MeteringError;
use crate::store::{Line, Store};
use crate::wallet::WalletGateway;

/// Lines waiting to be drawn; past this an ingest waits to hand its lines over.
const QUEUE_MAX: usize = 64;
/// Lines drawn together at most: one DrawUsage's worth.
const DRAW_LINES_MAX: usize = 1_000;
/// How long an ingest waits for an account's earlier batch before it goes on
/// anyway (the wallet is slow or down: the worker draws what is listed).
const WAIT_MAX: Duration = Duration::from_secs(5);

#[derive(Clone)]
pub struct Drawdown {
    queue: mpsc::Sender<(TenantId, Vec<Line>)>,
    undrawn: Arc<Undrawn>,
}

/// Lines accepted and not yet drawn, per account.
#[derive(Default)]
struct Undrawn {
    lines: Mutex<HashMap<(TenantId, Uuid), usize>>,
    drawn: Notify,
}

impl Undrawn {
    /// Lists the lines if none of their accounts has lines listed; says whether it did.
    fn add_if_clear(&self, tenant: TenantId, lines: &[Line]) -> bool {
        let Ok(mut undrawn) = self.lines.lock() else {
            return true;
        };
        if lines.iter().any(|line| undrawn.contains_key(&(tenant, line.account_id))) {
            return false;
        }
        for line in lines {
            *undrawn.entry((tenant, line.account_id)).or_default() += 1;
        }
        true
    }

    fn add(&self, tenant: TenantId, lines: &[Line]) {
        if let Ok(mut undrawn) = self.lines.lock() {
            for line in lines {
                *undrawn.entry((tenant, line.account_id)).or_default() += 1;
            }
        }
    }

    fn remove(&self, tenant: TenantId, lines: &[Line]) {
        if let Ok(mut undrawn) = self.lines.lock() {
            for line in lines {
                if let Some(count) = undrawn.get_mut(&(tenant, line.account_id)) {
                    *count -= 1;
                    if *count == 0 {
                        undrawn.remove(&(tenant, line.account_id));
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
        let (queue, receiver) = mpsc::channel(QUEUE_MAX);
        let undrawn = Arc::new(Undrawn::default());
        tokio::spawn(run(store, wallet, receiver, undrawn.clone()));
        Self { queue, undrawn }
    }

    /// Hands lines just stored (and claimed) over to be drawn, once none of
    /// their accounts has an earlier accepted batch still undrawn (or once
    /// waiting longer would only hold the caller up during an outage). The
    /// wait and the listing are one step, so two ingests racing for one
    /// account cannot both find it clear. Storing comes before this wait, so
    /// a sender's next batch is stored while its previous one is drawn.
    pub async fn accept(&self, tenant: TenantId, lines: Vec<Line>) -> Result<(), MeteringError> {
        if lines.is_empty() {
            return Ok(());
        }
        let deadline = tokio::time::Instant::now() + WAIT_MAX;
        loop {
            let drawn = self.undrawn.drawn.notified();
            if self.undrawn.add_if_clear(tenant, &lines) {
                break;
            }
            if tokio::time::timeout_at(deadline, drawn).await.is_err() {
                tracing::warn!(%tenant, "accepted usage is slow to be drawn; ingesting on");
                self.undrawn.add(tenant, &lines);
                break;
            }
        }
        if let Err(error) = self.queue.send((tenant, lines)).await {
            // Stored and listed: the worker draws them once their claim runs out.
            let (tenant, lines) = error.0;
            self.undrawn.remove(tenant, &lines);
            return Err(MeteringError::Unavailable("the drawdown has stopped".into()));
        }
        Ok(())
    }
}

async fn run(
    store: Store,
    wallet: WalletGateway,
    mut receiver: mpsc::Receiver<(TenantId, Vec<Line>)>,
    undrawn: Arc<Undrawn>,
) {
    while let Some(first) = receiver.recv().await {
        // Whatever else is waiting, drawn together per tenant.
        let mut by_tenant: BTreeMap<TenantId, Vec<Line>> = BTreeMap::new();
        let mut count = first.1.len();
        by_tenant.entry(first.0).or_default().extend(first.1);
        while count < DRAW_LINES_MAX {
            match receiver.try_recv() {
                Ok((tenant, lines)) => {
                    count += lines.len();
                    by_tenant.entry(tenant).or_default().extend(lines);
                }
                Err(_) => break,
            }
        }
        for (tenant, lines) in by_tenant {
            let now = crate::api::now();
            if let Err(error) = draw_lines(&store, &wallet, tenant, lines.clone(), now).await {
                tracing::warn!(%error, %tenant, "accepted usage not drawn; the worker draws it when its claim runs out");
            }
            undrawn.remove(tenant, &lines);
        }
    }
}
