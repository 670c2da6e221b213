//! Wallets as the cache keeps them: a compact encoding (postcard, with the
//! replay records' forms of accounts, grants and holds and the counters an
//! answer leaves out), a few hundred bytes where the structs, strings and
//! maps of a wallet take a kilobyte or two. Kept this way, the wallets of
//! a hundred thousand busy accounts fit in a few dozen megabytes.

use serde::{Deserialize, Serialize};

use super::stored::{Amount, StoredAccount, StoredGrant, StoredHold};
use crate::domain::{Account, AccountId, LedgerHash, Wallet, chain};
use crate::error::WalletError;

/// The figures of an account that change with its wallet, which an answer
/// does not show and so [`StoredAccount`] leaves out.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Counters {
    low_balance_alerted: bool,
    depleted_alerted: bool,
    low_balance_warned: bool,
    month: String,
    month_spend: Amount,
    cap_alerted_percent: u32,
    day: String,
    transferred_today: Amount,
    overdraft_used: Amount,
    held: Amount,
    last_sequence: u64,
    ledger_head: [u8; chain::HASH_BYTES],
    version: u64,
    parent: Option<[u8; 16]>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct KeptWallet {
    account: StoredAccount,
    counters: Counters,
    grants: Vec<StoredGrant>,
    holds: Vec<StoredHold>,
}

/// The wallet's encoding. Only a wallet with no changes pending is kept.
pub fn encode(wallet: &Wallet) -> Result<Box<[u8]>, WalletError> {
    let account = &wallet.account;
    let spend = &account.spend;
    let kept = KeptWallet {
        account: StoredAccount::from(account),
        counters: Counters {
            low_balance_alerted: account.low_balance_alerted,
            depleted_alerted: account.depleted_alerted,
            low_balance_warned: spend.low_balance_warned,
            month: spend.month.clone(),
            month_spend: spend.month_spend.into(),
            cap_alerted_percent: spend.cap_alerted_percent,
            day: spend.day.clone(),
            transferred_today: spend.transferred_today.into(),
            overdraft_used: account.overdraft_used.into(),
            held: account.held.into(),
            last_sequence: account.last_sequence,
            ledger_head: account.ledger_head.0,
            version: account.version,
            parent: account.parent.map(|parent| parent.0.into_bytes()),
        },
        grants: wallet.grants.iter().map(StoredGrant::from).collect(),
        holds: wallet.holds.iter().map(StoredHold::from).collect(),
    };
    postcard::to_allocvec(&kept)
        .map(Vec::into_boxed_slice)
        .map_err(|error| WalletError::internal(format!("a wallet does not encode: {error}")))
}

/// The wallet again, exactly as encoded.
pub fn decode(bytes: &[u8]) -> Result<Wallet, WalletError> {
    let kept: KeptWallet = postcard::from_bytes(bytes)
        .map_err(|error| WalletError::internal(format!("a kept wallet does not decode: {error}")))?;
    let counters = kept.counters;
    let mut account: Account = kept.account.into_account()?;
    account.low_balance_alerted = counters.low_balance_alerted;
    account.depleted_alerted = counters.depleted_alerted;
    account.spend.low_balance_warned = counters.low_balance_warned;
    account.spend.month = counters.month;
    account.spend.month_spend = counters.month_spend.value()?;
    account.parent = counters.parent.map(|bytes| AccountId(uuid::Uuid::from_bytes(bytes)));
    account.spend.cap_alerted_percent = counters.cap_alerted_percent;
    account.spend.day = counters.day;
    account.spend.transferred_today = counters.transferred_today.value()?;
    account.overdraft_used = counters.overdraft_used.value()?;
    account.held = counters.held.value()?;
    account.last_sequence = counters.last_sequence;
    account.ledger_head = LedgerHash(counters.ledger_head);
    account.version = counters.version;
    let grants = kept.grants.into_iter().map(StoredGrant::into_grant).collect::<Result<_, _>>()?;
    let holds = kept.holds.into_iter().map(StoredHold::into_hold).collect::<Result<_, _>>()?;
    Ok(Wallet::new(account, grants, holds))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::collections::BTreeMap;

    use chrono::{DateTime, Utc};
    use reservoir_common::auth::TenantId;
    use reservoir_common::money::Unit;
    use rust_decimal::Decimal;
    use uuid::Uuid;

    use super::*;
    use crate::domain::*;

    fn at(micros: i64) -> DateTime<Utc> {
        DateTime::from_timestamp_micros(micros).unwrap()
    }

    fn d(text: &str) -> Decimal {
        text.parse().unwrap()
    }

    /// A wallet with every figure away from its default, as a busy account's would be.
    fn busy_wallet() -> Wallet {
        let new = NewAccount {
            tenant_id: TenantId(Uuid::now_v7()),
            external_id: "customer-42".into(),
            unit: Unit::credit("TOKENS", 3, "0.002", "EUR").unwrap(),
            overdraft: Overdraft::CreditLimit(d("250.500")),
            low_balance_threshold: Some(d("10.000")),
            metadata: BTreeMap::from([("plan".to_owned(), "scale".to_owned())]),
        };
        let mut wallet = Wallet::open(new, &OperationContext::new(at(1_764_000_000_123_456), "open"));
        let _ = wallet.take_changes();
        let account = &mut wallet.account;
        account.number = 98_765;
        account.status = AccountStatus::Suspended;
        account.low_balance_alerted = true;
        account.depleted_alerted = true;
        account.credit_blocked = true;
        account.spend = SpendControl {
            monthly_cap: Some(d("1000.000")),
            low_balance_warning: Some(d("20.000")),
            low_balance_warned: true,
            transfer_max: Some(d("50.000")),
            transfer_daily_limit: Some(d("75.000")),
            month: "2026-12".into(),
            month_spend: d("812.250"),
            cap_alerted_percent: 80,
            day: "2026-12-06".into(),
            transferred_today: d("12.500"),
        };
        account.overdraft_used = d("3.125");
        account.held = d("0.000");
        account.last_sequence = 4_321;
        account.ledger_head = LedgerHash([7; chain::HASH_BYTES]);
        account.version = 77;
        account.updated_at = at(1_765_000_000_654_321);
        let account_id = account.id;
        wallet.grants.push(Grant {
            id: GrantId::generate(),
            account_id,
            kind: GrantKind::Promotional,
            source: GrantSource::Voucher,
            source_reference: "SPRING-25".into(),
            original: d("100.000"),
            remaining: d("37.125"),
            priority: -3,
            effective_at: at(1_764_100_000_000_000),
            expires_at: Some(at(1_767_000_000_000_000)),
            meter_codes: vec!["gpt-tokens".into(), "images".into()],
            status: GrantStatus::Active,
            metadata: BTreeMap::from([("campaign".to_owned(), "spring".to_owned())]),
            created_at: at(1_764_100_000_000_001),
            created_sequence: 12,
        });
        wallet.holds.push(Hold {
            id: HoldId::generate(),
            account_id,
            amount: d("5.000"),
            captured: d("2.500"),
            status: HoldStatus::Captured,
            meter_code: Some("images".into()),
            expires_at: at(1_765_000_100_000_000),
            created_at: at(1_765_000_000_000_000),
        });
        wallet
    }

    #[test]
    fn a_kept_wallet_comes_back_exactly_as_it_was() {
        let wallet = busy_wallet();
        let again = decode(&encode(&wallet).unwrap()).unwrap();
        assert_eq!(again.account, wallet.account);
        assert_eq!(again.grants, wallet.grants);
        assert_eq!(again.holds, wallet.holds);
        // Amounts keep their scale, so answers print them the same way.
        assert_eq!(again.account.spend.month_spend.to_string(), "812.250");
        assert_eq!(again.grants[0].remaining.to_string(), "37.125");
    }

    #[test]
    fn a_kept_wallet_takes_a_few_hundred_bytes() {
        let bytes = encode(&busy_wallet()).unwrap();
        assert!(bytes.len() <= 400, "{} bytes", bytes.len());
    }
}
