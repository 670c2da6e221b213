//! Scheduled billing reports, mailed to an SMTP sink the test starts.

use std::time::Duration;

use reservoir_proto::invoicing as pb;
use reservoir_proto::wallet as wallet_pb;
use tonic::Code;

use crate::helpers::*;

fn schedule(frequency: pb::ReportFrequency, contact: &str, others: &[&str]) -> pb::UpdateReportScheduleRequest {
    pb::UpdateReportScheduleRequest {
        schedule: Some(pb::ReportSchedule {
            frequency: frequency.into(),
            billing_contact: contact.into(),
            recipients: others.iter().map(|address| (*address).to_owned()).collect(),
            enabled: true,
            next_run_at: None,
        }),
    }
}

async fn a_daily_report_is_mailed_once_to_the_billing_contact_and_the_other_recipients(suite: Suite) -> Suite {
    priced_meter(&suite, "tokens", "0.5", None).await;
    let account = open_account(&suite, usd(), wallet_pb::OverdraftPolicy::None, "").await;
    grant(&suite, &account, "100", wallet_pb::GrantKind::Paid).await;
    use_meter(&suite, &account, "tokens", "10", &[]).await;
    let invoice = create_invoice(&suite, &account, "25").await;
    finalize(&suite, &invoice).await.unwrap();
    let saved = suite
        .invoicing
        .clone()
        .update_report_schedule(schedule(
            pb::ReportFrequency::Daily,
            "billing@customer.test",
            &["cfo@customer.test", "billing@customer.test", "ops@customer.test"],
        ))
        .await
        .unwrap()
        .into_inner()
        .schedule
        .unwrap();
    let next_run_at = reservoir_common::time::from_timestamp(&saved.next_run_at.unwrap()).unwrap();
    let today = chrono::Utc::now().format("%Y-%m-%d").to_string();
    assert_eq!(next_run_at.format("%H:%M:%S").to_string(), "00:00:00", "the end of today");
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert!(suite.smtp.mails().is_empty(), "nothing is sent before the day ends");
    // Changing the recipients keeps the schedule where it is.
    let edited = suite
        .invoicing
        .clone()
        .update_report_schedule(schedule(
            pb::ReportFrequency::Daily,
            "billing@customer.test",
            &["cfo@customer.test", "billing@customer.test", "ops@customer.test"],
        ))
        .await
        .unwrap()
        .into_inner()
        .schedule
        .unwrap();
    assert_eq!(edited.next_run_at, saved.next_run_at);

    suite.set_time(next_run_at + chrono::Duration::minutes(1));
    eventually("the report", || async { !suite.smtp.mails().is_empty() }).await;
    // Later passes send nothing more.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mails = suite.smtp.mails();
    assert_eq!(mails.len(), 1);
    let mail = &mails[0];
    assert_eq!(mail.from, "billing@reservoir.test");
    assert_eq!(mail.to, vec!["billing@customer.test", "cfo@customer.test", "ops@customer.test"]);
    assert!(mail.data.contains(&format!("Subject: Billing report, {today} to {today}")), "{}", mail.data);
    assert!(mail.data.contains("filename=\"invoices.csv\""), "{}", mail.data);
    assert!(mail.data.contains("filename=\"usage.csv\""), "{}", mail.data);
    assert!(mail.data.contains(&invoice.id), "the invoice's line is in invoices.csv: {}", mail.data);
    assert!(mail.data.contains(&format!("{},USD,tokens,,,10,5", account.id)), "usage.csv: {}", mail.data);

    let runs = suite
        .invoicing
        .clone()
        .list_report_runs(pb::ListReportRunsRequest { page_size: 0 })
        .await
        .unwrap()
        .into_inner()
        .runs;
    assert_eq!(runs.len(), 1);
    assert_eq!(runs[0].status, i32::from(pb::ReportRunStatus::Sent));
    assert_eq!(runs[0].attempts, 1);
    let got = suite.invoicing.clone().get_report_schedule(pb::GetReportScheduleRequest {}).await.unwrap().into_inner();
    let next = reservoir_common::time::from_timestamp(&got.schedule.unwrap().next_run_at.unwrap()).unwrap();
    assert_eq!(next, next_run_at + chrono::Duration::days(1), "the next report is of the next day");
    suite
}

async fn a_schedule_needs_a_frequency_and_real_addresses(suite: Suite) -> Suite {
    let mut invoicing = suite.invoicing.clone();
    let bad = schedule(pb::ReportFrequency::Unspecified, "billing@customer.test", &[]);
    assert_invalid(invoicing.update_report_schedule(bad).await, "schedule.frequency");
    let bad = schedule(pb::ReportFrequency::Weekly, "not an address", &[]);
    assert_invalid(invoicing.update_report_schedule(bad).await, "schedule.billing_contact");
    let bad = schedule(pb::ReportFrequency::Weekly, "billing@customer.test", &["cfo@"]);
    assert_invalid(invoicing.update_report_schedule(bad).await, "schedule.recipients[0]");
    let none = invoicing.get_report_schedule(pb::GetReportScheduleRequest {}).await.unwrap().into_inner();
    assert!(none.schedule.is_none(), "nothing was saved");
    let missing = pb::UpdateReportScheduleRequest { schedule: None };
    let refused = invoicing.update_report_schedule(missing).await.unwrap_err();
    assert_eq!(refused.code(), Code::InvalidArgument);
    suite
}

crate::on_both_backends!(
    a_daily_report_is_mailed_once_to_the_billing_contact_and_the_other_recipients,
    a_schedule_needs_a_frequency_and_real_addresses,
);
