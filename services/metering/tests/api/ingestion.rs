use reservoir_proto::metering as pb;
use reservoir_proto::wallet as wallet_pb;

use crate::helpers::*;

async fn ingested_usage_is_priced_and_drawn_from_the_wallet(suite: Suite) -> Suite {
    priced_meter(&suite, "tokens", "0.01").await;
    let account = funded_account(&suite, "10").await;
    let events =
        vec![event(&account, "tokens", "100"), event(&account, "tokens", "200"), event(&account, "tokens", "50")];
    let results = ingest(&suite, events).await;
    assert_eq!(statuses(&results), vec![pb::EventStatus::Charged; 3]);
    let amounts: Vec<&str> = results.iter().map(|result| result.amount.as_str()).collect();
    assert_eq!(amounts, vec!["1", "2", "0.5"]);
    assert_eq!(available(&suite.wallet, &account).await, d("6.50"));
    let entries = ledger(&suite.wallet, &account).await;
    let debits: Vec<&wallet_pb::LedgerEntry> =
        entries.iter().filter(|entry| entry.kind == i32::from(wallet_pb::EntryKind::Debit)).collect();
    // The account's usage of the meter is drawn in one go: one entry for
    // the one grant it touched, carrying the meter and the event count.
    assert_eq!(debits.len(), 1);
    assert_eq!(debits[0].amount, "-3.50");
    assert_eq!(debits[0].meter_code, "tokens");
    assert_eq!(debits[0].metadata.get("events").map(String::as_str), Some("3"));
    assert!(!debits[0].correlation_id.is_empty(), "the entry points back to the events' line");
    for result in &results {
        assert_eq!(result.entry_ids, vec![debits[0].id.clone()], "each result names its wallet entries");
    }
    assert_books_balance(&suite.wallet, &account).await;
    suite
}

async fn a_batch_sent_again_changes_nothing(suite: Suite) -> Suite {
    priced_meter(&suite, "tokens", "0.01").await;
    let account = funded_account(&suite, "10").await;
    let events = vec![event(&account, "tokens", "100"), event(&account, "tokens", "300")];
    let first = ingest(&suite, events.clone()).await;
    let again = ingest(&suite, events).await;
    assert_eq!(statuses(&again), vec![pb::EventStatus::Duplicate; 2]);
    for (original, duplicate) in first.iter().zip(&again) {
        assert_eq!(duplicate.original_status, i32::from(pb::EventStatus::Charged));
        assert_eq!((&duplicate.amount, &duplicate.entry_ids), (&original.amount, &original.entry_ids));
    }
    assert_eq!(available(&suite.wallet, &account).await, d("6"));
    assert_eq!(debited(&suite, &account).await, d("4"));
    suite
}

async fn the_same_event_twice_in_one_batch_is_charged_once(suite: Suite) -> Suite {
    priced_meter(&suite, "tokens", "1").await;
    let account = funded_account(&suite, "10").await;
    let one = event(&account, "tokens", "2");
    let results = ingest(&suite, vec![one.clone(), one]).await;
    assert_eq!(statuses(&results), vec![pb::EventStatus::Charged, pb::EventStatus::Duplicate]);
    assert_eq!(available(&suite.wallet, &account).await, d("8"));
    suite
}

async fn a_grant_for_one_meter_is_drawn_only_by_that_meter(suite: Suite) -> Suite {
    priced_meter(&suite, "gpu", "1").await;
    priced_meter(&suite, "cpu", "1").await;
    let account = funded_account(&suite, "5").await;
    let promo = suite
        .wallet
        .clone()
        .grant_credits(wallet_pb::GrantCreditsRequest {
            account_id: account.id.clone(),
            amount: "5".into(),
            kind: wallet_pb::GrantKind::Promotional.into(),
            meter_codes: vec!["gpu".into()],
            idempotency_key: key(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .grant
        .unwrap();
    ingest(&suite, vec![event(&account, "cpu", "2")]).await;
    let grants = suite
        .wallet
        .clone()
        .list_grants(wallet_pb::ListGrantsRequest { account_id: account.id.clone(), include_inactive: false })
        .await
        .unwrap()
        .into_inner()
        .grants;
    let promo_now = grants.iter().find(|grant| grant.id == promo.id).unwrap();
    assert_eq!(promo_now.remaining_amount, "5.00", "cpu usage never touches the gpu credits");
    let results = ingest(&suite, vec![event(&account, "gpu", "3")]).await;
    let entries = ledger(&suite.wallet, &account).await;
    let gpu_entry = entries.iter().find(|entry| entry.id == results[0].entry_ids[0]).unwrap();
    assert_eq!(gpu_entry.grant_id, promo.id, "gpu usage draws its own credits first");
    suite
}

async fn usage_the_wallet_refuses_is_kept_as_uncovered_and_reported(suite: Suite) -> Suite {
    priced_meter(&suite, "tokens", "1").await;
    let account = funded_account(&suite, "5").await;
    let results = ingest(&suite, vec![event(&account, "tokens", "3"), event(&account, "tokens", "4")]).await;
    assert_eq!(statuses(&results), vec![pb::EventStatus::Charged, pb::EventStatus::Uncovered]);
    assert_eq!((results[1].amount.as_str(), results[1].reason.as_str()), ("4", "INSUFFICIENT_FUNDS"));
    assert_eq!(available(&suite.wallet, &account).await, d("2"));
    let now = chrono::Utc::now();
    let query = pb::GetUsageRequest {
        account_id: account.id.clone(),
        meter_code: String::new(),
        start_time: Some(reservoir_common::time::to_timestamp(now - chrono::Duration::days(1))),
        end_time: Some(reservoir_common::time::to_timestamp(now + chrono::Duration::days(1))),
        group_by: pb::Period::Month.into(),
        dimension_key: String::new(),
    };
    let usage = suite.metering.clone().get_usage(query.clone()).await.unwrap().into_inner().groups;
    assert_eq!(usage.len(), 1);
    let group = &usage[0];
    assert_eq!((group.charged_quantity.as_str(), group.charged_amount.as_str()), ("3", "3"));
    assert_eq!((group.uncovered_quantity.as_str(), group.uncovered_amount.as_str()), ("4", "4"));
    assert_eq!(group.event_count, 2);
    let csv = suite
        .metering
        .clone()
        .export_usage(pb::ExportUsageRequest { query: Some(query) })
        .await
        .unwrap()
        .into_inner()
        .csv;
    let lines: Vec<&str> = csv.lines().collect();
    assert_eq!(lines.len(), 2);
    assert!(lines[0].starts_with("period_start,meter_code,dimension_value,charged_quantity"));
    assert!(lines[1].contains(",tokens,,3,3,4,4,0,0,2"), "{}", lines[1]);
    suite
}

async fn usage_past_the_spending_cap_is_refused_until_the_cap_is_raised(suite: Suite) -> Suite {
    priced_meter(&suite, "tokens", "1").await;
    let account = funded_account(&suite, "100").await;
    let set_cap = |cap: &str| wallet_pb::UpdateAccountRequest {
        account_id: account.id.clone(),
        monthly_spending_cap: Some(cap.into()),
        idempotency_key: key(),
        ..Default::default()
    };
    suite.wallet.clone().update_account(set_cap("10")).await.unwrap();
    let results = ingest(&suite, vec![event(&account, "tokens", "6"), event(&account, "tokens", "5")]).await;
    assert_eq!(statuses(&results), vec![pb::EventStatus::Charged, pb::EventStatus::Uncovered]);
    assert_eq!(results[1].reason, "SPENDING_CAP_REACHED");
    assert_eq!(available(&suite.wallet, &account).await, d("94"), "credits are left, but the cap holds");
    suite.wallet.clone().update_account(set_cap("20")).await.unwrap();
    let results = ingest(&suite, vec![event(&account, "tokens", "5")]).await;
    assert_eq!(statuses(&results), vec![pb::EventStatus::Charged]);
    assert_eq!(available(&suite.wallet, &account).await, d("89"));
    suite
}

async fn usage_groups_by_day_and_dimension(suite: Suite) -> Suite {
    priced_meter(&suite, "tokens", "1").await;
    let account = funded_account(&suite, "100").await;
    let with_model = |quantity: &str, model: &str| {
        let mut usage = event(&account, "tokens", quantity);
        usage.dimensions.insert("model".into(), model.into());
        usage
    };
    ingest(&suite, vec![with_model("1", "large"), with_model("2", "large"), with_model("4", "small")]).await;
    let now = chrono::Utc::now();
    let groups = suite
        .metering
        .clone()
        .get_usage(pb::GetUsageRequest {
            account_id: account.id.clone(),
            meter_code: "tokens".into(),
            start_time: Some(reservoir_common::time::to_timestamp(now - chrono::Duration::hours(1))),
            end_time: Some(reservoir_common::time::to_timestamp(now + chrono::Duration::hours(1))),
            group_by: pb::Period::Day.into(),
            dimension_key: "model".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .groups;
    let by_model: Vec<(&str, &str)> =
        groups.iter().map(|group| (group.dimension_value.as_str(), group.charged_quantity.as_str())).collect();
    assert_eq!(by_model, vec![("large", "3"), ("small", "4")]);
    suite
}

async fn bad_events_are_answered_one_by_one_and_the_rest_charged(suite: Suite) -> Suite {
    priced_meter(&suite, "tokens", "1").await;
    meter(&suite, "unpriced", pb::Aggregation::Sum).await;
    let account = funded_account(&suite, "10").await;
    let mut future = event(&account, "tokens", "1");
    future.timestamp = Some(reservoir_common::time::to_timestamp(chrono::Utc::now() + chrono::Duration::hours(1)));
    let events = vec![
        event(&account, "tokens", "1"),
        event(&account, "nope", "1"),
        event(&account, "tokens", "-1"),
        event(&account, "tokens", "0.000000001"),
        pb::UsageEvent { account_id: uuid::Uuid::now_v7().to_string(), ..event(&account, "tokens", "1") },
        pb::UsageEvent { event_id: String::new(), ..event(&account, "tokens", "1") },
        future,
        event(&account, "unpriced", "1"),
    ];
    let results = ingest(&suite, events).await;
    let answers: Vec<(pb::EventStatus, &str, &str)> = results
        .iter()
        .map(|result| {
            (pb::EventStatus::try_from(result.status).unwrap(), result.field.as_str(), result.reason.as_str())
        })
        .collect();
    use pb::EventStatus::*;
    assert_eq!(answers[0].0, Charged);
    assert_eq!((answers[1].0, answers[1].1, answers[1].2), (Invalid, "meter_code", "UNKNOWN_METER"));
    assert_eq!((answers[2].0, answers[2].1), (Invalid, "quantity"));
    assert_eq!((answers[3].0, answers[3].1), (Invalid, "quantity"));
    assert_eq!((answers[4].0, answers[4].1, answers[4].2), (Invalid, "account_id", "UNKNOWN_ACCOUNT"));
    assert_eq!((answers[5].0, answers[5].1), (Invalid, "event_id"));
    assert_eq!((answers[6].0, answers[6].1), (Invalid, "timestamp"));
    assert_eq!((answers[7].0, answers[7].1, answers[7].2), (Invalid, "meter_code", "NO_PRICE"));
    assert_eq!(available(&suite.wallet, &account).await, d("9"));
    let too_many: Vec<pb::UsageEvent> = (0..1_001).map(|_| event(&account, "tokens", "1")).collect();
    assert_invalid(
        suite.metering.clone().ingest_events(pb::IngestEventsRequest { events: too_many, asynchronous: false }).await,
        "events",
    );
    suite
}

/// An event whose charge is past what can be computed is INVALID on its own:
/// the events beside it in the batch are charged, and a retry answers the same.
async fn an_event_whose_charge_cannot_be_computed_is_refused_alone(suite: Suite) -> Suite {
    priced_meter(&suite, "tokens", "1").await;
    priced_meter(&suite, "dear", "100000000000000000").await;
    let account = funded_account(&suite, "10").await;
    let events = vec![
        event(&account, "tokens", "1"),
        // 10^15 units at 10^17 each: 10^32, past what a decimal holds.
        event(&account, "dear", "1000000000000000"),
        event(&account, "tokens", "2"),
    ];
    let results = ingest(&suite, events.clone()).await;
    use pb::EventStatus::*;
    assert_eq!(statuses(&results), vec![Charged, Invalid, Charged]);
    assert_eq!(results[1].field, "quantity");
    assert!(results[1].reason.contains("too large"), "{:?}", results[1]);
    assert_eq!(available(&suite.wallet, &account).await, d("7"));
    let again = ingest(&suite, events).await;
    assert_eq!(statuses(&again), vec![Duplicate, Invalid, Duplicate]);
    assert_eq!(available(&suite.wallet, &account).await, d("7"));
    suite
}

/// A refused event adds nothing to its meter's usage: the events after it,
/// in the batch and in the next one, are priced on the tiers as if it had
/// never been sent.
async fn a_refused_event_does_not_move_usage_up_the_tiers(suite: Suite) -> Suite {
    meter(&suite, "tokens", pb::Aggregation::Sum).await;
    let tiers = vec![
        pb::Tier { up_to: "100".into(), unit_price: "0.01".into() },
        pb::Tier { up_to: String::new(), unit_price: "10000000000000000".into() },
    ];
    price(&suite, "tokens", tiers).await;
    let account = funded_account(&suite, "10").await;
    let events = vec![
        event(&account, "tokens", "50"),
        event(&account, "tokens", "1000000000000000"),
        event(&account, "tokens", "10"),
    ];
    let results = ingest(&suite, events).await;
    use pb::EventStatus::*;
    assert_eq!(statuses(&results), vec![Charged, Invalid, Charged]);
    assert_eq!((results[0].amount.as_str(), results[2].amount.as_str()), ("0.5", "0.1"));
    let next = ingest(&suite, vec![event(&account, "tokens", "10")]).await;
    assert_eq!(statuses(&next), vec![Charged]);
    assert_eq!(next[0].amount, "0.1", "usage stands at 60 of the first tier's 100");
    assert_eq!(available(&suite.wallet, &account).await, d("9.3"));
    suite
}

/// The same new events sent twice at once are stored and charged once:
/// each is CHARGED in one answer and a DUPLICATE in the other.
async fn the_same_new_events_sent_twice_at_once_are_charged_once(suite: Suite) -> Suite {
    priced_meter(&suite, "tokens", "0.01").await;
    let accounts = [funded_account(&suite, "100").await, funded_account(&suite, "100").await];
    for round in 1..=5 {
        let events: Vec<pb::UsageEvent> = (0..40).map(|index| event(&accounts[index % 2], "tokens", "100")).collect();
        let (first, second) = tokio::join!(ingest(&suite, events.clone()), ingest(&suite, events));
        for (one, other) in first.iter().zip(&second) {
            let mut pair = [statuses(std::slice::from_ref(one))[0], statuses(std::slice::from_ref(other))[0]];
            pair.sort_by_key(|status| *status as i32);
            assert_eq!(pair, [pb::EventStatus::Charged, pb::EventStatus::Duplicate], "round {round}");
        }
        for account in &accounts {
            let spent = d("20") * rust_decimal::Decimal::from(round);
            assert_eq!(available(&suite.wallet, account).await, d("100") - spent, "round {round}");
            assert_eq!(debited(&suite, account).await, spent, "round {round}");
        }
    }
    suite
}

async fn a_count_meter_counts_events(suite: Suite) -> Suite {
    meter(&suite, "requests", pb::Aggregation::Count).await;
    price(&suite, "requests", flat("0.25")).await;
    let account = funded_account(&suite, "10").await;
    let results = ingest(&suite, vec![event(&account, "requests", "17"), event(&account, "requests", "")]).await;
    let amounts: Vec<&str> = results.iter().map(|result| result.amount.as_str()).collect();
    assert_eq!(amounts, vec!["0.25", "0.25"], "each event counts as one, whatever its quantity");
    suite
}

async fn many_small_events_cost_what_one_large_event_costs(suite: Suite) -> Suite {
    meter(&suite, "tokens", pb::Aggregation::Sum).await;
    let tiers = vec![
        pb::Tier { up_to: "100".into(), unit_price: "0.013".into() },
        pb::Tier { up_to: "1000".into(), unit_price: "0.0071".into() },
        pb::Tier { up_to: String::new(), unit_price: "0.0011".into() },
    ];
    price(&suite, "tokens", tiers).await;
    let small = funded_account(&suite, "1000").await;
    let large = funded_account(&suite, "1000").await;
    let events: Vec<_> = (0..250).map(|_| event(&small, "tokens", "7.3")).collect();
    ingest(&suite, events).await;
    let one = ingest(&suite, vec![event(&large, "tokens", "1825")]).await;
    // 100 × 0.013 + 900 × 0.0071 + 825 × 0.0011 = 8.5975, rounded half-even to cents.
    assert_eq!(one[0].amount, "8.6");
    assert_eq!(debited(&suite, &small).await, debited(&suite, &large).await);
    assert_eq!(available(&suite.wallet, &small).await, available(&suite.wallet, &large).await);
    suite
}

crate::on_both_backends!(
    ingested_usage_is_priced_and_drawn_from_the_wallet,
    a_batch_sent_again_changes_nothing,
    the_same_event_twice_in_one_batch_is_charged_once,
    a_grant_for_one_meter_is_drawn_only_by_that_meter,
    usage_the_wallet_refuses_is_kept_as_uncovered_and_reported,
    usage_past_the_spending_cap_is_refused_until_the_cap_is_raised,
    usage_groups_by_day_and_dimension,
    bad_events_are_answered_one_by_one_and_the_rest_charged,
    an_event_whose_charge_cannot_be_computed_is_refused_alone,
    a_refused_event_does_not_move_usage_up_the_tiers,
    the_same_new_events_sent_twice_at_once_are_charged_once,
    a_count_meter_counts_events,
    many_small_events_cost_what_one_large_event_costs,
);
