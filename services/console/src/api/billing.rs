//! An account's billing settings: its billing mode, its spending cap and its
//! automatic top-up.

use std::sync::Arc;

use axum::Form;
use axum::extract::{Path, State};
use axum::response::Response;
use http::HeaderMap;
use reservoir_proto::{orchestrator, wallet};
use serde::Deserialize;

use super::Console;
use super::accounts::{allowed, answered};
use crate::domain::Role;
use crate::error::ConsoleError;

#[derive(Deserialize)]
pub(super) struct CapForm {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    idempotency_key: String,
    #[serde(default)]
    monthly_spending_cap: String,
    #[serde(default)]
    low_balance_warning: String,
}

/// Saves the cap and the warning level; an empty field removes it.
pub(super) async fn cap(
    State(console): State<Arc<Console>>,
    headers: HeaderMap,
    Path(account_id): Path<String>,
    Form(form): Form<CapForm>,
) -> Response {
    let session = match allowed(&console, &headers, &form.csrf, Role::may_configure) {
        Ok(session) => session,
        Err(refusal) => return refusal,
    };
    let request = wallet::UpdateAccountRequest {
        account_id: account_id.clone(),
        monthly_spending_cap: Some(form.monthly_spending_cap.trim().to_owned()),
        low_balance_warning: Some(form.low_balance_warning.trim().to_owned()),
        idempotency_key: form.idempotency_key,
        ..Default::default()
    };
    let result = console.upstream.update_account(&session.key, request).await;
    answered(&console, &session, &account_id, result, "cap").await
}

#[derive(Deserialize)]
pub(super) struct ModeForm {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    idempotency_key: String,
    #[serde(default)]
    mode: String,
    #[serde(default)]
    credit_limit: String,
}

/// The overdraft a billing mode asks of the wallet.
fn overdraft_of(form: &ModeForm) -> Result<(wallet::OverdraftPolicy, String), ConsoleError> {
    let limit = form.credit_limit.trim();
    match form.mode.as_str() {
        "monthly" => Ok((wallet::OverdraftPolicy::CreditLimit, limit.to_owned())),
        "wallet" | "unlimited" if !limit.is_empty() => {
            Err(ConsoleError::invalid("credit_limit", "is only for a monthly invoice up to a credit limit"))
        }
        "wallet" => Ok((wallet::OverdraftPolicy::None, String::new())),
        "unlimited" => Ok((wallet::OverdraftPolicy::Unlimited, String::new())),
        other => Err(ConsoleError::invalid("mode", format!("{other:?} is not wallet, monthly or unlimited"))),
    }
}

/// Bills the account monthly (an overdraft up to the credit limit) or as a
/// prepaid wallet (no overdraft).
pub(super) async fn billing_mode(
    State(console): State<Arc<Console>>,
    headers: HeaderMap,
    Path(account_id): Path<String>,
    Form(form): Form<ModeForm>,
) -> Response {
    let session = match allowed(&console, &headers, &form.csrf, Role::may_configure) {
        Ok(session) => session,
        Err(refusal) => return refusal,
    };
    let result = match overdraft_of(&form) {
        Ok((policy, credit_limit)) => {
            let request = wallet::UpdateAccountRequest {
                account_id: account_id.clone(),
                overdraft_policy: Some(policy.into()),
                credit_limit,
                idempotency_key: form.idempotency_key,
                ..Default::default()
            };
            console.upstream.update_account(&session.key, request).await
        }
        Err(error) => Err(error),
    };
    answered(&console, &session, &account_id, result, "mode").await
}

#[derive(Deserialize)]
pub(super) struct RefillForm {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    threshold: String,
    #[serde(default)]
    mode: String,
    #[serde(default)]
    amount: String,
    #[serde(default)]
    payment_method_id: String,
    #[serde(default)]
    max_top_ups_per_day: String,
    #[serde(default)]
    low_balance_warning_percent: String,
}

fn refill_settings(account_id: &str, form: &RefillForm) -> Result<orchestrator::AutoReplenish, ConsoleError> {
    let amount = form.amount.trim().to_owned();
    let (fixed_amount, target_balance) = match form.mode.as_str() {
        "fixed" => (amount, String::new()),
        "target" => (String::new(), amount),
        other => return Err(ConsoleError::invalid("mode", format!("{other:?} is not fixed or target"))),
    };
    let per_day = form.max_top_ups_per_day.trim();
    let max_top_ups_per_day = per_day
        .parse()
        .map_err(|_| ConsoleError::invalid("max_top_ups_per_day", format!("{per_day:?} is not a whole number")))?;
    // Empty leaves the wallet's warning level as it is.
    let percent = form.low_balance_warning_percent.trim();
    let low_balance_warning_percent = match percent {
        "" => 0,
        percent => match percent.parse::<u32>() {
            Ok(percent @ 1..=100) => percent,
            _ => {
                let why = format!("{percent:?} is not a whole percentage from 1 to 100");
                return Err(ConsoleError::invalid("low_balance_warning_percent", why));
            }
        },
    };
    Ok(orchestrator::AutoReplenish {
        account_id: account_id.to_owned(),
        low_balance_warning_percent,
        threshold: form.threshold.trim().to_owned(),
        fixed_amount,
        target_balance,
        payment_method_id: form.payment_method_id.trim().to_owned(),
        max_top_ups_per_day,
        ..Default::default()
    })
}

/// Configures (or resumes) the automatic top-up.
pub(super) async fn refills(
    State(console): State<Arc<Console>>,
    headers: HeaderMap,
    Path(account_id): Path<String>,
    Form(form): Form<RefillForm>,
) -> Response {
    let session = match allowed(&console, &headers, &form.csrf, Role::may_configure) {
        Ok(session) => session,
        Err(refusal) => return refusal,
    };
    let result = match refill_settings(&account_id, &form) {
        Ok(settings) => console.upstream.configure_auto_replenish(&session.key, settings).await,
        Err(error) => Err(error),
    };
    answered(&console, &session, &account_id, result, "refills").await
}
