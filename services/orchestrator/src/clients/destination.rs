//! Where webhooks may be sent: only to public addresses, unless the operator
//! allows private ones (local development). A URL is checked when an
//! endpoint is saved, and every delivery resolves its host again through
//! [`PublicOnly`], so a name that later points inward (DNS rebinding) is
//! refused at connect time, not only at creation.
//!
//! The address ranges are written out here because the standard library's
//! `IpAddr::is_global` is still unstable and no well-kept crate offers the
//! same test.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use reqwest::dns::{Addrs, Name, Resolve, Resolving};

/// Whether `ip` is reachable on the public internet: not loopback, private,
/// link-local (cloud metadata lives there), shared, reserved, multicast or
/// documentation space, in either family, IPv4 mapped into IPv6 included.
pub fn is_public(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => is_public_v4(v4),
        IpAddr::V6(v6) => is_public_v6(v6),
    }
}

fn is_public_v4(ip: Ipv4Addr) -> bool {
    let [a, b, c, _] = ip.octets();
    !(ip.is_unspecified()
        || ip.is_loopback()
        || ip.is_private()
        || ip.is_link_local()
        || ip.is_broadcast()
        || ip.is_multicast()
        || ip.is_documentation()
        || a == 0
        // Shared address space (carrier-grade NAT), 100.64.0.0/10.
        || (a == 100 && (64..128).contains(&b))
        // IETF protocol assignments, 192.0.0.0/24.
        || (a == 192 && b == 0 && c == 0)
        // Benchmarking, 198.18.0.0/15.
        || (a == 198 && (b == 18 || b == 19))
        // Reserved, 240.0.0.0/4.
        || a >= 240)
}

fn is_public_v6(ip: Ipv6Addr) -> bool {
    if let Some(v4) = ip.to_ipv4_mapped() {
        return is_public_v4(v4);
    }
    let segments = ip.segments();
    !(ip.is_unspecified()
        || ip.is_loopback()
        || ip.is_multicast()
        // Unique local, fc00::/7 (fd00:ec2::254 is a metadata address).
        || (segments[0] & 0xfe00) == 0xfc00
        // Link-local, fe80::/10.
        || (segments[0] & 0xffc0) == 0xfe80
        // Documentation, 2001:db8::/32.
        || (segments[0] == 0x2001 && segments[1] == 0x0db8)
        // IPv4-compatible (deprecated) and NAT64 forms carry an IPv4 address.
        || (segments[..6] == [0, 0, 0, 0, 0, 0])
        || (segments[..6] == [0x64, 0xff9b, 0, 0, 0, 0] && !is_public_v4(embedded_v4(segments))))
}

fn embedded_v4(segments: [u16; 8]) -> Ipv4Addr {
    let [high, low] = [segments[6], segments[7]];
    Ipv4Addr::new((high >> 8) as u8, high as u8, (low >> 8) as u8, low as u8)
}

/// The address a URL names directly, if its host is one (the URL parser
/// has already turned forms like `0x7f000001` into `127.0.0.1`).
pub fn literal(url: &reqwest::Url) -> Option<IpAddr> {
    let host = url.host_str()?;
    host.strip_prefix('[').and_then(|host| host.strip_suffix(']')).unwrap_or(host).parse().ok()
}

/// Why a URL whose host is an address is refused, if it is: such a host
/// never reaches [`PublicOnly`], so each delivery checks it with this.
pub fn literal_refusal(url: &str) -> Option<String> {
    let ip = reqwest::Url::parse(url).ok().as_ref().and_then(literal)?;
    (!is_public(ip)).then(|| format!("points to {ip}, which is not a public address"))
}

/// Checks a URL about to be saved: a literal address must be public, and a
/// name must not resolve to anything that is not. A name that does not
/// resolve yet is let through; each delivery resolves it again.
pub async fn check(url: &reqwest::Url) -> Result<(), String> {
    if literal(url).is_some() {
        return literal_refusal(url.as_str()).map_or(Ok(()), Err);
    }
    let Some(host) = url.host_str() else {
        return Err("has no host".into());
    };
    let port = url.port_or_known_default().unwrap_or(443);
    // A name that does not resolve now resolves to nothing refused.
    let resolved = tokio::net::lookup_host((host, port)).await.into_iter().flatten();
    match resolved.map(|address| address.ip()).find(|ip| !is_public(*ip)) {
        Some(ip) => Err(format!("resolves to {ip}, which is not a public address")),
        None => Ok(()),
    }
}

/// Resolves names for webhook deliveries and keeps only public addresses,
/// failing when none is left: the connection can only go where the check
/// allowed, whatever the name resolves to by then.
pub struct PublicOnly;

impl Resolve for PublicOnly {
    fn resolve(&self, name: Name) -> Resolving {
        Box::pin(async move {
            let host = name.as_str().to_owned();
            let resolved: Vec<SocketAddr> = tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            let public: Vec<SocketAddr> = resolved.into_iter().filter(|address| is_public(address.ip())).collect();
            if public.is_empty() {
                return Err(format!("{host} resolves to no public address").into());
            }
            let addresses: Addrs = Box::new(public.into_iter());
            Ok(addresses)
        })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn inward_addresses_in_every_form_are_not_public() {
        for text in [
            "127.0.0.1",
            "127.255.0.9",
            "0.0.0.0",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "192.0.0.170",
            "198.18.0.1",
            "224.0.0.1",
            "255.255.255.255",
            "::1",
            "::",
            "fd00:ec2::254",
            "fe80::1",
            "::ffff:127.0.0.1",
            "::ffff:10.0.0.1",
            "::127.0.0.1",
            "64:ff9b::a9fe:a9fe",
            "2001:db8::1",
            "ff02::1",
        ] {
            assert!(!is_public(text.parse().unwrap()), "{text}");
        }
        for text in ["93.184.216.34", "8.8.8.8", "2606:4700:4700::1111", "64:ff9b::808:808"] {
            assert!(is_public(text.parse().unwrap()), "{text}");
        }
    }

    #[tokio::test]
    async fn urls_naming_inward_hosts_are_refused_however_they_are_written() {
        for url in [
            "http://127.0.0.1:9055/hook",
            "http://localhost:8080/",
            "http://0x7f000001/",
            "http://2130706433/",
            "http://0177.0.0.1/",
            "http://[::1]:50051/",
            "http://[::ffff:7f00:1]/",
            "https://169.254.169.254/latest/meta-data/",
            "https://[fd00:ec2::254]/",
        ] {
            let parsed = reqwest::Url::parse(url).unwrap();
            assert!(check(&parsed).await.is_err(), "{url}");
        }
        assert!(check(&reqwest::Url::parse("https://93.184.216.34/hook").unwrap()).await.is_ok());
    }

    #[tokio::test]
    async fn deliveries_cannot_resolve_a_name_to_an_inward_address() {
        let refused = PublicOnly.resolve("localhost".parse().unwrap()).await;
        assert!(refused.is_err());
    }
}
