//! The error type of the services whose refusals need nothing of their own
//! (invoicing, the orchestrator), and its one mapping to gRPC statuses.
//! Each names it after itself (`InvoicingError`); the wallet, metering and
//! payments have refusals of their own and types of their own.

use crate::db::{Failure, classify};
use crate::status::{self, FieldViolation};
use crate::validate::InvalidRequest;
use sea_orm::DbErr;
use tonic::{Code, Status};

#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    #[error("invalid argument")]
    InvalidArgument(Vec<FieldViolation>),
    #[error("{0} not found")]
    NotFound(&'static str),
    #[error("the idempotency key was used for a different request")]
    IdempotencyKeyReused,
    /// A refusal a client acts on by its reason, such as INSUFFICIENT_FUNDS.
    #[error("{message}")]
    Precondition { reason: String, message: String },
    #[error("conflict: {0}")]
    Conflict(String),
    /// The database or a service it calls cannot be reached.
    #[error("unavailable: {0}")]
    Unavailable(String),
    #[error("internal: {0}")]
    Internal(String),
}

impl ServiceError {
    pub fn field(field: &str, description: impl Into<String>) -> Self {
        Self::InvalidArgument(vec![FieldViolation::new(field, description)])
    }

    pub fn precondition(reason: &str, message: impl Into<String>) -> Self {
        Self::Precondition { reason: reason.to_owned(), message: message.into() }
    }
}

impl From<ServiceError> for Status {
    fn from(error: ServiceError) -> Self {
        match &error {
            ServiceError::InvalidArgument(violations) => status::invalid_argument(violations),
            ServiceError::NotFound(_) => status::with_reason(Code::NotFound, "NOT_FOUND", error.to_string()),
            ServiceError::IdempotencyKeyReused => {
                status::with_reason(Code::AlreadyExists, "IDEMPOTENCY_KEY_REUSED", error.to_string())
            }
            ServiceError::Precondition { reason, message } => {
                status::with_reason(Code::FailedPrecondition, reason, message.clone())
            }
            ServiceError::Conflict(cause) => {
                tracing::info!(%cause, "conflict; the caller retries");
                status::conflict("CONFLICT", "a concurrent change conflicted; retry")
            }
            ServiceError::Unavailable(cause) => {
                tracing::warn!(%cause, "a dependency is unavailable");
                status::unavailable("UNAVAILABLE", "a dependency is unavailable; retry")
            }
            ServiceError::Internal(_) => status::internal(&error),
        }
    }
}

impl From<InvalidRequest> for ServiceError {
    fn from(invalid: InvalidRequest) -> Self {
        Self::InvalidArgument(invalid.0)
    }
}

impl From<DbErr> for ServiceError {
    fn from(error: DbErr) -> Self {
        match classify(&error) {
            Failure::Conflict => Self::Conflict(error.to_string()),
            Failure::Unavailable => Self::Unavailable(error.to_string()),
            Failure::Internal => Self::Internal(error.to_string()),
        }
    }
}
