use super::*;
use crate::clock::Clock;
use crate::config::Config;

fn api() -> Api {
    Api::new(Node::new(Config::default(), Clock::starting_at(1_000_000)))
}

fn svc(n: &str) -> ServiceName {
    ServiceName::new("public", "DEFAULT_GROUP", n)
}

fn instances(name: &ServiceName, n: u16) -> Vec<Instance> {
    (1..=n)
        .map(|p| {
            Instance::new(InstanceKey {
                service: name.clone(),
                cluster: "DEFAULT".into(),
                ip: "10.0.0.1".into(),
                port: p,
            })
        })
        .collect()
}

fn kinds(pushes: &[Push]) -> Vec<&'static str> {
    pushes
        .iter()
        .map(|p| match p {
            Push::Full(_) => "full",
            Push::Delta(_) => "delta",
        })
        .collect()
}

#[tokio::test]
async fn a_delta_session_gets_the_whole_list_then_deltas_a_full_only_one_whole_lists() {
    let api = api();
    let a = svc("a");
    api.register(&Principal::anyone(), &instances(&a, 20))
        .await
        .unwrap();
    let deltas = api.open_session();
    let full = api.open_session_with(PushMode::FullOnly);
    for s in [&deltas, &full] {
        s.subscribe(&a).unwrap();
        assert_eq!(kinds(&s.pushes(usize::MAX)), ["full"]);
        assert!(s.pushes(usize::MAX).is_empty(), "nothing changed since");
    }
    api.register(&Principal::anyone(), &instances(&svc("a"), 21)[20..])
        .await
        .unwrap();
    let d = deltas.pushes(usize::MAX);
    assert_eq!(kinds(&d), ["delta"]);
    let Push::Delta(delta) = &d[0] else {
        unreachable!()
    };
    assert_eq!(delta.decode().updated.len(), 1);
    let f = full.pushes(usize::MAX);
    assert_eq!(kinds(&f), ["full"]);
    let Push::Full(snap) = &f[0] else {
        unreachable!()
    };
    assert_eq!(snap.decode().instances.len(), 21);
    assert_eq!(
        snap,
        &api.query(&Principal::anyone(), &a, "", false).unwrap()
    );
}

#[tokio::test]
async fn one_call_stops_at_the_byte_budget_and_leaves_the_rest_marked() {
    let api = api();
    let s = api.open_session();
    let names: Vec<ServiceName> = (0..5).map(|i| svc(&format!("s{i}"))).collect();
    for n in &names {
        api.register(&Principal::anyone(), &instances(n, 30))
            .await
            .unwrap();
        s.subscribe(n).unwrap();
    }
    // Each whole list is over a kilobyte: a 1-byte budget still sends one.
    let mut got = Vec::new();
    for _ in 0..names.len() {
        let p = s.pushes(1);
        assert_eq!(p.len(), 1, "one push per call at a 1-byte budget");
        got.push(p[0].body().clone());
    }
    assert!(s.pushes(1).is_empty(), "all five sent, nothing left");
    let lists: Vec<ServiceName> = got
        .iter()
        .map(|b| Snapshot(b.clone()).decode().name)
        .collect();
    assert_eq!(lists, names, "in the order they were marked");
}

#[tokio::test]
async fn the_change_log_of_a_service_goes_with_its_last_subscriber() {
    let api = api();
    let a = svc("a");
    api.register(&Principal::anyone(), &instances(&a, 20))
        .await
        .unwrap();
    let (s1, s2) = (api.open_session(), api.open_session());
    for s in [&s1, &s2] {
        s.subscribe(&a).unwrap();
        s.pushes(usize::MAX);
    }
    assert!(s1.unsubscribe(&a).unwrap());
    assert!(api.node().store.is_watched(&a), "s2 still subscribes");
    s2.close(false).await;
    assert!(!api.node().store.is_watched(&a));
}

/// A front end that verifies its callers itself (the Nacos accessToken) sets the session's
/// principal: a new caller keeps only the subscriptions it may read, and the front end's
/// refusals count towards closing the connection.
#[test]
fn a_principal_set_by_the_front_end_bounds_the_session_and_refusals_count() {
    use crate::auth::TokenSet;
    use crate::auth::file::token_entry;
    let api = api();
    let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
    let text = token_entry("a", "ta", &s(&["x"]), &[]).unwrap()
        + &token_entry("b", "tb", &s(&["y"]), &[]).unwrap();
    api.node()
        .tokens
        .install(TokenSet::parse(&text, "t").unwrap());
    let (x, y) = (
        ServiceName::new("x", "DEFAULT_GROUP", "s"),
        ServiceName::new("y", "DEFAULT_GROUP", "s"),
    );
    let session = api.open_session();
    assert_eq!(session.subscribe(&x), Err(Rejection::Unauthenticated));
    session.set_principal(api.authenticate("ta").unwrap());
    session.subscribe(&x).unwrap();
    assert!(matches!(
        session.subscribe(&y),
        Err(Rejection::PermissionDenied { .. })
    ));
    session.set_principal(api.authenticate("tb").unwrap());
    session.subscribe(&y).unwrap();
    assert_eq!(
        session.unsubscribe(&x),
        Ok(false),
        "b may not read x: that subscription ended"
    );
    assert!(!session.auth_failures_exhausted());
    for _ in 1..AUTH_FAILURES_MAX {
        assert_eq!(session.refuse(), Rejection::Unauthenticated);
    }
    // The first refusal above (subscribing without a caller) counted too.
    assert!(session.auth_failures_exhausted());
}
