//! Scheduled billing reports: the schedule's handlers, and the worker step
//! that makes each period's report when it ends and emails it.

use chrono::{DateTime, Duration, Utc};
use reservoir_common::auth::{TenantId, tenant_of};
use reservoir_common::time::to_timestamp;
use reservoir_common::validate::Violations;
use reservoir_proto::invoicing as pb;
use tonic::{Request, Response, Status};

use super::InvoicingApi;
use super::convert::report_csv;
use crate::clients::mail::{Csv, is_address};
use crate::domain::Frequency;
use crate::error::InvoicingError;
use crate::store::{ReportRun, ReportSchedule, RunStatus};

const RECIPIENTS_MAX: usize = 20;
const ADDRESS_LENGTH_MAX: usize = 254;
/// Attempts at sending one report before it is given up: the waits double
/// from a minute to an hour, so about three days.
const SEND_ATTEMPTS_MAX: u32 = 80;
/// How long a replica holds a run it is making and sending.
const SEND_LEASE_MINUTES: i64 = 15;
/// Accounts whose usage one report lists at most.
const USAGE_ACCOUNTS_MAX: usize = 1_000;

fn frequency_to_pb(frequency: Frequency) -> pb::ReportFrequency {
    match frequency {
        Frequency::Daily => pb::ReportFrequency::Daily,
        Frequency::Weekly => pb::ReportFrequency::Weekly,
        Frequency::Monthly => pb::ReportFrequency::Monthly,
    }
}

fn schedule_to_pb(schedule: &ReportSchedule) -> pb::ReportSchedule {
    pb::ReportSchedule {
        frequency: frequency_to_pb(schedule.frequency).into(),
        billing_contact: schedule.billing_contact.clone(),
        recipients: schedule.recipients.clone(),
        enabled: schedule.enabled,
        next_run_at: Some(to_timestamp(schedule.next_run_at)),
    }
}

fn run_to_pb(run: &ReportRun) -> pb::ReportRun {
    pb::ReportRun {
        id: run.id.to_string(),
        frequency: frequency_to_pb(run.frequency).into(),
        period_start: Some(to_timestamp(run.period_start)),
        period_end: Some(to_timestamp(run.period_end)),
        recipients: run.recipients.clone(),
        status: match run.status {
            RunStatus::Pending => pb::ReportRunStatus::Pending,
            RunStatus::Sent => pb::ReportRunStatus::Sent,
            RunStatus::Failed => pb::ReportRunStatus::Failed,
        }
        .into(),
        attempts: run.attempts,
        last_error: run.last_error.clone(),
        sent_at: run.sent_at.map(to_timestamp),
    }
}

impl InvoicingApi {
    pub(super) async fn get_report_schedule_impl(
        &self,
        request: Request<pb::GetReportScheduleRequest>,
    ) -> Result<Response<pb::GetReportScheduleResponse>, Status> {
        let tenant = tenant_of(&request)?;
        let schedule = self.store.report_schedule(tenant).await?;
        Ok(Response::new(pb::GetReportScheduleResponse { schedule: schedule.as_ref().map(schedule_to_pb) }))
    }

    pub(super) async fn update_report_schedule_impl(
        &self,
        request: Request<pb::UpdateReportScheduleRequest>,
    ) -> Result<Response<pb::UpdateReportScheduleResponse>, Status> {
        let tenant = tenant_of(&request)?;
        let Some(wanted) = request.into_inner().schedule else {
            return Err(InvoicingError::field("schedule", "is required").into());
        };
        let mut violations = Violations::default();
        let frequency = match pb::ReportFrequency::try_from(wanted.frequency) {
            Ok(pb::ReportFrequency::Daily) => Some(Frequency::Daily),
            Ok(pb::ReportFrequency::Weekly) => Some(Frequency::Weekly),
            Ok(pb::ReportFrequency::Monthly) => Some(Frequency::Monthly),
            Ok(pb::ReportFrequency::Unspecified) | Err(_) => {
                violations.add("schedule.frequency", "must be DAILY, WEEKLY or MONTHLY");
                None
            }
        };
        violations.required_text("schedule.billing_contact", &wanted.billing_contact, ADDRESS_LENGTH_MAX);
        if !wanted.billing_contact.is_empty() && !is_address(&wanted.billing_contact) {
            violations.add("schedule.billing_contact", "is not an email address");
        }
        if wanted.recipients.len() > RECIPIENTS_MAX {
            violations.add("schedule.recipients", format!("has more than {RECIPIENTS_MAX} addresses"));
        }
        for (index, recipient) in wanted.recipients.iter().enumerate() {
            if recipient.len() > ADDRESS_LENGTH_MAX || !is_address(recipient) {
                violations.add(format!("schedule.recipients[{index}]"), "is not an email address");
            }
        }
        violations.finish()?;
        let Some(frequency) = frequency else {
            return Err(InvoicingError::internal("validated frequency missing").into());
        };
        let now = self.now();
        let current = self.store.report_schedule(tenant).await?;
        // A new schedule, a new frequency or a schedule switched back on
        // starts with the period under way; any other change keeps the
        // schedule where it is, so a period that just ended is still reported.
        let next_run_at = match &current {
            Some(current) if current.frequency == frequency && (current.enabled || !wanted.enabled) => {
                current.next_run_at
            }
            _ => frequency.next_start(now),
        };
        let schedule = ReportSchedule {
            tenant_id: tenant,
            frequency,
            billing_contact: wanted.billing_contact,
            recipients: wanted.recipients,
            enabled: wanted.enabled,
            next_run_at,
            updated_at: now,
        };
        self.store.save_report_schedule(&schedule).await?;
        Ok(Response::new(pb::UpdateReportScheduleResponse { schedule: Some(schedule_to_pb(&schedule)) }))
    }

    pub(super) async fn list_report_runs_impl(
        &self,
        request: Request<pb::ListReportRunsRequest>,
    ) -> Result<Response<pb::ListReportRunsResponse>, Status> {
        let tenant = tenant_of(&request)?;
        let page_size = match request.get_ref().page_size {
            0 => 100,
            size if size > 1_000 => {
                return Err(InvoicingError::field("page_size", "must be at most 1000").into());
            }
            size => size,
        };
        let runs = self.store.report_runs(tenant, u64::from(page_size)).await?;
        Ok(Response::new(pb::ListReportRunsResponse { runs: runs.iter().map(run_to_pb).collect() }))
    }

    /// Makes the report of every period that has ended, then sends every
    /// report due. A report is sent at least once: a replica that stops
    /// after the mail server took it but before it was marked sent leaves it
    /// to be sent again.
    pub async fn send_due_reports(&self, now: DateTime<Utc>) -> Result<(), InvoicingError> {
        for schedule in self.store.due_report_schedules(now).await? {
            // One period a pass: after a long stop, every period missed is
            // made in turn.
            let end = schedule.next_run_at;
            let next = schedule.frequency.next_start(end);
            if self.store.start_report_run(&schedule, end, next, now).await? {
                tracing::info!(tenant = %schedule.tenant_id, frequency = schedule.frequency.name(), %end, "report made");
            }
        }
        for run in self.store.pending_report_runs(now).await? {
            // Held long enough to build and send it; released with the outcome.
            if !self.store.claim_report_run(&run, now + Duration::minutes(SEND_LEASE_MINUTES)).await? {
                continue;
            }
            let attempt = run.attempts + 1;
            let finished = match self.send_report(&run).await {
                Ok(()) => self.store.finish_report_run(&run, RunStatus::Sent, "", self.now()).await?,
                Err(error) => {
                    tracing::warn!(%error, run = %run.id, "a scheduled report was not sent");
                    let status = if attempt >= SEND_ATTEMPTS_MAX { RunStatus::Failed } else { RunStatus::Pending };
                    let wait = Duration::minutes(1) * 2_i32.saturating_pow(run.attempts.min(6));
                    let retry_at = self.now() + wait.min(Duration::hours(1));
                    self.store.finish_report_run(&run, status, &error, retry_at).await?
                }
            };
            if !finished {
                tracing::warn!(run = %run.id, "a report outlived its lease; another replica sends it");
            }
        }
        Ok(())
    }

    async fn send_report(&self, run: &ReportRun) -> Result<(), String> {
        let invoices =
            self.store.invoices_in(run.tenant_id, run.period_start, run.period_end).await.map_err(|e| e.to_string())?;
        let invoices_csv = report_csv(&invoices, self.now()).map_err(|error| error.to_string())?;
        let usage = self.usage_csv(run.tenant_id, run.period_start, run.period_end).await.map_err(|e| e.to_string())?;
        let subject = format!(
            "Billing report, {} to {}",
            run.period_start.format("%Y-%m-%d"),
            (run.period_end - Duration::days(1)).format("%Y-%m-%d")
        );
        let body = format!(
            "Your {} billing report for {} to {} (UTC) is attached:\n\
             invoices.csv lists the {} invoices of the period, line by line;\n\
             usage.csv lists each account's usage by meter.\n",
            run.frequency.name().to_lowercase(),
            run.period_start.format("%Y-%m-%d"),
            (run.period_end - Duration::days(1)).format("%Y-%m-%d"),
            invoices.len(),
        );
        let files = vec![
            Csv { name: "invoices.csv".into(), text: invoices_csv },
            Csv { name: "usage.csv".into(), text: usage },
        ];
        self.mailer.send(&run.recipients, &subject, &body, files).await
    }

    async fn usage_csv(
        &self,
        tenant: TenantId,
        start: DateTime<Utc>,
        end: DateTime<Utc>,
    ) -> Result<String, InvoicingError> {
        let mut writer = reservoir_common::spreadsheet::SafeWriter::new();
        let csv_error = |error: csv::Error| InvoicingError::internal(format!("writing CSV: {error}"));
        writer
            .write_record([
                "account_id",
                "unit",
                "meter_code",
                "dimension_key",
                "dimension_value",
                "charged_quantity",
                "charged_credits",
                "uncovered_credits",
            ])
            .map_err(csv_error)?;
        let priced = self.upstream.priced_dimensions(tenant).await?;
        for account in self.upstream.accounts(tenant).await?.into_iter().take(USAGE_ACCOUNTS_MAX) {
            for line in self.upstream.usage(tenant, account.id, start, end, &priced).await? {
                writer
                    .write_record([
                        account.id.to_string(),
                        account.unit.code().to_owned(),
                        line.meter_code,
                        line.dimension_key,
                        line.dimension_value,
                        line.charged_quantity.to_string(),
                        line.charged_credits.to_string(),
                        line.uncovered_credits.to_string(),
                    ])
                    .map_err(csv_error)?;
            }
        }
        let bytes = writer.into_inner().map_err(|error| InvoicingError::internal(error.to_string()))?;
        String::from_utf8(bytes).map_err(|error| InvoicingError::internal(error.to_string()))
    }
}
