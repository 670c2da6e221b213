//! gRPC handlers: they check the request, ask the domain through the store,
//! and translate the answer. No rule about money lives here.

mod convert;
mod reports;
mod respond;
mod units;
mod validate;

use std::pin::Pin;
use std::time::Duration;

use chrono::{DateTime, Utc};
use futures::Stream;
use prost::Message;
use reservoir_common::auth::{Caller, KeyId, TenantId, caller_of, key_of, tenant_of};
use reservoir_common::money::{Unit, non_negative, positive};
use reservoir_common::paging::Page;
use reservoir_proto::wallet as pb;
use reservoir_proto::wallet::wallet_service_server::WalletService;
use rust_decimal::Decimal;
use tokio::sync::watch;
use tonic::{Request, Response, Status};

pub use self::validate::*;
use crate::domain::*;
use crate::error::WalletError;
use crate::store::{EntryFilter, EventRecord, IdempotencyCheck, LoadPlan, Loaded, Reply, Store, Submitted};

/// How often an idle event stream looks for events written by other replicas;
/// events written by this process wake it at once.
const EVENT_POLL_INTERVAL: Duration = Duration::from_millis(250);
/// Events read per query of a stream.
const EVENT_BATCH: usize = 500;

#[derive(Clone)]
pub struct WalletApi {
    store: Store,
    units: units::Units,
    /// Turns true when the server stops, ending open event streams so the
    /// graceful shutdown is not held open by them.
    stopping: watch::Receiver<bool>,
}

impl WalletApi {
    pub fn new(store: Store, stopping: watch::Receiver<bool>) -> Self {
        Self { units: units::Units::start(store.clone()), store, stopping }
    }

    fn balance_of(wallet: &Wallet, now: DateTime<Utc>) -> pb::Balance {
        convert::balance(wallet.account.id, &wallet.account.unit, &wallet.balance(now))
    }

    async fn unit_of(&self, tenant: TenantId, account_id: AccountId) -> Result<Unit, WalletError> {
        self.units.of(tenant, account_id).await
    }

    /// Fetches, in one query, the units of those accounts not yet remembered.
    async fn learn_units(&self, tenant: TenantId, accounts: Vec<AccountId>) -> Result<(), WalletError> {
        self.units.learn(tenant, accounts).await
    }

    /// One debit, as Debit and each element of BatchDebit run it.
    pub async fn debit_one(
        &self,
        tenant: TenantId,
        key: Option<KeyId>,
        request: pb::DebitRequest,
    ) -> Result<pb::DebitResponse, WalletError> {
        let mut violations = Violations::default();
        let account_id = violations.id("account_id", &request.account_id, AccountId);
        violations.idempotency_key("idempotency_key", &request.idempotency_key);
        violations.meter_code("meter_code", &request.meter_code);
        violations.text("description", &request.description, DESCRIPTION_LENGTH_MAX);
        violations.text("correlation_id", &request.correlation_id, ID_LENGTH_MAX);
        check_metadata(&mut violations, "metadata", &request.metadata);
        if request.amount.is_empty() {
            violations.add("amount", "is required");
        }
        violations.finish()?;
        let Some(account_id) = account_id else {
            return Err(WalletError::internal("validated id missing"));
        };
        let check = idempotency_check(tenant, "Debit", &request.idempotency_key, &request);
        let unit = self.unit_of(tenant, account_id).await?;
        let mut violations = Violations::default();
        let amount = violations.positive_amount("amount", &unit, &request.amount);
        violations.finish()?;
        let amount = amount.unwrap_or_default();
        let now = now();
        let mut ctx = OperationContext::new(now, request.idempotency_key.clone()).with_key(key);
        ctx.correlation_id = request.correlation_id.clone();
        ctx.description = request.description.clone();
        ctx.metadata = request.metadata.clone();
        let meter = (!request.meter_code.is_empty()).then(|| request.meter_code.clone());
        // Debits go through the group committer; it checks the key under the
        // account's lock, so a retry replays the original result.
        let reply =
            self.store.submit(tenant, account_id, check, ctx, Command::Debit { amount, meter_code: meter }).await?;
        respond::respond(reply, |answer| respond::debit(answer, &unit))
    }

    /// One line of DrawUsage, checked and made a command for the group committer.
    async fn check_line(
        &self,
        tenant: TenantId,
        key: Option<KeyId>,
        line: pb::UsageLine,
    ) -> Result<(Submitted, Unit), WalletError> {
        let mut violations = Violations::default();
        let account_id = violations.id("account_id", &line.account_id, AccountId);
        violations.idempotency_key("idempotency_key", &line.idempotency_key);
        violations.meter_code("meter_code", &line.meter_code);
        if line.meter_code.is_empty() {
            violations.add("meter_code", "is required");
        }
        violations.text("reference", &line.reference, ID_LENGTH_MAX);
        if line.amounts.is_empty() || line.amounts.len() > USAGE_LINE_AMOUNTS_MAX {
            violations.add("amounts", format!("must hold 1 to {USAGE_LINE_AMOUNTS_MAX} amounts"));
        }
        violations.finish()?;
        let Some(account_id) = account_id else {
            return Err(WalletError::internal("validated id missing"));
        };
        let check = idempotency_check(tenant, "DrawUsage", &line.idempotency_key, &line);
        let unit = self.unit_of(tenant, account_id).await?;
        let mut violations = Violations::default();
        let amounts: Vec<Decimal> = line
            .amounts
            .iter()
            .enumerate()
            .filter_map(|(index, text)| violations.positive_amount(&format!("amounts[{index}]"), &unit, text))
            .collect();
        violations.finish()?;
        let now = now();
        let mut ctx = OperationContext::new(now, line.idempotency_key.clone()).with_key(key);
        ctx.correlation_id = line.reference.clone();
        ctx.description = format!("usage of {}", line.meter_code);
        let command = Command::DrawUsage { meter_code: line.meter_code.clone(), amounts };
        Ok((Submitted { tenant, account: account_id, check, ctx, command }, unit))
    }

    /// Runs a change of one wallet under its key and builds the response
    /// from its answer (or from the recorded one on a replay).
    #[allow(clippy::too_many_arguments)]
    async fn change<M: Message + Default>(
        &self,
        tenant: TenantId,
        account_id: AccountId,
        check: &IdempotencyCheck,
        plan: &LoadPlan,
        now: DateTime<Utc>,
        operate: impl FnOnce(&mut Loaded) -> Result<Answer, WalletError>,
        build: impl FnOnce(&Answer) -> Result<M, WalletError>,
    ) -> Result<M, WalletError> {
        let reply = self.store.mutate(tenant, account_id, Some(check), plan, now, operate).await?;
        respond::respond(reply, build)
    }

    /// A retry of a finished call, answered from its record without touching the wallet.
    async fn replay<M: Message + Default>(
        &self,
        tenant: TenantId,
        check: &IdempotencyCheck,
        build: impl FnOnce(&Answer, &Unit) -> Result<M, WalletError>,
    ) -> Result<Option<M>, WalletError> {
        let Some(reply) = self.store.replay_only(tenant, check).await? else {
            return Ok(None);
        };
        let unit = match &reply {
            Reply::Answer(answer) => match answer.wallets.first() {
                Some(part) => Some(self.unit_of(tenant, part.account_id).await?),
                None => None,
            },
            Reply::Legacy(_) => None,
        };
        respond::respond(reply, |answer| match &unit {
            Some(unit) => build(answer, unit),
            None => Err(WalletError::internal("a replayed answer names no wallet")),
        })
        .map(Some)
    }
}

/// One debit's (or usage line's) failure among others that may succeed.
fn debit_error(error: WalletError) -> pb::DebitError {
    let fields = match &error {
        WalletError::InvalidArgument(violations) => violations.iter().map(|v| v.field.clone()).collect(),
        _ => Vec::new(),
    };
    if matches!(error, WalletError::Internal(_) | WalletError::Domain(DomainError::Inconsistent(_))) {
        // Logged once, whole; the caller gets no internals.
        let _ = Status::from(WalletError::internal(error.to_string()));
    }
    let message = match &error {
        WalletError::Internal(_) | WalletError::Domain(DomainError::Inconsistent(_)) => "internal error".to_owned(),
        other => other.to_string(),
    };
    pb::DebitError { code: error.code() as i32, reason: error.reason().to_owned(), message, fields }
}

/// The answer of a change to a hold: the hold as it stands, the entries and the balance.
fn hold_answer(wallet: &Wallet, ctx: &OperationContext, hold_id: HoldId) -> Result<Answer, WalletError> {
    let hold = wallet.hold_by_id(hold_id).ok_or(DomainError::Inconsistent("the hold is missing"))?;
    Ok(Answer { hold: Some(hold.clone()), wallets: vec![WalletAnswer::of(wallet, ctx)], ..Answer::at(ctx.now) })
}

fn overdraft_from(
    violations: &mut Violations,
    policy: i32,
    credit_limit: &str,
    unit: &Unit,
    default: Option<Overdraft>,
) -> Option<Overdraft> {
    let limit_given = !credit_limit.is_empty() && unit.parse(credit_limit).is_ok_and(|limit| !limit.is_zero());
    match pb::OverdraftPolicy::try_from(policy) {
        Ok(pb::OverdraftPolicy::Unspecified) if default.is_some() => {
            if limit_given {
                violations.add("credit_limit", "goes with overdraft_policy CREDIT_LIMIT only");
            }
            default
        }
        Ok(pb::OverdraftPolicy::None) | Ok(pb::OverdraftPolicy::Unlimited) if limit_given => {
            violations.add(
                "credit_limit",
                "goes with overdraft_policy CREDIT_LIMIT only; CREDIT_LIMIT and UNLIMITED are exclusive",
            );
            None
        }
        Ok(pb::OverdraftPolicy::None) => Some(Overdraft::None),
        Ok(pb::OverdraftPolicy::Unlimited) => Some(Overdraft::Unlimited),
        Ok(pb::OverdraftPolicy::CreditLimit) => violations
            .amount_with("credit_limit", credit_limit, |text| unit.parse(text).and_then(positive))
            .map(Overdraft::CreditLimit),
        Ok(pb::OverdraftPolicy::Unspecified) | Err(_) => {
            violations.add("overdraft_policy", "must be NONE, CREDIT_LIMIT or UNLIMITED");
            None
        }
    }
}

fn threshold_from(violations: &mut Violations, text: &str, unit: &Unit) -> Option<Decimal> {
    optional_amount(violations, "low_balance_threshold", text, unit, false)
}

/// A limit that "" removes: non-negative, or positive when `positive_only`.
fn optional_amount(
    violations: &mut Violations,
    field: &str,
    text: &str,
    unit: &Unit,
    positive_only: bool,
) -> Option<Decimal> {
    if text.is_empty() {
        return None;
    }
    let check = if positive_only { positive } else { non_negative };
    violations.amount_with(field, text, |text| unit.parse(text).and_then(check))
}

fn unit_from(violations: &mut Violations, unit: Option<&pb::Unit>) -> Option<Unit> {
    let Some(unit) = unit else {
        violations.add("unit", "is required");
        return None;
    };
    if unit.code.is_empty() {
        violations.add("unit.code", "is required");
        return None;
    }
    match Unit::from_parts(&unit.code, unit.scale, &unit.price_per_credit, &unit.billing_currency) {
        Ok(unit) => Some(unit),
        Err(error) => {
            violations.add("unit", error.to_string());
            None
        }
    }
}

fn account_status_from(violations: &mut Violations, status: i32) -> Option<AccountStatus> {
    match pb::AccountStatus::try_from(status) {
        Ok(pb::AccountStatus::Active) => Some(AccountStatus::Active),
        Ok(pb::AccountStatus::Suspended) => Some(AccountStatus::Suspended),
        Ok(pb::AccountStatus::Closed) => Some(AccountStatus::Closed),
        Ok(pb::AccountStatus::Unspecified) | Err(_) => {
            violations.add("status", "must be ACTIVE, SUSPENDED or CLOSED");
            None
        }
    }
}

fn entry_kind_from(kind: i32) -> Option<EntryKind> {
    EntryKind::ALL.into_iter().find(|candidate| i32::from(convert::entry_kind(*candidate)) == kind)
}

type EventStream = Pin<Box<dyn Stream<Item = Result<pb::WatchEventsResponse, Status>> + Send>>;

#[tonic::async_trait]
impl WalletService for WalletApi {
    async fn create_account(
        &self,
        request: Request<pb::CreateAccountRequest>,
    ) -> Result<Response<pb::CreateAccountResponse>, Status> {
        let tenant = tenant_of(&request)?;
        let key = key_of(&request);
        let request = request.into_inner();
        let mut violations = Violations::default();
        violations.required_text("external_id", &request.external_id, ID_LENGTH_MAX);
        violations.idempotency_key("idempotency_key", &request.idempotency_key);
        check_metadata(&mut violations, "metadata", &request.metadata);
        let unit = unit_from(&mut violations, request.unit.as_ref());
        let (overdraft, threshold) = match &unit {
            Some(unit) => (
                overdraft_from(
                    &mut violations,
                    request.overdraft_policy,
                    &request.credit_limit,
                    unit,
                    Some(Overdraft::None),
                ),
                threshold_from(&mut violations, &request.low_balance_threshold, unit),
            ),
            None => (None, None),
        };
        violations.finish()?;
        let (Some(unit), Some(overdraft)) = (unit, overdraft) else {
            return Err(WalletError::internal("validated fields missing").into());
        };
        let check = idempotency_check(tenant, "CreateAccount", &request.idempotency_key, &request);
        let now = now();
        let ctx = OperationContext::new(now, request.idempotency_key.clone()).with_key(key);
        let wallet = Wallet::open(
            NewAccount {
                tenant_id: tenant,
                external_id: request.external_id.clone(),
                unit,
                overdraft,
                low_balance_threshold: threshold,
                metadata: request.metadata.clone(),
            },
            &ctx,
        );
        let reply = self
            .store
            .create_account(&check, wallet, |wallet| Answer {
                account: Some(wallet.account.clone()),
                ..Answer::at(now)
            })
            .await?;
        Ok(Response::new(respond::respond(reply, respond::create_account)?))
    }

    async fn get_account(
        &self,
        request: Request<pb::GetAccountRequest>,
    ) -> Result<Response<pb::GetAccountResponse>, Status> {
        let tenant = tenant_of(&request)?;
        let request = request.into_inner();
        let mut violations = Violations::default();
        let account_id = violations.id("account_id", &request.account_id, AccountId);
        violations.finish()?;
        let account = self.store.account(tenant, account_id.unwrap_or(AccountId(uuid::Uuid::nil()))).await?;
        Ok(Response::new(pb::GetAccountResponse { account: Some(convert::account(&account)) }))
    }

    async fn get_unit(&self, request: Request<pb::GetUnitRequest>) -> Result<Response<pb::GetUnitResponse>, Status> {
        let tenant = tenant_of(&request)?;
        let request = request.into_inner();
        let mut violations = Violations::default();
        // A code no unit could have is refused, not looked up.
        violations.required_text("unit_code", &request.unit_code, ID_LENGTH_MAX);
        let well_formed = request.unit_code.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
        if !request.unit_code.is_empty() && !well_formed {
            violations.add("unit_code", "is letters, digits and underscores");
        }
        violations.finish()?;
        let unit = self.store.unit_held(tenant, &request.unit_code).await?.ok_or(WalletError::NotFound("unit"))?;
        Ok(Response::new(pb::GetUnitResponse { unit: Some(convert::unit(&unit)) }))
    }

    async fn list_accounts(
        &self,
        request: Request<pb::ListAccountsRequest>,
    ) -> Result<Response<pb::ListAccountsResponse>, Status> {
        let tenant = tenant_of(&request)?;
        let request = request.into_inner();
        let mut violations = Violations::default();
        let page = Page::<uuid::Uuid>::of(&mut violations, request.page_size, &request.page_token, &());
        violations.finish()?;
        let accounts = self.store.accounts_page(tenant, page.after.map(AccountId), page.rows_to_read()).await?;
        let (accounts, next_page_token) = page.finish(accounts, |account| account.id.0);
        Ok(Response::new(pb::ListAccountsResponse {
            accounts: accounts.iter().map(convert::account).collect(),
            next_page_token,
        }))
    }

    async fn update_account(
        &self,
        request: Request<pb::UpdateAccountRequest>,
    ) -> Result<Response<pb::UpdateAccountResponse>, Status> {
        let tenant = tenant_of(&request)?;
        let key = key_of(&request);
        let request = request.into_inner();
        let mut violations = Violations::default();
        let account_id = violations.id("account_id", &request.account_id, AccountId);
        violations.idempotency_key("idempotency_key", &request.idempotency_key);
        violations.finish()?;
        let account_id = account_id.unwrap_or(AccountId(uuid::Uuid::nil()));
        let check = idempotency_check(tenant, "UpdateAccount", &request.idempotency_key, &request);
        if let Some(reply) = self.store.replay_only(tenant, &check).await? {
            return Ok(Response::new(respond::respond(reply, respond::update_account)?));
        }
        let unit = self.unit_of(tenant, account_id).await?;
        let mut violations = Violations::default();
        let update = AccountUpdate {
            status: request.status.and_then(|status| account_status_from(&mut violations, status)),
            overdraft: request
                .overdraft_policy
                .and_then(|policy| overdraft_from(&mut violations, policy, &request.credit_limit, &unit, None)),
            low_balance_threshold: request
                .low_balance_threshold
                .as_deref()
                .map(|text| threshold_from(&mut violations, text, &unit)),
            credit_blocked: request.credit_blocked,
            monthly_cap: request
                .monthly_spending_cap
                .as_deref()
                .map(|text| optional_amount(&mut violations, "monthly_spending_cap", text, &unit, false)),
            low_balance_warning: request
                .low_balance_warning
                .as_deref()
                .map(|text| optional_amount(&mut violations, "low_balance_warning", text, &unit, false)),
            transfer_max: request
                .transfer_max_amount
                .as_deref()
                .map(|text| optional_amount(&mut violations, "transfer_max_amount", text, &unit, true)),
            transfer_daily_limit: request
                .transfer_daily_limit
                .as_deref()
                .map(|text| optional_amount(&mut violations, "transfer_daily_limit", text, &unit, true)),
        };
        if request.overdraft_policy.is_none() && !request.credit_limit.is_empty() {
            violations.add("credit_limit", "is set together with overdraft_policy");
        }
        violations.finish()?;
        let now = now();
        let ctx = OperationContext::new(now, request.idempotency_key.clone()).with_key(key);
        let response = self
            .change(
                tenant,
                account_id,
                &check,
                &LoadPlan::default(),
                now,
                |loaded| {
                    loaded.wallet.update(&ctx, update)?;
                    Ok(Answer { account: Some(loaded.wallet.account.clone()), ..Answer::at(now) })
                },
                respond::update_account,
            )
            .await?;
        Ok(Response::new(response))
    }

    async fn grant_credits(
        &self,
        request: Request<pb::GrantCreditsRequest>,
    ) -> Result<Response<pb::GrantCreditsResponse>, Status> {
        let tenant = tenant_of(&request)?;
        let key = key_of(&request);
        let request = request.into_inner();
        let mut violations = Violations::default();
        let account_id = violations.id("account_id", &request.account_id, AccountId);
        violations.idempotency_key("idempotency_key", &request.idempotency_key);
        check_metadata(&mut violations, "metadata", &request.metadata);
        violations.text("source_reference", &request.source_reference, ID_LENGTH_MAX);
        violations.text("correlation_id", &request.correlation_id, ID_LENGTH_MAX);
        if request.meter_codes.len() > METER_CODES_MAX {
            violations.add("meter_codes", format!("has more than {METER_CODES_MAX} codes"));
        }
        for (index, code) in request.meter_codes.iter().enumerate() {
            if code.is_empty() {
                violations.add(format!("meter_codes[{index}]"), "is empty");
            }
            violations.meter_code(&format!("meter_codes[{index}]"), code);
        }
        let kind = match pb::GrantKind::try_from(request.kind) {
            Ok(pb::GrantKind::Paid) => Some(GrantKind::Paid),
            Ok(pb::GrantKind::Promotional) => Some(GrantKind::Promotional),
            Ok(pb::GrantKind::Courtesy) => Some(GrantKind::Courtesy),
            Ok(pb::GrantKind::Unspecified) | Err(_) => {
                violations.add("kind", "must be PAID, PROMOTIONAL or COURTESY");
                None
            }
        };
        let source = match pb::GrantSource::try_from(request.source) {
            Ok(pb::GrantSource::Unspecified | pb::GrantSource::Admin) => GrantSource::Admin,
            Ok(pb::GrantSource::Invoice) => GrantSource::Invoice,
            Ok(pb::GrantSource::Voucher) => GrantSource::Voucher,
            Ok(pb::GrantSource::Adjustment) => GrantSource::Adjustment,
            Ok(pb::GrantSource::Transfer) => {
                violations.add("source", "TRANSFER is set by Transfer only");
                GrantSource::Admin
            }
            Err(_) => {
                violations.add("source", "is not a known source");
                GrantSource::Admin
            }
        };
        if let Some(priority) = request.priority
            && !(0..=PRIORITY_MAX).contains(&priority)
        {
            violations.add("priority", format!("must be 0 to {PRIORITY_MAX}"));
        }
        let now = now();
        let effective_at = violations.time("effective_at", request.effective_at.as_ref());
        let expires_at = violations.time("expires_at", request.expires_at.as_ref());
        if let Some(expires) = expires_at
            && expires <= effective_at.unwrap_or(now).max(now)
        {
            violations.add("expires_at", "must be later than now and than effective_at");
        }
        if request.amount.is_empty() {
            violations.add("amount", "is required");
        }
        violations.finish()?;
        let account_id = account_id.unwrap_or(AccountId(uuid::Uuid::nil()));
        // The group committer checks the key under the account's lock.
        let check = idempotency_check(tenant, "GrantCredits", &request.idempotency_key, &request);
        let unit = self.unit_of(tenant, account_id).await?;
        let mut violations = Violations::default();
        let amount = violations.positive_amount("amount", &unit, &request.amount);
        violations.finish()?;
        let new = NewGrant {
            amount: amount.unwrap_or_default(),
            kind: kind.unwrap_or(GrantKind::Paid),
            priority: request.priority,
            effective_at,
            expires_at,
            meter_codes: request.meter_codes.clone(),
            source,
            source_reference: request.source_reference.clone(),
            metadata: request.metadata.clone(),
        };
        let mut ctx = OperationContext::new(now, request.idempotency_key.clone()).with_key(key);
        ctx.correlation_id = request.correlation_id.clone();
        ctx.metadata = request.metadata.clone();
        // Through the group committer, like debits: grants need only the live wallet.
        let reply = self.store.submit(tenant, account_id, check, ctx, Command::Grant(new)).await?;
        Ok(Response::new(respond::respond(reply, |answer| respond::grant(answer, &unit))?))
    }

    async fn debit(&self, request: Request<pb::DebitRequest>) -> Result<Response<pb::DebitResponse>, Status> {
        let tenant = tenant_of(&request)?;
        Ok(Response::new(self.debit_one(tenant, key_of(&request), request.into_inner()).await?))
    }

    async fn batch_debit(
        &self,
        request: Request<pb::BatchDebitRequest>,
    ) -> Result<Response<pb::BatchDebitResponse>, Status> {
        let tenant = tenant_of(&request)?;
        let key = key_of(&request);
        let request = request.into_inner();
        if request.debits.is_empty() || request.debits.len() > BATCH_DEBITS_MAX {
            return Err(WalletError::field("debits", format!("must hold 1 to {BATCH_DEBITS_MAX} debits")).into());
        }
        // Every account's unit first, in one query, so that below each debit
        // reaches the committer in the order given without waiting on
        // anything. An unknown account fails its own debits, with their results.
        let accounts: std::collections::BTreeSet<uuid::Uuid> =
            request.debits.iter().filter_map(|debit| uuid::Uuid::parse_str(&debit.account_id).ok()).collect();
        self.learn_units(tenant, accounts.into_iter().map(AccountId).collect()).await?;
        // All at once, so the group committer takes them in few transactions;
        // each keeps its own result, in the order given.
        let answers =
            futures::future::join_all(request.debits.into_iter().map(|debit| self.debit_one(tenant, key, debit))).await;
        let mut results = Vec::with_capacity(answers.len());
        for answer in answers {
            let outcome = match answer {
                Ok(response) => pb::batch_debit_result::Outcome::Ok(response),
                Err(error) => pb::batch_debit_result::Outcome::Error(debit_error(error)),
            };
            results.push(pb::BatchDebitResult { outcome: Some(outcome) });
        }
        Ok(Response::new(pb::BatchDebitResponse { results }))
    }

    async fn draw_usage(
        &self,
        request: Request<pb::DrawUsageRequest>,
    ) -> Result<Response<pb::DrawUsageResponse>, Status> {
        let tenant = tenant_of(&request)?;
        let key = key_of(&request);
        let request = request.into_inner();
        if request.lines.is_empty() || request.lines.len() > USAGE_LINES_MAX {
            return Err(WalletError::field("lines", format!("must hold 1 to {USAGE_LINES_MAX} lines")).into());
        }
        let amounts: usize = request.lines.iter().map(|line| line.amounts.len()).sum();
        if amounts > USAGE_AMOUNTS_MAX {
            return Err(
                WalletError::field("lines", format!("must hold at most {USAGE_AMOUNTS_MAX} amounts in all")).into()
            );
        }
        // Every account's unit first, in one query, so that below each line
        // reaches its committer without waiting on anything.
        let accounts: std::collections::BTreeSet<uuid::Uuid> =
            request.lines.iter().filter_map(|line| uuid::Uuid::parse_str(&line.account_id).ok()).collect();
        self.learn_units(tenant, accounts.into_iter().map(AccountId).collect()).await?;
        // Every line checked first, then all handed to the committers at
        // once, so they take them in few batches.
        let mut checked = Vec::with_capacity(request.lines.len());
        let mut units = Vec::with_capacity(request.lines.len());
        for line in request.lines {
            match self.check_line(tenant, key, line).await {
                Ok((command, unit)) => {
                    checked.push(Ok(command));
                    units.push(Some(unit));
                }
                Err(error) => {
                    checked.push(Err(error));
                    units.push(None);
                }
            }
        }
        let replies = self.store.submit_all(checked).await;
        let results = replies
            .into_iter()
            .zip(units)
            .map(|(reply, unit)| {
                reply.and_then(|reply| match unit {
                    Some(unit) => respond::respond(reply, |answer| respond::usage(answer, &unit)),
                    None => Err(WalletError::internal("a checked line lost its unit")),
                })
            })
            .map(|answer| pb::UsageLineResult {
                outcome: Some(match answer {
                    Ok(drawn) => pb::usage_line_result::Outcome::Drawn(drawn),
                    Err(error) => pb::usage_line_result::Outcome::Error(debit_error(error)),
                }),
            })
            .collect();
        Ok(Response::new(pb::DrawUsageResponse { results }))
    }

    async fn quote_debit(
        &self,
        request: Request<pb::QuoteDebitRequest>,
    ) -> Result<Response<pb::QuoteDebitResponse>, Status> {
        let tenant = tenant_of(&request)?;
        let request = request.into_inner();
        let mut violations = Violations::default();
        let account_id = violations.id("account_id", &request.account_id, AccountId);
        violations.meter_code("meter_code", &request.meter_code);
        violations.finish()?;
        let now = now();
        let mut wallet = self.store.wallet(tenant, account_id.unwrap_or(AccountId(uuid::Uuid::nil())), now).await?;
        let mut violations = Violations::default();
        let amount = violations.positive_amount("amount", &wallet.account.unit, &request.amount);
        violations.finish()?;
        let ctx = OperationContext::new(now, "quote");
        let meter = (!request.meter_code.is_empty()).then_some(request.meter_code.as_str());
        // The wallet is a private copy: nothing the dry run does is written.
        let response = match wallet.debit(&ctx, amount.unwrap_or_default(), meter) {
            Ok(()) => pb::QuoteDebitResponse {
                allowed: true,
                reason: String::new(),
                entries: WalletAnswer::of(&wallet, &ctx)
                    .entries
                    .iter()
                    .map(|entry| convert::entry(entry, &wallet.account.unit))
                    .map(|entry| pb::LedgerEntry {
                        id: String::new(),
                        sequence: 0,
                        idempotency_key: String::new(),
                        ..entry
                    })
                    .collect(),
                balance_after: Some(Self::balance_of(&wallet, now)),
            },
            Err(error) => {
                let error = WalletError::Domain(error);
                pb::QuoteDebitResponse {
                    allowed: false,
                    reason: error.reason().to_owned(),
                    entries: Vec::new(),
                    balance_after: Some(Self::balance_of(&wallet, now)),
                }
            }
        };
        Ok(Response::new(response))
    }

    async fn reserve(&self, request: Request<pb::ReserveRequest>) -> Result<Response<pb::ReserveResponse>, Status> {
        let tenant = tenant_of(&request)?;
        let key = key_of(&request);
        let request = request.into_inner();
        let mut violations = Violations::default();
        let account_id = violations.id("account_id", &request.account_id, AccountId);
        violations.idempotency_key("idempotency_key", &request.idempotency_key);
        violations.meter_code("meter_code", &request.meter_code);
        violations.text("correlation_id", &request.correlation_id, ID_LENGTH_MAX);
        if request.ttl_seconds == 0 || request.ttl_seconds > HOLD_TTL_SECONDS_MAX {
            violations.add("ttl_seconds", format!("must be 1 to {HOLD_TTL_SECONDS_MAX}"));
        }
        if request.amount.is_empty() {
            violations.add("amount", "is required");
        }
        violations.finish()?;
        let account_id = account_id.unwrap_or(AccountId(uuid::Uuid::nil()));
        // The group committer checks the key under the account's lock.
        let check = idempotency_check(tenant, "Reserve", &request.idempotency_key, &request);
        let unit = self.unit_of(tenant, account_id).await?;
        let mut violations = Violations::default();
        let amount = violations.positive_amount("amount", &unit, &request.amount);
        violations.finish()?;
        let now = now();
        let mut ctx = OperationContext::new(now, request.idempotency_key.clone()).with_key(key);
        ctx.correlation_id = request.correlation_id.clone();
        let meter = (!request.meter_code.is_empty()).then(|| request.meter_code.clone());
        let ttl = chrono::Duration::seconds(i64::from(request.ttl_seconds));
        let command = Command::Reserve { amount: amount.unwrap_or_default(), ttl, meter_code: meter };
        let reply = self.store.submit(tenant, account_id, check, ctx, command).await?;
        Ok(Response::new(respond::respond(reply, |answer| respond::reserve(answer, &unit))?))
    }

    async fn capture_hold(
        &self,
        request: Request<pb::CaptureHoldRequest>,
    ) -> Result<Response<pb::CaptureHoldResponse>, Status> {
        let tenant = tenant_of(&request)?;
        let key = key_of(&request);
        let request = request.into_inner();
        let mut violations = Violations::default();
        let hold_id = violations.id("hold_id", &request.hold_id, HoldId);
        violations.idempotency_key("idempotency_key", &request.idempotency_key);
        violations.text("description", &request.description, DESCRIPTION_LENGTH_MAX);
        check_metadata(&mut violations, "metadata", &request.metadata);
        if request.amount.is_empty() {
            violations.add("amount", "is required");
        }
        violations.finish()?;
        let hold_id = hold_id.unwrap_or(HoldId(uuid::Uuid::nil()));
        let check = idempotency_check(tenant, "CaptureHold", &request.idempotency_key, &request);
        if let Some(response) = self.replay(tenant, &check, respond::capture).await? {
            return Ok(Response::new(response));
        }
        let hold = self.store.hold(tenant, hold_id).await?;
        let unit = self.unit_of(tenant, hold.account_id).await?;
        let mut violations = Violations::default();
        let amount = violations.positive_amount("amount", &unit, &request.amount);
        violations.finish()?;
        let now = now();
        let mut ctx = OperationContext::new(now, request.idempotency_key.clone()).with_key(key);
        ctx.description = request.description.clone();
        ctx.metadata = request.metadata.clone();
        let plan = LoadPlan { hold_ids: vec![hold_id], ..LoadPlan::default() };
        let response = self
            .change(
                tenant,
                hold.account_id,
                &check,
                &plan,
                now,
                |loaded| {
                    loaded.wallet.capture(&ctx, hold_id, amount.unwrap_or_default())?;
                    hold_answer(&loaded.wallet, &ctx, hold_id)
                },
                |answer| respond::capture(answer, &unit),
            )
            .await?;
        Ok(Response::new(response))
    }

    async fn release_hold(
        &self,
        request: Request<pb::ReleaseHoldRequest>,
    ) -> Result<Response<pb::ReleaseHoldResponse>, Status> {
        let tenant = tenant_of(&request)?;
        let key = key_of(&request);
        let request = request.into_inner();
        let mut violations = Violations::default();
        let hold_id = violations.id("hold_id", &request.hold_id, HoldId);
        violations.idempotency_key("idempotency_key", &request.idempotency_key);
        violations.finish()?;
        let hold_id = hold_id.unwrap_or(HoldId(uuid::Uuid::nil()));
        let check = idempotency_check(tenant, "ReleaseHold", &request.idempotency_key, &request);
        if let Some(response) = self.replay(tenant, &check, respond::release).await? {
            return Ok(Response::new(response));
        }
        let hold = self.store.hold(tenant, hold_id).await?;
        let unit = self.unit_of(tenant, hold.account_id).await?;
        let now = now();
        let ctx = OperationContext::new(now, request.idempotency_key.clone()).with_key(key);
        let plan = LoadPlan { hold_ids: vec![hold_id], ..LoadPlan::default() };
        let response = self
            .change(
                tenant,
                hold.account_id,
                &check,
                &plan,
                now,
                |loaded| {
                    loaded.wallet.release(&ctx, hold_id)?;
                    hold_answer(&loaded.wallet, &ctx, hold_id)
                },
                |answer| respond::release(answer, &unit),
            )
            .await?;
        Ok(Response::new(response))
    }

    async fn adjust(&self, request: Request<pb::AdjustRequest>) -> Result<Response<pb::AdjustResponse>, Status> {
        let tenant = tenant_of(&request)?;
        let key = key_of(&request);
        let request = request.into_inner();
        let mut violations = Violations::default();
        let account_id = violations.id("account_id", &request.account_id, AccountId);
        violations.idempotency_key("idempotency_key", &request.idempotency_key);
        violations.required_text("reason", &request.reason, DESCRIPTION_LENGTH_MAX);
        check_metadata(&mut violations, "metadata", &request.metadata);
        if request.amount.is_empty() {
            violations.add("amount", "is required");
        }
        violations.finish()?;
        let account_id = account_id.unwrap_or(AccountId(uuid::Uuid::nil()));
        let check = idempotency_check(tenant, "Adjust", &request.idempotency_key, &request);
        if let Some(response) = self.replay(tenant, &check, respond::adjust).await? {
            return Ok(Response::new(response));
        }
        let unit = self.unit_of(tenant, account_id).await?;
        let mut violations = Violations::default();
        let amount = violations.amount_with("amount", &request.amount, |text| {
            unit.parse(text).and_then(|amount| {
                if amount.is_zero() { Err(reservoir_common::money::MoneyError::Zero) } else { Ok(amount) }
            })
        });
        violations.finish()?;
        let now = now();
        let mut ctx = OperationContext::new(now, request.idempotency_key.clone()).with_key(key);
        ctx.description = request.reason.clone();
        ctx.metadata = request.metadata.clone();
        let response = self
            .change(
                tenant,
                account_id,
                &check,
                &LoadPlan::default(),
                now,
                |loaded| {
                    let grant_id = loaded.wallet.adjust(&ctx, amount.unwrap_or_default())?;
                    let wallet = &loaded.wallet;
                    let mut answer = Answer::at(now);
                    answer.grants.extend(grant_id.and_then(|id| wallet.grant_by_id(id)).cloned());
                    answer.wallets.push(WalletAnswer::of(wallet, &ctx));
                    Ok(answer)
                },
                |answer| respond::adjust(answer, &unit),
            )
            .await?;
        Ok(Response::new(response))
    }

    async fn refund(&self, request: Request<pb::RefundRequest>) -> Result<Response<pb::RefundResponse>, Status> {
        let tenant = tenant_of(&request)?;
        let key = key_of(&request);
        let request = request.into_inner();
        let mut violations = Violations::default();
        let entry_id = violations.id("entry_id", &request.entry_id, EntryId);
        violations.idempotency_key("idempotency_key", &request.idempotency_key);
        violations.text("reason", &request.reason, DESCRIPTION_LENGTH_MAX);
        if request.amount.is_empty() {
            violations.add("amount", "is required");
        }
        violations.finish()?;
        let entry_id = entry_id.unwrap_or(EntryId(uuid::Uuid::nil()));
        let check = idempotency_check(tenant, "Refund", &request.idempotency_key, &request);
        if let Some(response) = self.replay(tenant, &check, respond::refund).await? {
            return Ok(Response::new(response));
        }
        let entry = self.store.entry(tenant, entry_id).await?;
        if !matches!(entry.kind, EntryKind::Debit | EntryKind::Capture) {
            return Err(WalletError::Domain(DomainError::EntryNotRefundable).into());
        }
        let unit = self.unit_of(tenant, entry.account_id).await?;
        let mut violations = Violations::default();
        let amount = violations.positive_amount("amount", &unit, &request.amount);
        violations.finish()?;
        let now = now();
        let mut ctx = OperationContext::new(now, request.idempotency_key.clone()).with_key(key);
        ctx.description = request.reason.clone();
        ctx.correlation_id = entry.correlation_id.clone();
        let plan = LoadPlan { refund_of: Some(entry.id), ..LoadPlan::default() };
        let response = self
            .change(
                tenant,
                entry.account_id,
                &check,
                &plan,
                now,
                |loaded| {
                    let (original, prior) = (loaded.operation_entries.clone(), loaded.prior_refunds.clone());
                    loaded.wallet.refund(&ctx, &original, &prior, amount.unwrap_or_default())?;
                    Ok(Answer { wallets: vec![WalletAnswer::of(&loaded.wallet, &ctx)], ..Answer::at(now) })
                },
                |answer| respond::refund(answer, &unit),
            )
            .await?;
        Ok(Response::new(response))
    }

    async fn void_grant(
        &self,
        request: Request<pb::VoidGrantRequest>,
    ) -> Result<Response<pb::VoidGrantResponse>, Status> {
        let tenant = tenant_of(&request)?;
        let key = key_of(&request);
        let request = request.into_inner();
        let mut violations = Violations::default();
        let grant_id = violations.id("grant_id", &request.grant_id, GrantId);
        violations.idempotency_key("idempotency_key", &request.idempotency_key);
        violations.text("reason", &request.reason, DESCRIPTION_LENGTH_MAX);
        violations.finish()?;
        let grant_id = grant_id.unwrap_or(GrantId(uuid::Uuid::nil()));
        let check = idempotency_check(tenant, "VoidGrant", &request.idempotency_key, &request);
        if let Some(response) = self.replay(tenant, &check, respond::void).await? {
            return Ok(Response::new(response));
        }
        let grant = self.store.grant(tenant, grant_id).await?;
        let unit = self.unit_of(tenant, grant.account_id).await?;
        let now = now();
        let mut ctx = OperationContext::new(now, request.idempotency_key.clone()).with_key(key);
        ctx.description = request.reason.clone();
        let plan = LoadPlan { grant_ids: vec![grant_id], ..LoadPlan::default() };
        let response = self
            .change(
                tenant,
                grant.account_id,
                &check,
                &plan,
                now,
                |loaded| {
                    loaded.wallet.void_grant(&ctx, grant_id)?;
                    let wallet = &loaded.wallet;
                    let grant =
                        wallet.grant_by_id(grant_id).ok_or(DomainError::Inconsistent("the grant is missing"))?;
                    Ok(Answer {
                        grants: vec![grant.clone()],
                        wallets: vec![WalletAnswer::of(wallet, &ctx)],
                        ..Answer::at(now)
                    })
                },
                |answer| respond::void(answer, &unit),
            )
            .await?;
        Ok(Response::new(response))
    }

    async fn transfer(&self, request: Request<pb::TransferRequest>) -> Result<Response<pb::TransferResponse>, Status> {
        let tenant = tenant_of(&request)?;
        let key = key_of(&request);
        let request = request.into_inner();
        let mut violations = Violations::default();
        let from = violations.id("from_account_id", &request.from_account_id, AccountId);
        let to = violations.id("to_account_id", &request.to_account_id, AccountId);
        if from.is_some() && from == to {
            violations.add("to_account_id", "must differ from from_account_id");
        }
        violations.idempotency_key("idempotency_key", &request.idempotency_key);
        violations.text("description", &request.description, DESCRIPTION_LENGTH_MAX);
        violations.text("correlation_id", &request.correlation_id, ID_LENGTH_MAX);
        check_metadata(&mut violations, "metadata", &request.metadata);
        if request.amount.is_empty() {
            violations.add("amount", "is required");
        }
        violations.finish()?;
        let (Some(from), Some(to)) = (from, to) else {
            return Err(WalletError::internal("validated id missing").into());
        };
        let check = idempotency_check(tenant, "Transfer", &request.idempotency_key, &request);
        if let Some(response) = self.replay(tenant, &check, respond::transfer).await? {
            return Ok(Response::new(response));
        }
        let unit = self.unit_of(tenant, from).await?;
        let mut violations = Violations::default();
        let amount = violations.positive_amount("amount", &unit, &request.amount);
        violations.finish()?;
        let now = now();
        let mut ctx = OperationContext::new(now, request.idempotency_key.clone()).with_key(key);
        ctx.correlation_id = request.correlation_id.clone();
        ctx.description = request.description.clone();
        ctx.metadata = request.metadata.clone();
        let reply = self
            .store
            .mutate_pair(tenant, (from, to), &check, now, |sender, receiver, allow_promotional| {
                sender.transfer_to(receiver, &ctx, amount.unwrap_or_default(), allow_promotional)?;
                let grants = receiver
                    .grants
                    .iter()
                    .filter(|grant| receiver.changes().new_grants.contains(&grant.id))
                    .cloned()
                    .collect();
                Ok(Answer {
                    wallets: vec![WalletAnswer::of(sender, &ctx), WalletAnswer::of(receiver, &ctx)],
                    grants,
                    ..Answer::at(now)
                })
            })
            .await?;
        Ok(Response::new(respond::respond(reply, |answer| respond::transfer(answer, &unit))?))
    }

    async fn get_spend(&self, request: Request<pb::GetSpendRequest>) -> Result<Response<pb::GetSpendResponse>, Status> {
        let tenant = tenant_of(&request)?;
        let request = request.into_inner();
        let mut violations = Violations::default();
        let account_id = violations.id("account_id", &request.account_id, AccountId);
        violations.finish()?;
        let now = now();
        let wallet = self.store.wallet(tenant, account_id.unwrap_or(AccountId(uuid::Uuid::nil())), now).await?;
        let view = wallet.spend_view(now);
        Ok(Response::new(pb::GetSpendResponse { spend: Some(convert::spend(&wallet.account, &view, now)) }))
    }

    async fn get_tenant_settings(
        &self,
        request: Request<pb::GetTenantSettingsRequest>,
    ) -> Result<Response<pb::GetTenantSettingsResponse>, Status> {
        let tenant = tenant_of(&request)?;
        let allow = self.store.allow_promotional_transfers(tenant).await?;
        Ok(Response::new(pb::GetTenantSettingsResponse {
            settings: Some(pb::TenantSettings { allow_promotional_transfers: allow }),
        }))
    }

    async fn update_tenant_settings(
        &self,
        request: Request<pb::UpdateTenantSettingsRequest>,
    ) -> Result<Response<pb::UpdateTenantSettingsResponse>, Status> {
        let tenant = tenant_of(&request)?;
        let request = request.into_inner();
        if let Some(allow) = request.allow_promotional_transfers {
            self.store.set_allow_promotional_transfers(tenant, allow).await?;
        }
        let allow = self.store.allow_promotional_transfers(tenant).await?;
        Ok(Response::new(pb::UpdateTenantSettingsResponse {
            settings: Some(pb::TenantSettings { allow_promotional_transfers: allow }),
        }))
    }

    type ExportRefillHistoryStream =
        Pin<Box<dyn Stream<Item = Result<pb::ExportRefillHistoryResponse, Status>> + Send>>;

    async fn export_refill_history(
        &self,
        request: Request<pb::ExportRefillHistoryRequest>,
    ) -> Result<Response<Self::ExportRefillHistoryStream>, Status> {
        let tenant = tenant_of(&request)?;
        let request = request.into_inner();
        let mut violations = Violations::default();
        let account_id = violations.id("account_id", &request.account_id, AccountId);
        let start = violations.time("start_time", request.start_time.as_ref());
        let end = violations.time("end_time", request.end_time.as_ref());
        if let (Some(start), Some(end)) = (start, end)
            && end <= start
        {
            violations.add("end_time", "must be after start_time");
        }
        violations.finish()?;
        let account_id = account_id.unwrap_or(AccountId(uuid::Uuid::nil()));
        let unit = self.unit_of(tenant, account_id).await?;
        let rows = reports::refill_history(self.store.clone(), tenant, account_id, unit, start, end);
        Ok(Response::new(Box::pin(futures::StreamExt::map(rows, |csv| {
            csv.map(|csv| pb::ExportRefillHistoryResponse { csv })
        }))))
    }

    type ExportStatementStream = Pin<Box<dyn Stream<Item = Result<pb::ExportStatementResponse, Status>> + Send>>;

    async fn export_statement(
        &self,
        request: Request<pb::ExportStatementRequest>,
    ) -> Result<Response<Self::ExportStatementStream>, Status> {
        let tenant = tenant_of(&request)?;
        let request = request.into_inner();
        let mut violations = Violations::default();
        let account_id = violations.id("account_id", &request.account_id, AccountId);
        let start = violations.time("start_time", request.start_time.as_ref());
        let end = violations.time("end_time", request.end_time.as_ref());
        if request.start_time.is_none() {
            violations.add("start_time", "is required");
        }
        if request.end_time.is_none() {
            violations.add("end_time", "is required");
        }
        if let (Some(start), Some(end)) = (start, end)
            && end <= start
        {
            violations.add("end_time", "must be after start_time");
        }
        violations.finish()?;
        let (Some(account_id), Some(start), Some(end)) = (account_id, start, end) else {
            return Err(WalletError::internal("validated fields missing").into());
        };
        let unit = self.unit_of(tenant, account_id).await?;
        let rows = reports::statement(self.store.clone(), tenant, account_id, unit, start, end);
        Ok(Response::new(Box::pin(futures::StreamExt::map(rows, |csv| {
            csv.map(|csv| pb::ExportStatementResponse { csv })
        }))))
    }

    async fn get_balance(
        &self,
        request: Request<pb::GetBalanceRequest>,
    ) -> Result<Response<pb::GetBalanceResponse>, Status> {
        let tenant = tenant_of(&request)?;
        let request = request.into_inner();
        let mut violations = Violations::default();
        let account_id = violations.id("account_id", &request.account_id, AccountId);
        violations.finish()?;
        let now = now();
        let wallet = self.store.wallet(tenant, account_id.unwrap_or(AccountId(uuid::Uuid::nil())), now).await?;
        Ok(Response::new(pb::GetBalanceResponse { balance: Some(Self::balance_of(&wallet, now)) }))
    }

    async fn list_grants(
        &self,
        request: Request<pb::ListGrantsRequest>,
    ) -> Result<Response<pb::ListGrantsResponse>, Status> {
        let tenant = tenant_of(&request)?;
        let request = request.into_inner();
        let mut violations = Violations::default();
        let account_id = violations.id("account_id", &request.account_id, AccountId);
        violations.finish()?;
        let account_id = account_id.unwrap_or(AccountId(uuid::Uuid::nil()));
        let account = self.store.account(tenant, account_id).await?;
        let now = now();
        let grants = self.store.grants(tenant, account_id, request.include_inactive).await?;
        let grants = grants
            .iter()
            .filter(|grant| request.include_inactive || !grant.is_past_expiry(now))
            .map(|grant| convert::grant(grant, &account.unit, now))
            .collect();
        Ok(Response::new(pb::ListGrantsResponse { grants }))
    }

    async fn list_ledger_entries(
        &self,
        request: Request<pb::ListLedgerEntriesRequest>,
    ) -> Result<Response<pb::ListLedgerEntriesResponse>, Status> {
        let tenant = tenant_of(&request)?;
        let request = request.into_inner();
        let mut violations = Violations::default();
        let account_id = violations.id("account_id", &request.account_id, AccountId);
        let page = Page::<u64>::of(
            &mut violations,
            request.page_size,
            &request.page_token,
            &(&request.account_id, &request.kinds, request.start_time, request.end_time),
        );
        let mut kinds = Vec::new();
        for (index, kind) in request.kinds.iter().enumerate() {
            match entry_kind_from(*kind) {
                Some(kind) => kinds.push(kind),
                None => violations.add(format!("kinds[{index}]"), "is not an entry kind"),
            }
        }
        if request.kinds.len() > EntryKind::ALL.len() {
            violations.add("kinds", "lists more kinds than there are");
        }
        let start = violations.time("start_time", request.start_time.as_ref());
        let end = violations.time("end_time", request.end_time.as_ref());
        violations.finish()?;
        let account_id = account_id.unwrap_or(AccountId(uuid::Uuid::nil()));
        let account = self.store.account(tenant, account_id).await?;
        let filter = EntryFilter { kinds, start, end, through_sequence: None };
        let entries =
            self.store.entries(tenant, account_id, &filter, page.after.unwrap_or(0), page.rows_to_read()).await?;
        let (entries, next_page_token) = page.finish(entries, |entry| entry.sequence);
        Ok(Response::new(pb::ListLedgerEntriesResponse {
            entries: entries.iter().map(|entry| convert::entry(entry, &account.unit)).collect(),
            next_page_token,
        }))
    }

    async fn get_caller(
        &self,
        request: Request<pb::GetCallerRequest>,
    ) -> Result<Response<pb::GetCallerResponse>, Status> {
        let key_id = key_of(&request).map(|key| key.to_string()).unwrap_or_default();
        let response = match caller_of(&request)? {
            Caller::Tenant(tenant, role) => pb::GetCallerResponse {
                kind: pb::CallerKind::Tenant.into(),
                tenant_id: tenant.to_string(),
                role: role.to_wire().into(),
                key_id,
            },
            Caller::Service => pb::GetCallerResponse {
                kind: pb::CallerKind::Service.into(),
                tenant_id: String::new(),
                role: pb::KeyRole::Unspecified.into(),
                key_id,
            },
        };
        Ok(Response::new(response))
    }

    type WatchEventsStream = EventStream;

    async fn watch_events(
        &self,
        request: Request<pb::WatchEventsRequest>,
    ) -> Result<Response<Self::WatchEventsStream>, Status> {
        let tenant = tenant_of(&request)?;
        let request = request.into_inner();
        let mut violations = Violations::default();
        violations.meter_code("consumer", &request.consumer);
        violations.finish()?;
        let mut cursor = request.after_sequence;
        // How far behind the outbox the suite's own consumers are: the age of
        // the oldest event not yet sent, 0 when caught up. The label takes
        // only these names, never one a caller chose; other streams share
        // the series `other`.
        let consumer: &'static str = match request.consumer.as_str() {
            "orchestrator" => "orchestrator",
            "webhooks" => "webhooks",
            _ => "other",
        };
        let lag = metrics::gauge!("reservoir_wallet_outbox_lag_seconds", "consumer" => consumer);
        let store = self.store.clone();
        let api = self.clone();
        let written = store.events_written();
        let mut stopping = self.stopping.clone();
        let stream = async_stream::try_stream! {
            loop {
                if *stopping.borrow() {
                    Err(reservoir_common::outbox::shutting_down())?;
                }
                // Registered before the read, so a commit between the read and
                // the wait still wakes this stream.
                let notified = written.notified();
                let batch = store.events_after(tenant, cursor, EVENT_BATCH).await.map_err(Status::from)?;
                if batch.is_empty() {
                    lag.set(0.0);
                    tokio::select! {
                        () = notified => {}
                        () = tokio::time::sleep(EVENT_POLL_INTERVAL) => {}
                        _ = stopping.changed() => {}
                    }
                    continue;
                }
                for (index, record) in batch.into_iter().enumerate() {
                    let (sequence, event) = match record {
                        EventRecord::Event { sequence, event } => {
                            let unit = api.unit_of(tenant, event.account_id).await.map_err(Status::from)?;
                            (sequence, convert::event(&event, &unit, sequence))
                        }
                        EventRecord::Legacy { sequence, payload } => {
                            let mut event = pb::Event::decode(payload.as_slice()).map_err(|error| {
                                Status::from(WalletError::internal(format!("outbox payload: {error}")))
                            })?;
                            event.sequence = sequence;
                            (sequence, event)
                        }
                    };
                    if index == 0
                        && let Some(occurred) = event.occurred_at.as_ref().and_then(reservoir_common::time::from_timestamp)
                    {
                        lag.set((now() - occurred).num_milliseconds().max(0) as f64 / 1_000.0);
                    }
                    cursor = sequence;
                    yield pb::WatchEventsResponse { event: Some(event) };
                }
            }
        };
        Ok(Response::new(Box::pin(stream)))
    }
}
