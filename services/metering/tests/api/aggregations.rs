//! Meters of a month's peak (MAX) and of distinct values (UNIQUE_COUNT),
//! charged as the figure grows: each event for what it adds, priced on top of
//! the month so far, so the charges add up to the price of the month's figure.

use chrono::Utc;
use reservoir_proto::metering as pb;
use rust_decimal::Decimal;

use crate::helpers::*;

async fn meter_of(suite: &Suite, code: &str, aggregation: pb::Aggregation, value_dimension: &str) -> pb::Meter {
    let request = pb::CreateMeterRequest {
        code: code.into(),
        unit_name: "unit".into(),
        aggregation: aggregation.into(),
        description: String::new(),
        value_dimension: value_dimension.into(),
    };
    suite.metering.clone().create_meter(request).await.unwrap().into_inner().meter.unwrap()
}

/// 10 a unit up to 5, then 4 a unit.
fn seats_tiers() -> Vec<pb::Tier> {
    vec![
        pb::Tier { up_to: "5".into(), unit_price: "10".into() },
        pb::Tier { up_to: String::new(), unit_price: "4".into() },
    ]
}

fn seats_cost(quantity: Decimal) -> Decimal {
    let five = Decimal::from(5);
    Decimal::from(10) * quantity.min(five) + Decimal::from(4) * (quantity - five).max(Decimal::ZERO)
}

/// The month's usage of one meter, in one group.
async fn month_usage(suite: &Suite, account: &str, meter: &str) -> pb::UsageGroup {
    let now = Utc::now();
    let query = pb::GetUsageRequest {
        account_id: account.into(),
        meter_code: meter.into(),
        start_time: Some(reservoir_common::time::to_timestamp(now - chrono::Duration::days(1))),
        end_time: Some(reservoir_common::time::to_timestamp(now + chrono::Duration::days(1))),
        group_by: pb::Period::Month.into(),
        dimension_key: String::new(),
    };
    let groups = suite.metering.clone().get_usage(query).await.unwrap().into_inner().groups;
    assert_eq!(groups.len(), 1, "{groups:?}");
    groups.into_iter().next().unwrap()
}

async fn a_peak_meter_is_charged_for_each_rise_over_1000_events(suite: Suite) -> Suite {
    let meter = meter_of(&suite, "seats", pb::Aggregation::Max, "").await;
    assert_eq!(meter.aggregation, i32::from(pb::Aggregation::Max));
    price(&suite, "seats", seats_tiers()).await;
    let account = funded_account(&suite, "100000").await;
    // Seats in use as reported: up and down, a new peak now and then.
    let seats: Vec<u32> = (0..1_000_u32).map(|i| 1 + (i * 7919 % 97) * (i / 100 + 1) / 10).collect();
    let mut peak = Decimal::ZERO;
    let mut expected = Vec::new();
    for seat in &seats {
        let now = Decimal::from(*seat);
        expected.push(seats_cost(now.max(peak)) - seats_cost(peak));
        peak = peak.max(now);
    }
    let events: Vec<pb::UsageEvent> = seats.iter().map(|seat| event(&account, "seats", &seat.to_string())).collect();
    let mut charged = Vec::new();
    for batch in events.chunks(250) {
        let results = ingest(&suite, batch.to_vec()).await;
        assert!(statuses(&results).iter().all(|status| *status == pb::EventStatus::Charged), "{results:?}");
        charged.extend(results.iter().map(|result| d(&result.amount)));
    }
    assert_eq!(charged, expected, "each event charged the priced rise of the peak");
    let total: Decimal = charged.iter().sum();
    assert_eq!(total, seats_cost(peak), "the month's charges are the price of its peak");
    assert_eq!(debited(&suite, &account).await, total);
    // Sent again: answered as before, charged nothing more.
    let again = ingest(&suite, events[..250].to_vec()).await;
    assert!(statuses(&again).iter().all(|status| *status == pb::EventStatus::Duplicate));
    assert_eq!(debited(&suite, &account).await, total);
    let usage = month_usage(&suite, &account.id, "seats").await;
    assert_eq!(d(&usage.charged_quantity), peak, "the charged quantities add up to the peak");
    assert_eq!(d(&usage.charged_amount), total);
    assert_eq!(usage.event_count, 1_000);
    // The CSV says the same.
    let query = pb::GetUsageRequest {
        account_id: account.id.clone(),
        meter_code: "seats".into(),
        start_time: Some(reservoir_common::time::to_timestamp(Utc::now() - chrono::Duration::days(1))),
        end_time: Some(reservoir_common::time::to_timestamp(Utc::now() + chrono::Duration::days(1))),
        group_by: pb::Period::Month.into(),
        dimension_key: String::new(),
    };
    let csv = suite.metering.clone().export_usage(pb::ExportUsageRequest { query: Some(query) }).await.unwrap();
    let lines: Vec<String> = csv.into_inner().csv.lines().map(str::to_owned).collect();
    assert_eq!(lines.len(), 2, "{lines:?}");
    assert!(lines[1].contains(&format!(",seats,,{peak},{total},")), "{} (peak {peak}, {total})", lines[1]);
    assert_books_balance(&suite.wallet, &account).await;
    suite
}

async fn a_distinct_count_meter_charges_each_new_value_once_over_1000_events(suite: Suite) -> Suite {
    meter_of(&suite, "active-users", pb::Aggregation::UniqueCount, "user").await;
    price(&suite, "active-users", flat("0.50")).await;
    let account = funded_account(&suite, "1000").await;
    // 1,000 events from 137 users, most of them seen many times.
    let users: Vec<String> = (0..1_000_u32).map(|i| format!("user-{}", i * 31 % 137)).collect();
    let events: Vec<pb::UsageEvent> = users
        .iter()
        .map(|user| {
            let mut event = event(&account, "active-users", "");
            event.dimensions.insert("user".into(), user.clone());
            event
        })
        .collect();
    let mut seen = std::collections::HashSet::new();
    let expected: Vec<Decimal> =
        users.iter().map(|user| if seen.insert(user.clone()) { d("0.5") } else { Decimal::ZERO }).collect();
    let mut charged = Vec::new();
    for batch in events.chunks(250) {
        let results = ingest(&suite, batch.to_vec()).await;
        assert!(statuses(&results).iter().all(|status| *status == pb::EventStatus::Charged), "{results:?}");
        charged.extend(results.iter().map(|result| d(&result.amount)));
    }
    assert_eq!(charged, expected, "a user new this month costs 0.50 once");
    assert_eq!(debited(&suite, &account).await, d("68.50"), "137 users");
    let usage = month_usage(&suite, &account.id, "active-users").await;
    assert_eq!((d(&usage.charged_quantity), d(&usage.charged_amount)), (d("137"), d("68.50")));

    // An event without the counted dimension is refused on its own.
    let mut without = event(&account, "active-users", "");
    without.dimensions.insert("team".into(), "a".into());
    let newcomer = {
        let mut event = event(&account, "active-users", "");
        event.dimensions.insert("user".into(), "someone-new".into());
        event
    };
    let results = ingest(&suite, vec![without, newcomer]).await;
    assert_eq!(statuses(&results), vec![pb::EventStatus::Invalid, pb::EventStatus::Charged]);
    assert_eq!((results[0].field.as_str(), results[0].reason.as_str()), ("dimensions.user", "MISSING_VALUE_DIMENSION"));
    assert_eq!(d(&results[1].amount), d("0.5"));
    assert_eq!(debited(&suite, &account).await, d("69.00"));
    assert_books_balance(&suite.wallet, &account).await;
    suite
}

async fn a_meter_is_defined_with_its_dimension_and_not_authorized_ahead(suite: Suite) -> Suite {
    let mut client = suite.metering.clone();
    let request = |aggregation: pb::Aggregation, value_dimension: &str| pb::CreateMeterRequest {
        code: "m".into(),
        unit_name: "unit".into(),
        aggregation: aggregation.into(),
        description: String::new(),
        value_dimension: value_dimension.into(),
    };
    assert_invalid(client.create_meter(request(pb::Aggregation::UniqueCount, "")).await, "value_dimension");
    assert_invalid(client.create_meter(request(pb::Aggregation::Sum, "user")).await, "value_dimension");
    assert_invalid(client.create_meter(request(pb::Aggregation::Max, "user")).await, "value_dimension");
    let created = client.create_meter(request(pb::Aggregation::UniqueCount, "user")).await.unwrap().into_inner();
    let meters = client.list_meters(pb::ListMetersRequest {}).await.unwrap().into_inner().meters;
    assert_eq!(meters, vec![created.meter.clone().unwrap()]);
    assert_eq!(meters[0].value_dimension, "user");
    // Another dimension under the same code is another definition.
    let status = client.create_meter(request(pb::Aggregation::UniqueCount, "device")).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::AlreadyExists);

    meter_of(&suite, "seats", pb::Aggregation::Max, "").await;
    price(&suite, "seats", flat("1")).await;
    let account = funded_account(&suite, "100").await;
    let authorize = pb::AuthorizeRequest {
        account_id: account.id.clone(),
        meter_code: "seats".into(),
        estimated_quantity: "3".into(),
        idempotency_key: key(),
        ..Default::default()
    };
    assert_invalid(client.authorize(authorize).await, "meter_code");
    assert_eq!(available(&suite.wallet, &account).await, d("100"), "nothing held");
    suite
}

/// Waits until the wallet shows `amount` debited from the account.
async fn until_debited(suite: &Suite, account: &reservoir_proto::wallet::Account, amount: Decimal) {
    for _ in 0..150 {
        if debited(suite, account).await == amount {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    panic!("{amount} never debited; {} was", debited(suite, account).await);
}

async fn a_latest_meter_charges_a_month_once_it_has_ended(suite: Suite) -> Suite {
    use chrono::{Datelike, TimeZone};
    meter_of(&suite, "storage", pb::Aggregation::Latest, "").await;
    let now = Utc::now();
    let this_month = Utc.with_ymd_and_hms(now.year(), now.month(), 1, 0, 0, 0).unwrap();
    let day_before = this_month - chrono::Duration::days(1);
    let last_month = Utc.with_ymd_and_hms(day_before.year(), day_before.month(), 1, 0, 0, 0).unwrap();
    // 0.10 a GB, 0.20 for the gold tier, since before last month, as set
    // back then (SetPrice takes no past instant).
    suite
        .metering_database()
        .execute(
            "INSERT INTO prices (id, tenant_id, meter_id, effective_from, definition, created_at) \
             SELECT $1, tenant_id, id, $2, \
             '{\"tiers\":[[null,\"0.10\"]],\"overrides\":[[\"tier\",\"gold\",[[null,\"0.20\"]]]]}', $2 \
             FROM meters WHERE code = 'storage'",
            vec![uuid::Uuid::now_v7().into(), (last_month - chrono::Duration::days(1)).into()],
        )
        .await;
    let account = funded_account(&suite, "100").await;
    let at = |at: chrono::DateTime<Utc>, quantity: &str| {
        let mut event = event(&account, "storage", quantity);
        event.timestamp = Some(reservoir_common::time::to_timestamp(at));
        event
    };
    let day = |n: i64| last_month + chrono::Duration::days(n);
    // This month's report is taken and charged nothing yet; reports dated last
    // month are refused: its month has ended.
    let results = ingest(&suite, vec![at(now, "20"), at(day(1), "50"), at(day(4), "80")]).await;
    assert_eq!(statuses(&results), vec![pb::EventStatus::Charged, pb::EventStatus::Invalid, pb::EventStatus::Invalid]);
    assert!(d(&results[0].amount).is_zero(), "charged when the month ends");
    assert_eq!((results[1].field.as_str(), results[1].reason.as_str()), ("timestamp", "PERIOD_CLOSED"));
    // Last month as it stood when it ended: 80 GB reported last, on the gold tier.
    let month = last_month.format("%Y-%m").to_string();
    suite
        .metering_database()
        .execute(
            "INSERT INTO latest_values (tenant_id, account_id, meter_code, month, quantity, occurred_at, event_id, \
             dimensions, state) VALUES ($1, $2, 'storage', $3, $4, $5, 'reported-last', '{\"tier\":\"gold\"}', 'OPEN')",
            vec![
                suite.tenant.0.into(),
                uuid::Uuid::parse_str(&account.id).unwrap().into(),
                month.clone().into(),
                d("80").into(),
                day(4).into(),
            ],
        )
        .await;
    // The worker closes last month and charges 80 × 0.20 once.
    until_debited(&suite, &account, d("16.00")).await;
    let usage = |start, end| {
        let query = pb::GetUsageRequest {
            account_id: account.id.clone(),
            meter_code: "storage".into(),
            start_time: Some(reservoir_common::time::to_timestamp(start)),
            end_time: Some(reservoir_common::time::to_timestamp(end)),
            group_by: pb::Period::Month.into(),
            dimension_key: String::new(),
        };
        let mut metering = suite.metering.clone();
        async move { metering.get_usage(query).await.unwrap().into_inner().groups }
    };
    let last = usage(last_month, this_month).await;
    assert_eq!(last.len(), 1);
    assert_eq!((d(&last[0].charged_quantity), d(&last[0].charged_amount)), (d("80"), d("16")));
    assert_eq!(last[0].event_count, 1, "the month's charge");
    let current = usage(this_month, now + chrono::Duration::minutes(10)).await;
    assert_eq!((d(&current[0].charged_amount), current[0].event_count), (Decimal::ZERO, 1), "this month is still open");
    // The charge's event id is reserved.
    let mut forged = event(&account, "storage", "1");
    forged.event_id = format!("latest:{}:storage:{}", account.id, now.format("%Y-%m"));
    assert_eq!(statuses(&ingest(&suite, vec![forged]).await), vec![pb::EventStatus::Invalid]);

    // As if a replica died between the month's charge and recording it, and
    // as if the month were open again with another figure: it is closed and
    // charged again, and the wallet debited once all the same.
    let metering = suite.metering_database();
    metering.execute("UPDATE latest_values SET state = 'CLOSED' WHERE quantity = 80", Vec::new()).await;
    tokio::time::sleep(std::time::Duration::from_millis(1_000)).await;
    metering.execute("UPDATE latest_values SET state = 'OPEN', quantity = 500 WHERE quantity = 80", Vec::new()).await;
    tokio::time::sleep(std::time::Duration::from_millis(1_000)).await;
    assert_eq!(debited(&suite, &account).await, d("16.00"), "the month is charged once");
    assert_books_balance(&suite.wallet, &account).await;
    suite
}

crate::on_both_backends!(
    a_peak_meter_is_charged_for_each_rise_over_1000_events,
    a_distinct_count_meter_charges_each_new_value_once_over_1000_events,
    a_meter_is_defined_with_its_dimension_and_not_authorized_ahead,
    a_latest_meter_charges_a_month_once_it_has_ended,
);
