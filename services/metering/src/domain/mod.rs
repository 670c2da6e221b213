//! Metering's rules, without I/O: how a price is chosen and how an event is
//! charged, and how usage is grouped for reports.

mod aggregation;
mod authorization;
mod pricing;
mod refusal;
mod usage;

pub use aggregation::*;
pub use authorization::*;
pub use pricing::*;
pub use refusal::Refusal;
pub use usage::*;
