//! `--profile`: one scenario alone against the services, their pids printed
//! first for attaching a profiler and the figures after, with no report.

use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::{Duration, Instant};

use rust_decimal::Decimal;

use crate::drive::{as_accounts, available, debits_at_rate, open_accounts, run_debits, warm_up};
use crate::figures::Ceilings;
use crate::setup::{Services, bench_database, fresh_schema};
use crate::stats::Random;
use crate::tables::analyze;
use crate::{Args, FUNDS, baseline, ceiling, ingest, load};

/// Ingestion alone, for a profiler: prints the services' pids, then the figures.
async fn profile_ingest(args: &Args) -> anyhow::Result<()> {
    let data_dir = std::env::temp_dir().join(format!("reservoir-profile-{}", uuid::Uuid::now_v7()));
    std::fs::create_dir_all(&data_dir)?;
    let url = bench_database(&args.postgres).await?;
    fresh_schema(&url, "wallet_bench").await?;
    fresh_schema(&url, "metering_bench").await?;
    let services = Services::start(&args.reservoir, &url, Some(&url), &data_dir).await?;
    let wallet = services.wallet_client().await?;
    let metering = services.metering_client().await?;
    let books = baseline::connect(&url, Some("wallet_bench"), 2).await?;
    let metering_books = baseline::connect(&url, Some("metering_bench"), 2).await?;
    let tenant = ingest::tenant_of(&wallet).await?;
    let accounts = Arc::new(ingest::bulk_accounts(&books, tenant, args.profile_ingest, FUNDS).await?);
    ingest::price_tokens(&metering).await?;
    let sent = Arc::new(tokio::sync::Mutex::new(Vec::new()));
    ingest::learn_accounts(&metering, &accounts).await?;
    println!(
        "wallet pid {}, metering pid {}",
        services.wallet.id().unwrap_or(0),
        services.metering.as_ref().and_then(|child| child.id()).unwrap_or(0)
    );
    let since = chrono::Utc::now();
    let result =
        ingest::run(&metering, accounts.clone(), Duration::from_secs(args.seconds), args.asynchronous, 1, sent).await;
    println!(
        "events/s {:.0}, batch p50 {:.2} ms, p99 {:.2} ms, failed batches {}",
        result.throughput(),
        result.latency_ms(0.5),
        result.latency_ms(0.99),
        result.errors
    );
    if args.asynchronous {
        ingest::drained(&metering_books, Duration::from_secs(60)).await?;
        let (p50, p99) = ingest::lag_ms(&metering_books, since).await?;
        println!("drawdown lag p50 {p50:.1} ms, p99 {p99:.1} ms");
    }
    ingest::check_stored_once(&metering_books).await?;
    println!(
        "wallet resident {:.0} MiB, metering resident {:.0} MiB",
        services.wallet_rss_mib(),
        services.metering_rss_mib()
    );
    services.stop().await;
    let _ = std::fs::remove_dir_all(&data_dir);
    Ok(())
}

/// Hot-wallet debits (and optionally balance reads) against one service, for a profiler.
pub async fn profile(args: &Args) -> anyhow::Result<()> {
    if args.profile_ingest > 0 {
        return profile_ingest(args).await;
    }
    if args.ceilings {
        return profile_ceilings(args).await;
    }
    let data_dir = std::env::temp_dir().join(format!("reservoir-profile-{}", uuid::Uuid::now_v7()));
    std::fs::create_dir_all(&data_dir)?;
    let (wallet_url, books_url, books_schema) = if args.sqlite {
        let url = format!("sqlite://{}/wallet.db?mode=rwc", data_dir.display());
        (url.clone(), url, None)
    } else {
        let url = bench_database(&args.postgres).await?;
        fresh_schema(&url, "wallet_bench").await?;
        (url.clone(), url, Some("wallet_bench"))
    };
    let services = Services::start(&args.reservoir, &wallet_url, None, &data_dir).await?;
    let wallet = services.wallet_client().await?;
    let books = baseline::connect(&books_url, books_schema, 2).await?;
    let opening = Instant::now();
    // Many accounts are opened straight in the tables, as the bench's spread scenario does.
    let hot = if args.profile_accounts > 1 && !args.sqlite {
        as_accounts(
            ingest::bulk_accounts(&books, ingest::tenant_of(&wallet).await?, args.profile_accounts, 1_000_000).await?,
        )
    } else {
        open_accounts(&wallet, args.profile_accounts.max(1), args.concurrency, FUNDS).await?
    };
    println!("opened {} accounts in {:.1} s", hot.len(), opening.elapsed().as_secs_f64());
    analyze(&books).await?;
    println!("wallet pid {}", services.wallet.id().unwrap_or(0));
    let count = hot.len();
    let one: Arc<dyn Fn(&mut Random) -> usize + Send + Sync> = Arc::new(move |random| random.below(count));
    let readers = (args.profile_reads > 0.0).then(|| {
        let (client, account) = (wallet.clone(), hot[0].id.clone());
        tokio::spawn(load::open_loop(args.profile_reads, Duration::from_secs(args.seconds), move |_| {
            let (client, account) = (client.clone(), account.clone());
            async move { available(&client, &account).await.is_ok() }
        }))
    });
    // Beside reads, debits go at the read scenario's fixed rate, as in (d);
    // otherwise as fast as the clients can.
    let result = if readers.is_some() {
        let acknowledged = Arc::new(AtomicU64::new(0));
        debits_at_rate(&wallet, &hot[0].id, args.read_write_rate, Duration::from_secs(args.seconds), acknowledged)
            .await?
    } else {
        if args.warm_up {
            let result = warm_up(&wallet, &hot, args.concurrency).await;
            println!("warm-up: debits/s {:.0}, p99 {:.2} ms", result.throughput(), result.latency_ms(0.99));
        }
        run_debits(&wallet, &books, &hot, one, args, 0).await?
    };
    println!(
        "debits/s {:.0}, p50 {:.2} ms, p99 {:.2} ms, p99.9 {:.2} ms, failed {}",
        result.throughput(),
        result.latency_ms(0.5),
        result.latency_ms(0.99),
        result.latency_ms(0.999),
        result.errors
    );
    if let Some(readers) = readers {
        let reads = readers.await?;
        println!(
            "reads/s {:.0}, p50 {:.2} ms, p99 {:.2} ms, p99.9 {:.2} ms, failed {}",
            reads.throughput(),
            reads.latency_ms(0.5),
            reads.latency_ms(0.99),
            reads.latency_ms(0.999),
            reads.errors
        );
        // The same again with health checks for reads: the ceiling beside it.
        let duration = Duration::from_secs(args.seconds);
        let writers = debits_at_rate(&wallet, &hot[0].id, args.read_write_rate, duration, Arc::new(AtomicU64::new(0)));
        let empty = ceiling::empty_calls_at_rate(services.wallet_address, args.profile_reads, duration).await?;
        writers.await?;
        println!(
            "empty calls at the same rate beside the same debits: p50 {:.2} ms, p99 {:.2} ms, p99.9 {:.2} ms",
            empty.latency_ms(0.5),
            empty.latency_ms(0.99),
            empty.latency_ms(0.999),
        );
    }
    println!("wallet resident {:.0} MiB", services.wallet_rss_mib());
    services.stop().await;
    let _ = std::fs::remove_dir_all(&data_dir);
    Ok(())
}

/// The ceilings alone, for reading them quickly.
async fn profile_ceilings(args: &Args) -> anyhow::Result<()> {
    let data_dir = std::env::temp_dir().join(format!("reservoir-profile-{}", uuid::Uuid::now_v7()));
    std::fs::create_dir_all(&data_dir)?;
    let url = bench_database(&args.postgres).await?;
    for schema in ["wallet_bench", "baseline"] {
        fresh_schema(&url, schema).await?;
    }
    let services = Services::start(&args.reservoir, &url, None, &data_dir).await?;
    let baseline_db = baseline::connect(&url, Some("baseline"), args.concurrency as u32).await?;
    baseline::prepare(&baseline_db, args.accounts, Decimal::from(FUNDS)).await?;
    let mut ceilings = Ceilings::default();
    for round in 0..args.rounds {
        ceilings.measure(&services, &baseline_db, args.accounts, args, round, true).await?;
    }
    for line in ceilings.lines(args.accounts) {
        println!("{line}");
    }
    services.stop().await;
    let _ = std::fs::remove_dir_all(&data_dir);
    Ok(())
}
