//! The sync outbox: every record this node writes is encoded once into the open batch; the
//! flusher sends the batch to every live peer as one SyncBatch frame (the same bytes to all)
//! after the batching window, or at once when the batch is full.

use std::sync::Mutex;

use bytes::{BufMut, Bytes, BytesMut};
use tokio::sync::Notify;

use crate::model::ServiceName;
use crate::store::{InstanceIdRef, Record, RecordBatch};
use crate::wire::{Opcode, encode_raw_frame_into};

/// A batch is flushed early once its records take this many bytes. Keeps frames far below the
/// frame limit and bounds the memory of the open batch.
pub const SYNC_BATCH_BYTES: usize = 512 << 10;

#[derive(Default)]
pub struct SyncOutbox {
    open: Mutex<RecordBatch>,
    /// Woken when the batch goes from empty to non-empty (start the window) or fills up.
    pub notify: Notify,
}

impl SyncOutbox {
    /// Adds a record to the open batch (called with the store's shard lock held: quick).
    pub fn push(&self, name: &ServiceName, id: InstanceIdRef, rec: &Record) {
        let mut open = self.open.lock().unwrap();
        let was_empty = open.is_empty();
        open.push(name, id, rec);
        let full = open.bytes.len() >= SYNC_BATCH_BYTES;
        drop(open);
        if was_empty || full {
            self.notify.notify_one();
        }
    }

    pub fn is_full(&self) -> bool {
        self.open.lock().unwrap().bytes.len() >= SYNC_BATCH_BYTES
    }

    /// Takes the open batch as one SyncBatch frame (request id 0), with its record count.
    pub fn take_frame(&self) -> Option<(u32, Bytes)> {
        let batch = std::mem::take(&mut *self.open.lock().unwrap());
        if batch.is_empty() {
            return None;
        }
        Some((
            batch.count,
            records_frame(Opcode::SyncBatch, 0, 0, batch.count, &batch.bytes),
        ))
    }
}

/// A frame carrying `count` encoded records (SyncBatch or Records body layout).
pub fn records_frame(
    opcode: Opcode,
    request_id: u32,
    flags: u16,
    count: u32,
    records: &[u8],
) -> Bytes {
    let mut out = BytesMut::with_capacity(16 + records.len());
    encode_raw_frame_into(&mut out, opcode as u8, request_id, flags, |b| {
        b.put_u32(count);
        b.extend_from_slice(records);
    });
    out.freeze()
}
