//! The one egress policy for requests the gateway makes to tenant-supplied URLs (webhook
//! deliveries, a session's `webhook_url`, `media_url` fetches): they must not become probes
//! of the network it runs in.
//!
//! - [`check_url`] at the API: http(s), no credentials, a host; `localhost` names and
//!   literal internal addresses refused.
//! - [`GuardedResolver`] at connect time: the client's own DNS resolver refuses a name with
//!   any internal address. The addresses it checked are the ones the client connects to, so
//!   DNS rebinding (public at the check, internal at the connect) has no second lookup to win.
//! - [`check_literal`] before a request to a literal IP, which no resolver sees.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;

/// Whether an IPv4 address is loopback, private, shared, link-local, reserved, multicast,
/// documentation or benchmarking space: anything that is not a host on the internet.
fn is_internal_v4(v4: Ipv4Addr) -> bool {
    let o = v4.octets();
    v4.is_loopback()
        || v4.is_private()
        || v4.is_link_local()
        || v4.is_unspecified()
        || v4.is_multicast()
        || o[0] == 0
        // 100.64.0.0/10, carrier-grade NAT.
        || (o[0] == 100 && (o[1] & 0xc0) == 64)
        // 192.0.0.0/24 (IETF protocol assignments) and 192.0.2.0/24 (documentation).
        || (o[0] == 192 && o[1] == 0 && (o[2] == 0 || o[2] == 2))
        // 198.18.0.0/15, benchmarking.
        || (o[0] == 198 && (o[1] & 0xfe) == 18)
        // 198.51.100.0/24 and 203.0.113.0/24, documentation.
        || (o[0] == 198 && o[1] == 51 && o[2] == 100)
        || (o[0] == 203 && o[1] == 0 && o[2] == 113)
        // 240.0.0.0/4, reserved, with the broadcast address.
        || o[0] >= 240
}

/// The IPv4 address an IPv6 address stands for, where it embeds one: mapped (`::ffff:0:0/96`),
/// NAT64 (`64:ff9b::/96`) and 6to4 (`2002::/16`).
fn embedded_v4(v6: Ipv6Addr) -> Option<Ipv4Addr> {
    if let Some(v4) = v6.to_ipv4_mapped() {
        return Some(v4);
    }
    let s = v6.segments();
    let from = |hi: u16, lo: u16| Ipv4Addr::from((u32::from(hi) << 16) | u32::from(lo));
    if s[0] == 0x64 && s[1] == 0xff9b && s[2..6] == [0, 0, 0, 0] {
        return Some(from(s[6], s[7]));
    }
    if s[0] == 0x2002 {
        return Some(from(s[1], s[2]));
    }
    None
}

/// Whether an address is loopback, private, link-local or otherwise not on the internet.
pub fn is_private(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => is_internal_v4(v4),
        IpAddr::V6(v6) => {
            if let Some(v4) = embedded_v4(v6) {
                return is_internal_v4(v4);
            }
            let s = v6.segments();
            v6.is_loopback()
                || v6.is_unspecified()
                || v6.is_multicast()
                // ::/96, IPv4-compatible (deprecated; reaches IPv4 hosts on some stacks).
                || s[..6] == [0, 0, 0, 0, 0, 0]
                // fc00::/7 unique local, fe80::/10 link-local, fec0::/10 site-local.
                || (s[0] & 0xfe00) == 0xfc00
                || (s[0] & 0xffc0) == 0xfe80
                || (s[0] & 0xffc0) == 0xfec0
                // 100::/64, discard.
                || (s[0] == 0x100 && s[1..4] == [0, 0, 0])
                // 2001::/23 (IETF special purpose, Teredo) and 2001:db8::/32 (documentation).
                || (s[0] == 0x2001 && s[1] < 0x200)
                || (s[0] == 0x2001 && s[1] == 0xdb8)
        }
    }
}

/// Whether a URL's host is internal without any lookup: a `localhost` name or a literal
/// internal address.
fn is_internal_host(host: &str) -> bool {
    is_local_name(host) || literal_ip(host).is_some_and(is_private)
}

/// Whether a host name stands for this machine whatever DNS says (`localhost`, with or
/// without the root's trailing dot, and its subdomains).
fn is_local_name(host: &str) -> bool {
    let name = host.trim_end_matches('.').to_ascii_lowercase();
    name == "localhost" || name.ends_with(".localhost")
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

/// A URL a tenant gives us to call, as the API accepts it: http(s), at most 2048
/// characters, a host and no credentials; with `allow_private` off, no `localhost` name and no
/// literal internal address. The message says what is wrong, for the field's error.
pub fn check_url(raw: &str, allow_private: bool) -> Result<reqwest::Url, &'static str> {
    let raw = raw.trim();
    if raw.len() > 2048 {
        return Err("must be an http(s) URL of at most 2048 characters");
    }
    let url = reqwest::Url::parse(raw).map_err(|_| "must be an absolute http(s) URL")?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err("must be an http(s) URL of at most 2048 characters");
    }
    let host = url.host_str().ok_or("must name a host")?;
    if !url.username().is_empty() || url.password().is_some() {
        return Err("must not carry credentials");
    }
    if !allow_private && is_internal_host(host) {
        return Err("loopback and private addresses are refused");
    }
    Ok(url)
}

fn literal_ip(host: &str) -> Option<IpAddr> {
    host.trim_start_matches('[')
        .trim_end_matches(']')
        .parse()
        .ok()
}

/// Refuses a URL whose host is a `localhost` name or a literal internal address: the
/// resolver never sees those. Names are left to [`GuardedResolver`].
pub fn check_literal(url: &reqwest::Url) -> Result<(), EgressError> {
    let host = url
        .host_str()
        .ok_or_else(|| EgressError::Unresolvable("the URL has no host".into()))?;
    if is_internal_host(host) {
        return Err(EgressError::Private(host.to_owned()));
    }
    Ok(())
}

/// A DNS resolver for reqwest that refuses a name when any of its addresses is internal.
/// The client connects to exactly the addresses this lookup returned.
#[derive(Debug, Default, Clone, Copy)]
pub struct GuardedResolver;

impl reqwest::dns::Resolve for GuardedResolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let host = name.as_str().to_owned();
        Box::pin(async move {
            let addrs: Vec<SocketAddr> = tokio::net::lookup_host((host.as_str(), 0))
                .await
                .map_err(|e| EgressError::Unresolvable(format!("resolving {host}: {e}")))?
                .collect();
            if addrs.is_empty() {
                return Err(EgressError::Unresolvable(format!("{host} has no address")).into());
            }
            if is_local_name(&host) || addrs.iter().any(|a| is_private(a.ip())) {
                return Err(EgressError::Private(host).into());
            }
            let addrs: reqwest::dns::Addrs = Box::new(addrs.into_iter());
            Ok(addrs)
        })
    }
}

/// A client builder held to the egress policy: redirects are not followed (each hop must be
/// checked by the caller) and, unless `allow_private`, names resolve through
/// [`GuardedResolver`].
pub fn client_builder(allow_private: bool) -> reqwest::ClientBuilder {
    let builder = reqwest::Client::builder().redirect(reqwest::redirect::Policy::none());
    if allow_private {
        builder
    } else {
        builder.dns_resolver(Arc::new(GuardedResolver))
    }
}

/// The egress refusal inside a reqwest error, if that is why the request failed.
pub fn refusal(e: &reqwest::Error) -> Option<&EgressError> {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = source {
        if let Some(egress) = err.downcast_ref::<EgressError>() {
            return Some(egress);
        }
        source = err.source();
    }
    None
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
            "198.18.0.1",
            "198.19.255.255",
            "240.0.0.1",
            "255.255.255.255",
            "224.0.0.1",
            "192.0.2.1",
            "::1",
            "fd00::1",
            "fe80::1",
            "::ffff:127.0.0.1",
            "::127.0.0.1",
            "::a00:1",
            "64:ff9b::7f00:1",
            "64:ff9b::a9fe:a9fe",
            "2002:7f00:1::",
            "2002:c0a8:101::1",
            "ff02::1",
            "2001:db8::1",
            "2001::1",
        ] {
            assert!(is_private(ip.parse().unwrap()), "{ip}");
        }
        for ip in [
            "8.8.8.8",
            "1.1.1.1",
            "198.20.0.1",
            "2606:4700::1111",
            "64:ff9b::808:808",
            "2002:808:808::1",
            "2001:4860:4860::8888",
        ] {
            assert!(!is_private(ip.parse().unwrap()), "{ip}");
        }
    }

    #[test]
    fn urls_are_checked_before_any_lookup() {
        for refused in [
            "http://localhost/x",
            "http://localhost./x",
            "http://LOCALHOST/x",
            "http://api.localhost/x",
            "http://127.0.0.1/x",
            "http://[::1]/x",
            "http://[64:ff9b::7f00:1]/x",
            "http://198.18.0.1/x",
            "http://0x7f000001/x",
            "http://2130706433/x",
        ] {
            assert!(check_url(refused, false).is_err(), "{refused}");
            assert!(
                check_url(refused, true).is_ok(),
                "{refused} with private allowed"
            );
        }
        assert!(check_url("https://example.com/hook", false).is_ok());
        assert!(check_url("ftp://example.com/", false).is_err());
        assert!(check_url("https://user:pw@example.com/", false).is_err());
        assert!(check_url(&format!("https://e.com/{}", "a".repeat(2048)), false).is_err());
    }

    #[tokio::test]
    async fn the_resolver_refuses_names_of_internal_addresses() {
        use reqwest::dns::Resolve;
        let name = |n: &str| n.parse::<reqwest::dns::Name>().unwrap();
        let Err(err) = GuardedResolver.resolve(name("localhost")).await else {
            panic!("localhost resolved");
        };
        assert!(err.to_string().contains("private"), "{err}");
    }
}
