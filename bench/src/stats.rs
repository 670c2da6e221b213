//! Latency percentiles, a small random source and a Zipf sampler: the bench
//! needs repeatable draws, not cryptographic ones.

use std::time::Duration;

/// What one run measured.
#[derive(Debug, Clone, Default)]
pub struct RunResult {
    pub operations: u64,
    pub errors: u64,
    pub elapsed: Duration,
    /// Latencies in microseconds.
    pub latencies: Vec<u64>,
}

impl RunResult {
    pub fn throughput(&self) -> f64 {
        self.operations as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    /// The latency at `quantile` (0.5, 0.99, 0.999), in milliseconds.
    pub fn latency_ms(&self, quantile: f64) -> f64 {
        if self.latencies.is_empty() {
            return 0.0;
        }
        let mut sorted = self.latencies.clone();
        sorted.sort_unstable();
        let index = ((sorted.len() as f64 - 1.0) * quantile).round() as usize;
        sorted[index.min(sorted.len() - 1)] as f64 / 1_000.0
    }
}

/// xorshift64*: fast, seedable, good enough to spread load.
#[derive(Debug, Clone)]
pub struct Random(u64);

impl Random {
    pub fn new(seed: u64) -> Self {
        Self(seed.max(1))
    }

    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// Uniform in [0, 1).
    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    pub fn below(&mut self, bound: usize) -> usize {
        (self.next_u64() % bound.max(1) as u64) as usize
    }
}

/// Ranks drawn with probability proportional to 1 / rank^exponent.
pub struct Zipf {
    cumulative: Vec<f64>,
}

impl Zipf {
    pub fn new(count: usize, exponent: f64) -> Self {
        let mut total = 0.0;
        let cumulative = (1..=count)
            .map(|rank| {
                total += 1.0 / (rank as f64).powf(exponent);
                total
            })
            .collect::<Vec<_>>();
        let cumulative = cumulative.into_iter().map(|value| value / total).collect();
        Self { cumulative }
    }

    pub fn sample(&self, random: &mut Random) -> usize {
        let draw = random.unit();
        self.cumulative.partition_point(|value| *value < draw).min(self.cumulative.len() - 1)
    }
}

/// Median and range of a figure over the rounds.
pub fn summarize(values: &[f64]) -> (f64, f64, f64) {
    let mut sorted = values.to_vec();
    sorted.sort_by(|a, b| a.partial_cmp(b).unwrap_or(std::cmp::Ordering::Equal));
    if sorted.is_empty() {
        return (0.0, 0.0, 0.0);
    }
    (sorted[sorted.len() / 2], sorted[0], sorted[sorted.len() - 1])
}
