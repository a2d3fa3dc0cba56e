//! 20 MB both ways, intact and streamed: each side sees the first bytes before the other has
//! sent the last, which a proxy that buffers whole bodies could never allow.

use std::sync::Arc;

use http::{Request, Response, StatusCode};
use http_body::Frame;
use http_body_util::BodyExt;
use tokio::sync::Notify;

use crate::support::*;

const TOTAL: usize = UPLOAD_TOTAL;
const CHUNK: usize = UPLOAD_CHUNK;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upload_of_20mb_streams_intact() {
    let first_bytes = Arc::new(Notify::new());
    let up = pattern_checking_upstream(Arc::clone(&first_bytes)).await;
    // 20 MB is above the default 16 MiB request body limit.
    let proxy = proxy_with(
        &service("up", "{}", &[("v", &[up.addr], 1)]),
        "defaults: { max_request_body: 32MiB }",
    )
    .await;
    let (status, body) = upload_streamed(proxy.url("/upload"), &first_bytes).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(String::from_utf8_lossy(&body), format!("ok {UPLOAD_TOTAL}"));
    proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn download_of_20mb_streams_intact() {
    let first_bytes_client = Arc::new(Notify::new());
    let received = Arc::clone(&first_bytes_client);
    let up = Upstream::start(move |_| {
        let received = Arc::clone(&received);
        async move {
            let (tx, body) = channel_body(4);
            tokio::spawn(async move {
                tx.send(Frame::data(pattern(0, CHUNK))).await.expect("first chunk");
                // Hold the rest back until the client has the first bytes.
                within(
                    "client sees the first bytes before the download ends",
                    received.notified(),
                )
                .await;
                let mut offset = CHUNK;
                while offset < TOTAL {
                    if tx.send(Frame::data(pattern(offset as u64, CHUNK))).await.is_err() {
                        return;
                    }
                    offset += CHUNK;
                }
            });
            Response::new(body)
        }
    })
    .await;
    let proxy = proxy(&service("down", "{}", &[("v", &[up.addr], 1)])).await;

    let request = Request::get(proxy.url("/download")).body(empty()).expect("request");
    let response = within("response head", http1_client().request(request))
        .await
        .expect("request");
    assert_eq!(response.status(), StatusCode::OK);
    let length = check_pattern(response.into_body().map_err(|e| e.to_string()), || {
        first_bytes_client.notify_one()
    })
    .await;
    assert_eq!(length, Ok(TOTAL as u64));
    proxy.shutdown().await;
}
