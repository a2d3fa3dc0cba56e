//! The control plane: the only writer of the routing table. It holds the loaded config, the
//! manual weight overrides, the revision counter and the history, and turns every change
//! (reload, admin weights, revert) into one new table, published atomically, recorded in the
//! history and persisted in `state_dir`.
//!
//! Writers are serialised by one mutex; the request path never touches it.

mod rollouts;

pub use rollouts::{now_ms, RolloutCommand};

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::SystemTime;

use indexmap::IndexMap;
use serde::{Deserialize, Serialize};

use crate::config::{self, Config, ConfigErrors};
use crate::flags::{FlagOverride, FlagOverrides, FlagState};
use crate::rollout::RolloutState;
use crate::state::{SavedState, StateStore};
use crate::table::{Cause, Overrides, Routing, RoutingTable};

use crate::state::HISTORY_KEPT;

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
    /// Every flag's state in this revision, by service (services without flags left out).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub flags: BTreeMap<String, IndexMap<String, FlagState>>,
    /// The services this revision changed: weights, versions, endpoints, rules or matching.
    #[serde(default)]
    pub changed: Vec<String>,
}

/// A control-plane request that cannot be carried out.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    /// No such service or revision.
    #[error("{0}")]
    NotFound(String),
    /// The request does not fit the current state (a rollout command out of turn).
    #[error("{0}")]
    Conflict(String),
    /// The request is invalid; the message says why.
    #[error("{0}")]
    Invalid(String),
    /// The new config file is invalid; the running table stays.
    #[error("invalid configuration, running table kept:\n{0}")]
    Config(ConfigErrors),
    /// The change could not be written to `state_dir`; nothing was published.
    #[error("cannot persist the change in state_dir, nothing changed: {0}")]
    Persist(std::io::Error),
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
    /// The config the process started with: what its sockets, threads and log file run on,
    /// which reloads are compared with for what needs a restart.
    running: Config,
    config_text: Option<String>,
    overrides: Overrides,
    /// Admin overrides of flags; persisted with the weight overrides.
    flag_overrides: FlagOverrides,
    revision: u64,
    history: VecDeque<HistoryEntry>,
    last_reload: Option<ReloadStatus>,
    reloads_ok: u64,
    reloads_failed: u64,
    /// Each service's rollout, active or finished; persisted with the overrides.
    rollouts: BTreeMap<String, RolloutState>,
    /// Webhook calls of webhook steps, by service.
    webhooks: HashMap<String, rollouts::WebhookCall>,
    /// The guardrails' latest reading of each progressing rollout.
    judgements: HashMap<String, rollouts::Judgement>,
    /// Rollbacks by service and reason, for `sluice_rollbacks_total`.
    rollbacks: BTreeMap<(String, String), u64>,
}

/// The control plane. Cheap to share: hold it in an `Arc`.
pub struct Control {
    routing: Arc<Routing>,
    health: std::sync::OnceLock<crate::health::HealthChecks>,
    /// The runtime webhook calls run on, once the reconciliation loop is started.
    runtime: std::sync::OnceLock<tokio::runtime::Handle>,
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
        let mut flag_overrides = saved.flags;
        for warning in reconcile_flag_overrides(&mut flag_overrides, &config) {
            tracing::warn!("{warning}");
        }
        let mut rollouts = saved.rollouts;
        let now = rollouts::now_ms();
        for warning in rollouts::reconcile(&mut rollouts, &config, now) {
            tracing::warn!("{warning}");
        }
        // This process's windows start empty: judge (and count a hold's extension) from now.
        for state in rollouts.values_mut().filter(|s| s.phase.is_active()) {
            state.judged_since_ms = now;
        }
        let routing = Arc::new(Routing::new(&config));
        if let Some(path) = &config.access_log {
            let log = crate::metrics::access_log::AccessLog::open(path).map_err(|e| {
                std::io::Error::new(e.kind(), format!("cannot open access_log {}: {e}", path.display()))
            })?;
            routing.metrics().set_access_log(log);
        }
        let skip = history.len().saturating_sub(HISTORY_KEPT);
        let inner = Inner {
            running: config.clone(),
            config,
            config_text,
            overrides,
            flag_overrides,
            revision: saved.revision,
            history: history.into_iter().skip(skip).collect(),
            last_reload: None,
            reloads_ok: 0,
            reloads_failed: 0,
            rollouts,
            webhooks: HashMap::new(),
            judgements: HashMap::new(),
            rollbacks: BTreeMap::new(),
        };
        let control = Self {
            routing,
            health: std::sync::OnceLock::new(),
            runtime: std::sync::OnceLock::new(),
            inner: Mutex::new(inner),
            store,
            config_path,
        };
        let all = control.lock().config.services.iter().map(|s| s.name.clone()).collect();
        control
            .commit(&mut control.lock(), Cause::Config, "startup".to_owned(), all)
            .map_err(|e| match e {
                ControlError::Persist(error) => error,
                other => std::io::Error::other(other.to_string()),
            })?;
        Ok(control)
    }

    /// The live routing table the data plane reads.
    pub fn routing(&self) -> &Arc<Routing> {
        &self.routing
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Builds the next revision from `inner`, persists it, then publishes it and records it in
    /// the history. `spec_changed` names services whose configuration changed; services whose
    /// weights changed are added. If persisting fails nothing is published and the caller
    /// must undo its change to `inner`.
    /// Starts the health checkers of the configured endpoints, on the current runtime; every
    /// change of an endpoint's health then publishes a new table (cause `health`).
    pub fn start_health_checks(self: &Arc<Self>) {
        let events = &self.routing.registries().health_events;
        let Some(mut receiver) = events.take_receiver() else {
            return;
        };
        let checks = crate::health::HealthChecks::new(tokio::runtime::Handle::current(), events.sender());
        checks.sync(&self.lock().config, self.routing.registries());
        if self.health.set(checks).is_err() {
            return;
        }
        let control = Arc::downgrade(self);
        tokio::spawn(async move {
            while let Some(batch) = crate::health::next_batch(&mut receiver).await {
                let Some(control) = control.upgrade() else { return };
                let _ = tokio::task::spawn_blocking(move || control.health_changed(&batch)).await;
            }
        });
    }

    /// Publishes a table that reflects endpoints' new health.
    fn health_changed(&self, batch: &[crate::health::Change]) {
        let mut inner = self.lock();
        let affected: Vec<String> = inner
            .config
            .services
            .iter()
            .filter(|s| {
                s.versions
                    .iter()
                    .flat_map(|v| &v.endpoints)
                    .any(|a| batch.iter().any(|c| *c.endpoint == a.to_string()))
            })
            .map(|s| s.name.clone())
            .collect();
        if affected.is_empty() {
            // The endpoint left the config meanwhile: nothing to publish.
            return;
        }
        let what: Vec<String> = batch.iter().map(|c| format!("{} {}", c.endpoint, c.what)).collect();
        if let Err(error) = self.commit(
            &mut inner,
            Cause::Health,
            format!("health: {}", what.join(", ")),
            affected,
        ) {
            tracing::error!(%error, "cannot publish the health change");
        }
    }

    fn commit(
        &self,
        inner: &mut Inner,
        cause: Cause,
        actor: String,
        spec_changed: Vec<String>,
    ) -> Result<u64, ControlError> {
        let revision = inner.revision + 1;
        let mut spec_changed = spec_changed;
        if let Some(health) = self.health.get() {
            // Endpoints no longer checked come back; their services change.
            if health.sync(&inner.config, self.routing.registries()) {
                spec_changed.extend(inner.config.services.iter().map(|s| s.name.clone()));
                spec_changed.sort();
                spec_changed.dedup();
            }
        }
        let table = RoutingTable::build_with_flags(
            &inner.config,
            &inner.overrides,
            &inner.flag_overrides,
            &inner.rollouts,
            self.routing.registries(),
            revision,
            cause,
        );
        let weights: BTreeMap<String, IndexMap<String, u64>> = table
            .services
            .iter()
            .map(|s| {
                (
                    s.name.to_string(),
                    s.weights().map(|(v, w)| (v.to_owned(), w)).collect(),
                )
            })
            .collect();
        let flags: BTreeMap<String, IndexMap<String, FlagState>> = table
            .services
            .iter()
            .filter(|s| !s.flags.list.is_empty())
            .map(|s| (s.name.to_string(), s.flags.states()))
            .collect();
        let previous = inner.history.back();
        let mut changed = spec_changed;
        for (service, w) in &weights {
            let same = previous
                .is_some_and(|p| p.weights.get(service) == Some(w) && p.flags.get(service) == flags.get(service));
            if !same && !changed.contains(service) {
                changed.push(service.clone());
            }
        }
        changed.sort();
        changed.dedup();
        let entry = HistoryEntry {
            revision,
            time: now(),
            cause,
            actor,
            weights,
            flags,
            changed,
        };
        if let Some(store) = &self.store {
            // State first: a crash between the two leaves a revision counter that is ahead of
            // the history, never one that would hand out a revision number twice.
            let saved = SavedState {
                revision,
                overrides: inner.overrides.clone(),
                rollouts: inner.rollouts.clone(),
                flags: inner.flag_overrides.clone(),
            };
            match store.save(&saved).and_then(|()| store.append(&entry)) {
                Ok(()) => {}
                // A rollback protects users now; a full or broken disk must not keep a failing
                // canary in traffic. The next successful save writes the whole state again.
                Err(error) if cause == Cause::Guardrail => tracing::error!(
                    %error,
                    "cannot persist the guardrail's change; publishing it anyway (a restart before the next successful save would resume the rollout)"
                ),
                Err(error) => {
                    tracing::error!(%error, "cannot persist routing state; nothing published");
                    return Err(ControlError::Persist(error));
                }
            }
        }
        self.routing.publish(table);
        tracing::info!(revision, cause = cause.as_str(), actor = %entry.actor, "routing table published");
        inner.revision = revision;
        inner.history.push_back(entry);
        if inner.history.len() > HISTORY_KEPT {
            inner.history.pop_front();
        }
        Ok(revision)
    }

    /// Sets `service`'s rollout state and weight override (each when given) and commits, or
    /// leaves everything as it was.
    fn commit_change(
        &self,
        inner: &mut Inner,
        service: &str,
        rollout: Option<RolloutState>,
        weights: Option<BTreeMap<String, u32>>,
        cause: Cause,
        actor: String,
    ) -> Result<u64, ControlError> {
        fn swap<T>(map: &mut BTreeMap<String, T>, key: &str, value: Option<T>) -> Option<Option<T>> {
            value.map(|value| map.insert(key.to_owned(), value))
        }
        fn restore<T>(map: &mut BTreeMap<String, T>, key: &str, old: Option<Option<T>>) {
            match old {
                Some(Some(old)) => {
                    map.insert(key.to_owned(), old);
                }
                Some(None) => {
                    map.remove(key);
                }
                None => {}
            }
        }
        let old_rollout = swap(&mut inner.rollouts, service, rollout);
        let old_weights = swap(&mut inner.overrides, service, weights);
        let committed = self.commit(inner, cause, actor, vec![service.to_owned()]);
        if committed.is_err() {
            restore(&mut inner.rollouts, service, old_rollout);
            restore(&mut inner.overrides, service, old_weights);
        }
        committed
    }

    /// Sets `service`'s override to `weights` and commits (cause `admin`); a rollout in
    /// progress pauses in the same revision.
    fn commit_override(
        &self,
        inner: &mut Inner,
        service: &str,
        weights: BTreeMap<String, u32>,
        actor: String,
    ) -> Result<u64, ControlError> {
        let paused = rollouts::pause_for_manual_change(inner, service, &actor);
        let actor = match &paused {
            Some(_) => format!("{actor} (rollout paused)"),
            None => actor,
        };
        self.commit_change(inner, service, paused, Some(weights), Cause::Admin, actor)
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
        self.commit_override(&mut inner, service, weights, actor)
    }

    /// Changes a flag of `service` (an override that outlives reloads and restarts, until a
    /// later change or a reload that removes the flag): each field given replaces the one in
    /// force. Cause `admin`.
    pub fn set_flag(
        &self,
        service: &str,
        flag: &str,
        change: FlagOverride,
        actor: String,
    ) -> Result<u64, ControlError> {
        let mut inner = self.lock();
        let spec = inner
            .config
            .services
            .iter()
            .find(|s| s.name == service)
            .ok_or_else(|| ControlError::NotFound(format!("unknown service \"{service}\"")))?;
        if !spec.flags.iter().any(|f| f.name == flag) {
            let names: Vec<&str> = spec.flags.iter().map(|f| f.name.as_str()).collect();
            let known = if names.is_empty() {
                "none".to_owned()
            } else {
                names.join(", ")
            };
            return Err(ControlError::NotFound(format!(
                "unknown flag \"{flag}\" of \"{service}\" (flags: {known})"
            )));
        }
        if let Some(percent) = change.percent {
            config::percent_to_ppm(percent)
                .ok_or_else(|| ControlError::Invalid(format!("percent {percent} is out of range: use 0 to 100")))?;
        }
        let old = inner.flag_overrides.get(service).and_then(|f| f.get(flag)).copied();
        let new = old.unwrap_or_default().merged(change);
        inner
            .flag_overrides
            .entry(service.to_owned())
            .or_default()
            .insert(flag.to_owned(), new);
        let mut what = Vec::new();
        if let Some(enabled) = change.enabled {
            what.push(if enabled { "on".to_owned() } else { "off".to_owned() });
        }
        if let Some(percent) = change.percent {
            what.push(format!("{percent}%"));
        }
        let actor = format!("{actor} (flag {flag}: {})", what.join(", "));
        let committed = self.commit(&mut inner, Cause::Admin, actor, vec![service.to_owned()]);
        if committed.is_err() {
            let flags = inner.flag_overrides.entry(service.to_owned()).or_default();
            match old {
                Some(old) => flags.insert(flag.to_owned(), old),
                None => flags.remove(flag),
            };
            if flags.is_empty() {
                inner.flag_overrides.remove(service);
            }
        }
        committed
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
        self.commit_override(&mut inner, service, weights, format!("{actor} (revert to {revision})"))
    }

    /// Re-reads the config file. An invalid file keeps the running table; an unchanged one
    /// publishes nothing.
    pub fn reload(&self, actor: &str) -> Result<ReloadStatus, ControlError> {
        let Some(path) = &self.config_path else {
            return Err(ControlError::Invalid(
                "no config file to reload: sluice was started without one".into(),
            ));
        };
        // Read under the lock: of two overlapping reloads, the later one reads the newer file.
        let mut inner = self.lock();
        let text = std::fs::read_to_string(path);
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
        let mut warnings = restart_warnings(&inner.running, &config);
        warnings.extend(config.warnings.iter().cloned());
        let old_overrides = inner.overrides.clone();
        let old_flag_overrides = inner.flag_overrides.clone();
        let old_rollouts = inner.rollouts.clone();
        warnings.extend(reconcile_overrides(&mut inner.overrides, &config));
        warnings.extend(reconcile_flag_overrides(&mut inner.flag_overrides, &config));
        let now = rollouts::now_ms();
        warnings.extend(rollouts::reconcile(&mut inner.rollouts, &config, now));
        let started = rollouts::auto_start(&mut inner, &config, now);
        let spec_changed = changed_services(&inner.config, &config);
        let old_config = std::mem::replace(&mut inner.config, config);
        let old_text = inner.config_text.replace(text);
        let history_actor = match started.is_empty() {
            true => actor.to_owned(),
            false => format!("{actor}; auto_start: rollout of {} started", started.join(", ")),
        };
        let revision = match self.commit(&mut inner, Cause::Config, history_actor, spec_changed) {
            Ok(revision) => revision,
            Err(error) => {
                inner.config = old_config;
                inner.config_text = old_text;
                inner.overrides = old_overrides;
                inner.flag_overrides = old_flag_overrides;
                inner.rollouts = old_rollouts;
                // Checkers were synced to the rejected config: put them back.
                if let Some(health) = self.health.get() {
                    health.sync(&inner.config, self.routing.registries());
                }
                inner.reloads_failed += 1;
                inner.last_reload = Some(status("error", vec![error.to_string()], Vec::new(), inner.revision));
                return Err(error);
            }
        };
        for warning in &warnings {
            tracing::warn!("{warning}");
        }
        for service in &started {
            tracing::info!(%service, "rollout started by auto_start: the canary's endpoints changed");
        }
        inner.reloads_ok += 1;
        let ok = status("ok", Vec::new(), warnings, revision);
        inner.last_reload = Some(ok.clone());
        Ok(ok)
    }

    /// History, newest first; with `service`, only the entries that changed that service.
    pub fn history(&self, service: Option<&str>) -> Vec<HistoryEntry> {
        let inner = self.lock();
        let wanted = |e: &&HistoryEntry| service.is_none_or(|s| e.changed.iter().any(|c| c == s));
        inner.history.iter().rev().filter(wanted).cloned().collect()
    }

    /// The control plane's own counters, for `/metrics`: reloads, rollout steps, rollbacks.
    pub fn counters(&self) -> crate::metrics::prometheus::ControlCounters {
        let inner = self.lock();
        let rollout_steps = inner
            .config
            .services
            .iter()
            .filter(|s| s.rollout.is_some())
            .map(|s| {
                let step = inner
                    .rollouts
                    .get(&s.name)
                    .filter(|r| r.phase.is_active())
                    .map_or(0, |r| r.step as u64 + 1);
                (s.name.clone(), step)
            })
            .collect();
        crate::metrics::prometheus::ControlCounters {
            reloads_ok: inner.reloads_ok,
            reloads_failed: inner.reloads_failed,
            rollout_steps,
            rollbacks: inner
                .rollbacks
                .iter()
                .map(|((s, r), n)| (s.clone(), r.clone(), *n))
                .collect(),
        }
    }

    /// The config file's text, reload counters and last reload outcome, for `GET /api/v1/config`.
    pub fn config_report(&self) -> serde_json::Value {
        let inner = self.lock();
        serde_json::json!({
            "path": self.config_path.as_ref().map(|p| p.display().to_string()),
            "revision": inner.revision,
            "yaml": inner.config_text,
            "overrides": inner.overrides,
            "flag_overrides": inner.flag_overrides,
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

/// Drops flag overrides whose service or flag the config no longer has. Returns warnings.
fn reconcile_flag_overrides(overrides: &mut FlagOverrides, config: &Config) -> Vec<String> {
    let mut warnings = Vec::new();
    overrides.retain(|service, flags| {
        let spec = config.services.iter().find(|s| &s.name == service);
        flags.retain(|flag, _| {
            let kept = spec.is_some_and(|s| s.flags.iter().any(|f| &f.name == flag));
            if !kept {
                warnings.push(format!(
                    "dropping the override of flag \"{flag}\" of \"{service}\": the flag is gone from the config"
                ));
            }
            kept
        });
        !flags.is_empty()
    });
    warnings
}

/// Services added, removed or changed in any way between two configs.
fn changed_services(old: &Config, new: &Config) -> Vec<String> {
    let mut changed: Vec<String> = new
        .services
        .iter()
        .filter(|s| old.services.iter().find(|o| o.name == s.name) != Some(*s))
        .map(|s| s.name.clone())
        .collect();
    changed.extend(
        old.services
            .iter()
            .filter(|o| !new.services.iter().any(|s| s.name == o.name))
            .map(|o| o.name.clone()),
    );
    changed
}

/// What differs from the config the process runs on and a reload cannot apply to running
/// sockets and threads (so a second reload still warns, and a change back does not).
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
    if old.limits.drain != new.limits.drain {
        warnings.push("defaults.timeouts.drain changed: restart sluice to apply it".to_owned());
    }
    if old.workers != new.workers {
        warnings.push("workers changed: restart sluice to apply it".to_owned());
    }
    if old.limits.request_headers != new.limits.request_headers {
        warnings.push("defaults.timeouts.request_headers changed: restart sluice to apply it".to_owned());
    }
    if old.limits.max_request_headers != new.limits.max_request_headers {
        warnings.push("defaults.limits.max_request_headers changed: restart sluice to apply it".to_owned());
    }
    warnings
}
