//! The sync outbox: every record this node writes is encoded once into the open batch; the
//! flusher sends each batch to every live peer as one SyncBatch frame (the same bytes to all)
//! after the batching window, or at once when a batch is full.
//!
//! Both a batch and the outbox are capped. A batch is sealed once it holds [`SYNC_BATCH_BYTES`],
//! so no SyncBatch frame is larger than that plus one record, far below the frame limit. Sealed
//! batches wait for the flusher, at most [`SYNC_OUTBOX_BATCHES_MAX`] of them. When the flusher
//! falls that far behind (starved of CPU, or a view change re-stamping many records at once),
//! further records are **left to anti-entropy** instead of queued: the write itself has happened
//! in the store, the digest of the next verify round shows the peers the difference, and they
//! pull it. Making the writer wait is not an option: records are added with the store's shard
//! lock held, from synchronous code, and a store write must never wait on the network. Dropped
//! records are counted (`sync_records_dropped`).

use std::collections::VecDeque;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::{BufMut, Bytes, BytesMut};
use tokio::sync::Notify;

use crate::model::ServiceName;
use crate::store::{InstanceIdRef, Record, RecordBatch};
use crate::wire::{
    FRAME_LEN_MAX, HEADER_LEN, LEN_PREFIX, Opcode, RECORDS_PER_FRAME_MAX, SYNC_RECORD_LEN_MAX,
    SyncRecord, encode_raw_frame_into,
};

/// A batch is sealed (and flushed at once) when its records take this many bytes. Keeps frames
/// far below the frame limit and bounds the memory of one batch.
pub const SYNC_BATCH_BYTES: usize = 512 << 10;
/// Sealed batches waiting for the flusher. The flusher normally runs within the batching window
/// of the first record, so this binds only when it is far behind; 64 batches (32 MiB) is also
/// far more than a peer link queues, so holding more would only move the loss to the links.
pub const SYNC_OUTBOX_BATCHES_MAX: usize = 64;

// A sealed batch is under its byte cap plus one record; as a frame it fits the frame limit, and
// its record count the limit of the decoder.
const _: () = assert!(HEADER_LEN + 4 + SYNC_BATCH_BYTES + SYNC_RECORD_LEN_MAX <= FRAME_LEN_MAX);
const _: () = assert!(
    (SYNC_BATCH_BYTES + SYNC_RECORD_LEN_MAX) / SyncRecord::MIN_LEN <= RECORDS_PER_FRAME_MAX
);

pub struct SyncOutbox {
    state: Mutex<State>,
    /// Woken when the outbox goes from empty to non-empty (start the window) or a batch is
    /// sealed (flush now).
    pub notify: Notify,
    /// Records left to anti-entropy since the flusher last looked.
    dropped: AtomicU64,
    batch_bytes: usize,
    batches_max: usize,
}

#[derive(Default)]
struct State {
    open: RecordBatch,
    sealed: VecDeque<RecordBatch>,
}

impl Default for SyncOutbox {
    fn default() -> SyncOutbox {
        SyncOutbox::with_caps(SYNC_BATCH_BYTES, SYNC_OUTBOX_BATCHES_MAX)
    }
}

impl SyncOutbox {
    /// An outbox with other caps than the defaults (tests use small ones).
    pub fn with_caps(batch_bytes: usize, batches_max: usize) -> SyncOutbox {
        assert!(batch_bytes <= SYNC_BATCH_BYTES, "a batch must fit a frame");
        SyncOutbox {
            state: Mutex::default(),
            notify: Notify::new(),
            dropped: AtomicU64::new(0),
            batch_bytes,
            batches_max,
        }
    }

    /// Adds a record to the open batch (called with the store's shard lock held: quick), or, when
    /// the outbox is full, counts it as left to anti-entropy.
    pub fn push(&self, name: &ServiceName, id: InstanceIdRef, rec: &Record) {
        let mut st = self.state.lock().unwrap();
        let was_empty = st.open.is_empty() && st.sealed.is_empty();
        if st.open.bytes.len() >= self.batch_bytes && !self.seal(&mut st) {
            drop(st);
            self.dropped.fetch_add(1, Ordering::Relaxed);
            return;
        }
        st.open.push(name, id, rec);
        let sealed = st.open.bytes.len() >= self.batch_bytes && self.seal(&mut st);
        drop(st);
        if was_empty || sealed {
            self.notify.notify_one();
        }
    }

    /// Moves the open batch to the sealed ones, if there is room.
    fn seal(&self, st: &mut State) -> bool {
        if st.sealed.len() >= self.batches_max {
            return false;
        }
        let full = std::mem::take(&mut st.open);
        st.sealed.push_back(full);
        true
    }

    /// True when a batch waits to be sent at once (sealed, or full and unsealed).
    pub fn is_full(&self) -> bool {
        let st = self.state.lock().unwrap();
        !st.sealed.is_empty() || st.open.bytes.len() >= self.batch_bytes
    }

    /// Takes the oldest batch (the open one when none is sealed) as one SyncBatch frame (request
    /// id 0), with its record count.
    pub fn take_frame(&self) -> Option<(u32, Bytes)> {
        let batch = {
            let mut st = self.state.lock().unwrap();
            match st.sealed.pop_front() {
                Some(b) => b,
                None => std::mem::take(&mut st.open),
            }
        };
        if batch.is_empty() {
            return None;
        }
        Some((
            batch.count,
            records_frame(Opcode::SyncBatch, 0, 0, batch.count, &batch.bytes),
        ))
    }

    /// Records left to anti-entropy since the last call.
    pub fn take_dropped(&self) -> u64 {
        self.dropped.swap(0, Ordering::Relaxed)
    }
}

/// A frame carrying `count` encoded records (SyncBatch or Records body layout).
///
/// # Panics
/// If `count` is over [`RECORDS_PER_FRAME_MAX`] or the frame over the frame limit: the callers
/// cut their batches far below both, and a peer would refuse such a frame and close the link.
pub fn records_frame(
    opcode: Opcode,
    request_id: u32,
    flags: u16,
    count: u32,
    records: &[u8],
) -> Bytes {
    records_frame_mut(opcode, request_id, flags, count, records).freeze()
}

/// [`records_frame`], still mutable (a streamed answer sets its flags later).
pub fn records_frame_mut(
    opcode: Opcode,
    request_id: u32,
    flags: u16,
    count: u32,
    records: &[u8],
) -> BytesMut {
    assert!(
        count as usize <= RECORDS_PER_FRAME_MAX,
        "refusing to send {count} records in one frame (the limit is {RECORDS_PER_FRAME_MAX})"
    );
    let mut out = BytesMut::with_capacity(LEN_PREFIX + HEADER_LEN + 4 + records.len());
    encode_raw_frame_into(&mut out, opcode as u8, request_id, flags, |b| {
        b.put_u32(count);
        b.extend_from_slice(records);
    });
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::Clock;
    use crate::model::{Instance, InstanceKey, Text};
    use crate::store::{Store, StoreObserver};
    use crate::wire::{Frame, FrameCodec, Message};
    use std::sync::Arc;
    use tokio_util::codec::Decoder;

    struct ToOutbox(Arc<SyncOutbox>);

    impl StoreObserver for ToOutbox {
        fn service_changed(&self, _: &ServiceName) {}
        fn local_write(&self, name: &ServiceName, id: InstanceIdRef, rec: &Record) {
            self.0.push(name, id, rec);
        }
    }

    fn store_with(outbox: &Arc<SyncOutbox>) -> Store {
        Store::new(
            1,
            Clock::starting_at(1_000_000),
            Arc::new(ToOutbox(outbox.clone())),
        )
    }

    fn write(store: &Store, i: usize) {
        let key = InstanceKey {
            service: ServiceName::new("public", "DEFAULT_GROUP", "orders"),
            cluster: Text::from_static("DEFAULT"),
            ip: Text::from(format!("10.0.{}.{}", i >> 8, i & 255)),
            port: 8080,
        };
        store.register(&Instance::new(key), 0);
    }

    fn decode(frame: &Bytes) -> (Frame, usize) {
        let f = FrameCodec::default()
            .decode(&mut BytesMut::from(&frame[..]))
            .unwrap()
            .unwrap();
        let n = match f.message().unwrap() {
            Message::SyncBatch(r) => r.len(),
            other => panic!("{other:?}"),
        };
        (f, n)
    }

    #[test]
    fn a_full_batch_is_sealed_and_every_frame_stays_under_the_cap() {
        let outbox = Arc::new(SyncOutbox::with_caps(1000, 100));
        let store = store_with(&outbox);
        for i in 0..100 {
            write(&store, i);
        }
        assert!(outbox.is_full());
        let mut total = 0;
        while let Some((count, frame)) = outbox.take_frame() {
            let (_, n) = decode(&frame);
            assert_eq!(n, count as usize);
            // A batch is sealed once it reaches the cap: at most the cap plus one record.
            assert!(frame.len() < LEN_PREFIX + HEADER_LEN + 4 + 1000 + 200);
            total += n;
        }
        assert_eq!(total, 100, "every record goes out, oldest batches first");
        assert_eq!(outbox.take_dropped(), 0);
    }

    #[test]
    fn at_the_cap_records_are_left_to_anti_entropy_and_counted() {
        let outbox = Arc::new(SyncOutbox::with_caps(1000, 2));
        let store = store_with(&outbox);
        for i in 0..200 {
            write(&store, i);
        }
        let dropped = outbox.take_dropped();
        let mut sent = 0;
        let mut frames = 0;
        while let Some((count, _)) = outbox.take_frame() {
            sent += count as u64;
            frames += 1;
        }
        // Two sealed batches and a full open one; the rest was dropped, not queued.
        assert_eq!(frames, 3);
        assert!(dropped > 0);
        assert_eq!(sent + dropped, 200);
        assert_eq!(outbox.take_dropped(), 0, "the count is taken once");
        // Once the flusher caught up, records are batched again.
        write(&store, 500);
        assert_eq!(outbox.take_frame().map(|(n, _)| n), Some(1));
    }

    #[test]
    fn the_default_caps_keep_a_sync_frame_within_the_decoder_limits() {
        let outbox = Arc::new(SyncOutbox::default());
        let store = store_with(&outbox);
        for i in 0..20_000 {
            write(&store, i);
        }
        while let Some((_, frame)) = outbox.take_frame() {
            let (f, n) = decode(&frame);
            assert!(f.body.len() <= 4 + SYNC_BATCH_BYTES + SYNC_RECORD_LEN_MAX);
            assert!(n <= RECORDS_PER_FRAME_MAX);
        }
    }
}
