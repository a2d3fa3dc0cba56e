//! Request path, step 2: header, cookie and flag rules, first match wins, before any weight.
//! Flags' targeting rules use the same header and cookie matches.

use http::header::{HeaderMap, COOKIE};

use crate::config::{RuleMatch, RuleSpec};
use crate::flags::FlagSet;

/// The version of the first rule `headers` match, if any, with no flag on.
pub fn first_match(rules: &[RuleSpec], headers: &HeaderMap) -> Option<usize> {
    first_match_with_flags(rules, headers, FlagSet::EMPTY)
}

/// The version of the first rule the request matches, given its headers and the flags that are
/// on for it (flags are decided before the version).
pub fn first_match_with_flags(rules: &[RuleSpec], headers: &HeaderMap, flags: FlagSet) -> Option<usize> {
    rules
        .iter()
        .find(|rule| matches(&rule.matcher, headers, flags))
        .map(|rule| rule.version)
}

/// Whether a request with `headers` and `flags` on matches `matcher`.
pub fn matches(matcher: &RuleMatch, headers: &HeaderMap, flags: FlagSet) -> bool {
    match matcher {
        RuleMatch::Flag(index) => flags.contains(*index),
        RuleMatch::Header { name, value: None } => headers.contains_key(name),
        RuleMatch::Header {
            name,
            value: Some(value),
        } => headers.get_all(name).iter().any(|v| v == value),
        RuleMatch::Cookie { name, value } => cookie_value(headers, name) == Some(value.as_str()),
    }
}

/// The value of cookie `name` in the request's `Cookie` headers (RFC 6265 `name=value` pairs
/// split by `;`), without allocating. Hand-written because this runs up to twice per request:
/// `cookie::Cookie::split_parse` made the whole routing decision cost ~560 ns (see BENCHMARKS.md).
pub fn cookie_value<'h>(headers: &'h HeaderMap, name: &str) -> Option<&'h str> {
    let name = name.as_bytes();
    for header in headers.get_all(COOKIE) {
        for pair in header.as_bytes().split(|&b| b == b';') {
            let pair = pair.trim_ascii_start();
            if pair.len() > name.len() && pair.starts_with(name) {
                let rest = pair[name.len()..].trim_ascii_start();
                if let Some(value) = rest.strip_prefix(b"=") {
                    let value = value.trim_ascii();
                    // A cookie-value may be wrapped in double quotes.
                    let value = value
                        .strip_prefix(b"\"")
                        .and_then(|v| v.strip_suffix(b"\""))
                        .unwrap_or(value);
                    return std::str::from_utf8(value).ok();
                }
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::{HeaderName, HeaderValue};

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (k, v) in pairs {
            map.append(HeaderName::from_static(k), HeaderValue::from_static(v));
        }
        map
    }

    fn rules() -> Vec<RuleSpec> {
        let header = |name, value: Option<&'static str>| RuleMatch::Header {
            name: HeaderName::from_static(name),
            value: value.map(HeaderValue::from_static),
        };
        vec![
            RuleSpec {
                matcher: header("x-version", Some("canary")),
                version: 1,
            },
            RuleSpec {
                matcher: header("x-debug", None),
                version: 2,
            },
            RuleSpec {
                matcher: RuleMatch::Cookie {
                    name: "beta".into(),
                    value: "1".into(),
                },
                version: 1,
            },
        ]
    }

    #[test]
    fn first_match_table() {
        type Case = (&'static [(&'static str, &'static str)], Option<usize>);
        let cases: [Case; 8] = [
            (&[], None),
            (&[("x-version", "canary")], Some(1)),
            (&[("x-version", "Canary")], None),
            (&[("x-debug", "")], Some(2)),
            (&[("x-version", "canary"), ("x-debug", "1")], Some(1)),
            (&[("cookie", "a=b; beta=1")], Some(1)),
            (&[("cookie", "beta=10"), ("cookie", "x=1")], None),
            (&[("cookie", "a=b"), ("cookie", "beta=1")], Some(1)),
        ];
        for (pairs, want) in cases {
            assert_eq!(first_match(&rules(), &headers(pairs)), want, "{pairs:?}");
        }
    }

    #[test]
    fn flag_rules_match_the_flags_that_are_on() {
        let rules = vec![RuleSpec {
            matcher: RuleMatch::Flag(3),
            version: 1,
        }];
        let none = HeaderMap::new();
        assert_eq!(first_match(&rules, &none), None, "no flag on");
        let mut on = FlagSet::EMPTY;
        on.insert(2);
        assert_eq!(first_match_with_flags(&rules, &none, on), None, "another flag on");
        on.insert(3);
        assert_eq!(first_match_with_flags(&rules, &none, on), Some(1));
    }

    #[test]
    fn cookie_parsing_survives_garbage() {
        let map = headers(&[
            ("cookie", ";;=;  ; beta ; x=\"y"),
            ("cookie", "sid=abc; q=\"quoted\"; e="),
        ]);
        assert_eq!(cookie_value(&map, "sid"), Some("abc"));
        assert_eq!(cookie_value(&map, "beta"), None);
        assert_eq!(cookie_value(&map, "x"), Some("\"y"));
        assert_eq!(cookie_value(&map, "q"), Some("quoted"));
        assert_eq!(cookie_value(&map, "e"), Some(""));
    }
}
