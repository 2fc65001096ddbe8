//! Metric names, emitted through the [`metrics`](https://docs.rs/metrics) facade so that any
//! exporter (Prometheus, StatsD, …) can be installed by the host. Without an installed
//! recorder every call is a no-op. [`describe`] gives each its HELP text; [`export_zeros`]
//! makes every counter and gauge below exist (at 0) before its first event.
//!
//! | name | kind | meaning |
//! |---|---|---|
//! | `darkrift_etcd_keepalive_rtt_seconds` | histogram | keep-alive request → acknowledgement (buckets [`KEEPALIVE_RTT_BUCKETS`] under the `monitor` feature) |
//! | `darkrift_etcd_lease_lost_total` | counter | leases considered lost (TTL 0, NotFound, deadline) |
//! | `darkrift_etcd_reregistrations_total` | counter | successful re-registrations after a loss |
//! | `darkrift_etcd_key_restores_total` | counter | own keys put back after someone deleted them |
//! | `darkrift_etcd_watch_restarts_total` | counter | watch streams reopened (errors, ends, watchdog) |
//! | `darkrift_etcd_resyncs_total` | counter | relists after compaction, cancellation or a request |
//! | `darkrift_etcd_skipped_records_total` | counter | record versions skipped: malformed, lease-less or shadowed |
//! | `darkrift_etcd_shadowed_records_total` | counter | valid records on an id an earlier key holds (also in skipped) |
//! | `darkrift_etcd_subscriber_lags_total` | counter | event subscriber queues that overflowed |
//! | `darkrift_etcd_members` | gauge | live servers in the watcher's view |
//! | `darkrift_etcd_registered` | gauge | 1 while registered, else 0 (set by the host; the CLI's `register` / `watch`) |
//! | `darkrift_etcd_view_fresh` | gauge | 1 while the view is synced and fresh, else 0 (set by the host, likewise) |
//! | `darkrift_etcd_build_info{version}` | gauge | always 1; the library's version as a label |
//! | `darkrift_etcd_group_members{group}` | gauge | live servers per group (the CLI's `register` / `watch`) |
//! | `darkrift_etcd_revision_lag` | gauge | etcd header revision − revision the view reflects |
//! | `darkrift_etcd_alloc_txns_total` | counter | allocation transactions sent |
//! | `darkrift_etcd_alloc_conflicts_total` | counter | allocation transactions that lost a race |
//! | `darkrift_etcd_member_suspicions_total` | counter | etcd members newly avoided (no answer in time, transport error) |

/// Keep-alive round trip, seconds.
pub const KEEPALIVE_RTT: &str = "darkrift_etcd_keepalive_rtt_seconds";
/// Bucket bounds of [`KEEPALIVE_RTT`], seconds: a LAN round trip is ~1 ms, a lease is lost
/// after seconds, so 1 ms to 10 s.
pub const KEEPALIVE_RTT_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];
/// 1 while this process's server is registered, else 0 (a gauge the host sets).
pub const REGISTERED: &str = "darkrift_etcd_registered";
/// 1 while the view is synced and fresh, else 0 (a gauge the host sets).
pub const VIEW_FRESH: &str = "darkrift_etcd_view_fresh";
/// Always 1, with the library's version as label `version`.
pub const BUILD_INFO: &str = "darkrift_etcd_build_info";
/// Leases considered lost.
pub const LEASE_LOST: &str = "darkrift_etcd_lease_lost_total";
/// Successful re-registrations.
pub const REREGISTRATIONS: &str = "darkrift_etcd_reregistrations_total";
/// Own keys restored.
pub const KEY_RESTORES: &str = "darkrift_etcd_key_restores_total";
/// Watch streams reopened.
pub const WATCH_RESTARTS: &str = "darkrift_etcd_watch_restarts_total";
/// Relists (compaction, cancellation, explicit resync).
pub const RESYNCS: &str = "darkrift_etcd_resyncs_total";
/// Times an event subscriber's queue overflowed (it then gets a catch-up; see `events`).
pub const SUBSCRIBER_LAGS: &str = "darkrift_etcd_subscriber_lags_total";
/// Record versions skipped: malformed, lease-less, or shadowed.
pub const SKIPPED_RECORDS: &str = "darkrift_etcd_skipped_records_total";
/// Valid records on an id that an earlier key holds (see `membership`); also skipped.
pub const SHADOWED_RECORDS: &str = "darkrift_etcd_shadowed_records_total";
/// Live servers in the view.
pub const MEMBERS: &str = "darkrift_etcd_members";
/// Header revision minus view revision.
pub const REVISION_LAG: &str = "darkrift_etcd_revision_lag";
/// Allocation transactions sent.
pub const ALLOC_TXNS: &str = "darkrift_etcd_alloc_txns_total";
/// Allocation transactions that lost a race.
pub const ALLOC_CONFLICTS: &str = "darkrift_etcd_alloc_conflicts_total";
/// etcd members newly suspected (see the `pool` module).
pub const MEMBER_SUSPICIONS: &str = "darkrift_etcd_member_suspicions_total";
/// Live servers per group, as the CLI's `register` and `watch` follow them (label `group`).
pub const GROUP_MEMBERS: &str = "darkrift_etcd_group_members";

/// Registers the HELP text and unit of every metric above with the installed recorder, so an
/// exporter (e.g. Prometheus) describes them; call once after installing it.
pub fn describe() {
    use metrics::{describe_counter, describe_gauge, describe_histogram, Unit};
    describe_histogram!(
        KEEPALIVE_RTT,
        Unit::Seconds,
        "Lease keep-alive round trip: request sent to acknowledgement received."
    );
    describe_counter!(
        LEASE_LOST,
        "Leases considered lost (TTL 0, lease not found, or the local deadline passed)."
    );
    describe_counter!(
        REREGISTRATIONS,
        "Successful re-registrations after a lease loss or a removed key."
    );
    describe_counter!(
        KEY_RESTORES,
        "Own server keys put back after someone else deleted them."
    );
    describe_counter!(
        WATCH_RESTARTS,
        "Watch streams reopened (stream errors, ends, silent-watch watchdog)."
    );
    describe_counter!(
        RESYNCS,
        "Relists of the registry (after compaction, cancellation or a requested resync)."
    );
    describe_counter!(
        SUBSCRIBER_LAGS,
        "Event subscriber queues that overflowed (each then gets a catch-up from the view)."
    );
    describe_counter!(
        SKIPPED_RECORDS,
        "Records under the prefix skipped as malformed or conflicting."
    );
    describe_gauge!(MEMBERS, "Live servers in the watcher's view, all groups.");
    describe_gauge!(
        GROUP_MEMBERS,
        "Live servers per group (label group), as the CLI follows them."
    );
    describe_gauge!(
        REVISION_LAG,
        "etcd's header revision minus the revision the view reflects."
    );
    describe_counter!(ALLOC_TXNS, "Id allocation transactions sent.");
    describe_counter!(
        ALLOC_CONFLICTS,
        "Id allocation transactions that lost a race to another server."
    );
    describe_counter!(
        SHADOWED_RECORDS,
        "Valid records on an id that an earlier-created key holds (also counted as skipped)."
    );
    describe_gauge!(
        REGISTERED,
        "1 while this process's server is registered (the lease fence holds), else 0."
    );
    describe_gauge!(
        VIEW_FRESH,
        "1 while the view has its initial snapshot and etcd answers (not stale), else 0."
    );
    describe_gauge!(
        BUILD_INFO,
        "Always 1; label version is darkrift-etcd's version."
    );
    describe_counter!(
        MEMBER_SUSPICIONS,
        "etcd members newly avoided: an attempt, keep-alive or progress request unanswered in time, or a transport error."
    );
}

/// Every counter above at 0 and every unlabelled gauge at 0 (unless already set), plus
/// [`BUILD_INFO`] and an empty [`KEEPALIVE_RTT`] histogram, so that a scrape before the first
/// event sees each series (an absent series and a zero one read differently in alerts).
/// [`GROUP_MEMBERS`] is per group and appears with its group's first member.
pub fn export_zeros() {
    for name in [
        LEASE_LOST,
        REREGISTRATIONS,
        KEY_RESTORES,
        WATCH_RESTARTS,
        RESYNCS,
        SUBSCRIBER_LAGS,
        SKIPPED_RECORDS,
        SHADOWED_RECORDS,
        ALLOC_TXNS,
        ALLOC_CONFLICTS,
        MEMBER_SUSPICIONS,
    ] {
        metrics::counter!(name).increment(0);
    }
    for name in [MEMBERS, REVISION_LAG, REGISTERED, VIEW_FRESH] {
        metrics::gauge!(name).increment(0.0);
    }
    metrics::gauge!(BUILD_INFO, "version" => env!("CARGO_PKG_VERSION")).set(1.0);
    let _ = metrics::histogram!(KEEPALIVE_RTT);
}
