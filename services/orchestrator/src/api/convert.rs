//! Stored values → wire messages.

use reservoir_common::time::to_timestamp;
use reservoir_proto::orchestrator as pb;
use rust_decimal::Decimal;

use crate::domain::{Bonus, Carry, Clawback, Interval, Outcome, Status, Step, Strategy, Trigger};
use crate::store::{AutoReplenishRow, RecurringRow, StepLine, StoredEvent, TopUpRow};

fn decimal(value: Decimal) -> String {
    value.normalize().to_string()
}

fn optional(value: Option<Decimal>) -> String {
    value.map(decimal).unwrap_or_default()
}

fn status(status: Status) -> pb::TopUpStatus {
    match status {
        Status::Pending => pb::TopUpStatus::Pending,
        Status::RequiresAction => pb::TopUpStatus::RequiresAction,
        Status::Succeeded => pb::TopUpStatus::Succeeded,
        Status::Failed => pb::TopUpStatus::Failed,
    }
}

fn trigger(trigger: Trigger) -> pb::TopUpTrigger {
    match trigger {
        Trigger::Manual => pb::TopUpTrigger::Manual,
        Trigger::AutoReplenish => pb::TopUpTrigger::AutoReplenish,
        Trigger::Recurring => pb::TopUpTrigger::Recurring,
        Trigger::Voucher => pb::TopUpTrigger::Voucher,
    }
}

fn step(step: Step) -> pb::Step {
    match step {
        Step::CreateInvoice => pb::Step::CreateInvoice,
        Step::Charge => pb::Step::Charge,
        Step::AwaitPayment => pb::Step::AwaitPayment,
        Step::Grant => pb::Step::Grant,
        Step::MarkPaid => pb::Step::MarkPaid,
        Step::VoidInvoice => pb::Step::VoidInvoice,
        Step::RedeemVoucher => pb::Step::RedeemVoucher,
        Step::GrantBonus => pb::Step::GrantBonus,
        Step::Done => pb::Step::Unspecified,
    }
}

fn outcome(outcome: Outcome) -> pb::StepOutcome {
    match outcome {
        Outcome::Started => pb::StepOutcome::Started,
        Outcome::Succeeded => pb::StepOutcome::Succeeded,
        Outcome::Retrying => pb::StepOutcome::Retrying,
        Outcome::Failed => pb::StepOutcome::Failed,
        Outcome::Waiting => pb::StepOutcome::Waiting,
    }
}

fn id(value: Option<uuid::Uuid>) -> String {
    value.map(|id| id.to_string()).unwrap_or_default()
}

/// A top-up's bonus with what its refunds took back of it.
fn bonus_to_pb(bonus: &Bonus, clawbacks: &[Clawback]) -> pb::TopUpBonus {
    let applied = || clawbacks.iter().filter(|clawback| clawback.applied_at.is_some());
    let clawed_back: Decimal = applied().filter_map(|clawback| clawback.clawed_back).sum();
    let unrecovered: Decimal = applied().filter_map(Clawback::unrecovered).sum();
    pb::TopUpBonus {
        credits: decimal(bonus.credits),
        expires_at: bonus.expires_at.map(to_timestamp),
        priority: bonus.priority,
        grant_id: id(bonus.grant_id),
        clawbacks: clawbacks
            .iter()
            .map(|clawback| pb::BonusClawback {
                refund_id: clawback.refund_id.to_string(),
                refunded_amount: decimal(clawback.refunded_amount),
                asked: decimal(clawback.asked),
                clawed_back: optional(clawback.clawed_back),
                unrecovered: optional(clawback.unrecovered()),
                applied: clawback.applied_at.is_some(),
                refunded_at: Some(to_timestamp(clawback.refunded_at)),
                applied_at: clawback.applied_at.map(to_timestamp),
            })
            .collect(),
        clawed_back: decimal(clawed_back),
        unrecovered: decimal(unrecovered),
    }
}

pub fn top_up_to_pb(row: &TopUpRow, steps: &[StepLine], clawbacks: &[Clawback]) -> pb::TopUp {
    // The step it ended at, rather than DONE, which the wire does not name.
    let last_step = if row.step == Step::Done { steps.last().map_or(Step::Done, |line| line.step) } else { row.step };
    pb::TopUp {
        id: row.id.to_string(),
        account_id: row.account_id.to_string(),
        credits: decimal(row.credits),
        trigger: trigger(row.trigger).into(),
        status: status(row.status).into(),
        step: step(last_step).into(),
        invoice_id: id(row.invoice_id),
        payment_id: id(row.payment_id),
        grant_id: id(row.grant_id),
        voucher_id: id(row.voucher_id),
        payment_method_id: id(row.payment_method_id),
        reconcile_later: row.reconcile_later,
        amount: row.amount.map(|amount| amount.to_string()).unwrap_or_default(),
        currency: row.currency.clone(),
        reason: row.reason.clone(),
        steps: steps
            .iter()
            .map(|line| pb::StepRecord {
                step: step(line.step).into(),
                outcome: outcome(line.outcome).into(),
                attempt: line.attempt,
                detail: line.detail.clone(),
                at: Some(to_timestamp(line.at)),
            })
            .collect(),
        created_at: Some(to_timestamp(row.created_at)),
        updated_at: Some(to_timestamp(row.updated_at)),
        credits_expire_at: row.credits_expire_at.map(to_timestamp),
        bonus: row.bonus.as_ref().map(|bonus| bonus_to_pb(bonus, clawbacks)),
    }
}

pub fn auto_to_pb(row: &AutoReplenishRow) -> pb::AutoReplenish {
    let (fixed_amount, target_balance) = match row.settings.strategy {
        Strategy::Fixed(amount) => (decimal(amount), String::new()),
        Strategy::ToTarget(target) => (String::new(), decimal(target)),
    };
    pb::AutoReplenish {
        account_id: row.account_id.to_string(),
        threshold: decimal(row.settings.threshold),
        fixed_amount,
        target_balance,
        payment_method_id: row.payment_method_id.to_string(),
        max_top_ups_per_day: row.settings.max_top_ups_per_day,
        max_credits_per_month: optional(row.settings.max_credits_per_month),
        min_credits_per_top_up: optional(row.settings.min_credits),
        max_credits_per_top_up: optional(row.settings.max_credits),
        low_balance_warning_percent: row.settings.warning_percent,
        enabled: row.enabled,
        paused: row.paused,
        consecutive_declines: row.consecutive_declines,
        updated_at: Some(to_timestamp(row.updated_at)),
    }
}

pub fn recurring_to_pb(row: &RecurringRow) -> pb::RecurringTopUp {
    pb::RecurringTopUp {
        account_id: row.account_id.to_string(),
        credits: decimal(row.credits),
        interval: match row.interval {
            Interval::Weekly => pb::Interval::Weekly,
            Interval::Monthly => pb::Interval::Monthly,
        }
        .into(),
        mode: if row.mode == "GRANTED" { pb::RecurringMode::Granted } else { pb::RecurringMode::Paid }.into(),
        payment_method_id: id(row.payment_method_id),
        credits_expire_after_days: row.credits_expire_after_days,
        next_run_at: Some(to_timestamp(row.next_run_at)),
        enabled: row.enabled,
        runs: row.runs,
        rollover: row.rollover.map(|policy| {
            let (mode, cap_amount, cap_percent) = match policy.carry {
                Carry::Nothing => (pb::RolloverMode::None, String::new(), 0),
                Carry::All => (pb::RolloverMode::All, String::new(), 0),
                Carry::Amount(amount) => (pb::RolloverMode::Capped, decimal(amount), 0),
                Carry::Percent(percent) => (pb::RolloverMode::Capped, String::new(), percent),
            };
            pb::RolloverPolicy {
                mode: mode.into(),
                cap_amount,
                cap_percent,
                expire_after_days: policy.expire_after_days,
            }
        }),
    }
}

pub fn event_to_pb(event: &StoredEvent) -> pb::Event {
    let kind = match event.event_type.as_str() {
        "TOP_UP_SUCCEEDED" => pb::EventType::TopUpSucceeded,
        "TOP_UP_FAILED" => pb::EventType::TopUpFailed,
        "TOP_UP_REQUIRES_ACTION" => pb::EventType::TopUpRequiresAction,
        "AUTO_REPLENISH_PAUSED" => pb::EventType::AutoReplenishPaused,
        "AUTO_REPLENISH_LIMITED" => pb::EventType::AutoReplenishLimited,
        "BONUS_CLAWED_BACK" => pb::EventType::BonusClawedBack,
        _ => pb::EventType::Unspecified,
    };
    pb::Event {
        sequence: event.sequence,
        r#type: kind.into(),
        account_id: event.account_id.to_string(),
        top_up_id: id(event.top_up_id),
        credits: event.credits.clone(),
        reason: event.reason.clone(),
        occurred_at: Some(to_timestamp(event.occurred_at)),
    }
}
