//! Flows that span the store and other services: a top-up's steps
//! (`saga`), what every replica does by itself (`worker`), and webhook
//! delivery (`webhooks`).

pub mod saga;
pub mod webhooks;
pub mod worker;
