//! Handlers that read: balances, spend, grants, the ledger, CSV exports
//! and the event stream.

use std::time::Duration;

use prost::Message;
use reservoir_common::auth::tenant_of;
use reservoir_common::outbox::follow_woken;
use reservoir_common::paging::Page;
use reservoir_proto::wallet as pb;
use reservoir_proto::wallet::wallet_service_server::WalletService;
use tonic::{Request, Response, Status};

use super::validate::*;
use super::{WalletApi, convert, reports};
use crate::domain::*;
use crate::error::WalletError;
use crate::store::{EntryFilter, EventRecord};
use crate::usecases::verify::verify_ledger;

/// How often an idle event stream looks for events written by other replicas;
/// events written by this process wake it at once.
const EVENT_POLL_INTERVAL: Duration = Duration::from_millis(250);
/// Events read per query of a stream.
const EVENT_BATCH: usize = 500;

impl WalletApi {
    pub(super) async fn get_spend_impl(
        &self,
        request: Request<pb::GetSpendRequest>,
    ) -> Result<Response<pb::GetSpendResponse>, Status> {
        let tenant = tenant_of(&request)?;
        let request = request.into_inner();
        let mut violations = Violations::default();
        let account_id = violations.id("account_id", &request.account_id, AccountId);
        violations.finish()?;
        let now = now();
        let wallet = self.store.wallet(tenant, account_id.unwrap_or(AccountId(uuid::Uuid::nil())), now).await?;
        let view = wallet.spend_view(now);
        let unit = &wallet.account.unit;
        // One level: a child has a budget and no children, any other account maybe children.
        let (budget, children) = match wallet.account.parent {
            Some(_) => (self.store.budget(tenant, wallet.account.id).await?, Vec::new()),
            None => (None, self.store.children(tenant, wallet.account.id).await?),
        };
        Ok(Response::new(pb::GetSpendResponse {
            spend: Some(convert::spend(&wallet.account, &view, now)),
            budget: budget.map(|budget| convert::budget(&budget, unit, now)),
            children: children.iter().map(|child| convert::budget(child, unit, now)).collect(),
        }))
    }

    pub(super) async fn export_refill_history_impl(
        &self,
        request: Request<pb::ExportRefillHistoryRequest>,
    ) -> Result<Response<<Self as WalletService>::ExportRefillHistoryStream>, Status> {
        let tenant = tenant_of(&request)?;
        let request = request.into_inner();
        let mut violations = Violations::default();
        let account_id = violations.id("account_id", &request.account_id, AccountId);
        let start = violations.time("start_time", request.start_time.as_ref());
        let end = violations.time("end_time", request.end_time.as_ref());
        if let (Some(start), Some(end)) = (start, end)
            && end <= start
        {
            violations.add("end_time", "must be after start_time");
        }
        violations.finish()?;
        let account_id = account_id.unwrap_or(AccountId(uuid::Uuid::nil()));
        let unit = self.unit_of(tenant, account_id).await?;
        let rows = reports::refill_history(self.store.clone(), tenant, account_id, unit, start, end);
        Ok(Response::new(Box::pin(futures::StreamExt::map(rows, |csv| {
            csv.map(|csv| pb::ExportRefillHistoryResponse { csv })
        }))))
    }

    pub(super) async fn export_statement_impl(
        &self,
        request: Request<pb::ExportStatementRequest>,
    ) -> Result<Response<<Self as WalletService>::ExportStatementStream>, Status> {
        let tenant = tenant_of(&request)?;
        let request = request.into_inner();
        let mut violations = Violations::default();
        let account_id = violations.id("account_id", &request.account_id, AccountId);
        let start = violations.time("start_time", request.start_time.as_ref());
        let end = violations.time("end_time", request.end_time.as_ref());
        if request.start_time.is_none() {
            violations.add("start_time", "is required");
        }
        if request.end_time.is_none() {
            violations.add("end_time", "is required");
        }
        if let (Some(start), Some(end)) = (start, end)
            && end <= start
        {
            violations.add("end_time", "must be after start_time");
        }
        violations.finish()?;
        let (Some(account_id), Some(start), Some(end)) = (account_id, start, end) else {
            return Err(WalletError::internal("validated fields missing").into());
        };
        let unit = self.unit_of(tenant, account_id).await?;
        let rows = reports::statement(self.store.clone(), tenant, account_id, unit, start, end);
        Ok(Response::new(Box::pin(futures::StreamExt::map(rows, |csv| {
            csv.map(|csv| pb::ExportStatementResponse { csv })
        }))))
    }

    pub(super) async fn get_balance_impl(
        &self,
        request: Request<pb::GetBalanceRequest>,
    ) -> Result<Response<pb::GetBalanceResponse>, Status> {
        let tenant = tenant_of(&request)?;
        let request = request.into_inner();
        let mut violations = Violations::default();
        let account_id = violations.id("account_id", &request.account_id, AccountId);
        violations.finish()?;
        let now = now();
        let wallet = self.store.wallet(tenant, account_id.unwrap_or(AccountId(uuid::Uuid::nil())), now).await?;
        Ok(Response::new(pb::GetBalanceResponse { balance: Some(Self::balance_of(&wallet, now)) }))
    }

    pub(super) async fn list_grants_impl(
        &self,
        request: Request<pb::ListGrantsRequest>,
    ) -> Result<Response<pb::ListGrantsResponse>, Status> {
        let tenant = tenant_of(&request)?;
        let request = request.into_inner();
        let mut violations = Violations::default();
        let account_id = violations.id("account_id", &request.account_id, AccountId);
        violations.finish()?;
        let account_id = account_id.unwrap_or(AccountId(uuid::Uuid::nil()));
        let account = self.store.account(tenant, account_id).await?;
        let now = now();
        let grants = self.store.grants(tenant, account_id, request.include_inactive).await?;
        let grants = grants
            .iter()
            .filter(|grant| request.include_inactive || !grant.is_past_expiry(now))
            .map(|grant| convert::grant(grant, &account.unit, now))
            .collect();
        Ok(Response::new(pb::ListGrantsResponse { grants }))
    }

    pub(super) async fn list_ledger_entries_impl(
        &self,
        request: Request<pb::ListLedgerEntriesRequest>,
    ) -> Result<Response<pb::ListLedgerEntriesResponse>, Status> {
        let tenant = tenant_of(&request)?;
        let request = request.into_inner();
        let mut violations = Violations::default();
        let account_id = violations.id("account_id", &request.account_id, AccountId);
        let page = Page::<u64>::of(
            &mut violations,
            request.page_size,
            &request.page_token,
            &(&request.account_id, &request.kinds, request.start_time, request.end_time),
        );
        let mut kinds = Vec::new();
        for (index, kind) in request.kinds.iter().enumerate() {
            match entry_kind_from(*kind) {
                Some(kind) => kinds.push(kind),
                None => violations.add(format!("kinds[{index}]"), "is not an entry kind"),
            }
        }
        if request.kinds.len() > EntryKind::ALL.len() {
            violations.add("kinds", "lists more kinds than there are");
        }
        let start = violations.time("start_time", request.start_time.as_ref());
        let end = violations.time("end_time", request.end_time.as_ref());
        violations.finish()?;
        let account_id = account_id.unwrap_or(AccountId(uuid::Uuid::nil()));
        let account = self.store.account(tenant, account_id).await?;
        let filter = EntryFilter { kinds, start, end, through_sequence: None };
        let entries =
            self.store.entries(tenant, account_id, &filter, page.after.unwrap_or(0), page.rows_to_read()).await?;
        let (entries, next_page_token) = page.finish(entries, |entry| entry.sequence);
        Ok(Response::new(pb::ListLedgerEntriesResponse {
            entries: entries.iter().map(|entry| convert::entry(entry, &account.unit)).collect(),
            next_page_token,
        }))
    }

    pub(super) async fn verify_ledger_impl(
        &self,
        request: Request<pb::VerifyLedgerRequest>,
    ) -> Result<Response<pb::VerifyLedgerResponse>, Status> {
        let tenant = tenant_of(&request)?;
        let request = request.into_inner();
        let mut violations = Violations::default();
        let account_id = violations.id("account_id", &request.account_id, AccountId);
        let known = match (request.known_hash.as_str(), request.known_sequence) {
            ("", 0) => None,
            ("", _) => {
                violations.add("known_hash", "is required with known_sequence");
                None
            }
            (_, 0) => {
                violations.add("known_sequence", "is required with known_hash (entries count from 1)");
                None
            }
            (text, sequence) => match LedgerHash::from_hex(text) {
                Some(hash) => Some(KnownHash { sequence, hash }),
                None => {
                    violations.add("known_hash", "is not a ledger hash: 32 hex digits");
                    None
                }
            },
        };
        violations.finish()?;
        let account_id = account_id.unwrap_or(AccountId(uuid::Uuid::nil()));
        let found = verify_ledger(&self.store, tenant, account_id, known).await?;
        let first_break = found.broken.as_ref().map(|broken| {
            let (expected, stored) = match broken {
                ChainBreak::Altered { expected, stored, .. } => (Some(*expected), *stored),
                ChainBreak::Head { expected, stored, .. } | ChainBreak::Known { expected, stored, .. } => {
                    (Some(*expected), Some(*stored))
                }
                ChainBreak::Missing { .. } | ChainBreak::Beyond { .. } => (None, None),
            };
            let hex = |hash: Option<LedgerHash>| hash.map(LedgerHash::to_hex).unwrap_or_default();
            pb::LedgerBreak {
                reason: broken.reason().to_owned(),
                sequence: broken.sequence(),
                entry_id: broken.entry().map(|id| id.to_string()).unwrap_or_default(),
                expected_hash: hex(expected),
                stored_hash: hex(stored),
            }
        });
        Ok(Response::new(pb::VerifyLedgerResponse {
            intact: found.broken.is_none(),
            entries_checked: found.checked,
            last_sequence: found.last_sequence,
            head_hash: found.head.map(LedgerHash::to_hex).unwrap_or_default(),
            first_break,
        }))
    }

    pub(super) async fn watch_events_impl(
        &self,
        request: Request<pb::WatchEventsRequest>,
    ) -> Result<Response<<Self as WalletService>::WatchEventsStream>, Status> {
        let tenant = tenant_of(&request)?;
        let request = request.into_inner();
        let mut violations = Violations::default();
        violations.meter_code("consumer", &request.consumer);
        violations.finish()?;
        // How far behind the outbox the suite's own consumers are: the age of
        // the oldest event not yet sent, 0 when caught up. The label takes
        // only these names, never one a caller chose; other streams share
        // the series `other`.
        let consumer: &'static str = match request.consumer.as_str() {
            "orchestrator" => "orchestrator",
            "webhooks" => "webhooks",
            _ => "other",
        };
        let lag = metrics::gauge!("reservoir_wallet_outbox_lag_seconds", "consumer" => consumer);
        let store = self.store.clone();
        let api = self.clone();
        let written = store.events_written();
        let after = request.after_sequence;
        let stream = follow_woken(after, self.stopping.clone(), EVENT_POLL_INTERVAL, Some(written), move |after| {
            let (store, api, lag) = (store.clone(), api.clone(), lag.clone());
            async move {
                let batch = store.events_after(tenant, after, EVENT_BATCH).await.map_err(Status::from)?;
                let mut events = Vec::with_capacity(batch.len());
                for record in batch {
                    let (sequence, event) = match record {
                        EventRecord::Event { sequence, event } => {
                            let unit = api.unit_of(tenant, event.account_id).await.map_err(Status::from)?;
                            (sequence, convert::event(&event, &unit, sequence))
                        }
                        EventRecord::Legacy { sequence, payload } => {
                            let mut event = pb::Event::decode(payload.as_slice()).map_err(|error| {
                                Status::from(WalletError::internal(format!("outbox payload: {error}")))
                            })?;
                            event.sequence = sequence;
                            (sequence, event)
                        }
                    };
                    events.push((sequence, pb::WatchEventsResponse { event: Some(event) }));
                }
                // The age of the oldest event not yet sent; 0 when caught up.
                let oldest = events.first().and_then(|(_, response)| response.event.as_ref()?.occurred_at.as_ref());
                match oldest.and_then(reservoir_common::time::from_timestamp) {
                    Some(occurred) => lag.set((now() - occurred).num_milliseconds().max(0) as f64 / 1_000.0),
                    None => lag.set(0.0),
                }
                Ok(events)
            }
        });
        Ok(Response::new(Box::pin(stream)))
    }
}

fn entry_kind_from(kind: i32) -> Option<EntryKind> {
    EntryKind::ALL.into_iter().find(|candidate| i32::from(convert::entry_kind(*candidate)) == kind)
}
