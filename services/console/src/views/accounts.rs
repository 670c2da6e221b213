//! The accounts: found by the tenant's own id, or listed a page at a time.

use maud::{Markup, html};
use reservoir_proto::wallet;

use super::{names, page};
use crate::clients::AccountPage;
use crate::store::Session;

pub fn list(session: &Session, external_id: &str, found: &AccountPage) -> Markup {
    page(
        "Accounts",
        Some(session),
        html! {
            form method="get" action="/accounts" role="search" {
                label for="external_id" { "Find by your id for the customer (external id)" }
                input #external_id type="search" name="external_id" value=(external_id);
                " " button type="submit" { "Find" }
            }
            @if found.accounts.is_empty() {
                p { @if external_id.is_empty() { "No accounts yet." } @else { "No account has the external id " code { (external_id) } "." } }
            } @else {
                table {
                    thead { tr { th { "External id" } th { "Unit" } th { "Overdraft" } th { "Status" } th { "Opened" } } }
                    tbody {
                        @for account in &found.accounts {
                            tr {
                                td { a href={ "/accounts/" (account.id) } { (account.external_id) } }
                                td { (account.unit.as_ref().map(|unit| unit.code.as_str()).unwrap_or_default()) }
                                td { (names::overdraft(account.overdraft_policy())) }
                                td { (names::status(account.status())) @if account.credit_blocked { " · credit blocked" } }
                                td { (names::instant(account.created_at.as_ref())) }
                            }
                        }
                    }
                }
                @if !found.next_page_token.is_empty() {
                    p { a href={ "/accounts?page_token=" (found.next_page_token) } rel="next" { "Next page" } }
                }
            }
        },
    )
}

/// Helpers other views share for the wallet's enums.
pub fn unit_code(account: &wallet::Account) -> &str {
    account.unit.as_ref().map(|unit| unit.code.as_str()).unwrap_or_default()
}
