//! Driving load: closed loops (as fast as answers come) and open loops (a
//! fixed rate, each request timed from when it was due, so a slow server
//! cannot hide its queueing).

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::stats::RunResult;

/// `workers` loops each calling `operation(worker, sequence)` until `duration` is up.
pub async fn closed_loop<F, Fut>(workers: usize, duration: Duration, operation: F) -> RunResult
where
    F: Fn(usize, u64) -> Fut + Clone + Send + 'static,
    Fut: Future<Output = bool> + Send,
{
    let started = Instant::now();
    let deadline = started + duration;
    let tasks: Vec<_> = (0..workers)
        .map(|worker| {
            let operation = operation.clone();
            tokio::spawn(async move {
                let mut latencies = Vec::new();
                let mut errors = 0;
                let mut sequence = 0;
                while Instant::now() < deadline {
                    let begun = Instant::now();
                    if operation(worker, sequence).await {
                        latencies.push(begun.elapsed().as_micros() as u64);
                    } else {
                        errors += 1;
                    }
                    sequence += 1;
                }
                (latencies, errors)
            })
        })
        .collect();
    let mut result = RunResult::default();
    for task in tasks {
        if let Ok((latencies, errors)) = task.await {
            result.operations += latencies.len() as u64;
            result.errors += errors;
            result.latencies.extend(latencies);
        }
    }
    result.elapsed = started.elapsed();
    result
}

/// Calls `operation(sequence)` at `rate` per second for `duration`, each in
/// its own task, and times each from its due instant.
pub async fn open_loop<F, Fut>(rate: f64, duration: Duration, operation: F) -> RunResult
where
    F: Fn(u64) -> Fut + Clone + Send + 'static,
    Fut: Future<Output = bool> + Send + 'static,
{
    let started = Instant::now();
    let interval = Duration::from_secs_f64(1.0 / rate.max(1.0));
    let total = (duration.as_secs_f64() * rate) as u64;
    let errors = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::with_capacity(total as usize);
    for sequence in 0..total {
        let due = started + interval.mul_f64(sequence as f64);
        tokio::time::sleep_until(due.into()).await;
        let operation = operation.clone();
        let errors = errors.clone();
        tasks.push(tokio::spawn(async move {
            if operation(sequence).await {
                Some(due.elapsed().as_micros() as u64)
            } else {
                errors.fetch_add(1, Ordering::Relaxed);
                None
            }
        }));
    }
    let mut result = RunResult::default();
    for task in tasks {
        if let Ok(Some(latency)) = task.await {
            result.operations += 1;
            result.latencies.push(latency);
        }
    }
    result.errors = errors.load(Ordering::Relaxed);
    result.elapsed = started.elapsed();
    result
}
