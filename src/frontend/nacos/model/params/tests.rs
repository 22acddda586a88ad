use super::*;

/// Query strings captured from the published clients against a logging listener.
const PY1_REGISTER: &str = "ip=127.0.0.1&port=22000&serviceName=cap-py1&weight=1.0&enable=True&healthy=True&clusterName=None&ephemeral=True&groupName=DEFAULT_GROUP&metadata=%7B%22client%22%3A+%22python-v1%22%7D";
const PY1_DEREGISTER: &str =
    "ip=127.0.0.1&port=22001&serviceName=cap-py1&ephemeral=True&groupName=DEFAULT_GROUP";
const PY1_LIST: &str = "serviceName=cap-py1&healthyOnly=False&groupName=DEFAULT_GROUP";
const PY1_BEAT: &str = "serviceName=DEFAULT_GROUP%40%40cap-py1&beat=%7B%22serviceName%22%3A+%22DEFAULT_GROUP%40%40cap-py1%22%2C+%22ip%22%3A+%22127.0.0.1%22%2C+%22port%22%3A+22000%2C+%22weight%22%3A+1.0%2C+%22ephemeral%22%3A+true%2C+%22metadata%22%3A+%7B%22client%22%3A+%22python-v1%22%7D%7D&groupName=DEFAULT_GROUP";
const NODE_REGISTER: &str = "namespaceId=public&serviceName=DEFAULT_GROUP%40%40cap-node&groupName=DEFAULT_GROUP&clusterName=DEFAULT&ip=127.0.0.1&port=24000&weight=1&enable=true&healthy=true&ephemeral=true&metadata=%7B%22client%22%3A%22node%22%7D";
const NODE_DEREGISTER: &str = "namespaceId=public&serviceName=DEFAULT_GROUP%40%40cap-node&clusterName=DEFAULT&ip=127.0.0.1&port=24001&ephemeral=true";
const NODE_SUBSCRIBE_POLL: &str = "namespaceId=public&serviceName=DEFAULT_GROUP%40%40cap-node&clusters=DEFAULT&udpPort=45552&clientIP=192.0.2.2&healthyOnly=false";
const NODE_BEAT: &str = "beat=%7B%22serviceName%22%3A%22DEFAULT_GROUP%40%40cap-node-hold%22%2C%22ip%22%3A%22127.0.0.1%22%2C%22port%22%3A24100%2C%22cluster%22%3A%22DEFAULT%22%2C%22weight%22%3A1%2C%22metadata%22%3A%7B%22client%22%3A%22node%22%2C%22preserved.heart.beat.interval%22%3A%221000%22%7D%2C%22scheduled%22%3Atrue%7D&namespaceId=public&serviceName=DEFAULT_GROUP%40%40cap-node-hold";

fn query(q: &str) -> RawParams {
    RawParams::parse(Some(q), None).unwrap()
}

#[test]
fn the_python_v1_register_means_the_default_cluster_and_group() {
    let p: InstanceParams = query(PY1_REGISTER).to();
    let f = p.form().unwrap();
    assert_eq!(
        f.key,
        InstanceRef {
            namespace: "public",
            group: "DEFAULT_GROUP",
            service: "cap-py1",
            cluster: "DEFAULT",
            ip: "127.0.0.1",
            port: 22000,
        }
    );
    assert_eq!(f.weight, Some(1.0));
    assert!(f.enabled && f.healthy);
    assert_eq!(f.metadata["client"], "python-v1");
    // Its deregistration names no cluster at all: the same instance.
    let d: InstanceParams = query(PY1_DEREGISTER).to();
    assert_eq!(d.key().unwrap().cluster, "DEFAULT");
    d.check_ephemeral().unwrap();
}

#[test]
fn the_node_register_carries_a_grouped_name() {
    let f = query(NODE_REGISTER).to::<InstanceParams>();
    let f = f.form().unwrap();
    assert_eq!((f.key.group, f.key.service), ("DEFAULT_GROUP", "cap-node"));
    assert_eq!(f.metadata["client"], "node");
    let d = query(NODE_DEREGISTER).to::<InstanceParams>();
    assert_eq!(d.key().unwrap().port, 24001);
}

#[test]
fn list_queries_keep_the_clusters_text_for_the_answer() {
    let p = query(NODE_SUBSCRIBE_POLL).to::<ListParams>();
    let q = p.query().unwrap();
    assert_eq!(q.clusters_text, "DEFAULT");
    assert_eq!(q.clusters, vec!["DEFAULT"]);
    assert!(!q.healthy_only);
    let p = query(PY1_LIST).to::<ListParams>();
    let q = p.query().unwrap();
    assert_eq!(
        (q.group, q.service, q.clusters_text),
        ("DEFAULT_GROUP", "cap-py1", "")
    );
    assert!(q.clusters.is_empty());
}

#[test]
fn full_beats_carry_the_instance_and_light_beats_do_not() {
    let p = query(NODE_BEAT).to::<BeatParams>();
    let info = p.info().unwrap();
    let b = p.beat(info.as_ref()).unwrap();
    assert_eq!(
        (b.key.service, b.key.cluster, b.key.ip, b.key.port),
        ("cap-node-hold", "DEFAULT", "127.0.0.1", 24100)
    );
    let full = b.full.unwrap();
    assert_eq!(full.metadata["preserved.heart.beat.interval"], "1000");
    assert_eq!(full.weight, 1.0);

    // The Python beat has no cluster in its JSON: the default cluster.
    let p = query(PY1_BEAT).to::<BeatParams>();
    let info = p.info().unwrap();
    let b = p.beat(info.as_ref()).unwrap();
    assert_eq!((b.key.cluster, b.key.port), ("DEFAULT", 22000));

    // A light beat (Java 1.x client): parameters only.
    let p = query("serviceName=DEFAULT_GROUP%40%40s&ip=10.0.0.1&port=80&clusterName=c")
        .to::<BeatParams>();
    let info = p.info().unwrap();
    let b = p.beat(info.as_ref()).unwrap();
    assert_eq!((b.key.cluster, b.key.port), ("c", 80));
    assert!(b.full.is_none());
}

#[test]
fn query_and_form_merge_and_the_first_value_wins() {
    let p = RawParams::parse(
        Some("serviceName=a&ip=1.1.1.1"),
        Some(b"ip=2.2.2.2&port=80&serviceName=b"),
    )
    .unwrap();
    assert_eq!(p.get("ip"), Some("1.1.1.1"));
    assert_eq!(p.get("serviceName"), Some("a"));
    assert_eq!(p.get("port"), Some("80"));
    let only_form = RawParams::parse(None, Some(b"serviceName=x&ip=1.2.3.4&port=9")).unwrap();
    let i: InstanceParams = only_form.to();
    assert_eq!(i.key().unwrap().service, "x");
}

#[test]
fn bad_parameters_get_nacos_errors() {
    let err = |q: &str| query(q).to::<InstanceParams>().form().unwrap_err();
    assert_eq!(
        err("ip=1.1.1.1&port=80").to_string(),
        "Param 'serviceName' is required."
    );
    assert_eq!(
        err("serviceName=s&port=80").to_string(),
        "Param 'ip' is required."
    );
    assert!(matches!(
        err("serviceName=s&ip=1.1.1.1&port=http"),
        ParamError::Invalid { name: "port", .. }
    ));
    assert!(matches!(
        err("serviceName=s&ip=1.1.1.1&port=70000"),
        ParamError::Invalid { name: "port", .. }
    ));
    assert_eq!(
        err("serviceName=s&ip=1.1.1.1&port=80&weight=10001").to_string(),
        "instance format invalid: The weights range from 0.0 to 10000.0"
    );
    assert!(matches!(
        err("serviceName=s&ip=1.1.1.1&port=80&healthy=ture"),
        ParamError::Invalid {
            name: "healthy",
            ..
        }
    ));
    assert_eq!(
        err("serviceName=s&ip=1.1.1.1&port=80&ephemeral=false"),
        ParamError::PersistentInstance
    );
    assert!(matches!(
        err("serviceName=s&ip=1.1.1.1&port=80&metadata=%7Bbad"),
        ParamError::Metadata(_)
    ));
    assert!(matches!(
        err("serviceName=%40%40s&ip=1.1.1.1&port=80"),
        ParamError::ServiceName(ServiceNameError::Malformed)
    ));
    let beat = query("serviceName=s&beat=%7Bnot").to::<BeatParams>();
    assert!(matches!(beat.info(), Err(ParamError::BadBeat { .. })));
}

#[test]
fn enabled_wins_over_enable() {
    let p =
        query("serviceName=s&ip=1.1.1.1&port=80&enable=true&enabled=false").to::<InstanceParams>();
    assert!(!p.form().unwrap().enabled);
    let p = query("serviceName=s&ip=1.1.1.1&port=80&enable=false").to::<InstanceParams>();
    assert!(!p.form().unwrap().enabled);
}

#[test]
fn oversized_and_overlong_parameter_sets_are_refused() {
    let many: String = (0..=PARAMS_MAX).map(|i| format!("p{i}=v&")).collect();
    assert!(matches!(
        RawParams::parse(Some(&many), None),
        Err(ParamError::TooMany { .. })
    ));
    let big = "a=".to_string() + &"x".repeat(PARAMS_BYTES_MAX);
    assert!(matches!(
        RawParams::parse(Some(&big), None),
        Err(ParamError::TooLarge { .. })
    ));
}

#[test]
fn service_list_pages() {
    let p = query("pageNo=2&pageSize=10&groupName=g").to::<ServiceListParams>();
    let page = p.page(true).unwrap();
    assert_eq!((page.group, page.page_no, page.page_size), ("g", 2, 10));
    let p = query("").to::<ServiceListParams>();
    assert!(matches!(
        p.page(true),
        Err(ParamError::Missing { name: "pageNo" })
    ));
    assert_eq!(p.page(false).unwrap().page_size, 20);
}
