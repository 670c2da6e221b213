//! Billing: the monthly cycle that turns an account's month into a
//! statement, the credit blocks that follow overdue statements into the
//! wallet, and the credits of paid statements sent back to it. Called by the
//! api (RunBillingCycle, a payment recorded) and by every replica's worker;
//! statement keys, credit-block generations and repayment flags make each
//! step safe to repeat.

use std::collections::BTreeSet;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use reservoir_common::auth::TenantId;
use reservoir_common::ids::AccountId;
use reservoir_common::time::truncate_to_micros;
use rust_decimal::Decimal;
use uuid::Uuid;

use crate::clients::Upstream;
use crate::domain::{InvoiceKind, InvoiceStatus, Month, Pricing, due_at, statement};
use crate::error::InvoicingError;
use crate::store::{CreditBlock, InvoiceRow, Issue, Store, TenantSettings};

/// Paid statements whose repayment the worker finishes per pass.
const REPAYMENTS_PER_PASS: u64 = 100;

/// Where invoicing reads the time: the system clock, or a test's own, which
/// decides when months end and statements fall due.
pub type Clock = Arc<dyn Fn() -> DateTime<Utc> + Send + Sync>;

pub fn system_clock() -> Clock {
    Arc::new(|| truncate_to_micros(Utc::now()))
}

/// What one billing cycle did.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct CycleOutcome {
    pub accounts: u64,
    pub statements_created: u64,
    pub statements_existing: u64,
    pub invoices_due: u64,
    pub accounts_without_activity: u64,
}

/// The billing flows, over the store and the wallet and metering.
#[derive(Clone)]
pub struct Billing {
    store: Store,
    upstream: Upstream,
    payment_due_days_default: u32,
    clock: Clock,
}

impl Billing {
    pub fn new(store: Store, upstream: Upstream, payment_due_days_default: u32, clock: Clock) -> Self {
        Self { store, upstream, payment_due_days_default, clock }
    }

    pub fn now(&self) -> DateTime<Utc> {
        (self.clock)()
    }

    /// The same flows reading the time from `clock`.
    pub fn with_clock(&self, clock: Clock) -> Self {
        Self { clock, ..self.clone() }
    }

    /// A tenant's billing settings, or the defaults until it saves its own.
    pub async fn tenant_settings(&self, tenant: TenantId) -> Result<TenantSettings, InvoicingError> {
        Ok(self.store.settings(tenant).await?.unwrap_or(TenantSettings {
            payment_due_days: self.payment_due_days_default,
            monthly_cycle: false,
            last_cycle: None,
        }))
    }

    /// Runs one month's cycle for a tenant: a statement for every account
    /// with activity in the month that has none yet.
    pub async fn run_cycle(&self, tenant: TenantId, month: Month) -> Result<CycleOutcome, InvoicingError> {
        let (start, end) = (month.start(), month.end());
        let settings = self.tenant_settings(tenant).await?;
        let accounts = self.upstream.accounts(tenant).await?;
        let mut priced_dimensions = None;
        let mut outcome = CycleOutcome::default();
        for account in accounts {
            if account.created_at.is_some_and(|created| created >= end) {
                continue;
            }
            outcome.accounts += 1;
            let key = format!("statement:{month}:{}", account.id);
            if self.store.invoice_by_key(tenant, &key).await?.is_some() {
                outcome.statements_existing += 1;
                continue;
            }
            if priced_dimensions.is_none() {
                priced_dimensions = Some(self.upstream.priced_dimensions(tenant).await?);
            }
            let dimensions = priced_dimensions.as_ref().cloned().unwrap_or_default();
            let usage = self.upstream.usage(tenant, account.id, start, end, &dimensions).await?;
            let (drawdown, any_entry) = self.upstream.drawdown(tenant, account.id, start, end).await?;
            if usage.is_empty() && !any_entry {
                outcome.accounts_without_activity += 1;
                continue;
            }
            let pricing = Pricing::of(&account.unit)
                .map_err(|error| InvoicingError::internal(format!("account {} unit: {error}", account.id)))?;
            let statement = statement(&usage, drawdown, &pricing)
                .map_err(|error| InvoicingError::internal(format!("statement of {}: {error}", account.id)))?;
            let now = self.now();
            let due = statement.amount_due > Decimal::ZERO;
            let row = InvoiceRow {
                id: Uuid::now_v7(),
                tenant_id: tenant,
                account_id: account.id,
                kind: InvoiceKind::Statement,
                status: InvoiceStatus::Draft,
                number: None,
                currency: pricing.currency.code().to_owned(),
                unit_code: pricing.unit_code.clone(),
                total: statement.amount_due,
                credits: statement.debt_credits,
                uncovered_amount: statement.uncovered,
                overdraft_policy: account.overdraft_policy.to_owned(),
                period_start: start,
                period_end: end,
                issued_at: None,
                due_at: None,
                paid_at: None,
                voided_at: None,
                payment_reference: String::new(),
                repayment_pending: false,
                description: format!("Statement for {month}"),
                metadata: Default::default(),
                idempotency_key: key,
                request_hash: String::new(),
                created_at: now,
                updated_at: now,
                lines: statement.lines,
            };
            let issue = Issue { due_at: due.then(|| due_at(now, settings.payment_due_days)), settled: !due };
            match self.store.insert_invoice(&row, Some(issue), now).await? {
                Some(_) => {
                    outcome.statements_created += 1;
                    if due {
                        outcome.invoices_due += 1;
                    }
                    metrics::counter!("reservoir_invoicing_statements_total", "due" => due.to_string()).increment(1);
                }
                None => outcome.statements_existing += 1,
            }
        }
        Ok(outcome)
    }

    /// Brings the wallet's credit blocks in line with the overdue statements:
    /// an account with a credit limit and an unpaid statement past its due
    /// date is blocked; one invoicing blocked and that has none any more is
    /// unblocked.
    pub async fn reconcile_credit_blocks(&self, now: DateTime<Utc>) -> Result<(), InvoicingError> {
        let overdue = self.store.overdue_credit_accounts(now).await?;
        let blocks = self.store.credit_blocks().await?;
        let blocked: BTreeSet<(TenantId, AccountId)> =
            blocks.iter().filter(|block| block.blocked).map(|block| (block.tenant_id, block.account_id)).collect();
        for (tenant, account) in overdue.difference(&blocked) {
            self.store.want_credit_block(*tenant, *account, true, now).await?;
        }
        for (tenant, account) in blocked.difference(&overdue) {
            self.store.want_credit_block(*tenant, *account, false, now).await?;
        }
        for block in self.store.credit_blocks().await?.into_iter().filter(|block| !block.applied) {
            // One account the wallet cannot answer for must not hold up the others.
            if let Err(error) = self.apply_credit_block(&block, now).await {
                tracing::warn!(%error, account = %block.account_id, "credit block not applied; retried next pass");
            }
        }
        Ok(())
    }

    async fn apply_credit_block(&self, block: &CreditBlock, now: DateTime<Utc>) -> Result<(), InvoicingError> {
        self.upstream.set_credit_blocked(block.tenant_id, block.account_id, block.blocked, block.generation).await?;
        if self.store.credit_block_applied(block).await? {
            tracing::info!(
                tenant = %block.tenant_id,
                account = %block.account_id,
                blocked = block.blocked,
                "credit block applied in the wallet"
            );
            return Ok(());
        }
        // A newer generation was written (and perhaps applied) while this
        // call was on its way, and this older one may have reached the wallet
        // after it. The newest wish is sent again under a generation of its
        // own, whose key the wallet has not seen, so it lands last.
        if let Some(latest) = self
            .store
            .credit_blocks()
            .await?
            .into_iter()
            .find(|row| row.tenant_id == block.tenant_id && row.account_id == block.account_id)
        {
            self.store.want_credit_block(latest.tenant_id, latest.account_id, latest.blocked, now).await?;
        }
        Ok(())
    }

    /// Sends the credits of paid statements to their wallets.
    pub async fn finish_repayments(&self) -> Result<(), InvoicingError> {
        for invoice in self.store.pending_repayments(REPAYMENTS_PER_PASS).await? {
            // One wallet that refuses must not hold up the others: the
            // failed one goes to the back of the queue.
            if let Err(error) = self.repay(&invoice).await {
                tracing::warn!(%error, invoice = %invoice.id, "repayment not sent; retried later");
                self.store.postpone_repayment(invoice.id, self.now()).await?;
            }
        }
        Ok(())
    }

    /// Sends a paid statement's credits to its wallet and marks it done.
    pub async fn repay(&self, invoice: &InvoiceRow) -> Result<(), InvoicingError> {
        if invoice.credits > Decimal::ZERO {
            self.upstream.repay(invoice.tenant_id, invoice.account_id, invoice.id, invoice.credits).await?;
        }
        self.store.repayment_done(invoice.id).await
    }

    /// The automatic cycles: last month's, for every tenant that wants it.
    pub async fn run_due_cycles(&self, now: DateTime<Utc>) -> Result<(), InvoicingError> {
        for (tenant, settings) in self.store.tenants_with_monthly_cycle().await? {
            let Some(month) = crate::domain::cycle_due(now, settings.last_cycle) else {
                continue;
            };
            match self.run_cycle(tenant, month).await {
                Ok(outcome) => {
                    tracing::info!(%tenant, %month, created = outcome.statements_created, "monthly billing cycle ran");
                    // Only the month is written: a settings change made
                    // while the cycle ran stays as it was made.
                    self.store.cycle_ran(tenant, month, now).await?;
                }
                Err(error) => {
                    tracing::warn!(%error, %tenant, %month, "monthly billing cycle failed; retried next pass");
                }
            }
        }
        Ok(())
    }
}
