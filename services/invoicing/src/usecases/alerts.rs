//! Billing alerts by email. For each tenant with recipients, this replica
//! follows the wallet's events (balances, spending caps) and reads
//! invoicing's own (top-ups paid); each event alerted on becomes one stored
//! mail, in the transaction that moves that source's cursor past it, so an
//! event read twice (after a restart, or by two replicas) is mailed once.
//! Mails are then sent and retried as scheduled reports are.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration as StdDuration, Instant};

use chrono::{DateTime, Duration, Utc};
use futures::StreamExt;
use reservoir_common::auth::TenantId;
use rust_decimal::Decimal;
use tokio::sync::watch;

use crate::clients::Upstream;
use crate::clients::mail::Mailer;
use crate::domain::{Alert, AlertKind, SEND_ATTEMPTS_MAX, alert_recipients, currency_scale, format_money, retry_at};
use crate::error::InvoicingError;
use crate::store::{AlertMail, AlertSource, RunStatus, Store};
use crate::usecases::billing::Clock;

/// How long a replica holds a mail it is sending.
const SEND_LEASE_MINUTES: i64 = 5;
/// How long a broken event stream waits before connecting again.
const RECONNECT: StdDuration = StdDuration::from_secs(1);
/// How often the cursor is saved while only events without alerts pass.
const CURSOR_SAVE_INTERVAL: StdDuration = StdDuration::from_secs(1);
/// Invoicing events one pass reads at most for each tenant.
const EVENT_BATCH: u64 = 500;

#[derive(Clone)]
pub struct Alerts {
    store: Store,
    upstream: Upstream,
    mailer: Mailer,
    clock: Clock,
    /// The tenants whose wallet events this replica follows.
    following: Arc<Mutex<HashSet<TenantId>>>,
}

impl Alerts {
    pub fn new(store: Store, upstream: Upstream, mailer: Mailer, clock: Clock) -> Self {
        Self { store, upstream, mailer, clock, following: Arc::default() }
    }

    fn now(&self) -> DateTime<Utc> {
        (self.clock)()
    }

    /// The same alerts reading the time from `clock`.
    pub fn with_clock(&self, clock: Clock) -> Self {
        Self { clock, ..self.clone() }
    }

    /// Follows the wallet's events of every tenant with recipients (once per
    /// replica), turns its top-ups paid into mails, and sends the mails due.
    pub async fn pass(&self, stopping: &watch::Receiver<bool>) -> Result<(), InvoicingError> {
        for tenant in self.store.tenants_with_alerts().await? {
            self.follow(tenant, stopping.clone());
            self.read_invoicing_events(tenant).await?;
        }
        self.send_due().await
    }

    /// Who gets an alert of `tenant` that happened at `at`: nobody when it
    /// happened before the recipients were set.
    async fn recipients(&self, tenant: TenantId, at: DateTime<Utc>) -> Result<Vec<String>, InvoicingError> {
        let Some(settings) = self.store.alert_settings(tenant).await? else {
            return Ok(Vec::new());
        };
        if settings.recipients.is_empty() || at < settings.enabled_at {
            return Ok(Vec::new());
        }
        let contact = self.store.report_schedule(tenant).await?.map(|schedule| schedule.billing_contact);
        Ok(alert_recipients(&settings.recipients, contact.as_deref()))
    }

    /// Stores the mail of an alert, or only moves the cursor past it when
    /// nobody is to get it.
    async fn alert(
        &self,
        tenant: TenantId,
        source: AlertSource,
        sequence: u64,
        alert: &Alert,
    ) -> Result<(), InvoicingError> {
        let recipients = self.recipients(tenant, alert.occurred_at).await?;
        if recipients.is_empty() {
            return self.store.save_alert_cursor(tenant, source, sequence).await;
        }
        self.store.record_alert(tenant, source, sequence, alert, &recipients, self.now()).await?;
        tracing::info!(%tenant, kind = alert.kind.name(), account = %alert.account_id, "billing alert stored");
        Ok(())
    }

    /// Invoicing's own events: a top-up invoice paid is an alert.
    async fn read_invoicing_events(&self, tenant: TenantId) -> Result<(), InvoicingError> {
        let after = self.store.alert_cursor(tenant, AlertSource::Invoicing).await?;
        let events = self.store.events_after(tenant, after, EVENT_BATCH).await?;
        let Some(last) = events.last().map(|event| event.sequence) else {
            return Ok(());
        };
        for event in events {
            if event.event_type == "INVOICE_PAID" && event.kind == "TOP_UP" {
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
                self.alert(tenant, AlertSource::Invoicing, event.sequence, &alert).await?;
            }
        }
        self.store.save_alert_cursor(tenant, AlertSource::Invoicing, last).await
    }

    /// Starts following a tenant's wallet events, unless this replica does.
    fn follow(&self, tenant: TenantId, stopping: watch::Receiver<bool>) {
        let fresh = self.following.lock().is_ok_and(|mut following| following.insert(tenant));
        if !fresh {
            return;
        }
        let alerts = self.clone();
        tokio::spawn(async move {
            let mut stopping = stopping;
            while !*stopping.borrow() {
                if let Err(error) = alerts.follow_wallet(tenant, &mut stopping).await {
                    tracing::warn!(%error, %tenant, "the wallet's event stream broke; connecting again");
                }
                tokio::select! {
                    () = tokio::time::sleep(RECONNECT) => {}
                    _ = stopping.changed() => {}
                }
            }
        });
    }

    async fn follow_wallet(
        &self,
        tenant: TenantId,
        stopping: &mut watch::Receiver<bool>,
    ) -> Result<(), InvoicingError> {
        let after = self.store.alert_cursor(tenant, AlertSource::Wallet).await?;
        let mut events = self.upstream.wallet_events(tenant, after).await?;
        // Events without alerts move the cursor now and then, not each time.
        let mut unsaved = None;
        let mut saved_at = Instant::now();
        let result = loop {
            let next = tokio::select! {
                next = events.next() => next,
                _ = stopping.changed() => break Ok(()),
            };
            let Some(event) = next else { break Ok(()) };
            let event = match event {
                Ok(event) => event,
                Err(error) => break Err(error),
            };
            match &event.alert {
                Some(alert) => {
                    self.alert(tenant, AlertSource::Wallet, event.sequence, alert).await?;
                    unsaved = None;
                    saved_at = Instant::now();
                }
                None => unsaved = Some(event.sequence),
            }
            if let Some(sequence) = unsaved
                && saved_at.elapsed() >= CURSOR_SAVE_INTERVAL
            {
                self.store.save_alert_cursor(tenant, AlertSource::Wallet, sequence).await?;
                unsaved = None;
                saved_at = Instant::now();
            }
        };
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
        let finished = match self.mailer.send(&mail.recipients, &mail.subject, &mail.body, Vec::new()).await {
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
