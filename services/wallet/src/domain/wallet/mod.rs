//! One wallet's operations. Every public operation first writes off what has
//! expired by its instant, then checks everything it needs before it changes
//! anything, so a refused operation leaves the wallet as it found it (apart
//! from those expiries, which are true whatever happens next).

use std::collections::BTreeSet;

use chrono::Duration;
use rust_decimal::Decimal;

use super::chain::{self, LedgerHash};
use super::types::*;

mod draws;
mod grants;
mod holds;
mod shared;

pub use shared::{Budget, BudgetPeriod, CHILD_ACCOUNT_KEY, PARENT_ACCOUNT_KEY};

/// Balances stay below this in absolute value. Amounts are below 10^18 and
/// have at most 8 decimals, so 10^20 keeps every sum within `Decimal`'s 28
/// digits with room to spare.
pub fn balance_limit() -> Decimal {
    Decimal::from(100_000_000_000_000_000_000_i128)
}

const OVERDRAFT_REPAYMENT: &str = "overdraft repayment";

/// What an operation changed, for the store to write in one transaction.
#[derive(Debug, Default, Clone)]
pub struct Changes {
    pub entries: Vec<Entry>,
    pub events: Vec<Event>,
    pub new_grants: BTreeSet<GrantId>,
    pub touched_grants: BTreeSet<GrantId>,
    pub new_holds: BTreeSet<HoldId>,
    pub touched_holds: BTreeSet<HoldId>,
}

impl Changes {
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
            && self.events.is_empty()
            && self.touched_grants.is_empty()
            && self.touched_holds.is_empty()
    }
}

/// One account's wallet as loaded for an operation: the account, its live
/// grants (and any others the operation names), and the holds it touches
/// (including every active hold already past its expiry).
#[derive(Debug, Clone)]
pub struct Wallet {
    pub account: Account,
    pub grants: Vec<Grant>,
    pub holds: Vec<Hold>,
    changes: Changes,
}

impl Wallet {
    pub fn new(account: Account, grants: Vec<Grant>, holds: Vec<Hold>) -> Self {
        Self { account, grants, holds, changes: Changes::default() }
    }

    /// Opens a new account with an empty wallet.
    pub fn open(new: NewAccount, ctx: &OperationContext) -> Self {
        let low_balance_alerted = new.low_balance_threshold.is_some_and(|threshold| Decimal::ZERO < threshold);
        let account = Account {
            id: AccountId::generate(),
            // Given by the store when the account is written; nothing before
            // that writes an entry.
            number: 0,
            tenant_id: new.tenant_id,
            external_id: new.external_id,
            unit: new.unit,
            overdraft: new.overdraft,
            status: AccountStatus::Active,
            low_balance_threshold: new.low_balance_threshold,
            low_balance_alerted,
            // An empty wallet has not crossed into depletion; it starts there.
            depleted_alerted: true,
            credit_blocked: false,
            spend: SpendControl::default(),
            overdraft_used: Decimal::ZERO,
            held: Decimal::ZERO,
            last_sequence: 0,
            ledger_head: LedgerHash::GENESIS,
            version: 0,
            parent: None,
            metadata: new.metadata,
            created_at: ctx.now,
            updated_at: ctx.now,
        };
        let mut wallet = Self::new(account, Vec::new(), Vec::new());
        wallet.push_event(ctx, EventType::AccountCreated, None, None, None, None);
        wallet
    }

    /// Takes what the operations so far changed, leaving none.
    /// What the operations since the last call changed, to be written; a
    /// wallet that changed moves to its next version.
    pub fn take_changes(&mut self) -> Changes {
        let changes = std::mem::take(&mut self.changes);
        if !changes.is_empty() {
            self.account.version += 1;
        }
        changes
    }

    pub fn changes(&self) -> &Changes {
        &self.changes
    }

    pub fn grant_by_id(&self, id: GrantId) -> Option<&Grant> {
        self.grants.iter().find(|grant| grant.id == id)
    }

    pub fn hold_by_id(&self, id: HoldId) -> Option<&Hold> {
        self.holds.iter().find(|hold| hold.id == id)
    }

    /// The running sum of every money-moving entry: the remaining credits of
    /// every grant not yet written off (pending ones included) less the overdraft used.
    pub fn ledger_balance(&self) -> Decimal {
        // Written-off grants hold nothing, except for the moment between a
        // refund to one and its write-off, when the refund must still count.
        let credits: Decimal = self.grants.iter().map(|grant| grant.remaining).sum();
        credits - self.account.overdraft_used
    }

    /// The balance as a client sees it at `now`: credits past their expiry and
    /// holds past theirs no longer count, whether or not they are written off yet.
    pub fn balance(&self, now: chrono::DateTime<chrono::Utc>) -> BalanceView {
        let mut paid = Decimal::ZERO;
        let mut promotional = Decimal::ZERO;
        let mut courtesy = Decimal::ZERO;
        let mut pending = Decimal::ZERO;
        let mut next_expiry_at = None;
        for grant in &self.grants {
            if grant.is_usable(now) {
                match grant.kind {
                    GrantKind::Paid => paid += grant.remaining,
                    GrantKind::Promotional => promotional += grant.remaining,
                    GrantKind::Courtesy => courtesy += grant.remaining,
                }
                if grant.remaining > Decimal::ZERO
                    && let Some(at) = grant.expires_at
                {
                    next_expiry_at =
                        Some(next_expiry_at.map_or(at, |earliest: chrono::DateTime<chrono::Utc>| earliest.min(at)));
                }
            } else if grant.is_pending(now) {
                pending += grant.remaining;
            }
        }
        let lapsed_holds: Decimal = self
            .holds
            .iter()
            .filter(|hold| hold.status == HoldStatus::Active && hold.expires_at <= now)
            .map(|hold| hold.amount)
            .sum();
        let held = self.account.held - lapsed_holds;
        let total = paid + promotional + courtesy - self.account.overdraft_used;
        let available = total - held;
        let spendable = match self.account.overdraft {
            Overdraft::None => Some(available.max(Decimal::ZERO)),
            Overdraft::CreditLimit(limit) => Some((available + limit).max(Decimal::ZERO)),
            Overdraft::Unlimited => None,
        };
        BalanceView {
            available,
            held,
            total,
            credit_limit: self.account.overdraft.credit_limit(),
            overdraft_used: self.account.overdraft_used,
            paid,
            promotional,
            courtesy,
            pending,
            next_expiry_at,
            spendable,
        }
    }

    // ---- operations -------------------------------------------------------

    /// Writes off every grant and hold past its expiry at `ctx.now`. The sweeper
    /// calls this; every other operation does it first.
    pub fn expire(&mut self, ctx: &OperationContext) {
        self.roll_periods(ctx.now);
        for index in 0..self.grants.len() {
            let grant = &self.grants[index];
            if grant.status != GrantStatus::Active || !grant.is_past_expiry(ctx.now) {
                continue;
            }
            let (id, remaining) = (grant.id, grant.remaining);
            self.grants[index].status = GrantStatus::Expired;
            self.changes.touched_grants.insert(id);
            if remaining > Decimal::ZERO {
                self.grants[index].remaining = Decimal::ZERO;
                self.push_entry(
                    ctx,
                    EntryKind::Expiry,
                    -remaining,
                    Some(id),
                    None,
                    None,
                    Some("credits expired"),
                    None,
                );
            }
            self.push_event(ctx, EventType::GrantExpired, Some(remaining), Some(id), None, None);
        }
        for index in 0..self.holds.len() {
            let hold = &self.holds[index];
            if hold.status != HoldStatus::Active || hold.expires_at > ctx.now {
                continue;
            }
            let (id, amount, meter) = (hold.id, hold.amount, hold.meter_code.clone());
            self.holds[index].status = HoldStatus::Expired;
            self.account.held -= amount;
            self.changes.touched_holds.insert(id);
            self.push_entry(
                ctx,
                EntryKind::Release,
                amount,
                None,
                Some(id),
                meter.as_deref(),
                Some("hold expired"),
                None,
            );
            self.push_event(ctx, EventType::HoldExpired, Some(amount), None, Some(id), meter);
        }
        // Credits that became effective since the last operation repay the
        // overdraft before anything can spend them.
        if !self.account.overdraft_used.is_zero() {
            for index in self.drawdown_order(ctx, None, false) {
                let id = self.grants[index].id;
                self.repay_overdraft(ctx, id);
            }
        }
        self.update_alerts(ctx);
    }

    /// Changes the account's settings. A closed account takes no changes.
    pub fn update(&mut self, ctx: &OperationContext, update: AccountUpdate) -> DomainResult<()> {
        self.expire(&ctx.for_expiry());
        self.refuse_if_closed()?;
        if let Some(status) = update.status {
            self.account.status = status;
        }
        if let Some(overdraft) = update.overdraft {
            self.account.overdraft = overdraft;
        }
        if let Some(blocked) = update.credit_blocked {
            self.account.credit_blocked = blocked;
        }
        let available = self.balance(ctx.now).available;
        if let Some(threshold) = update.low_balance_threshold {
            self.account.low_balance_threshold = threshold;
            // Setting a threshold is not a crossing: only a later fall below it alerts.
            self.account.low_balance_alerted = threshold.is_some_and(|threshold| available < threshold);
        }
        if let Some(warning) = update.low_balance_warning {
            self.account.spend.low_balance_warning = warning;
            self.account.spend.low_balance_warned = warning.is_some_and(|warning| available < warning);
        }
        if let Some(cap) = update.monthly_cap {
            self.account.spend.monthly_cap = cap;
            // Likewise a cap set below the month's spend: the alerts it has
            // already passed count as sent, and lowering it back re-arms them.
            self.account.spend.cap_alerted_percent = self.cap_level();
        }
        if let Some(max) = update.transfer_max {
            self.account.spend.transfer_max = max;
        }
        if let Some(limit) = update.transfer_daily_limit {
            self.account.spend.transfer_daily_limit = limit;
        }
        self.account.updated_at = ctx.now;
        self.push_event(ctx, EventType::AccountUpdated, None, None, None, None);
        self.update_alerts(ctx);
        Ok(())
    }

    /// The month's spend against the cap, with the month-end projection at
    /// the rate so far (the spend times the month's length over the time gone).
    pub fn spend_view(&self, now: chrono::DateTime<chrono::Utc>) -> SpendView {
        let (period_start, period_end) = month_bounds(now);
        let spent = self.spent_this_month(now);
        let elapsed_ms = (now - period_start).num_milliseconds();
        let length_ms = (period_end - period_start).num_milliseconds();
        let projected = if elapsed_ms <= 0 {
            spent
        } else {
            (spent * Decimal::from(length_ms) / Decimal::from(elapsed_ms))
                .round_dp_with_strategy(self.account.unit.scale(), rust_decimal::RoundingStrategy::MidpointNearestEven)
        };
        let cap = self.account.spend.monthly_cap;
        SpendView {
            cap,
            spent,
            projected,
            period_start,
            period_end,
            // What holds may still capture counts against the cap, as a debit finds.
            remaining: cap.map(|cap| (cap - spent - self.account.held).max(Decimal::ZERO)),
            alerted_percent: if self.account.spend.month >= month_key(now) {
                self.account.spend.cap_alerted_percent
            } else {
                0
            },
        }
    }

    /// The spend counted for the month of `now`: none yet if the stored
    /// counter belongs to an earlier month.
    fn spent_this_month(&self, now: chrono::DateTime<chrono::Utc>) -> Decimal {
        if self.account.spend.month >= month_key(now) { self.account.spend.month_spend } else { Decimal::ZERO }
    }

    /// Starts the month's spend and the day's transfers afresh when they
    /// turn. Only forward: an operation timed just before a turn that reaches
    /// the wallet after one already counted in the new period counts there
    /// too, rather than wiping the new period's figures.
    fn roll_periods(&mut self, now: chrono::DateTime<chrono::Utc>) {
        let month = month_key(now);
        if month > self.account.spend.month {
            self.account.spend.month = month;
            self.account.spend.month_spend = Decimal::ZERO;
            self.account.spend.cap_alerted_percent = 0;
        }
        let day = day_key(now);
        if day > self.account.spend.day {
            self.account.spend.day = day;
            self.account.spend.transferred_today = Decimal::ZERO;
        }
    }

    /// The highest alert percentage the month's spend has reached; 0 without a cap.
    fn cap_level(&self) -> u32 {
        let spend = &self.account.spend;
        let Some(cap) = spend.monthly_cap else {
            return 0;
        };
        CAP_ALERT_PERCENTS
            .into_iter()
            .filter(|percent| spend.month_spend * Decimal::ONE_HUNDRED >= cap * Decimal::from(*percent))
            .max()
            .unwrap_or(0)
    }

    /// A debit (or a hold, which may become one) must leave the month's spend,
    /// with what active holds may still capture, within the cap.
    fn check_cap(&self, amount: Decimal) -> DomainResult<()> {
        let Some(cap) = self.account.spend.monthly_cap else {
            return Ok(());
        };
        let committed = self.account.spend.month_spend + self.account.held;
        if committed + amount > cap { Err(DomainError::SpendingCapReached) } else { Ok(()) }
    }

    // ---- rules shared by the operations -----------------------------------

    fn refuse_if_closed(&self) -> DomainResult<()> {
        match self.account.status {
            AccountStatus::Closed => Err(DomainError::AccountClosed),
            AccountStatus::Active | AccountStatus::Suspended => Ok(()),
        }
    }

    fn refuse_unless_active(&self) -> DomainResult<()> {
        match self.account.status {
            AccountStatus::Active => Ok(()),
            AccountStatus::Suspended => Err(DomainError::AccountSuspended),
            AccountStatus::Closed => Err(DomainError::AccountClosed),
        }
    }

    /// Credits added must keep the wallet within the supported range.
    fn check_credit_fits(&self, amount: Decimal) -> DomainResult<()> {
        let pending: Decimal =
            self.grants.iter().filter(|grant| grant.status == GrantStatus::Active).map(|grant| grant.remaining).sum();
        if pending + amount >= balance_limit() {
            return Err(DomainError::BalanceOutOfRange);
        }
        Ok(())
    }

    /// BALANCE_LOW once per fall below the threshold, BALANCE_DEPLETED once per
    /// fall to zero or below; each is re-armed when the balance rises back.
    fn update_alerts(&mut self, ctx: &OperationContext) {
        let available = self.balance(ctx.now).available;
        if let Some(threshold) = self.account.low_balance_threshold {
            if available < threshold {
                if !self.account.low_balance_alerted {
                    self.account.low_balance_alerted = true;
                    self.push_alert(ctx, EventType::BalanceLow, Some(threshold));
                }
            } else {
                self.account.low_balance_alerted = false;
            }
        }
        if let Some(warning) = self.account.spend.low_balance_warning {
            if available < warning {
                if !self.account.spend.low_balance_warned {
                    self.account.spend.low_balance_warned = true;
                    self.push_alert(ctx, EventType::BalanceWarning, Some(warning));
                }
            } else {
                self.account.spend.low_balance_warned = false;
            }
        }
        if available <= Decimal::ZERO {
            if !self.account.depleted_alerted {
                self.account.depleted_alerted = true;
                self.push_alert(ctx, EventType::BalanceDepleted, None);
            }
        } else {
            self.account.depleted_alerted = false;
        }
        // Each cap percentage alerts once as the spend reaches it; a refund or
        // a raised cap that takes the spend back below re-arms it.
        let level = self.cap_level();
        let alerted = self.account.spend.cap_alerted_percent;
        for percent in CAP_ALERT_PERCENTS.into_iter().filter(|percent| *percent > alerted && *percent <= level) {
            self.push_alert(ctx, EventType::SpendingCapAlert, self.account.spend.monthly_cap);
            if let Some(event) = self.changes.events.last_mut() {
                event.cap_percent = Some(percent);
                event.amount = Some(self.account.spend.month_spend);
            }
        }
        self.account.spend.cap_alerted_percent = level;
    }

    fn push_alert(&mut self, ctx: &OperationContext, event_type: EventType, threshold: Option<Decimal>) {
        let available = self.balance(ctx.now).available;
        self.changes.events.push(Event {
            event_type,
            account_id: self.account.id,
            occurred_at: ctx.now,
            amount: None,
            available,
            grant_id: None,
            hold_id: None,
            idempotency_key: ctx.idempotency_key.clone(),
            correlation_id: ctx.correlation_id.clone(),
            meter_code: None,
            threshold,
            cap_percent: None,
            counterparty: None,
        });
    }

    #[allow(clippy::too_many_arguments)]
    fn push_entry(
        &mut self,
        ctx: &OperationContext,
        kind: EntryKind,
        amount: Decimal,
        grant_id: Option<GrantId>,
        hold_id: Option<HoldId>,
        meter_code: Option<&str>,
        description: Option<&str>,
        refunded_entry_id: Option<EntryId>,
    ) {
        let entry = self.next_entry(ctx, kind, amount, grant_id, hold_id, meter_code, description, refunded_entry_id);
        self.append(entry);
    }

    /// The wallet's next entry, its balance after as the wallet now stands;
    /// not yet chained (see [`Self::append`]).
    #[allow(clippy::too_many_arguments)]
    fn next_entry(
        &mut self,
        ctx: &OperationContext,
        kind: EntryKind,
        amount: Decimal,
        grant_id: Option<GrantId>,
        hold_id: Option<HoldId>,
        meter_code: Option<&str>,
        description: Option<&str>,
        refunded_entry_id: Option<EntryId>,
    ) -> Entry {
        self.account.last_sequence += 1;
        self.account.updated_at = ctx.now;
        let position = match self.changes.entries.last() {
            Some(before) if before.operation_id == ctx.operation_id => before.position + 1,
            _ => 0,
        };
        Entry {
            id: EntryId::of(self.account.number, self.account.last_sequence),
            account_id: self.account.id,
            operation_id: ctx.operation_id,
            sequence: self.account.last_sequence,
            position,
            kind,
            amount,
            grant_id,
            hold_id,
            balance_after: self.ledger_balance(),
            idempotency_key: ctx.idempotency_key.clone(),
            correlation_id: ctx.correlation_id.clone(),
            meter_code: meter_code.map(str::to_owned),
            description: description.map_or_else(|| ctx.description.clone(), str::to_owned),
            metadata: ctx.metadata.clone(),
            refunded_entry_id,
            created_at: ctx.now,
            key_id: ctx.key_id,
            hash: None,
        }
    }

    /// Adds an entry at the head of the wallet's hash chain.
    fn append(&mut self, mut entry: Entry) {
        let hash = chain::entry_hash(&self.account.ledger_head, &entry);
        entry.hash = Some(hash);
        self.account.ledger_head = hash;
        self.changes.entries.push(entry);
    }

    /// An entry whose balance after is given: entries written after the
    /// state already moved on (a usage draw's) carry their own running sum.
    fn push_entry_at(
        &mut self,
        ctx: &OperationContext,
        kind: EntryKind,
        amount: Decimal,
        grant_id: Option<GrantId>,
        meter_code: Option<&str>,
        balance_after: Decimal,
    ) {
        let mut entry = self.next_entry(ctx, kind, amount, grant_id, None, meter_code, None, None);
        entry.balance_after = balance_after;
        self.append(entry);
    }

    fn push_event(
        &mut self,
        ctx: &OperationContext,
        event_type: EventType,
        amount: Option<Decimal>,
        grant_id: Option<GrantId>,
        hold_id: Option<HoldId>,
        meter_code: Option<String>,
    ) {
        let available = self.balance(ctx.now).available;
        self.changes.events.push(Event {
            event_type,
            account_id: self.account.id,
            occurred_at: ctx.now,
            amount,
            available,
            grant_id,
            hold_id,
            idempotency_key: ctx.idempotency_key.clone(),
            correlation_id: ctx.correlation_id.clone(),
            meter_code,
            threshold: None,
            cap_percent: None,
            counterparty: None,
        });
    }
}

/// The UTC calendar month `now` falls in, as [start, end).
pub fn month_bounds(
    now: chrono::DateTime<chrono::Utc>,
) -> (chrono::DateTime<chrono::Utc>, chrono::DateTime<chrono::Utc>) {
    use chrono::{Datelike, TimeZone};
    let start = chrono::Utc.with_ymd_and_hms(now.year(), now.month(), 1, 0, 0, 0).single().unwrap_or(now);
    let (year, month) = if now.month() == 12 { (now.year() + 1, 1) } else { (now.year(), now.month() + 1) };
    let end = chrono::Utc.with_ymd_and_hms(year, month, 1, 0, 0, 0).single().unwrap_or(now);
    (start, end)
}
