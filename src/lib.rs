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
//! | `alloc` | id choice, the one allocation transaction, reading its answer |
//! | [`backoff`] | jittered exponential delays that never exceed their bound |
//! | `membership` | the view: etcd changes in, exact joins and leaves out |
//! | `id_hash` | maps keyed by server id, hashed without `SipHash`'s cost (65,536 keys cannot flood) |
//! | `guard` | every other guarded write: the owner guard, one builder and reader per write |
//! | `timing` | every backoff, clamp, deadline and period, with its why |
//! | [`events`] | the event enum, its ordering rule, subscriptions and their catch-up |
//! | `view` | the view the watcher alone writes; where events are sequenced |
//! | [`config`] | typed settings and their validation |
//! | `lease` | lease grant, keep-alive task, local deadline (I/O) |
//! | `registration` | one registration's life: claim, keep, restore, recover; status and fence (I/O) |
//! | [`metrics`] | metric names (through the `metrics` facade) |
//! | `watcher` | list + watch state machine feeding `membership` (the prefix, or one range per watched group), generic over its etcd source (I/O) |
//! | `eviction` | peer-reported eviction: when to report, the tally's verdict, the anti-flap hold, withdrawal (pure `decide`, `reporter`; thin I/O) |
//! | `shared` | what a connector's registrations share: pool, settings, layout, view, allocation hint |
//! | [`connector`] | register / deregister / connection failure; wires the above together |
//! | [`admin`] | operator reads and the guarded eviction (`get`, `ls`, `evict`) (I/O) |
//! | [`blocking`] | the connector for hosts that are not async (owns a runtime) |
//! | [`signal`] | SIGTERM / SIGINT: when a host should deregister |
//! | [`cluster`] | DarkRift cluster config, topology and the upstream/downstream core (pure) |
//! | `monitor` | feature `monitor`: a `/metrics` and `/healthz` endpoint for hosts that have none |
//! | `discover` | feature `tower`: joins and leaves as a tower `Discover` for load balancers |
//!
//! Modules without a link are private. The public API is what a host calls: the connector
//! (async or [`blocking`]), its settings, events and errors, the operator reads of [`admin`],
//! the cluster core, and the helpers a host needs around them (health probe, signals,
//! metric names, [`backoff`]). etcd-client appears in it in two places only,
//! [`Connector::with_client`] and the source of [`Error::Etcd`], and is re-exported as
//! [`etcd_client`] so a host names the very version this crate builds on.
//!
//! The pure internals (`alloc`, `membership`) are public only with the hidden feature
//! `__internals`, for this repository's benchmark, fuzz targets and property tests: no
//! semver promise, not for hosts.
//!
//! See ARCHITECTURE.md in the repository for the data path and the recovery rules.
// The other crate lints (missing docs, unreachable pub, clippy pedantic) are in Cargo.toml's
// `[lints]`, for every target; the library forbids unsafe code outright.
#![forbid(unsafe_code)]
// docs.rs (package.metadata.docs.rs) marks what each feature adds.
#![cfg_attr(docsrs, feature(doc_cfg))]

/// Declares the pure internals: public but hidden with the `__internals` feature (the
/// benchmark, fuzz targets and property tests drive them directly), private otherwise.
macro_rules! internal_modules {
    ($($name:ident),* $(,)?) => {$(
        #[cfg(feature = "__internals")]
        #[doc(hidden)]
        pub mod $name;
        #[cfg(not(feature = "__internals"))]
        #[allow(
            unreachable_pub,
            dead_code,
            reason = "public (and used) only with the hidden `__internals` feature"
        )]
        mod $name;
    )*};
}

internal_modules!(alloc, membership);

pub mod admin;
pub mod backoff;
pub mod blocking;
mod client;
pub mod cluster;
pub mod config;
pub mod connector;
#[cfg(feature = "tower")]
#[cfg_attr(docsrs, doc(cfg(feature = "tower")))]
pub mod discover;
pub mod error;
pub mod events;
mod eviction;
mod guard;
pub mod health;
mod id_hash;
pub mod keys;
mod lease;
pub mod metrics;
#[cfg(feature = "monitor")]
#[cfg_attr(docsrs, doc(cfg(feature = "monitor")))]
pub mod monitor;
mod pool;
pub mod record;
mod registration;
mod shared;
pub mod signal;
mod timing;
mod view;
mod watcher;

pub use config::{ConnectorConfig, IdTakenPolicy};
pub use connector::{Connector, PeerStatus, ServerRegistryHandler};
pub use error::{Error, Result};
pub use events::{Event, EventStream};
pub use record::{Registration, ServerInfo};
pub use registration::{RegisterOptions, RegistrationHandle, RegistrationStatus};

/// The etcd client library this crate builds on, re-exported: the one escape hatch to
/// etcd-client's types, for [`Connector::with_client`] (share one client) and for matching on
/// the source of [`Error::Etcd`]. Its version follows this crate's, not semver of its own.
pub use etcd_client;

/// What [`list_servers`] read: the live servers at one revision.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct ServerList {
    /// The etcd revision every page was read at.
    pub revision: i64,
    /// The live servers, by id (the same rules as every watcher: one holder per id, records
    /// without a lease skipped).
    pub servers: Vec<ServerInfo>,
    /// Records under the prefix that were skipped: malformed, lease-less, or shadowed by an
    /// earlier claim on the same id.
    pub skipped: u64,
}

/// Reads the registry once: the live servers at one revision, and how many records under the
/// prefix were skipped. For listings; use a [`Connector`] to follow changes. It reads the
/// whole prefix, whatever [`ConnectorConfig::watch_groups`] says.
///
/// # Errors
/// [`Error::InvalidConfig`], [`Error::Unreachable`], or an etcd failure.
pub async fn list_servers(config: &ConnectorConfig) -> Result<ServerList> {
    let layout = config.validate()?;
    let client = client::connect(config, &layout.cursor_key(), true).await?;
    let settings = watcher::WatcherSettings::new(layout, config);
    let (revision, view) = watcher::list_once(&client, &settings).await?;
    Ok(ServerList {
        revision,
        servers: view.servers(),
        skipped: view.skipped(),
    })
}
