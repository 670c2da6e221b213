//! The error type of the services whose refusals need nothing of their own
//! (invoicing, the orchestrator); its one mapping to gRPC statuses is in
//! `status.rs`, with the other status helpers.
//! Each names it after itself (`InvoicingError`); the wallet, metering and
//! payments have refusals of their own and types of their own.

use std::fmt;
use std::panic::Location;

use crate::db::{Failure, classify};
use crate::status::FieldViolation;
use crate::validate::InvalidRequest;
use sea_orm::DbErr;

/// What went wrong inside, and the line where it arose: captured when the
/// error is made (`#[track_caller]`, through `?` too), so the log names the
/// line that failed rather than the conversion into a status.
#[derive(Debug, Clone)]
pub struct Cause {
    message: String,
    at: &'static Location<'static>,
}

impl Cause {
    #[track_caller]
    pub fn new(message: impl Into<String>) -> Self {
        Self { message: message.into(), at: Location::caller() }
    }

    /// Where it arose.
    pub fn at(&self) -> &'static Location<'static> {
        self.at
    }
}

impl fmt::Display for Cause {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str(&self.message)
    }
}

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
    Internal(Cause),
}

impl ServiceError {
    /// An internal failure, remembered with the line that called this.
    #[track_caller]
    pub fn internal(message: impl Into<String>) -> Self {
        Self::Internal(Cause::new(message))
    }

    pub fn field(field: &str, description: impl Into<String>) -> Self {
        Self::InvalidArgument(vec![FieldViolation::new(field, description)])
    }

    pub fn precondition(reason: &str, message: impl Into<String>) -> Self {
        Self::Precondition { reason: reason.to_owned(), message: message.into() }
    }
}

impl From<InvalidRequest> for ServiceError {
    fn from(invalid: InvalidRequest) -> Self {
        Self::InvalidArgument(invalid.0)
    }
}

impl From<DbErr> for ServiceError {
    #[track_caller]
    fn from(error: DbErr) -> Self {
        match classify(&error) {
            Failure::Conflict => Self::Conflict(error.to_string()),
            Failure::Unavailable => Self::Unavailable(error.to_string()),
            Failure::Internal => Self::internal(error.to_string()),
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::panic)]
    use super::*;

    fn failing_query() -> Result<(), ServiceError> {
        Err(DbErr::Custom("the query broke".into()))?;
        Ok(())
    }

    #[test]
    fn an_internal_error_names_the_line_it_arose_on() {
        let made = ServiceError::internal("a checked field went missing");
        let made_on = line!() - 1;
        let Err(ServiceError::Internal(converted)) = failing_query() else { panic!("not internal") };
        let ServiceError::Internal(made) = made else { panic!("not internal") };
        assert_eq!((made.at().file(), made.at().line()), (file!(), made_on));
        // Through `?`: the line of the `?` in `failing_query`, not of the conversion.
        let question_mark = include_str!("error.rs")
            .lines()
            .position(|line| line.trim() == r#"Err(DbErr::Custom("the query broke".into()))?;"#)
            .unwrap();
        assert_eq!((converted.at().file(), converted.at().line()), (file!(), question_mark as u32 + 1));
        assert_eq!(converted.to_string(), "Custom Error: the query broke");
    }
}
