//! `reservoir fraud …`: the tenant's fraud rules on transfers (the wallet)
//! and on charges (payments), what they held, and an operator's release or
//! rejection of a held transfer or payment.

use clap::{Args, Subcommand, ValueEnum};
use comfy_table::Table;
use reservoir_proto::payments as payments_pb;
use reservoir_proto::wallet as pb;
use serde_json::json;

use crate::accounts::ClientArgs;
use crate::billing::PaymentsArgs;
use crate::client;

#[derive(Clone, Copy, ValueEnum)]
pub enum ActionArg {
    /// Refuse a matching operation (FRAUD_SUSPECTED).
    Refuse,
    /// Hold it for an operator's review.
    Review,
}

#[derive(Clone, Copy, ValueEnum)]
pub enum DecisionArg {
    Release,
    Reject,
}

#[derive(Clone, Copy, ValueEnum)]
pub enum StatusArg {
    Held,
    Released,
    Rejected,
}

/// Transfer rules; none given shows the rules, any given replaces them all.
#[derive(Args)]
pub struct TransferRuleArgs {
    #[arg(long, value_enum)]
    action: Option<ActionArg>,
    /// The velocity window, in seconds.
    #[arg(long)]
    window: Option<u32>,
    /// Most transfers out of one account in the window.
    #[arg(long)]
    max_count: Option<u32>,
    /// Most amount out of one account in the window.
    #[arg(long)]
    max_amount: Option<String>,
    /// Most one transfer to a recipient that is still new.
    #[arg(long)]
    new_recipient_max: Option<String>,
    /// How long a recipient stays new, in seconds.
    #[arg(long)]
    cooling: Option<u32>,
    /// Turn every rule off.
    #[arg(long, conflicts_with_all = ["action", "window", "max_count", "max_amount", "new_recipient_max", "cooling"])]
    off: bool,
}

/// Charge rules; none given shows the rules, any given replaces them all.
#[derive(Args)]
pub struct ChargeRuleArgs {
    #[arg(long, value_enum)]
    action: Option<ActionArg>,
    /// The velocity window, in seconds.
    #[arg(long)]
    window: Option<u32>,
    /// Most charges for one account in the window, and most amount.
    #[arg(long)]
    account_max_count: Option<u32>,
    #[arg(long)]
    account_max_amount: Option<String>,
    /// Most charges with one payment method in the window, and most amount.
    #[arg(long)]
    method_max_count: Option<u32>,
    #[arg(long)]
    method_max_amount: Option<String>,
    /// Declines of one card after which it is not charged again, within --decline-window seconds.
    #[arg(long)]
    max_declines: Option<u32>,
    #[arg(long)]
    decline_window: Option<u32>,
    /// Turn every rule off.
    #[arg(long)]
    off: bool,
}

#[derive(Subcommand)]
pub enum FraudCommand {
    /// The tenant's rules on transfers; any flag replaces them (an ADMIN key).
    TransferRules {
        #[command(flatten)]
        rules: TransferRuleArgs,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Transfers held for review, newest first.
    Transfers {
        #[arg(long, value_enum)]
        status: Option<StatusArg>,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Release a held transfer (it is made then) or reject it (nothing moves).
    ReviewTransfer {
        review_id: String,
        #[arg(long, value_enum)]
        decision: DecisionArg,
        #[arg(long, default_value = "")]
        reason: String,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// The tenant's rules on charges; any flag replaces them (an ADMIN key).
    ChargeRules {
        #[command(flatten)]
        rules: ChargeRuleArgs,
        #[command(flatten)]
        client: PaymentsArgs,
    },
    /// Charges the rules refused or held, and what became of the held ones.
    Decisions {
        #[command(flatten)]
        client: PaymentsArgs,
    },
    /// Release a held payment (it is charged then) or reject it (declined, nothing charged).
    ReviewPayment {
        payment_id: String,
        #[arg(long, value_enum)]
        decision: DecisionArg,
        #[arg(long, default_value = "")]
        reason: String,
        #[command(flatten)]
        client: PaymentsArgs,
    },
}

fn action(action: Option<ActionArg>) -> i32 {
    match action {
        Some(ActionArg::Review) => pb::FraudAction::Review.into(),
        Some(ActionArg::Refuse) | None => pb::FraudAction::Refuse.into(),
    }
}

fn print_json(value: &serde_json::Value) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string_pretty(value)?);
    Ok(())
}

fn transfer_rules_json(rules: Option<&pb::TransferFraudRules>) -> serde_json::Value {
    rules.map_or(json!(null), |rules| {
        json!({
            "action": pb::FraudAction::try_from(rules.action).map(|a| a.as_str_name()).unwrap_or(""),
            "velocity_window_seconds": rules.velocity_window_seconds,
            "velocity_max_count": rules.velocity_max_count,
            "velocity_max_amount": rules.velocity_max_amount,
            "new_recipient_max_amount": rules.new_recipient_max_amount,
            "new_recipient_cooling_seconds": rules.new_recipient_cooling_seconds,
        })
    })
}

fn charge_rules_json(rules: Option<&payments_pb::ChargeFraudRules>) -> serde_json::Value {
    rules.map_or(json!(null), |rules| {
        json!({
            "action": payments_pb::FraudAction::try_from(rules.action).map(|a| a.as_str_name()).unwrap_or(""),
            "velocity_window_seconds": rules.velocity_window_seconds,
            "account_max_count": rules.account_max_count,
            "account_max_amount": rules.account_max_amount,
            "method_max_count": rules.method_max_count,
            "method_max_amount": rules.method_max_amount,
            "max_declines": rules.max_declines,
            "decline_window_seconds": rules.decline_window_seconds,
        })
    })
}

fn review_json(review: &pb::TransferReview) -> serde_json::Value {
    json!({
        "id": review.id,
        "from_account_id": review.from_account_id,
        "to_account_id": review.to_account_id,
        "amount": review.amount,
        "rule": review.rule,
        "status": pb::ReviewStatus::try_from(review.status).map(|s| s.as_str_name()).unwrap_or(""),
        "reason": review.reason,
    })
}

pub async fn fraud(command: FraudCommand) -> anyhow::Result<()> {
    match command {
        FraudCommand::TransferRules { rules, client } => {
            let mut wallet = client::wallet(&client.endpoint, &client.api_key).await?;
            let given = rules.off
                || rules.action.is_some()
                || rules.window.is_some()
                || rules.max_count.is_some()
                || rules.max_amount.is_some()
                || rules.new_recipient_max.is_some()
                || rules.cooling.is_some();
            let settings = if given {
                let wanted = pb::TransferFraudRules {
                    action: action(rules.action),
                    velocity_window_seconds: rules.window.unwrap_or(0),
                    velocity_max_count: rules.max_count.unwrap_or(0),
                    velocity_max_amount: rules.max_amount.unwrap_or_default(),
                    new_recipient_max_amount: rules.new_recipient_max.unwrap_or_default(),
                    new_recipient_cooling_seconds: rules.cooling.unwrap_or(0),
                };
                let request = pb::UpdateTenantSettingsRequest { transfer_fraud: Some(wanted), ..Default::default() };
                wallet.update_tenant_settings(request).await?.into_inner().settings
            } else {
                wallet.get_tenant_settings(pb::GetTenantSettingsRequest {}).await?.into_inner().settings
            };
            print_json(&transfer_rules_json(settings.unwrap_or_default().transfer_fraud.as_ref()))
        }
        FraudCommand::Transfers { status, client } => {
            let status = match status {
                None => pb::ReviewStatus::Unspecified,
                Some(StatusArg::Held) => pb::ReviewStatus::Held,
                Some(StatusArg::Released) => pb::ReviewStatus::Released,
                Some(StatusArg::Rejected) => pb::ReviewStatus::Rejected,
            };
            let mut wallet = client::wallet(&client.endpoint, &client.api_key).await?;
            let request =
                pb::ListTransferReviewsRequest { status: status.into(), page_size: 1_000, ..Default::default() };
            let reviews = wallet.list_transfer_reviews(request).await?.into_inner().reviews;
            if client.json {
                return print_json(&json!(reviews.iter().map(review_json).collect::<Vec<_>>()));
            }
            let mut table = Table::new();
            table.set_header(["review", "from", "to", "amount", "rule", "status", "reason"]);
            for review in &reviews {
                let status = pb::ReviewStatus::try_from(review.status).map(|s| s.as_str_name()).unwrap_or("");
                table.add_row([
                    review.id.clone(),
                    review.from_account_id.clone(),
                    review.to_account_id.clone(),
                    review.amount.clone(),
                    review.rule.clone(),
                    crate::output::readable(status, "REVIEW_STATUS_").to_owned(),
                    review.reason.clone(),
                ]);
            }
            println!("{table}");
            Ok(())
        }
        FraudCommand::ReviewTransfer { review_id, decision, reason, client } => {
            let decision = match decision {
                DecisionArg::Release => pb::ReviewDecision::Release,
                DecisionArg::Reject => pb::ReviewDecision::Reject,
            };
            let mut wallet = client::wallet(&client.endpoint, &client.api_key).await?;
            let request = pb::ReviewTransferRequest { review_id, decision: decision.into(), reason };
            let review = wallet.review_transfer(request).await?.into_inner().review.unwrap_or_default();
            print_json(&review_json(&review))
        }
        FraudCommand::ChargeRules { rules, client } => {
            let mut payments = client.client().await?;
            let given = rules.off
                || rules.action.is_some()
                || rules.window.is_some()
                || rules.account_max_count.is_some()
                || rules.account_max_amount.is_some()
                || rules.method_max_count.is_some()
                || rules.method_max_amount.is_some()
                || rules.max_declines.is_some()
                || rules.decline_window.is_some();
            let shown = if given {
                let wanted = (!rules.off).then(|| payments_pb::ChargeFraudRules {
                    action: action(rules.action),
                    velocity_window_seconds: rules.window.unwrap_or(0),
                    account_max_count: rules.account_max_count.unwrap_or(0),
                    account_max_amount: rules.account_max_amount.unwrap_or_default(),
                    method_max_count: rules.method_max_count.unwrap_or(0),
                    method_max_amount: rules.method_max_amount.unwrap_or_default(),
                    max_declines: rules.max_declines.unwrap_or(0),
                    decline_window_seconds: rules.decline_window.unwrap_or(0),
                });
                let request = payments_pb::UpdateFraudRulesRequest { rules: wanted };
                payments.update_fraud_rules(request).await?.into_inner().rules
            } else {
                payments.get_fraud_rules(payments_pb::GetFraudRulesRequest {}).await?.into_inner().rules
            };
            print_json(&charge_rules_json(shown.as_ref()))
        }
        FraudCommand::Decisions { client } => {
            let mut payments = client.client().await?;
            let request = payments_pb::ListFraudDecisionsRequest { page_size: 1_000, ..Default::default() };
            let decisions = payments.list_fraud_decisions(request).await?.into_inner().decisions;
            if client.json {
                let values: Vec<_> = decisions
                    .iter()
                    .map(|decision| {
                        json!({
                            "account_id": decision.account_id,
                            "payment_id": decision.payment_id,
                            "amount": decision.amount,
                            "currency": decision.currency,
                            "rule": decision.rule,
                            "decision": decision.decision,
                            "reason": decision.reason,
                        })
                    })
                    .collect();
                return print_json(&json!(values));
            }
            let mut table = Table::new();
            table.set_header(["account", "payment", "amount", "rule", "decision", "reason"]);
            for decision in &decisions {
                table.add_row([
                    decision.account_id.clone(),
                    decision.payment_id.clone(),
                    format!("{} {}", decision.amount, decision.currency),
                    decision.rule.clone(),
                    decision.decision.clone(),
                    decision.reason.clone(),
                ]);
            }
            println!("{table}");
            Ok(())
        }
        FraudCommand::ReviewPayment { payment_id, decision, reason, client } => {
            let decision = match decision {
                DecisionArg::Release => payments_pb::ReviewDecision::Release,
                DecisionArg::Reject => payments_pb::ReviewDecision::Reject,
            };
            let mut payments = client.client().await?;
            let request = payments_pb::ReviewPaymentRequest { payment_id, decision: decision.into(), reason };
            let payment = payments.review_payment(request).await?.into_inner().payment.unwrap_or_default();
            print_json(&json!({
                "id": payment.id,
                "status": payments_pb::PaymentStatus::try_from(payment.status).map(|s| s.as_str_name()).unwrap_or(""),
                "failure_code": payment.failure_code,
            }))
        }
    }
}
