//! Client tokens over real loopback sockets: what a node with a token file refuses, what it
//! lets through, and what a refusal leaves behind (nothing). Servers run in-process on port 0
//! (one test runs `distrod` itself, for SIGHUP; one runs `distroctl`); every token file is
//! written by the library's own entry maker, as `distroctl token new` writes it.

mod cluster_support;
mod common;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write as _};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::{BufMut, BytesMut};
use common::*;
use distro::auth::file::{mint_token, token_digest, token_entry};
use distro::client::{Client, ClientError};
use distro::model::{Instance, InstanceKey, ServiceName, Version};
use distro::server::ServerHandle;
use distro::store::Store;
use distro::wire::{
    ErrorBody, ErrorCode, ListServices, Message, Opcode, Query, Register, TOKEN_LEN_MAX, Token,
    encode_frame, encode_raw_frame_into,
};

const DISTROD: &str = env!("CARGO_BIN_EXE_distrod");
const DISTROCTL: &str = env!("CARGO_BIN_EXE_distroctl");

/// A token file in a directory of its own, with one token per role.
struct Keys {
    dir: PathBuf,
    path: PathBuf,
    /// Writes every namespace.
    admin: String,
    /// Writes `team-a`.
    a_writer: String,
    /// Reads `team-a`.
    a_reader: String,
    /// Writes `team-b`.
    b_writer: String,
}

fn strings(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

/// A token file entry, made as `distroctl token new` makes it.
fn entry(name: &str, token: &str, read: &[&str], write: &[&str]) -> String {
    token_entry(name, token, &strings(read), &strings(write)).expect("a valid entry")
}

impl Keys {
    fn new(tag: &str) -> Keys {
        let dir =
            std::env::temp_dir().join(format!("distro-security-{}-{tag}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let keys = Keys {
            path: dir.join("tokens.toml"),
            dir,
            admin: mint_token(),
            a_writer: mint_token(),
            a_reader: mint_token(),
            b_writer: mint_token(),
        };
        keys.write(&keys.standard());
        keys
    }

    /// The entries of every role.
    fn standard(&self) -> String {
        [
            entry("admin", &self.admin, &[], &["*"]),
            entry("a-writer", &self.a_writer, &[], &["team-a"]),
            entry("a-reader", &self.a_reader, &["team-a"], &[]),
            entry("b-writer", &self.b_writer, &[], &["team-b"]),
        ]
        .join("\n")
    }

    fn write(&self, text: &str) {
        std::fs::write(&self.path, text).unwrap();
    }
}

impl Drop for Keys {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

async fn start_guarded(keys: &Keys) -> ServerHandle {
    let path = keys.path.clone();
    start_with(move |c| c.token_file = Some(path)).await
}

fn svc(namespace: &str, service: &str) -> ServiceName {
    ServiceName::new(namespace, "DEFAULT_GROUP", service)
}

fn instance(namespace: &str, service: &str, ip: &str) -> Instance {
    inst(&svc(namespace, service), ip, 8080)
}

async fn connect(addr: SocketAddr, token: Option<&str>) -> Result<Client, ClientError> {
    let mut cfg = client_config(&[addr]);
    if let Some(t) = token {
        cfg = cfg.with_token(t);
    }
    Client::connect(cfg).await
}

async fn client_as(addr: SocketAddr, token: &str) -> Client {
    connect(addr, Some(token))
        .await
        .unwrap_or_else(|e| panic!("client with a valid token: {e}"))
}

/// The error of a connection attempt that must fail.
fn refused(r: Result<Client, ClientError>) -> ClientError {
    match r {
        Ok(_) => panic!("the connection was accepted"),
        Err(e) => e,
    }
}

fn code_of(e: &ClientError) -> Option<ErrorCode> {
    match e {
        ClientError::Server { code, .. } => *code,
        _ => None,
    }
}

/// Fails unless `r` is a PermissionDenied naming `namespace`.
fn assert_denied<T: std::fmt::Debug>(r: Result<T, ClientError>, namespace: &str, what: &str) {
    match r {
        Err(ClientError::Server {
            code: Some(ErrorCode::PermissionDenied),
            message,
        }) => assert!(
            message.contains(&format!("{namespace:?}")),
            "{what}: the refusal names another namespace: {message}"
        ),
        other => panic!("{what}: expected PermissionDenied, got {other:?}"),
    }
}

/// Every record of a store, tombstones included: key → (alive, version). Equal before and
/// after means nothing changed.
fn records(store: &Store) -> BTreeMap<String, (bool, Version)> {
    let mut m = BTreeMap::new();
    store.for_each_record(|name, id, r| {
        m.insert(
            format!(
                "{}/{}/{}/{}/{}:{}",
                name.namespace, name.group, name.service, id.cluster, id.ip, id.port
            ),
            (r.alive, r.version),
        );
    });
    m
}

fn error_of(m: Message) -> ErrorBody {
    match m {
        Message::Error(e) => e,
        other => panic!("expected an Error, got {other:?}"),
    }
}

fn auth(token: &str) -> Message {
    Message::Auth(Token::new(token))
}

/// A raw connection that presented `token` (accepted).
async fn raw_as(addr: SocketAddr, token: &str) -> Raw {
    let (mut raw, _) = Raw::open(addr).await;
    assert_eq!(
        raw.call(&auth(token)).await,
        Message::Ack(1),
        "token refused"
    );
    raw
}

fn register(session_bound: bool, instances: Vec<Instance>) -> Message {
    Message::Register(Register {
        session_bound,
        instances,
    })
}

fn key_of(i: &Instance) -> InstanceKey {
    i.key.clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_without_a_token_is_refused_everything_but_hello_and_ping() {
    let keys = Keys::new("none");
    let h = start_guarded(&keys).await;
    let admin = client_as(h.addr, &keys.admin).await;
    let there = instance("team-a", "orders", "10.0.0.1");
    admin.register(there.clone()).await.unwrap();
    let before = records(&h.node.store);

    let name = svc("team-a", "orders");
    let requests = [
        register(false, vec![instance("team-a", "orders", "10.0.0.2")]),
        Message::Deregister(vec![key_of(&there)]),
        Message::Beat(vec![key_of(&there)]),
        Message::Query(Query {
            name: name.clone(),
            cluster: "".into(),
            healthy_only: false,
        }),
        Message::ListServices(ListServices {
            namespace: "team-a".into(),
            page: 0,
            page_size: 10,
        }),
        Message::Subscribe(name.clone()),
        Message::Unsubscribe(name.clone()),
        Message::ClusterStatus,
        Message::Owner {
            ip: "10.0.0.1".into(),
            port: 8080,
        },
    ];
    for req in &requests {
        // One connection per request: a third refusal would close it (another test).
        let (mut raw, hello) = Raw::open(h.addr).await;
        assert!(hello.ready, "Hello is answered without a token");
        let e = error_of(raw.call(req).await);
        assert_eq!(
            e.kind(),
            Some(ErrorCode::Unauthenticated),
            "{:?}",
            req.opcode()
        );
        assert_eq!(raw.call(&Message::Ping(7)).await, Message::Pong(7));
    }
    // The SDK without a token connects (Hello needs none) and is refused at its first request.
    let anon = connect(h.addr, None).await.expect("Hello needs no token");
    let e = anon
        .register(instance("team-a", "orders", "10.0.0.3"))
        .await
        .unwrap_err();
    assert_eq!(code_of(&e), Some(ErrorCode::Unauthenticated), "{e}");

    assert_eq!(
        records(&h.node.store),
        before,
        "a refused client changed the store"
    );
    let snap = admin.query(&name, false).await.unwrap();
    assert_eq!(
        addrs_of(&snap),
        vec!["10.0.0.1:8080"],
        "the admin still reads"
    );
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_token_is_refused_the_same_way_whatever_it_is() {
    let keys = Keys::new("wrong");
    let h = start_guarded(&keys).await;
    let before = records(&h.node.store);
    let real = &keys.a_writer;
    let mut flipped = real.clone().into_bytes();
    *flipped.last_mut().unwrap() ^= 1;
    let digest_hex: String = token_digest(real)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let wrong = [
        String::new(),
        "distro_".to_string(),
        real[..real.len() - 1].to_string(),
        String::from_utf8(flipped).unwrap(),
        real.to_uppercase(),
        format!("{real} "),
        digest_hex,
        mint_token(),
        "x".repeat(TOKEN_LEN_MAX),
    ];
    let mut answers = Vec::new();
    for t in &wrong {
        let (mut raw, _) = Raw::open(h.addr).await;
        // Same request id every time: the answers can be compared byte for byte.
        let e = error_of(raw.call(&auth(t)).await);
        assert_eq!(e.kind(), Some(ErrorCode::Unauthenticated), "{t:?}");
        answers.push(encode_frame(2, 0, &Message::Error(e)));
        // Still unauthenticated: a write is refused as before.
        let e = error_of(
            raw.call(&register(true, vec![instance("team-a", "s", "10.0.0.1")]))
                .await,
        );
        assert_eq!(e.kind(), Some(ErrorCode::Unauthenticated));
    }
    assert!(
        answers.windows(2).all(|w| w[0] == w[1]),
        "refusals differ with what was presented"
    );
    // The SDK reports the refusal itself, not "no server reachable".
    let e = refused(connect(h.addr, Some(&mint_token())).await);
    assert_eq!(code_of(&e), Some(ErrorCode::Unauthenticated), "{e}");
    // A token over the wire limit is not a token: the frame is refused and the connection closed.
    let (mut raw, _) = Raw::open(h.addr).await;
    let long = "x".repeat(TOKEN_LEN_MAX + 1);
    let mut frame = BytesMut::new();
    encode_raw_frame_into(&mut frame, Opcode::Auth as u8, 9, 0, |b| {
        b.put_u16(long.len() as u16);
        b.put_slice(long.as_bytes());
    });
    raw.write(&frame).await;
    let (_, e) = last_error(&raw.until_closed().await);
    assert_eq!(e.kind(), Some(ErrorCode::BadFrame));

    assert_eq!(
        records(&h.node.store),
        before,
        "a refused client changed the store"
    );
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_token_may_read_but_not_write() {
    let keys = Keys::new("reader");
    let h = start_guarded(&keys).await;
    let writer = client_as(h.addr, &keys.a_writer).await;
    let name = svc("team-a", "orders");
    let there = instance("team-a", "orders", "10.0.0.1");
    writer.register(there.clone()).await.unwrap();
    let before = records(&h.node.store);

    let reader = client_as(h.addr, &keys.a_reader).await;
    let snap = reader.query(&name, false).await.unwrap();
    assert_eq!(addrs_of(&snap), vec!["10.0.0.1:8080"]);
    let list = reader.list_services("team-a", 0, 10).await.unwrap();
    assert_eq!(list.total, 1);
    let mut sub = reader.subscribe(&name).await.unwrap();
    let first = tokio::time::timeout(DEADLINE, sub.next())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(addrs_of(&first), vec!["10.0.0.1:8080"]);
    // Status and owner name no namespace: any token will do.
    assert_eq!(reader.cluster_status().await.unwrap().instances, 1);
    assert_eq!(reader.owner("10.0.0.1", 8080).await.unwrap(), 1);

    let r = reader
        .register(instance("team-a", "orders", "10.0.0.2"))
        .await;
    assert_denied(r, "team-a", "register");
    assert_denied(
        reader.deregister(&key_of(&there)).await,
        "team-a",
        "deregister",
    );
    let mut raw = raw_as(h.addr, &keys.a_reader).await;
    let e = error_of(raw.call(&Message::Beat(vec![key_of(&there)])).await);
    assert_eq!(e.kind(), Some(ErrorCode::PermissionDenied));
    // Refusals of rights do not count as failed authentications: the connection stays.
    for _ in 0..3 {
        let e = error_of(raw.call(&Message::Beat(vec![key_of(&there)])).await);
        assert_eq!(e.kind(), Some(ErrorCode::PermissionDenied));
    }
    assert_eq!(raw.call(&Message::Ping(1)).await, Message::Pong(1));

    assert_eq!(
        records(&h.node.store),
        before,
        "a refused write changed the store"
    );
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_of_another_namespace_is_refused_there_and_a_mixed_batch_whole() {
    let keys = Keys::new("other");
    let h = start_guarded(&keys).await;
    let a = client_as(h.addr, &keys.a_writer).await;
    let name = svc("team-a", "orders");
    a.register(instance("team-a", "orders", "10.0.0.1"))
        .await
        .unwrap();
    let before = records(&h.node.store);

    let b = client_as(h.addr, &keys.b_writer).await;
    let r = b.register(instance("team-a", "orders", "10.0.0.2")).await;
    assert_denied(r, "team-a", "register");
    assert_denied(b.query(&name, false).await, "team-a", "query");
    assert_denied(b.list_services("team-a", 0, 10).await, "team-a", "list");
    assert_denied(b.subscribe(&name).await.map(|_| ()), "team-a", "subscribe");
    // A batch with one instance outside the token's namespaces is refused whole.
    let r = b
        .register_batch(vec![
            instance("team-b", "pay", "10.0.1.1"),
            instance("team-a", "orders", "10.0.1.2"),
        ])
        .await;
    assert_denied(r, "team-a", "mixed batch");
    assert_eq!(
        records(&h.node.store),
        before,
        "a refused write changed the store"
    );

    // Its own namespace works.
    b.register(instance("team-b", "pay", "10.0.1.1"))
        .await
        .unwrap();
    let snap = b.query(&svc("team-b", "pay"), false).await.unwrap();
    assert_eq!(addrs_of(&snap), vec!["10.0.1.1:8080"]);
    assert_denied(
        a.query(&svc("team-b", "pay"), false).await,
        "team-b",
        "a reads b",
    );
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_clients_change_nothing_while_others_are_served() {
    let keys = Keys::new("crowd");
    let h = start_guarded(&keys).await;
    let name = svc("team-a", "orders");
    let watcher = client_as(h.addr, &keys.admin).await;
    let mut sub = watcher.subscribe(&name).await.unwrap();
    let writer = client_as(h.addr, &keys.a_writer).await;

    // Intruders of every kind hammer the node while the writer registers.
    let addr = h.addr;
    let (reader_token, b_token) = (keys.a_reader.clone(), keys.b_writer.clone());
    let intruders = tokio::spawn(async move {
        for i in 0..20u32 {
            let bad = instance("team-a", "orders", &format!("10.9.0.{i}"));
            let (mut anon, _) = Raw::open(addr).await;
            let e = error_of(anon.call(&register(false, vec![bad.clone()])).await);
            assert_eq!(e.kind(), Some(ErrorCode::Unauthenticated));
            let (mut wrong, _) = Raw::open(addr).await;
            let e = error_of(wrong.call(&auth(&mint_token())).await);
            assert_eq!(e.kind(), Some(ErrorCode::Unauthenticated));
            for token in [&reader_token, &b_token] {
                let mut raw = raw_as(addr, token).await;
                let e = error_of(raw.call(&register(false, vec![bad.clone()])).await);
                assert_eq!(e.kind(), Some(ErrorCode::PermissionDenied));
                let e = error_of(raw.call(&Message::Deregister(vec![bad.key.clone()])).await);
                assert_eq!(e.kind(), Some(ErrorCode::PermissionDenied));
            }
        }
    });
    let mut want = Vec::new();
    for i in 0..20u32 {
        let ip = format!("10.0.0.{i}");
        writer
            .register(instance("team-a", "orders", &ip))
            .await
            .unwrap();
        want.push(format!("{ip}:8080"));
    }
    intruders.await.expect("the intruders' expectations hold");
    want.sort();
    let snap = watcher.query(&name, false).await.unwrap();
    assert_eq!(addrs_of(&snap), want, "exactly the writer's instances");
    // The subscriber was pushed the writer's changes, and nothing of the intruders'.
    loop {
        let s = tokio::time::timeout(DEADLINE, sub.next())
            .await
            .expect("a push of the writer's last change")
            .expect("subscription open");
        assert!(
            s.instances
                .iter()
                .all(|i| i.ip.as_str().starts_with("10.0.0.")),
            "an intruder's instance was pushed: {:?}",
            addrs_of(&s)
        );
        if addrs_of(&s) == want {
            break;
        }
    }
    assert_eq!(h.node.store.len(), 20);
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_right_token_works_and_is_presented_again_after_a_reconnect() {
    let keys = Keys::new("redo");
    let h = start_guarded(&keys).await;
    let addr = h.addr;
    let c = client_as(addr, &keys.a_writer).await;
    let name = svc("team-a", "orders");
    c.register(instance("team-a", "orders", "10.0.0.1"))
        .await
        .unwrap();
    let mut sub = c.subscribe(&name).await.unwrap();
    let first = tokio::time::timeout(DEADLINE, sub.next())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(addrs_of(&first), vec!["10.0.0.1:8080"]);

    // The node goes away and a fresh one (empty store, same token file) takes its address: the
    // SDK reconnects, presents its token again, and redoes its registration and subscription.
    h.stop().await;
    let path = keys.path.clone();
    let h2 = start_on_with(addr, move |c| c.token_file = Some(path)).await;
    let key = key_of(&instance("team-a", "orders", "10.0.0.1"));
    eventually(
        "the instance registered again on the new node",
        async || {
            h2.node
                .store
                .get(&key)
                .is_some_and(|r| r.alive)
                .then_some(())
        },
    )
    .await;
    let admin = client_as(addr, &keys.admin).await;
    admin
        .register(instance("team-a", "orders", "10.0.0.2"))
        .await
        .unwrap();
    let deadline = tokio::time::Instant::now() + DEADLINE;
    loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        let s = tokio::time::timeout(left, sub.next())
            .await
            .expect("the subscription is pushed by the new node")
            .unwrap();
        if addrs_of(&s) == vec!["10.0.0.1:8080", "10.0.0.2:8080"] {
            break;
        }
    }
    c.register(instance("team-a", "orders", "10.0.0.3"))
        .await
        .unwrap();
    assert_eq!(h2.node.store.len(), 3);
    h2.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_refusals_close_the_connection() {
    let keys = Keys::new("three");
    let h = start_guarded(&keys).await;
    let (mut raw, _) = Raw::open(h.addr).await;
    let e = error_of(raw.call(&auth("distro_wrong")).await);
    assert_eq!(e.kind(), Some(ErrorCode::Unauthenticated));
    let e = error_of(
        raw.call(&register(false, vec![instance("team-a", "s", "10.0.0.1")]))
            .await,
    );
    assert_eq!(e.kind(), Some(ErrorCode::Unauthenticated));
    // Pings and Hellos are not failures.
    assert_eq!(raw.call(&Message::Ping(3)).await, Message::Pong(3));
    let third = raw.send(&auth("distro_wrong_again")).await;
    let frames = raw.until_closed().await;
    let (rid, e) = last_error(&frames);
    assert_eq!(frames.len(), 1, "the third refusal, then the end");
    assert_eq!((rid, e.kind()), (third, Some(ErrorCode::Unauthenticated)));

    // Two failures do not stop a client that then gets its token right.
    let (mut raw, _) = Raw::open(h.addr).await;
    for _ in 0..2 {
        let e = error_of(raw.call(&auth("distro_typo")).await);
        assert_eq!(e.kind(), Some(ErrorCode::Unauthenticated));
    }
    assert_eq!(raw.call(&auth(&keys.a_writer)).await, Message::Ack(1));
    let r = raw
        .call(&register(false, vec![instance("team-a", "s", "10.0.0.1")]))
        .await;
    assert_eq!(r, Message::Ack(1));
    // One token per connection.
    let e = error_of(raw.call(&auth(&keys.admin)).await);
    assert_eq!(e.kind(), Some(ErrorCode::InvalidArgument));
    let e = error_of(
        raw.call(&register(false, vec![instance("team-b", "s", "10.0.0.1")]))
            .await,
    );
    assert_eq!(
        e.kind(),
        Some(ErrorCode::PermissionDenied),
        "still a-writer"
    );
    assert_eq!(h.node.store.len(), 1);
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_applies_new_rights_and_closes_withdrawn_tokens() {
    let keys = Keys::new("reload");
    keys.write(
        &[
            entry("admin", &keys.admin, &[], &["*"]),
            entry("a-writer", &keys.a_writer, &["team-b"], &["team-a"]),
            entry("b-writer", &keys.b_writer, &[], &["team-b"]),
        ]
        .join("\n"),
    );
    let h = start_guarded(&keys).await;
    let (orders, pay) = (svc("team-a", "orders"), svc("team-b", "pay"));
    let mut a = raw_as(h.addr, &keys.a_writer).await;
    assert_eq!(
        a.call(&Message::Subscribe(orders.clone())).await,
        Message::Ack(1)
    );
    assert_eq!(
        a.call(&Message::Subscribe(pay.clone())).await,
        Message::Ack(1)
    );
    for _ in 0..2 {
        a.push().await; // the current (empty) lists
    }
    let mut b = raw_as(h.addr, &keys.b_writer).await;
    assert_eq!(b.call(&Message::Ping(1)).await, Message::Pong(1));

    // a-writer keeps reading team-b only; b-writer is gone.
    keys.write(
        &[
            entry("admin", &keys.admin, &[], &["*"]),
            entry("a-writer", &keys.a_writer, &["team-b"], &[]),
        ]
        .join("\n"),
    );
    let loaded = h.node.tokens.reload().expect("a valid file");
    assert_eq!(loaded.tokens, 2);

    b.send(&Message::Ping(2)).await;
    let (rid, e) = last_error(&b.until_closed().await);
    assert_eq!(
        (rid, e.kind()),
        (0, Some(ErrorCode::Unauthenticated)),
        "{e:?}"
    );

    let e = error_of(
        a.call(&register(
            false,
            vec![instance("team-a", "orders", "10.0.0.1")],
        ))
        .await,
    );
    assert_eq!(
        e.kind(),
        Some(ErrorCode::PermissionDenied),
        "a lost write on team-a"
    );
    let admin = client_as(h.addr, &keys.admin).await;
    admin
        .register(instance("team-a", "orders", "10.0.0.1"))
        .await
        .unwrap();
    admin
        .register(instance("team-b", "pay", "10.0.1.1"))
        .await
        .unwrap();
    // Pushes come per service, the older change no later than the newer: anything of team-a
    // would come before team-b's.
    loop {
        let s = a.push().await;
        assert_ne!(
            s.name, orders,
            "a's subscription to team-a outlived its right"
        );
        if s.name == pay && !s.instances.is_empty() {
            break;
        }
    }

    // A bad file changes nothing.
    keys.write("[[token]]\nname = \"half-written\"\n");
    let e = h.node.tokens.reload().unwrap_err().to_string();
    assert!(e.contains("sha256"), "{e}");
    raw_as(h.addr, &keys.admin).await;
    let (mut gone, _) = Raw::open(h.addr).await;
    let e = error_of(gone.call(&auth(&keys.b_writer)).await);
    assert_eq!(
        e.kind(),
        Some(ErrorCode::Unauthenticated),
        "b stays withdrawn"
    );
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_without_a_token_file_accepts_any_token_and_serves_everyone() {
    let h = start().await;
    let (mut raw, _) = Raw::open(h.addr).await;
    assert_eq!(raw.call(&auth("anything")).await, Message::Ack(1));
    assert_eq!(raw.call(&auth("again")).await, Message::Ack(1));
    let with = connect(h.addr, Some(&mint_token())).await.unwrap();
    with.register(instance("team-a", "s", "10.0.0.1"))
        .await
        .unwrap();
    let without = connect(h.addr, None).await.unwrap();
    without
        .register(instance("team-b", "s", "10.0.0.2"))
        .await
        .unwrap();
    assert_eq!(h.node.store.len(), 2);
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_with_tokens_forwards_and_syncs_as_before() {
    let keys = Keys::new("cluster");
    let path = keys.path.clone();
    let tc = cluster_support::TestCluster::start_with(3, move |c| {
        c.token_file = Some(path.clone());
    })
    .await;
    // Writes through node 1 go to their owners (all three nodes own some of them).
    let writer = client_as(tc.addr(1), &keys.a_writer).await;
    let batch: Vec<Instance> = (0..30)
        .map(|i| instance("team-a", "orders", &format!("10.0.2.{i}")))
        .collect();
    let owners: std::collections::BTreeSet<u16> = batch
        .iter()
        .map(|i| tc.store(1).ownership().owner(&i.key.ip, i.key.port))
        .collect();
    assert_eq!(owners.len(), 3, "the batch is spread over every owner");
    writer.register_batch(batch).await.unwrap();
    // Acknowledged means applied at the owners.
    for id in [2, 3] {
        let owned = cluster_support::live_owners(tc.store(id))
            .into_values()
            .filter(|o| *o == id)
            .count();
        assert!(owned > 0, "node {id} holds none of its share");
    }
    // A reader on node 3 sees them all; it still may not write, there either.
    let reader = client_as(tc.addr(3), &keys.a_reader).await;
    let name = svc("team-a", "orders");
    let deadline = tokio::time::Instant::now() + DEADLINE;
    loop {
        if reader.query(&name, false).await.unwrap().instances.len() == 30 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "node 3 never saw all 30"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let r = reader
        .register(instance("team-a", "orders", "10.0.3.1"))
        .await;
    assert_denied(r, "team-a", "reader on node 3");
    let anon = connect(tc.addr(2), None).await.unwrap();
    let e = anon.query(&name, false).await.unwrap_err();
    assert_eq!(code_of(&e), Some(ErrorCode::Unauthenticated));
    tc.wait_converged().await;
    tc.shutdown().await;
}

/// A `distrod` child, killed when dropped; its log lines are kept.
struct Daemon {
    child: Child,
    addr: SocketAddr,
    log: Arc<Mutex<Vec<String>>>,
}

impl Daemon {
    fn start(token_file: &Path) -> Daemon {
        let mut child = Command::new(DISTROD)
            .args(["--listen", "127.0.0.1:0", "--token-file"])
            .arg(token_file)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start distrod");
        let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
        let addr = loop {
            let line = lines
                .next()
                .expect("distrod exited before serving")
                .unwrap();
            if let Some(rest) = line.split("listen=").nth(1) {
                let a = rest.split_whitespace().next().unwrap_or_default();
                break a.parse().expect("a socket address");
            }
        };
        let log = Arc::new(Mutex::new(Vec::new()));
        let keep = log.clone();
        std::thread::spawn(move || {
            for line in lines.map_while(Result::ok) {
                keep.lock().unwrap().push(line);
            }
        });
        Daemon { child, addr, log }
    }

    fn hangup(&self) {
        let ok = Command::new("kill")
            .args(["-HUP", &self.child.id().to_string()])
            .status()
            .unwrap()
            .success();
        assert!(ok, "kill -HUP failed");
    }

    fn logged(&self, what: &str) -> bool {
        self.log.lock().unwrap().iter().any(|l| l.contains(what))
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_the_token_file_and_a_bad_file_keeps_the_one_in_force() {
    let keys = Keys::new("sighup");
    let (old, new) = (mint_token(), mint_token());
    keys.write(&entry("old", &old, &[], &["team-a"]));
    let d = Daemon::start(&keys.path);
    let c = client_as(d.addr, &old).await;
    c.register(instance("team-a", "s", "10.0.0.1"))
        .await
        .unwrap();

    keys.write(&entry("new", &new, &[], &["team-a"]));
    d.hangup();
    eventually("the new token accepted", async || {
        connect(d.addr, Some(&new)).await.ok().map(|_| ())
    })
    .await;
    let e = refused(connect(d.addr, Some(&old)).await);
    assert_eq!(code_of(&e), Some(ErrorCode::Unauthenticated), "{e}");
    // The old token's open connection is closed at its next request; the SDK's redial is
    // refused like any new connection.
    let e = c.query(&svc("team-a", "s"), false).await.unwrap_err();
    assert!(
        matches!(
            code_of(&e),
            Some(ErrorCode::Unauthenticated) | None // the connection was closed under it
        ),
        "{e}"
    );

    keys.write("this is not a token file");
    d.hangup();
    eventually("the bad file reported", async || {
        d.logged("token file not reloaded").then_some(())
    })
    .await;
    let c = client_as(d.addr, &new).await;
    let snap = c.query(&svc("team-a", "s"), false).await.unwrap();
    assert_eq!(addrs_of(&snap), vec!["10.0.0.1:8080"]);
}

/// Runs distroctl with `args`, `stdin` on its standard input and `env` set.
fn distroctl(args: &[&str], stdin: &str, env: &[(&str, &str)]) -> std::process::Output {
    let mut cmd = Command::new(DISTROCTL);
    cmd.args(args)
        .env_remove("DISTRO_TOKEN")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().expect("run distroctl");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .unwrap();
    child.wait_with_output().unwrap()
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn distroctl_mints_entries_a_node_loads_and_presents_its_token() {
    let keys = Keys::new("ctl");
    std::fs::remove_file(&keys.path).unwrap();
    let file = keys.path.to_str().unwrap().to_string();
    let run = |args: Vec<String>, stdin: &'static str, env: Vec<(String, String)>| {
        tokio::task::spawn_blocking(move || {
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            let env: Vec<(&str, &str)> =
                env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
            distroctl(&args, stdin, &env)
        })
    };
    let args = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();

    let out = run(
        args(&[
            "token", "new", "--name", "ci", "--write", "team-a", "--read", "*", "--file", &file,
        ]),
        "",
        vec![],
    )
    .await
    .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    let token = text(&out.stdout).trim().to_string();
    assert!(
        token.starts_with("distro_") && !token.contains('\n'),
        "{token:?}"
    );
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&keys.path).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600, "the token file is private");
    let written = std::fs::read_to_string(&keys.path).unwrap();
    assert!(
        !written.contains(&token[7..]),
        "the file holds the token itself"
    );

    // A second entry with the same name is refused, and the file stays as it was.
    let out = run(
        args(&[
            "token", "new", "--name", "ci", "--write", "team-b", "--file", &file,
        ]),
        "",
        vec![],
    )
    .await
    .unwrap();
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("has this name"),
        "{}",
        text(&out.stderr)
    );
    assert_eq!(std::fs::read_to_string(&keys.path).unwrap(), written);
    // A Nacos user: the password comes on standard input and is not written anywhere.
    let out = run(
        args(&[
            "token",
            "user",
            "--username",
            "nacos",
            "--read",
            "public",
            "--file",
            &file,
        ]),
        "correct-horse-battery\n",
        vec![],
    )
    .await
    .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    let written = std::fs::read_to_string(&keys.path).unwrap();
    assert!(written.contains("$argon2id$") && !written.contains("correct-horse"));
    // Without --file the entry is printed after the token.
    let out = run(
        args(&["token", "new", "--name", "x", "--read", "a"]),
        "",
        vec![],
    )
    .await
    .unwrap();
    let printed = text(&out.stdout);
    assert!(
        printed.lines().next().unwrap().starts_with("distro_"),
        "{printed}"
    );
    assert!(
        printed.contains("[[token]]") && printed.contains("name = \"x\""),
        "{printed}"
    );
    let out = run(args(&["token", "new", "--name", "nothing"]), "", vec![])
        .await
        .unwrap();
    assert!(!out.status.success(), "an entry that grants nothing");
    assert!(
        text(&out.stderr).contains("grants nothing"),
        "{}",
        text(&out.stderr)
    );

    // A node loads the file; distroctl presents the token from DISTRO_TOKEN or --token.
    let h = start_guarded(&keys).await;
    let server = h.addr.to_string();
    let reg = |token: Vec<(String, String)>, extra: &[&str]| {
        let mut a = args(&["--server", &server]);
        a.extend(args(extra));
        a.extend(args(&[
            "register",
            "--namespace",
            "team-a",
            "--service",
            "s",
            "--ip",
            "10.0.0.1",
            "--port",
            "80",
        ]));
        run(a, "", token)
    };
    let out = reg(vec![], &[]).await.unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("unauthenticated"),
        "{}",
        text(&out.stderr)
    );
    let out = reg(vec![], &["--token", "distro_wrong"]).await.unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("refused"),
        "{}",
        text(&out.stderr)
    );
    assert_eq!(h.node.store.len(), 0);
    let out = reg(vec![("DISTRO_TOKEN".into(), token.clone())], &[])
        .await
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    let out = run(
        args(&[
            "--server",
            &server,
            "--token",
            &token,
            "list",
            "--namespace",
            "team-a",
            "--service",
            "s",
            "--json",
        ]),
        "",
        vec![],
    )
    .await
    .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).contains("10.0.0.1"),
        "{}",
        text(&out.stdout)
    );
    h.stop().await;
}
