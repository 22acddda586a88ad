//! The SDK in one page: register an instance (kept alive by heartbeats), query its service,
//! watch it for a few pushes, deregister.
//!
//! ```sh
//! cargo run --release --bin distrod &
//! cargo run --example sdk -- 127.0.0.1:8858
//! ```

use std::time::Duration;

use distro::client::{Client, ClientConfig, service_name};
use distro::model::{Instance, InstanceKey};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let servers: Vec<String> = std::env::args().skip(1).collect();
    let servers = if servers.is_empty() {
        vec!["127.0.0.1:8858".to_string()]
    } else {
        servers
    };
    let client = Client::connect(ClientConfig::new(servers)).await?;

    let name = service_name("", "", "example-orders");
    let key = InstanceKey {
        service: name.clone(),
        cluster: "DEFAULT".into(),
        ip: "10.0.0.7".into(),
        port: 8080,
    };
    let mut instance = Instance::new(key.clone());
    instance.metadata.push(("zone".into(), "a".into()));
    client.register(instance).await?;

    let snapshot = client.query(&name, true).await?;
    println!(
        "{} healthy instance(s) of {}",
        snapshot.instances.len(),
        name
    );

    let mut sub = client.subscribe(&name).await?;
    if let Ok(Some(s)) = tokio::time::timeout(Duration::from_secs(2), sub.next()).await {
        println!(
            "pushed: revision {} with {} instance(s)",
            s.revision,
            s.instances.len()
        );
    }

    client.deregister(&key).await?;
    if let Ok(Some(s)) = tokio::time::timeout(Duration::from_secs(2), sub.next()).await {
        println!(
            "pushed: revision {} with {} instance(s)",
            s.revision,
            s.instances.len()
        );
    }
    client.close();
    Ok(())
}
