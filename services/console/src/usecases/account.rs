//! An account's page: its figures, grants, latest entries and this month's
//! usage by day, read in parallel.

use chrono::{DateTime, NaiveDate, TimeZone, Utc};
use reservoir_proto::wallet;
use rust_decimal::Decimal;

use crate::clients::Upstream;
use crate::domain::usage::{Day, by_day, month_of};
use crate::error::ConsoleError;

pub struct AccountView {
    pub account: wallet::Account,
    pub balance: wallet::Balance,
    pub spend: wallet::Spend,
    pub grants: Vec<wallet::Grant>,
    pub entries: Vec<wallet::LedgerEntry>,
    pub next_entries: String,
    /// The month shown, and its usage by day.
    pub month: (NaiveDate, NaiveDate),
    pub days: Vec<Day>,
}

/// Midnight UTC at the start of `date`.
pub fn start_of(date: NaiveDate) -> DateTime<Utc> {
    Utc.from_utc_datetime(&date.and_hms_opt(0, 0, 0).unwrap_or_default())
}

/// What an entry-kind filter of the page asks for, as the wallet's kinds.
pub fn entry_kinds(names: &[String]) -> Result<Vec<i32>, ConsoleError> {
    names
        .iter()
        .filter(|name| !name.is_empty())
        .map(|name| {
            wallet::EntryKind::from_str_name(&format!("ENTRY_KIND_{}", name.to_ascii_uppercase()))
                .map(|kind| kind as i32)
                .ok_or_else(|| ConsoleError::invalid("kind", format!("{name:?} is not a kind of ledger entry")))
        })
        .collect()
}

pub async fn account_view(
    upstream: &Upstream,
    key: &str,
    account_id: &str,
    day: NaiveDate,
    kinds: Vec<i32>,
    page_token: &str,
) -> Result<AccountView, ConsoleError> {
    let month = month_of(day);
    let (start, end) = (start_of(month.0), start_of(month.1) + chrono::Duration::days(1));
    let (account, balance, spend, grants, (entries, next_entries), groups) = tokio::try_join!(
        upstream.account(key, account_id),
        upstream.balance(key, account_id),
        upstream.spend(key, account_id),
        upstream.grants(key, account_id),
        upstream.entries(key, account_id, kinds, page_token),
        upstream.usage_by_day(key, account_id, start, end),
    )?;
    let days = by_day(
        month.0,
        month.1,
        groups.iter().filter_map(|group| {
            let date = group.period_start.as_ref().and_then(reservoir_common::time::from_timestamp)?.date_naive();
            Some((date, group.charged_amount.parse::<Decimal>().ok()?))
        }),
    );
    Ok(AccountView { account, balance, spend, grants, entries, next_entries, month, days })
}
