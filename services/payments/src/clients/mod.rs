//! Outbound calls: the payment gateway, and the services that own the
//! accounts, units and invoices payments checks.

pub mod gateway;
pub mod owners;
