//! Handlers of the fraud rules on charges: the tenant's rules, an
//! operator's decision on a held payment, and the decisions made.

use chrono::Duration;
use reservoir_common::auth::tenant_of;
use reservoir_common::money::{SCALE_MAX, parse_amount, positive};
use reservoir_common::paging::Page;
use reservoir_common::time::{now, to_timestamp};
use reservoir_common::validate::Violations;
use reservoir_proto::payments as pb;
use rust_decimal::Decimal;
use tonic::{Request, Response, Status};
use uuid::Uuid;

use super::convert::payment_to_pb;
use super::{PaymentsApi, missing};
use crate::domain::fraud::{ChargeRules, FraudAction, Velocity};
use crate::error::PaymentsError;

/// Decision reasons: a sentence or two for the record.
const REASON_LENGTH_MAX: usize = 512;

fn rules_to_pb(rules: &ChargeRules) -> Option<pb::ChargeFraudRules> {
    let text = |amount: Option<Decimal>| amount.map(|amount| amount.normalize().to_string()).unwrap_or_default();
    let seconds = |span: Duration| u32::try_from(span.num_seconds()).unwrap_or(u32::MAX);
    rules.is_active().then(|| pb::ChargeFraudRules {
        action: match rules.action {
            FraudAction::Refuse => pb::FraudAction::Refuse,
            FraudAction::Review => pb::FraudAction::Review,
        }
        .into(),
        velocity_window_seconds: seconds(rules.velocity_window),
        account_max_count: rules.account.max_count.unwrap_or(0),
        account_max_amount: text(rules.account.max_amount),
        method_max_count: rules.method.max_count.unwrap_or(0),
        method_max_amount: text(rules.method.max_amount),
        max_declines: rules.max_declines.unwrap_or(0),
        decline_window_seconds: seconds(rules.decline_window),
    })
}

/// The rules asked for, checked field by field. Amounts are plain decimals
/// of at most the widest scale: they compare with charges in any currency.
fn rules_of(wanted: &pb::ChargeFraudRules) -> Result<ChargeRules, PaymentsError> {
    let mut violations = Violations::default();
    let action = match pb::FraudAction::try_from(wanted.action) {
        Ok(pb::FraudAction::Refuse | pb::FraudAction::Unspecified) => FraudAction::Refuse,
        Ok(pb::FraudAction::Review) => FraudAction::Review,
        Err(_) => {
            violations.add("rules.action", "must be REFUSE or REVIEW");
            FraudAction::Refuse
        }
    };
    let mut amount = |field: &str, text: &str| {
        (!text.is_empty())
            .then(|| violations.amount_with(field, text, |text| parse_amount(text, SCALE_MAX).and_then(positive)))
            .flatten()
    };
    let account = Velocity {
        max_count: (wanted.account_max_count > 0).then_some(wanted.account_max_count),
        max_amount: amount("rules.account_max_amount", &wanted.account_max_amount),
    };
    let method = Velocity {
        max_count: (wanted.method_max_count > 0).then_some(wanted.method_max_count),
        max_amount: amount("rules.method_max_amount", &wanted.method_max_amount),
    };
    let counts = account != Velocity::default() || method != Velocity::default();
    if counts && wanted.velocity_window_seconds == 0 {
        violations.add("rules.velocity_window_seconds", "is required with a velocity limit");
    }
    if wanted.max_declines > 0 && wanted.decline_window_seconds == 0 {
        violations.add("rules.decline_window_seconds", "is required with max_declines");
    }
    violations.finish()?;
    Ok(ChargeRules {
        action,
        velocity_window: Duration::seconds(i64::from(wanted.velocity_window_seconds)),
        account,
        method,
        max_declines: (wanted.max_declines > 0).then_some(wanted.max_declines),
        decline_window: Duration::seconds(i64::from(wanted.decline_window_seconds)),
    })
}

impl PaymentsApi {
    pub(super) async fn get_fraud_rules_impl(
        &self,
        request: Request<pb::GetFraudRulesRequest>,
    ) -> Result<Response<pb::GetFraudRulesResponse>, Status> {
        let tenant = tenant_of(&request)?;
        let rules = self.store.fraud_rules(tenant).await?;
        Ok(Response::new(pb::GetFraudRulesResponse { rules: rules_to_pb(&rules) }))
    }

    pub(super) async fn update_fraud_rules_impl(
        &self,
        request: Request<pb::UpdateFraudRulesRequest>,
    ) -> Result<Response<pb::UpdateFraudRulesResponse>, Status> {
        let tenant = tenant_of(&request)?;
        let rules = request.get_ref().rules.as_ref().map(rules_of).transpose()?.unwrap_or_default();
        self.store.set_fraud_rules(tenant, &rules, now()).await?;
        Ok(Response::new(pb::UpdateFraudRulesResponse { rules: rules_to_pb(&rules) }))
    }

    pub(super) async fn review_payment_impl(
        &self,
        request: Request<pb::ReviewPaymentRequest>,
    ) -> Result<Response<pb::ReviewPaymentResponse>, Status> {
        let tenant = tenant_of(&request)?;
        let request = request.into_inner();
        let mut violations = Violations::default();
        let payment_id = violations.id("payment_id", &request.payment_id, |id| id);
        let release = match pb::ReviewDecision::try_from(request.decision) {
            Ok(pb::ReviewDecision::Release) => Some(true),
            Ok(pb::ReviewDecision::Reject) => Some(false),
            _ => {
                violations.add("decision", "must be RELEASE or REJECT");
                None
            }
        };
        violations.text("reason", &request.reason, REASON_LENGTH_MAX);
        violations.finish().map_err(PaymentsError::from)?;
        let (payment_id, release) = (payment_id.ok_or_else(missing)?, release.ok_or_else(missing)?);
        self.charges.review(tenant, payment_id, release, &request.reason).await?;
        let record = self.record_of(tenant, payment_id).await?;
        Ok(Response::new(pb::ReviewPaymentResponse { payment: Some(payment_to_pb(&record)) }))
    }

    pub(super) async fn list_fraud_decisions_impl(
        &self,
        request: Request<pb::ListFraudDecisionsRequest>,
    ) -> Result<Response<pb::ListFraudDecisionsResponse>, Status> {
        let tenant = tenant_of(&request)?;
        let request = request.into_inner();
        let mut violations = Violations::default();
        let page = Page::<Uuid>::of(&mut violations, request.page_size, &request.page_token, &());
        violations.finish().map_err(PaymentsError::from)?;
        let rows = self.store.fraud_decisions(tenant, page.after, page.rows_to_read()).await?;
        let (rows, next_page_token) = page.finish(rows, |row| row.id);
        let decisions = rows
            .iter()
            .map(|row| pb::FraudDecision {
                id: row.id.to_string(),
                account_id: row.account_id.to_string(),
                payment_id: row.payment_id.map(|id| id.to_string()).unwrap_or_default(),
                payment_method_id: row.payment_method_id.map(|id| id.to_string()).unwrap_or_default(),
                amount: row.amount.normalize().to_string(),
                currency: row.currency.clone(),
                rule: row.rule.name().to_owned(),
                decision: row.decision.clone(),
                reason: row.reason.clone(),
                decided_at: Some(to_timestamp(row.decided_at)),
            })
            .collect();
        Ok(Response::new(pb::ListFraudDecisionsResponse { decisions, next_page_token }))
    }
}
