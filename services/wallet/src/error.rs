//! The wallet's one error type; its one mapping to gRPC statuses is
//! `api/status.rs`.

use reservoir_common::db::{Failure, classify};
use reservoir_common::error::Cause;
use reservoir_common::status::FieldViolation;
use reservoir_common::validate::InvalidRequest;
use sea_orm::DbErr;

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
                DomainError::BudgetExceeded => "BUDGET_EXCEEDED",
                DomainError::BudgetNested => "BUDGET_NESTED",
                DomainError::FraudSuspected(_) => "FRAUD_SUSPECTED",
                DomainError::ReviewDecided => "REVIEW_DECIDED",
                DomainError::DrawsOnParent => "DRAWS_ON_PARENT",
                DomainError::Inconsistent(_) => "INTERNAL",
            },
            Self::IdempotencyKeyReused => "IDEMPOTENCY_KEY_REUSED",
            Self::AccountExists(_) => "ACCOUNT_EXISTS",
            Self::Conflict(_) => "CONFLICT",
            Self::Unavailable(_) => "UNAVAILABLE",
            Self::Internal(_) => "INTERNAL",
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
