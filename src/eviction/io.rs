//! The eviction protocol's I/O, kept thin: read the view, ask `decide.rs`, send what the
//! guard builders build, log. Every decision it acts on is a pure function tested there.

use std::sync::Arc;

use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use super::decide::{self, Step, Verdict};
use super::{PeerStatus, Reports};
use crate::client::{retrying, retrying_txn};
use crate::error::{Error, Result};
use crate::guard::{self, evict::Evicted, report::Filed, Answer, Instance};
use crate::shared::Shared;
use crate::watcher::Command;

/// DarkRift could not reach server `id`: report it (eviction on, `reports`, and we hold a
/// registration, `held`: our id and lease) or re-read its key; if its registration is gone,
/// have the watcher resynchronise through `commands` so its leave is delivered, in order,
/// before this returns. See
/// [`Connector::handle_connection_failure`](crate::Connector::handle_connection_failure).
///
/// # Errors
/// An etcd failure while reading; [`Error::Timeout`] or [`Error::Shutdown`] when the watcher
/// does not resynchronise.
pub(crate) async fn connection_failure(
    shared: &Shared,
    reports: Option<&Reports>,
    held: Option<(u16, i64)>,
    commands: &mpsc::Sender<Command>,
    id: u16,
) -> Result<PeerStatus> {
    let known = shared.view.read(
        |v| match (v.members.get(id), v.members.create_revision(id)) {
            (Some(server), Some(rev)) => Some((shared.layout.server_key(&server.group, id), rev)),
            _ => None,
        },
    );
    let Some((key, create_revision)) = known else {
        return Ok(PeerStatus::Unknown);
    };
    let peer = Instance::new(&shared.layout, id, key, create_revision);
    let reported = match reports {
        Some(reports) => report(shared, reports, held, id, &peer).await?,
        None => Reported::NotFiled,
    };
    match reported {
        Reported::Status(status) => return Ok(status),
        Reported::PeerChanged => {}
        Reported::NotFiled => {
            let resp = retrying(
                &shared.pool,
                "read peer",
                shared.config.request_timeout,
                |client| {
                    let key = peer.key.clone();
                    async move { client.kv_client().get(key, None).await }
                },
            )
            .await?;
            if resp
                .kvs()
                .first()
                .is_some_and(|kv| kv.create_revision() == create_revision)
            {
                return Ok(PeerStatus::Registered);
            }
        }
    }
    // The watcher relists and delivers the leave in order. Bounded: a watcher waiting out an
    // unreachable etcd (backoff) must not hang the caller.
    let (done, wait) = oneshot::channel();
    let bound = shared.config.request_timeout;
    let resync = async {
        commands
            .send(Command::Resync(done))
            .await
            .map_err(|_| Error::Shutdown)?;
        wait.await.map_err(|_| Error::Shutdown)
    };
    match tokio::time::timeout(bound, resync).await {
        Ok(result) => result?,
        Err(_) => {
            return Err(Error::Timeout {
                op: "resync after a connection failure",
                timeout: bound,
            })
        }
    }
    Ok(PeerStatus::Gone)
}

/// What filing a report came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Reported {
    /// Filed: the peer is still registered, or was evicted now (or changed under the
    /// eviction).
    Status(PeerStatus),
    /// The registration we could not reach is gone or was re-created: nothing was filed.
    PeerChanged,
    /// Nothing was filed (we are not registered, or the anti-flap hold): check as with
    /// eviction off.
    NotFiled,
}

/// Files our report that registration `peer` of `id` is unreachable and reads every report
/// about it, in one transaction; evicts it once `min_reporters` distinct live servers reported
/// it within the window. Ours is withdrawn once the registration leaves our view ([`sweep`]).
async fn report(
    shared: &Shared,
    reports: &Reports,
    held: Option<(u16, i64)>,
    id: u16,
    peer: &Instance,
) -> Result<Reported> {
    let create_revision = peer.create_revision;
    let admitted = reports
        .lock()
        .admit(id, create_revision, tokio::time::Instant::now());
    let me = match decide::step(held, admitted) {
        Step::File(me) => me,
        Step::NotRegistered => return Ok(Reported::NotFiled),
        Step::Held { until } => {
            tracing::info!(
                peer = id,
                revision = create_revision,
                held_for = ?until.saturating_duration_since(tokio::time::Instant::now()),
                "not reporting a peer that came back after our report on its previous \
                 registration (anti-flap hold); its lease decides"
            );
            return Ok(Reported::NotFiled);
        }
    };
    let layout = &shared.layout;
    let cfg = &shared.config;
    let eviction = &reports.config;
    let (prefix, report) = (
        layout.reports_prefix(id, create_revision),
        layout.report_key(id, create_revision, me.id),
    );
    let filing = guard::report::Filing {
        peer,
        reports: &prefix,
        report: &report,
        lease: me.lease,
        now_ms: crate::alloc::now_unix_ms(),
    };
    let txn = guard::report::build(&filing);
    let resp = retrying_txn(&shared.pool, "report peer", cfg.request_timeout, &txn).await?;
    let window_ms = decide::window_ms(eviction.window);
    let tally = match guard::report::read(&Answer::from(&resp), &filing, window_ms) {
        Filed::PeerChanged => return Ok(Reported::PeerChanged),
        Filed::Counted(tally) => tally,
    };
    if tally.ours.is_none() {
        tracing::warn!(
            key = %report,
            "our report key holds a value we did not write; leaving it alone"
        );
    }
    let filed = decide::filed(&tally, id, create_revision, &report, me.lease);
    reports
        .lock()
        .reported(id, create_revision, filed, tokio::time::Instant::now());
    tracing::info!(
        peer = id,
        reporters = tally.recent,
        needed = eviction.min_reporters,
        "reported an unreachable peer"
    );
    let peer_lease = match decide::verdict(&tally, eviction.min_reporters) {
        Verdict::TooFew => return Ok(Reported::Status(PeerStatus::Registered)),
        Verdict::Damaged => {
            tracing::warn!(
                peer = id,
                "enough reports, but the peer's slot is damaged; not evicting"
            );
            return Ok(Reported::Status(PeerStatus::Registered));
        }
        Verdict::Evict { peer_lease } => peer_lease,
    };
    // Evict exactly that registration: its key only if still the same create revision,
    // its slot only if still on its lease; the reports about it go with it.
    let owner = peer.clone().on_lease(peer_lease);
    let evict = guard::evict::build(&owner, Some(&prefix));
    let resp = retrying_txn(&shared.pool, "evict peer", cfg.request_timeout, &evict).await?;
    match guard::evict::read(&Answer::from(&resp)) {
        Evicted::Done { .. } => {
            tracing::warn!(
                peer = id,
                reporters = tally.recent,
                "peer evicted after enough reports"
            );
            Ok(Reported::Status(PeerStatus::Evicted))
        }
        Evicted::Changed => Ok(Reported::Status(PeerStatus::Gone)),
    }
}

/// Withdraws our reports about registrations that have left our view (a leave, an eviction,
/// a re-creation), each behind its guard (our lease, the report's create revision), every
/// [`crate::timing::REPORT_SWEEP`] while there are any; until `stop`.
///
/// A local check of the view, not a watch of its own: the watcher already delivers every
/// leave, and a report that outlives its registration by a sweep period is harmless (it names
/// a create revision nobody will hold again).
pub(super) async fn sweep(shared: Arc<Shared>, reports: Reports, stop: CancellationToken) {
    let mut tick = tokio::time::interval(crate::timing::REPORT_SWEEP);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        let gone = {
            let mut reporter = reports.lock();
            if !reporter.has_filed() {
                continue;
            }
            shared.view.read(|v| {
                reporter.take_gone(|peer, rev| v.members.create_revision(peer) == Some(rev))
            })
        };
        for report in gone {
            let txn = guard::report::withdraw(&report.key, report.lease, report.key_revision);
            let timeout = shared.config.request_timeout;
            match retrying_txn(&shared.pool, "withdraw report", timeout, &txn).await {
                Ok(resp) if guard::report::withdrawn(&Answer::from(&resp)) => {
                    tracing::debug!(key = %report.key, "report withdrawn: the peer left");
                }
                // Deleted with an eviction or with our lease, or not ours any more.
                Ok(_) => tracing::debug!(key = %report.key, "report already gone"),
                Err(error) => {
                    tracing::debug!(key = %report.key, %error, "withdrawing a report failed; retrying");
                    reports.lock().retry(report);
                }
            }
        }
    }
}
