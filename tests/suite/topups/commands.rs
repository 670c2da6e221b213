//! The billing commands of the CLI, run as the real binary.

use super::*;

/// The billing commands as a person runs them: a top-up waiting for a bank
/// transfer voided with its invoice still open, a draft finalized, a
/// declined card failing the command, marking paid refused to a tenant's
/// key with what to use, a voucher made and redeemed, webhook endpoints and
/// the billing alerts' recipients.
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

    // A recurring allowance whose periods carry half of what is left.
    let allowance = open_funded_account(&suite.wallet, "0").await;
    let recurring = |cap: &str| {
        let arguments = [
            "top-up",
            "recurring",
            &allowance.id,
            "4",
            "--interval",
            "monthly",
            "--rollover",
            "capped",
            "--rollover-cap",
            cap,
            "--rollover-expire-after-days",
            "30",
        ];
        run(&arguments)
    };
    let refused = recurring("half%").output().await.unwrap();
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("--rollover-cap half% is not a share"));
    let configured = recurring("50%").output().await.unwrap();
    assert!(configured.status.success(), "{}", String::from_utf8_lossy(&configured.stderr));
    let schedule = suite
        .orchestrator()
        .await
        .get_recurring_top_up(pb::GetRecurringTopUpRequest { account_id: allowance.id.clone() })
        .await
        .unwrap()
        .into_inner()
        .recurring_top_up
        .unwrap();
    let policy = schedule.rollover.unwrap();
    assert_eq!((policy.mode, policy.cap_percent, policy.expire_after_days), (pb::RolloverMode::Capped.into(), 50, 30));

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

    // Billing alerts: recipients set and shown, a bad address refused by
    // name with nothing saved, and the mails made listed.
    let set = run(&["alerts", "set", "ops@example.com", "cfo@example.com"]).output().await.unwrap();
    assert!(set.status.success(), "{}", String::from_utf8_lossy(&set.stderr));
    assert!(String::from_utf8_lossy(&set.stdout).contains("billing alerts go to ops@example.com, cfo@example.com"));
    let bad = run(&["alerts", "set", "ops@"]).output().await.unwrap();
    assert!(!bad.status.success());
    assert!(
        String::from_utf8_lossy(&bad.stderr).contains("alerts.recipients[0]"),
        "{}",
        String::from_utf8_lossy(&bad.stderr)
    );
    let shown = json_of(run(&["alerts", "show", "--json"]).output().await.unwrap());
    assert_eq!(shown["recipients"], serde_json::json!(["ops@example.com", "cfo@example.com"]));
    let sent = json_of(run(&["alerts", "sent", "--json"]).output().await.unwrap());
    assert!(sent.as_array().is_some(), "{sent}");
    suite.stop().await;
}

reservoir_testing::each_backend!(the_billing_commands_finalize_void_decline_and_redeem,);
