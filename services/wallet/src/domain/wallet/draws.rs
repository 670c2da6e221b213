//! Drawing a wallet down: a debit, metering's usage lines, and the order
//! and fit of the grants they draw from.

use rust_decimal::Decimal;

use super::*;

impl Wallet {
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
            let events =
                outcomes.iter().zip(amounts).filter(|(outcome, amount)| outcome.is_none() && !amount.is_zero());
            self.write_taken(ctx, meter_code, &taken, charged, events.count());
            self.push_event(ctx, EventType::Debited, Some(charged), None, None, Some(meter_code.to_owned()));
        }
        self.update_alerts(ctx);
        Ok(UsageDrawn { outcomes, charged })
    }

    /// The DEBIT entries of what a usage draw took (`total` in all, over
    /// `events` amounts), one per grant (and one for the overdraft): each
    /// carries the running balance as of its own amount, and the count.
    pub(super) fn write_taken(
        &mut self,
        ctx: &OperationContext,
        meter_code: &str,
        taken: &[(Option<GrantId>, Decimal)],
        total: Decimal,
        events: usize,
    ) {
        let mut entry_ctx = ctx.clone();
        entry_ctx.metadata.insert("events".to_owned(), events.to_string());
        let mut balance = self.ledger_balance() + total;
        for (grant_id, amount) in taken {
            balance -= *amount;
            self.push_entry_at(&entry_ctx, EntryKind::Debit, -*amount, *grant_id, Some(meter_code), balance);
        }
    }

    /// Takes `amount` from the grants in drawdown order and the rest from the
    /// overdraft, adding what each gave to `taken` instead of writing entries.
    pub(super) fn take(
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

    /// The grants a draw takes from, in drawdown order: grants restricted to
    /// the meter, then lower priority numbers, then earlier expiry, then older.
    pub(super) fn drawdown_order(
        &self,
        ctx: &OperationContext,
        meter_code: Option<&str>,
        any_grant: bool,
    ) -> Vec<usize> {
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
    pub(super) fn check_fit(
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
    pub(super) fn draw(
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
}

/// Adds what a grant (or the overdraft) gave to a draw's totals.
fn add_taken(taken: &mut Vec<(Option<GrantId>, Decimal)>, grant: Option<GrantId>, amount: Decimal) {
    match taken.iter_mut().find(|(id, _)| *id == grant) {
        Some((_, total)) => *total += amount,
        None => taken.push((grant, amount)),
    }
}
