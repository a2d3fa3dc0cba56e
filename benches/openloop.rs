//! Open-loop HTTP load at a fixed request rate, for latency percentiles below saturation.
//!
//! Requests are scheduled at fixed intended start times (`start + i / rate`), whatever the server
//! does; each one's latency is measured from its *intended* start to the last byte of its
//! response. A request that had to wait (for a free connection, or because the client fell
//! behind) is charged that wait, so a server stall shows in the percentiles instead of silently
//! lowering the offered load (coordinated omission corrected, as in wrk2 and oha's
//! `--latency-correction`).
//!
//! Pacing: a plain thread sleeps until the next intended start and hands every due request to
//! the client over a channel (tokio's timer has millisecond resolution; at 5000 req/s requests
//! are 200 µs apart). The client is one tokio current-thread runtime: keep-alive connections
//! opened before the clock starts, and one task per request slot (a slot is a connection for
//! HTTP/1.1, a stream of a connection for h2c) taking the next due request from a shared queue.
//! Before the clock starts every slot sends one unrecorded priming request, all at once, so that
//! connections (and the server's upstream pools) are settled. Pin the process to one core. A
//! failed connection is reopened for the slot's next request.
//!
//! Against a running server (what `benches/load/compare.sh` does), configured by environment:
//! - `OPENLOOP_ADDR`: ip:port to connect to (no DNS lookups);
//! - `OPENLOOP_PROTO`: `http1` (default) or `h2c` (HTTP/2 with prior knowledge);
//! - `OPENLOOP_RATE`: requests per second (default 5000);
//! - `OPENLOOP_SECONDS`: measured time (default 10);
//! - `OPENLOOP_WARMUP`: seconds at the same rate before that, not recorded (default 0);
//! - `OPENLOOP_CONNS`: connections (default 64);
//! - `OPENLOOP_STREAMS`: h2c only, requests in flight per connection at most (default 10);
//! - `OPENLOOP_PATH`: request path (default `/`).
//!
//! It prints one line: `requests=N ok=K errors=E sent=T target_rate=R rate=A seconds=S p50_ms=..
//! p90_ms=.. p99_ms=.. p999_ms=.. max_ms=.. lag_p50_us=.. lag_p99_us=.. client_cpu_s=..
//! proto=.. conns=.. streams=..`. `requests` is the number of measured requests scheduled,
//! `ok` those answered 200 (only they are in the latency percentiles), `errors` every failure
//! including the warm-up's (details on stderr), `sent` every request sent (priming and warm-up
//! included; what a mirroring proxy copies), `rate` is `ok` over the time from the start of
//! the measured window to the last measured response (below `target_rate` when the server could
//! not keep up), `lag` is how late requests were handed to the connection (pacing, wake-up and
//! waiting for a free slot; part of every latency: the pacing thread's sleeps end some 50 µs late
//! by Linux's default timer slack, so compare servers by their difference to a direct run rather
//! than by absolute values near 0.1 ms), and `client_cpu_s` is this process's CPU time, to tell whether the
//! client itself was the bottleneck.
//!
//! Without `OPENLOOP_ADDR` (as under `cargo test --all-targets`, which runs benches once without
//! `--bench`) it runs a smoke test instead: half a second of HTTP/1.1 and of h2c against an
//! in-process hyper server, asserting every request succeeded.
//!
//! Every wait is bounded: each request by [`REQUEST_TIMEOUT`], requests still queued after the
//! drain deadline are counted as errors without being sent, and a watchdog thread exits the
//! process with status 3.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use hdrhistogram::Histogram;
use http::{header, HeaderValue, Request, Response, StatusCode, Uri};
use http_body_util::{BodyExt, Empty, Full};
use hyper::client::conn::{http1, http2};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, Mutex};

/// Longest one request may take, from being handed to the connection to its last byte.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// Time given to starting the request slots before the first intended start.
const START_DELAY: Duration = Duration::from_millis(20);
/// Added to the run time for the watchdog: connecting, draining, shutdown.
const WATCHDOG_SLACK: Duration = Duration::from_secs(30);
/// Longest latency the histograms hold, in nanoseconds (larger values are clamped).
const MAX_RECORDED_NS: u64 = 60_000_000_000;
/// Distinct error messages kept for the report.
const MAX_ERROR_KINDS: usize = 16;
/// Linux's USER_HZ: the unit of utime and stime in /proc/PID/stat.
const USER_HZ: f64 = 100.0;
/// Smoke test: rate, measured time and overall limit.
const SMOKE_RATE: f64 = 2000.0;
const SMOKE_SECONDS: f64 = 0.5;
const SMOKE_WARMUP: f64 = 0.1;
const SMOKE_DEADLINE: Duration = Duration::from_secs(20);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Proto {
    Http1,
    H2c,
}

impl Proto {
    fn name(self) -> &'static str {
        match self {
            Proto::Http1 => "http1",
            Proto::H2c => "h2c",
        }
    }
}

#[derive(Clone, Debug)]
struct Config {
    addr: SocketAddr,
    proto: Proto,
    rate: f64,
    seconds: f64,
    warmup: f64,
    conns: usize,
    /// h2c: request slots per connection; HTTP/1.1: always 1.
    streams: usize,
    path: String,
}

impl Config {
    fn from_env(addr: &str) -> Result<Config, String> {
        let addr: SocketAddr = addr
            .parse()
            .map_err(|_| format!("OPENLOOP_ADDR={addr:?} is not ip:port"))?;
        let proto = match std::env::var("OPENLOOP_PROTO").as_deref() {
            Err(_) | Ok("http1") => Proto::Http1,
            Ok("h2c") => Proto::H2c,
            Ok(other) => return Err(format!("OPENLOOP_PROTO={other:?}: expected http1 or h2c")),
        };
        let config = Config {
            addr,
            proto,
            rate: env_or("OPENLOOP_RATE", 5000.0)?,
            seconds: env_or("OPENLOOP_SECONDS", 10.0)?,
            warmup: env_or("OPENLOOP_WARMUP", 0.0)?,
            conns: env_or("OPENLOOP_CONNS", 64)?,
            streams: match proto {
                Proto::Http1 => 1,
                Proto::H2c => env_or("OPENLOOP_STREAMS", 10)?,
            },
            path: std::env::var("OPENLOOP_PATH").unwrap_or_else(|_| "/".to_owned()),
        };
        config.check()?;
        Ok(config)
    }

    fn check(&self) -> Result<(), String> {
        if !(self.rate.is_finite() && self.rate > 0.0) {
            return Err(format!("rate must be positive (got {})", self.rate));
        }
        if !(self.seconds.is_finite() && self.seconds > 0.0) {
            return Err(format!("seconds must be positive (got {})", self.seconds));
        }
        if !(self.warmup.is_finite() && self.warmup >= 0.0) {
            return Err(format!("warm-up must not be negative (got {})", self.warmup));
        }
        if self.conns == 0 || self.streams == 0 {
            return Err("connections and streams must be at least 1".to_owned());
        }
        if !self.path.starts_with('/') {
            return Err(format!("path must start with / (got {:?})", self.path));
        }
        Ok(())
    }
}

/// What every request looks like; built once.
struct Target {
    config: Config,
    /// Origin-form for HTTP/1.1 (with a Host header), absolute for h2c (`:scheme`, `:authority`).
    uri: Uri,
    host: HeaderValue,
}

impl Target {
    fn new(config: Config) -> Result<Target, String> {
        let authority = config.addr.to_string();
        let uri = match config.proto {
            Proto::Http1 => config.path.parse(),
            Proto::H2c => format!("http://{authority}{}", config.path).parse(),
        }
        .map_err(|e| format!("bad request URI: {e}"))?;
        let host = HeaderValue::from_str(&authority).map_err(|e| format!("bad host: {e}"))?;
        Ok(Target { config, uri, host })
    }

    fn request(&self) -> Request<Empty<Bytes>> {
        let mut request = Request::new(Empty::new());
        *request.uri_mut() = self.uri.clone();
        if self.config.proto == Proto::Http1 {
            request.headers_mut().insert(header::HOST, self.host.clone());
        }
        request
    }
}

/// One request to send: when it should have started, and whether it is measured.
struct Ticket {
    intended: Instant,
    record: bool,
}

enum Sender {
    H1(http1::SendRequest<Empty<Bytes>>),
    H2(http2::SendRequest<Empty<Bytes>>),
}

async fn connect(target: &Target) -> Result<Sender, String> {
    let stream = TcpStream::connect(target.config.addr)
        .await
        .map_err(|e| format!("connect: {e}"))?;
    stream.set_nodelay(true).map_err(|e| format!("TCP_NODELAY: {e}"))?;
    let io = TokioIo::new(stream);
    match target.config.proto {
        Proto::Http1 => {
            let (sender, connection) = http1::handshake(io)
                .await
                .map_err(|e| format!("HTTP/1.1 handshake: {e}"))?;
            tokio::spawn(async move {
                let _ = connection.await;
            });
            Ok(Sender::H1(sender))
        }
        Proto::H2c => {
            let (sender, connection) = http2::handshake(TokioExecutor::new(), io)
                .await
                .map_err(|e| format!("h2c handshake: {e}"))?;
            tokio::spawn(async move {
                let _ = connection.await;
            });
            Ok(Sender::H2(sender))
        }
    }
}

impl Sender {
    fn share(&self) -> Option<Sender> {
        match self {
            Sender::H1(_) => None,
            Sender::H2(sender) => Some(Sender::H2(sender.clone())),
        }
    }

    /// Sends one request and reads the whole response; `Ok` only for a 200.
    async fn exchange(&mut self, request: Request<Empty<Bytes>>) -> Result<(), String> {
        let response = match self {
            Sender::H1(sender) => {
                sender.ready().await.map_err(|e| format!("connection: {e}"))?;
                sender.send_request(request).await
            }
            Sender::H2(sender) => {
                sender.ready().await.map_err(|e| format!("connection: {e}"))?;
                sender.send_request(request).await
            }
        }
        .map_err(|e| format!("request: {e}"))?;
        let status = response.status();
        response
            .into_body()
            .collect()
            .await
            .map_err(|e| format!("response body: {e}"))?;
        if status == StatusCode::OK {
            Ok(())
        } else {
            Err(format!("status {status}"))
        }
    }
}

fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, MAX_RECORDED_NS, 3).expect("histogram bounds")
}

fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos())
        .unwrap_or(u64::MAX)
        .clamp(1, MAX_RECORDED_NS)
}

struct Stats {
    latency: Histogram<u64>,
    lag: Histogram<u64>,
    ok: u64,
    errors: u64,
    error_kinds: BTreeMap<String, u64>,
    last_done: Option<Instant>,
    /// Requests sent (priming and warm-up included), whatever came of them.
    sent: u64,
}

impl Stats {
    fn new() -> Stats {
        Stats {
            latency: histogram(),
            lag: histogram(),
            ok: 0,
            errors: 0,
            error_kinds: BTreeMap::new(),
            last_done: None,
            sent: 0,
        }
    }

    fn error(&mut self, message: String) {
        self.errors += 1;
        if self.error_kinds.len() < MAX_ERROR_KINDS || self.error_kinds.contains_key(&message) {
            *self.error_kinds.entry(message).or_default() += 1;
        }
    }
}

impl Default for Stats {
    fn default() -> Stats {
        Stats::new()
    }
}

type Queue = Arc<Mutex<mpsc::UnboundedReceiver<Ticket>>>;

/// The results of all slots: one pair of histograms (some 200 KB each: one per slot would take
/// hundreds of MB with h2c's many slots), behind a lock that is never contended (one thread).
type Shared = Arc<std::sync::Mutex<Stats>>;

fn record(stats: &Shared, f: impl FnOnce(&mut Stats)) {
    f(&mut stats.lock().unwrap_or_else(std::sync::PoisonError::into_inner));
}

/// One request slot: takes the next due request, sends it on its connection, records it.
async fn slot(target: Arc<Target>, mut sender: Option<Sender>, queue: Queue, deadline: Instant, stats: Shared) {
    loop {
        // the lock is fair, so idle slots take requests in turn
        let ticket = queue.lock().await.recv().await;
        let Some(ticket) = ticket else { break };
        let started = Instant::now();
        if started > deadline {
            record(&stats, |s| {
                s.error("not sent: queued past the drain deadline (server too slow)".to_owned())
            });
            continue;
        }
        if sender.is_none() {
            match connect(&target).await {
                Ok(fresh) => sender = Some(fresh),
                Err(e) => {
                    record(&stats, |s| s.error(e));
                    continue;
                }
            }
        }
        let result = match sender.as_mut() {
            Some(sender) => tokio::time::timeout(REQUEST_TIMEOUT, sender.exchange(target.request()))
                .await
                .unwrap_or_else(|_| Err(format!("timed out after {REQUEST_TIMEOUT:?}"))),
            None => Err("no connection".to_owned()),
        };
        let done = Instant::now();
        match result {
            Ok(()) => record(&stats, |s| {
                s.sent += 1;
                if ticket.record {
                    s.latency.saturating_record(nanos(done - ticket.intended));
                    s.lag
                        .saturating_record(nanos(started.saturating_duration_since(ticket.intended)));
                    s.ok += 1;
                    s.last_done = Some(done);
                }
            }),
            Err(e) => {
                record(&stats, |s| {
                    s.sent += 1;
                    s.error(e)
                });
                // reopen for the next request (h2c: this slot then has a connection of its own)
                sender = None;
            }
        }
    }
}

/// Hands out every request at its intended start: `start + i / rate`, the first `warm` ones
/// unrecorded. Runs on its own thread, so that sleeps are not rounded to tokio's millisecond.
fn pace(tx: mpsc::UnboundedSender<Ticket>, start: Instant, rate: f64, warm: u64, total: u64) {
    let at = |i: u64| start + Duration::from_secs_f64(i as f64 / rate);
    let mut i = 0;
    while i < total {
        let next = at(i);
        let now = Instant::now();
        if next > now {
            std::thread::sleep(next - now);
        }
        let now = Instant::now();
        while i < total && at(i) <= now {
            let ticket = Ticket {
                intended: at(i),
                record: i >= warm,
            };
            if tx.send(ticket).is_err() {
                return;
            }
            i += 1;
        }
    }
}

struct Report {
    config: Config,
    requests: u64,
    stats: Stats,
    /// From the start of the measured window to the last measured response.
    span: Duration,
    client_cpu_s: Option<f64>,
}

impl Report {
    fn rate(&self) -> f64 {
        let seconds = self.span.as_secs_f64().max(self.config.seconds);
        self.stats.ok as f64 / seconds
    }

    fn line(&self) -> String {
        let ms = |q: f64| self.stats.latency.value_at_quantile(q) as f64 / 1e6;
        let us = |q: f64| self.stats.lag.value_at_quantile(q) as f64 / 1e3;
        let c = &self.config;
        format!(
            "requests={} ok={} errors={} sent={} target_rate={} rate={:.1} seconds={} p50_ms={:.3} \
             p90_ms={:.3} p99_ms={:.3} p999_ms={:.3} max_ms={:.3} lag_p50_us={:.1} \
             lag_p99_us={:.1} client_cpu_s={} proto={} conns={} streams={}",
            self.requests,
            self.stats.ok,
            self.stats.errors,
            self.stats.sent,
            c.rate,
            self.rate(),
            c.seconds,
            ms(0.5),
            ms(0.9),
            ms(0.99),
            ms(0.999),
            self.stats.latency.max() as f64 / 1e6,
            us(0.5),
            us(0.99),
            self.client_cpu_s.map_or_else(|| "?".to_owned(), |s| format!("{s:.2}")),
            c.proto.name(),
            c.conns,
            c.streams,
        )
    }

    fn print_errors(&self) {
        for (message, n) in &self.stats.error_kinds {
            eprintln!("openloop:   {n} x {message}");
        }
    }
}

/// The whole run: connect, pace, drain. Must run inside a tokio runtime.
async fn run(config: Config) -> Result<Report, String> {
    let warm = (config.warmup * config.rate).round() as u64;
    let total = warm + (config.seconds * config.rate).round() as u64;
    let target = Arc::new(Target::new(config.clone())?);

    let mut senders = Vec::with_capacity(config.conns * config.streams);
    for _ in 0..config.conns {
        let sender = connect(&target).await?;
        for _ in 1..config.streams {
            senders.extend(sender.share());
        }
        senders.push(sender);
    }

    // one request per slot, all at once and not recorded: settles each connection (h2c: the
    // SETTINGS exchange and stream windows) and the server's own state before the clock starts
    let mut primes = Vec::with_capacity(senders.len());
    for mut sender in senders {
        let target = target.clone();
        primes.push(tokio::spawn(async move {
            let primed = tokio::time::timeout(REQUEST_TIMEOUT, sender.exchange(target.request())).await;
            match primed {
                Ok(Ok(())) => Ok(sender),
                Ok(Err(e)) => Err(format!("priming request: {e}")),
                Err(_) => Err(format!("priming request: timed out after {REQUEST_TIMEOUT:?}")),
            }
        }));
    }
    let mut senders = Vec::with_capacity(primes.len());
    for prime in primes {
        senders.push(prime.await.map_err(|e| format!("priming task: {e}"))??);
    }

    let start = Instant::now() + START_DELAY;
    let window = start + Duration::from_secs_f64(config.warmup);
    let deadline = start + Duration::from_secs_f64(config.warmup + config.seconds) + REQUEST_TIMEOUT;
    let (tx, rx) = mpsc::unbounded_channel();
    let queue: Queue = Arc::new(Mutex::new(rx));
    let stats: Shared = Arc::new(std::sync::Mutex::new(Stats {
        sent: senders.len() as u64,
        ..Stats::new()
    }));
    let slots: Vec<_> = senders
        .into_iter()
        .map(|sender| {
            let slot = slot(target.clone(), Some(sender), queue.clone(), deadline, stats.clone());
            tokio::spawn(slot)
        })
        .collect();
    let rate = config.rate;
    let pacer = std::thread::spawn(move || pace(tx, start, rate, warm, total));

    for handle in slots {
        if let Err(e) = handle.await {
            record(&stats, |s| s.error(format!("request slot panicked: {e}")));
        }
    }
    pacer.join().map_err(|_| "the pacing thread panicked".to_owned())?;
    let stats = std::mem::take(&mut *stats.lock().unwrap_or_else(std::sync::PoisonError::into_inner));
    let span = stats
        .last_done
        .map_or(Duration::ZERO, |done| done.saturating_duration_since(window));
    Ok(Report {
        config,
        requests: total - warm,
        stats,
        span,
        client_cpu_s: process_cpu_seconds(),
    })
}

/// This process's CPU time (user + system, all threads) in seconds, from /proc/self/stat.
fn process_cpu_seconds() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Fields after the command name (which may hold spaces) start at field 3, state.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    Some((utime + stime) / USER_HZ)
}

/// Exits the process with status 3 if it is still running after `limit`.
fn watchdog(limit: Duration, what: &'static str) {
    std::thread::spawn(move || {
        std::thread::sleep(limit);
        eprintln!("openloop: {what} still running after {limit:?}: giving up");
        std::process::exit(3);
    });
}

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> Result<T, String> {
    match std::env::var(name) {
        Ok(text) => text
            .trim()
            .parse()
            .map_err(|_| format!("{name}={text:?} cannot be parsed")),
        Err(_) => Ok(default),
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime")
}

fn bench(addr: &str) -> Result<(), String> {
    let config = Config::from_env(addr)?;
    let limit = Duration::from_secs_f64(config.warmup + config.seconds) + REQUEST_TIMEOUT + WATCHDOG_SLACK;
    watchdog(limit, "the load run");
    let report = runtime().block_on(run(config))?;
    println!("{}", report.line());
    report.print_errors();
    Ok(())
}

/// An HTTP/1.1 and h2c (prior knowledge) server answering every request with 200 `ok`.
async fn smoke_server() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind smoke server");
    let addr = listener.local_addr().expect("smoke server address");
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let service = service_fn(|_request| async {
                    Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(b"ok\n"))))
                });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    addr
}

fn smoke() {
    watchdog(SMOKE_DEADLINE, "the smoke test");
    runtime().block_on(async {
        let addr = smoke_server().await;
        let mut failed = Vec::new();
        for (proto, conns, streams) in [(Proto::Http1, 8, 1), (Proto::H2c, 2, 4)] {
            let config = Config {
                addr,
                proto,
                rate: SMOKE_RATE,
                seconds: SMOKE_SECONDS,
                warmup: SMOKE_WARMUP,
                conns,
                streams,
                path: "/smoke".to_owned(),
            };
            let want = (SMOKE_RATE * SMOKE_SECONDS).round() as u64;
            match run(config).await {
                Ok(report) => {
                    println!("openloop smoke {}: {}", proto.name(), report.line());
                    report.print_errors();
                    let s = &report.stats;
                    if report.requests != want || s.ok != want || s.errors != 0 {
                        failed.push(format!(
                            "{}: {} scheduled, {} ok, {} errors; want {want} ok and no error",
                            proto.name(),
                            report.requests,
                            s.ok,
                            s.errors
                        ));
                    }
                    if s.latency.len() != want || s.latency.value_at_quantile(0.99) == 0 {
                        failed.push(format!("{}: latency histogram not filled", proto.name()));
                    }
                    // priming (one per slot), warm-up and measured requests
                    let want_sent = (conns * streams) as u64 + (SMOKE_RATE * SMOKE_WARMUP).round() as u64 + want;
                    if s.sent != want_sent {
                        failed.push(format!("{}: {} sent, want {want_sent}", proto.name(), s.sent));
                    }
                }
                Err(e) => failed.push(format!("{}: {e}", proto.name())),
            }
        }
        assert!(failed.is_empty(), "smoke test failed:\n  {}", failed.join("\n  "));
    });
    println!("openloop smoke test: ok");
}

fn main() {
    match std::env::var("OPENLOOP_ADDR") {
        Ok(addr) if !addr.is_empty() => {
            if let Err(message) = bench(&addr) {
                eprintln!("openloop: {message}");
                std::process::exit(2);
            }
        }
        _ => {
            if std::env::args().any(|a| a == "--bench") {
                eprintln!(
                    "openloop: OPENLOOP_ADDR is not set, so this is the in-process smoke test; \
                     benches/load/compare.sh runs the real comparison"
                );
            }
            smoke();
        }
    }
}
