//! Message bodies: one struct per body layout, and [`Message`] tying each to its opcode.
//!
//! `encode` appends the body to a buffer; `decode` reads it from a frame body with every length
//! and count checked against both its limit and the bytes present. Layouts are in `wire-spec.md`.
//! The data model's encodings are in [`super::data`], the peer records in [`super::record`].

use bytes::{BufMut, Bytes, BytesMut};

use super::buf::{Reader, must, put_count_u16, put_text};
use super::peer::{
    decode_instances, decode_keys, decode_records, encode_instances, encode_keys, encode_records,
    fixed,
};
use super::*;
use crate::model::{
    ClusterStatus, Instance, InstanceKey, ServiceDelta, ServiceList, ServiceName, ServiceSnapshot,
    ServiceSummary, Text, limits::*,
};

#[derive(Debug, Clone, PartialEq)]
pub struct Hello {
    /// The highest protocol version the client speaks.
    pub max_version: u8,
    pub client_name: Text,
}

/// A client's token, as an Auth frame carries it. Its `Debug` does not show it, so that a
/// logged message or config never reveals one.
#[derive(Clone, PartialEq, Eq)]
pub struct Token(Text);

impl Token {
    pub fn new(token: impl Into<Text>) -> Token {
        Token(token.into())
    }

    pub fn as_str(&self) -> &str {
        self.0.as_str()
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Token(<{} bytes, not shown>)", self.0.len())
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct HelloOk {
    /// The version both sides will speak.
    pub version: u8,
    pub node_id: u16,
    /// False while the node is still loading the cluster's data.
    pub ready: bool,
    pub frame_len_max: u32,
    pub batch_instances_max: u16,
    pub lease_floor_ms: u32,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Register {
    /// Instances bound to this connection: marked unhealthy as soon as it drops.
    pub session_bound: bool,
    pub instances: Vec<Instance>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Query {
    pub name: ServiceName,
    /// Only instances of this cluster; empty means all clusters.
    pub cluster: Text,
    /// Only instances that are healthy and enabled.
    pub healthy_only: bool,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ListServices {
    pub namespace: Text,
    pub page: u32,
    pub page_size: u16,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ErrorBody {
    /// Raw code; unknown codes are kept so that newer peers can add codes.
    pub code: u16,
    pub message: Text,
}

impl ErrorBody {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> ErrorBody {
        let mut message: String = message.into();
        if message.len() > MESSAGE_LEN_MAX {
            let mut cut = MESSAGE_LEN_MAX;
            while !message.is_char_boundary(cut) {
                cut -= 1;
            }
            message.truncate(cut);
        }
        ErrorBody {
            code: code as u16,
            message: message.into(),
        }
    }

    pub fn kind(&self) -> Option<ErrorCode> {
        ErrorCode::from_u16(self.code)
    }
}

/// Every message, decoded.
#[derive(Debug, Clone, PartialEq)]
pub enum Message {
    Hello(Hello),
    HelloOk(HelloOk),
    Ping(u64),
    Pong(u64),
    /// How many items of the request were applied.
    Ack(u32),
    Error(ErrorBody),
    /// A client presents its token (answered with Ack(1) or an Unauthenticated error).
    Auth(Token),
    Register(Register),
    Deregister(Vec<InstanceKey>),
    Beat(Vec<InstanceKey>),
    /// Indexes (into the Beat's key list) of the keys the node does not know.
    BeatAck(Vec<u16>),
    Query(Query),
    QueryResult(ServiceSnapshot),
    ListServices(ListServices),
    ServiceList(ServiceList),
    Subscribe(ServiceName),
    Unsubscribe(ServiceName),
    Push(ServiceSnapshot),
    /// What changed in a subscribed service since the last push (request id 0).
    PushDelta(ServiceDelta),
    /// Asks a node for its view of the cluster (empty body).
    ClusterStatus,
    ClusterStatusResult(ClusterStatus),
    /// Asks which node is responsible for `ip:port`, as the answering node sees it.
    Owner {
        ip: Text,
        port: u16,
    },
    OwnerResult(u16),
    PeerHello(PeerHello),
    PeerChallenge(PeerChallenge),
    /// The dialing node's proof that it knows the token.
    PeerAuth([u8; MAC_LEN]),
    /// A write forwarded to its owner; `session` is non-zero for session-bound instances.
    FwdRegister {
        session: u64,
        instances: Vec<Instance>,
    },
    FwdDeregister(Vec<InstanceKey>),
    FwdBeat(Vec<InstanceKey>),
    /// The client session `session` dropped: lapse these of its instances.
    FwdLapse {
        session: u64,
        keys: Vec<InstanceKey>,
    },
    /// Records an owner changed, to apply by version (request id 0: no answer).
    SyncBatch(Vec<SyncRecord>),
    Digest(DigestMsg),
    Pull(PullMsg),
    /// Records answering a Pull or a SnapshotRequest; FLAG_MORE on every frame but the last.
    Records(Vec<SyncRecord>),
    SnapshotRequest,
    /// The sending node (this id) is leaving the cluster: take over its keys now, and do not
    /// count it up again until it comes back with a new handshake. Answered with Ack(0).
    Leave(u16),
}

impl Message {
    pub fn opcode(&self) -> Opcode {
        match self {
            Message::Hello(_) => Opcode::Hello,
            Message::HelloOk(_) => Opcode::HelloOk,
            Message::Ping(_) => Opcode::Ping,
            Message::Pong(_) => Opcode::Pong,
            Message::Ack(_) => Opcode::Ack,
            Message::Error(_) => Opcode::Error,
            Message::Auth(_) => Opcode::Auth,
            Message::Register(_) => Opcode::Register,
            Message::Deregister(_) => Opcode::Deregister,
            Message::Beat(_) => Opcode::Beat,
            Message::BeatAck(_) => Opcode::BeatAck,
            Message::Query(_) => Opcode::Query,
            Message::QueryResult(_) => Opcode::QueryResult,
            Message::ListServices(_) => Opcode::ListServices,
            Message::ServiceList(_) => Opcode::ServiceList,
            Message::Subscribe(_) => Opcode::Subscribe,
            Message::Unsubscribe(_) => Opcode::Unsubscribe,
            Message::Push(_) => Opcode::Push,
            Message::PushDelta(_) => Opcode::PushDelta,
            Message::ClusterStatus => Opcode::ClusterStatus,
            Message::ClusterStatusResult(_) => Opcode::ClusterStatusResult,
            Message::Owner { .. } => Opcode::Owner,
            Message::OwnerResult(_) => Opcode::OwnerResult,
            Message::PeerHello(_) => Opcode::PeerHello,
            Message::PeerChallenge(_) => Opcode::PeerChallenge,
            Message::PeerAuth(_) => Opcode::PeerAuth,
            Message::FwdRegister { .. } => Opcode::FwdRegister,
            Message::FwdDeregister(_) => Opcode::FwdDeregister,
            Message::FwdBeat(_) => Opcode::FwdBeat,
            Message::FwdLapse { .. } => Opcode::FwdLapse,
            Message::SyncBatch(_) => Opcode::SyncBatch,
            Message::Digest(_) => Opcode::Digest,
            Message::Pull(_) => Opcode::Pull,
            Message::Records(_) => Opcode::Records,
            Message::SnapshotRequest => Opcode::SnapshotRequest,
            Message::Leave(_) => Opcode::Leave,
        }
    }

    /// Appends the body (not the header) to `out`.
    ///
    /// # Panics
    /// If the message breaks a limit the decoder enforces (see [`Message::try_encode_body`]).
    pub fn encode_body(&self, out: &mut BytesMut) {
        must(self.try_encode_body(out), "a message body");
    }

    /// Appends the body (not the header) to `out`, or fails if the message breaks a limit the
    /// decoder enforces on a string or a list (`out` may then hold part of it: frame encoders
    /// cut it off). The frame length is the frame encoder's to check.
    pub fn try_encode_body(&self, out: &mut BytesMut) -> Result<(), WireError> {
        match self {
            Message::Hello(h) => {
                out.put_u8(h.max_version);
                put_text(out, &h.client_name, "client name", MESSAGE_LEN_MAX)?;
            }
            Message::HelloOk(h) => {
                out.put_u8(h.version);
                out.put_u16(h.node_id);
                out.put_u8(h.ready as u8);
                out.put_u32(h.frame_len_max);
                out.put_u16(h.batch_instances_max);
                out.put_u32(h.lease_floor_ms);
            }
            Message::Ping(n) | Message::Pong(n) => out.put_u64(*n),
            Message::Ack(n) => out.put_u32(*n),
            Message::Error(e) => {
                out.put_u16(e.code);
                put_text(out, &e.message, "error message", MESSAGE_LEN_MAX)?;
            }
            Message::Auth(t) => put_text(out, &t.0, "token", TOKEN_LEN_MAX)?,
            Message::Register(reg) => {
                out.put_u8(reg.session_bound as u8);
                encode_instances(out, &reg.instances)?;
            }
            Message::Deregister(keys) => encode_keys(out, keys, BATCH_INSTANCES_MAX)?,
            Message::Beat(keys) => encode_keys(out, keys, BEAT_KEYS_MAX)?,
            Message::BeatAck(idx) => {
                put_count_u16(out, idx.len(), "unknown key indexes", BEAT_KEYS_MAX)?;
                for i in idx {
                    out.put_u16(*i);
                }
            }
            Message::Query(q) => {
                q.name.try_encode(out)?;
                put_text(out, &q.cluster, "cluster", NAME_LEN_MAX)?;
                out.put_u8(q.healthy_only as u8);
            }
            Message::QueryResult(s) | Message::Push(s) => s.try_encode(out)?,
            Message::PushDelta(d) => d.try_encode(out)?,
            Message::ListServices(l) => {
                put_text(out, &l.namespace, "namespace", NAME_LEN_MAX)?;
                out.put_u32(l.page);
                out.put_u16(l.page_size);
            }
            Message::ServiceList(l) => {
                out.put_u32(l.total);
                put_count_u16(out, l.services.len(), "services", PAGE_SIZE_MAX)?;
                for s in &l.services {
                    put_text(out, &s.group, "group", NAME_LEN_MAX)?;
                    put_text(out, &s.service, "service", NAME_LEN_MAX)?;
                    out.put_u32(s.instances);
                    out.put_u32(s.healthy);
                }
            }
            Message::Subscribe(n) | Message::Unsubscribe(n) => n.try_encode(out)?,
            Message::ClusterStatus | Message::SnapshotRequest => {}
            Message::ClusterStatusResult(s) => s.try_encode(out)?,
            Message::Owner { ip, port } => {
                put_text(out, ip, "ip", IP_LEN_MAX)?;
                out.put_u16(*port);
            }
            Message::OwnerResult(id) | Message::Leave(id) => out.put_u16(*id),
            Message::PeerHello(h) => {
                out.put_u16(h.node_id);
                out.put_u8(h.max_version);
                out.put_u64(h.cluster_hash);
                out.put_slice(&h.nonce);
            }
            Message::PeerChallenge(c) => {
                out.put_u16(c.node_id);
                out.put_slice(&c.nonce);
                out.put_slice(&c.mac);
            }
            Message::PeerAuth(mac) => out.put_slice(mac),
            Message::FwdRegister { session, instances } => {
                out.put_u64(*session);
                encode_instances(out, instances)?;
            }
            Message::FwdDeregister(keys) => encode_keys(out, keys, BATCH_INSTANCES_MAX)?,
            Message::FwdBeat(keys) => encode_keys(out, keys, BEAT_KEYS_MAX)?,
            Message::FwdLapse { session, keys } => {
                out.put_u64(*session);
                encode_keys(out, keys, BATCH_INSTANCES_MAX)?;
            }
            Message::SyncBatch(recs) | Message::Records(recs) => encode_records(out, recs)?,
            Message::Digest(d) => d.try_encode(out)?,
            Message::Pull(p) => {
                out.put_u16(p.owner);
                put_count_u16(out, p.buckets.len(), "buckets", DIGEST_BUCKETS)?;
                for b in &p.buckets {
                    out.put_u16(*b);
                }
            }
        }
        Ok(())
    }

    /// Decodes the body of a frame with the given opcode. The whole body must be consumed.
    pub fn decode(opcode: Opcode, body: Bytes) -> Result<Message, WireError> {
        let mut r = Reader::new(body);
        let msg = match opcode {
            Opcode::Hello => Message::Hello(Hello {
                max_version: r.u8("max_version")?,
                client_name: r.text("client name", MESSAGE_LEN_MAX)?,
            }),
            Opcode::HelloOk => Message::HelloOk(HelloOk {
                version: r.u8("version")?,
                node_id: r.u16("node id")?,
                ready: r.bool("ready")?,
                frame_len_max: r.u32("frame_len_max")?,
                batch_instances_max: r.u16("batch_instances_max")?,
                lease_floor_ms: r.u32("lease_floor_ms")?,
            }),
            Opcode::Ping => Message::Ping(r.u64("ping nonce")?),
            Opcode::Pong => Message::Pong(r.u64("pong nonce")?),
            Opcode::Ack => Message::Ack(r.u32("ack count")?),
            Opcode::Error => Message::Error(ErrorBody {
                code: r.u16("error code")?,
                message: r.text("error message", MESSAGE_LEN_MAX)?,
            }),
            Opcode::Auth => Message::Auth(Token(r.text("token", TOKEN_LEN_MAX)?)),
            Opcode::Register => {
                let session_bound = r.bool("register options")?;
                let n = r.u16("instance count")? as usize;
                let n = r.count(n, "instances", BATCH_INSTANCES_MAX, Instance::MIN_LEN)?;
                let mut instances = Vec::with_capacity(n);
                for _ in 0..n {
                    instances.push(Instance::decode(&mut r)?);
                }
                Message::Register(Register {
                    session_bound,
                    instances,
                })
            }
            Opcode::Deregister => Message::Deregister(decode_keys(&mut r, BATCH_INSTANCES_MAX)?),
            Opcode::Beat => Message::Beat(decode_keys(&mut r, BEAT_KEYS_MAX)?),
            Opcode::BeatAck => {
                let n = r.u16("index count")? as usize;
                let n = r.count(n, "unknown key indexes", BEAT_KEYS_MAX, 2)?;
                let mut idx = Vec::with_capacity(n);
                for _ in 0..n {
                    idx.push(r.u16("key index")?);
                }
                Message::BeatAck(idx)
            }
            Opcode::Query => Message::Query(Query {
                name: ServiceName::decode(&mut r)?,
                cluster: r.text("cluster", NAME_LEN_MAX)?,
                healthy_only: r.bool("query options")?,
            }),
            Opcode::QueryResult => Message::QueryResult(ServiceSnapshot::decode(&mut r)?),
            Opcode::Push => Message::Push(ServiceSnapshot::decode(&mut r)?),
            Opcode::PushDelta => Message::PushDelta(ServiceDelta::decode(&mut r)?),
            Opcode::ListServices => Message::ListServices(ListServices {
                namespace: r.text("namespace", NAME_LEN_MAX)?,
                page: r.u32("page")?,
                page_size: r.u16("page size")?,
            }),
            Opcode::ServiceList => {
                let total = r.u32("total")?;
                let n = r.u16("service count")? as usize;
                let n = r.count(n, "services", PAGE_SIZE_MAX, 12)?;
                let mut services = Vec::with_capacity(n);
                for _ in 0..n {
                    services.push(ServiceSummary {
                        group: r.text("group", NAME_LEN_MAX)?,
                        service: r.text("service", NAME_LEN_MAX)?,
                        instances: r.u32("instances")?,
                        healthy: r.u32("healthy")?,
                    });
                }
                Message::ServiceList(ServiceList { total, services })
            }
            Opcode::Subscribe => Message::Subscribe(ServiceName::decode(&mut r)?),
            Opcode::Unsubscribe => Message::Unsubscribe(ServiceName::decode(&mut r)?),
            Opcode::ClusterStatus => Message::ClusterStatus,
            Opcode::SnapshotRequest => Message::SnapshotRequest,
            Opcode::ClusterStatusResult => {
                Message::ClusterStatusResult(ClusterStatus::decode(&mut r)?)
            }
            Opcode::Owner => Message::Owner {
                ip: r.text("ip", IP_LEN_MAX)?,
                port: r.u16("port")?,
            },
            Opcode::OwnerResult => Message::OwnerResult(r.u16("owner")?),
            Opcode::Leave => Message::Leave(r.u16("node id")?),
            Opcode::PeerHello => Message::PeerHello(PeerHello {
                node_id: r.u16("node id")?,
                max_version: r.u8("max version")?,
                cluster_hash: r.u64("cluster hash")?,
                nonce: fixed(&mut r, "nonce")?,
            }),
            Opcode::PeerChallenge => Message::PeerChallenge(PeerChallenge {
                node_id: r.u16("node id")?,
                nonce: fixed(&mut r, "nonce")?,
                mac: fixed(&mut r, "mac")?,
            }),
            Opcode::PeerAuth => Message::PeerAuth(fixed(&mut r, "mac")?),
            Opcode::FwdRegister => Message::FwdRegister {
                session: r.u64("session")?,
                instances: decode_instances(&mut r)?,
            },
            Opcode::FwdDeregister => {
                Message::FwdDeregister(decode_keys(&mut r, BATCH_INSTANCES_MAX)?)
            }
            Opcode::FwdBeat => Message::FwdBeat(decode_keys(&mut r, BEAT_KEYS_MAX)?),
            Opcode::FwdLapse => Message::FwdLapse {
                session: r.u64("session")?,
                keys: decode_keys(&mut r, BATCH_INSTANCES_MAX)?,
            },
            Opcode::SyncBatch => Message::SyncBatch(decode_records(&mut r)?),
            Opcode::Records => Message::Records(decode_records(&mut r)?),
            Opcode::Digest => Message::Digest(DigestMsg::decode(&mut r)?),
            Opcode::Pull => {
                let owner = r.u16("owner")?;
                let n = r.u16("bucket count")? as usize;
                let n = r.count(n, "buckets", DIGEST_BUCKETS, 2)?;
                let mut buckets = Vec::with_capacity(n);
                for _ in 0..n {
                    buckets.push(r.u16("bucket")?);
                }
                Message::Pull(PullMsg { owner, buckets })
            }
        };
        r.finish()?;
        Ok(msg)
    }
}
