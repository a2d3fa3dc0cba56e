//! What survives a restart, in `state_dir`: `state.json` (revision counter and weight
//! overrides), rewritten atomically on every change (write, fsync, rename, fsync the
//! directory), and `history.jsonl`, an append-only log with one routing-table revision a line.

use std::fs::{self, File, OpenOptions};
use std::io::{self, BufRead, BufReader, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::control::HistoryEntry;
use crate::table::Overrides;

const STATE_FILE: &str = "state.json";
const HISTORY_FILE: &str = "history.jsonl";

/// The part of the control state that is not in the config file.
#[derive(Debug, Default, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SavedState {
    /// The last revision published.
    pub revision: u64,
    /// Manual weight overrides in force.
    #[serde(default)]
    pub overrides: Overrides,
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
        let history = match File::open(store.dir.join(HISTORY_FILE)) {
            Ok(file) => read_history(file),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Vec::new(),
            Err(e) => return Err(e),
        };
        Ok((store, state, history))
    }

    /// Replaces `state.json` atomically: a crash leaves the old file or the new one, whole.
    pub fn save(&self, state: &SavedState) -> io::Result<()> {
        let tmp = self.dir.join(format!("{STATE_FILE}.tmp"));
        let mut file = File::create(&tmp)?;
        file.write_all(&serde_json::to_vec_pretty(state).map_err(io::Error::other)?)?;
        file.sync_all()?;
        drop(file);
        fs::rename(&tmp, self.dir.join(STATE_FILE))?;
        File::open(&self.dir)?.sync_all()
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

/// Reads history lines, skipping (and logging) any that do not parse, such as a line cut
/// short by a crash.
fn read_history(file: File) -> Vec<HistoryEntry> {
    let mut entries = Vec::new();
    for (number, line) in BufReader::new(file).lines().enumerate() {
        let Ok(line) = line else { break };
        match serde_json::from_str(&line) {
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
            })
            .expect("save");
        let entry = HistoryEntry {
            revision: 7,
            time: "2026-11-21T00:00:00Z".into(),
            cause: Cause::Admin,
            actor: "test".into(),
            weights: Default::default(),
        };
        store.append(&entry).expect("append");
        // A crash mid-append leaves a partial last line.
        OpenOptions::new()
            .append(true)
            .open(dir.join(HISTORY_FILE))
            .expect("open")
            .write_all(b"{\"revis")
            .expect("write");

        let (_, state, history) = StateStore::open(&dir).expect("reopen");
        assert_eq!(state.revision, 7);
        assert_eq!(state.overrides, overrides);
        assert_eq!(history.len(), 1);
        assert_eq!(history[0].revision, 7);
        let _ = fs::remove_dir_all(&dir);
    }
}
