//! The invoicing service: top-up invoices, monthly statements, postpaid debt
//! and gapless numbering. `api` translates gRPC, `domain` decides, `store`
//! persists, `upstream` reads the wallet and metering.

pub mod api;
pub mod app;
pub mod domain;
pub mod error;
pub mod mail;
pub mod store;
pub mod upstream;
