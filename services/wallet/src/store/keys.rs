//! Tenants and their API keys: what the auth layer resolves a key to, and
//! what operators create, issue, rotate and revoke.

use chrono::{DateTime, Utc};
use reservoir_common::auth::{
    Caller, Identity, KeyId, KeyResolver, KeyRole, TenantId, generate_key, hash_key, key_display_prefix,
};
use sea_orm::sea_query::Expr;
use sea_orm::{ActiveValue::Set, ColumnTrait, ConnectionTrait, EntityTrait, PaginatorTrait, QueryFilter, QueryOrder};
use uuid::Uuid;

use super::entities::{api_key, tenant};
use super::{SERVICES_TENANT, Store};
use crate::error::WalletError;

/// An issued API key (the key itself is shown once and never stored).
#[derive(Debug, Clone)]
pub struct IssuedKey {
    pub id: Uuid,
    pub tenant_id: TenantId,
    pub key: String,
}

/// A key as listed: never the key itself, only its first characters.
#[derive(Debug, Clone)]
pub struct KeyListed {
    pub id: Uuid,
    pub tenant_id: TenantId,
    pub display_prefix: String,
    pub service: bool,
    pub role: KeyRole,
    pub created_at: DateTime<Utc>,
    pub revoked_at: Option<DateTime<Utc>>,
}

#[derive(Debug, Clone)]
pub struct TenantRow {
    pub id: TenantId,
    pub name: String,
    pub created_at: DateTime<Utc>,
    pub active_keys: usize,
}

impl Store {
    pub async fn create_tenant(&self, name: &str, now: DateTime<Utc>) -> Result<TenantId, WalletError> {
        let id = Uuid::now_v7();
        tenant::Entity::insert(tenant::ActiveModel {
            id: Set(id),
            name: Set(name.to_owned()),
            created_at: Set(now),
            allow_promotional_transfers: Set(false),
            idempotency_key: Set(None),
            transfer_fraud: Set(None),
        })
        .exec_without_returning(&self.db)
        .await?;
        Ok(TenantId(id))
    }

    /// Creates a tenant under an idempotency key: the same key again answers
    /// the tenant it made, refused when asked with another name.
    pub async fn create_tenant_once(
        &self,
        name: &str,
        idempotency_key: &str,
        now: DateTime<Utc>,
    ) -> Result<TenantRow, WalletError> {
        let existing = || async {
            tenant::Entity::find().filter(tenant::Column::IdempotencyKey.eq(idempotency_key)).one(&self.db).await
        };
        if existing().await?.is_none() {
            let inserted = tenant::Entity::insert(tenant::ActiveModel {
                id: Set(Uuid::now_v7()),
                name: Set(name.to_owned()),
                created_at: Set(now),
                allow_promotional_transfers: Set(false),
                idempotency_key: Set(Some(idempotency_key.to_owned())),
                transfer_fraud: Set(None),
            })
            .exec_without_returning(&self.db)
            .await;
            match inserted {
                // A concurrent call with the same key made it first.
                Err(error) if reservoir_common::db::is_unique_violation(&error) => {}
                other => {
                    other?;
                }
            }
        }
        let row = existing().await?.ok_or_else(|| WalletError::internal("a tenant just created went missing"))?;
        if row.name != name {
            return Err(WalletError::IdempotencyKeyReused);
        }
        self.tenant(TenantId(row.id)).await?.ok_or(WalletError::NotFound("tenant"))
    }

    /// One tenant with its count of active keys.
    pub async fn tenant(&self, id: TenantId) -> Result<Option<TenantRow>, WalletError> {
        let Some(row) = tenant::Entity::find_by_id(id.0).one(&self.db).await? else {
            return Ok(None);
        };
        let active_keys = api_key::Entity::find()
            .filter(api_key::Column::TenantId.eq(id.0))
            .filter(active_at(Utc::now()))
            .count(&self.db)
            .await?;
        let active_keys = usize::try_from(active_keys).unwrap_or(usize::MAX);
        Ok(Some(TenantRow { id, name: row.name, created_at: row.created_at, active_keys }))
    }

    /// One key as listed, revoked or not.
    pub async fn key(&self, key_id: Uuid) -> Result<Option<KeyListed>, WalletError> {
        let Some(row) = api_key::Entity::find_by_id(key_id).one(&self.db).await? else {
            return Ok(None);
        };
        listed(&row).map(Some)
    }

    pub async fn list_tenants(&self) -> Result<Vec<TenantRow>, WalletError> {
        let tenants = tenant::Entity::find().order_by_asc(tenant::Column::CreatedAt).all(&self.db).await?;
        let keys = api_key::Entity::find().filter(api_key::Column::RevokedAt.is_null()).all(&self.db).await?;
        Ok(tenants
            .into_iter()
            .map(|row| TenantRow {
                id: TenantId(row.id),
                name: row.name,
                created_at: row.created_at,
                active_keys: keys.iter().filter(|key| key.tenant_id == row.id).count(),
            })
            .collect())
    }

    /// Whether the tenant lets promotional credits be transferred.
    pub async fn allow_promotional_transfers(&self, tenant_id: TenantId) -> Result<bool, WalletError> {
        let row =
            tenant::Entity::find_by_id(tenant_id.0).one(&self.db).await?.ok_or(WalletError::NotFound("tenant"))?;
        Ok(row.allow_promotional_transfers)
    }

    pub async fn set_allow_promotional_transfers(&self, tenant_id: TenantId, allow: bool) -> Result<(), WalletError> {
        tenant::Entity::update_many()
            .col_expr(tenant::Column::AllowPromotionalTransfers, Expr::value(allow))
            .filter(tenant::Column::Id.eq(tenant_id.0))
            .exec(&self.db)
            .await?;
        Ok(())
    }

    pub async fn tenant_exists(&self, tenant_id: TenantId) -> Result<bool, WalletError> {
        Ok(tenant::Entity::find_by_id(tenant_id.0).one(&self.db).await?.is_some())
    }

    /// Issues a key for a tenant; only its peppered hash is stored.
    pub async fn issue_key(
        &self,
        tenant: TenantId,
        pepper: &str,
        now: DateTime<Utc>,
    ) -> Result<IssuedKey, WalletError> {
        self.issue_key_with_role(tenant, KeyRole::Admin, pepper, now).await
    }

    /// Issues a tenant key that may do what `role` allows.
    pub async fn issue_key_with_role(
        &self,
        tenant: TenantId,
        role: KeyRole,
        pepper: &str,
        now: DateTime<Utc>,
    ) -> Result<IssuedKey, WalletError> {
        if !self.tenant_exists(tenant).await? {
            return Err(WalletError::NotFound("tenant"));
        }
        insert_key_in(&self.db, tenant, "TENANT", role, pepper, now).await
    }

    /// Issues a key for Reservoir's own services (metering, invoicing, ...),
    /// which act for whichever tenant each call names. It belongs to a tenant
    /// of its own that holds no accounts.
    pub async fn issue_service_key(&self, pepper: &str, now: DateTime<Utc>) -> Result<IssuedKey, WalletError> {
        let existing = tenant::Entity::find().filter(tenant::Column::Name.eq(SERVICES_TENANT)).one(&self.db).await?;
        let tenant = match existing {
            Some(row) => TenantId(row.id),
            None => self.create_tenant(SERVICES_TENANT, now).await?,
        };
        insert_key_in(&self.db, tenant, "SERVICE", KeyRole::Admin, pepper, now).await
    }

    /// A tenant's keys, oldest first, revoked ones included: what an operator
    /// matches the key ids on ledger entries and in the audit log against.
    pub async fn keys(&self, tenant_id: TenantId) -> Result<Vec<KeyListed>, WalletError> {
        let rows = api_key::Entity::find()
            .filter(api_key::Column::TenantId.eq(tenant_id.0))
            .order_by_asc(api_key::Column::CreatedAt)
            .order_by_asc(api_key::Column::Id)
            .all(&self.db)
            .await?;
        rows.iter().map(listed).collect()
    }

    /// Revokes a key by its id; `false` when there is no such active key.
    pub async fn revoke_key(&self, key_id: Uuid, now: DateTime<Utc>) -> Result<bool, WalletError> {
        let result = api_key::Entity::update_many()
            .col_expr(api_key::Column::RevokedAt, Expr::value(now))
            .filter(api_key::Column::Id.eq(key_id))
            .filter(active_at(now))
            .exec(&self.db)
            .await?;
        Ok(result.rows_affected == 1)
    }

    /// Replaces a key: a new one for the same tenant, of the same kind and
    /// role, while the old one keeps working for `overlap` (its revocation
    /// is set that far ahead), so clients can move over without a gap.
    /// `None` if no active key has that id.
    pub async fn rotate_key(
        &self,
        key_id: Uuid,
        overlap: chrono::Duration,
        pepper: &str,
        now: DateTime<Utc>,
    ) -> Result<Option<IssuedKey>, WalletError> {
        // The old key's end is set first, in the same transaction as its
        // successor: a revocation racing it either comes first (nothing is
        // rotated) or waits, and no successor outlives a revoked key.
        let reservoir_common::db::WriteTransaction { transaction, turn: _turn } = self.database.begin_write().await?;
        let Some(old) = api_key::Entity::find_by_id(key_id).filter(active_at(now)).one(&transaction).await? else {
            return Ok(None);
        };
        let ends = now + overlap;
        let ended = api_key::Entity::update_many()
            .col_expr(api_key::Column::RevokedAt, Expr::value(ends))
            .filter(api_key::Column::Id.eq(key_id))
            .filter(active_at(now))
            .exec(&transaction)
            .await?;
        if ended.rows_affected != 1 {
            return Ok(None);
        }
        let issued =
            insert_key_in(&transaction, TenantId(old.tenant_id), &old.kind, role_of(&old)?, pepper, now).await?;
        transaction.commit().await?;
        Ok(Some(issued))
    }

    /// Who holds the key with this hash, if it is issued and not revoked
    /// (a key being rotated out works until its revocation comes).
    pub async fn caller_for_key_hash(&self, key_hash: &str) -> Result<Option<Identity>, WalletError> {
        let row = api_key::Entity::find()
            .filter(api_key::Column::KeyHash.eq(key_hash))
            .filter(active_at(Utc::now()))
            .one(&self.db)
            .await?;
        let Some(row) = row else { return Ok(None) };
        let caller = if row.kind == "SERVICE" {
            Caller::Service
        } else {
            Caller::Tenant(TenantId(row.tenant_id), role_of(&row)?)
        };
        Ok(Some(Identity { caller, key: Some(KeyId(row.id)) }))
    }
}

/// Stores a new key's hash; the key itself is returned once, never stored.
async fn insert_key_in(
    connection: &impl ConnectionTrait,
    tenant_id: TenantId,
    kind: &str,
    role: KeyRole,
    pepper: &str,
    now: DateTime<Utc>,
) -> Result<IssuedKey, WalletError> {
    let key = generate_key();
    let id = Uuid::now_v7();
    api_key::Entity::insert(api_key::ActiveModel {
        id: Set(id),
        tenant_id: Set(tenant_id.0),
        key_hash: Set(hash_key(pepper, &key)),
        display_prefix: Set(key_display_prefix(&key)),
        created_at: Set(now),
        revoked_at: Set(None),
        kind: Set(kind.to_owned()),
        role: Set(role.as_str().to_owned()),
    })
    .exec_without_returning(connection)
    .await?;
    Ok(IssuedKey { id, tenant_id, key })
}

/// A stored key as listed.
fn listed(row: &api_key::Model) -> Result<KeyListed, WalletError> {
    Ok(KeyListed {
        id: row.id,
        tenant_id: TenantId(row.tenant_id),
        display_prefix: row.display_prefix.clone(),
        service: row.kind == "SERVICE",
        role: role_of(row)?,
        created_at: row.created_at,
        revoked_at: row.revoked_at,
    })
}

/// A stored key's role.
fn role_of(row: &api_key::Model) -> Result<KeyRole, WalletError> {
    KeyRole::parse(&row.role)
        .ok_or_else(|| WalletError::internal(format!("a key with the unknown role {:?}", row.role)))
}

/// Keys not revoked as of `at`: never, or only later (a rotation's overlap).
fn active_at(at: DateTime<Utc>) -> sea_orm::Condition {
    sea_orm::Condition::any().add(api_key::Column::RevokedAt.is_null()).add(api_key::Column::RevokedAt.gt(at))
}

/// Answers the auth layer from the key table.
pub struct StoreKeyResolver {
    pub store: Store,
    pub pepper: String,
}

impl KeyResolver for StoreKeyResolver {
    fn resolve(&self, key: String) -> futures::future::BoxFuture<'static, Result<Option<Identity>, String>> {
        let store = self.store.clone();
        let hash = hash_key(&self.pepper, &key);
        Box::pin(async move { store.caller_for_key_hash(&hash).await.map_err(|error| error.to_string()) })
    }

    fn tenant_exists(
        &self,
        _key: String,
        tenant: TenantId,
    ) -> futures::future::BoxFuture<'static, Result<bool, String>> {
        let store = self.store.clone();
        Box::pin(async move { store.tenant_exists(tenant).await.map_err(|error| error.to_string()) })
    }
}
