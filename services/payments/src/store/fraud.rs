//! Fraud rules on charges as stored: the tenant's rules (JSON of a stored
//! form), what the rules count (the payments themselves), the decisions
//! they made, and an operator's release or rejection of a held payment,
//! each written with its event in one transaction.

use chrono::{DateTime, Duration, Utc};
use reservoir_common::auth::TenantId;
use reservoir_common::db::{Amount, WriteTransaction, json};
use rust_decimal::Decimal;
use sea_orm::sea_query::{Expr, ExprTrait, OnConflict};
use sea_orm::{
    ActiveValue::Set, ColumnTrait, ConnectionTrait, EntityTrait, PaginatorTrait, QueryFilter, QueryOrder, QuerySelect,
};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::entities::{fraud_decision, fraud_rules, payment};
use super::payments::lock_payment;
use super::{NewEvent, PaymentRow, Store, refuse};
use crate::domain::fraud::{
    ChargeHistory, ChargeRule, ChargeRules, FraudAction, HELD_CODE, REJECTED_CODE, Seen, Velocity,
};
use crate::domain::{EventType, PaymentStatus, Refusal};
use crate::error::PaymentsError;

#[derive(Debug, Serialize, Deserialize)]
struct StoredVelocity {
    max_count: Option<u32>,
    max_amount: Option<String>,
}

#[derive(Debug, Serialize, Deserialize)]
struct StoredRules {
    review: bool,
    velocity_window_seconds: i64,
    account: StoredVelocity,
    method: StoredVelocity,
    max_declines: Option<u32>,
    decline_window_seconds: i64,
}

fn stored_velocity(velocity: Velocity) -> StoredVelocity {
    StoredVelocity { max_count: velocity.max_count, max_amount: velocity.max_amount.map(|amount| amount.to_string()) }
}

fn velocity_of(stored: StoredVelocity) -> Result<Velocity, PaymentsError> {
    let max_amount = stored
        .max_amount
        .map(|text| text.parse::<Decimal>())
        .transpose()
        .map_err(|_| PaymentsError::internal("stored fraud rules are not valid"))?;
    Ok(Velocity { max_count: stored.max_count, max_amount })
}

fn rules_of(text: &str) -> Result<ChargeRules, PaymentsError> {
    let stored: StoredRules =
        serde_json::from_str(text).map_err(|_| PaymentsError::internal("stored fraud rules are not valid"))?;
    Ok(ChargeRules {
        action: if stored.review { FraudAction::Review } else { FraudAction::Refuse },
        velocity_window: Duration::seconds(stored.velocity_window_seconds),
        account: velocity_of(stored.account)?,
        method: velocity_of(stored.method)?,
        max_declines: stored.max_declines,
        decline_window: Duration::seconds(stored.decline_window_seconds),
    })
}

/// One decision of the rules, as stored.
#[derive(Debug, Clone, PartialEq)]
pub struct FraudDecisionRow {
    pub id: Uuid,
    pub account_id: Uuid,
    pub payment_id: Option<Uuid>,
    pub payment_method_id: Option<Uuid>,
    pub amount: Decimal,
    pub currency: String,
    pub rule: ChargeRule,
    pub decision: String,
    pub reason: String,
    pub decided_at: DateTime<Utc>,
}

/// A decision to record: on a payment, or on a charge refused before one was made.
pub struct Decision<'a> {
    pub payment: &'a PaymentRow,
    /// Whether a payment was made (none for a refusal).
    pub made: bool,
    pub rule: ChargeRule,
    pub decision: &'static str,
    pub reason: &'a str,
}

pub(super) async fn record_decision(
    connection: &impl ConnectionTrait,
    decision: &Decision<'_>,
    now: DateTime<Utc>,
) -> Result<(), PaymentsError> {
    let payment = decision.payment;
    fraud_decision::Entity::insert(fraud_decision::ActiveModel {
        id: Set(Uuid::now_v7()),
        tenant_id: Set(payment.tenant_id.0),
        account_id: Set(payment.account_id.0),
        payment_id: Set(decision.made.then_some(payment.id)),
        payment_method_id: Set(payment.payment_method_id),
        amount: Set(Amount(payment.amount)),
        currency: Set(payment.currency.clone()),
        rule: Set(decision.rule.name().to_owned()),
        decision: Set(decision.decision.to_owned()),
        reason: Set(decision.reason.to_owned()),
        decided_at: Set(now),
    })
    .exec_without_returning(connection)
    .await?;
    Ok(())
}

fn seen(amounts: Vec<Amount>) -> Seen {
    Seen { count: u32::try_from(amounts.len()).unwrap_or(u32::MAX), amount: amounts.into_iter().map(|a| a.0).sum() }
}

impl Store {
    /// The tenant's rules; none set: every rule off.
    pub async fn fraud_rules(&self, tenant: TenantId) -> Result<ChargeRules, PaymentsError> {
        let row = fraud_rules::Entity::find_by_id(tenant.0).one(&self.db).await?;
        row.map_or_else(|| Ok(ChargeRules::default()), |row| rules_of(&row.rules))
    }

    pub async fn set_fraud_rules(
        &self,
        tenant: TenantId,
        rules: &ChargeRules,
        now: DateTime<Utc>,
    ) -> Result<(), PaymentsError> {
        if !rules.is_active() {
            fraud_rules::Entity::delete_by_id(tenant.0).exec(&self.db).await?;
            return Ok(());
        }
        let stored = StoredRules {
            review: rules.action == FraudAction::Review,
            velocity_window_seconds: rules.velocity_window.num_seconds(),
            account: stored_velocity(rules.account),
            method: stored_velocity(rules.method),
            max_declines: rules.max_declines,
            decline_window_seconds: rules.decline_window.num_seconds(),
        };
        fraud_rules::Entity::insert(fraud_rules::ActiveModel {
            tenant_id: Set(tenant.0),
            rules: Set(json(&stored)),
            updated_at: Set(now),
        })
        .on_conflict(
            OnConflict::column(fraud_rules::Column::TenantId)
                .update_columns([fraud_rules::Column::Rules, fraud_rules::Column::UpdatedAt])
                .to_owned(),
        )
        .exec_without_returning(&self.db)
        .await?;
        Ok(())
    }

    /// What the rules judge a new charge on: the account's and the method's
    /// charges in the velocity window (all but those an operator rejected),
    /// and the declines of the method or its card in the decline window.
    pub async fn charge_history(
        &self,
        rules: &ChargeRules,
        charge: &PaymentRow,
        now: DateTime<Utc>,
    ) -> Result<ChargeHistory, PaymentsError> {
        let mut history = ChargeHistory::default();
        let amounts = || {
            payment::Entity::find()
                .select_only()
                .column(payment::Column::Amount)
                .filter(payment::Column::TenantId.eq(charge.tenant_id.0))
                .filter(payment::Column::FailureCode.ne(REJECTED_CODE))
        };
        if rules.velocity_counts() {
            let since = now - rules.velocity_window;
            let account = amounts()
                .filter(payment::Column::AccountId.eq(charge.account_id.0))
                .filter(payment::Column::CreatedAt.gt(since))
                .into_tuple()
                .all(&self.db)
                .await?;
            history.account = seen(account);
            if let Some(method) = charge.payment_method_id {
                let method = amounts()
                    .filter(payment::Column::PaymentMethodId.eq(method))
                    .filter(payment::Column::CreatedAt.gt(since))
                    .into_tuple()
                    .all(&self.db)
                    .await?;
                history.method = seen(method);
            }
        }
        if rules.declines_count() && charge.payment_method_id.is_some() {
            let mut same_card = payment::Column::PaymentMethodId.eq(charge.payment_method_id);
            if !charge.gateway_token.is_empty() {
                same_card = same_card.or(payment::Column::GatewayToken.eq(charge.gateway_token.as_str()));
            }
            let declines = payment::Entity::find()
                .filter(payment::Column::TenantId.eq(charge.tenant_id.0))
                .filter(payment::Column::FailureCode.ne(REJECTED_CODE))
                .filter(same_card)
                .filter(payment::Column::Status.eq(PaymentStatus::Declined.name()))
                .filter(payment::Column::UpdatedAt.gt(now - rules.decline_window))
                .count(&self.db)
                .await?;
            history.declines = u32::try_from(declines).unwrap_or(u32::MAX);
        }
        Ok(history)
    }

    /// Records a charge a rule refused (no payment was made).
    pub async fn record_refusal(
        &self,
        charge: &PaymentRow,
        rule: ChargeRule,
        now: DateTime<Utc>,
    ) -> Result<(), PaymentsError> {
        let decision = Decision { payment: charge, made: false, rule, decision: "REFUSED", reason: "" };
        record_decision(&self.db, &decision, now).await
    }

    /// An operator's decision on a held payment, written with its decision
    /// in one transaction. Released, it is PROCESSING again for the gateway
    /// to be asked (a manual one PENDING for its money); a payment released
    /// before whose gateway call was cut short is answered as it is, to be
    /// asked again. Rejected, it is DECLINED (code fraud_rejected), nothing
    /// charged, with its PAYMENT_DECLINED event.
    pub async fn decide_held(
        &self,
        tenant: TenantId,
        payment_id: Uuid,
        release: bool,
        reason: &str,
        now: DateTime<Utc>,
    ) -> Result<PaymentRow, PaymentsError> {
        let WriteTransaction { transaction, turn: _turn } = self.database.begin_write().await?;
        let Some(mut payment) = lock_payment(&transaction, tenant, payment_id).await? else {
            return refuse(transaction, PaymentsError::NotFound("payment")).await;
        };
        if release && payment.status == PaymentStatus::Processing && released(&transaction, payment_id).await? {
            transaction.rollback().await?;
            return Ok(payment);
        }
        let Some(rule) = held_rule(&transaction, &payment).await? else {
            return refuse(transaction, Refusal::PaymentNotHeld.into()).await;
        };
        let (status, code, decision) = if release {
            (crate::domain::initial_status(payment.channel), "", "RELEASED")
        } else {
            (PaymentStatus::Declined, REJECTED_CODE, "REJECTED")
        };
        payment.status = status;
        code.clone_into(&mut payment.failure_code);
        payment.updated_at = now;
        payment::Entity::update_many()
            .col_expr(payment::Column::Status, Expr::value(status.name()))
            .col_expr(payment::Column::FailureCode, Expr::value(code))
            .col_expr(payment::Column::UpdatedAt, Expr::value(now))
            .filter(payment::Column::Id.eq(payment_id))
            .exec(&transaction)
            .await?;
        record_decision(&transaction, &Decision { payment: &payment, made: true, rule, decision, reason }, now).await?;
        if !release {
            let event = NewEvent::of_payment(EventType::PaymentDeclined, &payment, payment.amount, now);
            Self::append_event(&transaction, tenant, event).await?;
        }
        transaction.commit().await?;
        if !release {
            self.announce_events();
        }
        Ok(payment)
    }

    /// The tenant's decisions, newest first, before the page's last id.
    pub async fn fraud_decisions(
        &self,
        tenant: TenantId,
        before: Option<Uuid>,
        limit: u64,
    ) -> Result<Vec<FraudDecisionRow>, PaymentsError> {
        let mut query = fraud_decision::Entity::find().filter(fraud_decision::Column::TenantId.eq(tenant.0));
        if let Some(before) = before {
            query = query.filter(fraud_decision::Column::Id.lt(before));
        }
        let rows = query.order_by_desc(fraud_decision::Column::Id).limit(limit).all(&self.db).await?;
        rows.into_iter()
            .map(|row| {
                Ok(FraudDecisionRow {
                    id: row.id,
                    account_id: row.account_id,
                    payment_id: row.payment_id,
                    payment_method_id: row.payment_method_id,
                    amount: row.amount.0,
                    currency: row.currency,
                    rule: ChargeRule::from_name(&row.rule)
                        .ok_or_else(|| PaymentsError::internal("a stored decision's rule is not valid"))?,
                    decision: row.decision,
                    reason: row.reason,
                    decided_at: row.decided_at,
                })
            })
            .collect()
    }
}

/// Whether a payment was released from review.
async fn released(connection: &impl ConnectionTrait, payment_id: Uuid) -> Result<bool, PaymentsError> {
    Ok(fraud_decision::Entity::find()
        .filter(fraud_decision::Column::PaymentId.eq(payment_id))
        .filter(fraud_decision::Column::Decision.eq("RELEASED"))
        .one(connection)
        .await?
        .is_some())
}

/// The rule a payment is held by, if it is held (PENDING for review).
async fn held_rule(
    connection: &impl ConnectionTrait,
    payment: &PaymentRow,
) -> Result<Option<ChargeRule>, PaymentsError> {
    if payment.status != PaymentStatus::Pending || payment.failure_code != HELD_CODE {
        return Ok(None);
    }
    let held = fraud_decision::Entity::find()
        .filter(fraud_decision::Column::PaymentId.eq(payment.id))
        .filter(fraud_decision::Column::Decision.eq("HELD"))
        .one(connection)
        .await?
        .ok_or_else(|| PaymentsError::internal("a held payment has no HELD decision"))?;
    ChargeRule::from_name(&held.rule).map(Some).ok_or_else(|| PaymentsError::internal("a stored rule is not valid"))
}
