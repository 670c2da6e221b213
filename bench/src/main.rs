//! `reservoir-bench` (run by `make bench`): each scenario against its
//! plain-SQL baseline in the same run, interleaved, several rounds, the
//! books checked after every candidate run, and the report written.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod baseline;
mod ceiling;
mod drive;
mod figures;
mod ingest;
mod load;
mod profile;
mod setup;
mod stats;
mod tables;

use std::fmt::Write as _;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Parser;
use reservoir_proto::wallet as pb;
use rust_decimal::Decimal;
use sea_orm::{ConnectionTrait, DbBackend, Statement};

use crate::drive::{
    as_accounts, available, check_chains, debits_at_rate, open_account, read_latency, run_baseline_debits, run_debits,
    warm_up, warm_up_baseline,
};
use crate::figures::{Ceilings, Comparison, line};
use crate::profile::profile;
use crate::setup::{Services, bench_database, fresh_schema};
use crate::stats::{Random, RunResult, Zipf, summarize};
use crate::tables::{debit_bytes, debit_count, fill_ledger};

/// The same allocator as the services, so the load generator takes as little
/// of the machine's CPU from what it measures as it can.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
struct Args {
    /// The release binary under test.
    #[arg(long, default_value = "target/release/reservoir")]
    reservoir: PathBuf,
    /// PostgreSQL server, without a database.
    #[arg(long, default_value = "postgres://postgres@127.0.0.1:5432")]
    postgres: String,
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// Seconds per run.
    #[arg(long, default_value_t = 5)]
    seconds: u64,
    /// Concurrent clients of the closed-loop runs.
    #[arg(long, default_value_t = 48)]
    concurrency: usize,
    /// Accounts of the spread scenario.
    #[arg(long, default_value_t = 100_000)]
    accounts: usize,
    /// Accounts the ingestion scenario spreads events over.
    #[arg(long, default_value_t = 10_000)]
    ingest_accounts: usize,
    /// Balance reads per second in the read scenario.
    #[arg(long, default_value_t = 5_000.0)]
    read_rate: f64,
    /// Debits per second written beside the read scenario's reads.
    #[arg(long, default_value_t = 2_000.0)]
    read_write_rate: f64,
    /// Seconds of the sustained asynchronous ingestion run.
    #[arg(long, default_value_t = 60)]
    sustained_seconds: u64,
    /// Ledger entries written for one account before its balance is read again.
    #[arg(long, default_value_t = 10_000_000)]
    ledger_entries: u64,
    /// Where the report goes.
    #[arg(long, default_value = "docs/PERFORMANCE.md")]
    report: PathBuf,
    /// Only drive the hot wallet (PostgreSQL, or SQLite with `--sqlite`) for
    /// `--seconds`, print the service's pid first and the figures after, and
    /// write no report: for attaching a profiler.
    #[arg(long)]
    profile: bool,
    /// With `--profile`: the SQLite wallet instead of PostgreSQL.
    #[arg(long)]
    sqlite: bool,
    /// With `--profile`: accounts the debits spread over, uniformly.
    #[arg(long, default_value_t = 1)]
    profile_accounts: usize,
    /// With `--profile`: balance reads per second alongside debits at
    /// `--read-write-rate` on the same account, as in (d) (0: none).
    #[arg(long, default_value_t = 0.0)]
    profile_reads: f64,
    /// With `--profile`: ingest usage over this many accounts instead of debiting (0: debit).
    #[arg(long, default_value_t = 0)]
    profile_ingest: usize,
    /// With `--profile-ingest`: asynchronous ingestion.
    #[arg(long)]
    asynchronous: bool,
    /// With `--profile`: only the machine's ceilings beside the plain
    /// transaction baselines, hot and spread over `--accounts`.
    #[arg(long)]
    ceilings: bool,
    /// With `--profile`: one debit on each account first, reported apart,
    /// as the full bench does before its spread runs.
    #[arg(long)]
    warm_up: bool,
}

const CENT: Decimal = Decimal::from_parts(1, 0, 0, false, 2);
const FUNDS: i64 = 1_000_000_000;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if !args.reservoir.exists() {
        bail!("{} is missing: build it with cargo build --release -p reservoir", args.reservoir.display());
    }
    if args.profile {
        return profile(&args).await;
    }
    let started = Instant::now();
    let bench_url = bench_database(&args.postgres).await?;
    for schema in ["wallet_bench", "metering_bench", "baseline"] {
        fresh_schema(&bench_url, schema).await?;
    }
    let data_dir = std::env::temp_dir().join(format!("reservoir-bench-{}", uuid::Uuid::now_v7()));
    std::fs::create_dir_all(&data_dir)?;
    let services = Services::start(&args.reservoir, &bench_url, Some(&bench_url), &data_dir).await?;
    let wallet = services.wallet_client().await?;
    let books = baseline::connect(&bench_url, Some("wallet_bench"), 2).await?;
    let metering_books = baseline::connect(&bench_url, Some("metering_bench"), 2).await?;
    let baseline_db = baseline::connect(&bench_url, Some("baseline"), args.concurrency as u32).await?;
    let tenant = ingest::tenant_of(&wallet).await?;
    // The largest resident set seen of each service, sampled after each run.
    let (mut wallet_rss, mut metering_rss): (f64, f64) = (0.0, 0.0);
    let mut comparisons = Vec::new();
    let mut notes = Vec::new();

    // ---- (a) hot wallet --------------------------------------------------------
    eprintln!("hot wallet: one account, {} clients", args.concurrency);
    let hot = Arc::new(vec![open_account(&wallet, FUNDS).await?]);
    baseline::prepare(&baseline_db, args.accounts.max(1), Decimal::from(FUNDS)).await?;
    let mut hot_wallet = Comparison::new("(a) hot wallet: debits/s");
    let one: Arc<dyn Fn(&mut Random) -> usize + Send + Sync> = Arc::new(|_| 0);
    for round in 0..args.rounds {
        hot_wallet.baseline.push(run_baseline_debits(&baseline_db, one.clone(), &args, round).await);
        hot_wallet.candidate.push(run_debits(&wallet, &books, &hot, one.clone(), &args, round).await?);
        wallet_rss = wallet_rss.max(services.wallet_rss_mib());
    }
    let (baseline_entries, baseline_keys) = baseline::books(&baseline_db).await?;
    if baseline_entries != baseline_keys {
        bail!("the baseline applied a key twice");
    }
    comparisons.push(hot_wallet);

    // ---- (b) spread -----------------------------------------------------------
    eprintln!("spread: opening {} accounts", args.accounts);
    let opening = Instant::now();
    let spread_accounts = as_accounts(ingest::bulk_accounts(&books, tenant, args.accounts, 1_000_000).await?);
    notes.push(format!(
        "The {} accounts of the spread scenario were opened straight in the wallet's tables (an account, a paid grant and its GRANT entry each, as CreateAccount and GrantCredits leave them) in {:.0} s.",
        spread_accounts.len(),
        opening.elapsed().as_secs_f64()
    ));
    let count = spread_accounts.len();
    let uniform: Arc<dyn Fn(&mut Random) -> usize + Send + Sync> = Arc::new(move |random| random.below(count));
    let zipf = Arc::new(Zipf::new(count, 1.0));
    let skewed: Arc<dyn Fn(&mut Random) -> usize + Send + Sync> = Arc::new(move |random| zipf.sample(random));
    // Both sides meet every account once before they are measured: the
    // runs compare a steady load, not the first minute after a start.
    eprintln!("spread: one debit on each account, service and baseline");
    let warm = warm_up(&wallet, &spread_accounts, args.concurrency).await;
    let warm_baseline = warm_up_baseline(&baseline_db, count, args.concurrency).await;
    if warm.errors > 0 || warm_baseline.errors > 0 {
        bail!("the warm-up failed {} debits on the service and {} on the baseline", warm.errors, warm_baseline.errors);
    }
    notes.push(format!(
        "Before the spread runs each of the {count} accounts took one debit through the service ({:.0} debits/s, p99 {:.1} ms) and one plain transaction through the baseline ({:.0}/s, p99 {:.1} ms), so both are measured warm: a cold service reads each account it meets for the first time.",
        warm.throughput(),
        warm.latency_ms(0.99),
        warm_baseline.throughput(),
        warm_baseline.latency_ms(0.99)
    ));
    let bytes_before = debit_bytes(&books).await?;
    let debits_before = debit_count(&books).await?;
    for (name, pick) in [("(b) spread, uniform: debits/s", uniform.clone()), ("(b) spread, Zipf s=1: debits/s", skewed)]
    {
        eprintln!("{name}");
        let mut spread = Comparison::new(name);
        for round in 0..args.rounds {
            spread.baseline.push(run_baseline_debits(&baseline_db, pick.clone(), &args, round).await);
            spread.candidate.push(run_debits(&wallet, &books, &spread_accounts, pick.clone(), &args, round).await?);
            wallet_rss = wallet_rss.max(services.wallet_rss_mib());
        }
        comparisons.push(spread);
    }
    // The accounts opened in the tables and then debited through the service chain on.
    check_chains(&wallet, &spread_accounts[..spread_accounts.len().min(50)]).await?;
    books.execute_unprepared("VACUUM ANALYZE ledger, replay_records, events").await?;
    let bytes_per_debit =
        (debit_bytes(&books).await? - bytes_before) as f64 / (debit_count(&books).await? - debits_before).max(1) as f64;

    // ---- (c) ingestion ----------------------------------------------------------
    eprintln!(
        "ingestion: batches of {} from {} senders over {} accounts",
        ingest::BATCH,
        ingest::SENDERS,
        args.ingest_accounts
    );
    let metering = services.metering_client().await?;
    ingest::price_tokens(&metering).await?;
    let ingest_accounts: Arc<Vec<String>> =
        Arc::new(spread_accounts.iter().take(args.ingest_accounts).map(|account| account.id.clone()).collect());
    ingest::learn_accounts(&metering, &ingest_accounts).await?;
    let mut ingestion = Comparison::new("(c) ingestion, synchronous: events/s");
    let sent_ids = Arc::new(tokio::sync::Mutex::new(Vec::<String>::new()));
    for round in 0..args.rounds {
        // The same kind of batches for both: a tenth of each batch repeats earlier ids.
        let account_count = ingest_accounts.len();
        let baseline_db_run = baseline_db.clone();
        let baseline_ids = Arc::new(tokio::sync::Mutex::new(Vec::<String>::new()));
        let result = load::closed_loop(ingest::SENDERS, Duration::from_secs(args.seconds), move |worker, sequence| {
            let (db, ids) = (baseline_db_run.clone(), baseline_ids.clone());
            async move {
                let mut random = Random::new(round as u64 * 31 + worker as u64 * 17 + sequence + 1);
                let events: Vec<(String, i64)> = {
                    let mut ids = ids.lock().await;
                    let events: Vec<(String, i64)> = ingest::batch(&mut random, &ids, account_count)
                        .into_iter()
                        .map(|(id, account)| (id, account as i64))
                        .collect();
                    ids.extend(events.iter().take(100).map(|(id, _)| id.clone()));
                    events
                };
                baseline::insert_events(&db, &events).await
            }
        })
        .await;
        ingestion.baseline.push(RunResult { operations: result.operations * ingest::BATCH as u64, ..result });
        ingestion.candidate.push(
            ingest::run(
                &metering,
                ingest_accounts.clone(),
                Duration::from_secs(args.seconds),
                false,
                round as u64,
                sent_ids.clone(),
            )
            .await,
        );
        wallet_rss = wallet_rss.max(services.wallet_rss_mib());
        metering_rss = metering_rss.max(services.metering_rss_mib());
    }
    comparisons.push(ingestion);
    eprintln!("ingestion, asynchronous: {} s sustained", args.sustained_seconds);
    let since = chrono::Utc::now();
    let sustained = ingest::run(
        &metering,
        ingest_accounts.clone(),
        Duration::from_secs(args.sustained_seconds),
        true,
        97,
        sent_ids.clone(),
    )
    .await;
    let behind = Instant::now();
    ingest::drained(&metering_books, Duration::from_secs(120)).await?;
    let drain_seconds = behind.elapsed().as_secs_f64();
    let (lag_p50, lag_p99) = ingest::lag_ms(&metering_books, since).await?;
    wallet_rss = wallet_rss.max(services.wallet_rss_mib());
    metering_rss = metering_rss.max(services.metering_rss_mib());
    let (stored, _) = ingest::check_stored_once(&metering_books).await?;
    notes.push(format!("Metering stored {stored} events, each id once."));

    // ---- (d) balance reads beside debits ---------------------------------------
    eprintln!("reads: {} GetBalance/s beside {} debits/s", args.read_rate, args.read_write_rate);
    let mut reads = Comparison::new("(d) balance reads at a fixed rate: reads/s");
    let stale = Arc::new(AtomicU64::new(0));
    let read_account = open_account(&wallet, FUNDS).await?;
    let mut empty_reads = Vec::new();
    for _ in 0..args.rounds {
        // Baseline: plain SELECTs while plain transactions write at the same rate.
        let (db, writer_db) = (baseline_db.clone(), baseline_db.clone());
        let writers =
            tokio::spawn(load::open_loop(args.read_write_rate, Duration::from_secs(args.seconds), move |_| {
                let db = writer_db.clone();
                async move { baseline::debit(&db, 0, &uuid::Uuid::now_v7().to_string()).await }
            }));
        reads.baseline.push(
            load::open_loop(args.read_rate, Duration::from_secs(args.seconds), move |_| {
                let db = db.clone();
                async move { baseline::read_balance(&db, 0).await }
            })
            .await,
        );
        writers.await?;
        // Candidate: GetBalance while debits run; every read must show each
        // debit acknowledged before it was sent.
        let account = read_account.id.clone();
        let start_balance = available(&wallet, &account).await?;
        let acknowledged = Arc::new(AtomicU64::new(0));
        let writers = debits_at_rate(
            &wallet,
            &account,
            args.read_write_rate,
            Duration::from_secs(args.seconds),
            acknowledged.clone(),
        );
        let (reader, stale_reads) = (wallet.clone(), stale.clone());
        reads.candidate.push(
            load::open_loop(args.read_rate, Duration::from_secs(args.seconds), move |_| {
                let (client, account, acknowledged, stale) =
                    (reader.clone(), account.clone(), acknowledged.clone(), stale_reads.clone());
                async move {
                    let before = acknowledged.load(Ordering::Relaxed);
                    match available(&client, &account).await {
                        Ok(balance) => {
                            if balance > start_balance - CENT * Decimal::from(before) {
                                stale.fetch_add(1, Ordering::Relaxed);
                            }
                            true
                        }
                        Err(_) => false,
                    }
                }
            })
            .await,
        );
        writers.await?;
        // The ceiling beside it: health checks instead of balance reads.
        let writers = debits_at_rate(
            &wallet,
            &read_account.id,
            args.read_write_rate,
            Duration::from_secs(args.seconds),
            Arc::new(AtomicU64::new(0)),
        );
        empty_reads.push(
            ceiling::empty_calls_at_rate(services.wallet_address, args.read_rate, Duration::from_secs(args.seconds))
                .await?,
        );
        writers.await?;
        wallet_rss = wallet_rss.max(services.wallet_rss_mib());
    }
    reads.notes.push(format!("reads that missed a debit acknowledged before them: {}", stale.load(Ordering::Relaxed)));
    comparisons.push(reads);

    // ---- scaling: debits over more and more accounts ------------------------------
    eprintln!("scaling");
    let mut scaling = Vec::new();
    for accounts in [1_000, 100_000, 1_000_000] {
        let pool = if accounts <= spread_accounts.len() {
            Arc::new(spread_accounts[..accounts].to_vec())
        } else {
            let opening = Instant::now();
            let more = ingest::bulk_accounts(&books, tenant, accounts - spread_accounts.len(), 1_000_000).await?;
            notes.push(format!(
                "The scaling run's {accounts} accounts: {} more opened in the tables in {:.0} s.",
                more.len(),
                opening.elapsed().as_secs_f64()
            ));
            let mut all: Vec<pb::Account> = spread_accounts.iter().cloned().collect();
            all.extend(more.into_iter().map(|id| pb::Account { id, ..Default::default() }));
            Arc::new(all)
        };
        let count = pool.len();
        let pick: Arc<dyn Fn(&mut Random) -> usize + Send + Sync> = Arc::new(move |random| random.below(count));
        let run = run_debits(&wallet, &books, &pool, pick, &args, 0).await?;
        wallet_rss = wallet_rss.max(services.wallet_rss_mib());
        scaling.push((accounts, run));
    }
    let ledger_rows = books
        .query_one_raw(Statement::from_string(DbBackend::Postgres, "SELECT COUNT(*) AS n FROM ledger"))
        .await?
        .context("no count")?
        .try_get::<i64>("", "n")?;
    notes.push(format!("The wallet's ledger held {ledger_rows} entries at the end of the PostgreSQL runs."));

    // ---- GetBalance against the size of the ledger ----------------------------------
    eprintln!("GetBalance before and after {} ledger entries", args.ledger_entries);
    let filler = open_account(&wallet, FUNDS).await?;
    let small = read_latency(&wallet, &filler.id, &args).await;
    let writing = Instant::now();
    fill_ledger(&books, &filler.id, args.ledger_entries).await?;
    let fill_seconds = writing.elapsed().as_secs_f64();
    let large = read_latency(&wallet, &filler.id, &args).await;
    notes.push(format!(
        "GetBalance of one account, 4 clients in a closed loop: with 1 ledger entry {:.0} reads/s, p50 {:.2} ms, p99 {:.2} ms; with {} more entries on that account (written in {:.0} s) {:.0} reads/s, p50 {:.2} ms, p99 {:.2} ms. A balance read touches the account row (and, when not cached, its live grants), never the ledger.",
        small.throughput(),
        small.latency_ms(0.5),
        small.latency_ms(0.99),
        args.ledger_entries,
        fill_seconds,
        large.throughput(),
        large.latency_ms(0.5),
        large.latency_ms(0.99),
    ));

    // ---- ceilings, last: their writes would leave the baseline's tables to
    // autovacuum while the scenarios after them ran ------------------------------------
    eprintln!("ceilings: empty calls, batched writes");
    baseline::prepare(&baseline_db, args.accounts.max(1), Decimal::from(FUNDS)).await?;
    // Against the plain transactions of (a) and (b), measured in this run.
    let mut ceilings = Ceilings {
        hot_baseline: comparisons[0].baseline.clone(),
        spread_baseline: comparisons[1].baseline.clone(),
        empty_reads,
        read_rate: args.read_rate,
        read_write_rate: args.read_write_rate,
        ..Ceilings::default()
    };
    for round in 0..args.rounds {
        ceilings.measure(&services, &baseline_db, args.accounts, &args, round, false).await?;
    }
    services.stop().await;

    // ---- SQLite: hot wallet ---------------------------------------------------------
    eprintln!("SQLite hot wallet");
    let sqlite_wallet = format!("sqlite://{}/wallet.db?mode=rwc", data_dir.display());
    let sqlite_services = Services::start(&args.reservoir, &sqlite_wallet, None, &data_dir).await?;
    let sqlite_client = sqlite_services.wallet_client().await?;
    let sqlite_books = baseline::connect(&sqlite_wallet, None, 2).await?;
    let sqlite_hot = Arc::new(vec![open_account(&sqlite_client, FUNDS).await?]);
    let sqlite_baseline_db = baseline::connect(
        &format!("sqlite://{}/baseline.db?mode=rwc", data_dir.display()),
        None,
        args.concurrency as u32,
    )
    .await?;
    baseline::prepare(&sqlite_baseline_db, 1, Decimal::from(FUNDS)).await?;
    let mut sqlite = Comparison::new("SQLite hot wallet (synchronous=FULL): debits/s");
    for round in 0..args.rounds {
        sqlite.baseline.push(run_baseline_debits(&sqlite_baseline_db, one.clone(), &args, round).await);
        sqlite.candidate.push(run_debits(&sqlite_client, &sqlite_books, &sqlite_hot, one.clone(), &args, round).await?);
        wallet_rss = wallet_rss.max(sqlite_services.wallet_rss_mib());
    }
    comparisons.push(sqlite);
    sqlite_services.stop().await;

    // ---- targets and report ------------------------------------------------------------
    let ratios: Vec<f64> = comparisons.iter().map(Comparison::ratio).collect();
    let p99s: Vec<f64> =
        comparisons.iter().map(|c| Comparison::median(&c.candidate, |run| run.latency_ms(0.99)).0).collect();
    let sync_rate = summarize(&comparisons[3].candidate.iter().map(RunResult::throughput).collect::<Vec<_>>()).0;
    let stale_reads = stale.load(Ordering::Relaxed);
    comparisons[0].targets.push((format!("≥ 10× baseline (measured {:.1}×)", ratios[0]), ratios[0] >= 10.0));
    comparisons[0].targets.push((format!("p99 ≤ 25 ms (measured {:.1} ms)", p99s[0]), p99s[0] <= 25.0));
    for index in [1, 2] {
        comparisons[index]
            .targets
            .push((format!("≥ 2× baseline (measured {:.1}×)", ratios[index]), ratios[index] >= 2.0));
        comparisons[index].targets.push((format!("p99 ≤ 20 ms (measured {:.1} ms)", p99s[index]), p99s[index] <= 20.0));
    }
    comparisons[3].targets.push((format!("≥ 10,000 events/s (measured {sync_rate:.0})"), sync_rate >= 10_000.0));
    comparisons[4]
        .targets
        .push((format!("p99 ≤ 2 ms at {} reads/s (measured {:.2} ms)", args.read_rate, p99s[4]), p99s[4] <= 2.0));
    comparisons[4].targets.push(("every read shows every debit acknowledged before it".into(), stale_reads == 0));
    comparisons[5].targets.push((format!("≥ 5× baseline (measured {:.1}×)", ratios[5]), ratios[5] >= 5.0));

    let rss_max = wallet_rss.max(metering_rss);
    let mut report = String::new();
    let _ = writeln!(report, "# Performance\n");
    let _ = writeln!(
        report,
        "Written by `make bench` (`reservoir-bench`) on {} in {:.0} s: {} rounds of {} s per run, baseline and candidate interleaved, {} clients in the closed-loop runs. Figures are medians over the rounds with the min–max in brackets; latencies are p50 / p99 / p99.9 in milliseconds.\n",
        chrono::Utc::now().format("%Y-%m-%d %H:%M UTC"),
        started.elapsed().as_secs_f64(),
        args.rounds,
        args.seconds,
        args.concurrency,
    );
    let _ = writeln!(report, "| scenario | Reservoir | latency ms | baseline | latency ms | ratio |");
    let _ = writeln!(report, "|---|---|---|---|---|---|");
    for comparison in &comparisons {
        line(&mut report, comparison);
    }
    let _ = writeln!(report, "\n## Asynchronous ingestion, sustained\n");
    let _ = writeln!(
        report,
        "{} senders of {}-event batches (a tenth of each repeating earlier ids) over {} accounts for {} s: **{:.0} events/s** acknowledged (batch latency p50 {:.0} ms, p99 {:.0} ms, {} failed); every accepted event drawn {:.1} s after the last acknowledgement. Drawdown lag from storing to the wallet's answer recorded: p50 {:.0} ms, p99 {:.0} ms.",
        ingest::SENDERS,
        ingest::BATCH,
        ingest_accounts.len(),
        args.sustained_seconds,
        sustained.throughput(),
        sustained.latency_ms(0.5),
        sustained.latency_ms(0.99),
        sustained.errors,
        drain_seconds,
        lag_p50,
        lag_p99,
    );
    let _ = writeln!(report, "\n## Ceilings of this machine\n");
    let _ = writeln!(
        report,
        "What no design of the service could pass here, measured in the same run: a debit costs at least one call and its share of a batched write, on the same two cores as the database and the load generator.\n"
    );
    for line in ceilings.lines(args.accounts) {
        let _ = writeln!(report, "- {line}");
    }
    let _ = writeln!(report, "\n## Debits against the number of accounts\n");
    let _ = writeln!(report, "| accounts | debits/s | p50 ms | p99 ms |");
    let _ = writeln!(report, "|---|---|---|---|");
    for (accounts, run) in &scaling {
        let _ = writeln!(
            report,
            "| {accounts} | {:.0} | {:.2} | {:.2} |",
            run.throughput(),
            run.latency_ms(0.5),
            run.latency_ms(0.99)
        );
    }
    let _ = writeln!(report, "\n## Targets\n");
    for comparison in &comparisons {
        for (target, met) in &comparison.targets {
            let _ = writeln!(report, "- {} — {}: {}", comparison.name, target, if *met { "met" } else { "**missed**" });
        }
        for note in &comparison.notes {
            let _ = writeln!(report, "- {} — {}", comparison.name, note);
        }
    }
    let sustained_rate = sustained.throughput();
    let mark = |met: bool| if met { "met" } else { "**missed**" };
    let _ = writeln!(
        report,
        "- (c) ingestion, asynchronous — ≥ 20,000 events/s for {} s (measured {sustained_rate:.0}): {}",
        args.sustained_seconds,
        mark(sustained_rate >= 20_000.0)
    );
    let _ = writeln!(
        report,
        "- (c) ingestion, asynchronous — drawdown lag p99 ≤ 250 ms (measured {lag_p99:.0} ms): {}",
        mark(lag_p99 <= 250.0)
    );
    let _ = writeln!(
        report,
        "- bytes on disk per debit (ledger, replay record, event, with indexes) ≤ 400 (measured {bytes_per_debit:.0}): {}",
        mark(bytes_per_debit <= 400.0)
    );
    let _ = writeln!(
        report,
        "- largest resident memory of a service ≤ 200 MB (measured {rss_max:.0} MiB; wallet {wallet_rss:.0}, metering {metering_rss:.0}): {}",
        mark(rss_max * 1.048_576 <= 200.0)
    );
    let _ = writeln!(report, "\n## Notes\n");
    for note in &notes {
        let _ = writeln!(report, "- {note}");
    }
    let _ = writeln!(
        report,
        "\nBaselines: (a), (b) a plain transaction per debit (guarded UPDATE of the balance, INSERT of the entry, COMMIT) straight to PostgreSQL at the same concurrency; (c) a multi-row `INSERT … ON CONFLICT DO NOTHING` of the same batches; (d) a plain `SELECT` of the balance row while plain transactions write at the same rate as the candidate's debits; SQLite: the plain transaction per debit with `synchronous=FULL`."
    );
    if let Some(parent) = args.report.parent() {
        std::fs::create_dir_all(parent)?;
    }
    let existing = std::fs::read_to_string(&args.report).unwrap_or_default();
    let kept = existing.split("\n<!-- measured -->").nth(1).map(|rest| rest.to_owned()).unwrap_or_default();
    std::fs::write(&args.report, format!("{report}\n<!-- measured -->{kept}"))?;
    println!("{report}");
    let _ = std::fs::remove_dir_all(&data_dir);
    Ok(())
}
