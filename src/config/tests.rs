use super::*;

#[test]
fn defaults_are_valid() {
    Config::default().validate().unwrap();
}

#[test]
fn file_overrides_defaults() {
    let (c, pos) = Config::parse_str(
        "good.toml",
        "listen = \"127.0.0.1:9000\"\nlease_floor_ms = 1000\nhttp = \"off\"\nlog_format = \"json\"\n",
    )
    .unwrap();
    assert_eq!(c.listen.port(), 9000);
    assert_eq!(c.lease_floor_ms, 1000);
    assert_eq!(c.http, None);
    assert_eq!(c.log_format, LogFormat::Json);
    assert_eq!(c.max_connections, 10_000);
    assert!(pos.contains("listen") && !pos.contains("members"));
}

fn err(text: &str) -> String {
    let (c, pos) = match Config::parse_str("f.toml", text) {
        Ok(x) => x,
        Err(e) => return e.to_string(),
    };
    pos.locate(c.validate().unwrap_err()).to_string()
}

#[test]
fn errors_name_the_key_and_where_it_is() {
    assert_eq!(
        err("node_id = 2\nlisen = \"127.0.0.1:9000\"\n"),
        "config file f.toml:2:1: key `lisen`: unknown field `lisen`, expected one of \
         `node_id`, `listen`, `peer_listen`, `http`, `members`, `peer_advertise`, \
         `cluster_token`, `cluster_name`, `token_file`, `tls_cert`, `tls_key`, `tls_ca`, \
         `max_connections`, `lease_floor_ms`, `push_delay_ms`, `lease_pass_ms`, \
         `client_idle_timeout_ms`, `sync_delay_ms`, `verify_interval_ms`, \
         `member_timeout_ms`, `log_level`, `log_format`, `nacos_listen`"
    );
    assert_eq!(
        err("\nmax_connections = \"many\"\n"),
        "config file f.toml:2:19: key `max_connections`: invalid type: string \"many\", \
         expected usize"
    );
    assert_eq!(
        err("members = [\n  \"127.0.0.1:8859\",\n  \"nowhere\",\n]\n"),
        "config file f.toml:3:3: key `members`: expected IP:PORT or HOST:PORT, got \
         \"nowhere\": no port"
    );
    assert_eq!(
        err("members = [\"127.0.0.1:8859\", \"127.0.0.1:9859\", \"127.0.0.1:8859\"]\n"),
        "config file f.toml:1:11: key `members`: 127.0.0.1:8859 is listed twice"
    );
    assert_eq!(
        err("lease_floor_ms = 5\n"),
        "config file f.toml:1:18: key `lease_floor_ms`: must be at least 100"
    );
    assert_eq!(
        err("http = \"everywhere\"\n"),
        "config file f.toml:1:8: key `http`: expected an address such as 127.0.0.1:8860, \
         or \"off\"; got \"everywhere\""
    );
    assert_eq!(
        err("log_format = \"xml\"\n"),
        "config file f.toml:1:14: key `log_format`: unknown variant `xml`, expected `text` \
         or `json`"
    );
    assert_eq!(
        err("listen = \"127.0.0.1:1\"\nx = = 1\n"),
        "config file f.toml:2:5: extra `=`, expected nothing"
    );
}

#[test]
fn peer_addresses_are_ips_or_host_names() {
    let ok = |s: &str| s.parse::<PeerAddr>().unwrap().to_string();
    assert_eq!(ok("127.0.0.1:8859"), "127.0.0.1:8859");
    assert_eq!(ok("[::1]:8859"), "[::1]:8859");
    assert_eq!(
        ok("Distro-0.distro-peers.default.svc:8859"),
        "distro-0.distro-peers.default.svc:8859"
    );
    for bad in [
        "distro-0",
        "distro-0:0",
        "distro-0:x",
        ":8859",
        "a b:1",
        "-a:1",
        "a..b:1",
    ] {
        assert!(bad.parse::<PeerAddr>().is_err(), "{bad}");
    }
    // A node known by a name finds itself in the list by peer_advertise.
    let members: Vec<PeerAddr> = ["distro-0.p:8859", "distro-1.p:8859"]
        .iter()
        .map(|s| s.parse().unwrap())
        .collect();
    let c = Config {
        peer_listen: "0.0.0.0:8859".parse().unwrap(),
        members: members.clone(),
        cluster_token: Some("long-enough-token".into()),
        ..Config::default()
    };
    assert!(
        c.validate()
            .unwrap_err()
            .to_string()
            .contains("0.0.0.0:8859")
    );
    let c = Config {
        peer_advertise: Some(members[1].clone()),
        ..c
    };
    c.validate().unwrap();
    assert_eq!(c.own_peer_addr(), members[1]);
}

#[test]
fn a_member_listed_twice_is_refused_however_it_is_written() {
    // (members, the duplicate named, if any)
    let table: &[(&[&str], Option<&str>)] = &[
        (&["127.0.0.1:8859", "127.0.0.1:9859"], None),
        (
            &["127.0.0.1:8859", "127.0.0.1:8859"],
            Some("127.0.0.1:8859"),
        ),
        (
            &["[::1]:8859", "127.0.0.1:8859", "[0:0::1]:8859"],
            Some("[::1]:8859"),
        ),
        (&["distro-0.p:8859", "distro-1.p:8859"], None),
        (
            &["Distro-0.p:8859", "distro-0.P:8859"],
            Some("distro-0.p:8859"),
        ),
        // Same host, another port: another member.
        (&["distro-0.p:8859", "distro-0.p:9859"], None),
    ];
    for (i, (members, dup)) in table.iter().enumerate() {
        let members: Vec<PeerAddr> = members.iter().map(|s| s.parse().unwrap()).collect();
        let c = Config {
            peer_advertise: Some(members[0].clone()),
            members,
            ..Config::default()
        };
        let got = c.validate().err().map(|e| e.to_string());
        let want = dup.map(|d| format!("invalid setting members: {d} is listed twice"));
        assert_eq!(got, want, "row {i}");
    }
}

#[test]
fn bad_values_are_named() {
    let c = Config {
        lease_floor_ms: 5,
        ..Config::default()
    };
    assert!(
        c.validate()
            .unwrap_err()
            .to_string()
            .contains("lease_floor_ms")
    );
    let c = Config {
        http: Some("127.0.0.1:8858".parse().unwrap()),
        ..Config::default()
    };
    assert_eq!(
        c.validate().unwrap_err().to_string(),
        "invalid setting http: 127.0.0.1:8858 is also the address of listen"
    );
}

/// TLS settings come as a whole: a certificate with its key, a CA only beside a certificate,
/// and in a cluster a CA for the peers' mutual TLS.
#[test]
fn tls_settings_come_as_a_whole() {
    let tls = |cert: bool, key: bool, ca: bool, clustered: bool| Config {
        tls_cert: cert.then(|| "node.pem".into()),
        tls_key: key.then(|| "node.key".into()),
        tls_ca: ca.then(|| "ca.pem".into()),
        members: if clustered {
            vec![
                "127.0.0.1:8859".parse().unwrap(),
                "127.0.0.1:9859".parse().unwrap(),
            ]
        } else {
            Vec::new()
        },
        cluster_token: clustered.then(|| "a-cluster-token".into()),
        ..Config::default()
    };
    let refusal = |c: Config| c.validate().unwrap_err().to_string();
    assert!(tls(true, true, false, false).validate().is_ok());
    assert!(tls(true, true, true, true).validate().is_ok());
    assert!(refusal(tls(true, false, false, false)).contains("tls_cert: needs its private key"));
    assert!(refusal(tls(false, true, false, false)).contains("tls_key: needs its certificate"));
    assert!(refusal(tls(false, false, true, false)).contains("tls_ca"));
    assert!(refusal(tls(true, true, false, true)).contains("mutual TLS"));
}

/// `distrod.example.toml` lists every key (set to its default, or commented out where
/// the default is "unset"), and parses to the defaults.
#[test]
fn the_example_file_lists_every_key_with_its_default() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/distrod.example.toml");
    let text = std::fs::read_to_string(path).unwrap();
    let (c, pos) = Config::parse_str(path, &text).unwrap();
    assert_eq!(
        c,
        Config::default(),
        "the example's values are the defaults"
    );
    for key in Config::keys() {
        let commented = text.lines().any(|l| {
            l.trim_start_matches(['#', ' '])
                .starts_with(&format!("{key} ="))
        });
        assert!(
            pos.contains(&key) || commented,
            "distrod.example.toml does not list `{key}`"
        );
    }
}
