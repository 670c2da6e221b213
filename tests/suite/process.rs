//! Running the `reservoir` binary's services against test databases.

use std::collections::HashMap;
use std::net::{SocketAddr, TcpListener};
use std::process::Stdio;
use std::time::Duration;

use reservoir_testing::TestDatabase;
use tokio::process::{Child, Command};
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::{HealthCheckRequest, health_check_response::ServingStatus};

pub const PEPPER: &str = "suite-pepper";

/// A port for a service to listen on. Taken below the ephemeral range
/// (32768 and up on Linux), where the outgoing connections of every test
/// take their ports: a port the kernel handed out with bind(0) could be
/// given to a connection in the moment before the service binds it.
pub fn free_address() -> SocketAddr {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    const FIRST: u32 = 20_000;
    const SPAN: u32 = 12_000;
    let seed = std::process::id().wrapping_mul(7_919) % SPAN;
    for _ in 0..SPAN {
        let port = FIRST + (seed + NEXT.fetch_add(1, Ordering::Relaxed)) % SPAN;
        if let Ok(listener) = TcpListener::bind(("127.0.0.1", u16::try_from(port).unwrap_or(0))) {
            return listener.local_addr().unwrap();
        }
    }
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap()
}

/// The settings every process of one test shares.
#[derive(Clone)]
pub struct Environment {
    variables: HashMap<String, String>,
    pub wallet_address: SocketAddr,
    pub metering_address: SocketAddr,
    pub invoicing_address: SocketAddr,
    pub payments_address: SocketAddr,
    pub orchestrator_address: SocketAddr,
    pub console_address: SocketAddr,
}

impl Environment {
    pub fn new(wallet: &TestDatabase, metering: Option<&TestDatabase>) -> Self {
        let wallet_address = free_address();
        let metering_address = free_address();
        let invoicing_address = free_address();
        let payments_address = free_address();
        let orchestrator_address = free_address();
        let console_address = free_address();
        let mut variables = HashMap::from([
            ("RESERVOIR__WALLET__LISTEN".to_owned(), wallet_address.to_string()),
            // Any free port for the scrape endpoints: several environments run at once.
            ("RESERVOIR__WALLET__METRICS_LISTEN".to_owned(), "127.0.0.1:0".to_owned()),
            ("RESERVOIR__METERING__METRICS_LISTEN".to_owned(), "127.0.0.1:0".to_owned()),
            ("RESERVOIR__WALLET__DATABASE_URL".to_owned(), wallet.url.clone()),
            ("RESERVOIR__WALLET__DATABASE_SCHEMA".to_owned(), wallet.schema.clone()),
            ("RESERVOIR__METERING__LISTEN".to_owned(), metering_address.to_string()),
            ("RESERVOIR__METERING__WALLET_ENDPOINT".to_owned(), format!("http://{wallet_address}")),
            ("RESERVOIR__METERING__WORKER_INTERVAL_MS".to_owned(), "200".to_owned()),
            ("RESERVOIR__INVOICING__LISTEN".to_owned(), invoicing_address.to_string()),
            ("RESERVOIR__INVOICING__METRICS_LISTEN".to_owned(), "127.0.0.1:0".to_owned()),
            ("RESERVOIR__INVOICING__WALLET_ENDPOINT".to_owned(), format!("http://{wallet_address}")),
            ("RESERVOIR__INVOICING__METERING_ENDPOINT".to_owned(), format!("http://{metering_address}")),
            ("RESERVOIR__INVOICING__WORKER_INTERVAL_MS".to_owned(), "200".to_owned()),
            ("RESERVOIR__PAYMENTS__LISTEN".to_owned(), payments_address.to_string()),
            ("RESERVOIR__PAYMENTS__METRICS_LISTEN".to_owned(), "127.0.0.1:0".to_owned()),
            ("RESERVOIR__PAYMENTS__WALLET_ENDPOINT".to_owned(), format!("http://{wallet_address}")),
            ("RESERVOIR__PAYMENTS__INVOICING_ENDPOINT".to_owned(), format!("http://{invoicing_address}")),
            ("RESERVOIR__ORCHESTRATOR__LISTEN".to_owned(), orchestrator_address.to_string()),
            ("RESERVOIR__ORCHESTRATOR__METRICS_LISTEN".to_owned(), "127.0.0.1:0".to_owned()),
            ("RESERVOIR__ORCHESTRATOR__WALLET_ENDPOINT".to_owned(), format!("http://{wallet_address}")),
            ("RESERVOIR__ORCHESTRATOR__INVOICING_ENDPOINT".to_owned(), format!("http://{invoicing_address}")),
            ("RESERVOIR__ORCHESTRATOR__PAYMENTS_ENDPOINT".to_owned(), format!("http://{payments_address}")),
            ("RESERVOIR__ORCHESTRATOR__WORKER_INTERVAL_MS".to_owned(), "100".to_owned()),
            ("RESERVOIR__ORCHESTRATOR__SAGA_LEASE_MS".to_owned(), "1000".to_owned()),
            ("RESERVOIR__CONSOLE__LISTEN".to_owned(), console_address.to_string()),
            ("RESERVOIR__CONSOLE__METRICS_LISTEN".to_owned(), "127.0.0.1:0".to_owned()),
            ("RESERVOIR__CONSOLE__WALLET_ENDPOINT".to_owned(), format!("http://{wallet_address}")),
            ("RESERVOIR__CONSOLE__METERING_ENDPOINT".to_owned(), format!("http://{metering_address}")),
            ("RESERVOIR__CONSOLE__INVOICING_ENDPOINT".to_owned(), format!("http://{invoicing_address}")),
            ("RESERVOIR__CONSOLE__ORCHESTRATOR_ENDPOINT".to_owned(), format!("http://{orchestrator_address}")),
            ("RESERVOIR__AUTH__API_KEY_PEPPER".to_owned(), PEPPER.to_owned()),
            ("RESERVOIR__AUTH__KEY_CACHE_TTL_MS".to_owned(), "60000".to_owned()),
            ("RESERVOIR__TELEMETRY__LOG_FILTER".to_owned(), "warn".to_owned()),
            ("RESERVOIR__TELEMETRY__LOG_FORMAT".to_owned(), "json".to_owned()),
        ]);
        if let Some(metering) = metering {
            variables.insert("RESERVOIR__METERING__DATABASE_URL".to_owned(), metering.url.clone());
            variables.insert("RESERVOIR__METERING__DATABASE_SCHEMA".to_owned(), metering.schema.clone());
        }
        Self {
            variables,
            wallet_address,
            metering_address,
            invoicing_address,
            payments_address,
            orchestrator_address,
            console_address,
        }
    }

    /// Moves the orchestrator to a new free address (only tests call it), so
    /// a restart never races another process for the port it let go of.
    pub fn move_orchestrator(&mut self) {
        self.orchestrator_address = free_address();
        self.variables.insert("RESERVOIR__ORCHESTRATOR__LISTEN".to_owned(), self.orchestrator_address.to_string());
        self.variables.insert(
            "RESERVOIR__CONSOLE__ORCHESTRATOR_ENDPOINT".to_owned(),
            format!("http://{}", self.orchestrator_address),
        );
    }

    /// Gives the orchestrator a database of its own.
    pub fn with_orchestrator(mut self, orchestrator: &TestDatabase) -> Self {
        self.variables.insert("RESERVOIR__ORCHESTRATOR__DATABASE_URL".to_owned(), orchestrator.url.clone());
        self.variables.insert("RESERVOIR__ORCHESTRATOR__DATABASE_SCHEMA".to_owned(), orchestrator.schema.clone());
        self
    }

    /// Gives invoicing and payments databases of their own.
    pub fn with_billing(mut self, invoicing: &TestDatabase, payments: &TestDatabase) -> Self {
        self.variables.insert("RESERVOIR__INVOICING__DATABASE_URL".to_owned(), invoicing.url.clone());
        self.variables.insert("RESERVOIR__INVOICING__DATABASE_SCHEMA".to_owned(), invoicing.schema.clone());
        self.variables.insert("RESERVOIR__PAYMENTS__DATABASE_URL".to_owned(), payments.url.clone());
        self.variables.insert("RESERVOIR__PAYMENTS__DATABASE_SCHEMA".to_owned(), payments.schema.clone());
        self
    }

    /// Sets one setting for every process started from here on.
    pub fn set(&mut self, name: &str, value: &str) {
        self.variables.insert(name.to_owned(), value.to_owned());
    }

    /// The same settings and databases on new addresses: a second replica of
    /// each service, whose metering calls its own wallet.
    pub fn replica(&self) -> Self {
        let (wallet_address, metering_address) = (free_address(), free_address());
        let (invoicing_address, payments_address) = (free_address(), free_address());
        let orchestrator_address = free_address();
        let mut variables = self.variables.clone();
        variables.insert("RESERVOIR__WALLET__LISTEN".to_owned(), wallet_address.to_string());
        variables.insert("RESERVOIR__METERING__LISTEN".to_owned(), metering_address.to_string());
        variables.insert("RESERVOIR__METERING__WALLET_ENDPOINT".to_owned(), format!("http://{wallet_address}"));
        variables.insert("RESERVOIR__INVOICING__LISTEN".to_owned(), invoicing_address.to_string());
        variables.insert("RESERVOIR__INVOICING__WALLET_ENDPOINT".to_owned(), format!("http://{wallet_address}"));
        variables.insert("RESERVOIR__INVOICING__METERING_ENDPOINT".to_owned(), format!("http://{metering_address}"));
        variables.insert("RESERVOIR__PAYMENTS__LISTEN".to_owned(), payments_address.to_string());
        variables.insert("RESERVOIR__PAYMENTS__WALLET_ENDPOINT".to_owned(), format!("http://{wallet_address}"));
        variables.insert("RESERVOIR__PAYMENTS__INVOICING_ENDPOINT".to_owned(), format!("http://{invoicing_address}"));
        variables.insert("RESERVOIR__ORCHESTRATOR__LISTEN".to_owned(), orchestrator_address.to_string());
        variables.insert("RESERVOIR__ORCHESTRATOR__WALLET_ENDPOINT".to_owned(), format!("http://{wallet_address}"));
        variables
            .insert("RESERVOIR__ORCHESTRATOR__INVOICING_ENDPOINT".to_owned(), format!("http://{invoicing_address}"));
        variables.insert("RESERVOIR__ORCHESTRATOR__PAYMENTS_ENDPOINT".to_owned(), format!("http://{payments_address}"));
        variables.insert("RESERVOIR__ORCHESTRATOR__METRICS_LISTEN".to_owned(), "127.0.0.1:0".to_owned());
        let console_address = free_address();
        variables.insert("RESERVOIR__CONSOLE__LISTEN".to_owned(), console_address.to_string());
        variables.insert("RESERVOIR__CONSOLE__WALLET_ENDPOINT".to_owned(), format!("http://{wallet_address}"));
        variables.insert("RESERVOIR__CONSOLE__METERING_ENDPOINT".to_owned(), format!("http://{metering_address}"));
        variables.insert("RESERVOIR__CONSOLE__INVOICING_ENDPOINT".to_owned(), format!("http://{invoicing_address}"));
        variables
            .insert("RESERVOIR__CONSOLE__ORCHESTRATOR_ENDPOINT".to_owned(), format!("http://{orchestrator_address}"));
        Self {
            variables,
            wallet_address,
            metering_address,
            invoicing_address,
            payments_address,
            orchestrator_address,
            console_address,
        }
    }

    pub fn command(&self, arguments: &[&str]) -> Command {
        let mut command = Command::new(env!("CARGO_BIN_EXE_reservoir"));
        command.args(arguments).envs(&self.variables).env_remove("RUST_LOG").kill_on_drop(true);
        command
    }

    /// Runs an operator command and returns the value of its `api key` line.
    async fn issue(&self, arguments: &[&str]) -> String {
        let output = self.command(arguments).output().await.unwrap();
        assert!(output.status.success(), "{arguments:?}: {}", String::from_utf8_lossy(&output.stderr));
        let stdout = String::from_utf8(output.stdout).unwrap();
        stdout
            .lines()
            .find_map(|line| line.strip_prefix("api key "))
            .map(str::to_owned)
            .unwrap_or_else(|| panic!("no key in {stdout:?}"))
    }

    /// Creates a tenant through the operator command and returns its API key.
    /// The command calls the wallet's AdminService with a service key, so a
    /// wallet of this environment's serves it, on an address of its own, for
    /// as long as that takes.
    pub async fn create_tenant(&self) -> String {
        let operator = self.issue(&["key", "issue-service", "--bootstrap"]).await;
        let mut environment = self.clone();
        environment.wallet_address = free_address();
        environment.set("RESERVOIR__WALLET__LISTEN", &environment.wallet_address.to_string());
        let mut wallet = ServiceProcess::wallet(&environment);
        wallet.start(&environment).await;
        let endpoint = format!("http://{}", environment.wallet_address);
        let key = self.issue(&["tenant", "create", "suite", "--endpoint", &endpoint, "--api-key", &operator]).await;
        wallet.terminate().await;
        key
    }

    /// The services' key, once issued.
    pub fn service_key(&self) -> String {
        self.variables.get("RESERVOIR__ORCHESTRATOR__SERVICE_KEY").cloned().expect("the service key is issued")
    }

    /// The tenant a tenant's key belongs to, as the wallet at `wallet` tells.
    pub async fn tenant_of(wallet: SocketAddr, api_key: &str) -> reservoir_common::auth::TenantId {
        let mut client = reservoir_testing::wallet::client(wallet, api_key).await;
        let caller = client.get_caller(reservoir_proto::wallet::GetCallerRequest {}).await.unwrap().into_inner();
        reservoir_common::auth::TenantId(caller.tenant_id.parse().unwrap())
    }

    /// Issues the services' key and hands it to metering, invoicing and payments.
    pub async fn issue_service_key(&mut self) {
        let key = self.issue(&["key", "issue-service", "--bootstrap"]).await;
        self.variables.insert("RESERVOIR__METERING__WALLET_SERVICE_KEY".to_owned(), key.clone());
        self.variables.insert("RESERVOIR__INVOICING__SERVICE_KEY".to_owned(), key.clone());
        self.variables.insert("RESERVOIR__PAYMENTS__WALLET_SERVICE_KEY".to_owned(), key.clone());
        self.variables.insert("RESERVOIR__ORCHESTRATOR__SERVICE_KEY".to_owned(), key);
    }
}

/// One `reservoir serve <service>` process.
pub struct ServiceProcess {
    service: &'static str,
    address: SocketAddr,
    child: Option<Child>,
}

impl ServiceProcess {
    pub fn wallet(environment: &Environment) -> Self {
        Self { service: "wallet", address: environment.wallet_address, child: None }
    }

    pub fn metering(environment: &Environment) -> Self {
        Self { service: "metering", address: environment.metering_address, child: None }
    }

    pub fn invoicing(environment: &Environment) -> Self {
        Self { service: "invoicing", address: environment.invoicing_address, child: None }
    }

    pub fn payments(environment: &Environment) -> Self {
        Self { service: "payments", address: environment.payments_address, child: None }
    }

    pub fn orchestrator(environment: &Environment) -> Self {
        Self { service: "orchestrator", address: environment.orchestrator_address, child: None }
    }

    pub fn console(environment: &Environment) -> Self {
        Self { service: "console", address: environment.console_address, child: None }
    }

    pub fn address(&self) -> SocketAddr {
        self.address
    }

    /// Starts the service and waits until it reports SERVING.
    pub async fn start(&mut self, environment: &Environment) {
        let child = environment
            .command(&["serve", self.service])
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        self.child = Some(child);
        if self.service == "console" {
            for _ in 0..300 {
                if tokio::net::TcpStream::connect(self.address).await.is_ok() {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            panic!("the console did not start listening");
        }
        let name = match self.service {
            "orchestrator" => "reservoir.orchestrator.v1.TopUpService".to_owned(),
            service => format!("reservoir.{0}.v1.{1}Service", service, capitalized(service)),
        };
        for _ in 0..300 {
            if is_serving(self.address, &name).await {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("{} did not become healthy", self.service);
    }

    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    /// Waits for a process that ended by itself (a crash point) and forgets it.
    pub async fn reap(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = tokio::time::timeout(Duration::from_secs(15), child.wait()).await;
        }
    }

    /// Sends a signal (`STOP`, `CONT`, …) to the running process.
    pub async fn signal(&self, signal: &str) {
        let pid = self.child.as_ref().and_then(Child::id).expect("a running process").to_string();
        let sent = Command::new("kill").args([&format!("-{signal}"), &pid]).status().await.unwrap();
        assert!(sent.success(), "kill -{signal} {pid}");
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

fn capitalized(word: &str) -> String {
    let mut characters = word.chars();
    characters.next().map(|first| first.to_ascii_uppercase().to_string() + characters.as_str()).unwrap_or_default()
}

/// One health check: whether the server at `address` answers SERVING for
/// `service` (the empty name: the server as a whole).
pub async fn is_serving(address: SocketAddr, service: &str) -> bool {
    let Ok(channel) = tonic::transport::Channel::from_shared(format!("http://{address}")).unwrap().connect().await
    else {
        return false;
    };
    let request = HealthCheckRequest { service: service.to_owned() };
    HealthClient::new(channel)
        .check(request)
        .await
        .is_ok_and(|response| response.into_inner().status == ServingStatus::Serving as i32)
}

/// GET /metrics over plain HTTP/1.1.
pub async fn scrape(address: std::net::SocketAddr) -> String {
    http_get(address, "/metrics").await
}

/// A GET over plain HTTP/1.1 that must answer 200: the whole answer, head and body.
pub async fn http_get(address: std::net::SocketAddr, path: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(address).await.unwrap();
    let request = format!("GET {path} HTTP/1.1\r\nHost: {address}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).await.unwrap();
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    response
}
