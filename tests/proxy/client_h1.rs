//! The client-facing HTTP/1.1 server, byte for byte: pipelining, `Expect: 100-continue`,
//! HTTP/1.0 clients, answers without a body (HEAD, 204, 304), chunked uploads with trailers,
//! answers re-framed for the client, a client that leaves mid-request, `Connection: close`,
//! `Date`, a head sent in small pieces, and a big answer head. The client is a raw socket that
//! reads each answer from what is left after the previous one, so a stray or missing byte
//! between answers fails the test.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{Response, StatusCode};
use http_body::Frame;
use http_body_util::BodyExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::support::*;

/// How an answer's body was delimited on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Framing {
    /// No body by definition: an answer to HEAD, a 1xx, 204 or 304.
    Bodiless,
    Length,
    Chunked,
    /// No length and no coding: the body ran until the connection closed.
    Close,
}

/// One answer as the client read it.
#[derive(Debug)]
struct Answer {
    /// The status line, e.g. `HTTP/1.1 200 OK`.
    status_line: String,
    status: u16,
    /// Header lines in order, names lower-cased, values trimmed.
    headers: Vec<(String, String)>,
    /// The body, with any chunked framing removed.
    body: Vec<u8>,
    /// Trailer lines of a chunked body, names lower-cased.
    trailers: Vec<(String, String)>,
    framing: Framing,
}

impl Answer {
    /// Every value of header `name`.
    fn all(&self, name: &str) -> Vec<&str> {
        self.headers
            .iter()
            .filter(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
            .collect()
    }

    /// The one value of header `name`; fails if it appears more than once.
    fn header(&self, name: &str) -> Option<&str> {
        let values = self.all(name);
        assert!(values.len() <= 1, "{name} more than once: {self:?}");
        values.first().copied()
    }

    fn body(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// A raw HTTP/1.1 client connection; bytes read past one answer are kept for the next.
struct RawClient {
    stream: TcpStream,
    buf: Vec<u8>,
}

impl RawClient {
    async fn connect(addr: SocketAddr) -> Self {
        let stream = TcpStream::connect(addr).await.expect("connect");
        stream.set_nodelay(true).expect("nodelay");
        Self {
            stream,
            buf: Vec::new(),
        }
    }

    async fn send(&mut self, bytes: impl AsRef<[u8]>) {
        self.stream.write_all(bytes.as_ref()).await.expect("write");
    }

    /// Reads more from the proxy; `false` when it closed (or reset) the connection.
    async fn fill(&mut self) -> bool {
        let mut chunk = [0u8; 16 << 10];
        match within("bytes from the proxy", self.stream.read(&mut chunk)).await {
            Ok(0) => false,
            Ok(n) => {
                self.buf.extend_from_slice(&chunk[..n]);
                true
            }
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => false,
            Err(e) => panic!("read: {e}"),
        }
    }

    /// The next CRLF-terminated line, without its CRLF.
    async fn line(&mut self) -> String {
        loop {
            if let Some(end) = self.buf.windows(2).position(|w| w == b"\r\n") {
                let line = String::from_utf8_lossy(&self.buf[..end]).into_owned();
                self.buf.drain(..end + 2);
                return line;
            }
            let more = self.fill().await;
            assert!(more, "closed mid-line: {:?}", String::from_utf8_lossy(&self.buf));
        }
    }

    /// The next `n` bytes.
    async fn take(&mut self, n: usize) -> Vec<u8> {
        while self.buf.len() < n {
            let more = self.fill().await;
            assert!(
                more,
                "closed {} bytes short of {n}: {:?}",
                n - self.buf.len(),
                String::from_utf8_lossy(&self.buf)
            );
        }
        self.buf.drain(..n).collect()
    }

    /// Header (or trailer) lines up to the empty line.
    async fn fields(&mut self) -> Vec<(String, String)> {
        let mut fields = Vec::new();
        loop {
            let line = self.line().await;
            if line.is_empty() {
                return fields;
            }
            let (name, value) = line.split_once(':').unwrap_or_else(|| panic!("not a field: {line:?}"));
            fields.push((name.to_ascii_lowercase(), value.trim().to_owned()));
        }
    }

    /// Reads the next answer (a 1xx included) as a client must frame it (RFC 9112 §6.3);
    /// `to_head`: it answers a HEAD.
    async fn answer(&mut self, to_head: bool) -> Answer {
        let status_line = self.line().await;
        assert!(status_line.starts_with("HTTP/1."), "not a status line: {status_line:?}");
        let status: u16 = status_line
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("no status: {status_line:?}"));
        let headers = self.fields().await;
        let mut answer = Answer {
            status_line,
            status,
            headers,
            body: Vec::new(),
            trailers: Vec::new(),
            framing: Framing::Close,
        };
        let chunked = answer
            .all("transfer-encoding")
            .iter()
            .any(|v| v.to_ascii_lowercase().contains("chunked"));
        let length = answer
            .all("content-length")
            .first()
            .map(|v| v.parse::<usize>().expect("content-length"));
        answer.framing = if to_head || status < 200 || status == 204 || status == 304 {
            Framing::Bodiless
        } else if chunked {
            Framing::Chunked
        } else if length.is_some() {
            Framing::Length
        } else {
            Framing::Close
        };
        match answer.framing {
            Framing::Bodiless => {}
            Framing::Length => answer.body = self.take(length.unwrap_or(0)).await,
            Framing::Chunked => loop {
                let size_line = self.line().await;
                let size = size_line.split(';').next().unwrap_or_default().trim();
                let size = usize::from_str_radix(size, 16).unwrap_or_else(|_| panic!("chunk size: {size_line:?}"));
                if size == 0 {
                    answer.trailers = self.fields().await;
                    break;
                }
                let data = self.take(size).await;
                answer.body.extend_from_slice(&data);
                assert_eq!(self.line().await, "", "chunk of {size} not followed by CRLF");
            },
            Framing::Close => {
                while self.fill().await {}
                answer.body = std::mem::take(&mut self.buf);
            }
        }
        answer
    }

    /// Reads until the proxy closes the connection; fails if it sent anything more.
    async fn expect_closed(&mut self) {
        while self.fill().await {}
        assert!(
            self.buf.is_empty(),
            "more bytes before the close: {:?}",
            String::from_utf8_lossy(&self.buf)
        );
    }
}

/// What an upstream logs of each request: `METHOD PATH`.
type Log = Arc<Mutex<Vec<String>>>;

/// An upstream that logs each request and answers `answer for PATH`.
async fn logging_upstream() -> (Upstream, Log) {
    let log: Log = Arc::default();
    let store = Arc::clone(&log);
    let upstream = Upstream::start(move |request| {
        store
            .lock()
            .expect("log")
            .push(format!("{} {}", request.method(), request.uri().path()));
        let body = format!("answer for {}", request.uri().path());
        async move { Response::new(full(body)) }
    })
    .await;
    (upstream, log)
}

/// An upstream that reads each request body whole and answers `got LEN: BODY`, with the
/// request's `x-tag` and its trailer `x-checksum` (when sent) as answer headers of the same name.
async fn echoing_upstream() -> Upstream {
    Upstream::start(|request| async move {
        let tag = request.headers().get("x-tag").cloned();
        let collected = request.into_body().collect().await.expect("request body");
        let checksum = collected.trailers().and_then(|t| t.get("x-checksum")).cloned();
        let body = collected.to_bytes();
        let mut response = Response::new(full(format!("got {}: {}", body.len(), String::from_utf8_lossy(&body))));
        if let Some(tag) = tag {
            response.headers_mut().insert("x-tag", tag);
        }
        if let Some(checksum) = checksum {
            response.headers_mut().insert("x-checksum", checksum);
        }
        response
    })
    .await
}

fn one_service(upstream: SocketAddr) -> String {
    service("s", "{}", &[("v", &[upstream], 1)])
}

// Pins: pipelined requests (one write) are answered once each, in order, and reach the upstream in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_requests_are_answered_in_order() {
    let (up, log) = logging_upstream().await;
    let proxy = proxy(&one_service(up.addr)).await;
    let mut client = RawClient::connect(proxy.addr).await;
    client
        .send(
            "GET /a HTTP/1.1\r\nHost: s\r\n\r\n\
             GET /bb HTTP/1.1\r\nHost: s\r\n\r\n\
             GET /ccc HTTP/1.1\r\nHost: s\r\nConnection: close\r\n\r\n",
        )
        .await;
    for path in ["/a", "/bb", "/ccc"] {
        let answer = client.answer(false).await;
        assert_eq!(answer.status, 200, "{path}: {answer:?}");
        assert_eq!(answer.body(), format!("answer for {path}"));
    }
    client.expect_closed().await;
    assert_eq!(*log.lock().expect("log"), ["GET /a", "GET /bb", "GET /ccc"]);
    proxy.shutdown().await;
}

// Pins: `Expect: 100-continue` gets `100 Continue` before the body is sent, then the final answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expect_100_continue_is_answered_before_the_body_is_sent() {
    let up = echoing_upstream().await;
    let proxy = proxy(&one_service(up.addr)).await;
    let mut client = RawClient::connect(proxy.addr).await;
    client
        .send("POST /upload HTTP/1.1\r\nHost: s\r\nContent-Length: 11\r\nExpect: 100-continue\r\n\r\n")
        .await;
    let interim = client.answer(false).await;
    assert_eq!(interim.status, 100, "{interim:?}");
    assert!(interim.status_line.starts_with("HTTP/1.1 100"), "{interim:?}");
    client.send("hello world").await;
    let answer = client.answer(false).await;
    assert_eq!(answer.status, 200, "{answer:?}");
    assert_eq!(answer.body(), "got 11: hello world");
    // The connection is still in step: another request on it works.
    client
        .send("POST /again HTTP/1.1\r\nHost: s\r\nContent-Length: 3\r\n\r\nabc")
        .await;
    assert_eq!(client.answer(false).await.body(), "got 3: abc");
    assert_eq!(up.hits(), 2);
    proxy.shutdown().await;
}

// Pins: an HTTP/1.0 request without keep-alive gets one answer, not chunked, then the close.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http10_without_keep_alive_gets_one_answer_then_close() {
    let (up, log) = logging_upstream().await;
    let proxy = proxy(&one_service(up.addr)).await;
    let mut client = RawClient::connect(proxy.addr).await;
    client.send("GET /old HTTP/1.0\r\nHost: s\r\n\r\n").await;
    let answer = client.answer(false).await;
    assert_eq!(answer.status, 200, "{answer:?}");
    assert_eq!(answer.body(), "answer for /old");
    assert_ne!(answer.framing, Framing::Chunked, "{answer:?}");
    assert_eq!(answer.header("transfer-encoding"), None, "{answer:?}");
    assert_ne!(
        answer.header("connection").map(str::to_ascii_lowercase).as_deref(),
        Some("keep-alive"),
        "{answer:?}"
    );
    client.expect_closed().await;
    assert_eq!(*log.lock().expect("log"), ["GET /old"]);
    proxy.shutdown().await;
}

// Pins: an HTTP/1.0 client asking keep-alive is told `connection: keep-alive` and can send more.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
// Fails on the hyper build: the answer is re-versioned to HTTP/1.0 and its `Connection` is
// stripped, so hyper's `fix_keep_alive` turns keep-alive off: no `connection: keep-alive`, then
// the close.
async fn http10_with_keep_alive_keeps_the_connection() {
    let (up, log) = logging_upstream().await;
    let proxy = proxy(&one_service(up.addr)).await;
    let mut client = RawClient::connect(proxy.addr).await;
    for path in ["/first", "/second"] {
        client
            .send(format!(
                "GET {path} HTTP/1.0\r\nHost: s\r\nConnection: keep-alive\r\n\r\n"
            ))
            .await;
        let answer = client.answer(false).await;
        assert_eq!(answer.status, 200, "{answer:?}");
        assert_eq!(answer.body(), format!("answer for {path}"));
        assert_eq!(answer.framing, Framing::Length, "{answer:?}");
        assert_eq!(
            answer.header("connection").map(str::to_ascii_lowercase).as_deref(),
            Some("keep-alive"),
            "{answer:?}"
        );
    }
    // Without keep-alive, the third is the last.
    client.send("GET /third HTTP/1.0\r\nHost: s\r\n\r\n").await;
    assert_eq!(client.answer(false).await.body(), "answer for /third");
    client.expect_closed().await;
    assert_eq!(*log.lock().expect("log"), ["GET /first", "GET /second", "GET /third"]);
    proxy.shutdown().await;
}

// Pins: an answer of unknown length reaches an HTTP/1.0 client whole, delimited by the close, never chunked.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http10_gets_a_streamed_answer_delimited_by_close() {
    let up = Upstream::start(|_| async move {
        let (tx, body) = channel_body(4);
        for part in ["first, ", "second, ", "third"] {
            tx.send(Frame::data(Bytes::from_static(part.as_bytes())))
                .await
                .expect("queue part");
        }
        Response::new(body)
    })
    .await;
    let proxy = proxy(&one_service(up.addr)).await;
    // Asking for keep-alive changes nothing: without a length, only the close ends the body.
    for request in [
        "GET /stream HTTP/1.0\r\nHost: s\r\n\r\n",
        "GET /stream HTTP/1.0\r\nHost: s\r\nConnection: keep-alive\r\n\r\n",
    ] {
        let mut client = RawClient::connect(proxy.addr).await;
        client.send(request).await;
        let answer = client.answer(false).await;
        assert_eq!(answer.status, 200, "{request:?}: {answer:?}");
        assert_eq!(answer.framing, Framing::Close, "{request:?}: {answer:?}");
        assert_eq!(answer.body(), "first, second, third", "{request:?}: no chunk framing");
        assert_eq!(answer.header("transfer-encoding"), None, "{request:?}: {answer:?}");
    }
    assert_eq!(up.hits(), 2);
    proxy.shutdown().await;
}

// Pins: HEAD gets the upstream's content-length and no body bytes; the next GET on the connection is framed right.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn head_has_the_length_but_no_body_and_the_connection_stays_in_step() {
    let (up, log) = logging_upstream().await;
    let proxy = proxy(&one_service(up.addr)).await;
    let mut client = RawClient::connect(proxy.addr).await;
    client.send("HEAD /h HTTP/1.1\r\nHost: s\r\n\r\n").await;
    let head = client.answer(true).await;
    assert_eq!(head.status, 200, "{head:?}");
    let length = "answer for /h".len().to_string();
    assert_eq!(head.header("content-length"), Some(length.as_str()), "{head:?}");
    assert_eq!(head.header("transfer-encoding"), None, "{head:?}");
    // A body sent after the HEAD answer would be read here as the start of the next answer.
    client.send("GET /g HTTP/1.1\r\nHost: s\r\n\r\n").await;
    let get = client.answer(false).await;
    assert_eq!(get.status, 200, "{get:?}");
    assert_eq!(get.body(), "answer for /g");
    assert_eq!(*log.lock().expect("log"), ["HEAD /h", "GET /g"]);
    proxy.shutdown().await;
}

// Pins: 204 and 304 answers carry no body (and 204 no length) and the connection serves the next request.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_content_and_not_modified_have_no_body_and_keep_the_connection() {
    let up = Upstream::start(|request| async move {
        let mut response = Response::new(empty());
        match request.uri().path() {
            "/204" => *response.status_mut() = StatusCode::NO_CONTENT,
            "/304" => {
                *response.status_mut() = StatusCode::NOT_MODIFIED;
                response.headers_mut().insert("etag", "\"v1\"".parse().expect("etag"));
            }
            _ => *response.body_mut() = full("after"),
        }
        response
    })
    .await;
    let proxy = proxy(&one_service(up.addr)).await;
    let mut client = RawClient::connect(proxy.addr).await;
    client.send("DELETE /204 HTTP/1.1\r\nHost: s\r\n\r\n").await;
    let no_content = client.answer(false).await;
    assert_eq!(no_content.status, 204, "{no_content:?}");
    assert_eq!(no_content.header("content-length"), None, "{no_content:?}");
    assert_eq!(no_content.header("transfer-encoding"), None, "{no_content:?}");
    client
        .send("GET /304 HTTP/1.1\r\nHost: s\r\nIf-None-Match: \"v1\"\r\n\r\n")
        .await;
    let not_modified = client.answer(false).await;
    assert_eq!(not_modified.status, 304, "{not_modified:?}");
    assert_eq!(not_modified.header("etag"), Some("\"v1\""), "{not_modified:?}");
    assert_eq!(not_modified.header("transfer-encoding"), None, "{not_modified:?}");
    // A body after either would be read here as the start of the next answer.
    client.send("GET /after HTTP/1.1\r\nHost: s\r\n\r\n").await;
    let after = client.answer(false).await;
    assert_eq!((after.status, after.body()), (200, "after".to_owned()), "{after:?}");
    assert_eq!(up.hits(), 3);
    proxy.shutdown().await;
}

// Pins: a chunked upload (an extension, a trailer) reaches the upstream whole, trailer too; the connection goes on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chunked_upload_with_a_trailer_reaches_the_upstream_whole() {
    let up = echoing_upstream().await;
    let proxy = proxy(&one_service(up.addr)).await;
    let mut client = RawClient::connect(proxy.addr).await;
    client
        .send(
            "POST /up HTTP/1.1\r\nHost: s\r\nTransfer-Encoding: chunked\r\nTrailer: X-Checksum\r\n\r\n\
             5\r\nhello\r\n1;note=space\r\n \r\nA\r\nchunked wo\r\n3\r\nrld\r\n0\r\nX-Checksum: 42\r\n\r\n",
        )
        .await;
    let answer = client.answer(false).await;
    assert_eq!(answer.status, 200, "{answer:?}");
    assert_eq!(answer.body(), "got 19: hello chunked world");
    assert_eq!(
        answer.header("x-checksum"),
        Some("42"),
        "the trailer reached the upstream: {answer:?}"
    );
    // The trailer section was read whole: the next request is read from the right place.
    client
        .send("POST /next HTTP/1.1\r\nHost: s\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n")
        .await;
    let next = client.answer(false).await;
    assert_eq!(next.body(), "got 2: ok", "{next:?}");
    assert_eq!(up.hits(), 2);
    proxy.shutdown().await;
}

// Pins: an answer framed by close reaches an HTTP/1.1 client whole, re-chunked; the client connection stays usable.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_answer_framed_by_close_is_rechunked_and_the_client_connection_kept() {
    let (addr, connections) = raw_upstream(|n, mut stream| async move {
        let mut buf = Vec::new();
        if read_request_head(&mut stream, &mut buf).await.is_some() {
            let _ = stream
                .write_all(b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\n\r\nuntil ")
                .await;
            let _ = stream.write_all(format!("close {n}").as_bytes()).await;
        }
    })
    .await;
    let proxy = proxy(&one_service(addr)).await;
    let mut client = RawClient::connect(proxy.addr).await;
    for n in 0..2 {
        client.send("GET / HTTP/1.1\r\nHost: s\r\n\r\n").await;
        let answer = client.answer(false).await;
        assert_eq!(answer.status, 200, "{answer:?}");
        assert_eq!(answer.framing, Framing::Chunked, "{answer:?}");
        assert_eq!(answer.body(), format!("until close {n}"));
        assert_eq!(answer.header("content-type"), Some("text/plain"));
    }
    assert_eq!(
        connections.load(Ordering::SeqCst),
        2,
        "one upstream connection per answer"
    );
    proxy.shutdown().await;
}

// Pins: a client that closes while its request is held upstream cancels it: the upstream connection is closed at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_leaves_cancels_its_upstream_request() {
    let held = Arc::new(AtomicUsize::new(0));
    let ended = Arc::new(AtomicUsize::new(0));
    let (seen, gone) = (Arc::clone(&held), Arc::clone(&ended));
    let (addr, connections) = raw_upstream(move |_, mut stream| {
        let (seen, gone) = (Arc::clone(&seen), Arc::clone(&gone));
        async move {
            let mut buf = Vec::new();
            while let Some(head) = read_request_head(&mut stream, &mut buf).await {
                if head.starts_with("GET /hold ") {
                    // Never answers; waits for the proxy to give up on the request.
                    seen.fetch_add(1, Ordering::SeqCst);
                    let mut chunk = [0u8; 1024];
                    while matches!(stream.read(&mut chunk).await, Ok(n) if n > 0) {}
                    gone.fetch_add(1, Ordering::SeqCst);
                    return;
                }
                let _ = stream
                    .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nafter")
                    .await;
            }
        }
    })
    .await;
    let proxy = proxy(&one_service(addr)).await;
    let mut leaving = RawClient::connect(proxy.addr).await;
    leaving.send("GET /hold HTTP/1.1\r\nHost: s\r\n\r\n").await;
    wait_until("the upstream holds the request", || held.load(Ordering::SeqCst) == 1).await;
    drop(leaving);
    // Well under the 30 s answer timeout, which would also close it.
    let cancelled = tokio::time::timeout(Duration::from_secs(5), async {
        while ended.load(Ordering::SeqCst) == 0 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;
    assert!(cancelled.is_ok(), "the upstream request outlived its client");
    let mut client = RawClient::connect(proxy.addr).await;
    client.send("GET /later HTTP/1.1\r\nHost: s\r\n\r\n").await;
    let answer = client.answer(false).await;
    assert_eq!((answer.status, answer.body()), (200, "after".to_owned()), "{answer:?}");
    assert_eq!(
        connections.load(Ordering::SeqCst),
        2,
        "the cancelled request's connection is not reused"
    );
    proxy.shutdown().await;
}

// Pins: `Connection: close` gets `connection: close`, then the close; a request pipelined behind it is never served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_close_is_honoured_and_nothing_after_it_is_served() {
    let (up, log) = logging_upstream().await;
    let proxy = proxy(&one_service(up.addr)).await;
    let mut client = RawClient::connect(proxy.addr).await;
    client
        .send("GET /last HTTP/1.1\r\nHost: s\r\nConnection: close\r\n\r\nGET /ignored HTTP/1.1\r\nHost: s\r\n\r\n")
        .await;
    let answer = client.answer(false).await;
    assert_eq!(answer.status, 200, "{answer:?}");
    assert_eq!(answer.body(), "answer for /last");
    assert_eq!(
        answer.header("connection").map(str::to_ascii_lowercase).as_deref(),
        Some("close"),
        "{answer:?}"
    );
    client.expect_closed().await;
    assert_eq!(*log.lock().expect("log"), ["GET /last"]);
    proxy.shutdown().await;
}

/// Whether `value` looks like an IMF-fixdate: `Sun, 06 Nov 1994 08:49:37 GMT`.
fn is_imf_fixdate(value: &str) -> bool {
    let bytes = value.as_bytes();
    value.len() == 29 && bytes[3] == b',' && value.ends_with(" GMT") && bytes[19] == b':' && bytes[22] == b':'
}

// Pins: every answer has exactly one `date`: upstream answers with or without one, and sluice's own 404 and 502.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_answer_has_one_date() {
    // Answers without a `date` of its own.
    let (dateless, _) = raw_upstream(|_, mut stream| async move {
        let mut buf = Vec::new();
        while read_request_head(&mut stream, &mut buf).await.is_some() {
            if stream
                .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 8\r\n\r\ndateless")
                .await
                .is_err()
            {
                return;
            }
        }
    })
    .await;
    let dated = Upstream::named("dated").await;
    let dead = dead_addr().await;
    let services = service("a", "{ hosts: [dateless.test] }", &[("v", &[dateless], 1)])
        + &service("b", "{ hosts: [dated.test] }", &[("v", &[dated.addr], 1)])
        + &service("c", "{ hosts: [dead.test] }", &[("v", &[dead], 1)]);
    let proxy = proxy(&services).await;
    let mut client = RawClient::connect(proxy.addr).await;
    for (host, status, body) in [
        ("dateless.test", 200, "dateless"),
        ("dated.test", 200, "dated"),
        ("nowhere.test", 404, "no service for this host and path\n"),
        ("dead.test", 502, "upstream unavailable\n"),
    ] {
        client.send(format!("GET / HTTP/1.1\r\nHost: {host}\r\n\r\n")).await;
        let answer = client.answer(false).await;
        assert_eq!(
            (answer.status, answer.body().as_str()),
            (status, body),
            "{host}: {answer:?}"
        );
        let date = answer
            .header("date")
            .unwrap_or_else(|| panic!("{host}: no date: {answer:?}"));
        assert!(is_imf_fixdate(date), "{host}: {date:?}");
    }
    proxy.shutdown().await;
}

// Pins: a head that arrives a byte at a time, then in two pieces split inside the blank line, is served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_head_sent_in_small_writes_is_served() {
    let up = echoing_upstream().await;
    let proxy = proxy(&one_service(up.addr)).await;
    let mut client = RawClient::connect(proxy.addr).await;
    let request = b"POST /slow HTTP/1.1\r\nHost: s\r\nX-Tag: small-writes\r\nContent-Length: 5\r\n\r\nhello";
    let blank = request.windows(4).position(|w| w == b"\r\n\r\n").expect("blank line");
    for byte in &request[..30] {
        client.send([*byte]).await;
        tokio::task::yield_now().await;
    }
    client.send(&request[30..blank + 3]).await;
    tokio::task::yield_now().await;
    client.send(&request[blank + 3..]).await;
    let answer = client.answer(false).await;
    assert_eq!(answer.status, 200, "{answer:?}");
    assert_eq!(answer.body(), "got 5: hello");
    assert_eq!(answer.header("x-tag"), Some("small-writes"), "{answer:?}");
    assert_eq!(up.hits(), 1);
    proxy.shutdown().await;
}

// Pins: an upstream answer with a 16 KiB header value reaches the client intact, and the connection goes on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_16k_answer_header_reaches_the_client_intact() {
    let big: String = (0..16 << 10).map(|i| char::from(b'a' + (i % 26) as u8)).collect();
    let value = big.clone();
    let up = Upstream::start(move |_| {
        let value = value.clone();
        async move {
            Response::builder()
                .header("x-big", value)
                .body(full("big"))
                .expect("response")
        }
    })
    .await;
    let proxy = proxy(&one_service(up.addr)).await;
    let mut client = RawClient::connect(proxy.addr).await;
    for _ in 0..2 {
        client.send("GET /big HTTP/1.1\r\nHost: s\r\n\r\n").await;
        let answer = client.answer(false).await;
        assert_eq!((answer.status, answer.body()), (200, "big".to_owned()));
        assert!(answer.header("x-big") == Some(big.as_str()), "x-big arrived damaged");
    }
    assert_eq!(up.hits(), 2);
    proxy.shutdown().await;
}

// ---- Review of the own codec (commit 120fd56) ----

// Pins: `100 Continue` is sent only for a body the proxy is going to read. A request refused
// from its head (413 over `max_request_body`, 404 for no service) gets its final answer first,
// so the client never uploads the body (hyper sent `100` only when the body was first polled).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expect_100_continue_is_not_sent_to_a_request_refused_from_its_head() {
    let (up, _) = logging_upstream().await;
    let proxy = proxy_with(
        &service("s", "{ hosts: [s] }", &[("v", &[up.addr], 1)]),
        "defaults: { max_request_body: 1KiB }",
    )
    .await;
    for (host, length, status) in [("s", 100_000, 413), ("nowhere", 5, 404)] {
        let mut client = RawClient::connect(proxy.addr).await;
        client
            .send(format!(
                "POST /upload HTTP/1.1\r\nHost: {host}\r\nContent-Length: {length}\r\nExpect: 100-continue\r\n\r\n"
            ))
            .await;
        let first = client.answer(false).await;
        assert_eq!(
            first.status, status,
            "{host}: the final answer comes first, no `100 Continue`: {first:?}"
        );
    }
    assert_eq!(up.hits(), 0);
    proxy.shutdown().await;
}

// Pins: a connection that is closed after an answer says so in that answer (`connection:
// close`), or stays usable. Here the body (already sent whole) of a request answered 404
// without reading it: hyper drained such a body and kept the connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_answer_sent_before_the_body_was_read_says_close_or_keeps_the_connection() {
    let (up, log) = logging_upstream().await;
    let proxy = proxy(&service("s", "{ hosts: [s] }", &[("v", &[up.addr], 1)])).await;
    let mut client = RawClient::connect(proxy.addr).await;
    client
        .send("POST /x HTTP/1.1\r\nHost: nowhere\r\nContent-Length: 5\r\n\r\nhello")
        .await;
    let answer = client.answer(false).await;
    assert_eq!(answer.status, 404, "{answer:?}");
    if answer.header("connection").map(str::to_ascii_lowercase).as_deref() != Some("close") {
        // The client was told nothing: it reuses the connection.
        let _ = client.stream.write_all(b"GET /next HTTP/1.1\r\nHost: s\r\n\r\n").await;
        assert!(
            client.fill().await,
            "the proxy closed the connection after an answer without `connection: close`: {answer:?}"
        );
        let next = client.answer(false).await;
        assert_eq!(next.body(), "answer for /next", "{next:?}");
        assert_eq!(*log.lock().expect("log"), ["GET /next"]);
    }
    proxy.shutdown().await;
}

// Pins: a client that closes while its POST (body sent whole) is held upstream cancels it, as a
// bodiless request does (`a_client_that_leaves_cancels_its_upstream_request`) and as hyper did.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_leaves_cancels_its_held_post() {
    let held = Arc::new(AtomicUsize::new(0));
    let ended = Arc::new(AtomicUsize::new(0));
    let (seen, gone) = (Arc::clone(&held), Arc::clone(&ended));
    let (addr, _) = raw_upstream(move |_, mut stream| {
        let (seen, gone) = (Arc::clone(&seen), Arc::clone(&gone));
        async move {
            let mut buf = Vec::new();
            if read_request_head(&mut stream, &mut buf).await.is_some() {
                // Reads the body (and anything else), never answers.
                while buf.len() < 5 {
                    let mut chunk = [0u8; 1024];
                    match stream.read(&mut chunk).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                }
                seen.fetch_add(1, Ordering::SeqCst);
                let mut chunk = [0u8; 1024];
                while matches!(stream.read(&mut chunk).await, Ok(n) if n > 0) {}
                gone.fetch_add(1, Ordering::SeqCst);
            }
        }
    })
    .await;
    let proxy = proxy(&one_service(addr)).await;
    let mut leaving = RawClient::connect(proxy.addr).await;
    leaving
        .send("POST /hold HTTP/1.1\r\nHost: s\r\nContent-Length: 5\r\n\r\nhello")
        .await;
    wait_until("the upstream holds the request and its body", || {
        held.load(Ordering::SeqCst) == 1
    })
    .await;
    drop(leaving);
    // Well under the 30 s answer timeout, which would also close it.
    let cancelled = tokio::time::timeout(Duration::from_secs(5), async {
        while ended.load(Ordering::SeqCst) == 0 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;
    assert!(cancelled.is_ok(), "the upstream POST outlived its client");
    proxy.shutdown().await;
}

// Pins: a client that closes in the middle of a streamed answer that has stalled (server-sent
// events, a long poll) releases the upstream at once. hyper noticed the close while it waited
// for the next frame of the body (`mid_message_detect_eof`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_leaves_a_stalled_streamed_answer_releases_the_upstream() {
    let senders: Arc<Mutex<Vec<tokio::sync::mpsc::Sender<Frame<Bytes>>>>> = Arc::default();
    let keep = Arc::clone(&senders);
    let up = Upstream::start(move |_| {
        let keep = Arc::clone(&keep);
        async move {
            let (tx, body) = channel_body(4);
            tx.send(Frame::data(Bytes::from_static(b"event: first\n\n")))
                .await
                .expect("queue first event");
            keep.lock().expect("senders").push(tx);
            Response::new(body)
        }
    })
    .await;
    let proxy = proxy(&one_service(up.addr)).await;
    let mut client = RawClient::connect(proxy.addr).await;
    client.send("GET /events HTTP/1.1\r\nHost: s\r\n\r\n").await;
    assert!(client.line().await.starts_with("HTTP/1.1 200"));
    let fields = client.fields().await;
    assert!(
        fields.iter().any(|(n, v)| n == "transfer-encoding" && v == "chunked"),
        "{fields:?}"
    );
    client.line().await;
    assert_eq!(client.take(14).await, b"event: first\n\n");
    assert_eq!(up.open_connections(), 1);
    drop(client);
    let released = tokio::time::timeout(Duration::from_secs(5), async {
        while up.open_connections() != 0 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;
    assert!(
        released.is_ok(),
        "the stalled answer still holds its upstream connection after the client left"
    );
    drop(senders);
    proxy.shutdown().await;
}

// Pins: on shutdown, a connection idle between requests closes at once, even when the client
// followed its last body with a stray CRLF (RFC 9112 §2.2: a server ignores empty lines before
// a request line). hyper counted it as idle and closed it; the own codec waits for a head until
// `request_headers` runs out, holding the drain.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_closes_a_connection_idle_after_a_stray_crlf() {
    let up = echoing_upstream().await;
    let proxy = proxy_with(
        &one_service(up.addr),
        "defaults: { timeouts: { request_headers: 60s, drain: 60s } }",
    )
    .await;
    let mut client = RawClient::connect(proxy.addr).await;
    client
        .send("POST /a HTTP/1.1\r\nHost: s\r\nContent-Length: 5\r\n\r\nhello\r\n")
        .await;
    let answer = client.answer(false).await;
    assert_eq!(answer.body(), "got 5: hello", "{answer:?}");
    let stopping = tokio::spawn(proxy.shutdown());
    let closed = tokio::time::timeout(Duration::from_secs(5), client.expect_closed()).await;
    assert!(
        closed.is_ok(),
        "an idle connection (a stray CRLF after its last request) outlived the shutdown"
    );
    stopping.await.expect("shutdown");
}

// Pins: a request line naming another HTTP version gets `505` and a close; nothing reaches the upstream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_http_version_gets_505() {
    let (up, log) = logging_upstream().await;
    let proxy = proxy(&one_service(up.addr)).await;
    for line in ["GET / HTTP/1.2", "GET / HTTP/2.0", "GET / HTTP/3"] {
        let mut client = RawClient::connect(proxy.addr).await;
        client.send(format!("{line}\r\nHost: s\r\n\r\n")).await;
        let answer = client.answer(false).await;
        assert_eq!(answer.status, 505, "{line}: {answer:?}");
        assert_eq!(answer.header("connection"), Some("close"), "{line}");
        client.expect_closed().await;
    }
    assert!(log.lock().expect("log").is_empty(), "{:?}", log.lock().expect("log"));
    proxy.shutdown().await;
}

// Pins: an upstream's trailers reach a client that sent `TE: trailers`, and only such a client.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answer_trailers_go_to_clients_that_accept_them() {
    let (upstream, _) = raw_upstream(|_, mut stream| async move {
        let mut buf = Vec::new();
        while read_request_head(&mut stream, &mut buf).await.is_some() {
            let answer = "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\ntrailer: x-digest\r\n\r\n\
                4\r\ndata\r\n0\r\nx-digest: abc\r\n\r\n";
            if stream.write_all(answer.as_bytes()).await.is_err() {
                return;
            }
        }
    })
    .await;
    let proxy = proxy(&one_service(upstream)).await;
    let mut client = RawClient::connect(proxy.addr).await;
    for (te, want) in [
        ("TE: trailers\r\n", vec![("x-digest".to_owned(), "abc".to_owned())]),
        ("", vec![]),
    ] {
        client.send(format!("GET / HTTP/1.1\r\nHost: s\r\n{te}\r\n")).await;
        let answer = client.answer(false).await;
        assert_eq!(
            (answer.status, answer.framing),
            (200, Framing::Chunked),
            "{te:?}: {answer:?}"
        );
        assert_eq!(answer.body(), "data", "{te:?}");
        assert_eq!(answer.trailers, want, "{te:?}");
    }
    proxy.shutdown().await;
}

// Pins: the head timeout counts again from each answer: a connection that sends nothing after an
// answer is closed (the per-connection timer, armed for the first head, is moved, not lost).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_idle_after_an_answer_is_closed_by_the_head_timeout() {
    let (up, _) = logging_upstream().await;
    let proxy = proxy_with(
        &one_service(up.addr),
        "defaults: { timeouts: { request_headers: 300ms } }",
    )
    .await;
    let mut client = RawClient::connect(proxy.addr).await;
    for path in ["/a", "/b"] {
        client.send(format!("GET {path} HTTP/1.1\r\nHost: s\r\n\r\n")).await;
        assert_eq!(client.answer(false).await.body(), format!("answer for {path}"));
    }
    within("the idle connection is closed", client.expect_closed()).await;
    proxy.shutdown().await;
}
