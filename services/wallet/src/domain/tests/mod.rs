//! The wallet's rules, tested by topic against [`Books`]: a wallet and
//! every entry and event it wrote, with the invariants they keep.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod chain;
mod corrections;
mod draws;
mod holds;
mod properties;
mod rollover;
mod shared;
mod spend;
mod transfers;
mod usage;

use std::collections::BTreeMap;

use chrono::{DateTime, TimeZone, Utc};
use reservoir_common::auth::TenantId;
use reservoir_common::money::Unit;
use rust_decimal::Decimal;
use uuid::Uuid;

use super::*;

fn t0() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 1, 1, 12, 0, 0).unwrap()
}

fn d(text: &str) -> Decimal {
    text.parse().unwrap()
}

fn ctx(now: DateTime<Utc>) -> OperationContext {
    OperationContext::new(now, Uuid::new_v4().to_string())
}

/// A wallet plus every entry it ever wrote, as the ledger table would hold them.
struct Books {
    wallet: Wallet,
    ledger: Vec<Entry>,
    events: Vec<Event>,
}

impl Books {
    fn new(overdraft: Overdraft) -> Self {
        Self::with_threshold(overdraft, None)
    }

    fn with_threshold(overdraft: Overdraft, threshold: Option<&str>) -> Self {
        let new = NewAccount {
            tenant_id: TenantId(Uuid::nil()),
            external_id: "customer-1".into(),
            unit: Unit::currency("USD", None).unwrap(),
            overdraft,
            low_balance_threshold: threshold.map(d),
            metadata: BTreeMap::new(),
        };
        let mut wallet = Wallet::open(new, &ctx(t0()));
        let changes = wallet.take_changes();
        Self { wallet, ledger: changes.entries, events: changes.events }
    }

    fn commit(&mut self) {
        let changes = self.wallet.take_changes();
        self.ledger.extend(changes.entries);
        self.events.extend(changes.events);
    }

    /// Runs an operation as the store would: keep its changes if it succeeds,
    /// go back to the state before it if it fails.
    fn run<T>(&mut self, op: impl FnOnce(&mut Wallet) -> DomainResult<T>) -> DomainResult<T> {
        let before = self.wallet.clone();
        match op(&mut self.wallet) {
            Ok(value) => {
                self.commit();
                Ok(value)
            }
            Err(error) => {
                self.wallet = before;
                Err(error)
            }
        }
    }

    fn grant(&mut self, amount: &str, kind: GrantKind) -> GrantId {
        self.grant_with(amount, kind, |_| {})
    }

    fn grant_with(&mut self, amount: &str, kind: GrantKind, edit: impl FnOnce(&mut NewGrant)) -> GrantId {
        let mut new = NewGrant {
            amount: d(amount),
            kind,
            priority: None,
            effective_at: None,
            expires_at: None,
            meter_codes: Vec::new(),
            source: GrantSource::Admin,
            source_reference: String::new(),
            metadata: BTreeMap::new(),
        };
        edit(&mut new);
        self.run(|wallet| wallet.grant(&ctx(t0()), new)).unwrap()
    }

    fn debit_at(&mut self, amount: &str, meter: Option<&str>, now: DateTime<Utc>) -> DomainResult<Vec<Entry>> {
        let before = self.ledger.len();
        self.run(|wallet| wallet.debit(&ctx(now), d(amount), meter))?;
        Ok(self.ledger[before..].to_vec())
    }

    fn debit(&mut self, amount: &str) -> DomainResult<Vec<Entry>> {
        self.debit_at(amount, None, t0())
    }

    fn available(&self) -> Decimal {
        self.wallet.balance(t0()).available
    }

    fn remaining(&self, id: GrantId) -> Decimal {
        self.wallet.grant_by_id(id).unwrap().remaining
    }

    /// The invariants DESIGN.md names, checked against the full ledger.
    fn check_invariants(&self) {
        let money: Decimal =
            self.ledger.iter().filter(|entry| entry.kind.moves_money()).map(|entry| entry.amount).sum();
        assert_eq!(money, self.wallet.ledger_balance(), "ledger balance = sum of money-moving entries");
        let mut running = Decimal::ZERO;
        for entry in self.ledger.iter().filter(|entry| entry.kind.moves_money()) {
            running += entry.amount;
            assert_eq!(entry.balance_after, running, "every balance_after is the running sum");
        }
        for grant in &self.wallet.grants {
            let entries: Decimal = self
                .ledger
                .iter()
                .filter(|entry| entry.grant_id == Some(grant.id) && entry.kind.moves_money())
                .map(|entry| entry.amount)
                .sum();
            assert_eq!(grant.remaining, entries, "grant remaining = sum of its entries");
            assert!(grant.remaining >= Decimal::ZERO);
        }
        let sequences: Vec<u64> = self.ledger.iter().map(|entry| entry.sequence).collect();
        let expected: Vec<u64> = (1..=self.ledger.len() as u64).collect();
        assert_eq!(sequences, expected, "sequences run from 1 without gaps");
        let mut chain = ChainCheck::default();
        for entry in &self.ledger {
            chain.check(entry).expect("every entry is chained to the one before");
        }
        let head = chain.finish(self.wallet.account.last_sequence, self.wallet.account.ledger_head);
        assert!(head.is_ok(), "the wallet's head is its latest entry's hash: {head:?}");
        let floor = match self.wallet.account.overdraft {
            Overdraft::None => Some(Decimal::ZERO),
            Overdraft::CreditLimit(limit) => Some(-limit),
            Overdraft::Unlimited => None,
        };
        if let Some(floor) = floor {
            assert!(self.wallet.ledger_balance() >= floor, "balance never below the floor");
        }
        let held: Decimal =
            self.wallet.holds.iter().filter(|hold| hold.status == HoldStatus::Active).map(|hold| hold.amount).sum();
        assert_eq!(self.wallet.account.held, held, "held = sum of active holds");
    }
}

fn events_of(books: &Books, event_type: EventType) -> Vec<&Event> {
    books.events.iter().filter(|event| event.event_type == event_type).collect()
}

fn set(books: &mut Books, update: AccountUpdate) {
    books.run(|wallet| wallet.update(&ctx(t0()), update)).unwrap();
}
