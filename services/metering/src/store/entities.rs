//! Metering's tables as sea-orm entities, private to the store.

pub mod meter {
    use sea_orm::entity::prelude::*;

    #[derive(Clone, Debug, PartialEq, DeriveEntityModel)]
    #[sea_orm(table_name = "meters")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub id: Uuid,
        pub tenant_id: Uuid,
        pub code: String,
        pub unit_name: String,
        pub aggregation: String,
        pub description: String,
        pub created_at: DateTimeUtc,
        /// The dimension a UNIQUE_COUNT meter counts the distinct values of.
        pub value_dimension: Option<String>,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

pub mod price {
    use sea_orm::entity::prelude::*;

    #[derive(Clone, Debug, PartialEq, DeriveEntityModel)]
    #[sea_orm(table_name = "prices")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub id: Uuid,
        pub tenant_id: Uuid,
        pub meter_id: Uuid,
        pub effective_from: DateTimeUtc,
        /// The tiers and overrides as JSON with decimal strings.
        pub definition: String,
        pub created_at: DateTimeUtc,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

pub mod account {
    use sea_orm::entity::prelude::*;

    /// The wallet unit of each account seen, so events can be priced at its
    /// scale without asking the wallet each time (a unit never changes).
    #[derive(Clone, Debug, PartialEq, DeriveEntityModel)]
    #[sea_orm(table_name = "accounts")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub tenant_id: Uuid,
        #[sea_orm(primary_key, auto_increment = false)]
        pub account_id: Uuid,
        pub unit_code: String,
        pub unit_scale: i32,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

pub mod counter {
    use reservoir_common::db::Amount;
    use sea_orm::entity::prelude::*;

    #[derive(Clone, Debug, PartialEq, DeriveEntityModel)]
    #[sea_orm(table_name = "usage_counters")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub tenant_id: Uuid,
        #[sea_orm(primary_key, auto_increment = false)]
        pub account_id: Uuid,
        #[sea_orm(primary_key, auto_increment = false)]
        pub meter_code: String,
        #[sea_orm(primary_key, auto_increment = false)]
        pub month: String,
        pub quantity: Amount,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

pub mod event {
    use reservoir_common::db::Amount;
    use sea_orm::entity::prelude::*;

    #[derive(Clone, Debug, PartialEq, DeriveEntityModel)]
    #[sea_orm(table_name = "usage_events")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub tenant_id: Uuid,
        #[sea_orm(primary_key, auto_increment = false)]
        pub event_id: String,
        pub account_id: Uuid,
        pub meter_code: String,
        pub quantity: Amount,
        pub dimensions: String,
        pub occurred_at: DateTimeUtc,
        pub status: String,
        pub amount: Amount,
        pub charged_amount: Amount,
        pub uncovered_amount: Amount,
        pub entry_ids: String,
        pub reason: String,
        /// INGEST, or SETTLEMENT for the usage an authorization settles,
        /// which only its settlement ever sends to the wallet.
        pub origin: String,
        /// Whoever is sending the event's debit holds it until then; nobody
        /// else sends it meanwhile.
        pub claimed_until: DateTimeUtc,
        pub created_at: DateTimeUtc,
        pub updated_at: DateTimeUtc,
        /// The wallet key of the line the event is drawn in; none for events
        /// stored before lines, and for a settlement's.
        pub draw_key: Option<String>,
        /// The event's place in its line.
        pub draw_position: Option<i32>,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

pub mod authorization {
    use reservoir_common::db::Amount;
    use sea_orm::entity::prelude::*;

    #[derive(Clone, Debug, PartialEq, DeriveEntityModel)]
    #[sea_orm(table_name = "authorizations")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub id: Uuid,
        pub tenant_id: Uuid,
        pub idempotency_key: String,
        pub request_hash: String,
        pub account_id: Uuid,
        pub meter_code: String,
        pub dimensions: String,
        pub estimated_quantity: Amount,
        pub estimated_amount: Amount,
        pub hold_id: Option<Uuid>,
        pub status: String,
        pub expires_at: DateTimeUtc,
        pub actual_quantity: Option<Amount>,
        pub actual_amount: Option<Amount>,
        pub charged_amount: Option<Amount>,
        pub uncovered_amount: Option<Amount>,
        pub created_at: DateTimeUtc,
        pub updated_at: DateTimeUtc,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

pub mod line {
    use sea_orm::entity::prelude::*;

    /// A line of usage not yet drawn from the wallet.
    #[derive(Clone, Debug, PartialEq, DeriveEntityModel)]
    #[sea_orm(table_name = "usage_lines")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub tenant_id: Uuid,
        #[sea_orm(primary_key, auto_increment = false)]
        pub draw_key: String,
        pub account_id: Uuid,
        pub meter_code: String,
        /// Whoever is drawing the line holds it until then; nobody else draws it meanwhile.
        pub claimed_until: DateTimeUtc,
        pub created_at: DateTimeUtc,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

pub mod unique_value {
    use sea_orm::entity::prelude::*;

    /// A value of a UNIQUE_COUNT meter's dimension an account's month has seen.
    #[derive(Clone, Debug, PartialEq, DeriveEntityModel)]
    #[sea_orm(table_name = "unique_values")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub tenant_id: Uuid,
        #[sea_orm(primary_key, auto_increment = false)]
        pub account_id: Uuid,
        #[sea_orm(primary_key, auto_increment = false)]
        pub meter_code: String,
        #[sea_orm(primary_key, auto_increment = false)]
        pub month: String,
        #[sea_orm(primary_key, auto_increment = false)]
        pub value: String,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

pub mod latest_value {
    use sea_orm::entity::prelude::*;

    use reservoir_common::db::Amount;

    /// The last quantity an account reported for a LATEST meter in a month,
    /// and where the month's charge stands: OPEN while events may still
    /// come, CLOSED once the month has ended and no more are taken, CHARGED
    /// once its closing event is stored.
    #[derive(Clone, Debug, PartialEq, DeriveEntityModel)]
    #[sea_orm(table_name = "latest_values")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub tenant_id: Uuid,
        #[sea_orm(primary_key, auto_increment = false)]
        pub account_id: Uuid,
        #[sea_orm(primary_key, auto_increment = false)]
        pub meter_code: String,
        #[sea_orm(primary_key, auto_increment = false)]
        pub month: String,
        pub quantity: Amount,
        pub occurred_at: DateTimeUtc,
        pub event_id: String,
        /// The latest report's dimensions (JSON), which its price's overrides go by.
        pub dimensions: String,
        pub state: String,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}
