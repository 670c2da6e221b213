//! The console's billing pages with every service running: an account's cap
//! and automatic top-up set through forms, its refill history with the
//! balance after each refill, invoices and a printable invoice, the report
//! schedule and the alert recipients one per line, and top-ups waiting for a
//! person.

use reservoir_proto::invoicing as invoicing_pb;
use reservoir_proto::invoicing::invoicing_service_client::InvoicingServiceClient;
use reservoir_proto::orchestrator as orchestrator_pb;
use reservoir_proto::orchestrator::top_up_service_client::TopUpServiceClient;
use reservoir_proto::orchestrator::webhook_service_client::WebhookServiceClient;
use reservoir_proto::payments as payments_pb;
use reservoir_proto::payments::payments_service_client::PaymentsServiceClient;
use reservoir_proto::wallet as pb;
use reservoir_proto::wallet::admin_service_client::AdminServiceClient;
use reservoir_testing::BearerKey;
use reservoir_testing::wallet::*;

use crate::console::{Browser, field};

/// The part of `page` from the element with `id` to the end of its table.
fn table<'a>(page: &'a str, id: &str) -> &'a str {
    let start = page.find(&format!("id=\"{id}\"")).unwrap_or_else(|| panic!("no #{id} in the page"));
    let end = page[start..].find("</table>").map_or(page.len(), |end| start + end);
    &page[start..end]
}

/// The account as the wallet has it now.
async fn account_of(wallet: &Client, account_id: &str) -> pb::Account {
    let request = pb::GetAccountRequest { account_id: account_id.to_owned() };
    wallet.clone().get_account(request).await.unwrap().into_inner().account.unwrap()
}

/// A form's fields as the browser helper takes them.
fn borrowed<'a>(form: &'a [(&'static str, String)]) -> Vec<(&'static str, &'a str)> {
    form.iter().map(|(name, value)| (*name, value.as_str())).collect()
}

#[tokio::test]
async fn the_billing_pages_set_caps_refills_and_reports_and_print_invoices() {
    let Some(mut suite) = crate::console::start(true).await else { return };
    let (environment, api_key, wallet) = (suite.environment.clone(), suite.api_key.clone(), suite.wallet.clone());
    let bearer = || BearerKey::new(&api_key);
    let mut payments = PaymentsServiceClient::with_interceptor(channel(environment.payments_address).await, bearer());
    let mut orchestrator =
        TopUpServiceClient::with_interceptor(channel(environment.orchestrator_address).await, bearer());
    let mut invoicing =
        InvoicingServiceClient::with_interceptor(channel(environment.invoicing_address).await, bearer());

    // An endpoint nobody listens at: its deliveries keep failing.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let mut webhooks =
        WebhookServiceClient::with_interceptor(channel(environment.orchestrator_address).await, bearer());
    let endpoint = webhooks
        .create_webhook_endpoint(orchestrator_pb::CreateWebhookEndpointRequest {
            url: format!("http://{closed}/hooks"),
            description: "billing events".into(),
            event_types: Vec::new(),
            idempotency_key: key(),
        })
        .await
        .unwrap()
        .into_inner()
        .endpoint
        .unwrap();

    // An endpoint gets the events from a second after it was made on.
    tokio::time::sleep(std::time::Duration::from_millis(1_100)).await;

    // An account bought 50 credits by card: a paid invoice and one refill.
    let account = open_funded_account(&wallet, "0").await;
    let card = payments
        .add_payment_method(payments_pb::AddPaymentMethodRequest {
            account_id: account.id.clone(),
            kind: payments_pb::PaymentMethodKind::Card.into(),
            gateway_token: "tok_succeed".into(),
            label: "Visa 4242".into(),
            idempotency_key: key(),
        })
        .await
        .unwrap()
        .into_inner()
        .payment_method
        .unwrap()
        .id;
    let top_up = orchestrator
        .start_top_up(orchestrator_pb::StartTopUpRequest {
            account_id: account.id.clone(),
            credits: "50".into(),
            payment_method_id: card.clone(),
            idempotency_key: key(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .top_up
        .unwrap();
    assert_eq!(top_up.status(), orchestrator_pb::TopUpStatus::Succeeded, "{top_up:?}");

    let mut browser = Browser::new(&environment);
    browser.sign_in(&api_key).await;
    let account_page = format!("/accounts/{}", account.id);
    let page = browser.page(&account_page).await;
    let available = balance(&wallet, &account).await.available;
    let history = table(&page, "refill-history");
    assert!(history.contains(&format!("<td class=\"amount\">{available}</td>")), "balance after: {history}");
    assert_eq!(history.matches("<tr>").count(), 2, "a header and the one refill: {history}");
    assert!(page.contains("No automatic top-up."));

    // The cap and the warning level.
    let form_key = field(&page, "idempotency_key");
    let csrf = field(&page, "csrf");
    let cap = [
        ("csrf", csrf.as_str()),
        ("idempotency_key", form_key.as_str()),
        ("monthly_spending_cap", "20"),
        ("low_balance_warning", "5"),
    ];
    let answer = browser.post(&format!("{account_page}/cap"), &cap).await;
    assert_eq!(answer.status(), 303);
    let saved = wallet
        .clone()
        .get_account(pb::GetAccountRequest { account_id: account.id.clone() })
        .await
        .unwrap()
        .into_inner()
        .account
        .unwrap();
    assert_eq!((d(&saved.monthly_spending_cap), d(&saved.low_balance_warning)), (d("20"), d("5")));

    // The automatic top-up: refused as the orchestrator refuses it, then saved.
    let refill = |amount: &'static str| {
        vec![
            ("csrf", csrf.clone()),
            ("threshold", "10".to_owned()),
            ("mode", "fixed".to_owned()),
            ("amount", amount.to_owned()),
            ("payment_method_id", card.clone()),
            ("max_top_ups_per_day", "3".to_owned()),
            ("low_balance_warning_percent", "30".to_owned()),
        ]
    };
    let negative = refill("-25");
    let refused = browser.post(&format!("{account_page}/refills"), &borrowed(&negative)).await;
    assert_eq!(refused.status(), 400);
    assert!(refused.text().await.unwrap().contains("fixed_amount"), "the field is named");
    let form = refill("25");
    assert_eq!(browser.post(&format!("{account_page}/refills"), &borrowed(&form)).await.status(), 303);
    let settings = orchestrator
        .get_auto_replenish(orchestrator_pb::GetAutoReplenishRequest { account_id: account.id.clone() })
        .await
        .unwrap()
        .into_inner()
        .auto_replenish
        .unwrap();
    assert_eq!((d(&settings.threshold), d(&settings.fixed_amount)), (d("10"), d("25")));
    assert!(settings.enabled && settings.target_balance.is_empty());
    // The warning at 30% of the refill amount, as the wallet keeps it.
    assert_eq!(d(&account_of(&wallet, &account.id).await.low_balance_warning), d("7.5"));
    let page = browser.page(&format!("{account_page}?done=refills")).await;
    assert!(page.contains("Automatic top-up saved."));
    assert!(page.contains(&format!("a top-up adds <strong>{} USD</strong>", settings.fixed_amount)), "{page}");

    // The invoice of the top-up, listed and printable.
    let invoice = invoicing
        .get_invoice(invoicing_pb::GetInvoiceRequest { invoice_id: top_up.invoice_id.clone() })
        .await
        .unwrap()
        .into_inner()
        .invoice
        .unwrap();
    let listed = browser.page(&format!("/invoices?account_id={}", account.id)).await;
    assert!(listed.contains(&format!("href=\"/invoices/{}\"", invoice.id)), "{listed}");
    assert!(listed.contains(&format!("#{}", invoice.number)));
    let printable = browser.page(&format!("/invoices/{}", invoice.id)).await;
    assert!(printable.contains(&format!("Invoice #{}", invoice.number)));
    assert!(printable.contains(&format!("<strong>{} {}</strong>", invoice.total, invoice.currency)), "{printable}");
    assert!(printable.contains("@media print"));

    // Billing e-mails: recipients one address per line.
    let schedule = [
        ("csrf", csrf.as_str()),
        ("frequency", "weekly"),
        ("billing_contact", "billing@example.com"),
        ("recipients", "finance@example.com\r\n\r\n cfo@example.com \r\n"),
        ("enabled", "on"),
    ];
    assert_eq!(browser.post("/reports/schedule", &schedule).await.status(), 303);
    let saved = invoicing
        .get_report_schedule(invoicing_pb::GetReportScheduleRequest {})
        .await
        .unwrap()
        .into_inner()
        .schedule
        .unwrap();
    assert_eq!(saved.recipients, vec!["finance@example.com", "cfo@example.com"]);
    assert_eq!(saved.frequency(), invoicing_pb::ReportFrequency::Weekly);
    let reports = browser.page("/reports?done=schedule").await;
    assert!(reports.contains("A weekly report goes to <strong>billing@example.com</strong>"), "{reports}");
    assert!(reports.contains("Nobody gets alerts by e-mail."), "{reports}");

    // Billing alerts: recipients one address per line too; a bad one is
    // refused by name and nothing is saved.
    let alerts = [("csrf", csrf.as_str()), ("recipients", "ops@example.com\r\nops@\r\n")];
    let refused = browser.post("/reports/alerts", &alerts).await;
    assert_eq!(refused.status(), 400);
    assert!(refused.text().await.unwrap().contains("recipients[1]"));
    let alerts = [("csrf", csrf.as_str()), ("recipients", "ops@example.com\r\n\r\n cfo@example.com \r\n")];
    assert_eq!(browser.post("/reports/alerts", &alerts).await.status(), 303);
    let saved = invoicing
        .get_billing_alerts(invoicing_pb::GetBillingAlertsRequest {})
        .await
        .unwrap()
        .into_inner()
        .alerts
        .unwrap();
    assert_eq!(saved.recipients, vec!["ops@example.com", "cfo@example.com"]);
    let reports = browser.page("/reports?done=alerts").await;
    assert!(reports.contains("Alert recipients saved."), "{reports}");
    assert!(reports.contains("Alerts go to ops@example.com, cfo@example.com."), "{reports}");

    // The account's billing mode: a refillable wallet (it tops itself up),
    // switched to a monthly invoice with a credit limit, then back; its
    // contact is the tenant's billing contact.
    let page = browser.page(&account_page).await;
    assert!(
        page.contains(
            "Billing: <strong>Refillable wallet</strong> · billing contact billing@example.com (the tenant's)"
        ),
        "{}",
        table(&page, "billing-mode")
    );
    let mode = |mode: &'static str, limit: &'static str, key: &'static str| {
        [
            ("csrf", csrf.clone()),
            ("idempotency_key", key.to_owned()),
            ("mode", mode.to_owned()),
            ("credit_limit", limit.to_owned()),
        ]
    };
    let refused =
        browser.post(&format!("{account_page}/billing-mode"), &borrowed(&mode("monthly", "-5", "mode-1"))).await;
    assert_eq!(refused.status(), 400);
    assert!(refused.text().await.unwrap().contains("credit_limit"));
    let monthly =
        browser.post(&format!("{account_page}/billing-mode"), &borrowed(&mode("monthly", "500", "mode-2"))).await;
    assert_eq!(monthly.status(), 303);
    let got = account_of(&wallet, &account.id).await;
    assert_eq!(got.overdraft_policy(), pb::OverdraftPolicy::CreditLimit);
    assert_eq!(got.credit_limit.parse::<rust_decimal::Decimal>().unwrap(), rust_decimal::Decimal::from(500));
    let page = browser.page(&format!("{account_page}?done=mode")).await;
    assert!(page.contains("Billing mode saved.") && page.contains("Billing: <strong>Monthly invoice</strong>"));
    let unlimited =
        browser.post(&format!("{account_page}/billing-mode"), &borrowed(&mode("unlimited", "", "mode-3"))).await;
    assert_eq!(unlimited.status(), 303);
    assert_eq!(account_of(&wallet, &account.id).await.overdraft_policy(), pb::OverdraftPolicy::Unlimited);
    // A limit given for a wallet is refused, not dropped.
    let refused =
        browser.post(&format!("{account_page}/billing-mode"), &borrowed(&mode("wallet", "50", "mode-4"))).await;
    assert_eq!(refused.status(), 400);
    assert!(refused.text().await.unwrap().contains("credit_limit"));
    assert_eq!(account_of(&wallet, &account.id).await.overdraft_policy(), pb::OverdraftPolicy::Unlimited);
    let back = browser.post(&format!("{account_page}/billing-mode"), &borrowed(&mode("wallet", "", "mode-5"))).await;
    assert_eq!(back.status(), 303);
    let got = account_of(&wallet, &account.id).await;
    assert_eq!(got.overdraft_policy(), pb::OverdraftPolicy::None);

    // The endpoint and its failing deliveries, each one sent again on request.
    let listed = browser.page("/webhooks").await;
    assert!(listed.contains(&format!("href=\"/webhooks/{}\"", endpoint.id)) && listed.contains(&endpoint.url));
    let mut deliveries = String::new();
    for _ in 0..100 {
        deliveries = browser.page(&format!("/webhooks/{}", endpoint.id)).await;
        if deliveries.contains("/replay\"") {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let marker = "action=\"/webhooks/deliveries/";
    let Some(start) = deliveries.find(marker) else {
        let listed = webhooks
            .list_webhook_deliveries(orchestrator_pb::ListWebhookDeliveriesRequest {
                endpoint_id: endpoint.id.clone(),
                ..Default::default()
            })
            .await;
        panic!("no delivery to send again: {listed:?}");
    };
    let replay = deliveries[start + "action=\"".len()..].split('"').next().unwrap().to_owned();
    let answer = browser.post(&replay, &[("csrf", csrf.as_str()), ("endpoint_id", endpoint.id.as_str())]).await;
    assert_eq!(answer.status(), 303);
    let back = answer.headers()["location"].to_str().unwrap().to_owned();
    assert_eq!(back, format!("/webhooks/{}?done=replayed", endpoint.id));
    assert!(browser.page(&back).await.contains("Sent again"));

    let top_ups = browser.page("/top-ups").await;
    assert!(top_ups.contains("Waiting for a person"));

    // A WRITE key changes money but not the tenant's configuration.
    let mut admin = AdminServiceClient::with_interceptor(channel(environment.wallet_address).await, bearer());
    let writer = admin
        .issue_api_key(pb::IssueApiKeyRequest { tenant_id: String::new(), role: pb::KeyRole::Write.into() })
        .await
        .unwrap()
        .into_inner()
        .api_key;
    let mut other = Browser::new(&environment);
    other.sign_in(&writer).await;
    let page = other.page(&account_page).await;
    assert!(
        page.contains("Grant credits")
            && !page.contains("Monthly spending cap")
            && !page.contains("Save the automatic top-up")
            && !page.contains("Save the billing mode")
    );
    let csrf = field(&page, "csrf");
    let cap = [("csrf", csrf.as_str()), ("idempotency_key", "writer-cap"), ("monthly_spending_cap", "")];
    assert_eq!(other.post(&format!("{account_page}/cap"), &cap).await.status(), 403);
    let reports = other.page("/reports").await;
    assert!(!reports.contains("Save the schedule") && !reports.contains("Save the recipients"));
    let alerts = [("csrf", csrf.as_str()), ("recipients", "")];
    assert_eq!(other.post("/reports/alerts", &alerts).await.status(), 403);
    let kept = invoicing.get_billing_alerts(invoicing_pb::GetBillingAlertsRequest {}).await.unwrap().into_inner();
    assert_eq!(kept.alerts.unwrap().recipients.len(), 2, "the WRITE key changed nothing");

    for process in suite.processes.iter_mut().rev() {
        assert!(process.terminate().await.success(), "a clean exit on SIGTERM");
    }
}
