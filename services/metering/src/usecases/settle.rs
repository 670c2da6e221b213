//! Settling an authorization: the hold captured (or released) for what was
//! actually used, any excess debited, and the usage event and the
//! authorization finished together. Every wallet call is keyed by the
//! authorization, so a settlement interrupted by a crash or an outage is
//! finished later (by Settle again or by the worker) without charging twice.

use chrono::{DateTime, Utc};
use reservoir_common::auth::TenantId;
use reservoir_common::time::now;
use reservoir_proto::wallet as wallet_pb;
use rust_decimal::Decimal;

use crate::clients::wallet::{WalletGateway, is_final_refusal};
use crate::domain::{AuthorizationStatus, EventStatus, wallet_key};
use crate::error::MeteringError;
use crate::store::{AuthorizationRow, Settlement, Store};

/// Finishes a SETTLING authorization.
pub async fn settle_authorization(
    store: &Store,
    wallet: &WalletGateway,
    tenant: TenantId,
    authorization: &AuthorizationRow,
    now: DateTime<Utc>,
) -> Result<Settlement, MeteringError> {
    let actual = authorization.actual_amount.unwrap_or_default();
    let mut held = if authorization.hold_id.is_some() { authorization.estimated_amount } else { Decimal::ZERO };
    let id = authorization.id.to_string();
    let mut charged = Decimal::ZERO;
    let mut entry_ids = Vec::new();
    let mut reason = String::new();
    // Set when the hold had lapsed: then all the usage is debited.
    let mut lapsed = false;
    if let Some(hold) = authorization.hold_id {
        let outcome = if actual.is_zero() {
            let release = wallet_pb::ReleaseHoldRequest {
                hold_id: hold.to_string(),
                idempotency_key: wallet_key("release", &id),
            };
            wallet.release(tenant, release).await.map(|_| Vec::new())
        } else {
            let capture = wallet_pb::CaptureHoldRequest {
                hold_id: hold.to_string(),
                amount: actual.min(held).normalize().to_string(),
                idempotency_key: wallet_key("settle", &id),
                description: format!("usage of {}", authorization.meter_code),
                metadata: Default::default(),
            };
            wallet.capture(tenant, capture).await.map(|response| response.entries)
        };
        match outcome {
            Ok(entries) => {
                charged = actual.min(held);
                entry_ids.extend(entries.into_iter().map(|entry| entry.id));
            }
            // The hold lapsed while the settlement was interrupted; its
            // funds are free again, so the usage is debited as usual.
            Err(status) if reservoir_common::status::reason_of(&status).as_deref() == Some("HOLD_EXPIRED") => {
                held = Decimal::ZERO;
                lapsed = true;
            }
            Err(status) if is_final_refusal(status.code()) => {
                reason = reservoir_common::status::reason_of(&status).unwrap_or_default();
            }
            Err(status) => return Err(MeteringError::Unavailable(format!("wallet: {status}"))),
        }
    }
    let excess = actual - held;
    if excess > Decimal::ZERO && reason.is_empty() {
        let debit = wallet_pb::DebitRequest {
            account_id: authorization.account_id.to_string(),
            amount: excess.normalize().to_string(),
            meter_code: authorization.meter_code.clone(),
            // Above a capture, only the excess; after a lapsed hold, all of it.
            idempotency_key: wallet_key(if lapsed { "settle-debit" } else { "excess" }, &id),
            description: format!("usage of {} above its authorization", authorization.meter_code),
            metadata: Default::default(),
            correlation_id: id.clone(),
        };
        match wallet.debit(tenant, debit).await {
            Ok(response) => {
                charged += excess;
                entry_ids.extend(response.entries.into_iter().map(|entry| entry.id));
            }
            Err(status) if is_final_refusal(status.code()) => {
                reason = reservoir_common::status::reason_of(&status).unwrap_or_default();
            }
            Err(status) => return Err(MeteringError::Unavailable(format!("wallet: {status}"))),
        }
    }
    let uncovered = actual - charged;
    let settlement = Settlement {
        status: if uncovered.is_zero() { EventStatus::Charged } else { EventStatus::Uncovered },
        charged_amount: charged,
        uncovered_amount: uncovered,
        entry_ids,
        reason,
    };
    store.finish_settlement(authorization, &settlement, now).await?;
    Ok(settlement)
}

/// Finishes settlements a crash or an outage interrupted, each on its own:
/// one that keeps failing does not hold up the others.
pub async fn resume_settlements(store: &Store, wallet: &WalletGateway, before: DateTime<Utc>) {
    let open = match store.authorizations_in(AuthorizationStatus::Settling, before, 100).await {
        Ok(open) => open,
        Err(error) => {
            tracing::warn!(%error, "cannot list unfinished settlements");
            return;
        }
    };
    for authorization in open {
        if let Err(error) = settle_authorization(store, wallet, authorization.tenant_id, &authorization, now()).await {
            tracing::warn!(%error, authorization = %authorization.id, "settlement not finished; retried later");
        }
    }
}
