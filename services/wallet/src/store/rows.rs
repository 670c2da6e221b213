//! Row ↔ domain conversions. Enums are stored as their upper-case names,
//! metadata and meter codes as JSON text.

use chrono::{DateTime, Utc};
use reservoir_common::auth::{KeyId, TenantId};
use reservoir_common::money::Unit;
use sea_orm::ActiveValue::Set;

use super::entities::{account, entry, grant, hold};
use crate::domain::*;
use crate::error::WalletError;
use reservoir_common::db::Amount;

/// Filters of a ledger listing.
#[derive(Debug, Clone, Default)]
pub struct EntryFilter {
    pub kinds: Vec<EntryKind>,
    pub start: Option<DateTime<Utc>>,
    pub end: Option<DateTime<Utc>>,
    /// Only entries up to this sequence: the ledger as of a snapshot.
    pub through_sequence: Option<u64>,
}

fn corrupt(what: &str, value: &str) -> WalletError {
    WalletError::internal(format!("stored {what} {value:?} is not valid"))
}

fn to_u64(value: i64) -> u64 {
    u64::try_from(value).unwrap_or(0)
}

fn to_i64(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

pub(super) fn metadata_from(text: &str) -> Result<Metadata, WalletError> {
    serde_json::from_str(text).map_err(|_| corrupt("metadata", text))
}

pub(super) fn metadata_to(metadata: &Metadata) -> String {
    serde_json::to_string(metadata).unwrap_or_else(|_| "{}".to_owned())
}

pub fn account_from_row(row: account::Model) -> Result<Account, WalletError> {
    let scale = u32::try_from(row.unit_scale).map_err(|_| corrupt("unit scale", &row.unit_scale.to_string()))?;
    let unit = Unit::from_parts(&row.unit_code, Some(scale), &row.unit_price_per_credit, &row.unit_billing_currency)
        .map_err(|_| corrupt("unit", &row.unit_code))?;
    let overdraft = match row.overdraft_policy.as_str() {
        "NONE" => Overdraft::None,
        "CREDIT_LIMIT" => Overdraft::CreditLimit(row.credit_limit.0),
        "UNLIMITED" => Overdraft::Unlimited,
        other => return Err(corrupt("overdraft policy", other)),
    };
    let status = match row.status.as_str() {
        "ACTIVE" => AccountStatus::Active,
        "SUSPENDED" => AccountStatus::Suspended,
        "CLOSED" => AccountStatus::Closed,
        other => return Err(corrupt("account status", other)),
    };
    Ok(Account {
        id: AccountId(row.id),
        number: to_u64(row.number),
        tenant_id: TenantId(row.tenant_id),
        external_id: row.external_id,
        unit,
        overdraft,
        status,
        low_balance_threshold: row.low_balance_threshold.map(|amount| amount.0),
        low_balance_alerted: row.low_balance_alerted,
        depleted_alerted: row.depleted_alerted,
        credit_blocked: row.credit_blocked,
        spend: SpendControl {
            monthly_cap: row.monthly_cap.map(|amount| amount.0),
            low_balance_warning: row.low_balance_warning.map(|amount| amount.0),
            low_balance_warned: row.low_balance_warned,
            transfer_max: row.transfer_max.map(|amount| amount.0),
            transfer_daily_limit: row.transfer_daily_limit.map(|amount| amount.0),
            month: row.spend_month,
            month_spend: row.month_spend.0,
            cap_alerted_percent: u32::try_from(row.cap_alerted_percent).unwrap_or(0),
            day: row.transfer_day,
            transferred_today: row.transferred_today.0,
        },
        overdraft_used: row.overdraft_used.0,
        held: row.held.0,
        last_sequence: to_u64(row.last_sequence),
        ledger_head: match row.ledger_head.as_deref() {
            None => LedgerHash::GENESIS,
            Some(bytes) => LedgerHash::from_slice(bytes).ok_or_else(|| corrupt("ledger head", &hex::encode(bytes)))?,
        },
        version: to_u64(row.version),
        parent: row.parent_id.map(AccountId),
        metadata: metadata_from(&row.metadata)?,
        created_at: row.created_at,
        updated_at: row.updated_at,
    })
}

pub fn account_to_row(account: &Account) -> account::ActiveModel {
    let (price, billing) = match account.unit.kind() {
        reservoir_common::money::UnitKind::Currency => (String::new(), String::new()),
        reservoir_common::money::UnitKind::Credit { price_per_credit, billing_currency } => {
            (price_per_credit.to_string(), billing_currency.clone())
        }
    };
    let policy = overdraft_policy_name(&account.overdraft);
    account::ActiveModel {
        id: Set(account.id.0),
        number: Set(to_i64(account.number)),
        tenant_id: Set(account.tenant_id.0),
        external_id: Set(account.external_id.clone()),
        unit_code: Set(account.unit.code().to_owned()),
        unit_scale: Set(i32::try_from(account.unit.scale()).unwrap_or(0)),
        unit_price_per_credit: Set(price),
        unit_billing_currency: Set(billing),
        overdraft_policy: Set(policy.to_owned()),
        credit_limit: Set(Amount(account.overdraft.credit_limit())),
        status: Set(account_status_name(account.status).to_owned()),
        low_balance_threshold: Set(account.low_balance_threshold.map(Amount)),
        low_balance_alerted: Set(account.low_balance_alerted),
        depleted_alerted: Set(account.depleted_alerted),
        credit_blocked: Set(account.credit_blocked),
        monthly_cap: Set(account.spend.monthly_cap.map(Amount)),
        low_balance_warning: Set(account.spend.low_balance_warning.map(Amount)),
        low_balance_warned: Set(account.spend.low_balance_warned),
        transfer_max: Set(account.spend.transfer_max.map(Amount)),
        transfer_daily_limit: Set(account.spend.transfer_daily_limit.map(Amount)),
        spend_month: Set(account.spend.month.clone()),
        month_spend: Set(Amount(account.spend.month_spend)),
        cap_alerted_percent: Set(i32::try_from(account.spend.cap_alerted_percent).unwrap_or(0)),
        transfer_day: Set(account.spend.day.clone()),
        transferred_today: Set(Amount(account.spend.transferred_today)),
        overdraft_used: Set(Amount(account.overdraft_used)),
        held: Set(Amount(account.held)),
        last_sequence: Set(to_i64(account.last_sequence)),
        ledger_head: Set(head_to_row(account.ledger_head)),
        version: Set(to_i64(account.version)),
        parent_id: Set(account.parent.map(|parent| parent.0)),
        metadata: Set(metadata_to(&account.metadata)),
        created_at: Set(account.created_at),
        updated_at: Set(account.updated_at),
    }
}

/// The stored head: none before the first entry.
pub fn head_to_row(head: LedgerHash) -> Option<Vec<u8>> {
    (head != LedgerHash::GENESIS).then(|| head.0.to_vec())
}

pub fn overdraft_policy_name(overdraft: &Overdraft) -> &'static str {
    match overdraft {
        Overdraft::None => "NONE",
        Overdraft::CreditLimit(_) => "CREDIT_LIMIT",
        Overdraft::Unlimited => "UNLIMITED",
    }
}

pub fn account_status_name(status: AccountStatus) -> &'static str {
    match status {
        AccountStatus::Active => "ACTIVE",
        AccountStatus::Suspended => "SUSPENDED",
        AccountStatus::Closed => "CLOSED",
    }
}

pub fn grant_kind_name(kind: GrantKind) -> &'static str {
    match kind {
        GrantKind::Paid => "PAID",
        GrantKind::Promotional => "PROMOTIONAL",
        GrantKind::Courtesy => "COURTESY",
    }
}

pub fn grant_source_name(source: GrantSource) -> &'static str {
    match source {
        GrantSource::Admin => "ADMIN",
        GrantSource::Invoice => "INVOICE",
        GrantSource::Voucher => "VOUCHER",
        GrantSource::Adjustment => "ADJUSTMENT",
        GrantSource::Transfer => "TRANSFER",
        GrantSource::Rollover => "ROLLOVER",
        GrantSource::Bonus => "BONUS",
    }
}

pub fn grant_status_name(status: GrantStatus) -> &'static str {
    match status {
        GrantStatus::Active => "ACTIVE",
        GrantStatus::Expired => "EXPIRED",
        GrantStatus::Voided => "VOIDED",
    }
}

pub fn grant_from_row(row: grant::Model) -> Result<Grant, WalletError> {
    let kind = match row.kind.as_str() {
        "PAID" => GrantKind::Paid,
        "PROMOTIONAL" => GrantKind::Promotional,
        "COURTESY" => GrantKind::Courtesy,
        other => return Err(corrupt("grant kind", other)),
    };
    let source = match row.source.as_str() {
        "ADMIN" => GrantSource::Admin,
        "INVOICE" => GrantSource::Invoice,
        "VOUCHER" => GrantSource::Voucher,
        "ADJUSTMENT" => GrantSource::Adjustment,
        "TRANSFER" => GrantSource::Transfer,
        "ROLLOVER" => GrantSource::Rollover,
        "BONUS" => GrantSource::Bonus,
        other => return Err(corrupt("grant source", other)),
    };
    let status = match row.status.as_str() {
        "ACTIVE" => GrantStatus::Active,
        "EXPIRED" => GrantStatus::Expired,
        "VOIDED" => GrantStatus::Voided,
        other => return Err(corrupt("grant status", other)),
    };
    Ok(Grant {
        id: GrantId(row.id),
        account_id: AccountId(row.account_id),
        kind,
        source,
        source_reference: row.source_reference,
        original: row.original_amount.0,
        remaining: row.remaining_amount.0,
        priority: row.priority,
        effective_at: row.effective_at,
        expires_at: row.expires_at,
        meter_codes: serde_json::from_str(&row.meter_codes).map_err(|_| corrupt("meter codes", &row.meter_codes))?,
        status,
        metadata: metadata_from(&row.metadata)?,
        created_at: row.created_at,
        created_sequence: to_u64(row.created_sequence),
    })
}

pub fn grant_to_row(grant: &Grant, tenant_id: TenantId) -> grant::ActiveModel {
    grant::ActiveModel {
        id: Set(grant.id.0),
        account_id: Set(grant.account_id.0),
        tenant_id: Set(tenant_id.0),
        kind: Set(grant_kind_name(grant.kind).to_owned()),
        source: Set(grant_source_name(grant.source).to_owned()),
        source_reference: Set(grant.source_reference.clone()),
        original_amount: Set(Amount(grant.original)),
        remaining_amount: Set(Amount(grant.remaining)),
        priority: Set(grant.priority),
        effective_at: Set(grant.effective_at),
        expires_at: Set(grant.expires_at),
        meter_codes: Set(serde_json::to_string(&grant.meter_codes).unwrap_or_else(|_| "[]".to_owned())),
        status: Set(grant_status_name(grant.status).to_owned()),
        metadata: Set(metadata_to(&grant.metadata)),
        created_at: Set(grant.created_at),
        created_sequence: Set(to_i64(grant.created_sequence)),
    }
}

pub fn hold_status_name(status: HoldStatus) -> &'static str {
    match status {
        HoldStatus::Active => "ACTIVE",
        HoldStatus::Captured => "CAPTURED",
        HoldStatus::Released => "RELEASED",
        HoldStatus::Expired => "EXPIRED",
    }
}

pub fn hold_from_row(row: hold::Model) -> Result<Hold, WalletError> {
    let status = match row.status.as_str() {
        "ACTIVE" => HoldStatus::Active,
        "CAPTURED" => HoldStatus::Captured,
        "RELEASED" => HoldStatus::Released,
        "EXPIRED" => HoldStatus::Expired,
        other => return Err(corrupt("hold status", other)),
    };
    Ok(Hold {
        id: HoldId(row.id),
        account_id: AccountId(row.account_id),
        amount: row.amount.0,
        captured: row.captured_amount.0,
        status,
        meter_code: row.meter_code,
        expires_at: row.expires_at,
        created_at: row.created_at,
    })
}

pub fn hold_to_row(hold: &Hold, tenant_id: TenantId) -> hold::ActiveModel {
    hold::ActiveModel {
        id: Set(hold.id.0),
        account_id: Set(hold.account_id.0),
        tenant_id: Set(tenant_id.0),
        amount: Set(Amount(hold.amount)),
        captured_amount: Set(Amount(hold.captured)),
        status: Set(hold_status_name(hold.status).to_owned()),
        meter_code: Set(hold.meter_code.clone()),
        expires_at: Set(hold.expires_at),
        created_at: Set(hold.created_at),
    }
}

/// The code an entry kind is stored as (the wire's numbering, by choice).
pub fn entry_kind_code(kind: EntryKind) -> i16 {
    match kind {
        EntryKind::Grant => 1,
        EntryKind::Debit => 2,
        EntryKind::Hold => 3,
        EntryKind::Capture => 4,
        EntryKind::Release => 5,
        EntryKind::Expiry => 6,
        EntryKind::Adjustment => 7,
        EntryKind::Refund => 8,
        EntryKind::TransferIn => 9,
        EntryKind::TransferOut => 10,
        EntryKind::Void => 11,
        EntryKind::Rollover => 12,
        EntryKind::ParentDraw => 13,
    }
}

fn entry_kind_from_code(code: i16) -> Result<EntryKind, WalletError> {
    EntryKind::ALL
        .into_iter()
        .find(|kind| entry_kind_code(*kind) == code)
        .ok_or_else(|| corrupt("entry kind", &code.to_string()))
}

/// An entry as read back. Entries of one operation on one account are
/// consecutive; they share a made-up operation id (the first one's place),
/// which is all that reading code compares it with. `refunded_id` is the id
/// of the entry a refund refunds, which the caller looked up.
pub fn entry_from_row(
    row: entry::Model,
    account_id: AccountId,
    refunded_id: Option<EntryId>,
) -> Result<Entry, WalletError> {
    let number = to_u64(row.account_number);
    let sequence = to_u64(row.sequence);
    let first = sequence.saturating_sub(u64::try_from(row.position).unwrap_or(0));
    Ok(Entry {
        id: row.legacy_id.map_or_else(|| EntryId::of(number, sequence), EntryId),
        account_id,
        operation_id: OperationId(EntryId::of(number, first).0),
        sequence,
        position: u32::try_from(row.position).unwrap_or(0),
        kind: entry_kind_from_code(row.kind)?,
        amount: row.amount.0,
        grant_id: row.grant_id.map(GrantId),
        hold_id: row.hold_id.map(HoldId),
        balance_after: row.balance_after.0,
        idempotency_key: row.idempotency_key,
        correlation_id: row.correlation_id.unwrap_or_default(),
        meter_code: row.meter_code,
        description: row.description.unwrap_or_default(),
        metadata: row.metadata.as_deref().map(metadata_from).transpose()?.unwrap_or_default(),
        refunded_entry_id: refunded_id,
        created_at: row.created_at,
        key_id: row.key_id.map(KeyId),
        // A hash of another length is no hash: the chain's check reports it.
        hash: row.hash.as_deref().and_then(LedgerHash::from_slice),
    })
}

/// The stored form of an entry; a refund names the sequence of the entry it
/// refunds. Empty texts are stored as NULL, which takes no room.
pub fn entry_to_row(entry: &Entry, account_number: u64, refunded_sequence: Option<u64>) -> entry::ActiveModel {
    let text = |value: &str| (!value.is_empty()).then(|| value.to_owned());
    entry::ActiveModel {
        account_number: Set(to_i64(account_number)),
        sequence: Set(to_i64(entry.sequence)),
        created_at: Set(entry.created_at),
        grant_id: Set(entry.grant_id.map(|id| id.0)),
        hold_id: Set(entry.hold_id.map(|id| id.0)),
        position: Set(i32::try_from(entry.position).unwrap_or(i32::MAX)),
        kind: Set(entry_kind_code(entry.kind)),
        amount: Set(Amount(entry.amount)),
        balance_after: Set(Amount(entry.balance_after)),
        idempotency_key: Set(entry.idempotency_key.clone()),
        correlation_id: Set(text(&entry.correlation_id)),
        meter_code: Set(entry.meter_code.clone()),
        description: Set(text(&entry.description)),
        metadata: Set((!entry.metadata.is_empty()).then(|| metadata_to(&entry.metadata))),
        refunded_sequence: Set(refunded_sequence.map(to_i64)),
        legacy_id: Set(None),
        key_id: Set(entry.key_id.map(|key| key.0)),
        hash: Set(entry.hash.map(|hash| hash.0.to_vec())),
    }
}
