//! Replay records: what an idempotent change answered, kept so that a retry
//! with the same key gets the same answer. A record is compact: the entries
//! are not copied (the record names where they are in the ledger), balances
//! keep only the figures the others are worked out from, and the rest is a
//! postcard encoding of the domain's own values. Records are keyed by a
//! digest of tenant and key, so the key itself (already on every entry) is
//! not stored twice.

use reservoir_common::auth::TenantId;
use sea_orm::{ConnectionTrait, DbErr, Statement};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use uuid::Uuid;

use super::stored::{StoredAccount, StoredBalance, StoredGrant, StoredHold, StoredUsage, from_micros, micros};
use crate::domain::*;
use crate::error::WalletError;

/// Bytes kept of each SHA-256: 128 bits, far beyond any chance of two keys
/// (or two requests under one key) meeting by accident.
const DIGEST_BYTES: usize = 16;

/// The first byte of a stored answer: how the rest is encoded.
const FORMAT_LEGACY: u8 = 0;
const FORMAT_ANSWER: u8 = 1;

/// The record's key: a digest of the tenant and the caller's key.
pub fn digest(tenant: TenantId, key: &str) -> Vec<u8> {
    let mut hasher = Sha256::new();
    hasher.update(tenant.0.as_bytes());
    hasher.update(key.as_bytes());
    hasher.finalize()[..DIGEST_BYTES].to_vec()
}

/// Bytes kept of a request's SHA-256. They only tell a retry from another
/// request the same caller sent under the same key by mistake (the caller
/// chooses both, so there is nothing to forge): 64 bits leave one chance in
/// 2^64 of missing such a mistake, and save 8 bytes on every record.
const REQUEST_BYTES: usize = 8;

/// The digest a request is compared by: of its encoding, made by the api.
pub fn request_hash(encoded_request: &[u8]) -> Vec<u8> {
    Sha256::digest(encoded_request)[..REQUEST_BYTES].to_vec()
}

/// Whether a record was made for this request. Records written before kept
/// 128 bits of the digest; their first 64 are compared.
pub fn same_request(recorded: &[u8], request_hash: &[u8]) -> bool {
    request_hash.len() == REQUEST_BYTES
        && matches!(recorded.len(), REQUEST_BYTES | DIGEST_BYTES)
        && recorded[..REQUEST_BYTES] == *request_hash
}

/// The methods whose calls are recorded, as stored.
pub const METHODS: [&str; 12] = [
    "CreateAccount",
    "UpdateAccount",
    "GrantCredits",
    "Debit",
    "Reserve",
    "CaptureHold",
    "ReleaseHold",
    "Adjust",
    "Refund",
    "VoidGrant",
    "Transfer",
    "DrawUsage",
];

pub fn method_code(method: &str) -> i16 {
    METHODS.iter().position(|known| *known == method).map_or(0, |index| i16::try_from(index + 1).unwrap_or(0))
}

/// What a record holds.
#[derive(Debug, Clone)]
pub enum Recorded {
    /// An answer recorded by this version.
    Answer(Box<StoredAnswer>),
    /// The encoded response an earlier version recorded, for the api to decode.
    Legacy(Vec<u8>),
}

pub fn decode(bytes: &[u8]) -> Result<Recorded, WalletError> {
    match bytes.split_first() {
        Some((&FORMAT_ANSWER, rest)) => postcard::from_bytes(rest)
            .map(|stored| Recorded::Answer(Box::new(stored)))
            .map_err(|error| WalletError::internal(format!("a replay record does not decode: {error}"))),
        Some((&FORMAT_LEGACY, rest)) => Ok(Recorded::Legacy(rest.to_vec())),
        _ => Err(WalletError::internal("a replay record has an unknown format")),
    }
}

/// Encodes an answer; `number_of` gives the number of each account it names.
pub fn encode(answer: &Answer, number_of: impl Fn(AccountId) -> Option<u64>) -> Result<Vec<u8>, WalletError> {
    let mut wallets = Vec::with_capacity(answer.wallets.len());
    for part in &answer.wallets {
        let number = number_of(part.account_id).ok_or(WalletError::internal("an answered account has no number"))?;
        let (first_sequence, count) = match (part.entries.first(), part.entries.last()) {
            (Some(first), Some(last)) => (first.sequence, last.sequence - first.sequence + 1),
            _ => (0, 0),
        };
        if usize::try_from(count).ok() != Some(part.entries.len()) {
            return Err(WalletError::internal("an answer's entries are not consecutive"));
        }
        wallets.push(StoredWallet { number, first_sequence, count, balance: StoredBalance::from(&part.balance) });
    }
    let stored = StoredAnswer {
        at: micros(answer.at),
        wallets,
        grants: answer.grants.iter().map(StoredGrant::from).collect(),
        hold: answer.hold.as_ref().map(StoredHold::from),
        account: answer.account.as_ref().map(StoredAccount::from),
        usage: answer.usage.as_ref().map(StoredUsage::from),
    };
    let mut bytes = vec![FORMAT_ANSWER];
    bytes.extend(
        postcard::to_allocvec(&stored)
            .map_err(|error| WalletError::internal(format!("an answer does not encode: {error}")))?,
    );
    Ok(bytes)
}

/// An answer as recorded.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StoredAnswer {
    at: i64,
    pub wallets: Vec<StoredWallet>,
    grants: Vec<StoredGrant>,
    hold: Option<StoredHold>,
    account: Option<StoredAccount>,
    usage: Option<StoredUsage>,
}

/// One wallet's part: where its entries are, and its balance.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StoredWallet {
    pub number: u64,
    pub first_sequence: u64,
    pub count: u64,
    balance: StoredBalance,
}

impl StoredAnswer {
    /// The answer again, given each wallet's account id and entries as read
    /// from the ledger, in the order of `wallets`.
    pub fn into_answer(self, wallets: Vec<(AccountId, Vec<Entry>)>) -> Result<Answer, WalletError> {
        if wallets.len() != self.wallets.len() {
            return Err(WalletError::internal("a replayed answer lost a wallet"));
        }
        let parts = self
            .wallets
            .into_iter()
            .zip(wallets)
            .map(|(stored, (account_id, entries))| WalletAnswer {
                account_id,
                entries,
                balance: stored.balance.into_view(),
            })
            .collect();
        Ok(Answer {
            at: from_micros(self.at),
            wallets: parts,
            grants: self.grants.into_iter().map(StoredGrant::into_grant).collect::<Result<_, _>>()?,
            hold: self.hold.map(StoredHold::into_hold).transpose()?,
            account: self.account.map(StoredAccount::into_account).transpose()?,
            usage: self.usage.map(StoredUsage::into_drawn).transpose()?,
        })
    }
}

/// Moves the records of earlier versions (tenant, key, method name, hex
/// request hash, encoded response) into `replay_records`, a page at a time,
/// keeping the encoded responses as they are.
pub async fn migrate_legacy_records(db: &impl ConnectionTrait) -> Result<(), DbErr> {
    let backend = db.get_database_backend();
    let page: i64 = 500;
    let mut after: Option<(Uuid, String)> = None;
    loop {
        let statement = match &after {
            None => Statement::from_sql_and_values(
                backend,
                "SELECT tenant_id, key, method, request_hash, response FROM idempotency_keys \
                 ORDER BY tenant_id, key LIMIT $1",
                [page.into()],
            ),
            Some((tenant, key)) => Statement::from_sql_and_values(
                backend,
                "SELECT tenant_id, key, method, request_hash, response FROM idempotency_keys \
                 WHERE tenant_id > $1 OR (tenant_id = $1 AND key > $2) ORDER BY tenant_id, key LIMIT $3",
                [(*tenant).into(), key.clone().into(), page.into()],
            ),
        };
        let rows = db.query_all_raw(statement).await?;
        if rows.is_empty() {
            return Ok(());
        }
        for row in &rows {
            let tenant: Uuid = row.try_get("", "tenant_id")?;
            let key: String = row.try_get("", "key")?;
            let method: String = row.try_get("", "method")?;
            let hash: String = row.try_get("", "request_hash")?;
            let response: Vec<u8> = row.try_get("", "response")?;
            let hash = hex::decode(&hash).unwrap_or_default();
            let mut answer = vec![FORMAT_LEGACY];
            answer.extend(response);
            db.execute_raw(Statement::from_sql_and_values(
                backend,
                "INSERT INTO replay_records (digest, method, request_hash, answer) VALUES ($1, $2, $3, $4)",
                [
                    digest(TenantId(tenant), &key).into(),
                    method_code(&method).into(),
                    hash.get(..DIGEST_BYTES).unwrap_or(&hash).to_vec().into(),
                    answer.into(),
                ],
            ))
            .await?;
            after = Some((tenant, key));
        }
        if rows.len() < page as usize {
            return Ok(());
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::panic)]

    use chrono::Utc;
    use reservoir_common::auth::KeyId;
    use rust_decimal::Decimal;

    use super::*;

    #[test]
    fn a_request_is_known_by_its_digest_whether_recorded_in_8_bytes_or_16() {
        let request = b"debit 1.00 of account a";
        let hash = request_hash(request);
        assert_eq!(hash.len(), REQUEST_BYTES);
        assert!(same_request(&hash, &hash));
        let recorded_before = Sha256::digest(request)[..16].to_vec();
        assert!(same_request(&recorded_before, &hash), "a record written before still replays");
        assert!(!same_request(&request_hash(b"debit 2.00 of account a"), &hash));
        assert!(!same_request(&[], &hash));
        assert!(!same_request(&hash, &[]), "an empty digest matches nothing");
        assert!(!same_request(&Sha256::digest(request), &hash), "nor a digest of another length");
    }

    #[test]
    fn a_debit_answer_takes_a_few_dozen_bytes() {
        let view = BalanceView {
            available: "999999.99".parse().unwrap(),
            held: Decimal::ZERO,
            total: "999999.99".parse().unwrap(),
            credit_limit: Decimal::ZERO,
            overdraft_used: Decimal::ZERO,
            paid: "999999.99".parse().unwrap(),
            promotional: Decimal::ZERO,
            courtesy: Decimal::ZERO,
            pending: Decimal::ZERO,
            next_expiry_at: None,
            spendable: Some("999999.99".parse().unwrap()),
        };
        let account = AccountId(Uuid::now_v7());
        let entry = Entry {
            id: EntryId::of(12_345, 678),
            account_id: account,
            operation_id: OperationId(Uuid::now_v7()),
            sequence: 678,
            position: 0,
            kind: EntryKind::Debit,
            amount: "-0.01".parse().unwrap(),
            grant_id: None,
            hold_id: None,
            balance_after: "999999.99".parse().unwrap(),
            idempotency_key: "k".into(),
            correlation_id: String::new(),
            meter_code: None,
            description: String::new(),
            metadata: Metadata::new(),
            refunded_entry_id: None,
            created_at: Utc::now(),
            key_id: Some(KeyId(Uuid::now_v7())),
            hash: None,
        };
        let answer = Answer {
            at: Utc::now(),
            wallets: vec![WalletAnswer { account_id: account, entries: vec![entry.clone()], balance: view.clone() }],
            ..Answer::default()
        };
        let bytes = encode(&answer, |_| Some(12_345)).unwrap();
        assert!(bytes.len() <= 48, "{} bytes", bytes.len());
        let Recorded::Answer(stored) = decode(&bytes).unwrap() else { panic!("not an answer") };
        let again = stored.into_answer(vec![(account, vec![entry])]).unwrap();
        assert_eq!(again.wallets[0].balance, view);
        assert_eq!(again.at.timestamp_micros(), answer.at.timestamp_micros());
    }
}
