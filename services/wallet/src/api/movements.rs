//! Handlers that move money other than debits (`debits.rs`): grants, holds,
//! adjustments, refunds, voids and transfers. Each checks its request, hands
//! a command to the store's group committer and translates the domain's
//! answer.

use reservoir_common::auth::{KeyId, TenantId, key_of, tenant_of};
use reservoir_common::money::Unit;
use reservoir_proto::wallet as pb;
use tonic::{Request, Response, Status};

use super::validate::*;
use super::{WalletApi, convert, respond};
use crate::domain::fraud::TransferAsked;
use crate::domain::*;
use crate::error::WalletError;
use crate::store::{IdempotencyCheck, LoadPlan, Transferred};

impl WalletApi {
    pub(super) async fn grant_credits_impl(
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
            Ok(pb::GrantSource::Bonus) => GrantSource::Bonus,
            Ok(pb::GrantSource::Transfer) => {
                violations.add("source", "TRANSFER is set by Transfer only");
                GrantSource::Admin
            }
            Ok(pb::GrantSource::Rollover) => {
                violations.add("source", "ROLLOVER is set by a rollover only");
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
        let rollover_from = request
            .rollover
            .as_ref()
            .and_then(|rollover| violations.id("rollover.from_grant_id", &rollover.from_grant_id, GrantId));
        // An instant already past is taken (a rollover's expiry is fixed when
        // its period fires, and its grant may come later): nothing is carried.
        let rollover_expires_at = request
            .rollover
            .as_ref()
            .and_then(|rollover| violations.time("rollover.expires_at", rollover.expires_at.as_ref()));
        violations.finish()?;
        let account_id = account_id.unwrap_or(AccountId(uuid::Uuid::nil()));
        // The group committer checks the key under the account's lock.
        let check = idempotency_check(tenant, "GrantCredits", &request.idempotency_key, &request);
        let unit = self.unit_of(tenant, account_id).await?;
        let mut violations = Violations::default();
        let amount = violations.positive_amount("amount", &unit, &request.amount);
        let rollover = match (&request.rollover, rollover_from) {
            (Some(asked), Some(from)) => {
                let max = match (asked.max_amount.as_str(), asked.max_percent) {
                    ("", 0) => RolloverMax::All,
                    ("", percent) if percent <= 100 => RolloverMax::Percent(percent),
                    ("", _) => {
                        violations.add("rollover.max_percent", "must be 1 to 100");
                        RolloverMax::All
                    }
                    (text, 0) => {
                        let parse = |text: &str| unit.parse(text).and_then(reservoir_common::money::non_negative);
                        RolloverMax::Amount(
                            violations.amount_with("rollover.max_amount", text, parse).unwrap_or_default(),
                        )
                    }
                    (_, _) => {
                        violations.add("rollover.max_percent", "is not given with max_amount");
                        RolloverMax::All
                    }
                };
                Some(Rollover { from, max, expires_at: rollover_expires_at })
            }
            _ => None,
        };
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
        let command = match rollover {
            Some(rollover) => Command::GrantRollingOver { new, rollover },
            None => Command::Grant(new),
        };
        let reply = self.store.submit(tenant, account_id, check, ctx, command).await?;
        Ok(Response::new(respond::respond(reply, |answer| respond::grant(answer, &unit))?))
    }

    pub(super) async fn reserve_impl(
        &self,
        request: Request<pb::ReserveRequest>,
    ) -> Result<Response<pb::ReserveResponse>, Status> {
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

    pub(super) async fn capture_hold_impl(
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

    pub(super) async fn release_hold_impl(
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

    pub(super) async fn adjust_impl(
        &self,
        request: Request<pb::AdjustRequest>,
    ) -> Result<Response<pb::AdjustResponse>, Status> {
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

    pub(super) async fn refund_impl(
        &self,
        request: Request<pb::RefundRequest>,
    ) -> Result<Response<pb::RefundResponse>, Status> {
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

    pub(super) async fn void_grant_impl(
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
        // An amount claws back part of what is left; none voids it all.
        let mut violations = Violations::default();
        let amount = (!request.amount.is_empty())
            .then(|| violations.positive_amount("amount", &unit, &request.amount))
            .flatten();
        violations.finish()?;
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
                    match amount {
                        Some(amount) => {
                            loaded.wallet.claw_back(&ctx, grant_id, amount)?;
                        }
                        None => loaded.wallet.void_grant(&ctx, grant_id)?,
                    }
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

    pub(super) async fn transfer_impl(
        &self,
        request: Request<pb::TransferRequest>,
    ) -> Result<Response<pb::TransferResponse>, Status> {
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
        let asked = TransferAsked {
            from,
            to,
            amount: amount.unwrap_or_default(),
            idempotency_key: request.idempotency_key.clone(),
            description: request.description.clone(),
            correlation_id: request.correlation_id.clone(),
            metadata: request.metadata.clone(),
        };
        let ctx = transfer_context(&asked, key);
        let response = self.transfer_asked(tenant, &asked, &check, &ctx, None, &unit).await?;
        Ok(Response::new(response))
    }

    /// A transfer as asked (now, or by a release), under the tenant's rules
    /// unless `release` names the review it is released from.
    pub(super) async fn transfer_asked(
        &self,
        tenant: TenantId,
        asked: &TransferAsked,
        check: &IdempotencyCheck,
        ctx: &OperationContext,
        release: Option<(uuid::Uuid, &str)>,
        unit: &Unit,
    ) -> Result<pb::TransferResponse, WalletError> {
        let transferred = self
            .store
            .transfer(tenant, asked, check, ctx, release, |sender, receiver, allow_promotional| {
                sender.transfer_to(receiver, ctx, asked.amount, allow_promotional)?;
                let grants = receiver
                    .grants
                    .iter()
                    .filter(|grant| receiver.changes().new_grants.contains(&grant.id))
                    .cloned()
                    .collect();
                Ok(Answer {
                    wallets: vec![WalletAnswer::of(sender, ctx), WalletAnswer::of(receiver, ctx)],
                    grants,
                    ..Answer::at(ctx.now)
                })
            })
            .await?;
        match transferred {
            Transferred::Moved(reply) => respond::respond(reply, |answer| respond::transfer(answer, unit)),
            Transferred::Held(review) => {
                Ok(pb::TransferResponse { review: Some(convert::review(&review, unit)), ..Default::default() })
            }
            Transferred::Refused(rule) => Err(DomainError::FraudSuspected(rule.name()).into()),
        }
    }
}

/// What every entry and event of a transfer carries.
pub(super) fn transfer_context(asked: &TransferAsked, key: Option<KeyId>) -> OperationContext {
    let mut ctx = OperationContext::new(now(), asked.idempotency_key.clone()).with_key(key);
    ctx.correlation_id = asked.correlation_id.clone();
    ctx.description = asked.description.clone();
    ctx.metadata = asked.metadata.clone();
    ctx
}

/// The answer of a change to a hold: the hold as it stands, the entries and the balance.
fn hold_answer(wallet: &Wallet, ctx: &OperationContext, hold_id: HoldId) -> Result<Answer, WalletError> {
    let hold = wallet.hold_by_id(hold_id).ok_or(DomainError::Inconsistent("the hold is missing"))?;
    Ok(Answer { hold: Some(hold.clone()), wallets: vec![WalletAnswer::of(wallet, ctx)], ..Answer::at(ctx.now) })
}
