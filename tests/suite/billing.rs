//! Invoicing and payments as `reservoir serve` processes: a top-up invoiced,
//! charged and paid end to end; and payments killed with SIGKILL in the
//! middle of a stream of charges, after which a retry of every charge with
//! its key never charges a card twice.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use reservoir_proto::invoicing as invoicing_pb;
use reservoir_proto::invoicing::invoicing_service_client::InvoicingServiceClient;
use reservoir_proto::payments as payments_pb;
use reservoir_proto::payments::payments_service_client::PaymentsServiceClient;
use reservoir_testing::wallet::*;
use reservoir_testing::{Backend, BearerKey, TestDatabase};
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;

use crate::process::{Environment, ServiceProcess};

type Invoicing = InvoicingServiceClient<InterceptedService<Channel, BearerKey>>;
type Payments = PaymentsServiceClient<InterceptedService<Channel, BearerKey>>;

struct Billing {
    environment: Environment,
    processes: Vec<ServiceProcess>,
    api_key: String,
    databases: Vec<TestDatabase>,
}

impl Billing {
    async fn start(backend: Backend) -> Option<Self> {
        let mut databases = Vec::new();
        for _ in 0..4 {
            databases.push(TestDatabase::create(backend).await?);
        }
        let mut environment =
            Environment::new(&databases[0], Some(&databases[1])).with_billing(&databases[2], &databases[3]);
        let api_key = environment.create_tenant().await;
        environment.issue_service_key().await;
        let mut processes = vec![
            ServiceProcess::wallet(&environment),
            ServiceProcess::metering(&environment),
            ServiceProcess::invoicing(&environment),
            ServiceProcess::payments(&environment),
        ];
        for process in &mut processes {
            process.start(&environment).await;
        }
        Some(Self { environment, processes, api_key, databases })
    }

    async fn invoicing(&self) -> Invoicing {
        InvoicingServiceClient::with_interceptor(
            channel(self.processes[2].address()).await,
            BearerKey::new(&self.api_key),
        )
    }

    /// Invoicing as the payment flow calls it: the services' key, for the tenant.
    async fn invoicing_as_service(&self) -> Invoicing {
        let tenant = Environment::tenant_of(self.processes[0].address(), &self.api_key).await;
        InvoicingServiceClient::with_interceptor(
            channel(self.processes[2].address()).await,
            BearerKey::service(&self.environment.service_key(), tenant),
        )
    }

    async fn payments(&self) -> Payments {
        PaymentsServiceClient::with_interceptor(
            channel(self.processes[3].address()).await,
            BearerKey::new(&self.api_key),
        )
    }

    async fn stop(mut self) {
        for process in self.processes.iter_mut().rev() {
            assert!(process.terminate().await.success(), "a clean exit on SIGTERM");
        }
        for database in self.databases {
            database.drop_database().await;
        }
    }
}

async fn add_card(payments: &mut Payments, account_id: &str, token: &str) -> String {
    payments
        .add_payment_method(payments_pb::AddPaymentMethodRequest {
            account_id: account_id.into(),
            kind: payments_pb::PaymentMethodKind::Card.into(),
            gateway_token: token.into(),
            label: "test card".into(),
            idempotency_key: key(),
        })
        .await
        .unwrap()
        .into_inner()
        .payment_method
        .unwrap()
        .id
}

/// An invoice for `credits` of the account's unit, created and finalized.
async fn open_invoice(invoicing: &mut Invoicing, account_id: &str, credits: &str) -> invoicing_pb::Invoice {
    let draft = invoicing
        .create_invoice(invoicing_pb::CreateInvoiceRequest {
            account_id: account_id.into(),
            credits: credits.into(),
            idempotency_key: key(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .invoice
        .unwrap();
    invoicing
        .finalize_invoice(invoicing_pb::FinalizeInvoiceRequest { invoice_id: draft.id })
        .await
        .unwrap()
        .into_inner()
        .invoice
        .unwrap()
}

async fn a_top_up_is_invoiced_charged_and_paid(backend: Backend) {
    let Some(billing) = Billing::start(backend).await else {
        return;
    };
    let wallet = client(billing.processes[0].address(), &billing.api_key).await;
    let account = open_funded_account(&wallet, "0").await;
    let mut invoicing = billing.invoicing().await;
    let mut payments = billing.payments().await;
    let invoice = open_invoice(&mut invoicing, &account.id, "25").await;
    assert_eq!((invoice.number, invoice.total.as_str()), (1, "25.00"));
    let card = add_card(&mut payments, &account.id, "tok_succeed").await;
    let payment = payments
        .charge(payments_pb::ChargeRequest {
            account_id: account.id.clone(),
            invoice_id: invoice.id.clone(),
            amount: invoice.total.clone(),
            currency: invoice.currency.clone(),
            payment_method_id: card,
            idempotency_key: key(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .payment
        .unwrap();
    assert_eq!(payment.status, i32::from(payments_pb::PaymentStatus::Succeeded));
    let paid = billing
        .invoicing_as_service()
        .await
        .mark_invoice_paid(invoicing_pb::MarkInvoicePaidRequest {
            invoice_id: invoice.id.clone(),
            payment_reference: payment.id.clone(),
        })
        .await
        .unwrap()
        .into_inner()
        .invoice
        .unwrap();
    assert_eq!(paid.status, i32::from(invoicing_pb::InvoiceStatus::Paid));
    assert_eq!(paid.payment_reference, payment.id);
    billing.stop().await;
}

async fn payments_killed_mid_stream_never_charge_twice(backend: Backend) {
    let Some(mut billing) = Billing::start(backend).await else {
        return;
    };
    let wallet = client(billing.processes[0].address(), &billing.api_key).await;
    let account = open_funded_account(&wallet, "0").await;
    let mut payments = billing.payments().await;
    let card = add_card(&mut payments, &account.id, "tok_succeed").await;
    // Each charge pays an open invoice of its own amount.
    let mut invoicing = billing.invoicing().await;
    let mut invoices = Vec::new();
    for number in 0..400 {
        invoices.push(open_invoice(&mut invoicing, &account.id, &format!("{}", number + 1)).await.id);
    }
    let request = |number: usize| payments_pb::ChargeRequest {
        account_id: account.id.clone(),
        invoice_id: invoices[number].clone(),
        amount: format!("{}.00", number + 1),
        currency: "USD".into(),
        payment_method_id: card.clone(),
        idempotency_key: key(),
        ..Default::default()
    };
    let requests: Vec<payments_pb::ChargeRequest> = (0..400).map(request).collect();
    let acknowledged: Arc<Mutex<HashMap<String, payments_pb::Payment>>> = Arc::default();
    let sender = {
        let (requests, acknowledged, mut payments) = (requests.clone(), acknowledged.clone(), payments.clone());
        tokio::spawn(async move {
            for request in requests {
                match payments.charge(request.clone()).await {
                    Ok(response) => {
                        acknowledged
                            .lock()
                            .unwrap()
                            .insert(request.idempotency_key, response.into_inner().payment.unwrap());
                    }
                    Err(_) => return,
                }
            }
        })
    };
    for _ in 0..400 {
        if acknowledged.lock().unwrap().len() >= 40 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    billing.processes[3].kill().await;
    sender.await.unwrap();
    billing.processes[3].start(&billing.environment).await;
    let mut payments = billing.payments().await;
    let acknowledged = acknowledged.lock().unwrap().clone();
    assert!(!acknowledged.is_empty() && acknowledged.len() < requests.len(), "killed mid-stream");
    for request in &requests {
        let payment = payments.charge(request.clone()).await.unwrap().into_inner().payment.unwrap();
        assert_eq!(payment.status, i32::from(payments_pb::PaymentStatus::Succeeded), "{payment:?}");
        if let Some(before) = acknowledged.get(&request.idempotency_key) {
            assert_eq!(payment.id, before.id, "an acknowledged charge is answered as it was");
            assert_eq!(payment.gateway_reference, before.gateway_reference);
        }
        let references: std::collections::BTreeSet<&str> = payment
            .attempts
            .iter()
            .filter(|attempt| attempt.outcome == i32::from(payments_pb::AttemptOutcome::Succeeded))
            .map(|attempt| attempt.gateway_reference.as_str())
            .collect();
        assert_eq!(references.len(), 1, "one charge at the gateway, however often attempted: {payment:?}");
    }
    billing.stop().await;
}

reservoir_testing::each_backend!(a_top_up_is_invoiced_charged_and_paid, payments_killed_mid_stream_never_charge_twice,);
