//! The client side of a request: what a request body and an upgrade are, whichever codec read
//! them. Plain-TCP HTTP/1.1 connections are served by sluice's own codec ([`h1`]); HTTP/2 (h2c
//! and TLS) and HTTP/1.1 over TLS by hyper's server.

pub mod h1;

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::Request;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// What the server codec already found out about a request head, so the handler need not look
/// through the fields again.
#[derive(Debug, Clone, Copy)]
pub struct Checked {
    /// The head passed the `Host` and `Transfer-Encoding` rules the handler enforces.
    pub head: bool,
    /// The head has hop-by-hop fields.
    pub hop_by_hop: bool,
    /// The head has `x-sluice-*` fields.
    pub sluice_fields: bool,
}

impl Checked {
    /// Nothing known (hyper's server): the handler checks everything.
    pub const NOTHING: Self = Self {
        head: false,
        hop_by_hop: true,
        sluice_fields: true,
    };
}

/// True for the `x-sluice-*` names only sluice may set.
pub fn is_sluice_field(name: &http::HeaderName) -> bool {
    name.as_str().starts_with("x-sluice-")
}

/// A client's request body.
#[derive(Debug)]
pub enum ClientBody {
    /// Read by hyper (HTTP/2, HTTP/1.1 over TLS).
    Hyper(Incoming),
    /// Read by [`h1`] straight from the connection.
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
            ClientBody::H1(body) => Pin::new(&mut **body).poll_frame(cx),
            ClientBody::Empty => Poll::Ready(None),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            ClientBody::Hyper(body) => body.is_end_stream(),
            ClientBody::H1(body) => body.is_end_stream(),
            ClientBody::Empty => true,
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            ClientBody::Hyper(body) => body.size_hint(),
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

/// True when `error` is a client body that broke (a bad chunk, the client leaving mid-upload),
/// whichever server read it.
pub fn is_client_body_error(error: &(dyn std::error::Error + 'static)) -> bool {
    error.is::<hyper::Error>() || error.is::<h1::BodyError>()
}

/// Appends the current time as an HTTP date (`Sun, 06 Nov 1994 08:49:37 GMT`), formatted once
/// per second per thread.
pub(crate) fn put_date(out: &mut Vec<u8>) {
    use std::cell::RefCell;
    use std::time::{SystemTime, UNIX_EPOCH};
    thread_local! {
        static DATE: RefCell<(u64, String)> = const { RefCell::new((u64::MAX, String::new())) };
    }
    let now = SystemTime::now();
    let second = now.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    DATE.with_borrow_mut(|(cached, text)| {
        if *cached != second {
            *cached = second;
            *text = httpdate::fmt_http_date(now);
        }
        out.extend_from_slice(text.as_bytes());
    });
}
