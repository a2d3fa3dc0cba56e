//! `compile` for `routing.rules` and `routing.sticky`.

use http::{HeaderName, HeaderValue};

use super::compile::Errors;
use super::raw::{RawHealthCheck, RawMirror, RawOutlierDetection};
use super::raw::{RawRule, RawRuleMatch, RawSticky};
use super::{units, Compare, KeySource, MirrorSpec, RuleMatch, RuleSpec, StickySpec, DEFAULT_STICKY_TTL};
use super::{HealthCheckSpec, DEFAULT_HEALTHY_THRESHOLD, DEFAULT_HEALTH_INTERVAL, DEFAULT_HEALTH_PATH};
use super::{OutlierSpec, DEFAULT_CONSECUTIVE_FAILURES, DEFAULT_EJECTION, DEFAULT_MAX_EJECTED_PERCENT};
use super::{DEFAULT_HEALTH_TIMEOUT, DEFAULT_UNHEALTHY_THRESHOLD};
use super::{DEFAULT_MIRROR_MAX_BODY, DEFAULT_MIRROR_MAX_IN_FLIGHT};

/// Most shadow requests in flight a mirror may allow.
const MAX_MIRROR_IN_FLIGHT: usize = 65_536;

/// Checks a service's mirrors against its version `names`.
pub(super) fn compile_mirrors(at: &str, raw: &[RawMirror], names: &[&str], errors: &mut Errors) -> Vec<MirrorSpec> {
    let mut mirrors = Vec::with_capacity(raw.len());
    for (j, mirror) in raw.iter().enumerate() {
        let mat = format!("{at}.mirror[{j}]");
        let before = errors.0.len();
        let version = names.iter().position(|n| *n == mirror.version);
        if version.is_none() {
            errors.push(
                format!("{mat}.version"),
                format!(
                    "unknown version \"{}\" (versions: {})",
                    mirror.version,
                    names.join(", ")
                ),
            );
        }
        if raw[..j].iter().any(|m| m.version == mirror.version) {
            errors.push(
                format!("{mat}.version"),
                format!("\"{}\" is already mirrored by an earlier entry", mirror.version),
            );
        }
        if !(0.0..=100.0).contains(&mirror.percent) {
            errors.push(
                format!("{mat}.percent"),
                format!("{} is out of range: use 0 to 100", mirror.percent),
            );
        }
        let max_body = match mirror.max_body.as_deref().map(units::size) {
            None => DEFAULT_MIRROR_MAX_BODY,
            Some(Ok(size)) => size,
            Some(Err(e)) => {
                errors.push(format!("{mat}.max_body"), e);
                0
            }
        };
        let max_in_flight = mirror.max_in_flight.unwrap_or(DEFAULT_MIRROR_MAX_IN_FLIGHT);
        if max_in_flight == 0 || max_in_flight > MAX_MIRROR_IN_FLIGHT {
            errors.push(
                format!("{mat}.max_in_flight"),
                format!("{max_in_flight} is out of range: use 1 to {MAX_MIRROR_IN_FLIGHT}"),
            );
        }
        let compare = match mirror.compare.as_deref() {
            None | Some("none") => Compare::None,
            Some("status") => Compare::Status,
            Some("body") => Compare::Body,
            Some(other) => {
                errors.push(
                    format!("{mat}.compare"),
                    format!("unknown value \"{other}\" (use none, status or body)"),
                );
                Compare::None
            }
        };
        if let (Some(version), true) = (version, errors.0.len() == before) {
            mirrors.push(MirrorSpec {
                version,
                percent: mirror.percent,
                max_body,
                max_in_flight,
                compare,
            });
        }
    }
    mirrors
}

/// Checks a service's rules against its version `names` and flag names.
pub(super) fn compile_rules(
    at: &str,
    raw: &[RawRule],
    names: &[&str],
    flags: &[&str],
    errors: &mut Errors,
) -> Vec<RuleSpec> {
    let mut rules = Vec::with_capacity(raw.len());
    for (j, rule) in raw.iter().enumerate() {
        let rat = format!("{at}.routing.rules[{j}]");
        let version = names.iter().position(|n| *n == rule.version);
        if version.is_none() {
            errors.push(
                format!("{rat}.version"),
                format!("unknown version \"{}\" (versions: {})", rule.version, names.join(", ")),
            );
        }
        let matcher = compile_match(&rat, &rule.matcher, Some(flags), errors);
        if let (Some(matcher), Some(version)) = (matcher, version) {
            rules.push(RuleSpec { matcher, version });
        }
    }
    rules
}

/// Checks one rule's `match` at `rat`: exactly one of `header`, `cookie` and, when `flags` is
/// given (version rules), `flag`, which must name one of `flags`.
pub(super) fn compile_match(
    rat: &str,
    raw: &RawRuleMatch,
    flags: Option<&[&str]>,
    errors: &mut Errors,
) -> Option<RuleMatch> {
    match (&raw.header, &raw.cookie, &raw.flag) {
        (Some(header), None, None) => header_match(rat, &header.name, header.value.as_deref(), header.present, errors),
        (None, Some(cookie), None) => cookie_match(rat, &cookie.name, &cookie.value, errors),
        (None, None, Some(flag)) => match flags {
            Some(flags) => match flags.iter().position(|f| f == flag) {
                Some(index) => Some(RuleMatch::Flag(index)),
                None => {
                    let known = if flags.is_empty() {
                        "none".to_owned()
                    } else {
                        flags.join(", ")
                    };
                    errors.push(
                        format!("{rat}.match.flag"),
                        format!("unknown flag \"{flag}\" (flags: {known})"),
                    );
                    None
                }
            },
            None => {
                errors.push(
                    format!("{rat}.match.flag"),
                    "a flag's rules match a header or a cookie, not another flag",
                );
                None
            }
        },
        _ => {
            let flag = if flags.is_some() {
                ", `cookie: { name, value }` or `flag: NAME`"
            } else {
                " or `cookie: { name, value }`"
            };
            errors.push(
                format!("{rat}.match"),
                format!("needs exactly one of `header: {{ name, value }}`{flag}"),
            );
            None
        }
    }
}

fn header_match(
    rat: &str,
    name: &str,
    value: Option<&str>,
    present: Option<bool>,
    errors: &mut Errors,
) -> Option<RuleMatch> {
    let name = match HeaderName::from_bytes(name.as_bytes()) {
        Ok(name) => name,
        Err(_) => {
            errors.push(
                format!("{rat}.match.header.name"),
                format!("\"{name}\" is not a valid header name"),
            );
            return None;
        }
    };
    match (value, present) {
        (Some(value), None) => match HeaderValue::from_str(value) {
            Ok(value) => Some(RuleMatch::Header {
                name,
                value: Some(value),
            }),
            Err(_) => {
                errors.push(
                    format!("{rat}.match.header.value"),
                    format!("\"{value}\" is not a valid header value"),
                );
                None
            }
        },
        (None, Some(true)) => Some(RuleMatch::Header { name, value: None }),
        _ => {
            errors.push(
                format!("{rat}.match.header"),
                "needs exactly one of `value: \"...\"` or `present: true`",
            );
            None
        }
    }
}

/// A cookie name is an RFC 6265 token.
fn valid_cookie_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_graphic() && !b"()<>@,;:\\\"/[]?={}".contains(&b))
}

fn cookie_match(rat: &str, name: &str, value: &str, errors: &mut Errors) -> Option<RuleMatch> {
    if !valid_cookie_name(name) {
        errors.push(
            format!("{rat}.match.cookie.name"),
            format!("\"{name}\" is not a valid cookie name"),
        );
        return None;
    }
    Some(RuleMatch::Cookie {
        name: name.to_owned(),
        value: value.to_owned(),
    })
}

/// Parses a bucketing key: `header:NAME` or `cookie:NAME`.
pub(super) fn key_source(text: &str) -> Result<KeySource, String> {
    match text.split_once(':') {
        Some(("header", name)) => HeaderName::from_bytes(name.trim().as_bytes())
            .map(KeySource::Header)
            .map_err(|_| format!("\"{name}\" is not a valid header name")),
        Some(("cookie", name)) if valid_cookie_name(name.trim()) => Ok(KeySource::Cookie(name.trim().to_owned())),
        _ => Err(format!(
            "\"{text}\" is not a key: write `header:NAME` (e.g. header:x-user-id) or `cookie:NAME`"
        )),
    }
}

/// Checks a service's sticky settings.
pub(super) fn compile_sticky(at: &str, raw: &RawSticky, errors: &mut Errors) -> Option<StickySpec> {
    let sat = format!("{at}.routing.sticky");
    let before = errors.0.len();
    if !valid_cookie_name(&raw.cookie) {
        errors.push(
            format!("{sat}.cookie"),
            format!("\"{}\" is not a valid cookie name", raw.cookie),
        );
    }
    let key = raw.hash_key.as_deref().and_then(|text| {
        key_source(text)
            .map_err(|e| errors.push(format!("{sat}.hash_key"), e))
            .ok()
    });
    let ttl = match raw.ttl.as_deref().map(units::duration) {
        None => DEFAULT_STICKY_TTL,
        Some(Ok(ttl)) if ttl.as_secs() >= 1 => ttl,
        Some(Ok(_)) => {
            errors.push(
                format!("{sat}.ttl"),
                "must be at least 1s (cookies count in whole seconds)",
            );
            DEFAULT_STICKY_TTL
        }
        Some(Err(e)) => {
            errors.push(format!("{sat}.ttl"), e);
            DEFAULT_STICKY_TTL
        }
    };
    (errors.0.len() == before).then(|| StickySpec {
        cookie: raw.cookie.clone(),
        key,
        ttl,
    })
}

/// Longest health-check interval or first ejection accepted: a day (longer is surely a typo,
/// and keeps the doubled ejection far from overflow).
const MAX_HEALTH_DURATION: std::time::Duration = std::time::Duration::from_secs(86_400);

/// Most successes or failures in a row a threshold may ask for.
const MAX_HEALTH_THRESHOLD: u32 = 100;

/// The duration `text` at `path`: above zero and, with `max`, at most that; `default` when not
/// given or invalid (the error is pushed).
pub(super) fn positive_duration(
    path: String,
    text: Option<&str>,
    default: std::time::Duration,
    max: Option<std::time::Duration>,
    errors: &mut Errors,
) -> std::time::Duration {
    match text.map(units::duration) {
        None => default,
        Some(Ok(d)) if d.is_zero() => {
            errors.push(path, "must be greater than zero");
            default
        }
        Some(Ok(d)) => match max {
            Some(max) if d > max => {
                errors.push(path, format!("{d:?} is too long: use at most {max:?}"));
                default
            }
            _ => d,
        },
        Some(Err(e)) => {
            errors.push(path, e);
            default
        }
    }
}

/// Checks a version's `health_check`.
pub(super) fn compile_health_check(vat: &str, raw: &RawHealthCheck, errors: &mut Errors) -> Option<HealthCheckSpec> {
    let hat = format!("{vat}.health_check");
    let before = errors.0.len();
    let path_text = raw.path.as_deref().unwrap_or(DEFAULT_HEALTH_PATH);
    let path = match http::uri::PathAndQuery::try_from(path_text) {
        Ok(path) if path_text.starts_with('/') => Some(path),
        _ => {
            errors.push(
                format!("{hat}.path"),
                format!("\"{path_text}\" is not a path: write e.g. \"/healthz\""),
            );
            None
        }
    };
    let interval = positive_duration(
        format!("{hat}.interval"),
        raw.interval.as_deref(),
        DEFAULT_HEALTH_INTERVAL,
        Some(MAX_HEALTH_DURATION),
        errors,
    );
    let timeout = positive_duration(
        format!("{hat}.timeout"),
        raw.timeout.as_deref(),
        DEFAULT_HEALTH_TIMEOUT,
        None,
        errors,
    );
    let mut threshold = |name: &str, value: Option<u32>, default: u32| {
        let value = value.unwrap_or(default);
        if value == 0 || value > MAX_HEALTH_THRESHOLD {
            errors.push(
                format!("{hat}.{name}"),
                format!("{value} is out of range: use 1 to {MAX_HEALTH_THRESHOLD}"),
            );
        }
        value
    };
    let healthy = threshold("healthy", raw.healthy, DEFAULT_HEALTHY_THRESHOLD);
    let unhealthy = threshold("unhealthy", raw.unhealthy, DEFAULT_UNHEALTHY_THRESHOLD);
    if timeout > interval {
        errors.push(
            format!("{hat}.timeout"),
            format!("{timeout:?} is longer than the interval {interval:?}: checks would overlap"),
        );
    }
    let path = path?;
    (errors.0.len() == before).then_some(HealthCheckSpec {
        path,
        interval,
        timeout,
        healthy,
        unhealthy,
    })
}

/// Checks a service's `outlier_detection`.
pub(super) fn compile_outlier_detection(
    at: &str,
    raw: &RawOutlierDetection,
    errors: &mut Errors,
) -> Option<OutlierSpec> {
    let oat = format!("{at}.outlier_detection");
    let before = errors.0.len();
    let consecutive_failures = raw.consecutive_failures.unwrap_or(DEFAULT_CONSECUTIVE_FAILURES);
    if consecutive_failures == 0 || consecutive_failures > MAX_HEALTH_THRESHOLD {
        errors.push(
            format!("{oat}.consecutive_failures"),
            format!("{consecutive_failures} is out of range: use 1 to {MAX_HEALTH_THRESHOLD}"),
        );
    }
    let ejection = positive_duration(
        format!("{oat}.ejection"),
        raw.ejection.as_deref(),
        DEFAULT_EJECTION,
        Some(MAX_HEALTH_DURATION),
        errors,
    );
    let max_ejected_percent = raw.max_ejected_percent.unwrap_or(DEFAULT_MAX_EJECTED_PERCENT);
    if max_ejected_percent > 100 {
        errors.push(
            format!("{oat}.max_ejected_percent"),
            format!("{max_ejected_percent} is out of range: use 0 to 100"),
        );
    }
    (errors.0.len() == before).then_some(OutlierSpec {
        consecutive_failures,
        ejection,
        max_ejected_percent,
    })
}

#[cfg(test)]
mod tests {
    use crate::config::{parse, KeySource, RuleMatch};

    /// Asserts that `yaml` fails with exactly these errors (each given by its start).
    fn assert_exact_errors(yaml: &str, expected: &[&str]) {
        let errors: Vec<String> = parse(yaml)
            .expect_err("invalid")
            .0
            .iter()
            .map(ToString::to_string)
            .collect();
        for want in expected {
            assert!(
                errors.iter().any(|e| e.starts_with(want)),
                "missing {want:?} in {errors:#?}"
            );
        }
        assert_eq!(errors.len(), expected.len(), "{errors:#?}");
    }

    fn service(routing: &str) -> String {
        format!(
            "listeners: [{{ name: p, address: 127.0.0.1:0 }}]\nservices:\n  - name: s\n    versions: {{ blue: {{ endpoints: [127.0.0.1:1] }}, canary: {{ endpoints: [127.0.0.1:2] }} }}\n    routing:\n{routing}"
        )
    }

    #[test]
    fn rules_and_sticky_compile() {
        let yaml = service(
            "      weights: { blue: 1 }
      rules:
        - { match: { header: { name: X-Sluice-Version, value: canary } }, version: canary }
        - { match: { header: { name: x-beta, present: true } }, version: canary }
        - { match: { cookie: { name: beta, value: \"1\" } }, version: blue }
      sticky: { cookie: sluice-s, hash_key: \"header:x-user-id\", ttl: 30m }
",
        );
        let config = parse(&yaml).unwrap_or_else(|e| panic!("{e}"));
        let s = &config.services[0];
        assert_eq!(s.rules.len(), 3);
        assert_eq!(s.rules[0].version, 1);
        assert!(
            matches!(&s.rules[0].matcher, RuleMatch::Header { name, value: Some(v) } if name == "x-sluice-version" && v == "canary")
        );
        assert!(matches!(&s.rules[1].matcher, RuleMatch::Header { value: None, .. }));
        assert_eq!(
            s.rules[2].matcher,
            RuleMatch::Cookie {
                name: "beta".into(),
                value: "1".into()
            }
        );
        let sticky = s.sticky.as_ref().expect("sticky");
        assert_eq!(
            sticky.key,
            Some(KeySource::Header(http::HeaderName::from_static("x-user-id")))
        );
        assert_eq!(sticky.ttl.as_secs(), 1800);
    }

    #[test]
    fn bad_rules_and_sticky_report_every_error() {
        let yaml = service(
            "      rules:
        - { match: { header: { name: x-a, value: b, present: true } }, version: canry }
        - { match: { header: { name: \"bad name\", value: b } }, version: blue }
        - { match: { cookie: { name: \"a;b\", value: x } }, version: blue }
        - { match: {}, version: blue }
      sticky: { cookie: \"\", hash_key: \"query:id\", ttl: 0s }
",
        );
        assert_exact_errors(
            &yaml,
            &[
                "services[0].routing.rules[0].version: unknown version \"canry\" (versions: blue, canary)",
                "services[0].routing.rules[0].match.header: needs exactly one of",
                "services[0].routing.rules[1].match.header.name: \"bad name\" is not a valid header name",
                "services[0].routing.rules[2].match.cookie.name: \"a;b\" is not a valid cookie name",
                "services[0].routing.rules[3].match: needs exactly one of",
                "services[0].routing.sticky.cookie: \"\" is not a valid cookie name",
                "services[0].routing.sticky.hash_key: \"query:id\" is not a key",
                "services[0].routing.sticky.ttl: must be at least 1s",
            ],
        );
    }

    #[test]
    fn health_checks_compile_with_defaults_and_report_errors() {
        let ok = "listeners: [{ name: p, address: 127.0.0.1:0 }]\nservices:\n  - name: s\n    versions: { blue: { endpoints: [127.0.0.1:1], health_check: { interval: 2s } } }\n";
        let config = parse(ok).unwrap_or_else(|e| panic!("{e}"));
        let check = config.services[0].versions[0]
            .health_check
            .clone()
            .expect("health check");
        assert_eq!(
            (check.path.as_str(), check.interval.as_secs(), check.timeout.as_secs()),
            ("/healthz", 2, 1)
        );
        assert_eq!((check.healthy, check.unhealthy), (2, 3));
        let bad = "listeners: [{ name: p, address: 127.0.0.1:0 }]\nservices:\n  - name: s\n    versions: { blue: { endpoints: [127.0.0.1:1], health_check: { path: healthz, interval: 1s, timeout: 2s, healthy: 0 } } }\n";
        assert_exact_errors(
            bad,
            &[
                "services[0].versions.blue.health_check.path: \"healthz\" is not a path",
                "services[0].versions.blue.health_check.healthy: 0 is out of range",
                "services[0].versions.blue.health_check.timeout: 2s is longer than the interval 1s",
            ],
        );
    }

    #[test]
    fn outlier_detection_compiles_with_defaults_and_reports_errors() {
        let base = "listeners: [{ name: p, address: 127.0.0.1:0 }]\nservices:\n  - name: s\n    versions: { blue: { endpoints: [127.0.0.1:1] } }\n";
        let config = parse(&format!("{base}    outlier_detection: {{}}\n")).unwrap_or_else(|e| panic!("{e}"));
        let spec = config.services[0].outlier_detection.clone().expect("outlier detection");
        assert_eq!(
            (
                spec.consecutive_failures,
                spec.ejection.as_secs(),
                spec.max_ejected_percent
            ),
            (5, 30, 50)
        );
        let bad = format!(
            "{base}    outlier_detection: {{ consecutive_failures: 0, ejection: soon, max_ejected_percent: 101 }}\n"
        );
        let errors: Vec<String> = parse(&bad)
            .expect_err("invalid")
            .0
            .iter()
            .map(ToString::to_string)
            .collect();
        for want in [
            "consecutive_failures: 0 is out of range",
            "ejection: \"soon\" is not a duration",
            "max_ejected_percent: 101 is out of range",
        ] {
            assert!(
                errors.iter().any(|e| e.contains(want)),
                "missing {want:?} in {errors:#?}"
            );
        }
        assert_eq!(errors.len(), 3, "{errors:#?}");
    }
}
