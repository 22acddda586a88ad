//! `scripts/local-cluster.sh` as README.md tells people to use it: `start 3` brings up three
//! real `distrod` processes on loopback that form one cluster (a write on one node is read on
//! another, the admin port of each shows every member up), `status` reports them, `stop`
//! ends them all (SIGTERM, exit) and `status` then says so. A second `start` while it runs is
//! refused. The ports are a free range found at run time, the state in the test's temp dir.

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

const NODES: u16 = 3;
const DISTROCTL: &str = env!("CARGO_BIN_EXE_distroctl");

/// A base port such that the 3 ports of each of [`NODES`] nodes are free now.
fn free_base() -> u16 {
    for _ in 0..50 {
        let probe = TcpListener::bind("127.0.0.1:0").unwrap();
        let base = probe.local_addr().unwrap().port();
        drop(probe);
        if base > 60_000 {
            continue;
        }
        let ports = (0..NODES).flat_map(|i| (0..3).map(move |k| base + 10 * i + k));
        if ports
            .map(|p| TcpListener::bind(("127.0.0.1", p)))
            .collect::<Result<Vec<_>, _>>()
            .is_ok()
        {
            return base;
        }
    }
    panic!("no free port range");
}

struct Script {
    base: u16,
    dir: PathBuf,
}

impl Script {
    fn run(&self, args: &[&str]) -> Output {
        let bin = PathBuf::from(env!("CARGO_BIN_EXE_distrod"));
        Command::new("bash")
            .arg(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/scripts/local-cluster.sh"
            ))
            .args(args)
            .env("DISTRO_BASE_PORT", self.base.to_string())
            .env("DISTRO_CLUSTER_DIR", &self.dir)
            .env("DISTRO_BIN", bin.parent().unwrap())
            .env_remove("DISTRO_CLUSTER_TOKEN")
            .output()
            .expect("run the script")
    }

    fn client(&self, node: u16) -> String {
        format!("127.0.0.1:{}", self.base + 10 * (node - 1))
    }
}

/// Stops whatever the test started, also when it fails.
impl Drop for Script {
    fn drop(&mut self) {
        let _ = self.run(&["stop"]);
    }
}

fn text(o: &Output) -> String {
    format!(
        "{}\nstdout:\n{}\nstderr:\n{}",
        o.status,
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn ctl(server: &str, args: &[&str]) -> Output {
    Command::new(DISTROCTL)
        .args(["--server", server])
        .args(args)
        .output()
        .unwrap()
}

#[test]
fn start_status_stop_a_three_node_cluster() {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("local-cluster");
    let _ = std::fs::remove_dir_all(&dir);
    let s = Script {
        base: free_base(),
        dir,
    };

    let out = s.run(&["start", "3"]);
    assert!(out.status.success(), "start: {}", text(&out));
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(stdout.contains("3 nodes ready"), "{stdout}");

    let out = s.run(&["status", "3"]);
    assert!(out.status.success(), "status: {}", text(&out));
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    assert_eq!(
        stdout.lines().filter(|l| l.ends_with(" ready")).count(),
        3,
        "{stdout}"
    );

    let again = s.run(&["start", "3"]);
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("runs already"));

    // One cluster: written on node 2, read on node 3; every member up as node 1 sees it.
    let out = ctl(
        &s.client(2),
        &[
            "register",
            "--service",
            "web",
            "--ip",
            "10.0.0.1",
            "--port",
            "80",
        ],
    );
    assert!(out.status.success(), "{}", text(&out));
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let out = ctl(&s.client(3), &["list", "--service", "web", "--json"]);
        let list: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
        if list.as_array().is_some_and(|a| a.len() == 1) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "node 3 never listed it: {}",
            text(&out)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let out = ctl(&s.client(1), &["cluster", "--json"]);
    let cluster: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let members = cluster["members"].as_array().unwrap();
    assert_eq!(members.len(), 3);
    assert!(members.iter().all(|m| m["state"] == "up"), "{cluster}");

    let pids: Vec<String> = (1..=NODES)
        .map(|i| std::fs::read_to_string(s.dir.join(format!("node-{i}.pid"))).unwrap())
        .collect();
    let out = s.run(&["stop"]);
    assert!(out.status.success(), "stop: {}", text(&out));
    for pid in pids {
        let alive = Command::new("kill")
            .args(["-0", pid.trim()])
            .status()
            .unwrap()
            .success();
        assert!(!alive, "pid {pid} still runs after stop");
    }
    let out = s.run(&["status", "3"]);
    assert_eq!(out.status.code(), Some(3), "{}", text(&out));
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    assert_eq!(
        stdout.lines().filter(|l| l.ends_with(" stopped")).count(),
        3,
        "{stdout}"
    );
    // Each node said goodbye in its log (SIGTERM: a graceful stop).
    for i in 1..=NODES {
        let log = std::fs::read_to_string(s.dir.join(format!("node-{i}.log"))).unwrap();
        assert!(log.contains("node stopped"), "node {i}:\n{log}");
    }
}
