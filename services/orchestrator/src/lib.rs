//! The orchestrator: top-up sagas that survive crashes, and webhooks.
//! `api` translates gRPC, `usecases` runs the flows (the saga's steps, the
//! worker that resumes them and follows other services' events, webhook
//! delivery), `domain` decides, `store` persists, `clients` calls the
//! wallet, invoicing and payments and guards webhook destinations.

pub mod api;
pub mod app;
pub mod clients;
pub mod domain;
pub mod error;
pub mod store;
pub mod usecases;
