//! Authorizing usage before it happens and settling it after: a hold on the
//! wallet for the estimate's price, then the actual usage charged against it
//! (the rest of the settlement in `settle`).

use std::collections::BTreeMap;

use chrono::{DateTime, Duration, Utc};
use reservoir_common::auth::TenantId;
use reservoir_common::ids::AccountId;
use reservoir_proto::wallet as wallet_pb;
use rust_decimal::Decimal;
use uuid::Uuid;

use crate::clients::wallet::{WalletGateway, is_final_refusal};
use crate::domain::{Aggregation, AuthorizationStatus, Refusal, month_of, price_at, wallet_key};
use crate::error::MeteringError;
use crate::store::{AuthorizationRow, NewEvent, Store, StoredEvent};
use crate::usecases::accounts::Accounts;
use crate::usecases::meter;
use crate::usecases::settle::settle_authorization;

/// An authorization asked for, its fields checked.
#[derive(Debug, Clone)]
pub struct Authorize {
    pub account_id: AccountId,
    pub meter_code: String,
    pub estimated_quantity: Decimal,
    pub dimensions: BTreeMap<String, String>,
    pub ttl_seconds: u32,
    pub idempotency_key: String,
    /// The digest of the request, to tell a retry from a reuse of its key.
    pub request_hash: String,
}

#[derive(Clone)]
pub struct Authorizations {
    store: Store,
    wallet: WalletGateway,
    accounts: Accounts,
}

impl Authorizations {
    pub fn new(store: Store, wallet: WalletGateway, accounts: Accounts) -> Self {
        Self { store, wallet, accounts }
    }

    pub async fn get(&self, tenant: TenantId, id: Uuid) -> Result<AuthorizationRow, MeteringError> {
        self.store.authorization(tenant, id).await?.ok_or(MeteringError::NotFound("authorization"))
    }

    /// Prices the estimate and holds it on the account's wallet; a retry
    /// with the same key answers the same authorization.
    pub async fn authorize(
        &self,
        tenant: TenantId,
        ask: Authorize,
        now: DateTime<Utc>,
    ) -> Result<AuthorizationRow, MeteringError> {
        let row = match self.store.authorization_by_key(tenant, &ask.idempotency_key).await? {
            Some(existing) if existing.request_hash != ask.request_hash => {
                return Err(MeteringError::IdempotencyKeyReused);
            }
            Some(existing) => existing,
            None => {
                let meter = meter(&self.store, tenant, "meter_code", &ask.meter_code).await?;
                if !meter.aggregation.adds_up() {
                    // A peak or a distinct count is known only as events come.
                    return Err(MeteringError::field(
                        "meter_code",
                        format!(
                            "a {} meter is charged as its events come, not authorized ahead",
                            meter.aggregation.name()
                        ),
                    ));
                }
                let prices = self.store.prices(meter.id).await?;
                let version = price_at(&prices, now).ok_or(Refusal::NoPrice)?;
                let scale =
                    self.accounts.scale(tenant, ask.account_id).await?.ok_or(MeteringError::NotFound("account"))?;
                let estimate = if meter.aggregation == Aggregation::Count {
                    Decimal::ONE.max(ask.estimated_quantity.ceil())
                } else {
                    ask.estimated_quantity
                };
                let before = self.store.usage_so_far(tenant, ask.account_id, &meter.code, &month_of(now)).await?;
                let amount = version
                    .charge(&ask.dimensions, before, estimate, scale)
                    .map_err(|error| MeteringError::field("estimated_quantity", error.to_string()))?;
                let row = AuthorizationRow {
                    id: Uuid::now_v7(),
                    tenant_id: tenant,
                    idempotency_key: ask.idempotency_key,
                    request_hash: ask.request_hash,
                    account_id: ask.account_id,
                    meter_code: meter.code.clone(),
                    dimensions: ask.dimensions,
                    estimated_quantity: estimate,
                    estimated_amount: amount,
                    hold_id: None,
                    status: AuthorizationStatus::Pending,
                    expires_at: now + Duration::seconds(i64::from(ask.ttl_seconds)),
                    actual_quantity: None,
                    actual_amount: None,
                    charged_amount: None,
                    uncovered_amount: None,
                };
                self.store.insert_authorization(&row, now).await?;
                row
            }
        };
        if row.status.awaits_hold() {
            if row.estimated_amount.is_zero() {
                self.store.transition_authorization(row.id, row.status, AuthorizationStatus::Active, None, now).await?;
            } else {
                let reserve = wallet_pb::ReserveRequest {
                    account_id: row.account_id.to_string(),
                    amount: row.estimated_amount.normalize().to_string(),
                    ttl_seconds: ask.ttl_seconds,
                    meter_code: row.meter_code.clone(),
                    idempotency_key: wallet_key("authorize", &row.id.to_string()),
                    correlation_id: row.id.to_string(),
                };
                match self.wallet.reserve(tenant, reserve).await {
                    Ok(response) => {
                        let hold = response.hold.and_then(|hold| Uuid::parse_str(&hold.id).ok());
                        self.store
                            .transition_authorization(row.id, row.status, AuthorizationStatus::Active, hold, now)
                            .await?;
                    }
                    Err(status) if is_final_refusal(status.code()) => {
                        self.store
                            .transition_authorization(row.id, row.status, AuthorizationStatus::Refused, None, now)
                            .await?;
                        let reason = reservoir_common::status::reason_of(&status).unwrap_or_else(|| "REFUSED".into());
                        return Err(Refusal::Wallet { reason, message: status.message().to_owned() }.into());
                    }
                    Err(status) => return Err(MeteringError::Unavailable(format!("wallet: {status}"))),
                }
            }
        }
        self.get(tenant, row.id).await
    }

    /// Charges the actual usage of an authorization: once, whatever the
    /// retries; the same quantity again answers the same settlement.
    pub async fn settle(
        &self,
        tenant: TenantId,
        id: Uuid,
        actual: Decimal,
        now: DateTime<Utc>,
    ) -> Result<(AuthorizationRow, StoredEvent), MeteringError> {
        let mut row = self.get(tenant, id).await?;
        let meter = meter(&self.store, tenant, "meter_code", &row.meter_code).await?;
        // A COUNT meter counts whole events.
        let actual = if meter.aggregation == Aggregation::Count { actual.ceil() } else { actual };
        if row.status == AuthorizationStatus::Active && row.expires_at <= now {
            return Err(Refusal::AuthorizationExpired.into());
        }
        match row.status {
            AuthorizationStatus::Active => {
                let prices = self.store.prices(meter.id).await?;
                let scale =
                    self.accounts.scale(tenant, row.account_id).await?.ok_or(MeteringError::NotFound("account"))?;
                let price = |event: &NewEvent, before: Decimal| -> Result<Decimal, MeteringError> {
                    let version = price_at(&prices, event.occurred_at).ok_or(Refusal::NoPrice)?;
                    version
                        .charge(&event.dimensions, before, event.quantity, scale)
                        .map_err(|error| MeteringError::field("actual_quantity", error.to_string()))
                };
                self.store.begin_settlement(&row, actual, now, price).await?;
                row = self.get(tenant, id).await?;
            }
            AuthorizationStatus::Settling | AuthorizationStatus::Settled => {}
            AuthorizationStatus::Expired => return Err(Refusal::AuthorizationExpired.into()),
            AuthorizationStatus::Pending | AuthorizationStatus::Refused => {
                return Err(Refusal::AuthorizationNotActive.into());
            }
        }
        if row.actual_quantity.is_some_and(|settled| settled != actual) {
            return Err(Refusal::AuthorizationSettled.into());
        }
        if row.status == AuthorizationStatus::Settling {
            settle_authorization(&self.store, &self.wallet, tenant, &row, now).await?;
        }
        let event = self
            .store
            .event(tenant, &crate::store::settlement_event_id(id))
            .await?
            .ok_or_else(|| MeteringError::internal("the settlement's usage event is missing"))?;
        Ok((self.get(tenant, id).await?, event))
    }
}
