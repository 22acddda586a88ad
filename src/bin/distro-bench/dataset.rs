//! The data set: the instances a run registers (and from an instance back to its index), and
//! loading them into the nodes as unmeasured setup.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use anyhow::{Context, bail};
use distro::client::Conn;
use distro::model::{Instance, InstanceKey, Lease, ServiceName, Text};
use distro::wire::{Message, Register};

use crate::conn::call;
use crate::measure::{Counters, Progress};

/// The lease of every bench instance. Long, so that instances registered without heartbeats
/// (nothing heartbeats them outside the measured Beat frames) do not expire during a run.
pub(crate) const BENCH_LEASE: Lease = Lease {
    beat_ms: 3_600_000,
    unhealthy_ms: 3_600_000,
    expire_ms: 3_600_000,
};

/// Instances per Register frame while loading the data set of `query` and `beat`.
const LOAD_BATCH: usize = 1024;

/// Instance `i` of the data set: service `i % services`, ip `10.a.b.c` from the low 24 bits of
/// `i`, port 8080 plus the rest. Every node computes nothing from these: they are only data.
pub(crate) fn bench_instance(i: u64, names: &[ServiceName]) -> Instance {
    let key = InstanceKey {
        service: names[(i % names.len() as u64) as usize].clone(),
        cluster: Text::from_static("DEFAULT"),
        ip: Text::from(format!(
            "10.{}.{}.{}",
            (i >> 16) & 255,
            (i >> 8) & 255,
            i & 255
        )),
        port: 8080 + (i >> 24) as u16,
    };
    Instance {
        lease: BENCH_LEASE,
        ..Instance::new(key)
    }
}

/// The index of the bench instance at `ip:port`, the inverse of [`bench_instance`].
pub(crate) fn bench_index(ip: &str, port: u16) -> Option<u64> {
    let mut parts = ip.strip_prefix("10.")?.split('.');
    let mut i = 0u64;
    for _ in 0..3 {
        let b: u8 = parts.next()?.parse().ok()?;
        i = i << 8 | b as u64;
    }
    if parts.next().is_some() {
        return None;
    }
    Some(i | (port.checked_sub(8080)? as u64) << 24)
}

pub(crate) fn service_names(n: u64) -> Vec<ServiceName> {
    (0..n)
        .map(|s| ServiceName::new("public", "DEFAULT_GROUP", &format!("bench-svc-{s:06}")))
        .collect()
}

/// Registers the whole data set in frames of [`LOAD_BATCH`] over `conns` (unmeasured setup);
/// returns how many instances were acknowledged.
pub(crate) async fn load_data_set(
    conns: &[Arc<Conn>],
    instances: u64,
    names: &Arc<Vec<ServiceName>>,
) -> anyhow::Result<u64> {
    let counters = Arc::new(Counters::default());
    let _progress = Progress::start("load", counters.clone(), Default::default());
    let next = Arc::new(AtomicU64::new(0));
    let frames = instances.div_ceil(LOAD_BATCH as u64);
    let mut tasks = Vec::new();
    for conn in conns {
        for _ in 0..4 {
            let (conn, next, names, counters) =
                (conn.clone(), next.clone(), names.clone(), counters.clone());
            tasks.push(tokio::spawn(async move {
                loop {
                    let f = next.fetch_add(1, Ordering::Relaxed);
                    if f >= frames || conn.is_closed() {
                        return;
                    }
                    let lo = f * LOAD_BATCH as u64;
                    let hi = (lo + LOAD_BATCH as u64).min(instances);
                    let msg = Message::Register(Register {
                        session_bound: false,
                        instances: (lo..hi).map(|i| bench_instance(i, &names)).collect(),
                    });
                    match call(&conn, &msg).await {
                        Ok(Message::Ack(n)) if n as u64 == hi - lo => {
                            counters.ops.fetch_add(hi - lo, Ordering::Relaxed);
                        }
                        Ok(other) => {
                            counters.error(format!("unexpected answer {:?}", other.opcode()))
                        }
                        Err(e) => counters.error(e),
                    }
                }
            }));
        }
    }
    for t in tasks {
        t.await.context("load task panicked")?;
    }
    if counters.errors() > 0 {
        bail!(
            "loading the data set failed: {} of {frames} frames failed (first: {})",
            counters.errors(),
            counters
                .first_error
                .lock()
                .unwrap()
                .clone()
                .unwrap_or_default()
        );
    }
    Ok(counters.ops())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bench_index_inverts_bench_instance() {
        let names = service_names(7);
        for i in [0u64, 1, 255, 256, 65_535, 1 << 20, (1 << 24) + 5, 3 << 24] {
            let inst = bench_instance(i, &names);
            assert_eq!(bench_index(&inst.key.ip, inst.key.port), Some(i));
            assert_eq!(inst.key.service, names[(i % 7) as usize]);
        }
        assert_eq!(bench_index("192.168.0.1", 8080), None);
        assert_eq!(bench_index("10.0.0.1.2", 8080), None);
    }
}
