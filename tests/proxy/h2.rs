//! HTTP/2: h2c clients on the shared listener, and gRPC-style trailers end to end over an
//! `protocol: http2` upstream.

use http::{HeaderMap, HeaderValue, Request, Response, StatusCode, Version};
use http_body::Frame;
use http_body_util::BodyExt;

use crate::support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2c_client_reaches_an_http1_upstream() {
    let up = Upstream::start(|request| async move {
        let host = request
            .headers()
            .get("host")
            .map(|h| h.to_str().unwrap_or("?").to_owned());
        Response::new(full(format!(
            "{:?} host={host:?} path={}",
            request.version(),
            request.uri()
        )))
    })
    .await;
    let proxy = proxy(&service("h2", "{}", &[("v", &[up.addr], 1)])).await;
    let client = h2c_client();
    for i in 0..3 {
        let request = Request::get(proxy.url(&format!("/item/{i}?x=1")))
            .body(empty())
            .expect("request");
        let response = within("h2 response", client.request(request))
            .await
            .expect("h2 request");
        assert_eq!(response.version(), Version::HTTP_2, "client spoke h2c to the proxy");
        let body = response.into_body().collect().await.expect("body").to_bytes();
        let want = format!("HTTP/1.1 host={:?} path=/item/{i}?x=1", Some(proxy.addr.to_string()));
        assert_eq!(String::from_utf8_lossy(&body), want);
    }
    assert_eq!(up.hits(), 3);
    proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_trailers_pass_end_to_end_over_http2() {
    let up = Upstream::start(|request| async move {
        let te = request.headers().get("te").cloned();
        let version = request.version();
        let collected = request.into_body().collect().await.expect("request body");
        let request_trailer = collected.trailers().and_then(|t| t.get("x-request-checksum").cloned());
        let data = collected.to_bytes();
        let (tx, body) = channel_body(4);
        tokio::spawn(async move {
            let echo = format!(
                "{version:?} te={te:?} trailer={request_trailer:?} data={}",
                String::from_utf8_lossy(&data)
            );
            tx.send(Frame::data(echo.into())).await.expect("data");
            let mut trailers = HeaderMap::new();
            trailers.insert("grpc-status", HeaderValue::from_static("0"));
            trailers.insert("grpc-message", HeaderValue::from_static("done"));
            tx.send(Frame::trailers(trailers)).await.expect("trailers");
        });
        Response::builder()
            .header("content-type", "application/grpc")
            .body(body)
            .expect("response")
    })
    .await;
    let upstream = speaking(&service("grpc", "{}", &[("v", &[up.addr], 1)]), "http2");
    let proxy = proxy(&upstream).await;

    let (tx, body) = channel_body(4);
    tx.send(Frame::data("\0\0\0\0\x05hello".into())).await.expect("data");
    let mut trailers = HeaderMap::new();
    trailers.insert("x-request-checksum", HeaderValue::from_static("abc"));
    tx.send(Frame::trailers(trailers)).await.expect("trailers");
    drop(tx);
    let request = Request::post(proxy.url("/pkg.Service/Method"))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(body)
        .expect("request");
    let response = within("grpc response", h2c_client().request(request))
        .await
        .expect("request");
    assert_eq!(response.status(), StatusCode::OK);
    let collected = within("grpc body", response.into_body().collect()).await.expect("body");
    let trailers = collected.trailers().cloned().expect("response trailers must arrive");
    assert_eq!(trailers["grpc-status"], "0");
    assert_eq!(trailers["grpc-message"], "done");
    assert_eq!(
        String::from_utf8_lossy(&collected.to_bytes()),
        "HTTP/2.0 te=Some(\"trailers\") trailer=Some(\"abc\") data=\0\0\0\0\x05hello"
    );
    proxy.shutdown().await;
}
