//! The published Nacos clients against a 3-node cluster of real `distrod` processes started with
//! `--nacos-listen`: npm `nacos` (HTTP v1), nacos-sdk-python's v1 `NacosClient` (HTTP) and v2
//! API (gRPC), and the `nacos-sdk` crate (gRPC). Each client registers at one node and reads and
//! subscribes at another, then deregisters (`roundtrip`); then each registers and is killed
//! (`hold`), and its instance must go — seen through the native SDK at a third node, so that
//! the Nacos instances are shown to be ordinary instances of the registry. A second cluster has a
//! token file: each client, given a username and password (`NACOS_USERNAME`, `NACOS_PASSWORD`
//! in its environment), does its `roundtrip` there, and with a wrong password fails with an
//! error and registers nothing (docs/security.md §4.1).
//!
//! The clients are installed by `tests/nacos_clients/install.sh` (`.ci/run` calls it) into
//! `$DISTRO_NACOS_CLIENTS_DIR` (default `~/.cache/distro-nacos-clients`). Without them the test
//! is skipped, unless `DISTRO_NACOS_CLIENTS=require` (CI), where their absence fails it.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use distro::client::{Client, ClientConfig};
use distro::model::{ServiceName, ServiceSnapshot};
use serde_json::Value;

const DISTROD: &str = env!("CARGO_BIN_EXE_distrod");
/// The longest any one wait of this test takes (a loaded machine is slow; nothing here asserts
/// speed).
const WAIT: Duration = Duration::from_secs(60);
/// The per-step timeout given to the drivers (they bound their whole run at ten times it).
const DRIVER_TIMEOUT_S: &str = "30";

/// Where install.sh put the clients.
fn clients_dir() -> PathBuf {
    match std::env::var_os("DISTRO_NACOS_CLIENTS_DIR") {
        Some(d) => PathBuf::from(d),
        None => PathBuf::from(std::env::var_os("HOME").expect("HOME is set"))
            .join(".cache/distro-nacos-clients"),
    }
}

fn drivers_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/nacos_clients")
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Kind {
    Node,
    PyV1,
    PyV2,
    Rust,
}

impl Kind {
    const ALL: [Kind; 4] = [Kind::Node, Kind::PyV1, Kind::PyV2, Kind::Rust];

    fn name(self) -> &'static str {
        match self {
            Kind::Node => "node",
            Kind::PyV1 => "python-v1",
            Kind::PyV2 => "python-v2",
            Kind::Rust => "rust",
        }
    }

    /// The file that must exist for the client to be installed.
    fn installed(self, dir: &Path) -> PathBuf {
        match self {
            Kind::Node => dir.join("node/node_modules/nacos/package.json"),
            Kind::PyV1 => dir.join("py-v1/venv/bin/python"),
            Kind::PyV2 => dir.join("py-v2/venv/bin/python"),
            Kind::Rust => dir.join("rust-target/debug/nacos-client-rust"),
        }
    }

    fn command(self, dir: &Path) -> Command {
        let drivers = drivers_dir();
        match self {
            Kind::Node => {
                let mut c = Command::new("node");
                c.arg(drivers.join("node_client.js"))
                    .env("NACOS_NODE_MODULES", dir.join("node/node_modules"));
                c
            }
            Kind::PyV1 => {
                let mut c = Command::new(dir.join("py-v1/venv/bin/python"));
                c.arg(drivers.join("python_v1.py"));
                c
            }
            Kind::PyV2 => {
                let mut c = Command::new(dir.join("py-v2/venv/bin/python"));
                c.arg(drivers.join("python_v2.py"));
                c
            }
            Kind::Rust => Command::new(dir.join("rust-target/debug/nacos-client-rust")),
        }
    }

    /// Connection-bound (gRPC) clients' instances turn unhealthy the moment the connection
    /// drops; HTTP clients' live on their lease.
    fn is_grpc(self) -> bool {
        matches!(self, Kind::PyV2 | Kind::Rust)
    }

    /// The lease its `hold` instance asks for through the `preserved.*` metadata. The Node
    /// client's first beat comes 10 s after it starts, so its unhealthy-after stays above that
    /// (docs/nacos.md §8).
    fn hold_lease(self) -> &'static str {
        match self {
            Kind::Node => "1000,15000,16000",
            _ => "1000,3000,4000",
        }
    }
}

/// A port whose port + 1000 was free too, for a node's Nacos listeners.
fn free_nacos_port() -> u16 {
    for _ in 0..100 {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let p = l.local_addr().unwrap().port();
        if p > 64_000 {
            continue;
        }
        if TcpListener::bind(("127.0.0.1", p + 1000)).is_ok() {
            return p;
        }
    }
    panic!("no free port pair for the Nacos listeners");
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A `distrod` process, killed when dropped.
struct Distrod {
    child: Child,
    client: SocketAddr,
    nacos: SocketAddr,
}

impl Drop for Distrod {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_cluster(extra: &[&str]) -> Vec<Distrod> {
    let peers: Vec<u16> = (0..3).map(|_| free_port()).collect();
    let members = peers
        .iter()
        .map(|p| format!("127.0.0.1:{p}"))
        .collect::<Vec<_>>()
        .join(",");
    (0..3)
        .map(|i| {
            let client: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
            let nacos: SocketAddr = format!("127.0.0.1:{}", free_nacos_port()).parse().unwrap();
            let child = Command::new(DISTROD)
                .args(["--node-id", &(i + 1).to_string()])
                .args(["--listen", &client.to_string()])
                .args(["--peer-listen", &format!("127.0.0.1:{}", peers[i])])
                .args(["--members", &members])
                .args(["--nacos-listen", &nacos.to_string()])
                .args(["--http", "off"])
                .args(["--lease-floor-ms", "100"])
                .args(["--member-timeout-ms", "1000"])
                .args(["--verify-interval-ms", "1000"])
                .args(["--log-level", "warn"])
                .args(extra)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::inherit())
                .spawn()
                .expect("start distrod");
            Distrod {
                child,
                client,
                nacos,
            }
        })
        .collect()
}

/// A plain HTTP/1.1 GET; the status and body.
fn http_get(addr: SocketAddr, path: &str) -> std::io::Result<(u16, String)> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )?;
    let mut out = String::new();
    s.read_to_string(&mut out)?;
    let status = out
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = out
        .split_once("\r\n\r\n")
        .map_or("", |(_, b)| b)
        .to_string();
    Ok((status, body))
}

fn until(what: &str, mut f: impl FnMut() -> Result<(), String>) {
    let deadline = Instant::now() + WAIT;
    loop {
        match f() {
            Ok(()) => return,
            Err(last) if Instant::now() > deadline => panic!("{what}: not within {WAIT:?}: {last}"),
            Err(_) => std::thread::sleep(Duration::from_millis(200)),
        }
    }
}

/// Every node answers readiness and sees the other two up. `auth` is the query string of the
/// member list's request (credentials, on nodes with a token file).
fn wait_formed(nodes: &[Distrod], auth: &str) {
    for n in nodes {
        until("node ready", || {
            match http_get(n.nacos, "/nacos/v1/console/health/readiness") {
                Ok((200, _)) => {}
                other => return Err(format!("{other:?}")),
            }
            let (_, body) = http_get(n.nacos, &format!("/nacos/v1/core/cluster/nodes{auth}"))
                .map_err(|e| e.to_string())?;
            let v: Value = serde_json::from_str(&body).map_err(|e| e.to_string())?;
            let up = v["data"]
                .as_array()
                .map_or(0, |m| m.iter().filter(|m| m["state"] == "UP").count());
            if up == 3 {
                Ok(())
            } else {
                Err(format!("{up} members up: {body}"))
            }
        });
    }
}

/// Username and password a driver logs in with (`None`: it is configured without).
type Creds<'a> = Option<(&'a str, &'a str)>;

/// Runs a driver's `roundtrip` on `service` to its end: its output, and its steps.
fn run_roundtrip(
    kind: Kind,
    dir: &Path,
    (write, read): (SocketAddr, SocketAddr),
    service: &str,
    port: u16,
    creds: Creds,
) -> (std::process::Output, Vec<Value>) {
    let mut cmd = kind.command(dir);
    cmd.arg("roundtrip")
        .args(["--write", &write.to_string(), "--read", &read.to_string()])
        .args(["--service", service])
        .args(["--port", &port.to_string()])
        .args(["--timeout-s", DRIVER_TIMEOUT_S])
        .stdin(Stdio::null());
    if let Some((user, password)) = creds {
        cmd.env("NACOS_USERNAME", user)
            .env("NACOS_PASSWORD", password);
    }
    let out = cmd.output().expect("run the driver");
    let steps: Vec<Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    (out, steps)
}

/// Runs a driver's `roundtrip` to its end; panics with its output unless every step succeeded.
fn roundtrip(kind: Kind, dir: &Path, write: SocketAddr, read: SocketAddr, port: u16, creds: Creds) {
    let prefix = if creds.is_some() { "rt-auth" } else { "rt" };
    let (out, steps) = run_roundtrip(
        kind,
        dir,
        (write, read),
        &format!("{prefix}-{}", kind.name()),
        port,
        creds,
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    let done = steps.iter().any(|s| s["step"] == "done" && s["ok"] == true);
    let failed = steps.iter().find(|s| s["ok"] == false);
    assert!(
        out.status.success() && done && failed.is_none(),
        "{} roundtrip failed ({}):\n{stdout}\n--- stderr (tail)\n{}",
        kind.name(),
        out.status,
        tail(&String::from_utf8_lossy(&out.stderr), 40)
    );
    // What the reading node answered is Nacos-shaped.
    let read_step = steps
        .iter()
        .find(|s| s["step"] == "read")
        .expect("a read step");
    assert_eq!(read_step["healthy"], true, "{read_step}");
    assert_eq!(read_step["ephemeral"], true, "{read_step}");
    assert_eq!(read_step["cluster"], "DEFAULT", "{read_step}");
    let service = format!("DEFAULT_GROUP@@{prefix}-{}", kind.name());
    assert_eq!(read_step["service_name"], service.as_str(), "{read_step}");
    assert_eq!(
        read_step["instance_id"],
        format!("127.0.0.1#{port}#DEFAULT#{service}").as_str(),
        "{read_step}"
    );
    assert_eq!(read_step["metadata_client"], kind.name(), "{read_step}");
}

fn tail(s: &str, n: usize) -> String {
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// The instance `port` of `name` as the native SDK reads it at a node: `None` if absent, else
/// whether it is healthy.
fn native_health(
    rt: &tokio::runtime::Runtime,
    client: &Client,
    name: &ServiceName,
    port: u16,
) -> Result<Option<bool>, String> {
    let snap: ServiceSnapshot = rt
        .block_on(client.query(name, false))
        .map_err(|e| e.to_string())?;
    Ok(snap
        .instances
        .iter()
        .find(|i| i.port == port && &*i.ip == "127.0.0.1")
        .map(|i| i.healthy))
}

/// Runs a driver's `hold` (registering at `write`), sees the instance healthy through the
/// native SDK at another node, kills the driver and sees the instance go there too: at once
/// unhealthy for a gRPC client (its connection was its liveness), then removed at the end of
/// its lease.
fn hold_and_kill(
    kind: Kind,
    dir: &Path,
    write: SocketAddr,
    rt: &tokio::runtime::Runtime,
    check: &Client,
    port: u16,
) {
    let service = format!("hold-{}", kind.name());
    let mut child = kind
        .command(dir)
        .arg("hold")
        .args(["--write", &write.to_string()])
        .args(["--service", &service])
        .args(["--port", &port.to_string()])
        .args(["--lease-ms", kind.hold_lease()])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start the driver");
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let registered = loop {
        match rx.recv_timeout(WAIT) {
            Ok(line) => {
                let v: Value = serde_json::from_str(&line).unwrap_or(Value::Null);
                if v["ok"] == false {
                    let _ = child.kill();
                    panic!("{} hold failed: {line}", kind.name());
                }
                if v["step"] == "registered" {
                    break v;
                }
            }
            Err(_) => {
                let _ = child.kill();
                let mut err = String::new();
                let _ = child.stderr.take().unwrap().read_to_string(&mut err);
                panic!("{} hold did not register:\n{}", kind.name(), tail(&err, 40));
            }
        }
    };
    assert_eq!(registered["port"], port);
    let name = ServiceName::new("public", "DEFAULT_GROUP", &service);
    until(
        &format!("{} instance healthy at another node", kind.name()),
        || match native_health(rt, check, &name, port)? {
            Some(true) => Ok(()),
            other => Err(format!("{other:?}")),
        },
    );
    // A crash: no deregistration.
    child.kill().expect("kill the driver");
    let _ = child.wait();
    let killed = Instant::now();
    if kind.is_grpc() {
        until(
            &format!(
                "{} instance unhealthy once its connection dropped",
                kind.name()
            ),
            || match native_health(rt, check, &name, port)? {
                Some(true) => Err("still healthy".into()),
                _ => Ok(()),
            },
        );
    }
    until(
        &format!("{} instance removed at its lease's end", kind.name()),
        || match native_health(rt, check, &name, port)? {
            None => Ok(()),
            Some(h) => Err(format!("still there (healthy: {h})")),
        },
    );
    eprintln!(
        "{}: instance gone {:?} after the client was killed",
        kind.name(),
        killed.elapsed()
    );
}

/// Whether every client is installed; if not, the test is skipped (false), unless
/// `DISTRO_NACOS_CLIENTS=require`, where it fails.
fn clients_installed(dir: &Path) -> bool {
    let missing: Vec<&str> = Kind::ALL
        .iter()
        .filter(|k| !k.installed(dir).exists())
        .map(|k| k.name())
        .collect();
    if missing.is_empty() {
        return true;
    }
    let required = std::env::var("DISTRO_NACOS_CLIENTS").is_ok_and(|v| v == "require");
    assert!(
        !required,
        "Nacos clients {missing:?} are not installed in {} (run tests/nacos_clients/install.sh)",
        dir.display()
    );
    eprintln!(
        "skipped: Nacos clients {missing:?} not installed in {} (tests/nacos_clients/install.sh \
         installs them; DISTRO_NACOS_CLIENTS=require makes this a failure)",
        dir.display()
    );
    false
}

#[test]
fn published_nacos_clients_work_against_a_distro_cluster() {
    let dir = clients_dir();
    if !clients_installed(&dir) {
        return;
    }

    let nodes = start_cluster(&[]);
    wait_formed(&nodes, "");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let native = |i: usize| {
        let mut cfg = ClientConfig::new([nodes[i].client.to_string()]);
        cfg.request_timeout = Duration::from_secs(5);
        rt.block_on(Client::connect(cfg))
            .expect("native client connects")
    };
    let checkers = [native(0), native(1), native(2)];

    // Every client at once: register at node a, read and subscribe at node b; then hold at
    // node a and be killed, seen from node c.
    std::thread::scope(|s| {
        for (i, kind) in Kind::ALL.into_iter().enumerate() {
            let (a, b, c) = (i % 3, (i + 1) % 3, (i + 2) % 3);
            let (dir, nodes, rt, check) = (&dir, &nodes, &rt, &checkers[c]);
            s.spawn(move || {
                let base = 30_000 + 100 * i as u16;
                roundtrip(kind, dir, nodes[a].nacos, nodes[b].nacos, base, None);
                hold_and_kill(kind, dir, nodes[a].nacos, rt, check, base + 50);
            });
        }
    });
    for c in &checkers {
        c.close();
    }
}

/// The clients configured with a username and password against a cluster whose nodes have a
/// token file (docs/security.md §4.1): with the right password each one's `roundtrip` works
/// (the Python and Rust clients log in and send an accessToken; the Node client sends the pair
/// with every request); with a wrong one each fails with an error, and nothing of it is
/// registered.
#[test]
fn published_nacos_clients_log_in_to_a_cluster_with_tokens() {
    let dir = clients_dir();
    if !clients_installed(&dir) {
        return;
    }
    const USER: &str = "nacos";
    const PASSWORD: &str = "the clients' test password";
    let files =
        std::env::temp_dir().join(format!("distro-nacos-clients-auth-{}", std::process::id()));
    std::fs::create_dir_all(&files).unwrap();
    let token_file = files.join("tokens.toml");
    let checker_token = distro::auth::file::mint_token();
    let entries = [
        distro::auth::file::user_entry(USER, PASSWORD, &[], &["public".to_string()]).unwrap(),
        distro::auth::file::token_entry("checker", &checker_token, &["*".to_string()], &[])
            .unwrap(),
    ]
    .join("\n");
    std::fs::write(&token_file, entries).unwrap();
    // As docs/security.md asks (the node warns otherwise).
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&token_file, std::fs::Permissions::from_mode(0o600)).unwrap();
    let nodes = start_cluster(&[
        "--token-file",
        token_file.to_str().unwrap(),
        "--cluster-token",
        "the clients' test cluster token",
    ]);
    wait_formed(
        &nodes,
        &format!(
            "?username={USER}&password={}",
            PASSWORD.replace(' ', "%20").replace('\'', "%27")
        ),
    );
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let checker = {
        let mut cfg = ClientConfig::new([nodes[0].client.to_string()]).with_token(&checker_token);
        cfg.request_timeout = Duration::from_secs(5);
        rt.block_on(Client::connect(cfg))
            .expect("native client connects")
    };

    std::thread::scope(|s| {
        for (i, kind) in Kind::ALL.into_iter().enumerate() {
            let (a, b) = (i % 3, (i + 1) % 3);
            let (dir, nodes, rt, checker) = (&dir, &nodes, &rt, &checker);
            s.spawn(move || {
                let base = 32_000 + 100 * i as u16;
                roundtrip(
                    kind,
                    dir,
                    nodes[a].nacos,
                    nodes[b].nacos,
                    base,
                    Some((USER, PASSWORD)),
                );
                let service = format!("wrong-{}", kind.name());
                let (out, steps) = run_roundtrip(
                    kind,
                    dir,
                    (nodes[a].nacos, nodes[b].nacos),
                    &service,
                    base + 50,
                    Some((USER, "not the password")),
                );
                let stdout = String::from_utf8_lossy(&out.stdout);
                assert!(
                    !out.status.success()
                        && steps.iter().any(|s| s["ok"] == false)
                        && !steps
                            .iter()
                            .any(|s| s["step"] == "register" && s["ok"] == true),
                    "{} with a wrong password did not fail at its registration:\n{stdout}",
                    kind.name()
                );
                let failed = steps.iter().find(|s| s["ok"] == false);
                eprintln!("{}: a wrong password fails: {failed:?}", kind.name());
                let name = ServiceName::new("public", "DEFAULT_GROUP", &service);
                let snap = rt
                    .block_on(checker.query(&name, false))
                    .expect("the checker reads");
                assert!(
                    snap.instances.is_empty(),
                    "{} with a wrong password registered {:?}",
                    kind.name(),
                    snap.instances
                );
            });
        }
    });
    checker.close();
    let _ = std::fs::remove_dir_all(&files);
}
