//! The `join` scenario: a loaded cluster, then one more node started and timed until it serves
//! holding the whole data set.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use serde_json::{Map, Value, json};

use crate::conn::{CONVERGE_WAIT, NodeStatus, open_conns};
use crate::dataset::{load_data_set, service_names};
use crate::measure::round3;
use crate::spawn::{SpawnedCluster, node_status};

/// How often a joining node is asked whether it serves yet (a new connection each time: the
/// node may not listen yet).
const JOIN_POLL: Duration = Duration::from_millis(10);

/// Loads the data set into the running nodes, starts the last member, and times how long it
/// takes to load the cluster's data (a snapshot streamed from a peer) until it serves.
pub(crate) async fn join(
    c: &mut SpawnedCluster,
    instances: u64,
    services: u64,
) -> anyhow::Result<Map<String, Value>> {
    let servers = c.started_addrs();
    let names = Arc::new(service_names(services));
    let conns = open_conns(&servers, servers.len()).await?;
    let t = Instant::now();
    let loaded = load_data_set(&conns, instances, &names).await?;
    for conn in &conns {
        conn.close();
    }
    let status = NodeStatus::open(&servers).await?;
    let target = vec![loaded; servers.len()];
    status
        .wait_hold(t, &target, CONVERGE_WAIT, &Mutex::default())
        .await
        .context("the running nodes never held the whole data set")?;
    let load_s = t.elapsed().as_secs_f64();
    eprintln!(
        "distro-bench: {loaded} instances on every node after {load_s:.2} s; starting the joiner"
    );

    let joiner = c.client_addrs[c.children.len()].clone();
    let started = Instant::now();
    c.start_next()?;
    let deadline = started + CONVERGE_WAIT;
    let (ready_s, holding) = loop {
        if let Ok(s) = node_status(&joiner).await
            && s.ready
        {
            break (started.elapsed().as_secs_f64(), s.instances);
        }
        if let Some(st) = c.children.last_mut().expect("just started").try_wait()? {
            bail!("the joining node exited ({st}) before it served");
        }
        if Instant::now() >= deadline {
            bail!("the joining node did not serve within {CONVERGE_WAIT:?}");
        }
        tokio::time::sleep(JOIN_POLL).await;
    };
    if holding < loaded {
        bail!("the joining node served holding {holding} of the {loaded} instances");
    }
    let mut out = Map::new();
    out.insert("scenario".into(), json!("join"));
    out.insert("instances".into(), json!(loaded));
    out.insert("services".into(), json!(services));
    out.insert("load_s".into(), json!(round3(load_s)));
    out.insert("join_ready_s".into(), json!(round3(ready_s)));
    out.insert("join_holding".into(), json!(holding));
    Ok(out)
}
