//! The admin API: weights, history, revert, validation of bodies, token auth, and state that
//! survives a restart.

use http::StatusCode;
use serde_json::Value;

use crate::support::*;

async fn all_served_by(proxy: &Controlled, want: &str) {
    let client = http1_client();
    for _ in 0..20 {
        assert_eq!(proxy.version_for(&client, &[]).await, want);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn weights_history_and_revert() {
    let (blue, canary) = (Upstream::named("blue").await, Upstream::named("canary").await);
    let dir = temp_dir("admin-weights");
    let path = dir.join("sluice.yaml");
    write_config(
        &path,
        &blue_canary(blue.addr, canary.addr, "      weights: { blue: 100 }", ""),
    );
    let proxy = controlled(&path, Options::default()).await;

    let (status, body) = proxy.api("GET", "/api/v1/services/app", None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        weights_of(&body["service"]),
        vec![("blue".into(), 100), ("canary".into(), 0)]
    );
    assert_eq!(body["service"]["weights_from"], "config");
    let first = body["revision"].as_u64().expect("revision");
    all_served_by(&proxy, "blue").await;

    let (status, body) = proxy
        .api("PUT", "/api/v1/services/app/weights", Some(r#"{"canary": 1}"#))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["revision"].as_u64(), Some(first + 1));
    assert_eq!(
        weights_of(&body["service"]),
        vec![("blue".into(), 0), ("canary".into(), 1)],
        "left out: 0"
    );
    assert_eq!(body["service"]["weights_from"], "admin override");
    all_served_by(&proxy, "canary").await;

    let (_, history) = proxy.api("GET", "/api/v1/history", None).await;
    let entries = history["entries"].as_array().expect("entries");
    assert_eq!(entries[0]["revision"].as_u64(), Some(first + 1), "newest first");
    assert_eq!(entries[0]["cause"], "admin");
    assert!(entries[0]["actor"]
        .as_str()
        .expect("actor")
        .starts_with("admin 127.0.0.1"));
    assert_eq!(entries[0]["weights"]["app"]["canary"], 1);
    assert_eq!(entries[1]["cause"], "config");

    let (status, body) = proxy
        .api(
            "POST",
            "/api/v1/services/app/revert",
            Some(&format!("{{\"revision\": {first}}}")),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["revision"].as_u64(), Some(first + 2));
    assert_eq!(
        weights_of(&body["service"]),
        vec![("blue".into(), 100), ("canary".into(), 0)]
    );
    all_served_by(&proxy, "blue").await;
    let (_, history) = proxy.api("GET", "/api/v1/history?service=app", None).await;
    let actor = history["entries"][0]["actor"].as_str().expect("actor").to_owned();
    assert!(actor.contains(&format!("revert to {first}")), "{actor}");
    proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_get_clear_errors_and_change_nothing() {
    let (blue, canary) = (Upstream::named("blue").await, Upstream::named("canary").await);
    let dir = temp_dir("admin-errors");
    let path = dir.join("sluice.yaml");
    write_config(
        &path,
        &blue_canary(blue.addr, canary.addr, "      weights: { blue: 100 }", ""),
    );
    let proxy = controlled(&path, Options::default()).await;
    let cases: [(&str, &str, Option<&str>, StatusCode, &str); 10] = [
        (
            "PUT",
            "/api/v1/services/app/weights",
            Some(r#"{"canry": 5}"#),
            StatusCode::BAD_REQUEST,
            "unknown version \"canry\" (versions: blue, canary)",
        ),
        (
            "PUT",
            "/api/v1/services/app/weights",
            Some(r#"{"blue": 0, "canary": 0}"#),
            StatusCode::BAD_REQUEST,
            "every weight is 0",
        ),
        (
            "PUT",
            "/api/v1/services/app/weights",
            Some("{}"),
            StatusCode::BAD_REQUEST,
            "name at least one version",
        ),
        (
            "PUT",
            "/api/v1/services/app/weights",
            Some(r#"{"blue": -5}"#),
            StatusCode::BAD_REQUEST,
            "must be a non-negative integer",
        ),
        (
            "PUT",
            "/api/v1/services/app/weights",
            Some("blue=5"),
            StatusCode::BAD_REQUEST,
            "not valid JSON",
        ),
        (
            "PUT",
            "/api/v1/services/app/weights",
            Some("[1]"),
            StatusCode::BAD_REQUEST,
            "must be an object",
        ),
        (
            "PUT",
            "/api/v1/services/nope/weights",
            Some(r#"{"blue": 1}"#),
            StatusCode::NOT_FOUND,
            "unknown service \"nope\"",
        ),
        (
            "POST",
            "/api/v1/services/app/revert",
            Some(r#"{"revision": 999}"#),
            StatusCode::NOT_FOUND,
            "revision 999 is not in the history",
        ),
        (
            "POST",
            "/api/v1/services/app/revert",
            Some(r#"{"rev": 1}"#),
            StatusCode::BAD_REQUEST,
            "body must be {\"revision\": N}",
        ),
        (
            "DELETE",
            "/api/v1/services/app/weights",
            None,
            StatusCode::METHOD_NOT_ALLOWED,
            "use PUT",
        ),
    ];
    let (_, before) = proxy.api("GET", "/api/v1/services", None).await;
    for (method, path, body, status, message) in cases {
        let (got, json) = proxy.api(method, path, body).await;
        assert_eq!(got, status, "{method} {path} {body:?}: {json}");
        let error = json["error"]
            .as_str()
            .unwrap_or_else(|| panic!("no error field: {json}"));
        assert!(
            error.contains(message),
            "{method} {path} {body:?}: {error:?} lacks {message:?}"
        );
    }
    let (_, after) = proxy.api("GET", "/api/v1/services", None).await;
    assert_eq!(before, after, "failed calls must not publish anything");
    let (status, _) = proxy.api("GET", "/api/v1/nothing", None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_is_required_for_the_api_but_not_the_probes() {
    let (blue, canary) = (Upstream::named("blue").await, Upstream::named("canary").await);
    let dir = temp_dir("admin-token");
    let path = dir.join("sluice.yaml");
    write_config(
        &path,
        &blue_canary(blue.addr, canary.addr, "      weights: { blue: 1 }", ""),
    );
    let proxy = controlled(
        &path,
        Options {
            token: Some("s3cret"),
            watch: false,
        },
    )
    .await;
    let (status, _) = proxy.api("GET", "/api/v1/services", None).await;
    assert_eq!(status, StatusCode::OK, "the right token works");

    let client = http1_client();
    let call = |auth: Option<&str>, path: &str| {
        let mut request = http::Request::get(format!("http://{}{}", proxy.admin, path));
        if let Some(auth) = auth {
            request = request.header("authorization", auth);
        }
        send(&client, request.body(empty()).expect("request"))
    };
    for auth in [
        None,
        Some("Bearer wrong"),
        Some("Bearer s3cre"),
        Some("s3cret"),
        Some("Bearer s3cret2"),
    ] {
        let (status, _, body) = call(auth, "/api/v1/services").await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{auth:?}");
        assert!(String::from_utf8_lossy(&body).contains("bearer token"), "{auth:?}");
    }
    let (status, _, _) = call(Some("Bearer wrong"), "/api/v1/services/app/weights").await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "auth comes before routing");
    for probe in ["/healthz", "/readyz"] {
        let (status, _, _) = call(None, probe).await;
        assert_eq!(status, StatusCode::OK, "{probe}");
    }
    proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overrides_and_revisions_survive_a_restart() {
    let (blue, canary) = (Upstream::named("blue").await, Upstream::named("canary").await);
    let dir = temp_dir("admin-restart");
    let path = dir.join("sluice.yaml");
    let state = dir.join("state");
    let extra = format!("state_dir: {}", state.display());
    write_config(
        &path,
        &blue_canary(blue.addr, canary.addr, "      weights: { blue: 100 }", &extra),
    );

    let proxy = controlled(&path, Options::default()).await;
    let (status, body) = proxy
        .api("PUT", "/api/v1/services/app/weights", Some(r#"{"canary": 100}"#))
        .await;
    assert_eq!(status, StatusCode::OK);
    let changed = body["revision"].as_u64().expect("revision");
    all_served_by(&proxy, "canary").await;
    proxy.shutdown().await;

    let restarted = controlled(&path, Options::default()).await;
    let (_, body) = restarted.api("GET", "/api/v1/services/app", None).await;
    assert_eq!(
        body["revision"].as_u64(),
        Some(changed + 1),
        "the revision counter continues"
    );
    assert_eq!(
        weights_of(&body["service"]),
        vec![("blue".into(), 0), ("canary".into(), 100)]
    );
    all_served_by(&restarted, "canary").await;
    let (_, history) = restarted.api("GET", "/api/v1/history", None).await;
    let revisions: Vec<u64> = history["entries"]
        .as_array()
        .expect("entries")
        .iter()
        .filter_map(|e| e["revision"].as_u64())
        .collect();
    assert_eq!(
        revisions,
        vec![changed + 1, changed, changed - 1],
        "history survives the restart"
    );
    restarted.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_that_removes_an_overridden_version_drops_the_override() {
    let (blue, canary) = (Upstream::named("blue").await, Upstream::named("canary").await);
    let dir = temp_dir("admin-drop-override");
    let path = dir.join("sluice.yaml");
    write_config(
        &path,
        &blue_canary(blue.addr, canary.addr, "      weights: { blue: 100 }", ""),
    );
    let proxy = controlled(&path, Options::default()).await;
    proxy
        .api(
            "PUT",
            "/api/v1/services/app/weights",
            Some(r#"{"blue": 50, "canary": 50}"#),
        )
        .await;

    let only_blue = format!(
        "listeners: [{{ name: t, address: 127.0.0.1:0 }}]\nservices:\n  - name: app\n    expose_version: true\n    versions: {{ blue: {{ endpoints: [{}] }} }}\n    routing: {{ weights: {{ blue: 7 }} }}\n",
        blue.addr
    );
    write_config(&path, &only_blue);
    let (status, body) = proxy.api("POST", "/api/v1/reload", None).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["result"], "ok");
    let warnings = body["warnings"].to_string();
    assert!(
        warnings.contains("dropping the weight override of \\\"app\\\""),
        "{warnings}"
    );
    let (_, view) = proxy.api("GET", "/api/v1/services/app", None).await;
    assert_eq!(weights_of(&view["service"]), vec![("blue".into(), 7)]);
    assert_eq!(view["service"]["weights_from"], "config");
    all_served_by(&proxy, "blue").await;
    proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_filter_keeps_the_entries_that_changed_a_service() {
    let (blue, canary) = (Upstream::named("blue").await, Upstream::named("canary").await);
    let dir = temp_dir("admin-history-filter");
    let path = dir.join("sluice.yaml");
    let other = format!(
        "  - name: other\n    match: {{ path_prefix: /other }}\n    versions: {{ v: {{ endpoints: [{}] }}, w: {{ endpoints: [{}] }} }}\n    routing: {{ weights: {{ v: 1 }} }}\n",
        blue.addr, canary.addr
    );
    write_config(
        &path,
        &(blue_canary(blue.addr, canary.addr, "      weights: { blue: 100 }", "") + &other),
    );
    let proxy = controlled(&path, Options::default()).await;
    let (_, app_change) = proxy
        .api("PUT", "/api/v1/services/app/weights", Some(r#"{"canary": 1}"#))
        .await;
    let (_, other_change) = proxy
        .api("PUT", "/api/v1/services/other/weights", Some(r#"{"w": 1}"#))
        .await;
    // A reload that changes only `other`'s endpoints (not its weights) changes `other` too.
    let text = std::fs::read_to_string(&path).expect("read");
    let changed = text.replace(
        &format!("w: {{ endpoints: [{}] }}", canary.addr),
        &format!("w: {{ endpoints: [{}, {}] }}", canary.addr, blue.addr),
    );
    assert_ne!(text, changed);
    write_config(&path, &changed);
    let (status, reload) = proxy.api("POST", "/api/v1/reload", None).await;
    assert_eq!(status, StatusCode::OK, "{reload}");
    let revisions = |history: &Value| -> Vec<u64> {
        history["entries"]
            .as_array()
            .expect("entries")
            .iter()
            .filter_map(|e| e["revision"].as_u64())
            .collect()
    };
    let (_, app) = proxy.api("GET", "/api/v1/history?service=app", None).await;
    let (_, other) = proxy.api("GET", "/api/v1/history?service=other", None).await;
    let rev = |v: &Value| v["revision"].as_u64().expect("revision");
    let (app_rev, other_rev, reload_rev) = (rev(&app_change), rev(&other_change), rev(&reload));
    assert_eq!(
        revisions(&app),
        vec![app_rev, app_rev - 1],
        "app: its change and the startup table"
    );
    assert_eq!(
        revisions(&other),
        vec![reload_rev, other_rev, app_rev - 1],
        "other: the reload, its change, startup"
    );
    let (status, _) = proxy.api("GET", "/api/v1/history?service=nope", None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_change_that_cannot_be_persisted_is_refused_and_publishes_nothing() {
    let (blue, canary) = (Upstream::named("blue").await, Upstream::named("canary").await);
    let dir = temp_dir("admin-persist-fail");
    let path = dir.join("sluice.yaml");
    let state = dir.join("state");
    let extra = format!("state_dir: {}", state.display());
    write_config(
        &path,
        &blue_canary(blue.addr, canary.addr, "      weights: { blue: 100 }", &extra),
    );
    let proxy = controlled(&path, Options::default()).await;
    let (_, before) = proxy.api("GET", "/api/v1/services/app", None).await;
    // A directory where the temporary state file must go makes every save fail.
    std::fs::create_dir(state.join("state.json.tmp")).expect("block the state file");
    let (status, body) = proxy
        .api("PUT", "/api/v1/services/app/weights", Some(r#"{"canary": 100}"#))
        .await;
    assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR, "{body}");
    assert!(
        body["error"].as_str().expect("error").contains("cannot persist"),
        "{body}"
    );
    let (_, after) = proxy.api("GET", "/api/v1/services/app", None).await;
    assert_eq!(before, after, "nothing was published");
    all_served_by(&proxy, "blue").await;
    // Once the state dir is writable again, the same change goes through.
    std::fs::remove_dir(state.join("state.json.tmp")).expect("unblock");
    let (status, body) = proxy
        .api("PUT", "/api/v1/services/app/weights", Some(r#"{"canary": 100}"#))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(
        body["revision"].as_u64(),
        Some(before["revision"].as_u64().expect("revision") + 1),
        "no revision was used up"
    );
    all_served_by(&proxy, "canary").await;
    proxy.shutdown().await;
}

/// A web page on another site cannot change routing through the operator's browser: changing
/// requests that a browser marks as cross-site are refused, and nothing changes; the same
/// request from the admin's own origin (the dashboard) or from a non-browser client passes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cross_site_requests_cannot_change_anything() {
    let (blue, canary) = (Upstream::named("blue").await, Upstream::named("canary").await);
    let dir = temp_dir("admin-cross-site");
    let path = dir.join("sluice.yaml");
    write_config(
        &path,
        &blue_canary(blue.addr, canary.addr, "      weights: { blue: 100 }", ""),
    );
    let proxy = controlled(&path, Options::default()).await;
    let client = http1_client();
    let put = |headers: &[(&str, String)]| {
        let mut request = http::Request::put(format!("http://{}/api/v1/services/app/weights", proxy.admin));
        for (name, value) in headers {
            request = request.header(*name, value.as_str());
        }
        send(&client, request.body(full(r#"{"canary": 100}"#)).expect("request"))
    };
    let own = format!("http://{}", proxy.admin);
    for headers in [
        vec![("origin", "http://evil.example".to_owned())],
        vec![("origin", "null".to_owned())],
        vec![("origin", format!("{own}.evil.example"))],
        vec![("sec-fetch-site", "cross-site".to_owned())],
        vec![("origin", own.clone()), ("sec-fetch-site", "same-site".to_owned())],
        // DNS rebinding: a page whose own name now points here is "same-origin" to its browser.
        vec![
            ("host", format!("evil.example:{}", proxy.admin.port())),
            ("origin", format!("http://evil.example:{}", proxy.admin.port())),
            ("sec-fetch-site", "same-origin".to_owned()),
        ],
    ] {
        let (status, _, body) = put(&headers).await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{headers:?}");
        assert!(String::from_utf8_lossy(&body).contains("cross-site"), "{headers:?}");
    }
    let (_, view) = proxy.api("GET", "/api/v1/services/app", None).await;
    assert_eq!(view["service"]["weights_from"], "config", "nothing changed: {view}");
    // The dashboard's own requests, and ctl's (no Origin), pass.
    let (status, _, _) = put(&[("origin", own), ("sec-fetch-site", "same-origin".to_owned())]).await;
    assert_eq!(status, StatusCode::OK);
    let (status, _) = proxy
        .api("PUT", "/api/v1/services/app/weights", Some(r#"{"blue": 1}"#))
        .await;
    assert_eq!(status, StatusCode::OK);
    proxy.shutdown().await;
}
