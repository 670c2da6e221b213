//! Voucher batches, vouchers known by the digests of their codes, and the
//! count of unknown codes each account entered.

use chrono::{DateTime, Utc};
use reservoir_common::auth::TenantId;
use reservoir_common::db::{Amount, WriteTransaction, is_unique_violation, rows_per_insert};
use reservoir_common::ids::AccountId;
use sea_orm::ActiveValue::Set;
use sea_orm::sea_query::{Expr, OnConflict};
use sea_orm::{ColumnTrait, ConnectionTrait, EntityTrait, QueryFilter, QuerySelect};
use uuid::Uuid;

use super::entities::{voucher, voucher_batch, voucher_failure};
use super::{NewEvent, Store, VoucherBatchRow, VoucherRow, corrupt, refuse};
use crate::domain::{EventType, FailureWindow, Redemption, redemption};
use crate::error::PaymentsError;

/// A redeemed voucher, and whether this call redeemed it (or a retry found it).
#[derive(Debug, Clone, PartialEq)]
pub struct Redeemed {
    pub voucher: VoucherRow,
    pub fresh: bool,
}

fn voucher_from_row(row: voucher::Model) -> VoucherRow {
    VoucherRow {
        id: row.id,
        batch_id: row.batch_id,
        value: row.value.0,
        unit_code: row.unit_code,
        expires_at: row.expires_at,
        redeemed_by: row.redeemed_by.map(AccountId),
        redeemed_at: row.redeemed_at,
        created_at: row.created_at,
    }
}

fn window_from_row(row: &voucher_failure::Model) -> Result<FailureWindow, PaymentsError> {
    Ok(FailureWindow {
        started_at: row.window_started_at,
        failures: u32::try_from(row.failures).map_err(|_| corrupt("voucher failure count"))?,
    })
}

/// A voucher looked up by its code's digest, within its tenant.
async fn voucher_by_digest(
    connection: &impl ConnectionTrait,
    tenant: TenantId,
    digest: &str,
) -> Result<Option<VoucherRow>, PaymentsError> {
    let row = voucher::Entity::find()
        .filter(voucher::Column::TenantId.eq(tenant.0))
        .filter(voucher::Column::CodeHash.eq(digest))
        .one(connection)
        .await?;
    Ok(row.map(voucher_from_row))
}

/// A voucher being issued: its id, its code's digest (all that is stored of
/// it on the voucher) and the code itself, shown once in the answer.
#[derive(Debug, Clone)]
pub struct IssuedVoucher {
    pub id: Uuid,
    pub digest: String,
    pub code: String,
}

/// What CreateVoucherBatch answered, as its replay record keeps it: the
/// batch, and each voucher's id with its code (the answer shows the codes,
/// and a retry must show the same ones).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct VouchersIssued {
    pub batch_id: Uuid,
    pub vouchers: Vec<(Uuid, String)>,
}

impl Store {
    /// Stores a batch, its vouchers (each by its code's digest) and the
    /// record of its answer under its idempotency key in one transaction;
    /// `false` when the key or a code digest was taken meanwhile.
    pub async fn create_voucher_batch(
        &self,
        tenant: TenantId,
        batch: &VoucherBatchRow,
        vouchers: &[IssuedVoucher],
        key: &str,
        request_hash: &str,
    ) -> Result<bool, PaymentsError> {
        let issued = VouchersIssued {
            batch_id: batch.id,
            vouchers: vouchers.iter().map(|voucher| (voucher.id, voucher.code.clone())).collect(),
        };
        let WriteTransaction { transaction, turn: _turn } = self.database.begin_write().await?;
        let written = async {
            Self::record(&transaction, tenant, key, "CreateVoucherBatch", request_hash, &issued, batch.created_at)
                .await?;
            voucher_batch::Entity::insert(voucher_batch::ActiveModel {
                id: Set(batch.id),
                tenant_id: Set(tenant.0),
                idempotency_key: Set(key.to_owned()),
                count: Set(i32::try_from(batch.count).unwrap_or(i32::MAX)),
                value: Set(Amount(batch.value)),
                unit_code: Set(batch.unit_code.clone()),
                expires_at: Set(batch.expires_at),
                created_at: Set(batch.created_at),
            })
            .exec_without_returning(&transaction)
            .await?;
            let rows: Vec<voucher::ActiveModel> = vouchers
                .iter()
                .map(|voucher| voucher::ActiveModel {
                    id: Set(voucher.id),
                    tenant_id: Set(tenant.0),
                    batch_id: Set(batch.id),
                    code_hash: Set(voucher.digest.clone()),
                    value: Set(Amount(batch.value)),
                    unit_code: Set(batch.unit_code.clone()),
                    expires_at: Set(batch.expires_at),
                    redeemed_by: Set(None),
                    redeemed_at: Set(None),
                    created_at: Set(batch.created_at),
                })
                .collect();
            // A voucher row is a couple of hundred bytes on the wire.
            for chunk in rows.chunks(rows_per_insert(250)) {
                voucher::Entity::insert_many(chunk.to_vec()).exec_without_returning(&transaction).await?;
            }
            Ok::<(), sea_orm::DbErr>(())
        }
        .await;
        match written {
            Ok(()) => {
                transaction.commit().await?;
                Ok(true)
            }
            Err(error) if is_unique_violation(&error) => {
                transaction.rollback().await?;
                Ok(false)
            }
            Err(error) => Err(error.into()),
        }
    }

    /// A batch of vouchers as it was created.
    pub async fn voucher_batch(&self, tenant: TenantId, id: Uuid) -> Result<Option<VoucherBatchRow>, PaymentsError> {
        let Some(row) = voucher_batch::Entity::find_by_id(id)
            .filter(voucher_batch::Column::TenantId.eq(tenant.0))
            .one(&self.db)
            .await?
        else {
            return Ok(None);
        };
        Ok(Some(VoucherBatchRow {
            id: row.id,
            count: u32::try_from(row.count).map_err(|_| corrupt("voucher batch count"))?,
            value: row.value.0,
            unit_code: row.unit_code,
            expires_at: row.expires_at,
            created_at: row.created_at,
        }))
    }

    /// The account's window of unknown codes, if it ever entered one.
    pub async fn voucher_failures(
        &self,
        tenant: TenantId,
        account_id: AccountId,
    ) -> Result<Option<FailureWindow>, PaymentsError> {
        let row = voucher_failure::Entity::find_by_id((tenant.0, account_id.0)).one(&self.db).await?;
        row.as_ref().map(window_from_row).transpose()
    }

    /// Redeems the voucher whose code has `digest` for an account, in one
    /// transaction that holds the account's failure counter locked, so
    /// concurrent tries of one account are counted one after another and
    /// never get past the limit together. An unknown code is counted. The
    /// voucher itself is taken with a conditional update: of two accounts
    /// racing for it exactly one changes the row, with its VOUCHER_REDEEMED
    /// event.
    pub async fn redeem_voucher(
        &self,
        tenant: TenantId,
        account_id: AccountId,
        digest: &str,
        unit_code: Option<&str>,
        now: DateTime<Utc>,
    ) -> Result<Redeemed, PaymentsError> {
        let WriteTransaction { transaction, turn: _turn } = self.database.begin_write().await?;
        voucher_failure::Entity::insert(voucher_failure::ActiveModel {
            tenant_id: Set(tenant.0),
            account_id: Set(account_id.0),
            window_started_at: Set(now),
            failures: Set(0),
        })
        .on_conflict(
            OnConflict::columns([voucher_failure::Column::TenantId, voucher_failure::Column::AccountId])
                .do_nothing()
                .to_owned(),
        )
        .exec_without_returning(&transaction)
        .await?;
        let counter = voucher_failure::Entity::find_by_id((tenant.0, account_id.0))
            .lock_exclusive()
            .one(&transaction)
            .await?
            .ok_or_else(|| PaymentsError::internal("the voucher failure counter vanished"))?;
        let window = window_from_row(&counter)?;
        if window.is_exhausted(now) {
            return refuse(transaction, PaymentsError::VoucherAttemptsExceeded).await;
        }
        let Some(found) = voucher_by_digest(&transaction, tenant, digest).await? else {
            let next = FailureWindow::after_failure(Some(window), now);
            voucher_failure::Entity::update_many()
                .col_expr(voucher_failure::Column::WindowStartedAt, Expr::value(next.started_at))
                .col_expr(
                    voucher_failure::Column::Failures,
                    Expr::value(i32::try_from(next.failures).unwrap_or(i32::MAX)),
                )
                .filter(voucher_failure::Column::TenantId.eq(tenant.0))
                .filter(voucher_failure::Column::AccountId.eq(account_id.0))
                .exec(&transaction)
                .await?;
            transaction.commit().await?;
            return Err(PaymentsError::VoucherNotFound);
        };
        // A voucher in another unit stays unredeemed: it is for another wallet.
        if unit_code.is_some_and(|unit| unit != found.unit_code) {
            return refuse(transaction, crate::domain::Refusal::VoucherUnitMismatch.into()).await;
        }
        match redemption(found.redeemed_by, found.expires_at, account_id, now) {
            Ok(Redemption::AlreadyYours) => {
                transaction.rollback().await?;
                return Ok(Redeemed { voucher: found, fresh: false });
            }
            Ok(Redemption::Redeem) => {}
            Err(refusal) => return refuse(transaction, refusal.into()).await,
        }
        let taken = voucher::Entity::update_many()
            .col_expr(voucher::Column::RedeemedBy, Expr::value(Some(account_id.0)))
            .col_expr(voucher::Column::RedeemedAt, Expr::value(Some(now)))
            .filter(voucher::Column::Id.eq(found.id))
            .filter(voucher::Column::RedeemedAt.is_null())
            .exec(&transaction)
            .await?
            .rows_affected
            == 1;
        if !taken {
            // Another account's redemption committed first; what it did decides.
            let current = voucher_by_digest(&transaction, tenant, digest)
                .await?
                .ok_or_else(|| PaymentsError::internal("a voucher vanished while redeemed"))?;
            transaction.rollback().await?;
            return match redemption(current.redeemed_by, current.expires_at, account_id, now) {
                Ok(_) if current.redeemed_by == Some(account_id) => Ok(Redeemed { voucher: current, fresh: false }),
                Ok(_) => Err(PaymentsError::Conflict("the voucher changed while it was redeemed".into())),
                Err(refusal) => Err(refusal.into()),
            };
        }
        let voucher = VoucherRow { redeemed_by: Some(account_id), redeemed_at: Some(now), ..found };
        let event = NewEvent {
            event_type: EventType::VoucherRedeemed,
            account_id,
            payment_id: None,
            invoice_id: None,
            amount: voucher.value,
            currency: voucher.unit_code.clone(),
            voucher_id: Some(voucher.id),
            refund_id: None,
            occurred_at: now,
        };
        Self::append_event(&transaction, tenant, event).await?;
        transaction.commit().await?;
        self.announce_events();
        Ok(Redeemed { voucher, fresh: true })
    }
}
