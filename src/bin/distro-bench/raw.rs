//! A raw framed connection for the measured requests, and the lean pipelined loop the
//! closed-loop scenarios (register, query, beat) run on; `converge` splits the connection into
//! an open-loop sender and an answer reader.
//!
//! The scenarios send the same requests the SDK would, over the same protocol, without the SDK's
//! per-request machinery: a frame encoded into a fresh buffer, a oneshot channel and an entry in
//! a shared request table per request, a writer task woken for it, and every answer decoded into
//! a [`Message`] (a query's ten instances into ten allocated views) only to be counted. Under
//! `query` that machinery cost the generator about twice the CPU the three nodes spent
//! answering. Here one task owns each connection: it appends requests to one write buffer
//! (pre-encoded frames copied with the request id patched in, or bodies encoded in place),
//! writes them with one system call, and reads the answers checking only the header and the
//! body fields a scenario counts.

use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use bytes::{Buf, Bytes, BytesMut};
use distro::net::{BoxStream, StreamReader, StreamWriter};
use distro::wire::{
    ErrorBody, FRAME_LEN_MAX, FrameCodec, HEADER_LEN, Hello, LEN_PREFIX, Message, Opcode,
    PROTOCOL_VERSION, Token, encode_frame,
};
use hdrhistogram::Histogram;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_util::codec::Decoder;

use crate::conn::REQUEST_TIMEOUT;
use crate::measure::{Counters, micros, new_histogram};

/// Where the opcode sits in a whole frame: after the length prefix and the version byte.
const OPCODE_AT: usize = LEN_PREFIX + 1;
/// Where the request id sits in a whole frame: after the length prefix, version, opcode, flags.
const REQUEST_ID_AT: usize = LEN_PREFIX + 4;
/// How long connecting and the Hello exchange may take (as the SDK connections of the setup).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Bytes read from the socket at a time at least (answers of a pipeline's worth of queries fit).
const READ_CHUNK: usize = 64 << 10;

/// One connection to a node, said Hello to, with its read and write buffers.
pub struct RawConn {
    pub addr: String,
    stream: BoxStream,
    rbuf: BytesMut,
    wbuf: BytesMut,
}

impl RawConn {
    /// Connects and says Hello; fails unless the node answers HelloOk and is ready.
    pub async fn open(addr: &str, client_name: &str) -> anyhow::Result<RawConn> {
        let timeout = CONNECT_TIMEOUT;
        // TCP with Nagle off, or TLS over it: the SDK's dialer (`--tls-ca`, `--spawn-tls`).
        let stream = tokio::time::timeout(timeout, crate::conn::dialer().connect(addr.into()))
            .await
            .with_context(|| format!("connecting to {addr}: timed out"))?
            .with_context(|| format!("cannot connect to {addr}"))?;
        let mut conn = RawConn {
            addr: addr.to_string(),
            stream,
            rbuf: BytesMut::with_capacity(READ_CHUNK),
            wbuf: BytesMut::new(),
        };
        let hello = Message::Hello(Hello {
            max_version: PROTOCOL_VERSION,
            client_name: client_name.into(),
        });
        conn.wbuf.extend_from_slice(&encode_frame(1, 0, &hello));
        conn.flush().await?;
        let answer = tokio::time::timeout(timeout, conn.read_message())
            .await
            .with_context(|| format!("{addr}: no answer to Hello"))??;
        match answer {
            Message::HelloOk(h) if h.ready => {}
            Message::HelloOk(_) => bail!("node {addr} is not ready (still loading)"),
            Message::Error(e) => bail!("{addr} refused Hello: {}", error_text(&e)),
            other => bail!("{addr}: unexpected answer to Hello {:?}", other.opcode()),
        }
        // The token, once per connection, as the SDK presents it: what the measured requests
        // cost after that is what a token costs each request.
        if let Some(t) = crate::conn::client_token() {
            let auth = Message::Auth(Token::new(t));
            conn.wbuf.extend_from_slice(&encode_frame(2, 0, &auth));
            conn.flush().await?;
            let answer = tokio::time::timeout(timeout, conn.read_message())
                .await
                .with_context(|| format!("{addr}: no answer to Auth"))??;
            match answer {
                Message::Ack(_) => {}
                Message::Error(e) => bail!("{addr} refused the token: {}", error_text(&e)),
                other => bail!("{addr}: unexpected answer to Auth {:?}", other.opcode()),
            }
        }
        Ok(conn)
    }

    /// Writes everything buffered.
    async fn flush(&mut self) -> std::io::Result<()> {
        self.stream.write_all(&self.wbuf).await?;
        self.wbuf.clear();
        Ok(())
    }

    /// Reads one whole frame and decodes it (for setup, not for the measured loop).
    async fn read_message(&mut self) -> anyhow::Result<Message> {
        let mut codec = FrameCodec::new(FRAME_LEN_MAX);
        loop {
            if let Some(frame) = codec.decode(&mut self.rbuf)? {
                return Ok(frame.message()?);
            }
            if self.stream.read_buf(&mut self.rbuf).await? == 0 {
                bail!("{}: connection closed", self.addr);
            }
        }
    }

    /// Splits into halves for an open-loop sender and its answer reader.
    pub fn into_split(self) -> (RawReader, RawWriter) {
        let (rd, wr) = distro::net::split(self.stream);
        (
            RawReader {
                addr: self.addr,
                rd,
                buf: self.rbuf,
            },
            RawWriter { wr, buf: self.wbuf },
        )
    }
}

/// `n` raw connections, round-robin over `servers` (connection j to node j mod n).
pub async fn open_raw(servers: &[String], n: usize) -> anyhow::Result<Vec<RawConn>> {
    let mut conns = Vec::with_capacity(n);
    for j in 0..n {
        conns.push(RawConn::open(&servers[j % servers.len()], "distro-bench").await?);
    }
    Ok(conns)
}

/// The reading half of a split [`RawConn`].
pub struct RawReader {
    pub addr: String,
    rd: StreamReader,
    buf: BytesMut,
}

impl RawReader {
    /// Calls `each(request_id, opcode, frame)` for every whole frame (`frame` with its length
    /// prefix and header, so that `frame.len()` is what it cost on the wire; [`body`] is the
    /// message body in it) until the node closes the connection, `each` says stop, or a read
    /// fails.
    pub async fn for_each_frame(
        &mut self,
        mut each: impl FnMut(u32, u8, Bytes) -> std::ops::ControlFlow<()>,
    ) -> anyhow::Result<()> {
        loop {
            while let Some(len) = whole_frame(&self.buf)? {
                let (id, opcode) = header(&self.buf);
                if each(id, opcode, self.buf.split_to(len).freeze()).is_break() {
                    return Ok(());
                }
            }
            self.buf.reserve(READ_CHUNK);
            if self.rd.read_buf(&mut self.buf).await? == 0 {
                return Ok(());
            }
        }
    }
}

/// The writing half of a split [`RawConn`].
pub struct RawWriter {
    wr: StreamWriter,
    buf: BytesMut,
}

impl RawWriter {
    pub fn buf(&mut self) -> &mut BytesMut {
        &mut self.buf
    }

    pub async fn flush(&mut self) -> std::io::Result<()> {
        self.wr.write_all(&self.buf).await?;
        self.buf.clear();
        Ok(())
    }
}

/// The length of the whole frame at the front of `buf` (prefix included), if all of it is there.
fn whole_frame(buf: &[u8]) -> anyhow::Result<Option<usize>> {
    if buf.len() < LEN_PREFIX {
        return Ok(None);
    }
    let len = u32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]) as usize;
    if !(HEADER_LEN..=FRAME_LEN_MAX).contains(&len) {
        bail!("bad frame length {len}");
    }
    Ok((buf.len() >= LEN_PREFIX + len).then_some(LEN_PREFIX + len))
}

/// The message body of a whole frame.
pub fn body(frame: &Bytes) -> Bytes {
    frame.slice(LEN_PREFIX + HEADER_LEN..)
}

/// (request id, opcode) of the whole frame at the front of `buf`.
fn header(buf: &[u8]) -> (u32, u8) {
    let id = &buf[REQUEST_ID_AT..REQUEST_ID_AT + 4];
    (
        u32::from_be_bytes([id[0], id[1], id[2], id[3]]),
        buf[OPCODE_AT],
    )
}

/// Appends a pre-encoded whole frame to `out` with `request_id` patched in.
pub fn put_frame(out: &mut BytesMut, frame: &[u8], request_id: u32) {
    let at = out.len() + REQUEST_ID_AT;
    out.extend_from_slice(frame);
    out[at..at + 4].copy_from_slice(&request_id.to_be_bytes());
}

/// "server error (CODE): message"
pub fn error_text(e: &ErrorBody) -> String {
    format!(
        "server error ({}): {}",
        e.kind().map(|k| k.name()).unwrap_or("unknown code"),
        e.message
    )
}

/// The text of an answer that is not the one a workload expects: an Error frame's code and
/// message, or the opcode.
pub fn unexpected(opcode: u8, body: &[u8]) -> String {
    if opcode == Opcode::Error as u8
        && let Ok(Message::Error(e)) = Message::decode(Opcode::Error, Bytes::copy_from_slice(body))
    {
        return error_text(&e);
    }
    match Opcode::from_u8(opcode) {
        Ok(op) => format!("unexpected answer {op:?}"),
        Err(_) => format!("unexpected answer opcode {opcode:#04x}"),
    }
}

/// The instance count of a ServiceSnapshot body (QueryResult, Push), read past the name and
/// revision without decoding the instances.
pub fn snapshot_instance_count(body: &[u8]) -> Option<u32> {
    let mut at = 0;
    for _ in 0..3 {
        let len = u16::from_be_bytes(body.get(at..at + 2)?.try_into().ok()?) as usize;
        at += 2 + len;
    }
    at += 8;
    Some(u32::from_be_bytes(body.get(at..at + 4)?.try_into().ok()?))
}

/// The count of an Ack answer (None for any other answer).
pub fn ack_count(opcode: u8, body: &[u8]) -> Option<u32> {
    if opcode != Opcode::Ack as u8 {
        return None;
    }
    Some(u32::from_be_bytes(body.try_into().ok()?))
}

/// How many keys a BeatAck answer lists as unknown to the node (None for any other answer).
pub fn beat_ack_unknown(opcode: u8, body: &[u8]) -> Option<u16> {
    if opcode != Opcode::BeatAck as u8 || body.len() < 2 {
        return None;
    }
    let n = u16::from_be_bytes([body[0], body[1]]);
    (body.len() == 2 + 2 * n as usize).then_some(n)
}

/// What one pipelined connection sends, and how it checks the answers.
pub trait Workload: Send {
    /// Appends the next request's whole frame to `out` with `request_id`, for pipeline slot
    /// `slot`; false when there is no more work (the loop ends once all in flight is answered).
    fn request(&mut self, out: &mut BytesMut, slot: usize, request_id: u32) -> bool;
    /// Checks the answer (`opcode`, `body`) to the request in `slot`: the operations it counts,
    /// or why it is an error.
    fn answer(&mut self, slot: usize, opcode: u8, body: &[u8]) -> Result<u64, String>;
}

/// Keeps `pipeline` requests of `work` in flight on `conn` until the work runs out or
/// `stop_at` passes, then waits for the answers still out. A request's latency runs from the
/// moment it was put in the write buffer (the one write that follows sends it) to the read that
/// brought its answer. Operations and errors go to `counters`; on a lost connection or an
/// answer overdue by [`REQUEST_TIMEOUT`] every request still in flight counts as an error.
///
/// Requests are written before answers are read. Both sides could wait on each other only if
/// one round's requests and the answers owed (at most `pipeline` of each) both overran the
/// socket buffers; no scenario has both large (large Register batches get 16-byte Acks, large
/// QueryResults answer small Queries).
pub async fn run_pipelined(
    mut conn: RawConn,
    pipeline: usize,
    stop_at: Option<Instant>,
    work: &mut impl Workload,
    counters: &Counters,
) -> Histogram<u64> {
    let mut hist = new_histogram();
    // Per slot: the request id in flight there and when it was issued. A slot's ids are
    // `slot + 1 + k * pipeline` for its k-th use, so an answer's id names its slot (and is never
    // 0, which pushes and connection-level errors carry).
    let mut slots: Vec<Option<(u32, Instant)>> = vec![None; pipeline];
    let mut uses: Vec<u32> = vec![0; pipeline];
    let mut free: Vec<usize> = (0..pipeline).rev().collect();
    let mut exhausted = false;
    loop {
        let now = Instant::now();
        exhausted |= stop_at.is_some_and(|t| now >= t);
        while !exhausted && let Some(slot) = free.pop() {
            let id = match uses[slot]
                .checked_mul(pipeline as u32)
                .and_then(|b| b.checked_add(slot as u32 + 1))
            {
                Some(id) => id,
                None => {
                    // Past u32: start over (the ids of the first round were answered long ago).
                    uses[slot] = 0;
                    slot as u32 + 1
                }
            };
            uses[slot] += 1;
            if work.request(&mut conn.wbuf, slot, id) {
                slots[slot] = Some((id, now));
            } else {
                free.push(slot);
                exhausted = true;
            }
        }
        let in_flight = pipeline - free.len();
        if in_flight == 0 {
            return hist;
        }
        let lost = |why: String| {
            for _ in 0..in_flight {
                counters.error(&why);
            }
        };
        if let Err(e) = conn.flush().await {
            lost(format!("connection to {} lost: {e}", conn.addr));
            return hist;
        }
        conn.rbuf.reserve(READ_CHUNK);
        let read = tokio::time::timeout(REQUEST_TIMEOUT, conn.stream.read_buf(&mut conn.rbuf));
        match read.await {
            Ok(Ok(n)) if n > 0 => {}
            Ok(Ok(_)) => {
                lost(format!("connection to {} closed by the node", conn.addr));
                return hist;
            }
            Ok(Err(e)) => {
                lost(format!("connection to {} lost: {e}", conn.addr));
                return hist;
            }
            Err(_) => {
                lost(format!(
                    "no answer from {} within {REQUEST_TIMEOUT:?}",
                    conn.addr
                ));
                return hist;
            }
        }
        let now = Instant::now();
        loop {
            let len = match whole_frame(&conn.rbuf) {
                Ok(Some(len)) => len,
                Ok(None) => break,
                Err(e) => {
                    lost(format!("{}: {e}", conn.addr));
                    return hist;
                }
            };
            let (id, opcode) = header(&conn.rbuf);
            if id != 0 {
                let slot = (id - 1) as usize % pipeline;
                let Some((_, sent)) = slots[slot].filter(|(sid, _)| *sid == id) else {
                    lost(format!("{}: answer to unknown request {id}", conn.addr));
                    return hist;
                };
                slots[slot] = None;
                free.push(slot);
                let body = &conn.rbuf[LEN_PREFIX + HEADER_LEN..len];
                match work.answer(slot, opcode, body) {
                    Ok(ops) => {
                        hist.saturating_record(micros(now - sent));
                        counters
                            .ops
                            .fetch_add(ops, std::sync::atomic::Ordering::Relaxed);
                    }
                    Err(e) => counters.error(e),
                }
            }
            // Request id 0: a push (none subscribed here) or a connection-level error, after
            // which the node closes the connection and the read above sees the end.
            conn.rbuf.advance(len);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use distro::model::{ServiceName, ServiceSnapshot};
    use distro::wire::{ErrorCode, HelloOk, encode_frame_into};
    use futures_util::StreamExt;
    use tokio_util::codec::FramedRead;

    fn snapshot(n: usize) -> ServiceSnapshot {
        let name = ServiceName::new("public", "DEFAULT_GROUP", "svc");
        let instances = (0..n)
            .map(|i| {
                let inst = crate::dataset::bench_instance(i as u64, std::slice::from_ref(&name));
                distro::model::InstanceView {
                    cluster: inst.key.cluster,
                    ip: inst.key.ip,
                    port: inst.key.port,
                    weight: 1.0,
                    healthy: true,
                    enabled: true,
                    metadata: Vec::new(),
                }
            })
            .collect();
        ServiceSnapshot {
            name,
            revision: 42,
            instances,
        }
    }

    fn body_of(msg: &Message) -> BytesMut {
        let mut b = BytesMut::new();
        msg.encode_body(&mut b);
        b
    }

    #[test]
    fn answer_fields_are_read_from_the_encoded_bodies() {
        for n in [0, 1, 10] {
            let body = body_of(&Message::QueryResult(snapshot(n)));
            assert_eq!(snapshot_instance_count(&body), Some(n as u32));
        }
        assert_eq!(snapshot_instance_count(&[0, 5, b'a']), None);
        assert_eq!(
            ack_count(Opcode::Ack as u8, &body_of(&Message::Ack(7))),
            Some(7)
        );
        assert_eq!(
            ack_count(Opcode::Pong as u8, &body_of(&Message::Pong(7))),
            None
        );
        let acks = body_of(&Message::BeatAck(vec![3, 9]));
        assert_eq!(beat_ack_unknown(Opcode::BeatAck as u8, &acks), Some(2));
        assert_eq!(beat_ack_unknown(Opcode::BeatAck as u8, &acks[..3]), None);
        assert_eq!(beat_ack_unknown(Opcode::Ack as u8, &acks), None);
    }

    #[test]
    fn put_frame_patches_the_request_id_only() {
        let msg = Message::Ack(5);
        let template = encode_frame(0, 0, &msg);
        let mut out = BytesMut::from(&b"xy"[..]);
        put_frame(&mut out, &template, 0xDEAD_BEEF);
        let mut rest = out.split_off(2);
        let frame = FrameCodec::default().decode(&mut rest).unwrap().unwrap();
        assert_eq!(frame.request_id, 0xDEAD_BEEF);
        assert_eq!(frame.message().unwrap(), msg);
        assert_eq!(&out[..], b"xy");
    }

    /// Sends Ack(1) for every request, but an Error for every 7th it receives; answers in
    /// reverse order within each read, as a node answering out of order would.
    async fn acking_node(listener: tokio::net::TcpListener) {
        let (stream, _) = listener.accept().await.unwrap();
        let (rd, mut wr) = stream.into_split();
        let mut frames = FramedRead::new(rd, FrameCodec::default());
        let hello = frames.next().await.unwrap().unwrap();
        let ok = Message::HelloOk(HelloOk {
            version: PROTOCOL_VERSION,
            node_id: 1,
            ready: true,
            frame_len_max: FRAME_LEN_MAX as u32,
            batch_instances_max: 1,
            lease_floor_ms: 0,
        });
        wr.write_all(&encode_frame(hello.request_id, 0, &ok))
            .await
            .unwrap();
        let mut received = 0;
        while let Some(Ok(first)) = frames.next().await {
            let mut ids = vec![first.request_id];
            while let Some(Some(Ok(f))) = futures_util::FutureExt::now_or_never(frames.next()) {
                ids.push(f.request_id);
            }
            let mut out = BytesMut::new();
            for id in ids.into_iter().rev() {
                received += 1;
                let answer = if received % 7 == 0 {
                    Message::Error(ErrorBody::new(ErrorCode::Overloaded, "busy"))
                } else {
                    Message::Ack(1)
                };
                encode_frame_into(&mut out, id, 0, &answer);
            }
            wr.write_all(&out).await.unwrap();
        }
    }

    /// Sends `left` more requests, each answered with Ack(1) by [`acking_node`].
    struct Pings {
        left: u64,
    }

    impl Workload for Pings {
        fn request(&mut self, out: &mut BytesMut, _slot: usize, request_id: u32) -> bool {
            if self.left == 0 {
                return false;
            }
            self.left -= 1;
            encode_frame_into(out, request_id, 0, &Message::Ping(0));
            true
        }

        fn answer(&mut self, _slot: usize, opcode: u8, body: &[u8]) -> Result<u64, String> {
            ack_count(opcode, body)
                .map(u64::from)
                .ok_or_else(|| unexpected(opcode, body))
        }
    }

    #[tokio::test]
    async fn pipelined_loop_counts_every_answer_once_by_its_id() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        tokio::spawn(acking_node(listener));
        let conn = RawConn::open(&addr, "test").await.unwrap();
        let counters = Counters::default();
        let total = 1000;
        let hist = run_pipelined(conn, 16, None, &mut Pings { left: total }, &counters).await;
        // 142 of 1000 answered with an Error.
        assert_eq!(counters.errors(), 142);
        assert_eq!(counters.ops(), total - 142);
        assert_eq!(hist.len(), total - 142);
        let first = counters.first_error.lock().unwrap().clone().unwrap();
        assert!(first.contains("busy"), "{first}");
    }
}
