//! The orchestrator's one error type: the shared one, whose mapping to gRPC
//! statuses every such service uses alike.

pub use reservoir_common::error::ServiceError as OrchestratorError;
