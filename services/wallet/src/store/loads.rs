//! What a change reads before it decides: the record under its key (and the
//! answer a record rebuilds), and the wallets it changes, one locked for a
//! change of its own or many unlocked for the group committer, with the
//! versions the committer holds them to.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use chrono::{DateTime, Utc};
use reservoir_common::auth::TenantId;
use sea_orm::sea_query::ArrayType;
use sea_orm::{
    ColumnTrait, ConnectionTrait, DbBackend, EntityTrait, QueryFilter, QueryOrder, QuerySelect, QueryTrait, Statement,
    Value,
};
use uuid::Uuid;

use super::entities::{account, grant, hold, replay as replay_record};
use super::ledger::{self, array};
use super::replay::{self, Recorded};
use super::{IdempotencyCheck, LoadPlan, Loaded, Reply, rows, to_i64};
use crate::domain::{Account, AccountId, Grant, Hold, Wallet};
use crate::error::WalletError;

/// The record under a check's digest: its answer for the same request, an
/// error for a different one, `None` for a fresh key.
pub(super) async fn lookup(
    connection: &impl ConnectionTrait,
    check: &IdempotencyCheck,
) -> Result<Option<Recorded>, WalletError> {
    let Some(record) = replay_record::Entity::find_by_id(check.digest.clone()).one(connection).await? else {
        return Ok(None);
    };
    if record.method != check.method_code() || !replay::same_request(&record.request_hash, &check.request_hash) {
        return Err(WalletError::IdempotencyKeyReused);
    }
    replay::decode(&record.answer).map(Some)
}

/// The recorded keys among `digests`: method, request hash and answer.
pub(crate) async fn recorded_keys(
    connection: &impl ConnectionTrait,
    digests: impl Iterator<Item = Vec<u8>>,
) -> Result<HashMap<Vec<u8>, (i16, Vec<u8>, Vec<u8>)>, WalletError> {
    let digests: Vec<Vec<u8>> = digests.collect();
    let mut recorded = HashMap::new();
    for chunk in digests.chunks(500) {
        let rows = replay_record::Entity::find()
            .filter(replay_record::Column::Digest.is_in(chunk.to_vec()))
            .all(connection)
            .await?;
        for row in rows {
            recorded.insert(row.digest, (row.method, row.request_hash, row.answer));
        }
    }
    Ok(recorded)
}

/// Answers again from a record: the entries are read back from the ledger,
/// where the record says they are. A record naming another tenant's account
/// (two keys whose digests met) is refused rather than shown.
pub(crate) async fn replayed(
    connection: &impl ConnectionTrait,
    tenant: TenantId,
    recorded: Recorded,
) -> Result<Reply, WalletError> {
    let stored = match recorded {
        Recorded::Legacy(bytes) => return Ok(Reply::Legacy(bytes)),
        Recorded::Answer(stored) => stored,
    };
    let mut wallets = Vec::with_capacity(stored.wallets.len());
    for part in &stored.wallets {
        let row = account::Entity::find()
            .filter(account::Column::Number.eq(to_i64(part.number)))
            .one(connection)
            .await?
            .ok_or_else(|| WalletError::internal("a replayed account is missing"))?;
        if row.tenant_id != tenant.0 {
            return Err(WalletError::IdempotencyKeyReused);
        }
        let rows = ledger::range(connection, part.number, part.first_sequence, part.count).await?;
        if rows.len() as u64 != part.count {
            return Err(WalletError::internal("a replayed answer's entries are missing"));
        }
        wallets.push((AccountId(row.id), ledger::entries_of(connection, AccountId(row.id), rows).await?));
    }
    stored.into_answer(wallets).map(|answer| Reply::Answer(Box::new(answer)))
}

/// The statement that reads the current version of each of `accounts`
/// that exists (a batch's accounts: fewer than SQLite's parameters).
pub(crate) fn account_versions_statement<'a>(accounts: impl Iterator<Item = &'a (TenantId, AccountId)>) -> Statement {
    account::Entity::find()
        .filter(account::Column::Id.is_in(accounts.map(|(_, account)| account.0)))
        .select_only()
        .column(account::Column::Id)
        .column(account::Column::Version)
        .build(DbBackend::Sqlite)
}

/// The versions read by [`account_versions_statement`], by account id.
pub(crate) fn versions_of(rows: Vec<sea_orm::QueryResult>) -> Result<HashMap<Uuid, u64>, WalletError> {
    rows.iter()
        .map(|row| {
            let id: Uuid = row.try_get("", "id")?;
            let version: i64 = row.try_get("", "version")?;
            Ok((id, u64::try_from(version).unwrap_or(0)))
        })
        .collect()
}

/// Loads many wallets at once, for the group committer, which holds its
/// writes to the versions read (PostgreSQL) or reads inside the single
/// writer's transaction (SQLite), so nothing is locked: on PostgreSQL one
/// statement for the accounts and grants of the whole batch (and one for
/// lapsed holds, only when an account holds funds), with its ids bound as
/// one array. Accounts of another tenant are left out, as if they did not
/// exist.
pub(crate) async fn load_many(
    connection: &impl ConnectionTrait,
    wanted: &BTreeSet<(TenantId, AccountId)>,
    now: DateTime<Utc>,
) -> Result<BTreeMap<(TenantId, AccountId), Wallet>, WalletError> {
    let ids: Vec<Uuid> = wanted.iter().map(|(_, account)| account.0).collect();
    let mut accounts = Vec::new();
    let mut grants: HashMap<Uuid, Vec<Grant>> = HashMap::new();
    let mut holds: HashMap<Uuid, Vec<Hold>> = HashMap::new();
    let backend = connection.get_database_backend();
    if backend == DbBackend::Postgres {
        let mut any_held = false;
        for (account, account_grants) in accounts_with_grants(connection, &ids, None).await? {
            any_held |= !account.held.is_zero();
            grants.insert(account.id.0, account_grants);
            accounts.push(account);
        }
        // Only a wallet holding funds can have a hold past its expiry.
        if any_held {
            for row in hold::Entity::find()
                .from_raw_sql(Statement::from_sql_and_values(
                    backend,
                    "SELECT * FROM holds WHERE account_id = ANY($1) AND status = 'ACTIVE' AND expires_at <= $2",
                    [array(ArrayType::Uuid, ids.iter().map(|id| Value::from(*id)).collect()), now.into()],
                ))
                .all(connection)
                .await?
            {
                holds.entry(row.account_id).or_default().push(rows::hold_from_row(row)?);
            }
        }
    } else {
        for chunk in ids.chunks(500) {
            let rows = account::Entity::find()
                .filter(account::Column::Id.is_in(chunk.to_vec()))
                .order_by_asc(account::Column::Id)
                .lock_exclusive()
                .all(connection)
                .await?;
            for row in rows {
                accounts.push(rows::account_from_row(row)?);
            }
            for row in grant::Entity::find()
                .filter(grant::Column::AccountId.is_in(chunk.to_vec()))
                .filter(grant::Column::Status.eq("ACTIVE"))
                .all(connection)
                .await?
            {
                grants.entry(row.account_id).or_default().push(rows::grant_from_row(row)?);
            }
            for row in hold::Entity::find()
                .filter(hold::Column::AccountId.is_in(chunk.to_vec()))
                .filter(hold::Column::Status.eq("ACTIVE"))
                .filter(hold::Column::ExpiresAt.lte(now))
                .all(connection)
                .await?
            {
                holds.entry(row.account_id).or_default().push(rows::hold_from_row(row)?);
            }
        }
    }
    Ok(accounts
        .into_iter()
        .filter(|account| wanted.contains(&(account.tenant_id, account.id)))
        .map(|account| {
            let id = account.id.0;
            let key = (account.tenant_id, account.id);
            (key, Wallet::new(account, grants.remove(&id).unwrap_or_default(), holds.remove(&id).unwrap_or_default()))
        })
        .collect())
}

/// Accounts and their active grants in one statement (PostgreSQL): a batch
/// of wallets not kept costs one round trip and one snapshot, not one per
/// table. With `tenant`, only that tenant's accounts. Nothing is locked: a
/// `FOR UPDATE OF a` here would wait for a row and then see its newest
/// version beside grants as of the statement's start.
pub(super) async fn accounts_with_grants(
    connection: &impl ConnectionTrait,
    ids: &[Uuid],
    tenant: Option<TenantId>,
) -> Result<Vec<(Account, Vec<Grant>)>, WalletError> {
    // The account's columns under their own names, the grant's prefixed:
    // an empty prefix spares sea-orm building each column's name per row.
    static SQL: std::sync::LazyLock<[String; 2]> = std::sync::LazyLock::new(|| {
        use sea_orm::{IdenStatic, Iterable};
        let grant_columns: Vec<String> =
            grant::Column::iter().map(|column| format!("g.{0} AS g_{0}", column.as_str())).collect();
        let select = format!(
            "SELECT a.*, {} FROM accounts a LEFT JOIN grants g ON g.account_id = a.id AND g.status = 'ACTIVE' \
             WHERE a.id = ANY($1)",
            grant_columns.join(", ")
        );
        let order = "ORDER BY a.id, g.created_sequence, g.id";
        [format!("{select} {order}"), format!("{select} AND a.tenant_id = $2 {order}")]
    });
    let sql = &SQL[usize::from(tenant.is_some())];
    let mut values = vec![array(ArrayType::Uuid, ids.iter().map(|id| Value::from(*id)).collect())];
    if let Some(tenant) = tenant {
        values.push(tenant.0.into());
    }
    let rows = connection.query_all_raw(Statement::from_sql_and_values(DbBackend::Postgres, sql, values)).await?;
    let mut wallets: Vec<(Account, Vec<Grant>)> = Vec::new();
    for row in rows {
        use sea_orm::FromQueryResult;
        let id: Uuid = row.try_get("", "id")?;
        if wallets.last().is_none_or(|(account, _)| account.id.0 != id) {
            wallets.push((rows::account_from_row(account::Model::from_query_result(&row, "")?)?, Vec::new()));
        }
        // An account without active grants has one row, with no grant in it.
        let grant_id: Option<Uuid> = row.try_get("", "g_id")?;
        if grant_id.is_some()
            && let Some((_, grants)) = wallets.last_mut()
        {
            grants.push(rows::grant_from_row(grant::Model::from_query_result(&row, "g_")?)?);
        }
    }
    Ok(wallets)
}

/// Loads a wallet: the account (locked when `for_update`), its active grants
/// and any others the plan names, its active holds already past expiry and
/// those the plan names, and for a refund the refunded operation's entries.
pub(super) async fn load(
    connection: &impl ConnectionTrait,
    tenant_id: TenantId,
    account_id: AccountId,
    plan: &LoadPlan,
    now: DateTime<Utc>,
    for_update: bool,
) -> Result<Loaded, WalletError> {
    let mut query = account::Entity::find_by_id(account_id.0).filter(account::Column::TenantId.eq(tenant_id.0));
    if for_update {
        query = query.lock_exclusive();
    }
    let account_row = query.one(connection).await?.ok_or(WalletError::NotFound("account"))?;
    let account = rows::account_from_row(account_row)?;

    let (operation_entries, prior_refunds) = match plan.refund_of {
        Some(entry_id) => {
            let row = ledger::by_id(connection, entry_id).await?.ok_or(WalletError::NotFound("entry"))?;
            if row.account_number != to_i64(account.number) {
                return Err(WalletError::NotFound("entry"));
            }
            let rows = ledger::operation_of(connection, &row).await?;
            let sequences: Vec<i64> = rows.iter().map(|row| row.sequence).collect();
            let entries = ledger::entries_of(connection, account.id, rows).await?;
            let refunds = ledger::refunds_of(connection, to_i64(account.number), sequences).await?;
            let refunds = ledger::entries_of(connection, account.id, refunds).await?;
            (entries, refunds)
        }
        None => (Vec::new(), Vec::new()),
    };

    let mut grant_ids: BTreeSet<Uuid> = plan.grant_ids.iter().map(|id| id.0).collect();
    grant_ids.extend(operation_entries.iter().filter_map(|entry| entry.grant_id.map(|id| id.0)));
    let mut grant_rows = grant::Entity::find()
        .filter(grant::Column::AccountId.eq(account_id.0))
        .filter(grant::Column::Status.eq("ACTIVE"))
        .all(connection)
        .await?;
    let missing: Vec<Uuid> =
        grant_ids.iter().filter(|id| !grant_rows.iter().any(|row| row.id == **id)).copied().collect();
    if !missing.is_empty() {
        grant_rows.extend(
            grant::Entity::find()
                .filter(grant::Column::AccountId.eq(account_id.0))
                .filter(grant::Column::Id.is_in(missing))
                .all(connection)
                .await?,
        );
    }
    let grants: Vec<Grant> = grant_rows.into_iter().map(rows::grant_from_row).collect::<Result<_, _>>()?;

    let mut hold_rows = hold::Entity::find()
        .filter(hold::Column::AccountId.eq(account_id.0))
        .filter(hold::Column::Status.eq("ACTIVE"))
        .filter(hold::Column::ExpiresAt.lte(now))
        .all(connection)
        .await?;
    let wanted: Vec<Uuid> =
        plan.hold_ids.iter().map(|id| id.0).filter(|id| !hold_rows.iter().any(|row| row.id == *id)).collect();
    if !wanted.is_empty() {
        hold_rows.extend(
            hold::Entity::find()
                .filter(hold::Column::AccountId.eq(account_id.0))
                .filter(hold::Column::Id.is_in(wanted))
                .all(connection)
                .await?,
        );
    }
    let holds: Vec<Hold> = hold_rows.into_iter().map(rows::hold_from_row).collect::<Result<_, _>>()?;
    Ok(Loaded { wallet: Wallet::new(account, grants, holds), operation_entries, prior_refunds })
}

/// Two wallets of a tenant loaded for a change, their rows locked in id
/// order (so two changes of the same pair in opposite orders cannot
/// deadlock), answered in the order asked.
pub(super) async fn load_pair(
    connection: &impl ConnectionTrait,
    tenant_id: TenantId,
    (first, second): (AccountId, AccountId),
    now: DateTime<Utc>,
) -> Result<(Wallet, Wallet), WalletError> {
    let plan = LoadPlan::default();
    let (low, high) = if first <= second { (first, second) } else { (second, first) };
    let low_wallet = load(connection, tenant_id, low, &plan, now, true).await?.wallet;
    let high_wallet = load(connection, tenant_id, high, &plan, now, true).await?.wallet;
    Ok(if first == low { (low_wallet, high_wallet) } else { (high_wallet, low_wallet) })
}
