//! Referrer allow-lists. A rule is `scheme://host[:port]/path-glob`, where the host may start
//! with `*.` (any subdomain) and `*` in the path matches any run of characters. The request's
//! `Referer` (or `Origin`, when there is no Referer) is parsed as a URI and compared part by
//! part, so `https://allowed.example@evil.net/` (userinfo) and `allowed.example.evil.net`
//! (suffix) never pass for `allowed.example`.

use http::{HeaderMap, Uri, header};

#[derive(Debug, Clone, PartialEq)]
enum HostPattern {
    Exact(String),
    /// `*.example.com` stored as `.example.com`: matches any subdomain, not the apex.
    Subdomain(String),
}

#[derive(Debug, Clone, PartialEq)]
struct Rule {
    /// As written in the config, for display.
    pattern: String,
    https: bool,
    host: HostPattern,
    port: u16,
    path: String,
}

/// Compiled `allowed_referrers`; empty allows every request.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ReferrerRules(Vec<Rule>);

impl ReferrerRules {
    pub fn compile(patterns: &[String]) -> Result<Self, (usize, String)> {
        patterns
            .iter()
            .enumerate()
            .map(|(i, p)| parse_rule(p).map_err(|e| (i, e)))
            .collect::<Result<Vec<_>, _>>()
            .map(Self)
    }

    /// The patterns as written.
    pub fn patterns(&self) -> impl Iterator<Item = &str> {
        self.0.iter().map(|r| r.pattern.as_str())
    }

    /// True when the list is empty, or the request's Referer (else Origin) matches a rule.
    pub fn allows(&self, headers: &HeaderMap) -> bool {
        if self.0.is_empty() {
            return true;
        }
        let source = headers
            .get(header::REFERER)
            .or_else(|| headers.get(header::ORIGIN));
        let Some(uri) = source.and_then(|v| Uri::try_from(v.as_bytes()).ok()) else {
            return false;
        };
        let Some(seen) = Seen::from_uri(&uri) else {
            return false;
        };
        self.0.iter().any(|rule| rule.matches(&seen))
    }
}

struct Seen<'a> {
    https: bool,
    host: &'a str,
    port: u16,
    path: &'a str,
}

impl<'a> Seen<'a> {
    fn from_uri(uri: &'a Uri) -> Option<Self> {
        let https = match uri.scheme_str()? {
            s if s.eq_ignore_ascii_case("https") => true,
            s if s.eq_ignore_ascii_case("http") => false,
            _ => return None,
        };
        let host = uri.host()?;
        let host = host.strip_suffix('.').unwrap_or(host);
        let port = uri.port_u16().unwrap_or(default_port(https));
        let path = match uri.path() {
            "" => "/",
            p => p,
        };
        Some(Self {
            https,
            host,
            port,
            path,
        })
    }
}

impl Rule {
    fn matches(&self, seen: &Seen<'_>) -> bool {
        self.https == seen.https
            && self.port == seen.port
            && match &self.host {
                HostPattern::Exact(h) => h.eq_ignore_ascii_case(seen.host),
                HostPattern::Subdomain(suffix) => {
                    seen.host.len() > suffix.len()
                        && seen.host.as_bytes()[seen.host.len() - suffix.len()..]
                            .eq_ignore_ascii_case(suffix.as_bytes())
                }
            }
            && glob_match(self.path.as_bytes(), seen.path.as_bytes())
    }
}

pub(crate) fn default_port(https: bool) -> u16 {
    if https { 443 } else { 80 }
}

fn parse_rule(pattern: &str) -> Result<Rule, String> {
    let bad = |why: &str| format!("referrer pattern {pattern:?} {why}");
    let (scheme, rest) = pattern
        .split_once("://")
        .ok_or_else(|| bad("must start with http:// or https://"))?;
    let https = match scheme {
        "https" => true,
        "http" => false,
        _ => return Err(bad("must start with http:// or https://")),
    };
    let (authority, path) = match rest.find('/') {
        Some(i) => rest.split_at(i),
        None => (rest, "/*"),
    };
    if authority.contains('@') {
        return Err(bad("must not contain user information ('@')"));
    }
    let parse_port = |p: &str| p.parse::<u16>().map_err(|_| bad("has an invalid port"));
    let (host, port) = match authority.find(']') {
        // An IPv6 literal: `[::1]` or `[::1]:8080`.
        Some(end) => {
            let (h, after) = authority.split_at(end + 1);
            match after.strip_prefix(':') {
                Some(p) => (h, parse_port(p)?),
                None if after.is_empty() => (h, default_port(https)),
                None => return Err(bad("has an invalid host")),
            }
        }
        None => match authority.rsplit_once(':') {
            Some((h, p)) => (h, parse_port(p)?),
            None => (authority, default_port(https)),
        },
    };
    let host = host.to_ascii_lowercase();
    let host = match host.strip_prefix("*.") {
        Some(suffix) => HostPattern::Subdomain(format!(".{suffix}")),
        None => HostPattern::Exact(host.clone()),
    };
    let name = match &host {
        HostPattern::Exact(h) => h.as_str(),
        HostPattern::Subdomain(s) => &s[1..],
    };
    let valid_host = !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-.[]:".contains(&b));
    if !valid_host {
        return Err(bad(
            "has an invalid host (only '*.' is allowed as a host wildcard)",
        ));
    }
    if path.contains(['?', '#']) {
        return Err(bad("must not contain a query or fragment"));
    }
    Ok(Rule {
        pattern: pattern.to_owned(),
        https,
        host,
        port,
        path: path.to_owned(),
    })
}

/// `*` matches any run of bytes (including `/`); every other byte matches itself.
fn glob_match(pattern: &[u8], text: &[u8]) -> bool {
    let (mut p, mut t) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while t < text.len() {
        if p < pattern.len() && pattern[p] == b'*' {
            star = Some((p, t));
            p += 1;
        } else if p < pattern.len() && pattern[p] == text[t] {
            p += 1;
            t += 1;
        } else if let Some((sp, st)) = star {
            p = sp + 1;
            t = st + 1;
            star = Some((sp, st + 1));
        } else {
            return false;
        }
    }
    pattern[p..].iter().all(|&b| b == b'*')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules(list: &[&str]) -> ReferrerRules {
        ReferrerRules::compile(&list.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap()
    }

    fn with(name: &'static str, value: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(name, value.parse().unwrap());
        h
    }

    #[test]
    fn exact_host_and_path_glob() {
        let r = rules(&["https://allowed.example/*"]);
        assert!(r.allows(&with("referer", "https://allowed.example/")));
        assert!(r.allows(&with("referer", "https://ALLOWED.example/app/page?x=1")));
        assert!(r.allows(&with("origin", "https://allowed.example")));
        assert!(!r.allows(&with("referer", "http://allowed.example/")));
        assert!(!r.allows(&with("referer", "https://allowed.example:8443/")));
        assert!(!r.allows(&HeaderMap::new()));
    }

    #[test]
    fn lookalikes_do_not_match() {
        let r = rules(&["https://allowed.example/*"]);
        for evil in [
            "https://allowed.example@evil.net/",
            "https://allowed.example.evil.net/",
            "https://evil.net/https://allowed.example/",
            "https://notallowed.example/",
            "allowed.example/",
            "javascript:alert(1)",
        ] {
            assert!(!r.allows(&with("referer", evil)), "{evil} must not match");
        }
    }

    #[test]
    fn subdomain_wildcard_and_specific_paths() {
        let r = rules(&["https://*.example.com/app/*"]);
        assert!(r.allows(&with("referer", "https://a.b.example.com/app/x")));
        assert!(!r.allows(&with("referer", "https://example.com/app/x")));
        assert!(!r.allows(&with("referer", "https://evilexample.com/app/x")));
        assert!(!r.allows(&with("referer", "https://a.example.com/other")));
    }

    #[test]
    fn bad_patterns_are_refused() {
        for bad in [
            "allowed.example/*",
            "ftp://x/",
            "https://u@x/",
            "https://ev*il.com/",
            "https://x:99999/",
        ] {
            assert!(ReferrerRules::compile(&[bad.to_string()]).is_err(), "{bad}");
        }
    }

    #[test]
    fn glob() {
        assert!(glob_match(b"/*", b"/"));
        assert!(glob_match(b"/a*c", b"/abbbc"));
        assert!(!glob_match(b"/a*c", b"/abbb"));
        assert!(glob_match(b"*", b""));
    }
}
