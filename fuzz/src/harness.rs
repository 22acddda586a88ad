//! What the two session targets share: reading and checking a node's answers, the store's
//! contents for comparisons, a bounded wait, and an in-memory listener.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::Mutex;
use std::time::Duration;

use std::collections::HashMap;

use bytes::BytesMut;
use distro::model::{ServiceName, ServiceSnapshot};
use distro::net::{BoxStream, Listener};
use distro::store::Store;
use distro::wire::{FrameCodec, Message, PROTOCOL_VERSION};
use futures_util::future::BoxFuture;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::session_input::Item;
use tokio_util::codec::Decoder;

/// Tokio time one input may take in all. Time only moves while every task waits (the runtime's
/// clock is paused), so a session that hangs reaches this at once, and one that works never
/// comes near it.
pub const DEADLINE: Duration = Duration::from_secs(600);

/// Set when replaying one input, to see what happens.
pub fn trace() -> bool {
    std::env::var_os("DISTRO_FUZZ_TRACE").is_some()
}

pub async fn within_deadline<T>(f: impl Future<Output = T>) -> T {
    match tokio::time::timeout(DEADLINE, f).await {
        Ok(t) => t,
        Err(_) => panic!("the session or the node did not finish within {DEADLINE:?}"),
    }
}

/// Reads every frame the node sends until it closes its side (`buf` may hold bytes already
/// read); each must be a whole frame of protocol version 1 that decodes, and a push must carry
/// request id 0. Every PushDelta must follow on from the list the pushes before it on this
/// connection made (wire-spec.md §6.10: its base is that list's revision). Returns the frames
/// that are not pushes, with their request ids, in order.
pub async fn read_answers(
    mut rd: impl AsyncRead + Unpin,
    mut buf: BytesMut,
) -> Vec<(u32, Message)> {
    let mut codec = FrameCodec::default();
    let mut answers = Vec::new();
    let mut lists: HashMap<ServiceName, ServiceSnapshot> = HashMap::new();
    loop {
        while let Some(frame) = codec
            .decode(&mut buf)
            .unwrap_or_else(|e| panic!("the node sent bytes that do not frame: {e}"))
        {
            assert_eq!(frame.version, PROTOCOL_VERSION, "the node sent {frame:?}");
            let msg = frame.message().unwrap_or_else(|e| {
                panic!("the node sent a frame that does not decode: {e}; {frame:?}")
            });
            if trace() {
                eprintln!("answer to {}: {msg:?}", frame.request_id);
            }
            match msg {
                Message::Push(s) => {
                    assert_eq!(frame.request_id, 0, "a push carries request id 0");
                    lists.insert(s.name.clone(), s);
                }
                Message::PushDelta(d) => {
                    assert_eq!(frame.request_id, 0, "a push carries request id 0");
                    let held = lists
                        .get(&d.name)
                        .unwrap_or_else(|| panic!("a delta of {} before its whole list", d.name));
                    let next = held.apply(&d).unwrap_or_else(|e| {
                        panic!("the node sent a delta that does not follow on: {e}; {d:?}")
                    });
                    lists.insert(d.name.clone(), next);
                }
                _ => answers.push((frame.request_id, msg)),
            }
        }
        let n = rd
            .read_buf(&mut buf)
            .await
            .expect("reading an in-memory pipe");
        if n == 0 {
            assert!(
                buf.is_empty(),
                "the node closed the connection in the middle of a frame ({} bytes left)",
                buf.len()
            );
            return answers;
        }
    }
}

/// Writes `items` to a session as its client (or peer) would: frames and raw bytes as they are;
/// pauses as tokio time, each followed by a lease pass of `store`, at most `pause_budget_ms` in
/// all. Stops at the first write that fails, and after a frame whose message does not decode
/// (the session answers it with an Error and closes).
pub async fn write_items(
    wr: &mut (impl AsyncWrite + Unpin),
    items: Vec<Item>,
    store: &Store,
    pause_budget_ms: u64,
) {
    let mut paused_ms = 0;
    for item in items {
        let go_on = match item {
            Item::Frame { bytes, decodes, .. } => wr.write_all(&bytes).await.is_ok() && decodes,
            Item::Raw(bytes) => wr.write_all(&bytes).await.is_ok(),
            Item::Pause(ms) => {
                let ms = ms.min(pause_budget_ms - paused_ms);
                paused_ms += ms;
                tokio::time::sleep(Duration::from_millis(ms)).await;
                store.lease_pass();
                true
            }
        };
        if !go_on {
            break;
        }
    }
}

/// Every record of the store (tombstones included) as text, sorted.
pub fn store_contents(store: &Store) -> Vec<String> {
    let mut v = Vec::new();
    store.for_each_record(|name, id, r| {
        v.push(format!(
            "{name} {} {}:{} {:?} alive={} healthy={} enabled={} lapsed={} weight={} \
             lease={:?} session={:#x} metadata={:?}",
            id.cluster,
            id.ip,
            id.port,
            r.version,
            r.alive,
            r.healthy,
            r.enabled,
            r.lapsed,
            r.weight,
            r.lease,
            r.session,
            r.metadata
        ))
    });
    v.sort();
    v
}

/// A frame that does not decode must change nothing: `with` is the store after the input,
/// `without` after the input cut before that frame (item `bad`).
pub fn assert_same_store(with: &[String], without: &[String], bad: usize) {
    assert!(
        with == without,
        "the frame that did not decode (item {bad}) changed the store:\n\
         with it:    {with:#?}\nwithout it: {without:#?}"
    );
}

pub fn check_store(store: &Store, when: &str) {
    if let Err(e) = store.check_invariants() {
        panic!("{when}: {e}");
    }
}

/// A listener that hands out one in-memory stream, then waits forever.
pub struct OneStream {
    stream: Mutex<Option<BoxStream>>,
}

impl OneStream {
    pub fn new(stream: BoxStream) -> OneStream {
        OneStream {
            stream: Mutex::new(Some(stream)),
        }
    }
}

pub fn peer_addr() -> SocketAddr {
    "127.0.0.1:40000".parse().unwrap()
}

impl Listener for OneStream {
    fn accept(&self) -> BoxFuture<'_, io::Result<(BoxStream, SocketAddr)>> {
        let next = self.stream.lock().unwrap().take();
        Box::pin(async move {
            match next {
                Some(s) => Ok((s, peer_addr())),
                None => std::future::pending().await,
            }
        })
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        Ok("127.0.0.1:8859".parse().unwrap())
    }
}
