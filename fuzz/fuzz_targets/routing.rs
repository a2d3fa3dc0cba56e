//! A fixed routing table (five services: exact, wildcard and host-less matches, nested path
//! prefixes, header/cookie rules, sticky cookies keyed by header and by cookie, zero weights)
//! and an arbitrary request → the data plane's decision, as `proxy` makes it: the host from the
//! URI's authority or the `Host` header, `router::route` on it and the path, then
//! `split::choose` on the headers, then the chosen version's sticky cookie. Must never panic,
//! and a choice must name one of the service's versions.
//!
//! Also: `split::Split` on arbitrary weights (bucket owners and weighted draws stay in range).
#![no_main]

use std::sync::{Arc, OnceLock};

use arbitrary::Arbitrary;
use http::{HeaderName, HeaderValue, Method, Request, Uri};
use libfuzzer_sys::fuzz_target;
use sluice::{router, split, sticky, RoutingTable};

/// The fixed config, also a seed of the `config` target.
const CONFIG: &str = include_str!("../seeds/config/fuzz-routing.yaml");

/// A request as a client could send it; parts `http` would reject are skipped.
#[derive(Arbitrary, Debug)]
struct Input {
    method: String,
    /// The request-target: origin form (`/cart?x=1`) or absolute (`http://host/cart`).
    target: String,
    /// The `Host` header.
    host: Option<String>,
    headers: Vec<(String, Vec<u8>)>,
    cookie: Option<Vec<u8>>,
    /// For the `Split` check.
    weights: Vec<u32>,
    draw: u64,
    bucket: u32,
}

fn table() -> &'static Arc<RoutingTable> {
    static TABLE: OnceLock<Arc<RoutingTable>> = OnceLock::new();
    TABLE.get_or_init(|| {
        let config = sluice::config::parse(CONFIG).expect("the fuzz table's config is valid");
        sluice::Routing::new(&config).load_full()
    })
}

fuzz_target!(|input: Input| {
    let table = table();
    let Ok(method) = Method::from_bytes(input.method.as_bytes()) else {
        return;
    };
    let Ok(uri) = input.target.parse::<Uri>() else { return };
    let mut builder = Request::builder().method(method).uri(uri);
    if let Some(host) = &input.host {
        let Ok(value) = HeaderValue::from_str(host) else { return };
        builder = builder.header(http::header::HOST, value);
    }
    let Ok(mut request) = builder.body(()) else { return };
    for (name, value) in &input.headers {
        let (Ok(name), Ok(value)) = (HeaderName::from_bytes(name.as_bytes()), HeaderValue::from_bytes(value)) else {
            continue;
        };
        request.headers_mut().append(name, value);
    }
    if let Some(cookie) = &input.cookie {
        if let Ok(value) = HeaderValue::from_bytes(cookie) {
            request.headers_mut().append(http::header::COOKIE, value);
        }
    }

    // proxy::request_host: the authority of an absolute URI, else the Host header.
    let host = match request.uri().authority() {
        Some(authority) => HeaderValue::from_str(authority.as_str()).ok(),
        None => request.headers().get(http::header::HOST).cloned(),
    };
    let host = host.as_ref().and_then(|h| h.to_str().ok());
    if let Some(service) = router::route(table, host, request.uri().path()) {
        if let Some(choice) = split::choose(service, request.headers()) {
            let version = &service.versions[choice.version];
            if let (true, Some(spec)) = (choice.set_cookie, &service.sticky) {
                assert!(version.set_cookie.is_some(), "sticky choice without a cookie to set");
                std::hint::black_box(sticky::set_cookie(&spec.cookie, &version.name, spec.ttl));
            }
        }
    }

    // The split on its own, with weights no config would pass.
    let weights: Vec<u32> = input.weights.iter().copied().take(64).collect();
    let split = split::Split::new(weights.iter().copied());
    let total = split.total();
    assert_eq!(total, weights.iter().map(|&w| u64::from(w)).sum::<u64>());
    if let Some(owner) = split.owner(input.bucket % sticky::BUCKETS) {
        assert!(
            owner < weights.len() && weights[owner] > 0,
            "bucket owned by {owner} of {weights:?}"
        );
    }
    if total > 0 {
        let picked = split
            .pick_with(input.draw % total)
            .expect("a draw below the total has an owner");
        assert!(weights[picked] > 0, "draw picked weight 0: {picked} of {weights:?}");
    }
    for index in 0..=weights.len() {
        assert_eq!(split.weight(index), weights.get(index).map_or(0, |&w| u64::from(w)));
    }
});
