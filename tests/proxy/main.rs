//! Integration tests of the request path: real upstreams and the real proxy on 127.0.0.1:0,
//! real HTTP clients.

mod failures;
mod h2;
mod headers;
mod pooling;
mod routing;
mod streaming;
mod support;
