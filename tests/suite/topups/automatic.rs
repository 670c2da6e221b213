//! Automatic top-ups (FIXED and TO_TARGET, paused after declines, held to a
//! daily limit) and recurring ones across a restart.

use super::*;

async fn automatic_top_ups(backend: Backend) {
    let Some(suite) = Suite::start(backend).await else {
        return;
    };
    let mut orchestrator = suite.orchestrator().await;
    let mut metering = crate::metering::metering_client(suite.processes[1].address(), &suite.api_key).await;
    crate::metering::price_tokens(&mut metering).await;
    let ingest = |account: &wallet_pb::Account, tokens: &str| {
        let mut metering = metering.clone();
        let event = reservoir_proto::metering::UsageEvent {
            event_id: key(),
            account_id: account.id.clone(),
            meter_code: "tokens".into(),
            quantity: tokens.into(),
            ..Default::default()
        };
        async move {
            metering
                .ingest_events(reservoir_proto::metering::IngestEventsRequest {
                    events: vec![event],
                    asynchronous: false,
                })
                .await
                .unwrap();
        }
    };

    // FIXED: metered usage takes 100 down to 15, below 20: 50 are added.
    let fixed = open_funded_account(&suite.wallet, "100").await;
    let card = suite.card(&fixed, "tok_succeed").await;
    configure_auto(&mut orchestrator, &fixed, &card, "20", "50", "", 5).await;
    ingest(&fixed, "8500").await;
    eventually("the FIXED top-up", || async { available(&suite.wallet, &fixed).await == d("65") }).await;
    // The operator's usage report for the day shows what was metered.
    let metering_endpoint = format!("http://{}", suite.processes[1].address());
    let from = chrono::Utc::now().format("%Y-%m-%d").to_string();
    let to = (chrono::Utc::now() + chrono::Duration::days(1)).format("%Y-%m-%d").to_string();
    let mut usage =
        suite.environment.command(&["report", "usage", &fixed.id, "--from", &from, "--to", &to, "--group-by", "day"]);
    usage.env("RESERVOIR_API_KEY", &suite.api_key).env("RESERVOIR_METERING_ENDPOINT", &metering_endpoint);
    let usage = usage.output().await.unwrap();
    assert!(usage.status.success(), "{}", String::from_utf8_lossy(&usage.stderr));
    let usage = String::from_utf8_lossy(&usage.stdout).into_owned();
    assert!(usage.lines().any(|line| line.contains(",tokens,,8500,85,")), "{usage}");

    // TO_TARGET: from 10 back up to 100.
    let target = open_funded_account(&suite.wallet, "100").await;
    let card = suite.card(&target, "tok_succeed").await;
    configure_auto(&mut orchestrator, &target, &card, "20", "", "100", 5).await;
    ingest(&target, "9000").await;
    eventually("the TO_TARGET top-up", || async { available(&suite.wallet, &target).await == d("100") }).await;
    let top_ups = suite.top_ups(&target).await;
    assert_eq!(top_ups.len(), 1);
    assert_eq!((top_ups[0].credits.as_str(), top_ups[0].trigger), ("90", i32::from(pb::TopUpTrigger::AutoReplenish)));

    // Disabled, a dip below the threshold starts nothing.
    let disabled = open_funded_account(&suite.wallet, "30").await;
    let card = suite.card(&disabled, "tok_succeed").await;
    configure_auto(&mut orchestrator, &disabled, &card, "20", "10", "", 5).await;
    orchestrator
        .disable_auto_replenish(pb::DisableAutoReplenishRequest { account_id: disabled.id.clone() })
        .await
        .unwrap();
    suite.debit(&disabled, "15").await;

    // A top-up too small to lift the balance above the threshold is
    // followed by another: 30 - 25 = 5, + 10 = 15, + 10 = 25.
    let short = open_funded_account(&suite.wallet, "30").await;
    let card = suite.card(&short, "tok_succeed").await;
    configure_auto(&mut orchestrator, &short, &card, "20", "10", "", 5).await;
    suite.debit(&short, "25").await;
    eventually("the second top-up", || async { available(&suite.wallet, &short).await == d("25") }).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(suite.top_ups(&short).await.len(), 2);
    assert_eq!(available(&suite.wallet, &short).await, d("25"));

    // A declining card: three declines in a row pause auto-replenish.
    let declining = open_funded_account(&suite.wallet, "30").await;
    let card = suite.card(&declining, "tok_decline").await;
    configure_auto(&mut orchestrator, &declining, &card, "20", "10", "", 10).await;
    for crossing in 1..=4_usize {
        suite.debit(&declining, "15").await;
        let expected = crossing.min(3);
        eventually("the declined top-up", || async {
            let top_ups = suite.top_ups(&declining).await;
            top_ups.len() == expected && top_ups.iter().all(|top_up| status(top_up) == pb::TopUpStatus::Failed)
        })
        .await;
        // Back above the threshold for the next crossing.
        suite.grant(&declining, "15").await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(suite.top_ups(&declining).await.len(), 3, "paused: no fourth charge");
    let config = orchestrator
        .get_auto_replenish(pb::GetAutoReplenishRequest { account_id: declining.id.clone() })
        .await
        .unwrap()
        .into_inner()
        .auto_replenish
        .unwrap();
    assert!(config.paused);
    assert_eq!(config.consecutive_declines, 3);

    // The daily limit: two a day, however often the balance dips.
    let limited = open_funded_account(&suite.wallet, "30").await;
    let card = suite.card(&limited, "tok_succeed").await;
    configure_auto(&mut orchestrator, &limited, &card, "20", "10", "", 2).await;
    for crossing in 1..=3_usize {
        suite.debit(&limited, "15").await;
        let expected = crossing.min(2);
        eventually("the limited top-up", || async {
            let top_ups = suite.top_ups(&limited).await;
            top_ups.len() == expected && top_ups.iter().all(|top_up| status(top_up) == pb::TopUpStatus::Succeeded)
        })
        .await;
        // Well above the threshold again for the next crossing.
        suite.grant(&limited, "5").await;
    }
    let events: Vec<pb::Event> = {
        let mut stream =
            orchestrator.watch_events(pb::WatchEventsRequest { after_sequence: 0 }).await.unwrap().into_inner();
        let mut events = Vec::new();
        while let Ok(Ok(Some(message))) = tokio::time::timeout(Duration::from_millis(500), stream.message()).await {
            events.extend(message.event);
        }
        events
    };
    let of = |account: &wallet_pb::Account, kind: pb::EventType| {
        events.iter().filter(|event| event.account_id == account.id && event.r#type == i32::from(kind)).count()
    };
    assert_eq!(of(&declining, pb::EventType::AutoReplenishPaused), 1);
    assert_eq!(of(&limited, pb::EventType::AutoReplenishLimited), 1);
    assert_eq!(of(&fixed, pb::EventType::TopUpSucceeded), 1);
    assert_eq!(suite.top_ups(&limited).await.len(), 2);
    assert!(suite.top_ups(&disabled).await.is_empty(), "disabled: no top-up");
    assert_eq!(available(&suite.wallet, &disabled).await, d("15"));
    for account in [&fixed, &target, &short, &declining, &limited] {
        assert_settled_once(&suite, account).await;
    }
    suite.stop().await;
}

async fn recurring_top_ups_fire_once_per_period_across_a_restart(backend: Backend) {
    let Some(mut suite) = Suite::start(backend).await else {
        return;
    };
    let mut orchestrator = suite.orchestrator().await;
    let account = open_funded_account(&suite.wallet, "0").await;
    let card = suite.card(&account, "tok_succeed").await;
    let configure = |first: chrono::DateTime<chrono::Utc>| pb::ConfigureRecurringTopUpRequest {
        recurring_top_up: Some(pb::RecurringTopUp {
            account_id: account.id.clone(),
            credits: "10".into(),
            interval: pb::Interval::Weekly.into(),
            mode: pb::RecurringMode::Paid.into(),
            payment_method_id: card.clone(),
            credits_expire_after_days: 30,
            next_run_at: Some(reservoir_common::time::to_timestamp(first)),
            ..Default::default()
        }),
    };
    // Three weeks missed while nothing ran: one top-up, not three. The
    // hour keeps the fourth period off `now` itself: a worker pass that
    // began a moment before `now` would rightly see that period as still
    // to come, and fire it once it came, a second top-up for a period of
    // its own (seen once in make test under load).
    let now = chrono::Utc::now();
    let first_due = now - chrono::Duration::days(21) + chrono::Duration::hours(1);
    orchestrator.configure_recurring_top_up(configure(first_due)).await.unwrap();
    eventually("the first period", || async { available(&suite.wallet, &account).await == d("10") }).await;
    let schedule = orchestrator
        .get_recurring_top_up(pb::GetRecurringTopUpRequest { account_id: account.id.clone() })
        .await
        .unwrap()
        .into_inner()
        .recurring_top_up
        .unwrap();
    assert_eq!(schedule.runs, 1);
    let next = reservoir_common::time::from_timestamp(schedule.next_run_at.as_ref().unwrap()).unwrap();
    assert!(next > now && next <= now + chrono::Duration::days(7), "the next period is within a week: {next}");

    // A restart fires nothing that already fired.
    suite.restart_orchestrator("").await;
    let mut orchestrator = suite.orchestrator().await;
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    assert_eq!(suite.top_ups(&account).await.len(), 1);
    // Nor does setting the schedule back to the period that fired: it moves on.
    orchestrator.configure_recurring_top_up(configure(first_due)).await.unwrap();
    eventually("the schedule moving on", || {
        let mut orchestrator = orchestrator.clone();
        let account_id = account.id.clone();
        async move {
            let schedule = orchestrator
                .get_recurring_top_up(pb::GetRecurringTopUpRequest { account_id })
                .await
                .unwrap()
                .into_inner()
                .recurring_top_up
                .unwrap();
            reservoir_common::time::from_timestamp(schedule.next_run_at.as_ref().unwrap()).unwrap() > now
        }
    })
    .await;
    assert_eq!(suite.top_ups(&account).await.len(), 1);

    // The next period comes due: it fires once more.
    orchestrator.configure_recurring_top_up(configure(chrono::Utc::now() - chrono::Duration::hours(1))).await.unwrap();
    eventually("the second period", || async { available(&suite.wallet, &account).await == d("20") }).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let top_ups = suite.top_ups(&account).await;
    assert_eq!(top_ups.len(), 2);
    assert!(top_ups.iter().all(|top_up| top_up.trigger == i32::from(pb::TopUpTrigger::Recurring)));
    assert!(top_ups.iter().all(|top_up| top_up.credits_expire_at.is_some()));
    assert_settled_once(&suite, &account).await;

    // A GRANTED allowance: free PROMOTIONAL credits, no invoice, no payment.
    let allowed = open_funded_account(&suite.wallet, "0").await;
    orchestrator
        .configure_recurring_top_up(pb::ConfigureRecurringTopUpRequest {
            recurring_top_up: Some(pb::RecurringTopUp {
                account_id: allowed.id.clone(),
                credits: "7".into(),
                interval: pb::Interval::Monthly.into(),
                mode: pb::RecurringMode::Granted.into(),
                next_run_at: Some(reservoir_common::time::to_timestamp(chrono::Utc::now())),
                ..Default::default()
            }),
        })
        .await
        .unwrap();
    eventually("the allowance", || async { available(&suite.wallet, &allowed).await == d("7") }).await;
    let allowance = suite.top_ups(&allowed).await;
    assert_eq!(allowance.len(), 1);
    assert!(allowance[0].invoice_id.is_empty() && allowance[0].payment_id.is_empty(), "{allowance:?}");
    assert!(suite.payments_of(&allowed).await.is_empty());
    let balance = balance(&suite.wallet, &allowed).await;
    assert_eq!(d(&balance.promotional), d("7"));

    // A monthly schedule first run on a 31st comes back to the 31st after
    // a shorter month, whatever ran in between.
    use chrono::Datelike;
    let mut anchor = (chrono::Utc::now() - chrono::Duration::days(40)).date_naive();
    while anchor.day() != 31 {
        anchor = anchor.pred_opt().unwrap();
    }
    let anchor = anchor.and_hms_opt(9, 0, 0).unwrap().and_utc();
    let monthly = open_funded_account(&suite.wallet, "0").await;
    orchestrator
        .configure_recurring_top_up(pb::ConfigureRecurringTopUpRequest {
            recurring_top_up: Some(pb::RecurringTopUp {
                account_id: monthly.id.clone(),
                credits: "3".into(),
                interval: pb::Interval::Monthly.into(),
                mode: pb::RecurringMode::Granted.into(),
                next_run_at: Some(reservoir_common::time::to_timestamp(anchor)),
                ..Default::default()
            }),
        })
        .await
        .unwrap();
    eventually("the monthly period", || async { available(&suite.wallet, &monthly).await == d("3") }).await;
    let schedule = orchestrator
        .get_recurring_top_up(pb::GetRecurringTopUpRequest { account_id: monthly.id.clone() })
        .await
        .unwrap()
        .into_inner()
        .recurring_top_up
        .unwrap();
    let next = reservoir_common::time::from_timestamp(schedule.next_run_at.as_ref().unwrap()).unwrap();
    let last_of_its_month = (next + chrono::Duration::days(1)).day() == 1;
    assert!(next.day() == 31 || last_of_its_month, "the anchor's day, or the month's last: {next} from {anchor}");
    assert_eq!(next.time(), anchor.time(), "{next}");
    assert!(next > chrono::Utc::now() && next <= chrono::Utc::now() + chrono::Duration::days(31), "{next}");
    suite.stop().await;
}

async fn a_recurring_allowance_rolls_over_capped_once_at_each_turn(backend: Backend) {
    let Some(mut suite) = Suite::start(backend).await else {
        return;
    };
    let mut orchestrator = suite.orchestrator().await;
    let account = open_funded_account(&suite.wallet, "0").await;
    let configure =
        |first: chrono::DateTime<chrono::Utc>, rollover: pb::RolloverPolicy| pb::ConfigureRecurringTopUpRequest {
            recurring_top_up: Some(pb::RecurringTopUp {
                account_id: account.id.clone(),
                credits: "10".into(),
                interval: pb::Interval::Monthly.into(),
                mode: pb::RecurringMode::Granted.into(),
                next_run_at: Some(reservoir_common::time::to_timestamp(first)),
                rollover: Some(rollover),
                ..Default::default()
            }),
        };
    let half = pb::RolloverPolicy {
        mode: pb::RolloverMode::Capped.into(),
        cap_percent: 50,
        expire_after_days: 60,
        ..Default::default()
    };
    // Refused, naming the field, and nothing configured.
    let no_cap = pb::RolloverPolicy { mode: pb::RolloverMode::Capped.into(), ..Default::default() };
    assert_invalid(
        orchestrator.configure_recurring_top_up(configure(chrono::Utc::now(), no_cap)).await,
        "recurring_top_up.rollover.cap_amount",
    );
    let stray = pb::RolloverPolicy { mode: pb::RolloverMode::All.into(), cap_amount: "3".into(), ..Default::default() };
    assert_invalid(
        orchestrator.configure_recurring_top_up(configure(chrono::Utc::now(), stray)).await,
        "recurring_top_up.rollover.cap_amount",
    );
    let fine_grained =
        pb::RolloverPolicy { mode: pb::RolloverMode::Capped.into(), cap_amount: "1.234".into(), ..Default::default() };
    assert_invalid(
        orchestrator.configure_recurring_top_up(configure(chrono::Utc::now(), fine_grained)).await,
        "recurring_top_up.rollover.cap_amount",
    );
    let request = pb::GetRecurringTopUpRequest { account_id: account.id.clone() };
    assert!(orchestrator.get_recurring_top_up(request.clone()).await.is_err(), "nothing configured");

    // The first period: nothing before it to carry.
    orchestrator.configure_recurring_top_up(configure(chrono::Utc::now(), half.clone())).await.unwrap();
    eventually("the first period", || async { available(&suite.wallet, &account).await == d("10") }).await;
    let debit = reservoir_proto::wallet::DebitRequest {
        account_id: account.id.clone(),
        amount: "3".into(),
        idempotency_key: key(),
        ..Default::default()
    };
    suite.wallet.clone().debit(debit).await.unwrap();
    // The second period: 5 of the 7 left carried (half the period), 2 expire,
    // 10 more; the orchestrator killed right after the wallet turned it.
    suite.restart_orchestrator("after:GRANT").await;
    let mut orchestrator = suite.orchestrator().await;
    orchestrator
        .configure_recurring_top_up(configure(chrono::Utc::now() - chrono::Duration::hours(1), half.clone()))
        .await
        .unwrap();
    suite.processes[ORCHESTRATOR].reap().await;
    suite.restart_orchestrator("").await;
    eventually("the second period", || async { available(&suite.wallet, &account).await == d("15") }).await;
    let entries = ledger(&suite.wallet, &account).await;
    let turn: Vec<(i32, &str)> =
        entries[entries.len() - 4..].iter().map(|entry| (entry.kind, entry.amount.as_str())).collect();
    use reservoir_proto::wallet::EntryKind;
    assert_eq!(
        turn,
        vec![
            (EntryKind::Rollover.into(), "-5.00"),
            (EntryKind::Rollover.into(), "5.00"),
            (EntryKind::Expiry.into(), "-2.00"),
            (EntryKind::Grant.into(), "10.00"),
        ]
    );
    // A restart turns nothing again.
    suite.restart_orchestrator("").await;
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    assert_eq!(suite.top_ups(&account).await.len(), 2);
    assert_eq!(available(&suite.wallet, &account).await, d("15"));
    assert_books_balance(&suite.wallet, &account).await;
    let mut orchestrator = suite.orchestrator().await;
    let schedule = orchestrator.get_recurring_top_up(request).await.unwrap().into_inner().recurring_top_up.unwrap();
    assert_eq!(schedule.rollover, Some(half));

    // The third period carries all that is left of the second (10), killed
    // before its grant this time; the credits carried before keep theirs.
    let all = pb::RolloverPolicy { mode: pb::RolloverMode::All.into(), ..Default::default() };
    suite.restart_orchestrator("before:GRANT").await;
    let mut orchestrator = suite.orchestrator().await;
    orchestrator
        .configure_recurring_top_up(configure(chrono::Utc::now() - chrono::Duration::hours(1), all))
        .await
        .unwrap();
    suite.processes[ORCHESTRATOR].reap().await;
    suite.restart_orchestrator("").await;
    eventually("the third period", || async { available(&suite.wallet, &account).await == d("25") }).await;
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    let entries = ledger(&suite.wallet, &account).await;
    let turn: Vec<(i32, &str)> =
        entries[entries.len() - 3..].iter().map(|entry| (entry.kind, entry.amount.as_str())).collect();
    assert_eq!(
        turn,
        vec![
            (EntryKind::Rollover.into(), "-10.00"),
            (EntryKind::Rollover.into(), "10.00"),
            (EntryKind::Grant.into(), "10.00"),
        ]
    );
    assert_eq!(suite.top_ups(&account).await.len(), 3);
    assert_eq!(available(&suite.wallet, &account).await, d("25"), "turned once");
    assert_books_balance(&suite.wallet, &account).await;
    suite.stop().await;
}

reservoir_testing::each_backend!(
    automatic_top_ups,
    recurring_top_ups_fire_once_per_period_across_a_restart,
    a_recurring_allowance_rolls_over_capped_once_at_each_turn,
);
