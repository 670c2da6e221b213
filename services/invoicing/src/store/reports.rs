//! Report schedules and the runs they make. A run is stored when its period
//! ends, in the transaction that moves the schedule on (conditioned on the
//! instant read, so one replica stores it), and is sent until it is SENT.

use chrono::{DateTime, Utc};
use reservoir_common::auth::TenantId;
use reservoir_common::db::WriteTransaction;
use sea_orm::sea_query::{Expr, OnConflict};
use sea_orm::{ActiveValue::Set, ColumnTrait, EntityTrait, QueryFilter, QueryOrder, QuerySelect};
use uuid::Uuid;

use super::Store;
use super::entities::{report_run, report_schedule};
use crate::domain::Frequency;
use crate::error::InvoicingError;

#[derive(Debug, Clone, PartialEq)]
pub struct ReportSchedule {
    pub tenant_id: TenantId,
    pub frequency: Frequency,
    pub billing_contact: String,
    pub recipients: Vec<String>,
    pub enabled: bool,
    pub next_run_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

impl ReportSchedule {
    /// The billing contact first, then the others, each once.
    pub fn all_recipients(&self) -> Vec<String> {
        crate::domain::recipients(&self.recipients, Some(&self.billing_contact))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunStatus {
    Pending,
    Sent,
    Failed,
}

impl RunStatus {
    pub fn name(self) -> &'static str {
        match self {
            Self::Pending => "PENDING",
            Self::Sent => "SENT",
            Self::Failed => "FAILED",
        }
    }

    pub fn parse(name: &str) -> Option<Self> {
        [Self::Pending, Self::Sent, Self::Failed].into_iter().find(|status| status.name() == name)
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct ReportRun {
    pub id: Uuid,
    pub tenant_id: TenantId,
    pub frequency: Frequency,
    pub period_start: DateTime<Utc>,
    pub period_end: DateTime<Utc>,
    pub recipients: Vec<String>,
    pub status: RunStatus,
    pub attempts: u32,
    pub next_attempt_at: DateTime<Utc>,
    pub last_error: String,
    pub created_at: DateTime<Utc>,
    pub sent_at: Option<DateTime<Utc>>,
}

/// A list kept one item a line.
pub(super) fn lines(text: &str) -> Vec<String> {
    text.lines().filter(|line| !line.is_empty()).map(str::to_owned).collect()
}

fn schedule_from(row: report_schedule::Model) -> Result<ReportSchedule, InvoicingError> {
    Ok(ReportSchedule {
        tenant_id: TenantId(row.tenant_id),
        frequency: Frequency::parse(&row.frequency).ok_or_else(|| super::corrupt("report frequency"))?,
        billing_contact: row.billing_contact,
        recipients: lines(&row.recipients),
        enabled: row.enabled,
        next_run_at: row.next_run_at,
        updated_at: row.updated_at,
    })
}

fn run_from(row: report_run::Model) -> Result<ReportRun, InvoicingError> {
    Ok(ReportRun {
        id: row.id,
        tenant_id: TenantId(row.tenant_id),
        frequency: Frequency::parse(&row.frequency).ok_or_else(|| super::corrupt("report frequency"))?,
        period_start: row.period_start,
        period_end: row.period_end,
        recipients: lines(&row.recipients),
        status: RunStatus::parse(&row.status).ok_or_else(|| super::corrupt("report run status"))?,
        attempts: u32::try_from(row.attempts).map_err(|_| super::corrupt("report run attempts"))?,
        next_attempt_at: row.next_attempt_at,
        last_error: row.last_error,
        created_at: row.created_at,
        sent_at: row.sent_at,
    })
}

impl Store {
    pub async fn report_schedule(&self, tenant: TenantId) -> Result<Option<ReportSchedule>, InvoicingError> {
        let row = report_schedule::Entity::find_by_id(tenant.0).one(&self.db).await?;
        row.map(schedule_from).transpose()
    }

    pub async fn save_report_schedule(&self, schedule: &ReportSchedule) -> Result<(), InvoicingError> {
        report_schedule::Entity::insert(report_schedule::ActiveModel {
            tenant_id: Set(schedule.tenant_id.0),
            frequency: Set(schedule.frequency.name().to_owned()),
            billing_contact: Set(schedule.billing_contact.clone()),
            recipients: Set(schedule.recipients.join("\n")),
            enabled: Set(schedule.enabled),
            next_run_at: Set(schedule.next_run_at),
            updated_at: Set(schedule.updated_at),
        })
        .on_conflict(
            OnConflict::column(report_schedule::Column::TenantId)
                .update_columns([
                    report_schedule::Column::Frequency,
                    report_schedule::Column::BillingContact,
                    report_schedule::Column::Recipients,
                    report_schedule::Column::Enabled,
                    report_schedule::Column::NextRunAt,
                    report_schedule::Column::UpdatedAt,
                ])
                .to_owned(),
        )
        .exec_without_returning(&self.db)
        .await?;
        Ok(())
    }

    pub async fn due_report_schedules(&self, now: DateTime<Utc>) -> Result<Vec<ReportSchedule>, InvoicingError> {
        let rows = report_schedule::Entity::find()
            .filter(report_schedule::Column::Enabled.eq(true))
            .filter(report_schedule::Column::NextRunAt.lte(now))
            .limit(100)
            .all(&self.db)
            .await?;
        rows.into_iter().map(schedule_from).collect()
    }

    /// Stores the run of the period ending at `end` and moves the schedule
    /// to `next`, if the schedule is still at the instant read; false when
    /// another replica did it first.
    pub async fn start_report_run(
        &self,
        schedule: &ReportSchedule,
        end: DateTime<Utc>,
        next: DateTime<Utc>,
        now: DateTime<Utc>,
    ) -> Result<bool, InvoicingError> {
        let WriteTransaction { transaction, turn: _turn } = self.database.begin_write().await?;
        let moved = report_schedule::Entity::update_many()
            .col_expr(report_schedule::Column::NextRunAt, Expr::value(next))
            .filter(report_schedule::Column::TenantId.eq(schedule.tenant_id.0))
            .filter(report_schedule::Column::NextRunAt.eq(schedule.next_run_at))
            .exec(&transaction)
            .await?;
        if moved.rows_affected != 1 {
            return Ok(false);
        }
        let (start, end) = schedule.frequency.period_ending(end);
        report_run::Entity::insert(report_run::ActiveModel {
            id: Set(Uuid::now_v7()),
            tenant_id: Set(schedule.tenant_id.0),
            frequency: Set(schedule.frequency.name().to_owned()),
            period_start: Set(start),
            period_end: Set(end),
            recipients: Set(schedule.all_recipients().join("\n")),
            status: Set(RunStatus::Pending.name().to_owned()),
            attempts: Set(0),
            next_attempt_at: Set(now),
            last_error: Set(String::new()),
            created_at: Set(now),
            sent_at: Set(None),
        })
        .on_conflict(
            OnConflict::columns([
                report_run::Column::TenantId,
                report_run::Column::Frequency,
                report_run::Column::PeriodStart,
            ])
            .do_nothing()
            .to_owned(),
        )
        .exec_without_returning(&transaction)
        .await?;
        transaction.commit().await?;
        Ok(true)
    }

    pub async fn pending_report_runs(&self, now: DateTime<Utc>) -> Result<Vec<ReportRun>, InvoicingError> {
        let rows = report_run::Entity::find()
            .filter(report_run::Column::Status.eq(RunStatus::Pending.name()))
            .filter(report_run::Column::NextAttemptAt.lte(now))
            .order_by_asc(report_run::Column::NextAttemptAt)
            .limit(20)
            .all(&self.db)
            .await?;
        rows.into_iter().map(run_from).collect()
    }

    /// Takes a pending run for one attempt by moving its next attempt to
    /// `retry_at`; false when another replica took it first.
    pub async fn claim_report_run(&self, run: &ReportRun, retry_at: DateTime<Utc>) -> Result<bool, InvoicingError> {
        let result = report_run::Entity::update_many()
            .col_expr(report_run::Column::NextAttemptAt, Expr::value(retry_at))
            .col_expr(report_run::Column::Attempts, Expr::value(i32::try_from(run.attempts + 1).unwrap_or(i32::MAX)))
            .filter(report_run::Column::Id.eq(run.id))
            .filter(report_run::Column::Status.eq(RunStatus::Pending.name()))
            .filter(report_run::Column::NextAttemptAt.eq(run.next_attempt_at))
            .exec(&self.db)
            .await?;
        Ok(result.rows_affected == 1)
    }

    /// Records an attempt's outcome, if the run is still held by the claim
    /// that made `run.attempts + 1`; false (nothing written) otherwise.
    /// `at` is when it was sent, or when to try again.
    pub async fn finish_report_run(
        &self,
        run: &ReportRun,
        status: RunStatus,
        error: &str,
        at: DateTime<Utc>,
    ) -> Result<bool, InvoicingError> {
        let mut update = report_run::Entity::update_many()
            .col_expr(report_run::Column::Status, Expr::value(status.name()))
            .col_expr(report_run::Column::LastError, Expr::value(error.to_owned()));
        update = if status == RunStatus::Sent {
            update.col_expr(report_run::Column::SentAt, Expr::value(Some(at)))
        } else {
            update.col_expr(report_run::Column::NextAttemptAt, Expr::value(at))
        };
        let result = update
            .filter(report_run::Column::Id.eq(run.id))
            .filter(report_run::Column::Status.eq(RunStatus::Pending.name()))
            .filter(report_run::Column::Attempts.eq(i32::try_from(run.attempts + 1).unwrap_or(i32::MAX)))
            .exec(&self.db)
            .await?;
        Ok(result.rows_affected == 1)
    }

    pub async fn report_runs(&self, tenant: TenantId, limit: u64) -> Result<Vec<ReportRun>, InvoicingError> {
        let rows = report_run::Entity::find()
            .filter(report_run::Column::TenantId.eq(tenant.0))
            .order_by_desc(report_run::Column::PeriodStart)
            .limit(limit)
            .all(&self.db)
            .await?;
        rows.into_iter().map(run_from).collect()
    }
}
