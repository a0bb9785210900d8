//! The gateway's connection limits (`spec.gateway.limits`) as the accept loop and `/stream` apply them, and
//! who a client is for the per-address cap: the peer, or the `X-Forwarded-For` client a trusted proxy names.

use std::net::IpAddr;
use std::time::Duration;

use cryptoviz_crds::config::GatewayLimits;
use ipnet::IpNet;

/// The limits, read and checked once at start-up.
#[derive(Clone, Debug)]
pub struct Limits {
    /// Concurrent stream clients per client address.
    pub max_per_address: u32,
    /// Peers believed about `X-Forwarded-For`.
    pub trusted_proxies: Vec<IpNet>,
    /// Time to send the whole request head.
    pub header_timeout: Duration,
    /// Time a connection may make no progress (a stream client's socket full, a response not taken).
    pub idle_timeout: Duration,
    /// Largest request head, bytes.
    pub max_head: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits::from_config(&GatewayLimits::default()).expect("the defaults are valid")
    }
}

impl Limits {
    /// From the worker configuration; an entry of `trustedProxies` that is neither a CIDR nor an address is
    /// an error naming it.
    pub fn from_config(c: &GatewayLimits) -> anyhow::Result<Limits> {
        let trusted_proxies = c
            .trusted_proxies
            .iter()
            .map(|s| {
                s.parse::<IpNet>()
                    .or_else(|_| s.parse::<IpAddr>().map(IpNet::from))
                    .map_err(|_| anyhow::anyhow!("gateway.limits.trustedProxies: {s:?} is not a CIDR or an address"))
            })
            .collect::<anyhow::Result<_>>()?;
        Ok(Limits {
            max_per_address: c.max_clients_per_address.max(1),
            trusted_proxies,
            header_timeout: Duration::from_millis(c.header_timeout_ms.max(1)),
            idle_timeout: Duration::from_millis(c.idle_timeout_ms.max(1)),
            max_head: c.max_request_head_bytes as usize,
        })
    }

    fn trusted(&self, ip: IpAddr) -> bool {
        let ip = ip.to_canonical();
        self.trusted_proxies.iter().any(|n| n.contains(&ip))
    }

    /// The client behind a connection from `peer` that sent these `X-Forwarded-For` values (in order): the
    /// peer itself unless it is a trusted proxy; otherwise the rightmost forwarded address that is not a
    /// trusted proxy (what the nearest untrusted hop said; everything left of it is the client's to forge).
    /// An unreadable entry stops the walk at the last trusted hop.
    pub fn client_address<'a>(&self, peer: IpAddr, forwarded_for: impl IntoIterator<Item = &'a str>) -> IpAddr {
        let peer = peer.to_canonical();
        if !self.trusted(peer) {
            return peer;
        }
        let hops: Vec<&str> = forwarded_for.into_iter().flat_map(|v| v.split(',')).map(str::trim).collect();
        let mut client = peer;
        for hop in hops.iter().rev() {
            let Ok(ip) = hop.parse::<IpAddr>() else { break };
            client = ip.to_canonical();
            if !self.trusted(client) {
                break;
            }
        }
        client
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(trusted: &[&str]) -> Limits {
        Limits::from_config(&GatewayLimits {
            trusted_proxies: trusted.iter().map(|s| s.to_string()).collect(),
            ..GatewayLimits::default()
        })
        .unwrap()
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn forwarded_for_is_believed_only_from_trusted_proxies() {
        let l = limits(&["10.0.0.0/8", "192.168.1.7"]);
        let cases: &[(&str, &[&str], &str)] = &[
            // (peer, X-Forwarded-For values, client)
            ("203.0.113.9", &["198.51.100.1"], "203.0.113.9"),
            ("10.1.2.3", &["198.51.100.1"], "198.51.100.1"),
            ("10.1.2.3", &["1.1.1.1, 198.51.100.1, 10.9.9.9"], "198.51.100.1"),
            ("10.1.2.3", &["1.1.1.1", "198.51.100.1"], "198.51.100.1"),
            ("192.168.1.7", &["198.51.100.1"], "198.51.100.1"),
            ("10.1.2.3", &[], "10.1.2.3"),
            ("10.1.2.3", &["garbage"], "10.1.2.3"),
            ("10.1.2.3", &["198.51.100.1, garbage"], "10.1.2.3"),
            ("10.1.2.3", &["10.4.4.4"], "10.4.4.4"),
            ("::ffff:10.1.2.3", &["2001:db8::1"], "2001:db8::1"),
        ];
        for (peer, xff, want) in cases {
            assert_eq!(l.client_address(ip(peer), xff.iter().copied()), ip(want), "{peer} {xff:?}");
        }
        assert_eq!(limits(&[]).client_address(ip("10.1.2.3"), ["198.51.100.1"]), ip("10.1.2.3"));
    }

    #[test]
    fn proxies_that_are_not_addresses_are_refused_by_name() {
        let e = Limits::from_config(&GatewayLimits {
            trusted_proxies: vec!["10.0.0.0/8".into(), "not-a-cidr".into()],
            ..GatewayLimits::default()
        })
        .unwrap_err();
        assert!(e.to_string().contains("\"not-a-cidr\""), "{e}");
        assert_eq!(limits(&["fd00::/8"]).trusted_proxies.len(), 1);
    }
}
