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
    let deadline = Instant::now() + duration;
    closed_loop_until(workers, move |worker, sequence| {
        let operation = operation.clone();
        async move {
            if Instant::now() >= deadline {
                return None;
            }
            Some(operation(worker, sequence).await)
        }
    })
    .await
}

/// `workers` loops each calling `operation(worker, sequence)` until it
/// answers `None`; `Some(ok)` is a request answered, timed, or failed.
async fn closed_loop_until<F, Fut>(workers: usize, operation: F) -> RunResult
where
    F: Fn(usize, u64) -> Fut + Clone + Send + 'static,
    Fut: Future<Output = Option<bool>> + Send,
{
    let started = Instant::now();
    let tasks: Vec<_> = (0..workers)
        .map(|worker| {
            let operation = operation.clone();
            tokio::spawn(async move {
                let mut latencies = Vec::new();
                let mut errors = 0;
                let mut sequence = 0;
                loop {
                    let begun = Instant::now();
                    match operation(worker, sequence).await {
                        Some(true) => latencies.push(begun.elapsed().as_micros() as u64),
                        Some(false) => errors += 1,
                        None => break,
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

/// `workers` loops calling `operation(index)` once for each index below
/// `count`, each index once, as fast as answers come.
pub async fn each_once<F, Fut>(workers: usize, count: usize, operation: F) -> RunResult
where
    F: Fn(usize) -> Fut + Clone + Send + 'static,
    Fut: Future<Output = bool> + Send,
{
    let next = Arc::new(AtomicU64::new(0));
    let workers = workers.max(1);
    closed_loop_until(workers, move |_, _| {
        let (operation, next) = (operation.clone(), next.clone());
        async move {
            let index = next.fetch_add(1, Ordering::Relaxed) as usize;
            if index >= count {
                return None;
            }
            Some(operation(index).await)
        }
    })
    .await
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
