//! Billing alerts: who gets them, and the mails made (the alerts are found
//! and sent by `usecases::alerts`).

use reservoir_common::auth::tenant_of;
use reservoir_common::paging::page_size;
use reservoir_common::time::to_timestamp;
use reservoir_common::validate::Violations;
use reservoir_proto::invoicing as pb;
use tonic::{Request, Response, Status};

use super::InvoicingApi;
use super::reports::check_recipients;
use crate::domain::{AlertKind, recipients};
use crate::error::InvoicingError;
use crate::store::{AlertMail, RunStatus};

fn kind_to_pb(kind: AlertKind) -> pb::AlertKind {
    match kind {
        AlertKind::BalanceLow => pb::AlertKind::BalanceLow,
        AlertKind::BalanceWarning => pb::AlertKind::BalanceWarning,
        AlertKind::BalanceDepleted => pb::AlertKind::BalanceDepleted,
        AlertKind::SpendingCap => pb::AlertKind::SpendingCap,
        AlertKind::TopUpPaid => pb::AlertKind::TopUpPaid,
    }
}

fn mail_to_pb(mail: &AlertMail) -> pb::AlertMail {
    pb::AlertMail {
        id: mail.id.to_string(),
        kind: kind_to_pb(mail.kind).into(),
        account_id: mail.account_id.to_string(),
        subject: mail.subject.clone(),
        recipients: mail.recipients.clone(),
        status: match mail.status {
            RunStatus::Pending => pb::AlertMailStatus::Pending,
            RunStatus::Sent => pb::AlertMailStatus::Sent,
            RunStatus::Failed => pb::AlertMailStatus::Failed,
        }
        .into(),
        attempts: mail.attempts,
        last_error: mail.last_error.clone(),
        occurred_at: Some(to_timestamp(mail.occurred_at)),
        sent_at: mail.sent_at.map(to_timestamp),
    }
}

impl InvoicingApi {
    pub(super) async fn get_billing_alerts_impl(
        &self,
        request: Request<pb::GetBillingAlertsRequest>,
    ) -> Result<Response<pb::GetBillingAlertsResponse>, Status> {
        let tenant = tenant_of(&request)?;
        let recipients =
            self.store.alert_settings(tenant).await?.map(|settings| settings.recipients).unwrap_or_default();
        Ok(Response::new(pb::GetBillingAlertsResponse { alerts: Some(pb::BillingAlerts { recipients }) }))
    }

    pub(super) async fn update_billing_alerts_impl(
        &self,
        request: Request<pb::UpdateBillingAlertsRequest>,
    ) -> Result<Response<pb::UpdateBillingAlertsResponse>, Status> {
        let tenant = tenant_of(&request)?;
        let Some(wanted) = request.into_inner().alerts else {
            return Err(InvoicingError::field("alerts", "is required").into());
        };
        let mut violations = Violations::default();
        check_recipients(&mut violations, "alerts.recipients", &wanted.recipients);
        violations.finish()?;
        // Each address once, in the order given.
        let recipients = recipients(&wanted.recipients, None);
        // The system clock, as the wallet's events carry theirs (not the
        // billing clock, which tests move).
        let saved = self.store.save_alert_settings(tenant, &recipients, reservoir_common::time::now()).await?;
        Ok(Response::new(pb::UpdateBillingAlertsResponse {
            alerts: Some(pb::BillingAlerts { recipients: saved.recipients }),
        }))
    }

    pub(super) async fn list_alert_mails_impl(
        &self,
        request: Request<pb::ListAlertMailsRequest>,
    ) -> Result<Response<pb::ListAlertMailsResponse>, Status> {
        let tenant = tenant_of(&request)?;
        let mut violations = Violations::default();
        let page_size = page_size(&mut violations, request.get_ref().page_size);
        violations.finish()?;
        let mails = self.store.alert_mails(tenant, u64::from(page_size)).await?;
        Ok(Response::new(pb::ListAlertMailsResponse { mails: mails.iter().map(mail_to_pb).collect() }))
    }
}
