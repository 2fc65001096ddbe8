//! A reporter's memory for peer-reported eviction, as a state machine without I/O: the
//! reports this connector has filed, so each is withdrawn once the registration it names has
//! left the view, and the anti-flap hold.
//!
//! **Withdrawal.** A report lives on its reporter's lease, so a reporter that dies takes it
//! along, and an eviction deletes every report about the registration it ends. A reporter
//! that lives on would otherwise keep its report about a peer that left some other way (its
//! lease expired with fewer than K reports, it deregistered) until its own lease ends: the
//! sweep asks [`Reporter::take_gone`] which of its reports name a registration its view no
//! longer holds, and withdraws each with a guarded delete (our lease, the report's create
//! revision).
//!
//! **Anti-flap hold.** A healthy server evicted by mistake comes back with the same id within
//! a second, under a new create revision. A reporter whose dial still fails (a partition
//! between it and that server, a port that refuses while the process lives) would report the
//! new registration at its next dial round and, with K such reporters, evict it again, and
//! again. So after reporting one registration of an id, a reporter does not report a *newer*
//! registration of that id until [`crate::timing::report_hold`] has passed since its last
//! report: one eviction window, doubling with each consecutive re-report, at most 16 windows.
//! Held, a connection failure is answered as with eviction off (the id falls back to its lease TTL).
//! Re-reports of the *same* registration are never held: they only refresh the report's time.

use std::collections::BTreeMap;
use std::time::Duration;

use tokio::time::Instant;

use crate::timing::{report_hold, REPORT_HOLD_DOUBLINGS};

/// One report of ours in etcd.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct FiledReport {
    /// The peer's id.
    pub(crate) peer: u16,
    /// The peer registration's create revision (the report is about it).
    pub(crate) create_revision: i64,
    /// Our report key.
    pub(crate) key: String,
    /// The lease it is on (ours when it was filed).
    pub(crate) lease: i64,
    /// The report key's own create revision (what its withdrawal is guarded by).
    pub(crate) key_revision: i64,
}

/// Whether a registration may be reported now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Admit {
    /// File the report.
    File,
    /// We reported an earlier registration of this id too recently: do not report until then.
    Hold {
        /// When the hold ends.
        until: Instant,
    },
}

/// Our last report about one id.
#[derive(Debug, Clone, Copy)]
struct Last {
    /// The registration it was about.
    create_revision: i64,
    /// When.
    at: Instant,
    /// Consecutive re-reports of newer registrations of the id (each doubles the hold).
    strikes: u32,
}

/// See the module docs.
#[derive(Debug)]
pub(crate) struct Reporter {
    window: Duration,
    filed: BTreeMap<(u16, i64), FiledReport>,
    last: BTreeMap<u16, Last>,
}

impl Reporter {
    /// A reporter with the eviction `window` (the base of the hold).
    pub(crate) fn new(window: Duration) -> Self {
        Reporter {
            window,
            filed: BTreeMap::new(),
            last: BTreeMap::new(),
        }
    }

    /// Twice the longest hold: a report this old holds nothing back any more, and the id's
    /// strikes start afresh (a server that flapped once long ago is not penalised for life).
    fn forget_after(&self) -> Duration {
        report_hold(self.window, REPORT_HOLD_DOUBLINGS).saturating_mul(2)
    }

    /// May registration `create_revision` of `peer` be reported at `now`?
    pub(crate) fn admit(&self, peer: u16, create_revision: i64, now: Instant) -> Admit {
        match self.last.get(&peer) {
            Some(last) if create_revision > last.create_revision => {
                let until = last.at + report_hold(self.window, last.strikes);
                if now < until {
                    Admit::Hold { until }
                } else {
                    Admit::File
                }
            }
            _ => Admit::File,
        }
    }

    /// Registration `create_revision` of `peer` was reported at `now`; `report` is our key
    /// as the filing read it back (`None` if the key held something we did not write).
    pub(crate) fn reported(
        &mut self,
        peer: u16,
        create_revision: i64,
        report: Option<FiledReport>,
        now: Instant,
    ) {
        if let Some(report) = report {
            self.filed.insert((peer, create_revision), report);
        }
        let forget_after = self.forget_after();
        self.last
            .retain(|_, last| now.duration_since(last.at) < forget_after);
        let strikes = match self.last.get(&peer) {
            // A re-report of a newer registration: one more strike, unless the last report
            // is so old that it holds nothing back any more.
            Some(last) if create_revision > last.create_revision => {
                if now.duration_since(last.at) >= self.forget_after() {
                    0
                } else {
                    last.strikes.saturating_add(1)
                }
            }
            Some(last) if create_revision == last.create_revision => last.strikes,
            // An older registration than the one we last reported: our view went back, which
            // it never does; leave the newer memory alone.
            Some(_) => return,
            None => 0,
        };
        self.last.insert(
            peer,
            Last {
                create_revision,
                at: now,
                strikes,
            },
        );
    }

    /// Takes the reports about registrations `is_current` no longer holds (peer id, create
    /// revision), for withdrawal.
    pub(crate) fn take_gone(&mut self, is_current: impl Fn(u16, i64) -> bool) -> Vec<FiledReport> {
        let gone: Vec<(u16, i64)> = self
            .filed
            .keys()
            .filter(|(peer, rev)| !is_current(*peer, *rev))
            .copied()
            .collect();
        gone.iter()
            .filter_map(|key| self.filed.remove(key))
            .collect()
    }

    /// Puts back a report whose withdrawal failed (etcd unreachable): the next sweep tries again.
    pub(crate) fn retry(&mut self, report: FiledReport) {
        self.filed
            .insert((report.peer, report.create_revision), report);
    }

    /// True while a report of ours may still need withdrawing.
    pub(crate) fn has_filed(&self) -> bool {
        !self.filed.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const WINDOW: Duration = Duration::from_secs(10);

    fn report(peer: u16, create_revision: i64) -> FiledReport {
        FiledReport {
            peer,
            create_revision,
            key: format!("/darkrift.alloc/reports/{peer:05}/{create_revision}/00003"),
            lease: 9,
            key_revision: create_revision + 1,
        }
    }

    #[test]
    fn a_first_report_and_re_reports_of_one_registration_are_never_held() {
        let mut r = Reporter::new(WINDOW);
        let t0 = Instant::now();
        assert_eq!(r.admit(7, 42, t0), Admit::File);
        r.reported(7, 42, Some(report(7, 42)), t0);
        assert_eq!(r.admit(7, 42, t0 + Duration::from_millis(1)), Admit::File);
        // Another id is independent.
        assert_eq!(r.admit(8, 50, t0), Admit::File);
    }

    #[test]
    fn a_newer_registration_of_a_reported_id_is_held_one_window_then_doubling() {
        let mut r = Reporter::new(WINDOW);
        let t0 = Instant::now();
        r.reported(7, 42, Some(report(7, 42)), t0);
        // Evicted by mistake, back at once under revision 60: held one window.
        let soon = t0 + Duration::from_millis(20);
        assert_eq!(r.admit(7, 60, soon), Admit::Hold { until: t0 + WINDOW });
        assert_eq!(r.admit(7, 60, t0 + WINDOW), Admit::File);
        // Reported again (and evicted again): the next registration is held two windows.
        let t1 = t0 + WINDOW;
        r.reported(7, 60, Some(report(7, 60)), t1);
        assert_eq!(
            r.admit(7, 70, t1 + WINDOW),
            Admit::Hold {
                until: t1 + 2 * WINDOW
            }
        );
        // Refreshing the report of the same registration moves the hold's start.
        let t2 = t1 + Duration::from_secs(3);
        r.reported(7, 60, Some(report(7, 60)), t2);
        assert_eq!(
            r.admit(7, 70, t2),
            Admit::Hold {
                until: t2 + 2 * WINDOW
            }
        );
    }

    #[test]
    fn strikes_stop_at_sixteen_windows_and_are_forgotten_after_them() {
        let mut r = Reporter::new(WINDOW);
        let mut t = Instant::now();
        for (rev, hold) in [(10, 1), (20, 2), (30, 4), (40, 8), (50, 16), (60, 16)] {
            assert_eq!(r.admit(7, rev, t), Admit::File);
            r.reported(7, rev, None, t);
            assert_eq!(
                r.admit(7, rev + 1, t),
                Admit::Hold {
                    until: t + WINDOW * hold
                },
                "after revision {rev}"
            );
            t += WINDOW * hold;
        }
        // Quiet for twice the longest hold: the id is forgotten, the next report starts afresh.
        let quiet = t + WINDOW * 32;
        assert_eq!(r.admit(7, 100, quiet), Admit::File);
        r.reported(7, 100, None, quiet);
        assert_eq!(
            r.admit(7, 101, quiet),
            Admit::Hold {
                until: quiet + WINDOW
            }
        );
    }

    #[test]
    fn reports_about_registrations_gone_are_taken_once_for_withdrawal() {
        let mut r = Reporter::new(WINDOW);
        let t0 = Instant::now();
        r.reported(7, 42, Some(report(7, 42)), t0);
        r.reported(8, 50, Some(report(8, 50)), t0);
        // A foreign key at our report's place is not ours to withdraw.
        r.reported(9, 55, None, t0);
        assert!(r.has_filed());
        // 7 left (or came back under another revision); 8 is still there.
        let current = |peer, rev| (peer, rev) == (8, 50);
        assert_eq!(r.take_gone(current), [report(7, 42)]);
        assert!(r.take_gone(current).is_empty());
        // A withdrawal that failed is retried at the next sweep.
        r.retry(report(7, 42));
        assert_eq!(
            r.take_gone(current),
            [report(7, 42)],
            "taken again after a retry"
        );
        assert_eq!(r.take_gone(|_, _| false), [report(8, 50)]);
        assert!(!r.has_filed());
    }

    #[test]
    fn an_older_registration_never_rewinds_the_memory() {
        let mut r = Reporter::new(WINDOW);
        let t0 = Instant::now();
        r.reported(7, 60, None, t0);
        r.reported(7, 42, None, t0 + WINDOW * 2);
        assert_eq!(
            r.admit(7, 70, t0 + Duration::from_secs(1)),
            Admit::Hold { until: t0 + WINDOW }
        );
    }
}
