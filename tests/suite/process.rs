//! Running the `reservoir` binary against a test database.

use std::collections::HashMap;
use std::net::{SocketAddr, TcpListener};
use std::process::Stdio;
use std::time::Duration;

use reservoir_testing::TestDatabase;
use tokio::process::{Child, Command};
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::{HealthCheckRequest, health_check_response::ServingStatus};

pub const PEPPER: &str = "suite-pepper";

/// Where one wallet process listens and keeps its data.
pub struct WalletProcess {
    pub address: SocketAddr,
    environment: HashMap<String, String>,
    child: Option<Child>,
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

impl WalletProcess {
    pub fn new(database: &TestDatabase) -> Self {
        let address: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let environment = HashMap::from([
            ("RESERVOIR__WALLET__LISTEN".to_owned(), address.to_string()),
            ("RESERVOIR__WALLET__DATABASE_URL".to_owned(), database.url.clone()),
            ("RESERVOIR__WALLET__DATABASE_SCHEMA".to_owned(), database.schema.clone()),
            ("RESERVOIR__AUTH__API_KEY_PEPPER".to_owned(), PEPPER.to_owned()),
            ("RESERVOIR__AUTH__KEY_CACHE_TTL_MS".to_owned(), "60000".to_owned()),
            ("RESERVOIR__TELEMETRY__LOG_FILTER".to_owned(), "warn".to_owned()),
            ("RESERVOIR__TELEMETRY__LOG_FORMAT".to_owned(), "json".to_owned()),
        ]);
        Self { address, environment, child: None }
    }

    fn command(&self, arguments: &[&str]) -> Command {
        let mut command = Command::new(env!("CARGO_BIN_EXE_reservoir"));
        command.args(arguments).envs(&self.environment).env_remove("RUST_LOG").kill_on_drop(true);
        command
    }

    /// Creates a tenant through the operator command and returns its API key.
    pub async fn create_tenant(&self) -> String {
        let output = self.command(&["tenant", "create", "suite"]).output().await.unwrap();
        assert!(output.status.success(), "tenant create: {}", String::from_utf8_lossy(&output.stderr));
        let stdout = String::from_utf8(output.stdout).unwrap();
        stdout
            .lines()
            .find_map(|line| line.strip_prefix("api key "))
            .map(str::to_owned)
            .unwrap_or_else(|| panic!("no key in {stdout:?}"))
    }

    /// Starts `reservoir serve wallet` and waits until it reports SERVING.
    pub async fn start(&mut self) {
        let child = self.command(&["serve", "wallet"]).stdout(Stdio::null()).stderr(Stdio::inherit()).spawn().unwrap();
        self.child = Some(child);
        for _ in 0..200 {
            if let Ok(channel) =
                tonic::transport::Channel::from_shared(format!("http://{}", self.address)).unwrap().connect().await
            {
                let request = HealthCheckRequest { service: "reservoir.wallet.v1.WalletService".into() };
                if let Ok(response) = HealthClient::new(channel).check(request).await
                    && response.into_inner().status == ServingStatus::Serving as i32
                {
                    return;
                }
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("the wallet did not become healthy");
    }

    /// SIGKILL: no chance to finish anything.
    pub async fn kill(&mut self) {
        let mut child = self.child.take().expect("a running process");
        child.kill().await.unwrap();
    }

    /// SIGTERM, then the exit status.
    pub async fn terminate(&mut self) -> std::process::ExitStatus {
        let mut child = self.child.take().expect("a running process");
        let pid = child.id().expect("a pid").to_string();
        let sent = Command::new("kill").args(["-TERM", &pid]).status().await.unwrap();
        assert!(sent.success());
        tokio::time::timeout(Duration::from_secs(15), child.wait()).await.expect("stopped within 15 s").unwrap()
    }
}
