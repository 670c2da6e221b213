//! CORS for gRPC-Web calls from browser pages on other origins: only the
//! origins an operator lists (`limits.browser_origins`) are answered their
//! preflights and may read the answers; there is no wildcard.

use std::time::Duration;

use http::header::{AUTHORIZATION, CONTENT_TYPE, HeaderName};
use tower_http::cors::{AllowOrigin, CorsLayer};

/// Whether `text` is a browser origin: `http` or `https`, a host, perhaps
/// a port, and nothing else (the form a browser sends in `Origin`).
pub fn is_origin(text: &str) -> bool {
    let Some((scheme, rest)) = text.split_once("://") else { return false };
    // A colon inside brackets belongs to an IPv6 address, not to a port.
    let (host, port) = match rest.rsplit_once(':') {
        Some((host, port)) if !port.contains(']') => (host, Some(port)),
        _ => (rest, None),
    };
    matches!(scheme, "http" | "https")
        && !host.is_empty()
        && host.chars().all(|character| character.is_ascii_alphanumeric() || "-.[]:".contains(character))
        && port.is_none_or(|port| port.parse::<u16>().is_ok_and(|port| port > 0))
}

/// The layer that lets `origins` call with gRPC-Web; none when none is listed.
pub fn layer(origins: &[String]) -> Option<CorsLayer> {
    if origins.is_empty() {
        return None;
    }
    let origins = origins.iter().filter_map(|origin| http::HeaderValue::from_str(origin).ok());
    Some(
        CorsLayer::new()
            .allow_origin(AllowOrigin::list(origins))
            .allow_methods([http::Method::POST])
            .allow_headers([
                AUTHORIZATION,
                CONTENT_TYPE,
                HeaderName::from_static("x-grpc-web"),
                HeaderName::from_static("x-user-agent"),
                HeaderName::from_static("grpc-timeout"),
            ])
            .expose_headers([
                HeaderName::from_static("grpc-status"),
                HeaderName::from_static("grpc-message"),
                HeaderName::from_static("grpc-status-details-bin"),
            ])
            .max_age(Duration::from_secs(24 * 60 * 60)),
    )
}

#[cfg(test)]
mod tests {
    use super::{is_origin, layer};

    #[test]
    fn an_origin_is_a_scheme_a_host_and_perhaps_a_port() {
        for origin in ["https://app.example.com", "http://localhost:5173", "https://[::1]:8443", "https://[::1]"] {
            assert!(is_origin(origin), "{origin}");
        }
        for text in [
            "*",
            "https://*.example.com",
            "https://app.example.com/",
            "app.example.com",
            "ftp://a.b",
            "https://a.b:0",
            "https://",
        ] {
            assert!(!is_origin(text), "{text}");
        }
    }

    #[test]
    fn no_origin_listed_is_no_layer() {
        assert!(layer(&[]).is_none());
        assert!(layer(&["https://app.example.com".to_owned()]).is_some());
    }
}
