//! The services that own what payments checks before it acts: the wallet
//! (accounts, units) and invoicing (invoices), asked with payments' own
//! service key.

use reservoir_common::auth::{TenantId, service_request};
use reservoir_common::channel::ServiceChannel;
use reservoir_common::ids::AccountId;
use reservoir_common::money::Unit;
use reservoir_proto::invoicing as invoicing_pb;
use reservoir_proto::invoicing::invoicing_service_client::InvoicingServiceClient;
use reservoir_proto::wallet as wallet_pb;
use reservoir_proto::wallet::wallet_service_client::WalletServiceClient;
use uuid::Uuid;

use crate::domain::InvoiceFacts;
use crate::error::PaymentsError;

/// Asks the services that own accounts, units and invoices about those a
/// call names, with payments' own service key: a payment method is only
/// added to an account the caller holds, a voucher only made in a unit its
/// accounts are kept in, and a charge only made for the caller's invoice.
#[derive(Clone)]
pub struct Owners {
    wallet: WalletServiceClient<ServiceChannel>,
    invoicing: InvoicingServiceClient<ServiceChannel>,
    service_key: String,
}

impl Owners {
    pub fn new(wallet: ServiceChannel, invoicing: ServiceChannel, service_key: String) -> Self {
        Self {
            wallet: WalletServiceClient::new(wallet),
            invoicing: InvoicingServiceClient::new(invoicing),
            service_key,
        }
    }

    /// Ok when `account` is one of `tenant`'s; NOT_FOUND when it is not (or
    /// not anyone's); UNAVAILABLE when the wallet cannot tell now.
    pub async fn check_account(&self, tenant: TenantId, account: AccountId) -> Result<(), PaymentsError> {
        let message = wallet_pb::GetAccountRequest { account_id: account.to_string() };
        let request = service_request(message, &self.service_key, tenant)
            .map_err(|status| PaymentsError::internal(status.message().to_owned()))?;
        match self.wallet.clone().get_account(request).await {
            Ok(_) => Ok(()),
            Err(status) if status.code() == tonic::Code::NotFound => Err(PaymentsError::NotFound("account")),
            Err(status) => Err(PaymentsError::Unavailable(format!(
                "the wallet could not confirm the account: {}",
                status.message()
            ))),
        }
    }

    /// The unit `code` when some account of `tenant` is kept in it; `None`
    /// when none is (a voucher in it could never be redeemed); UNAVAILABLE
    /// when the wallet cannot tell now.
    pub async fn unit(&self, tenant: TenantId, code: &str) -> Result<Option<Unit>, PaymentsError> {
        let message = wallet_pb::GetUnitRequest { unit_code: code.to_owned() };
        let request = service_request(message, &self.service_key, tenant)
            .map_err(|status| PaymentsError::internal(status.message().to_owned()))?;
        match self.wallet.clone().get_unit(request).await {
            Ok(response) => {
                let unit = response.into_inner().unit.unwrap_or_default();
                Unit::from_parts(&unit.code, unit.scale, &unit.price_per_credit, &unit.billing_currency)
                    .map(Some)
                    .map_err(|error| {
                        PaymentsError::internal(format!("the wallet answered a unit it cannot have: {error}"))
                    })
            }
            Err(status) if status.code() == tonic::Code::NotFound => Ok(None),
            Err(status) => {
                Err(PaymentsError::Unavailable(format!("the wallet could not confirm the unit: {}", status.message())))
            }
        }
    }

    /// What a charge needs to know of the tenant's invoice `invoice`:
    /// NOT_FOUND when the tenant has no such invoice; UNAVAILABLE when
    /// invoicing cannot tell now.
    pub async fn invoice(&self, tenant: TenantId, invoice: Uuid) -> Result<InvoiceFacts, PaymentsError> {
        let message = invoicing_pb::GetInvoiceRequest { invoice_id: invoice.to_string() };
        let request = service_request(message, &self.service_key, tenant)
            .map_err(|status| PaymentsError::internal(status.message().to_owned()))?;
        let invoice = match self.invoicing.clone().get_invoice(request).await {
            Ok(response) => response.into_inner().invoice.unwrap_or_default(),
            Err(status) if status.code() == tonic::Code::NotFound => return Err(PaymentsError::NotFound("invoice")),
            Err(status) => {
                return Err(PaymentsError::Unavailable(format!(
                    "invoicing could not confirm the invoice: {}",
                    status.message()
                )));
            }
        };
        let unreadable = |what: &str| PaymentsError::internal(format!("invoicing answered an invoice with {what}"));
        let status = invoice.status();
        Ok(InvoiceFacts {
            account_id: invoice.account_id.parse().map_err(|_| unreadable("a malformed account id"))?,
            payable: matches!(status, invoicing_pb::InvoiceStatus::Open | invoicing_pb::InvoiceStatus::Uncollectible),
            amount_due: invoice.amount_due.parse().map_err(|_| unreadable("a malformed amount due"))?,
            currency: invoice.currency,
        })
    }
}
