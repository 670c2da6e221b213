//! Drawing stored usage from wallets a line at a time: a line is one
//! account's usage of one meter from one batch, sent to the wallet's
//! DrawUsage under the line's key with its amounts in order, so the wallet
//! answers each event and writes one entry per grant touched. Sending a line
//! again (after a crash or an outage) sends the same amounts under the same
//! key, which the wallet replays. Ingestion draws the lines it stored at
//! once; the worker draws whatever is still listed.

use std::collections::{HashMap, HashSet};

use chrono::{DateTime, Utc};
use reservoir_common::auth::TenantId;
use reservoir_common::ids::AccountId;
use reservoir_proto::wallet as wallet_pb;
use rust_decimal::Decimal;

use crate::clients::wallet::{WalletGateway, debit_for, is_final_refusal, settlement_of};
use crate::domain::EventStatus;
use crate::error::MeteringError;
use crate::store::{LEGACY_LINE_PREFIX, Line, Settlement, Store, StoredEvent};

/// Lines per DrawUsage, and amounts per DrawUsage: the wallet's limits.
const LINES_PER_CALL_MAX: usize = 1_000;
const AMOUNTS_PER_CALL_MAX: usize = 10_000;

/// Draws lines of one tenant and returns every event of them as it now
/// stands (still PENDING where the wallet could not be reached; those lines
/// are let go for the worker).
pub async fn draw_lines(
    store: &Store,
    wallet: &WalletGateway,
    tenant: TenantId,
    lines: Vec<Line>,
    now: DateTime<Utc>,
) -> Result<HashMap<String, StoredEvent>, MeteringError> {
    let mut settlements: Vec<(String, Settlement)> = Vec::new();
    let mut settled_lines: Vec<String> = Vec::new();
    let mut released: Vec<String> = Vec::new();
    let (legacy, lines): (Vec<Line>, Vec<Line>) =
        lines.into_iter().partition(|line| line.key.starts_with(LEGACY_LINE_PREFIX));
    // Each request holds whole lines, up to the wallet's limits, and all the
    // lines of an account (in order), so the requests share no account and
    // go to the wallet side by side.
    let mut by_account: Vec<Vec<&Line>> = Vec::new();
    let mut account_index: HashMap<AccountId, usize> = HashMap::new();
    for line in &lines {
        let priced = line.events.iter().filter(|event| !event.amount.is_zero()).count();
        if priced == 0 {
            // Nothing to draw: every event of the line costs nothing.
            for event in &line.events {
                settlements.push((event.event_id.clone(), charged(event, &[])));
            }
            settled_lines.push(line.key.clone());
            continue;
        }
        let index = *account_index.entry(line.account_id).or_insert_with(|| {
            by_account.push(Vec::new());
            by_account.len() - 1
        });
        by_account[index].push(line);
    }
    // An account with more than one request's worth is drawn in waves: its
    // first request's worth in the first wave, the next in the second, and so
    // on, so its lines still reach the wallet in order.
    let mut waves: Vec<Wave<'_>> = Vec::new();
    for account_lines in by_account {
        let mut wave = 0;
        let mut chunk: Vec<&Line> = Vec::new();
        let mut priced_in_chunk = 0;
        for line in account_lines {
            let priced = line.events.iter().filter(|event| !event.amount.is_zero()).count();
            if !chunk.is_empty()
                && (chunk.len() + 1 > LINES_PER_CALL_MAX || priced_in_chunk + priced > AMOUNTS_PER_CALL_MAX)
            {
                wave_at(&mut waves, wave).add(std::mem::take(&mut chunk), priced_in_chunk);
                wave += 1;
                priced_in_chunk = 0;
            }
            chunk.push(line);
            priced_in_chunk += priced;
        }
        if !chunk.is_empty() {
            wave_at(&mut waves, wave).add(chunk, priced_in_chunk);
        }
    }
    // An account whose line was not drawn has its later lines left too, so
    // they are never drawn before it.
    let mut held_back: HashSet<AccountId> = HashSet::new();
    for wave in waves {
        let mut requests: Vec<Vec<&Line>> = Vec::with_capacity(wave.requests.len());
        for (request, _) in wave.requests {
            let (held, go): (Vec<&Line>, Vec<&Line>) =
                request.into_iter().partition(|line| held_back.contains(&line.account_id));
            released.extend(held.iter().map(|line| line.key.clone()));
            if !go.is_empty() {
                requests.push(go);
            }
        }
        let answers = futures::future::join_all(requests.iter().map(|request| {
            let usage_lines = request.iter().map(|line| usage_line(line)).collect();
            wallet.draw_usage(tenant, usage_lines)
        }))
        .await;
        for (request, answer) in requests.iter().zip(answers) {
            match answer {
                Ok(results) => {
                    for (line, result) in request.iter().zip(results) {
                        match line_settlements(line, &result) {
                            Some(line_settlements) => {
                                settlements.extend(line_settlements);
                                settled_lines.push(line.key.clone());
                            }
                            None => {
                                released.push(line.key.clone());
                                held_back.insert(line.account_id);
                            }
                        }
                    }
                }
                Err(error) => {
                    // Stored and listed: the worker draws them once the wallet answers.
                    tracing::warn!(%error, lines = request.len(), "wallet unreachable; usage stays pending");
                    released.extend(request.iter().map(|line| line.key.clone()));
                    held_back.extend(request.iter().map(|line| line.account_id));
                }
            }
        }
    }
    // Events stored before lines are debited alone, under the keys they always had.
    if !legacy.is_empty() {
        let events: Vec<&StoredEvent> = legacy.iter().flat_map(|line| &line.events).collect();
        let debits = events.iter().map(|event| debit_for(event)).collect();
        match wallet.batch_debit(tenant, debits).await {
            Ok(results) => {
                for (line, result) in legacy.iter().zip(results.iter()) {
                    let Some(event) = line.events.first() else { continue };
                    match settlement_of(event, result) {
                        Some(settlement) => {
                            settlements.push((event.event_id.clone(), settlement));
                            settled_lines.push(line.key.clone());
                        }
                        None => released.push(line.key.clone()),
                    }
                }
            }
            Err(error) => {
                tracing::warn!(%error, "wallet unreachable; earlier usage stays pending");
                released.extend(legacy.iter().map(|line| line.key.clone()));
            }
        }
        // Legacy lines without their event (already settled) are done.
        settled_lines.extend(legacy.iter().filter(|line| line.events.is_empty()).map(|line| line.key.clone()));
    }
    if !released.is_empty() {
        store.release_lines(tenant, &released, now).await?;
    }
    store.settle_lines(tenant, &settlements, &settled_lines, now).await?;
    let mut outcome: HashMap<String, StoredEvent> = lines
        .into_iter()
        .chain(legacy)
        .flat_map(|line| line.events)
        .map(|event| (event.event_id.clone(), event))
        .collect();
    for (event_id, settlement) in settlements {
        if let Some(event) = outcome.get_mut(&event_id) {
            event.status = settlement.status;
            event.charged_amount = settlement.charged_amount;
            event.uncovered_amount = settlement.uncovered_amount;
            event.entry_ids = settlement.entry_ids;
            event.reason = settlement.reason;
        }
    }
    Ok(outcome)
}

/// DrawUsage requests that share no account and so go to the wallet at once:
/// each with its lines and how many priced amounts they hold.
#[derive(Default)]
struct Wave<'a> {
    requests: Vec<(Vec<&'a Line>, usize)>,
}

impl<'a> Wave<'a> {
    /// Adds an account's lines to the last request, or to a new one if they
    /// would take it past the wallet's limits.
    fn add(&mut self, lines: Vec<&'a Line>, priced: usize) {
        match self.requests.last_mut() {
            Some((request, amounts))
                if request.len() + lines.len() <= LINES_PER_CALL_MAX && *amounts + priced <= AMOUNTS_PER_CALL_MAX =>
            {
                request.extend(lines);
                *amounts += priced;
            }
            _ => self.requests.push((lines, priced)),
        }
    }
}

fn wave_at<'w, 'a>(waves: &'w mut Vec<Wave<'a>>, index: usize) -> &'w mut Wave<'a> {
    while waves.len() <= index {
        waves.push(Wave::default());
    }
    &mut waves[index]
}

/// The wallet's line for a line of events: the same request every time it is sent.
fn usage_line(line: &Line) -> wallet_pb::UsageLine {
    wallet_pb::UsageLine {
        account_id: line.account_id.to_string(),
        meter_code: line.meter_code.clone(),
        amounts: line
            .events
            .iter()
            .filter(|event| !event.amount.is_zero())
            .map(|event| event.amount.normalize().to_string())
            .collect(),
        reference: line.key.clone(),
        idempotency_key: line.key.clone(),
    }
}

fn charged(event: &StoredEvent, entry_ids: &[String]) -> Settlement {
    Settlement {
        status: EventStatus::Charged,
        charged_amount: event.amount,
        uncovered_amount: Decimal::ZERO,
        entry_ids: entry_ids.to_vec(),
        reason: String::new(),
    }
}

fn uncovered(event: &StoredEvent, reason: &str) -> Settlement {
    Settlement {
        status: EventStatus::Uncovered,
        charged_amount: Decimal::ZERO,
        uncovered_amount: event.amount,
        entry_ids: Vec::new(),
        reason: reason.to_owned(),
    }
}

/// What a line's answer means for each of its events; `None` while the line
/// must be sent again (the wallet failed it for a passing reason).
fn line_settlements(line: &Line, result: &wallet_pb::UsageLineResult) -> Option<Vec<(String, Settlement)>> {
    match result.outcome.as_ref()? {
        wallet_pb::usage_line_result::Outcome::Drawn(drawn) => {
            let entry_ids: Vec<String> = drawn.entries.iter().map(|entry| entry.id.clone()).collect();
            let mut answers = drawn.amounts.iter();
            let mut settlements = Vec::with_capacity(line.events.len());
            for event in &line.events {
                let settlement = if event.amount.is_zero() {
                    charged(event, &[])
                } else {
                    match answers.next() {
                        Some(answer) if answer.charged => charged(event, &entry_ids),
                        Some(answer) => uncovered(event, &answer.reason),
                        // The wallet answered fewer amounts than it was sent: a bug; try again.
                        None => return None,
                    }
                };
                settlements.push((event.event_id.clone(), settlement));
            }
            Some(settlements)
        }
        wallet_pb::usage_line_result::Outcome::Error(error) if is_final_refusal(tonic::Code::from_i32(error.code)) => {
            Some(
                line.events
                    .iter()
                    .map(|event| {
                        let settlement =
                            if event.amount.is_zero() { charged(event, &[]) } else { uncovered(event, &error.reason) };
                        (event.event_id.clone(), settlement)
                    })
                    .collect(),
            )
        }
        wallet_pb::usage_line_result::Outcome::Error(_) => None,
    }
}
