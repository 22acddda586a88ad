use super::*;
use serde_json::json;

// Bodies captured from the published clients (nacos-sdk-python 3.2.0, nacos-sdk 0.8.3)
// against a logging listener.
const PY_SERVER_CHECK: &str = r#"{"headers": {}, "requestId": "", "module": ""}"#;
const PY_SETUP: &str = r#"{"headers": {}, "requestId": "", "module": "", "clientVersion": "Nacos-Python-Client:v3.2.0", "tenant": "", "labels": {"source": "sdk", "module": "naming"}, "abilityTable": {"mcp": true, "agent": true}}"#;
const PY_BATCH: &str = r#"{"headers": {}, "requestId": "", "module": "", "namespace": "public", "serviceName": "cap-py2", "groupName": "DEFAULT_GROUP", "type": "batchRegisterInstance", "instances": [{"instanceId": "", "ip": "127.0.0.1", "port": 21000, "weight": 1.0, "healthy": true, "enabled": true, "ephemeral": true, "clusterName": "", "serviceName": "", "metadata": {"client": "python-v2"}}, {"instanceId": "", "ip": "127.0.0.1", "port": 21001, "weight": 1.0, "healthy": true, "enabled": true, "ephemeral": true, "clusterName": "", "serviceName": "", "metadata": {"client": "python-v2"}}]}"#;
const PY_EMPTY_BATCH: &str = r#"{"headers": {}, "requestId": "", "module": "", "namespace": "public", "serviceName": "cap-py2", "groupName": "DEFAULT_GROUP", "type": "batchRegisterInstance", "instances": []}"#;
const PY_SUBSCRIBE: &str = r#"{"headers": {"app": "distro-reader"}, "requestId": "", "module": "", "namespace": "public", "serviceName": "cap-py2", "groupName": "DEFAULT_GROUP", "subscribe": true, "clusters": ""}"#;
const PY_DEREGISTER: &str = r#"{"headers": {}, "requestId": "", "module": "", "namespace": "public", "serviceName": "cap-py2-single", "groupName": "DEFAULT_GROUP", "type": "deregisterInstance", "instance": {"instanceId": "", "ip": "127.0.0.1", "port": 21002, "weight": 1.0, "healthy": true, "enabled": true, "ephemeral": true, "clusterName": "", "serviceName": "", "metadata": {}}}"#;
const PY_SERVICE_LIST: &str = r#"{"headers": {}, "requestId": "", "module": "", "namespace": "", "serviceName": "", "groupName": "DEFAULT_GROUP", "pageNo": 1, "pageSize": 100}"#;
const PY_NOTIFY_ACK: &str =
    r#"{"resultCode": 200, "errorCode": 0, "message": "", "requestId": "2"}"#;
const RS_SETUP: &str = r#"{"clientVersion": "Nacos-Rust-Client:0.8.3", "abilities": {"remoteAbility": {"supportRemoteConnection": true}, "configAbility": {"supportRemoteMetrics": true}, "namingAbility": {"supportDeltaPush": false, "supportRemoteMetric": false}}, "tenant": "public", "labels": {"source": "sdk", "module": "naming", "AppName": "distro-writer"}, "headers": {}, "requestId": null}"#;
const RS_HEALTH: &str = r#"{"headers": {}, "requestId": null}"#;
const RS_BATCH: &str = r#"{"type": "batchRegisterInstance", "instances": [{"instanceId": null, "ip": "127.0.0.1", "port": 23000, "weight": 1.0, "healthy": true, "enabled": true, "ephemeral": true, "clusterName": "DEFAULT", "serviceName": null, "metadata": {"client": "rust"}}], "headers": {}, "requestId": "5", "namespace": "public", "serviceName": "cap-rs", "groupName": "DEFAULT_GROUP"}"#;
const RS_QUERY: &str = r#"{"cluster": "", "healthyOnly": false, "udpPort": 0, "headers": {}, "requestId": null, "namespace": "public", "serviceName": "cap-rs", "groupName": "DEFAULT_GROUP"}"#;
const RS_SERVICE_LIST: &str = r#"{"pageNo": 1, "pageSize": 100, "selector": null, "headers": {}, "requestId": null, "namespace": "public", "serviceName": null, "groupName": "DEFAULT_GROUP"}"#;
const RS_NOTIFY_ACK: &str =
    r#"{"resultCode": 200, "errorCode": 0, "message": "Response ok", "requestId": "9"}"#;

#[test]
fn python_requests_decode() {
    assert_eq!(
        decode("ServerCheckRequest", PY_SERVER_CHECK.as_bytes()).unwrap(),
        ClientMessage::ServerCheck(ServerCheckRequest {
            request_id: Some(String::new())
        })
    );
    let ClientMessage::ConnectionSetup(s) =
        decode("ConnectionSetupRequest", PY_SETUP.as_bytes()).unwrap()
    else {
        panic!("setup")
    };
    assert_eq!(
        s.client_version.as_deref(),
        Some("Nacos-Python-Client:v3.2.0")
    );
    assert_eq!(s.labels.unwrap()["module"], "naming");

    let ClientMessage::BatchInstance(b) =
        decode("BatchInstanceRequest", PY_BATCH.as_bytes()).unwrap()
    else {
        panic!("batch")
    };
    assert_eq!(b.r#type.as_deref(), Some(BATCH_REGISTER_INSTANCE));
    let instances = b.instances.unwrap();
    assert_eq!(instances.len(), 2);
    assert_eq!(instances[1].port, Some(21001));
    // Blank cluster: the default cluster, by the naming rules.
    assert_eq!(
        names::cluster(instances[0].cluster_name.as_deref()),
        "DEFAULT"
    );
    assert_eq!(instances[0].metadata["client"], "python-v2");

    let ClientMessage::BatchInstance(b) =
        decode("BatchInstanceRequest", PY_EMPTY_BATCH.as_bytes()).unwrap()
    else {
        panic!("empty batch")
    };
    assert_eq!(b.instances, Some(vec![]));

    let ClientMessage::Subscribe(s) =
        decode("SubscribeServiceRequest", PY_SUBSCRIBE.as_bytes()).unwrap()
    else {
        panic!("subscribe")
    };
    assert_eq!((s.subscribe, s.clusters.as_deref()), (Some(true), Some("")));

    let ClientMessage::Instance(i) = decode("InstanceRequest", PY_DEREGISTER.as_bytes()).unwrap()
    else {
        panic!("instance")
    };
    assert_eq!(i.r#type.as_deref(), Some(DEREGISTER_INSTANCE));
    assert_eq!(i.instance.unwrap().port, Some(21002));

    let ClientMessage::ServiceList(l) =
        decode("ServiceListRequest", PY_SERVICE_LIST.as_bytes()).unwrap()
    else {
        panic!("list")
    };
    // Python names no namespace here: `public`.
    assert_eq!(names::namespace(l.namespace.as_deref()), "public");
    assert_eq!((l.page_no, l.page_size), (Some(1), Some(100)));

    let ClientMessage::NotifyAck(a) =
        decode("NotifySubscriberResponse", PY_NOTIFY_ACK.as_bytes()).unwrap()
    else {
        panic!("ack")
    };
    assert!(a.succeeded());
    assert_eq!(a.request_id(), "2");
}

#[test]
fn rust_requests_decode_with_their_nulls() {
    let ClientMessage::ConnectionSetup(s) =
        decode("ConnectionSetupRequest", RS_SETUP.as_bytes()).unwrap()
    else {
        panic!("setup")
    };
    assert_eq!(s.tenant.as_deref(), Some("public"));
    assert_eq!(s.request_id, None);
    assert_eq!(
        decode("HealthCheckRequest", RS_HEALTH.as_bytes()).unwrap(),
        ClientMessage::HealthCheck(HealthCheckRequest { request_id: None })
    );
    let ClientMessage::BatchInstance(b) =
        decode("BatchInstanceRequest", RS_BATCH.as_bytes()).unwrap()
    else {
        panic!("batch")
    };
    let i = &b.instances.unwrap()[0];
    assert_eq!(
        (i.instance_id.as_deref(), i.service_name.as_deref()),
        (None, None)
    );
    let ClientMessage::ServiceQuery(q) =
        decode("ServiceQueryRequest", RS_QUERY.as_bytes()).unwrap()
    else {
        panic!("query")
    };
    assert_eq!(
        (q.cluster.as_deref(), q.healthy_only),
        (Some(""), Some(false))
    );
    assert!(matches!(
        decode("ServiceListRequest", RS_SERVICE_LIST.as_bytes()).unwrap(),
        ClientMessage::ServiceList(ServiceListRequest { selector: None, .. })
    ));
    let ClientMessage::NotifyAck(a) =
        decode("NotifySubscriberResponse", RS_NOTIFY_ACK.as_bytes()).unwrap()
    else {
        panic!("ack")
    };
    assert_eq!(a.request_id(), "9");
}

#[test]
fn unknown_types_and_bad_bodies_are_errors() {
    let e = decode("ConfigQueryRequest", b"{}").unwrap_err();
    assert_eq!(e.error_code(), error_code::NO_HANDLER);
    let e = decode("InstanceRequest", b"{\"instance\": 5}").unwrap_err();
    assert!(matches!(
        e,
        BodyError::Malformed {
            type_name: "InstanceRequest",
            ..
        }
    ));
    assert_eq!(e.error_code(), error_code::INVALID_PARAM);
    assert!(decode("InstanceRequest", b"not json").is_err());
    assert!(
        decode(
            "InstanceRequest",
            b"{\"instance\": {\"metadata\": {\"a\": [1]}}}"
        )
        .is_err()
    );
    // A payload with no body at all reads as an empty request.
    assert!(decode("HealthCheckRequest", b"").is_ok());
    // The unknown type's name is kept short in the error.
    let long = "X".repeat(10_000);
    let BodyError::UnknownType { type_name } = decode(&long, b"{}").unwrap_err() else {
        panic!("unknown")
    };
    assert_eq!(type_name.len(), 128);
}

/// The Rust client's response head (nacos-macro 0.3: `result_code: i32`, `error_code: i32`
/// required; `message`, `request_id` optional) and the Python client's (pydantic `str`
/// fields that refuse null).
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
#[allow(dead_code)]
struct RustClientHead {
    result_code: i32,
    error_code: i32,
    message: Option<String>,
    request_id: Option<String>,
}

#[test]
fn responses_carry_both_codes_and_no_null_strings() {
    let r = ServerCheckResponse {
        head: ResponseHead::ok(&Some("1".into())),
        connection_id: "1700000000000_127.0.0.1_50000".into(),
        support_ability_negotiation: true,
    };
    let v: serde_json::Value = serde_json::from_slice(&r.to_json()).unwrap();
    assert_eq!(
        v,
        json!({"resultCode": 200, "errorCode": 0, "message": "", "requestId": "1",
            "connectionId": "1700000000000_127.0.0.1_50000", "supportAbilityNegotiation": true})
    );
    let e = ErrorResponse {
        head: ResponseHead::fail(
            &None,
            error_code::UN_REGISTER,
            "Connection is unregistered.",
        ),
    };
    let head: RustClientHead = serde_json::from_slice(&e.to_json()).unwrap();
    assert_eq!((head.result_code, head.error_code), (500, 301));
    assert_eq!(head.request_id.as_deref(), Some(""));
    assert_eq!(ErrorResponse::TYPE, "ErrorResponse");
    assert_eq!(InstanceResponse::TYPE, "InstanceResponse");
    assert_eq!(QueryServiceResponse::TYPE, "QueryServiceResponse");
}

#[test]
fn pushes_carry_headers_and_a_string_request_id() {
    let info = ServiceInfo {
        name: "orders".into(),
        group_name: "DEFAULT_GROUP".into(),
        clusters: "".into(),
        cache_millis: 10_000,
        hosts: vec![],
        last_ref_time: 1,
        checksum: "".into(),
        all_ips: false,
        reach_protection_threshold: false,
        valid: true,
    };
    let push = NotifySubscriberRequest {
        head: ServerRequestHead::new(7, "naming"),
        namespace: "public".into(),
        service_name: "orders".into(),
        group_name: "DEFAULT_GROUP".into(),
        service_info: info,
    };
    let v: serde_json::Value = serde_json::from_slice(&push.to_json()).unwrap();
    assert_eq!(v["headers"], json!({}));
    assert_eq!(v["requestId"], "7");
    assert_eq!(v["module"], "naming");
    assert_eq!(v["serviceInfo"]["hosts"], json!([]));
    assert_eq!(NotifySubscriberRequest::TYPE, "NotifySubscriberRequest");
    let ack = SetupAckRequest {
        head: ServerRequestHead::new(1, "internal"),
        ability_table: None,
    };
    let v: serde_json::Value = serde_json::from_slice(&ack.to_json()).unwrap();
    assert_eq!(v["abilityTable"], serde_json::Value::Null);
    assert!(v.as_object().unwrap().contains_key("abilityTable"));
}
