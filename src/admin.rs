//! Operator reads and writes (`darkrift-etcd get`, `ls`, `evict`): one registration by id with
//! what etcd knows about it (lease, TTL left, create revision), a listing, and a guarded
//! eviction.
//!
//! An id is found through its slot key (`<prefix>.alloc/slot/<id>`), whose value names the
//! server key: one read instead of a scan of every group.
//!
//! # Eviction
//! [`Admin::evict`] removes exactly the registration it was given, never a newer holder of
//! the same id: one transaction compares the server key's create revision and the slot's
//! lease with what was read, and only if they match is that lease revoked, which deletes key
//! and slot in one revision. Revoking is the deletion, not a step after it: a key deleted
//! while its lease still lived would be restored by a running holder on that lease before the
//! revoke deleted it again, and its peers would see two leaves and two joins for one evict.
//! A holder that is still running sees its key gone and follows its `on_key_removed` policy
//! ([`crate::config::KeyRemovedPolicy`]): `restore` (the default) finds its lease revoked and
//! re-registers, with the same id unless it was taken meanwhile (peers see one leave and one
//! join); `stop` stops it.
//!
//! Between the check and the revoke the lease can only be the holder's own: a newer holder of
//! the id has a lease of its own, which the revoke does not touch. Only that same holder
//! re-creating its key on the same lease in between (it restores after someone else deleted
//! it) is removed although its create revision is newer: it is the same process and lease.

use std::time::Duration;

use futures::StreamExt;

use crate::client::{connect, retrying, retrying_txn};
use crate::config::ConnectorConfig;
use crate::error::{is_lease_not_found, Result};
use crate::guard::{self, evict::Evicted, Answer, Owner};
use crate::keys::{KeyLayout, ParsedKey};
use crate::membership::KeyValue;
use crate::pool::Pool;
use crate::record::{decode, ServerInfo};
use crate::watcher::ServerRange;

/// Lease TTL reads in flight at once while listing: enough to hide round trips, few enough
/// not to flood etcd for a large registry.
const TTL_READS_IN_FLIGHT: usize = 16;

/// One registration as etcd holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// The decoded record.
    pub server: ServerInfo,
    /// The server key.
    pub key: String,
    /// The lease the key is bound to.
    pub lease: i64,
    /// The key's create revision: the registration's identity.
    pub create_revision: i64,
    /// The key's last modification.
    pub mod_revision: i64,
    /// Time left on the lease when read; `None` when the lease was already gone.
    pub ttl_left: Option<Duration>,
}

/// A listing at one revision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listing {
    /// The revision every page was read at.
    pub revision: i64,
    /// The registrations, by id.
    pub entries: Vec<Entry>,
    /// Records under the prefix skipped by the membership rules: malformed, lease-less, or
    /// shadowed by an earlier claim on the same id.
    pub skipped: u64,
}

/// What [`Admin::evict`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Eviction {
    /// The registration's lease was revoked, deleting its key and slot at `revision`.
    Evicted {
        /// Revision of the deletion.
        revision: i64,
    },
    /// The id is no longer held by that registration (it left, or a newer one holds the id):
    /// nothing was deleted.
    Changed,
}

/// An etcd connection for operator commands.
#[derive(Clone)]
pub struct Admin {
    client: Pool,
    layout: KeyLayout,
    request_timeout: Duration,
    page_size: i64,
}

impl std::fmt::Debug for Admin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Admin")
            .field("prefix", &self.layout.prefix())
            .finish_non_exhaustive()
    }
}

impl Admin {
    /// Validates `config` and connects (bounded by its connect timeout). For one-shot use:
    /// when every endpoint refuses the connection, it fails at once rather than retrying for
    /// the whole connect timeout.
    ///
    /// # Errors
    /// [`Error::InvalidConfig`](crate::Error::InvalidConfig), [`Error::Unreachable`](crate::Error::Unreachable), [`Error::Tls`](crate::Error::Tls), [`Error::Auth`](crate::Error::Auth).
    pub async fn connect(config: &ConnectorConfig) -> Result<Self> {
        let layout = config.validate()?;
        let client = connect(config, &layout.cursor_key(), true).await?;
        Ok(Admin {
            client,
            layout,
            request_timeout: config.request_timeout,
            page_size: config.page_size,
        })
    }

    /// Shares a connector's etcd connection and settings.
    ///
    /// # Errors
    /// [`Error::InvalidConfig`](crate::Error::InvalidConfig) if the connector's prefix is invalid (it was checked when the
    /// connector connected, so only in theory).
    pub fn from_connector(connector: &crate::Connector) -> Result<Self> {
        let config = connector.config();
        Ok(Admin {
            client: connector.pool().clone(),
            layout: crate::keys::KeyLayout::new(&config.prefix)?,
            request_timeout: config.request_timeout,
            page_size: config.page_size,
        })
    }

    /// The registration holding `id`, and the revision it was read at.
    ///
    /// # Errors
    /// An etcd failure.
    pub async fn get(&self, id: u16) -> Result<(i64, Option<Entry>)> {
        let slot = self.get_key("read slot", self.layout.slot_key(id)).await?;
        let Some(slot) = slot.1 else {
            return Ok((slot.0, None));
        };
        let key = String::from_utf8_lossy(slot.value()).into_owned();
        let (revision, kv) = self.get_key("read server", key).await?;
        let Some(entry) = kv
            .map(|kv| crate::watcher::convert_kv(&kv))
            .and_then(|kv| self.entry(&kv))
            .filter(|e| e.server.id == id)
        else {
            return Ok((revision, None));
        };
        let ttl_left = self.ttl_left(entry.lease).await?;
        Ok((revision, Some(Entry { ttl_left, ..entry })))
    }

    /// Every registration, read page by page at one revision, with the time left on each
    /// lease.
    ///
    /// # Errors
    /// An etcd failure.
    pub async fn list(&self) -> Result<Listing> {
        let mut entries = Vec::new();
        // The same rules as every watcher (a lease-less record is skipped, one holder per id by
        // the earliest create revision): `ls` shows exactly what a watcher at this revision
        // holds.
        let mut view = crate::membership::Membership::new(self.layout.clone());
        let mut snapshot = view.begin_snapshot();
        let keys = self.layout.servers_range();
        let range = ServerRange {
            pool: &self.client,
            layout: &self.layout,
            keys: &keys,
            page_size: self.page_size,
            timeout: self.request_timeout,
        };
        let revision = range
            .read_all("list", |page| {
                snapshot.add(&page);
                entries.extend(page.iter().filter_map(|kv| self.entry(kv)));
            })
            .await?;
        view.install(snapshot, revision);
        entries.retain(|e| view.holds(e.key.as_bytes(), e.create_revision));
        let skipped = view.skipped();
        let ttls: Vec<Result<Option<Duration>>> = futures::stream::iter(&entries)
            .map(|e| self.ttl_left(e.lease))
            .buffered(TTL_READS_IN_FLIGHT)
            .collect()
            .await;
        for (entry, ttl) in entries.iter_mut().zip(ttls) {
            entry.ttl_left = ttl?;
        }
        entries.sort_by_key(|e| e.server.id);
        Ok(Listing {
            revision,
            entries,
            skipped,
        })
    }

    /// Removes exactly `entry`'s registration: checks that its key is still at its create
    /// revision and its slot on its lease (one transaction), then revokes that lease, which
    /// deletes key and slot in one revision. See the module docs for why the revoke is the
    /// deletion and what a still-running holder does next.
    ///
    /// # Errors
    /// An etcd failure. A lease gone before the revoke is [`Eviction::Changed`] (it expired:
    /// nothing was deleted by us).
    pub async fn evict(&self, entry: &Entry) -> Result<Eviction> {
        let owner = Owner::new(
            &self.layout,
            entry.server.id,
            entry.key.clone(),
            entry.create_revision,
            entry.lease,
        );
        let txn = guard::evict::check(&owner);
        let resp = retrying_txn(&self.client, "evict", self.request_timeout, &txn).await?;
        if guard::evict::read(&Answer::from(&resp)) == Evicted::Changed {
            return Ok(Eviction::Changed);
        }
        let lease = entry.lease;
        let revoke = retrying(
            &self.client,
            "lease revoke",
            self.request_timeout,
            |client| async move { client.lease_client().revoke(lease).await },
        );
        match revoke.await {
            Ok(resp) => Ok(Eviction::Evicted {
                revision: resp
                    .header()
                    .map_or(0, etcd_client::ResponseHeader::revision),
            }),
            Err(crate::Error::Etcd { source, .. }) if is_lease_not_found(&source) => {
                Ok(Eviction::Changed)
            }
            Err(e) => Err(e),
        }
    }

    /// One key (or its absence) and the revision of the read.
    async fn get_key(
        &self,
        op: &'static str,
        key: String,
    ) -> Result<(i64, Option<etcd_client::KeyValue>)> {
        let mut resp = retrying(&self.client, op, self.request_timeout, |client| {
            let key = key.clone();
            async move { client.kv_client().get(key, None).await }
        })
        .await?;
        let revision = resp
            .header()
            .map_or(0, etcd_client::ResponseHeader::revision);
        Ok((revision, resp.take_kvs().into_iter().next()))
    }

    /// The registration a server key holds, if it parses.
    fn entry(&self, kv: &KeyValue) -> Option<Entry> {
        let ParsedKey::Server { group, id } = self.layout.parse_server_key(&kv.key) else {
            return None;
        };
        let server = decode(group, id, &kv.value).ok()?;
        Some(Entry {
            server,
            key: String::from_utf8_lossy(&kv.key).into_owned(),
            lease: kv.lease,
            create_revision: kv.create_revision,
            mod_revision: kv.mod_revision,
            ttl_left: None,
        })
    }

    /// Time left on `lease`; `None` when it is gone (etcd answers TTL -1).
    async fn ttl_left(&self, lease: i64) -> Result<Option<Duration>> {
        if lease == 0 {
            return Ok(None);
        }
        let resp = retrying(
            &self.client,
            "lease ttl",
            self.request_timeout,
            |client| async move { client.lease_client().time_to_live(lease, None).await },
        )
        .await?;
        Ok(u64::try_from(resp.ttl()).ok().map(Duration::from_secs))
    }
}
