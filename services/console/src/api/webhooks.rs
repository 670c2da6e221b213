//! Webhook endpoints, their deliveries, and sending one again.

use std::sync::Arc;

use axum::Form;
use axum::extract::{Path, RawQuery, State};
use axum::response::{IntoResponse, Redirect, Response};
use http::HeaderMap;
use reservoir_proto::orchestrator;
use serde::Deserialize;

use super::accounts::{allowed, first, pairs};
use super::session::SignedIn;
use super::{Console, refused};
use crate::domain::Role;
use crate::error::ConsoleError;
use crate::views;

pub(super) async fn endpoints(State(console): State<Arc<Console>>, SignedIn(session): SignedIn) -> Response {
    match console.upstream.webhook_endpoints(&session.key).await {
        Ok(endpoints) => views::webhooks::endpoints(&session, &endpoints).into_response(),
        Err(error) => refused(Some(&session), &error),
    }
}

pub(super) async fn deliveries(
    State(console): State<Arc<Console>>,
    SignedIn(session): SignedIn,
    Path(endpoint_id): Path<String>,
    RawQuery(query): RawQuery,
) -> Response {
    let query = pairs(query.as_deref());
    let status = match first(&query, "status") {
        "" => orchestrator::DeliveryStatus::Unspecified,
        "pending" => orchestrator::DeliveryStatus::Pending,
        "succeeded" => orchestrator::DeliveryStatus::Succeeded,
        "failed" => orchestrator::DeliveryStatus::Failed,
        other => {
            let error = ConsoleError::invalid("status", format!("{other:?} is not pending, succeeded or failed"));
            return refused(Some(&session), &error);
        }
    };
    let notice = (first(&query, "done") == "replayed").then_some("Sent again; its attempts are listed below.");
    let found = tokio::try_join!(
        console.upstream.webhook_endpoints(&session.key),
        console.upstream.webhook_deliveries(&session.key, &endpoint_id, status),
    );
    match found {
        Ok((endpoints, deliveries)) => match endpoints.iter().find(|endpoint| endpoint.id == endpoint_id) {
            Some(endpoint) => views::webhooks::deliveries(&session, endpoint, &deliveries, notice).into_response(),
            None => refused(
                Some(&session),
                &ConsoleError::Refused {
                    reason: "NOT_FOUND".into(),
                    message: format!("no webhook endpoint {endpoint_id}"),
                    code: tonic::Code::NotFound,
                },
            ),
        },
        Err(error) => refused(Some(&session), &error),
    }
}

#[derive(Deserialize)]
pub(super) struct ReplayForm {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    endpoint_id: String,
}

pub(super) async fn replay(
    State(console): State<Arc<Console>>,
    headers: HeaderMap,
    Path(delivery_id): Path<String>,
    Form(form): Form<ReplayForm>,
) -> Response {
    let session = match allowed(&console, &headers, &form.csrf, Role::may_change) {
        Ok(session) => session,
        Err(refusal) => return refusal,
    };
    match console.upstream.replay_delivery(&session.key, &delivery_id).await {
        // Back to the endpoint's page: only an id of the form's own is put in the address.
        Ok(()) if uuid::Uuid::parse_str(&form.endpoint_id).is_ok() => {
            Redirect::to(&format!("/webhooks/{}?done=replayed", form.endpoint_id)).into_response()
        }
        Ok(()) => Redirect::to("/webhooks").into_response(),
        Err(error) => refused(Some(&session), &error),
    }
}
