//! File our report that a peer is unreachable, and read every report about it, in one round
//! trip; withdraw our report once the registration it names is gone.
//!
//! ```text
//! if peer's server key at its create revision                 (that registration still exists)
//! then txn: if report on our lease  then put report = now (our lease)
//!           else txn: if report absent  then put report = now (our lease)
//!      get reports/<peer>/<create revision>/…                 (ours included: same txn)
//!      get peer's slot                                        (its lease, for the eviction guard)
//!
//! withdraw:  if report on our lease and at its create revision  then delete report
//! ```
//!
//! A report lives on its reporter's lease, so a reporter that dies takes its report with it.
//! Our report key is written only if it is ours (on our lease) or absent: a key someone else
//! put there is left alone, and a lease-less one is not counted. Guarding the filing on the
//! peer's create revision means no report is ever filed about a registration that is already
//! gone (an eviction deletes the reports with the registration, atomically, so a late
//! reporter cannot leave one behind). The reads run after the put in the same transaction, so
//! they see our own report.

use etcd_client::{GetOptions, Txn, TxnOp};

use super::{absent, created_at, on_lease, put_on_lease, Answer, Instance, OpAnswer};

/// One filing: our report about one registration of a peer.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Filing<'a> {
    /// The peer registration we could not reach (its lease is what the filing reads).
    pub(crate) peer: &'a Instance,
    /// The prefix of the reports about that registration.
    pub(crate) reports: &'a str,
    /// Our report key under it.
    pub(crate) report: &'a str,
    /// Our lease.
    pub(crate) lease: i64,
    /// Our clock, in ms since the Unix epoch: the report's value.
    pub(crate) now_ms: i64,
}

/// Builds the filing (see the module docs).
pub(crate) fn build(filing: &Filing<'_>) -> Txn {
    let put = || put_on_lease(filing.report, filing.now_ms.to_string(), filing.lease);
    let file = Txn::new()
        .when([on_lease(filing.report, filing.lease)])
        .and_then([put()])
        .or_else([TxnOp::txn(
            Txn::new().when([absent(filing.report)]).and_then([put()]),
        )]);
    Txn::new().when([filing.peer.exists()]).and_then([
        TxnOp::txn(file),
        TxnOp::get(filing.reports, Some(GetOptions::new().with_prefix())),
        TxnOp::get(filing.peer.slot.as_str(), None),
    ])
}

/// What the filing's answer means.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Filed {
    /// The registration is gone or was re-created: nothing was filed.
    PeerChanged,
    /// The registration still exists; what its reports say.
    Counted(Tally),
}

/// The reports about one registration, as the filing read them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Tally {
    /// Our report's create revision (what its withdrawal is guarded by); `None` when the key
    /// held something we did not write, which was left alone.
    pub(crate) ours: Option<i64>,
    /// Distinct reporters whose report is on a lease and within the window (ours included).
    pub(crate) recent: usize,
    /// The lease of the peer's slot (0: no slot), for the eviction's guard.
    pub(crate) peer_lease: i64,
}

/// Reads the answer of [`build`]: `filing` as sent, `window_ms` how recent a report must be
/// to count, judged by our clock.
pub(crate) fn read(answer: &Answer, filing: &Filing<'_>, window_ms: i64) -> Filed {
    if !answer.succeeded {
        return Filed::PeerChanged;
    }
    let wrote = answer
        .nested()
        .is_some_and(|file| file.succeeded || file.nested().is_some_and(|inner| inner.succeeded));
    let reports = match answer.ops.get(1) {
        Some(OpAnswer::Get(kvs)) => kvs.as_slice(),
        _ => &[],
    };
    let peer_lease = match answer.ops.get(2) {
        Some(OpAnswer::Get(kvs)) => kvs.first().map_or(0, |kv| kv.lease),
        _ => 0,
    };
    let ours = reports
        .iter()
        .find(|kv| wrote && kv.key == filing.report.as_bytes() && kv.lease == filing.lease)
        .map(|kv| kv.create_revision);
    let recent = reports
        .iter()
        // A report lives on its reporter's lease: a lease-less key is not a report.
        .filter(|kv| {
            kv.lease != 0
                && std::str::from_utf8(&kv.value)
                    .ok()
                    .and_then(|v| v.parse::<i64>().ok())
                    .is_some_and(|t| filing.now_ms - t <= window_ms)
        })
        .count();
    Filed::Counted(Tally {
        ours,
        recent,
        peer_lease,
    })
}

/// Builds the withdrawal of our report `report`, filed on `lease` at `create_revision`: a
/// key deleted and re-created since (by anyone) is not ours any more and stays.
pub(crate) fn withdraw(report: &str, lease: i64, create_revision: i64) -> Txn {
    Txn::new()
        .when([on_lease(report, lease), created_at(report, create_revision)])
        .and_then([TxnOp::delete(report, None)])
}

/// Reads the answer of [`withdraw`]: true if our report was deleted, false if it was already
/// gone (deleted with an eviction, or with our lease) or not ours.
pub(crate) fn withdrawn(answer: &Answer) -> bool {
    answer.succeeded
}

#[cfg(test)]
mod tests {
    use super::super::testing::{describe, owner};
    use super::super::Kv;
    use super::*;

    /// Registration 42 of id 7 (the sample owner's, whatever its lease).
    fn peer() -> Instance {
        let owner = owner();
        Instance {
            key: owner.key,
            slot: owner.slot,
            create_revision: owner.create_revision,
        }
    }

    fn filing(peer: &Instance) -> Filing<'_> {
        Filing {
            peer,
            reports: "/darkrift.alloc/reports/00007/42/",
            report: "/darkrift.alloc/reports/00007/42/00003",
            lease: 9,
            now_ms: 10_000,
        }
    }

    fn report(reporter: u16, lease: i64, at_ms: &str, create_revision: i64) -> Kv {
        Kv {
            key: format!("/darkrift.alloc/reports/00007/42/{reporter:05}").into_bytes(),
            value: at_ms.as_bytes().to_vec(),
            lease,
            create_revision,
        }
    }

    /// The answer of a filing whose compare held, our write succeeding in the `then` branch
    /// (`direct`) or in the nested one.
    fn answer(direct: bool, reports: Vec<Kv>, slot_lease: Option<i64>) -> Answer {
        let inner = Answer {
            succeeded: !direct,
            ops: vec![OpAnswer::Put],
            ..Answer::default()
        };
        let file = Answer {
            succeeded: direct,
            ops: if direct {
                vec![OpAnswer::Put]
            } else {
                vec![OpAnswer::Txn(inner)]
            },
            ..Answer::default()
        };
        let slot = slot_lease.map(|lease| Kv {
            lease,
            ..Kv::default()
        });
        Answer {
            succeeded: true,
            revision: 50,
            ops: vec![
                OpAnswer::Txn(file),
                OpAnswer::Get(reports),
                OpAnswer::Get(slot.into_iter().collect()),
            ],
        }
    }

    #[test]
    fn files_and_reads_in_one_transaction_only_while_the_registration_exists() {
        assert_eq!(
            describe(&build(&filing(&peer()))),
            [
                "if create(/darkrift/game/7) == 42",
                "then txn",
                "  if lease(/darkrift.alloc/reports/00007/42/00003) == 9",
                "  then put /darkrift.alloc/reports/00007/42/00003 = \"10000\" lease 9",
                "  else txn",
                "    if create(/darkrift.alloc/reports/00007/42/00003) == 0",
                "    then put /darkrift.alloc/reports/00007/42/00003 = \"10000\" lease 9",
                "then get /darkrift.alloc/reports/00007/42/../darkrift.alloc/reports/00007/420",
                "then get /darkrift.alloc/slot/00007",
            ]
        );
    }

    #[test]
    fn a_registration_gone_or_recreated_files_nothing() {
        assert_eq!(
            read(&Answer::default(), &filing(&peer()), 5_000),
            Filed::PeerChanged
        );
    }

    #[test]
    fn counts_live_recent_reports_ours_included() {
        let reports = vec![
            report(1, 11, "9000", 44),    // recent, on a lease
            report(2, 0, "9900", 45),     // lease-less: not a report
            report(3, 9, "10000", 46),    // ours
            report(4, 12, "4000", 47),    // older than the window
            report(5, 13, "garbage", 48), // not a time
        ];
        let filed = read(&answer(true, reports, Some(21)), &filing(&peer()), 5_000);
        assert_eq!(
            filed,
            Filed::Counted(Tally {
                ours: Some(46),
                recent: 2,
                peer_lease: 21,
            })
        );
    }

    #[test]
    fn either_branch_of_the_filing_writes_ours() {
        let reports = vec![report(3, 9, "10000", 46)];
        let Filed::Counted(tally) =
            read(&answer(false, reports, Some(21)), &filing(&peer()), 5_000)
        else {
            panic!("counted");
        };
        assert_eq!(tally.ours, Some(46));
        assert_eq!(tally.recent, 1);
    }

    #[test]
    fn a_foreign_key_is_neither_ours_nor_counted_when_lease_less() {
        // Someone put a lease-less value at our key: the filing wrote nothing.
        let mut refused = answer(true, vec![report(3, 0, "10000", 46)], None);
        refused.ops[0] = OpAnswer::Txn(Answer {
            ops: vec![OpAnswer::Txn(Answer::default())],
            ..Answer::default()
        });
        assert_eq!(
            read(&refused, &filing(&peer()), 5_000),
            Filed::Counted(Tally {
                ours: None,
                recent: 0,
                peer_lease: 0,
            })
        );
    }

    #[test]
    fn a_withdrawal_deletes_only_our_report_at_its_create_revision() {
        assert_eq!(
            describe(&withdraw("/darkrift.alloc/reports/00007/42/00003", 9, 46)),
            [
                "if lease(/darkrift.alloc/reports/00007/42/00003) == 9",
                "if create(/darkrift.alloc/reports/00007/42/00003) == 46",
                "then delete /darkrift.alloc/reports/00007/42/00003",
            ]
        );
        assert!(withdrawn(&Answer {
            succeeded: true,
            ..Answer::default()
        }));
        assert!(!withdrawn(&Answer::default()));
    }
}
