//! The five services as `reservoir serve` processes: top-ups by hand,
//! declined, reconciled later, automatic (FIXED and TO_TARGET, paused after
//! declines, held to a daily limit), recurring across a restart, and the
//! orchestrator crashed just before and just after every saga step, bonuses
//! clawed back on refund. The suite and what the flows share are here;
//! `by_hand`, `automatic`, `crashes`, `bonuses` and `commands` hold the flows.

use std::time::Duration;

use reservoir_proto::invoicing as invoicing_pb;
use reservoir_proto::invoicing::invoicing_service_client::InvoicingServiceClient;
use reservoir_proto::orchestrator as pb;
use reservoir_proto::orchestrator::top_up_service_client::TopUpServiceClient;
use reservoir_proto::payments as payments_pb;
use reservoir_proto::payments::payments_service_client::PaymentsServiceClient;
use reservoir_proto::wallet as wallet_pb;
use reservoir_testing::wallet::*;
use reservoir_testing::{Backend, BearerKey, TestDatabase};
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;

use crate::process::{Environment, ServiceProcess};

mod automatic;
mod bonuses;
mod by_hand;
mod commands;
mod crashes;
mod fraud;

type Orchestrator = TopUpServiceClient<InterceptedService<Channel, BearerKey>>;
type Invoicing = InvoicingServiceClient<InterceptedService<Channel, BearerKey>>;
type Payments = PaymentsServiceClient<InterceptedService<Channel, BearerKey>>;

struct Suite {
    environment: Environment,
    processes: Vec<ServiceProcess>,
    api_key: String,
    wallet: Client,
    invoicing: Invoicing,
    payments: Payments,
    databases: Vec<TestDatabase>,
}

const ORCHESTRATOR: usize = 4;

impl Suite {
    async fn start(backend: Backend) -> Option<Self> {
        let mut databases = Vec::new();
        for _ in 0..5 {
            databases.push(TestDatabase::create(backend).await?);
        }
        let mut environment = Environment::new(&databases[0], Some(&databases[1]))
            .with_billing(&databases[2], &databases[3])
            .with_orchestrator(&databases[4]);
        let api_key = environment.create_tenant().await;
        environment.issue_service_key().await;
        let mut processes = vec![
            ServiceProcess::wallet(&environment),
            ServiceProcess::metering(&environment),
            ServiceProcess::invoicing(&environment),
            ServiceProcess::payments(&environment),
            ServiceProcess::orchestrator(&environment),
        ];
        for process in &mut processes {
            process.start(&environment).await;
        }
        let wallet = client(processes[0].address(), &api_key).await;
        let invoicing =
            InvoicingServiceClient::with_interceptor(channel(processes[2].address()).await, BearerKey::new(&api_key));
        let payments =
            PaymentsServiceClient::with_interceptor(channel(processes[3].address()).await, BearerKey::new(&api_key));
        Some(Self { environment, processes, api_key, wallet, invoicing, payments, databases })
    }

    async fn orchestrator(&self) -> Orchestrator {
        TopUpServiceClient::with_interceptor(
            channel(self.processes[ORCHESTRATOR].address()).await,
            BearerKey::new(&self.api_key),
        )
    }

    /// Restarts the orchestrator with `crash_at` ("" for none), on a new
    /// address: another test's process may have taken the old port.
    async fn restart_orchestrator(&mut self, crash_at: &str) {
        if self.processes[ORCHESTRATOR].is_running() {
            assert!(self.processes[ORCHESTRATOR].terminate().await.success());
        }
        self.environment.set("RESERVOIR__ORCHESTRATOR__CRASH_AT", crash_at);
        self.environment.move_orchestrator();
        self.processes[ORCHESTRATOR] = ServiceProcess::orchestrator(&self.environment);
        self.processes[ORCHESTRATOR].start(&self.environment).await;
    }

    async fn stop(mut self) {
        for process in self.processes.iter_mut().rev() {
            if process.is_running() {
                assert!(process.terminate().await.success(), "a clean exit on SIGTERM");
            }
        }
        for database in self.databases {
            database.drop_database().await;
        }
    }

    async fn card(&self, account: &wallet_pb::Account, token: &str) -> String {
        self.payments
            .clone()
            .add_payment_method(payments_pb::AddPaymentMethodRequest {
                account_id: account.id.clone(),
                kind: payments_pb::PaymentMethodKind::Card.into(),
                gateway_token: token.into(),
                label: token.into(),
                idempotency_key: key(),
            })
            .await
            .unwrap()
            .into_inner()
            .payment_method
            .unwrap()
            .id
    }

    async fn top_ups(&self, account: &wallet_pb::Account) -> Vec<pb::TopUp> {
        self.orchestrator()
            .await
            .list_top_ups(pb::ListTopUpsRequest { account_id: account.id.clone(), ..Default::default() })
            .await
            .unwrap()
            .into_inner()
            .top_ups
    }

    async fn invoice(&self, id: &str) -> invoicing_pb::Invoice {
        self.invoicing
            .clone()
            .get_invoice(invoicing_pb::GetInvoiceRequest { invoice_id: id.into() })
            .await
            .unwrap()
            .into_inner()
            .invoice
            .unwrap()
    }

    async fn payments_of(&self, account: &wallet_pb::Account) -> Vec<payments_pb::Payment> {
        self.payments
            .clone()
            .list_payments(payments_pb::ListPaymentsRequest { account_id: account.id.clone(), ..Default::default() })
            .await
            .unwrap()
            .into_inner()
            .payments
    }

    async fn grants_from(&self, account: &wallet_pb::Account, reference: &str) -> Vec<wallet_pb::Grant> {
        self.wallet
            .clone()
            .list_grants(wallet_pb::ListGrantsRequest { account_id: account.id.clone(), include_inactive: true })
            .await
            .unwrap()
            .into_inner()
            .grants
            .into_iter()
            .filter(|grant| grant.source_reference == reference)
            .collect()
    }

    async fn debit(&self, account: &wallet_pb::Account, amount: &str) {
        self.wallet
            .clone()
            .debit(wallet_pb::DebitRequest {
                account_id: account.id.clone(),
                amount: amount.into(),
                idempotency_key: key(),
                ..Default::default()
            })
            .await
            .unwrap();
    }

    async fn grant(&self, account: &wallet_pb::Account, amount: &str) {
        self.wallet
            .clone()
            .grant_credits(wallet_pb::GrantCreditsRequest {
                account_id: account.id.clone(),
                amount: amount.into(),
                kind: wallet_pb::GrantKind::Courtesy.into(),
                idempotency_key: key(),
                ..Default::default()
            })
            .await
            .unwrap();
    }
}

fn start(account: &wallet_pb::Account, credits: &str, method: &str) -> pb::StartTopUpRequest {
    pb::StartTopUpRequest {
        account_id: account.id.clone(),
        credits: credits.into(),
        payment_method_id: method.into(),
        reconcile_later: method.is_empty(),
        idempotency_key: key(),
        credits_expire_at: None,
        bonus: None,
    }
}

fn status(top_up: &pb::TopUp) -> pb::TopUpStatus {
    pb::TopUpStatus::try_from(top_up.status).unwrap()
}

/// Waits up to 20 s for `check` to hold.
async fn eventually<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    for _ in 0..200 {
        if check().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("{what} did not happen within 20 s");
}

/// Every top-up of the account ended (SUCCEEDED or FAILED), each with at
/// most one successful charge, each successful charge with exactly one
/// grant, and no invoice both void and paid.
async fn assert_settled_once(suite: &Suite, account: &wallet_pb::Account) {
    for top_up in suite.top_ups(account).await {
        let status = status(&top_up);
        assert!(matches!(status, pb::TopUpStatus::Succeeded | pb::TopUpStatus::Failed), "{top_up:?}");
        let payments: Vec<_> = suite
            .payments_of(account)
            .await
            .into_iter()
            .filter(|payment| payment.invoice_id == top_up.invoice_id)
            .collect();
        let succeeded: Vec<_> = payments
            .iter()
            .filter(|payment| payment.status == i32::from(payments_pb::PaymentStatus::Succeeded))
            .collect();
        assert!(succeeded.len() <= 1, "one successful charge at most: {payments:?}");
        // A payment confirmed by hand never went through the gateway.
        for payment in succeeded.iter().filter(|payment| !payment.attempts.is_empty()) {
            let references: std::collections::BTreeSet<_> = payment
                .attempts
                .iter()
                .filter(|attempt| attempt.outcome == i32::from(payments_pb::AttemptOutcome::Succeeded))
                .map(|attempt| attempt.gateway_reference.clone())
                .collect();
            assert_eq!(references.len(), 1, "one charge at the gateway: {payment:?}");
        }
        let grants = suite.grants_from(account, &top_up.invoice_id).await;
        assert_eq!(grants.len(), succeeded.len(), "a grant for each successful charge: {top_up:?}");
        if !top_up.invoice_id.is_empty() {
            let invoice = suite.invoice(&top_up.invoice_id).await;
            let invoice_status = invoicing_pb::InvoiceStatus::try_from(invoice.status).unwrap();
            match status {
                pb::TopUpStatus::Succeeded => assert_eq!(invoice_status, invoicing_pb::InvoiceStatus::Paid),
                _ => assert_eq!(invoice_status, invoicing_pb::InvoiceStatus::Void),
            }
            assert!(
                invoice_status != invoicing_pb::InvoiceStatus::Void || invoice.payment_reference.is_empty(),
                "no invoice is both void and paid"
            );
        }
    }
    assert_books_balance(&suite.wallet, account).await;
}

async fn configure_auto(
    orchestrator: &mut Orchestrator,
    account: &wallet_pb::Account,
    method: &str,
    threshold: &str,
    fixed: &str,
    target: &str,
    per_day: u32,
) {
    orchestrator
        .configure_auto_replenish(pb::ConfigureAutoReplenishRequest {
            auto_replenish: Some(pb::AutoReplenish {
                account_id: account.id.clone(),
                threshold: threshold.into(),
                fixed_amount: fixed.into(),
                target_balance: target.into(),
                payment_method_id: method.into(),
                max_top_ups_per_day: per_day,
                ..Default::default()
            }),
        })
        .await
        .unwrap();
}
