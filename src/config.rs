//! A node's settings: defaults, the TOML config file, and the checks that reject bad values
//! with a clear message before anything starts.
//!
//! Every key of [`Config`] can be set in the file (`distrod --config FILE`) and by the flag of
//! the same name with dashes; a flag wins over the file. `distrod.example.toml` lists every key
//! with its default and unit (a test keeps it complete). A file with an unknown key, a value of
//! the wrong type or out of range is refused with the key and its position (`FILE:LINE:COLUMN`).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::model::NodeId;

#[derive(Debug, Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    /// The file is not valid TOML.
    #[error("config file {path}:{line}:{column}: {message}")]
    Syntax {
        path: String,
        line: usize,
        column: usize,
        message: String,
    },
    /// A key of the file is unknown, or its value has the wrong type or is out of range.
    #[error("config file {path}:{line}:{column}: key `{key}`: {message}")]
    Key {
        path: String,
        line: usize,
        column: usize,
        key: String,
        message: String,
    },
    /// A setting (from a flag, or a combination of settings) the node cannot run with.
    #[error("invalid setting {key}: {reason}")]
    Invalid { key: &'static str, reason: String },
}

/// A member's peer address: `IP:PORT`, or `HOST:PORT` with a DNS name that is resolved at
/// every connect (so that a member whose IP changes, a restarted Kubernetes pod, is found
/// again). The list of these is the cluster's identity: every member must be given the same
/// list. An IP address is kept in its canonical form, so that `127.0.0.1:8859` is the same
/// member however it was written.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(into = "String")]
pub struct PeerAddr(String);

impl<'de> Deserialize<'de> for PeerAddr {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<PeerAddr, D::Error> {
        // A visitor (not `try_from`), so that the file's error points at the bad entry.
        struct Visitor;
        impl serde::de::Visitor<'_> for Visitor {
            type Value = PeerAddr;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a peer address, IP:PORT or HOST:PORT")
            }
            fn visit_str<E: serde::de::Error>(self, s: &str) -> Result<PeerAddr, E> {
                s.parse().map_err(E::custom)
            }
        }
        d.deserialize_str(Visitor)
    }
}

impl PeerAddr {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::str::FromStr for PeerAddr {
    type Err = String;

    fn from_str(s: &str) -> Result<PeerAddr, String> {
        if let Ok(a) = s.parse::<SocketAddr>() {
            return Ok(PeerAddr(a.to_string()));
        }
        let bad = |why: &str| Err(format!("expected IP:PORT or HOST:PORT, got {s:?}: {why}"));
        let Some((host, port)) = s.rsplit_once(':') else {
            return bad("no port");
        };
        match port.parse::<u16>() {
            Ok(p) if p > 0 => {}
            _ => return bad("the port must be 1..=65535"),
        }
        // A DNS name (RFC 1123): dot-separated labels of letters, digits and dashes.
        let label_ok = |l: &str| {
            !l.is_empty()
                && l.len() <= 63
                && !l.starts_with('-')
                && !l.ends_with('-')
                && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
        };
        if host.is_empty() || host.len() > 253 || !host.split('.').all(label_ok) {
            return bad("not an IP address nor a host name");
        }
        Ok(PeerAddr(s.to_ascii_lowercase()))
    }
}

impl TryFrom<String> for PeerAddr {
    type Error = String;

    fn try_from(s: String) -> Result<PeerAddr, String> {
        s.parse()
    }
}

impl From<PeerAddr> for String {
    fn from(a: PeerAddr) -> String {
        a.0
    }
}

impl From<SocketAddr> for PeerAddr {
    fn from(a: SocketAddr) -> PeerAddr {
        PeerAddr(a.to_string())
    }
}

impl std::fmt::Display for PeerAddr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// Bytes of a cluster name: a name, not a document.
pub const CLUSTER_NAME_LEN_MAX: usize = 128;

/// The Nacos gRPC port is the Nacos HTTP port (`nacos_listen`) plus this: every Nacos 2.x
/// client derives it so.
pub const NACOS_GRPC_PORT_OFFSET: u16 = 1000;

/// The first address listed more than once (addresses are canonical: `127.0.0.1:8859` is one
/// member however it was written).
fn first_duplicate(members: &[PeerAddr]) -> Option<&PeerAddr> {
    let mut seen = std::collections::HashSet::new();
    members.iter().find(|a| !seen.insert(*a))
}

/// How the node writes its log lines.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// One readable line per event.
    #[default]
    Text,
    /// One JSON object per line (for log shippers).
    Json,
}

impl std::str::FromStr for LogFormat {
    type Err = String;

    fn from_str(s: &str) -> Result<LogFormat, String> {
        match s {
            "text" => Ok(LogFormat::Text),
            "json" => Ok(LogFormat::Json),
            _ => Err(format!("expected text or json, got {s:?}")),
        }
    }
}

/// Every setting of a node. Field names are the TOML keys; the flags of `distrod` use the same
/// names with dashes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// This node's id, unique in the cluster (1..=65535).
    pub node_id: NodeId,
    /// Client port.
    pub listen: SocketAddr,
    /// Peer port (cluster traffic only).
    pub peer_listen: SocketAddr,
    /// Admin HTTP port (metrics, probes, JSON, console); `None` (`"off"` in the file) disables
    /// it. Listens on loopback by default: it is unauthenticated and read-only.
    #[serde(with = "http_addr")]
    pub http: Option<SocketAddr>,
    /// Peer addresses (`IP:PORT` or `HOST:PORT`) of every member, this node's own included.
    /// Empty: standalone.
    pub members: Vec<PeerAddr>,
    /// This node's own entry in `members`, as its peers reach it; `None`: `peer_listen`. Set it
    /// where the node listens on a wildcard address or is known by a name (Kubernetes:
    /// `distro-0.distro-peers:8859`).
    pub peer_advertise: Option<PeerAddr>,
    /// Shared secret the members authenticate each other with.
    pub cluster_token: Option<String>,
    /// The cluster's name: its identity in the peer handshake. Nodes refuse peers of another
    /// name; the member lists of two members may differ (while a change of them is rolled out).
    pub cluster_name: String,
    /// The client tokens and their rights (`docs/security.md`); reloaded on SIGHUP. Without
    /// it every client may do everything.
    pub token_file: Option<PathBuf>,
    /// The node's TLS certificate chain (PEM). With it every port serves TLS: the client,
    /// admin and Nacos ports, and the peer port with mutual TLS (`docs/security.md`).
    pub tls_cert: Option<PathBuf>,
    /// The private key of `tls_cert` (PEM).
    pub tls_key: Option<PathBuf>,
    /// The CA that signs the members' certificates (PEM): peers verify each other against it.
    /// Needed in a cluster with TLS.
    pub tls_ca: Option<PathBuf>,
    /// Client connections at once; the accept loop waits for a free slot beyond that.
    pub max_connections: usize,
    /// Smallest lease setting (beat, unhealthy-after, expire-after) a client may ask for, ms.
    /// Keeps a misconfigured client from making the node do lease work every few ms.
    pub lease_floor_ms: u32,
    /// How long a change waits to be coalesced with others before subscribers are pushed, ms.
    pub push_delay_ms: u64,
    /// How often the lease duty runs, ms.
    pub lease_pass_ms: u64,
    /// A client connection that sends nothing for this long is closed (the SDK pings well
    /// within it); this is how a half-open connection of a crashed client host is noticed.
    pub client_idle_timeout_ms: u64,
    /// Sync batching window, ms: a batch flushes after this or when full.
    pub sync_delay_ms: u64,
    /// Anti-entropy round interval, ms.
    pub verify_interval_ms: u64,
    /// A member that has not answered for this long is down, ms.
    pub member_timeout_ms: u64,
    /// Log filter (tracing's env-filter syntax, e.g. `info` or `distro=debug`).
    pub log_level: String,
    /// Log line format: `text` or `json`.
    pub log_format: LogFormat,
    /// The Nacos HTTP API's address (`docs/nacos.md`); the Nacos gRPC protocol listens at its
    /// port + 1000. Off when not set.
    pub nacos_listen: Option<SocketAddr>,
}

impl Default for Config {
    fn default() -> Config {
        Config {
            node_id: 1,
            listen: "127.0.0.1:8858".parse().unwrap(),
            peer_listen: "127.0.0.1:8859".parse().unwrap(),
            http: Some("127.0.0.1:8860".parse().unwrap()),
            members: Vec::new(),
            peer_advertise: None,
            cluster_token: None,
            cluster_name: "distro".into(),
            token_file: None,
            tls_cert: None,
            tls_key: None,
            tls_ca: None,
            max_connections: 10_000,
            lease_floor_ms: 500,
            push_delay_ms: 5,
            lease_pass_ms: 250,
            client_idle_timeout_ms: 20_000,
            sync_delay_ms: 10,
            verify_interval_ms: 5_000,
            member_timeout_ms: 3_000,
            log_level: "info".into(),
            log_format: LogFormat::Text,
            nacos_listen: None,
        }
    }
}

/// `http = "off"` or an address.
mod http_addr {
    use std::net::SocketAddr;

    use serde::{Deserialize, Deserializer, Serializer, de::Error};

    pub fn serialize<S: Serializer>(v: &Option<SocketAddr>, s: S) -> Result<S::Ok, S::Error> {
        match v {
            Some(a) => s.collect_str(a),
            None => s.serialize_str("off"),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<SocketAddr>, D::Error> {
        super::parse_http(&String::deserialize(d)?).map_err(D::Error::custom)
    }
}

/// The value of the `http` setting: `off`, or an address to listen on.
pub fn parse_http(s: &str) -> Result<Option<SocketAddr>, String> {
    if s == "off" {
        return Ok(None);
    }
    s.parse()
        .map(Some)
        .map_err(|_| format!("expected an address such as 127.0.0.1:8860, or \"off\"; got {s:?}"))
}

/// Where each top-level key of a config file is, for errors that point at it.
#[derive(Debug, Clone, Default)]
pub struct KeyPositions {
    path: String,
    /// Key → (line, column) of its value, both from 1.
    at: HashMap<String, (usize, usize)>,
}

impl KeyPositions {
    /// Whether the file set `key`.
    pub fn contains(&self, key: &str) -> bool {
        self.at.contains_key(key)
    }

    /// `e` with the position of its key in the file, if the file set that key.
    pub fn locate(&self, e: ConfigError) -> ConfigError {
        match e {
            ConfigError::Invalid { key, reason } => match self.at.get(key) {
                Some(&(line, column)) => ConfigError::Key {
                    path: self.path.clone(),
                    line,
                    column,
                    key: key.to_string(),
                    message: reason,
                },
                None => ConfigError::Invalid { key, reason },
            },
            other => other,
        }
    }
}

/// Line and column (from 1, in characters) of byte `offset` of `text`.
fn line_column(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    (line, before[line_start..].chars().count() + 1)
}

impl Config {
    /// Reads a TOML file; keys it does not set keep their defaults. Unknown keys and values of
    /// the wrong type are errors that name the key and its position. Does not [`validate`].
    ///
    /// [`validate`]: Config::validate
    pub fn from_file(path: &Path) -> Result<Config, ConfigError> {
        Config::parse_file(path).map(|(c, _)| c)
    }

    /// [`Config::from_file`], with where each key is in the file.
    pub fn parse_file(path: &Path) -> Result<(Config, KeyPositions), ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Config::parse_str(&path.display().to_string(), &text)
    }

    /// Parses the text of a config file named `path` (for messages).
    pub fn parse_str(path: &str, text: &str) -> Result<(Config, KeyPositions), ConfigError> {
        let syntax = |e: toml::de::Error| {
            let (line, column) = line_column(text, e.span().map_or(0, |s| s.start));
            ConfigError::Syntax {
                path: path.to_string(),
                line,
                column,
                message: e.message().trim().to_string(),
            }
        };
        let table = toml::de::DeTable::parse(text).map_err(syntax)?;
        // Every top-level key with the byte range of the key and of its value.
        let keys: Vec<(String, std::ops::Range<usize>, std::ops::Range<usize>)> = table
            .get_ref()
            .iter()
            .map(|(k, v)| (k.get_ref().to_string(), k.span(), v.span()))
            .collect();
        let positions = KeyPositions {
            path: path.to_string(),
            at: keys
                .iter()
                .map(|(k, _, v)| (k.clone(), line_column(text, v.start)))
                .collect(),
        };
        let config = toml::from_str::<Config>(text).map_err(|e| {
            let Some(span) = e.span() else {
                return syntax(e);
            };
            let owner = keys
                .iter()
                .find(|(_, k, v)| k.contains(&span.start) || v.contains(&span.start));
            match owner {
                Some((key, _, _)) => {
                    let (line, column) = line_column(text, span.start);
                    ConfigError::Key {
                        path: path.to_string(),
                        line,
                        column,
                        key: key.clone(),
                        message: e.message().trim().to_string(),
                    }
                }
                None => syntax(e),
            }
        })?;
        Ok((config, positions))
    }

    /// The node's TLS material, read from `tls_cert`, `tls_key` and `tls_ca`; `None` without a
    /// certificate. The error names the file.
    pub fn tls(&self) -> Result<Option<crate::net::NodeTls>, crate::net::TlsError> {
        match (&self.tls_cert, &self.tls_key) {
            (Some(cert), Some(key)) => {
                crate::net::NodeTls::load(cert, key, self.tls_ca.as_deref()).map(Some)
            }
            _ => Ok(None),
        }
    }

    /// Rejects settings the node cannot run with; the error names the key.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |key, reason: &str| {
            Err(ConfigError::Invalid {
                key,
                reason: reason.to_string(),
            })
        };
        if self.node_id == 0 {
            return invalid("node_id", "must be 1..=65535");
        }
        if self.max_connections == 0 || self.max_connections > 1_000_000 {
            return invalid("max_connections", "must be 1..=1000000");
        }
        if self.lease_floor_ms < 100 {
            return invalid("lease_floor_ms", "must be at least 100");
        }
        if self.push_delay_ms > 1_000 {
            return invalid("push_delay_ms", "must be at most 1000");
        }
        if !(10..=10_000).contains(&self.lease_pass_ms) {
            return invalid("lease_pass_ms", "must be 10..=10000");
        }
        if self.client_idle_timeout_ms < 1_000 {
            return invalid("client_idle_timeout_ms", "must be at least 1000");
        }
        if self.sync_delay_ms > 1_000 {
            return invalid("sync_delay_ms", "must be at most 1000");
        }
        if !(100..=600_000).contains(&self.verify_interval_ms) {
            return invalid("verify_interval_ms", "must be 100..=600000");
        }
        if !(100..=600_000).contains(&self.member_timeout_ms) {
            return invalid("member_timeout_ms", "must be 100..=600000");
        }
        if self.log_level.trim().is_empty() {
            return invalid(
                "log_level",
                "must not be empty (e.g. info, or distro=debug)",
            );
        }
        if let Some(a) = self.nacos_listen
            && a.port() > u16::MAX - NACOS_GRPC_PORT_OFFSET
        {
            return invalid(
                "nacos_listen",
                "port must leave room for the gRPC port (port + 1000 <= 65535)",
            );
        }
        match (&self.tls_cert, &self.tls_key) {
            (Some(_), None) => return invalid("tls_cert", "needs its private key (tls_key)"),
            (None, Some(_)) => return invalid("tls_key", "needs its certificate (tls_cert)"),
            _ => {}
        }
        if self.tls_ca.is_some() && self.tls_cert.is_none() {
            return invalid(
                "tls_ca",
                "the CA verifies peers, which needs this node's own certificate (tls_cert)",
            );
        }
        if self.tls_cert.is_some() && self.tls_ca.is_none() && self.is_clustered() {
            return invalid(
                "tls_ca",
                "peers use mutual TLS: a cluster with TLS needs the CA that signs its members' \
                 certificates",
            );
        }
        if self.members.len() > crate::model::MEMBERS_MAX {
            return invalid("members", "at most 256 members");
        }
        if let Some(dup) = first_duplicate(&self.members) {
            return Err(ConfigError::Invalid {
                key: "members",
                reason: format!("{dup} is listed twice"),
            });
        }
        if self.cluster_name.is_empty() || self.cluster_name.len() > CLUSTER_NAME_LEN_MAX {
            return invalid("cluster_name", "must be 1..=128 bytes");
        }
        if !self.members.is_empty() && !self.members.contains(&self.own_peer_addr()) {
            let key = if self.peer_advertise.is_some() {
                "peer_advertise"
            } else {
                "members"
            };
            return Err(ConfigError::Invalid {
                key,
                reason: format!(
                    "members must contain this node's own peer address {} (peer_advertise, \
                     or else peer_listen)",
                    self.own_peer_addr()
                ),
            });
        }
        if self.is_clustered()
            && self.cluster_token.is_none()
            && !self.peer_listen.ip().is_loopback()
        {
            return invalid(
                "cluster_token",
                "required when the peer port listens beyond loopback (peers authenticate with it)",
            );
        }
        if let Some(t) = &self.cluster_token
            && t.len() < 8
        {
            return invalid("cluster_token", "must be at least 8 bytes");
        }
        let ports = [
            ("listen", Some(self.listen)),
            (
                "peer_listen",
                self.is_clustered().then_some(self.peer_listen),
            ),
            ("http", self.http),
        ];
        for (i, (a, x)) in ports.iter().enumerate() {
            for (b, y) in &ports[i + 1..] {
                if let (Some(x), Some(y)) = (x, y)
                    && x == y
                    && x.port() != 0
                {
                    return Err(ConfigError::Invalid {
                        key: b,
                        reason: format!("{y} is also the address of {a}"),
                    });
                }
            }
        }
        // Read here so that a bad file stops the node before it starts, with the reason; the
        // node reads it again when it starts (and refuses every client if it went bad since).
        if let Some(path) = &self.token_file
            && let Err(e) = crate::auth::TokenSet::load(path)
        {
            return invalid("token_file", &e.to_string());
        }
        Ok(())
    }

    pub fn is_clustered(&self) -> bool {
        self.members.len() > 1
    }

    /// This node's entry in `members`.
    pub fn own_peer_addr(&self) -> PeerAddr {
        self.peer_advertise
            .clone()
            .unwrap_or_else(|| self.peer_listen.into())
    }

    /// Every key of the config file, in the order of [`Config`]'s fields.
    pub fn keys() -> Vec<String> {
        match serde_json::to_value(Config::default()) {
            Ok(serde_json::Value::Object(m)) => m.keys().cloned().collect(),
            _ => unreachable!("Config serializes to a map"),
        }
    }
}

#[cfg(test)]
mod tests;
