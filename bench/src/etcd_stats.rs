//! etcd's own figures: its gRPC request counters (from `/metrics`) and its CPU time.

use std::collections::BTreeMap;
use std::time::Duration;

use crate::report::command_output;
use crate::Res;

/// Unary gRPC requests etcd has answered so far, by method, from its `/metrics` page: an
/// independent count of what the library sends.
pub(crate) async fn etcd_unary_counts(endpoint: &str) -> Res<BTreeMap<String, u64>> {
    let body = darkrift_etcd_testing::scrape(&format!("{endpoint}/metrics")).await?;
    let mut counts = BTreeMap::new();
    for line in body.lines() {
        if !line.starts_with("grpc_server_handled_total{") || !line.contains("grpc_type=\"unary\"")
        {
            continue;
        }
        let Some(method) = line
            .split("grpc_method=\"")
            .nth(1)
            .and_then(|rest| rest.split('"').next())
        else {
            continue;
        };
        let value: f64 = line
            .rsplit(' ')
            .next()
            .and_then(|v| v.parse().ok())
            .unwrap_or(0.0);
        #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
        let value = value as u64;
        *counts.entry(method.to_owned()).or_insert(0) += value;
        if !line.contains("grpc_code=\"OK\"") {
            *counts.entry(format!("{method}!err")).or_insert(0) += value;
        }
    }
    if counts.is_empty() {
        return Err("etcd /metrics has no grpc_server_handled_total".into());
    }
    Ok(counts)
}

pub(crate) fn delta(
    before: &BTreeMap<String, u64>,
    after: &BTreeMap<String, u64>,
    method: &str,
) -> u64 {
    after.get(method).copied().unwrap_or(0) - before.get(method).copied().unwrap_or(0)
}

/// All unary requests answered between two readings (errors included, counted once).
pub(crate) fn total_delta(before: &BTreeMap<String, u64>, after: &BTreeMap<String, u64>) -> u64 {
    let sum = |m: &BTreeMap<String, u64>| -> u64 {
        m.iter()
            .filter(|(k, _)| !k.ends_with("!err"))
            .map(|(_, v)| v)
            .sum()
    };
    sum(after) - sum(before)
}

/// CPU seconds (user + system) process `pid` has used, from `/proc/<pid>/stat`.
pub(crate) fn etcd_cpu_secs(pid: u32) -> f64 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return f64::NAN;
    };
    // Fields after the parenthesised command name; utime and stime are the 12th and 13th.
    let rest = stat.rsplit(')').next().unwrap_or("");
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 = f
        .get(11)
        .and_then(|u| u.parse::<f64>().ok())
        .zip(f.get(12).and_then(|s| s.parse::<f64>().ok()))
        .map_or(f64::NAN, |(u, s)| u + s);
    ticks / clock_ticks()
}

pub(crate) fn clock_ticks() -> f64 {
    command_output("getconf", &["CLK_TCK"])
        .parse()
        .unwrap_or(100.0)
}

/// Lets tasks that were just cancelled finish and free what they hold.
pub(crate) async fn settle() {
    tokio::time::sleep(Duration::from_millis(300)).await;
}
