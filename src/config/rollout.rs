//! `compile` for `services[i].rollout`: the plan (steps) and the guardrails that judge it.

use std::time::Duration;

use super::compile::Errors;
use super::raw::{RawGuardrails, RawRollout, RawStep};
use super::routing::positive_duration;
use super::units;

/// Default guardrail window.
pub const DEFAULT_WINDOW: Duration = Duration::from_secs(30);
/// Default fewest canary requests for a verdict.
pub const DEFAULT_MIN_REQUESTS: u64 = 50;
/// Default webhook timeout.
pub const DEFAULT_WEBHOOK_TIMEOUT: Duration = Duration::from_secs(5);
/// Longest guardrail window: the metrics keep 60 s of ticks.
const MAX_WINDOW: Duration = crate::metrics::window::MAX_WINDOW;
/// Longest hold: a day (so hold × 3 and wall-clock arithmetic never overflow).
const MAX_HOLD: Duration = Duration::from_secs(24 * 3600);
/// Longest webhook timeout.
const MAX_WEBHOOK_TIMEOUT: Duration = Duration::from_secs(300);
/// Most steps in a plan.
const MAX_STEPS: usize = 100;

/// A validated rollout plan.
#[derive(Debug, Clone, PartialEq)]
pub struct RolloutSpec {
    /// Index of the baseline version.
    pub baseline: usize,
    /// Index of the canary version.
    pub canary: usize,
    /// Start when a reload changes the canary's endpoints.
    pub auto_start: bool,
    /// The plan, in order; at least one step.
    pub steps: Vec<Step>,
    /// The rules that judge the canary.
    pub guardrails: Guardrails,
    /// What a breach does.
    pub on_breach: OnBreach,
}

impl Eq for RolloutSpec {}

/// One step of a plan.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// Set the canary's share (when `weight` is given), then watch it for `hold`.
    Weight {
        /// Canary percent, 0 to 100; `None`: keep the current one.
        weight: Option<u32>,
        /// How long the guardrails must stay green; `None`: go on at once.
        hold: Option<Duration>,
    },
    /// Wait for `resume` (or `promote`) from an operator.
    Approval,
    /// POST the rollout's description to `url`; a 2xx within `timeout` passes.
    Webhook {
        /// `http://` or `https://host:port/path`.
        url: http::Uri,
        /// How long the answer may take.
        timeout: Duration,
        /// For `https`: the CA certificates trusted instead of the built-in roots; empty: those.
        ca_certs: Vec<rustls_pki_types::CertificateDer<'static>>,
    },
}

impl Step {
    /// A short description for history and `ctl watch`: `weight 25, hold 2m`, `approval`, ...
    pub fn describe(&self) -> String {
        match self {
            Step::Weight { weight, hold } => {
                let mut parts = Vec::new();
                if let Some(weight) = weight {
                    parts.push(format!("weight {weight}"));
                }
                if let Some(hold) = hold {
                    parts.push(format!("hold {}", humantime::format_duration(*hold)));
                }
                parts.join(", ")
            }
            Step::Approval => "approval".to_owned(),
            Step::Webhook { url, .. } => format!("webhook {url}"),
        }
    }
}

/// Guardrails: each rule is optional; silence is always judged.
#[derive(Debug, Clone, PartialEq)]
pub struct Guardrails {
    /// Sliding window the rules read.
    pub window: Duration,
    /// Fewest canary requests in the window for any verdict.
    pub min_requests: u64,
    /// Highest canary error rate (significant at 95%).
    pub max_error_rate: Option<f64>,
    /// Highest canary error rate minus baseline's (significant at 95%).
    pub max_error_rate_increase: Option<f64>,
    /// Highest canary p99.
    pub max_p99: Option<Duration>,
    /// Highest canary p99 / baseline p99.
    pub max_p99_ratio: Option<f64>,
}

/// What a breach does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnBreach {
    /// Canary to 0 in one table swap; the rollout ends `rolled_back`.
    Rollback,
    /// The rollout pauses at its current weights for an operator.
    Pause,
}

/// Checks a service's `rollout` against its version `names`.
pub(super) fn compile_rollout(at: &str, raw: &RawRollout, names: &[&str], errors: &mut Errors) -> Option<RolloutSpec> {
    let rat = format!("{at}.rollout");
    let before = errors.0.len();
    let mut version = |field: &str, name: &str| {
        let index = names.iter().position(|n| *n == name);
        if index.is_none() {
            errors.push(
                format!("{rat}.{field}"),
                format!("unknown version \"{name}\" (versions: {})", names.join(", ")),
            );
        }
        index
    };
    let baseline = version("baseline", &raw.baseline);
    let canary = version("canary", &raw.canary);
    if baseline.is_some() && baseline == canary {
        errors.push(
            format!("{rat}.canary"),
            format!("\"{}\" is also the baseline: name two different versions", raw.canary),
        );
    }
    if raw.steps.is_empty() {
        errors.push(
            format!("{rat}.steps"),
            "at least one step is needed, e.g. `- { weight: 10, hold: 60s }`",
        );
    }
    if raw.steps.len() > MAX_STEPS {
        errors.push(
            format!("{rat}.steps"),
            format!("{} steps: use at most {MAX_STEPS}", raw.steps.len()),
        );
    }
    let steps: Vec<Option<Step>> = raw
        .steps
        .iter()
        .enumerate()
        .map(|(j, step)| compile_step(&format!("{rat}.steps[{j}]"), step, errors))
        .collect();
    let guardrails = compile_guardrails(&format!("{rat}.guardrails"), &raw.guardrails, errors);
    let on_breach = match raw.on_breach.as_deref() {
        None | Some("rollback") => OnBreach::Rollback,
        Some("pause") => OnBreach::Pause,
        Some(other) => {
            errors.push(
                format!("{rat}.on_breach"),
                format!("unknown action \"{other}\" (actions: rollback, pause)"),
            );
            OnBreach::Rollback
        }
    };
    if errors.0.len() != before {
        return None;
    }
    Some(RolloutSpec {
        baseline: baseline?,
        canary: canary?,
        auto_start: raw.auto_start,
        steps: steps.into_iter().collect::<Option<Vec<Step>>>()?,
        guardrails,
        on_breach,
    })
}

fn compile_step(sat: &str, raw: &RawStep, errors: &mut Errors) -> Option<Step> {
    let kinds = [
        raw.weight.is_some() || raw.hold.is_some(),
        raw.approval.is_some(),
        raw.webhook.is_some(),
    ];
    if kinds.iter().filter(|&&k| k).count() != 1 {
        errors.push(
            sat,
            "a step is one of `{ weight: N, hold: DURATION }` (either or both), `{ approval: true }` or `{ webhook: { url: ... } }`",
        );
        return None;
    }
    if let Some(approval) = raw.approval {
        if !approval {
            errors.push(
                format!("{sat}.approval"),
                "only `approval: true` makes sense: remove the step instead",
            );
            return None;
        }
        return Some(Step::Approval);
    }
    if let Some(webhook) = &raw.webhook {
        let timeout = positive_duration(
            format!("{sat}.webhook.timeout"),
            webhook.timeout.as_deref(),
            DEFAULT_WEBHOOK_TIMEOUT,
            Some(MAX_WEBHOOK_TIMEOUT),
            errors,
        );
        let url = match webhook.url.parse::<http::Uri>() {
            Ok(url) if matches!(url.scheme_str(), Some("http" | "https")) && url.authority().is_some() => url,
            _ => {
                errors.push(
                    format!("{sat}.webhook.url"),
                    format!(
                        "\"{}\" is not an http or https URL: write e.g. \"http://127.0.0.1:7000/gate\"",
                        webhook.url
                    ),
                );
                return None;
            }
        };
        let mut ca_certs = Vec::new();
        if let Some(ca) = &webhook.ca {
            if url.scheme_str() != Some("https") {
                errors.push(format!("{sat}.webhook.ca"), "applies to https:// URLs only");
            }
            match crate::tls::read_ca(std::path::Path::new(ca)) {
                Ok(certs) => ca_certs = certs,
                Err(e) => errors.push(format!("{sat}.webhook.ca"), e),
            }
        }
        return Some(Step::Webhook { url, timeout, ca_certs });
    }
    let weight = match raw.weight {
        Some(w) if w > 100 => {
            errors.push(
                format!("{sat}.weight"),
                format!("{w} is out of range: the canary's share is 0 to 100"),
            );
            return None;
        }
        other => other.map(|w| w as u32),
    };
    let before = errors.0.len();
    let hold = raw
        .hold
        .as_deref()
        .map(|h| positive_duration(format!("{sat}.hold"), Some(h), Duration::ZERO, Some(MAX_HOLD), errors));
    (errors.0.len() == before).then_some(Step::Weight { weight, hold })
}

fn compile_guardrails(gat: &str, raw: &RawGuardrails, errors: &mut Errors) -> Guardrails {
    let window = positive_duration(
        format!("{gat}.window"),
        raw.window.as_deref(),
        DEFAULT_WINDOW,
        Some(MAX_WINDOW),
        errors,
    );
    let min_requests = raw.min_requests.unwrap_or(DEFAULT_MIN_REQUESTS);
    if min_requests == 0 {
        errors.push(
            format!("{gat}.min_requests"),
            "must be at least 1: no verdict is possible without requests",
        );
    }
    let mut fraction = |name: &str, value: Option<f64>| {
        if let Some(v) = value {
            if !(0.0..=1.0).contains(&v) {
                errors.push(
                    format!("{gat}.{name}"),
                    format!("{v} is out of range: a rate is 0 to 1 (0.01 is 1%)"),
                );
            }
        }
        value
    };
    let max_error_rate = fraction("max_error_rate", raw.max_error_rate);
    let max_error_rate_increase = fraction("max_error_rate_increase", raw.max_error_rate_increase);
    let max_p99 = raw.max_p99.as_deref().map(|text| match units::duration(text) {
        Ok(d) if !d.is_zero() => d,
        Ok(_) => {
            errors.push(format!("{gat}.max_p99"), "must be greater than zero");
            Duration::ZERO
        }
        Err(e) => {
            errors.push(format!("{gat}.max_p99"), e);
            Duration::ZERO
        }
    });
    if let Some(ratio) = raw.max_p99_ratio {
        if !ratio.is_finite() || ratio < 1.0 {
            errors.push(
                format!("{gat}.max_p99_ratio"),
                format!("{ratio} is out of range: use a ratio of at least 1, e.g. 1.5"),
            );
        }
    }
    Guardrails {
        window,
        min_requests,
        max_error_rate,
        max_error_rate_increase,
        max_p99,
        max_p99_ratio: raw.max_p99_ratio,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::parse;

    fn service(rollout: &str) -> String {
        format!(
            "listeners: [{{ name: t, address: 127.0.0.1:0 }}]\nservices:\n  - name: app\n    versions:\n      blue: {{ endpoints: [127.0.0.1:1] }}\n      canary: {{ endpoints: [127.0.0.1:2] }}\n    routing: {{ weights: {{ blue: 100 }} }}\n    rollout:\n{rollout}"
        )
    }

    #[test]
    fn a_full_plan_compiles_with_defaults() {
        let yaml = service(
            "      baseline: blue\n      canary: canary\n      auto_start: true\n      steps:\n        - { weight: 5, hold: 60s }\n        - { approval: true }\n        - { webhook: { url: \"http://127.0.0.1:7000/gate\" } }\n        - { hold: 10s }\n        - { weight: 100 }\n      guardrails: { max_error_rate: 0.01, max_p99: 300ms, max_p99_ratio: 1.5 }\n      on_breach: pause\n",
        );
        let config = parse(&yaml).unwrap_or_else(|e| panic!("{e}"));
        let spec = config.services[0].rollout.clone().expect("rollout");
        assert_eq!((spec.baseline, spec.canary, spec.auto_start), (0, 1, true));
        assert_eq!(spec.on_breach, OnBreach::Pause);
        assert_eq!(
            spec.steps,
            vec![
                Step::Weight {
                    weight: Some(5),
                    hold: Some(Duration::from_secs(60))
                },
                Step::Approval,
                Step::Webhook {
                    url: "http://127.0.0.1:7000/gate".parse().expect("uri"),
                    timeout: DEFAULT_WEBHOOK_TIMEOUT,
                    ca_certs: Vec::new(),
                },
                Step::Weight {
                    weight: None,
                    hold: Some(Duration::from_secs(10))
                },
                Step::Weight {
                    weight: Some(100),
                    hold: None
                },
            ]
        );
        let g = &spec.guardrails;
        assert_eq!((g.window, g.min_requests), (DEFAULT_WINDOW, DEFAULT_MIN_REQUESTS));
        assert_eq!((g.max_error_rate, g.max_error_rate_increase), (Some(0.01), None));
        assert_eq!(
            (g.max_p99, g.max_p99_ratio),
            (Some(Duration::from_millis(300)), Some(1.5))
        );
    }

    #[test]
    fn bad_plans_report_every_error() {
        let yaml = service(
            "      baseline: blue\n      canary: canry\n      steps:\n        - { weight: 150 }\n        - { weight: 5, approval: true }\n        - { approval: false }\n        - { webhook: { url: \"http://x:1/\", ca: /nonexistent/ca.pem } }\n        - { webhook: { url: nope } }\n        - { hold: 0s }\n      guardrails: { window: 2m, min_requests: 0, max_error_rate: 2, max_p99: fast, max_p99_ratio: 0.5 }\n      on_breach: panic\n",
        );
        let errors: Vec<String> = parse(&yaml)
            .expect_err("invalid")
            .0
            .iter()
            .map(ToString::to_string)
            .collect();
        let expected = [
            "services[0].rollout.canary: unknown version \"canry\" (versions: blue, canary)",
            "services[0].rollout.steps[0].weight: 150 is out of range",
            "services[0].rollout.steps[1]: a step is one of",
            "services[0].rollout.steps[2].approval: only `approval: true`",
            "services[0].rollout.steps[3].webhook.ca: applies to https:// URLs only",
            "services[0].rollout.steps[3].webhook.ca: cannot read /nonexistent/ca.pem",
            "services[0].rollout.steps[4].webhook.url: \"nope\" is not an http or https URL",
            "services[0].rollout.steps[5].hold: must be greater than zero",
            "services[0].rollout.guardrails.window: 120s is too long",
            "services[0].rollout.guardrails.min_requests: must be at least 1",
            "services[0].rollout.guardrails.max_error_rate: 2 is out of range",
            "services[0].rollout.guardrails.max_p99: \"fast\" is not a duration",
            "services[0].rollout.guardrails.max_p99_ratio: 0.5 is out of range",
            "services[0].rollout.on_breach: unknown action \"panic\"",
        ];
        assert_eq!(errors.len(), expected.len(), "{errors:#?}");
        for (error, start) in errors.iter().zip(expected) {
            assert!(error.starts_with(start), "{error:?} should start with {start:?}");
        }
        let same = service("      baseline: blue\n      canary: blue\n      steps: []\n");
        let errors = parse(&same).expect_err("invalid").to_string();
        assert!(errors.contains("\"blue\" is also the baseline"), "{errors}");
        assert!(errors.contains("rollout.steps: at least one step"), "{errors}");
    }
}
