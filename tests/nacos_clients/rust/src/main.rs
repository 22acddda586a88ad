//! Drives the published Rust Nacos client (`nacos-sdk`, gRPC) against Nacos-compatible servers and
//! prints one JSON line per step, for the Nacos front end's integration test to check.
//!
//! ```text
//! nacos-client-rust roundtrip --write HOST:PORT --read HOST:PORT --service NAME [--group G]
//!                             [--ip IP] [--port P] [--timeout-s S]
//! nacos-client-rust hold      --write HOST:PORT --service NAME [--group G] [--ip IP] [--port P]
//!                             [--lease-ms INTERVAL,TIMEOUT,DELETE]
//! ```
//!
//! Addresses are the servers' HTTP addresses, as a user configures them; the client itself talks
//! gRPC to port + 1000. `roundtrip` registers at the `--write` node and reads and subscribes at
//! the `--read` node through two separate clients; `hold` registers and then keeps its connection
//! until the process is killed, so that the test can watch the instance go.
//!
//! With `NACOS_USERNAME` and `NACOS_PASSWORD` in the environment the clients log in with them.
//!
//! Every step prints `{"client":"rust","step":…,"ok":true|false,…}`; the first failed step ends the
//! process with exit code 1.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use nacos_sdk::api::naming::{
    NamingChangeEvent, NamingEventListener, NamingService, NamingServiceBuilder, ServiceInstance,
};
use nacos_sdk::api::props::ClientProps;
use serde_json::{json, Value};

const CLIENT: &str = "rust";

/// The longest a `hold` process lives if nobody kills it.
const HOLD_MAX: Duration = Duration::from_secs(600);

struct Args {
    mode: String,
    write: String,
    read: Option<String>,
    service: String,
    group: String,
    ip: String,
    port: i32,
    timeout: Duration,
    lease_ms: Option<(u64, u64, u64)>,
}

fn usage() -> ! {
    eprintln!(
        "usage: nacos-client-rust roundtrip|hold --write HOST:PORT [--read HOST:PORT] --service NAME \
         [--group G] [--ip IP] [--port P] [--timeout-s S] [--lease-ms I,T,D]"
    );
    std::process::exit(2)
}

fn parse_args() -> Args {
    let mut it = std::env::args().skip(1);
    let mode = it.next().unwrap_or_else(|| usage());
    if mode != "roundtrip" && mode != "hold" {
        usage();
    }
    let mut args = Args {
        mode,
        write: String::new(),
        read: None,
        service: String::new(),
        group: "DEFAULT_GROUP".to_string(),
        ip: "127.0.0.1".to_string(),
        port: 20_000,
        timeout: Duration::from_secs(30),
        lease_ms: None,
    };
    while let Some(flag) = it.next() {
        let value = it.next().unwrap_or_else(|| usage());
        match flag.as_str() {
            "--write" => args.write = value,
            "--read" => args.read = Some(value),
            "--service" => args.service = value,
            "--group" => args.group = value,
            "--ip" => args.ip = value,
            "--port" => args.port = value.parse().unwrap_or_else(|_| usage()),
            "--timeout-s" => {
                args.timeout = Duration::from_secs(value.parse().unwrap_or_else(|_| usage()))
            }
            "--lease-ms" => {
                let parts: Vec<u64> = value
                    .split(',')
                    .map(|p| p.parse().unwrap_or_else(|_| usage()))
                    .collect();
                if parts.len() != 3 {
                    usage();
                }
                args.lease_ms = Some((parts[0], parts[1], parts[2]));
            }
            _ => usage(),
        }
    }
    if args.write.is_empty() || args.service.is_empty() {
        usage();
    }
    if args.mode == "roundtrip" && args.read.is_none() {
        usage();
    }
    args
}

fn emit(step: &str, ok: bool, extra: Value) {
    let mut line = json!({ "client": CLIENT, "step": step, "ok": ok });
    if let (Some(obj), Value::Object(extra)) = (line.as_object_mut(), extra) {
        obj.extend(extra);
    }
    println!("{line}");
}

fn fail(step: &str, error: impl std::fmt::Display) -> ! {
    emit(step, false, json!({ "error": error.to_string() }));
    std::process::exit(1)
}

/// A client of its own, with a cache directory of its own, so that nothing read from disk (a
/// previous run's cache) can stand in for what the server answers.
async fn connect(addr: &str, app: &str) -> Result<NamingService, String> {
    let cache_dir =
        std::env::temp_dir().join(format!("nacos-client-rust-{}-{}", std::process::id(), app));
    let mut props = ClientProps::new()
        .server_addr(addr)
        .namespace("")
        .app_name(app)
        .env_first(false)
        .naming_load_cache_at_start(false)
        .cache_dir(cache_dir);
    let mut builder = NamingServiceBuilder::new(props.clone());
    // Credentials from the environment: the client logs in (POST /nacos/v1/auth/login) and
    // sends the accessToken it gets with every request.
    if let (Ok(user), Ok(password)) = (
        std::env::var("NACOS_USERNAME"),
        std::env::var("NACOS_PASSWORD"),
    ) {
        props = props.auth_username(user).auth_password(password);
        builder = NamingServiceBuilder::new(props).enable_auth_plugin_http();
    }
    builder.build().await.map_err(|e| e.to_string())
}

fn instance(ip: &str, port: i32, lease_ms: Option<(u64, u64, u64)>) -> ServiceInstance {
    let mut metadata = HashMap::from([("client".to_string(), CLIENT.to_string())]);
    if let Some((interval, timeout, delete)) = lease_ms {
        metadata.insert("preserved.heart.beat.interval".into(), interval.to_string());
        metadata.insert("preserved.heart.beat.timeout".into(), timeout.to_string());
        metadata.insert("preserved.ip.delete.timeout".into(), delete.to_string());
    }
    ServiceInstance {
        ip: ip.to_string(),
        port,
        metadata,
        ..Default::default()
    }
}

fn ports_of(instances: &[ServiceInstance]) -> BTreeSet<i32> {
    instances.iter().map(|i| i.port).collect()
}

/// Queries (ServiceQueryRequest, no subscription) until the service holds exactly `want`.
async fn read_until(
    client: &NamingService,
    args: &Args,
    service: &str,
    want: &BTreeSet<i32>,
) -> Result<Vec<ServiceInstance>, String> {
    let deadline = Instant::now() + args.timeout;
    loop {
        let last = match client
            .get_all_instances(
                service.to_string(),
                Some(args.group.clone()),
                Vec::new(),
                false,
            )
            .await
        {
            Ok(instances) if ports_of(&instances) == *want => return Ok(instances),
            Ok(instances) => format!("ports {:?}", ports_of(&instances)),
            Err(e) => e.to_string(),
        };
        if Instant::now() >= deadline {
            return Err(format!("wanted ports {want:?}, last saw {last}"));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Remembers every instance list a subscription delivered.
#[derive(Default)]
struct Recorder {
    events: Mutex<Vec<BTreeSet<i32>>>,
}

impl NamingEventListener for Recorder {
    fn event(&self, event: Arc<NamingChangeEvent>) {
        let ports = event.instances.as_deref().map(ports_of).unwrap_or_default();
        self.events.lock().expect("recorder lock").push(ports);
    }
}

impl Recorder {
    async fn wait_for(&self, want: &BTreeSet<i32>, timeout: Duration) -> Result<(), String> {
        let deadline = Instant::now() + timeout;
        loop {
            {
                let events = self.events.lock().expect("recorder lock");
                if events.last() == Some(want) {
                    return Ok(());
                }
                if Instant::now() >= deadline {
                    return Err(format!("wanted ports {want:?}, events {events:?}"));
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

async fn roundtrip(args: &Args) {
    let read_addr = args.read.as_deref().expect("checked in parse_args");
    let writer = connect(&args.write, "distro-writer")
        .await
        .unwrap_or_else(|e| fail("connect", e));
    let reader = connect(read_addr, "distro-reader")
        .await
        .unwrap_or_else(|e| fail("connect", e));
    emit(
        "connect",
        true,
        json!({ "write": args.write, "read": read_addr }),
    );

    // Two instances of one service from one connection: only a batch can publish both
    // (Nacos 2.x keeps one instance per service per connection).
    let (p1, p2) = (args.port, args.port + 1);
    let both = BTreeSet::from([p1, p2]);
    writer
        .batch_register_instance(
            args.service.clone(),
            Some(args.group.clone()),
            vec![instance(&args.ip, p1, None), instance(&args.ip, p2, None)],
        )
        .await
        .unwrap_or_else(|e| fail("register", e));
    emit("register", true, json!({ "ports": [p1, p2] }));

    let seen = read_until(&reader, args, &args.service, &both)
        .await
        .unwrap_or_else(|e| fail("read", e));
    let first = seen.first().expect("two instances");
    emit(
        "read",
        true,
        json!({
            "ports": [p1, p2],
            "healthy": first.healthy,
            "enabled": first.enabled,
            "ephemeral": first.ephemeral,
            "cluster": first.cluster_name,
            "service_name": first.service_name,
            "instance_id": first.instance_id,
            "metadata_client": first.metadata.get("client"),
        }),
    );

    let recorder = Arc::new(Recorder::default());
    reader
        .subscribe(
            args.service.clone(),
            Some(args.group.clone()),
            Vec::new(),
            recorder.clone(),
        )
        .await
        .unwrap_or_else(|e| fail("subscribe", e));
    recorder
        .wait_for(&both, args.timeout)
        .await
        .unwrap_or_else(|e| fail("subscribe", e));
    emit("subscribe", true, json!({ "ports": [p1, p2] }));

    // Publishing the smaller set replaces the larger one.
    writer
        .batch_register_instance(
            args.service.clone(),
            Some(args.group.clone()),
            vec![instance(&args.ip, p1, None)],
        )
        .await
        .unwrap_or_else(|e| fail("deregister_one", e));
    emit("deregister_one", true, json!({ "port": p2 }));
    let only_first = BTreeSet::from([p1]);
    read_until(&reader, args, &args.service, &only_first)
        .await
        .unwrap_or_else(|e| fail("read_after_deregister", e));
    emit("read_after_deregister", true, json!({ "ports": [p1] }));
    recorder
        .wait_for(&only_first, args.timeout)
        .await
        .unwrap_or_else(|e| fail("push_after_deregister", e));
    emit("push_after_deregister", true, json!({ "ports": [p1] }));

    // A single instance (InstanceRequest) of a second service, then its deregistration.
    let single = format!("{}-single", args.service);
    let p3 = args.port + 2;
    writer
        .register_instance(
            single.clone(),
            Some(args.group.clone()),
            instance(&args.ip, p3, None),
        )
        .await
        .unwrap_or_else(|e| fail("register_single", e));
    read_until(&reader, args, &single, &BTreeSet::from([p3]))
        .await
        .unwrap_or_else(|e| fail("register_single", e));
    emit(
        "register_single",
        true,
        json!({ "service": single, "port": p3 }),
    );

    let (services, count) = reader
        .get_service_list(1, 100, Some(args.group.clone()))
        .await
        .unwrap_or_else(|e| fail("list_services", e));
    if !services.contains(&args.service) || !services.contains(&single) {
        fail(
            "list_services",
            format!("{services:?} lacks {} or {single}", args.service),
        );
    }
    emit(
        "list_services",
        true,
        json!({ "count": count, "services": services }),
    );

    writer
        .deregister_instance(
            single.clone(),
            Some(args.group.clone()),
            instance(&args.ip, p3, None),
        )
        .await
        .unwrap_or_else(|e| fail("deregister_single", e));
    read_until(&reader, args, &single, &BTreeSet::new())
        .await
        .unwrap_or_else(|e| fail("deregister_single", e));
    emit(
        "deregister_single",
        true,
        json!({ "service": single, "port": p3 }),
    );

    writer
        .deregister_instance(
            args.service.clone(),
            Some(args.group.clone()),
            instance(&args.ip, p1, None),
        )
        .await
        .unwrap_or_else(|e| fail("deregister", e));
    read_until(&reader, args, &args.service, &BTreeSet::new())
        .await
        .unwrap_or_else(|e| fail("deregister", e));
    emit("deregister", true, json!({ "port": p1 }));
    emit("done", true, json!({}));
}

async fn hold(args: &Args) {
    let writer = connect(&args.write, "distro-holder")
        .await
        .unwrap_or_else(|e| fail("connect", e));
    emit("connect", true, json!({ "write": args.write }));
    writer
        .register_instance(
            args.service.clone(),
            Some(args.group.clone()),
            instance(&args.ip, args.port, args.lease_ms),
        )
        .await
        .unwrap_or_else(|e| fail("register", e));
    emit(
        "registered",
        true,
        json!({ "service": args.service, "port": args.port, "pid": std::process::id() }),
    );
    // Keep the connection (and so the instance) until the test kills this process. Should the
    // test die first, its end of our stdin closes and we go too (without deregistering, as a
    // crash would).
    std::thread::spawn(|| {
        let mut sink = Vec::new();
        let _ = std::io::Read::read_to_end(&mut std::io::stdin(), &mut sink);
        std::process::exit(0);
    });
    tokio::time::sleep(HOLD_MAX).await;
    fail("hold", format!("not killed within {HOLD_MAX:?}"));
}

#[tokio::main]
async fn main() {
    let args = parse_args();
    if args.mode == "hold" {
        hold(&args).await;
        return;
    }
    // A bound on the whole run, so that a wedged client never outlives its test.
    let limit = args.timeout * 10;
    if tokio::time::timeout(limit, roundtrip(&args)).await.is_err() {
        fail("timeout", format!("the run took longer than {limit:?}"));
    }
}
