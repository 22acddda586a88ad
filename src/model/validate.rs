//! The rules a write keeps before it touches the store, one error variant per rule. Every front
//! end's writes pass through here (the request API checks a whole batch before applying any of
//! it); the binary decoder has already bounded lengths, other front ends rely on these checks.

use thiserror::Error;

use super::instance::{Instance, InstanceKey};
use super::limits::{
    IP_LEN_MAX, LEASE_MS_MAX, META_ENTRIES_MAX, META_KEY_LEN_MAX, META_VALUE_LEN_MAX, NAME_LEN_MAX,
    WEIGHT_MAX,
};

/// Why an instance or key is not acceptable. Messages name the instance (`ip:port`) where there
/// is one, so that a client with a batch knows which one.
#[derive(Debug, Clone, PartialEq, Error)]
pub enum InvalidInstance {
    #[error("{field} must not be empty")]
    EmptyName { field: &'static str },
    #[error("{field} of {len} bytes is longer than {max}")]
    NameTooLong {
        field: &'static str,
        len: usize,
        max: usize,
    },
    #[error("{field} {value:?} contains control characters")]
    ControlCharacters { field: &'static str, value: String },
    #[error("{ip}: port must not be 0")]
    PortZero { ip: String },
    #[error("{at}: weight {weight} is outside 0..={WEIGHT_MAX}")]
    WeightOutOfRange { at: String, weight: f64 },
    #[error("{at}: {what} of {ms} ms is below the server's floor of {floor_ms} ms")]
    LeaseBelowFloor {
        at: String,
        what: &'static str,
        ms: u32,
        floor_ms: u32,
    },
    #[error("{at}: {what} of {ms} ms is above the longest lease, {LEASE_MS_MAX} ms")]
    LeaseAboveCeiling {
        at: String,
        what: &'static str,
        ms: u32,
    },
    #[error(
        "{at}: lease must satisfy beat ({beat_ms}) <= unhealthy-after ({unhealthy_ms}) <= expire-after ({expire_ms})"
    )]
    LeaseOutOfOrder {
        at: String,
        beat_ms: u32,
        unhealthy_ms: u32,
        expire_ms: u32,
    },
    #[error("{at}: {count} metadata entries, more than {META_ENTRIES_MAX}")]
    TooManyMetadata { at: String, count: usize },
    #[error("{at}: metadata {what} of {len} bytes is longer than {max}")]
    MetadataTooLong {
        at: String,
        what: &'static str,
        len: usize,
        max: usize,
    },
}

impl InstanceKey {
    /// Checks the identity rules: every name present, within its length, printable; a port.
    pub fn validate(&self) -> Result<(), InvalidInstance> {
        for (field, v, max) in [
            ("namespace", &self.service.namespace, NAME_LEN_MAX),
            ("group", &self.service.group, NAME_LEN_MAX),
            ("service", &self.service.service, NAME_LEN_MAX),
            ("cluster", &self.cluster, NAME_LEN_MAX),
            ("ip", &self.ip, IP_LEN_MAX),
        ] {
            if v.is_empty() {
                return Err(InvalidInstance::EmptyName { field });
            }
            if v.len() > max {
                return Err(InvalidInstance::NameTooLong {
                    field,
                    len: v.len(),
                    max,
                });
            }
            if v.chars().any(char::is_control) {
                return Err(InvalidInstance::ControlCharacters {
                    field,
                    value: v.to_string(),
                });
            }
        }
        if self.port == 0 {
            return Err(InvalidInstance::PortZero {
                ip: self.ip.to_string(),
            });
        }
        Ok(())
    }
}

impl Instance {
    /// Checks the key, the weight, the metadata bounds and the lease: each setting between the
    /// node's floor and [`LEASE_MS_MAX`], and beat <= unhealthy-after <= expire-after.
    pub fn validate(&self, lease_floor_ms: u32) -> Result<(), InvalidInstance> {
        self.key.validate()?;
        let at = || format!("{}:{}", self.key.ip, self.key.port);
        // NaN is outside every range.
        if !(0.0..=WEIGHT_MAX).contains(&self.weight) {
            return Err(InvalidInstance::WeightOutOfRange {
                at: at(),
                weight: self.weight,
            });
        }
        if self.metadata.len() > META_ENTRIES_MAX {
            return Err(InvalidInstance::TooManyMetadata {
                at: at(),
                count: self.metadata.len(),
            });
        }
        for (k, v) in &self.metadata {
            for (what, len, max) in [
                ("key", k.len(), META_KEY_LEN_MAX),
                ("value", v.len(), META_VALUE_LEN_MAX),
            ] {
                if len > max {
                    return Err(InvalidInstance::MetadataTooLong {
                        at: at(),
                        what,
                        len,
                        max,
                    });
                }
            }
        }
        let l = self.lease;
        for (what, ms) in [
            ("beat interval", l.beat_ms),
            ("unhealthy-after", l.unhealthy_ms),
            ("expire-after", l.expire_ms),
        ] {
            if ms < lease_floor_ms {
                return Err(InvalidInstance::LeaseBelowFloor {
                    at: at(),
                    what,
                    ms,
                    floor_ms: lease_floor_ms,
                });
            }
            if ms > LEASE_MS_MAX {
                return Err(InvalidInstance::LeaseAboveCeiling { at: at(), what, ms });
            }
        }
        if !(l.beat_ms <= l.unhealthy_ms && l.unhealthy_ms <= l.expire_ms) {
            return Err(InvalidInstance::LeaseOutOfOrder {
                at: at(),
                beat_ms: l.beat_ms,
                unhealthy_ms: l.unhealthy_ms,
                expire_ms: l.expire_ms,
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Lease, ServiceName, Text};

    fn key() -> InstanceKey {
        InstanceKey {
            service: ServiceName::new("public", "DEFAULT_GROUP", "orders"),
            cluster: Text::from("DEFAULT"),
            ip: Text::from("10.0.0.1"),
            port: 8080,
        }
    }

    fn lease(beat_ms: u32, unhealthy_ms: u32, expire_ms: u32) -> Lease {
        Lease {
            beat_ms,
            unhealthy_ms,
            expire_ms,
        }
    }

    /// Each rule, one row: a change to a valid instance and the error it must give.
    #[test]
    fn each_rule_is_its_own_error() {
        type Change = fn(&mut Instance);
        let rows: Vec<(Change, InvalidInstance)> = vec![
            (
                |i| i.key.service.namespace = Text::default(),
                InvalidInstance::EmptyName { field: "namespace" },
            ),
            (
                |i| i.key.cluster = Text::from("c".repeat(256)),
                InvalidInstance::NameTooLong {
                    field: "cluster",
                    len: 256,
                    max: 255,
                },
            ),
            (
                |i| i.key.ip = Text::from("10.0.0.1\n"),
                InvalidInstance::ControlCharacters {
                    field: "ip",
                    value: "10.0.0.1\n".into(),
                },
            ),
            (
                |i| i.key.port = 0,
                InvalidInstance::PortZero {
                    ip: "10.0.0.1".into(),
                },
            ),
            (
                |i| i.weight = f64::NAN,
                InvalidInstance::WeightOutOfRange {
                    at: "10.0.0.1:8080".into(),
                    weight: f64::NAN,
                },
            ),
            (
                |i| i.weight = -1.0,
                InvalidInstance::WeightOutOfRange {
                    at: "10.0.0.1:8080".into(),
                    weight: -1.0,
                },
            ),
            (
                |i| i.lease = lease(100, 15_000, 30_000),
                InvalidInstance::LeaseBelowFloor {
                    at: "10.0.0.1:8080".into(),
                    what: "beat interval",
                    ms: 100,
                    floor_ms: 500,
                },
            ),
            (
                |i| i.lease = lease(5_000, 15_000, u32::MAX),
                InvalidInstance::LeaseAboveCeiling {
                    at: "10.0.0.1:8080".into(),
                    what: "expire-after",
                    ms: u32::MAX,
                },
            ),
            (
                |i| i.lease = lease(5_000, 30_000, 15_000),
                InvalidInstance::LeaseOutOfOrder {
                    at: "10.0.0.1:8080".into(),
                    beat_ms: 5_000,
                    unhealthy_ms: 30_000,
                    expire_ms: 15_000,
                },
            ),
            (
                |i| i.metadata = vec![(Text::from("k"), Text::default()); 65],
                InvalidInstance::TooManyMetadata {
                    at: "10.0.0.1:8080".into(),
                    count: 65,
                },
            ),
            (
                |i| i.metadata = vec![(Text::from("k"), Text::from("v".repeat(4097)))],
                InvalidInstance::MetadataTooLong {
                    at: "10.0.0.1:8080".into(),
                    what: "value",
                    len: 4097,
                    max: 4096,
                },
            ),
        ];
        Instance::new(key())
            .validate(500)
            .expect("the base instance is valid");
        for (change, want) in rows {
            let mut i = Instance::new(key());
            change(&mut i);
            let got = i.validate(500).expect_err("the change breaks a rule");
            // NaN != NaN: compare the rendered messages, which carry every field.
            assert_eq!(got.to_string(), want.to_string());
        }
    }

    #[test]
    fn the_bounds_themselves_are_accepted() {
        let mut i = Instance::new(key());
        i.weight = WEIGHT_MAX;
        i.lease = lease(500, LEASE_MS_MAX, LEASE_MS_MAX);
        i.metadata = vec![(Text::from("k".repeat(255)), Text::from("v".repeat(4096))); 64];
        i.validate(500).unwrap();
    }
}
