//! Metric names, emitted through the [`metrics`](https://docs.rs/metrics) facade so that any
//! exporter (Prometheus, StatsD, …) can be installed by the host. Without an installed
//! recorder every call is a no-op. [`describe`] gives each its HELP text.
//!
//! | name | kind | meaning |
//! |---|---|---|
//! | `darkrift_etcd_keepalive_rtt_seconds` | histogram | keep-alive request → acknowledgement |
//! | `darkrift_etcd_lease_lost_total` | counter | leases considered lost (TTL 0, NotFound, deadline) |
//! | `darkrift_etcd_reregistrations_total` | counter | successful re-registrations after a loss |
//! | `darkrift_etcd_key_restores_total` | counter | own keys put back after someone deleted them |
//! | `darkrift_etcd_watch_restarts_total` | counter | watch streams reopened (errors, ends, watchdog) |
//! | `darkrift_etcd_resyncs_total` | counter | relists after compaction, cancellation or a request |
//! | `darkrift_etcd_skipped_records_total` | counter | record versions skipped: malformed, lease-less or shadowed |
//! | `darkrift_etcd_shadowed_records_total` | counter | valid records on an id an earlier key holds (also in skipped) |
//! | `darkrift_etcd_members` | gauge | live servers in the watcher's view |
//! | `darkrift_etcd_group_members{group}` | gauge | live servers per group (the CLI's `register` / `watch`) |
//! | `darkrift_etcd_revision_lag` | gauge | etcd header revision − revision the view reflects |
//! | `darkrift_etcd_alloc_txns_total` | counter | allocation transactions sent |
//! | `darkrift_etcd_alloc_conflicts_total` | counter | allocation transactions that lost a race |
//! | `darkrift_etcd_member_suspicions_total` | counter | etcd members newly avoided (no answer in time, transport error) |

/// Keep-alive round trip, seconds.
pub const KEEPALIVE_RTT: &str = "darkrift_etcd_keepalive_rtt_seconds";
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
    describe_counter!(
        MEMBER_SUSPICIONS,
        "etcd members newly avoided: an attempt, keep-alive or progress request unanswered in time, or a transport error."
    );
}
