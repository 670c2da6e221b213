//! Attempts at deliveries: each is claimed, signed and sent, and its
//! outcome recorded with when the next attempt is due.

use std::collections::HashMap;
use std::time::Instant;

use chrono::{DateTime, Utc};
use reservoir_common::time::now;
use uuid::Uuid;

use super::Webhooks;
use crate::domain::signature;
use crate::error::OrchestratorError;
use crate::store::{AttemptResult, AttemptRow, DeliveryRow, DeliveryStatus, EndpointRow};

/// Attempts one pass makes at most.
const ATTEMPTS_PER_PASS: u64 = 100;

impl Webhooks {
    /// Attempts every delivery that is first in its line and due.
    pub(super) async fn deliver_due(&self) -> Result<(), OrchestratorError> {
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
