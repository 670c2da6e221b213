//! The console's HTTP edge: routes, the session a request belongs to, the
//! CSRF check of every form, and the headers every answer carries.

mod accounts;
mod billing;
mod pages;
mod session;
mod webhooks;

use std::sync::Arc;
use std::time::Instant;

use axum::Router;
use axum::extract::{DefaultBodyLimit, MatchedPath, Request};
use axum::middleware::Next;
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use http::{HeaderValue, StatusCode, header};

use crate::clients::Upstream;
use crate::error::ConsoleError;
use crate::store::{Session, Sessions};
use crate::views;

pub use session::COOKIE;

/// A form is a few fields: anything larger is refused before it is read.
const BODY_LIMIT: usize = 16 * 1024;

/// What every handler shares.
pub struct Console {
    pub upstream: Upstream,
    pub sessions: Sessions,
    /// Whether cookies are marked Secure (sent over HTTPS only): on unless
    /// the console listens on a loopback address.
    pub secure_cookies: bool,
}

pub fn router(console: Arc<Console>) -> Router {
    Router::new()
        .route("/", get(|| async { Redirect::to("/accounts") }))
        .route("/login", get(session::login_page).post(session::login))
        .route("/logout", post(session::logout))
        .route("/accounts", get(accounts::list))
        .route("/accounts/{id}", get(accounts::show))
        .route("/accounts/{id}/statement.csv", get(accounts::statement))
        .route("/accounts/{id}/usage", get(accounts::usage))
        .route("/accounts/{id}/grants", post(accounts::grant))
        .route("/accounts/{id}/adjustments", post(accounts::adjust))
        .route("/accounts/{id}/grants/{grant_id}/void", post(accounts::void_grant))
        .route("/accounts/{id}/cap", post(billing::cap))
        .route("/accounts/{id}/billing-mode", post(billing::billing_mode))
        .route("/accounts/{id}/refills", post(billing::refills))
        .route("/invoices", get(pages::invoices))
        .route("/invoices/{id}", get(pages::invoice))
        .route("/reports", get(pages::reports))
        .route("/reports/schedule", post(pages::update_schedule))
        .route("/reports/alerts", post(pages::update_alerts))
        .route("/top-ups", get(pages::top_ups))
        .route("/webhooks", get(webhooks::endpoints))
        .route("/webhooks/{id}", get(webhooks::deliveries))
        .route("/webhooks/deliveries/{id}/replay", post(webhooks::replay))
        .route("/healthz", get(|| async { "serving\n" }))
        .layer(DefaultBodyLimit::max(BODY_LIMIT))
        .layer(axum::middleware::from_fn(answered))
        .with_state(console)
}

/// Logs each request in a span of its own, counts it by route and status
/// (the route's pattern, never the path: labels stay bounded), and adds the
/// headers every page carries.
async fn answered(request: Request, next: Next) -> Response {
    let route = request.extensions().get::<MatchedPath>().map_or("unmatched", |path| path.as_str()).to_owned();
    let method = request.method().clone();
    let span = tracing::info_span!("http", %method, route = %route);
    let started = Instant::now();
    let mut response = tracing::Instrument::instrument(next.run(request), span.clone()).await;
    let status = response.status();
    span.in_scope(|| {
        tracing::debug!(status = status.as_u16(), elapsed_us = started.elapsed().as_micros() as u64, "answered")
    });
    metrics::counter!("reservoir_console_requests_total", "route" => route, "method" => method.to_string(), "status" => status.as_u16().to_string()).increment(1);
    let headers = response.headers_mut();
    for (name, value) in [
        (
            header::CONTENT_SECURITY_POLICY,
            "default-src 'none'; style-src 'unsafe-inline'; img-src 'self' data:; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
        ),
        (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        (header::REFERRER_POLICY, "same-origin"),
        (header::X_FRAME_OPTIONS, "DENY"),
    ] {
        headers.insert(name, HeaderValue::from_static(value));
    }
    headers.entry(header::CACHE_CONTROL).or_insert(HeaderValue::from_static("no-store"));
    response
}

/// What a refused page or form answers: signing in again, or the reason on a page.
/// The HTTP status a refusal is answered with (`None`: signing in again).
pub(crate) fn status_of(error: &ConsoleError) -> Option<StatusCode> {
    Some(match error {
        ConsoleError::SignedOut => return None,
        ConsoleError::Forgery | ConsoleError::NotAllowed => StatusCode::FORBIDDEN,
        ConsoleError::Invalid { .. } => StatusCode::BAD_REQUEST,
        ConsoleError::Refused { code, .. } => match code {
            tonic::Code::NotFound => StatusCode::NOT_FOUND,
            tonic::Code::PermissionDenied => StatusCode::FORBIDDEN,
            tonic::Code::FailedPrecondition | tonic::Code::AlreadyExists | tonic::Code::Aborted => StatusCode::CONFLICT,
            tonic::Code::ResourceExhausted => StatusCode::TOO_MANY_REQUESTS,
            _ => StatusCode::BAD_REQUEST,
        },
        ConsoleError::Unavailable { .. } => StatusCode::BAD_GATEWAY,
    })
}

/// What a refused page or form answers: signing in again, or the reason on a page.
pub(crate) fn refused(session: Option<&Session>, error: &ConsoleError) -> Response {
    match status_of(error) {
        None => Redirect::to("/login").into_response(),
        Some(status) => (status, views::error(session, "Not done", &error.to_string())).into_response(),
    }
}
