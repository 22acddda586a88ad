//! A node's live token set: presenting a token, logging in, reloading the file.
//!
//! A presented token is hashed once (SHA-256) and its digest compared with **every** token
//! entry in constant time, with no early exit: how long a refusal takes does not depend on
//! whether, or where, a similar token exists. The connection then keeps the resolved grant, so
//! its requests cost no hashing at all; a reload bumps a generation counter, and a connection
//! whose grant is of an older generation looks its entry up again by digest (no hashing either)
//! on its next request — and finds it changed, or gone.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock, RwLock};

use argon2::password_hash::{PasswordHash, PasswordVerifier};
use subtle::{ConditionallySelectable, ConstantTimeEq};
use tracing::{error, warn};

use super::file::{PASSWORD_LEN_MAX, TokenFileError, TokenSet, hash_password, token_digest};
use super::{EntryId, Principal};

/// The token set of a node: off (no token file: everyone may do everything), or the entries of
/// its file, replaced whole by a reload.
pub struct Tokens {
    /// The file reloads read; `None` for a node without one, or a set given in memory.
    path: Option<PathBuf>,
    /// `None`: tokens are off.
    set: RwLock<Option<Arc<TokenSet>>>,
    /// Bumped by every reload, so that connections notice their grant may have changed.
    generation: AtomicU64,
}

/// What a reload installed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Loaded {
    pub tokens: usize,
    pub users: usize,
}

impl Tokens {
    /// No token file: every caller may do everything.
    pub fn off() -> Tokens {
        Tokens {
            path: None,
            set: RwLock::new(None),
            generation: AtomicU64::new(1),
        }
    }

    /// The tokens of `set`, kept in memory (tests, the fuzz targets); a reload has no file.
    pub fn with_set(set: TokenSet) -> Tokens {
        Tokens {
            path: None,
            set: RwLock::new(Some(Arc::new(set))),
            generation: AtomicU64::new(1),
        }
    }

    /// The tokens of the file at `path`. A file that cannot be read or is not valid leaves the
    /// node with no entries — it refuses every caller — and says so in the log: a node told to
    /// require tokens never serves without them. (`distrod` checks the file before it starts,
    /// so this happens only if the file went bad in between; a reload can repair it.)
    pub fn from_file(path: &Path) -> Tokens {
        let set = match TokenSet::load(path) {
            Ok(set) => set,
            Err(e) => {
                error!(error = %e, "token file not loaded; refusing every client until a reload succeeds");
                TokenSet::default()
            }
        };
        warn_if_readable_by_others(path);
        Tokens {
            path: Some(path.to_path_buf()),
            set: RwLock::new(Some(Arc::new(set))),
            generation: AtomicU64::new(1),
        }
    }

    /// Whether callers must present a token.
    pub fn is_on(&self) -> bool {
        self.set.read().unwrap().is_some()
    }

    /// The file reloads read, if there is one.
    pub fn path(&self) -> Option<&Path> {
        self.path.as_deref()
    }

    fn current(&self) -> Option<Arc<TokenSet>> {
        self.set.read().unwrap().clone()
    }

    /// Reads the token file again and, if it is valid, puts it in force; an invalid file
    /// changes nothing (the error says why, the old entries stay).
    pub fn reload(&self) -> Result<Loaded, TokenFileError> {
        let Some(path) = &self.path else {
            return Err(TokenFileError::Read {
                path: "(none)".into(),
                source: std::io::Error::new(
                    std::io::ErrorKind::NotFound,
                    "this node was started without a token file",
                ),
            });
        };
        let set = TokenSet::load(path)?;
        warn_if_readable_by_others(path);
        Ok(self.install(set))
    }

    /// Puts `set` in force (tokens on from now, if they were off).
    pub fn install(&self, set: TokenSet) -> Loaded {
        let loaded = Loaded {
            tokens: set.token_count(),
            users: set.user_count(),
        };
        *self.set.write().unwrap() = Some(Arc::new(set));
        self.generation.fetch_add(1, Ordering::AcqRel);
        loaded
    }

    /// The principal of a caller that presented nothing: anyone without a token file,
    /// anonymous with one.
    pub fn guest(&self) -> Principal {
        if self.is_on() {
            Principal::anonymous()
        } else {
            Principal::anyone()
        }
    }

    /// The principal a presented token stands for; `None` if no entry holds it. Without a
    /// token file every token is accepted as anyone (clients can be given tokens before the
    /// nodes require them).
    pub fn authenticate(&self, token: &str) -> Option<Principal> {
        // Read before the set: a reload in between leaves this grant one generation behind,
        // which only makes the connection look it up once more.
        let generation = self.generation.load(Ordering::Acquire);
        let set = match self.current() {
            None => return Some(Principal::anyone()),
            Some(set) => set,
        };
        let digest = token_digest(token);
        let i = find_token(&set, &digest)?;
        Some(Principal::granted(set.tokens[i].grant.clone(), generation))
    }

    /// The principal of a Nacos user who gives `password`; `None` if the username is unknown
    /// or the password wrong (the same answer, and about the same time: an unknown username is
    /// checked against a stand-in hash). Slow on purpose (argon2id, tens of ms): call it where
    /// blocking is allowed (`tokio::task::spawn_blocking`).
    pub fn login(&self, username: &str, password: &str) -> Option<Principal> {
        let generation = self.generation.load(Ordering::Acquire);
        let set = match self.current() {
            None => return Some(Principal::anyone()),
            Some(set) => set,
        };
        if password.len() > PASSWORD_LEN_MAX {
            return None;
        }
        let user = set.users.iter().find(|u| u.username.as_str() == username);
        let phc = match user {
            Some(u) => u.password_hash.as_str(),
            None => stand_in_hash(),
        };
        let ok = PasswordHash::new(phc).is_ok_and(|h| {
            argon2::Argon2::default()
                .verify_password(password.as_bytes(), &h)
                .is_ok()
        });
        match user {
            Some(u) if ok => Some(Principal::granted(u.grant.clone(), generation)),
            _ => None,
        }
    }

    /// The entry of user `username` in the set in force: its grant, its password hash and the
    /// set's generation (what an accessToken is checked against, `super::access`). `None` for
    /// an unknown user, and without a token file.
    pub(crate) fn user(&self, username: &str) -> Option<(Arc<super::Grant>, String, u64)> {
        let generation = self.generation.load(Ordering::Acquire);
        let set = self.current()?;
        let u = set.users.iter().find(|u| u.username.as_str() == username)?;
        Some((u.grant.clone(), u.password_hash.clone(), generation))
    }

    /// After a reload: the principal that `p` is now (its entry's new rights, or anonymous if
    /// the entry is gone); `None` if nothing was reloaded since `p` was resolved, or `p` is
    /// not a grant. One atomic load when nothing changed; no hashing ever.
    pub fn refresh(&self, p: &Principal) -> Option<Principal> {
        let old = p.generation()?;
        let generation = self.generation.load(Ordering::Acquire);
        if old == generation {
            return None;
        }
        let Some(set) = self.current() else {
            return Some(Principal::anyone());
        };
        let grant = match &p.grant()?.id {
            EntryId::Token(digest) => find_token(&set, digest).map(|i| set.tokens[i].grant.clone()),
            EntryId::User {
                username,
                password_hash,
            } => set
                .users
                .iter()
                .find(|u| u.username == *username && u.password_hash == *password_hash)
                .map(|u| u.grant.clone()),
        };
        Some(match grant {
            Some(g) => Principal::granted(g, generation),
            None => Principal::anonymous(),
        })
    }
}

/// The index of the token entry whose digest is `digest`: every entry is compared, in
/// constant time, and the index kept without a branch.
fn find_token(set: &TokenSet, digest: &[u8; 32]) -> Option<usize> {
    let mut found = subtle::Choice::from(0);
    let mut index = 0u32;
    for (i, e) in set.tokens.iter().enumerate() {
        let hit = e.digest.ct_eq(digest);
        index.conditional_assign(&(i as u32), hit);
        found |= hit;
    }
    bool::from(found).then_some(index as usize)
}

/// An argon2id hash of a random password, with the parameters `user_entry` writes: what an
/// unknown username's login is checked against, so that it takes as long as a known one's.
fn stand_in_hash() -> &'static str {
    static HASH: OnceLock<String> = OnceLock::new();
    HASH.get_or_init(|| {
        hash_password(&super::file::mint_token()).expect("a minted token is a valid password")
    })
}

/// The file holds password hashes (which can be attacked offline) and decides who gets in:
/// say so if others may read it.
fn warn_if_readable_by_others(path: &Path) {
    use std::os::unix::fs::PermissionsExt;
    if let Ok(m) = std::fs::metadata(path)
        && m.permissions().mode() & 0o077 != 0
    {
        warn!(
            path = %path.display(),
            mode = format!("{:o}", m.permissions().mode() & 0o777),
            "the token file may be read or written by other users; chmod 600 it"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::super::Access;
    use super::super::file::{token_entry, user_entry};
    use super::*;

    fn s(v: &[&str]) -> Vec<String> {
        v.iter().map(|x| x.to_string()).collect()
    }

    fn set(text: &str) -> TokenSet {
        TokenSet::parse(text, "t").unwrap()
    }

    #[test]
    fn a_token_resolves_to_its_entry_and_anything_else_to_nothing() {
        let (a, b) = ("distro_a", "distro_b");
        let text = token_entry("a", a, &[], &s(&["orders"])).unwrap()
            + &token_entry("b", b, &s(&["*"]), &[]).unwrap();
        let tokens = Tokens::with_set(set(&text));
        assert!(tokens.is_on());
        let pa = tokens.authenticate(a).expect("a is known");
        assert_eq!(pa.name(), "a");
        assert!(pa.may(Access::Write, "orders"));
        assert!(!pa.may(Access::Read, "other"));
        let pb = tokens.authenticate(b).expect("b is known");
        assert_eq!(pb.name(), "b");
        assert!(pb.may(Access::Read, "other") && !pb.may(Access::Write, "other"));
        for wrong in ["", "distro_", "distro_c", "distro_a ", "DISTRO_A"] {
            assert!(tokens.authenticate(wrong).is_none(), "{wrong:?}");
        }
        assert!(!tokens.guest().is_authenticated());
    }

    #[test]
    fn without_a_file_everyone_is_anyone() {
        let tokens = Tokens::off();
        assert!(!tokens.is_on());
        assert!(tokens.guest().may(Access::Write, "x"));
        assert!(
            tokens
                .authenticate("whatever")
                .unwrap()
                .may(Access::Write, "x")
        );
        assert!(tokens.reload().is_err(), "nothing to reload from");
    }

    #[test]
    fn a_reload_changes_rights_of_resolved_grants_and_revokes_removed_ones() {
        let tokens = Tokens::with_set(set(&(token_entry("a", "ta", &s(&["x"]), &[]).unwrap()
            + &token_entry("b", "tb", &s(&["x"]), &[]).unwrap())));
        let pa = tokens.authenticate("ta").unwrap();
        let pb = tokens.authenticate("tb").unwrap();
        assert!(tokens.refresh(&pa).is_none(), "nothing reloaded yet");
        tokens.install(set(&token_entry("a", "ta", &[], &s(&["x", "y"])).unwrap()));
        let pa2 = tokens.refresh(&pa).expect("a reload happened");
        assert!(pa2.may(Access::Write, "y"), "a's new rights");
        assert!(
            tokens.refresh(&pa2).is_none(),
            "resolved against the new set"
        );
        let pb2 = tokens.refresh(&pb).expect("a reload happened");
        assert!(!pb2.is_authenticated(), "b was removed");
        assert!(tokens.refresh(&Principal::anyone()).is_none());
        assert!(tokens.refresh(&Principal::anonymous()).is_none());
    }

    #[test]
    fn a_reload_from_a_bad_file_keeps_the_old_set() {
        let dir = std::env::temp_dir().join(format!("distro-tokens-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("tokens.toml");
        std::fs::write(&path, token_entry("a", "ta", &s(&["x"]), &[]).unwrap()).unwrap();
        let tokens = Tokens::from_file(&path);
        assert!(tokens.authenticate("ta").is_some());
        std::fs::write(&path, "[[token]]\nname = \"broken\"\n").unwrap();
        let e = tokens.reload().unwrap_err().to_string();
        assert!(e.contains("sha256"), "{e}");
        assert!(tokens.authenticate("ta").is_some(), "the old set stays");
        std::fs::write(&path, token_entry("b", "tb", &s(&["x"]), &[]).unwrap()).unwrap();
        assert_eq!(
            tokens.reload().unwrap(),
            Loaded {
                tokens: 1,
                users: 0
            }
        );
        assert!(tokens.authenticate("ta").is_none());
        assert!(tokens.authenticate("tb").is_some());
        std::fs::remove_file(&path).unwrap();
        assert!(tokens.reload().is_err(), "a missing file is an error too");
        assert!(tokens.authenticate("tb").is_some());
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_node_started_with_a_bad_file_refuses_everyone() {
        let path = std::env::temp_dir().join(format!("distro-no-such-{}.toml", std::process::id()));
        let tokens = Tokens::from_file(&path);
        assert!(tokens.is_on());
        assert!(tokens.authenticate("anything").is_none());
        assert!(!tokens.guest().is_authenticated());
    }

    #[test]
    fn login_checks_the_password_and_answers_unknown_users_alike() {
        let tokens = Tokens::with_set(set(&user_entry(
            "nacos",
            "right horse battery",
            &s(&["public"]),
            &[],
        )
        .unwrap()));
        let p = tokens
            .login("nacos", "right horse battery")
            .expect("logs in");
        assert_eq!(p.name(), "nacos");
        assert!(p.may(Access::Read, "public") && !p.may(Access::Write, "public"));
        assert!(tokens.login("nacos", "wrong").is_none());
        assert!(tokens.login("nobody", "right horse battery").is_none());
        assert!(
            tokens.authenticate("right horse battery").is_none(),
            "not a token"
        );
    }
}
