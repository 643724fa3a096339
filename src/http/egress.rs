//! Requests the gateway makes on a tenant's behalf (webhook deliveries, `media_url`
//! fetches) must not become probes of the network it runs in: their targets are resolved
//! and refused when any address is loopback, private, link-local or otherwise internal.

use std::net::{IpAddr, SocketAddr};

/// Whether an address is loopback, private, link-local or otherwise not on the internet.
pub fn is_private(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            let o = v4.octets();
            v4.is_loopback()
                || v4.is_private()
                || v4.is_link_local()
                || v4.is_unspecified()
                || v4.is_broadcast()
                || (o[0] == 100 && (o[1] & 0xc0) == 64)
                || o[0] == 0
        }
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return is_private(IpAddr::V4(v4));
            }
            let first = v6.segments()[0];
            v6.is_loopback()
                || v6.is_unspecified()
                || (first & 0xfe00) == 0xfc00
                || (first & 0xffc0) == 0xfe80
        }
    }
}

/// Why a target was not reached.
#[derive(Debug, thiserror::Error)]
pub enum EgressError {
    /// The host does not resolve (or the URL has none): a fetch failure, not a refusal.
    #[error("{0}")]
    Unresolvable(String),
    #[error("{0} resolves to a private or loopback address")]
    Private(String),
}

/// Resolves a URL's host and refuses it when any address is private. The addresses
/// returned are the ones to connect to (pin them, so a second lookup cannot differ).
pub async fn resolve_public(url: &reqwest::Url) -> Result<Vec<SocketAddr>, EgressError> {
    let host = url
        .host_str()
        .ok_or_else(|| EgressError::Unresolvable("the URL has no host".into()))?;
    let port = url.port_or_known_default().unwrap_or(443);
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let addrs: Vec<SocketAddr> = match host.parse::<IpAddr>() {
        Ok(ip) => vec![SocketAddr::new(ip, port)],
        Err(_) => tokio::net::lookup_host((host, port))
            .await
            .map_err(|e| EgressError::Unresolvable(format!("resolving {host}: {e}")))?
            .collect(),
    };
    if addrs.is_empty() {
        return Err(EgressError::Unresolvable(format!("{host} has no address")));
    }
    if addrs.iter().any(|a| is_private(a.ip())) {
        return Err(EgressError::Private(host.to_owned()));
    }
    Ok(addrs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn internal_addresses_are_private() {
        for ip in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "0.0.0.0",
            "::1",
            "fd00::1",
            "fe80::1",
            "::ffff:127.0.0.1",
        ] {
            assert!(is_private(ip.parse().unwrap()), "{ip}");
        }
        for ip in ["8.8.8.8", "1.1.1.1", "2606:4700::1111"] {
            assert!(!is_private(ip.parse().unwrap()), "{ip}");
        }
    }
}
