//! The input of the `store_batches` target: a list of operations on one store, each an op byte
//! (`% 16`) followed by its arguments, read with the generators of [`crate::generate`].
//!
//! The store belongs to node [`SELF`]; the other members a view may hold are 2..=4.

use distro::wire::SyncRecord;

use crate::{Input, generate};

/// The node id of the store under test.
pub const SELF: u16 = 1;
/// Members a view may hold besides [`SELF`] (bits 0..=2 of a view mask).
pub const OTHERS: [u16; 3] = [2, 3, 4];

/// Most records one batch op merges.
pub const BATCH_MAX: usize = 8;

#[derive(Debug, Clone)]
pub enum Op {
    /// A record from a peer (sync, pull answer, snapshot chunk, handoff): merged by version.
    Merge(SyncRecord),
    /// Several records merged in a row, as one SyncBatch or Records frame applies them.
    Batch(Vec<SyncRecord>),
    /// A record batch as raw bytes: decoded as a Records body; merged if it decodes.
    RawRecords(Vec<u8>),
    /// A local register (the instance as generated; the store itself does not validate).
    Register {
        instance: distro::model::Instance,
        session: u64,
    },
    Deregister(distro::model::InstanceKey),
    Beat(distro::model::InstanceKey),
    LapseSession {
        key: distro::model::InstanceKey,
        session: u64,
    },
    /// A new view: [`SELF`] and the members of `OTHERS` whose bit is set.
    SetOwnership(u8),
    /// Moves tokio's (paused) clock on by this many ms.
    Advance(u64),
    LeasePass,
    /// A pull's aftermath: drop the live records of `owner` in the chosen buckets that the
    /// owner did not send. `buckets`: bit 7 set means all buckets, otherwise the buckets of the
    /// stored live records whose position (in a stable order) has its bit (mod 7) set; `sent`
    /// does the same for the key hashes the owner "sent"; `before_ms` back from now bounds
    /// the records old enough to drop.
    DropMissing {
        owner: u16,
        buckets: u8,
        sent: u8,
        before_ms: u64,
    },
    /// Reads through the snapshot cache (which `check_invariants` then checks).
    Query {
        name: distro::model::ServiceName,
        cluster_filter: bool,
        healthy_only: bool,
    },
    RegrantOwned,
    /// Copies the store into a fresh one through its own snapshot encoding (as a joining node
    /// loads) and compares digests and counts; re-merging its own snapshot must change nothing.
    SnapshotCheck,
}

/// Reads the next operation; `now_ms` is the store's clock (for HLC values near it).
pub fn next_op(inp: &mut Input, now_ms: u64) -> Op {
    match inp.u8() % 16 {
        0 | 14 => Op::Merge(generate::sync_record(inp, now_ms)),
        1 => {
            let n = 1 + inp.u8() as usize % BATCH_MAX;
            Op::Batch((0..n).map(|_| generate::sync_record(inp, now_ms)).collect())
        }
        2 => {
            let n = inp.u16() as usize;
            Op::RawRecords(inp.take(n).to_vec())
        }
        3 | 15 => Op::Register {
            instance: generate::instance(inp),
            session: inp.pick(generate::SESSIONS),
        },
        4 => Op::Deregister(generate::key(inp)),
        5 => Op::Beat(generate::key(inp)),
        6 => Op::LapseSession {
            key: generate::key(inp),
            session: inp.pick(generate::SESSIONS),
        },
        7 => Op::SetOwnership(inp.u8()),
        8 => Op::Advance(advance_ms(inp.u8())),
        9 => Op::LeasePass,
        10 => Op::DropMissing {
            owner: 1 + (inp.u8() % 4) as u16,
            buckets: inp.u8(),
            sent: inp.u8(),
            before_ms: inp.u16() as u64,
        },
        11 => Op::Query {
            name: generate::service_name(inp),
            cluster_filter: inp.bool(),
            healthy_only: inp.bool(),
        },
        12 => Op::RegrantOwned,
        _ => Op::SnapshotCheck,
    }
}

/// Clock steps: mostly around the lease settings of the pools (100 ms .. 30 s), sometimes past
/// the tombstone retention (30 s + 60 s).
pub fn advance_ms(b: u8) -> u64 {
    match b % 8 {
        0 => 1,
        1 => 50,
        2 => 150,
        3 => 350,
        4 => 5_000,
        5 => 16_000,
        6 => 31_000,
        _ => 100_000,
    }
}

/// Op bytes, for writing seeds (the arguments follow as the generators read them).
pub mod op {
    pub const MERGE: u8 = 0;
    pub const BATCH: u8 = 1;
    pub const RAW_RECORDS: u8 = 2;
    pub const REGISTER: u8 = 3;
    pub const DEREGISTER: u8 = 4;
    pub const BEAT: u8 = 5;
    pub const LAPSE_SESSION: u8 = 6;
    pub const SET_OWNERSHIP: u8 = 7;
    pub const ADVANCE: u8 = 8;
    pub const LEASE_PASS: u8 = 9;
    pub const DROP_MISSING: u8 = 10;
    pub const QUERY: u8 = 11;
    pub const REGRANT: u8 = 12;
    pub const SNAPSHOT_CHECK: u8 = 13;
}
