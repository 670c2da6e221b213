//! The command line: running services, and the operator commands.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand, ValueEnum};
use reservoir_common::app::App;
use reservoir_common::serve::shutdown_signal;
use reservoir_common::status::{code_name, reason_of};
use reservoir_common::telemetry;
use reservoir_wallet::app::Application;
use reservoir_wallet::store::Store;

use crate::accounts::{AccountCommand, ClientArgs, DebitArgs, GrantArgs};
use crate::ingest::IngestArgs;
use crate::settings::Settings;

/// `reservoir --version`: the release and the commit it was built from.
const VERSION: &str = concat!(env!("CARGO_PKG_VERSION"), " (commit ", env!("RESERVOIR_GIT_COMMIT"), ")");

#[derive(Parser)]
#[command(name = "reservoir", version = VERSION, about = "Prepaid credits and customer wallets for usage-billed platforms")]
struct Cli {
    /// A TOML settings file; `RESERVOIR__...` environment variables override it.
    #[arg(long, global = true, env = "RESERVOIR_CONFIG")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run every service in this process on SQLite under ./data: no setup.
    Up,
    /// Print every setting with its default and meaning, as a Markdown table.
    Settings,
    /// Run one service (what a Kubernetes Deployment runs).
    Serve { service: Service },
    /// Apply one service's database migrations and exit.
    Migrate { service: Service },
    /// Tenants, through the wallet's AdminService (a service key).
    #[command(subcommand)]
    Tenant(crate::admin::TenantCommand),
    /// API keys, through the wallet's AdminService (a service key, or a
    /// tenant's ADMIN key for its own).
    #[command(subcommand)]
    Key(crate::admin::KeyCommand),
    /// Accounts, through the running wallet service.
    #[command(subcommand)]
    Account(AccountCommand),
    /// Grant credits to an account.
    Grant(GrantArgs),
    /// Debit an account.
    Debit(DebitArgs),
    /// Move credits from one account to another (the tenant's fraud rules may hold it).
    Transfer(crate::accounts::TransferArgs),
    /// Show an account's balance.
    Balance {
        account_id: String,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Meters: what usage is counted in, through the running metering service.
    #[command(subcommand)]
    Meter(crate::meters::MeterCommand),
    /// Meters' prices, flat or in graduated tiers, through the running metering service.
    #[command(subcommand)]
    Price(crate::meters::PriceCommand),
    /// Payment methods, through the running payments service.
    #[command(subcommand, name = "payment-method")]
    PaymentMethod(crate::billing::PaymentMethodCommand),
    /// Invoices, through the running invoicing service.
    #[command(subcommand)]
    Invoice(crate::billing::InvoiceCommand),
    /// Billing alerts by e-mail, through the running invoicing service.
    #[command(subcommand)]
    Alerts(crate::billing::AlertCommand),
    /// Voucher batches, through the running payments service (redeem one with `top-up redeem`).
    #[command(subcommand)]
    Voucher(crate::billing::VoucherCommand),
    /// Top-ups and their configuration, through the running orchestrator.
    #[command(subcommand, name = "top-up")]
    TopUp(crate::topup::TopUpCommand),
    /// Fraud rules on transfers and charges, and what they held for review.
    #[command(subcommand)]
    Fraud(crate::fraud::FraudCommand),
    /// Webhooks: receive, verify and print deliveries locally.
    #[command(subcommand)]
    Webhooks(crate::webhooks::WebhooksCommand),
    /// Reports as CSV on standard output: statements, refill history, usage.
    #[command(subcommand)]
    Report(crate::report::ReportCommand),
    /// Ingest a CSV or NDJSON file of usage events in batches, with a progress bar.
    Ingest(IngestArgs),
    /// Show an account's ledger, oldest first (`ledger verify ACCOUNT` checks its hash chain).
    #[command(args_conflicts_with_subcommands = true, subcommand_negates_reqs = true)]
    Ledger {
        #[command(subcommand)]
        command: Option<crate::ledger::LedgerCommand>,
        #[arg(required = true)]
        account_id: Option<String>,
        /// Entries to show at most.
        #[arg(long, default_value_t = 100)]
        limit: u32,
        #[command(flatten)]
        client: ClientArgs,
    },
}

#[derive(Clone, Copy, ValueEnum)]
enum Service {
    Wallet,
    Metering,
    Invoicing,
    Payments,
    Orchestrator,
    /// The billing console: HTML pages over the services' APIs.
    Console,
}

pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("error: cannot start the runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            match error.downcast_ref::<tonic::Status>() {
                Some(status) => {
                    let reason = reason_of(status).unwrap_or_default();
                    let code = code_name(status.code());
                    match reason.as_str() {
                        "" => eprintln!("error: {code}: {}", status.message()),
                        reason => eprintln!("error: {code} {reason}: {}", status.message()),
                    }
                    if let Some(hint) = hint(status.code(), &reason) {
                        eprintln!("hint: {hint}");
                    }
                }
                None => eprintln!("error: {error:#}"),
            }
            ExitCode::FAILURE
        }
    }
}

/// What to check when a call is refused for a reason of the caller's setup
/// rather than of the request.
fn hint(code: tonic::Code, reason: &str) -> Option<&'static str> {
    match (code, reason) {
        (tonic::Code::Unauthenticated, _) => Some(
            "the API key is missing, unknown or revoked: check --api-key (RESERVOIR_API_KEY); \
             `reservoir up` writes the development tenant's key to data/dev-api-key",
        ),
        (tonic::Code::PermissionDenied, "SERVICE_KEY_REQUIRED") => {
            Some("this takes a service key (an operator's): `reservoir up` writes one to data/service-api-key")
        }
        (tonic::Code::PermissionDenied, "KEY_ROLE") => {
            Some("this key's role may not do this: use the tenant's ADMIN key, or issue one (reservoir key issue)")
        }
        (tonic::Code::Unavailable | tonic::Code::DeadlineExceeded, _) => {
            Some("the service is down, draining or overloaded: try again shortly")
        }
        _ => None,
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let config = cli.config.as_deref();
    match cli.command {
        Command::Up => up(config).await,
        Command::Settings => {
            print!("{}", crate::settings::reference().map_err(anyhow::Error::msg)?);
            Ok(())
        }
        Command::Serve { service } => serve(config, service).await,
        Command::Migrate { service } => migrate(config, service).await,
        Command::Ingest(args) => crate::ingest::run(args).await,
        Command::Meter(command) => crate::meters::meter(command).await,
        Command::PaymentMethod(command) => crate::billing::payment_method(command).await,
        Command::Invoice(command) => crate::billing::invoice(command).await,
        Command::Voucher(command) => crate::billing::voucher(command).await,
        Command::Alerts(command) => crate::billing::alerts(command).await,
        Command::Price(command) => crate::meters::price(command).await,
        Command::TopUp(command) => crate::topup::run(command).await,
        Command::Report(command) => crate::report::run(command).await,
        Command::Webhooks(command) => crate::webhooks::run(command).await,
        Command::Fraud(command) => crate::fraud::fraud(command).await,
        Command::Tenant(command) => crate::admin::tenant(command).await,
        Command::Key(command) => crate::admin::key(config, command).await,
        Command::Account(command) => crate::accounts::account(command).await,
        Command::Grant(args) => crate::accounts::grant(args).await,
        Command::Debit(args) => crate::accounts::debit(args).await,
        Command::Transfer(args) => crate::accounts::transfer(args).await,
        Command::Balance { account_id, client } => crate::accounts::balance(account_id, client).await,
        Command::Ledger { command: Some(command), .. } => crate::ledger::run(command).await,
        Command::Ledger { account_id, limit, client, .. } => {
            crate::accounts::ledger(account_id.unwrap_or_default(), limit, client).await
        }
    }
}

/// The settings, with their TLS made the channels' to other services: a
/// process has one identity, used by every service it runs.
pub(crate) fn load_settings(config: Option<&Path>) -> anyhow::Result<Settings> {
    let settings = Settings::load(config).map_err(anyhow::Error::msg)?;
    reservoir_common::tls::use_for_channels(&settings.tls);
    Ok(settings)
}

/// One service in this process, until SIGTERM or Ctrl-C.
async fn serve(config: Option<&Path>, service: Service) -> anyhow::Result<()> {
    let settings = load_settings(config)?;
    // Each service's build checks its settings before it connects to anything.
    let _telemetry =
        telemetry::init(&settings.telemetry, &format!("reservoir-{}", service.name())).map_err(anyhow::Error::msg)?;
    let key_cache_ttl = Duration::from_millis(settings.auth.key_cache_ttl_ms);
    match service {
        Service::Wallet => {
            let application = Application::build(&settings.wallet, &settings.auth).await?;
            serve_until_stopped(application, &settings).await
        }
        Service::Metering => {
            let application = reservoir_metering::app::Application::build(&settings.metering, key_cache_ttl).await?;
            serve_until_stopped(application, &settings).await
        }
        Service::Invoicing => {
            let application = reservoir_invoicing::app::Application::build(&settings.invoicing, key_cache_ttl).await?;
            serve_until_stopped(application, &settings).await
        }
        Service::Payments => {
            let application = reservoir_payments::app::Application::build(&settings.payments, key_cache_ttl).await?;
            serve_until_stopped(application, &settings).await
        }
        Service::Orchestrator => {
            let application =
                reservoir_orchestrator::app::Application::build(&settings.orchestrator, key_cache_ttl).await?;
            serve_until_stopped(application, &settings).await
        }
        Service::Console => {
            // The console serves plain HTTP (TLS at the ingress); its calls
            // to the services use the process's certificate when it has one.
            reservoir_common::tls::use_for_channels(&settings.tls);
            let console = reservoir_console::app::Application::build(&settings.console).await?;
            Ok(console.run_until(shutdown_signal()).await?)
        }
    }
}

/// A built service with the process's limits and TLS.
fn guarded<A: App>(application: A, settings: &Settings) -> A {
    application.with_limits(settings.limits.clone()).with_tls(settings.tls.clone())
}

/// Serves a built service until the process is asked to stop.
async fn serve_until_stopped<A: App>(application: A, settings: &Settings) -> anyhow::Result<()> {
    guarded(application, settings).run_until(shutdown_signal()).await?;
    Ok(())
}

async fn migrate(config: Option<&Path>, service: Service) -> anyhow::Result<()> {
    let settings = load_settings(config)?;
    match service {
        Service::Wallet => Store::connect(&settings.wallet.database(), 1).await?.migrate().await?,
        Service::Metering => {
            reservoir_metering::store::Store::connect(&settings.metering.database()).await?.migrate().await?;
        }
        Service::Invoicing => {
            reservoir_invoicing::store::Store::connect(&settings.invoicing.database()).await?.migrate().await?;
        }
        Service::Payments => {
            reservoir_payments::store::Store::connect(&settings.payments.database()).await?.migrate().await?;
        }
        Service::Orchestrator => {
            reservoir_orchestrator::store::Store::connect(&settings.orchestrator.database()).await?.migrate().await?;
        }
        Service::Console => {
            println!("console: keeps no database, nothing to migrate");
            return Ok(());
        }
    }
    println!("{}: migrations applied", service.name());
    Ok(())
}

impl Service {
    fn name(self) -> &'static str {
        match self {
            Self::Wallet => "wallet",
            Self::Metering => "metering",
            Self::Invoicing => "invoicing",
            Self::Payments => "payments",
            Self::Orchestrator => "orchestrator",
            Self::Console => "console",
        }
    }
}

/// Every service in one process. On the first start it creates a development
/// tenant, prints its key and keeps a copy in `<data_dir>/dev-api-key`; the
/// services' own key for calling the wallet is kept in `<data_dir>/service-api-key`.
async fn up(config: Option<&Path>) -> anyhow::Result<()> {
    let mut settings = load_settings(config)?;
    let _telemetry = telemetry::init(&settings.telemetry, "reservoir").map_err(anyhow::Error::msg)?;
    std::fs::create_dir_all(&settings.data_dir).with_context(|| format!("creating {}", settings.data_dir.display()))?;
    // With a certificate, the services call one another over TLS too.
    let scheme = if settings.tls.enabled() { "https" } else { "http" };
    let wallet = guarded(Application::build(&settings.wallet, &settings.auth).await?, &settings);
    if let Some(issued) = wallet.first_tenant("development").await? {
        let path = settings.data_dir.join("dev-api-key");
        write_secret(&path, &issued.key)?;
        println!("Created the development tenant {}.", issued.tenant_id);
        println!("Its API key (shown once; a copy is in {}):", path.display());
        println!("  {}", issued.key);
    }
    // The services' own key, with which metering, invoicing and payments call
    // the wallet (and invoicing calls metering), naming each call's tenant.
    let path = settings.data_dir.join("service-api-key");
    let service_key = match std::fs::read_to_string(&path) {
        Ok(key) if !key.trim().is_empty() => key.trim().to_owned(),
        _ => {
            let issued = wallet.issue_service_key().await?;
            write_secret(&path, &issued.key)?;
            issued.key
        }
    };
    for key in [
        &mut settings.metering.wallet_service_key,
        &mut settings.invoicing.service_key,
        &mut settings.payments.wallet_service_key,
        &mut settings.orchestrator.service_key,
    ] {
        if key.is_empty() {
            key.clone_from(&service_key);
        }
    }
    if let Some(address) = wallet.local_addr() {
        let endpoint = format!("{scheme}://{address}");
        settings.metering.wallet_endpoint.clone_from(&endpoint);
        settings.invoicing.wallet_endpoint.clone_from(&endpoint);
        settings.orchestrator.wallet_endpoint.clone_from(&endpoint);
        settings.payments.wallet_endpoint = endpoint;
        println!("wallet       listening on {address}");
    }
    let key_cache_ttl = Duration::from_millis(settings.auth.key_cache_ttl_ms);
    let metering =
        guarded(reservoir_metering::app::Application::build(&settings.metering, key_cache_ttl).await?, &settings);
    if let Some(address) = metering.local_addr() {
        settings.invoicing.metering_endpoint = format!("{scheme}://{address}");
        println!("metering     listening on {address}");
    }
    let invoicing =
        guarded(reservoir_invoicing::app::Application::build(&settings.invoicing, key_cache_ttl).await?, &settings);
    if let Some(address) = invoicing.local_addr() {
        settings.orchestrator.invoicing_endpoint = format!("{scheme}://{address}");
        settings.payments.invoicing_endpoint = format!("{scheme}://{address}");
        println!("invoicing    listening on {address}");
    }
    let payments =
        guarded(reservoir_payments::app::Application::build(&settings.payments, key_cache_ttl).await?, &settings);
    if let Some(address) = payments.local_addr() {
        settings.orchestrator.payments_endpoint = format!("{scheme}://{address}");
        println!("payments     listening on {address}");
    }
    let orchestrator = guarded(
        reservoir_orchestrator::app::Application::build(&settings.orchestrator, key_cache_ttl).await?,
        &settings,
    );
    if let Some(address) = orchestrator.local_addr() {
        settings.console.orchestrator_endpoint = format!("{scheme}://{address}");
        println!("orchestrator listening on {address}");
    }
    settings.console.wallet_endpoint.clone_from(&settings.metering.wallet_endpoint);
    settings.console.metering_endpoint.clone_from(&settings.invoicing.metering_endpoint);
    settings.console.invoicing_endpoint.clone_from(&settings.orchestrator.invoicing_endpoint);
    let console = reservoir_console::app::Application::build(&settings.console).await?;
    if let Some(address) = console.local_addr() {
        println!("console      http://{address}");
    }
    let (stop, stopping) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        shutdown_signal().await;
        let _ = stop.send(true);
    });
    let stopped = |mut receiver: tokio::sync::watch::Receiver<bool>| async move {
        let _ = receiver.wait_for(|stop| *stop).await;
    };
    let (wallet_result, metering_result, invoicing_result, payments_result, orchestrator_result, console_result) = tokio::join!(
        wallet.run_until(stopped(stopping.clone())),
        metering.run_until(stopped(stopping.clone())),
        invoicing.run_until(stopped(stopping.clone())),
        payments.run_until(stopped(stopping.clone())),
        orchestrator.run_until(stopped(stopping.clone())),
        console.run_until(stopped(stopping)),
    );
    wallet_result?;
    metering_result?;
    invoicing_result?;
    payments_result?;
    orchestrator_result?;
    console_result?;
    Ok(())
}

fn write_secret(path: &Path, secret: &str) -> anyhow::Result<()> {
    std::fs::write(path, format!("{secret}\n")).with_context(|| format!("writing {}", path.display()))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    }
    Ok(())
}
