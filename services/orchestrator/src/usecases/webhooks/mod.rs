//! Webhooks: every wallet, payment, invoice and top-up event of a tenant with an
//! endpoint is kept as a message and delivered to each endpoint that wants
//! it, as a signed JSON POST, until a 2xx answer or the end of the retry
//! period. Each (tenant, source) stream is followed from a cursor of its own;
//! deliveries of one endpoint, account and source go out in sequence order,
//! each only after the one before it succeeded or was given up.

mod delivery;
mod follow;
mod messages;
mod settings;

pub use self::messages::{event_types, invoice_message, payments_message, top_up_message, wallet_message};
pub use self::settings::WebhookSettings;

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use reservoir_common::auth::TenantId;
use tokio::sync::watch;

use crate::clients::Upstream;
use crate::error::OrchestratorError;
use crate::store::Store;

/// Where events come from; each is followed per tenant from its own cursor.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Source {
    Wallet,
    Payments,
    Invoices,
    TopUps,
}

impl Source {
    pub const ALL: [Source; 4] = [Source::Wallet, Source::Payments, Source::Invoices, Source::TopUps];

    pub fn name(self) -> &'static str {
        match self {
            Self::Wallet => "wallet",
            Self::Payments => "payments",
            Self::Invoices => "invoices",
            Self::TopUps => "top_ups",
        }
    }

    fn cursor(self) -> &'static str {
        match self {
            Self::Wallet => "webhooks:wallet",
            Self::Payments => "webhooks:payments",
            Self::Invoices => "webhooks:invoices",
            Self::TopUps => "webhooks:top_ups",
        }
    }
}

#[derive(Clone)]
pub struct Webhooks {
    store: Store,
    upstream: Upstream,
    http: reqwest::Client,
    settings: WebhookSettings,
    /// The (tenant, source) streams this replica follows.
    following: Arc<Mutex<HashSet<(TenantId, Source)>>>,
    stopping: watch::Receiver<bool>,
}

impl Webhooks {
    pub fn new(
        store: Store,
        upstream: Upstream,
        settings: WebhookSettings,
        stopping: watch::Receiver<bool>,
    ) -> Result<Self, OrchestratorError> {
        let mut http = reqwest::Client::builder()
            .timeout(Duration::from_millis(settings.timeout_ms))
            .redirect(reqwest::redirect::Policy::none())
            .user_agent("Reservoir-Webhooks/1");
        if !settings.allow_private_destinations {
            http = http.dns_resolver(Arc::new(crate::clients::destination::PublicOnly));
        }
        let http =
            http.build().map_err(|error| OrchestratorError::internal(format!("the webhook HTTP client: {error}")))?;
        Ok(Self { store, upstream, http, settings, following: Arc::default(), stopping })
    }

    /// One pass: a follower for every stream of every tenant with an
    /// endpoint, then an attempt at every delivery due.
    pub async fn pass(&self) -> Result<(), OrchestratorError> {
        for tenant in self.store.tenants_with_webhooks().await? {
            for source in Source::ALL {
                self.follow(tenant, source);
            }
        }
        self.deliver_due().await
    }
}
