//! gRPC handlers: they check the request, ask the domain through the store,
//! and translate the answer. No rule about money lives here.

mod accounts;
mod admin;
mod budgets;
mod convert;
mod debits;
mod movements;
mod reads;
mod reports;
mod respond;
mod reviews;
mod status;
mod units;
mod validate;

use std::pin::Pin;

use chrono::{DateTime, Utc};
use futures::Stream;
use prost::Message;
use reservoir_common::auth::TenantId;
use reservoir_common::money::Unit;
use reservoir_proto::wallet as pb;
use reservoir_proto::wallet::wallet_service_server::WalletService;
use tokio::sync::watch;
use tonic::{Request, Response, Status};

pub use self::admin::AdminApi;
pub use self::validate::*;
use crate::domain::*;
use crate::error::WalletError;
use crate::store::{IdempotencyCheck, LoadPlan, Loaded, Reply, Store};

#[derive(Clone)]
pub struct WalletApi {
    store: Store,
    units: units::Units,
    /// Turns true when the server stops, ending open event streams so the
    /// graceful shutdown is not held open by them.
    stopping: watch::Receiver<bool>,
}

impl WalletApi {
    pub fn new(store: Store, stopping: watch::Receiver<bool>) -> Self {
        Self { units: units::Units::start(store.clone()), store, stopping }
    }

    fn balance_of(wallet: &Wallet, now: DateTime<Utc>) -> pb::Balance {
        convert::balance(wallet.account.id, &wallet.account.unit, &wallet.balance(now))
    }

    async fn unit_of(&self, tenant: TenantId, account_id: AccountId) -> Result<Unit, WalletError> {
        self.units.of(tenant, account_id).await
    }

    /// Runs a change of one wallet under its key and builds the response
    /// from its answer (or from the recorded one on a replay).
    #[allow(clippy::too_many_arguments)]
    async fn change<M: Message + Default>(
        &self,
        tenant: TenantId,
        account_id: AccountId,
        check: &IdempotencyCheck,
        plan: &LoadPlan,
        now: DateTime<Utc>,
        operate: impl FnOnce(&mut Loaded) -> Result<Answer, WalletError>,
        build: impl FnOnce(&Answer) -> Result<M, WalletError>,
    ) -> Result<M, WalletError> {
        let reply = self.store.mutate(tenant, account_id, Some(check), plan, now, operate).await?;
        respond::respond(reply, build)
    }

    /// A retry of a finished call, answered from its record without touching the wallet.
    async fn replay<M: Message + Default>(
        &self,
        tenant: TenantId,
        check: &IdempotencyCheck,
        build: impl FnOnce(&Answer, &Unit) -> Result<M, WalletError>,
    ) -> Result<Option<M>, WalletError> {
        let Some(reply) = self.store.replay_only(tenant, check).await? else {
            return Ok(None);
        };
        let unit = match &reply {
            Reply::Answer(answer) => match answer.wallets.first() {
                Some(part) => Some(self.unit_of(tenant, part.account_id).await?),
                None => None,
            },
            Reply::Legacy(_) => None,
        };
        respond::respond(reply, |answer| match &unit {
            Some(unit) => build(answer, unit),
            None => Err(WalletError::internal("a replayed answer names no wallet")),
        })
        .map(Some)
    }
}

type EventStream = Pin<Box<dyn Stream<Item = Result<pb::WatchEventsResponse, Status>> + Send>>;

#[tonic::async_trait]
impl WalletService for WalletApi {
    async fn create_account(
        &self,
        request: Request<pb::CreateAccountRequest>,
    ) -> Result<Response<pb::CreateAccountResponse>, Status> {
        self.create_account_impl(request).await
    }

    async fn get_account(
        &self,
        request: Request<pb::GetAccountRequest>,
    ) -> Result<Response<pb::GetAccountResponse>, Status> {
        self.get_account_impl(request).await
    }

    async fn get_unit(&self, request: Request<pb::GetUnitRequest>) -> Result<Response<pb::GetUnitResponse>, Status> {
        self.get_unit_impl(request).await
    }

    async fn list_accounts(
        &self,
        request: Request<pb::ListAccountsRequest>,
    ) -> Result<Response<pb::ListAccountsResponse>, Status> {
        self.list_accounts_impl(request).await
    }

    async fn update_account(
        &self,
        request: Request<pb::UpdateAccountRequest>,
    ) -> Result<Response<pb::UpdateAccountResponse>, Status> {
        self.update_account_impl(request).await
    }

    async fn grant_credits(
        &self,
        request: Request<pb::GrantCreditsRequest>,
    ) -> Result<Response<pb::GrantCreditsResponse>, Status> {
        self.grant_credits_impl(request).await
    }

    async fn debit(&self, request: Request<pb::DebitRequest>) -> Result<Response<pb::DebitResponse>, Status> {
        self.debit_impl(request).await
    }

    async fn batch_debit(
        &self,
        request: Request<pb::BatchDebitRequest>,
    ) -> Result<Response<pb::BatchDebitResponse>, Status> {
        self.batch_debit_impl(request).await
    }

    async fn draw_usage(
        &self,
        request: Request<pb::DrawUsageRequest>,
    ) -> Result<Response<pb::DrawUsageResponse>, Status> {
        self.draw_usage_impl(request).await
    }

    async fn quote_debit(
        &self,
        request: Request<pb::QuoteDebitRequest>,
    ) -> Result<Response<pb::QuoteDebitResponse>, Status> {
        self.quote_debit_impl(request).await
    }

    async fn reserve(&self, request: Request<pb::ReserveRequest>) -> Result<Response<pb::ReserveResponse>, Status> {
        self.reserve_impl(request).await
    }

    async fn capture_hold(
        &self,
        request: Request<pb::CaptureHoldRequest>,
    ) -> Result<Response<pb::CaptureHoldResponse>, Status> {
        self.capture_hold_impl(request).await
    }

    async fn release_hold(
        &self,
        request: Request<pb::ReleaseHoldRequest>,
    ) -> Result<Response<pb::ReleaseHoldResponse>, Status> {
        self.release_hold_impl(request).await
    }

    async fn adjust(&self, request: Request<pb::AdjustRequest>) -> Result<Response<pb::AdjustResponse>, Status> {
        self.adjust_impl(request).await
    }

    async fn refund(&self, request: Request<pb::RefundRequest>) -> Result<Response<pb::RefundResponse>, Status> {
        self.refund_impl(request).await
    }

    async fn void_grant(
        &self,
        request: Request<pb::VoidGrantRequest>,
    ) -> Result<Response<pb::VoidGrantResponse>, Status> {
        self.void_grant_impl(request).await
    }

    async fn transfer(&self, request: Request<pb::TransferRequest>) -> Result<Response<pb::TransferResponse>, Status> {
        self.transfer_impl(request).await
    }

    async fn get_spend(&self, request: Request<pb::GetSpendRequest>) -> Result<Response<pb::GetSpendResponse>, Status> {
        self.get_spend_impl(request).await
    }

    async fn list_transfer_reviews(
        &self,
        request: Request<pb::ListTransferReviewsRequest>,
    ) -> Result<Response<pb::ListTransferReviewsResponse>, Status> {
        self.list_transfer_reviews_impl(request).await
    }

    async fn review_transfer(
        &self,
        request: Request<pb::ReviewTransferRequest>,
    ) -> Result<Response<pb::ReviewTransferResponse>, Status> {
        self.review_transfer_impl(request).await
    }

    async fn set_budget(
        &self,
        request: Request<pb::SetBudgetRequest>,
    ) -> Result<Response<pb::SetBudgetResponse>, Status> {
        self.set_budget_impl(request).await
    }

    async fn clear_budget(
        &self,
        request: Request<pb::ClearBudgetRequest>,
    ) -> Result<Response<pb::ClearBudgetResponse>, Status> {
        self.clear_budget_impl(request).await
    }

    async fn get_tenant_settings(
        &self,
        request: Request<pb::GetTenantSettingsRequest>,
    ) -> Result<Response<pb::GetTenantSettingsResponse>, Status> {
        self.get_tenant_settings_impl(request).await
    }

    async fn update_tenant_settings(
        &self,
        request: Request<pb::UpdateTenantSettingsRequest>,
    ) -> Result<Response<pb::UpdateTenantSettingsResponse>, Status> {
        self.update_tenant_settings_impl(request).await
    }

    type ExportRefillHistoryStream =
        Pin<Box<dyn Stream<Item = Result<pb::ExportRefillHistoryResponse, Status>> + Send>>;

    async fn export_refill_history(
        &self,
        request: Request<pb::ExportRefillHistoryRequest>,
    ) -> Result<Response<Self::ExportRefillHistoryStream>, Status> {
        self.export_refill_history_impl(request).await
    }

    type ExportStatementStream = Pin<Box<dyn Stream<Item = Result<pb::ExportStatementResponse, Status>> + Send>>;

    async fn export_statement(
        &self,
        request: Request<pb::ExportStatementRequest>,
    ) -> Result<Response<Self::ExportStatementStream>, Status> {
        self.export_statement_impl(request).await
    }

    async fn get_balance(
        &self,
        request: Request<pb::GetBalanceRequest>,
    ) -> Result<Response<pb::GetBalanceResponse>, Status> {
        self.get_balance_impl(request).await
    }

    async fn list_grants(
        &self,
        request: Request<pb::ListGrantsRequest>,
    ) -> Result<Response<pb::ListGrantsResponse>, Status> {
        self.list_grants_impl(request).await
    }

    async fn list_ledger_entries(
        &self,
        request: Request<pb::ListLedgerEntriesRequest>,
    ) -> Result<Response<pb::ListLedgerEntriesResponse>, Status> {
        self.list_ledger_entries_impl(request).await
    }

    async fn verify_ledger(
        &self,
        request: Request<pb::VerifyLedgerRequest>,
    ) -> Result<Response<pb::VerifyLedgerResponse>, Status> {
        self.verify_ledger_impl(request).await
    }

    async fn get_caller(
        &self,
        request: Request<pb::GetCallerRequest>,
    ) -> Result<Response<pb::GetCallerResponse>, Status> {
        self.get_caller_impl(request).await
    }

    type WatchEventsStream = EventStream;

    async fn watch_events(
        &self,
        request: Request<pb::WatchEventsRequest>,
    ) -> Result<Response<Self::WatchEventsStream>, Status> {
        self.watch_events_impl(request).await
    }
}
