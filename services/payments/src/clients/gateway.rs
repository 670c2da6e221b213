//! The payment gateway: the outside system that moves the money. Payments
//! talks to it through [`Gateway`]; [`SandboxGateway`] is the built-in one,
//! whose answers are chosen by the payment method's token so that every
//! path (success, decline, pending, transient failure, timeout) can be
//! exercised without a real processor.
//!
//! Every call carries an idempotency key, and the gateway answers a key it
//! has seen with what it did the first time: retrying a call whose answer
//! was lost never moves the money twice.

use std::future::Future;
use std::pin::Pin;

use chrono::Utc;
use reservoir_common::auth::TenantId;
use reservoir_common::time::truncate_to_micros;
use rust_decimal::Decimal;
use uuid::Uuid;

use crate::error::PaymentsError;
use crate::store::{SandboxOperation, SandboxOutcome, SandboxRecord, Store};

/// A charge to ask the gateway for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GatewayCharge {
    /// The payment method's token.
    pub token: String,
    pub amount: Decimal,
    /// ISO-4217.
    pub currency: String,
    /// The same on every retry of one payment.
    pub idempotency_key: String,
}

/// A refund of (part of) a charge the gateway made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GatewayRefund {
    /// The gateway's reference of the charge.
    pub gateway_reference: String,
    pub amount: Decimal,
    /// The same on every retry of one refund.
    pub idempotency_key: String,
}

/// What the gateway did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GatewayOutcome {
    Succeeded {
        reference: String,
    },
    /// Refused, with the gateway's or the issuer's code; final.
    Declined {
        code: String,
    },
    /// Accepted, with the money still to arrive.
    Pending {
        reference: String,
    },
}

/// Why the gateway gave no answer; the call may be retried with its key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GatewayError {
    #[error("the gateway failed transiently ({code})")]
    Transient { code: String },
    #[error("the gateway did not answer in time")]
    TimedOut,
}

/// The future a gateway call returns.
pub type GatewayFuture<'a> = Pin<Box<dyn Future<Output = Result<GatewayOutcome, GatewayError>> + Send + 'a>>;

/// A payment gateway. Implementations honour idempotency keys: a key seen
/// before is answered with the first call's result, never a second charge.
pub trait Gateway: Send + Sync {
    fn charge(&self, request: GatewayCharge) -> GatewayFuture<'_>;
    fn refund(&self, request: GatewayRefund) -> GatewayFuture<'_>;
}

/// The idempotency key payments sends the gateway for a tenant's key. One
/// gateway account serves every tenant, and two tenants may well choose the
/// same key, so the tenant is part of it.
pub fn gateway_key(tenant: TenantId, key: &str) -> String {
    format!("{tenant}:{key}")
}

/// How the sandbox answers a token.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Behaviour {
    Succeed,
    Decline(&'static str),
    GoPending,
    /// Fails transiently this many times per key, then succeeds.
    FailTimes(u32),
    /// Charges, but the first answer for a key is lost.
    TimeOutOnce,
    Unknown,
}

fn behaviour(token: &str) -> Behaviour {
    if token.starts_with("tok_succeed") {
        Behaviour::Succeed
    } else if token == "tok_decline_insufficient_funds" {
        Behaviour::Decline("insufficient_funds")
    } else if token.starts_with("tok_decline") {
        Behaviour::Decline("card_declined")
    } else if token.starts_with("tok_pending") {
        Behaviour::GoPending
    } else if token.starts_with("tok_timeout") {
        Behaviour::TimeOutOnce
    } else if let Some(times) = token.strip_prefix("tok_fail_").and_then(|times| times.parse::<u32>().ok()) {
        Behaviour::FailTimes(times)
    } else {
        Behaviour::Unknown
    }
}

/// The code of every transient failure the sandbox plays.
const UNAVAILABLE_CODE: &str = "gateway_unavailable";

/// The built-in gateway. It keeps its own ledger, the `sandbox_charges`
/// table, as an outside processor would: each idempotency key's outcome and
/// how often it was called, so a retry (also after a restart) is answered
/// with the original charge and nothing is charged twice.
///
/// Tokens: `tok_succeed…` succeeds; `tok_decline` declines with
/// `card_declined` and `tok_decline_insufficient_funds` with
/// `insufficient_funds`; `tok_pending` goes pending; `tok_fail_N` fails
/// transiently the first N calls of a key, then succeeds; `tok_timeout`
/// charges but answers the first call of a key with a timeout. Any other
/// token is declined with `invalid_token`. A refund succeeds up to what its
/// charge captured and is declined beyond it.
#[derive(Clone)]
pub struct SandboxGateway {
    store: Store,
}

fn unavailable(error: PaymentsError) -> GatewayError {
    tracing::warn!(%error, "the sandbox gateway cannot reach its ledger");
    GatewayError::Transient { code: UNAVAILABLE_CODE.to_owned() }
}

fn reference(prefix: &str) -> String {
    format!("{prefix}_{}", Uuid::now_v7().simple())
}

impl SandboxGateway {
    pub fn new(store: Store) -> Self {
        Self { store }
    }

    /// How many charges the sandbox made for a gateway idempotency key (see
    /// [`gateway_key`]): 0 or 1, however often it was called.
    #[cfg(feature = "test-hooks")]
    pub async fn charges_for(&self, key: &str) -> Result<u64, PaymentsError> {
        self.store.sandbox_successful_charges(key).await
    }

    async fn charge_now(&self, request: GatewayCharge) -> Result<GatewayOutcome, GatewayError> {
        let now = truncate_to_micros(Utc::now());
        let key = request.idempotency_key.as_str();
        let call = self.store.sandbox_call(SandboxOperation::Charge, key, now).await.map_err(unavailable)?;
        if let Some(recorded) = call.recorded {
            return Ok(recorded.outcome());
        }
        let record = |outcome: SandboxOutcome, code: &str| SandboxRecord {
            outcome,
            reference: if outcome == SandboxOutcome::Declined { String::new() } else { reference("ch") },
            code: code.to_owned(),
            amount: request.amount,
            currency: request.currency.clone(),
            parent_reference: String::new(),
        };
        let (new, lose_answer) = match behaviour(&request.token) {
            Behaviour::Succeed => (record(SandboxOutcome::Succeeded, ""), false),
            Behaviour::Decline(code) => (record(SandboxOutcome::Declined, code), false),
            Behaviour::GoPending => (record(SandboxOutcome::Pending, ""), false),
            Behaviour::FailTimes(times) if call.calls <= times => {
                return Err(GatewayError::Transient { code: UNAVAILABLE_CODE.to_owned() });
            }
            Behaviour::FailTimes(_) => (record(SandboxOutcome::Succeeded, ""), false),
            Behaviour::TimeOutOnce => (record(SandboxOutcome::Succeeded, ""), call.calls == 1),
            Behaviour::Unknown => (record(SandboxOutcome::Declined, "invalid_token"), false),
        };
        let recorded =
            self.store.sandbox_record(SandboxOperation::Charge, key, &new, now).await.map_err(unavailable)?;
        if lose_answer {
            return Err(GatewayError::TimedOut);
        }
        Ok(recorded.outcome())
    }

    async fn refund_now(&self, request: GatewayRefund) -> Result<GatewayOutcome, GatewayError> {
        let now = truncate_to_micros(Utc::now());
        let key = request.idempotency_key.as_str();
        let call = self.store.sandbox_call(SandboxOperation::Refund, key, now).await.map_err(unavailable)?;
        if let Some(recorded) = call.recorded {
            return Ok(recorded.outcome());
        }
        let charge = self.store.sandbox_charge_by_reference(&request.gateway_reference).await.map_err(unavailable)?;
        let declined = |code: &str| SandboxRecord {
            outcome: SandboxOutcome::Declined,
            reference: String::new(),
            code: code.to_owned(),
            amount: request.amount,
            currency: String::new(),
            parent_reference: request.gateway_reference.clone(),
        };
        let new = match charge {
            Some(charge) if charge.outcome == SandboxOutcome::Succeeded => {
                let refunded = self.store.sandbox_refunded(&request.gateway_reference).await.map_err(unavailable)?;
                let fits = refunded.checked_add(request.amount).is_some_and(|total| total <= charge.amount);
                if fits {
                    SandboxRecord {
                        outcome: SandboxOutcome::Succeeded,
                        reference: reference("re"),
                        code: String::new(),
                        amount: request.amount,
                        currency: charge.currency,
                        parent_reference: request.gateway_reference.clone(),
                    }
                } else {
                    declined("amount_exceeds_charge")
                }
            }
            Some(_) => declined("charge_not_captured"),
            None => declined("unknown_charge"),
        };
        let recorded =
            self.store.sandbox_record(SandboxOperation::Refund, key, &new, now).await.map_err(unavailable)?;
        Ok(recorded.outcome())
    }
}

impl SandboxRecord {
    fn outcome(&self) -> GatewayOutcome {
        match self.outcome {
            SandboxOutcome::Succeeded => GatewayOutcome::Succeeded { reference: self.reference.clone() },
            SandboxOutcome::Declined => GatewayOutcome::Declined { code: self.code.clone() },
            SandboxOutcome::Pending => GatewayOutcome::Pending { reference: self.reference.clone() },
        }
    }
}

impl Gateway for SandboxGateway {
    fn charge(&self, request: GatewayCharge) -> GatewayFuture<'_> {
        Box::pin(self.charge_now(request))
    }

    fn refund(&self, request: GatewayRefund) -> GatewayFuture<'_> {
        Box::pin(self.refund_now(request))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_token_decides_what_the_sandbox_does() {
        assert_eq!(behaviour("tok_succeed"), Behaviour::Succeed);
        assert_eq!(behaviour("tok_succeed_visa"), Behaviour::Succeed);
        assert_eq!(behaviour("tok_decline"), Behaviour::Decline("card_declined"));
        assert_eq!(behaviour("tok_decline_insufficient_funds"), Behaviour::Decline("insufficient_funds"));
        assert_eq!(behaviour("tok_pending"), Behaviour::GoPending);
        assert_eq!(behaviour("tok_fail_2"), Behaviour::FailTimes(2));
        assert_eq!(behaviour("tok_fail_x"), Behaviour::Unknown);
        assert_eq!(behaviour("tok_timeout"), Behaviour::TimeOutOnce);
        assert_eq!(behaviour("4242424242424242"), Behaviour::Unknown);
    }

    #[test]
    fn a_gateway_key_keeps_tenants_apart() {
        let (first, second) = (TenantId(Uuid::now_v7()), TenantId(Uuid::now_v7()));
        assert_ne!(gateway_key(first, "k"), gateway_key(second, "k"));
        assert_eq!(gateway_key(first, "k"), gateway_key(first, "k"));
    }
}
