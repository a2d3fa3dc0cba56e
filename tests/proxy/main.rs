//! Integration tests of the request path: real upstreams and the real proxy on 127.0.0.1:0,
//! real HTTP clients.

mod admin;
mod browser;
mod client_h1;
mod dashboard;
mod deploy;
mod failures;
mod flags;
mod h2;
mod h2_review;
mod headers;
mod health;
mod hostile;
mod metrics;
mod overload;
mod pooling;
mod reload;
mod rollout;
mod routing;
mod shadow;
mod stickiness;
mod streaming;
mod support;
mod tls;
mod upstream_h1;
