//! Payments' tables as sea-orm entities, private to the store.

pub mod payment_method {
    use sea_orm::entity::prelude::*;

    /// A way to pay, owned by one account.
    #[derive(Clone, Debug, PartialEq, DeriveEntityModel)]
    #[sea_orm(table_name = "payment_methods")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub id: Uuid,
        pub tenant_id: Uuid,
        pub account_id: Uuid,
        pub kind: String,
        pub gateway_token: String,
        pub label: String,
        pub created_at: DateTimeUtc,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

pub mod payment {
    use reservoir_common::db::Amount;
    use sea_orm::entity::prelude::*;

    /// A payment; its status moves as the gateway or an operator answers.
    #[derive(Clone, Debug, PartialEq, DeriveEntityModel)]
    #[sea_orm(table_name = "payments")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub id: Uuid,
        pub tenant_id: Uuid,
        pub account_id: Uuid,
        pub invoice_id: Uuid,
        pub payment_method_id: Option<Uuid>,
        pub channel: String,
        pub gateway_token: String,
        pub amount: Amount,
        pub currency: String,
        pub status: String,
        pub idempotency_key: String,
        pub request_hash: String,
        pub gateway_reference: String,
        pub external_transaction_id: String,
        pub failure_code: String,
        /// Refunds succeeded or in flight: what may not be refunded again.
        pub refunded_amount: Amount,
        /// The caller's metadata as a JSON object.
        pub metadata: String,
        pub created_at: DateTimeUtc,
        pub updated_at: DateTimeUtc,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

pub mod attempt {
    use sea_orm::entity::prelude::*;

    /// One call to the gateway for a payment and its answer.
    #[derive(Clone, Debug, PartialEq, DeriveEntityModel)]
    #[sea_orm(table_name = "payment_attempts")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub payment_id: Uuid,
        #[sea_orm(primary_key, auto_increment = false)]
        pub number: i32,
        pub outcome: String,
        pub gateway_reference: String,
        pub code: String,
        pub attempted_at: DateTimeUtc,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

pub mod refund {
    use reservoir_common::db::Amount;
    use sea_orm::entity::prelude::*;

    /// A refund of (part of) a payment.
    #[derive(Clone, Debug, PartialEq, DeriveEntityModel)]
    #[sea_orm(table_name = "refunds")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub id: Uuid,
        pub tenant_id: Uuid,
        pub payment_id: Uuid,
        pub idempotency_key: String,
        pub request_hash: String,
        pub amount: Amount,
        pub reason: String,
        pub channel: String,
        pub status: String,
        pub gateway_reference: String,
        pub code: String,
        pub created_at: DateTimeUtc,
        pub updated_at: DateTimeUtc,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

pub mod voucher_batch {
    use reservoir_common::db::Amount;
    use sea_orm::entity::prelude::*;

    /// Vouchers created together, of one value.
    #[derive(Clone, Debug, PartialEq, DeriveEntityModel)]
    #[sea_orm(table_name = "voucher_batches")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub id: Uuid,
        pub tenant_id: Uuid,
        pub idempotency_key: String,
        pub count: i32,
        pub value: Amount,
        pub unit_code: String,
        pub expires_at: Option<DateTimeUtc>,
        pub created_at: DateTimeUtc,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

pub mod voucher {
    use reservoir_common::db::Amount;
    use sea_orm::entity::prelude::*;

    /// A voucher, known by the digest of its code only.
    #[derive(Clone, Debug, PartialEq, DeriveEntityModel)]
    #[sea_orm(table_name = "vouchers")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub id: Uuid,
        pub tenant_id: Uuid,
        pub batch_id: Uuid,
        pub code_hash: String,
        pub value: Amount,
        pub unit_code: String,
        pub expires_at: Option<DateTimeUtc>,
        pub redeemed_by: Option<Uuid>,
        pub redeemed_at: Option<DateTimeUtc>,
        pub created_at: DateTimeUtc,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

pub mod voucher_failure {
    use sea_orm::entity::prelude::*;

    /// The unknown voucher codes an account entered in its current window.
    #[derive(Clone, Debug, PartialEq, DeriveEntityModel)]
    #[sea_orm(table_name = "voucher_failures")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub tenant_id: Uuid,
        #[sea_orm(primary_key, auto_increment = false)]
        pub account_id: Uuid,
        pub window_started_at: DateTimeUtc,
        pub failures: i32,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

pub mod event {
    use reservoir_common::db::Amount;
    use sea_orm::entity::prelude::*;

    /// An outbox event, numbered in commit order.
    #[derive(Clone, Debug, PartialEq, DeriveEntityModel)]
    #[sea_orm(table_name = "events")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub sequence: i64,
        pub tenant_id: Uuid,
        pub event_type: String,
        pub account_id: Uuid,
        pub payment_id: Option<Uuid>,
        pub invoice_id: Option<Uuid>,
        pub amount: Amount,
        pub currency: String,
        pub voucher_id: Option<Uuid>,
        pub refund_id: Option<Uuid>,
        pub occurred_at: DateTimeUtc,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

pub mod sandbox_charge {
    use reservoir_common::db::Amount;
    use sea_orm::entity::prelude::*;

    /// The sandbox gateway's own ledger: one row per operation and idempotency key.
    #[derive(Clone, Debug, PartialEq, DeriveEntityModel)]
    #[sea_orm(table_name = "sandbox_charges")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub operation: String,
        #[sea_orm(primary_key, auto_increment = false)]
        pub idempotency_key: String,
        /// How often the key was called, answered or not.
        pub calls: i32,
        /// Unset until the sandbox has decided what it did for the key.
        pub outcome: Option<String>,
        pub reference: String,
        pub code: String,
        pub amount: Option<Amount>,
        pub currency: String,
        /// For a refund, the reference of the charge it returns money of.
        pub parent_reference: String,
        pub created_at: DateTimeUtc,
        pub updated_at: DateTimeUtc,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

pub mod fraud_rules {
    use sea_orm::entity::prelude::*;

    /// A tenant's fraud rules on charges (`StoredRules` as JSON).
    #[derive(Clone, Debug, PartialEq, DeriveEntityModel)]
    #[sea_orm(table_name = "fraud_rules")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub tenant_id: Uuid,
        pub rules: String,
        pub updated_at: DateTimeUtc,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

pub mod fraud_decision {
    use reservoir_common::db::Amount;
    use sea_orm::entity::prelude::*;

    #[derive(Clone, Debug, PartialEq, DeriveEntityModel)]
    #[sea_orm(table_name = "fraud_decisions")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub id: Uuid,
        pub tenant_id: Uuid,
        pub account_id: Uuid,
        pub payment_id: Option<Uuid>,
        pub payment_method_id: Option<Uuid>,
        pub amount: Amount,
        pub currency: String,
        pub rule: String,
        pub decision: String,
        pub reason: String,
        pub decided_at: DateTimeUtc,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}
