//! Black-box tests of the top-up service over gRPC, on SQLite and
//! PostgreSQL: bad requests are refused by field and change nothing, one
//! tenant never sees another's top-ups, and a top-up is one trace across
//! the services. (The sagas' paths and crashes run against all five
//! services as processes in the suite tests, tests/suite/topups.rs.)

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod helpers;
mod receiver;
mod requests;
mod traces;
mod webhook_limits;
mod webhooks;
