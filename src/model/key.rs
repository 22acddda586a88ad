//! The byte strings the protocol hashes, each written in exactly one place (wire-spec.md §10):
//!
//! - the **canonical key bytes** of an instance — its InstanceKey wire encoding: namespace,
//!   group, service, cluster and ip as `u16`-length strings, then the port — hashed into the
//!   **key hash** that picks digest buckets and identifies records between nodes; the service
//!   part alone picks the store shard ([`service_hash`]);
//! - the **owner key** `ip:port`, scored by rendezvous hashing (the `ownership` module).
//!
//! None of them truncates: a longer string than the limits allow (which validation refuses at
//! every front end) still hashes by all of its bytes, on the heap instead of the stack.

use bytes::BufMut;
use xxhash_rust::xxh3::{xxh3_64, xxh3_64_with_seed};

use super::instance::{InstanceKey, ServiceName};
use super::limits::{IP_LEN_MAX, NAME_LEN_MAX};

/// Canonical key bytes of a key within the limits fit this stack buffer.
const KEY_BYTES_INLINE: usize = 4 * (2 + NAME_LEN_MAX) + (2 + IP_LEN_MAX) + 2;
/// Owner keys of an ip within the limits fit this stack buffer (`:` and 5 digits).
const OWNER_KEY_INLINE: usize = IP_LEN_MAX + 6;

/// Appends a `u16`-length string. Lengths are bounded by validation (and by the wire decoder)
/// far below `u16::MAX`; a longer one is a bug of the caller.
pub fn put_str(out: &mut impl BufMut, s: &str) {
    debug_assert!(
        s.len() <= u16::MAX as usize,
        "string longer than u16 on encode"
    );
    out.put_u16(s.len() as u16);
    out.put_slice(s.as_bytes());
}

/// Appends the canonical bytes of the service part of a key: namespace, group, service.
pub fn put_service(out: &mut impl BufMut, name: &ServiceName) {
    put_str(out, &name.namespace);
    put_str(out, &name.group);
    put_str(out, &name.service);
}

/// Appends the canonical key bytes of (name, cluster, ip, port) — also the InstanceKey wire
/// encoding.
pub fn put_key(out: &mut impl BufMut, name: &ServiceName, cluster: &str, ip: &str, port: u16) {
    put_service(out, name);
    put_str(out, cluster);
    put_str(out, ip);
    out.put_u16(port);
}

/// Writes `len` bytes with `$write` (into `$w`, a `BufMut`) and applies `$f` to them: on the
/// stack when they fit `$inline`, else on the heap. Monomorphic on both paths (hot: every merged
/// record is hashed).
macro_rules! with_written {
    ($len:expr, $inline:expr, |$w:ident| $write:expr, $f:expr) => {{
        let len = $len;
        if len <= $inline {
            let mut buf = [0u8; $inline];
            {
                let mut $w = &mut buf[..];
                $write;
            }
            $f(&buf[..len])
        } else {
            let mut $w = Vec::with_capacity(len);
            $write;
            $f(&$w[..])
        }
    }};
}

/// Bytes of the canonical encoding of these strings (each with its `u16` length).
fn strs_len(parts: &[&str]) -> usize {
    parts.iter().map(|s| 2 + s.len()).sum()
}

/// xxh3-64 of the canonical key bytes: the key hash (wire-spec.md §10.1).
pub fn key_hash(name: &ServiceName, cluster: &str, ip: &str, port: u16) -> u64 {
    let len = strs_len(&[&name.namespace, &name.group, &name.service, cluster, ip]) + 2;
    with_written!(
        len,
        KEY_BYTES_INLINE,
        |w| put_key(&mut w, name, cluster, ip, port),
        xxh3_64
    )
}

/// xxh3-64 of the canonical bytes of the service part of a key (picks the store shard).
pub fn service_hash(name: &ServiceName) -> u64 {
    let len = strs_len(&[&name.namespace, &name.group, &name.service]);
    with_written!(
        len,
        KEY_BYTES_INLINE,
        |w| put_service(&mut w, name),
        xxh3_64
    )
}

impl InstanceKey {
    /// The key hash (wire-spec.md §10.1).
    pub fn hash(&self) -> u64 {
        key_hash(&self.service, &self.cluster, &self.ip, self.port)
    }
}

/// Appends the decimal digits of `port` (no leading zeros, "0" for 0).
fn put_port_digits(out: &mut impl BufMut, port: u16) {
    let mut digits = [0u8; 5];
    let mut n = port;
    let mut i = digits.len();
    loop {
        i -= 1;
        digits[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.put_slice(&digits[i..]);
}

/// The rendezvous score of `node` for the owner key `ip:port` (wire-spec.md §10.4).
pub fn owner_score(ip: &str, port: u16, node: u16) -> u64 {
    with_owner_key(ip, port, |k| xxh3_64_with_seed(k, node as u64))
}

/// Runs `f` on the owner key `ip:port` (UTF-8 ip, `:`, the port in decimal).
pub fn with_owner_key<R>(ip: &str, port: u16, f: impl FnOnce(&[u8]) -> R) -> R {
    let digits = match port {
        0..=9 => 1,
        10..=99 => 2,
        100..=999 => 3,
        1000..=9999 => 4,
        _ => 5,
    };
    with_written!(
        ip.len() + 1 + digits,
        OWNER_KEY_INLINE,
        |w| {
            w.put_slice(ip.as_bytes());
            w.put_u8(b':');
            put_port_digits(&mut w, port);
        },
        f
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn name() -> ServiceName {
        ServiceName::new("public", "DEFAULT_GROUP", "orders")
    }

    #[test]
    fn owner_key_is_ip_colon_port() {
        for (ip, port, want) in [
            ("10.0.0.1", 8080, &b"10.0.0.1:8080"[..]),
            ("h", 0, b"h:0"),
            ("::1", 65535, b"::1:65535"),
            ("a", 10, b"a:10"),
        ] {
            with_owner_key(ip, port, |k| assert_eq!(k, want));
        }
    }

    #[test]
    fn the_key_hash_is_xxh3_of_the_wire_encoding() {
        let mut out = Vec::new();
        put_key(&mut out, &name(), "DEFAULT", "10.0.0.1", 8080);
        assert_eq!(
            key_hash(&name(), "DEFAULT", "10.0.0.1", 8080),
            xxh3_64(&out)
        );
        // wire-spec.md §10.1's vector.
        assert_eq!(
            key_hash(&name(), "DEFAULT", "10.0.0.1", 8080),
            0xbf02a143fd3cdb8a
        );
    }

    #[test]
    fn nothing_is_truncated_past_the_limits() {
        // Two keys that differ only after byte 255 of the ip (or of a name) hash differently,
        // and the hash is still of the whole encoding.
        let long = "i".repeat(IP_LEN_MAX + 10);
        let (a, b) = (format!("{long}a"), format!("{long}b"));
        assert_ne!(key_hash(&name(), "c", &a, 1), key_hash(&name(), "c", &b, 1));
        let mut out = Vec::new();
        put_key(&mut out, &name(), "c", &a, 1);
        assert_eq!(key_hash(&name(), "c", &a, 1), xxh3_64(&out));
        assert_ne!(owner_score(&a, 1, 1), owner_score(&b, 1, 1));
        with_owner_key(&a, 1, |k| assert_eq!(k, format!("{a}:1").as_bytes()));
        let svc = "s".repeat(NAME_LEN_MAX * 3);
        let (x, y) = (
            ServiceName::new("public", "g", &format!("{svc}x")),
            ServiceName::new("public", "g", &format!("{svc}y")),
        );
        assert_ne!(service_hash(&x), service_hash(&y));
    }
}
