//! The DarkRift cluster on top of the registry: which groups exist and who dials whom
//! ([`config`], [`topology`]; one group as configured, [`GroupConfig`], is the input of both,
//! in a module of its own so that the dependency runs one way, `config` → `topology`), and the upstream / downstream sets a server keeps as peers join
//! and leave ([`core`], DarkRift's `RemoteServerManager`). Everything here is pure: feed
//! [`ClusterCore`] the events of a [`crate::Connector`] and act on the [`ClusterEvent`]s.

pub mod config;
pub mod core;
mod group;
pub mod topology;

pub use self::core::{ClusterCore, ClusterEvent, CoreStats};
pub use config::{
    ClusterConfig, ClusterConfigError, GroupConfig, Placement, ServerSettings, Visibility,
};
pub use topology::{Direction, Topology};
