//! The one pinned, paginated read of the server range, shared by the watcher's (re)list,
//! [`super::list_once`] and `Admin::list`.
//!
//! The first page fixes revision `R` (its header revision) and every later page is read at
//! `R`, continuing after the last key of the page before: the pages together are one
//! consistent cut of the range however many there are. The watcher's first page is a
//! read-only transaction that also reads the allocator cursor at `R`.

use std::time::Duration;

use etcd_client::{GetOptions, Txn, TxnOp, TxnOpResponse};

use crate::alloc::decode_cursor;
use crate::client::retrying;
use crate::error::Result;
use crate::keys::KeyLayout;
use crate::membership::KeyValue;
use crate::pool::Pool;

/// The server range of one layout, read through one pool.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ServerRange<'a> {
    pub(crate) pool: &'a Pool,
    pub(crate) layout: &'a KeyLayout,
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
            None => self.layout.servers_prefix().into_bytes(),
        };
        let mut options = GetOptions::new()
            .with_range(prefix_end(self.layout.servers_prefix().as_bytes()))
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

/// The end of the range of keys starting with `prefix` (etcd's prefix rule).
fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}

#[cfg(test)]
mod tests {
    use super::prefix_end;

    #[test]
    fn prefix_end_increments_the_last_byte() {
        assert_eq!(prefix_end(b"/darkrift/"), b"/darkrift0");
        assert_eq!(prefix_end(b"a\xff"), b"b");
        assert_eq!(prefix_end(b"\xff"), vec![0]);
    }
}
