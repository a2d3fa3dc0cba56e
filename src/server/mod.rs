//! The client side of a request: what a request body and an upgrade are, whichever codec read
//! them. Plain-TCP HTTP/1.1 connections are served by sluice's own codec ([`h1`]), HTTP/2 (h2c
//! and TLS) by sluice's server on the `h2` crate ([`h2`]), and HTTP/1.1 over TLS by hyper's.

pub mod h1;
pub mod h2;

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName};
use http::{Request, Version};
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// What a request head's fields say, found in one pass over them by whichever server read the
/// head: whether it passes the rules the proxy enforces on every path (RFC 9112 §3.2: exactly
/// one `Host` in HTTP/1.1, since routing by one and forwarding two would let the upstream pick
/// the other; `Transfer-Encoding` exactly `chunked`, since any other coding would be forwarded
/// under no coding at all), and whether it has fields to strip.
#[derive(Debug, Default)]
pub struct FieldScan {
    hosts: usize,
    /// A `Transfer-Encoding` field is there.
    coded: bool,
    /// Transfer codings named, over every `Transfer-Encoding` field.
    codings: usize,
    /// The last coding named is `chunked`.
    chunked: bool,
    hop_by_hop: bool,
    sluice_fields: bool,
}

impl FieldScan {
    /// Notes one field.
    pub fn field(&mut self, name: &HeaderName, value: &[u8]) {
        if *name == header::HOST {
            self.hosts += 1;
        } else if *name == header::TRANSFER_ENCODING {
            self.coded = true;
            for coding in tokens(value) {
                self.codings += 1;
                self.chunked = coding.eq_ignore_ascii_case(b"chunked");
            }
        }
        self.hop_by_hop |= crate::forward::is_hop_by_hop(name);
        self.sluice_fields |= name.as_str().starts_with("x-sluice-");
    }

    /// Scans every field of `headers`.
    pub fn of(headers: &HeaderMap) -> Self {
        let mut scan = Self::default();
        for (name, value) in headers {
            scan.field(name, value.as_bytes());
        }
        scan
    }

    /// Whether there is a `Transfer-Encoding` (which, once checked, is `chunked`).
    pub fn coded(&self) -> bool {
        self.coded
    }

    /// The scan's verdict for a head of `version`; `Err`: why it is refused (`400`).
    pub fn check(&self, version: Version) -> Result<Checked, &'static str> {
        if version == Version::HTTP_11 {
            match self.hosts {
                0 => return Err("no host header"),
                1 => {}
                _ => return Err("more than one host header"),
            }
        }
        // An empty field names no coding, which is no more valid than two.
        if self.coded && !(self.codings == 1 && self.chunked) {
            return Err("unsupported transfer-encoding");
        }
        Ok(Checked {
            hop_by_hop: self.hop_by_hop,
            sluice_fields: self.sluice_fields,
        })
    }
}

/// A head that passed [`FieldScan::check`], and what it has to strip.
#[derive(Debug, Clone, Copy)]
pub struct Checked {
    /// It has hop-by-hop fields.
    pub hop_by_hop: bool,
    /// It has `x-sluice-*` fields (only sluice may set them).
    pub sluice_fields: bool,
}

/// The comma-separated tokens of a field value, trimmed.
pub(crate) fn tokens(value: &[u8]) -> impl Iterator<Item = &[u8]> {
    value
        .split(|&b| b == b',')
        .map(<[u8]>::trim_ascii)
        .filter(|t| !t.is_empty())
}

/// A client's request body.
#[derive(Debug)]
pub enum ClientBody {
    /// Read by hyper (HTTP/1.1 over TLS).
    Hyper(Incoming),
    /// An HTTP/2 stream's, read by [`h2`].
    H2(h2::RequestBody),
    /// Read by [`h1`] straight from the connection.
    /// Boxed: every request moves a `ClientBody`, and most have none.
    H1(Box<h1::RequestBody>),
    /// No body at all.
    Empty,
}

impl Body for ClientBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.get_mut() {
            ClientBody::Hyper(body) => Pin::new(body).poll_frame(cx).map_err(|e| Box::new(e) as BoxError),
            ClientBody::H2(body) => Pin::new(body).poll_frame(cx),
            ClientBody::H1(body) => Pin::new(&mut **body).poll_frame(cx),
            ClientBody::Empty => Poll::Ready(None),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            ClientBody::Hyper(body) => body.is_end_stream(),
            ClientBody::H2(body) => body.is_end_stream(),
            ClientBody::H1(body) => body.is_end_stream(),
            ClientBody::Empty => true,
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            ClientBody::Hyper(body) => body.size_hint(),
            ClientBody::H2(body) => body.size_hint(),
            ClientBody::H1(body) => body.size_hint(),
            ClientBody::Empty => SizeHint::with_exact(0),
        }
    }
}

/// The client's side of a protocol switch (WebSocket), ready once the `101` has been sent.
#[derive(Debug)]
pub enum ClientUpgrade {
    /// A hyper connection's.
    Hyper(hyper::upgrade::OnUpgrade),
    /// An [`h1`] connection's.
    H1(tokio::sync::oneshot::Receiver<h1::Upgraded>),
}

/// Takes the upgrade of `request`, whichever server read it.
pub fn on_upgrade(request: &mut Request<ClientBody>) -> ClientUpgrade {
    match request
        .extensions_mut()
        .remove::<h1::PendingUpgrade>()
        .and_then(|p| p.take())
    {
        Some(pending) => ClientUpgrade::H1(pending),
        None => ClientUpgrade::Hyper(hyper::upgrade::on(request)),
    }
}

/// Appends the current time as an HTTP date (`Sun, 06 Nov 1994 08:49:37 GMT`).
pub(crate) fn put_date(out: &mut Vec<u8>) {
    with_date(|date| out.extend_from_slice(date.as_bytes()));
}

/// The current time as an HTTP date, for a header map.
pub(crate) fn date_value() -> http::HeaderValue {
    with_date(Clone::clone)
}

/// Calls `f` with the current time as an HTTP date, formatted once per second per thread.
fn with_date<R>(f: impl FnOnce(&http::HeaderValue) -> R) -> R {
    use std::cell::RefCell;
    use std::time::{SystemTime, UNIX_EPOCH};
    thread_local! {
        static DATE: RefCell<(u64, http::HeaderValue)> =
            const { RefCell::new((u64::MAX, http::HeaderValue::from_static(""))) };
    }
    let now = SystemTime::now();
    let second = now.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    DATE.with_borrow_mut(|(cached, value)| {
        if *cached != second {
            *cached = second;
            *value = http::HeaderValue::from_str(&httpdate::fmt_http_date(now))
                .unwrap_or_else(|_| http::HeaderValue::from_static(""));
        }
        f(value)
    })
}
