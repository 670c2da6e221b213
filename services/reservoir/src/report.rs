//! `reservoir report …`: an account's statement, refill history and usage as
//! CSV on standard output, from the running services.

use anyhow::Context;
use chrono::{DateTime, NaiveDate, Utc};
use clap::{Args, Subcommand, ValueEnum};
use reservoir_common::time::to_timestamp;
use reservoir_proto::metering as metering_pb;
use reservoir_proto::wallet as pb;

#[derive(Args, Clone)]
pub struct ReportClient {
    /// The wallet's address.
    #[arg(long, env = "RESERVOIR_ENDPOINT", default_value = "http://127.0.0.1:50051")]
    pub endpoint: String,
    /// Metering's address, for usage.
    #[arg(long, env = "RESERVOIR_METERING_ENDPOINT", default_value = "http://127.0.0.1:50052")]
    pub metering_endpoint: String,
    /// The tenant's API key.
    #[arg(long, env = "RESERVOIR_API_KEY", hide_env_values = true)]
    pub api_key: String,
}

#[derive(Clone, Copy, ValueEnum)]
pub enum GroupBy {
    Day,
    Month,
}

#[derive(Subcommand)]
pub enum ReportCommand {
    /// An account statement: opening balance, entries, grants, expired credits, closing balance.
    Statement {
        account_id: String,
        /// The period's first instant: 2026-11-01 or an RFC 3339 time.
        #[arg(long)]
        from: String,
        /// The instant after the period.
        #[arg(long)]
        to: String,
        #[command(flatten)]
        client: ReportClient,
    },
    /// Every time credits were added, with the balance after.
    Refills {
        account_id: String,
        #[arg(long)]
        from: Option<String>,
        #[arg(long)]
        to: Option<String>,
        #[command(flatten)]
        client: ReportClient,
    },
    /// Usage by day or month, per meter and, with --dimension, per value of that dimension.
    Usage {
        account_id: String,
        #[arg(long)]
        from: String,
        #[arg(long)]
        to: String,
        #[arg(long, value_enum, default_value = "month")]
        group_by: GroupBy,
        /// A dimension key to break usage down by, such as `model`.
        #[arg(long, default_value = "")]
        dimension: String,
        #[command(flatten)]
        client: ReportClient,
    },
}

/// "2026-11-01" (midnight UTC) or an RFC 3339 instant.
fn instant(text: &str) -> anyhow::Result<DateTime<Utc>> {
    if let Ok(day) = NaiveDate::parse_from_str(text, "%Y-%m-%d") {
        return Ok(day.and_hms_opt(0, 0, 0).context("midnight")?.and_utc());
    }
    Ok(DateTime::parse_from_rfc3339(text)
        .with_context(|| format!("{text:?} is not a date or an RFC 3339 time"))?
        .to_utc())
}

fn optional_instant(text: Option<&str>) -> anyhow::Result<Option<prost_types::Timestamp>> {
    text.map(|text| instant(text).map(to_timestamp)).transpose()
}

pub async fn run(command: ReportCommand) -> anyhow::Result<()> {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    match command {
        ReportCommand::Statement { account_id, from, to, client } => {
            let request = pb::ExportStatementRequest {
                account_id,
                start_time: Some(to_timestamp(instant(&from)?)),
                end_time: Some(to_timestamp(instant(&to)?)),
            };
            let mut wallet = crate::client::wallet(&client.endpoint, &client.api_key).await?;
            let mut chunks = wallet.export_statement(request).await?.into_inner();
            while let Some(chunk) = chunks.message().await? {
                out.write_all(chunk.csv.as_bytes())?;
            }
        }
        ReportCommand::Refills { account_id, from, to, client } => {
            let request = pb::ExportRefillHistoryRequest {
                account_id,
                start_time: optional_instant(from.as_deref())?,
                end_time: optional_instant(to.as_deref())?,
            };
            let mut wallet = crate::client::wallet(&client.endpoint, &client.api_key).await?;
            let mut chunks = wallet.export_refill_history(request).await?.into_inner();
            while let Some(chunk) = chunks.message().await? {
                out.write_all(chunk.csv.as_bytes())?;
            }
        }
        ReportCommand::Usage { account_id, from, to, group_by, dimension, client } => {
            let query = metering_pb::GetUsageRequest {
                account_id,
                meter_code: String::new(),
                start_time: Some(to_timestamp(instant(&from)?)),
                end_time: Some(to_timestamp(instant(&to)?)),
                group_by: match group_by {
                    GroupBy::Day => metering_pb::Period::Day,
                    GroupBy::Month => metering_pb::Period::Month,
                }
                .into(),
                dimension_key: dimension,
            };
            let mut metering = crate::client::metering(&client.metering_endpoint, &client.api_key).await?;
            let csv =
                metering.export_usage(metering_pb::ExportUsageRequest { query: Some(query) }).await?.into_inner().csv;
            out.write_all(csv.as_bytes())?;
        }
    }
    Ok(())
}
