//! The record nodes exchange ([`SyncRecord`]): the whole state of an instance at one version,
//! or its tombstone; carried by sync batches, pull answers, snapshots and handoffs.

use bytes::{BufMut, BytesMut};

use super::buf::{Reader, must};
use super::data::{check_key_parts, decode_metadata, decode_weight, encode_metadata};
use super::*;
use crate::model::{InstanceKey, Lease, Metadata, ServiceName, Version, key};

pub const RECORD_ALIVE: u8 = 0x01;
pub const RECORD_HEALTHY: u8 = 0x02;
pub const RECORD_ENABLED: u8 = 0x04;
pub const RECORD_LAPSED: u8 = 0x08;

/// One record as nodes exchange it (sync, pull answers, snapshots, handoff): the whole state of
/// an instance at one version, or its tombstone (`alive == false`: weight and metadata are sent
/// empty, and `lapsed` tells an expiry (set) from a deregistration (clear)).
#[derive(Debug, Clone, PartialEq)]
pub struct SyncRecord {
    pub key: InstanceKey,
    pub version: Version,
    pub alive: bool,
    /// As the client declared it.
    pub healthy: bool,
    pub enabled: bool,
    /// The lease or the client's session lapsed: the instance is reported unhealthy.
    pub lapsed: bool,
    pub weight: f64,
    pub lease: Lease,
    /// Non-zero for a session-bound instance: `node_id << 48 | session number` of the
    /// connection that registered it.
    pub session: u64,
    pub metadata: Metadata,
}

impl SyncRecord {
    pub const MIN_LEN: usize = InstanceKey::MIN_LEN + 10 + 1 + 8 + 12 + 8 + 2;

    /// # Panics
    /// If a field breaks a limit of the decoder (see [`SyncRecord::try_encode`]).
    pub fn encode(&self, out: &mut BytesMut) {
        must(self.try_encode(out), "a sync record");
    }

    /// Appends the record, or fails if a field breaks a limit of the decoder (`out` may then
    /// hold part of it: frame encoders cut it off).
    pub fn try_encode(&self, out: &mut BytesMut) -> Result<(), WireError> {
        self.key.try_encode(out)?;
        try_encode_record_tail(
            out,
            self.version,
            self.status_bits(),
            self.weight,
            self.lease,
            self.session,
            &self.metadata,
        )
    }

    pub fn status_bits(&self) -> u8 {
        record_status_bits(self.alive, self.healthy, self.enabled, self.lapsed)
    }

    pub fn decode(r: &mut Reader) -> Result<SyncRecord, WireError> {
        let key = InstanceKey::decode(r)?;
        let version = Version {
            hlc: r.u64("version hlc")?,
            origin: r.u16("version origin")?,
        };
        let bits = r.u8("record status")?;
        if bits & !(RECORD_ALIVE | RECORD_HEALTHY | RECORD_ENABLED | RECORD_LAPSED) != 0 {
            return Err(WireError::InvalidValue {
                what: "record status",
                reason: "reserved bits set",
            });
        }
        let weight = decode_weight(r)?;
        let lease = Lease {
            beat_ms: r.u32("beat_ms")?,
            unhealthy_ms: r.u32("unhealthy_ms")?,
            expire_ms: r.u32("expire_ms")?,
        };
        let session = r.u64("session")?;
        let metadata = decode_metadata(r)?;
        Ok(SyncRecord {
            key,
            version,
            alive: bits & RECORD_ALIVE != 0,
            healthy: bits & RECORD_HEALTHY != 0,
            enabled: bits & RECORD_ENABLED != 0,
            lapsed: bits & RECORD_LAPSED != 0,
            weight,
            lease,
            session,
            metadata,
        })
    }
}

pub fn record_status_bits(alive: bool, healthy: bool, enabled: bool, lapsed: bool) -> u8 {
    let mut bits = 0;
    if alive {
        bits |= RECORD_ALIVE;
    }
    if healthy {
        bits |= RECORD_HEALTHY;
    }
    if enabled {
        bits |= RECORD_ENABLED;
    }
    if lapsed {
        bits |= RECORD_LAPSED;
    }
    bits
}

/// Everything of a SyncRecord after its key, so that the store can encode from its own types.
///
/// # Panics
/// If the metadata breaks a limit of the decoder (the store holds only validated instances).
pub fn encode_record_tail<K: AsRef<str>, V: AsRef<str>>(
    out: &mut BytesMut,
    version: Version,
    status_bits: u8,
    weight: f64,
    lease: Lease,
    session: u64,
    metadata: &[(K, V)],
) {
    must(
        try_encode_record_tail(out, version, status_bits, weight, lease, session, metadata),
        "a sync record",
    );
}

fn try_encode_record_tail<K: AsRef<str>, V: AsRef<str>>(
    out: &mut BytesMut,
    version: Version,
    status_bits: u8,
    weight: f64,
    lease: Lease,
    session: u64,
    metadata: &[(K, V)],
) -> Result<(), WireError> {
    out.put_u64(version.hlc);
    out.put_u16(version.origin);
    out.put_u8(status_bits);
    out.put_f64(weight);
    out.put_u32(lease.beat_ms);
    out.put_u32(lease.unhealthy_ms);
    out.put_u32(lease.expire_ms);
    out.put_u64(session);
    encode_metadata(out, metadata)
}

/// Appends an InstanceKey from its parts (the store keeps them apart).
///
/// # Panics
/// If a part breaks a limit of the decoder (the store holds only validated keys).
pub fn encode_key_parts(
    out: &mut BytesMut,
    name: &ServiceName,
    cluster: &str,
    ip: &str,
    port: u16,
) {
    must(check_key_parts(name, cluster, ip), "an instance key");
    key::put_key(out, name, cluster, ip, port);
}
