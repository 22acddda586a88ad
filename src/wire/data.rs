//! The data model's encodings ([`crate::model`]: names, keys, instances, views, service
//! snapshots and deltas), shared by the client messages and the peer records; the canonical key bytes (an InstanceKey's encoding) come from
//! [`crate::model::key`]. Layouts are in `wire-spec.md`.

use bytes::{BufMut, Bytes, BytesMut};

use super::buf::{Reader, check_len, must, put_count_u16, put_count_u32, put_text};
use super::*;
use crate::model::{
    Instance, InstanceKey, InstanceView, Lease, Metadata, ServiceDelta, ServiceName,
    ServiceSnapshot, ViewKey, key, limits::*,
};

impl ServiceName {
    /// # Panics
    /// If a part is longer than [`NAME_LEN_MAX`] (see [`ServiceName::try_encode`]).
    pub fn encode(&self, out: &mut BytesMut) {
        must(self.try_encode(out), "a service name");
    }

    /// Appends the name, or fails (writing nothing) if a part is longer than the decoder takes.
    pub fn try_encode(&self, out: &mut BytesMut) -> Result<(), WireError> {
        self.check()?;
        key::put_service(out, self);
        Ok(())
    }

    fn check(&self) -> Result<(), WireError> {
        check_len(&self.namespace, "namespace", NAME_LEN_MAX)?;
        check_len(&self.group, "group", NAME_LEN_MAX)?;
        check_len(&self.service, "service", NAME_LEN_MAX)
    }

    pub fn decode(r: &mut Reader) -> Result<ServiceName, WireError> {
        Ok(ServiceName {
            namespace: r.text("namespace", NAME_LEN_MAX)?,
            group: r.text("group", NAME_LEN_MAX)?,
            service: r.text("service", NAME_LEN_MAX)?,
        })
    }
}

impl InstanceKey {
    /// Smallest encoding: six empty strings' lengths and the port.
    pub const MIN_LEN: usize = 2 * 5 + 2;

    /// The canonical key bytes (wire-spec.md §10.1).
    ///
    /// # Panics
    /// If a part is longer than its limit (see [`InstanceKey::try_encode`]).
    pub fn encode(&self, out: &mut BytesMut) {
        must(self.try_encode(out), "an instance key");
    }

    /// Appends the key, or fails (writing nothing) if a part is longer than the decoder takes.
    pub fn try_encode(&self, out: &mut BytesMut) -> Result<(), WireError> {
        check_key_parts(&self.service, &self.cluster, &self.ip)?;
        key::put_key(out, &self.service, &self.cluster, &self.ip, self.port);
        Ok(())
    }

    pub fn decode(r: &mut Reader) -> Result<InstanceKey, WireError> {
        Ok(InstanceKey {
            service: ServiceName::decode(r)?,
            cluster: r.text("cluster", NAME_LEN_MAX)?,
            ip: r.text("ip", IP_LEN_MAX)?,
            port: r.u16("port")?,
        })
    }
}

pub(super) fn check_key_parts(
    name: &ServiceName,
    cluster: &str,
    ip: &str,
) -> Result<(), WireError> {
    name.check()?;
    check_len(cluster, "cluster", NAME_LEN_MAX)?;
    check_len(ip, "ip", IP_LEN_MAX)
}

/// Appends a metadata map; generic so that the store encodes its own string types directly.
pub(super) fn encode_metadata<K: AsRef<str>, V: AsRef<str>>(
    out: &mut BytesMut,
    meta: &[(K, V)],
) -> Result<(), WireError> {
    put_count_u16(out, meta.len(), "metadata entries", META_ENTRIES_MAX)?;
    for (k, v) in meta {
        put_text(out, k.as_ref(), "metadata key", META_KEY_LEN_MAX)?;
        put_text(out, v.as_ref(), "metadata value", META_VALUE_LEN_MAX)?;
    }
    Ok(())
}

pub(super) fn decode_metadata(r: &mut Reader) -> Result<Metadata, WireError> {
    let n = r.u16("metadata count")? as usize;
    let n = r.count(n, "metadata entries", META_ENTRIES_MAX, 4)?;
    let mut meta = Vec::with_capacity(n);
    for _ in 0..n {
        let k = r.text("metadata key", META_KEY_LEN_MAX)?;
        let v = r.text("metadata value", META_VALUE_LEN_MAX)?;
        meta.push((k, v));
    }
    Ok(meta)
}

const INSTANCE_HEALTHY: u8 = 0x01;
const INSTANCE_ENABLED: u8 = 0x02;

fn encode_status(out: &mut BytesMut, healthy: bool, enabled: bool) {
    let mut bits = 0;
    if healthy {
        bits |= INSTANCE_HEALTHY;
    }
    if enabled {
        bits |= INSTANCE_ENABLED;
    }
    out.put_u8(bits);
}

fn decode_status(r: &mut Reader) -> Result<(bool, bool), WireError> {
    let bits = r.u8("instance status")?;
    if bits & !(INSTANCE_HEALTHY | INSTANCE_ENABLED) != 0 {
        return Err(WireError::InvalidValue {
            what: "instance status",
            reason: "reserved bits set",
        });
    }
    Ok((bits & INSTANCE_HEALTHY != 0, bits & INSTANCE_ENABLED != 0))
}

pub(super) fn decode_weight(r: &mut Reader) -> Result<f64, WireError> {
    let w = r.f64("weight")?;
    if !w.is_finite() {
        return Err(WireError::InvalidValue {
            what: "weight",
            reason: "not a finite number",
        });
    }
    Ok(w)
}

impl Instance {
    pub const MIN_LEN: usize = InstanceKey::MIN_LEN + 8 + 1 + 12 + 2;

    /// The length of [`Instance::encode`]'s output.
    pub fn encoded_len(&self) -> usize {
        let k = &self.key;
        let texts = [
            &k.service.namespace,
            &k.service.group,
            &k.service.service,
            &k.cluster,
            &k.ip,
        ];
        let meta: usize = self
            .metadata
            .iter()
            .map(|(k, v)| 4 + k.len() + v.len())
            .sum();
        Self::MIN_LEN + texts.iter().map(|t| t.len()).sum::<usize>() + meta
    }

    /// # Panics
    /// If a field breaks a limit of the decoder (see [`Instance::try_encode`]).
    pub fn encode(&self, out: &mut BytesMut) {
        must(self.try_encode(out), "an instance");
    }

    /// Appends the instance, or fails if a field breaks a limit of the decoder (`out` may then
    /// hold part of it: frame encoders cut it off).
    pub fn try_encode(&self, out: &mut BytesMut) -> Result<(), WireError> {
        self.key.try_encode(out)?;
        out.put_f64(self.weight);
        encode_status(out, self.healthy, self.enabled);
        out.put_u32(self.lease.beat_ms);
        out.put_u32(self.lease.unhealthy_ms);
        out.put_u32(self.lease.expire_ms);
        encode_metadata(out, &self.metadata)
    }

    pub fn decode(r: &mut Reader) -> Result<Instance, WireError> {
        let key = InstanceKey::decode(r)?;
        let weight = decode_weight(r)?;
        let (healthy, enabled) = decode_status(r)?;
        let lease = Lease {
            beat_ms: r.u32("beat_ms")?,
            unhealthy_ms: r.u32("unhealthy_ms")?,
            expire_ms: r.u32("expire_ms")?,
        };
        let metadata = decode_metadata(r)?;
        Ok(Instance {
            key,
            weight,
            healthy,
            enabled,
            lease,
            metadata,
        })
    }
}

impl InstanceView {
    pub const MIN_LEN: usize = 2 + 2 + 2 + 8 + 1 + 2;

    /// # Panics
    /// If a field breaks a limit of the decoder (see [`InstanceView::try_encode`]).
    pub fn encode(&self, out: &mut BytesMut) {
        must(self.try_encode(out), "an instance view");
    }

    /// Appends the view, or fails if a field breaks a limit of the decoder.
    pub fn try_encode(&self, out: &mut BytesMut) -> Result<(), WireError> {
        try_encode_instance_view(
            out,
            &self.cluster,
            &self.ip,
            self.port,
            self.weight,
            self.healthy,
            self.enabled,
            &self.metadata,
        )
    }

    pub fn decode(r: &mut Reader) -> Result<InstanceView, WireError> {
        let cluster = r.text("cluster", NAME_LEN_MAX)?;
        let ip = r.text("ip", IP_LEN_MAX)?;
        let port = r.u16("port")?;
        let weight = decode_weight(r)?;
        let (healthy, enabled) = decode_status(r)?;
        let metadata = decode_metadata(r)?;
        Ok(InstanceView {
            cluster,
            ip,
            port,
            weight,
            healthy,
            enabled,
            metadata,
        })
    }
}

/// Encodes one InstanceView from its parts, so the store can encode straight from its records.
///
/// # Panics
/// If a field breaks a limit of the decoder (the store holds only validated instances).
#[allow(clippy::too_many_arguments)]
pub fn encode_instance_view<K: AsRef<str>, V: AsRef<str>>(
    out: &mut BytesMut,
    cluster: &str,
    ip: &str,
    port: u16,
    weight: f64,
    healthy: bool,
    enabled: bool,
    metadata: &[(K, V)],
) {
    must(
        try_encode_instance_view(out, cluster, ip, port, weight, healthy, enabled, metadata),
        "an instance view",
    );
}

#[allow(clippy::too_many_arguments)]
fn try_encode_instance_view<K: AsRef<str>, V: AsRef<str>>(
    out: &mut BytesMut,
    cluster: &str,
    ip: &str,
    port: u16,
    weight: f64,
    healthy: bool,
    enabled: bool,
    metadata: &[(K, V)],
) -> Result<(), WireError> {
    put_text(out, cluster, "cluster", NAME_LEN_MAX)?;
    put_text(out, ip, "ip", IP_LEN_MAX)?;
    out.put_u16(port);
    out.put_f64(weight);
    encode_status(out, healthy, enabled);
    encode_metadata(out, metadata)
}

impl ServiceSnapshot {
    /// Appends the header part of a snapshot body; `count` InstanceViews must follow.
    ///
    /// # Panics
    /// If the name breaks a limit of the decoder.
    pub fn encode_head(out: &mut BytesMut, name: &ServiceName, revision: u64, count: u32) {
        name.encode(out);
        out.put_u64(revision);
        out.put_u32(count);
    }

    pub(super) fn try_encode(&self, out: &mut BytesMut) -> Result<(), WireError> {
        self.name.try_encode(out)?;
        out.put_u64(self.revision);
        put_count_u32(out, self.instances.len(), "instances", usize::MAX)?;
        for i in &self.instances {
            i.try_encode(out)?;
        }
        Ok(())
    }

    /// Decodes a whole snapshot body (a QueryResult's or Push's).
    pub fn decode_body(body: Bytes) -> Result<ServiceSnapshot, WireError> {
        let mut r = Reader::new(body);
        let s = ServiceSnapshot::decode(&mut r)?;
        r.finish()?;
        Ok(s)
    }

    pub(super) fn decode(r: &mut Reader) -> Result<ServiceSnapshot, WireError> {
        let name = ServiceName::decode(r)?;
        let revision = r.u64("revision")?;
        let n = r.u32("instance count")? as usize;
        let n = r.count(n, "instances", usize::MAX, InstanceView::MIN_LEN)?;
        let mut instances = Vec::with_capacity(n);
        for _ in 0..n {
            instances.push(InstanceView::decode(r)?);
        }
        Ok(ServiceSnapshot {
            name,
            revision,
            instances,
        })
    }
}

impl ViewKey {
    /// Smallest encoding: two empty strings and the port.
    pub const MIN_LEN: usize = 2 + 2 + 2;

    /// # Panics
    /// If a part is longer than its limit (see [`ViewKey::try_encode`]).
    pub fn encode(&self, out: &mut BytesMut) {
        encode_view_key(out, &self.cluster, &self.ip, self.port);
    }

    /// Appends the ViewKey, or fails if a part is longer than its limit.
    pub fn try_encode(&self, out: &mut BytesMut) -> Result<(), WireError> {
        try_encode_view_key(out, &self.cluster, &self.ip, self.port)
    }

    pub fn decode(r: &mut Reader) -> Result<ViewKey, WireError> {
        Ok(ViewKey {
            cluster: r.text("cluster", NAME_LEN_MAX)?,
            ip: r.text("ip", IP_LEN_MAX)?,
            port: r.u16("port")?,
        })
    }
}

/// Encodes one ViewKey from its parts (the store keeps them apart).
///
/// # Panics
/// If a part is longer than its limit (the store holds only validated keys).
pub fn encode_view_key(out: &mut BytesMut, cluster: &str, ip: &str, port: u16) {
    must(try_encode_view_key(out, cluster, ip, port), "a view key");
}

fn try_encode_view_key(
    out: &mut BytesMut,
    cluster: &str,
    ip: &str,
    port: u16,
) -> Result<(), WireError> {
    put_text(out, cluster, "cluster", NAME_LEN_MAX)?;
    put_text(out, ip, "ip", IP_LEN_MAX)?;
    out.put_u16(port);
    Ok(())
}

impl ServiceDelta {
    /// Appends the part of a PushDelta body before its lists: the removed keys (a `u32` count,
    /// then ViewKeys) and the updated instances (a `u32` count, then InstanceViews) follow.
    pub fn encode_head(out: &mut BytesMut, name: &ServiceName, base_revision: u64, revision: u64) {
        name.encode(out);
        out.put_u64(base_revision);
        out.put_u64(revision);
    }

    pub(super) fn try_encode(&self, out: &mut BytesMut) -> Result<(), WireError> {
        self.name.try_encode(out)?;
        out.put_u64(self.base_revision);
        out.put_u64(self.revision);
        put_count_u32(out, self.removed.len(), "removed keys", usize::MAX)?;
        for k in &self.removed {
            k.try_encode(out)?;
        }
        put_count_u32(out, self.updated.len(), "updated instances", usize::MAX)?;
        for v in &self.updated {
            v.try_encode(out)?;
        }
        Ok(())
    }

    /// Decodes a whole PushDelta body.
    pub fn decode_body(body: Bytes) -> Result<ServiceDelta, WireError> {
        let mut r = Reader::new(body);
        let d = ServiceDelta::decode(&mut r)?;
        r.finish()?;
        Ok(d)
    }

    pub(super) fn decode(r: &mut Reader) -> Result<ServiceDelta, WireError> {
        let name = ServiceName::decode(r)?;
        let base_revision = r.u64("base revision")?;
        let revision = r.u64("revision")?;
        let n = r.u32("removed count")? as usize;
        let n = r.count(n, "removed instances", usize::MAX, ViewKey::MIN_LEN)?;
        let mut removed = Vec::with_capacity(n);
        for _ in 0..n {
            removed.push(ViewKey::decode(r)?);
        }
        let n = r.u32("updated count")? as usize;
        let n = r.count(n, "updated instances", usize::MAX, InstanceView::MIN_LEN)?;
        let mut updated = Vec::with_capacity(n);
        for _ in 0..n {
            updated.push(InstanceView::decode(r)?);
        }
        Ok(ServiceDelta {
            name,
            base_revision,
            revision,
            removed,
            updated,
        })
    }
}
