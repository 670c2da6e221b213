//! Flows over the store that no single call makes: the expiry sweeper
//! (`sweep`) and the check of a ledger's hash chain (`verify`). A debit's own flow is the group committer's
//! (`store/committer.rs`): it decides and writes a batch under the accounts'
//! locks, so it lives beside the store.

pub mod sweep;
pub mod verify;
