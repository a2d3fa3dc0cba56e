//! The control plane: the only writer of the routing table. It holds the loaded config, the
//! manual weight overrides, the revision counter and the history, and turns every change
//! (reload, admin weights, revert) into one new table, published atomically, recorded in the
//! history and persisted in `state_dir`.
//!
//! Writers are serialised by one mutex; the request path never touches it.

use std::collections::{BTreeMap, VecDeque};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::SystemTime;

use indexmap::IndexMap;
use serde::{Deserialize, Serialize};

use crate::config::{self, Config, ConfigErrors};
use crate::state::{SavedState, StateStore};
use crate::table::{Cause, Overrides, Routing, RoutingTable};

/// History entries kept in memory (and so reachable by `revert`); the file keeps them all.
const MAX_HISTORY: usize = 1000;

/// One routing-table revision, as the history records it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HistoryEntry {
    /// The table's revision.
    pub revision: u64,
    /// When it was published (RFC 3339, UTC).
    pub time: String,
    /// Why.
    pub cause: Cause,
    /// Who or what: `startup`, `reload (file)`, `admin 127.0.0.1`, ...
    pub actor: String,
    /// Every service's weights in this revision, versions in file order.
    pub weights: BTreeMap<String, IndexMap<String, u64>>,
}

/// A control-plane request that cannot be carried out.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    /// No such service or revision.
    #[error("{0}")]
    NotFound(String),
    /// The request is invalid; the message says why.
    #[error("{0}")]
    Invalid(String),
    /// The new config file is invalid; the running table stays.
    #[error("invalid configuration, running table kept:\n{0}")]
    Config(ConfigErrors),
}

/// The outcome of the last reload attempt, for the admin API.
#[derive(Debug, Clone, Serialize)]
pub struct ReloadStatus {
    /// `ok`, `unchanged` or `error`.
    pub result: &'static str,
    /// When it was attempted.
    pub time: String,
    /// What triggered it.
    pub actor: String,
    /// Every validation error, when `error`.
    pub errors: Vec<String>,
    /// Warnings, such as a listener change that needs a restart.
    pub warnings: Vec<String>,
    /// The revision in force afterwards.
    pub revision: u64,
}

struct Inner {
    config: Config,
    config_text: Option<String>,
    overrides: Overrides,
    revision: u64,
    history: VecDeque<HistoryEntry>,
    last_reload: Option<ReloadStatus>,
    reloads_ok: u64,
    reloads_failed: u64,
}

/// The control plane. Cheap to share: hold it in an `Arc`.
pub struct Control {
    routing: Arc<Routing>,
    inner: Mutex<Inner>,
    store: Option<StateStore>,
    config_path: Option<PathBuf>,
}

impl std::fmt::Debug for Control {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Control")
            .field("config_path", &self.config_path)
            .finish_non_exhaustive()
    }
}

fn now() -> String {
    humantime::format_rfc3339_seconds(SystemTime::now()).to_string()
}

impl Control {
    /// Starts the control plane: restores state from `config.state_dir` (revision counter,
    /// overrides, history) and publishes the first table of this process.
    pub fn start(config: Config, config_text: Option<String>, config_path: Option<PathBuf>) -> std::io::Result<Self> {
        let (store, saved, history) = match &config.state_dir {
            Some(dir) => {
                let (store, saved, history) = StateStore::open(dir)?;
                (Some(store), saved, history)
            }
            None => (None, SavedState::default(), Vec::new()),
        };
        let mut overrides = saved.overrides;
        for warning in reconcile_overrides(&mut overrides, &config) {
            tracing::warn!("{warning}");
        }
        let routing = Arc::new(Routing::new(&config));
        let skip = history.len().saturating_sub(MAX_HISTORY);
        let inner = Inner {
            config,
            config_text,
            overrides,
            revision: saved.revision,
            history: history.into_iter().skip(skip).collect(),
            last_reload: None,
            reloads_ok: 0,
            reloads_failed: 0,
        };
        let control = Self {
            routing,
            inner: Mutex::new(inner),
            store,
            config_path,
        };
        control.publish(&mut control.lock(), Cause::Config, "startup".to_owned());
        Ok(control)
    }

    /// The live routing table the data plane reads.
    pub fn routing(&self) -> &Arc<Routing> {
        &self.routing
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Builds, publishes, records and persists a new revision. Returns its number.
    fn publish(&self, inner: &mut Inner, cause: Cause, actor: String) -> u64 {
        inner.revision += 1;
        let table = RoutingTable::build(
            &inner.config,
            &inner.overrides,
            self.routing.registries(),
            inner.revision,
            cause,
        );
        let weights = table
            .services
            .iter()
            .map(|s| {
                (
                    s.name.to_string(),
                    s.weights().map(|(v, w)| (v.to_owned(), w)).collect(),
                )
            })
            .collect();
        self.routing.publish(table);
        let entry = HistoryEntry {
            revision: inner.revision,
            time: now(),
            cause,
            actor,
            weights,
        };
        tracing::info!(revision = entry.revision, cause = cause.as_str(), actor = %entry.actor, "routing table published");
        if let Some(store) = &self.store {
            let saved = SavedState {
                revision: inner.revision,
                overrides: inner.overrides.clone(),
            };
            if let Err(error) = store.append(&entry).and_then(|()| store.save(&saved)) {
                tracing::error!(%error, "cannot persist routing state");
            }
        }
        inner.history.push_back(entry);
        if inner.history.len() > MAX_HISTORY {
            inner.history.pop_front();
        }
        inner.revision
    }

    /// Sets a service's weights (an override that outlives reloads and restarts). Versions
    /// left out get 0; at least one must be named, all must exist, not all may be 0.
    pub fn set_weights(
        &self,
        service: &str,
        weights: &BTreeMap<String, u64>,
        actor: String,
    ) -> Result<u64, ControlError> {
        let mut inner = self.lock();
        let versions = version_names(&inner.config, service)?;
        let weights = check_weights(service, &versions, weights)?;
        inner.overrides.insert(service.to_owned(), weights);
        Ok(self.publish(&mut inner, Cause::Admin, actor))
    }

    /// Restores the weights `service` had at `revision`.
    pub fn revert(&self, service: &str, revision: u64, actor: String) -> Result<u64, ControlError> {
        let mut inner = self.lock();
        let versions = version_names(&inner.config, service)?;
        let entry = inner
            .history
            .iter()
            .find(|e| e.revision == revision)
            .ok_or_else(|| ControlError::NotFound(format!("revision {revision} is not in the history")))?;
        let old = entry.weights.get(service).ok_or_else(|| {
            ControlError::Invalid(format!("service \"{service}\" did not exist at revision {revision}"))
        })?;
        let known: BTreeMap<String, u64> = old
            .iter()
            .filter(|(v, _)| versions.contains(v))
            .map(|(v, w)| (v.clone(), *w))
            .collect();
        let weights = check_weights(service, &versions, &known)
            .map_err(|e| ControlError::Invalid(format!("cannot revert to revision {revision}: {e}")))?;
        inner.overrides.insert(service.to_owned(), weights);
        Ok(self.publish(&mut inner, Cause::Admin, format!("{actor} (revert to {revision})")))
    }

    /// Re-reads the config file. An invalid file keeps the running table; an unchanged one
    /// publishes nothing.
    pub fn reload(&self, actor: &str) -> Result<ReloadStatus, ControlError> {
        let Some(path) = &self.config_path else {
            return Err(ControlError::Invalid(
                "no config file to reload: sluice was started without one".into(),
            ));
        };
        let text = std::fs::read_to_string(path);
        let mut inner = self.lock();
        let parsed = text
            .map_err(|e| {
                ConfigErrors(vec![config::ConfigError {
                    path: String::new(),
                    message: format!("cannot read {}: {e}", path.display()),
                }])
            })
            .and_then(|text| config::parse(&text).map(|config| (text, config)));
        let status = |result, errors, warnings, revision| ReloadStatus {
            result,
            time: now(),
            actor: actor.to_owned(),
            errors,
            warnings,
            revision,
        };
        let (text, config) = match parsed {
            Ok(parsed) => parsed,
            Err(errors) => {
                inner.reloads_failed += 1;
                tracing::error!(%actor, "config reload failed, running table kept:\n{errors}");
                let messages = errors.0.iter().map(ToString::to_string).collect();
                inner.last_reload = Some(status("error", messages, Vec::new(), inner.revision));
                return Err(ControlError::Config(errors));
            }
        };
        if inner.config_text.as_deref() == Some(text.as_str()) {
            let unchanged = status("unchanged", Vec::new(), Vec::new(), inner.revision);
            inner.last_reload = Some(unchanged.clone());
            return Ok(unchanged);
        }
        let mut warnings = restart_warnings(&inner.config, &config);
        warnings.extend(config.warnings.iter().cloned());
        warnings.extend(reconcile_overrides(&mut inner.overrides, &config));
        for warning in &warnings {
            tracing::warn!("{warning}");
        }
        inner.config = config;
        inner.config_text = Some(text);
        inner.reloads_ok += 1;
        let revision = self.publish(&mut inner, Cause::Config, actor.to_owned());
        let ok = status("ok", Vec::new(), warnings, revision);
        inner.last_reload = Some(ok.clone());
        Ok(ok)
    }

    /// History, newest first; with `service`, only the entries that changed its weights.
    pub fn history(&self, service: Option<&str>) -> Vec<HistoryEntry> {
        let inner = self.lock();
        let mut entries: Vec<HistoryEntry> = Vec::new();
        let mut previous: Option<&HistoryEntry> = None;
        for entry in &inner.history {
            let changed = match service {
                None => true,
                Some(s) => {
                    entry.weights.contains_key(s) && previous.and_then(|p| p.weights.get(s)) != entry.weights.get(s)
                }
            };
            if changed {
                entries.push(entry.clone());
            }
            previous = Some(entry);
        }
        entries.reverse();
        entries
    }

    /// Reload outcomes so far, for `sluice_config_reloads_total`.
    pub fn reloads(&self) -> crate::metrics::prometheus::Reloads {
        let inner = self.lock();
        crate::metrics::prometheus::Reloads {
            ok: inner.reloads_ok,
            failed: inner.reloads_failed,
        }
    }

    /// Whether `service` runs on manual weights rather than the file's.
    pub fn has_override(&self, service: &str) -> bool {
        self.lock().overrides.contains_key(service)
    }

    /// The config file's text, reload counters and last reload outcome, for `GET /api/v1/config`.
    pub fn config_report(&self) -> serde_json::Value {
        let inner = self.lock();
        serde_json::json!({
            "path": self.config_path.as_ref().map(|p| p.display().to_string()),
            "revision": inner.revision,
            "yaml": inner.config_text,
            "overrides": inner.overrides,
            "reloads": { "ok": inner.reloads_ok, "failed": inner.reloads_failed },
            "last_reload": inner.last_reload,
        })
    }
}

fn version_names(config: &Config, service: &str) -> Result<Vec<String>, ControlError> {
    config
        .services
        .iter()
        .find(|s| s.name == service)
        .map(|s| s.versions.iter().map(|v| v.name.clone()).collect())
        .ok_or_else(|| ControlError::NotFound(format!("unknown service \"{service}\"")))
}

fn check_weights(
    service: &str,
    versions: &[String],
    weights: &BTreeMap<String, u64>,
) -> Result<BTreeMap<String, u32>, ControlError> {
    if weights.is_empty() {
        return Err(ControlError::Invalid(format!(
            "name at least one version of \"{service}\" (versions: {})",
            versions.join(", ")
        )));
    }
    let mut checked = BTreeMap::new();
    for (version, &weight) in weights {
        if !versions.contains(version) {
            return Err(ControlError::Invalid(format!(
                "unknown version \"{version}\" (versions: {})",
                versions.join(", ")
            )));
        }
        let weight = u32::try_from(weight)
            .map_err(|_| ControlError::Invalid(format!("weight {weight} of \"{version}\" is too large")))?;
        checked.insert(version.clone(), weight);
    }
    if checked.values().all(|&w| w == 0) {
        return Err(ControlError::Invalid(
            "every weight is 0: give at least one version a weight".into(),
        ));
    }
    Ok(checked)
}

/// Drops overrides whose service or versions the config no longer has. Returns warnings.
fn reconcile_overrides(overrides: &mut Overrides, config: &Config) -> Vec<String> {
    let mut warnings = Vec::new();
    overrides.retain(|service, weights| {
        let Some(spec) = config.services.iter().find(|s| &s.name == service) else {
            warnings.push(format!("dropping the weight override of \"{service}\": the service is gone from the config"));
            return false;
        };
        let gone: Vec<String> = weights.keys().filter(|v| !spec.versions.iter().any(|sv| &sv.name == *v)).cloned().collect();
        if gone.is_empty() {
            return true;
        }
        warnings.push(format!(
            "dropping the weight override of \"{service}\": version(s) {} are gone from the config; the file's weights apply",
            gone.join(", ")
        ));
        false
    });
    warnings
}

/// Changes a reload cannot apply to running sockets and threads.
fn restart_warnings(old: &Config, new: &Config) -> Vec<String> {
    let mut warnings = Vec::new();
    if old.listeners != new.listeners {
        warnings.push("listeners changed: restart sluice to apply the new listener addresses".to_owned());
    }
    if old.admin != new.admin {
        warnings.push("admin settings changed: restart sluice to apply them".to_owned());
    }
    if old.access_log != new.access_log {
        warnings.push("access_log changed: restart sluice to apply it".to_owned());
    }
    if old.workers != new.workers {
        warnings.push("workers changed: restart sluice to apply it".to_owned());
    }
    if old.limits.request_headers != new.limits.request_headers {
        warnings.push("defaults.timeouts.request_headers changed: restart sluice to apply it".to_owned());
    }
    warnings
}
