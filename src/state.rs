//! What survives a restart, in `state_dir`: `state.json` (revision counter, weight and flag
//! overrides, rollouts), rewritten atomically on every change (write, fsync, rename, fsync the
//! directory), and `history.jsonl`, an append-only log with one routing-table revision a line.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::control::HistoryEntry;
use crate::table::Overrides;

const STATE_FILE: &str = "state.json";
const HISTORY_FILE: &str = "history.jsonl";
/// History entries kept in memory, reachable by `revert`, and kept by a compaction of the file.
pub const HISTORY_KEPT: usize = 1000;

/// The part of the control state that is not in the config file. Unknown fields are ignored,
/// so an older binary can still start from a file a newer one wrote.
#[derive(Debug, Default, Clone, Serialize, Deserialize)]
pub struct SavedState {
    /// The last revision published.
    pub revision: u64,
    /// Manual weight overrides in force (a rollout's weights are its service's override).
    #[serde(default)]
    pub overrides: Overrides,
    /// Each service's rollout, active or finished.
    #[serde(default)]
    pub rollouts: std::collections::BTreeMap<String, crate::rollout::RolloutState>,
    /// Feature flag overrides in force (admin `PUT .../flags/{flag}`).
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub flags: crate::flags::FlagOverrides,
}

/// The files in `state_dir`.
#[derive(Debug)]
pub struct StateStore {
    dir: PathBuf,
}

impl StateStore {
    /// Opens (creating if needed) `dir`, returning the saved state and every history entry.
    pub fn open(dir: &Path) -> io::Result<(Self, SavedState, Vec<HistoryEntry>)> {
        fs::create_dir_all(dir)?;
        let store = Self { dir: dir.to_owned() };
        let state = match fs::read(store.dir.join(STATE_FILE)) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| {
                io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("{}: {e}", dir.join(STATE_FILE).display()),
                )
            })?,
            Err(e) if e.kind() == io::ErrorKind::NotFound => SavedState::default(),
            Err(e) => return Err(e),
        };
        let history = store.open_history()?;
        Ok((store, state, history))
    }

    /// Reads `history.jsonl`: cuts off a last line torn by a crash (so the next append starts
    /// on a line of its own), and rewrites the file with the newest [`HISTORY_KEPT`] entries
    /// once it holds more than twice that.
    fn open_history(&self) -> io::Result<Vec<HistoryEntry>> {
        let path = self.dir.join(HISTORY_FILE);
        let mut bytes = match fs::read(&path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(e),
        };
        if !bytes.is_empty() && !bytes.ends_with(b"\n") {
            let keep = bytes.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
            tracing::warn!(
                dropped_bytes = bytes.len() - keep,
                "history.jsonl ends in a torn line; cutting it off"
            );
            bytes.truncate(keep);
            OpenOptions::new().write(true).open(&path)?.set_len(keep as u64)?;
        }
        let mut entries = read_history(&bytes);
        if entries.len() > 2 * HISTORY_KEPT {
            entries.drain(..entries.len() - HISTORY_KEPT);
            let mut text = Vec::new();
            for entry in &entries {
                serde_json::to_writer(&mut text, entry).map_err(io::Error::other)?;
                text.push(b'\n');
            }
            self.replace(HISTORY_FILE, &text)?;
        }
        Ok(entries)
    }

    /// Replaces `name` atomically: write a temporary file, fsync, rename, fsync the directory.
    fn replace(&self, name: &str, bytes: &[u8]) -> io::Result<()> {
        let tmp = self.dir.join(format!("{name}.tmp"));
        let mut file = File::create(&tmp)?;
        file.write_all(bytes)?;
        file.sync_all()?;
        drop(file);
        fs::rename(&tmp, self.dir.join(name))?;
        File::open(&self.dir)?.sync_all()
    }

    /// Replaces `state.json` atomically: a crash leaves the old file or the new one, whole.
    pub fn save(&self, state: &SavedState) -> io::Result<()> {
        self.replace(STATE_FILE, &serde_json::to_vec_pretty(state).map_err(io::Error::other)?)
    }

    /// Appends one entry to `history.jsonl` and syncs it.
    pub fn append(&self, entry: &HistoryEntry) -> io::Result<()> {
        let mut line = serde_json::to_vec(entry).map_err(io::Error::other)?;
        line.push(b'\n');
        let mut file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join(HISTORY_FILE))?;
        file.write_all(&line)?;
        file.sync_data()
    }
}

/// Parses history lines, skipping (and logging) any that do not parse.
fn read_history(bytes: &[u8]) -> Vec<HistoryEntry> {
    let mut entries = Vec::new();
    for (number, line) in bytes.split(|&b| b == b'\n').enumerate() {
        if line.is_empty() {
            continue;
        }
        match serde_json::from_slice(line) {
            Ok(entry) => entries.push(entry),
            Err(error) => tracing::warn!(line = number + 1, %error, "skipping unreadable history line"),
        }
    }
    entries
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::table::Cause;

    #[test]
    fn history_is_compacted_to_the_newest_entries() {
        let dir = std::env::temp_dir().join(format!("sluice-state-compact-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        let (store, _, _) = StateStore::open(&dir).expect("open");
        let entry = |revision| HistoryEntry {
            revision,
            time: String::new(),
            cause: Cause::Config,
            actor: String::new(),
            weights: Default::default(),
            flags: Default::default(),
            changed: Vec::new(),
        };
        for revision in 1..=(2 * HISTORY_KEPT as u64 + 5) {
            store.append(&entry(revision)).expect("append");
        }
        let (_, _, history) = StateStore::open(&dir).expect("reopen");
        assert_eq!(history.len(), HISTORY_KEPT);
        assert_eq!(history.first().map(|e| e.revision), Some(HISTORY_KEPT as u64 + 6));
        let lines = fs::read_to_string(dir.join(HISTORY_FILE))
            .expect("read")
            .lines()
            .count();
        assert_eq!(lines, HISTORY_KEPT, "the file was rewritten");
        let state: SavedState = serde_json::from_str(r#"{"revision": 3, "overrides": {}, "future": {"a": 1}}"#)
            .expect("unknown fields are ignored");
        assert_eq!(state.revision, 3);
        let _ = fs::remove_dir_all(&dir);
    }

    #[test]
    fn state_and_history_round_trip_and_survive_a_torn_line() {
        let dir = std::env::temp_dir().join(format!("sluice-state-unit-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        let (store, state, history) = StateStore::open(&dir).expect("open");
        assert_eq!((state.revision, history.len()), (0, 0));

        let mut overrides = Overrides::new();
        overrides
            .entry("checkout".into())
            .or_default()
            .insert("canary".into(), 10);
        store
            .save(&SavedState {
                revision: 7,
                overrides: overrides.clone(),
                rollouts: Default::default(),
                flags: Default::default(),
            })
            .expect("save");
        let entry = HistoryEntry {
            revision: 7,
            time: "2026-11-21T00:00:00Z".into(),
            cause: Cause::Admin,
            actor: "test".into(),
            weights: Default::default(),
            flags: Default::default(),
            changed: vec!["checkout".into()],
        };
        store.append(&entry).expect("append");
        // A crash mid-append leaves a partial last line.
        OpenOptions::new()
            .append(true)
            .open(dir.join(HISTORY_FILE))
            .expect("open")
            .write_all(b"{\"revis")
            .expect("write");

        // Regression: the next append used to land on the torn line and be lost with it.
        let (store, state, history) = StateStore::open(&dir).expect("reopen");
        assert_eq!(state.revision, 7);
        assert_eq!(state.overrides, overrides);
        assert_eq!(history.len(), 1);
        store
            .append(&HistoryEntry {
                revision: 8,
                ..entry.clone()
            })
            .expect("append after a torn line");
        let (_, _, history) = StateStore::open(&dir).expect("reopen again");
        assert_eq!(history.iter().map(|e| e.revision).collect::<Vec<_>>(), vec![7, 8]);
        let _ = fs::remove_dir_all(&dir);
    }
}
