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
#[derive(Debug, Clone, Deserialize, schemars::JsonSchema)]
pub struct AuthSettings {
    /// Mixed into every key's hash, so a copy of the database alone cannot
    /// be used to test guessed keys. Keep it secret in production.
    pub api_key_pepper: String,
    /// How long a checked key is trusted before it is looked up again; a
    /// revoked key stops working within this time.
    pub key_cache_ttl_ms: u64,
}

/// Logs and traces.
#[derive(Debug, Clone, Deserialize, schemars::JsonSchema)]
pub struct TelemetrySettings {
    /// `json` for one JSON object a line, `text` for people.
    pub log_format: String,
    /// A tracing filter such as `info,reservoir_wallet=debug`; `RUST_LOG` wins when set.
    pub log_filter: String,
    /// An OTLP gRPC endpoint such as `http://otel-collector:4317`; traces are off when empty.
    /// Every call's span continues the caller's W3C `traceparent`, and calls
    /// between services carry it on.
    pub otlp_endpoint: String,
}

/// A Markdown table of every setting of `T`: its key, its default from
/// `defaults`, and what it means (the field's documentation). Generated, so
/// docs/OPERATIONS.md cannot drift from the settings types.
pub fn reference<T: schemars::JsonSchema>(defaults: &str) -> Result<String, String> {
    let schema = schemars::schema_for!(T);
    let root = schema.as_value();
    let defaults: config::Config = config::Config::builder()
        .add_source(config::File::from_str(defaults, config::FileFormat::Toml))
        .build()
        .map_err(|error| error.to_string())?;
    let mut rows = Vec::new();
    walk(root, root, "", &defaults, &mut rows);
    let mut table = String::from("| setting | default | meaning |\n|---|---|---|\n");
    for (key, default, meaning) in rows {
        let default = if default.is_empty() { "(empty)".to_owned() } else { format!("`{default}`") };
        table.push_str(&format!("| `{key}` | {default} | {meaning} |\n"));
    }
    Ok(table)
}

fn walk(
    root: &serde_json::Value,
    schema: &serde_json::Value,
    prefix: &str,
    defaults: &config::Config,
    rows: &mut Vec<(String, String, String)>,
) {
    let schema = resolve(root, schema);
    let Some(properties) = schema.get("properties").and_then(serde_json::Value::as_object) else {
        return;
    };
    for (name, property) in properties {
        let key = if prefix.is_empty() { name.clone() } else { format!("{prefix}.{name}") };
        let resolved = resolve(root, property);
        if resolved.get("properties").is_some() {
            walk(root, resolved, &key, defaults, rows);
            continue;
        }
        let meaning = property
            .get("description")
            .or_else(|| resolved.get("description"))
            .and_then(serde_json::Value::as_str)
            .unwrap_or("")
            .split_whitespace()
            .collect::<Vec<_>>()
            .join(" ");
        let default = defaults.get_string(&key).unwrap_or_default();
        rows.push((key, default, meaning));
    }
}

/// Follows a `$ref` to its definition.
fn resolve<'a>(root: &'a serde_json::Value, schema: &'a serde_json::Value) -> &'a serde_json::Value {
    let Some(reference) = schema.get("$ref").and_then(serde_json::Value::as_str) else {
        return schema;
    };
    reference
        .strip_prefix("#/")
        .and_then(|path| path.split('/').try_fold(root, |node, part| node.get(part)))
        .unwrap_or(schema)
}
