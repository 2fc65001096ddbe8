//! What one watch response means for the watcher: a pure decision, no I/O.
//!
//! A response is converted once from etcd-client's `WatchResponse` into the plain
//! [`WatchAnswer`] (its flags, header revision and the changes of its events), and
//! [`classify`] says what the watcher does with it:
//!
//! | response | verdict | the watcher then |
//! |---|---|---|
//! | cancelled with a compact revision | [`Verdict::Compacted`] | relists (history before it is gone) |
//! | cancelled otherwise | [`Verdict::Cancelled`] | refreshes its auth token if the reason says so, relists |
//! | no events, `created` | [`Verdict::Created`] | only notes the stream is alive (`created` promises no progress) |
//! | no events, watch id −1 | [`Verdict::ProofOfLife`] | notes the stream is alive; the resume point stays |
//! | no events otherwise | [`Verdict::Progress`] | resumes after the header revision |
//! | events | [`Verdict::Apply`] | applies them as one batch, resumes after the last one |
//!
//! The answer to our own progress *request* (watch id −1) is proof of life only: etcd before
//! 3.4.24 / 3.5.8 sends it even to a watcher still catching up, so it does not prove every
//! event up to its revision was delivered. Server-initiated progress notifications are sent
//! to caught-up watchers only, so they move the resume point.

use etcd_client::{EventType, WatchResponse};

use crate::membership::{KeyValue, KvChange};

/// One watch response as plain data.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct WatchAnswer {
    /// etcd cancelled the watch.
    pub(crate) canceled: bool,
    /// The compaction revision that cancelled it (0: not a compaction).
    pub(crate) compact_revision: i64,
    /// Why etcd cancelled it.
    pub(crate) cancel_reason: String,
    /// The watch was just created.
    pub(crate) created: bool,
    /// The watch id (−1: the answer to a progress request).
    pub(crate) watch_id: i64,
    /// The watched range it belongs to (set by the stream from the watch id); `None` for the
    /// answer to a progress request, which is the whole stream's.
    pub(crate) lane: Option<usize>,
    /// The header revision (0 when etcd sent no header).
    pub(crate) header_revision: i64,
    /// The response carried events (some may lack a key-value and yield no change).
    pub(crate) has_events: bool,
    /// The changes of its events, in order.
    pub(crate) changes: Vec<KvChange>,
}

impl From<WatchResponse> for WatchAnswer {
    /// Takes the events' keys and values out of the response instead of copying them: a busy
    /// watcher handles every event of its ranges, one or two allocations and copies each.
    fn from(mut resp: WatchResponse) -> Self {
        let header_revision = resp
            .header()
            .map_or(0, etcd_client::ResponseHeader::revision);
        // etcd-client's `pub-response-field` exposes the decoded protobuf message, whose
        // fields can be moved out.
        let resp = &mut resp.0;
        let has_events = !resp.events.is_empty();
        let changes = std::mem::take(&mut resp.events)
            .into_iter()
            .filter_map(|event| {
                let kv = event.kv?;
                match event.r#type {
                    PUT => Some(KvChange::Put(KeyValue {
                        key: kv.key,
                        value: kv.value,
                        create_revision: kv.create_revision,
                        mod_revision: kv.mod_revision,
                        lease: kv.lease,
                    })),
                    DELETE => Some(KvChange::Delete {
                        key: kv.key,
                        revision: kv.mod_revision,
                    }),
                    // A type this client does not know changes nothing it can apply (etcd
                    // has only the two).
                    _ => None,
                }
            })
            .collect();
        WatchAnswer {
            canceled: resp.canceled,
            compact_revision: resp.compact_revision,
            cancel_reason: std::mem::take(&mut resp.cancel_reason),
            created: resp.created,
            watch_id: resp.watch_id,
            lane: None,
            header_revision,
            has_events,
            changes,
        }
    }
}

/// `mvccpb.Event.EventType` as etcd's protobuf numbers it.
const PUT: i32 = EventType::Put as i32;
/// See [`PUT`].
const DELETE: i32 = EventType::Delete as i32;

/// What the watcher does with a response (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// The resume point was compacted away: relist.
    Compacted {
        /// The compaction revision.
        compact_revision: i64,
    },
    /// etcd cancelled the watch: relist, after refreshing the auth token if `auth`.
    Cancelled {
        /// The reason names an expired or refused auth token ("invalid auth token" on 3.4,
        /// "permission denied" on 3.5): an expired token cancels a watch instead of failing it.
        auth: bool,
    },
    /// The watch was created: the stream is alive; nothing more.
    Created,
    /// The answer to our progress request: the stream is alive; the resume point stays.
    ProofOfLife,
    /// A server progress notification: every event up to the header revision was sent;
    /// resume at `next`.
    Progress {
        /// The new resume point.
        next: i64,
    },
    /// Apply the changes as one batch; `last` is the revision of the last event (the resume
    /// point becomes `last + 1`).
    Apply {
        /// The last event's revision (at least `from − 1`).
        last: i64,
    },
}

/// Classifies `answer` for a watcher whose resume point is `from`.
pub(crate) fn classify(answer: &WatchAnswer, from: i64) -> Verdict {
    if answer.canceled {
        if answer.compact_revision > 0 {
            return Verdict::Compacted {
                compact_revision: answer.compact_revision,
            };
        }
        let reason = &answer.cancel_reason;
        return Verdict::Cancelled {
            auth: reason.contains("auth token") || reason.contains("permission denied"),
        };
    }
    if !answer.has_events {
        if answer.created {
            return Verdict::Created;
        }
        if answer.watch_id == -1 {
            return Verdict::ProofOfLife;
        }
        return Verdict::Progress {
            next: from.max(answer.header_revision + 1),
        };
    }
    let last = answer
        .changes
        .iter()
        .map(KvChange::revision)
        .fold(from - 1, i64::max);
    Verdict::Apply { last }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::membership::KeyValue;

    fn put(revision: i64) -> KvChange {
        KvChange::Put(KeyValue {
            key: b"/darkrift/game/1".to_vec(),
            value: Vec::new(),
            create_revision: revision,
            mod_revision: revision,
            lease: 1,
        })
    }

    fn delete(revision: i64) -> KvChange {
        KvChange::Delete {
            key: b"/darkrift/game/1".to_vec(),
            revision,
        }
    }

    fn events(changes: Vec<KvChange>) -> WatchAnswer {
        WatchAnswer {
            watch_id: 3,
            header_revision: 50,
            has_events: true,
            changes,
            ..WatchAnswer::default()
        }
    }

    #[test]
    fn a_compaction_or_a_cancel_relists() {
        let compacted = WatchAnswer {
            canceled: true,
            compact_revision: 40,
            ..WatchAnswer::default()
        };
        assert_eq!(
            classify(&compacted, 30),
            Verdict::Compacted {
                compact_revision: 40
            }
        );
        let cancelled = |reason: &str| WatchAnswer {
            canceled: true,
            cancel_reason: reason.into(),
            ..WatchAnswer::default()
        };
        assert_eq!(
            classify(&cancelled("etcdserver: no leader"), 30),
            Verdict::Cancelled { auth: false }
        );
        // An expired token, as 3.4 and 3.5 word it.
        for reason in [
            "rpc error: code = Unauthenticated desc = etcdserver: invalid auth token",
            "etcdserver: permission denied",
        ] {
            assert_eq!(
                classify(&cancelled(reason), 30),
                Verdict::Cancelled { auth: true }
            );
        }
        // Cancelled wins over anything else in the response.
        let mut with_events = events(vec![put(35)]);
        with_events.canceled = true;
        assert_eq!(
            classify(&with_events, 30),
            Verdict::Cancelled { auth: false }
        );
    }

    #[test]
    fn created_and_our_progress_answer_only_prove_life() {
        let created = WatchAnswer {
            created: true,
            header_revision: 99,
            ..WatchAnswer::default()
        };
        assert_eq!(classify(&created, 30), Verdict::Created);
        let answer = WatchAnswer {
            watch_id: -1,
            header_revision: 99,
            ..WatchAnswer::default()
        };
        assert_eq!(classify(&answer, 30), Verdict::ProofOfLife);
    }

    #[test]
    fn a_server_progress_notification_moves_the_resume_point_forward_only() {
        let progress = |header_revision| WatchAnswer {
            watch_id: 3,
            header_revision,
            ..WatchAnswer::default()
        };
        assert_eq!(classify(&progress(99), 30), Verdict::Progress { next: 100 });
        assert_eq!(classify(&progress(10), 30), Verdict::Progress { next: 30 });
    }

    #[test]
    fn events_resume_after_the_last_one_not_after_the_header() {
        let answer = events(vec![put(31), delete(33), put(32)]);
        assert_eq!(classify(&answer, 30), Verdict::Apply { last: 33 });
        // Events without a key-value change nothing and leave the resume point.
        let empty = events(Vec::new());
        assert_eq!(classify(&empty, 30), Verdict::Apply { last: 29 });
    }
}
