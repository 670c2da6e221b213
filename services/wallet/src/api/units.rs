//! Account units, which never change once an account is open: remembered,
//! and those not yet remembered read together. A caller that finds its
//! account's unit missing queues for it; one task reads every queued
//! account's unit with a query per tenant, so a burst of calls on accounts
//! seen for the first time costs a query per burst, not one per call.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex};

use reservoir_common::auth::TenantId;
use reservoir_common::money::Unit;
use tokio::sync::{mpsc, oneshot};

use crate::domain::AccountId;
use crate::error::WalletError;
use crate::store::Store;

/// Accounts whose unit is remembered; past this many the memory starts
/// over. Each costs its key and a pointer to one copy of its unit, about
/// 50 bytes: 500,000 take some 25 MB.
const REMEMBERED_MAX: usize = 500_000;
/// Accounts read by one query at most.
const READ_MAX: usize = 500;
/// Callers queued for a unit; past this, callers wait to queue.
const QUEUE_MAX: usize = 4_096;

type Known = Arc<Mutex<Remembered>>;

/// The units of accounts, each distinct unit held once.
#[derive(Default)]
struct Remembered {
    of: HashMap<(TenantId, AccountId), Arc<Unit>>,
    distinct: HashSet<Arc<Unit>>,
}

struct Wanted {
    tenant: TenantId,
    account: AccountId,
    answer: oneshot::Sender<Result<Option<Unit>, WalletError>>,
}

#[derive(Clone)]
pub struct Units {
    store: Store,
    known: Known,
    wanted: mpsc::Sender<Wanted>,
}

impl Units {
    /// Starts the task that reads missing units.
    pub fn start(store: Store) -> Self {
        let known = Known::default();
        let (wanted, receiver) = mpsc::channel(QUEUE_MAX);
        tokio::spawn(read_missing(store.clone(), known.clone(), receiver));
        Self { store, known, wanted }
    }

    fn remembered(&self, tenant: TenantId, account: AccountId) -> Option<Unit> {
        self.known.lock().ok()?.of.get(&(tenant, account)).map(|unit| Unit::clone(unit))
    }

    /// The account's unit; NOT_FOUND if the tenant has no such account.
    pub async fn of(&self, tenant: TenantId, account: AccountId) -> Result<Unit, WalletError> {
        if let Some(unit) = self.remembered(tenant, account) {
            return Ok(unit);
        }
        let (answer, answered) = oneshot::channel();
        self.wanted
            .send(Wanted { tenant, account, answer })
            .await
            .map_err(|_| WalletError::Unavailable("the unit reader has stopped".into()))?;
        answered
            .await
            .map_err(|_| WalletError::Unavailable("the unit reader has stopped".into()))??
            .ok_or(WalletError::NotFound("account"))
    }

    /// Reads, in one query, the units of those accounts not yet remembered.
    pub async fn learn(&self, tenant: TenantId, accounts: Vec<AccountId>) -> Result<(), WalletError> {
        let unknown: Vec<AccountId> = match self.known.lock() {
            Ok(known) => accounts.into_iter().filter(|account| !known.of.contains_key(&(tenant, *account))).collect(),
            Err(_) => accounts,
        };
        if unknown.is_empty() {
            return Ok(());
        }
        let found = self.store.units(tenant, &unknown).await?;
        remember(&self.known, tenant, found);
        Ok(())
    }
}

fn remember(known: &Known, tenant: TenantId, found: Vec<(AccountId, Unit)>) {
    if let Ok(mut known) = known.lock() {
        if known.of.len() + found.len() > REMEMBERED_MAX {
            *known = Remembered::default();
        }
        for (account, unit) in found {
            let unit = match known.distinct.get(&unit) {
                Some(held) => held.clone(),
                None => {
                    let unit = Arc::new(unit);
                    known.distinct.insert(unit.clone());
                    unit
                }
            };
            known.of.insert((tenant, account), unit);
        }
    }
}

async fn read_missing(store: Store, known: Known, mut receiver: mpsc::Receiver<Wanted>) {
    while let Some(first) = receiver.recv().await {
        let mut wanted = vec![first];
        while wanted.len() < READ_MAX {
            match receiver.try_recv() {
                Ok(more) => wanted.push(more),
                Err(_) => break,
            }
        }
        let mut by_tenant: BTreeMap<TenantId, Vec<Wanted>> = BTreeMap::new();
        for one in wanted {
            by_tenant.entry(one.tenant).or_default().push(one);
        }
        for (tenant, wanted) in by_tenant {
            let mut accounts: Vec<AccountId> = wanted.iter().map(|one| one.account).collect();
            accounts.sort_by_key(|account| account.0);
            accounts.dedup();
            match store.units(tenant, &accounts).await {
                Ok(found) => {
                    let units: HashMap<AccountId, Unit> = found.iter().cloned().collect();
                    remember(&known, tenant, found);
                    for one in wanted {
                        // The caller may have gone.
                        let _ = one.answer.send(Ok(units.get(&one.account).cloned()));
                    }
                }
                Err(error) => {
                    for one in wanted {
                        let _ = one.answer.send(Err(error.again()));
                    }
                }
            }
        }
    }
}
