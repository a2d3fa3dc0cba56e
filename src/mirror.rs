//! Request path, step 6 (shadow side): copies of requests to shadow versions, whose answers are
//! read, measured, compared and thrown away.
//!
//! The client's answer never waits for a shadow: the copy of the body is teed while it streams
//! to the primary (bounded by `max_body`), and one background task per mirrored request sends
//! the copies once the body is complete. Each mirror holds at most `max_in_flight` copies;
//! past that, and for bodies over `max_body`, copies are dropped and counted.

use std::sync::Arc;
use std::time::{Instant, SystemTime};

use bytes::Bytes;
use http::header::{self, HeaderName, HeaderValue};
use http::request::Parts;
use http::{Request, StatusCode};
use http_body_util::BodyExt;
use tokio::sync::{oneshot, watch};

use crate::config::{Compare, Limits};
use crate::metrics::{DropReason, InflightGuard, MismatchSample};
use crate::table::{Mirror, Service};
use crate::upstream::{self, Endpoint, RequestBody};

/// Header that tells a shadow upstream its request is a copy.
pub static X_SLUICE_SHADOW: HeaderName = HeaderName::from_static("x-sluice-shadow");

/// What the client got, for mirrors that compare.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PrimaryOutcome {
    /// Status sent to the client.
    pub status: StatusCode,
    /// Hash of the response body, when a mirror compares bodies.
    pub body_hash: Option<u64>,
}

/// Where the primary's outcome is reported, and whether its body must be hashed.
pub type PrimaryReport = watch::Sender<Option<PrimaryOutcome>>;

/// A mirror this request is copied to, with its in-flight slot.
#[derive(Debug)]
pub struct Plan {
    mirror: Arc<Mirror>,
    slot: InflightGuard,
}

/// Picks the mirrors a request is copied to: each by its percent, and only while it has fewer
/// than `max_in_flight` copies in flight (the slot is taken here, so the bound is strict). A
/// request is never copied to the version that serves it (after a blue/green switch, the
/// mirrored version may be the primary).
pub fn select(service: &Service, primary: &str) -> Vec<Plan> {
    let mut plans = Vec::new();
    for mirror in &service.mirrors {
        if *mirror.version == *primary || fastrand::f64() * 100.0 >= mirror.percent {
            continue;
        }
        match mirror.metrics.try_begin(mirror.max_in_flight) {
            Some(slot) => plans.push(Plan {
                mirror: Arc::clone(mirror),
                slot,
            }),
            None => mirror.metrics.shadow_dropped(DropReason::MaxInFlight),
        }
    }
    plans
}

/// The largest body any of `plans` copies.
pub fn max_body(plans: &[Plan]) -> u64 {
    plans.iter().map(|p| p.mirror.max_body).max().unwrap_or(0)
}

/// Whether any plan compares answers (so the primary must report its outcome).
pub fn compares(plans: &[Plan]) -> Option<Compare> {
    plans
        .iter()
        .map(|p| p.mirror.compare)
        .max_by_key(|c| *c as u8)
        .filter(|c| *c != Compare::None)
}

/// `app:8080` → `app-shadow:8080`; `[::1]:80` → `[::1]-shadow:80`.
fn shadow_host(host: &[u8]) -> Vec<u8> {
    // On bytes, so a Host that is not UTF-8 still gets its suffix.
    let split = match host.iter().rposition(|&b| b == b':') {
        Some(i) if host[i + 1..].iter().all(u8::is_ascii_digit) && !host[..i].ends_with(b":") => i,
        _ => host.len(),
    };
    [&host[..split], b"-shadow", &host[split..]].concat()
}

/// Sends the copies in the background once `copy` (the teed body) is complete.
pub fn spawn(
    plans: Vec<Plan>,
    parts: &Parts,
    copy: oneshot::Receiver<Option<Bytes>>,
    primary: Option<watch::Receiver<Option<PrimaryOutcome>>>,
    limits: Limits,
) {
    let mut head = Request::new(());
    *head.method_mut() = parts.method.clone();
    *head.uri_mut() = parts.uri.clone();
    *head.headers_mut() = parts.headers.clone();
    let host = match parts.uri.authority() {
        Some(authority) => Some(authority.as_str().as_bytes()),
        None => parts.headers.get(header::HOST).map(HeaderValue::as_bytes),
    };
    let host = host.and_then(|h| HeaderValue::from_bytes(&shadow_host(h)).ok());
    if let Some(host) = &host {
        head.headers_mut().insert(header::HOST, host.clone());
    }
    head.headers_mut()
        .insert(&X_SLUICE_SHADOW, HeaderValue::from_static("true"));
    tokio::spawn(async move {
        // A client that sends its body slowly must not hold the mirrors' slots for long.
        let body = match tokio::time::timeout(limits.response_headers, copy).await {
            Ok(Ok(Some(body))) => body,
            Ok(Ok(None)) => {
                return plans
                    .iter()
                    .for_each(|p| p.mirror.metrics.shadow_dropped(DropReason::MaxBody))
            }
            Ok(Err(_)) | Err(_) => {
                return plans
                    .iter()
                    .for_each(|p| p.mirror.metrics.shadow_dropped(DropReason::Incomplete));
            }
        };
        let sends = plans.into_iter().map(|plan| {
            let (head, body, primary, host) = (clone_head(&head), body.clone(), primary.clone(), host.clone());
            send_copy(plan, head, body, host, primary, limits)
        });
        futures_util::future::join_all(sends).await;
    });
}

fn clone_head(head: &Request<()>) -> Request<()> {
    let mut copy = Request::new(());
    *copy.method_mut() = head.method().clone();
    *copy.uri_mut() = head.uri().clone();
    *copy.headers_mut() = head.headers().clone();
    copy
}

/// Sends one copy, reads and measures the answer, and compares it with the primary's.
async fn send_copy(
    plan: Plan,
    head: Request<()>,
    body: Bytes,
    host: Option<HeaderValue>,
    primary: Option<watch::Receiver<Option<PrimaryOutcome>>>,
    limits: Limits,
) {
    let Plan { mirror, slot } = plan;
    if body.len() as u64 > mirror.max_body {
        mirror.metrics.shadow_dropped(DropReason::MaxBody);
        return;
    }
    let start = Instant::now();
    let (method, path) = (
        head.method().to_string(),
        head.uri().path_and_query().map_or("/".to_owned(), |p| p.to_string()),
    );
    let (parts, ()) = head.into_parts();
    let mut request = Request::from_parts(parts, RequestBody::buffered(body));
    let answer = match upstream::pick(&mirror.endpoints, None) {
        Some(endpoint) => {
            crate::proxy::target_request(&mut request, endpoint, host.as_ref());
            let sent = tokio::time::timeout(
                limits.response_headers,
                Endpoint::send(endpoint.begin(), request, &limits),
            )
            .await;
            match sent {
                Ok(Ok((response, lease))) => {
                    let status = response.status();
                    // A shadow that stalls mid-body must not hold its slot forever.
                    let read = read_answer(response.into_body(), mirror.compare == Compare::Body);
                    let hashed = tokio::time::timeout(limits.response_headers, read).await.ok().flatten();
                    drop(lease);
                    hashed.map(|(bytes, hash)| (status, bytes, hash))
                }
                _ => None,
            }
        }
        None => None,
    };
    // No answer (connect failure, timeout, stall) counts like the proxy's own 502 would.
    let (status, bytes) = answer.map_or((StatusCode::BAD_GATEWAY, 0), |(status, bytes, _)| (status, bytes));
    mirror
        .metrics
        .record(Some(status), start.elapsed(), status.is_server_error(), bytes);
    // The copy is done: free its slot before waiting for the primary to finish.
    drop(slot);
    // Compare only two real, complete answers (the primary reports only those).
    let Some((_, _, hash)) = answer else { return };

    let Some(mut primary) = primary.filter(|_| mirror.compare != Compare::None) else {
        return;
    };
    let Ok(Ok(outcome)) = tokio::time::timeout(limits.response_headers, primary.wait_for(Option::is_some))
        .await
        .map(|r| r.map(|o| *o))
    else {
        return;
    };
    let Some(outcome) = outcome else { return };
    let body_differs = mirror.compare == Compare::Body && outcome.body_hash != hash;
    if outcome.status != status || body_differs {
        mirror.metrics.mismatch(MismatchSample {
            time: humantime::format_rfc3339_seconds(SystemTime::now()).to_string(),
            method,
            path,
            primary_status: outcome.status.as_u16(),
            shadow_status: status.as_u16(),
            body_differs,
        });
    }
}

/// Reads a shadow answer to the end, discarding it; returns its length and, if asked, hash.
async fn read_answer(mut body: hyper::body::Incoming, hash: bool) -> Option<(u64, Option<u64>)> {
    let mut hasher = hash.then(BodyHash::default);
    let mut bytes = 0;
    while let Some(frame) = body.frame().await {
        let frame = frame.ok()?;
        if let Some(data) = frame.data_ref() {
            bytes += data.len() as u64;
            if let Some(h) = hasher.as_mut() {
                h.update(data);
            }
        }
    }
    Some((bytes, hasher.map(|h| h.finish())))
}

/// FNV-1a over a body, fed chunk by chunk: a cheap fingerprint to compare two bodies.
#[derive(Debug, Clone, Copy)]
pub struct BodyHash(u64);

impl Default for BodyHash {
    fn default() -> Self {
        BodyHash(0xcbf2_9ce4_8422_2325)
    }
}

impl BodyHash {
    /// Adds `data`.
    pub fn update(&mut self, data: &[u8]) {
        for &b in data {
            self.0 = (self.0 ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3);
        }
    }

    /// The hash so far.
    pub fn finish(self) -> u64 {
        self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shadow_suffix_goes_before_the_port() {
        let cases: [(&[u8], &[u8]); 5] = [
            (b"app:8080", b"app-shadow:8080"),
            (b"app", b"app-shadow"),
            (b"[::1]:80", b"[::1]-shadow:80"),
            (b"a.b.c", b"a.b.c-shadow"),
            (b"caf\xe9.test", b"caf\xe9.test-shadow"),
        ];
        for (host, want) in cases {
            assert_eq!(shadow_host(host), want, "{host:?}");
        }
    }

    #[test]
    fn body_hash_is_chunking_independent() {
        let mut whole = BodyHash::default();
        whole.update(b"hello world");
        let mut parts = BodyHash::default();
        parts.update(b"hello ");
        parts.update(b"world");
        assert_eq!(whole.finish(), parts.finish());
        let mut other = BodyHash::default();
        other.update(b"hello World");
        assert_ne!(whole.finish(), other.finish());
    }
}
