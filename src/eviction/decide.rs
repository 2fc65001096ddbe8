//! The eviction protocol's decisions, without I/O: whether to file a report, and what the
//! reports read back call for. The I/O in `io.rs` asks these, then sends what they say.
//!
//! Who counts is read from etcd by [`crate::guard::report::read`]: a report on a lease (its
//! reporter alive) and within the window, one per reporter key (ours included). When a report
//! is withdrawn is [`super::reporter::Reporter::take_gone`]'s rule: once our view no longer
//! holds the registration it names.

use std::time::Duration;

use tokio::time::Instant;

use super::reporter::{Admit, FiledReport};
use crate::guard::report::Tally;

/// Who files: our id and lease (the report key names the id; the report lives on the lease).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Me {
    pub(super) id: u16,
    pub(super) lease: i64,
}

/// Whether to report a peer now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Step {
    /// File the report as `Me`.
    File(Me),
    /// We hold no registration (or its lease deadline passed): a report must die with its
    /// reporter, and ours would have nothing to die with. Check as with eviction off.
    NotRegistered,
    /// The anti-flap hold: we reported an earlier registration of this id too recently.
    /// Check as with eviction off (the peer's lease decides).
    Held {
        /// When the hold ends.
        until: Instant,
    },
}

/// Whether to report: only while registered (`held`: our id and lease), and not during the
/// anti-flap hold (`admit`, the reporter's memory's answer for this registration of the peer).
pub(super) fn step(held: Option<(u16, i64)>, admit: Admit) -> Step {
    let Some((id, lease)) = held else {
        return Step::NotRegistered;
    };
    match admit {
        Admit::File => Step::File(Me { id, lease }),
        Admit::Hold { until } => Step::Held { until },
    }
}

/// What the reports about a registration call for, once ours is filed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Verdict {
    /// Fewer than `min_reporters`: the peer stays (as far as we know, it is registered).
    TooFew,
    /// Enough, but the peer's slot is missing or on no lease: not a state a registration
    /// leaves behind (its owner repairs it), and the eviction's guard would compare against
    /// nothing. Leave it.
    Damaged,
    /// Evict that registration, its slot guarded by `peer_lease`.
    Evict {
        /// The lease of the peer's slot, as the filing read it.
        peer_lease: i64,
    },
}

/// What `tally` calls for with `min_reporters` distinct reporters needed.
pub(super) fn verdict(tally: &Tally, min_reporters: u32) -> Verdict {
    if tally.recent < usize::try_from(min_reporters).unwrap_or(usize::MAX) {
        Verdict::TooFew
    } else if tally.peer_lease == 0 {
        Verdict::Damaged
    } else {
        Verdict::Evict {
            peer_lease: tally.peer_lease,
        }
    }
}

/// How recent a report must be to count, in ms (what the reports' values are in).
pub(super) fn window_ms(window: Duration) -> i64 {
    i64::try_from(window.as_millis()).unwrap_or(i64::MAX)
}

/// What to remember of our report `key` on `lease` about registration `create_revision` of
/// `peer`, for its withdrawal: nothing when the filing found a key there that we did not
/// write (it is not ours to withdraw).
pub(super) fn filed(
    tally: &Tally,
    peer: u16,
    create_revision: i64,
    key: &str,
    lease: i64,
) -> Option<FiledReport> {
    tally.ours.map(|key_revision| FiledReport {
        peer,
        create_revision,
        key: key.to_owned(),
        lease,
        key_revision,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tally(recent: usize, peer_lease: i64) -> Tally {
        Tally {
            ours: Some(46),
            recent,
            peer_lease,
        }
    }

    #[test]
    fn only_a_registered_server_reports() {
        assert_eq!(step(None, Admit::File), Step::NotRegistered);
        // Not registered wins over the hold: nothing to log about a hold then.
        let until = Instant::now();
        assert_eq!(step(None, Admit::Hold { until }), Step::NotRegistered);
        assert_eq!(
            step(Some((3, 9)), Admit::File),
            Step::File(Me { id: 3, lease: 9 })
        );
    }

    #[test]
    fn the_anti_flap_hold_turns_a_report_into_a_plain_check() {
        let until = Instant::now() + Duration::from_secs(10);
        assert_eq!(
            step(Some((3, 9)), Admit::Hold { until }),
            Step::Held { until }
        );
    }

    #[test]
    fn fewer_than_k_reporters_evict_nobody() {
        assert_eq!(verdict(&tally(0, 21), 2), Verdict::TooFew);
        assert_eq!(verdict(&tally(1, 21), 2), Verdict::TooFew);
    }

    #[test]
    fn k_reporters_evict_that_registration_on_its_slot_lease() {
        assert_eq!(verdict(&tally(2, 21), 2), Verdict::Evict { peer_lease: 21 });
        assert_eq!(verdict(&tally(5, 21), 2), Verdict::Evict { peer_lease: 21 });
        // K = 1: one reporter is enough when so configured.
        assert_eq!(verdict(&tally(1, 21), 1), Verdict::Evict { peer_lease: 21 });
    }

    #[test]
    fn a_damaged_slot_is_never_evicted() {
        assert_eq!(verdict(&tally(3, 0), 2), Verdict::Damaged);
        // Too few reports is the answer first, whatever the slot.
        assert_eq!(verdict(&tally(1, 0), 2), Verdict::TooFew);
    }

    #[test]
    fn the_window_in_ms_saturates() {
        assert_eq!(window_ms(Duration::from_secs(30)), 30_000);
        assert_eq!(window_ms(Duration::MAX), i64::MAX);
    }

    #[test]
    fn only_a_report_we_wrote_is_remembered_for_withdrawal() {
        let key = "/darkrift.alloc/reports/00007/42/00003";
        assert_eq!(
            filed(&tally(1, 21), 7, 42, key, 9),
            Some(FiledReport {
                peer: 7,
                create_revision: 42,
                key: key.to_owned(),
                lease: 9,
                key_revision: 46,
            })
        );
        let foreign = Tally {
            ours: None,
            ..tally(1, 21)
        };
        assert_eq!(filed(&foreign, 7, 42, key, 9), None);
    }
}
