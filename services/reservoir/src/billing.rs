//! `reservoir payment-method …` and `reservoir invoice …`: how an account
//! pays, and what it was billed, through the running payments and invoicing
//! services.

use crate::client::Authorized;
use crate::output::{instant, readable};
use anyhow::Context;
use clap::{Args, Subcommand, ValueEnum};
use comfy_table::Table;
use reservoir_proto::invoicing as invoicing_pb;
use reservoir_proto::invoicing::invoicing_service_client::InvoicingServiceClient;
use reservoir_proto::payments as payments_pb;
use reservoir_proto::payments::payments_service_client::PaymentsServiceClient;
use serde_json::json;

type Payments = PaymentsServiceClient<Authorized>;
type Invoicing = InvoicingServiceClient<Authorized>;

#[derive(Args, Clone)]
pub struct PaymentsArgs {
    /// The payments service's address.
    #[arg(long, env = "RESERVOIR_PAYMENTS_ENDPOINT", default_value = "http://127.0.0.1:50054")]
    endpoint: String,
    /// The tenant's API key.
    #[arg(long, env = "RESERVOIR_API_KEY", hide_env_values = true)]
    api_key: String,
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Clone)]
pub struct InvoicingArgs {
    /// The invoicing service's address.
    #[arg(long, env = "RESERVOIR_INVOICING_ENDPOINT", default_value = "http://127.0.0.1:50053")]
    endpoint: String,
    /// The tenant's API key.
    #[arg(long, env = "RESERVOIR_API_KEY", hide_env_values = true)]
    api_key: String,
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
}

impl PaymentsArgs {
    pub async fn client(&self) -> anyhow::Result<Payments> {
        Ok(PaymentsServiceClient::new(crate::client::authorized(&self.endpoint, &self.api_key).await?))
    }
}

impl InvoicingArgs {
    async fn client(&self) -> anyhow::Result<Invoicing> {
        Ok(InvoicingServiceClient::new(crate::client::authorized(&self.endpoint, &self.api_key).await?))
    }
}

#[derive(Clone, Copy, ValueEnum)]
pub enum KindArg {
    /// Charged through the gateway with its token.
    Card,
    /// Every charge waits for the transfer to be confirmed.
    BankTransfer,
    /// Charged through the gateway with its token.
    MobileWallet,
}

#[derive(Subcommand)]
pub enum PaymentMethodCommand {
    /// Add a way for an account to pay (what `top-up start --payment-method` charges).
    Add {
        account_id: String,
        #[arg(long, value_enum, default_value = "card")]
        kind: KindArg,
        /// The gateway's token (a card or mobile wallet; none for a bank transfer).
        #[arg(long, default_value = "")]
        token: String,
        /// What a person sees, such as "Visa ending 4242".
        #[arg(long, default_value = "")]
        label: String,
        /// Reuse a key to retry safely; a fresh one is made when omitted.
        #[arg(long)]
        idempotency_key: Option<String>,
        #[command(flatten)]
        client: PaymentsArgs,
    },
    /// An account's payment methods, newest first.
    List {
        account_id: String,
        #[command(flatten)]
        client: PaymentsArgs,
    },
}

#[derive(Subcommand)]
pub enum InvoiceCommand {
    /// Invoices, newest first: all, or an account's.
    List {
        #[arg(long, default_value = "")]
        account: String,
        #[command(flatten)]
        client: InvoicingArgs,
    },
    /// One invoice with its lines.
    Show {
        invoice_id: String,
        #[command(flatten)]
        client: InvoicingArgs,
    },
    /// Issue a draft invoice: it gets its number and falls due.
    Finalize {
        invoice_id: String,
        #[command(flatten)]
        client: InvoicingArgs,
    },
    /// Void an invoice that is not paid: it is owed no more.
    Void {
        invoice_id: String,
        #[command(flatten)]
        client: InvoicingArgs,
    },
    /// Record an invoice as paid by a payment made elsewhere (a service key).
    Pay {
        invoice_id: String,
        /// The payment that paid it, such as a bank transfer's reference.
        #[arg(long)]
        reference: String,
        #[command(flatten)]
        client: InvoicingArgs,
    },
}

#[derive(Subcommand)]
pub enum AlertCommand {
    /// Who gets the tenant's billing alerts by e-mail.
    Show {
        #[command(flatten)]
        client: InvoicingArgs,
    },
    /// Sets who gets billing alerts (an ADMIN key): a balance low, at its
    /// warning level or used up, a spending cap's marks, a top-up paid.
    /// Giving none stops them.
    Set {
        recipients: Vec<String>,
        #[command(flatten)]
        client: InvoicingArgs,
    },
    /// The alert e-mails made, newest first, with their status.
    Sent {
        #[arg(long, default_value_t = 50)]
        limit: u32,
        #[command(flatten)]
        client: InvoicingArgs,
    },
}

#[derive(Subcommand)]
pub enum VoucherCommand {
    /// Make a batch of vouchers (an ADMIN key): their codes are shown this once.
    Create {
        #[arg(long)]
        count: u32,
        /// What each voucher adds, in --unit.
        #[arg(long)]
        value: String,
        /// A unit the tenant keeps accounts in, such as USD.
        #[arg(long)]
        unit: String,
        /// RFC 3339 instant after which the vouchers cannot be redeemed.
        #[arg(long)]
        expires_at: Option<chrono::DateTime<chrono::Utc>>,
        /// Reuse a key to retry safely (the same codes again); a fresh one is made when omitted.
        #[arg(long)]
        idempotency_key: Option<String>,
        #[command(flatten)]
        client: PaymentsArgs,
    },
}

pub async fn payment_method(command: PaymentMethodCommand) -> anyhow::Result<()> {
    match command {
        PaymentMethodCommand::Add { account_id, kind, token, label, idempotency_key, client } => {
            let kind = match kind {
                KindArg::Card => payments_pb::PaymentMethodKind::Card,
                KindArg::BankTransfer => payments_pb::PaymentMethodKind::BankTransfer,
                KindArg::MobileWallet => payments_pb::PaymentMethodKind::MobileWallet,
            };
            let request = payments_pb::AddPaymentMethodRequest {
                account_id,
                kind: kind.into(),
                gateway_token: token,
                label,
                idempotency_key: idempotency_key.unwrap_or_else(|| uuid::Uuid::now_v7().to_string()),
            };
            let added = client.client().await?.add_payment_method(request).await?.into_inner();
            let method = added.payment_method.context("no payment method in the answer")?;
            print_methods(&[method], client.json)
        }
        PaymentMethodCommand::List { account_id, client } => {
            let request = payments_pb::ListPaymentMethodsRequest { account_id };
            let methods = client.client().await?.list_payment_methods(request).await?.into_inner().payment_methods;
            print_methods(&methods, client.json)
        }
    }
}

pub async fn alerts(command: AlertCommand) -> anyhow::Result<()> {
    let print_recipients = |alerts: Option<invoicing_pb::BillingAlerts>, as_json: bool| -> anyhow::Result<()> {
        let recipients = alerts.map(|alerts| alerts.recipients).unwrap_or_default();
        if as_json {
            println!("{}", serde_json::to_string_pretty(&json!({ "recipients": recipients }))?);
        } else if recipients.is_empty() {
            println!("nobody gets billing alerts");
        } else {
            println!("billing alerts go to {}", recipients.join(", "));
        }
        Ok(())
    };
    match command {
        AlertCommand::Show { client } => {
            let request = invoicing_pb::GetBillingAlertsRequest {};
            let alerts = client.client().await?.get_billing_alerts(request).await?.into_inner().alerts;
            print_recipients(alerts, client.json)
        }
        AlertCommand::Set { recipients, client } => {
            let request =
                invoicing_pb::UpdateBillingAlertsRequest { alerts: Some(invoicing_pb::BillingAlerts { recipients }) };
            let alerts = client.client().await?.update_billing_alerts(request).await?.into_inner().alerts;
            print_recipients(alerts, client.json)
        }
        AlertCommand::Sent { limit, client } => {
            let request = invoicing_pb::ListAlertMailsRequest { page_size: limit };
            let mails = client.client().await?.list_alert_mails(request).await?.into_inner().mails;
            print_alert_mails(&mails, client.json)
        }
    }
}

fn print_alert_mails(mails: &[invoicing_pb::AlertMail], as_json: bool) -> anyhow::Result<()> {
    let kind = |mail: &invoicing_pb::AlertMail| readable(mail.kind().as_str_name(), "ALERT_KIND_");
    let status = |mail: &invoicing_pb::AlertMail| readable(mail.status().as_str_name(), "ALERT_MAIL_STATUS_");
    if as_json {
        let values: Vec<_> = mails
            .iter()
            .map(|mail| {
                json!({
                    "id": mail.id,
                    "kind": kind(mail),
                    "account_id": mail.account_id,
                    "subject": mail.subject,
                    "recipients": mail.recipients,
                    "status": status(mail),
                    "attempts": mail.attempts,
                    "last_error": mail.last_error,
                    "occurred_at": instant(mail.occurred_at.as_ref()),
                })
            })
            .collect();
        println!("{}", serde_json::to_string_pretty(&values)?);
        return Ok(());
    }
    let mut table = Table::new();
    table.set_header(["happened", "alert", "account", "to", "status", "attempts", "last error"]);
    for mail in mails {
        table.add_row([
            instant(mail.occurred_at.as_ref()),
            kind(mail).to_owned(),
            mail.account_id.clone(),
            mail.recipients.join(", "),
            status(mail).to_owned(),
            mail.attempts.to_string(),
            mail.last_error.clone(),
        ]);
    }
    println!("{table}");
    Ok(())
}

pub async fn invoice(command: InvoiceCommand) -> anyhow::Result<()> {
    match command {
        InvoiceCommand::List { account, client } => {
            let request = invoicing_pb::ListInvoicesRequest { account_id: account, ..Default::default() };
            let invoices = client.client().await?.list_invoices(request).await?.into_inner().invoices;
            print_invoices(&invoices, client.json)
        }
        InvoiceCommand::Show { invoice_id, client } => {
            let request = invoicing_pb::GetInvoiceRequest { invoice_id };
            let invoice = client.client().await?.get_invoice(request).await?.into_inner().invoice;
            let invoice = invoice.context("no invoice in the answer")?;
            print_invoices(std::slice::from_ref(&invoice), client.json)?;
            if !client.json {
                print_lines(&invoice);
            }
            Ok(())
        }
        InvoiceCommand::Finalize { invoice_id, client } => {
            let request = invoicing_pb::FinalizeInvoiceRequest { invoice_id };
            let invoice = client.client().await?.finalize_invoice(request).await?.into_inner().invoice;
            print_invoices(&invoice.into_iter().collect::<Vec<_>>(), client.json)
        }
        InvoiceCommand::Void { invoice_id, client } => {
            let request = invoicing_pb::VoidInvoiceRequest { invoice_id };
            let invoice = client.client().await?.void_invoice(request).await?.into_inner().invoice;
            print_invoices(&invoice.into_iter().collect::<Vec<_>>(), client.json)
        }
        InvoiceCommand::Pay { invoice_id, reference, client } => {
            let request = invoicing_pb::MarkInvoicePaidRequest { invoice_id, payment_reference: reference };
            let invoice = client.client().await?.mark_invoice_paid(request).await?.into_inner().invoice;
            print_invoices(&invoice.into_iter().collect::<Vec<_>>(), client.json)
        }
    }
}

pub async fn voucher(command: VoucherCommand) -> anyhow::Result<()> {
    match command {
        VoucherCommand::Create { count, value, unit, expires_at, idempotency_key, client } => {
            let request = payments_pb::CreateVoucherBatchRequest {
                count,
                value,
                unit_code: unit,
                expires_at: expires_at.map(reservoir_common::time::to_timestamp),
                idempotency_key: idempotency_key.unwrap_or_else(|| uuid::Uuid::now_v7().to_string()),
            };
            let batch = client.client().await?.create_voucher_batch(request).await?.into_inner();
            if client.json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&json!({"batch_id": batch.batch_id, "codes": batch.codes}))?
                );
            } else {
                println!("batch {}", batch.batch_id);
                for code in &batch.codes {
                    println!("{code}");
                }
            }
            Ok(())
        }
    }
}

fn method_kind(kind: i32) -> &'static str {
    let name = payments_pb::PaymentMethodKind::try_from(kind).map(|kind| kind.as_str_name()).unwrap_or("?");
    readable(name, "PAYMENT_METHOD_KIND_")
}

fn print_methods(methods: &[payments_pb::PaymentMethod], as_json: bool) -> anyhow::Result<()> {
    if as_json {
        let values: Vec<_> = methods
            .iter()
            .map(|method| {
                json!({
                    "id": method.id,
                    "account_id": method.account_id,
                    "kind": method_kind(method.kind),
                    "label": method.label,
                    "created_at": instant(method.created_at.as_ref()),
                })
            })
            .collect();
        println!("{}", serde_json::to_string_pretty(&values)?);
        return Ok(());
    }
    let mut table = Table::new();
    table.set_header(["payment method", "account", "kind", "label"]);
    for method in methods {
        table.add_row([
            method.id.clone(),
            method.account_id.clone(),
            method_kind(method.kind).to_owned(),
            method.label.clone(),
        ]);
    }
    println!("{table}");
    Ok(())
}

fn invoice_status(status: i32) -> &'static str {
    let name = invoicing_pb::InvoiceStatus::try_from(status).map(|status| status.as_str_name()).unwrap_or("?");
    readable(name, "INVOICE_STATUS_")
}

fn invoice_kind(kind: i32) -> &'static str {
    let name = invoicing_pb::InvoiceKind::try_from(kind).map(|kind| kind.as_str_name()).unwrap_or("?");
    readable(name, "INVOICE_KIND_")
}

fn print_invoices(invoices: &[invoicing_pb::Invoice], as_json: bool) -> anyhow::Result<()> {
    if as_json {
        let values: Vec<_> = invoices
            .iter()
            .map(|invoice| {
                json!({
                    "id": invoice.id,
                    "number": invoice.number,
                    "account_id": invoice.account_id,
                    "kind": invoice_kind(invoice.kind),
                    "status": invoice_status(invoice.status),
                    "currency": invoice.currency,
                    "total": invoice.total,
                    "amount_due": invoice.amount_due,
                    "overdue": invoice.overdue,
                    "lines": invoice.lines.iter().map(|line| json!({
                        "description": line.description,
                        "quantity": line.quantity,
                        "unit_price": line.unit_price,
                        "amount": line.amount,
                    })).collect::<Vec<_>>(),
                })
            })
            .collect();
        println!("{}", serde_json::to_string_pretty(&values)?);
        return Ok(());
    }
    let mut table = Table::new();
    table.set_header(["invoice", "number", "account", "kind", "status", "total", "due"]);
    for invoice in invoices {
        let number = if invoice.number == 0 { String::new() } else { invoice.number.to_string() };
        let overdue = if invoice.overdue { " (overdue)" } else { "" };
        table.add_row([
            invoice.id.clone(),
            number,
            invoice.account_id.clone(),
            invoice_kind(invoice.kind).to_owned(),
            format!("{}{overdue}", invoice_status(invoice.status)),
            format!("{} {}", invoice.total, invoice.currency),
            format!("{} {}", invoice.amount_due, invoice.currency),
        ]);
    }
    println!("{table}");
    Ok(())
}

fn print_lines(invoice: &invoicing_pb::Invoice) {
    let mut table = Table::new();
    table.set_header(["line", "quantity", "unit price", "amount"]);
    for line in &invoice.lines {
        table.add_row([
            line.description.clone(),
            line.quantity.clone(),
            line.unit_price.clone(),
            format!("{} {}", line.amount, invoice.currency),
        ]);
    }
    println!("{table}");
}
