//! The response body sent to the client: an upstream body streamed frame by frame (trailers
//! included), or a short synthetic body for the proxy's own answers.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;

use crate::upstream::Lease;

/// A response body.
#[derive(Debug)]
pub enum ResponseBody {
    /// Streamed from the upstream; the lease returns the connection to the pool when done.
    Upstream {
        /// The upstream's body.
        inner: Incoming,
        /// Held until this body is dropped.
        lease: Lease,
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
}

impl Body for ResponseBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        match self.get_mut() {
            ResponseBody::Upstream { inner, .. } => Pin::new(inner).poll_frame(cx),
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
