//! Billing alerts by email. Each worker pass reads, for every tenant with
//! recipients, the wallet's events since the tenant's cursor (balances,
//! spending caps: a stream opened for the pass and closed once it goes
//! quiet) and invoicing's own (top-ups paid); each event alerted on becomes
//! one stored mail, in the transaction that moves that source's cursor past
//! it, so an event read twice (after a restart, or by two replicas) is
//! stored once. Stored mails are then sent, at least once, and retried as
//! scheduled reports are. No stream stays open between passes: a replica
//! holds at most a few at a time, whatever the number of tenants.

use std::time::Duration as StdDuration;

use chrono::{DateTime, Duration, Utc};
use futures::StreamExt;
use reservoir_common::auth::TenantId;
use rust_decimal::Decimal;

use crate::clients::Upstream;
use crate::clients::mail::Mailer;
use crate::domain::{Alert, AlertKind, SEND_ATTEMPTS_MAX, currency_scale, format_money, recipients, retry_at};
use crate::error::InvoicingError;
use crate::store::{AlertMail, AlertSettings, AlertSource, RunStatus, Store};
use crate::usecases::billing::Clock;

/// How long a replica holds a mail it is sending.
const SEND_LEASE_MINUTES: i64 = 5;
/// A pass stops reading a tenant's wallet events once none came for this long.
const QUIET: StdDuration = StdDuration::from_millis(100);
/// How long one pass reads a tenant's wallet events at most (a busy tenant's
/// stream never goes quiet); the next pass goes on from there.
const WALLET_READ_MAX: StdDuration = StdDuration::from_secs(2);
/// Invoicing events one pass reads at most for each tenant.
const INVOICING_EVENTS_PER_PASS: u64 = 500;
/// Tenants whose events a pass reads at once.
const TENANTS_AT_ONCE: usize = 8;

/// Who gets a tenant's alerts in this pass: the billing contact and the
/// recipients, for what happened since the recipients were first set.
struct Audience {
    tenant: TenantId,
    recipients: Vec<String>,
    since: DateTime<Utc>,
}

#[derive(Clone)]
pub struct Alerts {
    store: Store,
    upstream: Upstream,
    mailer: Mailer,
    clock: Clock,
}

impl Alerts {
    pub fn new(store: Store, upstream: Upstream, mailer: Mailer, clock: Clock) -> Self {
        Self { store, upstream, mailer, clock }
    }

    fn now(&self) -> DateTime<Utc> {
        (self.clock)()
    }

    /// The same alerts reading the time from `clock`.
    pub fn with_clock(&self, clock: Clock) -> Self {
        Self { clock, ..self.clone() }
    }

    /// Reads the events of every tenant with recipients, storing a mail for
    /// each alert, then sends the mails due. A tenant whose events cannot be
    /// read now (the wallet is down) is read again next pass.
    pub async fn pass(&self) -> Result<(), InvoicingError> {
        let tenants = self.store.tenants_with_alerts().await?;
        let mut reads = futures::stream::iter(tenants)
            .map(|(tenant, settings)| async move { (tenant, self.read_events(tenant, settings).await) })
            .buffer_unordered(TENANTS_AT_ONCE);
        while let Some((tenant, read)) = reads.next().await {
            if let Err(error) = read {
                tracing::warn!(%error, %tenant, "a tenant's events for billing alerts were not read; next pass");
            }
        }
        self.send_due().await
    }

    /// A tenant's events since its cursors, with who gets its alerts read
    /// once for the pass (its settings as the pass found them).
    async fn read_events(&self, tenant: TenantId, settings: AlertSettings) -> Result<(), InvoicingError> {
        let contact = self.store.report_schedule(tenant).await?.map(|schedule| schedule.billing_contact);
        let audience = Audience {
            tenant,
            recipients: recipients(&settings.recipients, contact.as_deref()),
            since: settings.enabled_at,
        };
        self.read_invoicing_events(&audience).await?;
        self.read_wallet_events(&audience).await
    }

    /// Stores the mail of an alert, or only moves the cursor past it when
    /// nobody is to get it.
    async fn alert(
        &self,
        audience: &Audience,
        source: AlertSource,
        sequence: u64,
        alert: &Alert,
    ) -> Result<(), InvoicingError> {
        let tenant = audience.tenant;
        // Nobody gets what happened before the recipients were set.
        if audience.recipients.is_empty() || alert.occurred_at < audience.since {
            return self.store.save_alert_cursor(tenant, source, sequence).await;
        }
        self.store.record_alert(tenant, source, sequence, alert, &audience.recipients, self.now()).await?;
        tracing::info!(%tenant, kind = alert.kind.name(), account = %alert.account_id, "billing alert stored");
        Ok(())
    }

    /// Invoicing's own events: a top-up invoice paid is an alert.
    async fn read_invoicing_events(&self, audience: &Audience) -> Result<(), InvoicingError> {
        let tenant = audience.tenant;
        let after = self.store.alert_cursor(tenant, AlertSource::Invoicing).await?;
        let events = self.store.events_after(tenant, after, INVOICING_EVENTS_PER_PASS).await?;
        let Some(last) = events.last().map(|event| event.sequence) else {
            return Ok(());
        };
        for event in events {
            if event.is_top_up_paid() {
                let alert = Alert {
                    kind: AlertKind::TopUpPaid,
                    account_id: event.account_id,
                    amount: event
                        .total
                        .parse::<Decimal>()
                        .map_or(event.total, |total| format_money(total, currency_scale(&event.currency))),
                    threshold: String::new(),
                    cap_percent: 0,
                    currency: event.currency,
                    occurred_at: event.occurred_at,
                };
                self.alert(audience, AlertSource::Invoicing, event.sequence, &alert).await?;
            }
        }
        self.store.save_alert_cursor(tenant, AlertSource::Invoicing, last).await
    }

    /// The wallet's events since the cursor, until none comes for a moment:
    /// balances and spending caps are alerts. The cursor moves past the
    /// others at the end.
    async fn read_wallet_events(&self, audience: &Audience) -> Result<(), InvoicingError> {
        let tenant = audience.tenant;
        let after = self.store.alert_cursor(tenant, AlertSource::Wallet).await?;
        let mut events = self.upstream.wallet_events(tenant, after).await?;
        let mut unsaved = None;
        let mut result = Ok(());
        let until = tokio::time::Instant::now() + WALLET_READ_MAX;
        while tokio::time::Instant::now() < until {
            let event = match tokio::time::timeout(QUIET, events.next()).await {
                Ok(Some(Ok(event))) => event,
                Ok(Some(Err(error))) => {
                    result = Err(error);
                    break;
                }
                // The stream ended, or nothing more came: read the rest next pass.
                Ok(None) | Err(_) => break,
            };
            match &event.alert {
                Some(alert) => {
                    self.alert(audience, AlertSource::Wallet, event.sequence, alert).await?;
                    unsaved = None;
                }
                None => unsaved = Some(event.sequence),
            }
        }
        if let Some(sequence) = unsaved {
            self.store.save_alert_cursor(tenant, AlertSource::Wallet, sequence).await?;
        }
        result
    }

    /// Sends every mail due. A mail is sent at least once: a replica that
    /// stops after the mail server took it but before it was marked sent
    /// leaves it to be sent again.
    async fn send_due(&self) -> Result<(), InvoicingError> {
        for mail in self.store.pending_alert_mails(self.now()).await? {
            if !self.store.claim_alert_mail(&mail, self.now() + Duration::minutes(SEND_LEASE_MINUTES)).await? {
                continue;
            }
            self.send(&mail).await?;
        }
        Ok(())
    }

    async fn send(&self, mail: &AlertMail) -> Result<(), InvoicingError> {
        let attempt = mail.attempts + 1;
        // Alerts turned off meanwhile failed the mail (see `save_alert_settings`).
        let sent = self.mailer.send(&mail.recipients, &mail.subject, &mail.body, Vec::new()).await;
        let finished = match sent {
            Ok(()) => self.store.finish_alert_mail(mail, RunStatus::Sent, "", self.now()).await?,
            Err(error) => {
                tracing::warn!(%error, mail = %mail.id, "a billing alert was not sent");
                let status = if attempt >= SEND_ATTEMPTS_MAX { RunStatus::Failed } else { RunStatus::Pending };
                self.store.finish_alert_mail(mail, status, &error, retry_at(attempt, self.now())).await?
            }
        };
        if !finished {
            tracing::warn!(mail = %mail.id, "an alert outlived its lease; another replica sends it");
        }
        Ok(())
    }
}
