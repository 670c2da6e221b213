//! Flows that span the store and other services: the billing cycle,
//! credit blocks and repayments (`billing`), and scheduled reports made and
//! emailed (`reports`).

pub mod billing;
pub mod reports;
