//! Time to roll back a broken canary, on real sockets, over [`RUNS`] runs. The promise: "Rollback
//! is one table swap within 1 s of the breach being measurable."
//!
//! Each run starts everything afresh (runtime, upstreams, control plane, proxy, metrics), so the
//! guardrail windows start empty:
//! - upstreams `blue` (200 "blue") and `canary` (500 "boom"); the service `app` sends 100% to
//!   blue and has a rollout plan of one step, canary 10% held 60 s, judged by
//!   `min_requests: 20, max_error_rate: 0.01` (rollback on breach);
//! - [`LOOPS`] client loops (keep-alive, [`PACE`] between requests) record for every answer when
//!   it was sent and received, which version served it (`x-sluice-version`) and its status;
//! - the rollout is started with a `start` command, and a thread polls the published table
//!   every [`POLL`] until the canary's configured weight, 10 since the start, is 0 again.
//!
//! The guardrails are judged every `EVALUATION_INTERVAL` (200 ms), on ticks counted from
//! `start_rollouts`. Started right after it, every run would see its breach land at the same
//! point between two judgements (the traffic takes about the same time to reach 20 canary
//! answers), so run `i` starts the rollout `(i − 1) / RUNS` of an interval after it: the runs
//! sample the whole interval, as breaches at random times in production would.
//!
//! Measured per run:
//! - T0, the breach becomes measurable: the client receives the 20th canary answer. All canary
//!   answers are 500, so from then on the 95% Wilson lower bound of the canary's error rate
//!   (0.88: n / (n + z²) with n = 20) is far above 1%.
//! - T1, the rollback: the poller first sees the table with the canary at weight 0.
//! - T2: when the last request the canary answered was sent (before T1, as it was routed by a
//!   table from before the swap).
//!
//! Printed: each run's T1 − T0, T2 − T1 and the canary answers received after T1, then min /
//! median / p95 / max of T1 − T0 (nearest rank) and the most canary answers after a swap.
//!
//! With judgements 200 ms apart, T1 − T0 is expected anywhere from 0 to about 200 ms. T0 is
//! the client's clock: the proxy counts an answer in the canary's window when it has sent the
//! body, a little before the client has read it, so T0 is late by that delivery time (well
//! under a millisecond on loopback) and T1 − T0 could come out slightly negative. T1 is late by
//! up to one poll interval plus the poller's wake-up delay.
//!
//! Run with `cargo bench --bench rollback` (`cargo test` runs it twice, as a smoke test). Every wait is bounded by [`DEADLINE`]; a run that
//! exceeds it panics and says what it was waiting for.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Empty, Full};
use hyper::service::service_fn;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use sluice::control::{Control, RolloutCommand};
use sluice::rollout::EVALUATION_INTERVAL;
use sluice::table::Cause;
use sluice::RoutingTable;
use tokio::net::TcpListener;
use tokio::sync::oneshot;

/// Runs measured by `cargo bench`.
const RUNS: usize = 20;
/// Runs under `cargo test --all-targets`, which runs benches without `--bench`: a smoke test.
const SMOKE_RUNS: usize = 2;
/// Concurrent client loops.
const LOOPS: usize = 4;
/// Pause between one loop's requests.
const PACE: Duration = Duration::from_millis(1);
/// How often the published table is read.
const POLL: Duration = Duration::from_millis(1);
/// The longest any wait may take before the run fails.
const DEADLINE: Duration = Duration::from_secs(20);
/// Traffic kept flowing after the swap, so late canary answers are counted.
const TAIL: Duration = Duration::from_millis(100);
/// The guardrails' `min_requests`: the canary answer that makes the breach measurable.
const MIN_REQUESTS: usize = 20;
/// The canary's weight at the plan's only step.
const STEP_WEIGHT: u64 = 10;

/// The config: blue 100%, and a one-step rollout to the canary, judged on 20 requests.
fn config(blue: SocketAddr, canary: SocketAddr) -> String {
    format!(
        "listeners: [{{ name: t, address: 127.0.0.1:0 }}]
services:
  - name: app
    expose_version: true
    versions:
      blue: {{ endpoints: [{blue}] }}
      canary: {{ endpoints: [{canary}] }}
    routing: {{ weights: {{ blue: 100 }} }}
    rollout:
      baseline: blue
      canary: canary
      steps:
        - {{ weight: {STEP_WEIGHT}, hold: 60s }}
      guardrails: {{ min_requests: {MIN_REQUESTS}, max_error_rate: 0.01 }}
"
    )
}

/// Awaits `future`, panicking after [`DEADLINE`] with what was awaited.
async fn within<T>(what: &str, future: impl Future<Output = T>) -> T {
    tokio::time::timeout(DEADLINE, future)
        .await
        .unwrap_or_else(|_| panic!("timed out after {DEADLINE:?}: {what}"))
}

/// An HTTP/1.1 upstream answering every request with `status` and `body`, until dropped.
struct Upstream {
    addr: SocketAddr,
    _stop: oneshot::Sender<()>,
}

impl Upstream {
    async fn start(status: StatusCode, body: &'static str) -> Upstream {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind upstream");
        let addr = listener.local_addr().expect("upstream address");
        let (stop, mut stopped) = oneshot::channel::<()>();
        tokio::spawn(async move {
            loop {
                let (stream, _) = tokio::select! {
                    accepted = listener.accept() => accepted.expect("accept"),
                    _ = &mut stopped => return,
                };
                let _ = stream.set_nodelay(true);
                let service = service_fn(move |_request| async move {
                    let mut response = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
                    *response.status_mut() = status;
                    Ok::<_, Infallible>(response)
                });
                tokio::spawn(async move {
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Upstream { addr, _stop: stop }
    }
}

/// Which version served an answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Served {
    Blue,
    Canary,
}

/// One answer, as a client loop saw it.
#[derive(Debug, Clone, Copy)]
struct Answer {
    /// Just before the request was handed to the client.
    sent: Instant,
    /// When the whole answer, body included, was read.
    received: Instant,
    served: Served,
    status: StatusCode,
}

/// The client loops: each sends `GET /` on its own keep-alive connection, records the answer,
/// pauses [`PACE`], and again until stopped.
struct Load {
    stop: Arc<AtomicBool>,
    loops: Vec<tokio::task::JoinHandle<Vec<Answer>>>,
}

impl Load {
    fn start(proxy: SocketAddr) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let url: http::Uri = format!("http://{proxy}/").parse().expect("proxy URL");
        let loops = (0..LOOPS)
            .map(|_| {
                let (stop, url) = (Arc::clone(&stop), url.clone());
                tokio::spawn(async move {
                    let client = Client::builder(TokioExecutor::new()).build_http::<Empty<Bytes>>();
                    let mut answers = Vec::with_capacity(4096);
                    while !stop.load(Ordering::Relaxed) {
                        let request = Request::get(url.clone()).body(Empty::new()).expect("request");
                        let sent = Instant::now();
                        let response = within("an answer from the proxy", client.request(request))
                            .await
                            .expect("request through the proxy failed");
                        let status = response.status();
                        let served = match response
                            .headers()
                            .get("x-sluice-version")
                            .map(http::HeaderValue::as_bytes)
                        {
                            Some(b"blue") => Served::Blue,
                            Some(b"canary") => Served::Canary,
                            other => panic!("answer {status} from an unexpected version: {other:?}"),
                        };
                        within("an answer's body", response.into_body().collect())
                            .await
                            .expect("answer body failed");
                        answers.push(Answer {
                            sent,
                            received: Instant::now(),
                            served,
                            status,
                        });
                        tokio::time::sleep(PACE).await;
                    }
                    answers
                })
            })
            .collect();
        Load { stop, loops }
    }

    /// Stops the loops; returns every answer, in the order received.
    async fn stop(self) -> Vec<Answer> {
        self.stop.store(true, Ordering::Relaxed);
        let mut all = Vec::new();
        for task in self.loops {
            all.extend(within("a client loop stops", task).await.expect("client loop"));
        }
        all.sort_by_key(|a| a.received);
        all
    }
}

/// The canary's configured weight in `table`.
fn canary_weight(table: &RoutingTable) -> u64 {
    let service = table.service("app").expect("service app");
    service
        .weights()
        .find(|(version, _)| *version == "canary")
        .map(|(_, weight)| weight)
        .expect("version canary")
}

/// When the poller saw the step's weight published, when it saw the canary back at 0, and why
/// that table was published.
struct Swaps {
    raised: Instant,
    rolled_back: Instant,
    cause: Cause,
}

/// Polls `control`'s table every [`POLL`] on a thread of its own (off the runtime the proxy and
/// the clients share) until the canary's weight goes to [`STEP_WEIGHT`] and then back to 0.
fn watch(control: &Arc<Control>) -> std::thread::JoinHandle<Swaps> {
    let routing = Arc::clone(control.routing());
    std::thread::spawn(move || {
        let deadline = Instant::now() + DEADLINE;
        let mut raised = None;
        loop {
            let table = routing.load();
            let weight = canary_weight(&table);
            let now = Instant::now();
            match (raised, weight) {
                (None, STEP_WEIGHT) => raised = Some(now),
                (Some(raised), 0) => {
                    return Swaps {
                        raised,
                        rolled_back: now,
                        cause: table.cause,
                    }
                }
                _ => {}
            }
            assert!(
                now < deadline,
                "timed out after {DEADLINE:?}: the canary's weight is {weight}, waiting for {}",
                if raised.is_none() {
                    "the step's weight"
                } else {
                    "the rollback to 0"
                }
            );
            std::thread::sleep(POLL);
        }
    })
}

/// What one run measured.
#[derive(Debug)]
struct Run {
    /// Start command to T0.
    start_to_breach: Duration,
    /// T1 − T0, ms.
    rollback_ms: f64,
    /// T2 − T1, ms (negative: the last canary request was sent before the swap was seen).
    last_canary_sent_ms: f64,
    /// Canary answers in all.
    canary: usize,
    /// Canary answers received after T1.
    canary_after_swap: usize,
    /// Every answer.
    answers: usize,
}

/// Signed `a − b` in milliseconds.
fn ms_between(a: Instant, b: Instant) -> f64 {
    if a >= b {
        (a - b).as_secs_f64() * 1000.0
    } else {
        -((b - a).as_secs_f64() * 1000.0)
    }
}

/// One run, from nothing to everything stopped, with the rollout started `phase` after the
/// reconciliation loop.
async fn run_once(phase: Duration) -> Run {
    let blue = Upstream::start(StatusCode::OK, "blue").await;
    let canary = Upstream::start(StatusCode::INTERNAL_SERVER_ERROR, "boom").await;
    let text = config(blue.addr, canary.addr);
    let config = sluice::config::parse(&text).unwrap_or_else(|e| panic!("bench config invalid:\n{e}\n---\n{text}"));
    let listener = TcpListener::bind(config.listeners[0].address)
        .await
        .expect("bind proxy");
    let proxy = listener.local_addr().expect("proxy address");
    let control = Arc::new(Control::start(config, Some(text), None).expect("control plane"));
    let (stop, stopped) = oneshot::channel::<()>();
    let server = tokio::spawn(sluice::run(vec![listener], Arc::clone(control.routing()), async move {
        let _ = stopped.await;
    }));
    control.start_rollouts();

    let load = Load::start(proxy);
    let watcher = watch(&control);
    // The reconciliation loop ticks from `start_rollouts`; starting the rollout at `phase`
    // into its interval spreads the runs over where the breach falls between two judgements.
    tokio::time::sleep(phase).await;
    let started = Instant::now();
    control
        .rollout_command("app", RolloutCommand::Start, "bench".to_owned())
        .expect("start the rollout");
    // The watcher blocks in its own thread; wait for it without holding up the runtime.
    let swaps = within("the table watcher", tokio::task::spawn_blocking(move || watcher.join()))
        .await
        .expect("join the watcher")
        .unwrap_or_else(|_| panic!("the table watcher failed (see its panic above)"));
    tokio::time::sleep(TAIL).await;
    let answers = load.stop().await;

    // Only the guardrails publish with this cause, and only max_error_rate is configured.
    assert_eq!(
        swaps.cause,
        Cause::Guardrail,
        "the canary went back to 0 for another reason"
    );

    let _ = stop.send(());
    within("the proxy shuts down", server).await.expect("proxy task");
    drop((blue, canary));

    let canaries: Vec<&Answer> = answers.iter().filter(|a| a.served == Served::Canary).collect();
    for a in &answers {
        let expected = match a.served {
            Served::Blue => StatusCode::OK,
            Served::Canary => StatusCode::INTERNAL_SERVER_ERROR,
        };
        assert_eq!(a.status, expected, "{:?} answered {}", a.served, a.status);
    }
    let breach = canaries.get(MIN_REQUESTS - 1).unwrap_or_else(|| {
        panic!(
            "only {} canary answers: the rollback came before the breach was measurable",
            canaries.len()
        )
    });
    let last_sent = canaries.iter().map(|a| a.sent).max().expect("canary answers");
    assert!(
        swaps.raised <= breach.received,
        "canary answer {MIN_REQUESTS} came before the step's weight was seen"
    );
    Run {
        start_to_breach: breach.received.saturating_duration_since(started),
        rollback_ms: ms_between(swaps.rolled_back, breach.received),
        last_canary_sent_ms: ms_between(last_sent, swaps.rolled_back),
        canary: canaries.len(),
        canary_after_swap: canaries.iter().filter(|a| a.received > swaps.rolled_back).count(),
        answers: answers.len(),
    }
}

/// The nearest-rank `p`-th percentile of `sorted` (ascending, not empty).
fn percentile(sorted: &[f64], p: usize) -> f64 {
    let rank = (p * sorted.len()).div_ceil(100);
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn main() {
    let runs_wanted = if std::env::args().any(|a| a == "--bench") {
        RUNS
    } else {
        SMOKE_RUNS
    };
    println!(
        "rollback of a broken canary: {runs_wanted} runs, {LOOPS} client loops pausing {PACE:?}, table polled every {POLL:?}"
    );
    println!(
        "{:>3}  {:>8}  {:>12}  {:>11}  {:>11}  {:>6}  {:>12}  {:>7}",
        "run", "phase ms", "start→T0 ms", "T1−T0 ms", "T2−T1 ms", "canary", "after swap", "answers"
    );
    let mut runs = Vec::with_capacity(runs_wanted);
    for i in 1..=runs_wanted {
        // A runtime per run: its drop ends every task the run left behind (tickers, sweepers,
        // the reconciliation loop, idle connections).
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .expect("runtime");
        let phase = EVALUATION_INTERVAL * (i - 1) as u32 / runs_wanted as u32;
        let run = runtime.block_on(run_once(phase));
        runtime.shutdown_timeout(DEADLINE);
        println!(
            "{i:>3}  {:>8}  {:>12.1}  {:>11.1}  {:>11.1}  {:>6}  {:>12}  {:>7}",
            phase.as_millis(),
            run.start_to_breach.as_secs_f64() * 1000.0,
            run.rollback_ms,
            run.last_canary_sent_ms,
            run.canary,
            run.canary_after_swap,
            run.answers
        );
        runs.push(run);
    }

    let mut rollback: Vec<f64> = runs.iter().map(|r| r.rollback_ms).collect();
    rollback.sort_by(f64::total_cmp);
    println!();
    println!(
        "T1−T0 (breach measurable → canary at 0 in the table), ms: min {:.1}  median {:.1}  p95 {:.1}  max {:.1}",
        rollback[0],
        percentile(&rollback, 50),
        percentile(&rollback, 95),
        rollback[rollback.len() - 1]
    );
    println!(
        "most canary answers received after the swap: {}",
        runs.iter().map(|r| r.canary_after_swap).max().unwrap_or(0)
    );
    let within_promise = rollback.iter().filter(|ms| **ms <= 1000.0).count();
    println!("within 1 s of the breach being measurable: {within_promise} of {runs_wanted} runs");
}
