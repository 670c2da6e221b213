//! `reservoir meter …` and `reservoir price …`: what usage is counted in
//! and what it costs, through the running metering service (an ADMIN key
//! defines them; any key reads them).

use anyhow::{Context, bail};
use clap::{Args, Subcommand, ValueEnum};
use comfy_table::Table;
use reservoir_common::time::to_timestamp;
use reservoir_proto::metering as pb;
use serde_json::json;

use crate::client;
use crate::output::instant;

#[derive(Args, Clone)]
pub struct MeteringArgs {
    /// The metering service's address.
    #[arg(long, env = "RESERVOIR_METERING_ENDPOINT", default_value = "http://127.0.0.1:50052")]
    endpoint: String,
    /// The tenant's API key.
    #[arg(long, env = "RESERVOIR_API_KEY", hide_env_values = true)]
    api_key: String,
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
}

impl MeteringArgs {
    async fn client(&self) -> anyhow::Result<client::Metering> {
        client::metering(&self.endpoint, &self.api_key).await
    }
}

#[derive(Clone, Copy, ValueEnum)]
pub enum AggregationArg {
    /// Events add up their quantities (tokens, GB-hours).
    Sum,
    /// Each event counts one, whatever its quantity (API calls).
    Count,
    /// The month's peak quantity (seats in use), charged as it rises.
    Max,
    /// Distinct values of --value-dimension in the month (active users).
    UniqueCount,
    /// The month's last reported quantity (storage held), charged when the month ends.
    Latest,
}

#[derive(Subcommand)]
pub enum MeterCommand {
    /// Define a meter: the code events name, what one unit is, how events add up.
    Create {
        code: String,
        /// What one unit of quantity is, such as "token" or "GB-hour".
        #[arg(long)]
        unit_name: String,
        #[arg(long, value_enum, default_value = "sum")]
        aggregation: AggregationArg,
        /// For unique-count: the dimension whose distinct values are counted.
        #[arg(long, default_value = "")]
        value_dimension: String,
        #[arg(long, default_value = "")]
        description: String,
        #[command(flatten)]
        client: MeteringArgs,
    },
    /// The tenant's meters.
    List {
        #[command(flatten)]
        client: MeteringArgs,
    },
}

#[derive(Subcommand)]
pub enum PriceCommand {
    /// Price a meter from now (or --effective-from on): a flat price per
    /// unit, or graduated tiers of the account's usage in the month.
    Set {
        meter_code: String,
        /// A flat price per unit.
        #[arg(long, conflicts_with = "tiers", required_unless_present = "tiers")]
        unit_price: Option<String>,
        /// A graduated tier, UP_TO:UNIT_PRICE, in order; the last has no
        /// bound (":0.001").
        #[arg(long = "tier", value_name = "UP_TO:UNIT_PRICE")]
        tiers: Vec<String>,
        /// Another flat price for events whose dimension KEY has VALUE.
        #[arg(long = "override", value_name = "KEY=VALUE:UNIT_PRICE")]
        overrides: Vec<String>,
        /// RFC 3339 instant the price starts at; not in the past.
        #[arg(long)]
        effective_from: Option<chrono::DateTime<chrono::Utc>>,
        /// Reuse a key to retry safely; a fresh one is made when omitted.
        #[arg(long)]
        idempotency_key: Option<String>,
        #[command(flatten)]
        client: MeteringArgs,
    },
    /// The price of a meter in effect now, and its whole schedule.
    Get {
        meter_code: String,
        #[command(flatten)]
        client: MeteringArgs,
    },
}

pub async fn meter(command: MeterCommand) -> anyhow::Result<()> {
    match command {
        MeterCommand::Create { code, unit_name, aggregation, value_dimension, description, client } => {
            let aggregation = match aggregation {
                AggregationArg::Sum => pb::Aggregation::Sum,
                AggregationArg::Count => pb::Aggregation::Count,
                AggregationArg::Max => pb::Aggregation::Max,
                AggregationArg::UniqueCount => pb::Aggregation::UniqueCount,
                AggregationArg::Latest => pb::Aggregation::Latest,
            };
            let request = pb::CreateMeterRequest {
                code,
                unit_name,
                aggregation: aggregation.into(),
                description,
                value_dimension,
            };
            let meter = client.client().await?.create_meter(request).await?.into_inner().meter;
            print_meters(&meter.into_iter().collect::<Vec<_>>(), client.json)
        }
        MeterCommand::List { client } => {
            let meters = client.client().await?.list_meters(pb::ListMetersRequest {}).await?.into_inner().meters;
            print_meters(&meters, client.json)
        }
    }
}

pub async fn price(command: PriceCommand) -> anyhow::Result<()> {
    match command {
        PriceCommand::Set { meter_code, unit_price, tiers, overrides, effective_from, idempotency_key, client } => {
            let tiers = match unit_price {
                Some(unit_price) => vec![pb::Tier { up_to: String::new(), unit_price }],
                None => tiers.iter().map(|tier| parse_tier(tier)).collect::<anyhow::Result<_>>()?,
            };
            let overrides = overrides.iter().map(|text| parse_override(text)).collect::<anyhow::Result<_>>()?;
            let request = pb::SetPriceRequest {
                meter_code,
                effective_from: effective_from.map(to_timestamp),
                tiers,
                overrides,
                idempotency_key: idempotency_key.unwrap_or_else(|| uuid::Uuid::now_v7().to_string()),
            };
            let price = client.client().await?.set_price(request).await?.into_inner().price;
            print_prices(&price.into_iter().collect::<Vec<_>>(), client.json)
        }
        PriceCommand::Get { meter_code, client } => {
            let request = pb::GetPriceRequest { meter_code: meter_code.clone(), at: None };
            let answer = client.client().await?.get_price(request).await?.into_inner();
            if answer.price.is_none() && !client.json {
                println!("{meter_code} has no price in effect now");
            }
            print_prices(&answer.schedule, client.json)
        }
    }
}

/// `UP_TO:UNIT_PRICE`, UP_TO empty for the last tier. The numbers go to
/// the service as written: it checks them and names the tier at fault.
fn parse_tier(text: &str) -> anyhow::Result<pb::Tier> {
    let Some((up_to, unit_price)) = text.split_once(':') else {
        bail!("--tier {text:?} is not UP_TO:UNIT_PRICE (the last tier leaves UP_TO empty: \":0.001\")");
    };
    Ok(pb::Tier { up_to: up_to.trim().to_owned(), unit_price: unit_price.trim().to_owned() })
}

/// `KEY=VALUE:UNIT_PRICE`: a flat price for the events whose dimension KEY is VALUE.
fn parse_override(text: &str) -> anyhow::Result<pb::DimensionPrice> {
    let parsed = text.rsplit_once(':').and_then(|(matched, price)| {
        let (key, value) = matched.split_once('=')?;
        Some((key, value, price))
    });
    let (key, value, unit_price) =
        parsed.with_context(|| format!("--override {text:?} is not KEY=VALUE:UNIT_PRICE"))?;
    Ok(pb::DimensionPrice {
        key: key.trim().to_owned(),
        value: value.trim().to_owned(),
        tiers: vec![pb::Tier { up_to: String::new(), unit_price: unit_price.trim().to_owned() }],
    })
}

fn aggregation_name(aggregation: i32) -> &'static str {
    match pb::Aggregation::try_from(aggregation) {
        Ok(pb::Aggregation::Sum) => "SUM",
        Ok(pb::Aggregation::Count) => "COUNT",
        Ok(pb::Aggregation::Max) => "MAX",
        Ok(pb::Aggregation::UniqueCount) => "UNIQUE_COUNT",
        Ok(pb::Aggregation::Latest) => "LATEST",
        _ => "?",
    }
}

fn print_meters(meters: &[pb::Meter], as_json: bool) -> anyhow::Result<()> {
    if as_json {
        let values: Vec<_> = meters
            .iter()
            .map(|meter| {
                json!({
                    "code": meter.code,
                    "unit_name": meter.unit_name,
                    "aggregation": aggregation_name(meter.aggregation),
                    "value_dimension": meter.value_dimension,
                    "description": meter.description,
                    "created_at": instant(meter.created_at.as_ref()),
                })
            })
            .collect();
        println!("{}", serde_json::to_string_pretty(&values)?);
        return Ok(());
    }
    let mut table = Table::new();
    table.set_header(["meter", "unit", "aggregation", "description"]);
    for meter in meters {
        table.add_row([
            meter.code.clone(),
            meter.unit_name.clone(),
            aggregation_name(meter.aggregation).to_owned(),
            meter.description.clone(),
        ]);
    }
    println!("{table}");
    Ok(())
}

/// A schedule of tiers as one cell: "2" for a flat price, "0.002 up to 1000, then 0.001".
fn tiers_text(tiers: &[pb::Tier]) -> String {
    match tiers {
        [flat] if flat.up_to.is_empty() => flat.unit_price.clone(),
        tiers => tiers
            .iter()
            .map(|tier| match tier.up_to.as_str() {
                "" => format!("then {}", tier.unit_price),
                up_to => format!("{} up to {up_to}", tier.unit_price),
            })
            .collect::<Vec<_>>()
            .join(", "),
    }
}

fn print_prices(prices: &[pb::Price], as_json: bool) -> anyhow::Result<()> {
    if as_json {
        let values: Vec<_> = prices
            .iter()
            .map(|price| {
                json!({
                    "meter_code": price.meter_code,
                    "effective_from": instant(price.effective_from.as_ref()),
                    "tiers": price.tiers.iter().map(|tier| json!({"up_to": tier.up_to, "unit_price": tier.unit_price})).collect::<Vec<_>>(),
                    "overrides": price.overrides.iter().map(|o| json!({"key": o.key, "value": o.value, "unit_price": tiers_text(&o.tiers)})).collect::<Vec<_>>(),
                })
            })
            .collect();
        println!("{}", serde_json::to_string_pretty(&values)?);
        return Ok(());
    }
    let mut table = Table::new();
    table.set_header(["meter", "from", "unit price", "overrides"]);
    for price in prices {
        let overrides: Vec<String> =
            price.overrides.iter().map(|o| format!("{}={}: {}", o.key, o.value, tiers_text(&o.tiers))).collect();
        table.add_row([
            price.meter_code.clone(),
            instant(price.effective_from.as_ref()),
            tiers_text(&price.tiers),
            overrides.join("; "),
        ]);
    }
    println!("{table}");
    Ok(())
}
