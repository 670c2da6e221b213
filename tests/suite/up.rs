//! `reservoir up`: the five services in one process, as `make run` starts them.

use std::net::SocketAddr;
use std::process::Stdio;
use std::time::Duration;

use crate::process::{free_address, http_get, is_serving, scrape};

const SERVICES: [&str; 5] = ["wallet", "metering", "invoicing", "payments", "orchestrator"];

/// The wallet's answered health checks as its port counts them.
fn wallet_checks(exposition: &str) -> u64 {
    exposition
        .lines()
        .filter(|line| {
            line.starts_with("reservoir_rpc_requests_total{")
                && line.contains("server=\"wallet\"")
                && line.contains("service=\"grpc.health.v1.Health\"")
                && line.contains("method=\"Check\"")
        })
        .filter_map(|line| line.rsplit(' ').next()?.parse::<u64>().ok())
        .sum()
}

/// One process has one metrics recorder; each service's scrape port shows
/// the calls that service answered and the process's own series, so a
/// Prometheus scraping all five ports counts every call once.
#[tokio::test]
async fn under_up_each_scrape_port_counts_its_own_services_calls_once() {
    let directory = std::env::temp_dir().join(format!("reservoir-up-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&directory).unwrap();
    let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_reservoir"));
    command.arg("up").current_dir(&directory).env_remove("RUST_LOG").stdout(Stdio::null()).kill_on_drop(true);
    let ports: Vec<(&str, SocketAddr, SocketAddr)> =
        SERVICES.iter().map(|service| (*service, free_address(), free_address())).collect();
    for (service, listen, metrics) in &ports {
        let upper = service.to_uppercase();
        command.env(format!("RESERVOIR__{upper}__LISTEN"), listen.to_string());
        command.env(format!("RESERVOIR__{upper}__METRICS_LISTEN"), metrics.to_string());
    }
    let console = free_address();
    command.env("RESERVOIR__CONSOLE__LISTEN", console.to_string());
    let console_metrics = free_address();
    command.env("RESERVOIR__CONSOLE__METRICS_LISTEN", console_metrics.to_string());
    let mut child = command.spawn().unwrap();
    for (service, listen, _) in &ports {
        let mut serving = false;
        for _ in 0..600 {
            if is_serving(*listen, "").await {
                serving = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert!(serving, "{service} did not start serving under `reservoir up`");
    }

    let wallet_metrics = ports[0].2;
    let before = wallet_checks(&scrape(wallet_metrics).await);
    for _ in 0..3 {
        assert!(is_serving(ports[0].1, "").await);
    }

    let mut counted = 0;
    for (service, _, metrics) in &ports {
        let text = scrape(*metrics).await;
        assert!(text.contains("reservoir_build_info{"), "{service}'s port: {text}");
        assert!(text.contains("process_resident_memory_bytes"), "{service}'s port: {text}");
        assert!(
            text.contains(&format!("server=\"{service}\"")),
            "{service}'s port shows the calls it answered (the readiness checks): {text}"
        );
        for line in text.lines().filter(|line| line.starts_with("reservoir_rpc_requests_total{")) {
            assert!(line.contains(&format!("server=\"{service}\"")), "{service}'s port shows another's call: {line}");
        }
        counted += wallet_checks(&text);
    }
    assert_eq!(counted, before + 3, "the wallet's checks, summed over the five ports");

    // The console comes up with them, and sends a person to sign in first.
    assert!(http_get(console, "/healthz").await.ends_with("serving\n"));
    let login = http_get(console, "/login").await;
    assert!(login.contains("name=\"api_key\""), "{login}");
    // Its scrape port counts its pages by route pattern and status, and shows no service's calls.
    let text = scrape(console_metrics).await;
    assert!(
        text.lines().any(|line| line.starts_with("reservoir_console_requests_total{")
            && line.contains("route=\"/login\"")
            && line.contains("status=\"200\"")),
        "{text}"
    );
    assert!(!text.contains("reservoir_rpc_requests_total{"), "{text}");

    let _ = child.kill().await;
    let _ = std::fs::remove_dir_all(&directory);
}
