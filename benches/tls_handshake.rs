//! TLS handshake rate: a closed-loop client that opens a new TLS connection for every request.
//!
//! Each connection: TCP connect, TLS handshake (ALPN `http/1.1`), one `GET / HTTP/1.1` with
//! `Connection: close`, the whole response read (status 200 required) until the server closes,
//! then the socket is dropped. Reading to the end also reads the TLS 1.3 session tickets the
//! server sends after the handshake, so resumption works as it does for a real client.
//!
//! Against a running server (what `benches/tls/compare.sh` does), configured by environment:
//! - `TLS_BENCH_ADDR`: host:port to connect to (an IP address; no DNS lookups);
//! - `TLS_BENCH_CA`: PEM file of the CA certificates to trust;
//! - `TLS_BENCH_SNI`: server name sent and verified (default `localhost`);
//! - `TLS_BENCH_MODE`: `full` (resumption disabled in the client: every handshake is a full
//!   one) or `resumed` (the default in-memory session store, one per client loop, so each loop's
//!   connections after its first resume with a ticket; see [`Target::loop_config`] for why not
//!   one store shared by all loops); default `full`;
//! - `TLS_BENCH_TLS`: `1.3` (default) or `1.2`;
//! - `TLS_BENCH_CONCURRENCY`: connections in flight (default 32);
//! - `TLS_BENCH_SECONDS`: how long new connections are started (default 10).
//!
//! It prints one line: `handshakes=N seconds=S rate=R resumed=K failures=F p50_ms=.. p99_ms=..
//! client_cpu_s=.. tls=.. mode=..`, where `handshakes` counts connections that completed with a
//! 200, `rate` is that per second of wall time, `resumed` those whose handshake was a resumption,
//! latencies are per connection (connect to last byte), and `client_cpu_s` is this process's own
//! CPU time (utime + stime), to tell whether the client was the bottleneck. The client runs on
//! one thread (tokio current-thread runtime), so pin it to one core.
//!
//! Without `TLS_BENCH_ADDR` (as under `cargo test --all-targets`, which runs benches once without
//! `--bench`) it runs a smoke test instead: an in-process sluice TLS listener (certificate made
//! with rcgen) in front of an in-process hyper upstream, half a second of each mode on TLS 1.3
//! and 1.2, asserting no failures, resumptions in `resumed` mode and none in `full` mode.
//!
//! Every wait is bounded: each connection by [`CONNECTION_TIMEOUT`], the whole process by a
//! watchdog thread that exits with status 3.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Response, StatusCode};
use http_body_util::Full;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair};
use rustls::client::Resumption;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{ClientConfig, HandshakeKind, RootCertStore, SupportedProtocolVersion};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;

/// Longest a connection may take, from connect to the end of the response.
const CONNECTION_TIMEOUT: Duration = Duration::from_secs(5);
/// Pause after a failed connection, so a refused port does not spin the loop.
const FAILURE_BACKOFF: Duration = Duration::from_millis(10);
/// Added to the run time for the watchdog: start-up, the last connections, shutdown.
const WATCHDOG_SLACK: Duration = Duration::from_secs(30);
/// Smoke test: time per (TLS version, mode), connections in flight, and the overall limit.
const SMOKE_RUN: Duration = Duration::from_millis(500);
const SMOKE_CONCURRENCY: usize = 8;
const SMOKE_DEADLINE: Duration = Duration::from_secs(30);
/// The name on the smoke test's certificate.
const SMOKE_SNI: &str = "bench.sluice.test";
/// Distinct error messages kept for the report.
const MAX_ERROR_KINDS: usize = 16;
/// Linux's USER_HZ: the unit of utime and stime in /proc/PID/stat.
const USER_HZ: f64 = 100.0;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    Full,
    Resumed,
}

impl Mode {
    fn name(self) -> &'static str {
        match self {
            Mode::Full => "full",
            Mode::Resumed => "resumed",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Tls {
    V13,
    V12,
}

impl Tls {
    fn name(self) -> &'static str {
        match self {
            Tls::V13 => "1.3",
            Tls::V12 => "1.2",
        }
    }

    fn versions(self) -> &'static [&'static SupportedProtocolVersion] {
        const TLS13: &[&SupportedProtocolVersion] = &[&rustls::version::TLS13];
        const TLS12: &[&SupportedProtocolVersion] = &[&rustls::version::TLS12];
        match self {
            Tls::V13 => TLS13,
            Tls::V12 => TLS12,
        }
    }
}

/// One load run's parameters.
struct Target {
    addr: SocketAddr,
    sni: ServerName<'static>,
    /// The request, with the `Host` header.
    request: Bytes,
    config: Arc<ClientConfig>,
    mode: Mode,
    concurrency: usize,
    duration: Duration,
}

impl Target {
    fn new(
        addr: SocketAddr,
        roots: RootCertStore,
        sni: &str,
        mode: Mode,
        tls: Tls,
        concurrency: usize,
        duration: Duration,
    ) -> Result<Self, String> {
        let sni = ServerName::try_from(sni.to_owned()).map_err(|e| format!("server name {sni:?}: {e}"))?;
        let mut config = ClientConfig::builder_with_provider(sluice::tls::provider())
            .with_protocol_versions(tls.versions())
            .map_err(|e| format!("TLS versions: {e}"))?
            .with_root_certificates(roots)
            .with_no_client_auth();
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        config.resumption = match mode {
            Mode::Full => Resumption::disabled(),
            // The default: an in-memory store of 256 sessions, tickets for TLS 1.2 and 1.3.
            Mode::Resumed => Resumption::default(),
        };
        let host = sni.to_str();
        let request = Bytes::from(format!(
            "GET / HTTP/1.1\r\nHost: {host}\r\nUser-Agent: sluice-tls-bench\r\nConnection: close\r\n\r\n"
        ));
        Ok(Self {
            addr,
            sni,
            request,
            config: Arc::new(config),
            mode,
            concurrency,
            duration,
        })
    }

    /// The config of one client loop. In `resumed` mode each loop has its own session store
    /// (the default in-memory one), as separate clients would: rustls's store keeps at most 8
    /// TLS 1.3 tickets per server name, so one store shared by more loops than that runs dry
    /// whenever completions and new connections come in bursts, and many handshakes would be
    /// full ones for lack of a ticket rather than because the server refused one.
    fn loop_config(&self) -> Arc<ClientConfig> {
        match self.mode {
            Mode::Full => Arc::clone(&self.config),
            Mode::Resumed => {
                let mut config = (*self.config).clone();
                config.resumption = Resumption::default();
                Arc::new(config)
            }
        }
    }
}

/// What a run counted.
#[derive(Default)]
struct Stats {
    handshakes: u64,
    resumed: u64,
    failures: u64,
    /// Per completed connection, connect to the end of the response, in µs.
    latencies_us: Vec<u32>,
    /// Error message → how often.
    errors: BTreeMap<String, u64>,
    elapsed: Duration,
}

impl Stats {
    fn merge(&mut self, other: Stats) {
        self.handshakes += other.handshakes;
        self.resumed += other.resumed;
        self.failures += other.failures;
        self.latencies_us.extend(other.latencies_us);
        for (message, n) in other.errors {
            if self.errors.len() < MAX_ERROR_KINDS || self.errors.contains_key(&message) {
                *self.errors.entry(message).or_default() += n;
            }
        }
    }

    fn rate(&self) -> f64 {
        self.handshakes as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    /// Nearest-rank percentile of the latencies, in ms.
    fn percentile_ms(&mut self, p: f64) -> f64 {
        if self.latencies_us.is_empty() {
            return 0.0;
        }
        self.latencies_us.sort_unstable();
        let rank = ((p / 100.0) * self.latencies_us.len() as f64).ceil() as usize;
        let index = rank.clamp(1, self.latencies_us.len()) - 1;
        f64::from(self.latencies_us[index]) / 1000.0
    }

    fn line(&mut self, tls: Tls, mode: Mode, client_cpu: Option<f64>) -> String {
        let (p50, p99) = (self.percentile_ms(50.0), self.percentile_ms(99.0));
        let cpu = client_cpu.map_or_else(|| "?".to_owned(), |s| format!("{s:.2}"));
        format!(
            "handshakes={} seconds={:.3} rate={:.1} resumed={} failures={} p50_ms={p50:.3} p99_ms={p99:.3} client_cpu_s={cpu} tls={} mode={}",
            self.handshakes,
            self.elapsed.as_secs_f64(),
            self.rate(),
            self.resumed,
            self.failures,
            tls.name(),
            mode.name(),
        )
    }
}

/// One connection: connect, handshake, one request, the response to its end. `Ok(resumed)`.
async fn one_connection(target: &Target, connector: &tokio_rustls::TlsConnector) -> Result<bool, String> {
    let tcp = TcpStream::connect(target.addr)
        .await
        .map_err(|e| format!("connect: {e}"))?;
    // The request follows the client's Finished at once: without this, Nagle holds it back
    // until the server acknowledges the Finished.
    tcp.set_nodelay(true).map_err(|e| format!("set_nodelay: {e}"))?;
    let mut tls = connector
        .connect(target.sni.clone(), tcp)
        .await
        .map_err(|e| format!("handshake: {e}"))?;
    let resumed = tls.get_ref().1.handshake_kind() == Some(HandshakeKind::Resumed);
    tls.write_all(&target.request)
        .await
        .map_err(|e| format!("write request: {e}"))?;
    tls.flush().await.map_err(|e| format!("write request: {e}"))?;
    let mut response = Vec::with_capacity(1024);
    match tls.read_to_end(&mut response).await {
        Ok(_) => {}
        // Closed without close_notify: fine if the response is complete.
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof && response_complete(&response) => {}
        Err(e) => return Err(format!("read response: {e}")),
    }
    let status_line = response.split(|&b| b == b'\r').next().unwrap_or_default();
    if !status_line.starts_with(b"HTTP/1.1 200 ") {
        let shown = String::from_utf8_lossy(&status_line[..status_line.len().min(64)]).into_owned();
        return Err(format!("status line {shown:?}"));
    }
    Ok(resumed)
}

/// Whether `response` holds a head and as many body bytes as its `Content-Length` says.
fn response_complete(response: &[u8]) -> bool {
    let Some(head_end) = response.windows(4).position(|w| w == b"\r\n\r\n") else {
        return false;
    };
    let head = String::from_utf8_lossy(&response[..head_end]);
    let length = head.lines().find_map(|line| {
        let (name, value) = line.split_once(':')?;
        name.trim()
            .eq_ignore_ascii_case("content-length")
            .then(|| value.trim().parse::<usize>().ok())?
    });
    length.is_some_and(|length| response.len() >= head_end + 4 + length)
}

/// Runs `target.concurrency` client loops for `target.duration`; connections still open at the
/// end are finished (each bounded by [`CONNECTION_TIMEOUT`]) and counted.
async fn run_load(target: Arc<Target>) -> Stats {
    let start = Instant::now();
    let stop_at = start + target.duration;
    let loops: Vec<_> = (0..target.concurrency)
        .map(|_| {
            let target = Arc::clone(&target);
            tokio::spawn(async move {
                let connector = tokio_rustls::TlsConnector::from(target.loop_config());
                let mut stats = Stats::default();
                while Instant::now() < stop_at {
                    let began = Instant::now();
                    match tokio::time::timeout(CONNECTION_TIMEOUT, one_connection(&target, &connector)).await {
                        Ok(Ok(resumed)) => {
                            stats.handshakes += 1;
                            stats.resumed += u64::from(resumed);
                            let us = began.elapsed().as_micros().min(u128::from(u32::MAX)) as u32;
                            stats.latencies_us.push(us);
                        }
                        failed => {
                            stats.failures += 1;
                            let message = match failed {
                                Ok(Err(message)) => message,
                                _ => format!("timed out after {CONNECTION_TIMEOUT:?}"),
                            };
                            if stats.errors.len() < MAX_ERROR_KINDS || stats.errors.contains_key(&message) {
                                *stats.errors.entry(message).or_default() += 1;
                            }
                            tokio::time::sleep(FAILURE_BACKOFF).await;
                        }
                    }
                }
                stats
            })
        })
        .collect();
    let mut total = Stats::default();
    for client in loops {
        match client.await {
            Ok(stats) => total.merge(stats),
            Err(e) => {
                total.failures += 1;
                *total.errors.entry(format!("client loop panicked: {e}")).or_default() += 1;
            }
        }
    }
    total.elapsed = start.elapsed();
    total
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
        eprintln!("tls_handshake: {what} still running after {limit:?}: giving up");
        std::process::exit(3);
    });
}

fn print_errors(stats: &Stats) {
    for (message, n) in &stats.errors {
        eprintln!("  {n} x {message}");
    }
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

fn roots_from(path: &Path) -> Result<RootCertStore, String> {
    let certs = CertificateDer::pem_file_iter(path)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .map_err(|e| format!("{}: {e}", path.display()))?;
    let mut roots = RootCertStore::empty();
    let (added, _) = roots.add_parsable_certificates(certs);
    if added == 0 {
        return Err(format!("{} holds no usable CA certificate", path.display()));
    }
    Ok(roots)
}

/// The measured run against `TLS_BENCH_ADDR`.
fn bench(addr: &str) -> Result<(), String> {
    let addr: SocketAddr = addr
        .parse()
        .map_err(|e| format!("TLS_BENCH_ADDR={addr:?}: {e} (write IP:PORT)"))?;
    let ca = std::env::var("TLS_BENCH_CA").map_err(|_| "TLS_BENCH_CA (PEM CA file) is not set".to_owned())?;
    let roots = roots_from(Path::new(&ca))?;
    let sni = env_or("TLS_BENCH_SNI", "localhost".to_owned())?;
    let mode = match env_or("TLS_BENCH_MODE", "full".to_owned())?.as_str() {
        "full" => Mode::Full,
        "resumed" => Mode::Resumed,
        other => return Err(format!("TLS_BENCH_MODE={other:?}: expected full or resumed")),
    };
    let tls = match env_or("TLS_BENCH_TLS", "1.3".to_owned())?.as_str() {
        "1.3" => Tls::V13,
        "1.2" => Tls::V12,
        other => return Err(format!("TLS_BENCH_TLS={other:?}: expected 1.3 or 1.2")),
    };
    let concurrency: usize = env_or("TLS_BENCH_CONCURRENCY", 32)?;
    let seconds: f64 = env_or("TLS_BENCH_SECONDS", 10.0)?;
    if concurrency == 0 || !(seconds > 0.0 && seconds < 86_400.0) {
        return Err("TLS_BENCH_CONCURRENCY must be > 0 and TLS_BENCH_SECONDS in (0, 86400)".to_owned());
    }
    let duration = Duration::from_secs_f64(seconds);
    let target = Target::new(addr, roots, &sni, mode, tls, concurrency, duration)?;
    watchdog(duration + CONNECTION_TIMEOUT + WATCHDOG_SLACK, "the load run");
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("tokio runtime: {e}"))?;
    let cpu_before = process_cpu_seconds();
    let mut stats = runtime.block_on(run_load(Arc::new(target)));
    let cpu = process_cpu_seconds()
        .zip(cpu_before)
        .map(|(after, before)| after - before);
    println!("{}", stats.line(tls, mode, cpu));
    print_errors(&stats);
    Ok(())
}

// ------------------------------------------------------------------------------------------
// Smoke test: everything in process.

/// A CA and one leaf for [`SMOKE_SNI`], written as PEM files into a fresh directory.
struct SmokeCerts {
    dir: PathBuf,
    cert: PathBuf,
    key: PathBuf,
    ca: CertificateDer<'static>,
}

impl SmokeCerts {
    fn new() -> Self {
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(DnType::CommonName, "sluice TLS bench CA");
        let issuer = CertifiedIssuer::self_signed(params, KeyPair::generate().expect("CA key")).expect("CA");
        let leaf_key = KeyPair::generate().expect("leaf key");
        let leaf = CertificateParams::new(vec![SMOKE_SNI.to_owned()])
            .expect("leaf params")
            .signed_by(&leaf_key, &issuer)
            .expect("leaf");
        let dir = std::env::temp_dir().join(format!("sluice-tls-bench-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let (cert, key) = (dir.join("leaf.pem"), dir.join("leaf.key"));
        std::fs::write(&cert, leaf.pem()).expect("write leaf");
        std::fs::write(&key, leaf_key.serialize_pem()).expect("write key");
        Self {
            dir,
            cert,
            key,
            ca: issuer.der().clone(),
        }
    }
}

impl Drop for SmokeCerts {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// An upstream answering every request `200 ok`, until `stop` is dropped or fired.
async fn smoke_upstream() -> (SocketAddr, oneshot::Sender<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind upstream");
    let addr = listener.local_addr().expect("upstream addr");
    let (stop, mut stopped) = oneshot::channel::<()>();
    tokio::spawn(async move {
        loop {
            let (stream, _) = tokio::select! {
                accepted = listener.accept() => match accepted {
                    Ok(accepted) => accepted,
                    Err(_) => continue,
                },
                _ = &mut stopped => return,
            };
            tokio::spawn(async move {
                let service = service_fn(|_request| async {
                    Ok::<_, Infallible>(
                        Response::builder()
                            .status(StatusCode::OK)
                            .body(Full::new(Bytes::from_static(b"ok\n")))
                            .expect("response"),
                    )
                });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    (addr, stop)
}

async fn smoke() {
    let certs = SmokeCerts::new();
    let (upstream, upstream_stop) = smoke_upstream().await;
    let yaml = format!(
        "listeners: [{{ name: tls, address: 127.0.0.1:0, tls: {{ certificates: [{{ cert: {:?}, key: {:?} }}] }} }}]\n\
         services:\n  - name: app\n    versions: {{ blue: {{ endpoints: [{upstream}] }} }}\n    routing: {{ weights: {{ blue: 1 }} }}\n",
        certs.cert.display().to_string(),
        certs.key.display().to_string(),
    );
    let config = sluice::config::parse(&yaml).unwrap_or_else(|e| panic!("smoke config invalid:\n{e}\n---\n{yaml}"));
    let tls = config.listeners[0].tls.as_ref().expect("TLS listener");
    let terminator = sluice::tls::Terminator::new("tls", tls).expect("certificates load");
    let tcp = TcpListener::bind(config.listeners[0].address)
        .await
        .expect("bind proxy");
    let addr = tcp.local_addr().expect("proxy addr");
    let routing = Arc::new(sluice::Routing::new(&config));
    let (stop, stopped) = oneshot::channel::<()>();
    let listener = sluice::listener::Listener {
        tcp,
        tls: Some(terminator),
    };
    let proxy = tokio::spawn(sluice::run(vec![listener], routing, async move {
        let _ = stopped.await;
    }));

    println!(
        "tls_handshake smoke test: sluice on {addr}, {SMOKE_CONCURRENCY} connections in flight, {SMOKE_RUN:?} per run"
    );
    let mut failed = Vec::new();
    for tls in [Tls::V13, Tls::V12] {
        for mode in [Mode::Full, Mode::Resumed] {
            let mut roots = RootCertStore::empty();
            roots.add(certs.ca.clone()).expect("CA");
            let target = Target::new(addr, roots, SMOKE_SNI, mode, tls, SMOKE_CONCURRENCY, SMOKE_RUN).expect("target");
            let mut stats = run_load(Arc::new(target)).await;
            println!("{}", stats.line(tls, mode, None));
            print_errors(&stats);
            let label = format!("TLS {} {}", tls.name(), mode.name());
            if stats.handshakes == 0 {
                failed.push(format!("{label}: no connection completed"));
            }
            if stats.failures > 0 {
                failed.push(format!("{label}: {} failures", stats.failures));
            }
            match mode {
                Mode::Resumed if stats.resumed == 0 => failed.push(format!("{label}: no handshake was resumed")),
                Mode::Full if stats.resumed > 0 => {
                    failed.push(format!("{label}: {} resumed with resumption disabled", stats.resumed))
                }
                _ => {}
            }
        }
    }

    let _ = stop.send(());
    let _ = upstream_stop.send(());
    match tokio::time::timeout(Duration::from_secs(10), proxy).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => failed.push(format!("proxy task failed: {e}")),
        Err(_) => failed.push("proxy did not shut down within 10 s".to_owned()),
    }
    assert!(failed.is_empty(), "smoke test failed:\n  {}", failed.join("\n  "));
    println!("tls_handshake smoke test: ok");
}

fn main() {
    match std::env::var("TLS_BENCH_ADDR") {
        Ok(addr) if !addr.is_empty() => {
            if let Err(message) = bench(&addr) {
                eprintln!("tls_handshake: {message}");
                std::process::exit(2);
            }
        }
        _ => {
            if std::env::args().any(|a| a == "--bench") {
                eprintln!(
                    "tls_handshake: TLS_BENCH_ADDR is not set, so this is the in-process smoke test; \
                     benches/tls/compare.sh runs the real comparison"
                );
            }
            watchdog(SMOKE_DEADLINE, "the smoke test");
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .expect("tokio runtime");
            runtime.block_on(smoke());
        }
    }
}
