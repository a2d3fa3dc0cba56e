//! The request handler: one request through the pipeline
//! `route → flags + split → pick endpoint → forward → respond`.
//!
//! [`Proxy::handle`] turns every error into a synthetic response (the hyper service never
//! fails); [`Proxy::handle_inner`] is the straight `?` chain of the stages.

use std::sync::Arc;
use std::time::Instant;

use http::header::{self, HeaderValue};
use http::uri::{PathAndQuery, Scheme};
use http::{Request, Response, StatusCode, Uri};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};

use crate::admission::ConnectionPermit;
use crate::body::{Completion, ResponseBody};
use crate::config::Protocol;
use crate::error::ProxyError;
use crate::flags;
use crate::forward::{self, ClientInfo, Forwarded};
use crate::metrics;
use crate::mirror::{self, PrimaryReport};
use crate::router;
use crate::server::{self, Checked, ClientBody, ClientUpgrade, FieldScan};
use crate::split;
use crate::table::{Routing, RoutingTable, Service, Version};
use crate::upstream::{self, Endpoint, RequestBody, Tee};

/// `Retry-After` of a shed request, in seconds: in-flight requests usually finish well within it.
const OVERLOADED_RETRY_AFTER: &str = "1";

/// The request handler, shared by every connection.
#[derive(Debug)]
pub struct Proxy {
    routing: Arc<Routing>,
}

impl Proxy {
    /// A handler reading tables from `routing`.
    pub fn new(routing: Arc<Routing>) -> Self {
        Self { routing }
    }

    /// Takes a connection slot, or `None` when `max_connections` are open.
    pub fn admit_connection(&self) -> Option<ConnectionPermit> {
        let max = self.routing.load().limits.max_connections;
        self.routing.metrics().admission().try_connection(max)
    }

    /// Handles one request; errors become the status of [`ProxyError::status`]. Every request
    /// that reached a version is recorded in that version's metrics exactly once: here for the
    /// proxy's own answers, when the response body ends for upstream answers, and as `error` if
    /// the client goes away first (hyper then drops this future, and with it the [`Outcome`]).
    /// Past `max_in_flight`, a request is answered `503` before it is even routed.
    /// `checked`: the server's verdict on the head's fields (`None`: the handler scans them).
    pub async fn handle(
        &self,
        request: Request<ClientBody>,
        client: &ClientInfo,
        checked: Option<Checked>,
    ) -> Response<ResponseBody> {
        let method = request.method().clone();
        let http1 = request.version() < http::Version::HTTP_2;
        // The whole request runs on the table it started with, even if a new one is published.
        let table = self.routing.load_full();
        let max_in_flight = table.limits.max_in_flight;
        let Some(permit) = self.routing.metrics().admission().try_request(max_in_flight) else {
            tracing::debug!(%method, max_in_flight, "max_in_flight reached: request shed");
            return error_response(&ProxyError::Overloaded(max_in_flight), http1);
        };
        let mut outcome = Outcome {
            start: Instant::now(),
            chosen: None,
            report: None,
        };
        match self.handle_inner(table, request, client, checked, &mut outcome).await {
            Ok(mut response) => {
                // In flight until the body has been sent, not only until the head.
                response.body_mut().hold(permit);
                response
            }
            Err(error) => {
                tracing::debug!(%method, %error, source = ?error.source_side(), "request failed");
                // The proxy's own answer is no upstream answer to compare a shadow with: dropping
                // the report skips the comparison.
                drop(outcome.report.take());
                if let Some(request) = outcome.chosen.take() {
                    let metrics = request.metrics();
                    let (status, bytes) = (error.status(), error.body().len() as u64);
                    metrics.record(Some(status), outcome.start.elapsed(), status.is_server_error(), bytes);
                    if let Some(kind) = error.upstream_kind() {
                        metrics.upstream_error(kind);
                    }
                }
                error_response(&error, http1)
            }
        }
    }

    async fn handle_inner(
        &self,
        table: Arc<RoutingTable>,
        mut request: Request<ClientBody>,
        client: &ClientInfo,
        checked: Option<Checked>,
        outcome: &mut Outcome,
    ) -> Result<Response<ResponseBody>, ProxyError> {
        let checked = match checked {
            Some(checked) => checked,
            None => FieldScan::of(request.headers())
                .check(request.version())
                .map_err(ProxyError::BadRequest)?,
        };
        let host = request_host(&request);
        let host_str = host.as_ref().and_then(|h| h.to_str().ok());
        let service = router::route(&table, host_str, request.uri().path()).ok_or(ProxyError::NoService)?;
        let choice =
            split::choose(service, request.headers()).ok_or_else(|| ProxyError::NoVersion(service.name.clone()))?;
        let version = &service.versions[choice.version];
        outcome.chosen = Some(version.metrics.begin());
        let limit = table.limits.max_request_body;
        check_content_length(&request, limit)?;

        let upgrade = forward::is_upgrade(request.headers()) && request.version() == http::Version::HTTP_11;
        if upgrade && version.protocol == Protocol::Http2 {
            return Err(ProxyError::UpgradeUnsupported);
        }
        let client_upgrade = upgrade.then(|| server::on_upgrade(&mut request));

        let (mut parts, body) = request.into_parts();
        // Hop-by-hop for this request, so to be removed from its trailers too (if it has a body).
        let connection_named = if checked.hop_by_hop && !http_body::Body::is_end_stream(&body) {
            forward::connection_named(&parts.headers)
        } else {
            Vec::new()
        };
        // An upgrade has a `Connection` field, so it is among these.
        if checked.hop_by_hop {
            forward::remove_hop_by_hop(&mut parts.headers, upgrade);
        }
        // Only sluice marks copies: a client must not make the primary think it is a shadow,
        // nor turn flags on: the upstream sees only sluice's decision (shadows get it too).
        if checked.sluice_fields {
            parts.headers.remove(&mirror::X_SLUICE_SHADOW);
            parts.headers.remove(&flags::X_SLUICE_FLAGS);
        }
        if let Some(value) = service.flags.header(choice.flags) {
            parts.headers.insert(&flags::X_SLUICE_FLAGS, value);
        }
        let client_version = parts.version;
        // An upgrade (WebSocket) is a conversation, not a request: it is never copied.
        let tee = if service.mirrors.is_empty() || upgrade {
            None
        } else {
            mirror_request(
                service,
                &version.name,
                &parts,
                &Forwarded {
                    client,
                    host: host.as_ref(),
                },
                http_body::Body::is_end_stream(&body),
                &table,
                outcome,
            )
        };
        let outgoing = Request::from_parts(parts, RequestBody::teed(body, limit, tee, connection_named));

        let (mut response, lease, endpoint) = send_with_retry(
            &table,
            version,
            outgoing,
            host,
            client,
            service
                .outlier_detection
                .as_ref()
                .map(|spec| (spec, &self.routing.registries().health_events)),
        )
        .await?;

        if let Some(client_upgrade) = client_upgrade.filter(|_| response.status() == StatusCode::SWITCHING_PROTOCOLS) {
            forward::remove_hop_by_hop_from_answer(response.headers_mut(), true);
            let (parts, body) = response.into_parts();
            let upstream_upgrade = body.into_upgrade().ok_or_else(|| ProxyError::Reset {
                endpoint: endpoint.label.clone(),
                cause: "101 answer without a connection to switch".into(),
            })?;
            // The tunnel outlives its HTTP connection (and that one's slot): it counts as an
            // open connection of its own until it ends.
            let tracked = self.routing.metrics().admission().track_connection();
            tokio::spawn(tunnel(
                client_upgrade,
                upstream_upgrade,
                endpoint.label.clone(),
                tracked,
            ));
            drop(lease);
            if let Some(request) = outcome.chosen.take() {
                let metrics = request.metrics();
                metrics.record(Some(parts.status), outcome.start.elapsed(), false, 0);
            }
            return Ok(Response::from_parts(parts, ResponseBody::empty()));
        }

        let (mut parts, body) = response.into_parts();
        if body.has_hop_by_hop() {
            forward::remove_hop_by_hop_from_answer(&mut parts.headers, false);
        }
        if service.expose_version {
            parts.headers.insert(&forward::X_SLUICE_VERSION, version.header.clone());
        }
        if let (true, Some(cookie)) = (choice.set_cookie, &version.set_cookie) {
            parts.headers.append(header::SET_COOKIE, cookie.clone());
        }
        parts.version = client_version;
        let completion = outcome
            .chosen
            .take()
            .map(|request| Completion::new(request, outcome.start, parts.status, outcome.report.take()));
        Ok(Response::from_parts(
            parts,
            ResponseBody::Upstream {
                inner: body,
                lease,
                completion,
                permit: None,
            },
        ))
    }
}

/// The proxy's own answer to `error`: its status and a short plain-text body.
fn error_response(error: &ProxyError, http1: bool) -> Response<ResponseBody> {
    let mut response = Response::new(ResponseBody::full(error.body()));
    *response.status_mut() = error.status();
    let headers = response.headers_mut();
    if http1 && matches!(error, ProxyError::BadRequest(_)) {
        // Whatever follows a malformed request on this connection cannot be trusted.
        headers.insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    if matches!(error, ProxyError::Overloaded(_)) {
        headers.insert(header::RETRY_AFTER, HeaderValue::from_static(OVERLOADED_RETRY_AFTER));
    }
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

/// What a request has reached so far, for its metrics.
struct Outcome {
    start: Instant,
    /// The request's in-flight count in the chosen version's metrics, once a version is chosen.
    chosen: Option<metrics::InflightGuard>,
    /// Where to report the answer to mirrors that compare it, and whether to hash the body.
    report: Option<(PrimaryReport, bool)>,
}

impl Drop for Outcome {
    fn drop(&mut self) {
        // Still set: the request future was dropped before any response (the client left).
        if let Some(request) = self.chosen.take() {
            let metrics = request.metrics();
            metrics.record(None, self.start.elapsed(), false, 0);
        }
    }
}

/// The received host: the URI authority (HTTP/2, absolute-form) or the `Host` header.
fn request_host(request: &Request<ClientBody>) -> Option<HeaderValue> {
    match request.uri().authority() {
        Some(authority) => HeaderValue::from_str(authority.as_str()).ok(),
        None => request.headers().get(header::HOST).cloned(),
    }
}

/// Refuses a body announced larger than the limit before anything is sent upstream. The server
/// codecs (sluice's and hyper's, both protocols) refuse an invalid `Content-Length` themselves
/// and give a body of valid length as its exact size.
fn check_content_length(request: &Request<ClientBody>, limit: u64) -> Result<(), ProxyError> {
    match http_body::Body::size_hint(request.body()).exact() {
        Some(length) if length > limit => Err(ProxyError::BodyTooLarge(limit)),
        _ => Ok(()),
    }
}

/// Sets the URI (and `Host`) the way `endpoint`'s protocol wants them: origin form with a
/// `Host` header for HTTP/1.1, absolute form with `:authority` for HTTP/2.
pub(crate) fn target_request(request: &mut Request<RequestBody>, endpoint: &Endpoint, host: Option<&HeaderValue>) {
    let path = request
        .uri()
        .path_and_query()
        .cloned()
        .unwrap_or_else(|| PathAndQuery::from_static("/"));
    match endpoint.protocol() {
        Protocol::Http1 => {
            // An absolute-form or HTTP/2 target names the host (RFC 9112 §3.2.2): route and
            // forward with that one, whatever a Host header says.
            if request.uri().authority().is_some() {
                if let Some(host) = host {
                    request.headers_mut().insert(header::HOST, host.clone());
                }
            }
            if request.uri().scheme().is_some() || request.uri().authority().is_some() {
                *request.uri_mut() = Uri::from(path);
            }
            if let (false, Some(host)) = (request.headers().contains_key(header::HOST), host) {
                request.headers_mut().insert(header::HOST, host.clone());
            }
        }
        Protocol::Http2 => {
            let authority = host
                .and_then(|h| http::uri::Authority::try_from(h.as_bytes()).ok())
                .unwrap_or_else(|| endpoint.authority().clone());
            let mut parts = http::uri::Parts::default();
            parts.scheme = Some(if endpoint.addr.tls { Scheme::HTTPS } else { Scheme::HTTP });
            parts.authority = Some(authority);
            parts.path_and_query = Some(path);
            if let Ok(uri) = Uri::from_parts(parts) {
                *request.uri_mut() = uri;
            }
            request.headers_mut().remove(header::HOST);
        }
    }
}

/// Sends to a P2C-chosen endpoint; if it cannot be reached and nothing was sent, once more to
/// another endpoint of the same version. Bounded as a whole by `response_headers`.
async fn send_with_retry(
    table: &RoutingTable,
    version: &Version,
    mut request: Request<RequestBody>,
    host: Option<HeaderValue>,
    client: &ClientInfo,
    outlier: Option<(&crate::config::OutlierSpec, &crate::health::Events)>,
) -> Result<(Response<upstream::UpstreamBody>, upstream::Lease, Arc<Endpoint>), ProxyError> {
    let limits = &table.limits;
    // Passive outlier detection sees every attempt's outcome.
    let observe = |endpoint: &Arc<Endpoint>, failed: bool| {
        if let Some((spec, events)) = outlier {
            crate::health::observe(endpoint, &version.endpoints, spec, failed, events);
        }
    };
    let no_version = || ProxyError::NoVersion(version.name.clone());
    let mut endpoint = Arc::clone(upstream::pick(&version.endpoints, None).ok_or_else(no_version)?);
    let deadline = tokio::time::Instant::now() + limits.response_headers;
    let timeout = |endpoint: &Arc<Endpoint>| ProxyError::Timeout {
        endpoint: endpoint.label.clone(),
        timeout: limits.response_headers,
    };

    let forwarded = Forwarded {
        client,
        host: host.as_ref(),
    };
    for attempt in 0..2 {
        target_request(&mut request, &endpoint, host.as_ref());
        let failure = match Endpoint::send(endpoint.begin(), request, limits, deadline, Some(&forwarded)).await {
            Ok((response, lease)) => {
                observe(&endpoint, response.status().is_server_error());
                return Ok((response, lease, endpoint));
            }
            Err(failure) => failure,
        };
        // A body over the limit is the client's doing, not the endpoint's.
        let endpoint_failed = !matches!(failure.kind, upstream::FailureKind::Client(_));
        observe(&endpoint, endpoint_failed);
        let retryable = matches!(failure.kind, upstream::FailureKind::Connect(_)) && attempt == 0;
        let next = retryable
            .then(|| upstream::pick(&version.endpoints, Some(&endpoint)))
            .flatten();
        match (failure.unsent, next) {
            (Some(unsent), Some(next)) => {
                tracing::debug!(endpoint = %endpoint.label, retry = %next.label, "connect failed; retrying once");
                request = unsent;
                endpoint = Arc::clone(next);
            }
            (unsent, _) => {
                let failure = upstream::SendFailure {
                    kind: failure.kind,
                    unsent,
                };
                return Err(ProxyError::from_send(failure, endpoint.label.clone(), limits));
            }
        }
    }
    Err(timeout(&endpoint))
}

/// Copies bytes both ways between an upgraded client and upstream connection, starting with
/// what each side sent along with the switch.
async fn tunnel(
    client: ClientUpgrade,
    upstream: upstream::Upgraded,
    endpoint: Arc<str>,
    _connection: ConnectionPermit,
) {
    let ended = match client {
        ClientUpgrade::Hyper(client) => match client.await {
            Ok(client) => splice(TokioIo::new(client), bytes::Bytes::new(), upstream).await,
            Err(e) => Err(std::io::Error::other(e)),
        },
        ClientUpgrade::H1(client) => match client.await {
            Ok(client) => splice(client.io, client.read, upstream).await,
            Err(_) => Err(std::io::Error::other("the client connection closed before the switch")),
        },
    };
    if let Err(e) = ended {
        tracing::debug!(%endpoint, error = %e, "upgraded connection ended");
    }
}

/// Joins `client` (which sent `early` past its request head) and `upstream`.
async fn splice(
    mut client: impl AsyncRead + AsyncWrite + Unpin,
    early: bytes::Bytes,
    upstream: upstream::Upgraded,
) -> std::io::Result<()> {
    let mut io = upstream.io;
    client.write_all(&upstream.read).await?;
    io.write_all(&early).await?;
    tokio::io::copy_bidirectional(&mut client, &mut io).await?;
    Ok(())
}

/// Picks this request's mirrors and starts their background task; returns the tee that copies
/// the body for them, if any mirror fired.
fn mirror_request(
    service: &Service,
    primary: &str,
    parts: &http::request::Parts,
    forwarded: &Forwarded<'_>,
    body_less: bool,
    table: &RoutingTable,
    outcome: &mut Outcome,
) -> Option<Tee> {
    let plans = mirror::select(service, primary);
    if plans.is_empty() {
        return None;
    }
    let (tee, copy) = if body_less {
        (None, None)
    } else {
        let (tee, copy) = Tee::new(mirror::max_body(&plans));
        (Some(tee), Some(copy))
    };
    let primary = mirror::compares(&plans).map(|compare| {
        let (report, primary) = tokio::sync::watch::channel(None);
        outcome.report = Some((report, compare == crate::config::Compare::Body));
        primary
    });
    mirror::spawn(plans, parts, forwarded, copy, primary, table.limits);
    tee
}
