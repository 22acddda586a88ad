//! TLS on every port, over real sockets, with certificates made at run time: the SDK over TLS;
//! a plaintext client, and a client that does not trust the node, refused while others keep
//! being served; a cluster's peers syncing over mutual TLS, and a peer without a certificate
//! of the cluster's CA refused before any Distro frame; the admin and Nacos HTTP ports over
//! HTTPS, and a Nacos gRPC call over TLS (ALPN h2).

mod cluster_support;
mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use cluster_support::bind_nodes;
use common::certs::{NodeCert, TestCa};
use common::*;
use distro::client::{Client, ClientConfig};
use distro::frontend::nacos::grpc::proto::{Payload, REQUEST_PATH};
use distro::frontend::nacos::{GRPC_PORT_OFFSET, NacosListeners, NacosSettings};
use distro::net::tls::TlsDialer;
use distro::net::{ClientTls, Dialer, NodeTls};
use distro::server::{Server, ServerHandle};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A standalone node serving TLS on its client, admin and Nacos ports.
async fn tls_node(ca: &TestCa) -> ServerHandle {
    let node = ca.node("node-1");
    let mut cfg = test_config();
    cfg.http = Some("127.0.0.1:0".parse().unwrap());
    cfg.tls_cert = Some(node.cert);
    cfg.tls_key = Some(node.key);
    let server = Server::bind(cfg).await.expect("a TLS node starts");
    let nacos = NacosListeners::bind("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    server.with_nacos(nacos, NacosSettings::default()).spawn()
}

fn tls_client_config(addr: SocketAddr, ca: &Path) -> ClientConfig {
    client_config(&[addr]).with_tls(&ClientTls::from_ca_file(ca).unwrap())
}

#[tokio::test]
async fn the_sdk_registers_and_queries_over_tls() {
    let ca = TestCa::new("sdk");
    let node = tls_node(&ca).await;
    let c = Client::connect(tls_client_config(node.addr, ca.ca()))
        .await
        .expect("a client that trusts the CA connects");
    let svc = name("tls-sdk");
    c.register(inst(&svc, "10.0.0.1", 8080)).await.unwrap();
    let snap = c.query(&svc, false).await.unwrap();
    assert_eq!(addrs_of(&snap), vec!["10.0.0.1:8080"]);
    node.stop().await;
}

#[tokio::test]
async fn a_plaintext_client_and_an_untrusting_client_are_refused_and_others_keep_being_served() {
    let ca = TestCa::new("refuse");
    let node = tls_node(&ca).await;
    let trusted = Client::connect(tls_client_config(node.addr, ca.ca()))
        .await
        .unwrap();
    let svc = name("tls-refuse");
    trusted.register(inst(&svc, "10.0.0.2", 80)).await.unwrap();

    // A plaintext SDK client: its Hello is not a TLS record; the node drops the connection
    // without answering a single Distro frame.
    let mut plain = client_config(&[node.addr]);
    plain.connect_timeout = Duration::from_secs(2);
    assert!(Client::connect(plain).await.is_err());
    let mut raw = TcpStream::connect(node.addr).await.unwrap();
    raw.write_all(b"\x00\x00\x00\x10 a plaintext hello")
        .await
        .unwrap();
    let mut buf = Vec::new();
    let n = tokio::time::timeout(DEADLINE, raw.read_to_end(&mut buf))
        .await
        .expect("the node closes the plaintext connection");
    // At most a TLS alert comes back (a record of type 21), never a Distro frame.
    if n.is_ok() && !buf.is_empty() {
        assert_eq!(buf[0], 21, "only a TLS alert, got {buf:?}");
    }

    // A TLS client that trusts another CA refuses the node's certificate.
    let other = TestCa::new("other");
    let mut untrusting = tls_client_config(node.addr, other.ca());
    untrusting.connect_timeout = Duration::from_secs(2);
    assert!(Client::connect(untrusting).await.is_err());

    // Nothing of that changed anything, and the trusted client is still served.
    let snap = trusted.query(&svc, false).await.unwrap();
    assert_eq!(addrs_of(&snap), vec!["10.0.0.2:80"]);
    trusted.register(inst(&svc, "10.0.0.3", 80)).await.unwrap();
    assert_eq!(trusted.query(&svc, false).await.unwrap().instances.len(), 2);
    node.stop().await;
}

/// A TLS cluster of `n` nodes on loopback (the test clusters' settings,
/// `cluster_support::node_config`): every node's certificate signed by `ca`.
async fn tls_cluster(ca: &TestCa, n: usize) -> Vec<ServerHandle> {
    let (configs, listeners) = bind_nodes(n, |_| {}).await;
    let mut handles = Vec::new();
    for (cfg, (client, peer)) in configs.into_iter().zip(listeners) {
        let cert = ca.node(&format!("node-{}", cfg.node_id));
        let tls = NodeTls::load(&cert.cert, &cert.key, Some(ca.ca())).unwrap();
        let server = Server::from_listeners_tls(cfg, client, Some(peer), Some(tls)).unwrap();
        handles.push(server.spawn());
    }
    // The members find each other over their mutual-TLS links.
    eventually("every node ready and seeing all members", async || {
        handles
            .iter()
            .all(|h| {
                let live = h.node.cluster.as_ref().unwrap().live_view();
                h.node.is_ready() && live.len() == n
            })
            .then_some(())
    })
    .await;
    handles
}

#[tokio::test]
async fn peers_sync_over_mutual_tls() {
    let ca = TestCa::new("cluster");
    let nodes = tls_cluster(&ca, 2).await;
    let c1 = Client::connect(tls_client_config(nodes[0].addr, ca.ca()))
        .await
        .unwrap();
    let c2 = Client::connect(tls_client_config(nodes[1].addr, ca.ca()))
        .await
        .unwrap();
    let svc = name("tls-cluster");
    for port in 1..=20 {
        c1.register(inst(&svc, "10.1.0.1", port)).await.unwrap();
    }
    // Half of them are owned by node 2 (forwarded to it) and all are synced back: node 2
    // answers the whole set from its own memory.
    eventually("node 2 holds all 20 instances", async || {
        let n = c2.query(&svc, false).await.ok()?.instances.len();
        (n == 20).then_some(())
    })
    .await;
    for n in nodes {
        n.stop().await;
    }
}

/// Opens a TLS connection to a peer port presenting `client_cert` (or none) and trusting `ca`,
/// and sends a frame; returns what the node sent back and the TLS error that ended the
/// connection (a refused peer gets the node's alert, and not one Distro frame).
async fn peer_attempt(
    addr: SocketAddr,
    ca: &Path,
    client_cert: Option<&NodeCert>,
) -> (Vec<u8>, Option<String>) {
    // Without a certificate: a client's dialer; with one: a member's peer links (which present
    // it), as a node of the cluster dials.
    let dialer: Arc<dyn Dialer> = match client_cert {
        None => ClientTls::from_ca_file(ca).unwrap().dialer(),
        Some(c) => {
            let tls = NodeTls::load(&c.cert, &c.key, Some(ca)).unwrap();
            Arc::new(TlsDialer::new(
                distro::net::tcp(),
                tls.peer_links().unwrap(),
            ))
        }
    };
    let mut got = Vec::new();
    let attempt = async {
        // TLS 1.3: the client finishes its side first; the server's verdict on the client's
        // certificate arrives as an alert on the first read.
        let mut tls = match dialer.connect(addr.to_string()).await {
            Ok(tls) => tls,
            Err(e) => return Some(e.to_string()),
        };
        // A peer's first frame would follow; a refused peer's socket closes instead.
        let _ = tls.write_all(b"\x00\x00\x00\x04\x01\x00\x00\x00").await;
        let mut buf = [0u8; 256];
        loop {
            match tls.read(&mut buf).await {
                Ok(0) => return None,
                Ok(n) => got.extend_from_slice(&buf[..n]),
                Err(e) => return Some(e.to_string()),
            }
        }
    };
    let error = tokio::time::timeout(DEADLINE, attempt)
        .await
        .expect("the node closes the connection");
    (got, error)
}

#[tokio::test]
async fn a_peer_without_a_cluster_certificate_is_refused_before_any_frame() {
    let ca = TestCa::new("peers");
    let nodes = tls_cluster(&ca, 2).await;
    let peer_port = nodes[0].node.config.peer_listen;
    // No client certificate at all; a certificate of another CA.
    let rogue_ca = TestCa::new("rogue");
    let rogue = rogue_ca.node("rogue");
    for (what, cert) in [("no certificate", None), ("another CA's", Some(&rogue))] {
        let (got, error) = peer_attempt(peer_port, ca.ca(), cert).await;
        assert!(got.is_empty(), "{what}: the node sent {got:?}");
        let error = error.unwrap_or_default();
        assert!(
            error.contains("alert"),
            "{what}: refused by TLS, got {error:?}"
        );
    }
    // A member's certificate passes TLS (and then meets the Distro handshake).
    let member = ca.node("member");
    let (_, error) = peer_attempt(peer_port, ca.ca(), Some(&member)).await;
    assert!(
        !error.as_deref().unwrap_or("").contains("alert"),
        "a member's certificate is accepted: {error:?}"
    );
    // A plaintext peer: no answer either.
    let mut raw = TcpStream::connect(peer_port).await.unwrap();
    raw.write_all(b"\x00\x00\x00\x04\x01\x00\x00\x00")
        .await
        .unwrap();
    let mut buf = Vec::new();
    let _ = tokio::time::timeout(DEADLINE, raw.read_to_end(&mut buf))
        .await
        .expect("the node closes the plaintext peer connection");
    assert!(
        buf.is_empty() || buf[0] == 21,
        "only a TLS alert, got {buf:?}"
    );
    // The cluster's own members still sync.
    let c = Client::connect(tls_client_config(nodes[1].addr, ca.ca()))
        .await
        .unwrap();
    let svc = name("tls-peers");
    c.register(inst(&svc, "10.2.0.1", 1)).await.unwrap();
    let c1 = Client::connect(tls_client_config(nodes[0].addr, ca.ca()))
        .await
        .unwrap();
    eventually("node 1 sees the instance", async || {
        (c1.query(&svc, false).await.ok()?.instances.len() == 1).then_some(())
    })
    .await;
    for n in nodes {
        n.stop().await;
    }
}

/// One HTTPS GET (HTTP/1.1, `Connection: close`): the status line's code and the body.
async fn https_get(addr: SocketAddr, ca: &Path, path: &str) -> (u16, String) {
    let tls = ClientTls::from_ca_file_with_alpn(ca, &[b"http/1.1"]).unwrap();
    let tcp = TcpStream::connect(addr).await.unwrap();
    let mut s = tls
        .connect(&addr.to_string(), tcp)
        .await
        .expect("TLS handshake");
    let req = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    s.write_all(req.as_bytes()).await.unwrap();
    let mut raw = Vec::new();
    let _ = tokio::time::timeout(DEADLINE, s.read_to_end(&mut raw))
        .await
        .expect("an answer in time");
    let text = String::from_utf8(raw).unwrap();
    let status = text.split(' ').nth(1).unwrap().parse().unwrap();
    let body = text.split_once("\r\n\r\n").unwrap().1.to_string();
    (status, body)
}

#[tokio::test]
async fn admin_and_nacos_http_serve_https_only() {
    let ca = TestCa::new("https");
    let node = tls_node(&ca).await;
    let admin = node.admin_addr.unwrap();
    let nacos = node.nacos_addr.unwrap();
    let (status, body) = https_get(admin, ca.ca(), "/health").await;
    assert_eq!((status, body.as_str()), (200, "ok\n"));
    let (status, _) = https_get(admin, ca.ca(), "/metrics").await;
    assert_eq!(status, 200);
    let (status, body) = https_get(nacos, ca.ca(), "/nacos/v1/console/health/liveness").await;
    assert_eq!(status, 200, "{body}");
    // Plaintext HTTP gets no HTTP answer from either.
    for addr in [admin, nacos] {
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .await
            .unwrap();
        let mut raw = Vec::new();
        let _ = tokio::time::timeout(DEADLINE, s.read_to_end(&mut raw))
            .await
            .expect("the port closes a plaintext connection");
        assert!(!raw.starts_with(b"HTTP/"), "{addr}: {raw:?}");
    }
    node.stop().await;
}

/// tonic's channel over our TLS client (ALPN h2): the way a Nacos gRPC client with TLS
/// connects.
#[derive(Clone)]
struct TlsConnect {
    tls: ClientTls,
    addr: SocketAddr,
}

impl tower_service::Service<http::Uri> for TlsConnect {
    type Response = hyper_util::rt::TokioIo<tokio_rustls::client::TlsStream<TcpStream>>;
    type Error = std::io::Error;
    type Future = std::pin::Pin<
        Box<dyn std::future::Future<Output = Result<Self::Response, Self::Error>> + Send>,
    >;

    fn poll_ready(
        &mut self,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, _: http::Uri) -> Self::Future {
        let me = self.clone();
        Box::pin(async move {
            let tcp = TcpStream::connect(me.addr).await?;
            let tls = me.tls.connect(&me.addr.to_string(), tcp).await?;
            Ok(hyper_util::rt::TokioIo::new(tls))
        })
    }
}

#[tokio::test]
async fn a_nacos_grpc_call_over_tls() {
    let ca = TestCa::new("grpc");
    let node = tls_node(&ca).await;
    let http = node.nacos_addr.unwrap();
    let grpc_addr = SocketAddr::new(http.ip(), http.port() + GRPC_PORT_OFFSET);
    let connect = TlsConnect {
        tls: ClientTls::from_ca_file_with_alpn(ca.ca(), &[b"h2"]).unwrap(),
        addr: grpc_addr,
    };
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{grpc_addr}"))
        .unwrap()
        .connect_with_connector(connect)
        .await
        .expect("gRPC over TLS connects");
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready().await.unwrap();
    let answer = grpc
        .unary(
            tonic::Request::new(Payload::new("ServerCheckRequest", "{}")),
            http::uri::PathAndQuery::from_static(REQUEST_PATH),
            tonic_prost::ProstCodec::<Payload, Payload>::default(),
        )
        .await
        .expect("a ServerCheckResponse")
        .into_inner();
    assert_eq!(answer.type_name(), "ServerCheckResponse");
    let json: serde_json::Value = serde_json::from_slice(answer.json()).unwrap();
    assert_eq!(json["resultCode"], 200, "{json}");
    node.stop().await;
}

const DISTROD: &str = env!("CARGO_BIN_EXE_distrod");
const DISTROCTL: &str = env!("CARGO_BIN_EXE_distroctl");

/// Runs a binary to its exit: its exit code and stderr.
fn run(bin: &str, args: &[&str]) -> (i32, String, String) {
    let out = std::process::Command::new(bin)
        .args(args)
        .env_remove("RUST_LOG")
        .env_remove("DISTRO_TLS_CA")
        .output()
        .expect("run the binary");
    (
        out.status.code().expect("exited"),
        String::from_utf8(out.stdout).unwrap(),
        String::from_utf8(out.stderr).unwrap(),
    )
}

/// Runs `distrod` on a free client port, admin port off, with `args`, to its exit (it must not
/// start): its exit code and stderr.
fn distrod_refuses(args: &[&str]) -> (i32, String) {
    let listen = format!("127.0.0.1:{}", free_port());
    let mut all = vec!["--http", "off", "--listen", &listen];
    all.extend_from_slice(args);
    let (code, _, err) = run(DISTROD, &all);
    (code, err)
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// `distrod` with a certificate and `distroctl --tls-ca`, as an operator runs them; and the
/// TLS settings a node cannot start with, each refused with the setting or the file named.
#[test]
fn distrod_serves_tls_to_distroctl_and_refuses_bad_tls_settings() {
    let ca = TestCa::new("binaries");
    let node = ca.node("distrod");
    let (cert, key) = (node.cert.to_str().unwrap(), node.key.to_str().unwrap());

    // Refused at start, naming what is wrong; nothing listens.
    let (code, err) = distrod_refuses(&["--tls-cert", cert]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("--tls-cert: needs its private key"), "{err}");
    let missing = ca.file("missing.pem");
    let missing = missing.to_str().unwrap();
    let (code, err) = distrod_refuses(&["--tls-cert", missing, "--tls-key", key]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains(missing), "{err}");
    let garbage = ca.file("garbage.pem");
    std::fs::write(&garbage, "not a certificate\n").unwrap();
    let garbage = garbage.to_str().unwrap();
    let (code, err) = distrod_refuses(&["--tls-cert", garbage, "--tls-key", key]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("holds no PEM certificate"), "{err}");
    let peers = [free_port(), free_port()];
    let members = format!("127.0.0.1:{},127.0.0.1:{}", peers[0], peers[1]);
    let peer_listen = format!("127.0.0.1:{}", peers[0]);
    let (code, err) = distrod_refuses(&[
        "--peer-listen",
        &peer_listen,
        "--members",
        &members,
        "--tls-cert",
        cert,
        "--tls-key",
        key,
    ]);
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("tls_ca") && err.contains("mutual TLS"),
        "{err}"
    );

    // A node that serves TLS, and distroctl with and without the CA.
    let listen = format!("127.0.0.1:{}", free_port());
    let mut child = std::process::Command::new(DISTROD)
        .args([
            "--http",
            "off",
            "--listen",
            &listen,
            "--tls-cert",
            cert,
            "--tls-key",
            key,
        ])
        .env_remove("RUST_LOG")
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("start distrod");
    let ca_file = ca.ca().to_str().unwrap();
    let ctl = |extra: &[&str]| {
        let mut args = vec!["--server", listen.as_str()];
        args.extend_from_slice(extra);
        run(DISTROCTL, &args)
    };
    let register = [
        "--tls-ca",
        ca_file,
        "register",
        "--service",
        "tls-web",
        "--ip",
        "10.9.0.1",
        "--port",
        "80",
    ];
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let (code, out, err) = ctl(&register);
        if code == 0 {
            assert!(out.contains("registered"), "{out}");
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "distroctl over TLS: {err}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let (code, out, err) = ctl(&["--tls-ca", ca_file, "list", "--service", "tls-web"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("10.9.0.1"), "{out}");
    // Without the CA distroctl speaks plaintext, which the node does not answer.
    let (code, _, err) = ctl(&["--timeout-ms", "1500", "list", "--service", "tls-web"]);
    assert_ne!(code, 0);
    assert!(err.starts_with("distroctl: "), "{err}");
    let _ = child.kill();
    let _ = child.wait();
}
