//! gRPC handlers of the top-up service.

mod convert;
mod webhooks;

pub use self::webhooks::WebhookApi;

use std::pin::Pin;
use std::time::Duration;

use reservoir_common::auth::{TenantId, tenant_of};
use reservoir_common::idempotency::request_hash;
use reservoir_common::ids::AccountId;
use reservoir_common::money::{GRANT_PRIORITY_MAX, parse_amount};
use reservoir_common::paging::Page;
use reservoir_common::validate::Violations;
use reservoir_proto::orchestrator as pb;
use reservoir_proto::orchestrator::top_up_service_server::TopUpService;
use rust_decimal::Decimal;
use sha2::{Digest, Sha256};
use tokio::sync::watch;
use tonic::{Code, Request, Response, Status};
use uuid::Uuid;

use self::convert::{auto_to_pb, event_to_pb, recurring_to_pb, top_up_to_pb};
use crate::clients::CallError;
use crate::domain::{
    AutoReplenish, Bonus, BonusAsked, Carry, Interval, Outcome, RolloverPolicy, Status as TopUpStatus, Step, Strategy,
    Trigger, VoucherRefusal,
};
use crate::error::OrchestratorError;
use crate::store::{AutoReplenishRow, RecurringRow, StepLine, TopUpRow};
use crate::usecases::saga::{Saga, new_top_up};
use reservoir_common::time::now;

/// Automatic top-ups a day at most: beyond a hundred, a flapping balance is
/// a fault to look at, not a need.
const TOP_UPS_PER_DAY_MAX: u32 = 100;
/// Recurring credits expire after at most ten years.
const EXPIRE_AFTER_DAYS_MAX: u32 = 3_650;
/// Events one read of the outbox takes.
const EVENT_BATCH: u64 = 500;
/// How often an idle event stream looks for new events.
const EVENT_POLL_INTERVAL: Duration = Duration::from_millis(100);
/// Voucher codes as typed, with separators: 16 characters and a check one.
const VOUCHER_CODE_LENGTH_MAX: usize = 64;

#[derive(Clone)]
pub struct TopUpApi {
    saga: Saga,
    stopping: watch::Receiver<bool>,
}

/// An amount in the account's unit: positive, at most its scale.
fn credits(violations: &mut Violations, field: &str, text: &str, scale: u32) -> Option<Decimal> {
    violations.amount_with(field, text, |text| parse_amount(text, scale).and_then(reservoir_common::money::positive))
}

/// The bonus a purchase of `purchased` credits asks for, checked field by field.
fn bonus_of(violations: &mut Violations, wanted: &pb::Bonus, purchased: Option<Decimal>, scale: u32) -> Option<Bonus> {
    let asked = match (wanted.credits.is_empty(), wanted.percent) {
        (false, 0) => credits(violations, "bonus.credits", &wanted.credits, scale).map(BonusAsked::Credits),
        (true, percent @ 1..=100) => Some(BonusAsked::Percent(percent)),
        (true, 0) | (false, _) => {
            violations.add("bonus.credits", "exactly one of credits and percent is required");
            None
        }
        (true, _) => {
            violations.add("bonus.percent", "must be 1 to 100");
            None
        }
    };
    let expires_at =
        wanted.expires_at.as_ref().and_then(|_| violations.time("bonus.expires_at", wanted.expires_at.as_ref()));
    if expires_at.is_some_and(|at| at <= now()) {
        violations.add("bonus.expires_at", "must be in the future");
    }
    if let Some(priority) = wanted.priority
        && !(0..=GRANT_PRIORITY_MAX).contains(&priority)
    {
        violations.add("bonus.priority", format!("must be 0 to {GRANT_PRIORITY_MAX}"));
    }
    let credits = asked?.credits(purchased?, scale);
    if credits <= Decimal::ZERO {
        violations.add("bonus.percent", "gives no credits for this purchase");
        return None;
    }
    Some(Bonus { credits, scale, expires_at, priority: wanted.priority, grant_id: None })
}

/// A recurring top-up's rollover policy, checked field by field.
fn rollover_policy(violations: &mut Violations, policy: &pb::RolloverPolicy, scale: u32) -> Option<RolloverPolicy> {
    const FIELD: &str = "recurring_top_up.rollover";
    let capped = pb::RolloverMode::try_from(policy.mode) == Ok(pb::RolloverMode::Capped);
    if !capped && (!policy.cap_amount.is_empty() || policy.cap_percent != 0) {
        let field = if policy.cap_amount.is_empty() { "cap_percent" } else { "cap_amount" };
        violations.add(format!("{FIELD}.{field}"), "is only for CAPPED");
    }
    if policy.expire_after_days > EXPIRE_AFTER_DAYS_MAX {
        violations.add(format!("{FIELD}.expire_after_days"), format!("must be at most {EXPIRE_AFTER_DAYS_MAX}"));
    }
    let carry = match pb::RolloverMode::try_from(policy.mode) {
        Ok(pb::RolloverMode::None) => Carry::Nothing,
        Ok(pb::RolloverMode::All) => Carry::All,
        Ok(pb::RolloverMode::Capped) => match (policy.cap_amount.as_str(), policy.cap_percent) {
            ("", 0) => {
                violations.add(format!("{FIELD}.cap_amount"), "or cap_percent is required for CAPPED");
                return None;
            }
            ("", percent) if percent <= 100 => Carry::Percent(percent),
            ("", _) => {
                violations.add(format!("{FIELD}.cap_percent"), "must be 1 to 100");
                return None;
            }
            (text, 0) => Carry::Amount(credits(violations, &format!("{FIELD}.cap_amount"), text, scale)?),
            (_, _) => {
                violations.add(format!("{FIELD}.cap_percent"), "is not given with cap_amount");
                return None;
            }
        },
        _ => {
            violations.add(format!("{FIELD}.mode"), "must be NONE, ALL or CAPPED");
            return None;
        }
    };
    Some(RolloverPolicy { carry, expire_after_days: policy.expire_after_days })
}

fn optional_credits(violations: &mut Violations, field: &str, text: &str, scale: u32) -> Option<Decimal> {
    if text.is_empty() { None } else { credits(violations, field, text, scale) }
}

impl TopUpApi {
    pub fn new(saga: Saga, stopping: watch::Receiver<bool>) -> Self {
        Self { saga, stopping }
    }

    /// The scale of the account's unit; NOT_FOUND when the tenant has no such account.
    async fn scale_of(&self, tenant: TenantId, account_id: AccountId) -> Result<u32, OrchestratorError> {
        match self.saga.upstream().account_unit(tenant, account_id).await {
            Ok((_, scale)) => Ok(scale),
            Err(CallError::Refused { code: Code::NotFound, .. }) => Err(OrchestratorError::NotFound("account")),
            Err(error) => Err(error.into()),
        }
    }

    /// An account's auto-replenish settings; NOT_FOUND when it has none.
    async fn auto_replenish_of(
        &self,
        tenant: TenantId,
        account_id: &str,
    ) -> Result<AutoReplenishRow, OrchestratorError> {
        let account_id = account_id_of(account_id)?;
        self.saga.store().auto_replenish(tenant, account_id).await?.ok_or(OrchestratorError::NotFound("auto-replenish"))
    }

    /// An account's recurring top-up; NOT_FOUND when it has none.
    async fn recurring_of(&self, tenant: TenantId, account_id: &str) -> Result<RecurringRow, OrchestratorError> {
        let account_id = account_id_of(account_id)?;
        self.saga.store().recurring(tenant, account_id).await?.ok_or(OrchestratorError::NotFound("recurring top-up"))
    }

    async fn view(&self, row: &TopUpRow) -> Result<pb::TopUp, OrchestratorError> {
        let steps = self.saga.store().steps(row.id).await?;
        let clawbacks = if row.bonus.is_some() { self.saga.store().clawbacks_of(row.id).await? } else { Vec::new() };
        Ok(top_up_to_pb(row, &steps, &clawbacks))
    }

    /// Stores a new top-up held by this call, runs it as far as it goes and
    /// answers where it stands. A key stored before answers that top-up.
    async fn start(&self, row: TopUpRow) -> Result<TopUpRow, OrchestratorError> {
        let now = row.created_at;
        let first =
            StepLine { step: row.step, outcome: Outcome::Waiting, attempt: 0, detail: "created".into(), at: now };
        match self.saga.store().insert_top_up(&row, &first, self.saga.lease_until(now)).await? {
            Some(row) => {
                metrics::counter!("reservoir_orchestrator_top_ups_started_total", "trigger" => row.trigger.name())
                    .increment(1);
                self.saga.run(row).await
            }
            None => self
                .saga
                .store()
                .top_up_by_key(row.tenant_id, &row.idempotency_key)
                .await?
                .ok_or_else(|| OrchestratorError::Conflict("a concurrent top-up with this key vanished".into())),
        }
    }
}

/// The `account_id` field of a request, or INVALID_ARGUMENT naming it.
fn account_id_of(text: &str) -> Result<AccountId, OrchestratorError> {
    let mut violations = Violations::default();
    let account_id = violations.id("account_id", text, AccountId);
    violations.finish()?;
    account_id.ok_or_else(|| OrchestratorError::field("account_id", "is required"))
}

/// The status a voucher refusal is answered with.
fn voucher_refusal(refusal: VoucherRefusal) -> Status {
    use reservoir_common::status::with_reason;
    match refusal {
        VoucherRefusal::NotFound => with_reason(Code::NotFound, "VOUCHER_NOT_FOUND", "no voucher has this code"),
        VoucherRefusal::AttemptsExceeded => {
            with_reason(Code::ResourceExhausted, "VOUCHER_ATTEMPTS_EXCEEDED", "too many wrong codes; try again later")
        }
        VoucherRefusal::MalformedCode => OrchestratorError::field("code", "is not a voucher code").into(),
        VoucherRefusal::Other(reason) => {
            OrchestratorError::precondition(&reason, "the voucher cannot be redeemed").into()
        }
    }
}

type EventStream = Pin<Box<dyn futures::Stream<Item = Result<pb::WatchEventsResponse, Status>> + Send>>;

#[tonic::async_trait]
impl TopUpService for TopUpApi {
    type WatchEventsStream = EventStream;

    async fn start_top_up(
        &self,
        request: Request<pb::StartTopUpRequest>,
    ) -> Result<Response<pb::StartTopUpResponse>, Status> {
        let tenant = tenant_of(&request)?;
        let request = request.into_inner();
        let mut violations = Violations::default();
        let account_id = violations.id("account_id", &request.account_id, AccountId);
        violations.idempotency_key("idempotency_key", &request.idempotency_key);
        let payment_method_id = violations.optional_id("payment_method_id", &request.payment_method_id);
        if payment_method_id.is_none() && !request.reconcile_later && request.payment_method_id.is_empty() {
            violations.add("payment_method_id", "is required unless reconcile_later is set");
        }
        if !request.payment_method_id.is_empty() && request.reconcile_later {
            violations.add("reconcile_later", "cannot go with a payment method");
        }
        let expires_at = request
            .credits_expire_at
            .as_ref()
            .and_then(|_| violations.time("credits_expire_at", request.credits_expire_at.as_ref()));
        if expires_at.is_some_and(|at| at <= now()) {
            violations.add("credits_expire_at", "must be in the future");
        }
        if request.credits.is_empty() {
            violations.add("credits", "is required");
        }
        violations.finish()?;
        let hash = request_hash(&request);
        if let Some(existing) = self.saga.store().top_up_by_key(tenant, &request.idempotency_key).await? {
            if existing.request_hash != hash {
                return Err(OrchestratorError::IdempotencyKeyReused.into());
            }
            return Ok(Response::new(pb::StartTopUpResponse { top_up: Some(self.view(&existing).await?) }));
        }
        let account_id = account_id.unwrap_or(AccountId(Uuid::nil()));
        let scale = self.scale_of(tenant, account_id).await?;
        let mut violations = Violations::default();
        let amount = credits(&mut violations, "credits", &request.credits, scale);
        let bonus = request.bonus.as_ref().and_then(|bonus| bonus_of(&mut violations, bonus, amount, scale));
        violations.finish()?;
        let mut row = new_top_up(
            tenant,
            account_id,
            Trigger::Manual,
            Step::CreateInvoice,
            amount.unwrap_or_default(),
            "PAID",
            payment_method_id,
            request.idempotency_key.clone(),
            now(),
        );
        row.reconcile_later = request.reconcile_later;
        row.credits_expire_at = expires_at;
        row.bonus = bonus;
        row.request_hash = hash.clone();
        let row = self.start(row).await?;
        if row.request_hash != hash {
            return Err(OrchestratorError::IdempotencyKeyReused.into());
        }
        Ok(Response::new(pb::StartTopUpResponse { top_up: Some(self.view(&row).await?) }))
    }

    async fn get_top_up(
        &self,
        request: Request<pb::GetTopUpRequest>,
    ) -> Result<Response<pb::GetTopUpResponse>, Status> {
        let tenant = tenant_of(&request)?;
        let mut violations = Violations::default();
        let id = violations.id("top_up_id", &request.get_ref().top_up_id, |id| id);
        violations.finish()?;
        let row = self
            .saga
            .store()
            .top_up(tenant, id.unwrap_or_default())
            .await?
            .ok_or(OrchestratorError::NotFound("top-up"))?;
        Ok(Response::new(pb::GetTopUpResponse { top_up: Some(self.view(&row).await?) }))
    }

    async fn list_top_ups(
        &self,
        request: Request<pb::ListTopUpsRequest>,
    ) -> Result<Response<pb::ListTopUpsResponse>, Status> {
        let tenant = tenant_of(&request)?;
        let request = request.into_inner();
        let mut violations = Violations::default();
        let account_id = violations.optional_id("account_id", &request.account_id).map(AccountId);
        let status = match pb::TopUpStatus::try_from(request.status) {
            Ok(pb::TopUpStatus::Unspecified) => None,
            Ok(pb::TopUpStatus::Pending) => Some(TopUpStatus::Pending),
            Ok(pb::TopUpStatus::RequiresAction) => Some(TopUpStatus::RequiresAction),
            Ok(pb::TopUpStatus::Succeeded) => Some(TopUpStatus::Succeeded),
            Ok(pb::TopUpStatus::Failed) => Some(TopUpStatus::Failed),
            Err(_) => {
                violations.add("status", "is not a top-up status");
                None
            }
        };
        let page = Page::<Uuid>::of(
            &mut violations,
            request.page_size,
            &request.page_token,
            &(&request.account_id, request.status),
        );
        violations.finish()?;
        let rows = self.saga.store().list(tenant, account_id, status, page.after, page.rows_to_read()).await?;
        let (rows, next_page_token) = page.finish(rows, |row| row.id);
        let mut top_ups = Vec::with_capacity(rows.len());
        for row in &rows {
            top_ups.push(self.view(row).await?);
        }
        Ok(Response::new(pb::ListTopUpsResponse { top_ups, next_page_token }))
    }

    async fn configure_auto_replenish(
        &self,
        request: Request<pb::ConfigureAutoReplenishRequest>,
    ) -> Result<Response<pb::ConfigureAutoReplenishResponse>, Status> {
        let tenant = tenant_of(&request)?;
        let Some(wanted) = request.into_inner().auto_replenish else {
            return Err(OrchestratorError::field("auto_replenish", "is required").into());
        };
        let mut violations = Violations::default();
        let account_id = violations.id("auto_replenish.account_id", &wanted.account_id, AccountId);
        let method = violations.id("auto_replenish.payment_method_id", &wanted.payment_method_id, |id| id);
        violations.finish()?;
        let account_id = account_id.unwrap_or(AccountId(Uuid::nil()));
        let scale = self.scale_of(tenant, account_id).await?;
        let mut violations = Violations::default();
        let threshold = credits(&mut violations, "auto_replenish.threshold", &wanted.threshold, scale);
        let strategy = match (wanted.fixed_amount.is_empty(), wanted.target_balance.is_empty()) {
            (false, true) => credits(&mut violations, "auto_replenish.fixed_amount", &wanted.fixed_amount, scale)
                .map(Strategy::Fixed),
            (true, false) => credits(&mut violations, "auto_replenish.target_balance", &wanted.target_balance, scale)
                .map(Strategy::ToTarget),
            _ => {
                violations
                    .add("auto_replenish.fixed_amount", "exactly one of fixed_amount and target_balance is required");
                None
            }
        };
        if let (Some(Strategy::ToTarget(target)), Some(threshold)) = (strategy, threshold)
            && target <= threshold
        {
            violations.add("auto_replenish.target_balance", "must be above the threshold");
        }
        if wanted.max_top_ups_per_day == 0 || wanted.max_top_ups_per_day > TOP_UPS_PER_DAY_MAX {
            violations.add("auto_replenish.max_top_ups_per_day", format!("must be 1 to {TOP_UPS_PER_DAY_MAX}"));
        }
        let month = optional_credits(
            &mut violations,
            "auto_replenish.max_credits_per_month",
            &wanted.max_credits_per_month,
            scale,
        );
        let min = optional_credits(
            &mut violations,
            "auto_replenish.min_credits_per_top_up",
            &wanted.min_credits_per_top_up,
            scale,
        );
        let max = optional_credits(
            &mut violations,
            "auto_replenish.max_credits_per_top_up",
            &wanted.max_credits_per_top_up,
            scale,
        );
        if let (Some(min), Some(max)) = (min, max)
            && min > max
        {
            violations.add("auto_replenish.min_credits_per_top_up", "must not be above max_credits_per_top_up");
        }
        // A FIXED amount is always what it says: bounds it does not meet
        // are refused, not applied to it.
        if let Some(Strategy::Fixed(amount)) = strategy {
            if min.is_some_and(|min| amount < min) {
                violations.add("auto_replenish.fixed_amount", "must not be below min_credits_per_top_up");
            }
            if max.is_some_and(|max| amount > max) {
                violations.add("auto_replenish.fixed_amount", "must not be above max_credits_per_top_up");
            }
        }
        if wanted.low_balance_warning_percent > 100 {
            violations.add("auto_replenish.low_balance_warning_percent", "must be 0 to 100");
        }
        violations.finish()?;
        let row = AutoReplenishRow {
            tenant_id: tenant,
            account_id,
            settings: AutoReplenish {
                threshold: threshold.unwrap_or_default(),
                strategy: strategy.unwrap_or(Strategy::Fixed(Decimal::ZERO)),
                max_top_ups_per_day: wanted.max_top_ups_per_day,
                max_credits_per_month: month,
                min_credits: min,
                max_credits: max,
                warning_percent: wanted.low_balance_warning_percent,
            },
            payment_method_id: method.unwrap_or_default(),
            enabled: true,
            paused: false,
            consecutive_declines: 0,
            updated_at: now(),
        };
        // The wallet says when the balance falls below the threshold
        // (BALANCE_LOW, once per crossing) and below the warning level
        // (BALANCE_WARNING): it is told both first.
        self.saga
            .upstream()
            .set_low_balance_levels(tenant, account_id, row.settings.threshold, row.settings.warning_level(scale))
            .await
            .map_err(OrchestratorError::from)?;
        self.saga.store().save_auto_replenish(&row).await?;
        Ok(Response::new(pb::ConfigureAutoReplenishResponse { auto_replenish: Some(auto_to_pb(&row)) }))
    }

    async fn disable_auto_replenish(
        &self,
        request: Request<pb::DisableAutoReplenishRequest>,
    ) -> Result<Response<pb::DisableAutoReplenishResponse>, Status> {
        let tenant = tenant_of(&request)?;
        let mut row = self.auto_replenish_of(tenant, &request.get_ref().account_id).await?;
        row.enabled = false;
        row.updated_at = now();
        self.saga.store().save_auto_replenish(&row).await?;
        Ok(Response::new(pb::DisableAutoReplenishResponse { auto_replenish: Some(auto_to_pb(&row)) }))
    }

    async fn get_auto_replenish(
        &self,
        request: Request<pb::GetAutoReplenishRequest>,
    ) -> Result<Response<pb::GetAutoReplenishResponse>, Status> {
        let tenant = tenant_of(&request)?;
        let row = self.auto_replenish_of(tenant, &request.get_ref().account_id).await?;
        Ok(Response::new(pb::GetAutoReplenishResponse { auto_replenish: Some(auto_to_pb(&row)) }))
    }

    async fn configure_recurring_top_up(
        &self,
        request: Request<pb::ConfigureRecurringTopUpRequest>,
    ) -> Result<Response<pb::ConfigureRecurringTopUpResponse>, Status> {
        let tenant = tenant_of(&request)?;
        let Some(wanted) = request.into_inner().recurring_top_up else {
            return Err(OrchestratorError::field("recurring_top_up", "is required").into());
        };
        let mut violations = Violations::default();
        let account_id = violations.id("recurring_top_up.account_id", &wanted.account_id, AccountId);
        let interval = match pb::Interval::try_from(wanted.interval) {
            Ok(pb::Interval::Weekly) => Some(Interval::Weekly),
            Ok(pb::Interval::Monthly) => Some(Interval::Monthly),
            _ => {
                violations.add("recurring_top_up.interval", "must be WEEKLY or MONTHLY");
                None
            }
        };
        let mode = match pb::RecurringMode::try_from(wanted.mode) {
            Ok(pb::RecurringMode::Paid) => "PAID",
            Ok(pb::RecurringMode::Granted) => "GRANTED",
            _ => {
                violations.add("recurring_top_up.mode", "must be PAID or GRANTED");
                ""
            }
        };
        let method = if wanted.payment_method_id.is_empty() {
            if mode == "PAID" {
                violations.add("recurring_top_up.payment_method_id", "is required for PAID");
            }
            None
        } else {
            violations.id("recurring_top_up.payment_method_id", &wanted.payment_method_id, |id| id)
        };
        if wanted.credits_expire_after_days > EXPIRE_AFTER_DAYS_MAX {
            violations
                .add("recurring_top_up.credits_expire_after_days", format!("must be at most {EXPIRE_AFTER_DAYS_MAX}"));
        }
        let first = wanted
            .next_run_at
            .as_ref()
            .and_then(|_| violations.time("recurring_top_up.next_run_at", wanted.next_run_at.as_ref()));
        violations.finish()?;
        let account_id = account_id.unwrap_or(AccountId(Uuid::nil()));
        let scale = self.scale_of(tenant, account_id).await?;
        let mut violations = Violations::default();
        let amount = credits(&mut violations, "recurring_top_up.credits", &wanted.credits, scale);
        let rollover = wanted.rollover.as_ref().and_then(|policy| rollover_policy(&mut violations, policy, scale));
        violations.finish()?;
        let runs = self.saga.store().recurring(tenant, account_id).await?.map_or(0, |row| row.runs);
        let started = now();
        let row = RecurringRow {
            tenant_id: tenant,
            account_id,
            credits: amount.unwrap_or_default(),
            interval: interval.unwrap_or(Interval::Monthly),
            mode: mode.to_owned(),
            payment_method_id: method,
            credits_expire_after_days: wanted.credits_expire_after_days,
            next_run_at: first.unwrap_or(started),
            anchor_at: first.unwrap_or(started),
            enabled: true,
            runs,
            rollover,
        };
        self.saga.store().save_recurring(&row, now()).await?;
        Ok(Response::new(pb::ConfigureRecurringTopUpResponse { recurring_top_up: Some(recurring_to_pb(&row)) }))
    }

    async fn disable_recurring_top_up(
        &self,
        request: Request<pb::DisableRecurringTopUpRequest>,
    ) -> Result<Response<pb::DisableRecurringTopUpResponse>, Status> {
        let tenant = tenant_of(&request)?;
        let mut row = self.recurring_of(tenant, &request.get_ref().account_id).await?;
        row.enabled = false;
        self.saga.store().save_recurring(&row, now()).await?;
        Ok(Response::new(pb::DisableRecurringTopUpResponse { recurring_top_up: Some(recurring_to_pb(&row)) }))
    }

    async fn get_recurring_top_up(
        &self,
        request: Request<pb::GetRecurringTopUpRequest>,
    ) -> Result<Response<pb::GetRecurringTopUpResponse>, Status> {
        let tenant = tenant_of(&request)?;
        let row = self.recurring_of(tenant, &request.get_ref().account_id).await?;
        Ok(Response::new(pb::GetRecurringTopUpResponse { recurring_top_up: Some(recurring_to_pb(&row)) }))
    }

    async fn redeem_voucher(
        &self,
        request: Request<pb::RedeemVoucherRequest>,
    ) -> Result<Response<pb::RedeemVoucherResponse>, Status> {
        let tenant = tenant_of(&request)?;
        let request = request.into_inner();
        let mut violations = Violations::default();
        let account_id = violations.id("account_id", &request.account_id, AccountId);
        violations.required_text("code", &request.code, VOUCHER_CODE_LENGTH_MAX);
        violations.finish()?;
        let account_id = account_id.unwrap_or(AccountId(Uuid::nil()));
        self.scale_of(tenant, account_id).await?;
        // Keyed by the code (as typed, made canonical, and only its digest)
        // and the account: the same redemption sent again is the same
        // top-up, answered as the first time. Another account's try is a
        // top-up of its own, which payments refuses; and the voucher's grant
        // carries the voucher's key, so nothing is ever credited twice.
        let code = reservoir_common::validate::normalize_voucher_code(&request.code);
        let redemption = format!("voucher:{}", hex::encode(Sha256::digest(format!("{code}:{account_id}").as_bytes())));
        let key = match self.saga.store().top_up_by_key(tenant, &redemption).await? {
            // Refused before the voucher was found (a wrong code, an account
            // locked out for a while): a try later is a try of its own.
            Some(earlier) if earlier.status == TopUpStatus::Failed && earlier.voucher_id.is_none() => {
                format!("{redemption}:{}", Uuid::now_v7())
            }
            Some(earlier) => {
                return Ok(Response::new(pb::RedeemVoucherResponse { top_up: Some(self.view(&earlier).await?) }));
            }
            None => redemption,
        };
        let mut row = new_top_up(
            tenant,
            account_id,
            Trigger::Voucher,
            Step::RedeemVoucher,
            Decimal::ZERO,
            "PAID",
            None,
            key,
            now(),
        );
        row.voucher_code = Some(request.code.clone());
        let row = self.start(row).await?;
        if row.status == TopUpStatus::Failed && row.voucher_id.is_none() {
            return Err(voucher_refusal(VoucherRefusal::of_reason(&row.reason)));
        }
        Ok(Response::new(pb::RedeemVoucherResponse { top_up: Some(self.view(&row).await?) }))
    }

    async fn watch_events(
        &self,
        request: Request<pb::WatchEventsRequest>,
    ) -> Result<Response<Self::WatchEventsStream>, Status> {
        let tenant = tenant_of(&request)?;
        let store = self.saga.store().clone();
        let after = request.into_inner().after_sequence;
        let stream =
            reservoir_common::outbox::follow(after, self.stopping.clone(), EVENT_POLL_INTERVAL, move |after| {
                let store = store.clone();
                async move {
                    let events = store.events_after(tenant, after, EVENT_BATCH).await.map_err(Status::from)?;
                    Ok(events
                        .iter()
                        .map(|event| (event.sequence, pb::WatchEventsResponse { event: Some(event_to_pb(event)) }))
                        .collect())
                }
            });
        Ok(Response::new(Box::pin(stream)))
    }
}
