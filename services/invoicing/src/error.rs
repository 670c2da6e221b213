//! Invoicing's one error type: the shared one, whose mapping to gRPC
//! statuses every such service uses alike, with invoicing's own refusals.

pub use reservoir_common::error::ServiceError as InvoicingError;

use crate::domain::Refusal;

impl From<Refusal> for InvoicingError {
    fn from(refusal: Refusal) -> Self {
        Self::precondition(refusal.reason(), refusal.to_string())
    }
}
