//! Replay records in the `idempotency_keys` table metering and payments
//! share the shape of: a change's answer kept under its idempotency key with
//! the method and request hash it was made with. Found again by the key, a
//! record replays its answer; sent with another method or request, the key is
//! refused. (The wallet keeps a compact record of its own, written in its
//! group commit.)

use chrono::{DateTime, Utc};
use sea_orm::sea_query::OnConflict;
use sea_orm::{ActiveValue::Set, ConnectionTrait, DbErr, EntityTrait};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::auth::TenantId;
use crate::idempotency::{Replayed, answer_record};

pub mod record {
    use sea_orm::entity::prelude::*;

    /// The answer of a call made with an idempotency key, replayed on a retry.
    #[derive(Clone, Debug, PartialEq, DeriveEntityModel)]
    #[sea_orm(table_name = "idempotency_keys")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub tenant_id: Uuid,
        #[sea_orm(primary_key, auto_increment = false)]
        pub key: String,
        pub method: String,
        pub request_hash: String,
        /// The encoded response, in records written before `answer`; empty since.
        pub response: Vec<u8>,
        /// What rebuilds the answer, as JSON.
        pub answer: Option<String>,
        pub created_at: DateTimeUtc,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

/// Why a replay record could not be replayed.
#[derive(Debug)]
pub enum ReplayFailure {
    /// The key was recorded with another method or another request.
    KeyReused,
    /// The record is there but its answer does not read.
    Unreadable(String),
    Database(DbErr),
}

impl From<DbErr> for ReplayFailure {
    fn from(error: DbErr) -> Self {
        Self::Database(error)
    }
}

/// Who made a change and how: the key it was sent with, the method and the
/// hash of its request.
#[derive(Debug, Clone, Copy)]
pub struct Call<'a> {
    pub tenant: TenantId,
    pub key: &'a str,
    pub method: &'a str,
    pub request_hash: &'a str,
}

/// What a second record under the same key does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnSameKey {
    /// The first record stays and this one is dropped: for answers recorded
    /// after their change committed, where a concurrent retry recorded the
    /// same answer.
    KeepFirst,
    /// The insert fails with a unique violation, failing the caller's
    /// transaction: for records written in the change's own transaction.
    Fail,
}

/// The answer recorded under a call's key, if any: the record of it (`T`,
/// kept as JSON), or, for a record from before that, the encoded response.
pub async fn replay<T: DeserializeOwned>(
    connection: &impl ConnectionTrait,
    call: Call<'_>,
) -> Result<Option<Replayed<T>>, ReplayFailure> {
    let Some(found) = record::Entity::find_by_id((call.tenant.0, call.key.to_owned())).one(connection).await? else {
        return Ok(None);
    };
    if found.method != call.method || found.request_hash != call.request_hash {
        return Err(ReplayFailure::KeyReused);
    }
    Replayed::read(found.answer.as_deref(), found.response).map(Some).map_err(ReplayFailure::Unreadable)
}

/// Records what rebuilds a call's answer under its key.
pub async fn record<T: Serialize>(
    connection: &impl ConnectionTrait,
    call: Call<'_>,
    answer: &T,
    now: DateTime<Utc>,
    on_same_key: OnSameKey,
) -> Result<(), DbErr> {
    let answer = answer_record(answer).map_err(DbErr::Custom)?;
    let insert = record::Entity::insert(record::ActiveModel {
        tenant_id: Set(call.tenant.0),
        key: Set(call.key.to_owned()),
        method: Set(call.method.to_owned()),
        request_hash: Set(call.request_hash.to_owned()),
        response: Set(Vec::new()),
        answer: Set(Some(answer)),
        created_at: Set(now),
    });
    match on_same_key {
        OnSameKey::Fail => insert.exec_without_returning(connection).await?,
        OnSameKey::KeepFirst => {
            insert
                .on_conflict(
                    OnConflict::columns([record::Column::TenantId, record::Column::Key]).do_nothing().to_owned(),
                )
                .exec_without_returning(connection)
                .await?
        }
    };
    Ok(())
}
