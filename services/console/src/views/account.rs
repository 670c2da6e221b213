//! One account: its figures, the month's usage and spend against the cap,
//! its grants, its latest entries, and — for keys that may change money —
//! the forms to grant, adjust and void.

use maud::{Markup, PreEscaped, html};
use rust_decimal::Decimal;

use super::{csrf_field, message, names, page};
use reservoir_proto::wallet::OverdraftPolicy;

use crate::domain::usage::{MARKS, percent_of};
use crate::store::Session;
use crate::usecases::account::AccountView;

/// What the page says above its content, and the form's fresh idempotency key.
pub struct Notes<'a> {
    pub error: Option<&'a str>,
    pub notice: Option<&'a str>,
    /// Each rendered form carries a new key, so a form sent twice (a double
    /// click, a reload) changes the balance once.
    pub form_key: String,
    pub kinds: &'a [String],
}

/// Whether an amount as the services write it is there and not zero.
fn nonzero(amount: &str) -> bool {
    amount.parse::<Decimal>().is_ok_and(|amount| !amount.is_zero())
}

fn figure(label: &str, amount: &str, unit: &str) -> Markup {
    html! { li { span { (label) } strong { (amount) " " (unit) } } }
}

pub fn account(session: &Session, view: &AccountView, notes: &Notes<'_>) -> Markup {
    let account = &view.account;
    let balance = &view.balance;
    let unit = super::accounts::unit_code(account);
    let title = format!("Account {}", account.external_id);
    let base = format!("/accounts/{}", account.id);
    page(
        &title,
        Some(session),
        html! {
            (message(notes.error, notes.notice))
            p {
                "Overdraft: " (names::overdraft(account.overdraft_policy()))
                @if account.overdraft_policy() == OverdraftPolicy::CreditLimit { " (limit " (account.credit_limit) ")" }
                " · status " (names::status(account.status()))
                @if account.credit_blocked { " · " strong { "credit blocked" } " until an overdue invoice is paid" }
            }
            p #billing-mode {
                "Billing: " strong { (view.billing_mode().label()) }
                @if let Some(contact) = &view.billing_contact { " · billing contact " (contact) " (the tenant's)" }
            }
            section aria-labelledby="balance" {
                h2 #balance { "Balance" }
                ul.figures {
                    (figure("Available", &balance.available, unit))
                    (figure("Held", &balance.held, unit))
                    (figure("Paid credits", &balance.paid, unit))
                    (figure("Promotional credits", &balance.promotional, unit))
                    (figure("Courtesy credits", &balance.courtesy, unit))
                    @if nonzero(&balance.pending) { (figure("Not yet effective", &balance.pending, unit)) }
                    @if nonzero(&balance.overdraft_used) { (figure("Overdraft used", &balance.overdraft_used, unit)) }
                }
            }
            (spend(view, unit))
            @if session.role.may_configure() { (cap_form(session, view, notes, &base)) (mode_form(session, view, notes, &base)) }
            (usage(view, unit))
            (refills(session, view, &base, unit))
            (grants(session, view, notes, &base))
            (entries(view, notes, &base))
            @if session.role.may_change() { (forms(session, notes, &base)) }
        },
    )
}

fn spend(view: &AccountView, unit: &str) -> Markup {
    let spend = &view.spend;
    let cap: Option<Decimal> = spend.monthly_spending_cap.parse().ok();
    let spent: Decimal = spend.spent.parse().unwrap_or_default();
    let projected: Decimal = spend.projected.parse().unwrap_or_default();
    html! {
        section aria-labelledby="spend" {
            h2 #spend { "This month's spend" }
            ul.figures {
                (figure("Spent", &spend.spent, unit))
                (figure("Projected by month end", &spend.projected, unit))
                @if cap.is_some() { (figure("Monthly cap", &spend.monthly_spending_cap, unit)) }
            }
            @if let Some(cap) = cap {
                p #cap-progress {
                    "Spent " strong { (percent_of(spent, cap)) "%" } " of the cap; projected "
                    strong { (percent_of(projected, cap)) "%" } ". Alerts at "
                    @for (index, mark) in MARKS.iter().enumerate() {
                        @if index > 0 { ", " }
                        span .mark data-reached=(percent_of(spent, cap) >= *mark) { (mark) "%" @if percent_of(spent, cap) >= *mark { " (reached)" } }
                    }
                    "."
                }
                meter min="0" max=(cap) low=(cap * Decimal::new(5, 1)) high=(cap * Decimal::new(8, 1)) optimum="0" value=(spent) aria-label="Spend against the cap" {}
            } @else {
                p { "No monthly spending cap." }
            }
        }
    }
}

fn usage(view: &AccountView, unit: &str) -> Markup {
    let used: Vec<_> = view.days.iter().filter(|day| !day.charged.is_zero()).collect();
    html! {
        section aria-labelledby="usage" {
            h2 #usage { "Usage by day, " (view.month.0.format("%B %Y")) }
            p { a href={ "/accounts/" (view.account.id) "/usage" } { "Usage by meter and dimension, any period, as CSV" } }
            @if let Some(svg) = super::chart::usage_by_day(&view.days, unit) {
                figure #usage-chart role="img" aria-label={ "Charged usage for each day of " (view.month.0.format("%B %Y")) } {
                    (PreEscaped(svg))
                }
            }
            @if used.is_empty() {
                p { "No usage charged this month." }
            } @else {
                details {
                    summary { "The figures" }
                    table #usage-days {
                        thead { tr { th { "Day" } th.amount { "Charged (" (unit) ")" } } }
                        tbody { @for day in &used { tr { td { (day.date) } td.amount { (day.charged) } } } }
                    }
                }
            }
        }
    }
}

fn grants(session: &Session, view: &AccountView, notes: &Notes<'_>, base: &str) -> Markup {
    html! {
        section aria-labelledby="grants" {
            h2 #grants { "Grants" }
            @if view.grants.is_empty() { p { "No grants." } } @else {
                table {
                    thead { tr { th { "Kind" } th.amount { "Granted" } th.amount { "Remaining" } th { "Status" } th { "Expires" } th { "Meters" } @if session.role.may_change() { th { span.skip { "Actions" } } } } }
                    tbody {
                        @for grant in &view.grants {
                            tr {
                                td { (names::grant_kind(grant.kind())) }
                                td.amount { (grant.original_amount) }
                                td.amount { (grant.remaining_amount) }
                                td { (names::grant_status(grant.status())) }
                                td { (names::instant(grant.expires_at.as_ref())) }
                                td { (grant.meter_codes.join(", ")) }
                                @if session.role.may_change() {
                                    td {
                                        @if matches!(grant.status(), reservoir_proto::wallet::GrantStatus::Active | reservoir_proto::wallet::GrantStatus::Pending) {
                                            form.inline method="post" action={ (base) "/grants/" (grant.id) "/void" } {
                                                (csrf_field(session))
                                                input type="hidden" name="idempotency_key" value=(notes.form_key);
                                                button type="submit" { "Void" }
                                            }
                                        }
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }
    }
}

fn entries(view: &AccountView, notes: &Notes<'_>, base: &str) -> Markup {
    const KINDS: [&str; 6] = ["grant", "debit", "adjustment", "refund", "expiry", "capture"];
    html! {
        section aria-labelledby="ledger" {
            h2 #ledger { "Ledger" }
            form method="get" action=(base) {
                fieldset {
                    legend { "Only these kinds" }
                    @for kind in KINDS {
                        label style="display:inline; margin-right:1rem" {
                            input type="checkbox" name="kind" value=(kind) checked[notes.kinds.iter().any(|chosen| chosen == kind)];
                            " " (kind)
                        }
                    }
                    button type="submit" { "Filter" }
                }
            }
            p { a href={ (base) "/statement.csv" } download { "This month's statement (CSV)" } }
            @if view.entries.is_empty() { p { "No entries." } } @else {
                table #entries {
                    thead { tr { th { "#" } th { "When" } th { "Kind" } th.amount { "Amount" } th.amount { "Balance after" } th { "Meter" } th { "Description" } } }
                    tbody {
                        @for entry in &view.entries {
                            tr {
                                td { (entry.sequence) }
                                td { (names::instant(entry.created_at.as_ref())) }
                                td { (names::entry_kind(entry.kind())) }
                                td.amount { (entry.amount) }
                                td.amount { (entry.balance_after) }
                                td { (entry.meter_code) }
                                td { (entry.description) }
                            }
                        }
                    }
                }
                @if !view.next_entries.is_empty() {
                    p { a rel="next" href={ (base) "?page_token=" (view.next_entries) @for kind in notes.kinds { "&kind=" (kind) } } { "Older entries" } }
                }
            }
        }
    }
}

fn forms(session: &Session, notes: &Notes<'_>, base: &str) -> Markup {
    html! {
        section aria-labelledby="change" {
            h2 #change { "Grant or adjust" }
            form method="post" action={ (base) "/grants" } {
                fieldset {
                    legend { "Grant credits" }
                    (csrf_field(session))
                    input type="hidden" name="idempotency_key" value=(notes.form_key);
                    label for="grant-amount" { "Amount" }
                    input #grant-amount name="amount" inputmode="decimal" required;
                    label for="grant-kind" { "Kind" }
                    select #grant-kind name="kind" {
                        option value="courtesy" { "Courtesy (service recovery)" }
                        option value="promotional" { "Promotional" }
                        option value="paid" { "Paid" }
                    }
                    label for="grant-expires" { "Expires on (UTC, optional)" }
                    input #grant-expires type="date" name="expires_on";
                    label for="grant-reason" { "Note (optional)" }
                    input #grant-reason name="note" maxlength="512";
                    p { button type="submit" { "Grant" } }
                }
            }
            form method="post" action={ (base) "/adjustments" } {
                fieldset {
                    legend { "Adjust the balance" }
                    (csrf_field(session))
                    input type="hidden" name="idempotency_key" value=(notes.form_key);
                    label for="adjust-amount" { "Amount (negative to take credits away)" }
                    input #adjust-amount name="amount" inputmode="decimal" required;
                    label for="adjust-reason" { "Reason" }
                    input #adjust-reason name="reason" required maxlength="512";
                    p { button type="submit" { "Adjust" } }
                }
            }
        }
    }
}

/// Monthly invoicing is an overdraft (up to a credit limit, or without
/// one), settled by each month's statement; a wallet (prepaid) has none.
fn mode_form(session: &Session, view: &AccountView, notes: &Notes<'_>, base: &str) -> Markup {
    let policy = view.account.overdraft_policy();
    let limit = if policy == OverdraftPolicy::CreditLimit { view.account.credit_limit.as_str() } else { "" };
    html! {
        form method="post" action={ (base) "/billing-mode" } {
            fieldset {
                legend { "Billing mode" }
                (csrf_field(session))
                input type="hidden" name="idempotency_key" value=(notes.form_key);
                label { input type="radio" name="mode" value="wallet" checked[policy == OverdraftPolicy::None || policy == OverdraftPolicy::Unspecified]; " Wallet: prepaid credits, topped up by hand or automatically" }
                label { input type="radio" name="mode" value="monthly" checked[policy == OverdraftPolicy::CreditLimit]; " Monthly invoice: usage on credit up to the limit below, billed each month" }
                label { input type="radio" name="mode" value="unlimited" checked[policy == OverdraftPolicy::Unlimited]; " Monthly invoice without a credit limit" }
                label for="credit-limit" { "Credit limit (a monthly invoice up to a limit only)" }
                input #credit-limit name="credit_limit" inputmode="decimal" value=(limit);
                p { button type="submit" { "Save the billing mode" } }
            }
        }
    }
}

fn cap_form(session: &Session, view: &AccountView, notes: &Notes<'_>, base: &str) -> Markup {
    html! {
        form method="post" action={ (base) "/cap" } {
            fieldset {
                legend { "Monthly spending cap" }
                (csrf_field(session))
                input type="hidden" name="idempotency_key" value=(notes.form_key);
                label for="cap" { "Cap (empty: no cap)" }
                input #cap name="monthly_spending_cap" inputmode="decimal" value=(view.account.monthly_spending_cap);
                label for="warning" { "Warn when the available balance falls below (empty: never)" }
                input #warning name="low_balance_warning" inputmode="decimal" value=(view.account.low_balance_warning);
                p { button type="submit" { "Save the cap" } }
            }
        }
    }
}

fn refills(session: &Session, view: &AccountView, base: &str, unit: &str) -> Markup {
    let settings = view.auto_replenish.as_ref().ok().and_then(Option::as_ref).filter(|settings| settings.enabled);
    html! {
        section aria-labelledby="refills" {
            h2 #refills { "Refillable wallet" }
            @if let Some(settings) = settings {
                p #refill-settings {
                    "When the available balance falls below " strong { (settings.threshold) " " (unit) } ", "
                    @if settings.fixed_amount.is_empty() {
                        "a top-up brings it back to " strong { (settings.target_balance) " " (unit) }
                    } @else {
                        "a top-up adds " strong { (settings.fixed_amount) " " (unit) }
                    }
                    ", at most " (settings.max_top_ups_per_day) " a day"
                    @if !settings.max_credits_per_month.is_empty() { " and " (settings.max_credits_per_month) " " (unit) " a month" }
                    "."
                    @if settings.paused { " " strong { "Paused" } " after " (settings.consecutive_declines) " declined charges: save the settings again to resume." }
                }
            } @else if let Err(error) = &view.auto_replenish {
                p.error role="status" { "The automatic top-up cannot be shown now: " (error) }
            } @else {
                p { "No automatic top-up." }
            }
            @if session.role.may_configure() && view.auto_replenish.is_ok() {
                form method="post" action={ (base) "/refills" } {
                    fieldset {
                        legend { "Automatic top-up" }
                        (csrf_field(session))
                        label for="threshold" { "Top up when the available balance falls below" }
                        input #threshold name="threshold" inputmode="decimal" required value=(settings.map(|s| s.threshold.as_str()).unwrap_or_default());
                        label for="refill-mode" { "Refill" }
                        select #refill-mode name="mode" {
                            option value="fixed" selected[settings.is_none_or(|s| !s.fixed_amount.is_empty())] { "a fixed amount" }
                            option value="target" selected[settings.is_some_and(|s| s.fixed_amount.is_empty())] { "up to a target balance" }
                        }
                        label for="refill-amount" { "Amount, or target balance" }
                        input #refill-amount name="amount" inputmode="decimal" required
                            value=(settings.map(|s| if s.fixed_amount.is_empty() { s.target_balance.as_str() } else { s.fixed_amount.as_str() }).unwrap_or_default());
                        label for="payment-method" { "Payment method id" }
                        input #payment-method name="payment_method_id" required value=(settings.map(|s| s.payment_method_id.as_str()).unwrap_or_default());
                        label for="per-day" { "At most this many top-ups a day (1 to 100)" }
                        input #per-day name="max_top_ups_per_day" inputmode="numeric" value=(settings.map_or(3, |s| s.max_top_ups_per_day));
                        label for="warning-percent" { "Warn when the balance falls to this % of the refill amount (1 to 100; empty: keep the warning level)" }
                        input #warning-percent name="low_balance_warning_percent" inputmode="numeric"
                            value=(settings.map(|s| s.low_balance_warning_percent).filter(|percent| *percent > 0).map(|percent| percent.to_string()).unwrap_or_default());
                        p { button type="submit" { "Save the automatic top-up" } }
                    }
                }
            }
            h3 { "Refill history" }
            p { "The latest refills of the past year, newest first." }
            @if view.refills.is_empty() { p { "No refills yet." } } @else {
                table #refill-history {
                    thead { tr { th { "Date" } th { "Type" } th { "Credits" } th.amount { "Amount" } th.amount { "Balance after" } th { "Note" } } }
                    tbody {
                        @for refill in &view.refills {
                            tr {
                                td { (refill.date) }
                                td { (refill.kind.to_lowercase().replace('_', " ")) }
                                td { (refill.grant_kind.to_lowercase()) }
                                td.amount { (refill.amount) }
                                td.amount { (refill.balance_after) }
                                td { (refill.description) }
                            }
                        }
                    }
                }
            }
        }
    }
}
