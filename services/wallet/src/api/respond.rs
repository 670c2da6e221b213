//! Answers to responses: each mutating RPC's response is built from the
//! domain's [`Answer`], the first time and on every replay alike. Replays of
//! calls an earlier version recorded carry that version's encoded response.

use prost::Message;
use reservoir_common::money::Unit;
use reservoir_proto::wallet as pb;
use rust_decimal::Decimal;

use super::convert;
use crate::domain::{Answer, DomainError, EntryKind, WalletAnswer};
use crate::error::WalletError;
use crate::store::Reply;

/// The response of a reply: built from the answer, or decoded as recorded.
pub fn respond<M: Message + Default>(
    reply: Reply,
    build: impl FnOnce(&Answer) -> Result<M, WalletError>,
) -> Result<M, WalletError> {
    match reply {
        Reply::Answer(answer) => build(&answer),
        Reply::Legacy(bytes) => M::decode(bytes.as_slice())
            .map_err(|error| WalletError::internal(format!("a recorded response does not decode: {error}"))),
    }
}

fn part(answer: &Answer, index: usize) -> Result<&WalletAnswer, WalletError> {
    answer.wallets.get(index).ok_or(WalletError::Domain(DomainError::Inconsistent("an answer lost its wallet")))
}

fn entries(part: &WalletAnswer, unit: &Unit) -> Vec<pb::LedgerEntry> {
    part.entries.iter().map(|entry| convert::entry(entry, unit)).collect()
}

fn balance(part: &WalletAnswer, unit: &Unit) -> Option<pb::Balance> {
    Some(convert::balance(part.account_id, unit, &part.balance))
}

fn first_grant(answer: &Answer, unit: &Unit) -> Result<pb::Grant, WalletError> {
    answer
        .grants
        .first()
        .map(|grant| convert::grant(grant, unit, answer.at))
        .ok_or(WalletError::Domain(DomainError::Inconsistent("an answer lost its grant")))
}

fn the_hold(answer: &Answer, unit: &Unit) -> Result<pb::Hold, WalletError> {
    answer
        .hold
        .as_ref()
        .map(|hold| convert::hold(hold, unit))
        .ok_or(WalletError::Domain(DomainError::Inconsistent("an answer lost its hold")))
}

fn the_account(answer: &Answer) -> Result<pb::Account, WalletError> {
    answer
        .account
        .as_ref()
        .map(convert::account)
        .ok_or(WalletError::Domain(DomainError::Inconsistent("an answer lost its account")))
}

pub fn debit(answer: &Answer, unit: &Unit) -> Result<pb::DebitResponse, WalletError> {
    let part = part(answer, 0)?;
    Ok(pb::DebitResponse { entries: entries(part, unit), balance: balance(part, unit) })
}

pub fn grant(answer: &Answer, unit: &Unit) -> Result<pb::GrantCreditsResponse, WalletError> {
    let part = part(answer, 0)?;
    Ok(pb::GrantCreditsResponse {
        grant: Some(first_grant(answer, unit)?),
        entries: entries(part, unit),
        balance: balance(part, unit),
        rolled_over: answer.grants.get(1).map(|grant| convert::grant(grant, unit, answer.at)),
    })
}

pub fn reserve(answer: &Answer, unit: &Unit) -> Result<pb::ReserveResponse, WalletError> {
    let part = part(answer, 0)?;
    Ok(pb::ReserveResponse { hold: Some(the_hold(answer, unit)?), balance: balance(part, unit) })
}

pub fn capture(answer: &Answer, unit: &Unit) -> Result<pb::CaptureHoldResponse, WalletError> {
    let part = part(answer, 0)?;
    Ok(pb::CaptureHoldResponse {
        hold: Some(the_hold(answer, unit)?),
        entries: entries(part, unit),
        balance: balance(part, unit),
    })
}

pub fn release(answer: &Answer, unit: &Unit) -> Result<pb::ReleaseHoldResponse, WalletError> {
    let part = part(answer, 0)?;
    Ok(pb::ReleaseHoldResponse { hold: Some(the_hold(answer, unit)?), balance: balance(part, unit) })
}

pub fn adjust(answer: &Answer, unit: &Unit) -> Result<pb::AdjustResponse, WalletError> {
    let part = part(answer, 0)?;
    Ok(pb::AdjustResponse {
        entries: entries(part, unit),
        balance: balance(part, unit),
        grant: answer.grants.first().map(|grant| convert::grant(grant, unit, answer.at)),
    })
}

pub fn refund(answer: &Answer, unit: &Unit) -> Result<pb::RefundResponse, WalletError> {
    let part = part(answer, 0)?;
    Ok(pb::RefundResponse { entries: entries(part, unit), balance: balance(part, unit) })
}

pub fn void(answer: &Answer, unit: &Unit) -> Result<pb::VoidGrantResponse, WalletError> {
    let part = part(answer, 0)?;
    let voided: Decimal =
        part.entries.iter().filter(|entry| entry.kind == EntryKind::Void).map(|entry| -entry.amount).sum();
    Ok(pb::VoidGrantResponse {
        grant: Some(first_grant(answer, unit)?),
        entries: entries(part, unit),
        balance: balance(part, unit),
        voided: unit.format(voided),
    })
}

pub fn transfer(answer: &Answer, unit: &Unit) -> Result<pb::TransferResponse, WalletError> {
    let (sender, receiver) = (part(answer, 0)?, part(answer, 1)?);
    Ok(pb::TransferResponse {
        out_entries: entries(sender, unit),
        in_entries: entries(receiver, unit),
        grants: answer.grants.iter().map(|grant| convert::grant(grant, unit, answer.at)).collect(),
        from_balance: balance(sender, unit),
        to_balance: balance(receiver, unit),
        review: None,
    })
}

pub fn update_account(answer: &Answer) -> Result<pb::UpdateAccountResponse, WalletError> {
    Ok(pb::UpdateAccountResponse { account: Some(the_account(answer)?) })
}

pub fn create_account(answer: &Answer) -> Result<pb::CreateAccountResponse, WalletError> {
    Ok(pb::CreateAccountResponse { account: Some(the_account(answer)?) })
}

pub fn usage(answer: &Answer, unit: &Unit) -> Result<pb::UsageDraw, WalletError> {
    let part = part(answer, 0)?;
    let drawn =
        answer.usage.as_ref().ok_or(WalletError::Domain(DomainError::Inconsistent("an answer lost its usage")))?;
    let amounts = drawn
        .outcomes
        .iter()
        .map(|outcome| match outcome {
            None => pb::UsageAmountResult { charged: true, reason: String::new() },
            Some(error) => {
                pb::UsageAmountResult { charged: false, reason: WalletError::Domain(error.clone()).reason().to_owned() }
            }
        })
        .collect();
    Ok(pb::UsageDraw { amounts, entries: entries(part, unit), balance: balance(part, unit) })
}
