//! Black-box tests of payments over gRPC, with a wallet that checks the
//! callers' keys, on SQLite and PostgreSQL.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod helpers;

mod charges;
mod events;
mod listing;
mod refunds;
mod vouchers;
