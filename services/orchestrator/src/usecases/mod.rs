//! Flows that span the store and other services: a top-up's steps
//! (`saga`), what refunds take back of bonuses (`clawbacks`), what every
//! replica does by itself (`worker`), and webhook delivery (`webhooks`).

pub mod clawbacks;
pub mod saga;
pub mod webhooks;
pub mod worker;
