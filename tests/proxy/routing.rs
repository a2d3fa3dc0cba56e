//! Service selection by host and path, weighted splits, and version exposure.

use http::StatusCode;

use crate::support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn weighted_split_within_tolerance_and_weight_zero_gets_nothing() {
    let blue = Upstream::named("blue").await;
    let canary = Upstream::named("canary").await;
    let green = Upstream::named("green").await;
    let proxy = proxy(&service(
        "app",
        "{}",
        &[
            ("blue", &[blue.addr], 90),
            ("canary", &[canary.addr], 10),
            ("green", &[green.addr], 0),
        ],
    ))
    .await;
    let client = http1_client();
    const N: usize = 2000;
    let (mut by_body_blue, mut by_body_canary) = (0, 0);
    for _ in 0..N {
        let (status, body) = get(&client, &proxy.url("/"), None).await;
        assert_eq!(status, StatusCode::OK);
        match &body[..] {
            b"blue" => by_body_blue += 1,
            b"canary" => by_body_canary += 1,
            other => panic!("unexpected body {other:?}"),
        }
    }
    assert_eq!(green.hits(), 0, "a weight-0 version must get nothing");
    assert_eq!(
        (blue.hits(), canary.hits()),
        (by_body_blue, by_body_canary),
        "upstream counts match answers"
    );
    // 10% of 2000: sd = 13.4 requests; the band is about ±4 sd.
    let share = canary.hits() as f64 / N as f64;
    assert!(
        (0.075..=0.125).contains(&share),
        "canary share {share} outside 7.5%..12.5%"
    );
    proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn host_and_path_prefix_select_the_service() {
    let names = ["any", "api", "wild", "exact", "exact-v2"];
    let mut upstreams = Vec::new();
    for name in names {
        upstreams.push(Upstream::named(name).await);
    }
    let matchers = [
        "{}",
        "{ path_prefix: /api }",
        "{ hosts: [\"*.example.com\"] }",
        "{ hosts: [shop.example.com] }",
        "{ hosts: [shop.example.com], path_prefix: /v2 }",
    ];
    let services: String = names
        .iter()
        .zip(matchers)
        .zip(&upstreams)
        .map(|((name, matcher), up)| service(name, matcher, &[("v", &[up.addr], 1)]))
        .collect();
    let proxy = proxy(&services).await;
    let client = http1_client();
    let cases = [
        ("other.org", "/", "any"),
        ("other.org", "/api/users?id=1", "api"),
        ("other.org", "/apiary", "any"),
        ("a.example.com", "/api", "wild"),
        ("A.Deep.Example.COM:8080", "/", "wild"),
        ("example.com", "/", "any"),
        ("shop.example.com", "/", "exact"),
        ("shop.example.com:443", "/v2/cart", "exact-v2"),
        ("shop.example.com", "/v2x", "exact"),
    ];
    for (host, path, want) in cases {
        let (status, body) = get(&client, &proxy.url(path), Some(host)).await;
        assert_eq!(
            (status, &body[..]),
            (StatusCode::OK, want.as_bytes()),
            "host {host} path {path}"
        );
    }
    proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_matching_service_is_404_with_a_plain_body() {
    let up = Upstream::named("x").await;
    let proxy = proxy(&service(
        "only",
        "{ hosts: [a.test], path_prefix: /app }",
        &[("v", &[up.addr], 1)],
    ))
    .await;
    let client = http1_client();
    for (host, path) in [("b.test", "/app"), ("a.test", "/"), ("a.test", "/apple")] {
        let (status, body) = get(&client, &proxy.url(path), Some(host)).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{host}{path}");
        assert_eq!(&body[..], b"no service for this host and path\n");
    }
    assert_eq!(up.hits(), 0);
    proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn all_weights_zero_is_503() {
    let up = Upstream::named("x").await;
    let proxy = proxy(&service("drained", "{}", &[("blue", &[up.addr], 0)])).await;
    let (status, _) = get(&http1_client(), &proxy.url("/"), None).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(up.hits(), 0);
    proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn version_header_only_when_exposed() {
    let up = Upstream::named("x").await;
    let exposed = service("shown", "{ path_prefix: /shown }", &[("canary", &[up.addr], 1)]).replacen(
        "    match:",
        "    expose_version: true\n    match:",
        1,
    );
    let hidden = service("hidden", "{}", &[("canary", &[up.addr], 1)]);
    let proxy = proxy(&format!("{exposed}{hidden}")).await;
    let client = http1_client();
    let request = |path: &str| http::Request::get(proxy.url(path)).body(empty()).expect("request");
    let (_, headers, _) = send(&client, request("/shown")).await;
    assert_eq!(
        headers.get("x-sluice-version").map(|v| v.as_bytes()),
        Some(&b"canary"[..])
    );
    let (_, headers, _) = send(&client, request("/other")).await;
    assert!(headers.get("x-sluice-version").is_none());
    proxy.shutdown().await;
}
