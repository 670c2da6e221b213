//! Flows that span the store and the gateway: charges and refunds
//! (`charges`).

pub mod charges;
