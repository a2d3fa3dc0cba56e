//! The rollout side of the control plane: operator commands, the reconciliation loop that
//! judges every progressing rollout five times a second and moves it on, `auto_start` on
//! reload, and what the admin API shows.
//!
//! Every transition is one commit: the rollout's state and its weights (the service's
//! override) are persisted in `state_dir` and published as one routing-table revision with its
//! reason in the history.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::{json, Value};

use super::{Control, ControlError, Inner};
use crate::config::{Config, RolloutSpec, Step};
use crate::metrics::window::TICK;
use crate::metrics::Role;
use crate::rollout::{self, Breach, Next, Observation, Phase, RolloutState, Verdict, WebhookStatus};
use crate::table::{Cause, Service};

/// The shortest span the silence rule looks at; it needs this much time at a weight first.
const SILENCE_MIN_SPAN: Duration = Duration::from_secs(1);

/// Wall-clock time in Unix milliseconds: rollout times survive restarts, so they are not
/// `Instant`s.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

fn rfc3339(ms: u64) -> String {
    humantime::format_rfc3339_millis(UNIX_EPOCH + Duration::from_millis(ms)).to_string()
}

/// A webhook step's call, tied to the step it was made for.
#[derive(Debug)]
pub(super) struct WebhookCall {
    step: usize,
    step_started_ms: u64,
    status: Arc<Mutex<WebhookStatus>>,
}

/// The guardrails' latest reading of a rollout.
#[derive(Debug, Clone)]
pub(super) struct Judgement {
    time_ms: u64,
    verdict: Verdict,
    observation: Observation,
    canary_role: Role,
    span: Duration,
    extended: bool,
}

/// An operator's rollout command.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum RolloutCommand {
    /// Start from the first step (again, if a rollout finished).
    Start,
    /// Stop where it is.
    Pause,
    /// Continue a paused rollout, or pass an approval step.
    Resume,
    /// Jump to 100% and finish.
    Promote,
    /// Roll back to 0% and finish.
    Abort,
}

impl RolloutCommand {
    const ALL: [Self; 5] = [Self::Start, Self::Pause, Self::Resume, Self::Promote, Self::Abort];

    /// Parses `start`, `pause`, `resume`, `promote` or `abort`.
    pub fn parse(text: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|c| c.as_str() == text)
    }

    /// The command's name in the API path.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Start => "start",
            Self::Pause => "pause",
            Self::Resume => "resume",
            Self::Promote => "promote",
            Self::Abort => "abort",
        }
    }
}

/// A rollout's weights as an override: baseline `100 − w`, canary `w`, other versions 0.
fn rollout_weights(state: &RolloutState) -> BTreeMap<String, u32> {
    BTreeMap::from([
        (state.baseline.clone(), 100 - state.weight.min(100)),
        (state.canary.clone(), state.weight.min(100)),
    ])
}

/// A progressing rollout of `service`, paused because an operator set its weights by hand.
pub(super) fn pause_for_manual_change(inner: &Inner, service: &str, actor: &str) -> Option<RolloutState> {
    let mut state = inner.rollouts.get(service)?.clone();
    if state.phase != Phase::Progressing {
        return None;
    }
    state.phase = Phase::Paused;
    state.reason = format!("paused: weights changed by hand ({actor})");
    Some(state)
}

/// Ends active rollouts whose plan the config no longer has (service, plan, baseline or canary
/// gone or renamed). Returns warnings.
pub(super) fn reconcile(rollouts: &mut BTreeMap<String, RolloutState>, config: &Config, now: u64) -> Vec<String> {
    let mut warnings = Vec::new();
    rollouts.retain(|service, _| config.services.iter().any(|s| &s.name == service));
    for (service, state) in rollouts.iter_mut().filter(|(_, s)| s.phase.is_active()) {
        let spec = config.services.iter().find(|s| &s.name == service);
        let same_plan = spec.and_then(|s| {
            let plan = s.rollout.as_ref()?;
            Some(s.versions[plan.baseline].name == state.baseline && s.versions[plan.canary].name == state.canary)
        });
        let steps = spec.and_then(|s| s.rollout.as_ref()).map_or(0, |p| p.steps.len());
        if same_plan == Some(true) && state.step >= steps {
            state.phase = Phase::Paused;
            state.reason = format!(
                "paused: the reloaded plan has no step {} (it has {steps}); promote, abort or restart it",
                state.step + 1
            );
            warnings.push(format!("the rollout of \"{service}\" paused: {}", state.reason));
        } else if same_plan != Some(true) {
            state.phase = Phase::Aborted;
            state.step_started_ms = now;
            state.reason =
                "aborted: the configuration no longer has this rollout plan (weights left as they were)".into();
            warnings.push(format!(
                "the rollout of \"{service}\" ended: the configuration no longer has its plan ({} → {}); its weights stay",
                state.baseline, state.canary
            ));
        }
    }
    warnings
}

/// Starts (or restarts) the rollout of every service whose plan has `auto_start` and whose
/// canary's endpoints differ between the running config and `new`. Returns those services.
pub(super) fn auto_start(inner: &mut Inner, new: &Config, now: u64) -> Vec<String> {
    let mut started = Vec::new();
    for service in &new.services {
        let Some(plan) = service.rollout.as_ref().filter(|p| p.auto_start) else {
            continue;
        };
        let Some(old) = inner.config.services.iter().find(|s| s.name == service.name) else {
            continue;
        };
        let canary = &service.versions[plan.canary];
        let before = old
            .versions
            .iter()
            .find(|v| v.name == canary.name)
            .map(|v| &v.endpoints);
        if before == Some(&canary.endpoints) {
            continue;
        }
        let names = (service.versions[plan.baseline].name.as_str(), canary.name.as_str());
        let mut state = RolloutState::new(names, now, String::new());
        state.enter(plan, 0, now);
        state.reason = format!(
            "started by auto_start (the canary's endpoints changed); {}",
            state.reason
        );
        inner.overrides.insert(service.name.clone(), rollout_weights(&state));
        inner.rollouts.insert(service.name.clone(), state);
        started.push(service.name.clone());
    }
    started
}

/// What the guardrails read for `state` at `now`: both windows over the guardrail window (never
/// reaching back before the rollout's start or last resume), the canary's shadow window during
/// a weight-0 preview with a mirror, and the counts since the weight was set.
fn observe(
    service: &Service,
    spec: &RolloutSpec,
    state: &RolloutState,
    now: u64,
) -> Option<(Observation, Role, Duration)> {
    let canary = service.versions.get(spec.canary)?;
    let baseline = service.versions.get(spec.baseline)?;
    let since_start = Duration::from_millis(now.saturating_sub(state.judged_since_ms));
    let span = spec.guardrails.window.min(since_start).max(TICK);
    let shadow = (state.weight == 0)
        .then(|| service.mirrors.iter().find(|m| m.version == canary.name))
        .flatten();
    let (canary_metrics, role) = match shadow {
        Some(mirror) => (&mirror.metrics, Role::Shadow),
        None => (&canary.metrics, Role::Primary),
    };
    // Silence by traffic: recent spans since the weight was set, shortest first (1 s, 2 s,
    // 4 s, ...). Not with sticky cookies or rules: they pin requests to the baseline that the
    // weights never see, so the baseline's count says nothing about the canary's due share.
    let by_traffic = service.sticky.is_none() && service.rules.is_empty();
    let since_weight = Duration::from_millis(now.saturating_sub(state.weight_since_ms.max(state.judged_since_ms)));
    let longest = since_weight.min(spec.guardrails.window);
    let mut recent = Vec::new();
    let mut silence_span = SILENCE_MIN_SPAN;
    while by_traffic && silence_span <= longest {
        recent.push((
            canary_metrics.window(silence_span).requests,
            baseline.metrics.window(silence_span).requests,
        ));
        silence_span *= 2;
    }
    let observation = Observation {
        canary: canary_metrics.window(span),
        baseline: baseline.metrics.window(span),
        weight: state.weight,
        routable: service.split.weight(spec.canary) > 0,
        recent,
    };
    Some((observation, role, span))
}

impl Control {
    /// Starts the reconciliation loop on the current runtime: every
    /// [`rollout::EVALUATION_INTERVAL`] it judges each progressing rollout and moves it on.
    pub fn start_rollouts(self: &Arc<Self>) {
        if self.runtime.set(tokio::runtime::Handle::current()).is_err() {
            return;
        }
        let control = Arc::downgrade(self);
        tokio::spawn(async move {
            let mut interval = tokio::time::interval(rollout::EVALUATION_INTERVAL);
            interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                interval.tick().await;
                let Some(control) = control.upgrade() else { return };
                // Commits fsync: off the async threads the data plane shares.
                let _ = tokio::task::spawn_blocking(move || control.rollout_tick()).await;
            }
        });
    }

    /// One pass of the reconciliation loop over every progressing rollout.
    pub fn rollout_tick(&self) {
        let now = now_ms();
        let mut inner = self.lock();
        let progressing: Vec<String> = inner
            .rollouts
            .iter()
            .filter(|(_, s)| s.phase == Phase::Progressing)
            .map(|(name, _)| name.clone())
            .collect();
        for service in progressing {
            self.reconcile_rollout(&mut inner, &service, now);
        }
    }

    fn reconcile_rollout(&self, inner: &mut Inner, service: &str, now: u64) {
        let Some(spec) = inner
            .config
            .services
            .iter()
            .find(|s| s.name == service)
            .and_then(|s| s.rollout.clone())
        else {
            return;
        };
        let Some(state) = inner.rollouts.get(service).cloned() else {
            return;
        };
        let table = self.routing.load_full();
        let Some((observation, canary_role, span)) =
            table.service(service).and_then(|s| observe(s, &spec, &state, now))
        else {
            return;
        };
        let verdict = rollout::judge(&spec.guardrails, &observation);
        let mut extended = false;
        // Steps without a hold pass at once: several transitions may follow in one pass.
        for _ in 0..spec.steps.len() + 2 {
            let Some(state) = inner
                .rollouts
                .get(service)
                .filter(|s| s.phase == Phase::Progressing)
                .cloned()
            else {
                break;
            };
            let webhook = webhook_status(inner, service, &state);
            match rollout::next(&spec, &state, now, &verdict, &webhook) {
                Next::Wait { extended: e } => {
                    extended = e;
                    break;
                }
                Next::Advance => {
                    let mut next = state;
                    next.enter(&spec, next.step + 1, now);
                    let actor = format!("rollout: {}", next.reason);
                    let weights = rollout_weights(&next);
                    tracing::info!(%service, "{actor}");
                    if let Err(error) =
                        self.commit_change(inner, service, Some(next), Some(weights), Cause::Rollout, actor)
                    {
                        tracing::error!(%service, %error, "cannot move the rollout on");
                        break;
                    }
                }
                Next::Breach(breach) => {
                    self.breach(inner, service, &spec, state, breach, now);
                    break;
                }
                Next::Inconclusive(why) => {
                    let mut paused = state;
                    paused.phase = Phase::Paused;
                    paused.reason = format!("paused: {why}");
                    let actor = format!("rollout: {}", paused.reason);
                    tracing::warn!(%service, "{actor}");
                    if let Err(error) = self.commit_change(inner, service, Some(paused), None, Cause::Rollout, actor) {
                        tracing::error!(%service, %error, "cannot pause the rollout");
                    }
                    break;
                }
                Next::CallWebhook => {
                    self.call_webhook(inner, service, &spec, &state);
                    break;
                }
            }
        }
        inner.judgements.insert(
            service.to_owned(),
            Judgement {
                time_ms: now,
                verdict,
                observation,
                canary_role,
                span,
                extended,
            },
        );
    }

    /// Rolls back (canary to 0 in one table swap) or pauses, recording the breach.
    fn breach(
        &self,
        inner: &mut Inner,
        service: &str,
        spec: &RolloutSpec,
        state: RolloutState,
        breach: Breach,
        now: u64,
    ) {
        let mut next = state;
        let rule = breach.rule.clone();
        let weights = match spec.on_breach {
            crate::config::OnBreach::Rollback => {
                next.phase = Phase::RolledBack;
                next.set_weight(0, now);
                next.reason = format!("rolled back: {}", breach.message);
                Some(rollout_weights(&next))
            }
            crate::config::OnBreach::Pause => {
                next.phase = Phase::Paused;
                next.reason = format!("paused: {}", breach.message);
                None
            }
        };
        next.step_started_ms = now;
        next.breach = Some(breach);
        let rolled_back = next.phase == Phase::RolledBack;
        let actor = format!("guardrail: {}", next.reason);
        tracing::warn!(%service, "{actor}");
        match self.commit_change(inner, service, Some(next), weights, Cause::Guardrail, actor) {
            Ok(_) if rolled_back => *inner.rollbacks.entry((service.to_owned(), rule)).or_default() += 1,
            Ok(_) => {}
            Err(error) => tracing::error!(%service, %error, "cannot act on the guardrail breach"),
        }
    }

    /// Calls the current webhook step's URL in the background; the loop reads the outcome.
    fn call_webhook(&self, inner: &mut Inner, service: &str, spec: &RolloutSpec, state: &RolloutState) {
        let (Some(Step::Webhook { url, timeout, ca_certs }), Some(runtime)) =
            (spec.steps.get(state.step), self.runtime.get())
        else {
            return;
        };
        let status = Arc::new(Mutex::new(WebhookStatus::Pending));
        inner.webhooks.insert(
            service.to_owned(),
            WebhookCall {
                step: state.step,
                step_started_ms: state.step_started_ms,
                status: Arc::clone(&status),
            },
        );
        let body = json!({
            "service": service,
            "step": state.step + 1,
            "baseline": state.baseline,
            "canary": state.canary,
            "weights": rollout_weights(state),
        })
        .to_string();
        let (url, timeout, ca_certs, service) = (url.clone(), *timeout, ca_certs.clone(), service.to_owned());
        runtime.spawn(async move {
            let outcome = match rollout::call_webhook(&url, timeout, &ca_certs, body).await {
                Ok(code) => WebhookStatus::Passed(code),
                Err(why) => WebhookStatus::Failed(why),
            };
            tracing::info!(%service, ?outcome, "rollout webhook answered");
            *status.lock().unwrap_or_else(|p| p.into_inner()) = outcome;
        });
    }

    /// Carries out an operator's rollout command. Start needs no active rollout; the others
    /// need one (resume: paused, or waiting at an approval step).
    pub fn rollout_command(&self, service: &str, command: RolloutCommand, actor: String) -> Result<u64, ControlError> {
        let mut inner = self.lock();
        let spec_service = inner
            .config
            .services
            .iter()
            .find(|s| s.name == service)
            .ok_or_else(|| ControlError::NotFound(format!("unknown service \"{service}\"")))?;
        let spec = spec_service.rollout.clone().ok_or_else(|| {
            ControlError::Invalid(format!(
                "service \"{service}\" has no rollout plan: add a `rollout:` section to its configuration"
            ))
        })?;
        let names = (
            spec_service.versions[spec.baseline].name.clone(),
            spec_service.versions[spec.canary].name.clone(),
        );
        let now = now_ms();
        let current = inner.rollouts.get(service).cloned();
        let steps = spec.steps.len();
        let active = current.clone().filter(|s| s.phase.is_active());
        let conflict = |message: String| Err(ControlError::Conflict(message));
        let next = match (command, active) {
            (RolloutCommand::Start, Some(s)) => {
                return conflict(format!(
                    "the rollout of \"{service}\" is already {} at step {}/{steps}: promote or abort it first",
                    s.phase.as_str(),
                    s.step + 1
                ))
            }
            (RolloutCommand::Start, None) => {
                let mut s = RolloutState::new((&names.0, &names.1), now, String::new());
                s.enter(&spec, 0, now);
                s.reason = format!("started by {actor}; {}", s.reason);
                s
            }
            (_, None) => {
                let last = current.map_or_else(String::new, |s| format!(" (the last one ended {})", s.phase.as_str()));
                return conflict(format!(
                    "no rollout of \"{service}\" is active{last}: start one with `sluice ctl rollout start {service}`"
                ));
            }
            (RolloutCommand::Pause, Some(s)) if s.phase == Phase::Paused => {
                return conflict(format!("the rollout of \"{service}\" is already paused: {}", s.reason))
            }
            (RolloutCommand::Pause, Some(mut s)) => {
                s.phase = Phase::Paused;
                s.reason = format!("paused by {actor} at step {}/{steps}", s.step + 1);
                s
            }
            (RolloutCommand::Resume, Some(mut s)) if s.phase == Phase::Paused => {
                s.phase = Phase::Progressing;
                s.step_started_ms = now;
                s.judged_since_ms = now;
                s.breach = None;
                s.reason = format!("resumed by {actor} at step {}/{steps}", s.step + 1);
                s
            }
            (RolloutCommand::Resume, Some(mut s)) if spec.steps.get(s.step) == Some(&Step::Approval) => {
                s.enter(&spec, s.step + 1, now);
                s.reason = format!("approved by {actor}; {}", s.reason);
                s
            }
            (RolloutCommand::Resume, Some(s)) => {
                return conflict(format!(
                "the rollout of \"{service}\" is progressing at step {}/{steps}, not paused or waiting for approval",
                s.step + 1
            ))
            }
            (RolloutCommand::Promote, Some(mut s)) => {
                s.phase = Phase::Promoted;
                s.step = steps;
                s.step_started_ms = now;
                s.set_weight(100, now);
                s.reason = format!("promoted by {actor}");
                s
            }
            (RolloutCommand::Abort, Some(mut s)) => {
                s.phase = Phase::Aborted;
                s.step_started_ms = now;
                s.set_weight(0, now);
                s.reason = format!("aborted by {actor}");
                s
            }
        };
        let weights = (command != RolloutCommand::Pause).then(|| rollout_weights(&next));
        let history_actor = format!("{actor}: rollout {}: {}", command.as_str(), next.reason);
        tracing::info!(%service, "{history_actor}");
        let revision = self.commit_change(&mut inner, service, Some(next), weights, Cause::Admin, history_actor)?;
        if command == RolloutCommand::Start {
            // The last rollout's verdict is not this one's.
            inner.judgements.remove(service);
        }
        if command == RolloutCommand::Abort {
            *inner
                .rollbacks
                .entry((service.to_owned(), "abort".to_owned()))
                .or_default() += 1;
        }
        Ok(revision)
    }

    /// The service's rollout as the admin API shows it, from the same table revision as the
    /// rest of the service (plus the guardrails' latest reading); `None` without a plan.
    pub fn rollout_view(&self, service: &Service) -> Option<Value> {
        let (spec, state) = service.rollout.as_ref()?;
        let now = now_ms();
        let g = &spec.guardrails;
        let name = |i: usize| service.versions.get(i).map(|v| v.name.to_string());
        let mut view = json!({
            "baseline": name(spec.baseline),
            "canary": name(spec.canary),
            "state": state.as_ref().map_or("idle", |s| s.phase.as_str()),
            "steps": spec.steps.len(),
            "plan": spec.steps.iter().map(Step::describe).collect::<Vec<_>>(),
            "auto_start": spec.auto_start,
            "on_breach": match spec.on_breach {
                crate::config::OnBreach::Rollback => "rollback",
                crate::config::OnBreach::Pause => "pause",
            },
            "guardrails": {
                "window": humantime::format_duration(g.window).to_string(),
                "min_requests": g.min_requests,
                "max_error_rate": g.max_error_rate,
                "max_error_rate_increase": g.max_error_rate_increase,
                "max_p99_ms": g.max_p99.map(|d| d.as_secs_f64() * 1000.0),
                "max_p99_ratio": g.max_p99_ratio,
            },
        });
        let (Some(state), Some(object)) = (state, view.as_object_mut()) else {
            return Some(view);
        };
        let hold = match spec.steps.get(state.step) {
            Some(Step::Weight { hold: Some(hold), .. }) if state.phase == Phase::Progressing => {
                let elapsed = now.saturating_sub(state.step_started_ms);
                Some((hold.as_millis() as u64).saturating_sub(elapsed))
            }
            _ => None,
        };
        object.insert("step".into(), json!(state.step + 1));
        object.insert(
            "step_kind".into(),
            json!(spec.steps.get(state.step).map(Step::describe)),
        );
        object.insert("step_started".into(), json!(rfc3339(state.step_started_ms)));
        object.insert("hold_remaining_ms".into(), json!(hold));
        object.insert("canary_weight".into(), json!(state.weight));
        object.insert("reason".into(), json!(state.reason));
        object.insert("breach".into(), json!(state.breach));
        if let Some(j) = self.lock().judgements.get(&*service.name) {
            object.insert(
                "judgement".into(),
                json!({
                    "time": rfc3339(j.time_ms),
                    "verdict": j.verdict.describe(),
                    "extended": j.extended,
                    "window_ms": j.span.as_millis() as u64,
                    "canary_role": j.canary_role.as_str(),
                    "canary": json!(j.observation.canary),
                    "baseline": json!(j.observation.baseline),
                }),
            );
        }
        Some(view)
    }
}

fn webhook_status(inner: &Inner, service: &str, state: &RolloutState) -> WebhookStatus {
    match inner.webhooks.get(service) {
        Some(call) if call.step == state.step && call.step_started_ms == state.step_started_ms => {
            call.status.lock().unwrap_or_else(|p| p.into_inner()).clone()
        }
        _ => WebhookStatus::NotStarted,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reload_ends_or_pauses_rollouts_its_plan_no_longer_fits() {
        let config = crate::config::parse(
            "listeners: [{ name: t, address: 127.0.0.1:0 }]\nservices:\n  - name: app\n    versions:\n      blue: { endpoints: [127.0.0.1:1] }\n      canary: { endpoints: [127.0.0.1:2] }\n    rollout: { baseline: blue, canary: canary, steps: [{ weight: 10, hold: 1m }] }\n  - name: other\n    versions:\n      blue: { endpoints: [127.0.0.1:3] }\n      green: { endpoints: [127.0.0.1:4] }\n    rollout: { baseline: blue, canary: green, steps: [{ weight: 10 }] }\n",
        )
        .unwrap_or_else(|e| panic!("{e}"));
        let at_step = |canary: &str, step: usize| {
            let mut state = RolloutState::new(("blue", canary), 0, String::new());
            state.step = step;
            state
        };
        let mut rollouts = BTreeMap::from([
            ("app".to_owned(), at_step("canary", 3)),
            ("other".to_owned(), at_step("canary", 0)),
            ("gone".to_owned(), at_step("canary", 0)),
        ]);
        let warnings = reconcile(&mut rollouts, &config, 5);
        assert_eq!(warnings.len(), 2, "{warnings:?}");
        assert!(!rollouts.contains_key("gone"));
        let app = &rollouts["app"];
        assert_eq!(app.phase, Phase::Paused, "a shortened plan never promotes by itself");
        assert!(app.reason.contains("no step 4 (it has 1)"), "{}", app.reason);
        assert_eq!(
            rollouts["other"].phase,
            Phase::Aborted,
            "the canary is now green, not canary"
        );
    }
}
