//! The orchestrator's tables as sea-orm entities, private to the store.

pub mod top_up {
    use reservoir_common::db::Amount;
    use sea_orm::entity::prelude::*;

    #[derive(Clone, Debug, PartialEq, DeriveEntityModel)]
    #[sea_orm(table_name = "top_ups")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub id: Uuid,
        pub tenant_id: Uuid,
        pub account_id: Uuid,
        pub trigger_kind: String,
        pub status: String,
        pub step: String,
        pub credits: Amount,
        pub grant_kind: String,
        pub payment_method_id: Option<Uuid>,
        pub reconcile_later: bool,
        pub credits_expire_at: Option<DateTimeUtc>,
        pub invoice_id: Option<Uuid>,
        pub payment_id: Option<Uuid>,
        pub grant_id: Option<Uuid>,
        pub voucher_id: Option<Uuid>,
        pub voucher_code: Option<String>,
        pub amount: Option<Amount>,
        pub currency: String,
        pub reason: String,
        pub attempts: i32,
        pub next_attempt_at: DateTimeUtc,
        pub claimed_until: DateTimeUtc,
        pub idempotency_key: String,
        pub request_hash: String,
        pub created_at: DateTimeUtc,
        pub updated_at: DateTimeUtc,
        /// The rollover asked with the grant (`domain::PeriodRollover` as JSON).
        pub rollover: Option<String>,
        /// The bonus given with the purchase (`domain::Bonus` as JSON).
        pub bonus: Option<String>,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

pub mod step_log {
    use sea_orm::entity::prelude::*;

    #[derive(Clone, Debug, PartialEq, DeriveEntityModel)]
    #[sea_orm(table_name = "top_up_steps")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub top_up_id: Uuid,
        #[sea_orm(primary_key, auto_increment = false)]
        pub position: i32,
        pub step: String,
        pub outcome: String,
        pub attempt: i32,
        pub detail: String,
        pub at: DateTimeUtc,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

pub mod auto_replenish {
    use reservoir_common::db::Amount;
    use sea_orm::entity::prelude::*;

    #[derive(Clone, Debug, PartialEq, DeriveEntityModel)]
    #[sea_orm(table_name = "auto_replenish")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub tenant_id: Uuid,
        #[sea_orm(primary_key, auto_increment = false)]
        pub account_id: Uuid,
        pub threshold: Amount,
        pub strategy: String,
        pub strategy_amount: Amount,
        pub payment_method_id: Uuid,
        pub max_top_ups_per_day: i32,
        pub max_credits_per_month: Option<Amount>,
        pub warning_percent: i32,
        pub min_credits: Option<Amount>,
        pub max_credits: Option<Amount>,
        pub enabled: bool,
        pub paused: bool,
        pub consecutive_declines: i32,
        pub updated_at: DateTimeUtc,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

pub mod recurring {
    use reservoir_common::db::Amount;
    use sea_orm::entity::prelude::*;

    #[derive(Clone, Debug, PartialEq, DeriveEntityModel)]
    #[sea_orm(table_name = "recurring_top_ups")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub tenant_id: Uuid,
        #[sea_orm(primary_key, auto_increment = false)]
        pub account_id: Uuid,
        pub credits: Amount,
        pub interval_kind: String,
        pub mode: String,
        pub payment_method_id: Option<Uuid>,
        pub credits_expire_after_days: i32,
        pub next_run_at: DateTimeUtc,
        pub anchor_at: Option<DateTimeUtc>,
        pub enabled: bool,
        pub runs: i64,
        pub updated_at: DateTimeUtc,
        /// `domain::RolloverPolicy` as JSON.
        pub rollover: Option<String>,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

pub mod cursor {
    use sea_orm::entity::prelude::*;

    #[derive(Clone, Debug, PartialEq, DeriveEntityModel)]
    #[sea_orm(table_name = "watch_cursors")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub tenant_id: Uuid,
        #[sea_orm(primary_key, auto_increment = false)]
        pub source: String,
        pub after_sequence: i64,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

pub mod event {
    use sea_orm::entity::prelude::*;

    #[derive(Clone, Debug, PartialEq, DeriveEntityModel)]
    #[sea_orm(table_name = "events")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub sequence: i64,
        pub tenant_id: Uuid,
        pub event_type: String,
        pub account_id: Uuid,
        pub top_up_id: Option<Uuid>,
        pub credits: String,
        pub reason: String,
        pub occurred_at: DateTimeUtc,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

pub mod webhook_endpoint {
    use sea_orm::entity::prelude::*;

    #[derive(Clone, Debug, PartialEq, DeriveEntityModel)]
    #[sea_orm(table_name = "webhook_endpoints")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub id: Uuid,
        pub tenant_id: Uuid,
        pub url: String,
        pub description: String,
        pub event_types: String,
        pub secret: String,
        pub previous_secret: Option<String>,
        pub previous_secret_expires_at: Option<DateTimeUtc>,
        pub enabled: bool,
        pub idempotency_key: String,
        pub created_at: DateTimeUtc,
        pub updated_at: DateTimeUtc,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

pub mod webhook_message {
    use sea_orm::entity::prelude::*;

    #[derive(Clone, Debug, PartialEq, DeriveEntityModel)]
    #[sea_orm(table_name = "webhook_messages")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub id: Uuid,
        pub tenant_id: Uuid,
        pub source: String,
        pub source_sequence: i64,
        pub account_id: String,
        pub event_type: String,
        pub body: String,
        pub created_at: DateTimeUtc,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

pub mod webhook_delivery {
    use sea_orm::entity::prelude::*;

    #[derive(Clone, Debug, PartialEq, DeriveEntityModel)]
    #[sea_orm(table_name = "webhook_deliveries")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub id: Uuid,
        pub tenant_id: Uuid,
        pub endpoint_id: Uuid,
        pub message_id: Uuid,
        pub account_id: String,
        pub source: String,
        pub source_sequence: i64,
        pub event_type: String,
        pub status: String,
        pub attempts: i32,
        pub next_attempt_at: DateTimeUtc,
        pub retry_from: DateTimeUtc,
        pub claimed_until: Option<DateTimeUtc>,
        pub last_status_code: Option<i32>,
        pub last_error: String,
        pub created_at: DateTimeUtc,
        pub updated_at: DateTimeUtc,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

pub mod webhook_attempt {
    use sea_orm::entity::prelude::*;

    #[derive(Clone, Debug, PartialEq, DeriveEntityModel)]
    #[sea_orm(table_name = "webhook_attempts")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub id: Uuid,
        pub delivery_id: Uuid,
        pub tenant_id: Uuid,
        pub attempted_at: DateTimeUtc,
        pub status_code: Option<i32>,
        pub error: String,
        pub duration_ms: i64,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

pub mod clawback {
    use reservoir_common::db::Amount;
    use sea_orm::entity::prelude::*;

    #[derive(Clone, Debug, PartialEq, DeriveEntityModel)]
    #[sea_orm(table_name = "bonus_clawbacks")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub refund_id: Uuid,
        pub tenant_id: Uuid,
        pub top_up_id: Uuid,
        pub sequence: i64,
        pub refunded_amount: Amount,
        pub asked: Amount,
        pub clawed_back: Option<Amount>,
        pub refunded_at: DateTimeUtc,
        pub applied_at: Option<DateTimeUtc>,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}
