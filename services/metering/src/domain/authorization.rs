//! Where an authorization stands: usage estimated and held in the wallet
//! before it happens, then settled with what was actually used.
//!
//! PENDING (stored, its hold not yet asked for) → ACTIVE (held) or REFUSED
//! (the wallet would not hold it; asking again may still succeed) →
//! SETTLING (the actual usage stored, its debit under way) → SETTLED; an
//! ACTIVE or PENDING one past its expiry becomes EXPIRED.

/// An authorization's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthorizationStatus {
    Pending,
    Active,
    Refused,
    Settling,
    Settled,
    Expired,
}

impl AuthorizationStatus {
    const ALL: [Self; 6] = [Self::Pending, Self::Active, Self::Refused, Self::Settling, Self::Settled, Self::Expired];

    /// The name it is stored under.
    pub fn name(self) -> &'static str {
        match self {
            Self::Pending => "PENDING",
            Self::Active => "ACTIVE",
            Self::Refused => "REFUSED",
            Self::Settling => "SETTLING",
            Self::Settled => "SETTLED",
            Self::Expired => "EXPIRED",
        }
    }

    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|status| status.name() == name)
    }

    /// Whether a hold is still to be asked for (again).
    pub fn awaits_hold(self) -> bool {
        matches!(self, Self::Pending | Self::Refused)
    }

    /// Whether it lapses when its expiry passes.
    pub fn may_expire(self) -> bool {
        matches!(self, Self::Pending | Self::Active)
    }
}

#[cfg(test)]
mod tests {
    use super::AuthorizationStatus;

    #[test]
    fn every_status_is_read_back_from_its_name() {
        for status in AuthorizationStatus::ALL {
            assert_eq!(AuthorizationStatus::from_name(status.name()), Some(status));
        }
        assert_eq!(AuthorizationStatus::from_name("active"), None);
        assert!(AuthorizationStatus::Refused.awaits_hold() && !AuthorizationStatus::Active.awaits_hold());
        assert!(AuthorizationStatus::Pending.may_expire() && !AuthorizationStatus::Settling.may_expire());
    }
}
