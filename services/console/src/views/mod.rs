//! The HTML of every page. maud escapes what it interpolates, so text from
//! the services (external ids, descriptions, reasons) cannot become markup.

pub mod account;
pub mod accounts;
pub mod chart;
pub mod invoices;
pub mod names;
pub mod reports;
pub mod usage;
pub mod webhooks;

use maud::{DOCTYPE, Markup, html};

use crate::store::Session;

const STYLE: &str = r#"
body { font: 16px/1.5 system-ui, sans-serif; margin: 0; color: #111; background: #fff; }
header { background: #0b3d62; color: #fff; padding: .5rem 1rem; display: flex; gap: 1rem; align-items: center; }
header a { color: #fff; }
header button { color: #fff; background: transparent; border: 1px solid #fff; border-radius: 3px; padding: .2rem .6rem; cursor: pointer; }
header nav { flex: 1; display: flex; gap: 1rem; }
main { padding: 1rem; max-width: 72rem; }
a { color: #0b4f8a; }
a:focus, button:focus, input:focus, select:focus { outline: 3px solid #f0a000; outline-offset: 2px; }
table { border-collapse: collapse; margin: .5rem 0 1rem; }
th, td { border-bottom: 1px solid #bbb; padding: .25rem .75rem; text-align: left; }
td.amount, th.amount { text-align: right; font-variant-numeric: tabular-nums; }
.figures { display: flex; flex-wrap: wrap; gap: 1rem; padding: 0; list-style: none; }
.figures li { border: 1px solid #888; border-radius: 4px; padding: .5rem 1rem; min-width: 9rem; }
.figures strong { display: block; font-size: 1.4rem; }
form.inline { display: inline; }
fieldset { border: 1px solid #888; margin: 1rem 0; }
label { display: block; margin-top: .5rem; }
.error { border: 2px solid #a00000; background: #fff0f0; padding: .5rem 1rem; }
.notice { border: 2px solid #0a6a2a; background: #effaf2; padding: .5rem 1rem; }
.skip { position: absolute; left: -10000px; }
.skip:focus { left: 1rem; top: 1rem; background: #fff; color: #000; padding: .5rem; }
"#;

/// A page with the console's header; `session` adds navigation and sign-out.
pub fn page(title: &str, session: Option<&Session>, body: Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (title) " · Reservoir" }
                style { (maud::PreEscaped(STYLE)) }
            }
            body {
                a.skip href="#content" { "Skip to content" }
                header {
                    strong { "Reservoir" }
                    @if let Some(session) = session {
                        nav aria-label="Main" {
                            a href="/accounts" { "Accounts" }
                            a href="/invoices" { "Invoices" }
                            a href="/top-ups" { "Top-ups" }
                            a href="/reports" { "Reports" }
                            a href="/webhooks" { "Webhooks" }
                        }
                        span { "Tenant " code { (session.tenant_id) } " · " (session.role.label()) " key" }
                        form.inline method="post" action="/logout" {
                            (csrf_field(session))
                            button type="submit" { "Sign out" }
                        }
                    }
                }
                main #content {
                    h1 { (title) }
                    (body)
                }
            }
        }
    }
}

/// The hidden field every form of a session carries.
pub fn csrf_field(session: &Session) -> Markup {
    html! { input type="hidden" name="csrf" value=(session.csrf); }
}

/// A message above a page's content.
pub fn message(error: Option<&str>, notice: Option<&str>) -> Markup {
    html! {
        @if let Some(error) = error { p.error role="alert" { (error) } }
        @if let Some(notice) = notice { p.notice role="status" { (notice) } }
    }
}

pub fn login(error: Option<&str>) -> Markup {
    page(
        "Sign in",
        None,
        html! {
            (message(error, None))
            form method="post" action="/login" {
                label for="api_key" { "API key" }
                input #api_key type="password" name="api_key" autocomplete="current-password" required size="60";
                p { button type="submit" { "Sign in" } }
            }
            p { "The key decides what you see and may do: a read-only key is shown no forms that change anything." }
        },
    )
}

/// An error page for a person with a session.
pub fn error(session: Option<&Session>, title: &str, error: &str) -> Markup {
    page(title, session, html! { (message(Some(error), None)) p { a href="/accounts" { "Back to the accounts" } } })
}
