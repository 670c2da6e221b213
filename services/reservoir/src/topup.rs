//! `reservoir top-up …`: top-ups and their configuration, through the
//! running orchestrator.

use clap::{Args, Subcommand, ValueEnum};
use comfy_table::Table;
use reservoir_proto::orchestrator as pb;
use reservoir_proto::orchestrator::top_up_service_client::TopUpServiceClient;
use serde_json::json;

#[derive(Args, Clone)]
pub struct OrchestratorArgs {
    /// The orchestrator's address.
    #[arg(long, env = "RESERVOIR_ORCHESTRATOR_ENDPOINT", default_value = "http://127.0.0.1:50055")]
    pub endpoint: String,
    /// The tenant's API key.
    #[arg(long, env = "RESERVOIR_API_KEY", hide_env_values = true)]
    pub api_key: String,
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

#[derive(Clone, Copy, ValueEnum)]
pub enum StatusArg {
    Pending,
    RequiresAction,
    Succeeded,
    Failed,
}

#[derive(Clone, Copy, ValueEnum)]
pub enum IntervalArg {
    Weekly,
    Monthly,
}

#[derive(Subcommand)]
pub enum TopUpCommand {
    /// Buy credits for an account: invoice, charge, grant, mark paid.
    Start {
        account_id: String,
        credits: String,
        /// The payment method to charge.
        #[arg(long, conflicts_with = "reconcile_later")]
        payment_method: Option<String>,
        /// Invoice now and wait for the payment to be confirmed.
        #[arg(long)]
        reconcile_later: bool,
        /// Reuse a key to retry safely; a fresh one is made when omitted.
        #[arg(long)]
        idempotency_key: Option<String>,
        /// Promotional credits given with the purchase: an amount, or a share
        /// of the credits such as `10%`; clawed back in proportion if the
        /// payment is refunded.
        #[arg(long)]
        bonus: Option<String>,
        /// RFC 3339 instant after which the bonus no longer counts.
        #[arg(long, requires = "bonus")]
        bonus_expires_at: Option<chrono::DateTime<chrono::Utc>>,
        /// The bonus's drawdown priority (lower first).
        #[arg(long, requires = "bonus")]
        bonus_priority: Option<i32>,
        #[command(flatten)]
        client: OrchestratorArgs,
    },
    /// Redeem a voucher code for an account: a top-up of the voucher's value.
    Redeem {
        code: String,
        #[arg(long)]
        account: String,
        #[command(flatten)]
        client: OrchestratorArgs,
    },
    /// One top-up and its steps.
    Get {
        top_up_id: String,
        #[command(flatten)]
        client: OrchestratorArgs,
    },
    /// Top-ups, newest first.
    List {
        #[arg(long, default_value = "")]
        account: String,
        #[arg(long, value_enum)]
        status: Option<StatusArg>,
        #[command(flatten)]
        client: OrchestratorArgs,
    },
    /// Refill an account when its balance falls below a threshold.
    AutoReplenish {
        account_id: String,
        #[arg(long)]
        threshold: String,
        /// Always add this many credits.
        #[arg(long, conflicts_with = "target")]
        fixed: Option<String>,
        /// Add as many credits as bring the balance to this.
        #[arg(long)]
        target: Option<String>,
        #[arg(long)]
        payment_method: String,
        #[arg(long, default_value_t = 3)]
        per_day: u32,
        #[arg(long, default_value = "")]
        max_per_month: String,
        #[command(flatten)]
        client: OrchestratorArgs,
    },
    /// Turn auto-replenish off for an account.
    AutoReplenishOff {
        account_id: String,
        #[command(flatten)]
        client: OrchestratorArgs,
    },
    /// Add credits every week or month: charged to a payment method, or granted free.
    Recurring {
        account_id: String,
        credits: String,
        #[arg(long, value_enum)]
        interval: IntervalArg,
        /// Charge this payment method; without it the credits are a free allowance.
        #[arg(long)]
        payment_method: Option<String>,
        /// The credits of each period expire this many days after they are added.
        #[arg(long, default_value_t = 0)]
        expire_after_days: u32,
        /// What each period carries from the one before: none (what is left
        /// expires at the turn), all, or capped (with --rollover-cap).
        #[arg(long, value_enum)]
        rollover: Option<RolloverArg>,
        /// For --rollover capped: an amount ("5.00") or a share of the period ("50%").
        #[arg(long)]
        rollover_cap: Option<String>,
        /// The carried credits expire this many days after the turn; 0: never.
        #[arg(long, default_value_t = 0)]
        rollover_expire_after_days: u32,
        #[command(flatten)]
        client: OrchestratorArgs,
    },
}

#[derive(Clone, Copy, ValueEnum)]
pub enum RolloverArg {
    None,
    All,
    Capped,
}

type Client = TopUpServiceClient<crate::client::Authorized>;

/// The rollover policy the flags describe; a cap is an amount or a share ("50%").
fn rollover_policy(
    mode: RolloverArg,
    cap: Option<String>,
    expire_after_days: u32,
) -> anyhow::Result<pb::RolloverPolicy> {
    let (cap_amount, cap_percent) =
        cap.map_or(Ok((String::new(), 0)), |cap| amount_or_share("--rollover-cap", &cap))?;
    let mode = match mode {
        RolloverArg::None => pb::RolloverMode::None,
        RolloverArg::All => pb::RolloverMode::All,
        RolloverArg::Capped => pb::RolloverMode::Capped,
    };
    Ok(pb::RolloverPolicy { mode: mode.into(), cap_amount, cap_percent, expire_after_days })
}

/// An amount, or a share such as `10%`: as the wire's amount text and percentage.
fn amount_or_share(flag: &str, text: &str) -> anyhow::Result<(String, u32)> {
    match text.strip_suffix('%') {
        Some(share) => {
            let percent = share.trim().parse().map_err(|_| anyhow::anyhow!("{flag} {text} is not a share"))?;
            Ok((String::new(), percent))
        }
        None => Ok((text.to_owned(), 0)),
    }
}

async fn connect(args: &OrchestratorArgs) -> anyhow::Result<Client> {
    Ok(TopUpServiceClient::new(crate::client::authorized(&args.endpoint, &args.api_key).await?))
}

/// A top-up that ended FAILED (a declined card, a refused grant) fails the
/// command, after it is printed, so a script sees it.
fn failed_if_failed(top_up: &pb::TopUp) -> anyhow::Result<()> {
    if top_up.status == i32::from(pb::TopUpStatus::Failed) {
        anyhow::bail!("the top-up failed: {}", top_up.reason);
    }
    Ok(())
}

fn status_name(status: i32) -> &'static str {
    match pb::TopUpStatus::try_from(status) {
        Ok(pb::TopUpStatus::Pending) => "PENDING",
        Ok(pb::TopUpStatus::RequiresAction) => "REQUIRES_ACTION",
        Ok(pb::TopUpStatus::Succeeded) => "SUCCEEDED",
        Ok(pb::TopUpStatus::Failed) => "FAILED",
        _ => "UNSPECIFIED",
    }
}

fn step_name(step: i32) -> &'static str {
    pb::Step::try_from(step).map(|step| step.as_str_name()).unwrap_or("STEP_UNSPECIFIED")
}

fn top_up_json(top_up: &pb::TopUp) -> serde_json::Value {
    json!({
        "id": top_up.id,
        "account_id": top_up.account_id,
        "credits": top_up.credits,
        "status": status_name(top_up.status),
        "step": step_name(top_up.step),
        "invoice_id": top_up.invoice_id,
        "payment_id": top_up.payment_id,
        "grant_id": top_up.grant_id,
        "amount": top_up.amount,
        "currency": top_up.currency,
        "reason": top_up.reason,
        "bonus": top_up.bonus.as_ref().map(|bonus| json!({
            "credits": bonus.credits,
            "grant_id": bonus.grant_id,
            "clawed_back": bonus.clawed_back,
            "unrecovered": bonus.unrecovered,
            "clawbacks": bonus.clawbacks.iter().map(|clawback| json!({
                "refund_id": clawback.refund_id,
                "refunded_amount": clawback.refunded_amount,
                "asked": clawback.asked,
                "clawed_back": clawback.clawed_back,
                "unrecovered": clawback.unrecovered,
                "applied": clawback.applied,
            })).collect::<Vec<_>>(),
        })),
        "steps": top_up.steps.iter().map(|line| json!({
            "step": step_name(line.step),
            "outcome": pb::StepOutcome::try_from(line.outcome).map(|o| o.as_str_name()).unwrap_or(""),
            "attempt": line.attempt,
            "detail": line.detail,
        })).collect::<Vec<_>>(),
    })
}

fn print_top_ups(top_ups: &[pb::TopUp], as_json: bool) -> anyhow::Result<()> {
    if as_json {
        let values: Vec<_> = top_ups.iter().map(top_up_json).collect();
        println!("{}", serde_json::to_string_pretty(&values)?);
        return Ok(());
    }
    let mut table = Table::new();
    table.set_header(["top-up", "account", "credits", "status", "step", "amount", "reason"]);
    for top_up in top_ups {
        table.add_row([
            top_up.id.clone(),
            top_up.account_id.clone(),
            top_up.credits.clone(),
            status_name(top_up.status).to_owned(),
            step_name(top_up.step).to_owned(),
            format!("{} {}", top_up.amount, top_up.currency),
            top_up.reason.clone(),
        ]);
    }
    println!("{table}");
    Ok(())
}

pub async fn run(command: TopUpCommand) -> anyhow::Result<()> {
    match command {
        TopUpCommand::Start {
            account_id,
            credits,
            payment_method,
            reconcile_later,
            idempotency_key,
            bonus,
            bonus_expires_at,
            bonus_priority,
            client,
        } => {
            let bonus = match bonus {
                None => None,
                Some(bonus) => {
                    let (credits, percent) = amount_or_share("--bonus", &bonus)?;
                    Some(pb::Bonus {
                        credits,
                        percent,
                        expires_at: bonus_expires_at.map(reservoir_common::time::to_timestamp),
                        priority: bonus_priority,
                    })
                }
            };
            let response = connect(&client)
                .await?
                .start_top_up(pb::StartTopUpRequest {
                    account_id,
                    credits,
                    payment_method_id: payment_method.unwrap_or_default(),
                    reconcile_later,
                    idempotency_key: idempotency_key.unwrap_or_else(|| uuid::Uuid::new_v4().to_string()),
                    credits_expire_at: None,
                    bonus,
                })
                .await?
                .into_inner();
            let top_up = response.top_up.unwrap_or_default();
            print_top_ups(std::slice::from_ref(&top_up), client.json)?;
            failed_if_failed(&top_up)
        }
        TopUpCommand::Redeem { code, account, client } => {
            let request = pb::RedeemVoucherRequest { code, account_id: account };
            let top_up = connect(&client).await?.redeem_voucher(request).await?.into_inner().top_up.unwrap_or_default();
            print_top_ups(std::slice::from_ref(&top_up), client.json)?;
            failed_if_failed(&top_up)
        }
        TopUpCommand::Get { top_up_id, client } => {
            let response = connect(&client).await?.get_top_up(pb::GetTopUpRequest { top_up_id }).await?.into_inner();
            let top_up = response.top_up.unwrap_or_default();
            if client.json {
                println!("{}", serde_json::to_string_pretty(&top_up_json(&top_up))?);
                return Ok(());
            }
            print_top_ups(std::slice::from_ref(&top_up), false)?;
            let mut steps = Table::new();
            steps.set_header(["step", "outcome", "attempt", "detail"]);
            for line in &top_up.steps {
                steps.add_row([
                    step_name(line.step).to_owned(),
                    pb::StepOutcome::try_from(line.outcome).map(|o| o.as_str_name()).unwrap_or("").to_owned(),
                    line.attempt.to_string(),
                    line.detail.clone(),
                ]);
            }
            println!("{steps}");
            if let Some(bonus) = &top_up.bonus {
                println!(
                    "bonus {} (grant {}): clawed back {}, not recovered {}",
                    bonus.credits, bonus.grant_id, bonus.clawed_back, bonus.unrecovered
                );
            }
            Ok(())
        }
        TopUpCommand::List { account, status, client } => {
            let status = match status {
                None => pb::TopUpStatus::Unspecified,
                Some(StatusArg::Pending) => pb::TopUpStatus::Pending,
                Some(StatusArg::RequiresAction) => pb::TopUpStatus::RequiresAction,
                Some(StatusArg::Succeeded) => pb::TopUpStatus::Succeeded,
                Some(StatusArg::Failed) => pb::TopUpStatus::Failed,
            };
            let response = connect(&client)
                .await?
                .list_top_ups(pb::ListTopUpsRequest {
                    account_id: account,
                    status: status.into(),
                    page_size: 100,
                    page_token: String::new(),
                })
                .await?
                .into_inner();
            print_top_ups(&response.top_ups, client.json)
        }
        TopUpCommand::AutoReplenish {
            account_id,
            threshold,
            fixed,
            target,
            payment_method,
            per_day,
            max_per_month,
            client,
        } => {
            let response = connect(&client)
                .await?
                .configure_auto_replenish(pb::ConfigureAutoReplenishRequest {
                    auto_replenish: Some(pb::AutoReplenish {
                        account_id,
                        threshold,
                        fixed_amount: fixed.unwrap_or_default(),
                        target_balance: target.unwrap_or_default(),
                        payment_method_id: payment_method,
                        max_top_ups_per_day: per_day,
                        max_credits_per_month: max_per_month,
                        ..Default::default()
                    }),
                })
                .await?
                .into_inner();
            let config = response.auto_replenish.unwrap_or_default();
            println!("auto-replenish on for {} below {}", config.account_id, config.threshold);
            Ok(())
        }
        TopUpCommand::AutoReplenishOff { account_id, client } => {
            connect(&client)
                .await?
                .disable_auto_replenish(pb::DisableAutoReplenishRequest { account_id: account_id.clone() })
                .await?;
            println!("auto-replenish off for {account_id}");
            Ok(())
        }
        TopUpCommand::Recurring {
            account_id,
            credits,
            interval,
            payment_method,
            expire_after_days,
            rollover,
            rollover_cap,
            rollover_expire_after_days,
            client,
        } => {
            let rollover =
                rollover.map(|mode| rollover_policy(mode, rollover_cap, rollover_expire_after_days)).transpose()?;
            let mode = if payment_method.is_some() { pb::RecurringMode::Paid } else { pb::RecurringMode::Granted };
            let interval = match interval {
                IntervalArg::Weekly => pb::Interval::Weekly,
                IntervalArg::Monthly => pb::Interval::Monthly,
            };
            let response = connect(&client)
                .await?
                .configure_recurring_top_up(pb::ConfigureRecurringTopUpRequest {
                    recurring_top_up: Some(pb::RecurringTopUp {
                        account_id,
                        credits,
                        interval: interval.into(),
                        mode: mode.into(),
                        payment_method_id: payment_method.unwrap_or_default(),
                        credits_expire_after_days: expire_after_days,
                        rollover,
                        ..Default::default()
                    }),
                })
                .await?
                .into_inner();
            let schedule = response.recurring_top_up.unwrap_or_default();
            println!("recurring top-up of {} for {}", schedule.credits, schedule.account_id);
            Ok(())
        }
    }
}
