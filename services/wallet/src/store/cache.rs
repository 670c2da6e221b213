//! Wallets as last committed or read, for balance reads. A cached wallet is
//! used only while the account row still carries its version, so a read shows
//! every change committed before it, by this process or any other replica;
//! checking that takes one indexed statement instead of a snapshot and three.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::Duration;

use tokio::sync::Notify;

use reservoir_common::auth::TenantId;

use crate::domain::{AccountId, Wallet};

/// Wallets kept at most (a kilobyte or two each); past this the longest kept
/// goes. At 50,000 the wallet's resident set passed 190 MiB in the bench.
const CACHED_MAX: usize = 25_000;
/// How long a read waits for a batch being written to keep its wallet.
const WRITING_WAIT_MAX: Duration = Duration::from_millis(50);

#[derive(Default)]
pub struct WalletCache {
    wallets: Mutex<Cached>,
    /// Versions this process is writing: a read that finds one of them
    /// committed waits for the writer to keep the wallet.
    writing: Mutex<HashMap<(TenantId, AccountId), u64>>,
    kept: Notify,
}

/// The wallets, and the order they were first kept in: when full, the
/// longest kept goes first.
#[derive(Default)]
struct Cached {
    /// Boxed: the map moves its entries when it grows or drops what was
    /// removed, and a wallet is a kilobyte or more; a box is a pointer.
    wallets: HashMap<(TenantId, AccountId), Box<Wallet>>,
    order: VecDeque<(TenantId, AccountId)>,
}

impl WalletCache {
    /// The wallet at exactly `version`, if held.
    pub fn get(&self, tenant: TenantId, account: AccountId, version: u64) -> Option<Wallet> {
        let cached = self.wallets.lock().ok()?;
        cached
            .wallets
            .get(&(tenant, account))
            .filter(|wallet| wallet.account.version == version)
            .map(|wallet| (**wallet).clone())
    }

    /// The wallet at exactly `version`; if this process is writing that
    /// version, once it is kept (the database already shows it committed,
    /// the writer has yet to hear so).
    pub async fn get_or_wait(&self, tenant: TenantId, account: AccountId, version: u64) -> Option<Wallet> {
        let deadline = tokio::time::Instant::now() + WRITING_WAIT_MAX;
        loop {
            let kept = self.kept.notified();
            if let Some(wallet) = self.get(tenant, account, version) {
                return Some(wallet);
            }
            let being_written = self.writing.lock().ok()?.get(&(tenant, account)) == Some(&version);
            if !being_written || tokio::time::timeout_at(deadline, kept).await.is_err() {
                return None;
            }
        }
    }

    /// Notes the versions a batch is about to write, until the mark returned
    /// is dropped (the batch is done, kept or not, or its task unwound).
    pub fn writing(&self, versions: Vec<(TenantId, AccountId, u64)>) -> Writing<'_> {
        if let Ok(mut writing) = self.writing.lock() {
            for (tenant, account, version) in &versions {
                writing.insert((*tenant, *account), *version);
            }
        }
        Writing { cache: self, versions }
    }

    /// The wallet as last kept, at whatever version: for the group committer,
    /// which holds its writes to that version, so a stale one only costs a retry.
    pub fn latest(&self, tenant: TenantId, account: AccountId) -> Option<Wallet> {
        let cached = self.wallets.lock().ok()?;
        cached.wallets.get(&(tenant, account)).map(|wallet| (**wallet).clone())
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
        cached.wallets.insert(key, Box::new(wallet.clone()));
    }
}

/// Versions being written, noted in the cache while this lives.
pub struct Writing<'a> {
    cache: &'a WalletCache,
    versions: Vec<(TenantId, AccountId, u64)>,
}

impl Drop for Writing<'_> {
    fn drop(&mut self) {
        if let Ok(mut writing) = self.cache.writing.lock() {
            for (tenant, account, version) in &self.versions {
                if writing.get(&(*tenant, *account)) == Some(version) {
                    writing.remove(&(*tenant, *account));
                }
            }
        }
        self.cache.kept.notify_waiters();
    }
}
