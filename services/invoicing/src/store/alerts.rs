//! Billing alerts: a tenant's recipients, the mails made (one per event,
//! stored with how far that source has been read, in one transaction), and
//! each mail's attempts, claimed and finished as a report run's are.

use chrono::{DateTime, Utc};
use reservoir_common::auth::TenantId;
use reservoir_common::db::WriteTransaction;
use reservoir_common::ids::AccountId;
use sea_orm::sea_query::{Expr, OnConflict};
use sea_orm::{ActiveValue::Set, ColumnTrait, ConnectionTrait, EntityTrait, QueryFilter, QueryOrder, QuerySelect};
use uuid::Uuid;

use super::entities::{alert_cursor, alert_mail, billing_alerts};
use super::reports::lines;
use super::{RunStatus, Store, corrupt};
use crate::domain::{Alert, AlertKind};
use crate::error::InvoicingError;

/// Where the events alerted on come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AlertSource {
    /// The wallet's events: balances and spending caps.
    Wallet,
    /// Invoicing's own: top-ups paid.
    Invoicing,
}

impl AlertSource {
    pub fn name(self) -> &'static str {
        match self {
            Self::Wallet => "wallet",
            Self::Invoicing => "invoicing",
        }
    }
}

/// Who gets a tenant's alerts, and since when.
#[derive(Debug, Clone, PartialEq)]
pub struct AlertSettings {
    pub recipients: Vec<String>,
    /// Events before this instant are not mailed: the recipients were set
    /// (from none) then.
    pub enabled_at: DateTime<Utc>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct AlertMail {
    pub id: Uuid,
    pub tenant_id: TenantId,
    pub kind: AlertKind,
    pub account_id: AccountId,
    pub subject: String,
    pub body: String,
    pub recipients: Vec<String>,
    pub status: RunStatus,
    pub attempts: u32,
    pub next_attempt_at: DateTime<Utc>,
    pub last_error: String,
    pub occurred_at: DateTime<Utc>,
    pub sent_at: Option<DateTime<Utc>>,
}

fn mail_from(row: alert_mail::Model) -> Result<AlertMail, InvoicingError> {
    Ok(AlertMail {
        id: row.id,
        tenant_id: TenantId(row.tenant_id),
        kind: AlertKind::parse(&row.kind).ok_or_else(|| corrupt("alert kind"))?,
        account_id: AccountId(row.account_id),
        subject: row.subject,
        body: row.body,
        recipients: lines(&row.recipients),
        status: RunStatus::parse(&row.status).ok_or_else(|| corrupt("alert mail status"))?,
        attempts: u32::try_from(row.attempts).map_err(|_| corrupt("alert mail attempts"))?,
        next_attempt_at: row.next_attempt_at,
        last_error: row.last_error,
        occurred_at: row.occurred_at,
        sent_at: row.sent_at,
    })
}

fn sequence_value(sequence: u64) -> Result<i64, InvoicingError> {
    i64::try_from(sequence)
        .map_err(|_| InvoicingError::internal(format!("event sequence {sequence} does not fit a column")))
}

async fn save_cursor(
    connection: &impl ConnectionTrait,
    tenant: TenantId,
    source: AlertSource,
    after: u64,
) -> Result<(), InvoicingError> {
    alert_cursor::Entity::insert(alert_cursor::ActiveModel {
        tenant_id: Set(tenant.0),
        source: Set(source.name().to_owned()),
        after_sequence: Set(sequence_value(after)?),
    })
    .on_conflict(
        // Never back: a replica that read less than another leaves the cursor where it is.
        OnConflict::columns([alert_cursor::Column::TenantId, alert_cursor::Column::Source])
            .value(
                alert_cursor::Column::AfterSequence,
                Expr::cust(
                    "CASE WHEN excluded.after_sequence > alert_cursors.after_sequence \
                     THEN excluded.after_sequence ELSE alert_cursors.after_sequence END",
                ),
            )
            .to_owned(),
    )
    .exec_without_returning(connection)
    .await?;
    Ok(())
}

fn settings_from(row: billing_alerts::Model) -> AlertSettings {
    AlertSettings { recipients: lines(&row.recipients), enabled_at: row.enabled_at }
}

impl Store {
    pub async fn alert_settings(&self, tenant: TenantId) -> Result<Option<AlertSettings>, InvoicingError> {
        let row = billing_alerts::Entity::find_by_id(tenant.0).one(&self.db).await?;
        Ok(row.map(settings_from))
    }

    /// Saves a tenant's recipients. Alerts start from `now` when there were
    /// none before; a change of recipients keeps the instant they started.
    pub async fn save_alert_settings(
        &self,
        tenant: TenantId,
        recipients: &[String],
        now: DateTime<Utc>,
    ) -> Result<AlertSettings, InvoicingError> {
        let enabled_at = match self.alert_settings(tenant).await? {
            Some(before) if !before.recipients.is_empty() => before.enabled_at,
            _ => now,
        };
        billing_alerts::Entity::insert(billing_alerts::ActiveModel {
            tenant_id: Set(tenant.0),
            recipients: Set(recipients.join("\n")),
            enabled_at: Set(enabled_at),
            updated_at: Set(now),
        })
        .on_conflict(
            OnConflict::column(billing_alerts::Column::TenantId)
                .update_columns([
                    billing_alerts::Column::Recipients,
                    billing_alerts::Column::EnabledAt,
                    billing_alerts::Column::UpdatedAt,
                ])
                .to_owned(),
        )
        .exec_without_returning(&self.db)
        .await?;
        if recipients.is_empty() {
            // Turned off: what was still to send goes to nobody.
            alert_mail::Entity::update_many()
                .col_expr(alert_mail::Column::Status, Expr::value(RunStatus::Failed.name()))
                .col_expr(
                    alert_mail::Column::LastError,
                    Expr::value("the tenant's alerts were turned off before it was sent"),
                )
                .filter(alert_mail::Column::TenantId.eq(tenant.0))
                .filter(alert_mail::Column::Status.eq(RunStatus::Pending.name()))
                .exec(&self.db)
                .await?;
        }
        Ok(AlertSettings { recipients: recipients.to_vec(), enabled_at })
    }

    /// Tenants with someone to alert.
    pub async fn tenants_with_alerts(&self) -> Result<Vec<(TenantId, AlertSettings)>, InvoicingError> {
        let rows =
            billing_alerts::Entity::find().filter(billing_alerts::Column::Recipients.ne("")).all(&self.db).await?;
        Ok(rows.into_iter().map(|row| (TenantId(row.tenant_id), settings_from(row))).collect())
    }

    /// How far a tenant's events from `source` have been read for alerts.
    pub async fn alert_cursor(&self, tenant: TenantId, source: AlertSource) -> Result<u64, InvoicingError> {
        let row = alert_cursor::Entity::find_by_id((tenant.0, source.name().to_owned())).one(&self.db).await?;
        row.map_or(Ok(0), |row| u64::try_from(row.after_sequence).map_err(|_| corrupt("alert cursor")))
    }

    pub async fn save_alert_cursor(
        &self,
        tenant: TenantId,
        source: AlertSource,
        after: u64,
    ) -> Result<(), InvoicingError> {
        save_cursor(&self.db, tenant, source, after).await
    }

    /// Stores the mail of the event `sequence` of `source` and moves the
    /// cursor past it, together; an event read again makes no second mail.
    pub async fn record_alert(
        &self,
        tenant: TenantId,
        source: AlertSource,
        sequence: u64,
        alert: &Alert,
        recipients: &[String],
        now: DateTime<Utc>,
    ) -> Result<(), InvoicingError> {
        let (subject, body) = alert.mail();
        let WriteTransaction { transaction, turn: _turn } = self.database.begin_write().await?;
        alert_mail::Entity::insert(alert_mail::ActiveModel {
            id: Set(Uuid::now_v7()),
            tenant_id: Set(tenant.0),
            source: Set(source.name().to_owned()),
            sequence: Set(sequence_value(sequence)?),
            kind: Set(alert.kind.name().to_owned()),
            account_id: Set(alert.account_id.0),
            subject: Set(subject),
            body: Set(body),
            recipients: Set(recipients.join("\n")),
            status: Set(RunStatus::Pending.name().to_owned()),
            attempts: Set(0),
            next_attempt_at: Set(now),
            last_error: Set(String::new()),
            occurred_at: Set(alert.occurred_at),
            created_at: Set(now),
            sent_at: Set(None),
        })
        .on_conflict(
            OnConflict::columns([
                alert_mail::Column::TenantId,
                alert_mail::Column::Source,
                alert_mail::Column::Sequence,
            ])
            .do_nothing()
            .to_owned(),
        )
        .exec_without_returning(&transaction)
        .await?;
        save_cursor(&transaction, tenant, source, sequence).await?;
        transaction.commit().await?;
        Ok(())
    }

    pub async fn pending_alert_mails(&self, now: DateTime<Utc>) -> Result<Vec<AlertMail>, InvoicingError> {
        let rows = alert_mail::Entity::find()
            .filter(alert_mail::Column::Status.eq(RunStatus::Pending.name()))
            .filter(alert_mail::Column::NextAttemptAt.lte(now))
            .order_by_asc(alert_mail::Column::NextAttemptAt)
            .limit(50)
            .all(&self.db)
            .await?;
        rows.into_iter().map(mail_from).collect()
    }

    /// Takes a pending mail for one attempt by moving its next attempt to
    /// `retry_at`; false when another replica took it first.
    pub async fn claim_alert_mail(&self, mail: &AlertMail, retry_at: DateTime<Utc>) -> Result<bool, InvoicingError> {
        let result = alert_mail::Entity::update_many()
            .col_expr(alert_mail::Column::NextAttemptAt, Expr::value(retry_at))
            .col_expr(alert_mail::Column::Attempts, Expr::value(i32::try_from(mail.attempts + 1).unwrap_or(i32::MAX)))
            .filter(alert_mail::Column::Id.eq(mail.id))
            .filter(alert_mail::Column::Status.eq(RunStatus::Pending.name()))
            .filter(alert_mail::Column::NextAttemptAt.eq(mail.next_attempt_at))
            .exec(&self.db)
            .await?;
        Ok(result.rows_affected == 1)
    }

    /// Records an attempt's outcome, if the mail is still held by the claim
    /// that made `mail.attempts + 1`; false (nothing written) otherwise.
    /// `at` is when it was sent, or when to try again.
    pub async fn finish_alert_mail(
        &self,
        mail: &AlertMail,
        status: RunStatus,
        error: &str,
        at: DateTime<Utc>,
    ) -> Result<bool, InvoicingError> {
        let mut update = alert_mail::Entity::update_many()
            .col_expr(alert_mail::Column::Status, Expr::value(status.name()))
            .col_expr(alert_mail::Column::LastError, Expr::value(error.to_owned()));
        update = if status == RunStatus::Sent {
            update.col_expr(alert_mail::Column::SentAt, Expr::value(Some(at)))
        } else {
            update.col_expr(alert_mail::Column::NextAttemptAt, Expr::value(at))
        };
        let result = update
            .filter(alert_mail::Column::Id.eq(mail.id))
            .filter(alert_mail::Column::Status.eq(RunStatus::Pending.name()))
            .filter(alert_mail::Column::Attempts.eq(i32::try_from(mail.attempts + 1).unwrap_or(i32::MAX)))
            .exec(&self.db)
            .await?;
        Ok(result.rows_affected == 1)
    }

    /// A tenant's alert mails, newest first.
    pub async fn alert_mails(&self, tenant: TenantId, limit: u64) -> Result<Vec<AlertMail>, InvoicingError> {
        let rows = alert_mail::Entity::find()
            .filter(alert_mail::Column::TenantId.eq(tenant.0))
            .order_by_desc(alert_mail::Column::CreatedAt)
            .order_by_desc(alert_mail::Column::Id)
            .limit(limit)
            .all(&self.db)
            .await?;
        rows.into_iter().map(mail_from).collect()
    }
}
