//! The one mapping of payments's errors to gRPC statuses: the code, the
//! ErrorInfo reason and the details a client acts on. Everything below the
//! api speaks in [`PaymentsError`]; only here does it become a `Status`.

use reservoir_common::status;
use tonic::{Code, Status};

use crate::error::PaymentsError;

impl From<PaymentsError> for Status {
    fn from(error: PaymentsError) -> Self {
        match &error {
            PaymentsError::InvalidArgument(violations) => status::invalid_argument(violations),
            PaymentsError::NotFound(_) => status::with_reason(Code::NotFound, "NOT_FOUND", error.to_string()),
            PaymentsError::VoucherNotFound => {
                status::with_reason(Code::NotFound, "VOUCHER_NOT_FOUND", error.to_string())
            }
            PaymentsError::IdempotencyKeyReused => {
                status::with_reason(Code::AlreadyExists, "IDEMPOTENCY_KEY_REUSED", error.to_string())
            }
            PaymentsError::Refused(refusal @ crate::domain::Refusal::FraudSuspected(rule)) => status::with_metadata(
                Code::FailedPrecondition,
                crate::error::reason(refusal),
                refusal.to_string(),
                [("rule", (*rule).to_owned())],
            ),
            PaymentsError::Refused(refusal) => {
                status::with_reason(Code::FailedPrecondition, crate::error::reason(refusal), refusal.to_string())
            }
            PaymentsError::VoucherAttemptsExceeded => {
                status::with_reason(Code::ResourceExhausted, "VOUCHER_ATTEMPTS_EXCEEDED", error.to_string())
            }
            PaymentsError::Conflict(cause) => {
                tracing::info!(%cause, "conflict; the caller retries");
                status::conflict("CONFLICT", "a concurrent change conflicted; retry")
            }
            PaymentsError::Unavailable(cause) => {
                tracing::warn!(%cause, "a dependency is unavailable");
                status::unavailable("UNAVAILABLE", "a dependency is unavailable; retry")
            }
            PaymentsError::Internal(cause) => status::internal(&error, cause.at()),
        }
    }
}
