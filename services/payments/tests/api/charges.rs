use std::collections::BTreeMap;

use reservoir_proto::payments as pb;
use tonic::Code;

use crate::helpers::*;

async fn each_sandbox_token_gives_its_outcome(suite: Suite) -> Suite {
    let account_id = account(&suite).await;
    let succeed = card(&suite, &account_id, "tok_succeed").await;
    let payment = charge(&suite, charge_request(&suite, &succeed, "12.50").await).await;
    assert_eq!(status(&payment), pb::PaymentStatus::Succeeded);
    assert_eq!(outcomes(&payment), vec![pb::AttemptOutcome::Succeeded]);
    assert_eq!(payment.amount, "12.5", "amounts are normalized decimal strings");
    assert!(!payment.gateway_reference.is_empty());
    assert_eq!(payment.attempts[0].number, 1);
    assert_eq!(payment.refunded_amount, "0");

    for (token, code) in [
        ("tok_decline", "card_declined"),
        ("tok_decline_insufficient_funds", "insufficient_funds"),
        ("tok_x", "invalid_token"),
    ] {
        let method = card(&suite, &account_id, token).await;
        let declined = charge(&suite, charge_request(&suite, &method, "5").await).await;
        assert_eq!(status(&declined), pb::PaymentStatus::Declined, "{token}");
        assert_eq!(declined.failure_code, code, "{token}");
        assert_eq!(outcomes(&declined), vec![pb::AttemptOutcome::Declined]);
        assert_eq!(declined.attempts[0].code, code);
    }

    let pending = card(&suite, &account_id, "tok_pending").await;
    let payment = charge(&suite, charge_request(&suite, &pending, "7").await).await;
    assert_eq!(status(&payment), pb::PaymentStatus::Pending);
    assert_eq!(outcomes(&payment), vec![pb::AttemptOutcome::Pending]);
    let confirm =
        pb::ConfirmPaymentRequest { payment_id: payment.id.clone(), external_transaction_id: "settlement-1".into() };
    // A tenant's key cannot declare its own payment received.
    assert_refused(
        suite.payments.clone().confirm_payment(confirm.clone()).await,
        Code::PermissionDenied,
        "SERVICE_KEY_REQUIRED",
    );
    assert_eq!(status(&get(&suite, &payment).await), pb::PaymentStatus::Pending);
    let confirmed = suite.service.clone().confirm_payment(confirm).await.unwrap().into_inner().payment.unwrap();
    assert_eq!(status(&confirmed), pb::PaymentStatus::Succeeded);
    assert_eq!(confirmed.external_transaction_id, "settlement-1");
    suite
}

async fn a_transient_failure_is_retried_with_the_same_key_and_charged_once(suite: Suite) -> Suite {
    let method = card(&suite, &account(&suite).await, "tok_fail_2").await;
    let request = charge_request(&suite, &method, "20.00").await;
    let first = charge(&suite, request.clone()).await;
    assert_eq!(status(&first), pb::PaymentStatus::Failed);
    assert_eq!(first.failure_code, "gateway_unavailable");
    let second = charge(&suite, request.clone()).await;
    assert_eq!(status(&second), pb::PaymentStatus::Failed);
    assert_eq!(second.id, first.id, "one payment per key");
    let third = charge(&suite, request.clone()).await;
    assert_eq!(status(&third), pb::PaymentStatus::Succeeded);
    assert_eq!(
        outcomes(&third),
        vec![pb::AttemptOutcome::Failed, pb::AttemptOutcome::Failed, pb::AttemptOutcome::Succeeded]
    );
    assert_eq!(third.attempts.iter().map(|attempt| attempt.number).collect::<Vec<_>>(), vec![1, 2, 3]);
    assert_eq!(third.failure_code, "");
    assert_eq!(suite.charges_for(&request.idempotency_key).await, 1);
    let replay = charge(&suite, request.clone()).await;
    assert_eq!(replay, third, "a succeeded payment is answered as it is");
    suite
}

async fn a_timed_out_charge_is_recovered_by_a_retry_without_a_second_charge(suite: Suite) -> Suite {
    let method = card(&suite, &account(&suite).await, "tok_timeout").await;
    let request = charge_request(&suite, &method, "9.99").await;
    let first = charge(&suite, request.clone()).await;
    assert_eq!(status(&first), pb::PaymentStatus::Failed);
    assert_eq!(outcomes(&first), vec![pb::AttemptOutcome::TimedOut]);
    assert_eq!(suite.charges_for(&request.idempotency_key).await, 1, "the gateway charged before the answer was lost");
    let retried = charge(&suite, request.clone()).await;
    assert_eq!(status(&retried), pb::PaymentStatus::Succeeded);
    assert_eq!(outcomes(&retried), vec![pb::AttemptOutcome::TimedOut, pb::AttemptOutcome::Succeeded]);
    assert_eq!(suite.charges_for(&request.idempotency_key).await, 1, "charged once");
    suite
}

async fn a_replayed_charge_makes_no_new_attempt_and_a_reused_key_is_refused(suite: Suite) -> Suite {
    let method = card(&suite, &account(&suite).await, "tok_succeed").await;
    let mut request = charge_request(&suite, &method, "30").await;
    request.metadata = BTreeMap::from([("order".to_owned(), "A-17".to_owned())]);
    let first = charge(&suite, request.clone()).await;
    let again = charge(&suite, request.clone()).await;
    assert_eq!(again, first);
    assert_eq!(again.attempts.len(), 1, "no second gateway call");
    assert_eq!(again.metadata.get("order").map(String::as_str), Some("A-17"));
    let different = pb::ChargeRequest { amount: "31".into(), ..request.clone() };
    assert_refused(suite.payments.clone().charge(different).await, Code::AlreadyExists, "IDEMPOTENCY_KEY_REUSED");
    assert_eq!(get(&suite, &first).await, first, "the refusal changed nothing");
    suite
}

async fn a_reconcile_later_payment_waits_for_its_confirmation(suite: Suite) -> Suite {
    let request = reconcile_later_request(&suite, &account(&suite).await, "100.00").await;
    let payment = charge(&suite, request.clone()).await;
    assert_eq!(status(&payment), pb::PaymentStatus::Pending);
    assert!(payment.attempts.is_empty(), "no gateway call, so no attempt");
    assert_eq!(payment.payment_method_id, "");
    assert_eq!(charge(&suite, request).await, payment, "a retry answers the pending payment");
    let confirm = |external: &str| pb::ConfirmPaymentRequest {
        payment_id: payment.id.clone(),
        external_transaction_id: external.into(),
    };
    let mut client = suite.service.clone();
    let confirmed = client.confirm_payment(confirm("bank-2024-001")).await.unwrap().into_inner().payment.unwrap();
    assert_eq!(status(&confirmed), pb::PaymentStatus::Succeeded);
    assert_eq!(confirmed.external_transaction_id, "bank-2024-001");
    let again = client.confirm_payment(confirm("bank-2024-001")).await.unwrap().into_inner().payment.unwrap();
    assert_eq!(again, confirmed, "confirming again with the same id answers the payment");
    assert_refused(
        client.confirm_payment(confirm("bank-2024-002")).await,
        Code::FailedPrecondition,
        "ALREADY_CONFIRMED",
    );
    assert_eq!(get(&suite, &payment).await.external_transaction_id, "bank-2024-001");

    let declined =
        charge(&suite, charge_request(&suite, &card(&suite, &account(&suite).await, "tok_decline").await, "1").await)
            .await;
    let not_pending =
        pb::ConfirmPaymentRequest { payment_id: declined.id.clone(), external_transaction_id: "bank-1".into() };
    assert_refused(client.confirm_payment(not_pending).await, Code::FailedPrecondition, "PAYMENT_NOT_PENDING");
    assert_invalid(client.confirm_payment(confirm("")).await, "external_transaction_id");
    suite
}

async fn a_bank_transfer_is_pending_without_a_gateway_call(suite: Suite) -> Suite {
    let account_id = account(&suite).await;
    let transfer = add_method(&suite, &account_id, pb::PaymentMethodKind::BankTransfer, "").await;
    let request = charge_request(&suite, &transfer, "250").await;
    let payment = charge(&suite, request.clone()).await;
    assert_eq!(status(&payment), pb::PaymentStatus::Pending);
    assert!(payment.attempts.is_empty());
    assert_eq!(payment.payment_method_id, transfer.id);
    assert_eq!(suite.charges_for(&request.idempotency_key).await, 0);
    suite
}

async fn charges_and_methods_are_checked(suite: Suite) -> Suite {
    let mut client = suite.payments.clone();
    let account_id = account(&suite).await;
    let method = card(&suite, &account_id, "tok_succeed").await;
    let valid = charge_request(&suite, &method, "10").await;
    let both = pb::ChargeRequest { reconcile_later: true, ..valid.clone() };
    assert_invalid(client.charge(both).await, "payment_method_id");
    let neither = pb::ChargeRequest { payment_method_id: String::new(), ..valid.clone() };
    assert_invalid(client.charge(neither).await, "payment_method_id");
    assert_invalid(client.charge(pb::ChargeRequest { amount: "10.001".into(), ..valid.clone() }).await, "amount");
    assert_invalid(client.charge(pb::ChargeRequest { amount: "0".into(), ..valid.clone() }).await, "amount");
    assert_invalid(client.charge(pb::ChargeRequest { currency: "XYZ".into(), ..valid.clone() }).await, "currency");
    assert_invalid(client.charge(pb::ChargeRequest { invoice_id: "inv".into(), ..valid.clone() }).await, "invoice_id");
    assert_invalid(
        client.charge(pb::ChargeRequest { idempotency_key: "k".repeat(129), ..valid.clone() }).await,
        "idempotency_key",
    );
    let metadata: BTreeMap<String, String> = (0..33).map(|index| (format!("k{index}"), "v".to_owned())).collect();
    assert_invalid(client.charge(pb::ChargeRequest { metadata, ..valid.clone() }).await, "metadata");
    let someone_else = account(&suite).await;
    let their_invoice = open_invoice(&suite, &someone_else, "10").await.id;
    let someone_elses =
        pb::ChargeRequest { account_id: someone_else.clone(), invoice_id: their_invoice, ..valid.clone() };
    assert_refused(client.charge(someone_elses).await, Code::FailedPrecondition, "PAYMENT_METHOD_MISMATCH");
    let unknown = pb::ChargeRequest { payment_method_id: uuid::Uuid::now_v7().to_string(), ..valid.clone() };
    assert_refused(client.charge(unknown).await, Code::NotFound, "NOT_FOUND");

    // A method goes only on an account the wallet says is the caller's.
    let theirs = reservoir_testing::wallet::open_funded_account(&suite.other_wallet, "0").await.id;
    for account_id in [theirs, uuid::Uuid::now_v7().to_string()] {
        let request = pb::AddPaymentMethodRequest {
            account_id: account_id.clone(),
            kind: pb::PaymentMethodKind::Card.into(),
            gateway_token: "tok_succeed".into(),
            label: String::new(),
            idempotency_key: key(),
        };
        assert_refused(client.add_payment_method(request).await, Code::NotFound, "NOT_FOUND");
        let listed = client
            .list_payment_methods(pb::ListPaymentMethodsRequest { account_id })
            .await
            .unwrap()
            .into_inner()
            .payment_methods;
        assert!(listed.is_empty(), "nothing was added");
    }

    let card_without_token = pb::AddPaymentMethodRequest {
        account_id: account_id.clone(),
        kind: pb::PaymentMethodKind::Card.into(),
        gateway_token: String::new(),
        label: String::new(),
        idempotency_key: key(),
    };
    assert_invalid(client.add_payment_method(card_without_token.clone()).await, "gateway_token");
    let transfer_with_token = pb::AddPaymentMethodRequest {
        kind: pb::PaymentMethodKind::BankTransfer.into(),
        gateway_token: "tok_succeed".into(),
        ..card_without_token.clone()
    };
    assert_invalid(client.add_payment_method(transfer_with_token).await, "gateway_token");
    let unspecified = pb::AddPaymentMethodRequest {
        kind: pb::PaymentMethodKind::Unspecified.into(),
        gateway_token: "tok_succeed".into(),
        ..card_without_token.clone()
    };
    assert_invalid(client.add_payment_method(unspecified).await, "kind");
    let long_label = pb::AddPaymentMethodRequest {
        gateway_token: "tok".into(),
        label: "x".repeat(129),
        ..card_without_token.clone()
    };
    assert_invalid(client.add_payment_method(long_label).await, "label");
    let once = pb::AddPaymentMethodRequest { gateway_token: "tok_succeed".into(), ..card_without_token };
    let first = client.add_payment_method(once.clone()).await.unwrap().into_inner();
    assert_eq!(client.add_payment_method(once.clone()).await.unwrap().into_inner(), first, "a retry replays");
    let changed = pb::AddPaymentMethodRequest { label: "changed".into(), ..once };
    assert_refused(client.add_payment_method(changed).await, Code::AlreadyExists, "IDEMPOTENCY_KEY_REUSED");
    suite
}

async fn a_tenant_cannot_see_another_tenants_payment(suite: Suite) -> Suite {
    let payment = paid(&suite, "15").await;
    let mut other = suite.other.clone();
    let get = pb::GetPaymentRequest { payment_id: payment.id.clone() };
    assert_refused(other.get_payment(get).await, Code::NotFound, "NOT_FOUND");
    let confirm = pb::ConfirmPaymentRequest { payment_id: payment.id.clone(), external_transaction_id: "x".into() };
    assert_refused(suite.other_service.clone().confirm_payment(confirm).await, Code::NotFound, "NOT_FOUND");
    assert_refused(other.refund(refund_request(&payment, "1")).await, Code::NotFound, "NOT_FOUND");
    let listed = other.list_payments(pb::ListPaymentsRequest::default()).await.unwrap().into_inner();
    assert!(listed.payments.is_empty());
    let methods = other
        .list_payment_methods(pb::ListPaymentMethodsRequest { account_id: payment.account_id.clone() })
        .await
        .unwrap()
        .into_inner();
    assert!(methods.payment_methods.is_empty());
    let method_id = payment.payment_method_id.clone();
    // Another tenant's invoice is not found; and a method is the tenant's
    // own, even on an invoice of the other tenant's own.
    let on_their_invoice = reconcile_later_request(&suite, &payment.account_id, "1").await;
    assert_refused(other.charge(on_their_invoice).await, Code::NotFound, "NOT_FOUND");
    let own_account = reservoir_testing::wallet::open_funded_account(&suite.other_wallet, "0").await.id;
    let borrowed = pb::ChargeRequest {
        account_id: own_account.clone(),
        invoice_id: open_invoice_with(&suite.other_invoicing, &own_account, "1").await.id,
        amount: "1".into(),
        currency: "USD".into(),
        payment_method_id: method_id,
        reconcile_later: false,
        idempotency_key: key(),
        metadata: Default::default(),
    };
    assert_refused(other.charge(borrowed).await, Code::NotFound, "NOT_FOUND");
    let same_key = pb::ChargeRequest {
        account_id: own_account.clone(),
        invoice_id: open_invoice_with(&suite.other_invoicing, &own_account, "1").await.id,
        amount: "1".into(),
        currency: "USD".into(),
        payment_method_id: String::new(),
        reconcile_later: true,
        idempotency_key: payment.idempotency_key.clone(),
        metadata: Default::default(),
    };
    let own = other.charge(same_key).await.unwrap().into_inner().payment.unwrap();
    assert_ne!(own.id, payment.id, "idempotency keys are the tenant's own");
    suite
}

/// A charge pays only an invoice invoicing says is the caller's, for the
/// same account and currency, open, and asking for at least as much; a
/// refused charge makes no payment and calls no gateway.
async fn a_charge_pays_only_an_open_invoice_of_its_own(suite: Suite) -> Suite {
    use reservoir_proto::invoicing as invoicing_pb;
    let mut client = suite.payments.clone();
    let account_id = account(&suite).await;
    let method = card(&suite, &account_id, "tok_succeed").await;
    let valid = charge_request(&suite, &method, "10").await;
    let refused = |change: &dyn Fn(&mut pb::ChargeRequest)| {
        let mut request = pb::ChargeRequest { idempotency_key: key(), ..valid.clone() };
        change(&mut request);
        request
    };
    let made_up = refused(&|request| request.invoice_id = uuid::Uuid::now_v7().to_string());
    assert_refused(client.charge(made_up.clone()).await, Code::NotFound, "NOT_FOUND");
    let another_account = account(&suite).await;
    let elsewhere = open_invoice(&suite, &another_account, "10").await.id;
    let misdirected = refused(&|request| request.invoice_id = elsewhere.clone());
    assert_refused(client.charge(misdirected.clone()).await, Code::FailedPrecondition, "INVOICE_MISMATCH");
    let in_euros = refused(&|request| request.currency = "EUR".into());
    assert_refused(client.charge(in_euros.clone()).await, Code::FailedPrecondition, "INVOICE_MISMATCH");
    let too_much = refused(&|request| request.amount = "10.01".into());
    assert_refused(client.charge(too_much.clone()).await, Code::FailedPrecondition, "CHARGE_EXCEEDS_AMOUNT_DUE");
    let void = open_invoice(&suite, &account_id, "10").await.id;
    suite.invoicing.clone().void_invoice(invoicing_pb::VoidInvoiceRequest { invoice_id: void.clone() }).await.unwrap();
    let on_void = refused(&|request| request.invoice_id = void.clone());
    assert_refused(client.charge(on_void.clone()).await, Code::FailedPrecondition, "INVOICE_NOT_PAYABLE");
    for request in [&made_up, &misdirected, &in_euros, &too_much, &on_void] {
        assert_eq!(suite.charges_for(&request.idempotency_key).await, 0, "no gateway call");
    }
    let listed = client.list_payments(pb::ListPaymentsRequest::default()).await.unwrap().into_inner();
    assert!(listed.payments.is_empty(), "no payment was made: {listed:?}");
    // Part of what is due, and then the rest, are charged.
    let part = refused(&|request| request.amount = "4".into());
    assert_eq!(status(&charge(&suite, part).await), pb::PaymentStatus::Succeeded);
    let rest = refused(&|request| request.amount = "6".into());
    assert_eq!(status(&charge(&suite, rest).await), pb::PaymentStatus::Succeeded);
    // An invoice written off may still be paid.
    let written_off = open_invoice(&suite, &account_id, "10").await.id;
    suite
        .invoicing
        .clone()
        .mark_invoice_uncollectible(invoicing_pb::MarkInvoiceUncollectibleRequest { invoice_id: written_off.clone() })
        .await
        .unwrap();
    let on_written_off = refused(&|request| request.invoice_id = written_off.clone());
    assert_eq!(status(&charge(&suite, on_written_off).await), pb::PaymentStatus::Succeeded);
    suite
}

crate::on_both_backends!(
    a_charge_pays_only_an_open_invoice_of_its_own,
    each_sandbox_token_gives_its_outcome,
    a_transient_failure_is_retried_with_the_same_key_and_charged_once,
    a_timed_out_charge_is_recovered_by_a_retry_without_a_second_charge,
    a_replayed_charge_makes_no_new_attempt_and_a_reused_key_is_refused,
    a_reconcile_later_payment_waits_for_its_confirmation,
    a_bank_transfer_is_pending_without_a_gateway_call,
    charges_and_methods_are_checked,
    a_tenant_cannot_see_another_tenants_payment,
);
