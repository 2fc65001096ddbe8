//! The keep-alive task driven over a scripted source on a paused clock: every rule of the
//! keep-alive (renewal, loss, stall and hedge, reopen, gate, end) without etcd.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::Instant;

use super::hub::{KeepAliveHub, NewLease};
use super::source::{Answer, KeepAliveStream, LeaseSource, OpenError};
use super::LeaseState;

type Log = Arc<Mutex<Vec<String>>>;
type Message = Result<Option<Answer>, String>;
type OpenResult = Result<Wire, OpenError>;

/// How an open is answered.
enum Script {
    /// At once.
    Now(OpenResult),
    /// When the test says so.
    Later(oneshot::Receiver<OpenResult>),
}

/// A source that answers opens from a script (an unscripted open never answers) and logs
/// what it was asked.
#[derive(Clone)]
struct Fake {
    opens: Arc<Mutex<VecDeque<Script>>>,
    log: Log,
    members: usize,
    preferred: Arc<AtomicUsize>,
    suspicions: watch::Receiver<(u64, usize)>,
}

/// A keep-alive stream fed by the test; silent while its channel is empty.
struct Wire {
    name: &'static str,
    answers: mpsc::UnboundedReceiver<Message>,
    log: Log,
}

impl Drop for Wire {
    fn drop(&mut self) {
        self.log
            .lock()
            .unwrap()
            .push(format!("close {}", self.name));
    }
}

impl LeaseSource for Fake {
    type Stream = Wire;

    async fn open(&self, member: usize, id: i64) -> OpenResult {
        self.log
            .lock()
            .unwrap()
            .push(format!("open {id} on {member}"));
        let script = self.opens.lock().unwrap().pop_front();
        match script {
            Some(Script::Now(result)) => result,
            Some(Script::Later(answer)) => match answer.await {
                Ok(result) => result,
                Err(_) => std::future::pending().await,
            },
            None => std::future::pending().await,
        }
    }

    fn choose(&self) -> usize {
        self.preferred.load(Ordering::Relaxed)
    }

    fn suspect(&self, member: usize, why: &str) {
        self.log
            .lock()
            .unwrap()
            .push(format!("suspect {member}: {why}"));
        let next = (member + 1) % self.members;
        let _ = self
            .preferred
            .compare_exchange(member, next, Ordering::Relaxed, Ordering::Relaxed);
    }

    fn confirm(&self, member: usize) {
        self.log.lock().unwrap().push(format!("confirm {member}"));
    }

    fn members(&self) -> usize {
        self.members
    }

    fn suspicions(&self) -> watch::Receiver<(u64, usize)> {
        self.suspicions.clone()
    }
}

impl KeepAliveStream for Wire {
    async fn send(&mut self, id: i64) -> Result<(), String> {
        self.log
            .lock()
            .unwrap()
            .push(format!("send {id} on {}", self.name));
        Ok(())
    }

    async fn message(&mut self) -> Message {
        match self.answers.recv().await {
            Some(message) => message,
            None => std::future::pending().await,
        }
    }
}

struct Harness {
    hub: Arc<KeepAliveHub>,
    fake: Fake,
    suspicions: watch::Sender<(u64, usize)>,
    t0: Instant,
}

const S: fn(u64) -> Duration = Duration::from_secs;
const MS: fn(u64) -> Duration = Duration::from_millis;

fn harness(members: usize) -> Harness {
    let (suspicions, suspicions_rx) = watch::channel((0, usize::MAX));
    let fake = Fake {
        opens: Arc::default(),
        log: Log::default(),
        members,
        preferred: Arc::default(),
        suspicions: suspicions_rx,
    };
    Harness {
        hub: KeepAliveHub::start(fake.clone()),
        fake,
        suspicions,
        t0: Instant::now(),
    }
}

impl Harness {
    /// Adds lease `id` granted now: TTL 9 s, so a keep-alive every 3 s; `stall` as given.
    fn add(
        &self,
        id: i64,
        stall: Duration,
        gate: Option<watch::Receiver<bool>>,
    ) -> watch::Receiver<LeaseState> {
        self.hub.add(NewLease {
            id,
            ttl: S(9),
            interval: S(3),
            stall,
            granted_at: Instant::now(),
            gate,
        })
    }

    /// Scripts an open that succeeds at once with stream `name`; returns its answer sender.
    fn script_open(&self, name: &'static str) -> mpsc::UnboundedSender<Message> {
        let (tx, answers) = mpsc::unbounded_channel();
        let wire = Wire {
            name,
            answers,
            log: self.fake.log.clone(),
        };
        self.script(Script::Now(Ok(wire)));
        tx
    }

    /// Scripts an open answered when the test sends on the returned channel.
    fn script_later(&self) -> oneshot::Sender<OpenResult> {
        let (tx, rx) = oneshot::channel();
        self.script(Script::Later(rx));
        tx
    }

    fn script(&self, script: Script) {
        self.fake.opens.lock().unwrap().push_back(script);
    }

    fn wire(&self, name: &'static str) -> (Wire, mpsc::UnboundedSender<Message>) {
        let (tx, answers) = mpsc::unbounded_channel();
        let wire = Wire {
            name,
            answers,
            log: self.fake.log.clone(),
        };
        (wire, tx)
    }

    /// Takes the log so far.
    fn log(&self) -> Vec<String> {
        std::mem::take(&mut *self.fake.log.lock().unwrap())
    }

    /// Lets the paused clock run to `t0 + at`.
    async fn at(&self, at: Duration) {
        tokio::time::sleep_until(self.t0 + at).await;
    }
}

/// The message carrying an answer for lease `id` with `ttl`.
#[allow(
    clippy::unnecessary_wraps,
    reason = "a stream message is a Result; the tests send it as one"
)]
fn answer(id: i64, ttl: i64) -> Message {
    Ok(Some(Answer { id, ttl }))
}

fn alive_until(rx: &watch::Receiver<LeaseState>) -> Option<Instant> {
    match &*rx.borrow() {
        LeaseState::Alive { deadline } => Some(*deadline),
        LeaseState::Lost { .. } => None,
    }
}

fn lost_reason(rx: &watch::Receiver<LeaseState>) -> Option<String> {
    match &*rx.borrow() {
        LeaseState::Alive { .. } => None,
        LeaseState::Lost { reason } => Some(reason.clone()),
    }
}

#[tokio::test(start_paused = true)]
async fn an_answer_renews_from_the_send_time_of_the_oldest_unanswered_keep_alive() {
    let h = harness(1);
    let stream = h.script_open("A");
    let lease = h.add(7, S(30), None);
    h.at(MS(1)).await;
    assert_eq!(h.log(), ["open 7 on 0", "confirm 0"]);
    assert_eq!(alive_until(&lease), Some(h.t0 + S(9)), "the grant's");
    // Keep-alives at 3 s and 6 s, both unanswered until 6.5 s.
    h.at(MS(6500)).await;
    assert_eq!(h.log(), ["send 7 on A", "send 7 on A"]);
    stream.send(answer(7, 9)).unwrap();
    h.at(MS(6501)).await;
    assert_eq!(
        alive_until(&lease),
        Some(h.t0 + S(3) + S(9)),
        "the oldest unanswered keep-alive went out at 3 s"
    );
    stream.send(answer(7, 9)).unwrap();
    h.at(MS(6502)).await;
    assert_eq!(alive_until(&lease), Some(h.t0 + S(6) + S(9)));
    // An answer to nothing sent (counted from now) with a short TTL never moves it back.
    stream.send(answer(7, 1)).unwrap();
    h.at(MS(6503)).await;
    assert_eq!(alive_until(&lease), Some(h.t0 + S(15)));
}

#[tokio::test(start_paused = true)]
async fn many_leases_share_one_stream_each_with_its_own_deadline() {
    let h = harness(1);
    let stream = h.script_open("A");
    let first = h.add(7, S(30), None);
    h.at(MS(1)).await;
    let second = h.add(8, S(30), None);
    let third = h.add(9, S(30), None);
    h.at(MS(3500)).await;
    assert_eq!(
        h.log(),
        [
            "open 7 on 0",
            "confirm 0",
            "send 7 on A",
            "send 8 on A",
            "send 9 on A"
        ],
        "one open; every lease's keep-alive on its stream"
    );
    stream.send(answer(9, 9)).unwrap();
    stream.send(answer(8, 0)).unwrap();
    h.at(MS(3600)).await;
    assert_eq!(alive_until(&third), Some(h.t0 + MS(3001) + S(9)));
    assert!(lost_reason(&second).is_some_and(|r| r.contains("TTL 0")));
    assert_eq!(alive_until(&first), Some(h.t0 + S(9)), "not answered yet");
    // The lost lease is no longer sent; the others are.
    h.at(MS(6500)).await;
    assert_eq!(h.log(), ["send 7 on A", "send 9 on A"]);
}

#[tokio::test(start_paused = true)]
async fn ttl_0_or_not_found_loses_the_lease() {
    let h = harness(1);
    let stream = h.script_open("A");
    let lease = h.add(7, S(30), None);
    h.at(MS(3001)).await;
    stream.send(answer(7, 0)).unwrap();
    h.at(MS(3002)).await;
    assert!(lost_reason(&lease).is_some_and(|r| r.contains("TTL 0")));
    assert_eq!(
        h.log(),
        ["open 7 on 0", "confirm 0", "send 7 on A", "close A"],
        "the last lease gone, the stream closes"
    );

    // The open's own keep-alive answered NotFound: that lease is gone, not the member.
    h.script(Script::Now(Err(OpenError::LeaseGone(
        "lease not found".into(),
    ))));
    let gone = h.add(8, S(30), None);
    h.at(MS(3003)).await;
    assert!(lost_reason(&gone).is_some_and(|r| r.contains("gone")));
    assert_eq!(h.log(), ["open 8 on 0"]);
}

#[tokio::test(start_paused = true)]
async fn a_passing_deadline_loses_the_lease() {
    let h = harness(1);
    let _stream = h.script_open("A");
    let lease = h.add(7, S(30), None);
    h.at(MS(8999)).await;
    assert!(alive_until(&lease).is_some());
    h.at(S(9) + MS(1)).await;
    assert!(lost_reason(&lease).is_some_and(|r| r.contains("without an acknowledgement")));

    // Never opened at all (the open hangs): lost at its deadline too.
    let t = Instant::now();
    let hanging = h.add(8, S(30), None);
    tokio::time::sleep_until(t + S(9) + MS(1)).await;
    assert!(lost_reason(&hanging).is_some());
}

#[tokio::test(start_paused = true)]
async fn a_stalled_keep_alive_suspects_its_member_and_a_late_answer_still_renews() {
    let h = harness(3);
    let stream = h.script_open("A");
    let hedge = h.script_later();
    let lease = h.add(7, S(1), None);
    h.at(MS(1)).await;
    h.log();
    // Sent at 3 s, unanswered at 4 s: member 0 suspected, a stream opened on member 1 while
    // A is still drained.
    h.at(MS(4001)).await;
    assert_eq!(
        h.log(),
        [
            "send 7 on A",
            "suspect 0: keep-alive unanswered",
            "open 7 on 1"
        ]
    );
    stream.send(answer(7, 9)).unwrap();
    h.at(MS(4500)).await;
    assert_eq!(
        alive_until(&lease),
        Some(h.t0 + S(3) + S(9)),
        "A's late answer"
    );
    assert_eq!(h.log(), ["confirm 0"], "A kept, the hedge dropped");
    drop(hedge);
    // A goes on.
    h.at(MS(6001)).await;
    assert_eq!(h.log(), ["send 7 on A"]);
}

#[tokio::test(start_paused = true)]
async fn a_hedge_that_answers_first_replaces_the_stalled_stream() {
    let h = harness(3);
    let _stalled = h.script_open("A");
    let hedge = h.script_later();
    let first = h.add(7, S(1), None);
    let second = h.add(8, S(1), None);
    h.at(MS(4001)).await;
    assert_eq!(
        h.log(),
        [
            "open 7 on 0",
            "confirm 0",
            "send 7 on A",
            "send 8 on A",
            "suspect 0: keep-alive unanswered",
            "open 7 on 1"
        ]
    );
    let (wire, b) = h.wire("B");
    assert!(hedge.send(Ok(wire)).is_ok());
    h.at(MS(4002)).await;
    // The open renewed lease 7 from its send time; lease 8, unanswered on A, is sent at once
    // on the new stream.
    assert_eq!(alive_until(&first), Some(h.t0 + S(4) + S(9)));
    assert_eq!(alive_until(&second), Some(h.t0 + S(9)));
    assert_eq!(h.log(), ["confirm 1", "close A", "send 8 on B"]);
    b.send(answer(8, 9)).unwrap();
    h.at(MS(4500)).await;
    assert_eq!(alive_until(&second), Some(h.t0 + MS(4001) + S(9)));
    h.at(MS(7002)).await;
    assert_eq!(h.log(), ["send 7 on B", "send 8 on B"]);
}

#[tokio::test(start_paused = true)]
async fn a_suspicion_raised_elsewhere_moves_the_stream() {
    let h = harness(3);
    let _a = h.script_open("A");
    let (wire, _b) = h.wire("B");
    h.script(Script::Now(Ok(wire)));
    let _lease = h.add(7, S(30), None);
    h.at(MS(1)).await;
    h.log();
    // Another request suspects member 0 (the pool moves its preference on).
    h.fake.preferred.store(1, Ordering::Relaxed);
    h.suspicions.send_replace((1, 0));
    h.at(MS(2)).await;
    assert_eq!(h.log(), ["open 7 on 1", "confirm 1", "close A"]);
}

#[tokio::test(start_paused = true)]
async fn a_broken_stream_reopens_while_the_deadline_has_not_passed() {
    let h = harness(2);
    let stream = h.script_open("A");
    let lease = h.add(7, S(30), None);
    h.at(MS(1)).await;
    h.log();
    stream.send(Ok(None)).unwrap();
    // The first reopen is refused, the next one succeeds.
    h.script(Script::Now(Err(OpenError::Failed("refused".into()))));
    let b = h.script_open("B");
    h.at(MS(500)).await;
    assert_eq!(
        h.log(),
        [
            "suspect 0: keep-alive stream ended",
            "close A",
            "open 7 on 1",
            "suspect 1: keep-alive stream could not be opened",
            "open 7 on 0",
            "confirm 0"
        ]
    );
    assert!(alive_until(&lease).is_some_and(|d| d > h.t0 + S(9)));

    // A stream error is the stream's: suspected and reopened the same way.
    let _c = h.script_open("C");
    b.send(Err("connection reset".into())).unwrap();
    h.at(MS(600)).await;
    assert_eq!(
        h.log(),
        [
            "suspect 0: keep-alive stream failed",
            "close B",
            "open 7 on 1",
            "confirm 1"
        ]
    );
}

#[tokio::test(start_paused = true)]
async fn the_health_gate_stops_keep_alives() {
    let h = harness(1);
    let (healthy, gate) = watch::channel(false);
    let stream = h.script_open("A");
    let lease = h.add(7, S(30), Some(gate));
    h.at(S(2)).await;
    assert!(h.log().is_empty(), "no stream while the probe fails");
    healthy.send_replace(true);
    h.at(S(2) + MS(1)).await;
    assert_eq!(h.log(), ["open 7 on 0", "confirm 0"]);
    assert_eq!(alive_until(&lease), Some(h.t0 + S(2) + S(9)), "the open's");
    h.at(MS(5500)).await;
    assert_eq!(h.log(), ["send 7 on A"]);
    stream.send(answer(7, 9)).unwrap();
    h.at(MS(5501)).await;
    assert_eq!(alive_until(&lease), Some(h.t0 + S(5) + S(9)));
    // Failing again: keep-alives withheld, the lease expires at its deadline.
    healthy.send_replace(false);
    h.at(S(13)).await;
    assert!(h.log().is_empty(), "withheld");
    h.at(MS(14_001)).await;
    assert!(lost_reason(&lease).is_some_and(|r| r.contains("health probe failed")));
}

#[tokio::test(start_paused = true)]
async fn removing_the_last_lease_closes_the_stream_and_dropping_the_hub_ends_the_task() {
    let h = harness(1);
    let _stream = h.script_open("A");
    let mut lease = h.add(7, S(30), None);
    h.at(MS(1)).await;
    h.hub.remove(7);
    h.at(MS(2)).await;
    assert_eq!(h.log(), ["open 7 on 0", "confirm 0", "close A"]);
    assert!(
        lease.changed().await.is_err(),
        "no longer kept: its state sender is gone"
    );

    let _stream = h.script_open("B");
    let mut kept = h.add(8, S(30), None);
    h.at(MS(3)).await;
    drop(h.hub);
    assert!(kept.changed().await.is_err(), "the task ended");
    assert_eq!(
        std::mem::take(&mut *h.fake.log.lock().unwrap()),
        ["open 8 on 0", "confirm 0", "close B"]
    );
}
