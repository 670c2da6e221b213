//! Checking an account's ledger against its hash chain: every entry read
//! again in sequence order, a page at a time, its hash computed afresh from
//! what the ledger holds and compared with the hash stored beside it.

use reservoir_common::auth::TenantId;

use crate::domain::{AccountId, ChainBreak, ChainCheck, KnownHash, LedgerHash};
use crate::error::WalletError;
use crate::store::{CHAIN_PAGE, EntryFilter, Store};

/// What a check of a ledger found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verification {
    /// Entries whose hash matched, from the first.
    pub checked: u64,
    /// The latest entry's sequence when the check began: what was checked up to.
    pub last_sequence: u64,
    /// The recomputed hash of the entry at `last_sequence`, when intact.
    pub head: Option<LedgerHash>,
    /// The first entry that does not match, if any.
    pub broken: Option<ChainBreak>,
}

/// An entry past the account's latest sequence. Entries written while the
/// check ran lie past the sequence it began at, so the account is read again
/// after the highest entry: a change of the account moves its sequence in
/// the transaction that writes its entries, so an entry past even the
/// sequence read afterwards was not written by one.
async fn beyond_head(
    store: &Store,
    tenant: TenantId,
    account_id: AccountId,
    last_sequence: u64,
) -> Result<Option<ChainBreak>, WalletError> {
    let Some(highest) = store.highest_entry(tenant, account_id).await? else { return Ok(None) };
    if highest.sequence <= last_sequence {
        return Ok(None);
    }
    let now_last = store.account(tenant, account_id).await?.last_sequence;
    Ok((highest.sequence > now_last).then_some(ChainBreak::Beyond { sequence: highest.sequence, entry: highest.id }))
}

/// Recomputes the chain of `account_id` up to its latest entry as it stands
/// now (entries written while the check runs are left for the next one).
/// `known`, a hash the caller kept of one entry, must be met on the way.
pub async fn verify_ledger(
    store: &Store,
    tenant: TenantId,
    account_id: AccountId,
    known: Option<KnownHash>,
) -> Result<Verification, WalletError> {
    let account = store.account(tenant, account_id).await?;
    let last_sequence = account.last_sequence;
    let filter = EntryFilter { through_sequence: Some(last_sequence), ..EntryFilter::default() };
    let mut check = ChainCheck::new(known);
    let mut after = 0;
    let broken = loop {
        let entries = store.entries(tenant, account_id, &filter, after, CHAIN_PAGE).await?;
        let Some(last) = entries.last() else { break None };
        after = last.sequence;
        if let Err(broken) = entries.iter().try_for_each(|entry| check.check(entry)) {
            break Some(broken);
        }
    };
    let checked = check.checked();
    let (head, broken) = match broken {
        Some(broken) => (None, Some(broken)),
        None => match check.finish(last_sequence, account.ledger_head) {
            Ok(head) => match beyond_head(store, tenant, account_id, last_sequence).await? {
                Some(broken) => (None, Some(broken)),
                None => (Some(head), None),
            },
            Err(broken) => (None, Some(broken)),
        },
    };
    Ok(Verification { checked, last_sequence, head, broken })
}
