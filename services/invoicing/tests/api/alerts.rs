//! Billing alerts by email: each crossing of a balance level or a spending
//! cap's mark, and each top-up paid, is one mail to the billing contact and
//! the alert recipients, sent once and tried again while the mail server
//! refuses it; what happened before the recipients were set is not mailed.

use std::sync::atomic::Ordering;
use std::time::Duration;

use reservoir_proto::invoicing as pb;
use reservoir_proto::wallet as wallet_pb;
use tonic::Code;

use crate::helpers::*;

async fn set_alert_recipients(suite: &Suite, recipients: &[&str]) -> Vec<String> {
    let alerts = pb::BillingAlerts { recipients: recipients.iter().map(|address| (*address).to_owned()).collect() };
    suite
        .invoicing
        .clone()
        .update_billing_alerts(pb::UpdateBillingAlertsRequest { alerts: Some(alerts) })
        .await
        .unwrap()
        .into_inner()
        .alerts
        .unwrap()
        .recipients
}

async fn alert_mails(suite: &Suite) -> Vec<pb::AlertMail> {
    suite
        .invoicing
        .clone()
        .list_alert_mails(pb::ListAlertMailsRequest { page_size: 0 })
        .await
        .unwrap()
        .into_inner()
        .mails
}

async fn set_levels(suite: &Suite, account: &wallet_pb::Account, threshold: &str, warning: &str, cap: &str) {
    suite
        .wallet
        .clone()
        .update_account(wallet_pb::UpdateAccountRequest {
            account_id: account.id.clone(),
            low_balance_threshold: Some(threshold.into()),
            low_balance_warning: Some(warning.into()),
            monthly_spending_cap: Some(cap.into()),
            idempotency_key: key(),
            ..Default::default()
        })
        .await
        .unwrap();
}

async fn debit(suite: &Suite, account: &wallet_pb::Account, amount: &str) {
    suite
        .wallet
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

/// A mail's text as a reader sees it: folded headers and quoted-printable
/// soft line breaks joined.
fn text_of(mail: &crate::smtp::Mail) -> String {
    mail.data.replace("=\n", "").replace("\n ", " ")
}

fn subject_of(mail: &crate::smtp::Mail) -> String {
    text_of(mail).lines().find_map(|line| line.strip_prefix("Subject: ")).unwrap_or_default().to_owned()
}

async fn each_crossing_is_mailed_once_to_the_contact_and_the_recipients(suite: Suite) -> Suite {
    // Crossed before anyone asked for alerts: not mailed.
    let earlier = open_account(&suite, usd(), wallet_pb::OverdraftPolicy::None, "").await;
    grant(&suite, &earlier, "100", wallet_pb::GrantKind::Paid).await;
    set_levels(&suite, &earlier, "50", "70", "").await;
    debit(&suite, &earlier, "60").await;

    let schedule = pb::ReportSchedule {
        frequency: pb::ReportFrequency::Monthly.into(),
        billing_contact: "billing@customer.test".into(),
        recipients: vec![],
        enabled: true,
        next_run_at: None,
    };
    let update = pb::UpdateReportScheduleRequest { schedule: Some(schedule) };
    suite.invoicing.clone().update_report_schedule(update).await.unwrap();
    let saved =
        set_alert_recipients(&suite, &["ops@customer.test", "billing@customer.test", "ops@customer.test"]).await;
    assert_eq!(saved, vec!["ops@customer.test", "billing@customer.test"], "each address once, in order");
    let got = suite.invoicing.clone().get_billing_alerts(pb::GetBillingAlertsRequest {}).await.unwrap().into_inner();
    assert_eq!(got.alerts.unwrap().recipients, saved);

    let account = open_account(&suite, usd(), wallet_pb::OverdraftPolicy::None, "").await;
    grant(&suite, &account, "100", wallet_pb::GrantKind::Paid).await;
    set_levels(&suite, &account, "50", "70", "100").await;
    debit(&suite, &account, "40").await; // 60 left: below the warning level of 70
    debit(&suite, &account, "15").await; // 45 left: below the threshold of 50; 55 spent, half the cap
    debit(&suite, &account, "5").await; // 40 left: no new crossing

    eventually("three alert mails", || async { suite.smtp.mails().len() >= 3 }).await;
    // Later passes and the same events read again send nothing more.
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    let mails = suite.smtp.mails();
    let mut subjects: Vec<String> = mails.iter().map(subject_of).collect();
    subjects.sort();
    let mut expected = vec![
        format!("Balance low on account {}", account.id),
        format!("Balance warning on account {}", account.id),
        format!("Spending at 50% of the cap on account {}", account.id),
    ];
    expected.sort();
    assert_eq!(subjects, expected, "one mail per crossing, none for the account crossed before");
    for mail in &mails {
        assert_eq!(mail.from, "billing@reservoir.test");
        assert_eq!(mail.to, vec!["billing@customer.test", "ops@customer.test"], "the contact first, each once");
    }
    let low = mails.iter().find(|mail| subject_of(mail).starts_with("Balance low")).unwrap();
    assert!(text_of(low).contains("fell to 45.00"), "{}", low.data);
    assert!(text_of(low).contains("threshold of 50.00"), "{}", low.data);

    let listed = alert_mails(&suite).await;
    assert_eq!(listed.len(), 3);
    assert!(listed.iter().all(|mail| mail.status == i32::from(pb::AlertMailStatus::Sent) && mail.attempts == 1));
    let mut kinds: Vec<i32> = listed.iter().map(|mail| mail.kind).collect();
    kinds.sort_unstable();
    assert_eq!(
        kinds,
        vec![
            i32::from(pb::AlertKind::BalanceLow),
            i32::from(pb::AlertKind::BalanceWarning),
            i32::from(pb::AlertKind::SpendingCap)
        ]
    );
    assert!(listed.iter().all(|mail| mail.account_id == account.id));
    suite
}

/// A balance used up to nothing is an alert of its own, mailed once.
async fn a_balance_used_up_is_mailed_once(suite: Suite) -> Suite {
    set_alert_recipients(&suite, &["ops@customer.test"]).await;
    let account = open_account(&suite, usd(), wallet_pb::OverdraftPolicy::None, "").await;
    grant(&suite, &account, "10", wallet_pb::GrantKind::Paid).await;
    debit(&suite, &account, "10").await;
    eventually("the depleted balance", || async { !suite.smtp.mails().is_empty() }).await;
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    let mails = suite.smtp.mails();
    assert_eq!(mails.len(), 1, "once");
    assert_eq!(subject_of(&mails[0]), format!("Balance depleted on account {}", account.id));
    assert!(text_of(&mails[0]).contains("reached 0.00"), "{}", mails[0].data);
    let listed = alert_mails(&suite).await;
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].kind, i32::from(pb::AlertKind::BalanceDepleted));
    suite
}

async fn a_paid_top_up_is_mailed_and_a_refused_mail_is_tried_again(suite: Suite) -> Suite {
    set_alert_recipients(&suite, &["ops@customer.test"]).await;
    suite.smtp.refusing.store(true, Ordering::SeqCst);
    let account = open_account(&suite, usd(), wallet_pb::OverdraftPolicy::None, "").await;
    let invoice = create_invoice(&suite, &account, "25").await;
    let invoice = finalize(&suite, &invoice).await.unwrap();
    pay(&suite, &invoice, "pay_1").await.unwrap();

    eventually("a refused attempt", || async {
        alert_mails(&suite).await.first().is_some_and(|mail| mail.attempts >= 1 && !mail.last_error.is_empty())
    })
    .await;
    let waiting = alert_mails(&suite).await;
    assert_eq!(waiting.len(), 1);
    assert_eq!(waiting[0].kind, i32::from(pb::AlertKind::TopUpPaid));
    assert_eq!(waiting[0].status, i32::from(pb::AlertMailStatus::Pending), "tried again later");
    assert!(suite.smtp.mails().is_empty());

    suite.smtp.refusing.store(false, Ordering::SeqCst);
    suite.set_time(chrono::Utc::now() + chrono::Duration::minutes(2));
    eventually("the mail, sent on a later attempt", || async { !suite.smtp.mails().is_empty() }).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mails = suite.smtp.mails();
    assert_eq!(mails.len(), 1, "sent once");
    assert_eq!(mails[0].to, vec!["ops@customer.test"]);
    assert_eq!(subject_of(&mails[0]), format!("Top-up paid on account {}", account.id));
    assert!(text_of(&mails[0]).contains("25.00 USD"), "{}", mails[0].data);
    let sent = alert_mails(&suite).await;
    assert_eq!(sent[0].status, i32::from(pb::AlertMailStatus::Sent));
    assert_eq!(sent[0].attempts, 2);
    suite
}

/// Invoicing stopped between two crossings: the one before is not mailed
/// again, even when its events are read again from the start (as a second
/// replica reads them), and the one while it was down is mailed once it is
/// back.
async fn a_restart_neither_loses_nor_repeats_an_alert(mut suite: Suite) -> Suite {
    set_alert_recipients(&suite, &["ops@customer.test"]).await;
    let account = open_account(&suite, usd(), wallet_pb::OverdraftPolicy::None, "").await;
    grant(&suite, &account, "100", wallet_pb::GrantKind::Paid).await;
    set_levels(&suite, &account, "50", "70", "").await;
    debit(&suite, &account, "40").await; // below the warning level
    eventually("the warning", || async { suite.smtp.mails().len() == 1 }).await;

    suite.stop_invoicing().await;
    suite.invoicing_database().execute("UPDATE alert_cursors SET after_sequence = 0", vec![]).await;
    debit(&suite, &account, "20").await; // below the threshold, while invoicing is down
    for _ in 0..20 {
        debit(&suite, &account, "0.01").await; // events without alerts
    }
    suite.start_invoicing().await;
    eventually("the low balance", || async { suite.smtp.mails().len() >= 2 }).await;
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    let subjects: Vec<String> = suite.smtp.mails().iter().map(subject_of).collect();
    assert_eq!(
        subjects,
        vec![format!("Balance warning on account {}", account.id), format!("Balance low on account {}", account.id)],
        "each once, in order"
    );
    assert_eq!(alert_mails(&suite).await.len(), 2);
    suite
}

/// Recipients taken away before a refused mail is tried again: it goes to
/// nobody and ends FAILED, saying why.
async fn turning_alerts_off_stops_the_mails_not_yet_sent(suite: Suite) -> Suite {
    set_alert_recipients(&suite, &["ops@customer.test"]).await;
    suite.smtp.refusing.store(true, Ordering::SeqCst);
    let account = open_account(&suite, usd(), wallet_pb::OverdraftPolicy::None, "").await;
    grant(&suite, &account, "100", wallet_pb::GrantKind::Paid).await;
    set_levels(&suite, &account, "50", "", "").await;
    debit(&suite, &account, "60").await;
    eventually("a refused attempt", || async {
        alert_mails(&suite).await.first().is_some_and(|mail| mail.attempts >= 1)
    })
    .await;

    set_alert_recipients(&suite, &[]).await;
    suite.smtp.refusing.store(false, Ordering::SeqCst);
    suite.set_time(chrono::Utc::now() + chrono::Duration::minutes(2));
    eventually("the mail given up", || async {
        alert_mails(&suite).await.first().is_some_and(|mail| mail.status == i32::from(pb::AlertMailStatus::Failed))
    })
    .await;
    let mail = alert_mails(&suite).await.remove(0);
    assert!(mail.last_error.contains("turned off"), "{mail:?}");
    assert!(suite.smtp.mails().is_empty(), "nobody was mailed");
    suite
}

async fn alert_recipients_are_checked_by_field(suite: Suite) -> Suite {
    let mut invoicing = suite.invoicing.clone();
    let bad =
        |recipients: Vec<String>| pb::UpdateBillingAlertsRequest { alerts: Some(pb::BillingAlerts { recipients }) };
    let refused = invoicing.update_billing_alerts(bad(vec!["ops@customer.test".into(), "ops@".into()])).await;
    assert_invalid(refused, "alerts.recipients[1]");
    let many = (0..21).map(|index| format!("ops{index}@customer.test")).collect();
    assert_invalid(invoicing.update_billing_alerts(bad(many)).await, "alerts.recipients");
    let missing = invoicing.update_billing_alerts(pb::UpdateBillingAlertsRequest { alerts: None }).await;
    assert_eq!(missing.unwrap_err().code(), Code::InvalidArgument);
    let got = invoicing.get_billing_alerts(pb::GetBillingAlertsRequest {}).await.unwrap().into_inner();
    assert!(got.alerts.unwrap().recipients.is_empty(), "nothing was saved");
    suite
}

crate::on_both_backends!(
    each_crossing_is_mailed_once_to_the_contact_and_the_recipients,
    a_balance_used_up_is_mailed_once,
    a_paid_top_up_is_mailed_and_a_refused_mail_is_tried_again,
    a_restart_neither_loses_nor_repeats_an_alert,
    turning_alerts_off_stops_the_mails_not_yet_sent,
    alert_recipients_are_checked_by_field,
);
