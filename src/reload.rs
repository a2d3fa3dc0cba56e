//! Hot reload: the config file is watched and re-read on change, on SIGHUP, and on
//! `POST /api/v1/reload` (see [`crate::admin`]). SIGHUP also re-reads TLS certificates, which
//! [`crate::tls`] otherwise watches on its own.
//!
//! The watch is on the file's directory, not the file: editors that save by writing a new
//! file and renaming it over the old one, and Kubernetes ConfigMaps that swap a `..data`
//! symlink, replace the inode a file watch would follow. Events are debounced, then the file
//! is re-read; [`Control::reload`] ignores content that did not change and keeps the running
//! table when the new content is invalid.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use notify::{RecursiveMode, Watcher};
use tokio::sync::mpsc;

use crate::control::Control;
#[cfg(unix)]
use crate::tls::Terminator;

/// Quiet time after the last event before the file is read: long enough for an editor or a
/// ConfigMap update to finish writing.
const DEBOUNCE: Duration = Duration::from_millis(100);

/// Watches `path`'s directory and reloads `control` after changes, for as long as the
/// returned watcher lives.
pub fn watch(control: Arc<Control>, path: &Path) -> notify::Result<notify::RecommendedWatcher> {
    let dir: PathBuf = match path.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent.to_owned(),
        _ => PathBuf::from("."),
    };
    let (tx, mut rx) = mpsc::channel::<()>(1);
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| match event {
        // A full channel already holds a pending reload: nothing to add.
        Ok(event) if !event.kind.is_access() => {
            let _ = tx.try_send(());
        }
        Ok(_) => {}
        Err(error) => tracing::warn!(%error, "config watcher error"),
    })?;
    watcher.watch(&dir, RecursiveMode::NonRecursive)?;
    tokio::spawn(async move {
        while rx.recv().await.is_some() {
            // Debounce: wait until events stop arriving for DEBOUNCE.
            while tokio::time::timeout(DEBOUNCE, rx.recv())
                .await
                .is_ok_and(|e| e.is_some())
            {}
            reload(&control, "reload (file watch)").await;
        }
    });
    Ok(watcher)
}

/// Listens for SIGHUP. Call this before anything else at start: until a handler is installed
/// SIGHUP's default action ends the process, and signals that arrive before [`on_sighup`] polls
/// the stream are kept.
#[cfg(unix)]
pub fn listen_for_sighup() -> std::io::Result<tokio::signal::unix::Signal> {
    tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
}

/// Reloads the configuration, and the certificates of `tls` listeners, on every SIGHUP `hangup`
/// delivers, until the process ends.
#[cfg(unix)]
pub fn on_sighup(control: Arc<Control>, tls: Vec<Arc<Terminator>>, mut hangup: tokio::signal::unix::Signal) {
    tokio::spawn(async move {
        while hangup.recv().await.is_some() {
            reload(&control, "reload (SIGHUP)").await;
            let tls = tls.clone();
            let _ = tokio::task::spawn_blocking(move || {
                for terminator in &tls {
                    terminator.reload();
                }
            })
            .await;
        }
    });
}

/// Runs a reload off the async threads (it reads and fsyncs files); outcomes are logged by
/// the control plane.
async fn reload(control: &Arc<Control>, actor: &'static str) {
    let control = Arc::clone(control);
    let _ = tokio::task::spawn_blocking(move || control.reload(actor)).await;
}
