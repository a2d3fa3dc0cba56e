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
    builder.http2().timer(TokioTimer::new());
    let builder = Arc::new(builder);

    let accepting = futures_util::future::join_all(
        listeners
            .into_iter()
            .map(|listener| accept_loop(listener, &proxy, &builder, &graceful)),
    );
    tokio::select! {
        _ = accepting => {}
        () = shutdown => {}
    }
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
        let connection = builder
            .serve_connection_with_upgrades(TokioIo::new(stream), service)
            .into_owned();
        let connection = graceful.watch(connection);
        tokio::spawn(async move {
            if let Err(error) = connection.await {
                tracing::debug!(%peer, %error, "client connection ended with an error");
            }
        });
    }
}
