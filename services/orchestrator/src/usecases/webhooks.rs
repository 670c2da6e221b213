//! Webhooks: every wallet, payment, invoice and top-up event of a tenant with an
//! endpoint is kept as a message and delivered to each endpoint that wants
//! it, as a signed JSON POST, until a 2xx answer or the end of the retry
//! period. Each (tenant, source) stream is followed from a cursor of its own;
//! deliveries of one endpoint, account and source go out in sequence order,
//! each only after the one before it succeeded or was given up.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use futures::Stream;
use reservoir_common::auth::TenantId;
use reservoir_common::time::from_timestamp;
use reservoir_proto::invoicing as invoicing_pb;
use reservoir_proto::orchestrator as pb;
use reservoir_proto::payments as payments_pb;
use reservoir_proto::wallet as wallet_pb;
use serde::Deserialize;
use serde_json::json;
use tokio::sync::watch;
use tokio_stream::StreamExt;
use uuid::Uuid;

use crate::clients::Upstream;
use crate::domain::ENDPOINTS_FRESH_FOR;
use crate::domain::signature;
use crate::error::OrchestratorError;
use crate::store::{
    AttemptResult, AttemptRow, DeliveryRow, DeliveryStatus, EndpointRow, Store, StoredEvent, WebhookMessage,
};
use reservoir_common::time::now;

/// Attempts one pass makes at most.
const ATTEMPTS_PER_PASS: u64 = 100;
/// Top-up events read per query.
const EVENT_BATCH: u64 = 500;
/// Events passed over (no endpoint wants them) between two saves of a cursor.
const CURSOR_SAVE_EVERY: u32 = 500;
/// How long a broken stream waits before it connects again.
const RECONNECT: Duration = Duration::from_secs(1);
/// Whether a tenant has room for a message's deliveries.
enum Room {
    Now,
    /// After waiting: who wants the message is to be decided again.
    AfterWaiting,
    Stopping,
}

/// How long a follower trusts its count of the tenant's pending deliveries
/// (plus what it kept since) while below the limit.
const PENDING_FRESH_FOR: Duration = Duration::from_secs(1);

/// How deliveries are made and retried.
#[derive(Debug, Clone, Deserialize, schemars::JsonSchema)]
pub struct WebhookSettings {
    /// How often due deliveries are looked for.
    #[serde(default = "interval_ms_default")]
    pub interval_ms: u64,
    /// The wait after the first failed attempt; each later one doubles it.
    #[serde(default = "retry_base_ms_default")]
    pub retry_base_ms: u64,
    /// The longest wait between two attempts.
    #[serde(default = "retry_max_ms_default")]
    pub retry_max_ms: u64,
    /// How long a delivery is retried before it is given up (FAILED); at least 24.
    #[serde(default = "retry_hours_default")]
    pub retry_hours: u32,
    /// How long one attempt waits for an answer.
    #[serde(default = "timeout_ms_default")]
    pub timeout_ms: u64,
    /// Allows plain http:// endpoints, for local development and tests; https only otherwise.
    #[serde(default)]
    pub allow_http: bool,
    /// Allows endpoints on loopback, private, link-local and other
    /// non-public addresses, for local development and tests. Off, such a
    /// URL is refused when saved and a name resolving there is refused at
    /// each delivery.
    #[serde(default)]
    pub allow_private_destinations: bool,
    /// Deliveries a tenant may have waiting (on its enabled endpoints)
    /// before its events stop being read: past it, new events wait in the
    /// services that emit them, none lost, until deliveries drain or an
    /// endpoint that is down is disabled.
    #[serde(default = "max_pending_per_tenant_default")]
    pub max_pending_per_tenant: u64,
}

fn interval_ms_default() -> u64 {
    500
}
fn retry_base_ms_default() -> u64 {
    5_000
}
fn retry_max_ms_default() -> u64 {
    3_600_000
}
fn retry_hours_default() -> u32 {
    72
}
fn timeout_ms_default() -> u64 {
    10_000
}
fn max_pending_per_tenant_default() -> u64 {
    100_000
}

impl Default for WebhookSettings {
    fn default() -> Self {
        Self {
            interval_ms: interval_ms_default(),
            retry_base_ms: retry_base_ms_default(),
            retry_max_ms: retry_max_ms_default(),
            retry_hours: retry_hours_default(),
            timeout_ms: timeout_ms_default(),
            allow_http: false,
            allow_private_destinations: false,
            max_pending_per_tenant: max_pending_per_tenant_default(),
        }
    }
}

impl WebhookSettings {
    pub fn validate(&self) -> Result<(), String> {
        if self.retry_hours < 24 {
            return Err("orchestrator: webhooks.retry_hours must be at least 24".into());
        }
        if self.interval_ms == 0 || self.retry_base_ms == 0 || self.timeout_ms == 0 {
            return Err("orchestrator: webhooks interval_ms, retry_base_ms and timeout_ms must be at least 1".into());
        }
        if self.max_pending_per_tenant == 0 {
            return Err("orchestrator: webhooks.max_pending_per_tenant must be at least 1".into());
        }
        if self.retry_max_ms < self.retry_base_ms {
            return Err("orchestrator: webhooks.retry_max_ms must not be below retry_base_ms".into());
        }
        Ok(())
    }

    /// The wait after the `failed`-th failed attempt: base × 2^(failed − 1), at most the maximum.
    pub fn backoff(&self, failed: u32) -> Duration {
        let doublings = failed.saturating_sub(1).min(32);
        let wait = self.retry_base_ms.saturating_mul(1_u64 << doublings).min(self.retry_max_ms);
        Duration::from_millis(wait)
    }
}

/// Where events come from; each is followed per tenant from its own cursor.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Source {
    Wallet,
    Payments,
    Invoices,
    TopUps,
}

impl Source {
    pub const ALL: [Source; 4] = [Source::Wallet, Source::Payments, Source::Invoices, Source::TopUps];

    pub fn name(self) -> &'static str {
        match self {
            Self::Wallet => "wallet",
            Self::Payments => "payments",
            Self::Invoices => "invoices",
            Self::TopUps => "top_ups",
        }
    }

    fn cursor(self) -> &'static str {
        match self {
            Self::Wallet => "webhooks:wallet",
            Self::Payments => "webhooks:payments",
            Self::Invoices => "webhooks:invoices",
            Self::TopUps => "webhooks:top_ups",
        }
    }
}

/// "EVENT_TYPE_DEBITED" of the wallet → "wallet.debited".
fn type_name(source: Source, enum_name: &str) -> String {
    format!("{}.{}", source.name(), enum_name.trim_start_matches("EVENT_TYPE_").to_lowercase())
}

/// Every event type an endpoint can ask for.
pub fn event_types() -> Vec<String> {
    let mut names = Vec::new();
    for value in 1..64 {
        if let Ok(kind) = wallet_pb::EventType::try_from(value) {
            names.push(type_name(Source::Wallet, kind.as_str_name()));
        }
        if let Ok(kind) = payments_pb::EventType::try_from(value) {
            names.push(type_name(Source::Payments, kind.as_str_name()));
        }
        if let Ok(kind) = invoicing_pb::EventType::try_from(value) {
            names.push(type_name(Source::Invoices, kind.as_str_name()));
        }
        if let Ok(kind) = pb::EventType::try_from(value) {
            names.push(type_name(Source::TopUps, kind.as_str_name()));
        }
    }
    names.sort();
    names
}

fn rfc3339(at: DateTime<Utc>) -> String {
    at.to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
}

fn message(
    source: Source,
    sequence: u64,
    account_id: String,
    enum_name: &str,
    occurred_at: DateTime<Utc>,
    data: serde_json::Value,
) -> WebhookMessage {
    let id = Uuid::now_v7();
    let event_type = type_name(source, enum_name);
    let body = json!({
        "id": id.to_string(),
        "type": event_type,
        // The payload's fields as Standard Webhooks recommends them (type,
        // timestamp, data), with the event's id and account beside them.
        "timestamp": rfc3339(occurred_at),
        "created_at": rfc3339(occurred_at),
        "account_id": account_id,
        "data": data,
    })
    .to_string();
    WebhookMessage { id, source: source.name(), source_sequence: sequence, account_id, event_type, occurred_at, body }
}

pub fn wallet_message(event: &wallet_pb::Event) -> WebhookMessage {
    let kind = wallet_pb::EventType::try_from(event.r#type).unwrap_or_default();
    let occurred_at = event.occurred_at.as_ref().and_then(from_timestamp).unwrap_or_else(now);
    let data = json!({
        "amount": event.amount,
        "available": event.available,
        "grant_id": event.grant_id,
        "hold_id": event.hold_id,
        "idempotency_key": event.idempotency_key,
        "correlation_id": event.correlation_id,
        "meter_code": event.meter_code,
        "threshold": event.threshold,
        "cap_percent": event.cap_percent,
        "counterparty_account_id": event.counterparty_account_id,
    });
    message(Source::Wallet, event.sequence, event.account_id.clone(), kind.as_str_name(), occurred_at, data)
}

pub fn payments_message(event: &payments_pb::Event) -> WebhookMessage {
    let kind = payments_pb::EventType::try_from(event.r#type).unwrap_or_default();
    let occurred_at = event.occurred_at.as_ref().and_then(from_timestamp).unwrap_or_else(now);
    let data = json!({
        "payment_id": event.payment_id,
        "invoice_id": event.invoice_id,
        "amount": event.amount,
        "currency": event.currency,
        "voucher_id": event.voucher_id,
        "refund_id": event.refund_id,
    });
    message(Source::Payments, event.sequence, event.account_id.clone(), kind.as_str_name(), occurred_at, data)
}

pub fn invoice_message(event: &invoicing_pb::Event) -> WebhookMessage {
    let kind = invoicing_pb::EventType::try_from(event.r#type).unwrap_or_default();
    let invoice_kind = invoicing_pb::InvoiceKind::try_from(event.kind).unwrap_or_default();
    let occurred_at = event.occurred_at.as_ref().and_then(from_timestamp).unwrap_or_else(now);
    let data = json!({
        "invoice_id": event.invoice_id,
        "kind": invoice_kind.as_str_name().trim_start_matches("INVOICE_KIND_"),
        "number": event.number,
        "total": event.total,
        "currency": event.currency,
    });
    message(Source::Invoices, event.sequence, event.account_id.clone(), kind.as_str_name(), occurred_at, data)
}

pub fn top_up_message(event: &StoredEvent) -> WebhookMessage {
    let data = json!({
        "top_up_id": event.top_up_id.map(|id| id.to_string()).unwrap_or_default(),
        "credits": event.credits,
        "reason": event.reason,
    });
    let enum_name = format!("EVENT_TYPE_{}", event.event_type);
    message(Source::TopUps, event.sequence, event.account_id.to_string(), &enum_name, event.occurred_at, data)
}

#[derive(Clone)]
pub struct Webhooks {
    store: Store,
    upstream: Upstream,
    http: reqwest::Client,
    settings: WebhookSettings,
    /// The (tenant, source) streams this replica follows.
    following: Arc<Mutex<HashSet<(TenantId, Source)>>>,
    stopping: watch::Receiver<bool>,
}

impl Webhooks {
    pub fn new(
        store: Store,
        upstream: Upstream,
        settings: WebhookSettings,
        stopping: watch::Receiver<bool>,
    ) -> Result<Self, OrchestratorError> {
        let mut http = reqwest::Client::builder()
            .timeout(Duration::from_millis(settings.timeout_ms))
            .redirect(reqwest::redirect::Policy::none())
            .user_agent("Reservoir-Webhooks/1");
        if !settings.allow_private_destinations {
            http = http.dns_resolver(Arc::new(crate::clients::destination::PublicOnly));
        }
        let http =
            http.build().map_err(|error| OrchestratorError::internal(format!("the webhook HTTP client: {error}")))?;
        Ok(Self { store, upstream, http, settings, following: Arc::default(), stopping })
    }

    /// One pass: a follower for every stream of every tenant with an
    /// endpoint, then an attempt at every delivery due.
    pub async fn pass(&self) -> Result<(), OrchestratorError> {
        for tenant in self.store.tenants_with_webhooks().await? {
            for source in Source::ALL {
                self.follow(tenant, source);
            }
        }
        self.deliver_due().await
    }

    fn follow(&self, tenant: TenantId, source: Source) {
        let fresh = self.following.lock().is_ok_and(|mut following| following.insert((tenant, source)));
        if !fresh {
            return;
        }
        let webhooks = self.clone();
        tokio::spawn(async move {
            let mut stopping = webhooks.stopping.clone();
            while !*stopping.borrow() {
                if let Err(error) = webhooks.follow_once(tenant, source).await {
                    tracing::warn!(%error, %tenant, source = source.name(), "webhook event stream broke; again");
                }
                tokio::select! {
                    () = tokio::time::sleep(RECONNECT) => {}
                    _ = stopping.changed() => {}
                }
            }
        });
    }

    async fn follow_once(&self, tenant: TenantId, source: Source) -> Result<(), OrchestratorError> {
        let after = self.store.cursor(tenant, source.cursor()).await?;
        let unavailable = |status: tonic::Status| OrchestratorError::Unavailable(status.to_string());
        match source {
            Source::Wallet => {
                let request = wallet_pb::WatchEventsRequest { after_sequence: after, consumer: "webhooks".into() };
                let request = self.upstream.service_request(request, tenant)?;
                let stream = self.upstream.wallet().watch_events(request).await.map_err(unavailable)?.into_inner();
                let messages = stream.map(|next| next.map(|response| response.event.as_ref().map(wallet_message)));
                self.keep_all(tenant, source, messages).await
            }
            Source::Payments => {
                let request = payments_pb::WatchEventsRequest { after_sequence: after };
                let request = self.upstream.service_request(request, tenant)?;
                let stream = self.upstream.payments().watch_events(request).await.map_err(unavailable)?.into_inner();
                let messages = stream.map(|next| next.map(|response| response.event.as_ref().map(payments_message)));
                self.keep_all(tenant, source, messages).await
            }
            Source::Invoices => {
                let request = invoicing_pb::WatchEventsRequest { after_sequence: after };
                let request = self.upstream.service_request(request, tenant)?;
                let stream = self.upstream.invoicing().watch_events(request).await.map_err(unavailable)?.into_inner();
                let messages = stream.map(|next| next.map(|response| response.event.as_ref().map(invoice_message)));
                self.keep_all(tenant, source, messages).await
            }
            Source::TopUps => self.follow_top_ups(tenant, after).await,
        }
    }

    /// Keeps every message of a stream until it ends or the service stops.
    async fn keep_all(
        &self,
        tenant: TenantId,
        source: Source,
        messages: impl Stream<Item = Result<Option<WebhookMessage>, tonic::Status>>,
    ) -> Result<(), OrchestratorError> {
        let mut messages = std::pin::pin!(messages);
        let mut endpoints = Endpoints::default();
        let mut stopping = self.stopping.clone();
        loop {
            let next = tokio::select! {
                next = messages.next() => next,
                _ = stopping.changed() => return Ok(()),
            };
            let Some(next) = next else { return Ok(()) };
            let Some(message) = next.map_err(|status| OrchestratorError::Unavailable(status.to_string()))? else {
                continue;
            };
            if !self.keep(tenant, source, &message, &mut endpoints).await? {
                return Ok(());
            }
        }
    }

    /// The orchestrator's own events are read from its store.
    async fn follow_top_ups(&self, tenant: TenantId, mut after: u64) -> Result<(), OrchestratorError> {
        let mut endpoints = Endpoints::default();
        let mut stopping = self.stopping.clone();
        loop {
            let events = self.store.events_after(tenant, after, EVENT_BATCH).await?;
            for event in &events {
                if !self.keep(tenant, Source::TopUps, &top_up_message(event), &mut endpoints).await? {
                    return Ok(());
                }
                after = event.sequence;
            }
            if events.len() as u64 == EVENT_BATCH {
                continue;
            }
            tokio::select! {
                () = tokio::time::sleep(Duration::from_millis(self.settings.interval_ms)) => {}
                _ = stopping.changed() => return Ok(()),
            }
        }
    }

    /// Keeps a message for the endpoints that want it, once the tenant has
    /// room for its deliveries; `false` when the service stops first (the
    /// message is not kept and the cursor stays before it).
    async fn keep(
        &self,
        tenant: TenantId,
        source: Source,
        message: &WebhookMessage,
        endpoints: &mut Endpoints,
    ) -> Result<bool, OrchestratorError> {
        let wanted = loop {
            let wanted: Vec<Uuid> = endpoints
                .of(&self.store, tenant)
                .await?
                .iter()
                .filter(|endpoint| endpoint.wants(&message.event_type, message.occurred_at))
                .map(|endpoint| endpoint.id)
                .collect();
            if wanted.is_empty() {
                // Nothing to keep: the cursor moves on now and then rather than
                // in a transaction per event, and an event read again after a
                // restart is passed over again.
                endpoints.skipped = Some(message.source_sequence);
                endpoints.skipped_count += 1;
                if endpoints.skipped_count >= CURSOR_SAVE_EVERY {
                    self.store.save_cursor(tenant, source.cursor(), message.source_sequence).await?;
                    endpoints.skipped = None;
                    endpoints.skipped_count = 0;
                }
                return Ok(true);
            }
            match self.room_for(tenant, wanted.len() as u64, endpoints).await? {
                Room::Now => break wanted,
                // Endpoints may have been disabled or changed meanwhile:
                // who wants the message is decided again.
                Room::AfterWaiting => continue,
                Room::Stopping => return Ok(false),
            }
        };
        self.store.keep_webhook_message(tenant, source.cursor(), message, &wanted, now()).await?;
        endpoints.pending += wanted.len() as u64;
        endpoints.skipped = None;
        endpoints.skipped_count = 0;
        metrics::counter!("reservoir_orchestrator_webhook_events_total", "source" => source.name()).increment(1);
        Ok(true)
    }

    /// Waits while `more` deliveries would take the tenant past its
    /// pending limit: the backpressure that keeps a receiver that is down,
    /// or a burst of events, from filling the store and the delivery loop.
    /// The count, over the tenant's endpoints enabled now (a disabled
    /// endpoint's deliveries wait without counting), is read again at most
    /// every [`PENDING_FRESH_FOR`] while there is room, and at every
    /// interval while there is none.
    async fn room_for(
        &self,
        tenant: TenantId,
        more: u64,
        endpoints: &mut Endpoints,
    ) -> Result<Room, OrchestratorError> {
        let limit = self.settings.max_pending_per_tenant;
        let mut stopping = self.stopping.clone();
        let mut waited = false;
        loop {
            let stale = endpoints.pending_at.is_none_or(|at| at.elapsed() >= PENDING_FRESH_FOR);
            if stale || endpoints.pending + more > limit {
                let enabled: Vec<Uuid> = endpoints
                    .of(&self.store, tenant)
                    .await?
                    .iter()
                    .filter(|endpoint| endpoint.enabled)
                    .map(|endpoint| endpoint.id)
                    .collect();
                endpoints.pending = self.store.pending_deliveries(&enabled).await?;
                endpoints.pending_at = Some(Instant::now());
            }
            // One message always fits, however many endpoints want it.
            if endpoints.pending + more <= limit || endpoints.pending == 0 {
                return Ok(if waited { Room::AfterWaiting } else { Room::Now });
            }
            if !waited {
                waited = true;
                metrics::counter!("reservoir_orchestrator_webhook_backpressure_total").increment(1);
                tracing::info!(
                    pending = endpoints.pending,
                    limit,
                    "webhook deliveries at the tenant's limit: reading events waits"
                );
            }
            tokio::select! {
                () = tokio::time::sleep(Duration::from_millis(self.settings.interval_ms)) => {}
                _ = stopping.changed() => return Ok(Room::Stopping),
            }
            if *stopping.borrow() {
                return Ok(Room::Stopping);
            }
        }
    }

    /// Attempts every delivery that is first in its line and due.
    async fn deliver_due(&self) -> Result<(), OrchestratorError> {
        let now = now();
        let due = self.store.due_deliveries(now, ATTEMPTS_PER_PASS).await?;
        let mut endpoints: HashMap<Uuid, Option<EndpointRow>> = HashMap::new();
        let mut attempts = tokio::task::JoinSet::new();
        for delivery in due {
            // A failure here leaves the delivery for the next pass, and never
            // abandons the attempts already under way.
            match self.claim(&delivery, now, &mut endpoints).await {
                Ok(Some((endpoint, until))) => {
                    let webhooks = self.clone();
                    attempts.spawn(async move {
                        if let Err(error) = webhooks.attempt(&delivery, &endpoint, until).await {
                            tracing::warn!(%error, delivery = %delivery.id, "a webhook attempt could not be recorded");
                        }
                    });
                }
                Ok(None) => {}
                Err(error) => tracing::warn!(%error, delivery = %delivery.id, "a webhook delivery was not claimed"),
            }
        }
        while attempts.join_next().await.is_some() {}
        Ok(())
    }

    /// Takes a delivery for one attempt: its endpoint, and the claim's end.
    async fn claim(
        &self,
        delivery: &DeliveryRow,
        now: DateTime<Utc>,
        endpoints: &mut HashMap<Uuid, Option<EndpointRow>>,
    ) -> Result<Option<(EndpointRow, DateTime<Utc>)>, OrchestratorError> {
        let endpoint = match endpoints.get(&delivery.endpoint_id) {
            Some(endpoint) => endpoint.clone(),
            None => {
                let endpoint = self.store.endpoint(delivery.tenant_id, delivery.endpoint_id).await?;
                endpoints.insert(delivery.endpoint_id, endpoint.clone());
                endpoint
            }
        };
        let Some(endpoint) = endpoint.filter(|endpoint| endpoint.enabled) else { return Ok(None) };
        // Held for the attempt and a margin; a replica that dies mid-attempt frees it then.
        let margin = i64::try_from(self.settings.timeout_ms.saturating_mul(2)).unwrap_or(i64::MAX);
        let until = now + chrono::Duration::milliseconds(margin);
        if !self.store.claim_delivery(delivery, now, until).await? {
            return Ok(None);
        }
        Ok(Some((endpoint, until)))
    }

    async fn attempt(
        &self,
        delivery: &DeliveryRow,
        endpoint: &EndpointRow,
        claimed_until: DateTime<Utc>,
    ) -> Result<(), OrchestratorError> {
        let body = self.store.message_body(delivery.message_id).await?;
        let attempted_at = now();
        let timestamp = attempted_at.timestamp();
        let id = delivery.message_id.to_string();
        let secrets = endpoint.signing_secrets(attempted_at);
        let signature = signature::signature_header(&secrets, &id, timestamp, body.as_bytes());
        let legacy_signature = signature::legacy_signature_header(&secrets, timestamp, body.as_bytes());
        let started = Instant::now();
        // A name is checked by the resolver as the connection is made; an
        // address written in the URL never reaches it, so it is checked here.
        let inward = if self.settings.allow_private_destinations {
            None
        } else {
            crate::clients::destination::literal_refusal(&endpoint.url)
        };
        let sent = match inward {
            Some(refusal) => Err(refusal),
            None => self
                .http
                .post(&endpoint.url)
                .header("content-type", "application/json")
                .header(signature::ID_HEADER, &id)
                .header(signature::TIMESTAMP_HEADER, timestamp.to_string())
                .header(signature::SIGNATURE_HEADER, signature)
                .header(signature::LEGACY_ID_HEADER, &id)
                .header(signature::LEGACY_TIMESTAMP_HEADER, timestamp.to_string())
                .header(signature::LEGACY_SIGNATURE_HEADER, legacy_signature)
                .body(body)
                .send()
                .await
                .map_err(|error| {
                    if error.is_timeout() {
                        "no answer within the timeout".to_owned()
                    } else {
                        format!("could not send: {error}")
                    }
                }),
        };
        // Of an answer only the status is kept: a body could carry what the
        // receiver's network holds, and the attempts are shown to the tenant.
        let (status_code, error) = match sent {
            Ok(response) => {
                let code = response.status();
                (Some(code.as_u16()), if code.is_success() { String::new() } else { format!("HTTP {code}") })
            }
            Err(error) => (None, error),
        };
        let delivered = status_code.is_some_and(|code| (200..300).contains(&code));
        let duration_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
        let finished = now();
        let failed = delivery.attempts + 1;
        let give_up_at = delivery.retry_from + chrono::Duration::hours(i64::from(self.settings.retry_hours));
        let wait = chrono::Duration::from_std(self.settings.backoff(failed)).unwrap_or(chrono::Duration::hours(1));
        // The last attempt comes at the end of the retry period, not a wait before it.
        let (status, next_attempt_at) = if delivered {
            (DeliveryStatus::Succeeded, finished)
        } else if finished >= give_up_at {
            (DeliveryStatus::Failed, finished)
        } else {
            (DeliveryStatus::Pending, (finished + wait).min(give_up_at))
        };
        let result = AttemptResult {
            attempt: AttemptRow {
                id: Uuid::now_v7(),
                delivery_id: delivery.id,
                attempted_at,
                status_code,
                error,
                duration_ms,
            },
            status,
            next_attempt_at,
        };
        let outcome = match status {
            DeliveryStatus::Succeeded => "delivered",
            DeliveryStatus::Pending => "retrying",
            DeliveryStatus::Failed => "given_up",
        };
        metrics::counter!("reservoir_orchestrator_webhook_attempts_total", "outcome" => outcome).increment(1);
        if !self.store.finish_attempt(delivery, claimed_until, &result).await? {
            tracing::warn!(delivery = %delivery.id, "a webhook attempt outlived its claim; another replica retries it");
        }
        Ok(())
    }
}

/// A follower's copy of its tenant's endpoints, read again once stale, and
/// how far it has read past what it saved.
#[derive(Default)]
struct Endpoints {
    rows: Vec<EndpointRow>,
    read_at: Option<Instant>,
    skipped: Option<u64>,
    skipped_count: u32,
    /// The tenant's deliveries waiting, as last counted plus those kept since.
    pending: u64,
    pending_at: Option<Instant>,
}

impl Endpoints {
    async fn of(&mut self, store: &Store, tenant: TenantId) -> Result<&[EndpointRow], OrchestratorError> {
        if self.read_at.is_none_or(|at| at.elapsed() >= ENDPOINTS_FRESH_FOR) {
            self.rows = store.endpoints(tenant).await?;
            self.read_at = Some(Instant::now());
        }
        Ok(&self.rows)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn retries_back_off_exponentially_up_to_the_maximum() {
        let settings = WebhookSettings { retry_base_ms: 1_000, retry_max_ms: 10_000, ..WebhookSettings::default() };
        let waits: Vec<u64> = (1..=6).map(|failed| settings.backoff(failed).as_millis() as u64).collect();
        assert_eq!(waits, vec![1_000, 2_000, 4_000, 8_000, 10_000, 10_000]);
        // With the defaults a delivery is tried for 72 hours: waits of 5 s doubling
        // to 43 minutes in the first 85 minutes, then one an hour: 82 attempts.
        let defaults = WebhookSettings::default();
        let mut waited = Duration::ZERO;
        let mut attempts = 1;
        while waited < Duration::from_secs(72 * 3_600) {
            waited += defaults.backoff(attempts);
            attempts += 1;
        }
        assert_eq!(attempts, 82);
        assert!(defaults.validate().is_ok());
        assert!(WebhookSettings { retry_hours: 23, ..WebhookSettings::default() }.validate().is_err());
    }

    #[test]
    fn event_types_name_their_source() {
        let types = event_types();
        for wanted in [
            "wallet.debited",
            "wallet.spending_cap_alert",
            "payments.payment_succeeded",
            "invoices.invoice_paid",
            "top_ups.top_up_succeeded",
        ] {
            assert!(types.iter().any(|kind| kind == wanted), "{wanted} in {types:?}");
        }
        assert!(!types.iter().any(|kind| kind.ends_with("unspecified")));
    }
}
