//! Webhook endpoints and their deliveries, with a replay for each delivery.

use maud::{Markup, html};
use reservoir_proto::orchestrator;

use super::{csrf_field, message, names, page};
use crate::store::Session;

pub fn endpoints(session: &Session, endpoints: &[orchestrator::WebhookEndpoint]) -> Markup {
    page(
        "Webhooks",
        Some(session),
        html! {
            p { "Endpoints are registered with " code { "reservoir webhooks create" } " or the WebhookService API." }
            @if endpoints.is_empty() { p { "No endpoints." } } @else {
                table #endpoints {
                    thead { tr { th { "URL" } th { "Description" } th { "Events" } th { "Enabled" } th { "Created" } } }
                    tbody {
                        @for endpoint in endpoints {
                            tr {
                                td { a href={ "/webhooks/" (endpoint.id) } { (endpoint.url) } }
                                td { (endpoint.description) }
                                td { @if endpoint.event_types.is_empty() { "all" } @else { (endpoint.event_types.join(", ")) } }
                                td { @if endpoint.enabled { "yes" } @else { "no" } }
                                td { (names::instant(endpoint.created_at.as_ref())) }
                            }
                        }
                    }
                }
            }
        },
    )
}

pub fn deliveries(
    session: &Session,
    endpoint: &orchestrator::WebhookEndpoint,
    deliveries: &[orchestrator::WebhookDelivery],
    notice: Option<&str>,
) -> Markup {
    page(
        &format!("Deliveries to {}", endpoint.url),
        Some(session),
        html! {
            (message(None, notice))
            p { a href="/webhooks" { "All endpoints" } " · " a href={ "/webhooks/" (endpoint.id) "?status=failed" } { "Only the failed" } }
            @if deliveries.is_empty() { p { "No deliveries." } } @else {
                table #deliveries {
                    thead { tr { th { "Created" } th { "Event" } th { "Account" } th { "Status" } th { "Attempts" } th { "Last answer" } th { "Next attempt" } @if session.role.may_change() { th { span.skip { "Actions" } } } } }
                    tbody {
                        @for delivery in deliveries {
                            tr {
                                td { (names::instant(delivery.created_at.as_ref())) }
                                td { (delivery.event_type) }
                                td { @if !delivery.account_id.is_empty() { a href={ "/accounts/" (delivery.account_id) } { code { (delivery.account_id) } } } }
                                td { (names::delivery_status(delivery.status())) }
                                td { (delivery.attempts) }
                                td { @if delivery.last_status_code > 0 { "HTTP " (delivery.last_status_code) " " } (delivery.last_error) }
                                td { (names::instant(delivery.next_attempt_at.as_ref())) }
                                @if session.role.may_change() {
                                    td {
                                        form.inline method="post" action={ "/webhooks/deliveries/" (delivery.id) "/replay" } {
                                            (csrf_field(session))
                                            input type="hidden" name="endpoint_id" value=(endpoint.id);
                                            button type="submit" { "Send again" }
                                        }
                                    }
                                }
                            }
                        }
                    }
                }
            }
        },
    )
}
