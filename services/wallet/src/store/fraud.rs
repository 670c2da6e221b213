//! Transfers under the tenant's fraud rules, as stored: the rules (a JSON
//! column of the tenant), every transfer's decision (ALLOWED, REFUSED, HELD,
//! RELEASED, REJECTED: what the velocity rules count), and the transfers
//! held for review. A transfer locks both accounts, reads the sender's
//! decisions under the sender's lock (so two transfers from one account are
//! judged one after the other), and writes its decision with what it moved
//! in one transaction; a release writes the transfer, its decision and the
//! review's new status together, so a review is decided once.

use chrono::{DateTime, Duration, Utc};
use reservoir_common::auth::TenantId;
use reservoir_common::db::{Amount, WriteTransaction};
use rust_decimal::Decimal;
use sea_orm::sea_query::Expr;
use sea_orm::{
    ActiveValue::Set, ColumnTrait, ConnectionTrait, DatabaseTransaction, EntityTrait, QueryFilter, QueryOrder,
    QuerySelect,
};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::entities::{tenant, transfer_decision, transfer_review};
use super::loads::{load, load_pair, lookup, replayed};
use super::{IdempotencyCheck, LoadPlan, Reply, Store};
use crate::domain::fraud::{
    FraudAction, FraudRule, ReviewStatus, TransferAsked, TransferHistory, TransferReview, TransferRules,
};
use crate::domain::{AccountId, Answer, DomainError, OperationContext, Wallet};
use crate::error::WalletError;

/// The rules as the tenant's row keeps them.
#[derive(Debug, Serialize, Deserialize)]
struct StoredRules {
    review: bool,
    window_seconds: i64,
    max_count: Option<u32>,
    max_amount: Option<String>,
    new_recipient_max_amount: Option<String>,
    cooling_seconds: i64,
}

fn rules_to_text(rules: &TransferRules) -> Option<String> {
    let stored = StoredRules {
        review: rules.action == FraudAction::Review,
        window_seconds: rules.velocity_window.num_seconds(),
        max_count: rules.velocity_max_count,
        max_amount: rules.velocity_max_amount.map(|amount| amount.to_string()),
        new_recipient_max_amount: rules.new_recipient_max_amount.map(|amount| amount.to_string()),
        cooling_seconds: rules.new_recipient_cooling.num_seconds(),
    };
    rules.is_active().then(|| reservoir_common::db::json(&stored))
}

fn rules_from_text(text: Option<&str>) -> Result<TransferRules, WalletError> {
    let Some(text) = text else {
        return Ok(TransferRules::default());
    };
    let corrupt = || WalletError::internal("stored transfer fraud rules are not valid");
    let stored: StoredRules = serde_json::from_str(text).map_err(|_| corrupt())?;
    let amount = |text: Option<String>| text.map(|text| text.parse::<Decimal>().map_err(|_| corrupt())).transpose();
    Ok(TransferRules {
        action: if stored.review { FraudAction::Review } else { FraudAction::Refuse },
        velocity_window: Duration::seconds(stored.window_seconds),
        velocity_max_count: stored.max_count,
        velocity_max_amount: amount(stored.max_amount)?,
        new_recipient_max_amount: amount(stored.new_recipient_max_amount)?,
        new_recipient_cooling: Duration::seconds(stored.cooling_seconds),
    })
}

fn review_from_row(row: transfer_review::Model) -> Result<TransferReview, WalletError> {
    let corrupt = |what: &str| WalletError::internal(format!("a stored review's {what} is not valid"));
    Ok(TransferReview {
        id: row.id,
        asked: TransferAsked {
            from: AccountId(row.from_id),
            to: AccountId(row.to_id),
            amount: row.amount.0,
            idempotency_key: row.idempotency_key,
            description: row.description,
            correlation_id: row.correlation_id,
            metadata: super::rows::metadata_from(&row.metadata)?,
        },
        rule: FraudRule::from_name(&row.rule).ok_or_else(|| corrupt("rule"))?,
        status: ReviewStatus::from_name(&row.status).ok_or_else(|| corrupt("status"))?,
        reason: row.reason,
        created_at: row.created_at,
        decided_at: row.decided_at,
    })
}

/// A review and the digest of the request it was asked with.
pub struct HeldReview {
    pub review: TransferReview,
    pub request_hash: Vec<u8>,
}

/// What a transfer came to.
pub enum Transferred {
    /// The credits moved (or had moved, under the key).
    Moved(Reply),
    /// Held for review (now, or before under the key).
    Held(TransferReview),
    /// Refused by a rule.
    Refused(FraudRule),
}

async fn record_decision(
    connection: &impl ConnectionTrait,
    tenant: TenantId,
    asked: &TransferAsked,
    decision: &str,
    rule: Option<FraudRule>,
    review_id: Option<Uuid>,
    now: DateTime<Utc>,
) -> Result<(), WalletError> {
    transfer_decision::Entity::insert(transfer_decision::ActiveModel {
        id: Set(Uuid::now_v7()),
        tenant_id: Set(tenant.0),
        from_id: Set(asked.from.0),
        to_id: Set(asked.to.0),
        amount: Set(Amount(asked.amount)),
        decision: Set(decision.to_owned()),
        rule: Set(rule.map(|rule| rule.name().to_owned())),
        review_id: Set(review_id),
        decided_at: Set(now),
    })
    .exec_without_returning(connection)
    .await?;
    Ok(())
}

/// What the sender moved lately, as the rules count it.
async fn history(
    connection: &impl ConnectionTrait,
    rules: &TransferRules,
    asked: &TransferAsked,
    now: DateTime<Utc>,
) -> Result<TransferHistory, WalletError> {
    let moved = ["ALLOWED", "RELEASED"];
    let mut history = TransferHistory::default();
    if rules.velocity_counts() {
        let amounts: Vec<Amount> = transfer_decision::Entity::find()
            .select_only()
            .column(transfer_decision::Column::Amount)
            .filter(transfer_decision::Column::FromId.eq(asked.from.0))
            .filter(transfer_decision::Column::Decision.is_in(moved))
            .filter(transfer_decision::Column::DecidedAt.gt(now - rules.velocity_window))
            .into_tuple()
            .all(connection)
            .await?;
        history.count = u32::try_from(amounts.len()).unwrap_or(u32::MAX);
        history.amount = amounts.into_iter().map(|amount| amount.0).sum();
    }
    if rules.new_recipient_max_amount.is_some() {
        history.first_to_recipient = transfer_decision::Entity::find()
            .select_only()
            .column(transfer_decision::Column::DecidedAt)
            .filter(transfer_decision::Column::FromId.eq(asked.from.0))
            .filter(transfer_decision::Column::ToId.eq(asked.to.0))
            .filter(transfer_decision::Column::Decision.is_in(moved))
            .order_by_asc(transfer_decision::Column::DecidedAt)
            .into_tuple::<DateTime<Utc>>()
            .one(connection)
            .await?;
    }
    Ok(history)
}

impl Store {
    pub async fn transfer_rules(&self, tenant: TenantId) -> Result<TransferRules, WalletError> {
        let row = tenant::Entity::find_by_id(tenant.0).one(&self.db).await?.ok_or(WalletError::NotFound("tenant"))?;
        rules_from_text(row.transfer_fraud.as_deref())
    }

    pub async fn set_transfer_rules(&self, tenant: TenantId, rules: &TransferRules) -> Result<(), WalletError> {
        tenant::Entity::update_many()
            .col_expr(tenant::Column::TransferFraud, Expr::value(rules_to_text(rules)))
            .filter(tenant::Column::Id.eq(tenant.0))
            .exec(&self.db)
            .await?;
        Ok(())
    }

    /// A tenant's reviews, newest first, after the page's last id.
    pub async fn transfer_reviews(
        &self,
        tenant: TenantId,
        status: Option<ReviewStatus>,
        before: Option<Uuid>,
        limit: u64,
    ) -> Result<Vec<TransferReview>, WalletError> {
        let mut query = transfer_review::Entity::find().filter(transfer_review::Column::TenantId.eq(tenant.0));
        if let Some(status) = status {
            query = query.filter(transfer_review::Column::Status.eq(status.name()));
        }
        if let Some(before) = before {
            query = query.filter(transfer_review::Column::Id.lt(before));
        }
        let rows = query.order_by_desc(transfer_review::Column::Id).limit(limit).all(&self.db).await?;
        rows.into_iter().map(review_from_row).collect()
    }

    pub async fn transfer_review(&self, tenant: TenantId, id: Uuid) -> Result<HeldReview, WalletError> {
        let row = transfer_review::Entity::find_by_id(id)
            .filter(transfer_review::Column::TenantId.eq(tenant.0))
            .one(&self.db)
            .await?
            .ok_or(WalletError::NotFound("transfer review"))?;
        let request_hash = row.request_hash.clone();
        Ok(HeldReview { review: review_from_row(row)?, request_hash })
    }

    /// A transfer under the tenant's rules, in one transaction: both rows
    /// locked in id order, the key checked again (a transfer made answers
    /// as made, one held answers as held), the rules judged on the sender's
    /// recent decisions, and then the credits moved by `operate` (which
    /// gets the tenant's promotional-transfer setting) with an ALLOWED
    /// decision, or a HELD review (with a TRANSFER_HELD event) or a REFUSED
    /// decision. `release` names the review a release makes the transfer
    /// for (and the operator's reason): no rule is judged, and the review is
    /// RELEASED with it.
    #[allow(clippy::too_many_arguments)]
    pub async fn transfer(
        &self,
        tenant: TenantId,
        asked: &TransferAsked,
        check: &IdempotencyCheck,
        ctx: &OperationContext,
        release: Option<(Uuid, &str)>,
        operate: impl FnOnce(&mut Wallet, &mut Wallet, bool) -> Result<Answer, WalletError>,
    ) -> Result<Transferred, WalletError> {
        if asked.from == asked.to {
            // Loaded twice, one wallet would be written as two.
            return Err(WalletError::field("to_account_id", "must differ from from_account_id"));
        }
        let now = ctx.now;
        let WriteTransaction { transaction, turn: _turn } = self.database.begin_write().await?;
        let (mut sender, mut receiver) = load_pair(&transaction, tenant, (asked.from, asked.to), now).await?;
        if let Some(recorded) = lookup(&transaction, check).await? {
            transaction.rollback().await?;
            return replayed(&self.db, tenant, recorded).await.map(Transferred::Moved);
        }
        let tenant_row =
            tenant::Entity::find_by_id(tenant.0).one(&transaction).await?.ok_or(WalletError::NotFound("tenant"))?;
        if release.is_none() {
            if let Some(held) = held_under(&transaction, tenant, check).await? {
                transaction.rollback().await?;
                return Ok(Transferred::Held(held));
            }
            let rules = rules_from_text(tenant_row.transfer_fraud.as_deref())?;
            if rules.is_active() {
                let history = history(&transaction, &rules, asked, now).await?;
                if let Some(rule) = rules.assess(&history, asked.amount, now) {
                    return self.hold_or_refuse(transaction, tenant, asked, check, ctx, &rules, rule, sender).await;
                }
            }
        }
        let answer = operate(&mut sender, &mut receiver, tenant_row.allow_promotional_transfers)?;
        match release {
            None => record_decision(&transaction, tenant, asked, "ALLOWED", None, None, now).await?,
            Some((review, reason)) => {
                let released = transfer_review::Entity::update_many()
                    .col_expr(transfer_review::Column::Status, Expr::value(ReviewStatus::Released.name()))
                    .col_expr(transfer_review::Column::DecidedAt, Expr::value(now))
                    .col_expr(transfer_review::Column::Reason, Expr::value(reason.to_owned()))
                    .filter(transfer_review::Column::Id.eq(review))
                    .filter(transfer_review::Column::Status.eq(ReviewStatus::Held.name()))
                    .exec(&transaction)
                    .await?;
                if released.rows_affected != 1 {
                    transaction.rollback().await?;
                    return Err(DomainError::ReviewDecided.into());
                }
                record_decision(&transaction, tenant, asked, "RELEASED", None, Some(review), now).await?;
            }
        }
        self.commit_changes(transaction, Some(check), &answer, [&mut sender, &mut receiver]).await?;
        Ok(Transferred::Moved(Reply::Answer(Box::new(answer))))
    }

    /// A transfer that matched `rule`: held (a review, its decision and a
    /// TRANSFER_HELD event on the sender) or refused (its decision), as the
    /// tenant chose.
    #[allow(clippy::too_many_arguments)]
    async fn hold_or_refuse(
        &self,
        transaction: DatabaseTransaction,
        tenant: TenantId,
        asked: &TransferAsked,
        check: &IdempotencyCheck,
        ctx: &OperationContext,
        rules: &TransferRules,
        rule: FraudRule,
        mut sender: Wallet,
    ) -> Result<Transferred, WalletError> {
        let now = ctx.now;
        metrics::counter!("reservoir_wallet_transfer_fraud_total", "rule" => rule.name(), "action" => match rules.action {
            FraudAction::Refuse => "REFUSED",
            FraudAction::Review => "HELD",
        })
        .increment(1);
        if rules.action == FraudAction::Refuse {
            record_decision(&transaction, tenant, asked, "REFUSED", Some(rule), None, now).await?;
            transaction.commit().await?;
            return Ok(Transferred::Refused(rule));
        }
        let id = Uuid::now_v7();
        transfer_review::Entity::insert(transfer_review::ActiveModel {
            id: Set(id),
            tenant_id: Set(tenant.0),
            idempotency_key: Set(asked.idempotency_key.clone()),
            request_hash: Set(check.request_hash.clone()),
            from_id: Set(asked.from.0),
            to_id: Set(asked.to.0),
            amount: Set(Amount(asked.amount)),
            description: Set(asked.description.clone()),
            correlation_id: Set(asked.correlation_id.clone()),
            metadata: Set(super::rows::metadata_to(&asked.metadata)),
            key_id: Set(ctx.key_id.map(|key| key.0)),
            rule: Set(rule.name().to_owned()),
            status: Set(ReviewStatus::Held.name().to_owned()),
            reason: Set(String::new()),
            created_at: Set(now),
            decided_at: Set(None),
        })
        .exec_without_returning(&transaction)
        .await?;
        record_decision(&transaction, tenant, asked, "HELD", Some(rule), Some(id), now).await?;
        sender.note_transfer_review(ctx, asked.to, asked.amount, true);
        self.commit_changes(transaction, None, &Answer::at(now), [&mut sender]).await?;
        let held = transfer_review::Entity::find_by_id(id).one(&self.db).await?;
        let held = held.ok_or_else(|| WalletError::internal("a review just written is missing"))?;
        Ok(Transferred::Held(review_from_row(held)?))
    }

    /// Rejects a held transfer: nothing moves, the review and a REJECTED
    /// decision are recorded, and the sender gets a TRANSFER_REJECTED event.
    pub async fn reject_transfer(
        &self,
        tenant: TenantId,
        review: &TransferReview,
        ctx: &OperationContext,
    ) -> Result<TransferReview, WalletError> {
        let now = ctx.now;
        let WriteTransaction { transaction, turn: _turn } = self.database.begin_write().await?;
        let mut sender = load(&transaction, tenant, review.asked.from, &LoadPlan::default(), now, true).await?.wallet;
        let rejected = transfer_review::Entity::update_many()
            .col_expr(transfer_review::Column::Status, Expr::value(ReviewStatus::Rejected.name()))
            .col_expr(transfer_review::Column::DecidedAt, Expr::value(now))
            .col_expr(transfer_review::Column::Reason, Expr::value(ctx.description.clone()))
            .filter(transfer_review::Column::Id.eq(review.id))
            .filter(transfer_review::Column::Status.eq(ReviewStatus::Held.name()))
            .exec(&transaction)
            .await?;
        if rejected.rows_affected != 1 {
            transaction.rollback().await?;
            return Err(DomainError::ReviewDecided.into());
        }
        record_decision(&transaction, tenant, &review.asked, "REJECTED", Some(review.rule), Some(review.id), now)
            .await?;
        sender.note_transfer_review(ctx, review.asked.to, review.asked.amount, false);
        self.commit_changes(transaction, None, &Answer::at(now), [&mut sender]).await?;
        Ok(self.transfer_review(tenant, review.id).await?.review)
    }
}

/// The review a transfer under this key was held for, if any; a different
/// request under the key is refused.
async fn held_under(
    connection: &impl ConnectionTrait,
    tenant: TenantId,
    check: &IdempotencyCheck,
) -> Result<Option<TransferReview>, WalletError> {
    let row = transfer_review::Entity::find()
        .filter(transfer_review::Column::TenantId.eq(tenant.0))
        .filter(transfer_review::Column::IdempotencyKey.eq(check.key.as_str()))
        .one(connection)
        .await?;
    let Some(row) = row else {
        return Ok(None);
    };
    if row.request_hash != check.request_hash {
        return Err(WalletError::IdempotencyKeyReused);
    }
    review_from_row(row).map(Some)
}
