//! Holds: funds reserved for a charge to come, then captured (in part or
//! whole) or released.

use rust_decimal::Decimal;

use super::*;

impl Wallet {
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
}
