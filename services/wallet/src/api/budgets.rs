//! Handlers of shared budgets: setting and clearing a child's draws on its
//! parent, and a child's debit, which changes both wallets at once.

use reservoir_common::auth::{KeyId, TenantId, tenant_of};
use reservoir_proto::wallet as pb;
use rust_decimal::Decimal;
use tonic::{Request, Response, Status};

use super::validate::*;
use super::{WalletApi, convert};
use crate::domain::*;
use crate::error::WalletError;
use crate::store::{IdempotencyCheck, Reply, Submitted};

impl WalletApi {
    pub(super) async fn set_budget_impl(
        &self,
        request: Request<pb::SetBudgetRequest>,
    ) -> Result<Response<pb::SetBudgetResponse>, Status> {
        let tenant = tenant_of(&request)?;
        let request = request.into_inner();
        let mut violations = Violations::default();
        let child = violations.id("account_id", &request.account_id, AccountId);
        let parent = violations.id("parent_account_id", &request.parent_account_id, AccountId);
        if child.is_some() && child == parent {
            violations.add("parent_account_id", "must differ from account_id");
        }
        let period = match pb::BudgetPeriod::try_from(request.period) {
            Ok(pb::BudgetPeriod::Day) => Some(BudgetPeriod::Day),
            Ok(pb::BudgetPeriod::Month) => Some(BudgetPeriod::Month),
            Ok(pb::BudgetPeriod::Unspecified) | Err(_) => {
                violations.add("period", "must be DAY or MONTH");
                None
            }
        };
        violations.finish()?;
        let (Some(child), Some(parent), Some(period)) = (child, parent, period) else {
            return Err(WalletError::internal("validated fields missing").into());
        };
        let unit = self.unit_of(tenant, child).await?;
        let mut violations = Violations::default();
        let limit = (!request.limit.is_empty()).then(|| violations.positive_amount("limit", &unit, &request.limit));
        violations.finish()?;
        let now = now();
        let budget = self.store.set_budget(tenant, child, parent, limit.flatten(), period, now).await?;
        Ok(Response::new(pb::SetBudgetResponse { budget: Some(convert::budget(&budget, &unit, now)) }))
    }

    pub(super) async fn clear_budget_impl(
        &self,
        request: Request<pb::ClearBudgetRequest>,
    ) -> Result<Response<pb::ClearBudgetResponse>, Status> {
        let tenant = tenant_of(&request)?;
        let mut violations = Violations::default();
        let child = violations.id("account_id", &request.get_ref().account_id, AccountId);
        violations.finish()?;
        let child = child.ok_or_else(|| WalletError::internal("validated id missing"))?;
        self.store.clear_budget(tenant, child, now()).await?;
        Ok(Response::new(pb::ClearBudgetResponse {}))
    }

    /// A child's usage line: each amount in order from its own credits
    /// first and the rest from its parent within the budget, in one
    /// transaction. A line whose budget was cleared meanwhile is drawn
    /// alone, through the committer.
    pub(super) async fn draw_usage_shared(
        &self,
        tenant: TenantId,
        key: Option<KeyId>,
        line: &pb::UsageLine,
    ) -> Result<Reply, WalletError> {
        let (submitted, _) = self.check_line(tenant, key, line).await?;
        let Command::DrawUsage { meter_code, amounts } = &submitted.command else {
            return Err(WalletError::internal("a usage line made another command"));
        };
        let ctx = &submitted.ctx;
        let shared = self
            .store
            .mutate_shared(tenant, submitted.account, &submitted.check, ctx.now, |child, parent, budget| {
                let usage = child.draw_usage_shared(parent, budget, ctx, meter_code, amounts)?;
                Ok(Answer {
                    wallets: vec![WalletAnswer::of(child, ctx), WalletAnswer::of(parent, ctx)],
                    usage: Some(usage),
                    ..Answer::at(ctx.now)
                })
            })
            .await?;
        match shared {
            Some(reply) => Ok(reply),
            None => {
                let Submitted { tenant, account, check, ctx, command } = submitted;
                self.store.submit(tenant, account, check, ctx, command).await
            }
        }
    }

    /// A child's debit: its own credits first, the rest from its parent
    /// within the budget, in one transaction. An account whose budget was
    /// cleared meanwhile is debited alone, through the committer.
    pub(super) async fn debit_shared(
        &self,
        tenant: TenantId,
        child: AccountId,
        check: &IdempotencyCheck,
        ctx: &OperationContext,
        amount: Decimal,
        meter_code: Option<&str>,
    ) -> Result<Reply, WalletError> {
        let shared = self
            .store
            .mutate_shared(tenant, child, check, ctx.now, |child, parent, budget| {
                child.debit_shared(parent, budget, ctx, amount, meter_code)?;
                Ok(Answer {
                    wallets: vec![WalletAnswer::of(child, ctx), WalletAnswer::of(parent, ctx)],
                    ..Answer::at(ctx.now)
                })
            })
            .await?;
        match shared {
            Some(reply) => Ok(reply),
            None => {
                let command = Command::Debit { amount, meter_code: meter_code.map(str::to_owned) };
                self.store.submit(tenant, child, check.clone(), ctx.clone(), command).await
            }
        }
    }
}
