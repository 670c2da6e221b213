//! Webhook endpoints, the events kept for them, deliveries and attempts.
//! An event becomes one message (its id is what receivers deduplicate by)
//! and one delivery per endpoint that wants it, written with the cursor of
//! the stream it came from, so a follower that stops half way neither skips
//! nor doubles an event. A delivery is attempted by whoever claims it with a
//! conditional update; an attempt's outcome is written only by its claimer.

use chrono::{DateTime, Utc};
use reservoir_common::auth::TenantId;
use reservoir_common::db::{WriteTransaction, is_unique_violation};
use sea_orm::sea_query::{Expr, OnConflict};
use sea_orm::{
    ActiveValue::Set, ColumnTrait, Condition, EntityTrait, PaginatorTrait, QueryFilter, QueryOrder, QuerySelect,
};
use uuid::Uuid;

use super::entities::{webhook_attempt, webhook_delivery, webhook_endpoint, webhook_message};
use super::events::save_cursor_on;
use super::{Store, corrupt};
use crate::error::OrchestratorError;

/// An endpoint as stored. The secret is kept in the clear: signing needs it.
#[derive(Debug, Clone, PartialEq)]
pub struct EndpointRow {
    pub id: Uuid,
    pub tenant_id: TenantId,
    pub url: String,
    pub description: String,
    /// Empty for every type.
    pub event_types: Vec<String>,
    pub secret: String,
    /// Earlier secrets that still sign until their instant, newest first.
    pub previous_secrets: Vec<(String, DateTime<Utc>)>,
    /// The latest of those instants.
    pub previous_secret_expires_at: Option<DateTime<Utc>>,
    pub enabled: bool,
    pub idempotency_key: String,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

impl EndpointRow {
    /// Whether an event of this type, from this instant, goes to the
    /// endpoint: it must be enabled, ask for the type, and have existed for
    /// a moment then (a new endpoint is not sent the tenant's history, and
    /// every replica's follower has read it before its first event).
    pub fn wants(&self, event_type: &str, occurred_at: DateTime<Utc>) -> bool {
        let fresh = chrono::Duration::from_std(crate::domain::ENDPOINTS_FRESH_FOR).unwrap_or_default();
        self.enabled
            && occurred_at >= self.created_at + fresh
            && (self.event_types.is_empty() || self.event_types.iter().any(|wanted| wanted == event_type))
    }

    /// The secrets that sign a request at `now`: the current one, and the
    /// previous one during its grace period.
    pub fn signing_secrets(&self, now: DateTime<Utc>) -> Vec<&str> {
        let mut secrets = vec![self.secret.as_str()];
        secrets
            .extend(self.previous_secrets.iter().filter(|(_, until)| *until > now).map(|(secret, _)| secret.as_str()));
        secrets
    }
}

/// An event to deliver, from one of the sources followed.
#[derive(Debug, Clone, PartialEq)]
pub struct WebhookMessage {
    pub id: Uuid,
    pub source: &'static str,
    pub source_sequence: u64,
    pub account_id: String,
    pub event_type: String,
    pub occurred_at: DateTime<Utc>,
    /// The JSON body sent.
    pub body: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeliveryStatus {
    Pending,
    Succeeded,
    Failed,
}

impl DeliveryStatus {
    pub fn name(self) -> &'static str {
        match self {
            Self::Pending => "PENDING",
            Self::Succeeded => "SUCCEEDED",
            Self::Failed => "FAILED",
        }
    }

    fn parse(name: &str) -> Option<Self> {
        match name {
            "PENDING" => Some(Self::Pending),
            "SUCCEEDED" => Some(Self::Succeeded),
            "FAILED" => Some(Self::Failed),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct DeliveryRow {
    pub id: Uuid,
    pub tenant_id: TenantId,
    pub endpoint_id: Uuid,
    pub message_id: Uuid,
    pub account_id: String,
    pub source: String,
    pub source_sequence: u64,
    pub event_type: String,
    pub status: DeliveryStatus,
    pub attempts: u32,
    pub next_attempt_at: DateTime<Utc>,
    pub retry_from: DateTime<Utc>,
    pub claimed_until: Option<DateTime<Utc>>,
    pub last_status_code: Option<u16>,
    pub last_error: String,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct AttemptRow {
    pub id: Uuid,
    pub delivery_id: Uuid,
    pub attempted_at: DateTime<Utc>,
    pub status_code: Option<u16>,
    pub error: String,
    pub duration_ms: u64,
}

/// What one attempt came to, and what happens next.
#[derive(Debug, Clone, PartialEq)]
pub struct AttemptResult {
    pub attempt: AttemptRow,
    pub status: DeliveryStatus,
    pub next_attempt_at: DateTime<Utc>,
}

/// Earlier secrets as stored: one "<RFC 3339 expiry> <secret>" per line.
fn previous_to(previous: &[(String, DateTime<Utc>)]) -> Option<String> {
    if previous.is_empty() {
        return None;
    }
    let lines: Vec<String> =
        previous.iter().map(|(secret, until)| format!("{} {secret}", until.to_rfc3339())).collect();
    Some(lines.join("\n"))
}

fn previous_from(text: Option<&str>) -> Vec<(String, DateTime<Utc>)> {
    text.unwrap_or_default()
        .lines()
        .filter_map(|line| {
            let (until, secret) = line.split_once(' ')?;
            let until = DateTime::parse_from_rfc3339(until).ok()?.to_utc();
            Some((secret.to_owned(), until))
        })
        .collect()
}

fn endpoint_from(row: webhook_endpoint::Model) -> EndpointRow {
    EndpointRow {
        id: row.id,
        tenant_id: TenantId(row.tenant_id),
        url: row.url,
        description: row.description,
        event_types: row.event_types.split(',').filter(|kind| !kind.is_empty()).map(str::to_owned).collect(),
        secret: row.secret,
        previous_secrets: previous_from(row.previous_secret.as_deref()),
        previous_secret_expires_at: row.previous_secret_expires_at,
        enabled: row.enabled,
        idempotency_key: row.idempotency_key,
        created_at: row.created_at,
        updated_at: row.updated_at,
    }
}

fn endpoint_to(row: &EndpointRow) -> webhook_endpoint::ActiveModel {
    webhook_endpoint::ActiveModel {
        id: Set(row.id),
        tenant_id: Set(row.tenant_id.0),
        url: Set(row.url.clone()),
        description: Set(row.description.clone()),
        event_types: Set(row.event_types.join(",")),
        secret: Set(row.secret.clone()),
        previous_secret: Set(previous_to(&row.previous_secrets)),
        previous_secret_expires_at: Set(row.previous_secret_expires_at),
        enabled: Set(row.enabled),
        idempotency_key: Set(row.idempotency_key.clone()),
        created_at: Set(row.created_at),
        updated_at: Set(row.updated_at),
    }
}

fn delivery_from(row: webhook_delivery::Model) -> Result<DeliveryRow, OrchestratorError> {
    Ok(DeliveryRow {
        id: row.id,
        tenant_id: TenantId(row.tenant_id),
        endpoint_id: row.endpoint_id,
        message_id: row.message_id,
        account_id: row.account_id,
        source: row.source,
        source_sequence: u64::try_from(row.source_sequence).unwrap_or(0),
        event_type: row.event_type,
        status: DeliveryStatus::parse(&row.status).ok_or_else(|| corrupt("delivery status"))?,
        attempts: u32::try_from(row.attempts).unwrap_or(0),
        next_attempt_at: row.next_attempt_at,
        retry_from: row.retry_from,
        claimed_until: row.claimed_until,
        last_status_code: row.last_status_code.and_then(|code| u16::try_from(code).ok()),
        last_error: row.last_error,
        created_at: row.created_at,
        updated_at: row.updated_at,
    })
}

fn attempt_from(row: webhook_attempt::Model) -> AttemptRow {
    AttemptRow {
        id: row.id,
        delivery_id: row.delivery_id,
        attempted_at: row.attempted_at,
        status_code: row.status_code.and_then(|code| u16::try_from(code).ok()),
        error: row.error,
        duration_ms: u64::try_from(row.duration_ms).unwrap_or(0),
    }
}

impl Store {
    /// Stores a new endpoint; a retry with the same key gets the first one back.
    pub async fn create_endpoint(&self, row: &EndpointRow) -> Result<EndpointRow, OrchestratorError> {
        let inserted = webhook_endpoint::Entity::insert(endpoint_to(row)).exec_without_returning(&self.db).await;
        match inserted {
            Ok(_) => Ok(row.clone()),
            Err(error) if is_unique_violation(&error) => webhook_endpoint::Entity::find()
                .filter(webhook_endpoint::Column::TenantId.eq(row.tenant_id.0))
                .filter(webhook_endpoint::Column::IdempotencyKey.eq(row.idempotency_key.clone()))
                .one(&self.db)
                .await?
                .map(endpoint_from)
                .ok_or_else(|| OrchestratorError::Conflict("the endpoint was created concurrently".into())),
            Err(error) => Err(error.into()),
        }
    }

    /// Writes an endpoint's URL, description, event types and switch, and
    /// nothing else, so it cannot undo a rotation made meanwhile.
    pub async fn save_endpoint_settings(&self, row: &EndpointRow) -> Result<(), OrchestratorError> {
        webhook_endpoint::Entity::update_many()
            .col_expr(webhook_endpoint::Column::Url, Expr::value(row.url.clone()))
            .col_expr(webhook_endpoint::Column::Description, Expr::value(row.description.clone()))
            .col_expr(webhook_endpoint::Column::EventTypes, Expr::value(row.event_types.join(",")))
            .col_expr(webhook_endpoint::Column::Enabled, Expr::value(row.enabled))
            .col_expr(webhook_endpoint::Column::UpdatedAt, Expr::value(row.updated_at))
            .filter(webhook_endpoint::Column::Id.eq(row.id))
            .filter(webhook_endpoint::Column::TenantId.eq(row.tenant_id.0))
            .exec(&self.db)
            .await?;
        Ok(())
    }

    /// Replaces an endpoint's secret, keeping `previous_secrets` (those still
    /// in their grace period) signing beside it, if the secret is still the
    /// one `row` was read with; false when a concurrent rotation won.
    pub async fn rotate_secret(&self, row: &EndpointRow, old_secret: &str) -> Result<bool, OrchestratorError> {
        let result = webhook_endpoint::Entity::update_many()
            .col_expr(webhook_endpoint::Column::Secret, Expr::value(row.secret.clone()))
            .col_expr(webhook_endpoint::Column::PreviousSecret, Expr::value(previous_to(&row.previous_secrets)))
            .col_expr(webhook_endpoint::Column::PreviousSecretExpiresAt, Expr::value(row.previous_secret_expires_at))
            .col_expr(webhook_endpoint::Column::UpdatedAt, Expr::value(row.updated_at))
            .filter(webhook_endpoint::Column::Id.eq(row.id))
            .filter(webhook_endpoint::Column::TenantId.eq(row.tenant_id.0))
            .filter(webhook_endpoint::Column::Secret.eq(old_secret))
            .exec(&self.db)
            .await?;
        Ok(result.rows_affected == 1)
    }

    pub async fn endpoint(&self, tenant: TenantId, id: Uuid) -> Result<Option<EndpointRow>, OrchestratorError> {
        let row = webhook_endpoint::Entity::find_by_id(id)
            .filter(webhook_endpoint::Column::TenantId.eq(tenant.0))
            .one(&self.db)
            .await?;
        Ok(row.map(endpoint_from))
    }

    pub async fn endpoints(&self, tenant: TenantId) -> Result<Vec<EndpointRow>, OrchestratorError> {
        let rows = webhook_endpoint::Entity::find()
            .filter(webhook_endpoint::Column::TenantId.eq(tenant.0))
            .order_by_asc(webhook_endpoint::Column::CreatedAt)
            .order_by_asc(webhook_endpoint::Column::Id)
            .all(&self.db)
            .await?;
        Ok(rows.into_iter().map(endpoint_from).collect())
    }

    /// Tenants with an enabled endpoint: their events are followed.
    pub async fn tenants_with_webhooks(&self) -> Result<Vec<TenantId>, OrchestratorError> {
        let tenants: Vec<Uuid> = webhook_endpoint::Entity::find()
            .select_only()
            .column(webhook_endpoint::Column::TenantId)
            .filter(webhook_endpoint::Column::Enabled.eq(true))
            .distinct()
            .into_tuple()
            .all(&self.db)
            .await?;
        Ok(tenants.into_iter().map(TenantId).collect())
    }

    /// Deliveries waiting on `endpoints`: pending, whether due or backing off.
    pub async fn pending_deliveries(&self, endpoints: &[Uuid]) -> Result<u64, OrchestratorError> {
        if endpoints.is_empty() {
            return Ok(0);
        }
        let count = webhook_delivery::Entity::find()
            .filter(webhook_delivery::Column::Status.eq(DeliveryStatus::Pending.name()))
            .filter(webhook_delivery::Column::EndpointId.is_in(endpoints.iter().copied()))
            .count(&self.db)
            .await?;
        Ok(count)
    }

    /// Keeps an event for the endpoints that want it and moves the stream's
    /// cursor past it, in one transaction. An event kept already (by another
    /// replica following the same stream) is not kept again.
    pub async fn keep_webhook_message(
        &self,
        tenant: TenantId,
        cursor: &str,
        message: &WebhookMessage,
        endpoints: &[Uuid],
        now: DateTime<Utc>,
    ) -> Result<(), OrchestratorError> {
        let WriteTransaction { transaction, turn: _turn } = self.database.begin_write().await?;
        if !endpoints.is_empty() {
            let sequence = i64::try_from(message.source_sequence).unwrap_or(i64::MAX);
            let kept = webhook_message::Entity::insert(webhook_message::ActiveModel {
                id: Set(message.id),
                tenant_id: Set(tenant.0),
                source: Set(message.source.to_owned()),
                source_sequence: Set(sequence),
                account_id: Set(message.account_id.clone()),
                event_type: Set(message.event_type.clone()),
                body: Set(message.body.clone()),
                created_at: Set(message.occurred_at),
            })
            .on_conflict(
                OnConflict::columns([
                    webhook_message::Column::TenantId,
                    webhook_message::Column::Source,
                    webhook_message::Column::SourceSequence,
                ])
                .do_nothing()
                .to_owned(),
            )
            .exec_without_returning(&transaction)
            .await?;
            if kept == 1 {
                let deliveries: Vec<webhook_delivery::ActiveModel> = endpoints
                    .iter()
                    .map(|endpoint| webhook_delivery::ActiveModel {
                        id: Set(Uuid::now_v7()),
                        tenant_id: Set(tenant.0),
                        endpoint_id: Set(*endpoint),
                        message_id: Set(message.id),
                        account_id: Set(message.account_id.clone()),
                        source: Set(message.source.to_owned()),
                        source_sequence: Set(sequence),
                        event_type: Set(message.event_type.clone()),
                        status: Set(DeliveryStatus::Pending.name().to_owned()),
                        attempts: Set(0),
                        next_attempt_at: Set(now),
                        retry_from: Set(now),
                        claimed_until: Set(None),
                        last_status_code: Set(None),
                        last_error: Set(String::new()),
                        created_at: Set(now),
                        updated_at: Set(now),
                    })
                    .collect();
                webhook_delivery::Entity::insert_many(deliveries).exec_without_returning(&transaction).await?;
            }
        }
        save_cursor_on(&transaction, tenant, cursor, message.source_sequence).await?;
        transaction.commit().await?;
        Ok(())
    }

    /// Deliveries that may be attempted now, longest due first: pending,
    /// due, not held by a runner, to an enabled endpoint, and first of their
    /// line (endpoint, account, source), so no delivery goes before an
    /// earlier one of its line and no line holds up another.
    pub async fn due_deliveries(&self, now: DateTime<Utc>, limit: u64) -> Result<Vec<DeliveryRow>, OrchestratorError> {
        let rows = webhook_delivery::Entity::find()
            .filter(webhook_delivery::Column::Status.eq(DeliveryStatus::Pending.name()))
            .filter(webhook_delivery::Column::NextAttemptAt.lte(now))
            .filter(
                Condition::any()
                    .add(webhook_delivery::Column::ClaimedUntil.is_null())
                    .add(webhook_delivery::Column::ClaimedUntil.lt(now)),
            )
            .filter(Expr::cust(
                "webhook_deliveries.endpoint_id IN (SELECT id FROM webhook_endpoints WHERE enabled = TRUE)",
            ))
            .filter(Expr::cust(
                "NOT EXISTS (SELECT 1 FROM webhook_deliveries AS earlier \
                 WHERE earlier.endpoint_id = webhook_deliveries.endpoint_id \
                 AND earlier.account_id = webhook_deliveries.account_id \
                 AND earlier.source = webhook_deliveries.source \
                 AND earlier.status = 'PENDING' \
                 AND earlier.source_sequence < webhook_deliveries.source_sequence)",
            ))
            .order_by_asc(webhook_delivery::Column::NextAttemptAt)
            .limit(limit)
            .all(&self.db)
            .await?;
        rows.into_iter().map(delivery_from).collect()
    }

    /// Takes a pending delivery for one attempt until `until`, unless
    /// another runner holds it; `false` when it is taken.
    pub async fn claim_delivery(
        &self,
        delivery: &DeliveryRow,
        now: DateTime<Utc>,
        until: DateTime<Utc>,
    ) -> Result<bool, OrchestratorError> {
        // As read: an attempt another runner finished since (which moved
        // the next attempt on) is not repeated at once.
        let result = webhook_delivery::Entity::update_many()
            .col_expr(webhook_delivery::Column::ClaimedUntil, Expr::value(until))
            .filter(webhook_delivery::Column::Id.eq(delivery.id))
            .filter(webhook_delivery::Column::Status.eq(DeliveryStatus::Pending.name()))
            .filter(webhook_delivery::Column::NextAttemptAt.lte(now))
            .filter(webhook_delivery::Column::Attempts.eq(i32::try_from(delivery.attempts).unwrap_or(i32::MAX)))
            .filter(
                Condition::any()
                    .add(webhook_delivery::Column::ClaimedUntil.is_null())
                    .add(webhook_delivery::Column::ClaimedUntil.lt(now)),
            )
            .exec(&self.db)
            .await?;
        Ok(result.rows_affected == 1)
    }

    pub async fn message_body(&self, id: Uuid) -> Result<String, OrchestratorError> {
        let row = webhook_message::Entity::find_by_id(id).one(&self.db).await?;
        row.map(|row| row.body).ok_or_else(|| corrupt("webhook message"))
    }

    /// The bodies of many messages in one query, by id.
    pub async fn message_bodies(
        &self,
        ids: &[Uuid],
    ) -> Result<std::collections::HashMap<Uuid, String>, OrchestratorError> {
        let rows = webhook_message::Entity::find()
            .filter(webhook_message::Column::Id.is_in(ids.iter().copied()))
            .all(&self.db)
            .await?;
        Ok(rows.into_iter().map(|row| (row.id, row.body)).collect())
    }

    /// Writes an attempt and what follows from it, if the claim `claimed_until`
    /// is still the delivery's; `false` (nothing written) when it is not.
    pub async fn finish_attempt(
        &self,
        delivery: &DeliveryRow,
        claimed_until: DateTime<Utc>,
        result: &AttemptResult,
    ) -> Result<bool, OrchestratorError> {
        let WriteTransaction { transaction, turn: _turn } = self.database.begin_write().await?;
        let attempt = &result.attempt;
        let updated = webhook_delivery::Entity::update_many()
            .col_expr(webhook_delivery::Column::Status, Expr::value(result.status.name()))
            .col_expr(
                webhook_delivery::Column::Attempts,
                Expr::value(i32::try_from(delivery.attempts + 1).unwrap_or(i32::MAX)),
            )
            .col_expr(webhook_delivery::Column::NextAttemptAt, Expr::value(result.next_attempt_at))
            .col_expr(webhook_delivery::Column::ClaimedUntil, Expr::value(Option::<DateTime<Utc>>::None))
            .col_expr(webhook_delivery::Column::LastStatusCode, Expr::value(attempt.status_code.map(i32::from)))
            .col_expr(webhook_delivery::Column::LastError, Expr::value(attempt.error.clone()))
            .col_expr(webhook_delivery::Column::UpdatedAt, Expr::value(attempt.attempted_at))
            .filter(webhook_delivery::Column::Id.eq(delivery.id))
            .filter(webhook_delivery::Column::ClaimedUntil.eq(claimed_until))
            .exec(&transaction)
            .await?;
        if updated.rows_affected != 1 {
            return Ok(false);
        }
        webhook_attempt::Entity::insert(webhook_attempt::ActiveModel {
            id: Set(attempt.id),
            delivery_id: Set(delivery.id),
            tenant_id: Set(delivery.tenant_id.0),
            attempted_at: Set(attempt.attempted_at),
            status_code: Set(attempt.status_code.map(i32::from)),
            error: Set(attempt.error.clone()),
            duration_ms: Set(i64::try_from(attempt.duration_ms).unwrap_or(i64::MAX)),
        })
        .exec_without_returning(&transaction)
        .await?;
        transaction.commit().await?;
        Ok(true)
    }

    pub async fn delivery(&self, tenant: TenantId, id: Uuid) -> Result<Option<DeliveryRow>, OrchestratorError> {
        let row = webhook_delivery::Entity::find_by_id(id)
            .filter(webhook_delivery::Column::TenantId.eq(tenant.0))
            .one(&self.db)
            .await?;
        row.map(delivery_from).transpose()
    }

    /// One page of an endpoint's deliveries, newest first, before `before`.
    pub async fn deliveries_page(
        &self,
        tenant: TenantId,
        endpoint: Uuid,
        status: Option<DeliveryStatus>,
        before: Option<Uuid>,
        limit: u64,
    ) -> Result<Vec<DeliveryRow>, OrchestratorError> {
        let mut query = webhook_delivery::Entity::find()
            .filter(webhook_delivery::Column::TenantId.eq(tenant.0))
            .filter(webhook_delivery::Column::EndpointId.eq(endpoint));
        if let Some(status) = status {
            query = query.filter(webhook_delivery::Column::Status.eq(status.name()));
        }
        if let Some(before) = before {
            query = query.filter(webhook_delivery::Column::Id.lt(before));
        }
        let rows = query.order_by_desc(webhook_delivery::Column::Id).limit(limit).all(&self.db).await?;
        rows.into_iter().map(delivery_from).collect()
    }

    pub async fn attempts(&self, tenant: TenantId, delivery: Uuid) -> Result<Vec<AttemptRow>, OrchestratorError> {
        let rows = webhook_attempt::Entity::find()
            .filter(webhook_attempt::Column::TenantId.eq(tenant.0))
            .filter(webhook_attempt::Column::DeliveryId.eq(delivery))
            .order_by_asc(webhook_attempt::Column::AttemptedAt)
            .order_by_asc(webhook_attempt::Column::Id)
            .all(&self.db)
            .await?;
        Ok(rows.into_iter().map(attempt_from).collect())
    }

    /// Makes a delivery pending again, due now, with a fresh retry period and
    /// backoff (its attempts count from the replay; the earlier ones stay listed).
    pub async fn replay_delivery(
        &self,
        tenant: TenantId,
        id: Uuid,
        now: DateTime<Utc>,
    ) -> Result<(), OrchestratorError> {
        webhook_delivery::Entity::update_many()
            .col_expr(webhook_delivery::Column::Status, Expr::value(DeliveryStatus::Pending.name()))
            .col_expr(webhook_delivery::Column::Attempts, Expr::value(0))
            .col_expr(webhook_delivery::Column::NextAttemptAt, Expr::value(now))
            .col_expr(webhook_delivery::Column::RetryFrom, Expr::value(now))
            .col_expr(webhook_delivery::Column::UpdatedAt, Expr::value(now))
            .filter(webhook_delivery::Column::Id.eq(id))
            .filter(webhook_delivery::Column::TenantId.eq(tenant.0))
            .exec(&self.db)
            .await?;
        Ok(())
    }
}
