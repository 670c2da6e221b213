//! The calls a top-up makes to the wallet, invoicing and payments, with the
//! orchestrator's service key for the tenant each call is about. Every
//! change carries an idempotency key derived from the top-up and the step,
//! so a step repeated after a crash is answered by the first call's record.
//! `destination` guards where webhooks may be sent.

pub mod destination;

use std::time::Duration;

use chrono::{DateTime, Utc};
use reservoir_common::auth::{TenantId, service_request};
use reservoir_common::channel::ServiceChannel;
use reservoir_common::ids::AccountId;
use reservoir_common::status::reason_or_code;
use reservoir_common::time::to_timestamp;
use reservoir_proto::invoicing as invoicing_pb;
use reservoir_proto::invoicing::invoicing_service_client::InvoicingServiceClient;
use reservoir_proto::payments as payments_pb;
use reservoir_proto::payments::payments_service_client::PaymentsServiceClient;
use reservoir_proto::wallet as wallet_pb;
use reservoir_proto::wallet::wallet_service_client::WalletServiceClient;
use rust_decimal::Decimal;
use tonic::{Code, Status};
use uuid::Uuid;

use crate::domain::{Bonus, Carry, GrantRollover};
use crate::error::OrchestratorError;

/// How long one call may take before it counts as failed transiently.
const CALL_TIMEOUT: Duration = Duration::from_secs(10);

/// Why a call did not do what it was asked.
#[derive(Debug, Clone, PartialEq)]
pub enum CallError {
    /// Worth trying again: the service is down, slow or busy.
    Transient(String),
    /// The service refused for good, with its reason.
    Refused { code: Code, reason: String },
}

impl CallError {
    fn of(status: &Status) -> Self {
        match status.code() {
            Code::FailedPrecondition
            | Code::InvalidArgument
            | Code::NotFound
            | Code::AlreadyExists
            | Code::PermissionDenied
            | Code::Unauthenticated
            | Code::OutOfRange => Self::Refused { code: status.code(), reason: reason_or_code(status) },
            _ => Self::Transient(format!("{:?}: {}", status.code(), status.message())),
        }
    }

    pub fn detail(&self) -> String {
        match self {
            Self::Transient(detail) => detail.clone(),
            Self::Refused { reason, .. } => reason.clone(),
        }
    }
}

impl From<CallError> for OrchestratorError {
    fn from(error: CallError) -> Self {
        match error {
            CallError::Transient(detail) => Self::Unavailable(detail),
            CallError::Refused { code: Code::NotFound, .. } => Self::NotFound("account or payment method"),
            CallError::Refused { reason, .. } => Self::precondition(&reason, "a service refused the call"),
        }
    }
}

/// An invoice as a top-up needs it.
#[derive(Debug, Clone)]
pub struct Invoice {
    pub id: Uuid,
    pub total: Decimal,
    pub currency: String,
}

/// A payment as a top-up needs it.
#[derive(Debug, Clone)]
pub struct Payment {
    pub id: Uuid,
    pub status: payments_pb::PaymentStatus,
    pub failure_code: String,
}

#[derive(Clone)]
pub struct Upstream {
    wallet: ServiceChannel,
    invoicing: ServiceChannel,
    payments: ServiceChannel,
    service_key: String,
}

fn channel(endpoint: &str, name: &str) -> Result<ServiceChannel, OrchestratorError> {
    reservoir_common::tls::lazy_channel(endpoint, name, CALL_TIMEOUT).map_err(OrchestratorError::internal)
}

/// A call's answer, or what its failure means to a top-up.
fn answer<T>(result: Result<tonic::Response<T>, Status>) -> Result<T, CallError> {
    result.map(tonic::Response::into_inner).map_err(|status| CallError::of(&status))
}

fn id(text: &str, what: &str) -> Result<Uuid, CallError> {
    Uuid::parse_str(text).map_err(|_| CallError::Transient(format!("{what} answered an invalid id {text:?}")))
}

fn decimal(text: &str) -> Result<Decimal, CallError> {
    text.parse().map_err(|_| CallError::Transient(format!("an amount {text:?} did not parse")))
}

impl Upstream {
    /// Connects lazily: the orchestrator starts while the others are down.
    pub fn new(wallet: &str, invoicing: &str, payments: &str, service_key: String) -> Result<Self, OrchestratorError> {
        Ok(Self {
            wallet: channel(wallet, "wallet")?,
            invoicing: channel(invoicing, "invoicing")?,
            payments: channel(payments, "payments")?,
            service_key,
        })
    }

    pub fn wallet_channel(&self) -> ServiceChannel {
        self.wallet.clone()
    }

    fn request<T>(&self, message: T, tenant: TenantId) -> Result<tonic::Request<T>, CallError> {
        service_request(message, &self.service_key, tenant).map_err(|status| CallError::Transient(status.to_string()))
    }

    pub fn wallet(&self) -> WalletServiceClient<ServiceChannel> {
        WalletServiceClient::new(self.wallet.clone())
    }

    pub fn invoicing(&self) -> InvoicingServiceClient<ServiceChannel> {
        InvoicingServiceClient::new(self.invoicing.clone())
    }

    pub fn payments(&self) -> PaymentsServiceClient<ServiceChannel> {
        PaymentsServiceClient::new(self.payments.clone())
    }

    /// The account's wallet unit code and scale.
    pub async fn account_unit(&self, tenant: TenantId, account_id: AccountId) -> Result<(String, u32), CallError> {
        let request = self.request(wallet_pb::GetAccountRequest { account_id: account_id.to_string() }, tenant)?;
        let account = answer(self.wallet().get_account(request).await)?.account.unwrap_or_default();
        let unit = account.unit.unwrap_or_default();
        Ok((unit.code, unit.scale.unwrap_or(0)))
    }

    /// The account's available balance.
    pub async fn available(&self, tenant: TenantId, account_id: AccountId) -> Result<Decimal, CallError> {
        let request = self.request(wallet_pb::GetBalanceRequest { account_id: account_id.to_string() }, tenant)?;
        let balance = answer(self.wallet().get_balance(request).await)?.balance.unwrap_or_default();
        decimal(&balance.available)
    }

    /// Creates (or finds again, by its key) the top-up's invoice and finalizes it.
    pub async fn create_invoice(
        &self,
        tenant: TenantId,
        top_up_id: Uuid,
        account_id: AccountId,
        credits: Decimal,
    ) -> Result<Invoice, CallError> {
        let request = self.request(
            invoicing_pb::CreateInvoiceRequest {
                account_id: account_id.to_string(),
                credits: credits.normalize().to_string(),
                description: String::new(),
                metadata: [("top_up_id".to_owned(), top_up_id.to_string())].into_iter().collect(),
                idempotency_key: format!("top-up:{top_up_id}:invoice"),
            },
            tenant,
        )?;
        let draft = answer(self.invoicing().create_invoice(request).await)?.invoice.unwrap_or_default();
        let request = self.request(invoicing_pb::FinalizeInvoiceRequest { invoice_id: draft.id.clone() }, tenant)?;
        let open = answer(self.invoicing().finalize_invoice(request).await)?.invoice.unwrap_or_default();
        Ok(Invoice { id: id(&open.id, "invoicing")?, total: decimal(&open.total)?, currency: open.currency })
    }

    pub async fn void_invoice(&self, tenant: TenantId, invoice_id: Uuid) -> Result<(), CallError> {
        let request = self.request(invoicing_pb::VoidInvoiceRequest { invoice_id: invoice_id.to_string() }, tenant)?;
        answer(self.invoicing().void_invoice(request).await).map(|_| ())
    }

    pub async fn mark_paid(&self, tenant: TenantId, invoice_id: Uuid, payment_id: Uuid) -> Result<(), CallError> {
        let request = self.request(
            invoicing_pb::MarkInvoicePaidRequest {
                invoice_id: invoice_id.to_string(),
                payment_reference: payment_id.to_string(),
            },
            tenant,
        )?;
        answer(self.invoicing().mark_invoice_paid(request).await).map(|_| ())
    }

    /// Charges the invoice's amount; the key derives from the top-up, so
    /// however often this is called, the payment (and the gateway) see one charge.
    #[allow(clippy::too_many_arguments)]
    pub async fn charge(
        &self,
        tenant: TenantId,
        top_up_id: Uuid,
        account_id: AccountId,
        invoice: &Invoice,
        payment_method_id: Option<Uuid>,
        reconcile_later: bool,
    ) -> Result<Payment, CallError> {
        let request = self.request(
            payments_pb::ChargeRequest {
                account_id: account_id.to_string(),
                invoice_id: invoice.id.to_string(),
                amount: invoice.total.to_string(),
                currency: invoice.currency.clone(),
                payment_method_id: payment_method_id.map(|id| id.to_string()).unwrap_or_default(),
                reconcile_later,
                idempotency_key: format!("top-up:{top_up_id}:charge"),
                metadata: [("top_up_id".to_owned(), top_up_id.to_string())].into_iter().collect(),
            },
            tenant,
        )?;
        let payment = answer(self.payments().charge(request).await)?.payment.unwrap_or_default();
        Self::payment_of(payment)
    }

    fn payment_of(payment: payments_pb::Payment) -> Result<Payment, CallError> {
        Ok(Payment {
            id: id(&payment.id, "payments")?,
            status: payments_pb::PaymentStatus::try_from(payment.status)
                .unwrap_or(payments_pb::PaymentStatus::Unspecified),
            failure_code: payment.failure_code,
        })
    }

    pub async fn payment(&self, tenant: TenantId, payment_id: Uuid) -> Result<Payment, CallError> {
        let request = self.request(payments_pb::GetPaymentRequest { payment_id: payment_id.to_string() }, tenant)?;
        let payment = answer(self.payments().get_payment(request).await)?.payment.unwrap_or_default();
        Self::payment_of(payment)
    }

    /// Redeems a voucher; the same account redeeming it again gets it back.
    /// Answers the voucher's id, value and unit.
    pub async fn redeem_voucher(
        &self,
        tenant: TenantId,
        code: &str,
        account_id: AccountId,
        unit_code: &str,
    ) -> Result<(Uuid, Decimal, String), CallError> {
        let request = self.request(
            payments_pb::RedeemVoucherRequest {
                code: code.to_owned(),
                account_id: account_id.to_string(),
                unit_code: unit_code.to_owned(),
            },
            tenant,
        )?;
        let voucher = answer(self.payments().redeem_voucher(request).await)?.voucher.unwrap_or_default();
        Ok((id(&voucher.id, "payments")?, decimal(&voucher.value)?, voucher.unit_code))
    }

    /// Grants the top-up's credits; the key derives from the top-up.
    #[allow(clippy::too_many_arguments)]
    pub async fn grant(
        &self,
        tenant: TenantId,
        top_up_id: Uuid,
        account_id: AccountId,
        credits: Decimal,
        kind: wallet_pb::GrantKind,
        source: wallet_pb::GrantSource,
        source_reference: Option<Uuid>,
        expires_at: Option<DateTime<Utc>>,
        rollover: Option<GrantRollover>,
    ) -> Result<Uuid, CallError> {
        let rollover = rollover.map(|rollover| {
            let (max_amount, max_percent) = match rollover.carry {
                Carry::Nothing => ("0".to_owned(), 0),
                Carry::All => (String::new(), 0),
                Carry::Amount(amount) => (amount.normalize().to_string(), 0),
                Carry::Percent(percent) => (String::new(), percent),
            };
            wallet_pb::Rollover {
                from_grant_id: rollover.from_grant.to_string(),
                max_amount,
                max_percent,
                expires_at: rollover.expires_at.map(to_timestamp),
            }
        });
        let request = wallet_pb::GrantCreditsRequest {
            rollover,
            account_id: account_id.to_string(),
            amount: credits.normalize().to_string(),
            kind: kind.into(),
            expires_at: expires_at.map(to_timestamp),
            source: source.into(),
            source_reference: source_reference.map(|id| id.to_string()).unwrap_or_default(),
            ..Default::default()
        };
        self.grant_for(tenant, top_up_id, "grant", request).await
    }

    /// Sends one of a top-up's grants under the top-up's key for `purpose`,
    /// correlated with the top-up; answers the grant's id.
    async fn grant_for(
        &self,
        tenant: TenantId,
        top_up_id: Uuid,
        purpose: &str,
        request: wallet_pb::GrantCreditsRequest,
    ) -> Result<Uuid, CallError> {
        let request = wallet_pb::GrantCreditsRequest {
            idempotency_key: format!("top-up:{top_up_id}:{purpose}"),
            correlation_id: top_up_id.to_string(),
            ..request
        };
        let response = answer(self.wallet().grant_credits(self.request(request, tenant)?).await)?;
        id(&response.grant.unwrap_or_default().id, "wallet")
    }

    /// Grants a top-up's bonus: promotional credits linked to the paid
    /// grant (source BONUS), under the top-up's own key for it.
    pub async fn grant_bonus(
        &self,
        tenant: TenantId,
        top_up_id: Uuid,
        account_id: AccountId,
        bonus: &Bonus,
        paid_grant: Option<Uuid>,
    ) -> Result<Uuid, CallError> {
        let request = wallet_pb::GrantCreditsRequest {
            account_id: account_id.to_string(),
            amount: bonus.credits.normalize().to_string(),
            kind: wallet_pb::GrantKind::Promotional.into(),
            priority: bonus.priority,
            expires_at: bonus.expires_at.map(to_timestamp),
            source: wallet_pb::GrantSource::Bonus.into(),
            source_reference: paid_grant.map(|id| id.to_string()).unwrap_or_default(),
            ..Default::default()
        };
        self.grant_for(tenant, top_up_id, "bonus", request).await
    }

    /// Takes back at most `amount` of a bonus grant for a refund, under the
    /// refund's key; answers what the wallet took.
    pub async fn claw_back(
        &self,
        tenant: TenantId,
        grant_id: Uuid,
        refund_id: Uuid,
        amount: Decimal,
    ) -> Result<Decimal, CallError> {
        let request = self.request(
            wallet_pb::VoidGrantRequest {
                grant_id: grant_id.to_string(),
                idempotency_key: format!("refund:{refund_id}:clawback"),
                reason: format!("bonus clawed back for refund {refund_id}"),
                amount: amount.normalize().to_string(),
            },
            tenant,
        )?;
        let response = answer(self.wallet().void_grant(request).await)?;
        decimal(&response.voided)
    }

    /// Sets the account's low-balance threshold in the wallet, whose
    /// BALANCE_LOW events start automatic top-ups, and its warning level
    /// (none leaves the wallet's own as it is).
    pub async fn set_low_balance_levels(
        &self,
        tenant: TenantId,
        account_id: AccountId,
        threshold: Decimal,
        warning: Option<Decimal>,
    ) -> Result<(), CallError> {
        let request = self.request(
            wallet_pb::UpdateAccountRequest {
                account_id: account_id.to_string(),
                low_balance_threshold: Some(threshold.normalize().to_string()),
                low_balance_warning: warning.map(|level| level.normalize().to_string()),
                // Each configuration is a change of its own.
                idempotency_key: format!("auto-replenish:{account_id}:{}", Uuid::now_v7()),
                ..Default::default()
            },
            tenant,
        )?;
        answer(self.wallet().update_account(request).await).map(|_| ())
    }

    pub fn service_request<T>(&self, message: T, tenant: TenantId) -> Result<tonic::Request<T>, CallError> {
        self.request(message, tenant)
    }
}
