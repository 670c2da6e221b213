//! The payments service: payment methods, charges through a gateway with
//! every attempt recorded, refunds, and vouchers sold as codes. `api`
//! translates gRPC, `domain` decides, `store` persists, `gateway` is the
//! outside system that moves the money.

pub mod api;
pub mod app;
pub mod domain;
pub mod error;
pub mod gateway;
pub mod store;
