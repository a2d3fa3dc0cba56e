//! sluice's HTTP/2 server: the `h2` crate's connection, driven by one task per connection that
//! also runs every stream's handler (no task per stream, as hyper's server spawns).
//!
//! The connection's task polls, in turn, the streams in progress (a `FuturesUnordered`: only
//! those woken are polled) and the connection itself, which reads frames, hands over new streams
//! and writes what the streams queued. Per stream: the handler runs until it answers or the client
//! resets the stream (the handler is then dropped, which cancels its upstream request), then the
//! answer's body is sent as the client's flow control allows.
//!
//! Settings are hyper's server defaults (1 MiB windows, 16 KiB frames, 200 concurrent streams,
//! 400 KiB send buffer per stream, 1024 locally reset streams before the connection is closed),
//! with the head limit as the header list size. Pings every [`KEEP_ALIVE_INTERVAL`] close a
//! client that does not answer within [`KEEP_ALIVE_TIMEOUT`].

use std::future::{poll_fn, Future};
use std::pin::{pin, Pin};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Buf, Bytes};
use futures_util::stream::{FuturesUnordered, StreamExt};
use h2::server::SendResponse;
use h2::{Ping, Reason, RecvStream, SendStream};
use http::{header, Method, Request, Response};
use http_body::{Body, Frame, SizeHint};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::watch;
use tokio::time::{Instant, Sleep};

use super::{BoxError, ClientBody};
use crate::body::ResponseBody;
use crate::forward::ClientInfo;
use crate::proxy::Proxy;

/// Interval of pings to a client connection.
pub const KEEP_ALIVE_INTERVAL: Duration = Duration::from_secs(30);
/// A client that does not answer a ping within this is closed.
pub const KEEP_ALIVE_TIMEOUT: Duration = Duration::from_secs(20);

const WINDOW: u32 = 1 << 20;
const MAX_FRAME: u32 = 16 << 10;
const MAX_STREAMS: u32 = 200;
const MAX_SEND_BUFFER: usize = 400 << 10;
const MAX_LOCAL_ERROR_RESETS: usize = 1024;

/// Per listener.
#[derive(Debug, Clone, Copy)]
pub struct Settings {
    /// Largest header list a client may send (`SETTINGS_MAX_HEADER_LIST_SIZE`); a larger one is
    /// answered `431` by `h2`.
    pub head_limit: u32,
}

/// Serves one HTTP/2 connection (the client preface not yet read) until the client closes it,
/// it breaks the protocol, or `stop` turns true and its streams are done.
pub async fn serve<T>(io: T, proxy: Arc<Proxy>, client: ClientInfo, settings: Settings, mut stop: watch::Receiver<bool>)
where
    T: AsyncRead + AsyncWrite + Unpin,
{
    let handshake = h2::server::Builder::new()
        .initial_window_size(WINDOW)
        .initial_connection_window_size(WINDOW)
        .max_frame_size(MAX_FRAME)
        .max_header_list_size(settings.head_limit)
        .max_concurrent_streams(MAX_STREAMS)
        .max_send_buffer_size(MAX_SEND_BUFFER)
        .max_local_error_reset_streams(Some(MAX_LOCAL_ERROR_RESETS))
        .handshake::<_, Bytes>(io);
    let mut conn = tokio::select! {
        conn = handshake => match conn {
            Ok(conn) => conn,
            Err(error) => {
                tracing::debug!(%error, "HTTP/2 handshake failed");
                return;
            }
        },
        _ = stop.wait_for(|stop| *stop) => return,
    };
    let mut keep_alive = KeepAlive::new(conn.ping_pong());
    let (proxy, client) = (&*proxy, &client);
    let mut streams = FuturesUnordered::new();
    // `stop` only ever turns true: a change seen by this copy (one atomic load) means it did, and
    // only then is `stopping` polled again (its first poll, outside the budget, registered this
    // task).
    let seen = stop.clone();
    let mut stopping = pin!(stop.wait_for(|stop| *stop));
    let mut stopped = false;
    let mut registered = false;
    let ended = poll_fn(|cx| loop {
        // Streams first: what they queue is written by the connection's poll just after.
        while let Poll::Ready(Some(())) = streams.poll_next_unpin(cx) {}
        match conn.poll_accept(cx) {
            Poll::Ready(Some(Ok((request, reply)))) => {
                // Boxed where it is made: the set would move the whole request's state about
                // three times on the way in.
                streams.push(Box::pin(respond(proxy, client, request, reply)));
                continue;
            }
            Poll::Ready(Some(Err(error))) => return Poll::Ready(Err(error)),
            Poll::Ready(None) => return Poll::Ready(Ok(())),
            Poll::Pending => {}
        }
        if !stopped && (!registered || seen.has_changed().unwrap_or(true)) && {
            registered = true;
            poll_unconstrained(&mut stopping, cx).is_ready()
        } {
            // GOAWAY: no new streams; the connection closes once those in progress are done.
            stopped = true;
            conn.graceful_shutdown();
            continue;
        }
        if keep_alive.poll_timed_out(cx) {
            // Closed, not shut down: a client that does not read would never take a GOAWAY.
            tracing::debug!("HTTP/2 client did not answer a ping: connection closed");
            return Poll::Ready(Ok(()));
        }
        return Poll::Pending;
    })
    .await;
    if let Err(error) = ended {
        tracing::debug!(%error, "HTTP/2 client connection ended with an error");
    }
}

/// Pings the client every [`KEEP_ALIVE_INTERVAL`]; one unanswered after [`KEEP_ALIVE_TIMEOUT`]
/// means it is gone.
struct KeepAlive {
    ping: Option<h2::PingPong>,
    timer: Pin<Box<Sleep>>,
    armed: bool,
    waiting: bool,
}

impl KeepAlive {
    fn new(ping: Option<h2::PingPong>) -> Self {
        Self {
            ping,
            timer: Box::pin(tokio::time::sleep(KEEP_ALIVE_INTERVAL)),
            armed: false,
            waiting: false,
        }
    }

    /// Sets the timer `after` from now, and registers this task with it. The connection's task
    /// polls this on every wake-up, and its waker does not change: the timer is polled again
    /// only once it fired (one flag to read, not a timer poll per wake-up).
    fn arm(&mut self, after: Duration, cx: &mut Context<'_>) {
        self.armed = true;
        self.timer.as_mut().reset(Instant::now() + after);
        let _ = poll_unconstrained(&mut self.timer, cx);
    }

    fn poll_timed_out(&mut self, cx: &mut Context<'_>) -> bool {
        if self.ping.is_none() {
            return false;
        }
        if !self.armed {
            self.arm(KEEP_ALIVE_INTERVAL, cx);
        }
        if self.waiting {
            match self.ping.as_mut().map(|ping| ping.poll_pong(cx)) {
                Some(Poll::Ready(Ok(_))) => {
                    self.waiting = false;
                    self.arm(KEEP_ALIVE_INTERVAL, cx);
                }
                Some(Poll::Pending) => {}
                // The connection failed: it ends by itself.
                _ => return false,
            }
        }
        if !self.timer.is_elapsed() {
            return false;
        }
        if self.waiting {
            return true;
        }
        let Some(ping) = self.ping.as_mut() else { return false };
        if ping.send_ping(Ping::opaque()).is_err() {
            return false;
        }
        // Registers this task for the pong.
        let _ = ping.poll_pong(cx);
        self.waiting = true;
        self.arm(KEEP_ALIVE_TIMEOUT, cx);
        false
    }
}

/// Polls `future` outside tokio's cooperative budget. The connection's task may have spent its
/// budget on its streams; a poll the budget refuses returns `Pending` without registering the
/// task, and the futures polled through this are polled again only once they have woken it.
fn poll_unconstrained<F: Future + Unpin>(future: &mut F, cx: &mut Context<'_>) -> Poll<F::Output> {
    pin!(tokio::task::unconstrained(
        poll_fn(|cx| Pin::new(&mut *future).poll(cx))
    ))
    .poll(cx)
}

/// One stream: the handler's answer, then its body.
async fn respond(proxy: &Proxy, client: &ClientInfo, request: Request<RecvStream>, mut reply: SendResponse<Bytes>) {
    // Looked up only for a request with a body to come (most have none).
    let length = if request.body().is_end_stream() {
        Some(0)
    } else {
        request
            .headers()
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok()?.parse().ok())
    };
    let head = request.method() == Method::HEAD;
    let request = request.map(|recv| ClientBody::H2(RequestBody::new(recv, length)));
    let mut handling = pin!(proxy.handle(request, client, None));
    let answered = poll_fn(|cx| {
        if let Poll::Ready(response) = handling.as_mut().poll(cx) {
            return Poll::Ready(Some(response));
        }
        // A client that resets the stream cancels the request (and its upstream request).
        reply.poll_reset(cx).map(|_| None)
    })
    .await;
    let Some(response) = answered else { return };
    // The handler has removed hop-by-hop fields, which HTTP/2 forbids (RFC 9113 §8.2.2): an
    // answer with one left would fail to send, and the stream be reset, below.
    let (mut parts, body) = response.into_parts();
    // Upstream answers have one: a lookup (not `entry`, which costs more when the field is there).
    if !parts.headers.contains_key(header::DATE) {
        parts.headers.insert(header::DATE, super::date_value());
    }
    if !body.is_end_stream() {
        if let Some(length) = body.size_hint().exact() {
            parts
                .headers
                .entry(header::CONTENT_LENGTH)
                .or_insert_with(|| length.into());
        }
    }
    // The answer to a `HEAD` has no body (RFC 9110 §9.3.2), the proxy's own answers included.
    let end = head || body.is_end_stream();
    match reply.send_response(Response::from_parts(parts, ()), end) {
        Ok(stream) if !end => send_body(body, stream).await,
        Ok(_) => {}
        Err(error) => {
            tracing::debug!(%error, "HTTP/2 answer not sent");
            reply.send_reset(Reason::INTERNAL_ERROR);
        }
    }
}

/// Sends `body` on `stream` as the client's flow control allows; stops at the client's reset.
async fn send_body(mut body: ResponseBody, mut stream: SendStream<Bytes>) {
    let outcome: Result<(), BoxError> = async {
        loop {
            let frame = poll_fn(|cx| {
                if let Poll::Ready(reason) = stream.poll_reset(cx) {
                    return Poll::Ready(Err(match reason {
                        Ok(reason) => BoxError::from(h2::Error::from(reason)),
                        Err(e) => e.into(),
                    }));
                }
                Pin::new(&mut body).poll_frame(cx).map(Ok)
            })
            .await?;
            let frame = match frame {
                None => return Ok(stream.send_data(Bytes::new(), true)?),
                Some(frame) => frame.inspect_err(|_| {
                    // The upstream's body broke: the client must not take it for complete.
                    stream.send_reset(Reason::INTERNAL_ERROR);
                })?,
            };
            let frame = match frame.into_data() {
                Ok(data) => {
                    let end = body.is_end_stream();
                    if !data.has_remaining() && !end {
                        continue;
                    }
                    if data.has_remaining() {
                        // Room for a byte at least: what the client's window cannot take yet
                        // waits in `h2`, so at most this chunk per stream.
                        stream.reserve_capacity(data.remaining());
                        poll_fn(|cx| capacity(&mut stream, cx)).await?;
                    }
                    stream.send_data(data, end)?;
                    if end {
                        return Ok(());
                    }
                    continue;
                }
                Err(frame) => frame,
            };
            if let Ok(trailers) = frame.into_trailers() {
                return Ok(stream.send_trailers(trailers)?);
            }
        }
    }
    .await;
    if let Err(error) = outcome {
        tracing::debug!(%error, "HTTP/2 answer body not sent");
    }
}

/// Waits until `stream` may send at least one byte.
fn capacity(stream: &mut SendStream<Bytes>, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
    loop {
        if stream.capacity() > 0 {
            return Poll::Ready(Ok(()));
        }
        match std::task::ready!(stream.poll_capacity(cx)) {
            Some(Ok(_)) => {}
            Some(Err(e)) => return Poll::Ready(Err(e.into())),
            None => return Poll::Ready(Err("HTTP/2 stream closed".into())),
        }
    }
}

/// A client's request body on an HTTP/2 stream: data as it arrives (the window is given back as
/// each chunk is taken), then trailers.
#[derive(Debug)]
pub struct RequestBody {
    recv: RecvStream,
    /// What `Content-Length` says is still to come, if it said anything.
    remaining: Option<u64>,
    data_done: bool,
}

impl RequestBody {
    /// `length`: the request's `Content-Length` (`h2` resets a stream whose body does not
    /// match it).
    fn new(recv: RecvStream, length: Option<u64>) -> Self {
        Self {
            recv,
            remaining: length,
            data_done: false,
        }
    }
}

impl Body for RequestBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        if !this.data_done {
            match std::task::ready!(this.recv.poll_data(cx)) {
                Some(Ok(data)) => {
                    let _ = this.recv.flow_control().release_capacity(data.len());
                    if let Some(remaining) = this.remaining.as_mut() {
                        *remaining = remaining.saturating_sub(data.len() as u64);
                    }
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                Some(Err(e)) => return Poll::Ready(Some(Err(e.into()))),
                None => this.data_done = true,
            }
        }
        match std::task::ready!(this.recv.poll_trailers(cx)) {
            Ok(Some(trailers)) => Poll::Ready(Some(Ok(Frame::trailers(trailers)))),
            Ok(None) => Poll::Ready(None),
            Err(e) => Poll::Ready(Some(Err(e.into()))),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.recv.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        if self.recv.is_end_stream() {
            return SizeHint::with_exact(0);
        }
        self.remaining.map_or_else(SizeHint::default, SizeHint::with_exact)
    }
}
