//! Meters and the price versions they are charged by.

use chrono::{DateTime, Utc};
use reservoir_common::auth::TenantId;
use sea_orm::{ActiveValue::Set, ColumnTrait, EntityTrait, QueryFilter, QueryOrder};
use uuid::Uuid;

use super::entities::{meter, price};
use super::{Store, corrupt, json};
use crate::domain::{Aggregation, Override, PriceError, PriceVersion, Schedule, Tier};
use crate::error::MeteringError;

/// A meter as stored.
#[derive(Debug, Clone, PartialEq)]
pub struct MeterRow {
    pub id: Uuid,
    pub code: String,
    pub unit_name: String,
    pub aggregation: Aggregation,
    pub description: String,
    pub created_at: DateTime<Utc>,
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

fn meter_from_row(row: meter::Model) -> Result<MeterRow, MeteringError> {
    let aggregation = Aggregation::from_parts(&row.aggregation, row.value_dimension.as_deref())
        .ok_or_else(|| corrupt("meter aggregation"))?;
    Ok(MeterRow {
        id: row.id,
        code: row.code,
        unit_name: row.unit_name,
        aggregation,
        description: row.description,
        created_at: row.created_at,
    })
}

impl Store {
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
                    aggregation: existing.aggregation.name().to_owned(),
                })
            };
        }
        let inserted = meter::Entity::insert(meter::ActiveModel {
            id: Set(new.id),
            tenant_id: Set(tenant.0),
            code: Set(new.code.clone()),
            unit_name: Set(new.unit_name.clone()),
            aggregation: Set(new.aggregation.name().to_owned()),
            description: Set(new.description.clone()),
            created_at: Set(new.created_at),
            value_dimension: Set(new.aggregation.dimension().map(str::to_owned)),
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
        row.map(meter_from_row).transpose()
    }

    pub async fn meters(&self, tenant: TenantId) -> Result<Vec<MeterRow>, MeteringError> {
        let rows = meter::Entity::find()
            .filter(meter::Column::TenantId.eq(tenant.0))
            .order_by_asc(meter::Column::Code)
            .all(&self.db)
            .await?;
        rows.into_iter().map(meter_from_row).collect()
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
}
