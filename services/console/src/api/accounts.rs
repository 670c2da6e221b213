//! The accounts' pages and the forms that change an account's money.

use std::sync::Arc;

use axum::Form;
use axum::extract::{Path, RawQuery, State};
use axum::response::{IntoResponse, Redirect, Response};
use chrono::NaiveDate;
use http::{HeaderMap, HeaderValue, StatusCode, header};
use reservoir_common::time::to_timestamp;
use reservoir_proto::wallet;
use serde::Deserialize;

use super::session::{SignedIn, current, for_form};
use super::{Console, refused};
use crate::domain::Role;
use crate::domain::usage::month_of;
use crate::error::ConsoleError;
use crate::store::Session;
use crate::usecases::account::{account_view, entry_kinds, span, start_of};
use crate::usecases::usage::{period, usage_view};
use crate::views;

/// A query string's pairs, repeated names kept (`kind=debit&kind=grant`).
pub(super) fn pairs(query: Option<&str>) -> Vec<(String, String)> {
    query.and_then(|query| serde_urlencoded::from_str(query).ok()).unwrap_or_default()
}

pub(super) fn first<'a>(pairs: &'a [(String, String)], name: &str) -> &'a str {
    pairs.iter().find(|(key, _)| key == name).map_or("", |(_, value)| value.as_str())
}

pub(super) async fn list(
    State(console): State<Arc<Console>>,
    SignedIn(session): SignedIn,
    RawQuery(query): RawQuery,
) -> Response {
    let pairs = pairs(query.as_deref());
    let external_id = first(&pairs, "external_id").trim();
    match console.upstream.accounts(&session.key, external_id, first(&pairs, "page_token")).await {
        Ok(found) => views::accounts::list(&session, external_id, &found).into_response(),
        Err(error) => refused(Some(&session), &error),
    }
}

/// CSV to download as the file `name` (made of dates and digits only).
fn attachment(csv: String, name: &str) -> Response {
    let mut response = csv.into_response();
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/csv; charset=utf-8"));
    if let Ok(value) = HeaderValue::from_str(&format!("attachment; filename=\"{name}\"")) {
        headers.insert(header::CONTENT_DISPOSITION, value);
    }
    response
}

pub(super) fn today() -> NaiveDate {
    reservoir_common::time::now().date_naive()
}

/// The account page, with a message and the status it is answered with.
async fn render(
    console: &Console,
    session: &Session,
    account_id: &str,
    query: &[(String, String)],
    status: StatusCode,
    error: Option<&str>,
    notice: Option<&str>,
) -> Response {
    let names: Vec<String> = query.iter().filter(|(key, _)| key == "kind").map(|(_, value)| value.clone()).collect();
    let kinds = match entry_kinds(&names) {
        Ok(kinds) => kinds,
        Err(error) => return refused(Some(session), &error),
    };
    let page_token = first(query, "page_token");
    match account_view(&console.upstream, &session.key, account_id, today(), kinds, page_token).await {
        Ok(view) => {
            let notes =
                views::account::Notes { error, notice, form_key: uuid::Uuid::now_v7().to_string(), kinds: &names };
            (status, views::account::account(session, &view, &notes)).into_response()
        }
        Err(error) => refused(Some(session), &error),
    }
}

pub(super) async fn show(
    State(console): State<Arc<Console>>,
    SignedIn(session): SignedIn,
    Path(account_id): Path<String>,
    RawQuery(query): RawQuery,
) -> Response {
    let query = pairs(query.as_deref());
    let notice = match first(&query, "done") {
        "granted" => Some("Credits granted."),
        "adjusted" => Some("Balance adjusted."),
        "voided" => Some("Grant voided."),
        "cap" => Some("Cap saved."),
        "mode" => Some("Billing mode saved."),
        "refills" => Some("Automatic top-up saved."),
        _ => None,
    };
    render(&console, &session, &account_id, &query, StatusCode::OK, None, notice).await
}

pub(super) async fn statement(
    State(console): State<Arc<Console>>,
    SignedIn(session): SignedIn,
    Path(account_id): Path<String>,
) -> Response {
    let (first_day, last_day) = month_of(today());
    let (start, end) = span(first_day, last_day);
    match console.upstream.statement(&session.key, &account_id, start, end).await {
        Ok(csv) => attachment(csv, &format!("statement-{}.csv", first_day.format("%Y-%m"))),
        Err(error) => refused(Some(&session), &error),
    }
}

/// A form's session: its CSRF token checked, and its role allowed what
/// `may` asks; otherwise the refusal to answer with.
#[allow(clippy::result_large_err)] // the refusal is the page answered at once
pub(super) fn allowed(
    console: &Console,
    headers: &HeaderMap,
    csrf: &str,
    may: fn(Role) -> bool,
) -> Result<Session, Response> {
    let session =
        for_form(console, headers, csrf).map_err(|error| refused(current(console, headers).ok().as_ref(), &error))?;
    if may(session.role) { Ok(session) } else { Err(refused(Some(&session), &ConsoleError::NotAllowed)) }
}

/// After a change: back to the account (303, so a reload does not send the
/// form again), or the page again with what was refused.
pub(super) async fn answered(
    console: &Console,
    session: &Session,
    account_id: &str,
    result: Result<(), ConsoleError>,
    done: &str,
) -> Response {
    match result {
        Ok(()) => Redirect::to(&format!("/accounts/{account_id}?done={done}")).into_response(),
        Err(error @ (ConsoleError::SignedOut | ConsoleError::Unavailable { .. })) => refused(Some(session), &error),
        Err(error) => {
            let status = super::status_of(&error).unwrap_or(StatusCode::BAD_REQUEST);
            render(console, session, account_id, &[], status, Some(&error.to_string()), None).await
        }
    }
}

#[derive(Deserialize)]
pub(super) struct GrantForm {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    idempotency_key: String,
    #[serde(default)]
    amount: String,
    #[serde(default)]
    kind: String,
    #[serde(default)]
    expires_on: String,
    #[serde(default)]
    note: String,
}

fn grant_request(account_id: &str, form: &GrantForm) -> Result<wallet::GrantCreditsRequest, ConsoleError> {
    let kind = match form.kind.as_str() {
        "courtesy" => wallet::GrantKind::Courtesy,
        "promotional" => wallet::GrantKind::Promotional,
        "paid" => wallet::GrantKind::Paid,
        other => return Err(ConsoleError::invalid("kind", format!("{other:?} is not courtesy, promotional or paid"))),
    };
    let expires_at = match form.expires_on.trim() {
        "" => None,
        day => {
            let day = NaiveDate::parse_from_str(day, "%Y-%m-%d")
                .map_err(|_| ConsoleError::invalid("expires_on", format!("{day:?} is not a date (YYYY-MM-DD)")))?;
            Some(to_timestamp(start_of(day)))
        }
    };
    let note = form.note.trim();
    Ok(wallet::GrantCreditsRequest {
        account_id: account_id.to_owned(),
        amount: form.amount.trim().to_owned(),
        kind: kind as i32,
        expires_at,
        idempotency_key: form.idempotency_key.clone(),
        metadata: if note.is_empty() { Default::default() } else { [("note".to_owned(), note.to_owned())].into() },
        ..Default::default()
    })
}

pub(super) async fn grant(
    State(console): State<Arc<Console>>,
    headers: HeaderMap,
    Path(account_id): Path<String>,
    Form(form): Form<GrantForm>,
) -> Response {
    let session = match allowed(&console, &headers, &form.csrf, Role::may_change) {
        Ok(session) => session,
        Err(refusal) => return refusal,
    };
    let result = match grant_request(&account_id, &form) {
        Ok(request) => console.upstream.grant(&session.key, request).await,
        Err(error) => Err(error),
    };
    answered(&console, &session, &account_id, result, "granted").await
}

#[derive(Deserialize)]
pub(super) struct AdjustForm {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    idempotency_key: String,
    #[serde(default)]
    amount: String,
    #[serde(default)]
    reason: String,
}

pub(super) async fn adjust(
    State(console): State<Arc<Console>>,
    headers: HeaderMap,
    Path(account_id): Path<String>,
    Form(form): Form<AdjustForm>,
) -> Response {
    let session = match allowed(&console, &headers, &form.csrf, Role::may_change) {
        Ok(session) => session,
        Err(refusal) => return refusal,
    };
    let request = wallet::AdjustRequest {
        account_id: account_id.clone(),
        amount: form.amount.trim().to_owned(),
        reason: form.reason.trim().to_owned(),
        idempotency_key: form.idempotency_key,
        ..Default::default()
    };
    let result = console.upstream.adjust(&session.key, request).await;
    answered(&console, &session, &account_id, result, "adjusted").await
}

#[derive(Deserialize)]
pub(super) struct VoidForm {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    idempotency_key: String,
}

pub(super) async fn void_grant(
    State(console): State<Arc<Console>>,
    headers: HeaderMap,
    Path((account_id, grant_id)): Path<(String, String)>,
    Form(form): Form<VoidForm>,
) -> Response {
    let session = match allowed(&console, &headers, &form.csrf, Role::may_change) {
        Ok(session) => session,
        Err(refusal) => return refusal,
    };
    // One form key serves every void button of a page: each grant gets its own.
    let idempotency_key = format!("{}:{grant_id}", form.idempotency_key);
    let request = wallet::VoidGrantRequest {
        grant_id,
        idempotency_key,
        reason: "voided in the console".to_owned(),
        ..Default::default()
    };
    let result = console.upstream.void_grant(&session.key, request).await;
    answered(&console, &session, &account_id, result, "voided").await
}

/// An account's usage over a period, as a page or (`format=csv`) as CSV.
pub(super) async fn usage(
    State(console): State<Arc<Console>>,
    SignedIn(session): SignedIn,
    Path(account_id): Path<String>,
    RawQuery(query): RawQuery,
) -> Response {
    let raw = query.unwrap_or_default();
    let query = pairs(Some(&raw));
    let period = match period(first(&query, "from"), first(&query, "to"), today()) {
        Ok(period) => period,
        Err(error) => return refused(Some(&session), &error),
    };
    let dimension = first(&query, "dimension").trim();
    if first(&query, "format") == "csv" {
        let (start, end) = span(period.0, period.1);
        let request = crate::clients::usage_query(&account_id, start, end, dimension);
        return match console.upstream.usage_csv(&session.key, request).await {
            Ok(csv) => attachment(csv, &format!("usage-{}-{}.csv", period.0, period.1)),
            Err(error) => refused(Some(&session), &error),
        };
    }
    match usage_view(&console.upstream, &session.key, &account_id, period, dimension).await {
        Ok(view) => {
            // The page's own query, for the CSV link (its format removed).
            let kept: Vec<(String, String)> = query.into_iter().filter(|(key, _)| key != "format").collect();
            let again = serde_urlencoded::to_string(&kept).unwrap_or_default();
            views::usage::usage(&session, &view, &again).into_response()
        }
        Err(error) => refused(Some(&session), &error),
    }
}
