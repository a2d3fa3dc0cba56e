//! Feature flags on real sockets: targeting rules, percent and ramps over many keys,
//! independence, the kill switch, `x-sluice-flags` hygiene, version rules matching a flag,
//! metrics, and overrides that survive a restart.

use std::sync::{Arc, Mutex};

use http::{Request, Response, StatusCode};
use serde_json::Value;

use crate::support::*;

/// An upstream answering `NAME FLAGS`: the `x-sluice-flags` lines it received joined by `|`,
/// or `-` when there was none.
async fn echo(name: &'static str) -> Upstream {
    Upstream::start(move |request| async move {
        let values: Vec<String> = request
            .headers()
            .get_all("x-sluice-flags")
            .iter()
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
            .collect();
        let flags = if values.is_empty() {
            "-".to_owned()
        } else {
            values.join("|")
        };
        Response::new(full(format!("{name} {flags}")))
    })
    .await
}

/// A config with blue and canary echo upstreams, `routing` lines and `flags` lines.
async fn start(name: &str, routing: &str, flags: &str, extra: &str) -> (Controlled, Upstream, Upstream) {
    let (blue, canary) = (echo("blue").await, echo("canary").await);
    let path = temp_dir(name).join("sluice.yaml");
    let config = blue_canary(blue.addr, canary.addr, routing, extra) + "    flags:\n" + flags;
    write_config(&path, &config);
    (controlled(&path, Options::default()).await, blue, canary)
}

/// Sends `GET /` with `headers`; returns (version, flags the upstream saw).
async fn ask(
    proxy: &Controlled,
    client: &hyper_util::client::legacy::Client<hyper_util::client::legacy::connect::HttpConnector, Body>,
    headers: &[(&str, &str)],
) -> (String, String) {
    let mut request = Request::get(proxy.url("/"));
    for (k, v) in headers {
        request = request.header(*k, *v);
    }
    let (status, _, body) = send(client, request.body(empty()).expect("request")).await;
    assert_eq!(status, StatusCode::OK, "{body:?}");
    let text = String::from_utf8_lossy(&body).into_owned();
    let (version, flags) = text.split_once(' ').expect("NAME FLAGS");
    (version.to_owned(), flags.to_owned())
}

/// Whether flag `name` is in an `x-sluice-flags` value.
fn has(flags: &str, name: &str) -> bool {
    flags.split(',').any(|f| f == name)
}

/// Which of 1000 keys (`user-0` … `user-999`, in header `x-user-id`) get flag `name`.
async fn keys_with(proxy: &Controlled, name: &str) -> Vec<bool> {
    let client = http1_client();
    let mut on = Vec::with_capacity(1000);
    for i in 0..1000 {
        let key = format!("user-{i}");
        on.push(has(&ask(proxy, &client, &[("x-user-id", &key)]).await.1, name));
    }
    on
}

fn count(on: &[bool]) -> usize {
    on.iter().filter(|x| **x).count()
}

/// `sluice_flag_decisions_total` of `flag` in service `app` with `value`.
async fn decisions(proxy: &Controlled, flag: &str, value: &str) -> u64 {
    let (_, text) = proxy.api_text("/metrics").await;
    let series = format!("sluice_flag_decisions_total{{service=\"app\",flag=\"{flag}\",value=\"{value}\"}} ");
    text.lines()
        .find_map(|line| line.strip_prefix(&series))
        .unwrap_or_else(|| panic!("no {series} in:\n{text}"))
        .parse()
        .expect("count")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flags_targeting_rules_force_on_and_off() {
    let flags =
        "      internal: { percent: 0, rules: [{ match: { header: { name: x-internal, value: \"1\" } }, value: on }] }
      everyone:
        percent: 100
        rules: [{ match: { cookie: { name: optout, value: \"1\" } }, value: off }]
";
    let (proxy, _blue, _canary) = start("flags-rules", "      weights: { blue: 1 }", flags, "").await;
    let client = http1_client();
    let cases: [(&[(&str, &str)], &str); 5] = [
        (&[], "everyone"),
        (&[("x-internal", "1")], "internal,everyone"),
        (&[("x-internal", "0")], "everyone"),
        (&[("cookie", "a=b; optout=1")], "-"),
        (&[("x-internal", "1"), ("cookie", "optout=1")], "internal"),
    ];
    for (headers, want) in cases {
        for _ in 0..5 {
            assert_eq!(ask(&proxy, &client, headers).await.1, want, "{headers:?}");
        }
    }
    proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flags_percent_within_tolerance_and_a_ramp_keeps_everyone_who_had_it() {
    let flags = "      f: { percent: 10, key: \"header:x-user-id\" }\n";
    let (proxy, _blue, _canary) = start("flags-ramp", "      weights: { blue: 1 }", flags, "").await;

    let ten = keys_with(&proxy, "f").await;
    // 10% of 1000 keys: sd 9.5 keys; the band is about ±4 sd.
    assert!((60..=140).contains(&count(&ten)), "{} of 1000 keys at 10%", count(&ten));
    assert_eq!(
        keys_with(&proxy, "f").await,
        ten,
        "every key gets the same decision again"
    );
    assert_eq!(decisions(&proxy, "f", "on").await, 2 * count(&ten) as u64);
    assert_eq!(decisions(&proxy, "f", "off").await, 2 * (1000 - count(&ten)) as u64);

    let (status, body) = proxy
        .api("PUT", "/api/v1/services/app/flags/f", Some(r#"{"percent": 30}"#))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let thirty = keys_with(&proxy, "f").await;
    // 30% of 1000: sd 14.5 keys; ±4 sd.
    assert!(
        (240..=360).contains(&count(&thirty)),
        "{} of 1000 keys at 30%",
        count(&thirty)
    );
    let lost: Vec<usize> = (0..1000).filter(|&i| ten[i] && !thirty[i]).collect();
    assert!(
        lost.is_empty(),
        "keys that had the flag at 10% and lost it at 30%: {lost:?}"
    );
    proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flags_are_independent_of_each_other_and_of_the_version() {
    // Both flags take the sticky hash_key (x-user-id) as their key; so does the version split.
    let routing =
        "      weights: { blue: 50, canary: 50 }\n      sticky: { cookie: s, hash_key: \"header:x-user-id\" }";
    let flags = "      a: { percent: 50 }\n      b: { percent: 40 }\n";
    let (proxy, _blue, _canary) = start("flags-independent", routing, flags, "").await;
    let client = http1_client();
    let (mut a, mut b, mut both, mut canary, mut a_and_canary) = (0, 0, 0, 0, 0);
    for i in 0..1000 {
        let key = format!("user-{i}");
        let (version, flags) = ask(&proxy, &client, &[("x-user-id", &key)]).await;
        let (in_a, in_b, in_canary) = (has(&flags, "a"), has(&flags, "b"), version == "canary");
        a += usize::from(in_a);
        b += usize::from(in_b);
        both += usize::from(in_a && in_b);
        canary += usize::from(in_canary);
        a_and_canary += usize::from(in_a && in_canary);
    }
    // Independent: the overlap is near the product of the shares, 1000 × 0.5 × 0.4 = 200, sd
    // 12.6 keys; the tolerance is 50 keys (about 4 sd). One hash for both would give ~400.
    let expected = a as f64 * b as f64 / 1000.0;
    assert!(
        (both as f64 - expected).abs() <= 50.0,
        "a {a}, b {b}: overlap {both}, product of shares {expected}"
    );
    let expected = a as f64 * canary as f64 / 1000.0;
    assert!(
        (a_and_canary as f64 - expected).abs() <= 50.0,
        "a {a}, canary {canary}: overlap {a_and_canary}, product of shares {expected}"
    );
    for (name, n, share) in [("a", a, 500.0), ("b", b, 400.0), ("canary", canary, 500.0)] {
        assert!((n as f64 - share).abs() <= 65.0, "{name}: {n} of 1000");
    }
    proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flags_kill_switch_takes_effect_on_the_next_request() {
    let flags = "      f: { percent: 100, rules: [{ match: { header: { name: x-internal, present: true } }, value: on }] }\n      g: { percent: 100 }\n";
    let (proxy, _blue, _canary) = start("flags-kill", "      weights: { blue: 1 }", flags, "").await;
    let client = http1_client();
    assert_eq!(ask(&proxy, &client, &[]).await.1, "f,g");

    let (status, body) = proxy
        .api("PUT", "/api/v1/services/app/flags/f", Some(r#"{"enabled": false}"#))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    // The answer comes after the new table is published: the very next request sees it, and
    // the kill switch beats the targeting rule.
    assert_eq!(ask(&proxy, &client, &[]).await.1, "g");
    assert_eq!(ask(&proxy, &client, &[("x-internal", "1")]).await.1, "g");
    let flag = &body["service"]["flags"][0];
    assert_eq!(
        (&flag["name"], &flag["enabled"], &flag["from"]),
        (&Value::from("f"), &Value::from(false), &Value::from("admin override"))
    );

    let (_, history) = proxy.api("GET", "/api/v1/history?service=app", None).await;
    let entry = &history["entries"][0];
    assert_eq!(entry["cause"], "admin");
    assert_eq!(entry["revision"], body["revision"]);
    assert!(
        entry["actor"].as_str().expect("actor").contains("flag f: off"),
        "{entry}"
    );
    assert_eq!(entry["flags"]["app"]["f"]["enabled"], false);

    let (status, _) = proxy
        .api("PUT", "/api/v1/services/app/flags/f", Some(r#"{"enabled": true}"#))
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(ask(&proxy, &client, &[]).await.1, "f,g");

    for (path, body, want) in [
        (
            "/api/v1/services/app/flags/nope",
            r#"{"enabled": false}"#,
            StatusCode::NOT_FOUND,
        ),
        (
            "/api/v1/services/nope/flags/f",
            r#"{"enabled": false}"#,
            StatusCode::NOT_FOUND,
        ),
        (
            "/api/v1/services/app/flags/f",
            r#"{"percent": 150}"#,
            StatusCode::BAD_REQUEST,
        ),
        (
            "/api/v1/services/app/flags/f",
            r#"{"enabled": "no"}"#,
            StatusCode::BAD_REQUEST,
        ),
        ("/api/v1/services/app/flags/f", r#"{}"#, StatusCode::BAD_REQUEST),
    ] {
        let (status, answer) = proxy.api("PUT", path, Some(body)).await;
        assert_eq!(status, want, "{path} {body}: {answer}");
        assert!(answer["error"].is_string(), "{answer}");
    }
    let (status, _) = proxy.api("GET", "/api/v1/services/app/flags/f", None).await;
    assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(
        ask(&proxy, &client, &[]).await.1,
        "f,g",
        "refused changes change nothing"
    );
    proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flags_a_client_sent_header_never_reaches_the_upstream() {
    // The canary is a shadow of every request: it records the x-sluice-flags it is sent.
    let seen = Arc::new(Mutex::new(Vec::<String>::new()));
    let shadow = {
        let seen = Arc::clone(&seen);
        Upstream::start(move |request| {
            let value = request
                .headers()
                .get_all("x-sluice-flags")
                .iter()
                .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
                .collect::<Vec<_>>()
                .join("|");
            seen.lock().expect("seen").push(value);
            async move { Response::new(full("shadow")) }
        })
        .await
    };
    let blue = echo("blue").await;
    let path = temp_dir("flags-spoof").join("sluice.yaml");
    let flags = "    mirror: [{ version: canary, percent: 100 }]\n    flags:\n      on: { percent: 100 }\n      off: { percent: 0 }\n";
    write_config(
        &path,
        &(blue_canary(blue.addr, shadow.addr, "      weights: { blue: 1 }", "") + flags),
    );
    let proxy = controlled(&path, Options::default()).await;
    let client = http1_client();
    let spoofed = [("x-sluice-flags", "off,admin"), ("x-sluice-flags", "off")];
    assert_eq!(
        ask(&proxy, &client, &spoofed).await.1,
        "on",
        "sluice's value replaces the client's"
    );
    wait_until("the shadow gets its copy", || seen.lock().expect("seen").len() == 1).await;
    assert_eq!(
        seen.lock().expect("seen")[0],
        "on",
        "the shadow gets the primary's flags"
    );
    let (status, _) = proxy
        .api("PUT", "/api/v1/services/app/flags/on", Some(r#"{"enabled": false}"#))
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        ask(&proxy, &client, &spoofed).await.1,
        "-",
        "no flag on: no header at all, not the client's"
    );
    let (_, h2) = {
        let request = Request::get(proxy.url("/"))
            .header("x-sluice-flags", "off")
            .body(empty())
            .expect("request");
        let (status, _, body) = send(&h2c_client(), request).await;
        (status, String::from_utf8_lossy(&body).into_owned())
    };
    assert_eq!(h2, "blue -", "over HTTP/2 too");
    wait_until("the shadow gets every copy", || seen.lock().expect("seen").len() == 3).await;
    assert_eq!(seen.lock().expect("seen")[1..], ["", ""], "nor do the shadow's copies");
    proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flags_a_version_rule_matches_a_flag() {
    let routing = "      weights: { blue: 100 }
      rules:
        - { match: { flag: beta }, version: canary }
        - { match: { flag: half }, version: canary }";
    let flags = "      beta: { rules: [{ match: { header: { name: x-beta-tester, value: \"yes\" } }, value: on }] }
      half: { percent: 50, key: \"header:x-user-id\" }
";
    let (proxy, _blue, _canary) = start("flags-version-rule", routing, flags, "").await;
    let client = http1_client();
    assert_eq!(
        ask(&proxy, &client, &[("x-beta-tester", "yes")]).await,
        ("canary".to_owned(), "beta".to_owned())
    );
    assert_eq!(ask(&proxy, &client, &[]).await, ("blue".to_owned(), "-".to_owned()));
    // Flags are decided before the version: the canary serves exactly the keys with `half`.
    let mut in_canary = 0;
    for i in 0..200 {
        let key = format!("user-{i}");
        let (version, flags) = ask(&proxy, &client, &[("x-user-id", &key)]).await;
        assert_eq!(
            version == "canary",
            has(&flags, "half"),
            "{key}: {version} with {flags}"
        );
        in_canary += usize::from(version == "canary");
    }
    assert!((60..=140).contains(&in_canary), "{in_canary} of 200 keys");
    let (_, view) = proxy.api("GET", "/api/v1/services/app", None).await;
    assert_eq!(view["service"]["rules"][0]["match"]["flag"], "beta");
    proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flags_overrides_survive_a_restart() {
    let (blue, canary) = (echo("blue").await, echo("canary").await);
    let dir = temp_dir("flags-restart");
    let path = dir.join("sluice.yaml");
    let extra = format!("state_dir: {}", dir.join("state").display());
    let flags = "    flags:\n      f: { percent: 0 }\n      g: { percent: 100 }\n";
    write_config(
        &path,
        &(blue_canary(blue.addr, canary.addr, "      weights: { blue: 1 }", &extra) + flags),
    );
    let proxy = controlled(&path, Options::default()).await;
    let client = http1_client();
    assert_eq!(ask(&proxy, &client, &[]).await.1, "g");
    for (flag, body) in [("f", r#"{"percent": 100}"#), ("g", r#"{"enabled": false}"#)] {
        let (status, answer) = proxy
            .api("PUT", &format!("/api/v1/services/app/flags/{flag}"), Some(body))
            .await;
        assert_eq!(status, StatusCode::OK, "{answer}");
    }
    assert_eq!(ask(&proxy, &client, &[]).await.1, "f");
    let (_, before) = proxy.api("GET", "/api/v1/services/app", None).await;
    proxy.shutdown().await;

    let restarted = controlled(&path, Options::default()).await;
    assert_eq!(
        ask(&restarted, &http1_client(), &[]).await.1,
        "f",
        "the overrides are in force"
    );
    let (_, after) = restarted.api("GET", "/api/v1/services/app", None).await;
    assert_eq!(
        after["revision"].as_u64(),
        before["revision"].as_u64().map(|r| r + 1),
        "the revision counter continues"
    );
    let shown: Vec<(Value, Value, Value)> = after["service"]["flags"]
        .as_array()
        .expect("flags")
        .iter()
        .map(|f| (f["enabled"].clone(), f["percent"].clone(), f["from"].clone()))
        .collect();
    assert_eq!(
        shown,
        [
            (Value::from(true), Value::from(100.0), Value::from("admin override")),
            (Value::from(false), Value::from(100.0), Value::from("admin override")),
        ]
    );
    let (_, history) = restarted.api("GET", "/api/v1/history", None).await;
    let causes: Vec<&str> = history["entries"]
        .as_array()
        .expect("entries")
        .iter()
        .filter_map(|e| e["cause"].as_str())
        .collect();
    assert_eq!(
        causes,
        ["config", "admin", "admin", "config"],
        "history survives the restart"
    );

    // A reload that removes a flag drops its override, and says so.
    let flags = "    flags:\n      f: { percent: 0 }\n";
    write_config(
        &path,
        &(blue_canary(blue.addr, canary.addr, "      weights: { blue: 1 }", &extra) + flags),
    );
    let (status, reload) = restarted.api("POST", "/api/v1/reload", None).await;
    assert_eq!(status, StatusCode::OK, "{reload}");
    let warned = reload["warnings"]
        .as_array()
        .expect("warnings")
        .iter()
        .filter_map(Value::as_str)
        .any(|w| w.contains("dropping the override of flag \"g\" of \"app\""));
    assert!(warned, "{reload}");
    assert_eq!(
        ask(&restarted, &http1_client(), &[]).await.1,
        "f",
        "f keeps its override"
    );
    restarted.shutdown().await;
}

/// Without a key anywhere (no `key:`, no sticky `hash_key`) each request is its own draw: the
/// share holds over many requests and both values occur for the same client. A keyed flag whose
/// key the request lacks is off (below 100%), unless a targeting rule turns it on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flags_without_a_key_draw_per_request_and_a_missing_key_is_off() {
    let flags = "      drawn: { percent: 30 }\n      keyed: { percent: 99, key: \"header:x-user-id\", rules: [{ match: { header: { name: x-internal, value: \"1\" } }, value: on }] }\n";
    let (proxy, _blue, _canary) = start("flags-draw", "      weights: { blue: 1 }", flags, "").await;
    let client = http1_client();
    let mut drawn = 0;
    for _ in 0..1000 {
        let (_, seen) = ask(&proxy, &client, &[]).await;
        drawn += usize::from(has(&seen, "drawn"));
        assert!(!has(&seen, "keyed"), "no x-user-id: keyed is off at 99%: {seen}");
    }
    // 30% of 1000 draws: sd 14.5; the band is about ±4 sd.
    assert!((240..=360).contains(&drawn), "{drawn} of 1000 requests at 30%");
    let (_, seen) = ask(&proxy, &client, &[("x-internal", "1")]).await;
    assert!(
        has(&seen, "keyed"),
        "a targeting rule turns it on without the key: {seen}"
    );
    proxy.shutdown().await;
}

/// Past 8 flags the `x-sluice-flags` value is built per request instead of precomputed: it must
/// still name exactly the flags that are on, in config order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flags_more_than_eight_still_reach_the_upstream_exactly() {
    let flags: String = (0..10)
        .map(|i| format!("      f{i}: {{ percent: {} }}\n", if i % 3 == 1 { 0 } else { 100 }))
        .collect();
    let (proxy, _blue, _canary) = start("flags-ten", "      weights: { blue: 1 }", &flags, "").await;
    let client = http1_client();
    let (version, seen) = ask(&proxy, &client, &[]).await;
    assert_eq!(version, "blue");
    assert_eq!(seen, "f0,f2,f3,f5,f6,f8,f9");
    proxy.shutdown().await;
}
