//! Pipelined HTTP/1.1 for shadow copies: complete requests written in batches, several to a
//! `write`, and their answers read back in order, several to a `read`.
//!
//! A copy is fire-and-forget: nobody waits for it, so it can wait a moment for others to share
//! its system calls. One dispatcher task per endpoint takes every copy queued since it last ran
//! as one batch and hands the batch to a connection with nothing outstanding, or opens one (up
//! to [`MAX_CONNECTIONS`]); only when all of those are busy does a batch queue behind answers
//! still due. Each connection is one task: a writer and a reader over the two halves of the
//! stream, so a shadow that is slow to read never stops its answers being read.
//!
//! Answers are framed as RFC 9112 §6.3 says (no body for `HEAD`, 1xx, 204 and 304;
//! `Transfer-Encoding: chunked`; `Content-Length`; otherwise until close), with `httparse` for the
//! head and chunk sizes. A server that answers `Connection: close` has not read the requests
//! behind that answer: they are sent again, once, and the endpoint's later copies go one to a
//! connection. An answer that takes longer than the copy's `response` timeout, a reset or a
//! malformed answer fails the connection's outstanding copies.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use http::StatusCode;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::{mpsc, Notify};
use tokio::time::Instant;

use super::framing::{self, Framing, Step, MAX_HEAD, MAX_HEADERS};
use super::Endpoint;
use crate::config::Limits;
use crate::mirror::BodyHash;

/// Connections per endpoint; past this, batches queue behind outstanding answers.
const MAX_CONNECTIONS: usize = 128;
/// Most copies written together: bounds how long one copy waits behind the others' answers.
const MAX_BATCH: usize = 32;

/// One complete request to send, and what to do with its answer.
pub struct Job {
    /// The request as it goes on the wire: head and body.
    pub request: Bytes,
    /// A `HEAD` request: its answer has no body.
    pub head: bool,
    /// Whether to hash the answer's body.
    pub hash: bool,
    /// Timeouts: `connect`, `response_headers` (for the whole answer, from when the server
    /// can start on it) and `idle` (for the connection).
    pub limits: Limits,
    /// Called once, with the answer or `None` when there is none.
    pub done: Box<dyn FnOnce(Option<Answer>) + Send>,
    /// Sent again after a server closed before reading it.
    resent: bool,
}

impl Job {
    /// A job for `request`, calling `done` with its answer.
    pub fn new(
        request: Bytes,
        head: bool,
        hash: bool,
        limits: Limits,
        done: Box<dyn FnOnce(Option<Answer>) + Send>,
    ) -> Self {
        Self {
            request,
            head,
            hash,
            limits,
            done,
            resent: false,
        }
    }
}

impl std::fmt::Debug for Job {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Job")
            .field("len", &self.request.len())
            .finish_non_exhaustive()
    }
}

/// A complete answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Answer {
    /// Final status.
    pub status: StatusCode,
    /// Body length, after chunked decoding.
    pub bytes: u64,
    /// Hash of the body, if asked.
    pub hash: Option<u64>,
    /// From when the server could start on this request (it was written, and the answer
    /// before it on the connection was complete) to its answer's end: the server's time,
    /// without the time spent queued behind other answers.
    pub latency: Duration,
}

/// The sending side of an endpoint's pipeline.
#[derive(Debug)]
pub struct Pipeline {
    jobs: mpsc::UnboundedSender<Job>,
}

impl Pipeline {
    /// Starts the dispatcher for `endpoint` on the current runtime.
    pub(super) fn start(endpoint: Weak<Endpoint>) -> Self {
        let (jobs, queue) = mpsc::unbounded_channel();
        let shared = Arc::new(Shared {
            endpoint,
            requeue: jobs.downgrade(),
            one_per_connection: AtomicBool::new(false),
        });
        tokio::spawn(dispatch(shared, queue));
        Self { jobs }
    }

    /// Queues `job`. The caller bounds how many are queued (a mirror's `max_in_flight`).
    pub fn send(&self, job: Job) {
        if let Err(mpsc::error::SendError(job)) = self.jobs.send(job) {
            (job.done)(None);
        }
    }
}

/// What the dispatcher and its connections share.
struct Shared {
    endpoint: Weak<Endpoint>,
    /// Where copies a server did not read go back to.
    requeue: mpsc::WeakUnboundedSender<Job>,
    /// The server closed a connection with copies behind the answer: it does not keep
    /// connections open, so each copy gets its own.
    one_per_connection: AtomicBool,
}

impl Shared {
    /// Sends a copy the server never read once more; fails it the second time.
    fn resend(&self, mut job: Job) {
        if job.resent {
            return (job.done)(None);
        }
        job.resent = true;
        match self.requeue.upgrade() {
            Some(jobs) => {
                if let Err(mpsc::error::SendError(job)) = jobs.send(job) {
                    (job.done)(None);
                }
            }
            None => (job.done)(None),
        }
    }
}

/// A connection as the dispatcher sees it.
struct Connection {
    batches: mpsc::UnboundedSender<Vec<Job>>,
    outstanding: Arc<AtomicUsize>,
}

async fn dispatch(shared: Arc<Shared>, mut queue: mpsc::UnboundedReceiver<Job>) {
    let mut connections: Vec<Connection> = Vec::new();
    while let Some(first) = queue.recv().await {
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match queue.try_recv() {
                Ok(job) => batch.push(job),
                Err(_) => break,
            }
        }
        connections.retain(|c| !c.batches.is_closed());
        if shared.one_per_connection.load(Ordering::Relaxed) {
            for job in batch {
                open(&shared, &mut connections, vec![job]);
            }
            continue;
        }
        let least = connections.iter().min_by_key(|c| c.outstanding.load(Ordering::Relaxed));
        match least {
            Some(c) if c.outstanding.load(Ordering::Relaxed) == 0 || connections.len() >= MAX_CONNECTIONS => {
                c.outstanding.fetch_add(batch.len(), Ordering::Relaxed);
                if let Err(mpsc::error::SendError(batch)) = c.batches.send(batch) {
                    // It closed since `retain`: a new connection takes the batch.
                    c.outstanding.fetch_sub(batch.len(), Ordering::Relaxed);
                    open(&shared, &mut connections, batch);
                }
            }
            _ => open(&shared, &mut connections, batch),
        }
    }
}

/// Opens a connection in its own task, which sends `first` once connected.
fn open(shared: &Arc<Shared>, connections: &mut Vec<Connection>, first: Vec<Job>) {
    let (batches, rx) = mpsc::unbounded_channel();
    let outstanding = Arc::new(AtomicUsize::new(first.len()));
    tokio::spawn(connection(Arc::clone(shared), first, rx, Arc::clone(&outstanding)));
    connections.push(Connection { batches, outstanding });
}

/// A copy written and waiting for its answer.
struct Pending {
    job: Job,
    /// When it was written.
    sent: Instant,
}

/// One connection's life: connect, then write batches and read answers until the server
/// closes, an answer is malformed or overdue (`response_headers` from when the server could
/// start on it), or the connection stays idle past `idle`.
async fn connection(
    shared: Arc<Shared>,
    first: Vec<Job>,
    mut batches: mpsc::UnboundedReceiver<Vec<Job>>,
    outstanding: Arc<AtomicUsize>,
) {
    let Some(limits) = first.first().map(|j| j.limits) else {
        return;
    };
    let idle = limits.idle;
    let io = match shared.endpoint.upgrade() {
        Some(endpoint) => endpoint.open(limits.connect).await.ok(),
        None => None,
    };
    let Some(io) = io else {
        // Nothing was written: every job here fails (a connect failure is the shadow's).
        batches.close();
        first.into_iter().for_each(|j| (j.done)(None));
        while let Ok(batch) = batches.try_recv() {
            batch.into_iter().for_each(|j| (j.done)(None));
        }
        return;
    };
    let (mut reader, mut writer) = tokio::io::split(io);
    let pending: Mutex<VecDeque<Pending>> = Mutex::new(VecDeque::new());
    let written = Notify::new();
    let done = |job: Job, answer: Option<Answer>| {
        outstanding.fetch_sub(1, Ordering::Relaxed);
        (job.done)(answer);
    };

    let write = async {
        let mut next = Some(first);
        loop {
            let batch = match next.take() {
                Some(batch) => batch,
                None => match batches.recv().await {
                    Some(batch) => batch,
                    // The endpoint is gone: answer what is outstanding, write nothing more.
                    None => return std::future::pending::<()>().await,
                },
            };
            let out = match batch.as_slice() {
                [one] => one.request.clone(),
                many => {
                    let mut out = BytesMut::with_capacity(many.iter().map(|j| j.request.len()).sum());
                    many.iter().for_each(|j| out.extend_from_slice(&j.request));
                    out.freeze()
                }
            };
            {
                let now = Instant::now();
                let mut pending = lock(&pending);
                pending.extend(batch.into_iter().map(|job| Pending { job, sent: now }));
            }
            written.notify_one();
            // A writer may buffer until flushed (AsyncWrite contract).
            if writer.write_all(&out).await.is_err() || writer.flush().await.is_err() {
                return;
            }
        }
    };

    let read = async {
        let mut buf = BytesMut::with_capacity(8 << 10);
        let mut answer = Reading::default();
        // The answer before the current one ended here: the server's clock for the next starts.
        let mut previous_end = Instant::now();
        // One timer for the connection, moved rather than made anew for every read.
        let timer = tokio::time::sleep_until(previous_end + idle);
        tokio::pin!(timer);
        loop {
            // Parse all complete answers in the buffer.
            loop {
                let (head, hash, started) = match lock(&pending).front() {
                    Some(p) => (p.job.head, p.job.hash, p.sent.max(previous_end)),
                    None => break,
                };
                match answer.advance(&mut buf, head, hash) {
                    Progress::More => break,
                    Progress::Invalid => return Ended::Failed,
                    Progress::Done { answer: a, close } => {
                        let now = Instant::now();
                        let Some(p) = lock(&pending).pop_front() else {
                            return Ended::Failed;
                        };
                        done(
                            p.job,
                            Some(Answer {
                                latency: now - started,
                                ..a
                            }),
                        );
                        previous_end = now;
                        answer = Reading::default();
                        if close {
                            // The server read nothing behind this answer.
                            if !lock(&pending).is_empty() {
                                shared.one_per_connection.store(true, Ordering::Relaxed);
                            }
                            return Ended::Unread;
                        }
                    }
                }
            }
            let deadline = match lock(&pending).front() {
                Some(p) => p.sent.max(previous_end) + p.job.limits.response_headers,
                None => previous_end + idle,
            };
            if buf.capacity() - buf.len() < 4096 {
                buf.reserve(8 << 10);
            }
            if timer.deadline() != deadline {
                timer.as_mut().reset(deadline);
            }
            let read = tokio::select! {
                read = reader.read_buf(&mut buf) => read,
                () = written.notified() => continue,
                () = &mut timer => {
                    // Idle past the limit, or an answer overdue.
                    return if lock(&pending).is_empty() { Ended::Unread } else { Ended::Failed };
                }
            };
            if let Ok(n) = read.as_ref() {
                if *n > 0 {
                    continue;
                }
            }
            // Closed or reset: a body that runs until close ends here.
            let front = lock(&pending).pop_front();
            let Some(front) = front else { return Ended::Unread };
            if let (Ok(_), Some(a)) = (read, answer.at_close()) {
                let latency = Instant::now() - front.sent.max(previous_end);
                done(front.job, Some(Answer { latency, ..a }));
                return Ended::Unread;
            }
            if answer.started() || !buf.is_empty() {
                done(front.job, None);
                return Ended::Failed;
            }
            // Nothing of its answer came: the server closed without reading it (an idle
            // connection it was closing as the copy went out), or crashed on it.
            lock(&pending).push_front(front);
            return Ended::Unread;
        }
    };

    let ended = tokio::select! {
        () = write => Ended::Failed,
        ended = read => ended,
    };
    // The connection is finished: nothing more is taken; what it held is resent (once) if the
    // server cannot have read it, failed otherwise.
    batches.close();
    let mut left: Vec<Job> = lock(&pending).drain(..).map(|p| p.job).collect();
    while let Ok(batch) = batches.try_recv() {
        left.extend(batch);
    }
    for job in left {
        outstanding.fetch_sub(1, Ordering::Relaxed);
        match ended {
            Ended::Unread => shared.resend(job),
            Ended::Failed => (job.done)(None),
        }
    }
}

/// How a connection ended, for the copies it still held.
#[derive(Debug, Clone, Copy)]
enum Ended {
    /// The server has not read them.
    Unread,
    /// It may have: they fail.
    Failed,
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Where the parser is in one answer.
#[derive(Debug, Default)]
struct Reading {
    /// The final status and how the body is framed, once the head is read.
    head: Option<(StatusCode, Framing, bool)>,
    bytes: u64,
    hasher: Option<BodyHash>,
}

enum Progress {
    /// The buffer holds no complete answer yet.
    More,
    /// The answer is not HTTP/1.1 we can frame: the connection is unusable.
    Invalid,
    Done {
        answer: Answer,
        close: bool,
    },
}

impl Reading {
    /// Consumes what it can of `buf` for the current answer.
    fn advance(&mut self, buf: &mut BytesMut, head_request: bool, hash: bool) -> Progress {
        loop {
            let Some((status, framing, close)) = self.head else {
                match parse_head(buf, head_request) {
                    Ok(Some((n, status, framing, close))) => {
                        buf.advance(n);
                        if status.is_informational() {
                            // 100 Continue, 103 Early Hints: the final answer follows.
                            continue;
                        }
                        self.head = Some((status, framing, close));
                        self.hasher = hash.then(BodyHash::default);
                        continue;
                    }
                    Ok(None) if buf.len() > MAX_HEAD => return Progress::Invalid,
                    Ok(None) => return Progress::More,
                    Err(()) => return Progress::Invalid,
                }
            };
            let mut next = framing;
            let step = next.step(buf);
            self.set_framing(next);
            match step {
                Step::Data(data) => self.data(&data),
                Step::End(_) => return self.finish(status, close),
                Step::More => return Progress::More,
                Step::Invalid => return Progress::Invalid,
            }
        }
    }

    fn set_framing(&mut self, framing: Framing) {
        if let Some(head) = self.head.as_mut() {
            head.1 = framing;
        }
    }

    fn data(&mut self, data: &[u8]) {
        self.bytes += data.len() as u64;
        if let Some(h) = self.hasher.as_mut() {
            h.update(data);
        }
    }

    fn finish(&mut self, status: StatusCode, close: bool) -> Progress {
        Progress::Done {
            answer: Answer {
                status,
                bytes: self.bytes,
                hash: self.hasher.map(BodyHash::finish),
                latency: Duration::ZERO,
            },
            close,
        }
    }

    /// Whether any of the answer has been read.
    fn started(&self) -> bool {
        self.head.is_some()
    }

    /// The server closed: complete only if the body runs until close.
    fn at_close(&self) -> Option<Answer> {
        match self.head {
            Some((status, Framing::UntilClose, _)) => Some(Answer {
                status,
                bytes: self.bytes,
                hash: self.hasher.map(BodyHash::finish),
                latency: Duration::ZERO,
            }),
            _ => None,
        }
    }
}

/// Parses an answer head: its length, status, body framing and whether the server closes after
/// it. `Ok(None)`: incomplete.
fn parse_head(buf: &[u8], head_request: bool) -> Result<Option<(usize, StatusCode, Framing, bool)>, ()> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut response = httparse::Response::new(&mut headers);
    let n = match response.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(_) => return Err(()),
    };
    let status = framing::status(&response)?;
    if status == StatusCode::SWITCHING_PROTOCOLS {
        // Nothing asked to switch.
        return Err(());
    }
    let (framing, close) = framing::of(&response, status, head_request)?;
    Ok(Some((n, status, framing, close)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_all(wire: &[u8], head: bool) -> Vec<(u16, u64, bool)> {
        let mut buf = BytesMut::from(wire);
        let mut reading = Reading::default();
        let mut out = Vec::new();
        loop {
            match reading.advance(&mut buf, head, true) {
                Progress::Done { answer, close } => {
                    out.push((answer.status.as_u16(), answer.bytes, close));
                    reading = Reading::default();
                }
                Progress::More => break,
                Progress::Invalid => {
                    out.push((0, 0, true));
                    break;
                }
            }
        }
        out
    }

    #[test]
    fn frames_pipelined_answers() {
        let wire = b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nabc\
            HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 204 No Content\r\n\r\n\
            HTTP/1.1 404 Not Found\r\nTransfer-Encoding: chunked\r\n\r\n3;x=y\r\nabc\r\n2\r\nde\r\n0\r\nT: 1\r\n\r\n\
            HTTP/1.1 304 Not Modified\r\nContent-Length: 10\r\n\r\n\
            HTTP/1.1 500 Oops\r\nConnection: close\r\nContent-Length: 1\r\n\r\nx";
        assert_eq!(
            parse_all(wire, false),
            [
                (200, 3, false),
                (204, 0, false),
                (404, 5, false),
                (304, 0, false),
                (500, 1, true)
            ]
        );
    }

    #[test]
    fn answers_split_at_every_byte_parse_the_same() {
        let wire: &[u8] = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n\
            HTTP/1.1 201 Created\r\nContent-Length: 2\r\n\r\nok";
        for cut in 0..wire.len() {
            let mut buf = BytesMut::new();
            let mut reading = Reading::default();
            let mut out = Vec::new();
            for part in [&wire[..cut], &wire[cut..]] {
                buf.extend_from_slice(part);
                loop {
                    match reading.advance(&mut buf, false, false) {
                        Progress::Done { answer, .. } => {
                            out.push((answer.status.as_u16(), answer.bytes));
                            reading = Reading::default();
                        }
                        Progress::More => break,
                        Progress::Invalid => panic!("cut at {cut}: invalid"),
                    }
                }
            }
            assert_eq!(out, [(200, 3), (201, 2)], "cut at {cut}");
        }
    }

    #[test]
    fn head_answers_have_no_body_and_bad_framing_is_refused() {
        assert_eq!(
            parse_all(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n", true),
            [(200, 0, false)]
        );
        // Two lengths that disagree, a bad chunk size, garbage, a switch nobody asked for.
        for wire in [
            &b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n"[..],
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
            b"SSH-2.0-OpenSSH\r\n\r\n",
            b"HTTP/1.1 101 Switching Protocols\r\n\r\n",
        ] {
            assert_eq!(
                parse_all(wire, false),
                [(0, 0, true)],
                "{:?}",
                String::from_utf8_lossy(wire)
            );
        }
        // No length: the body runs until the server closes.
        let mut buf = BytesMut::from(&b"HTTP/1.0 200 OK\r\n\r\nabcdef"[..]);
        let mut reading = Reading::default();
        assert!(matches!(reading.advance(&mut buf, false, false), Progress::More));
        assert_eq!(reading.at_close().map(|a| a.bytes), Some(6));
    }
}
