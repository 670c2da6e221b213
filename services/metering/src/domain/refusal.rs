//! Metering's refusals: what a client acts on by its reason.

/// A request the rules refuse as things stand (FAILED_PRECONDITION).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("the meter has no price in effect")]
    NoPrice,
    #[error("the authorization has expired")]
    AuthorizationExpired,
    #[error("the authorization holds nothing")]
    AuthorizationNotActive,
    #[error("the authorization was settled with another quantity")]
    AuthorizationSettled,
    /// The wallet refused the hold an authorization asked for: its reason
    /// (INSUFFICIENT_FUNDS, ACCOUNT_FROZEN…) and message pass through.
    #[error("{message}")]
    Wallet { reason: String, message: String },
}

impl Refusal {
    /// The ErrorInfo reason a client matches on.
    pub fn reason(&self) -> &str {
        match self {
            Self::NoPrice => "NO_PRICE",
            Self::AuthorizationExpired => "AUTHORIZATION_EXPIRED",
            Self::AuthorizationNotActive => "AUTHORIZATION_NOT_ACTIVE",
            Self::AuthorizationSettled => "AUTHORIZATION_SETTLED",
            Self::Wallet { reason, .. } => reason,
        }
    }
}
