//! Top-ups by hand: paid, declined, reconciled later.

use super::*;

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

reservoir_testing::each_backend!(top_ups_by_hand,);
