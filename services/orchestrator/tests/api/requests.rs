//! Bad requests are refused by field (or NOT_FOUND) and change nothing.

use reservoir_proto::orchestrator as pb;
use tonic::Code;

use crate::helpers::*;

fn start(account_id: &str, credits: &str, method: &str) -> pb::StartTopUpRequest {
    pb::StartTopUpRequest {
        account_id: account_id.into(),
        credits: credits.into(),
        payment_method_id: method.into(),
        reconcile_later: false,
        idempotency_key: key(),
        credits_expire_at: None,
        bonus: None,
    }
}

async fn bad_top_up_requests_are_refused_by_field_and_start_nothing(suite: Suite) -> Suite {
    let account = open_funded_account(&suite.wallet, "0").await;
    let method = uuid::Uuid::now_v7().to_string();
    let mut top_ups = suite.top_ups.clone();
    for (request, field) in [
        (start("nope", "10", &method), "account_id"),
        (start(&account.id, "10", ""), "payment_method_id"),
        (start(&account.id, "10", "x"), "payment_method_id"),
        (start(&account.id, "", &method), "credits"),
        (start(&account.id, "0", &method), "credits"),
        (start(&account.id, "-1", &method), "credits"),
        (start(&account.id, "1.001", &method), "credits"),
    ] {
        assert_invalid(top_ups.start_top_up(request).await, field);
    }
    let mut both = start(&account.id, "10", &method);
    both.reconcile_later = true;
    assert_invalid(top_ups.start_top_up(both).await, "reconcile_later");
    let mut no_key = start(&account.id, "10", &method);
    no_key.idempotency_key = String::new();
    assert_invalid(top_ups.start_top_up(no_key).await, "idempotency_key");
    let unknown = start(&uuid::Uuid::now_v7().to_string(), "10", &method);
    assert_refused(top_ups.start_top_up(unknown).await, Code::NotFound, "NOT_FOUND");
    let listed = top_ups
        .list_top_ups(pb::ListTopUpsRequest { account_id: account.id.clone(), ..Default::default() })
        .await
        .unwrap()
        .into_inner();
    assert!(listed.top_ups.is_empty(), "nothing was started");
    assert_invalid(top_ups.get_top_up(pb::GetTopUpRequest { top_up_id: "x".into() }).await, "top_up_id");
    let missing = pb::GetTopUpRequest { top_up_id: uuid::Uuid::now_v7().to_string() };
    assert_refused(top_ups.get_top_up(missing).await, Code::NotFound, "NOT_FOUND");
    suite
}

async fn bad_auto_replenish_settings_are_refused_by_field(suite: Suite) -> Suite {
    let account = open_funded_account(&suite.wallet, "0").await;
    let method = uuid::Uuid::now_v7().to_string();
    let settings = |threshold: &str, fixed: &str, target: &str, per_day: u32| pb::ConfigureAutoReplenishRequest {
        auto_replenish: Some(pb::AutoReplenish {
            account_id: account.id.clone(),
            threshold: threshold.into(),
            fixed_amount: fixed.into(),
            target_balance: target.into(),
            payment_method_id: method.clone(),
            max_top_ups_per_day: per_day,
            ..Default::default()
        }),
    };
    let mut top_ups = suite.top_ups.clone();
    for (request, field) in [
        (settings("0", "10", "", 3), "auto_replenish.threshold"),
        (settings("10", "10", "50", 3), "auto_replenish.fixed_amount"),
        (settings("10", "", "", 3), "auto_replenish.fixed_amount"),
        (settings("10", "", "5", 3), "auto_replenish.target_balance"),
        (settings("10", "20", "", 0), "auto_replenish.max_top_ups_per_day"),
        (settings("10", "20", "", 101), "auto_replenish.max_top_ups_per_day"),
    ] {
        assert_invalid(top_ups.configure_auto_replenish(request).await, field);
    }
    // A FIXED amount outside the per-top-up bounds would not be what it says.
    let mut below = settings("10", "20", "", 3);
    below.auto_replenish.as_mut().unwrap().min_credits_per_top_up = "25".into();
    assert_invalid(top_ups.configure_auto_replenish(below).await, "auto_replenish.fixed_amount");
    let mut above = settings("10", "20", "", 3);
    above.auto_replenish.as_mut().unwrap().max_credits_per_top_up = "15".into();
    assert_invalid(top_ups.configure_auto_replenish(above).await, "auto_replenish.fixed_amount");
    let mut over = settings("10", "20", "", 3);
    over.auto_replenish.as_mut().unwrap().low_balance_warning_percent = 101;
    assert_invalid(top_ups.configure_auto_replenish(over).await, "auto_replenish.low_balance_warning_percent");
    let get = pb::GetAutoReplenishRequest { account_id: account.id.clone() };
    assert_refused(top_ups.get_auto_replenish(get.clone()).await, Code::NotFound, "NOT_FOUND");
    // A good one is stored, and the wallet learns the threshold.
    let stored = top_ups.configure_auto_replenish(settings("10", "20", "", 3)).await.unwrap().into_inner();
    assert_eq!(stored.auto_replenish.unwrap().fixed_amount, "20");
    let wallet_account = suite
        .wallet
        .clone()
        .get_account(reservoir_proto::wallet::GetAccountRequest { account_id: account.id.clone() })
        .await
        .unwrap()
        .into_inner()
        .account
        .unwrap();
    assert_eq!(wallet_account.low_balance_threshold, "10.00");
    assert_eq!(wallet_account.low_balance_warning, "", "no warning was asked for");
    // A warning at 30% of the refill amount: of the fixed amount, or of the
    // target balance, rounded up to the unit.
    let mut warned = settings("10", "20", "", 3);
    warned.auto_replenish.as_mut().unwrap().low_balance_warning_percent = 30;
    let stored = top_ups.configure_auto_replenish(warned).await.unwrap().into_inner();
    assert_eq!(stored.auto_replenish.unwrap().low_balance_warning_percent, 30);
    let account_now = |wallet: reservoir_testing::wallet::Client| {
        let id = account.id.clone();
        async move {
            let request = reservoir_proto::wallet::GetAccountRequest { account_id: id };
            wallet.clone().get_account(request).await.unwrap().into_inner().account.unwrap()
        }
    };
    assert_eq!(account_now(suite.wallet.clone()).await.low_balance_warning, "6.00");
    let mut to_target = settings("10", "", "55.55", 3);
    to_target.auto_replenish.as_mut().unwrap().low_balance_warning_percent = 30;
    top_ups.configure_auto_replenish(to_target).await.unwrap();
    assert_eq!(account_now(suite.wallet.clone()).await.low_balance_warning, "16.67");
    top_ups.configure_auto_replenish(settings("10", "20", "", 3)).await.unwrap();
    // Another tenant sees none of it.
    let mut other = suite.other_top_ups.clone();
    assert_refused(other.get_auto_replenish(get).await, Code::NotFound, "NOT_FOUND");
    let disabled = top_ups
        .disable_auto_replenish(pb::DisableAutoReplenishRequest { account_id: account.id.clone() })
        .await
        .unwrap()
        .into_inner();
    assert!(!disabled.auto_replenish.unwrap().enabled);
    suite
}

async fn bad_recurring_settings_are_refused_by_field(suite: Suite) -> Suite {
    let account = open_funded_account(&suite.wallet, "0").await;
    let recurring = |interval: pb::Interval, mode: pb::RecurringMode, method: &str, credits: &str| {
        pb::ConfigureRecurringTopUpRequest {
            recurring_top_up: Some(pb::RecurringTopUp {
                account_id: account.id.clone(),
                credits: credits.into(),
                interval: interval.into(),
                mode: mode.into(),
                payment_method_id: method.into(),
                ..Default::default()
            }),
        }
    };
    let mut top_ups = suite.top_ups.clone();
    let method = uuid::Uuid::now_v7().to_string();
    for (request, field) in [
        (recurring(pb::Interval::Unspecified, pb::RecurringMode::Granted, "", "5"), "recurring_top_up.interval"),
        (recurring(pb::Interval::Weekly, pb::RecurringMode::Unspecified, "", "5"), "recurring_top_up.mode"),
        (recurring(pb::Interval::Weekly, pb::RecurringMode::Paid, "", "5"), "recurring_top_up.payment_method_id"),
        (recurring(pb::Interval::Weekly, pb::RecurringMode::Paid, &method, "0"), "recurring_top_up.credits"),
    ] {
        assert_invalid(top_ups.configure_recurring_top_up(request).await, field);
    }
    let get = pb::GetRecurringTopUpRequest { account_id: account.id.clone() };
    assert_refused(top_ups.get_recurring_top_up(get).await, Code::NotFound, "NOT_FOUND");
    suite
}

crate::on_both_backends!(
    bad_top_up_requests_are_refused_by_field_and_start_nothing,
    bad_auto_replenish_settings_are_refused_by_field,
    bad_recurring_settings_are_refused_by_field,
);
