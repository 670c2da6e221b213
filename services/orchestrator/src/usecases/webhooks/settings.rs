//! How webhook deliveries are made and retried, as configured.

use std::time::Duration;

use serde::Deserialize;

/// How deliveries are made and retried.
#[derive(Debug, Clone, Deserialize, schemars::JsonSchema)]
pub struct WebhookSettings {
    /// How often due deliveries are looked for.
    #[serde(default = "interval_ms_default")]
    pub interval_ms: u64,
    /// The wait after the first failed attempt; each later one doubles it.
    #[serde(default = "retry_base_ms_default")]
    pub retry_base_ms: u64,
    /// The longest wait between two attempts.
    #[serde(default = "retry_max_ms_default")]
    pub retry_max_ms: u64,
    /// How long a delivery is retried before it is given up (FAILED); at least 24.
    #[serde(default = "retry_hours_default")]
    pub retry_hours: u32,
    /// How long one attempt waits for an answer.
    #[serde(default = "timeout_ms_default")]
    pub timeout_ms: u64,
    /// Allows plain http:// endpoints, for local development and tests; https only otherwise.
    #[serde(default)]
    pub allow_http: bool,
    /// Allows endpoints on loopback, private, link-local and other
    /// non-public addresses, for local development and tests. Off, such a
    /// URL is refused when saved and a name resolving there is refused at
    /// each delivery.
    #[serde(default)]
    pub allow_private_destinations: bool,
    /// Deliveries a tenant may have waiting (on its enabled endpoints)
    /// before its events stop being read: past it, new events wait in the
    /// services that emit them, none lost, until deliveries drain or an
    /// endpoint that is down is disabled.
    #[serde(default = "max_pending_per_tenant_default")]
    pub max_pending_per_tenant: u64,
}

fn interval_ms_default() -> u64 {
    500
}
fn retry_base_ms_default() -> u64 {
    5_000
}
fn retry_max_ms_default() -> u64 {
    3_600_000
}
fn retry_hours_default() -> u32 {
    72
}
fn timeout_ms_default() -> u64 {
    10_000
}
fn max_pending_per_tenant_default() -> u64 {
    100_000
}

impl Default for WebhookSettings {
    fn default() -> Self {
        Self {
            interval_ms: interval_ms_default(),
            retry_base_ms: retry_base_ms_default(),
            retry_max_ms: retry_max_ms_default(),
            retry_hours: retry_hours_default(),
            timeout_ms: timeout_ms_default(),
            allow_http: false,
            allow_private_destinations: false,
            max_pending_per_tenant: max_pending_per_tenant_default(),
        }
    }
}

impl WebhookSettings {
    pub fn validate(&self) -> Result<(), String> {
        if self.retry_hours < 24 {
            return Err("orchestrator: webhooks.retry_hours must be at least 24".into());
        }
        if self.interval_ms == 0 || self.retry_base_ms == 0 || self.timeout_ms == 0 {
            return Err("orchestrator: webhooks interval_ms, retry_base_ms and timeout_ms must be at least 1".into());
        }
        if self.max_pending_per_tenant == 0 {
            return Err("orchestrator: webhooks.max_pending_per_tenant must be at least 1".into());
        }
        if self.retry_max_ms < self.retry_base_ms {
            return Err("orchestrator: webhooks.retry_max_ms must not be below retry_base_ms".into());
        }
        Ok(())
    }

    /// The wait after the `failed`-th failed attempt: base × 2^(failed − 1), at most the maximum.
    pub fn backoff(&self, failed: u32) -> Duration {
        let doublings = failed.saturating_sub(1).min(32);
        let wait = self.retry_base_ms.saturating_mul(1_u64 << doublings).min(self.retry_max_ms);
        Duration::from_millis(wait)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn retries_back_off_exponentially_up_to_the_maximum() {
        let settings = WebhookSettings { retry_base_ms: 1_000, retry_max_ms: 10_000, ..WebhookSettings::default() };
        let waits: Vec<u64> = (1..=6).map(|failed| settings.backoff(failed).as_millis() as u64).collect();
        assert_eq!(waits, vec![1_000, 2_000, 4_000, 8_000, 10_000, 10_000]);
        // With the defaults a delivery is tried for 72 hours: waits of 5 s doubling
        // to 43 minutes in the first 85 minutes, then one an hour: 82 attempts.
        let defaults = WebhookSettings::default();
        let mut waited = Duration::ZERO;
        let mut attempts = 1;
        while waited < Duration::from_secs(72 * 3_600) {
            waited += defaults.backoff(attempts);
            attempts += 1;
        }
        assert_eq!(attempts, 82);
        assert!(defaults.validate().is_ok());
        assert!(WebhookSettings { retry_hours: 23, ..WebhookSettings::default() }.validate().is_err());
    }
}
