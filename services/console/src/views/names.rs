//! Readable names of the services' enums and instants, as pages show them.

use reservoir_proto::wallet;

fn readable(name: &'static str, prefix: &str) -> String {
    name.strip_prefix(prefix).unwrap_or(name).replace('_', " ").to_lowercase()
}

pub fn overdraft(policy: wallet::OverdraftPolicy) -> String {
    readable(policy.as_str_name(), "OVERDRAFT_POLICY_")
}

pub fn status(status: wallet::AccountStatus) -> String {
    readable(status.as_str_name(), "ACCOUNT_STATUS_")
}

pub fn grant_kind(kind: wallet::GrantKind) -> String {
    readable(kind.as_str_name(), "GRANT_KIND_")
}

pub fn grant_status(status: wallet::GrantStatus) -> String {
    readable(status.as_str_name(), "GRANT_STATUS_")
}

pub fn entry_kind(kind: wallet::EntryKind) -> String {
    readable(kind.as_str_name(), "ENTRY_KIND_")
}

/// An instant in UTC to the minute; empty when unset.
pub fn instant(timestamp: Option<&prost_types::Timestamp>) -> String {
    timestamp
        .and_then(reservoir_common::time::from_timestamp)
        .map(|at| at.format("%Y-%m-%d %H:%M UTC").to_string())
        .unwrap_or_default()
}

pub fn invoice_status(status: reservoir_proto::invoicing::InvoiceStatus) -> String {
    readable(status.as_str_name(), "INVOICE_STATUS_")
}

pub fn invoice_kind(kind: reservoir_proto::invoicing::InvoiceKind) -> String {
    readable(kind.as_str_name(), "INVOICE_KIND_")
}

pub fn line_kind(kind: reservoir_proto::invoicing::LineKind) -> String {
    readable(kind.as_str_name(), "LINE_KIND_")
}

pub fn frequency(frequency: reservoir_proto::invoicing::ReportFrequency) -> String {
    readable(frequency.as_str_name(), "REPORT_FREQUENCY_")
}

pub fn run_status(status: reservoir_proto::invoicing::ReportRunStatus) -> String {
    readable(status.as_str_name(), "REPORT_RUN_STATUS_")
}

pub fn alert_kind(kind: reservoir_proto::invoicing::AlertKind) -> String {
    readable(kind.as_str_name(), "ALERT_KIND_")
}

pub fn mail_status(status: reservoir_proto::invoicing::AlertMailStatus) -> String {
    readable(status.as_str_name(), "ALERT_MAIL_STATUS_")
}

pub fn top_up_status(status: reservoir_proto::orchestrator::TopUpStatus) -> String {
    readable(status.as_str_name(), "TOP_UP_STATUS_")
}

pub fn step(step: reservoir_proto::orchestrator::Step) -> String {
    readable(step.as_str_name(), "STEP_")
}

pub fn delivery_status(status: reservoir_proto::orchestrator::DeliveryStatus) -> String {
    readable(status.as_str_name(), "DELIVERY_STATUS_")
}
