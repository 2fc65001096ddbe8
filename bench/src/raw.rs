//! Raw etcd, the baselines and the set-up: wiping a prefix, a paginated get, writing many
//! server records directly.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use darkrift_etcd::alloc::{build_txn, now_unix_ms, AllocParams, AllocRequest, Candidate};
use darkrift_etcd::keys::KeyLayout;
use darkrift_etcd::Registration;
use etcd_client::{Client, GetOptions, KeyValue, Txn, TxnOp};
use tokio::task::JoinSet;

use crate::{BoxError, Res, GROUPS, WRITERS};

/// Deletes everything a prefix left behind (server keys and allocator keys).
pub(crate) async fn wipe(client: &mut Client, prefix: &str) -> Res<()> {
    for p in [format!("{prefix}/"), format!("{prefix}.")] {
        client
            .delete(p, Some(etcd_client::DeleteOptions::new().with_prefix()))
            .await?;
    }
    Ok(())
}

/// A paginated read of `prefix`, pinned to the first page's revision (what the watcher does,
/// without decoding anything).
pub(crate) async fn raw_paginated_get(
    client: &mut Client,
    prefix: &str,
    page: i64,
) -> Res<Vec<KeyValue>> {
    let end = {
        let mut e = prefix.as_bytes().to_vec();
        if let Some(last) = e.last_mut() {
            *last += 1;
        }
        e
    };
    let mut start = prefix.as_bytes().to_vec();
    let mut pinned = 0;
    let mut out = Vec::new();
    loop {
        let mut opts = GetOptions::new().with_range(end.clone()).with_limit(page);
        if pinned > 0 {
            opts = opts.with_revision(pinned);
        }
        let mut resp = client.get(start.clone(), Some(opts)).await?;
        if pinned == 0 {
            pinned = resp
                .header()
                .map_or(0, etcd_client::ResponseHeader::revision);
        }
        let more = resp.more();
        let kvs = resp.take_kvs();
        let last = kvs.last().map(|kv| kv.key().to_vec());
        out.extend(kvs);
        match (more, last) {
            (true, Some(mut k)) => {
                k.push(0);
                start = k;
            }
            _ => return Ok(out),
        }
    }
}

/// `count` leases of `ttl_secs`, granted one after the other.
async fn grant_leases(client: &Client, count: usize, ttl_secs: i64) -> Res<Vec<i64>> {
    let mut ids = Vec::with_capacity(count);
    for _ in 0..count {
        ids.push(client.clone().lease_grant(ttl_secs, None).await?.id());
    }
    Ok(ids)
}

/// Registers servers `1..=count` directly with the allocator's transaction
/// ([`darkrift_etcd::alloc::build_txn`], the very transaction a connector sends) under a few
/// shared leases, `WRITERS` at a time. Returns the leases.
pub(crate) async fn write_servers(
    client: &Client,
    layout: &KeyLayout,
    count: u16,
    leases: usize,
    ttl_secs: i64,
) -> Res<Vec<i64>> {
    let lease_ids = grant_leases(client, leases, ttl_secs).await?;
    let lease_ids = Arc::new(lease_ids);
    let next = Arc::new(AtomicUsize::new(1));
    let mut tasks = JoinSet::new();
    for _ in 0..WRITERS {
        let mut kv = client.kv_client();
        let layout = layout.clone();
        let lease_ids = lease_ids.clone();
        let next = next.clone();
        tasks.spawn(async move {
            let params = AllocParams {
                id_space: u16::MAX,
                spread_window: darkrift_etcd::alloc::DEFAULT_SPREAD_WINDOW,
            };
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Ok(id) = u16::try_from(i) else { break };
                if id > count {
                    break;
                }
                let group = GROUPS[i % GROUPS.len()];
                let host = format!("10.{}.{}.{}", i >> 16, (i >> 8) & 255, i & 255);
                let reg = Registration::new(group, host, 4296, BTreeMap::new())?;
                let position = u64::from(id);
                let req = AllocRequest {
                    layout: &layout,
                    group,
                    candidate: Candidate { position, id },
                    cursor: position - 1,
                    record: reg.encode(id, position, now_unix_ms()),
                    lease_id: lease_ids[i % lease_ids.len()],
                    params,
                    announce: true,
                };
                let resp = kv.txn(build_txn(&req)).await?;
                if !resp.succeeded() {
                    return Err::<(), BoxError>(format!("id {id} was already taken").into());
                }
            }
            Ok(())
        });
    }
    while let Some(done) = tasks.join_next().await {
        done??;
    }
    Ok(Arc::try_unwrap(lease_ids).unwrap_or_else(|a| (*a).clone()))
}

/// Writes the records of servers `1..=count` (server keys only, no slots: these servers
/// exist for the watchers, not the allocator) in transactions of 128 puts (etcd's default
/// `--max-txn-ops`) under a few shared leases: a mass join as fast as etcd can take it.
pub(crate) async fn bulk_write_servers(
    client: &Client,
    layout: &KeyLayout,
    count: u16,
    leases: usize,
    ttl_secs: i64,
) -> Res<Vec<i64>> {
    let lease_ids = grant_leases(client, leases, ttl_secs).await?;
    let mut kv = client.kv_client();
    let ids: Vec<u16> = (1..=count).collect();
    for (n, chunk) in ids.chunks(128).enumerate() {
        let lease = etcd_client::PutOptions::new().with_lease(lease_ids[n % lease_ids.len()]);
        let mut puts = Vec::with_capacity(chunk.len());
        for &id in chunk {
            let i = usize::from(id);
            let group = GROUPS[i % GROUPS.len()];
            let host = format!("10.{}.{}.{}", i >> 16, (i >> 8) & 255, i & 255);
            let record = Registration::new(group, host, 4296, BTreeMap::new())?.encode(
                id,
                u64::from(id),
                now_unix_ms(),
            );
            puts.push(TxnOp::put(
                layout.server_key(group, id),
                record,
                Some(lease.clone()),
            ));
        }
        kv.txn(Txn::new().and_then(puts)).await?;
    }
    Ok(lease_ids)
}
