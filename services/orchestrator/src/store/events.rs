//! The orchestrator's own events, written in the transaction of the change
//! they tell of, and the cursors of the streams its followers read.

use chrono::{DateTime, Utc};
use reservoir_common::auth::TenantId;
use reservoir_common::db::WriteTransaction;
use reservoir_common::ids::AccountId;
use sea_orm::sea_query::OnConflict;
use sea_orm::{ActiveValue::Set, ColumnTrait, ConnectionTrait, EntityTrait, QueryFilter, QueryOrder, QuerySelect};
use uuid::Uuid;

use super::Store;
use super::entities::{cursor, event};
use crate::error::OrchestratorError;

/// An event to emit with a change.
#[derive(Debug, Clone, PartialEq)]
pub struct NewEvent {
    pub event_type: &'static str,
    pub account_id: AccountId,
    pub top_up_id: Option<Uuid>,
    pub credits: String,
    pub reason: String,
}

/// An event as stored.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredEvent {
    pub sequence: u64,
    pub event_type: String,
    pub account_id: AccountId,
    pub top_up_id: Option<Uuid>,
    pub credits: String,
    pub reason: String,
    pub occurred_at: DateTime<Utc>,
}

impl Store {
    pub(super) async fn emit(
        connection: &impl ConnectionTrait,
        tenant: TenantId,
        new: &NewEvent,
        now: DateTime<Utc>,
    ) -> Result<(), OrchestratorError> {
        let sequence = reservoir_common::outbox::next_sequence(connection, "event_sequence").await?;
        event::Entity::insert(event::ActiveModel {
            sequence: Set(sequence),
            tenant_id: Set(tenant.0),
            event_type: Set(new.event_type.to_owned()),
            account_id: Set(new.account_id.0),
            top_up_id: Set(new.top_up_id),
            credits: Set(new.credits.clone()),
            reason: Set(new.reason.clone()),
            occurred_at: Set(now),
        })
        .exec_without_returning(connection)
        .await?;
        Ok(())
    }

    pub async fn emit_event(
        &self,
        tenant: TenantId,
        event: &NewEvent,
        now: DateTime<Utc>,
    ) -> Result<(), OrchestratorError> {
        let WriteTransaction { transaction, turn: _turn } = self.database.begin_write().await?;
        Self::emit(&transaction, tenant, event, now).await?;
        transaction.commit().await?;
        Ok(())
    }

    pub async fn cursor(&self, tenant: TenantId, source: &str) -> Result<u64, OrchestratorError> {
        let row = cursor::Entity::find_by_id((tenant.0, source.to_owned())).one(&self.db).await?;
        Ok(row.map_or(0, |row| u64::try_from(row.after_sequence).unwrap_or(0)))
    }

    pub async fn save_cursor(&self, tenant: TenantId, source: &str, after: u64) -> Result<(), OrchestratorError> {
        save_cursor_on(&self.db, tenant, source, after).await
    }

    pub async fn events_after(
        &self,
        tenant: TenantId,
        after: u64,
        limit: u64,
    ) -> Result<Vec<StoredEvent>, OrchestratorError> {
        let rows = event::Entity::find()
            .filter(event::Column::TenantId.eq(tenant.0))
            .filter(event::Column::Sequence.gt(i64::try_from(after).unwrap_or(i64::MAX)))
            .order_by_asc(event::Column::Sequence)
            .limit(limit)
            .all(&self.db)
            .await?;
        Ok(rows
            .into_iter()
            .map(|row| StoredEvent {
                sequence: u64::try_from(row.sequence).unwrap_or(0),
                event_type: row.event_type,
                account_id: AccountId(row.account_id),
                top_up_id: row.top_up_id,
                credits: row.credits,
                reason: row.reason,
                occurred_at: row.occurred_at,
            })
            .collect())
    }
}

/// Records how far a tenant's events from `source` have been read, on any
/// connection, so a follower can move its cursor in the transaction that
/// acts on the events.
pub(super) async fn save_cursor_on(
    connection: &impl ConnectionTrait,
    tenant: TenantId,
    source: &str,
    after: u64,
) -> Result<(), OrchestratorError> {
    cursor::Entity::insert(cursor::ActiveModel {
        tenant_id: Set(tenant.0),
        source: Set(source.to_owned()),
        after_sequence: Set(i64::try_from(after).unwrap_or(i64::MAX)),
    })
    .on_conflict(
        OnConflict::columns([cursor::Column::TenantId, cursor::Column::Source])
            .update_column(cursor::Column::AfterSequence)
            .to_owned(),
    )
    .exec_without_returning(connection)
    .await?;
    Ok(())
}
