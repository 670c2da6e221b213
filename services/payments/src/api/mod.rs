//! gRPC handlers of the payments service: they check each request field by
//! field, let the domain decide and the store persist, call the gateway,
//! and translate the answers.

mod convert;
mod fraud;
mod status;

use std::collections::{BTreeMap, HashSet};
use std::pin::Pin;
use std::time::Duration;

use futures::Stream;
use reservoir_common::auth::{TenantId, tenant_of};
use reservoir_common::idempotency::{Replayed, decode_encoded, request_hash};
use reservoir_common::ids::AccountId;
use reservoir_common::outbox::follow_woken;
use reservoir_common::paging::Page;
use reservoir_common::validate::Violations;
use reservoir_proto::payments as pb;
use reservoir_proto::payments::payments_service_server::PaymentsService;
use tokio::sync::watch;
use tonic::{Request, Response, Status};
use uuid::Uuid;

use self::convert::*;
use crate::clients::owners::Owners;
use crate::domain::{VoucherCode, check_unit_code, payment_amount, payment_currency, voucher_value};
use crate::error::PaymentsError;
use crate::store::{
    IssuedVoucher, PaymentFilter, PaymentMethodRow, PaymentRecord, Store, VoucherBatchRow, VouchersIssued,
};
use crate::usecases::charges::{Charges, NewCharge, RefundAsk};

/// Gateway tokens and method labels: room for any processor's token and a
/// label such as "Visa ending 4242".
const GATEWAY_TOKEN_LENGTH_MAX: usize = 128;
const LABEL_LENGTH_MAX: usize = 128;
/// Payment methods one account may keep: far more than anyone uses, and a
/// bound on what ListPaymentMethods returns in one answer.
const PAYMENT_METHODS_PER_ACCOUNT_MAX: u64 = 100;
/// Metadata of a charge: a few references of the caller's, not a document.
const METADATA_ENTRIES_MAX: usize = 32;
const METADATA_KEY_LENGTH_MAX: usize = 64;
const METADATA_VALUE_LENGTH_MAX: usize = 512;
/// External transaction ids: a bank's or an operator's reference.
const EXTERNAL_TRANSACTION_ID_LENGTH_MAX: usize = 128;
/// Refund reasons: a sentence or two for the customer's statement.
const REFUND_REASON_LENGTH_MAX: usize = 512;
/// Vouchers per batch: one answer holds every code, and 10,000 codes with
/// their vouchers stay well below the 4 MiB a gRPC message may have.
const VOUCHERS_PER_BATCH_MAX: u32 = 10_000;
/// A typed code: 21 characters as shown, with room for spaces a person adds.
const VOUCHER_CODE_LENGTH_MAX: usize = 64;
/// Events read per query of a stream.
const EVENT_BATCH: u64 = 500;
/// How often an idle event stream looks for events other replicas wrote;
/// events this process writes wake it at once.
const EVENT_POLL_INTERVAL: Duration = Duration::from_millis(100);

#[derive(Clone)]
pub struct PaymentsApi {
    store: Store,
    charges: Charges,
    owners: Owners,
    /// Turns true when the server stops, ending open event streams so the
    /// graceful shutdown is not held open by them.
    stopping: watch::Receiver<bool>,
}

use reservoir_common::time::now;

fn metadata(violations: &mut Violations, field: &str, metadata: &BTreeMap<String, String>) {
    violations.map(field, metadata, METADATA_ENTRIES_MAX, METADATA_KEY_LENGTH_MAX, METADATA_VALUE_LENGTH_MAX);
}

/// An optional id: empty is `None`, anything else must be an id.
fn missing() -> PaymentsError {
    PaymentsError::internal("checked fields went missing")
}

type EventStream = Pin<Box<dyn Stream<Item = Result<pb::WatchEventsResponse, Status>> + Send>>;

impl PaymentsApi {
    pub fn new(store: Store, charges: Charges, owners: Owners, stopping: watch::Receiver<bool>) -> Self {
        Self { store, charges, owners, stopping }
    }

    async fn record_of(&self, tenant: TenantId, id: Uuid) -> Result<PaymentRecord, PaymentsError> {
        self.store.payment(tenant, id).await?.ok_or(PaymentsError::NotFound("payment"))
    }
}

fn check_charge(request: &pb::ChargeRequest) -> Result<NewCharge, PaymentsError> {
    let mut violations = Violations::default();
    let account_id = violations.id("account_id", &request.account_id, AccountId);
    let invoice_id = violations.id("invoice_id", &request.invoice_id, |id| id);
    let currency = if request.currency.is_empty() {
        violations.add("currency", "is required");
        None
    } else {
        match payment_currency(&request.currency) {
            Ok(currency) => Some(currency),
            Err(error) => {
                violations.add("currency", error.to_string());
                None
            }
        }
    };
    let amount = currency
        .as_ref()
        .and_then(|currency| violations.amount_with("amount", &request.amount, |text| payment_amount(currency, text)));
    // Exactly one of a method and reconcile_later says how the money comes.
    let payment_method_id = match (request.payment_method_id.is_empty(), request.reconcile_later) {
        (true, true) => Some(None),
        (false, false) => violations.id("payment_method_id", &request.payment_method_id, Some),
        (false, true) => {
            violations.add("payment_method_id", "must be empty when reconcile_later is set");
            None
        }
        (true, false) => {
            violations.add("payment_method_id", "is required unless reconcile_later is set");
            None
        }
    };
    violations.idempotency_key("idempotency_key", &request.idempotency_key);
    metadata(&mut violations, "metadata", &request.metadata);
    violations.finish()?;
    match (account_id, invoice_id, amount, payment_method_id) {
        (Some(account_id), Some(invoice_id), Some(amount), Some(payment_method_id)) => Ok(NewCharge {
            account_id,
            invoice_id,
            amount,
            currency: request.currency.clone(),
            payment_method_id,
            idempotency_key: request.idempotency_key.clone(),
            metadata: request.metadata.clone(),
        }),
        _ => Err(missing()),
    }
}

impl PaymentsApi {
    /// The answer an earlier AddPaymentMethod with this key gave, if any: its
    /// method (never changed once added), or the response recorded whole.
    async fn replayed_method(
        &self,
        tenant: TenantId,
        key: &str,
        hash: &str,
    ) -> Result<Option<pb::AddPaymentMethodResponse>, PaymentsError> {
        match self.store.replay::<Uuid>(tenant, key, "AddPaymentMethod", hash).await? {
            None => Ok(None),
            Some(Replayed::Encoded(encoded)) => decode_encoded(&encoded).map(Some).map_err(PaymentsError::internal),
            Some(Replayed::Answer(id)) => {
                let method = self
                    .store
                    .payment_method(tenant, id)
                    .await?
                    .ok_or_else(|| PaymentsError::internal("the payment method a replay names is missing"))?;
                Ok(Some(pb::AddPaymentMethodResponse { payment_method: Some(method_to_pb(&method)) }))
            }
        }
    }

    /// The answer an earlier CreateVoucherBatch with this key gave, if any:
    /// its batch and codes, each voucher as it was issued.
    async fn replayed_batch(
        &self,
        tenant: TenantId,
        key: &str,
        hash: &str,
    ) -> Result<Option<pb::CreateVoucherBatchResponse>, PaymentsError> {
        match self.store.replay::<VouchersIssued>(tenant, key, "CreateVoucherBatch", hash).await? {
            None => Ok(None),
            Some(Replayed::Encoded(encoded)) => decode_encoded(&encoded).map(Some).map_err(PaymentsError::internal),
            Some(Replayed::Answer(issued)) => {
                let batch = self
                    .store
                    .voucher_batch(tenant, issued.batch_id)
                    .await?
                    .ok_or_else(|| PaymentsError::internal("the voucher batch a replay names is missing"))?;
                Ok(Some(batch_response(&batch, &issued.vouchers)))
            }
        }
    }
}

/// CreateVoucherBatch's answer: the batch's codes, shown this once, and its
/// vouchers as they were issued (none redeemed yet).
fn batch_response(batch: &VoucherBatchRow, vouchers: &[(Uuid, String)]) -> pb::CreateVoucherBatchResponse {
    pb::CreateVoucherBatchResponse {
        batch_id: batch.id.to_string(),
        codes: vouchers.iter().map(|(_, code)| code.clone()).collect(),
        vouchers: vouchers
            .iter()
            .map(|(id, _)| {
                voucher_to_pb(&crate::store::VoucherRow {
                    id: *id,
                    batch_id: batch.id,
                    value: batch.value,
                    unit_code: batch.unit_code.clone(),
                    expires_at: batch.expires_at,
                    redeemed_by: None,
                    redeemed_at: None,
                    created_at: batch.created_at,
                })
            })
            .collect(),
    }
}

#[tonic::async_trait]
impl PaymentsService for PaymentsApi {
    async fn get_fraud_rules(
        &self,
        request: Request<pb::GetFraudRulesRequest>,
    ) -> Result<Response<pb::GetFraudRulesResponse>, Status> {
        self.get_fraud_rules_impl(request).await
    }

    async fn update_fraud_rules(
        &self,
        request: Request<pb::UpdateFraudRulesRequest>,
    ) -> Result<Response<pb::UpdateFraudRulesResponse>, Status> {
        self.update_fraud_rules_impl(request).await
    }

    async fn review_payment(
        &self,
        request: Request<pb::ReviewPaymentRequest>,
    ) -> Result<Response<pb::ReviewPaymentResponse>, Status> {
        self.review_payment_impl(request).await
    }

    async fn list_fraud_decisions(
        &self,
        request: Request<pb::ListFraudDecisionsRequest>,
    ) -> Result<Response<pb::ListFraudDecisionsResponse>, Status> {
        self.list_fraud_decisions_impl(request).await
    }

    async fn add_payment_method(
        &self,
        request: Request<pb::AddPaymentMethodRequest>,
    ) -> Result<Response<pb::AddPaymentMethodResponse>, Status> {
        let tenant = tenant_of(&request)?;
        let request = request.into_inner();
        let mut violations = Violations::default();
        let account_id = violations.id("account_id", &request.account_id, AccountId);
        let kind = convert::method_kind_from_pb(request.kind);
        match kind {
            Some(kind) if kind.needs_token() => {
                violations.required_text("gateway_token", &request.gateway_token, GATEWAY_TOKEN_LENGTH_MAX);
            }
            Some(_) if !request.gateway_token.is_empty() => {
                violations.add("gateway_token", "must be empty for a bank transfer");
            }
            Some(_) => {}
            None => violations.add("kind", "must be CARD, BANK_TRANSFER or MOBILE_WALLET"),
        }
        violations.text("label", &request.label, LABEL_LENGTH_MAX);
        violations.idempotency_key("idempotency_key", &request.idempotency_key);
        violations.finish().map_err(PaymentsError::from)?;
        let (Some(account_id), Some(kind)) = (account_id, kind) else {
            return Err(missing().into());
        };
        let hash = request_hash(&request);
        if let Some(response) = self.replayed_method(tenant, &request.idempotency_key, &hash).await? {
            return Ok(Response::new(response));
        }
        self.owners.check_account(tenant, account_id).await?;
        let method = PaymentMethodRow {
            id: Uuid::now_v7(),
            account_id,
            kind,
            gateway_token: request.gateway_token.clone(),
            label: request.label.clone(),
            created_at: now(),
        };
        let added = self
            .store
            .add_payment_method(tenant, &method, PAYMENT_METHODS_PER_ACCOUNT_MAX, &request.idempotency_key, &hash)
            .await?;
        if added {
            return Ok(Response::new(pb::AddPaymentMethodResponse { payment_method: Some(method_to_pb(&method)) }));
        }
        // A concurrent call with the same key answered first: answer as it did.
        let replayed = self.replayed_method(tenant, &request.idempotency_key, &hash).await?;
        replayed
            .map(Response::new)
            .ok_or_else(|| PaymentsError::Conflict("a concurrent call with this key vanished".into()).into())
    }

    async fn list_payment_methods(
        &self,
        request: Request<pb::ListPaymentMethodsRequest>,
    ) -> Result<Response<pb::ListPaymentMethodsResponse>, Status> {
        let tenant = tenant_of(&request)?;
        let request = request.into_inner();
        let mut violations = Violations::default();
        let account_id = violations.id("account_id", &request.account_id, AccountId);
        violations.finish().map_err(PaymentsError::from)?;
        let account_id = account_id.ok_or_else(missing)?;
        let methods = self.store.payment_methods(tenant, account_id, PAYMENT_METHODS_PER_ACCOUNT_MAX).await?;
        Ok(Response::new(pb::ListPaymentMethodsResponse {
            payment_methods: methods.iter().map(method_to_pb).collect(),
        }))
    }

    async fn charge(&self, request: Request<pb::ChargeRequest>) -> Result<Response<pb::ChargeResponse>, Status> {
        let tenant = tenant_of(&request)?;
        let request = request.into_inner();
        let charge = check_charge(&request)?;
        let payment = self.charges.charge(tenant, charge, request_hash(&request)).await?;
        let record = self.record_of(tenant, payment.id).await?;
        Ok(Response::new(pb::ChargeResponse { payment: Some(payment_to_pb(&record)) }))
    }

    async fn confirm_payment(
        &self,
        request: Request<pb::ConfirmPaymentRequest>,
    ) -> Result<Response<pb::ConfirmPaymentResponse>, Status> {
        let tenant = tenant_of(&request)?;
        let request = request.into_inner();
        let mut violations = Violations::default();
        let payment_id = violations.id("payment_id", &request.payment_id, |id| id);
        violations.required_text(
            "external_transaction_id",
            &request.external_transaction_id,
            EXTERNAL_TRANSACTION_ID_LENGTH_MAX,
        );
        violations.finish().map_err(PaymentsError::from)?;
        let payment_id = payment_id.ok_or_else(missing)?;
        self.store.confirm_payment(tenant, payment_id, &request.external_transaction_id, now()).await?;
        let record = self.record_of(tenant, payment_id).await?;
        Ok(Response::new(pb::ConfirmPaymentResponse { payment: Some(payment_to_pb(&record)) }))
    }

    async fn refund(&self, request: Request<pb::RefundRequest>) -> Result<Response<pb::RefundResponse>, Status> {
        let tenant = tenant_of(&request)?;
        let request = request.into_inner();
        let mut violations = Violations::default();
        let payment_id = violations.id("payment_id", &request.payment_id, |id| id);
        violations.text("reason", &request.reason, REFUND_REASON_LENGTH_MAX);
        violations.idempotency_key("idempotency_key", &request.idempotency_key);
        violations.finish().map_err(PaymentsError::from)?;
        let payment_id = payment_id.ok_or_else(missing)?;
        let ask = RefundAsk {
            payment_id,
            amount: request.amount.clone(),
            reason: request.reason.clone(),
            idempotency_key: request.idempotency_key.clone(),
        };
        let refund = self.charges.refund(tenant, ask, request_hash(&request)).await?;
        let record = self.record_of(tenant, refund.payment_id).await?;
        Ok(Response::new(pb::RefundResponse {
            refund: Some(refund_to_pb(&refund)),
            payment: Some(payment_to_pb(&record)),
        }))
    }

    async fn get_payment(
        &self,
        request: Request<pb::GetPaymentRequest>,
    ) -> Result<Response<pb::GetPaymentResponse>, Status> {
        let tenant = tenant_of(&request)?;
        let request = request.into_inner();
        let mut violations = Violations::default();
        let payment_id = violations.id("payment_id", &request.payment_id, |id| id);
        violations.finish().map_err(PaymentsError::from)?;
        let record = self.record_of(tenant, payment_id.ok_or_else(missing)?).await?;
        Ok(Response::new(pb::GetPaymentResponse { payment: Some(payment_to_pb(&record)) }))
    }

    async fn list_payments(
        &self,
        request: Request<pb::ListPaymentsRequest>,
    ) -> Result<Response<pb::ListPaymentsResponse>, Status> {
        let tenant = tenant_of(&request)?;
        let request = request.into_inner();
        let mut violations = Violations::default();
        let account_id = violations.optional_id("account_id", &request.account_id).map(AccountId);
        let invoice_id = violations.optional_id("invoice_id", &request.invoice_id);
        let status = match pb::PaymentStatus::try_from(request.status) {
            Ok(status) => status_from_pb(status),
            Err(_) => {
                violations.add("status", "is not a payment status");
                None
            }
        };
        let page = Page::<Uuid>::of(
            &mut violations,
            request.page_size,
            &request.page_token,
            &(&request.account_id, &request.invoice_id, request.status),
        );
        violations.finish().map_err(PaymentsError::from)?;
        let filter = PaymentFilter { account_id, invoice_id, status };
        let records = self.store.payments_page(tenant, &filter, page.after, page.rows_to_read()).await?;
        let (records, next_page_token) = page.finish(records, |record| record.payment.id);
        Ok(Response::new(pb::ListPaymentsResponse {
            payments: records.iter().map(payment_to_pb).collect(),
            next_page_token,
        }))
    }

    async fn create_voucher_batch(
        &self,
        request: Request<pb::CreateVoucherBatchRequest>,
    ) -> Result<Response<pb::CreateVoucherBatchResponse>, Status> {
        let tenant = tenant_of(&request)?;
        let request = request.into_inner();
        let now = now();
        let mut violations = Violations::default();
        if request.count == 0 || request.count > VOUCHERS_PER_BATCH_MAX {
            violations.add("count", format!("must be 1 to {VOUCHERS_PER_BATCH_MAX}"));
        }
        let value = match check_unit_code(&request.unit_code) {
            Ok(()) => violations.amount_with("value", &request.value, |text| voucher_value(&request.unit_code, text)),
            Err(error) => {
                violations.add("unit_code", error.to_string());
                None
            }
        };
        let expires_at = violations.time("expires_at", request.expires_at.as_ref());
        if expires_at.is_some_and(|expiry| expiry <= now) {
            violations.add("expires_at", "must be in the future");
        }
        violations.idempotency_key("idempotency_key", &request.idempotency_key);
        violations.finish().map_err(PaymentsError::from)?;
        // Well formed, checked with the other fields; exactly, in the unit, below.
        value.ok_or_else(missing)?;
        // Only a unit the tenant keeps accounts in: a voucher in any other
        // could never be redeemed. And no finer than that unit counts.
        let Some(unit) = self.owners.unit(tenant, &request.unit_code).await? else {
            return Err(PaymentsError::field("unit_code", "is not the unit of any of the tenant's accounts").into());
        };
        let value = unit
            .parse_positive(&request.value)
            .map_err(|error| PaymentsError::field("value", format!("in {}: {error}", unit.code())))?;
        let hash = request_hash(&request);
        if let Some(response) = self.replayed_batch(tenant, &request.idempotency_key, &hash).await? {
            return Ok(Response::new(response));
        }
        let batch = VoucherBatchRow {
            id: Uuid::now_v7(),
            count: request.count,
            value,
            unit_code: request.unit_code.clone(),
            expires_at,
            created_at: now,
        };
        let codes: Vec<VoucherCode> = (0..request.count).map(|_| VoucherCode::generate()).collect();
        let vouchers: Vec<IssuedVoucher> = codes
            .iter()
            .map(|code| IssuedVoucher { id: Uuid::now_v7(), digest: code.digest(), code: code.display() })
            .collect();
        let distinct: HashSet<&str> = vouchers.iter().map(|voucher| voucher.digest.as_str()).collect();
        if distinct.len() != vouchers.len() {
            // Two of 80-bit random codes matched: never seen, but never stored either.
            return Err(PaymentsError::Conflict("two generated voucher codes matched".into()).into());
        }
        if self.store.create_voucher_batch(tenant, &batch, &vouchers, &request.idempotency_key, &hash).await? {
            let issued: Vec<(Uuid, String)> = vouchers.into_iter().map(|voucher| (voucher.id, voucher.code)).collect();
            return Ok(Response::new(batch_response(&batch, &issued)));
        }
        // The key was taken by a concurrent call (answer as it did), or a
        // code matched a stored one (a retry draws new codes).
        let replayed = self.replayed_batch(tenant, &request.idempotency_key, &hash).await?;
        replayed
            .map(Response::new)
            .ok_or_else(|| PaymentsError::Conflict("a voucher code or the key was taken meanwhile".into()).into())
    }

    async fn redeem_voucher(
        &self,
        request: Request<pb::RedeemVoucherRequest>,
    ) -> Result<Response<pb::RedeemVoucherResponse>, Status> {
        let tenant = tenant_of(&request)?;
        let request = request.into_inner();
        let now = now();
        let mut violations = Violations::default();
        let account_id = violations.id("account_id", &request.account_id, AccountId);
        violations.required_text("code", &request.code, VOUCHER_CODE_LENGTH_MAX);
        violations.finish().map_err(PaymentsError::from)?;
        let account_id = account_id.ok_or_else(missing)?;
        // The limit comes first: a locked-out account learns nothing, not
        // even whether its code is well formed.
        let window = self.store.voucher_failures(tenant, account_id).await?;
        if window.is_some_and(|window| window.is_exhausted(now)) {
            return Err(PaymentsError::VoucherAttemptsExceeded.into());
        }
        // A mistyped code is caught by its check character and not counted:
        // it is a typing slip, not a guess.
        let code =
            VoucherCode::parse(&request.code).map_err(|error| PaymentsError::field("code", error.to_string()))?;
        let unit = (!request.unit_code.is_empty()).then_some(request.unit_code.as_str());
        // A voucher is spent only on an account the caller holds.
        self.owners.check_account(tenant, account_id).await?;
        let redeemed = self.store.redeem_voucher(tenant, account_id, &code.digest(), unit, now).await?;
        if redeemed.fresh {
            metrics::counter!("reservoir_payments_vouchers_redeemed_total").increment(1);
        }
        Ok(Response::new(pb::RedeemVoucherResponse { voucher: Some(voucher_to_pb(&redeemed.voucher)) }))
    }

    type WatchEventsStream = EventStream;

    async fn watch_events(
        &self,
        request: Request<pb::WatchEventsRequest>,
    ) -> Result<Response<Self::WatchEventsStream>, Status> {
        let tenant = tenant_of(&request)?;
        let store = self.store.clone();
        let written = store.events_written();
        let after = request.into_inner().after_sequence;
        let stream = follow_woken(after, self.stopping.clone(), EVENT_POLL_INTERVAL, Some(written), move |after| {
            let store = store.clone();
            async move {
                let events = store.events_after(tenant, after, EVENT_BATCH).await.map_err(Status::from)?;
                Ok(events
                    .iter()
                    .map(|event| (event.sequence, pb::WatchEventsResponse { event: Some(event_to_pb(event)) }))
                    .collect())
            }
        });
        Ok(Response::new(Box::pin(stream)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_charge_names_exactly_one_way_to_pay() {
        let base = pb::ChargeRequest {
            account_id: Uuid::now_v7().to_string(),
            invoice_id: Uuid::now_v7().to_string(),
            amount: "10.00".into(),
            currency: "USD".into(),
            idempotency_key: "k".into(),
            ..Default::default()
        };
        let both =
            pb::ChargeRequest { payment_method_id: Uuid::now_v7().to_string(), reconcile_later: true, ..base.clone() };
        assert!(matches!(check_charge(&both), Err(PaymentsError::InvalidArgument(_))));
        assert!(matches!(check_charge(&base), Err(PaymentsError::InvalidArgument(_))));
        let later = pb::ChargeRequest { reconcile_later: true, ..base.clone() };
        assert!(matches!(check_charge(&later), Ok(NewCharge { payment_method_id: None, .. })));
        let method = pb::ChargeRequest { payment_method_id: Uuid::now_v7().to_string(), ..base };
        assert!(matches!(check_charge(&method), Ok(NewCharge { payment_method_id: Some(_), .. })));
    }
}
