//! Nacos accessTokens: what a Nacos login answers, and what Nacos clients then send with every
//! request (`docs/security.md` §4.1).
//!
//! An accessToken is self-contained, so that every node of a cluster accepts the tokens any
//! other node minted (a client fails over without logging in again) and a restart logs nobody
//! out:
//!
//! ```text
//! dn1.<username, hex>.<expiry, ms since the epoch>.<HMAC-SHA256, hex>
//! ```
//!
//! The HMAC covers the version, the username, the expiry **and the user entry's password
//! hash**, under a key derived from the cluster token (`HMAC(cluster_token,
//! "distro-nacos-access-token")`; a node without a cluster token draws a random key at start,
//! and its tokens are good on that node only, until it restarts). A password changed in the
//! token file therefore invalidates the user's tokens at once, and a removed user's tokens
//! resolve to nothing. Verifying one costs an HMAC and a constant-time comparison — no argon2;
//! the rights are those of the user's entry in the token set in force, so a reload applies.

use hmac::{Hmac, Mac};
use sha2::Sha256;
use subtle::ConstantTimeEq;

use super::{EntryId, Principal, Tokens};

/// How long an accessToken is good for, in seconds: Nacos's default `tokenTtl` (5 hours). The
/// clients refresh theirs well before (the Rust client at a tenth of it, Python 10 s before).
pub const ACCESS_TOKEN_TTL_S: u64 = 18_000;

/// The longest accessToken read: a minted one is 4 + 2×username + 14 + 64 bytes, with usernames
/// of up to `ENTRY_NAME_LEN_MAX` (255) bytes. Bounds what a stranger makes the node parse.
pub const ACCESS_TOKEN_LEN_MAX: usize = 1024;

/// The version tag every token starts with (a later format gets another).
const VERSION: &str = "dn1";

/// The label the signing key is derived under (so that the key is not the cluster token, and
/// is used for nothing else).
const KEY_LABEL: &[u8] = b"distro-nacos-access-token";

type HmacSha256 = Hmac<Sha256>;

/// The signing key of a node's accessTokens.
pub struct AccessKey([u8; 32]);

impl std::fmt::Debug for AccessKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AccessKey(..)")
    }
}

/// A verified accessToken: who it stands for, and until when (ms since the epoch).
#[derive(Debug, Clone)]
pub struct Access {
    pub principal: Principal,
    pub expires_ms: u64,
}

impl AccessKey {
    /// The key of a cluster whose peers share `cluster_token`; a random one without it.
    pub fn new(cluster_token: Option<&str>) -> AccessKey {
        match cluster_token {
            Some(t) => {
                let mut mac =
                    HmacSha256::new_from_slice(t.as_bytes()).expect("HMAC takes any key length");
                mac.update(KEY_LABEL);
                AccessKey(mac.finalize().into_bytes().into())
            }
            None => {
                let mut k = [0u8; 32];
                getrandom::fill(&mut k).expect("the operating system's random source");
                AccessKey(k)
            }
        }
    }

    fn mac(&self, username: &str, expires_ms: u64, password_hash: &str) -> [u8; 32] {
        let mut mac = HmacSha256::new_from_slice(&self.0).expect("HMAC takes any key length");
        // Each field is length-prefixed: no two different triples sign the same bytes.
        for field in [
            VERSION.as_bytes(),
            username.as_bytes(),
            expires_ms.to_string().as_bytes(),
            password_hash.as_bytes(),
        ] {
            mac.update(&(field.len() as u64).to_be_bytes());
            mac.update(field);
        }
        mac.finalize().into_bytes().into()
    }

    /// The accessToken of `username`, who just logged in as `principal`, good until
    /// `expires_ms`. The password hash signed is that of the user's entry (none without a token
    /// file, where any login is accepted and tokens are not checked).
    pub fn mint(&self, principal: &Principal, username: &str, expires_ms: u64) -> String {
        let hash = match principal.grant().map(|g| &g.id) {
            Some(EntryId::User { password_hash, .. }) => password_hash.as_str(),
            _ => "",
        };
        let mac = self.mac(username, expires_ms, hash);
        format!(
            "{VERSION}.{}.{expires_ms}.{}",
            hex(username.as_bytes()),
            hex(&mac)
        )
    }

    /// Who `token` stands for, if it is a token this key signed for a user that `tokens` holds
    /// now with the same password, and it has not expired at `now_ms`. `None` otherwise — the
    /// same answer whether the user exists or not, after about the same work (an unknown user's
    /// token is checked against a stand-in hash).
    pub fn verify(&self, tokens: &Tokens, token: &str, now_ms: u64) -> Option<Access> {
        if token.len() > ACCESS_TOKEN_LEN_MAX {
            return None;
        }
        let mut parts = token.split('.');
        let (Some(VERSION), Some(user), Some(expiry), Some(mac), None) = (
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
        ) else {
            return None;
        };
        let username = String::from_utf8(unhex(user)?).ok()?;
        let expires_ms: u64 = expiry.parse().ok()?;
        // Only the canonical form: one token, one spelling.
        if expires_ms.to_string() != expiry {
            return None;
        }
        let given: [u8; 32] = unhex(mac)?.try_into().ok()?;
        let user = tokens.user(&username);
        let hash = match &user {
            Some((_, hash, _)) => hash.as_str(),
            None => "unknown user: no password hash is this",
        };
        let ok: bool = self.mac(&username, expires_ms, hash).ct_eq(&given).into();
        let (grant, _, generation) = user?;
        (ok && now_ms < expires_ms).then(|| Access {
            principal: Principal::granted(grant, generation),
            expires_ms,
        })
    }
}

fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(s, "{b:02x}");
    }
    s
}

fn unhex(text: &str) -> Option<Vec<u8>> {
    if text.len() % 2 != 0 {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|i| {
            let pair = text.get(i..i + 2)?;
            // Lowercase only, as minted: one token, one spelling.
            if !pair.bytes().all(|c| matches!(c, b'0'..=b'9' | b'a'..=b'f')) {
                return None;
            }
            u8::from_str_radix(pair, 16).ok()
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::super::Access as Right;
    use super::super::TokenSet;
    use super::super::file::user_entry;
    use super::*;

    fn s(v: &[&str]) -> Vec<String> {
        v.iter().map(|x| x.to_string()).collect()
    }

    fn tokens(entries: &[(&str, &str, &[&str])]) -> Tokens {
        let text: String = entries
            .iter()
            .map(|(u, p, w)| user_entry(u, p, &[], &s(w)).unwrap())
            .collect();
        Tokens::with_set(TokenSet::parse(&text, "t").unwrap())
    }

    const NOW: u64 = 1_800_000_000_000;

    #[test]
    fn a_minted_token_stands_for_its_user_until_it_expires() {
        let t = tokens(&[("nacos", "pw-one", &["public"])]);
        let key = AccessKey::new(Some("cluster-token"));
        let p = t.login("nacos", "pw-one").unwrap();
        let token = key.mint(&p, "nacos", NOW + 1000);
        let a = key.verify(&t, &token, NOW).expect("valid");
        assert_eq!(a.principal.name(), "nacos");
        assert!(a.principal.may(Right::Write, "public"));
        assert_eq!(a.expires_ms, NOW + 1000);
        assert!(key.verify(&t, &token, NOW + 1000).is_none(), "expired");
        // Another node of the cluster (same cluster token) accepts it; another cluster does not.
        assert!(
            AccessKey::new(Some("cluster-token"))
                .verify(&t, &token, NOW)
                .is_some()
        );
        assert!(
            AccessKey::new(Some("other"))
                .verify(&t, &token, NOW)
                .is_none()
        );
        assert!(AccessKey::new(None).verify(&t, &token, NOW).is_none());
    }

    #[test]
    fn forged_altered_and_orphaned_tokens_stand_for_nobody() {
        let t = tokens(&[("nacos", "pw-one", &["public"]), ("ops", "pw-two", &["*"])]);
        let key = AccessKey::new(Some("cluster-token"));
        let p = t.login("nacos", "pw-one").unwrap();
        let token = key.mint(&p, "nacos", NOW + 1000);
        let parts: Vec<&str> = token.split('.').collect();
        let longer = format!("{}.{}.{}.{}", parts[0], parts[1], NOW + 2000, parts[3]);
        let as_ops = format!("{}.{}.{}.{}", parts[0], hex(b"ops"), parts[2], parts[3]);
        let padded = format!("{}.{}.0{}.{}", parts[0], parts[1], parts[2], parts[3]);
        for bad in [
            "",
            "dn1",
            "dn1...",
            &longer,
            &as_ops,
            &padded,
            &format!("{token}."),
            &token.to_uppercase(),
            &"a".repeat(ACCESS_TOKEN_LEN_MAX + 1),
        ] {
            assert!(key.verify(&t, bad, NOW).is_none(), "{bad:?}");
        }
        // The password changes in the file: the old token goes with it.
        let changed = tokens(&[("nacos", "pw-new", &["public"])]);
        assert!(key.verify(&changed, &token, NOW).is_none());
        // The user is removed.
        let gone = tokens(&[("ops", "pw-two", &["*"])]);
        assert!(key.verify(&gone, &token, NOW).is_none());
    }

    proptest::proptest! {
        /// Whatever a stranger sends as a token (arbitrary text, or a real token with one byte
        /// changed), it stands for nobody, and reading it does not panic.
        #[test]
        fn nothing_but_a_minted_token_verifies(
            text in ".{0,200}",
            flip in 0usize..200,
            byte in proptest::num::u8::ANY,
        ) {
            // One user and token for every case (argon2 is slow on purpose).
            static FIXTURE: std::sync::OnceLock<(Tokens, String)> = std::sync::OnceLock::new();
            let key = AccessKey::new(Some("cluster-token"));
            let (t, minted) = FIXTURE.get_or_init(|| {
                let t = tokens(&[("nacos", "pw-one", &["public"])]);
                let p = t.login("nacos", "pw-one").unwrap();
                let minted = AccessKey::new(Some("cluster-token")).mint(&p, "nacos", NOW + 1000);
                (t, minted)
            });
            proptest::prop_assert!(key.verify(t, &text, NOW).is_none());
            proptest::prop_assert!(key.verify(t, minted, NOW).is_some());
            let mut token = minted.clone().into_bytes();
            let i = flip % token.len();
            if token[i] != byte {
                token[i] = byte;
                let altered = String::from_utf8_lossy(&token).into_owned();
                proptest::prop_assert!(key.verify(t, &altered, NOW).is_none());
            }
        }
    }
}
