//! A node that was paused (a stopped VM, swap, a debugger: here `SIGSTOP` on a real `distrod`)
//! must not wake up and expire everything it owns at once (design.md §3, "Mass expiry"): its
//! clients could not reach it either. The node notices the missed lease passes and grants every
//! owned instance one fresh lease instead; instances whose clients are gone still expire after
//! it.
//!
//! The simulation cannot pause a host (turmoil steps every host's clock together), so this test
//! runs a real process.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use distro::client::{Client, ClientConfig};
use distro::model::{Instance, InstanceKey, Lease, ServiceName};

const DISTROD: &str = env!("CARGO_BIN_EXE_distrod");

/// The test instance's lease: well under the pause, so that without the re-grant the first
/// lease pass after waking would expire it.
const LEASE: Lease = Lease {
    beat_ms: 500,
    unhealthy_ms: 1_500,
    expire_ms: 3_000,
};
const PAUSE: Duration = Duration::from_secs(5);

/// A `distrod` child, killed when dropped (also when the test fails).
struct Daemon {
    child: Child,
    addr: String,
}

impl Daemon {
    fn start() -> Daemon {
        let mut child = Command::new(DISTROD)
            .args([
                "--listen",
                "127.0.0.1:0",
                "--http",
                "off",
                "--lease-floor-ms",
                "500",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start distrod");
        // The node logs the address it bound ("distrod serving listen=127.0.0.1:PORT").
        let mut lines = BufReader::new(child.stderr.take().expect("piped stderr")).lines();
        let addr = loop {
            let line = lines
                .next()
                .expect("distrod exited before serving")
                .expect("read distrod's log");
            if let Some(rest) = line.split("listen=").nth(1) {
                break rest
                    .split_whitespace()
                    .next()
                    .unwrap_or_default()
                    .to_string();
            }
        };
        // Keep draining the log so that the node never blocks on a full pipe.
        std::thread::spawn(move || lines.for_each(drop));
        Daemon { child, addr }
    }

    fn signal(&self, sig: &str) {
        let ok = Command::new("kill")
            .args([sig, &self.child.id().to_string()])
            .status()
            .expect("run kill")
            .success();
        assert!(ok, "kill {sig} failed");
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn connect(addr: &str) -> Client {
    Client::connect(ClientConfig::new([addr]))
        .await
        .expect("connect to distrod")
}

/// Whether the instance is listed, and healthy, by a fresh client's query.
async fn listed(addr: &str, name: &ServiceName, port: u16) -> Option<bool> {
    let c = connect(addr).await;
    let snap = c.query(name, false).await.expect("query");
    c.close();
    snap.instances
        .iter()
        .find(|v| v.port == port)
        .map(|v| v.healthy)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_node_regrants_leases_instead_of_expiring_everything() {
    let node = Daemon::start();
    let name = distro::client::service_name("", "", "paused");
    let mut inst = Instance::new(InstanceKey {
        service: name.clone(),
        cluster: "DEFAULT".into(),
        ip: "10.0.0.1".into(),
        port: 7001,
    });
    inst.lease = LEASE;

    // Registered, not bound to the connection; then the client stops beating, as a client on
    // a paused machine would.
    let c = connect(&node.addr).await;
    c.register_with(vec![inst], false).await.expect("register");
    c.close();

    node.signal("-STOP");
    tokio::time::sleep(PAUSE).await;
    node.signal("-CONT");

    // Several lease passes later (one each 250 ms): still there and healthy — a fresh lease
    // counted from the wake-up, not an expiry for the 5 s the node was stopped.
    tokio::time::sleep(Duration::from_millis(1_000)).await;
    assert_eq!(
        listed(&node.addr, &name, 7001).await,
        Some(true),
        "the woken node expired (or lapsed) an instance whose lease it could not renew while \
         paused"
    );

    // One lease, not immortality: nobody beats it, so it expires after the re-granted lease.
    let deadline = tokio::time::Instant::now() + Duration::from_millis(LEASE.expire_ms as u64 * 2);
    while listed(&node.addr, &name, 7001).await.is_some() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the instance outlived its re-granted lease"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
