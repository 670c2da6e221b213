//! Ids as types: a UUID that says what it names, so an account's id cannot
//! be passed where a tenant's is meant. [`typed_id!`] makes one; the ids
//! more than one service uses are defined here.

/// Defines `pub struct $name(pub Uuid)`: ordered, hashable, shown as its
/// UUID, made time-ordered by `generate`, parsed from a UUID's text.
#[macro_export]
macro_rules! typed_id {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $name(pub $crate::ids::__private::Uuid);

        impl $name {
            /// A new time-ordered id.
            pub fn generate() -> Self {
                Self($crate::ids::__private::Uuid::now_v7())
            }
        }

        impl ::std::fmt::Display for $name {
            fn fmt(&self, f: &mut ::std::fmt::Formatter<'_>) -> ::std::fmt::Result {
                ::std::fmt::Display::fmt(&self.0, f)
            }
        }

        impl ::std::str::FromStr for $name {
            type Err = $crate::ids::__private::uuid::Error;

            fn from_str(text: &str) -> ::std::result::Result<Self, Self::Err> {
                $crate::ids::__private::Uuid::parse_str(text).map(Self)
            }
        }

        impl ::std::convert::From<$name> for $crate::ids::__private::Uuid {
            fn from(id: $name) -> Self {
                id.0
            }
        }
    };
}

pub use crate::typed_id;

/// What [`typed_id!`] refers to from the crate it is used in.
#[doc(hidden)]
pub mod __private {
    pub use uuid::{self, Uuid};
}

typed_id!(
    /// The tenant every row belongs to.
    TenantId
);
typed_id!(
    /// An API key's id in the wallet's key table (never the key itself): what
    /// ledger entries and configuration changes record as the key that made
    /// them. The auth layer puts it into the request extensions beside the
    /// [`Caller`](crate::auth::Caller).
    KeyId
);
typed_id!(
    /// A wallet account, which has exactly one wallet; every service names
    /// accounts by it.
    AccountId
);

#[cfg(test)]
mod tests {
    use uuid::Uuid;

    use super::AccountId;

    #[test]
    fn an_id_reads_back_what_it_shows() {
        let id = AccountId::generate();
        assert_eq!(id.to_string(), id.0.to_string());
        assert_eq!(id.to_string().parse::<AccountId>().ok(), Some(id));
        assert_eq!(Uuid::from(id), id.0);
        assert!("not an id".parse::<AccountId>().is_err());
    }
}
