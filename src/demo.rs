//! `sluice demo`: the whole product in one command, with nothing to install or configure.
//!
//! In one process: three upstreams (blue, the running version; canary, the new one; green, a
//! shadow that gets copies), the proxy, the admin API and dashboard, and a load generator. A
//! canary rollout starts at once; when it reaches its third step the canary turns faulty (a
//! quarter of its answers become 500s, and it slows down), the guardrails see the breach and the
//! rollout puts the canary back to 0% by itself. Each step, the breach and the rollback are
//! printed as they happen, with per-version traffic once a second; then the demo keeps serving
//! (and loading) until Ctrl-C, or until `--duration` has passed.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::{json, Value};
use tokio::net::TcpListener;

use crate::admin::Admin;
use crate::control::{Control, RolloutCommand};

/// The demo's service.
const SERVICE: &str = "shop";
/// The step (1-based) at which the canary turns faulty.
const FAULTY_AT_STEP: u64 = 3;
/// Share of a faulty canary's answers that are 500s, percent.
const FAULTY_ERROR_PERCENT: u64 = 25;

/// `sluice demo` options.
#[derive(Debug, clap::Args)]
pub struct DemoArgs {
    /// Where the proxy listens (port 0: any free port).
    #[arg(long, default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,
    /// Where the admin API and dashboard listen (port 0: any free port).
    #[arg(long, default_value = "127.0.0.1:9901")]
    pub admin: SocketAddr,
    /// Stop after this long (`30s`, `2m`); without it the demo serves until Ctrl-C. The exit
    /// status is 0 only if the faulty canary was rolled back.
    #[arg(long, value_parser = humantime::parse_duration)]
    pub duration: Option<Duration>,
    /// Requests per second sent by the built-in load generator.
    #[arg(long, default_value_t = 200, value_parser = clap::value_parser!(u32).range(20..=20_000))]
    pub rate: u32,
    /// One JSON object per line (events and once-a-second traffic) instead of text.
    #[arg(long)]
    pub json: bool,
}

/// Runs the demo; prints `sluice demo: ...` and fails on a start-up error.
pub fn run(args: DemoArgs) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("sluice demo: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(demo(args)) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("sluice demo: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// One upstream: answers `hello from NAME`, after a millisecond or two; a faulty one answers a
/// share of requests with 500 and is slower.
struct Upstream {
    addr: SocketAddr,
    faulty: Arc<AtomicBool>,
}

impl Upstream {
    async fn start(name: &'static str) -> anyhow::Result<Upstream> {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .with_context(|| format!("cannot start the {name} upstream"))?;
        let addr = listener.local_addr()?;
        let faulty = Arc::new(AtomicBool::new(false));
        let is_faulty = Arc::clone(&faulty);
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let _ = stream.set_nodelay(true);
                let faulty = Arc::clone(&is_faulty);
                tokio::spawn(async move {
                    let service = service_fn(move |_: Request<Incoming>| {
                        let faulty = faulty.load(Ordering::Relaxed);
                        async move {
                            let mut delay = 1 + fastrand::u64(0..3);
                            let mut status = StatusCode::OK;
                            if faulty {
                                delay += 30 + fastrand::u64(0..20);
                                if fastrand::u64(0..100) < FAULTY_ERROR_PERCENT {
                                    status = StatusCode::INTERNAL_SERVER_ERROR;
                                }
                            }
                            tokio::time::sleep(Duration::from_millis(delay)).await;
                            let body = match status {
                                StatusCode::OK => format!("hello from {name}\n"),
                                _ => format!("{name} failed\n"),
                            };
                            let mut response = Response::new(Full::new(Bytes::from(body)));
                            *response.status_mut() = status;
                            Ok::<_, Infallible>(response)
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Ok(Upstream { addr, faulty })
    }
}

/// The demo's configuration: blue serves, canary is rolled out, green gets copies.
fn config(blue: SocketAddr, canary: SocketAddr, green: SocketAddr, listen: SocketAddr, admin: SocketAddr) -> String {
    format!(
        "listeners: [{{ name: demo, address: \"{listen}\" }}]
admin: {{ address: \"{admin}\" }}
services:
  - name: {SERVICE}
    expose_version: true
    versions:
      blue: {{ endpoints: [\"{blue}\"] }}
      canary: {{ endpoints: [\"{canary}\"] }}
      green: {{ endpoints: [\"{green}\"] }}
    routing:
      weights: {{ blue: 100 }}
    mirror:
      - {{ version: green, percent: 20, compare: status }}
    rollout:
      baseline: blue
      canary: canary
      steps:
        - {{ weight: 10, hold: 3s }}
        - {{ weight: 25, hold: 3s }}
        - {{ weight: 50, hold: 5s }}
        - {{ weight: 100 }}
      guardrails:
        window: 5s
        min_requests: 20
        max_error_rate: 0.02
      on_breach: rollback
"
    )
}

/// Sends `rate` requests per second to `url` from a few keep-alive clients, until dropped.
fn load(url: String, rate: u32, sent: Arc<AtomicU64>) {
    let client: Client<_, Empty<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    let clients = rate.div_ceil(25).clamp(1, 64);
    let period = Duration::from_secs_f64(f64::from(clients) / f64::from(rate));
    for i in 0..clients {
        let (client, url, sent) = (client.clone(), url.clone(), Arc::clone(&sent));
        tokio::spawn(async move {
            // Spread the clients over the period rather than firing together.
            tokio::time::sleep(period.mul_f64(f64::from(i) / f64::from(clients))).await;
            let mut ticker = tokio::time::interval(period);
            ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let Ok(uri) = url.parse::<http::Uri>() else { return };
            loop {
                ticker.tick().await;
                let request = Request::get(uri.clone())
                    .header("x-user-id", fastrand::u32(..).to_string())
                    .body(Empty::new());
                let Ok(request) = request else { return };
                if let Ok(response) = client.request(request).await {
                    let _ = response.into_body().collect().await;
                    sent.fetch_add(1, Ordering::Relaxed);
                }
            }
        });
    }
}

/// Where the story is, for what is printed next.
#[derive(Debug, Default)]
struct Story {
    state: String,
    step: u64,
    weight: u64,
    faulty_at: Option<Instant>,
    rolled_back: bool,
    finished: bool,
}

async fn demo(args: DemoArgs) -> anyhow::Result<bool> {
    let out = Output {
        json: args.json,
        start: Instant::now(),
    };
    let (blue, canary, green) = (
        Upstream::start("blue").await?,
        Upstream::start("canary").await?,
        Upstream::start("green").await?,
    );
    let listener = TcpListener::bind(args.listen).await.with_context(|| {
        format!(
            "cannot listen on {} (in use? pick another with --listen 127.0.0.1:PORT)",
            args.listen
        )
    })?;
    let admin_listener = TcpListener::bind(args.admin).await.with_context(|| {
        format!(
            "cannot listen on {} (in use? pick another with --admin 127.0.0.1:PORT)",
            args.admin
        )
    })?;
    let (listen, admin) = (listener.local_addr()?, admin_listener.local_addr()?);
    let text = config(blue.addr, canary.addr, green.addr, listen, admin);
    let parsed = crate::config::parse(&text).map_err(|e| anyhow::anyhow!("the demo's configuration: {e}"))?;
    let control = Arc::new(Control::start(parsed, Some(text), None).context("cannot start the control plane")?);
    control.start_health_checks();
    control.start_rollouts();
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let api = Arc::new(Admin::new(Arc::clone(&control), None));
    let mut admin_stopped = stopped.clone();
    let admin_task = tokio::spawn(crate::admin::serve(admin_listener, api, async move {
        let _ = admin_stopped.wait_for(|s| *s).await;
    }));
    let mut proxy_stopped = stopped.clone();
    let proxy_task = tokio::spawn(crate::run(vec![listener], Arc::clone(control.routing()), async move {
        let _ = proxy_stopped.wait_for(|s| *s).await;
    }));

    out.event(
        "started",
        format!(
            "proxy on http://{listen}/  ·  dashboard and admin API on http://{admin}/\n          \
             upstreams: blue (serving), canary (the new version), green (gets 20% as shadow copies)\n          \
             load: {} requests/s; try `curl -i http://{listen}/` or `sluice ctl --admin http://{admin} watch {SERVICE}`",
            args.rate
        ),
        json!({ "proxy": format!("http://{listen}/"), "admin": format!("http://{admin}/"), "rate": args.rate }),
    );
    let sent = Arc::new(AtomicU64::new(0));
    load(format!("http://{listen}/"), args.rate, Arc::clone(&sent));
    control
        .rollout_command(SERVICE, RolloutCommand::Start, "demo".to_owned())
        .map_err(|e| anyhow::anyhow!("cannot start the rollout: {e}"))?;

    let deadline = args.duration.map(|d| tokio::time::Instant::now() + d);
    let ctrl_c = interrupted()?;
    tokio::pin!(ctrl_c);
    let mut story = Story::default();
    let mut ticker = tokio::time::interval(Duration::from_millis(50));
    let mut next_traffic = Instant::now() + Duration::from_secs(1);
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            _ = &mut ctrl_c => break,
            () = sleep_until(deadline) => break,
        }
        let table = control.routing().load();
        let Some(service) = table.service(SERVICE) else { break };
        let rollout = control.rollout_view(service).unwrap_or(Value::Null);
        follow(&out, &mut story, &rollout, &canary);
        if Instant::now() >= next_traffic {
            // Once a second while the story runs, every ten seconds after.
            let every = if story.finished { 10 } else { 1 };
            next_traffic = Instant::now() + Duration::from_secs(every);
            out.traffic(service, sent.load(Ordering::Relaxed));
        }
    }
    let _ = stop.send(true);
    let _ = tokio::time::timeout(Duration::from_secs(5), async {
        let _ = proxy_task.await;
        let _ = admin_task.await;
    })
    .await;
    if story.rolled_back {
        out.event(
            "stopped",
            "stopped. The faulty canary was rolled back by the guardrails.".to_owned(),
            json!({ "rolled_back": true }),
        );
    } else {
        out.event(
            "stopped",
            format!("stopped before the canary was rolled back (rollout: {})", story.state),
            json!({ "rolled_back": false, "state": story.state }),
        );
    }
    Ok(story.rolled_back)
}

/// Completes on Ctrl-C (SIGINT), or SIGTERM on Unix.
fn interrupted() -> anyhow::Result<impl std::future::Future<Output = ()>> {
    #[cfg(unix)]
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("cannot listen for SIGTERM")?;
    Ok(async move {
        #[cfg(unix)]
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = terminate.recv() => {}
        }
        #[cfg(not(unix))]
        let _ = tokio::signal::ctrl_c().await;
    })
}

async fn sleep_until(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}

/// Prints what changed in the rollout since the last look, and turns the canary faulty when
/// the rollout reaches its third step.
fn follow(out: &Output, story: &mut Story, rollout: &Value, canary: &Upstream) {
    let state = rollout["state"].as_str().unwrap_or("idle").to_owned();
    let step = rollout["step"].as_u64().unwrap_or(0);
    let weight = rollout["canary_weight"].as_u64().unwrap_or(0);
    let steps = rollout["steps"].as_u64().unwrap_or(0);
    if state == "progressing" && (step, weight) != (story.step, story.weight) {
        let kind = rollout["step_kind"].as_str().unwrap_or("");
        out.event(
            "step",
            format!("rollout step {step}/{steps} ({kind}): the canary gets {weight}% of requests"),
            json!({ "step": step, "steps": steps, "canary_weight": weight }),
        );
        if step == FAULTY_AT_STEP && story.faulty_at.is_none() {
            canary.faulty.store(true, Ordering::Relaxed);
            story.faulty_at = Some(Instant::now());
            out.event(
                "canary_faulty",
                format!(
                    "the canary turns faulty: {FAULTY_ERROR_PERCENT}% of its answers are now 500s, and it is 30-50 ms slower"
                ),
                json!({ "error_percent": FAULTY_ERROR_PERCENT }),
            );
        }
    }
    if state != story.state && !story.finished {
        let reason = rollout["reason"].as_str().unwrap_or("").to_owned();
        match state.as_str() {
            "rolled_back" => {
                let after = story.faulty_at.map(|t| t.elapsed());
                if let Some(message) = rollout["breach"]["message"].as_str() {
                    out.event(
                        "breach",
                        format!("guardrail breach: {message}"),
                        json!({ "breach": rollout["breach"] }),
                    );
                }
                let after_text = after.map_or(String::new(), |d| {
                    format!(", {:.1} s after the canary turned faulty", d.as_secs_f64())
                });
                out.event(
                    "rolled_back",
                    format!("ROLLED BACK automatically: the canary is at 0% and blue serves everything{after_text}"),
                    json!({ "after_faulty_ms": after.map(|d| d.as_millis() as u64), "reason": reason }),
                );
                story.rolled_back = true;
                story.finished = true;
                out.event(
                    "serving",
                    "still serving: open the dashboard, or press Ctrl-C to stop".to_owned(),
                    json!({}),
                );
            }
            "promoted" | "aborted" | "paused" => {
                out.event(
                    &state,
                    format!("rollout {state}: {reason}"),
                    json!({ "reason": reason }),
                );
                story.finished = state != "paused";
            }
            _ => {}
        }
    }
    story.state = state;
    story.step = step;
    story.weight = weight;
}

/// Prints events and traffic, as text or as JSON lines.
struct Output {
    json: bool,
    start: Instant,
}

impl Output {
    fn event(&self, event: &str, text: String, mut fields: Value) {
        let t = self.start.elapsed().as_secs_f64();
        if self.json {
            if let Some(object) = fields.as_object_mut() {
                object.insert("t".into(), json!((t * 1000.0).round() / 1000.0));
                object.insert("event".into(), json!(event));
            }
            println!("{fields}");
        } else {
            println!("[{t:6.1}s] {text}");
        }
    }

    /// Per version over the last two seconds: requests/s, error rate and p99.
    fn traffic(&self, service: &crate::table::Service, sent: u64) {
        let span = Duration::from_secs(2);
        let mut rows = Vec::new();
        let mut text = Vec::new();
        for version in &service.versions {
            let w = version.metrics.window(span);
            let weight = service
                .weights()
                .find(|(name, _)| *name == &*version.name)
                .map_or(0, |(_, w)| w);
            if weight == 0 && w.requests == 0 {
                // Green takes no traffic of its own: it shows as a shadow below.
                continue;
            }
            rows.push(json!({ "version": &*version.name, "role": "primary", "weight": weight, "rps": w.rps, "error_rate": w.error_rate, "p99_ms": w.p99_ms }));
            text.push(format!(
                "{} {weight}%: {:.0} rps, {:.1}% errors, p99 {:.1} ms",
                version.name,
                w.rps,
                w.error_rate * 100.0,
                w.p99_ms
            ));
        }
        for mirror in &service.mirrors {
            let w = mirror.metrics.window(span);
            rows.push(json!({ "version": &*mirror.version, "role": "shadow", "rps": w.rps, "error_rate": w.error_rate, "p99_ms": w.p99_ms }));
            text.push(format!("{} (shadow): {:.0} copies/s", mirror.version, w.rps));
        }
        self.event(
            "traffic",
            text.join("  |  "),
            json!({ "versions": rows, "requests_sent": sent }),
        );
    }
}
