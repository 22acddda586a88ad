//! `distroctl`: the command line of a Distro cluster. Scripts rely on its names and outputs
//! (README, "distroctl"); keep them stable.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, bail};
use clap::{Args as ClapArgs, Parser, Subcommand};
use distro::client::{Client, ClientConfig, ClientError, service_name};
use distro::frontend::admin::json::{ClusterJson, InstanceJson, ServiceJson, SnapshotJson};
use distro::model::{Instance, InstanceKey, Lease, ServiceName, ServiceSnapshot};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser, Debug)]
#[command(
    name = "distroctl",
    version,
    about = "Command line of a Distro registry"
)]
struct Cli {
    /// Client addresses of the nodes, comma-separated; tried in order.
    #[arg(
        long,
        default_value = "127.0.0.1:8858",
        value_delimiter = ',',
        global = true
    )]
    server: Vec<String>,
    /// Deadline of each request, ms.
    #[arg(long, default_value_t = 3000, global = true)]
    timeout_ms: u64,
    /// Token to present to the nodes (a node with a token file requires one). Prefer the
    /// environment variable: a flag shows in the process list.
    #[arg(long, env = "DISTRO_TOKEN", hide_env_values = true, global = true)]
    token: Option<String>,
    /// Speak TLS to the nodes, verifying their certificates against this CA (PEM); a node
    /// that serves TLS refuses plaintext.
    #[arg(long, env = "DISTRO_TLS_CA", global = true)]
    tls_ca: Option<std::path::PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(ClapArgs, Debug)]
struct ServiceArgs {
    #[arg(long)]
    service: String,
    #[arg(long, default_value = "public")]
    namespace: String,
    #[arg(long, default_value = "DEFAULT_GROUP")]
    group: String,
}

impl ServiceArgs {
    fn name(&self) -> ServiceName {
        service_name(&self.namespace, &self.group, &self.service)
    }
}

#[derive(ClapArgs, Debug)]
struct KeyArgs {
    #[command(flatten)]
    service: ServiceArgs,
    #[arg(long, default_value = "DEFAULT")]
    cluster: String,
    #[arg(long)]
    ip: String,
    #[arg(long)]
    port: u16,
}

impl KeyArgs {
    fn key(&self) -> InstanceKey {
        InstanceKey {
            service: self.service.name(),
            cluster: self.cluster.as_str().into(),
            ip: self.ip.as_str().into(),
            port: self.port,
        }
    }
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Register an instance. Without --hold it lives on its lease and the command exits; with
    /// --hold it is bound to this process, kept alive, and deregistered on SIGINT/SIGTERM.
    Register {
        #[command(flatten)]
        key: KeyArgs,
        #[arg(long, default_value_t = 1.0)]
        weight: f64,
        /// Metadata entry, repeatable.
        #[arg(long = "meta", value_parser = parse_meta)]
        meta: Vec<(String, String)>,
        /// Register the instance disabled (kept, but not offered to callers).
        #[arg(long)]
        disabled: bool,
        /// Heartbeat interval, ms [default: 5000, or a third of unhealthy-after when that is
        /// shorter than 15000, never below the node's lease floor].
        #[arg(long)]
        beat_ms: Option<u32>,
        /// No beat this long: reported unhealthy, ms [default: 15000, or expire-after when
        /// that is shorter].
        #[arg(long)]
        unhealthy_ms: Option<u32>,
        /// No beat this long: removed, ms [default: 30000].
        #[arg(long, default_value_t = 30000)]
        expire_ms: u32,
        #[arg(long)]
        hold: bool,
    },
    /// Deregister an instance.
    Deregister {
        #[command(flatten)]
        key: KeyArgs,
    },
    /// List a service's instances.
    List {
        #[command(flatten)]
        service: ServiceArgs,
        #[arg(long)]
        healthy_only: bool,
        #[arg(long)]
        json: bool,
    },
    /// List the services of a namespace.
    Services {
        #[arg(long, default_value = "public")]
        namespace: String,
        #[arg(long)]
        json: bool,
    },
    /// Print the id of the node responsible for ip:port, as the connected node sees it.
    Owner {
        #[arg(long)]
        ip: String,
        #[arg(long)]
        port: u16,
    },
    /// Show the connected node's view of the cluster.
    Cluster {
        #[arg(long)]
        json: bool,
    },
    /// Show the connected node's member list (as its config file gave it, the last SIGHUP
    /// included) and each member's state: up, down (not answering, or never reached) or left
    /// (it said it was leaving and has not come back).
    Members {
        #[arg(long)]
        json: bool,
    },
    /// Print every pushed snapshot of a service until interrupted.
    Watch {
        #[command(flatten)]
        service: ServiceArgs,
        #[arg(long)]
        json: bool,
    },
    /// Make entries of a node's token file (contacts no node).
    Token {
        #[command(subcommand)]
        action: TokenCommand,
    },
}

#[derive(ClapArgs, Debug)]
struct RightsArgs {
    /// Namespace the entry may read (query, list, subscribe); repeatable; "*" for all.
    #[arg(long = "read", value_name = "NAMESPACE")]
    read: Vec<String>,
    /// Namespace the entry may write (register, deregister, beat) and read; repeatable; "*"
    /// for all.
    #[arg(long = "write", value_name = "NAMESPACE")]
    write: Vec<String>,
    /// Append the entry to this token file (created with mode 600 if missing) instead of
    /// printing it; then SIGHUP the nodes to load it.
    #[arg(long)]
    file: Option<PathBuf>,
}

#[derive(Subcommand, Debug)]
enum TokenCommand {
    /// Mint a new token: prints the token (first line; shown only now, the file keeps only
    /// its SHA-256) and, without --file, its entry for the token file.
    New {
        /// The entry's name, for the node's logs.
        #[arg(long)]
        name: String,
        #[command(flatten)]
        rights: RightsArgs,
    },
    /// A Nacos user (username and password login): reads the password from the first line of
    /// standard input and prints the entry (its argon2id hash, never the password).
    User {
        #[arg(long)]
        username: String,
        #[command(flatten)]
        rights: RightsArgs,
    },
}

fn parse_meta(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_string(), v.to_string())),
        _ => Err(format!("expected key=value, got {s:?}")),
    }
}

fn main() {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => usage_error(e),
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    match rt.block_on(run(cli)) {
        Ok(()) => {}
        Err(e) => {
            eprintln!("distroctl: error: {e:#}");
            std::process::exit(1);
        }
    }
}

/// Help and version print as clap renders them; every other argument error is one line on
/// stderr (scripts read the first line), exit code 2.
fn usage_error(e: clap::Error) -> ! {
    use clap::error::ErrorKind;
    match e.kind() {
        ErrorKind::DisplayHelp | ErrorKind::DisplayVersion => e.exit(),
        ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand => {
            eprintln!("distroctl: error: no command given; see distroctl --help");
        }
        _ => {
            let text = e.render().to_string();
            let line: Vec<&str> = text
                .lines()
                .map(str::trim)
                .take_while(|l| !l.starts_with("Usage:") && !l.starts_with("For more information"))
                .filter(|l| !l.is_empty())
                .collect();
            let line = line.join(" ");
            let line = line.strip_prefix("error: ").unwrap_or(&line);
            eprintln!("distroctl: error: {line}; see distroctl --help");
        }
    }
    std::process::exit(2);
}

async fn connect(cli: &Cli, session_bound: bool) -> anyhow::Result<Client> {
    connect_with(cli, session_bound, true).await
}

/// A connection for status commands: those are answered also by a node that is not ready, so
/// this one connects to the first server that answers at all.
async fn connect_any(cli: &Cli) -> anyhow::Result<Client> {
    connect_with(cli, false, false).await
}

async fn connect_with(
    cli: &Cli,
    session_bound: bool,
    require_ready: bool,
) -> anyhow::Result<Client> {
    let mut cfg = ClientConfig::new(cli.server.iter().cloned());
    cfg.request_timeout = Duration::from_millis(cli.timeout_ms);
    cfg.connect_timeout = Duration::from_millis(cli.timeout_ms.min(2000));
    cfg.session_bound = session_bound;
    cfg.require_ready = require_ready;
    cfg.client_name = "distroctl".into();
    if let Some(t) = &cli.token {
        cfg = cfg.with_token(t.clone());
    }
    if let Some(ca) = &cli.tls_ca {
        cfg = cfg.with_tls(&distro::net::ClientTls::from_ca_file(ca)?);
    }
    match Client::connect(cfg).await {
        Ok(c) => Ok(c),
        // The nodes answered: refused, not unreachable.
        Err(e @ ClientError::Server { .. }) => Err(e).context("the nodes refused the connection"),
        Err(e) => Err(e).with_context(|| format!("cannot reach {}", cli.server.join(","))),
    }
}

/// `distroctl token ...`: makes a token file entry; prints it or appends it to the file.
fn token_command(action: &TokenCommand) -> anyhow::Result<()> {
    match action {
        TokenCommand::New { name, rights } => {
            let token = distro::auth::file::mint_token();
            let entry = distro::auth::file::token_entry(name, &token, &rights.read, &rights.write)?;
            println!("{token}");
            match &rights.file {
                Some(path) => append_entry(path, &entry),
                None => {
                    println!(
                        "# The token file entry of the token above (the file keeps only its hash):"
                    );
                    print!("{entry}");
                    Ok(())
                }
            }
        }
        TokenCommand::User { username, rights } => {
            let mut line = String::new();
            std::io::stdin()
                .read_line(&mut line)
                .context("reading the password from standard input")?;
            let password = line.strip_suffix('\n').unwrap_or(&line);
            let password = password.strip_suffix('\r').unwrap_or(password);
            if password.is_empty() {
                bail!("no password on standard input");
            }
            let entry =
                distro::auth::file::user_entry(username, password, &rights.read, &rights.write)?;
            match &rights.file {
                Some(path) => {
                    append_entry(path, &entry)?;
                    println!("user {username:?} added to {}", path.display());
                    Ok(())
                }
                None => {
                    print!("{entry}");
                    Ok(())
                }
            }
        }
    }
}

/// Appends `entry` to a token file, after checking that the file with it is still one a node
/// loads (a repeated name, say, is refused before anything is written).
fn append_entry(path: &Path, entry: &str) -> anyhow::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let existing = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    };
    let sep = if existing.is_empty() || existing.ends_with("\n\n") {
        ""
    } else if existing.ends_with('\n') {
        "\n"
    } else {
        "\n\n"
    };
    let combined = format!("{existing}{sep}{entry}");
    distro::auth::TokenSet::parse(&combined, &path.display().to_string())?;
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("opening {}", path.display()))?;
    f.write_all(format!("{sep}{entry}").as_bytes())
        .with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}

/// The lease of a registration: what the user gave, and for what they left out, Nacos's
/// defaults shortened to fit what they gave (an unhealthy-after within expire-after, a beat
/// interval of a third of unhealthy-after but not below the node's lease floor).
fn lease(beat_ms: Option<u32>, unhealthy_ms: Option<u32>, expire_ms: u32, floor_ms: u32) -> Lease {
    let d = Lease::default();
    let unhealthy_ms = unhealthy_ms.unwrap_or(d.unhealthy_ms.min(expire_ms));
    let beat_ms = beat_ms.unwrap_or_else(|| {
        d.beat_ms
            .min((unhealthy_ms / 3).max(floor_ms))
            .min(unhealthy_ms)
    });
    Lease {
        beat_ms,
        unhealthy_ms,
        expire_ms,
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    match &cli.command {
        Command::Token { action } => token_command(action),
        Command::Register {
            key,
            weight,
            meta,
            disabled,
            beat_ms,
            unhealthy_ms,
            expire_ms,
            hold,
        } => {
            let client = connect(&cli, *hold).await?;
            let inst = Instance {
                key: key.key(),
                weight: *weight,
                healthy: true,
                enabled: !*disabled,
                lease: lease(*beat_ms, *unhealthy_ms, *expire_ms, client.lease_floor_ms()),
                metadata: meta
                    .iter()
                    .map(|(k, v)| (k.as_str().into(), v.as_str().into()))
                    .collect(),
            };
            // Installed before the instance is announced, so that a signal sent as soon as the
            // "holding" line appears deregisters instead of killing the process.
            let stop = if *hold { Some(signals()?) } else { None };
            client.register(inst).await.context("register failed")?;
            if !*hold {
                println!(
                    "registered {}:{} in {}",
                    key.ip,
                    key.port,
                    key.service.name()
                );
                client.close();
                return Ok(());
            }
            println!(
                "registered {}:{} in {}; holding (SIGINT/SIGTERM deregisters)",
                key.ip,
                key.port,
                key.service.name()
            );
            std::io::stdout().flush()?;
            if let Some(stop) = stop {
                stop.await;
            }
            client
                .deregister(&key.key())
                .await
                .context("deregister failed")?;
            client.close();
            println!("deregistered {}:{}", key.ip, key.port);
            Ok(())
        }
        Command::Deregister { key } => {
            let client = connect(&cli, false).await?;
            let existed = client.deregister(&key.key()).await?;
            client.close();
            if existed {
                println!("deregistered {}:{}", key.ip, key.port);
            } else {
                println!("{}:{} was not registered", key.ip, key.port);
            }
            Ok(())
        }
        Command::List {
            service,
            healthy_only,
            json,
        } => {
            let client = connect(&cli, false).await?;
            let snap = client.query(&service.name(), *healthy_only).await?;
            client.close();
            if *json {
                println!("{}", serde_json::to_string(&InstanceJson::all(&snap))?);
            } else {
                print_instances(&snap);
            }
            Ok(())
        }
        Command::Services { namespace, json } => {
            let client = connect(&cli, false).await?;
            let list = client.all_services(namespace).await?;
            client.close();
            if *json {
                let items: Vec<ServiceJson> = list
                    .services
                    .iter()
                    .map(|s| ServiceJson::new(namespace, s))
                    .collect();
                println!("{}", serde_json::to_string(&items)?);
            } else {
                println!(
                    "{:<24} {:<32} {:>9} {:>8}",
                    "GROUP", "SERVICE", "INSTANCES", "HEALTHY"
                );
                for s in &list.services {
                    println!(
                        "{:<24} {:<32} {:>9} {:>8}",
                        s.group.as_str(),
                        s.service.as_str(),
                        s.instances,
                        s.healthy
                    );
                }
            }
            Ok(())
        }
        Command::Owner { ip, port } => {
            let client = connect_any(&cli).await?;
            let owner = client.owner(ip, *port).await?;
            client.close();
            println!("{owner}");
            Ok(())
        }
        Command::Members { json } => {
            let client = connect_any(&cli).await?;
            let s = client.cluster_status().await?;
            client.close();
            let members = ClusterJson::from(&s).members;
            if *json {
                println!("{}", serde_json::to_string(&members)?);
            } else {
                println!("{:>6} {:<40} {:<6}", "ID", "PEER ADDRESS", "STATE");
                for (i, m) in members.iter().enumerate() {
                    // The answering node comes first: itself.
                    let state = if i == 0 { "self" } else { m.state.as_str() };
                    println!("{:>6} {:<40} {:<6}", m.id, m.addr, state);
                }
            }
            Ok(())
        }
        Command::Cluster { json } => {
            let client = connect_any(&cli).await?;
            let s = client.cluster_status().await?;
            client.close();
            if *json {
                println!("{}", serde_json::to_string(&ClusterJson::from(&s))?);
            } else {
                println!(
                    "node {} ({}), {} instances",
                    s.node_id,
                    if s.ready { "ready" } else { "not ready" },
                    s.instances
                );
                println!(
                    "{:>6} {:<24} {:<6} {:>10}",
                    "ID", "PEER ADDRESS", "STATE", "OWNED"
                );
                for m in &s.members {
                    println!(
                        "{:>6} {:<24} {:<6} {:>10}",
                        m.id,
                        m.addr.as_str(),
                        m.state_name(),
                        m.owned
                    );
                }
            }
            Ok(())
        }
        Command::Watch { service, json } => {
            let client = connect(&cli, false).await?;
            let stop = signals()?;
            tokio::pin!(stop);
            let mut sub = client.subscribe(&service.name()).await?;
            let mut out = std::io::stdout();
            loop {
                let snap = tokio::select! {
                    s = sub.next() => s,
                    _ = &mut stop => { client.close(); return Ok(()); }
                };
                let Some(snap) = snap else {
                    bail!("subscription ended");
                };
                if *json {
                    writeln!(out, "{}", serde_json::to_string(&SnapshotJson::new(&snap))?)?;
                } else {
                    writeln!(out, "revision {}", snap.revision)?;
                    print_instances(&snap);
                }
                out.flush()?;
            }
        }
    }
}

fn print_instances(snap: &ServiceSnapshot) {
    println!(
        "{:<12} {:<40} {:>7} {:<8} {:<8} METADATA",
        "CLUSTER", "ADDRESS", "WEIGHT", "HEALTHY", "ENABLED"
    );
    for i in &snap.instances {
        let meta: Vec<String> = i.metadata.iter().map(|(k, v)| format!("{k}={v}")).collect();
        println!(
            "{:<12} {:<40} {:>7} {:<8} {:<8} {}",
            i.cluster.as_str(),
            format!("{}:{}", i.ip, i.port),
            i.weight,
            i.healthy,
            i.enabled,
            meta.join(",")
        );
    }
}

/// Installs the SIGINT and SIGTERM handlers now; the future completes on the first of them.
/// A signal that arrives before the future is awaited is not lost.
fn signals() -> anyhow::Result<impl std::future::Future<Output = ()>> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).context("install SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("install SIGINT handler")?;
    Ok(async move {
        tokio::select! {
            _ = int.recv() => {}
            _ = term.recv() => {}
        }
    })
}
