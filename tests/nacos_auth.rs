//! Nacos logins, accessTokens and the admin port's bearer tokens over real sockets
//! (`docs/security.md` §4.1–4.2): a node with a token file serves a Nacos caller only with a
//! valid accessToken (HTTP parameter or gRPC metadata header) or username and password, each
//! within its rights; every refusal changes nothing and looks the same whoever asked; a token
//! minted by one node of a cluster is good at the others. The admin port reads and changes the
//! registry only for a bearer token with the right.

mod cluster_support;
mod common;

use std::net::SocketAddr;
use std::path::PathBuf;

use distro::auth::access::AccessKey;
use distro::auth::file::{mint_token, token_entry, user_entry};
use distro::frontend::nacos::grpc::proto::{Payload, REQUEST_PATH};
use distro::frontend::nacos::{GRPC_PORT_OFFSET, NacosListeners, NacosSettings};
use distro::server::{Server, ServerHandle};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tonic::transport::{Channel, Endpoint};

use common::{DEADLINE, eventually};

const WRITER_PW: &str = "writer's long password";
const READER_PW: &str = "reader's long password";
const OTHER_PW: &str = "other's long password";
const CLUSTER_TOKEN: &str = "nacos-auth-test-cluster-token";

fn strings(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

/// A token file: users `writer` (writes `public`), `reader` (reads `public`), `other` (writes
/// `team-b`); tokens `admin` (writes everything) and `viewer` (reads everything).
struct Keys {
    dir: PathBuf,
    path: PathBuf,
    admin: String,
    viewer: String,
    /// Every entry but the writer's (hashed once: a password hash made again is a changed
    /// password, which ends that user's tokens).
    others: String,
}

impl Keys {
    fn new(tag: &str) -> Keys {
        let dir =
            std::env::temp_dir().join(format!("distro-nacos-auth-{}-{tag}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let (admin, viewer) = (mint_token(), mint_token());
        let others = [
            user_entry("reader", READER_PW, &strings(&["public"]), &[]).unwrap(),
            user_entry("other", OTHER_PW, &[], &strings(&["team-b"])).unwrap(),
            token_entry("admin", &admin, &[], &strings(&["*"])).unwrap(),
            token_entry("viewer", &viewer, &strings(&["*"]), &[]).unwrap(),
        ]
        .join("\n");
        let keys = Keys {
            path: dir.join("tokens.toml"),
            dir,
            admin,
            viewer,
            others,
        };
        keys.write(WRITER_PW);
        keys
    }

    /// Writes the file, with `writer_pw` as the writer's password.
    fn write(&self, writer_pw: &str) {
        let writer = user_entry("writer", writer_pw, &[], &strings(&["public"])).unwrap();
        let text = format!("{writer}\n{}", self.others);
        std::fs::write(&self.path, text).unwrap();
    }
}

impl Drop for Keys {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A standalone node with the token file, the Nacos APIs and the admin port.
async fn start(keys: &Keys) -> ServerHandle {
    let mut cfg = common::test_config();
    cfg.token_file = Some(keys.path.clone());
    cfg.cluster_token = Some(CLUSTER_TOKEN.into());
    let client = tokio::net::TcpListener::bind(cfg.listen).await.unwrap();
    let admin = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let nacos = NacosListeners::bind("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    Server::from_listeners(cfg, client, None)
        .with_nacos(nacos, NacosSettings::default())
        .with_admin(admin)
        .spawn()
}

#[derive(Debug, Clone, PartialEq)]
struct Answer {
    status: u16,
    headers: String,
    body: String,
}

impl Answer {
    fn json(&self) -> Value {
        serde_json::from_str(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {} {}", self.status, self.body))
    }
}

/// One HTTP/1.1 request (`Connection: close`), with extra header lines and a form body.
async fn http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &str,
    form: Option<&str>,
) -> Answer {
    let body = form.unwrap_or("");
    let content_type = if form.is_some() {
        "Content-Type: application/x-www-form-urlencoded\r\n"
    } else {
        ""
    };
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\n{headers}{content_type}Content-Length: {}\r\n\
         Connection: close\r\n\r\n{body}",
        body.len()
    );
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(req.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    tokio::time::timeout(DEADLINE, s.read_to_end(&mut out))
        .await
        .expect("the server answers and closes")
        .unwrap();
    let text = String::from_utf8_lossy(&out).to_string();
    let (head, body) = text.split_once("\r\n\r\n").expect("an HTTP answer");
    let status = head.split(' ').nth(1).unwrap().parse().unwrap();
    Answer {
        status,
        headers: head.to_ascii_lowercase(),
        body: body.to_string(),
    }
}

fn enc(s: &str) -> String {
    form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

/// Logs in over `/nacos/v1/auth/login`; the answer.
async fn login(nacos: SocketAddr, user: &str, password: &str) -> Answer {
    http(
        nacos,
        "POST",
        &format!(
            "/nacos/v1/auth/login?username={}&password={}",
            enc(user),
            enc(password)
        ),
        "",
        None,
    )
    .await
}

async fn token_of(nacos: SocketAddr, user: &str, password: &str) -> String {
    let a = login(nacos, user, password).await;
    assert_eq!(a.status, 200, "{a:?}");
    a.json()["accessToken"].as_str().unwrap().to_string()
}

/// Registers `ip:port` of `service` over HTTP v1 with `auth` (query parameters, e.g.
/// `accessToken=…`).
async fn register(nacos: SocketAddr, ns: &str, service: &str, port: u16, auth: &str) -> Answer {
    http(
        nacos,
        "POST",
        &format!(
            "/nacos/v1/ns/instance?namespaceId={ns}&serviceName={service}&ip=10.0.0.1&port={port}&{auth}"
        ),
        "",
        None,
    )
    .await
}

/// The ports of `service` in `ns`, read with `auth`.
async fn ports(nacos: SocketAddr, ns: &str, service: &str, auth: &str) -> Vec<u64> {
    let a = http(
        nacos,
        "GET",
        &format!("/nacos/v1/ns/instance/list?namespaceId={ns}&serviceName={service}&{auth}"),
        "",
        None,
    )
    .await;
    assert_eq!(a.status, 200, "{a:?}");
    let mut v: Vec<u64> = a.json()["hosts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h["port"].as_u64().unwrap())
        .collect();
    v.sort_unstable();
    v
}

#[tokio::test]
async fn login_answers_an_access_token_and_refuses_unknown_users_and_wrong_passwords_alike() {
    let keys = Keys::new("login");
    let h = start(&keys).await;
    let n = h.nacos_addr.unwrap();

    let a = login(n, "writer", WRITER_PW).await;
    assert_eq!(a.status, 200, "{a:?}");
    let v = a.json();
    assert!(v["accessToken"].as_str().is_some_and(|t| !t.is_empty()));
    assert_eq!(v["tokenTtl"], 18000);
    assert_eq!(v["globalAdmin"], false);
    assert_eq!(v["username"], "writer");
    // nacos-sdk-python's path, with the pair in a form body.
    let a = http(
        n,
        "POST",
        "/nacos/v1/auth/users/login",
        "",
        Some(&format!("username=reader&password={}", enc(READER_PW))),
    )
    .await;
    assert_eq!(a.status, 200, "{a:?}");
    assert_eq!(a.json()["username"], "reader");

    let wrong = login(n, "writer", READER_PW).await;
    let unknown = login(n, "nobody", WRITER_PW).await;
    assert_eq!(wrong.status, 403, "{wrong:?}");
    assert_eq!(
        (wrong.status, &wrong.body),
        (unknown.status, &unknown.body),
        "a wrong password and an unknown user get the same answer"
    );
    assert!(!wrong.body.contains("writer") && !unknown.body.contains("nobody"));
    let missing = http(n, "POST", "/nacos/v1/auth/login?username=writer", "", None).await;
    assert_eq!(missing.status, 400, "{missing:?}");
    h.stop().await;
}

#[tokio::test]
async fn http_requests_need_a_valid_access_token_with_the_right_and_refusals_change_nothing() {
    let keys = Keys::new("http");
    let h = start(&keys).await;
    let n = h.nacos_addr.unwrap();
    let writer = format!("accessToken={}", token_of(n, "writer", WRITER_PW).await);
    let reader = format!("accessToken={}", token_of(n, "reader", READER_PW).await);
    let other = format!("accessToken={}", token_of(n, "other", OTHER_PW).await);

    // An expired token (signed right, by this cluster's key) and a forged one.
    let p = h.node.tokens.login("writer", WRITER_PW).unwrap();
    let expired = AccessKey::new(Some(CLUSTER_TOKEN)).mint(&p, "writer", 1_000);
    let forged = AccessKey::new(Some("another cluster")).mint(&p, "writer", u64::MAX / 2);
    let refused = [
        String::new(),
        format!("accessToken={expired}"),
        format!("accessToken={forged}"),
        "accessToken=garbage".to_string(),
        other.clone(),
        reader.clone(),
        format!("username=writer&password={}", enc(READER_PW)),
        format!("username=nobody&password={}", enc(WRITER_PW)),
    ];
    let mut bodies = Vec::new();
    for auth in &refused {
        let a = register(n, "public", "svc", 8000, auth).await;
        assert_eq!(a.status, 403, "{auth}: {a:?}");
        bodies.push(a.body);
    }
    // Without credentials, expired, forged, or wrong: one answer, which names no user.
    assert!(bodies[..4].iter().all(|b| *b == bodies[0]), "{bodies:?}");
    assert_eq!(bodies[6], bodies[0]);
    assert_eq!(bodies[7], bodies[0]);
    assert!(
        bodies[4].contains("public"),
        "names the namespace: {}",
        bodies[4]
    );
    // v2 answers in its envelope.
    let a = http(
        n,
        "POST",
        "/nacos/v2/ns/instance?serviceName=svc&ip=10.0.0.1&port=8000",
        "",
        None,
    )
    .await;
    assert_eq!(a.status, 403, "{a:?}");
    assert_eq!(a.json()["code"], 10001);
    // Reads need a token too.
    let a = http(
        n,
        "GET",
        "/nacos/v1/ns/instance/list?serviceName=svc",
        "",
        None,
    )
    .await;
    assert_eq!(a.status, 403, "{a:?}");
    // Nothing of it landed.
    assert!(ports(n, "public", "svc", &reader).await.is_empty());
    assert_eq!(h.node.store.len(), 0);

    // The writer's token, as a query parameter and in a form body; the reader reads it.
    assert_eq!(
        register(n, "public", "svc", 8001, &writer).await.status,
        200
    );
    let a = http(
        n,
        "POST",
        "/nacos/v1/ns/instance",
        "",
        Some(&format!("serviceName=svc&ip=10.0.0.1&port=8002&{writer}")),
    )
    .await;
    assert_eq!(a.status, 200, "{a:?}");
    assert_eq!(ports(n, "public", "svc", &reader).await, vec![8001, 8002]);
    // The other user writes its own namespace only.
    assert_eq!(register(n, "team-b", "svc", 8003, &other).await.status, 200);
    assert_eq!(
        register(n, "team-b", "svc", 8004, &writer).await.status,
        403
    );
    // Username and password on every request (the Node client), checked once and cached.
    let pair = format!("username=writer&password={}", enc(WRITER_PW));
    assert_eq!(register(n, "public", "svc", 8005, &pair).await.status, 200);
    assert_eq!(
        ports(n, "public", "svc", &pair).await,
        vec![8001, 8002, 8005]
    );

    // A password changed in the file (and reloaded) ends the old password's tokens and cached
    // logins; the new password works.
    keys.write("writer's new password");
    h.node.tokens.reload().unwrap();
    assert_eq!(
        register(n, "public", "svc", 8006, &writer).await.status,
        403
    );
    assert_eq!(register(n, "public", "svc", 8006, &pair).await.status, 403);
    let fresh = format!(
        "accessToken={}",
        token_of(n, "writer", "writer's new password").await
    );
    assert_eq!(register(n, "public", "svc", 8006, &fresh).await.status, 200);
    assert_eq!(
        ports(n, "public", "svc", &reader).await,
        vec![8001, 8002, 8005, 8006]
    );
    h.stop().await;
}

/// A gRPC client connection (one HTTP/2 connection is one Nacos connection).
struct Grpc {
    channel: Channel,
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

    /// A unary request with an `accessToken` metadata header (if given): the answer's class
    /// and JSON body; `None` if the call failed (the connection is gone).
    async fn call(
        &self,
        type_name: &str,
        body: Value,
        token: Option<&str>,
    ) -> Option<(String, Value)> {
        let mut p = Payload::new(type_name, body.to_string());
        if let Some(t) = token {
            p.metadata
                .as_mut()
                .unwrap()
                .headers
                .insert("accessToken".into(), t.into());
        }
        let mut grpc = tonic::client::Grpc::new(self.channel.clone());
        grpc.ready().await.ok()?;
        let path = http::uri::PathAndQuery::from_static(REQUEST_PATH);
        let codec = tonic_prost::ProstCodec::<Payload, Payload>::default();
        let p = grpc
            .unary(tonic::Request::new(p), path, codec)
            .await
            .ok()?
            .into_inner();
        Some((
            p.type_name().to_string(),
            serde_json::from_slice(p.json()).unwrap(),
        ))
    }

    /// Sends the connection's setup on its stream: the sender keeps the stream open while it
    /// lives; the task ends when the server ends the stream (the connection is closed).
    async fn setup(
        &self,
    ) -> (
        tokio::sync::mpsc::Sender<Payload>,
        tokio::task::JoinHandle<()>,
    ) {
        let mut grpc = tonic::client::Grpc::new(self.channel.clone());
        grpc.ready().await.unwrap();
        let (tx, mut rx) = tokio::sync::mpsc::channel::<Payload>(16);
        let outbound = futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx));
        let path = http::uri::PathAndQuery::from_static(
            distro::frontend::nacos::grpc::proto::BI_STREAM_PATH,
        );
        let codec = tonic_prost::ProstCodec::<Payload, Payload>::default();
        tx.send(Payload::new(
            "ConnectionSetupRequest",
            json!({"clientVersion": "test", "labels": {}, "headers": {}}).to_string(),
        ))
        .await
        .unwrap();
        let mut inbound = grpc
            .streaming(tonic::Request::new(outbound), path, codec)
            .await
            .expect("the stream opens")
            .into_inner();
        let ack = tokio::time::timeout(DEADLINE, inbound.message())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        assert_eq!(ack.type_name(), "SetupAckRequest");
        let ended = tokio::spawn(async move { while let Ok(Some(_)) = inbound.message().await {} });
        (tx, ended)
    }
}

fn register_request(service: &str, port: u16) -> Value {
    json!({"requestId": "1", "namespace": "public", "serviceName": service,
           "groupName": "DEFAULT_GROUP", "type": "registerInstance",
           "instance": {"ip": "10.0.0.2", "port": port}})
}

#[tokio::test]
async fn grpc_requests_need_the_access_token_header_and_repeated_refusals_close_the_connection() {
    let keys = Keys::new("grpc");
    let h = start(&keys).await;
    let n = h.nacos_addr.unwrap();
    let writer = token_of(n, "writer", WRITER_PW).await;
    let reader = token_of(n, "reader", READER_PW).await;

    // Server check, setup and health checks need no token, as in Nacos.
    let c = Grpc::connect(n).await;
    let (t, _) = c
        .call("ServerCheckRequest", json!({"requestId": "0"}), None)
        .await
        .unwrap();
    assert_eq!(t, "ServerCheckResponse");
    let _stream = c.setup().await;
    let (t, _) = c
        .call("HealthCheckRequest", json!({"requestId": "0"}), None)
        .await
        .unwrap();
    assert_eq!(t, "HealthCheckResponse");
    // The writer registers with its header; the same connection without one, or with the
    // reader's token, is refused (403, Nacos's "no right", on which its clients log in again).
    let (t, b) = c
        .call(
            "InstanceRequest",
            register_request("g", 9001),
            Some(&writer),
        )
        .await
        .unwrap();
    assert_eq!(t, "InstanceResponse", "{b}");
    let (t, b) = c
        .call(
            "InstanceRequest",
            register_request("g", 9002),
            Some(&reader),
        )
        .await
        .unwrap();
    assert_eq!(
        (t.as_str(), b["errorCode"].as_i64()),
        ("ErrorResponse", Some(403)),
        "{b}"
    );
    let query = json!({"namespace": "public", "serviceName": "g", "groupName": "DEFAULT_GROUP", "cluster": ""});
    let (t, b) = c
        .call("ServiceQueryRequest", query.clone(), Some(&reader))
        .await
        .unwrap();
    assert_eq!(t, "QueryServiceResponse", "{b}");
    let hosts = b["serviceInfo"]["hosts"].as_array().unwrap();
    assert_eq!(hosts.len(), 1, "only the writer's instance: {b}");
    assert_eq!(hosts[0]["port"], 9001);

    // A connection that presents nothing valid: refused three times, then closed; nothing it
    // sent landed.
    let bad = Grpc::connect(n).await;
    let (_bad_tx, bad_stream) = bad.setup().await;
    let p = h.node.tokens.login("writer", WRITER_PW).unwrap();
    let forged = AccessKey::new(Some("another cluster")).mint(&p, "writer", u64::MAX / 2);
    let expired = AccessKey::new(Some(CLUSTER_TOKEN)).mint(&p, "writer", 1_000);
    for token in [None, Some(forged.as_str()), Some(expired.as_str())] {
        let (t, b) = bad
            .call("InstanceRequest", register_request("g", 9003), token)
            .await
            .expect("an answer");
        assert_eq!(
            (t.as_str(), b["errorCode"].as_i64()),
            ("ErrorResponse", Some(403)),
            "{b}"
        );
    }
    tokio::time::timeout(DEADLINE, bad_stream)
        .await
        .expect("the refused connection is closed: its stream ends")
        .unwrap();
    let (_, b) = c
        .call("ServiceQueryRequest", query, Some(&writer))
        .await
        .unwrap();
    assert_eq!(
        b["serviceInfo"]["hosts"].as_array().unwrap().len(),
        1,
        "{b}"
    );
    h.stop().await;
}

#[tokio::test]
async fn an_access_token_minted_by_one_node_is_good_at_every_node_of_the_cluster() {
    let _serial = cluster_support::serial().await;
    let keys = Keys::new("cluster");
    let path = keys.path.clone();
    let (configs, listeners) =
        cluster_support::bind_nodes(3, move |c| c.token_file = Some(path.clone())).await;
    let mut handles = Vec::new();
    for (cfg, (client, peer)) in configs.into_iter().zip(listeners) {
        let nacos = NacosListeners::bind("127.0.0.1:0".parse().unwrap())
            .await
            .unwrap();
        handles.push(
            Server::from_listeners(cfg, client, Some(peer))
                .with_nacos(nacos, NacosSettings::default())
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
    let n = |i: usize| handles[i].nacos_addr.unwrap();
    let writer = format!("accessToken={}", token_of(n(0), "writer", WRITER_PW).await);
    assert_eq!(
        register(n(1), "public", "c", 7001, &writer).await.status,
        200
    );
    eventually(
        "the instance at the third node, read with the same token",
        async || (ports(n(2), "public", "c", &writer).await == vec![7001]).then_some(()),
    )
    .await;
    // gRPC at another node with the same token.
    let c = Grpc::connect(n(2)).await;
    let _stream = c.setup().await;
    let token = writer.trim_start_matches("accessToken=");
    let (t, b) = c
        .call("InstanceRequest", register_request("c", 7002), Some(token))
        .await
        .unwrap();
    assert_eq!(t, "InstanceResponse", "{b}");
    for h in handles {
        h.stop().await;
    }
}

#[tokio::test]
async fn the_admin_port_reads_and_changes_the_registry_only_with_a_bearer_token_that_may() {
    let keys = Keys::new("admin");
    let h = start(&keys).await;
    let n = h.nacos_addr.unwrap();
    let admin = h.admin_addr.unwrap();
    let writer = format!("accessToken={}", token_of(n, "writer", WRITER_PW).await);
    assert_eq!(
        register(n, "public", "adm", 6001, &writer).await.status,
        200
    );
    let bearer = |t: &str| format!("Authorization: Bearer {t}\r\n");

    // Probes and metrics stay open.
    for path in ["/health", "/ready", "/metrics", "/"] {
        assert_eq!(
            http(admin, "GET", path, "", None).await.status,
            200,
            "{path}"
        );
    }
    // Registry data needs a token that reads it.
    let a = http(admin, "GET", "/instances?service=adm", "", None).await;
    assert_eq!(a.status, 401, "{a:?}");
    assert!(a.headers.contains("www-authenticate: bearer"), "{a:?}");
    let a = http(
        admin,
        "GET",
        "/instances?service=adm",
        &bearer("distro_wrong"),
        None,
    )
    .await;
    assert_eq!(a.status, 401, "{a:?}");
    let a = http(
        admin,
        "GET",
        "/instances?service=adm",
        &bearer(&keys.viewer),
        None,
    )
    .await;
    assert_eq!(a.status, 200, "{a:?}");
    assert_eq!(a.json().as_array().unwrap().len(), 1);
    let a = http(admin, "GET", "/cluster", &bearer(&keys.viewer), None).await;
    assert_eq!(a.status, 200, "{a:?}");

    // A deregistration: refused without a token, with a wrong one and with a read token, and
    // nothing changed; done with a write token.
    let del = "/instances?service=adm&ip=10.0.0.1&port=6001";
    for (headers, status) in [
        (String::new(), 401),
        (bearer("distro_wrong"), 401),
        (bearer(&keys.viewer), 403),
    ] {
        let a = http(admin, "DELETE", del, &headers, None).await;
        assert_eq!(a.status, status, "{headers}: {a:?}");
        assert_eq!(h.node.store.len(), 1, "nothing changed");
    }
    let a = http(admin, "DELETE", del, &bearer(&keys.admin), None).await;
    assert_eq!(a.status, 200, "{a:?}");
    assert_eq!(a.json()["deregistered"], 1);
    let a = http(
        admin,
        "GET",
        "/instances?service=adm",
        &bearer(&keys.viewer),
        None,
    )
    .await;
    assert!(a.json().as_array().unwrap().is_empty(), "{a:?}");
    h.stop().await;
}
