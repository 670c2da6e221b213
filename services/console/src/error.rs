//! Why a page could not be shown or a form not carried out.

use reservoir_common::status::reason_or_code;

#[derive(Debug, thiserror::Error)]
pub enum ConsoleError {
    /// No session, or one that ended: the person signs in again.
    #[error("sign in to continue")]
    SignedOut,
    /// A form without this session's CSRF token: refused, nothing done.
    #[error("the form is out of date or was not sent from this console; reload the page and try again")]
    Forgery,
    /// The key's role does not allow it.
    #[error("your key's role may not do this")]
    NotAllowed,
    /// A field of a form, named, and what is wrong with it.
    #[error("{field}: {message}")]
    Invalid { field: &'static str, message: String },
    /// A service refused the call: its reason and message, shown as they came.
    #[error("{reason}: {message}")]
    Refused { reason: String, message: String, code: tonic::Code },
    /// A service could not be reached.
    #[error("{service} is not reachable: {message}")]
    Unavailable { service: &'static str, message: String },
}

impl ConsoleError {
    pub fn invalid(field: &'static str, message: impl Into<String>) -> Self {
        Self::Invalid { field, message: message.into() }
    }

    /// A service's answer other than OK.
    pub fn from_status(service: &'static str, status: &tonic::Status) -> Self {
        match status.code() {
            tonic::Code::Unavailable | tonic::Code::DeadlineExceeded | tonic::Code::Unknown => {
                Self::Unavailable { service, message: status.message().to_owned() }
            }
            tonic::Code::Unauthenticated => Self::SignedOut,
            code => Self::Refused { reason: reason_or_code(status), message: status.message().to_owned(), code },
        }
    }
}
