//! Which address a REST request comes from. Behind a reverse proxy every
//! request's socket peer is the proxy, and the client's address is in
//! `X-Forwarded-For` — a header any client can also send. So the header is
//! honoured only when the socket peer is a trusted proxy
//! (`trusted_proxies`), and then read from the right: each proxy appends
//! the address it received the request from, so the rightmost address
//! that is not itself a trusted proxy is the client; whatever lies to its
//! left is the client's own say. That address is what throttling, the
//! audit log and last logins see.

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::str::FromStr;

use hyper::header::HeaderMap;
use serde::{Deserialize, Deserializer};

/// An IP network: `10.0.0.0/8`, `2001:db8::/32`, or one address
/// (`127.0.0.1`: a /32, or a /128 for IPv6).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Network {
    addr: IpAddr,
    prefix: u8,
}

impl Network {
    /// Whether `ip` is in the network (IPv4-mapped IPv6 addresses count
    /// as the IPv4 address).
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.addr, ip.to_canonical()) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix))
                    .unwrap_or(0);
                u32::from(net) & mask == u32::from(ip) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix))
                    .unwrap_or(0);
                u128::from(net) & mask == u128::from(ip) & mask
            }
            _ => false,
        }
    }
}

impl FromStr for Network {
    type Err = String;

    fn from_str(text: &str) -> Result<Network, String> {
        let bad = || format!("{text:?} is not an IP address or network (like 10.0.0.0/8)");
        let (addr, prefix) = match text.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (text, None),
        };
        let addr = addr.parse::<IpAddr>().map_err(|_| bad())?.to_canonical();
        let max = match addr {
            IpAddr::V4(_) => 32,
            IpAddr::V6(_) => 128,
        };
        let prefix = match prefix {
            None => max,
            Some(p) => p.parse::<u8>().ok().filter(|p| *p <= max).ok_or_else(bad)?,
        };
        Ok(Network { addr, prefix })
    }
}

impl fmt::Display for Network {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

impl<'de> Deserialize<'de> for Network {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Network, D::Error> {
        let text = String::deserialize(d)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

/// One `X-Forwarded-For` entry's address: `1.2.3.4`, `2001:db8::1`, or
/// with a port (`1.2.3.4:5`, `[2001:db8::1]:5`); `None` for anything else
/// (`unknown`, an obfuscated identifier, junk).
fn hop(text: &str) -> Option<IpAddr> {
    let text = text.trim();
    text.parse::<IpAddr>()
        .ok()
        .or_else(|| text.parse::<SocketAddr>().ok().map(|s| s.ip()))
        .or_else(|| {
            text.strip_prefix('[')
                .and_then(|t| t.strip_suffix(']'))
                .and_then(|t| t.parse().ok())
        })
}

/// The client of a request whose socket peer is `peer`: `peer` itself,
/// unless it is a trusted proxy; then the rightmost `X-Forwarded-For`
/// address that is not a trusted proxy (the leftmost, if all are; the
/// nearest readable one, if an entry cannot be read). A forwarded client's
/// port is unknown: 0.
pub(crate) fn client_address(
    peer: SocketAddr,
    headers: &HeaderMap,
    trusted: &[Network],
) -> SocketAddr {
    let is_trusted = |ip: IpAddr| trusted.iter().any(|n| n.contains(ip));
    if !is_trusted(peer.ip()) {
        return peer;
    }
    // Several headers are one list, in order (RFC 9110, 5.3).
    let hops: Vec<Option<&str>> = headers
        .get_all("x-forwarded-for")
        .iter()
        .flat_map(|v| match v.to_str() {
            Ok(list) => list.split(',').map(Some).collect::<Vec<_>>(),
            Err(_) => vec![None],
        })
        .collect();
    let mut client = None;
    for h in hops.iter().rev() {
        // What a trusted proxy could not have written ends the walk.
        let Some(ip) = h.and_then(hop) else { break };
        client = Some(ip);
        if !is_trusted(ip) {
            break;
        }
    }
    match client {
        Some(ip) => SocketAddr::new(ip.to_canonical(), 0),
        None => peer,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hyper::header::HeaderValue;

    fn nets(list: &[&str]) -> Vec<Network> {
        list.iter().map(|n| n.parse().expect("network")).collect()
    }

    fn client(peer: &str, xff: &[&str], trusted: &[&str]) -> String {
        let mut h = HeaderMap::new();
        for v in xff {
            h.append("x-forwarded-for", HeaderValue::from_str(v).expect("value"));
        }
        let peer: SocketAddr = peer.parse().expect("peer");
        client_address(peer, &h, &nets(trusted)).to_string()
    }

    #[test]
    fn networks_parse_and_match() {
        let n: Network = "10.0.0.0/8".parse().expect("net");
        assert!(n.contains("10.200.3.4".parse().expect("ip")));
        assert!(n.contains("::ffff:10.1.1.1".parse().expect("ip")));
        assert!(!n.contains("11.0.0.1".parse().expect("ip")));
        assert!(!n.contains("2001:db8::1".parse().expect("ip")));
        let one: Network = "127.0.0.1".parse().expect("one");
        assert!(one.contains("127.0.0.1".parse().expect("ip")));
        assert!(!one.contains("127.0.0.2".parse().expect("ip")));
        let v6: Network = "2001:db8::/32".parse().expect("v6");
        assert!(v6.contains("2001:db8:ffff::1".parse().expect("ip")));
        assert!(!v6.contains("2001:db9::1".parse().expect("ip")));
        let all: Network = "0.0.0.0/0".parse().expect("all");
        assert!(all.contains("192.0.2.1".parse().expect("ip")));
        for bad in [
            "10.0.0.0/33",
            "::/129",
            "junk",
            "10.0.0.0/",
            "10.0.0.0/x",
            "",
        ] {
            assert!(bad.parse::<Network>().is_err(), "{bad}");
        }
        assert_eq!(n.to_string(), "10.0.0.0/8");
    }

    #[test]
    fn forwarded_for_is_read_only_from_trusted_peers_from_the_right() {
        let t = ["127.0.0.1", "10.0.0.0/8"];
        // An untrusted peer's header is ignored.
        assert_eq!(
            client("192.0.2.1:5000", &["203.0.113.7"], &t),
            "192.0.2.1:5000"
        );
        assert_eq!(
            client("127.0.0.1:5000", &["203.0.113.7"], &[]),
            "127.0.0.1:5000"
        );
        // A trusted one's is used: the rightmost untrusted address.
        assert_eq!(
            client("127.0.0.1:5000", &["203.0.113.7"], &t),
            "203.0.113.7:0"
        );
        assert_eq!(
            client(
                "127.0.0.1:5000",
                &["198.51.100.1, 203.0.113.9, 10.1.2.3"],
                &t
            ),
            "203.0.113.9:0"
        );
        // Several headers are one list.
        assert_eq!(
            client(
                "127.0.0.1:5000",
                &["198.51.100.1", "203.0.113.9,10.1.2.3"],
                &t
            ),
            "203.0.113.9:0"
        );
        // Ports and IPv6.
        assert_eq!(
            client("127.0.0.1:5000", &["[2001:db8::5]:443"], &t),
            "[2001:db8::5]:0"
        );
        assert_eq!(
            client("127.0.0.1:5000", &["203.0.113.7:80"], &t),
            "203.0.113.7:0"
        );
        // Only proxies: the farthest one.
        assert_eq!(
            client("127.0.0.1:5000", &["10.0.0.2, 10.0.0.1"], &t),
            "10.0.0.2:0"
        );
        // No header, or nothing readable at the right: the peer.
        assert_eq!(client("127.0.0.1:5000", &[], &t), "127.0.0.1:5000");
        assert_eq!(client("127.0.0.1:5000", &["unknown"], &t), "127.0.0.1:5000");
        // Junk behind a trusted hop: the nearest readable hop.
        assert_eq!(
            client("127.0.0.1:5000", &["junk, 10.0.0.9"], &t),
            "10.0.0.9:0"
        );
        // Whatever the client wrote left of its own address is ignored.
        assert_eq!(
            client("127.0.0.1:5000", &["10.0.0.1, 203.0.113.9"], &t),
            "203.0.113.9:0"
        );
    }
}
