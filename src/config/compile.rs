//! `compile`: checks a [`RawConfig`] completely and turns it into a [`Config`].
//!
//! Every check pushes to one error list, so an operator sees every problem of a file at once.

use std::collections::HashSet;

use super::limits::compile_limits;
use super::raw::{RawConfig, RawListenerTls, RawService, RawUpstreamTls};
use super::{units, AdminConfig, Config, ConfigError, ConfigErrors, HostPattern, ListenerConfig};
use super::{CertificateSpec, ListenerTls, Protocol, ServiceSpec, UpstreamTls, VersionSpec};

/// Most request-path threads accepted; more is surely a typo.
const MAX_WORKERS: usize = 1024;

/// Collects errors with their YAML paths.
#[derive(Default)]
pub(super) struct Errors(pub(super) Vec<ConfigError>);

impl Errors {
    pub(super) fn push(&mut self, path: impl Into<String>, message: impl Into<String>) {
        self.0.push(ConfigError {
            path: path.into(),
            message: message.into(),
        });
    }
}

/// Validates a raw configuration, reporting every error with its YAML path.
pub fn compile(raw: RawConfig) -> Result<Config, ConfigErrors> {
    let mut errors = Errors::default();
    let mut warnings = Vec::new();

    if let Some(workers) = raw.workers {
        if workers == 0 || workers > MAX_WORKERS {
            errors.push(
                "workers",
                format!("{workers} is out of range: use 1 to {MAX_WORKERS}, or leave it out for one per core"),
            );
        }
    }

    let listeners = compile_listeners(&raw, &mut errors);
    let admin = compile_admin(&raw, &listeners, &mut errors);
    let limits = compile_limits(&raw.defaults, &mut errors);

    let mut names = HashSet::new();
    let mut services = Vec::with_capacity(raw.services.len());
    for (i, service) in raw.services.iter().enumerate() {
        if !names.insert(service.name.as_str()) {
            errors.push(
                format!("services[{i}].name"),
                format!(
                    "\"{}\" is used by an earlier service; names must be unique",
                    service.name
                ),
            );
        }
        if let Some(spec) = compile_service(i, service, &mut errors, &mut warnings) {
            services.push(spec);
        }
    }
    if raw.services.is_empty() {
        warnings.push("services: none configured; every request will get 404".to_owned());
    }

    if errors.0.is_empty() {
        Ok(Config {
            workers: raw.workers,
            listeners,
            admin,
            state_dir: raw.state_dir.as_ref().map(std::path::PathBuf::from),
            access_log: raw.access_log.as_ref().map(|a| std::path::PathBuf::from(&a.path)),
            limits,
            services,
            warnings,
        })
    } else {
        Err(ConfigErrors(errors.0))
    }
}

fn compile_listeners(raw: &RawConfig, errors: &mut Errors) -> Vec<ListenerConfig> {
    if raw.listeners.is_empty() {
        errors.push(
            "listeners",
            "at least one listener is needed, e.g. `- { name: public, address: 0.0.0.0:8080 }`",
        );
    }
    let mut names = HashSet::new();
    let mut listeners: Vec<ListenerConfig> = Vec::new();
    for (i, listener) in raw.listeners.iter().enumerate() {
        if !names.insert(listener.name.as_str()) {
            errors.push(
                format!("listeners[{i}].name"),
                format!(
                    "\"{}\" is used by an earlier listener; names must be unique",
                    listener.name
                ),
            );
        }
        match units::bind_address(&listener.address) {
            Ok(address) => {
                if let Some(j) = listeners
                    .iter()
                    .position(|l| l.address == address && address.port() != 0)
                {
                    errors.push(
                        format!("listeners[{i}].address"),
                        format!("{address} is already bound by listeners[{j}]"),
                    );
                }
                listeners.push(ListenerConfig {
                    name: listener.name.clone(),
                    address,
                    tls: listener
                        .tls
                        .as_ref()
                        .map(|tls| compile_listener_tls(&format!("listeners[{i}].tls"), tls, errors)),
                });
            }
            Err(e) => errors.push(format!("listeners[{i}].address"), e),
        }
    }
    listeners
}

fn compile_listener_tls(at: &str, raw: &RawListenerTls, errors: &mut Errors) -> ListenerTls {
    if raw.certificates.is_empty() {
        errors.push(
            format!("{at}.certificates"),
            "at least one certificate is needed, e.g. `- { cert: certs/site.pem, key: certs/site.key }`",
        );
    }
    let mut certificates = Vec::with_capacity(raw.certificates.len());
    for (j, pair) in raw.certificates.iter().enumerate() {
        let pat = format!("{at}.certificates[{j}]");
        for (field, value) in [("cert", &pair.cert), ("key", &pair.key)] {
            if value.trim().is_empty() {
                errors.push(format!("{pat}.{field}"), "is empty: give the path of a PEM file");
            }
        }
        let mut names = Vec::new();
        for (k, name) in pair.names.iter().flatten().enumerate() {
            match crate::tls::sni_name(name) {
                Ok(name) => names.push(name),
                Err(e) => errors.push(format!("{pat}.names[{k}]"), e),
            }
        }
        if pair.names.as_ref().is_some_and(Vec::is_empty) {
            errors.push(
                format!("{pat}.names"),
                "is empty: list at least one name, or leave `names` out to use the certificate's own",
            );
        }
        certificates.push(CertificateSpec {
            cert: pair.cert.clone().into(),
            key: pair.key.clone().into(),
            names,
        });
    }
    ListenerTls { certificates }
}

fn compile_upstream_tls(at: &str, raw: Option<&RawUpstreamTls>, errors: &mut Errors) -> UpstreamTls {
    let Some(raw) = raw else { return UpstreamTls::default() };
    let mut tls = UpstreamTls::default();
    if let Some(ca) = &raw.ca {
        match crate::tls::read_ca(std::path::Path::new(ca)) {
            Ok(certs) => tls.ca_certs = certs,
            Err(e) => errors.push(format!("{at}.ca"), e),
        }
        tls.ca = Some(ca.into());
    }
    if let Some(name) = &raw.server_name {
        match rustls_pki_types::ServerName::try_from(name.as_str()) {
            Ok(_) => tls.server_name = Some(name.clone()),
            Err(_) => errors.push(
                format!("{at}.server_name"),
                format!("\"{name}\" is not a DNS name or IP address"),
            ),
        }
    }
    tls
}

fn compile_admin(raw: &RawConfig, listeners: &[ListenerConfig], errors: &mut Errors) -> Option<AdminConfig> {
    let admin = raw.admin.as_ref()?;
    let address = units::bind_address(&admin.address)
        .map_err(|e| errors.push("admin.address", e))
        .ok()?;
    // Port 0 asks the OS for a free port: two such addresses never collide.
    if let Some(i) = listeners
        .iter()
        .position(|l| l.address == address && address.port() != 0)
    {
        errors.push(
            "admin.address",
            format!("{address} is also listeners[{i}].address: the admin API never shares a data-plane listener"),
        );
    }
    let token_file = admin.token_file.as_ref().map(std::path::PathBuf::from);
    if token_file.is_none() && !address.ip().is_loopback() {
        errors.push(
            "admin.address",
            format!("{address} is reachable from other hosts: set admin.token_file so the API needs a token, or bind 127.0.0.1"),
        );
    }
    Some(AdminConfig { address, token_file })
}

/// A name usable in a header value, a metric label and a URL path segment.
pub(super) fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

fn compile_service(i: usize, raw: &RawService, errors: &mut Errors, warnings: &mut Vec<String>) -> Option<ServiceSpec> {
    let at = format!("services[{i}]");
    let before = errors.0.len();
    if !valid_name(&raw.name) {
        errors.push(
            format!("{at}.name"),
            format!(
                "\"{}\" is not a valid name: use 1 to 64 letters, digits, '-', '_' or '.'",
                raw.name
            ),
        );
    }

    let mut hosts = Vec::new();
    for (j, host) in raw.matcher.hosts.iter().flatten().enumerate() {
        match host_pattern(host) {
            Ok(pattern) => hosts.push(pattern),
            Err(e) => errors.push(format!("{at}.match.hosts[{j}]"), e),
        }
    }
    if raw.matcher.hosts.as_ref().is_some_and(Vec::is_empty) {
        errors.push(
            format!("{at}.match.hosts"),
            "is empty: list at least one host, or leave `hosts` out to match any host",
        );
    }
    let path_prefix = raw.matcher.path_prefix.clone().unwrap_or_else(|| "/".to_owned());
    if !path_prefix.starts_with('/') || path_prefix.contains(['?', '#', ' ']) {
        errors.push(
            format!("{at}.match.path_prefix"),
            format!("\"{path_prefix}\" must be a path starting with '/', without query or fragment"),
        );
    }

    if raw.versions.is_empty() {
        errors.push(
            format!("{at}.versions"),
            "at least one version is needed, e.g. `blue: { endpoints: [127.0.0.1:9001] }`",
        );
    }
    let mut versions = Vec::with_capacity(raw.versions.len());
    for (name, version) in &raw.versions {
        let vat = format!("{at}.versions.{name}");
        if !valid_name(name) {
            errors.push(
                &vat,
                format!("\"{name}\" is not a valid version name: use 1 to 64 letters, digits, '-', '_' or '.'"),
            );
        }
        let protocol = match version.protocol.as_deref() {
            None | Some("http1") => Protocol::Http1,
            Some("http2") => Protocol::Http2,
            Some(other) => {
                errors.push(
                    format!("{vat}.protocol"),
                    format!("unknown protocol \"{other}\" (protocols: http1, http2)"),
                );
                Protocol::Http1
            }
        };
        if version.endpoints.is_empty() {
            errors.push(
                format!("{vat}.endpoints"),
                "at least one endpoint is needed, e.g. `[127.0.0.1:9001]`",
            );
        }
        let mut endpoints = Vec::with_capacity(version.endpoints.len());
        for (k, text) in version.endpoints.iter().enumerate() {
            match units::endpoint(text) {
                Ok(addr) if endpoints.contains(&addr) => {
                    errors.push(format!("{vat}.endpoints[{k}]"), format!("{addr} is listed twice"))
                }
                Ok(addr) => endpoints.push(addr),
                Err(e) => errors.push(format!("{vat}.endpoints[{k}]"), e),
            }
        }
        let health_check = version
            .health_check
            .as_ref()
            .and_then(|h| super::routing::compile_health_check(&vat, h, errors));
        if version.tls.is_some() && !endpoints.iter().any(|e| e.tls) {
            errors.push(
                format!("{vat}.tls"),
                "applies to https:// endpoints, and this version has none: write them as https://host:port",
            );
        }
        let tls = compile_upstream_tls(&format!("{vat}.tls"), version.tls.as_ref(), errors);
        if tls.server_name.is_none() {
            for (k, endpoint) in endpoints.iter().enumerate().filter(|(_, e)| e.tls) {
                if rustls_pki_types::ServerName::try_from(endpoint.host.as_str()).is_err() {
                    errors.push(
                        format!("{vat}.endpoints[{k}]"),
                        format!(
                            "\"{}\" cannot be verified by TLS; set tls.server_name to the name in its certificate",
                            endpoint.host
                        ),
                    );
                }
            }
        }
        versions.push(VersionSpec {
            name: name.clone(),
            protocol,
            endpoints,
            weight: 0,
            health_check,
            tls,
        });
    }

    let known = || raw.versions.keys().map(String::as_str).collect::<Vec<_>>().join(", ");
    for (name, &weight) in &raw.routing.weights {
        let wat = format!("{at}.routing.weights");
        match versions.iter_mut().find(|v| &v.name == name) {
            None => errors.push(wat, format!("unknown version \"{name}\" (versions: {})", known())),
            Some(_) if weight > u64::from(u32::MAX) => errors.push(
                format!("{wat}.{name}"),
                format!(
                    "{weight} is too large: weights are shares, any scale up to {}",
                    u32::MAX
                ),
            ),
            Some(version) => version.weight = weight as u32,
        }
    }
    if !versions.is_empty() && versions.iter().all(|v| v.weight == 0) {
        warnings.push(format!("{at}.routing.weights: every version has weight 0, so service \"{}\" answers 503; give one a weight, e.g. `{}: 100`", raw.name, versions[0].name));
    }

    let names: Vec<&str> = raw.versions.keys().map(String::as_str).collect();
    let sticky = raw
        .routing
        .sticky
        .as_ref()
        .and_then(|s| super::routing::compile_sticky(&at, s, errors));
    let sticky_key = sticky.as_ref().and_then(|s| s.key.clone());
    let flags = super::flags::compile_flags(&at, &raw.flags, sticky_key.as_ref(), errors);
    let flag_names: Vec<&str> = raw.flags.keys().map(String::as_str).collect();
    let rules = super::routing::compile_rules(&at, &raw.routing.rules, &names, &flag_names, errors);
    let mirrors = super::routing::compile_mirrors(&at, &raw.mirror, &names, errors);
    let outlier_detection = raw
        .outlier_detection
        .as_ref()
        .and_then(|o| super::routing::compile_outlier_detection(&at, o, errors));
    let rollout = raw
        .rollout
        .as_ref()
        .and_then(|r| super::rollout::compile_rollout(&at, r, &names, errors));

    (errors.0.len() == before).then(|| ServiceSpec {
        name: raw.name.clone(),
        hosts,
        path_prefix,
        expose_version: raw.expose_version,
        versions,
        rules,
        sticky,
        mirrors,
        outlier_detection,
        rollout,
        flags,
    })
}

fn host_pattern(host: &str) -> Result<HostPattern, String> {
    let lower = host.trim().to_ascii_lowercase();
    let (pattern, name) = match lower.strip_prefix("*.") {
        Some(rest) => (HostPattern::Suffix(format!(".{rest}")), rest.to_owned()),
        None => (HostPattern::Exact(lower.clone()), lower.clone()),
    };
    let label_ok = |label: &str| {
        !label.is_empty()
            && label
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    };
    if name.is_empty() || !name.split('.').all(label_ok) {
        return Err(format!(
            "\"{host}\" is not a host name: write e.g. \"checkout.example.com\" or \"*.example.com\" (no port, no scheme)"
        ));
    }
    Ok(pattern)
}

#[cfg(test)]
mod tests {
    use crate::config::parse;

    use crate::config::testing::{errors_of, BASE};

    #[test]
    fn reports_every_error_with_its_path() {
        let yaml = format!(
            "{BASE}defaults: {{ timeouts: {{ connect: 1 }}, max_request_body: 3 potatoes }}
services:
  - name: checkout
    versions:
      blue: {{ endpoints: [127.0.0.1:9001, nowhere] }}
      canary: {{ endpoints: [127.0.0.1:9101], protocol: http3 }}
    routing: {{ weights: {{ blue: 95, canry: 5 }} }}
  - name: checkout
    match: {{ hosts: [\"http://x.com\"] }}
    versions: {{ a: {{ endpoints: [] }} }}
"
        );
        let errors = errors_of(&yaml);
        let expected = [
            "defaults.timeouts.connect: \"1\" has no unit",
            "defaults.max_request_body: \"3 potatoes\" has an unknown unit",
            "services[0].versions.blue.endpoints[1]: \"nowhere\" has no port; write e.g. \"nowhere:80\"",
            "services[0].versions.canary.protocol: unknown protocol \"http3\"",
            "services[0].routing.weights: unknown version \"canry\" (versions: blue, canary)",
            "services[1].name: \"checkout\" is used by an earlier service",
            "services[1].match.hosts[0]: \"http://x.com\" is not a host name",
            "services[1].versions.a.endpoints: at least one endpoint is needed",
        ];
        for want in expected {
            assert!(
                errors.iter().any(|e| e.starts_with(want)),
                "missing {want:?} in {errors:#?}"
            );
        }
        assert_eq!(errors.len(), expected.len(), "unexpected extra errors: {errors:#?}");
    }

    #[test]
    fn unknown_fields_are_errors_not_ignored() {
        let yaml = format!(
            "{BASE}services:\n  - name: a\n    versions: {{ blue: {{ endpoints: [127.0.0.1:1] }} }}\n    canaries: {{}}\n"
        );
        let errors = errors_of(&yaml);
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert!(
            errors[0].starts_with("services[0]: unknown field `canaries`"),
            "{errors:?}"
        );
    }

    #[test]
    fn valid_config_compiles_with_defaults() {
        let yaml = format!("{BASE}services:\n  - name: a\n    match: {{ hosts: [\"*.Example.com\"], path_prefix: /api }}\n    versions: {{ blue: {{ endpoints: [127.0.0.1:1] }}, green: {{ endpoints: [\"http://g:80\"], protocol: http2 }} }}\n    routing: {{ weights: {{ blue: 3 }} }}\n");
        let config = parse(&yaml).expect("valid");
        let service = &config.services[0];
        assert_eq!(
            service.hosts,
            vec![crate::config::HostPattern::Suffix(".example.com".into())]
        );
        assert_eq!(service.path_prefix, "/api");
        assert_eq!(
            service.versions.iter().map(|v| v.weight).collect::<Vec<_>>(),
            vec![3, 0]
        );
        assert_eq!(config.limits, crate::config::Limits::default());
        assert!(config.warnings.is_empty(), "{:?}", config.warnings);
    }

    #[test]
    fn non_loopback_admin_needs_a_token() {
        let service = "services:\n  - name: a\n    versions: { blue: { endpoints: [127.0.0.1:1] } }\n";
        let open = format!("{BASE}admin: {{ address: 0.0.0.0:9901 }}\n{service}");
        let errors = errors_of(&open);
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert!(
            errors[0].starts_with("admin.address: 0.0.0.0:9901 is reachable from other hosts: set admin.token_file")
        );
        let guarded = format!("{BASE}admin: {{ address: 0.0.0.0:9901, token_file: /run/token }}\n{service}");
        assert!(errors_of(&guarded).is_empty());
        let local = format!("{BASE}admin: {{ address: 127.0.0.1:9901 }}\n{service}");
        assert!(errors_of(&local).is_empty());
        // Regression: port 0 on both is two different ephemeral ports, not a clash.
        let ephemeral = format!("{BASE}admin: {{ address: 127.0.0.1:0 }}\n{service}");
        assert!(errors_of(&ephemeral).is_empty(), "{:?}", errors_of(&ephemeral));
        let clash = "listeners: [{ name: p, address: 127.0.0.1:8080 }]\nadmin: { address: 127.0.0.1:8080 }\n";
        assert!(errors_of(clash)
            .iter()
            .any(|e| e.contains("never shares a data-plane listener")));
    }

    #[test]
    fn tls_settings_are_checked_with_their_paths() {
        let dir = std::env::temp_dir().join(format!("sluice-compile-tls-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let junk = dir.join("junk.pem");
        std::fs::write(&junk, "not pem at all").expect("write");
        let yaml = format!(
            "listeners:\n  - {{ name: a, address: 127.0.0.1:0, tls: {{ certificates: [] }} }}\n  - {{ name: b, address: 127.0.0.1:0, tls: {{ certificates: [{{ cert: c.pem, key: '', names: [\"bad name\", 127.0.0.1] }}] }} }}\nservices:\n  - name: s\n    versions:\n      plain: {{ endpoints: [127.0.0.1:1], tls: {{ server_name: x.internal }} }}\n      missing: {{ endpoints: [\"https://a:443\"], tls: {{ ca: {}/nope.pem }} }}\n      junk: {{ endpoints: [\"https://a:443\"], tls: {{ ca: {}, server_name: \"not a name\" }} }}\n      odd: {{ endpoints: [\"https://my_host!:443\"] }}\n",
            dir.display(),
            junk.display()
        );
        let errors = errors_of(&yaml);
        let expect = [
            "listeners[0].tls.certificates: at least one certificate is needed",
            "listeners[1].tls.certificates[0].key: is empty",
            "listeners[1].tls.certificates[0].names[0]: \"bad name\" is not a DNS name",
            "listeners[1].tls.certificates[0].names[1]: \"127.0.0.1\" is not a DNS name",
            "services[0].versions.plain.tls: applies to https:// endpoints, and this version has none",
            "services[0].versions.missing.tls.ca: cannot read",
            "services[0].versions.junk.tls.ca: ",
            "services[0].versions.junk.tls.server_name: \"not a name\" is not a DNS name or IP address",
            "services[0].versions.odd.endpoints[0]: \"my_host!\" cannot be verified by TLS",
        ];
        for want in expect {
            assert!(
                errors.iter().any(|e| e.starts_with(want)),
                "missing {want:?} in {errors:#?}"
            );
        }
        assert!(errors.iter().any(|e| e.contains("holds no certificate")), "{errors:#?}");
        assert_eq!(errors.len(), expect.len(), "{errors:#?}");

        // Valid: an https endpoint with the built-in roots, one with a CA file and a name.
        let ca = rcgen::CertifiedIssuer::self_signed(
            rcgen::CertificateParams::new(Vec::<String>::new()).expect("params"),
            rcgen::KeyPair::generate().expect("key"),
        )
        .expect("ca");
        std::fs::write(dir.join("ca.pem"), ca.pem()).expect("write");
        let ok = format!(
            "listeners: [{{ name: a, address: 127.0.0.1:0, tls: {{ certificates: [{{ cert: a.pem, key: a.key, names: [\"*.Example.com\"] }}] }} }}]\nservices:\n  - name: s\n    versions:\n      web: {{ endpoints: [\"https://example.com:443\", 127.0.0.1:1] }}\n      internal: {{ endpoints: [\"https://10.0.0.1:8443\"], protocol: http2, tls: {{ ca: {}, server_name: app.internal }} }}\n    routing: {{ weights: {{ web: 1 }} }}\n",
            dir.join("ca.pem").display()
        );
        let config = parse(&ok).unwrap_or_else(|e| panic!("{e}"));
        let tls = config.listeners[0].tls.as_ref().expect("tls");
        assert_eq!(tls.certificates[0].names, vec!["*.example.com".to_owned()]);
        let internal = &config.services[0].versions[1];
        assert_eq!(internal.tls.ca_certs, vec![ca.der().clone()]);
        assert_eq!(internal.tls.server_name.as_deref(), Some("app.internal"));
        assert!(config.services[0].versions[0].endpoints[0].tls);
        assert!(!config.services[0].versions[0].endpoints[1].tls);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn all_zero_weights_warn() {
        let yaml = format!("{BASE}services:\n  - name: a\n    versions: {{ blue: {{ endpoints: [127.0.0.1:1] }} }}\n");
        let config = parse(&yaml).expect("valid");
        assert_eq!(config.warnings.len(), 1);
        assert!(config.warnings[0].contains("answers 503"), "{:?}", config.warnings);
    }
}
