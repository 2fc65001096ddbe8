//! What the watcher's state machine needs from etcd, as a trait: list a page pinned at a
//! revision, open a watch, request progress, and the pool's verdicts on members. The real
//! source ([`PoolSource`]) wraps [`Pool`]; the unit tests drive the machine with a scripted
//! fake, so every recovery rule is tested without etcd.

use std::future::Future;
use std::time::Duration;

use etcd_client::{WatchOptions, WatchStream};
use tokio::sync::watch;

use super::classify::WatchAnswer;
use super::list::{Page, ServerRange};
use crate::client::retrying_on;
use crate::error::Result;
use crate::keys::KeyLayout;
use crate::pool::Pool;

/// The reads and streams the watcher makes.
pub(crate) trait KvSource: Send + Sync + 'static {
    /// An open watch.
    type Feed: WatchFeed;

    /// Reads the server range's page after `after` pinned at `pinned` (0: the first page,
    /// which fixes the revision and reads the allocator cursor too); `op` names it in errors.
    fn page(
        &self,
        op: &'static str,
        pinned: i64,
        after: Option<&[u8]>,
    ) -> impl Future<Output = Result<Page>> + Send;

    /// Opens a watch of the server range from revision `from` (progress notifications on);
    /// returns it and the pool member it is on.
    fn open(&self, from: i64) -> impl Future<Output = Result<(Self::Feed, usize)>> + Send;

    /// Refreshes the auth token of `member` (a watch cancelled for an expired token).
    fn refresh_token(
        &self,
        member: usize,
    ) -> impl Future<Output = std::result::Result<(), String>> + Send;

    /// Suspects `member` (see [`Pool::suspect`]).
    fn suspect(&self, member: usize, why: &str);

    /// How long an answer may take before its member is suspected.
    fn attempt_timeout(&self) -> Duration;

    /// How many members there are to move a watch to.
    fn members(&self) -> usize;

    /// Suspicions raised by any request of this connector: `(sequence, member)`.
    fn suspicions(&self) -> watch::Receiver<(u64, usize)>;
}

/// An open watch stream.
pub(crate) trait WatchFeed: Send + 'static {
    /// The next response; `Ok(None)` when the stream ended.
    fn message(
        &mut self,
    ) -> impl Future<Output = std::result::Result<Option<WatchAnswer>, String>> + Send;

    /// Asks etcd for a progress notification on this stream.
    fn request_progress(&mut self) -> impl Future<Output = std::result::Result<(), String>> + Send;
}

/// The real source: the pool's members.
#[derive(Debug, Clone)]
pub(crate) struct PoolSource {
    pub(crate) pool: Pool,
    pub(crate) layout: KeyLayout,
    pub(crate) page_size: i64,
    pub(crate) request_timeout: Duration,
}

impl KvSource for PoolSource {
    type Feed = WatchStream;

    async fn page(&self, op: &'static str, pinned: i64, after: Option<&[u8]>) -> Result<Page> {
        let range = ServerRange {
            pool: &self.pool,
            layout: &self.layout,
            page_size: self.page_size,
            timeout: self.request_timeout,
        };
        range.page(op, pinned, after, true).await
    }

    async fn open(&self, from: i64) -> Result<(WatchStream, usize)> {
        let options = WatchOptions::new()
            .with_prefix()
            .with_start_revision(from)
            .with_progress_notify();
        let prefix = self.layout.servers_prefix();
        retrying_on(&self.pool, "watch", self.request_timeout, |mut client| {
            let (prefix, options) = (prefix.clone(), options.clone());
            async move { client.watch(prefix, Some(options)).await }
        })
        .await
    }

    async fn refresh_token(&self, member: usize) -> std::result::Result<(), String> {
        match self.pool.client(member).await {
            Ok(client) => client.refresh_token().await.map_err(|e| e.to_string()),
            Err(e) => Err(format!("{e:?}")),
        }
    }

    fn suspect(&self, member: usize, why: &str) {
        self.pool.suspect(member, why);
    }

    fn attempt_timeout(&self) -> Duration {
        self.pool.attempt_timeout()
    }

    fn members(&self) -> usize {
        self.pool.len()
    }

    fn suspicions(&self) -> watch::Receiver<(u64, usize)> {
        self.pool.suspicions()
    }
}

impl WatchFeed for WatchStream {
    async fn message(&mut self) -> std::result::Result<Option<WatchAnswer>, String> {
        match WatchStream::message(self).await {
            Ok(resp) => Ok(resp.as_ref().map(WatchAnswer::from)),
            Err(e) => Err(e.to_string()),
        }
    }

    async fn request_progress(&mut self) -> std::result::Result<(), String> {
        WatchStream::request_progress(self)
            .await
            .map_err(|e| e.to_string())
    }
}
