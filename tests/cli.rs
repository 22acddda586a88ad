//! `distroctl` as scripts use it: the built binary against an in-process server. The server runs
//! on a tokio runtime of its own; the tests are plain threads that run the binary, read its
//! output and check the contract of the issue (flags, `--json` shapes, exit codes, one-line
//! errors on stderr, `--hold` deregistering on SIGTERM).

mod common;

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::Arc;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::DEADLINE;
use distro::model::{InstanceKey, ServiceName, ServiceSnapshot};
use distro::node::Node;
use distro::server::ServerHandle;
use distro::wire::{Message, Opcode};
use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_distroctl");

/// A server on a runtime of its own, stopped when dropped.
struct Bg {
    rt: tokio::runtime::Runtime,
    h: Option<ServerHandle>,
}

impl Bg {
    fn start() -> Bg {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let h = rt.block_on(common::start());
        Bg { rt, h: Some(h) }
    }

    fn addr(&self) -> String {
        self.h.as_ref().unwrap().addr.to_string()
    }

    fn node(&self) -> &Arc<Node> {
        &self.h.as_ref().unwrap().node
    }

    /// The service's instances as the store holds them now.
    fn query(&self, svc: &ServiceName) -> ServiceSnapshot {
        let body = self.node().store.query(svc, "", false);
        match Message::decode(Opcode::QueryResult, body).unwrap() {
            Message::QueryResult(s) => s,
            other => panic!("{other:?}"),
        }
    }

    /// Runs distroctl against this server with `args` after `--server ADDR`.
    fn ctl(&self, args: &[&str]) -> Output {
        let mut all = vec!["--server".to_string(), self.addr()];
        all.extend(args.iter().map(|s| s.to_string()));
        run(&all)
    }

    fn ctl_ok(&self, args: &[&str]) -> String {
        let out = self.ctl(args);
        assert!(
            out.status.success(),
            "distroctl {args:?} failed: {}\nstderr: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    fn spawn(&self, args: &[&str]) -> Child {
        Command::new(BIN)
            .arg("--server")
            .arg(self.addr())
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    }
}

impl Drop for Bg {
    fn drop(&mut self) {
        if let Some(h) = self.h.take() {
            self.rt.block_on(h.stop());
        }
    }
}

/// Runs the binary to completion (killing it if it hangs past the deadline).
fn run(args: &[String]) -> Output {
    let mut child = Command::new(BIN)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_deadline(&mut child, &args);
    child.wait_with_output().unwrap()
}

fn wait_deadline(child: &mut Child, what: &dyn std::fmt::Debug) -> ExitStatus {
    let deadline = Instant::now() + DEADLINE * 3;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("distroctl {what:?} did not exit in time");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Lines of the child's stdout, as they come.
fn lines_of(child: &mut Child) -> mpsc::Receiver<String> {
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}

fn next_line(rx: &mpsc::Receiver<String>, what: &str) -> String {
    rx.recv_timeout(DEADLINE)
        .unwrap_or_else(|e| panic!("no output line ({what}): {e}"))
}

fn sigterm(child: &Child) {
    let ok = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap()
        .success();
    assert!(ok, "kill -TERM failed");
}

fn keys(v: &Value) -> BTreeSet<&str> {
    v.as_object()
        .unwrap_or_else(|| panic!("expected a JSON object, got {v}"))
        .keys()
        .map(String::as_str)
        .collect()
}

/// Polls `f` until it holds, failing after the deadline.
fn eventually(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + DEADLINE;
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Checks a failed run: non-zero exit, nothing on stdout, exactly one line on stderr.
fn assert_one_line_error(out: &Output, mentions: &str) -> String {
    assert!(
        !out.status.success(),
        "expected a failure, got {}",
        out.status
    );
    let stderr = String::from_utf8(out.stderr.clone()).unwrap();
    assert_eq!(
        stderr.trim_end().lines().count(),
        1,
        "stderr must be one line: {stderr:?}"
    );
    assert!(stderr.starts_with("distroctl: "), "{stderr:?}");
    assert!(
        stderr.contains(mentions),
        "{stderr:?} should mention {mentions:?}"
    );
    assert!(out.stdout.is_empty(), "nothing on stdout on error");
    stderr
}

const INSTANCE_KEYS: [&str; 10] = [
    "cluster",
    "enabled",
    "group",
    "healthy",
    "ip",
    "metadata",
    "namespace",
    "port",
    "service",
    "weight",
];

#[test]
fn register_list_and_deregister() {
    let s = Bg::start();
    let out = s.ctl_ok(&[
        "register",
        "--service",
        "web",
        "--cluster",
        "c1",
        "--ip",
        "10.0.0.1",
        "--port",
        "8080",
        "--weight",
        "2.5",
        "--meta",
        "zone=eu-1",
        "--meta",
        "version=1.2=beta",
    ]);
    assert!(out.contains("registered"), "{out}");
    s.ctl_ok(&[
        "register",
        "--service",
        "web",
        "--ip",
        "10.0.0.2",
        "--port",
        "8080",
        "--disabled",
    ]);

    let list: Value = serde_json::from_str(&s.ctl_ok(&["list", "--service", "web", "--json"]))
        .expect("list --json is JSON");
    let items = list.as_array().expect("a JSON array");
    assert_eq!(items.len(), 2);
    for i in items {
        assert_eq!(keys(i), BTreeSet::from(INSTANCE_KEYS), "{i}");
        assert!(i["metadata"].is_object(), "{i}");
        assert_eq!(i["namespace"], "public");
        assert_eq!(i["group"], "DEFAULT_GROUP");
        assert_eq!(i["service"], "web");
        assert_eq!(i["port"], 8080);
        assert_eq!(i["healthy"], true);
    }
    let one = items.iter().find(|i| i["ip"] == "10.0.0.1").unwrap();
    assert_eq!(one["cluster"], "c1");
    assert_eq!(one["weight"], 2.5);
    assert_eq!(one["enabled"], true);
    assert_eq!(
        one["metadata"],
        serde_json::json!({"zone": "eu-1", "version": "1.2=beta"})
    );
    let two = items.iter().find(|i| i["ip"] == "10.0.0.2").unwrap();
    assert_eq!(two["cluster"], "DEFAULT");
    assert_eq!(two["weight"], 1.0);
    assert_eq!(two["enabled"], false);
    assert_eq!(two["metadata"], serde_json::json!({}));

    let healthy: Value =
        serde_json::from_str(&s.ctl_ok(&["list", "--service", "web", "--healthy-only", "--json"]))
            .unwrap();
    let healthy = healthy.as_array().unwrap();
    assert_eq!(healthy.len(), 1, "a disabled instance is not offered");
    assert_eq!(healthy[0]["ip"], "10.0.0.1");

    let text = s.ctl_ok(&["list", "--service", "web"]);
    assert!(
        text.contains("10.0.0.1:8080") && text.contains("10.0.0.2:8080"),
        "{text}"
    );

    // Another namespace and group are addressed by their flags.
    s.ctl_ok(&[
        "register",
        "--namespace",
        "dev",
        "--group",
        "blue",
        "--service",
        "web",
        "--ip",
        "10.0.0.3",
        "--port",
        "1",
    ]);
    let dev: Value = serde_json::from_str(&s.ctl_ok(&[
        "list",
        "--namespace",
        "dev",
        "--group",
        "blue",
        "--service",
        "web",
        "--json",
    ]))
    .unwrap();
    assert_eq!(dev.as_array().unwrap().len(), 1);
    assert_eq!(dev[0]["namespace"], "dev");
    assert_eq!(dev[0]["group"], "blue");

    let out = s.ctl_ok(&[
        "deregister",
        "--service",
        "web",
        "--ip",
        "10.0.0.2",
        "--port",
        "8080",
    ]);
    assert!(out.contains("deregistered"), "{out}");
    let web = s.query(&ServiceName::new("public", "DEFAULT_GROUP", "web"));
    assert_eq!(web.instances.len(), 1);
    assert_eq!(web.instances[0].ip.as_str(), "10.0.0.1");
    // Deregistering what is not there is not an error.
    let out = s.ctl_ok(&[
        "deregister",
        "--service",
        "web",
        "--ip",
        "10.0.0.2",
        "--port",
        "8080",
    ]);
    assert!(out.contains("not registered"), "{out}");
    let empty: Value =
        serde_json::from_str(&s.ctl_ok(&["list", "--service", "nothing", "--json"])).unwrap();
    assert_eq!(empty, serde_json::json!([]));
}

#[test]
fn services_json_counts_instances_and_healthy() {
    let s = Bg::start();
    for (svc, port, disabled) in [("a", 1, false), ("a", 2, false), ("b", 1, false)] {
        let port = port.to_string();
        let mut args = vec![
            "register",
            "--service",
            svc,
            "--ip",
            "10.1.0.1",
            "--port",
            &port,
        ];
        if disabled {
            args.push("--disabled");
        }
        s.ctl_ok(&args);
    }
    s.ctl_ok(&[
        "register",
        "--namespace",
        "other",
        "--service",
        "c",
        "--ip",
        "10.1.0.1",
        "--port",
        "1",
    ]);
    // One instance reported unhealthy: registered session-bound by a connection that drops.
    s.rt.block_on(async {
        let (mut raw, _) = common::Raw::open(s.h.as_ref().unwrap().addr).await;
        let svc = ServiceName::new("public", "DEFAULT_GROUP", "b");
        let reg = Message::Register(distro::wire::Register {
            session_bound: true,
            instances: vec![common::inst(&svc, "10.1.0.2", 1)],
        });
        assert_eq!(raw.call(&reg).await, Message::Ack(1));
    });
    eventually("the dropped instance to lapse", || {
        s.query(&ServiceName::new("public", "DEFAULT_GROUP", "b"))
            .instances
            .iter()
            .any(|i| !i.healthy)
    });

    let list: Value = serde_json::from_str(&s.ctl_ok(&["services", "--json"])).unwrap();
    let items = list.as_array().expect("a JSON array");
    assert_eq!(items.len(), 2, "{list}");
    for i in items {
        assert_eq!(
            keys(i),
            BTreeSet::from(["group", "healthy", "instances", "namespace", "service"]),
            "{i}"
        );
        assert_eq!(i["namespace"], "public");
        assert_eq!(i["group"], "DEFAULT_GROUP");
    }
    assert_eq!(items[0]["service"], "a");
    assert_eq!(
        (&items[0]["instances"], &items[0]["healthy"]),
        (&2.into(), &2.into())
    );
    assert_eq!(items[1]["service"], "b");
    assert_eq!(
        (&items[1]["instances"], &items[1]["healthy"]),
        (&2.into(), &1.into())
    );

    let other: Value =
        serde_json::from_str(&s.ctl_ok(&["services", "--namespace", "other", "--json"])).unwrap();
    assert_eq!(
        other,
        serde_json::json!([{"namespace": "other", "group": "DEFAULT_GROUP", "service": "c",
                            "instances": 1, "healthy": 1}])
    );
    let text = s.ctl_ok(&["services"]);
    assert!(
        text.contains("SERVICE") && text.contains('a') && text.contains('b'),
        "{text}"
    );
}

#[test]
fn watch_json_prints_one_object_per_push() {
    let s = Bg::start();
    let mut child = s.spawn(&["watch", "--service", "w", "--json"]);
    let lines = lines_of(&mut child);

    let first: Value = serde_json::from_str(&next_line(&lines, "the first snapshot")).unwrap();
    assert_eq!(
        keys(&first),
        BTreeSet::from(["group", "instances", "namespace", "revision", "service"])
    );
    assert_eq!(first["namespace"], "public");
    assert_eq!(first["group"], "DEFAULT_GROUP");
    assert_eq!(first["service"], "w");
    assert_eq!(first["instances"], serde_json::json!([]));
    let rev0 = first["revision"].as_u64().expect("revision is a number");

    s.ctl_ok(&[
        "register",
        "--service",
        "w",
        "--ip",
        "10.2.0.1",
        "--port",
        "80",
        "--meta",
        "k=v",
    ]);
    let next: Value = serde_json::from_str(&next_line(&lines, "a push after register")).unwrap();
    assert!(next["revision"].as_u64().unwrap() > rev0, "{next}");
    let items = next["instances"].as_array().unwrap();
    assert_eq!(items.len(), 1, "{next}");
    assert_eq!(keys(&items[0]), BTreeSet::from(INSTANCE_KEYS));
    assert_eq!(items[0]["ip"], "10.2.0.1");
    assert_eq!(items[0]["metadata"], serde_json::json!({"k": "v"}));

    s.ctl_ok(&[
        "deregister",
        "--service",
        "w",
        "--ip",
        "10.2.0.1",
        "--port",
        "80",
    ]);
    let gone: Value = serde_json::from_str(&next_line(&lines, "a push after deregister")).unwrap();
    assert_eq!(gone["instances"], serde_json::json!([]));

    sigterm(&child);
    let status = wait_deadline(&mut child, &"watch");
    assert!(status.success(), "watch exits cleanly on SIGTERM: {status}");
}

#[test]
fn register_hold_deregisters_on_sigterm() {
    let s = Bg::start();
    let svc = ServiceName::new("public", "DEFAULT_GROUP", "held");
    let mut child = s.spawn(&[
        "register",
        "--service",
        "held",
        "--ip",
        "10.3.0.1",
        "--port",
        "80",
        "--beat-ms",
        "200",
        "--unhealthy-ms",
        "2000",
        "--expire-ms",
        "4000",
        "--hold",
    ]);
    let lines = lines_of(&mut child);
    let line = next_line(&lines, "the holding line");
    assert!(line.contains("holding"), "{line}");
    let snap = s.query(&svc);
    assert_eq!(snap.instances.len(), 1);
    assert!(snap.instances[0].healthy);

    // SIGTERM at once, as soon as the line is there: it must deregister, not kill.
    sigterm(&child);
    let status = wait_deadline(&mut child, &"register --hold");
    assert!(
        status.success(),
        "register --hold exits 0 on SIGTERM: {status}"
    );
    assert!(
        s.query(&svc).instances.is_empty(),
        "deregistered, not left to its lease"
    );
    let rest: Vec<String> = lines.iter().collect();
    assert!(rest.iter().any(|l| l.contains("deregistered")), "{rest:?}");
}

#[test]
fn register_hold_killed_leaves_a_session_bound_instance_that_lapses() {
    let s = Bg::start();
    let svc = ServiceName::new("public", "DEFAULT_GROUP", "crashed");
    let mut child = s.spawn(&[
        "register",
        "--service",
        "crashed",
        "--ip",
        "10.3.0.2",
        "--port",
        "80",
        "--hold",
    ]);
    let lines = lines_of(&mut child);
    assert!(next_line(&lines, "the holding line").contains("holding"));
    child.kill().unwrap();
    child.wait().unwrap();
    // The process could not deregister; its connection dropped, so the instance is reported
    // unhealthy at once (long before its 15 s lease would say so).
    eventually("the killed holder's instance to lapse", || {
        s.query(&svc).instances.first().is_some_and(|i| !i.healthy)
    });
}

#[test]
fn errors_exit_non_zero_with_one_line_on_stderr() {
    // Nothing listens there.
    let dead = common::dead_addr().to_string();
    let out = run(&[
        "--server".into(),
        dead.clone(),
        "--timeout-ms".into(),
        "1000".into(),
        "list".into(),
        "--service".into(),
        "x".into(),
    ]);
    assert_one_line_error(&out, &dead);

    let s = Bg::start();
    let reg = ["register", "--service", "s", "--ip", "10.4.0.1"];
    let with = |extra: &[&str]| {
        let mut v: Vec<&str> = reg.to_vec();
        v.extend_from_slice(extra);
        s.ctl(&v)
    };
    assert_one_line_error(&with(&["--port", "abc"]), "--port");
    assert_one_line_error(&with(&["--port", "70000"]), "--port");
    assert_one_line_error(&with(&["--port", "1", "--meta", "novalue"]), "key=value");
    assert_one_line_error(&with(&["--port", "1", "--weight", "heavy"]), "--weight");
    assert_one_line_error(&with(&[]), "--port");
    assert_one_line_error(&s.ctl(&["list"]), "--service");
    assert_one_line_error(&s.ctl(&["frobnicate"]), "frobnicate");
    assert_one_line_error(&s.ctl(&[]), "distroctl");
    // Refused by the server: a lease below its floor (100 ms in these tests).
    assert_one_line_error(&with(&["--port", "1", "--beat-ms", "10"]), "floor");
    assert_eq!(
        s.node().store.len(),
        0,
        "nothing was registered by the failures"
    );

    // Help is not an error.
    let help = s.ctl(&["--help"]);
    assert!(help.status.success());
    assert!(String::from_utf8_lossy(&help.stdout).contains("register"));
}

#[test]
fn register_fits_the_beat_interval_it_was_not_given_to_the_lease() {
    // A short lease without --beat-ms: the default 5 s beat would exceed it; distroctl picks
    // one that fits (a third of unhealthy-after, not below the node's floor of 100 ms here).
    let s = Bg::start();
    s.ctl_ok(&[
        "register",
        "--service",
        "short",
        "--ip",
        "10.4.0.1",
        "--port",
        "80",
        "--unhealthy-ms",
        "600",
        "--expire-ms",
        "1200",
    ]);
    // Only an expire-after shorter than the default unhealthy-after: that shrinks too.
    s.ctl_ok(&[
        "register",
        "--service",
        "short",
        "--ip",
        "10.4.0.2",
        "--port",
        "80",
        "--expire-ms",
        "900",
    ]);
    let svc = ServiceName::new("public", "DEFAULT_GROUP", "short");
    let lease_of = |ip: &str| {
        let key = InstanceKey {
            service: svc.clone(),
            cluster: "DEFAULT".into(),
            ip: ip.into(),
            port: 80,
        };
        s.node().store.get(&key).expect("registered").lease
    };
    let l = lease_of("10.4.0.1");
    assert_eq!((l.beat_ms, l.unhealthy_ms, l.expire_ms), (200, 600, 1200));
    let l = lease_of("10.4.0.2");
    assert_eq!((l.beat_ms, l.unhealthy_ms, l.expire_ms), (300, 900, 900));
    // What the user gives is kept as given (and refused by the node if it does not fit).
    let out = s.ctl(&[
        "register",
        "--service",
        "short",
        "--ip",
        "10.4.0.3",
        "--port",
        "80",
        "--beat-ms",
        "5000",
        "--unhealthy-ms",
        "600",
        "--expire-ms",
        "1200",
    ]);
    assert!(
        !out.status.success(),
        "a beat longer than unhealthy-after is refused"
    );
}
