//! The five services as `reservoir serve` processes: top-ups by hand,
//! declined, reconciled later, automatic (FIXED and TO_TARGET, paused after
//! declines, held to a daily limit), recurring across a restart, and the
//! orchestrator crashed just before and just after every saga step.

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

async fn top_ups_by_hand(backend: Backend) {
    let Some(mut suite) = Suite::start(backend).await else {
        return;
    };
    // A known address for the orchestrator's scrape endpoint (the others
    // pick any free port).
    let orchestrator_metrics = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    suite.environment.set("RESERVOIR__ORCHESTRATOR__METRICS_LISTEN", &orchestrator_metrics.to_string());
    suite.restart_orchestrator("").await;
    let mut orchestrator = suite.orchestrator().await;
    let account = open_funded_account(&suite.wallet, "0").await;

    // Paid by card: invoice PAID, payment SUCCEEDED, one PAID grant, balance up.
    let card = suite.card(&account, "tok_succeed").await;
    let request = start(&account, "50", &card);
    let top_up = orchestrator.start_top_up(request.clone()).await.unwrap().into_inner().top_up.unwrap();
    assert_eq!(status(&top_up), pb::TopUpStatus::Succeeded, "{top_up:?}");
    let invoice = suite.invoice(&top_up.invoice_id).await;
    assert_eq!(invoice.status, i32::from(invoicing_pb::InvoiceStatus::Paid));
    assert_eq!(invoice.payment_reference, top_up.payment_id);
    let grants = suite.grants_from(&account, &top_up.invoice_id).await;
    assert_eq!(grants.len(), 1);
    assert_eq!(grants[0].kind, i32::from(wallet_pb::GrantKind::Paid));
    assert_eq!(grants[0].id, top_up.grant_id);
    assert_eq!(available(&suite.wallet, &account).await, d("50"));
    let steps: Vec<i32> = top_up
        .steps
        .iter()
        .filter(|line| line.outcome == i32::from(pb::StepOutcome::Succeeded))
        .map(|line| line.step)
        .collect();
    let expected: Vec<i32> = [pb::Step::CreateInvoice, pb::Step::Charge, pb::Step::Grant, pb::Step::MarkPaid]
        .into_iter()
        .map(i32::from)
        .collect();
    assert_eq!(steps, expected);
    let again = orchestrator.start_top_up(request.clone()).await.unwrap().into_inner().top_up.unwrap();
    assert_eq!(again.id, top_up.id, "the same key answers the same top-up");
    let mut changed = request.clone();
    changed.credits = "60".into();
    assert_refused(orchestrator.start_top_up(changed).await, tonic::Code::AlreadyExists, "IDEMPOTENCY_KEY_REUSED");

    // The operator command starts one and lists them.
    let endpoint = format!("http://{}", suite.processes[ORCHESTRATOR].address());
    let command = |arguments: &[&str]| {
        let mut command = suite.environment.command(arguments);
        command.env("RESERVOIR_API_KEY", &suite.api_key).env("RESERVOIR_ORCHESTRATOR_ENDPOINT", &endpoint);
        command
    };
    let started = command(&["top-up", "start", &account.id, "5", "--payment-method", &card]).output().await.unwrap();
    assert!(started.status.success(), "{}", String::from_utf8_lossy(&started.stderr));
    assert!(String::from_utf8_lossy(&started.stdout).contains("SUCCEEDED"));
    let listed = command(&["top-up", "list", "--account", &account.id, "--json"]).output().await.unwrap();
    let listed: serde_json::Value = serde_json::from_slice(&listed.stdout).unwrap();
    assert_eq!(listed.as_array().map(Vec::len), Some(2));
    assert_eq!(available(&suite.wallet, &account).await, d("55"));

    // The operator's reports: the refill history shows both top-ups' credits,
    // and this month's statement closes at the balance.
    let wallet_endpoint = format!("http://{}", suite.processes[0].address());
    let report = |arguments: &[&str]| {
        let mut command = suite.environment.command(arguments);
        command.env("RESERVOIR_API_KEY", &suite.api_key).env("RESERVOIR_ENDPOINT", &wallet_endpoint);
        command
    };
    let refills = report(&["report", "refills", &account.id]).output().await.unwrap();
    assert!(refills.status.success(), "{}", String::from_utf8_lossy(&refills.stderr));
    let refills = String::from_utf8_lossy(&refills.stdout).into_owned();
    assert!(refills.starts_with("type,date,amount,balance_after"), "{refills}");
    assert_eq!(refills.lines().filter(|line| line.starts_with("GRANT,")).count(), 2, "{refills}");
    let from = (chrono::Utc::now() - chrono::Duration::days(1)).format("%Y-%m-%d").to_string();
    let to = (chrono::Utc::now() + chrono::Duration::days(1)).format("%Y-%m-%d").to_string();
    let statement = report(&["report", "statement", &account.id, "--from", &from, "--to", &to]).output().await.unwrap();
    assert!(statement.status.success(), "{}", String::from_utf8_lossy(&statement.stderr));
    let statement = String::from_utf8_lossy(&statement.stdout).into_owned();
    assert!(statement.lines().any(|line| line.starts_with("CLOSING,") && line.contains(",55.00,")), "{statement}");

    // How the account pays and what it was billed, through the CLI too: a
    // card added and listed, and the two top-ups' invoices, paid.
    let billing = |arguments: &[&str]| {
        let mut command = suite.environment.command(arguments);
        command
            .env("RESERVOIR_API_KEY", &suite.api_key)
            .env("RESERVOIR_PAYMENTS_ENDPOINT", format!("http://{}", suite.processes[3].address()))
            .env("RESERVOIR_INVOICING_ENDPOINT", format!("http://{}", suite.processes[2].address()));
        command
    };
    let json_of = |output: std::process::Output| -> serde_json::Value {
        assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
        serde_json::from_slice(&output.stdout).unwrap()
    };
    let add = ["payment-method", "add", &account.id, "--token", "tok_succeed", "--label", "Visa 4242", "--json"];
    let added = json_of(billing(&add).output().await.unwrap());
    assert_eq!((added[0]["kind"].as_str(), added[0]["label"].as_str()), (Some("CARD"), Some("Visa 4242")), "{added}");
    let methods = json_of(billing(&["payment-method", "list", &account.id, "--json"]).output().await.unwrap());
    let ids: Vec<&str> = methods.as_array().unwrap().iter().filter_map(|method| method["id"].as_str()).collect();
    assert!(ids.contains(&added[0]["id"].as_str().unwrap()) && ids.contains(&card.as_str()), "{methods}");
    let invoices = json_of(billing(&["invoice", "list", "--account", &account.id, "--json"]).output().await.unwrap());
    let invoices = invoices.as_array().unwrap();
    assert_eq!(invoices.len(), 2, "{invoices:?}");
    for invoice in invoices {
        assert_eq!((invoice["kind"].as_str(), invoice["status"].as_str()), (Some("TOP_UP"), Some("PAID")), "{invoice}");
        assert_eq!(invoice["amount_due"], "0.00", "{invoice}");
    }
    let shown = billing(&["invoice", "show", invoices[0]["id"].as_str().unwrap()]).output().await.unwrap();
    assert!(shown.status.success(), "{}", String::from_utf8_lossy(&shown.stderr));
    let shown = String::from_utf8_lossy(&shown.stdout).into_owned();
    assert!(shown.contains("PAID") && shown.contains(invoices[0]["total"].as_str().unwrap()), "{shown}");

    // A gateway failing transiently twice: the saga retries the charge with
    // backoff and with the same key, so the card is charged once.
    let flaky = suite.card(&account, "tok_fail_2").await;
    let retried = orchestrator.start_top_up(start(&account, "1", &flaky)).await.unwrap().into_inner().top_up.unwrap();
    assert_eq!(status(&retried), pb::TopUpStatus::Pending, "{retried:?}");
    let retried_id = retried.id.clone();
    eventually("the retried charge", || {
        let mut orchestrator = orchestrator.clone();
        let id = retried_id.clone();
        async move {
            let top_up = orchestrator.get_top_up(pb::GetTopUpRequest { top_up_id: id }).await.unwrap().into_inner();
            top_up.top_up.is_some_and(|top_up| status(&top_up) == pb::TopUpStatus::Succeeded)
        }
    })
    .await;
    let flaky_payment: Vec<_> = suite
        .payments_of(&account)
        .await
        .into_iter()
        .filter(|payment| payment.invoice_id == retried.invoice_id)
        .collect();
    assert_eq!(flaky_payment.len(), 1);
    assert_eq!(flaky_payment[0].attempts.len(), 3, "two failures, then the charge");
    assert_eq!(available(&suite.wallet, &account).await, d("56"));

    // Declined: the invoice is voided, nothing is granted.
    let declining = suite.card(&account, "tok_decline").await;
    let declined =
        orchestrator.start_top_up(start(&account, "30", &declining)).await.unwrap().into_inner().top_up.unwrap();
    assert_eq!(status(&declined), pb::TopUpStatus::Failed);
    assert!(declined.reason.starts_with("DECLINED"), "{}", declined.reason);
    assert_eq!(suite.invoice(&declined.invoice_id).await.status, i32::from(invoicing_pb::InvoiceStatus::Void));
    assert!(suite.grants_from(&account, &declined.invoice_id).await.is_empty());
    assert_eq!(available(&suite.wallet, &account).await, d("56"));

    // Reconciled later: waits for a person, then is credited once confirmed.
    let later = orchestrator.start_top_up(start(&account, "20", "")).await.unwrap().into_inner().top_up.unwrap();
    assert_eq!(status(&later), pb::TopUpStatus::RequiresAction);
    let waiting = orchestrator
        .list_top_ups(pb::ListTopUpsRequest {
            account_id: account.id.clone(),
            status: pb::TopUpStatus::RequiresAction.into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .top_ups;
    assert_eq!(waiting.iter().map(|top_up| top_up.id.clone()).collect::<Vec<_>>(), vec![later.id.clone()]);
    // Confirming a payment received by bank transfer takes the services' key.
    let tenant = Environment::tenant_of(suite.processes[0].address(), &suite.api_key).await;
    PaymentsServiceClient::with_interceptor(
        channel(suite.processes[3].address()).await,
        BearerKey::service(&suite.environment.service_key(), tenant),
    )
    .confirm_payment(payments_pb::ConfirmPaymentRequest {
        payment_id: later.payment_id.clone(),
        external_transaction_id: "bank-transfer-42".into(),
    })
    .await
    .unwrap();
    let id = later.id.clone();
    eventually("the confirmed top-up", || {
        let mut orchestrator = orchestrator.clone();
        let id = id.clone();
        async move {
            let top_up = orchestrator.get_top_up(pb::GetTopUpRequest { top_up_id: id }).await.unwrap().into_inner();
            top_up.top_up.is_some_and(|top_up| status(&top_up) == pb::TopUpStatus::Succeeded)
        }
    })
    .await;
    assert_eq!(available(&suite.wallet, &account).await, d("76"));
    assert_settled_once(&suite, &account).await;

    // A voucher: its value is granted once, however often it is redeemed.
    let batch = suite
        .payments
        .clone()
        .create_voucher_batch(payments_pb::CreateVoucherBatchRequest {
            count: 1,
            value: "15".into(),
            unit_code: "USD".into(),
            expires_at: None,
            idempotency_key: key(),
        })
        .await
        .unwrap()
        .into_inner();
    let redeem = pb::RedeemVoucherRequest { code: batch.codes[0].clone(), account_id: account.id.clone() };
    let redeemed = orchestrator.redeem_voucher(redeem.clone()).await.unwrap().into_inner().top_up.unwrap();
    assert_eq!(status(&redeemed), pb::TopUpStatus::Succeeded, "{redeemed:?}");
    assert_eq!((redeemed.trigger, redeemed.credits.as_str()), (i32::from(pb::TopUpTrigger::Voucher), "15"));
    let again = orchestrator.redeem_voucher(redeem.clone()).await.unwrap().into_inner().top_up.unwrap();
    assert_eq!(again.grant_id, redeemed.grant_id, "the same grant, not a second one");
    assert_eq!(again.id, redeemed.id, "the first top-up, not a second one");
    // Typed as a person might, it is the same redemption.
    let typed = pb::RedeemVoucherRequest { code: redeem.code.to_lowercase().replace('-', " "), ..redeem.clone() };
    let typed = orchestrator.redeem_voucher(typed).await.unwrap().into_inner().top_up.unwrap();
    assert_eq!(typed.id, redeemed.id);
    assert_eq!(available(&suite.wallet, &account).await, d("91"));
    let voucher_grants = suite.grants_from(&account, &redeemed.voucher_id).await;
    assert_eq!(voucher_grants.len(), 1);
    assert_eq!(voucher_grants[0].source, i32::from(wallet_pb::GrantSource::Voucher));
    // A voucher for another unit is refused and stays unredeemed.
    let second_batch = suite
        .payments
        .clone()
        .create_voucher_batch(payments_pb::CreateVoucherBatchRequest {
            count: 1,
            value: "5".into(),
            unit_code: "USD".into(),
            expires_at: None,
            idempotency_key: key(),
        })
        .await
        .unwrap()
        .into_inner();
    let in_euros = suite
        .wallet
        .clone()
        .create_account(wallet_pb::CreateAccountRequest {
            external_id: key(),
            unit: Some(wallet_pb::Unit { code: "EUR".into(), ..Default::default() }),
            overdraft_policy: wallet_pb::OverdraftPolicy::None.into(),
            idempotency_key: key(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .account
        .unwrap();
    let mismatch = orchestrator
        .redeem_voucher(pb::RedeemVoucherRequest {
            code: second_batch.codes[0].clone(),
            account_id: in_euros.id.clone(),
        })
        .await;
    assert_refused(mismatch, tonic::Code::FailedPrecondition, "VOUCHER_UNIT_MISMATCH");
    let other = open_funded_account(&suite.wallet, "0").await;
    let still_good = orchestrator
        .redeem_voucher(pb::RedeemVoucherRequest { code: second_batch.codes[0].clone(), account_id: other.id.clone() })
        .await
        .unwrap()
        .into_inner()
        .top_up
        .unwrap();
    assert_eq!(status(&still_good), pb::TopUpStatus::Succeeded);
    assert_eq!(available(&suite.wallet, &other).await, d("5"));
    let taken = orchestrator
        .redeem_voucher(pb::RedeemVoucherRequest { code: batch.codes[0].clone(), account_id: other.id.clone() })
        .await;
    assert_refused(taken, tonic::Code::FailedPrecondition, "VOUCHER_ALREADY_REDEEMED");
    let wrong = orchestrator
        .redeem_voucher(pb::RedeemVoucherRequest { code: "0000-0000-0000-0000-0".into(), account_id: other.id.clone() })
        .await;
    assert_eq!(wrong.unwrap_err().code(), tonic::Code::NotFound);
    // A code that cannot be one (too short, its check character wrong) is
    // refused as the caller's mistake, naming the field.
    let malformed = orchestrator
        .redeem_voucher(pb::RedeemVoucherRequest { code: "1234".into(), account_id: other.id.clone() })
        .await
        .unwrap_err();
    assert_eq!(malformed.code(), tonic::Code::InvalidArgument, "{malformed:?}");
    assert_eq!(reservoir_common::status::violated_fields(&malformed), ["code"]);
    assert_eq!(available(&suite.wallet, &other).await, d("5"));

    // The scrape endpoint counts the top-ups by trigger and outcome.
    let text = crate::process::scrape(orchestrator_metrics).await;
    let value = |name: &str, labels: &[&str]| -> f64 {
        text.lines()
            .filter(|line| line.starts_with(name) && labels.iter().all(|label| line.contains(label)))
            .map(|line| line.rsplit(' ').next().unwrap().parse::<f64>().unwrap())
            .sum()
    };
    let ended = "reservoir_orchestrator_top_ups_ended_total";
    assert_eq!(value(ended, &[r#"trigger="MANUAL""#, r#"status="SUCCEEDED""#]), 4.0, "{text}");
    assert_eq!(value(ended, &[r#"trigger="MANUAL""#, r#"status="FAILED""#]), 1.0, "{text}");
    assert!(value(ended, &[r#"trigger="VOUCHER""#, r#"status="SUCCEEDED""#]) >= 2.0, "{text}");
    assert!(value("reservoir_orchestrator_top_ups_started_total", &[r#"trigger="MANUAL""#]) >= 5.0, "{text}");
    assert!(value("reservoir_rpc_requests_total", &[r#"method="StartTopUp""#, r#"code="Ok""#]) >= 4.0, "{text}");
    assert!(text.contains("reservoir_orchestrator_top_ups_in_flight"), "{text}");
    suite.stop().await;
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

async fn automatic_top_ups(backend: Backend) {
    let Some(suite) = Suite::start(backend).await else {
        return;
    };
    let mut orchestrator = suite.orchestrator().await;
    let mut metering = crate::metering::metering_client(suite.processes[1].address(), &suite.api_key).await;
    crate::metering::price_tokens(&mut metering).await;
    let ingest = |account: &wallet_pb::Account, tokens: &str| {
        let mut metering = metering.clone();
        let event = reservoir_proto::metering::UsageEvent {
            event_id: key(),
            account_id: account.id.clone(),
            meter_code: "tokens".into(),
            quantity: tokens.into(),
            ..Default::default()
        };
        async move {
            metering
                .ingest_events(reservoir_proto::metering::IngestEventsRequest {
                    events: vec![event],
                    asynchronous: false,
                })
                .await
                .unwrap();
        }
    };

    // FIXED: metered usage takes 100 down to 15, below 20: 50 are added.
    let fixed = open_funded_account(&suite.wallet, "100").await;
    let card = suite.card(&fixed, "tok_succeed").await;
    configure_auto(&mut orchestrator, &fixed, &card, "20", "50", "", 5).await;
    ingest(&fixed, "8500").await;
    eventually("the FIXED top-up", || async { available(&suite.wallet, &fixed).await == d("65") }).await;
    // The operator's usage report for the day shows what was metered.
    let metering_endpoint = format!("http://{}", suite.processes[1].address());
    let from = chrono::Utc::now().format("%Y-%m-%d").to_string();
    let to = (chrono::Utc::now() + chrono::Duration::days(1)).format("%Y-%m-%d").to_string();
    let mut usage =
        suite.environment.command(&["report", "usage", &fixed.id, "--from", &from, "--to", &to, "--group-by", "day"]);
    usage.env("RESERVOIR_API_KEY", &suite.api_key).env("RESERVOIR_METERING_ENDPOINT", &metering_endpoint);
    let usage = usage.output().await.unwrap();
    assert!(usage.status.success(), "{}", String::from_utf8_lossy(&usage.stderr));
    let usage = String::from_utf8_lossy(&usage.stdout).into_owned();
    assert!(usage.lines().any(|line| line.contains(",tokens,,8500,85,")), "{usage}");

    // TO_TARGET: from 10 back up to 100.
    let target = open_funded_account(&suite.wallet, "100").await;
    let card = suite.card(&target, "tok_succeed").await;
    configure_auto(&mut orchestrator, &target, &card, "20", "", "100", 5).await;
    ingest(&target, "9000").await;
    eventually("the TO_TARGET top-up", || async { available(&suite.wallet, &target).await == d("100") }).await;
    let top_ups = suite.top_ups(&target).await;
    assert_eq!(top_ups.len(), 1);
    assert_eq!((top_ups[0].credits.as_str(), top_ups[0].trigger), ("90", i32::from(pb::TopUpTrigger::AutoReplenish)));

    // Disabled, a dip below the threshold starts nothing.
    let disabled = open_funded_account(&suite.wallet, "30").await;
    let card = suite.card(&disabled, "tok_succeed").await;
    configure_auto(&mut orchestrator, &disabled, &card, "20", "10", "", 5).await;
    orchestrator
        .disable_auto_replenish(pb::DisableAutoReplenishRequest { account_id: disabled.id.clone() })
        .await
        .unwrap();
    suite.debit(&disabled, "15").await;

    // A top-up too small to lift the balance above the threshold is
    // followed by another: 30 - 25 = 5, + 10 = 15, + 10 = 25.
    let short = open_funded_account(&suite.wallet, "30").await;
    let card = suite.card(&short, "tok_succeed").await;
    configure_auto(&mut orchestrator, &short, &card, "20", "10", "", 5).await;
    suite.debit(&short, "25").await;
    eventually("the second top-up", || async { available(&suite.wallet, &short).await == d("25") }).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(suite.top_ups(&short).await.len(), 2);
    assert_eq!(available(&suite.wallet, &short).await, d("25"));

    // A declining card: three declines in a row pause auto-replenish.
    let declining = open_funded_account(&suite.wallet, "30").await;
    let card = suite.card(&declining, "tok_decline").await;
    configure_auto(&mut orchestrator, &declining, &card, "20", "10", "", 10).await;
    for crossing in 1..=4_usize {
        suite.debit(&declining, "15").await;
        let expected = crossing.min(3);
        eventually("the declined top-up", || async {
            let top_ups = suite.top_ups(&declining).await;
            top_ups.len() == expected && top_ups.iter().all(|top_up| status(top_up) == pb::TopUpStatus::Failed)
        })
        .await;
        // Back above the threshold for the next crossing.
        suite.grant(&declining, "15").await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(suite.top_ups(&declining).await.len(), 3, "paused: no fourth charge");
    let config = orchestrator
        .get_auto_replenish(pb::GetAutoReplenishRequest { account_id: declining.id.clone() })
        .await
        .unwrap()
        .into_inner()
        .auto_replenish
        .unwrap();
    assert!(config.paused);
    assert_eq!(config.consecutive_declines, 3);

    // The daily limit: two a day, however often the balance dips.
    let limited = open_funded_account(&suite.wallet, "30").await;
    let card = suite.card(&limited, "tok_succeed").await;
    configure_auto(&mut orchestrator, &limited, &card, "20", "10", "", 2).await;
    for crossing in 1..=3_usize {
        suite.debit(&limited, "15").await;
        let expected = crossing.min(2);
        eventually("the limited top-up", || async {
            let top_ups = suite.top_ups(&limited).await;
            top_ups.len() == expected && top_ups.iter().all(|top_up| status(top_up) == pb::TopUpStatus::Succeeded)
        })
        .await;
        // Well above the threshold again for the next crossing.
        suite.grant(&limited, "5").await;
    }
    let events: Vec<pb::Event> = {
        let mut stream =
            orchestrator.watch_events(pb::WatchEventsRequest { after_sequence: 0 }).await.unwrap().into_inner();
        let mut events = Vec::new();
        while let Ok(Ok(Some(message))) = tokio::time::timeout(Duration::from_millis(500), stream.message()).await {
            events.extend(message.event);
        }
        events
    };
    let of = |account: &wallet_pb::Account, kind: pb::EventType| {
        events.iter().filter(|event| event.account_id == account.id && event.r#type == i32::from(kind)).count()
    };
    assert_eq!(of(&declining, pb::EventType::AutoReplenishPaused), 1);
    assert_eq!(of(&limited, pb::EventType::AutoReplenishLimited), 1);
    assert_eq!(of(&fixed, pb::EventType::TopUpSucceeded), 1);
    assert_eq!(suite.top_ups(&limited).await.len(), 2);
    assert!(suite.top_ups(&disabled).await.is_empty(), "disabled: no top-up");
    assert_eq!(available(&suite.wallet, &disabled).await, d("15"));
    for account in [&fixed, &target, &short, &declining, &limited] {
        assert_settled_once(&suite, account).await;
    }
    suite.stop().await;
}

async fn recurring_top_ups_fire_once_per_period_across_a_restart(backend: Backend) {
    let Some(mut suite) = Suite::start(backend).await else {
        return;
    };
    let mut orchestrator = suite.orchestrator().await;
    let account = open_funded_account(&suite.wallet, "0").await;
    let card = suite.card(&account, "tok_succeed").await;
    let configure = |first: chrono::DateTime<chrono::Utc>| pb::ConfigureRecurringTopUpRequest {
        recurring_top_up: Some(pb::RecurringTopUp {
            account_id: account.id.clone(),
            credits: "10".into(),
            interval: pb::Interval::Weekly.into(),
            mode: pb::RecurringMode::Paid.into(),
            payment_method_id: card.clone(),
            credits_expire_after_days: 30,
            next_run_at: Some(reservoir_common::time::to_timestamp(first)),
            ..Default::default()
        }),
    };
    // Three weeks missed while nothing ran: one top-up, not three. The
    // hour keeps the fourth period off `now` itself: a worker pass that
    // began a moment before `now` would rightly see that period as still
    // to come, and fire it once it came, a second top-up for a period of
    // its own (seen once in make test under load).
    let now = chrono::Utc::now();
    let first_due = now - chrono::Duration::days(21) + chrono::Duration::hours(1);
    orchestrator.configure_recurring_top_up(configure(first_due)).await.unwrap();
    eventually("the first period", || async { available(&suite.wallet, &account).await == d("10") }).await;
    let schedule = orchestrator
        .get_recurring_top_up(pb::GetRecurringTopUpRequest { account_id: account.id.clone() })
        .await
        .unwrap()
        .into_inner()
        .recurring_top_up
        .unwrap();
    assert_eq!(schedule.runs, 1);
    let next = reservoir_common::time::from_timestamp(schedule.next_run_at.as_ref().unwrap()).unwrap();
    assert!(next > now && next <= now + chrono::Duration::days(7), "the next period is within a week: {next}");

    // A restart fires nothing that already fired.
    suite.restart_orchestrator("").await;
    let mut orchestrator = suite.orchestrator().await;
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    assert_eq!(suite.top_ups(&account).await.len(), 1);
    // Nor does setting the schedule back to the period that fired: it moves on.
    orchestrator.configure_recurring_top_up(configure(first_due)).await.unwrap();
    eventually("the schedule moving on", || {
        let mut orchestrator = orchestrator.clone();
        let account_id = account.id.clone();
        async move {
            let schedule = orchestrator
                .get_recurring_top_up(pb::GetRecurringTopUpRequest { account_id })
                .await
                .unwrap()
                .into_inner()
                .recurring_top_up
                .unwrap();
            reservoir_common::time::from_timestamp(schedule.next_run_at.as_ref().unwrap()).unwrap() > now
        }
    })
    .await;
    assert_eq!(suite.top_ups(&account).await.len(), 1);

    // The next period comes due: it fires once more.
    orchestrator.configure_recurring_top_up(configure(chrono::Utc::now() - chrono::Duration::hours(1))).await.unwrap();
    eventually("the second period", || async { available(&suite.wallet, &account).await == d("20") }).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let top_ups = suite.top_ups(&account).await;
    assert_eq!(top_ups.len(), 2);
    assert!(top_ups.iter().all(|top_up| top_up.trigger == i32::from(pb::TopUpTrigger::Recurring)));
    assert!(top_ups.iter().all(|top_up| top_up.credits_expire_at.is_some()));
    assert_settled_once(&suite, &account).await;

    // A GRANTED allowance: free PROMOTIONAL credits, no invoice, no payment.
    let allowed = open_funded_account(&suite.wallet, "0").await;
    orchestrator
        .configure_recurring_top_up(pb::ConfigureRecurringTopUpRequest {
            recurring_top_up: Some(pb::RecurringTopUp {
                account_id: allowed.id.clone(),
                credits: "7".into(),
                interval: pb::Interval::Monthly.into(),
                mode: pb::RecurringMode::Granted.into(),
                next_run_at: Some(reservoir_common::time::to_timestamp(chrono::Utc::now())),
                ..Default::default()
            }),
        })
        .await
        .unwrap();
    eventually("the allowance", || async { available(&suite.wallet, &allowed).await == d("7") }).await;
    let allowance = suite.top_ups(&allowed).await;
    assert_eq!(allowance.len(), 1);
    assert!(allowance[0].invoice_id.is_empty() && allowance[0].payment_id.is_empty(), "{allowance:?}");
    assert!(suite.payments_of(&allowed).await.is_empty());
    let balance = balance(&suite.wallet, &allowed).await;
    assert_eq!(d(&balance.promotional), d("7"));

    // A monthly schedule first run on a 31st comes back to the 31st after
    // a shorter month, whatever ran in between.
    use chrono::Datelike;
    let mut anchor = (chrono::Utc::now() - chrono::Duration::days(40)).date_naive();
    while anchor.day() != 31 {
        anchor = anchor.pred_opt().unwrap();
    }
    let anchor = anchor.and_hms_opt(9, 0, 0).unwrap().and_utc();
    let monthly = open_funded_account(&suite.wallet, "0").await;
    orchestrator
        .configure_recurring_top_up(pb::ConfigureRecurringTopUpRequest {
            recurring_top_up: Some(pb::RecurringTopUp {
                account_id: monthly.id.clone(),
                credits: "3".into(),
                interval: pb::Interval::Monthly.into(),
                mode: pb::RecurringMode::Granted.into(),
                next_run_at: Some(reservoir_common::time::to_timestamp(anchor)),
                ..Default::default()
            }),
        })
        .await
        .unwrap();
    eventually("the monthly period", || async { available(&suite.wallet, &monthly).await == d("3") }).await;
    let schedule = orchestrator
        .get_recurring_top_up(pb::GetRecurringTopUpRequest { account_id: monthly.id.clone() })
        .await
        .unwrap()
        .into_inner()
        .recurring_top_up
        .unwrap();
    let next = reservoir_common::time::from_timestamp(schedule.next_run_at.as_ref().unwrap()).unwrap();
    let last_of_its_month = (next + chrono::Duration::days(1)).day() == 1;
    assert!(next.day() == 31 || last_of_its_month, "the anchor's day, or the month's last: {next} from {anchor}");
    assert_eq!(next.time(), anchor.time(), "{next}");
    assert!(next > chrono::Utc::now() && next <= chrono::Utc::now() + chrono::Duration::days(31), "{next}");
    suite.stop().await;
}

/// For every step, the orchestrator dies just before and just after it;
/// restarted without the fault, each top-up ends, charged at most once and
/// granted exactly once per successful charge.
async fn a_crash_at_any_step_loses_nothing_and_charges_once(backend: Backend) {
    let Some(mut suite) = Suite::start(backend).await else {
        return;
    };
    let points = [
        ("before:CREATE_INVOICE", "tok_succeed"),
        ("after:CREATE_INVOICE", "tok_succeed"),
        ("before:CHARGE", "tok_succeed"),
        ("after:CHARGE", "tok_succeed"),
        ("before:GRANT", "tok_succeed"),
        ("after:GRANT", "tok_succeed"),
        ("before:MARK_PAID", "tok_succeed"),
        ("after:MARK_PAID", "tok_succeed"),
        ("before:VOID_INVOICE", "tok_decline"),
        ("after:VOID_INVOICE", "tok_decline"),
    ];
    for (point, token) in points {
        let account = open_funded_account(&suite.wallet, "0").await;
        let card = suite.card(&account, token).await;
        suite.restart_orchestrator(point).await;
        let mut orchestrator = suite.orchestrator().await;
        let started = orchestrator.start_top_up(start(&account, "25", &card)).await;
        assert!(started.is_err(), "{point}: the orchestrator died mid-call");
        suite.processes[ORCHESTRATOR].reap().await;
        suite.restart_orchestrator("").await;
        let expected = if token == "tok_succeed" { pb::TopUpStatus::Succeeded } else { pb::TopUpStatus::Failed };
        eventually(point, || async {
            let top_ups = suite.top_ups(&account).await;
            top_ups.len() == 1 && status(&top_ups[0]) == expected
        })
        .await;
        let balance = if token == "tok_succeed" { "25" } else { "0" };
        assert_eq!(available(&suite.wallet, &account).await, d(balance), "{point}");
        assert_settled_once(&suite, &account).await;
    }
    suite.stop().await;
}

/// A grant the wallet refuses after the money was collected is never
/// dropped: past its attempts the top-up asks for a person, with an event,
/// and goes on being tried; the payment stays collected, the invoice open.
async fn a_refused_grant_after_a_charge_asks_for_a_person(backend: Backend) {
    let Some(mut suite) = Suite::start(backend).await else {
        return;
    };
    suite.environment.set("RESERVOIR__ORCHESTRATOR__ATTEMPTS_BEFORE_ACTION", "2");
    let account = open_funded_account(&suite.wallet, "0").await;
    let card = suite.card(&account, "tok_succeed").await;
    suite.restart_orchestrator("before:GRANT").await;
    let started = suite.orchestrator().await.start_top_up(start(&account, "25", &card)).await;
    assert!(started.is_err(), "the orchestrator died before the grant");
    suite.processes[ORCHESTRATOR].reap().await;
    // The account closes between the charge and the grant.
    suite
        .wallet
        .clone()
        .update_account(wallet_pb::UpdateAccountRequest {
            account_id: account.id.clone(),
            status: Some(wallet_pb::AccountStatus::Closed.into()),
            idempotency_key: key(),
            ..Default::default()
        })
        .await
        .unwrap();
    suite.restart_orchestrator("").await;
    eventually("the call for a person", || async {
        let top_ups = suite.top_ups(&account).await;
        top_ups.len() == 1 && status(&top_ups[0]) == pb::TopUpStatus::RequiresAction
    })
    .await;
    let top_up = suite.top_ups(&account).await.remove(0);
    assert_eq!(top_up.step, i32::from(pb::Step::Grant), "{top_up:?}");
    assert!(top_up.reason.contains("GRANT"), "{}", top_up.reason);
    // The attempt cut off by the crash counts: the second is past the budget.
    let retries = top_up.steps.iter().filter(|line| line.outcome == i32::from(pb::StepOutcome::Retrying)).count();
    assert_eq!(retries, 1, "{top_up:?}");
    // And it goes on being tried.
    eventually("another attempt", || async {
        let top_up = suite.top_ups(&account).await.remove(0);
        top_up.steps.iter().filter(|line| line.outcome == i32::from(pb::StepOutcome::Retrying)).count() >= 2
    })
    .await;
    let payments = suite.payments_of(&account).await;
    assert_eq!(payments.len(), 1);
    assert_eq!(payments[0].status, i32::from(payments_pb::PaymentStatus::Succeeded), "the money was collected once");
    assert_eq!(suite.invoice(&top_up.invoice_id).await.status, i32::from(invoicing_pb::InvoiceStatus::Open));
    assert!(suite.grants_from(&account, &top_up.invoice_id).await.is_empty());
    let mut events = suite
        .orchestrator()
        .await
        .watch_events(pb::WatchEventsRequest { after_sequence: 0 })
        .await
        .unwrap()
        .into_inner();
    let mut asked = false;
    while let Ok(Ok(Some(message))) = tokio::time::timeout(Duration::from_millis(500), events.message()).await {
        let event = message.event.unwrap();
        asked |= event.top_up_id == top_up.id && event.r#type == i32::from(pb::EventType::TopUpRequiresAction);
    }
    assert!(asked, "an event says a person must act");
    suite.stop().await;
}

/// Two replicas of each of the five services on one PostgreSQL database,
/// the orchestrators' workers passing often: every recurring period,
/// automatic top-up and saga step still happens once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_of_each_service_run_each_top_up_once_on_postgres() {
    let Some(mut suite) = Suite::start(Backend::Postgres).await else {
        return;
    };
    suite.environment.set("RESERVOIR__ORCHESTRATOR__WORKER_INTERVAL_MS", "20");
    suite.restart_orchestrator("").await;
    // The second replica of every service; its orchestrator calls its own
    // wallet, invoicing and payments.
    let second_environment = suite.environment.replica();
    let mut second = vec![
        ServiceProcess::wallet(&second_environment),
        ServiceProcess::metering(&second_environment),
        ServiceProcess::invoicing(&second_environment),
        ServiceProcess::payments(&second_environment),
        ServiceProcess::orchestrator(&second_environment),
    ];
    for process in &mut second {
        process.start(&second_environment).await;
    }
    let orchestrators = [
        suite.orchestrator().await,
        TopUpServiceClient::with_interceptor(
            channel(second[ORCHESTRATOR].address()).await,
            BearerKey::new(&suite.api_key),
        ),
    ];
    let mut accounts = Vec::new();
    let due = chrono::Utc::now() - chrono::Duration::hours(1);
    for index in 0..12 {
        let account = open_funded_account(&suite.wallet, "30").await;
        let card = suite.card(&account, "tok_succeed").await;
        let mut orchestrator = orchestrators[index % 2].clone();
        // A paid weekly top-up due an hour ago, and auto-replenish.
        orchestrator
            .configure_recurring_top_up(pb::ConfigureRecurringTopUpRequest {
                recurring_top_up: Some(pb::RecurringTopUp {
                    account_id: account.id.clone(),
                    credits: "10".into(),
                    interval: pb::Interval::Weekly.into(),
                    mode: pb::RecurringMode::Paid.into(),
                    payment_method_id: card.clone(),
                    next_run_at: Some(reservoir_common::time::to_timestamp(due)),
                    ..Default::default()
                }),
            })
            .await
            .unwrap();
        configure_auto(&mut orchestrator, &account, &card, "20", "25", "", 5).await;
        accounts.push(account);
    }
    // Each account dips below its threshold once: 30 + 10 (recurring) - 25.
    for account in &accounts {
        eventually("the recurring top-up", || async { available(&suite.wallet, account).await == d("40") }).await;
        suite.debit(account, "25").await;
    }
    for account in &accounts {
        eventually("the automatic top-up", || async { available(&suite.wallet, account).await == d("40") }).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    for account in &accounts {
        let top_ups = suite.top_ups(account).await;
        let triggers: Vec<i32> = top_ups.iter().map(|top_up| top_up.trigger).collect();
        assert_eq!(top_ups.len(), 2, "one recurring and one automatic top-up: {top_ups:?}");
        assert!(triggers.contains(&i32::from(pb::TopUpTrigger::Recurring)));
        assert!(triggers.contains(&i32::from(pb::TopUpTrigger::AutoReplenish)));
        assert_eq!(available(&suite.wallet, account).await, d("40"));
        assert_settled_once(&suite, account).await;
    }
    for process in second.iter_mut().rev() {
        assert!(process.terminate().await.success());
    }
    suite.stop().await;
}

/// The billing commands as a person runs them: a top-up waiting for a bank
/// transfer voided with its invoice still open, a draft finalized, a
/// declined card failing the command, marking paid refused to a tenant's
/// key with what to use, and a voucher made and redeemed.
async fn the_billing_commands_finalize_void_decline_and_redeem(backend: Backend) {
    let Some(suite) = Suite::start(backend).await else {
        return;
    };
    let account = open_funded_account(&suite.wallet, "0").await;
    let run = |arguments: &[&str]| {
        let mut command = suite.environment.command(arguments);
        command
            .env("RESERVOIR_API_KEY", &suite.api_key)
            .env("RESERVOIR_INVOICING_ENDPOINT", format!("http://{}", suite.processes[2].address()))
            .env("RESERVOIR_PAYMENTS_ENDPOINT", format!("http://{}", suite.processes[3].address()))
            .env("RESERVOIR_ORCHESTRATOR_ENDPOINT", format!("http://{}", suite.processes[ORCHESTRATOR].address()));
        command
    };
    let json_of = |output: std::process::Output| -> serde_json::Value {
        assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
        serde_json::from_slice(&output.stdout).unwrap()
    };

    let waiting =
        json_of(run(&["top-up", "start", &account.id, "5", "--reconcile-later", "--json"]).output().await.unwrap());
    let invoice_id = waiting[0]["invoice_id"].as_str().unwrap().to_owned();
    let voided = json_of(run(&["invoice", "void", &invoice_id, "--json"]).output().await.unwrap());
    assert_eq!(voided[0]["status"], "VOID", "{voided}");

    let draft = suite
        .invoicing
        .clone()
        .create_invoice(invoicing_pb::CreateInvoiceRequest {
            account_id: account.id.clone(),
            credits: "3".into(),
            description: "credits".into(),
            idempotency_key: key(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .invoice
        .unwrap();
    let issued = json_of(run(&["invoice", "finalize", &draft.id, "--json"]).output().await.unwrap());
    assert_eq!(issued[0]["status"], "OPEN", "{issued}");
    assert!(issued[0]["number"].as_u64().unwrap() >= 1, "{issued}");
    let refused = run(&["invoice", "pay", &draft.id, "--reference", "bank-1"]).output().await.unwrap();
    assert!(!refused.status.success());
    let said = String::from_utf8_lossy(&refused.stderr).into_owned();
    assert!(said.contains("SERVICE_KEY_REQUIRED") && said.contains("hint:"), "{said}");

    let declining = suite.card(&account, "tok_decline").await;
    let declined = run(&["top-up", "start", &account.id, "5", "--payment-method", &declining]).output().await.unwrap();
    assert!(!declined.status.success(), "{}", String::from_utf8_lossy(&declined.stdout));
    assert!(String::from_utf8_lossy(&declined.stdout).contains("FAILED"));
    assert!(String::from_utf8_lossy(&declined.stderr).contains("the top-up failed"));

    let batch = json_of(
        run(&["voucher", "create", "--count", "2", "--value", "10", "--unit", "USD", "--json"]).output().await.unwrap(),
    );
    let code = batch["codes"][0].as_str().unwrap().to_owned();
    let redeemed = run(&["top-up", "redeem", &code, "--account", &account.id]).output().await.unwrap();
    assert!(redeemed.status.success(), "{}", String::from_utf8_lossy(&redeemed.stderr));
    assert_eq!(available(&suite.wallet, &account).await, d("10"), "only the voucher's credits");

    // Webhook endpoints: registered (the secret shown once), listed, disabled.
    let url = "http://127.0.0.1:9/hooks";
    let created = run(&["webhooks", "create", url, "--events", "wallet.debited"]).output().await.unwrap();
    assert!(created.status.success(), "{}", String::from_utf8_lossy(&created.stderr));
    assert!(String::from_utf8_lossy(&created.stdout).contains("secret whsec_"));
    let listed = |enabled: &str| {
        let enabled = enabled.to_owned();
        let run = &run;
        async move {
            let listed = run(&["webhooks", "list"]).output().await.unwrap();
            assert!(listed.status.success(), "{}", String::from_utf8_lossy(&listed.stderr));
            let listed = String::from_utf8_lossy(&listed.stdout).into_owned();
            let row = listed.lines().find(|line| line.contains(url)).unwrap_or_else(|| panic!("{listed}"));
            let cells: Vec<&str> = row.split('|').map(str::trim).collect();
            assert_eq!((cells[3], cells[4]), (enabled.as_str(), "wallet.debited"), "{row}");
            cells[1].to_owned()
        }
    };
    let endpoint_id = listed("true").await;
    let disabled = run(&["webhooks", "disable", &endpoint_id]).output().await.unwrap();
    assert!(disabled.status.success(), "{}", String::from_utf8_lossy(&disabled.stderr));
    listed("false").await;
    suite.stop().await;
}

reservoir_testing::each_backend!(
    the_billing_commands_finalize_void_decline_and_redeem,
    a_refused_grant_after_a_charge_asks_for_a_person,
    top_ups_by_hand,
    automatic_top_ups,
    recurring_top_ups_fire_once_per_period_across_a_restart,
    a_crash_at_any_step_loses_nothing_and_charges_once,
);
