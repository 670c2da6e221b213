//! The expiry sweeper: every replica writes off the grants and holds that
//! have expired, a few hundred accounts a pass.

use std::time::Duration;

use reservoir_common::time::now;
use tokio::sync::watch;

use crate::domain::{Answer, OperationContext};
use crate::store::{LoadPlan, Store};

/// Accounts the sweeper writes off per pass; the next pass takes the rest.
const SWEEP_ACCOUNTS_MAX: u64 = 200;

/// Writes off expired grants and holds. Every replica may run it: each
/// account is changed under its row lock and an already written-off grant is
/// skipped, so nothing is expired twice.
pub async fn sweep(store: Store, interval: Duration, stopping: watch::Receiver<bool>) {
    reservoir_common::serve::every(interval, stopping, || sweep_once(&store)).await;
}

async fn sweep_once(store: &Store) {
    let now = now();
    let due = match store.accounts_due_for_expiry(now, SWEEP_ACCOUNTS_MAX).await {
        Ok(due) => due,
        Err(error) => {
            tracing::warn!(%error, "expiry sweep could not list due accounts");
            return;
        }
    };
    for (tenant, account) in due {
        let ctx = OperationContext::new(now, String::new());
        let result = store
            .mutate(tenant, account, None, &LoadPlan::default(), now, |loaded| {
                loaded.wallet.expire(&ctx);
                Ok(Answer::at(now))
            })
            .await;
        if let Err(error) = result {
            tracing::warn!(%error, %account, "expiry sweep failed for an account; it is retried next pass");
        }
    }
}
