//! `compile` for `services[i].flags`: feature flags, checked completely before any is used.

use indexmap::IndexMap;

use super::compile::{valid_name, Errors};
use super::raw::{RawFlag, RawFlagValue};
use super::routing::{compile_match, key_source};
use super::{FlagRuleSpec, FlagSpec, KeySource, MAX_FLAGS};

/// Millionths in one percent: `percent` is kept to 4 decimals (a bucket is 1/1 000 000).
const PPM_PER_PERCENT: f64 = 10_000.0;

/// `percent` (0 to 100) in millionths, rounded; `None` when out of range or not a number.
pub fn percent_to_ppm(percent: f64) -> Option<u32> {
    (percent.is_finite() && (0.0..=100.0).contains(&percent)).then(|| (percent * PPM_PER_PERCENT).round() as u32)
}

/// Millionths back to percent, for the API and history.
pub fn ppm_to_percent(ppm: u32) -> f64 {
    f64::from(ppm) / PPM_PER_PERCENT
}

/// Checks a service's flags. `sticky_key` is the service's sticky `hash_key`, the default key.
pub(super) fn compile_flags(
    at: &str,
    raw: &IndexMap<String, RawFlag>,
    sticky_key: Option<&KeySource>,
    errors: &mut Errors,
) -> Vec<FlagSpec> {
    if raw.len() > MAX_FLAGS {
        errors.push(
            format!("{at}.flags"),
            format!("{} flags: a service may have at most {MAX_FLAGS}", raw.len()),
        );
    }
    let mut flags = Vec::with_capacity(raw.len());
    for (name, flag) in raw {
        let fat = format!("{at}.flags.{name}");
        let before = errors.0.len();
        if !valid_name(name) {
            errors.push(
                &fat,
                format!("\"{name}\" is not a valid flag name: use 1 to 64 letters, digits, '-', '_' or '.'"),
            );
        }
        let ppm = match flag.percent.map(|p| (p, percent_to_ppm(p))) {
            None => 0,
            Some((_, Some(ppm))) => ppm,
            Some((percent, None)) => {
                errors.push(
                    format!("{fat}.percent"),
                    format!("{percent} is out of range: use 0 to 100 (decimals allowed)"),
                );
                0
            }
        };
        let key = match flag.key.as_deref() {
            None => sticky_key.cloned(),
            Some(text) => key_source(text).map_err(|e| errors.push(format!("{fat}.key"), e)).ok(),
        };
        let mut rules = Vec::with_capacity(flag.rules.len());
        for (j, rule) in flag.rules.iter().enumerate() {
            let rat = format!("{fat}.rules[{j}]");
            let on = match &rule.value {
                RawFlagValue::Bool(on) => Some(*on),
                RawFlagValue::Text(text) => match text.as_str() {
                    "on" => Some(true),
                    "off" => Some(false),
                    other => {
                        errors.push(
                            format!("{rat}.value"),
                            format!("\"{other}\" is not a flag value: use on or off"),
                        );
                        None
                    }
                },
            };
            let matcher = compile_match(&rat, &rule.matcher, None, errors);
            if let (Some(matcher), Some(on)) = (matcher, on) {
                rules.push(FlagRuleSpec { matcher, on });
            }
        }
        if errors.0.len() == before {
            flags.push(FlagSpec {
                name: name.clone(),
                ppm,
                key,
                key_configured: flag.key.is_some(),
                rules,
                enabled: flag.enabled.unwrap_or(true),
            });
        }
    }
    flags
}

#[cfg(test)]
mod tests {
    use crate::config::{parse, KeySource, RuleMatch};

    fn service(body: &str) -> String {
        format!(
            "listeners: [{{ name: p, address: 127.0.0.1:0 }}]\nservices:\n  - name: s\n    versions: {{ blue: {{ endpoints: [127.0.0.1:1] }}, canary: {{ endpoints: [127.0.0.1:2] }} }}\n{body}"
        )
    }

    fn errors_of(yaml: &str) -> Vec<String> {
        parse(yaml)
            .map(|_| Vec::new())
            .unwrap_or_else(|e| e.0.iter().map(ToString::to_string).collect())
    }

    #[test]
    fn flags_compile_with_defaults_keys_and_rules() {
        let yaml = service(
            "    routing:
      weights: { blue: 1 }
      sticky: { cookie: c, hash_key: \"header:x-user-id\" }
      rules: [{ match: { flag: beta }, version: canary }]
    flags:
      new-pricing:
        percent: 12.34567
        rules:
          - { match: { header: { name: x-internal, value: \"1\" } }, value: on }
          - { match: { cookie: { name: optout, value: \"1\" } }, value: false }
      beta: { key: \"cookie:uid\", enabled: false }
",
        );
        let config = parse(&yaml).unwrap_or_else(|e| panic!("{e}"));
        let s = &config.services[0];
        let names: Vec<&str> = s.flags.iter().map(|f| f.name.as_str()).collect();
        assert_eq!(names, ["new-pricing", "beta"], "file order");
        let pricing = &s.flags[0];
        assert_eq!(pricing.ppm, 123_457, "percent kept to 4 decimals");
        assert_eq!(
            pricing.key,
            Some(KeySource::Header(http::HeaderName::from_static("x-user-id"))),
            "the sticky hash_key is the default key"
        );
        assert!(!pricing.key_configured && pricing.enabled);
        assert_eq!(pricing.rules.iter().map(|r| r.on).collect::<Vec<_>>(), [true, false]);
        let beta = &s.flags[1];
        assert_eq!((beta.ppm, beta.enabled), (0, false), "percent defaults to 0");
        assert_eq!(beta.key, Some(KeySource::Cookie("uid".into())));
        assert_eq!(s.rules[0].matcher, RuleMatch::Flag(1), "rules name flags by index");

        let no_sticky = parse(&service("    flags: { f: { percent: 100 } }\n")).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(no_sticky.services[0].flags[0].key, None, "no key: random per request");
        assert_eq!(no_sticky.services[0].flags[0].ppm, 1_000_000);
    }

    #[test]
    fn bad_flags_report_every_error_with_its_path() {
        let yaml = service(
            "    routing:
      weights: { blue: 1 }
      rules:
        - { match: { flag: nope }, version: canary }
        - { match: { flag: ok, header: { name: x, value: y } }, version: blue }
    flags:
      ok: { percent: 5 }
      \"bad name\": { percent: 5 }
      \"a,b\": {}
      high: { percent: 100.5 }
      low: { percent: -1 }
      keyed: { key: \"query:id\" }
      ruled:
        rules:
          - { match: { header: { name: x, value: \"1\" } }, value: maybe }
          - { match: { flag: ok }, value: on }
          - { match: { header: { name: \"bad header\", value: \"1\" } }, value: on }
",
        );
        let errors = errors_of(&yaml);
        let expected = [
            "services[0].flags.bad name: \"bad name\" is not a valid flag name",
            "services[0].flags.a,b: \"a,b\" is not a valid flag name",
            "services[0].flags.high.percent: 100.5 is out of range: use 0 to 100",
            "services[0].flags.low.percent: -1 is out of range: use 0 to 100",
            "services[0].flags.keyed.key: \"query:id\" is not a key: write `header:NAME`",
            "services[0].flags.ruled.rules[0].value: \"maybe\" is not a flag value: use on or off",
            "services[0].flags.ruled.rules[1].match.flag: a flag's rules match a header or a cookie",
            "services[0].flags.ruled.rules[2].match.header.name: \"bad header\" is not a valid header name",
            "services[0].routing.rules[0].match.flag: unknown flag \"nope\" (flags: ok, bad name, a,b, high, low, keyed, ruled)",
            "services[0].routing.rules[1].match: needs exactly one of `header: { name, value }`, `cookie: { name, value }` or `flag: NAME`",
        ];
        for want in expected {
            assert!(
                errors.iter().any(|e| e.starts_with(want)),
                "missing {want:?} in {errors:#?}"
            );
        }
        assert_eq!(errors.len(), expected.len(), "{errors:#?}");
    }

    #[test]
    fn too_many_flags_is_an_error() {
        let flags: Vec<String> = (0..65).map(|i| format!("f{i}: {{}}")).collect();
        let errors = errors_of(&service(&format!("    flags: {{ {} }}\n", flags.join(", "))));
        assert_eq!(
            errors,
            ["services[0].flags: 65 flags: a service may have at most 64"],
            "{errors:#?}"
        );
    }
}
