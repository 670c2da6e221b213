//! Starting the services under test, as separate processes of the release
//! binary, against fresh databases.

use std::collections::HashMap;
use std::net::{SocketAddr, TcpListener};
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context, bail};
use reservoir_proto::metering::metering_service_client::MeteringServiceClient;
use reservoir_proto::wallet::wallet_service_client::WalletServiceClient;
use reservoir_testing::BearerKey;
use sea_orm::{ConnectionTrait, Database};
use tokio::process::{Child, Command};
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Channel, Endpoint};
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::{HealthCheckRequest, health_check_response::ServingStatus};

pub type Wallet = WalletServiceClient<InterceptedService<Channel, BearerKey>>;
pub type Metering = MeteringServiceClient<InterceptedService<Channel, BearerKey>>;

/// A running wallet (and, on PostgreSQL, metering) with a tenant's key.
pub struct Services {
    pub wallet: Child,
    pub metering: Option<Child>,
    pub wallet_address: SocketAddr,
    pub metering_address: SocketAddr,
    pub api_key: String,
}

fn free_address() -> anyhow::Result<SocketAddr> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?)
}

/// Recreates a schema of the bench database.
pub async fn fresh_schema(server_url: &str, schema: &str) -> anyhow::Result<()> {
    let connection = Database::connect(server_url.to_owned()).await?;
    connection.execute_unprepared(&format!("DROP SCHEMA IF EXISTS {schema} CASCADE")).await?;
    connection.execute_unprepared(&format!("CREATE SCHEMA {schema}")).await?;
    connection.close().await?;
    Ok(())
}

/// The bench database, created if missing.
pub async fn bench_database(postgres_server: &str) -> anyhow::Result<String> {
    let admin = Database::connect(format!("{postgres_server}/postgres")).await.context("connecting to PostgreSQL")?;
    let _ = admin.execute_unprepared("CREATE DATABASE reservoir_bench").await;
    admin.close().await?;
    // Loopback: TLS would only spend the machine's CPU, on both sides alike.
    Ok(format!("{postgres_server}/reservoir_bench?sslmode=disable"))
}

pub async fn channel(address: SocketAddr) -> anyhow::Result<Channel> {
    Ok(Endpoint::from_shared(format!("http://{address}"))?.tcp_nodelay(true).connect().await?)
}

async fn healthy(address: SocketAddr, service: &str) -> anyhow::Result<()> {
    for _ in 0..600 {
        if let Ok(channel) = channel(address).await {
            let request = HealthCheckRequest { service: service.to_owned() };
            if let Ok(response) = HealthClient::new(channel).check(request).await
                && response.into_inner().status == ServingStatus::Serving as i32
            {
                return Ok(());
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    bail!("{service} did not become healthy at {address}")
}

impl Services {
    /// Starts the wallet on `database_url` (and metering beside it when
    /// `metering_url` is given), creating a tenant and the service key.
    pub async fn start(
        binary: &PathBuf,
        wallet_url: &str,
        metering_url: Option<&str>,
        data_dir: &std::path::Path,
    ) -> anyhow::Result<Self> {
        let wallet_address = free_address()?;
        let metering_address = free_address()?;
        let mut environment = HashMap::from([
            ("RESERVOIR__WALLET__LISTEN".to_owned(), wallet_address.to_string()),
            // Any free port for the scrape endpoints: several environments run at once.
            ("RESERVOIR__WALLET__METRICS_LISTEN".to_owned(), "127.0.0.1:0".to_owned()),
            ("RESERVOIR__METERING__METRICS_LISTEN".to_owned(), "127.0.0.1:0".to_owned()),
            ("RESERVOIR__WALLET__DATABASE_URL".to_owned(), wallet_url.to_owned()),
            ("RESERVOIR__WALLET__DATABASE_SCHEMA".to_owned(), "wallet_bench".to_owned()),
            ("RESERVOIR__WALLET__DATABASE_MAX_CONNECTIONS".to_owned(), "16".to_owned()),
            ("RESERVOIR__METERING__LISTEN".to_owned(), metering_address.to_string()),
            ("RESERVOIR__METERING__WALLET_ENDPOINT".to_owned(), format!("http://{wallet_address}")),
            ("RESERVOIR__METERING__DATABASE_SCHEMA".to_owned(), "metering_bench".to_owned()),
            ("RESERVOIR__METERING__DATABASE_MAX_CONNECTIONS".to_owned(), "16".to_owned()),
            ("RESERVOIR__AUTH__KEY_CACHE_TTL_MS".to_owned(), "60000".to_owned()),
            // RESERVOIR_BENCH_LOG_FILTER lets a profiling run see the services' logs.
            (
                "RESERVOIR__TELEMETRY__LOG_FILTER".to_owned(),
                std::env::var("RESERVOIR_BENCH_LOG_FILTER").unwrap_or_else(|_| "error".to_owned()),
            ),
            ("RESERVOIR__DATA_DIR".to_owned(), data_dir.display().to_string()),
        ]);
        if let Some(url) = metering_url {
            environment.insert("RESERVOIR__METERING__DATABASE_URL".to_owned(), url.to_owned());
        }
        let run = |arguments: &[&str], environment: &HashMap<String, String>| {
            let mut command = Command::new(binary);
            command.args(arguments).envs(environment).env_remove("RUST_LOG").kill_on_drop(true);
            command
        };
        let key_of = |output: std::process::Output| -> anyhow::Result<String> {
            let stdout = String::from_utf8(output.stdout)?;
            stdout
                .lines()
                .find_map(|line| line.strip_prefix("api key "))
                .map(str::to_owned)
                .with_context(|| format!("no key in {stdout:?}"))
        };
        // The installation's first service key, then the tenant through the
        // wallet's AdminService with it.
        let service_key = key_of(run(&["key", "issue-service", "--bootstrap"], &environment).output().await?)?;
        environment.insert("RESERVOIR__METERING__WALLET_SERVICE_KEY".to_owned(), service_key.clone());
        let wallet = run(&["serve", "wallet"], &environment).stdout(Stdio::null()).spawn()?;
        healthy(wallet_address, "reservoir.wallet.v1.WalletService").await?;
        let endpoint = format!("http://{wallet_address}");
        let create = ["tenant", "create", "bench", "--endpoint", &endpoint, "--api-key", &service_key];
        let api_key = key_of(run(&create, &environment).output().await?)?;
        let metering = match metering_url {
            Some(_) => {
                let child = run(&["serve", "metering"], &environment).stdout(Stdio::null()).spawn()?;
                healthy(metering_address, "reservoir.metering.v1.MeteringService").await?;
                Some(child)
            }
            None => None,
        };
        Ok(Self { wallet, metering, wallet_address, metering_address, api_key })
    }

    pub async fn wallet_client(&self) -> anyhow::Result<Wallet> {
        Ok(WalletServiceClient::with_interceptor(channel(self.wallet_address).await?, BearerKey::new(&self.api_key)))
    }

    pub async fn metering_client(&self) -> anyhow::Result<Metering> {
        Ok(MeteringServiceClient::with_interceptor(
            channel(self.metering_address).await?,
            BearerKey::new(&self.api_key),
        ))
    }

    /// The wallet process's resident memory, in MiB.
    pub fn wallet_rss_mib(&self) -> f64 {
        self.wallet.id().map_or(0.0, rss_mib)
    }

    pub fn metering_rss_mib(&self) -> f64 {
        self.metering.as_ref().and_then(Child::id).map_or(0.0, rss_mib)
    }

    pub async fn stop(mut self) {
        let _ = self.wallet.kill().await;
        if let Some(mut metering) = self.metering.take() {
            let _ = metering.kill().await;
        }
    }
}

fn rss_mib(pid: u32) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|status| {
            status.lines().find_map(|line| {
                line.strip_prefix("VmRSS:")
                    .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
            })
        })
        .map_or(0.0, |kib| kib / 1024.0)
}
