//! Handlers of accounts, their settings and the tenant's: opening,
//! reading, listing and updating them, and who the caller is.

use reservoir_common::auth::{Caller, TenantId, caller_of, key_of, tenant_of};
use reservoir_common::money::{Unit, non_negative, positive};
use reservoir_common::paging::Page;
use reservoir_proto::wallet as pb;
use rust_decimal::Decimal;
use tonic::{Request, Response, Status};

use super::validate::*;
use super::{WalletApi, convert, respond};
use crate::domain::fraud::{FraudAction, TransferRules};
use crate::domain::*;
use crate::error::WalletError;
use crate::store::LoadPlan;

impl WalletApi {
    pub(super) async fn create_account_impl(
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

    pub(super) async fn get_account_impl(
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

    pub(super) async fn get_unit_impl(
        &self,
        request: Request<pb::GetUnitRequest>,
    ) -> Result<Response<pb::GetUnitResponse>, Status> {
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

    pub(super) async fn list_accounts_impl(
        &self,
        request: Request<pb::ListAccountsRequest>,
    ) -> Result<Response<pb::ListAccountsResponse>, Status> {
        let tenant = tenant_of(&request)?;
        let request = request.into_inner();
        let mut violations = Violations::default();
        violations.text("external_id", &request.external_id, ID_LENGTH_MAX);
        // Looked up by external_id, there is no page: tokens stay those of the full list.
        let page = Page::<uuid::Uuid>::of(&mut violations, request.page_size, &request.page_token, &());
        violations.finish()?;
        if !request.external_id.is_empty() {
            let held = match self.store.account_holding(tenant, &request.external_id).await? {
                Some(id) => vec![convert::account(&self.store.account(tenant, id).await?)],
                None => Vec::new(),
            };
            return Ok(Response::new(pb::ListAccountsResponse { accounts: held, next_page_token: String::new() }));
        }
        let accounts = self.store.accounts_page(tenant, page.after.map(AccountId), page.rows_to_read()).await?;
        let (accounts, next_page_token) = page.finish(accounts, |account| account.id.0);
        Ok(Response::new(pb::ListAccountsResponse {
            accounts: accounts.iter().map(convert::account).collect(),
            next_page_token,
        }))
    }

    pub(super) async fn update_account_impl(
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

    pub(super) async fn get_tenant_settings_impl(
        &self,
        request: Request<pb::GetTenantSettingsRequest>,
    ) -> Result<Response<pb::GetTenantSettingsResponse>, Status> {
        let tenant = tenant_of(&request)?;
        Ok(Response::new(pb::GetTenantSettingsResponse { settings: Some(self.tenant_settings(tenant).await?) }))
    }

    pub(super) async fn update_tenant_settings_impl(
        &self,
        request: Request<pb::UpdateTenantSettingsRequest>,
    ) -> Result<Response<pb::UpdateTenantSettingsResponse>, Status> {
        let tenant = tenant_of(&request)?;
        let request = request.into_inner();
        let rules = request.transfer_fraud.as_ref().map(transfer_rules).transpose()?;
        if let Some(allow) = request.allow_promotional_transfers {
            self.store.set_allow_promotional_transfers(tenant, allow).await?;
        }
        if let Some(rules) = rules {
            self.store.set_transfer_rules(tenant, &rules).await?;
        }
        Ok(Response::new(pb::UpdateTenantSettingsResponse { settings: Some(self.tenant_settings(tenant).await?) }))
    }

    async fn tenant_settings(&self, tenant: TenantId) -> Result<pb::TenantSettings, WalletError> {
        let allow = self.store.allow_promotional_transfers(tenant).await?;
        let rules = self.store.transfer_rules(tenant).await?;
        Ok(pb::TenantSettings { allow_promotional_transfers: allow, transfer_fraud: convert::transfer_rules(&rules) })
    }

    pub(super) async fn get_caller_impl(
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

/// Transfer fraud rules, checked field by field. Amounts are plain
/// decimals of at most the widest scale (rules span accounts of any unit).
fn transfer_rules(wanted: &pb::TransferFraudRules) -> Result<TransferRules, WalletError> {
    const FIELD: &str = "transfer_fraud";
    let mut violations = Violations::default();
    let action = match pb::FraudAction::try_from(wanted.action) {
        Ok(pb::FraudAction::Refuse | pb::FraudAction::Unspecified) => FraudAction::Refuse,
        Ok(pb::FraudAction::Review) => FraudAction::Review,
        Err(_) => {
            violations.add(format!("{FIELD}.action"), "must be REFUSE or REVIEW");
            FraudAction::Refuse
        }
    };
    let mut amount = |field: &str, text: &str| {
        (!text.is_empty())
            .then(|| {
                violations.amount_with(&format!("{FIELD}.{field}"), text, |text| {
                    reservoir_common::money::parse_amount(text, reservoir_common::money::SCALE_MAX)
                        .and_then(reservoir_common::money::positive)
                })
            })
            .flatten()
    };
    let velocity_max_amount = amount("velocity_max_amount", &wanted.velocity_max_amount);
    let new_recipient_max_amount = amount("new_recipient_max_amount", &wanted.new_recipient_max_amount);
    let velocity_max_count = (wanted.velocity_max_count > 0).then_some(wanted.velocity_max_count);
    if wanted.velocity_window_seconds == 0 && (velocity_max_count.is_some() || velocity_max_amount.is_some()) {
        violations.add(format!("{FIELD}.velocity_window_seconds"), "is required with a velocity limit");
    }
    if wanted.new_recipient_cooling_seconds == 0 && new_recipient_max_amount.is_some() {
        violations.add(format!("{FIELD}.new_recipient_cooling_seconds"), "is required with new_recipient_max_amount");
    }
    violations.finish()?;
    Ok(TransferRules {
        action,
        velocity_window: chrono::Duration::seconds(i64::from(wanted.velocity_window_seconds)),
        velocity_max_count,
        velocity_max_amount,
        new_recipient_max_amount,
        new_recipient_cooling: chrono::Duration::seconds(i64::from(wanted.new_recipient_cooling_seconds)),
    })
}
