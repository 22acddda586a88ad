//! `--spawn`: a cluster of `distrod` processes on free loopback ports for the run, killed when
//! dropped (their logs kept unless the run succeeded).

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use distro::model::ClusterStatus;
use distro::wire::Message;

use crate::conn::{call, client_token, dial, no_push};

/// How long a spawned cluster may take to become ready.
const SPAWN_READY_TIMEOUT: Duration = Duration::from_secs(30);

/// Spawned `distrod` processes; dropping it kills them (also on error or panic).
pub(crate) struct SpawnedCluster {
    exe: PathBuf,
    /// Client and peer addresses of every member, started or not.
    pub(crate) client_addrs: Vec<String>,
    peer_addrs: Vec<String>,
    token: String,
    /// The token file the nodes load (with `--spawn-tokens`).
    token_file: Option<PathBuf>,
    /// The nodes' certificate, key and CA (with `--spawn-tls`).
    tls_files: Option<[PathBuf; 3]>,
    /// The started nodes, in member order (node i + 1 is `children[i]`).
    pub(crate) children: Vec<Child>,
    dir: PathBuf,
    logs: Vec<PathBuf>,
    /// Keep the nodes' logs (set unless the run succeeded).
    pub(crate) keep_logs: bool,
}

impl SpawnedCluster {
    /// A cluster of `n` members, of which all but the last `held_back` are started now (the
    /// others by [`SpawnedCluster::start_next`]); returns once the started ones serve.
    pub(crate) async fn start(
        n: usize,
        held_back: usize,
        distrod: Option<&Path>,
        with_tokens: bool,
        with_tls: bool,
    ) -> anyhow::Result<SpawnedCluster> {
        if n == 0 || n > 8 {
            bail!("--spawn must be 1..=8");
        }
        let exe = match distrod {
            Some(p) => p.to_path_buf(),
            None => std::env::current_exe()
                .context("cannot locate this executable")?
                .with_file_name("distrod"),
        };
        if !exe.is_file() {
            bail!(
                "{} not found; build it (cargo build --release --bins) or pass --distrod",
                exe.display()
            );
        }
        // Free ports: bind port 0, note the port, release it just before the nodes bind it.
        let mut ports = Vec::with_capacity(2 * n);
        {
            let mut held = Vec::new();
            for _ in 0..2 * n {
                let l =
                    std::net::TcpListener::bind("127.0.0.1:0").context("finding a free port")?;
                ports.push(l.local_addr()?.port());
                held.push(l);
            }
        }
        let client_addrs: Vec<String> = (0..n).map(|i| format!("127.0.0.1:{}", ports[i])).collect();
        let peer_addrs: Vec<String> = (0..n)
            .map(|i| format!("127.0.0.1:{}", ports[n + i]))
            .collect();
        let mut token = [0u8; 16];
        getrandom::fill(&mut token).map_err(|e| anyhow::anyhow!("random token: {e}"))?;
        let token: String = token.iter().map(|b| format!("{b:02x}")).collect();
        let dir = std::env::temp_dir().join(format!("distro-bench-{}", std::process::id()));
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let token_file = match (with_tokens, client_token()) {
            (true, Some(client_token)) => {
                let path = dir.join("tokens.toml");
                let entry = distro::auth::file::token_entry(
                    "distro-bench",
                    client_token,
                    &[],
                    &["*".to_string()],
                )?;
                std::fs::write(&path, entry)
                    .with_context(|| format!("writing {}", path.display()))?;
                Some(path)
            }
            _ => None,
        };
        let tls_files = if with_tls {
            let files = make_certs(&dir)?;
            crate::conn::use_tls(&files[2])?;
            Some(files)
        } else {
            None
        };
        let mut cluster = SpawnedCluster {
            exe,
            client_addrs,
            peer_addrs,
            token,
            token_file,
            tls_files,
            children: Vec::new(),
            dir: dir.clone(),
            logs: Vec::new(),
            keep_logs: true,
        };
        for _ in held_back..n {
            cluster.start_next()?;
        }
        cluster.wait_ready().await?;
        eprintln!(
            "distro-bench: {} distrod node(s) ready at {} (logs in {})",
            cluster.children.len(),
            cluster.started_addrs().join(","),
            dir.display()
        );
        Ok(cluster)
    }

    /// Starts the next member that is not running yet.
    pub(crate) fn start_next(&mut self) -> anyhow::Result<()> {
        let i = self.children.len();
        let n = self.client_addrs.len();
        if i == n {
            bail!("every member is running already");
        }
        let log = self.dir.join(format!("node-{}.log", i + 1));
        let mut cmd = Command::new(&self.exe);
        cmd.args(["--node-id", &(i + 1).to_string()])
            .args(["--listen", &self.client_addrs[i]])
            .args(["--peer-listen", &self.peer_addrs[i]])
            .args(["--log-level", "warn"])
            // Several nodes on one machine: the default admin port would collide.
            .args(["--http", "off"])
            .args(
                self.token_file
                    .iter()
                    .flat_map(|p| [std::ffi::OsStr::new("--token-file"), p.as_os_str()]),
            )
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(File::create(&log).with_context(|| format!("creating {}", log.display()))?);
        if let Some([cert, key, ca]) = &self.tls_files {
            cmd.arg("--tls-cert")
                .arg(cert)
                .arg("--tls-key")
                .arg(key)
                .arg("--tls-ca")
                .arg(ca);
        }
        if n > 1 {
            cmd.args(["--members", &self.peer_addrs.join(",")])
                // Through the environment, so the token does not show in process lists.
                .env("DISTRO_CLUSTER_TOKEN", &self.token);
        }
        let child = cmd
            .spawn()
            .with_context(|| format!("starting {}", self.exe.display()))?;
        self.children.push(child);
        self.logs.push(log);
        Ok(())
    }

    /// Client addresses of the started nodes.
    pub(crate) fn started_addrs(&self) -> Vec<String> {
        self.client_addrs[..self.children.len()].to_vec()
    }

    pub(crate) fn pids(&self) -> Vec<u32> {
        self.children.iter().map(|c| c.id()).collect()
    }

    /// Until every started node answers ClusterStatus as ready, seeing every started member up.
    async fn wait_ready(&mut self) -> anyhow::Result<()> {
        let deadline = Instant::now() + SPAWN_READY_TIMEOUT;
        let mut last = String::from("no answer yet");
        let started = self.children.len();
        loop {
            for (i, child) in self.children.iter_mut().enumerate() {
                if let Some(st) = child.try_wait()? {
                    let tail = std::fs::read_to_string(&self.logs[i]).unwrap_or_default();
                    let tail: Vec<&str> = tail.lines().rev().take(3).collect();
                    bail!(
                        "distrod node {} exited ({st}) during startup: {}",
                        i + 1,
                        tail.into_iter().rev().collect::<Vec<_>>().join(" | ")
                    );
                }
            }
            let mut ready = 0;
            for addr in self.started_addrs() {
                match node_status(&addr).await {
                    Ok(s) if s.ready && s.members.iter().filter(|m| m.up).count() >= started => {
                        ready += 1
                    }
                    Ok(_) => last = format!("{addr}: not ready or a member down"),
                    Err(e) => last = format!("{addr}: {e:#}"),
                }
            }
            if ready == started {
                return Ok(());
            }
            if Instant::now() >= deadline {
                bail!("the spawned cluster was not ready within {SPAWN_READY_TIMEOUT:?}: {last}");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// A node's view of the cluster, over a connection of its own.
pub(crate) async fn node_status(addr: &str) -> anyhow::Result<ClusterStatus> {
    let c = dial(
        addr,
        "distro-bench-probe",
        Duration::from_secs(1),
        no_push(),
    )
    .await?;
    let r = call(&c, &Message::ClusterStatus).await;
    c.close();
    match r {
        Ok(Message::ClusterStatusResult(s)) => Ok(s),
        Ok(other) => bail!("unexpected answer {:?}", other.opcode()),
        Err(e) => bail!("{e}"),
    }
}

impl Drop for SpawnedCluster {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
        }
        for c in &mut self.children {
            let _ = c.wait();
        }
        if self.keep_logs {
            eprintln!("distro-bench: node logs kept in {}", self.dir.display());
        } else {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// A CA and one certificate (for 127.0.0.1, server and client use) that every spawned node
/// presents: files `node.pem`, `node.key`, `ca.pem` in `dir`, returned in that order.
fn make_certs(dir: &Path) -> anyhow::Result<[PathBuf; 3]> {
    use rcgen::{
        BasicConstraints, CertificateParams, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
        KeyUsagePurpose,
    };
    let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let ca_key = KeyPair::generate()?;
    let ca = ca_params.self_signed(&ca_key)?;
    let mut params = CertificateParams::new(vec!["127.0.0.1".to_string()])?;
    params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    let key = KeyPair::generate()?;
    let cert = params.signed_by(&key, &Issuer::from_params(&ca_params, &ca_key))?;
    let files = [
        dir.join("node.pem"),
        dir.join("node.key"),
        dir.join("ca.pem"),
    ];
    for (path, pem) in files
        .iter()
        .zip([cert.pem(), key.serialize_pem(), ca.pem()])
    {
        std::fs::write(path, pem).with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(files)
}
