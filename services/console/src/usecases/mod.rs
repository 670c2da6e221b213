//! What a page needs from several services, gathered at once.

pub mod account;
pub mod usage;
