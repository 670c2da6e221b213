//! Wallets as last committed or read, for balance reads. A cached wallet is
//! used only while the account row still carries its version, so a read shows
//! every change committed before it, by this process or any other replica;
//! checking that takes one indexed statement instead of a snapshot and three.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;

use reservoir_common::auth::TenantId;

use crate::domain::{AccountId, Wallet};

/// Wallets kept at most (a kilobyte or two each); past this the longest kept goes.
const CACHED_MAX: usize = 50_000;

#[derive(Default)]
pub struct WalletCache {
    wallets: Mutex<Cached>,
}

/// The wallets, and the order they were first kept in: when full, the
/// longest kept goes first.
#[derive(Default)]
struct Cached {
    wallets: HashMap<(TenantId, AccountId), Wallet>,
    order: VecDeque<(TenantId, AccountId)>,
}

impl WalletCache {
    /// The wallet at exactly `version`, if held.
    pub fn get(&self, tenant: TenantId, account: AccountId, version: u64) -> Option<Wallet> {
        let cached = self.wallets.lock().ok()?;
        cached.wallets.get(&(tenant, account)).filter(|wallet| wallet.account.version == version).cloned()
    }

    /// The wallet as last kept, at whatever version: for the group committer,
    /// which holds its writes to that version, so a stale one only costs a retry.
    pub fn latest(&self, tenant: TenantId, account: AccountId) -> Option<Wallet> {
        let cached = self.wallets.lock().ok()?;
        cached.wallets.get(&(tenant, account)).cloned()
    }

    /// Forgets a wallet found stale.
    pub fn forget(&self, tenant: TenantId, account: AccountId) {
        if let Ok(mut cached) = self.wallets.lock() {
            cached.wallets.remove(&(tenant, account));
        }
    }

    /// Keeps a wallet as committed (or as read from one snapshot). A wallet
    /// with active holds is not kept: a hold lapsing changes its balance
    /// without a new version, so it is read afresh every time.
    pub fn put(&self, wallet: &Wallet) {
        let Ok(mut cached) = self.wallets.lock() else {
            return;
        };
        let key = (wallet.account.tenant_id, wallet.account.id);
        if !wallet.account.held.is_zero() {
            cached.wallets.remove(&key);
            return;
        }
        if let Some(held) = cached.wallets.get(&key)
            && held.account.version > wallet.account.version
        {
            return;
        }
        if !cached.wallets.contains_key(&key) {
            while cached.wallets.len() >= CACHED_MAX {
                let Some(oldest) = cached.order.pop_front() else { break };
                cached.wallets.remove(&oldest);
            }
            cached.order.push_back(key);
            // Keys of wallets forgotten since stay in the order; drop them
            // before they outnumber the wallets.
            if cached.order.len() > 2 * CACHED_MAX {
                let Cached { wallets, order } = &mut *cached;
                order.retain(|key| wallets.contains_key(key));
            }
        }
        cached.wallets.insert(key, wallet.clone());
    }
}
