//! An account's usage over a period: the chart by day, and totals by meter
//! and by a dimension's value.

use maud::{Markup, PreEscaped, html};

use super::page;
use crate::domain::usage::Totals;
use crate::store::Session;
use crate::usecases::usage::UsageView;

fn totals(id: &str, heading: &str, rows: &[(String, Totals)], unit: &str) -> Markup {
    html! {
        table id=(id) {
            thead { tr { th { (heading) } th.amount { "Quantity charged" } th.amount { "Charged (" (unit) ")" } th.amount { "Not covered (" (unit) ")" } } }
            tbody {
                @for (name, totals) in rows {
                    tr {
                        td { @if name.is_empty() { em { "none" } } @else { (name) } }
                        td.amount { (totals.charged_quantity) }
                        td.amount { (totals.charged_amount) }
                        td.amount { (totals.uncovered_amount) }
                    }
                }
            }
        }
    }
}

pub fn usage(session: &Session, view: &UsageView, query: &str) -> Markup {
    let account = &view.account;
    let unit = super::accounts::unit_code(account);
    let base = format!("/accounts/{}/usage", account.id);
    page(
        &format!("Usage of {}", account.external_id),
        Some(session),
        html! {
            p { a href={ "/accounts/" (account.id) } { "Back to the account" } }
            form method="get" action=(base) {
                fieldset {
                    legend { "Period and breakdown" }
                    label for="from" { "From (UTC)" }
                    input #from type="date" name="from" value=(view.first);
                    label for="to" { "To, included (UTC)" }
                    input #to type="date" name="to" value=(view.last);
                    label for="dimension" { "Also by the value of this dimension (optional), such as model" }
                    input #dimension name="dimension" value=(view.dimension_key);
                    p { button type="submit" { "Show" } }
                }
            }
            p { a href={ (base) "?" (query) @if !query.is_empty() { "&" } "format=csv" } download { "This usage as CSV" } }
            @if let Some(svg) = super::chart::usage_by_day(&view.days, unit) {
                figure #usage-chart role="img" aria-label={ "Charged usage for each day from " (view.first) " to " (view.last) } {
                    (PreEscaped(svg))
                }
            }
            h2 { "By meter" }
            @if view.by_meter.is_empty() { p { "No usage in this period." } } @else { (totals("by-meter", "Meter", &view.by_meter, unit)) }
            @if !view.dimension_key.is_empty() {
                h2 { "By " (view.dimension_key) }
                (totals("by-dimension", &view.dimension_key, &view.by_dimension, unit))
            }
        },
    )
}
