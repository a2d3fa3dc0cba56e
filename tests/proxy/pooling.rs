//! Upstream connections are pooled and reused, not opened per request.

use http::StatusCode;

use crate::support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http1_upstream_connections_are_kept_alive_and_reused() {
    let up = Upstream::named("pooled").await;
    let proxy = proxy(&service("p", "{}", &[("v", &[up.addr], 1)])).await;
    let client = http1_client();
    for i in 0..50 {
        let (status, body) = get(&client, &proxy.url(&format!("/{i}")), None).await;
        assert_eq!((status, &body[..]), (StatusCode::OK, &b"pooled"[..]));
    }
    assert_eq!(up.hits(), 50);
    // Sequential requests: the connection is back in the pool as soon as the answer's last
    // byte is read, before the client even has it.
    assert_eq!(
        up.connections(),
        1,
        "50 sequential requests opened {} upstream connections",
        up.connections()
    );

    // Concurrent requests open what they need, then reuse it.
    let burst = |n: usize| {
        let client = client.clone();
        let url = proxy.url("/burst");
        async move {
            let tasks: Vec<_> = (0..n)
                .map(|_| {
                    let (client, url) = (client.clone(), url.clone());
                    tokio::spawn(async move { get(&client, &url, None).await.0 })
                })
                .collect();
            for task in tasks {
                assert_eq!(task.await.expect("task"), StatusCode::OK);
            }
        }
    };
    // A connection is taken from the pool only while a request is in flight on it, and a new
    // one opened only when none is idle: with at most 8 requests in flight, 8 connections
    // (the sequential phase's one among them) serve every burst, however they interleave.
    for _ in 0..6 {
        burst(8).await;
    }
    assert!(
        up.connections() <= 8,
        "six bursts of 8 opened {} upstream connections",
        up.connections()
    );
    proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_upstream_multiplexes_one_connection() {
    let up =
        Upstream::start(|request| async move { http::Response::new(full(format!("{:?}", request.version()))) }).await;
    let services = speaking(&service("h2", "{}", &[("v", &[up.addr], 1)]), "http2");
    let proxy = proxy(&services).await;
    let client = http1_client();
    // Warm the connection, then send concurrently: all on the one HTTP/2 connection.
    let (_, body) = get(&client, &proxy.url("/"), None).await;
    assert_eq!(&body[..], b"HTTP/2.0");
    let tasks: Vec<_> = (0..20)
        .map(|_| {
            let (client, url) = (client.clone(), proxy.url("/"));
            tokio::spawn(async move { get(&client, &url, None).await })
        })
        .collect();
    for task in tasks {
        let (status, body) = task.await.expect("task");
        assert_eq!((status, &body[..]), (StatusCode::OK, &b"HTTP/2.0"[..]));
    }
    assert_eq!(up.hits(), 21);
    assert_eq!(
        up.connections(),
        1,
        "HTTP/2 upstream requests must share one connection"
    );
    proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_upstream_connections_are_closed_after_idle() {
    let up = Upstream::named("pooled").await;
    let proxy = proxy_with(
        &service("p", "{}", &[("v", &[up.addr], 1)]),
        "defaults: { timeouts: { idle: 300ms } }",
    )
    .await;
    let client = http1_client();
    let tasks: Vec<_> = (0..6)
        .map(|_| {
            let (client, url) = (client.clone(), proxy.url("/"));
            tokio::spawn(async move { get(&client, &url, None).await.0 })
        })
        .collect();
    for task in tasks {
        assert_eq!(task.await.expect("task"), StatusCode::OK);
    }
    assert!(up.connections() >= 1, "the requests went over pooled connections");
    // Regression: stale connections were only dropped when popped, so with no traffic they
    // stayed open forever.
    wait_until("the sweeper closes idle upstream connections", || {
        up.open_connections() == 0
    })
    .await;
    proxy.shutdown().await;
}
