//! Connections through the SDK, for setup and status (the measured requests go over
//! [`crate::raw`] connections), the token every connection presents, and reading how many
//! instances the nodes hold.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use distro::client::{Conn, PushSink};
use distro::net::Dialer;
use distro::wire::Message;
use tokio_util::sync::CancellationToken;

/// Deadline of one request. Generous: under overload we want slow answers counted as latency,
/// not as errors.
pub(crate) const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// How long after the load we wait for every node to hold the data (or see every write).
pub(crate) const CONVERGE_WAIT: Duration = Duration::from_secs(60);

/// How often the nodes' instance counts are read while waiting for them to hold the data.
/// ClusterStatus sums the per-owner digests (O(shards × buckets)): cheap, but not free.
pub(crate) const STATUS_POLL: Duration = Duration::from_millis(100);

/// The token every connection presents, if any (set once, before the first connection).
pub(crate) static TOKEN: std::sync::OnceLock<Option<String>> = std::sync::OnceLock::new();

pub(crate) fn client_token() -> Option<&'static str> {
    TOKEN.get().and_then(|t| t.as_deref())
}

/// How every connection is opened: TCP, or TLS over it (`--tls-ca`, `--spawn-tls`). Set once,
/// before the first connection; TCP if never set.
static DIALER: std::sync::OnceLock<Arc<dyn Dialer>> = std::sync::OnceLock::new();

/// Every connection from now on speaks TLS, verifying the nodes against the CA in `ca`.
pub(crate) fn use_tls(ca: &std::path::Path) -> anyhow::Result<()> {
    let tls = distro::net::ClientTls::from_ca_file(ca)?;
    DIALER
        .set(tls.dialer())
        .map_err(|_| anyhow::anyhow!("the dialer was chosen already"))
}

pub(crate) fn dialer() -> &'static Arc<dyn Dialer> {
    DIALER.get_or_init(distro::net::tcp)
}

pub(crate) fn no_push() -> PushSink {
    Arc::new(|_| {})
}

/// One SDK connection (over TCP, or TLS: [`dialer`]). Its tasks live until it is closed (or the bench exits).
pub(crate) async fn dial(
    addr: &str,
    name: &str,
    timeout: Duration,
    on_push: PushSink,
) -> Result<Arc<Conn>, distro::client::ClientError> {
    let tasks = tokio_util::task::TaskTracker::new();
    let owner = CancellationToken::new();
    let conn = Conn::open(&**dialer(), addr, name, timeout, on_push, &tasks, &owner).await?;
    if let Some(t) = client_token() {
        let auth = Message::Auth(distro::wire::Token::new(t));
        match conn.call(&auth, timeout).await? {
            Message::Ack(_) => {}
            Message::Error(e) => {
                conn.close();
                return Err(distro::client::ClientError::from_body(e));
            }
            other => {
                conn.close();
                return Err(distro::client::ClientError::Unexpected(format!(
                    "{:?} answering Auth",
                    other.opcode()
                )));
            }
        }
    }
    Ok(conn)
}

/// `n` connections, round-robin over `servers`, each to a ready node.
pub(crate) async fn open_conns(servers: &[String], n: usize) -> anyhow::Result<Vec<Arc<Conn>>> {
    let mut conns = Vec::with_capacity(n);
    for j in 0..n {
        conns.push(open_ready(&servers[j % servers.len()], no_push()).await?);
    }
    Ok(conns)
}

async fn open_ready(addr: &str, on_push: PushSink) -> anyhow::Result<Arc<Conn>> {
    let c = dial(addr, "distro-bench", Duration::from_secs(5), on_push)
        .await
        .with_context(|| format!("cannot connect to {addr}"))?;
    if !c.hello.ready {
        c.close();
        bail!("node {addr} is not ready (still loading)");
    }
    Ok(c)
}

/// Sends one request; an Error frame is an error.
pub(crate) async fn call(conn: &Conn, msg: &Message) -> Result<Message, String> {
    match conn.call(msg, REQUEST_TIMEOUT).await {
        Ok(Message::Error(e)) => Err(format!(
            "server error ({}): {}",
            e.kind().map(|k| k.name()).unwrap_or("unknown code"),
            e.message
        )),
        Ok(m) => Ok(m),
        Err(e) => Err(e.to_string()),
    }
}

/// One status connection per node, to read how many instances each holds.
pub(crate) struct NodeStatus {
    conns: Vec<Arc<Conn>>,
}

impl NodeStatus {
    pub(crate) async fn open(servers: &[String]) -> anyhow::Result<NodeStatus> {
        let mut conns = Vec::new();
        for addr in servers {
            conns.push(
                dial(
                    addr,
                    "distro-bench-status",
                    Duration::from_secs(5),
                    no_push(),
                )
                .await
                .with_context(|| format!("cannot connect to {addr}"))?,
            );
        }
        Ok(NodeStatus { conns })
    }

    /// Live instances per node (`None` for a node that did not answer).
    pub(crate) async fn counts(&self) -> Vec<Option<u64>> {
        let mut out = Vec::with_capacity(self.conns.len());
        for c in &self.conns {
            out.push(match call(c, &Message::ClusterStatus).await {
                Ok(Message::ClusterStatusResult(s)) => Some(s.instances),
                _ => None,
            });
        }
        out
    }

    /// Polls until every node holds at least `target[i]` instances; the time from `start`
    /// when that was first seen, or `None` after `give_up`.
    pub(crate) async fn wait_hold(
        &self,
        start: Instant,
        target: &[u64],
        give_up: Duration,
        extra: &Mutex<String>,
    ) -> Option<f64> {
        let deadline = Instant::now() + give_up;
        loop {
            let counts = self.counts().await;
            *extra.lock().unwrap() = format!("nodes hold {}", fmt_counts(&counts));
            if counts
                .iter()
                .zip(target)
                .all(|(c, t)| c.is_some_and(|c| c >= *t))
            {
                return Some(start.elapsed().as_secs_f64());
            }
            if Instant::now() >= deadline {
                eprintln!(
                    "distro-bench: nodes did not all reach {target:?} instances within {give_up:?}: {}",
                    fmt_counts(&counts)
                );
                return None;
            }
            tokio::time::sleep(STATUS_POLL).await;
        }
    }
}

pub(crate) fn fmt_counts(counts: &[Option<u64>]) -> String {
    let parts: Vec<String> = counts
        .iter()
        .map(|c| c.map_or("?".to_string(), |c| c.to_string()))
        .collect();
    format!("[{}]", parts.join(", "))
}
