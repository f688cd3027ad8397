//! Which address a listener is reached at from other hosts.
//!
//! A server (or the HTTP broker's subscriber listener) bound to all
//! interfaces (`0.0.0.0:PORT`, `[::]:PORT`) cannot register that address:
//! nobody can dial it. As go-micro's `addr.Extract` does, it registers an
//! address of one of this host's interfaces instead: the first private IPv4
//! address, else a public one, else an IPv6 one (not link-local), and the
//! loopback address only when the host has nothing else. A listener bound
//! to a specific address registers that address; `--server-advertise`
//! overrides both.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

/// Where a server or the HTTP broker listens when no address is given,
/// by the registry in use. With `mdns`, discovery is the local network's:
/// a node it announces must be reachable from there, so it binds all
/// interfaces (and registers this host's address, as above). Every other
/// registry keeps loopback, a free port: `local` and `memory` are this
/// machine's alone, and with etcd or a plugin registry the operator says
/// which interface to expose (`--server-address 0.0.0.0:0` for all).
pub fn default_listen(registry: &str) -> &'static str {
    if registry == "mdns" {
        "0.0.0.0:0"
    } else {
        "127.0.0.1:0"
    }
}

/// The address to register for a listener bound to `bound` (`host:port`).
pub fn advertised(bound: &str) -> String {
    let Ok(sa) = bound.parse::<SocketAddr>() else { return bound.to_string() };
    if !sa.ip().is_unspecified() {
        return bound.to_string();
    }
    // An interface list that cannot be read leaves only loopback.
    let ips: Vec<IpAddr> =
        if_addrs::get_if_addrs().map(|l| l.into_iter().map(|i| i.ip()).collect()).unwrap_or_default();
    SocketAddr::new(pick(&ips, sa.is_ipv6()), sa.port()).to_string()
}

/// go-micro's choice among a host's addresses (see the module docs). A
/// listener bound to `[::]` takes IPv4 first too (it accepts both).
pub fn pick(ips: &[IpAddr], v6_listener: bool) -> IpAddr {
    let v4 = |private: bool| {
        ips.iter().copied().find(|ip| match ip {
            IpAddr::V4(v4) => {
                !v4.is_loopback() && !v4.is_link_local() && !v4.is_unspecified() && is_private(v4) == private
            }
            IpAddr::V6(_) => false,
        })
    };
    let v6 = || {
        ips.iter().copied().find(|ip| match ip {
            // fe80::/10 needs a zone to be dialled: not an address to register.
            IpAddr::V6(v6) => !v6.is_loopback() && !v6.is_unspecified() && (v6.segments()[0] & 0xffc0) != 0xfe80,
            IpAddr::V4(_) => false,
        })
    };
    v4(true).or_else(|| v4(false)).or_else(|| if v6_listener { v6() } else { None }).unwrap_or(if v6_listener {
        IpAddr::V6(Ipv6Addr::LOCALHOST)
    } else {
        IpAddr::V4(Ipv4Addr::LOCALHOST)
    })
}

/// RFC 1918 and RFC 6598 (carrier-grade NAT) blocks, as go-micro's list.
fn is_private(ip: &Ipv4Addr) -> bool {
    let [a, b, ..] = ip.octets();
    ip.is_private() || (a == 100 && (64..128).contains(&b))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ips(list: &[&str]) -> Vec<IpAddr> {
        list.iter().filter_map(|s| s.parse().ok()).collect()
    }

    #[test]
    fn the_first_private_ipv4_then_public_then_ipv6_then_loopback() {
        let host = ips(&["127.0.0.1", "::1", "203.0.113.5", "fe80::1", "10.1.2.3", "192.168.1.9", "2001:db8::7"]);
        assert_eq!(pick(&host, false).to_string(), "10.1.2.3");
        let public_only = ips(&["127.0.0.1", "203.0.113.5", "2001:db8::7"]);
        assert_eq!(pick(&public_only, false).to_string(), "203.0.113.5");
        let cgnat = ips(&["203.0.113.5", "100.64.0.10"]);
        assert_eq!(pick(&cgnat, false).to_string(), "100.64.0.10", "carrier-grade NAT counts as private");
        let v6_only = ips(&["127.0.0.1", "::1", "fe80::1", "2001:db8::7"]);
        assert_eq!(pick(&v6_only, true).to_string(), "2001:db8::7", "a [::] listener takes IPv6");
        assert_eq!(pick(&v6_only, false).to_string(), "127.0.0.1", "a 0.0.0.0 listener cannot take IPv6");
        let nothing = ips(&["127.0.0.1", "::1", "169.254.1.1", "fe80::1"]);
        assert_eq!(pick(&nothing, false).to_string(), "127.0.0.1");
        assert_eq!(pick(&nothing, true).to_string(), "::1");
    }

    #[test]
    fn specific_addresses_are_kept_and_unspecified_ones_replaced() {
        assert_eq!(advertised("127.0.0.1:8080"), "127.0.0.1:8080");
        assert_eq!(advertised("[::1]:8080"), "[::1]:8080");
        assert_eq!(advertised("10.0.0.1:1"), "10.0.0.1:1");
        assert_eq!(advertised("not an address"), "not an address");
        for bound in ["0.0.0.0:9000", "[::]:9000"] {
            let a = advertised(bound);
            let sa: SocketAddr = a.parse().unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], 0)));
            assert!(!sa.ip().is_unspecified(), "{bound} advertised as {a}");
            assert_eq!(sa.port(), 9000);
        }
    }
}
