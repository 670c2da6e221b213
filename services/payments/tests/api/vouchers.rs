use std::collections::HashSet;
use std::time::Duration;

use reservoir_common::time::to_timestamp;
use reservoir_payments::domain::VoucherCode;
use reservoir_proto::payments as pb;
use tonic::Code;

use crate::helpers::*;

/// A code whose check character is replaced by another one.
fn with_wrong_check(code: &str) -> String {
    let (body, check) = code.split_at(code.len() - 1);
    let replacement = if check == "0" { "1" } else { "0" };
    format!("{body}{replacement}")
}

async fn a_batch_has_unique_well_formed_codes_that_verify(suite: Suite) -> Suite {
    credit_account(&suite).await;
    let mut client = suite.payments.clone();
    let request = pb::CreateVoucherBatchRequest {
        count: 200,
        value: "25.5".into(),
        unit_code: "CREDIT".into(),
        expires_at: None,
        idempotency_key: key(),
    };
    let batch = client.create_voucher_batch(request.clone()).await.unwrap().into_inner();
    assert_eq!(batch.codes.len(), 200);
    assert_eq!(batch.vouchers.len(), 200);
    let distinct: HashSet<&String> = batch.codes.iter().collect();
    assert_eq!(distinct.len(), 200, "codes are unique");
    for code in &batch.codes {
        let groups: Vec<&str> = code.split('-').collect();
        assert_eq!(groups.iter().map(|group| group.len()).collect::<Vec<_>>(), vec![4, 4, 4, 4, 1], "{code}");
        assert!(
            groups[..4].iter().all(|group| group.chars().all(|c| "0123456789ABCDEFGHJKMNPQRSTVWXYZ".contains(c))),
            "{code} is Crockford base32"
        );
        assert!(VoucherCode::parse(code).is_ok(), "{code} verifies");
    }
    for voucher in &batch.vouchers {
        assert_eq!(voucher.batch_id, batch.batch_id);
        assert_eq!(voucher.value, "25.5");
        assert_eq!(voucher.unit_code, "CREDIT");
        assert_eq!(voucher.redeemed_by_account_id, "");
    }
    assert_eq!(
        client.create_voucher_batch(request.clone()).await.unwrap().into_inner(),
        batch,
        "a retry shows the same codes"
    );
    let changed = pb::CreateVoucherBatchRequest { count: 3, ..request.clone() };
    assert_refused(client.create_voucher_batch(changed).await, Code::AlreadyExists, "IDEMPOTENCY_KEY_REUSED");

    let invalid = |change: fn(&mut pb::CreateVoucherBatchRequest)| {
        let mut request = pb::CreateVoucherBatchRequest { idempotency_key: key(), ..request.clone() };
        change(&mut request);
        request
    };
    assert_invalid(client.create_voucher_batch(invalid(|r| r.count = 0)).await, "count");
    assert_invalid(client.create_voucher_batch(invalid(|r| r.count = 10_001)).await, "count");
    assert_invalid(client.create_voucher_batch(invalid(|r| r.value = "0".into())).await, "value");
    assert_invalid(client.create_voucher_batch(invalid(|r| r.value = "1.000000001".into())).await, "value");
    let cents = |r: &mut pb::CreateVoucherBatchRequest| {
        r.unit_code = "USD".into();
        r.value = "1.005".into();
    };
    assert_invalid(client.create_voucher_batch(invalid(cents)).await, "value");
    assert_invalid(client.create_voucher_batch(invalid(|r| r.unit_code = "no spaces".into())).await, "unit_code");
    // Only in a unit the tenant keeps accounts in, and no finer than it counts.
    assert_invalid(client.create_voucher_batch(invalid(|r| r.unit_code = "NOSUCHUNIT".into())).await, "unit_code");
    assert_invalid(client.create_voucher_batch(invalid(|r| r.unit_code = "EUR".into())).await, "unit_code");
    assert_invalid(client.create_voucher_batch(invalid(|r| r.value = "25.555".into())).await, "value");
    let theirs = suite
        .other
        .clone()
        .create_voucher_batch(pb::CreateVoucherBatchRequest { idempotency_key: key(), ..request.clone() })
        .await;
    assert_invalid(theirs, "unit_code");
    assert_invalid(
        client
            .create_voucher_batch(invalid(|r| {
                r.expires_at = Some(to_timestamp(chrono::Utc::now() - chrono::Duration::hours(1)))
            }))
            .await,
        "expires_at",
    );
    suite
}

async fn a_voucher_raced_for_by_two_accounts_is_redeemed_once(suite: Suite) -> Suite {
    let batch = voucher_batch(&suite, 1, "50").await;
    let code = &batch.codes[0];
    let (first_account, second_account) = (account(&suite).await, account(&suite).await);
    // Asked for in another unit, it is refused and stays unredeemed.
    let mut in_euros = redeem_request(code, &first_account);
    in_euros.unit_code = "EUR".into();
    assert_refused(
        suite.payments.clone().redeem_voucher(in_euros).await,
        Code::FailedPrecondition,
        "VOUCHER_UNIT_MISMATCH",
    );
    // Spent only on an account of the caller's: a made-up one is not found,
    // and the voucher stays to be redeemed.
    let made_up = redeem_request(code, &uuid::Uuid::now_v7().to_string());
    assert_refused(suite.payments.clone().redeem_voucher(made_up).await, Code::NotFound, "NOT_FOUND");
    let (mut first, mut second) = (suite.payments.clone(), suite.payments.clone());
    let (a, b) = tokio::join!(
        first.redeem_voucher(redeem_request(code, &first_account)),
        second.redeem_voucher(redeem_request(code, &second_account)),
    );
    let (winner, loser) = match (a, b) {
        (Ok(won), Err(lost)) => ((won.into_inner(), first_account), lost),
        (Err(lost), Ok(won)) => ((won.into_inner(), second_account), lost),
        (a, b) => panic!("exactly one redemption must succeed: {a:?} {b:?}"),
    };
    assert_refused(Err::<(), _>(loser), Code::FailedPrecondition, "VOUCHER_ALREADY_REDEEMED");
    let (redeemed, winner_account) = winner;
    let voucher = redeemed.voucher.unwrap();
    assert_eq!(voucher.redeemed_by_account_id, winner_account);
    assert!(voucher.redeemed_at.is_some());
    assert_eq!(voucher.value, "50");
    let retried = suite.payments.clone().redeem_voucher(redeem_request(code, &winner_account)).await.unwrap();
    assert_eq!(retried.into_inner().voucher.unwrap(), voucher, "the winner's retry gets the voucher back");
    let typed = code.to_lowercase().replace('-', " ");
    let retried = suite.payments.clone().redeem_voucher(redeem_request(&typed, &winner_account)).await.unwrap();
    assert_eq!(retried.into_inner().voucher.unwrap().id, voucher.id, "codes are read as people type them");
    suite
}

async fn a_wrong_check_character_is_invalid_and_not_counted(suite: Suite) -> Suite {
    let batch = voucher_batch(&suite, 1, "5").await;
    let code = &batch.codes[0];
    let account_id = account(&suite).await;
    let mut client = suite.payments.clone();
    for _ in 0..8 {
        assert_invalid(client.redeem_voucher(redeem_request(&with_wrong_check(code), &account_id)).await, "code");
    }
    assert_invalid(client.redeem_voucher(redeem_request("not a code", &account_id)).await, "code");
    assert_invalid(client.redeem_voucher(redeem_request("", &account_id)).await, "code");
    let redeemed = client.redeem_voucher(redeem_request(code, &account_id)).await.unwrap().into_inner();
    assert_eq!(redeemed.voucher.unwrap().redeemed_by_account_id, account_id, "slips are not counted as guesses");
    suite
}

async fn five_unknown_codes_lock_the_account_out_for_a_while(suite: Suite) -> Suite {
    let batch = voucher_batch(&suite, 1, "5").await;
    let code = &batch.codes[0];
    let account_id = account(&suite).await;
    let mut client = suite.payments.clone();
    for _ in 0..5 {
        let guess = VoucherCode::generate().display();
        assert_refused(
            client.redeem_voucher(redeem_request(&guess, &account_id)).await,
            Code::NotFound,
            "VOUCHER_NOT_FOUND",
        );
    }
    assert_refused(
        client.redeem_voucher(redeem_request(code, &account_id)).await,
        Code::ResourceExhausted,
        "VOUCHER_ATTEMPTS_EXCEEDED",
    );
    assert_refused(
        client.redeem_voucher(redeem_request(&with_wrong_check(code), &account_id)).await,
        Code::ResourceExhausted,
        "VOUCHER_ATTEMPTS_EXCEEDED",
    );
    let other = account(&suite).await;
    let redeemed = client.redeem_voucher(redeem_request(code, &other)).await.unwrap().into_inner();
    assert_eq!(redeemed.voucher.unwrap().redeemed_by_account_id, other, "other accounts are not held back");
    suite
}

async fn an_expired_voucher_is_refused(suite: Suite) -> Suite {
    let redeemer = account(&suite).await;
    let mut client = suite.payments.clone();
    let batch = client
        .create_voucher_batch(pb::CreateVoucherBatchRequest {
            count: 1,
            value: "3".into(),
            unit_code: "USD".into(),
            expires_at: Some(to_timestamp(chrono::Utc::now() + chrono::Duration::seconds(2))),
            idempotency_key: key(),
        })
        .await
        .unwrap()
        .into_inner();
    tokio::time::sleep(Duration::from_millis(2_200)).await;
    assert_refused(
        client.redeem_voucher(redeem_request(&batch.codes[0], &redeemer)).await,
        Code::FailedPrecondition,
        "VOUCHER_EXPIRED",
    );
    let theirs = reservoir_testing::wallet::open_funded_account(&suite.other_wallet, "0").await.id;
    let other_tenant = suite.other.clone().redeem_voucher(redeem_request(&batch.codes[0], &theirs)).await;
    assert_refused(other_tenant, Code::NotFound, "VOUCHER_NOT_FOUND");
    suite
}

/// Replay records an earlier release kept hold the encoded response; a
/// retry still answers with it, and does nothing again.
async fn answers_recorded_by_an_earlier_release_replay_as_recorded(suite: Suite) -> Suite {
    credit_account(&suite).await;
    let account = reservoir_testing::wallet::open_funded_account(&suite.wallet, "0").await.id;
    let batch_request = pb::CreateVoucherBatchRequest {
        count: 1,
        value: "5".into(),
        unit_code: "CREDIT".into(),
        expires_at: None,
        idempotency_key: key(),
    };
    let recorded_batch = pb::CreateVoucherBatchResponse {
        batch_id: uuid::Uuid::now_v7().to_string(),
        codes: vec!["an-earlier-code".into()],
        vouchers: Vec::new(),
    };
    let method_request = pb::AddPaymentMethodRequest {
        account_id: account.clone(),
        kind: pb::PaymentMethodKind::Card.into(),
        gateway_token: "tok_succeed".into(),
        label: "earlier".into(),
        idempotency_key: key(),
    };
    let recorded_method = pb::AddPaymentMethodResponse {
        payment_method: Some(pb::PaymentMethod {
            id: uuid::Uuid::now_v7().to_string(),
            account_id: account.clone(),
            label: "earlier".into(),
            ..Default::default()
        }),
    };
    let database = suite.payments_database();
    let tenant = suite.tenant;
    let record = |method: &'static str, key: &str, hash: String, encoded: Vec<u8>| {
        let values: Vec<sea_orm::Value> = vec![
            tenant.0.into(),
            key.to_owned().into(),
            method.into(),
            hash.into(),
            encoded.into(),
            chrono::Utc::now().into(),
        ];
        async move {
            database
                .execute(
                    "INSERT INTO idempotency_keys (tenant_id, \"key\", method, request_hash, response, created_at) \
                     VALUES ($1, $2, $3, $4, $5, $6)",
                    values,
                )
                .await;
        }
    };
    use prost::Message;
    use reservoir_common::idempotency::request_hash;
    let (batch_hash, method_hash) = (request_hash(&batch_request), request_hash(&method_request));
    record("CreateVoucherBatch", &batch_request.idempotency_key, batch_hash, recorded_batch.encode_to_vec()).await;
    record("AddPaymentMethod", &method_request.idempotency_key, method_hash, recorded_method.encode_to_vec()).await;
    let mut client = suite.payments.clone();
    assert_eq!(client.create_voucher_batch(batch_request).await.unwrap().into_inner(), recorded_batch);
    assert_eq!(client.add_payment_method(method_request).await.unwrap().into_inner(), recorded_method);
    let listed = pb::ListPaymentMethodsRequest { account_id: account };
    assert!(client.list_payment_methods(listed).await.unwrap().into_inner().payment_methods.is_empty(), "none added");
    suite
}

crate::on_both_backends!(
    answers_recorded_by_an_earlier_release_replay_as_recorded,
    a_batch_has_unique_well_formed_codes_that_verify,
    a_voucher_raced_for_by_two_accounts_is_redeemed_once,
    a_wrong_check_character_is_invalid_and_not_counted,
    five_unknown_codes_lock_the_account_out_for_a_while,
    an_expired_voucher_is_refused,
);
