//! The data model every part of the node shares: what an instance is, what identifies it, its
//! lease and version, the answers a query gives, the limits of it all, and the rules a valid
//! instance keeps. It knows no protocol: `wire` encodes these types, the Nacos front end
//! translates its own shapes into them, the store keeps them, the request API takes them.
//!
//! - [`text`]: [`Text`], an immutable UTF-8 string that can borrow the frame it came in.
//! - [`instance`]: [`ServiceName`], [`InstanceKey`], [`Lease`], [`Instance`], [`InstanceView`],
//!   [`Version`], [`NodeId`].
//! - [`answers`]: what reads answer — [`ServiceSnapshot`], [`ServiceList`], [`ClusterStatus`],
//!   [`NamespaceSummary`] — and what changed between two revisions of a service
//!   ([`ServiceDelta`]).
//! - [`key`]: the canonical key bytes, the key hash and the owner key (the only encoders of the
//!   bytes the protocol hashes).
//! - [`limits`]: every bound of the model and of one request, with why.
//! - [`validate`]: [`InvalidInstance`], one variant per rule a write can break.

pub mod answers;
pub mod instance;
pub mod key;
pub mod limits;
pub mod text;
pub mod validate;

pub use answers::{
    ClusterStatus, DeltaMismatch, MemberStatus, NamespaceSummary, ServiceDelta, ServiceList,
    ServiceSnapshot, ServiceSummary, ViewKey,
};
pub use instance::{
    Instance, InstanceKey, InstanceView, Lease, Metadata, NodeId, ServiceName, Version,
};
pub use key::{key_hash, service_hash};
pub use limits::*;
pub use text::Text;
pub use validate::InvalidInstance;
