//! The checks a write passes before it touches the store. The codec already bounded every length;
//! these are the rules of the data model. A batch is checked whole before any of it is applied.

use crate::wire::{Instance, InstanceKey};

/// Largest weight an instance may have (as in Nacos).
pub const WEIGHT_MAX: f64 = 10_000.0;

pub fn key(k: &InstanceKey) -> Result<(), String> {
    for (what, v) in [
        ("namespace", &k.service.namespace),
        ("group", &k.service.group),
        ("service", &k.service.service),
        ("cluster", &k.cluster),
        ("ip", &k.ip),
    ] {
        if v.is_empty() {
            return Err(format!("{what} must not be empty"));
        }
        if v.chars().any(char::is_control) {
            return Err(format!("{what} {v:?} contains control characters"));
        }
    }
    if k.port == 0 {
        return Err(format!("{}: port must not be 0", k.ip));
    }
    Ok(())
}

pub fn instance(i: &Instance, lease_floor_ms: u32) -> Result<(), String> {
    key(&i.key)?;
    if !(0.0..=WEIGHT_MAX).contains(&i.weight) {
        return Err(format!(
            "{}:{}: weight {} is outside 0..={WEIGHT_MAX}",
            i.key.ip, i.key.port, i.weight
        ));
    }
    let l = i.lease;
    for (what, v) in [
        ("beat interval", l.beat_ms),
        ("unhealthy-after", l.unhealthy_ms),
        ("expire-after", l.expire_ms),
    ] {
        if v < lease_floor_ms {
            return Err(format!(
                "{}:{}: {what} of {v} ms is below the server's floor of {lease_floor_ms} ms",
                i.key.ip, i.key.port
            ));
        }
    }
    if !(l.beat_ms <= l.unhealthy_ms && l.unhealthy_ms <= l.expire_ms) {
        return Err(format!(
            "{}:{}: lease must satisfy beat ({}) <= unhealthy-after ({}) <= expire-after ({})",
            i.key.ip, i.key.port, l.beat_ms, l.unhealthy_ms, l.expire_ms
        ));
    }
    Ok(())
}
