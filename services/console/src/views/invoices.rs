//! Invoices: a list, and one invoice as a page that prints on its own.

use maud::{Markup, html};
use reservoir_proto::invoicing;

use super::{names, page};
use crate::store::Session;

pub fn list(session: &Session, account_id: &str, invoices: &[invoicing::Invoice], next: &str) -> Markup {
    page(
        "Invoices",
        Some(session),
        html! {
            form method="get" action="/invoices" {
                label for="account" { "Only the invoices of this account (its id)" }
                input #account name="account_id" value=(account_id) size="40";
                " " button type="submit" { "Show" }
            }
            @if invoices.is_empty() { p { "No invoices." } } @else {
                table #invoices {
                    thead { tr { th { "Number" } th { "Kind" } th { "Status" } th { "Issued" } th { "Due" } th.amount { "Total" } th.amount { "Due now" } } }
                    tbody {
                        @for invoice in invoices {
                            tr {
                                td { a href={ "/invoices/" (invoice.id) } { @if invoice.number == 0 { "draft" } @else { "#" (invoice.number) } } }
                                td { (names::invoice_kind(invoice.kind())) }
                                td { (names::invoice_status(invoice.status())) @if invoice.overdue { " · " strong { "overdue" } } }
                                td { (names::instant(invoice.issued_at.as_ref())) }
                                td { (names::instant(invoice.due_at.as_ref())) }
                                td.amount { (invoice.total) " " (invoice.currency) }
                                td.amount { (invoice.amount_due) " " (invoice.currency) }
                            }
                        }
                    }
                }
                @if !next.is_empty() {
                    p { a rel="next" href={ "/invoices?account_id=" (account_id) "&page_token=" (next) } { "Older invoices" } }
                }
            }
        },
    )
}

/// One invoice, laid out to print (the console's header is left off paper).
pub fn invoice(session: &Session, invoice: &invoicing::Invoice) -> Markup {
    let title = if invoice.number == 0 { "Draft invoice".to_owned() } else { format!("Invoice #{}", invoice.number) };
    page(
        &title,
        Some(session),
        html! {
            style { "@media print { header, .skip, .no-print { display: none } main { max-width: none } }" }
            p.no-print { a href={ "/invoices?account_id=" (invoice.account_id) } { "All invoices of this account" } }
            dl #invoice-facts {
                dt { "Account" } dd { a href={ "/accounts/" (invoice.account_id) } { code { (invoice.account_id) } } }
                dt { "Kind" } dd { (names::invoice_kind(invoice.kind())) }
                dt { "Status" } dd { (names::invoice_status(invoice.status())) @if invoice.overdue { " (overdue)" } }
                dt { "Period" } dd { (names::instant(invoice.period_start.as_ref())) " to " (names::instant(invoice.period_end.as_ref())) }
                @if invoice.issued_at.is_some() { dt { "Issued" } dd { (names::instant(invoice.issued_at.as_ref())) } }
                @if invoice.due_at.is_some() { dt { "Due" } dd { (names::instant(invoice.due_at.as_ref())) } }
                @if invoice.paid_at.is_some() { dt { "Paid" } dd { (names::instant(invoice.paid_at.as_ref())) " · " (invoice.payment_reference) } }
            }
            table #invoice-lines {
                thead { tr { th { "Line" } th { "Description" } th.amount { "Quantity" } th.amount { "Unit price" } th.amount { "Amount" } } }
                tbody {
                    @for line in &invoice.lines {
                        tr {
                            td { (names::line_kind(line.kind())) }
                            td {
                                (line.description)
                                @if !line.dimension_value.is_empty() { " (" (line.dimension_key) " " (line.dimension_value) ")" }
                            }
                            td.amount { (line.quantity) }
                            td.amount { (line.unit_price) }
                            td.amount { (line.amount) " " (invoice.currency) }
                        }
                    }
                }
                tfoot {
                    tr { th colspan="4" { "Total" } td.amount #invoice-total { strong { (invoice.total) " " (invoice.currency) } } }
                    tr { th colspan="4" { "Amount due" } td.amount { (invoice.amount_due) " " (invoice.currency) } }
                }
            }
            @if !invoice.credits.is_empty() && invoice.credits != "0" {
                p { "Credits: " (invoice.credits) " " (invoice.unit_code) }
            }
            p.no-print { "Print it with your browser's print command: the console's header and links stay off the paper." }
        },
    )
}
