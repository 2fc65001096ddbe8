//! The command line of a mesh server (`examples/mesh.rs`), kept in the library so the compose
//! test can check the compose file's commands against it.
//!
//! The registry options use the CLI's names and environment variables
//! (`DARKRIFT_ETCD_ENDPOINTS`, `DARKRIFT_ETCD_PREFIX`).

use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;

use super::{DialPolicy, MeshConfig, DEFAULT_IDENTIFY_TIMEOUT};
use crate::cluster::{ClusterConfig, ClusterConfigError, ServerSettings};
use crate::config::{ConnectorConfig, DEFAULT_ENDPOINT};
use crate::keys::DEFAULT_PREFIX;

/// A mesh server: registers in a group, dials its upstream peers, accepts its downstream
/// peers, prints its mesh changes as JSON lines.
#[derive(Debug, Clone, Parser)]
#[command(name = "mesh", version, about)]
pub struct MeshArgs {
    /// etcd endpoints, comma-separated.
    #[arg(long, env = "DARKRIFT_ETCD_ENDPOINTS", default_value = DEFAULT_ENDPOINT, value_delimiter = ',')]
    pub endpoints: Vec<String>,
    /// Key prefix of the registry.
    #[arg(long, env = "DARKRIFT_ETCD_PREFIX", default_value = DEFAULT_PREFIX)]
    pub prefix: String,
    /// Lease TTL in whole seconds: a crashed server leaves within about this long.
    #[arg(long, default_value_t = 10)]
    pub ttl: u64,
    /// Cluster file: `.toml`, or DarkRift's `Cluster.config` XML (`.config` / `.xml`).
    #[arg(long)]
    pub cluster: PathBuf,
    /// This server's group (one of the cluster's).
    #[arg(long)]
    pub group: String,
    /// Advertised host: what peers dial.
    #[arg(long)]
    pub host: String,
    /// Advertised port: what peers dial; also the listening port unless `--listen` is given.
    #[arg(long)]
    pub port: u16,
    /// Listening address (default `0.0.0.0:<port>`).
    #[arg(long)]
    pub listen: Option<SocketAddr>,
    /// Dial attempts per round before the registry is asked about the peer.
    #[arg(long, default_value_t = 5)]
    pub dial_attempts: u32,
    /// Bound on an incoming connection's Identify, in seconds.
    #[arg(long, default_value_t = DEFAULT_IDENTIFY_TIMEOUT.as_secs())]
    pub identify_timeout: u64,
}

impl MeshArgs {
    /// Reads the cluster file and checks this server's place in it.
    ///
    /// # Errors
    /// A [`ClusterConfigError`]: unreadable or invalid cluster file, group not in the
    /// cluster, no advertised host or port.
    pub fn to_config(&self) -> Result<MeshConfig, ClusterConfigError> {
        let cluster = ClusterConfig::from_file(&self.cluster)?;
        let settings = ServerSettings {
            group: Some(self.group.clone()),
            advertised_host: Some(self.host.clone()),
            advertised_port: Some(self.port),
        };
        let placement =
            cluster
                .place(&settings)?
                .ok_or_else(|| ClusterConfigError::UnknownServerGroup {
                    group: self.group.clone(),
                    known: String::new(),
                })?;
        Ok(MeshConfig {
            connector: ConnectorConfig::new(self.endpoints.clone())
                .with_prefix(self.prefix.clone())
                .with_lease_ttl(Duration::from_secs(self.ttl)),
            host: placement.host,
            port: placement.port,
            listen: self
                .listen
                .unwrap_or(SocketAddr::from((Ipv4Addr::UNSPECIFIED, self.port))),
            topology: placement.topology,
            dial: DialPolicy {
                attempts: self.dial_attempts.max(1),
                ..DialPolicy::default()
            },
            identify_timeout: Duration::from_secs(self.identify_timeout.max(1)),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arguments_build_a_placed_config() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("cluster.toml");
        std::fs::write(
            &file,
            "[[groups]]\nname='lobby'\nvisibility='external'\nconnects_to=['game']\n\
             [[groups]]\nname='game'\nvisibility='internal'\n",
        )
        .unwrap();
        let path = file.to_str().unwrap();
        let args = MeshArgs::try_parse_from([
            "mesh",
            "--cluster",
            path,
            "--group",
            "lobby",
            "--host",
            "lobby1",
            "--port",
            "7001",
            "--endpoints",
            "http://a:2379,http://b:2379",
        ])
        .unwrap();
        let c = args.to_config().unwrap();
        assert_eq!(c.connector.endpoints, ["http://a:2379", "http://b:2379"]);
        assert_eq!(c.listen, "0.0.0.0:7001".parse().unwrap());
        assert_eq!((c.host.as_str(), c.port), ("lobby1", 7001));
        assert_eq!(c.topology.upstream_groups().collect::<Vec<_>>(), ["game"]);

        let bad = MeshArgs::try_parse_from([
            "mesh",
            "--cluster",
            path,
            "--group",
            "chat",
            "--host",
            "h",
            "--port",
            "1",
        ])
        .unwrap();
        assert!(matches!(
            bad.to_config(),
            Err(ClusterConfigError::UnknownServerGroup { .. })
        ));
        let no_port = MeshArgs::try_parse_from([
            "mesh",
            "--cluster",
            path,
            "--group",
            "game",
            "--host",
            "h",
            "--port",
            "0",
        ])
        .unwrap();
        assert!(matches!(
            no_port.to_config(),
            Err(ClusterConfigError::MissingAdvertisedAddress { .. })
        ));
    }
}
