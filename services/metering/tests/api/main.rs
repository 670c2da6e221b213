//! Black-box tests of metering with a real wallet behind it, over gRPC, on
//! SQLite and PostgreSQL.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod helpers;

mod aggregate;
mod aggregations;
mod authorizations;
mod ingestion;
mod outage;
mod prices;
mod traces;
mod upgrade;
