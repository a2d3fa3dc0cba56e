//! The response body sent to the client: an upstream body streamed frame by frame (trailers
//! included), or a short synthetic body for the proxy's own answers.

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Instant;

use bytes::Bytes;
use http::StatusCode;
use http_body::{Body, Frame, SizeHint};

use crate::admission::RequestPermit;
use crate::metrics::{ErrorKind, InflightGuard};
use crate::mirror::{BodyHash, PrimaryOutcome, PrimaryReport};
use crate::upstream::{Lease, UpstreamBody};

/// Records an upstream answer in its version's metrics once the body is done (or dropped).
#[derive(Debug)]
pub struct Completion {
    /// The request's in-flight count, and through it the version's metrics.
    request: InflightGuard,
    start: Instant,
    status: StatusCode,
    failed: bool,
    bytes: u64,
    report: Option<(PrimaryReport, Option<BodyHash>)>,
    ended: bool,
}

impl Completion {
    /// Starts tracking an answer with `status` to a request received at `start`; with `report`,
    /// also reports the status (and, if asked, a hash of the body) to the mirrors that compare
    /// this request's answers.
    pub fn new(
        request: InflightGuard,
        start: Instant,
        status: StatusCode,
        report: Option<(PrimaryReport, bool)>,
    ) -> Self {
        let report = report.map(|(tx, hash)| (tx, hash.then(BodyHash::default)));
        Self {
            request,
            start,
            status,
            failed: false,
            bytes: 0,
            report,
            ended: false,
        }
    }
}

impl Drop for Completion {
    fn drop(&mut self) {
        let server_error = self.status.is_server_error();
        self.request.metrics().record(
            Some(self.status),
            self.start.elapsed(),
            server_error || self.failed,
            self.bytes,
        );
        if server_error {
            self.request.metrics().upstream_error(ErrorKind::Status);
        }
        if self.failed {
            self.request.metrics().upstream_error(ErrorKind::Reset);
        }
        // Only a body that ended intact is compared; a cut-short one would look like a mismatch.
        if let (Some((report, hash)), true, false) = (self.report.take(), self.ended, self.failed) {
            let _ = report.send(Some(PrimaryOutcome {
                status: self.status,
                body_hash: hash.map(BodyHash::finish),
            }));
        }
    }
}

/// A response body.
#[derive(Debug)]
pub enum ResponseBody {
    /// Streamed from the upstream; the lease returns the connection to the pool when done.
    Upstream {
        /// The upstream's body.
        inner: UpstreamBody,
        /// Held until this body is dropped.
        lease: Lease,
        /// Records the request's metrics when this body ends or is dropped.
        completion: Option<Completion>,
        /// The request's `max_in_flight` slot, freed when this body is done.
        permit: Option<RequestPermit>,
    },
    /// A complete body (the proxy's own answers); `None` once sent.
    Full(Option<Bytes>),
}

impl ResponseBody {
    /// A complete body.
    pub fn full(bytes: impl Into<Bytes>) -> Self {
        ResponseBody::Full(Some(bytes.into()))
    }

    /// An empty body.
    pub fn empty() -> Self {
        ResponseBody::Full(None)
    }

    /// Keeps the request's in-flight slot until an upstream body is done; a complete body is
    /// already in memory, so its slot is freed at once.
    pub fn hold(&mut self, slot: RequestPermit) {
        if let ResponseBody::Upstream { permit, .. } = self {
            *permit = Some(slot);
        }
    }
}

impl Body for ResponseBody {
    type Data = Bytes;
    type Error = Box<dyn std::error::Error + Send + Sync>;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        match self.get_mut() {
            ResponseBody::Upstream { inner, completion, .. } => {
                let polled = Pin::new(&mut *inner).poll_frame(cx);
                if let Some(completion) = completion {
                    match &polled {
                        Poll::Ready(Some(Ok(frame))) => {
                            if let Some(data) = frame.data_ref() {
                                completion.bytes += data.len() as u64;
                                if let Some((_, Some(hash))) = completion.report.as_mut() {
                                    hash.update(data);
                                }
                            }
                            // hyper stops polling at a known length's last byte.
                            completion.ended |= inner.is_end_stream();
                        }
                        Poll::Ready(Some(Err(_))) => completion.failed = true,
                        Poll::Ready(None) => completion.ended = true,
                        _ => {}
                    }
                }
                polled
            }
            ResponseBody::Full(bytes) => Poll::Ready(bytes.take().map(|b| Ok(Frame::data(b)))),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            ResponseBody::Upstream { inner, .. } => inner.is_end_stream(),
            ResponseBody::Full(bytes) => bytes.is_none(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            ResponseBody::Upstream { inner, .. } => inner.size_hint(),
            ResponseBody::Full(bytes) => SizeHint::with_exact(bytes.as_ref().map_or(0, |b| b.len() as u64)),
        }
    }
}
