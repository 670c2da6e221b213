//! The wallet's tables as sea-orm entities. They stay private to the store;
//! the rest of the service sees domain types.

pub mod tenant {
    use sea_orm::entity::prelude::*;

    #[derive(Clone, Debug, PartialEq, DeriveEntityModel)]
    #[sea_orm(table_name = "tenants")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub id: Uuid,
        pub name: String,
        pub created_at: DateTimeUtc,
        pub allow_promotional_transfers: bool,
        /// What CreateTenant was called with; none for tenants made otherwise.
        pub idempotency_key: Option<String>,
        /// The fraud rules on transfers (JSON of the stored form); none: off.
        pub transfer_fraud: Option<String>,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

pub mod api_key {
    use sea_orm::entity::prelude::*;

    #[derive(Clone, Debug, PartialEq, DeriveEntityModel)]
    #[sea_orm(table_name = "api_keys")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub id: Uuid,
        pub tenant_id: Uuid,
        pub key_hash: String,
        pub display_prefix: String,
        pub created_at: DateTimeUtc,
        pub revoked_at: Option<DateTimeUtc>,
        /// TENANT or SERVICE.
        pub kind: String,
        /// A tenant key's role: ADMIN, WRITE or READ_ONLY (ADMIN for a service key).
        pub role: String,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

pub mod account {
    use sea_orm::entity::prelude::*;

    use reservoir_common::db::Amount;

    #[derive(Clone, Debug, PartialEq, DeriveEntityModel)]
    #[sea_orm(table_name = "accounts")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub id: Uuid,
        pub number: i64,
        pub tenant_id: Uuid,
        pub external_id: String,
        pub unit_code: String,
        pub unit_scale: i32,
        pub unit_price_per_credit: String,
        pub unit_billing_currency: String,
        pub overdraft_policy: String,
        pub credit_limit: Amount,
        pub status: String,
        pub low_balance_threshold: Option<Amount>,
        pub low_balance_alerted: bool,
        pub depleted_alerted: bool,
        pub overdraft_used: Amount,
        pub credit_blocked: bool,
        pub held: Amount,
        pub last_sequence: i64,
        pub metadata: String,
        pub created_at: DateTimeUtc,
        pub updated_at: DateTimeUtc,
        pub version: i64,
        pub monthly_cap: Option<Amount>,
        pub low_balance_warning: Option<Amount>,
        pub low_balance_warned: bool,
        pub transfer_max: Option<Amount>,
        pub transfer_daily_limit: Option<Amount>,
        pub spend_month: String,
        pub month_spend: Amount,
        pub cap_alerted_percent: i32,
        pub transfer_day: String,
        pub transferred_today: Amount,
        /// The hash of the latest entry; NULL before the first.
        pub ledger_head: Option<Vec<u8>>,
        /// The account this one draws on past its own (a shared budget).
        pub parent_id: Option<Uuid>,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

pub mod grant {
    use sea_orm::entity::prelude::*;

    use reservoir_common::db::Amount;

    #[derive(Clone, Debug, PartialEq, DeriveEntityModel)]
    #[sea_orm(table_name = "grants")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub id: Uuid,
        pub account_id: Uuid,
        pub tenant_id: Uuid,
        pub kind: String,
        pub source: String,
        pub source_reference: String,
        pub original_amount: Amount,
        pub remaining_amount: Amount,
        pub priority: i32,
        pub effective_at: DateTimeUtc,
        pub expires_at: Option<DateTimeUtc>,
        pub meter_codes: String,
        pub status: String,
        pub metadata: String,
        pub created_at: DateTimeUtc,
        pub created_sequence: i64,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

pub mod hold {
    use sea_orm::entity::prelude::*;

    use reservoir_common::db::Amount;

    #[derive(Clone, Debug, PartialEq, DeriveEntityModel)]
    #[sea_orm(table_name = "holds")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub id: Uuid,
        pub account_id: Uuid,
        pub tenant_id: Uuid,
        pub amount: Amount,
        pub captured_amount: Amount,
        pub status: String,
        pub meter_code: Option<String>,
        pub expires_at: DateTimeUtc,
        pub created_at: DateTimeUtc,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

pub mod entry {
    use sea_orm::entity::prelude::*;

    use reservoir_common::db::Amount;

    #[derive(Clone, Debug, PartialEq, DeriveEntityModel)]
    #[sea_orm(table_name = "ledger")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub account_number: i64,
        #[sea_orm(primary_key, auto_increment = false)]
        pub sequence: i64,
        pub created_at: DateTimeUtc,
        pub grant_id: Option<Uuid>,
        pub hold_id: Option<Uuid>,
        /// The entry's place in its operation on this account, from 0.
        pub position: i32,
        pub kind: i16,
        pub amount: Amount,
        pub balance_after: Amount,
        pub idempotency_key: String,
        pub correlation_id: Option<String>,
        pub meter_code: Option<String>,
        pub description: Option<String>,
        pub metadata: Option<String>,
        /// For a refund, the sequence of the entry it refunds (on the same account).
        pub refunded_sequence: Option<i64>,
        /// The id of an entry written before ids named their place.
        pub legacy_id: Option<Uuid>,
        /// The API key whose call wrote the entry.
        pub key_id: Option<Uuid>,
        /// The entry's hash, chained to the one before (see `domain::chain`).
        pub hash: Option<Vec<u8>>,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

pub mod replay {
    use sea_orm::entity::prelude::*;

    #[derive(Clone, Debug, PartialEq, DeriveEntityModel)]
    #[sea_orm(table_name = "replay_records")]
    pub struct Model {
        /// The first 16 bytes of SHA-256 over the tenant id and the key.
        #[sea_orm(primary_key, auto_increment = false)]
        pub digest: Vec<u8>,
        pub method: i16,
        /// The first 16 bytes of SHA-256 over the encoded request.
        pub request_hash: Vec<u8>,
        pub answer: Vec<u8>,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

pub mod budget {
    use reservoir_common::db::Amount;
    use sea_orm::entity::prelude::*;

    #[derive(Clone, Debug, PartialEq, DeriveEntityModel)]
    #[sea_orm(table_name = "budgets")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub account_id: Uuid,
        pub tenant_id: Uuid,
        pub parent_id: Uuid,
        pub limit_amount: Option<Amount>,
        pub period: String,
        pub period_key: String,
        pub spent: Amount,
        pub created_at: DateTimeUtc,
        pub updated_at: DateTimeUtc,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

pub mod transfer_decision {
    use reservoir_common::db::Amount;
    use sea_orm::entity::prelude::*;

    #[derive(Clone, Debug, PartialEq, DeriveEntityModel)]
    #[sea_orm(table_name = "transfer_decisions")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub id: Uuid,
        pub tenant_id: Uuid,
        pub from_id: Uuid,
        pub to_id: Uuid,
        pub amount: Amount,
        /// ALLOWED, REFUSED, HELD, RELEASED or REJECTED.
        pub decision: String,
        pub rule: Option<String>,
        pub review_id: Option<Uuid>,
        pub decided_at: DateTimeUtc,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

pub mod transfer_review {
    use reservoir_common::db::Amount;
    use sea_orm::entity::prelude::*;

    #[derive(Clone, Debug, PartialEq, DeriveEntityModel)]
    #[sea_orm(table_name = "transfer_reviews")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub id: Uuid,
        pub tenant_id: Uuid,
        pub idempotency_key: String,
        pub request_hash: Vec<u8>,
        pub from_id: Uuid,
        pub to_id: Uuid,
        pub amount: Amount,
        pub description: String,
        pub correlation_id: String,
        pub metadata: String,
        pub key_id: Option<Uuid>,
        pub rule: String,
        /// HELD, RELEASED or REJECTED.
        pub status: String,
        pub reason: String,
        pub created_at: DateTimeUtc,
        pub decided_at: Option<DateTimeUtc>,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}
