//! The token file (`--token-file`, TOML): who may connect, and what each may do.
//!
//! ```toml
//! [[token]]
//! name = "orders-service"     # for logs; unique
//! sha256 = "5e8c…"            # SHA-256 of the token, 64 hex digits: never the token itself
//! write = ["orders"]          # may register, deregister and beat here (and read)
//! read = ["*"]                # may query, list and subscribe here; "*" = every namespace
//!
//! [[user]]                    # a Nacos login (POST /nacos/v1/auth/login)
//! username = "nacos"
//! password_hash = "$argon2id$v=19$m=19456,t=2,p=1$…"   # PHC string; never the password
//! read = ["public"]
//! ```
//!
//! Why two hashes: a token is 256 random bits made by [`mint_token`], so nobody can guess it
//! from its hash, and a fast cryptographic hash (SHA-256) is enough — and cheap enough to run on
//! every connection. A password is chosen by a human and can be guessed from a fast hash by
//! trying likely passwords, so it gets a slow, salted, memory-hard one (argon2id).
//!
//! [`token_entry`] and [`user_entry`] make entries (`distroctl token new`, `distroctl token
//! user`), so that nobody hashes by hand.

use std::fmt::Write as _;
use std::path::Path;

use argon2::password_hash::{PasswordHash, PasswordHasher, SaltString};
use serde::Deserialize;
use sha2::{Digest, Sha256};
use thiserror::Error;

use super::{EntryId, Grant, Rights, Scope};
use crate::model::{NAME_LEN_MAX, Text};

/// Entries (tokens and users together) one file may hold. Every presentation of a token is
/// compared with every token entry (in constant time, so that the answer's timing says nothing
/// about which entries exist): the count bounds the cost of one presentation, ~4096 × 32-byte
/// comparisons, a few tens of µs. A deployment with more callers shares tokens per service.
pub const TOKEN_ENTRIES_MAX: usize = 4096;
/// Bytes of a token file: the entries above with room for comments, and no more read into
/// memory from a wrong path.
pub const TOKEN_FILE_BYTES_MAX: u64 = 4 << 20;
/// Bytes of an entry's name or a username (as long as a namespace name).
pub const ENTRY_NAME_LEN_MAX: usize = NAME_LEN_MAX;
/// Bytes of a password given to [`user_entry`] or a login: far above any passphrase, and it
/// bounds what one login makes the node hash.
pub const PASSWORD_LEN_MAX: usize = 1024;
/// Random bytes of a minted token (256 bits: beyond guessing, so SHA-256 suffices).
pub const TOKEN_RANDOM_BYTES: usize = 32;
/// What minted tokens start with, so that secret scanners and humans recognise one.
pub const TOKEN_PREFIX: &str = "distro_";
/// The only password hash algorithm a user entry may use.
const PASSWORD_ALGORITHM: &str = "argon2id";

#[derive(Debug, Error)]
pub enum TokenFileError {
    #[error("cannot read token file {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("token file {path} is {len} bytes, more than {max}")]
    TooLarge { path: String, len: u64, max: u64 },
    #[error("token file {path}: {message}")]
    Parse { path: String, message: String },
    #[error("token file {path}: {entry}: {reason}")]
    Invalid {
        path: String,
        entry: String,
        reason: String,
    },
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FileToml {
    #[serde(default)]
    token: Vec<TokenToml>,
    #[serde(default)]
    user: Vec<UserToml>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TokenToml {
    name: String,
    sha256: String,
    #[serde(default)]
    read: Vec<String>,
    #[serde(default)]
    write: Vec<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct UserToml {
    username: String,
    password_hash: String,
    #[serde(default)]
    read: Vec<String>,
    #[serde(default)]
    write: Vec<String>,
}

/// A token entry: the token's digest and what it grants.
#[derive(Debug)]
pub(crate) struct TokenEntry {
    pub(crate) digest: [u8; 32],
    pub(crate) grant: std::sync::Arc<Grant>,
}

/// A user entry: its password hash (a checked PHC string) and what it grants.
#[derive(Debug)]
pub(crate) struct UserEntry {
    pub(crate) username: Text,
    pub(crate) password_hash: String,
    pub(crate) grant: std::sync::Arc<Grant>,
}

/// The checked contents of a token file.
#[derive(Debug, Default)]
pub struct TokenSet {
    pub(crate) tokens: Vec<TokenEntry>,
    pub(crate) users: Vec<UserEntry>,
}

impl TokenSet {
    /// Reads and checks a token file.
    pub fn load(path: &Path) -> Result<TokenSet, TokenFileError> {
        let shown = path.display().to_string();
        let read_err = |source| TokenFileError::Read {
            path: shown.clone(),
            source,
        };
        let len = std::fs::metadata(path).map_err(read_err)?.len();
        if len > TOKEN_FILE_BYTES_MAX {
            return Err(TokenFileError::TooLarge {
                path: shown,
                len,
                max: TOKEN_FILE_BYTES_MAX,
            });
        }
        let text = std::fs::read_to_string(path).map_err(read_err)?;
        TokenSet::parse(&text, &shown)
    }

    /// Checks the text of a token file; `path` names it in error messages.
    pub fn parse(text: &str, path: &str) -> Result<TokenSet, TokenFileError> {
        let file: FileToml = toml::from_str(text).map_err(|e| TokenFileError::Parse {
            path: path.to_string(),
            message: e.to_string().trim().replace('\n', " "),
        })?;
        let invalid = |entry: String, reason: String| TokenFileError::Invalid {
            path: path.to_string(),
            entry,
            reason,
        };
        if file.token.len() + file.user.len() > TOKEN_ENTRIES_MAX {
            return Err(invalid(
                "the file".into(),
                format!(
                    "{} entries, more than {TOKEN_ENTRIES_MAX}",
                    file.token.len() + file.user.len()
                ),
            ));
        }
        let mut set = TokenSet::default();
        for (i, t) in file.token.into_iter().enumerate() {
            let at = format!("token entry {} ({:?})", i + 1, t.name);
            check_name(&t.name, "name").map_err(|r| invalid(at.clone(), r))?;
            let rights = rights(t.read, t.write).map_err(|r| invalid(at.clone(), r))?;
            let digest = parse_digest(&t.sha256).map_err(|r| invalid(at.clone(), r))?;
            if set.tokens.iter().any(|e| e.grant.name.as_str() == t.name) {
                return Err(invalid(at, "another token entry has this name".into()));
            }
            if set.tokens.iter().any(|e| e.digest == digest) {
                return Err(invalid(
                    at,
                    "another token entry has the same sha256 (the same token twice)".into(),
                ));
            }
            set.tokens.push(TokenEntry {
                digest,
                grant: std::sync::Arc::new(Grant {
                    name: t.name.into(),
                    rights,
                    id: EntryId::Token(digest),
                }),
            });
        }
        for (i, u) in file.user.into_iter().enumerate() {
            let at = format!("user entry {} ({:?})", i + 1, u.username);
            check_name(&u.username, "username").map_err(|r| invalid(at.clone(), r))?;
            let rights = rights(u.read, u.write).map_err(|r| invalid(at.clone(), r))?;
            check_password_hash(&u.password_hash).map_err(|r| invalid(at.clone(), r))?;
            if set.users.iter().any(|e| e.username.as_str() == u.username) {
                return Err(invalid(at, "another user entry has this username".into()));
            }
            let username = Text::from(u.username);
            set.users.push(UserEntry {
                username: username.clone(),
                password_hash: u.password_hash.clone(),
                grant: std::sync::Arc::new(Grant {
                    name: username.clone(),
                    rights,
                    id: EntryId::User {
                        username,
                        password_hash: u.password_hash,
                    },
                }),
            });
        }
        Ok(set)
    }

    /// Token entries.
    pub fn token_count(&self) -> usize {
        self.tokens.len()
    }

    /// User entries.
    pub fn user_count(&self) -> usize {
        self.users.len()
    }
}

/// Names of entries and users: present, within their length, printable.
fn check_name(name: &str, what: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err(format!("{what} must not be empty"));
    }
    if name.len() > ENTRY_NAME_LEN_MAX {
        return Err(format!(
            "{what} of {} bytes is longer than {ENTRY_NAME_LEN_MAX}",
            name.len()
        ));
    }
    if name.chars().any(char::is_control) {
        return Err(format!("{what} contains control characters"));
    }
    Ok(())
}

/// A list of namespaces: `["*"]` for all of them, else names as a namespace may be written.
fn scope(list: Vec<String>, what: &str) -> Result<Scope, String> {
    if list.iter().any(|n| n == "*") {
        if list.len() > 1 {
            return Err(format!(
                "{what}: \"*\" (every namespace) stands alone, without other names"
            ));
        }
        return Ok(Scope::All);
    }
    let mut names: Vec<Text> = Vec::with_capacity(list.len());
    for n in list {
        check_name(&n, &format!("{what}: namespace"))?;
        if !names.iter().any(|m| m.as_str() == n) {
            names.push(n.into());
        }
    }
    Ok(Scope::Only(names))
}

fn rights(read: Vec<String>, write: Vec<String>) -> Result<Rights, String> {
    let rights = Rights {
        read: scope(read, "read")?,
        write: scope(write, "write")?,
    };
    if rights.read.is_empty() && rights.write.is_empty() {
        return Err("grants nothing: give it read or write namespaces".into());
    }
    Ok(rights)
}

fn parse_digest(hex: &str) -> Result<[u8; 32], String> {
    let bad = || "sha256 must be 64 hex digits (the SHA-256 of the token)".to_string();
    if hex.len() != 64 || !hex.is_ascii() {
        return Err(bad());
    }
    let mut out = [0u8; 32];
    for (i, b) in out.iter_mut().enumerate() {
        *b = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).map_err(|_| bad())?;
    }
    Ok(out)
}

fn check_password_hash(phc: &str) -> Result<(), String> {
    let h =
        PasswordHash::new(phc).map_err(|e| format!("password_hash is not a PHC string ({e})"))?;
    if h.algorithm.as_str() != PASSWORD_ALGORITHM {
        return Err(format!(
            "password_hash uses {}; only {PASSWORD_ALGORITHM} is accepted",
            h.algorithm
        ));
    }
    if h.salt.is_none() || h.hash.is_none() {
        return Err("password_hash lacks its salt or hash".into());
    }
    Ok(())
}

/// The SHA-256 of a token, as the file and the node keep it.
pub fn token_digest(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

fn hex(bytes: &[u8]) -> String {
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(s, "{b:02x}");
    }
    s
}

/// A new token: [`TOKEN_PREFIX`] and 256 random bits in hex.
pub fn mint_token() -> String {
    let mut bytes = [0u8; TOKEN_RANDOM_BYTES];
    getrandom::fill(&mut bytes).expect("the operating system's random source");
    format!("{TOKEN_PREFIX}{}", hex(&bytes))
}

/// The argon2id hash of a password (OWASP's parameters: 19 MiB, 2 passes), as a PHC string.
pub fn hash_password(password: &str) -> Result<String, String> {
    if password.is_empty() || password.len() > PASSWORD_LEN_MAX {
        return Err(format!("a password must be 1..={PASSWORD_LEN_MAX} bytes"));
    }
    let mut salt = [0u8; 16];
    getrandom::fill(&mut salt).expect("the operating system's random source");
    let salt = SaltString::encode_b64(&salt).map_err(|e| e.to_string())?;
    argon2::Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| e.to_string())
}

/// A TOML basic string. Entry names have no control characters (checked before this).
fn toml_string(s: &str) -> String {
    format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\""))
}

fn toml_list(names: &[String]) -> String {
    let items: Vec<String> = names.iter().map(|n| toml_string(n)).collect();
    format!("[{}]", items.join(", "))
}

/// Appends the rights lines of an entry (only the non-empty lists).
fn rights_lines(out: &mut String, read: &[String], write: &[String]) {
    if !write.is_empty() {
        let _ = writeln!(out, "write = {}", toml_list(write));
    }
    if !read.is_empty() {
        let _ = writeln!(out, "read = {}", toml_list(read));
    }
}

/// Checks an entry as the node would read it (alone in a file): the tool refuses what the node
/// would refuse.
fn checked(entry: String) -> Result<String, TokenFileError> {
    TokenSet::parse(&entry, "(new entry)")?;
    Ok(entry)
}

/// The token file entry of `token` (its SHA-256, never the token), named `name`, with these
/// rights (`"*"` for every namespace).
pub fn token_entry(
    name: &str,
    token: &str,
    read: &[String],
    write: &[String],
) -> Result<String, TokenFileError> {
    let mut out = String::from("[[token]]\n");
    let _ = writeln!(out, "name = {}", toml_string(name));
    let _ = writeln!(out, "sha256 = \"{}\"", hex(&token_digest(token)));
    rights_lines(&mut out, read, write);
    checked(out)
}

/// The token file entry of a Nacos user: the argon2id hash of `password`, never the password.
pub fn user_entry(
    username: &str,
    password: &str,
    read: &[String],
    write: &[String],
) -> Result<String, TokenFileError> {
    let invalid = |reason| TokenFileError::Invalid {
        path: "(new entry)".into(),
        entry: format!("user {username:?}"),
        reason,
    };
    let phc = hash_password(password).map_err(invalid)?;
    let mut out = String::from("[[user]]\n");
    let _ = writeln!(out, "username = {}", toml_string(username));
    let _ = writeln!(out, "password_hash = {}", toml_string(&phc));
    rights_lines(&mut out, read, write);
    checked(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(v: &[&str]) -> Vec<String> {
        v.iter().map(|x| x.to_string()).collect()
    }

    #[test]
    fn a_minted_token_and_its_entry_parse_back_with_its_rights() {
        let token = mint_token();
        assert!(token.starts_with(TOKEN_PREFIX));
        assert_eq!(token.len(), TOKEN_PREFIX.len() + 2 * TOKEN_RANDOM_BYTES);
        assert_ne!(token, mint_token(), "tokens are random");
        let entry = token_entry("ci \"nightly\"", &token, &s(&["*"]), &s(&["orders"])).unwrap();
        assert!(!entry.contains(&token[TOKEN_PREFIX.len()..]), "{entry}");
        let set = TokenSet::parse(&entry, "t").unwrap();
        assert_eq!(set.token_count(), 1);
        let e = &set.tokens[0];
        assert_eq!(e.digest, token_digest(&token));
        assert_eq!(e.grant.name.as_str(), "ci \"nightly\"");
        assert_eq!(e.grant.rights.read, Scope::All);
        assert_eq!(e.grant.rights.write, Scope::Only(vec!["orders".into()]));
    }

    #[test]
    fn a_user_entry_holds_an_argon2id_hash_not_the_password() {
        let entry = user_entry("nacos", "s3cret pass", &s(&["public"]), &[]).unwrap();
        assert!(!entry.contains("s3cret"), "{entry}");
        assert!(entry.contains("$argon2id$"), "{entry}");
        let set = TokenSet::parse(&entry, "t").unwrap();
        assert_eq!(set.user_count(), 1);
        assert!(user_entry("nacos", "", &s(&["public"]), &[]).is_err());
    }

    #[test]
    fn bad_files_are_refused_naming_the_entry_and_the_reason() {
        let digest = hex(&token_digest("x"));
        let rows: Vec<(String, &str)> = vec![
            ("[[token]]\nname = \"a\"\n".into(), "sha256"),
            (
                format!("[[token]]\nname = \"a\"\nsha256 = \"{digest}\"\nread = [\"x\"]\nextra = 1\n"),
                "extra",
            ),
            (
                "[[token]]\nname = \"a\"\nsha256 = \"abc\"\nread = [\"x\"]\n".into(),
                "64 hex digits",
            ),
            (
                format!("[[token]]\nname = \"a\"\nsha256 = \"{}\"\nread = [\"x\"]\n", "zz".repeat(32)),
                "64 hex digits",
            ),
            (
                format!("[[token]]\nname = \"a\"\nsha256 = \"{digest}\"\n"),
                "grants nothing",
            ),
            (
                format!("[[token]]\nname = \"\"\nsha256 = \"{digest}\"\nread = [\"x\"]\n"),
                "name must not be empty",
            ),
            (
                format!("[[token]]\nname = \"a\"\nsha256 = \"{digest}\"\nread = [\"*\", \"x\"]\n"),
                "stands alone",
            ),
            (
                format!("[[token]]\nname = \"a\"\nsha256 = \"{digest}\"\nwrite = [\"\"]\n"),
                "namespace must not be empty",
            ),
            (
                format!(
                    "[[token]]\nname = \"a\"\nsha256 = \"{digest}\"\nread = [\"x\"]\n\
                     [[token]]\nname = \"a\"\nsha256 = \"{}\"\nread = [\"x\"]\n",
                    hex(&token_digest("y"))
                ),
                "has this name",
            ),
            (
                format!(
                    "[[token]]\nname = \"a\"\nsha256 = \"{digest}\"\nread = [\"x\"]\n\
                     [[token]]\nname = \"b\"\nsha256 = \"{digest}\"\nread = [\"x\"]\n"
                ),
                "same sha256",
            ),
            (
                "[[user]]\nusername = \"u\"\npassword_hash = \"plain\"\nread = [\"x\"]\n".into(),
                "PHC",
            ),
            (
                "[[user]]\nusername = \"u\"\npassword_hash = \"$pbkdf2-sha256$i=1000$c2FsdHNhbHQ$aGFzaGhhc2hoYXNoaGFzaA\"\nread = [\"x\"]\n"
                    .into(),
                "only argon2id",
            ),
            ("[token]\nname = 1\n".into(), "token file t"),
        ];
        for (text, want) in rows {
            let e = TokenSet::parse(&text, "t").unwrap_err().to_string();
            assert!(e.contains(want), "{text:?} gave {e:?}, wanted {want:?}");
        }
    }

    #[test]
    fn an_empty_file_is_a_valid_set_that_lets_no_one_in() {
        let set = TokenSet::parse("# nobody yet\n", "t").unwrap();
        assert_eq!(set.token_count() + set.user_count(), 0);
    }

    #[test]
    fn too_many_entries_are_refused() {
        let mut text = String::new();
        for i in 0..=TOKEN_ENTRIES_MAX {
            let _ = write!(
                text,
                "[[token]]\nname = \"t{i}\"\nsha256 = \"{}\"\nread = [\"x\"]\n",
                hex(&token_digest(&i.to_string()))
            );
        }
        let e = TokenSet::parse(&text, "t").unwrap_err().to_string();
        assert!(e.contains("more than 4096"), "{e}");
    }
}
