//! Metering's one error type and its one mapping to gRPC statuses.

use reservoir_common::db::{Failure, classify};
use reservoir_common::error::Cause;
use reservoir_common::status::{self, FieldViolation};
use reservoir_common::validate::InvalidRequest;
use sea_orm::DbErr;
use tonic::{Code, Status};

use crate::domain::Refusal;

#[derive(Debug, thiserror::Error)]
pub enum MeteringError {
    #[error("invalid argument")]
    InvalidArgument(Vec<FieldViolation>),
    #[error("{0} not found")]
    NotFound(&'static str),
    /// A meter code already defined differently: the definition in the way.
    #[error("the meter {code} exists with another definition")]
    MeterExists { code: String, unit_name: String, aggregation: String },
    #[error("the idempotency key was used for a different request")]
    IdempotencyKeyReused,
    /// A refusal by the rules, which the client acts on by its reason.
    #[error(transparent)]
    Refused(#[from] Refusal),
    #[error("conflict: {0}")]
    Conflict(String),
    /// The database or the wallet cannot be reached.
    #[error("unavailable: {0}")]
    Unavailable(String),
    #[error("internal: {0}")]
    Internal(Cause),
}

impl MeteringError {
    /// An internal failure, remembered with the line that called this.
    #[track_caller]
    pub fn internal(message: impl Into<String>) -> Self {
        Self::Internal(Cause::new(message))
    }

    pub fn field(field: &str, description: impl Into<String>) -> Self {
        Self::InvalidArgument(vec![FieldViolation::new(field, description)])
    }
}

impl From<MeteringError> for Status {
    fn from(error: MeteringError) -> Self {
        match &error {
            MeteringError::InvalidArgument(violations) => status::invalid_argument(violations),
            MeteringError::NotFound(_) => status::with_reason(Code::NotFound, "NOT_FOUND", error.to_string()),
            MeteringError::MeterExists { code, unit_name, aggregation } => status::with_metadata(
                Code::AlreadyExists,
                "METER_EXISTS",
                error.to_string(),
                [("code", code.clone()), ("unit_name", unit_name.clone()), ("aggregation", aggregation.clone())],
            ),
            MeteringError::IdempotencyKeyReused => {
                status::with_reason(Code::AlreadyExists, "IDEMPOTENCY_KEY_REUSED", error.to_string())
            }
            MeteringError::Refused(refusal) => {
                status::with_reason(Code::FailedPrecondition, refusal.reason(), refusal.to_string())
            }
            MeteringError::Conflict(cause) => {
                tracing::info!(%cause, "conflict; the caller retries");
                status::conflict("CONFLICT", "a concurrent change conflicted; retry")
            }
            MeteringError::Unavailable(cause) => {
                tracing::warn!(%cause, "a dependency is unavailable");
                status::unavailable("UNAVAILABLE", "a dependency is unavailable; retry")
            }
            MeteringError::Internal(cause) => status::internal(&error, cause.at()),
        }
    }
}

impl From<InvalidRequest> for MeteringError {
    fn from(invalid: InvalidRequest) -> Self {
        Self::InvalidArgument(invalid.0)
    }
}

impl From<DbErr> for MeteringError {
    #[track_caller]
    fn from(error: DbErr) -> Self {
        match classify(&error) {
            Failure::Conflict => Self::Conflict(error.to_string()),
            Failure::Unavailable => Self::Unavailable(error.to_string()),
            Failure::Internal => Self::internal(error.to_string()),
        }
    }
}
