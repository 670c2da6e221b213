//! The tenant-wide pages: invoices, billing reports, top-ups waiting.

use std::sync::Arc;

use axum::Form;
use axum::extract::{Path, RawQuery, State};
use axum::response::{IntoResponse, Redirect, Response};
use http::{HeaderMap, StatusCode};
use reservoir_proto::{invoicing, orchestrator};
use serde::Deserialize;

use super::accounts::{allowed, first, pairs};
use super::session::SignedIn;
use super::{Console, refused};
use crate::domain::Role;
use crate::error::ConsoleError;
use crate::store::Session;
use crate::views;

pub(super) async fn invoices(
    State(console): State<Arc<Console>>,
    SignedIn(session): SignedIn,
    RawQuery(query): RawQuery,
) -> Response {
    let query = pairs(query.as_deref());
    let account_id = first(&query, "account_id").trim();
    match console.upstream.invoices(&session.key, account_id, first(&query, "page_token")).await {
        Ok((invoices, next)) => views::invoices::list(&session, account_id, &invoices, &next).into_response(),
        Err(error) => refused(Some(&session), &error),
    }
}

pub(super) async fn invoice(
    State(console): State<Arc<Console>>,
    SignedIn(session): SignedIn,
    Path(invoice_id): Path<String>,
) -> Response {
    match console.upstream.invoice(&session.key, &invoice_id).await {
        Ok(invoice) => views::invoices::invoice(&session, &invoice).into_response(),
        Err(error) => refused(Some(&session), &error),
    }
}

async fn reports_page(
    console: &Console,
    session: &Session,
    status: StatusCode,
    error: Option<&str>,
    notice: Option<&str>,
) -> Response {
    let upstream = &console.upstream;
    let reports =
        async { tokio::try_join!(upstream.report_schedule(&session.key), upstream.report_runs(&session.key)) };
    let alerts =
        async { tokio::try_join!(upstream.alert_recipients(&session.key), upstream.alert_mails(&session.key)) };
    // The alerts are shown when invoicing answers for them; the reports
    // do not depend on them.
    match tokio::join!(reports, alerts) {
        (Ok((schedule, runs)), alerts) => {
            let alerts = alerts.map_err(|error| error.to_string());
            let billing_mail = views::reports::BillingMail { schedule, runs, alerts };
            (status, views::reports::reports(session, &billing_mail, error, notice)).into_response()
        }
        (Err(error), _) => refused(Some(session), &error),
    }
}

pub(super) async fn reports(
    State(console): State<Arc<Console>>,
    SignedIn(session): SignedIn,
    RawQuery(query): RawQuery,
) -> Response {
    let notice = match first(&pairs(query.as_deref()), "done") {
        "schedule" => Some("Schedule saved."),
        "alerts" => Some("Alert recipients saved."),
        _ => None,
    };
    reports_page(&console, &session, StatusCode::OK, None, notice).await
}

#[derive(Deserialize)]
pub(super) struct ScheduleForm {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    frequency: String,
    #[serde(default)]
    billing_contact: String,
    #[serde(default)]
    recipients: String,
    #[serde(default)]
    enabled: Option<String>,
}

/// One address per line; blank lines are not addresses.
fn addresses(lines: &str) -> Vec<String> {
    lines.lines().map(str::trim).filter(|line| !line.is_empty()).map(str::to_owned).collect()
}

fn schedule(form: &ScheduleForm) -> Result<invoicing::ReportSchedule, ConsoleError> {
    let frequency = match form.frequency.as_str() {
        "daily" => invoicing::ReportFrequency::Daily,
        "weekly" => invoicing::ReportFrequency::Weekly,
        "monthly" => invoicing::ReportFrequency::Monthly,
        other => return Err(ConsoleError::invalid("frequency", format!("{other:?} is not daily, weekly or monthly"))),
    };
    Ok(invoicing::ReportSchedule {
        frequency: frequency as i32,
        billing_contact: form.billing_contact.trim().to_owned(),
        recipients: addresses(&form.recipients),
        enabled: form.enabled.is_some(),
        next_run_at: None,
    })
}

pub(super) async fn update_schedule(
    State(console): State<Arc<Console>>,
    headers: HeaderMap,
    Form(form): Form<ScheduleForm>,
) -> Response {
    let session = match allowed(&console, &headers, &form.csrf, Role::may_configure) {
        Ok(session) => session,
        Err(refusal) => return refusal,
    };
    let result = match schedule(&form) {
        Ok(schedule) => console.upstream.update_report_schedule(&session.key, schedule).await,
        Err(error) => Err(error),
    };
    reports_answer(&console, &session, result, "schedule").await
}

/// Where a change on the reports page leads: back to the page saying what
/// was saved, or the page again with why not.
async fn reports_answer(
    console: &Console,
    session: &Session,
    result: Result<(), ConsoleError>,
    saved: &str,
) -> Response {
    match result {
        Ok(()) => Redirect::to(&format!("/reports?done={saved}")).into_response(),
        Err(error @ (ConsoleError::SignedOut | ConsoleError::Unavailable { .. })) => refused(Some(session), &error),
        Err(error) => {
            let status = super::status_of(&error).unwrap_or(StatusCode::BAD_REQUEST);
            reports_page(console, session, status, Some(&error.to_string()), None).await
        }
    }
}

#[derive(Deserialize)]
pub(super) struct AlertsForm {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    recipients: String,
}

pub(super) async fn update_alerts(
    State(console): State<Arc<Console>>,
    headers: HeaderMap,
    Form(form): Form<AlertsForm>,
) -> Response {
    let session = match allowed(&console, &headers, &form.csrf, Role::may_configure) {
        Ok(session) => session,
        Err(refusal) => return refusal,
    };
    let result = console.upstream.update_alert_recipients(&session.key, addresses(&form.recipients)).await;
    reports_answer(&console, &session, result, "alerts").await
}

pub(super) async fn top_ups(State(console): State<Arc<Console>>, SignedIn(session): SignedIn) -> Response {
    let waiting = console.upstream.top_ups(&session.key, orchestrator::TopUpStatus::RequiresAction);
    let failed = console.upstream.top_ups(&session.key, orchestrator::TopUpStatus::Failed);
    match tokio::try_join!(waiting, failed) {
        Ok((waiting, failed)) => views::reports::top_ups(&session, &waiting, &failed).into_response(),
        Err(error) => refused(Some(&session), &error),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recipients_are_one_address_per_line() {
        let form = ScheduleForm {
            csrf: String::new(),
            frequency: "weekly".into(),
            billing_contact: " billing@example.com ".into(),
            recipients: "a@example.com\r\n\r\n  b@example.com  \n".into(),
            enabled: Some("on".into()),
        };
        let schedule = schedule(&form).unwrap_or_default();
        assert_eq!(schedule.recipients, vec!["a@example.com", "b@example.com"]);
        assert_eq!((schedule.billing_contact.as_str(), schedule.enabled), ("billing@example.com", true));
        let unknown = ScheduleForm { frequency: "hourly".into(), ..form };
        assert!(matches!(schedule_error(&unknown), Some("frequency")));
    }

    fn schedule_error(form: &ScheduleForm) -> Option<&'static str> {
        match schedule(form) {
            Err(ConsoleError::Invalid { field, .. }) => Some(field),
            _ => None,
        }
    }
}
