//! Webhooks to a receiver that runs inside the test: every event arrives
//! once by id, signed, in order per account, and after the receiver was
//! down for a while; secrets rotate without a gap; deliveries and their
//! attempts can be listed and replayed.

use std::sync::atomic::Ordering;
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use reservoir_proto::orchestrator as pb;
use reservoir_proto::payments as payments_pb;
use reservoir_proto::wallet as wallet_pb;
use tokio_stream::StreamExt;
use tonic::Code;

use crate::helpers::*;
use crate::receiver::*;

/// The wallet's own record of an account's events, as types like "wallet.debited".
async fn wallet_event_types(suite: &Suite, account: &wallet_pb::Account, count: usize) -> Vec<String> {
    let mut stream = suite
        .wallet
        .clone()
        .watch_events(wallet_pb::WatchEventsRequest { after_sequence: 0, ..Default::default() })
        .await
        .unwrap()
        .into_inner();
    let mut types = Vec::new();
    while types.len() < count {
        match tokio::time::timeout(Duration::from_secs(2), stream.next()).await {
            Ok(Some(Ok(response))) => {
                let event = response.event.unwrap();
                if event.account_id == account.id {
                    let name = wallet_pb::EventType::try_from(event.r#type).unwrap().as_str_name();
                    types.push(format!("wallet.{}", name.trim_start_matches("EVENT_TYPE_").to_lowercase()));
                }
            }
            _ => break,
        }
    }
    types
}

async fn a_receiver_gets_every_event_once_by_id_signed_and_in_order(suite: Suite) -> Suite {
    let (receiver, address) = Receiver::start().await;
    let (endpoint, secret) = create_endpoint(&suite, address, &[]).await;
    assert!(secret.starts_with("whsec_"));
    let account = open_funded_account(&suite.wallet, "100").await;
    for amount in ["1", "2", "3", "4", "5"] {
        suite.wallet.clone().debit(debit_request_for(&account, amount)).await.unwrap();
    }
    // A top-up by card: the payment's and the top-up's events come too.
    let card = add_card(&suite, &account).await;
    let started = suite
        .top_ups
        .clone()
        .start_top_up(pb::StartTopUpRequest {
            account_id: account.id.clone(),
            credits: "10".into(),
            payment_method_id: card,
            idempotency_key: key(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .top_up
        .unwrap();
    assert_eq!(started.status, i32::from(pb::TopUpStatus::Succeeded));
    eventually("the top-up's event", || {
        receiver.of_account(&account).iter().any(|request| request.json["type"] == "top_ups.top_up_succeeded")
    })
    .await;
    let expected = wallet_event_types(&suite, &account, 10).await;
    eventually("every wallet event", || {
        receiver
            .of_account(&account)
            .iter()
            .filter(|request| request.json["type"].as_str().unwrap().starts_with("wallet."))
            .count()
            == expected.len()
    })
    .await;
    let got = receiver.of_account(&account);
    let wallet_types: Vec<String> = got
        .iter()
        .filter_map(|request| {
            request.json["type"].as_str().filter(|kind| kind.starts_with("wallet.")).map(str::to_owned)
        })
        .collect();
    assert_eq!(wallet_types, expected, "the wallet's events, each once, in order");
    assert!(got.iter().any(|request| request.json["type"] == "payments.payment_succeeded"));
    // The top-up's invoice, as invoicing tells it: created, finalized, paid.
    eventually("the invoice's events", || {
        receiver.of_account(&account).iter().any(|request| request.json["type"] == "invoices.invoice_paid")
    })
    .await;
    let invoice_types: Vec<String> = receiver
        .of_account(&account)
        .iter()
        .filter_map(|request| {
            request.json["type"].as_str().filter(|kind| kind.starts_with("invoices.")).map(str::to_owned)
        })
        .collect();
    assert_eq!(invoice_types, vec!["invoices.invoice_created", "invoices.invoice_finalized", "invoices.invoice_paid"]);
    let paid = receiver
        .of_account(&account)
        .into_iter()
        .find(|request| request.json["type"] == "invoices.invoice_paid")
        .unwrap();
    assert_eq!(paid.json["data"]["invoice_id"], started.invoice_id.as_str());
    let debits: Vec<&str> = got
        .iter()
        .filter(|request| request.json["type"] == "wallet.debited")
        .map(|request| request.json["data"]["amount"].as_str().unwrap())
        .collect();
    assert_eq!(debits, vec!["1.00", "2.00", "3.00", "4.00", "5.00"]);
    for request in &got {
        assert!(signed_by(request, &secret), "signed with the endpoint's secret: {request:?}");
        assert!(legacy_signed_by(request, &secret), "and in the headers of 0.1: {request:?}");
        let key = STANDARD.decode(secret.strip_prefix("whsec_").unwrap()).unwrap();
        assert_eq!(key.len(), 32, "a secret is whsec_ and the base64 of 32 bytes: {secret}");
        assert_eq!(request.json["id"], request.id.as_str(), "the header names the body's id");
    }
    let all = receiver.requests.lock().unwrap().len();
    assert_eq!(all, receiver.unique().len(), "nothing was sent twice");
    let listed = deliveries(&suite, &endpoint).await;
    assert_eq!(listed.len(), receiver.unique().len());
    assert!(listed.iter().all(|delivery| delivery.status == i32::from(pb::DeliveryStatus::Succeeded)));
    suite
}

async fn deliveries_wait_out_a_receiver_that_is_down_and_keep_their_order(suite: Suite) -> Suite {
    let (receiver, address) = Receiver::start().await;
    receiver.down.store(true, Ordering::SeqCst);
    let (endpoint, secret) = create_endpoint(&suite, address, &["wallet.debited"]).await;
    let account = open_funded_account(&suite.wallet, "100").await;
    for amount in ["1", "2", "3"] {
        suite.wallet.clone().debit(debit_request_for(&account, amount)).await.unwrap();
    }
    // The first is retried with backoff; the ones behind it wait their turn.
    let mut listed = Vec::new();
    for _ in 0..100 {
        listed = deliveries(&suite, &endpoint).await;
        if listed.len() == 3 && listed.iter().any(|delivery| delivery.attempts >= 3) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(listed.len(), 3);
    let attempted: Vec<u32> = listed.iter().rev().map(|delivery| delivery.attempts).collect();
    assert!(attempted[0] >= 3 && attempted[1] == 0 && attempted[2] == 0, "{attempted:?}");
    assert_eq!(listed.last().unwrap().last_status_code, 503);
    assert!(receiver.unique().is_empty());

    receiver.down.store(false, Ordering::SeqCst);
    eventually("all three after the receiver came back", || receiver.unique().len() == 3).await;
    let amounts: Vec<String> =
        receiver.unique().iter().map(|request| request.json["data"]["amount"].as_str().unwrap().to_owned()).collect();
    assert_eq!(amounts, vec!["1.00", "2.00", "3.00"]);
    assert!(receiver.unique().iter().all(|request| signed_by(request, &secret)));
    let first = deliveries(&suite, &endpoint).await.pop().unwrap();
    let attempts = suite
        .webhooks
        .clone()
        .list_webhook_attempts(pb::ListWebhookAttemptsRequest { delivery_id: first.id.clone() })
        .await
        .unwrap()
        .into_inner()
        .attempts;
    let codes: Vec<u32> = attempts.iter().map(|attempt| attempt.status_code).collect();
    assert!(codes.len() >= 4 && codes[..codes.len() - 1].iter().all(|code| *code == 503), "{codes:?}");
    // A failed attempt keeps the status line only, never the receiver's answer.
    assert!(attempts[..attempts.len() - 1].iter().all(|attempt| attempt.error == "HTTP 503 Service Unavailable"));
    assert_eq!(codes.last(), Some(&204));

    // A replay sends the same event, with the same id, once more.
    let replayed = suite
        .webhooks
        .clone()
        .replay_webhook_delivery(pb::ReplayWebhookDeliveryRequest { delivery_id: first.id.clone() })
        .await
        .unwrap()
        .into_inner()
        .delivery
        .unwrap();
    assert_eq!(replayed.status, i32::from(pb::DeliveryStatus::Pending));
    eventually("the replay", || receiver.requests.lock().unwrap().len() == 4).await;
    let last = receiver.requests.lock().unwrap().last().cloned().unwrap();
    assert_eq!(last.id, first.event_id);
    assert_eq!(receiver.unique().len(), 3, "a receiver deduplicating by id sees nothing new");
    suite
}

async fn a_rotated_secret_signs_beside_the_old_one_until_its_grace_ends(suite: Suite) -> Suite {
    let (receiver, address) = Receiver::start().await;
    let (endpoint, old) = create_endpoint(&suite, address, &["wallet.debited"]).await;
    let account = open_funded_account(&suite.wallet, "100").await;
    let rotate = |grace: u32| {
        let mut webhooks = suite.webhooks.clone();
        let id = endpoint.id.clone();
        async move {
            let request = pb::RotateWebhookSecretRequest { endpoint_id: id, grace_seconds: Some(grace) };
            webhooks.rotate_webhook_secret(request).await.unwrap().into_inner().secret
        }
    };
    let new = rotate(3_600).await;
    assert_ne!(new, old);
    suite.wallet.clone().debit(debit_request_for(&account, "1")).await.unwrap();
    eventually("the first debit", || receiver.unique().len() == 1).await;
    let during = receiver.unique()[0].clone();
    assert!(signed_by(&during, &new) && signed_by(&during, &old), "both secrets sign during the grace period");
    // A second rotation within the first one's grace keeps both earlier secrets signing.
    let third = rotate(3_600).await;
    suite.wallet.clone().debit(debit_request_for(&account, "2")).await.unwrap();
    eventually("the second debit", || receiver.unique().len() == 2).await;
    let both = receiver.unique()[1].clone();
    assert!(signed_by(&both, &third) && signed_by(&both, &new) && signed_by(&both, &old), "{both:?}");
    // A grace of 0 ends every earlier secret at once.
    let newest = rotate(0).await;
    suite.wallet.clone().debit(debit_request_for(&account, "3")).await.unwrap();
    eventually("the third debit", || receiver.unique().len() == 3).await;
    let after = receiver.unique()[2].clone();
    assert!(signed_by(&after, &newest));
    assert!(!signed_by(&after, &third) && !signed_by(&after, &new) && !signed_by(&after, &old), "{after:?}");
    assert_eq!(after.signatures.len(), 1);
    suite
}

async fn endpoints_are_checked_by_field_and_kept_to_their_tenant(suite: Suite) -> Suite {
    let mut webhooks = suite.webhooks.clone();
    let request = |url: &str, types: Vec<String>| pb::CreateWebhookEndpointRequest {
        url: url.into(),
        description: String::new(),
        event_types: types,
        idempotency_key: key(),
    };
    assert_invalid(webhooks.create_webhook_endpoint(request("", vec![])).await, "url");
    assert_invalid(webhooks.create_webhook_endpoint(request("ftp://x", vec![])).await, "url");
    let unknown = request("https://example.com/hooks", vec!["wallet.nope".into()]);
    assert_invalid(webhooks.create_webhook_endpoint(unknown).await, "event_types[0]");
    let mut no_key = request("https://example.com/hooks", vec![]);
    no_key.idempotency_key.clear();
    assert_invalid(webhooks.create_webhook_endpoint(no_key).await, "idempotency_key");
    let types = webhooks.list_webhook_event_types(pb::ListWebhookEventTypesRequest {}).await.unwrap().into_inner();
    assert!(types.event_types.contains(&"wallet.spending_cap_alert".to_owned()));
    let good = request("https://example.com/hooks", vec!["wallet.balance_low".into()]);
    let first = webhooks.create_webhook_endpoint(good.clone()).await.unwrap().into_inner();
    let again = webhooks.create_webhook_endpoint(good.clone()).await.unwrap().into_inner();
    assert_eq!(
        (again.endpoint, again.secret),
        (first.endpoint.clone(), first.secret),
        "a retry gets the same endpoint"
    );
    let mut changed = good;
    changed.url = "https://example.com/other".into();
    assert_refused(webhooks.create_webhook_endpoint(changed).await, Code::AlreadyExists, "IDEMPOTENCY_KEY_REUSED");
    let endpoint = first.endpoint.unwrap();
    let listed = webhooks.list_webhook_endpoints(pb::ListWebhookEndpointsRequest {}).await.unwrap().into_inner();
    assert_eq!(listed.endpoints, vec![endpoint.clone()]);
    let mut other = suite.other_webhooks.clone();
    let theirs = other.list_webhook_endpoints(pb::ListWebhookEndpointsRequest {}).await.unwrap().into_inner();
    assert!(theirs.endpoints.is_empty());
    let get = pb::GetWebhookEndpointRequest { endpoint_id: endpoint.id.clone() };
    assert_refused(other.get_webhook_endpoint(get).await, Code::NotFound, "NOT_FOUND");
    let disabled = webhooks
        .update_webhook_endpoint(pb::UpdateWebhookEndpointRequest {
            endpoint_id: endpoint.id.clone(),
            enabled: Some(false),
            set_event_types: true,
            event_types: vec![],
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .endpoint
        .unwrap();
    assert!(!disabled.enabled && disabled.event_types.is_empty());
    suite
}

/// A tenant has at most 16 endpoints; a retry of one it has still answers.
async fn a_tenant_has_at_most_sixteen_endpoints(suite: Suite) -> Suite {
    let mut webhooks = suite.webhooks.clone();
    let request = |index: usize| pb::CreateWebhookEndpointRequest {
        url: format!("https://example.com/hooks/{index}"),
        description: String::new(),
        event_types: vec![],
        idempotency_key: format!("endpoint-{index}"),
    };
    for index in 0..16 {
        webhooks.create_webhook_endpoint(request(index)).await.unwrap();
    }
    assert_refused(
        webhooks.create_webhook_endpoint(request(16)).await,
        Code::FailedPrecondition,
        "ENDPOINT_LIMIT_REACHED",
    );
    let retried = webhooks.create_webhook_endpoint(request(3)).await.unwrap().into_inner();
    assert_eq!(retried.endpoint.unwrap().url, "https://example.com/hooks/3");
    let listed = webhooks.list_webhook_endpoints(pb::ListWebhookEndpointsRequest {}).await.unwrap().into_inner();
    assert_eq!(listed.endpoints.len(), 16);
    suite
}

async fn add_card(suite: &Suite, account: &wallet_pb::Account) -> String {
    suite
        .payments
        .clone()
        .add_payment_method(payments_pb::AddPaymentMethodRequest {
            account_id: account.id.clone(),
            kind: payments_pb::PaymentMethodKind::Card.into(),
            gateway_token: "tok_succeed".into(),
            label: String::new(),
            idempotency_key: key(),
        })
        .await
        .unwrap()
        .into_inner()
        .payment_method
        .unwrap()
        .id
}

crate::on_both_backends!(
    a_receiver_gets_every_event_once_by_id_signed_and_in_order,
    deliveries_wait_out_a_receiver_that_is_down_and_keep_their_order,
    a_rotated_secret_signs_beside_the_old_one_until_its_grace_ends,
    endpoints_are_checked_by_field_and_kept_to_their_tenant,
    a_tenant_has_at_most_sixteen_endpoints,
);
