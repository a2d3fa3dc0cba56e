//! Request path, step 0: accepting connections. Each listener serves HTTP/1.1 and h2c (prior
//! knowledge) on one port, with upgrades, a request-head timeout, and graceful shutdown.

use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;

use crate::forward::ClientInfo;
use crate::proxy::Proxy;

/// Interval of HTTP/2 pings to client connections.
const H2_KEEP_ALIVE_INTERVAL: Duration = Duration::from_secs(30);
/// A client that does not answer a ping within this is closed.
const H2_KEEP_ALIVE_TIMEOUT: Duration = Duration::from_secs(20);
/// The HTTP/2 client connection preface (RFC 9113 §3.4).
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
/// How often a partial HTTP/2 preface is looked at again.
const PREFACE_RECHECK: Duration = Duration::from_millis(10);

/// Pause after a failed `accept` (out of file descriptors, say) so the loop does not spin.
const ACCEPT_ERROR_BACKOFF: Duration = Duration::from_millis(50);

/// Serves `listeners` until `shutdown` completes, then drains open connections for at most
/// `drain`: in-flight requests finish, idle connections close, new ones are refused.
pub async fn serve(
    listeners: Vec<TcpListener>,
    proxy: Arc<Proxy>,
    request_headers: Duration,
    drain: Duration,
    shutdown: impl Future<Output = ()>,
) {
    let graceful = GracefulShutdown::new();
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(request_headers);
    // HTTP/2 has no head timeout once a connection is up: ping idle clients and close the ones
    // that stop answering, so dead peers do not hold connections forever.
    builder
        .http2()
        .timer(TokioTimer::new())
        .keep_alive_interval(H2_KEEP_ALIVE_INTERVAL)
        .keep_alive_timeout(H2_KEEP_ALIVE_TIMEOUT);
    let builder = Arc::new(builder);

    // Connections that have not sent a request yet are closed at once on shutdown.
    let (stopping, stop) = tokio::sync::watch::channel(false);
    let accepting = futures_util::future::join_all(
        listeners
            .into_iter()
            .map(|listener| accept_loop(listener, &proxy, &builder, &graceful, request_headers, &stop)),
    );
    tokio::select! {
        _ = accepting => {}
        () = shutdown => {}
    }
    let _ = stopping.send(true);
    // The accept loops are dropped here: their sockets close and new connections are refused.
    tracing::info!(
        open_connections = graceful.count(),
        ?drain,
        "shutting down: draining connections"
    );
    if tokio::time::timeout(drain, graceful.shutdown()).await.is_err() {
        tracing::warn!(?drain, "drain timeout reached; closing remaining connections");
    }
}

async fn accept_loop(
    listener: TcpListener,
    proxy: &Arc<Proxy>,
    builder: &Arc<auto::Builder<TokioExecutor>>,
    graceful: &GracefulShutdown,
    request_headers: Duration,
    stop: &tokio::sync::watch::Receiver<bool>,
) {
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(error) => {
                tracing::warn!(%error, "accept failed");
                tokio::time::sleep(ACCEPT_ERROR_BACKOFF).await;
                continue;
            }
        };
        if let Err(error) = stream.set_nodelay(true) {
            tracing::debug!(%error, "set_nodelay failed");
        }
        let client = Arc::new(ClientInfo::plain(peer));
        let proxy = Arc::clone(proxy);
        let service = service_fn(move |request| {
            let proxy = Arc::clone(&proxy);
            let client = Arc::clone(&client);
            async move { Ok::<_, Infallible>(proxy.handle(request, &client).await) }
        });
        let (builder, watcher, mut stop) = (Arc::clone(builder), graceful.watcher(), stop.clone());
        tokio::spawn(async move {
            // hyper's protocol sniffing has no timeout of its own: a client that sends nothing
            // (or half an HTTP/2 preface) would hold the connection forever.
            tokio::select! {
                sniffed = tokio::time::timeout(request_headers, wait_for_protocol(&stream)) => {
                    if !matches!(sniffed, Ok(Ok(true))) {
                        return;
                    }
                }
                _ = stop.wait_for(|stopping| *stopping) => return,
            }
            let connection = builder.serve_connection_with_upgrades(TokioIo::new(stream), service);
            if let Err(error) = watcher.watch(connection.into_owned()).await {
                tracing::debug!(%peer, %error, "client connection ended with an error");
            }
        });
    }
}

/// Waits until the client has sent enough to tell HTTP/1 from the HTTP/2 preface, without
/// consuming it. `false`: the client closed without sending anything.
async fn wait_for_protocol(stream: &tokio::net::TcpStream) -> std::io::Result<bool> {
    let mut buf = [0u8; H2_PREFACE.len()];
    loop {
        let n = stream.peek(&mut buf).await?;
        if n == 0 {
            return Ok(false);
        }
        if buf[..n] != H2_PREFACE[..n] || n == H2_PREFACE.len() {
            return Ok(true);
        }
        // Part of the preface is buffered and `peek` would return at once: look again shortly
        // (only a client stalling inside the 24-byte preface ever gets here).
        tokio::time::sleep(PREFACE_RECHECK).await;
    }
}
