//! Rollouts: the state a rollout is in, the guardrails that judge its canary, and the decision
//! of what the next step is. Everything here is pure (times are passed in, windows are read by
//! the caller), so the control plane's reconciliation loop is the only place that acts on it.
//!
//! A rollout moves a service's traffic from a *baseline* to a *canary* through the plan's steps:
//! `idle → progressing(step) → paused → promoted | rolled_back | aborted`. While it is active
//! its weights are the service's weight override (baseline `100 − w`, canary `w`, others 0),
//! so they are persisted, restored after a restart, and shown like any other override.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::config::{Guardrails, RolloutSpec, Step};
use crate::metrics::window::WindowStats;

/// How often the reconciliation loop judges every active rollout (five times a second).
pub const EVALUATION_INTERVAL: Duration = Duration::from_millis(200);
/// One-sided 95% normal quantile: the significance of the error-rate rules.
const Z_95: f64 = 1.644_853_626_951_472_2;
/// A p99 ratio breach also needs the canary to be this much slower than the baseline, so
/// scheduling noise on sub-millisecond services does not roll back a healthy canary.
pub const P99_RATIO_FLOOR_MS: f64 = 1.0;
/// Silence is a breach only once the canary should have answered at least this many requests
/// by its weight: the chance of none by bad luck is then below e^-20 per span, so even
/// evaluations five times a second for hours do not add up to a false rollback.
pub const SILENCE_EXPECTED: f64 = 20.0;
/// A hold without a verdict is extended up to this many times its length in all, then pauses.
pub const HOLD_EXTENSION: u32 = 3;

/// Where a rollout is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    /// Working through the steps.
    Progressing,
    /// Stopped at a step for an operator (a pause command, a breach with `on_breach: pause`, a
    /// manual weights change, or a hold that never got enough data).
    Paused,
    /// Finished: the canary has 100%.
    Promoted,
    /// Finished by a guardrail breach: the canary has 0%.
    RolledBack,
    /// Finished by an operator's abort: the canary has 0%.
    Aborted,
}

impl Phase {
    /// The state's name in the API and history.
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Progressing => "progressing",
            Phase::Paused => "paused",
            Phase::Promoted => "promoted",
            Phase::RolledBack => "rolled_back",
            Phase::Aborted => "aborted",
        }
    }

    /// Whether the rollout still controls the service's weights.
    pub fn is_active(self) -> bool {
        matches!(self, Phase::Progressing | Phase::Paused)
    }
}

/// A guardrail breach: which rule, what was measured, and the threshold it crossed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Breach {
    /// `max_error_rate`, `max_error_rate_increase`, `max_p99`, `max_p99_ratio`, `silence` or
    /// `webhook`.
    pub rule: String,
    /// The measured value (a rate, milliseconds, a ratio, or a status code).
    pub value: f64,
    /// The threshold it crossed.
    pub threshold: f64,
    /// The whole story in one line.
    pub message: String,
}

/// One service's rollout, as persisted in `state_dir` on every transition.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RolloutState {
    /// The baseline's name when the rollout started.
    pub baseline: String,
    /// The canary's name when the rollout started.
    pub canary: String,
    /// Where it is.
    pub phase: Phase,
    /// Index of the current step (`steps.len()` once promoted through the plan).
    pub step: usize,
    /// When the current step began, in Unix milliseconds: a hold counts from here, across
    /// restarts.
    pub step_started_ms: u64,
    /// Guardrail windows never reach back before this (the start, or the last resume), so a
    /// restarted rollout is not judged on the traffic of the one before.
    pub judged_since_ms: u64,
    /// The canary's share in percent that the rollout set.
    pub weight: u32,
    /// When that share was set, for the silence rule.
    pub weight_since_ms: u64,
    /// Why it is where it is.
    pub reason: String,
    /// The breach that ended or paused it, if any.
    pub breach: Option<Breach>,
}

impl RolloutState {
    /// A rollout at its first step, not yet entered.
    pub fn new(names: (&str, &str), now_ms: u64, reason: String) -> Self {
        Self {
            baseline: names.0.to_owned(),
            canary: names.1.to_owned(),
            phase: Phase::Progressing,
            step: 0,
            step_started_ms: now_ms,
            judged_since_ms: now_ms,
            weight: 0,
            weight_since_ms: now_ms,
            reason,
            breach: None,
        }
    }

    /// Enters step `index` at `now_ms`: sets its weight, if it has one. Past the last step the
    /// rollout is promoted.
    pub fn enter(&mut self, spec: &RolloutSpec, index: usize, now_ms: u64) {
        self.step = index;
        self.step_started_ms = now_ms;
        match spec.steps.get(index) {
            None => {
                self.phase = Phase::Promoted;
                self.set_weight(100, now_ms);
                self.reason = "promoted: every step passed".to_owned();
            }
            Some(step) => {
                if let Step::Weight { weight: Some(w), .. } = step {
                    self.set_weight(*w, now_ms);
                }
                self.reason = format!("step {}/{}: {}", index + 1, spec.steps.len(), step.describe());
            }
        }
    }

    /// Sets the canary's share.
    pub fn set_weight(&mut self, weight: u32, now_ms: u64) {
        if weight != self.weight {
            self.weight = weight;
            self.weight_since_ms = now_ms;
        }
    }
}

/// What the guardrails say about the canary now.
#[derive(Debug, Clone, PartialEq)]
pub enum Verdict {
    /// Enough data, and every rule passes.
    Healthy,
    /// Not enough data for a verdict (why).
    Inconclusive(String),
    /// A rule is breached.
    Breach(Breach),
}

impl Verdict {
    /// `healthy`, `inconclusive: ...` or `breach: ...`.
    pub fn describe(&self) -> String {
        match self {
            Verdict::Healthy => "healthy".to_owned(),
            Verdict::Inconclusive(why) => format!("inconclusive: {why}"),
            Verdict::Breach(breach) => format!("breach: {}", breach.message),
        }
    }
}

/// What the guardrails read: both versions' windows, and recent counts (for silence).
#[derive(Debug, Clone)]
pub struct Observation {
    /// The canary's window (its shadow window during a weight-0 preview with a mirror).
    pub canary: WindowStats,
    /// The baseline's window.
    pub baseline: WindowStats,
    /// The canary's share in force, percent.
    pub weight: u32,
    /// Whether the published table lets the canary get requests (it has a healthy endpoint).
    pub routable: bool,
    /// `(canary, baseline)` answers over recent spans, all since that share was set (1 s,
    /// 2 s, 4 s, ... up to the window): a canary falling silent shows in the short ones.
    pub recent: Vec<(u64, u64)>,
}

/// The Wilson score interval of `errors` in `n` at the one-sided 95% level: `(lower, upper)`.
pub fn wilson(errors: u64, n: u64) -> (f64, f64) {
    if n == 0 {
        return (0.0, 1.0);
    }
    let n = n as f64;
    let p = (errors as f64 / n).min(1.0);
    let z2 = Z_95 * Z_95;
    let centre = p + z2 / (2.0 * n);
    let spread = Z_95 * (p * (1.0 - p) / n + z2 / (4.0 * n * n)).sqrt();
    let scale = 1.0 + z2 / n;
    (
        ((centre - spread) / scale).max(0.0),
        ((centre + spread) / scale).min(1.0),
    )
}

/// The lower 95% bound of `p_canary − p_baseline` (Newcombe's hybrid score interval from the
/// two Wilson intervals).
pub fn difference_lower_bound(canary: (u64, u64), baseline: (u64, u64)) -> f64 {
    let rate = |(e, n): (u64, u64)| if n == 0 { 0.0 } else { e as f64 / n as f64 };
    let (p1, p2) = (rate(canary), rate(baseline));
    let (l1, _) = wilson(canary.0, canary.1);
    let (_, u2) = wilson(baseline.0, baseline.1);
    p1 - p2 - ((p1 - l1).powi(2) + (u2 - p2).powi(2)).sqrt()
}

/// Judges the canary. Silence first (it needs no canary data), then, with at least
/// `min_requests` canary requests, each configured rule; a rule that compares with the
/// baseline is skipped while the baseline has fewer than `min_requests`.
pub fn judge(g: &Guardrails, o: &Observation) -> Verdict {
    let (c, b) = (&o.canary, &o.baseline);
    if o.weight > 0 && !o.routable {
        return Verdict::Breach(Breach {
            rule: "silence".into(),
            value: 0.0,
            threshold: 0.0,
            message: format!(
                "silence: the canary has no healthy endpoint, so nothing reaches it at weight {}",
                o.weight
            ),
        });
    }
    for &(canary, baseline) in o.recent.iter().filter(|_| o.weight > 0 && o.weight < 100) {
        let expected = baseline as f64 * f64::from(o.weight) / f64::from(100 - o.weight);
        if canary == 0 && baseline >= g.min_requests && expected >= SILENCE_EXPECTED {
            return Verdict::Breach(Breach {
                rule: "silence".into(),
                value: 0.0,
                threshold: expected,
                message: format!(
                    "silence: the canary answered nothing while the baseline answered {baseline} (about {expected:.0} expected at weight {})",
                    o.weight
                ),
            });
        }
    }
    if c.requests < g.min_requests {
        return Verdict::Inconclusive(format!(
            "{} canary requests in the window, {} needed",
            c.requests, g.min_requests
        ));
    }
    if let Some(max) = g.max_error_rate {
        let (lower, _) = wilson(c.errors, c.requests);
        if lower > max {
            return Verdict::Breach(Breach {
                rule: "max_error_rate".into(),
                value: c.error_rate,
                threshold: max,
                message: format!(
                    "max_error_rate: canary error rate {:.4} ({} of {}, 95% lower bound {lower:.4}) > {max}",
                    c.error_rate, c.errors, c.requests
                ),
            });
        }
    }
    let baseline_known = b.requests >= g.min_requests;
    if let (Some(max), true) = (g.max_error_rate_increase, baseline_known) {
        let lower = difference_lower_bound((c.errors, c.requests), (b.errors, b.requests));
        if lower > max {
            let increase = c.error_rate - b.error_rate;
            return Verdict::Breach(Breach {
                rule: "max_error_rate_increase".into(),
                value: increase,
                threshold: max,
                message: format!(
                    "max_error_rate_increase: canary error rate {:.4} − baseline {:.4} = {increase:.4} (95% lower bound {lower:.4}) > {max}",
                    c.error_rate, b.error_rate
                ),
            });
        }
    }
    if let Some(max) = g.max_p99 {
        let max_ms = max.as_secs_f64() * 1000.0;
        if c.p99_ms > max_ms {
            return Verdict::Breach(Breach {
                rule: "max_p99".into(),
                value: c.p99_ms,
                threshold: max_ms,
                message: format!("max_p99: canary p99 {:.1} ms > {max_ms} ms", c.p99_ms),
            });
        }
    }
    if let (Some(max), true) = (g.max_p99_ratio, baseline_known) {
        let ratio = c.p99_ms / b.p99_ms.max(f64::MIN_POSITIVE);
        if ratio > max && c.p99_ms - b.p99_ms > P99_RATIO_FLOOR_MS {
            return Verdict::Breach(Breach {
                rule: "max_p99_ratio".into(),
                value: ratio,
                threshold: max,
                message: format!(
                    "max_p99_ratio: canary p99 {:.1} ms / baseline p99 {:.1} ms = {ratio:.2} > {max}",
                    c.p99_ms, b.p99_ms
                ),
            });
        }
    }
    Verdict::Healthy
}

/// Where a webhook step's call is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WebhookStatus {
    /// Not called yet for this step.
    NotStarted,
    /// Called, no answer yet.
    Pending,
    /// Answered 2xx (the status).
    Passed(u16),
    /// Anything else: the status, the timeout or the error.
    Failed(String),
}

/// What the reconciliation loop does next with a progressing rollout.
#[derive(Debug, Clone, PartialEq)]
pub enum Next {
    /// Nothing yet; `extended` when a hold is running past its length for lack of data.
    Wait {
        /// The hold has been extended.
        extended: bool,
    },
    /// The current step passed: enter the next one.
    Advance,
    /// A guardrail (or the webhook) was breached.
    Breach(Breach),
    /// A hold ran to its extension limit without a verdict: pause for an operator.
    Inconclusive(String),
    /// Call the current step's webhook.
    CallWebhook,
}

/// Decides the next move of a progressing rollout at `now_ms`, given the guardrails' verdict
/// and, on a webhook step, where its call is.
pub fn next(spec: &RolloutSpec, state: &RolloutState, now_ms: u64, verdict: &Verdict, webhook: &WebhookStatus) -> Next {
    if let Verdict::Breach(breach) = verdict {
        return Next::Breach(breach.clone());
    }
    let Some(step) = spec.steps.get(state.step) else {
        // Only a reload that shortened the plan gets here: never promote on that.
        return Next::Inconclusive(format!(
            "the plan has no step {} any more (it has {})",
            state.step + 1,
            spec.steps.len()
        ));
    };
    match step {
        Step::Weight { hold: None, .. } => Next::Advance,
        Step::Weight { hold: Some(hold), .. } => {
            let elapsed = Duration::from_millis(now_ms.saturating_sub(state.step_started_ms));
            // Data gathered since the step (or since judging restarted, after a restart or a
            // resume, whose windows start empty) decides when to give up.
            let judged = Duration::from_millis(now_ms.saturating_sub(state.step_started_ms.max(state.judged_since_ms)));
            if elapsed < *hold {
                Next::Wait { extended: false }
            } else if *verdict == Verdict::Healthy {
                Next::Advance
            } else if judged >= *hold * HOLD_EXTENSION {
                Next::Inconclusive(format!(
                    "no verdict after {} ({}× the hold): {}",
                    humantime::format_duration(Duration::from_secs(elapsed.as_secs())),
                    HOLD_EXTENSION,
                    verdict.describe()
                ))
            } else {
                Next::Wait { extended: true }
            }
        }
        Step::Approval => Next::Wait { extended: false },
        Step::Webhook { .. } => match webhook {
            WebhookStatus::NotStarted => Next::CallWebhook,
            WebhookStatus::Pending => Next::Wait { extended: false },
            WebhookStatus::Passed(_) => Next::Advance,
            WebhookStatus::Failed(why) => Next::Breach(Breach {
                rule: "webhook".into(),
                value: 0.0,
                threshold: 0.0,
                message: format!("webhook: {why}"),
            }),
        },
    }
}

/// Calls a webhook step: `POST url` with `body` as JSON, at most `timeout` in all. An `https`
/// URL is verified against `ca_certs`, or the built-in roots when that is empty. `Ok(status)`
/// for a 2xx; anything else is an `Err` that says what happened.
pub async fn call_webhook(
    url: &http::Uri,
    timeout: Duration,
    ca_certs: &[rustls_pki_types::CertificateDer<'static>],
    body: String,
) -> Result<u16, String> {
    let call = async {
        let authority = url.authority().ok_or("the URL has no host")?;
        let tls = url.scheme_str() == Some("https");
        let addr = crate::config::EndpointAddr {
            host: authority
                .host()
                .trim_start_matches('[')
                .trim_end_matches(']')
                .to_owned(),
            port: authority.port_u16().unwrap_or(if tls { 443 } else { 80 }),
            tls,
        };
        let verify = crate::config::UpstreamTls {
            ca_certs: ca_certs.to_vec(),
            ..Default::default()
        };
        let origin = tls.then(|| crate::tls::Origin::new(&addr, crate::config::Protocol::Http1, &verify));
        let io = crate::upstream::connect(&addr, origin.as_ref(), timeout)
            .await
            .map_err(|e| format!("cannot connect to {authority}: {e}"))?;
        let (mut sender, connection) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(io))
            .await
            .map_err(|e| format!("handshake with {authority} failed: {e}"))?;
        tokio::spawn(connection);
        let path = url.path_and_query().map_or("/", |p| p.as_str());
        let request = http::Request::post(path)
            .header(http::header::HOST, authority.as_str())
            .header(http::header::CONTENT_TYPE, "application/json")
            .header(http::header::USER_AGENT, "sluice-rollout-webhook")
            .body(http_body_util::Full::new(bytes::Bytes::from(body)))
            .map_err(|e| format!("cannot build the request: {e}"))?;
        let response = sender
            .send_request(request)
            .await
            .map_err(|e| format!("{url} failed: {e}"))?;
        let status = response.status();
        if status.is_success() {
            Ok(status.as_u16())
        } else {
            Err(format!("{url} answered {status}"))
        }
    };
    match tokio::time::timeout(timeout, call).await {
        Ok(result) => result,
        Err(_) => Err(format!(
            "{url} did not answer within {}",
            humantime::format_duration(timeout)
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn window(requests: u64, errors: u64, p99_ms: f64) -> WindowStats {
        WindowStats {
            requests,
            errors,
            error_rate: if requests == 0 {
                0.0
            } else {
                errors as f64 / requests as f64
            },
            rps: 0.0,
            p50_ms: p99_ms / 2.0,
            p90_ms: p99_ms,
            p99_ms,
            p999_ms: p99_ms,
        }
    }

    fn guardrails() -> Guardrails {
        Guardrails {
            window: Duration::from_secs(30),
            min_requests: 50,
            max_error_rate: Some(0.05),
            max_error_rate_increase: Some(0.02),
            max_p99: Some(Duration::from_millis(300)),
            max_p99_ratio: Some(1.5),
        }
    }

    fn observe(canary: WindowStats, baseline: WindowStats) -> Observation {
        Observation {
            recent: vec![(canary.requests, baseline.requests)],
            routable: true,
            canary,
            baseline,
            weight: 10,
        }
    }

    fn rule(verdict: Verdict) -> String {
        match verdict {
            Verdict::Breach(b) => b.rule,
            other => panic!("expected a breach, got {other:?}"),
        }
    }

    #[test]
    fn wilson_bounds_match_the_formula() {
        // Reference values from an independent Python evaluation of Wilson's formula, z = 1.6449.
        let (lower, upper) = wilson(5, 100);
        assert!((lower - 0.024_547).abs() < 1e-5, "{lower}");
        assert!((upper - 0.099_161).abs() < 1e-5, "{upper}");
        let lower = difference_lower_bound((60, 600), (6, 600));
        assert!((lower - 0.069_433).abs() < 1e-5, "{lower}");
        assert_eq!(wilson(0, 0), (0.0, 1.0));
        // Counts read apart can have more errors than requests: a bound, never NaN.
        let (lower, _) = wilson(5, 3);
        assert!(lower > 0.5, "{lower}");
        let (lower, _) = wilson(50, 50);
        assert!(
            lower > 0.94,
            "a clearly broken canary is caught at 50 requests: {lower}"
        );
    }

    #[test]
    fn a_few_unlucky_errors_are_not_significant() {
        let g = guardrails();
        // 4 errors in 60 (6.7%) against a 5% limit: not significant.
        assert_eq!(
            judge(&g, &observe(window(60, 4, 5.0), window(600, 6, 5.0))),
            Verdict::Healthy
        );
        // 30 in 60 is.
        assert_eq!(
            rule(judge(&g, &observe(window(60, 30, 5.0), window(600, 6, 5.0)))),
            "max_error_rate"
        );
        // 3 in 60 against a baseline of 1 in 600: +4% looks big, but is not significant.
        let g = Guardrails {
            max_error_rate: None,
            ..g
        };
        assert_eq!(
            judge(&g, &observe(window(60, 3, 5.0), window(600, 6, 5.0))),
            Verdict::Healthy
        );
        assert_eq!(
            rule(judge(&g, &observe(window(600, 60, 5.0), window(600, 6, 5.0)))),
            "max_error_rate_increase"
        );
    }

    #[test]
    fn latency_rules_and_their_floor() {
        let g = guardrails();
        assert_eq!(
            rule(judge(&g, &observe(window(60, 0, 400.0), window(600, 0, 5.0)))),
            "max_p99"
        );
        assert_eq!(
            rule(judge(&g, &observe(window(60, 0, 100.0), window(600, 0, 5.0)))),
            "max_p99_ratio"
        );
        // Twice as slow, but by half a millisecond: noise, not a breach.
        assert_eq!(
            judge(&g, &observe(window(60, 0, 1.0), window(600, 0, 0.5))),
            Verdict::Healthy
        );
        // No baseline data: the ratio is not judged.
        assert_eq!(
            judge(&g, &observe(window(60, 0, 100.0), window(10, 0, 5.0))),
            Verdict::Healthy
        );
    }

    #[test]
    fn too_little_data_is_inconclusive_and_silence_is_a_breach() {
        let g = guardrails();
        assert!(matches!(
            judge(&g, &observe(window(49, 49, 5.0), window(600, 0, 5.0))),
            Verdict::Inconclusive(_)
        ));
        // Answers earlier, none in the last span: silent now.
        let silent = Observation {
            recent: vec![(0, 600), (3, 700)],
            ..observe(window(60, 0, 5.0), window(700, 0, 5.0))
        };
        assert_eq!(rule(judge(&g, &silent)), "silence");
        // Weight 1% of 600: about 6 expected, none is not yet telling.
        let rare = Observation {
            weight: 1,
            ..silent.clone()
        };
        assert_eq!(judge(&g, &rare), Verdict::Healthy);
        // Weight 0: no traffic is expected.
        let zero = Observation {
            weight: 0,
            ..silent.clone()
        };
        assert_eq!(judge(&g, &zero), Verdict::Healthy);
        // No healthy endpoint: silent whatever the traffic, even at weight 100.
        let down = Observation {
            weight: 100,
            routable: false,
            recent: Vec::new(),
            ..silent
        };
        assert_eq!(rule(judge(&g, &down)), "silence");
    }

    fn plan(steps: Vec<Step>) -> RolloutSpec {
        RolloutSpec {
            baseline: 0,
            canary: 1,
            auto_start: false,
            steps,
            guardrails: guardrails(),
            on_breach: crate::config::OnBreach::Rollback,
        }
    }

    #[test]
    fn holds_wait_extend_and_give_up() {
        let hold = Duration::from_secs(10);
        let spec = plan(vec![Step::Weight {
            weight: Some(10),
            hold: Some(hold),
        }]);
        let mut state = RolloutState::new(("blue", "canary"), 1_000, String::new());
        state.enter(&spec, 0, 1_000);
        assert_eq!(state.weight, 10);
        let none = WebhookStatus::NotStarted;
        let unsure = Verdict::Inconclusive("few".into());
        assert_eq!(
            next(&spec, &state, 5_000, &Verdict::Healthy, &none),
            Next::Wait { extended: false }
        );
        assert_eq!(next(&spec, &state, 11_000, &Verdict::Healthy, &none), Next::Advance);
        assert_eq!(
            next(&spec, &state, 11_000, &unsure, &none),
            Next::Wait { extended: true }
        );
        assert!(matches!(
            next(&spec, &state, 31_000, &unsure, &none),
            Next::Inconclusive(_)
        ));
        // After a restart at 50 s, the empty windows get a fresh 3× from then.
        state.judged_since_ms = 50_000;
        assert_eq!(
            next(&spec, &state, 60_000, &unsure, &none),
            Next::Wait { extended: true }
        );
        assert!(matches!(
            next(&spec, &state, 80_000, &unsure, &none),
            Next::Inconclusive(_)
        ));
        state.enter(&spec, 1, 81_000);
        assert_eq!((state.phase, state.weight), (Phase::Promoted, 100));
    }

    #[test]
    fn approval_waits_and_webhooks_decide() {
        let spec = plan(vec![
            Step::Approval,
            Step::Webhook {
                url: "http://127.0.0.1:1/".parse().expect("uri"),
                timeout: Duration::from_secs(1),
                ca_certs: Vec::new(),
            },
        ]);
        let mut state = RolloutState::new(("blue", "canary"), 0, String::new());
        let healthy = Verdict::Healthy;
        assert_eq!(
            next(&spec, &state, 1_000_000, &healthy, &WebhookStatus::NotStarted),
            Next::Wait { extended: false }
        );
        state.enter(&spec, 1, 0);
        assert_eq!(
            next(&spec, &state, 0, &healthy, &WebhookStatus::NotStarted),
            Next::CallWebhook
        );
        assert_eq!(
            next(&spec, &state, 0, &healthy, &WebhookStatus::Pending),
            Next::Wait { extended: false }
        );
        assert_eq!(
            next(&spec, &state, 0, &healthy, &WebhookStatus::Passed(204)),
            Next::Advance
        );
        assert!(matches!(
            next(&spec, &state, 0, &healthy, &WebhookStatus::Failed("500".into())),
            Next::Breach(Breach { ref rule, .. }) if rule == "webhook"
        ));
        let breach = Verdict::Breach(Breach {
            rule: "silence".into(),
            value: 0.0,
            threshold: 1.0,
            message: String::new(),
        });
        assert!(matches!(
            next(&spec, &state, 0, &breach, &WebhookStatus::Pending),
            Next::Breach(_)
        ));
    }
}
