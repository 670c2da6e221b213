//! What the rounds measured, and the report's lines for it: each
//! scenario's figures beside its baseline's, and the machine's ceilings.

use std::fmt::Write as _;
use std::sync::Arc;
use std::time::Duration;

use crate::Args;
use crate::ceiling;
use crate::drive::run_baseline_debits;
use crate::setup::Services;
use crate::stats::{Random, RunResult, summarize};

/// One scenario's figures over the rounds, candidate and baseline.
#[derive(Default)]
pub struct Comparison {
    pub name: String,
    pub candidate: Vec<RunResult>,
    pub baseline: Vec<RunResult>,
    /// A target, in words, and whether it is met.
    pub targets: Vec<(String, bool)>,
    pub notes: Vec<String>,
}

impl Comparison {
    pub fn new(name: &str) -> Self {
        Self { name: name.to_owned(), ..Self::default() }
    }

    pub fn ratio(&self) -> f64 {
        let candidate: Vec<f64> = self.candidate.iter().map(RunResult::throughput).collect();
        let baseline: Vec<f64> = self.baseline.iter().map(RunResult::throughput).collect();
        summarize(&candidate).0 / summarize(&baseline).0.max(1e-9)
    }

    pub fn median(runs: &[RunResult], figure: impl Fn(&RunResult) -> f64) -> (f64, f64, f64) {
        summarize(&runs.iter().map(figure).collect::<Vec<_>>())
    }
}

pub fn line(report: &mut String, comparison: &Comparison) {
    let tput = |runs: &[RunResult]| Comparison::median(runs, RunResult::throughput);
    let p = |runs: &[RunResult], q: f64| Comparison::median(runs, |run| run.latency_ms(q));
    let (c, c_min, c_max) = tput(&comparison.candidate);
    let (b, b_min, b_max) = tput(&comparison.baseline);
    let _ = writeln!(
        report,
        "| {} | {:.0} ({:.0}–{:.0}) | {:.2} / {:.2} / {:.2} | {:.0} ({:.0}–{:.0}) | {:.2} / {:.2} / {:.2} | **{:.1}×** |",
        comparison.name,
        c,
        c_min,
        c_max,
        p(&comparison.candidate, 0.5).0,
        p(&comparison.candidate, 0.99).0,
        p(&comparison.candidate, 0.999).0,
        b,
        b_min,
        b_max,
        p(&comparison.baseline, 0.5).0,
        p(&comparison.baseline, 0.99).0,
        p(&comparison.baseline, 0.999).0,
        comparison.ratio(),
    );
}

/// The machine's ceilings beside the plain transaction, over the rounds.
#[derive(Default)]
pub struct Ceilings {
    pub clients: usize,
    pub empty_calls: Vec<RunResult>,
    pub hot_writes: Vec<RunResult>,
    pub hot_baseline: Vec<RunResult>,
    pub spread_writes: Vec<RunResult>,
    pub spread_baseline: Vec<RunResult>,
    /// Health checks at the read scenario's rate beside its debits, and that rate.
    pub empty_reads: Vec<RunResult>,
    pub read_rate: f64,
    pub read_write_rate: f64,
}

impl Ceilings {
    /// One round of each on the baseline's tables (`accounts` rows); with
    /// `baselines`, the plain transactions too, interleaved (the full run
    /// takes them from its hot and spread scenarios instead).
    pub async fn measure(
        &mut self,
        services: &Services,
        baseline_db: &sea_orm::DatabaseConnection,
        accounts: usize,
        args: &Args,
        round: usize,
        baselines: bool,
    ) -> anyhow::Result<()> {
        let duration = Duration::from_secs(args.seconds);
        self.clients = args.concurrency;
        let one: Arc<dyn Fn(&mut Random) -> usize + Send + Sync> = Arc::new(|_| 0);
        let uniform: Arc<dyn Fn(&mut Random) -> usize + Send + Sync> = Arc::new(move |random| random.below(accounts));
        self.empty_calls.push(ceiling::empty_calls(services.wallet_address, args.concurrency, duration).await?);
        if baselines {
            self.hot_baseline.push(run_baseline_debits(baseline_db, one.clone(), args, round).await);
        }
        self.hot_writes.push(ceiling::batched_writes(baseline_db, one, args.concurrency, duration, round).await);
        if baselines {
            self.spread_baseline.push(run_baseline_debits(baseline_db, uniform.clone(), args, round).await);
        }
        self.spread_writes.push(ceiling::batched_writes(baseline_db, uniform, args.concurrency, duration, round).await);
        Ok(())
    }

    /// Lines for the report (and the profile's output).
    pub fn lines(&self, accounts: usize) -> Vec<String> {
        let median = |runs: &[RunResult]| Comparison::median(runs, RunResult::throughput);
        let figure = |runs: &[RunResult]| {
            let (median, low, high) = median(runs);
            format!("{median:.0} ({low:.0}–{high:.0})")
        };
        let calls = median(&self.empty_calls).0;
        let mut lines = vec![format!(
            "Empty calls (health checks, {} clients on one channel): {}/s, p99 {:.2} ms.",
            self.clients,
            figure(&self.empty_calls),
            Comparison::median(&self.empty_calls, |run| run.latency_ms(0.99)).0,
        )];
        for (name, writes, baseline, target) in [
            ("hot wallet", &self.hot_writes, &self.hot_baseline, 10.0),
            (&*format!("spread over {accounts} accounts"), &self.spread_writes, &self.spread_baseline, 2.0),
        ] {
            let bound = ceiling::combined(calls, median(writes).0);
            let plain = median(baseline).0;
            lines.push(format!(
                "{name}: the database alone, {} debits per statement and {} in flight, writes {} debits/s (the plain transaction: {}). With an empty call each, at most {bound:.0} debits/s = **{:.1}×** the plain transaction (target {target}×).",
                ceiling::batch(self.clients),
                ceiling::CONNECTIONS,
                figure(writes),
                figure(baseline),
                bound / plain.max(1e-9),
            ));
        }
        if !self.empty_reads.is_empty() {
            let latency = |quantile| Comparison::median(&self.empty_reads, |run| run.latency_ms(quantile));
            let (p99, low, high) = latency(0.99);
            lines.push(format!(
                "balance reads: empty calls at {:.0}/s beside {:.0} debits/s on one account, as in (d): p50 {:.2} ms, p99 {p99:.2} ms ({low:.2}–{high:.2}) (target for GetBalance: p99 2 ms).",
                self.read_rate,
                self.read_write_rate,
                latency(0.5).0,
            ));
        }
        lines
    }
}
