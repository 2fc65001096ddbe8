//! The naive allocator of P1 and P2: DarkRift's Consul connector scheme translated to etcd.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use darkrift_etcd::alloc::now_unix_ms;
use darkrift_etcd::Registration;
use etcd_client::{Client, Compare, CompareOp, KeyValue, Txn, TxnOp, TxnOpResponse};

use crate::Res;

pub(crate) struct NaiveOutcome {
    /// Compare-and-swap transactions sent.
    pub(crate) txns: u64,
    /// All requests sent (lease grant, counter read, CAS transactions, key write).
    pub(crate) requests: u64,
    /// The id obtained, or `None` when stopped by the budget.
    pub(crate) id: Option<u64>,
}

/// Read the counter, CAS it to counter + 1, write the server key on a lease; on a lost CAS,
/// retry from the counter value the transaction's failure branch returned (a kindness:
/// Consul's connector re-reads with a separate request). No attempt limit (Consul stops at 10).
pub(crate) async fn naive_register(
    mut client: Client,
    prefix: String,
    stop: Arc<AtomicBool>,
) -> Res<NaiveOutcome> {
    let counter = format!("{prefix}.next-id");
    // Outlives the budget: the naive scheme has no keep-alive here.
    let lease = client.lease_grant(300, None).await?.id();
    let mut out = NaiveOutcome {
        txns: 0,
        requests: 2,
        id: None,
    };
    let read = |kv: Option<&KeyValue>| -> Res<(u64, i64)> {
        match kv {
            None => Ok((0, 0)),
            Some(kv) => Ok((kv.value_str()?.parse()?, kv.mod_revision())),
        }
    };
    let (mut value, mut mod_rev) = read(client.get(counter.clone(), None).await?.kvs().first())?;
    while !stop.load(Ordering::Relaxed) {
        let guard = if mod_rev == 0 {
            Compare::create_revision(counter.clone(), CompareOp::Equal, 0)
        } else {
            Compare::mod_revision(counter.clone(), CompareOp::Equal, mod_rev)
        };
        let txn = Txn::new()
            .when([guard])
            .and_then([TxnOp::put(counter.clone(), (value + 1).to_string(), None)])
            .or_else([TxnOp::get(counter.clone(), None)]);
        out.txns += 1;
        out.requests += 1;
        let resp = client.txn(txn).await?;
        if resp.succeeded() {
            let id = value + 1;
            let reg = Registration::new("naive", "127.0.0.1", 4296, BTreeMap::new())?;
            let record = reg.encode(u16::try_from(id % 65_536).unwrap_or(0), id, now_unix_ms());
            client
                .put(
                    format!("{prefix}/naive/{id}"),
                    record,
                    Some(etcd_client::PutOptions::new().with_lease(lease)),
                )
                .await?;
            out.requests += 1;
            out.id = Some(id);
            return Ok(out);
        }
        let kv = resp.op_responses().into_iter().find_map(|op| match op {
            TxnOpResponse::Get(get) => get.kvs().first().cloned(),
            _ => None,
        });
        (value, mod_rev) = read(kv.as_ref())?;
    }
    Ok(out)
}
