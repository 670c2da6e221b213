//! Flows that span the store and other services: the billing cycle,
//! credit blocks and repayments (`billing`), scheduled reports made and
//! emailed (`reports`), and billing alerts found and emailed (`alerts`).

pub mod alerts;
pub mod billing;
pub mod reports;
