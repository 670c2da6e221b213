//! CORS for gRPC-Web calls from browser pages on other origins: only the
//! origins an operator lists (`limits.browser_origins`) are answered their
//! preflights and may read the answers; there is no wildcard.

use std::time::Duration;

use http::header::{AUTHORIZATION, CONTENT_TYPE, HeaderName};
use tower_http::cors::{AllowOrigin, CorsLayer};

/// Whether `text` is an origin as a browser sends it in `Origin`: `http`
/// or `https`, a host in lower case, a port only when it is not the
/// scheme's own, nothing else. Another spelling of the same origin would
/// never match what a browser sends, so it is refused rather than kept.
pub fn is_origin(text: &str) -> bool {
    let Some((scheme, rest)) = text.split_once("://") else { return false };
    let default_port = match scheme {
        "http" => 80,
        "https" => 443,
        _ => return false,
    };
    // An IPv6 address is in brackets; a port follows the host after one colon.
    let (host, port) = match rest.strip_prefix('[') {
        Some(bracketed) => match bracketed.split_once(']') {
            Some((address, "")) => (address, None),
            Some((address, after)) => match after.strip_prefix(':') {
                Some(port) => (address, Some(port)),
                None => return false,
            },
            None => return false,
        },
        None => match rest.split_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (rest, None),
        },
    };
    let host_is_valid = if rest.starts_with('[') {
        host.parse::<std::net::Ipv6Addr>().is_ok()
    } else {
        !host.is_empty()
            && host.chars().all(|character| {
                character.is_ascii_lowercase() || character.is_ascii_digit() || "-.".contains(character)
            })
    };
    let port_is_valid = port.is_none_or(|port| {
        port.parse::<u16>().is_ok_and(|port| port > 0 && port != default_port) && !port.starts_with('0')
    });
    host_is_valid && port_is_valid
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
                HeaderName::from_static("traceparent"),
                HeaderName::from_static("tracestate"),
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
