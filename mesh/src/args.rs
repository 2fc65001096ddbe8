//! The command line of a mesh server (`mesh/src/main.rs`), kept in the mesh crate's library so
//! the compose test can check the compose file's commands against it.
//!
//! The registry options and this server's identity use the CLI's flags and environment
//! variables (`DARKRIFT_ETCD_ENDPOINTS`, `_PREFIX`, `_TTL`, `_GROUP`, `_HOST` — on Kubernetes
//! the pod IP —, `_PORT`, `_METRICS_ADDR`, `_EVICTION_MIN_REPORTERS`, `_EVICTION_WINDOW`), and
//! durations read alike (`10`, `10s`, `1m`).

use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;

use super::{DialPolicy, MeshConfig, DEFAULT_IDENTIFY_TIMEOUT};
use darkrift_etcd::cluster::{ClusterConfig, ClusterConfigError, ServerSettings};
use darkrift_etcd::config::{ConnectorConfig, EvictionConfig, DEFAULT_ENDPOINT};
use darkrift_etcd::keys::DEFAULT_PREFIX;

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
    /// Lease TTL (`10`, `10s`, `1m`; whole seconds): a crashed server leaves within about
    /// this long.
    #[arg(long, env = "DARKRIFT_ETCD_TTL", default_value = "10s", value_parser = parse_ttl)]
    pub ttl: Duration,
    /// Cluster file: `.toml`, or DarkRift's `Cluster.config` XML (`.config` / `.xml`).
    #[arg(long)]
    pub cluster: PathBuf,
    /// This server's group (one of the cluster's).
    #[arg(long, env = "DARKRIFT_ETCD_GROUP")]
    pub group: String,
    /// Advertised host: what peers dial.
    #[arg(long, env = "DARKRIFT_ETCD_HOST")]
    pub host: String,
    /// Advertised port: what peers dial; also the listening port unless `--listen` is given.
    #[arg(long, env = "DARKRIFT_ETCD_PORT")]
    pub port: u16,
    /// Serve Prometheus `/metrics` and `/healthz` (200 while registered and fresh) here.
    #[arg(long, env = "DARKRIFT_ETCD_METRICS_ADDR", value_name = "HOST:PORT")]
    pub metrics_addr: Option<SocketAddr>,
    /// Listening address (default `0.0.0.0:<port>`).
    #[arg(long)]
    pub listen: Option<SocketAddr>,
    /// Peer-reported eviction (turns it on): distinct live servers that must report a peer
    /// unreachable before it is removed. With it, a crashed upstream peer leaves at once
    /// instead of one TTL later (its process refuses our connect, see the README).
    #[arg(long, env = "DARKRIFT_ETCD_EVICTION_MIN_REPORTERS", value_name = "N",
          value_parser = clap::value_parser!(u32).range(1..))]
    pub eviction_min_reporters: Option<u32>,
    /// Peer-reported eviction (turns it on): how recent a report must be to count (default
    /// 30s).
    #[arg(long, env = "DARKRIFT_ETCD_EVICTION_WINDOW", value_name = "DURATION",
          value_parser = parse_window)]
    pub eviction_window: Option<Duration>,
    /// Dial attempts per round before the registry is asked about the peer (a refused connect
    /// ends the round at once).
    #[arg(long, default_value_t = 5)]
    pub dial_attempts: u32,
    /// Watch every group of the prefix instead of this server's interest (its own group, the
    /// groups it dials and those that dial it, from the cluster file).
    #[arg(long)]
    pub watch_all: bool,
    /// Bound on an incoming connection's Identify, in seconds.
    #[arg(long, default_value_t = DEFAULT_IDENTIFY_TIMEOUT.as_secs())]
    pub identify_timeout: u64,
}

/// A TTL as the CLI reads it: a duration of whole seconds.
fn parse_ttl(text: &str) -> Result<Duration, String> {
    let ttl = darkrift_etcd::config::layers::parse_duration(text)?;
    if ttl.subsec_nanos() != 0 || ttl.is_zero() {
        return Err(format!(
            "{text:?}: the TTL is a whole number of seconds, at least 1"
        ));
    }
    Ok(ttl)
}

/// An eviction window as the CLI reads it: any positive duration.
fn parse_window(text: &str) -> Result<Duration, String> {
    let window = darkrift_etcd::config::layers::parse_duration(text)?;
    if window.is_zero() {
        return Err(format!("{text:?}: the window must be more than zero"));
    }
    Ok(window)
}

impl MeshArgs {
    /// The eviction settings: on when either flag (or variable) is given, the other one at
    /// its default, as the CLI does.
    fn eviction(&self) -> Option<EvictionConfig> {
        if self.eviction_min_reporters.is_none() && self.eviction_window.is_none() {
            return None;
        }
        let default = EvictionConfig::default();
        Some(EvictionConfig {
            min_reporters: self.eviction_min_reporters.unwrap_or(default.min_reporters),
            window: self.eviction_window.unwrap_or(default.window),
        })
    }

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
        let mut connector = ConnectorConfig::new(self.endpoints.clone())
            .with_prefix(self.prefix.clone())
            .with_lease_ttl(self.ttl);
        connector.eviction = self.eviction();
        if !self.watch_all {
            // Only what this server acts on: etcd sends it nothing about other groups.
            connector.watch_groups = placement.topology.interest();
        }
        Ok(MeshConfig {
            connector,
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
            dial_overrides: std::collections::BTreeMap::new(),
            identify_timeout: Duration::from_secs(self.identify_timeout.max(1)),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ttl_reads_like_the_cli_and_is_whole_seconds() {
        assert_eq!(parse_ttl("5"), Ok(Duration::from_secs(5)));
        assert_eq!(parse_ttl("5s"), Ok(Duration::from_secs(5)));
        assert_eq!(parse_ttl("1m"), Ok(Duration::from_secs(60)));
        assert!(parse_ttl("1500ms").is_err());
        assert!(parse_ttl("0").is_err());
        assert!(parse_ttl("soon").is_err());
    }

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
        assert_eq!(c.connector.eviction, None, "eviction is off by default");
        assert_eq!(
            c.connector.watch_groups,
            ["game", "lobby"],
            "its interest by default"
        );
        let mut all = args.clone();
        all.watch_all = true;
        assert!(all.to_config().unwrap().connector.watch_groups.is_empty());

        let base = ["mesh", "--cluster", path, "--group", "lobby", "--host", "h"];
        let with = |extra: &[&str]| {
            let mut argv: Vec<&str> = base.to_vec();
            argv.extend(["--port", "7001"]);
            argv.extend(extra);
            MeshArgs::try_parse_from(argv).map(|a| a.to_config().unwrap().connector.eviction)
        };
        assert_eq!(
            with(&["--eviction-min-reporters", "3", "--eviction-window", "5s"]).unwrap(),
            Some(EvictionConfig {
                min_reporters: 3,
                window: Duration::from_secs(5)
            })
        );
        assert_eq!(
            with(&["--eviction-window", "1500ms"]).unwrap(),
            Some(EvictionConfig {
                min_reporters: 2,
                window: Duration::from_millis(1500)
            }),
            "either flag turns it on"
        );
        assert!(with(&["--eviction-min-reporters", "0"]).is_err());
        assert!(with(&["--eviction-window", "0s"]).is_err());

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
