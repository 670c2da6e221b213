//! What the store reads: accounts, units, wallets, grants, holds, ledger
//! entries and events, never locking anything a writer waits for.

use std::collections::{BTreeSet, HashMap};

use chrono::{DateTime, Utc};
use reservoir_common::auth::TenantId;
use sea_orm::{ColumnTrait, ConnectionTrait, DbBackend, EntityTrait, QueryFilter, QueryOrder, QuerySelect};
use uuid::Uuid;

use super::entities::{account, entry, grant, hold};
use super::loads::{accounts_with_grants, load};
use super::{EntryFilter, EventRecord, LoadPlan, NUMBERS_CACHED_MAX, Store, events, ledger, rows, to_i64};
use crate::domain::{Account, AccountId, Entry, EntryId, Grant, GrantId, Hold, HoldId, Wallet};
use crate::error::WalletError;

/// An entry's place and the texts events share with it: account number,
/// sequence, idempotency key, correlation id, meter.
type EntryTexts = (i64, i64, String, Option<String>, Option<String>);

impl Store {
    pub async fn account(&self, tenant_id: TenantId, account_id: AccountId) -> Result<Account, WalletError> {
        let row = account::Entity::find_by_id(account_id.0)
            .filter(account::Column::TenantId.eq(tenant_id.0))
            .one(&self.db)
            .await?
            .ok_or(WalletError::NotFound("account"))?;
        rows::account_from_row(row)
    }

    /// The unit of one of the tenant's accounts kept in `code`, if any is:
    /// an account's unit never changes, so any one of them tells.
    pub async fn unit_held(
        &self,
        tenant_id: TenantId,
        code: &str,
    ) -> Result<Option<reservoir_common::money::Unit>, WalletError> {
        let row = account::Entity::find()
            .filter(account::Column::TenantId.eq(tenant_id.0))
            .filter(account::Column::UnitCode.eq(code))
            .one(&self.db)
            .await?;
        row.map(|row| rows::account_from_row(row).map(|account| account.unit)).transpose()
    }

    /// One page of the tenant's accounts in the order they were opened
    /// (account ids are time-ordered), after the account `after`.
    pub async fn accounts_page(
        &self,
        tenant_id: TenantId,
        after: Option<AccountId>,
        limit: u64,
    ) -> Result<Vec<Account>, WalletError> {
        let mut query = account::Entity::find().filter(account::Column::TenantId.eq(tenant_id.0));
        if let Some(after) = after {
            query = query.filter(account::Column::Id.gt(after.0));
        }
        let rows = query.order_by_asc(account::Column::Id).limit(limit).all(&self.db).await?;
        rows.into_iter().map(rows::account_from_row).collect()
    }

    /// The units of those of `account_ids` the tenant has, in one query per
    /// 500 ids.
    pub async fn units(
        &self,
        tenant_id: TenantId,
        account_ids: &[AccountId],
    ) -> Result<Vec<(AccountId, reservoir_common::money::Unit)>, WalletError> {
        let mut units = Vec::with_capacity(account_ids.len());
        let backend = self.db.get_database_backend();
        if backend == DbBackend::Postgres {
            // The wallets come along in the same statement and are kept: a
            // unit is asked for just before the account's first command, so
            // its committer then finds the wallet kept instead of reading it
            // again (a kept wallet is held to its version when written).
            let ids: Vec<Uuid> = account_ids.iter().map(|id| id.0).collect();
            for (account, grants) in accounts_with_grants(&self.db, &ids, Some(tenant_id)).await? {
                units.push((account.id, account.unit.clone()));
                self.cache.put(&Wallet::new(account, grants, Vec::new()));
            }
            return Ok(units);
        }
        for chunk in account_ids.chunks(500) {
            let rows = account::Entity::find()
                .filter(account::Column::TenantId.eq(tenant_id.0))
                .filter(account::Column::Id.is_in(chunk.iter().map(|id| id.0)))
                .all(&self.db)
                .await?;
            for row in rows {
                let account = rows::account_from_row(row)?;
                units.push((account.id, account.unit));
            }
        }
        Ok(units)
    }

    /// The wallet as of `now`, for reads: nothing is locked or written. One
    /// statement reads the account's version; the wallet cached at that
    /// version answers if there is one, and otherwise the account, grants
    /// and holds are read from one snapshot, so a balance never mixes the
    /// state before a commit with the state after it.
    pub async fn wallet(
        &self,
        tenant_id: TenantId,
        account_id: AccountId,
        now: DateTime<Utc>,
    ) -> Result<Wallet, WalletError> {
        let current = self.versions.of(tenant_id, account_id).await?.ok_or(WalletError::NotFound("account"))?;
        if !current.holds
            && let Some(wallet) = self.cache.get_or_wait(tenant_id, account_id, current.version).await
        {
            metrics::counter!("reservoir_wallet_balance_reads_total", "source" => "kept").increment(1);
            return Ok(wallet);
        }
        metrics::counter!("reservoir_wallet_balance_reads_total", "source" => "snapshot").increment(1);
        let snapshot = self.database.begin_snapshot().await?;
        let loaded = load(&snapshot, tenant_id, account_id, &LoadPlan::default(), now, false).await?;
        snapshot.commit().await?;
        self.cache.put(&loaded.wallet);
        Ok(loaded.wallet)
    }

    pub async fn grants(
        &self,
        tenant_id: TenantId,
        account_id: AccountId,
        include_inactive: bool,
    ) -> Result<Vec<Grant>, WalletError> {
        self.account(tenant_id, account_id).await?;
        let mut query = grant::Entity::find().filter(grant::Column::AccountId.eq(account_id.0));
        if !include_inactive {
            query = query.filter(grant::Column::Status.eq("ACTIVE"));
        }
        let rows = query.order_by_desc(grant::Column::CreatedSequence).all(&self.db).await?;
        rows.into_iter().map(rows::grant_from_row).collect()
    }

    pub async fn hold(&self, tenant_id: TenantId, hold_id: HoldId) -> Result<Hold, WalletError> {
        let row = hold::Entity::find_by_id(hold_id.0)
            .filter(hold::Column::TenantId.eq(tenant_id.0))
            .one(&self.db)
            .await?
            .ok_or(WalletError::NotFound("hold"))?;
        rows::hold_from_row(row)
    }

    pub async fn grant(&self, tenant_id: TenantId, grant_id: GrantId) -> Result<Grant, WalletError> {
        let row = grant::Entity::find_by_id(grant_id.0)
            .filter(grant::Column::TenantId.eq(tenant_id.0))
            .one(&self.db)
            .await?
            .ok_or(WalletError::NotFound("grant"))?;
        rows::grant_from_row(row)
    }

    /// The account with this number, if the tenant has it.
    pub(super) async fn account_numbered(
        &self,
        connection: &impl ConnectionTrait,
        tenant_id: TenantId,
        number: i64,
    ) -> Result<Option<Account>, WalletError> {
        let row = account::Entity::find()
            .filter(account::Column::Number.eq(number))
            .filter(account::Column::TenantId.eq(tenant_id.0))
            .one(connection)
            .await?;
        row.map(rows::account_from_row).transpose()
    }

    pub async fn entry(&self, tenant_id: TenantId, entry_id: EntryId) -> Result<Entry, WalletError> {
        let row = ledger::by_id(&self.db, entry_id).await?.ok_or(WalletError::NotFound("entry"))?;
        let account = self
            .account_numbered(&self.db, tenant_id, row.account_number)
            .await?
            .ok_or(WalletError::NotFound("entry"))?;
        let mut entries = ledger::entries_of(&self.db, account.id, vec![row]).await?;
        entries.pop().ok_or(WalletError::NotFound("entry"))
    }

    /// One page of a wallet's ledger in sequence order, after `after_sequence`.
    pub async fn entries(
        &self,
        tenant_id: TenantId,
        account_id: AccountId,
        filter: &EntryFilter,
        after_sequence: u64,
        limit: u64,
    ) -> Result<Vec<Entry>, WalletError> {
        let account = self.account(tenant_id, account_id).await?;
        let mut query = entry::Entity::find()
            .filter(entry::Column::AccountNumber.eq(to_i64(account.number)))
            .filter(entry::Column::Sequence.gt(to_i64(after_sequence)));
        if !filter.kinds.is_empty() {
            query =
                query.filter(entry::Column::Kind.is_in(filter.kinds.iter().map(|kind| rows::entry_kind_code(*kind))));
        }
        if let Some(start) = filter.start {
            query = query.filter(entry::Column::CreatedAt.gte(start));
        }
        if let Some(end) = filter.end {
            query = query.filter(entry::Column::CreatedAt.lt(end));
        }
        if let Some(through) = filter.through_sequence {
            query = query.filter(entry::Column::Sequence.lte(to_i64(through)));
        }
        let rows = query.order_by_asc(entry::Column::Sequence).limit(limit).all(&self.db).await?;
        ledger::entries_of(&self.db, account_id, rows).await
    }

    /// Up to `limit` of an account's entries after `after_sequence`, in
    /// order, for a check of its chain (the account already read).
    pub async fn chain_entries(
        &self,
        account: &Account,
        after_sequence: u64,
        limit: u64,
    ) -> Result<Vec<Entry>, WalletError> {
        let rows = entry::Entity::find()
            .filter(entry::Column::AccountNumber.eq(to_i64(account.number)))
            .filter(entry::Column::Sequence.gt(to_i64(after_sequence)))
            .order_by_asc(entry::Column::Sequence)
            .limit(limit)
            .all(&self.db)
            .await?;
        ledger::entries_of(&self.db, account.id, rows).await
    }

    /// The account's entry of the highest sequence in the ledger, whatever
    /// sequence the account says is its latest.
    pub async fn highest_entry(&self, account: &Account) -> Result<Option<Entry>, WalletError> {
        let row = entry::Entity::find()
            .filter(entry::Column::AccountNumber.eq(to_i64(account.number)))
            .order_by_desc(entry::Column::Sequence)
            .one(&self.db)
            .await?;
        Ok(ledger::entries_of(&self.db, account.id, row.into_iter().collect()).await?.pop())
    }

    /// A wallet's ledger as of one snapshot, for a report that works back
    /// from it: every grant (written off or not), the last entry's sequence,
    /// and the running balance after it.
    pub async fn ledger_snapshot(
        &self,
        tenant_id: TenantId,
        account_id: AccountId,
    ) -> Result<(Vec<Grant>, u64, rust_decimal::Decimal), WalletError> {
        let snapshot = self.database.begin_snapshot().await?;
        let account = account::Entity::find_by_id(account_id.0)
            .filter(account::Column::TenantId.eq(tenant_id.0))
            .one(&snapshot)
            .await?
            .ok_or(WalletError::NotFound("account"))?;
        let grants = grant::Entity::find()
            .filter(grant::Column::AccountId.eq(account_id.0))
            .all(&snapshot)
            .await?
            .into_iter()
            .map(rows::grant_from_row)
            .collect::<Result<Vec<_>, _>>()?;
        let last = entry::Entity::find_by_id((account.number, account.last_sequence)).one(&snapshot).await?;
        snapshot.commit().await?;
        let balance = last.map(|row| row.balance_after.0).unwrap_or_default();
        Ok((grants, u64::try_from(account.last_sequence).unwrap_or(0), balance))
    }

    pub(super) async fn numbering(&self) -> Result<events::Numbering, WalletError> {
        self.numbering.get_or_try_init(|| events::numbering(&self.db)).await.copied()
    }

    /// The account ids of these numbers, remembered after the first lookup.
    pub(super) async fn account_ids(&self, numbers: BTreeSet<u64>) -> Result<HashMap<u64, AccountId>, WalletError> {
        let mut found = HashMap::new();
        let mut missing = Vec::new();
        if let Ok(known) = self.numbers.lock() {
            for number in numbers {
                match known.get(&number) {
                    Some(id) => {
                        found.insert(number, *id);
                    }
                    None => missing.push(to_i64(number)),
                }
            }
        }
        for chunk in missing.chunks(500) {
            let rows: Vec<(i64, Uuid)> = account::Entity::find()
                .filter(account::Column::Number.is_in(chunk.to_vec()))
                .select_only()
                .column(account::Column::Number)
                .column(account::Column::Id)
                .into_tuple()
                .all(&self.db)
                .await?;
            let mut known = self.numbers.lock().map_err(|_| WalletError::internal("the number map is poisoned"))?;
            if known.len() + rows.len() > NUMBERS_CACHED_MAX {
                known.clear();
            }
            for (number, id) in rows {
                let number = u64::try_from(number).unwrap_or(0);
                known.insert(number, AccountId(id));
                found.insert(number, AccountId(id));
            }
        }
        Ok(found)
    }

    /// Up to `limit` of the tenant's events after `after_sequence`, oldest
    /// first: those of the earlier outbox, then this version's, with their
    /// accounts and the texts they share with ledger entries filled in.
    pub async fn events_after(
        &self,
        tenant_id: TenantId,
        after_sequence: u64,
        limit: usize,
    ) -> Result<Vec<EventRecord>, WalletError> {
        let numbering = self.numbering().await?;
        let legacy = events::read_legacy(&self.db, numbering, tenant_id, after_sequence, limit).await?;
        if !legacy.is_empty() {
            return Ok(legacy
                .into_iter()
                .map(|event| EventRecord::Legacy { sequence: event.sequence, payload: event.payload })
                .collect());
        }
        let read = events::read(&self.db, numbering, tenant_id, after_sequence, limit).await?;
        if read.is_empty() {
            return Ok(Vec::new());
        }
        let ids = self.account_ids(read.iter().map(|event| event.account_number).collect()).await?;
        // The entries whose texts events share, one query for them all.
        let wanted: Vec<(u64, u64)> =
            read.iter().filter_map(|event| event.texts_at.map(|at| (event.account_number, at))).collect();
        let mut texts: HashMap<(u64, u64), (String, String, Option<String>)> = HashMap::new();
        for chunk in wanted.chunks(500) {
            let mut condition = sea_orm::Condition::any();
            for (number, sequence) in chunk {
                condition = condition.add(
                    sea_orm::Condition::all()
                        .add(entry::Column::AccountNumber.eq(to_i64(*number)))
                        .add(entry::Column::Sequence.eq(to_i64(*sequence))),
                );
            }
            let rows: Vec<EntryTexts> = entry::Entity::find()
                .filter(condition)
                .select_only()
                .column(entry::Column::AccountNumber)
                .column(entry::Column::Sequence)
                .column(entry::Column::IdempotencyKey)
                .column(entry::Column::CorrelationId)
                .column(entry::Column::MeterCode)
                .into_tuple()
                .all(&self.db)
                .await?;
            for (number, sequence, key, correlation, meter) in rows {
                texts.insert(
                    (u64::try_from(number).unwrap_or(0), u64::try_from(sequence).unwrap_or(0)),
                    (key, correlation.unwrap_or_default(), meter),
                );
            }
        }
        read.into_iter()
            .map(|read| {
                let mut event = read.event;
                event.account_id =
                    *ids.get(&read.account_number).ok_or(WalletError::internal("an event's account is missing"))?;
                if let Some(at) = read.texts_at {
                    let (key, correlation, meter) = texts
                        .get(&(read.account_number, at))
                        .cloned()
                        .ok_or(WalletError::internal("an event's entry is missing"))?;
                    event.idempotency_key = key;
                    event.correlation_id = correlation;
                    event.meter_code = meter;
                }
                Ok(EventRecord::Event { sequence: read.sequence, event })
            })
            .collect()
    }

    /// Accounts with a grant or hold past its expiry at `now` and not yet written off.
    pub async fn accounts_due_for_expiry(
        &self,
        now: DateTime<Utc>,
        limit: u64,
    ) -> Result<Vec<(TenantId, AccountId)>, WalletError> {
        let grants = grant::Entity::find()
            .filter(grant::Column::Status.eq("ACTIVE"))
            .filter(grant::Column::ExpiresAt.lte(now))
            .limit(limit)
            .all(&self.db)
            .await?;
        let holds = hold::Entity::find()
            .filter(hold::Column::Status.eq("ACTIVE"))
            .filter(hold::Column::ExpiresAt.lte(now))
            .limit(limit)
            .all(&self.db)
            .await?;
        let due: BTreeSet<(Uuid, Uuid)> = grants
            .iter()
            .map(|row| (row.tenant_id, row.account_id))
            .chain(holds.iter().map(|row| (row.tenant_id, row.account_id)))
            .collect();
        Ok(due.into_iter().map(|(tenant, account)| (TenantId(tenant), AccountId(account))).collect())
    }
}
