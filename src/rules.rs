//! Request path, step 2: header and cookie rules, first match wins, before any weight.

use http::header::{HeaderMap, COOKIE};

use crate::config::{RuleMatch, RuleSpec};

/// The version of the first rule `headers` match, if any.
pub fn first_match(rules: &[RuleSpec], headers: &HeaderMap) -> Option<usize> {
    rules
        .iter()
        .find(|rule| matches(&rule.matcher, headers))
        .map(|rule| rule.version)
}

fn matches(matcher: &RuleMatch, headers: &HeaderMap) -> bool {
    match matcher {
        RuleMatch::Header { name, value: None } => headers.contains_key(name),
        RuleMatch::Header {
            name,
            value: Some(value),
        } => headers.get_all(name).iter().any(|v| v == value),
        RuleMatch::Cookie { name, value } => cookie_value(headers, name) == Some(value.as_str()),
    }
}

/// The value of cookie `name` in the request's `Cookie` headers, without allocating.
pub fn cookie_value<'h>(headers: &'h HeaderMap, name: &str) -> Option<&'h str> {
    headers
        .get_all(COOKIE)
        .iter()
        .filter_map(|header| header.to_str().ok())
        .flat_map(cookie::Cookie::split_parse)
        .filter_map(Result::ok)
        .find(|c| c.name_raw() == Some(name))
        .and_then(|c| c.value_raw())
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
    fn cookie_parsing_survives_garbage() {
        let map = headers(&[("cookie", ";;=;  ; beta ; x=\"y"), ("cookie", "sid=abc")]);
        assert_eq!(cookie_value(&map, "sid"), Some("abc"));
        assert_eq!(cookie_value(&map, "beta"), None);
    }
}
