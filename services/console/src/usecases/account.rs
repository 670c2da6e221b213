//! An account's page: its figures, grants, latest entries and this month's
//! usage by day, read in parallel.

use chrono::{DateTime, NaiveDate, TimeZone, Utc};
use reservoir_proto::orchestrator::AutoReplenish;
use reservoir_proto::wallet;
use rust_decimal::Decimal;

use crate::clients::Upstream;
use crate::domain::BillingMode;
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
    /// The automatic top-up, if the account has one; why it could not be
    /// read when the orchestrator did not answer (the rest of the page
    /// does not depend on it).
    pub auto_replenish: Result<Option<AutoReplenish>, String>,
    /// Every refill, newest first, with the balance after it.
    pub refills: Vec<Refill>,
    /// Who gets the account's bills, reports and alerts: the tenant's
    /// billing contact (its report schedule's); none when there is none (or
    /// invoicing did not answer).
    pub billing_contact: Option<String>,
}

impl AccountView {
    /// How the account is billed.
    pub fn billing_mode(&self) -> BillingMode {
        let refills = matches!(&self.auto_replenish, Ok(Some(settings)) if settings.enabled);
        BillingMode::of(self.account.overdraft_policy(), refills)
    }
}

/// One row of the refill history.
#[derive(Debug, Clone, PartialEq, serde::Deserialize)]
pub struct Refill {
    #[serde(rename = "type")]
    pub kind: String,
    pub date: String,
    pub amount: String,
    pub balance_after: String,
    pub grant_kind: String,
    pub source: String,
    pub description: String,
}

/// The rows of the wallet's refill-history CSV, newest first.
pub fn refills(csv: &str) -> Result<Vec<Refill>, ConsoleError> {
    let mut rows =
        csv::Reader::from_reader(csv.as_bytes()).deserialize::<Refill>().collect::<Result<Vec<_>, _>>().map_err(
            |error| ConsoleError::Unavailable { service: "wallet", message: format!("its refill history: {error}") },
        )?;
    rows.reverse();
    Ok(rows)
}

/// Midnight UTC at the start of `date`.
pub fn start_of(date: NaiveDate) -> DateTime<Utc> {
    Utc.from_utc_datetime(&date.and_hms_opt(0, 0, 0).unwrap_or_default())
}

/// How far back the account page reads refills, and how many it shows.
const REFILL_DAYS: i64 = 365;
const REFILLS_SHOWN: usize = 50;

/// The instants of the days `first` to `last` (inclusive): `[start, end)`.
pub fn span(first: NaiveDate, last: NaiveDate) -> (DateTime<Utc>, DateTime<Utc>) {
    (start_of(first), start_of(last) + chrono::Duration::days(1))
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
    let (start, end) = span(month.0, month.1);
    let wallet_and_metering = async {
        tokio::try_join!(
            upstream.account(key, account_id),
            upstream.balance(key, account_id),
            upstream.spend(key, account_id),
            upstream.grants(key, account_id),
            upstream.entries(key, account_id, kinds, page_token),
            upstream.usage_by_day(key, account_id, start, end),
            // The page shows the latest refills: a year of them is read, not the whole history.
            upstream.refill_history(key, account_id, start_of(day) - chrono::Duration::days(REFILL_DAYS)),
        )
    };
    let (answers, auto_replenish, schedule) =
        tokio::join!(wallet_and_metering, upstream.auto_replenish(key, account_id), upstream.report_schedule(key));
    let (account, balance, spend, grants, (entries, next_entries), groups, history) = answers?;
    let auto_replenish = auto_replenish.map_err(|error| error.to_string());
    let days = by_day(
        month.0,
        month.1,
        groups.iter().filter_map(|group| {
            let date = group.period_start.as_ref().and_then(reservoir_common::time::from_timestamp)?.date_naive();
            Some((date, group.charged_amount.parse::<Decimal>().ok()?))
        }),
    );
    let mut refills = refills(&history)?;
    refills.truncate(REFILLS_SHOWN);
    let billing_contact =
        schedule.ok().flatten().map(|schedule| schedule.billing_contact).filter(|contact| !contact.is_empty());
    Ok(AccountView {
        account,
        balance,
        spend,
        grants,
        entries,
        next_entries,
        month,
        days,
        auto_replenish,
        refills,
        billing_contact,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refill_history_rows_come_newest_first_with_their_balance_after() {
        let csv = "type,date,amount,balance_after,grant_id,grant_kind,source,description\n\
                   GRANT,2026-12-01T10:00:00Z,100.00,100.00,g1,PAID,TOP_UP,\n\
                   ADJUSTMENT,2026-12-03T09:00:00Z,5.00,97.50,g2,COURTESY,ADJUSTMENT,\"outage, sorry\"\n";
        let rows = refills(csv).unwrap_or_default();
        assert_eq!(rows.len(), 2);
        assert_eq!((rows[0].kind.as_str(), rows[0].balance_after.as_str()), ("ADJUSTMENT", "97.50"));
        assert_eq!(rows[0].description, "outage, sorry");
        assert_eq!(rows[1].amount, "100.00");
    }
}
