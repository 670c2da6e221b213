//! What invoicing reads from the wallet and metering, and the two changes it
//! asks of the wallet (a paid statement's credits, a credit block), made with
//! invoicing's service key for the tenant each call is about. Every change
//! carries an idempotency key derived from what it is for, so repeating it
//! after a crash is answered by the wallet's record of the first.
//! It also follows a tenant's wallet events for billing alerts. `mail`
//! sends scheduled reports and alerts over SMTP.

pub mod mail;

use std::collections::BTreeSet;
use std::time::Duration;

use chrono::{DateTime, Utc};
use reservoir_common::auth::{TenantId, service_request};
use reservoir_common::channel::ServiceChannel;
use reservoir_common::ids::AccountId;
use reservoir_common::money::Unit;
use reservoir_common::time::to_timestamp;
use reservoir_proto::metering as metering_pb;
use reservoir_proto::metering::metering_service_client::MeteringServiceClient;
use reservoir_proto::wallet as pb;
use reservoir_proto::wallet::wallet_service_client::WalletServiceClient;
use rust_decimal::Decimal;
use tonic::{Code, Status};
use uuid::Uuid;

use crate::domain::{Alert, AlertKind, Drawdown, UsageLine};
use crate::error::InvoicingError;

/// How long one call may take before it counts as unavailable.
const CALL_TIMEOUT: Duration = Duration::from_secs(10);
/// Pages are read at the largest size the wallet serves.
const PAGE_SIZE: u32 = 1_000;
/// A bound on the pages one listing reads: 10 million entries in a month of
/// one account is far beyond any wallet, and a loop must end.
const PAGES_MAX: usize = 10_000;

/// A wallet event as billing alerts read it: where it stands in the
/// tenant's events, and the alert it raises, if any.
#[derive(Debug, Clone)]
pub struct WalletEvent {
    pub sequence: u64,
    pub alert: Option<Alert>,
}

fn wallet_event(event: pb::Event) -> WalletEvent {
    let kind = match pb::EventType::try_from(event.r#type) {
        Ok(pb::EventType::BalanceLow) => Some(AlertKind::BalanceLow),
        Ok(pb::EventType::BalanceWarning) => Some(AlertKind::BalanceWarning),
        Ok(pb::EventType::BalanceDepleted) => Some(AlertKind::BalanceDepleted),
        Ok(pb::EventType::SpendingCapAlert) => Some(AlertKind::SpendingCap),
        _ => None,
    };
    let alert = kind.and_then(|kind| {
        Some(Alert {
            kind,
            account_id: event.account_id.parse().ok()?,
            // A cap's mark is about the spend; the others about what is left.
            amount: if kind == AlertKind::SpendingCap { event.amount.clone() } else { event.available.clone() },
            threshold: event.threshold.clone(),
            cap_percent: event.cap_percent,
            currency: String::new(),
            occurred_at: event.occurred_at.as_ref().and_then(reservoir_common::time::from_timestamp)?,
        })
    });
    if kind.is_some() && alert.is_none() {
        tracing::warn!(sequence = event.sequence, "a wallet alert event without an account or a time; not mailed");
    }
    WalletEvent { sequence: event.sequence, alert }
}

/// An account as invoicing needs it.
#[derive(Debug, Clone)]
pub struct AccountInfo {
    pub id: AccountId,
    pub unit: Unit,
    /// NONE, CREDIT_LIMIT or UNLIMITED.
    pub overdraft_policy: &'static str,
    pub created_at: Option<DateTime<Utc>>,
}

#[derive(Clone)]
pub struct Upstream {
    wallet: ServiceChannel,
    metering: ServiceChannel,
    service_key: String,
}

fn channel(endpoint: &str, name: &str) -> Result<ServiceChannel, InvoicingError> {
    reservoir_common::tls::lazy_channel(endpoint, name, CALL_TIMEOUT).map_err(InvoicingError::internal)
}

fn unavailable(service: &str, status: &Status) -> InvoicingError {
    InvoicingError::Unavailable(format!("{service}: {status}"))
}

fn policy_name(policy: i32) -> &'static str {
    match pb::OverdraftPolicy::try_from(policy) {
        Ok(pb::OverdraftPolicy::CreditLimit) => "CREDIT_LIMIT",
        Ok(pb::OverdraftPolicy::Unlimited) => "UNLIMITED",
        _ => "NONE",
    }
}

fn account_info(account: pb::Account) -> Result<AccountInfo, InvoicingError> {
    let unit = account.unit.unwrap_or_default();
    let unit = Unit::from_parts(&unit.code, unit.scale, &unit.price_per_credit, &unit.billing_currency)
        .map_err(|error| InvoicingError::internal(format!("the wallet answered an invalid unit: {error}")))?;
    Ok(AccountInfo {
        id: account
            .id
            .parse::<AccountId>()
            .map_err(|_| InvoicingError::internal("the wallet answered an invalid account id"))?,
        unit,
        overdraft_policy: policy_name(account.overdraft_policy),
        created_at: account.created_at.as_ref().and_then(reservoir_common::time::from_timestamp),
    })
}

fn decimal(text: &str) -> Result<Decimal, InvoicingError> {
    if text.is_empty() {
        return Ok(Decimal::ZERO);
    }
    text.parse().map_err(|_| InvoicingError::internal(format!("an upstream service answered {text:?} as an amount")))
}

impl Upstream {
    /// Connects lazily: invoicing starts while the others are down.
    pub fn new(wallet_endpoint: &str, metering_endpoint: &str, service_key: String) -> Result<Self, InvoicingError> {
        Ok(Self {
            wallet: channel(wallet_endpoint, "wallet")?,
            metering: channel(metering_endpoint, "metering")?,
            service_key,
        })
    }

    pub fn wallet_channel(&self) -> ServiceChannel {
        self.wallet.clone()
    }

    fn request<T>(&self, message: T, tenant: TenantId) -> Result<tonic::Request<T>, InvoicingError> {
        service_request(message, &self.service_key, tenant)
            .map_err(|status| InvoicingError::internal(status.to_string()))
    }

    fn wallet(&self) -> WalletServiceClient<ServiceChannel> {
        WalletServiceClient::new(self.wallet.clone())
    }

    fn metering(&self) -> MeteringServiceClient<ServiceChannel> {
        MeteringServiceClient::new(self.metering.clone())
    }

    /// The tenant's wallet events after `after`, then new ones as they happen.
    pub async fn wallet_events(
        &self,
        tenant: TenantId,
        after: u64,
    ) -> Result<impl futures::Stream<Item = Result<WalletEvent, InvoicingError>> + Send + Unpin, InvoicingError> {
        use futures::StreamExt;
        let request =
            self.request(pb::WatchEventsRequest { after_sequence: after, consumer: "invoicing".into() }, tenant)?;
        let stream = self.wallet().watch_events(request).await.map_err(|s| unavailable("wallet", &s))?.into_inner();
        Ok(stream.map(|message| {
            message
                .map(|message| wallet_event(message.event.unwrap_or_default()))
                .map_err(|status| unavailable("wallet", &status))
        }))
    }

    /// The account, or NOT_FOUND when the tenant has none such.
    pub async fn account(&self, tenant: TenantId, account_id: AccountId) -> Result<AccountInfo, InvoicingError> {
        let request = self.request(pb::GetAccountRequest { account_id: account_id.to_string() }, tenant)?;
        match self.wallet().get_account(request).await {
            Ok(response) => account_info(response.into_inner().account.unwrap_or_default()),
            Err(status) if status.code() == Code::NotFound => Err(InvoicingError::NotFound("account")),
            Err(status) => Err(unavailable("wallet", &status)),
        }
    }

    /// Every account of the tenant, in the order they were opened.
    pub async fn accounts(&self, tenant: TenantId) -> Result<Vec<AccountInfo>, InvoicingError> {
        let mut accounts = Vec::new();
        let mut page_token = String::new();
        for _ in 0..PAGES_MAX {
            let request = self.request(
                pb::ListAccountsRequest { page_size: PAGE_SIZE, page_token: page_token.clone(), ..Default::default() },
                tenant,
            )?;
            let page = self.wallet().list_accounts(request).await.map_err(|s| unavailable("wallet", &s))?.into_inner();
            for account in page.accounts {
                accounts.push(account_info(account)?);
            }
            if page.next_page_token.is_empty() {
                return Ok(accounts);
            }
            page_token = page.next_page_token;
        }
        Err(InvoicingError::internal("the wallet's account listing did not end"))
    }

    /// How the month's money left the wallet: debits and captures less
    /// refunds, and the part of it drawn on the overdraft; and whether the
    /// account has any entry at all in the month.
    pub async fn drawdown(
        &self,
        tenant: TenantId,
        account_id: AccountId,
        start: DateTime<Utc>,
        end: DateTime<Utc>,
    ) -> Result<(Drawdown, bool), InvoicingError> {
        let mut drawdown = Drawdown::default();
        let mut any_entry = false;
        let mut page_token = String::new();
        let kinds = [pb::EntryKind::Debit, pb::EntryKind::Capture, pb::EntryKind::Refund];
        let adjustment = i32::from(pb::EntryKind::Adjustment);
        for _ in 0..PAGES_MAX {
            let request = self.request(
                pb::ListLedgerEntriesRequest {
                    account_id: account_id.to_string(),
                    page_size: PAGE_SIZE,
                    page_token: page_token.clone(),
                    kinds: Vec::new(),
                    start_time: Some(to_timestamp(start)),
                    end_time: Some(to_timestamp(end)),
                },
                tenant,
            )?;
            let page =
                self.wallet().list_ledger_entries(request).await.map_err(|s| unavailable("wallet", &s))?.into_inner();
            for entry in page.entries {
                any_entry = true;
                let amount = decimal(&entry.amount)?;
                // A negative adjustment no grant covered was drawn on the
                // overdraft, as a debit would be. (The positive entry without
                // a grant that repays the overdraft is not a charge.)
                let drawn_by_adjustment =
                    entry.kind == adjustment && entry.grant_id.is_empty() && amount < Decimal::ZERO;
                if !drawn_by_adjustment && !kinds.iter().any(|kind| i32::from(*kind) == entry.kind) {
                    continue;
                }
                // Debits are negative entries; a refund is a positive one.
                let charged = -amount;
                drawdown.charged += charged;
                if entry.grant_id.is_empty() {
                    drawdown.on_overdraft += charged;
                }
            }
            if page.next_page_token.is_empty() {
                return Ok((drawdown, any_entry));
            }
            page_token = page.next_page_token;
        }
        Err(InvoicingError::internal("the wallet's ledger listing did not end"))
    }

    /// For each meter with a price that depends on a dimension, that
    /// dimension's key (the first, when prices over time used several).
    pub async fn priced_dimensions(
        &self,
        tenant: TenantId,
    ) -> Result<std::collections::BTreeMap<String, String>, InvoicingError> {
        let request = self.request(metering_pb::ListMetersRequest::default(), tenant)?;
        let meters = self.metering().list_meters(request).await.map_err(|s| unavailable("metering", &s))?.into_inner();
        let mut dimensions = std::collections::BTreeMap::new();
        for meter in meters.meters {
            let request =
                self.request(metering_pb::GetPriceRequest { meter_code: meter.code.clone(), at: None }, tenant)?;
            let schedule = match self.metering().get_price(request).await {
                Ok(response) => response.into_inner().schedule,
                // A meter without a price has no priced dimension.
                Err(status) if matches!(status.code(), Code::NotFound | Code::FailedPrecondition) => Vec::new(),
                Err(status) => return Err(unavailable("metering", &status)),
            };
            let keys: BTreeSet<String> =
                schedule.iter().flat_map(|price| price.overrides.iter().map(|o| o.key.clone())).collect();
            if let Some(key) = keys.into_iter().next() {
                dimensions.insert(meter.code, key);
            }
        }
        Ok(dimensions)
    }

    /// The month's usage of an account per meter, and per value of the
    /// meter's priced dimension where it has one.
    pub async fn usage(
        &self,
        tenant: TenantId,
        account_id: AccountId,
        start: DateTime<Utc>,
        end: DateTime<Utc>,
        priced_dimensions: &std::collections::BTreeMap<String, String>,
    ) -> Result<Vec<UsageLine>, InvoicingError> {
        let query = |meter_code: &str, dimension_key: &str| metering_pb::GetUsageRequest {
            account_id: account_id.to_string(),
            meter_code: meter_code.to_owned(),
            start_time: Some(to_timestamp(start)),
            end_time: Some(to_timestamp(end)),
            group_by: metering_pb::Period::Month.into(),
            dimension_key: dimension_key.to_owned(),
        };
        let request = self.request(query("", ""), tenant)?;
        let groups = self.metering().get_usage(request).await.map_err(|s| unavailable("metering", &s))?.into_inner();
        let mut lines = Vec::new();
        for group in groups.groups {
            if let Some(key) = priced_dimensions.get(&group.meter_code) {
                let request = self.request(query(&group.meter_code, key), tenant)?;
                let by_value =
                    self.metering().get_usage(request).await.map_err(|s| unavailable("metering", &s))?.into_inner();
                for part in by_value.groups {
                    lines.push(UsageLine {
                        meter_code: part.meter_code,
                        dimension_key: key.clone(),
                        dimension_value: part.dimension_value,
                        charged_quantity: decimal(&part.charged_quantity)?,
                        charged_credits: decimal(&part.charged_amount)?,
                        uncovered_credits: decimal(&part.uncovered_amount)?,
                    });
                }
            } else {
                lines.push(UsageLine {
                    meter_code: group.meter_code,
                    dimension_key: String::new(),
                    dimension_value: String::new(),
                    charged_quantity: decimal(&group.charged_quantity)?,
                    charged_credits: decimal(&group.charged_amount)?,
                    uncovered_credits: decimal(&group.uncovered_amount)?,
                });
            }
        }
        Ok(lines)
    }

    /// Grants a paid statement's credits, which repay the overdraft first.
    pub async fn repay(
        &self,
        tenant: TenantId,
        account_id: AccountId,
        invoice_id: Uuid,
        credits: Decimal,
    ) -> Result<(), InvoicingError> {
        let request = self.request(
            pb::GrantCreditsRequest {
                account_id: account_id.to_string(),
                amount: credits.normalize().to_string(),
                kind: pb::GrantKind::Paid.into(),
                idempotency_key: format!("invoice-repayment:{invoice_id}"),
                source: pb::GrantSource::Invoice.into(),
                source_reference: invoice_id.to_string(),
                correlation_id: invoice_id.to_string(),
                ..Default::default()
            },
            tenant,
        )?;
        self.wallet().grant_credits(request).await.map(|_| ()).map_err(|status| unavailable("wallet", &status))
    }

    /// Blocks or unblocks an account's credit; `generation` makes each
    /// change's idempotency key its own.
    pub async fn set_credit_blocked(
        &self,
        tenant: TenantId,
        account_id: AccountId,
        blocked: bool,
        generation: i64,
    ) -> Result<(), InvoicingError> {
        let request = self.request(
            pb::UpdateAccountRequest {
                account_id: account_id.to_string(),
                credit_blocked: Some(blocked),
                idempotency_key: format!("invoicing-credit-block:{account_id}:{generation}"),
                ..Default::default()
            },
            tenant,
        )?;
        match self.wallet().update_account(request).await {
            Ok(_) => Ok(()),
            // A closed or deleted account has no credit to block.
            Err(status) if matches!(status.code(), Code::NotFound | Code::FailedPrecondition) => Ok(()),
            Err(status) => Err(unavailable("wallet", &status)),
        }
    }
}
