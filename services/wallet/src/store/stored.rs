//! The domain's values as replay records and kept wallets store them:
//! amounts as mantissa and scale, instants as microseconds, enums as their
//! place in a fixed list, and balances and usage draws as the few figures
//! the rest is worked out from.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use reservoir_common::auth::TenantId;
use reservoir_common::money::Unit;
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::domain::{
    Account, AccountId, AccountStatus, BalanceView, DomainError, Grant, GrantId, GrantKind, GrantSource, GrantStatus,
    Hold, HoldId, HoldStatus, LedgerHash, Metadata, Overdraft, SpendControl, UsageDrawn,
};
use crate::error::WalletError;

/// A usage draw's answers: how many amounts, and those not charged with why.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(super) struct StoredUsage {
    count: u32,
    refused: Vec<(u32, u8)>,
    charged: Amount,
}

/// The reasons an amount of a usage draw can be left uncovered for.
const USAGE_REFUSALS: [DomainError; 4] = [
    DomainError::InsufficientFunds,
    DomainError::CreditBlocked,
    DomainError::SpendingCapReached,
    DomainError::BalanceOutOfRange,
];

impl From<&UsageDrawn> for StoredUsage {
    fn from(drawn: &UsageDrawn) -> Self {
        Self {
            count: u32::try_from(drawn.outcomes.len()).unwrap_or(u32::MAX),
            refused: drawn
                .outcomes
                .iter()
                .enumerate()
                .filter_map(|(index, outcome)| {
                    outcome
                        .as_ref()
                        .map(|error| (u32::try_from(index).unwrap_or(u32::MAX), code_of(&USAGE_REFUSALS, error)))
                })
                .collect(),
            charged: drawn.charged.into(),
        }
    }
}

impl StoredUsage {
    pub(super) fn into_drawn(self) -> Result<UsageDrawn, WalletError> {
        let mut outcomes = vec![None; usize::try_from(self.count).unwrap_or(0)];
        for (index, code) in self.refused {
            let slot =
                outcomes.get_mut(usize::try_from(index).unwrap_or(usize::MAX)).ok_or_else(|| corrupt("usage"))?;
            *slot = Some(USAGE_REFUSALS.get(usize::from(code)).cloned().ok_or_else(|| corrupt("usage refusal"))?);
        }
        Ok(UsageDrawn { outcomes, charged: self.charged.value()? })
    }
}

/// A decimal as its mantissa and scale: a few bytes as postcard varints.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
pub(super) struct Amount(i128, u32);

impl From<Decimal> for Amount {
    fn from(value: Decimal) -> Self {
        Self(value.mantissa(), value.scale())
    }
}

impl Amount {
    pub(super) fn value(self) -> Result<Decimal, WalletError> {
        Decimal::try_from_i128_with_scale(self.0, self.1)
            .map_err(|_| WalletError::internal("a recorded amount is out of range"))
    }

    /// For figures this version wrote itself: out of range only by a bug.
    fn lossy(self) -> Decimal {
        self.value().unwrap_or_default()
    }
}

pub(super) fn micros(at: DateTime<Utc>) -> i64 {
    at.timestamp_micros()
}

pub(super) fn from_micros(value: i64) -> DateTime<Utc> {
    DateTime::from_timestamp_micros(value).unwrap_or_default()
}

/// The figures a balance is worked out from. Available, total and
/// spendable follow from these and the overdraft policy.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(super) struct StoredBalance {
    paid: Amount,
    promotional: Amount,
    courtesy: Amount,
    pending: Amount,
    held: Amount,
    overdraft_used: Amount,
    /// 0 no overdraft, 1 a credit limit, 2 unlimited.
    policy: u8,
    credit_limit: Amount,
    next_expiry_at: Option<i64>,
}

impl From<&BalanceView> for StoredBalance {
    fn from(view: &BalanceView) -> Self {
        let policy = match view.spendable {
            None => 2,
            Some(_) if view.credit_limit.is_zero() => 0,
            Some(_) => 1,
        };
        Self {
            paid: view.paid.into(),
            promotional: view.promotional.into(),
            courtesy: view.courtesy.into(),
            pending: view.pending.into(),
            held: view.held.into(),
            overdraft_used: view.overdraft_used.into(),
            policy,
            credit_limit: view.credit_limit.into(),
            next_expiry_at: view.next_expiry_at.map(micros),
        }
    }
}

impl StoredBalance {
    pub(super) fn into_view(self) -> BalanceView {
        let (paid, promotional, courtesy) = (self.paid.lossy(), self.promotional.lossy(), self.courtesy.lossy());
        let (held, overdraft_used, credit_limit) =
            (self.held.lossy(), self.overdraft_used.lossy(), self.credit_limit.lossy());
        let total = paid + promotional + courtesy - overdraft_used;
        let available = total - held;
        let spendable = match self.policy {
            0 => Some(available.max(Decimal::ZERO)),
            1 => Some((available + credit_limit).max(Decimal::ZERO)),
            _ => None,
        };
        BalanceView {
            available,
            held,
            total,
            credit_limit,
            overdraft_used,
            paid,
            promotional,
            courtesy,
            pending: self.pending.lossy(),
            next_expiry_at: self.next_expiry_at.map(from_micros),
            spendable,
        }
    }
}

fn corrupt(what: &str) -> WalletError {
    WalletError::internal(format!("a recorded {what} is not valid"))
}

fn metadata_pairs(metadata: &Metadata) -> Vec<(String, String)> {
    metadata.iter().map(|(key, value)| (key.clone(), value.clone())).collect()
}

fn metadata_of(pairs: Vec<(String, String)>) -> Metadata {
    pairs.into_iter().collect::<BTreeMap<_, _>>()
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub(super) struct StoredGrant {
    id: [u8; 16],
    account_id: [u8; 16],
    kind: u8,
    source: u8,
    source_reference: String,
    original: Amount,
    remaining: Amount,
    priority: i32,
    effective_at: i64,
    expires_at: Option<i64>,
    meter_codes: Vec<String>,
    status: u8,
    metadata: Vec<(String, String)>,
    created_at: i64,
    created_sequence: u64,
}

const GRANT_KINDS: [GrantKind; 3] = [GrantKind::Paid, GrantKind::Promotional, GrantKind::Courtesy];
const GRANT_SOURCES: [GrantSource; 7] = [
    GrantSource::Admin,
    GrantSource::Invoice,
    GrantSource::Voucher,
    GrantSource::Adjustment,
    GrantSource::Transfer,
    GrantSource::Rollover,
    GrantSource::Bonus,
];
const GRANT_STATUSES: [GrantStatus; 3] = [GrantStatus::Active, GrantStatus::Expired, GrantStatus::Voided];
const HOLD_STATUSES: [HoldStatus; 4] =
    [HoldStatus::Active, HoldStatus::Captured, HoldStatus::Released, HoldStatus::Expired];
const ACCOUNT_STATUSES: [AccountStatus; 3] = [AccountStatus::Active, AccountStatus::Suspended, AccountStatus::Closed];

fn code_of<T: PartialEq>(all: &[T], value: &T) -> u8 {
    all.iter().position(|known| known == value).and_then(|index| u8::try_from(index).ok()).unwrap_or(u8::MAX)
}

fn value_of<T: Copy>(all: &[T], code: u8, what: &str) -> Result<T, WalletError> {
    all.get(usize::from(code)).copied().ok_or_else(|| corrupt(what))
}

impl From<&Grant> for StoredGrant {
    fn from(grant: &Grant) -> Self {
        Self {
            id: grant.id.0.into_bytes(),
            account_id: grant.account_id.0.into_bytes(),
            kind: code_of(&GRANT_KINDS, &grant.kind),
            source: code_of(&GRANT_SOURCES, &grant.source),
            source_reference: grant.source_reference.clone(),
            original: grant.original.into(),
            remaining: grant.remaining.into(),
            priority: grant.priority,
            effective_at: micros(grant.effective_at),
            expires_at: grant.expires_at.map(micros),
            meter_codes: grant.meter_codes.clone(),
            status: code_of(&GRANT_STATUSES, &grant.status),
            metadata: metadata_pairs(&grant.metadata),
            created_at: micros(grant.created_at),
            created_sequence: grant.created_sequence,
        }
    }
}

impl StoredGrant {
    pub(super) fn into_grant(self) -> Result<Grant, WalletError> {
        Ok(Grant {
            id: GrantId(Uuid::from_bytes(self.id)),
            account_id: AccountId(Uuid::from_bytes(self.account_id)),
            kind: value_of(&GRANT_KINDS, self.kind, "grant kind")?,
            source: value_of(&GRANT_SOURCES, self.source, "grant source")?,
            source_reference: self.source_reference,
            original: self.original.value()?,
            remaining: self.remaining.value()?,
            priority: self.priority,
            effective_at: from_micros(self.effective_at),
            expires_at: self.expires_at.map(from_micros),
            meter_codes: self.meter_codes,
            status: value_of(&GRANT_STATUSES, self.status, "grant status")?,
            metadata: metadata_of(self.metadata),
            created_at: from_micros(self.created_at),
            created_sequence: self.created_sequence,
        })
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub(super) struct StoredHold {
    id: [u8; 16],
    account_id: [u8; 16],
    amount: Amount,
    captured: Amount,
    status: u8,
    meter_code: Option<String>,
    expires_at: i64,
    created_at: i64,
}

impl From<&Hold> for StoredHold {
    fn from(hold: &Hold) -> Self {
        Self {
            id: hold.id.0.into_bytes(),
            account_id: hold.account_id.0.into_bytes(),
            amount: hold.amount.into(),
            captured: hold.captured.into(),
            status: code_of(&HOLD_STATUSES, &hold.status),
            meter_code: hold.meter_code.clone(),
            expires_at: micros(hold.expires_at),
            created_at: micros(hold.created_at),
        }
    }
}

impl StoredHold {
    pub(super) fn into_hold(self) -> Result<Hold, WalletError> {
        Ok(Hold {
            id: HoldId(Uuid::from_bytes(self.id)),
            account_id: AccountId(Uuid::from_bytes(self.account_id)),
            amount: self.amount.value()?,
            captured: self.captured.value()?,
            status: value_of(&HOLD_STATUSES, self.status, "hold status")?,
            meter_code: self.meter_code,
            expires_at: from_micros(self.expires_at),
            created_at: from_micros(self.created_at),
        })
    }
}

/// An account as answered (opened or updated): every field a response shows.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(super) struct StoredAccount {
    id: [u8; 16],
    number: u64,
    tenant_id: [u8; 16],
    external_id: String,
    unit_code: String,
    unit_scale: u32,
    unit_price_per_credit: String,
    unit_billing_currency: String,
    /// As in [`StoredBalance::policy`].
    policy: u8,
    credit_limit: Amount,
    status: u8,
    low_balance_threshold: Option<Amount>,
    credit_blocked: bool,
    monthly_cap: Option<Amount>,
    low_balance_warning: Option<Amount>,
    transfer_max: Option<Amount>,
    transfer_daily_limit: Option<Amount>,
    metadata: Vec<(String, String)>,
    created_at: i64,
    updated_at: i64,
}

impl From<&Account> for StoredAccount {
    fn from(account: &Account) -> Self {
        let (price, billing) = match account.unit.kind() {
            reservoir_common::money::UnitKind::Currency => (String::new(), String::new()),
            reservoir_common::money::UnitKind::Credit { price_per_credit, billing_currency } => {
                (price_per_credit.to_string(), billing_currency.clone())
            }
        };
        let policy = match account.overdraft {
            Overdraft::None => 0,
            Overdraft::CreditLimit(_) => 1,
            Overdraft::Unlimited => 2,
        };
        Self {
            id: account.id.0.into_bytes(),
            number: account.number,
            tenant_id: account.tenant_id.0.into_bytes(),
            external_id: account.external_id.clone(),
            unit_code: account.unit.code().to_owned(),
            unit_scale: account.unit.scale(),
            unit_price_per_credit: price,
            unit_billing_currency: billing,
            policy,
            credit_limit: account.overdraft.credit_limit().into(),
            status: code_of(&ACCOUNT_STATUSES, &account.status),
            low_balance_threshold: account.low_balance_threshold.map(Amount::from),
            credit_blocked: account.credit_blocked,
            monthly_cap: account.spend.monthly_cap.map(Amount::from),
            low_balance_warning: account.spend.low_balance_warning.map(Amount::from),
            transfer_max: account.spend.transfer_max.map(Amount::from),
            transfer_daily_limit: account.spend.transfer_daily_limit.map(Amount::from),
            metadata: metadata_pairs(&account.metadata),
            created_at: micros(account.created_at),
            updated_at: micros(account.updated_at),
        }
    }
}

impl StoredAccount {
    /// The account as answered. Counters no response shows start afresh.
    pub(super) fn into_account(self) -> Result<Account, WalletError> {
        let unit = Unit::from_parts(
            &self.unit_code,
            Some(self.unit_scale),
            &self.unit_price_per_credit,
            &self.unit_billing_currency,
        )
        .map_err(|_| corrupt("unit"))?;
        let overdraft = match self.policy {
            0 => Overdraft::None,
            1 => Overdraft::CreditLimit(self.credit_limit.value()?),
            _ => Overdraft::Unlimited,
        };
        let optional = |amount: Option<Amount>| amount.map(Amount::value).transpose();
        Ok(Account {
            id: AccountId(Uuid::from_bytes(self.id)),
            number: self.number,
            tenant_id: TenantId(Uuid::from_bytes(self.tenant_id)),
            external_id: self.external_id,
            unit,
            overdraft,
            status: value_of(&ACCOUNT_STATUSES, self.status, "account status")?,
            low_balance_threshold: optional(self.low_balance_threshold)?,
            low_balance_alerted: false,
            depleted_alerted: false,
            credit_blocked: self.credit_blocked,
            spend: SpendControl {
                monthly_cap: optional(self.monthly_cap)?,
                low_balance_warning: optional(self.low_balance_warning)?,
                transfer_max: optional(self.transfer_max)?,
                transfer_daily_limit: optional(self.transfer_daily_limit)?,
                ..SpendControl::default()
            },
            overdraft_used: Decimal::ZERO,
            held: Decimal::ZERO,
            last_sequence: 0,
            ledger_head: LedgerHash::GENESIS,
            version: 0,
            // Not recorded with answers (older records have no place for
            // it); a wallet read from its row or kept has it.
            parent: None,
            metadata: metadata_of(self.metadata),
            created_at: from_micros(self.created_at),
            updated_at: from_micros(self.updated_at),
        })
    }
}
