//! Outbound calls: the wallet.

pub mod wallet;
