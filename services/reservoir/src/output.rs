//! How the commands show what the services answer: enums by their readable
//! names, instants in RFC 3339.

use reservoir_common::time::from_timestamp;

/// An enum's wire name without its prefix: `CARD` for `PAYMENT_METHOD_KIND_CARD`.
pub fn readable(name: &'static str, prefix: &str) -> &'static str {
    name.strip_prefix(prefix).unwrap_or(name)
}

/// An instant as RFC 3339; empty when unset.
pub fn instant(timestamp: Option<&prost_types::Timestamp>) -> String {
    timestamp.and_then(from_timestamp).map(|at| at.to_rfc3339()).unwrap_or_default()
}
