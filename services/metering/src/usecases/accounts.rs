//! Which accounts a tenant has, and each one's scale (the decimals of its
//! wallet's unit): asked of the wallet once, then remembered in the store and
//! in memory. A scale never changes, so a remembered one is never stale.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};

use futures::StreamExt;
use reservoir_common::auth::TenantId;
use reservoir_common::ids::AccountId;

use crate::clients::wallet::WalletGateway;
use crate::error::MeteringError;
use crate::store::Store;

/// Accounts looked up in the wallet at once when a batch names many it never saw.
const WALLET_LOOKUPS_AT_ONCE: usize = 32;
/// Account scales remembered in memory; past this many the map starts over.
const SCALES_CACHED_MAX: usize = 200_000;

/// What the wallet said of an account's unit: its code and scale, if the tenant has it.
type WalletUnit = Result<Option<(String, u32)>, MeteringError>;

#[derive(Clone)]
pub struct Accounts {
    store: Store,
    wallet: WalletGateway,
    scales: Arc<Mutex<HashMap<(TenantId, AccountId), u32>>>,
}

impl Accounts {
    pub fn new(store: Store, wallet: WalletGateway) -> Self {
        Self { store, wallet, scales: Default::default() }
    }

    /// The wallet scale of an account, remembered after the first lookup;
    /// `None` when the tenant has no such account.
    pub async fn scale(&self, tenant: TenantId, account_id: AccountId) -> Result<Option<u32>, MeteringError> {
        if let Some((_, scale)) = self.store.account_unit(tenant, account_id).await? {
            return Ok(Some(scale));
        }
        match self.wallet.account_unit(tenant, account_id).await? {
            Some((code, scale)) => {
                self.store.remember_account(tenant, account_id, &code, scale).await?;
                Ok(Some(scale))
            }
            None => Ok(None),
        }
    }

    /// The wallet scales of many accounts at once: from memory, then in one
    /// query from the accounts metering has seen, then from the wallet a few
    /// at a time for accounts never seen. An account the tenant lacks maps to
    /// `None`.
    pub async fn scales(
        &self,
        tenant: TenantId,
        accounts: impl Iterator<Item = AccountId>,
    ) -> Result<HashMap<AccountId, Option<u32>>, MeteringError> {
        let mut found: HashMap<AccountId, Option<u32>> = HashMap::new();
        let mut missing = Vec::new();
        if let Ok(known) = self.scales.lock() {
            for account in accounts {
                match known.get(&(tenant, account)) {
                    Some(scale) => {
                        found.insert(account, Some(*scale));
                    }
                    None if !found.contains_key(&account) => missing.push(account),
                    None => {}
                }
            }
        }
        missing.sort_unstable();
        missing.dedup();
        let stored = self.store.account_units(tenant, &missing).await?;
        let mut learned: Vec<(AccountId, u32)> = stored.into_iter().collect();
        let remembered: HashSet<AccountId> = learned.iter().map(|(account, _)| *account).collect();
        // Accounts never seen are asked of the wallet a few at a time, and
        // remembered together.
        let unseen = missing.into_iter().filter(|account| !remembered.contains(account));
        let asked: Vec<(AccountId, WalletUnit)> = futures::stream::iter(unseen)
            .map(|account| async move { (account, self.wallet.account_unit(tenant, account).await) })
            .buffer_unordered(WALLET_LOOKUPS_AT_ONCE)
            .collect()
            .await;
        let mut new_units = Vec::new();
        for (account, unit) in asked {
            match unit? {
                Some((code, scale)) => {
                    learned.push((account, scale));
                    new_units.push((account, code, scale));
                }
                None => {
                    found.insert(account, None);
                }
            }
        }
        self.store.remember_accounts(tenant, &new_units).await?;
        if let Ok(mut known) = self.scales.lock() {
            if known.len() + learned.len() > SCALES_CACHED_MAX {
                known.clear();
            }
            for (account, scale) in learned {
                known.insert((tenant, account), scale);
                found.insert(account, Some(scale));
            }
        }
        Ok(found)
    }
}
