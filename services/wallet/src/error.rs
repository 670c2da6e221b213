//! The wallet's one error type and its one mapping to gRPC statuses.

use reservoir_common::db::{Failure, classify};
use reservoir_common::error::Cause;
use reservoir_common::status::{self, FieldViolation};
use reservoir_common::validate::InvalidRequest;
use sea_orm::DbErr;
use tonic::{Code, Status};

use crate::domain::DomainError;

#[derive(Debug, thiserror::Error)]
pub enum WalletError {
    #[error("invalid argument")]
    InvalidArgument(Vec<FieldViolation>),
    /// What was not found: "account", "hold", "grant", "entry".
    #[error("{0} not found")]
    NotFound(&'static str),
    #[error(transparent)]
    Domain(#[from] DomainError),
    #[error("the idempotency key was used for a different request")]
    IdempotencyKeyReused,
    /// The account that holds the external id already, when known.
    #[error("an account with this external_id already exists")]
    AccountExists(Option<crate::domain::AccountId>),
    /// A race another attempt will not lose: retry.
    #[error("conflict: {0}")]
    Conflict(String),
    #[error("database unavailable: {0}")]
    Unavailable(String),
    #[error("internal: {0}")]
    Internal(Cause),
}

impl WalletError {
    /// An internal failure, remembered with the line that called this.
    #[track_caller]
    pub fn internal(message: impl Into<String>) -> Self {
        Self::Internal(Cause::new(message))
    }

    /// The same failure once more, for each of several callers that shared
    /// the work that failed (a batch, a read of units).
    #[track_caller]
    pub fn again(&self) -> Self {
        match self {
            Self::Conflict(message) => Self::Conflict(message.clone()),
            Self::Unavailable(message) => Self::Unavailable(message.clone()),
            // Its cause once, not wrapped again ("internal: internal: …").
            Self::Internal(message) => Self::Internal(message.clone()),
            other => Self::internal(other.to_string()),
        }
    }

    pub fn field(field: &str, description: impl Into<String>) -> Self {
        Self::InvalidArgument(vec![FieldViolation::new(field, description)])
    }

    /// The ErrorInfo reason clients branch on.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::InvalidArgument(_) => "INVALID_ARGUMENT",
            Self::NotFound(_) => "NOT_FOUND",
            Self::Domain(error) => match error {
                DomainError::InsufficientFunds => "INSUFFICIENT_FUNDS",
                DomainError::CreditBlocked => "CREDIT_BLOCKED",
                DomainError::AccountSuspended => "ACCOUNT_SUSPENDED",
                DomainError::AccountClosed => "ACCOUNT_CLOSED",
                DomainError::HoldNotActive(_) => "HOLD_NOT_ACTIVE",
                DomainError::HoldExpired => "HOLD_EXPIRED",
                DomainError::CaptureExceedsHold => "CAPTURE_EXCEEDS_HOLD",
                DomainError::RefundExceedsDebit => "REFUND_EXCEEDS_DEBIT",
                DomainError::EntryNotRefundable => "ENTRY_NOT_REFUNDABLE",
                DomainError::GrantNotActive(_) => "GRANT_NOT_ACTIVE",
                DomainError::BalanceOutOfRange => "BALANCE_OUT_OF_RANGE",
                DomainError::SpendingCapReached => "SPENDING_CAP_REACHED",
                DomainError::TransferLimitExceeded(_) => "TRANSFER_LIMIT_EXCEEDED",
                DomainError::UnitMismatch => "UNIT_MISMATCH",
                DomainError::Inconsistent(_) => "INTERNAL",
            },
            Self::IdempotencyKeyReused => "IDEMPOTENCY_KEY_REUSED",
            Self::AccountExists(_) => "ACCOUNT_EXISTS",
            Self::Conflict(_) => "CONFLICT",
            Self::Unavailable(_) => "UNAVAILABLE",
            Self::Internal(_) => "INTERNAL",
        }
    }

    /// The gRPC code.
    pub fn code(&self) -> Code {
        match self {
            Self::InvalidArgument(_) => Code::InvalidArgument,
            Self::NotFound(_) => Code::NotFound,
            Self::Domain(DomainError::Inconsistent(_)) | Self::Internal(_) => Code::Internal,
            Self::Domain(_) => Code::FailedPrecondition,
            Self::IdempotencyKeyReused | Self::AccountExists(_) => Code::AlreadyExists,
            Self::Conflict(_) => Code::Aborted,
            Self::Unavailable(_) => Code::Unavailable,
        }
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
            // The account in the way, so the caller can use it.
            WalletError::AccountExists(Some(existing)) => status::with_metadata(
                error.code(),
                error.reason(),
                error.to_string(),
                [("account_id", existing.0.to_string())],
            ),
            WalletError::NotFound(_)
            | WalletError::Domain(_)
            | WalletError::IdempotencyKeyReused
            | WalletError::AccountExists(None) => status::with_reason(error.code(), error.reason(), error.to_string()),
        }
    }
}

impl From<InvalidRequest> for WalletError {
    fn from(invalid: InvalidRequest) -> Self {
        Self::InvalidArgument(invalid.0)
    }
}

impl From<DbErr> for WalletError {
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
    use super::WalletError;

    #[test]
    fn a_failure_shared_by_a_batch_keeps_its_cause_once() {
        let failed = WalletError::internal("broken");
        assert_eq!(failed.again().again().to_string(), "internal: broken");
        let unreachable = WalletError::Unavailable("gone".into());
        assert_eq!(unreachable.again().to_string(), "database unavailable: gone");
    }
}
