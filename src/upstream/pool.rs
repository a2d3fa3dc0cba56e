//! Upstream connections: a bounded, lock-free queue of idle HTTP/1.1 connections per endpoint
//! (driven inline by [`super::h1`]), or one shared multiplexed HTTP/2 connection (hyper's
//! `client::conn`).
//!
//! Requests are sent in origin form with the client's `Host`. A pooled connection that turns
//! out to be closed gives the request back, and it goes out on a fresh connection instead.

use std::error::Error as StdError;
use std::pin::Pin;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use arc_swap::ArcSwapOption;
use bytes::Bytes;
use crossbeam_queue::ArrayQueue;
use http::header::HeaderName;
use http::{Request, Response};
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use hyper::client::conn::{http2, TrySendError};
use hyper_util::rt::{TokioExecutor, TokioIo};

use super::h1::{self, H1Body, Upgraded};
use super::{Endpoint, InflightGuard};
use crate::config::{Limits, Protocol};
use crate::forward::Forwarded;
use crate::server::ClientBody;

/// Idle HTTP/1.1 connections kept per endpoint; more are closed rather than queued.
const MAX_IDLE_PER_ENDPOINT: usize = 1024;

type BoxError = Box<dyn StdError + Send + Sync>;

/// The request body sent upstream: the client's body, cut off past the size limit and
/// optionally teed into a bounded copy for mirrors; or a complete buffered body (a shadow copy).
#[derive(Debug)]
pub struct RequestBody {
    kind: BodyKind,
}

#[derive(Debug)]
enum BodyKind {
    Client {
        inner: ClientBody,
        remaining: u64,
        /// Boxed: rarely there, and the body moves with its request.
        extra: Option<Box<Extra>>,
    },
    Buffered(Option<Bytes>),
}

/// What few request bodies need.
#[derive(Debug, Default)]
struct Extra {
    tee: Option<Tee>,
    /// The fields the head's `Connection` named: hop-by-hop for this request, and so removed
    /// from its trailers too.
    connection_named: Vec<HeaderName>,
    /// Set when the body fails by the client's doing ([`FAULT_BROKEN`], [`FAULT_TOO_LARGE`]),
    /// for a sender that does not report the body's own error (see
    /// [`RequestBody::watch_client_fault`]).
    fault: Option<Arc<AtomicU8>>,
}

/// The client's body broke (a bad chunk, the client left mid-upload).
const FAULT_BROKEN: u8 = 1;
/// The client's body passed `max_request_body`.
const FAULT_TOO_LARGE: u8 = 2;

/// A bounded copy of a request body taken while it streams to the primary. It hands over the
/// copy (`Some`) when the body ends, or `None` the moment the body passes `limit`; if the body
/// never ends, the receiver sees the sender dropped. The bytes are copied, so the copy holds
/// only its own length, never the connection's read buffers.
#[derive(Debug)]
pub struct Tee {
    copy: bytes::BytesMut,
    limit: u64,
    /// The length the request declared, if any: the copy is complete once it has that much,
    /// even if the end of the stream is never polled.
    declared: Option<u64>,
    done: Option<tokio::sync::oneshot::Sender<Option<Bytes>>>,
}

impl Tee {
    /// A tee keeping at most `limit` bytes, and the receiver of its copy.
    pub fn new(limit: u64) -> (Self, tokio::sync::oneshot::Receiver<Option<Bytes>>) {
        let (done, copy) = tokio::sync::oneshot::channel();
        (
            Self {
                copy: bytes::BytesMut::new(),
                limit,
                declared: None,
                done: Some(done),
            },
            copy,
        )
    }

    fn data(&mut self, data: &Bytes) {
        if self.done.is_none() {
            return;
        }
        if self.copy.len() as u64 + data.len() as u64 > self.limit {
            // Over the limit: give up the copy now, so the mirror's slot is freed at once.
            self.copy = bytes::BytesMut::new();
            if let Some(done) = self.done.take() {
                let _ = done.send(None);
            }
            return;
        }
        self.copy.extend_from_slice(data);
        if self.declared == Some(self.copy.len() as u64) {
            self.finish();
        }
    }

    fn finish(&mut self) {
        if let Some(done) = self.done.take() {
            let _ = done.send(Some(std::mem::take(&mut self.copy).freeze()));
        }
    }
}

impl RequestBody {
    /// Wraps a client body that may carry at most `limit` bytes, keeping a bounded copy in
    /// `tee`. `connection_named`: the fields the head's `Connection` named, removed from the
    /// trailers too.
    pub fn teed(inner: ClientBody, limit: u64, mut tee: Option<Tee>, connection_named: Vec<HeaderName>) -> Self {
        if let Some(tee) = tee.as_mut() {
            tee.declared = inner.size_hint().exact();
        }
        if inner.is_end_stream() {
            // No body: hyper may never poll it, so hand over the (empty) copy now.
            if let Some(tee) = tee.as_mut() {
                tee.finish();
            }
        }
        let extra = (tee.is_some() || !connection_named.is_empty()).then(|| {
            Box::new(Extra {
                tee,
                connection_named,
                fault: None,
            })
        });
        Self {
            kind: BodyKind::Client {
                inner,
                remaining: limit,
                extra,
            },
        }
    }

    /// A flag set when this body fails by the client's doing, for a sender that does not hand
    /// back the body's own error: hyper's HTTP/2 client resets the stream and answers with the
    /// reset, which would read as the upstream's fault. `None` for a body that is already
    /// complete; allocates only for a client body still to come.
    pub(crate) fn watch_client_fault(&mut self) -> Option<Arc<AtomicU8>> {
        match &mut self.kind {
            BodyKind::Client { inner, extra, .. } if !inner.is_end_stream() => {
                let flag = Arc::new(AtomicU8::new(0));
                extra.get_or_insert_with(Box::default).fault = Some(Arc::clone(&flag));
                Some(flag)
            }
            _ => None,
        }
    }

    /// A complete body.
    pub fn buffered(bytes: Bytes) -> Self {
        Self {
            kind: BodyKind::Buffered((!bytes.is_empty()).then_some(bytes)),
        }
    }
}

impl Body for RequestBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let (inner, remaining, extra) = match &mut self.kind {
            BodyKind::Buffered(bytes) => return Poll::Ready(bytes.take().map(|b| Ok(Frame::data(b)))),
            BodyKind::Client {
                inner,
                remaining,
                extra,
            } => (inner, remaining, extra),
        };
        match Pin::new(&mut *inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(mut frame))) => {
                if let Some(trailers) = frame.trailers_mut() {
                    let connection_named = extra.as_ref().map_or(&[][..], |e| &e.connection_named[..]);
                    crate::forward::clean_request_trailers(trailers, connection_named);
                    // Trailers end a body; the sender may not poll for the end after them.
                    if let Some(tee) = extra.as_mut().and_then(|e| e.tee.as_mut()) {
                        tee.finish();
                    }
                } else if let Some(data) = frame.data_ref() {
                    let len = data.len() as u64;
                    if len > *remaining {
                        *remaining = 0;
                        note_fault(extra, FAULT_TOO_LARGE);
                        return Poll::Ready(Some(Err(Box::new(BodyTooLarge))));
                    }
                    *remaining -= len;
                    if let Some(tee) = extra.as_mut().and_then(|e| e.tee.as_mut()) {
                        tee.data(data);
                        // With a known length hyper stops polling at the last byte and never
                        // sees the end: finish the copy as soon as the body says it is done.
                        if inner.is_end_stream() {
                            tee.finish();
                        }
                    }
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => {
                note_fault(extra, FAULT_BROKEN);
                Poll::Ready(Some(Err(e)))
            }
            Poll::Ready(None) => {
                if let Some(tee) = extra.as_mut().and_then(|e| e.tee.as_mut()) {
                    tee.finish();
                }
                Poll::Ready(None)
            }
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.kind {
            BodyKind::Client { inner, .. } => inner.is_end_stream(),
            BodyKind::Buffered(bytes) => bytes.is_none(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            BodyKind::Client { inner, .. } => inner.size_hint(),
            BodyKind::Buffered(bytes) => SizeHint::with_exact(bytes.as_ref().map_or(0, |b| b.len() as u64)),
        }
    }
}

/// Records a client fault for whoever watches this body.
fn note_fault(extra: &Option<Box<Extra>>, fault: u8) {
    if let Some(flag) = extra.as_ref().and_then(|e| e.fault.as_ref()) {
        flag.store(fault, Ordering::Relaxed);
    }
}

/// The client sent more than `max_request_body`.
#[derive(Debug, thiserror::Error)]
#[error("request body exceeds the configured limit")]
pub struct BodyTooLarge;

/// True when `error` (or anything it wraps) is the body limit being exceeded.
pub fn is_body_too_large(error: &(dyn StdError + 'static)) -> bool {
    let mut current = Some(error);
    while let Some(e) = current {
        if e.is::<BodyTooLarge>() {
            return true;
        }
        current = e.source();
    }
    false
}

struct Idle {
    conn: Box<h1::Conn>,
    since: Instant,
}

/// An endpoint's connections.
pub(super) struct Pool {
    idle: Option<ArrayQueue<Idle>>,
    h2: ArcSwapOption<http2::SendRequest<RequestBody>>,
}

impl std::fmt::Debug for Pool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pool")
            .field("idle", &self.idle.as_ref().map(ArrayQueue::len))
            .finish()
    }
}

impl Pool {
    pub(super) fn new(protocol: Protocol) -> Self {
        match protocol {
            Protocol::Http1 => Self {
                idle: Some(ArrayQueue::new(MAX_IDLE_PER_ENDPOINT)),
                h2: ArcSwapOption::empty(),
            },
            Protocol::Http2 => Self {
                idle: None,
                h2: ArcSwapOption::empty(),
            },
        }
    }

    /// Closes idle connections older than `idle` (and dead ones), keeping the rest in order.
    /// Requests may pop and push concurrently; the queue is lock-free.
    pub(super) fn sweep(&self, idle: std::time::Duration) -> usize {
        let Some(queue) = self.idle.as_ref() else { return 0 };
        let mut closed = 0;
        for _ in 0..queue.len() {
            let Some(mut entry) = queue.pop() else { break };
            if entry.since.elapsed() < idle && entry.conn.is_usable() {
                if queue.push(entry).is_err() {
                    closed += 1;
                }
            } else {
                closed += 1;
            }
        }
        closed
    }

    /// A pooled HTTP/1.1 connection that is still open and not idle for too long.
    fn take_idle(&self, limits: &Limits) -> Option<Box<h1::Conn>> {
        let idle = self.idle.as_ref()?;
        while let Some(mut entry) = idle.pop() {
            if entry.since.elapsed() < limits.idle && entry.conn.is_usable() {
                return Some(entry.conn);
            }
        }
        None
    }
}

/// Why a request got no response. `unsent` gives the request back when nothing of it reached
/// the upstream, so it may be retried elsewhere.
#[derive(Debug)]
pub struct SendFailure {
    /// What went wrong.
    pub kind: FailureKind,
    /// The request, if it was never sent.
    pub unsent: Option<Request<RequestBody>>,
}

/// Kinds of upstream failure.
#[derive(Debug)]
pub enum FailureKind {
    /// TCP connect or protocol handshake failed or timed out.
    Connect(BoxError),
    /// The connection failed after the request was (partly) sent, or the answer was not HTTP.
    Reset(BoxError),
    /// The client's request body failed (malformed, cut off, or over `max_request_body`).
    Client(BoxError),
    /// No answer head by the deadline (`response_headers`).
    Timeout,
}

/// Keeps an endpoint's in-flight count until the answer is done. (An HTTP/1.1 answer's body
/// holds the count itself, and returns its connection to the pool.)
#[derive(Debug)]
pub struct Lease {
    _guard: Option<InflightGuard>,
}

/// An upstream answer's body.
#[derive(Debug)]
pub enum UpstreamBody {
    /// Read inline from an HTTP/1.1 connection.
    H1(H1Body),
    /// A stream of a shared HTTP/2 connection.
    H2(Incoming),
}

impl UpstreamBody {
    /// For a `101 Switching Protocols` answer from an HTTP/1.1 upstream: the connection.
    pub fn into_upgrade(self) -> Option<Upgraded> {
        match self {
            UpstreamBody::H1(body) => body.into_upgrade(),
            UpstreamBody::H2(_) => None,
        }
    }

    /// Whether the answer's head may have hop-by-hop fields to remove (the HTTP/1.1 client
    /// knows; for HTTP/2, look).
    pub fn has_hop_by_hop(&self) -> bool {
        match self {
            UpstreamBody::H1(body) => body.hop_by_hop,
            UpstreamBody::H2(_) => true,
        }
    }
}

impl Body for UpstreamBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.get_mut() {
            UpstreamBody::H1(body) => Pin::new(body).poll_frame(cx),
            UpstreamBody::H2(body) => Pin::new(body).poll_frame(cx).map_err(|e| Box::new(e) as BoxError),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            UpstreamBody::H1(body) => body.is_end_stream(),
            UpstreamBody::H2(body) => body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            UpstreamBody::H1(body) => body.size_hint(),
            UpstreamBody::H2(body) => body.size_hint(),
        }
    }
}

impl SendFailure {
    fn connect(error: BoxError, request: Request<RequestBody>) -> Self {
        Self {
            kind: FailureKind::Connect(error),
            unsent: Some(request),
        }
    }

    /// An HTTP/2 send that failed: the client's body, as `fault` says (hyper's client reports
    /// only the stream's reset, whichever side caused it), or else the upstream.
    fn h2(mut error: TrySendError<Request<RequestBody>>, fault: Option<&AtomicU8>) -> Self {
        let unsent = error.take_message();
        let error = error.into_error();
        let kind = match fault.map(|flag| flag.load(Ordering::Relaxed)) {
            Some(FAULT_TOO_LARGE) => FailureKind::Client(Box::new(BodyTooLarge)),
            Some(FAULT_BROKEN) => FailureKind::Client(Box::new(error)),
            _ => FailureKind::Reset(Box::new(error)),
        };
        Self { kind, unsent }
    }

    fn timeout() -> Self {
        Self {
            kind: FailureKind::Timeout,
            unsent: None,
        }
    }

    fn h1(failure: h1::Failure) -> Self {
        let kind = match failure {
            h1::Failure::Timeout => FailureKind::Timeout,
            h1::Failure::Upstream(e) => FailureKind::Reset(e),
            h1::Failure::Client(e) => FailureKind::Client(e),
            h1::Failure::Stale(unsent) => {
                return Self {
                    kind: FailureKind::Connect("the new connection closed at once".into()),
                    unsent: Some(*unsent),
                }
            }
        };
        Self { kind, unsent: None }
    }
}

impl Endpoint {
    /// Sends `request` to this endpoint over a pooled or new connection; fails with
    /// [`FailureKind::Timeout`] if the answer's head is not in by `deadline`.
    /// `forwarded`: the `X-Forwarded-*` fields to add on the way.
    pub async fn send(
        guard: InflightGuard,
        mut request: Request<RequestBody>,
        limits: &Limits,
        deadline: tokio::time::Instant,
        forwarded: Option<&Forwarded<'_>>,
    ) -> Result<(Response<UpstreamBody>, Lease), SendFailure> {
        let endpoint = guard.endpoint();
        if endpoint.protocol == Protocol::Http2 {
            let sent = tokio::time::timeout_at(deadline, endpoint.send_h2(request, limits, forwarded)).await;
            let response = sent.unwrap_or(Err(SendFailure::timeout()))?;
            return Ok((response.map(UpstreamBody::H2), Lease { _guard: Some(guard) }));
        }
        // The HTTP/1.1 body holds the guard, and gives its connection back to the guard's endpoint.
        let attach = |mut response: Response<H1Body>, guard: InflightGuard| {
            response.body_mut().attach(guard);
            (response.map(UpstreamBody::H1), Lease { _guard: None })
        };

        if let Some(conn) = endpoint.pool.take_idle(limits) {
            match h1::send(conn, request, true, deadline, forwarded).await {
                Ok(response) => return Ok(attach(response, guard)),
                // Closed before it could use our request: send it on a fresh connection.
                Err(h1::Failure::Stale(unsent)) => request = *unsent,
                Err(failure) => return Err(SendFailure::h1(failure)),
            }
        }
        // Boxed: connecting is rare once the pool is warm, and its state would otherwise make
        // every request's future (moved and, for HTTP/2 clients, allocated per request) larger.
        let io = match tokio::time::timeout_at(deadline, Box::pin(endpoint.open(limits.connect))).await {
            Ok(Ok(io)) => io,
            Ok(Err(e)) => return Err(SendFailure::connect(e, request)),
            Err(_) => return Err(SendFailure::timeout()),
        };
        match h1::send(h1::Conn::new(io, deadline), request, false, deadline, forwarded).await {
            Ok(response) => Ok(attach(response, guard)),
            Err(failure) => Err(SendFailure::h1(failure)),
        }
    }

    async fn send_h2(
        &self,
        mut request: Request<RequestBody>,
        limits: &Limits,
        forwarded: Option<&Forwarded<'_>>,
    ) -> Result<Response<Incoming>, SendFailure> {
        *request.version_mut() = http::Version::HTTP_2;
        let mut sender = match self.h2_sender(limits).await {
            Ok(sender) => sender,
            Err(e) => return Err(SendFailure::connect(e, request)),
        };
        // Only now: a request that could not be sent goes back unchanged, for another try.
        if let Some(forwarded) = forwarded {
            forwarded.apply(request.headers_mut());
        }
        let fault = request.body_mut().watch_client_fault();
        let sent = sender.try_send_request(request).await;
        if sent.is_err() && sender.is_closed() {
            // Forget the dead connection so the next request opens a new one. A failed
            // stream on a live connection keeps it.
            self.pool.h2.store(None);
        }
        sent.map_err(|error| SendFailure::h2(error, fault.as_deref()))
    }

    /// Puts a connection whose answer is complete back in the pool (or closes it, if full).
    pub(super) fn give_back(&self, conn: Box<h1::Conn>) {
        if let Some(idle) = self.pool.idle.as_ref() {
            let _ = idle.push(Idle {
                conn,
                since: Instant::now(),
            });
        }
    }

    /// The shared HTTP/2 connection, opened on first use or after it closed.
    async fn h2_sender(&self, limits: &Limits) -> Result<http2::SendRequest<RequestBody>, BoxError> {
        if let Some(sender) = self.pool.h2.load().as_deref() {
            if !sender.is_closed() {
                return Ok(sender.clone());
            }
        }
        // Boxed: the handshakes' state would otherwise make every request's future larger.
        Box::pin(self.connect_h2(limits)).await
    }

    /// Opens the shared HTTP/2 connection.
    async fn connect_h2(&self, limits: &Limits) -> Result<http2::SendRequest<RequestBody>, BoxError> {
        // One deadline for the connect, TLS and HTTP/2 handshakes together, as `connect` promises.
        let connect = async {
            let io = self.open(limits.connect).await?;
            let handshake = http2::handshake(TokioExecutor::new(), TokioIo::new(io)).await?;
            Ok::<_, BoxError>(handshake)
        };
        let (sender, connection) = tokio::time::timeout(limits.connect, connect)
            .await
            .map_err(|_| format!("HTTP/2 connect timed out after {:?}", limits.connect))??;
        let label = Arc::clone(&self.label);
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!(endpoint = %label, error = %e, "upstream HTTP/2 connection ended");
            }
        });
        self.pool.h2.store(Some(Arc::new(sender.clone())));
        Ok(sender)
    }

    /// The `host:port` authority of this endpoint.
    pub fn authority(&self) -> &http::uri::Authority {
        &self.authority
    }

    /// The upstream protocol.
    pub fn protocol(&self) -> Protocol {
        self.protocol
    }
}
