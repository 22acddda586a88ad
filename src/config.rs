//! A node's settings: defaults, the TOML config file, and the checks that reject bad values
//! with a clear message before anything starts.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use thiserror::Error;

use crate::model::NodeId;

#[derive(Debug, Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("config file {path}: {message}")]
    Parse { path: String, message: String },
    #[error("invalid setting {key}: {reason}")]
    Invalid { key: &'static str, reason: String },
}

/// Every setting of a node. Field names are the TOML keys; the flags of `distrod` use the same
/// names with dashes.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// This node's id, unique in the cluster (1..=65535).
    pub node_id: NodeId,
    /// Client port.
    pub listen: SocketAddr,
    /// Peer port (cluster traffic only).
    pub peer_listen: SocketAddr,
    /// Peer addresses of every member, this node's own included. Empty: standalone.
    pub members: Vec<SocketAddr>,
    /// Shared secret the members authenticate each other with.
    pub cluster_token: Option<String>,
    /// The client tokens and their rights (`docs/security.md`); reloaded on SIGHUP. Without
    /// it every client may do everything.
    pub token_file: Option<PathBuf>,
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
}

impl Default for Config {
    fn default() -> Config {
        Config {
            node_id: 1,
            listen: "127.0.0.1:8858".parse().unwrap(),
            peer_listen: "127.0.0.1:8859".parse().unwrap(),
            members: Vec::new(),
            cluster_token: None,
            token_file: None,
            max_connections: 10_000,
            lease_floor_ms: 500,
            push_delay_ms: 5,
            lease_pass_ms: 250,
            client_idle_timeout_ms: 20_000,
            sync_delay_ms: 10,
            verify_interval_ms: 5_000,
            member_timeout_ms: 3_000,
            log_level: "info".into(),
        }
    }
}

impl Config {
    /// Reads a TOML file; keys it does not set keep their defaults, unknown keys are errors.
    pub fn from_file(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.display().to_string(),
            source,
        })?;
        toml::from_str(&text).map_err(|e| ConfigError::Parse {
            path: path.display().to_string(),
            message: e.to_string().trim().replace('\n', " "),
        })
    }

    /// Rejects settings the node cannot run with.
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
        if self.members.len() > crate::model::MEMBERS_MAX {
            return invalid("members", "at most 256 members");
        }
        if !self.members.is_empty() && !self.members.contains(&self.peer_listen) {
            return invalid(
                "members",
                "must contain this node's own peer address (peer_listen)",
            );
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
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid() {
        Config::default().validate().unwrap();
    }

    #[test]
    fn file_overrides_defaults_and_rejects_unknown_keys() {
        let dir = std::env::temp_dir().join(format!("distro-cfg-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let good = dir.join("good.toml");
        std::fs::write(
            &good,
            "listen = \"127.0.0.1:9000\"\nlease_floor_ms = 1000\n",
        )
        .unwrap();
        let c = Config::from_file(&good).unwrap();
        assert_eq!(c.listen.port(), 9000);
        assert_eq!(c.lease_floor_ms, 1000);
        assert_eq!(c.max_connections, 10_000);
        let bad = dir.join("bad.toml");
        std::fs::write(&bad, "lisen = \"127.0.0.1:9000\"\n").unwrap();
        let e = Config::from_file(&bad).unwrap_err().to_string();
        assert!(e.contains("lisen"), "{e}");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn bad_values_are_named() {
        let c = Config {
            lease_floor_ms: 5,
            ..Config::default()
        };
        assert!(
            c.validate()
                .unwrap_err()
                .to_string()
                .contains("lease_floor_ms")
        );
    }
}
