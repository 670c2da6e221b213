//! A tenant's webhooks within their limits: endpoints that point inward
//! are refused in production, and waiting deliveries stop at the tenant's
//! limit without losing any.

use std::sync::atomic::Ordering;
use std::time::Duration;

use reservoir_proto::orchestrator as pb;
use reservoir_testing::Backend;

use crate::helpers::*;
use crate::receiver::*;

/// With private destinations not allowed (production), an endpoint on
/// loopback, a private network or the metadata address is refused in every
/// spelling, on creation and on update, and nothing is saved.
#[tokio::test]
async fn endpoints_pointing_inward_are_refused() {
    let Some(suite) = Suite::spawn_with(Backend::Sqlite, false).await else {
        return;
    };
    let mut webhooks = suite.webhooks.clone();
    let request = |url: &str| pb::CreateWebhookEndpointRequest {
        url: url.into(),
        description: String::new(),
        event_types: vec![],
        idempotency_key: key(),
    };
    for url in [
        "http://127.0.0.1:9055/metrics",
        "http://localhost:50051/",
        "http://0x7f000001/",
        "http://2130706433/",
        "http://[::1]:50051/",
        "http://[::ffff:127.0.0.1]/",
        "https://10.0.0.8/hooks",
        "https://192.168.1.1/",
        "https://169.254.169.254/latest/meta-data/",
        "https://[fd00:ec2::254]/",
        "https://0.0.0.0/",
    ] {
        assert_invalid(webhooks.create_webhook_endpoint(request(url)).await, "url");
    }
    let listed = webhooks.list_webhook_endpoints(pb::ListWebhookEndpointsRequest {}).await.unwrap().into_inner();
    assert!(listed.endpoints.is_empty(), "nothing was saved");
    let endpoint = webhooks
        .create_webhook_endpoint(request("https://93.184.216.34/hooks"))
        .await
        .unwrap()
        .into_inner()
        .endpoint
        .unwrap();
    let inward = pb::UpdateWebhookEndpointRequest {
        endpoint_id: endpoint.id.clone(),
        url: Some("http://127.0.0.1/".into()),
        ..Default::default()
    };
    assert_invalid(webhooks.update_webhook_endpoint(inward).await, "url");
    let get = pb::GetWebhookEndpointRequest { endpoint_id: endpoint.id };
    let kept = webhooks.get_webhook_endpoint(get).await.unwrap().into_inner().endpoint.unwrap();
    assert_eq!(kept.url, "https://93.184.216.34/hooks");
    suite.stop().await;
}

/// A tenant's waiting deliveries stop at its limit: with the receiver down,
/// events past the limit are not read, and none is lost: once the receiver
/// is back, every one arrives, in order.
async fn pending_deliveries_stop_at_the_tenant_limit_and_nothing_is_lost(backend: Backend) {
    let webhooks = reservoir_orchestrator::usecases::webhooks::WebhookSettings {
        max_pending_per_tenant: 3,
        ..Suite::quick_webhooks()
    };
    let Some(suite) = Suite::spawn_with_webhooks(backend, webhooks).await else {
        return;
    };
    let (receiver, address) = Receiver::start().await;
    receiver.down.store(true, Ordering::SeqCst);
    let (endpoint, _) = create_endpoint(&suite, address, &["wallet.debited"]).await;
    let account = open_funded_account(&suite.wallet, "100").await;
    for amount in 1..=8 {
        suite.wallet.clone().debit(debit_request_for(&account, &amount.to_string())).await.unwrap();
    }
    let mut listed = Vec::new();
    for _ in 0..100 {
        listed = deliveries(&suite, &endpoint).await;
        if listed.len() == 3 && listed.iter().any(|delivery| delivery.attempts >= 2) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(listed.len(), 3, "three kept, the rest not read yet");
    // Retries go on for a while; nothing more is kept meanwhile.
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(deliveries(&suite, &endpoint).await.len(), 3);
    assert!(receiver.unique().is_empty());

    receiver.down.store(false, Ordering::SeqCst);
    eventually("all eight after the receiver came back", || receiver.unique().len() == 8).await;
    let amounts: Vec<String> =
        receiver.unique().iter().map(|request| request.json["data"]["amount"].as_str().unwrap().to_owned()).collect();
    let expected: Vec<String> = (1..=8).map(|amount| format!("{amount}.00")).collect();
    assert_eq!(amounts, expected);
    let listed = deliveries(&suite, &endpoint).await;
    assert_eq!(listed.len(), 8);
    assert!(listed.iter().all(|delivery| delivery.status == i32::from(pb::DeliveryStatus::Succeeded)));
    suite.stop().await;
}

/// A receiver that stays down holds up the tenant's other endpoints once
/// the limit is reached; disabling it frees them at once.
async fn disabling_a_dead_endpoint_frees_the_tenant_past_its_limit(backend: Backend) {
    let webhooks = reservoir_orchestrator::usecases::webhooks::WebhookSettings {
        max_pending_per_tenant: 4,
        ..Suite::quick_webhooks()
    };
    let Some(suite) = Suite::spawn_with_webhooks(backend, webhooks).await else {
        return;
    };
    let (dead, dead_address) = Receiver::start().await;
    dead.down.store(true, Ordering::SeqCst);
    let (live, live_address) = Receiver::start().await;
    let (dead_endpoint, _) = create_endpoint(&suite, dead_address, &["wallet.debited"]).await;
    create_endpoint(&suite, live_address, &["wallet.debited"]).await;
    let account = open_funded_account(&suite.wallet, "100").await;
    for amount in 1..=8 {
        suite.wallet.clone().debit(debit_request_for(&account, &amount.to_string())).await.unwrap();
    }
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    let held = live.unique().len();
    assert!(held < 8, "the live endpoint waits behind the dead one's deliveries: {held} of 8");

    let disable = pb::UpdateWebhookEndpointRequest {
        endpoint_id: dead_endpoint.id.clone(),
        enabled: Some(false),
        ..Default::default()
    };
    suite.webhooks.clone().update_webhook_endpoint(disable).await.unwrap();
    eventually("all eight at the live endpoint", || live.unique().len() == 8).await;
    let amounts: Vec<String> =
        live.unique().iter().map(|request| request.json["data"]["amount"].as_str().unwrap().to_owned()).collect();
    let expected: Vec<String> = (1..=8).map(|amount| format!("{amount}.00")).collect();
    assert_eq!(amounts, expected);
    assert!(deliveries(&suite, &dead_endpoint).await.len() < 8, "nothing more is kept for the disabled endpoint");
    suite.stop().await;
}

reservoir_testing::each_backend!(
    pending_deliveries_stop_at_the_tenant_limit_and_nothing_is_lost,
    disabling_a_dead_endpoint_frees_the_tenant_past_its_limit,
);
