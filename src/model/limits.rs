//! The bounds of the data model and of one request. Every front end enforces the same ones
//! (the binary protocol's decoder before a byte is stored, the request API for everyone else),
//! and `wire-spec.md` §9 lists them with the same names.

/// Namespace, group, service and cluster names: at most this many bytes.
pub const NAME_LEN_MAX: usize = 255;
/// An instance's ip (or host name): at most this many bytes.
pub const IP_LEN_MAX: usize = 255;
/// Metadata entries per instance. Metadata is pushed to every subscriber on every change, so it
/// is kept to what discovery needs.
pub const META_ENTRIES_MAX: usize = 64;
pub const META_KEY_LEN_MAX: usize = 255;
pub const META_VALUE_LEN_MAX: usize = 4096;
/// Largest weight an instance may have (as in Nacos).
pub const WEIGHT_MAX: f64 = 10_000.0;
/// Longest lease setting (beat, unhealthy-after, expire-after), ms: one hour. A lease is a
/// liveness promise; a longer one keeps a dead client's instance (and after it, its tombstone,
/// which must outlive every lease) for longer than anyone waits on a registry.
pub const LEASE_MS_MAX: u32 = 3_600_000;

/// Instances in one register request, keys in one deregister request.
pub const BATCH_INSTANCES_MAX: usize = 4096;
/// Keys in one beat request: a client renews everything it holds in one frame per interval.
pub const BEAT_KEYS_MAX: usize = 16384;
/// Services in one page of a service listing.
pub const PAGE_SIZE_MAX: usize = 1000;
/// Members a cluster may have (bounds a cluster status answer and the member list).
pub const MEMBERS_MAX: usize = 256;
/// Digest buckets per owner (wire-spec.md §10.2): a verify round costs O(buckets), and a
/// mismatch pulls only the buckets that differ.
pub const DIGEST_BUCKETS: usize = 1024;
