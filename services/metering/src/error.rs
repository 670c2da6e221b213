//! Metering's one error type; its one mapping to gRPC statuses is
//! `api/status.rs`.

use reservoir_common::db::replay::ReplayFailure;
use reservoir_common::db::{Failure, classify};
use reservoir_common::error::Cause;
use reservoir_common::status::FieldViolation;
use reservoir_common::validate::InvalidRequest;
use sea_orm::DbErr;

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

impl From<InvalidRequest> for MeteringError {
    fn from(invalid: InvalidRequest) -> Self {
        Self::InvalidArgument(invalid.0)
    }
}

impl From<ReplayFailure> for MeteringError {
    #[track_caller]
    fn from(failure: ReplayFailure) -> Self {
        match failure {
            ReplayFailure::KeyReused => Self::IdempotencyKeyReused,
            ReplayFailure::Unreadable(message) => Self::internal(message),
            ReplayFailure::Database(error) => Self::from(error),
        }
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
