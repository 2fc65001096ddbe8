//! P14: 10,000 servers through agents. N registrations through A in-process agents (one
//! [`Connector`] each, as `darkrift-etcd agent` holds one), every agent hosting the servers of
//! one group of P2f's ring and watching that group's interest (its own group, the one it dials
//! and the one that dials it: `watch_groups`), each agent issuing its N/A
//! [`Connector::register`] calls at once; against the raw floor (N lease grants + puts under A
//! raw watch streams of the same ranges) on the same etcd. Measures the burst wall (all
//! registered, and every agent's view holding every server of its groups), etcd's watch and
//! keep-alive streams (from its `/metrics`), the watch events etcd sent, lease losses (the
//! handles' status and etcd's history) and the ids' uniqueness.
//!
//! `BENCH_P14=2000/10,10000/50` picks the sizes (N/A; A a multiple of 10), the default.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use darkrift_etcd::keys::KeyLayout;
use darkrift_etcd::{
    Connector, RegisterOptions, Registration, RegistrationHandle, RegistrationStatus,
};
use darkrift_etcd_testing::{metric_sum, scrape, EtcdCluster};
use etcd_client::Client;
use tokio::sync::watch;
use tokio::task::JoinSet;

use crate::etcd_stats::etcd_cpu_secs;
use crate::events::{config, props};
use crate::p2::{check_history, current_revision, watch_events_settled, Burst};
use crate::p2f::{group_name, group_of, interest_of, raw_floor_watched, RawKind};
use crate::raw::wipe;
use crate::report::Report;
use crate::stats::{elapsed_tag, ms};
use crate::{Res, P2_ETCD_ARGS, PROMPT};

/// Groups in P2f's ring.
const RING: usize = 10;

/// How long the agents' views may take to hold every server once all are registered.
const SYNC_BOUND: Duration = Duration::from_secs(120);

/// Raises this process's open-file limit to its hard limit (10,000 registrations and their
/// sockets on one machine); returns `(before, after)` soft limits.
pub(crate) fn raise_nofile() -> (Option<u64>, Option<u64>) {
    use rustix::process::{getrlimit, setrlimit, Resource, Rlimit};
    let before = getrlimit(Resource::Nofile);
    let raised = Rlimit {
        current: before.maximum,
        maximum: before.maximum,
    };
    if let Err(e) = setrlimit(Resource::Nofile, raised) {
        eprintln!("    could not raise RLIMIT_NOFILE: {e}");
    }
    (before.current, getrlimit(Resource::Nofile).current)
}

/// etcd's stream gauges at one moment, from its `/metrics`.
#[derive(Clone, Copy, Debug, Default)]
struct EtcdGauges {
    /// `etcd_debugging_mvcc_watch_stream_total`: open watch streams.
    watch: f64,
    /// `etcd_debugging_mvcc_watcher_total`: watches on those streams.
    watchers: f64,
    /// `LeaseKeepAlive` streams started and not yet handled (open).
    keepalive: f64,
}

async fn streams(endpoint: &str) -> Res<EtcdGauges> {
    let text = scrape(&format!("{endpoint}/metrics")).await?;
    let method = [("grpc_method", "LeaseKeepAlive")];
    Ok(EtcdGauges {
        watch: metric_sum(&text, "etcd_debugging_mvcc_watch_stream_total", &[]),
        watchers: metric_sum(&text, "etcd_debugging_mvcc_watcher_total", &[]),
        keepalive: metric_sum(&text, "grpc_server_started_total", &method)
            - metric_sum(&text, "grpc_server_handled_total", &method),
    })
}

impl EtcdGauges {
    fn minus(self, base: EtcdGauges) -> EtcdGauges {
        EtcdGauges {
            watch: self.watch - base.watch,
            watchers: self.watchers - base.watchers,
            keepalive: self.keepalive - base.keepalive,
        }
    }
}

/// One agents burst.
struct AgentsBurst {
    /// From the go signal to the last `register` returning.
    registered_wall: Duration,
    /// From the go signal to every agent's view holding every server etcd holds in its
    /// groups; `None` when some view still differed after [`SYNC_BOUND`].
    synced_wall: Option<Duration>,
    /// The smallest view at the end (`3N/10` when every registration holds).
    min_view: usize,
    /// Streams the agents hold at etcd (over the baseline before they connected).
    streams: EtcdGauges,
    watch_events: u64,
    etcd_cpu: f64,
    own_cpu: f64,
    /// Handles not `Registered` once the burst synced, plus etcd's history's deletes.
    status_lost: usize,
    history_deletes: u64,
    distinct_ids: usize,
    distinct_leases: usize,
    retried: u32,
}

/// The agent hosting server `i`, and so its group: agent `i mod A` hosts group `i mod 10`.
fn agent_of(i: usize, agents: usize) -> usize {
    i % agents
}

async fn agents_burst(
    endpoints: &[String],
    etcd_pid: u32,
    n: usize,
    a: usize,
    prefix: &str,
    raw: &mut Client,
) -> Res<AgentsBurst> {
    let etcd = &endpoints[0];
    let base = streams(etcd).await?;
    let mut agents = Vec::with_capacity(a);
    for k in 0..a {
        // One connection each, as `darkrift-etcd agent` connects (`Connector::connect`).
        let cfg = config(endpoints, prefix).with_watch_groups(interest_of(group_of(k)));
        let c = Connector::connect(cfg).await?;
        drop(c.events()?);
        agents.push(Arc::new(c));
    }
    for c in &agents {
        c.wait_synced(PROMPT).await?;
    }
    let events_before = watch_events_settled(etcd).await?;
    let from = current_revision(raw).await? + 1;
    let (go_tx, go_rx) = watch::channel(false);
    let mut tasks = JoinSet::new();
    for i in 0..n {
        let c = agents[agent_of(i, a)].clone();
        let mut go = go_rx.clone();
        tasks.spawn(async move {
            go.wait_for(|g| *g).await.map_err(|e| e.to_string())?;
            let port = 1000 + u16::try_from(i % 60_000).unwrap_or(0);
            let group = group_name(group_of(i));
            let mut retries = Vec::new();
            loop {
                let reg = Registration::new(&group, "127.0.0.1", port, props())
                    .map_err(|e| e.to_string())?;
                match c.register(reg, RegisterOptions::default()).await {
                    // etcd overloaded: a server (or the agent's caller) would retry. A lease
                    // that expired before its allocation transaction ("requested lease not
                    // found": the grant and the transaction more than a TTL apart under this
                    // load) is not `is_retryable()` today, but a new attempt takes a new
                    // lease: retried too, and tallied apart.
                    Err(e)
                        if (e.is_retryable() || e.to_string().contains("lease not found"))
                            && retries.len() < 3 =>
                    {
                        let tag = if e.is_retryable() {
                            ""
                        } else {
                            "(not is_retryable) "
                        };
                        retries.push(format!("{tag}{e}"));
                    }
                    Err(e) => return Err(format!("registration {i}: {e}")),
                    Ok(h) => return Ok::<_, String>((h, Instant::now(), retries)),
                }
            }
        });
    }
    let cpu0 = etcd_cpu_secs(etcd_pid);
    let own0 = etcd_cpu_secs(std::process::id());
    let t0 = Instant::now();
    go_tx.send_replace(true);
    let mut handles: Vec<RegistrationHandle> = Vec::with_capacity(n);
    let mut end = t0;
    let mut retried = 0;
    let mut why = std::collections::BTreeMap::<String, u32>::new();
    while let Some(done) = tasks.join_next().await {
        let (h, at, retries) = done??;
        retried += u32::try_from(retries.len())?;
        for e in retries {
            *why.entry(e).or_default() += 1;
        }
        end = end.max(at);
        handles.push(h);
    }
    let registered_wall = end - t0;
    for (e, count) in &why {
        eprintln!("    agents: {count} × retried after: {e}");
    }
    eprintln!(
        "    agents: all {n} registered in {:.0} ms; load {}",
        ms(registered_wall),
        load()
    );
    // Every agent's view: every server etcd holds in the three groups it watches (N/10 a
    // group, unless a registration ended stopped), re-read as the loop goes.
    let layout = KeyLayout::new(prefix)?;
    let mut pending: Vec<usize> = (0..a).collect();
    let deadline = Instant::now() + SYNC_BOUND;
    let mut synced_wall = None;
    let mut per_group = group_counts(raw, &layout).await?;
    let want = |per_group: &[usize], k: usize| -> usize {
        interest_of(group_of(k))
            .iter()
            .filter_map(|g| g[1..].parse::<usize>().ok())
            .map(|g| per_group[g])
            .sum()
    };
    loop {
        pending.retain(|&k| agents[k].servers().len() != want(&per_group, k));
        if pending.is_empty() {
            synced_wall = Some(t0.elapsed());
            break;
        }
        if Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        per_group = group_counts(raw, &layout).await?;
    }
    let views: Vec<usize> = agents.iter().map(|c| c.servers().len()).collect();
    let stale = agents.iter().filter(|c| c.is_stale()).count();
    let in_etcd: usize = per_group.iter().sum();
    if synced_wall.is_none() {
        eprintln!(
            "    agents: {} views differ from etcd after {SYNC_BOUND:?} (views {}..{}, {stale} stale; {in_etcd} server keys in etcd)",
            pending.len(),
            views.iter().min().unwrap_or(&0),
            views.iter().max().unwrap_or(&0),
        );
    }
    let etcd_cpu = etcd_cpu_secs(etcd_pid) - cpu0;
    let own_cpu = etcd_cpu_secs(std::process::id()) - own0;
    let held = streams(etcd).await?.minus(base);
    let events_after = watch_events_settled(etcd).await?;
    let status_lost = handles
        .iter()
        .filter(|h| !h.status().borrow().is_registered())
        .count();
    let recovering = handles
        .iter()
        .filter(|h| matches!(*h.status().borrow(), RegistrationStatus::Recovering { .. }))
        .count();
    if status_lost > 0 {
        eprintln!("    agents: {status_lost} handles not registered ({recovering} recovering)");
    }
    let distinct_ids = handles
        .iter()
        .map(RegistrationHandle::id)
        .collect::<HashSet<_>>();
    let distinct_leases = handles
        .iter()
        .filter_map(RegistrationHandle::lease_id)
        .collect::<HashSet<_>>();
    let history = check_history(raw, prefix, from).await?;
    let burst = AgentsBurst {
        registered_wall,
        synced_wall,
        min_view: views.iter().copied().min().unwrap_or(0),
        streams: held,
        watch_events: events_after - events_before,
        etcd_cpu,
        own_cpu,
        status_lost,
        history_deletes: history.deletes,
        distinct_ids: distinct_ids.len(),
        distinct_leases: distinct_leases.len(),
        retried,
    };
    // Dropping a handle stops its keep-alive; the keys go with the wipe, the leases expire.
    drop(handles);
    drop(agents);
    wipe(raw, prefix).await?;
    Ok(burst)
}

/// Server keys etcd holds in each of the ring's groups.
async fn group_counts(raw: &mut Client, layout: &KeyLayout) -> Res<Vec<usize>> {
    let mut counts = Vec::with_capacity(RING);
    for g in 0..RING {
        let opts = etcd_client::GetOptions::new()
            .with_prefix()
            .with_count_only();
        let resp = raw
            .get(layout.group_prefix(&group_name(g)), Some(opts))
            .await?;
        counts.push(usize::try_from(resp.count())?);
    }
    Ok(counts)
}

/// `BENCH_P14=2000/10,10000/50`: the (N, A) pairs.
fn sizes() -> Vec<(usize, usize)> {
    let spec = std::env::var("BENCH_P14").unwrap_or_else(|_| "2000/10,10000/50".to_owned());
    spec.split(',')
        .filter_map(|p| {
            let (n, a) = p.trim().split_once('/')?;
            Some((n.parse().ok()?, a.parse().ok()?))
        })
        .filter(|&(n, a): &(usize, usize)| a > 0 && a % RING == 0 && n % a == 0)
        .collect()
}

pub(crate) async fn p14(report: &mut Report, start: Instant) -> Res<()> {
    let (before, after) = raise_nofile();
    eprintln!(
        "{} P14: open-file limit {} → {} (raised to the hard limit)",
        elapsed_tag(start),
        before.map_or("unlimited".to_owned(), |v| v.to_string()),
        after.map_or("unlimited".to_owned(), |v| v.to_string()),
    );
    let etcd = EtcdCluster::builder()
        .extra_args(P2_ETCD_ARGS.iter().copied())
        .build()
        .await?;
    let endpoints = etcd.endpoints();
    let etcd_pid = etcd.pid(0).ok_or("etcd is not running")?;
    let mut raw = etcd.client().await?;
    for (n, a) in sizes() {
        eprintln!(
            "{} P14 N={n} through A={a} agents ({} each); load {}",
            elapsed_tag(start),
            n / a,
            load()
        );
        let prefix = format!("/bench/p14-{n}-{a}");
        let ours = agents_burst(&endpoints, etcd_pid, n, a, &prefix, &mut raw).await;
        let load_ours = load();
        match &ours {
            Ok(b) => eprintln!(
                "    agents: registered {:.0} ms, synced {}, {} events, etcd CPU {:.1} s, own CPU {:.1} s, \
                 streams: {:.0} watch ({:.0} watches), {:.0} keep-alive; lost {} (status) {} (history); \
                 {} distinct ids, {} distinct leases, {} retried; load {load_ours}",
                ms(b.registered_wall),
                synced(b),
                b.watch_events,
                b.etcd_cpu,
                b.own_cpu,
                b.streams.watch,
                b.streams.watchers,
                b.streams.keepalive,
                b.status_lost,
                b.history_deletes,
                b.distinct_ids,
                b.distinct_leases,
                b.retried,
            ),
            Err(e) => eprintln!("    agents: failed: {e}; load {load_ours}"),
        }
        eprintln!(
            "{} P14 N={n}: raw floor under {a} watchers",
            elapsed_tag(start)
        );
        let raw_prefix = format!("/bench/p14-raw-{n}-{a}");
        let floor = raw_floor_watched(&endpoints, etcd_pid, n, a, RawKind::Put, &raw_prefix).await;
        let load_raw = load();
        match &floor {
            Ok(f) => f.log(&format!(
                "raw floor ({} retried); load {load_raw}",
                f.retried
            )),
            Err(e) => eprintln!("    raw floor: failed: {e}; load {load_raw}"),
        }
        row(report, n, a, &ours, &floor, &load_ours);
    }
    report.notes.push(format!(
        "**P14** — 10,000 servers through agents: N registrations through A agents in one \
         process, each agent one `Connector` (its own connection, one watch stream, one \
         keep-alive stream, as `darkrift-etcd agent` holds) with `watch_groups` = the interest \
         of the one ring group (P2f) whose servers it hosts, and N/A `Connector::register` \
         calls issued at once per agent. *Registered*: the go signal to the last `register` \
         returning; *synced*: to every agent's view holding every server etcd holds in its \
         three groups (3N/10 unless a registration ended stopped). Streams are etcd's gauges with every registration held, over the baseline \
         before the agents connected: `etcd_debugging_mvcc_watch_stream_total`, \
         `etcd_debugging_mvcc_watcher_total`, and `LeaseKeepAlive` streams started − handled. \
         Watch events as in P2f. Lost: handles not `Registered` at sync, and deletes in etcd's \
         history of the burst (replayed, which also fails the figure on two holders of one \
         id). *Raw floor*: N lease grants + puts of a record-sized value into the same groups \
         under A raw watch streams of the same ranges (the same deliveries), its wall up to \
         the last put's reply. Same etcd settings as P2 (`{}`). Deployment: run one agent per \
         node, not one connector per server: etcd's watch fan-out and its stream count follow \
         the agents, not the servers.",
        P2_ETCD_ARGS.join(" ")
    ));
    drop(raw);
    drop(etcd);
    Ok(())
}

/// The synced wall, or how far the views fell short.
fn synced(b: &AgentsBurst) -> String {
    match b.synced_wall {
        Some(wall) => format!("{:.0} ms", ms(wall)),
        None => format!(
            "not within {SYNC_BOUND:?} (smallest view {} servers)",
            b.min_view
        ),
    }
}

/// The machine's load averages (`/proc/loadavg`'s first three fields).
fn load() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

fn row(
    report: &mut Report,
    n: usize,
    a: usize,
    ours: &Res<AgentsBurst>,
    floor: &Res<Burst>,
    load: &str,
) {
    let ours_cell = match ours {
        Ok(b) => format!(
            "registered {:.0} ms, synced {} · {} events · etcd CPU {:.1} s · {} lost · \
             {} distinct ids of {n} · etcd holds {:.0} watch streams ({:.0} watches) and {:.0} \
             keep-alive streams{}{}; load {load}",
            ms(b.registered_wall),
            synced(b),
            b.watch_events,
            b.etcd_cpu,
            b.status_lost + usize::try_from(b.history_deletes).unwrap_or(usize::MAX),
            b.distinct_ids,
            b.streams.watch,
            b.streams.watchers,
            b.streams.keepalive,
            match floor {
                Ok(f) => format!(
                    " ({:.2} × raw floor registered{})",
                    ms(b.registered_wall) / ms(f.wall).max(1.0),
                    b.synced_wall
                        .map(|s| format!(", {:.2} × synced", ms(s) / ms(f.wall).max(1.0)))
                        .unwrap_or_default()
                ),
                Err(_) => String::new(),
            },
            if b.retried > 0 {
                format!(", {} retried", b.retried)
            } else {
                String::new()
            },
        ),
        Err(e) => format!("failed: {e}"),
    };
    let floor_cell = match floor {
        Ok(f) => format!(
            "raw grant+put under {a} raw watch streams of the same ranges: {:.0} ms · {} events · etcd CPU {:.1} s{}",
            ms(f.wall),
            f.watch_events.unwrap_or(0),
            f.etcd_cpu,
            if f.retried > 0 {
                format!(" ({} writes retried after etcd's \"too many requests\")", f.retried)
            } else {
                String::new()
            }
        ),
        Err(e) => format!("raw floor failed: {e}"),
    };
    report.row(
        "P14",
        format!("N = {n} servers through A = {a} agents ({} each), ring of {RING} groups: wall · events · streams at etcd · lost · ids", n / a),
        ours_cell,
        floor_cell,
        "—",
        None,
    );
    if let (
        Ok(AgentsBurst {
            synced_wall: Some(wall),
            ..
        }),
        Ok(f),
    ) = (ours, floor)
    {
        report.bar(
            format!("P14 N = {n} through {a} agents, synced wall"),
            ms(*wall),
            vec![("raw grant+put", ms(f.wall))],
            "ms",
            false,
        );
    }
}
