//! Credits in and corrections: grants (and the overdraft they repay first),
//! adjustments, refunds of earlier debits, voided grants and transfers
//! between accounts.

use rust_decimal::Decimal;

use super::*;

impl Wallet {
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

    /// A new period's credits with the previous period's rolled over, in one
    /// change: what is left of `rollover.from` (if it is still live), up to
    /// its maximum, moves by two ROLLOVER entries into a grant of its own
    /// (same kind, priority and meters, its own expiry), the rest expires;
    /// then the new credits are granted. Returns the new grant and the
    /// rolled-over one, if anything was carried.
    pub fn grant_rolling_over(
        &mut self,
        ctx: &OperationContext,
        new: NewGrant,
        rollover: &Rollover,
    ) -> DomainResult<(GrantId, Option<GrantId>)> {
        self.expire(&ctx.for_expiry());
        self.refuse_if_closed()?;
        self.check_credit_fits(new.amount)?;
        let rolled = self.roll_over(ctx, rollover);
        let id = self.create_grant(ctx, new, EntryKind::Grant, None);
        self.repay_overdraft(ctx, id);
        self.update_alerts(ctx);
        Ok((id, rolled))
    }

    fn roll_over(&mut self, ctx: &OperationContext, rollover: &Rollover) -> Option<GrantId> {
        // A grant already written off (expired, voided) has nothing left to
        // carry; one not yet in effect is no earlier period's, and is left be.
        let index = self.grants.iter().position(|grant| {
            grant.id == rollover.from && grant.status == GrantStatus::Active && grant.effective_at <= ctx.now
        })?;
        let old = &self.grants[index];
        let (old_id, left) = (old.id, old.remaining);
        let cap = match rollover.max {
            RolloverMax::All => left,
            RolloverMax::Amount(max) => max,
            RolloverMax::Percent(percent) => (old.original * Decimal::from(percent) / Decimal::ONE_HUNDRED)
                .round_dp_with_strategy(self.account.unit.scale(), rust_decimal::RoundingStrategy::ToZero),
        };
        // Credits that would expire on arrival are not carried.
        let lapsed = rollover.expires_at.is_some_and(|at| at <= ctx.now);
        let carried = if lapsed { Decimal::ZERO } else { cap.min(left).max(Decimal::ZERO) };
        let carry = NewGrant {
            amount: carried,
            kind: old.kind,
            priority: Some(old.priority),
            effective_at: None,
            expires_at: rollover.expires_at,
            meter_codes: old.meter_codes.clone(),
            source: GrantSource::Rollover,
            source_reference: old_id.to_string(),
            metadata: old.metadata.clone(),
        };
        self.grants[index].status = GrantStatus::Expired;
        self.changes.touched_grants.insert(old_id);
        // Each entry written as its amount moves, so each balance after is the running sum.
        let rolled = (carried > Decimal::ZERO).then(|| {
            self.grants[index].remaining -= carried;
            self.push_entry(
                ctx,
                EntryKind::Rollover,
                -carried,
                Some(old_id),
                None,
                None,
                Some("credits rolled over"),
                None,
            );
            self.create_grant(ctx, carry, EntryKind::Rollover, None)
        });
        let forfeited = left - carried;
        if forfeited > Decimal::ZERO {
            self.grants[index].remaining = Decimal::ZERO;
            self.push_entry(
                ctx,
                EntryKind::Expiry,
                -forfeited,
                Some(old_id),
                None,
                None,
                Some("credits not rolled over"),
                None,
            );
            self.push_event(ctx, EventType::GrantExpired, Some(forfeited), Some(old_id), None, None);
        }
        rolled
    }

    pub(super) fn create_grant(
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

    /// Takes back at most `amount` of what is left of a grant (a bonus whose
    /// purchase was refunded): one VOID entry for what was taken, the grant
    /// otherwise as it was. A grant with nothing left (spent, expired or
    /// voided) gives nothing, which is the answer, not an error: what could
    /// not be taken is the caller's to record. Holds are not spared, as a
    /// void does not spare them. Answers what was taken.
    pub fn claw_back(&mut self, ctx: &OperationContext, grant_id: GrantId, amount: Decimal) -> DomainResult<Decimal> {
        self.expire(&ctx.for_expiry());
        let index = self
            .grants
            .iter()
            .position(|grant| grant.id == grant_id)
            .ok_or(DomainError::Inconsistent("the grant to claw back from was not loaded"))?;
        let grant = &mut self.grants[index];
        if grant.status != GrantStatus::Active {
            return Ok(Decimal::ZERO);
        }
        let taken = amount.min(grant.remaining).max(Decimal::ZERO);
        if taken.is_zero() {
            return Ok(Decimal::ZERO);
        }
        grant.remaining -= taken;
        self.changes.touched_grants.insert(grant_id);
        self.push_entry(ctx, EntryKind::Void, -taken, Some(grant_id), None, None, None, None);
        self.update_alerts(ctx);
        Ok(taken)
    }

    /// Tells of a transfer of `amount` to `to` that a fraud rule held for
    /// review (`held`) or that an operator rejected: an event, nothing moved.
    pub fn note_transfer_review(&mut self, ctx: &OperationContext, to: AccountId, amount: Decimal, held: bool) {
        let event_type = if held { EventType::TransferHeld } else { EventType::TransferRejected };
        self.push_event(ctx, event_type, Some(amount), None, None, None);
        if let Some(event) = self.changes.events.last_mut() {
            event.counterparty = Some(to);
        }
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

    /// Credits added while the overdraft is in use pay it back before they
    /// can be spent. Only credits usable now by any meter do: restricted or
    /// future credits cannot stand in for general debt.
    pub(super) fn repay_overdraft(&mut self, ctx: &OperationContext, grant_id: GrantId) {
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

    pub(super) fn refund_to_grant(
        &mut self,
        ctx: &OperationContext,
        grant_id: GrantId,
        part: Decimal,
        refunded: EntryId,
    ) {
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
    pub(super) fn refund_overdraft_part(&mut self, ctx: &OperationContext, part: Decimal, refunded: &Entry) {
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
}
