use std::time::Duration;

use reservoir_proto::wallet as pb;
use tokio_stream::StreamExt;

use crate::helpers::*;

/// Reads events until `count` have arrived or a few seconds pass.
async fn read_events(client: &Client, after_sequence: u64, count: usize) -> Vec<pb::Event> {
    let mut stream = client
        .clone()
        .watch_events(pb::WatchEventsRequest { after_sequence, ..Default::default() })
        .await
        .unwrap()
        .into_inner();
    let mut events = Vec::new();
    while events.len() < count {
        match tokio::time::timeout(Duration::from_secs(5), stream.next()).await {
            Ok(Some(Ok(response))) => events.push(response.event.unwrap()),
            _ => break,
        }
    }
    events
}

fn types(events: &[pb::Event]) -> Vec<pb::EventType> {
    events.iter().map(|event| pb::EventType::try_from(event.r#type).unwrap()).collect()
}

async fn events_stream_in_order_and_resume_after_a_sequence(app: &TestApp) {
    let account = open_account_with(&app.client, |request| request.low_balance_threshold = "5".into()).await;
    grant(&app.client, &account, "10", pb::GrantKind::Paid).await;
    debit(&app.client, &account, "4").await.unwrap();
    debit(&app.client, &account, "2").await.unwrap();
    debit(&app.client, &account, "1").await.unwrap();
    debit(&app.client, &account, "3").await.unwrap();
    let events = read_events(&app.client, 0, 8).await;
    use pb::EventType::*;
    assert_eq!(
        types(&events),
        vec![AccountCreated, GrantCreated, Debited, Debited, BalanceLow, Debited, Debited, BalanceDepleted],
        "BALANCE_LOW once for one fall below the threshold"
    );
    let low = &events[4];
    assert_eq!((low.threshold.as_str(), low.available.as_str()), ("5.00", "4.00"));
    let sequences: Vec<u64> = events.iter().map(|event| event.sequence).collect();
    assert!(sequences.windows(2).all(|pair| pair[0] < pair[1]));
    let resumed = read_events(&app.client, events[5].sequence, 2).await;
    assert_eq!(resumed, events[6..8].to_vec(), "resuming after a sequence sends what followed it");
}

async fn a_watcher_sees_new_events_as_they_are_committed(app: &TestApp) {
    let account = prepaid(&app.client).await;
    let existing = read_events(&app.client, 0, 1).await;
    let after = existing.last().map_or(0, |event| event.sequence);
    let watcher = {
        let client = app.client.clone();
        tokio::spawn(async move { read_events(&client, after, 1).await })
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    grant(&app.client, &account, "1", pb::GrantKind::Paid).await;
    let seen = watcher.await.unwrap();
    assert_eq!(types(&seen), vec![pb::EventType::GrantCreated]);
}

async fn another_tenants_events_are_not_seen(app: &TestApp) {
    let account = prepaid(&app.client).await;
    grant(&app.client, &account, "1", pb::GrantKind::Paid).await;
    let (_, other) = app.other_tenant().await;
    let mut stream = other
        .clone()
        .watch_events(pb::WatchEventsRequest { after_sequence: 0, ..Default::default() })
        .await
        .unwrap()
        .into_inner();
    let next = tokio::time::timeout(Duration::from_millis(500), stream.next()).await;
    assert!(next.is_err(), "nothing arrives for a tenant with no events: {next:?}");
}

crate::on_both_backends!(
    events_stream_in_order_and_resume_after_a_sequence,
    a_watcher_sees_new_events_as_they_are_committed,
    another_tenants_events_are_not_seen,
);
