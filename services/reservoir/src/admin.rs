//! Tenants and API keys, through the wallet's AdminService: an operator's
//! service key manages every tenant, a tenant's ADMIN key its own keys. The
//! one exception is an installation's first service key, which nothing could
//! call the API with yet: `key issue-service --bootstrap` writes it to the
//! wallet's database, as `migrate` writes the schema.

use std::path::Path;

use anyhow::{Context, bail};
use clap::{Args, Subcommand, ValueEnum};
use comfy_table::Table;
use reservoir_proto::wallet as pb;
use serde_json::json;

use crate::client;

#[derive(Args, Clone)]
pub struct AdminArgs {
    /// The wallet service's address.
    #[arg(long, env = "RESERVOIR_ENDPOINT", default_value = "http://127.0.0.1:50051")]
    endpoint: String,
    /// A service key (an operator's), or a tenant's ADMIN key for its own keys.
    #[arg(long, env = "RESERVOIR_API_KEY", hide_env_values = true)]
    api_key: String,
}

impl AdminArgs {
    async fn client(&self) -> anyhow::Result<client::Admin> {
        client::admin(&self.endpoint, &self.api_key).await
    }
}

#[derive(Subcommand)]
pub enum TenantCommand {
    /// Create a tenant and issue its first API key (ADMIN), shown once.
    Create {
        name: String,
        #[command(flatten)]
        client: AdminArgs,
    },
    /// List tenants with their active keys.
    List {
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        client: AdminArgs,
    },
}

#[derive(Clone, Copy, ValueEnum)]
pub enum Role {
    Admin,
    Write,
    ReadOnly,
}

impl From<Role> for pb::KeyRole {
    fn from(role: Role) -> Self {
        match role {
            Role::Admin => Self::Admin,
            Role::Write => Self::Write,
            Role::ReadOnly => Self::ReadOnly,
        }
    }
}

#[derive(Subcommand)]
pub enum KeyCommand {
    /// Issue a new API key for a tenant; it is shown once.
    Issue {
        /// The tenant; a tenant's ADMIN key may leave it out (its own).
        tenant_id: Option<String>,
        /// What the key may do: read-only reads; write also changes balances,
        /// accounts and top-ups; admin also changes the tenant's settings,
        /// meters and prices, webhook endpoints, voucher batches and keys.
        #[arg(long, value_enum, default_value_t = Role::Admin)]
        role: Role,
        #[command(flatten)]
        client: AdminArgs,
    },
    /// Issue a key for Reservoir's own services (metering and the others call
    /// the wallet with it, naming the tenant of each call); shown once.
    IssueService {
        /// The installation's first service key: written to the wallet's
        /// database (settings from --config and RESERVOIR__WALLET__...), not
        /// asked of the API, which needs a service key to call.
        #[arg(long)]
        bootstrap: bool,
        /// The wallet service's address.
        #[arg(long, env = "RESERVOIR_ENDPOINT", default_value = "http://127.0.0.1:50051")]
        endpoint: String,
        /// A service key.
        #[arg(long, env = "RESERVOIR_API_KEY", hide_env_values = true)]
        api_key: Option<String>,
    },
    /// List a tenant's keys, revoked ones included: id, first characters,
    /// role, when issued and when revoked (never the keys themselves).
    List {
        /// The tenant; a tenant's ADMIN key may leave it out (its own).
        tenant_id: Option<String>,
        #[command(flatten)]
        client: AdminArgs,
    },
    /// Revoke an API key by its id.
    Revoke {
        key_id: String,
        #[command(flatten)]
        client: AdminArgs,
    },
    /// Replace an API key: a new key (shown once) for the same tenant and
    /// role, while the old one keeps working for the overlap.
    Rotate {
        key_id: String,
        /// Hours the old key keeps working (0: it stops now; at most 720).
        #[arg(long, default_value_t = 24)]
        overlap_hours: u32,
        #[command(flatten)]
        client: AdminArgs,
    },
}

pub async fn tenant(command: TenantCommand) -> anyhow::Result<()> {
    match command {
        TenantCommand::Create { name, client } => {
            let mut admin = client.client().await?;
            let request = pb::CreateTenantRequest { name, idempotency_key: uuid::Uuid::now_v7().to_string() };
            let tenant = admin.create_tenant(request).await?.into_inner().tenant.context("no tenant in the answer")?;
            let request = pb::IssueApiKeyRequest { tenant_id: tenant.id.clone(), role: pb::KeyRole::Admin.into() };
            let issued = admin.issue_api_key(request).await?.into_inner();
            println!("tenant {}", tenant.id);
            println!("key id {}", issued.key.map(|key| key.id).unwrap_or_default());
            println!("api key {}", issued.api_key);
        }
        TenantCommand::List { json, client } => {
            let tenants = client.client().await?.list_tenants(pb::ListTenantsRequest {}).await?.into_inner().tenants;
            let created = |tenant: &pb::Tenant| tenant.created_at.as_ref().map(rfc3339).unwrap_or_default();
            if json {
                let rows: Vec<_> = tenants
                    .iter()
                    .map(|tenant| {
                        json!({"id": tenant.id, "name": tenant.name, "created_at": created(tenant), "active_keys": tenant.active_keys})
                    })
                    .collect();
                println!("{}", serde_json::to_string_pretty(&rows)?);
            } else {
                let mut table = Table::new();
                table.set_header(["id", "name", "created at", "active keys"]);
                for tenant in &tenants {
                    table.add_row([
                        tenant.id.clone(),
                        tenant.name.clone(),
                        created(tenant),
                        tenant.active_keys.to_string(),
                    ]);
                }
                println!("{table}");
            }
        }
    }
    Ok(())
}

pub async fn key(config: Option<&Path>, command: KeyCommand) -> anyhow::Result<()> {
    match command {
        KeyCommand::Issue { tenant_id, role, client } => {
            let request = pb::IssueApiKeyRequest {
                tenant_id: tenant_id.unwrap_or_default(),
                role: pb::KeyRole::from(role).into(),
            };
            let issued = client.client().await?.issue_api_key(request).await?.into_inner();
            let key = issued.key.context("no key in the answer")?;
            println!("key id {}", key.id);
            println!("role {}", role_name(key.role()));
            println!("api key {}", issued.api_key);
        }
        KeyCommand::IssueService { bootstrap: true, .. } => {
            let settings = crate::cli::load_settings(config)?;
            let issued = reservoir_wallet::app::bootstrap_service_key(&settings.wallet, &settings.auth).await?;
            println!("key id {}", issued.id);
            println!("api key {}", issued.key);
        }
        KeyCommand::IssueService { bootstrap: false, endpoint, api_key } => {
            let Some(api_key) = api_key else {
                bail!(
                    "--api-key (or RESERVOIR_API_KEY) must be a service key; on a new installation, \
                     --bootstrap issues the first one from the wallet's database"
                );
            };
            let issued = client::admin(&endpoint, &api_key)
                .await?
                .issue_service_key(pb::IssueServiceKeyRequest {})
                .await?
                .into_inner();
            println!("key id {}", issued.key.map(|key| key.id).unwrap_or_default());
            println!("api key {}", issued.api_key);
        }
        KeyCommand::Rotate { key_id, overlap_hours, client } => {
            let overlap_seconds = overlap_hours.checked_mul(3_600).context("--overlap-hours is too large")?;
            let rotated = client
                .client()
                .await?
                .rotate_api_key(pb::RotateApiKeyRequest { key_id: key_id.clone(), overlap_seconds })
                .await?
                .into_inner();
            println!("key id {}", rotated.key.map(|key| key.id).unwrap_or_default());
            println!("api key {}", rotated.api_key);
            let ends = rotated.replaced.and_then(|old| old.revoked_at).map(|at| rfc3339(&at)).unwrap_or_default();
            println!("the old key {key_id} works until {ends}");
        }
        KeyCommand::List { tenant_id, client } => {
            let request = pb::ListApiKeysRequest { tenant_id: tenant_id.unwrap_or_default() };
            let keys = client.client().await?.list_api_keys(request).await?.into_inner().keys;
            println!("{:<36}  {:<12}  {:<9}  {:<20}  revoked", "key id", "starts with", "role", "issued");
            for key in keys {
                let role = if key.kind() == pb::CallerKind::Service { "SERVICE" } else { role_name(key.role()) };
                let revoked = key.revoked_at.as_ref().map(rfc3339).unwrap_or_default();
                let issued = key.created_at.as_ref().map(rfc3339).unwrap_or_default();
                println!("{:<36}  {:<12}  {:<9}  {:<20}  {revoked}", key.id, key.display_prefix, role, issued);
            }
        }
        KeyCommand::Revoke { key_id, client } => {
            client.client().await?.revoke_api_key(pb::RevokeApiKeyRequest { key_id: key_id.clone() }).await?;
            println!("revoked {key_id}");
        }
    }
    Ok(())
}

/// A role as the CLI takes and shows it: ADMIN, WRITE, READ_ONLY.
fn role_name(role: pb::KeyRole) -> &'static str {
    let name = role.as_str_name();
    crate::output::readable(name, "KEY_ROLE_")
}

/// An instant to the second, in UTC: 2026-12-07T06:58:00Z.
fn rfc3339(timestamp: &prost_types::Timestamp) -> String {
    reservoir_common::time::from_timestamp(timestamp)
        .map(|at| at.format("%Y-%m-%dT%H:%M:%SZ").to_string())
        .unwrap_or_default()
}
