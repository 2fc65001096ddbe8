//! Throw-away etcd clusters for darkrift-etcd's tests, examples and benchmark.
//!
//! A workspace member that is not published: the library's integration tests, examples, the
//! CLI's tests and the benchmark depend on it; users of the library never build it. It
//! launches real `etcd`
//! processes on loopback ports, each member with its own data directory inside a temporary
//! directory, and tears everything down when the [`EtcdCluster`] is dropped:
//!
//! * [`EtcdCluster::single`] starts a one-member cluster, [`EtcdCluster::three_node`] a
//!   three-member one; [`EtcdCluster::builder`] allows other sizes and extra `etcd` flags
//!   (for example `--auth-token`).
//! * Every constructor waits (bounded) until each member reports a leader, so a test can use
//!   the cluster right away.
//! * [`EtcdClusterBuilder::client_tls`] serves the client URLs over TLS (`https://`), with
//!   or without client certificate authentication (mutual TLS); the harness's own health
//!   checks and [`EtcdCluster::client`] then use TLS too.
//! * Members can be killed ([`EtcdCluster::kill`], SIGKILL), stopped gracefully
//!   ([`EtcdCluster::stop`], SIGTERM) and restarted on the same data directory and ports
//!   ([`EtcdCluster::restart`]), which is what failover tests need.
//!
//! The binary is taken from the `ETCD_BIN` environment variable if it is set, otherwise the
//! first `etcd` on `PATH` (see [`etcd_binary`]). The launch flags work with etcd 3.4 and 3.5.
//! Each member's stdout and stderr go to `<tempdir>/<member>.log`; when a member fails to start
//! the tail of that log is part of the returned [`TestingError`].
//!
//! Environment variables starting with `ETCD_` are removed from the members' environment,
//! because etcd would otherwise read them as configuration (and `ETCD_BIN` would make it warn).
//!
//! This crate is Unix-only: it relies on the `kill` command for SIGTERM.
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use darkrift_etcd_testing::EtcdCluster;
//!
//! let cluster = EtcdCluster::single().await?;
//! let mut client = etcd_client::Client::connect(cluster.endpoints(), None).await?;
//! client.put("key", "value", None).await?;
//! // Dropping the cluster kills the etcd process and removes its data directory.
//! drop(cluster);
//! # Ok(())
//! # }
//! ```
// One file per concern: where the binary comes from, ports, TLS material, the cluster and its
// members (faults and the builder beside it), and the TCP fault proxy.
mod binary;
mod cluster;
mod error;
mod grpc_proxy;
mod history;
mod port;
mod proxy;
mod tls;

pub use binary::{etcd_binary, ETCD_BIN_ENV};
pub use cluster::{EtcdCluster, EtcdClusterBuilder, DEFAULT_STARTUP_TIMEOUT};
pub use error::TestingError;
pub use grpc_proxy::{metric_sum, scrape, GrpcProxy};
pub use history::{replay_holders, HistoryReplay};
pub use port::free_port;
pub use proxy::{FaultProxy, Mode as ProxyMode, MAX_CONNECTIONS as PROXY_MAX_CONNECTIONS};
pub use tls::TlsFiles;
