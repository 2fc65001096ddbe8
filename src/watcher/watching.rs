//! The Watch state: one gRPC stream carrying a watch per range, and one step of it. A step
//! waits for the first of four things (a command, a suspicion of the stream's member, the
//! watchdog, the stream's next response) and handles it: see the module docs of [`super`] for
//! the rules, [`super::timers`] for when the watchdog fires and when a member is probed.

use tokio::time::Instant;

use super::classify::{classify, Verdict, WatchAnswer};
use super::paging::list_from_scratch;
use super::source::{KvSource, WatchFeed};
use super::timers::{probe_due, Alarm, Timers};
use super::{Command, State, Watcher};
use crate::events::Event;
use crate::membership::KvChange;
use crate::metrics as m;

/// A watch being streamed.
pub(super) struct Watching<F> {
    /// The next revision each range needs (`from[lane]`): where a reopened stream resumes each
    /// range, so that nothing is lost or repeated; an answer moves only its own range's point.
    pub(super) from: Vec<i64>,
    /// The stream. Boxed: it is most of the state's size, and the other states are small.
    pub(super) stream: Box<F>,
    /// The pool member serving the stream: the one suspected when the stream fails or answers
    /// late, and the one a suspicion raised by another request must name to move the watch.
    pub(super) member: usize,
    /// When the stream was last heard, asked and probed, and the watchdog's timer.
    pub(super) timers: Timers,
}

impl<F> Watching<F> {
    /// A stream just opened on `member`, starting each range at `from[lane]`.
    pub(super) fn opened(
        from: Vec<i64>,
        stream: F,
        member: usize,
        progress_interval: std::time::Duration,
    ) -> Self {
        Watching {
            from,
            stream: Box::new(stream),
            member,
            timers: Timers::new(Instant::now(), progress_interval),
        }
    }
}

/// The range a response is about: the one its watch names (`lane`, set by the stream from
/// the watch id, among `ranges`), or the first for the answer to our progress request (watch
/// id −1), which is the whole stream's (proof of life only, whatever `from` it is given).
/// `None`: a response for no watch of ours, or with keys outside the range its watch id
/// names.
pub(super) fn answer_lane(lane: Option<usize>, watch_id: i64, ranges: usize) -> Option<usize> {
    match lane {
        Some(lane) if lane < ranges => Some(lane),
        Some(_) | None if watch_id == -1 => Some(0),
        _ => None,
    }
}

/// The state after a stream failure that leaves etcd reachable: a pause, then a reopen at
/// `from` (on another member once this one is suspected).
fn reopen_after_pause<F>(from: Vec<i64>) -> State<F> {
    State::Backoff {
        then: Box::new(State::Open { from }),
        unreachable: false,
    }
}

impl<S: KvSource> Watcher<S> {
    /// One step of a watch: whichever comes first of a command, a suspicion, the watchdog
    /// and the stream's next response.
    pub(super) async fn watch_step(&mut self, mut w: Watching<S::Feed>) -> State<S::Feed> {
        let alarm = w.timers.arm(
            self.settings.progress_interval,
            self.settings.idle_timeout,
            self.source.attempt_timeout(),
        );
        let msg = tokio::select! {
            // Biased: no random start per message; every branch but the stream is a cheap
            // check, and the stream is polled on every step.
            biased;
            cmd = self.commands.recv() => return self.on_command(cmd, w),
            changed = self.suspicions.changed() => return self.on_suspicion(changed.is_ok(), w),
            () = &mut w.timers.watchdog => return self.on_alarm(alarm, w).await,
            msg = w.stream.message() => msg,
        };
        match msg {
            Ok(Some(answer)) => self.on_answer(answer, w).await,
            // A stream that ends or fails resumes at `from` on another member: nothing lost,
            // nothing repeated.
            Ok(None) => {
                tracing::info!(from = ?w.from, "watch stream ended; resuming");
                self.source.suspect(w.member, "watch stream ended");
                reopen_after_pause(w.from)
            }
            Err(e) => {
                tracing::info!(error = %e, from = ?w.from, "watch stream failed; resuming");
                self.source.suspect(w.member, "watch stream failed");
                reopen_after_pause(w.from)
            }
        }
    }

    /// A command (or the connector gone: `None`, nothing to do; the task is cancelled).
    fn on_command(&mut self, cmd: Option<Command>, w: Watching<S::Feed>) -> State<S::Feed> {
        match cmd {
            Some(Command::Resync(done)) => {
                self.resync_waiters.push(done);
                list_from_scratch(false)
            }
            None => State::Watch(w),
        }
    }

    /// A suspicion raised by any request of this connector: if it names the stream's member
    /// (and there is another), the watch moves at once.
    fn on_suspicion(&mut self, changed: bool, w: Watching<S::Feed>) -> State<S::Feed> {
        let suspected = self.suspicions.borrow_and_update().1;
        if changed && suspected == w.member && self.source.members() > 1 {
            tracing::info!(from = ?w.from, "watch member suspected; moving the watch to another member");
            return State::Open { from: w.from };
        }
        State::Watch(w)
    }

    /// The watchdog fired: a silent stream is asked for progress; an answer (or any message)
    /// proves the member alive, none within the pool's attempt timeout means it froze or
    /// answers too late, so it is suspected and the watch reopened on another member. A
    /// stream silent for `idle_timeout` is recreated anyway.
    async fn on_alarm(&mut self, alarm: Alarm, mut w: Watching<S::Feed>) -> State<S::Feed> {
        match alarm {
            Alarm::Ask => match w.stream.request_progress().await {
                Ok(()) => {
                    w.timers.asked = Some(Instant::now());
                    State::Watch(w)
                }
                // The stream cannot take a request: it is gone. Resume elsewhere, as when it
                // fails.
                Err(e) => {
                    tracing::info!(error = %e, from = ?w.from, "watch stream refused a progress request; resuming");
                    self.source.suspect(w.member, "watch stream failed");
                    reopen_after_pause(w.from)
                }
            },
            Alarm::Unanswered => {
                tracing::warn!(from = ?w.from, "watch stream did not answer a progress request in time; moving it to another member");
                self.source
                    .suspect(w.member, "watch did not answer a progress request");
                State::Open { from: w.from }
            }
            Alarm::Idle => {
                tracing::warn!(from = ?w.from, silent_for = ?self.settings.idle_timeout, "watch stream silent; recreating it");
                reopen_after_pause(w.from)
            }
        }
    }

    /// One response of the stream: which range it is about, what it means ([`classify`]),
    /// what it proves of the member, and its effect on the view and the resume point.
    async fn on_answer(
        &mut self,
        mut answer: WatchAnswer,
        mut w: Watching<S::Feed>,
    ) -> State<S::Feed> {
        let Some(lane) = answer_lane(answer.lane, answer.watch_id, w.from.len()) else {
            // etcd or a proxy broke the protocol. The stream cannot be trusted to carry every
            // range's events (nor its resume points); reopen it.
            tracing::warn!(watch_id = answer.watch_id, from = ?w.from, "watch answer that matches none of our watches; reopening the stream");
            self.source
                .suspect(w.member, "watch answer matching none of our watches");
            return reopen_after_pause(w.from);
        };
        let verdict = classify(&answer, w.from[lane]);
        let relist = matches!(
            verdict,
            Verdict::Compacted { .. } | Verdict::Cancelled { .. }
        );
        if !relist {
            self.backoff = None;
        }
        let heard = Instant::now();
        self.note_heard(heard, matches!(verdict, Verdict::ProofOfLife), &mut w);
        w.timers.last_heard = heard;
        match verdict {
            Verdict::Compacted { compact_revision } => {
                tracing::warn!(
                    lane,
                    from = w.from[lane],
                    compact_revision,
                    "watch compacted; relisting"
                );
                list_from_scratch(false)
            }
            Verdict::Cancelled { auth } => self.on_cancel(auth, lane, &answer, &w).await,
            // `created` promises nothing about progress.
            Verdict::Created => State::Watch(w),
            // The answer to our progress request: proof of life only (see `classify`).
            Verdict::ProofOfLife => {
                w.timers.asked = None;
                State::Watch(w)
            }
            Verdict::Progress { next } => {
                // With several ranges, the view reflects the furthest any range has got (each
                // range's own events are applied in order; see `events` on interleaving).
                self.view
                    .update(|view, _| view.revision = view.revision.max(next - 1));
                metrics::gauge!(m::REVISION_LAG).set(0.0);
                w.from[lane] = next;
                w.timers.asked = None;
                State::Watch(w)
            }
            Verdict::Apply { last } => {
                let changes = std::mem::take(&mut answer.changes);
                self.apply(changes, last, answer.header_revision - last);
                w.from[lane] = last + 1;
                w.timers.asked = None;
                State::Watch(w)
            }
        }
    }

    /// A watch cancelled by etcd: relist, after refreshing the auth token when the reason
    /// names it (`auth`).
    async fn on_cancel(
        &self,
        auth: bool,
        lane: usize,
        answer: &WatchAnswer,
        w: &Watching<S::Feed>,
    ) -> State<S::Feed> {
        let reason = &answer.cancel_reason;
        tracing::warn!(
            lane,
            from = w.from[lane],
            reason,
            "watch cancelled by etcd; relisting"
        );
        if auth {
            // An expired auth token cancels a watch instead of failing it: get a fresh token
            // first.
            if let Err(e) = self.source.refresh_token(w.member).await {
                tracing::debug!(error = %e, "refreshing the auth token failed");
            }
        }
        list_from_scratch(false)
    }

    /// Applies one response's `changes` (its last at revision `last`, `lag` revisions behind
    /// the header) as one batch, sequencing its joins and leaves in the same step, and tells
    /// the listeners of the keys it touches.
    fn apply(&mut self, changes: Vec<KvChange>, last: i64, lag: i64) {
        self.view.update(|view, events| {
            let counts_before = (view.members.skipped(), view.members.shadowed());
            events.extend(view.members.apply(&changes).into_iter().map(Event::from));
            view.revision = view.revision.max(last);
            super::record_view_metrics(view, counts_before, lag);
        });
        self.view.announce_changes(changes);
    }

    /// What a message heard at `heard` proves of the member. The answer to our progress
    /// request (`proof_of_life`), in time, is as good as a probe. A busy stream is never
    /// silent, so the watchdog never asks its member for progress: a member answering seconds
    /// late would go unnoticed, and the view lag by as much, for as long as the traffic lasts;
    /// it is probed once per progress interval instead.
    fn note_heard(&self, heard: Instant, proof_of_life: bool, w: &mut Watching<S::Feed>) {
        if proof_of_life {
            w.timers.probed = heard;
        } else if probe_due(
            heard,
            w.timers.probed,
            self.settings.progress_interval,
            self.source.members(),
        ) {
            self.source.probe(w.member);
            w.timers.probed = heard;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_answer_is_about_the_range_its_watch_names_or_the_first_for_our_progress_request() {
        assert_eq!(answer_lane(Some(0), 0, 1), Some(0));
        assert_eq!(answer_lane(Some(2), 2, 3), Some(2));
        // The answer to a progress request is the stream's, named by no watch.
        assert_eq!(answer_lane(None, -1, 3), Some(0));
        assert_eq!(answer_lane(Some(5), -1, 3), Some(0));
        // A watch of no range of ours, or none at all: the stream broke the protocol.
        assert_eq!(answer_lane(Some(3), 3, 3), None);
        assert_eq!(answer_lane(None, 7, 3), None);
    }
}
