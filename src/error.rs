//! One error type for the request path, tagged with its source, and one table from error to
//! the status the client gets.

use http::StatusCode;

use crate::upstream::{FailureKind, SendFailure};

/// Which side caused a failed request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// The client: bad or oversized request.
    Downstream,
    /// An upstream endpoint: refused, reset or too slow.
    Upstream,
    /// The routing table: nothing is configured to serve the request.
    Routing,
    /// The proxy itself: it is at a configured limit (`defaults.limits`).
    Proxy,
}

/// Everything that ends a request with a synthetic response.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    /// No service matches the host and path.
    #[error("no service matches this host and path")]
    NoService,
    /// The service has no version with weight or no endpoint to send to.
    #[error("no version of service \"{0}\" can serve")]
    NoVersion(std::sync::Arc<str>),
    /// The request is malformed in a way hyper let through.
    #[error("bad request: {0}")]
    BadRequest(&'static str),
    /// The request body is larger than `max_request_body`.
    #[error("request body larger than {0} bytes")]
    BodyTooLarge(u64),
    /// No connection to the endpoint could be made (after one retry elsewhere, if any).
    #[error("cannot connect to upstream {endpoint}: {cause}")]
    Connect {
        /// `host:port`.
        endpoint: std::sync::Arc<str>,
        /// What failed.
        cause: Box<dyn std::error::Error + Send + Sync>,
    },
    /// The upstream closed or reset the connection before a response.
    #[error("upstream {endpoint} failed before responding: {cause}")]
    Reset {
        /// `host:port`.
        endpoint: std::sync::Arc<str>,
        /// What failed.
        cause: Box<dyn std::error::Error + Send + Sync>,
    },
    /// No response headers within `response_headers`.
    #[error("upstream {endpoint} sent no response headers within {timeout:?}")]
    Timeout {
        /// `host:port`.
        endpoint: std::sync::Arc<str>,
        /// The configured bound.
        timeout: std::time::Duration,
    },
    /// A WebSocket or other upgrade to a version that speaks HTTP/2 upstream.
    #[error("protocol upgrades need an http1 upstream")]
    UpgradeUnsupported,
    /// `max_in_flight` requests are in flight already: shed without contacting an upstream.
    #[error("{0} requests in flight: shed")]
    Overloaded(usize),
}

impl ProxyError {
    /// Which side caused it.
    pub fn source_side(&self) -> Source {
        match self {
            ProxyError::BadRequest(_) | ProxyError::BodyTooLarge(_) => Source::Downstream,
            ProxyError::NoService | ProxyError::NoVersion(_) => Source::Routing,
            ProxyError::Connect { .. }
            | ProxyError::Reset { .. }
            | ProxyError::Timeout { .. }
            | ProxyError::UpgradeUnsupported => Source::Upstream,
            ProxyError::Overloaded(_) => Source::Proxy,
        }
    }

    /// The status the client gets.
    pub fn status(&self) -> StatusCode {
        match self {
            ProxyError::NoService => StatusCode::NOT_FOUND,
            ProxyError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ProxyError::BodyTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            ProxyError::NoVersion(_) | ProxyError::Overloaded(_) => StatusCode::SERVICE_UNAVAILABLE,
            ProxyError::Connect { .. } | ProxyError::Reset { .. } | ProxyError::UpgradeUnsupported => {
                StatusCode::BAD_GATEWAY
            }
            ProxyError::Timeout { .. } => StatusCode::GATEWAY_TIMEOUT,
        }
    }

    /// The `kind` of `sluice_upstream_errors_total` this error counts as, if any.
    pub fn upstream_kind(&self) -> Option<crate::metrics::ErrorKind> {
        use crate::metrics::ErrorKind;
        match self {
            ProxyError::Connect { .. } => Some(ErrorKind::Connect),
            ProxyError::Timeout { .. } => Some(ErrorKind::Timeout),
            ProxyError::Reset { .. } => Some(ErrorKind::Reset),
            _ => None,
        }
    }

    /// The short plain-text body sent with the status.
    pub fn body(&self) -> &'static str {
        match self {
            ProxyError::NoService => "no service for this host and path\n",
            ProxyError::BadRequest(_) => "bad request\n",
            ProxyError::BodyTooLarge(_) => "request body too large\n",
            ProxyError::NoVersion(_) => "no version available\n",
            ProxyError::Connect { .. } | ProxyError::Reset { .. } => "upstream unavailable\n",
            ProxyError::UpgradeUnsupported => "upgrade not supported by this upstream\n",
            ProxyError::Timeout { .. } => "upstream timed out\n",
            ProxyError::Overloaded(_) => "overloaded: retry shortly\n",
        }
    }

    /// Converts an upstream send failure, given the endpoint it was for and the limits in force.
    pub fn from_send(failure: SendFailure, endpoint: std::sync::Arc<str>, limits: &crate::config::Limits) -> Self {
        match failure.kind {
            FailureKind::Timeout => ProxyError::Timeout {
                endpoint,
                timeout: limits.response_headers,
            },
            FailureKind::Connect(cause) => ProxyError::Connect { endpoint, cause },
            FailureKind::Client(cause) if crate::upstream::is_body_too_large(&*cause) => {
                ProxyError::BodyTooLarge(limits.max_request_body)
            }
            FailureKind::Client(_) => ProxyError::BadRequest("malformed or incomplete request body"),
            FailureKind::Reset(cause) => ProxyError::Reset { endpoint, cause },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_table() {
        let ep = || std::sync::Arc::from("127.0.0.1:1");
        let cases: [(ProxyError, u16, Source); 7] = [
            (ProxyError::Overloaded(1), 503, Source::Proxy),
            (ProxyError::NoService, 404, Source::Routing),
            (ProxyError::NoVersion(ep()), 503, Source::Routing),
            (ProxyError::BadRequest("x"), 400, Source::Downstream),
            (ProxyError::BodyTooLarge(1), 413, Source::Downstream),
            (
                ProxyError::Connect {
                    endpoint: ep(),
                    cause: "refused".into(),
                },
                502,
                Source::Upstream,
            ),
            (
                ProxyError::Timeout {
                    endpoint: ep(),
                    timeout: std::time::Duration::from_secs(1),
                },
                504,
                Source::Upstream,
            ),
        ];
        for (error, status, source) in cases {
            assert_eq!(error.status().as_u16(), status, "{error}");
            assert_eq!(error.source_side(), source, "{error}");
        }
    }
}
