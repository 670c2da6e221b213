//! The invoicing service: top-up invoices, monthly statements, postpaid debt
//! and gapless numbering. `api` translates gRPC, `usecases` runs the billing
//! cycle, credit blocks and repayments, `domain` decides, `store` persists,
//! `clients` reads the wallet and metering and sends mail.

pub mod api;
pub mod app;
pub mod clients;
pub mod domain;
pub mod error;
pub mod store;
pub mod usecases;
