//! The payments service: payment methods, charges through a gateway with
//! every attempt recorded, refunds, and vouchers sold as codes. `api`
//! translates gRPC, `usecases` charges and refunds through the gateway,
//! `domain` decides, `store` persists, `clients` holds the gateway (the
//! outside system that moves the money) and the services payments asks.

pub mod api;
pub mod app;
pub mod clients;
pub mod domain;
pub mod error;
pub mod store;
pub mod usecases;
