//! P10: registrations and listings while one etcd member is frozen (gray failure).

use std::time::{Duration, Instant};

use darkrift_etcd::{Connector, Event};
use darkrift_etcd_testing::EtcdCluster;

use crate::events::{config, props, timestamped, wait_event};
use crate::report::Report;
use crate::stats::elapsed_tag;
use crate::Res;

/// P10's lease TTL and the number of registrants that keep their leases alive through it.
pub(crate) const P10_TTL: Duration = Duration::from_secs(5);

pub(crate) const P10_REGISTRANTS: usize = 4;

/// P10: one member of a healthy 3-node cluster frozen (SIGSTOP: it accepts connections and
/// never answers) for 3 × TTL, listed first in every endpoint list; once a follower, once the
/// leader. Measured: the longest keep-alive gap of the registrants (TTL minus the smallest
/// margin to their local lease deadline, sampled every 50 ms), leases lost and leaves seen by a
/// watcher while frozen, and how long a fresh connector's first registration and a listing
/// take (the time until a request avoids the bad member).
pub(crate) async fn p10(report: &mut Report, start: Instant) -> Res<()> {
    for (label, leader) in [("follower", false), ("leader", true)] {
        eprintln!("{} P10 frozen {label}", elapsed_tag(start));
        let mut etcd = EtcdCluster::three_node().await?;
        let leader_index = etcd.leader_index().await.ok_or("no leader")?;
        let target = if leader {
            leader_index
        } else {
            (leader_index + 1) % 3
        };
        let mut endpoints = vec![etcd.endpoint(target)];
        endpoints.extend((0..3).filter(|i| *i != target).map(|i| etcd.endpoint(i)));
        let prefix = format!("/bench/p10-{label}");
        let cfg = || {
            let mut cfg = config(&endpoints, &prefix).with_lease_ttl(P10_TTL);
            cfg.request_timeout = Duration::from_secs(5);
            cfg
        };
        let watcher = Connector::connect(cfg()).await?;
        let mut seen = timestamped(watcher.events()?);
        wait_event(&mut seen, "synced", |e| matches!(e, Event::Synced { .. })).await?;
        let mut registrants = Vec::new();
        for i in 0..P10_REGISTRANTS {
            let c = Connector::connect(cfg()).await?;
            let events = timestamped(c.events()?);
            let port = 7300 + u16::try_from(i)?;
            c.register_server("p10", "127.0.0.1", port, props()).await?;
            registrants.push((c, events));
        }
        while seen.try_recv().is_ok() {}

        etcd.freeze(target)?;
        let frozen_at = Instant::now();
        let thaw_at = frozen_at + P10_TTL * 3;
        // Sampled from the freeze on, on their own tasks: the closest call comes within the
        // first TTL, while the first register and ls below are still running.
        let samplers: Vec<_> = registrants
            .iter()
            .filter_map(|(c, _)| c.status())
            .map(|status| {
                tokio::spawn(async move {
                    let mut least = P10_TTL;
                    while Instant::now() < thaw_at {
                        if let darkrift_etcd::RegistrationStatus::Registered { deadline, .. } =
                            *status.borrow()
                        {
                            let now = tokio::time::Instant::now();
                            least = least.min(deadline.saturating_duration_since(now));
                        }
                        tokio::time::sleep(Duration::from_millis(50)).await; // the sampling period
                    }
                    least
                })
            })
            .collect();
        let t = Instant::now();
        let newcomer = Connector::connect(cfg()).await?;
        newcomer
            .register_server("p10", "127.0.0.1", 7399, props())
            .await?;
        let first_register = t.elapsed();
        let t = Instant::now();
        darkrift_etcd::list_servers(&cfg()).await?;
        let first_ls = t.elapsed();
        let mut least = P10_TTL;
        for sampler in samplers {
            least = least.min(sampler.await?);
        }
        let mut lost = 0;
        for (_, events) in &mut registrants {
            while let Ok((e, _)) = events.try_recv() {
                lost += usize::from(matches!(e, Event::LeaseLost { .. }));
            }
        }
        let mut leaves = 0;
        while let Ok((e, _)) = seen.try_recv() {
            leaves += usize::from(matches!(e, Event::Leave { .. }));
        }
        etcd.thaw(target)?;
        etcd.wait_healthy(Duration::from_secs(30)).await?;
        drop(newcomer);
        let gap = P10_TTL.saturating_sub(least);
        report.row(
            "P10",
            format!("P10 frozen {label}: longest keep-alive gap, leases lost, leaves"),
            format!("{:.2} s, {lost}, {leaves}", gap.as_secs_f64()),
            format!("TTL {} s", P10_TTL.as_secs()),
            "gap < TTL, 0, 0",
            Some(gap < P10_TTL && lost == 0 && leaves == 0),
        );
        report.row(
            "P10",
            format!("P10 frozen {label} listed first: first register; ls"),
            format!(
                "{:.2} s; {:.2} s",
                first_register.as_secs_f64(),
                first_ls.as_secs_f64()
            ),
            "request timeout 5 s",
            "≤ 6 s",
            Some(first_register <= Duration::from_secs(6) && first_ls <= Duration::from_secs(6)),
        );
    }
    report.notes.push(format!(
        "**P10** — a 3-node cluster (the harness's 50 ms heartbeat, 500 ms election timeout); \
         {P10_REGISTRANTS} registrants (TTL {} s) and a watcher, each given all three endpoints with \
         the bad member first; that member is frozen with SIGSTOP for 3 × TTL, once a follower, once \
         the leader. The keep-alive gap is TTL minus the smallest margin to a registrant's local \
         lease deadline (sampled every 50 ms): a keep-alive every TTL/3 plus the stall bound \
         (TTL/4, at most the attempt timeout) before the stream moves. The first register and ls \
         are a fresh connector's: one attempt timeout (a third of the 5 s request timeout) on the \
         frozen member, then another member. etcd before 3.5.13 / 3.4.31 revokes the leases a \
         paused leader saw expire when it resumes (etcd-io/etcd#15247), after this measurement: \
         see ARCHITECTURE.md, \"Gray failures\".",
        P10_TTL.as_secs()
    ));
    Ok(())
}
