//! Request path, between the service and the version: feature flags. Each of a service's flags
//! is decided on or off for a request before the version is chosen (so version rules can match
//! a flag), and the upstream gets `x-sluice-flags` naming the flags that are on.
//!
//! A flag is decided by: `enabled` (the kill switch: false is off for everyone), then its
//! targeting rules (first match wins), then its bucket against `percent`. The bucket of a key is
//! `fmix64(FNV-1a-64(name ":" key)) % 1 000 000`, with the same FNV-1a and finalizer as sticky
//! bucketing ([`crate::sticky`]); the flag is on when the bucket is below `percent × 10 000`.
//! The flag's name in the hash makes flags independent of each other and of the version's
//! bucket; comparing against a threshold means raising `percent` keeps every key that had the
//! flag; no seed means every replica decides the same.
//!
//! Everything is compiled into the routing table: the FNV state after `name:` is hashed once
//! per flag ahead of time, decision counters are interned per flag, and for up to
//! [`PRECOMPUTED_MAX`] flags every possible header value is built ahead too. Deciding is then a
//! loop with no lock and no allocation: the result is a [`FlagSet`], one `u64`.

use std::collections::BTreeMap;
use std::sync::Arc;

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::config::{FlagRuleSpec, FlagSpec, KeySource, RuleMatch};
use crate::metrics::{FlagMetrics, Metrics};

/// `x-sluice-flags`: the flags that are on, set by sluice only (a client's value is removed).
pub static X_SLUICE_FLAGS: HeaderName = HeaderName::from_static("x-sluice-flags");

/// Buckets of a flag: `percent` has 4 decimals of resolution.
pub const BUCKETS: u32 = 1_000_000;

/// Up to this many flags, every header value (2^n of them) is built with the table; above, the
/// value is built once per request from the names that are on.
pub const PRECOMPUTED_MAX: usize = 8;

/// The flags that are on for one request: bit `i` is the service's flag `i`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FlagSet(u64);

impl FlagSet {
    /// No flag on.
    pub const EMPTY: FlagSet = FlagSet(0);

    /// Whether flag `index` is on.
    pub fn contains(self, index: usize) -> bool {
        index < 64 && self.0 & (1 << index) != 0
    }

    /// Turns flag `index` on (indices above 63 are ignored: compile allows at most 64 flags).
    pub fn insert(&mut self, index: usize) {
        if index < 64 {
            self.0 |= 1 << index;
        }
    }

    /// Whether no flag is on.
    pub fn is_empty(self) -> bool {
        self.0 == 0
    }
}

/// An admin override of a flag: each field given replaces the file's value. Persisted in
/// `state_dir` like weight overrides.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct FlagOverride {
    /// The kill switch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enabled: Option<bool>,
    /// The share of keys, 0 to 100.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub percent: Option<f64>,
}

impl FlagOverride {
    /// Parses an admin body such as `{"enabled": false}` or `{"percent": 25}` (or both).
    pub fn from_json(body: &Value) -> Result<Self, String> {
        const SHAPE: &str = "body must be {\"enabled\": true|false} and/or {\"percent\": 0 to 100}";
        let object = body.as_object().ok_or(SHAPE)?;
        let mut change = FlagOverride::default();
        for (key, value) in object {
            match key.as_str() {
                "enabled" => change.enabled = Some(value.as_bool().ok_or("\"enabled\" must be true or false")?),
                "percent" => {
                    let percent = value.as_f64().ok_or("\"percent\" must be a number from 0 to 100")?;
                    crate::config::percent_to_ppm(percent)
                        .ok_or_else(|| format!("percent {percent} is out of range: use 0 to 100"))?;
                    change.percent = Some(percent);
                }
                other => return Err(format!("unknown field \"{other}\": {SHAPE}")),
            }
        }
        if change == FlagOverride::default() {
            return Err(SHAPE.to_owned());
        }
        Ok(change)
    }

    /// This override with the fields `later` gives replaced.
    pub fn merged(self, later: FlagOverride) -> FlagOverride {
        FlagOverride {
            enabled: later.enabled.or(self.enabled),
            percent: later.percent.or(self.percent),
        }
    }
}

/// Flag overrides: service → flag → override.
pub type FlagOverrides = BTreeMap<String, BTreeMap<String, FlagOverride>>;

/// A flag's state in one revision, as the history records it.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct FlagState {
    /// The kill switch.
    pub enabled: bool,
    /// The share of keys, percent.
    pub percent: f64,
}

// Percents come from validated config or admin input: never NaN.
impl Eq for FlagState {}

/// One compiled flag.
#[derive(Debug)]
pub struct Flag {
    /// Name, as in `x-sluice-flags`.
    pub name: Arc<str>,
    /// FNV-1a state after hashing `name:`.
    seed: u64,
    /// On when the bucket is below this; [`BUCKETS`]: on for every request, keyed or not.
    pub ppm: u32,
    /// `false`: off for everyone.
    pub enabled: bool,
    /// Bucketing key; `None`: random per request.
    pub key: Option<KeySource>,
    /// Whether the key was written on the flag (else it is the sticky `hash_key`).
    pub key_configured: bool,
    /// Targeting rules, first match wins.
    pub rules: Vec<FlagRuleSpec>,
    /// Whether an admin override is in force.
    pub overridden: bool,
    /// Decision counters.
    pub metrics: Arc<FlagMetrics>,
}

impl Flag {
    /// Decides this flag for a request.
    fn decide(&self, headers: &HeaderMap) -> bool {
        if !self.enabled {
            return false;
        }
        if let Some(rule) = self
            .rules
            .iter()
            .find(|rule| crate::rules::matches(&rule.matcher, headers, FlagSet::EMPTY))
        {
            return rule.on;
        }
        if self.ppm == 0 {
            return false;
        }
        if self.ppm >= BUCKETS {
            return true;
        }
        let bucket = match &self.key {
            None => fastrand::u32(..BUCKETS),
            Some(source) => match crate::sticky::key(source, headers) {
                Some(key) => bucket(self.seed, key),
                // No key, no stable bucket: a feature that came and went from one request to
                // the next would be worse than not showing it.
                None => return false,
            },
        };
        bucket < self.ppm
    }
}

/// The FNV-1a state after `name` and the `:` separator (not a token character, so
/// `name:key` is unambiguous).
pub fn seed(name: &str) -> u64 {
    crate::sticky::fnv1a(
        crate::sticky::fnv1a(crate::sticky::FNV_OFFSET_BASIS, name.as_bytes()),
        b":",
    )
}

/// The bucket of `key` for the flag whose [`seed`] is `seed`, in `[0, BUCKETS)`.
pub fn bucket(seed: u64, key: &[u8]) -> u32 {
    (crate::sticky::fmix64(crate::sticky::fnv1a(seed, key)) % u64::from(BUCKETS)) as u32
}

/// A service's compiled flags.
#[derive(Debug, Default)]
pub struct Flags {
    /// In file order.
    pub list: Vec<Flag>,
    /// With at most [`PRECOMPUTED_MAX`] flags: the header value of every set, by its bits.
    values: Vec<Option<HeaderValue>>,
    /// Longest header value: every name and the commas.
    longest: usize,
}

impl Flags {
    /// Compiles `specs` with the service's overrides, interning counters in `metrics`.
    pub fn build(
        service: &Arc<str>,
        specs: &[FlagSpec],
        overrides: Option<&BTreeMap<String, FlagOverride>>,
        metrics: &Metrics,
    ) -> Self {
        let list: Vec<Flag> = specs
            .iter()
            .map(|spec| {
                let name: Arc<str> = Arc::from(spec.name.as_str());
                let o = overrides.and_then(|o| o.get(&spec.name)).copied().unwrap_or_default();
                Flag {
                    seed: seed(&spec.name),
                    ppm: o.percent.and_then(crate::config::percent_to_ppm).unwrap_or(spec.ppm),
                    enabled: o.enabled.unwrap_or(spec.enabled),
                    key: spec.key.clone(),
                    key_configured: spec.key_configured,
                    rules: spec.rules.clone(),
                    overridden: o != FlagOverride::default(),
                    metrics: metrics.flag(service, &name),
                    name,
                }
            })
            .collect();
        let longest = list.iter().map(|f| f.name.len() + 1).sum::<usize>();
        let mut flags = Flags {
            list,
            values: Vec::new(),
            longest,
        };
        if flags.list.len() <= PRECOMPUTED_MAX {
            flags.values = (0..1u64 << flags.list.len())
                .map(|bits| flags.build_value(FlagSet(bits)))
                .collect();
        }
        flags
    }

    /// Decides every flag for a request and counts each decision.
    pub fn evaluate(&self, headers: &HeaderMap) -> FlagSet {
        let mut set = FlagSet::EMPTY;
        for (index, flag) in self.list.iter().enumerate() {
            let on = flag.decide(headers);
            flag.metrics.record(on);
            if on {
                set.insert(index);
            }
        }
        set
    }

    /// The `x-sluice-flags` value for `set`: the names that are on, comma-separated, in file
    /// order; `None` when no flag is on (the header is then left out).
    pub fn header(&self, set: FlagSet) -> Option<HeaderValue> {
        if set.is_empty() {
            return None;
        }
        match self.values.get(set.0 as usize) {
            Some(value) => value.clone(),
            None => self.build_value(set),
        }
    }

    fn build_value(&self, set: FlagSet) -> Option<HeaderValue> {
        if set.is_empty() {
            return None;
        }
        let mut value = Vec::with_capacity(self.longest);
        for (_, flag) in self.list.iter().enumerate().filter(|(i, _)| set.contains(*i)) {
            if !value.is_empty() {
                value.push(b',');
            }
            value.extend_from_slice(flag.name.as_bytes());
        }
        // Validated names are header tokens; a failure would only leave the header out.
        HeaderValue::from_maybe_shared(Bytes::from(value)).ok()
    }

    /// The name of flag `index`.
    pub fn name(&self, index: usize) -> &str {
        self.list.get(index).map_or("", |f| &f.name)
    }

    /// Each flag's state, for the history.
    pub fn states(&self) -> indexmap::IndexMap<String, FlagState> {
        self.list
            .iter()
            .map(|f| {
                let state = FlagState {
                    enabled: f.enabled,
                    percent: crate::config::ppm_to_percent(f.ppm),
                };
                (f.name.to_string(), state)
            })
            .collect()
    }

    /// The flags as the admin API shows them.
    pub fn view(&self) -> Value {
        let flags: Vec<Value> = self
            .list
            .iter()
            .map(|f| {
                let key = f.key.as_ref().map(key_text);
                let rules: Vec<Value> = f
                    .rules
                    .iter()
                    .map(|r| json!({ "match": match_view(&r.matcher, self), "value": if r.on { "on" } else { "off" } }))
                    .collect();
                json!({
                    "name": &*f.name,
                    "enabled": f.enabled,
                    "percent": crate::config::ppm_to_percent(f.ppm),
                    "key": key,
                    "key_from": if f.key_configured { "flag" } else if f.key.is_some() { "sticky hash_key" } else { "none: random per request" },
                    "rules": rules,
                    "from": if f.overridden { "admin override" } else { "config" },
                    "decisions": { "on": f.metrics.decisions(true), "off": f.metrics.decisions(false) },
                })
            })
            .collect();
        Value::Array(flags)
    }
}

/// `header:NAME` or `cookie:NAME`.
pub fn key_text(key: &KeySource) -> String {
    match key {
        KeySource::Header(name) => format!("header:{name}"),
        KeySource::Cookie(name) => format!("cookie:{name}"),
    }
}

/// A rule's `match` as the admin API shows it.
pub fn match_view(matcher: &RuleMatch, flags: &Flags) -> Value {
    match matcher {
        RuleMatch::Header {
            name,
            value: Some(value),
        } => json!({ "header": { "name": name.as_str(), "value": value.to_str().unwrap_or("") } }),
        RuleMatch::Header { name, value: None } => json!({ "header": { "name": name.as_str(), "present": true } }),
        RuleMatch::Cookie { name, value } => json!({ "cookie": { "name": name, "value": value } }),
        RuleMatch::Flag(index) => json!({ "flag": flags.name(*index) }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn flags(yaml_flags: &str, extra_service: &str) -> Flags {
        let yaml = format!(
            "listeners: [{{ name: p, address: 127.0.0.1:0 }}]\nservices:\n  - name: s\n    versions: {{ v: {{ endpoints: [127.0.0.1:1] }} }}\n{extra_service}    flags:\n{yaml_flags}"
        );
        let config = crate::config::parse(&yaml).unwrap_or_else(|e| panic!("{e}\n{yaml}"));
        let spec = &config.services[0];
        Flags::build(&Arc::from("s"), &spec.flags, None, &Metrics::default())
    }

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (k, v) in pairs {
            map.append(*k, HeaderValue::from_str(v).expect("value"));
        }
        map
    }

    #[test]
    fn buckets_match_the_published_test_vectors() {
        // The same vectors are in docs/SPEC.md, computed by an independent Python version of
        // the algorithm.
        let vectors = [
            ("new-pricing", "user-1", 922_952),
            ("new-pricing", "user-2", 706_279),
            ("new-pricing", "alice@example.com", 189_668),
            ("dark-mode", "user-1", 687_601),
            ("dark-mode", "", 963_946),
        ];
        for (flag, key, want) in vectors {
            assert_eq!(bucket(seed(flag), key.as_bytes()), want, "bucket({flag:?}, {key:?})");
        }
    }

    #[test]
    fn ramp_is_monotone_and_two_flags_are_independent() {
        let (a, b) = (seed("a"), seed("b"));
        let keys: Vec<String> = (0..100_000).map(|i| format!("user-{i}")).collect();
        let at = |seed, ppm: u32| -> Vec<bool> { keys.iter().map(|k| bucket(seed, k.as_bytes()) < ppm).collect() };
        let (ten, thirty) = (at(a, 100_000), at(a, 300_000));
        assert!(
            ten.iter().zip(&thirty).all(|(t, u)| !t || *u),
            "10% → 30% keeps the 10%"
        );
        let share = |v: &[bool]| v.iter().filter(|x| **x).count() as f64 / keys.len() as f64;
        assert!((share(&ten) - 0.10).abs() < 0.005, "{}", share(&ten));
        assert!((share(&thirty) - 0.30).abs() < 0.005, "{}", share(&thirty));
        let fifty_b = at(b, 500_000);
        let both = thirty.iter().zip(&fifty_b).filter(|(x, y)| **x && **y).count() as f64 / keys.len() as f64;
        // Independent: 0.3 × 0.5 = 0.15; sd of the share is 0.0011, the band ±4.5 sd.
        assert!((both - 0.15).abs() < 0.005, "overlap {both}");
        // And independent of the version's bucket (same key, no flag name).
        let canary: Vec<bool> = keys
            .iter()
            .map(|k| crate::sticky::bucket(k.as_bytes()) < 3_000)
            .collect();
        let with_canary = thirty.iter().zip(&canary).filter(|(x, y)| **x && **y).count() as f64 / keys.len() as f64;
        assert!(
            (with_canary - 0.09).abs() < 0.005,
            "overlap with the version buckets {with_canary}"
        );
    }

    #[test]
    fn kill_switch_then_rules_then_percent() {
        let set = flags(
            "      on: { percent: 100 }
      off: { percent: 0, rules: [{ match: { header: { name: x-beta, present: true } }, value: on }] }
      killed: { percent: 100, enabled: false, rules: [{ match: { header: { name: x-beta, present: true } }, value: on }] }
      optout: { percent: 100, rules: [{ match: { cookie: { name: optout, value: \"1\" } }, value: off }] }
",
            "",
        );
        type Case = (&'static [(&'static str, &'static str)], [bool; 4]);
        let cases: [Case; 3] = [
            (&[], [true, false, false, true]),
            (&[("x-beta", "1")], [true, true, false, true]),
            (&[("cookie", "optout=1")], [true, false, false, false]),
        ];
        for (pairs, want) in cases {
            let got = set.evaluate(&headers(pairs));
            let got: Vec<bool> = (0..4).map(|i| got.contains(i)).collect();
            assert_eq!(&got[..], &want[..], "{pairs:?}");
        }
        assert_eq!(set.list[0].metrics.decisions(true), 3, "each decision is counted");
        assert_eq!(set.list[2].metrics.decisions(false), 3);
    }

    #[test]
    fn a_missing_key_is_off_unless_the_flag_is_at_100() {
        let set = flags(
            "      half: { percent: 50, key: \"header:x-user-id\" }\n      all: { percent: 100, key: \"header:x-user-id\" }\n",
            "",
        );
        for _ in 0..50 {
            let got = set.evaluate(&HeaderMap::new());
            assert!(!got.contains(0) && got.contains(1), "{got:?}");
        }
        let keyed: Vec<bool> = (0..200)
            .map(|i| set.evaluate(&headers(&[("x-user-id", &format!("u{i}"))])).contains(0))
            .collect();
        let again: Vec<bool> = (0..200)
            .map(|i| set.evaluate(&headers(&[("x-user-id", &format!("u{i}"))])).contains(0))
            .collect();
        assert_eq!(keyed, again, "a key always gets the same decision");
        let sticky = flags(
            "      f: { percent: 50 }\n",
            "    routing: { weights: { v: 1 }, sticky: { cookie: c, hash_key: \"cookie:uid\" } }\n",
        );
        let user = headers(&[("cookie", "uid=alice")]);
        let first = sticky.evaluate(&user);
        assert!(
            (0..20).all(|_| sticky.evaluate(&user) == first),
            "the sticky hash_key is the key"
        );
    }

    #[test]
    fn header_values_list_the_flags_on_in_file_order() {
        let names: Vec<String> = (0..10).map(|i| format!("      f{i}: {{ percent: 100 }}\n")).collect();
        let many = flags(&names.concat(), "");
        let few = flags("      a: {}\n      b: {}\n      c: {}\n", "");
        let set = |bits: &[usize]| {
            let mut set = FlagSet::EMPTY;
            for &b in bits {
                set.insert(b);
            }
            set
        };
        assert_eq!(few.header(FlagSet::EMPTY), None, "no flag on: no header");
        assert_eq!(few.header(set(&[2, 0])).expect("value"), "a,c");
        assert_eq!(few.header(set(&[1])).expect("value"), "b");
        assert_eq!(
            many.header(set(&[9, 1, 4])).expect("value"),
            "f1,f4,f9",
            "built per request"
        );
        assert_eq!(many.header(set(&[0])).expect("value"), "f0");
        assert_eq!(
            many.header(many.evaluate(&HeaderMap::new())).expect("value"),
            "f0,f1,f2,f3,f4,f5,f6,f7,f8,f9"
        );
    }

    #[test]
    fn admin_bodies() {
        let ok = |text: &str| FlagOverride::from_json(&serde_json::from_str(text).expect("json"));
        assert_eq!(
            ok(r#"{"enabled": false}"#),
            Ok(FlagOverride {
                enabled: Some(false),
                percent: None
            })
        );
        assert_eq!(ok(r#"{"percent": 25.5}"#).map(|o| o.percent), Ok(Some(25.5)));
        for bad in [
            r#"{}"#,
            r#"[]"#,
            r#"{"percent": 101}"#,
            r#"{"percent": "5"}"#,
            r#"{"enabled": 1}"#,
            r#"{"on": true}"#,
        ] {
            assert!(ok(bad).is_err(), "{bad}");
        }
        let merged = FlagOverride {
            enabled: Some(false),
            percent: Some(5.0),
        }
        .merged(FlagOverride {
            enabled: None,
            percent: Some(30.0),
        });
        assert_eq!((merged.enabled, merged.percent), (Some(false), Some(30.0)));
    }
}
