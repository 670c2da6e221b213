//! Handlers of debits: one, a batch, usage lines drawn by metering, and a
//! quote of what a debit would do. Each checks its request, hands commands
//! to the store's group committer and translates the domain's answers.

use reservoir_common::auth::{KeyId, TenantId, key_of, tenant_of};
use reservoir_common::money::Unit;
use reservoir_proto::wallet as pb;
use rust_decimal::Decimal;
use tonic::{Request, Response, Status};

use super::validate::*;
use super::{WalletApi, convert, respond};
use crate::domain::*;
use crate::error::WalletError;
use crate::store::Submitted;

impl WalletApi {
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
        let context = || {
            let mut ctx = OperationContext::new(now(), request.idempotency_key.clone()).with_key(key);
            ctx.correlation_id = request.correlation_id.clone();
            ctx.description = request.description.clone();
            ctx.metadata = request.metadata.clone();
            ctx
        };
        let meter = (!request.meter_code.is_empty()).then(|| request.meter_code.clone());
        // Debits go through the group committer; it checks the key under the
        // account's lock, so a retry replays the original result. A child's
        // (which the committer hands back, having written nothing) draws on
        // its parent's wallet too.
        let command = Command::Debit { amount, meter_code: meter.clone() };
        let reply = match self.store.submit(tenant, account_id, check, context(), command).await {
            Err(WalletError::Domain(DomainError::DrawsOnParent)) => {
                let check = idempotency_check(tenant, "Debit", &request.idempotency_key, &request);
                self.debit_shared(tenant, account_id, &check, &context(), amount, meter.as_deref()).await?
            }
            reply => reply?,
        };
        respond::respond(reply, |answer| respond::debit(answer, &unit))
    }

    /// One line of DrawUsage, checked and made a command for the group committer.
    pub(super) async fn check_line(
        &self,
        tenant: TenantId,
        key: Option<KeyId>,
        line: &pb::UsageLine,
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
        let check = idempotency_check(tenant, "DrawUsage", &line.idempotency_key, line);
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

    /// Fetches, in one query, the units of those accounts not yet remembered.
    async fn learn_units(&self, tenant: TenantId, accounts: Vec<AccountId>) -> Result<(), WalletError> {
        self.units.learn(tenant, accounts).await
    }

    pub(super) async fn debit_impl(
        &self,
        request: Request<pb::DebitRequest>,
    ) -> Result<Response<pb::DebitResponse>, Status> {
        let tenant = tenant_of(&request)?;
        Ok(Response::new(self.debit_one(tenant, key_of(&request), request.into_inner()).await?))
    }

    pub(super) async fn batch_debit_impl(
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

    pub(super) async fn draw_usage_impl(
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
        for line in &request.lines {
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
        let mut replies = self.store.submit_all(checked).await;
        // A child's lines (which the committer hands back, having written
        // nothing) draw on their parents' wallets too, one after another.
        for (reply, line) in replies.iter_mut().zip(&request.lines) {
            if matches!(reply, Err(WalletError::Domain(DomainError::DrawsOnParent))) {
                *reply = self.draw_usage_shared(tenant, key, line).await;
            }
        }
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

    pub(super) async fn quote_debit_impl(
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
                        hash: String::new(),
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
    pb::DebitError { code: super::status::code(&error) as i32, reason: error.reason().to_owned(), message, fields }
}
