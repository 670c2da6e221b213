//! The binary's settings: every service's, plus what they share.

use std::path::{Path, PathBuf};

use reservoir_common::limits::LimitSettings;
use reservoir_common::settings::{AuthSettings, TelemetrySettings, load};
use reservoir_common::tls::TlsSettings;
use reservoir_console::app::ConsoleSettings;
use reservoir_invoicing::app::InvoicingSettings;
use reservoir_metering::app::MeteringSettings;
use reservoir_orchestrator::app::OrchestratorSettings;
use reservoir_payments::app::PaymentsSettings;
use reservoir_wallet::app::WalletSettings;
use serde::Deserialize;

/// Built-in defaults: everything on SQLite under `./data`, on localhost.
const DEFAULTS: &str = r#"
data_dir = "./data"

[wallet]
listen = "127.0.0.1:50051"
database_url = "sqlite://./data/wallet.db?mode=rwc"
database_schema = "wallet"
database_max_connections = 8
sweep_interval_ms = 1000
committers = 1
metrics_listen = "127.0.0.1:9051"

[metering]
listen = "127.0.0.1:50052"
database_url = "sqlite://./data/metering.db?mode=rwc"
database_schema = "metering"
database_max_connections = 8
wallet_endpoint = "http://127.0.0.1:50051"
wallet_service_key = ""
worker_interval_ms = 1000
metrics_listen = "127.0.0.1:9052"

[invoicing]
listen = "127.0.0.1:50053"
database_url = "sqlite://./data/invoicing.db?mode=rwc"
database_schema = "invoicing"
database_max_connections = 8
wallet_endpoint = "http://127.0.0.1:50051"
metering_endpoint = "http://127.0.0.1:50052"
service_key = ""
payment_due_days_default = 14
worker_interval_ms = 1000
metrics_listen = "127.0.0.1:9053"
smtp_url = ""
report_from = "Reservoir <reservoir@localhost>"

[payments]
listen = "127.0.0.1:50054"
database_url = "sqlite://./data/payments.db?mode=rwc"
database_schema = "payments"
database_max_connections = 8
wallet_endpoint = "http://127.0.0.1:50051"
wallet_service_key = ""
invoicing_endpoint = "http://127.0.0.1:50053"
gateway_timeout_ms = 10000
metrics_listen = "127.0.0.1:9054"

[orchestrator]
listen = "127.0.0.1:50055"
database_url = "sqlite://./data/orchestrator.db?mode=rwc"
database_schema = "orchestrator"
database_max_connections = 8
wallet_endpoint = "http://127.0.0.1:50051"
invoicing_endpoint = "http://127.0.0.1:50053"
payments_endpoint = "http://127.0.0.1:50054"
service_key = ""
worker_interval_ms = 1000
saga_lease_ms = 10000
attempts_before_action = 8
crash_at = ""
metrics_listen = "127.0.0.1:9055"

[console]
listen = "127.0.0.1:8080"
wallet_endpoint = "http://127.0.0.1:50051"
metering_endpoint = "http://127.0.0.1:50052"
invoicing_endpoint = "http://127.0.0.1:50053"
orchestrator_endpoint = "http://127.0.0.1:50055"
session_idle_ms = 1800000
max_sessions = 10000
metrics_listen = "127.0.0.1:9056"

[orchestrator.webhooks]
interval_ms = 500
retry_base_ms = 5000
retry_max_ms = 3600000
retry_hours = 72
timeout_ms = 10000
# Local development sends to receivers on this machine; production wants
# https to public addresses only.
allow_http = true
allow_private_destinations = true
max_pending_per_tenant = 100000

[limits]
max_connections = 4096
handshake_timeout_ms = 10000
keepalive_interval_ms = 30000
keepalive_timeout_ms = 10000
max_connection_age_ms = 1800000
max_connection_age_grace_ms = 300000
drain_delay_ms = 0
max_in_flight = 2048
call_timeout_ms = 60000
tenant_max_in_flight = 512
tenant_calls_per_second = 50000
tenant_burst = 50000
tenant_overrides = {}
key_overrides = {}
browser_origins = []

[tls]
# Plaintext unless a certificate is given; see docs/OPERATIONS.md, Security.
cert_file = ""
key_file = ""
client_ca_file = ""
ca_file = ""
reload_interval_ms = 30000

[auth]
api_key_pepper = "reservoir-development-pepper"
key_cache_ttl_ms = 5000

[telemetry]
log_format = "text"
log_filter = "info"
otlp_endpoint = ""
"#;

#[derive(Debug, Clone, Deserialize, schemars::JsonSchema)]
pub struct Settings {
    /// Where `reservoir up` keeps its files, such as the development API key.
    pub data_dir: PathBuf,
    pub wallet: WalletSettings,
    pub metering: MeteringSettings,
    pub invoicing: InvoicingSettings,
    pub payments: PaymentsSettings,
    pub orchestrator: OrchestratorSettings,
    /// The billing console (HTTP).
    pub console: ConsoleSettings,
    pub auth: AuthSettings,
    /// Bounds every service serves within (each service counts its own).
    pub limits: LimitSettings,
    /// TLS of every service's port and of the channels between services
    /// (each process has one certificate).
    pub tls: TlsSettings,
    pub telemetry: TelemetrySettings,
}

impl Settings {
    pub fn load(file: Option<&Path>) -> Result<Self, String> {
        let settings: Self = load(DEFAULTS, file).map_err(|error| format!("settings: {error}"))?;
        settings.wallet.validate()?;
        settings.limits.validate()?;
        settings.tls.validate()?;
        if settings.auth.api_key_pepper.is_empty() {
            return Err("auth.api_key_pepper must not be empty".into());
        }
        Ok(settings)
    }
}

/// Every setting with its default and meaning, generated from the types.
pub fn reference() -> Result<String, String> {
    reservoir_common::settings::reference::<Settings>(DEFAULTS)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    /// docs/OPERATIONS.md carries the generated reference verbatim.
    #[test]
    fn the_operations_guide_lists_every_setting_as_generated() {
        let generated = super::reference().unwrap();
        let guide = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../../docs/OPERATIONS.md")).unwrap();
        let documented = guide
            .split("<!-- settings -->\n")
            .nth(1)
            .and_then(|rest| rest.split("<!-- /settings -->").next())
            .unwrap_or_default();
        assert_eq!(
            documented, generated,
            "docs/OPERATIONS.md is out of date: replace its table between the settings markers with `reservoir settings`"
        );
        for key in ["wallet.listen", "metering.wallet_service_key", "auth.api_key_pepper", "telemetry.otlp_endpoint"] {
            assert!(generated.contains(&format!("| `{key}` |")), "{key} is listed");
        }
    }
}
