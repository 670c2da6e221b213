//! Ceilings of this machine, measured in the same run as the scenarios: the
//! cheapest call the wallet answers, and the database alone writing debits in
//! batches with no service in the way. A debit through the wallet costs at
//! least both, on the same cores, so together they bound what any design of
//! the service could reach here.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use sea_orm::{ConnectionTrait, DatabaseConnection, DbBackend, Statement};
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_client::HealthClient;

use crate::load;
use crate::setup::channel;
use crate::stats::{Random, RunResult};

/// Statements in flight at once in the batched-write ceiling.
pub const CONNECTIONS: usize = 2;

/// Health checks on one channel from `workers` loops: the price of a call
/// (client, HTTP/2, server) with nothing behind it.
pub async fn empty_calls(address: SocketAddr, workers: usize, duration: Duration) -> anyhow::Result<RunResult> {
    let client = HealthClient::new(channel(address).await?);
    Ok(load::closed_loop(workers, duration, move |_, _| {
        let mut client = client.clone();
        async move { client.check(HealthCheckRequest { service: String::new() }).await.is_ok() }
    })
    .await)
}

/// Health checks at a fixed rate on one channel: what the cheapest call's
/// latency is at a given rate, beside whatever else the machine runs.
pub async fn empty_calls_at_rate(address: SocketAddr, rate: f64, duration: Duration) -> anyhow::Result<RunResult> {
    let client = HealthClient::new(channel(address).await?);
    Ok(load::open_loop(rate, duration, move |_| {
        let mut client = client.clone();
        async move { client.check(HealthCheckRequest { service: String::new() }).await.is_ok() }
    })
    .await)
}

/// The baseline's tables written the cheapest way a service could: `clients`
/// debits outstanding at once (as many as the closed-loop clients can have),
/// split over `CONNECTIONS` autocommit statements in flight (one guarded
/// UPDATE per account touched, one entry per debit, over arrays). No replay
/// record and no event, which the wallet writes besides, so this is above
/// what any wallet could do with the same rows. Counts debits.
pub async fn batched_writes(
    db: &DatabaseConnection,
    pick: Arc<dyn Fn(&mut Random) -> usize + Send + Sync>,
    clients: usize,
    duration: Duration,
    round: usize,
) -> RunResult {
    let batch = batch(clients);
    const STATEMENT: &str = "WITH d AS (SELECT * FROM unnest($1::bigint[], $2::text[]) AS d(account, key)), \
         t AS (SELECT account, count(*) AS n FROM d GROUP BY account ORDER BY account), \
         u AS (UPDATE balances b SET balance = b.balance - 0.01 * t.n FROM t \
               WHERE b.id = t.account AND b.balance >= 0.01 * t.n RETURNING b.id, b.balance) \
         INSERT INTO entries (key, account, amount, balance_after) \
         SELECT d.key, d.account, -0.01, u.balance FROM d JOIN u ON u.id = d.account";
    let db = db.clone();
    let result = load::closed_loop(CONNECTIONS, duration, move |worker, sequence| {
        let (db, pick) = (db.clone(), pick.clone());
        async move {
            let mut random = Random::new((round as u64 + 7) * 1_000_033 + worker as u64 * 104_729 + sequence);
            let mut accounts: Vec<i64> = (0..batch).map(|_| pick(&mut random) as i64).collect();
            accounts.sort_unstable();
            let keys: Vec<String> = (0..batch).map(|_| uuid::Uuid::now_v7().to_string()).collect();
            let statement =
                Statement::from_sql_and_values(DbBackend::Postgres, STATEMENT, [accounts.into(), keys.into()]);
            db.execute_raw(statement).await.is_ok()
        }
    })
    .await;
    RunResult { operations: result.operations * batch as u64, ..result }
}

/// Debits per statement when `clients` debits are outstanding.
pub fn batch(clients: usize) -> usize {
    (clients / CONNECTIONS).max(1)
}

/// The most debits a second the two ceilings leave together: each debit
/// spends the machine's time of one empty call plus one batched write.
pub fn combined(empty_calls_per_second: f64, writes_per_second: f64) -> f64 {
    1.0 / (1.0 / empty_calls_per_second.max(1e-9) + 1.0 / writes_per_second.max(1e-9))
}
