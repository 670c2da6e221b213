//! The one mapping of wallet's errors to gRPC statuses: the code, the
//! ErrorInfo reason and the details a client acts on. Everything below the
//! api speaks in [`WalletError`]; only here does it become a `Status`.

use reservoir_common::status;
use tonic::{Code, Status};

use crate::domain::DomainError;
use crate::error::WalletError;

/// The gRPC code of an error.
pub fn code(error: &WalletError) -> Code {
    match error {
        WalletError::InvalidArgument(_) => Code::InvalidArgument,
        WalletError::NotFound(_) => Code::NotFound,
        WalletError::Domain(DomainError::Inconsistent(_)) | WalletError::Internal(_) => Code::Internal,
        // A shared draw met midway by a budget set or cleared: retry.
        WalletError::Domain(DomainError::DrawsOnParent) => Code::Aborted,
        WalletError::Domain(_) => Code::FailedPrecondition,
        WalletError::IdempotencyKeyReused | WalletError::AccountExists(_) => Code::AlreadyExists,
        WalletError::Conflict(_) => Code::Aborted,
        WalletError::Unavailable(_) => Code::Unavailable,
    }
}

impl From<WalletError> for Status {
    #[track_caller]
    fn from(error: WalletError) -> Self {
        match &error {
            WalletError::InvalidArgument(violations) => status::invalid_argument(violations),
            WalletError::Internal(cause) => status::internal(&error, cause.at()),
            // Where the handler turned it into a status: the domain names the inconsistency.
            WalletError::Domain(DomainError::Inconsistent(_)) => {
                status::internal(&error, std::panic::Location::caller())
            }
            WalletError::Unavailable(cause) => {
                tracing::warn!(%cause, "database unavailable");
                status::unavailable(error.reason(), "the database is unavailable; retry")
            }
            WalletError::Conflict(cause) => {
                tracing::info!(%cause, "conflict; the caller retries");
                status::conflict(error.reason(), "a concurrent change conflicted; retry")
            }
            // The rule, so the caller (and its operator) can tell which.
            WalletError::Domain(DomainError::FraudSuspected(rule)) => {
                status::with_metadata(code(&error), error.reason(), error.to_string(), [("rule", (*rule).to_owned())])
            }
            // The account in the way, so the caller can use it.
            WalletError::AccountExists(Some(existing)) => status::with_metadata(
                code(&error),
                error.reason(),
                error.to_string(),
                [("account_id", existing.0.to_string())],
            ),
            WalletError::NotFound(_)
            | WalletError::Domain(_)
            | WalletError::IdempotencyKeyReused
            | WalletError::AccountExists(None) => status::with_reason(code(&error), error.reason(), error.to_string()),
        }
    }
}
