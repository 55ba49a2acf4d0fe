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

/// A trusted proxy's `X-Forwarded-For` holds an entry that is not an address where keygate
/// needed one: the request is refused rather than attributed to the proxy itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BadForwardedFor;

/// Resolves the client address of one request. Behind trusted proxies, `X-Forwarded-For` is
/// read as bytes, entry by entry from the right, to the first hop that is not a trusted proxy.
/// An entry on that walk that is not an address (a byte outside ASCII, a name, garbage) is an
/// error: falling back to the proxy's own address would let a client borrow the proxy's rights
/// or charge its failures to everyone behind it.
pub fn resolve(
    peer: SocketAddr,
    headers: &HeaderMap,
    trusted: &IpRules,
) -> Result<IpAddr, BadForwardedFor> {
    let peer = peer.ip().to_canonical();
    if !trusted.contains(peer) {
        return Ok(peer);
    }
    let mut nearest = peer;
    // Later headers were appended by nearer hops: walk headers and their entries right to left.
    for value in headers.get_all(&X_FORWARDED_FOR).iter().rev() {
        for entry in value.as_bytes().rsplit(|&b| b == b',') {
            let entry = entry.trim_ascii();
            if entry.is_empty() {
                // `a,,b` or a trailing comma: no hop was recorded there.
                continue;
            }
            let ip = parse_hop(entry).ok_or(BadForwardedFor)?;
            if !trusted.contains(ip) {
                return Ok(ip);
            }
            nearest = ip;
        }
    }
    Ok(nearest)
}

fn parse_hop(entry: &[u8]) -> Option<IpAddr> {
    let entry = std::str::from_utf8(entry).ok()?;
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
            Ok("203.0.113.9".parse::<IpAddr>().unwrap())
        );
        assert_eq!(
            resolve(peer("203.0.113.9"), &h, &IpRules::default()),
            Ok("203.0.113.9".parse::<IpAddr>().unwrap())
        );
    }

    #[test]
    fn trusted_peer_walks_from_the_right_past_trusted_hops() {
        let trusted = rules(&["10.0.0.0/8"]);
        let h = xff(&["6.6.6.6, 198.51.100.7", "10.1.1.1"]);
        assert_eq!(
            resolve(peer("10.0.0.1"), &h, &trusted),
            Ok("198.51.100.7".parse::<IpAddr>().unwrap())
        );
    }

    #[test]
    fn garbage_on_the_walk_is_an_error_and_an_exhausted_chain_stops_at_the_nearest_hop() {
        let trusted = rules(&["10.0.0.0/8"]);
        assert_eq!(
            resolve(peer("10.0.0.1"), &xff(&["evil, 10.0.0.2"]), &trusted),
            Err(BadForwardedFor)
        );
        assert_eq!(
            resolve(peer("10.0.0.1"), &xff(&[]), &trusted),
            Ok("10.0.0.1".parse::<IpAddr>().unwrap())
        );
        assert_eq!(
            resolve(peer("10.0.0.1"), &xff(&["10.0.0.3,, 10.0.0.2,"]), &trusted),
            Ok("10.0.0.3".parse::<IpAddr>().unwrap())
        );
        // Garbage beyond the first untrusted hop is never read.
        assert_eq!(
            resolve(peer("10.0.0.1"), &xff(&["evil, 198.51.100.7"]), &trusted),
            Ok("198.51.100.7".parse::<IpAddr>().unwrap())
        );
    }

    #[test]
    fn a_byte_above_0x7f_is_read_entry_by_entry() {
        // nginx's $proxy_add_x_forwarded_for appends the real client to whatever it was sent.
        let trusted = rules(&["10.0.0.0/8"]);
        let mut h = HeaderMap::new();
        h.append(
            "x-forwarded-for",
            http::HeaderValue::from_bytes(b"\x80junk, 198.51.100.7").unwrap(),
        );
        assert_eq!(
            resolve(peer("10.0.0.1"), &h, &trusted),
            Ok("198.51.100.7".parse::<IpAddr>().unwrap())
        );
        let mut h = HeaderMap::new();
        h.append(
            "x-forwarded-for",
            http::HeaderValue::from_bytes(b"198.51.100.7, \x80junk").unwrap(),
        );
        assert_eq!(
            resolve(peer("10.0.0.1"), &h, &trusted),
            Err(BadForwardedFor)
        );
    }

    #[test]
    fn ipv4_mapped_addresses_are_normalized() {
        let trusted = rules(&["::ffff:10.0.0.0/104"]);
        assert_eq!(trusted.nets()[0].to_string(), "10.0.0.0/8");
        let h = xff(&["::ffff:198.51.100.7"]);
        assert_eq!(
            resolve(peer("::ffff:10.0.0.1"), &h, &trusted),
            Ok("198.51.100.7".parse::<IpAddr>().unwrap())
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
