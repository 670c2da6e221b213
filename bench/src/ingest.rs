//! The ingestion scenario: senders of 1,000-event batches (a tenth of each
//! batch repeating earlier ids) against metering, synchronous or
//! asynchronous, and the books and drawdown lag checked after.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use reservoir_proto::metering as metering_pb;
use reservoir_proto::wallet as pb;
use reservoir_wallet::domain::{AccountId, Entry, EntryId, EntryKind, GrantId, OperationId, chain};
use sea_orm::{ConnectionTrait, DatabaseConnection, DbBackend, Statement};

use crate::load;
use crate::setup::{Metering, Wallet};
use crate::stats::{Random, RunResult};

/// Events per IngestEvents: metering's limit.
pub const BATCH: usize = 1_000;
/// Concurrent senders.
pub const SENDERS: usize = 4;

/// The tenant the bench's key belongs to.
pub async fn tenant_of(wallet: &Wallet) -> anyhow::Result<uuid::Uuid> {
    let caller = wallet.clone().get_caller(pb::GetCallerRequest {}).await?.into_inner();
    Ok(uuid::Uuid::parse_str(&caller.tenant_id)?)
}

/// Opens `count` USD accounts of the tenant straight in the wallet's tables,
/// each with one paid grant of `funds` and the GRANT entry that records it,
/// hashed and chained as the wallet does, as CreateAccount and GrantCredits
/// would leave them: opening a million accounts through the API would take
/// most of an hour.
pub async fn bulk_accounts(
    books: &DatabaseConnection,
    tenant: uuid::Uuid,
    count: usize,
    funds: i64,
) -> anyhow::Result<Vec<String>> {
    let mut ids = Vec::with_capacity(count);
    let mut opened = 0;
    let amount = rust_decimal::Decimal::from(funds);
    while opened < count {
        let chunk = (count - opened).min(50_000);
        let numbers = books
            .query_all_raw(Statement::from_sql_and_values(
                DbBackend::Postgres,
                "SELECT nextval('account_numbers') AS number FROM generate_series(1, $1::int)",
                [i32::try_from(chunk)?.into()],
            ))
            .await?;
        let now = chrono::Utc::now();
        let (mut accounts, mut numbers_out, mut grants, mut hashes) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for row in numbers {
            let number: i64 = row.try_get("", "number")?;
            let (account, grant) = (uuid::Uuid::new_v4(), uuid::Uuid::new_v4());
            let entry = grant_entry(account, u64::try_from(number)?, grant, amount, now);
            let hash = chain::entry_hash(&chain::LedgerHash::GENESIS, &entry).0.to_vec();
            accounts.push(sea_orm::Value::from(account));
            numbers_out.push(sea_orm::Value::from(number));
            grants.push(sea_orm::Value::from(grant));
            hashes.push(sea_orm::Value::from(hash));
            ids.push(account.to_string());
        }
        let array = |kind, values| sea_orm::Value::Array(kind, Some(Box::new(values)));
        use sea_orm::sea_query::ArrayType;
        books
            .execute_raw(Statement::from_sql_and_values(
                DbBackend::Postgres,
                "WITH v AS (SELECT * FROM UNNEST($2::uuid[], $3::bigint[], $4::uuid[], $5::bytea[]) AS v(id, n, g, h)), \
                 new AS ( \
                   INSERT INTO accounts (id, number, tenant_id, external_id, unit_code, unit_scale, unit_price_per_credit, \
                   unit_billing_currency, overdraft_policy, credit_limit, status, low_balance_alerted, depleted_alerted, \
                   overdraft_used, held, last_sequence, metadata, created_at, updated_at, credit_blocked, version, \
                   low_balance_warned, spend_month, month_spend, cap_alerted_percent, transfer_day, transferred_today, \
                   ledger_head) \
                   SELECT v.id, v.n, $1, 'bulk-' || v.id, 'USD', 2, '', '', 'NONE', 0, 'ACTIVE', false, false, 0, 0, 1, \
                   '{}', $6, $6, false, 1, false, '', 0, 0, '', 0, v.h FROM v), \
                 granted AS ( \
                   INSERT INTO grants (id, account_id, tenant_id, kind, source, source_reference, original_amount, \
                   remaining_amount, priority, effective_at, meter_codes, status, metadata, created_at, created_sequence) \
                   SELECT v.g, v.id, $1, 'PAID', 'ADMIN', '', $7, $7, 100, $6, '[]', 'ACTIVE', '{}', $6, 1 FROM v) \
                 INSERT INTO ledger (account_number, sequence, created_at, grant_id, position, kind, amount, \
                 balance_after, idempotency_key, hash) \
                 SELECT v.n, 1, $6, v.g, 0, 1, $7, $7, 'bulk-' || v.n, v.h FROM v",
                [
                    tenant.into(),
                    array(ArrayType::Uuid, accounts),
                    array(ArrayType::BigInt, numbers_out),
                    array(ArrayType::Uuid, grants),
                    array(ArrayType::Bytes, hashes),
                    now.into(),
                    amount.into(),
                ],
            ))
            .await?;
        opened += chunk;
    }
    books.execute_unprepared("ANALYZE").await?;
    Ok(ids)
}

/// The GRANT entry GrantCredits writes for an account's first grant.
fn grant_entry(
    account: uuid::Uuid,
    number: u64,
    grant: uuid::Uuid,
    amount: rust_decimal::Decimal,
    at: chrono::DateTime<chrono::Utc>,
) -> Entry {
    Entry {
        id: EntryId::of(number, 1),
        account_id: AccountId(account),
        operation_id: OperationId(uuid::Uuid::nil()),
        sequence: 1,
        position: 0,
        kind: EntryKind::Grant,
        amount,
        grant_id: Some(GrantId(grant)),
        hold_id: None,
        balance_after: amount,
        idempotency_key: format!("bulk-{number}"),
        correlation_id: String::new(),
        meter_code: None,
        description: String::new(),
        metadata: Default::default(),
        refunded_entry_id: None,
        created_at: at,
        key_id: None,
        hash: None,
    }
}

/// The meter `tokens` at 0.001 a token.
pub async fn price_tokens(metering: &Metering) -> anyhow::Result<()> {
    metering
        .clone()
        .create_meter(metering_pb::CreateMeterRequest {
            code: "tokens".into(),
            unit_name: "token".into(),
            aggregation: metering_pb::Aggregation::Sum.into(),
            description: String::new(),
            value_dimension: String::new(),
        })
        .await?;
    metering
        .clone()
        .set_price(metering_pb::SetPriceRequest {
            meter_code: "tokens".into(),
            effective_from: None,
            tiers: vec![metering_pb::Tier { up_to: String::new(), unit_price: "0.001".into() }],
            overrides: Vec::new(),
            idempotency_key: uuid::Uuid::now_v7().to_string(),
        })
        .await?;
    Ok(())
}

/// One event per account, so metering has learned every account's unit
/// before anything is timed (it learns each once, on first sight).
pub async fn learn_accounts(metering: &Metering, accounts: &[String]) -> anyhow::Result<()> {
    for chunk in accounts.chunks(BATCH) {
        let events = chunk
            .iter()
            .map(|account| metering_pb::UsageEvent {
                event_id: uuid::Uuid::now_v7().to_string(),
                account_id: account.clone(),
                meter_code: "tokens".into(),
                quantity: "1".into(),
                ..Default::default()
            })
            .collect();
        metering.clone().ingest_events(metering_pb::IngestEventsRequest { events, asynchronous: false }).await?;
    }
    Ok(())
}

/// One batch: a tenth of it ids sent before, spread uniformly over the accounts.
pub fn batch(random: &mut Random, earlier: &[String], accounts: usize) -> Vec<(String, usize)> {
    (0..BATCH)
        .map(|_| {
            let id = if !earlier.is_empty() && random.below(10) == 0 {
                earlier[random.below(earlier.len())].clone()
            } else {
                uuid::Uuid::now_v7().to_string()
            };
            (id, random.below(accounts))
        })
        .collect()
}

/// Ingests batches from [`SENDERS`] senders for `duration`; a result's
/// operations are events. Every event must be answered as expected
/// (CHARGED, ACCEPTED or DUPLICATE) for its batch to count.
pub async fn run(
    metering: &Metering,
    accounts: Arc<Vec<String>>,
    duration: Duration,
    asynchronous: bool,
    seed: u64,
    sent: Arc<tokio::sync::Mutex<Vec<String>>>,
) -> RunResult {
    let client = metering.clone();
    let result = load::closed_loop(SENDERS, duration, move |worker, sequence| {
        let (mut client, sent, accounts) = (client.clone(), sent.clone(), accounts.clone());
        async move {
            let mut random = Random::new(seed * 37 + worker as u64 * 13 + sequence + 7);
            // Drawn while holding the list, rather than copying it per batch.
            let mut earlier = sent.lock().await;
            let events: Vec<metering_pb::UsageEvent> = batch(&mut random, &earlier, accounts.len())
                .into_iter()
                .map(|(id, account)| metering_pb::UsageEvent {
                    event_id: id,
                    account_id: accounts[account].clone(),
                    meter_code: "tokens".into(),
                    quantity: "1".into(),
                    ..Default::default()
                })
                .collect();
            earlier.extend(events.iter().take(100).map(|event| event.event_id.clone()));
            drop(earlier);
            let expected =
                if asynchronous { metering_pb::EventStatus::Accepted } else { metering_pb::EventStatus::Charged };
            match client.ingest_events(metering_pb::IngestEventsRequest { events, asynchronous }).await {
                Ok(response) => response.into_inner().results.iter().all(|result| {
                    result.status == i32::from(expected)
                        || result.status == i32::from(metering_pb::EventStatus::Duplicate)
                }),
                Err(_) => false,
            }
        }
    })
    .await;
    RunResult { operations: result.operations * BATCH as u64, ..result }
}

/// Waits until every accepted line is drawn (at most `limit`).
pub async fn drained(metering_books: &DatabaseConnection, limit: Duration) -> anyhow::Result<()> {
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        let row = metering_books
            .query_one_raw(Statement::from_string(DbBackend::Postgres, "SELECT COUNT(*) AS n FROM usage_lines"))
            .await?
            .context("no count")?;
        if row.try_get::<i64>("", "n")? == 0 {
            return Ok(());
        }
        if tokio::time::Instant::now() > deadline {
            bail!("accepted usage was not drawn within {limit:?}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The drawdown lag of events stored after `since`: from their storing (just
/// before they were acknowledged) to the recording of the wallet's answer
/// (just after their ledger entry was written), p50 and p99 in milliseconds.
pub async fn lag_ms(
    metering_books: &DatabaseConnection,
    since: chrono::DateTime<chrono::Utc>,
) -> anyhow::Result<(f64, f64)> {
    let row = metering_books
        .query_one_raw(Statement::from_sql_and_values(
            DbBackend::Postgres,
            "SELECT percentile_cont(0.5) WITHIN GROUP (ORDER BY lag) AS p50, \
             percentile_cont(0.99) WITHIN GROUP (ORDER BY lag) AS p99 \
             FROM (SELECT EXTRACT(EPOCH FROM updated_at - created_at) * 1000 AS lag FROM usage_events \
             WHERE created_at >= $1 AND status <> 'PENDING') AS lags",
            [since.into()],
        ))
        .await?
        .context("no lag")?;
    Ok((row.try_get::<Option<f64>>("", "p50")?.unwrap_or(0.0), row.try_get::<Option<f64>>("", "p99")?.unwrap_or(0.0)))
}

/// Metering stored each event id once.
pub async fn check_stored_once(metering_books: &DatabaseConnection) -> anyhow::Result<(i64, i64)> {
    let row = metering_books
        .query_one_raw(Statement::from_string(
            DbBackend::Postgres,
            "SELECT COUNT(*) AS n, COUNT(DISTINCT event_id) AS k FROM usage_events",
        ))
        .await?
        .context("no count")?;
    let (stored, distinct): (i64, i64) = (row.try_get("", "n")?, row.try_get("", "k")?);
    if stored != distinct {
        bail!("metering stored an event id twice");
    }
    Ok((stored, distinct))
}
