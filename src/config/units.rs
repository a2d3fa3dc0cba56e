//! Parsers for the string-typed values of the configuration: durations, sizes and addresses.
//! Each returns a message that says what was expected, for [`super::ConfigError`].

use std::net::SocketAddr;
use std::time::Duration;

/// Parses a duration with a unit, such as `250ms`, `30s`, `2m` or `1h`.
pub fn duration(text: &str) -> Result<Duration, String> {
    let trimmed = text.trim();
    if !trimmed.is_empty() && trimmed.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!(
            "\"{text}\" has no unit: write e.g. \"{trimmed}s\" or \"{trimmed}ms\""
        ));
    }
    let parsed = humantime::parse_duration(trimmed)
        .map_err(|e| format!("\"{text}\" is not a duration ({e}): write e.g. \"250ms\", \"30s\", \"2m\""))?;
    if parsed > MAX_DURATION {
        return Err(format!("\"{text}\" is too long: at most 10 years"));
    }
    Ok(parsed)
}

/// Longest duration a config may give: deadlines are the current time plus a duration, which
/// must stay representable.
const MAX_DURATION: Duration = Duration::from_secs(3660 * 86_400);

/// Parses a byte size such as `16MiB`, `64KiB`, `1MB` or `512` (bytes).
pub fn size(text: &str) -> Result<u64, String> {
    let trimmed = text.trim();
    let split = trimmed.find(|c: char| !c.is_ascii_digit()).unwrap_or(trimmed.len());
    let (digits, unit) = trimmed.split_at(split);
    let multiplier: u64 = match unit.trim() {
        "" | "B" => 1,
        "KB" | "kB" => 1_000,
        "KiB" => 1 << 10,
        "MB" => 1_000_000,
        "MiB" => 1 << 20,
        "GB" => 1_000_000_000,
        "GiB" => 1 << 30,
        _ => {
            return Err(format!(
                "\"{text}\" has an unknown unit: use B, KB, KiB, MB, MiB, GB or GiB"
            ))
        }
    };
    let number: u64 = digits
        .parse()
        .map_err(|_| format!("\"{text}\" is not a size: write e.g. \"16MiB\" or \"64KiB\""))?;
    number
        .checked_mul(multiplier)
        .ok_or_else(|| format!("\"{text}\" is too large"))
}

/// Parses a socket address to bind, such as `0.0.0.0:8080` or `[::1]:9901`.
pub fn bind_address(text: &str) -> Result<SocketAddr, String> {
    text.trim().parse().map_err(|_| {
        format!("\"{text}\" is not an IP address with a port: write e.g. \"0.0.0.0:8080\" or \"127.0.0.1:9901\"")
    })
}

/// An upstream endpoint's address: a host (name or IP), a port, and whether it speaks TLS.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct EndpointAddr {
    /// Host name or IP literal (IPv6 without brackets).
    pub host: String,
    /// TCP port.
    pub port: u16,
    /// `https://`: connections are TLS.
    pub tls: bool,
}

impl EndpointAddr {
    /// `host:port`, with IPv6 hosts in brackets.
    pub fn authority(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }
}

impl std::fmt::Display for EndpointAddr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.tls {
            f.write_str("https://")?;
        }
        f.write_str(&self.authority())
    }
}

/// Parses an endpoint: `host:port`, `http://host:port` or `https://host:port`.
pub fn endpoint(text: &str) -> Result<EndpointAddr, String> {
    let trimmed = text.trim();
    let (rest, tls) = if let Some(rest) = trimmed.strip_prefix("http://") {
        (rest, false)
    } else if let Some(rest) = trimmed.strip_prefix("https://") {
        (rest, true)
    } else if let Some((scheme, _)) = trimmed.split_once("://") {
        return Err(format!(
            "\"{text}\": unknown scheme \"{scheme}\"; use host:port, http://host:port or https://host:port"
        ));
    } else {
        (trimmed, false)
    };
    let rest = rest.strip_suffix('/').unwrap_or(rest);
    let authority: http::uri::Authority = rest
        .parse()
        .map_err(|_| format!("\"{text}\" is not host:port; write e.g. \"127.0.0.1:9001\""))?;
    if rest.contains(['/', '?', '@']) {
        return Err(format!(
            "\"{text}\": an endpoint is host:port only, without a path or user"
        ));
    }
    let port = authority
        .port_u16()
        .ok_or_else(|| format!("\"{text}\" has no port; write e.g. \"{rest}:80\""))?;
    let host = authority.host().trim_start_matches('[').trim_end_matches(']');
    if host.is_empty() {
        return Err(format!("\"{text}\" has no host"));
    }
    Ok(EndpointAddr {
        host: host.to_owned(),
        port,
        tls,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(duration("2m"), Ok(Duration::from_secs(120)));
        assert!(
            duration("30").unwrap_err().contains("no unit"),
            "bare number must name the fix"
        );
        assert!(duration("soon").is_err());
        // A deadline this far would overflow the clock (it panicked a connection's task).
        assert!(duration("300000000000y").unwrap_err().contains("at most 10 years"));
        assert_eq!(duration("10y").map(|d| d.as_secs() / 86_400), Ok(3652));
    }

    #[test]
    fn sizes() {
        for (text, want) in [
            ("16MiB", 16 << 20),
            ("64KiB", 64 << 10),
            ("1MB", 1_000_000),
            ("512", 512),
            ("2 GiB", 2 << 30),
        ] {
            assert_eq!(size(text), Ok(want), "{text}");
        }
        for bad in ["", "MiB", "16XB", "-1", "99999999999999GiB"] {
            assert!(size(bad).is_err(), "{bad} must be rejected");
        }
    }

    #[test]
    fn endpoints() {
        let cases = [
            ("127.0.0.1:9001", "127.0.0.1", 9001, false),
            ("http://app:80", "app", 80, false),
            ("http://app:80/", "app", 80, false),
            ("[::1]:8080", "::1", 8080, false),
            ("https://app:443", "app", 443, true),
        ];
        for (text, host, port, tls) in cases {
            assert_eq!(
                endpoint(text),
                Ok(EndpointAddr {
                    host: host.into(),
                    port,
                    tls
                }),
                "{text}"
            );
        }
        for bad in ["app", "https://app", "ftp://x:1", "http://app:80/path", ":80", "a b:1"] {
            assert!(endpoint(bad).is_err(), "{bad} must be rejected");
        }
        assert_eq!(endpoint("[::1]:8080").unwrap().to_string(), "[::1]:8080");
        assert_eq!(
            endpoint("https://[::1]:8443").unwrap().to_string(),
            "https://[::1]:8443"
        );
    }
}
