//! `distrod` as an operator starts it: the config file (the shipped example runs; flags override
//! the file; unknown keys, wrong types and out-of-range values are refused with the key, the
//! file position and exit code 2), the log formats and levels, and SIGTERM.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

const DISTROD: &str = env!("CARGO_BIN_EXE_distrod");
/// Longest a node may take to start and log (debug build, loaded machine).
const START_DEADLINE: Duration = Duration::from_secs(30);

fn example() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("distrod.example.toml")
}

/// A config file with `text` in the test's temp dir.
fn config_file(name: &str, text: &str) -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("distrod-config");
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

/// Runs distrod to its exit (it must not start): its exit code and stderr.
fn refused(args: &[&str]) -> (i32, String) {
    let out = Command::new(DISTROD)
        .args(args)
        .env_remove("RUST_LOG")
        .output()
        .expect("run distrod");
    (
        out.status.code().expect("exited"),
        String::from_utf8(out.stderr).unwrap(),
    )
}

/// A running distrod whose log lines arrive on a channel; killed when dropped.
struct Running {
    child: Child,
    lines: mpsc::Receiver<String>,
}

impl Running {
    fn start(args: &[&str], env: &[(&str, &str)]) -> Running {
        let mut cmd = Command::new(DISTROD);
        cmd.args(args)
            .env_remove("RUST_LOG")
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("start distrod");
        let (tx, lines) = mpsc::channel();
        let stderr = BufReader::new(child.stderr.take().unwrap());
        std::thread::spawn(move || {
            for l in stderr.lines().map_while(Result::ok) {
                let _ = tx.send(l);
            }
        });
        Running { child, lines }
    }

    /// The first log line containing `what`; panics with the lines seen if none comes.
    fn wait_for(&self, what: &str) -> String {
        let deadline = std::time::Instant::now() + START_DEADLINE;
        let mut seen = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(l) if l.contains(what) => return l,
                Ok(l) => seen.push(l),
                Err(_) => panic!("no log line with {what:?}; saw {seen:#?}"),
            }
        }
    }

    /// Every line logged within `d`.
    fn lines_for(&self, d: Duration) -> Vec<String> {
        let deadline = std::time::Instant::now() + d;
        let mut out = Vec::new();
        while let Ok(l) = self
            .lines
            .recv_timeout(deadline.saturating_duration_since(std::time::Instant::now()))
        {
            out.push(l);
        }
        out
    }

    /// SIGTERM; the exit code.
    fn terminate(mut self) -> i32 {
        let ok = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .unwrap()
            .success();
        assert!(ok);
        let deadline = std::time::Instant::now() + START_DEADLINE;
        loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                return s.code().expect("exited, not killed");
            }
            assert!(std::time::Instant::now() < deadline, "distrod did not exit");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

const FREE_PORTS: [&str; 4] = ["--listen", "127.0.0.1:0", "--http", "127.0.0.1:0"];

#[test]
fn the_shipped_example_runs_and_sigterm_exits_0() {
    let example = example();
    let mut args = vec!["--config", example.to_str().unwrap()];
    args.extend(FREE_PORTS);
    let node = Running::start(&args, &[]);
    let line = node.wait_for("distrod serving");
    assert!(line.contains("http=127.0.0.1:"), "{line}");
    assert_eq!(node.terminate(), 0);
}

#[test]
fn bad_files_are_refused_with_the_key_and_its_position() {
    let cases = [
        (
            "unknown.toml",
            "node_id = 2\n\nmax_conections = 10\n",
            ":3:1: key `max_conections`: unknown field `max_conections`",
        ),
        (
            "type.toml",
            "# a comment\nlease_floor_ms = \"1s\"\n",
            ":2:18: key `lease_floor_ms`: invalid type: string \"1s\", expected u32",
        ),
        (
            "range.toml",
            "node_id = 3\nverify_interval_ms = 50\n",
            ":2:22: key `verify_interval_ms`: must be 100..=600000",
        ),
        (
            "member.toml",
            "members = [\n  \"127.0.0.1:8859\",\n  \"10.0.0.2\",\n]\n",
            ":3:3: key `members`: expected IP:PORT or HOST:PORT, got \"10.0.0.2\": no port",
        ),
        ("syntax.toml", "listen = \n", ":1:10: "),
        (
            "level.toml",
            "log_level = \"info,distro=loud\"\n",
            ":1:13: key `log_level`: \"info,distro=loud\" is not a log filter",
        ),
    ];
    for (name, text, want) in cases {
        let path = config_file(name, text);
        let (code, stderr) = refused(&["--config", path.to_str().unwrap()]);
        assert_eq!(code, 2, "{name}: {stderr}");
        assert_eq!(stderr.lines().count(), 1, "{name}: one line: {stderr}");
        assert!(
            stderr.starts_with(&format!("distrod: error: config file {}", path.display())),
            "{name}: {stderr}"
        );
        assert!(stderr.contains(want), "{name}: want {want:?} in {stderr}");
    }
    let (code, stderr) = refused(&["--config", "/nonexistent/distrod.toml"]);
    assert_eq!(code, 2);
    assert!(
        stderr.contains("cannot read config file /nonexistent/distrod.toml"),
        "{stderr}"
    );
}

#[test]
fn flags_override_the_file_and_bad_flags_are_named() {
    // The file's value is out of range; the flag replaces it, and the node starts.
    let path = config_file("override.toml", "lease_floor_ms = 5\nhttp = \"off\"\n");
    let mut args = vec![
        "--config",
        path.to_str().unwrap(),
        "--lease-floor-ms",
        "1000",
    ];
    args.extend(&FREE_PORTS[..2]);
    let node = Running::start(&args, &[]);
    let line = node.wait_for("distrod serving");
    assert!(
        line.contains("http=off"),
        "the file's http = \"off\" holds: {line}"
    );
    assert_eq!(node.terminate(), 0);

    let (code, stderr) = refused(&["--lease-floor-ms", "5"]);
    assert_eq!(code, 2);
    assert_eq!(
        stderr.trim(),
        "distrod: error: --lease-floor-ms: must be at least 100"
    );
    let (code, stderr) = refused(&["--http", "everywhere"]);
    assert_eq!(code, 2);
    assert!(
        stderr.contains("expected an address such as 127.0.0.1:8860"),
        "{stderr}"
    );
    let (code, stderr) = refused(&["--log-format", "xml"]);
    assert_eq!(code, 2);
    assert!(stderr.contains("expected text or json"), "{stderr}");
}

#[test]
fn logs_are_text_or_json_at_the_level_asked_for() {
    // JSON: one object per line, with the level and the message's fields.
    let mut args = vec!["--log-format", "json"];
    args.extend(FREE_PORTS);
    let node = Running::start(&args, &[]);
    let line = node.wait_for("distrod serving");
    let v: serde_json::Value = serde_json::from_str(&line).expect("a JSON log line");
    assert_eq!(v["level"], "INFO");
    assert_eq!(v["fields"]["message"], "distrod serving");
    assert!(
        v["fields"]["listen"]
            .as_str()
            .unwrap()
            .starts_with("127.0.0.1:")
    );
    assert!(v["timestamp"].is_string());
    assert_eq!(node.terminate(), 0);

    // RUST_LOG sets the level when --log-level does not: at warn, a start logs nothing.
    let node = Running::start(&FREE_PORTS, &[("RUST_LOG", "warn")]);
    let lines = node.lines_for(Duration::from_secs(2));
    assert!(lines.is_empty(), "logged at warn: {lines:#?}");
    drop(node);

    // --log-level wins over RUST_LOG; the text format is one readable line per event.
    let mut args = vec!["--log-level", "info"];
    args.extend(FREE_PORTS);
    let node = Running::start(&args, &[("RUST_LOG", "error")]);
    let line = node.wait_for("distrod serving");
    assert!(
        line.contains(" INFO ") && line.contains("listen=127.0.0.1:"),
        "{line}"
    );
    assert_eq!(node.terminate(), 0);
}

/// Free loopback ports now (bound, then released).
fn free_ports(n: usize) -> Vec<u16> {
    let held: Vec<std::net::TcpListener> = (0..n)
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0").unwrap())
        .collect();
    held.iter()
        .map(|l| l.local_addr().unwrap().port())
        .collect()
}

/// Members given by host name (as a Kubernetes StatefulSet's pods are: deploy/), each node
/// finding itself in the list by `--peer-advertise`, listening on a wildcard peer address:
/// the two nodes form one cluster and each shows the other by its name.
#[test]
fn members_given_by_host_name_form_a_cluster() {
    let ports = free_ports(4);
    let (peer1, peer2) = (ports[0], ports[1]);
    let members = format!("localhost:{peer1},localhost:{peer2}");
    let start = |id: u16, peer: u16, client: u16| {
        let args = [
            "--node-id".to_string(),
            id.to_string(),
            "--listen".into(),
            format!("127.0.0.1:{client}"),
            "--peer-listen".into(),
            format!("0.0.0.0:{peer}"),
            "--peer-advertise".into(),
            format!("localhost:{peer}"),
            "--members".into(),
            members.clone(),
            "--member-timeout-ms".into(),
            "1000".into(),
            "--http".into(),
            "off".into(),
        ];
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        Running::start(&args, &[("DISTRO_CLUSTER_TOKEN", "test-token-123")])
    };
    let a = start(1, peer1, ports[2]);
    let b = start(2, peer2, ports[3]);
    a.wait_for("distrod serving");
    b.wait_for("distrod serving");
    let deadline = std::time::Instant::now() + START_DEADLINE;
    loop {
        let out = Command::new(env!("CARGO_BIN_EXE_distroctl"))
            .args([
                "--server",
                &format!("127.0.0.1:{}", ports[2]),
                "cluster",
                "--json",
            ])
            .output()
            .unwrap();
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
        let up = v["members"]
            .as_array()
            .map(|m| m.iter().filter(|m| m["state"] == "up").count());
        if v["ready"] == true && up == Some(2) {
            let addrs: Vec<&str> = v["members"]
                .as_array()
                .unwrap()
                .iter()
                .map(|m| m["addr"].as_str().unwrap())
                .collect();
            assert_eq!(
                addrs,
                [format!("localhost:{peer1}"), format!("localhost:{peer2}")]
            );
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no cluster formed: {v}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(a.terminate(), 0);
    assert_eq!(b.terminate(), 0);
}

/// The Kubernetes manifest's config (deploy/kubernetes/distro.yaml, its ConfigMap) is one that
/// distrod accepts for every pod of the StatefulSet, with the node id and advertised name the
/// pod's command gives it, and its member list has as many entries as the StatefulSet has
/// replicas.
#[test]
fn the_kubernetes_manifest_configures_every_pod_validly() {
    let manifest = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/deploy/kubernetes/distro.yaml"
    ))
    .unwrap();
    // The ConfigMap's distrod.toml: the block indented under `distrod.toml: |`.
    let toml: String = manifest
        .lines()
        .skip_while(|l| !l.trim_start().starts_with("distrod.toml: |"))
        .skip(1)
        .take_while(|l| l.starts_with("    ") || l.trim().is_empty())
        .map(|l| format!("{}\n", l.get(4..).unwrap_or("")))
        .collect();
    let (base, _) = distro::config::Config::parse_str("distro.yaml", &toml).unwrap();
    let replicas: usize = manifest
        .lines()
        .find_map(|l| l.trim().strip_prefix("replicas: "))
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(base.members.len(), replicas);
    assert!(manifest.contains(r#"--node-id "$(( ${POD_NAME##*-} + 1 ))""#));
    assert!(manifest.contains(r#"--peer-advertise "${POD_NAME}.distro-peers:8859""#));
    for ordinal in 0..replicas {
        let mut c = base.clone();
        c.node_id = ordinal as u16 + 1;
        c.peer_advertise = Some(
            format!("distro-{ordinal}.distro-peers:8859")
                .parse()
                .unwrap(),
        );
        c.cluster_token = Some("a-token-from-the-secret".into());
        c.validate()
            .unwrap_or_else(|e| panic!("pod distro-{ordinal}: {e}"));
        assert!(c.is_clustered() && c.http.is_some());
    }
}
