//! Where a JWKS fetch may connect. A rule's `jwks_url` is the tenant's to choose, so by
//! default a fetch reaches public unicast addresses only: otherwise any tenant could make the
//! gateway open connections into the operator's own network (loopback services, private
//! subnets, cloud metadata at 169.254.169.254). The operator can allow private addresses (an
//! identity provider on their network), and `--jwks-allow-http-loopback` allows loopback
//! (tests).
//!
//! Names are resolved here ([`Resolver`], the fetch client's resolver) and their addresses
//! filtered, so the check holds for the addresses actually dialled (no re-resolution between
//! check and connect). IP literals are never resolved: [`check_literal`] checks them before
//! the request.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use url::{Host, Url};

/// Which non-public addresses a fetch may reach.
#[derive(Clone, Copy, Debug, Default)]
pub(super) struct Allowed {
    pub loopback: bool,
    pub private: bool,
}

/// The fetch was refused before connecting: its host has no address it may reach.
#[derive(Debug, thiserror::Error)]
#[error("the JWKS host has no public address (private, loopback and reserved ones are not fetched from)")]
pub(super) struct NotPermitted;

impl Allowed {
    pub(super) fn permits(self, ip: IpAddr) -> bool {
        match class(ip) {
            Class::Public => true,
            Class::Loopback => self.loopback || self.private,
            Class::Private => self.private,
            Class::Never => false,
        }
    }
}

/// Refuses a URL whose host is an IP literal this fetch may not reach.
pub(super) fn check_literal(url: &Url, allowed: Allowed) -> Result<(), NotPermitted> {
    let ip = match url.host() {
        Some(Host::Ipv4(ip)) => IpAddr::V4(ip),
        Some(Host::Ipv6(ip)) => IpAddr::V6(ip),
        _ => return Ok(()),
    };
    if allowed.permits(ip) {
        Ok(())
    } else {
        Err(NotPermitted)
    }
}

/// The system resolver, keeping only the addresses [`Allowed`] permits.
pub(super) struct Resolver {
    pub allowed: Allowed,
}

impl reqwest::dns::Resolve for Resolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let allowed = self.allowed;
        Box::pin(async move {
            let resolved = tokio::net::lookup_host((name.as_str(), 0)).await?;
            let permitted: Vec<SocketAddr> =
                resolved.filter(|addr| allowed.permits(addr.ip())).collect();
            if permitted.is_empty() {
                return Err(Box::new(NotPermitted) as Box<dyn std::error::Error + Send + Sync>);
            }
            let addrs: reqwest::dns::Addrs = Box::new(permitted.into_iter());
            Ok(addrs)
        })
    }
}

#[derive(Debug, PartialEq, Eq)]
enum Class {
    Public,
    Loopback,
    /// Private, shared (CGNAT), link-local, unique-local and other non-global unicast.
    Private,
    /// Unspecified, multicast, broadcast, reserved: never a key server.
    Never,
}

fn class(ip: IpAddr) -> Class {
    match ip {
        IpAddr::V4(v4) => class_v4(v4),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => class_v4(v4),
            None => class_v6(v6),
        },
    }
}

fn class_v4(ip: Ipv4Addr) -> Class {
    let [a, b, c, _] = ip.octets();
    if ip.is_loopback() {
        Class::Loopback
    } else if a == 0 || a >= 224 {
        // 0.0.0.0/8, multicast, 240.0.0.0/4 and broadcast
        Class::Never
    } else if ip.is_private()
        || ip.is_link_local()
        || (a == 100 && (64..128).contains(&b)) // shared address space (CGNAT)
        || (a == 192 && b == 0 && c == 0) // IETF protocol assignments
        || (a == 198 && (b == 18 || b == 19)) // benchmarking
        || ip.is_documentation()
    {
        Class::Private
    } else {
        Class::Public
    }
}

fn class_v6(ip: Ipv6Addr) -> Class {
    let segments = ip.segments();
    let embedded = |high: u16, low: u16| {
        let [h1, h2] = high.to_be_bytes();
        let [l1, l2] = low.to_be_bytes();
        class_v4(Ipv4Addr::new(h1, h2, l1, l2))
    };
    match segments {
        _ if ip.is_loopback() => Class::Loopback,
        _ if ip.is_unspecified() || ip.is_multicast() => Class::Never,
        // NAT64 (64:ff9b::/96) and 6to4 (2002::/16) reach the IPv4 address they carry.
        [0x64, 0xff9b, 0, 0, 0, 0, high, low] => embedded(high, low),
        [0x2002, high, low, ..] => embedded(high, low),
        // IPv4-compatible (::a.b.c.d, deprecated) and Teredo (2001::/32): never dialled.
        [0, 0, 0, 0, 0, 0, _, _] | [0x2001, 0, ..] => Class::Never,
        [first, ..] if (first & 0xfe00) == 0xfc00 => Class::Private, // unique local
        [first, ..] if (first & 0xffc0) == 0xfe80 => Class::Private, // link-local
        [first, ..] if (first & 0xffc0) == 0xfec0 => Class::Private, // site-local
        [0x2001, 0xdb8, ..] => Class::Private,                       // documentation
        _ => Class::Public,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_are_classified() {
        let cases = [
            ("8.8.8.8", Class::Public),
            ("1.1.1.1", Class::Public),
            ("127.0.0.1", Class::Loopback),
            ("127.8.9.10", Class::Loopback),
            ("10.1.2.3", Class::Private),
            ("172.16.0.1", Class::Private),
            ("172.31.255.255", Class::Private),
            ("172.32.0.1", Class::Public),
            ("192.168.1.1", Class::Private),
            ("169.254.169.254", Class::Private),
            ("100.64.0.1", Class::Private),
            ("100.128.0.1", Class::Public),
            ("192.0.0.8", Class::Private),
            ("198.18.0.1", Class::Private),
            ("192.0.2.1", Class::Private),
            ("0.0.0.0", Class::Never),
            ("0.1.2.3", Class::Never),
            ("224.0.0.1", Class::Never),
            ("255.255.255.255", Class::Never),
            ("240.0.0.1", Class::Never),
            ("2606:4700:4700::1111", Class::Public),
            ("::1", Class::Loopback),
            ("::", Class::Never),
            ("::ffff:127.0.0.1", Class::Loopback),
            ("::ffff:10.0.0.1", Class::Private),
            ("::ffff:8.8.8.8", Class::Public),
            ("::127.0.0.1", Class::Never),
            ("64:ff9b::a9fe:a9fe", Class::Private),
            ("64:ff9b::808:808", Class::Public),
            ("2002:7f00:1::", Class::Loopback),
            ("2002:0808:0808::", Class::Public),
            ("2001::1", Class::Never),
            ("fd00::1", Class::Private),
            ("fc12::1", Class::Private),
            ("fe80::1", Class::Private),
            ("fec0::1", Class::Private),
            ("2001:db8::1", Class::Private),
            ("ff02::1", Class::Never),
        ];
        for (text, expected) in cases {
            let ip: IpAddr = text.parse().expect("an address");
            assert_eq!(class(ip), expected, "{text}");
        }
    }

    #[test]
    fn what_each_setting_allows() {
        let ip = |text: &str| text.parse::<IpAddr>().expect("an address");
        let none = Allowed::default();
        let loopback = Allowed {
            loopback: true,
            private: false,
        };
        let private = Allowed {
            loopback: false,
            private: true,
        };
        assert!(none.permits(ip("8.8.8.8")));
        assert!(!none.permits(ip("127.0.0.1")) && !none.permits(ip("10.0.0.1")));
        assert!(loopback.permits(ip("127.0.0.1")) && loopback.permits(ip("::1")));
        assert!(!loopback.permits(ip("10.0.0.1")) && !loopback.permits(ip("169.254.169.254")));
        assert!(private.permits(ip("10.0.0.1")) && private.permits(ip("127.0.0.1")));
        assert!(!private.permits(ip("0.0.0.0")) && !private.permits(ip("224.0.0.1")));
        let url = |text: &str| Url::parse(text).expect("a URL");
        assert!(check_literal(&url("https://10.0.0.1/jwks"), none).is_err());
        assert!(check_literal(&url("https://[::1]:8443/jwks"), none).is_err());
        assert!(check_literal(&url("https://[::1]:8443/jwks"), loopback).is_ok());
        assert!(check_literal(&url("https://8.8.8.8/jwks"), none).is_ok());
        assert!(check_literal(&url("https://idp.example/jwks"), none).is_ok());
    }
}
