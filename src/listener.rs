//! Request path, step 0: accepting connections. A plain listener serves HTTP/1.1 (with sluice's
//! own codec, [`crate::server::h1`]) and h2c (prior knowledge, [`crate::server::h2`]) on one
//! port; a TLS listener serves HTTP/2 ([`crate::server::h2`]) or HTTP/1.1 (hyper) as ALPN
//! agreed. All with upgrades (HTTP/1.1), a request-head timeout (which also bounds the TLS
//! handshake), a request-head size limit, and graceful shutdown. Past `max_connections`, a new
//! connection is closed at once.

use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::config::{Limits, MAX_MAX_REQUEST_HEADERS, MIN_MAX_REQUEST_HEADERS};
use crate::forward::ClientInfo;
use crate::proxy::Proxy;
use crate::server::{self, ClientBody};
use crate::tls::Terminator;

/// The HTTP/2 client connection preface (RFC 9113 §3.4).
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
/// How often a partial HTTP/2 preface is looked at again.
const PREFACE_RECHECK: Duration = Duration::from_millis(10);

/// Pause after a failed `accept` (out of file descriptors, say) so the loop does not spin.
const ACCEPT_ERROR_BACKOFF: Duration = Duration::from_millis(50);
/// The first byte of a TLS handshake record.
const TLS_HANDSHAKE_RECORD: u8 = 0x16;
/// What a plain-HTTP request to a TLS port is told, as NGINX does it.
const PLAIN_HTTP_TO_TLS: &str = "This port speaks HTTPS: a plain HTTP request was sent to it.\n";
/// Most bytes of a plain-HTTP request read (and dropped) before the answer, so closing does not
/// reset the connection under the answer.
const PLAIN_HTTP_DRAIN: usize = 64 << 10;

/// A bound data-plane socket, and its TLS side if it terminates TLS.
#[derive(Debug)]
pub struct Listener {
    /// The socket.
    pub tcp: TcpListener,
    /// Handshakes and certificates; `None`: plain HTTP/1.1 and h2c.
    pub tls: Option<Arc<Terminator>>,
}

impl From<TcpListener> for Listener {
    fn from(tcp: TcpListener) -> Self {
        Self { tcp, tls: None }
    }
}

/// How connections are served: hyper's builder for HTTP/1.1 over TLS, sluice's own HTTP/1.1
/// codec for plain connections, and sluice's HTTP/2 server (on `h2`) for both.
struct Builders {
    http1: auto::Builder<TokioExecutor>,
    own_http1: server::h1::Settings,
    own_http2: server::h2::Settings,
}

/// Serves `listeners` until `shutdown` completes, then drains open connections for at most
/// `limits.drain`: in-flight requests finish, idle connections close, new ones are refused.
pub async fn serve(listeners: Vec<Listener>, proxy: Arc<Proxy>, limits: &Limits, shutdown: impl Future<Output = ()>) {
    let (request_headers, drain) = (limits.request_headers, limits.drain);
    // hyper answers a head that does not fit with `431` and closes (HTTP/1.1), or resets the
    // stream with a `431` (HTTP/2). The clamp keeps hyper's own minimum even for a hand-built
    // `Limits`: below it, `max_buf_size` panics.
    let head_limit = limits
        .max_request_headers
        .clamp(MIN_MAX_REQUEST_HEADERS, MAX_MAX_REQUEST_HEADERS);
    let graceful = GracefulShutdown::new();
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(request_headers)
        .max_buf_size(usize::try_from(head_limit).unwrap_or(usize::MAX));
    let builders = Arc::new(Builders {
        http1: builder.http1_only(),
        // HTTP/2 has no head timeout once a connection is up: `h2` pings clients and closes the
        // ones that stop answering, so dead peers do not hold connections forever.
        own_http2: server::h2::Settings {
            head_limit: u32::try_from(head_limit).unwrap_or(u32::MAX),
        },
        own_http1: server::h1::Settings {
            head_limit: usize::try_from(head_limit).unwrap_or(usize::MAX),
            request_headers,
        },
    });
    // Connections served by sluice's own codec hold a sender each: when all are gone, they are.
    let (open, mut all_closed) = tokio::sync::mpsc::channel::<()>(1);

    // Connections that have not sent a request yet are closed at once on shutdown.
    let (stopping, stop) = tokio::sync::watch::channel(false);
    let accepting = futures_util::future::join_all(
        listeners
            .into_iter()
            .map(|listener| accept_loop(listener, &proxy, &builders, &graceful, &open, &stop)),
    );
    tokio::select! {
        _ = accepting => {}
        () = shutdown => {}
    }
    let _ = stopping.send(true);
    // The accept loops are dropped here: their sockets close and new connections are refused.
    tracing::info!(
        open_connections = graceful.count() + open.strong_count() - 1,
        ?drain,
        "shutting down: draining connections"
    );
    drop(open);
    let drained = async {
        tokio::join!(graceful.shutdown(), async {
            while all_closed.recv().await.is_some() {}
        });
    };
    if tokio::time::timeout(drain, drained).await.is_err() {
        tracing::warn!(?drain, "drain timeout reached; closing remaining connections");
    }
}

async fn accept_loop(
    listener: Listener,
    proxy: &Arc<Proxy>,
    builders: &Arc<Builders>,
    graceful: &GracefulShutdown,
    open: &tokio::sync::mpsc::Sender<()>,
    stop: &tokio::sync::watch::Receiver<bool>,
) {
    let request_headers = builders.own_http1.request_headers;
    loop {
        let (stream, peer) = match listener.tcp.accept().await {
            Ok(accepted) => accepted,
            Err(error) => {
                tracing::warn!(%error, "accept failed");
                tokio::time::sleep(ACCEPT_ERROR_BACKOFF).await;
                continue;
            }
        };
        // Over `max_connections`: closed before anything is read or allocated for it, so a
        // flood costs an accept and a close each (as Envoy's listener connection limit does).
        let Some(permit) = proxy.admit_connection() else {
            tracing::debug!(%peer, "max_connections reached: connection closed");
            drop(stream);
            continue;
        };
        if let Err(error) = stream.set_nodelay(true) {
            tracing::debug!(%error, "set_nodelay failed");
        }
        let client = match listener.tls {
            None => ClientInfo::plain(peer),
            Some(_) => ClientInfo::tls(peer),
        };
        let proxy = Arc::clone(proxy);
        let (builders, mut stop) = (Arc::clone(builders), stop.clone());
        let tls = listener.tls.clone();
        let Some(tls) = tls else {
            // Drained through `open`, not hyper's watcher.
            let open = open.clone();
            tokio::spawn(async move {
                // The slot is held until this task ends, whatever way it ends.
                let (_permit, _open) = (permit, open);
                // A client that sends nothing (or half an HTTP/2 preface) is bounded by the head
                // timeout here too.
                let h2 = tokio::select! {
                    sniffed = tokio::time::timeout(request_headers, wait_for_protocol(&stream)) => match sniffed {
                        Ok(Ok(Some(h2))) => h2,
                        _ => return,
                    },
                    _ = stop.wait_for(|stopping| *stopping) => return,
                };
                if h2 {
                    server::h2::serve(stream, proxy, client, builders.own_http2, stop).await;
                } else {
                    server::h1::serve(stream, proxy, client, builders.own_http1, stop).await;
                }
            });
            continue;
        };
        let (open, watcher) = (open.clone(), graceful.watcher());
        tokio::spawn(async move {
            // The slot is held until this task ends, whatever way it ends.
            let _permit = permit;
            let stream = tokio::select! {
                handshake = tokio::time::timeout(request_headers, tls_handshake(stream, &tls)) => match handshake {
                    Ok(Some(stream)) => stream,
                    Ok(None) => return,
                    Err(_) => {
                        tracing::debug!(%peer, "TLS handshake timed out");
                        return;
                    }
                },
                _ = stop.wait_for(|stopping| *stopping) => return,
            };
            // ALPN decided the protocol. hyper times neither the wait for a first HTTP/1 byte
            // nor the HTTP/2 preface, so both are read here, under the head timeout.
            let h2 = stream.get_ref().1.alpn_protocol() == Some(b"h2");
            let stream = tokio::select! {
                first = tokio::time::timeout(request_headers, Prefixed::first_bytes(stream, h2)) => match first {
                    Ok(Some(stream)) => stream,
                    _ => return,
                },
                _ = stop.wait_for(|stopping| *stopping) => return,
            };
            if h2 {
                // Drained through `open`, not hyper's watcher.
                drop(watcher);
                let _open = open;
                server::h2::serve(stream, proxy, client, builders.own_http2, stop).await;
                return;
            }
            drop(open);
            let service = hyper_service(proxy, client);
            let connection = builders
                .http1
                .serve_connection_with_upgrades(TokioIo::new(stream), service);
            if let Err(error) = watcher.watch(connection.into_owned()).await {
                tracing::debug!(%peer, %error, "client TLS connection ended with an error");
            }
        });
    }
}

/// hyper's service for one connection: the proxy with the client's info, the body wrapped.
fn hyper_service(
    proxy: Arc<Proxy>,
    client: ClientInfo,
) -> impl hyper::service::Service<
    http::Request<hyper::body::Incoming>,
    Response = http::Response<crate::body::ResponseBody>,
    Error = Infallible,
    Future = impl Future<Output = Result<http::Response<crate::body::ResponseBody>, Infallible>> + Send,
> + Clone
       + Send {
    let client = Arc::new(client);
    service_fn(move |request: http::Request<hyper::body::Incoming>| {
        let proxy = Arc::clone(&proxy);
        let client = Arc::clone(&client);
        async move { Ok::<_, Infallible>(proxy.handle(request.map(ClientBody::Hyper), &client, None).await) }
    })
}

/// The soft limit on open files of this process (`ulimit -n`), where the OS says it (Linux);
/// `None` elsewhere or if unlimited. Past it `accept` fails, long before a larger
/// `max_connections` would refuse anything.
pub fn open_files_limit() -> Option<u64> {
    let limits = std::fs::read_to_string("/proc/self/limits").ok()?;
    soft_open_files(&limits)
}

/// The soft `Max open files` of a `/proc/PID/limits` text.
fn soft_open_files(limits: &str) -> Option<u64> {
    let line = limits.lines().find(|line| line.starts_with("Max open files"))?;
    line["Max open files".len()..].split_whitespace().next()?.parse().ok()
}

/// The server handshake. A client that speaks plain HTTP to the TLS port gets a `400` that
/// says so, instead of a silent close; anything else that is not TLS is closed.
async fn tls_handshake(stream: TcpStream, tls: &Terminator) -> Option<tokio_rustls::server::TlsStream<TcpStream>> {
    let mut first = [0u8; 1];
    if stream.peek(&mut first).await.ok()? == 0 {
        return None;
    }
    if first[0] != TLS_HANDSHAKE_RECORD {
        if first[0].is_ascii_uppercase() {
            refuse_plain_http(stream).await;
        }
        return None;
    }
    match tls.acceptor().accept(stream).await {
        Ok(stream) => Some(stream),
        Err(error) => {
            tracing::debug!(%error, "TLS handshake failed");
            None
        }
    }
}

async fn refuse_plain_http(mut stream: TcpStream) {
    let mut buf = vec![0u8; 8192];
    let _ = stream.read(&mut buf).await;
    let answer = format!(
        "HTTP/1.1 400 Bad Request\r\ncontent-type: text/plain\r\nconnection: close\r\ncontent-length: {}\r\n\r\n{PLAIN_HTTP_TO_TLS}",
        PLAIN_HTTP_TO_TLS.len()
    );
    if stream.write_all(answer.as_bytes()).await.is_err() || stream.shutdown().await.is_err() {
        return;
    }
    // Read what else the client sent until it closes: closing with unread bytes would send a
    // reset that can destroy the answer before the client reads it.
    let mut drained = 0;
    while drained < PLAIN_HTTP_DRAIN {
        match stream.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => drained += n,
        }
    }
}

/// Waits until the client has sent enough to tell HTTP/1 from the HTTP/2 preface, without
/// consuming it: `Some(true)` for HTTP/2; `None`: the client closed without sending anything.
async fn wait_for_protocol(stream: &tokio::net::TcpStream) -> std::io::Result<Option<bool>> {
    let mut buf = [0u8; H2_PREFACE.len()];
    loop {
        let n = stream.peek(&mut buf).await?;
        if n == 0 {
            return Ok(None);
        }
        if buf[..n] != H2_PREFACE[..n] {
            return Ok(Some(false));
        }
        if n == H2_PREFACE.len() {
            return Ok(Some(true));
        }
        // Part of the preface is buffered and `peek` would return at once: look again shortly
        // (only a client stalling inside the 24-byte preface ever gets here).
        tokio::time::sleep(PREFACE_RECHECK).await;
    }
}

/// A TLS stream with bytes already read from it in front: the first bytes of a client's
/// request, read before hyper takes over so a silent client is bounded by the head timeout.
struct Prefixed {
    prefix: bytes::Bytes,
    inner: tokio_rustls::server::TlsStream<TcpStream>,
}

impl Prefixed {
    /// Reads the HTTP/2 preface (`h2`), or whatever the client sends first; `None` if the client
    /// closed first or sent something else than the preface.
    async fn first_bytes(mut inner: tokio_rustls::server::TlsStream<TcpStream>, h2: bool) -> Option<Self> {
        let prefix = if h2 {
            let mut preface = [0u8; H2_PREFACE.len()];
            inner.read_exact(&mut preface).await.ok()?;
            if preface != H2_PREFACE {
                return None;
            }
            bytes::Bytes::from_static(H2_PREFACE)
        } else {
            let mut first = vec![0u8; 4096];
            let n = inner.read(&mut first).await.ok()?;
            if n == 0 {
                return None;
            }
            first.truncate(n);
            bytes::Bytes::from(first)
        };
        Some(Self { prefix, inner })
    }
}

impl tokio::io::AsyncRead for Prefixed {
    fn poll_read(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        let this = self.get_mut();
        if !this.prefix.is_empty() {
            let n = this.prefix.len().min(buf.remaining());
            buf.put_slice(&this.prefix.split_to(n));
            return std::task::Poll::Ready(Ok(()));
        }
        std::pin::Pin::new(&mut this.inner).poll_read(cx, buf)
    }
}

impl tokio::io::AsyncWrite for Prefixed {
    fn poll_write(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn reads_the_soft_open_files_limit() {
        let limits = "Limit                     Soft Limit           Hard Limit           Units     \n\
            Max processes             95912                95912                processes \n\
            Max open files            1024                 524288               files     \n";
        assert_eq!(super::soft_open_files(limits), Some(1024));
        let unlimited = "Max open files            unlimited            unlimited            files\n";
        assert_eq!(super::soft_open_files(unlimited), None);
        assert_eq!(super::soft_open_files(""), None);
    }
}
