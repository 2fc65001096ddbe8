//! The one pinned, paginated read of a key range of servers (the whole server range, or one
//! watched group's), shared by the watcher's (re)list, [`super::list_once`] and `Admin::list`.
//!
//! The first page fixes revision `R` (its header revision) and every later page is read at
//! `R`, continuing after the last key of the page before: the pages together are one
//! consistent cut of the range however many there are. A watcher of several ranges reads
//! them one after the other, all at the `R` its first page fixed, so they are one cut too.
//! The watcher's first page is a read-only transaction that also reads the allocator cursor
//! at `R`.

use std::time::Duration;

use etcd_client::{GetOptions, Txn, TxnOp, TxnOpResponse};

use crate::alloc::decode_cursor;
use crate::client::retrying;
use crate::error::Result;
use crate::keys::{KeyLayout, KeyRange};
use crate::membership::KeyValue;
use crate::pool::Pool;

/// A range of server keys of one layout, read through one pool.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ServerRange<'a> {
    pub(crate) pool: &'a Pool,
    /// The layout (for the cursor key).
    pub(crate) layout: &'a KeyLayout,
    /// The keys read: the whole server range or one group's.
    pub(crate) keys: &'a KeyRange,
    /// Keys per page.
    pub(crate) page_size: i64,
    /// Bound of each page's request.
    pub(crate) timeout: Duration,
}

/// One page.
#[derive(Debug)]
pub(crate) struct Page {
    /// The revision every page is pinned to (the first page's header revision).
    pub(crate) revision: i64,
    /// Its keys, in key order (moved out of the response, not copied).
    pub(crate) kvs: Vec<KeyValue>,
    /// The key to continue after, when there are more.
    pub(crate) next: Option<Vec<u8>>,
    /// The allocator cursor at the revision (first page read with the cursor only; 0 when
    /// absent or damaged).
    pub(crate) cursor: Option<u64>,
}

impl ServerRange<'_> {
    /// Reads the page after key `after` (the first page when `None`) pinned at `pinned` (0:
    /// the first page, which fixes the revision; with `with_cursor`, it reads the cursor too).
    pub(crate) async fn page(
        &self,
        op: &'static str,
        pinned: i64,
        after: Option<&[u8]>,
        with_cursor: bool,
    ) -> Result<Page> {
        let start = match after {
            Some(k) => {
                let mut k = k.to_vec();
                k.push(0);
                k
            }
            None => self.keys.start.clone(),
        };
        let mut options = GetOptions::new()
            .with_range(self.keys.end.clone())
            .with_limit(self.page_size);
        if pinned > 0 {
            options = options.with_revision(pinned);
        }
        let (revision, kvs, more, cursor) = if pinned == 0 && with_cursor {
            // First page and the cursor, at one revision.
            let txn = Txn::new().and_then([
                TxnOp::get(start, Some(options)),
                TxnOp::get(self.layout.cursor_key(), None),
            ]);
            let resp = retrying(self.pool, op, self.timeout, |client| {
                let txn = txn.clone();
                async move { client.kv_client().txn(txn).await }
            })
            .await?;
            let revision = resp
                .header()
                .map_or(0, etcd_client::ResponseHeader::revision);
            let mut page = None;
            let mut cursor = 0;
            for op in resp.op_responses() {
                if let TxnOpResponse::Get(mut get) = op {
                    if page.is_none() {
                        page = Some((get.take_kvs(), get.more()));
                    } else if let Some(kv) = get.kvs().first() {
                        cursor = decode_cursor(kv.value()).unwrap_or(0);
                    }
                }
            }
            let (kvs, more) = page.unwrap_or_default();
            (revision, kvs, more, Some(cursor))
        } else {
            let mut resp = retrying(self.pool, op, self.timeout, |client| {
                let (start, options) = (start.clone(), options.clone());
                async move { client.kv_client().get(start, Some(options)).await }
            })
            .await?;
            let revision = if pinned > 0 {
                pinned
            } else {
                resp.header()
                    .map_or(0, etcd_client::ResponseHeader::revision)
            };
            let more = resp.more();
            (revision, resp.take_kvs(), more, None)
        };
        let last = kvs.last().map(|kv| kv.key().to_vec());
        Ok(Page {
            revision,
            // Moved, not copied: a snapshot of many servers is mostly these bytes.
            kvs: kvs.into_iter().map(into_view_kv).collect(),
            next: if more { last } else { None },
            cursor,
        })
    }

    /// Reads the whole range, page by page at one revision, handing each page to `on_page`;
    /// returns the revision (0 if etcd sent no header).
    pub(crate) async fn read_all(
        &self,
        op: &'static str,
        mut on_page: impl FnMut(Vec<KeyValue>),
    ) -> Result<i64> {
        let mut page = self.page(op, 0, None, false).await?;
        let revision = page.revision;
        loop {
            let next = page.next.take();
            on_page(page.kvs);
            let Some(after) = next else {
                return Ok(revision);
            };
            page = self.page(op, revision, Some(&after), false).await?;
        }
    }
}

/// A range read's key-value in the view's form, its bytes taken instead of copied.
fn into_view_kv(kv: etcd_client::KeyValue) -> KeyValue {
    let (create_revision, mod_revision, lease) =
        (kv.create_revision(), kv.mod_revision(), kv.lease());
    let (key, value) = kv.into_key_value();
    KeyValue {
        key,
        value,
        create_revision,
        mod_revision,
        lease,
    }
}
