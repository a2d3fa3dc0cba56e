//! Request path, step 1: which service a request belongs to, by host and path prefix.
//!
//! Among services whose host *and* path match: exact host beats `*.` wildcard beats no
//! `hosts`; then the longest `path_prefix`; then file order. Linear over services, no
//! allocation: a table holds few services and this runs once per request.

use crate::config::HostPattern;
use crate::table::{RoutingTable, Service};

/// Picks the service for `host` (as received, port allowed) and `path`, if any.
pub fn route<'t>(table: &'t RoutingTable, host: Option<&str>, path: &str) -> Option<&'t Service> {
    let host = host.map(strip_port);
    let mut best: Option<(&Service, (u8, usize))> = None;
    for service in &table.services {
        let Some(host_rank) = host_rank(&service.hosts, host) else {
            continue;
        };
        if !prefix_matches(&service.path_prefix, path) {
            continue;
        }
        let rank = (host_rank, service.path_prefix.len());
        // Strictly greater: on a tie the earlier service (file order) stays.
        if best.is_none_or(|(_, r)| rank > r) {
            best = Some((service, rank));
        }
    }
    best.map(|(service, _)| service)
}

/// 2 for an exact host match, 1 for a wildcard, 0 for a service without `hosts`.
fn host_rank(patterns: &[HostPattern], host: Option<&str>) -> Option<u8> {
    if patterns.is_empty() {
        return Some(0);
    }
    let host = host?;
    let mut rank = None;
    for pattern in patterns {
        match pattern {
            HostPattern::Exact(name) if name.eq_ignore_ascii_case(host) => return Some(2),
            HostPattern::Suffix(suffix) if ends_with_ignore_case(host, suffix) && host.len() > suffix.len() => {
                rank = Some(1)
            }
            _ => {}
        }
    }
    rank
}

fn ends_with_ignore_case(text: &str, suffix: &str) -> bool {
    text.len() >= suffix.len() && text.as_bytes()[text.len() - suffix.len()..].eq_ignore_ascii_case(suffix.as_bytes())
}

/// `host:port` → `host`; `[::1]:80` → `[::1]`.
fn strip_port(host: &str) -> &str {
    match host.rfind(':') {
        Some(i)
            if !host[i + 1..].is_empty()
                && host[i + 1..].bytes().all(|b| b.is_ascii_digit())
                && !host[..i].ends_with(':') =>
        {
            &host[..i]
        }
        _ => host,
    }
}

/// Segment-boundary prefix match: `/api` matches `/api` and `/api/x`, not `/apix`.
fn prefix_matches(prefix: &str, path: &str) -> bool {
    path.starts_with(prefix)
        && (prefix.ends_with('/') || path.len() == prefix.len() || path.as_bytes()[prefix.len()] == b'/')
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::parse;
    use crate::table::Routing;

    fn table(services: &str) -> Routing {
        let yaml = format!("listeners: [{{ name: p, address: 127.0.0.1:0 }}]\nservices:\n{services}");
        Routing::new(&parse(&yaml).expect("valid config"))
    }

    fn svc(name: &str, matcher: &str) -> String {
        format!("  - {{ name: {name}, match: {matcher}, versions: {{ v: {{ endpoints: [127.0.0.1:1] }} }} }}\n")
    }

    #[test]
    fn precedence_table() {
        let routing = table(
            &[
                svc("any", "{}"),
                svc("api", "{ path_prefix: /api }"),
                svc("wild", "{ hosts: [\"*.example.com\"] }"),
                svc("exact", "{ hosts: [shop.example.com] }"),
                svc("exact-deep", "{ hosts: [shop.example.com], path_prefix: /api/v2 }"),
                svc("wild-api", "{ hosts: [\"*.example.com\"], path_prefix: /api }"),
            ]
            .concat(),
        );
        let table = routing.load();
        let cases = [
            (Some("other.org"), "/", Some("any")),
            (None, "/x", Some("any")),
            (Some("other.org"), "/api/x", Some("api")),
            (Some("other.org"), "/apix", Some("any")),
            (Some("a.example.com"), "/", Some("wild")),
            (Some("A.B.EXAMPLE.com:8080"), "/", Some("wild")),
            (Some("example.com"), "/", Some("any")),
            (Some("shop.example.com"), "/", Some("exact")),
            (Some("Shop.Example.Com:443"), "/api/v2/items", Some("exact-deep")),
            // The exact host's prefix does not match /api/v1; the wildcard's /api does.
            (Some("shop.example.com"), "/api/v1", Some("exact")),
            (Some("x.example.com"), "/api/v1", Some("wild-api")),
        ];
        for (host, path, want) in cases {
            let got = route(&table, host, path).map(|s| &*s.name);
            assert_eq!(got, want, "host {host:?} path {path}");
        }
    }

    #[test]
    fn no_match_is_none() {
        let routing = table(&svc("only", "{ hosts: [a.com], path_prefix: /app }"));
        let table = routing.load();
        assert!(route(&table, Some("a.com"), "/").is_none());
        assert!(route(&table, Some("b.com"), "/app").is_none());
        assert!(route(&table, None, "/app").is_none());
        assert!(route(&table, Some("a.com"), "/app/").is_some());
    }

    #[test]
    fn ports_are_stripped() {
        assert_eq!(strip_port("a.com:80"), "a.com");
        assert_eq!(strip_port("a.com"), "a.com");
        assert_eq!(strip_port("[::1]:80"), "[::1]");
        assert_eq!(strip_port("a.com:"), "a.com:");
    }
}
