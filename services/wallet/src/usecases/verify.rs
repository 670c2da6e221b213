//! Checking an account's ledger against its hash chain: every entry read
//! again in sequence order, a page at a time, its hash computed afresh from
//! what the ledger holds and compared with the hash stored beside it.

use reservoir_common::auth::TenantId;

use crate::domain::{Account, AccountId, ChainBreak, ChainCheck, KnownHash, LedgerHash};
use crate::error::WalletError;
use crate::store::{CHAIN_PAGE, Store};

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
async fn beyond_head(store: &Store, account: &Account) -> Result<Option<ChainBreak>, WalletError> {
    let Some(highest) = store.highest_entry(account).await? else { return Ok(None) };
    if highest.sequence <= account.last_sequence {
        return Ok(None);
    }
    let now_last = store.account(account.tenant_id, account.id).await?.last_sequence;
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
    let mut check = ChainCheck::new(known);
    let mut after = 0;
    let broken = loop {
        let page = store.chain_entries(&account, after, CHAIN_PAGE).await?;
        // Entries written since the check began are left for the next one.
        let entries: Vec<_> = page.iter().take_while(|entry| entry.sequence <= last_sequence).collect();
        let Some(last) = entries.last() else { break None };
        after = last.sequence;
        if let Err(broken) = entries.into_iter().try_for_each(|entry| check.check(entry)) {
            break Some(broken);
        }
    };
    let checked = check.checked();
    let outcome = match broken {
        Some(broken) => Err(broken),
        None => match check.finish(last_sequence, account.ledger_head) {
            Ok(head) => beyond_head(store, &account).await?.map_or(Ok(head), Err),
            Err(broken) => Err(broken),
        },
    };
    Ok(Verification { checked, last_sequence, head: outcome.as_ref().ok().copied(), broken: outcome.err() })
}
