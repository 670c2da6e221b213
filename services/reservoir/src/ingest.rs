//! `reservoir ingest`: a file of usage events sent in batches, with a
//! progress bar and a summary of what became of them.

use std::collections::BTreeMap;
use std::path::PathBuf;

use anyhow::{Context, bail};
use clap::{Args, ValueEnum};
use indicatif::{ProgressBar, ProgressStyle};
use reservoir_common::time::to_timestamp;
use reservoir_proto::metering as pb;
use rust_decimal::Decimal;

use crate::client;

#[derive(Clone, Copy, ValueEnum)]
pub enum Format {
    /// A header line, then `event_id,account_id,meter_code,quantity,timestamp`
    /// and a `dim.<key>` column per dimension.
    Csv,
    /// One JSON object per line with the same fields and a `dimensions` object.
    Ndjson,
}

#[derive(Args)]
pub struct IngestArgs {
    /// The file of events.
    file: PathBuf,
    /// Taken from the file's extension when omitted.
    #[arg(long, value_enum)]
    format: Option<Format>,
    /// Events per IngestEvents call, 1 to 1,000.
    #[arg(long, default_value_t = 1_000)]
    batch_size: usize,
    /// The metering service's address.
    #[arg(long, env = "RESERVOIR_METERING_ENDPOINT", default_value = "http://127.0.0.1:50052")]
    endpoint: String,
    /// The tenant's API key.
    #[arg(long, env = "RESERVOIR_API_KEY", hide_env_values = true)]
    api_key: String,
}

#[derive(serde::Deserialize)]
struct JsonEvent {
    event_id: String,
    account_id: String,
    meter_code: String,
    #[serde(default)]
    quantity: serde_json::Value,
    #[serde(default)]
    timestamp: Option<chrono::DateTime<chrono::Utc>>,
    #[serde(default)]
    dimensions: BTreeMap<String, String>,
}

fn quantity_text(value: &serde_json::Value) -> String {
    match value {
        serde_json::Value::String(text) => text.clone(),
        serde_json::Value::Number(number) => number.to_string(),
        _ => String::new(),
    }
}

fn read_events(args: &IngestArgs) -> anyhow::Result<Vec<pb::UsageEvent>> {
    let format = match args.format {
        Some(format) => format,
        None => match args.file.extension().and_then(|extension| extension.to_str()) {
            Some("csv") => Format::Csv,
            Some("ndjson" | "jsonl" | "json") => Format::Ndjson,
            _ => bail!("cannot tell the format of {}: pass --format", args.file.display()),
        },
    };
    let text = std::fs::read_to_string(&args.file).with_context(|| format!("reading {}", args.file.display()))?;
    let mut events = Vec::new();
    match format {
        Format::Ndjson => {
            for (number, line) in text.lines().enumerate().filter(|(_, line)| !line.trim().is_empty()) {
                let event: JsonEvent = serde_json::from_str(line).with_context(|| format!("line {}", number + 1))?;
                events.push(pb::UsageEvent {
                    event_id: event.event_id,
                    account_id: event.account_id,
                    meter_code: event.meter_code,
                    quantity: quantity_text(&event.quantity),
                    dimensions: event.dimensions,
                    timestamp: event.timestamp.map(to_timestamp),
                });
            }
        }
        Format::Csv => {
            let mut reader = csv::Reader::from_reader(text.as_bytes());
            let headers = reader.headers()?.clone();
            for (number, record) in reader.records().enumerate() {
                let record = record.with_context(|| format!("row {}", number + 2))?;
                let mut event = pb::UsageEvent::default();
                for (header, value) in headers.iter().zip(record.iter()) {
                    match header {
                        "event_id" => event.event_id = value.to_owned(),
                        "account_id" => event.account_id = value.to_owned(),
                        "meter_code" => event.meter_code = value.to_owned(),
                        "quantity" => event.quantity = value.to_owned(),
                        "timestamp" if !value.is_empty() => {
                            let at: chrono::DateTime<chrono::Utc> =
                                value.parse().with_context(|| format!("row {}: timestamp", number + 2))?;
                            event.timestamp = Some(to_timestamp(at));
                        }
                        other => {
                            if let Some(key) = other.strip_prefix("dim.")
                                && !value.is_empty()
                            {
                                event.dimensions.insert(key.to_owned(), value.to_owned());
                            }
                        }
                    }
                }
                events.push(event);
            }
        }
    }
    Ok(events)
}

#[derive(Default)]
struct Summary {
    charged: u64,
    duplicate: u64,
    uncovered: u64,
    invalid: u64,
    pending: u64,
    charged_amount: Decimal,
    uncovered_amount: Decimal,
    first_invalid: Vec<String>,
}

pub async fn run(args: IngestArgs) -> anyhow::Result<()> {
    if args.batch_size == 0 || args.batch_size > 1_000 {
        bail!("--batch-size must be 1 to 1000");
    }
    let events = read_events(&args)?;
    let mut metering = client::metering(&args.endpoint, &args.api_key).await?;
    let bar = ProgressBar::new(events.len() as u64);
    bar.set_style(
        ProgressStyle::with_template("{bar:40} {pos}/{len} events  {per_sec}  eta {eta}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let mut summary = Summary::default();
    for batch in events.chunks(args.batch_size) {
        let response = metering
            .ingest_events(pb::IngestEventsRequest { events: batch.to_vec(), asynchronous: false })
            .await?
            .into_inner();
        for result in response.results {
            let amount: Decimal = result.amount.parse().unwrap_or_default();
            match pb::EventStatus::try_from(result.status) {
                Ok(pb::EventStatus::Charged) => {
                    summary.charged += 1;
                    summary.charged_amount += amount;
                }
                Ok(pb::EventStatus::Uncovered) => {
                    summary.uncovered += 1;
                    summary.uncovered_amount += amount;
                }
                Ok(pb::EventStatus::Duplicate) => summary.duplicate += 1,
                Ok(pb::EventStatus::Pending) => summary.pending += 1,
                _ => {
                    summary.invalid += 1;
                    if summary.first_invalid.len() < 5 {
                        summary.first_invalid.push(format!("{}: {} {}", result.event_id, result.field, result.reason));
                    }
                }
            }
        }
        bar.inc(batch.len() as u64);
    }
    bar.finish_and_clear();
    println!("events     {}", events.len());
    println!("charged    {} (amount {})", summary.charged, summary.charged_amount);
    println!("uncovered  {} (amount {})", summary.uncovered, summary.uncovered_amount);
    println!("duplicate  {}", summary.duplicate);
    println!("pending    {}", summary.pending);
    println!("invalid    {}", summary.invalid);
    for line in &summary.first_invalid {
        println!("  {line}");
    }
    // A file of which nothing was taken is a failure a script must see.
    if !events.is_empty() && summary.invalid == events.len() as u64 {
        bail!("no event was accepted: every one was invalid (the first ones are listed above)");
    }
    Ok(())
}
