//! Building `tonic::Status` values that carry the rich error details clients
//! read: `google.rpc.ErrorInfo` with a reason and `google.rpc.BadRequest`.

use std::collections::HashMap;

use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt};

use crate::error::ServiceError;

/// The `ErrorInfo.domain` of every Reservoir error: a DNS-style name, as
/// AIP-193 asks, so it cannot be mistaken for another system's.
pub const ERROR_DOMAIN: &str = "reservoir.io";

/// One field a request got wrong, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldViolation {
    pub field: String,
    pub description: String,
}

impl FieldViolation {
    pub fn new(field: impl Into<String>, description: impl Into<String>) -> Self {
        Self { field: field.into(), description: description.into() }
    }
}

/// INVALID_ARGUMENT with a BadRequest that names each field, and an ErrorInfo
/// whose reason is INVALID_ARGUMENT.
pub fn invalid_argument(violations: &[FieldViolation]) -> Status {
    let mut details = ErrorDetails::new();
    for violation in violations {
        details.add_bad_request_violation(violation.field.clone(), violation.description.clone());
    }
    // The fields named in the metadata too, for clients that read only ErrorInfo.
    let mut fields: Vec<&str> = violations.iter().map(|violation| violation.field.as_str()).collect();
    fields.dedup();
    let metadata = HashMap::from([("fields".to_owned(), fields.join(","))]);
    details.set_error_info("INVALID_ARGUMENT", ERROR_DOMAIN, metadata);
    let message = violations
        .iter()
        .map(|violation| format!("{}: {}", violation.field, violation.description))
        .collect::<Vec<_>>()
        .join("; ");
    Status::with_error_details(Code::InvalidArgument, message, details)
}

/// A status with an ErrorInfo reason, for errors a client acts on by reason.
pub fn with_reason(code: Code, reason: &str, message: impl Into<String>) -> Status {
    reasoned(code, reason, message, ErrorDetails::new())
}

/// How long a caller waits before trying again a call answered UNAVAILABLE
/// because a dependency (the database, another service) did not answer.
pub const UNAVAILABLE_RETRY: std::time::Duration = std::time::Duration::from_secs(1);
/// How long a caller waits before trying again a call ABORTED by a
/// concurrent change: hardly at all, the change it met is committed.
pub const CONFLICT_RETRY: std::time::Duration = std::time::Duration::from_millis(20);

/// UNAVAILABLE with its reason and a RetryInfo of [`UNAVAILABLE_RETRY`].
pub fn unavailable(reason: &str, message: impl Into<String>) -> Status {
    retry_later(Code::Unavailable, reason, message, UNAVAILABLE_RETRY)
}

/// ABORTED with its reason and a RetryInfo of [`CONFLICT_RETRY`].
pub fn conflict(reason: &str, message: impl Into<String>) -> Status {
    retry_later(Code::Aborted, reason, message, CONFLICT_RETRY)
}

/// As [`with_reason`], with a RetryInfo saying when to try again: a refusal
/// for load or rate that a client should retry after `delay`.
pub fn retry_later(code: Code, reason: &str, message: impl Into<String>, delay: std::time::Duration) -> Status {
    reasoned(code, reason, message, ErrorDetails::with_retry_info(Some(delay)))
}

/// As [`with_reason`], the ErrorInfo carrying `metadata`: what the caller
/// needs to act on the error, such as the id of the resource in the way.
pub fn with_metadata<const N: usize>(
    code: Code,
    reason: &str,
    message: impl Into<String>,
    metadata: [(&str, String); N],
) -> Status {
    reasoned_with(code, reason, message, ErrorDetails::new(), metadata)
}

/// As [`retry_later`], the ErrorInfo carrying `metadata` (the limit met).
pub fn retry_later_with<const N: usize>(
    code: Code,
    reason: &str,
    message: impl Into<String>,
    delay: std::time::Duration,
    metadata: [(&str, String); N],
) -> Status {
    reasoned_with(code, reason, message, ErrorDetails::with_retry_info(Some(delay)), metadata)
}

fn reasoned(code: Code, reason: &str, message: impl Into<String>, details: ErrorDetails) -> Status {
    reasoned_with(code, reason, message, details, [])
}

fn reasoned_with<const N: usize>(
    code: Code,
    reason: &str,
    message: impl Into<String>,
    mut details: ErrorDetails,
    metadata: [(&str, String); N],
) -> Status {
    let metadata: HashMap<String, String> = metadata.into_iter().map(|(key, value)| (key.to_owned(), value)).collect();
    details.set_error_info(reason, ERROR_DOMAIN, metadata);
    Status::with_error_details(code, message, details)
}

/// A code's canonical name, as gRPC writes it and as ErrorInfo reasons
/// spell the generic ones: `Code::InvalidArgument` is "INVALID_ARGUMENT".
pub fn code_name(code: Code) -> &'static str {
    match code {
        Code::Ok => "OK",
        Code::Cancelled => "CANCELLED",
        Code::Unknown => "UNKNOWN",
        Code::InvalidArgument => "INVALID_ARGUMENT",
        Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
        Code::NotFound => "NOT_FOUND",
        Code::AlreadyExists => "ALREADY_EXISTS",
        Code::PermissionDenied => "PERMISSION_DENIED",
        Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
        Code::FailedPrecondition => "FAILED_PRECONDITION",
        Code::Aborted => "ABORTED",
        Code::OutOfRange => "OUT_OF_RANGE",
        Code::Unimplemented => "UNIMPLEMENTED",
        Code::Internal => "INTERNAL",
        Code::Unavailable => "UNAVAILABLE",
        Code::DataLoss => "DATA_LOSS",
        Code::Unauthenticated => "UNAUTHENTICATED",
    }
}

/// The reason a status gives: its ErrorInfo reason, or without one its
/// code's canonical name.
pub fn reason_or_code(status: &Status) -> String {
    reason_of(status).unwrap_or_else(|| code_name(status.code()).to_owned())
}

/// The ErrorInfo reason a status carries, if any.
pub fn reason_of(status: &Status) -> Option<String> {
    status.get_error_details().error_info().map(|info| info.reason.clone())
}

/// The ErrorInfo metadata a status carries (empty without one).
pub fn metadata_of(status: &Status) -> HashMap<String, String> {
    status.get_error_details().error_info().map(|info| info.metadata.clone()).unwrap_or_default()
}

/// The fields a BadRequest names, if any.
pub fn violated_fields(status: &Status) -> Vec<String> {
    status
        .get_error_details()
        .bad_request()
        .map(|bad| bad.field_violations.iter().map(|violation| violation.field.clone()).collect())
        .unwrap_or_default()
}

/// INTERNAL with nothing of the cause in it; the cause is logged here, once,
/// with where it arose (`at`).
pub fn internal(cause: &dyn std::fmt::Display, at: &std::panic::Location<'_>) -> Status {
    tracing::error!(%cause, file = at.file(), line = at.line(), "internal error");
    with_reason(Code::Internal, "INTERNAL", "internal error")
}

/// The one mapping of the shared service error to gRPC statuses.
impl From<ServiceError> for Status {
    fn from(error: ServiceError) -> Self {
        match &error {
            ServiceError::InvalidArgument(violations) => invalid_argument(violations),
            ServiceError::NotFound(_) => with_reason(Code::NotFound, "NOT_FOUND", error.to_string()),
            ServiceError::IdempotencyKeyReused => {
                with_reason(Code::AlreadyExists, "IDEMPOTENCY_KEY_REUSED", error.to_string())
            }
            ServiceError::Precondition { reason, message } => {
                with_reason(Code::FailedPrecondition, reason, message.clone())
            }
            ServiceError::Conflict(cause) => {
                tracing::info!(%cause, "conflict; the caller retries");
                conflict("CONFLICT", "a concurrent change conflicted; retry")
            }
            ServiceError::Unavailable(cause) => {
                tracing::warn!(%cause, "a dependency is unavailable");
                unavailable("UNAVAILABLE", "a dependency is unavailable; retry")
            }
            ServiceError::Internal(cause) => internal(&error, cause.at()),
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn retryable_refusals_say_when_to_try_again() {
        for (status, code, delay) in [
            (unavailable("UNAVAILABLE", "the database is unavailable; retry"), Code::Unavailable, UNAVAILABLE_RETRY),
            (conflict("CONFLICT", "a concurrent change conflicted; retry"), Code::Aborted, CONFLICT_RETRY),
        ] {
            assert_eq!(status.code(), code);
            let details = status.get_error_details();
            let retry = details.retry_info().unwrap().retry_delay.unwrap();
            assert_eq!(retry, delay);
            assert_eq!(details.error_info().unwrap().domain, ERROR_DOMAIN);
        }
    }

    #[test]
    fn a_status_without_error_info_gives_its_code_as_grpc_names_it() {
        assert_eq!(reason_or_code(&Status::invalid_argument("bad")), "INVALID_ARGUMENT");
        assert_eq!(reason_or_code(&Status::failed_precondition("no")), "FAILED_PRECONDITION");
        let reasoned = with_reason(Code::FailedPrecondition, "VOUCHER_EXPIRED", "expired");
        assert_eq!(reason_or_code(&reasoned), "VOUCHER_EXPIRED");
    }

    #[test]
    fn error_info_names_a_dns_style_domain_and_the_fields_at_fault() {
        let status = invalid_argument(&[
            FieldViolation::new("amount", "has more digits than the unit"),
            FieldViolation::new("currency", "is not a currency"),
        ]);
        let info = status.get_error_details().error_info().unwrap().clone();
        assert_eq!((info.domain.as_str(), info.reason.as_str()), ("reservoir.io", "INVALID_ARGUMENT"));
        assert_eq!(info.metadata.get("fields").map(String::as_str), Some("amount,currency"));
        assert_eq!(violated_fields(&status), ["amount", "currency"]);
        let refused = with_reason(Code::FailedPrecondition, "INSUFFICIENT_FUNDS", "not enough");
        assert_eq!(refused.get_error_details().error_info().unwrap().domain, "reservoir.io");
    }
}
