//! Conversions between wire timestamps and `chrono` instants.

use chrono::{DateTime, TimeZone, Utc};
use prost_types::Timestamp;

/// A wire timestamp as an instant; `None` when it is out of chrono's range.
pub fn from_timestamp(timestamp: &Timestamp) -> Option<DateTime<Utc>> {
    // The range protobuf's Timestamp allows (years 1 to 9999): an instant
    // outside it would be stored and then could not be sent back.
    const SECONDS: std::ops::RangeInclusive<i64> = -62_135_596_800..=253_402_300_799;
    if !SECONDS.contains(&timestamp.seconds) || !(0..1_000_000_000).contains(&timestamp.nanos) {
        return None;
    }
    let nanos = u32::try_from(timestamp.nanos).ok()?;
    Utc.timestamp_opt(timestamp.seconds, nanos).single()
}

/// An instant as a wire timestamp.
pub fn to_timestamp(instant: DateTime<Utc>) -> Timestamp {
    Timestamp { seconds: instant.timestamp(), nanos: i32::try_from(instant.timestamp_subsec_nanos()).unwrap_or(0) }
}

/// Instants are kept to the microsecond, which both databases store exactly,
/// so what is written reads back equal.
/// The current instant at the precision the databases keep (microseconds),
/// so what a change stores reads back equal to what it answered.
pub fn now() -> DateTime<Utc> {
    truncate_to_micros(Utc::now())
}

pub fn truncate_to_micros(instant: DateTime<Utc>) -> DateTime<Utc> {
    let micros = instant.timestamp_micros();
    DateTime::from_timestamp_micros(micros).unwrap_or(instant)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn only_instants_protobuf_can_carry_are_taken() {
        let at = |seconds, nanos| from_timestamp(&Timestamp { seconds, nanos });
        assert!(at(0, 0).is_some());
        assert!(at(-62_135_596_800, 0).is_some(), "0001-01-01");
        assert!(at(253_402_300_799, 999_999_999).is_some(), "9999-12-31T23:59:59.999999999");
        assert!(at(253_402_300_800, 0).is_none(), "year 10000");
        assert!(at(-62_135_596_801, 0).is_none(), "before year 1");
        assert!(at(i64::MAX, 0).is_none());
        assert!(at(0, 1_000_000_000).is_none(), "a leap-second nano count");
        assert!(at(0, -1).is_none());
        let back = to_timestamp(at(253_402_300_799, 0).unwrap());
        assert_eq!(back.seconds, 253_402_300_799);
    }
}
