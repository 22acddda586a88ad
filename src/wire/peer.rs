//! Bodies of the cluster messages (opcodes 0x40–0x7F, peer port only) and of the two client
//! messages that ask a node about the cluster (ClusterStatus, Owner).

use bytes::{BufMut, BytesMut};

use super::buf::{Reader, put_count_u16, put_count_u32, put_text};
use super::record::SyncRecord;
use super::*;
use crate::model::{
    BATCH_INSTANCES_MAX, ClusterStatus, DIGEST_BUCKETS, IP_LEN_MAX, Instance, InstanceKey,
    MEMBERS_MAX, META_ENTRIES_MAX, META_KEY_LEN_MAX, META_VALUE_LEN_MAX, MemberStatus,
    NAME_LEN_MAX,
};

/// Bytes of a handshake nonce.
pub const NONCE_LEN: usize = 16;
/// Bytes of a handshake MAC (HMAC-SHA256).
pub const MAC_LEN: usize = 32;
/// Records in one record-carrying frame (SyncBatch, Records); frames are also cut by size.
pub const RECORDS_PER_FRAME_MAX: usize = 65_536;
/// The largest SyncRecord within the model's limits (every string and metadata entry at its
/// longest): about 272 KiB, so a frame cut at some size holds at most this much beyond it.
pub const SYNC_RECORD_LEN_MAX: usize = SyncRecord::MIN_LEN
    + 4 * NAME_LEN_MAX
    + IP_LEN_MAX
    + META_ENTRIES_MAX * (4 + META_KEY_LEN_MAX + META_VALUE_LEN_MAX);

/// First frame on a peer connection, from the dialing node.
#[derive(Debug, Clone, PartialEq)]
pub struct PeerHello {
    pub node_id: u16,
    pub max_version: u8,
    /// xxh3-64 of the sorted member address list: nodes configured for different clusters
    /// refuse each other.
    pub cluster_hash: u64,
    pub nonce: [u8; NONCE_LEN],
}

/// The accepting node's answer: its id, its nonce, and its proof that it knows the token.
#[derive(Debug, Clone, PartialEq)]
pub struct PeerChallenge {
    pub node_id: u16,
    pub nonce: [u8; NONCE_LEN],
    pub mac: [u8; MAC_LEN],
}

/// Per owner, the digest of the live records it owns, as the sender sees them.
#[derive(Debug, Clone, PartialEq)]
pub struct DigestMsg {
    /// The node whose records these are (the sender: a node sends its own).
    pub owner: u16,
    /// Hash of the sender's live member set; digests are compared only between equal views.
    pub view_hash: u64,
    /// (count, sum) per bucket, bucket 0 first.
    pub buckets: Vec<(u32, u64)>,
}

/// Asks the owner for all its records (tombstones included) in the listed buckets.
#[derive(Debug, Clone, PartialEq)]
pub struct PullMsg {
    pub owner: u16,
    pub buckets: Vec<u16>,
}

pub(crate) fn fixed<const N: usize>(
    r: &mut Reader,
    what: &'static str,
) -> Result<[u8; N], WireError> {
    let b = r.bytes(N, what)?;
    let mut out = [0u8; N];
    out.copy_from_slice(&b);
    Ok(out)
}

pub(crate) fn encode_records(out: &mut BytesMut, records: &[SyncRecord]) -> Result<(), WireError> {
    put_count_u32(out, records.len(), "records", RECORDS_PER_FRAME_MAX)?;
    for r in records {
        r.try_encode(out)?;
    }
    Ok(())
}

pub(crate) fn decode_records(r: &mut Reader) -> Result<Vec<SyncRecord>, WireError> {
    let n = r.u32("record count")? as usize;
    let n = r.count(n, "records", RECORDS_PER_FRAME_MAX, SyncRecord::MIN_LEN)?;
    let mut v = Vec::with_capacity(n);
    for _ in 0..n {
        v.push(SyncRecord::decode(r)?);
    }
    Ok(v)
}

pub(crate) fn encode_instances(
    out: &mut BytesMut,
    instances: &[Instance],
) -> Result<(), WireError> {
    put_count_u16(out, instances.len(), "instances", BATCH_INSTANCES_MAX)?;
    for i in instances {
        i.try_encode(out)?;
    }
    Ok(())
}

pub(crate) fn decode_instances(r: &mut Reader) -> Result<Vec<Instance>, WireError> {
    let n = r.u16("instance count")? as usize;
    let n = r.count(n, "instances", BATCH_INSTANCES_MAX, Instance::MIN_LEN)?;
    let mut v = Vec::with_capacity(n);
    for _ in 0..n {
        v.push(Instance::decode(r)?);
    }
    Ok(v)
}

/// Appends a key list of at most `max` keys (the limit of the message that carries it).
pub(crate) fn encode_keys(
    out: &mut BytesMut,
    keys: &[InstanceKey],
    max: usize,
) -> Result<(), WireError> {
    put_count_u16(out, keys.len(), "instance keys", max)?;
    for k in keys {
        k.try_encode(out)?;
    }
    Ok(())
}

pub(crate) fn decode_keys(r: &mut Reader, max: usize) -> Result<Vec<InstanceKey>, WireError> {
    let n = r.u16("key count")? as usize;
    let n = r.count(n, "instance keys", max, InstanceKey::MIN_LEN)?;
    let mut keys = Vec::with_capacity(n);
    for _ in 0..n {
        keys.push(InstanceKey::decode(r)?);
    }
    Ok(keys)
}

impl DigestMsg {
    pub(crate) fn try_encode(&self, out: &mut BytesMut) -> Result<(), WireError> {
        out.put_u16(self.owner);
        out.put_u64(self.view_hash);
        put_count_u16(out, self.buckets.len(), "digest buckets", DIGEST_BUCKETS)?;
        for (c, s) in &self.buckets {
            out.put_u32(*c);
            out.put_u64(*s);
        }
        Ok(())
    }

    pub(crate) fn decode(r: &mut Reader) -> Result<DigestMsg, WireError> {
        let owner = r.u16("owner")?;
        let view_hash = r.u64("view hash")?;
        let n = r.u16("bucket count")? as usize;
        let n = r.count(n, "digest buckets", DIGEST_BUCKETS, 12)?;
        let mut buckets = Vec::with_capacity(n);
        for _ in 0..n {
            buckets.push((r.u32("bucket count")?, r.u64("bucket sum")?));
        }
        Ok(DigestMsg {
            owner,
            view_hash,
            buckets,
        })
    }
}

/// A member's state byte in ClusterStatusResult: down (not answering, or never reached).
pub const MEMBER_DOWN: u8 = 0;
/// Answering pings: part of the live view.
pub const MEMBER_UP: u8 = 1;
/// Said it was leaving (Leave) and has not come back with a new handshake since.
pub const MEMBER_LEFT: u8 = 2;

fn member_state_byte(m: &MemberStatus) -> u8 {
    match (m.up, m.left) {
        (true, _) => MEMBER_UP,
        (false, true) => MEMBER_LEFT,
        (false, false) => MEMBER_DOWN,
    }
}

impl ClusterStatus {
    pub(crate) fn try_encode(&self, out: &mut BytesMut) -> Result<(), WireError> {
        out.put_u16(self.node_id);
        out.put_u8(self.ready as u8);
        out.put_u64(self.instances);
        put_count_u16(out, self.members.len(), "members", MEMBERS_MAX)?;
        for m in &self.members {
            out.put_u16(m.id);
            put_text(out, &m.addr, "member address", NAME_LEN_MAX)?;
            out.put_u8(member_state_byte(m));
            out.put_u64(m.owned);
        }
        Ok(())
    }

    pub(crate) fn decode(r: &mut Reader) -> Result<ClusterStatus, WireError> {
        let node_id = r.u16("node id")?;
        let ready = r.bool("ready")?;
        let instances = r.u64("instances")?;
        let n = r.u16("member count")? as usize;
        let n = r.count(n, "members", MEMBERS_MAX, 13)?;
        let mut members = Vec::with_capacity(n);
        for _ in 0..n {
            let id = r.u16("member id")?;
            let addr = r.text("member address", NAME_LEN_MAX)?;
            let (up, left) = match r.u8("member state")? {
                MEMBER_DOWN => (false, false),
                MEMBER_UP => (true, false),
                MEMBER_LEFT => (false, true),
                _ => {
                    return Err(WireError::InvalidValue {
                        what: "member state",
                        reason: "not 0 (down), 1 (up) or 2 (left)",
                    });
                }
            };
            members.push(MemberStatus {
                id,
                addr,
                up,
                left,
                owned: r.u64("owned")?,
            });
        }
        Ok(ClusterStatus {
            node_id,
            ready,
            instances,
            members,
        })
    }
}
