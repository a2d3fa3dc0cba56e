//! Request path, step 6 (headers): what is removed, added and kept between client and upstream.
//!
//! Hop-by-hop headers (RFC 9110 §7.6.1, and those named in `Connection`) are removed both ways;
//! `X-Forwarded-For/-Proto/-Host` are set; `Host` is kept. Upgrades keep `Upgrade` and
//! `Connection: upgrade`, and gRPC's `te: trailers` is kept.

use http::header::{self, HeaderMap, HeaderName, HeaderValue};

/// `x-forwarded-for`.
pub static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
/// `x-forwarded-proto`.
pub static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
/// `x-forwarded-host`.
pub static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
/// `x-sluice-version`.
pub static X_SLUICE_VERSION: HeaderName = HeaderName::from_static("x-sluice-version");

static PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");
static KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");

/// What the proxy knows of the client connection, built once per connection.
#[derive(Debug, Clone)]
pub struct ClientInfo {
    /// The client's IP, ready for `X-Forwarded-For`.
    pub ip: HeaderValue,
    /// `http` or `https`, for `X-Forwarded-Proto`.
    pub proto: HeaderValue,
}

impl ClientInfo {
    /// Info for a plain-TCP client at `addr`.
    pub fn plain(addr: std::net::SocketAddr) -> Self {
        let ip = HeaderValue::from_str(&addr.ip().to_string()).unwrap_or(HeaderValue::from_static("unknown"));
        Self {
            ip,
            proto: HeaderValue::from_static("http"),
        }
    }

    /// Info for a client at `addr` that connected over TLS.
    pub fn tls(addr: std::net::SocketAddr) -> Self {
        Self {
            proto: HeaderValue::from_static("https"),
            ..Self::plain(addr)
        }
    }
}

/// True when the request asks to switch protocols (`Connection: upgrade` and `Upgrade`).
pub fn is_upgrade(headers: &HeaderMap) -> bool {
    if !headers.contains_key(header::UPGRADE) {
        return false;
    }
    // `Upgrade: h2c` is a hop-by-hop offer to speak HTTP/2 with *this* hop; passing it on would
    // let a 101 turn the connection into a raw tunnel past routing (h2c smuggling).
    let h2c = headers
        .get_all(header::UPGRADE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case("h2c"));
    !h2c && connection_has(headers, "upgrade")
}

fn connection_has(headers: &HeaderMap, token: &str) -> bool {
    headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case(token))
}

/// True for the names [`remove_hop_by_hop`] removes whatever `Connection` says.
pub fn is_hop_by_hop(name: &HeaderName) -> bool {
    *name == header::CONNECTION
        || *name == header::TE
        || *name == header::TRANSFER_ENCODING
        || *name == header::UPGRADE
        || *name == KEEP_ALIVE
        || *name == PROXY_CONNECTION
}

/// Removes from a request's trailer section what never reaches an upstream in its head:
/// hop-by-hop fields (`connection_named`: those the head's `Connection` listed), the
/// `X-Forwarded-*` fields sluice sets, sluice's own `x-sluice-shadow` and `x-sluice-flags`, and
/// fields a trailer must not carry because they frame or route the message (`Content-Length`,
/// `Host`, `Trailer`; RFC 9110 §6.5.1). Trailers are rare: nothing is allocated unless one of
/// these is there.
pub fn clean_request_trailers(trailers: &mut HeaderMap, connection_named: &[HeaderName]) {
    let unwanted = |name: &HeaderName| {
        is_hop_by_hop(name)
            || *name == header::CONTENT_LENGTH
            || *name == header::HOST
            || *name == header::TRAILER
            || Forwarded::replaces(name)
            || *name == crate::mirror::X_SLUICE_SHADOW
            || *name == crate::flags::X_SLUICE_FLAGS
            || connection_named.contains(name)
    };
    if !trailers.keys().any(unwanted) {
        return;
    }
    let names: Vec<HeaderName> = trailers.keys().filter(|name| unwanted(name)).cloned().collect();
    for name in names {
        trailers.remove(name);
    }
}

/// The fields `Connection` names, hop-by-hop for this message (RFC 9110 §7.6.1): empty in the
/// common case of a lone `keep-alive` or `close`, which allocates nothing.
pub fn connection_named(headers: &HeaderMap) -> Vec<HeaderName> {
    if connection_is_keep_alive_or_close(headers) {
        return Vec::new();
    }
    // Rare: `Connection` naming other headers. Collecting here is fine.
    headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|t| HeaderName::from_bytes(t.trim().as_bytes()).ok())
        .collect()
}

/// Removes a request's hop-by-hop headers but `TE: trailers` (end to end in practice: gRPC
/// needs it); with `upgrade`, keeps `Upgrade` and sets `Connection: upgrade`.
pub fn remove_hop_by_hop(headers: &mut HeaderMap, upgrade: bool) {
    strip_hop_by_hop(headers, upgrade, true);
}

/// Removes an answer's hop-by-hop headers, `TE` included (a request field, RFC 9110 §10.1.4,
/// which HTTP/2 refuses in an answer); with `upgrade`, as [`remove_hop_by_hop`].
pub fn remove_hop_by_hop_from_answer(headers: &mut HeaderMap, upgrade: bool) {
    strip_hop_by_hop(headers, upgrade, false);
}

/// Runs twice per request (request and response), so it first finds which hop-by-hop headers
/// are present in one pass over the names (cheap comparisons), and hashes only to remove those.
fn strip_hop_by_hop(headers: &mut HeaderMap, upgrade: bool, keep_te_trailers: bool) {
    let (mut connection, mut te, mut others) = (false, false, false);
    for name in headers.keys() {
        if *name == header::CONNECTION {
            connection = true;
        } else if *name == header::TE {
            te = true;
        } else if *name == header::TRANSFER_ENCODING
            || *name == header::UPGRADE
            || *name == KEEP_ALIVE
            || *name == PROXY_CONNECTION
        {
            others = true;
        }
    }
    if connection {
        for name in connection_named(headers) {
            if name == header::TE || (upgrade && name == header::UPGRADE) {
                continue;
            }
            headers.remove(&name);
        }
    }
    if connection {
        headers.remove(header::CONNECTION);
    }
    if others {
        headers.remove(&PROXY_CONNECTION);
        headers.remove(&KEEP_ALIVE);
        headers.remove(header::TRANSFER_ENCODING);
        if !upgrade {
            headers.remove(header::UPGRADE);
        }
    }
    if te && !(keep_te_trailers && is_te_trailers(headers)) {
        headers.remove(header::TE);
    }
    if upgrade {
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    }
}

/// The common case: one `Connection` value, `keep-alive` or `close`, naming no other header
/// (`Keep-Alive` itself is removed anyway).
fn connection_is_keep_alive_or_close(headers: &HeaderMap) -> bool {
    let mut values = headers.get_all(header::CONNECTION).iter();
    match (values.next(), values.next()) {
        (Some(v), None) => {
            let v = v.as_bytes();
            v.eq_ignore_ascii_case(b"keep-alive") || v.eq_ignore_ascii_case(b"close")
        }
        _ => false,
    }
}

/// `TE: trailers` alone is end to end in practice (gRPC needs it); any other TE is not.
fn is_te_trailers(headers: &HeaderMap) -> bool {
    let mut values = headers.get_all(header::TE).iter();
    matches!((values.next(), values.next()), (Some(v), None) if v.as_bytes().eq_ignore_ascii_case(b"trailers"))
}

/// A request's `X-Forwarded-*` fields: the client's address appended to any `X-Forwarded-For`
/// received, `X-Forwarded-Proto`, and `X-Forwarded-Host` (the received Host, port included).
/// HTTP/1.1 heads get them written as lines when they go out ([`Forwarded::put`]), which spares
/// three hashed inserts into the request's `HeaderMap`; heads that go out as a map (HTTP/2)
/// get them set there ([`Forwarded::apply`]).
#[derive(Debug, Clone, Copy)]
pub struct Forwarded<'a> {
    /// The client connection.
    pub client: &'a ClientInfo,
    /// The received host, port included.
    pub host: Option<&'a HeaderValue>,
}

impl Forwarded<'_> {
    /// Sets the fields in `headers`.
    pub fn apply(&self, headers: &mut HeaderMap) {
        set_forwarded(headers, self.client, self.host);
    }

    /// True for a received field that [`Forwarded::put`] writes instead.
    pub fn replaces(name: &HeaderName) -> bool {
        *name == X_FORWARDED_FOR || *name == X_FORWARDED_PROTO || *name == X_FORWARDED_HOST
    }

    /// Writes the fields as head lines; `received`: `headers` has an `X-Forwarded-For` to
    /// append to.
    pub fn put(&self, out: &mut Vec<u8>, headers: &HeaderMap, received: bool) {
        out.extend_from_slice(b"x-forwarded-for: ");
        if received {
            for value in headers.get_all(&X_FORWARDED_FOR) {
                out.extend_from_slice(value.as_bytes());
                out.extend_from_slice(b", ");
            }
        }
        out.extend_from_slice(self.client.ip.as_bytes());
        out.extend_from_slice(b"\r\nx-forwarded-proto: ");
        out.extend_from_slice(self.client.proto.as_bytes());
        out.extend_from_slice(b"\r\n");
        if let Some(host) = self.host {
            out.extend_from_slice(b"x-forwarded-host: ");
            out.extend_from_slice(host.as_bytes());
            out.extend_from_slice(b"\r\n");
        }
    }
}

/// Sets `X-Forwarded-*` on a request going upstream. `host` is the received Host, port included.
pub fn set_forwarded(headers: &mut HeaderMap, client: &ClientInfo, host: Option<&HeaderValue>) {
    // One lookup for X-Forwarded-For: appended to when the client sent one, set otherwise.
    match headers.entry(&X_FORWARDED_FOR) {
        header::Entry::Vacant(entry) => {
            entry.insert(client.ip.clone());
        }
        header::Entry::Occupied(mut entry) => {
            let mut joined: Vec<u8> = Vec::with_capacity(64);
            for value in entry.iter() {
                joined.extend_from_slice(value.as_bytes());
                joined.extend_from_slice(b", ");
            }
            joined.extend_from_slice(client.ip.as_bytes());
            // Replaces every earlier value.
            entry.insert(HeaderValue::from_bytes(&joined).unwrap_or_else(|_| client.ip.clone()));
        }
    }
    headers.insert(&X_FORWARDED_PROTO, client.proto.clone());
    match host {
        Some(host) => headers.insert(&X_FORWARDED_HOST, host.clone()),
        None => headers.remove(&X_FORWARDED_HOST),
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut headers = HeaderMap::new();
        for (k, v) in pairs {
            headers.append(
                HeaderName::from_bytes(k.as_bytes()).expect("name"),
                HeaderValue::from_str(v).expect("value"),
            );
        }
        headers
    }

    #[test]
    fn hop_by_hop_removed() {
        let mut headers = map(&[
            ("connection", "keep-alive, x-secret"),
            ("x-secret", "1"),
            ("keep-alive", "timeout=5"),
            ("proxy-connection", "keep-alive"),
            ("te", "gzip"),
            ("transfer-encoding", "chunked"),
            ("upgrade", "websocket"),
            ("x-kept", "yes"),
        ]);
        remove_hop_by_hop(&mut headers, false);
        let names: Vec<_> = headers.keys().map(HeaderName::as_str).collect();
        assert_eq!(names, vec!["x-kept"]);
    }

    #[test]
    fn each_hop_by_hop_header_alone_is_removed() {
        for name in [
            "connection",
            "keep-alive",
            "proxy-connection",
            "te",
            "transfer-encoding",
            "upgrade",
        ] {
            let mut headers = map(&[("x-a", "1"), (name, "x"), ("x-b", "2")]);
            remove_hop_by_hop(&mut headers, false);
            let names: Vec<_> = headers.keys().map(HeaderName::as_str).collect();
            assert_eq!(names, vec!["x-a", "x-b"], "{name}");
        }
        for value in ["keep-alive", "Close"] {
            let mut headers = map(&[("connection", value), ("keep-alive", "timeout=5"), ("x-a", "1")]);
            remove_hop_by_hop(&mut headers, false);
            let names: Vec<_> = headers.keys().map(HeaderName::as_str).collect();
            assert_eq!(names, vec!["x-a"], "Connection: {value}");
        }
        let mut clean = map(&[("host", "a"), ("content-length", "3"), ("te", "trailers")]);
        remove_hop_by_hop(&mut clean, false);
        assert_eq!(clean.len(), 3, "nothing to remove: {clean:?}");
    }

    #[test]
    fn upgrade_and_te_trailers_kept() {
        let mut headers = map(&[("connection", "Upgrade"), ("upgrade", "websocket"), ("te", "trailers")]);
        remove_hop_by_hop(&mut headers, true);
        assert_eq!(headers.get("upgrade").map(|v| v.as_bytes()), Some(&b"websocket"[..]));
        assert_eq!(headers.get("connection").map(|v| v.as_bytes()), Some(&b"upgrade"[..]));
        assert_eq!(headers.get("te").map(|v| v.as_bytes()), Some(&b"trailers"[..]));
        // Not in an answer.
        for value in ["trailers", "Trailers"] {
            let mut answer = map(&[("te", value), ("connection", "keep-alive"), ("x-a", "1")]);
            remove_hop_by_hop_from_answer(&mut answer, false);
            let names: Vec<_> = answer.keys().map(HeaderName::as_str).collect();
            assert_eq!(names, vec!["x-a"], "TE: {value}");
        }
    }

    #[test]
    fn forwarded_headers() {
        let client = ClientInfo::plain("10.1.2.3:5555".parse().expect("addr"));
        let mut headers = map(&[
            ("x-forwarded-for", "1.1.1.1"),
            ("x-forwarded-for", "2.2.2.2"),
            ("x-forwarded-host", "spoof"),
        ]);
        let host = HeaderValue::from_static("shop.example.com:8080");
        set_forwarded(&mut headers, &client, Some(&host));
        assert_eq!(headers["x-forwarded-for"], "1.1.1.1, 2.2.2.2, 10.1.2.3");
        assert_eq!(headers.get_all("x-forwarded-for").iter().count(), 1);
        assert_eq!(headers["x-forwarded-proto"], "http");
        assert_eq!(headers["x-forwarded-host"], "shop.example.com:8080");
    }
}
