//! # darkrift-etcd
//!
//! A server registry for DarkRift-style game-server clusters, on etcd: each server registers
//! and gets a cluster-unique `u16` id, and every server learns of every other through ordered
//! join and leave events. Liveness is an etcd lease: a crashed server leaves within its TTL.
//!
//! **Start here:** [`Connector::connect`], then [`Connector::subscribe`] (or
//! [`Connector::spawn_handler`]) and [`Connector::register_server`].
//!
//! ## Architecture
//! A pure core that knows etcd's data model but does no I/O, and a thin shell of tokio tasks:
//!
//! | module | role |
//! |---|---|
//! | [`keys`] | key layout of servers and allocator, key parsing |
//! | [`record`] | the prost `ServerRecord`, input validation |
//! | [`alloc`] | id choice, the one allocation transaction, reading its answer |
//! | [`membership`] | the view: etcd changes in, exact joins and leaves out |
//! | `guard` | every other guarded write: the owner guard, one builder and reader per write |
//! | `timing` | every backoff, clamp, deadline and period, with its why |
//! | [`events`] | the event enum, its ordering rule, subscriptions and their catch-up |
//! | `view` | the view the watcher alone writes; where events are sequenced |
//! | [`config`] | typed settings and their validation |
//! | [`lease`] | lease grant, keep-alive task, local deadline (I/O) |
//! | [`registration`] | one registration's life: claim, keep, restore, recover; status and fence (I/O) |
//! | [`metrics`] | metric names (through the `metrics` facade) |
//! | `watcher` | list + watch state machine feeding `membership`, generic over its etcd source (I/O) |
//! | `reporter` | peer-reported eviction: the reports filed, their withdrawal, the anti-flap hold (pure) |
//! | [`connector`] | register / deregister / connection failure; composes the above (I/O) |
//! | [`admin`] | operator reads and the guarded eviction (`get`, `ls`, `evict`) (I/O) |
//! | [`blocking`] | the connector for hosts that are not async (owns a runtime) |
//! | [`signal`] | SIGTERM / SIGINT: when a host should deregister |
//! | [`cluster`] | DarkRift cluster config, topology and the upstream/downstream core (pure) |
//! | `mesh` | feature `mesh`: a server-to-server TCP mesh driven by the cluster core (I/O) |
//! | `discover` | feature `tower`: joins and leaves as a tower `Discover` for load balancers |
//!
//! See ARCHITECTURE.md in the repository for the data path and the recovery rules.
// The other crate lints (missing docs, unreachable pub, clippy pedantic) are in Cargo.toml's
// `[lints]`, for every target; the library forbids unsafe code outright.
#![forbid(unsafe_code)]

pub mod admin;
pub mod alloc;
mod backoff;
pub mod blocking;
mod client;
pub mod cluster;
pub mod config;
pub mod connector;
#[cfg(feature = "tower")]
pub mod discover;
pub mod error;
pub mod events;
mod guard;
pub mod health;
pub mod keys;
pub mod lease;
pub mod membership;
#[cfg(feature = "mesh")]
pub mod mesh;
pub mod metrics;
pub mod monitor;
mod pool;
pub mod record;
pub mod registration;
mod reporter;
pub mod signal;
#[cfg(feature = "test-support")]
pub mod testing;
mod timing;
mod view;
mod watcher;

pub use config::{ConnectorConfig, IdTakenPolicy};
pub use connector::{Connector, PeerStatus, ServerRegistryHandler};
pub use error::{Error, Result};
pub use events::{Event, EventStream};
pub use record::{Registration, ServerInfo};
pub use registration::RegistrationStatus;

/// Reads the registry once: the live servers at one revision, and how many records under the
/// prefix were skipped as malformed. For listings; use a [`Connector`] to follow changes.
///
/// # Errors
/// [`Error::InvalidConfig`], [`Error::Unreachable`], or an etcd failure.
pub async fn list_servers(config: &ConnectorConfig) -> Result<(i64, Vec<ServerInfo>, u64)> {
    let layout = config.validate()?;
    let client = client::connect(config, &layout.cursor_key()).await?;
    let settings = watcher::WatcherSettings::new(layout, config);
    let (revision, view) = watcher::list_once(&client, &settings).await?;
    Ok((revision, view.servers(), view.skipped()))
}
