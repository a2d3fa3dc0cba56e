//! Rules and sticky sessions: header and cookie rules, the sticky cookie, and `hash_key`
//! bucketing that keeps clients in the canary as it grows.

use std::collections::HashMap;

use http::{Request, StatusCode};

use crate::support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rules_pick_versions_first_match_wins() {
    let (blue, canary) = (Upstream::named("blue").await, Upstream::named("canary").await);
    let dir = temp_dir("rules");
    let path = dir.join("sluice.yaml");
    let routing = "      weights: { blue: 100, canary: 0 }
      rules:
        - { match: { header: { name: x-sluice-version, value: canary } }, version: canary }
        - { match: { header: { name: x-force-blue, present: true } }, version: blue }
        - { match: { header: { name: x-beta, present: true } }, version: canary }
        - { match: { cookie: { name: beta, value: \"1\" } }, version: canary }";
    write_config(&path, &blue_canary(blue.addr, canary.addr, routing, ""));
    let proxy = controlled(&path, Options::default()).await;
    let client = http1_client();
    let cases: [(&[(&str, &str)], &str); 8] = [
        (&[], "blue"),
        (&[("x-sluice-version", "canary")], "canary"),
        (&[("x-sluice-version", "CANARY")], "blue"),
        (&[("x-beta", "")], "canary"),
        (&[("x-force-blue", "1"), ("x-beta", "1")], "blue"),
        (&[("cookie", "session=x; beta=1")], "canary"),
        (&[("cookie", "beta=0")], "blue"),
        (&[("x-force-blue", "1"), ("x-sluice-version", "canary")], "canary"),
    ];
    for (headers, want) in cases {
        for _ in 0..5 {
            assert_eq!(proxy.version_for(&client, headers).await, want, "{headers:?}");
        }
    }
    proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sticky_cookie_pins_the_client() {
    let (blue, canary) = (Upstream::named("blue").await, Upstream::named("canary").await);
    let dir = temp_dir("sticky-cookie");
    let path = dir.join("sluice.yaml");
    let routing = "      weights: { blue: 50, canary: 50 }\n      sticky: { cookie: sluice-app, ttl: 1h }\n      \
                   rules: [{ match: { header: { name: x-preview, value: canary } }, version: canary }]";
    write_config(&path, &blue_canary(blue.addr, canary.addr, routing, ""));
    let proxy = controlled(&path, Options::default()).await;
    let client = http1_client();

    let request = Request::get(proxy.url("/")).body(empty()).expect("request");
    let (status, headers, _) = send(&client, request).await;
    assert_eq!(status, StatusCode::OK);
    let version = headers["x-sluice-version"].to_str().expect("ascii").to_owned();
    let set_cookie = headers
        .get("set-cookie")
        .expect("a new assignment sets the cookie")
        .to_str()
        .expect("ascii");
    for part in [
        format!("sluice-app={version}"),
        "Path=/".into(),
        "HttpOnly".into(),
        "SameSite=Lax".into(),
        "Max-Age=3600".into(),
    ] {
        assert!(set_cookie.contains(&part), "{set_cookie} lacks {part}");
    }

    // With the cookie: always the same version, and no new cookie.
    let cookie = format!("sluice-app={version}");
    for _ in 0..40 {
        let request = Request::get(proxy.url("/"))
            .header("cookie", &cookie)
            .body(empty())
            .expect("request");
        let (_, headers, _) = send(&client, request).await;
        assert_eq!(headers["x-sluice-version"], version.as_str());
        assert!(headers.get("set-cookie").is_none(), "a kept assignment sets no cookie");
    }

    // A cookie for a version that lost all weight is not honoured, even though a rule targets
    // that version: a rollback to 0 must move pinned clients off at once.
    let (status, _) = proxy
        .api("PUT", "/api/v1/services/app/weights", Some(r#"{"blue": 100}"#))
        .await;
    assert_eq!(status, StatusCode::OK);
    for stale in ["sluice-app=canary", "sluice-app=nonexistent"] {
        let request = Request::get(proxy.url("/"))
            .header("cookie", stale)
            .body(empty())
            .expect("request");
        let (_, headers, _) = send(&client, request).await;
        assert_eq!(headers["x-sluice-version"], "blue", "{stale}");
        assert!(
            headers["set-cookie"]
                .to_str()
                .expect("ascii")
                .starts_with("sluice-app=blue"),
            "{stale}"
        );
    }
    // The rule itself still reaches the weight-0 version.
    let request = Request::get(proxy.url("/"))
        .header("x-preview", "canary")
        .body(empty())
        .expect("request");
    let (_, headers, _) = send(&client, request).await;
    assert_eq!(headers["x-sluice-version"], "canary");
    proxy.shutdown().await;
}

/// The version each of `keys` is routed to.
async fn assignments(proxy: &Controlled, keys: &[String]) -> HashMap<String, String> {
    let client = http1_client();
    let mut out = HashMap::new();
    for key in keys {
        out.insert(key.clone(), proxy.version_for(&client, &[("x-user-id", key)]).await);
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hash_key_buckets_grow_monotonically_from_5_to_20_percent() {
    let (blue, canary) = (Upstream::named("blue").await, Upstream::named("canary").await);
    let dir = temp_dir("sticky-hash");
    let path = dir.join("sluice.yaml");
    let routing =
        "      weights: { blue: 95, canary: 5 }\n      sticky: { cookie: sluice-app, hash_key: \"header:x-user-id\" }";
    write_config(&path, &blue_canary(blue.addr, canary.addr, routing, ""));
    let proxy = controlled(&path, Options::default()).await;
    let keys: Vec<String> = (0..1000).map(|i| format!("user-{i}")).collect();

    let at5 = assignments(&proxy, &keys).await;
    assert_eq!(assignments(&proxy, &keys).await, at5, "bucketing must be deterministic");
    let in5: Vec<&String> = keys.iter().filter(|k| at5[*k] == "canary").collect();
    assert!(
        (25..=80).contains(&in5.len()),
        "{} of 1000 keys in a 5% canary",
        in5.len()
    );

    let (status, _) = proxy
        .api(
            "PUT",
            "/api/v1/services/app/weights",
            Some(r#"{"blue": 80, "canary": 20}"#),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let at20 = assignments(&proxy, &keys).await;
    for key in &in5 {
        assert_eq!(at20[*key], "canary", "{key} was in the 5% canary and left it at 20%");
    }
    let in20 = keys.iter().filter(|k| at20[*k] == "canary").count();
    assert!((150..=250).contains(&in20), "{in20} of 1000 keys in a 20% canary");
    proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cookie_can_be_the_bucketing_key_and_buckets_match_the_published_vectors() {
    let (blue, canary) = (Upstream::named("blue").await, Upstream::named("canary").await);
    let dir = temp_dir("sticky-cookie-key");
    let path = dir.join("sluice.yaml");
    let routing =
        "      weights: { blue: 90, canary: 10 }\n      sticky: { cookie: sluice-app, hash_key: \"cookie:uid\" }";
    write_config(&path, &blue_canary(blue.addr, canary.addr, routing, ""));
    let proxy = controlled(&path, Options::default()).await;
    let client = http1_client();
    // docs/SPEC.md: "customer-42" → bucket 9401 (canary owns [9000, 10000) at 90/10),
    // "user-2" → 2635 (blue).
    for (key, want) in [("customer-42", "canary"), ("user-2", "blue")] {
        for _ in 0..5 {
            let cookie = format!("theme=dark; uid={key}");
            assert_eq!(proxy.version_for(&client, &[("cookie", &cookie)]).await, want, "{key}");
        }
    }
    proxy.shutdown().await;
}
