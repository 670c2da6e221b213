//! A wallet (for API keys and accounts), invoicing (for the invoices charges
//! pay) and a payments service on free ports, each with a database of its
//! own, two tenants with a key each, and clients for both.

use reservoir_common::app::App;
use std::time::Duration;

use reservoir_common::auth::TenantId;
use reservoir_invoicing::app::{Application as Invoicing, InvoicingSettings};
use reservoir_payments::app::Application as Payments;
use reservoir_payments::clients::gateway::{SandboxGateway, gateway_key};
use reservoir_proto::invoicing as invoicing_pb;
use reservoir_proto::invoicing::invoicing_service_client::InvoicingServiceClient;
use reservoir_proto::payments as pb;
use reservoir_proto::payments::payments_service_client::PaymentsServiceClient;
pub use reservoir_testing::services::PEPPER;
use reservoir_testing::services::{KEY_CACHE_TTL, TestWallet, invoicing_settings, payments_settings, wallet_settings};
use reservoir_testing::wallet::channel;
pub use reservoir_testing::wallet::{assert_invalid, assert_refused, key};
use reservoir_testing::{Backend, BearerKey, Running, TestDatabase};
use reservoir_wallet::app::WalletSettings;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;

pub type PaymentsClient = PaymentsServiceClient<InterceptedService<Channel, BearerKey>>;
pub type InvoicingClient = InvoicingServiceClient<InterceptedService<Channel, BearerKey>>;

pub struct Suite {
    /// The first tenant's client.
    pub payments: PaymentsClient,
    /// A second tenant's client, for isolation.
    pub other: PaymentsClient,
    /// Payments as the suite's services call it, with a service key acting
    /// for the first tenant and for the second (confirming a payment takes one).
    pub service: PaymentsClient,
    pub other_service: PaymentsClient,
    pub tenant: TenantId,
    /// The wallet's store, for keys.
    pub wallet_store: reservoir_wallet::store::Store,
    /// Payments' address.
    pub address: std::net::SocketAddr,
    /// The wallet, under the first tenant's key.
    pub wallet: reservoir_testing::wallet::Client,
    /// The wallet, under the second tenant's key.
    pub other_wallet: reservoir_testing::wallet::Client,
    pub sandbox: SandboxGateway,
    /// Invoicing, under the first tenant's key.
    pub invoicing: InvoicingClient,
    /// Invoicing, under the second tenant's key.
    pub other_invoicing: InvoicingClient,
    running: Vec<Running>,
    wallet_service: TestWallet,
    databases: Vec<TestDatabase>,
}

impl Suite {
    pub async fn spawn(backend: Backend) -> Option<Self> {
        Self::spawn_with_key_cache(backend, Duration::from_secs(60)).await
    }

    /// A suite whose payments trusts a checked key for `key_cache_ttl`; the
    /// wallet keeps its own for a minute.
    pub async fn spawn_with_key_cache(backend: Backend, key_cache_ttl: Duration) -> Option<Self> {
        let wallet_database = TestDatabase::create(backend).await?;
        let invoicing_database = TestDatabase::create(backend).await?;
        let payments_database = TestDatabase::create(backend).await?;
        let wallet = TestWallet::start(WalletSettings {
            database_max_connections: 8,
            sweep_interval_ms: 1_000,
            ..wallet_settings(&wallet_database)
        })
        .await;
        let (other_tenant, other_key) = wallet.other_tenant("other").await;
        let invoicing = Invoicing::build(
            // Charges need invoices, not statements; the suite moves no clock.
            &InvoicingSettings { worker_interval_ms: 60_000, ..invoicing_settings(&invoicing_database, &wallet, None) },
            KEY_CACHE_TTL,
        )
        .await
        .expect("building invoicing");
        let invoicing_address = invoicing.local_addr().unwrap();
        let invoicing_running = Running::start(invoicing);
        let settings = payments_settings(&payments_database, &wallet, invoicing_address);
        let payments = Payments::build(&settings, key_cache_ttl).await.expect("building payments");
        let address = payments.local_addr().unwrap();
        let sandbox = payments.sandbox();
        let payments_running = Running::start(payments);
        let connection = channel(address).await;
        let (tenant, tenant_key, service_key) = (wallet.tenant, wallet.key.clone(), wallet.service_key.clone());
        Some(Self {
            payments: PaymentsServiceClient::with_interceptor(connection.clone(), BearerKey::new(&tenant_key)),
            other: PaymentsServiceClient::with_interceptor(connection.clone(), BearerKey::new(&other_key)),
            service: PaymentsServiceClient::with_interceptor(
                connection.clone(),
                BearerKey::service(&service_key, tenant),
            ),
            other_service: PaymentsServiceClient::with_interceptor(
                connection,
                BearerKey::service(&service_key, other_tenant),
            ),
            tenant,
            wallet_store: wallet.store.clone(),
            address,
            wallet: wallet.client().await,
            other_wallet: reservoir_testing::wallet::client(wallet.address, &other_key).await,
            sandbox,
            invoicing: InvoicingServiceClient::with_interceptor(
                channel(invoicing_address).await,
                BearerKey::new(&tenant_key),
            ),
            other_invoicing: InvoicingServiceClient::with_interceptor(
                channel(invoicing_address).await,
                BearerKey::new(&other_key),
            ),
            running: vec![payments_running, invoicing_running],
            wallet_service: wallet,
            databases: vec![wallet_database, invoicing_database, payments_database],
        })
    }

    /// Payments' database, to write rows as an older release did.
    pub fn payments_database(&self) -> &TestDatabase {
        &self.databases[2]
    }

    /// Stops payments, invoicing and the wallet, and drops their databases.
    pub async fn stop(mut self) {
        for running in self.running {
            running.stop().await;
        }
        self.wallet_service.stop().await;
        for database in self.databases {
            database.drop_database().await;
        }
    }

    /// How many times the sandbox charged for a Charge's idempotency key.
    pub async fn charges_for(&self, idempotency_key: &str) -> u64 {
        self.sandbox.charges_for(&gateway_key(self.tenant, idempotency_key)).await.unwrap()
    }
}

/// A fresh account id: payments takes the caller's word for its accounts.
/// A new account of the first tenant, opened in the wallet: payments adds
/// payment methods only to accounts the wallet says are the caller's.
pub async fn account(suite: &Suite) -> String {
    reservoir_testing::wallet::open_funded_account(&suite.wallet, "0").await.id
}

pub async fn add_method(
    suite: &Suite,
    account_id: &str,
    kind: pb::PaymentMethodKind,
    token: &str,
) -> pb::PaymentMethod {
    suite
        .payments
        .clone()
        .add_payment_method(pb::AddPaymentMethodRequest {
            account_id: account_id.into(),
            kind: kind.into(),
            gateway_token: token.into(),
            label: "test method".into(),
            idempotency_key: key(),
        })
        .await
        .unwrap()
        .into_inner()
        .payment_method
        .unwrap()
}

/// A card with a sandbox token.
pub async fn card(suite: &Suite, account_id: &str, token: &str) -> pb::PaymentMethod {
    add_method(suite, account_id, pb::PaymentMethodKind::Card, token).await
}

/// An open invoice of the first tenant for `amount` of the account's unit
/// (USD, one for one), as a top-up makes it: created, then finalized.
pub async fn open_invoice(suite: &Suite, account_id: &str, amount: &str) -> invoicing_pb::Invoice {
    open_invoice_with(&suite.invoicing, account_id, amount).await
}

/// An open invoice made with `invoicing`'s key.
pub async fn open_invoice_with(invoicing: &InvoicingClient, account_id: &str, amount: &str) -> invoicing_pb::Invoice {
    let mut invoicing = invoicing.clone();
    let draft = invoicing
        .create_invoice(invoicing_pb::CreateInvoiceRequest {
            account_id: account_id.into(),
            credits: amount.into(),
            description: "credits".into(),
            metadata: Default::default(),
            idempotency_key: key(),
        })
        .await
        .expect("CreateInvoice")
        .into_inner()
        .invoice
        .unwrap();
    invoicing
        .finalize_invoice(invoicing_pb::FinalizeInvoiceRequest { invoice_id: draft.id })
        .await
        .expect("FinalizeInvoice")
        .into_inner()
        .invoice
        .unwrap()
}

/// A charge of `amount` USD with a method, under a fresh key, paying an
/// open invoice of that amount.
pub async fn charge_request(suite: &Suite, method: &pb::PaymentMethod, amount: &str) -> pb::ChargeRequest {
    pb::ChargeRequest {
        account_id: method.account_id.clone(),
        invoice_id: open_invoice(suite, &method.account_id, amount).await.id,
        amount: amount.into(),
        currency: "USD".into(),
        payment_method_id: method.id.clone(),
        reconcile_later: false,
        idempotency_key: key(),
        metadata: Default::default(),
    }
}

/// A reconcile-later charge of `amount` USD, paying an open invoice of that amount.
pub async fn reconcile_later_request(suite: &Suite, account_id: &str, amount: &str) -> pb::ChargeRequest {
    pb::ChargeRequest {
        account_id: account_id.into(),
        invoice_id: open_invoice(suite, account_id, amount).await.id,
        amount: amount.into(),
        currency: "USD".into(),
        payment_method_id: String::new(),
        reconcile_later: true,
        idempotency_key: key(),
        metadata: Default::default(),
    }
}

pub async fn charge(suite: &Suite, request: pb::ChargeRequest) -> pb::Payment {
    suite.payments.clone().charge(request).await.unwrap().into_inner().payment.unwrap()
}

/// A succeeded card payment of `amount` USD.
pub async fn paid(suite: &Suite, amount: &str) -> pb::Payment {
    let method = card(suite, &account(suite).await, "tok_succeed").await;
    let payment = charge(suite, charge_request(suite, &method, amount).await).await;
    assert_eq!(status(&payment), pb::PaymentStatus::Succeeded);
    payment
}

pub async fn get(suite: &Suite, payment: &pb::Payment) -> pb::Payment {
    suite
        .payments
        .clone()
        .get_payment(pb::GetPaymentRequest { payment_id: payment.id.clone() })
        .await
        .unwrap()
        .into_inner()
        .payment
        .unwrap()
}

pub fn status(payment: &pb::Payment) -> pb::PaymentStatus {
    pb::PaymentStatus::try_from(payment.status).unwrap()
}

pub fn outcomes(payment: &pb::Payment) -> Vec<pb::AttemptOutcome> {
    payment.attempts.iter().map(|attempt| pb::AttemptOutcome::try_from(attempt.outcome).unwrap()).collect()
}

pub fn refund_request(payment: &pb::Payment, amount: &str) -> pb::RefundRequest {
    pb::RefundRequest {
        payment_id: payment.id.clone(),
        amount: amount.into(),
        reason: "customer asked".into(),
        idempotency_key: key(),
    }
}

/// Opens an account of the first tenant in CREDIT (two decimal places, a
/// cent each): vouchers are only made in a unit the tenant keeps accounts in.
pub async fn credit_account(suite: &Suite) -> String {
    use reservoir_proto::wallet as wallet_pb;
    let unit = wallet_pb::Unit {
        code: "CREDIT".into(),
        scale: Some(2),
        price_per_credit: "0.01".into(),
        billing_currency: "USD".into(),
    };
    let request = wallet_pb::CreateAccountRequest {
        external_id: key(),
        unit: Some(unit),
        overdraft_policy: wallet_pb::OverdraftPolicy::None.into(),
        idempotency_key: key(),
        ..Default::default()
    };
    suite.wallet.clone().create_account(request).await.unwrap().into_inner().account.unwrap().id
}

/// A batch of CREDIT vouchers.
pub async fn voucher_batch(suite: &Suite, count: u32, value: &str) -> pb::CreateVoucherBatchResponse {
    credit_account(suite).await;
    suite
        .payments
        .clone()
        .create_voucher_batch(pb::CreateVoucherBatchRequest {
            count,
            value: value.into(),
            unit_code: "CREDIT".into(),
            expires_at: None,
            idempotency_key: key(),
        })
        .await
        .unwrap()
        .into_inner()
}

pub fn redeem_request(code: &str, account_id: &str) -> pb::RedeemVoucherRequest {
    pb::RedeemVoucherRequest { code: code.into(), account_id: account_id.into(), unit_code: String::new() }
}

/// Runs each named test body on SQLite and on PostgreSQL.
#[macro_export]
macro_rules! on_both_backends {
    ($($name:ident),* $(,)?) => {
        reservoir_testing::on_both_backends!($crate::helpers::Suite; $($name),*);
    };
}
