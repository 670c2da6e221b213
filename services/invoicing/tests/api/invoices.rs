//! Top-up invoices: their lifecycle, refused transitions, idempotency and
//! gapless numbering.

use reservoir_proto::invoicing as pb;
use reservoir_proto::wallet as wallet_pb;
use tonic::Code;

use crate::helpers::*;

async fn a_top_up_invoice_goes_from_draft_to_open_to_paid_and_refuses_the_rest(suite: Suite) -> Suite {
    let account = open_account(&suite, credits(), wallet_pb::OverdraftPolicy::None, "").await;
    let request = pb::CreateInvoiceRequest {
        account_id: account.id.clone(),
        credits: "1000".into(),
        idempotency_key: key(),
        ..Default::default()
    };
    let draft = suite.invoicing.clone().create_invoice(request.clone()).await.unwrap().into_inner().invoice.unwrap();
    assert_eq!(status(&draft), pb::InvoiceStatus::Draft);
    assert_eq!(draft.number, 0, "a draft has no number");
    assert_eq!(draft.currency, "EUR", "credits are billed in their billing currency");
    assert_eq!(draft.total, "12.50", "1,000 credits at 0.0125");
    assert_eq!(draft.credits, "1000");
    assert_eq!(draft.lines.len(), 1);
    assert_eq!(draft.lines[0].amount, "12.50");
    assert_eq!(draft.lines[0].unit_price, "0.0125");

    // The same key and request answers the same invoice; another request under it is refused.
    let again = suite.invoicing.clone().create_invoice(request.clone()).await.unwrap().into_inner().invoice.unwrap();
    assert_eq!(again.id, draft.id);
    let mut other = request.clone();
    other.credits = "2000".into();
    assert_refused(suite.invoicing.clone().create_invoice(other).await, Code::AlreadyExists, "IDEMPOTENCY_KEY_REUSED");

    // Credits worth less than a cent would make an invoice of 0.00: refused.
    let mut too_few = request.clone();
    too_few.credits = "0.0004".into();
    too_few.idempotency_key = key();
    assert_invalid(suite.invoicing.clone().create_invoice(too_few).await, "credits");

    // A draft cannot be paid or written off.
    assert_refused(pay(&suite, &draft, "pay_1").await, Code::FailedPrecondition, "INVALID_INVOICE_STATE");
    assert_refused(
        suite
            .invoicing
            .clone()
            .mark_invoice_uncollectible(pb::MarkInvoiceUncollectibleRequest { invoice_id: draft.id.clone() })
            .await,
        Code::FailedPrecondition,
        "INVALID_INVOICE_STATE",
    );

    let open = finalize(&suite, &draft).await.unwrap();
    assert_eq!(status(&open), pb::InvoiceStatus::Open);
    assert_eq!(open.number, 1);
    assert_eq!(open.amount_due, "12.50");
    assert!(open.issued_at.is_some());
    let open_again = finalize(&suite, &draft).await.unwrap();
    assert_eq!(open_again.number, 1, "finalizing twice keeps the number");

    // Only the payment flow marks an invoice paid: a tenant's key, even an
    // admin's, is refused and the invoice stays open.
    let by_tenant = suite
        .invoicing
        .clone()
        .mark_invoice_paid(pb::MarkInvoicePaidRequest {
            invoice_id: open.id.clone(),
            payment_reference: "self-declared".into(),
        })
        .await;
    assert_refused(by_tenant, Code::PermissionDenied, "SERVICE_KEY_REQUIRED");
    assert_eq!(status(&get_invoice(&suite, &open).await), pb::InvoiceStatus::Open);

    let paid = pay(&suite, &open, "pay_1").await.unwrap();
    assert_eq!(status(&paid), pb::InvoiceStatus::Paid);
    assert_eq!(paid.payment_reference, "pay_1");
    assert_eq!(paid.amount_due, "0.00");
    assert!(paid.paid_at.is_some());
    assert_eq!(pay(&suite, &open, "pay_1").await.unwrap().paid_at, paid.paid_at, "paying again is a replay");
    assert_refused(pay(&suite, &open, "pay_2").await, Code::FailedPrecondition, "INVALID_INVOICE_STATE");
    assert_refused(void(&suite, &open).await, Code::FailedPrecondition, "INVALID_INVOICE_STATE");
    assert_refused(finalize(&suite, &open).await, Code::FailedPrecondition, "INVALID_INVOICE_STATE");

    // A voided invoice is final; a voided draft never takes a number.
    let second = create_invoice(&suite, &account, "10").await;
    let voided = void(&suite, &second).await.unwrap();
    assert_eq!(status(&voided), pb::InvoiceStatus::Void);
    assert_eq!(voided.number, 0);
    assert!(voided.voided_at.is_some());
    assert_refused(finalize(&suite, &second).await, Code::FailedPrecondition, "INVALID_INVOICE_STATE");
    assert_refused(pay(&suite, &second, "pay_3").await, Code::FailedPrecondition, "INVALID_INVOICE_STATE");
    assert_eq!(status(&void(&suite, &second).await.unwrap()), pb::InvoiceStatus::Void, "voiding twice is a replay");

    // An open invoice can be voided, or written off and still paid.
    let third = finalize(&suite, &create_invoice(&suite, &account, "10").await).await.unwrap();
    assert_eq!(third.number, 2, "the voided draft left no gap");
    let written_off = suite
        .invoicing
        .clone()
        .mark_invoice_uncollectible(pb::MarkInvoiceUncollectibleRequest { invoice_id: third.id.clone() })
        .await
        .unwrap()
        .into_inner()
        .invoice
        .unwrap();
    assert_eq!(status(&written_off), pb::InvoiceStatus::Uncollectible);
    assert_eq!(written_off.amount_due, "0.12", "10 credits at 0.0125 = 0.125, rounded half-even");
    assert_eq!(status(&pay(&suite, &third, "pay_4").await.unwrap()), pb::InvoiceStatus::Paid);
    suite
}

async fn bad_requests_are_refused_with_the_field_and_change_nothing(suite: Suite) -> Suite {
    let account = open_account(&suite, usd(), wallet_pb::OverdraftPolicy::None, "").await;
    let request = |credits: &str| pb::CreateInvoiceRequest {
        account_id: account.id.clone(),
        credits: credits.into(),
        idempotency_key: key(),
        ..Default::default()
    };
    for credits in ["0", "-5", "1.001", "abc", ""] {
        assert_invalid(suite.invoicing.clone().create_invoice(request(credits)).await, "credits");
    }
    let mut no_key = request("5");
    no_key.idempotency_key = String::new();
    assert_invalid(suite.invoicing.clone().create_invoice(no_key).await, "idempotency_key");
    let mut unknown = request("5");
    unknown.account_id = uuid::Uuid::now_v7().to_string();
    assert_refused(suite.invoicing.clone().create_invoice(unknown).await, Code::NotFound, "NOT_FOUND");
    assert_refused(
        suite
            .invoicing
            .clone()
            .get_invoice(pb::GetInvoiceRequest { invoice_id: uuid::Uuid::now_v7().to_string() })
            .await,
        Code::NotFound,
        "NOT_FOUND",
    );
    assert_invalid(
        suite.invoicing.clone().get_invoice(pb::GetInvoiceRequest { invoice_id: "x".into() }).await,
        "invoice_id",
    );
    let listed = suite
        .invoicing
        .clone()
        .list_invoices(pb::ListInvoicesRequest { account_id: account.id.clone(), ..Default::default() })
        .await
        .unwrap()
        .into_inner();
    assert!(listed.invoices.is_empty(), "nothing was created");
    suite
}

async fn fifty_concurrent_finalizations_take_the_numbers_one_to_fifty(suite: Suite) -> Suite {
    let account = open_account(&suite, usd(), wallet_pb::OverdraftPolicy::None, "").await;
    let mut drafts = Vec::new();
    for _ in 0..50 {
        drafts.push(create_invoice(&suite, &account, "5").await);
    }
    let finalized = futures::future::join_all(drafts.iter().map(|draft| finalize(&suite, draft))).await;
    let mut numbers: Vec<u64> = finalized.into_iter().map(|invoice| invoice.unwrap().number).collect();
    numbers.sort_unstable();
    assert_eq!(numbers, (1..=50).collect::<Vec<u64>>(), "gapless and unique");
    // Listing pages through them all, newest first.
    let mut seen = Vec::new();
    let mut page_token = String::new();
    loop {
        let page = suite
            .invoicing
            .clone()
            .list_invoices(pb::ListInvoicesRequest {
                account_id: account.id.clone(),
                status: pb::InvoiceStatus::Open.into(),
                page_size: 20,
                page_token: page_token.clone(),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        seen.extend(page.invoices.into_iter().map(|invoice| invoice.id));
        if page.next_page_token.is_empty() {
            break;
        }
        page_token = page.next_page_token;
    }
    assert_eq!(seen.len(), 50);
    let newest_first: Vec<String> = drafts.iter().rev().map(|draft| draft.id.clone()).collect();
    assert_eq!(seen, newest_first);

    // Pages of 25: two, and no empty third; a token continues only the
    // request it came from.
    let list = |page_token: String, status: pb::InvoiceStatus| pb::ListInvoicesRequest {
        account_id: account.id.clone(),
        status: status.into(),
        page_size: 25,
        page_token,
        ..Default::default()
    };
    let mut invoicing = suite.invoicing.clone();
    let first = invoicing.list_invoices(list(String::new(), pb::InvoiceStatus::Open)).await.unwrap().into_inner();
    assert_eq!(first.invoices.len(), 25);
    assert!(!first.next_page_token.contains(&first.invoices[24].id), "opaque: {}", first.next_page_token);
    let second = invoicing
        .list_invoices(list(first.next_page_token.clone(), pb::InvoiceStatus::Open))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(second.invoices.len(), 25);
    assert_eq!(second.next_page_token, "", "the last page says so; no empty page follows");
    let other_filter = invoicing.list_invoices(list(first.next_page_token.clone(), pb::InvoiceStatus::Paid)).await;
    assert_invalid(other_filter, "page_token");
    suite
}

crate::on_both_backends!(
    a_top_up_invoice_goes_from_draft_to_open_to_paid_and_refuses_the_rest,
    bad_requests_are_refused_with_the_field_and_change_nothing,
    fifty_concurrent_finalizations_take_the_numbers_one_to_fifty,
);
