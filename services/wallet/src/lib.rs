//! The wallet service: accounts, grants (credit blocks), holds and the
//! append-only ledger. `api` translates gRPC, `domain` decides, `store` persists
//! (its group committer decides and writes debits in batches), `usecases` runs
//! the expiry sweeper.

pub mod api;
pub mod app;
pub mod domain;
pub mod error;
pub mod store;
pub mod usecases;
