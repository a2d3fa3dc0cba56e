//! Rollouts on real sockets: steps, guardrails and rollback under real traffic, operator
//! commands, gates, auto_start and blue/green.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::{Response, StatusCode};
use http_body_util::BodyExt;
use serde_json::Value;

use crate::support::*;

/// Pause between one load loop's requests: a few hundred requests a second per loop.
const PACE: Duration = Duration::from_millis(2);

/// A config with `blue` and `canary` (blue 100%) and a rollout whose body is `rollout`
/// (6-space indented lines after `baseline` and `canary`); `extra` goes into the service.
fn config(blue: SocketAddr, canary: SocketAddr, rollout: &str, extra: &str) -> String {
    format!(
        "listeners: [{{ name: t, address: 127.0.0.1:0 }}]\nservices:\n  - name: app\n    expose_version: true\n    versions:\n      blue: {{ endpoints: [{blue}] }}\n      canary: {{ endpoints: [{canary}] }}\n    routing: {{ weights: {{ blue: 100 }} }}\n{extra}    rollout:\n      baseline: blue\n      canary: canary\n{rollout}"
    )
}

async fn start(name: &str, yaml: &str) -> Controlled {
    let dir = temp_dir(name);
    let path = dir.join("sluice.yaml");
    write_config(&path, yaml);
    controlled(&path, Options::default()).await
}

async fn service(p: &Controlled) -> Value {
    let (status, body) = p.api("GET", "/api/v1/services/app", None).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    body["service"].clone()
}

/// Polls the service until `check` holds for its rollout, returning the service.
async fn wait_rollout(p: &Controlled, what: &str, check: impl Fn(&Value) -> bool) -> Value {
    let start = tokio::time::Instant::now();
    loop {
        let service = service(p).await;
        if check(&service["rollout"]) {
            return service;
        }
        assert!(
            start.elapsed() < DEADLINE,
            "timed out waiting until {what}: {:#}",
            service["rollout"]
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn state_is(state: &'static str) -> impl Fn(&Value) -> bool {
    move |r| r["state"] == state
}

fn w(blue: u64, canary: u64) -> Vec<(String, u64)> {
    vec![("blue".into(), blue), ("canary".into(), canary)]
}

async fn command(p: &Controlled, command: &str) -> (StatusCode, Value) {
    p.api("POST", &format!("/api/v1/services/app/rollout/{command}"), None)
        .await
}

/// Sends `n` requests one after another and returns how many the canary answered.
async fn canary_answers(p: &Controlled, n: usize) -> usize {
    let client = http1_client();
    let mut canary = 0;
    for _ in 0..n {
        if p.version_for_any(&client).await == "canary" {
            canary += 1;
        }
    }
    canary
}

async fn failing(status: u16) -> Upstream {
    Upstream::start(move |_| async move {
        Response::builder()
            .status(status)
            .body(full("failing"))
            .expect("response")
    })
    .await
}

#[tokio::test]
async fn a_healthy_canary_is_promoted_through_its_steps() {
    let (blue, canary) = (Upstream::named("blue").await, Upstream::named("canary").await);
    let p = start(
        "rollout-promote",
        &config(
            blue.addr,
            canary.addr,
            "      steps:\n        - { weight: 20, hold: 1s }\n        - { weight: 50, hold: 1s }\n        - { weight: 100 }\n      guardrails: { min_requests: 20, max_error_rate: 0.05, max_p99: 5s }\n",
            "",
        ),
    )
    .await;
    assert_eq!(service(&p).await["rollout"]["state"], "idle");
    let load = Load::start(p.url("/"), 2, PACE);
    let (status, body) = command(&p, "start").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(weights_of(&body["service"]), w(80, 20));
    assert_eq!(body["service"]["rollout"]["step"], 1);

    let done = wait_rollout(&p, "the rollout is promoted", state_is("promoted")).await;
    assert_eq!(weights_of(&done), w(0, 100));
    assert_eq!(done["weights_from"], "admin override");
    load.stop().await;

    // Every transition is a revision with its reason.
    let (_, history) = p.api("GET", "/api/v1/history?service=app", None).await;
    let actors: Vec<&str> = history["entries"]
        .as_array()
        .expect("entries")
        .iter()
        .rev()
        .filter(|e| e["cause"] == "rollout" || e["cause"] == "admin")
        .map(|e| e["actor"].as_str().expect("actor"))
        .collect();
    assert_eq!(actors.len(), 4, "{actors:#?}");
    assert!(actors[0].contains("rollout start") && actors[0].contains("step 1/3: weight 20, hold 1s"));
    assert!(actors[1].contains("step 2/3: weight 50, hold 1s"), "{}", actors[1]);
    assert!(actors[2].contains("step 3/3: weight 100"), "{}", actors[2]);
    assert!(actors[3].contains("promoted: every step passed"), "{}", actors[3]);
    assert_eq!(
        canary_answers(&p, 20).await,
        20,
        "after promotion the canary serves everything"
    );
    let (_, metrics) = p.api_text("/metrics").await;
    assert!(metrics.contains("sluice_rollout_step{service=\"app\"} 0"), "{metrics}");
    p.shutdown().await;
}

#[tokio::test]
async fn a_canary_answering_500s_is_rolled_back() {
    let (blue, canary) = (Upstream::named("blue").await, failing(500).await);
    let p = start(
        "rollout-rollback",
        &config(
            blue.addr,
            canary.addr,
            "      steps:\n        - { weight: 50, hold: 60s }\n        - { weight: 100 }\n      guardrails: { min_requests: 20, max_error_rate: 0.01 }\n",
            "",
        ),
    )
    .await;
    let load = Load::start(p.url("/"), 2, PACE);
    assert_eq!(command(&p, "start").await.0, StatusCode::OK);
    let done = wait_rollout(&p, "the canary is rolled back", state_is("rolled_back")).await;
    assert_eq!(weights_of(&done), w(100, 0));
    let breach = &done["rollout"]["breach"];
    assert_eq!(breach["rule"], "max_error_rate");
    assert_eq!(breach["value"], 1.0);
    assert_eq!(breach["threshold"], 0.01);
    assert!(done["rollout"]["reason"]
        .as_str()
        .expect("reason")
        .starts_with("rolled back: max_error_rate"));

    // The canary gets nothing more: its upstream sees no new request.
    let hits = canary.hits();
    let before = load.total();
    let client = http1_client();
    for _ in 0..100 {
        assert_eq!(p.version_for_any(&client).await, "blue");
    }
    wait_until("the load loops sent more requests", || load.total() > before + 50).await;
    assert_eq!(canary.hits(), hits, "no request reached the canary after the rollback");
    load.stop().await;

    let (_, history) = p.api("GET", "/api/v1/history?service=app", None).await;
    let newest = &history["entries"][0];
    assert_eq!(newest["cause"], "guardrail");
    assert_eq!(newest["weights"]["app"]["canary"], 0);
    let (_, metrics) = p.api_text("/metrics").await;
    assert!(
        metrics.contains("sluice_rollbacks_total{service=\"app\",reason=\"max_error_rate\"} 1"),
        "{metrics}"
    );
    p.shutdown().await;
}

#[tokio::test]
async fn a_slow_canary_breaches_the_p99_ratio() {
    let blue = Upstream::named("blue").await;
    let canary = Upstream::start(|_| async {
        tokio::time::sleep(Duration::from_millis(60)).await;
        Response::new(full("slow"))
    })
    .await;
    let p = start(
        "rollout-slow",
        &config(
            blue.addr,
            canary.addr,
            "      steps:\n        - { weight: 50, hold: 60s }\n      guardrails: { min_requests: 20, max_error_rate: 0.01, max_p99_ratio: 1.5 }\n",
            "",
        ),
    )
    .await;
    let load = Load::start(p.url("/"), 4, PACE);
    assert_eq!(command(&p, "start").await.0, StatusCode::OK);
    let done = wait_rollout(&p, "the slow canary is rolled back", state_is("rolled_back")).await;
    load.stop().await;
    let breach = &done["rollout"]["breach"];
    assert_eq!(breach["rule"], "max_p99_ratio", "{breach}");
    assert!(breach["value"].as_f64().expect("ratio") > 1.5, "{breach}");
    assert_eq!(weights_of(&done), w(100, 0));
    p.shutdown().await;
}

#[tokio::test]
async fn a_few_unlucky_errors_do_not_roll_back_a_healthy_canary() {
    let blue = Upstream::named("blue").await;
    // The canary's 2nd and 9th requests fail: 2 of the first 20 is 10%, twice the limit, but
    // not significantly above it.
    let seen = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&seen);
    let canary = Upstream::start(move |_| {
        let n = counter.fetch_add(1, Ordering::SeqCst) + 1;
        async move {
            let status = if n == 2 || n == 9 { 500 } else { 200 };
            Response::builder()
                .status(status)
                .body(full("canary"))
                .expect("response")
        }
    })
    .await;
    let p = start(
        "rollout-unlucky",
        &config(
            blue.addr,
            canary.addr,
            "      steps:\n        - { weight: 50, hold: 1s }\n        - { weight: 100 }\n      guardrails: { min_requests: 20, max_error_rate: 0.05 }\n",
            "",
        ),
    )
    .await;
    // One loop, so the canary's first 20 answers include both errors before any verdict.
    let load = Load::start(p.url("/"), 1, PACE);
    assert_eq!(command(&p, "start").await.0, StatusCode::OK);
    let done = wait_rollout(&p, "the rollout ends", |r| r["state"] != "progressing").await;
    load.stop().await;
    assert_eq!(done["rollout"]["state"], "promoted", "{:#}", done["rollout"]);
    assert!(load_errors(&p).await >= 2, "the canary did answer two 500s");
    p.shutdown().await;
}

/// The canary's 5xx answers so far, from `/metrics`.
async fn load_errors(p: &Controlled) -> u64 {
    let (_, metrics) = p.api_text("/metrics").await;
    metrics
        .lines()
        .find(|l| {
            l.starts_with("sluice_requests_total{service=\"app\",version=\"canary\",role=\"primary\",code=\"5xx\"}")
        })
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

/// An upstream standing in for a webhook: records each body and answers `status`.
async fn webhook(status: Arc<AtomicUsize>, bodies: Arc<Mutex<Vec<Value>>>) -> Upstream {
    Upstream::start(move |request| {
        let (status, bodies) = (Arc::clone(&status), Arc::clone(&bodies));
        async move {
            let bytes = request.into_body().collect().await.expect("body").to_bytes();
            bodies
                .lock()
                .expect("bodies")
                .push(serde_json::from_slice(&bytes).expect("json body"));
            Response::builder()
                .status(status.load(Ordering::SeqCst) as u16)
                .body(full(""))
                .expect("response")
        }
    })
    .await
}

#[tokio::test]
async fn approval_and_webhook_gates() {
    let (blue, canary) = (Upstream::named("blue").await, Upstream::named("canary").await);
    let status = Arc::new(AtomicUsize::new(200));
    let bodies = Arc::new(Mutex::new(Vec::new()));
    let hook = webhook(Arc::clone(&status), Arc::clone(&bodies)).await;
    let p = start(
        "rollout-gates",
        &config(
            blue.addr,
            canary.addr,
            &format!("      steps:\n        - {{ weight: 10 }}\n        - {{ approval: true }}\n        - {{ webhook: {{ url: \"http://{}/gate\", timeout: 2s }} }}\n        - {{ weight: 100 }}\n      guardrails: {{ min_requests: 20 }}\n", hook.addr),
            "",
        ),
    )
    .await;
    assert_eq!(command(&p, "start").await.0, StatusCode::OK);
    let waiting = wait_rollout(&p, "the rollout waits for approval", |r| r["step"] == 2).await;
    assert_eq!(waiting["rollout"]["state"], "progressing");
    assert_eq!(weights_of(&waiting), w(90, 10));
    // It keeps waiting: several evaluations later, still at the approval step.
    let first = wait_rollout(&p, "a judgement exists", |r| r["judgement"]["time"].is_string()).await;
    let t0 = first["rollout"]["judgement"]["time"].clone();
    let later = wait_rollout(&p, "a later judgement", |r| r["judgement"]["time"] != t0).await;
    assert_eq!(
        (later["rollout"]["step"].clone(), later["rollout"]["state"].clone()),
        (2.into(), "progressing".into())
    );
    assert!(
        bodies.lock().expect("bodies").is_empty(),
        "the webhook waits for the approval"
    );

    let (code, approved) = command(&p, "resume").await;
    assert_eq!(code, StatusCode::OK, "{approved}");
    let done = wait_rollout(&p, "promoted after the webhook passed", state_is("promoted")).await;
    assert_eq!(weights_of(&done), w(0, 100));
    let calls = bodies.lock().expect("bodies").clone();
    assert_eq!(
        calls,
        vec![
            serde_json::json!({"service": "app", "step": 3, "baseline": "blue", "canary": "canary", "weights": {"blue": 90, "canary": 10}})
        ]
    );

    // Again, with a webhook that refuses: a breach.
    status.store(503, Ordering::SeqCst);
    assert_eq!(command(&p, "start").await.0, StatusCode::OK);
    wait_rollout(&p, "at the approval step again", |r| {
        r["step"] == 2 && r["state"] == "progressing"
    })
    .await;
    assert_eq!(command(&p, "resume").await.0, StatusCode::OK);
    let refused = wait_rollout(&p, "rolled back by the webhook", state_is("rolled_back")).await;
    assert_eq!(refused["rollout"]["breach"]["rule"], "webhook");
    assert!(
        refused["rollout"]["breach"]["message"]
            .as_str()
            .expect("message")
            .contains("503"),
        "{}",
        refused["rollout"]["breach"]
    );
    assert_eq!(weights_of(&refused), w(100, 0));
    p.shutdown().await;
}

#[tokio::test]
async fn operator_commands_pause_resume_promote_abort() {
    let (blue, canary) = (Upstream::named("blue").await, Upstream::named("canary").await);
    let p = start(
        "rollout-commands",
        &config(
            blue.addr,
            canary.addr,
            "      steps:\n        - { weight: 30, hold: 1h }\n        - { weight: 100 }\n",
            "",
        ),
    )
    .await;
    let (code, body) = command(&p, "pause").await;
    assert_eq!(code, StatusCode::CONFLICT, "{body}");
    assert!(body["error"]
        .as_str()
        .expect("error")
        .contains("no rollout of \"app\" is active"));

    assert_eq!(command(&p, "start").await.0, StatusCode::OK);
    assert_eq!(command(&p, "start").await.0, StatusCode::CONFLICT, "only one at a time");
    let (code, paused) = command(&p, "pause").await;
    assert_eq!(code, StatusCode::OK);
    assert_eq!(paused["service"]["rollout"]["state"], "paused");
    assert_eq!(weights_of(&paused["service"]), w(70, 30), "a pause keeps the weights");
    assert_eq!(command(&p, "pause").await.0, StatusCode::CONFLICT);
    let (_, resumed) = command(&p, "resume").await;
    assert_eq!(resumed["service"]["rollout"]["state"], "progressing");
    assert_eq!(
        command(&p, "resume").await.0,
        StatusCode::CONFLICT,
        "not paused, not at an approval"
    );

    // A manual weights change pauses it, and resume puts the rollout's weights back.
    let (code, manual) = p
        .api(
            "PUT",
            "/api/v1/services/app/weights",
            Some(r#"{"blue": 95, "canary": 5}"#),
        )
        .await;
    assert_eq!(code, StatusCode::OK);
    assert_eq!(manual["service"]["rollout"]["state"], "paused");
    assert!(manual["service"]["rollout"]["reason"]
        .as_str()
        .expect("reason")
        .contains("weights changed by hand"));
    assert_eq!(weights_of(&manual["service"]), w(95, 5));
    let (_, resumed) = command(&p, "resume").await;
    assert_eq!(weights_of(&resumed["service"]), w(70, 30));

    let (_, promoted) = command(&p, "promote").await;
    assert_eq!(promoted["service"]["rollout"]["state"], "promoted");
    assert_eq!(weights_of(&promoted["service"]), w(0, 100));
    assert_eq!(canary_answers(&p, 10).await, 10);

    // A finished rollout starts again from the first step; abort rolls it back.
    let (_, again) = command(&p, "start").await;
    assert_eq!(
        (
            again["service"]["rollout"]["step"].clone(),
            weights_of(&again["service"])
        ),
        (1.into(), w(70, 30))
    );
    let (_, aborted) = command(&p, "abort").await;
    assert_eq!(aborted["service"]["rollout"]["state"], "aborted");
    assert_eq!(weights_of(&aborted["service"]), w(100, 0));
    assert_eq!(canary_answers(&p, 10).await, 0);
    assert_eq!(command(&p, "resume").await.0, StatusCode::CONFLICT);

    let (code, body) = command(&p, "jump").await;
    assert_eq!(code, StatusCode::NOT_FOUND, "{body}");
    let (code, _) = p.api("GET", "/api/v1/services/app/rollout/start", None).await;
    assert_eq!(code, StatusCode::METHOD_NOT_ALLOWED);
    let (code, _) = p.api("POST", "/api/v1/services/nope/rollout/start", None).await;
    assert_eq!(code, StatusCode::NOT_FOUND);
    p.shutdown().await;
}

#[tokio::test]
async fn a_service_without_a_plan_refuses_rollout_commands() {
    let (blue, canary) = (Upstream::named("blue").await, Upstream::named("canary").await);
    let p = start(
        "rollout-none",
        &blue_canary(blue.addr, canary.addr, "      weights: { blue: 100 }", ""),
    )
    .await;
    let (code, body) = p.api("POST", "/api/v1/services/app/rollout/start", None).await;
    assert_eq!(code, StatusCode::BAD_REQUEST);
    assert!(
        body["error"].as_str().expect("error").contains("has no rollout plan"),
        "{body}"
    );
    assert_eq!(service(&p).await["rollout"], Value::Null);
    p.shutdown().await;
}

#[tokio::test]
async fn auto_start_fires_when_a_reload_changes_the_canary() {
    let (blue, canary, canary2) = (
        Upstream::named("blue").await,
        Upstream::named("canary").await,
        Upstream::named("canary-2").await,
    );
    let plan = "      auto_start: true\n      steps:\n        - { weight: 25, hold: 1h }\n";
    let dir = temp_dir("rollout-auto");
    let path = dir.join("sluice.yaml");
    write_config(&path, &config(blue.addr, canary.addr, plan, ""));
    let p = controlled(&path, Options::default()).await;
    assert_eq!(service(&p).await["rollout"]["state"], "idle", "not at process start");

    // A reload that leaves the canary alone does not start it.
    write_config(
        &path,
        &format!("{}\n# touched\n", config(blue.addr, canary.addr, plan, "")),
    );
    let (_, reload) = p.api("POST", "/api/v1/reload", None).await;
    assert_eq!(reload["result"], "ok", "{reload}");
    assert_eq!(service(&p).await["rollout"]["state"], "idle");

    write_config(&path, &config(blue.addr, canary2.addr, plan, ""));
    let (_, reload) = p.api("POST", "/api/v1/reload", None).await;
    assert_eq!(reload["result"], "ok", "{reload}");
    let started = service(&p).await;
    assert_eq!(started["rollout"]["state"], "progressing");
    assert!(started["rollout"]["reason"]
        .as_str()
        .expect("reason")
        .contains("auto_start"));
    assert_eq!(weights_of(&started), w(75, 25));
    let (_, history) = p.api("GET", "/api/v1/history?service=app", None).await;
    assert!(history["entries"][0]["actor"]
        .as_str()
        .expect("actor")
        .contains("auto_start"));
    p.shutdown().await;
}

#[tokio::test]
async fn blue_green_switch_guards_after_the_switch_and_switches_back() {
    let blue = Upstream::named("blue").await;
    let broken = Arc::new(AtomicBool::new(false));
    let flag = Arc::clone(&broken);
    let green = Upstream::start(move |_| {
        let status = if flag.load(Ordering::SeqCst) { 500 } else { 200 };
        async move {
            Response::builder()
                .status(status)
                .body(full("green"))
                .expect("response")
        }
    })
    .await;
    let yaml = format!(
        "listeners: [{{ name: t, address: 127.0.0.1:0 }}]\nservices:\n  - name: app\n    expose_version: true\n    versions:\n      blue: {{ endpoints: [{}] }}\n      green: {{ endpoints: [{}] }}\n    routing: {{ weights: {{ blue: 100 }} }}\n    mirror:\n      - {{ version: green, percent: 100, compare: status }}\n    rollout:\n      baseline: blue\n      canary: green\n      steps:\n        - {{ weight: 0, hold: 1s }}\n        - {{ weight: 100, hold: 1h }}\n      guardrails: {{ min_requests: 20, max_error_rate: 0.05 }}\n",
        blue.addr, green.addr
    );
    let p = start("rollout-blue-green", &yaml).await;
    let load = Load::start(p.url("/"), 2, PACE);
    assert_eq!(command(&p, "start").await.0, StatusCode::OK);
    // The preview is judged on green's shadow copies against blue's answers.
    let preview = wait_rollout(&p, "the preview is judged", |r| {
        r["judgement"]["canary_role"] == "shadow"
    })
    .await;
    assert_eq!(preview["rollout"]["step"], 1);
    let switched = wait_rollout(&p, "the switch to green", |r| r["step"] == 2).await;
    let gw = |s: &Value| weights_of(s).into_iter().map(|(_, w)| w).collect::<Vec<_>>();
    assert_eq!(gw(&switched), vec![0, 100]);
    let green_before = load.served_by("green");
    wait_until("green serves", || load.served_by("green") > green_before + 50).await;
    // A request green serves is not also copied to green.
    let copies = |s: &Value| {
        s["mirror"][0]["sent"].as_u64().expect("sent") + s["mirror"][0]["in_flight"].as_u64().expect("in flight")
    };
    let sent = copies(&service(&p).await);
    let green_before = load.served_by("green");
    wait_until("green serves more", || load.served_by("green") > green_before + 50).await;
    assert_eq!(
        copies(&service(&p).await),
        sent,
        "no shadow copies while green is the primary"
    );

    // Green breaks after the switch: the hold is still guarding, blue takes everything back.
    broken.store(true, Ordering::SeqCst);
    let back = wait_rollout(&p, "the switch back", state_is("rolled_back")).await;
    assert_eq!(gw(&back), vec![100, 0]);
    assert_eq!(back["rollout"]["breach"]["rule"], "max_error_rate");
    let blue_before = load.served_by("blue");
    wait_until("blue serves again", || load.served_by("blue") > blue_before + 50).await;
    load.stop().await;
    p.shutdown().await;
}

#[tokio::test]
async fn a_hold_without_data_is_extended_then_pauses() {
    let (blue, canary) = (Upstream::named("blue").await, Upstream::named("canary").await);
    let p = start(
        "rollout-inconclusive",
        &config(
            blue.addr,
            canary.addr,
            "      steps:\n        - { weight: 10, hold: 300ms }\n        - { weight: 100 }\n      guardrails: { min_requests: 1000 }\n",
            "",
        ),
    )
    .await;
    assert_eq!(command(&p, "start").await.0, StatusCode::OK);
    // No traffic at all: past the hold the verdict is missing, so the hold is extended...
    let extended = wait_rollout(&p, "the hold is extended", |r| r["judgement"]["extended"] == true).await;
    assert_eq!(extended["rollout"]["state"], "progressing");
    // ...up to three times its length, then the rollout waits for an operator.
    let paused = wait_rollout(&p, "the rollout pauses", state_is("paused")).await;
    let reason = paused["rollout"]["reason"].as_str().expect("reason");
    assert!(
        reason.contains("no verdict after") && reason.contains("0 canary requests in the window, 1000 needed"),
        "{reason}"
    );
    assert_eq!(weights_of(&paused), w(90, 10), "never promoted on missing data");
    p.shutdown().await;
}

#[tokio::test]
async fn a_canary_that_gets_no_traffic_is_rolled_back_for_silence() {
    let blue = Upstream::named("blue").await;
    // The canary fails its health checks, so it is taken out and gets nothing.
    let canary = Upstream::start(|request| async move {
        let status = if request.uri().path() == "/healthz" { 503 } else { 200 };
        Response::builder()
            .status(status)
            .body(full("canary"))
            .expect("response")
    })
    .await;
    let yaml = config(
        blue.addr,
        canary.addr,
        "      steps:\n        - { weight: 100, hold: 1h }\n      guardrails: { min_requests: 20, max_error_rate: 0.01 }\n",
        "",
    )
    .replace(
        &format!("canary: {{ endpoints: [{}] }}", canary.addr),
        &format!(
            "canary: {{ endpoints: [{}], health_check: {{ interval: 100ms, timeout: 50ms, unhealthy: 1 }} }}",
            canary.addr
        ),
    );
    let p = start("rollout-silence", &yaml).await;
    let load = Load::start(p.url("/"), 2, PACE);
    assert_eq!(command(&p, "start").await.0, StatusCode::OK);
    let done = wait_rollout(&p, "rolled back for silence", state_is("rolled_back")).await;
    load.stop().await;
    assert_eq!(done["rollout"]["breach"]["rule"], "silence", "{:#}", done["rollout"]);
    let message = done["rollout"]["breach"]["message"].as_str().expect("message");
    assert!(message.contains("no healthy endpoint"), "{message}");
    assert_eq!(weights_of(&done), w(100, 0));
    p.shutdown().await;
}

#[tokio::test]
async fn clients_pinned_to_the_baseline_are_not_silence() {
    let (blue, canary) = (Upstream::named("blue").await, Upstream::named("canary").await);
    let p = start(
        "rollout-pinned",
        &config(
            blue.addr,
            canary.addr,
            "      steps:\n        - { weight: 30, hold: 2s }\n      guardrails: { min_requests: 20 }\n",
            "",
        )
        .replace(
            "    routing: { weights: { blue: 100 } }\n",
            "    routing: { weights: { blue: 100 }, sticky: { cookie: sid } }\n",
        ),
    )
    .await;
    // Every client holds a sticky cookie for blue: the canary's 30% sees none of them.
    let load = Load::with_header(p.url("/"), 2, PACE, Some(("cookie", "sid=blue")));
    assert_eq!(command(&p, "start").await.0, StatusCode::OK);
    let done = wait_rollout(&p, "the rollout stops", |r| r["state"] != "progressing").await;
    assert_eq!(load.served_by("canary"), 0);
    assert!(load.served_by("blue") > 100);
    load.stop().await;
    assert_eq!(done["rollout"]["state"], "paused", "{:#}", done["rollout"]);
    assert!(done["rollout"]["reason"]
        .as_str()
        .expect("reason")
        .contains("no verdict"));
    p.shutdown().await;
}

#[tokio::test]
async fn a_rollback_is_published_even_when_the_state_cannot_be_saved() {
    let (blue, canary) = (Upstream::named("blue").await, failing(500).await);
    let dir = temp_dir("rollout-disk");
    let state = dir.join("state");
    let yaml = config(
        blue.addr,
        canary.addr,
        "      steps:\n        - { weight: 50, hold: 60s }\n      guardrails: { min_requests: 20, max_error_rate: 0.01 }\n",
        "",
    )
    .replacen("services:", &format!("state_dir: {}\nservices:", state.display()), 1);
    let path = dir.join("sluice.yaml");
    write_config(&path, &yaml);
    let p = controlled(&path, Options::default()).await;
    assert_eq!(command(&p, "start").await.0, StatusCode::OK);
    // From now on every save fails (a directory where the temporary state file must go).
    std::fs::create_dir(state.join("state.json.tmp")).expect("block the state file");
    let load = Load::start(p.url("/"), 2, PACE);
    let done = wait_rollout(&p, "rolled back despite the disk", state_is("rolled_back")).await;
    load.stop().await;
    assert_eq!(weights_of(&done), w(100, 0));
    // An operator's change is still refused while the state cannot be saved.
    let (code, _) = p
        .api("PUT", "/api/v1/services/app/weights", Some(r#"{"canary": 100}"#))
        .await;
    assert_eq!(code, StatusCode::INTERNAL_SERVER_ERROR);
    p.shutdown().await;
}
