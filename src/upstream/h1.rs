//! HTTP/1.1 to an upstream, driven by the request's own task: no connection task, no channel.
//!
//! A [`Conn`] is a connection with its read and write buffers. [`send`] writes the request head
//! and streams its body while watching for the answer (an upstream may answer before it has read
//! the whole body), then hands back the answer's head with an [`H1Body`] that reads the body
//! straight from the socket, keeps sending what is left of the request body (full duplex), and
//! puts the connection back in its endpoint's pool the moment the answer is complete. (The rest
//! of an upload moves whenever the answer is polled, which hyper does each time the client's
//! connection task wakes, as it does for each piece of the upload that arrives.)
//!
//! Request framing: a body of known length goes with `Content-Length`, any other with
//! `Transfer-Encoding: chunked` (trailers included); the client's own framing headers are not
//! trusted. Answers are framed by [`super::framing`]. 1xx answers other than 101 are skipped;
//! a 101 to an upgrade request hands the connection over ([`H1Body::into_upgrade`]).

use std::future::{poll_fn, Future};
use std::io;
use std::pin::{pin, Pin};
use std::task::{ready, Context, Poll};

use bytes::{Buf, Bytes, BytesMut};
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use http_body::{Body, Frame, SizeHint};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};

use super::framing::{self, itoa, put_header, put_headers, put_hex, Framing, Step, MAX_HEAD, MAX_HEADERS};
use super::{InflightGuard, RequestBody, UpstreamIo};
use crate::forward::{Forwarded, X_FORWARDED_FOR};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Read buffer growth: enough for a typical answer in one read.
const READ_CHUNK: usize = 16 << 10;
/// Largest write buffer an idle connection keeps.
const MAX_IDLE_WRITE_BUFFER: usize = 64 << 10;

/// One HTTP/1.1 connection to an upstream, idle between requests.
pub(super) struct Conn {
    io: UpstreamIo,
    /// Fires at or before the current request's deadline. It is re-armed only when it fires
    /// early (for a request that started after the one it was set for), so a request that is
    /// answered in time costs no timer registration.
    timer: Pin<Box<tokio::time::Sleep>>,
    /// Bytes read and not yet used.
    read: BytesMut,
    /// The request being written; `written` of it are on the wire.
    out: Vec<u8>,
    written: usize,
}

impl std::fmt::Debug for Conn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Conn").field("buffered", &self.read.len()).finish()
    }
}

impl Conn {
    /// A freshly opened connection, boxed: it moves between the pool and each request's state.
    pub(super) fn new(io: UpstreamIo, deadline: tokio::time::Instant) -> Box<Self> {
        Box::new(Self {
            io,
            timer: Box::pin(tokio::time::sleep_until(deadline)),
            read: BytesMut::new(),
            out: Vec::new(),
            written: 0,
        })
    }

    /// Whether an idle connection can take a request: the server has neither closed it nor sent
    /// anything unasked. Costs no system call unless the socket became readable since its last
    /// read (the reactor says so).
    pub(super) fn is_usable(&mut self) -> bool {
        if !self.read.is_empty() {
            return false;
        }
        let mut cx = Context::from_waker(std::task::Waker::noop());
        let mut probe = [0u8; 1];
        let mut probe = ReadBuf::new(&mut probe);
        matches!(Pin::new(&mut self.io).poll_read(&mut cx, &mut probe), Poll::Pending)
    }

    /// Ready to wait in the pool: a write buffer grown by a large upload is let go.
    fn idle(mut self: Box<Self>) -> Box<Self> {
        if self.out.capacity() > MAX_IDLE_WRITE_BUFFER {
            self.out = Vec::new();
        }
        self
    }

    /// Reads more into `read`.
    fn poll_fill(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        if self.read.capacity() - self.read.len() < READ_CHUNK / 4 {
            self.read.reserve(READ_CHUNK);
        }
        pin!(self.io.read_buf(&mut self.read)).poll(cx)
    }

    /// Writes what is left of `out`, then flushes.
    fn poll_drain(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.written < self.out.len() {
            match ready!(Pin::new(&mut self.io).poll_write(cx, &self.out[self.written..])) {
                Ok(0) => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
                Ok(n) => self.written += n,
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
        self.out.clear();
        self.written = 0;
        Pin::new(&mut self.io).poll_flush(cx)
    }
}

/// The request body still to be sent.
struct Sending {
    body: RequestBody,
    chunked: bool,
}

/// Why the request body stopped.
enum WriteFailed {
    /// The connection failed.
    Io(io::Error),
    /// The client's body did (a bad chunk, the client gone, over the size limit).
    Client(BoxError),
}

/// Where the write side is.
struct Writer {
    /// The body, while some of it is still to come.
    sending: Option<Sending>,
    /// Whether any byte was written, or the body polled: the request cannot be given back.
    started: bool,
    /// The connection failed while writing: it cannot be reused.
    broken: bool,
}

impl Writer {
    /// Whether the whole request is on the wire.
    fn done(&self, conn: &Conn) -> bool {
        self.sending.is_none() && conn.out.is_empty()
    }

    /// Writes the request: the head already in `conn.out`, then the body frame by frame.
    fn poll(&mut self, conn: &mut Conn, cx: &mut Context<'_>) -> Poll<Result<(), WriteFailed>> {
        loop {
            let unwritten = conn.out.len() - conn.written;
            let drained = conn.poll_drain(cx);
            self.started |= conn.out.len() - conn.written < unwritten;
            if let Err(e) = ready!(drained) {
                // The body stays: if none of the request went out, it goes out again elsewhere.
                self.broken = true;
                return Poll::Ready(Err(WriteFailed::Io(e)));
            }
            let Some(sending) = self.sending.as_mut() else {
                return Poll::Ready(Ok(()));
            };
            self.started = true;
            let chunked = sending.chunked;
            match ready!(Pin::new(&mut sending.body).poll_frame(cx)) {
                Some(Ok(frame)) => match frame.into_data() {
                    Ok(data) if data.is_empty() => {}
                    Ok(data) if chunked => {
                        put_hex(&mut conn.out, data.len());
                        conn.out.extend_from_slice(b"\r\n");
                        conn.out.extend_from_slice(&data);
                        conn.out.extend_from_slice(b"\r\n");
                    }
                    Ok(data) => conn.out.extend_from_slice(&data),
                    Err(frame) => {
                        if let (true, Ok(trailers)) = (chunked, frame.into_trailers()) {
                            conn.out.extend_from_slice(b"0\r\n");
                            put_headers(&mut conn.out, &trailers);
                            conn.out.extend_from_slice(b"\r\n");
                            self.sending = None;
                        }
                    }
                },
                Some(Err(e)) => {
                    self.broken = true;
                    self.sending = None;
                    return Poll::Ready(Err(WriteFailed::Client(e)));
                }
                None => {
                    if chunked {
                        conn.out.extend_from_slice(b"0\r\n\r\n");
                    }
                    self.sending = None;
                }
            }
        }
    }
}

/// Why a request got no answer.
pub(super) enum Failure {
    /// The connection was already closed: nothing of the request can have been used, and here
    /// it is back, to go out on another connection.
    Stale(Box<Request<RequestBody>>),
    /// The upstream failed: closed, reset, or answered with something that is not HTTP/1.1.
    Upstream(BoxError),
    /// The client's request body failed.
    Client(BoxError),
    /// No answer head by the deadline.
    Timeout,
}

/// The answer's head, parsed.
struct Head {
    status: StatusCode,
    headers: HeaderMap,
    framing: Framing,
    close: bool,
    /// Whether a hop-by-hop field is among `headers`.
    hop_by_hop: bool,
}

/// Sends `request` over `conn` (`reused`: it served a request before) and reads the answer's
/// head. The body comes with the answer; once given the request's in-flight guard
/// ([`H1Body::attach`]), it returns the connection to that endpoint's pool when done.
/// `forwarded`: the `X-Forwarded-*` fields to write.
pub(super) async fn send(
    mut conn: Box<Conn>,
    request: Request<RequestBody>,
    reused: bool,
    deadline: tokio::time::Instant,
    forwarded: Option<&Forwarded<'_>>,
) -> Result<Response<H1Body>, Failure> {
    let (parts, body) = request.into_parts();
    let empty = body.is_end_stream();
    let Encoded { chunked, upgrade } = encode_head(&mut conn.out, &parts, &body, forwarded);
    let mut writer = Writer {
        sending: (!empty).then_some(Sending { body, chunked }),
        started: false,
        broken: false,
    };
    let head_request = parts.method == Method::HEAD;
    if conn.timer.deadline() > deadline {
        conn.timer.as_mut().reset(deadline);
    }
    let head = poll_fn(|cx| poll_head(&mut conn, &mut writer, cx, head_request, upgrade, deadline)).await;
    let head = match head {
        Ok(head) => head,
        Err(HeadFailed::Client(e)) => return Err(Failure::Client(e)),
        Err(HeadFailed::Timeout) => return Err(Failure::Timeout),
        Err(HeadFailed::Upstream(e, nothing_back)) => {
            // Closed with nothing of the request read (the server shut an idle connection as
            // it went out): safe to send again when nothing was written, or when a repeat is
            // harmless (an idempotent request without a body, RFC 9110 §9.2.2).
            let unused = !writer.started || (reused && empty && parts.method.is_idempotent());
            if nothing_back && unused {
                // Unstarted, the body was never polled: it goes again whole.
                let body = match writer.sending.take() {
                    Some(sending) if !writer.started => sending.body,
                    _ => RequestBody::buffered(Bytes::new()),
                };
                return Err(Failure::Stale(Box::new(Request::from_parts(parts, body))));
            }
            return Err(Failure::Upstream(e));
        }
    };
    let switching = head.status == StatusCode::SWITCHING_PROTOCOLS;
    let request_sent = writer.done(&conn) && !writer.broken;
    let writer = (!request_sent && !writer.broken).then(|| Box::new(writer));
    let mut response = Response::new(H1Body {
        conn: Some(conn),
        framing: head.framing,
        reusable: !head.close && !switching && (request_sent || writer.is_some()),
        writer,
        lease: None,
        hop_by_hop: head.hop_by_hop,
    });
    *response.status_mut() = head.status;
    *response.headers_mut() = head.headers;
    Ok(response)
}

enum HeadFailed {
    Client(BoxError),
    Timeout,
    /// The upstream's fault; `true` when nothing at all came back.
    Upstream(BoxError, bool),
}

/// Writes the request and reads until the answer's final head is complete.
fn poll_head(
    conn: &mut Conn,
    writer: &mut Writer,
    cx: &mut Context<'_>,
    head_request: bool,
    upgrade: bool,
    deadline: tokio::time::Instant,
) -> Poll<Result<Head, HeadFailed>> {
    let mut write_error = None;
    let mut received = false;
    loop {
        while conn.timer.as_mut().poll(cx).is_ready() {
            if conn.timer.deadline() >= deadline {
                return Poll::Ready(Err(HeadFailed::Timeout));
            }
            // Set for an earlier request: re-arm for this one, and poll again to register.
            conn.timer.as_mut().reset(deadline);
        }
        if !writer.done(conn) && !writer.broken {
            match writer.poll(conn, cx) {
                Poll::Ready(Err(WriteFailed::Client(e))) => return Poll::Ready(Err(HeadFailed::Client(e))),
                // The server may have answered and closed (say 413 before reading the body):
                // its answer, if one comes, says more than the write error.
                Poll::Ready(Err(WriteFailed::Io(e))) => write_error = Some(e),
                Poll::Ready(Ok(())) | Poll::Pending => {}
            }
        }
        match parse_head(&mut conn.read, head_request, upgrade) {
            Ok(Some(head)) => return Poll::Ready(Ok(head)),
            Ok(None) => {}
            Err(why) => return Poll::Ready(Err(HeadFailed::Upstream(why.into(), false))),
        }
        received |= !conn.read.is_empty();
        match conn.poll_fill(cx) {
            Poll::Pending => return Poll::Pending,
            Poll::Ready(Ok(0)) => {
                let why: BoxError = match write_error.take() {
                    Some(e) => Box::new(e),
                    None => "connection closed before the answer".into(),
                };
                return Poll::Ready(Err(HeadFailed::Upstream(why, !received)));
            }
            Poll::Ready(Ok(_)) => received = true,
            Poll::Ready(Err(e)) => return Poll::Ready(Err(HeadFailed::Upstream(Box::new(e), !received))),
        }
    }
}

/// Header fields parsed on a first try; a head with more is parsed again with room for
/// [`MAX_HEADERS`].
const FEW_HEADERS: usize = 24;
/// Fields the proxy may add to an answer (`X-Sluice-Version`, `Set-Cookie`).
const ADDED_FIELDS: usize = 2;

/// Where a field's name and value are in the head: `(name start, name end, value start, value end)`.
type Span = (usize, usize, usize, usize);

/// What one parse of the buffer found.
enum Parsed {
    Partial,
    /// A 1xx (not 101) answer of this length: the final answer follows.
    Informational(usize),
    Final {
        len: usize,
        status: StatusCode,
        framing: Framing,
        close: bool,
        fields: usize,
    },
}

/// Parses the final answer head at the start of `read`, skipping 1xx answers before it. The
/// header values share the head's bytes rather than being copied.
fn parse_head(read: &mut BytesMut, head_request: bool, upgrade: bool) -> Result<Option<Head>, &'static str> {
    loop {
        if read.is_empty() {
            return Ok(None);
        }
        let mut spans = [(0, 0, 0, 0); FEW_HEADERS];
        let mut many = Vec::new();
        let mut parsed = locate::<FEW_HEADERS>(read, &mut spans, head_request);
        if let Err(httparse::Error::TooManyHeaders) = parsed {
            many = vec![(0, 0, 0, 0); MAX_HEADERS];
            parsed = locate::<MAX_HEADERS>(read, &mut many, head_request);
        }
        let spans = if many.is_empty() { &spans[..] } else { &many[..] };
        let (len, status, framing, close, fields) = match parsed {
            Ok(Parsed::Partial) if read.len() > MAX_HEAD => return Err("answer head too large"),
            Ok(Parsed::Partial) => return Ok(None),
            Ok(Parsed::Informational(len)) => {
                read.advance(len);
                continue;
            }
            Ok(Parsed::Final {
                len,
                status,
                framing,
                close,
                fields,
            }) => (len, status, framing, close, fields),
            Err(httparse::Error::Status) => return Err("invalid answer status"),
            Err(httparse::Error::TooManyHeaders) => return Err("too many header fields in the answer"),
            Err(_) => return Err("malformed answer head"),
        };
        if status == StatusCode::SWITCHING_PROTOCOLS && !upgrade {
            return Err("101 to a request that asked for no upgrade");
        }
        let head = read.split_to(len).freeze();
        let mut headers = HeaderMap::with_capacity(fields + ADDED_FIELDS);
        let (mut coded, mut hop_by_hop) = (false, false);
        for &(name_start, name_end, value_start, value_end) in &spans[..fields] {
            let name = HeaderName::from_bytes(&head[name_start..name_end]).map_err(|_| "invalid header name")?;
            let value = HeaderValue::from_maybe_shared(head.slice(value_start..value_end))
                .map_err(|_| "invalid header value")?;
            coded |= name == header::TRANSFER_ENCODING;
            hop_by_hop |= crate::forward::is_hop_by_hop(&name);
            headers.append(name, value);
        }
        if coded {
            // The body is framed by its coding: a Content-Length beside it is wrong, and must
            // not frame what the client gets (RFC 9112 §6.3).
            headers.remove(header::CONTENT_LENGTH);
        }
        return Ok(Some(Head {
            status,
            headers,
            framing,
            close,
            hop_by_hop,
        }));
    }
}

/// Parses with room for `N` fields, noting where each is in `read`.
fn locate<const N: usize>(read: &[u8], spans: &mut [Span], head_request: bool) -> Result<Parsed, httparse::Error> {
    let mut slots = [httparse::EMPTY_HEADER; N];
    let mut response = httparse::Response::new(&mut slots);
    let len = match response.parse(read)? {
        httparse::Status::Complete(len) => len,
        httparse::Status::Partial => return Ok(Parsed::Partial),
    };
    let status = framing::status(&response).map_err(|()| httparse::Error::Status)?;
    if status.is_informational() && status != StatusCode::SWITCHING_PROTOCOLS {
        return Ok(Parsed::Informational(len));
    }
    let (framing, close) = framing::of(&response, status, head_request).map_err(|()| httparse::Error::HeaderValue)?;
    let base = read.as_ptr() as usize;
    for (span, h) in spans.iter_mut().zip(response.headers.iter()) {
        let name = h.name.as_ptr() as usize - base;
        let value = h.value.as_ptr() as usize - base;
        *span = (name, name + h.name.len(), value, value + h.value.len());
    }
    Ok(Parsed::Final {
        len,
        status,
        framing,
        close,
        fields: response.headers.len(),
    })
}

/// What [`encode_head`] found out.
struct Encoded {
    /// The body goes chunked.
    chunked: bool,
    /// The request asks to switch protocols (`Connection: upgrade`).
    upgrade: bool,
}

/// Writes the request line and headers, with `forwarded`'s `X-Forwarded-*` in place of the
/// received ones.
fn encode_head(
    out: &mut Vec<u8>,
    parts: &http::request::Parts,
    body: &RequestBody,
    forwarded: Option<&Forwarded<'_>>,
) -> Encoded {
    out.clear();
    out.extend_from_slice(parts.method.as_str().as_bytes());
    out.push(b' ');
    let target = match (&parts.method, parts.uri.authority()) {
        (&Method::CONNECT, Some(authority)) => authority.as_str(),
        _ => parts.uri.path_and_query().map_or("/", |p| p.as_str()),
    };
    out.extend_from_slice(target.as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\n");
    let (length, chunked) = match body.size_hint().exact() {
        // No body: keep whatever the client said (`Content-Length: 0` or nothing).
        Some(0) if body.is_end_stream() => (None, false),
        Some(n) => (Some(n), false),
        None => (None, true),
    };
    let reframed = length.is_some() || chunked;
    let (mut received, mut upgrade) = (false, false);
    for (name, value) in &parts.headers {
        if reframed && (name == header::CONTENT_LENGTH || name == header::TRANSFER_ENCODING) {
            continue;
        }
        upgrade |= name == header::CONNECTION && value.as_bytes().eq_ignore_ascii_case(b"upgrade");
        if forwarded.is_some() && Forwarded::replaces(name) {
            received |= name == X_FORWARDED_FOR;
            continue;
        }
        put_header(out, name.as_str().as_bytes(), value.as_bytes());
    }
    if let Some(forwarded) = forwarded {
        forwarded.put(out, &parts.headers, received);
    }
    if let Some(n) = length {
        out.extend_from_slice(b"content-length: ");
        out.extend_from_slice(itoa(n, &mut [0; 20]));
        out.extend_from_slice(b"\r\n");
    } else if chunked {
        out.extend_from_slice(b"transfer-encoding: chunked\r\n");
    }
    out.extend_from_slice(b"\r\n");
    Encoded { chunked, upgrade }
}

/// An upstream answer's body, read straight from the connection.
pub struct H1Body {
    /// The connection, until the body is complete.
    conn: Option<Box<Conn>>,
    framing: Framing,
    /// Whether the connection may take another request once this answer is read.
    reusable: bool,
    /// What is left of the request body, when the answer started before it was all sent.
    writer: Option<Box<Writer>>,
    /// The request's in-flight count, and through it the endpoint whose pool takes the
    /// connection back.
    lease: Option<InflightGuard>,
    /// Whether the answer's head has a hop-by-hop field.
    pub(super) hop_by_hop: bool,
}

impl std::fmt::Debug for H1Body {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("H1Body")
            .field("framing", &self.framing)
            .field("reusable", &self.reusable)
            .finish()
    }
}

/// A connection that switched protocols, and what the upstream already sent on it.
#[derive(Debug)]
pub struct Upgraded {
    /// The connection.
    pub io: UpstreamIo,
    /// Bytes of the new protocol read with the 101 answer.
    pub read: Bytes,
}

impl H1Body {
    /// For a `101 Switching Protocols` answer: the connection, now the upstream end of a tunnel.
    pub fn into_upgrade(mut self) -> Option<Upgraded> {
        if self.reusable || self.framing != Framing::Length(0) {
            return None;
        }
        let conn = *self.conn.take()?;
        Some(Upgraded {
            io: conn.io,
            read: conn.read.freeze(),
        })
    }

    /// Holds the request's in-flight guard until the body is dropped; an answer that is already
    /// complete (no body) gives its connection back at once.
    pub(super) fn attach(&mut self, lease: InflightGuard) {
        self.lease = Some(lease);
        self.finish_if_complete();
    }

    /// Once the answer is read: the connection goes back to the pool if it can take another
    /// request, and is closed otherwise.
    fn finish_if_complete(&mut self) {
        if self.framing != Framing::Length(0) || !self.reusable {
            return;
        }
        let Some(conn) = self.conn.take() else { return };
        let request_sent = self.writer.as_ref().is_none_or(|w| w.done(&conn) && !w.broken);
        if let (true, true, Some(lease)) = (request_sent, conn.read.is_empty(), self.lease.as_ref()) {
            lease.endpoint().give_back(conn.idle());
        }
    }
}

impl Body for H1Body {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        if let (Some(writer), Some(conn)) = (this.writer.as_mut(), this.conn.as_mut()) {
            if !writer.done(conn) && !writer.broken {
                // Full duplex: keep the request body going while the answer streams. A write
                // failure only means this connection cannot be reused (the answer may still be
                // readable); a broken client body leaves the upstream waiting for the rest of a
                // request it can never finish, so the answer ends here.
                if let Poll::Ready(Err(WriteFailed::Client(e))) = writer.poll(conn, cx) {
                    this.conn = None;
                    return Poll::Ready(Some(Err(e)));
                }
            }
        }
        loop {
            let Some(conn) = this.conn.as_mut() else {
                return Poll::Ready(None);
            };
            match this.framing.step(&mut conn.read) {
                Step::Data(data) => {
                    this.finish_if_complete();
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                Step::End(trailers) => {
                    this.framing = Framing::Length(0);
                    this.finish_if_complete();
                    this.conn = None;
                    return Poll::Ready(match trailers.map(|t| framing::parse_trailers(&t)) {
                        None | Some(Ok(None)) => None,
                        Some(Ok(Some(mut trailers))) => {
                            // Hop-by-hop in a trailer section too (RFC 9110 §7.6.1); an HTTP/2
                            // client's stream would be reset over them.
                            crate::forward::remove_hop_by_hop_from_answer(&mut trailers, false);
                            Some(Ok(Frame::trailers(trailers)))
                        }
                        Some(Err(e)) => Some(Err(e.into())),
                    });
                }
                Step::Invalid => {
                    this.conn = None;
                    return Poll::Ready(Some(Err("malformed answer body".into())));
                }
                Step::More => {}
            }
            match ready!(conn.poll_fill(cx)) {
                Ok(0) if this.framing == Framing::UntilClose => {
                    this.framing = Framing::Length(0);
                    this.conn = None;
                    return Poll::Ready(None);
                }
                Ok(0) => {
                    this.conn = None;
                    return Poll::Ready(Some(Err("upstream closed before the end of the answer".into())));
                }
                Ok(_) => {}
                Err(e) => {
                    this.conn = None;
                    return Poll::Ready(Some(Err(Box::new(e))));
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.conn.is_none() || self.framing == Framing::Length(0)
    }

    fn size_hint(&self) -> SizeHint {
        match (self.conn.is_some(), self.framing.exact()) {
            (false, _) => SizeHint::with_exact(0),
            (true, Some(n)) => SizeHint::with_exact(n),
            (true, None) => SizeHint::default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_are_written_in_decimal_and_hex() {
        assert_eq!(itoa(0, &mut [0; 20]), b"0");
        assert_eq!(itoa(1234567890, &mut [0; 20]), b"1234567890");
        assert_eq!(itoa(u64::MAX, &mut [0; 20]), u64::MAX.to_string().as_bytes());
        for n in [0usize, 1, 15, 16, 255, 4096, 0xabcdef] {
            let mut out = Vec::new();
            put_hex(&mut out, n);
            assert_eq!(out, format!("{n:x}").as_bytes());
        }
    }

    #[test]
    fn answer_heads_parse_and_1xx_is_skipped() {
        let mut read = BytesMut::from(
            &b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\nX-A: b\r\n\r\nok"[..],
        );
        let head = parse_head(&mut read, false, false).expect("valid").expect("complete");
        assert_eq!(head.status, StatusCode::OK);
        assert_eq!(head.framing, Framing::Length(2));
        assert!(!head.close);
        assert_eq!(head.headers["x-a"], "b");
        assert_eq!(&read[..], b"ok");
        let mut partial = BytesMut::from(&b"HTTP/1.1 200 OK\r\nContent-Len"[..]);
        assert!(parse_head(&mut partial, false, false).expect("valid").is_none());
        let mut unasked = BytesMut::from(&b"HTTP/1.1 101 Switching Protocols\r\n\r\n"[..]);
        assert!(parse_head(&mut unasked, false, false).is_err());
        let mut old = BytesMut::from(&b"HTTP/1.0 200 OK\r\nContent-Length: 0\r\n\r\n"[..]);
        assert!(
            parse_head(&mut old, false, false)
                .expect("valid")
                .expect("complete")
                .close
        );
    }

    #[test]
    fn heads_with_more_fields_than_the_first_try_holds_parse_whole() {
        let mut wire = String::from("HTTP/1.1 200 OK\r\n");
        for i in 0..FEW_HEADERS + 6 {
            wire.push_str(&format!("x-field-{i}: value {i}\r\n"));
        }
        wire.push_str("content-length: 0\r\n\r\n");
        let mut read = BytesMut::from(wire.as_bytes());
        let head = parse_head(&mut read, false, false).expect("valid").expect("complete");
        assert_eq!(head.headers.len(), FEW_HEADERS + 7);
        assert_eq!(head.headers["x-field-29"], "value 29");
        assert!(read.is_empty());
        let mut too_many = String::from("HTTP/1.1 200 OK\r\n");
        for i in 0..=MAX_HEADERS {
            too_many.push_str(&format!("x-{i}: v\r\n"));
        }
        too_many.push_str("\r\n");
        assert!(parse_head(&mut BytesMut::from(too_many.as_bytes()), false, false).is_err());
    }

    /// A request whose first write fails (the peer reset the connection before any of
    /// it went out) comes back as `Stale` to be sent again; its body must come back with it.
    #[tokio::test]
    async fn a_stale_request_keeps_its_body() {
        use std::time::{Duration, Instant};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("addr");
        let client = std::net::TcpStream::connect(addr).expect("connect");
        let (server, _) = listener.accept().expect("accept");
        server.set_nonblocking(true).expect("nonblocking");
        let server = tokio::net::TcpStream::from_std(server).expect("server");
        #[allow(deprecated)]
        server.set_linger(Some(Duration::ZERO)).expect("linger");
        drop(server); // RST
        client.set_nonblocking(true).expect("nonblocking");
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            match client.peek(&mut [0u8; 1]) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    assert!(Instant::now() < deadline, "no reset");
                    std::thread::yield_now();
                }
                _ => break,
            }
        }
        let io = UpstreamIo::Plain(tokio::net::TcpStream::from_std(client).expect("client"));
        let request = Request::post("/upload")
            .header(header::HOST, "up.test")
            .header(header::CONTENT_LENGTH, "5")
            .body(RequestBody::buffered(Bytes::from_static(b"hello")))
            .expect("request");
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        let failure = send(Conn::new(io, deadline), request, true, deadline, None).await;
        let Err(Failure::Stale(again)) = failure else {
            panic!("expected a stale failure");
        };
        // What would go out on the next connection:
        let mut wire = Vec::new();
        let (parts, body) = again.into_parts();
        encode_head(&mut wire, &parts, &body, None);
        let head = String::from_utf8_lossy(&wire).into_owned();
        assert_eq!(
            body.size_hint().exact(),
            Some(5),
            "the body was dropped; the resent head is:\n{head}"
        );
    }

    #[test]
    fn a_content_length_beside_a_coding_is_dropped_and_the_connection_not_reused() {
        let mut read = BytesMut::from(
            &b"HTTP/1.1 200 OK\r\ncontent-length: 99\r\ntransfer-encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n"[..],
        );
        let head = parse_head(&mut read, false, false).expect("valid").expect("complete");
        assert_eq!(head.framing, Framing::ChunkSize);
        assert!(head.close);
        assert!(!head.headers.contains_key(header::CONTENT_LENGTH));
    }

    #[test]
    fn trailers_parse() {
        let trailers = framing::parse_trailers(b"grpc-status: 0\r\n\r\n")
            .expect("valid")
            .expect("some");
        assert_eq!(trailers["grpc-status"], "0");
        assert!(framing::parse_trailers(b"bad header\r\n\r\n").is_err());
    }

    #[test]
    fn forwarded_fields_are_written_with_the_head() {
        let client = crate::forward::ClientInfo::plain("10.0.0.9:5000".parse().expect("addr"));
        let host = HeaderValue::from_static("shop.test:8080");
        let forwarded = Forwarded {
            client: &client,
            host: Some(&host),
        };
        let request = Request::get("/p")
            .header(header::HOST, "shop.test:8080")
            .header("x-forwarded-for", "1.2.3.4")
            .header("x-forwarded-proto", "https")
            .header("x-forwarded-host", "evil.test")
            .header("x-kept", "yes")
            .header("x-forwarded-for", "5.6.7.8")
            .body(RequestBody::buffered(Bytes::new()))
            .expect("request");
        let (parts, body) = request.into_parts();
        let mut wire = Vec::new();
        encode_head(&mut wire, &parts, &body, Some(&forwarded));
        let wire = String::from_utf8(wire).expect("text");
        assert!(
            wire.contains("x-forwarded-for: 1.2.3.4, 5.6.7.8, 10.0.0.9\r\n"),
            "{wire}"
        );
        assert!(wire.contains("x-forwarded-proto: http\r\n"), "{wire}");
        assert!(wire.contains("x-forwarded-host: shop.test:8080\r\n"), "{wire}");
        assert!(wire.contains("x-kept: yes\r\n"), "{wire}");
        for name in ["x-forwarded-for", "x-forwarded-proto", "x-forwarded-host"] {
            assert_eq!(wire.matches(name).count(), 1, "{name} once: {wire}");
        }
    }
}
