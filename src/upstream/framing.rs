//! HTTP/1.1 message bodies as RFC 9112 §6 frames them, shared by the client server side
//! ([`crate::server::h1`]: request bodies), and by the upstream client
//! ([`super::h1`]) and the shadow pipeline ([`super::pipeline`]): no body for `HEAD`, 1xx, 204
//! and 304; `Transfer-Encoding: chunked`; `Content-Length`; otherwise until the server closes.

use bytes::{Buf, Bytes, BytesMut};
use http::header::{HeaderMap, HeaderName, HeaderValue};
use http::StatusCode;

/// Largest answer head (and trailer section) read.
pub(crate) const MAX_HEAD: usize = 64 << 10;
/// Headers parsed in an answer head.
pub(crate) const MAX_HEADERS: usize = 100;
/// Longest chunk-size line (extensions included) accepted.
const MAX_CHUNK_LINE: usize = 1024;

/// Where a body decoder is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Framing {
    /// This many bytes left.
    Length(u64),
    /// Chunked, at a chunk-size line.
    ChunkSize,
    /// Chunked, inside a chunk with this much data left, then its CRLF.
    ChunkData(u64),
    /// Chunked, in the trailer section.
    Trailers,
    /// Everything until the server closes.
    UntilClose,
}

/// What [`Framing::step`] found in the buffer.
#[derive(Debug)]
pub(crate) enum Step {
    /// Body data, taken from the buffer without copying.
    Data(Bytes),
    /// The body is complete; for a chunked body with trailers, the trailer section (its lines,
    /// with the blank line that ends it).
    End(Option<BytesMut>),
    /// The buffer holds nothing more of the body yet.
    More,
    /// Not HTTP/1.1 we can frame: the connection is unusable.
    Invalid,
}

impl Framing {
    /// Takes the next piece of the body out of `buf`.
    pub(crate) fn step(&mut self, buf: &mut BytesMut) -> Step {
        self.step_counting(buf, &mut 0)
    }

    /// [`Framing::step`], adding the length of the chunk extensions it reads to `extensions`.
    pub(crate) fn step_counting(&mut self, buf: &mut BytesMut, extensions: &mut usize) -> Step {
        loop {
            match *self {
                Framing::Length(0) => return Step::End(None),
                Framing::Length(left) => return take(self, buf, left, Framing::Length),
                Framing::ChunkData(0) => {
                    // The CRLF that ends a chunk's data.
                    if buf.len() < 2 {
                        return if buf.first().is_none_or(|&b| b == b'\r') {
                            Step::More
                        } else {
                            Step::Invalid
                        };
                    }
                    if &buf[..2] != b"\r\n" {
                        return Step::Invalid;
                    }
                    buf.advance(2);
                    *self = Framing::ChunkSize;
                }
                Framing::ChunkData(left) => return take(self, buf, left, Framing::ChunkData),
                Framing::ChunkSize => match httparse::parse_chunk_size(buf) {
                    Ok(httparse::Status::Complete((n, size))) => {
                        // httparse takes a line without digits as 0, and skips a bare LF inside
                        // an extension: both let a body end where another reader would not.
                        let line = &buf[..n - 1];
                        if !line.first().is_some_and(u8::is_ascii_hexdigit) || line.contains(&b'\n') {
                            return Step::Invalid;
                        }
                        let line = line.strip_suffix(b"\r").unwrap_or(line);
                        if let Some(at) = line.iter().position(|&b| b == b';') {
                            *extensions += line.len() - at;
                        }
                        buf.advance(n);
                        *self = if size == 0 {
                            Framing::Trailers
                        } else {
                            Framing::ChunkData(size)
                        };
                    }
                    Ok(httparse::Status::Partial) if buf.len() < MAX_CHUNK_LINE => return Step::More,
                    _ => return Step::Invalid,
                },
                Framing::Trailers => {
                    if buf.starts_with(b"\r\n") {
                        buf.advance(2);
                        *self = Framing::Length(0);
                        return Step::End(None);
                    }
                    return match buf.windows(4).position(|w| w == b"\r\n\r\n") {
                        Some(at) => {
                            *self = Framing::Length(0);
                            Step::End(Some(buf.split_to(at + 4)))
                        }
                        None if buf.len() < MAX_HEAD => Step::More,
                        None => Step::Invalid,
                    };
                }
                Framing::UntilClose if buf.is_empty() => return Step::More,
                Framing::UntilClose => return Step::Data(buf.split().freeze()),
            }
        }
    }

    /// The body's exact length, when the framing says it.
    pub(crate) fn exact(self) -> Option<u64> {
        match self {
            Framing::Length(n) => Some(n),
            _ => None,
        }
    }
}

/// Takes up to `left` bytes of data; `more(rest)` is the framing after them.
fn take(framing: &mut Framing, buf: &mut BytesMut, left: u64, more: fn(u64) -> Framing) -> Step {
    if buf.is_empty() {
        return Step::More;
    }
    let n = buf.len().min(usize::try_from(left).unwrap_or(usize::MAX));
    *framing = more(left - n as u64);
    Step::Data(buf.split_to(n).freeze())
}

/// How the body of an answer with `status` to a `HEAD` request (or not) is framed, and whether
/// the server closes the connection after it. `Err`: conflicting or invalid lengths.
pub(super) fn of(
    response: &httparse::Response<'_, '_>,
    status: StatusCode,
    head_request: bool,
) -> Result<(Framing, bool), ()> {
    let http10 = response.version == Some(0);
    let (mut close, mut keep_alive) = (false, false);
    let (mut chunked, mut length, mut coded) = (false, None, false);
    for h in response.headers.iter() {
        // The length picks the one name worth comparing: most headers are none of the three.
        let name = h.name.as_bytes();
        match name.len() {
            10 if name.eq_ignore_ascii_case(b"connection") => {
                for token in h.value.split(|&b| b == b',') {
                    let token = token.trim_ascii();
                    close |= token.eq_ignore_ascii_case(b"close");
                    keep_alive |= token.eq_ignore_ascii_case(b"keep-alive");
                }
            }
            17 if name.eq_ignore_ascii_case(b"transfer-encoding") => {
                coded = true;
                chunked = h
                    .value
                    .rsplit(|&b| b == b',')
                    .next()
                    .is_some_and(|last| last.trim_ascii().eq_ignore_ascii_case(b"chunked"));
            }
            14 if name.eq_ignore_ascii_case(b"content-length") => {
                let value = decimal(h.value.trim_ascii()).ok_or(())?;
                if length.is_some_and(|l| l != value) {
                    return Err(());
                }
                length = Some(value);
            }
            _ => {}
        }
    }
    // `close` always wins; HTTP/1.0 keeps the connection only when asked to.
    close |= http10 && !keep_alive;
    // Transfer-Encoding with Content-Length, or in HTTP/1.0, is faulty framing (RFC 9112
    // §6.1, §6.3): the body is still read by its coding, but the connection is not reused.
    close |= coded && (length.is_some() || http10);
    let framing = if head_request
        || status.is_informational()
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED
    {
        Framing::Length(0)
    } else if coded {
        if chunked {
            Framing::ChunkSize
        } else {
            Framing::UntilClose
        }
    } else {
        length.map_or(Framing::UntilClose, Framing::Length)
    };
    if framing == Framing::UntilClose {
        close = true;
    }
    Ok((framing, close))
}

/// A `Content-Length` value: ASCII digits only (no sign, no blank), at most `u64::MAX`.
pub(crate) fn decimal(digits: &[u8]) -> Option<u64> {
    if digits.is_empty() {
        return None;
    }
    digits.iter().try_fold(0u64, |n, &b| {
        if !b.is_ascii_digit() {
            return None;
        }
        n.checked_mul(10)?.checked_add(u64::from(b - b'0'))
    })
}

/// The status of a parsed answer head.
pub(super) fn status(response: &httparse::Response<'_, '_>) -> Result<StatusCode, ()> {
    response.code.and_then(|c| StatusCode::from_u16(c).ok()).ok_or(())
}

/// The trailer section of a chunked body, if it has any valid field.
pub(crate) fn parse_trailers(section: &[u8]) -> Result<Option<HeaderMap>, &'static str> {
    let mut slots = [httparse::EMPTY_HEADER; 32];
    let fields = match httparse::parse_headers(section, &mut slots) {
        Ok(httparse::Status::Complete((_, fields))) => fields,
        _ => return Err("malformed trailers"),
    };
    let mut trailers = HeaderMap::with_capacity(fields.len());
    for f in fields.iter() {
        let name = HeaderName::from_bytes(f.name.as_bytes()).map_err(|_| "invalid trailer name")?;
        let value = HeaderValue::from_bytes(f.value).map_err(|_| "invalid trailer value")?;
        trailers.append(name, value);
    }
    Ok((!trailers.is_empty()).then_some(trailers))
}

/// Writes one `name: value` line.
pub(crate) fn put_header(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.extend_from_slice(name);
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

/// Writes every field of `headers`.
pub(crate) fn put_headers(out: &mut Vec<u8>, headers: &HeaderMap) {
    for (name, value) in headers {
        put_header(out, name.as_str().as_bytes(), value.as_bytes());
    }
}

/// Writes `n` in hexadecimal (a chunk size).
pub(crate) fn put_hex(out: &mut Vec<u8>, n: usize) {
    let digits = (usize::BITS - n.leading_zeros()).div_ceil(4).max(1);
    for i in (0..digits).rev() {
        out.push(b"0123456789abcdef"[(n >> (i * 4)) & 0xf]);
    }
}

/// `n` in decimal, written into the end of `buf`.
pub(crate) fn itoa(mut n: u64, buf: &mut [u8; 20]) -> &[u8] {
    let mut at = buf.len();
    loop {
        at -= 1;
        buf[at] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            return &buf[at..];
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Decodes `wire` fed in pieces of `piece` bytes; returns the data and the trailer section.
    fn decode(mut framing: Framing, wire: &[u8], piece: usize) -> Result<(Vec<u8>, Option<Vec<u8>>), ()> {
        let mut buf = BytesMut::new();
        let mut data = Vec::new();
        let mut fed = 0;
        loop {
            match framing.step(&mut buf) {
                Step::Data(d) => data.extend_from_slice(&d),
                Step::End(trailers) => return Ok((data, trailers.map(|t| t.to_vec()))),
                Step::Invalid => return Err(()),
                Step::More if fed == wire.len() => return Err(()),
                Step::More => {
                    let n = piece.min(wire.len() - fed);
                    buf.extend_from_slice(&wire[fed..fed + n]);
                    fed += n;
                }
            }
        }
    }

    #[test]
    fn chunked_bodies_decode_the_same_split_anywhere() {
        let wire = b"5;ext=1\r\nhello\r\n1\r\n \r\n5\r\nworld\r\n0\r\nx-checksum: 7\r\n\r\n";
        for piece in 1..wire.len() {
            let (data, trailers) = decode(Framing::ChunkSize, wire, piece).expect("valid");
            assert_eq!(data, b"hello world", "piece {piece}");
            assert_eq!(
                trailers.as_deref(),
                Some(&b"x-checksum: 7\r\n\r\n"[..]),
                "piece {piece}"
            );
        }
        let plain = b"2\r\nok\r\n0\r\n\r\n";
        assert_eq!(decode(Framing::ChunkSize, plain, 1), Ok((b"ok".to_vec(), None)));
    }

    fn framing_of(head: &str, head_request: bool) -> Result<(Framing, bool), ()> {
        let mut slots = [httparse::EMPTY_HEADER; 16];
        let mut response = httparse::Response::new(&mut slots);
        assert!(response.parse(head.as_bytes()).expect("parses").is_complete());
        let status = status(&response)?;
        of(&response, status, head_request)
    }

    #[test]
    fn framing_and_reuse_follow_rfc_9112() {
        let ok = |headers: &str| framing_of(&format!("HTTP/1.1 200 OK\r\n{headers}\r\n"), false);
        assert_eq!(ok("content-length: 5\r\n"), Ok((Framing::Length(5), false)));
        assert_eq!(ok("transfer-encoding: chunked\r\n"), Ok((Framing::ChunkSize, false)));
        assert_eq!(ok(""), Ok((Framing::UntilClose, true)));
        assert_eq!(ok("transfer-encoding: gzip\r\n"), Ok((Framing::UntilClose, true)));
        // Both: the coding frames the body, and the connection is not reused.
        assert_eq!(
            ok("transfer-encoding: chunked\r\ncontent-length: 5\r\n"),
            Ok((Framing::ChunkSize, true))
        );
        assert_eq!(ok("content-length: 5\r\ncontent-length: 6\r\n"), Err(()));
        assert_eq!(ok("content-length: +5\r\n"), Err(()), "digits only");
        assert_eq!(ok("content-length: \r\n"), Err(()));
        assert_eq!(
            ok("connection: keep-alive, close\r\ncontent-length: 0\r\n"),
            Ok((Framing::Length(0), true))
        );
        let old = |headers: &str| framing_of(&format!("HTTP/1.0 200 OK\r\n{headers}\r\n"), false);
        assert_eq!(old("content-length: 1\r\n"), Ok((Framing::Length(1), true)));
        assert_eq!(
            old("connection: keep-alive\r\ncontent-length: 1\r\n"),
            Ok((Framing::Length(1), false))
        );
        assert_eq!(
            old("connection: close, keep-alive\r\ncontent-length: 1\r\n"),
            Ok((Framing::Length(1), true))
        );
        assert_eq!(
            old("connection: keep-alive\r\ntransfer-encoding: chunked\r\n"),
            Ok((Framing::ChunkSize, true))
        );
        // No body, whatever the headers say.
        assert_eq!(
            framing_of("HTTP/1.1 200 OK\r\ncontent-length: 9\r\n\r\n", true),
            Ok((Framing::Length(0), false))
        );
        assert_eq!(
            framing_of("HTTP/1.1 304 Not Modified\r\ncontent-length: 9\r\n\r\n", false),
            Ok((Framing::Length(0), false))
        );
    }

    #[test]
    fn content_lengths_are_plain_decimals() {
        assert_eq!(decimal(b"0"), Some(0));
        assert_eq!(decimal(b"18446744073709551615"), Some(u64::MAX));
        assert_eq!(decimal(b"18446744073709551616"), None, "overflow");
        for bad in [&b""[..], b"+5", b"-1", b"5 5", b"0x10", b"1e3"] {
            assert_eq!(decimal(bad), None, "{}", String::from_utf8_lossy(bad));
        }
    }

    #[test]
    fn lengths_and_bad_chunks() {
        assert_eq!(decode(Framing::Length(3), b"abc", 2), Ok((b"abc".to_vec(), None)));
        assert_eq!(decode(Framing::Length(0), b"", 1), Ok((Vec::new(), None)));
        assert!(decode(Framing::ChunkSize, b"zz\r\n", 1).is_err(), "not hex");
        assert!(
            decode(Framing::ChunkSize, b"2\r\nokXX0\r\n\r\n", 1).is_err(),
            "no CRLF after data"
        );
        assert!(decode(Framing::ChunkSize, b"2\r\nok\r\n", 1).is_err(), "ends early");
        let mut framing = Framing::ChunkSize;
        let mut long = BytesMut::from(&[b'1'; MAX_CHUNK_LINE][..]);
        assert!(matches!(framing.step(&mut long), Step::Invalid), "endless size line");
        // Lines another reader would end elsewhere: no digit (taken as 0 by httparse), or a bare
        // LF inside an extension.
        for bad in [&b"\r\nrest"[..], b";x\r\n\r\n", b"6;\nzz\r\nab\r\n0\r\n\r\n"] {
            assert!(
                matches!(Framing::ChunkSize.step(&mut BytesMut::from(bad)), Step::Invalid),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn chunk_extensions_are_counted() {
        let (mut framing, mut extensions) = (Framing::ChunkSize, 0);
        let mut wire = BytesMut::from(&b"2;a=b\r\nok\r\n2\r\nok\r\n0;last\r\n\r\n"[..]);
        while !matches!(framing.step_counting(&mut wire, &mut extensions), Step::End(_)) {}
        assert_eq!(extensions, ";a=b".len() + ";last".len());
    }
}
