//! Black-box tests of invoicing with a real wallet and metering behind it,
//! over gRPC, on SQLite and PostgreSQL.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod helpers;

mod alerts;
mod cycles;
mod invoices;
mod reports;
mod smtp;
