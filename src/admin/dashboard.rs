//! `GET /` on the admin listener: the dashboard, one static page (`src/dashboard.html`) compiled
//! into the binary. It holds no data, so it needs no token; its script reads the JSON API,
//! which does.
//!
//! The page's one inline script and one inline style are allowed by their SHA-256 hashes, so
//! the content security policy needs neither `'unsafe-inline'` nor any other origin: injected
//! markup could run no script, and the page can talk to nothing but this listener.

use std::sync::LazyLock;

use bytes::Bytes;
use http::{header, HeaderValue, Response};
use http_body_util::Full;

/// The page, as served.
pub const PAGE: &str = include_str!("../dashboard.html");

/// The `content-security-policy` the page is served with, computed once from the page.
static POLICY: LazyLock<String> = LazyLock::new(|| policy(PAGE));

/// The dashboard response.
pub fn response() -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from_static(PAGE.as_bytes())));
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    if let Ok(policy) = HeaderValue::from_str(&POLICY) {
        headers.insert(header::CONTENT_SECURITY_POLICY, policy);
    }
    headers.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    headers.insert(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    // A new binary may serve a new page at the same address.
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    response
}

/// Nothing by default; the inline script and style by hash; `fetch` to this origin only; no
/// framing (the page has buttons that change routing), no forms posted anywhere, no `<base>`.
/// `img-src data:` is for the empty favicon, which saves a request that would 404.
fn policy(page: &str) -> String {
    format!(
        "default-src 'none'; script-src {}; style-src {}; connect-src 'self'; img-src data:; \
         base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
        hashes(page, "script"),
        hashes(page, "style")
    )
}

/// `'sha256-...'` of the text of every `<tag>...</tag>` element in `page`, space-separated;
/// `'none'` when there is none.
fn hashes(page: &str, tag: &str) -> String {
    let (open, close) = (format!("<{tag}>"), format!("</{tag}>"));
    let mut found = Vec::new();
    let mut rest = page;
    while let Some(start) = rest.find(&open) {
        let body = &rest[start + open.len()..];
        let Some(end) = body.find(&close) else { break };
        let digest = ring::digest::digest(&ring::digest::SHA256, &body.as_bytes()[..end]);
        found.push(format!("'sha256-{}'", base64(digest.as_ref())));
        rest = &body[end + close.len()..];
    }
    if found.is_empty() {
        "'none'".to_owned()
    } else {
        found.join(" ")
    }
}

/// Standard base64 with padding, as CSP hash sources are written.
fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, b)| n | u32::from(*b) << (16 - 8 * i));
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_matches_rfc_4648_vectors() {
        for (input, want) in [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("fooba", "Zm9vYmE="),
            ("foobar", "Zm9vYmFy"),
        ] {
            assert_eq!(base64(input.as_bytes()), want, "base64({input:?})");
        }
    }

    #[test]
    fn hashes_cover_each_inline_element() {
        // sha256("alert(1)"), as browsers print it in their CSP errors.
        let page = "<script>alert(1)</script><p>x</p><script>alert(1)</script>";
        let want = "'sha256-bhHHL3z2vDgxUt0W3dWQOrprscmda2Y5pLsLg4GF+pI='";
        assert_eq!(hashes(page, "script"), format!("{want} {want}"));
        assert_eq!(hashes(page, "style"), "'none'");
    }

    #[test]
    fn the_page_is_self_contained_and_its_policy_names_its_blocks() {
        for outside in ["src=\"http", "href=\"http", "url(", "@import", "onclick=", "onload="] {
            assert!(!PAGE.contains(outside), "the page must not load or inline {outside:?}");
        }
        assert_eq!(PAGE.matches("<script>").count(), 1, "one inline script");
        assert_eq!(PAGE.matches("<style>").count(), 1, "one inline style");
        let policy = policy(PAGE);
        assert!(!policy.contains("unsafe"), "{policy}");
        assert_eq!(policy.matches("'sha256-").count(), 2, "{policy}");
        assert!(policy.contains("connect-src 'self'"), "{policy}");
    }
}
