//! Signing in and out, and finding the session of a request.

use std::sync::Arc;

use axum::Form;
use axum::extract::State;
use axum::response::{IntoResponse, Redirect, Response};
use http::{HeaderMap, HeaderValue, StatusCode, header};
use reservoir_proto::wallet::{CallerKind, KeyRole};
use serde::Deserialize;

use super::Console;
use crate::domain::Role;
use crate::error::ConsoleError;
use crate::store::Session;
use crate::views;

/// The session cookie's name.
pub const COOKIE: &str = "reservoir_session";

/// The value of the cookie `name` in a request's headers.
fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find_map(|(key, value)| (key == name).then_some(value))
}

/// The live session of a request.
pub(crate) fn current(console: &Console, headers: &HeaderMap) -> Result<Session, ConsoleError> {
    cookie(headers, COOKIE).and_then(|token| console.sessions.find(token)).ok_or(ConsoleError::SignedOut)
}

/// A request's live session, as a handler's argument: without one the
/// person is sent to sign in, and the handler is not run.
pub(crate) struct SignedIn(pub Session);

impl axum::extract::FromRequestParts<Arc<Console>> for SignedIn {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut http::request::Parts, console: &Arc<Console>) -> Result<Self, Response> {
        current(console, &parts.headers).map(SignedIn).map_err(|error| super::refused(None, &error))
    }
}

/// The session of a form's request, if the form carries its CSRF token.
pub(crate) fn for_form(console: &Console, headers: &HeaderMap, csrf: &str) -> Result<Session, ConsoleError> {
    let session = current(console, headers)?;
    if session.is_csrf(csrf) { Ok(session) } else { Err(ConsoleError::Forgery) }
}

fn set_cookie(console: &Console, value: &str, max_age: Option<u64>) -> HeaderValue {
    let secure = if console.secure_cookies { "; Secure" } else { "" };
    let age = max_age.map_or(String::new(), |seconds| format!("; Max-Age={seconds}"));
    HeaderValue::from_str(&format!("{COOKIE}={value}; Path=/; HttpOnly; SameSite=Strict{secure}{age}"))
        .unwrap_or(HeaderValue::from_static("reservoir_session=; Path=/; Max-Age=0"))
}

pub(super) async fn login_page() -> Response {
    views::login(None).into_response()
}

#[derive(Deserialize)]
pub(super) struct LoginForm {
    api_key: String,
}

pub(super) async fn login(State(console): State<Arc<Console>>, Form(form): Form<LoginForm>) -> Response {
    let key = form.api_key.trim().to_owned();
    let refused = |message: &str| (StatusCode::UNAUTHORIZED, views::login(Some(message))).into_response();
    if key.is_empty() || key.len() > 256 || !key.bytes().all(|byte| byte.is_ascii_graphic()) {
        return refused("api_key: enter the API key you were given.");
    }
    let caller = match console.upstream.caller(&key).await {
        Ok(caller) => caller,
        Err(ConsoleError::SignedOut) => return refused("This key is not valid, or it was revoked."),
        Err(error) => return (StatusCode::BAD_GATEWAY, views::login(Some(&error.to_string()))).into_response(),
    };
    if caller.kind != CallerKind::Tenant {
        return refused("Sign in with a tenant's key: a service key acts for every tenant and is not for people.");
    }
    let role = match caller.role {
        KeyRole::ReadOnly => Role::ReadOnly,
        KeyRole::Write => Role::Write,
        KeyRole::Admin | KeyRole::Unspecified => Role::Admin,
    };
    let (token, session) = console.sessions.open(key, caller.tenant_id, role);
    tracing::info!(tenant = %session.tenant_id, role = role.label(), "signed in");
    let mut response = Redirect::to("/accounts").into_response();
    response.headers_mut().insert(header::SET_COOKIE, set_cookie(&console, &token, None));
    response
}

#[derive(Deserialize)]
pub(super) struct LogoutForm {
    #[serde(default)]
    csrf: String,
}

pub(super) async fn logout(
    State(console): State<Arc<Console>>,
    headers: HeaderMap,
    Form(form): Form<LogoutForm>,
) -> Response {
    if let Err(error) = for_form(&console, &headers, &form.csrf) {
        return super::refused(current(&console, &headers).ok().as_ref(), &error);
    }
    if let Some(token) = cookie(&headers, COOKIE) {
        console.sessions.close(token);
    }
    let mut response = Redirect::to("/login").into_response();
    response.headers_mut().insert(header::SET_COOKIE, set_cookie(&console, "", Some(0)));
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_session_cookie_is_found_among_others() {
        let mut headers = HeaderMap::new();
        headers.insert(header::COOKIE, HeaderValue::from_static("theme=dark; reservoir_session=abc; other=1"));
        assert_eq!(cookie(&headers, COOKIE), Some("abc"));
        assert_eq!(cookie(&headers, "missing"), None);
    }
}
