//! Nacos's naming rules, as its clients rely on them: the defaults for namespace, group and
//! cluster, `group@@service` names, the instance id, the lenient booleans of the HTTP API and the
//! metadata string. Pure functions on strings; the front end turns their results into model
//! types.

use std::collections::BTreeMap;

/// The namespace of a request that names none (Nacos's `public`).
pub const DEFAULT_NAMESPACE: &str = "public";
/// The group of a request that names none.
pub const DEFAULT_GROUP: &str = "DEFAULT_GROUP";
/// The cluster of an instance that names none.
pub const DEFAULT_CLUSTER: &str = "DEFAULT";
/// Between group and service in a grouped service name (`DEFAULT_GROUP@@orders`).
pub const GROUP_SEPARATOR: &str = "@@";

/// What the Python v1 client sends for a parameter it was given as `None` (it puts every
/// keyword argument into the query string, `clusterName=None` included). Nacos would create a
/// cluster named "None"; here it means "not given", as the user meant.
const PYTHON_NONE: &str = "None";

/// A name parameter as given: blank (absent, empty, only spaces) or the literal `None` means the
/// parameter was not given. Otherwise the value, trimmed (Nacos trims every parameter).
pub fn given(value: Option<&str>) -> Option<&str> {
    let v = value?.trim();
    if v.is_empty() || v == PYTHON_NONE {
        None
    } else {
        Some(v)
    }
}

/// The namespace a request means: `public` unless it names another.
pub fn namespace(value: Option<&str>) -> &str {
    given(value).unwrap_or(DEFAULT_NAMESPACE)
}

/// The group a request means: `DEFAULT_GROUP` unless it names another.
pub fn group(value: Option<&str>) -> &str {
    given(value).unwrap_or(DEFAULT_GROUP)
}

/// The cluster an instance is in: `DEFAULT` unless it names another.
pub fn cluster(value: Option<&str>) -> &str {
    given(value).unwrap_or(DEFAULT_CLUSTER)
}

/// Why a service name cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ServiceNameError {
    /// No service name at all.
    #[error("Param 'serviceName' is required.")]
    Missing,
    /// `group@@` with nothing after the separator, or `@@service` with nothing before it.
    #[error("Param 'serviceName' is illegal, it should be format as 'groupName@@serviceName'")]
    Malformed,
}

/// A service's group and name as a request means them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupedName<'a> {
    pub group: &'a str,
    pub service: &'a str,
}

impl GroupedName<'_> {
    /// `group@@service`, as the v1 answers name the service and its instances.
    pub fn joined(&self) -> String {
        grouped(self.group, self.service)
    }
}

/// Splits a service name the way Nacos does: `group@@service` carries its group (which then wins
/// over any group parameter, as Nacos's service name filter does); a plain name takes the group
/// parameter, or the default group.
pub fn service_name<'a>(
    service: Option<&'a str>,
    group_param: Option<&'a str>,
) -> Result<GroupedName<'a>, ServiceNameError> {
    let service = service.map(str::trim).filter(|s| !s.is_empty());
    let service = service.ok_or(ServiceNameError::Missing)?;
    match service.split_once(GROUP_SEPARATOR) {
        Some((g, s)) => {
            let (g, s) = (g.trim(), s.trim());
            if g.is_empty() || s.is_empty() || s.contains(GROUP_SEPARATOR) {
                return Err(ServiceNameError::Malformed);
            }
            Ok(GroupedName {
                group: g,
                service: s,
            })
        }
        None => Ok(GroupedName {
            group: group(group_param),
            service,
        }),
    }
}

/// `group@@service`.
pub fn grouped(group: &str, service: &str) -> String {
    format!("{group}{GROUP_SEPARATOR}{service}")
}

/// The id Nacos gives an instance (its "simple" generator): `ip#port#cluster#group@@service`.
/// The Python v1 client and the Node client's subscription key their caches by it.
pub fn instance_id(ip: &str, port: u16, cluster: &str, group: &str, service: &str) -> String {
    format!("{ip}#{port}#{cluster}#{group}{GROUP_SEPARATOR}{service}")
}

/// A boolean parameter. Nacos reads `true`, `yes`, `on`, `y`, `t` (any case) as true and
/// everything else as false; the Python v1 client sends `True`/`False`. Here the same words
/// and their opposites are accepted and anything else is an error, so that a typo does not
/// silently mean false.
pub fn boolean(value: &str) -> Option<bool> {
    match value.trim().to_ascii_lowercase().as_str() {
        "true" | "yes" | "on" | "y" | "t" | "1" => Some(true),
        "false" | "no" | "off" | "n" | "f" | "0" => Some(false),
        _ => None,
    }
}

/// Why a metadata string cannot be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("metadata format incorrect:{text}")]
pub struct MetadataError {
    pub text: String,
}

/// The `metadata` parameter: a JSON object (what every client sends; scalar values are taken as
/// their text, as Nacos's JSON reader does), or Nacos's older `k1=v1,k2=v2` form. Blank means
/// none. Keys keep their order of first appearance only as far as a map does: the answer
/// serializes metadata as a JSON object either way.
pub fn metadata(text: &str) -> Result<BTreeMap<String, String>, MetadataError> {
    let err = || MetadataError {
        text: text.to_string(),
    };
    let trimmed = text.trim();
    if trimmed.is_empty() {
        return Ok(BTreeMap::new());
    }
    if trimmed.starts_with('{') {
        let object: serde_json::Map<String, serde_json::Value> =
            serde_json::from_str(trimmed).map_err(|_| err())?;
        return metadata_object(object).ok_or_else(err);
    }
    let mut out = BTreeMap::new();
    for pair in trimmed.split(',') {
        match pair.split('=').collect::<Vec<_>>()[..] {
            [k, v] => {
                out.insert(k.to_string(), v.to_string());
            }
            _ => return Err(err()),
        }
    }
    Ok(out)
}

/// Metadata given as a JSON object (the `beat` JSON, a gRPC instance): scalar values are taken
/// as their text, null values are dropped (as Nacos drops them); a nested array or object makes
/// it unreadable (`None`).
pub fn metadata_object(
    object: serde_json::Map<String, serde_json::Value>,
) -> Option<BTreeMap<String, String>> {
    let mut out = BTreeMap::new();
    for (k, v) in object {
        let v = match v {
            serde_json::Value::String(s) => s,
            serde_json::Value::Number(n) => n.to_string(),
            serde_json::Value::Bool(b) => b.to_string(),
            serde_json::Value::Null => continue,
            serde_json::Value::Array(_) | serde_json::Value::Object(_) => return None,
        };
        out.insert(k, v);
    }
    Some(out)
}

/// Instance metadata keys that set the instance's lease, in milliseconds, as in Nacos (the
/// clients put them in metadata; the front end maps them onto the lease and keeps them in the
/// metadata too, as Nacos does).
pub mod lease_keys {
    /// How often the client beats (Nacos default 5000).
    pub const HEART_BEAT_INTERVAL: &str = "preserved.heart.beat.interval";
    /// Unhealthy after this long without a beat (Nacos default 15000).
    pub const HEART_BEAT_TIMEOUT: &str = "preserved.heart.beat.timeout";
    /// Removed after this long without a beat (Nacos default 30000).
    pub const IP_DELETE_TIMEOUT: &str = "preserved.ip.delete.timeout";
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blank_and_the_python_none_mean_the_default() {
        assert_eq!(cluster(Some("None")), DEFAULT_CLUSTER);
        assert_eq!(cluster(Some("  ")), DEFAULT_CLUSTER);
        assert_eq!(cluster(None), DEFAULT_CLUSTER);
        assert_eq!(cluster(Some(" blue ")), "blue");
        assert_eq!(group(Some("")), DEFAULT_GROUP);
        assert_eq!(namespace(Some("")), DEFAULT_NAMESPACE);
        assert_eq!(namespace(Some("dev")), "dev");
    }

    #[test]
    fn a_grouped_service_name_carries_its_group() {
        let n = service_name(Some("DEFAULT_GROUP@@orders"), Some("other")).unwrap();
        assert_eq!((n.group, n.service), ("DEFAULT_GROUP", "orders"));
        let n = service_name(Some("orders"), Some("blue")).unwrap();
        assert_eq!((n.group, n.service), ("blue", "orders"));
        assert_eq!(n.joined(), "blue@@orders");
        let n = service_name(Some("orders"), None).unwrap();
        assert_eq!(n.group, DEFAULT_GROUP);
    }

    #[test]
    fn a_bad_service_name_is_refused_with_nacos_words() {
        assert_eq!(service_name(None, None), Err(ServiceNameError::Missing));
        assert_eq!(
            service_name(Some(" "), None),
            Err(ServiceNameError::Missing)
        );
        for bad in ["@@orders", "g@@", "a@@b@@c"] {
            assert_eq!(
                service_name(Some(bad), None),
                Err(ServiceNameError::Malformed),
                "{bad}"
            );
        }
        assert_eq!(
            ServiceNameError::Missing.to_string(),
            "Param 'serviceName' is required."
        );
    }

    #[test]
    fn instance_ids_are_nacos_simple_ids() {
        assert_eq!(
            instance_id("10.0.0.1", 8080, "DEFAULT", "DEFAULT_GROUP", "orders"),
            "10.0.0.1#8080#DEFAULT#DEFAULT_GROUP@@orders"
        );
    }

    #[test]
    fn booleans_accept_every_client_spelling_and_refuse_typos() {
        for t in ["true", "True", "TRUE", "yes", "on"] {
            assert_eq!(boolean(t), Some(true), "{t}");
        }
        for f in ["false", "False", "no", "off"] {
            assert_eq!(boolean(f), Some(false), "{f}");
        }
        assert_eq!(boolean("ture"), None);
        assert_eq!(boolean(""), None);
    }

    #[test]
    fn metadata_reads_json_and_the_old_pairs() {
        let m =
            metadata(r#"{"client": "python-v1", "weight": 3, "on": true, "gone": null}"#).unwrap();
        assert_eq!(m["client"], "python-v1");
        assert_eq!(m["weight"], "3");
        assert_eq!(m["on"], "true");
        assert!(!m.contains_key("gone"));
        let m = metadata("a=1,b=2").unwrap();
        assert_eq!((m["a"].as_str(), m["b"].as_str()), ("1", "2"));
        assert!(metadata("").unwrap().is_empty());
        assert!(metadata("{}").unwrap().is_empty());
    }

    #[test]
    fn bad_metadata_is_refused_with_nacos_words() {
        for bad in ["{not json", "a=1,b", r#"{"a":[1]}"#, "a=b=c"] {
            let e = metadata(bad).unwrap_err();
            assert_eq!(e.to_string(), format!("metadata format incorrect:{bad}"));
        }
    }
}
