//! Lines: the usage of one account and meter that the wallet draws in one
//! go, under one key. Until its answer is recorded a line stays listed in
//! `usage_lines`, from which a crashed or failed draw is taken up again,
//! with the same events in the same order under the same key.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use reservoir_common::auth::TenantId;
use reservoir_common::db::{Amount, WriteTransaction, rows_per_insert};
use reservoir_common::ids::AccountId;
use sea_orm::sea_query::{ArrayType, Expr};
use sea_orm::{
    ActiveValue::Set, ColumnTrait, ConnectionTrait, DatabaseTransaction, DbBackend, EntityTrait, QueryFilter,
    QueryOrder, QuerySelect, Statement, Value,
};
use uuid::Uuid;

use super::entities::{event, line};
use super::events::event_from_row;
use super::usage::{array, tenants};
use super::{CLAIM, Settlement, Store, StoredEvent, json};
use crate::domain::EventStatus;
use crate::error::MeteringError;

/// Lines of events stored before lines existed are named by this and the
/// event id: each such event is drawn alone, under the key it always had.
pub const LEGACY_LINE_PREFIX: &str = "legacy:";

/// One line: the usage of one account and meter drawn in one go.
#[derive(Debug, Clone)]
pub struct Line {
    pub tenant: TenantId,
    /// The wallet key the line is drawn under.
    pub key: String,
    pub account_id: AccountId,
    pub meter_code: String,
    /// The line's events in order.
    pub events: Vec<StoredEvent>,
}

impl Store {
    /// Claims up to `limit` lines nobody holds, oldest claim first, with their
    /// events in order (an event stored before lines is a line of its own).
    pub async fn claim_lines(&self, now: DateTime<Utc>, limit: u64) -> Result<Vec<Line>, MeteringError> {
        let WriteTransaction { transaction, turn: _turn } = self.database.begin_write().await?;
        let backend = transaction.get_database_backend();
        let mut query = line::Entity::find()
            .filter(line::Column::ClaimedUntil.lt(now))
            .order_by_asc(line::Column::ClaimedUntil)
            .limit(limit);
        if backend == DbBackend::Postgres {
            query = query
                .lock_with_behavior(sea_orm::sea_query::LockType::Update, sea_orm::sea_query::LockBehavior::SkipLocked);
        }
        let due = query.all(&transaction).await?;
        if due.is_empty() {
            return Ok(Vec::new());
        }
        let mut by_tenant: BTreeMap<Uuid, Vec<String>> = BTreeMap::new();
        for row in &due {
            by_tenant.entry(row.tenant_id).or_default().push(row.draw_key.clone());
        }
        for (tenant, keys) in &by_tenant {
            line::Entity::update_many()
                .col_expr(line::Column::ClaimedUntil, Expr::value(now + CLAIM))
                .filter(line::Column::TenantId.eq(*tenant))
                .filter(line::Column::DrawKey.is_in(keys.clone()))
                .exec(&transaction)
                .await?;
        }
        let mut lines = Vec::with_capacity(due.len());
        for (tenant, keys) in by_tenant {
            let (legacy, drawn): (Vec<String>, Vec<String>) =
                keys.into_iter().partition(|key| key.starts_with(LEGACY_LINE_PREFIX));
            let mut events: BTreeMap<String, Vec<event::Model>> = BTreeMap::new();
            for chunk in drawn.chunks(500) {
                for row in event::Entity::find()
                    .filter(event::Column::TenantId.eq(tenant))
                    .filter(event::Column::DrawKey.is_in(chunk.to_vec()))
                    .order_by_asc(event::Column::DrawPosition)
                    .all(&transaction)
                    .await?
                {
                    if let Some(key) = row.draw_key.clone() {
                        events.entry(key).or_default().push(row);
                    }
                }
            }
            for key in legacy {
                let id = key.trim_start_matches(LEGACY_LINE_PREFIX).to_owned();
                if let Some(row) = event::Entity::find_by_id((tenant, id)).one(&transaction).await? {
                    events.insert(key, vec![row]);
                }
            }
            for row in due.iter().filter(|row| row.tenant_id == tenant) {
                let rows = events.remove(&row.draw_key).unwrap_or_default();
                lines.push(Line {
                    tenant: TenantId(tenant),
                    key: row.draw_key.clone(),
                    account_id: AccountId(row.account_id),
                    meter_code: row.meter_code.clone(),
                    events: rows.into_iter().map(event_from_row).collect::<Result<_, _>>()?,
                });
            }
        }
        transaction.commit().await?;
        Ok(lines)
    }

    /// Lets go of lines whose draw could not be sent, so the next pass takes them.
    pub async fn release_lines(
        &self,
        tenant: TenantId,
        keys: &[String],
        now: DateTime<Utc>,
    ) -> Result<(), MeteringError> {
        for chunk in keys.chunks(500) {
            line::Entity::update_many()
                .col_expr(line::Column::ClaimedUntil, Expr::value(now))
                .filter(line::Column::TenantId.eq(tenant.0))
                .filter(line::Column::DrawKey.is_in(chunk.to_vec()))
                .exec(&self.db)
                .await?;
        }
        Ok(())
    }

    /// Records the wallet's answers for drawn lines and forgets the lines, in
    /// one transaction.
    pub async fn settle_lines(
        &self,
        tenant: TenantId,
        settlements: &[(String, Settlement)],
        lines: &[String],
        now: DateTime<Utc>,
    ) -> Result<(), MeteringError> {
        let WriteTransaction { transaction, turn: _turn } = self.database.begin_write().await?;
        settle(&transaction, tenant, settlements, now).await?;
        if transaction.get_database_backend() == DbBackend::Postgres {
            if !lines.is_empty() {
                transaction
                    .execute_raw(Statement::from_sql_and_values(
                        DbBackend::Postgres,
                        "DELETE FROM usage_lines l USING UNNEST($1::uuid[], $2::text[]) AS v(t, k) \
                         WHERE l.tenant_id = v.t AND l.draw_key = v.k",
                        [
                            tenants(tenant, lines.len()),
                            array(ArrayType::String, lines.iter().map(|key| Value::from(key.clone())).collect()),
                        ],
                    ))
                    .await?;
            }
        } else {
            for chunk in lines.chunks(500) {
                line::Entity::delete_many()
                    .filter(line::Column::TenantId.eq(tenant.0))
                    .filter(line::Column::DrawKey.is_in(chunk.to_vec()))
                    .exec(&transaction)
                    .await?;
            }
        }
        transaction.commit().await?;
        Ok(())
    }
}

/// Lists lines as not yet drawn, held until `claimed_until`.
pub(super) async fn insert_lines(
    transaction: &DatabaseTransaction,
    lines: &[Line],
    claimed_until: DateTime<Utc>,
    now: DateTime<Utc>,
) -> Result<(), MeteringError> {
    if lines.is_empty() {
        return Ok(());
    }
    if transaction.get_database_backend() == DbBackend::Postgres {
        let tenants = array(ArrayType::Uuid, lines.iter().map(|line| Value::from(line.tenant.0)).collect());
        let keys = array(ArrayType::String, lines.iter().map(|line| Value::from(line.key.clone())).collect());
        let accounts = array(ArrayType::Uuid, lines.iter().map(|line| Value::from(line.account_id.0)).collect());
        let meters = array(ArrayType::String, lines.iter().map(|line| Value::from(line.meter_code.clone())).collect());
        transaction
            .execute_raw(Statement::from_sql_and_values(
                DbBackend::Postgres,
                "INSERT INTO usage_lines (tenant_id, draw_key, account_id, meter_code, claimed_until, created_at) \
                 SELECT v.t, v.k, v.a, v.m, $5, $6 FROM UNNEST($1::uuid[], $2::text[], $3::uuid[], $4::text[]) \
                 AS v(t, k, a, m)",
                [tenants, keys, accounts, meters, claimed_until.into(), now.into()],
            ))
            .await?;
        return Ok(());
    }
    let models: Vec<line::ActiveModel> = lines
        .iter()
        .map(|line| line::ActiveModel {
            tenant_id: Set(line.tenant.0),
            draw_key: Set(line.key.clone()),
            account_id: Set(line.account_id.0),
            meter_code: Set(line.meter_code.clone()),
            claimed_until: Set(claimed_until),
            created_at: Set(now),
        })
        .collect();
    for chunk in models.chunks(rows_per_insert(200)) {
        line::Entity::insert_many(chunk.to_vec()).exec_without_returning(transaction).await?;
    }
    Ok(())
}

/// Records the wallet's answers. Only PENDING events change, so a late
/// answer never overwrites a final one. On PostgreSQL one statement.
pub async fn settle(
    transaction: &DatabaseTransaction,
    tenant: TenantId,
    settlements: &[(String, Settlement)],
    now: DateTime<Utc>,
) -> Result<(), MeteringError> {
    if settlements.is_empty() {
        return Ok(());
    }
    if transaction.get_database_backend() == DbBackend::Postgres {
        let mut ordered: Vec<&(String, Settlement)> = settlements.iter().collect();
        // In id order, so concurrent recorders take the rows in one order.
        ordered.sort_by(|a, b| a.0.cmp(&b.0));
        let ids = array(ArrayType::String, ordered.iter().map(|(id, _)| Value::from(id.clone())).collect());
        let statuses = array(ArrayType::String, ordered.iter().map(|(_, s)| Value::from(s.status.name())).collect());
        let charged = array(ArrayType::Decimal, ordered.iter().map(|(_, s)| Value::from(s.charged_amount)).collect());
        let uncovered =
            array(ArrayType::Decimal, ordered.iter().map(|(_, s)| Value::from(s.uncovered_amount)).collect());
        let entries = array(ArrayType::String, ordered.iter().map(|(_, s)| Value::from(json(&s.entry_ids))).collect());
        let reasons = array(ArrayType::String, ordered.iter().map(|(_, s)| Value::from(s.reason.clone())).collect());
        transaction
            .execute_raw(Statement::from_sql_and_values(
                DbBackend::Postgres,
                "UPDATE usage_events e SET status = v.status, charged_amount = v.charged, uncovered_amount = v.uncovered, \
                 entry_ids = v.entries, reason = v.reason, updated_at = $2 \
                 FROM UNNEST($1::uuid[], $3::text[], $4::text[], $5::numeric[], $6::numeric[], $7::text[], $8::text[]) \
                 AS v(t, id, status, charged, uncovered, entries, reason) \
                 WHERE e.tenant_id = v.t AND e.event_id = v.id AND e.status = 'PENDING'",
                [tenants(tenant, ordered.len()), now.into(), ids, statuses, charged, uncovered, entries, reasons],
            ))
            .await?;
        return Ok(());
    }
    for (event_id, settlement) in settlements {
        event::Entity::update_many()
            .col_expr(event::Column::Status, Expr::value(settlement.status.name()))
            .col_expr(event::Column::ChargedAmount, Expr::value(Amount(settlement.charged_amount)))
            .col_expr(event::Column::UncoveredAmount, Expr::value(Amount(settlement.uncovered_amount)))
            .col_expr(event::Column::EntryIds, Expr::value(json(&settlement.entry_ids)))
            .col_expr(event::Column::Reason, Expr::value(settlement.reason.clone()))
            .col_expr(event::Column::UpdatedAt, Expr::value(now))
            .filter(event::Column::TenantId.eq(tenant.0))
            .filter(event::Column::EventId.eq(event_id.clone()))
            .filter(event::Column::Status.eq(EventStatus::Pending.name()))
            .exec(transaction)
            .await?;
    }
    Ok(())
}
