//! Mesh servers for the tests: one config for all (the compose topology, lobby dials game, a
//! quick dial policy) and a bounded wait on a server's state.
#![allow(dead_code, unreachable_pub)]

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use darkrift_etcd::cluster::ClusterConfig;
use darkrift_etcd::ConnectorConfig;
use darkrift_etcd_mesh::{DialPolicy, Mesh, MeshConfig, MeshState};
use darkrift_etcd_testing::EtcdCluster;
use tokio::time::Instant;

/// The cluster the compose topology runs (lobby dials game), one file for all three.
pub const CLUSTER: &str = include_str!("../../../compose/cluster.toml");

/// A server of `group` on 127.0.0.1:`port`, leases of `ttl`, a quick dial policy.
pub fn mesh_config(
    etcd: &EtcdCluster,
    prefix: &str,
    group: &str,
    port: u16,
    ttl: Duration,
) -> MeshConfig {
    let cluster = ClusterConfig::from_toml_str(CLUSTER).expect("cluster");
    MeshConfig {
        connector: ConnectorConfig::new(etcd.endpoints())
            .with_prefix(prefix)
            .with_lease_ttl(ttl),
        host: "127.0.0.1".into(),
        port,
        listen: SocketAddr::from((Ipv4Addr::LOCALHOST, port)),
        topology: cluster.topology(group).expect("group"),
        dial: DialPolicy {
            attempts: 4,
            min_delay: Duration::from_millis(50),
            max_delay: Duration::from_millis(500),
            connect_timeout: Duration::from_secs(1),
        },
        dial_overrides: BTreeMap::new(),
        identify_timeout: Duration::from_millis(800),
    }
}

/// Waits until `mesh`'s state satisfies `ok`, at most until `deadline`.
pub async fn wait_state(
    mesh: &Mesh,
    deadline: Instant,
    what: &str,
    ok: impl FnMut(&MeshState) -> bool,
) {
    let mut state = mesh.state();
    if tokio::time::timeout_at(deadline, state.wait_for(ok))
        .await
        .is_err()
    {
        panic!(
            "server {}: not {what} in time; state: {:?}",
            mesh.id(),
            *state.borrow()
        );
    }
}
