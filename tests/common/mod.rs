//! Helpers shared by the integration tests: in-process servers on loopback port 0, names and
//! instances, polling with a deadline, and a raw framed connection for byte-level tests.
//!
//! Every wait here polls until a condition holds or a generous deadline passes, so that the
//! tests hold on a loaded machine; none of them asserts how fast something happened.

#![allow(dead_code)] // each test crate uses a different part of this module

pub mod certs;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::BytesMut;
use distro::client::{Client, ClientConfig};
use distro::config::Config;
use distro::model::{Instance, InstanceKey, InstanceView, Lease, ServiceName, ServiceSnapshot};
use distro::server::{Server, ServerHandle};
use distro::wire::{
    ErrorBody, Frame, FrameCodec, Hello, HelloOk, Message, PROTOCOL_VERSION, encode_frame,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;
use tokio_util::codec::Decoder;

/// How long any single wait of a test may take before it fails. Generous on purpose.
pub const DEADLINE: Duration = Duration::from_secs(10);

/// The settings every test server starts from: loopback port 0 (and a port-0 peer address, so
/// parallel tests never collide), no admin port, a low lease floor and a quick lease duty so
/// short leases work.
pub fn test_config() -> Config {
    Config {
        listen: "127.0.0.1:0".parse().unwrap(),
        peer_listen: "127.0.0.1:0".parse().unwrap(),
        lease_floor_ms: 100,
        lease_pass_ms: 50,
        // No admin port unless a test asks for one (the default port would collide).
        http: None,
        ..Config::default()
    }
}

/// Starts a standalone server with [`test_config`] changed by `f`.
pub async fn start_with(f: impl FnOnce(&mut Config)) -> ServerHandle {
    let mut cfg = test_config();
    f(&mut cfg);
    Server::bind(cfg).await.expect("bind test server").spawn()
}

pub async fn start() -> ServerHandle {
    start_with(|_| {}).await
}

/// Binds a server on `addr` (a restarted node on the address of a stopped one), retrying while
/// the port is still held by the old listener.
pub async fn start_on(addr: SocketAddr) -> ServerHandle {
    start_on_with(addr, |_| {}).await
}

/// [`start_on`] with [`test_config`] changed by `f`.
pub async fn start_on_with(addr: SocketAddr, f: impl FnOnce(&mut Config)) -> ServerHandle {
    let mut cfg = test_config();
    f(&mut cfg);
    cfg.listen = addr;
    let deadline = Instant::now() + DEADLINE;
    loop {
        match Server::bind(cfg.clone()).await {
            Ok(s) => return s.spawn(),
            Err(e) if Instant::now() < deadline => {
                eprintln!("rebinding {addr}: {e}; retrying");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => panic!("cannot rebind {addr}: {e}"),
        }
    }
}

/// An address nothing listens on (a port that was just free).
pub fn dead_addr() -> SocketAddr {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap()
}

pub fn client_config(addrs: &[SocketAddr]) -> ClientConfig {
    let mut cfg = ClientConfig::new(addrs.iter().map(|a| a.to_string()));
    // A loaded machine can be slow to answer; failing a request early makes a flaky test.
    cfg.request_timeout = Duration::from_secs(5);
    cfg
}

pub async fn client(addrs: &[SocketAddr]) -> Client {
    Client::connect(client_config(addrs))
        .await
        .expect("client connects")
}

pub fn name(service: &str) -> ServiceName {
    ServiceName::new("public", "DEFAULT_GROUP", service)
}

pub fn key(service: &ServiceName, cluster: &str, ip: &str, port: u16) -> InstanceKey {
    InstanceKey {
        service: service.clone(),
        cluster: cluster.into(),
        ip: ip.into(),
        port,
    }
}

/// An instance with Nacos's defaults in the `DEFAULT` cluster.
pub fn inst(service: &ServiceName, ip: &str, port: u16) -> Instance {
    Instance::new(key(service, "DEFAULT", ip, port))
}

pub fn lease(beat_ms: u32, unhealthy_ms: u32, expire_ms: u32) -> Lease {
    Lease {
        beat_ms,
        unhealthy_ms,
        expire_ms,
    }
}

/// The instance at `ip:port` in a snapshot.
pub fn find<'a>(snap: &'a ServiceSnapshot, ip: &str, port: u16) -> Option<&'a InstanceView> {
    snap.instances
        .iter()
        .find(|i| i.ip.as_str() == ip && i.port == port)
}

/// `ip:port` of every instance of a snapshot, sorted.
pub fn addrs_of(snap: &ServiceSnapshot) -> Vec<String> {
    let mut v: Vec<String> = snap
        .instances
        .iter()
        .map(|i| format!("{}:{}", i.ip, i.port))
        .collect();
    v.sort();
    v
}

/// Polls `f` every 20 ms until it answers `Some`, and returns that; fails the test after
/// [`DEADLINE`], naming `what` was awaited.
pub async fn eventually<T>(what: &str, mut f: impl AsyncFnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + DEADLINE;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        if Instant::now() > deadline {
            panic!("timed out after {DEADLINE:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A connection that speaks frames by hand: for requests the SDK would never send, for counting
/// every push, and for connections that must not beat.
pub struct Raw {
    pub stream: TcpStream,
    buf: BytesMut,
    codec: FrameCodec,
    next_id: u32,
    /// Push frames (Push, PushDelta) that arrived while [`Raw::call`] waited for an answer, in
    /// order.
    pub pushes: Vec<Frame>,
    /// Per subscribed service, the whole list the pushes so far make (deltas applied).
    pub lists: HashMap<ServiceName, ServiceSnapshot>,
}

/// One push as it came, and the whole list after it.
pub struct PushSeen {
    /// The frame's bytes on the wire (length prefix, header, body).
    pub wire_bytes: usize,
    pub message: Message,
    pub list: ServiceSnapshot,
}

impl PushSeen {
    pub fn is_delta(&self) -> bool {
        matches!(self.message, Message::PushDelta(_))
    }
}

impl Raw {
    pub async fn connect(addr: SocketAddr) -> Raw {
        let stream = TcpStream::connect(addr).await.expect("raw connect");
        stream.set_nodelay(true).unwrap();
        Raw {
            stream,
            buf: BytesMut::new(),
            codec: FrameCodec::default(),
            next_id: 1,
            pushes: Vec::new(),
            lists: HashMap::new(),
        }
    }

    /// Connects and says Hello.
    pub async fn open(addr: SocketAddr) -> (Raw, HelloOk) {
        let mut raw = Raw::connect(addr).await;
        let hello = Message::Hello(Hello {
            max_version: PROTOCOL_VERSION,
            client_name: "raw-test".into(),
        });
        match raw.call(&hello).await {
            Message::HelloOk(ok) => (raw, ok),
            other => panic!("expected HelloOk, got {other:?}"),
        }
    }

    pub async fn write(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).await.expect("raw write");
    }

    /// Sends `msg` with a fresh request id and returns the id.
    pub async fn send(&mut self, msg: &Message) -> u32 {
        let id = self.next_id;
        self.next_id += 1;
        self.write(&encode_frame(id, 0, msg)).await;
        id
    }

    /// The next frame, or `None` once the server closed the connection (EOF or reset). Fails
    /// the test if nothing arrives within [`DEADLINE`].
    pub async fn frame(&mut self) -> Option<Frame> {
        let deadline = Instant::now() + DEADLINE;
        loop {
            if let Some(f) = self
                .codec
                .decode(&mut self.buf)
                .expect("server sent a bad frame")
            {
                return Some(f);
            }
            let left = deadline.saturating_duration_since(Instant::now());
            match tokio::time::timeout(left, self.stream.read_buf(&mut self.buf)).await {
                Err(_) => panic!("no frame from the server within {DEADLINE:?}"),
                Ok(Ok(0)) => return None,
                Ok(Ok(_)) => {}
                Ok(Err(e)) if e.kind() == std::io::ErrorKind::ConnectionReset => return None,
                Ok(Err(e)) => panic!("raw read: {e}"),
            }
        }
    }

    /// The whole list after the next push (request id 0), skipping nothing: any other frame
    /// fails the test.
    pub async fn push(&mut self) -> ServiceSnapshot {
        self.push_seen().await.list
    }

    /// The next push (request id 0) as it came, applied to the list of its service: a delta must
    /// follow on from the list the earlier pushes of this connection made.
    pub async fn push_seen(&mut self) -> PushSeen {
        let f = if self.pushes.is_empty() {
            self.frame()
                .await
                .expect("connection closed while waiting for a push")
        } else {
            self.pushes.remove(0)
        };
        assert_eq!(f.request_id, 0, "a push carries request id 0: {f:?}");
        let message = f.message().expect("decodable push");
        let list = match &message {
            Message::Push(s) => s.clone(),
            Message::PushDelta(d) => {
                let held = self
                    .lists
                    .get(&d.name)
                    .unwrap_or_else(|| panic!("a delta of {} before any whole list", d.name));
                held.apply(d)
                    .unwrap_or_else(|e| panic!("a delta that does not follow on: {e}"))
            }
            other => panic!("expected a push, got {other:?}"),
        };
        self.lists.insert(list.name.clone(), list.clone());
        PushSeen {
            wire_bytes: 4 + 8 + f.body.len(),
            message,
            list,
        }
    }

    /// Sends `msg` and waits for the answer to it; pushes in between are kept in `pushes`.
    pub async fn call(&mut self, msg: &Message) -> Message {
        let id = self.send(msg).await;
        loop {
            let f = self
                .frame()
                .await
                .unwrap_or_else(|| panic!("connection closed while waiting for answer {id}"));
            let m = f.message().expect("decodable answer");
            match m {
                Message::Push(_) | Message::PushDelta(_) if f.request_id == 0 => {
                    self.pushes.push(f)
                }
                m if f.request_id == id => return m,
                other => panic!("unexpected frame {other:?} for request {}", f.request_id),
            }
        }
    }

    /// Reads until the server closes the connection; returns every frame it sent first.
    pub async fn until_closed(&mut self) -> Vec<Frame> {
        let mut frames = Vec::new();
        while let Some(f) = self.frame().await {
            frames.push(f);
        }
        frames
    }
}

/// The Error frame among `frames`, which must be the last one sent.
pub fn last_error(frames: &[Frame]) -> (u32, ErrorBody) {
    let last = frames
        .last()
        .expect("the server closed without sending an Error frame");
    match last.message().expect("decodable error frame") {
        Message::Error(e) => (last.request_id, e),
        other => panic!("expected an Error frame last, got {other:?}"),
    }
}

/// An HTTP answer: status, content type and body.
#[derive(Debug)]
pub struct HttpAnswer {
    pub status: u16,
    pub content_type: String,
    pub body: String,
}

impl HttpAnswer {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.body))
    }
}

/// One plain HTTP/1.1 GET of `path` on `addr` (`Connection: close`), within [`DEADLINE`].
pub async fn http_get(addr: SocketAddr, path: &str) -> HttpAnswer {
    let fut = async {
        let mut s = TcpStream::connect(addr)
            .await
            .expect("connect to the admin port");
        let req = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
        s.write_all(req.as_bytes()).await.unwrap();
        let mut raw = Vec::new();
        s.read_to_end(&mut raw).await.unwrap();
        raw
    };
    let raw = tokio::time::timeout(DEADLINE, fut)
        .await
        .expect("the admin port answers in time");
    let text = String::from_utf8(raw).expect("a UTF-8 answer");
    let (head, body) = text.split_once("\r\n\r\n").expect("an HTTP answer");
    let mut lines = head.lines();
    let status = lines
        .next()
        .unwrap()
        .split(' ')
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    let mut content_type = String::new();
    let mut chunked = false;
    for l in lines {
        let (k, v) = l.split_once(':').unwrap();
        match k.to_ascii_lowercase().as_str() {
            "content-type" => content_type = v.trim().to_string(),
            "transfer-encoding" => chunked = v.trim().eq_ignore_ascii_case("chunked"),
            _ => {}
        }
    }
    let body = if chunked {
        let mut out = String::new();
        let mut rest = body;
        loop {
            let (size, after) = rest.split_once("\r\n").unwrap();
            let n = usize::from_str_radix(size.trim(), 16).unwrap();
            if n == 0 {
                break;
            }
            out.push_str(&after[..n]);
            rest = &after[n + 2..];
        }
        out
    } else {
        body.to_string()
    };
    HttpAnswer {
        status,
        content_type,
        body,
    }
}

/// The value of the sample `series` (the metric name with its labels, as the text shows it)
/// in Prometheus text `text`.
pub fn metric(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .map(|v| v.trim().parse().unwrap())
}
