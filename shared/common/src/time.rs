//! Conversions between wire timestamps and `chrono` instants.

use chrono::{DateTime, TimeZone, Utc};
use prost_types::Timestamp;

/// A wire timestamp as an instant; `None` when it is out of chrono's range.
pub fn from_timestamp(timestamp: &Timestamp) -> Option<DateTime<Utc>> {
    let nanos = u32::try_from(timestamp.nanos).ok()?;
    Utc.timestamp_opt(timestamp.seconds, nanos).single()
}

/// An instant as a wire timestamp.
pub fn to_timestamp(instant: DateTime<Utc>) -> Timestamp {
    Timestamp { seconds: instant.timestamp(), nanos: i32::try_from(instant.timestamp_subsec_nanos()).unwrap_or(0) }
}

/// Instants are kept to the microsecond, which both databases store exactly,
/// so what is written reads back equal.
pub fn truncate_to_micros(instant: DateTime<Utc>) -> DateTime<Utc> {
    let micros = instant.timestamp_micros();
    DateTime::from_timestamp_micros(micros).unwrap_or(instant)
}
