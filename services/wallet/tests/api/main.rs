//! Black-box tests of the wallet over gRPC, each on SQLite and PostgreSQL.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod helpers;

mod accounts;
mod admin;
mod auth;
mod budgets;
mod clawback;
mod concurrency;
mod drawdown;
mod events;
mod fraud;
mod holds;
mod idempotency;
mod ledger;
mod replay_property;
mod reports;
mod rollover;
mod server;
mod spend;
mod transfers;
mod upgrade;
mod usage;
