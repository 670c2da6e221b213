//! The orchestrator: top-up sagas that survive crashes. `api` translates
//! gRPC, `domain` decides, `store` persists, `saga` runs the steps,
//! `worker` resumes them and follows other services' events, `upstream`
//! calls the wallet, invoicing and payments.

pub mod api;
pub mod app;
pub mod destination;
pub mod domain;
pub mod error;
pub mod saga;
pub mod signature;
pub mod store;
pub mod upstream;
pub mod webhooks;
pub mod worker;
