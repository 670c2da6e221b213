//! Following a tenant's event streams, each from its own cursor: a message
//! is kept, with a delivery for every endpoint that wants it, once the
//! tenant has room for its deliveries.

use std::time::{Duration, Instant};

use futures::Stream;
use reservoir_common::auth::TenantId;
use reservoir_common::time::now;
use reservoir_proto::invoicing as invoicing_pb;
use reservoir_proto::payments as payments_pb;
use reservoir_proto::wallet as wallet_pb;
use tokio_stream::StreamExt;
use uuid::Uuid;

use super::messages::{invoice_message, payments_message, top_up_message, wallet_message};
use super::{Source, Webhooks};
use crate::domain::ENDPOINTS_FRESH_FOR;
use crate::error::OrchestratorError;
use crate::store::{EndpointRow, Store, WebhookMessage};

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

impl Webhooks {
    pub(super) fn follow(&self, tenant: TenantId, source: Source) {
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
