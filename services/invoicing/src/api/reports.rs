//! Scheduled billing reports: the schedule's handlers (the reports are made
//! and sent by `usecases::reports`).

use reservoir_common::auth::tenant_of;
use reservoir_common::paging::page_size;
use reservoir_common::time::to_timestamp;
use reservoir_common::validate::Violations;
use reservoir_proto::invoicing as pb;
use tonic::{Request, Response, Status};

use super::InvoicingApi;
use crate::clients::mail::is_address;
use crate::domain::{Frequency, RECIPIENTS_MAX};
use crate::error::InvoicingError;
use crate::store::{ReportRun, ReportSchedule, RunStatus};

const ADDRESS_LENGTH_MAX: usize = 254;

/// Checks a list of addresses named `field`: at most [`RECIPIENTS_MAX`],
/// each an email address.
pub(super) fn check_recipients(violations: &mut Violations, field: &str, recipients: &[String]) {
    if recipients.len() > RECIPIENTS_MAX {
        violations.add(field, format!("has more than {RECIPIENTS_MAX} addresses"));
    }
    for (index, recipient) in recipients.iter().enumerate() {
        if recipient.len() > ADDRESS_LENGTH_MAX || !is_address(recipient) {
            violations.add(format!("{field}[{index}]"), "is not an email address");
        }
    }
}

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
        check_recipients(&mut violations, "schedule.recipients", &wanted.recipients);
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
        let mut violations = Violations::default();
        let page_size = page_size(&mut violations, request.get_ref().page_size);
        violations.finish()?;
        let runs = self.store.report_runs(tenant, u64::from(page_size)).await?;
        Ok(Response::new(pb::ListReportRunsResponse { runs: runs.iter().map(run_to_pb).collect() }))
    }
}
