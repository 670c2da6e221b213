//! Metering's persistence. Events are stored (priced, with the monthly usage
//! counter advanced) in one transaction before their debit is sent, so an
//! accepted event survives any crash; its status follows once the wallet
//! answers.

pub mod batcher;
mod entities;
pub mod migrations;
mod usage;

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use reservoir_common::auth::TenantId;
use reservoir_common::db::{Amount, Database, WriteTransaction};
use reservoir_common::settings::DatabaseSettings;
use rust_decimal::Decimal;
use sea_orm::sea_query::{Expr, OnConflict};
use sea_orm::{
    ActiveValue::Set, ColumnTrait, ConnectionTrait, DatabaseConnection, DbBackend, EntityTrait, QueryFilter,
    QueryOrder, QuerySelect,
};
use sea_orm_migration::MigratorTrait;
use uuid::Uuid;

use self::entities::{account, authorization, counter, event, idempotency, meter, price};
use crate::domain::{
    AuthorizationStatus, EventStatus, Override, PriceError, PriceVersion, Schedule, Tier, UsageRecord, month_of,
};
use crate::error::MeteringError;

/// How long whoever sends an event's debit holds the event: longer than a
/// wallet call may take (10 s), so two senders never both get an answer for
/// one event. A sender that fails lets go at once; only a crashed one makes
/// its events wait this long.
pub(crate) const CLAIM: chrono::Duration = chrono::Duration::seconds(15);

/// A meter as stored.
#[derive(Debug, Clone, PartialEq)]
pub struct MeterRow {
    pub id: Uuid,
    pub code: String,
    pub unit_name: String,
    /// SUM or COUNT.
    pub aggregation: String,
    pub description: String,
    pub created_at: DateTime<Utc>,
}

/// An accepted usage event as stored.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredEvent {
    pub event_id: String,
    pub account_id: Uuid,
    pub meter_code: String,
    pub quantity: Decimal,
    pub dimensions: BTreeMap<String, String>,
    pub occurred_at: DateTime<Utc>,
    pub status: EventStatus,
    pub amount: Decimal,
    pub charged_amount: Decimal,
    pub uncovered_amount: Decimal,
    pub entry_ids: Vec<String>,
    pub reason: String,
}

/// An event to store.
#[derive(Debug, Clone)]
pub struct NewEvent {
    pub event_id: String,
    pub account_id: Uuid,
    pub meter_code: String,
    pub quantity: Decimal,
    pub dimensions: BTreeMap<String, String>,
    pub occurred_at: DateTime<Utc>,
}

/// What storing an event did.
#[derive(Debug, Clone)]
pub enum Stored {
    /// Stored now, in a line the caller draws.
    New(StoredEvent),
    /// The event id was seen before: what was stored then.
    Duplicate(StoredEvent),
    /// Its charge cannot be computed (the usage or the cost past what an
    /// amount holds): refused on its own, nothing stored, the rest of its
    /// batch stored as if it were not there.
    Unpriced(String),
}

pub use self::usage::{IngestEvent, LEGACY_LINE_PREFIX, Line, StoredBatch};

/// The wallet's answer for one event's debit.
#[derive(Debug, Clone)]
pub struct Settlement {
    pub status: EventStatus,
    pub charged_amount: Decimal,
    pub uncovered_amount: Decimal,
    pub entry_ids: Vec<String>,
    pub reason: String,
}

/// An authorization as stored.
#[derive(Debug, Clone, PartialEq)]
pub struct AuthorizationRow {
    pub id: Uuid,
    pub tenant_id: TenantId,
    pub idempotency_key: String,
    pub request_hash: String,
    pub account_id: Uuid,
    pub meter_code: String,
    pub dimensions: BTreeMap<String, String>,
    pub estimated_quantity: Decimal,
    pub estimated_amount: Decimal,
    pub hold_id: Option<Uuid>,
    pub status: AuthorizationStatus,
    pub expires_at: DateTime<Utc>,
    pub actual_quantity: Option<Decimal>,
    pub actual_amount: Option<Decimal>,
    pub charged_amount: Option<Decimal>,
    pub uncovered_amount: Option<Decimal>,
}

#[derive(Clone)]
pub struct Store {
    database: Database,
    db: DatabaseConnection,
}

pub(crate) fn json<T: serde::Serialize>(value: &T) -> String {
    serde_json::to_string(value).unwrap_or_default()
}

fn corrupt(what: &str) -> MeteringError {
    MeteringError::internal(format!("stored {what} is not valid"))
}

pub(crate) fn event_from_row(row: event::Model) -> Result<StoredEvent, MeteringError> {
    Ok(StoredEvent {
        status: EventStatus::from_name(&row.status).ok_or_else(|| corrupt("event status"))?,
        dimensions: serde_json::from_str(&row.dimensions).map_err(|_| corrupt("dimensions"))?,
        entry_ids: serde_json::from_str(&row.entry_ids).map_err(|_| corrupt("entry ids"))?,
        event_id: row.event_id,
        account_id: row.account_id,
        meter_code: row.meter_code,
        quantity: row.quantity.0,
        occurred_at: row.occurred_at,
        amount: row.amount.0,
        charged_amount: row.charged_amount.0,
        uncovered_amount: row.uncovered_amount.0,
        reason: row.reason,
    })
}

fn authorization_from_row(row: authorization::Model) -> Result<AuthorizationRow, MeteringError> {
    Ok(AuthorizationRow {
        id: row.id,
        tenant_id: TenantId(row.tenant_id),
        idempotency_key: row.idempotency_key,
        request_hash: row.request_hash,
        account_id: row.account_id,
        meter_code: row.meter_code,
        dimensions: serde_json::from_str(&row.dimensions).map_err(|_| corrupt("dimensions"))?,
        estimated_quantity: row.estimated_quantity.0,
        estimated_amount: row.estimated_amount.0,
        hold_id: row.hold_id,
        status: AuthorizationStatus::from_name(&row.status).ok_or_else(|| corrupt("authorization status"))?,
        expires_at: row.expires_at,
        actual_quantity: row.actual_quantity.map(|amount| amount.0),
        actual_amount: row.actual_amount.map(|amount| amount.0),
        charged_amount: row.charged_amount.map(|amount| amount.0),
        uncovered_amount: row.uncovered_amount.map(|amount| amount.0),
    })
}

/// A tier as stored: its bound (none for the last) and unit price, as decimal strings.
type StoredTier = (Option<String>, String);

/// Prices as stored: tiers and overrides (key, value, tiers) in JSON.
#[derive(serde::Serialize, serde::Deserialize)]
struct PriceDefinition {
    tiers: Vec<StoredTier>,
    overrides: Vec<(String, String, Vec<StoredTier>)>,
}

fn tiers_to_json(schedule: &Schedule) -> Vec<StoredTier> {
    schedule
        .tiers()
        .iter()
        .map(|tier| (tier.up_to.map(|bound| bound.to_string()), tier.unit_price.to_string()))
        .collect()
}

fn tiers_from_json(tiers: &[StoredTier]) -> Result<Schedule, MeteringError> {
    let parsed: Option<Vec<Tier>> = tiers
        .iter()
        .map(|(up_to, price)| {
            let up_to = match up_to {
                Some(bound) => Some(bound.parse().ok()?),
                None => None,
            };
            Some(Tier { up_to, unit_price: price.parse().ok()? })
        })
        .collect();
    Schedule::new(parsed.ok_or_else(|| corrupt("price"))?).map_err(|_: PriceError| corrupt("price"))
}

fn price_from_row(row: price::Model) -> Result<PriceVersion, MeteringError> {
    let definition: PriceDefinition = serde_json::from_str(&row.definition).map_err(|_| corrupt("price"))?;
    let overrides = definition
        .overrides
        .iter()
        .map(|(key, value, tiers)| {
            Ok(Override { key: key.clone(), value: value.clone(), schedule: tiers_from_json(tiers)? })
        })
        .collect::<Result<Vec<_>, MeteringError>>()?;
    Ok(PriceVersion { effective_from: row.effective_from, base: tiers_from_json(&definition.tiers)?, overrides })
}

impl Store {
    pub async fn connect(settings: &DatabaseSettings) -> Result<Self, MeteringError> {
        let database = Database::connect(settings).await?;
        Ok(Self { db: database.connection().clone(), database })
    }

    /// The connection pool, for its figures.
    pub fn database(&self) -> &Database {
        &self.database
    }

    pub async fn migrate(&self) -> Result<(), MeteringError> {
        self.database
            .migrate_exclusively(|connection| async move {
                migrations::Migrator::up(&connection, None).await.map_err(MeteringError::from)
            })
            .await
    }

    // ---- meters and prices -------------------------------------------------

    /// Defines a meter; the same definition again returns the stored one.
    pub async fn create_meter(&self, tenant: TenantId, new: MeterRow) -> Result<MeterRow, MeteringError> {
        if let Some(existing) = self.meter(tenant, &new.code).await? {
            let same = existing.unit_name == new.unit_name
                && existing.aggregation == new.aggregation
                && existing.description == new.description;
            return if same {
                Ok(existing)
            } else {
                Err(MeteringError::MeterExists {
                    code: existing.code,
                    unit_name: existing.unit_name,
                    aggregation: existing.aggregation,
                })
            };
        }
        let inserted = meter::Entity::insert(meter::ActiveModel {
            id: Set(new.id),
            tenant_id: Set(tenant.0),
            code: Set(new.code.clone()),
            unit_name: Set(new.unit_name.clone()),
            aggregation: Set(new.aggregation.clone()),
            description: Set(new.description.clone()),
            created_at: Set(new.created_at),
        })
        .exec_without_returning(&self.db)
        .await;
        match inserted {
            Ok(_) => Ok(new),
            // Defined concurrently: answer as if this call came second.
            Err(error) if reservoir_common::db::is_unique_violation(&error) => {
                Box::pin(self.create_meter(tenant, new)).await
            }
            Err(error) => Err(error.into()),
        }
    }

    pub async fn meter(&self, tenant: TenantId, code: &str) -> Result<Option<MeterRow>, MeteringError> {
        let row = meter::Entity::find()
            .filter(meter::Column::TenantId.eq(tenant.0))
            .filter(meter::Column::Code.eq(code))
            .one(&self.db)
            .await?;
        Ok(row.map(|row| MeterRow {
            id: row.id,
            code: row.code,
            unit_name: row.unit_name,
            aggregation: row.aggregation,
            description: row.description,
            created_at: row.created_at,
        }))
    }

    pub async fn meters(&self, tenant: TenantId) -> Result<Vec<MeterRow>, MeteringError> {
        let rows = meter::Entity::find()
            .filter(meter::Column::TenantId.eq(tenant.0))
            .order_by_asc(meter::Column::Code)
            .all(&self.db)
            .await?;
        Ok(rows
            .into_iter()
            .map(|row| MeterRow {
                id: row.id,
                code: row.code,
                unit_name: row.unit_name,
                aggregation: row.aggregation,
                description: row.description,
                created_at: row.created_at,
            })
            .collect())
    }

    /// Adds a price version; a second price at the same instant is a conflict.
    pub async fn add_price(
        &self,
        tenant: TenantId,
        meter_id: Uuid,
        version: &PriceVersion,
        now: DateTime<Utc>,
    ) -> Result<(), MeteringError> {
        let definition = PriceDefinition {
            tiers: tiers_to_json(&version.base),
            overrides: version
                .overrides
                .iter()
                .map(|o| (o.key.clone(), o.value.clone(), tiers_to_json(&o.schedule)))
                .collect(),
        };
        let inserted = price::Entity::insert(price::ActiveModel {
            id: Set(Uuid::now_v7()),
            tenant_id: Set(tenant.0),
            meter_id: Set(meter_id),
            effective_from: Set(version.effective_from),
            definition: Set(json(&definition)),
            created_at: Set(now),
        })
        .exec_without_returning(&self.db)
        .await;
        match inserted {
            Ok(_) => Ok(()),
            Err(error) if reservoir_common::db::is_unique_violation(&error) => {
                Err(MeteringError::field("effective_from", "the meter already has a price from this instant"))
            }
            Err(error) => Err(error.into()),
        }
    }

    /// Every price of a meter, oldest first.
    pub async fn prices(&self, meter_id: Uuid) -> Result<Vec<PriceVersion>, MeteringError> {
        let rows = price::Entity::find()
            .filter(price::Column::MeterId.eq(meter_id))
            .order_by_asc(price::Column::EffectiveFrom)
            .all(&self.db)
            .await?;
        rows.into_iter().map(price_from_row).collect()
    }

    // ---- accounts ------------------------------------------------------------

    /// The remembered wallet unit (code, scale) of an account.
    pub async fn account_unit(
        &self,
        tenant: TenantId,
        account_id: Uuid,
    ) -> Result<Option<(String, u32)>, MeteringError> {
        let row = account::Entity::find_by_id((tenant.0, account_id)).one(&self.db).await?;
        Ok(row.map(|row| (row.unit_code, u32::try_from(row.unit_scale).unwrap_or(0))))
    }

    /// The remembered wallet scales of those of `accounts` metering has seen.
    pub async fn account_units(&self, tenant: TenantId, accounts: &[Uuid]) -> Result<Vec<(Uuid, u32)>, MeteringError> {
        let mut found = Vec::with_capacity(accounts.len());
        for chunk in accounts.chunks(1_000) {
            let rows = account::Entity::find()
                .filter(account::Column::TenantId.eq(tenant.0))
                .filter(account::Column::AccountId.is_in(chunk.to_vec()))
                .all(&self.db)
                .await?;
            found.extend(rows.into_iter().map(|row| (row.account_id, u32::try_from(row.unit_scale).unwrap_or(0))));
        }
        Ok(found)
    }

    /// Remembers many accounts' units at once.
    pub async fn remember_accounts(
        &self,
        tenant: TenantId,
        units: &[(Uuid, String, u32)],
    ) -> Result<(), MeteringError> {
        for chunk in units.chunks(500) {
            let models: Vec<account::ActiveModel> = chunk
                .iter()
                .map(|(account_id, code, scale)| account::ActiveModel {
                    tenant_id: Set(tenant.0),
                    account_id: Set(*account_id),
                    unit_code: Set(code.clone()),
                    unit_scale: Set(i32::try_from(*scale).unwrap_or(0)),
                })
                .collect();
            account::Entity::insert_many(models)
                .on_conflict(
                    OnConflict::columns([account::Column::TenantId, account::Column::AccountId])
                        .do_nothing()
                        .to_owned(),
                )
                .exec_without_returning(&self.db)
                .await?;
        }
        Ok(())
    }

    pub async fn remember_account(
        &self,
        tenant: TenantId,
        account_id: Uuid,
        unit_code: &str,
        scale: u32,
    ) -> Result<(), MeteringError> {
        account::Entity::insert(account::ActiveModel {
            tenant_id: Set(tenant.0),
            account_id: Set(account_id),
            unit_code: Set(unit_code.to_owned()),
            unit_scale: Set(i32::try_from(scale).unwrap_or(0)),
        })
        .on_conflict(
            OnConflict::columns([account::Column::TenantId, account::Column::AccountId]).do_nothing().to_owned(),
        )
        .exec_without_returning(&self.db)
        .await?;
        Ok(())
    }

    // ---- usage events ----------------------------------------------------------

    /// Advances the account's monthly usage counter of a meter by `quantity`
    /// and returns the usage before it. The counter row is locked (created
    /// first if missing), so concurrent writers of one counter take turns.
    async fn advance_counter(
        connection: &impl ConnectionTrait,
        tenant: TenantId,
        account_id: Uuid,
        meter_code: &str,
        month: &str,
        quantity: Decimal,
    ) -> Result<Decimal, MeteringError> {
        let key = (tenant.0, account_id, meter_code.to_owned(), month.to_owned());
        counter::Entity::insert(counter::ActiveModel {
            tenant_id: Set(tenant.0),
            account_id: Set(account_id),
            meter_code: Set(meter_code.to_owned()),
            month: Set(month.to_owned()),
            quantity: Set(Amount(Decimal::ZERO)),
        })
        .on_conflict(
            OnConflict::columns([
                counter::Column::TenantId,
                counter::Column::AccountId,
                counter::Column::MeterCode,
                counter::Column::Month,
            ])
            .do_nothing()
            .to_owned(),
        )
        .exec_without_returning(connection)
        .await?;
        let mut query = counter::Entity::find_by_id(key);
        if connection.get_database_backend() == DbBackend::Postgres {
            query = query.lock_exclusive();
        }
        let before = query.one(connection).await?.map_or(Decimal::ZERO, |row| row.quantity.0);
        let after = before.checked_add(quantity).ok_or_else(|| MeteringError::field("quantity", "too large"))?;
        counter::Entity::update_many()
            .col_expr(counter::Column::Quantity, Expr::value(Amount(after)))
            .filter(counter::Column::TenantId.eq(tenant.0))
            .filter(counter::Column::AccountId.eq(account_id))
            .filter(counter::Column::MeterCode.eq(meter_code))
            .filter(counter::Column::Month.eq(month))
            .exec(connection)
            .await?;
        Ok(before)
    }

    /// The account's usage of a meter in a month so far.
    pub async fn usage_so_far(
        &self,
        tenant: TenantId,
        account_id: Uuid,
        meter_code: &str,
        month: &str,
    ) -> Result<Decimal, MeteringError> {
        let key = (tenant.0, account_id, meter_code.to_owned(), month.to_owned());
        Ok(counter::Entity::find_by_id(key).one(&self.db).await?.map_or(Decimal::ZERO, |row| row.quantity.0))
    }

    /// Records answers for settlement usage (events not drawn in lines). Only
    /// PENDING events change, so a late answer never overwrites a final one.
    pub async fn settle_events(
        &self,
        tenant: TenantId,
        settlements: &[(String, Settlement)],
        now: DateTime<Utc>,
    ) -> Result<(), MeteringError> {
        let WriteTransaction { transaction, turn: _turn } = self.database.begin_write().await?;
        usage::settle(&transaction, tenant, settlements, now).await?;
        transaction.commit().await?;
        Ok(())
    }

    pub async fn event(&self, tenant: TenantId, event_id: &str) -> Result<Option<StoredEvent>, MeteringError> {
        let row = event::Entity::find_by_id((tenant.0, event_id.to_owned())).one(&self.db).await?;
        row.map(event_from_row).transpose()
    }

    /// An account's events in a time range, for reports.
    pub async fn usage(
        &self,
        tenant: TenantId,
        account_id: Uuid,
        meter_code: Option<&str>,
        start: DateTime<Utc>,
        end: DateTime<Utc>,
    ) -> Result<Vec<UsageRecord>, MeteringError> {
        let mut query = event::Entity::find()
            .filter(event::Column::TenantId.eq(tenant.0))
            .filter(event::Column::AccountId.eq(account_id))
            .filter(event::Column::OccurredAt.gte(start))
            .filter(event::Column::OccurredAt.lt(end));
        if let Some(code) = meter_code {
            query = query.filter(event::Column::MeterCode.eq(code));
        }
        let rows = query.order_by_asc(event::Column::OccurredAt).all(&self.db).await?;
        rows.into_iter()
            .map(|row| {
                let stored = event_from_row(row)?;
                Ok(UsageRecord {
                    meter_code: stored.meter_code,
                    occurred_at: stored.occurred_at,
                    quantity: stored.quantity,
                    status: stored.status,
                    amount: stored.amount,
                    charged_amount: stored.charged_amount,
                    uncovered_amount: stored.uncovered_amount,
                    dimensions: stored.dimensions,
                })
            })
            .collect()
    }

    // ---- authorizations ------------------------------------------------------

    pub async fn authorization(&self, tenant: TenantId, id: Uuid) -> Result<Option<AuthorizationRow>, MeteringError> {
        let row = authorization::Entity::find_by_id(id)
            .filter(authorization::Column::TenantId.eq(tenant.0))
            .one(&self.db)
            .await?;
        row.map(authorization_from_row).transpose()
    }

    pub async fn authorization_by_key(
        &self,
        tenant: TenantId,
        key: &str,
    ) -> Result<Option<AuthorizationRow>, MeteringError> {
        let row = authorization::Entity::find()
            .filter(authorization::Column::TenantId.eq(tenant.0))
            .filter(authorization::Column::IdempotencyKey.eq(key))
            .one(&self.db)
            .await?;
        row.map(authorization_from_row).transpose()
    }

    /// Stores a new authorization as PENDING before its hold is asked for.
    pub async fn insert_authorization(&self, row: &AuthorizationRow, now: DateTime<Utc>) -> Result<(), MeteringError> {
        authorization::Entity::insert(authorization::ActiveModel {
            id: Set(row.id),
            tenant_id: Set(row.tenant_id.0),
            idempotency_key: Set(row.idempotency_key.clone()),
            request_hash: Set(row.request_hash.clone()),
            account_id: Set(row.account_id),
            meter_code: Set(row.meter_code.clone()),
            dimensions: Set(json(&row.dimensions)),
            estimated_quantity: Set(Amount(row.estimated_quantity)),
            estimated_amount: Set(Amount(row.estimated_amount)),
            hold_id: Set(row.hold_id),
            status: Set(row.status.name().to_owned()),
            expires_at: Set(row.expires_at),
            actual_quantity: Set(None),
            actual_amount: Set(None),
            charged_amount: Set(None),
            uncovered_amount: Set(None),
            created_at: Set(now),
            updated_at: Set(now),
        })
        .exec_without_returning(&self.db)
        .await?;
        Ok(())
    }

    /// Moves an authorization from one status to another; `false` if it was
    /// no longer in `from` (someone else moved it first).
    pub async fn transition_authorization(
        &self,
        id: Uuid,
        from: AuthorizationStatus,
        to: AuthorizationStatus,
        hold_id: Option<Uuid>,
        now: DateTime<Utc>,
    ) -> Result<bool, MeteringError> {
        let mut update = authorization::Entity::update_many()
            .col_expr(authorization::Column::Status, Expr::value(to.name()))
            .col_expr(authorization::Column::UpdatedAt, Expr::value(now))
            .filter(authorization::Column::Id.eq(id))
            .filter(authorization::Column::Status.eq(from.name()));
        if let Some(hold) = hold_id {
            update = update.col_expr(authorization::Column::HoldId, Expr::value(hold));
        }
        Ok(update.exec(&self.db).await?.rows_affected == 1)
    }

    /// Starts settling: in one transaction the actual usage advances the
    /// counter, is stored as a PENDING usage event, and the authorization
    /// becomes SETTLING with its actual quantity and amount.
    pub async fn begin_settlement(
        &self,
        authorization: &AuthorizationRow,
        actual_quantity: Decimal,
        now: DateTime<Utc>,
        price: impl Fn(&NewEvent, Decimal) -> Result<Decimal, MeteringError>,
    ) -> Result<Option<StoredEvent>, MeteringError> {
        let tenant = authorization.tenant_id;
        let WriteTransaction { transaction, turn: _turn } = self.database.begin_write().await?;
        let current = authorization::Entity::find_by_id(authorization.id).lock_exclusive().one(&transaction).await?;
        if current.as_ref().map(|row| row.status.as_str()) != Some(AuthorizationStatus::Active.name()) {
            return Ok(None);
        }
        let new = NewEvent {
            event_id: settlement_event_id(authorization.id),
            account_id: authorization.account_id,
            meter_code: authorization.meter_code.clone(),
            quantity: actual_quantity,
            dimensions: authorization.dimensions.clone(),
            occurred_at: now,
        };
        let month = month_of(now);
        let before =
            Self::advance_counter(&transaction, tenant, new.account_id, &new.meter_code, &month, actual_quantity)
                .await?;
        let amount = price(&new, before)?;
        event::Entity::insert(event::ActiveModel {
            tenant_id: Set(tenant.0),
            event_id: Set(new.event_id.clone()),
            account_id: Set(new.account_id),
            meter_code: Set(new.meter_code.clone()),
            quantity: Set(Amount(actual_quantity)),
            dimensions: Set(json(&new.dimensions)),
            occurred_at: Set(now),
            status: Set(EventStatus::Pending.name().to_owned()),
            amount: Set(Amount(amount)),
            charged_amount: Set(Amount(Decimal::ZERO)),
            uncovered_amount: Set(Amount(Decimal::ZERO)),
            entry_ids: Set("[]".to_owned()),
            reason: Set(String::new()),
            origin: Set("SETTLEMENT".to_owned()),
            claimed_until: Set(now),
            created_at: Set(now),
            updated_at: Set(now),
            draw_key: Set(None),
            draw_position: Set(None),
        })
        .exec_without_returning(&transaction)
        .await?;
        authorization::Entity::update_many()
            .col_expr(authorization::Column::Status, Expr::value(AuthorizationStatus::Settling.name()))
            .col_expr(authorization::Column::ActualQuantity, Expr::value(Amount(actual_quantity)))
            .col_expr(authorization::Column::ActualAmount, Expr::value(Amount(amount)))
            .col_expr(authorization::Column::UpdatedAt, Expr::value(now))
            .filter(authorization::Column::Id.eq(authorization.id))
            .exec(&transaction)
            .await?;
        transaction.commit().await?;
        self.event(tenant, &new.event_id).await
    }

    /// Finishes a settlement: the usage event and the authorization together.
    pub async fn finish_settlement(
        &self,
        authorization: &AuthorizationRow,
        settlement: &Settlement,
        now: DateTime<Utc>,
    ) -> Result<(), MeteringError> {
        let event_id = settlement_event_id(authorization.id);
        self.settle_events(authorization.tenant_id, &[(event_id, settlement.clone())], now).await?;
        authorization::Entity::update_many()
            .col_expr(authorization::Column::Status, Expr::value(AuthorizationStatus::Settled.name()))
            .col_expr(authorization::Column::ChargedAmount, Expr::value(Amount(settlement.charged_amount)))
            .col_expr(authorization::Column::UncoveredAmount, Expr::value(Amount(settlement.uncovered_amount)))
            .col_expr(authorization::Column::UpdatedAt, Expr::value(now))
            .filter(authorization::Column::Id.eq(authorization.id))
            .filter(authorization::Column::Status.eq(AuthorizationStatus::Settling.name()))
            .exec(&self.db)
            .await?;
        Ok(())
    }

    /// Authorizations in `status` last touched before `before`.
    pub async fn authorizations_in(
        &self,
        status: AuthorizationStatus,
        before: DateTime<Utc>,
        limit: u64,
    ) -> Result<Vec<AuthorizationRow>, MeteringError> {
        let rows = authorization::Entity::find()
            .filter(authorization::Column::Status.eq(status.name()))
            .filter(authorization::Column::UpdatedAt.lt(before))
            .order_by_asc(authorization::Column::UpdatedAt)
            .limit(limit)
            .all(&self.db)
            .await?;
        rows.into_iter().map(authorization_from_row).collect()
    }

    /// ACTIVE authorizations past their expiry become EXPIRED (their wallet
    /// holds expire on their own).
    pub async fn expire_authorizations(&self, now: DateTime<Utc>) -> Result<u64, MeteringError> {
        let result = authorization::Entity::update_many()
            .col_expr(authorization::Column::Status, Expr::value(AuthorizationStatus::Expired.name()))
            .col_expr(authorization::Column::UpdatedAt, Expr::value(now))
            .filter(
                authorization::Column::Status
                    .is_in([AuthorizationStatus::Active, AuthorizationStatus::Pending].map(AuthorizationStatus::name)),
            )
            .filter(authorization::Column::ExpiresAt.lte(now))
            .exec(&self.db)
            .await?;
        Ok(result.rows_affected)
    }

    // ---- idempotency -------------------------------------------------------------

    pub async fn replay<M: prost::Message + Default>(
        &self,
        tenant: TenantId,
        key: &str,
        method: &str,
        request_hash: &str,
    ) -> Result<Option<M>, MeteringError> {
        let Some(record) = idempotency::Entity::find_by_id((tenant.0, key.to_owned())).one(&self.db).await? else {
            return Ok(None);
        };
        if record.method != method || record.request_hash != request_hash {
            return Err(MeteringError::IdempotencyKeyReused);
        }
        M::decode(record.response.as_slice())
            .map(Some)
            .map_err(|error| MeteringError::internal(format!("stored response does not decode: {error}")))
    }

    pub async fn record<M: prost::Message>(
        &self,
        tenant: TenantId,
        key: &str,
        method: &str,
        request_hash: &str,
        response: &M,
        now: DateTime<Utc>,
    ) -> Result<(), MeteringError> {
        idempotency::Entity::insert(idempotency::ActiveModel {
            tenant_id: Set(tenant.0),
            key: Set(key.to_owned()),
            method: Set(method.to_owned()),
            request_hash: Set(request_hash.to_owned()),
            response: Set(response.encode_to_vec()),
            created_at: Set(now),
        })
        .on_conflict(
            OnConflict::columns([idempotency::Column::TenantId, idempotency::Column::Key]).do_nothing().to_owned(),
        )
        .exec_without_returning(&self.db)
        .await?;
        Ok(())
    }
}

/// Event ids of settlement usage start with this; clients may not use it.
pub const SETTLEMENT_EVENT_PREFIX: &str = "authorization:";

/// The usage event a settlement records.
pub fn settlement_event_id(authorization: Uuid) -> String {
    format!("{SETTLEMENT_EVENT_PREFIX}{authorization}")
}
