//! The admin listener. For now: liveness and readiness probes; the JSON API comes with
//! routing control. Never served on a data-plane listener.

use std::convert::Infallible;
use std::future::Future;

use bytes::Bytes;
use http::{header, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;

/// Serves the admin endpoints on `listener` until `shutdown` completes.
pub async fn serve(listener: TcpListener, shutdown: impl Future<Output = ()>) {
    let accept = async {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                // Out of file descriptors, say: wait instead of spinning.
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            };
            tokio::spawn(async move {
                let service = service_fn(|request| async move { Ok::<_, Infallible>(respond(&request)) });
                let _ = auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    };
    tokio::select! {
        () = accept => {}
        () = shutdown => {}
    }
}

fn respond(request: &Request<Incoming>) -> Response<Full<Bytes>> {
    let (status, body) = match (request.method(), request.uri().path()) {
        (&Method::GET, "/healthz") => (StatusCode::OK, "{\"status\":\"ok\"}"),
        // Listeners are bound and the config loaded before the admin listener starts.
        (&Method::GET, "/readyz") => (StatusCode::OK, "{\"status\":\"ready\"}"),
        (_, "/healthz" | "/readyz") => (
            StatusCode::METHOD_NOT_ALLOWED,
            "{\"error\":\"method not allowed: use GET\"}",
        ),
        _ => (StatusCode::NOT_FOUND, "{\"error\":\"not found\"}"),
    };
    let mut response = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}
