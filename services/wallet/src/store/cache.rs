//! Wallets as last committed or read, for balance reads. A cached wallet is
//! used only while the account row still carries its version, so a read shows
//! every change committed before it, by this process or any other replica;
//! checking that takes one indexed statement instead of a snapshot and three.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::Duration;

use tokio::sync::Notify;

use reservoir_common::auth::TenantId;

use super::kept;
use crate::domain::{AccountId, Wallet};

/// Bytes of kept wallets at most, encodings and their place in the map
/// (a busy account's wallet encodes in a few hundred bytes): past this the
/// longest kept goes. 64 MiB keeps about 150,000 wallets.
const KEPT_BYTES_MAX: usize = 64 << 20;
/// What keeping one wallet costs beside its encoding: its key twice (map
/// and order), the map's slot and the allocation's rounding.
const ENTRY_BYTES: usize = 128;
/// How long a read waits for a batch being written to keep its wallet.
const WRITING_WAIT_MAX: Duration = Duration::from_millis(50);

pub struct WalletCache {
    wallets: Mutex<Cached>,
    /// Versions this process is writing: a read that finds one of them
    /// committed waits for the writer to keep the wallet.
    writing: Mutex<HashMap<(TenantId, AccountId), u64>>,
    kept: Notify,
}

impl Default for WalletCache {
    fn default() -> Self {
        Self::with_budget(KEPT_BYTES_MAX)
    }
}

/// One wallet as kept: its version, and its encoding ([`kept`]).
struct Kept {
    version: u64,
    bytes: Box<[u8]>,
}

/// The wallets, and the order they were first kept in: when full, the
/// longest kept goes first.
#[derive(Default)]
struct Cached {
    wallets: HashMap<(TenantId, AccountId), Kept>,
    order: VecDeque<(TenantId, AccountId)>,
    /// What the kept wallets cost, and what they may.
    bytes: usize,
    budget: usize,
}

impl Cached {
    fn remove(&mut self, key: &(TenantId, AccountId)) {
        if let Some(kept) = self.wallets.remove(key) {
            self.bytes -= kept.bytes.len() + ENTRY_BYTES;
        }
    }
}

/// A kept wallet, decoded outside the lock. One that does not decode (a
/// bug) is as good as not kept: the caller reads the wallet instead.
fn decoded(bytes: Option<Box<[u8]>>) -> Option<Wallet> {
    kept::decode(&bytes?).inspect_err(|error| tracing::error!(%error, "a kept wallet is lost")).ok()
}

impl WalletCache {
    /// A cache keeping at most `budget` bytes of wallets.
    pub fn with_budget(budget: usize) -> Self {
        Self {
            wallets: Mutex::new(Cached { budget, ..Cached::default() }),
            writing: Mutex::default(),
            kept: Notify::new(),
        }
    }

    /// The wallet at exactly `version`, if held.
    pub fn get(&self, tenant: TenantId, account: AccountId, version: u64) -> Option<Wallet> {
        let bytes = {
            let cached = self.wallets.lock().ok()?;
            cached.wallets.get(&(tenant, account)).filter(|kept| kept.version == version).map(|kept| kept.bytes.clone())
        };
        decoded(bytes)
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
        let bytes = {
            let cached = self.wallets.lock().ok()?;
            cached.wallets.get(&(tenant, account)).map(|kept| kept.bytes.clone())
        };
        decoded(bytes)
    }

    /// Forgets a wallet found stale.
    pub fn forget(&self, tenant: TenantId, account: AccountId) {
        if let Ok(mut cached) = self.wallets.lock() {
            cached.remove(&(tenant, account));
        }
    }

    /// Keeps a wallet as committed (or as read from one snapshot). A wallet
    /// with active holds is not kept: a hold lapsing changes its balance
    /// without a new version, so it is read afresh every time.
    pub fn put(&self, wallet: &Wallet) {
        let key = (wallet.account.tenant_id, wallet.account.id);
        let version = wallet.account.version;
        // Encoded before the lock is taken; a wallet that does not encode
        // (a bug) is not kept, and one kept before it is forgotten.
        let bytes = if wallet.account.held.is_zero() {
            kept::encode(wallet).inspect_err(|error| tracing::error!(%error, "a wallet is not kept")).ok()
        } else {
            None
        };
        let Ok(mut cached) = self.wallets.lock() else {
            return;
        };
        let Some(bytes) = bytes else {
            cached.remove(&key);
            return;
        };
        if let Some(held) = cached.wallets.get(&key)
            && held.version > version
        {
            return;
        }
        cached.bytes += bytes.len() + ENTRY_BYTES;
        match cached.wallets.insert(key, Kept { version, bytes }) {
            Some(previous) => cached.bytes -= previous.bytes.len() + ENTRY_BYTES,
            None => cached.order.push_back(key),
        }
        // A wallet kept again may have grown, too.
        while cached.bytes > cached.budget {
            let Some(oldest) = cached.order.pop_front() else { break };
            cached.remove(&oldest);
        }
        // Keys of wallets forgotten since stay in the order; drop them
        // before they outnumber the wallets.
        if cached.order.len() > 2 * cached.wallets.len().max(1_024) {
            let Cached { wallets, order, .. } = &mut *cached;
            order.retain(|key| wallets.contains_key(key));
        }
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

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use reservoir_common::money::Unit;
    use uuid::Uuid;

    use super::*;
    use crate::domain::{NewAccount, OperationContext, Overdraft};

    fn wallet(tenant: TenantId) -> Wallet {
        let new = NewAccount {
            tenant_id: tenant,
            external_id: "customer".into(),
            unit: Unit::currency("USD", None).unwrap(),
            overdraft: Overdraft::None,
            low_balance_threshold: None,
            metadata: Default::default(),
        };
        let mut wallet = Wallet::open(new, &OperationContext::new(reservoir_common::time::now(), "open"));
        let _ = wallet.take_changes();
        wallet
    }

    #[test]
    fn the_longest_kept_goes_when_the_budget_is_spent() {
        let tenant = TenantId(Uuid::now_v7());
        let cost = kept::encode(&wallet(tenant)).unwrap().len() + ENTRY_BYTES;
        let cache = WalletCache::with_budget(cost * 3);
        let wallets: Vec<Wallet> = (0..4).map(|_| wallet(tenant)).collect();
        for one in &wallets {
            cache.put(one);
        }
        assert!(cache.latest(tenant, wallets[0].account.id).is_none(), "the first kept went");
        for one in &wallets[1..] {
            let kept = cache.get(tenant, one.account.id, one.account.version).unwrap();
            assert_eq!(kept.account, one.account);
        }
    }

    #[test]
    fn an_older_version_does_not_replace_a_newer_one() {
        let tenant = TenantId(Uuid::now_v7());
        let older = wallet(tenant);
        let mut newer = older.clone();
        newer.account.version += 1;
        let cache = WalletCache::default();
        cache.put(&newer);
        cache.put(&older);
        let kept = cache.latest(tenant, older.account.id).unwrap();
        assert_eq!(kept.account.version, newer.account.version);
        assert!(cache.get(tenant, older.account.id, older.account.version).is_none());
    }

    #[test]
    fn a_wallet_holding_funds_is_forgotten_not_kept() {
        let tenant = TenantId(Uuid::now_v7());
        let free = wallet(tenant);
        let mut holding = free.clone();
        holding.account.held = "1.00".parse().unwrap();
        holding.account.version += 1;
        let cache = WalletCache::default();
        cache.put(&free);
        assert!(cache.latest(tenant, free.account.id).is_some());
        cache.put(&holding);
        assert!(cache.latest(tenant, free.account.id).is_none());
    }
}
