//! The wire protocol: frames, message bodies, the tokio-util codec and its errors.
//!
//! `wire-spec.md` at the repository root is the normative description of every byte here; a
//! test (`tests/wire_spec.rs`) parses the hex examples out of it and checks this code against
//! them, so the two cannot drift apart.
//!
//! - [`buf`]: primitive encodings (integers, strings, maps) and the bounds-checked [`Reader`].
//! - [`data`]: the encodings of the data model's types (keys, instances, snapshots, deltas).
//! - [`msg`]: the message bodies and [`Message`], with `encode`/`decode` per opcode.
//! - [`peer`]: the bodies of the cluster (peer-to-peer) messages.
//! - [`record`]: [`SyncRecord`], an instance's state at one version as nodes exchange it.
//! - [`codec`]: [`FrameCodec`], length-prefixed framing for `tokio_util::codec`.
//! - [`error`]: [`WireError`], one variant per kind of malformed input.
//!
//! The limits a decoder enforces on names, batches and pages are the model's
//! ([`crate::model::limits`]); the frame-level ones are here.

pub mod buf;
pub mod codec;
pub mod data;
pub mod error;
pub mod msg;
pub mod peer;
pub mod record;

pub use buf::Reader;
pub use codec::{
    Frame, FrameCodec, encode_frame, encode_frame_into, encode_raw_frame_into, set_frame_flags,
    try_encode_frame_into, try_encode_raw_frame_into,
};
pub use data::*;
pub use error::WireError;
pub use msg::*;
pub use peer::*;
pub use record::*;

/// The only protocol version this node speaks.
pub const PROTOCOL_VERSION: u8 = 1;
/// Bytes of the fixed header after the length prefix: version, opcode, flags, request id.
pub const HEADER_LEN: usize = 8;
/// Bytes of the length prefix.
pub const LEN_PREFIX: usize = 4;
/// Largest value of the length prefix (header + body). Bounds the memory one frame can make a
/// node buffer; sync batches and snapshot chunks are cut well below it.
pub const FRAME_LEN_MAX: usize = 8 << 20;

/// Bytes of an Error frame's message and of a client name.
pub const MESSAGE_LEN_MAX: usize = 1024;

/// Bytes of a token in an Auth frame: minted tokens are 71; room for tokens made elsewhere,
/// and a bound on what a stranger can make a node hash.
pub const TOKEN_LEN_MAX: usize = 256;

/// Header flag: more frames answering the same request follow (streamed replies).
pub const FLAG_MORE: u16 = 0x0001;

/// The opcode of every message. Client messages use 0x01–0x3F, cluster (peer) messages
/// 0x40–0x7F; 0x80–0xFF are reserved.
#[repr(u8)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Opcode {
    Hello = 0x01,
    HelloOk = 0x02,
    Ping = 0x03,
    Pong = 0x04,
    Ack = 0x05,
    Error = 0x06,
    Auth = 0x07,
    Register = 0x10,
    Deregister = 0x11,
    Beat = 0x12,
    BeatAck = 0x13,
    Query = 0x20,
    QueryResult = 0x21,
    ListServices = 0x22,
    ServiceList = 0x23,
    Subscribe = 0x28,
    Unsubscribe = 0x29,
    Push = 0x2A,
    PushDelta = 0x2B,
    ClusterStatus = 0x30,
    ClusterStatusResult = 0x31,
    Owner = 0x32,
    OwnerResult = 0x33,
    PeerHello = 0x40,
    PeerChallenge = 0x41,
    PeerAuth = 0x42,
    FwdRegister = 0x44,
    FwdDeregister = 0x45,
    FwdBeat = 0x46,
    FwdLapse = 0x47,
    SyncBatch = 0x48,
    Digest = 0x49,
    Pull = 0x4A,
    Records = 0x4B,
    SnapshotRequest = 0x4C,
    Leave = 0x4D,
}

impl Opcode {
    /// Opcodes only peers send (accepted on the peer port only).
    pub fn is_peer(self) -> bool {
        (0x40..0x80).contains(&(self as u8))
    }

    pub fn from_u8(b: u8) -> Result<Opcode, WireError> {
        use Opcode::*;
        Ok(match b {
            0x01 => Hello,
            0x02 => HelloOk,
            0x03 => Ping,
            0x04 => Pong,
            0x05 => Ack,
            0x06 => Error,
            0x07 => Auth,
            0x10 => Register,
            0x11 => Deregister,
            0x12 => Beat,
            0x13 => BeatAck,
            0x20 => Query,
            0x21 => QueryResult,
            0x22 => ListServices,
            0x23 => ServiceList,
            0x28 => Subscribe,
            0x29 => Unsubscribe,
            0x2A => Push,
            0x2B => PushDelta,
            0x30 => ClusterStatus,
            0x31 => ClusterStatusResult,
            0x32 => Owner,
            0x33 => OwnerResult,
            0x40 => PeerHello,
            0x41 => PeerChallenge,
            0x42 => PeerAuth,
            0x44 => FwdRegister,
            0x45 => FwdDeregister,
            0x46 => FwdBeat,
            0x47 => FwdLapse,
            0x48 => SyncBatch,
            0x49 => Digest,
            0x4A => Pull,
            0x4B => Records,
            0x4C => SnapshotRequest,
            0x4D => Leave,
            other => return Err(WireError::UnknownOpcode(other)),
        })
    }
}

/// The code carried by an Error frame.
#[repr(u16)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorCode {
    /// The frame could not be decoded; the connection is closed after this error.
    BadFrame = 1,
    UnsupportedVersion = 2,
    UnknownOpcode = 3,
    /// The frame decoded, but a value is not acceptable (a lease below the floor, a negative
    /// weight, an empty service name). Nothing of the request was applied.
    InvalidArgument = 4,
    /// The node has not finished loading the cluster's data; try another node.
    NotReady = 5,
    TooLarge = 6,
    /// The node has too much work in flight; retry later.
    Overloaded = 7,
    /// The request did not complete within its deadline (e.g. a forward to the owner).
    Timeout = 8,
    /// A peer failed authentication.
    Unauthorized = 9,
    /// The message is valid but not allowed here (a client opcode on the peer port, a reply
    /// sent as a request).
    NotAllowed = 10,
    ShuttingDown = 11,
    Internal = 12,
    /// The node requires a token and none was accepted on this connection (a client port),
    /// or the token presented is not one of the node's.
    Unauthenticated = 13,
    /// The connection's token does not grant this access to this namespace.
    PermissionDenied = 14,
}

impl ErrorCode {
    pub fn from_u16(v: u16) -> Option<ErrorCode> {
        use ErrorCode::*;
        Some(match v {
            1 => BadFrame,
            2 => UnsupportedVersion,
            3 => UnknownOpcode,
            4 => InvalidArgument,
            5 => NotReady,
            6 => TooLarge,
            7 => Overloaded,
            8 => Timeout,
            9 => Unauthorized,
            10 => NotAllowed,
            11 => ShuttingDown,
            12 => Internal,
            13 => Unauthenticated,
            14 => PermissionDenied,
            _ => return None,
        })
    }

    pub fn name(self) -> &'static str {
        use ErrorCode::*;
        match self {
            BadFrame => "bad frame",
            UnsupportedVersion => "unsupported version",
            UnknownOpcode => "unknown opcode",
            InvalidArgument => "invalid argument",
            NotReady => "not ready",
            TooLarge => "too large",
            Overloaded => "overloaded",
            Timeout => "timeout",
            Unauthorized => "unauthorized",
            NotAllowed => "not allowed",
            ShuttingDown => "shutting down",
            Internal => "internal error",
            Unauthenticated => "unauthenticated",
            PermissionDenied => "permission denied",
        }
    }
}
