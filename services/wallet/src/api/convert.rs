//! Domain → wire conversions. Amounts leave formatted at the unit's scale.

use reservoir_common::money::{Unit, UnitKind};
use reservoir_common::time::to_timestamp;
use reservoir_proto::wallet as pb;
use rust_decimal::Decimal;

use crate::domain::*;

fn amount(unit: &Unit, value: Decimal) -> String {
    unit.format(value)
}

fn optional_id(id: Option<impl std::fmt::Display>) -> String {
    id.map(|id| id.to_string()).unwrap_or_default()
}

pub fn unit(unit: &Unit) -> pb::Unit {
    match unit.kind() {
        UnitKind::Currency => pb::Unit {
            code: unit.code().to_owned(),
            scale: Some(unit.scale()),
            price_per_credit: String::new(),
            billing_currency: String::new(),
        },
        UnitKind::Credit { price_per_credit, billing_currency } => pb::Unit {
            code: unit.code().to_owned(),
            scale: Some(unit.scale()),
            price_per_credit: price_per_credit.normalize().to_string(),
            billing_currency: billing_currency.clone(),
        },
    }
}

pub fn overdraft_policy(overdraft: Overdraft) -> pb::OverdraftPolicy {
    match overdraft {
        Overdraft::None => pb::OverdraftPolicy::None,
        Overdraft::CreditLimit(_) => pb::OverdraftPolicy::CreditLimit,
        Overdraft::Unlimited => pb::OverdraftPolicy::Unlimited,
    }
}

pub fn account_status(status: AccountStatus) -> pb::AccountStatus {
    match status {
        AccountStatus::Active => pb::AccountStatus::Active,
        AccountStatus::Suspended => pb::AccountStatus::Suspended,
        AccountStatus::Closed => pb::AccountStatus::Closed,
    }
}

pub fn account(account: &Account) -> pb::Account {
    let unit_ = &account.unit;
    pb::Account {
        id: account.id.to_string(),
        external_id: account.external_id.clone(),
        unit: Some(unit(unit_)),
        overdraft_policy: overdraft_policy(account.overdraft).into(),
        credit_limit: amount(unit_, account.overdraft.credit_limit()),
        status: account_status(account.status).into(),
        low_balance_threshold: account.low_balance_threshold.map(|value| amount(unit_, value)).unwrap_or_default(),
        metadata: account.metadata.clone(),
        created_at: Some(to_timestamp(account.created_at)),
        updated_at: Some(to_timestamp(account.updated_at)),
        credit_blocked: account.credit_blocked,
        monthly_spending_cap: optional_amount(unit_, account.spend.monthly_cap),
        low_balance_warning: optional_amount(unit_, account.spend.low_balance_warning),
        transfer_max_amount: optional_amount(unit_, account.spend.transfer_max),
        transfer_daily_limit: optional_amount(unit_, account.spend.transfer_daily_limit),
        parent_account_id: optional_id(account.parent),
    }
}

fn optional_amount(unit_: &Unit, value: Option<rust_decimal::Decimal>) -> String {
    value.map(|value| amount(unit_, value)).unwrap_or_default()
}

pub fn spend(account: &Account, view: &SpendView, now: chrono::DateTime<chrono::Utc>) -> pb::Spend {
    let unit_ = &account.unit;
    pb::Spend {
        account_id: account.id.to_string(),
        unit_code: unit_.code().to_owned(),
        monthly_spending_cap: optional_amount(unit_, view.cap),
        spent: amount(unit_, view.spent),
        projected: amount(unit_, view.projected),
        remaining: optional_amount(unit_, view.remaining),
        period_start: Some(to_timestamp(view.period_start)),
        period_end: Some(to_timestamp(view.period_end)),
        as_of: Some(to_timestamp(now)),
        alerted_percent: view.alerted_percent,
    }
}

pub fn review(review: &crate::domain::fraud::TransferReview, unit_: &Unit) -> pb::TransferReview {
    use crate::domain::fraud::ReviewStatus;
    let status = match review.status {
        ReviewStatus::Held => pb::ReviewStatus::Held,
        ReviewStatus::Released => pb::ReviewStatus::Released,
        ReviewStatus::Rejected => pb::ReviewStatus::Rejected,
    };
    pb::TransferReview {
        id: review.id.to_string(),
        from_account_id: review.asked.from.to_string(),
        to_account_id: review.asked.to.to_string(),
        amount: amount(unit_, review.asked.amount),
        rule: review.rule.name().to_owned(),
        status: status.into(),
        reason: review.reason.clone(),
        idempotency_key: review.asked.idempotency_key.clone(),
        created_at: Some(to_timestamp(review.created_at)),
        decided_at: review.decided_at.map(to_timestamp),
    }
}

/// The tenant's transfer fraud rules as the wire shows them.
pub fn transfer_rules(rules: &crate::domain::fraud::TransferRules) -> Option<pb::TransferFraudRules> {
    use crate::domain::fraud::FraudAction;
    let text =
        |value: Option<rust_decimal::Decimal>| value.map(|value| value.normalize().to_string()).unwrap_or_default();
    let seconds = |span: chrono::Duration| u32::try_from(span.num_seconds()).unwrap_or(u32::MAX);
    rules.is_active().then(|| pb::TransferFraudRules {
        action: match rules.action {
            FraudAction::Refuse => pb::FraudAction::Refuse,
            FraudAction::Review => pb::FraudAction::Review,
        }
        .into(),
        velocity_window_seconds: seconds(rules.velocity_window),
        velocity_max_count: rules.velocity_max_count.unwrap_or(0),
        velocity_max_amount: text(rules.velocity_max_amount),
        new_recipient_max_amount: text(rules.new_recipient_max_amount),
        new_recipient_cooling_seconds: seconds(rules.new_recipient_cooling),
    })
}

pub fn budget_period(period: BudgetPeriod) -> pb::BudgetPeriod {
    match period {
        BudgetPeriod::Day => pb::BudgetPeriod::Day,
        BudgetPeriod::Month => pb::BudgetPeriod::Month,
    }
}

/// A child's budget as of `now`: what it drew in the period `now` falls in.
pub fn budget(budget: &Budget, unit_: &Unit, now: chrono::DateTime<chrono::Utc>) -> pb::Budget {
    pb::Budget {
        account_id: budget.account_id.to_string(),
        parent_account_id: budget.parent_id.to_string(),
        limit: optional_amount(unit_, budget.limit),
        period: budget_period(budget.period).into(),
        spent: amount(unit_, budget.spent_at(now)),
        remaining: optional_amount(unit_, budget.remaining_at(now)),
        period_start: Some(to_timestamp(budget.period.start(now))),
    }
}

pub fn grant_kind(kind: GrantKind) -> pb::GrantKind {
    match kind {
        GrantKind::Paid => pb::GrantKind::Paid,
        GrantKind::Promotional => pb::GrantKind::Promotional,
        GrantKind::Courtesy => pb::GrantKind::Courtesy,
    }
}

fn grant_source(source: GrantSource) -> pb::GrantSource {
    match source {
        GrantSource::Admin => pb::GrantSource::Admin,
        GrantSource::Invoice => pb::GrantSource::Invoice,
        GrantSource::Voucher => pb::GrantSource::Voucher,
        GrantSource::Adjustment => pb::GrantSource::Adjustment,
        GrantSource::Transfer => pb::GrantSource::Transfer,
        GrantSource::Rollover => pb::GrantSource::Rollover,
        GrantSource::Bonus => pb::GrantSource::Bonus,
    }
}

pub fn grant(grant: &Grant, unit_: &Unit, now: chrono::DateTime<chrono::Utc>) -> pb::Grant {
    let status = match grant.status {
        GrantStatus::Expired => pb::GrantStatus::Expired,
        GrantStatus::Voided => pb::GrantStatus::Voided,
        GrantStatus::Active if grant.is_past_expiry(now) => pb::GrantStatus::Expired,
        GrantStatus::Active if grant.is_pending(now) => pb::GrantStatus::Pending,
        GrantStatus::Active if grant.remaining.is_zero() => pb::GrantStatus::Depleted,
        GrantStatus::Active => pb::GrantStatus::Active,
    };
    pb::Grant {
        id: grant.id.to_string(),
        account_id: grant.account_id.to_string(),
        kind: grant_kind(grant.kind).into(),
        source: grant_source(grant.source).into(),
        source_reference: grant.source_reference.clone(),
        original_amount: amount(unit_, grant.original),
        remaining_amount: amount(unit_, grant.remaining),
        priority: grant.priority,
        effective_at: Some(to_timestamp(grant.effective_at)),
        expires_at: grant.expires_at.map(to_timestamp),
        meter_codes: grant.meter_codes.clone(),
        status: status.into(),
        metadata: grant.metadata.clone(),
        created_at: Some(to_timestamp(grant.created_at)),
    }
}

pub fn hold(hold: &Hold, unit_: &Unit) -> pb::Hold {
    let status = match hold.status {
        HoldStatus::Active => pb::HoldStatus::Active,
        HoldStatus::Captured => pb::HoldStatus::Captured,
        HoldStatus::Released => pb::HoldStatus::Released,
        HoldStatus::Expired => pb::HoldStatus::Expired,
    };
    pb::Hold {
        id: hold.id.to_string(),
        account_id: hold.account_id.to_string(),
        amount: amount(unit_, hold.amount),
        captured_amount: amount(unit_, hold.captured),
        status: status.into(),
        meter_code: hold.meter_code.clone().unwrap_or_default(),
        expires_at: Some(to_timestamp(hold.expires_at)),
        created_at: Some(to_timestamp(hold.created_at)),
    }
}

pub fn entry_kind(kind: EntryKind) -> pb::EntryKind {
    match kind {
        EntryKind::Grant => pb::EntryKind::Grant,
        EntryKind::Debit => pb::EntryKind::Debit,
        EntryKind::Hold => pb::EntryKind::Hold,
        EntryKind::Capture => pb::EntryKind::Capture,
        EntryKind::Release => pb::EntryKind::Release,
        EntryKind::Expiry => pb::EntryKind::Expiry,
        EntryKind::Adjustment => pb::EntryKind::Adjustment,
        EntryKind::Refund => pb::EntryKind::Refund,
        EntryKind::TransferIn => pb::EntryKind::TransferIn,
        EntryKind::TransferOut => pb::EntryKind::TransferOut,
        EntryKind::Void => pb::EntryKind::Void,
        EntryKind::Rollover => pb::EntryKind::Rollover,
        EntryKind::ParentDraw => pb::EntryKind::ParentDraw,
    }
}

pub fn entry(entry: &Entry, unit_: &Unit) -> pb::LedgerEntry {
    pb::LedgerEntry {
        id: entry.id.to_string(),
        account_id: entry.account_id.to_string(),
        sequence: entry.sequence,
        kind: entry_kind(entry.kind).into(),
        amount: amount(unit_, entry.amount),
        grant_id: optional_id(entry.grant_id),
        hold_id: optional_id(entry.hold_id),
        balance_after: amount(unit_, entry.balance_after),
        idempotency_key: entry.idempotency_key.clone(),
        correlation_id: entry.correlation_id.clone(),
        meter_code: entry.meter_code.clone().unwrap_or_default(),
        description: entry.description.clone(),
        metadata: entry.metadata.clone(),
        created_at: Some(to_timestamp(entry.created_at)),
        refunded_entry_id: optional_id(entry.refunded_entry_id),
        key_id: entry.key_id.map(|key| key.to_string()).unwrap_or_default(),
        hash: entry.hash.map(LedgerHash::to_hex).unwrap_or_default(),
    }
}

pub fn balance(account_id: AccountId, unit_: &Unit, view: &BalanceView) -> pb::Balance {
    pb::Balance {
        account_id: account_id.to_string(),
        unit_code: unit_.code().to_owned(),
        available: amount(unit_, view.available),
        held: amount(unit_, view.held),
        total: amount(unit_, view.total),
        credit_limit: amount(unit_, view.credit_limit),
        overdraft_used: amount(unit_, view.overdraft_used),
        paid: amount(unit_, view.paid),
        promotional: amount(unit_, view.promotional),
        courtesy: amount(unit_, view.courtesy),
        next_expiry_at: view.next_expiry_at.map(to_timestamp),
        spendable: view.spendable.map(|value| amount(unit_, value)).unwrap_or_default(),
        pending: amount(unit_, view.pending),
    }
}

pub fn event_type(event_type: EventType) -> pb::EventType {
    match event_type {
        EventType::AccountCreated => pb::EventType::AccountCreated,
        EventType::AccountUpdated => pb::EventType::AccountUpdated,
        EventType::GrantCreated => pb::EventType::GrantCreated,
        EventType::GrantExpired => pb::EventType::GrantExpired,
        EventType::GrantVoided => pb::EventType::GrantVoided,
        EventType::Debited => pb::EventType::Debited,
        EventType::Refunded => pb::EventType::Refunded,
        EventType::Adjusted => pb::EventType::Adjusted,
        EventType::HoldCreated => pb::EventType::HoldCreated,
        EventType::HoldCaptured => pb::EventType::HoldCaptured,
        EventType::HoldReleased => pb::EventType::HoldReleased,
        EventType::HoldExpired => pb::EventType::HoldExpired,
        EventType::BalanceLow => pb::EventType::BalanceLow,
        EventType::BalanceDepleted => pb::EventType::BalanceDepleted,
        EventType::BalanceWarning => pb::EventType::BalanceWarning,
        EventType::SpendingCapAlert => pb::EventType::SpendingCapAlert,
        EventType::TransferredOut => pb::EventType::TransferredOut,
        EventType::TransferredIn => pb::EventType::TransferredIn,
        EventType::TransferHeld => pb::EventType::TransferHeld,
        EventType::TransferRejected => pb::EventType::TransferRejected,
    }
}

/// An event as streamed, with its sequence.
pub fn event(event: &Event, unit_: &Unit, sequence: u64) -> pb::Event {
    pb::Event {
        sequence,
        r#type: event_type(event.event_type).into(),
        account_id: event.account_id.to_string(),
        occurred_at: Some(to_timestamp(event.occurred_at)),
        amount: event.amount.map(|value| amount(unit_, value)).unwrap_or_default(),
        available: amount(unit_, event.available),
        grant_id: optional_id(event.grant_id),
        hold_id: optional_id(event.hold_id),
        idempotency_key: event.idempotency_key.clone(),
        correlation_id: event.correlation_id.clone(),
        meter_code: event.meter_code.clone().unwrap_or_default(),
        threshold: event.threshold.map(|value| amount(unit_, value)).unwrap_or_default(),
        cap_percent: event.cap_percent.unwrap_or(0),
        counterparty_account_id: optional_id(event.counterparty),
    }
}
