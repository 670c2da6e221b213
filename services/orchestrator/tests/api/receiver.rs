//! A webhook receiver that runs inside a test, and what the webhook tests
//! share: Standard Webhooks signatures checked, endpoints created and their
//! deliveries listed.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::http::{HeaderMap, StatusCode};
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use hmac::{Hmac, Mac};
use reservoir_proto::orchestrator as pb;
use reservoir_proto::wallet as wallet_pb;
use sha2::Sha256;

use crate::helpers::*;

/// One request as the receiver got it.
#[derive(Debug, Clone)]
pub struct Received {
    pub id: String,
    pub timestamp: String,
    pub signatures: Vec<String>,
    /// What the deprecated `reservoir-webhook-*` headers carried.
    pub legacy: (String, String, Vec<String>),
    pub body: String,
    pub json: serde_json::Value,
}

#[derive(Clone, Default)]
pub struct Receiver {
    pub requests: Arc<Mutex<Vec<Received>>>,
    /// While set, every request is answered 503.
    pub down: Arc<AtomicBool>,
}

impl Receiver {
    pub async fn start() -> (Self, SocketAddr) {
        let receiver = Self::default();
        let state = receiver.clone();
        let app = axum::Router::new().route(
            "/hooks",
            axum::routing::post(move |headers: HeaderMap, body: String| {
                let state = state.clone();
                async move {
                    if state.down.load(Ordering::SeqCst) {
                        return StatusCode::SERVICE_UNAVAILABLE;
                    }
                    let header = |name: &str| {
                        headers.get(name).and_then(|value| value.to_str().ok()).unwrap_or_default().to_owned()
                    };
                    let signatures = |name: &str| {
                        header(name)
                            .split(' ')
                            .filter_map(|part| part.strip_prefix("v1,").map(str::to_owned))
                            .collect::<Vec<_>>()
                    };
                    let received = Received {
                        id: header("webhook-id"),
                        timestamp: header("webhook-timestamp"),
                        signatures: signatures("webhook-signature"),
                        legacy: (
                            header("reservoir-webhook-id"),
                            header("reservoir-webhook-timestamp"),
                            signatures("reservoir-webhook-signature"),
                        ),
                        json: serde_json::from_str(&body).unwrap_or_default(),
                        body,
                    };
                    state.requests.lock().unwrap().push(received);
                    StatusCode::NO_CONTENT
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        (receiver, address)
    }

    /// What arrived, each id once, in arrival order.
    pub fn unique(&self) -> Vec<Received> {
        let mut seen = HashSet::new();
        self.requests.lock().unwrap().iter().filter(|request| seen.insert(request.id.clone())).cloned().collect()
    }

    pub fn of_account(&self, account: &wallet_pb::Account) -> Vec<Received> {
        self.unique().into_iter().filter(|request| request.json["account_id"] == account.id.as_str()).collect()
    }
}

/// Signed as Standard Webhooks defines it: base64 HMAC-SHA256, keyed by the
/// base64 after `whsec_`, of `<id>.<timestamp>.<body>`.
pub fn signed_by(request: &Received, secret: &str) -> bool {
    let key = STANDARD.decode(secret.strip_prefix("whsec_").unwrap()).unwrap();
    let mut mac = Hmac::<Sha256>::new_from_slice(&key).unwrap();
    mac.update(format!("{}.{}.{}", request.id, request.timestamp, request.body).as_bytes());
    let expected = STANDARD.encode(mac.finalize().into_bytes());
    request.signatures.contains(&expected)
}

/// Signed as 0.1 did, in the deprecated headers: hex HMAC-SHA256 keyed by
/// the secret's text, of `<timestamp>.<body>`.
pub fn legacy_signed_by(request: &Received, secret: &str) -> bool {
    let (id, timestamp, signatures) = &request.legacy;
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).unwrap();
    mac.update(format!("{timestamp}.{}", request.body).as_bytes());
    *id == request.id
        && *timestamp == request.timestamp
        && signatures.contains(&hex::encode(mac.finalize().into_bytes()))
}

pub async fn eventually(what: &str, mut check: impl FnMut() -> bool) {
    for _ in 0..200 {
        if check() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("{what} did not happen within 10 s");
}

pub async fn create_endpoint(suite: &Suite, address: SocketAddr, types: &[&str]) -> (pb::WebhookEndpoint, String) {
    let response = suite
        .webhooks
        .clone()
        .create_webhook_endpoint(pb::CreateWebhookEndpointRequest {
            url: format!("http://{address}/hooks"),
            description: "the test's receiver".into(),
            event_types: types.iter().map(|kind| (*kind).to_owned()).collect(),
            idempotency_key: key(),
        })
        .await
        .unwrap()
        .into_inner();
    // An endpoint gets the events from a second after its creation on.
    tokio::time::sleep(reservoir_orchestrator::domain::ENDPOINTS_FRESH_FOR + Duration::from_millis(100)).await;
    (response.endpoint.unwrap(), response.secret)
}

pub async fn deliveries(suite: &Suite, endpoint: &pb::WebhookEndpoint) -> Vec<pb::WebhookDelivery> {
    suite
        .webhooks
        .clone()
        .list_webhook_deliveries(pb::ListWebhookDeliveriesRequest {
            endpoint_id: endpoint.id.clone(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .deliveries
}

pub fn debit_request_for(account: &wallet_pb::Account, amount: &str) -> wallet_pb::DebitRequest {
    wallet_pb::DebitRequest {
        account_id: account.id.clone(),
        amount: amount.into(),
        idempotency_key: key(),
        ..Default::default()
    }
}
