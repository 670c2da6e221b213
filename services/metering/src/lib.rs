//! The metering service: meters, prices, and usage events drawn down from
//! wallets exactly once. `api` translates gRPC, `usecases` runs the flows
//! that span the store and the wallet (drawing lines, the asynchronous
//! drawdown), `domain` decides, `store` persists, `clients` calls the wallet.

pub mod api;
pub mod app;
pub mod clients;
pub mod domain;
pub mod error;
pub mod store;
pub mod usecases;
