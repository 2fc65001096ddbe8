//! The full id space, once: every id handed out, then exhaustion, then reuse.

use std::time::Instant;

use darkrift_etcd::keys::KeyLayout;
use darkrift_etcd::{Connector, Error, Event};
use etcd_client::{Client, Compare, CompareOp, Txn, TxnOp};

use crate::events::{config, next_event, props, until_synced};
use crate::raw::write_servers;
use crate::report::Report;
use crate::stats::{elapsed_tag, ms};
use crate::{Res, GROUPS};

pub(crate) async fn full_id_space(
    endpoints: &[String],
    raw: &mut Client,
    report: &mut Report,
    start: Instant,
) -> Res<()> {
    let prefix = "/bench/space";
    let layout = KeyLayout::new(prefix)?;
    eprintln!("{} id space: writing 65,535 servers", elapsed_tag(start));
    let t = Instant::now();
    let leases = write_servers(raw, &layout, u16::MAX, 16, 900).await?;
    let write_time = t.elapsed();

    let t = Instant::now();
    let c = Connector::connect(config(endpoints, prefix)).await?;
    let mut events = c.events()?;
    let joins = until_synced(&mut events).await?;
    let sync_time = t.elapsed();
    if joins != usize::from(u16::MAX) {
        return Err(format!("snapshot of the full space has {joins} joins").into());
    }
    let t = Instant::now();
    let first = c.register_server("space", "127.0.0.1", 7300, props()).await;
    let refused = t.elapsed();
    let message = match first {
        Err(e @ Error::IdSpaceExhausted { .. }) => e.to_string(),
        Err(e) => return Err(format!("expected IdSpaceExhausted, got {e}").into()),
        Ok(id) => return Err(format!("expected IdSpaceExhausted, got id {id}").into()),
    };

    // One server deregisters: the guarded delete of its two keys (what deregister_server does).
    let victim: u16 = 31_337;
    let group = GROUPS[usize::from(victim) % GROUPS.len()];
    let key = layout.server_key(group, victim);
    let slot = layout.slot_key(victim);
    let rev = raw
        .get(key.clone(), None)
        .await?
        .kvs()
        .first()
        .ok_or("victim missing")?
        .create_revision();
    let guard = Txn::new()
        .when([
            Compare::create_revision(key.clone(), CompareOp::Equal, rev),
            Compare::create_revision(slot.clone(), CompareOp::Equal, rev),
        ])
        .and_then([TxnOp::delete(key, None), TxnOp::delete(slot, None)]);
    if !raw.txn(guard).await?.succeeded() {
        return Err("guarded delete of the victim failed".into());
    }
    loop {
        if let Event::Leave { id, .. } = next_event(&mut events).await? {
            if id == victim {
                break;
            }
        }
    }
    let t = Instant::now();
    let got = c
        .register_server("space", "127.0.0.1", 7300, props())
        .await?;
    let reuse = t.elapsed();
    if got != victim {
        return Err(format!("expected id {victim} back, got {got}").into());
    }
    c.deregister_server().await?;
    drop(events);
    drop(c);
    for lease in leases {
        raw.lease_revoke(lease).await?;
    }
    let check = format!(
        "65,535 live registrations written in {:.1} s ({:.0}/s) with the allocator's transaction \
         under 16 shared leases; a new connector's snapshot of them took {:.0} ms. The next \
         `register_server` failed in {:.0} ms with `{message}`. Server {victim} was removed by the \
         guarded delete of its keys; once the connector saw its Leave, `register_server` returned \
         id {got} (exactly the freed id) in {:.1} ms.",
        write_time.as_secs_f64(),
        65_535.0 / write_time.as_secs_f64(),
        ms(sync_time),
        ms(refused),
        ms(reuse)
    );
    eprintln!("  id space: {check}");
    report.checks.push(check);
    report.row(
        "ID",
        "full id space: 65,535 live, next fails, one leaves, next gets its id",
        format!("IdSpaceExhausted, then id {got}"),
        "—",
        "exactly the freed id",
        Some(got == victim),
    );
    Ok(())
}
