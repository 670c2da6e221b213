//! Balance reads check their account's version together. A read queues for
//! the version; one task takes everything queued and reads all of it with one
//! statement, sent after every read it answers was queued, so each read still
//! sees every change committed before it began. At thousands of reads a
//! second that is a statement per burst instead of one per read, which is
//! most of what a read costs the database and the service.

use std::collections::HashMap;

use reservoir_common::auth::TenantId;
use sea_orm::sea_query::ArrayType;
use sea_orm::{ConnectionTrait, DatabaseConnection, DbBackend, Statement, Value};
use tokio::sync::{mpsc, oneshot};
use uuid::Uuid;

use super::entities;
use super::ledger::array;
use crate::domain::AccountId;
use crate::error::WalletError;
use reservoir_common::db::Amount;

/// Reads answered by one statement at most.
const READ_MAX: usize = 1_000;
/// Reads queued; past this, readers wait to queue.
const QUEUE_MAX: usize = 8_192;

/// An account's version as committed, and whether it holds anything (a
/// wallet with holds is read afresh: a hold lapses without a new version).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Current {
    pub version: u64,
    pub holds: bool,
}

type Answer = Result<Option<Current>, WalletError>;

struct Wanted {
    tenant: TenantId,
    account: AccountId,
    answer: oneshot::Sender<Answer>,
}

/// Reads versions: queued and read together on PostgreSQL; on SQLite a
/// statement is no round trip, and each read takes its own.
#[derive(Clone)]
pub struct VersionReader {
    pool: DatabaseConnection,
    wanted: Option<mpsc::Sender<Wanted>>,
}

impl VersionReader {
    /// On PostgreSQL, starts the task that reads queued versions.
    pub fn start(pool: DatabaseConnection) -> Self {
        let wanted = (pool.get_database_backend() == DbBackend::Postgres).then(|| {
            let (wanted, receiver) = mpsc::channel(QUEUE_MAX);
            tokio::spawn(read_queued(pool.clone(), receiver));
            wanted
        });
        Self { pool, wanted }
    }

    /// The account's current version; `None` if the tenant has no such account.
    pub async fn of(&self, tenant: TenantId, account: AccountId) -> Answer {
        let Some(wanted) = &self.wanted else {
            return read_one(&self.pool, tenant, account).await;
        };
        let stopped = || WalletError::Unavailable("the version reader has stopped".into());
        let (answer, answered) = oneshot::channel();
        wanted.send(Wanted { tenant, account, answer }).await.map_err(|_| stopped())?;
        answered.await.map_err(|_| stopped())?
    }
}

/// One account's version, by its own statement.
async fn read_one(pool: &DatabaseConnection, tenant: TenantId, account: AccountId) -> Answer {
    use sea_orm::{ColumnTrait, EntityTrait, QueryFilter, QuerySelect};
    let current: Option<(i64, Amount)> = entities::account::Entity::find_by_id(account.0)
        .filter(entities::account::Column::TenantId.eq(tenant.0))
        .select_only()
        .column(entities::account::Column::Version)
        .column(entities::account::Column::Held)
        .into_tuple()
        .one(pool)
        .await?;
    Ok(current
        .map(|(version, held)| Current { version: u64::try_from(version).unwrap_or(0), holds: !held.0.is_zero() }))
}

async fn read_queued(pool: DatabaseConnection, mut receiver: mpsc::Receiver<Wanted>) {
    let mut wanted = Vec::new();
    while receiver.recv_many(&mut wanted, READ_MAX).await > 0 {
        match read(&pool, &wanted).await {
            Ok(found) => {
                for one in wanted.drain(..) {
                    // The reader may have gone.
                    let _ = one.answer.send(Ok(found.get(&(one.tenant, one.account)).copied()));
                }
            }
            Err(error) => {
                for one in wanted.drain(..) {
                    let _ = one.answer.send(Err(error.again()));
                }
            }
        }
    }
}

/// One statement for every account wanted, each held to its tenant.
async fn read(
    pool: &DatabaseConnection,
    wanted: &[Wanted],
) -> Result<HashMap<(TenantId, AccountId), Current>, WalletError> {
    const SQL: &str = "SELECT a.id, a.tenant_id, a.version, a.held <> 0 AS holds \
                       FROM accounts a JOIN UNNEST($1::uuid[], $2::uuid[]) AS w(id, tenant_id) \
                       ON a.id = w.id AND a.tenant_id = w.tenant_id";
    let mut pairs: Vec<(Uuid, Uuid)> = wanted.iter().map(|one| (one.account.0, one.tenant.0)).collect();
    pairs.sort_unstable();
    pairs.dedup();
    let ids = array(ArrayType::Uuid, pairs.iter().map(|(id, _)| Value::from(*id)).collect());
    let tenants = array(ArrayType::Uuid, pairs.iter().map(|(_, tenant)| Value::from(*tenant)).collect());
    let rows = pool.query_all_raw(Statement::from_sql_and_values(DbBackend::Postgres, SQL, [ids, tenants])).await?;
    let mut found = HashMap::with_capacity(rows.len());
    for row in rows {
        let version: i64 = row.try_get("", "version")?;
        found.insert(
            (TenantId(row.try_get("", "tenant_id")?), AccountId(row.try_get("", "id")?)),
            Current { version: u64::try_from(version).unwrap_or(0), holds: row.try_get("", "holds")? },
        );
    }
    Ok(found)
}
