//! Who may do what: client tokens with rights per namespace (`docs/security.md`).
//!
//! A node with a token file (`--token-file`) serves only callers that present one of its
//! tokens (or, on the Nacos front end, log in as one of its users), and each of them only in the
//! namespaces its entry names. A node without one serves everyone, as before.
//!
//! - [`Principal`]: the caller of a request as the request API sees it — anyone (no token file),
//!   anonymous (nothing presented, or refused), or the grant of one token or user; its rights
//!   ([`Rights`]: a read and a write [`Scope`] of namespaces).
//! - [`file`]: the token file's format (TOML): token entries (a SHA-256 of the token, never the
//!   token), user entries (an argon2id password hash), their checks, and minting new entries.
//! - [`tokens`]: [`Tokens`], a node's live token set: presenting a token (hashed once, compared
//!   in constant time with every entry), logging in, reloading the file (SIGHUP), and
//!   re-resolving a connection's grant after a reload.
//! - [`access`]: the Nacos accessToken a login answers — self-contained and HMAC-signed with a
//!   key derived from the cluster token, so that every node of the cluster accepts it.
//!
//! The request API decides, in one place, whether a principal may do a request
//! (the request API's `authorize`); front ends only find out who the caller is.

pub mod access;
pub mod file;
pub mod tokens;

use std::fmt;
use std::sync::Arc;

use crate::model::Text;

pub use file::{TokenFileError, TokenSet};
pub use tokens::Tokens;

/// What a request does to a namespace. Write implies read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Query, list, subscribe.
    Read,
    /// Register, deregister, beat.
    Write,
}

impl fmt::Display for Access {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Access::Read => "read",
            Access::Write => "write",
        })
    }
}

/// A set of namespaces: every namespace, or the ones listed (none, if the list is empty).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Scope {
    All,
    Only(Vec<Text>),
}

impl Scope {
    pub fn none() -> Scope {
        Scope::Only(Vec::new())
    }

    pub fn contains(&self, namespace: &str) -> bool {
        match self {
            Scope::All => true,
            // Entries name a few namespaces; a scan beats hashing here.
            Scope::Only(list) => list.iter().any(|n| n.as_str() == namespace),
        }
    }

    pub fn is_empty(&self) -> bool {
        matches!(self, Scope::Only(l) if l.is_empty())
    }
}

/// What one token or user may do: read the namespaces of `read`, read and write those of
/// `write`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rights {
    pub read: Scope,
    pub write: Scope,
}

impl Rights {
    /// Every right on every namespace.
    pub fn all() -> Rights {
        Rights {
            read: Scope::All,
            write: Scope::All,
        }
    }

    pub fn allows(&self, access: Access, namespace: &str) -> bool {
        match access {
            Access::Write => self.write.contains(namespace),
            Access::Read => self.write.contains(namespace) || self.read.contains(namespace),
        }
    }
}

/// Which entry of the token file a grant came from, so that a reload can find it again (or
/// find that it is gone) without the token or password, which the node never keeps.
#[derive(Clone, PartialEq, Eq)]
pub(crate) enum EntryId {
    /// The SHA-256 of the token.
    Token([u8; 32]),
    /// A user, and its password hash as the file has it: a changed password is a new entry,
    /// so that a reload that changes a password ends the sessions the old one opened.
    User {
        username: Text,
        password_hash: String,
    },
}

/// The entry a caller proved to hold: its name (for logs) and its rights.
pub struct Grant {
    /// The token's `name` or the user's `username`.
    pub name: Text,
    pub rights: Rights,
    pub(crate) id: EntryId,
}

impl fmt::Debug for Grant {
    // Not the digest or the password hash: a grant may end up in a log line.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Grant")
            .field("name", &self.name)
            .field("rights", &self.rights)
            .finish_non_exhaustive()
    }
}

/// The caller of a request: what the request API checks every request's rights against.
#[derive(Debug, Clone)]
pub struct Principal(Caller);

#[derive(Debug, Clone)]
enum Caller {
    /// A node without a token file: everyone may do everything.
    Anyone,
    /// A node with a token file, and the caller presented nothing valid: it may do nothing.
    Anonymous,
    /// The grant of a token or user, as resolved against the token set of `generation`.
    Granted { grant: Arc<Grant>, generation: u64 },
}

impl Principal {
    /// The caller of a node without a token file: all rights everywhere.
    pub fn anyone() -> Principal {
        Principal(Caller::Anyone)
    }

    /// A caller of a node with a token file that has not proved who it is: no rights.
    pub fn anonymous() -> Principal {
        Principal(Caller::Anonymous)
    }

    pub(crate) fn granted(grant: Arc<Grant>, generation: u64) -> Principal {
        Principal(Caller::Granted { grant, generation })
    }

    /// Whether the caller proved who it is (or needs not: no token file).
    pub fn is_authenticated(&self) -> bool {
        !matches!(self.0, Caller::Anonymous)
    }

    /// Whether the caller may do `access` to `namespace`.
    pub fn may(&self, access: Access, namespace: &str) -> bool {
        match &self.0 {
            Caller::Anyone => true,
            Caller::Anonymous => false,
            Caller::Granted { grant, .. } => grant.rights.allows(access, namespace),
        }
    }

    /// The grant behind this principal, if it came from a token or user.
    pub fn grant(&self) -> Option<&Arc<Grant>> {
        match &self.0 {
            Caller::Granted { grant, .. } => Some(grant),
            _ => None,
        }
    }

    /// For log lines: the entry's name, or what kind of caller this is.
    pub fn name(&self) -> &str {
        match &self.0 {
            Caller::Anyone => "anyone",
            Caller::Anonymous => "anonymous",
            Caller::Granted { grant, .. } => grant.name.as_str(),
        }
    }

    /// The token set generation this grant was resolved against (none for the others).
    pub(crate) fn generation(&self) -> Option<u64> {
        match &self.0 {
            Caller::Granted { generation, .. } => Some(*generation),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn only(names: &[&str]) -> Scope {
        Scope::Only(names.iter().map(|n| Text::from(*n)).collect())
    }

    #[test]
    fn write_implies_read_and_scopes_hold_what_they_list() {
        let r = Rights {
            read: only(&["shared"]),
            write: only(&["orders"]),
        };
        assert!(r.allows(Access::Write, "orders"));
        assert!(r.allows(Access::Read, "orders"));
        assert!(r.allows(Access::Read, "shared"));
        assert!(!r.allows(Access::Write, "shared"));
        assert!(!r.allows(Access::Read, "other"));
        assert!(!r.allows(Access::Read, "order"), "names match whole");
        let readers = Rights {
            read: Scope::All,
            write: Scope::none(),
        };
        assert!(readers.allows(Access::Read, "anything"));
        assert!(!readers.allows(Access::Write, "anything"));
        assert!(Rights::all().allows(Access::Write, "x"));
    }

    #[test]
    fn anyone_may_everything_anonymous_nothing() {
        assert!(Principal::anyone().may(Access::Write, "x"));
        assert!(Principal::anyone().is_authenticated());
        assert!(!Principal::anonymous().may(Access::Read, "x"));
        assert!(!Principal::anonymous().is_authenticated());
        let g = Arc::new(Grant {
            name: "ci".into(),
            rights: Rights {
                read: only(&["a"]),
                write: Scope::none(),
            },
            id: EntryId::Token([0; 32]),
        });
        let p = Principal::granted(g, 1);
        assert!(p.is_authenticated());
        assert!(p.may(Access::Read, "a"));
        assert!(!p.may(Access::Write, "a"));
        assert_eq!(p.name(), "ci");
        assert!(!format!("{p:?}").contains("Token("), "{p:?}");
    }
}
