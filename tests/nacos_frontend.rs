//! The Nacos front end over real sockets (`docs/nacos.md`): the HTTP API as curl and the HTTP
//! clients use it, the gRPC protocol as the 2.x clients speak it (a tonic client sending the
//! same payloads), bad requests on both, and Nacos instances crossing with native ones in a
//! three-node cluster. The published clients themselves run in `tests/nacos_clients.rs`.

mod cluster_support;
mod common;

use std::net::SocketAddr;
use std::time::Duration;

use distro::frontend::nacos::grpc::proto::{BI_STREAM_PATH, Payload, REQUEST_PATH};
use distro::frontend::nacos::{GRPC_PORT_OFFSET, NacosListeners, NacosSettings};
use distro::model::{Instance, ServiceName};
use distro::server::{Server, ServerHandle};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tonic::transport::{Channel, Endpoint};
use tonic::{Request, Status, Streaming};

use common::{DEADLINE, eventually};

// ---------------------------------------------------------------------------------------------
// Servers and clients of the tests.

/// Short protocol timings, so that waits and stalls happen within a test.
fn quick() -> NacosSettings {
    NacosSettings {
        setup_wait: Duration::from_millis(500),
        push_ack_timeout: Duration::from_millis(300),
        push_stall: Duration::from_secs(2),
    }
}

/// A standalone node serving the Nacos APIs (and the native protocol) on loopback port 0.
async fn start(settings: NacosSettings) -> ServerHandle {
    let cfg = common::test_config();
    let client = tokio::net::TcpListener::bind(cfg.listen).await.unwrap();
    let nacos = NacosListeners::bind("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    Server::from_listeners(cfg, client, None)
        .with_nacos(nacos, settings)
        .spawn()
}

fn nacos(h: &ServerHandle) -> SocketAddr {
    h.nacos_addr.expect("the Nacos front end is on")
}

/// An HTTP/1.1 answer.
#[derive(Debug)]
struct Answer {
    status: u16,
    content_type: String,
    body: String,
}

impl Answer {
    fn json(&self) -> Value {
        serde_json::from_str(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {} {}", self.status, self.body))
    }
}

/// Sends raw bytes as one HTTP connection and reads the answer until the server closes.
async fn http_raw(addr: SocketAddr, request: &[u8]) -> Option<Answer> {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(request).await.unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(DEADLINE, s.read_to_end(&mut out))
        .await
        .expect("the server answers and closes");
    let text = String::from_utf8_lossy(&out).to_string();
    let (head, body) = text.split_once("\r\n\r\n")?;
    let status = head.split(' ').nth(1)?.parse().ok()?;
    let content_type = head
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("content-type")
                .then(|| v.trim().to_string())
        })
        .unwrap_or_default();
    Some(Answer {
        status,
        content_type,
        body: body.to_string(),
    })
}

/// One HTTP request, parameters in the query string (as the Node and Python clients send
/// them), an empty body.
async fn http(addr: SocketAddr, method: &str, path_and_query: &str) -> Answer {
    let req = format!(
        "{method} {path_and_query} HTTP/1.1\r\nHost: {addr}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    );
    http_raw(addr, req.as_bytes())
        .await
        .expect("an HTTP answer")
}

/// One HTTP request with a form body.
async fn http_form(addr: SocketAddr, method: &str, path: &str, form: &str) -> Answer {
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/x-www-form-urlencoded\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{form}",
        form.len()
    );
    http_raw(addr, req.as_bytes())
        .await
        .expect("an HTTP answer")
}

fn enc(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// The ports of a service's instances over HTTP v1 (all, healthy or not), with their health.
async fn hosts(addr: SocketAddr, service: &str) -> Vec<(u16, bool)> {
    let a = http(
        addr,
        "GET",
        &format!("/nacos/v1/ns/instance/list?serviceName={service}"),
    )
    .await;
    assert_eq!(a.status, 200, "{a:?}");
    let mut v: Vec<(u16, bool)> = a.json()["hosts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| (h["port"].as_u64().unwrap() as u16, h["healthy"] == true))
        .collect();
    v.sort_unstable();
    v
}

/// A gRPC client connection: one HTTP/2 connection, which is one Nacos connection.
struct Grpc {
    channel: Channel,
}

/// A connection's stream as the client holds it.
struct GrpcStream {
    tx: mpsc::Sender<Payload>,
    rx: Streaming<Payload>,
}

fn codec() -> tonic_prost::ProstCodec<Payload, Payload> {
    tonic_prost::ProstCodec::default()
}

impl Grpc {
    async fn connect(http: SocketAddr) -> Grpc {
        let addr = SocketAddr::new(http.ip(), http.port() + GRPC_PORT_OFFSET);
        let channel = Endpoint::from_shared(format!("http://{addr}"))
            .unwrap()
            .connect()
            .await
            .expect("gRPC connect");
        Grpc { channel }
    }

    async fn call_raw(&self, p: Payload) -> Result<Payload, Status> {
        let mut grpc = tonic::client::Grpc::new(self.channel.clone());
        grpc.ready().await.unwrap();
        let path = http::uri::PathAndQuery::from_static(REQUEST_PATH);
        grpc.unary(Request::new(p), path, codec())
            .await
            .map(|r| r.into_inner())
    }

    /// A unary request: the answer's class and JSON body.
    async fn call(&self, type_name: &str, body: Value) -> (String, Value) {
        let p = self
            .call_raw(Payload::new(type_name, body.to_string()))
            .await
            .expect("a gRPC answer");
        let json = serde_json::from_slice(p.json()).expect("a JSON answer");
        (p.type_name().to_string(), json)
    }

    /// Opens the stream and sends the setup; waits for the server's `SetupAckRequest`.
    async fn setup(&self) -> GrpcStream {
        let mut s = self.open_stream().await;
        s.send(
            "ConnectionSetupRequest",
            json!({"clientVersion": "test", "tenant": "", "labels": {}, "headers": {}}),
        )
        .await;
        let (t, _) = s.next().await.expect("the setup ack");
        assert_eq!(t, "SetupAckRequest");
        s
    }

    async fn open_stream(&self) -> GrpcStream {
        let mut grpc = tonic::client::Grpc::new(self.channel.clone());
        grpc.ready().await.unwrap();
        let (tx, mut rx) = mpsc::channel::<Payload>(16);
        let outbound = futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx));
        let path = http::uri::PathAndQuery::from_static(BI_STREAM_PATH);
        let rx = grpc
            .streaming(Request::new(outbound), path, codec())
            .await
            .expect("the stream opens")
            .into_inner();
        GrpcStream { tx, rx }
    }
}

impl GrpcStream {
    async fn send(&self, type_name: &str, body: Value) {
        self.tx
            .send(Payload::new(type_name, body.to_string()))
            .await
            .unwrap();
    }

    /// The next message from the server: `None` when the stream ended.
    async fn next(&mut self) -> Option<(String, Value)> {
        let p = tokio::time::timeout(DEADLINE, self.rx.message())
            .await
            .expect("a message on the stream in time")
            .ok()??;
        Some((
            p.type_name().to_string(),
            serde_json::from_slice(p.json()).unwrap(),
        ))
    }

    /// The next push, acked.
    async fn push(&mut self) -> Value {
        let (t, body) = self.next().await.expect("a push");
        assert_eq!(t, "NotifySubscriberRequest", "{body}");
        self.send(
            "NotifySubscriberResponse",
            json!({"resultCode": 200, "errorCode": 0, "message": "", "requestId": body["requestId"]}),
        )
        .await;
        body
    }
}

fn grpc_instance(port: u16, lease: Option<(u32, u32, u32)>) -> Value {
    let mut metadata = json!({"from": "grpc"});
    if let Some((i, t, d)) = lease {
        metadata["preserved.heart.beat.interval"] = json!(i.to_string());
        metadata["preserved.heart.beat.timeout"] = json!(t.to_string());
        metadata["preserved.ip.delete.timeout"] = json!(d.to_string());
    }
    json!({"ip": "10.1.0.1", "port": port, "weight": 1.0, "healthy": true, "enabled": true,
           "ephemeral": true, "clusterName": "DEFAULT", "metadata": metadata})
}

fn register_request(service: &str, instance: Value) -> Value {
    json!({"requestId": "1", "namespace": "public", "serviceName": service,
           "groupName": "DEFAULT_GROUP", "type": "registerInstance", "instance": instance})
}

fn ports_of(info: &Value) -> Vec<u16> {
    let mut v: Vec<u16> = info["hosts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h["port"].as_u64().unwrap() as u16)
        .collect();
    v.sort_unstable();
    v
}

// ---------------------------------------------------------------------------------------------
// HTTP

#[tokio::test]
async fn http_v1_registers_lists_beats_updates_and_deregisters() {
    let h = start(quick()).await;
    let a = nacos(&h);
    let md = enc(r#"{"zone":"a","preserved.heart.beat.interval":"2000"}"#);
    let r = http(
        a,
        "POST",
        &format!("/nacos/v1/ns/instance?serviceName=orders&ip=10.0.0.1&port=8080&metadata={md}"),
    )
    .await;
    assert_eq!((r.status, r.body.as_str()), (200, "ok"));
    // A second instance from a form body, in group g, cluster c.
    let r = http_form(
        a,
        "POST",
        "/nacos/v1/ns/instance",
        "serviceName=g%40%40orders&ip=10.0.0.2&port=8081&clusterName=c&weight=3&enable=true",
    )
    .await;
    assert_eq!((r.status, r.body.as_str()), (200, "ok"));

    let list = http(a, "GET", "/nacos/v1/ns/instance/list?serviceName=orders").await;
    assert!(
        list.content_type.starts_with("application/json"),
        "{list:?}"
    );
    let v = list.json();
    assert_eq!(v["name"], "DEFAULT_GROUP@@orders");
    assert_eq!(v["groupName"], "DEFAULT_GROUP");
    assert_eq!(v["cacheMillis"], 3000);
    let host = &v["hosts"][0];
    assert_eq!(
        host["instanceId"],
        "10.0.0.1#8080#DEFAULT#DEFAULT_GROUP@@orders"
    );
    assert_eq!(host["serviceName"], "DEFAULT_GROUP@@orders");
    assert_eq!(host["metadata"]["zone"], "a");
    assert_eq!(host["instanceHeartBeatInterval"], 2000);
    assert_eq!(host["ephemeral"], true);
    // The group's own list; a cluster filter.
    let g = http(
        a,
        "GET",
        "/nacos/v1/ns/instance/list?serviceName=orders&groupName=g&clusters=c",
    )
    .await;
    let g = g.json();
    assert_eq!(
        (g["name"].as_str(), g["clusters"].as_str()),
        (Some("g@@orders"), Some("c"))
    );
    assert_eq!(g["hosts"][0]["weight"], 3.0);
    let none = http(
        a,
        "GET",
        "/nacos/v1/ns/instance/list?serviceName=orders&groupName=g&clusters=x",
    )
    .await;
    assert_eq!(none.json()["hosts"], json!([]));

    // Beats: a known instance (its interval comes back); a light beat for an unknown one asks
    // the client to register again; a full beat for an unknown one registers it.
    let beat =
        |q: String| async move { http(a, "PUT", &format!("/nacos/v1/ns/instance/beat?{q}")).await };
    let b = beat("serviceName=DEFAULT_GROUP%40%40orders&ip=10.0.0.1&port=8080".into()).await;
    assert_eq!(
        b.json(),
        json!({"clientBeatInterval": 2000, "code": 10200, "lightBeatEnabled": true})
    );
    let b = beat("serviceName=orders&ip=10.0.0.9&port=9".into()).await;
    assert_eq!(b.json()["code"], 20404);
    let full = enc(
        r#"{"serviceName":"DEFAULT_GROUP@@orders","ip":"10.0.0.3","port":8082,"weight":2,"metadata":{"k":"v"}}"#,
    );
    let b = beat(format!("serviceName=DEFAULT_GROUP%40%40orders&beat={full}")).await;
    assert_eq!(b.json()["code"], 10200);
    assert_eq!(hosts(a, "orders").await, vec![(8080, true), (8082, true)]);

    // Detail, v1 and v2.
    let d = http(
        a,
        "GET",
        "/nacos/v1/ns/instance?serviceName=orders&ip=10.0.0.3&port=8082",
    )
    .await;
    let d = d.json();
    assert_eq!(
        (d["service"].as_str(), d["weight"].as_f64()),
        (Some("DEFAULT_GROUP@@orders"), Some(2.0))
    );
    assert_eq!(d["metadata"]["k"], "v");
    let d2 = http(
        a,
        "GET",
        "/nacos/v2/ns/instance?serviceName=orders&ip=10.0.0.3&port=8082",
    )
    .await;
    assert_eq!(d2.json()["data"]["serviceName"], "DEFAULT_GROUP@@orders");
    let missing = http(
        a,
        "GET",
        "/nacos/v1/ns/instance?serviceName=orders&ip=10.9.9.9&port=1",
    )
    .await;
    assert_eq!(
        (missing.status, missing.body.as_str()),
        (404, "no matched ip found!")
    );

    // Update: weight and enabled change, metadata stays; a disabled instance is not listed.
    let u = http(
        a,
        "PUT",
        "/nacos/v1/ns/instance?serviceName=orders&ip=10.0.0.3&port=8082&weight=5",
    )
    .await;
    assert_eq!((u.status, u.body.as_str()), (200, "ok"));
    let d = http(
        a,
        "GET",
        "/nacos/v1/ns/instance?serviceName=orders&ip=10.0.0.3&port=8082",
    )
    .await
    .json();
    assert_eq!(
        (d["weight"].as_f64(), d["metadata"]["k"].as_str()),
        (Some(5.0), Some("v"))
    );
    let u = http(
        a,
        "PUT",
        "/nacos/v1/ns/instance?serviceName=orders&ip=10.0.0.3&port=8082&enabled=false",
    )
    .await;
    assert_eq!(u.status, 200);
    assert_eq!(hosts(a, "orders").await, vec![(8080, true)]);
    let u = http(
        a,
        "PUT",
        "/nacos/v1/ns/instance?serviceName=orders&ip=10.7.7.7&port=1",
    )
    .await;
    assert_eq!(u.status, 404);

    // Service list: paged, by group.
    for s in ["b-svc", "c-svc"] {
        http(
            a,
            "POST",
            &format!("/nacos/v1/ns/instance?serviceName={s}&ip=10.0.0.1&port=1"),
        )
        .await;
    }
    let l = http(a, "GET", "/nacos/v1/ns/service/list?pageNo=1&pageSize=2")
        .await
        .json();
    assert_eq!(l, json!({"count": 3, "doms": ["b-svc", "c-svc"]}));
    let l = http(a, "GET", "/nacos/v1/ns/service/list?pageNo=2&pageSize=2")
        .await
        .json();
    assert_eq!(l, json!({"count": 3, "doms": ["orders"]}));
    let l = http(a, "GET", "/nacos/v2/ns/service/list?groupName=g")
        .await
        .json();
    assert_eq!(
        l,
        json!({"code": 0, "message": "success", "data": {"count": 1, "services": ["orders"]}})
    );

    // Deregister: ok, also for an instance that is not there.
    for q in [
        "ip=10.0.0.1&port=8080",
        "ip=10.0.0.3&port=8082",
        "ip=10.5.5.5&port=5",
    ] {
        let r = http(
            a,
            "DELETE",
            &format!("/nacos/v1/ns/instance?serviceName=orders&{q}"),
        )
        .await;
        assert_eq!((r.status, r.body.as_str()), (200, "ok"), "{q}");
    }
    assert_eq!(hosts(a, "orders").await, vec![]);

    // Operators' endpoints.
    let m = http(a, "GET", "/nacos/v1/ns/operator/metrics").await.json();
    assert_eq!(m, json!({"status": "UP"}));
    let m = http(a, "GET", "/nacos/v1/ns/operator/metrics?onlyStatus=false")
        .await
        .json();
    assert_eq!(m["serviceCount"], 3);
    assert_eq!(m["instanceCount"], 3);
    let live = http(a, "GET", "/nacos/v1/console/health/liveness").await;
    let ready = http(a, "GET", "/nacos/v1/console/health/readiness").await;
    assert_eq!((live.status, ready.status), (200, 200));
    let nodes = http(a, "GET", "/nacos/v1/core/cluster/nodes").await.json();
    assert_eq!(nodes["code"], 200);
    assert_eq!(nodes["data"][0]["state"], "UP");
    h.stop().await;
}

#[tokio::test]
async fn http_v2_answers_in_its_envelope() {
    let h = start(quick()).await;
    let a = nacos(&h);
    let r = http_form(
        a,
        "POST",
        "/nacos/v2/ns/instance",
        "serviceName=pay&ip=10.0.0.1&port=80&enabled=true",
    )
    .await;
    assert_eq!(
        r.json(),
        json!({"code": 0, "message": "success", "data": "ok"})
    );
    let l = http(a, "GET", "/nacos/v2/ns/instance/list?serviceName=pay")
        .await
        .json();
    assert_eq!(l["code"], 0);
    assert_eq!(l["data"]["name"], "DEFAULT_GROUP@@pay");
    assert_eq!(ports_of(&l["data"]), vec![80]);
    // The v2 beat answers without the envelope, as Nacos does.
    let b = http(
        a,
        "PUT",
        "/nacos/v2/ns/instance/beat?serviceName=pay&ip=10.0.0.1&port=80",
    )
    .await;
    assert_eq!(b.json()["code"], 10200);
    let e = http(a, "POST", "/nacos/v2/ns/instance?serviceName=pay&port=80").await;
    assert_eq!(e.status, 400);
    assert_eq!(
        e.json(),
        json!({"code": 10000, "message": "parameter missing", "data": "Param 'ip' is required."})
    );
    let e = http(
        a,
        "GET",
        "/nacos/v2/ns/instance?serviceName=pay&ip=1.1.1.1&port=1",
    )
    .await;
    assert_eq!((e.status, e.json()["code"].as_u64()), (404, Some(21003)));
    let d = http(
        a,
        "DELETE",
        "/nacos/v2/ns/instance?serviceName=pay&ip=10.0.0.1&port=80",
    )
    .await;
    assert_eq!(d.json()["data"], "ok");
    h.stop().await;
}

#[tokio::test]
async fn http_instances_live_on_their_lease() {
    let h = start(quick()).await;
    let a = nacos(&h);
    let md = enc(
        r#"{"preserved.heart.beat.interval":"200","preserved.heart.beat.timeout":"600","preserved.ip.delete.timeout":"1200"}"#,
    );
    let r = http(
        a,
        "POST",
        &format!("/nacos/v1/ns/instance?serviceName=lease&ip=10.0.0.1&port=80&metadata={md}"),
    )
    .await;
    assert_eq!(r.status, 200, "{r:?}");
    // Beaten, it stays healthy past its unhealthy-after.
    for _ in 0..6 {
        let b = http(
            a,
            "PUT",
            "/nacos/v1/ns/instance/beat?serviceName=lease&ip=10.0.0.1&port=80",
        )
        .await;
        assert_eq!(b.json()["code"], 10200);
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(hosts(a, "lease").await, vec![(80, true)]);
    // Without beats: unhealthy, then gone.
    eventually("unhealthy without beats", async || {
        (hosts(a, "lease").await == vec![(80, false)]).then_some(())
    })
    .await;
    eventually("removed at its lease's end", async || {
        hosts(a, "lease").await.is_empty().then_some(())
    })
    .await;
    h.stop().await;
}

#[tokio::test]
async fn http_bad_requests_get_nacos_errors_and_change_nothing() {
    let h = start(quick()).await;
    let a = nacos(&h);
    let cases: &[(&str, &str, u16, &str)] = &[
        (
            "POST",
            "/nacos/v1/ns/instance?ip=1.1.1.1&port=80",
            400,
            "Param 'serviceName' is required.",
        ),
        (
            "POST",
            "/nacos/v1/ns/instance?serviceName=s&port=80",
            400,
            "Param 'ip' is required.",
        ),
        (
            "POST",
            "/nacos/v1/ns/instance?serviceName=s&ip=1.1.1.1",
            400,
            "Param 'port' is required.",
        ),
        (
            "POST",
            "/nacos/v1/ns/instance?serviceName=s&ip=1.1.1.1&port=http",
            400,
            "Param 'port' is not a port number (0 to 65535): 'http'",
        ),
        (
            "POST",
            "/nacos/v1/ns/instance?serviceName=s&ip=1.1.1.1&port=0",
            400,
            "1.1.1.1: port must not be 0",
        ),
        (
            "POST",
            "/nacos/v1/ns/instance?serviceName=s&ip=1.1.1.1&port=80&healthy=ture",
            400,
            "Param 'healthy' is not a boolean (true or false): 'ture'",
        ),
        (
            "POST",
            "/nacos/v1/ns/instance?serviceName=s&ip=1.1.1.1&port=80&weight=10001",
            400,
            "instance format invalid: The weights range from 0.0 to 10000.0",
        ),
        (
            "POST",
            "/nacos/v1/ns/instance?serviceName=s&ip=1.1.1.1&port=80&metadata=%7Bbad",
            400,
            "metadata format incorrect:{bad",
        ),
        (
            "POST",
            "/nacos/v1/ns/instance?serviceName=%40%40s&ip=1.1.1.1&port=80",
            400,
            "Param 'serviceName' is illegal, it should be format as 'groupName@@serviceName'",
        ),
        (
            "POST",
            "/nacos/v1/ns/instance?serviceName=s&ip=1.1.1.1&port=80&ephemeral=false",
            400,
            "persistent instances are not supported: this registry keeps ephemeral instances only (register with ephemeral=true)",
        ),
        (
            "POST",
            "/nacos/v1/ns/instance?serviceName=s&ip=1.1.1.1&port=80&metadata=%7B%22preserved.heart.beat.interval%22%3A%2299999%22%7D",
            400,
            "Instance 'heart beat interval' must less than 'heart beat timeout' and 'ip delete timeout'.",
        ),
        (
            "POST",
            "/nacos/v1/ns/instance?serviceName=s&ip=1.1.1.1&port=80&metadata=%7B%22preserved.ip.delete.timeout%22%3A%22soon%22%7D",
            400,
            "metadata 'preserved.ip.delete.timeout' is not a whole number of milliseconds: 'soon'",
        ),
        (
            "POST",
            "/nacos/v1/ns/instance?serviceName=s&ip=1.1.1.1&port=80&metadata=%7B%22preserved.heart.beat.interval%22%3A%2210%22%7D",
            400,
            "1.1.1.1:80: beat interval of 10 ms is below the server's floor of 100 ms",
        ),
        (
            "PUT",
            "/nacos/v1/ns/instance/beat?serviceName=s&beat=%7Bnot",
            400,
            "Param 'beat' is not a valid beat: ",
        ),
        (
            "PUT",
            "/nacos/v1/ns/instance/beat?serviceName=s&beat=%7B%22ip%22%3A%221.1.1.1%22%2C%22port%22%3A80%2C%22ephemeral%22%3Afalse%7D",
            400,
            "persistent instances",
        ),
        (
            "GET",
            "/nacos/v1/ns/instance/list",
            400,
            "Param 'serviceName' is required.",
        ),
        (
            "GET",
            "/nacos/v1/ns/service/list?pageNo=1",
            400,
            "Param 'pageSize' is required.",
        ),
        (
            "GET",
            "/nacos/v1/ns/service/list?pageNo=1&pageSize=5000",
            400,
            "page size: must be 1..=1000",
        ),
        (
            "GET",
            "/nacos/v1/ns/operator/metrics?onlyStatus=maybe",
            400,
            "Param 'onlyStatus' is not a boolean",
        ),
        (
            "GET",
            "/nacos/v1/cs/configs?dataId=x",
            404,
            "no such Nacos endpoint: GET /nacos/v1/cs/configs",
        ),
        (
            "PATCH",
            "/nacos/v1/ns/instance?serviceName=s&ip=1.1.1.1&port=80",
            405,
            "",
        ),
    ];
    for (method, path, status, text) in cases {
        let r = http(a, method, path).await;
        assert_eq!(r.status, *status, "{method} {path}: {r:?}");
        assert!(
            r.body.starts_with(text),
            "{method} {path}: {:?} does not start with {text:?}",
            r.body
        );
    }
    // Too many parameters; a body over the limit (413, not read); a query string over the
    // limit; a body that is not a form is ignored (so the required parameters are missing).
    let many: String = (0..70).map(|i| format!("p{i}=v&")).collect();
    let r = http(a, "POST", &format!("/nacos/v1/ns/instance?{many}")).await;
    assert_eq!(r.status, 400, "{r:?}");
    assert!(r.body.starts_with("too many parameters"), "{r:?}");
    let big = format!(
        "serviceName=s&ip=1.1.1.1&port=80&metadata={}",
        "x".repeat(600 << 10)
    );
    let r = http_form(a, "POST", "/nacos/v1/ns/instance", &big).await;
    assert_eq!(
        r.status,
        413,
        "{:?}",
        (r.status, &r.body[..r.body.len().min(100)])
    );
    let declared = format!(
        "POST /nacos/v1/ns/instance HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        100 << 20
    );
    let r = http_raw(a, declared.as_bytes()).await.expect("an answer");
    assert_eq!(r.status, 413);
    let long = http(
        a,
        "GET",
        &format!(
            "/nacos/v1/ns/instance/list?serviceName={}",
            "s".repeat(600 << 10)
        ),
    )
    .await;
    assert!([400, 414, 431].contains(&long.status), "{}", long.status);
    let r = http_raw(
        a,
        b"POST /nacos/v1/ns/instance HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 50\r\nConnection: close\r\n\r\n{\"serviceName\":\"s\",\"ip\":\"1.1.1.1\",\"port\":80,\"x\":1}",
    )
    .await
    .expect("an answer");
    assert_eq!(
        (r.status, r.body.as_str()),
        (400, "Param 'serviceName' is required.")
    );
    // Not HTTP at all: an error answer or a closed connection, nothing else.
    let r = http_raw(a, b"\x16\x03\x01\x02\x00garbage\r\n\r\n").await;
    assert!(r.as_ref().is_none_or(|r| r.status == 400), "{r:?}");

    // Nothing of it reached the registry; a good request still works.
    let m = http(a, "GET", "/nacos/v1/ns/operator/metrics?onlyStatus=false")
        .await
        .json();
    assert_eq!(
        (m["serviceCount"].as_u64(), m["instanceCount"].as_u64()),
        (Some(0), Some(0))
    );
    let r = http(
        a,
        "POST",
        "/nacos/v1/ns/instance?serviceName=s&ip=1.1.1.1&port=80",
    )
    .await;
    assert_eq!(r.status, 200);
    h.stop().await;
}

#[tokio::test]
async fn a_node_that_cannot_serve_sends_clients_elsewhere_and_pushes_nothing_empty() {
    let h = start(quick()).await;
    let a = nacos(&h);
    // A gRPC subscriber of a service with one instance.
    let reg = Grpc::connect(a).await;
    let _reg_stream = reg.setup().await;
    let (t, _) = reg
        .call(
            "InstanceRequest",
            register_request("s", grpc_instance(1, None)),
        )
        .await;
    assert_eq!(t, "InstanceResponse");
    let sub = Grpc::connect(a).await;
    let mut stream = sub.setup().await;
    let (t, body) = sub
        .call("SubscribeServiceRequest", json!({"serviceName": "s", "groupName": "DEFAULT_GROUP", "subscribe": true, "clusters": ""}))
        .await;
    assert_eq!(
        (t.as_str(), ports_of(&body["serviceInfo"])),
        ("SubscribeServiceResponse", vec![1])
    );

    // The node goes back to loading (as a member rejoining a cluster does).
    h.node.set_ready(false);
    let r = http(
        a,
        "POST",
        "/nacos/v1/ns/instance?serviceName=s&ip=1.1.1.1&port=80",
    )
    .await;
    assert_eq!(
        (r.status, r.body.as_str()),
        (503, "server is not ready: try another node")
    );
    let r = http(a, "GET", "/nacos/v1/ns/instance/list?serviceName=s").await;
    assert_eq!(r.status, 503);
    let r = http(a, "GET", "/nacos/v1/console/health/readiness").await;
    assert_eq!(r.status, 500);
    let m = http(a, "GET", "/nacos/v1/ns/operator/metrics").await.json();
    assert_eq!(m["status"], "DOWN");
    let (t, body) = sub.call("ServerCheckRequest", json!({})).await;
    assert_eq!(
        (t.as_str(), body["errorCode"].as_i64()),
        ("ErrorResponse", Some(300))
    );
    let (t, body) = sub
        .call("HealthCheckRequest", json!({"requestId": "h"}))
        .await;
    assert_eq!(
        (t.as_str(), body["errorCode"].as_i64()),
        ("ErrorResponse", Some(300))
    );
    assert_eq!(body["requestId"], "h");
    // A change while not ready (the instance's connection drops) is not pushed yet...
    drop(_reg_stream);
    drop(reg);
    assert!(
        tokio::time::timeout(Duration::from_millis(800), stream.next())
            .await
            .is_err(),
        "pushed while not ready"
    );
    // ...and is, once the node serves again.
    h.node.set_ready(true);
    let push = stream.push().await;
    assert_eq!(push["serviceInfo"]["hosts"][0]["healthy"], false, "{push}");
    h.stop().await;
}

// ---------------------------------------------------------------------------------------------
// gRPC

#[tokio::test]
async fn grpc_connection_publishes_subscribes_and_lapses_when_it_drops() {
    let h = start(quick()).await;
    let a = nacos(&h);
    let c = Grpc::connect(a).await;
    let (t, check) = c
        .call("ServerCheckRequest", json!({"requestId": "7"}))
        .await;
    assert_eq!(t, "ServerCheckResponse");
    assert_eq!(
        (check["resultCode"].as_i64(), check["errorCode"].as_i64()),
        (Some(200), Some(0))
    );
    assert_eq!(check["requestId"], "7");
    assert_eq!(check["supportAbilityNegotiation"], true);
    assert!(
        check["connectionId"]
            .as_str()
            .unwrap()
            .contains("_127.0.0.1_")
    );

    // A request that overtakes the setup waits for it (the Rust client's order).
    let early = {
        let c2 = Grpc {
            channel: c.channel.clone(),
        };
        tokio::spawn(async move {
            c2.call(
                "InstanceRequest",
                register_request("svc", grpc_instance(1, Some((200, 400, 800)))),
            )
            .await
        })
    };
    tokio::time::sleep(Duration::from_millis(100)).await;
    let mut stream = c.setup().await;
    let (t, body) = early.await.unwrap();
    assert_eq!(
        (t.as_str(), body["type"].as_str()),
        ("InstanceResponse", Some("registerInstance"))
    );
    assert_eq!(hosts(a, "svc").await, vec![(1, true)]);

    // One instance per service per connection: a second register replaces the first.
    let (t, _) = c
        .call(
            "InstanceRequest",
            register_request("svc", grpc_instance(2, Some((200, 400, 800)))),
        )
        .await;
    assert_eq!(t, "InstanceResponse");
    assert_eq!(hosts(a, "svc").await, vec![(2, true)]);
    // A batch publishes several; an empty batch withdraws them.
    let batch = |instances: Vec<Value>| {
        json!({"requestId": "b", "namespace": "public", "serviceName": "svc",
        "groupName": "DEFAULT_GROUP", "type": "batchRegisterInstance", "instances": instances})
    };
    let lease = Some((200, 400, 800));
    let (t, _) = c
        .call(
            "BatchInstanceRequest",
            batch(vec![grpc_instance(3, lease), grpc_instance(4, lease)]),
        )
        .await;
    assert_eq!(t, "BatchInstanceResponse");
    assert_eq!(hosts(a, "svc").await, vec![(3, true), (4, true)]);
    let (t, _) = c.call("BatchInstanceRequest", batch(vec![])).await;
    assert_eq!(t, "BatchInstanceResponse");
    assert_eq!(hosts(a, "svc").await, vec![]);
    // Deregister ignores the ip and port it names: it withdraws the connection's publication.
    c.call(
        "InstanceRequest",
        register_request("svc", grpc_instance(5, lease)),
    )
    .await;
    let mut dereg = register_request("svc", grpc_instance(999, None));
    dereg["type"] = json!("deregisterInstance");
    let (t, _) = c.call("InstanceRequest", dereg).await;
    assert_eq!(t, "InstanceResponse");
    assert_eq!(hosts(a, "svc").await, vec![]);

    // The connection keeps its instances alive without beats, past their lease.
    c.call(
        "InstanceRequest",
        register_request("svc", grpc_instance(6, lease)),
    )
    .await;
    tokio::time::sleep(Duration::from_millis(1200)).await;
    assert_eq!(hosts(a, "svc").await, vec![(6, true)]);

    // Query and subscribe answer the gRPC ServiceInfo (plain name); a change is pushed whole.
    let (t, q) = c
        .call("ServiceQueryRequest", json!({"serviceName": "svc", "groupName": "DEFAULT_GROUP", "cluster": "", "healthyOnly": false}))
        .await;
    assert_eq!(t, "QueryServiceResponse");
    assert_eq!(
        (
            q["serviceInfo"]["name"].as_str(),
            q["serviceInfo"]["cacheMillis"].as_u64()
        ),
        (Some("svc"), Some(10_000))
    );
    let (t, s) = c
        .call("SubscribeServiceRequest", json!({"serviceName": "svc", "groupName": "DEFAULT_GROUP", "subscribe": true, "clusters": ""}))
        .await;
    assert_eq!(t, "SubscribeServiceResponse");
    assert_eq!(ports_of(&s["serviceInfo"]), vec![6]);
    let mut last_ref = s["serviceInfo"]["lastRefTime"].as_u64().unwrap();
    assert!(last_ref > q["serviceInfo"]["lastRefTime"].as_u64().unwrap());
    let r = http(
        a,
        "POST",
        "/nacos/v1/ns/instance?serviceName=svc&ip=10.2.0.1&port=7",
    )
    .await;
    assert_eq!(r.status, 200);
    let p = stream.push().await;
    assert_eq!(
        (p["serviceName"].as_str(), p["groupName"].as_str()),
        (Some("svc"), Some("DEFAULT_GROUP"))
    );
    assert_eq!(p["headers"], json!({}));
    assert_eq!(ports_of(&p["serviceInfo"]), vec![6, 7]);
    let t = p["serviceInfo"]["lastRefTime"].as_u64().unwrap();
    assert!(t > last_ref, "lastRefTime must grow: {t} after {last_ref}");
    last_ref = t;
    // Many changes at once come as few pushes, each newer than the last, ending in the latest.
    for port in 10..20 {
        http(
            a,
            "POST",
            &format!("/nacos/v1/ns/instance?serviceName=svc&ip=10.2.0.1&port={port}"),
        )
        .await;
    }
    loop {
        let p = stream.push().await;
        let t = p["serviceInfo"]["lastRefTime"].as_u64().unwrap();
        assert!(t > last_ref);
        last_ref = t;
        if ports_of(&p["serviceInfo"]).len() == 12 {
            break;
        }
    }
    // Services list.
    let (t, l) = c
        .call(
            "ServiceListRequest",
            json!({"namespace": "", "groupName": "DEFAULT_GROUP", "pageNo": 1, "pageSize": 10}),
        )
        .await;
    assert_eq!(t, "ServiceListResponse");
    assert_eq!(
        (l["count"].as_u64(), l["serviceNames"].clone()),
        (Some(1), json!(["svc"]))
    );
    let (t, h2) = c.call("HealthCheckRequest", json!({})).await;
    assert_eq!(
        (t.as_str(), h2["errorCode"].as_i64()),
        ("HealthCheckResponse", Some(0))
    );

    // The connection drops: its instance is unhealthy at once, then gone at its lease's end;
    // the HTTP ones stay.
    drop(stream);
    drop(c);
    eventually("unhealthy once the connection dropped", async || {
        hosts(a, "svc").await.contains(&(6, false)).then_some(())
    })
    .await;
    eventually("removed at the lease's end", async || {
        (!hosts(a, "svc").await.iter().any(|(p, _)| *p == 6)).then_some(())
    })
    .await;
    assert_eq!(hosts(a, "svc").await.len(), 11);
    h.stop().await;
}

#[tokio::test]
async fn two_connections_publishing_one_instance_keep_it_while_either_does() {
    let h = start(quick()).await;
    let a = nacos(&h);
    let lease = Some((200, 400, 800));
    let one = Grpc::connect(a).await;
    let s1 = one.setup().await;
    let two = Grpc::connect(a).await;
    let _s2 = two.setup().await;
    for c in [&one, &two] {
        c.call(
            "InstanceRequest",
            register_request("shared", grpc_instance(1, lease)),
        )
        .await;
    }
    // The first withdraws: the second still publishes it.
    let mut dereg = register_request("shared", grpc_instance(1, None));
    dereg["type"] = json!("deregisterInstance");
    one.call("InstanceRequest", dereg).await;
    tokio::time::sleep(Duration::from_millis(1000)).await;
    assert_eq!(hosts(a, "shared").await, vec![(1, true)]);
    // Both publish again; the first one's connection drops: still healthy.
    one.call(
        "InstanceRequest",
        register_request("shared", grpc_instance(1, lease)),
    )
    .await;
    drop(s1);
    drop(one);
    tokio::time::sleep(Duration::from_millis(1000)).await;
    assert_eq!(hosts(a, "shared").await, vec![(1, true)]);
    h.stop().await;
}

#[tokio::test]
async fn grpc_bad_requests_get_error_responses_and_change_nothing() {
    let h = start(quick()).await;
    let a = nacos(&h);
    // A connection that never sets up: its requests are unregistered after the wait.
    let lone = Grpc::connect(a).await;
    let (t, e) = lone
        .call(
            "InstanceRequest",
            register_request("bad", grpc_instance(1, None)),
        )
        .await;
    assert_eq!(
        (t.as_str(), e["errorCode"].as_i64(), e["message"].as_str()),
        (
            "ErrorResponse",
            Some(301),
            Some("Connection is unregistered.")
        )
    );
    assert_eq!(e["requestId"], "1");

    let c = Grpc::connect(a).await;
    let _stream = c.setup().await;
    let err = |code: i64| {
        move |(t, e): (String, Value)| {
            assert_eq!(t, "ErrorResponse", "{e}");
            assert_eq!(
                (e["resultCode"].as_i64(), e["errorCode"].as_i64()),
                (Some(500), Some(code)),
                "{e}"
            );
            e["message"].as_str().unwrap().to_string()
        }
    };
    let m = err(302)(c.call("ConfigQueryRequest", json!({"dataId": "x"})).await);
    assert!(m.starts_with("RequestHandler Not Found"), "{m}");
    let p = c
        .call_raw(Payload::new("InstanceRequest", "{not json"))
        .await
        .unwrap();
    let m = err(400)((
        p.type_name().to_string(),
        serde_json::from_slice(p.json()).unwrap(),
    ));
    assert!(m.starts_with("malformed InstanceRequest body"), "{m}");
    let m = err(400)(c.call("PersistentInstanceRequest", json!({})).await);
    assert!(
        m.starts_with("persistent instances are not supported"),
        "{m}"
    );
    let mut persistent = grpc_instance(1, None);
    persistent["ephemeral"] = json!(false);
    err(400)(
        c.call("InstanceRequest", register_request("bad", persistent))
            .await,
    );
    let mut no_ip = grpc_instance(1, None);
    no_ip["ip"] = Value::Null;
    assert_eq!(
        err(400)(
            c.call("InstanceRequest", register_request("bad", no_ip))
                .await
        ),
        "Param 'ip' is required."
    );
    let mut big_port = grpc_instance(1, None);
    big_port["port"] = json!(70000);
    err(400)(
        c.call("InstanceRequest", register_request("bad", big_port))
            .await,
    );
    let mut weird = register_request("bad", grpc_instance(1, None));
    weird["type"] = json!("registerEverything");
    err(400)(c.call("InstanceRequest", weird).await);
    let mut other = grpc_instance(1, None);
    other["serviceName"] = json!("DEFAULT_GROUP@@another");
    err(400)(
        c.call("InstanceRequest", register_request("bad", other))
            .await,
    );
    let mut bad_lease = grpc_instance(1, Some((5000, 1000, 9000)));
    bad_lease["port"] = json!(2);
    err(400)(
        c.call("InstanceRequest", register_request("bad", bad_lease))
            .await,
    );
    let too_many: Vec<Value> = (1..=4097).map(|p| grpc_instance(p as u16, None)).collect();
    let m = err(400)(
        c.call(
            "BatchInstanceRequest",
            json!({"serviceName": "bad", "type": "batchRegisterInstance", "instances": too_many}),
        )
        .await,
    );
    assert!(m.contains("4096"), "{m}");
    err(400)(c.call("ConnectionSetupRequest", json!({})).await);
    err(400)(
        c.call("ServiceListRequest", json!({"pageNo": 1, "pageSize": 0}))
            .await,
    );
    // Over the payload limit: a gRPC status, and the connection goes on.
    let huge = Payload::new("InstanceRequest", vec![b' '; 5 << 20]);
    let status = c.call_raw(huge).await.unwrap_err();
    assert!(
        matches!(
            status.code(),
            tonic::Code::OutOfRange | tonic::Code::ResourceExhausted
        ),
        "{status:?}"
    );
    let (t, _) = c.call("HealthCheckRequest", json!({})).await;
    assert_eq!(t, "HealthCheckResponse");
    // A second stream on one connection is refused; the first one stays.
    let mut second = tonic::client::Grpc::new(c.channel.clone());
    second.ready().await.unwrap();
    let Err(status) = second
        .streaming(
            Request::new(futures_util::stream::pending::<Payload>()),
            http::uri::PathAndQuery::from_static(BI_STREAM_PATH),
            codec(),
        )
        .await
    else {
        panic!("a second stream was accepted")
    };
    assert_eq!(status.code(), tonic::Code::AlreadyExists);

    // None of it registered anything; the connection still works.
    let m = http(a, "GET", "/nacos/v1/ns/operator/metrics?onlyStatus=false")
        .await
        .json();
    assert_eq!(m["instanceCount"], 0);
    let (t, _) = c
        .call(
            "InstanceRequest",
            register_request("good", grpc_instance(1, None)),
        )
        .await;
    assert_eq!(t, "InstanceResponse");
    h.stop().await;
}

#[tokio::test]
async fn a_stream_with_garbage_is_closed_and_its_instances_lapse() {
    let h = start(quick()).await;
    let a = nacos(&h);
    let c = Grpc::connect(a).await;
    let mut stream = c.setup().await;
    c.call(
        "InstanceRequest",
        register_request("g", grpc_instance(1, Some((200, 5000, 10000)))),
    )
    .await;
    assert_eq!(hosts(a, "g").await, vec![(1, true)]);
    stream.send("InstanceRequest", json!({})).await;
    assert!(stream.next().await.is_none(), "the stream ends");
    eventually("unhealthy once the connection closed", async || {
        (hosts(a, "g").await == vec![(1, false)]).then_some(())
    })
    .await;
    h.stop().await;
}

#[tokio::test]
async fn a_subscriber_that_stops_reading_is_closed_and_others_are_served() {
    let h = start(quick()).await;
    let a = nacos(&h);
    let subscribe = json!({"serviceName": "busy", "groupName": "DEFAULT_GROUP", "subscribe": true, "clusters": ""});
    // A subscriber that reads and acks, all along.
    let good = Grpc::connect(a).await;
    let mut good_stream = good.setup().await;
    good.call("SubscribeServiceRequest", subscribe.clone())
        .await;
    let good_reader = tokio::spawn(async move {
        loop {
            let p = good_stream.push().await;
            if ports_of(&p["serviceInfo"]).len() == 30 {
                return good_stream;
            }
        }
    });
    // One that never reads its stream again after the setup (so acks nothing), and publishes.
    let deaf = Grpc::connect(a).await;
    let deaf_stream = deaf.setup().await;
    deaf.call(
        "InstanceRequest",
        register_request("deaf", grpc_instance(1, Some((200, 5000, 10000)))),
    )
    .await;
    deaf.call("SubscribeServiceRequest", subscribe).await;
    for port in 1..=30u16 {
        http(
            a,
            "POST",
            &format!("/nacos/v1/ns/instance?serviceName=busy&ip=10.3.0.1&port={port}"),
        )
        .await;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Past the stall bound the deaf connection is closed: its instance lapses.
    eventually("the deaf connection closed", async || {
        (hosts(a, "deaf").await == vec![(1, false)]).then_some(())
    })
    .await;
    drop(deaf_stream);
    // The reading subscriber has every change.
    let _good_stream = tokio::time::timeout(DEADLINE, good_reader)
        .await
        .expect("the reading subscriber got the last change")
        .unwrap();
    // Its stream is its connection: kept open, the connection serves on.
    let (t, _) = good.call("HealthCheckRequest", json!({})).await;
    assert_eq!(t, "HealthCheckResponse");
    h.stop().await;
}

// ---------------------------------------------------------------------------------------------
// Crossing: Nacos instances are ordinary instances of the registry, in a cluster.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nacos_and_native_instances_cross_in_a_cluster() {
    let _serial = cluster_support::serial().await;
    let (configs, listeners) = cluster_support::bind_nodes(3, |_| {}).await;
    let mut handles = Vec::new();
    for (cfg, (client, peer)) in configs.into_iter().zip(listeners) {
        let nacos = NacosListeners::bind("127.0.0.1:0".parse().unwrap())
            .await
            .unwrap();
        handles.push(
            Server::from_listeners(cfg, client, Some(peer))
                .with_nacos(nacos, quick())
                .spawn(),
        );
    }
    eventually("cluster formed", async || {
        handles
            .iter()
            .all(|h| {
                let s = h.node.cluster_status();
                s.ready && s.members.iter().all(|m| m.up)
            })
            .then_some(())
    })
    .await;
    let n = |i: usize| nacos(&handles[i]);
    let native = async |i: usize| common::client(&[handles[i].addr]).await;

    // Native → Nacos: registered with the SDK at node 1, read over HTTP at node 2 and pushed to
    // a gRPC subscriber at node 3.
    let sdk = native(0).await;
    let name = ServiceName::new("public", "DEFAULT_GROUP", "cross");
    let mut inst = Instance::new(common::key(&name, "DEFAULT", "10.9.0.1", 100));
    inst.metadata.push(("from".into(), "native".into()));
    sdk.register(inst).await.unwrap();
    let sub = Grpc::connect(n(2)).await;
    let mut sub_stream = sub.setup().await;
    for i in [1, 2] {
        eventually("native instance over HTTP at nodes 2 and 3", async || {
            (hosts(n(i), "cross").await == vec![(100, true)]).then_some(())
        })
        .await;
    }
    let (_, s) = sub
        .call("SubscribeServiceRequest", json!({"serviceName": "cross", "groupName": "DEFAULT_GROUP", "subscribe": true, "clusters": ""}))
        .await;
    assert_eq!(ports_of(&s["serviceInfo"]), vec![100]);
    assert_eq!(s["serviceInfo"]["hosts"][0]["metadata"]["from"], "native");

    // Nacos HTTP → native and gRPC: registered over HTTP at node 2, seen by a native
    // subscription at node 1 and pushed to the gRPC subscriber at node 3.
    let mut native_sub = sdk.subscribe(&name).await.unwrap();
    let r = http(
        n(1),
        "POST",
        "/nacos/v1/ns/instance?serviceName=cross&ip=10.9.0.2&port=200",
    )
    .await;
    assert_eq!(r.status, 200);
    loop {
        let p = sub_stream.push().await;
        if ports_of(&p["serviceInfo"]) == vec![100, 200] {
            break;
        }
    }
    loop {
        let s = tokio::time::timeout(DEADLINE, native_sub.next())
            .await
            .unwrap()
            .unwrap();
        if s.instances.iter().any(|i| i.port == 200) {
            break;
        }
    }

    // Nacos gRPC → native: published from node 3, queried natively at node 2; when its
    // connection drops, every node shows it unhealthy at once.
    let publisher = Grpc::connect(n(2)).await;
    let pub_stream = publisher.setup().await;
    let (t, _) = publisher
        .call("InstanceRequest", json!({"serviceName": "cross", "groupName": "DEFAULT_GROUP", "type": "registerInstance",
              "instance": {"ip": "10.9.0.3", "port": 300, "metadata": {"preserved.heart.beat.interval": "500",
              "preserved.heart.beat.timeout": "1500", "preserved.ip.delete.timeout": "3000"}}}))
        .await;
    assert_eq!(t, "InstanceResponse");
    let reader = native(1).await;
    let health = |c: &distro::client::Client, port: u16| {
        let name = name.clone();
        let c = c.clone();
        async move {
            c.query(&name, false)
                .await
                .ok()?
                .instances
                .iter()
                .find(|i| i.port == port)
                .map(|i| i.healthy)
        }
    };
    eventually("gRPC instance natively at node 2", async || {
        (health(&reader, 300).await == Some(true)).then_some(())
    })
    .await;
    // Still there after several leases: the connection renews it.
    tokio::time::sleep(Duration::from_millis(3500)).await;
    assert_eq!(health(&reader, 300).await, Some(true));
    drop(pub_stream);
    drop(publisher);
    eventually(
        "gRPC instance unhealthy at node 2 once its connection dropped",
        async || (health(&reader, 300).await == Some(false)).then_some(()),
    )
    .await;
    eventually(
        "gRPC instance removed everywhere at its lease's end",
        async || {
            let mut gone = true;
            for i in 0..3 {
                gone &= !hosts(n(i), "cross").await.iter().any(|(p, _)| *p == 300);
            }
            gone.then_some(())
        },
    )
    .await;
    assert_eq!(hosts(n(0), "cross").await, vec![(100, true), (200, true)]);

    sdk.close();
    reader.close();
    for h in handles {
        h.stop().await;
    }
}
