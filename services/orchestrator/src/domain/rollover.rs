//! Rollover of a recurring top-up: what of the previous period's credits is
//! carried into the next when its credits are granted. The wallet applies
//! it in the same change as the new period's grant (one idempotency key per
//! period), so a period turns exactly once however often its grant is sent.

use chrono::{DateTime, Duration, Utc};
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// How much of what is left the next period carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Carry {
    /// Nothing: what is left expires at the turn.
    Nothing,
    /// All that is left.
    All,
    /// Up to an amount of the wallet's unit (kept as its decimal text).
    #[serde(with = "super::decimal_text")]
    Amount(Decimal),
    /// Up to a share (1 to 100) of the period's credits.
    Percent(u32),
}

/// A recurring top-up's rollover, as configured.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct RolloverPolicy {
    pub carry: Carry,
    /// The carried credits expire this many days after the turn; 0: never.
    pub expire_after_days: u32,
}

/// The rollover a period's top-up asks for: from the previous period's
/// top-up, whose grant is looked up when this period's credits are granted
/// (it may still be in flight when this period fires).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeriodRollover {
    pub from_top_up: Uuid,
    pub carry: Carry,
    /// When the carried credits expire, fixed when the period fires so every
    /// retry of the grant asks the same; none: never.
    pub expires_at: Option<DateTime<Utc>>,
}

/// The rollover the wallet is asked for with a grant.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GrantRollover {
    pub from_grant: Uuid,
    pub carry: Carry,
    pub expires_at: Option<DateTime<Utc>>,
}

impl RolloverPolicy {
    /// The rollover of a period firing at `now` after the period of top-up
    /// `previous` (none: nothing to carry, as for the first period).
    pub fn for_period(&self, previous: Option<Uuid>, now: DateTime<Utc>) -> Option<PeriodRollover> {
        let expires_at = (self.expire_after_days > 0).then(|| now + Duration::days(i64::from(self.expire_after_days)));
        previous.map(|from_top_up| PeriodRollover { from_top_up, carry: self.carry, expires_at })
    }
}

impl PeriodRollover {
    /// What the wallet is asked once the previous period's grant is known.
    pub fn from_grant(&self, grant: Uuid) -> GrantRollover {
        GrantRollover { from_grant: grant, carry: self.carry, expires_at: self.expires_at }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use chrono::TimeZone;

    use super::*;

    #[test]
    fn a_period_carries_from_the_grant_before_it_with_its_own_expiry() {
        let now = Utc.with_ymd_and_hms(2026, 12, 1, 0, 0, 0).unwrap();
        let policy = RolloverPolicy { carry: Carry::Percent(50), expire_after_days: 60 };
        assert_eq!(policy.for_period(None, now), None, "the first period has nothing before it");
        let previous = Uuid::now_v7();
        let rollover = policy.for_period(Some(previous), now).unwrap();
        assert_eq!(rollover.from_top_up, previous);
        assert_eq!(rollover.expires_at, Some(Utc.with_ymd_and_hms(2027, 1, 30, 0, 0, 0).unwrap()));
        let forever = RolloverPolicy { carry: Carry::All, expire_after_days: 0 };
        assert_eq!(forever.for_period(Some(previous), now).unwrap().expires_at, None);
    }

    #[test]
    fn policies_read_back_as_stored() {
        for carry in [Carry::Nothing, Carry::All, Carry::Amount("12.50".parse().unwrap()), Carry::Percent(25)] {
            let policy = RolloverPolicy { carry, expire_after_days: 7 };
            let text = serde_json::to_string(&policy).unwrap();
            assert_eq!(serde_json::from_str::<RolloverPolicy>(&text).unwrap(), policy);
        }
        let text = serde_json::to_string(&Carry::Amount("12.50".parse().unwrap())).unwrap();
        assert_eq!(text, r#"{"Amount":"12.50"}"#);
    }
}
