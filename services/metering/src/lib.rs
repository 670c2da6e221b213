//! The metering service: meters, prices, and usage events drawn down from
//! wallets exactly once. `api` translates gRPC, `domain` decides, `store`
//! persists, `wallet` calls the wallet service.

pub mod api;
pub mod app;
pub mod charge;
pub mod domain;
pub mod drawdown;
pub mod error;
pub mod store;
pub mod wallet;
