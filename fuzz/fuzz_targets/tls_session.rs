//! The client port with TLS, as a node runs it: the accept loop over a `TlsListener` (the
//! handshake in the connection's task), then a client session over the TLS stream — fed from
//! an in-memory pipe.
//!
//! Input: a mode byte, then bytes.
//! - Mode bit 0 clear: the bytes are what a client sends before any handshake (garbage, a
//!   plaintext Distro frame, a mangled ClientHello). Checks: nothing panics; what the node
//!   sends back is TLS records only (at most its handshake messages and an alert), never a
//!   Distro frame; the connection's task finishes once the client closes; nothing reaches the
//!   store.
//! - Mode bit 0 set: a real TLS handshake first (a client that trusts the node's CA), then the
//!   bytes parsed as `distro_fuzz::session_input` items (frames of any body, generated
//!   messages, raw garbage, pauses) written over TLS. Checks: every answer is a whole frame that
//!   decodes (`harness::read_answers`), the session finishes after the client closes, and the
//!   store's invariants hold.

#![no_main]

use std::path::PathBuf;
use std::sync::{Arc, OnceLock};

use bytes::BytesMut;
use distro::api::Api;
use distro::clock::Clock;
use distro::config::Config;
use distro::frontend::native::session;
use distro::net::tls::TlsListener;
use distro::net::{BoxStream, ClientTls, NodeTls};
use distro::node::Node;
use distro_fuzz::harness::{self, OneStream, within_deadline};
use distro_fuzz::session_input::{self, Item};
use libfuzzer_sys::fuzz_target;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Bytes the in-memory pipe buffers each way.
const PIPE_BYTES: usize = 16 << 10;
/// Pauses of one input add up to at most this much tokio time.
const PAUSE_BUDGET_MS: u64 = 60_000;
/// The largest TLS record: 2^14 bytes of plaintext plus the expansion the RFC allows.
const TLS_RECORD_MAX: usize = (1 << 14) + 2048;

/// The node's TLS material and a client trusting it, made once per process (rcgen), through
/// the same loader `distrod` uses.
fn tls() -> &'static (NodeTls, ClientTls) {
    static TLS: OnceLock<(NodeTls, ClientTls)> = OnceLock::new();
    TLS.get_or_init(|| {
        use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
        let dir = std::env::temp_dir().join(format!("distro-fuzz-tls-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let ca_key = KeyPair::generate().unwrap();
        let ca = ca_params.self_signed(&ca_key).unwrap();
        let key = KeyPair::generate().unwrap();
        let cert = CertificateParams::new(vec!["127.0.0.1".to_string()])
            .unwrap()
            .signed_by(&key, &Issuer::from_params(&ca_params, &ca_key))
            .unwrap();
        let file = |name: &str, pem: String| -> PathBuf {
            let p = dir.join(name);
            std::fs::write(&p, pem).unwrap();
            p
        };
        let (cert, key, ca) = (
            file("node.pem", cert.pem()),
            file("node.key", key.serialize_pem()),
            file("ca.pem", ca.pem()),
        );
        let node = NodeTls::load(&cert, &key, None).expect("the node's TLS material");
        let client = ClientTls::from_ca_file(&ca).expect("the client's CA");
        let _ = std::fs::remove_dir_all(&dir);
        (node, client)
    })
}

fuzz_target!(|data: &[u8]| {
    let (&mode, rest) = data.split_first().unwrap_or((&0, &[]));
    distro_fuzz::runtime::get().block_on(within_deadline(async {
        if mode & 1 == 0 {
            before_handshake(rest).await
        } else {
            after_handshake(session_input::parse(rest)).await
        }
    }));
});

/// A standalone node's client port over TLS on one in-memory connection: the accept loop
/// exactly as `Server::run` runs it. Returns the node, the client's end of the pipe, and a
/// function that stops the loop and waits for the connection's task.
async fn serve_one() -> (Arc<Node>, tokio::io::DuplexStream, impl AsyncFnOnce()) {
    let node = Node::new(
        Config {
            lease_floor_ms: 100,
            ..Config::default()
        },
        Clock::starting_at(distro_fuzz::WALL_START_MS),
    );
    let (client, server) = tokio::io::duplex(PIPE_BYTES);
    let acceptor = tls().0.client_port(&[]).unwrap();
    let listener = TlsListener::new(
        Box::new(OneStream::new(Box::new(server) as BoxStream)),
        acceptor,
    );
    let shutdown = CancellationToken::new();
    let tracker = TaskTracker::new();
    let api = Api::new(node.clone());
    let looping = {
        let (shutdown, tracker) = (shutdown.clone(), tracker.clone());
        tokio::spawn(async move {
            distro::net::accept_loop("fuzz", &listener, 4, shutdown, &tracker, move |s, p| {
                session::serve(api.clone(), s, p)
            })
            .await
        })
    };
    let stop = async move || {
        shutdown.cancel();
        looping.await.expect("the accept loop failed");
        tracker.close();
        tracker.wait().await;
    };
    (node, client, stop)
}

async fn before_handshake(bytes: &[u8]) {
    let (node, client, stop) = serve_one().await;
    let (mut rd, mut wr) = tokio::io::split(client);
    let reading = tokio::spawn(async move {
        let mut got = Vec::new();
        let _ = rd.read_to_end(&mut got).await;
        got
    });
    let _ = wr.write_all(bytes).await;
    let _ = wr.shutdown().await;
    stop().await;
    drop(wr);
    let got = reading.await.expect("the reader failed");
    // TLS records only: type (handshake, alert, change cipher spec, application data), a
    // 0x03xx version, a length within bounds.
    let mut rest = &got[..];
    while !rest.is_empty() {
        assert!(rest.len() >= 5, "a cut TLS record header: {got:?}");
        assert!(
            (20..=23).contains(&rest[0]) && rest[1] == 3,
            "the node sent something other than TLS records: {got:?}"
        );
        let len = u16::from_be_bytes([rest[3], rest[4]]) as usize;
        assert!(len <= TLS_RECORD_MAX, "a TLS record of {len} bytes");
        assert!(rest.len() >= 5 + len, "a cut TLS record: {got:?}");
        rest = &rest[5 + len..];
    }
    assert_eq!(node.store.len(), 0, "bytes before a handshake reached the store");
}

async fn after_handshake(items: Vec<Item>) {
    let (node, client, stop) = serve_one().await;
    let tls = tls()
        .1
        .connect("127.0.0.1:1", client)
        .await
        .expect("a client that trusts the node completes the handshake");
    let (rd, mut wr) = tokio::io::split(tls);
    let reading = tokio::spawn(harness::read_answers(rd, BytesMut::new()));
    harness::write_items(&mut wr, items, &node.store, PAUSE_BUDGET_MS).await;
    let _ = wr.shutdown().await;
    stop().await;
    drop(wr);
    reading.await.expect("the answer reader failed");
    harness::check_store(&node.store, "after a session over TLS");
}
