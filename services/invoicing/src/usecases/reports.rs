//! Scheduled billing reports: each period's report made when the period
//! ends, then emailed with its invoices and usage as CSV, retried with
//! growing waits. Run by every replica's worker; a lease on each run keeps
//! two replicas from sending the same one at once.

use chrono::{DateTime, Duration, Utc};
use reservoir_common::auth::TenantId;

use crate::clients::Upstream;
use crate::clients::mail::{Csv, Mailer};
use crate::domain::{SEND_ATTEMPTS_MAX, currency_scale, format_decimal as decimal, format_money as money, retry_at};
use crate::error::InvoicingError;
use crate::store::{InvoiceRow, ReportRun, RunStatus, Store};
use crate::usecases::billing::Clock;

/// How long a replica holds a run it is making and sending.
const SEND_LEASE_MINUTES: i64 = 15;
/// Accounts whose usage one report lists at most.
const USAGE_ACCOUNTS_MAX: usize = 1_000;

#[derive(Clone)]
pub struct Reports {
    store: Store,
    upstream: Upstream,
    mailer: Mailer,
    clock: Clock,
}

impl Reports {
    pub fn new(store: Store, upstream: Upstream, mailer: Mailer, clock: Clock) -> Self {
        Self { store, upstream, mailer, clock }
    }

    fn now(&self) -> DateTime<Utc> {
        (self.clock)()
    }

    /// The same reports reading the time from `clock`.
    pub fn with_clock(&self, clock: Clock) -> Self {
        Self { clock, ..self.clone() }
    }

    /// Makes the report of every period that has ended, then sends every
    /// report due. A report is sent at least once: a replica that stops
    /// after the mail server took it but before it was marked sent leaves it
    /// to be sent again.
    pub async fn send_due_reports(&self, now: DateTime<Utc>) -> Result<(), InvoicingError> {
        for schedule in self.store.due_report_schedules(now).await? {
            // One period a pass: after a long stop, every period missed is
            // made in turn.
            let end = schedule.next_run_at;
            let next = schedule.frequency.next_start(end);
            if self.store.start_report_run(&schedule, end, next, now).await? {
                tracing::info!(tenant = %schedule.tenant_id, frequency = schedule.frequency.name(), %end, "report made");
            }
        }
        for run in self.store.pending_report_runs(now).await? {
            // Held long enough to build and send it; released with the outcome.
            if !self.store.claim_report_run(&run, now + Duration::minutes(SEND_LEASE_MINUTES)).await? {
                continue;
            }
            let attempt = run.attempts + 1;
            let finished = match self.send_report(&run).await {
                Ok(()) => self.store.finish_report_run(&run, RunStatus::Sent, "", self.now()).await?,
                Err(error) => {
                    tracing::warn!(%error, run = %run.id, "a scheduled report was not sent");
                    let status = if attempt >= SEND_ATTEMPTS_MAX { RunStatus::Failed } else { RunStatus::Pending };
                    self.store.finish_report_run(&run, status, &error, retry_at(attempt, self.now())).await?
                }
            };
            if !finished {
                tracing::warn!(run = %run.id, "a report outlived its lease; another replica sends it");
            }
        }
        Ok(())
    }

    async fn send_report(&self, run: &ReportRun) -> Result<(), String> {
        let invoices =
            self.store.invoices_in(run.tenant_id, run.period_start, run.period_end).await.map_err(|e| e.to_string())?;
        let invoices_csv = invoices_csv(&invoices, self.now()).map_err(|error| error.to_string())?;
        let usage = self.usage_csv(run.tenant_id, run.period_start, run.period_end).await.map_err(|e| e.to_string())?;
        let subject = format!(
            "Billing report, {} to {}",
            run.period_start.format("%Y-%m-%d"),
            (run.period_end - Duration::days(1)).format("%Y-%m-%d")
        );
        let body = format!(
            "Your {} billing report for {} to {} (UTC) is attached:\n\
             invoices.csv lists the {} invoices of the period, line by line;\n\
             usage.csv lists each account's usage by meter.\n",
            run.frequency.name().to_lowercase(),
            run.period_start.format("%Y-%m-%d"),
            (run.period_end - Duration::days(1)).format("%Y-%m-%d"),
            invoices.len(),
        );
        let files = vec![
            Csv { name: "invoices.csv".into(), text: invoices_csv },
            Csv { name: "usage.csv".into(), text: usage },
        ];
        self.mailer.send(&run.recipients, &subject, &body, files).await
    }

    async fn usage_csv(
        &self,
        tenant: TenantId,
        start: DateTime<Utc>,
        end: DateTime<Utc>,
    ) -> Result<String, InvoicingError> {
        let mut writer = reservoir_common::spreadsheet::SafeWriter::new();
        let csv_error = |error: csv::Error| InvoicingError::internal(format!("writing CSV: {error}"));
        writer
            .write_record([
                "account_id",
                "unit",
                "meter_code",
                "dimension_key",
                "dimension_value",
                "charged_quantity",
                "charged_credits",
                "uncovered_credits",
            ])
            .map_err(csv_error)?;
        let priced = self.upstream.priced_dimensions(tenant).await?;
        for account in self.upstream.accounts(tenant).await?.into_iter().take(USAGE_ACCOUNTS_MAX) {
            for line in self.upstream.usage(tenant, account.id, start, end, &priced).await? {
                writer
                    .write_record([
                        account.id.to_string(),
                        account.unit.code().to_owned(),
                        line.meter_code,
                        line.dimension_key,
                        line.dimension_value,
                        line.charged_quantity.to_string(),
                        line.charged_credits.to_string(),
                        line.uncovered_credits.to_string(),
                    ])
                    .map_err(csv_error)?;
            }
        }
        let bytes = writer.into_inner().map_err(|error| InvoicingError::internal(error.to_string()))?;
        String::from_utf8(bytes).map_err(|error| InvoicingError::internal(error.to_string()))
    }
}

/// The invoices of a period as CSV (ExportReport, and a scheduled report's
/// invoices.csv): a header, then one row per invoice line.
pub fn invoices_csv(invoices: &[InvoiceRow], now: DateTime<Utc>) -> Result<String, csv::Error> {
    let mut writer = reservoir_common::spreadsheet::SafeWriter::new();
    writer.write_record([
        "invoice_number",
        "invoice_id",
        "account_id",
        "kind",
        "status",
        "currency",
        "period_start",
        "period_end",
        "issued_at",
        "due_at",
        "overdue",
        "line_number",
        "line_kind",
        "description",
        "meter_code",
        "dimension_key",
        "dimension_value",
        "quantity",
        "unit_price",
        "line_amount",
        "invoice_total",
        "amount_due",
        "payment_reference",
    ])?;
    let time = |instant: Option<DateTime<Utc>>| instant.map(|at| at.to_rfc3339()).unwrap_or_default();
    for invoice in invoices {
        let scale = currency_scale(&invoice.currency);
        for (index, line) in invoice.lines.iter().enumerate() {
            writer.write_record([
                invoice.number.map(|number| number.to_string()).unwrap_or_default(),
                invoice.id.to_string(),
                invoice.account_id.to_string(),
                invoice.kind.name().to_owned(),
                invoice.status.name().to_owned(),
                invoice.currency.clone(),
                invoice.period_start.to_rfc3339(),
                invoice.period_end.to_rfc3339(),
                time(invoice.issued_at),
                time(invoice.due_at),
                invoice.status.is_overdue(invoice.due_at, now).to_string(),
                (index + 1).to_string(),
                line.kind.name().to_owned(),
                line.description.clone(),
                line.meter_code.clone(),
                line.dimension_key.clone(),
                line.dimension_value.clone(),
                decimal(line.quantity),
                line.unit_price.map(decimal).unwrap_or_default(),
                money(line.amount, scale),
                money(invoice.total, scale),
                money(invoice.status.amount_due(invoice.total), scale),
                invoice.payment_reference.clone(),
            ])?;
        }
    }
    let bytes = writer.into_inner()?;
    Ok(String::from_utf8_lossy(&bytes).into_owned())
}
