//! sluice's own HTTP/1.1 server codec, for plain-TCP client connections: the connection's task
//! reads a request head, calls the handler, and writes its answer straight to the socket, with
//! no dispatcher in between. It is the mirror image of the upstream client
//! ([`crate::upstream`]'s `h1`), and shares its body framing ([`crate::upstream::framing`]).
//!
//! - **Heads** are parsed with `httparse` (at most 100 fields, and at most the configured head
//!   size: past either, `431`); a malformed head, or one that fails the proxy's rules
//!   ([`FieldScan`]: one `Host`, `Transfer-Encoding` exactly `chunked`), gets `400`, another
//!   HTTP version `505`, and each closes the connection without reading anything after it.
//!   Header values share the bytes that were read.
//! - **Framing** follows RFC 9112 §6: `Transfer-Encoding` is refused in HTTP/1.0; beside a
//!   `Content-Length`, the coding wins, the length is dropped, and the connection closes after
//!   the answer. Several `Content-Length` fields must agree, and each is digits only.
//! - **Bodies** are read from the connection by [`RequestBody`], which holds the read half until
//!   the body's last byte and then hands it back. An answer sent before the body was read to its
//!   end closes the connection, so nothing left of that body is ever read as a request.
//! - **Answers** are framed by the body's known length, else chunked (HTTP/1.1) or until close
//!   (HTTP/1.0). The head and a small body go out in one write. Trailers are sent to a client
//!   that asked for them (`TE: trailers`). `Date` is added when the upstream sent none.
//! - **Keep-alive and pipelining:** HTTP/1.1 keeps the connection unless either side says
//!   `close`; HTTP/1.0 only with `Connection: keep-alive`. Pipelined requests are answered in
//!   order. A client that closes its side while its request is handled or its answer waits for
//!   data abandons the request (unless pipelined requests wait behind it, as with hyper's
//!   server). Chunk extensions are ignored, at most 16 KiB per body.
//! - **`Expect: 100-continue`** is answered when the body is first read (so a request refused
//!   from its head gets no `100`), unless the final answer has started.
//! - **Timeouts and shutdown:** the next head must arrive within `request_headers` of the last
//!   answer (one timer per connection, re-armed only when it fires early). On shutdown, an idle
//!   connection closes at once and a busy one after its answer (`Connection: close`).
//! - **Upgrades:** after a `101`, the socket and any bytes read past the head are handed to the
//!   tunnel ([`PendingUpgrade`]).

use std::future::{poll_fn, Future};
use std::io;
use std::mem::MaybeUninit;
use std::pin::{pin, Pin};
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{ready, Context, Poll};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request, Response, StatusCode, Uri, Version};
use http_body::{Body, Frame, SizeHint};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;
use tokio::sync::{oneshot, watch};
use tokio::time::{Instant, Sleep};

use super::{put_date, tokens, BoxError, Checked, ClientBody, FieldScan};
use crate::body::ResponseBody;
use crate::forward::ClientInfo;
use crate::proxy::Proxy;
use crate::upstream::framing::{self, itoa, put_header, put_headers, put_hex, Framing, Step};

/// Header fields read in a request head (as hyper's server allows).
const MAX_HEADERS: usize = 100;
/// Header fields whose places are kept on the stack while a head is parsed.
const FEW_HEADERS: usize = 24;
/// Fields the proxy may add to a request's map (`Host` for an absolute-form target, the flags).
const ADDED_FIELDS: usize = 2;
/// Read buffer growth.
const READ_CHUNK: usize = 8 << 10;
/// Body data up to this size is copied behind the head (or the chunk line) and sent with it in
/// one write; larger data is written on its own.
const COALESCE: usize = 16 << 10;
/// Largest write buffer a connection keeps between answers.
const MAX_IDLE_WRITE_BUFFER: usize = 64 << 10;
/// The interim answer to `Expect: 100-continue`.
const CONTINUE: &[u8] = b"HTTP/1.1 100 Continue\r\n\r\n";
/// Chunk extensions read per request body (as hyper's server allows): they count toward no
/// other limit.
const MAX_CHUNK_EXTENSIONS: usize = 16 << 10;

/// How a connection is served.
#[derive(Debug, Clone, Copy)]
pub struct Settings {
    /// Largest request head (request line and fields), in bytes.
    pub head_limit: usize,
    /// Time allowed for a request head, counted from the end of the previous answer.
    pub request_headers: Duration,
}

/// The read half of a client connection with the bytes read and not yet used. It is lent to a
/// request body and comes back once that body has been read to its end.
#[derive(Debug)]
struct ReadSide {
    io: OwnedReadHalf,
    buf: BytesMut,
}

impl ReadSide {
    fn poll_fill(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        if self.buf.capacity() - self.buf.len() < READ_CHUNK / 4 {
            self.buf.reserve(READ_CHUNK);
        }
        pin!(self.io.read_buf(&mut self.buf)).poll(cx)
    }
}

/// The connection's read half: at home, or lent to a request body.
struct Reader {
    home: Option<Box<ReadSide>>,
    lent: Option<oneshot::Receiver<Box<ReadSide>>>,
}

impl Reader {
    /// Lends the read half to a body; it comes back through the returned sender.
    fn lend(&mut self) -> (Option<Box<ReadSide>>, oneshot::Sender<Box<ReadSide>>) {
        let (give, back) = oneshot::channel();
        self.lent = Some(back);
        (self.home.take(), give)
    }

    /// Takes the read half back if its body has returned it; `Ready(false)`: it never will (the
    /// body ended early and what is left of it cannot be told from a request).
    fn poll_home(&mut self, cx: &mut Context<'_>) -> Poll<bool> {
        if let Some(lent) = self.lent.as_mut() {
            let back = ready!(Pin::new(lent).poll(cx));
            self.lent = None;
            self.home = back.ok();
        }
        Poll::Ready(self.home.is_some())
    }

    /// The same, without waiting.
    fn is_home(&mut self) -> bool {
        if let Some(lent) = self.lent.as_mut() {
            match lent.try_recv() {
                Ok(read) => {
                    self.home = Some(read);
                    self.lent = None;
                }
                Err(oneshot::error::TryRecvError::Empty) => return false,
                Err(oneshot::error::TryRecvError::Closed) => self.lent = None,
            }
        }
        self.home.is_some()
    }

    /// Ready once the client has closed its side (or its connection failed) while a request is
    /// being handled or answered: the request is abandoned, as hyper's server does. Not while
    /// pipelined bytes wait (the client still wants answers), nor while the body has the read
    /// half.
    fn poll_gone(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        let Poll::Ready(true) = self.poll_home(cx) else {
            return Poll::Pending;
        };
        let Some(read) = self.home.as_mut().filter(|read| read.buf.is_empty()) else {
            return Poll::Pending;
        };
        match read.poll_fill(cx) {
            Poll::Ready(Ok(0) | Err(_)) => Poll::Ready(()),
            Poll::Ready(Ok(_)) | Poll::Pending => Poll::Pending,
        }
    }
}

/// Who writes first after an `Expect: 100-continue` head: the body (`100 Continue`, when it is
/// first read) or the connection (the final answer, which makes the `100` pointless).
#[derive(Debug, Default)]
struct Interim(AtomicU8);

impl Interim {
    const OPEN: u8 = 0;
    const WRITING: u8 = 1;
    const ANSWERING: u8 = 2;
    const SENT: u8 = 3;
    const BROKEN: u8 = 4;

    /// Claims the connection for the final answer; `false` if a half-written `100` broke it.
    async fn claim_for_answer(&self) -> bool {
        loop {
            match self
                .0
                .compare_exchange(Self::OPEN, Self::ANSWERING, Ordering::AcqRel, Ordering::Acquire)
            {
                Ok(_) | Err(Self::SENT | Self::ANSWERING) => return true,
                Err(Self::BROKEN) => return false,
                // The body is inside one non-blocking write.
                Err(_) => tokio::task::yield_now().await,
            }
        }
    }
}

/// A client's request body, read straight from its connection.
#[derive(Debug)]
pub struct RequestBody {
    /// The connection's read half, until the body's end.
    read: Option<Box<ReadSide>>,
    framing: Framing,
    /// Where the read half goes back to at the body's end.
    back: Option<oneshot::Sender<Box<ReadSide>>>,
    /// Chunk extension bytes read so far.
    extensions: usize,
    /// `Expect: 100-continue`: sent when the body is first read, unless the answer came first.
    interim: Option<Arc<Interim>>,
}

/// Why a client's request body could not be read.
#[derive(Debug)]
pub struct BodyError(&'static str);

impl std::fmt::Display for BodyError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.0)
    }
}

impl std::error::Error for BodyError {}

impl RequestBody {
    fn give_back(&mut self) {
        if let (Some(read), Some(back)) = (self.read.take(), self.back.take()) {
            let _ = back.send(read);
        }
    }

    fn fail(&mut self, why: &'static str) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        self.read = None;
        Poll::Ready(Some(Err(Box::new(BodyError(why)))))
    }

    /// Sends `100 Continue` unless the final answer has started. One non-blocking write: a
    /// client that leaves no room for 25 bytes is not reading, and a `100` cut short breaks the
    /// connection.
    fn poll_continue(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), &'static str>> {
        let (Some(interim), Some(read)) = (self.interim.as_ref(), self.read.as_ref()) else {
            return Poll::Ready(Ok(()));
        };
        let stream: &TcpStream = read.io.as_ref();
        loop {
            if interim
                .0
                .compare_exchange(Interim::OPEN, Interim::WRITING, Ordering::AcqRel, Ordering::Acquire)
                .is_err()
            {
                // The answer has started: no `100` any more.
                self.interim = None;
                return Poll::Ready(Ok(()));
            }
            let (state, result) = match stream.try_write(CONTINUE) {
                Ok(n) if n == CONTINUE.len() => (Interim::SENT, Ok(())),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => (Interim::OPEN, Err(None)),
                _ => (Interim::BROKEN, Err(Some("the client connection failed"))),
            };
            interim.0.store(state, Ordering::Release);
            match result {
                Ok(()) => {
                    self.interim = None;
                    return Poll::Ready(Ok(()));
                }
                Err(Some(why)) => return Poll::Ready(Err(why)),
                Err(None) => {
                    if ready!(stream.poll_write_ready(cx)).is_err() {
                        return Poll::Ready(Err("the client connection failed"));
                    }
                }
            }
        }
    }
}

impl Body for RequestBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        if this.interim.is_some() {
            if let Err(why) = ready!(this.poll_continue(cx)) {
                return this.fail(why);
            }
        }
        loop {
            let Some(read) = this.read.as_mut() else {
                return Poll::Ready(None);
            };
            let step = this.framing.step_counting(&mut read.buf, &mut this.extensions);
            if this.extensions > MAX_CHUNK_EXTENSIONS {
                return this.fail("chunk extensions over the limit");
            }
            match step {
                Step::Data(data) => {
                    if this.framing == Framing::Length(0) {
                        this.give_back();
                    }
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                Step::End(trailers) => {
                    this.framing = Framing::Length(0);
                    this.give_back();
                    return match trailers.map(|t| framing::parse_trailers(&t)) {
                        None | Some(Ok(None)) => Poll::Ready(None),
                        Some(Ok(Some(trailers))) => Poll::Ready(Some(Ok(Frame::trailers(trailers)))),
                        Some(Err(why)) => this.fail(why),
                    };
                }
                Step::Invalid => return this.fail("malformed chunked body"),
                Step::More => {}
            }
            match ready!(read.poll_fill(cx)) {
                Ok(0) => return this.fail("the client closed before the end of the body"),
                Ok(_) => {}
                Err(_) => return this.fail("the client connection failed during the body"),
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.framing == Framing::Length(0)
    }

    fn size_hint(&self) -> SizeHint {
        match self.framing.exact() {
            Some(n) => SizeHint::with_exact(n),
            None => SizeHint::default(),
        }
    }
}

/// The socket of a connection that switched protocols, and what the client sent past its
/// request head.
#[derive(Debug)]
pub struct Upgraded {
    /// The client's socket.
    pub io: TcpStream,
    /// Bytes already read from it.
    pub read: Bytes,
}

/// A request extension: where an upgrade request's connection goes after a `101`.
#[derive(Debug, Clone)]
pub struct PendingUpgrade(Arc<Mutex<Option<oneshot::Receiver<Upgraded>>>>);

impl PendingUpgrade {
    /// The receiver, once.
    pub(super) fn take(&self) -> Option<oneshot::Receiver<Upgraded>> {
        self.0.lock().ok()?.take()
    }
}

/// A request head, parsed.
struct Head {
    parts: http::request::Parts,
    checked: Checked,
    /// How the body is framed; `None`: no body.
    body: Option<Framing>,
    keep_alive: bool,
    expect_continue: bool,
    upgrade: bool,
    answer: Answering,
}

/// What the answer's framing depends on in its request.
struct Answering {
    head_request: bool,
    http10: bool,
    /// The client accepts trailers (`TE: trailers`).
    trailers: bool,
}

/// A head refused: its status and why.
type Refusal = (StatusCode, &'static str);

/// Where a field's name and value are in the head: `(name start, name end, value start, value end)`.
type Span = (u32, u32, u32, u32);

/// Serves one plain HTTP/1.1 connection until the client closes it or asks to, breaks the
/// protocol, or `stop` turns true.
pub async fn serve(
    stream: TcpStream,
    proxy: Arc<Proxy>,
    client: ClientInfo,
    settings: Settings,
    mut stop: watch::Receiver<bool>,
) {
    let (io, mut writer) = stream.into_split();
    let mut reader = Reader {
        home: Some(Box::new(ReadSide {
            io,
            buf: BytesMut::new(),
        })),
        lent: None,
    };
    let mut out = Vec::new();
    let mut timer: Option<Pin<Box<Sleep>>> = None;
    // `stop` only ever turns true: a change seen by this copy (one atomic load) means it did.
    let stopped = stop.clone();
    let mut stopping = pin!(stop.wait_for(|stop| *stop));
    let mut done = false;
    let mut poll_stop = move |cx: &mut Context<'_>| {
        if !done && stopping.as_mut().poll(cx).is_ready() {
            done = true;
        }
        done
    };

    loop {
        // The head: within `request_headers` of the end of the previous answer.
        let deadline = Instant::now() + settings.request_headers;
        let head = loop {
            let Some(read) = reader.home.as_mut() else { return };
            match parse_head(&mut read.buf, settings.head_limit) {
                Ok(Some(head)) => break head,
                Ok(None) => {}
                Err((status, why)) => {
                    tracing::debug!(%status, why, "request head refused");
                    refuse(&mut writer, status, why).await;
                    return;
                }
            }
            // Blank lines between requests are ignored (RFC 9112 §2.2): no request has begun.
            let idle = read.buf.iter().all(|&b| b == b'\r' || b == b'\n');
            let waited = poll_fn(|cx| {
                match read.poll_fill(cx) {
                    Poll::Ready(Ok(0) | Err(_)) => return Poll::Ready(Wait::Closed),
                    Poll::Ready(Ok(_)) => return Poll::Ready(Wait::More),
                    Poll::Pending => {}
                }
                if idle && poll_stop(cx) {
                    return Poll::Ready(Wait::Stop);
                }
                poll_deadline(&mut timer, deadline, cx).map(|()| Wait::Timeout)
            })
            .await;
            match waited {
                Wait::More => {}
                Wait::Closed | Wait::Stop => return,
                Wait::Timeout => {
                    tracing::debug!("no complete request head in time: connection closed");
                    return;
                }
            }
        };

        let Head {
            mut parts,
            checked,
            body,
            mut keep_alive,
            expect_continue,
            upgrade,
            answer,
        } = head;
        let (body, interim) = match body {
            None => (ClientBody::Empty, None),
            Some(framing) => {
                let (read, give) = reader.lend();
                let interim = expect_continue.then(Arc::<Interim>::default);
                let body = RequestBody {
                    read,
                    framing,
                    back: Some(give),
                    extensions: 0,
                    interim: interim.clone(),
                };
                (ClientBody::H1(Box::new(body)), interim)
            }
        };
        let upgrade = upgrade.then(|| {
            let (give, take) = oneshot::channel();
            parts
                .extensions
                .insert(PendingUpgrade(Arc::new(Mutex::new(Some(take)))));
            give
        });

        let response = {
            let mut handling = pin!(proxy.handle(Request::from_parts(parts, body), &client, Some(checked)));
            poll_fn(|cx| {
                if let Poll::Ready(response) = handling.as_mut().poll(cx) {
                    return Poll::Ready(Some(response));
                }
                reader.poll_gone(cx).map(|()| None)
            })
            .await
        };
        let Some(response) = response else {
            tracing::debug!("client closed its connection before the answer");
            return;
        };

        let status = response.status();
        // Shutting down: this is the connection's last answer. So is an answer before the body
        // was read to its end: what is left of it must not be read as the next request.
        keep_alive &= !stopped.has_changed().unwrap_or(true) && reader.is_home();
        if let Some(interim) = interim {
            if !interim.claim_for_answer().await {
                return;
            }
        }
        let sent = write_answer(&mut writer, &mut out, response, &answer, &mut keep_alive, &mut reader).await;
        if out.capacity() > MAX_IDLE_WRITE_BUFFER {
            out = Vec::new();
        }
        if status == StatusCode::SWITCHING_PROTOCOLS && sent {
            if let (Some(give), true, Some(read)) = (upgrade, reader.is_home(), reader.home.take()) {
                let ReadSide { io, buf } = *read;
                if let Ok(io) = io.reunite(writer) {
                    let _ = give.send(Upgraded { io, read: buf.freeze() });
                }
            }
            return;
        }
        if !(sent && keep_alive) {
            let _ = writer.shutdown().await;
            return;
        }
    }
}

/// What waiting for more of a head ended with.
enum Wait {
    More,
    Closed,
    Stop,
    Timeout,
}

/// Ready once `deadline` has passed. The timer is made once per connection and re-armed only
/// when it fires before the deadline now wanted (deadlines only move later).
fn poll_deadline(timer: &mut Option<Pin<Box<Sleep>>>, deadline: Instant, cx: &mut Context<'_>) -> Poll<()> {
    let sleep = timer.get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
    loop {
        ready!(sleep.as_mut().poll(cx));
        if sleep.deadline() >= deadline {
            return Poll::Ready(());
        }
        sleep.as_mut().reset(deadline);
    }
}

/// Parses the request head at the start of `buf`; `Ok(None)`: not complete yet.
fn parse_head(buf: &mut BytesMut, limit: usize) -> Result<Option<Head>, Refusal> {
    const TOO_LARGE: StatusCode = StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE;
    if buf.is_empty() {
        return Ok(None);
    }
    // Most heads have a few fields: their spans stay on the stack.
    let mut few: [Span; FEW_HEADERS] = [(0, 0, 0, 0); FEW_HEADERS];
    let mut many = Vec::new();
    let (len, method, target, version, fields) = {
        let mut slots = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS];
        let mut request = httparse::Request::new(&mut []);
        let len = match request.parse_with_uninit_headers(buf, &mut slots) {
            Ok(httparse::Status::Complete(len)) if len <= limit => len,
            Ok(httparse::Status::Complete(_)) => return Err((TOO_LARGE, "request head too large")),
            Ok(httparse::Status::Partial) if buf.len() >= limit => return Err((TOO_LARGE, "request head too large")),
            Ok(httparse::Status::Partial) => return Ok(None),
            Err(httparse::Error::TooManyHeaders) => return Err((TOO_LARGE, "too many header fields")),
            Err(httparse::Error::Version) => {
                return Err((StatusCode::HTTP_VERSION_NOT_SUPPORTED, "HTTP version not supported"))
            }
            Err(_) => return Err((StatusCode::BAD_REQUEST, "malformed request head")),
        };
        let base = buf.as_ptr() as usize;
        let at = |s: &[u8]| (s.as_ptr() as usize - base) as u32;
        if request.headers.len() > FEW_HEADERS {
            many.resize(request.headers.len(), (0, 0, 0, 0));
        }
        let spans = if many.is_empty() { &mut few[..] } else { &mut many[..] };
        for (span, h) in spans.iter_mut().zip(request.headers.iter()) {
            let (name, value) = (at(h.name.as_bytes()), at(h.value));
            *span = (name, name + h.name.len() as u32, value, value + h.value.len() as u32);
        }
        let (Some(method), Some(path), Some(version)) = (request.method, request.path, request.version) else {
            return Err((StatusCode::BAD_REQUEST, "malformed request line"));
        };
        let method = Method::from_bytes(method.as_bytes()).map_err(|_| (StatusCode::BAD_REQUEST, "invalid method"))?;
        let target = (at(path.as_bytes()), path.len() as u32);
        (len, method, target, version, request.headers.len())
    };
    let head = buf.split_to(len).freeze();
    let (start, target_len) = (target.0 as usize, target.1 as usize);
    let uri = Uri::from_maybe_shared(head.slice(start..start + target_len))
        .map_err(|_| (StatusCode::BAD_REQUEST, "invalid request target"))?;
    let http10 = version == 0;

    // Room for what the proxy adds, so the map does not grow on the way.
    let mut headers = HeaderMap::with_capacity(fields + ADDED_FIELDS);
    let mut scan = FieldScan::default();
    let mut length = None::<u64>;
    let (mut close, mut keep_alive, mut upgrade_token, mut upgrade_field) = (false, false, false, false);
    let (mut expect_continue, mut trailers) = (false, false);
    let spans = if many.is_empty() { &few[..] } else { &many[..] };
    for &(name_start, name_end, value_start, value_end) in &spans[..fields] {
        let name = HeaderName::from_bytes(&head[name_start as usize..name_end as usize])
            .map_err(|_| (StatusCode::BAD_REQUEST, "invalid header name"))?;
        let value = HeaderValue::from_maybe_shared(head.slice(value_start as usize..value_end as usize))
            .map_err(|_| (StatusCode::BAD_REQUEST, "invalid header value"))?;
        let bytes = value.as_bytes();
        if name == header::CONTENT_LENGTH {
            let n = framing::decimal(bytes.trim_ascii()).ok_or((StatusCode::BAD_REQUEST, "invalid content-length"))?;
            if length.is_some_and(|l| l != n) {
                return Err((StatusCode::BAD_REQUEST, "conflicting content-length"));
            }
            length = Some(n);
        } else if name == header::CONNECTION {
            for token in tokens(bytes) {
                close |= token.eq_ignore_ascii_case(b"close");
                keep_alive |= token.eq_ignore_ascii_case(b"keep-alive");
                upgrade_token |= token.eq_ignore_ascii_case(b"upgrade");
            }
        } else if name == header::EXPECT {
            expect_continue |= bytes.trim_ascii().eq_ignore_ascii_case(b"100-continue");
        } else if name == header::TE {
            trailers |= tokens(bytes).any(|t| t.eq_ignore_ascii_case(b"trailers"));
        } else if name == header::UPGRADE {
            upgrade_field = true;
        }
        scan.field(&name, bytes);
        headers.append(name, value);
    }

    let version = if http10 { Version::HTTP_10 } else { Version::HTTP_11 };
    let checked = scan.check(version).map_err(|why| (StatusCode::BAD_REQUEST, why))?;
    let body = if scan.coded() {
        if http10 {
            return Err((StatusCode::BAD_REQUEST, "transfer-encoding in an HTTP/1.0 request"));
        }
        if length.is_some() {
            // Both: the coding frames the body, the length goes, and nothing after this
            // request is trusted (RFC 9112 §6.3).
            headers.remove(header::CONTENT_LENGTH);
            close = true;
        }
        Some(Framing::ChunkSize)
    } else {
        length.filter(|&n| n > 0).map(Framing::Length)
    };
    let mut parts = Request::new(()).into_parts().0;
    parts.method = method;
    parts.uri = uri;
    parts.version = version;
    parts.headers = headers;
    let upgrade = upgrade_field && upgrade_token && !http10 && crate::forward::is_upgrade(&parts.headers);
    let answer = Answering {
        head_request: parts.method == Method::HEAD,
        http10,
        trailers,
    };
    Ok(Some(Head {
        parts,
        checked,
        body,
        keep_alive: if http10 { keep_alive && !close } else { !close },
        expect_continue: expect_continue && !http10,
        upgrade,
        answer,
    }))
}

/// Reads requests from `data` as a connection would (heads, then their bodies), in pieces as long
/// as its first byte says (0: all at once); exists for the `http1` fuzz target, and panics if an
/// invariant breaks.
#[doc(hidden)]
pub fn fuzz_request(data: &[u8]) {
    const LIMIT: usize = 8 << 10;
    let Some((&piece, mut rest)) = data.split_first() else {
        return;
    };
    let piece = if piece == 0 { usize::MAX } else { usize::from(piece) };
    // Moves the next piece of the input into `buf`; how many bytes (0: the input is all read).
    let mut feed = |buf: &mut BytesMut| {
        let n = piece.min(rest.len());
        buf.extend_from_slice(&rest[..n]);
        rest = &rest[n..];
        n
    };
    let mut buf = BytesMut::new();
    loop {
        let before = buf.len();
        let head = match parse_head(&mut buf, LIMIT) {
            Ok(Some(head)) => head,
            Ok(None) => {
                assert_eq!(buf.len(), before, "an incomplete head consumed input");
                if feed(&mut buf) == 0 {
                    return;
                }
                continue;
            }
            Err((status, _)) => {
                assert!(matches!(status.as_u16(), 400 | 431 | 505), "refused with {status}");
                return;
            }
        };
        let consumed = before - buf.len();
        assert!(consumed > 0 && consumed <= LIMIT, "a head of {consumed} bytes");
        if let Some(mut framing) = head.body {
            let declared = framing.exact();
            let (mut taken, mut extensions) = (0u64, 0);
            loop {
                let len = buf.len();
                match framing.step_counting(&mut buf, &mut extensions) {
                    Step::Data(data) => {
                        assert!(!data.is_empty() && data.len() <= len - buf.len(), "more data than read");
                        taken += data.len() as u64;
                        assert!(declared.is_none_or(|n| taken <= n), "{taken} bytes of {declared:?}");
                    }
                    Step::End(trailers) => {
                        assert!(declared.is_none_or(|n| taken == n), "{taken} bytes of {declared:?}");
                        if let Some(trailers) = trailers {
                            let _ = framing::parse_trailers(&trailers);
                        }
                        break;
                    }
                    Step::More if feed(&mut buf) > 0 => {}
                    Step::More | Step::Invalid => return,
                }
                if extensions > MAX_CHUNK_EXTENSIONS {
                    return;
                }
            }
        }
        if !head.keep_alive || head.upgrade {
            return;
        }
    }
}

/// How an answer's body is framed on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Out {
    /// No body (HEAD, 1xx, 204, 304).
    None,
    Length(u64),
    Chunked,
    /// Until the connection closes (HTTP/1.0, unknown length).
    UntilClose,
}

/// Writes `response` for a request described by `answer`; `false` if the answer could not be
/// sent whole (the connection must close). Clears `keep_alive` when the answer says `close` or
/// is framed by the close.
async fn write_answer(
    writer: &mut OwnedWriteHalf,
    out: &mut Vec<u8>,
    response: Response<ResponseBody>,
    answer: &Answering,
    keep_alive: &mut bool,
    reader: &mut Reader,
) -> bool {
    let (parts, mut body) = response.into_parts();
    let status = parts.status;
    let no_length = status.is_informational() || status == StatusCode::NO_CONTENT;
    let framing = if answer.head_request || no_length || status == StatusCode::NOT_MODIFIED {
        Out::None
    } else if let Some(n) = body.size_hint().exact() {
        Out::Length(n)
    } else if answer.http10 {
        Out::UntilClose
    } else {
        Out::Chunked
    };
    if framing == Out::UntilClose {
        *keep_alive = false;
    }

    out.clear();
    // The highest version sluice speaks, to HTTP/1.0 clients too (RFC 9110 §6.2).
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(status.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(status.canonical_reason().unwrap_or("").as_bytes());
    out.extend_from_slice(b"\r\n");
    let mut dated = false;
    for (name, value) in &parts.headers {
        if *name == header::CONNECTION {
            if tokens(value.as_bytes()).any(|t| t.eq_ignore_ascii_case(b"close")) {
                *keep_alive = false;
            }
            if status != StatusCode::SWITCHING_PROTOCOLS {
                continue;
            }
        } else if *name == header::CONTENT_LENGTH {
            // HEAD and 304 say the length the full answer would have.
            if framing != Out::None || no_length {
                continue;
            }
        } else if *name == header::TRANSFER_ENCODING {
            continue;
        } else if *name == header::DATE {
            dated = true;
        }
        put_header(out, name.as_str().as_bytes(), value.as_bytes());
    }
    if !dated {
        out.extend_from_slice(b"date: ");
        put_date(out);
        out.extend_from_slice(b"\r\n");
    }
    match framing {
        Out::Length(n) => {
            out.extend_from_slice(b"content-length: ");
            out.extend_from_slice(itoa(n, &mut [0; 20]));
            out.extend_from_slice(b"\r\n");
        }
        Out::Chunked => out.extend_from_slice(b"transfer-encoding: chunked\r\n"),
        Out::None | Out::UntilClose => {}
    }
    if status != StatusCode::SWITCHING_PROTOCOLS {
        if !*keep_alive && !answer.http10 {
            out.extend_from_slice(b"connection: close\r\n");
        } else if *keep_alive && answer.http10 {
            out.extend_from_slice(b"connection: keep-alive\r\n");
        }
    }
    out.extend_from_slice(b"\r\n");
    if framing == Out::None {
        return writer.write_all(out).await.is_ok();
    }

    let mut left = match framing {
        Out::Length(n) => n,
        _ => u64::MAX,
    };
    loop {
        // What is ready goes out together; before waiting for more, what is here goes out.
        let frame = match poll_fn(|cx| Poll::Ready(Pin::new(&mut body).poll_frame(cx))).await {
            Poll::Ready(frame) => frame,
            Poll::Pending => {
                if writer.write_all(out).await.is_err() {
                    return false;
                }
                out.clear();
                // A stalled stream (server-sent events, a long poll) is given up when the
                // client leaves, rather than when the upstream next sends.
                let next = poll_fn(|cx| match Pin::new(&mut body).poll_frame(cx) {
                    Poll::Ready(frame) => Poll::Ready(Some(frame)),
                    Poll::Pending => reader.poll_gone(cx).map(|()| None),
                })
                .await;
                let Some(frame) = next else {
                    tracing::debug!("client closed its connection during the answer");
                    return false;
                };
                frame
            }
        };
        let data = match frame {
            None => {
                if framing == Out::Chunked {
                    out.extend_from_slice(b"0\r\n\r\n");
                }
                // A body that ended short of its length leaves the client waiting: close.
                let whole = !matches!(framing, Out::Length(_)) || left == 0;
                return writer.write_all(out).await.is_ok() && whole;
            }
            Some(Err(error)) => {
                tracing::debug!(%error, "answer body failed: connection closed");
                let _ = writer.write_all(out).await;
                return false;
            }
            Some(Ok(frame)) => match frame.into_data() {
                Ok(data) => data,
                Err(frame) => {
                    if let (Ok(trailers), Out::Chunked) = (frame.into_trailers(), framing) {
                        out.extend_from_slice(b"0\r\n");
                        if answer.trailers {
                            put_headers(out, &trailers);
                        }
                        out.extend_from_slice(b"\r\n");
                        return writer.write_all(out).await.is_ok();
                    }
                    continue;
                }
            },
        };
        if data.is_empty() {
            continue;
        }
        if data.len() as u64 > left {
            tracing::debug!("answer body longer than its length: connection closed");
            let _ = writer.write_all(out).await;
            return false;
        }
        if framing == Out::Chunked {
            put_hex(out, data.len());
            out.extend_from_slice(b"\r\n");
        } else {
            left -= data.len() as u64;
        }
        if data.len() <= COALESCE {
            out.extend_from_slice(&data);
        } else {
            if writer.write_all(out).await.is_err() || writer.write_all(&data).await.is_err() {
                return false;
            }
            out.clear();
        }
        if framing == Out::Chunked {
            out.extend_from_slice(b"\r\n");
        }
        if out.len() >= COALESCE {
            if writer.write_all(out).await.is_err() {
                return false;
            }
            out.clear();
        }
    }
}

/// Answers a refused head with `status` and closes.
async fn refuse(writer: &mut OwnedWriteHalf, status: StatusCode, why: &str) {
    let mut out = Vec::with_capacity(256);
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(status.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(status.canonical_reason().unwrap_or("").as_bytes());
    out.extend_from_slice(b"\r\ncontent-type: text/plain; charset=utf-8\r\nconnection: close\r\ndate: ");
    put_date(&mut out);
    out.extend_from_slice(b"\r\ncontent-length: ");
    out.extend_from_slice(itoa(why.len() as u64 + 1, &mut [0; 20]));
    out.extend_from_slice(b"\r\n\r\n");
    out.extend_from_slice(why.as_bytes());
    out.push(b'\n');
    if writer.write_all(&out).await.is_ok() {
        let _ = writer.shutdown().await;
    }
}
