//! Invoices and their lines: written together, numbered in the transaction
//! that issues them, and moved from state to state by conditional updates.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use reservoir_common::auth::TenantId;
use reservoir_common::db::{Amount, WriteTransaction, is_unique_violation};
use reservoir_common::ids::AccountId;
use rust_decimal::Decimal;
use sea_orm::sea_query::Expr;
use sea_orm::{
    ActiveValue::Set, ColumnTrait, ConnectionTrait, DbBackend, EntityTrait, QueryFilter, QueryOrder, QuerySelect,
    Statement,
};
use uuid::Uuid;

use super::entities::{invoice, line};
use super::{Store, corrupt};
use crate::domain::{InvoiceKind, InvoiceStatus, Line, LineKind};
use crate::error::InvoicingError;

/// An invoice as stored, with its lines.
#[derive(Debug, Clone, PartialEq)]
pub struct InvoiceRow {
    pub id: Uuid,
    pub tenant_id: TenantId,
    pub account_id: AccountId,
    pub kind: InvoiceKind,
    pub status: InvoiceStatus,
    pub number: Option<u64>,
    pub currency: String,
    pub unit_code: String,
    pub total: Decimal,
    /// Credits bought, or the debt a statement bills, in the wallet unit.
    pub credits: Decimal,
    pub uncovered_amount: Decimal,
    /// The account's overdraft policy when the invoice was made.
    pub overdraft_policy: String,
    pub period_start: DateTime<Utc>,
    pub period_end: DateTime<Utc>,
    pub issued_at: Option<DateTime<Utc>>,
    pub due_at: Option<DateTime<Utc>>,
    pub paid_at: Option<DateTime<Utc>>,
    pub voided_at: Option<DateTime<Utc>>,
    pub payment_reference: String,
    /// A paid statement whose credits the wallet has not received yet.
    pub repayment_pending: bool,
    pub description: String,
    pub metadata: BTreeMap<String, String>,
    pub idempotency_key: String,
    pub request_hash: String,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub lines: Vec<Line>,
}

/// How an invoice leaves DRAFT as it is created: numbered, then OPEN with a
/// due date, or PAID at once when nothing is due.
#[derive(Debug, Clone, Copy)]
pub struct Issue {
    pub due_at: Option<DateTime<Utc>>,
    pub settled: bool,
}

/// Filters of a listing.
#[derive(Debug, Clone, Default)]
pub struct InvoiceFilter {
    pub account_id: Option<AccountId>,
    pub status: Option<InvoiceStatus>,
    pub kind: Option<InvoiceKind>,
    pub period_from: Option<DateTime<Utc>>,
    pub period_to: Option<DateTime<Utc>>,
}

/// What a transition sets besides the status.
#[derive(Debug, Clone)]
pub enum Change {
    None,
    Void,
    Paid { reference: String, repayment_pending: bool },
}

fn line_from_row(row: line::Model) -> Result<Line, InvoicingError> {
    Ok(Line {
        kind: LineKind::from_name(&row.kind).ok_or_else(|| corrupt("line kind"))?,
        description: row.description,
        meter_code: row.meter_code,
        dimension_key: row.dimension_key,
        dimension_value: row.dimension_value,
        quantity: row.quantity.0,
        unit_price: row.unit_price.map(|price| price.0),
        amount: row.amount.0,
    })
}

fn invoice_from_row(row: invoice::Model, lines: Vec<Line>) -> Result<InvoiceRow, InvoicingError> {
    Ok(InvoiceRow {
        id: row.id,
        tenant_id: TenantId(row.tenant_id),
        account_id: AccountId(row.account_id),
        kind: InvoiceKind::from_name(&row.kind).ok_or_else(|| corrupt("invoice kind"))?,
        status: InvoiceStatus::from_name(&row.status).ok_or_else(|| corrupt("invoice status"))?,
        number: row.invoice_number.map(|number| u64::try_from(number).unwrap_or(0)),
        currency: row.currency,
        unit_code: row.unit_code,
        total: row.total.0,
        credits: row.credits.0,
        uncovered_amount: row.uncovered_amount.0,
        overdraft_policy: row.overdraft_policy,
        period_start: row.period_start,
        period_end: row.period_end,
        issued_at: row.issued_at,
        due_at: row.due_at,
        paid_at: row.paid_at,
        voided_at: row.voided_at,
        payment_reference: row.payment_reference,
        repayment_pending: row.repayment_pending,
        description: row.description,
        metadata: serde_json::from_str(&row.metadata).map_err(|_| corrupt("metadata"))?,
        idempotency_key: row.idempotency_key,
        request_hash: row.request_hash,
        created_at: row.created_at,
        updated_at: row.updated_at,
        lines,
    })
}

impl Store {
    async fn lines_of(
        connection: &impl ConnectionTrait,
        ids: &[Uuid],
    ) -> Result<BTreeMap<Uuid, Vec<Line>>, InvoicingError> {
        let mut lines: BTreeMap<Uuid, Vec<Line>> = BTreeMap::new();
        for chunk in ids.chunks(500) {
            let rows = line::Entity::find()
                .filter(line::Column::InvoiceId.is_in(chunk.to_vec()))
                .order_by_asc(line::Column::InvoiceId)
                .order_by_asc(line::Column::LineNumber)
                .all(connection)
                .await?;
            for row in rows {
                let invoice_id = row.invoice_id;
                lines.entry(invoice_id).or_default().push(line_from_row(row)?);
            }
        }
        Ok(lines)
    }

    async fn with_lines(
        connection: &impl ConnectionTrait,
        rows: Vec<invoice::Model>,
    ) -> Result<Vec<InvoiceRow>, InvoicingError> {
        let ids: Vec<Uuid> = rows.iter().map(|row| row.id).collect();
        let mut lines = Self::lines_of(connection, &ids).await?;
        rows.into_iter()
            .map(|row| {
                let own = lines.remove(&row.id).unwrap_or_default();
                invoice_from_row(row, own)
            })
            .collect()
    }

    async fn find(
        connection: &impl ConnectionTrait,
        tenant: TenantId,
        id: Uuid,
    ) -> Result<Option<InvoiceRow>, InvoicingError> {
        let row =
            invoice::Entity::find_by_id(id).filter(invoice::Column::TenantId.eq(tenant.0)).one(connection).await?;
        match row {
            Some(row) => Ok(Self::with_lines(connection, vec![row]).await?.pop()),
            None => Ok(None),
        }
    }

    pub async fn invoice(&self, tenant: TenantId, id: Uuid) -> Result<Option<InvoiceRow>, InvoicingError> {
        Self::find(&self.db, tenant, id).await
    }

    pub async fn invoice_by_key(&self, tenant: TenantId, key: &str) -> Result<Option<InvoiceRow>, InvoicingError> {
        let row = invoice::Entity::find()
            .filter(invoice::Column::TenantId.eq(tenant.0))
            .filter(invoice::Column::IdempotencyKey.eq(key))
            .one(&self.db)
            .await?;
        match row {
            Some(row) => Ok(Self::with_lines(&self.db, vec![row]).await?.pop()),
            None => Ok(None),
        }
    }

    /// Takes the tenant's next invoice number in `connection`'s transaction.
    async fn next_number(connection: &impl ConnectionTrait, tenant: TenantId) -> Result<i64, InvoicingError> {
        let backend = connection.get_database_backend();
        let sql = if backend == DbBackend::Postgres {
            "INSERT INTO invoice_numbers (tenant_id, last_number) VALUES ($1, 1) \
             ON CONFLICT (tenant_id) DO UPDATE SET last_number = invoice_numbers.last_number + 1 \
             RETURNING last_number"
        } else {
            "INSERT INTO invoice_numbers (tenant_id, last_number) VALUES (?, 1) \
             ON CONFLICT (tenant_id) DO UPDATE SET last_number = invoice_numbers.last_number + 1 \
             RETURNING last_number"
        };
        let row = connection
            .query_one_raw(Statement::from_sql_and_values(backend, sql, [tenant.0.into()]))
            .await?
            .ok_or_else(|| InvoicingError::internal("taking an invoice number returned nothing"))?;
        Ok(row.try_get::<i64>("", "last_number")?)
    }

    /// Stores a new invoice and its lines in one transaction, numbered and
    /// issued at once when `issue` says so. A key stored before (also by a
    /// concurrent call) answers `Ok(None)`: the caller reads what is stored.
    pub async fn insert_invoice(
        &self,
        new: &InvoiceRow,
        issue: Option<Issue>,
        now: DateTime<Utc>,
    ) -> Result<Option<InvoiceRow>, InvoicingError> {
        let WriteTransaction { transaction, turn: _turn } = self.database.begin_write().await?;
        let mut row = new.clone();
        if let Some(issue) = issue {
            let number = Self::next_number(&transaction, new.tenant_id).await?;
            row.number = Some(u64::try_from(number).unwrap_or(0));
            row.issued_at = Some(now);
            row.due_at = issue.due_at;
            if issue.settled {
                row.status = InvoiceStatus::Paid;
                row.paid_at = Some(now);
            } else {
                row.status = InvoiceStatus::Open;
            }
        }
        let inserted = invoice::Entity::insert(invoice::ActiveModel {
            id: Set(row.id),
            tenant_id: Set(row.tenant_id.0),
            account_id: Set(row.account_id.0),
            kind: Set(row.kind.name().to_owned()),
            status: Set(row.status.name().to_owned()),
            invoice_number: Set(row.number.map(|number| i64::try_from(number).unwrap_or(i64::MAX))),
            currency: Set(row.currency.clone()),
            unit_code: Set(row.unit_code.clone()),
            total: Set(Amount(row.total)),
            credits: Set(Amount(row.credits)),
            uncovered_amount: Set(Amount(row.uncovered_amount)),
            overdraft_policy: Set(row.overdraft_policy.clone()),
            period_start: Set(row.period_start),
            period_end: Set(row.period_end),
            issued_at: Set(row.issued_at),
            due_at: Set(row.due_at),
            paid_at: Set(row.paid_at),
            voided_at: Set(row.voided_at),
            payment_reference: Set(row.payment_reference.clone()),
            repayment_pending: Set(row.repayment_pending),
            description: Set(row.description.clone()),
            metadata: Set(serde_json::to_string(&row.metadata).unwrap_or_else(|_| "{}".into())),
            idempotency_key: Set(row.idempotency_key.clone()),
            request_hash: Set(row.request_hash.clone()),
            created_at: Set(row.created_at),
            updated_at: Set(row.updated_at),
        })
        .exec_without_returning(&transaction)
        .await;
        match inserted {
            Ok(_) => {}
            Err(error) if is_unique_violation(&error) => return Ok(None),
            Err(error) => return Err(error.into()),
        }
        if !row.lines.is_empty() {
            let lines: Vec<line::ActiveModel> = row
                .lines
                .iter()
                .enumerate()
                .map(|(index, line)| line::ActiveModel {
                    invoice_id: Set(row.id),
                    line_number: Set(i32::try_from(index + 1).unwrap_or(i32::MAX)),
                    kind: Set(line.kind.name().to_owned()),
                    description: Set(line.description.clone()),
                    meter_code: Set(line.meter_code.clone()),
                    dimension_key: Set(line.dimension_key.clone()),
                    dimension_value: Set(line.dimension_value.clone()),
                    quantity: Set(Amount(line.quantity)),
                    unit_price: Set(line.unit_price.map(Amount)),
                    amount: Set(Amount(line.amount)),
                })
                .collect();
            for chunk in lines.chunks(reservoir_common::db::rows_per_insert(300)) {
                line::Entity::insert_many(chunk.to_vec()).exec_without_returning(&transaction).await?;
            }
        }
        // A statement settled at once is issued and paid in one go: both are told.
        if row.status == InvoiceStatus::Paid {
            Self::emit(&transaction, &row, InvoiceStatus::Open, now).await?;
        }
        Self::emit(&transaction, &row, row.status, now).await?;
        transaction.commit().await?;
        Ok(Some(row))
    }

    /// DRAFT -> OPEN with the tenant's next number, in one transaction.
    /// Answers the invoice as it is when it is not a DRAFT (any more).
    pub async fn finalize(
        &self,
        tenant: TenantId,
        id: Uuid,
        due_at: Option<DateTime<Utc>>,
        now: DateTime<Utc>,
    ) -> Result<InvoiceRow, InvoicingError> {
        let WriteTransaction { transaction, turn: _turn } = self.database.begin_write().await?;
        let current = Self::find(&transaction, tenant, id).await?.ok_or(InvoicingError::NotFound("invoice"))?;
        if current.status != InvoiceStatus::Draft {
            return Ok(current);
        }
        let number = Self::next_number(&transaction, tenant).await?;
        let updated = invoice::Entity::update_many()
            .col_expr(invoice::Column::Status, Expr::value(InvoiceStatus::Open.name()))
            .col_expr(invoice::Column::InvoiceNumber, Expr::value(number))
            .col_expr(invoice::Column::IssuedAt, Expr::value(now))
            .col_expr(invoice::Column::DueAt, Expr::value(due_at))
            .col_expr(invoice::Column::UpdatedAt, Expr::value(now))
            .filter(invoice::Column::Id.eq(id))
            .filter(invoice::Column::Status.eq(InvoiceStatus::Draft.name()))
            .exec(&transaction)
            .await?;
        if updated.rows_affected != 1 {
            // Another finalization (or a void) won the race; dropping the
            // transaction gives the number back.
            drop(transaction);
            return Self::find(&self.db, tenant, id).await?.ok_or(InvoicingError::NotFound("invoice"));
        }
        let finalized = Self::find(&transaction, tenant, id).await?.ok_or(InvoicingError::NotFound("invoice"))?;
        Self::emit(&transaction, &finalized, InvoiceStatus::Open, now).await?;
        transaction.commit().await?;
        Ok(finalized)
    }

    /// Moves an invoice from `from` to `to`, setting the given columns, only
    /// if it is still in `from`. Answers whether it moved.
    pub async fn transition(
        &self,
        tenant: TenantId,
        id: Uuid,
        from: InvoiceStatus,
        to: InvoiceStatus,
        change: Change,
        now: DateTime<Utc>,
    ) -> Result<bool, InvoicingError> {
        let mut update = invoice::Entity::update_many()
            .col_expr(invoice::Column::Status, Expr::value(to.name()))
            .col_expr(invoice::Column::UpdatedAt, Expr::value(now));
        match change {
            Change::None => {}
            Change::Void => update = update.col_expr(invoice::Column::VoidedAt, Expr::value(now)),
            Change::Paid { reference, repayment_pending } => {
                update = update
                    .col_expr(invoice::Column::PaidAt, Expr::value(now))
                    .col_expr(invoice::Column::PaymentReference, Expr::value(reference))
                    .col_expr(invoice::Column::RepaymentPending, Expr::value(repayment_pending));
            }
        }
        let WriteTransaction { transaction, turn: _turn } = self.database.begin_write().await?;
        let result = update
            .filter(invoice::Column::Id.eq(id))
            .filter(invoice::Column::TenantId.eq(tenant.0))
            .filter(invoice::Column::Status.eq(from.name()))
            .exec(&transaction)
            .await?;
        if result.rows_affected != 1 {
            return Ok(false);
        }
        let moved = Self::find(&transaction, tenant, id).await?.ok_or(InvoicingError::NotFound("invoice"))?;
        Self::emit(&transaction, &moved, to, now).await?;
        transaction.commit().await?;
        Ok(true)
    }

    /// One page of invoices, newest first, before the invoice `before`.
    pub async fn list(
        &self,
        tenant: TenantId,
        filter: &InvoiceFilter,
        before: Option<Uuid>,
        limit: u64,
    ) -> Result<Vec<InvoiceRow>, InvoicingError> {
        let mut query = invoice::Entity::find().filter(invoice::Column::TenantId.eq(tenant.0));
        if let Some(account_id) = filter.account_id {
            query = query.filter(invoice::Column::AccountId.eq(account_id.0));
        }
        if let Some(status) = filter.status {
            query = query.filter(invoice::Column::Status.eq(status.name()));
        }
        if let Some(kind) = filter.kind {
            query = query.filter(invoice::Column::Kind.eq(kind.name()));
        }
        if let Some(from) = filter.period_from {
            query = query.filter(invoice::Column::PeriodStart.gte(from));
        }
        if let Some(to) = filter.period_to {
            query = query.filter(invoice::Column::PeriodStart.lt(to));
        }
        if let Some(before) = before {
            query = query.filter(invoice::Column::Id.lt(before));
        }
        let rows = query.order_by_desc(invoice::Column::Id).limit(limit).all(&self.db).await?;
        Self::with_lines(&self.db, rows).await
    }

    /// Every invoice whose period starts in [start, end), by number (drafts last).
    pub async fn invoices_in(
        &self,
        tenant: TenantId,
        start: DateTime<Utc>,
        end: DateTime<Utc>,
    ) -> Result<Vec<InvoiceRow>, InvoicingError> {
        let rows = invoice::Entity::find()
            .filter(invoice::Column::TenantId.eq(tenant.0))
            .filter(invoice::Column::PeriodStart.gte(start))
            .filter(invoice::Column::PeriodStart.lt(end))
            .order_by_asc(invoice::Column::PeriodStart)
            .order_by_asc(invoice::Column::Id)
            .all(&self.db)
            .await?;
        let mut invoices = Self::with_lines(&self.db, rows).await?;
        invoices.sort_by_key(|invoice| (invoice.number.is_none(), invoice.number, invoice.created_at));
        Ok(invoices)
    }

    /// Paid statements whose credits have not reached the wallet yet.
    pub async fn pending_repayments(&self, limit: u64) -> Result<Vec<InvoiceRow>, InvoicingError> {
        let rows = invoice::Entity::find()
            .filter(invoice::Column::RepaymentPending.eq(true))
            .order_by_asc(invoice::Column::UpdatedAt)
            .limit(limit)
            .all(&self.db)
            .await?;
        Self::with_lines(&self.db, rows).await
    }

    /// Puts a repayment the wallet refused behind the others.
    pub async fn postpone_repayment(&self, id: Uuid, now: DateTime<Utc>) -> Result<(), InvoicingError> {
        invoice::Entity::update_many()
            .col_expr(invoice::Column::UpdatedAt, Expr::value(now))
            .filter(invoice::Column::Id.eq(id))
            .exec(&self.db)
            .await?;
        Ok(())
    }

    pub async fn repayment_done(&self, id: Uuid) -> Result<(), InvoicingError> {
        invoice::Entity::update_many()
            .col_expr(invoice::Column::RepaymentPending, Expr::value(false))
            .filter(invoice::Column::Id.eq(id))
            .exec(&self.db)
            .await?;
        Ok(())
    }
}
