//! Shared budgets: a child account that draws on its parent's credits past
//! its own, up to a limit per day or month. A child's debit takes its own
//! credits first; the rest is a debit of the parent, decided by the
//! parent's rules alone (grants, priorities, expiry, holds, spending cap,
//! overdraft), and is recorded on the child as one PARENT_DRAW entry that
//! moves nothing there. Both wallets and the budget change together or not
//! at all.

use chrono::{DateTime, Datelike, TimeZone, Utc};
use rust_decimal::Decimal;

use super::*;

/// The period a child's limit counts over (UTC).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BudgetPeriod {
    Day,
    Month,
}

impl BudgetPeriod {
    pub fn name(self) -> &'static str {
        match self {
            Self::Day => "DAY",
            Self::Month => "MONTH",
        }
    }

    pub fn from_name(name: &str) -> Option<Self> {
        [Self::Day, Self::Month].into_iter().find(|period| period.name() == name)
    }

    /// The period `at` falls in, as stored: "2026-12-07" or "2026-12".
    pub fn key(self, at: DateTime<Utc>) -> String {
        match self {
            Self::Day => day_key(at),
            Self::Month => month_key(at),
        }
    }

    /// The first instant of the period `at` falls in.
    pub fn start(self, at: DateTime<Utc>) -> DateTime<Utc> {
        let day = match self {
            Self::Day => at.day(),
            Self::Month => 1,
        };
        Utc.with_ymd_and_hms(at.year(), at.month(), day, 0, 0, 0).single().unwrap_or(at)
    }
}

/// A child's draws on its parent: its limit per period and what it drew
/// in the period `period_key` names.
#[derive(Debug, Clone, PartialEq)]
pub struct Budget {
    pub account_id: AccountId,
    pub parent_id: AccountId,
    /// None: no limit (the parent's funds and cap still bound the draws).
    pub limit: Option<Decimal>,
    pub period: BudgetPeriod,
    pub period_key: String,
    pub spent: Decimal,
}

impl Budget {
    /// What was drawn in the period of `now`: nothing once the period turned.
    pub fn spent_at(&self, now: DateTime<Utc>) -> Decimal {
        if self.period_key == self.period.key(now) { self.spent } else { Decimal::ZERO }
    }

    /// What may still be drawn in the period of `now`; None without a limit.
    pub fn remaining_at(&self, now: DateTime<Utc>) -> Option<Decimal> {
        self.limit.map(|limit| (limit - self.spent_at(now)).max(Decimal::ZERO))
    }

    /// Refuses `amount` drawn at `now` past the limit (which may be reached).
    fn check(&self, now: DateTime<Utc>, amount: Decimal) -> DomainResult<()> {
        if self.limit.is_some_and(|limit| self.spent_at(now) + amount > limit) {
            return Err(DomainError::BudgetExceeded);
        }
        Ok(())
    }

    /// Counts `amount` drawn at `now`, or refuses it past the limit.
    fn draw(&mut self, now: DateTime<Utc>, amount: Decimal) -> DomainResult<()> {
        self.check(now, amount)?;
        self.spent = self.spent_at(now) + amount;
        self.period_key = self.period.key(now);
        Ok(())
    }
}

impl Wallet {
    /// What of `amount` this wallet pays from its own credits for a shared
    /// draw: what the grants for the meter hold beyond what active holds may
    /// need, never past the available balance; its overdraft is not used.
    fn own_share(&self, ctx: &OperationContext, amount: Decimal, meter_code: Option<&str>) -> Decimal {
        let eligible: Decimal =
            self.drawdown_order(ctx, meter_code, false).into_iter().map(|index| self.grants[index].remaining).sum();
        let view = self.balance(ctx.now);
        let free = (eligible - view.held.max(Decimal::ZERO)).min(view.available).max(Decimal::ZERO);
        amount.min(free)
    }

    /// A debit of this wallet (a child) that draws on `parent` past its own
    /// credits, within `budget`. The child's own credits go first (its
    /// spending cap counts the whole amount); the rest must fit the budget
    /// and is debited from the parent as the parent's own debit would be,
    /// its entries carrying the child's id. A refusal of either leaves both
    /// (and the budget) for the caller to discard.
    pub fn debit_shared(
        &mut self,
        parent: &mut Wallet,
        budget: &mut Budget,
        ctx: &OperationContext,
        amount: Decimal,
        meter_code: Option<&str>,
    ) -> DomainResult<()> {
        if budget.account_id != self.account.id || budget.parent_id != parent.account.id {
            return Err(DomainError::Inconsistent("the budget names other accounts"));
        }
        self.expire(&ctx.for_expiry());
        self.refuse_unless_active()?;
        self.check_cap(amount)?;
        let own = self.own_share(ctx, amount, meter_code);
        let rest = amount - own;
        if rest > Decimal::ZERO {
            budget.draw(ctx.now, rest)?;
            let mut parent_ctx = ctx.clone();
            parent_ctx.metadata.insert(CHILD_ACCOUNT_KEY.to_owned(), self.account.id.to_string());
            parent.debit(&parent_ctx, rest, meter_code)?;
        }
        if own > Decimal::ZERO {
            self.draw(ctx, own, meter_code, false, EntryKind::Debit, None);
        }
        if rest > Decimal::ZERO {
            let mut child_ctx = ctx.clone();
            child_ctx.metadata.insert(PARENT_ACCOUNT_KEY.to_owned(), parent.account.id.to_string());
            self.push_entry(&child_ctx, EntryKind::ParentDraw, -rest, None, None, meter_code, None, None);
        }
        self.account.spend.month_spend += amount;
        self.push_event(ctx, EventType::Debited, Some(amount), None, None, meter_code.map(str::to_owned));
        self.update_alerts(ctx);
        Ok(())
    }
}

impl Wallet {
    /// How a shared draw of `amount` splits, if it may be made: the child's
    /// own part and the parent's, checked as `debit_shared` checks them,
    /// nothing changed.
    fn split_shared(
        &self,
        parent: &Wallet,
        budget: &Budget,
        ctx: &OperationContext,
        amount: Decimal,
        meter_code: Option<&str>,
    ) -> DomainResult<(Decimal, Decimal)> {
        self.check_cap(amount)?;
        let own = self.own_share(ctx, amount, meter_code);
        let rest = amount - own;
        if rest > Decimal::ZERO {
            budget.check(ctx.now, rest)?;
            parent.refuse_unless_active()?;
            parent.check_cap(rest)?;
            parent.check_fit(ctx, rest, meter_code, false, Decimal::ZERO)?;
        }
        Ok((own, rest))
    }

    /// A child's usage line (see [`Wallet::draw_usage`]): each amount in
    /// order is charged if it fits as a shared debit of it alone would (its
    /// own credits first, the rest from the parent within the budget) and
    /// left uncovered with the reason otherwise. Then what was taken is
    /// written at once: the child's DEBIT entries for its own part and one
    /// PARENT_DRAW entry, the parent's DEBIT entries (naming the child), and
    /// one DEBITED event on each.
    pub fn draw_usage_shared(
        &mut self,
        parent: &mut Wallet,
        budget: &mut Budget,
        ctx: &OperationContext,
        meter_code: &str,
        amounts: &[Decimal],
    ) -> DomainResult<UsageDrawn> {
        if budget.account_id != self.account.id || budget.parent_id != parent.account.id {
            return Err(DomainError::Inconsistent("the budget names other accounts"));
        }
        self.expire(&ctx.for_expiry());
        parent.expire(&ctx.for_expiry());
        self.refuse_unless_active()?;
        let meter = Some(meter_code);
        let mut outcomes = Vec::with_capacity(amounts.len());
        let (mut own_taken, mut parent_taken) = (Vec::new(), Vec::new());
        let (mut own_total, mut parent_total) = (Decimal::ZERO, Decimal::ZERO);
        let (mut own_events, mut parent_events) = (0, 0);
        for amount in amounts {
            if amount.is_zero() {
                outcomes.push(None);
                continue;
            }
            match self.split_shared(parent, budget, ctx, *amount, meter) {
                Ok((own, rest)) => {
                    if own > Decimal::ZERO {
                        self.take(ctx, own, meter, &mut own_taken);
                        own_total += own;
                        own_events += 1;
                    }
                    if rest > Decimal::ZERO {
                        budget.draw(ctx.now, rest)?;
                        parent.take(ctx, rest, meter, &mut parent_taken);
                        parent.account.spend.month_spend += rest;
                        parent_total += rest;
                        parent_events += 1;
                    }
                    self.account.spend.month_spend += *amount;
                    outcomes.push(None);
                }
                Err(error) => outcomes.push(Some(error)),
            }
        }
        if !own_total.is_zero() {
            self.write_taken(ctx, meter_code, &own_taken, own_total, own_events);
        }
        if !parent_total.is_zero() {
            let mut parent_ctx = ctx.clone();
            parent_ctx.metadata.insert(CHILD_ACCOUNT_KEY.to_owned(), self.account.id.to_string());
            parent.write_taken(&parent_ctx, meter_code, &parent_taken, parent_total, parent_events);
            parent.push_event(
                &parent_ctx,
                EventType::Debited,
                Some(parent_total),
                None,
                None,
                Some(meter_code.to_owned()),
            );
            let mut child_ctx = ctx.clone();
            child_ctx.metadata.insert(PARENT_ACCOUNT_KEY.to_owned(), parent.account.id.to_string());
            child_ctx.metadata.insert("events".to_owned(), parent_events.to_string());
            self.push_entry(&child_ctx, EntryKind::ParentDraw, -parent_total, None, None, meter, None, None);
        }
        let charged = own_total + parent_total;
        if !charged.is_zero() {
            self.push_event(ctx, EventType::Debited, Some(charged), None, None, Some(meter_code.to_owned()));
        }
        parent.update_alerts(ctx);
        self.update_alerts(ctx);
        Ok(UsageDrawn { outcomes, charged })
    }
}

/// The metadata key a parent's entries name the drawing child by.
pub const CHILD_ACCOUNT_KEY: &str = "child_account_id";
/// The metadata key a child's PARENT_DRAW entry names the parent by.
pub const PARENT_ACCOUNT_KEY: &str = "parent_account_id";
