//! `defaults.timeouts`, `defaults.limits` and `defaults.max_request_body`: checked, with their
//! YAML paths, into the [`Limits`] every request and connection reads.

use super::compile::Errors;
use super::raw::RawDefaults;
use super::{units, Limits};

/// The process-wide timeouts and limits; every error goes to `errors`.
pub(super) fn compile_limits(raw: &RawDefaults, errors: &mut Errors) -> Limits {
    let mut limits = Limits::default();
    let timeouts = &raw.timeouts;
    let fields = [
        ("connect", &timeouts.connect, &mut limits.connect),
        (
            "request_headers",
            &timeouts.request_headers,
            &mut limits.request_headers,
        ),
        (
            "response_headers",
            &timeouts.response_headers,
            &mut limits.response_headers,
        ),
        ("idle", &timeouts.idle, &mut limits.idle),
        ("drain", &timeouts.drain, &mut limits.drain),
    ];
    for (name, text, slot) in fields {
        let Some(text) = text else { continue };
        match units::duration(text) {
            Ok(d) if d.is_zero() => errors.push(format!("defaults.timeouts.{name}"), "must be greater than zero"),
            Ok(d) => *slot = d,
            Err(e) => errors.push(format!("defaults.timeouts.{name}"), e),
        }
    }
    if let Some(text) = &raw.max_request_body {
        match units::size(text) {
            Ok(size) => limits.max_request_body = size,
            Err(e) => errors.push("defaults.max_request_body", e),
        }
    }
    let raw = &raw.limits;
    let counts = [
        ("max_connections", raw.max_connections, &mut limits.max_connections),
        ("max_in_flight", raw.max_in_flight, &mut limits.max_in_flight),
    ];
    for (name, value, slot) in counts {
        match value {
            Some(0) => errors.push(
                format!("defaults.limits.{name}"),
                "must be at least 1: leave it out for the default",
            ),
            Some(n) => *slot = n,
            None => {}
        }
    }
    if let Some(text) = &raw.max_request_headers {
        let (min, max) = (super::MIN_MAX_REQUEST_HEADERS, super::MAX_MAX_REQUEST_HEADERS);
        match units::size(text) {
            Ok(size) if (min..=max).contains(&size) => limits.max_request_headers = size,
            Ok(_) => errors.push(
                "defaults.limits.max_request_headers",
                format!("\"{text}\" is out of range: use 8KiB to 1MiB"),
            ),
            Err(e) => errors.push("defaults.limits.max_request_headers", e),
        }
    }
    limits
}

#[cfg(test)]
mod tests {
    use crate::config::parse;

    use crate::config::testing::{errors_of, BASE};

    #[test]
    fn limits_are_checked_with_their_paths() {
        let service = "services:\n  - name: a\n    versions: { blue: { endpoints: [127.0.0.1:1] } }\n";
        let cases: [(&str, &[&str]); 4] = [
            (
                "{ max_connections: 0, max_in_flight: 0 }",
                &[
                    "defaults.limits.max_connections: must be at least 1",
                    "defaults.limits.max_in_flight: must be at least 1",
                ],
            ),
            (
                "{ max_request_headers: 4KiB }",
                &["defaults.limits.max_request_headers: \"4KiB\" is out of range: use 8KiB to 1MiB"],
            ),
            (
                "{ max_request_headers: 2MiB }",
                &["defaults.limits.max_request_headers: \"2MiB\" is out of range"],
            ),
            (
                "{ max_conections: 5 }",
                &["defaults.limits: unknown field `max_conections`"],
            ),
        ];
        for (limits, expected) in cases {
            let errors = errors_of(&format!("{BASE}defaults: {{ limits: {limits} }}\n{service}"));
            for want in expected {
                assert!(
                    errors.iter().any(|e| e.starts_with(want)),
                    "{limits}: missing {want:?} in {errors:#?}"
                );
            }
            assert_eq!(errors.len(), expected.len(), "{limits}: {errors:#?}");
        }
        let yaml = format!(
            "{BASE}defaults: {{ limits: {{ max_connections: 2, max_in_flight: 3, max_request_headers: 8KiB }} }}\n{service}"
        );
        let limits = parse(&yaml).unwrap_or_else(|e| panic!("{e}")).limits;
        assert_eq!(
            (limits.max_connections, limits.max_in_flight, limits.max_request_headers),
            (2, 3, 8 << 10)
        );
    }
}
