//! Changes as values: what a caller asks of one wallet, and what a change
//! answers. The group committer takes [`Command`]s and gives back
//! [`Answer`]s; the api turns an answer into its response after the commit,
//! and a retry with the same idempotency key gets the recorded answer again.

use chrono::{DateTime, Duration, Utc};
use rust_decimal::Decimal;

use super::types::*;
use super::wallet::Wallet;

/// A change the group committer applies to one wallet.
#[derive(Debug, Clone)]
pub enum Command {
    Debit {
        amount: Decimal,
        meter_code: Option<String>,
    },
    Grant(NewGrant),
    /// A new period's credits, with the previous period's rolled over.
    GrantRollingOver {
        new: NewGrant,
        rollover: Rollover,
    },
    Reserve {
        amount: Decimal,
        ttl: Duration,
        meter_code: Option<String>,
    },
    /// The priced amounts of one meter's usage, in order (see [`Wallet::draw_usage`]).
    DrawUsage {
        meter_code: String,
        amounts: Vec<Decimal>,
    },
}

impl Command {
    /// Applies the command to `wallet` as of `ctx` and answers it. A refused
    /// command leaves the wallet changed only by the expiries it wrote off.
    pub fn apply(&self, wallet: &mut Wallet, ctx: &OperationContext) -> DomainResult<Answer> {
        let mut answer = Answer::at(ctx.now);
        // A child's draws take its parent's wallet too (see `Wallet::debit_shared`).
        if wallet.account.parent.is_some() && matches!(self, Self::Debit { .. } | Self::DrawUsage { .. }) {
            return Err(DomainError::DrawsOnParent);
        }
        match self {
            Self::Debit { amount, meter_code } => {
                wallet.debit(ctx, *amount, meter_code.as_deref())?;
            }
            Self::Grant(new) => {
                let id = wallet.grant(ctx, new.clone())?;
                let grant = wallet.grant_by_id(id).ok_or(DomainError::Inconsistent("the new grant is missing"))?;
                answer.grants.push(grant.clone());
            }
            Self::GrantRollingOver { new, rollover } => {
                let (id, rolled) = wallet.grant_rolling_over(ctx, new.clone(), rollover)?;
                for id in std::iter::once(id).chain(rolled) {
                    let grant = wallet.grant_by_id(id).ok_or(DomainError::Inconsistent("a new grant is missing"))?;
                    answer.grants.push(grant.clone());
                }
            }
            Self::Reserve { amount, ttl, meter_code } => {
                let id = wallet.reserve(ctx, *amount, *ttl, meter_code.as_deref())?;
                let hold = wallet.hold_by_id(id).ok_or(DomainError::Inconsistent("the new hold is missing"))?;
                answer.hold = Some(hold.clone());
            }
            Self::DrawUsage { meter_code, amounts } => {
                answer.usage = Some(wallet.draw_usage(ctx, meter_code, amounts)?);
            }
        }
        answer.wallets.push(WalletAnswer::of(wallet, ctx));
        Ok(answer)
    }
}

/// What a change answered: its entries and balance per wallet changed, and
/// the grants, hold or account it made or changed, as they stood then.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Answer {
    /// The instant of the change, which a grant's shown status depends on.
    pub at: DateTime<Utc>,
    /// One per wallet changed: one, or two for a transfer (sender first).
    pub wallets: Vec<WalletAnswer>,
    pub grants: Vec<Grant>,
    pub hold: Option<Hold>,
    pub account: Option<Account>,
    /// For a usage draw: what became of each amount.
    pub usage: Option<UsageDrawn>,
}

impl Answer {
    pub fn at(at: DateTime<Utc>) -> Self {
        Self { at, ..Self::default() }
    }

    /// The answer of the one wallet a change touched (the sender's for a transfer).
    pub fn first(&self) -> Option<&WalletAnswer> {
        self.wallets.first()
    }
}

/// One wallet's part of an answer.
#[derive(Debug, Clone, PartialEq)]
pub struct WalletAnswer {
    pub account_id: AccountId,
    /// The entries the change itself wrote (not the expiries it wrote off
    /// first), in sequence order.
    pub entries: Vec<Entry>,
    pub balance: BalanceView,
}

impl WalletAnswer {
    /// The wallet's part after the change made with `ctx`.
    pub fn of(wallet: &Wallet, ctx: &OperationContext) -> Self {
        Self {
            account_id: wallet.account.id,
            entries: wallet
                .changes()
                .entries
                .iter()
                .filter(|entry| entry.operation_id == ctx.operation_id)
                .cloned()
                .collect(),
            balance: wallet.balance(ctx.now),
        }
    }
}
