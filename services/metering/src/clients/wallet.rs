//! Calls to the wallet, made with metering's service key for the tenant each
//! call is about. Every debit is keyed by what it is for, so repeating one
//! after a crash or an outage is answered by the wallet's idempotency record.

use std::time::Duration;

use reservoir_common::auth::{TenantId, service_request};
use reservoir_common::channel::ServiceChannel;
use reservoir_common::ids::AccountId;
use reservoir_proto::wallet as pb;
use reservoir_proto::wallet::wallet_service_client::WalletServiceClient;
use tonic::{Code, Status};

use crate::domain::EventStatus;
use crate::domain::wallet_key;
use crate::error::MeteringError;
use crate::store::{Settlement, StoredEvent};

/// How long one call to the wallet may take before it counts as unavailable.
const CALL_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Clone)]
pub struct WalletGateway {
    channel: ServiceChannel,
    service_key: String,
}

/// The debit of one usage event: the same request every time it is sent.
pub fn debit_for(event: &StoredEvent) -> pb::DebitRequest {
    pb::DebitRequest {
        account_id: event.account_id.to_string(),
        amount: event.amount.normalize().to_string(),
        meter_code: event.meter_code.clone(),
        idempotency_key: wallet_key("usage", &event.event_id),
        description: format!("usage of {}", event.meter_code),
        metadata: Default::default(),
        correlation_id: event.event_id.chars().take(128).collect(),
    }
}

/// Whether a wallet refusal is final (the usage is UNCOVERED) or passing (try again).
pub fn is_final_refusal(code: Code) -> bool {
    matches!(code, Code::FailedPrecondition | Code::InvalidArgument | Code::NotFound | Code::AlreadyExists)
}

/// What a debit's answer means for its event; `None` while it must be retried.
pub fn settlement_of(event: &StoredEvent, result: &pb::BatchDebitResult) -> Option<Settlement> {
    match result.outcome.as_ref()? {
        pb::batch_debit_result::Outcome::Ok(response) => Some(Settlement {
            status: EventStatus::Charged,
            charged_amount: event.amount,
            uncovered_amount: rust_decimal::Decimal::ZERO,
            entry_ids: response.entries.iter().map(|entry| entry.id.clone()).collect(),
            reason: String::new(),
        }),
        pb::batch_debit_result::Outcome::Error(error) if is_final_refusal(Code::from_i32(error.code)) => {
            Some(Settlement {
                status: EventStatus::Uncovered,
                charged_amount: rust_decimal::Decimal::ZERO,
                uncovered_amount: event.amount,
                entry_ids: Vec::new(),
                reason: error.reason.clone(),
            })
        }
        pb::batch_debit_result::Outcome::Error(_) => None,
    }
}

fn unavailable(status: &Status) -> MeteringError {
    MeteringError::Unavailable(format!("wallet: {status}"))
}

impl WalletGateway {
    /// Connects lazily: metering starts and accepts usage while the wallet is down.
    pub fn new(endpoint: &str, service_key: String) -> Result<Self, MeteringError> {
        let channel =
            reservoir_common::tls::lazy_channel(endpoint, "wallet", CALL_TIMEOUT).map_err(MeteringError::internal)?;
        Ok(Self { channel, service_key })
    }

    pub fn channel(&self) -> ServiceChannel {
        self.channel.clone()
    }

    fn client(&self) -> WalletServiceClient<ServiceChannel> {
        WalletServiceClient::new(self.channel.clone())
    }

    /// The unit (code, scale) of an account; `None` when the tenant has no such account.
    pub async fn account_unit(
        &self,
        tenant: TenantId,
        account_id: AccountId,
    ) -> Result<Option<(String, u32)>, MeteringError> {
        let request =
            service_request(pb::GetAccountRequest { account_id: account_id.to_string() }, &self.service_key, tenant)
                .map_err(|status| MeteringError::internal(status.to_string()))?;
        match self.client().get_account(request).await {
            Ok(response) => {
                let unit = response.into_inner().account.and_then(|account| account.unit).unwrap_or_default();
                Ok(Some((unit.code, unit.scale.unwrap_or(0))))
            }
            Err(status) if status.code() == Code::NotFound => Ok(None),
            Err(status) => Err(unavailable(&status)),
        }
    }

    /// One BatchDebit for up to 1,000 debits of one tenant.
    pub async fn batch_debit(
        &self,
        tenant: TenantId,
        debits: Vec<pb::DebitRequest>,
    ) -> Result<Vec<pb::BatchDebitResult>, MeteringError> {
        let request = service_request(pb::BatchDebitRequest { debits }, &self.service_key, tenant)
            .map_err(|status| MeteringError::internal(status.to_string()))?;
        self.client()
            .batch_debit(request)
            .await
            .map(|response| response.into_inner().results)
            .map_err(|s| unavailable(&s))
    }

    /// One DrawUsage for lines of one tenant.
    pub async fn draw_usage(
        &self,
        tenant: TenantId,
        lines: Vec<pb::UsageLine>,
    ) -> Result<Vec<pb::UsageLineResult>, MeteringError> {
        let request = service_request(pb::DrawUsageRequest { lines }, &self.service_key, tenant)
            .map_err(|status| MeteringError::internal(status.to_string()))?;
        self.client()
            .draw_usage(request)
            .await
            .map(|response| response.into_inner().results)
            .map_err(|s| unavailable(&s))
    }

    pub async fn debit(&self, tenant: TenantId, debit: pb::DebitRequest) -> Result<pb::DebitResponse, Status> {
        let request = service_request(debit, &self.service_key, tenant)?;
        self.client().debit(request).await.map(|response| response.into_inner())
    }

    pub async fn reserve(&self, tenant: TenantId, reserve: pb::ReserveRequest) -> Result<pb::ReserveResponse, Status> {
        let request = service_request(reserve, &self.service_key, tenant)?;
        self.client().reserve(request).await.map(|response| response.into_inner())
    }

    pub async fn capture(
        &self,
        tenant: TenantId,
        capture: pb::CaptureHoldRequest,
    ) -> Result<pb::CaptureHoldResponse, Status> {
        let request = service_request(capture, &self.service_key, tenant)?;
        self.client().capture_hold(request).await.map(|response| response.into_inner())
    }

    pub async fn release(
        &self,
        tenant: TenantId,
        release: pb::ReleaseHoldRequest,
    ) -> Result<pb::ReleaseHoldResponse, Status> {
        let request = service_request(release, &self.service_key, tenant)?;
        self.client().release_hold(request).await.map(|response| response.into_inner())
    }
}
