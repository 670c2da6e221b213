//! gRPC handlers of the invoicing service, and the work behind them that the
//! worker repeats: billing cycles, credit blocks and statement repayments.

mod alerts;
mod convert;
mod reports;

use chrono::{DateTime, Utc};
use reservoir_common::auth::{TenantId, tenant_of};
use reservoir_common::idempotency::request_hash;
use reservoir_common::ids::AccountId;
use reservoir_common::outbox::follow;
use reservoir_common::paging::Page;
use reservoir_common::validate::Violations;
use reservoir_proto::invoicing as pb;
use reservoir_proto::invoicing::invoicing_service_server::InvoicingService;
use rust_decimal::Decimal;
use tonic::{Request, Response, Status};
use uuid::Uuid;

use self::convert::{invoice_to_pb, kind_from_pb, status_from_pb};
use crate::clients::Upstream;
use crate::domain::{InvoiceKind, InvoiceStatus, Month, PAYMENT_DUE_DAYS_MAX, Pricing, Refusal, due_at, top_up_lines};
use crate::error::InvoicingError;
use crate::store::{Change, InvoiceFilter, InvoiceRow, Store};
use crate::usecases::alerts::Alerts;
use crate::usecases::billing::{Billing, Clock};
use crate::usecases::reports::{Reports, invoices_csv};

const DESCRIPTION_LENGTH_MAX: usize = 512;
/// Payment references: a payment id or a bank's transaction id with room to spare.
const PAYMENT_REFERENCE_LENGTH_MAX: usize = 128;
/// Reports span at most a year, as usage reports do.
const REPORT_RANGE_DAYS_MAX: i64 = 366;
/// A state change retried after losing a race to another; more than a
/// couple of losses in a row would mean a bug, not contention.
const TRANSITION_ATTEMPTS_MAX: usize = 3;

fn refused(status: InvoiceStatus, action: &'static str) -> InvoicingError {
    Refusal::InvalidInvoiceState { status, action }.into()
}

/// Events one read of the outbox takes.
const EVENT_BATCH: u64 = 500;
/// How often an idle event stream looks for new events.
const EVENT_POLL_INTERVAL: std::time::Duration = std::time::Duration::from_millis(100);

#[derive(Clone)]
pub struct InvoicingApi {
    store: Store,
    upstream: Upstream,
    billing: Billing,
    reports: Reports,
    alerts: Alerts,
    /// Turns true when the server stops, ending open event streams.
    stopping: Option<tokio::sync::watch::Receiver<bool>>,
}

impl InvoicingApi {
    pub fn new(store: Store, upstream: Upstream, billing: Billing, reports: Reports, alerts: Alerts) -> Self {
        Self { store, upstream, billing, reports, alerts, stopping: None }
    }

    pub fn now(&self) -> DateTime<Utc> {
        self.billing.now()
    }

    pub fn store(&self) -> Store {
        self.store.clone()
    }

    /// The billing flows this service runs.
    pub fn billing(&self) -> &Billing {
        &self.billing
    }

    /// The scheduled reports this service makes and sends.
    pub fn reports(&self) -> &Reports {
        &self.reports
    }

    /// The billing alerts this service finds and sends.
    pub fn alerts(&self) -> &Alerts {
        &self.alerts
    }

    /// The same service, ending its event streams when `stopping` turns true.
    pub fn with_stopping(&self, stopping: tokio::sync::watch::Receiver<bool>) -> Self {
        Self { stopping: Some(stopping), ..self.clone() }
    }

    /// The same service reading the time from `clock`.
    pub fn with_clock(&self, clock: Clock) -> Self {
        Self {
            billing: self.billing.with_clock(clock.clone()),
            reports: self.reports.with_clock(clock.clone()),
            alerts: self.alerts.with_clock(clock),
            ..self.clone()
        }
    }

    async fn existing(&self, tenant: TenantId, id: &str) -> Result<InvoiceRow, InvoicingError> {
        let mut violations = Violations::default();
        let id = violations.id("invoice_id", id, |id| id);
        violations.finish()?;
        self.store.invoice(tenant, id.unwrap_or_default()).await?.ok_or(InvoicingError::NotFound("invoice"))
    }

    /// Applies a state change from whatever state the invoice is in, again
    /// when a concurrent change got there first.
    async fn change_state(
        &self,
        tenant: TenantId,
        id: &str,
        to: InvoiceStatus,
        action: &'static str,
        change: impl Fn(&InvoiceRow) -> Result<Option<Change>, InvoicingError>,
    ) -> Result<InvoiceRow, InvoicingError> {
        for _ in 0..TRANSITION_ATTEMPTS_MAX {
            let invoice = self.existing(tenant, id).await?;
            if !invoice.status.may_become(to) {
                return Err(refused(invoice.status, action));
            }
            let Some(change) = change(&invoice)? else {
                return Ok(invoice);
            };
            if self.store.transition(tenant, invoice.id, invoice.status, to, change, self.now()).await? {
                return self.store.invoice(tenant, invoice.id).await?.ok_or(InvoicingError::NotFound("invoice"));
            }
        }
        Err(InvoicingError::Conflict("the invoice kept changing".into()))
    }
}

#[tonic::async_trait]
impl InvoicingService for InvoicingApi {
    async fn create_invoice(
        &self,
        request: Request<pb::CreateInvoiceRequest>,
    ) -> Result<Response<pb::CreateInvoiceResponse>, Status> {
        let tenant = tenant_of(&request)?;
        let request = request.into_inner();
        let mut violations = Violations::default();
        let account_id = violations.id("account_id", &request.account_id, AccountId);
        violations.text("description", &request.description, DESCRIPTION_LENGTH_MAX);
        violations.map("metadata", &request.metadata, 32, 64, 512);
        violations.idempotency_key("idempotency_key", &request.idempotency_key);
        if request.credits.is_empty() {
            violations.add("credits", "is required");
        }
        violations.finish()?;
        let hash = request_hash(&request);
        let now = self.now();
        let replay = |invoice: InvoiceRow| -> Result<Response<pb::CreateInvoiceResponse>, Status> {
            if invoice.request_hash != hash {
                return Err(InvoicingError::IdempotencyKeyReused.into());
            }
            Ok(Response::new(pb::CreateInvoiceResponse { invoice: Some(invoice_to_pb(&invoice, now)) }))
        };
        if let Some(invoice) = self.store.invoice_by_key(tenant, &request.idempotency_key).await? {
            return replay(invoice);
        }
        let account = self.upstream.account(tenant, account_id.unwrap_or(AccountId(Uuid::nil()))).await?;
        let pricing =
            Pricing::of(&account.unit).map_err(|error| InvoicingError::internal(format!("account unit: {error}")))?;
        let mut violations = Violations::default();
        let credits = violations.positive_amount("credits", &account.unit, &request.credits);
        violations.finish()?;
        let credits = credits.unwrap_or_default();
        let lines = top_up_lines(credits, &pricing, &request.description)
            .ok_or_else(|| InvoicingError::field("credits", "is beyond the supported range"))?;
        let total = crate::domain::total(&lines)
            .ok_or_else(|| InvoicingError::field("credits", "is beyond the supported range"))?;
        if total.is_zero() {
            return Err(InvoicingError::field("credits", "cost less than the billing currency's smallest unit").into());
        }
        let row = InvoiceRow {
            id: Uuid::now_v7(),
            tenant_id: tenant,
            account_id: account.id,
            kind: InvoiceKind::TopUp,
            status: InvoiceStatus::Draft,
            number: None,
            currency: pricing.currency.code().to_owned(),
            unit_code: pricing.unit_code.clone(),
            total,
            credits,
            uncovered_amount: Decimal::ZERO,
            overdraft_policy: account.overdraft_policy.to_owned(),
            period_start: now,
            period_end: now,
            issued_at: None,
            due_at: None,
            paid_at: None,
            voided_at: None,
            payment_reference: String::new(),
            repayment_pending: false,
            description: request.description.clone(),
            metadata: request.metadata.clone(),
            idempotency_key: request.idempotency_key.clone(),
            request_hash: hash.clone(),
            created_at: now,
            updated_at: now,
            lines,
        };
        match self.store.insert_invoice(&row, None, now).await? {
            Some(invoice) => {
                metrics::counter!("reservoir_invoicing_top_up_invoices_total").increment(1);
                Ok(Response::new(pb::CreateInvoiceResponse { invoice: Some(invoice_to_pb(&invoice, now)) }))
            }
            // The same key was stored concurrently: answer as a replay.
            None => match self.store.invoice_by_key(tenant, &request.idempotency_key).await? {
                Some(invoice) => replay(invoice),
                None => Err(InvoicingError::Conflict("the invoice vanished".into()).into()),
            },
        }
    }

    async fn finalize_invoice(
        &self,
        request: Request<pb::FinalizeInvoiceRequest>,
    ) -> Result<Response<pb::FinalizeInvoiceResponse>, Status> {
        let tenant = tenant_of(&request)?;
        let invoice = self.existing(tenant, &request.get_ref().invoice_id).await?;
        if !invoice.status.may_become(InvoiceStatus::Open) {
            return Err(refused(invoice.status, "finalized").into());
        }
        let due = match invoice.kind {
            // A purchase is paid as it is made: no terms.
            InvoiceKind::TopUp => None,
            InvoiceKind::Statement => {
                Some(due_at(self.now(), self.billing.tenant_settings(tenant).await?.payment_due_days))
            }
        };
        let finalized = self.store.finalize(tenant, invoice.id, due, self.now()).await?;
        if finalized.status != InvoiceStatus::Open {
            return Err(refused(finalized.status, "finalized").into());
        }
        Ok(Response::new(pb::FinalizeInvoiceResponse { invoice: Some(invoice_to_pb(&finalized, self.now())) }))
    }

    async fn void_invoice(
        &self,
        request: Request<pb::VoidInvoiceRequest>,
    ) -> Result<Response<pb::VoidInvoiceResponse>, Status> {
        let tenant = tenant_of(&request)?;
        let invoice = self
            .change_state(tenant, &request.get_ref().invoice_id, InvoiceStatus::Void, "voided", |invoice| {
                Ok((invoice.status != InvoiceStatus::Void).then_some(Change::Void))
            })
            .await?;
        Ok(Response::new(pb::VoidInvoiceResponse { invoice: Some(invoice_to_pb(&invoice, self.now())) }))
    }

    async fn mark_invoice_paid(
        &self,
        request: Request<pb::MarkInvoicePaidRequest>,
    ) -> Result<Response<pb::MarkInvoicePaidResponse>, Status> {
        let tenant = tenant_of(&request)?;
        let request = request.into_inner();
        let mut violations = Violations::default();
        violations.required_text("payment_reference", &request.payment_reference, PAYMENT_REFERENCE_LENGTH_MAX);
        violations.finish()?;
        let reference = request.payment_reference.clone();
        let invoice = self
            .change_state(tenant, &request.invoice_id, InvoiceStatus::Paid, "paid", |invoice| {
                if invoice.status == InvoiceStatus::Paid {
                    return if invoice.payment_reference == reference {
                        Ok(None)
                    } else {
                        Err(Refusal::PaidByAnotherPayment.into())
                    };
                }
                if invoice.status == InvoiceStatus::Draft {
                    return Err(refused(invoice.status, "paid"));
                }
                Ok(Some(Change::Paid {
                    reference: reference.clone(),
                    repayment_pending: invoice.kind == InvoiceKind::Statement && invoice.credits > Decimal::ZERO,
                }))
            })
            .await?;
        metrics::counter!("reservoir_invoicing_invoices_paid_total").increment(1);
        // The wallet's side follows at once; should it be down, the worker
        // finishes it, as it would after a crash here.
        if invoice.repayment_pending {
            if let Err(error) = self.billing.repay(&invoice).await {
                tracing::warn!(%error, invoice = %invoice.id, "repayment of a paid statement left to the worker");
            }
            if let Err(error) = self.billing.reconcile_credit_blocks(self.now()).await {
                tracing::warn!(%error, invoice = %invoice.id, "credit unblock left to the worker");
            }
        }
        let invoice = self.store.invoice(tenant, invoice.id).await?.ok_or(InvoicingError::NotFound("invoice"))?;
        Ok(Response::new(pb::MarkInvoicePaidResponse { invoice: Some(invoice_to_pb(&invoice, self.now())) }))
    }

    async fn mark_invoice_uncollectible(
        &self,
        request: Request<pb::MarkInvoiceUncollectibleRequest>,
    ) -> Result<Response<pb::MarkInvoiceUncollectibleResponse>, Status> {
        let tenant = tenant_of(&request)?;
        let invoice = self
            .change_state(
                tenant,
                &request.get_ref().invoice_id,
                InvoiceStatus::Uncollectible,
                "marked uncollectible",
                |invoice| Ok((invoice.status != InvoiceStatus::Uncollectible).then_some(Change::None)),
            )
            .await?;
        Ok(Response::new(pb::MarkInvoiceUncollectibleResponse { invoice: Some(invoice_to_pb(&invoice, self.now())) }))
    }

    async fn get_invoice(
        &self,
        request: Request<pb::GetInvoiceRequest>,
    ) -> Result<Response<pb::GetInvoiceResponse>, Status> {
        let tenant = tenant_of(&request)?;
        let invoice = self.existing(tenant, &request.get_ref().invoice_id).await?;
        Ok(Response::new(pb::GetInvoiceResponse { invoice: Some(invoice_to_pb(&invoice, self.now())) }))
    }

    async fn list_invoices(
        &self,
        request: Request<pb::ListInvoicesRequest>,
    ) -> Result<Response<pb::ListInvoicesResponse>, Status> {
        let tenant = tenant_of(&request)?;
        let request = request.into_inner();
        let mut violations = Violations::default();
        let account_id = violations.optional_id("account_id", &request.account_id).map(AccountId);
        let status = status_from_pb(request.status).unwrap_or_else(|| {
            violations.add("status", "is not an invoice status");
            None
        });
        let kind = kind_from_pb(request.kind).unwrap_or_else(|| {
            violations.add("kind", "is not an invoice kind");
            None
        });
        let period_from =
            request.period_from.as_ref().and_then(|_| violations.time("period_from", request.period_from.as_ref()));
        let period_to =
            request.period_to.as_ref().and_then(|_| violations.time("period_to", request.period_to.as_ref()));
        let page = Page::<Uuid>::of(
            &mut violations,
            request.page_size,
            &request.page_token,
            &(&request.account_id, request.status, request.kind, request.period_from, request.period_to),
        );
        violations.finish()?;
        let filter = InvoiceFilter { account_id, status, kind, period_from, period_to };
        let invoices = self.store.list(tenant, &filter, page.after, page.rows_to_read()).await?;
        let (invoices, next_page_token) = page.finish(invoices, |invoice| invoice.id);
        let now = self.now();
        Ok(Response::new(pb::ListInvoicesResponse {
            invoices: invoices.iter().map(|invoice| invoice_to_pb(invoice, now)).collect(),
            next_page_token,
        }))
    }

    async fn run_billing_cycle(
        &self,
        request: Request<pb::RunBillingCycleRequest>,
    ) -> Result<Response<pb::RunBillingCycleResponse>, Status> {
        let tenant = tenant_of(&request)?;
        let request = request.into_inner();
        let Some(month) = Month::parse(&request.period) else {
            return Err(InvoicingError::field("period", "must be a month as YYYY-MM").into());
        };
        if month.end() > self.now() {
            return Err(InvoicingError::field("period", "has not ended yet").into());
        }
        let outcome = self.billing.run_cycle(tenant, month).await?;
        Ok(Response::new(pb::RunBillingCycleResponse {
            period: month.to_string(),
            accounts: outcome.accounts,
            statements_created: outcome.statements_created,
            statements_existing: outcome.statements_existing,
            invoices_due: outcome.invoices_due,
            accounts_without_activity: outcome.accounts_without_activity,
        }))
    }

    async fn export_report(
        &self,
        request: Request<pb::ExportReportRequest>,
    ) -> Result<Response<pb::ExportReportResponse>, Status> {
        let tenant = tenant_of(&request)?;
        let request = request.into_inner();
        let mut violations = Violations::default();
        let start = violations.time("start_time", request.start_time.as_ref());
        let end = violations.time("end_time", request.end_time.as_ref());
        if let (Some(start), Some(end)) = (start, end) {
            if end <= start {
                violations.add("end_time", "must be after start_time");
            } else if end - start > chrono::Duration::days(REPORT_RANGE_DAYS_MAX) {
                violations.add("end_time", format!("must be at most {REPORT_RANGE_DAYS_MAX} days after start_time"));
            }
        }
        violations.finish()?;
        let (Some(start), Some(end)) = (start, end) else {
            return Err(InvoicingError::field("start_time", "is required").into());
        };
        let invoices = self.store.invoices_in(tenant, start, end).await?;
        let csv = invoices_csv(&invoices, self.now()).map_err(|error| InvoicingError::internal(error.to_string()))?;
        Ok(Response::new(pb::ExportReportResponse { csv }))
    }

    async fn get_billing_settings(
        &self,
        request: Request<pb::GetBillingSettingsRequest>,
    ) -> Result<Response<pb::GetBillingSettingsResponse>, Status> {
        let tenant = tenant_of(&request)?;
        let settings = self.billing.tenant_settings(tenant).await?;
        Ok(Response::new(pb::GetBillingSettingsResponse {
            settings: Some(pb::BillingSettings {
                payment_due_days: settings.payment_due_days,
                monthly_cycle: settings.monthly_cycle,
            }),
        }))
    }

    type WatchEventsStream =
        std::pin::Pin<Box<dyn futures::Stream<Item = Result<pb::WatchEventsResponse, Status>> + Send>>;

    async fn watch_events(
        &self,
        request: Request<pb::WatchEventsRequest>,
    ) -> Result<Response<Self::WatchEventsStream>, Status> {
        let tenant = tenant_of(&request)?;
        let store = self.store.clone();
        // Before the server runs (in tests that call the handler directly) nothing stops the stream.
        let stopping = self.stopping.clone().unwrap_or_else(|| tokio::sync::watch::channel(false).1);
        let stream = follow(request.into_inner().after_sequence, stopping, EVENT_POLL_INTERVAL, move |after| {
            let store = store.clone();
            async move {
                let events = store.events_after(tenant, after, EVENT_BATCH).await.map_err(Status::from)?;
                Ok(events
                    .iter()
                    .map(|event| (event.sequence, pb::WatchEventsResponse { event: Some(convert::event_to_pb(event)) }))
                    .collect())
            }
        });
        Ok(Response::new(Box::pin(stream)))
    }

    async fn get_report_schedule(
        &self,
        request: Request<pb::GetReportScheduleRequest>,
    ) -> Result<Response<pb::GetReportScheduleResponse>, Status> {
        self.get_report_schedule_impl(request).await
    }

    async fn update_report_schedule(
        &self,
        request: Request<pb::UpdateReportScheduleRequest>,
    ) -> Result<Response<pb::UpdateReportScheduleResponse>, Status> {
        self.update_report_schedule_impl(request).await
    }

    async fn list_report_runs(
        &self,
        request: Request<pb::ListReportRunsRequest>,
    ) -> Result<Response<pb::ListReportRunsResponse>, Status> {
        self.list_report_runs_impl(request).await
    }

    async fn get_billing_alerts(
        &self,
        request: Request<pb::GetBillingAlertsRequest>,
    ) -> Result<Response<pb::GetBillingAlertsResponse>, Status> {
        self.get_billing_alerts_impl(request).await
    }

    async fn update_billing_alerts(
        &self,
        request: Request<pb::UpdateBillingAlertsRequest>,
    ) -> Result<Response<pb::UpdateBillingAlertsResponse>, Status> {
        self.update_billing_alerts_impl(request).await
    }

    async fn list_alert_mails(
        &self,
        request: Request<pb::ListAlertMailsRequest>,
    ) -> Result<Response<pb::ListAlertMailsResponse>, Status> {
        self.list_alert_mails_impl(request).await
    }

    async fn update_billing_settings(
        &self,
        request: Request<pb::UpdateBillingSettingsRequest>,
    ) -> Result<Response<pb::UpdateBillingSettingsResponse>, Status> {
        let tenant = tenant_of(&request)?;
        let Some(wanted) = request.into_inner().settings else {
            return Err(InvoicingError::field("settings", "is required").into());
        };
        if wanted.payment_due_days > PAYMENT_DUE_DAYS_MAX {
            return Err(InvoicingError::field(
                "settings.payment_due_days",
                format!("must be 0 to {PAYMENT_DUE_DAYS_MAX}"),
            )
            .into());
        }
        let mut settings = self.billing.tenant_settings(tenant).await?;
        settings.payment_due_days = wanted.payment_due_days;
        if wanted.monthly_cycle && !settings.monthly_cycle {
            // Automatic cycles start with the month that ends next, not with
            // every month before it.
            settings.last_cycle = Some(Month::of(self.now()).previous());
        }
        settings.monthly_cycle = wanted.monthly_cycle;
        self.store.save_settings(tenant, &settings, self.now()).await?;
        Ok(Response::new(pb::UpdateBillingSettingsResponse {
            settings: Some(pb::BillingSettings {
                payment_due_days: settings.payment_due_days,
                monthly_cycle: settings.monthly_cycle,
            }),
        }))
    }
}
