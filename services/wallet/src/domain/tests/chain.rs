//! The ledger's hash chain: what a changed, removed or reordered entry
//! looks like to a check, and what does not count as a change.

use super::*;

/// A wallet with a grant, debits and a usage draw: entries of several kinds,
/// one of them chained again after its balance was set.
fn books() -> Books {
    let mut books = Books::new(Overdraft::None);
    books.grant("10", GrantKind::Paid);
    books.grant("5", GrantKind::Promotional);
    books.debit("1.25").unwrap();
    books.debit("3").unwrap();
    books.run(|wallet| wallet.draw_usage(&ctx(t0()), "gpu", &[d("0.50"), d("0.75")])).unwrap();
    books.check_invariants();
    books
}

fn check(ledger: &[Entry], wallet: &Wallet) -> Result<LedgerHash, ChainBreak> {
    let mut chain = ChainCheck::default();
    for entry in ledger {
        chain.check(entry)?;
    }
    chain.finish(wallet.account.last_sequence, wallet.account.ledger_head)
}

#[test]
fn each_entry_is_chained_to_the_one_before() {
    let books = books();
    assert!(books.ledger.len() >= 5);
    let mut previous = LedgerHash::GENESIS;
    for entry in &books.ledger {
        let hash = entry.hash.expect("every new entry carries its hash");
        assert_eq!(hash, crate::domain::chain::entry_hash(&previous, entry));
        assert_ne!(hash, previous);
        previous = hash;
    }
    assert_eq!(books.wallet.account.ledger_head, previous);
    assert_eq!(check(&books.ledger, &books.wallet), Ok(previous));
}

#[test]
fn a_changed_amount_is_reported_at_its_entry() {
    let mut books = books();
    let third = books.ledger[2].clone();
    books.ledger[2].amount = d("-0.01");
    let broken = check(&books.ledger, &books.wallet).unwrap_err();
    assert_eq!(broken.reason(), "ENTRY_ALTERED");
    assert_eq!(broken.sequence(), third.sequence);
    assert_eq!(broken.entry(), Some(third.id));
}

#[test]
fn a_change_that_rehashes_the_entry_is_reported_at_the_next_one() {
    // Whoever edits an entry and stores a hash of the edited content still
    // breaks the link of the entry after it.
    let mut books = books();
    books.ledger[2].description = "nothing to see".into();
    books.ledger[2].hash = Some(crate::domain::chain::entry_hash(&books.ledger[1].hash.unwrap(), &books.ledger[2]));
    let broken = check(&books.ledger, &books.wallet).unwrap_err();
    assert_eq!((broken.reason(), broken.sequence()), ("ENTRY_ALTERED", 4));
}

#[test]
fn moving_an_entry_into_another_operation_is_a_change() {
    // Its place in its operation decides what a refund may give back.
    let mut books = books();
    books.ledger[3].position = 1;
    let broken = check(&books.ledger, &books.wallet).unwrap_err();
    assert_eq!((broken.reason(), broken.sequence()), ("ENTRY_ALTERED", 4));
}

#[test]
fn entries_of_one_operation_take_places_from_zero() {
    let books = books();
    let places: Vec<u32> = books.ledger.iter().map(|entry| entry.position).collect();
    // Two grants, two debits from the promotional grant first, a usage draw.
    assert_eq!(places[..2], [0, 0]);
    assert!(books.ledger.windows(2).all(|pair| pair[1].position == 0
        || (pair[1].operation_id == pair[0].operation_id && pair[1].position == pair[0].position + 1)));
}

#[test]
fn a_removed_entry_is_reported_missing() {
    let mut books = books();
    books.ledger.remove(1);
    let broken = check(&books.ledger, &books.wallet).unwrap_err();
    assert_eq!(broken, ChainBreak::Missing { sequence: 2 });
    assert_eq!(broken.entry(), None);
}

#[test]
fn entries_removed_from_the_end_leave_the_head_behind() {
    let mut books = books();
    let last = books.ledger.pop().unwrap();
    books.wallet.account.last_sequence -= 1;
    let broken = check(&books.ledger, &books.wallet).unwrap_err();
    assert_eq!(broken.reason(), "HEAD_MISMATCH");
    assert!(matches!(broken, ChainBreak::Head { stored, .. } if stored == last.hash.unwrap()));
}

#[test]
fn a_kept_hash_must_still_be_there() {
    let books = books();
    let kept = KnownHash { sequence: 3, hash: books.ledger[2].hash.unwrap() };
    let mut chain = ChainCheck::new(Some(kept));
    books.ledger.iter().for_each(|entry| chain.check(entry).unwrap());
    assert!(chain.finish(books.wallet.account.last_sequence, books.wallet.account.ledger_head).is_ok());

    let other = KnownHash { sequence: 3, hash: books.ledger[3].hash.unwrap() };
    let mut chain = ChainCheck::new(Some(other));
    let broken = books.ledger.iter().try_for_each(|entry| chain.check(entry)).unwrap_err();
    assert_eq!((broken.reason(), broken.sequence()), ("KNOWN_HASH_MISMATCH", 3));

    let beyond = KnownHash { sequence: 99, hash: books.wallet.account.ledger_head };
    let mut chain = ChainCheck::new(Some(beyond));
    books.ledger.iter().for_each(|entry| chain.check(entry).unwrap());
    let broken = chain.finish(books.wallet.account.last_sequence, books.wallet.account.ledger_head).unwrap_err();
    assert_eq!(broken, ChainBreak::Missing { sequence: 99 });
}

#[test]
fn what_a_database_gives_back_hashes_the_same() {
    // Amounts come back with another scale, instants to the microsecond.
    let books = books();
    let mut read_back = books.ledger[2].clone();
    read_back.amount.rescale(8);
    read_back.balance_after.rescale(8);
    assert_eq!(read_back.amount.scale(), 8);
    read_back.created_at = DateTime::from_timestamp_micros(read_back.created_at.timestamp_micros()).unwrap();
    let previous = books.ledger[1].hash.unwrap();
    assert_eq!(crate::domain::chain::entry_hash(&previous, &read_back), books.ledger[2].hash.unwrap());
    read_back.metadata.insert("k".into(), "v".into());
    assert_ne!(crate::domain::chain::entry_hash(&previous, &read_back), books.ledger[2].hash.unwrap());
}

#[test]
fn hashes_read_back_in_hex() {
    let hash = books().wallet.account.ledger_head;
    assert_eq!(hash.to_hex().len(), 32);
    assert_eq!(LedgerHash::from_hex(&hash.to_hex().to_uppercase()), Some(hash));
    assert_eq!(LedgerHash::from_hex("abc"), None);
}
