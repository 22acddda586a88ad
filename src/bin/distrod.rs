//! `distrod`: a Distro registry node. Flags override the TOML file given by `--config`.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context;
use clap::Parser;
use distro::config::Config;
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

#[derive(Parser, Debug)]
#[command(name = "distrod", version, about = "A Distro registry node")]
struct Args {
    /// TOML config file; flags given here override its values.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Client address to listen on [default: 127.0.0.1:8858].
    #[arg(long)]
    listen: Option<SocketAddr>,
    /// Most client connections at once [default: 10000].
    #[arg(long)]
    max_connections: Option<usize>,
    /// Log filter, e.g. info, debug, distro=debug [default: info].
    #[arg(long)]
    log_level: Option<String>,
    /// This node's id in the cluster (1..=65535) [default: 1].
    #[arg(long)]
    node_id: Option<u16>,
    /// Peer address to listen on for cluster traffic [default: 127.0.0.1:8859].
    #[arg(long)]
    peer_listen: Option<SocketAddr>,
    /// Peer addresses of all members, this node's included, comma-separated.
    #[arg(long, value_delimiter = ',')]
    members: Option<Vec<SocketAddr>>,
    /// Shared secret of the cluster's members.
    #[arg(long, env = "DISTRO_CLUSTER_TOKEN", hide_env_values = true)]
    cluster_token: Option<String>,
    /// Client tokens and their rights (TOML; docs/security.md); reloaded on SIGHUP. Without it
    /// every client may do everything.
    #[arg(long)]
    token_file: Option<PathBuf>,
    /// Smallest lease (beat / unhealthy / expire) a client may ask for, ms [default: 500].
    #[arg(long)]
    lease_floor_ms: Option<u32>,
    /// A member silent this long is down, ms [default: 3000].
    #[arg(long)]
    member_timeout_ms: Option<u64>,
    /// Sync batching window, ms [default: 10].
    #[arg(long)]
    sync_delay_ms: Option<u64>,
    /// Anti-entropy (digest) interval, ms [default: 5000].
    #[arg(long)]
    verify_interval_ms: Option<u64>,
}

impl Args {
    fn into_config(self) -> anyhow::Result<Config> {
        let mut c = match &self.config {
            Some(path) => Config::from_file(path)?,
            None => Config::default(),
        };
        macro_rules! set {
            ($($f:ident),*) => { $( if let Some(v) = self.$f { c.$f = v; } )* };
        }
        set!(
            listen,
            max_connections,
            log_level,
            node_id,
            peer_listen,
            members,
            lease_floor_ms,
            member_timeout_ms,
            sync_delay_ms,
            verify_interval_ms
        );
        if self.cluster_token.is_some() {
            c.cluster_token = self.cluster_token;
        }
        if self.token_file.is_some() {
            c.token_file = self.token_file;
        }
        c.validate()?;
        Ok(c)
    }
}

fn main() {
    tune_allocator();
    let args = Args::parse();
    let config = match args.into_config() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("distrod: error: {e:#}");
            std::process::exit(2);
        }
    };
    if let Err(e) = run(config) {
        eprintln!("distrod: error: {e:#}");
        std::process::exit(1);
    }
}

fn run(config: Config) -> anyhow::Result<()> {
    let filter = tracing_subscriber::EnvFilter::try_new(&config.log_level)
        .with_context(|| format!("invalid log level {:?}", config.log_level))?;
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        let server = Server::bind(config.clone())
            .await
            .with_context(|| format!("cannot listen on {}", config.listen))?;
        let node = server.node();
        tracing::info!(
            listen = %server.local_addr(),
            node = config.node_id,
            "distrod serving"
        );
        let stop = node.shutdown.clone();
        tokio::spawn(async move {
            wait_for_signal().await;
            tracing::info!("signal received; shutting down");
            stop.cancel();
        });
        tokio::spawn(reload_on_hangup(node.clone()));
        server.run().await;
        anyhow::Ok(())
    })
}

/// SIGHUP: reads the token file again. A bad file is logged and changes nothing (the tokens in
/// force stay); without a token file there is nothing to reload.
async fn reload_on_hangup(node: std::sync::Arc<distro::node::Node>) {
    use tokio::signal::unix::{SignalKind, signal};
    let mut hup = signal(SignalKind::hangup()).expect("install SIGHUP handler");
    while hup.recv().await.is_some() {
        if node.tokens.path().is_none() {
            tracing::info!("SIGHUP: no token file to reload");
            continue;
        }
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

async fn wait_for_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).expect("install SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}
