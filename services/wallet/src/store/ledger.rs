//! The ledger table: entries keyed by account number and sequence, written
//! only ever by INSERT. On PostgreSQL a batch of entries is one statement
//! whose columns are bound as arrays, so its text (and its prepared plan) is
//! the same whatever the batch size.

use std::collections::{BTreeSet, HashMap};

use reservoir_common::db::rows_per_insert;
use sea_orm::sea_query::{ArrayType, Expr};
use sea_orm::{
    ActiveValue, ColumnTrait, ConnectionTrait, DbBackend, DbErr, EntityTrait, QueryFilter, QueryOrder, QuerySelect,
    QueryTrait, Statement, Value,
};
use uuid::Uuid;

use super::entities::{account, entry};
use super::rows;
use super::write::Script;
use crate::domain::{AccountId, Entry, EntryId, LedgerHash, chain};
use crate::error::WalletError;

fn to_i64(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

/// An array parameter built from values of one type.
pub fn array(kind: ArrayType, values: Vec<Value>) -> Value {
    Value::Array(kind, Some(Box::new(values)))
}

fn value<T>(model: &ActiveValue<T>) -> Option<&T>
where
    T: Into<Value>,
{
    match model {
        ActiveValue::Set(value) | ActiveValue::Unchanged(value) => Some(value),
        ActiveValue::NotSet => None,
    }
}

/// Adds the inserts of entries to a SQLite script (PostgreSQL writes them
/// with the rest of a batch, see [`insert_body`]).
pub fn push_sqlite(script: &mut Script, rows: Vec<entry::ActiveModel>) {
    // An entry row is a few hundred bytes.
    for chunk in rows.chunks(rows_per_insert(400)) {
        script.push(entry::Entity::insert_many(chunk.to_vec()).build(DbBackend::Sqlite));
    }
}

/// The PostgreSQL statement that inserts `rows`, its columns bound as arrays
/// through `bind` (which returns each array's placeholder with its cast).
/// Arrays cannot carry NULLs through the driver, so empty texts, the nil UUID
/// and a zero sequence stand for NULL and are turned back into it.
pub fn insert_body(
    bind: &mut dyn FnMut(ArrayType, Vec<Value>, &str) -> String,
    rows: &[entry::ActiveModel],
) -> Result<String, WalletError> {
    let count = rows.len();
    let mut columns: Vec<Vec<Value>> = (0..17).map(|_| Vec::with_capacity(count)).collect();
    let text = |field: &ActiveValue<Option<String>>| Value::from(value(field).cloned().flatten().unwrap_or_default());
    for row in rows {
        let missing = || WalletError::internal("an entry row is incomplete");
        let values: [Value; 17] = [
            Value::from(*value(&row.account_number).ok_or_else(missing)?),
            Value::from(*value(&row.sequence).ok_or_else(missing)?),
            Value::from(*value(&row.created_at).ok_or_else(missing)?),
            Value::from(value(&row.grant_id).copied().flatten().unwrap_or(Uuid::nil())),
            Value::from(value(&row.hold_id).copied().flatten().unwrap_or(Uuid::nil())),
            Value::from(*value(&row.position).ok_or_else(missing)?),
            Value::from(*value(&row.kind).ok_or_else(missing)?),
            Value::from(value(&row.amount).ok_or_else(missing)?.0),
            Value::from(value(&row.balance_after).ok_or_else(missing)?.0),
            Value::from(value(&row.idempotency_key).ok_or_else(missing)?.clone()),
            text(&row.correlation_id),
            text(&row.meter_code),
            text(&row.description),
            text(&row.metadata),
            Value::from(value(&row.refunded_sequence).copied().flatten().unwrap_or(0)),
            Value::from(value(&row.key_id).copied().flatten().unwrap_or(Uuid::nil())),
            Value::from(value(&row.hash).cloned().flatten().unwrap_or_default()),
        ];
        for (column, value) in columns.iter_mut().zip(values) {
            column.push(value);
        }
    }
    let kinds = [
        (ArrayType::BigInt, "bigint[]"),
        (ArrayType::BigInt, "bigint[]"),
        (ArrayType::ChronoDateTimeUtc, "timestamptz[]"),
        (ArrayType::Uuid, "uuid[]"),
        (ArrayType::Uuid, "uuid[]"),
        (ArrayType::Int, "int[]"),
        (ArrayType::SmallInt, "smallint[]"),
        (ArrayType::Decimal, "numeric[]"),
        (ArrayType::Decimal, "numeric[]"),
        (ArrayType::String, "text[]"),
        (ArrayType::String, "text[]"),
        (ArrayType::String, "text[]"),
        (ArrayType::String, "text[]"),
        (ArrayType::String, "text[]"),
        (ArrayType::BigInt, "bigint[]"),
        (ArrayType::Uuid, "uuid[]"),
        (ArrayType::Bytes, "bytea[]"),
    ];
    let parameters: Vec<String> =
        kinds.into_iter().zip(columns).map(|((kind, cast), column)| bind(kind, column, cast)).collect();
    Ok(format!(
        "INSERT INTO ledger (account_number, sequence, created_at, grant_id, hold_id, position, kind, amount, \
         balance_after, idempotency_key, correlation_id, meter_code, description, metadata, refunded_sequence, \
         key_id, hash) \
         SELECT v.n, v.s, v.c, NULLIF(v.g, '00000000-0000-0000-0000-000000000000'::uuid), \
         NULLIF(v.h, '00000000-0000-0000-0000-000000000000'::uuid), v.p, v.k, v.a, v.b, v.key, NULLIF(v.cor, ''), \
         NULLIF(v.m, ''), NULLIF(v.d, ''), NULLIF(v.md, ''), NULLIF(v.r, 0), \
         NULLIF(v.api_key, '00000000-0000-0000-0000-000000000000'::uuid), NULLIF(v.hash, ''::bytea) \
         FROM UNNEST({}) AS v(n, s, c, g, h, p, k, a, b, key, cor, m, d, md, r, api_key, hash)",
        parameters.join(", ")
    ))
}

/// Turns rows of one account into entries, looking up the ids of the entries
/// refunds point to (an older entry keeps its own id).
pub async fn entries_of(
    connection: &impl ConnectionTrait,
    account_id: AccountId,
    rows: Vec<entry::Model>,
) -> Result<Vec<Entry>, WalletError> {
    let refunded: BTreeSet<(i64, i64)> =
        rows.iter().filter_map(|row| row.refunded_sequence.map(|sequence| (row.account_number, sequence))).collect();
    let mut legacy: HashMap<(i64, i64), Uuid> = HashMap::new();
    for (number, sequence) in &refunded {
        let row = entry::Entity::find_by_id((*number, *sequence))
            .select_only()
            .column(entry::Column::LegacyId)
            .into_tuple::<Option<Uuid>>()
            .one(connection)
            .await?;
        if let Some(Some(id)) = row {
            legacy.insert((*number, *sequence), id);
        }
    }
    rows.into_iter()
        .map(|row| {
            let refunded_id = row.refunded_sequence.map(|sequence| match legacy.get(&(row.account_number, sequence)) {
                Some(id) => EntryId(*id),
                None => {
                    EntryId::of(u64::try_from(row.account_number).unwrap_or(0), u64::try_from(sequence).unwrap_or(0))
                }
            });
            rows::entry_from_row(row, account_id, refunded_id)
        })
        .collect()
}

/// The entries of one account from `first` on, `count` of them.
pub async fn range(
    connection: &impl ConnectionTrait,
    number: u64,
    first: u64,
    count: u64,
) -> Result<Vec<entry::Model>, WalletError> {
    if count == 0 {
        return Ok(Vec::new());
    }
    Ok(entry::Entity::find()
        .filter(entry::Column::AccountNumber.eq(to_i64(number)))
        .filter(entry::Column::Sequence.gte(to_i64(first)))
        .filter(entry::Column::Sequence.lt(to_i64(first.saturating_add(count))))
        .order_by_asc(entry::Column::Sequence)
        .all(connection)
        .await?)
}

/// The entry an id names: by its place, or for an older entry by the id it kept.
pub async fn by_id(connection: &impl ConnectionTrait, id: EntryId) -> Result<Option<entry::Model>, WalletError> {
    if let Some((number, sequence)) = id.parts() {
        return Ok(entry::Entity::find_by_id((to_i64(number), to_i64(sequence))).one(connection).await?);
    }
    Ok(entry::Entity::find().filter(entry::Column::LegacyId.eq(id.0)).one(connection).await?)
}

/// The entries of the operation `row` belongs to on its account: they follow
/// one another from position 0.
pub async fn operation_of(
    connection: &impl ConnectionTrait,
    row: &entry::Model,
) -> Result<Vec<entry::Model>, WalletError> {
    let first = row.sequence - i64::from(row.position);
    let mut entries = Vec::new();
    let mut after = first - 1;
    loop {
        let page = entry::Entity::find()
            .filter(entry::Column::AccountNumber.eq(row.account_number))
            .filter(entry::Column::Sequence.gt(after))
            .order_by_asc(entry::Column::Sequence)
            .limit(100)
            .all(connection)
            .await?;
        let full = page.len() == 100;
        for candidate in page {
            if candidate.sequence != first && candidate.position == 0 {
                return Ok(entries);
            }
            after = candidate.sequence;
            entries.push(candidate);
        }
        if !full {
            return Ok(entries);
        }
    }
}

/// Refunds written against entries of `number` at `sequences`.
pub async fn refunds_of(
    connection: &impl ConnectionTrait,
    number: i64,
    sequences: Vec<i64>,
) -> Result<Vec<entry::Model>, WalletError> {
    if sequences.is_empty() {
        return Ok(Vec::new());
    }
    Ok(entry::Entity::find()
        .filter(entry::Column::AccountNumber.eq(number))
        .filter(entry::Column::RefundedSequence.is_in(sequences))
        .order_by_asc(entry::Column::Sequence)
        .all(connection)
        .await?)
}

/// The stored form of a batch of entries, each at its place in its operation.
pub fn rows_for(entries: &[Entry], account_number: u64) -> Vec<entry::ActiveModel> {
    let mut rows_out = Vec::with_capacity(entries.len());
    for entry in entries {
        let refunded_sequence = entry.refunded_entry_id.and_then(|id| id.parts()).map(|(_, sequence)| sequence);
        rows_out.push(rows::entry_to_row(entry, account_number, refunded_sequence));
    }
    rows_out
}

/// Fills in the sequence a refund points to where the refunded entry is an
/// older one, known by the id it kept.
pub async fn resolve_legacy_refunds(
    connection: &impl ConnectionTrait,
    entries: &[Entry],
    rows_out: &mut [entry::ActiveModel],
) -> Result<(), WalletError> {
    for (entry, row) in entries.iter().zip(rows_out.iter_mut()) {
        let Some(id) = entry.refunded_entry_id else { continue };
        if id.parts().is_some() {
            continue;
        }
        let found = entry::Entity::find().filter(entry::Column::LegacyId.eq(id.0)).one(connection).await?;
        let sequence = found.map(|found| found.sequence).ok_or(WalletError::NotFound("entry"))?;
        row.refunded_sequence = ActiveValue::Set(Some(sequence));
    }
    Ok(())
}

/// Entries read at a time when a chain is computed or checked.
pub const CHAIN_PAGE: u64 = 1_000;

/// Hashes every entry written before entries were chained, account by
/// account in sequence order, and sets each account's head. Run once, by
/// the migration that brought the chain, with the append-only rule lifted.
pub async fn chain_existing(connection: &impl ConnectionTrait) -> Result<(), WalletError> {
    let accounts: Vec<(Uuid, i64)> = account::Entity::find()
        .select_only()
        .column(account::Column::Id)
        .column(account::Column::Number)
        .order_by_asc(account::Column::Number)
        .into_tuple()
        .all(connection)
        .await?;
    for (id, number) in accounts {
        let mut head = LedgerHash::GENESIS;
        let mut after = 0_i64;
        loop {
            // The columns as they were when entries were chained, named one
            // by one: a column added later is not there yet when this runs.
            let rows: Vec<entry::Model> = connection
                .query_all_raw(Statement::from_sql_and_values(
                    connection.get_database_backend(),
                    "SELECT account_number, sequence, created_at, grant_id, hold_id, position, kind, amount, \
                     balance_after, idempotency_key, correlation_id, meter_code, description, metadata, \
                     refunded_sequence, legacy_id, key_id FROM ledger WHERE account_number = $1 AND sequence > $2 \
                     ORDER BY sequence LIMIT $3",
                    [number.into(), after.into(), i64::try_from(CHAIN_PAGE).unwrap_or(i64::MAX).into()],
                ))
                .await?
                .iter()
                .map(|row| -> Result<entry::Model, DbErr> {
                    Ok(entry::Model {
                        account_number: row.try_get("", "account_number")?,
                        sequence: row.try_get("", "sequence")?,
                        created_at: row.try_get("", "created_at")?,
                        grant_id: row.try_get("", "grant_id")?,
                        hold_id: row.try_get("", "hold_id")?,
                        position: row.try_get("", "position")?,
                        kind: row.try_get("", "kind")?,
                        amount: row.try_get("", "amount")?,
                        balance_after: row.try_get("", "balance_after")?,
                        idempotency_key: row.try_get("", "idempotency_key")?,
                        correlation_id: row.try_get("", "correlation_id")?,
                        meter_code: row.try_get("", "meter_code")?,
                        description: row.try_get("", "description")?,
                        metadata: row.try_get("", "metadata")?,
                        refunded_sequence: row.try_get("", "refunded_sequence")?,
                        legacy_id: row.try_get("", "legacy_id")?,
                        key_id: row.try_get("", "key_id")?,
                        hash: None,
                    })
                })
                .collect::<Result<_, _>>()?;
            let Some(last) = rows.last() else { break };
            after = last.sequence;
            for entry in entries_of(connection, AccountId(id), rows).await? {
                head = chain::entry_hash(&head, &entry);
                entry::Entity::update_many()
                    .col_expr(entry::Column::Hash, Expr::value(head.0.to_vec()))
                    .filter(entry::Column::AccountNumber.eq(number))
                    .filter(entry::Column::Sequence.eq(i64::try_from(entry.sequence).unwrap_or(i64::MAX)))
                    .exec(connection)
                    .await?;
            }
        }
        account::Entity::update_many()
            .col_expr(account::Column::LedgerHead, Expr::value(rows::head_to_row(head)))
            .filter(account::Column::Id.eq(id))
            .exec(connection)
            .await?;
    }
    Ok(())
}
