//! The wallet's rules, without I/O: a [`Wallet`] is one account's state as
//! loaded for an operation; operations change it and record the ledger
//! entries and events the store must write in the same transaction.

pub mod chain;
mod command;
pub mod fraud;
mod statement;
mod types;
mod wallet;

#[cfg(test)]
mod tests;

pub use chain::{ChainBreak, ChainCheck, KnownHash, LedgerHash};
pub use command::*;
pub use statement::*;
pub use types::*;
pub use wallet::*;
