//! `reservoir webhooks listen`: receives deliveries on a local address,
//! verifies each as a receiver must (Standard Webhooks: headers, timestamp
//! tolerance, signature) and prints it, for developing a receiver against a
//! running suite. Without a secret it registers an endpoint for the address
//! through the orchestrator and disables it again when it stops.

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::{Context, bail};
use axum::body::Bytes;
use axum::http::{HeaderMap, StatusCode};
use clap::{Args, Subcommand};
use reservoir_common::serve::shutdown_signal;
use reservoir_orchestrator::domain::signature;
use reservoir_proto::orchestrator as pb;
use reservoir_proto::orchestrator::webhook_service_client::WebhookServiceClient;

#[derive(Subcommand)]
pub enum WebhooksCommand {
    /// Receive deliveries on a local address, verify each signature and
    /// print one line per delivery. Without --secret, registers an endpoint
    /// for the address through the orchestrator (with the tenant's API key)
    /// and disables it when stopped.
    Listen(ListenArgs),
    /// Register an endpoint (an ADMIN key); its signing secret is shown once.
    Create {
        url: String,
        /// Event types to send, comma-separated; all when omitted.
        #[arg(long, value_delimiter = ',')]
        events: Vec<String>,
        #[arg(long, default_value = "")]
        description: String,
        #[command(flatten)]
        client: OrchestratorClientArgs,
    },
    /// The tenant's endpoints.
    List {
        #[command(flatten)]
        client: OrchestratorClientArgs,
    },
    /// Stop sending to an endpoint (an ADMIN key); its deliveries wait.
    Disable {
        endpoint_id: String,
        #[command(flatten)]
        client: OrchestratorClientArgs,
    },
}

#[derive(Args)]
pub struct OrchestratorClientArgs {
    /// The orchestrator's address.
    #[arg(long, env = "RESERVOIR_ORCHESTRATOR_ENDPOINT", default_value = "http://127.0.0.1:50055")]
    endpoint: String,
    /// The tenant's API key.
    #[arg(long, env = "RESERVOIR_API_KEY", hide_env_values = true)]
    api_key: String,
}

/// One row per endpoint: id, url, enabled, the events it is sent.
fn print_endpoints(endpoints: &[pb::WebhookEndpoint]) {
    let mut table = comfy_table::Table::new();
    table.set_header(["endpoint", "url", "enabled", "events"]);
    for endpoint in endpoints {
        let events = if endpoint.event_types.is_empty() { "all".to_owned() } else { endpoint.event_types.join(",") };
        table.add_row([endpoint.id.clone(), endpoint.url.clone(), endpoint.enabled.to_string(), events]);
    }
    println!("{table}");
}

#[derive(Args)]
pub struct ListenArgs {
    /// The address to receive on (port 0: any free port, printed at start).
    #[arg(long, default_value = "127.0.0.1:8787")]
    listen: SocketAddr,
    /// The signing secret (whsec_…) of an endpoint registered already.
    #[arg(long, env = "RESERVOIR_WEBHOOK_SECRET", hide_env_values = true)]
    secret: Option<String>,
    /// Event types to register for, comma-separated; all when omitted.
    #[arg(long, value_delimiter = ',')]
    events: Vec<String>,
    /// Print each delivery's body under its line.
    #[arg(long)]
    print_json: bool,
    /// The orchestrator's address, to register with.
    #[arg(long, env = "RESERVOIR_ORCHESTRATOR_ENDPOINT", default_value = "http://127.0.0.1:50055")]
    endpoint: String,
    /// The tenant's API key, to register with.
    #[arg(long, env = "RESERVOIR_API_KEY", hide_env_values = true)]
    api_key: Option<String>,
}

type Webhooks = WebhookServiceClient<crate::client::Authorized>;

pub async fn run(command: WebhooksCommand) -> anyhow::Result<()> {
    let args = match command {
        WebhooksCommand::Listen(args) => args,
        WebhooksCommand::Create { url, events, description, client: args } => {
            let request = pb::CreateWebhookEndpointRequest {
                url,
                description,
                event_types: events,
                idempotency_key: uuid::Uuid::now_v7().to_string(),
            };
            let created = client(&args.endpoint, &args.api_key).await?.create_webhook_endpoint(request).await?;
            let created = created.into_inner();
            print_endpoints(&created.endpoint.into_iter().collect::<Vec<_>>());
            println!("secret {}", created.secret);
            return Ok(());
        }
        WebhooksCommand::List { client: args } => {
            let mut listed = client(&args.endpoint, &args.api_key).await?;
            let endpoints = listed.list_webhook_endpoints(pb::ListWebhookEndpointsRequest {}).await?;
            print_endpoints(&endpoints.into_inner().endpoints);
            return Ok(());
        }
        WebhooksCommand::Disable { endpoint_id, client: args } => {
            let request = pb::UpdateWebhookEndpointRequest { endpoint_id, enabled: Some(false), ..Default::default() };
            let updated = client(&args.endpoint, &args.api_key).await?.update_webhook_endpoint(request).await?;
            print_endpoints(&updated.into_inner().endpoint.into_iter().collect::<Vec<_>>());
            return Ok(());
        }
    };
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("cannot listen on {}", args.listen))?;
    let address = listener.local_addr()?;
    let url = format!("http://{address}/");
    let (secret, registered) = match &args.secret {
        Some(secret) => (secret.clone(), None),
        None => {
            let Some(api_key) = &args.api_key else {
                bail!("give --secret of an endpoint, or --api-key to register one for {url}");
            };
            let mut client = client(&args.endpoint, api_key).await?;
            let created = client
                .create_webhook_endpoint(pb::CreateWebhookEndpointRequest {
                    url: url.clone(),
                    description: "reservoir webhooks listen".into(),
                    event_types: args.events.clone(),
                    idempotency_key: uuid::Uuid::new_v4().to_string(),
                })
                .await
                .map_err(|status| anyhow::anyhow!("registering {url}: {}", status.message()))?
                .into_inner();
            let endpoint_id = created.endpoint.map(|endpoint| endpoint.id).unwrap_or_default();
            println!("Registered endpoint {endpoint_id} for {url}; its signing secret is {}", created.secret);
            (created.secret, Some((client, endpoint_id)))
        }
    };
    println!("Ready: receiving deliveries on {url} (Ctrl-C to stop)");
    let secret = Arc::new(secret);
    let print_json = args.print_json;
    let app = axum::Router::new().fallback(move |headers: HeaderMap, body: Bytes| {
        let secret = secret.clone();
        async move { receive(&secret, &headers, &body, print_json) }
    });
    axum::serve(listener, app).with_graceful_shutdown(shutdown_signal()).await?;
    if let Some((mut client, endpoint_id)) = registered {
        client
            .update_webhook_endpoint(pb::UpdateWebhookEndpointRequest {
                endpoint_id: endpoint_id.clone(),
                enabled: Some(false),
                ..Default::default()
            })
            .await
            .map_err(|status| anyhow::anyhow!("disabling endpoint {endpoint_id}: {}", status.message()))?;
        println!("Disabled endpoint {endpoint_id}");
    }
    Ok(())
}

async fn client(endpoint: &str, api_key: &str) -> anyhow::Result<Webhooks> {
    Ok(WebhookServiceClient::new(crate::client::authorized(endpoint, api_key).await?))
}

/// One delivery: verified and printed; answered 204, or 400 when it does
/// not verify (so it is tried again, as a receiver should make it).
fn receive(secret: &str, headers: &HeaderMap, body: &[u8], print_json: bool) -> StatusCode {
    let header = |name: &str| headers.get(name).and_then(|value| value.to_str().ok()).unwrap_or_default();
    let id = header(signature::ID_HEADER);
    let verdict = signature::verify(
        secret,
        id,
        header(signature::TIMESTAMP_HEADER),
        header(signature::SIGNATURE_HEADER),
        body,
        chrono::Utc::now().timestamp(),
    );
    let json: serde_json::Value = serde_json::from_slice(body).unwrap_or_default();
    let kind = json["type"].as_str().unwrap_or("?");
    let now = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let (status, outcome) = match verdict {
        Ok(()) => (StatusCode::NO_CONTENT, "verified".to_owned()),
        Err(refusal) => (StatusCode::BAD_REQUEST, format!("REFUSED: {refusal}")),
    };
    println!("{now}  {kind}  {id}  {outcome}");
    if print_json {
        println!("{}", serde_json::to_string_pretty(&json).unwrap_or_default());
    }
    status
}
