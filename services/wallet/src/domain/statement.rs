//! An account statement for a period, built from the ledger as it is read:
//! the balance before the period, the period's entries, and each grant's
//! credits at the start and end of the period, worked back from what it holds
//! now and the entries written since.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use rust_decimal::Decimal;

use super::types::*;

/// One grant's part of a statement.
#[derive(Debug, Clone, PartialEq)]
pub struct GrantLine {
    pub grant_id: GrantId,
    pub kind: GrantKind,
    pub opening: Decimal,
    /// Credits the period added to it: the grant itself, refunds to it.
    pub added: Decimal,
    /// Credits the period took from it: debits, captures, transfers out, voids, repayments.
    pub used: Decimal,
    pub expired: Decimal,
    pub closing: Decimal,
}

/// Folds the entries written at or after the period's start (every one, up
/// to the snapshot the grants were read in) into the figures of the statement.
#[derive(Debug)]
pub struct StatementBuilder {
    start: DateTime<Utc>,
    end: DateTime<Utc>,
    /// The running balance after the last entry of the snapshot the entries come from.
    balance_now: Decimal,
    /// Money moved by the period's entries.
    pub period_total: Decimal,
    /// Money moved by the entries after the period.
    after_total: Decimal,
    pub expired: Decimal,
    /// Per grant: the period's additions, uses and expiries, and all that moved after the period.
    moves: BTreeMap<GrantId, (Decimal, Decimal, Decimal, Decimal)>,
}

impl StatementBuilder {
    /// `balance_now` is the balance after the last entry that will be taken.
    pub fn new(start: DateTime<Utc>, end: DateTime<Utc>, balance_now: Decimal) -> Self {
        Self {
            start,
            end,
            balance_now,
            period_total: Decimal::ZERO,
            after_total: Decimal::ZERO,
            expired: Decimal::ZERO,
            moves: BTreeMap::new(),
        }
    }

    /// Takes one entry; true when it is a line of the statement: it moved
    /// money in the period (what holds set aside or free is left out).
    pub fn take(&mut self, entry: &Entry) -> bool {
        let in_period = entry.created_at >= self.start && entry.created_at < self.end;
        if !entry.kind.moves_money() {
            return false;
        }
        if in_period {
            self.period_total += entry.amount;
            if entry.kind == EntryKind::Expiry {
                self.expired -= entry.amount;
            }
        } else {
            self.after_total += entry.amount;
        }
        if let Some(grant) = entry.grant_id {
            let moves = self.moves.entry(grant).or_default();
            if !in_period {
                moves.3 += entry.amount;
            } else if entry.kind == EntryKind::Expiry {
                moves.2 -= entry.amount;
            } else if entry.amount > Decimal::ZERO {
                moves.0 += entry.amount;
            } else {
                moves.1 -= entry.amount;
            }
        }
        in_period
    }

    /// The balance before the period: the balance now less everything
    /// written at or after its start. Worked back like this rather than read
    /// off the entry before the start, it agrees with the entries taken even
    /// where two entries' instants and sequence numbers disagree by a moment.
    pub fn opening_balance(&self) -> Decimal {
        self.balance_now - self.period_total - self.after_total
    }

    pub fn closing_balance(&self) -> Decimal {
        self.opening_balance() + self.period_total
    }

    /// Each grant that held credits during the period, given every grant of
    /// the account as it is now: its closing figure is what it holds now less
    /// what moved after the period, its opening figure that less the period's.
    pub fn grant_lines(&self, grants: &[Grant]) -> Vec<GrantLine> {
        let mut lines = Vec::new();
        for grant in grants {
            let (added, used, expired, after) = self.moves.get(&grant.id).copied().unwrap_or((
                Decimal::ZERO,
                Decimal::ZERO,
                Decimal::ZERO,
                Decimal::ZERO,
            ));
            if grant.created_at >= self.end {
                continue;
            }
            let closing = grant.remaining - after;
            let opening = closing - added + used + expired;
            if opening.is_zero() && closing.is_zero() && added.is_zero() && used.is_zero() && expired.is_zero() {
                continue;
            }
            lines.push(GrantLine { grant_id: grant.id, kind: grant.kind, opening, added, used, expired, closing });
        }
        lines.sort_by_key(|line| line.grant_id);
        lines
    }
}
