//! The state machine driven step by step over a scripted source: every recovery path without
//! etcd (time is paused, so the watchdog's seconds pass at once).

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::FutureExt;
use tokio::sync::{mpsc, oneshot, watch};

use super::classify::WatchAnswer;
use super::source::{KvSource, WatchFeed};
use super::{
    list_from_scratch, Command, Listing, Page, State, Watcher, WatcherSettings, WatcherTask,
    Watching,
};
use crate::error::{Error, Result};
use crate::events::{Event, EventStream};
use crate::keys::KeyLayout;
use crate::membership::{KeyValue, KvChange};
use crate::record::Registration;

type Log = Arc<Mutex<Vec<String>>>;
type Message = std::result::Result<Option<WatchAnswer>, String>;

/// A source that answers from scripts and logs what it was asked.
struct Fake {
    pages: Mutex<VecDeque<Result<Page>>>,
    opens: Mutex<VecDeque<Result<(Feed, usize)>>>,
    members: usize,
    /// How many ranges are watched.
    ranges: usize,
    suspicions: watch::Receiver<(u64, usize)>,
    log: Log,
}

/// A watch stream fed by the test through a channel; silent while the channel is empty.
struct Feed {
    messages: mpsc::UnboundedReceiver<Message>,
    log: Log,
}

impl KvSource for Fake {
    type Feed = Feed;

    fn ranges(&self) -> usize {
        self.ranges
    }

    async fn page(
        &self,
        lane: usize,
        op: &'static str,
        pinned: i64,
        _after: Option<&[u8]>,
    ) -> Result<Page> {
        let entry = if self.ranges == 1 {
            format!("{op} @{pinned}")
        } else {
            format!("{op} range {lane} @{pinned}")
        };
        self.log.lock().unwrap().push(entry);
        self.pages
            .lock()
            .unwrap()
            .pop_front()
            .expect("a scripted page")
    }

    async fn open(&self, from: &[i64]) -> Result<(Feed, usize)> {
        let entry = match from {
            [from] => format!("open {from}"),
            from => format!("open {from:?}"),
        };
        self.log.lock().unwrap().push(entry);
        self.opens
            .lock()
            .unwrap()
            .pop_front()
            .expect("a scripted open")
    }

    async fn refresh_token(&self, member: usize) -> std::result::Result<(), String> {
        self.log
            .lock()
            .unwrap()
            .push(format!("refresh token {member}"));
        Ok(())
    }

    fn suspect(&self, member: usize, why: &str) {
        self.log
            .lock()
            .unwrap()
            .push(format!("suspect {member}: {why}"));
    }

    fn probe(&self, member: usize) {
        self.log.lock().unwrap().push(format!("probe {member}"));
    }

    fn attempt_timeout(&self) -> Duration {
        Duration::from_secs(1)
    }

    fn members(&self) -> usize {
        self.members
    }

    fn suspicions(&self) -> watch::Receiver<(u64, usize)> {
        self.suspicions.clone()
    }
}

impl WatchFeed for Feed {
    async fn message(&mut self) -> Message {
        match self.messages.recv().await {
            Some(message) => message,
            None => std::future::pending().await,
        }
    }

    async fn request_progress(&mut self) -> std::result::Result<(), String> {
        self.log.lock().unwrap().push("request progress".into());
        Ok(())
    }
}

struct Harness {
    watcher: Watcher<Fake>,
    task: WatcherTask,
    suspicions: watch::Sender<(u64, usize)>,
    log: Log,
    events: EventStream,
}

fn layout() -> KeyLayout {
    KeyLayout::new("/darkrift").unwrap()
}

fn harness(members: usize, progress_interval: u64, idle_timeout: u64) -> Harness {
    let log = Log::default();
    let (suspicions, suspicions_rx) = watch::channel((0, usize::MAX));
    let fake = Fake {
        pages: Mutex::default(),
        opens: Mutex::default(),
        members,
        ranges: 1,
        suspicions: suspicions_rx,
        log: log.clone(),
    };
    let settings = WatcherSettings {
        ranges: layout().watch_ranges(&std::collections::BTreeSet::new()),
        layout: layout(),
        page_size: 2,
        request_timeout: Duration::from_secs(3),
        progress_interval: Duration::from_secs(progress_interval),
        idle_timeout: Duration::from_secs(idle_timeout),
        max_backoff: Duration::from_secs(1),
        event_queue: 64,
    };
    let (watcher, task) = Watcher::new(fake, settings);
    let events = task.view.subscribe();
    Harness {
        watcher,
        task,
        suspicions,
        log,
        events,
    }
}

impl Harness {
    fn script_page(&self, revision: i64, ids: &[u16], more: bool, cursor: Option<u64>) {
        // Each id's registration created at revision `id`: the same one in every list.
        let kvs: Vec<KeyValue> = ids.iter().map(|&id| server(id, i64::from(id))).collect();
        let next = more.then(|| kvs.last().map(|kv| kv.key.clone()).unwrap_or_default());
        let page = Page {
            revision,
            kvs,
            next,
            cursor,
        };
        self.watcher
            .source
            .pages
            .lock()
            .unwrap()
            .push_back(Ok(page));
    }

    fn script_page_failure(&self) {
        self.watcher
            .source
            .pages
            .lock()
            .unwrap()
            .push_back(Err(unreachable_etcd()));
    }

    /// Scripts a successful open on `member`; returns the sender of its messages.
    fn script_open(&self, member: usize) -> mpsc::UnboundedSender<Message> {
        let (tx, messages) = mpsc::unbounded_channel();
        let feed = Feed {
            messages,
            log: self.log.clone(),
        };
        self.watcher
            .source
            .opens
            .lock()
            .unwrap()
            .push_back(Ok((feed, member)));
        tx
    }

    fn script_open_failure(&self) {
        self.watcher
            .source
            .opens
            .lock()
            .unwrap()
            .push_back(Err(unreachable_etcd()));
    }

    async fn step(&mut self, state: State<Feed>) -> (Vec<String>, State<Feed>) {
        let next = self.watcher.step(state).await;
        let mut events = Vec::new();
        while let Some(Some(event)) = self.events.recv().now_or_never() {
            events.push(describe(&event));
        }
        (events, next)
    }

    /// Steps until the state is `name` (at most 10 steps); returns every event on the way.
    async fn step_until(
        &mut self,
        mut state: State<Feed>,
        name: &str,
    ) -> (Vec<String>, State<Feed>) {
        let mut all = Vec::new();
        for _ in 0..10 {
            let (events, next) = self.step(state).await;
            all.extend(events);
            state = next;
            if state.name() == name {
                return (all, state);
            }
        }
        panic!("never reached {name}: {all:?}");
    }

    /// Lists `ids` at `revision` (one page) and opens the watch on `member`.
    async fn synced(
        &mut self,
        revision: i64,
        ids: &[u16],
        member: usize,
    ) -> (mpsc::UnboundedSender<Message>, State<Feed>) {
        self.script_page(revision, ids, false, Some(0));
        let feed = self.script_open(member);
        let (_, state) = self.step_until(list_from_scratch(true), "watch").await;
        self.log.lock().unwrap().clear();
        (feed, state)
    }

    fn log(&self) -> Vec<String> {
        std::mem::take(&mut *self.log.lock().unwrap())
    }
}

fn unreachable_etcd() -> Error {
    Error::Timeout {
        op: "scripted",
        timeout: Duration::from_secs(3),
    }
}

fn server(id: u16, revision: i64) -> KeyValue {
    let reg = Registration::new("game", "10.0.0.1", 4000 + id, BTreeMap::new()).unwrap();
    KeyValue {
        key: layout().server_key("game", id).into_bytes(),
        value: reg.encode(id, u64::from(id), 0),
        create_revision: revision,
        mod_revision: revision,
        lease: 1,
    }
}

fn describe(event: &Event) -> String {
    match event {
        Event::Join { server, revision } => format!("join {} @{revision}", server.id),
        Event::Leave { id, revision, .. } => format!("leave {id} @{revision}"),
        Event::Synced { revision } => format!("synced @{revision}"),
        Event::Stale { revision } => format!("stale @{revision}"),
        Event::Fresh { revision } => format!("fresh @{revision}"),
        other => format!("{other:?}"),
    }
}

/// `(name, from)` of a state: where it resumes.
fn at(state: &State<Feed>) -> (&'static str, i64) {
    let from = match state {
        State::List(Listing { pinned, .. }) => *pinned,
        State::Open { from } | State::Watch(Watching { from, .. }) => from[0],
        State::Backoff { then, .. } => at(then).1,
    };
    (state.name(), from)
}

#[allow(
    clippy::unnecessary_wraps,
    reason = "a scripted stream message is a Result"
)]
fn events_at(revision: i64, changes: Vec<KvChange>) -> Message {
    Ok(Some(WatchAnswer {
        watch_id: 0,
        lane: Some(0),
        header_revision: revision,
        has_events: true,
        changes,
        ..WatchAnswer::default()
    }))
}

#[allow(
    clippy::unnecessary_wraps,
    reason = "a scripted stream message is a Result"
)]
fn no_events(watch_id: i64, header_revision: i64) -> Message {
    Ok(Some(WatchAnswer {
        watch_id,
        lane: (watch_id >= 0).then_some(0),
        header_revision,
        ..WatchAnswer::default()
    }))
}

#[allow(
    clippy::unnecessary_wraps,
    reason = "a scripted stream message is a Result"
)]
fn cancelled(compact_revision: i64, reason: &str) -> Message {
    Ok(Some(WatchAnswer {
        lane: Some(0),
        canceled: true,
        compact_revision,
        cancel_reason: reason.into(),
        ..WatchAnswer::default()
    }))
}

#[tokio::test(start_paused = true)]
async fn the_initial_list_reads_pages_pinned_at_the_first_revision_then_watches_after_it() {
    let mut h = harness(1, 5, 15);
    h.script_page(10, &[1, 2], true, Some(7));
    h.script_page(10, &[3], false, None);
    let _feed = h.script_open(0);
    let (events, state) = h.step(list_from_scratch(true)).await;
    assert!(
        events.is_empty(),
        "nothing before the last page: {events:?}"
    );
    assert_eq!(at(&state), ("list", 10));
    let (events, state) = h.step(state).await;
    assert_eq!(
        events,
        ["join 1 @10", "join 2 @10", "join 3 @10", "synced @10"]
    );
    assert_eq!(at(&state), ("open", 11));
    assert!(*h.task.synced.borrow());
    {
        let (revision, members, cursor) = h
            .task
            .view
            .read(|v| (v.revision, v.members.len(), v.cursor_read));
        assert_eq!((revision, members), (10, 3));
        assert!(cursor >= 7, "the cursor read with the first page");
    }
    let (_, state) = h.step(state).await;
    assert_eq!(at(&state), ("watch", 11));
    assert_eq!(h.log(), ["snapshot @0", "snapshot page @10", "open 11"]);
}

#[tokio::test(start_paused = true)]
async fn events_and_server_progress_move_the_resume_point_our_progress_answer_does_not() {
    let mut h = harness(1, 5, 15);
    let (feed, state) = h.synced(10, &[1], 0).await;
    feed.send(events_at(14, vec![KvChange::Put(server(2, 12))]))
        .unwrap();
    let (events, state) = h.step(state).await;
    assert_eq!(events, ["join 2 @12"]);
    // After the last event, not after the header (a catching-up watcher's header runs ahead).
    assert_eq!(at(&state), ("watch", 13));
    feed.send(no_events(-1, 30)).unwrap();
    let (_, state) = h.step(state).await;
    assert_eq!(at(&state), ("watch", 13), "proof of life only");
    feed.send(Ok(Some(WatchAnswer {
        created: true,
        lane: Some(0),
        header_revision: 40,
        ..WatchAnswer::default()
    })))
    .unwrap();
    let (_, state) = h.step(state).await;
    assert_eq!(at(&state), ("watch", 13), "created promises nothing");
    feed.send(no_events(3, 20)).unwrap();
    let (_, state) = h.step(state).await;
    assert_eq!(at(&state), ("watch", 21), "a server progress notification");
    assert_eq!(h.task.view.read(|v| v.revision), 20);
}

#[tokio::test(start_paused = true)]
async fn a_compaction_relists_and_emits_only_the_difference() {
    let mut h = harness(1, 5, 15);
    let (feed, state) = h.synced(10, &[1, 2], 0).await;
    feed.send(cancelled(15, "")).unwrap();
    let (_, state) = h.step(state).await;
    assert_eq!(at(&state), ("list", 0), "relist from scratch");
    h.script_page(20, &[1, 3], false, Some(0));
    let _feed = h.script_open(0);
    let (events, state) = h.step_until(state, "watch").await;
    assert_eq!(
        events,
        ["leave 2 @20", "join 3 @20"],
        "no Synced on a relist"
    );
    assert_eq!(at(&state), ("watch", 21));
    assert_eq!(h.log(), ["snapshot @0", "open 21"]);
}

#[tokio::test(start_paused = true)]
async fn a_cancelled_watch_relists_and_an_auth_cancel_refreshes_the_token_first() {
    let mut h = harness(2, 5, 15);
    let (feed, state) = h.synced(10, &[1], 1).await;
    feed.send(cancelled(0, "etcdserver: no leader")).unwrap();
    let (_, state) = h.step(state).await;
    assert_eq!(at(&state), ("list", 0));
    assert!(h.log().is_empty(), "no refresh for another reason");
    // A fresh watch on member 1 whose token expired.
    let (feed, state) = h.synced(10, &[1], 1).await;
    feed.send(cancelled(0, "etcdserver: invalid auth token"))
        .unwrap();
    let (_, state) = h.step(state).await;
    assert_eq!(at(&state), ("list", 0));
    assert_eq!(h.log(), ["refresh token 1"]);
}

#[tokio::test(start_paused = true)]
async fn a_stream_that_ends_or_fails_suspects_its_member_and_resumes_at_from() {
    for (message, why) in [
        (Ok(None), "watch stream ended"),
        (Err("connection reset".to_owned()), "watch stream failed"),
    ] {
        let mut h = harness(2, 5, 15);
        let (feed, state) = h.synced(10, &[1], 1).await;
        feed.send(message).unwrap();
        let (events, state) = h.step(state).await;
        assert!(events.is_empty());
        assert_eq!(at(&state), ("backoff", 11));
        assert_eq!(h.log(), [format!("suspect 1: {why}")]);
        // A broken stream is not an unreachable etcd: no Stale, and no relist.
        let _feed = h.script_open(0);
        let (events, state) = h.step_until(state, "watch").await;
        assert!(events.is_empty(), "{events:?}");
        assert_eq!(at(&state), ("watch", 11));
        assert_eq!(h.log(), ["open 11"]);
    }
}

#[tokio::test(start_paused = true)]
async fn a_silent_stream_is_asked_for_progress_and_moved_when_the_answer_does_not_come() {
    let mut h = harness(2, 5, 15);
    let (_feed, state) = h.synced(10, &[1], 0).await;
    let started = tokio::time::Instant::now();
    let (_, state) = h.step(state).await;
    assert_eq!(h.log(), ["request progress"]);
    assert_eq!(
        started.elapsed(),
        Duration::from_secs(5),
        "after progress_interval"
    );
    let (_, state) = h.step(state).await;
    // One attempt timeout later: the member is suspected, the watch moves at once.
    assert_eq!(started.elapsed(), Duration::from_secs(6));
    assert_eq!(at(&state), ("open", 11));
    assert_eq!(
        h.log(),
        ["suspect 0: watch did not answer a progress request"]
    );
}

#[tokio::test(start_paused = true)]
async fn an_answered_progress_request_keeps_the_stream() {
    let mut h = harness(1, 5, 15);
    let (feed, state) = h.synced(10, &[1], 0).await;
    let (_, state) = h.step(state).await;
    assert_eq!(h.log(), ["request progress"]);
    feed.send(no_events(-1, 10)).unwrap();
    let (_, state) = h.step(state).await;
    let State::Watch(Watching { timers, .. }) = &state else {
        panic!("still watching");
    };
    assert!(timers.asked.is_none(), "answered");
    assert_eq!(at(&state), ("watch", 11));
}

#[tokio::test(start_paused = true)]
async fn a_stream_silent_for_the_idle_timeout_is_recreated() {
    // Progress requests later than the idle timeout: only the idle watchdog fires.
    let mut h = harness(1, 60, 15);
    let (_feed, state) = h.synced(10, &[1], 0).await;
    let started = tokio::time::Instant::now();
    let (events, state) = h.step(state).await;
    assert_eq!(started.elapsed(), Duration::from_secs(15));
    assert!(events.is_empty());
    assert_eq!(at(&state), ("backoff", 11));
    assert!(h.log().is_empty(), "not a suspicion: {:?}", h.log());
}

/// Joins every 2 s, for 12 s, on a stream of a pool of `members`; returns the log.
async fn busy_for_twelve_seconds(members: usize) -> Vec<String> {
    let mut h = harness(members, 5, 15);
    let (feed, mut state) = h.synced(10, &[1], 0).await;
    for (n, id) in (2..=7u16).enumerate() {
        tokio::time::advance(Duration::from_secs(2)).await;
        let revision = 11 + i64::try_from(n).unwrap();
        feed.send(events_at(
            revision,
            vec![KvChange::Put(server(id, revision))],
        ))
        .unwrap();
        let (events, next) = h.step(state).await;
        assert_eq!(events, [format!("join {id} @{revision}")]);
        state = next;
        h.log.lock().unwrap().push(format!("{}s", 2 * (n + 1)));
    }
    assert_eq!(at(&state), ("watch", 17));
    h.log()
}

#[tokio::test(start_paused = true)]
async fn a_busy_streams_member_is_probed_once_per_progress_interval() {
    // Never silent for the 5 s progress interval, so never asked for progress; probed at 6 s
    // (the first message 5 s after the stream opened) and at 12 s (5 s after that probe).
    assert_eq!(
        busy_for_twelve_seconds(2).await,
        ["2s", "4s", "probe 0", "6s", "8s", "10s", "probe 0", "12s"]
    );
    // A single member: nowhere to move the watch, nothing to probe for.
    assert_eq!(
        busy_for_twelve_seconds(1).await,
        ["2s", "4s", "6s", "8s", "10s", "12s"]
    );
}

#[tokio::test(start_paused = true)]
async fn an_idle_stream_whose_progress_requests_are_answered_is_not_probed() {
    let mut h = harness(2, 5, 15);
    let (feed, mut state) = h.synced(10, &[1], 0).await;
    for _ in 0..3 {
        let (_, next) = h.step(state).await;
        feed.send(no_events(-1, 10)).unwrap();
        let (_, next) = h.step(next).await;
        state = next;
    }
    assert_eq!(at(&state), ("watch", 11));
    assert_eq!(
        h.log(),
        ["request progress", "request progress", "request progress"]
    );
}

#[tokio::test(start_paused = true)]
async fn a_suspicion_of_the_streams_member_moves_the_watch() {
    let mut h = harness(3, 5, 15);
    let (_feed, state) = h.synced(10, &[1], 1).await;
    // Another member suspected: the watch stays.
    h.suspicions.send_replace((1, 2));
    let (_, state) = h.step(state).await;
    assert_eq!(at(&state), ("watch", 11));
    h.suspicions.send_replace((2, 1));
    let (_, state) = h.step(state).await;
    assert_eq!(at(&state), ("open", 11));
}

#[tokio::test(start_paused = true)]
async fn a_single_member_watch_stays_when_its_member_is_suspected() {
    let mut h = harness(1, 5, 15);
    let (_feed, state) = h.synced(10, &[1], 0).await;
    h.suspicions.send_replace((1, 0));
    let (_, state) = h.step(state).await;
    assert_eq!(at(&state), ("watch", 11));
}

#[tokio::test(start_paused = true)]
async fn an_unreachable_etcd_marks_the_view_stale_and_a_completed_relist_fresh() {
    let mut h = harness(1, 5, 15);
    let (feed, state) = h.synced(10, &[1, 2], 0).await;
    feed.send(Ok(None)).unwrap();
    let (_, state) = h.step(state).await;
    // The reopen fails: etcd is unreachable.
    h.script_open_failure();
    let (events, state) = h.step_until(state, "backoff").await;
    assert!(events.is_empty());
    let State::Backoff { unreachable, .. } = &state else {
        unreachable!()
    };
    assert!(*unreachable);
    let (events, state) = h.step(state).await;
    assert_eq!(events, ["stale @10"]);
    assert!(h.task.view.read(|v| v.stale));
    // Stale: the next open relists instead (a completed relist proves freshness); the first
    // read fails too, and the view keeps its members meanwhile.
    let (_, state) = h.step(state).await;
    assert_eq!(at(&state), ("list", 0));
    h.script_page_failure();
    let (events, state) = h.step(state).await;
    assert!(events.is_empty(), "stale once: {events:?}");
    assert_eq!(h.task.view.read(|v| v.members.len()), 2);
    h.script_page(30, &[2], false, Some(0));
    let _feed = h.script_open(0);
    let (events, state) = h.step_until(state, "watch").await;
    assert_eq!(events, ["leave 1 @30", "fresh @30"]);
    assert_eq!(at(&state), ("watch", 31));
    assert!(!h.task.view.read(|v| v.stale));
}

#[tokio::test(start_paused = true)]
async fn a_resync_request_relists_and_is_answered_when_the_view_is_current() {
    let mut h = harness(1, 5, 15);
    let (_feed, state) = h.synced(10, &[1], 0).await;
    let (done, mut answered) = oneshot::channel();
    h.task.commands.send(Command::Resync(done)).await.unwrap();
    let (_, state) = h.step(state).await;
    assert_eq!(at(&state), ("list", 0));
    assert!(answered.try_recv().is_err(), "not before the relist");
    h.script_page(12, &[], false, Some(0));
    let _feed = h.script_open(0);
    let (events, _) = h.step_until(state, "watch").await;
    assert_eq!(events, ["leave 1 @12"]);
    assert!(answered.try_recv().is_ok());
}

/// Several ranges (a connector's interest): `(name, from of every range)` of a state.
fn resume_points(state: &State<Feed>) -> (&'static str, Vec<i64>) {
    match state {
        State::List(Listing { pinned, .. }) => (state.name(), vec![*pinned]),
        State::Open { from } | State::Watch(Watching { from, .. }) => (state.name(), from.clone()),
        State::Backoff { then, .. } => (state.name(), resume_points(then).1),
    }
}

/// `events_at` for range `lane`.
fn lane_events_at(lane: usize, revision: i64, changes: Vec<KvChange>) -> Message {
    let mut message = events_at(revision, changes);
    if let Ok(Some(answer)) = &mut message {
        answer.lane = Some(lane);
        answer.watch_id = i64::try_from(lane).unwrap();
    }
    message
}

/// A harness whose source watches `ranges` ranges, listed (range `i` holding server `i + 1`)
/// at revision 10 and watched on member 0.
async fn synced_ranges(ranges: usize) -> (Harness, mpsc::UnboundedSender<Message>, State<Feed>) {
    let mut h = harness(2, 5, 15);
    h.watcher.source.ranges = ranges;
    for i in 0..ranges {
        let id = u16::try_from(i + 1).unwrap();
        h.script_page(10, &[id], false, (i == 0).then_some(0));
    }
    let feed = h.script_open(0);
    let (events, state) = h.step_until(list_from_scratch(true), "watch").await;
    let mut want: Vec<String> = (1..=ranges).map(|id| format!("join {id} @10")).collect();
    want.push("synced @10".into());
    assert_eq!(events, want);
    (h, feed, state)
}

#[tokio::test(start_paused = true)]
async fn several_ranges_are_listed_at_one_revision_then_watched_on_one_stream() {
    let (mut h, _feed, state) = synced_ranges(3).await;
    assert_eq!(
        h.log(),
        [
            "snapshot range 0 @0",
            "snapshot page range 1 @10",
            "snapshot page range 2 @10",
            "open [11, 11, 11]"
        ],
        "the first page fixes the revision; every range is read at it"
    );
    assert_eq!(resume_points(&state), ("watch", vec![11, 11, 11]));
    let (events, state) = h.step(state).await;
    assert!(events.is_empty(), "{events:?}");
    let _ = state;
}

#[tokio::test(start_paused = true)]
async fn each_range_resumes_from_its_own_point() {
    let (mut h, feed, state) = synced_ranges(2).await;
    h.log();
    // Range 1 is ahead of range 0 (a catching-up watcher): each range's point moves alone,
    // each range's events are applied in its order, the view's revision is the furthest.
    feed.send(lane_events_at(1, 14, vec![KvChange::Put(server(5, 14))]))
        .unwrap();
    let (events, state) = h.step(state).await;
    assert_eq!(events, ["join 5 @14"]);
    assert_eq!(resume_points(&state), ("watch", vec![11, 15]));
    feed.send(lane_events_at(0, 12, vec![KvChange::Put(server(4, 12))]))
        .unwrap();
    let (events, state) = h.step(state).await;
    assert_eq!(events, ["join 4 @12"], "range 0's own order");
    assert_eq!(resume_points(&state), ("watch", vec![13, 15]));
    assert_eq!(h.task.view.read(|v| v.revision), 14);
    // A server progress notification of range 0 moves range 0 only.
    let mut progress = no_events(0, 20);
    if let Ok(Some(answer)) = &mut progress {
        answer.lane = Some(0);
    }
    feed.send(progress).unwrap();
    let (_, state) = h.step(state).await;
    assert_eq!(resume_points(&state), ("watch", vec![21, 15]));
    // A broken stream reopens every range at its own point: nothing lost, nothing repeated.
    feed.send(Ok(None)).unwrap();
    let (_, state) = h.step(state).await;
    let _feed = h.script_open(1);
    let (events, state) = h.step_until(state, "watch").await;
    assert!(events.is_empty(), "{events:?}");
    assert_eq!(resume_points(&state), ("watch", vec![21, 15]));
    assert_eq!(h.log(), ["suspect 0: watch stream ended", "open [21, 15]"]);
}

#[tokio::test(start_paused = true)]
async fn a_compaction_of_any_range_relists_every_range() {
    let (mut h, feed, state) = synced_ranges(2).await;
    h.log();
    let mut compacted = cancelled(30, "");
    if let Ok(Some(answer)) = &mut compacted {
        answer.lane = Some(1);
    }
    feed.send(compacted).unwrap();
    let (_, state) = h.step(state).await;
    assert_eq!(state.name(), "list");
    // Server 1 left meanwhile; server 2 is still there.
    h.script_page(40, &[], false, Some(0));
    h.script_page(40, &[2], false, None);
    let _feed = h.script_open(0);
    let (events, state) = h.step_until(state, "watch").await;
    assert_eq!(events, ["leave 1 @40"]);
    assert_eq!(resume_points(&state), ("watch", vec![41, 41]));
}

#[tokio::test(start_paused = true)]
async fn an_answer_matching_none_of_our_watches_reopens_the_stream() {
    let (mut h, feed, state) = synced_ranges(2).await;
    h.log();
    let mut stray = events_at(12, vec![KvChange::Put(server(9, 12))]);
    if let Ok(Some(answer)) = &mut stray {
        answer.lane = None;
        answer.watch_id = 7;
    }
    feed.send(stray).unwrap();
    let (events, state) = h.step(state).await;
    assert!(events.is_empty(), "not applied: {events:?}");
    assert_eq!(resume_points(&state), ("backoff", vec![11, 11]));
    assert_eq!(
        h.log(),
        ["suspect 0: watch answer matching none of our watches"]
    );
}
