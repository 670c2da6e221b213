//! Billing e-mails (the scheduled report and its runs, alerts and their
//! mails); top-ups waiting for a person.

use maud::{Markup, html};
use reservoir_proto::{invoicing, orchestrator};

use super::{csrf_field, message, names, page};
use crate::store::Session;

/// What the billing e-mails page shows.
pub struct BillingMail {
    pub schedule: Option<invoicing::ReportSchedule>,
    pub runs: Vec<invoicing::ReportRun>,
    /// Who gets the alerts and the mails made; why not, when invoicing did
    /// not answer for them.
    pub alerts: Result<(Vec<String>, Vec<invoicing::AlertMail>), String>,
}

pub fn reports(session: &Session, mail: &BillingMail, error: Option<&str>, notice: Option<&str>) -> Markup {
    let schedule = mail.schedule.as_ref();
    let runs = &mail.runs;
    let frequency = schedule.map(invoicing::ReportSchedule::frequency);
    page(
        "Billing reports",
        Some(session),
        html! {
            (message(error, notice))
            @if let Some(schedule) = schedule {
                p #schedule {
                    "A " (names::frequency(schedule.frequency())) " report goes to " strong { (schedule.billing_contact) }
                    @if !schedule.recipients.is_empty() { " and " (schedule.recipients.join(", ")) }
                    @if schedule.enabled { "; the next on " (names::instant(schedule.next_run_at.as_ref())) "." } @else { "; " strong { "paused" } "." }
                }
            } @else {
                p { "No scheduled report." }
            }
            @if session.role.may_configure() {
                form method="post" action="/reports/schedule" {
                    fieldset {
                        legend { "Schedule" }
                        (csrf_field(session))
                        label for="frequency" { "How often" }
                        select #frequency name="frequency" {
                            option value="daily" selected[frequency == Some(invoicing::ReportFrequency::Daily)] { "Daily" }
                            option value="weekly" selected[frequency == Some(invoicing::ReportFrequency::Weekly)] { "Weekly (Monday to Monday)" }
                            option value="monthly" selected[frequency.is_none() || frequency == Some(invoicing::ReportFrequency::Monthly)] { "Monthly" }
                        }
                        label for="contact" { "Billing contact (e-mail)" }
                        input #contact type="email" name="billing_contact" required value=(schedule.map(|s| s.billing_contact.as_str()).unwrap_or_default());
                        label for="recipients" { "Other recipients, one address per line (up to 20)" }
                        textarea #recipients name="recipients" rows="4" cols="40" { (schedule.map(|s| s.recipients.join("\n")).unwrap_or_default()) }
                        label { input type="checkbox" name="enabled" value="on" checked[schedule.is_none_or(|s| s.enabled)]; " Send the reports" }
                        p { button type="submit" { "Save the schedule" } }
                    }
                }
            }
            h2 { "Past runs" }
            @if runs.is_empty() { p { "None yet." } } @else {
                table #report-runs {
                    thead { tr { th { "Period" } th { "How often" } th { "Recipients" } th { "Status" } th { "Attempts" } th { "Last error" } } }
                    tbody {
                        @for run in runs {
                            tr {
                                td { (names::instant(run.period_start.as_ref())) " to " (names::instant(run.period_end.as_ref())) }
                                td { (names::frequency(run.frequency())) }
                                td { (run.recipients.join(", ")) }
                                td { @if run.status() == invoicing::ReportRunStatus::Failed { strong { "failed" } } @else { (names::run_status(run.status())) } }
                                td { (run.attempts) }
                                td { (run.last_error) }
                            }
                        }
                    }
                }
            }
            h2 #alerts { "Billing alerts" }
            p {
                "An account's balance low, at its warning level or used up, a spending cap's 50, 80 and 100% marks, and each top-up paid: one e-mail each, to the billing contact and these recipients."
            }
            @match &mail.alerts {
                Err(why) => { p.error role="status" { "The billing alerts cannot be shown now: " (why) } }
                Ok((recipients, mails)) => {
                    @if recipients.is_empty() {
                        p #alert-recipients { "Nobody gets alerts by e-mail." }
                    } @else {
                        p #alert-recipients { "Alerts go to " (recipients.join(", ")) "." }
                    }
                    @if session.role.may_configure() {
                        form method="post" action="/reports/alerts" {
                            fieldset {
                                legend { "Alert recipients" }
                                (csrf_field(session))
                                label for="alert-addresses" { "One address per line (up to 20); none stops the alerts" }
                                textarea #alert-addresses name="recipients" rows="4" cols="40" { (recipients.join("\n")) }
                                p { button type="submit" { "Save the recipients" } }
                            }
                        }
                    }
                    h3 { "Alerts sent" }
                    @if mails.is_empty() { p { "None yet." } } @else {
                        table #alert-mails {
                            thead { tr { th { "Happened" } th { "Alert" } th { "Account" } th { "Status" } th { "Attempts" } th { "Last error" } } }
                            tbody {
                                @for alert in mails {
                                    tr {
                                        td { (names::instant(alert.occurred_at.as_ref())) }
                                        td { (names::alert_kind(alert.kind())) }
                                        td { a href={ "/accounts/" (alert.account_id) } { code { (alert.account_id) } } }
                                        td { @if alert.status() == invoicing::AlertMailStatus::Failed { strong { "failed" } } @else { (names::mail_status(alert.status())) } }
                                        td { (alert.attempts) }
                                        td { (alert.last_error) }
                                    }
                                }
                            }
                        }
                    }
                }
            }
        },
    )
}

pub fn top_ups(session: &Session, waiting: &[orchestrator::TopUp], failed: &[orchestrator::TopUp]) -> Markup {
    let table = |top_ups: &[orchestrator::TopUp], id: &str| {
        html! {
            @if top_ups.is_empty() { p { "None." } } @else {
                table id=(id) {
                    thead { tr { th { "Created" } th { "Account" } th.amount { "Credits" } th.amount { "Amount" } th { "Step" } th { "Why" } th { "Invoice" } } }
                    tbody {
                        @for top_up in top_ups {
                            tr {
                                td { (names::instant(top_up.created_at.as_ref())) }
                                td { a href={ "/accounts/" (top_up.account_id) } { code { (top_up.account_id) } } }
                                td.amount { (top_up.credits) }
                                td.amount { (top_up.amount) " " (top_up.currency) }
                                td { (names::step(top_up.step())) }
                                td { (top_up.reason) }
                                td { @if !top_up.invoice_id.is_empty() { a href={ "/invoices/" (top_up.invoice_id) } { "invoice" } } }
                            }
                        }
                    }
                }
            }
        }
    };
    page(
        "Top-ups",
        Some(session),
        html! {
            h2 { "Waiting for a person" }
            p { "A reconcile-later payment to confirm, or a step that kept failing past its retries." }
            (table(waiting, "waiting"))
            h2 { "Failed" }
            (table(failed, "failed"))
        },
    )
}
