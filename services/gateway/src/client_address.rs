//! Who is calling: the one client address the gateway believes, used for its rate limits and
//! passed on to the services as `x-forwarded-for` (passwords throttles logins by it).
//!
//! The socket's peer is the client, unless the peer is one of `TRUSTED_PROXIES` (a load
//! balancer or reverse proxy in front of the gateway). Only then is `X-Forwarded-For` believed,
//! and read from the right: each proxy appends the address it saw, so the right-most entry that
//! is not itself a trusted proxy is the client. Entries left of it were written by the client
//! and prove nothing.
//!
//! Forwarded headers from an untrusted peer on a private network are logged once, as a warning:
//! they mean a proxy in front of the gateway that `TRUSTED_PROXIES` does not name, so every
//! client behind it shares the proxy's address (and its rate limits).

use std::net::{IpAddr, SocketAddr};
use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::extract::{ConnectInfo, Request};
use axum::http::HeaderMap;
use ipnet::IpNet;

/// The resolved client address, put in each request's extensions by [`resolve`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientAddress(pub IpAddr);

/// The networks whose `X-Forwarded-For` is believed (`TRUSTED_PROXIES`); none by default.
#[derive(Debug, Clone, Default)]
pub struct TrustedProxies {
    /// The trusted networks.
    networks: Arc<Vec<IpNet>>,
    /// Whether the missing-proxy warning was logged: it is logged once per process.
    warned: Arc<AtomicBool>,
}

impl TrustedProxies {
    /// Parse a comma-separated list of networks (`10.0.0.0/8`) or single addresses
    /// (`192.0.2.7`, `::1`); an empty list trusts no one.
    pub fn parse(text: &str) -> Result<Self, String> {
        let networks = text
            .split(',')
            .map(str::trim)
            .filter(|entry| !entry.is_empty())
            .map(|entry| {
                IpNet::from_str(entry)
                    .or_else(|_| IpAddr::from_str(entry).map(IpNet::from))
                    .map(|network| network.trunc())
                    .map_err(|_| format!("'{entry}' is not an address or a network such as 10.0.0.0/8"))
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self {
            networks: Arc::new(networks),
            warned: Arc::default(),
        })
    }

    fn contains(&self, address: IpAddr) -> bool {
        self.networks.iter().any(|network| network.contains(&address))
    }

    /// The client behind a connection from `peer` that carries `headers`.
    pub fn client(&self, peer: IpAddr, headers: &HeaderMap) -> IpAddr {
        let mut client = peer.to_canonical();
        if !self.contains(client) {
            self.warn_if_behind_an_unnamed_proxy(client, headers);
            return client;
        }
        // Every X-Forwarded-For line, in order, as one list read from the right.
        let forwarded: Vec<&str> = headers
            .get_all("x-forwarded-for")
            .iter()
            .filter_map(|value| value.to_str().ok())
            .flat_map(|value| value.split(','))
            .collect();
        for entry in forwarded.into_iter().rev() {
            // Past an unreadable entry nothing can be established: stay with the last proxy.
            let Some(address) = parse_entry(entry) else {
                break;
            };
            client = address;
            if !self.contains(address) {
                break;
            }
        }
        client
    }

    /// Log, once, that an untrusted peer on a private network forwarded a client's address.
    fn warn_if_behind_an_unnamed_proxy(&self, peer: IpAddr, headers: &HeaderMap) {
        let forwarded = headers.contains_key("x-forwarded-for") || headers.contains_key("forwarded");
        if !forwarded || !is_private(peer) || self.warned.swap(true, Ordering::Relaxed) {
            return;
        }
        tracing::warn!(
            %peer,
            "a request from a private address carries X-Forwarded-For or Forwarded, but \
             TRUSTED_PROXIES does not name it: if a proxy or load balancer is in front of the \
             gateway, set TRUSTED_PROXIES to its network, or every client shares its address \
             (logged once)"
        );
    }
}

/// Whether `address` is on a loopback, private, shared (carrier-grade NAT) or link-local
/// network, where proxies in front of the gateway live.
fn is_private(address: IpAddr) -> bool {
    match address {
        IpAddr::V4(v4) => {
            let shared = IpNet::from_str("100.64.0.0/10").is_ok_and(|net| net.contains(&address));
            v4.is_loopback() || v4.is_private() || v4.is_link_local() || shared
        }
        IpAddr::V6(v6) => {
            let segment = v6.segments()[0];
            // Unique local fc00::/7 and link-local fe80::/10.
            v6.is_loopback() || segment & 0xfe00 == 0xfc00 || segment & 0xffc0 == 0xfe80
        }
    }
}

/// One `X-Forwarded-For` entry: an address, with or without a port (`192.0.2.7:4711`,
/// `[2001:db8::1]:443`).
fn parse_entry(entry: &str) -> Option<IpAddr> {
    let entry = entry.trim();
    IpAddr::from_str(entry)
        .or_else(|_| SocketAddr::from_str(entry).map(|socket| socket.ip()))
        .ok()
        .map(|address| address.to_canonical())
}

/// Resolve the client once and put it in the request's extensions as [`ClientAddress`], for
/// the rate limits and the proxy.
pub fn resolve(trusted: &TrustedProxies, mut request: Request) -> Request {
    let peer = request
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|info| info.0.ip());
    if let Some(peer) = peer {
        let client = trusted.client(peer, request.headers());
        request.extensions_mut().insert(ClientAddress(client));
    }
    request
}

#[cfg(test)]
mod tests {
    use axum::http::HeaderValue;

    use super::*;

    fn forwarded(lines: &[&str]) -> HeaderMap {
        let mut headers = HeaderMap::new();
        for line in lines {
            headers.append(
                "x-forwarded-for",
                HeaderValue::from_str(line).expect("a header value"),
            );
        }
        headers
    }

    fn ip(text: &str) -> IpAddr {
        text.parse().expect("an address")
    }

    #[test]
    fn an_untrusted_peer_is_the_client_whatever_it_forwards() {
        let trusted = TrustedProxies::parse("").expect("an empty list");
        let headers = forwarded(&["203.0.113.9"]);
        assert_eq!(trusted.client(ip("198.51.100.1"), &headers), ip("198.51.100.1"));
    }

    #[test]
    fn behind_trusted_proxies_the_right_most_untrusted_entry_is_the_client() {
        let trusted = TrustedProxies::parse("10.0.0.0/8, 192.0.2.1").expect("a list");
        // The client wrote the first entry itself; the proxies appended the rest.
        let headers = forwarded(&["1.1.1.1, 203.0.113.9", "10.1.2.3"]);
        assert_eq!(trusted.client(ip("192.0.2.1"), &headers), ip("203.0.113.9"));
    }

    #[test]
    fn entries_with_ports_and_mapped_addresses_are_read() {
        let trusted = TrustedProxies::parse("::1").expect("a list");
        let v4 = forwarded(&["203.0.113.9:4711"]);
        assert_eq!(trusted.client(ip("::1"), &v4), ip("203.0.113.9"));
        let v6 = forwarded(&["[2001:db8::7]:443"]);
        assert_eq!(trusted.client(ip("::1"), &v6), ip("2001:db8::7"));
        let mapped = forwarded(&["::ffff:203.0.113.9"]);
        assert_eq!(trusted.client(ip("::1"), &mapped), ip("203.0.113.9"));
    }

    #[test]
    fn a_trusted_peer_without_forwarded_for_is_the_client() {
        let trusted = TrustedProxies::parse("127.0.0.0/8").expect("a list");
        assert_eq!(
            trusted.client(ip("127.0.0.1"), &HeaderMap::new()),
            ip("127.0.0.1")
        );
    }

    #[test]
    fn an_unreadable_entry_stops_the_walk_at_the_last_proxy() {
        let trusted = TrustedProxies::parse("10.0.0.0/8").expect("a list");
        let headers = forwarded(&["203.0.113.9, garbage, 10.0.0.2"]);
        assert_eq!(trusted.client(ip("10.0.0.1"), &headers), ip("10.0.0.2"));
    }

    #[test]
    fn only_loopback_private_shared_and_link_local_addresses_are_private() {
        for private in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "100.64.0.1",
            "169.254.1.1",
            "::1",
            "fd00::1",
            "fe80::1",
        ] {
            assert!(is_private(ip(private)), "{private}");
        }
        for public in ["203.0.113.9", "100.128.0.1", "8.8.8.8", "2001:db8::1"] {
            assert!(!is_private(ip(public)), "{public}");
        }
    }

    #[test]
    fn a_bad_network_is_refused_by_name() {
        let error = TrustedProxies::parse("10.0.0.0/8, localhost").expect_err("refused");
        assert!(error.contains("'localhost'"), "{error}");
        assert!(TrustedProxies::parse("10.0.0.0/33").is_err());
    }
}
