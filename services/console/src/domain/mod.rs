//! The console's rules: who may do what, and the figures its pages draw.

pub mod access;
pub mod billing;
pub mod usage;

pub use access::Role;
pub use billing::BillingMode;
