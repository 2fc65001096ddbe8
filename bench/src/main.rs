//! The registry benchmark: every hot path of darkrift-etcd measured side by side with raw etcd
//! (or a naive allocator) in ONE run, against one throw-away single-member etcd.
//!
//! ```text
//! cargo bench -p darkrift-etcd-bench      # ETCD_BIN=... picks the etcd
//! ```
//!
//! Prints a table and writes `docs/benchmarks.md` and `docs/benchmarks.svg`. This is not a
//! test: nothing here asserts timing. It does abort when a result would make a figure
//! meaningless (duplicate ids, a registration that failed, the id space check not holding).
//!
//! Figures (see issue 4), one file each: P1 (`p1.rs`) requests per uncontended registration;
//! P2 (`p2.rs`) transactions and wall time of N simultaneous registrations, ours against a
//! naive compare-and-swap counter (`naive.rs`, the scheme of DarkRift's Consul connector);
//! P3/P4 (`p3_p4.rs`) join and leave propagation against raw put→watch and delete→watch; P5
//! (`p5.rs`) kill → leave at peers for a `darkrift-etcd register` child process; P5b (`p5b.rs`)
//! kill → leave at every lobby for a mesh game server with eviction on, against the same mesh
//! with eviction off; P6 snapshot of 10,000 servers → `Synced` against a raw paginated get, P8
//! watcher throughput against a raw watch, P9 memory per tracked server (`p6_p8_p9.rs`, heap
//! counted by `heap.rs`); P10 (`p10.rs`) registrations and listings with a frozen member; P14 (`p14.rs`) 10,000
//! servers registered through 50 agents (one connector each) against the raw floor. And
//! once, the full id space (`id_space.rs`). `report.rs` writes the table and the chart; the
//! other files are the helpers the figures share.
//!
//! P2 runs on a second etcd started with a longer election timeout (see `P2_ETCD_ARGS` and the
//! P2 note of the report); everything else shares the first one, each figure on its own prefix.
//! Development knobs: `BENCH_ONLY=p1,p2,p3,p5,p5b,p6,p14,id` runs a subset and writes no file
//! (`fanout` adds the fan-out diagnostic); `BENCH_BURSTS=16,256` picks the P2 sizes;
//! `BENCH_NAME=benchmarks-etcd-3.4` writes `docs/<name>.md` and `.svg` instead (the report of
//! the other supported etcd version is kept next to the main one).

// One file per figure, and the report and helpers they share.
mod children;
mod etcd_stats;
mod events;
mod heap;
mod id_space;
mod naive;
mod p1;
mod p10;
mod p14;
mod p2;
mod p2f;
mod p3_p4;
mod p5;
mod p5b;
mod p6_p8_p9;
mod raw;
mod report;
mod stats;

use std::time::{Duration, Instant};

use darkrift_etcd_testing::EtcdCluster;
use etcd_client::Client;

use crate::children::repo_root;
use crate::id_space::full_id_space;
use crate::p1::p1;
use crate::p10::p10;
use crate::p14::p14;
use crate::p2::{fanout_diagnostic, p2};
use crate::p2f::p2f;
use crate::p3_p4::p3_p4;
use crate::p5::p5;
use crate::p5b::p5b;
use crate::p6_p8_p9::p6_p8_p9;
use crate::report::{command_output, machine, markdown, svg, Report};
use crate::stats::elapsed_tag;

type BoxError = Box<dyn std::error::Error + Send + Sync>;
type Res<T> = std::result::Result<T, BoxError>;

/// Bound on anything that should happen promptly (an event after a write, a snapshot).
const PROMPT: Duration = Duration::from_secs(60);

/// P2 burst sizes.
const BURSTS: [usize; 3] = [16, 256, 1000];

/// Wall-clock budget of one naive burst: past it the naive allocator is stopped and its
/// partial count reported (its cost grows as N²; the point is made long before it finishes).
const NAIVE_BUDGET: Duration = Duration::from_secs(45);

/// Extra flags of P2's etcd (see the P2 note in the report).
const P2_ETCD_ARGS: [&str; 4] = ["--heartbeat-interval", "100", "--election-timeout", "10000"];

/// Consul's connector gives up after this many compare-and-set attempts.
const CONSUL_ATTEMPTS: u32 = 10;

/// Registered servers for the snapshot, throughput and memory figures.
const SNAPSHOT_SERVERS: u16 = 10_000;

/// Repetitions of the P6 snapshot (the median is reported).
const SNAPSHOT_RUNS: usize = 21;

/// Samples of P3/P4 (each: one join, one leave, one raw put, one raw delete).
const LATENCY_SAMPLES: usize = 2000;

/// P5: child processes killed, and their lease TTL.
const KILLED_CHILDREN: usize = 5;

const KILL_TTL_SECS: u64 = 2;

/// P5b: game servers killed one after another, their TTL (the default), the lobbies that dial
/// each one, and the reporters eviction needs.
const FAST_KILLS: usize = 12;

const FAST_TTL_SECS: u64 = 10;

const FAST_LOBBIES: usize = 2;

const FAST_REPORTERS: u32 = 2;

/// Concurrent writers when servers are written directly with the allocator's transaction.
const WRITERS: usize = 64;

const GROUPS: [&str; 4] = ["lobby", "game", "chat", "match"];

/// Runs the phases; `BENCH_ONLY=p1,p2,...` (p1, p2, p2f, p3, p5, p5b, p6, p10, p14, id) runs a subset and writes
/// no files.
async fn phases(
    endpoints: &[String],
    raw: &mut Client,
    report: &mut Report,
    start: Instant,
) -> Res<()> {
    let only = std::env::var("BENCH_ONLY").unwrap_or_default();
    let on = |p: &str| only.is_empty() || only.split(',').any(|x| x.trim() == p);
    if on("p1") {
        eprintln!("{} P1", elapsed_tag(start));
        p1(endpoints, report).await?;
    }
    if on("p3") {
        eprintln!("{} P3/P4", elapsed_tag(start));
        p3_p4(endpoints, report).await?;
    }
    if on("p5") {
        eprintln!("{} P5", elapsed_tag(start));
        p5(endpoints, report).await?;
    }
    if on("p5b") {
        eprintln!("{} P5b", elapsed_tag(start));
        p5b(endpoints, report).await?;
    }
    if on("p6") {
        p6_p8_p9(endpoints, raw, report, start).await?;
    }
    if on("id") {
        full_id_space(endpoints, raw, report, start).await?;
    }
    if on("p2") {
        p2(report, start).await?;
    }
    if on("p2f") {
        eprintln!("{} P2f", elapsed_tag(start));
        p2f(report, start).await?;
    }
    if on("p10") {
        p10(report, start).await?;
    }
    if on("p14") {
        eprintln!("{} P14", elapsed_tag(start));
        p14(report, start).await?;
    }
    if only.split(',').any(|x| x.trim() == "fanout") {
        fanout_diagnostic().await?;
    }
    Ok(())
}

fn main() -> Res<()> {
    // `RUST_LOG=darkrift_etcd=debug` shows what the library does during a figure (stderr).
    if std::env::var_os("RUST_LOG").is_some() {
        tracing_subscriber::fmt()
            .with_writer(std::io::stderr)
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .init();
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    runtime.block_on(run())
}

async fn run() -> Res<()> {
    let start = Instant::now();
    let etcd = EtcdCluster::single().await?;
    let endpoints = etcd.endpoints();
    let mut raw = etcd.client().await?;
    let version = raw.status().await?.version().to_owned();
    eprintln!(
        "{} etcd {version} at {} ({})",
        elapsed_tag(start),
        endpoints.join(","),
        etcd.binary().display()
    );
    let mut report = Report::default();
    let result = phases(&endpoints, &mut raw, &mut report, start).await;
    if let Err(e) = &result {
        // Keep etcd's log: it usually says why (slow applies, timeouts).
        if let Some(log) = etcd.log_path(0) {
            let kept = std::env::temp_dir().join("darkrift-bench-etcd.log");
            if std::fs::copy(log, &kept).is_ok() {
                eprintln!(
                    "benchmark failed: {e}; etcd's log is kept at {}",
                    kept.display()
                );
            }
        }
    }
    result?;

    let order = |id: &str| {
        [
            "P1", "P2", "P2f", "P3", "P4", "P5", "P5b", "P6", "P8", "P9", "P10", "P14", "ID",
        ]
        .iter()
        .position(|x| *x == id)
    };
    report.rows.sort_by_key(|r| order(r.id));
    report
        .bars
        .sort_by_key(|b| order(b.label.split_whitespace().next().unwrap_or("")));
    // Notes start with their figure's bold id (`**P2**`): same order as the table.
    report
        .notes
        .sort_by_key(|n| order(n.trim_start_matches("**").split("**").next().unwrap_or("")));
    let date = command_output("date", &["-u", "+%Y-%m-%d %H:%M UTC"]);
    let commit = command_output("git", &["describe", "--always", "--dirty"]);
    let header = format!(
        "Reproduce with `cargo bench -p darkrift-etcd-bench` (set `ETCD_BIN` to \
         pick the etcd binary). This run: {date}, commit {}, {}, etcd {version} (one member \
         started by the benchmark, data on local disk), release build, total {:.0} s. Every \
         baseline was measured in the same run against the same etcd.",
        if commit.is_empty() {
            "unknown"
        } else {
            &commit
        },
        machine(),
        start.elapsed().as_secs_f64()
    );
    let subtitle = format!("etcd {version}, {}, {date}", machine());
    if std::env::var_os("BENCH_ONLY").is_some() {
        eprintln!("BENCH_ONLY is set: a partial run, docs/ left as they are");
        return Ok(());
    }
    let dir = repo_root().join("docs");
    std::fs::create_dir_all(&dir)?;
    let name = std::env::var("BENCH_NAME").unwrap_or_else(|_| "benchmarks".to_owned());
    let md = markdown(&report, &header, &name);
    let (md_path, svg_path) = (
        dir.join(format!("{name}.md")),
        dir.join(format!("{name}.svg")),
    );
    std::fs::write(&md_path, &md)?;
    std::fs::write(&svg_path, svg(&report, &subtitle))?;
    println!("{md}");
    eprintln!(
        "{} wrote {} and {}",
        elapsed_tag(start),
        md_path.display(),
        svg_path.display()
    );
    drop(raw);
    drop(etcd);
    Ok(())
}
