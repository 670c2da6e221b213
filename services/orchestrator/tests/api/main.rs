//! Black-box tests of the top-up service's checks over gRPC, on SQLite and
//! PostgreSQL: bad requests are refused by field and change nothing, and
//! one tenant never sees another's top-ups. (The sagas themselves run
//! against all five services in the suite tests, tests/suite/topups.rs.)

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod helpers;
mod requests;
