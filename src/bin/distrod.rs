//! `distrod`: a Distro registry node. Flags override the TOML file given by `--config`.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context;
use clap::Parser;
use distro::config::{Config, ConfigError, KeyPositions, LogFormat, PeerAddr};
use distro::server::Server;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

unsafe extern "C" {
    // mimalloc's option interface (linked in by the `mimalloc` crate).
    fn mi_option_get(option: std::ffi::c_int) -> std::ffi::c_long;
    fn mi_option_set(option: std::ffi::c_int, value: std::ffi::c_long);
}

/// `mi_option_generic_collect` in mimalloc 3 (the version the `mimalloc` crate builds).
const MI_OPTION_GENERIC_COLLECT: std::ffi::c_int = 34;
/// Its default there, which identifies the option before it is changed.
const GENERIC_COLLECT_DEFAULT: std::ffi::c_long = 10_000;
/// How often (in allocations that miss the fast path) a thread collects its heap and lets
/// empty pages go. At the default, a node that had just loaded 1,000,000 instances kept ~35 MB
/// of free pages resident for good (199 MB against 164 MB at this setting, measured in the
/// 1M-instance benchmark of BENCHMARKS.md); throughput did not change measurably.
const GENERIC_COLLECT: std::ffi::c_long = 1_000;

/// Makes the allocator give free pages back sooner. Runs first thing in `main`, before any
/// other thread exists (mimalloc's option setter is not thread-safe). Leaves the allocator
/// alone if the option at that index is not the one expected (another mimalloc version).
fn tune_allocator() {
    // SAFETY: plain C calls with integer arguments; no other thread runs yet.
    unsafe {
        if mi_option_get(MI_OPTION_GENERIC_COLLECT) == GENERIC_COLLECT_DEFAULT {
            mi_option_set(MI_OPTION_GENERIC_COLLECT, GENERIC_COLLECT);
        }
    }
}

#[derive(Parser, Debug, Clone)]
#[command(name = "distrod", version, about = "A Distro registry node")]
struct Args {
    /// TOML config file (see distrod.example.toml); flags given here override its values.
    #[arg(long)]
    config: Option<PathBuf>,
    /// This node's id in the cluster (1..=65535) [default: 1].
    #[arg(long)]
    node_id: Option<u16>,
    /// Client address to listen on [default: 127.0.0.1:8858].
    #[arg(long)]
    listen: Option<SocketAddr>,
    /// Peer address to listen on for cluster traffic [default: 127.0.0.1:8859].
    #[arg(long)]
    peer_listen: Option<SocketAddr>,
    /// Admin HTTP address (metrics, probes, console), or "off" [default: 127.0.0.1:8860].
    #[arg(long, value_parser = parse_http)]
    http: Option<HttpSetting>,
    /// Peer addresses (IP:PORT or HOST:PORT) of all members, this node's included,
    /// comma-separated.
    #[arg(long, value_delimiter = ',')]
    members: Option<Vec<PeerAddr>>,
    /// This node's own entry in --members, as peers reach it [default: --peer-listen].
    #[arg(long)]
    peer_advertise: Option<PeerAddr>,
    /// Shared secret of the cluster's members.
    #[arg(long, env = "DISTRO_CLUSTER_TOKEN", hide_env_values = true)]
    cluster_token: Option<String>,
    /// The cluster's name; nodes refuse peers of another name [default: distro].
    #[arg(long)]
    cluster_name: Option<String>,
    /// Client tokens and their rights (TOML; docs/security.md); reloaded on SIGHUP. Without it
    /// every client may do everything.
    #[arg(long)]
    token_file: Option<PathBuf>,
    /// The node's TLS certificate chain (PEM): every port serves TLS, peers mutual TLS
    /// (docs/security.md) [default: plaintext].
    #[arg(long)]
    tls_cert: Option<PathBuf>,
    /// The private key of --tls-cert (PEM).
    #[arg(long)]
    tls_key: Option<PathBuf>,
    /// The CA that signs the members' certificates (PEM); needed in a cluster with TLS.
    #[arg(long)]
    tls_ca: Option<PathBuf>,
    /// Most client connections at once [default: 10000].
    #[arg(long)]
    max_connections: Option<usize>,
    /// Smallest lease (beat / unhealthy / expire) a client may ask for, ms [default: 500].
    #[arg(long)]
    lease_floor_ms: Option<u32>,
    /// Coalescing delay of pushes to subscribers, ms [default: 5].
    #[arg(long)]
    push_delay_ms: Option<u64>,
    /// Interval of the lease duty, ms [default: 250].
    #[arg(long)]
    lease_pass_ms: Option<u64>,
    /// A client connection silent this long is closed, ms [default: 20000].
    #[arg(long)]
    client_idle_timeout_ms: Option<u64>,
    /// Sync batching window, ms [default: 10].
    #[arg(long)]
    sync_delay_ms: Option<u64>,
    /// Anti-entropy (digest) interval, ms [default: 5000].
    #[arg(long)]
    verify_interval_ms: Option<u64>,
    /// A member silent this long is down, ms [default: 3000].
    #[arg(long)]
    member_timeout_ms: Option<u64>,
    /// Log filter, e.g. info, debug, info,distro::cluster=debug; overrides RUST_LOG
    /// [default: RUST_LOG, else the file's log_level, else info].
    #[arg(long)]
    log_level: Option<String>,
    /// Log line format: text or json [default: text].
    #[arg(long)]
    log_format: Option<LogFormat>,
    /// Serve the Nacos HTTP API at this address and Nacos gRPC at its port + 1000
    /// (e.g. 127.0.0.1:8848) [default: off].
    #[arg(long)]
    nacos_listen: Option<SocketAddr>,
}

/// The `--http` value: an address or "off" (a newtype, so that clap does not take an
/// `Option` value for an optional flag).
#[derive(Debug, Clone)]
struct HttpSetting(Option<SocketAddr>);

fn parse_http(s: &str) -> Result<HttpSetting, String> {
    distro::config::parse_http(s).map(HttpSetting)
}

impl Args {
    /// The settings: defaults, then the file, then RUST_LOG (for the log level), then the
    /// flags. An invalid value is reported where it came from: the flag, or the file's line.
    fn into_config(self) -> anyhow::Result<Config> {
        let (mut c, positions) = match &self.config {
            Some(path) => Config::parse_file(path)?,
            None => (Config::default(), KeyPositions::default()),
        };
        let mut from_flags: Vec<&'static str> = Vec::new();
        macro_rules! set {
            ($($f:ident),*) => { $( if let Some(v) = self.$f {
                c.$f = v;
                from_flags.push(stringify!($f));
            } )* };
        }
        if let Ok(env) = std::env::var("RUST_LOG")
            && !env.trim().is_empty()
            && self.log_level.is_none()
        {
            c.log_level = env;
        }
        set!(
            node_id,
            listen,
            peer_listen,
            members,
            cluster_name,
            max_connections,
            lease_floor_ms,
            push_delay_ms,
            lease_pass_ms,
            client_idle_timeout_ms,
            sync_delay_ms,
            verify_interval_ms,
            member_timeout_ms,
            log_level,
            log_format
        );
        if self.peer_advertise.is_some() {
            c.peer_advertise = self.peer_advertise;
            from_flags.push("peer_advertise");
        }
        if let Some(HttpSetting(http)) = self.http {
            c.http = http;
            from_flags.push("http");
        }
        if self.nacos_listen.is_some() {
            c.nacos_listen = self.nacos_listen;
            from_flags.push("nacos_listen");
        }
        if self.cluster_token.is_some() {
            c.cluster_token = self.cluster_token;
            from_flags.push("cluster_token");
        }
        if self.token_file.is_some() {
            c.token_file = self.token_file;
            from_flags.push("token_file");
        }
        for (flag, value, key) in [
            (self.tls_cert, &mut c.tls_cert, "tls_cert"),
            (self.tls_key, &mut c.tls_key, "tls_key"),
            (self.tls_ca, &mut c.tls_ca, "tls_ca"),
        ] {
            if flag.is_some() {
                *value = flag;
                from_flags.push(key);
            }
        }
        let checked = c.validate().and_then(|()| {
            tracing_subscriber::EnvFilter::try_new(&c.log_level)
                .map(drop)
                .map_err(|e| ConfigError::Invalid {
                    key: "log_level",
                    reason: format!("{:?} is not a log filter: {e}", c.log_level),
                })
        });
        match checked {
            Ok(()) => Ok(c),
            Err(ConfigError::Invalid { key, reason }) if from_flags.contains(&key) => {
                anyhow::bail!("--{}: {reason}", key.replace('_', "-"))
            }
            Err(e) => Err(positions.locate(e).into()),
        }
    }
}

fn main() {
    tune_allocator();
    let args = Args::parse();
    let config = match args.clone().into_config() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("distrod: error: {e:#}");
            std::process::exit(2);
        }
    };
    if let Err(e) = run(config, args) {
        eprintln!("distrod: error: {e:#}");
        std::process::exit(1);
    }
}

/// Log lines go to stderr, readable text (with colours on a terminal) or one JSON object per
/// line, filtered by `log_level`.
fn init_logs(config: &Config) -> anyhow::Result<()> {
    let filter = tracing_subscriber::EnvFilter::try_new(&config.log_level)
        .with_context(|| format!("invalid log level {:?}", config.log_level))?;
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match config.log_format {
        LogFormat::Text => logs
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .init(),
        LogFormat::Json => logs
            .json()
            .with_current_span(false)
            .with_span_list(false)
            .init(),
    }
    Ok(())
}

/// `args`: the command line, to read the config file again on SIGHUP.
fn run(config: Config, args: Args) -> anyhow::Result<()> {
    init_logs(&config)?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        let server = Server::bind(config.clone()).await?;
        let node = server.node();
        // Installed before the node announces itself, so that a SIGTERM sent as soon as it
        // serves (a supervisor, a test) stops it gracefully instead of killing it.
        let mut signals = Signals::install()?;
        tracing::info!(
            listen = %server.local_addr(),
            http = %server.admin_addr().map_or("off".to_string(), |a| a.to_string()),
            node = config.node_id,
            members = config.members.len(),
            "distrod serving"
        );
        if let Some(nacos) = server.nacos_addr() {
            tracing::info!(
                http = %nacos,
                grpc_port = nacos.port() + distro::frontend::nacos::GRPC_PORT_OFFSET,
                "Nacos API serving"
            );
        }
        tokio::spawn(async move {
            let mut stopping = false;
            loop {
                match signals.next().await {
                    Signal::Stop if !stopping => {
                        stopping = true;
                        tracing::info!("signal received; leaving the cluster and stopping");
                        let node = node.clone();
                        tokio::spawn(async move { node.stop_gracefully().await });
                    }
                    Signal::Stop => {
                        tracing::warn!("second stop signal; stopping at once");
                        node.shutdown.cancel();
                    }
                    Signal::Reload => reload(&node, &config, &args).await,
                }
            }
        });
        server.run().await;
        anyhow::Ok(())
    })
}

/// SIGHUP: reads the token file and the member list again.
async fn reload(node: &distro::node::Node, running: &Config, args: &Args) {
    reload_tokens(node);
    reload_members(node, running, args).await;
}

/// Reads the token file again. A bad file is logged and changes nothing (the tokens in force
/// stay); without a token file there is nothing to reload.
fn reload_tokens(node: &distro::node::Node) {
    if node.tokens.path().is_some() {
        match node.tokens.reload() {
            Ok(n) => tracing::info!(
                tokens = n.tokens,
                users = n.users,
                "SIGHUP: token file reloaded"
            ),
            Err(e) => {
                tracing::error!(error = %e, "SIGHUP: token file not reloaded; the tokens in force stay")
            }
        }
    }
}

/// Reads the config file again and applies its member list (README, "Changing the members").
/// A file that does not validate changes nothing; other settings need a restart.
async fn reload_members(node: &distro::node::Node, running: &Config, args: &Args) {
    let Some(path) = &args.config else {
        if node.tokens.path().is_none() {
            tracing::warn!("SIGHUP: no --config file and no token file to read again");
        }
        return;
    };
    if args.members.is_some() {
        tracing::warn!(
            "SIGHUP: the members come from --members, which overrides the file; nothing changed"
        );
        return;
    }
    let new = match args.clone().into_config() {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(file = %path.display(), error = %format!("{e:#}"), "SIGHUP: config file refused; nothing changed");
            return;
        }
    };
    let (now, was) = (serde_json::to_value(&new), serde_json::to_value(running));
    if let (Ok(now), Ok(was)) = (now, was) {
        let changed: Vec<String> = Config::keys()
            .into_iter()
            .filter(|k| k != "members" && now.get(k) != was.get(k))
            .collect();
        if !changed.is_empty() {
            tracing::warn!(
                ?changed,
                "SIGHUP applies the member list only; these settings need a restart"
            );
        }
    }
    match &node.cluster {
        Some(cluster) => {
            let (added, removed) = cluster.set_members(&new.members).await;
            if added.is_empty() && removed.is_empty() {
                tracing::info!("SIGHUP: member list unchanged");
            }
        }
        None if new.is_clustered() => tracing::warn!(
            "SIGHUP: this node was started standalone; it joins a cluster only by a restart"
        ),
        None => {}
    }
}

/// What a signal asks of the node.
enum Signal {
    /// SIGTERM or SIGINT: a graceful stop (a second one: at once).
    Stop,
    /// SIGHUP: read the member list again.
    Reload,
}

struct Signals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
    hup: tokio::signal::unix::Signal,
}

impl Signals {
    /// Installs the handlers (from then on these signals no longer kill the process).
    fn install() -> anyhow::Result<Signals> {
        use tokio::signal::unix::{SignalKind, signal};
        Ok(Signals {
            term: signal(SignalKind::terminate()).context("install the SIGTERM handler")?,
            int: signal(SignalKind::interrupt()).context("install the SIGINT handler")?,
            hup: signal(SignalKind::hangup()).context("install the SIGHUP handler")?,
        })
    }

    async fn next(&mut self) -> Signal {
        tokio::select! {
            _ = self.term.recv() => Signal::Stop,
            _ = self.int.recv() => Signal::Stop,
            _ = self.hup.recv() => Signal::Reload,
        }
    }
}
