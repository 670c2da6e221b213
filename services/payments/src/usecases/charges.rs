//! Charges and refunds through the gateway: a payment made once per key,
//! its attempts at the gateway under the payment's own key (so a retry is
//! answered with the same charge), refunds begun once and finished by the
//! gateway's answer. The api checks the request and shows the result.

use std::sync::Arc;
use std::time::Duration;

use reservoir_common::auth::TenantId;
use reservoir_common::ids::AccountId;
use reservoir_common::time::now;
use uuid::Uuid;

use crate::clients::gateway::{Gateway, GatewayCharge, GatewayError, GatewayOutcome, GatewayRefund, gateway_key};
use crate::clients::owners::Owners;
use crate::domain::fraud::{ChargeRule, FraudAction, HELD_CODE};
use crate::domain::{
    AttemptOutcome, Channel, ChargeStep, PaymentStatus, RefundStatus, Refusal, charge_step, check_invoice,
    initial_status, payment_amount, payment_currency,
};
use crate::error::PaymentsError;
use crate::store::{BeganRefund, NewRefund, PaymentRow, RefundFinish, RefundRow, Store};

/// The attempt code of a gateway call that did not answer in time.
const TIMEOUT_CODE: &str = "timeout";

/// A charge as the api checked it.
pub struct NewCharge {
    pub account_id: AccountId,
    pub invoice_id: Uuid,
    pub amount: rust_decimal::Decimal,
    pub currency: String,
    /// `None` for a reconcile-later payment.
    pub payment_method_id: Option<Uuid>,
    pub idempotency_key: String,
    pub metadata: std::collections::BTreeMap<String, String>,
}

/// A refund as asked: its amount is parsed once the payment's currency is known.
pub struct RefundAsk {
    pub payment_id: Uuid,
    /// Empty: whatever is left to refund.
    pub amount: String,
    pub reason: String,
    pub idempotency_key: String,
}

#[derive(Clone)]
pub struct Charges {
    store: Store,
    gateway: Arc<dyn Gateway>,
    /// How long one gateway call may take before it counts as timed out.
    timeout: Duration,
    owners: Owners,
}

impl Charges {
    pub fn new(store: Store, gateway: Arc<dyn Gateway>, timeout: Duration, owners: Owners) -> Self {
        Self { store, gateway, timeout, owners }
    }

    /// The payment of a Charge: made the first time its key is seen (for
    /// the tenant's own open invoice), attempted at the gateway while its
    /// state asks for it; the same key with another request is refused.
    pub async fn charge(&self, tenant: TenantId, charge: NewCharge, hash: String) -> Result<PaymentRow, PaymentsError> {
        let payment = match self.store.payment_by_key(tenant, &charge.idempotency_key).await? {
            Some(existing) => existing,
            None => self.create_payment(tenant, charge, hash.clone()).await?,
        };
        if payment.request_hash != hash {
            return Err(PaymentsError::IdempotencyKeyReused);
        }
        if charge_step(payment.status) == ChargeStep::Attempt {
            self.attempt(tenant, &payment).await?;
        }
        Ok(payment)
    }

    /// A refund of a payment: begun once per key, then finished by the
    /// gateway's answer while it is PROCESSING.
    pub async fn refund(&self, tenant: TenantId, ask: RefundAsk, hash: String) -> Result<RefundRow, PaymentsError> {
        let refund = match self.store.refund_by_key(tenant, &ask.idempotency_key).await? {
            Some(existing) => existing,
            None => {
                let payment =
                    self.store.payment_row(tenant, ask.payment_id).await?.ok_or(PaymentsError::NotFound("payment"))?;
                // The amount is in the payment's currency, so it is checked once the payment is known.
                let requested = if ask.amount.is_empty() {
                    None
                } else {
                    let currency = payment_currency(&payment.currency)
                        .map_err(|error| PaymentsError::internal(format!("stored currency: {error}")))?;
                    let amount = payment_amount(&currency, &ask.amount)
                        .map_err(|error| PaymentsError::field("amount", error.to_string()))?;
                    Some(amount)
                };
                let new = NewRefund {
                    id: Uuid::now_v7(),
                    payment_id: ask.payment_id,
                    idempotency_key: ask.idempotency_key.clone(),
                    request_hash: hash.clone(),
                    requested,
                    reason: ask.reason,
                };
                match self.store.begin_refund(tenant, &new, now()).await? {
                    BeganRefund::Began(refund) => {
                        if refund.status == RefundStatus::Succeeded {
                            metrics::counter!("reservoir_payments_refunds_total").increment(1);
                        }
                        refund
                    }
                    BeganRefund::Exists(refund) => refund,
                }
            }
        };
        if refund.request_hash != hash {
            return Err(PaymentsError::IdempotencyKeyReused);
        }
        match refund.status {
            RefundStatus::Succeeded => Ok(refund),
            RefundStatus::Declined => Err(Refusal::RefundDeclined { code: refund.code }.into()),
            RefundStatus::Processing => self.refund_through_gateway(tenant, refund).await,
        }
    }

    /// Asks the gateway to charge a payment, under the payment's own key so
    /// that the gateway answers every retry with the same charge, and
    /// records the attempt. A call that outlasts the timeout counts as
    /// timed out; the gateway may still have charged, which the next retry
    /// learns from it.
    async fn attempt(&self, tenant: TenantId, payment: &PaymentRow) -> Result<PaymentRow, PaymentsError> {
        let charge = GatewayCharge {
            token: payment.gateway_token.clone(),
            amount: payment.amount,
            currency: payment.currency.clone(),
            idempotency_key: gateway_key(tenant, &payment.idempotency_key),
        };
        let answer = tokio::time::timeout(self.timeout, self.gateway.charge(charge)).await;
        let (outcome, reference, code) = match answer {
            Ok(Ok(GatewayOutcome::Succeeded { reference })) => (AttemptOutcome::Succeeded, reference, String::new()),
            Ok(Ok(GatewayOutcome::Declined { code })) => (AttemptOutcome::Declined, String::new(), code),
            Ok(Ok(GatewayOutcome::Pending { reference })) => (AttemptOutcome::Pending, reference, String::new()),
            Ok(Err(GatewayError::Transient { code })) => (AttemptOutcome::Failed, String::new(), code),
            Ok(Err(GatewayError::TimedOut)) | Err(_) => {
                (AttemptOutcome::TimedOut, String::new(), TIMEOUT_CODE.to_owned())
            }
        };
        metrics::counter!("reservoir_payments_charges_total", "outcome" => outcome.name()).increment(1);
        self.store.record_attempt(tenant, payment.id, outcome, &reference, &code, now()).await
    }

    /// Asks the gateway to return a PROCESSING refund's money, under the
    /// refund's own key, and records its answer. When the gateway does not
    /// answer the refund stays PROCESSING, and a retry with its key asks again.
    async fn refund_through_gateway(&self, tenant: TenantId, refund: RefundRow) -> Result<RefundRow, PaymentsError> {
        let payment =
            self.store.payment_row(tenant, refund.payment_id).await?.ok_or(PaymentsError::NotFound("payment"))?;
        let call = self.gateway.refund(GatewayRefund {
            gateway_reference: payment.gateway_reference.clone(),
            amount: refund.amount,
            idempotency_key: gateway_key(tenant, &refund.idempotency_key),
        });
        let finish = match tokio::time::timeout(self.timeout, call).await {
            // A refund the gateway accepted is on its way back; nothing remains to be done here.
            Ok(Ok(GatewayOutcome::Succeeded { reference } | GatewayOutcome::Pending { reference })) => {
                RefundFinish::Succeeded { reference }
            }
            Ok(Ok(GatewayOutcome::Declined { code })) => RefundFinish::Declined { code },
            Ok(Err(error)) => {
                return Err(PaymentsError::Unavailable(format!("refunding through the gateway: {error}")));
            }
            Err(_) => return Err(PaymentsError::Unavailable("the gateway did not answer a refund in time".into())),
        };
        let refund = self.store.finish_refund(tenant, refund.id, &finish, now()).await?;
        match refund.status {
            RefundStatus::Succeeded => {
                metrics::counter!("reservoir_payments_refunds_total").increment(1);
                Ok(refund)
            }
            RefundStatus::Declined => Err(Refusal::RefundDeclined { code: refund.code }.into()),
            RefundStatus::Processing => Err(PaymentsError::internal("a finished refund is still processing")),
        }
    }

    /// The tenant's fraud rules on a new charge: nothing, a refusal (recorded,
    /// FRAUD_SUSPECTED), or a hold (the payment made PENDING for review,
    /// the gateway not asked); answers the rule that holds it.
    async fn judge(
        &self,
        tenant: TenantId,
        payment: &mut PaymentRow,
        now: chrono::DateTime<chrono::Utc>,
    ) -> Result<Option<ChargeRule>, PaymentsError> {
        let rules = self.store.fraud_rules(tenant).await?;
        if !rules.is_active() {
            return Ok(None);
        }
        let history = self.store.charge_history(&rules, payment, now).await?;
        let Some(rule) = rules.assess(&history, payment.amount, payment.payment_method_id.is_some()) else {
            return Ok(None);
        };
        let action = match rules.action {
            FraudAction::Refuse => "REFUSED",
            FraudAction::Review => "HELD",
        };
        metrics::counter!("reservoir_payments_fraud_total", "rule" => rule.name(), "action" => action).increment(1);
        if rules.action == FraudAction::Refuse {
            // A retry that raced the first call under this key, judged with
            // the first's payment counted: answered with that payment.
            if self.store.payment_by_key(tenant, &payment.idempotency_key).await?.is_some() {
                return Err(PaymentsError::Conflict("a charge with this key was made meanwhile".into()));
            }
            self.store.record_refusal(payment, rule, now).await?;
            return Err(Refusal::FraudSuspected(rule.name()).into());
        }
        payment.status = PaymentStatus::Pending;
        payment.failure_code = HELD_CODE.to_owned();
        Ok(Some(rule))
    }

    /// An operator's decision on a held payment: released, it is charged
    /// now (a gateway payment is attempted under its own key; a manual one
    /// waits for its money again); rejected, it is DECLINED, nothing charged.
    pub async fn review(
        &self,
        tenant: TenantId,
        payment_id: Uuid,
        release: bool,
        reason: &str,
    ) -> Result<PaymentRow, PaymentsError> {
        let payment = self.store.decide_held(tenant, payment_id, release, reason, now()).await?;
        if release && charge_step(payment.status) == ChargeStep::Attempt {
            return self.attempt(tenant, &payment).await;
        }
        Ok(payment)
    }

    /// Creates the payment of a Charge seen for the first time, or returns
    /// the one a concurrent call with the same key created.
    async fn create_payment(
        &self,
        tenant: TenantId,
        checked: NewCharge,
        hash: String,
    ) -> Result<PaymentRow, PaymentsError> {
        // Only the tenant's own invoice, for this account and currency, open
        // and asking for at least this much. Checked when the payment is
        // made, not on a retry of it: the invoice it paid is no longer open.
        let invoice = self.owners.invoice(tenant, checked.invoice_id).await?;
        check_invoice(&invoice, checked.account_id, &checked.currency, checked.amount)?;
        let (channel, method_id, token) = match checked.payment_method_id {
            None => (Channel::Manual, None, String::new()),
            Some(method_id) => {
                let method = self
                    .store
                    .payment_method(tenant, method_id)
                    .await?
                    .ok_or(PaymentsError::NotFound("payment method"))?;
                if method.account_id != checked.account_id {
                    return Err(Refusal::PaymentMethodMismatch.into());
                }
                (method.kind.channel(), Some(method.id), method.gateway_token)
            }
        };
        let now = now();
        let mut payment = PaymentRow {
            id: Uuid::now_v7(),
            tenant_id: tenant,
            account_id: checked.account_id,
            invoice_id: checked.invoice_id,
            payment_method_id: method_id,
            channel,
            gateway_token: token,
            amount: checked.amount,
            currency: checked.currency.clone(),
            status: initial_status(channel),
            idempotency_key: checked.idempotency_key.clone(),
            request_hash: hash,
            gateway_reference: String::new(),
            external_transaction_id: String::new(),
            failure_code: String::new(),
            refunded_amount: rust_decimal::Decimal::ZERO,
            metadata: checked.metadata.clone(),
            created_at: now,
            updated_at: now,
        };
        let held_by = match self.judge(tenant, &mut payment, now).await {
            Err(PaymentsError::Conflict(_)) => {
                return self
                    .store
                    .payment_by_key(tenant, &checked.idempotency_key)
                    .await?
                    .ok_or_else(|| PaymentsError::Conflict("a concurrent charge with this key vanished".into()));
            }
            judged => judged?,
        };
        if self.store.insert_payment(&payment, held_by).await? {
            if channel == Channel::Manual {
                metrics::counter!("reservoir_payments_charges_total", "outcome" => "RECONCILE_LATER").increment(1);
            }
            return Ok(payment);
        }
        self.store
            .payment_by_key(tenant, &checked.idempotency_key)
            .await?
            .ok_or_else(|| PaymentsError::Conflict("a concurrent charge with this key vanished".into()))
    }
}
