//! CSV reports of one wallet, streamed a page of the ledger at a time so a
//! long period never sits in memory whole.

use std::collections::HashMap;
use std::pin::Pin;

use chrono::{DateTime, Utc};
use futures::{Stream, StreamExt};
use reservoir_common::auth::TenantId;
use reservoir_common::money::Unit;
use rust_decimal::Decimal;
use tonic::Status;

use crate::domain::{AccountId, Entry, EntryKind, Grant, GrantId, StatementBuilder};
use crate::error::WalletError;
use crate::store::{EntryFilter, Store, grant_kind_name, grant_source_name};

/// Ledger entries read per query, and so rows per chunk at most.
const PAGE: u64 = 1_000;

pub type CsvStream = Pin<Box<dyn Stream<Item = Result<String, Status>> + Send>>;

const REFILL_HEADER: [&str; 8] =
    ["type", "date", "amount", "balance_after", "grant_id", "grant_kind", "source", "description"];
const STATEMENT_HEADER: [&str; 14] = [
    "section",
    "date",
    "sequence",
    "kind",
    "amount",
    "balance_after",
    "grant_id",
    "grant_kind",
    "description",
    "opening",
    "added",
    "used",
    "expired",
    "closing",
];

fn csv_rows<const N: usize>(rows: &[[String; N]]) -> Result<String, WalletError> {
    let mut writer = reservoir_common::spreadsheet::SafeWriter::new();
    for row in rows {
        writer.write_record(row).map_err(|error| WalletError::internal(format!("writing CSV: {error}")))?;
    }
    let bytes = writer.into_inner().map_err(|error| WalletError::internal(format!("writing CSV: {error}")))?;
    String::from_utf8(bytes).map_err(|error| WalletError::internal(format!("writing CSV: {error}")))
}

fn date(at: DateTime<Utc>) -> String {
    at.to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
}

/// The entries a filter picks, a page at a time, in sequence order.
fn entry_pages(
    store: &Store,
    tenant: TenantId,
    account_id: AccountId,
    filter: EntryFilter,
) -> impl Stream<Item = Result<Vec<Entry>, WalletError>> + '_ {
    async_stream::try_stream! {
        let mut after = 0;
        loop {
            let page = store.entries(tenant, account_id, &filter, after, PAGE).await?;
            let Some(last) = page.last() else { break };
            after = last.sequence;
            let full = page.len() as u64 == PAGE;
            yield page;
            if !full {
                break;
            }
        }
    }
}

/// Whether an entry added credits: a grant, an upward adjustment (which
/// creates a grant), credits transferred in, or credits rolled over into a
/// new period (the side into the new grant). The repayment side of an
/// overdraft repayment has no grant and is not a refill.
fn is_refill(entry: &Entry) -> bool {
    match entry.kind {
        EntryKind::Grant | EntryKind::TransferIn => true,
        EntryKind::Adjustment | EntryKind::Rollover => entry.amount > Decimal::ZERO && entry.grant_id.is_some(),
        _ => false,
    }
}

fn grants_by_id(grants: Vec<Grant>) -> HashMap<GrantId, Grant> {
    grants.into_iter().map(|grant| (grant.id, grant)).collect()
}

/// The account's refills in [start, end), oldest first.
pub fn refill_history(
    store: Store,
    tenant: TenantId,
    account_id: AccountId,
    unit: Unit,
    start: Option<DateTime<Utc>>,
    end: Option<DateTime<Utc>>,
) -> CsvStream {
    Box::pin(async_stream::try_stream! {
        let grants = grants_by_id(store.grants(tenant, account_id, true).await?);
        yield csv_rows(&[REFILL_HEADER.map(str::to_owned)])?;
        let filter = EntryFilter {
            kinds: vec![EntryKind::Grant, EntryKind::Adjustment, EntryKind::TransferIn, EntryKind::Rollover],
            start,
            end,
            through_sequence: None,
        };
        let mut pages = std::pin::pin!(entry_pages(&store, tenant, account_id, filter.clone()));
        while let Some(page) = pages.next().await {
            let page = page?;
            let rows: Vec<[String; 8]> = page
                .iter()
                .filter(|entry| is_refill(entry))
                .map(|entry| {
                    let grant = entry.grant_id.and_then(|id| grants.get(&id));
                    [
                        entry.kind.name().to_owned(),
                        date(entry.created_at),
                        unit.format(entry.amount),
                        unit.format(entry.balance_after),
                        entry.grant_id.map(|id| id.to_string()).unwrap_or_default(),
                        grant.map(|grant| grant_kind_name(grant.kind).to_owned()).unwrap_or_default(),
                        grant.map(|grant| grant_source_name(grant.source).to_owned()).unwrap_or_default(),
                        entry.description.clone(),
                    ]
                })
                .collect();
            if !rows.is_empty() {
                yield csv_rows(&rows)?;
            }
        }
    })
}

/// The account statement of [start, end). The grants and the last entry are
/// read in one snapshot and only entries up to it are read, so a change
/// committed meanwhile cannot skew the figures. The entries from the start
/// on are read twice: once to work the figures back, once to list them.
pub fn statement(
    store: Store,
    tenant: TenantId,
    account_id: AccountId,
    unit: Unit,
    start: DateTime<Utc>,
    end: DateTime<Utc>,
) -> CsvStream {
    Box::pin(async_stream::try_stream! {
        let (grants_now, last_sequence, balance_now) = store.ledger_snapshot(tenant, account_id).await?;
        let grants = grants_by_id(grants_now.clone());
        let mut builder = StatementBuilder::new(start, end, balance_now);
        let filter =
            EntryFilter { kinds: Vec::new(), start: Some(start), end: None, through_sequence: Some(last_sequence) };
        let mut pages = std::pin::pin!(entry_pages(&store, tenant, account_id, filter.clone()));
        while let Some(page) = pages.next().await {
            let page = page?;
            for entry in &page {
                builder.take(entry);
            }
        }
        let blank = String::new;
        let opening = builder.opening_balance();
        let mut header_and_opening = vec![STATEMENT_HEADER.map(str::to_owned)];
        header_and_opening.push([
            "OPENING".to_owned(), date(start), blank(), blank(), blank(), unit.format(opening),
            blank(), blank(), blank(), blank(), blank(), blank(), blank(), blank(),
        ]);
        yield csv_rows(&header_and_opening)?;
        let lines = EntryFilter { end: Some(end), ..filter };
        let mut pages = std::pin::pin!(entry_pages(&store, tenant, account_id, lines.clone()));
        while let Some(page) = pages.next().await {
            let page = page?;
            let rows: Vec<[String; 14]> = page
                .iter()
                .filter(|entry| entry.kind.moves_money())
                .map(|entry| {
                    let grant = entry.grant_id.and_then(|id| grants.get(&id));
                    [
                        "ENTRY".to_owned(),
                        date(entry.created_at),
                        entry.sequence.to_string(),
                        entry.kind.name().to_owned(),
                        unit.format(entry.amount),
                        unit.format(entry.balance_after),
                        entry.grant_id.map(|id| id.to_string()).unwrap_or_default(),
                        grant.map(|grant| grant_kind_name(grant.kind).to_owned()).unwrap_or_default(),
                        entry.description.clone(),
                        blank(), blank(), blank(), blank(), blank(),
                    ]
                })
                .collect();
            if !rows.is_empty() {
                yield csv_rows(&rows)?;
            }
        }
        let mut rows: Vec<[String; 14]> = builder
            .grant_lines(&grants_now)
            .iter()
            .map(|line| [
                "GRANT".to_owned(), blank(), blank(), blank(), blank(), blank(),
                line.grant_id.to_string(),
                grant_kind_name(line.kind).to_owned(),
                blank(),
                unit.format(line.opening),
                unit.format(line.added),
                unit.format(line.used),
                unit.format(line.expired),
                unit.format(line.closing),
            ])
            .collect();
        rows.push([
            "EXPIRED".to_owned(), blank(), blank(), blank(), unit.format(builder.expired), blank(),
            blank(), blank(), blank(), blank(), blank(), blank(), blank(), blank(),
        ]);
        rows.push([
            "CLOSING".to_owned(), date(end), blank(), blank(), blank(), unit.format(builder.closing_balance()),
            blank(), blank(), blank(), blank(), blank(), blank(), blank(), blank(),
        ]);
        yield csv_rows(&rows)?;
    })
}
