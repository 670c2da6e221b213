//! Accounts, grants, debits, balances and ledgers, through the running
//! wallet service, printed as tables or JSON.

use clap::{Args, Subcommand, ValueEnum};
use comfy_table::Table;
use reservoir_common::time::to_timestamp;
use reservoir_proto::wallet as pb;
use serde_json::json;

use crate::client;

#[derive(Args, Clone)]
pub struct ClientArgs {
    /// The wallet service's address.
    #[arg(long, env = "RESERVOIR_ENDPOINT", default_value = "http://127.0.0.1:50051")]
    pub endpoint: String,
    /// The tenant's API key.
    #[arg(long, env = "RESERVOIR_API_KEY", hide_env_values = true)]
    pub api_key: String,
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

#[derive(Clone, Copy, ValueEnum)]
pub enum OverdraftArg {
    None,
    CreditLimit,
    Unlimited,
}

#[derive(Subcommand)]
pub enum AccountCommand {
    /// Open an account.
    Create {
        /// Your id for the customer.
        #[arg(long)]
        external_id: String,
        /// An ISO-4217 currency, or a custom credit unit with --scale, --price-per-credit and --billing-currency.
        #[arg(long, default_value = "USD")]
        unit: String,
        #[arg(long)]
        scale: Option<u32>,
        #[arg(long, default_value = "")]
        price_per_credit: String,
        #[arg(long, default_value = "")]
        billing_currency: String,
        #[arg(long, value_enum, default_value = "none")]
        overdraft: OverdraftArg,
        #[arg(long, default_value = "")]
        credit_limit: String,
        #[arg(long, default_value = "")]
        low_balance_threshold: String,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Show an account.
    Get {
        account_id: String,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// The tenant's accounts in the order they were opened, or the one that
    /// holds an external id.
    List {
        /// Only the account that holds this id of yours.
        #[arg(long, default_value = "")]
        external_id: String,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Shared budgets: a child account drawing on a parent's credits past its own.
    #[command(subcommand)]
    Budget(BudgetCommand),
}

#[derive(Subcommand)]
pub enum BudgetCommand {
    /// Let ACCOUNT draw on --parent's credits, up to --limit a day or month.
    Set {
        account_id: String,
        #[arg(long)]
        parent: String,
        /// The most drawn from the parent a period; omitted: no limit.
        #[arg(long, default_value = "")]
        limit: String,
        #[arg(long, value_enum, default_value = "month")]
        period: PeriodArg,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// End ACCOUNT's draws on its parent.
    Clear {
        account_id: String,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// A child's budget, or a parent's children, with what each drew this period.
    Show {
        account_id: String,
        #[command(flatten)]
        client: ClientArgs,
    },
}

#[derive(Clone, Copy, ValueEnum)]
pub enum PeriodArg {
    Day,
    Month,
}

fn budget_json(budget: &pb::Budget) -> serde_json::Value {
    json!({
        "account_id": budget.account_id,
        "parent_account_id": budget.parent_account_id,
        "limit": budget.limit,
        "period": pb::BudgetPeriod::try_from(budget.period).map(|p| p.as_str_name()).unwrap_or(""),
        "spent": budget.spent,
        "remaining": budget.remaining,
    })
}

fn print_budgets(budgets: &[pb::Budget], as_json: bool) -> anyhow::Result<()> {
    if as_json {
        let values: Vec<_> = budgets.iter().map(budget_json).collect();
        println!("{}", serde_json::to_string_pretty(&values)?);
        return Ok(());
    }
    let mut table = Table::new();
    table.set_header(["account", "parent", "limit", "period", "spent", "remaining"]);
    for budget in budgets {
        let period = pb::BudgetPeriod::try_from(budget.period).map(|p| p.as_str_name()).unwrap_or("");
        table.add_row([
            budget.account_id.clone(),
            budget.parent_account_id.clone(),
            budget.limit.clone(),
            crate::output::readable(period, "BUDGET_PERIOD_").to_owned(),
            budget.spent.clone(),
            budget.remaining.clone(),
        ]);
    }
    println!("{table}");
    Ok(())
}

async fn budget(command: BudgetCommand) -> anyhow::Result<()> {
    match command {
        BudgetCommand::Set { account_id, parent, limit, period, client } => {
            let period = match period {
                PeriodArg::Day => pb::BudgetPeriod::Day,
                PeriodArg::Month => pb::BudgetPeriod::Month,
            };
            let request = pb::SetBudgetRequest { account_id, parent_account_id: parent, limit, period: period.into() };
            let mut wallet = client::wallet(&client.endpoint, &client.api_key).await?;
            let budget = wallet.set_budget(request).await?.into_inner().budget.unwrap_or_default();
            print_budgets(&[budget], client.json)
        }
        BudgetCommand::Clear { account_id, client } => {
            let mut wallet = client::wallet(&client.endpoint, &client.api_key).await?;
            wallet.clear_budget(pb::ClearBudgetRequest { account_id }).await?;
            if !client.json {
                println!("cleared");
            }
            Ok(())
        }
        BudgetCommand::Show { account_id, client } => {
            let mut wallet = client::wallet(&client.endpoint, &client.api_key).await?;
            let spend = wallet.get_spend(pb::GetSpendRequest { account_id }).await?.into_inner();
            let budgets: Vec<pb::Budget> = spend.budget.into_iter().chain(spend.children).collect();
            print_budgets(&budgets, client.json)
        }
    }
}

#[derive(Clone, Copy, ValueEnum)]
enum KindArg {
    Paid,
    Promotional,
    Courtesy,
}

#[derive(Args)]
pub struct GrantArgs {
    account_id: String,
    amount: String,
    #[arg(long, value_enum, default_value = "paid")]
    kind: KindArg,
    /// RFC 3339 instant after which the credits no longer count.
    #[arg(long)]
    expires_at: Option<chrono::DateTime<chrono::Utc>>,
    #[arg(long)]
    priority: Option<i32>,
    /// Restrict the credits to these meters.
    #[arg(long = "meter")]
    meters: Vec<String>,
    /// Reuse a key to retry safely; a fresh one is made when omitted.
    #[arg(long)]
    idempotency_key: Option<String>,
    #[command(flatten)]
    client: ClientArgs,
}

#[derive(Args)]
pub struct DebitArgs {
    account_id: String,
    amount: String,
    #[arg(long, default_value = "")]
    meter: String,
    #[arg(long, default_value = "")]
    description: String,
    #[arg(long)]
    idempotency_key: Option<String>,
    #[command(flatten)]
    client: ClientArgs,
}

#[derive(Args)]
pub struct TransferArgs {
    from_account_id: String,
    to_account_id: String,
    amount: String,
    #[arg(long, default_value = "")]
    description: String,
    #[arg(long)]
    idempotency_key: Option<String>,
    #[command(flatten)]
    client: ClientArgs,
}

fn fresh_key() -> String {
    uuid::Uuid::now_v7().to_string()
}

/// An account as JSON, its enums by their readable names (NONE, ACTIVE).
fn account_json(account: &pb::Account) -> serde_json::Value {
    json!({
        "id": account.id, "external_id": account.external_id,
        "unit": account.unit.as_ref().map(|unit| unit.code.clone()).unwrap_or_default(),
        "overdraft_policy": overdraft_name(account.overdraft_policy), "credit_limit": account.credit_limit,
        "status": status_name(account.status), "low_balance_threshold": account.low_balance_threshold,
    })
}

fn overdraft_name(policy: i32) -> &'static str {
    let name = pb::OverdraftPolicy::try_from(policy).map(|p| p.as_str_name()).unwrap_or("?");
    crate::output::readable(name, "OVERDRAFT_POLICY_")
}

fn status_name(status: i32) -> &'static str {
    let name = pb::AccountStatus::try_from(status).map(|s| s.as_str_name()).unwrap_or("?");
    crate::output::readable(name, "ACCOUNT_STATUS_")
}

fn accounts_table(accounts: &[pb::Account]) -> Table {
    let mut table = Table::new();
    table.set_header(["id", "external id", "unit", "overdraft", "credit limit", "status"]);
    for account in accounts {
        table.add_row([
            account.id.clone(),
            account.external_id.clone(),
            account.unit.as_ref().map(|unit| unit.code.clone()).unwrap_or_default(),
            overdraft_name(account.overdraft_policy).to_owned(),
            account.credit_limit.clone(),
            status_name(account.status).to_owned(),
        ]);
    }
    table
}

fn print_account(account: &pb::Account, as_json: bool) -> anyhow::Result<()> {
    if as_json {
        println!("{}", serde_json::to_string_pretty(&account_json(account))?);
    } else {
        println!("{}", accounts_table(std::slice::from_ref(account)));
    }
    Ok(())
}

fn print_balance(balance: &pb::Balance, as_json: bool) -> anyhow::Result<()> {
    if as_json {
        println!(
            "{}",
            serde_json::to_string_pretty(&json!({
                "account_id": balance.account_id, "unit": balance.unit_code, "available": balance.available,
                "held": balance.held, "total": balance.total, "credit_limit": balance.credit_limit,
                "overdraft_used": balance.overdraft_used, "paid": balance.paid, "promotional": balance.promotional,
                "courtesy": balance.courtesy, "pending": balance.pending, "spendable": balance.spendable,
            }))?
        );
    } else {
        let mut table = Table::new();
        table.set_header(["available", "held", "total", "paid", "promotional", "courtesy", "overdraft used", "unit"]);
        table.add_row([
            balance.available.clone(),
            balance.held.clone(),
            balance.total.clone(),
            balance.paid.clone(),
            balance.promotional.clone(),
            balance.courtesy.clone(),
            balance.overdraft_used.clone(),
            balance.unit_code.clone(),
        ]);
        println!("{table}");
    }
    Ok(())
}

fn entry_kind_name(kind: i32) -> &'static str {
    pb::EntryKind::try_from(kind).map(|kind| kind.as_str_name().trim_start_matches("ENTRY_KIND_")).unwrap_or("?")
}

fn print_entries(entries: &[pb::LedgerEntry], as_json: bool) -> anyhow::Result<()> {
    if as_json {
        let rows: Vec<_> = entries
            .iter()
            .map(|entry| {
                json!({
                    "sequence": entry.sequence, "kind": entry_kind_name(entry.kind), "amount": entry.amount,
                    "grant_id": entry.grant_id, "hold_id": entry.hold_id, "balance_after": entry.balance_after,
                    "idempotency_key": entry.idempotency_key, "meter_code": entry.meter_code,
                    "description": entry.description, "created_at": entry.created_at.map(|t| t.to_string()),
                    "hash": entry.hash,
                })
            })
            .collect();
        println!("{}", serde_json::to_string_pretty(&rows)?);
    } else {
        let mut table = Table::new();
        table.set_header(["seq", "kind", "amount", "balance after", "grant", "meter", "description"]);
        for entry in entries {
            table.add_row([
                entry.sequence.to_string(),
                entry_kind_name(entry.kind).to_owned(),
                entry.amount.clone(),
                entry.balance_after.clone(),
                entry.grant_id.chars().rev().take(12).collect::<Vec<_>>().into_iter().rev().collect(),
                entry.meter_code.clone(),
                entry.description.clone(),
            ]);
        }
        println!("{table}");
    }
    Ok(())
}

pub async fn account(command: AccountCommand) -> anyhow::Result<()> {
    match command {
        AccountCommand::Create {
            external_id,
            unit,
            scale,
            price_per_credit,
            billing_currency,
            overdraft,
            credit_limit,
            low_balance_threshold,
            client,
        } => {
            let mut wallet = client::wallet(&client.endpoint, &client.api_key).await?;
            let policy = match overdraft {
                OverdraftArg::None => pb::OverdraftPolicy::None,
                OverdraftArg::CreditLimit => pb::OverdraftPolicy::CreditLimit,
                OverdraftArg::Unlimited => pb::OverdraftPolicy::Unlimited,
            };
            let response = wallet
                .create_account(pb::CreateAccountRequest {
                    external_id,
                    unit: Some(pb::Unit { code: unit, scale, price_per_credit, billing_currency }),
                    overdraft_policy: policy.into(),
                    credit_limit,
                    low_balance_threshold,
                    metadata: Default::default(),
                    idempotency_key: fresh_key(),
                })
                .await?
                .into_inner();
            print_account(&response.account.unwrap_or_default(), client.json)
        }
        AccountCommand::Budget(command) => budget(command).await,
        AccountCommand::Get { account_id, client } => {
            let mut wallet = client::wallet(&client.endpoint, &client.api_key).await?;
            let response = wallet.get_account(pb::GetAccountRequest { account_id }).await?.into_inner();
            print_account(&response.account.unwrap_or_default(), client.json)
        }
        AccountCommand::List { external_id, client } => {
            let mut wallet = client::wallet(&client.endpoint, &client.api_key).await?;
            let mut accounts = Vec::new();
            let mut page_token = String::new();
            loop {
                let request =
                    pb::ListAccountsRequest { page_size: 1_000, page_token, external_id: external_id.clone() };
                let page = wallet.list_accounts(request).await?.into_inner();
                accounts.extend(page.accounts);
                if page.next_page_token.is_empty() {
                    break;
                }
                page_token = page.next_page_token;
            }
            if client.json {
                let values: Vec<_> = accounts.iter().map(account_json).collect();
                println!("{}", serde_json::to_string_pretty(&values)?);
            } else {
                println!("{}", accounts_table(&accounts));
            }
            Ok(())
        }
    }
}

pub async fn grant(args: GrantArgs) -> anyhow::Result<()> {
    let mut wallet = client::wallet(&args.client.endpoint, &args.client.api_key).await?;
    let kind = match args.kind {
        KindArg::Paid => pb::GrantKind::Paid,
        KindArg::Promotional => pb::GrantKind::Promotional,
        KindArg::Courtesy => pb::GrantKind::Courtesy,
    };
    let response = wallet
        .grant_credits(pb::GrantCreditsRequest {
            account_id: args.account_id,
            amount: args.amount,
            kind: kind.into(),
            priority: args.priority,
            expires_at: args.expires_at.map(to_timestamp),
            meter_codes: args.meters,
            idempotency_key: args.idempotency_key.unwrap_or_else(fresh_key),
            ..Default::default()
        })
        .await?
        .into_inner();
    if !args.client.json {
        println!("grant {}", response.grant.as_ref().map(|grant| grant.id.as_str()).unwrap_or(""));
    }
    print_entries(&response.entries, args.client.json)?;
    print_balance(&response.balance.unwrap_or_default(), args.client.json)
}

pub async fn debit(args: DebitArgs) -> anyhow::Result<()> {
    let mut wallet = client::wallet(&args.client.endpoint, &args.client.api_key).await?;
    let response = wallet
        .debit(pb::DebitRequest {
            account_id: args.account_id,
            amount: args.amount,
            meter_code: args.meter,
            idempotency_key: args.idempotency_key.unwrap_or_else(fresh_key),
            description: args.description,
            ..Default::default()
        })
        .await?
        .into_inner();
    print_entries(&response.entries, args.client.json)?;
    print_balance(&response.balance.unwrap_or_default(), args.client.json)
}

/// A transfer: the sender's entries and balance, or the review a fraud rule
/// held it for (nothing moved).
pub async fn transfer(args: TransferArgs) -> anyhow::Result<()> {
    let mut wallet = client::wallet(&args.client.endpoint, &args.client.api_key).await?;
    let response = wallet
        .transfer(pb::TransferRequest {
            from_account_id: args.from_account_id,
            to_account_id: args.to_account_id,
            amount: args.amount,
            idempotency_key: args.idempotency_key.unwrap_or_else(fresh_key),
            description: args.description,
            ..Default::default()
        })
        .await?
        .into_inner();
    if let Some(review) = &response.review {
        if args.client.json {
            println!("{}", serde_json::to_string_pretty(&json!({"held": review.id, "rule": review.rule}))?);
        } else {
            println!("held for review {} ({}): nothing moved", review.id, review.rule);
        }
        return Ok(());
    }
    print_entries(&response.out_entries, args.client.json)?;
    print_balance(&response.from_balance.unwrap_or_default(), args.client.json)
}

pub async fn balance(account_id: String, client: ClientArgs) -> anyhow::Result<()> {
    let mut wallet = client::wallet(&client.endpoint, &client.api_key).await?;
    let response = wallet.get_balance(pb::GetBalanceRequest { account_id }).await?.into_inner();
    print_balance(&response.balance.unwrap_or_default(), client.json)
}

pub async fn ledger(account_id: String, limit: u32, client: ClientArgs) -> anyhow::Result<()> {
    let mut wallet = client::wallet(&client.endpoint, &client.api_key).await?;
    let mut entries = Vec::new();
    let mut page_token = String::new();
    while entries.len() < limit as usize {
        let page_size = (limit as usize - entries.len()).min(1_000) as u32;
        let response = wallet
            .list_ledger_entries(pb::ListLedgerEntriesRequest {
                account_id: account_id.clone(),
                page_size,
                page_token: page_token.clone(),
                ..Default::default()
            })
            .await?
            .into_inner();
        entries.extend(response.entries);
        if response.next_page_token.is_empty() {
            break;
        }
        page_token = response.next_page_token;
    }
    print_entries(&entries, client.json)
}
