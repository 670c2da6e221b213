//! Amount columns. PostgreSQL keeps them as NUMERIC; SQLite has no exact
//! decimal type and would turn a DECIMAL column into a float, so there they are
//! TEXT. Writing binds a `Decimal`, which PostgreSQL stores as NUMERIC and the
//! SQLite driver binds as its exact text; reading takes the text where there is
//! text and the NUMERIC otherwise, so no digit is lost on either.

use rust_decimal::Decimal;
use sea_orm::sea_query::{ArrayType, ColumnType, Nullable, Value, ValueType, ValueTypeErr};
use sea_orm::{ColIdx, QueryResult, TryGetError, TryGetable};

/// A stored amount.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Amount(pub Decimal);

impl From<Amount> for Value {
    fn from(amount: Amount) -> Self {
        Value::Decimal(Some(amount.0))
    }
}

impl From<Decimal> for Amount {
    fn from(value: Decimal) -> Self {
        Self(value)
    }
}

impl TryGetable for Amount {
    fn try_get_by<I: ColIdx>(result: &QueryResult, index: I) -> Result<Self, TryGetError> {
        // SQLite TEXT reads as a string; PostgreSQL NUMERIC refuses to and is read as a Decimal.
        if let Ok(text) = String::try_get_by(result, index) {
            return text.parse::<Decimal>().map(Amount).map_err(|error| {
                TryGetError::DbErr(sea_orm::DbErr::Type(format!("amount column holds {text:?}: {error}")))
            });
        }
        Decimal::try_get_by(result, index).map(Amount)
    }
}

impl ValueType for Amount {
    fn try_from(value: Value) -> Result<Self, ValueTypeErr> {
        match value {
            Value::Decimal(Some(decimal)) => Ok(Amount(decimal)),
            Value::String(Some(text)) => text.parse().map(Amount).map_err(|_| ValueTypeErr),
            _ => Err(ValueTypeErr),
        }
    }

    fn type_name() -> String {
        "Amount".to_owned()
    }

    fn array_type() -> ArrayType {
        ArrayType::Decimal
    }

    fn column_type() -> ColumnType {
        ColumnType::Decimal(None)
    }
}

impl Nullable for Amount {
    fn null() -> Value {
        Value::Decimal(None)
    }
}

impl sea_orm::TryFromU64 for Amount {
    fn try_from_u64(_: u64) -> Result<Self, sea_orm::DbErr> {
        Err(sea_orm::DbErr::ConvertFromU64("Amount"))
    }
}
