//! Request path, step 3: sticky sessions. A cookie pins a client to the version it was given;
//! without one, a key (header or cookie) maps to a stable bucket so every replica agrees.
//!
//! The bucket of a key is `fmix64(fnv1a64(key)) % 10000`: FNV-1a over the key's bytes
//! (offset basis `0xcbf29ce484222325`, prime `0x100000001b3`), then MurmurHash3's 64-bit
//! finalizer (`h ^= h >> 33; h *= 0xff51afd7ed558ccd; h ^= h >> 33; h *= 0xc4ceb9fe1a85ec53;
//! h ^= h >> 33`) so that similar keys spread evenly. No seed: the same key gets the same bucket
//! in every process. Versions own contiguous bucket ranges in file order (see [`crate::split`]).

use http::header::{HeaderMap, HeaderValue};

use crate::config::KeySource;
use crate::rules::cookie_value;

/// Buckets a key falls into.
pub const BUCKETS: u32 = 10_000;

/// FNV-1a's 64-bit offset basis: the hash of no bytes.
pub(crate) const FNV_OFFSET_BASIS: u64 = 0xcbf2_9ce4_8422_2325;
const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;

/// The stable bucket of `key`, in `[0, BUCKETS)`.
pub fn bucket(key: &[u8]) -> u32 {
    (fmix64(fnv1a(FNV_OFFSET_BASIS, key)) % u64::from(BUCKETS)) as u32
}

/// FNV-1a over `bytes`, continuing from `hash` (so a prefix can be hashed once, ahead of time).
pub(crate) fn fnv1a(mut hash: u64, bytes: &[u8]) -> u64 {
    for &byte in bytes {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(FNV_PRIME);
    }
    hash
}

/// MurmurHash3's 64-bit finalizer: spreads similar inputs evenly.
pub(crate) fn fmix64(mut h: u64) -> u64 {
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    h ^ (h >> 33)
}

/// The bucketing key of a request, if it carries one.
pub fn key<'h>(source: &KeySource, headers: &'h HeaderMap) -> Option<&'h [u8]> {
    match source {
        KeySource::Header(name) => headers.get(name).map(HeaderValue::as_bytes).filter(|k| !k.is_empty()),
        KeySource::Cookie(name) => cookie_value(headers, name).map(str::as_bytes).filter(|k| !k.is_empty()),
    }
}

/// The `Set-Cookie` value that pins a client to `version`.
pub fn set_cookie(cookie: &str, version: &str, ttl: std::time::Duration) -> Option<HeaderValue> {
    let max_age = cookie::time::Duration::seconds(i64::try_from(ttl.as_secs()).unwrap_or(i64::MAX));
    let built = cookie::Cookie::build((cookie, version))
        .path("/")
        .http_only(true)
        .same_site(cookie::SameSite::Lax)
        .max_age(max_age)
        .build();
    HeaderValue::from_str(&built.to_string()).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_match_the_published_test_vectors() {
        // The same vectors are in docs/SPEC.md; they were computed by an independent Python
        // implementation of the algorithm, so another replica or language can check itself.
        let vectors = [
            ("", 4342),
            ("user-1", 5477),
            ("user-2", 2635),
            ("alice@example.com", 3736),
            ("customer-42", 9401),
        ];
        for (key, want) in vectors {
            assert_eq!(bucket(key.as_bytes()), want, "bucket({key:?})");
        }
    }

    #[test]
    fn buckets_spread_evenly() {
        let mut tenths = [0u32; 10];
        for i in 0..100_000 {
            tenths[(bucket(format!("user-{i}").as_bytes()) / 1000) as usize] += 1;
        }
        for count in tenths {
            assert!((9_500..=10_500).contains(&count), "uneven spread {tenths:?}");
        }
    }

    #[test]
    fn set_cookie_attributes() {
        let value = set_cookie("sluice-checkout", "canary", std::time::Duration::from_secs(3600)).expect("valid");
        let text = value.to_str().expect("ascii");
        for part in [
            "sluice-checkout=canary",
            "HttpOnly",
            "SameSite=Lax",
            "Path=/",
            "Max-Age=3600",
        ] {
            assert!(text.contains(part), "{text} lacks {part}");
        }
    }
}
