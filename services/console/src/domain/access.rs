//! What a signed-in key may do. The services decide for themselves on every
//! call; the console only leaves out what a role would be refused, so a
//! read-only person is not offered forms that cannot work.

/// The role of the key a person signed in with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Admin,
    Write,
    ReadOnly,
}

impl Role {
    /// Grants, adjustments, voids: changes to an account's money.
    pub fn may_change(self) -> bool {
        matches!(self, Self::Admin | Self::Write)
    }

    /// The tenant's configuration: caps, alert recipients, refills, webhooks.
    pub fn may_configure(self) -> bool {
        self == Self::Admin
    }

    pub fn label(self) -> &'static str {
        match self {
            Self::Admin => "admin",
            Self::Write => "write",
            Self::ReadOnly => "read-only",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_role_is_offered_what_the_services_allow_it() {
        assert!(Role::Admin.may_change() && Role::Admin.may_configure());
        assert!(Role::Write.may_change() && !Role::Write.may_configure());
        assert!(!Role::ReadOnly.may_change() && !Role::ReadOnly.may_configure());
    }
}
