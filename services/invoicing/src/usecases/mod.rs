//! Flows that span the store and other services: the billing cycle,
//! credit blocks and repayments (`billing`).

pub mod billing;
