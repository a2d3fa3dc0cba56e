//! Request path, step 6 (shadow side): copies of requests to shadow versions, whose answers are
//! read, measured, compared and thrown away.
//!
//! The client's answer never waits for a shadow: a request without a body is copied at once;
//! otherwise the body is teed while it streams to the primary (bounded by `max_body`) and a
//! background task sends the copies once it is complete. Copies to HTTP/1.1 shadows go out
//! pipelined (`upstream::pipeline`), to HTTP/2 ones in a task each. Each mirror holds at most
//! `max_in_flight` copies; past that, and for bodies over `max_body`, copies are dropped and
//! counted.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use http::header::{self, HeaderName, HeaderValue};
use http::request::Parts;
use http::{Request, StatusCode};
use http_body_util::BodyExt;
use tokio::sync::{oneshot, watch};

use crate::config::{Compare, Limits};
use crate::forward::{Forwarded, X_FORWARDED_FOR};
use crate::metrics::{DropReason, InflightGuard, MismatchSample};
use crate::table::{Mirror, Service};
use crate::upstream::framing::put_header;
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

/// `app:8080` → `app-shadow:8080`; `[::1]:80` → `[::1]-shadow:80`: appended to `out`.
fn put_shadow_host(out: &mut Vec<u8>, host: &[u8]) {
    // On bytes, so a Host that is not UTF-8 still gets its suffix.
    let split = match host.iter().rposition(|&b| b == b':') {
        Some(i) if host[i + 1..].iter().all(u8::is_ascii_digit) && !host[..i].ends_with(b":") => i,
        _ => host.len(),
    };
    out.extend_from_slice(&host[..split]);
    out.extend_from_slice(b"-shadow");
    out.extend_from_slice(&host[split..]);
}

#[cfg(test)]
fn shadow_host(host: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    put_shadow_host(&mut out, host);
    out
}

/// A request's copy, ready to send once its body is known.
struct Copy {
    /// For HTTP/1.1 shadows: the head as it goes on the wire, up to its framing headers; the
    /// rest of the request is written after it, into the same buffer.
    wire_head: Vec<u8>,
    /// For HTTP/2 shadows: the head as a request, and the shadow `Host`.
    head: Option<(Request<()>, Option<HeaderValue>)>,
    /// Whether the request said it had a body (so an empty one still gets `content-length: 0`).
    framed: bool,
    /// A `HEAD` request: its answer has no body.
    head_request: bool,
    /// Method and target, for mismatch samples: only when a mirror compares.
    sample: Option<(http::Method, Arc<str>)>,
}

/// Sends the copies: at once for a request without a body, else in the background once `copy`
/// (the teed body) is complete.
pub fn spawn(
    plans: Vec<Plan>,
    parts: &Parts,
    forwarded: &Forwarded<'_>,
    copy: Option<oneshot::Receiver<Option<Bytes>>>,
    primary: Option<watch::Receiver<Option<PrimaryOutcome>>>,
    limits: Limits,
) {
    let host = match parts.uri.authority() {
        Some(authority) => Some(authority.as_str().as_bytes()),
        None => parts.headers.get(header::HOST).map(HeaderValue::as_bytes),
    };
    let h2 = plans.iter().any(|p| {
        p.mirror
            .endpoints
            .iter()
            .any(|e| e.protocol() == crate::config::Protocol::Http2)
    });
    let head = h2.then(|| {
        let host = host.and_then(|h| {
            let mut shadow = Vec::with_capacity(h.len() + 7);
            put_shadow_host(&mut shadow, h);
            HeaderValue::from_bytes(&shadow).ok()
        });
        let mut head = Request::new(());
        *head.method_mut() = parts.method.clone();
        *head.uri_mut() = parts.uri.clone();
        *head.headers_mut() = parts.headers.clone();
        if let Some(host) = &host {
            head.headers_mut().insert(header::HOST, host.clone());
        }
        forwarded.apply(head.headers_mut());
        head.headers_mut()
            .insert(&X_SLUICE_SHADOW, HeaderValue::from_static("true"));
        (head, host)
    });
    let copy_of = Copy {
        wire_head: wire_head(parts, host, forwarded),
        head,
        framed: parts.headers.contains_key(header::CONTENT_LENGTH)
            || parts.headers.contains_key(header::TRANSFER_ENCODING),
        head_request: parts.method == http::Method::HEAD,
        sample: primary.is_some().then(|| {
            let path = parts.uri.path_and_query().map_or("/", |p| p.as_str());
            (parts.method.clone(), Arc::from(path))
        }),
    };
    let Some(copy) = copy else {
        return send(plans, copy_of, &Bytes::new(), primary.as_ref(), limits);
    };
    tokio::spawn(async move {
        // A client that sends its body slowly must not hold the mirrors' slots for long.
        match tokio::time::timeout(limits.response_headers, copy).await {
            Ok(Ok(Some(body))) => send(plans, copy_of, &body, primary.as_ref(), limits),
            Ok(Ok(None)) => plans
                .iter()
                .for_each(|p| p.mirror.metrics.shadow_dropped(DropReason::MaxBody)),
            Ok(Err(_)) | Err(_) => plans
                .iter()
                .for_each(|p| p.mirror.metrics.shadow_dropped(DropReason::Incomplete)),
        }
    });
}

/// The request line and headers of a copy for an HTTP/1.1 shadow, in origin form, with the
/// shadow `Host` and the shadow mark, and without framing headers (the copy's own length is
/// added when the body is known). `host` is the client's: it gets the `-shadow` suffix here.
fn wire_head(parts: &Parts, host: Option<&[u8]>, forwarded: &Forwarded<'_>) -> Vec<u8> {
    let path = parts.uri.path_and_query().map_or("/", |p| p.as_str());
    let mut out = Vec::with_capacity(512);
    out.extend_from_slice(parts.method.as_str().as_bytes());
    out.extend_from_slice(b" ");
    out.extend_from_slice(path.as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\n");
    if let Some(host) = host {
        out.extend_from_slice(b"host: ");
        put_shadow_host(&mut out, host);
        out.extend_from_slice(b"\r\n");
    }
    let mut received = false;
    for (name, value) in &parts.headers {
        if name == header::HOST || name == header::CONTENT_LENGTH || name == header::TRANSFER_ENCODING {
            continue;
        }
        if Forwarded::replaces(name) {
            received |= name == X_FORWARDED_FOR;
            continue;
        }
        put_header(&mut out, name.as_str().as_bytes(), value.as_bytes());
    }
    forwarded.put(&mut out, &parts.headers, received);
    out.extend_from_slice(b"x-sluice-shadow: true\r\n");
    out
}

/// Sends `body`'s copies, one per plan: pipelined to HTTP/1.1 shadows, in a task each to
/// HTTP/2 ones.
fn send(
    plans: Vec<Plan>,
    copy: Copy,
    body: &Bytes,
    primary: Option<&watch::Receiver<Option<PrimaryOutcome>>>,
    limits: Limits,
) {
    // The whole HTTP/1.1 request, written once and shared by every mirror that sends it.
    let mut wire = copy.wire_head;
    if !body.is_empty() || copy.framed {
        wire.extend_from_slice(format!("content-length: {}\r\n", body.len()).as_bytes());
    }
    wire.extend_from_slice(b"\r\n");
    wire.extend_from_slice(body);
    let wire = Bytes::from(wire);
    for plan in plans {
        if body.len() as u64 > plan.mirror.max_body {
            plan.mirror.metrics.shadow_dropped(DropReason::MaxBody);
            continue;
        }
        let mirror = Arc::clone(&plan.mirror);
        let Some(endpoint) = upstream::pick(&mirror.endpoints, None) else {
            // No healthy endpoint: counted like the proxy's own 502 would be.
            finish(plan, None, Duration::ZERO, None, copy.sample.clone(), limits);
            continue;
        };
        let guard = endpoint.begin();
        let (sample, primary) = (copy.sample.clone(), primary.cloned());
        match &copy.head {
            Some((head, host)) if endpoint.protocol() == crate::config::Protocol::Http2 => {
                let mut request =
                    Request::from_parts(clone_head(head).into_parts().0, RequestBody::buffered(body.clone()));
                crate::proxy::target_request(&mut request, endpoint, host.as_ref());
                tokio::spawn(async move {
                    let start = Instant::now();
                    let answer = send_h2(guard, request, plan.mirror.compare == Compare::Body, limits).await;
                    finish(plan, answer, start.elapsed(), primary, sample, limits);
                });
            }
            _ => {
                let hash = plan.mirror.compare == Compare::Body;
                let job = upstream::Job::new(
                    wire.clone(),
                    copy.head_request,
                    hash,
                    limits,
                    Box::new(move |answer: Option<upstream::Answer>| {
                        drop(guard);
                        let latency = answer.map_or(Duration::ZERO, |a| a.latency);
                        let answer = answer.map(|a| (a.status, a.bytes, a.hash));
                        finish(plan, answer, latency, primary, sample, limits);
                    }),
                );
                endpoint.send_pipelined(job);
            }
        }
    }
}

fn clone_head(head: &Request<()>) -> Request<()> {
    let mut copy = Request::new(());
    *copy.method_mut() = head.method().clone();
    *copy.uri_mut() = head.uri().clone();
    *copy.headers_mut() = head.headers().clone();
    copy
}

/// Sends one copy to an HTTP/2 shadow and reads its answer: status, length and body hash.
async fn send_h2(
    guard: upstream::InflightGuard,
    request: Request<RequestBody>,
    hash: bool,
    limits: Limits,
) -> Option<(StatusCode, u64, Option<u64>)> {
    let deadline = tokio::time::Instant::now() + limits.response_headers;
    let Ok((response, lease)) = Endpoint::send(guard, request, &limits, deadline, None).await else {
        return None;
    };
    let status = response.status();
    // A shadow that stalls mid-body must not hold its slot forever.
    let read = read_answer(response.into_body(), hash);
    let hashed = tokio::time::timeout(limits.response_headers, read).await.ok().flatten();
    drop(lease);
    hashed.map(|(bytes, hash)| (status, bytes, hash))
}

/// Records a copy's answer (none: a connect failure, timeout or stall, counted like the proxy's
/// own 502 would be), frees its slot, and compares it with the primary's.
fn finish(
    plan: Plan,
    answer: Option<(StatusCode, u64, Option<u64>)>,
    latency: Duration,
    primary: Option<watch::Receiver<Option<PrimaryOutcome>>>,
    sample: Option<(http::Method, Arc<str>)>,
    limits: Limits,
) {
    let Plan { mirror, slot } = plan;
    let (status, bytes) = answer.map_or((StatusCode::BAD_GATEWAY, 0), |(status, bytes, _)| (status, bytes));
    mirror
        .metrics
        .record(Some(status), latency, status.is_server_error(), bytes);
    // The copy is done: free its slot before waiting for the primary to finish.
    drop(slot);
    // Compare only two real, complete answers (the primary reports only those).
    let (Some((_, _, hash)), Some(mut primary), Some((method, path))) =
        (answer, primary.filter(|_| mirror.compare != Compare::None), sample)
    else {
        return;
    };
    let compare = move |outcome: PrimaryOutcome| {
        let body_differs = mirror.compare == Compare::Body && outcome.body_hash != hash;
        if outcome.status != status || body_differs {
            mirror.metrics.mismatch(MismatchSample {
                time: humantime::format_rfc3339_seconds(SystemTime::now()).to_string(),
                method: method.to_string(),
                path: path.to_string(),
                primary_status: outcome.status.as_u16(),
                shadow_status: status.as_u16(),
                body_differs,
            });
        }
    };
    let ready = *primary.borrow_and_update();
    match ready {
        Some(outcome) => compare(outcome),
        None => {
            tokio::spawn(async move {
                let waited = tokio::time::timeout(limits.response_headers, primary.wait_for(Option::is_some)).await;
                if let Ok(Ok(Some(outcome))) = waited.map(|r| r.map(|o| *o)) {
                    compare(outcome);
                }
            });
        }
    }
}

/// Reads a shadow answer to the end, discarding it; returns its length and, if asked, hash.
async fn read_answer(mut body: upstream::UpstreamBody, hash: bool) -> Option<(u64, Option<u64>)> {
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
