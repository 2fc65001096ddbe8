//! Watch fan-out directly against etcd versus through etcd's gRPC proxy (issue 13, part 3):
//! prints a markdown table of etcd's own counters, CPU and delivery time (docs/grpc-proxy.md).
//!
//! ```text
//! ETCD_BIN=$(bash scripts/etcd-path.sh 3.5) \
//!   cargo run --release --example proxy_fanout
//! ```
//!
//! For each setup (direct, one proxy, two proxies side by side each serving half of the
//! watchers, two proxies in a row) it starts a fresh single-node etcd, opens
//! `PROXY_FANOUT_WATCHERS` (default 2000) watches of one prefix, each on its own client
//! connection (as many server processes would), then writes `PROXY_FANOUT_BURST` (default
//! 200) records under the prefix, 50 at a time, and waits until every watcher has seen every
//! record. The watches are plain etcd-client watches with the options the registry's watcher
//! uses (the prefix range, progress notifications, no previous value, from the current
//! revision + 1): the registry's `Connector` adds a snapshot read and a lease per process,
//! which would load the measuring process and etcd with work that is not fan-out.
//!
//! etcd's counters come from its `/metrics` on the client URL. CPU seconds are the
//! processes' user + system time (`/proc/<pid>/stat`) from just before the burst until the
//! last watcher saw it; the
//! machine is shared (the watchers run in this process, on the same cores as etcd and the
//! proxies), so CPU and times are indicative, the counters exact.

use std::sync::Arc;
use std::time::{Duration, Instant};

use darkrift_etcd_testing::{metric_sum, scrape, EtcdCluster, GrpcProxy};
use etcd_client::{Client, EventType, GetOptions, WatchOptions};
use futures::stream::{self, StreamExt};
use tokio::sync::{mpsc, Barrier};

/// How a setup places its proxies.
#[derive(Debug, Clone, Copy)]
enum Setup {
    Direct,
    Proxies(usize),
    Chain,
}

impl Setup {
    fn name(self) -> String {
        match self {
            Setup::Direct => "direct to etcd".into(),
            Setup::Proxies(1) => "1 proxy".into(),
            Setup::Proxies(n) => format!("{n} proxies side by side"),
            Setup::Chain => "2 proxies in a row".into(),
        }
    }
}

/// One setup's figures.
#[derive(Debug, Default)]
struct Row {
    setup: String,
    open_s: f64,
    watch_streams: f64,
    watchers: f64,
    events: f64,
    sent_mib: f64,
    etcd_cpu: f64,
    proxy_cpu: f64,
    etcd_rss_mib: f64,
    burst_put_s: f64,
    all_seen_s: f64,
    p50_seen_s: f64,
    broken: usize,
}

/// etcd's counters of interest, read once.
#[derive(Debug, Default, Clone, Copy)]
struct Counters {
    watch_streams: f64,
    watchers: f64,
    events: f64,
    sent_bytes: f64,
    rss: f64,
}

async fn etcd_counters(etcd: &EtcdCluster) -> Counters {
    let text = scrape(&format!("{}/metrics", etcd.endpoint(0)))
        .await
        .expect("etcd /metrics");
    Counters {
        watch_streams: metric_sum(&text, "etcd_debugging_mvcc_watch_stream_total", &[]),
        watchers: metric_sum(&text, "etcd_debugging_mvcc_watcher_total", &[]),
        events: metric_sum(&text, "etcd_debugging_mvcc_events_total", &[]),
        sent_bytes: metric_sum(&text, "etcd_network_client_grpc_sent_bytes_total", &[]),
        rss: metric_sum(&text, "process_resident_memory_bytes", &[]),
    }
}

/// CPU seconds (user + system) a process has used so far, from `/proc/<pid>/stat` (Linux,
/// 100 ticks a second).
fn proc_cpu(pid: Option<u32>) -> f64 {
    let Some(pid) = pid else { return 0.0 };
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // The fields after the command name (which may hold spaces): state, ..., utime at 11,
    // stime at 12.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map_or("", |(_, rest)| rest)
        .split_whitespace()
        .collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    (ticks(11) + ticks(12)) / 100.0
}

fn proxies_cpu(proxies: &mut [GrpcProxy]) -> f64 {
    proxies.iter_mut().map(|p| proc_cpu(p.pid())).sum()
}

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

const PREFIX: &str = "/fanout/";

async fn run(setup: Setup, watchers: usize, burst: usize) -> Row {
    let etcd = EtcdCluster::single().await.expect("etcd");
    let mut proxies: Vec<GrpcProxy> = match setup {
        Setup::Direct => Vec::new(),
        Setup::Proxies(n) => GrpcProxy::start_n(&etcd, n).await.expect("proxies"),
        Setup::Chain => {
            let first = GrpcProxy::start(&etcd).await.expect("proxy");
            let second = GrpcProxy::start_upstream(etcd.binary(), vec![first.endpoint()])
                .await
                .expect("second proxy");
            vec![first, second]
        }
    };
    // Where the watchers connect: etcd, every proxy in turn, or the last of the chain.
    let targets: Vec<String> = match setup {
        Setup::Direct => vec![etcd.endpoint(0)],
        Setup::Proxies(_) => proxies.iter().map(GrpcProxy::endpoint).collect(),
        Setup::Chain => vec![proxies[1].endpoint()],
    };
    let mut writer = etcd.client().await.expect("client");
    let start_rev = writer
        .get(PREFIX, Some(GetOptions::new().with_count_only()))
        .await
        .expect("get")
        .header()
        .expect("header")
        .revision()
        + 1;

    // Open every watch, each on its own connection; a watcher reports once it is created and
    // again when it has seen the whole burst.
    let opening = Instant::now();
    let (created_tx, mut created_rx) = mpsc::channel::<()>(watchers);
    // `Ok(when it saw the last record)`, or `Err(why its stream ended before)`.
    let (seen_tx, mut seen_rx) = mpsc::channel::<Result<Instant, String>>(watchers);
    let release = Arc::new(Barrier::new(watchers + 1));
    let endpoints: Vec<String> = (0..watchers)
        .map(|i| targets[i % targets.len()].clone())
        .collect();
    let clients: Vec<Client> = stream::iter(endpoints)
        .map(|endpoint| async move {
            Client::connect([endpoint], None)
                .await
                .expect("watch client")
        })
        .buffer_unordered(64)
        .collect()
        .await;
    for mut client in clients {
        let created_tx = created_tx.clone();
        let seen_tx = seen_tx.clone();
        let release = release.clone();
        tokio::spawn(async move {
            let options = WatchOptions::new()
                .with_prefix()
                .with_progress_notify()
                .with_start_revision(start_rev);
            let mut stream = client.watch(PREFIX, Some(options)).await.expect("watch");
            let _ = created_tx.send(()).await;
            let mut puts = 0;
            let mut outcome = Ok(());
            while puts < burst {
                match stream.message().await {
                    Ok(Some(resp)) => {
                        puts += resp
                            .events()
                            .iter()
                            .filter(|e| e.event_type() == EventType::Put)
                            .count();
                    }
                    Ok(None) => {
                        outcome = Err(format!("stream closed after {puts} events"));
                        break;
                    }
                    Err(e) => {
                        outcome = Err(format!("stream failed after {puts} events: {e}"));
                        break;
                    }
                }
            }
            let _ = seen_tx.send(outcome.map(|()| Instant::now())).await;
            // Keep the stream open until every watcher is done, so etcd's gauges and the
            // proxies' coalescing stay as they were during the burst.
            release.wait().await;
            drop(stream);
        });
    }
    for _ in 0..watchers {
        created_rx.recv().await.expect("created");
    }
    let open_s = opening.elapsed().as_secs_f64();
    // Let the proxies finish coalescing new watchers into one upstream watch.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let before = etcd_counters(&etcd).await;
    let proxy_cpu_before = proxies_cpu(&mut proxies);
    let etcd_cpu_before = proc_cpu(etcd.pid(0));

    let burst_start = Instant::now();
    let value = "x".repeat(120);
    stream::iter(0..burst)
        .map(|i| {
            let mut writer = writer.clone();
            let value = value.clone();
            async move {
                writer
                    .put(format!("{PREFIX}game/{i:05}"), value, None)
                    .await
                    .expect("put");
            }
        })
        .buffer_unordered(50)
        .collect::<Vec<()>>()
        .await;
    let burst_put_s = burst_start.elapsed().as_secs_f64();
    let mut seen = Vec::with_capacity(watchers);
    let mut broken = Vec::new();
    for _ in 0..watchers {
        match tokio::time::timeout(Duration::from_secs(300), seen_rx.recv())
            .await
            .expect("every watcher sees the burst (or breaks) within 5 min")
            .expect("open")
        {
            Ok(at) => seen.push(at.duration_since(burst_start).as_secs_f64()),
            Err(why) => broken.push(why),
        }
    }
    if let Some(first) = broken.first() {
        eprintln!(
            "{}: {} watch streams broke, e.g. {first}",
            setup.name(),
            broken.len()
        );
    }
    for p in &proxies {
        let log = std::fs::read_to_string(p.log_path()).unwrap_or_default();
        let errors: Vec<&str> = log.lines().filter(|l| l.contains("error")).collect();
        if let Some(first) = errors.first() {
            eprintln!(
                "{}: {} error lines in {}, e.g. {first}",
                setup.name(),
                errors.len(),
                p.log_path().display()
            );
        }
    }
    seen.sort_by(f64::total_cmp);
    let after = etcd_counters(&etcd).await;
    let proxy_cpu_after = proxies_cpu(&mut proxies);
    let etcd_cpu_after = proc_cpu(etcd.pid(0));
    release.wait().await;

    Row {
        setup: setup.name(),
        open_s,
        watch_streams: before.watch_streams,
        watchers: before.watchers,
        events: after.events - before.events,
        sent_mib: (after.sent_bytes - before.sent_bytes) / (1024.0 * 1024.0),
        etcd_cpu: etcd_cpu_after - etcd_cpu_before,
        proxy_cpu: proxy_cpu_after - proxy_cpu_before,
        etcd_rss_mib: before.rss / (1024.0 * 1024.0),
        burst_put_s,
        all_seen_s: seen.last().copied().unwrap_or_default(),
        p50_seen_s: seen.get(seen.len() / 2).copied().unwrap_or_default(),
        broken: broken.len(),
    }
}

#[tokio::main]
async fn main() {
    let watchers = env_usize("PROXY_FANOUT_WATCHERS", 2000);
    let burst = env_usize("PROXY_FANOUT_BURST", 200);
    let binary = darkrift_etcd_testing::etcd_binary().expect("etcd binary");
    let version = std::process::Command::new(&binary)
        .arg("--version")
        .output()
        .map(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .next()
                .unwrap_or("")
                .to_owned()
        })
        .unwrap_or_default();
    let mut rows = Vec::new();
    for setup in [
        Setup::Direct,
        Setup::Proxies(1),
        Setup::Proxies(2),
        Setup::Chain,
    ] {
        eprintln!("{}: {watchers} watchers, burst of {burst}", setup.name());
        rows.push(run(setup, watchers, burst).await);
    }
    println!("{watchers} watchers of one prefix, a burst of {burst} puts; {version}\n");
    println!(
        "| setup | etcd watch streams | etcd watchers | etcd events sent (burst) | etcd gRPC sent MiB (burst) | etcd CPU s (burst) | proxies' CPU s (burst) | etcd RSS MiB | watches open in s | puts done in s | median watcher saw all in s | last watcher saw all in s | watch streams broken |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|---|---|");
    for r in &rows {
        println!(
            "| {} | {:.0} | {:.0} | {:.0} | {:.2} | {:.2} | {:.2} | {:.0} | {:.2} | {:.2} | {:.2} | {:.2} | {} |",
            r.setup,
            r.watch_streams,
            r.watchers,
            r.events,
            r.sent_mib,
            r.etcd_cpu,
            r.proxy_cpu,
            r.etcd_rss_mib,
            r.open_s,
            r.burst_put_s,
            r.p50_seen_s,
            r.all_seen_s,
            r.broken,
        );
    }
}
