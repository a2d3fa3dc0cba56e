//! Fixtures: upstream servers and a proxy on 127.0.0.1:0, HTTP clients, and polling waits.

#![allow(dead_code)]

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body::Frame;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, oneshot};

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
/// Body type of test requests and upstream responses.
pub type Body = BoxBody<Bytes, BoxError>;

/// How long any wait in a test may take before it fails.
pub const DEADLINE: Duration = Duration::from_secs(20);

pub fn full(bytes: impl Into<Bytes>) -> Body {
    Full::new(bytes.into()).map_err(|e: Infallible| match e {}).boxed()
}

pub fn empty() -> Body {
    full(Bytes::new())
}

/// A body fed from a channel, so a test decides when each chunk (or trailer) is sent.
pub struct ChannelBody(mpsc::Receiver<Frame<Bytes>>);

impl http_body::Body for ChannelBody {
    type Data = Bytes;
    type Error = BoxError;
    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        self.0.poll_recv(cx).map(|f| f.map(Ok))
    }
}

pub fn channel_body(buffer: usize) -> (mpsc::Sender<Frame<Bytes>>, Body) {
    let (tx, rx) = mpsc::channel(buffer);
    (tx, ChannelBody(rx).boxed())
}

/// Polls `check` until it is true, failing the test after [`DEADLINE`].
pub async fn wait_until(what: &str, mut check: impl FnMut() -> bool) {
    let start = tokio::time::Instant::now();
    while !check() {
        assert!(start.elapsed() < DEADLINE, "timed out waiting until {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Awaits `future`, failing the test after [`DEADLINE`].
pub async fn within<T>(what: &str, future: impl Future<Output = T>) -> T {
    tokio::time::timeout(DEADLINE, future)
        .await
        .unwrap_or_else(|_| panic!("timed out: {what}"))
}

/// Reads until the proxy closes the connection (a reset counts: closing with unread input
/// makes the kernel send one); returns what it sent.
pub async fn read_until_closed(stream: &mut tokio::net::TcpStream) -> String {
    use tokio::io::AsyncReadExt;
    let mut answer = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match within("the proxy closes the connection", stream.read(&mut buf)).await {
            Ok(0) => break,
            Ok(n) => answer.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => break,
            Err(e) => panic!("read: {e}"),
        }
    }
    String::from_utf8_lossy(&answer).into_owned()
}

/// Reads one HTTP/1.1 response with a `content-length` body from a kept-alive connection;
/// returns its head (lower-cased) and body. `None`: the connection closed (or was reset) first.
pub async fn read_response(stream: &mut tokio::net::TcpStream) -> Option<(String, String)> {
    use tokio::io::AsyncReadExt;
    let mut data = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        if let Some(end) = data.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&data[..end]).to_ascii_lowercase();
            let length: usize = head
                .lines()
                .find_map(|line| line.strip_prefix("content-length:"))
                .map_or(0, |v| v.trim().parse().expect("content-length"));
            if data.len() >= end + 4 + length {
                let body = String::from_utf8_lossy(&data[end + 4..end + 4 + length]).into_owned();
                return Some((head, body));
            }
        }
        match within("a response", stream.read(&mut buf)).await {
            Ok(0) | Err(_) => return None,
            Ok(n) => data.extend_from_slice(&buf[..n]),
        }
    }
}

/// An HTTP server standing in for one upstream endpoint (HTTP/1.1 and h2c, with upgrades).
pub struct Upstream {
    pub addr: SocketAddr,
    /// Requests received.
    pub hits: Arc<AtomicUsize>,
    /// Connections accepted.
    pub connections: Arc<AtomicUsize>,
    /// Connections that ended.
    pub closed: Arc<AtomicUsize>,
    _stop: oneshot::Sender<()>,
}

impl Upstream {
    /// Serves every request with `handler`.
    pub async fn start<F, Fut>(handler: F) -> Upstream
    where
        F: Fn(Request<Incoming>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Response<Body>> + Send + 'static,
    {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind upstream");
        let addr = listener.local_addr().expect("addr");
        let hits = Arc::new(AtomicUsize::new(0));
        let (stop, mut stopped) = oneshot::channel();
        let handler = Arc::new(handler);
        let counter = Arc::clone(&hits);
        let connections = Arc::new(AtomicUsize::new(0));
        let accepted = Arc::clone(&connections);
        let closed = Arc::new(AtomicUsize::new(0));
        let ended = Arc::clone(&closed);
        tokio::spawn(async move {
            loop {
                let (stream, _) = tokio::select! {
                    accepted = listener.accept() => accepted.expect("accept"),
                    _ = &mut stopped => return,
                };
                accepted.fetch_add(1, Ordering::SeqCst);
                let handler = Arc::clone(&handler);
                let counter = Arc::clone(&counter);
                let ended = Arc::clone(&ended);
                tokio::spawn(async move {
                    let service = service_fn(move |request| {
                        counter.fetch_add(1, Ordering::SeqCst);
                        let response = handler(request);
                        async move { Ok::<_, Infallible>(response.await) }
                    });
                    let _ = auto::Builder::new(TokioExecutor::new())
                        .serve_connection_with_upgrades(TokioIo::new(stream), service)
                        .await;
                    ended.fetch_add(1, Ordering::SeqCst);
                });
            }
        });
        Upstream {
            addr,
            hits,
            connections,
            closed,
            _stop: stop,
        }
    }

    /// Holds every request until `release` is notified, then answers 200.
    pub async fn held(release: Arc<tokio::sync::Notify>) -> Upstream {
        Upstream::start(move |_| {
            let release = Arc::clone(&release);
            async move {
                release.notified().await;
                Response::new(full("released"))
            }
        })
        .await
    }

    /// Holds every request until `gate` turns true, and answers at once after that (200,
    /// `released`). A watch: an opening is never missed, whenever a request arrives.
    pub async fn gated(gate: tokio::sync::watch::Receiver<bool>) -> Upstream {
        Upstream::start(move |_| {
            let mut gate = gate.clone();
            async move {
                let _ = gate.wait_for(|open| *open).await;
                Response::new(full("released"))
            }
        })
        .await
    }

    /// Answers every request with 200 and `name` as the body.
    pub async fn named(name: &'static str) -> Upstream {
        Upstream::start(move |_| async move { Response::new(full(name)) }).await
    }

    pub fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }

    pub fn connections(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }

    /// Connections accepted and not yet closed.
    pub fn open_connections(&self) -> usize {
        self.connections() - self.closed.load(Ordering::SeqCst)
    }
}

/// An address where nothing listens. The port stays bound (without listening) for the rest of
/// the test run, so connects are refused and no other socket, such as a proxy's own listener,
/// can be given the port. (Binding and closing it let the OS hand it out again.)
pub async fn dead_addr() -> SocketAddr {
    let socket = tokio::net::TcpSocket::new_v4().expect("socket");
    socket.bind("127.0.0.1:0".parse().expect("addr")).expect("bind");
    let addr = socket.local_addr().expect("addr");
    std::mem::forget(socket);
    addr
}

/// A running proxy.
pub struct TestProxy {
    pub addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<()>,
}

/// Starts the proxy with `services` (YAML, the `services:` list) and optional `defaults`.
pub async fn proxy(services: &str) -> TestProxy {
    proxy_with(services, "").await
}

pub async fn proxy_with(services: &str, extra: &str) -> TestProxy {
    let yaml = format!("listeners: [{{ name: test, address: 127.0.0.1:0 }}]\n{extra}\nservices:\n{services}");
    let config = sluice::config::parse(&yaml).unwrap_or_else(|e| panic!("test config invalid:\n{e}\n---\n{yaml}"));
    let listener = TcpListener::bind(config.listeners[0].address)
        .await
        .expect("bind proxy");
    let addr = listener.local_addr().expect("addr");
    let routing = Arc::new(sluice::Routing::new(&config));
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(sluice::run(vec![listener], routing, async move {
        let _ = stopped.await;
    }));
    TestProxy {
        addr,
        stop: Some(stop),
        task,
    }
}

impl TestProxy {
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    /// Signals shutdown and waits for `run` to return.
    pub async fn shutdown(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        within("proxy shutdown", &mut self.task).await.expect("proxy task");
    }
}

/// A one-line service with the given versions (`name => [addr, ...]`) and weights.
pub fn service(name: &str, matcher: &str, versions: &[(&str, &[SocketAddr], u32)]) -> String {
    let mut out = format!("  - name: {name}\n    match: {matcher}\n    versions:\n");
    for (version, endpoints, _) in versions {
        let list: Vec<String> = endpoints.iter().map(ToString::to_string).collect();
        out += &format!("      {version}: {{ endpoints: [{}] }}\n", list.join(", "));
    }
    let weights: Vec<String> = versions.iter().map(|(v, _, w)| format!("{v}: {w}")).collect();
    out += &format!("    routing: {{ weights: {{ {} }} }}\n", weights.join(", "));
    out
}

/// `services` (from [`service`]) with every version's endpoints spoken to in `protocol`
/// (`http1`, `http2`).
pub fn speaking(services: &str, protocol: &str) -> String {
    services.replace("] }\n", &format!("], protocol: {protocol} }}\n"))
}

pub fn http1_client() -> Client<HttpConnector, Body> {
    Client::builder(TokioExecutor::new()).build_http()
}

pub fn h2c_client() -> Client<HttpConnector, Body> {
    Client::builder(TokioExecutor::new()).http2_only(true).build_http()
}

/// Sends `request` and reads the whole answer.
pub async fn send(
    client: &Client<HttpConnector, Body>,
    request: Request<Body>,
) -> (StatusCode, http::HeaderMap, Bytes) {
    let response = within("response", client.request(request))
        .await
        .expect("request failed");
    let (parts, body) = response.into_parts();
    let bytes = within("body", body.collect()).await.expect("body failed").to_bytes();
    (parts.status, parts.headers, bytes)
}

/// GET `url` with an optional Host header.
pub async fn get(client: &Client<HttpConnector, Body>, url: &str, host: Option<&str>) -> (StatusCode, Bytes) {
    let mut builder = Request::get(url);
    if let Some(host) = host {
        builder = builder.header(http::header::HOST, host);
    }
    let (status, _, body) = send(client, builder.body(empty()).expect("request")).await;
    (status, body)
}

/// The deterministic test pattern: byte `i` of a stream.
pub fn pattern_byte(i: u64) -> u8 {
    ((i * 31 + 7) % 251) as u8
}

/// `len` bytes of the pattern starting at offset `start`.
pub fn pattern(start: u64, len: usize) -> Bytes {
    (0..len as u64)
        .map(|i| pattern_byte(start + i))
        .collect::<Vec<u8>>()
        .into()
}

/// Reads `body` to the end, checking it against the pattern; returns its length, or the
/// offset of the first wrong byte as an error. Calls `on_first` after the first data frame.
pub async fn check_pattern(
    mut body: impl http_body::Body<Data = Bytes, Error = impl std::fmt::Debug> + Unpin,
    mut on_first: impl FnMut(),
) -> Result<u64, u64> {
    let mut offset = 0u64;
    while let Some(frame) = within("body frame", body.frame()).await {
        let frame = frame.expect("body error");
        let Ok(data) = frame.into_data() else { continue };
        if offset == 0 && !data.is_empty() {
            on_first();
        }
        for (i, b) in data.iter().enumerate() {
            if *b != pattern_byte(offset + i as u64) {
                return Err(offset + i as u64);
            }
        }
        offset += data.len() as u64;
    }
    Ok(offset)
}

/// A fresh, empty directory for one test's files.
pub fn temp_dir(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("sluice-it-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("temp dir");
    dir
}

/// The proxy with its whole control plane: config file on disk, file watcher, admin API.
pub struct Controlled {
    pub addr: SocketAddr,
    pub admin: SocketAddr,
    pub control: Arc<sluice::control::Control>,
    pub token: Option<String>,
    stop: tokio::sync::watch::Sender<bool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    _watcher: Option<notify::RecommendedWatcher>,
}

/// Options for [`controlled`].
#[derive(Default)]
pub struct Options {
    /// Require this admin token.
    pub token: Option<&'static str>,
    /// Watch the config file for changes.
    pub watch: bool,
}

/// Starts the control plane and proxy from the config file at `path` (already written).
pub async fn controlled(path: &std::path::Path, options: Options) -> Controlled {
    let text = std::fs::read_to_string(path).expect("read config");
    let config = sluice::config::parse(&text).unwrap_or_else(|e| panic!("test config invalid:\n{e}\n---\n{text}"));
    let listener = TcpListener::bind(config.listeners[0].address)
        .await
        .expect("bind proxy");
    let admin_listener = TcpListener::bind("127.0.0.1:0").await.expect("bind admin");
    let (addr, admin) = (
        listener.local_addr().expect("addr"),
        admin_listener.local_addr().expect("addr"),
    );
    let control =
        Arc::new(sluice::control::Control::start(config, Some(text), Some(path.to_owned())).expect("control"));
    control.start_health_checks();
    control.start_rollouts();
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let wait = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|s| *s).await;
    };
    let api = Arc::new(sluice::admin::Admin::new(
        Arc::clone(&control),
        options.token.map(str::to_owned),
    ));
    let tasks = vec![
        tokio::spawn(sluice::admin::serve(admin_listener, api, wait(stopped.clone()))),
        tokio::spawn(sluice::run(
            vec![listener],
            Arc::clone(control.routing()),
            wait(stopped),
        )),
    ];
    let watcher = options
        .watch
        .then(|| sluice::reload::watch(Arc::clone(&control), path).expect("watch"));
    Controlled {
        addr,
        admin,
        control,
        token: options.token.map(str::to_owned),
        stop,
        tasks,
        _watcher: watcher,
    }
}

impl Controlled {
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    /// Calls the admin API; returns the status and the JSON body.
    pub async fn api(&self, method: &str, path: &str, body: Option<&str>) -> (StatusCode, serde_json::Value) {
        let mut request = Request::builder()
            .method(method)
            .uri(format!("http://{}{}", self.admin, path));
        if let Some(token) = &self.token {
            request = request.header("authorization", format!("Bearer {token}"));
        }
        let request = request.body(full(body.unwrap_or("").to_owned())).expect("request");
        let (status, _, bytes) = send(&http1_client(), request).await;
        let json = serde_json::from_slice(&bytes).unwrap_or_else(|e| panic!("admin body is not JSON ({e}): {bytes:?}"));
        (status, json)
    }

    /// The version that served a request (needs `expose_version: true`).
    pub async fn version_for(&self, client: &Client<HttpConnector, Body>, headers: &[(&str, &str)]) -> String {
        let mut request = Request::get(self.url("/"));
        for (k, v) in headers {
            request = request.header(*k, *v);
        }
        let (status, headers, _) = send(client, request.body(empty()).expect("request")).await;
        assert_eq!(status, StatusCode::OK);
        headers
            .get("x-sluice-version")
            .expect("x-sluice-version")
            .to_str()
            .expect("ascii")
            .to_owned()
    }

    /// The version that served a `GET /` (needs `expose_version: true`), whatever the status.
    pub async fn version_for_any(&self, client: &Client<HttpConnector, Body>) -> String {
        let (_, headers, _) = send(client, Request::get(self.url("/")).body(empty()).expect("request")).await;
        headers
            .get("x-sluice-version")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("-")
            .to_owned()
    }

    /// GETs an admin path that answers text, such as `/metrics`.
    pub async fn api_text(&self, path: &str) -> (StatusCode, String) {
        let request = Request::get(format!("http://{}{}", self.admin, path))
            .body(empty())
            .expect("request");
        let (status, _, bytes) = send(&http1_client(), request).await;
        (status, String::from_utf8_lossy(&bytes).into_owned())
    }

    pub async fn shutdown(self) {
        let _ = self.stop.send(true);
        for task in self.tasks {
            within("controlled shutdown", task).await.expect("task");
        }
    }
}

/// A whole config: one listener, `extra` top-level YAML, and blue/canary versions on the
/// given upstreams with `routing` (YAML lines under `routing:`).
pub fn blue_canary(blue: SocketAddr, canary: SocketAddr, routing: &str, extra: &str) -> String {
    format!(
        "listeners: [{{ name: t, address: 127.0.0.1:0 }}]\n{extra}\nservices:\n  - name: app\n    expose_version: true\n    versions:\n      blue: {{ endpoints: [{blue}] }}\n      canary: {{ endpoints: [{canary}] }}\n    routing:\n{routing}\n"
    )
}

/// Writes a config file for a test.
pub fn write_config(path: &std::path::Path, text: &str) {
    std::fs::write(path, text).expect("write config");
}

/// 20 MiB: the size of the streamed-upload tests, above the default body limit.
pub const UPLOAD_TOTAL: usize = 20 << 20;
/// The chunk size uploads are sent in.
pub const UPLOAD_CHUNK: usize = 256 << 10;

/// An upstream that checks each request body against the pattern and answers `ok LEN` or
/// `corrupt at OFFSET`, notifying `first_bytes` as soon as the first data arrives.
pub async fn pattern_checking_upstream(first_bytes: Arc<tokio::sync::Notify>) -> Upstream {
    Upstream::start(move |request| {
        let first_bytes = Arc::clone(&first_bytes);
        async move {
            let verdict = match check_pattern(request.into_body(), || first_bytes.notify_one()).await {
                Ok(len) => format!("ok {len}"),
                Err(at) => format!("corrupt at {at}"),
            };
            Response::new(full(verdict))
        }
    })
    .await
}

/// POSTs [`UPLOAD_TOTAL`] bytes of the pattern to `url`, holding back everything after the first
/// chunk until `first_bytes` fires: a proxy that buffered whole bodies never lets it fire, and
/// the wait fails. Returns the answer's status and body.
pub async fn upload_streamed(url: String, first_bytes: &tokio::sync::Notify) -> (StatusCode, Bytes) {
    let (tx, body) = channel_body(4);
    let request = Request::post(url).body(body).expect("request");
    let client = http1_client();
    let response = tokio::spawn(async move { send(&client, request).await });
    tx.send(Frame::data(pattern(0, UPLOAD_CHUNK)))
        .await
        .expect("send first chunk");
    within(
        "the upstream sees the first bytes before the upload ends",
        first_bytes.notified(),
    )
    .await;
    let mut offset = UPLOAD_CHUNK;
    while offset < UPLOAD_TOTAL {
        tx.send(Frame::data(pattern(offset as u64, UPLOAD_CHUNK)))
            .await
            .expect("send chunk");
        offset += UPLOAD_CHUNK;
    }
    drop(tx);
    let (status, _, body) = within("upload response", response).await.expect("client task");
    (status, body)
}

impl Upstream {
    /// Reads each request body to the end and answers `got LEN`.
    pub async fn body_length() -> Upstream {
        Upstream::start(|request| async move {
            use http_body_util::BodyExt;
            let len = request
                .into_body()
                .collect()
                .await
                .map(|c| c.to_bytes().len())
                .unwrap_or(0);
            Response::new(full(format!("got {len}")))
        })
        .await
    }
}

/// Background traffic through the proxy: `loops` concurrent request loops, counting answers
/// by the version that served them (`x-sluice-version`, or `-` without one) and status class.
pub struct Load {
    counts: Arc<std::sync::Mutex<std::collections::BTreeMap<(String, u16), u64>>>,
    stop: Arc<std::sync::atomic::AtomicBool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Load {
    /// Starts `loops` loops sending `GET url`, each pausing `pace` between requests.
    pub fn start(url: String, loops: usize, pace: Duration) -> Load {
        Load::with_header(url, loops, pace, None)
    }

    /// Like [`Load::start`], every request carrying `header` (name, value).
    pub fn with_header(
        url: String,
        loops: usize,
        pace: Duration,
        header: Option<(&'static str, &'static str)>,
    ) -> Load {
        let counts = Arc::new(std::sync::Mutex::new(std::collections::BTreeMap::new()));
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let tasks = (0..loops)
            .map(|_| {
                let (counts, stop, url) = (Arc::clone(&counts), Arc::clone(&stop), url.clone());
                tokio::spawn(async move {
                    let client = http1_client();
                    while !stop.load(Ordering::SeqCst) {
                        let mut request = Request::get(url.as_str());
                        if let Some((name, value)) = header {
                            request = request.header(name, value);
                        }
                        let request = request.body(empty()).expect("request");
                        if let Ok(Ok(response)) = tokio::time::timeout(DEADLINE, client.request(request)).await {
                            let version = response
                                .headers()
                                .get("x-sluice-version")
                                .and_then(|v| v.to_str().ok())
                                .unwrap_or("-")
                                .to_owned();
                            let status = response.status().as_u16();
                            let _ = response.into_body().collect().await;
                            *counts.lock().expect("counts").entry((version, status)).or_default() += 1;
                        }
                        tokio::time::sleep(pace).await;
                    }
                })
            })
            .collect();
        Load { counts, stop, tasks }
    }

    /// Answers from `version` so far, any status.
    pub fn served_by(&self, version: &str) -> u64 {
        let counts = self.counts.lock().expect("counts");
        counts.iter().filter(|((v, _), _)| v == version).map(|(_, n)| n).sum()
    }

    /// Answers with `status` from `version` so far.
    pub fn count(&self, version: &str, status: u16) -> u64 {
        let counts = self.counts.lock().expect("counts");
        counts.get(&(version.to_owned(), status)).copied().unwrap_or(0)
    }

    /// Every answer so far.
    pub fn total(&self) -> u64 {
        self.counts.lock().expect("counts").values().sum()
    }

    /// Stops the loops and waits for them.
    pub async fn stop(self) {
        self.stop.store(true, Ordering::SeqCst);
        for task in self.tasks {
            within("load loop stops", task).await.expect("load loop");
        }
    }
}

/// The configured weight of each version in a service view of the admin API, in version order.
pub fn weights_of(service_view: &serde_json::Value) -> Vec<(String, u64)> {
    service_view["versions"]
        .as_array()
        .expect("versions")
        .iter()
        .map(|v| {
            (
                v["name"].as_str().expect("name").to_owned(),
                v["weight"].as_u64().expect("weight"),
            )
        })
        .collect()
}

/// A raw upstream: for each accepted connection, `serve(connection number, stream)`.
pub async fn raw_upstream<F, Fut>(serve: F) -> (SocketAddr, Arc<AtomicUsize>)
where
    F: Fn(usize, tokio::net::TcpStream) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let connections = Arc::new(AtomicUsize::new(0));
    let counted = Arc::clone(&connections);
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let n = counted.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(serve(n, stream));
        }
    });
    (addr, connections)
}

/// Reads one request head (no body) from `stream`; `None` when the connection closes first.
pub async fn read_request_head(stream: &mut tokio::net::TcpStream, buf: &mut Vec<u8>) -> Option<String> {
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).into_owned();
            buf.drain(..end + 4);
            return Some(head);
        }
        let mut chunk = [0u8; 4096];
        match tokio::io::AsyncReadExt::read(stream, &mut chunk).await {
            Ok(0) | Err(_) => return None,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
}

/// What [`body_logging_upstream`] logs of each request: `VERSION METHOD PATH LEN`, or
/// `VERSION METHOD PATH broken` when its body did not arrive whole.
pub type BodyLog = Arc<std::sync::Mutex<Vec<String>>>;

/// An upstream that logs every request it receives (see [`BodyLog`]).
pub async fn body_logging_upstream() -> (Upstream, BodyLog) {
    let log = BodyLog::default();
    let store = Arc::clone(&log);
    let upstream = Upstream::start(move |request| {
        let store = Arc::clone(&store);
        async move {
            let line = format!("{:?} {} {}", request.version(), request.method(), request.uri().path());
            let body = match request.into_body().collect().await {
                Ok(body) => body.to_bytes().len().to_string(),
                Err(_) => "broken".to_owned(),
            };
            store.lock().expect("lock").push(format!("{line} {body}"));
            Response::new(full("ok"))
        }
    })
    .await;
    (upstream, log)
}

/// An HTTP/2 connection to `addr` with the `h2` crate, for what hyper's client does not expose
/// (resetting one stream, seeing a GOAWAY, HEAD and CONNECT as sent).
pub async fn h2_connection(addr: SocketAddr) -> h2::client::SendRequest<Bytes> {
    let tcp = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let (client, connection) = within("h2 handshake", h2::client::handshake(tcp))
        .await
        .expect("h2 handshake");
    tokio::spawn(async move {
        let _ = connection.await;
    });
    within("h2 ready", client.ready()).await.expect("h2 ready")
}

/// Reads an `h2` body to its end (giving the window back): its bytes, or the stream's error.
pub async fn h2_read_body(body: &mut h2::RecvStream) -> Result<Bytes, h2::Error> {
    let mut bytes = Vec::new();
    while let Some(chunk) = within("h2 body", body.data()).await {
        let chunk = chunk?;
        let _ = body.flow_control().release_capacity(chunk.len());
        bytes.extend_from_slice(&chunk);
    }
    Ok(bytes.into())
}

/// Sends `request` (no body) on `client` and reads the answer: head and whole body, or the
/// stream's error.
pub async fn h2_exchange(
    client: &mut h2::client::SendRequest<Bytes>,
    request: Request<()>,
) -> Result<(http::response::Parts, Bytes), h2::Error> {
    let (response, _) = client.send_request(request, true)?;
    let response = within("h2 answer", response).await?;
    let (parts, mut body) = response.into_parts();
    let bytes = h2_read_body(&mut body).await?;
    Ok((parts, bytes))
}

/// The samples of a proxy's `/metrics`, as `name{labels} -> value`.
pub async fn metric_samples(proxy: &Controlled) -> std::collections::HashMap<String, f64> {
    let (status, text) = proxy.api_text("/metrics").await;
    assert_eq!(status, StatusCode::OK);
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .filter_map(|l| l.rsplit_once(' '))
        .map(|(k, v)| (k.to_owned(), v.parse().expect("numeric sample")))
        .collect()
}

/// `sluice_requests_total` of service `s`, version `v` (the primary) for `code`.
pub fn requests_of_v(code: &str) -> String {
    format!("sluice_requests_total{{service=\"s\",version=\"v\",role=\"primary\",code=\"{code}\"}}")
}

/// Requests counted for service `s`, version `v`, whatever their code.
pub fn counted_for_v(samples: &std::collections::HashMap<String, f64>) -> f64 {
    ["1xx", "2xx", "3xx", "4xx", "5xx", "error"]
        .iter()
        .map(|code| samples.get(&requests_of_v(code)).copied().unwrap_or(0.0))
        .sum()
}

/// Polls `/metrics` until `check` holds, failing with the last samples after [`DEADLINE`].
pub async fn metrics_until(
    proxy: &Controlled,
    what: &str,
    check: impl Fn(&std::collections::HashMap<String, f64>) -> bool,
) -> std::collections::HashMap<String, f64> {
    let deadline = tokio::time::Instant::now() + DEADLINE;
    loop {
        let samples = metric_samples(proxy).await;
        if check(&samples) {
            return samples;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting until {what}: {samples:?}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}
