use std::time::Duration;

use reservoir_common::time::to_timestamp;
use reservoir_proto::metering as pb;
use tonic::Code;

use crate::helpers::*;

async fn a_new_price_applies_from_its_instant_and_never_to_earlier_usage(suite: Suite) -> Suite {
    priced_meter(&suite, "tokens", "1").await;
    let account = funded_account(&suite, "100").await;
    let before = ingest(&suite, vec![event(&account, "tokens", "5")]).await;
    // Far enough ahead that SetPrice reaches the server before it, even on a busy machine.
    let from = chrono::Utc::now() + chrono::Duration::seconds(2);
    suite
        .metering
        .clone()
        .set_price(pb::SetPriceRequest {
            meter_code: "tokens".into(),
            effective_from: Some(to_timestamp(from)),
            tiers: flat("3"),
            overrides: Vec::new(),
            idempotency_key: key(),
        })
        .await
        .unwrap();
    let mut early = event(&account, "tokens", "5");
    early.timestamp = Some(to_timestamp(from - chrono::Duration::milliseconds(1)));
    let mut late = event(&account, "tokens", "5");
    late.timestamp = Some(to_timestamp(from));
    let results = ingest(&suite, vec![early, late]).await;
    let amounts: Vec<&str> = results.iter().map(|result| result.amount.as_str()).collect();
    assert_eq!(amounts, vec!["5", "15"], "usage is priced at its own instant");
    tokio::time::sleep(Duration::from_millis(2_100)).await;
    let schedule = suite
        .metering
        .clone()
        .get_price(pb::GetPriceRequest { meter_code: "tokens".into(), at: None })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(schedule.schedule.len(), 2);
    assert_eq!(schedule.price.unwrap().tiers[0].unit_price, "3");
    assert_eq!(before[0].amount, "5", "the earlier charge is unchanged");
    assert_eq!(debited(&suite, &account).await, d("25"));
    suite
}

async fn a_dimension_override_prices_matching_usage(suite: Suite) -> Suite {
    meter(&suite, "tokens", pb::Aggregation::Sum).await;
    suite
        .metering
        .clone()
        .set_price(pb::SetPriceRequest {
            meter_code: "tokens".into(),
            effective_from: None,
            tiers: flat("1"),
            overrides: vec![pb::DimensionPrice { key: "model".into(), value: "large".into(), tiers: flat("4") }],
            idempotency_key: key(),
        })
        .await
        .unwrap();
    let account = funded_account(&suite, "100").await;
    let mut large = event(&account, "tokens", "2");
    large.dimensions.insert("model".into(), "large".into());
    let results = ingest(&suite, vec![large, event(&account, "tokens", "2")]).await;
    let amounts: Vec<&str> = results.iter().map(|result| result.amount.as_str()).collect();
    assert_eq!(amounts, vec!["8", "2"]);
    suite
}

async fn prices_and_meters_are_checked(suite: Suite) -> Suite {
    let mut client = suite.metering.clone();
    meter(&suite, "tokens", pb::Aggregation::Sum).await;
    let same = meter(&suite, "tokens", pb::Aggregation::Sum).await;
    assert_eq!(same.code, "tokens", "defining the same meter again returns it");
    let different = pb::CreateMeterRequest {
        code: "tokens".into(),
        unit_name: "other".into(),
        aggregation: pb::Aggregation::Count.into(),
        description: String::new(),
        value_dimension: String::new(),
    };
    let refused = client.create_meter(different).await;
    // The ErrorInfo shows the definition in the way.
    let metadata = reservoir_common::status::metadata_of(refused.as_ref().unwrap_err());
    let shown = |name: &str| metadata.get(name).map(String::as_str);
    assert_eq!(
        (shown("code"), shown("unit_name"), shown("aggregation")),
        (Some("tokens"), Some(same.unit_name.as_str()), Some("SUM")),
        "{metadata:?}"
    );
    assert_refused(refused, Code::AlreadyExists, "METER_EXISTS");
    let bad_meter = pb::CreateMeterRequest { code: "has space".into(), ..Default::default() };
    assert_invalid(client.create_meter(bad_meter).await, "code");
    let request = |tiers: Vec<pb::Tier>| pb::SetPriceRequest {
        meter_code: "tokens".into(),
        effective_from: None,
        tiers,
        overrides: Vec::new(),
        idempotency_key: key(),
    };
    let decreasing = vec![
        pb::Tier { up_to: "100".into(), unit_price: "1".into() },
        pb::Tier { up_to: "50".into(), unit_price: "1".into() },
        pb::Tier { up_to: String::new(), unit_price: "1".into() },
    ];
    assert_invalid(client.set_price(request(decreasing)).await, "tiers");
    assert_invalid(client.set_price(request(flat("-1"))).await, "tiers[0].unit_price");
    assert_invalid(client.set_price(request(flat("0.0000000000001"))).await, "tiers[0].unit_price");
    let past = pb::SetPriceRequest {
        effective_from: Some(to_timestamp(chrono::Utc::now() - chrono::Duration::hours(1))),
        ..request(flat("1"))
    };
    assert_invalid(client.set_price(past).await, "effective_from");
    let unknown = pb::SetPriceRequest { meter_code: "nope".into(), ..request(flat("1")) };
    assert_refused(client.set_price(unknown).await, Code::NotFound, "NOT_FOUND");
    let once = request(flat("1"));
    let first = client.set_price(once.clone()).await.unwrap().into_inner();
    assert_eq!(client.set_price(once).await.unwrap().into_inner(), first, "a retried SetPrice replays");
    suite
}

/// A service key acts for the tenant each call names, and only for one the
/// wallet has: naming no tenant is UNAUTHENTICATED before anything runs.
async fn a_service_key_naming_no_tenant_is_unauthenticated(suite: Suite) -> Suite {
    use reservoir_common::auth::{TenantId, service_request};
    use reservoir_proto::metering::metering_service_client::MeteringServiceClient;
    priced_meter(&suite, "tokens", "1").await;
    let mut service = MeteringServiceClient::new(channel(suite.metering_address).await);
    let own = service_request(pb::ListMetersRequest {}, &suite.service_key, suite.tenant).unwrap();
    assert_eq!(service.list_meters(own).await.unwrap().into_inner().meters.len(), 1);
    let nobody = TenantId(uuid::Uuid::now_v7());
    let create = pb::CreateMeterRequest {
        code: "calls".into(),
        unit_name: "call".into(),
        aggregation: pb::Aggregation::Count.into(),
        description: String::new(),
        value_dimension: String::new(),
    };
    let status = service.create_meter(service_request(create, &suite.service_key, nobody).unwrap()).await.unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
    assert!(status.message().contains("x-reservoir-tenant"), "{}", status.message());
    let listed = service.list_meters(service_request(pb::ListMetersRequest {}, &suite.service_key, nobody).unwrap());
    assert_eq!(listed.await.unwrap_err().code(), Code::Unauthenticated);
    let own = service_request(pb::ListMetersRequest {}, &suite.service_key, suite.tenant).unwrap();
    assert_eq!(service.list_meters(own).await.unwrap().into_inner().meters.len(), 1, "nothing was created");
    suite
}

/// A retried SetPrice answers as the first time and sets nothing again; a
/// record an earlier release kept (the encoded response) answers as it did.
async fn a_retried_set_price_answers_as_the_first_time(suite: Suite) -> Suite {
    priced_meter(&suite, "tokens", "1").await;
    let request = |unit_price: &str, minutes: i64, idempotency_key: &str| pb::SetPriceRequest {
        meter_code: "tokens".into(),
        effective_from: Some(to_timestamp(chrono::Utc::now() + chrono::Duration::minutes(minutes))),
        tiers: flat(unit_price),
        overrides: Vec::new(),
        idempotency_key: idempotency_key.into(),
    };
    let schedule = || async {
        let request = pb::GetPriceRequest { meter_code: "tokens".into(), at: None };
        suite.metering.clone().get_price(request).await.unwrap().into_inner().schedule
    };
    let first_key = key();
    let sent = request("2", 60, &first_key);
    let first = suite.metering.clone().set_price(sent.clone()).await.unwrap().into_inner();
    let again = suite.metering.clone().set_price(sent.clone()).await.unwrap().into_inner();
    assert_eq!(again, first);
    assert_eq!(schedule().await.len(), 2, "set once");
    let changed = pb::SetPriceRequest { tiers: flat("3"), ..sent };
    assert_refused(suite.metering.clone().set_price(changed).await, Code::AlreadyExists, "IDEMPOTENCY_KEY_REUSED");

    let legacy = request("5", 120, &key());
    let recorded = pb::SetPriceResponse {
        price: Some(pb::Price {
            meter_code: "tokens".into(),
            effective_from: legacy.effective_from,
            tiers: flat("5"),
            overrides: Vec::new(),
            created_at: None,
        }),
    };
    suite
        .metering_database()
        .execute(
            "INSERT INTO idempotency_keys (tenant_id, \"key\", method, request_hash, response, created_at) \
             VALUES ($1, $2, 'SetPrice', $3, $4, $5)",
            vec![
                suite.tenant.0.into(),
                legacy.idempotency_key.clone().into(),
                reservoir_common::idempotency::request_hash(&legacy).into(),
                prost::Message::encode_to_vec(&recorded).into(),
                chrono::Utc::now().into(),
            ],
        )
        .await;
    assert_eq!(suite.metering.clone().set_price(legacy).await.unwrap().into_inner(), recorded);
    assert_eq!(schedule().await.len(), 2, "a replay sets nothing");
    suite
}

crate::on_both_backends!(
    a_retried_set_price_answers_as_the_first_time,
    a_service_key_naming_no_tenant_is_unauthenticated,
    a_new_price_applies_from_its_instant_and_never_to_earlier_usage,
    a_dimension_override_prices_matching_usage,
    prices_and_meters_are_checked,
);
