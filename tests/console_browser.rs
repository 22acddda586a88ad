//! The admin console in a real headless browser: a three-node cluster with data and a token
//! file, Debian's `chromium` driven by `tests/console/check_console.js` (Node.js and
//! `playwright-core`). The page asks for a token, and once one is typed into its token field
//! (kept for the tab across a reload) shows the instances and every member up; an instance registered afterwards (on
//! another node) appears without a reload; the search box filters; metadata shows. The page's
//! screenshot is left at `target/tmp/console.png`.
//!
//! Needs `chromium` (`apt-get install chromium`) and Node.js with npm; `playwright-core` is
//! installed from npm into `$HOME/.cache/distro-console-test` on first run. Where chromium is
//! missing the test prints `skipped: ...` and passes, unless `DISTRO_BROWSER_TEST=require` (set
//! by `.ci/run`), which turns a skip into a failure.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use distro::model::Instance;
use distro::server::{Server, ServerHandle};
use tokio::net::TcpListener;

const CHROMIUM: &str = "/usr/bin/chromium";
const PLAYWRIGHT_VERSION: &str = "1.65.1";
/// The whole browser check, install excluded: the page polls every 2 s, each of its waits
/// allows 30 s.
const CHECK_DEADLINE: Duration = Duration::from_secs(120);

fn required() -> bool {
    std::env::var("DISTRO_BROWSER_TEST").is_ok_and(|v| v == "require")
}

/// Skips (or, when required, fails) with `reason`.
fn skip(reason: &str) {
    assert!(
        !required(),
        "DISTRO_BROWSER_TEST=require, but the browser test cannot run: {reason}"
    );
    println!("skipped: {reason}");
}

/// The folder of the `playwright-core` module, installed from npm if missing.
fn playwright() -> Result<PathBuf, String> {
    let home = std::env::var("HOME").map_err(|_| "HOME is not set".to_string())?;
    let dir = Path::new(&home).join(".cache/distro-console-test");
    let module = dir.join("node_modules/playwright-core");
    if module.join("package.json").exists() {
        return Ok(module);
    }
    std::fs::create_dir_all(&dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    let out = Command::new("npm")
        .args(["install", "--no-audit", "--no-fund", "--silent", "--prefix"])
        .arg(&dir)
        .arg(format!("playwright-core@{PLAYWRIGHT_VERSION}"))
        .output()
        .map_err(|e| format!("cannot run npm: {e}"))?;
    if !out.status.success() || !module.exists() {
        return Err(format!(
            "npm install playwright-core failed: {}",
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    Ok(module)
}

/// Three clustered nodes, each with an admin port and the token file `token_file`, on loopback.
async fn start_cluster(token_file: &Path) -> (Vec<ServerHandle>, Vec<SocketAddr>) {
    let mut listeners = Vec::new();
    for _ in 0..3 {
        listeners.push((
            TcpListener::bind("127.0.0.1:0").await.unwrap(),
            TcpListener::bind("127.0.0.1:0").await.unwrap(),
            TcpListener::bind("127.0.0.1:0").await.unwrap(),
        ));
    }
    let members: Vec<SocketAddr> = listeners
        .iter()
        .map(|(_, p, _)| p.local_addr().unwrap())
        .collect();
    let mut nodes = Vec::new();
    let mut admins = Vec::new();
    for (i, (client, peer, admin)) in listeners.into_iter().enumerate() {
        let mut cfg = common::test_config();
        cfg.node_id = i as u16 + 1;
        cfg.listen = client.local_addr().unwrap();
        cfg.peer_listen = peer.local_addr().unwrap();
        cfg.members = members.iter().map(|&a| a.into()).collect();
        cfg.cluster_token = Some("test-token-123".into());
        cfg.token_file = Some(token_file.to_path_buf());
        cfg.member_timeout_ms = 1_000;
        cfg.verify_interval_ms = 500;
        admins.push(admin.local_addr().unwrap());
        nodes.push(
            Server::from_listeners(cfg, client, Some(peer))
                .with_admin(admin)
                .spawn(),
        );
    }
    for n in &nodes {
        common::eventually("every node ready and every member up", async || {
            let s = n.node.cluster_status();
            (s.ready && s.members.iter().all(|m| m.up)).then_some(())
        })
        .await;
    }
    (nodes, admins)
}

fn instance(service: &str, ip: &str, port: u16, zone: &str) -> Instance {
    let mut i = common::inst(&common::name(service), ip, port);
    i.metadata = vec![
        ("zone".into(), zone.into()),
        ("version".into(), "1.4.2".into()),
    ];
    i
}

#[test]
fn the_console_shows_the_cluster_and_updates_live() {
    if !Path::new(CHROMIUM).exists() {
        return skip("chromium is not installed (apt-get install chromium)");
    }
    let module = match playwright() {
        Ok(m) => m,
        Err(reason) => return skip(&reason),
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let files =
        Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("console-{}", std::process::id()));
    std::fs::create_dir_all(&files).unwrap();
    let token_file = files.join("tokens.toml");
    let token = distro::auth::file::mint_token();
    std::fs::write(
        &token_file,
        distro::auth::file::token_entry("console", &token, &[], &["*".to_string()]).unwrap(),
    )
    .unwrap();
    let (nodes, admins) = rt.block_on(start_cluster(&token_file));
    let addrs: Vec<SocketAddr> = nodes.iter().map(|n| n.addr).collect();
    let connect = |addrs: &[SocketAddr]| {
        let cfg = common::client_config(addrs).with_token(&token);
        rt.block_on(distro::client::Client::connect(cfg))
            .expect("the client connects")
    };
    let client = connect(&addrs);
    let orders = [
        ("10.0.0.11", 8080, "a"),
        ("10.0.0.12", 8080, "b"),
        ("10.0.0.13", 8080, "c"),
    ];
    rt.block_on(async {
        for (ip, port, zone) in orders {
            client
                .register(instance("orders", ip, port, zone))
                .await
                .unwrap();
        }
        client
            .register(instance("payments", "10.0.1.21", 9000, "a"))
            .await
            .unwrap();
        client
            .register(instance("inventory", "10.0.2.31", 7000, "b"))
            .await
            .unwrap();
        let staging = distro::client::service_name("staging", "DEFAULT_GROUP", "orders");
        client
            .register(Instance::new(common::key(
                &staging, "DEFAULT", "10.1.0.1", 8080,
            )))
            .await
            .unwrap();
        // Node 1 (whose console is checked) holds them all.
        common::eventually("node 1 holds every instance", async || {
            (nodes[0].node.store.len() == 6).then_some(())
        })
        .await;
    });

    let screenshot = Path::new(env!("CARGO_TARGET_TMPDIR")).join("console.png");
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/console/check_console.js");
    let expect: Vec<String> = orders
        .iter()
        .map(|(ip, port, _)| format!("{ip}:{port}"))
        .collect();
    let mut child = Command::new("node")
        .arg(&script)
        .env("PLAYWRIGHT", &module)
        .env(
            "CONSOLE_URL",
            format!("http://{}/#ns=public&svc=DEFAULT_GROUP/orders", admins[0]),
        )
        .env("EXPECT", expect.join(","))
        .env("MEMBERS", "3")
        .env("TOKEN", &token)
        .env("SCREENSHOT", &screenshot)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run node");
    let mut stdin = Some(child.stdin.take().unwrap());
    let (tx, rx) = mpsc::channel();
    let stdout = BufReader::new(child.stdout.take().unwrap());
    std::thread::spawn(move || {
        for line in stdout.lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let stderr = child.stderr.take().unwrap();
    let errors = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = std::io::Read::read_to_string(&mut BufReader::new(stderr), &mut s);
        s
    });
    let deadline = std::time::Instant::now() + CHECK_DEADLINE;
    let mut saw = Vec::new();
    let mut ok = false;
    while let Ok(line) =
        rx.recv_timeout(deadline.saturating_duration_since(std::time::Instant::now()))
    {
        saw.push(line.clone());
        match line.as_str() {
            "WAITING_FOR_NEW" => {
                // Registered through node 3: node 1 learns it by sync, the page by its refresh.
                let late = connect(&[addrs[2]]);
                rt.block_on(late.register(instance("orders", "10.0.0.99", 8081, "b")))
                    .unwrap();
                late.close();
                let mut input = stdin.take().expect("asked once");
                writeln!(input, "NEW 10.0.0.99:8081").unwrap();
            }
            "OK" => {
                ok = true;
                break;
            }
            _ => {}
        }
    }
    if !ok {
        let _ = child.kill();
    }
    let status = child.wait().unwrap();
    let errors = errors.join().unwrap();
    assert!(
        ok && status.success(),
        "the browser check failed ({status}); it printed {saw:?}\n{errors}"
    );
    println!("screenshot: {}", screenshot.display());
    client.close();
    rt.block_on(async {
        for n in nodes {
            n.stop().await;
        }
    });
    let _ = std::fs::remove_dir_all(&files);
}
