//! gRPC handlers of the webhook service: endpoints, their secrets, and the
//! deliveries and attempts made to them.

use reservoir_common::auth::{TenantId, tenant_of};
use reservoir_common::paging::Page;
use reservoir_common::time::to_timestamp;
use reservoir_common::validate::Violations;
use reservoir_proto::orchestrator as pb;
use reservoir_proto::orchestrator::webhook_service_server::WebhookService;
use tonic::{Request, Response, Status};
use uuid::Uuid;

use crate::domain::signature::new_secret;
use crate::error::OrchestratorError;
use crate::store::{DeliveryRow, DeliveryStatus, EndpointRow, Store};
use crate::usecases::webhooks::event_types;
use reservoir_common::time::now;

const URL_LENGTH_MAX: usize = 2_048;
const DESCRIPTION_LENGTH_MAX: usize = 512;
/// A week: long enough to redeploy every receiver, short enough that a leaked secret dies.
const GRACE_SECONDS_MAX: u32 = 7 * 24 * 3_600;
const GRACE_SECONDS_DEFAULT: u32 = 24 * 3_600;

/// Endpoints one tenant may have: each event fans out to all of them.
pub const ENDPOINTS_MAX: usize = 16;

#[derive(Clone)]
pub struct WebhookApi {
    store: Store,
    allow_http: bool,
    allow_private_destinations: bool,
}

impl WebhookApi {
    pub fn new(store: Store, settings: &crate::usecases::webhooks::WebhookSettings) -> Self {
        Self { store, allow_http: settings.allow_http, allow_private_destinations: settings.allow_private_destinations }
    }

    /// Refuses a URL that points inward, unless private destinations are allowed.
    async fn check_destination(&self, violations: &mut Violations, field: &str, url: &str) {
        if self.allow_private_destinations || !violations.is_empty() {
            return;
        }
        if let Ok(parsed) = reqwest::Url::parse(url)
            && let Err(refusal) = crate::clients::destination::check(&parsed).await
        {
            violations.add(field, refusal);
        }
    }

    fn check_url(&self, violations: &mut Violations, field: &str, url: &str) {
        violations.required_text(field, url, URL_LENGTH_MAX);
        let scheme_ok = url.starts_with("https://") || (self.allow_http && url.starts_with("http://"));
        if !url.is_empty() && !scheme_ok {
            let wanted = if self.allow_http { "an http or https URL" } else { "an https URL" };
            violations.add(field, format!("must be {wanted}"));
        } else if !url.is_empty() && reqwest::Url::parse(url).is_err() {
            violations.add(field, "is not a valid URL");
        }
    }

    fn check_types(violations: &mut Violations, field: &str, types: &[String]) {
        let known = event_types();
        for (index, kind) in types.iter().enumerate() {
            if !known.contains(kind) {
                violations.add(format!("{field}[{index}]"), "is not an event type (see ListWebhookEventTypes)");
            }
        }
    }

    async fn endpoint_of(&self, tenant: TenantId, id: &str, field: &str) -> Result<EndpointRow, OrchestratorError> {
        let mut violations = Violations::default();
        let id = violations.id(field, id, |id| id);
        violations.finish()?;
        let id = id.unwrap_or(Uuid::nil());
        self.store.endpoint(tenant, id).await?.ok_or(OrchestratorError::NotFound("webhook endpoint"))
    }

    async fn delivery_of(&self, tenant: TenantId, id: &str) -> Result<DeliveryRow, OrchestratorError> {
        let mut violations = Violations::default();
        let id = violations.id("delivery_id", id, |id| id);
        violations.finish()?;
        let id = id.unwrap_or(Uuid::nil());
        self.store.delivery(tenant, id).await?.ok_or(OrchestratorError::NotFound("webhook delivery"))
    }
}

fn endpoint_to_pb(row: &EndpointRow) -> pb::WebhookEndpoint {
    pb::WebhookEndpoint {
        id: row.id.to_string(),
        url: row.url.clone(),
        description: row.description.clone(),
        event_types: row.event_types.clone(),
        enabled: row.enabled,
        created_at: Some(to_timestamp(row.created_at)),
        updated_at: Some(to_timestamp(row.updated_at)),
        previous_secret_expires_at: row.previous_secret_expires_at.map(to_timestamp),
    }
}

fn status_to_pb(status: DeliveryStatus) -> pb::DeliveryStatus {
    match status {
        DeliveryStatus::Pending => pb::DeliveryStatus::Pending,
        DeliveryStatus::Succeeded => pb::DeliveryStatus::Succeeded,
        DeliveryStatus::Failed => pb::DeliveryStatus::Failed,
    }
}

fn delivery_to_pb(row: &DeliveryRow, body: String) -> pb::WebhookDelivery {
    pb::WebhookDelivery {
        id: row.id.to_string(),
        endpoint_id: row.endpoint_id.to_string(),
        event_id: row.message_id.to_string(),
        event_type: row.event_type.clone(),
        account_id: row.account_id.clone(),
        status: status_to_pb(row.status).into(),
        attempts: row.attempts,
        next_attempt_at: Some(to_timestamp(row.next_attempt_at)),
        last_status_code: row.last_status_code.map_or(0, u32::from),
        last_error: row.last_error.clone(),
        created_at: Some(to_timestamp(row.created_at)),
        updated_at: Some(to_timestamp(row.updated_at)),
        body,
    }
}

#[tonic::async_trait]
impl WebhookService for WebhookApi {
    async fn create_webhook_endpoint(
        &self,
        request: Request<pb::CreateWebhookEndpointRequest>,
    ) -> Result<Response<pb::CreateWebhookEndpointResponse>, Status> {
        let tenant = tenant_of(&request)?;
        let request = request.into_inner();
        let mut violations = Violations::default();
        self.check_url(&mut violations, "url", &request.url);
        violations.text("description", &request.description, DESCRIPTION_LENGTH_MAX);
        Self::check_types(&mut violations, "event_types", &request.event_types);
        violations.idempotency_key("idempotency_key", &request.idempotency_key);
        self.check_destination(&mut violations, "url", &request.url).await;
        violations.finish()?;
        let existing = self.store.endpoints(tenant).await?;
        let retried = existing.iter().any(|endpoint| endpoint.idempotency_key == request.idempotency_key);
        if !retried && existing.len() >= ENDPOINTS_MAX {
            return Err(OrchestratorError::Precondition {
                reason: "ENDPOINT_LIMIT_REACHED".into(),
                message: format!("a tenant has at most {ENDPOINTS_MAX} webhook endpoints; delete one first"),
            }
            .into());
        }
        let now = now();
        let row = EndpointRow {
            id: Uuid::now_v7(),
            tenant_id: tenant,
            url: request.url,
            description: request.description,
            event_types: request.event_types,
            secret: new_secret(),
            previous_secrets: Vec::new(),
            previous_secret_expires_at: None,
            enabled: true,
            idempotency_key: request.idempotency_key,
            created_at: now,
            updated_at: now,
        };
        let stored = self.store.create_endpoint(&row).await?;
        let same =
            stored.url == row.url && stored.event_types == row.event_types && stored.description == row.description;
        if !same {
            return Err(OrchestratorError::IdempotencyKeyReused.into());
        }
        Ok(Response::new(pb::CreateWebhookEndpointResponse {
            endpoint: Some(endpoint_to_pb(&stored)),
            secret: stored.secret,
        }))
    }

    async fn get_webhook_endpoint(
        &self,
        request: Request<pb::GetWebhookEndpointRequest>,
    ) -> Result<Response<pb::GetWebhookEndpointResponse>, Status> {
        let tenant = tenant_of(&request)?;
        let row = self.endpoint_of(tenant, &request.get_ref().endpoint_id, "endpoint_id").await?;
        Ok(Response::new(pb::GetWebhookEndpointResponse { endpoint: Some(endpoint_to_pb(&row)) }))
    }

    async fn list_webhook_endpoints(
        &self,
        request: Request<pb::ListWebhookEndpointsRequest>,
    ) -> Result<Response<pb::ListWebhookEndpointsResponse>, Status> {
        let tenant = tenant_of(&request)?;
        let rows = self.store.endpoints(tenant).await?;
        Ok(Response::new(pb::ListWebhookEndpointsResponse { endpoints: rows.iter().map(endpoint_to_pb).collect() }))
    }

    async fn update_webhook_endpoint(
        &self,
        request: Request<pb::UpdateWebhookEndpointRequest>,
    ) -> Result<Response<pb::UpdateWebhookEndpointResponse>, Status> {
        let tenant = tenant_of(&request)?;
        let request = request.into_inner();
        let mut row = self.endpoint_of(tenant, &request.endpoint_id, "endpoint_id").await?;
        let mut violations = Violations::default();
        if let Some(url) = &request.url {
            self.check_url(&mut violations, "url", url);
            self.check_destination(&mut violations, "url", url).await;
        }
        if let Some(description) = &request.description {
            violations.text("description", description, DESCRIPTION_LENGTH_MAX);
        }
        if request.set_event_types {
            Self::check_types(&mut violations, "event_types", &request.event_types);
        } else if !request.event_types.is_empty() {
            violations.add("event_types", "is given with set_event_types");
        }
        violations.finish()?;
        if let Some(url) = request.url {
            row.url = url;
        }
        if let Some(description) = request.description {
            row.description = description;
        }
        if request.set_event_types {
            row.event_types = request.event_types;
        }
        if let Some(enabled) = request.enabled {
            row.enabled = enabled;
        }
        row.updated_at = now();
        self.store.save_endpoint_settings(&row).await?;
        Ok(Response::new(pb::UpdateWebhookEndpointResponse { endpoint: Some(endpoint_to_pb(&row)) }))
    }

    async fn rotate_webhook_secret(
        &self,
        request: Request<pb::RotateWebhookSecretRequest>,
    ) -> Result<Response<pb::RotateWebhookSecretResponse>, Status> {
        let tenant = tenant_of(&request)?;
        let request = request.into_inner();
        let mut row = self.endpoint_of(tenant, &request.endpoint_id, "endpoint_id").await?;
        let grace = request.grace_seconds.unwrap_or(GRACE_SECONDS_DEFAULT);
        if grace > GRACE_SECONDS_MAX {
            return Err(
                OrchestratorError::field("grace_seconds", format!("must be at most {GRACE_SECONDS_MAX}")).into()
            );
        }
        let now = now();
        let old = std::mem::replace(&mut row.secret, new_secret());
        // Every secret still in its grace period keeps signing: a second
        // rotation does not cut short the first one's. A grace of 0 stops
        // them all at once, for a secret that leaked.
        row.previous_secrets.retain(|(_, until)| *until > now && grace > 0);
        if grace > 0 {
            row.previous_secrets.insert(0, (old.clone(), now + chrono::Duration::seconds(i64::from(grace))));
        }
        row.previous_secret_expires_at = row.previous_secrets.iter().map(|(_, until)| *until).max();
        row.updated_at = now;
        if !self.store.rotate_secret(&row, &old).await? {
            return Err(OrchestratorError::Conflict("the secret was rotated concurrently".into()).into());
        }
        Ok(Response::new(pb::RotateWebhookSecretResponse {
            endpoint: Some(endpoint_to_pb(&row)),
            secret: row.secret.clone(),
        }))
    }

    async fn list_webhook_deliveries(
        &self,
        request: Request<pb::ListWebhookDeliveriesRequest>,
    ) -> Result<Response<pb::ListWebhookDeliveriesResponse>, Status> {
        let tenant = tenant_of(&request)?;
        let request = request.into_inner();
        let endpoint = self.endpoint_of(tenant, &request.endpoint_id, "endpoint_id").await?;
        let mut violations = Violations::default();
        let status = match pb::DeliveryStatus::try_from(request.status) {
            Ok(pb::DeliveryStatus::Unspecified) => None,
            Ok(pb::DeliveryStatus::Pending) => Some(DeliveryStatus::Pending),
            Ok(pb::DeliveryStatus::Succeeded) => Some(DeliveryStatus::Succeeded),
            Ok(pb::DeliveryStatus::Failed) => Some(DeliveryStatus::Failed),
            Err(_) => {
                violations.add("status", "is not a delivery status");
                None
            }
        };
        let page = Page::<Uuid>::of(
            &mut violations,
            request.page_size,
            &request.page_token,
            &(&request.endpoint_id, request.status),
        );
        violations.finish()?;
        let rows = self.store.deliveries_page(tenant, endpoint.id, status, page.after, page.rows_to_read()).await?;
        let (rows, next_page_token) = page.finish(rows, |row| row.id);
        // The page's bodies in one query, not one per delivery.
        let ids: Vec<Uuid> = rows.iter().map(|row| row.message_id).collect();
        let mut bodies = self.store.message_bodies(&ids).await?;
        let deliveries =
            rows.iter().map(|row| delivery_to_pb(row, bodies.remove(&row.message_id).unwrap_or_default())).collect();
        Ok(Response::new(pb::ListWebhookDeliveriesResponse { deliveries, next_page_token }))
    }

    async fn list_webhook_attempts(
        &self,
        request: Request<pb::ListWebhookAttemptsRequest>,
    ) -> Result<Response<pb::ListWebhookAttemptsResponse>, Status> {
        let tenant = tenant_of(&request)?;
        let delivery = self.delivery_of(tenant, &request.get_ref().delivery_id).await?;
        let rows = self.store.attempts(tenant, delivery.id).await?;
        let attempts = rows
            .iter()
            .map(|row| pb::WebhookAttempt {
                id: row.id.to_string(),
                delivery_id: row.delivery_id.to_string(),
                attempted_at: Some(to_timestamp(row.attempted_at)),
                status_code: row.status_code.map_or(0, u32::from),
                error: row.error.clone(),
                duration_ms: row.duration_ms,
            })
            .collect();
        Ok(Response::new(pb::ListWebhookAttemptsResponse { attempts }))
    }

    async fn replay_webhook_delivery(
        &self,
        request: Request<pb::ReplayWebhookDeliveryRequest>,
    ) -> Result<Response<pb::ReplayWebhookDeliveryResponse>, Status> {
        let tenant = tenant_of(&request)?;
        let delivery = self.delivery_of(tenant, &request.get_ref().delivery_id).await?;
        self.store.replay_delivery(tenant, delivery.id, now()).await?;
        let row = self.delivery_of(tenant, &delivery.id.to_string()).await?;
        let body = self.store.message_body(row.message_id).await?;
        Ok(Response::new(pb::ReplayWebhookDeliveryResponse { delivery: Some(delivery_to_pb(&row, body)) }))
    }

    async fn list_webhook_event_types(
        &self,
        _request: Request<pb::ListWebhookEventTypesRequest>,
    ) -> Result<Response<pb::ListWebhookEventTypesResponse>, Status> {
        Ok(Response::new(pb::ListWebhookEventTypesResponse { event_types: event_types() }))
    }
}
