//! The client's address: the socket peer, unless that peer is a trusted proxy, in which case
//! `X-Forwarded-For` is walked from the right to the first hop that is not a trusted proxy.
//! No other header (`X-Real-IP`, `Forwarded`) is ever believed.

use std::net::{IpAddr, SocketAddr};

use http::HeaderMap;
use http::header::HeaderName;
use ipnet::IpNet;

static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");

/// A list of networks; empty means "any address" for allow-lists, "none" for trusted proxies,
/// so callers say which with [`IpRules::allows`] or [`IpRules::contains`].
#[derive(Debug, Clone, Default, PartialEq)]
pub struct IpRules(Vec<IpNet>);

impl IpRules {
    pub fn new(nets: Vec<IpNet>) -> Self {
        Self(nets)
    }

    /// Allow-list semantics: an empty list allows every address.
    pub fn allows(&self, ip: IpAddr) -> bool {
        self.0.is_empty() || self.contains(ip)
    }

    /// Membership: an empty list contains nothing.
    pub fn contains(&self, ip: IpAddr) -> bool {
        self.0.iter().any(|net| net.contains(&ip))
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn nets(&self) -> &[IpNet] {
        &self.0
    }
}

/// Parses `203.0.113.0/24`, `2001:db8::/32` or a bare address (a host route). IPv4-mapped IPv6
/// networks are turned into their IPv4 form so they match normalized client addresses.
pub fn parse_ip_or_cidr(s: &str) -> Result<IpNet, String> {
    let net = match s.parse::<IpNet>() {
        Ok(net) => net,
        Err(_) => s
            .parse::<IpAddr>()
            .map(IpNet::from)
            .map_err(|_| format!("{s:?} is not an IP address or CIDR network"))?,
    };
    if net != net.trunc() {
        return Err(format!(
            "{s:?} has host bits set; did you mean {}?",
            net.trunc()
        ));
    }
    Ok(match net {
        IpNet::V6(v6) if v6.prefix_len() >= 96 => match v6.addr().to_ipv4_mapped() {
            Some(v4) => IpNet::new(IpAddr::V4(v4), v6.prefix_len() - 96).unwrap_or(net),
            None => net,
        },
        other => other,
    })
}

/// Resolves the client address of one request.
pub fn resolve(peer: SocketAddr, headers: &HeaderMap, trusted: &IpRules) -> IpAddr {
    let peer = peer.ip().to_canonical();
    if !trusted.contains(peer) {
        return peer;
    }
    let mut nearest = peer;
    // Later headers were appended by nearer hops: walk headers and their entries right to left.
    for value in headers.get_all(&X_FORWARDED_FOR).iter().rev() {
        let Ok(text) = value.to_str() else {
            return nearest;
        };
        for entry in text.rsplit(',') {
            let Some(ip) = parse_hop(entry.trim()) else {
                // A trusted hop wrote something we cannot read: nothing left of it is reliable.
                return nearest;
            };
            if !trusted.contains(ip) {
                return ip;
            }
            nearest = ip;
        }
    }
    nearest
}

fn parse_hop(entry: &str) -> Option<IpAddr> {
    entry
        .parse::<IpAddr>()
        .or_else(|_| entry.parse::<SocketAddr>().map(|sa| sa.ip()))
        .ok()
        .map(|ip| ip.to_canonical())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules(list: &[&str]) -> IpRules {
        IpRules::new(list.iter().map(|s| parse_ip_or_cidr(s).unwrap()).collect())
    }

    fn xff(values: &[&str]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for v in values {
            h.append("x-forwarded-for", v.parse().unwrap());
        }
        h
    }

    fn peer(s: &str) -> SocketAddr {
        SocketAddr::new(s.parse().unwrap(), 4000)
    }

    #[test]
    fn untrusted_peer_is_the_client_whatever_it_claims() {
        let trusted = rules(&["10.0.0.0/8"]);
        let h = xff(&["1.2.3.4"]);
        assert_eq!(
            resolve(peer("203.0.113.9"), &h, &trusted),
            "203.0.113.9".parse::<IpAddr>().unwrap()
        );
        assert_eq!(
            resolve(peer("203.0.113.9"), &h, &IpRules::default()),
            "203.0.113.9".parse::<IpAddr>().unwrap()
        );
    }

    #[test]
    fn trusted_peer_walks_from_the_right_past_trusted_hops() {
        let trusted = rules(&["10.0.0.0/8"]);
        let h = xff(&["6.6.6.6, 198.51.100.7", "10.1.1.1"]);
        assert_eq!(
            resolve(peer("10.0.0.1"), &h, &trusted),
            "198.51.100.7".parse::<IpAddr>().unwrap()
        );
    }

    #[test]
    fn garbage_or_exhausted_chains_stop_at_the_nearest_trusted_hop() {
        let trusted = rules(&["10.0.0.0/8"]);
        assert_eq!(
            resolve(peer("10.0.0.1"), &xff(&["evil, 10.0.0.2"]), &trusted),
            "10.0.0.2".parse::<IpAddr>().unwrap()
        );
        assert_eq!(
            resolve(peer("10.0.0.1"), &xff(&[]), &trusted),
            "10.0.0.1".parse::<IpAddr>().unwrap()
        );
    }

    #[test]
    fn ipv4_mapped_addresses_are_normalized() {
        let trusted = rules(&["::ffff:10.0.0.0/104"]);
        assert_eq!(trusted.nets()[0].to_string(), "10.0.0.0/8");
        let h = xff(&["::ffff:198.51.100.7"]);
        assert_eq!(
            resolve(peer("::ffff:10.0.0.1"), &h, &trusted),
            "198.51.100.7".parse::<IpAddr>().unwrap()
        );
    }

    #[test]
    fn cidr_parsing_accepts_hosts_and_refuses_nonsense() {
        assert_eq!(
            parse_ip_or_cidr("198.51.100.50").unwrap().to_string(),
            "198.51.100.50/32"
        );
        assert!(parse_ip_or_cidr("10.0.0.300/8").is_err());
        assert!(
            parse_ip_or_cidr("10.0.0.1/8")
                .unwrap_err()
                .contains("10.0.0.0/8")
        );
        assert!(rules(&[]).allows("1.1.1.1".parse().unwrap()));
        assert!(!rules(&[]).contains("1.1.1.1".parse().unwrap()));
    }
}
