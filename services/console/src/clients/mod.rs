//! The services, called with the signed-in person's key: the console has no
//! rights of its own, so each service decides on every call as it would for
//! any client holding that key.

use std::time::Duration;

use chrono::{DateTime, Utc};
use reservoir_common::channel::ServiceChannel;
use reservoir_common::time::to_timestamp;
use reservoir_proto::invoicing::{self as invoicing, invoicing_service_client::InvoicingServiceClient};
use reservoir_proto::metering::{self as metering, metering_service_client::MeteringServiceClient};
use reservoir_proto::orchestrator::webhook_service_client::WebhookServiceClient;
use reservoir_proto::orchestrator::{self as orchestrator, top_up_service_client::TopUpServiceClient};
use reservoir_proto::wallet::{self as wallet, wallet_service_client::WalletServiceClient};
use tonic::Request;

use crate::error::ConsoleError;

/// How long one call to a service may take: a page waits for its slowest.
const CALL_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Clone)]
pub struct Upstream {
    wallet: ServiceChannel,
    metering: ServiceChannel,
    invoicing: ServiceChannel,
    orchestrator: ServiceChannel,
}

/// The services' addresses.
pub struct Endpoints<'a> {
    pub wallet: &'a str,
    pub metering: &'a str,
    pub invoicing: &'a str,
    pub orchestrator: &'a str,
}

fn channel(endpoint: &str, name: &str) -> Result<ServiceChannel, String> {
    reservoir_common::tls::lazy_channel(endpoint, name, CALL_TIMEOUT)
}

/// A request that presents `key`.
fn keyed<T>(message: T, key: &str) -> Result<Request<T>, ConsoleError> {
    let mut request = Request::new(message);
    let value = format!("Bearer {key}").parse().map_err(|_| ConsoleError::SignedOut)?;
    request.metadata_mut().insert("authorization", value);
    Ok(request)
}

/// A call's answer, or the console's error naming the service that refused it.
async fn answer<T>(
    service: &'static str,
    call: impl std::future::Future<Output = Result<tonic::Response<T>, tonic::Status>>,
) -> Result<T, ConsoleError> {
    call.await.map(tonic::Response::into_inner).map_err(|status| ConsoleError::from_status(service, &status))
}

/// The text of a stream of CSV chunks, each chunk's text taken by `text`.
async fn collected<T>(
    service: &'static str,
    call: impl std::future::Future<Output = Result<tonic::Response<tonic::Streaming<T>>, tonic::Status>>,
    text: impl Fn(T) -> String,
) -> Result<String, ConsoleError> {
    let mut stream = answer(service, call).await?;
    let mut csv = String::new();
    while let Some(chunk) = stream.message().await.map_err(|status| ConsoleError::from_status(service, &status))? {
        csv.push_str(&text(chunk));
    }
    Ok(csv)
}

/// What GetCaller says of a key.
pub struct Caller {
    pub kind: wallet::CallerKind,
    pub tenant_id: String,
    pub role: wallet::KeyRole,
}

/// A page of accounts and the token of the next.
pub struct AccountPage {
    pub accounts: Vec<wallet::Account>,
    pub next_page_token: String,
}

impl Upstream {
    /// Connects lazily: the console starts while the services are down.
    pub fn new(endpoints: &Endpoints<'_>) -> Result<Self, String> {
        Ok(Self {
            wallet: channel(endpoints.wallet, "wallet")?,
            metering: channel(endpoints.metering, "metering")?,
            invoicing: channel(endpoints.invoicing, "invoicing")?,
            orchestrator: channel(endpoints.orchestrator, "orchestrator")?,
        })
    }

    fn invoicing(&self) -> InvoicingServiceClient<ServiceChannel> {
        InvoicingServiceClient::new(self.invoicing.clone())
    }

    fn orchestrator(&self) -> TopUpServiceClient<ServiceChannel> {
        TopUpServiceClient::new(self.orchestrator.clone())
    }

    fn webhooks(&self) -> WebhookServiceClient<ServiceChannel> {
        WebhookServiceClient::new(self.orchestrator.clone())
    }

    fn wallet(&self) -> WalletServiceClient<ServiceChannel> {
        WalletServiceClient::new(self.wallet.clone())
    }

    fn metering(&self) -> MeteringServiceClient<ServiceChannel> {
        MeteringServiceClient::new(self.metering.clone())
    }

    pub async fn caller(&self, key: &str) -> Result<Caller, ConsoleError> {
        let answer = answer("wallet", self.wallet().get_caller(keyed(wallet::GetCallerRequest {}, key)?)).await?;
        Ok(Caller { kind: answer.kind(), tenant_id: answer.tenant_id.clone(), role: answer.role() })
    }

    pub async fn accounts(&self, key: &str, external_id: &str, page_token: &str) -> Result<AccountPage, ConsoleError> {
        let request = wallet::ListAccountsRequest {
            page_size: 50,
            page_token: page_token.to_owned(),
            external_id: external_id.to_owned(),
        };
        let answer = answer("wallet", self.wallet().list_accounts(keyed(request, key)?)).await?;
        Ok(AccountPage { accounts: answer.accounts, next_page_token: answer.next_page_token })
    }

    pub async fn account(&self, key: &str, account_id: &str) -> Result<wallet::Account, ConsoleError> {
        let request = wallet::GetAccountRequest { account_id: account_id.to_owned() };
        answer("wallet", self.wallet().get_account(keyed(request, key)?))
            .await?
            .account
            .ok_or_else(|| ConsoleError::Unavailable { service: "wallet", message: "no account in its answer".into() })
    }

    pub async fn balance(&self, key: &str, account_id: &str) -> Result<wallet::Balance, ConsoleError> {
        let request = wallet::GetBalanceRequest { account_id: account_id.to_owned() };
        Ok(answer("wallet", self.wallet().get_balance(keyed(request, key)?)).await?.balance.unwrap_or_default())
    }

    pub async fn spend(&self, key: &str, account_id: &str) -> Result<wallet::Spend, ConsoleError> {
        let request = wallet::GetSpendRequest { account_id: account_id.to_owned() };
        Ok(answer("wallet", self.wallet().get_spend(keyed(request, key)?)).await?.spend.unwrap_or_default())
    }

    pub async fn grants(&self, key: &str, account_id: &str) -> Result<Vec<wallet::Grant>, ConsoleError> {
        let request = wallet::ListGrantsRequest { account_id: account_id.to_owned(), include_inactive: true };
        Ok(answer("wallet", self.wallet().list_grants(keyed(request, key)?)).await?.grants)
    }

    /// The latest entries of an account, newest first, of the given kinds (all when empty).
    pub async fn entries(
        &self,
        key: &str,
        account_id: &str,
        kinds: Vec<i32>,
        page_token: &str,
    ) -> Result<(Vec<wallet::LedgerEntry>, String), ConsoleError> {
        let request = wallet::ListLedgerEntriesRequest {
            account_id: account_id.to_owned(),
            page_size: 50,
            page_token: page_token.to_owned(),
            kinds,
            ..Default::default()
        };
        let answer = answer("wallet", self.wallet().list_ledger_entries(keyed(request, key)?)).await?;
        Ok((answer.entries, answer.next_page_token))
    }

    pub async fn grant(&self, key: &str, request: wallet::GrantCreditsRequest) -> Result<(), ConsoleError> {
        answer("wallet", self.wallet().grant_credits(keyed(request, key)?)).await?;
        Ok(())
    }

    pub async fn adjust(&self, key: &str, request: wallet::AdjustRequest) -> Result<(), ConsoleError> {
        answer("wallet", self.wallet().adjust(keyed(request, key)?)).await?;
        Ok(())
    }

    pub async fn void_grant(&self, key: &str, request: wallet::VoidGrantRequest) -> Result<(), ConsoleError> {
        answer("wallet", self.wallet().void_grant(keyed(request, key)?)).await?;
        Ok(())
    }

    /// The statement of `[start, end)` as CSV.
    pub async fn statement(
        &self,
        key: &str,
        account_id: &str,
        start: DateTime<Utc>,
        end: DateTime<Utc>,
    ) -> Result<String, ConsoleError> {
        let request = wallet::ExportStatementRequest {
            account_id: account_id.to_owned(),
            start_time: Some(to_timestamp(start)),
            end_time: Some(to_timestamp(end)),
        };
        collected("wallet", self.wallet().export_statement(keyed(request, key)?), |chunk| chunk.csv).await
    }

    /// Usage of an account by day over `[start, end)`, by meter.
    pub async fn usage_by_day(
        &self,
        key: &str,
        account_id: &str,
        start: DateTime<Utc>,
        end: DateTime<Utc>,
    ) -> Result<Vec<metering::UsageGroup>, ConsoleError> {
        self.usage(key, usage_query(account_id, start, end, "")).await
    }

    /// Usage as GetUsage groups it.
    pub async fn usage(
        &self,
        key: &str,
        request: metering::GetUsageRequest,
    ) -> Result<Vec<metering::UsageGroup>, ConsoleError> {
        Ok(answer("metering", self.metering().get_usage(keyed(request, key)?)).await?.groups)
    }

    /// Changes an account's settings (its cap, its warning level).
    pub async fn update_account(&self, key: &str, request: wallet::UpdateAccountRequest) -> Result<(), ConsoleError> {
        answer("wallet", self.wallet().update_account(keyed(request, key)?)).await?;
        Ok(())
    }

    /// Every refill of an account as CSV: type, date, amount, balance after, …
    pub async fn refill_history(
        &self,
        key: &str,
        account_id: &str,
        since: DateTime<Utc>,
    ) -> Result<String, ConsoleError> {
        let request = wallet::ExportRefillHistoryRequest {
            account_id: account_id.to_owned(),
            start_time: Some(to_timestamp(since)),
            end_time: None,
        };
        collected("wallet", self.wallet().export_refill_history(keyed(request, key)?), |chunk| chunk.csv).await
    }

    /// The account's automatic top-up, if it has one.
    pub async fn auto_replenish(
        &self,
        key: &str,
        account_id: &str,
    ) -> Result<Option<orchestrator::AutoReplenish>, ConsoleError> {
        let request = orchestrator::GetAutoReplenishRequest { account_id: account_id.to_owned() };
        match self.orchestrator().get_auto_replenish(keyed(request, key)?).await {
            Ok(answer) => Ok(answer.into_inner().auto_replenish),
            Err(status) if status.code() == tonic::Code::NotFound => Ok(None),
            Err(status) => Err(ConsoleError::from_status("orchestrator", &status)),
        }
    }

    pub async fn configure_auto_replenish(
        &self,
        key: &str,
        settings: orchestrator::AutoReplenish,
    ) -> Result<(), ConsoleError> {
        let request = orchestrator::ConfigureAutoReplenishRequest { auto_replenish: Some(settings) };
        answer("orchestrator", self.orchestrator().configure_auto_replenish(keyed(request, key)?)).await?;
        Ok(())
    }

    /// Top-ups, newest first, of one status (all when unspecified).
    pub async fn top_ups(
        &self,
        key: &str,
        status: orchestrator::TopUpStatus,
    ) -> Result<Vec<orchestrator::TopUp>, ConsoleError> {
        let request = orchestrator::ListTopUpsRequest { status: status as i32, page_size: 100, ..Default::default() };
        Ok(answer("orchestrator", self.orchestrator().list_top_ups(keyed(request, key)?)).await?.top_ups)
    }

    /// Invoices, of one account when `account_id` is not empty.
    pub async fn invoices(
        &self,
        key: &str,
        account_id: &str,
        page_token: &str,
    ) -> Result<(Vec<invoicing::Invoice>, String), ConsoleError> {
        let request = invoicing::ListInvoicesRequest {
            account_id: account_id.to_owned(),
            page_size: 50,
            page_token: page_token.to_owned(),
            ..Default::default()
        };
        let answer = answer("invoicing", self.invoicing().list_invoices(keyed(request, key)?)).await?;
        Ok((answer.invoices, answer.next_page_token))
    }

    pub async fn invoice(&self, key: &str, invoice_id: &str) -> Result<invoicing::Invoice, ConsoleError> {
        let request = invoicing::GetInvoiceRequest { invoice_id: invoice_id.to_owned() };
        answer("invoicing", self.invoicing().get_invoice(keyed(request, key)?)).await?.invoice.ok_or_else(|| {
            ConsoleError::Unavailable { service: "invoicing", message: "no invoice in its answer".into() }
        })
    }

    /// The tenant's report schedule, if it has one.
    pub async fn report_schedule(&self, key: &str) -> Result<Option<invoicing::ReportSchedule>, ConsoleError> {
        Ok(answer(
            "invoicing",
            self.invoicing().get_report_schedule(keyed(invoicing::GetReportScheduleRequest {}, key)?),
        )
        .await?
        .schedule)
    }

    pub async fn update_report_schedule(
        &self,
        key: &str,
        schedule: invoicing::ReportSchedule,
    ) -> Result<(), ConsoleError> {
        let request = invoicing::UpdateReportScheduleRequest { schedule: Some(schedule) };
        answer("invoicing", self.invoicing().update_report_schedule(keyed(request, key)?)).await?;
        Ok(())
    }

    /// The latest report runs.
    pub async fn report_runs(&self, key: &str) -> Result<Vec<invoicing::ReportRun>, ConsoleError> {
        Ok(answer(
            "invoicing",
            self.invoicing().list_report_runs(keyed(invoicing::ListReportRunsRequest { page_size: 50 }, key)?),
        )
        .await?
        .runs)
    }

    /// Who gets the tenant's billing alerts.
    pub async fn alert_recipients(&self, key: &str) -> Result<Vec<String>, ConsoleError> {
        let got = answer(
            "invoicing",
            self.invoicing().get_billing_alerts(keyed(invoicing::GetBillingAlertsRequest {}, key)?),
        )
        .await?;
        Ok(got.alerts.map(|alerts| alerts.recipients).unwrap_or_default())
    }

    pub async fn update_alert_recipients(&self, key: &str, recipients: Vec<String>) -> Result<(), ConsoleError> {
        let request = invoicing::UpdateBillingAlertsRequest { alerts: Some(invoicing::BillingAlerts { recipients }) };
        answer("invoicing", self.invoicing().update_billing_alerts(keyed(request, key)?)).await?;
        Ok(())
    }

    /// The latest alert mails.
    pub async fn alert_mails(&self, key: &str) -> Result<Vec<invoicing::AlertMail>, ConsoleError> {
        Ok(answer(
            "invoicing",
            self.invoicing().list_alert_mails(keyed(invoicing::ListAlertMailsRequest { page_size: 50 }, key)?),
        )
        .await?
        .mails)
    }

    pub async fn webhook_endpoints(&self, key: &str) -> Result<Vec<orchestrator::WebhookEndpoint>, ConsoleError> {
        Ok(answer(
            "orchestrator",
            self.webhooks().list_webhook_endpoints(keyed(orchestrator::ListWebhookEndpointsRequest {}, key)?),
        )
        .await?
        .endpoints)
    }

    /// An endpoint's latest deliveries, of one status (all when unspecified).
    pub async fn webhook_deliveries(
        &self,
        key: &str,
        endpoint_id: &str,
        status: orchestrator::DeliveryStatus,
    ) -> Result<Vec<orchestrator::WebhookDelivery>, ConsoleError> {
        let request = orchestrator::ListWebhookDeliveriesRequest {
            endpoint_id: endpoint_id.to_owned(),
            status: status as i32,
            page_size: 100,
            page_token: String::new(),
        };
        Ok(answer("orchestrator", self.webhooks().list_webhook_deliveries(keyed(request, key)?)).await?.deliveries)
    }

    /// Sends a delivery again, with the same event id.
    pub async fn replay_delivery(&self, key: &str, delivery_id: &str) -> Result<(), ConsoleError> {
        let request = orchestrator::ReplayWebhookDeliveryRequest { delivery_id: delivery_id.to_owned() };
        answer("orchestrator", self.webhooks().replay_webhook_delivery(keyed(request, key)?)).await?;
        Ok(())
    }

    /// Usage as CSV, grouped as `query` asks.
    pub async fn usage_csv(&self, key: &str, query: metering::GetUsageRequest) -> Result<String, ConsoleError> {
        let request = metering::ExportUsageRequest { query: Some(query) };
        Ok(answer("metering", self.metering().export_usage(keyed(request, key)?)).await?.csv)
    }
}

/// Usage of `[start, end)` by day, and by the value of `dimension_key` when it is not empty.
pub fn usage_query(
    account_id: &str,
    start: DateTime<Utc>,
    end: DateTime<Utc>,
    dimension_key: &str,
) -> metering::GetUsageRequest {
    metering::GetUsageRequest {
        account_id: account_id.to_owned(),
        meter_code: String::new(),
        start_time: Some(to_timestamp(start)),
        end_time: Some(to_timestamp(end)),
        group_by: metering::Period::Day as i32,
        dimension_key: dimension_key.to_owned(),
    }
}
