//! The optional access log: one JSON line per answered request (time, service, version, role,
//! status, latency, bytes). The request path only `try_send`s into a bounded channel; a
//! dedicated thread formats and writes. A full channel drops the entry and counts it
//! (`sluice_access_log_dropped_total`): logging never slows or blocks a request.

use std::io::{self, BufWriter, Write};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError, SyncSender, TrySendError};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use serde::Serialize;

/// Entries that may wait for the writer; past that they are dropped.
pub const CAPACITY: usize = 16_384;
/// The writer flushes at least this often while entries arrive.
const FLUSH_EVERY: Duration = Duration::from_millis(200);

/// One answered request.
#[derive(Debug)]
pub struct Entry {
    /// When the answer ended.
    pub time: SystemTime,
    /// Service name.
    pub service: Arc<str>,
    /// Version name.
    pub version: Arc<str>,
    /// `primary` or `shadow`.
    pub role: &'static str,
    /// Status sent; `None`: the client got no response.
    pub status: Option<u16>,
    /// From receiving the request to the end of the answer.
    pub latency: Duration,
    /// Response body bytes sent.
    pub bytes: u64,
}

#[derive(Serialize)]
struct Line<'a> {
    time: String,
    service: &'a str,
    version: &'a str,
    role: &'a str,
    status: Option<u16>,
    latency_ms: f64,
    bytes: u64,
}

/// The access log's sending side.
#[derive(Debug)]
pub struct AccessLog {
    tx: SyncSender<Entry>,
    dropped: AtomicU64,
}

impl AccessLog {
    /// Opens `path` for appending (`-`: standard output) and starts the writer thread.
    pub fn open(path: &std::path::Path) -> io::Result<Self> {
        let out: Box<dyn Write + Send> = if path.as_os_str() == "-" {
            Box::new(io::stdout())
        } else {
            Box::new(std::fs::OpenOptions::new().create(true).append(true).open(path)?)
        };
        Self::with_writer(out, CAPACITY)
    }

    /// An access log writing to `out`, with room for `capacity` pending entries.
    pub fn with_writer(out: Box<dyn Write + Send>, capacity: usize) -> io::Result<Self> {
        let (tx, rx) = mpsc::sync_channel::<Entry>(capacity);
        std::thread::Builder::new()
            .name("sluice-access-log".into())
            .spawn(move || {
                let mut out = BufWriter::new(out);
                loop {
                    match rx.recv_timeout(FLUSH_EVERY) {
                        Ok(entry) => {
                            if let Err(error) = write_line(&mut out, &entry) {
                                tracing::warn!(%error, "access log write failed");
                            }
                        }
                        Err(RecvTimeoutError::Timeout) => {
                            let _ = out.flush();
                        }
                        Err(RecvTimeoutError::Disconnected) => {
                            let _ = out.flush();
                            return;
                        }
                    }
                }
            })?;
        Ok(Self {
            tx,
            dropped: AtomicU64::new(0),
        })
    }

    /// Queues `entry`, or drops and counts it if the writer is behind. Never blocks.
    pub fn log(&self, entry: Entry) {
        if let Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) = self.tx.try_send(entry) {
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Entries dropped because the writer was behind.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }
}

fn write_line(out: &mut impl Write, entry: &Entry) -> io::Result<()> {
    let line = Line {
        time: humantime::format_rfc3339_millis(entry.time).to_string(),
        service: &entry.service,
        version: &entry.version,
        role: entry.role,
        status: entry.status,
        latency_ms: entry.latency.as_secs_f64() * 1000.0,
        bytes: entry.bytes,
    };
    serde_json::to_writer(&mut *out, &line)?;
    out.write_all(b"\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A writer that reports when it is entered, then blocks until told to go on, like a full
    /// disk or a stuck pipe.
    struct Stuck {
        entered: std::sync::mpsc::Sender<()>,
        go_on: std::sync::mpsc::Receiver<()>,
    }

    impl Write for Stuck {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            let _ = self.entered.send(());
            let _ = self.go_on.recv();
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    fn entry() -> Entry {
        Entry {
            time: SystemTime::UNIX_EPOCH,
            service: Arc::from("app"),
            version: Arc::from("blue"),
            role: "primary",
            status: Some(200),
            latency: Duration::from_micros(1500),
            bytes: 42,
        }
    }

    #[test]
    fn a_stuck_writer_drops_entries_instead_of_blocking() {
        let (entered, writer_entered) = std::sync::mpsc::channel();
        let (_go_on, go_on) = std::sync::mpsc::channel();
        let log = AccessLog::with_writer(Box::new(Stuck { entered, go_on }), 4).expect("log");
        log.log(entry());
        // The writer flushes that entry within FLUSH_EVERY and gets stuck in `write`.
        writer_entered
            .recv_timeout(Duration::from_secs(20))
            .expect("the writer must flush");
        // Now 4 entries fit in the channel and the rest are dropped. If `log` waited for the
        // writer, this loop would never end.
        for _ in 0..100 {
            log.log(entry());
        }
        assert_eq!(log.dropped(), 96);
    }

    #[test]
    fn lines_are_json() {
        let mut out = Vec::new();
        write_line(&mut out, &entry()).expect("write");
        let line: serde_json::Value = serde_json::from_slice(&out).expect("json");
        assert_eq!(line["time"], "1970-01-01T00:00:00.000Z");
        assert_eq!(
            (
                line["service"].as_str(),
                line["version"].as_str(),
                line["role"].as_str()
            ),
            (Some("app"), Some("blue"), Some("primary"))
        );
        assert_eq!(
            (
                line["status"].as_u64(),
                line["bytes"].as_u64(),
                line["latency_ms"].as_f64()
            ),
            (Some(200), Some(42), Some(1.5))
        );
        assert!(out.ends_with(b"\n"));
    }
}
