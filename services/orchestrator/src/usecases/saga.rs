//! The top-up saga: create the invoice → charge → grant the credits → mark
//! the invoice paid; a declined charge voids the invoice instead, a pending
//! one waits for its confirmation, a voucher is redeemed before its grant.
//! Every step is persisted as STARTED before its call and with its outcome
//! after, and every call carries a key derived from the top-up and the step,
//! so a top-up resumed after a crash repeats at most the step it was in, and
//! the service called answers the repeat from its record of the first.

use std::time::Duration;

use chrono::{DateTime, Utc};
use reservoir_common::auth::TenantId;
use reservoir_common::ids::AccountId;
use reservoir_proto::payments::PaymentStatus;
use reservoir_proto::wallet as wallet_pb;
use rust_decimal::Decimal;
use uuid::Uuid;

use crate::clients::{CallError, Invoice, Upstream};
use crate::domain::{Outcome, Status, Step, Trigger, backoff};
use crate::error::OrchestratorError;
use crate::store::{NewEvent, StepLine, Store, TopUpRow};

/// The failure code payments gives a charge whose gateway did not answer.
const GATEWAY_TIMEOUT_CODE: &str = "timeout";
/// The failure code of a pending payment a fraud rule held for review.
const FRAUD_REVIEW_CODE: &str = "fraud_review";
/// Steps one run takes at most before it lets go: a saga has at most six.
const STEPS_PER_RUN_MAX: usize = 12;
/// How often a payment waiting for its confirmation is looked at when no
/// event says it was confirmed.
const PAYMENT_POLL: chrono::Duration = chrono::Duration::seconds(30);

use reservoir_common::time::now;

/// Where a test asks the process to die: `before:CHARGE`, `after:GRANT`, ...
/// (a saga step), or `after:CLAWBACK` (the wallet took a bonus clawback,
/// not yet marked applied).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CrashPoint {
    pub before: bool,
    /// A step's name, or [`CrashPoint::CLAWBACK`].
    pub at: &'static str,
}

impl CrashPoint {
    pub const CLAWBACK: &'static str = "CLAWBACK";

    pub fn parse(text: &str) -> Option<Self> {
        let (when, at) = text.split_once(':')?;
        let before = match when {
            "before" => true,
            "after" => false,
            _ => return None,
        };
        let at = if at == Self::CLAWBACK { Self::CLAWBACK } else { Step::from_name(at)?.name() };
        Some(Self { before, at })
    }
}

/// What a step's call came to.
enum Next {
    /// The step is done; go on from the top-up's new state.
    Advanced { detail: String, event: Option<NewEvent> },
    /// Try the same step again later.
    Retry(String),
    /// Wait (for a payment, for a person) until `next_attempt_at`.
    Wait { detail: String, event: Option<NewEvent> },
    /// The top-up ended as it is now (FAILED or SUCCEEDED).
    Ended { detail: String, event: Option<NewEvent>, outcome: Outcome },
}

#[derive(Clone)]
pub struct Saga {
    store: Store,
    upstream: Upstream,
    lease: chrono::Duration,
    #[cfg_attr(not(feature = "test-hooks"), allow(dead_code))]
    crash_at: Option<CrashPoint>,
    attempts_before_action: u32,
}

fn line(step: Step, outcome: Outcome, attempt: u32, detail: impl Into<String>, at: DateTime<Utc>) -> StepLine {
    StepLine { step, outcome, attempt, detail: detail.into(), at }
}

fn event(kind: &'static str, row: &TopUpRow, reason: &str) -> NewEvent {
    NewEvent {
        event_type: kind,
        account_id: row.account_id,
        top_up_id: Some(row.id),
        credits: row.credits.normalize().to_string(),
        reason: reason.to_owned(),
    }
}

impl Saga {
    pub fn new(
        store: Store,
        upstream: Upstream,
        lease: Duration,
        crash_at: Option<CrashPoint>,
        attempts_before_action: u32,
    ) -> Self {
        let lease = chrono::Duration::from_std(lease).unwrap_or(chrono::Duration::seconds(10));
        Self { store, upstream, lease, crash_at, attempts_before_action }
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    pub fn upstream(&self) -> &Upstream {
        &self.upstream
    }

    pub fn lease_until(&self, now: DateTime<Utc>) -> DateTime<Utc> {
        now + self.lease
    }

    /// Aborts the process at the configured crash point: a test hook, only in
    /// builds with the `test-hooks` feature (the tests').
    #[cfg(feature = "test-hooks")]
    pub(crate) fn crash_if(&self, before: bool, at: &str) {
        if self.crash_at.as_ref().is_some_and(|point| point.before == before && point.at == at) {
            tracing::error!(at, before, "crashing on purpose at the configured crash point");
            std::process::abort();
        }
    }

    #[cfg(not(feature = "test-hooks"))]
    pub(crate) fn crash_if(&self, _before: bool, _at: &str) {}

    /// Takes a top-up's lease and runs it as far as it goes now.
    pub async fn claim_and_run(&self, id: Uuid, tenant: TenantId) -> Result<(), OrchestratorError> {
        let now = now();
        if !self.store.claim(id, now, self.lease_until(now)).await? {
            return Ok(());
        }
        let Some(row) = self.store.top_up(tenant, id).await? else {
            return Ok(());
        };
        self.run(row).await.map(|_| ())
    }

    /// Runs a top-up the caller holds the lease of, as far as it goes now,
    /// then lets go of it.
    pub async fn run(&self, mut row: TopUpRow) -> Result<TopUpRow, OrchestratorError> {
        let result = self.run_steps(&mut row).await;
        self.store.release(&row, now()).await?;
        result.map(|()| row)
    }

    async fn run_steps(&self, row: &mut TopUpRow) -> Result<(), OrchestratorError> {
        for _ in 0..STEPS_PER_RUN_MAX {
            if row.status.is_final() || row.step == Step::Done || row.next_attempt_at > now() {
                return Ok(());
            }
            if !self.step(row).await? {
                return Ok(());
            }
        }
        Ok(())
    }

    /// One step. Answers whether to go on at once.
    async fn step(&self, row: &mut TopUpRow) -> Result<bool, OrchestratorError> {
        let from = row.step;
        let attempt = row.attempts + 1;
        // Persisted before the call: a crash during it leaves a STARTED line
        // and the step to repeat.
        if from != Step::AwaitPayment {
            let started_at = now();
            row.attempts = attempt;
            row.updated_at = started_at;
            let started = line(from, Outcome::Started, attempt, "", started_at);
            // Renews the lease for the call: it outlasts the longest step.
            if !self.store.save(row, from, &started, None, self.lease_until(started_at)).await? {
                return Ok(false);
            }
        }
        self.crash_if(true, from.name());
        let next = self.call(row, attempt).await?;
        self.crash_if(false, from.name());
        let at = now();
        row.updated_at = at;
        let (record, event, go_on) = match next {
            Next::Advanced { detail, event } => {
                row.attempts = 0;
                let waits = row.step == Step::AwaitPayment;
                if !waits {
                    row.next_attempt_at = at;
                }
                (line(from, Outcome::Succeeded, attempt, detail, at), event, !waits)
            }
            Next::Retry(detail) => {
                row.next_attempt_at = at + backoff(attempt);
                let mut event = None;
                if attempt >= from.attempts_before_giving_up(self.attempts_before_action)
                    && row.status != Status::RequiresAction
                {
                    // Past its budget: a person is asked to look, and the
                    // step goes on being tried at the longest backoff.
                    row.status = Status::RequiresAction;
                    row.reason = format!("{} keeps failing: {detail}", from.name());
                    event = Some(self::event("TOP_UP_REQUIRES_ACTION", row, &row.reason));
                }
                (line(from, Outcome::Retrying, attempt, detail, at), event, false)
            }
            Next::Wait { detail, event } => (line(from, Outcome::Waiting, attempt, detail, at), event, false),
            Next::Ended { detail, event, outcome } => {
                row.step = Step::Done;
                (line(from, outcome, attempt, detail, at), event, false)
            }
        };
        if !self.store.save(row, from, &record, event.as_ref(), self.lease_until(at)).await? {
            return Ok(false);
        }
        if row.step == Step::Done {
            metrics::counter!(
                "reservoir_orchestrator_top_ups_ended_total",
                "trigger" => row.trigger.name(),
                "status" => row.status.name()
            )
            .increment(1);
        }
        self.after_saved(row).await?;
        Ok(go_on)
    }

    /// What follows a successful automatic top-up.
    async fn after_saved(&self, row: &TopUpRow) -> Result<(), OrchestratorError> {
        if row.trigger != Trigger::AutoReplenish || row.step != Step::Done || row.status != Status::Succeeded {
            return Ok(());
        }
        // A low balance while this one was in flight was not answered (one
        // at a time), and the wallet says so once per crossing: the balance
        // is looked at again now.
        match self.upstream.available(row.tenant_id, row.account_id).await {
            Ok(available) => {
                let key = format!("auto:{}:after:{}", row.account_id, row.id);
                crate::usecases::worker::start_automatic(self, row.tenant_id, row.account_id, available, key).await?;
            }
            Err(error) => tracing::warn!(error = %error.detail(), "balance not read after an automatic top-up"),
        }
        Ok(())
    }

    fn transient_or_refused(error: CallError) -> Result<String, (String, String)> {
        match error {
            CallError::Transient(detail) => Ok(detail),
            CallError::Refused { reason, .. } => Err((reason.clone(), reason)),
        }
    }

    async fn call(&self, row: &mut TopUpRow, attempt: u32) -> Result<Next, OrchestratorError> {
        let tenant = row.tenant_id;
        Ok(match row.step {
            Step::CreateInvoice => {
                match self.upstream.create_invoice(tenant, row.id, row.account_id, row.credits).await {
                    Ok(Invoice { id, total, currency }) => {
                        row.invoice_id = Some(id);
                        row.amount = Some(total);
                        row.currency = currency;
                        row.step = Step::Charge;
                        Next::Advanced { detail: format!("invoice {id}"), event: None }
                    }
                    Err(error) => match Self::transient_or_refused(error) {
                        Ok(detail) => Next::Retry(detail),
                        Err((reason, detail)) => {
                            row.status = Status::Failed;
                            row.reason = reason;
                            let event = event("TOP_UP_FAILED", row, &row.reason);
                            Next::Ended { detail, event: Some(event), outcome: Outcome::Failed }
                        }
                    },
                }
            }
            Step::Charge => {
                let invoice = Invoice {
                    id: row.invoice_id.unwrap_or_default(),
                    total: row.amount.unwrap_or_default(),
                    currency: row.currency.clone(),
                };
                let charged = self
                    .upstream
                    .charge(tenant, row.id, row.account_id, &invoice, row.payment_method_id, row.reconcile_later)
                    .await;
                match charged {
                    Ok(payment) => {
                        row.payment_id = Some(payment.id);
                        match payment.status {
                            PaymentStatus::Succeeded => {
                                row.step = Step::Grant;
                                Next::Advanced { detail: format!("payment {}", payment.id), event: None }
                            }
                            PaymentStatus::Pending => {
                                // Waiting for its money, or for an operator's
                                // review when a fraud rule held it.
                                let reason = if payment.failure_code == FRAUD_REVIEW_CODE {
                                    "FRAUD_REVIEW"
                                } else {
                                    "PAYMENT_PENDING"
                                };
                                row.step = Step::AwaitPayment;
                                row.status = Status::RequiresAction;
                                row.reason = reason.to_owned();
                                row.attempts = 0;
                                row.next_attempt_at = now() + PAYMENT_POLL;
                                let event = event("TOP_UP_REQUIRES_ACTION", row, reason);
                                Next::Advanced { detail: format!("payment {} pending", payment.id), event: Some(event) }
                            }
                            PaymentStatus::Declined => {
                                row.step = Step::VoidInvoice;
                                row.reason = format!("DECLINED {}", payment.failure_code);
                                Next::Advanced { detail: row.reason.clone(), event: None }
                            }
                            // A gateway that timed out may have taken the money:
                            // only asking again with the key can tell, so such a
                            // charge is never given up on.
                            PaymentStatus::Failed
                                if attempt >= crate::domain::CHARGE_ATTEMPTS_MAX
                                    && payment.failure_code != GATEWAY_TIMEOUT_CODE =>
                            {
                                row.step = Step::VoidInvoice;
                                row.reason = format!("CHARGE_FAILED {}", payment.failure_code);
                                Next::Advanced { detail: row.reason.clone(), event: None }
                            }
                            _ => Next::Retry(format!("payment {} {}", payment.id, payment.failure_code)),
                        }
                    }
                    Err(error) => match Self::transient_or_refused(error) {
                        // Whether a charge was made is not known: only
                        // asking again (with the same key) can tell.
                        Ok(detail) => Next::Retry(detail),
                        Err((reason, detail)) => {
                            row.step = Step::VoidInvoice;
                            row.reason = format!("CHARGE_REFUSED {reason}");
                            Next::Advanced { detail, event: None }
                        }
                    },
                }
            }
            Step::AwaitPayment => {
                let payment_id = row.payment_id.unwrap_or_default();
                match self.upstream.payment(tenant, payment_id).await {
                    Ok(payment) => match payment.status {
                        PaymentStatus::Succeeded => {
                            row.step = Step::Grant;
                            row.status = Status::Pending;
                            row.reason = String::new();
                            Next::Advanced { detail: format!("payment {payment_id} confirmed"), event: None }
                        }
                        PaymentStatus::Declined => {
                            row.step = Step::VoidInvoice;
                            row.status = Status::Pending;
                            row.reason = format!("DECLINED {}", payment.failure_code);
                            Next::Advanced { detail: row.reason.clone(), event: None }
                        }
                        // A payment released from review whose gateway call
                        // failed or was cut short (the card may have been
                        // charged): charged again under its key, with the
                        // charge step's retries and its care for timeouts.
                        PaymentStatus::Failed | PaymentStatus::Processing => {
                            row.step = Step::Charge;
                            row.status = Status::Pending;
                            row.reason = String::new();
                            row.attempts = 0;
                            Next::Advanced { detail: format!("payment {payment_id} to be charged again"), event: None }
                        }
                        _ => {
                            row.next_attempt_at = now() + PAYMENT_POLL;
                            Next::Wait { detail: "payment still pending".to_owned(), event: None }
                        }
                    },
                    Err(error) => {
                        row.attempts = attempt;
                        row.next_attempt_at = now() + backoff(attempt);
                        Next::Wait { detail: error.detail(), event: None }
                    }
                }
            }
            Step::RedeemVoucher => {
                let code = row.voucher_code.clone().unwrap_or_default();
                // The account's unit goes with the redemption: a voucher in
                // another unit is refused and stays unredeemed.
                let account_unit = match self.upstream.account_unit(tenant, row.account_id).await {
                    Ok((unit, _)) => unit,
                    Err(error) => return Ok(Next::Retry(error.detail())),
                };
                match self.upstream.redeem_voucher(tenant, &code, row.account_id, &account_unit).await {
                    Ok((voucher_id, value, _)) => {
                        row.voucher_id = Some(voucher_id);
                        row.voucher_code = None;
                        row.credits = value;
                        row.step = Step::Grant;
                        Next::Advanced { detail: format!("voucher {voucher_id}"), event: None }
                    }
                    Err(error) => match Self::transient_or_refused(error) {
                        Ok(detail) => Next::Retry(detail),
                        Err((reason, detail)) => {
                            row.status = Status::Failed;
                            row.voucher_code = None;
                            row.reason = reason;
                            let event = event("TOP_UP_FAILED", row, &row.reason);
                            Next::Ended { detail, event: Some(event), outcome: Outcome::Failed }
                        }
                    },
                }
            }
            Step::Grant => {
                let (kind, source, reference) = if let Some(voucher) = row.voucher_id {
                    (wallet_pb::GrantKind::Paid, wallet_pb::GrantSource::Voucher, Some(voucher))
                } else if row.grant_kind == "PROMOTIONAL" {
                    (wallet_pb::GrantKind::Promotional, wallet_pb::GrantSource::Admin, None)
                } else {
                    (wallet_pb::GrantKind::Paid, wallet_pb::GrantSource::Invoice, row.invoice_id)
                };
                // A voucher's credits are granted under the voucher's own key:
                // two top-ups redeeming one voucher for one account grant once.
                let key_owner = row.voucher_id.unwrap_or(row.id);
                // A period carries from the grant of the period before it, once
                // that one is settled; one that granted nothing leaves nothing.
                let rollover = match row.rollover {
                    None => None,
                    Some(rollover) => match self.store.top_up(tenant, rollover.from_top_up).await? {
                        Some(previous) if previous.status == Status::Pending => {
                            return Ok(Next::Retry("the previous period's top-up is not finished".into()));
                        }
                        Some(previous) => previous.grant_id.map(|grant| rollover.from_grant(grant)),
                        None => None,
                    },
                };
                let granted = self
                    .upstream
                    .grant(
                        tenant,
                        key_owner,
                        row.account_id,
                        row.credits,
                        kind,
                        source,
                        reference,
                        row.credits_expire_at,
                        rollover,
                    )
                    .await;
                match granted {
                    Ok(grant_id) => {
                        row.grant_id = Some(grant_id);
                        row.status = Status::Pending;
                        row.reason = String::new();
                        if row.bonus.is_some() {
                            row.step = Step::GrantBonus;
                            Next::Advanced { detail: format!("grant {grant_id}"), event: None }
                        } else {
                            after_grants(row, format!("grant {grant_id}"))
                        }
                    }
                    // Paid credits are never dropped: any failure is tried again.
                    Err(error) => Next::Retry(error.detail()),
                }
            }
            Step::GrantBonus => {
                let Some(mut bonus) = row.bonus.clone() else {
                    return Ok(after_grants(row, "no bonus".to_owned()));
                };
                // A payment confirmed after the bonus's expiry leaves no bonus to give.
                if bonus.expires_at.is_some_and(|at| at <= now()) {
                    return Ok(after_grants(row, "the bonus expired before it could be granted".to_owned()));
                }
                match self.upstream.grant_bonus(tenant, row.id, row.account_id, &bonus, row.grant_id).await {
                    Ok(grant_id) => {
                        bonus.grant_id = Some(grant_id);
                        row.bonus = Some(bonus);
                        after_grants(row, format!("bonus grant {grant_id}"))
                    }
                    Err(error) => Next::Retry(error.detail()),
                }
            }
            Step::MarkPaid => {
                let (invoice, payment) = (row.invoice_id.unwrap_or_default(), row.payment_id.unwrap_or_default());
                match self.upstream.mark_paid(tenant, invoice, payment).await {
                    Ok(()) => {
                        row.status = Status::Succeeded;
                        row.reason = String::new();
                        let event = event("TOP_UP_SUCCEEDED", row, "");
                        Next::Ended {
                            detail: format!("invoice {invoice} paid"),
                            event: Some(event),
                            outcome: Outcome::Succeeded,
                        }
                    }
                    Err(error) => Next::Retry(error.detail()),
                }
            }
            Step::VoidInvoice => {
                let invoice = row.invoice_id.unwrap_or_default();
                match self.upstream.void_invoice(tenant, invoice).await {
                    Ok(()) => {
                        row.status = Status::Failed;
                        let event = event("TOP_UP_FAILED", row, &row.reason);
                        Next::Ended {
                            detail: format!("invoice {invoice} void"),
                            event: Some(event),
                            outcome: Outcome::Failed,
                        }
                    }
                    Err(error) => Next::Retry(error.detail()),
                }
            }
            Step::Done => Next::Wait { detail: String::new(), event: None },
        })
    }
}

/// What follows the credits granted: marking the invoice paid, or the end
/// of a top-up without one.
fn after_grants(row: &mut TopUpRow, detail: String) -> Next {
    if row.invoice_id.is_some() {
        row.step = Step::MarkPaid;
        return Next::Advanced { detail, event: None };
    }
    row.status = Status::Succeeded;
    let event = event("TOP_UP_SUCCEEDED", row, "");
    Next::Ended { detail, event: Some(event), outcome: Outcome::Succeeded }
}

/// A new top-up's row, before its first step.
#[allow(clippy::too_many_arguments)]
pub fn new_top_up(
    tenant: TenantId,
    account_id: AccountId,
    trigger: Trigger,
    step: Step,
    credits: Decimal,
    grant_kind: &str,
    payment_method_id: Option<Uuid>,
    idempotency_key: String,
    now: DateTime<Utc>,
) -> TopUpRow {
    TopUpRow {
        id: Uuid::now_v7(),
        tenant_id: tenant,
        account_id,
        trigger,
        status: Status::Pending,
        step,
        credits,
        grant_kind: grant_kind.to_owned(),
        payment_method_id,
        reconcile_later: false,
        credits_expire_at: None,
        invoice_id: None,
        payment_id: None,
        grant_id: None,
        voucher_id: None,
        voucher_code: None,
        amount: None,
        currency: String::new(),
        reason: String::new(),
        attempts: 0,
        next_attempt_at: now,
        claimed_until: now,
        idempotency_key,
        request_hash: String::new(),
        created_at: now,
        updated_at: now,
        rollover: None,
        bonus: None,
    }
}
