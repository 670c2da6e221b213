//! One wallet's operations. Every public operation first writes off what has
//! expired by its instant, then checks everything it needs before it changes
//! anything, so a refused operation leaves the wallet as it found it (apart
//! from those expiries, which are true whatever happens next).

use std::collections::BTreeSet;

use chrono::Duration;
use rust_decimal::Decimal;

use super::types::*;

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
            version: 0,
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

    /// Adds a grant; if it is usable now and unrestricted it first repays the overdraft.
    pub fn grant(&mut self, ctx: &OperationContext, new: NewGrant) -> DomainResult<GrantId> {
        self.expire(&ctx.for_expiry());
        self.refuse_if_closed()?;
        self.check_credit_fits(new.amount)?;
        let id = self.create_grant(ctx, new, EntryKind::Grant, None);
        self.repay_overdraft(ctx, id);
        self.update_alerts(ctx);
        Ok(id)
    }

    /// Draws `amount` from the grants that apply to `meter_code`, in drawdown
    /// order, and the rest from the overdraft as the policy allows.
    pub fn debit(&mut self, ctx: &OperationContext, amount: Decimal, meter_code: Option<&str>) -> DomainResult<()> {
        self.expire(&ctx.for_expiry());
        self.refuse_unless_active()?;
        self.check_cap(amount)?;
        self.check_fit(ctx, amount, meter_code, false, Decimal::ZERO)?;
        self.draw(ctx, amount, meter_code, false, EntryKind::Debit, None);
        self.account.spend.month_spend += amount;
        self.push_event(ctx, EventType::Debited, Some(amount), None, None, meter_code.map(str::to_owned));
        self.update_alerts(ctx);
        Ok(())
    }

    /// Draws usage of one meter in aggregate: each amount, in order, is
    /// charged if it fits (funds, overdraft, spending cap) as a debit of it
    /// alone would, and is left uncovered with the reason otherwise; then
    /// what was charged is drawn at once, one entry per grant touched (and
    /// one for the overdraft part), and one DEBITED event. Taking amounts
    /// from grants in drawdown order one after another takes from each grant
    /// exactly what one draw of their sum takes, so the entries add up to
    /// the per-amount answers. A wallet that takes no debits refuses the
    /// whole line.
    pub fn draw_usage(
        &mut self,
        ctx: &OperationContext,
        meter_code: &str,
        amounts: &[Decimal],
    ) -> DomainResult<UsageDrawn> {
        self.expire(&ctx.for_expiry());
        self.refuse_unless_active()?;
        let meter = Some(meter_code);
        let mut outcomes = Vec::with_capacity(amounts.len());
        // What each grant (None: the overdraft) gave, in the order first drawn.
        let mut taken: Vec<(Option<GrantId>, Decimal)> = Vec::new();
        let mut charged = Decimal::ZERO;
        for amount in amounts {
            if amount.is_zero() {
                outcomes.push(None);
                continue;
            }
            match self.check_cap(*amount).and_then(|()| self.check_fit(ctx, *amount, meter, false, Decimal::ZERO)) {
                Ok(()) => {
                    self.take(ctx, *amount, meter, &mut taken);
                    self.account.spend.month_spend += *amount;
                    charged += *amount;
                    outcomes.push(None);
                }
                Err(error) => outcomes.push(Some(error)),
            }
        }
        if !charged.is_zero() {
            // Entries carry the running balance as of their own amounts, and
            // how many amounts the draw charged.
            let events =
                outcomes.iter().zip(amounts).filter(|(outcome, amount)| outcome.is_none() && !amount.is_zero());
            let mut entry_ctx = ctx.clone();
            entry_ctx.metadata.insert("events".to_owned(), events.count().to_string());
            let mut balance = self.ledger_balance() + charged;
            for (grant_id, amount) in &taken {
                balance -= *amount;
                self.push_entry_at(&entry_ctx, EntryKind::Debit, -*amount, *grant_id, meter, balance);
            }
            self.push_event(ctx, EventType::Debited, Some(charged), None, None, Some(meter_code.to_owned()));
        }
        self.update_alerts(ctx);
        Ok(UsageDrawn { outcomes, charged })
    }

    /// Takes `amount` from the grants in drawdown order and the rest from the
    /// overdraft, adding what each gave to `taken` instead of writing entries.
    fn take(
        &mut self,
        ctx: &OperationContext,
        amount: Decimal,
        meter_code: Option<&str>,
        taken: &mut Vec<(Option<GrantId>, Decimal)>,
    ) {
        let mut left = amount;
        for index in self.drawdown_order(ctx, meter_code, false) {
            if left.is_zero() {
                break;
            }
            let grant = &mut self.grants[index];
            let take = left.min(grant.remaining);
            grant.remaining -= take;
            left -= take;
            let id = grant.id;
            self.changes.touched_grants.insert(id);
            add_taken(taken, Some(id), take);
        }
        if left > Decimal::ZERO {
            self.account.overdraft_used += left;
            add_taken(taken, None, left);
        }
    }

    /// Sets `amount` aside until `ttl` has passed.
    pub fn reserve(
        &mut self,
        ctx: &OperationContext,
        amount: Decimal,
        ttl: Duration,
        meter_code: Option<&str>,
    ) -> DomainResult<HoldId> {
        self.expire(&ctx.for_expiry());
        self.refuse_unless_active()?;
        self.check_cap(amount)?;
        self.check_fit(ctx, amount, meter_code, false, Decimal::ZERO)?;
        let hold = Hold {
            id: HoldId::generate(),
            account_id: self.account.id,
            amount,
            captured: Decimal::ZERO,
            status: HoldStatus::Active,
            meter_code: meter_code.map(str::to_owned),
            expires_at: ctx.now + ttl,
            created_at: ctx.now,
        };
        let id = hold.id;
        self.holds.push(hold);
        self.account.held += amount;
        self.changes.new_holds.insert(id);
        self.push_entry(ctx, EntryKind::Hold, -amount, None, Some(id), meter_code, None, None);
        self.push_event(ctx, EventType::HoldCreated, Some(amount), None, Some(id), meter_code.map(str::to_owned));
        self.update_alerts(ctx);
        Ok(id)
    }

    /// Debits up to the held amount and frees the rest.
    pub fn capture(&mut self, ctx: &OperationContext, hold_id: HoldId, amount: Decimal) -> DomainResult<()> {
        self.expire(&ctx.for_expiry());
        self.refuse_if_closed()?;
        let hold = self.hold_by_id(hold_id).ok_or(DomainError::HoldNotActive("unknown"))?.clone();
        match hold.status {
            HoldStatus::Active => {}
            HoldStatus::Expired => return Err(DomainError::HoldExpired),
            HoldStatus::Captured => return Err(DomainError::HoldNotActive("captured")),
            HoldStatus::Released => return Err(DomainError::HoldNotActive("released")),
        }
        if amount > hold.amount {
            return Err(DomainError::CaptureExceedsHold);
        }
        let meter = hold.meter_code.as_deref();
        // No cap check: the hold counted against the cap when it was made,
        // and an authorisation stands even if the cap was lowered since.
        self.check_fit(ctx, amount, meter, false, hold.amount)?;
        self.account.held -= hold.amount;
        self.draw(ctx, amount, meter, false, EntryKind::Capture, Some(hold_id));
        self.account.spend.month_spend += amount;
        let rest = hold.amount - amount;
        if rest > Decimal::ZERO {
            self.push_entry(ctx, EntryKind::Release, rest, None, Some(hold_id), meter, None, None);
        }
        if let Some(stored) = self.holds.iter_mut().find(|stored| stored.id == hold_id) {
            stored.status = HoldStatus::Captured;
            stored.captured = amount;
        }
        self.changes.touched_holds.insert(hold_id);
        self.push_event(ctx, EventType::HoldCaptured, Some(amount), None, Some(hold_id), hold.meter_code.clone());
        self.update_alerts(ctx);
        Ok(())
    }

    /// Frees a hold without debiting anything.
    pub fn release(&mut self, ctx: &OperationContext, hold_id: HoldId) -> DomainResult<()> {
        self.expire(&ctx.for_expiry());
        let hold = self.hold_by_id(hold_id).ok_or(DomainError::HoldNotActive("unknown"))?.clone();
        match hold.status {
            HoldStatus::Active => {}
            HoldStatus::Expired => return Err(DomainError::HoldExpired),
            HoldStatus::Captured => return Err(DomainError::HoldNotActive("captured")),
            HoldStatus::Released => return Err(DomainError::HoldNotActive("released")),
        }
        self.account.held -= hold.amount;
        if let Some(stored) = self.holds.iter_mut().find(|stored| stored.id == hold_id) {
            stored.status = HoldStatus::Released;
        }
        self.changes.touched_holds.insert(hold_id);
        let meter = hold.meter_code.as_deref();
        self.push_entry(ctx, EntryKind::Release, hold.amount, None, Some(hold_id), meter, None, None);
        self.push_event(ctx, EventType::HoldReleased, Some(hold.amount), None, Some(hold_id), hold.meter_code.clone());
        self.update_alerts(ctx);
        Ok(())
    }

    /// An operator's correction: a positive amount becomes a courtesy grant
    /// (which repays the overdraft first); a negative one is drawn from any
    /// grant, restricted or not, within the overdraft policy.
    pub fn adjust(&mut self, ctx: &OperationContext, amount: Decimal) -> DomainResult<Option<GrantId>> {
        self.expire(&ctx.for_expiry());
        self.refuse_if_closed()?;
        let grant = if amount > Decimal::ZERO {
            self.check_credit_fits(amount)?;
            let new = NewGrant {
                amount,
                kind: GrantKind::Courtesy,
                priority: None,
                effective_at: None,
                expires_at: None,
                meter_codes: Vec::new(),
                source: GrantSource::Adjustment,
                source_reference: String::new(),
                metadata: ctx.metadata.clone(),
            };
            let id = self.create_grant(ctx, new, EntryKind::Adjustment, None);
            self.repay_overdraft(ctx, id);
            Some(id)
        } else {
            let taken = -amount;
            self.check_fit(ctx, taken, None, true, Decimal::ZERO)?;
            self.draw(ctx, taken, None, true, EntryKind::Adjustment, None);
            None
        };
        self.push_event(ctx, EventType::Adjusted, Some(amount), grant, None, None);
        self.update_alerts(ctx);
        Ok(grant)
    }

    /// Returns `amount` of the operation whose entries are `original` (a debit
    /// or a capture) to where it was drawn from, last drawn first: the
    /// overdraft, then the grants in reverse drawdown order. `prior_refunds`
    /// are the REFUND entries already written against those entries. Credits
    /// returned to a grant that has since expired or been voided are written
    /// off again at once: a refund gives back what was taken, no more.
    pub fn refund(
        &mut self,
        ctx: &OperationContext,
        original: &[Entry],
        prior_refunds: &[Entry],
        amount: Decimal,
    ) -> DomainResult<()> {
        self.expire(&ctx.for_expiry());
        self.refuse_if_closed()?;
        let refundable: Vec<(&Entry, Decimal)> = original
            .iter()
            .filter(|entry| matches!(entry.kind, EntryKind::Debit | EntryKind::Capture) && entry.amount < Decimal::ZERO)
            .map(|entry| {
                let refunded: Decimal = prior_refunds
                    .iter()
                    .filter(|refund| refund.refunded_entry_id == Some(entry.id))
                    .map(|refund| refund.amount)
                    .sum();
                (entry, -entry.amount - refunded)
            })
            .collect();
        if refundable.is_empty() {
            return Err(DomainError::EntryNotRefundable);
        }
        let left_total: Decimal = refundable.iter().map(|(_, left)| *left).sum();
        if amount > left_total {
            return Err(DomainError::RefundExceedsDebit);
        }
        self.check_credit_fits(amount)?;
        for (entry, _) in &refundable {
            if let Some(grant_id) = entry.grant_id
                && self.grant_by_id(grant_id).is_none()
            {
                return Err(DomainError::Inconsistent("the grant of a refunded entry was not loaded"));
            }
        }
        let mut to_refund = amount;
        let mut order = refundable;
        order.sort_by_key(|(entry, _)| std::cmp::Reverse(entry.sequence));
        for (entry, left) in order {
            if to_refund.is_zero() {
                break;
            }
            let part = to_refund.min(left);
            if part.is_zero() {
                continue;
            }
            to_refund -= part;
            // A refund of this month's spend gives that room back under the cap.
            if month_key(entry.created_at) == self.account.spend.month {
                self.account.spend.month_spend = (self.account.spend.month_spend - part).max(Decimal::ZERO);
            }
            match entry.grant_id {
                Some(grant_id) => self.refund_to_grant(ctx, grant_id, part, entry.id),
                None => self.refund_overdraft_part(ctx, part, entry),
            }
        }
        self.push_event(ctx, EventType::Refunded, Some(amount), None, None, None);
        self.update_alerts(ctx);
        Ok(())
    }

    /// Writes off what remains of a grant.
    pub fn void_grant(&mut self, ctx: &OperationContext, grant_id: GrantId) -> DomainResult<()> {
        self.expire(&ctx.for_expiry());
        let index = self
            .grants
            .iter()
            .position(|grant| grant.id == grant_id)
            .ok_or(DomainError::Inconsistent("the grant to void was not loaded"))?;
        match self.grants[index].status {
            GrantStatus::Active => {}
            GrantStatus::Expired => return Err(DomainError::GrantNotActive("expired")),
            GrantStatus::Voided => return Err(DomainError::GrantNotActive("voided")),
        }
        let remaining = self.grants[index].remaining;
        self.grants[index].status = GrantStatus::Voided;
        self.grants[index].remaining = Decimal::ZERO;
        self.changes.touched_grants.insert(grant_id);
        if remaining > Decimal::ZERO {
            self.push_entry(ctx, EntryKind::Void, -remaining, Some(grant_id), None, None, None, None);
        }
        self.push_event(ctx, EventType::GrantVoided, Some(remaining), Some(grant_id), None, None);
        self.update_alerts(ctx);
        Ok(())
    }

    /// Moves `amount` of credits to another account of the same tenant and
    /// unit. Credits leave in drawdown order from grants any meter may use
    /// (promotional ones only when `allow_promotional`), never from the
    /// overdraft or from what holds keep; each grant drawn becomes a grant of
    /// the receiver with the same kind, priority and expiry, which repays the
    /// receiver's overdraft first like any grant.
    pub fn transfer_to(
        &mut self,
        to: &mut Wallet,
        ctx: &OperationContext,
        amount: Decimal,
        allow_promotional: bool,
    ) -> DomainResult<()> {
        self.expire(&ctx.for_expiry());
        to.expire(&ctx.for_expiry());
        self.refuse_unless_active()?;
        to.refuse_if_closed()?;
        if self.account.unit != to.account.unit {
            return Err(DomainError::UnitMismatch);
        }
        if self.account.spend.transfer_max.is_some_and(|max| amount > max) {
            return Err(DomainError::TransferLimitExceeded("per-transfer"));
        }
        if self
            .account
            .spend
            .transfer_daily_limit
            .is_some_and(|limit| self.account.spend.transferred_today + amount > limit)
        {
            return Err(DomainError::TransferLimitExceeded("daily"));
        }
        let sources: Vec<usize> = self
            .drawdown_order(ctx, None, false)
            .into_iter()
            .filter(|&index| allow_promotional || self.grants[index].kind != GrantKind::Promotional)
            .collect();
        let transferable: Decimal = sources.iter().map(|&index| self.grants[index].remaining).sum();
        let view = self.balance(ctx.now);
        // Holds keep their guarantee, as for a debit, and nothing is drawn on the overdraft.
        if transferable - view.held < amount || view.available < amount {
            return Err(DomainError::InsufficientFunds);
        }
        to.check_credit_fits(amount)?;
        let mut left = amount;
        for index in sources {
            if left.is_zero() {
                break;
            }
            let take = left.min(self.grants[index].remaining);
            left -= take;
            self.grants[index].remaining -= take;
            let source = self.grants[index].clone();
            self.changes.touched_grants.insert(source.id);
            let out = if ctx.description.is_empty() {
                format!("transfer to {}", to.account.id)
            } else {
                ctx.description.clone()
            };
            self.push_entry(ctx, EntryKind::TransferOut, -take, Some(source.id), None, None, Some(&out), None);
            let new = NewGrant {
                amount: take,
                kind: source.kind,
                priority: Some(source.priority),
                effective_at: None,
                expires_at: source.expires_at,
                meter_codes: Vec::new(),
                source: GrantSource::Transfer,
                source_reference: source.id.to_string(),
                metadata: ctx.metadata.clone(),
            };
            let mut received = ctx.clone();
            if received.description.is_empty() {
                received.description = format!("transfer from {}", self.account.id);
            }
            let id = to.create_grant(&received, new, EntryKind::TransferIn, None);
            to.repay_overdraft(&received, id);
        }
        self.account.spend.transferred_today += amount;
        self.push_event(ctx, EventType::TransferredOut, Some(amount), None, None, None);
        if let Some(event) = self.changes.events.last_mut() {
            event.counterparty = Some(to.account.id);
        }
        to.push_event(ctx, EventType::TransferredIn, Some(amount), None, None, None);
        if let Some(event) = to.changes.events.last_mut() {
            event.counterparty = Some(self.account.id);
        }
        self.update_alerts(ctx);
        to.update_alerts(ctx);
        Ok(())
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

    /// The grants a draw takes from, in drawdown order: grants restricted to
    /// the meter, then lower priority numbers, then earlier expiry, then older.
    fn drawdown_order(&self, ctx: &OperationContext, meter_code: Option<&str>, any_grant: bool) -> Vec<usize> {
        let mut order: Vec<usize> = (0..self.grants.len())
            .filter(|&index| {
                let grant = &self.grants[index];
                grant.is_usable(ctx.now)
                    && grant.remaining > Decimal::ZERO
                    && (any_grant || grant.applies_to(meter_code))
            })
            .collect();
        order.sort_by_key(|&index| {
            let grant = &self.grants[index];
            let restricted_to_meter = !grant.meter_codes.is_empty() && grant.applies_to(meter_code);
            (
                !restricted_to_meter,
                grant.priority,
                grant.expires_at.is_none(),
                grant.expires_at,
                grant.created_sequence,
                grant.id,
            )
        });
        order
    }

    /// Whether `amount` can be drawn for `meter_code`, counting `freed` (a hold
    /// about to be captured) as available.
    fn check_fit(
        &self,
        ctx: &OperationContext,
        amount: Decimal,
        meter_code: Option<&str>,
        any_grant: bool,
        freed: Decimal,
    ) -> DomainResult<()> {
        let eligible: Decimal =
            self.drawdown_order(ctx, meter_code, any_grant).into_iter().map(|index| self.grants[index].remaining).sum();
        let view = self.balance(ctx.now);
        let available = view.available + freed;
        // Active holds (but the one being captured) keep their guarantee: the
        // grants this draw may use count only for what those holds could
        // still need. Holds are not tied to grants, so this is conservative.
        let reserved = (view.held - freed).max(Decimal::ZERO);
        let uncovered = (amount - (eligible - reserved).max(Decimal::ZERO)).max(Decimal::ZERO);
        let needs_overdraft = !uncovered.is_zero() || available - amount < Decimal::ZERO;
        if self.account.credit_blocked && needs_overdraft && self.account.overdraft != Overdraft::None {
            return Err(DomainError::CreditBlocked);
        }
        let fits = match self.account.overdraft {
            Overdraft::None => uncovered.is_zero() && available - amount >= Decimal::ZERO,
            Overdraft::CreditLimit(limit) => {
                self.account.overdraft_used + uncovered <= limit && available - amount >= -limit
            }
            Overdraft::Unlimited => self.account.overdraft_used + uncovered < balance_limit(),
        };
        if fits { Ok(()) } else { Err(DomainError::InsufficientFunds) }
    }

    /// Takes `amount` from the grants in drawdown order, one entry per grant,
    /// and the rest from the overdraft. The caller has checked it fits.
    fn draw(
        &mut self,
        ctx: &OperationContext,
        amount: Decimal,
        meter_code: Option<&str>,
        any_grant: bool,
        kind: EntryKind,
        hold: Option<HoldId>,
    ) {
        let mut left = amount;
        for index in self.drawdown_order(ctx, meter_code, any_grant) {
            if left.is_zero() {
                break;
            }
            let grant = &mut self.grants[index];
            let take = left.min(grant.remaining);
            grant.remaining -= take;
            left -= take;
            let id = grant.id;
            self.changes.touched_grants.insert(id);
            self.push_entry(ctx, kind, -take, Some(id), hold, meter_code, None, None);
        }
        if left > Decimal::ZERO {
            self.account.overdraft_used += left;
            self.push_entry(ctx, kind, -left, None, hold, meter_code, None, None);
        }
    }

    fn create_grant(
        &mut self,
        ctx: &OperationContext,
        new: NewGrant,
        entry_kind: EntryKind,
        refunded_entry: Option<EntryId>,
    ) -> GrantId {
        let id = GrantId::generate();
        let grant = Grant {
            id,
            account_id: self.account.id,
            kind: new.kind,
            source: new.source,
            source_reference: new.source_reference,
            original: new.amount,
            remaining: new.amount,
            priority: new.priority.unwrap_or_else(|| new.kind.default_priority()),
            effective_at: new.effective_at.unwrap_or(ctx.now),
            expires_at: new.expires_at,
            meter_codes: new.meter_codes,
            status: GrantStatus::Active,
            metadata: new.metadata,
            created_at: ctx.now,
            created_sequence: self.account.last_sequence + 1,
        };
        self.grants.push(grant);
        self.changes.new_grants.insert(id);
        self.changes.touched_grants.insert(id);
        self.push_entry(ctx, entry_kind, new.amount, Some(id), None, None, None, refunded_entry);
        self.push_event(ctx, EventType::GrantCreated, Some(new.amount), Some(id), None, None);
        id
    }

    /// Credits added while the overdraft is in use pay it back before they
    /// can be spent. Only credits usable now by any meter do: restricted or
    /// future credits cannot stand in for general debt.
    fn repay_overdraft(&mut self, ctx: &OperationContext, grant_id: GrantId) {
        if self.account.overdraft_used.is_zero() {
            return;
        }
        let Some(index) = self.grants.iter().position(|grant| grant.id == grant_id) else {
            return;
        };
        let grant = &self.grants[index];
        if !grant.is_usable(ctx.now) || !grant.meter_codes.is_empty() || grant.remaining.is_zero() {
            return;
        }
        let repaid = grant.remaining.min(self.account.overdraft_used);
        self.grants[index].remaining -= repaid;
        self.changes.touched_grants.insert(grant_id);
        self.push_entry(
            ctx,
            EntryKind::Adjustment,
            -repaid,
            Some(grant_id),
            None,
            None,
            Some(OVERDRAFT_REPAYMENT),
            None,
        );
        self.account.overdraft_used -= repaid;
        self.push_entry(ctx, EntryKind::Adjustment, repaid, None, None, None, Some(OVERDRAFT_REPAYMENT), None);
    }

    fn refund_to_grant(&mut self, ctx: &OperationContext, grant_id: GrantId, part: Decimal, refunded: EntryId) {
        let Some(index) = self.grants.iter().position(|grant| grant.id == grant_id) else {
            return;
        };
        self.grants[index].remaining += part;
        self.changes.touched_grants.insert(grant_id);
        self.push_entry(ctx, EntryKind::Refund, part, Some(grant_id), None, None, None, Some(refunded));
        let grant = &self.grants[index];
        let write_off = match grant.status {
            GrantStatus::Expired => Some(EntryKind::Expiry),
            GrantStatus::Voided => Some(EntryKind::Void),
            GrantStatus::Active if grant.is_past_expiry(ctx.now) => Some(EntryKind::Expiry),
            GrantStatus::Active => None,
        };
        match write_off {
            Some(kind) => {
                self.grants[index].remaining -= part;
                let description = if kind == EntryKind::Expiry {
                    "refunded credits had expired"
                } else {
                    "refunded credits were voided"
                };
                self.push_entry(ctx, kind, -part, Some(grant_id), None, None, Some(description), None);
            }
            None => self.repay_overdraft(ctx, grant_id),
        }
    }

    /// The overdraft part of a debit is refunded by reducing what is owed; if
    /// a later grant already repaid it, the customer paid it with credits, so
    /// the excess comes back as paid credits.
    fn refund_overdraft_part(&mut self, ctx: &OperationContext, part: Decimal, refunded: &Entry) {
        let reduce = part.min(self.account.overdraft_used);
        if reduce > Decimal::ZERO {
            self.account.overdraft_used -= reduce;
            self.push_entry(ctx, EntryKind::Refund, reduce, None, None, None, None, Some(refunded.id));
        }
        let excess = part - reduce;
        if excess > Decimal::ZERO {
            let new = NewGrant {
                amount: excess,
                kind: GrantKind::Paid,
                priority: None,
                effective_at: None,
                expires_at: None,
                meter_codes: Vec::new(),
                source: GrantSource::Adjustment,
                source_reference: refunded.id.to_string(),
                metadata: Metadata::new(),
            };
            self.create_grant(ctx, new, EntryKind::Refund, Some(refunded.id));
        }
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
        self.account.last_sequence += 1;
        self.account.updated_at = ctx.now;
        let entry = Entry {
            id: EntryId::of(self.account.number, self.account.last_sequence),
            account_id: self.account.id,
            operation_id: ctx.operation_id,
            sequence: self.account.last_sequence,
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
        };
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
        self.push_entry(ctx, kind, amount, grant_id, None, meter_code, None, None);
        if let Some(entry) = self.changes.entries.last_mut() {
            entry.balance_after = balance_after;
        }
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

/// Adds what a grant (or the overdraft) gave to a draw's totals.
fn add_taken(taken: &mut Vec<(Option<GrantId>, Decimal)>, grant: Option<GrantId>, amount: Decimal) {
    match taken.iter_mut().find(|(id, _)| *id == grant) {
        Some((_, total)) => *total += amount,
        None => taken.push((grant, amount)),
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
