//! Refunds of a top-up's payment take back its bonus: each refund is
//! recorded once with the share it asks ([`crate::domain::clawback_asked`]),
//! then the wallet takes at most what is left of the bonus grant under the
//! refund's own key, and the clawback is marked applied with what was taken
//! and its event emitted in one transaction. A refund told of again, a
//! crash between the wallet's answer and the mark, or two replicas applying
//! the same clawback take nothing twice: the wallet answers a repeated key
//! with its first answer, and only one mark succeeds.

use reservoir_common::auth::TenantId;
use rust_decimal::Decimal;
use uuid::Uuid;

use crate::clients::CallError;
use crate::domain::Clawback;
use crate::error::OrchestratorError;
use crate::store::{NewEvent, Refund, TopUpRow};
use crate::usecases::saga::Saga;
use reservoir_common::time::now;

/// Clawbacks one pass applies at most.
pub const PER_PASS: u64 = 100;

/// A refund of `payment_id`, as payments told of it: recorded against the
/// top-up it paid for when that gave a bonus, then applied if it can be.
pub async fn on_refund(
    saga: &Saga,
    tenant: TenantId,
    payment_id: Uuid,
    refund: &Refund,
) -> Result<(), OrchestratorError> {
    let Some(top_up) = saga.store().bonus_top_up_by_payment(tenant, payment_id).await? else {
        return Ok(());
    };
    let Some(bonus) = &top_up.bonus else {
        return Ok(());
    };
    let clawback = saga.store().record_refund(&top_up, bonus, refund).await?;
    if clawback.applied_at.is_none() {
        apply(saga, &clawback, &top_up).await?;
    }
    Ok(())
}

/// Applies every clawback not applied yet that can be.
pub async fn apply_pending(saga: &Saga) -> Result<(), OrchestratorError> {
    for clawback in saga.store().pending_clawbacks(PER_PASS).await? {
        let tenant = TenantId(clawback.tenant_id);
        let Some(top_up) = saga.store().top_up(tenant, clawback.top_up_id).await? else {
            return Err(OrchestratorError::internal("a clawback's top-up is missing"));
        };
        if let Err(error) = apply(saga, &clawback, &top_up).await {
            tracing::warn!(%error, refund = %clawback.refund_id, "a bonus clawback failed; retried next pass");
        }
    }
    Ok(())
}

/// Takes a clawback's share from the bonus grant of `top_up`. Waits
/// (answers false) while the bonus is not granted yet or the wallet cannot
/// be reached; a bonus that will never be granted (it expired first) gives
/// nothing.
pub async fn apply(saga: &Saga, clawback: &Clawback, top_up: &TopUpRow) -> Result<bool, OrchestratorError> {
    let tenant = TenantId(clawback.tenant_id);
    let Some(bonus) = &top_up.bonus else {
        return Err(OrchestratorError::internal("a clawback's top-up has no bonus"));
    };
    let taken = match bonus.grant_id {
        Some(_) if clawback.asked.is_zero() => Decimal::ZERO,
        Some(grant) => match saga.upstream().claw_back(tenant, grant, clawback.refund_id, clawback.asked).await {
            Ok(taken) => taken,
            // Refused for good (the grant gone from the wallet): nothing can
            // be taken, and the whole share is recorded as not recovered,
            // rather than kept pending in front of newer clawbacks.
            Err(CallError::Refused { reason, .. }) => {
                tracing::error!(%reason, refund = %clawback.refund_id, "a bonus clawback was refused; nothing taken");
                Decimal::ZERO
            }
            Err(error) => {
                tracing::warn!(error = %error.detail(), refund = %clawback.refund_id, "bonus clawback waits");
                return Ok(false);
            }
        },
        None if top_up.status.is_final() => Decimal::ZERO,
        None => return Ok(false),
    };
    saga.crash_if(false, crate::usecases::saga::CrashPoint::CLAWBACK);
    let unrecovered = clawback.asked - taken;
    let event = NewEvent {
        event_type: "BONUS_CLAWED_BACK",
        account_id: top_up.account_id,
        top_up_id: Some(top_up.id),
        credits: taken.normalize().to_string(),
        reason: format!("refund {}: {} not recovered", clawback.refund_id, unrecovered.normalize()),
    };
    let finished = saga.store().finish_clawback(clawback, taken, &event, now()).await?;
    if finished {
        metrics::counter!("reservoir_orchestrator_bonus_clawbacks_total").increment(1);
        tracing::info!(top_up = %top_up.id, refund = %clawback.refund_id, %taken, %unrecovered, "bonus clawed back");
    }
    Ok(finished)
}
