//! The one mapping of metering's errors to gRPC statuses: the code, the
//! ErrorInfo reason and the details a client acts on. Everything below the
//! api speaks in [`MeteringError`]; only here does it become a `Status`.

use reservoir_common::status;
use tonic::{Code, Status};

use crate::error::MeteringError;

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
