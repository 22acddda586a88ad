//! The per-peer counters ([`PeerMetrics`]) and the lock-free table that finds them by node id.

use super::*;

/// The per-peer counters of one member (label `peer`: its node id).
#[derive(Debug)]
pub struct PeerMetrics {
    pub sync_sent_batches: Counter,
    pub sync_sent_records: Counter,
    pub sync_sent_bytes: Counter,
    pub sync_dropped_batches: Counter,
    pub sync_applied_batches: Counter,
    pub sync_applied_bytes: Counter,
    pub sync_received_records: Counter,
    pub sync_applied_records: Counter,
    pub forwards_sent: Counter,
    pub forward_errors: Counter,
    pub forwards_received: Counter,
    pub digests_received: Counter,
    pub digest_mismatched_buckets: Counter,
    pub repaired_records: Counter,
    pub pull_served_bytes: Counter,
    /// From the moment the peer (the owner) wrote a record to the moment this node applied it.
    pub write_applied: LatencyHistogram,
}

impl PeerMetrics {
    /// A sync batch of `count` records, `bytes` long, went out to this peer.
    pub fn sync_sent(&self, count: u32, bytes: usize) {
        self.sync_sent_batches.inc();
        self.sync_sent_records.inc_by(count as u64);
        self.sync_sent_bytes.inc_by(bytes as u64);
    }

    /// A frame of `len` body bytes arrived from this peer (counted before it is handled).
    pub fn frame_received(&self, opcode: u8, len: usize) {
        match Opcode::from_u8(opcode) {
            Ok(Opcode::SyncBatch) => {
                self.sync_applied_bytes.inc_by(len as u64);
            }
            Ok(
                Opcode::FwdRegister | Opcode::FwdDeregister | Opcode::FwdBeat | Opcode::FwdLapse,
            ) => {
                self.forwards_received.inc();
            }
            Ok(Opcode::Digest) => {
                self.digests_received.inc();
            }
            _ => {}
        }
    }

    /// This node applied a sync batch from this peer: `applied` of its records were newer than
    /// what it held; `now_ms` is this node's clock.
    pub fn sync_applied(&self, records: &[SyncRecord], applied: usize, now_ms: u64, from: NodeId) {
        self.sync_applied_batches.inc();
        self.sync_received_records.inc_by(records.len() as u64);
        self.sync_applied_records.inc_by(applied as u64);
        // A version carries its writer's HLC physical milliseconds: the lag from the write to
        // now is the time the record took to get here (plus the clock skew between the two
        // nodes, which NTP keeps to milliseconds). Only the sender's own writes are measured:
        // a handoff carries records written earlier by others.
        for r in records.iter().filter(|r| r.version.origin == from) {
            let written_ms = crate::clock::hlc_physical_ms(r.version.hlc);
            self.write_applied
                .observe_us(now_ms.saturating_sub(written_ms).saturating_mul(1_000));
        }
    }
}

/// Per-peer metrics by node id, created on first use and then found without a lock: a fixed
/// open-addressing table (ids are claimed with a compare-and-swap). Twice the member limit, so
/// probes stay short; ids beyond that share one entry labelled `other`.
pub(super) struct PeerTable {
    pub(super) ids: Box<[AtomicU32]>,
    pub(super) slots: Box<[OnceLock<PeerMetrics>]>,
    pub(super) other: OnceLock<PeerMetrics>,
}

pub(super) const PEER_SLOTS: usize = 2 * MEMBERS_MAX;

impl PeerTable {
    pub(super) fn new() -> PeerTable {
        PeerTable {
            ids: (0..PEER_SLOTS).map(|_| AtomicU32::new(0)).collect(),
            slots: (0..PEER_SLOTS).map(|_| OnceLock::new()).collect(),
            other: OnceLock::new(),
        }
    }

    pub(super) fn get(&self, id: NodeId, make: impl Fn(String) -> PeerMetrics) -> &PeerMetrics {
        // Stored as id + 1, so that 0 marks a free slot and node id 0 (a member not reached
        // yet) still has an entry.
        let key = id as u32 + 1;
        let start = (id as usize).wrapping_mul(0x9E37) % PEER_SLOTS;
        for i in 0..PEER_SLOTS {
            let slot = (start + i) % PEER_SLOTS;
            let cur = self.ids[slot].load(Ordering::Acquire);
            let claimed = cur == key
                || (cur == 0
                    && match self.ids[slot].compare_exchange(
                        0,
                        key,
                        Ordering::AcqRel,
                        Ordering::Acquire,
                    ) {
                        Ok(_) => true,
                        Err(now) => now == key,
                    });
            if claimed {
                return self.slots[slot].get_or_init(|| make(id.to_string()));
            }
        }
        self.other.get_or_init(|| make("other".into()))
    }
}

/// The families the per-peer counters live in.
pub(super) struct PeerFamilies {
    pub(super) sync_sent_batches: Family<Labels, Counter>,
    pub(super) sync_sent_records: Family<Labels, Counter>,
    pub(super) sync_sent_bytes: Family<Labels, Counter>,
    pub(super) sync_dropped_batches: Family<Labels, Counter>,
    pub(super) sync_applied_batches: Family<Labels, Counter>,
    pub(super) sync_applied_bytes: Family<Labels, Counter>,
    pub(super) sync_received_records: Family<Labels, Counter>,
    pub(super) sync_applied_records: Family<Labels, Counter>,
    pub(super) forwards_sent: Family<Labels, Counter>,
    pub(super) forward_errors: Family<Labels, Counter>,
    pub(super) forwards_received: Family<Labels, Counter>,
    pub(super) digests_received: Family<Labels, Counter>,
    pub(super) digest_mismatched_buckets: Family<Labels, Counter>,
    pub(super) repaired_records: Family<Labels, Counter>,
    pub(super) pull_served_bytes: Family<Labels, Counter>,
    pub(super) write_applied: Family<Labels, LatencyHistogram>,
}
