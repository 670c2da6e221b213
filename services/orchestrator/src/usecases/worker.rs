//! What the orchestrator does by itself, in every replica: resume unfinished
//! top-ups, fire recurring ones, and follow the wallet's and payments'
//! events from persisted cursors to start automatic top-ups and wake those
//! waiting for a payment. Leases, conditional updates and keys derived from
//! what each top-up is for keep replicas from doing anything twice.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::Duration as Span;
use reservoir_common::auth::TenantId;
use reservoir_common::ids::AccountId;
use reservoir_proto::payments as payments_pb;
use reservoir_proto::wallet as wallet_pb;
use rust_decimal::Decimal;
use tokio::sync::watch;
use tokio_stream::StreamExt;
use uuid::Uuid;

use crate::domain::{AutoDecision, Outcome, Step, Trigger, day_and_month_start, decide_auto, next_run};
use crate::error::OrchestratorError;
use crate::store::{NewEvent, Refund, StepLine};
use crate::usecases::clawbacks;
use crate::usecases::saga::{Saga, new_top_up};
use reservoir_common::time::now;

/// Top-ups one pass resumes at most.
const RUNNABLE_PER_PASS: u64 = 100;
/// Recurring top-ups one pass fires at most.
const RECURRING_PER_PASS: u64 = 100;
/// How long a broken event stream waits before it connects again.
const RECONNECT: Duration = Duration::from_secs(1);

#[derive(Clone)]
pub struct Worker {
    saga: Saga,
    /// The (tenant, source) event streams this replica follows.
    following: Arc<Mutex<HashSet<(TenantId, &'static str)>>>,
    stopping: watch::Receiver<bool>,
}

impl Worker {
    pub fn new(saga: Saga, stopping: watch::Receiver<bool>) -> Self {
        Self { saga, following: Arc::default(), stopping }
    }

    /// One pass: recurring top-ups due, unfinished top-ups due, and a
    /// follower for every tenant that needs one.
    pub async fn pass(&self) -> Result<(), OrchestratorError> {
        self.fire_recurring().await?;
        for row in self.saga.store().runnable(now(), RUNNABLE_PER_PASS).await? {
            if let Err(error) = self.saga.claim_and_run(row.id, row.tenant_id).await {
                tracing::warn!(%error, top_up = %row.id, "a top-up step failed; retried next pass");
            }
        }
        for tenant in self.saga.store().tenants_with_auto_replenish().await? {
            self.follow(tenant, "wallet");
        }
        for tenant in self.saga.store().tenants_awaiting_payments().await? {
            self.follow(tenant, "payments");
        }
        // Refunds of payments that bought a bonus take part of it back.
        for tenant in self.saga.store().tenants_with_bonuses().await? {
            self.follow(tenant, "payments");
        }
        clawbacks::apply_pending(&self.saga).await?;
        let counts = self.saga.store().count_by_status().await?;
        for status in [crate::domain::Status::Pending, crate::domain::Status::RequiresAction] {
            let count = counts.iter().find(|(name, _)| name == status.name()).map_or(0, |(_, count)| *count);
            #[allow(clippy::cast_precision_loss)]
            metrics::gauge!("reservoir_orchestrator_top_ups_in_flight", "status" => status.name()).set(count as f64);
        }
        Ok(())
    }

    async fn fire_recurring(&self) -> Result<(), OrchestratorError> {
        let now = now();
        for row in self.saga.store().due_recurring(now, RECURRING_PER_PASS).await? {
            let paid = row.mode == "PAID";
            let mut top_up = new_top_up(
                row.tenant_id,
                row.account_id,
                Trigger::Recurring,
                if paid { Step::CreateInvoice } else { Step::Grant },
                row.credits,
                if paid { "PAID" } else { "PROMOTIONAL" },
                row.payment_method_id,
                // One top-up per period, whoever fires it.
                format!("recurring:{}:{}", row.account_id, row.next_run_at.to_rfc3339()),
                now,
            );
            if row.credits_expire_after_days > 0 {
                top_up.credits_expire_at = Some(now + Span::days(i64::from(row.credits_expire_after_days)));
            }
            if let Some(policy) = row.rollover {
                let previous = self.saga.store().last_recurring_top_up(row.tenant_id, row.account_id).await?;
                top_up.rollover = policy.for_period(previous, now);
            }
            let first = StepLine {
                step: top_up.step,
                outcome: Outcome::Waiting,
                attempt: 0,
                detail: format!("period due {}", row.next_run_at.to_rfc3339()),
                at: now,
            };
            let next = next_run(row.interval, row.anchor_at, row.next_run_at, now);
            if self.saga.store().fire_recurring(&row, next, &top_up, &first).await? {
                metrics::counter!("reservoir_orchestrator_top_ups_started_total", "trigger" => "RECURRING")
                    .increment(1);
                tracing::info!(account = %row.account_id, next = %next, "recurring top-up fired");
            }
        }
        Ok(())
    }

    /// Starts following a tenant's events from one source, unless this
    /// replica already does.
    fn follow(&self, tenant: TenantId, source: &'static str) {
        let fresh = self.following.lock().is_ok_and(|mut following| following.insert((tenant, source)));
        if !fresh {
            return;
        }
        let worker = self.clone();
        tokio::spawn(async move {
            let mut stopping = worker.stopping.clone();
            while !*stopping.borrow() {
                let followed = match source {
                    "wallet" => worker.follow_wallet(tenant).await,
                    _ => worker.follow_payments(tenant).await,
                };
                if let Err(error) = followed {
                    tracing::warn!(%error, %tenant, source, "event stream broke; connecting again");
                }
                tokio::select! {
                    () = tokio::time::sleep(RECONNECT) => {}
                    _ = stopping.changed() => {}
                }
            }
        });
    }

    async fn follow_wallet(&self, tenant: TenantId) -> Result<(), OrchestratorError> {
        let after = self.saga.store().cursor(tenant, "wallet").await?;
        let request = wallet_pb::WatchEventsRequest { after_sequence: after, consumer: "orchestrator".into() };
        let request = self.saga.upstream().service_request(request, tenant)?;
        let mut stream = self
            .saga
            .upstream()
            .wallet()
            .watch_events(request)
            .await
            .map_err(|status| OrchestratorError::Unavailable(status.to_string()))?
            .into_inner();
        let mut stopping = self.stopping.clone();
        loop {
            let next = tokio::select! {
                next = stream.next() => next,
                _ = stopping.changed() => return Ok(()),
            };
            let Some(message) = next else { return Ok(()) };
            let event = message.map_err(|status| OrchestratorError::Unavailable(status.to_string()))?.event;
            let Some(event) = event else { continue };
            if event.r#type == i32::from(wallet_pb::EventType::BalanceLow)
                && let Ok(account_id) = event.account_id.parse::<AccountId>()
            {
                let available: Decimal = event.available.parse().unwrap_or_default();
                self.on_balance_low(tenant, account_id, available, event.sequence).await?;
            }
            self.saga.store().save_cursor(tenant, "wallet", event.sequence).await?;
        }
    }

    /// A balance fell below its threshold: an automatic top-up, run at once.
    async fn on_balance_low(
        &self,
        tenant: TenantId,
        account_id: AccountId,
        available: Decimal,
        sequence: u64,
    ) -> Result<(), OrchestratorError> {
        // The low-balance event it answers: read twice, started once.
        let key = format!("auto:{account_id}:{sequence}");
        if let Some(row) = start_automatic(&self.saga, tenant, account_id, available, key).await? {
            let saga = self.saga.clone();
            tokio::spawn(async move {
                if let Err(error) = saga.claim_and_run(row.id, row.tenant_id).await {
                    tracing::warn!(%error, top_up = %row.id, "automatic top-up left to the next pass");
                }
            });
        }
        Ok(())
    }

    async fn follow_payments(&self, tenant: TenantId) -> Result<(), OrchestratorError> {
        let after = self.saga.store().cursor(tenant, "payments").await?;
        let request =
            self.saga.upstream().service_request(payments_pb::WatchEventsRequest { after_sequence: after }, tenant)?;
        let mut stream = self
            .saga
            .upstream()
            .payments()
            .watch_events(request)
            .await
            .map_err(|status| OrchestratorError::Unavailable(status.to_string()))?
            .into_inner();
        let mut stopping = self.stopping.clone();
        loop {
            let next = tokio::select! {
                next = stream.next() => next,
                _ = stopping.changed() => return Ok(()),
            };
            let Some(message) = next else { return Ok(()) };
            let event = message.map_err(|status| OrchestratorError::Unavailable(status.to_string()))?.event;
            let Some(event) = event else { continue };
            let settles = [
                payments_pb::EventType::PaymentConfirmed,
                payments_pb::EventType::PaymentSucceeded,
                payments_pb::EventType::PaymentDeclined,
                payments_pb::EventType::PaymentFailed,
            ];
            if settles.iter().any(|kind| i32::from(*kind) == event.r#type)
                && let Ok(payment_id) = Uuid::parse_str(&event.payment_id)
            {
                self.saga.store().wake_for_payment(payment_id, now()).await?;
            }
            if event.r#type == i32::from(payments_pb::EventType::PaymentRefunded)
                && let (Ok(payment_id), Ok(id)) =
                    (Uuid::parse_str(&event.payment_id), Uuid::parse_str(&event.refund_id))
            {
                let amount = event.amount.parse().map_err(|_| OrchestratorError::internal("a refund's amount"))?;
                let at =
                    event.occurred_at.as_ref().and_then(reservoir_common::time::from_timestamp).unwrap_or_else(now);
                let refund = Refund { id, sequence: event.sequence, amount, at };
                clawbacks::on_refund(&self.saga, tenant, payment_id, &refund).await?;
            }
            self.saga.store().save_cursor(tenant, "payments", event.sequence).await?;
        }
    }
}

/// Stores an automatic top-up for a balance below the account's threshold,
/// if auto-replenish is on, none is in flight and the limits allow; the
/// worker's next pass runs it (or the caller does). `key` is what it answers.
pub async fn start_automatic(
    saga: &Saga,
    tenant: TenantId,
    account_id: AccountId,
    available: Decimal,
    key: String,
) -> Result<Option<crate::store::TopUpRow>, OrchestratorError> {
    let store = saga.store();
    let Some(config) = store.auto_replenish(tenant, account_id).await? else {
        return Ok(None);
    };
    if !config.enabled || config.paused {
        return Ok(None);
    }
    let now = now();
    let (day, month) = day_and_month_start(now);
    let history = store.auto_history(tenant, account_id, day, month).await?;
    let credits = match decide_auto(&config.settings, available, history) {
        AutoDecision::TopUp(credits) => credits,
        AutoDecision::NotNeeded => return Ok(None),
        AutoDecision::Limited(reason) => {
            let event = NewEvent {
                event_type: "AUTO_REPLENISH_LIMITED",
                account_id,
                top_up_id: None,
                credits: String::new(),
                reason: reason.to_owned(),
            };
            store.emit_event(tenant, &event, now).await?;
            return Ok(None);
        }
    };
    let row = new_top_up(
        tenant,
        account_id,
        Trigger::AutoReplenish,
        Step::CreateInvoice,
        credits,
        "PAID",
        Some(config.payment_method_id),
        key,
        now,
    );
    let first = StepLine {
        step: Step::CreateInvoice,
        outcome: Outcome::Waiting,
        attempt: 0,
        detail: format!("balance {available} below {}", config.settings.threshold),
        at: now,
    };
    match store.insert_top_up(&row, &first, now).await? {
        Some(row) => {
            metrics::counter!("reservoir_orchestrator_top_ups_started_total", "trigger" => "AUTO_REPLENISH")
                .increment(1);
            Ok(Some(row))
        }
        // Either this key started one already, or one is in flight.
        None => {
            tracing::debug!(account = %account_id, "an automatic top-up is already in flight");
            Ok(None)
        }
    }
}
