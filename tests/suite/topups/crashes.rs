//! The orchestrator crashed at every saga step, a grant refused after a
//! charge, and two replicas of every service: each top-up happens once.

use super::*;

/// For every step, the orchestrator dies just before and just after it;
/// restarted without the fault, each top-up ends, charged at most once and
/// granted exactly once per successful charge.
async fn a_crash_at_any_step_loses_nothing_and_charges_once(backend: Backend) {
    let Some(mut suite) = Suite::start(backend).await else {
        return;
    };
    let points = [
        ("before:CREATE_INVOICE", "tok_succeed"),
        ("after:CREATE_INVOICE", "tok_succeed"),
        ("before:CHARGE", "tok_succeed"),
        ("after:CHARGE", "tok_succeed"),
        ("before:GRANT", "tok_succeed"),
        ("after:GRANT", "tok_succeed"),
        ("before:MARK_PAID", "tok_succeed"),
        ("after:MARK_PAID", "tok_succeed"),
        ("before:VOID_INVOICE", "tok_decline"),
        ("after:VOID_INVOICE", "tok_decline"),
    ];
    for (point, token) in points {
        let account = open_funded_account(&suite.wallet, "0").await;
        let card = suite.card(&account, token).await;
        suite.restart_orchestrator(point).await;
        let mut orchestrator = suite.orchestrator().await;
        let started = orchestrator.start_top_up(start(&account, "25", &card)).await;
        assert!(started.is_err(), "{point}: the orchestrator died mid-call");
        suite.processes[ORCHESTRATOR].reap().await;
        suite.restart_orchestrator("").await;
        let expected = if token == "tok_succeed" { pb::TopUpStatus::Succeeded } else { pb::TopUpStatus::Failed };
        eventually(point, || async {
            let top_ups = suite.top_ups(&account).await;
            top_ups.len() == 1 && status(&top_ups[0]) == expected
        })
        .await;
        let balance = if token == "tok_succeed" { "25" } else { "0" };
        assert_eq!(available(&suite.wallet, &account).await, d(balance), "{point}");
        assert_settled_once(&suite, &account).await;
    }
    suite.stop().await;
}

/// A grant the wallet refuses after the money was collected is never
/// dropped: past its attempts the top-up asks for a person, with an event,
/// and goes on being tried; the payment stays collected, the invoice open.
async fn a_refused_grant_after_a_charge_asks_for_a_person(backend: Backend) {
    let Some(mut suite) = Suite::start(backend).await else {
        return;
    };
    suite.environment.set("RESERVOIR__ORCHESTRATOR__ATTEMPTS_BEFORE_ACTION", "2");
    let account = open_funded_account(&suite.wallet, "0").await;
    let card = suite.card(&account, "tok_succeed").await;
    suite.restart_orchestrator("before:GRANT").await;
    let started = suite.orchestrator().await.start_top_up(start(&account, "25", &card)).await;
    assert!(started.is_err(), "the orchestrator died before the grant");
    suite.processes[ORCHESTRATOR].reap().await;
    // The account closes between the charge and the grant.
    suite
        .wallet
        .clone()
        .update_account(wallet_pb::UpdateAccountRequest {
            account_id: account.id.clone(),
            status: Some(wallet_pb::AccountStatus::Closed.into()),
            idempotency_key: key(),
            ..Default::default()
        })
        .await
        .unwrap();
    suite.restart_orchestrator("").await;
    eventually("the call for a person", || async {
        let top_ups = suite.top_ups(&account).await;
        top_ups.len() == 1 && status(&top_ups[0]) == pb::TopUpStatus::RequiresAction
    })
    .await;
    let top_up = suite.top_ups(&account).await.remove(0);
    assert_eq!(top_up.step, i32::from(pb::Step::Grant), "{top_up:?}");
    assert!(top_up.reason.contains("GRANT"), "{}", top_up.reason);
    // The attempt cut off by the crash counts: the second is past the budget.
    let retries = top_up.steps.iter().filter(|line| line.outcome == i32::from(pb::StepOutcome::Retrying)).count();
    assert_eq!(retries, 1, "{top_up:?}");
    // And it goes on being tried.
    eventually("another attempt", || async {
        let top_up = suite.top_ups(&account).await.remove(0);
        top_up.steps.iter().filter(|line| line.outcome == i32::from(pb::StepOutcome::Retrying)).count() >= 2
    })
    .await;
    let payments = suite.payments_of(&account).await;
    assert_eq!(payments.len(), 1);
    assert_eq!(payments[0].status, i32::from(payments_pb::PaymentStatus::Succeeded), "the money was collected once");
    assert_eq!(suite.invoice(&top_up.invoice_id).await.status, i32::from(invoicing_pb::InvoiceStatus::Open));
    assert!(suite.grants_from(&account, &top_up.invoice_id).await.is_empty());
    let mut events = suite
        .orchestrator()
        .await
        .watch_events(pb::WatchEventsRequest { after_sequence: 0 })
        .await
        .unwrap()
        .into_inner();
    let mut asked = false;
    while let Ok(Ok(Some(message))) = tokio::time::timeout(Duration::from_millis(500), events.message()).await {
        let event = message.event.unwrap();
        asked |= event.top_up_id == top_up.id && event.r#type == i32::from(pb::EventType::TopUpRequiresAction);
    }
    assert!(asked, "an event says a person must act");
    suite.stop().await;
}

/// Two replicas of each of the five services on one PostgreSQL database,
/// the orchestrators' workers passing often: every recurring period,
/// automatic top-up and saga step still happens once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_of_each_service_run_each_top_up_once_on_postgres() {
    let Some(mut suite) = Suite::start(Backend::Postgres).await else {
        return;
    };
    suite.environment.set("RESERVOIR__ORCHESTRATOR__WORKER_INTERVAL_MS", "20");
    suite.restart_orchestrator("").await;
    // The second replica of every service; its orchestrator calls its own
    // wallet, invoicing and payments.
    let second_environment = suite.environment.replica();
    let mut second = vec![
        ServiceProcess::wallet(&second_environment),
        ServiceProcess::metering(&second_environment),
        ServiceProcess::invoicing(&second_environment),
        ServiceProcess::payments(&second_environment),
        ServiceProcess::orchestrator(&second_environment),
    ];
    for process in &mut second {
        process.start(&second_environment).await;
    }
    let orchestrators = [
        suite.orchestrator().await,
        TopUpServiceClient::with_interceptor(
            channel(second[ORCHESTRATOR].address()).await,
            BearerKey::new(&suite.api_key),
        ),
    ];
    let mut accounts = Vec::new();
    let due = chrono::Utc::now() - chrono::Duration::hours(1);
    for index in 0..12 {
        let account = open_funded_account(&suite.wallet, "30").await;
        let card = suite.card(&account, "tok_succeed").await;
        let mut orchestrator = orchestrators[index % 2].clone();
        // A paid weekly top-up due an hour ago, and auto-replenish.
        orchestrator
            .configure_recurring_top_up(pb::ConfigureRecurringTopUpRequest {
                recurring_top_up: Some(pb::RecurringTopUp {
                    account_id: account.id.clone(),
                    credits: "10".into(),
                    interval: pb::Interval::Weekly.into(),
                    mode: pb::RecurringMode::Paid.into(),
                    payment_method_id: card.clone(),
                    next_run_at: Some(reservoir_common::time::to_timestamp(due)),
                    ..Default::default()
                }),
            })
            .await
            .unwrap();
        configure_auto(&mut orchestrator, &account, &card, "20", "25", "", 5).await;
        accounts.push(account);
    }
    // Each account dips below its threshold once: 30 + 10 (recurring) - 25.
    for account in &accounts {
        eventually("the recurring top-up", || async { available(&suite.wallet, account).await == d("40") }).await;
        suite.debit(account, "25").await;
    }
    for account in &accounts {
        eventually("the automatic top-up", || async { available(&suite.wallet, account).await == d("40") }).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    for account in &accounts {
        let top_ups = suite.top_ups(account).await;
        let triggers: Vec<i32> = top_ups.iter().map(|top_up| top_up.trigger).collect();
        assert_eq!(top_ups.len(), 2, "one recurring and one automatic top-up: {top_ups:?}");
        assert!(triggers.contains(&i32::from(pb::TopUpTrigger::Recurring)));
        assert!(triggers.contains(&i32::from(pb::TopUpTrigger::AutoReplenish)));
        assert_eq!(available(&suite.wallet, account).await, d("40"));
        assert_settled_once(&suite, account).await;
    }
    for process in second.iter_mut().rev() {
        assert!(process.terminate().await.success());
    }
    suite.stop().await;
}

reservoir_testing::each_backend!(
    a_crash_at_any_step_loses_nothing_and_charges_once,
    a_refused_grant_after_a_charge_asks_for_a_person,
);
