//! Layered settings: built-in defaults, then a TOML file, then `RESERVOIR__`
//! environment variables (`RESERVOIR__WALLET__DATABASE_URL=postgres://...`).

use std::path::Path;

use serde::Deserialize;
use serde::de::DeserializeOwned;

/// Reads settings of type `T` from `defaults` (a TOML text), the optional
/// file, and the environment, in that order of precedence, lowest first.
pub fn load<T: DeserializeOwned>(defaults: &str, file: Option<&Path>) -> Result<T, config::ConfigError> {
    let mut builder = config::Config::builder().add_source(config::File::from_str(defaults, config::FileFormat::Toml));
    if let Some(path) = file {
        builder = builder.add_source(config::File::from(path).required(true));
    }
    builder
        .add_source(
            config::Environment::with_prefix("RESERVOIR").prefix_separator("__").separator("__").try_parsing(true),
        )
        .build()?
        .try_deserialize()
}

/// Where and how a service keeps its data.
#[derive(Debug, Clone, Deserialize)]
pub struct DatabaseSettings {
    /// `sqlite://path?mode=rwc` or `postgres://user@host/db`.
    pub url: String,
    /// The PostgreSQL schema the service owns; ignored on SQLite.
    pub schema: String,
    pub max_connections: u32,
}

impl DatabaseSettings {
    pub fn is_postgres(&self) -> bool {
        self.url.starts_with("postgres://") || self.url.starts_with("postgresql://")
    }

    pub fn validate(&self) -> Result<(), String> {
        let known = self.is_postgres() || self.url.starts_with("sqlite:");
        if !known {
            return Err(format!("database url must start with sqlite: or postgres://, not {:?}", self.url));
        }
        if self.max_connections == 0 {
            return Err("database max_connections must be at least 1".into());
        }
        let schema_ok = !self.schema.is_empty()
            && self.schema.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
        if !schema_ok {
            return Err(format!("database schema {:?} must be lowercase letters, digits and underscores", self.schema));
        }
        Ok(())
    }
}

/// How API keys are checked.
#[derive(Debug, Clone, Deserialize)]
pub struct AuthSettings {
    /// Mixed into every key's hash, so a copy of the database alone cannot
    /// be used to test guessed keys. Keep it secret in production.
    pub api_key_pepper: String,
    /// How long a checked key is trusted before it is looked up again; a
    /// revoked key stops working within this time.
    pub key_cache_ttl_ms: u64,
}

/// Logs and traces.
#[derive(Debug, Clone, Deserialize)]
pub struct TelemetrySettings {
    /// `json` for one JSON object a line, `text` for people.
    pub log_format: String,
    /// A tracing filter such as `info,reservoir_wallet=debug`; `RUST_LOG` wins when set.
    pub log_filter: String,
    /// An OTLP gRPC endpoint such as `http://otel-collector:4317`; traces are off when empty.
    pub otlp_endpoint: String,
}
