//! Property tests of the membership diff (issue: security and hostile input).
//!
//! A small simulated etcd applies random puts (new keys, re-puts, re-creations after a
//! delete), deletes, malformed records (bad keys, garbage values, records that disagree with
//! their key) and lost-watch gaps followed by a reload, and feeds the resulting watch events
//! to a [`Membership`]. Two properties:
//!
//! 1. With the writers the registry has (records are never rewritten in place with other
//!    content, one key per id), the view equals the simulated etcd's valid records after every
//!    step, whatever mix of watch batches, gaps and reloads delivered them. Where watch events
//!    were lost without a reload (which the watcher never does, but the view must not make
//!    worse), every key whose latest change was delivered is still exactly right: a missed
//!    delete followed by a re-creation is a leave and a join with the new record.
//! 2. With hostile writers too (two keys claiming one id, in-place rewrites with other
//!    content or garbage), joins and leaves still alternate per id (never a duplicate join,
//!    never a leave without a join), revisions never go back, and the view holds exactly the
//!    ids that have an open join; after a reload it holds exactly the ids etcd has a valid
//!    record for.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use darkrift_etcd::keys::{KeyLayout, ParsedKey};
use darkrift_etcd::membership::{KeyValue, KvChange, MemberChange, Membership};
use darkrift_etcd::record::{decode, Registration, ServerInfo};
use darkrift_etcd::Event;
use proptest::prelude::*;

const PREFIX: &str = "/dr";
/// Ids 1..=6; id n lives under group "a" (even) or "b" (odd): one key per id.
const IDS: u16 = 6;

fn layout() -> KeyLayout {
    KeyLayout::new(PREFIX).expect("prefix")
}

fn group_of(id: u16) -> &'static str {
    if id.is_multiple_of(2) {
        "a"
    } else {
        "b"
    }
}

/// The keys writers use. The first `IDS` are the canonical server keys; then keys that do
/// not parse; then (hostile only) a second key for ids 1..=3.
fn keys(hostile: bool) -> Vec<Vec<u8>> {
    let mut keys: Vec<Vec<u8>> = (1..=IDS)
        .map(|id| format!("{PREFIX}/{}/{id}", group_of(id)).into_bytes())
        .collect();
    for bad in [
        "/dr/a/02",
        "/dr/a",
        "/dr/a/0",
        "/dr/b/x",
        "/dr/b/70000",
        "/dr/a/2/x",
    ] {
        keys.push(bad.as_bytes().to_vec());
    }
    if hostile {
        keys.extend((1..=3u16).map(|id| format!("{PREFIX}/c/{id}").into_bytes()));
    }
    keys
}

/// What a put writes.
#[derive(Debug, Clone)]
enum Value {
    /// A valid record for the key (if the key is a server key), with host variant `v`.
    Record(u8),
    /// A record whose id disagrees with its key.
    WrongId,
    /// A record with port 0.
    PortZero,
    /// Arbitrary bytes.
    Garbage(Vec<u8>),
}

#[derive(Debug, Clone)]
enum Mutation {
    Put { key: usize, value: Value },
    Delete { key: usize },
}

#[derive(Debug, Clone)]
enum Step {
    /// One watch response carrying these mutations, each at its own revision.
    Watch(Vec<Mutation>),
    /// The watch misses these mutations (e.g. compaction), then the view is reloaded.
    GapThenReload(Vec<Mutation>),
    /// A reload with nothing missed.
    Reload,
    /// The watch misses these mutations and goes on without a reload.
    Lost(Vec<Mutation>),
}

fn value() -> impl Strategy<Value = Value> {
    prop_oneof![
        6 => (0u8..3).prop_map(Value::Record),
        1 => Just(Value::WrongId),
        1 => Just(Value::PortZero),
        1 => proptest::collection::vec(any::<u8>(), 0..24).prop_map(Value::Garbage),
    ]
}

fn mutation(n_keys: usize) -> impl Strategy<Value = Mutation> {
    prop_oneof![
        3 => (0..n_keys, value()).prop_map(|(key, value)| Mutation::Put { key, value }),
        2 => (0..n_keys).prop_map(|key| Mutation::Delete { key }),
    ]
}

fn steps(n_keys: usize) -> impl Strategy<Value = Vec<Step>> {
    let batch = || proptest::collection::vec(mutation(n_keys), 1..5);
    let step = prop_oneof![
        8 => batch().prop_map(Step::Watch),
        2 => batch().prop_map(Step::GapThenReload),
        1 => Just(Step::Reload),
        1 => batch().prop_map(Step::Lost),
    ];
    proptest::collection::vec(step, 1..40)
}

/// The simulated etcd: key -> (value, create revision, mod revision), and the revision.
struct Etcd {
    keys: Vec<Vec<u8>>,
    data: BTreeMap<Vec<u8>, KeyValue>,
    revision: i64,
    /// Keys whose latest change the view was told about (by a watch event or a reload).
    delivered: BTreeSet<Vec<u8>>,
    /// Whether a put on a key holding a valid record rewrites it with the same bytes (what
    /// the registry's writers do) rather than with the generated value.
    honest: bool,
}

impl Etcd {
    fn new(hostile: bool) -> Self {
        Etcd {
            keys: keys(hostile),
            data: BTreeMap::new(),
            revision: 1,
            delivered: keys(hostile).into_iter().collect(),
            honest: !hostile,
        }
    }

    #[allow(
        clippy::unused_self,
        reason = "the model's method, beside its other writes"
    )]
    fn encode(&self, key: &[u8], value: &Value) -> Vec<u8> {
        let layout = layout();
        // The (group, id) the key names, or a stand-in for keys that do not parse.
        let (group, id) = match layout.parse_server_key(key) {
            ParsedKey::Server { group, id } => (group.to_owned(), id),
            ParsedKey::Malformed(_) => ("a".to_owned(), 2),
        };
        let record = |id: u16, port: u16, v: u8| {
            Registration::new(&group, format!("h{v}"), port, BTreeMap::new())
                .expect("valid registration")
                .encode(id, u64::from(id), 0)
        };
        match value {
            Value::Record(v) => record(id, 1000 + id, *v),
            Value::WrongId => record(id % IDS + 1, 1000, 0),
            Value::PortZero => {
                let mut rec = darkrift_etcd::record::ServerRecord {
                    schema_version: 1,
                    id: u32::from(id),
                    group: group.clone(),
                    host: "h".into(),
                    port: 0,
                    ..Default::default()
                };
                rec.properties.insert("k".into(), "v".into());
                prost::Message::encode_to_vec(&rec)
            }
            Value::Garbage(bytes) => bytes.clone(),
        }
    }

    /// Applies one mutation and notes whether the view hears of it; returns the watch event
    /// etcd sends, if any.
    fn apply(&mut self, m: &Mutation, delivered: bool) -> Option<KvChange> {
        let key = match m {
            Mutation::Put { key, .. } | Mutation::Delete { key } => self.keys[*key].clone(),
        };
        let change = self.mutate(m);
        if change.is_some() {
            if delivered {
                self.delivered.insert(key);
            } else {
                self.delivered.remove(&key);
            }
        }
        change
    }

    /// A reload tells the view everything.
    fn reloaded(&mut self) {
        self.delivered = self.keys.iter().cloned().collect();
    }

    fn mutate(&mut self, m: &Mutation) -> Option<KvChange> {
        match m {
            Mutation::Put { key, value } => {
                let key = self.keys[*key].clone();
                let mut bytes = self.encode(&key, value);
                if self.honest {
                    if let Some(existing) = self.data.get(&key) {
                        if valid(&existing.key, &existing.value).is_some() {
                            bytes.clone_from(&existing.value);
                        }
                    }
                }
                self.revision += 1;
                let create_revision = self
                    .data
                    .get(&key)
                    .map_or(self.revision, |kv| kv.create_revision);
                let kv = KeyValue {
                    key: key.clone(),
                    value: bytes,
                    create_revision,
                    mod_revision: self.revision,
                    lease: 1,
                };
                self.data.insert(key, kv.clone());
                Some(KvChange::Put(kv))
            }
            Mutation::Delete { key } => {
                let key = self.keys[*key].clone();
                // etcd sends no event for deleting a key that does not exist.
                self.data.remove(&key)?;
                self.revision += 1;
                Some(KvChange::Delete {
                    key,
                    revision: self.revision,
                })
            }
        }
    }

    /// A range read of the whole prefix: sorted by key, as etcd returns it.
    fn snapshot(&self) -> Vec<KeyValue> {
        self.data.values().cloned().collect()
    }

    /// The servers etcd holds valid records for (one key per id assumed), by id.
    fn servers(&self) -> BTreeMap<u16, ServerInfo> {
        self.data
            .values()
            .filter_map(|kv| valid(&kv.key, &kv.value))
            .map(|s| (s.id, s))
            .collect()
    }
}

/// The server a key and value describe, if both are valid.
fn valid(key: &[u8], value: &[u8]) -> Option<ServerInfo> {
    match layout().parse_server_key(key) {
        ParsedKey::Server { group, id } => decode(group, id, value).ok(),
        ParsedKey::Malformed(_) => None,
    }
}

/// Membership's changes as the events a subscriber gets (the crate's one conversion).
fn as_events(changes: Vec<MemberChange>) -> Vec<Event> {
    changes.into_iter().map(Event::from).collect()
}

/// Checks the event contract over the whole log: per id joins and leaves alternate starting
/// with a join, revisions never go back; returns the ids with an open join.
fn check_log(log: &[Event]) -> Result<BTreeSet<u16>, TestCaseError> {
    let mut open: HashMap<u16, bool> = HashMap::new();
    let mut last_revision = i64::MIN;
    for event in log {
        let (id, joins, revision) = match event {
            Event::Join { server, revision } => (server.id, true, *revision),
            Event::Leave { id, revision, .. } => (*id, false, *revision),
            other => return Err(TestCaseError::fail(format!("unexpected event {other:?}"))),
        };
        let was_open = open.get(&id).copied().unwrap_or(false);
        prop_assert!(
            was_open != joins,
            "id {id}: {} while {}; log: {log:?}",
            if joins { "join" } else { "leave" },
            if was_open { "joined" } else { "not joined" }
        );
        open.insert(id, joins);
        prop_assert!(
            revision >= last_revision,
            "revision went back to {revision} after {last_revision}"
        );
        last_revision = revision;
    }
    Ok(open
        .into_iter()
        .filter_map(|(id, o)| o.then_some(id))
        .collect())
}

fn run(steps: &[Step], hostile: bool) -> Result<(), TestCaseError> {
    let mut etcd = Etcd::new(hostile);
    let mut view = Membership::new(layout());
    let mut log = Vec::new();
    for step in steps {
        let reloaded = match step {
            Step::Watch(mutations) => {
                let changes: Vec<KvChange> = mutations
                    .iter()
                    .filter_map(|m| etcd.apply(m, true))
                    .collect();
                log.extend(as_events(view.apply(&changes)));
                false
            }
            Step::Lost(mutations) => {
                for m in mutations {
                    etcd.apply(m, false);
                }
                false
            }
            Step::GapThenReload(mutations) => {
                for m in mutations {
                    etcd.apply(m, false);
                }
                // Page by page, as the watcher reads it (pages of 3).
                let mut snapshot = view.begin_snapshot();
                for page in etcd.snapshot().chunks(3) {
                    snapshot.add(page);
                }
                log.extend(as_events(view.install(snapshot, etcd.revision)));
                etcd.reloaded();
                true
            }
            Step::Reload => {
                log.extend(as_events(view.reload(&etcd.snapshot(), etcd.revision)));
                etcd.reloaded();
                true
            }
        };
        let open = check_log(&log)?;
        let ids: BTreeSet<u16> = view.servers().iter().map(|s| s.id).collect();
        prop_assert_eq!(&ids, &open, "the view holds exactly the joined ids");
        prop_assert_eq!(view.len(), ids.len());
        if !hostile {
            if etcd.delivered.len() == etcd.keys.len() {
                let want: Vec<ServerInfo> = etcd.servers().into_values().collect();
                prop_assert_eq!(view.servers(), want, "after {:?}", step);
            }
            for key in &etcd.delivered {
                let ParsedKey::Server { id, .. } = layout().parse_server_key(key) else {
                    continue;
                };
                let want = etcd.data.get(key).and_then(|kv| valid(&kv.key, &kv.value));
                prop_assert_eq!(view.get(id), want.as_ref(), "id {} after {:?}", id, step);
            }
        }
        if hostile && reloaded {
            let want: BTreeSet<u16> = etcd
                .data
                .values()
                .filter_map(|kv| valid(&kv.key, &kv.value))
                .map(|s| s.id)
                .collect();
            prop_assert_eq!(ids, want, "after a reload");
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(1000))]

    #[test]
    fn the_view_equals_etcds_final_state(steps in steps(keys(false).len())) {
        run(&steps, false)?;
    }

    #[test]
    fn hostile_writers_never_cause_a_duplicate_join(steps in steps(keys(true).len())) {
        run(&steps, true)?;
    }
}

/// The generator reaches the interesting cases, so the properties are not vacuous: in 1,000
/// generated cases there are many re-creations of deleted keys, re-creations seen without
/// their delete (a leave and a join from one put), malformed records, gaps and lost events.
#[test]
fn the_generator_covers_re_creations_malformed_records_and_gaps() {
    use proptest::strategy::ValueTree;
    use proptest::test_runner::TestRunner;

    let mut runner = TestRunner::deterministic();
    let strategy = steps(keys(true).len());
    let (mut recreations, mut unseen_deletes, mut malformed, mut gaps) = (0, 0, 0, 0);
    for _ in 0..1000 {
        let steps = strategy.new_tree(&mut runner).expect("tree").current();
        let mut etcd = Etcd::new(true);
        let mut view = Membership::new(layout());
        let mut deleted = BTreeSet::new();
        for step in &steps {
            let (mutations, delivered) = match step {
                Step::Watch(m) => (m.clone(), true),
                Step::GapThenReload(m) | Step::Lost(m) => {
                    gaps += 1;
                    (m.clone(), false)
                }
                Step::Reload => (Vec::new(), true),
            };
            for m in &mutations {
                let key = match m {
                    Mutation::Put { key, .. } | Mutation::Delete { key } => etcd.keys[*key].clone(),
                };
                let existed = etcd.data.contains_key(&key);
                let Some(change) = etcd.apply(m, delivered) else {
                    continue;
                };
                match &change {
                    KvChange::Put(_) if !existed && deleted.contains(&key) => recreations += 1,
                    KvChange::Delete { .. } => {
                        deleted.insert(key);
                    }
                    KvChange::Put(_) => {}
                }
                if delivered {
                    let events = as_events(view.apply(&[change]));
                    if matches!(events.as_slice(), [Event::Leave { .. }, Event::Join { .. }]) {
                        unseen_deletes += 1;
                    }
                }
            }
        }
        malformed += view.skipped();
    }
    assert!(recreations > 1000, "re-creations: {recreations}");
    assert!(
        unseen_deletes > 100,
        "re-creations without their delete: {unseen_deletes}"
    );
    assert!(malformed > 1000, "malformed records: {malformed}");
    assert!(gaps > 1000, "gaps and lost batches: {gaps}");
}

// Records that lie (issue 11): lease-less records, records changed in place, and several keys
// claiming one id. Whatever the interleaving, the live view at every revision is the view a
// fresh snapshot of etcd at that revision gives, records included, and the events of each
// revision are exactly the difference a snapshot diff gives.

/// Ids 1..=3, each claimable under three groups; `/dr/a-b/<id>` sorts before `/dr/a/<id>`
/// ('-' < '/') although the group "a" sorts before "a-b", so a tie exercises the key order.
const CLAIM_GROUPS: [&str; 3] = ["a", "a-b", "b"];

fn claim_keys() -> Vec<Vec<u8>> {
    let mut keys: Vec<Vec<u8>> = (1..=3u16)
        .flat_map(|id| {
            CLAIM_GROUPS
                .iter()
                .map(move |g| format!("{PREFIX}/{g}/{id}").into_bytes())
        })
        .collect();
    keys.push(b"/dr/a/01".to_vec());
    keys.push(b"/dr/b".to_vec());
    keys
}

/// What a put writes.
#[derive(Debug, Clone)]
enum Write {
    /// A record valid for its key, with one of three hosts and three property sets, on a
    /// lease or (like `etcdctl put` without `--lease`) not.
    Record { host: u8, props: u8, lease: bool },
    /// Bytes that are not a record.
    Garbage,
}

#[derive(Debug, Clone)]
enum Op {
    Put { key: usize, write: Write },
    Delete { key: usize },
}

fn write() -> impl Strategy<Value = Write> {
    prop_oneof![
        6 => (0u8..3, 0u8..3).prop_map(|(host, props)| Write::Record { host, props, lease: true }),
        2 => (0u8..3, 0u8..3).prop_map(|(host, props)| Write::Record { host, props, lease: false }),
        1 => Just(Write::Garbage),
    ]
}

fn op() -> impl Strategy<Value = Op> {
    let n = claim_keys().len();
    prop_oneof![
        3 => (0..n, write()).prop_map(|(key, write)| Op::Put { key, write }),
        2 => (0..n).prop_map(|key| Op::Delete { key }),
    ]
}

/// Watch responses, each of one to three transactions (revisions) of one to four operations.
fn responses() -> impl Strategy<Value = Vec<Vec<Vec<Op>>>> {
    let txn = proptest::collection::vec(op(), 1..5);
    proptest::collection::vec(proptest::collection::vec(txn, 1..4), 1..30)
}

/// A simulated etcd for [`Op`] transactions.
#[derive(Default)]
struct Store {
    data: BTreeMap<Vec<u8>, KeyValue>,
    revision: i64,
}

impl Store {
    /// Applies one transaction at the next revision; returns its watch events (none if it
    /// changed nothing, which takes no revision). Operations on a key the transaction already
    /// touched are dropped: etcd refuses a transaction that writes one key twice.
    fn txn(&mut self, ops: &[Op]) -> Vec<KvChange> {
        let keys = claim_keys();
        let revision = self.revision + 1;
        let mut touched = BTreeSet::new();
        let mut changes = Vec::new();
        for op in ops {
            let (Op::Put { key, .. } | Op::Delete { key }) = op;
            let key = keys[*key].clone();
            if !touched.insert(key.clone()) {
                continue;
            }
            match op {
                Op::Put { write, .. } => {
                    let (value, lease) = match write {
                        Write::Record { host, props, lease } => (
                            lying_record(&key, *host, *props),
                            if *lease { 7 } else { 0 },
                        ),
                        Write::Garbage => (b"garbage".to_vec(), 7),
                    };
                    let create_revision = self
                        .data
                        .get(&key)
                        .map_or(revision, |kv| kv.create_revision);
                    let kv = KeyValue {
                        key: key.clone(),
                        value,
                        create_revision,
                        mod_revision: revision,
                        lease,
                    };
                    self.data.insert(key, kv.clone());
                    changes.push(KvChange::Put(kv));
                }
                Op::Delete { .. } => {
                    if self.data.remove(&key).is_some() {
                        changes.push(KvChange::Delete { key, revision });
                    }
                }
            }
        }
        if !changes.is_empty() {
            self.revision = revision;
        }
        changes
    }

    /// A range read of the whole prefix: sorted by key, as etcd returns it.
    fn snapshot(&self) -> Vec<KeyValue> {
        self.data.values().cloned().collect()
    }
}

/// A record for `key` (any key: one that does not parse gets a stand-in record).
fn lying_record(key: &[u8], host: u8, props: u8) -> Vec<u8> {
    let (group, id) = match layout().parse_server_key(key) {
        ParsedKey::Server { group, id } => (group.to_owned(), id),
        ParsedKey::Malformed(_) => ("a".to_owned(), 1),
    };
    let properties = (0..props)
        .map(|i| (format!("k{i}"), format!("v{props}")))
        .collect();
    Registration::new(&group, format!("h{host}"), 1000 + id, properties)
        .expect("valid registration")
        .encode(id, u64::from(id), i64::from(host))
}

/// Everything a view shows: each member's record and create revision, by id.
fn view_state(view: &Membership) -> Vec<(ServerInfo, Option<i64>)> {
    view.servers()
        .into_iter()
        .map(|s| {
            let revision = view.create_revision(s.id);
            (s, revision)
        })
        .collect()
}

/// Events grouped by revision, then by id, each id's events in order: the order the live
/// diff and a snapshot diff emit the ids of one revision in may differ, nothing else may.
fn by_revision(events: &[Event]) -> BTreeMap<i64, BTreeMap<u16, Vec<Event>>> {
    let mut out: BTreeMap<i64, BTreeMap<u16, Vec<Event>>> = BTreeMap::new();
    for event in events {
        let (id, revision) = match event {
            Event::Join { server, revision } => (server.id, *revision),
            Event::Leave { id, revision, .. } => (*id, *revision),
            _ => continue,
        };
        out.entry(revision)
            .or_default()
            .entry(id)
            .or_default()
            .push(event.clone());
    }
    out
}

/// The rules written out independently of [`Membership`]: a claim is a key that parses, on
/// a lease, with a valid record; each id is held by its claim with the earliest create
/// revision, then the smallest key. Returns each id's holder: key, create revision, record.
fn holders(store: &Store) -> BTreeMap<u16, (Vec<u8>, i64, ServerInfo)> {
    let mut out: BTreeMap<u16, (Vec<u8>, i64, ServerInfo)> = BTreeMap::new();
    for kv in store.data.values().filter(|kv| kv.lease != 0) {
        let Some(server) = valid(&kv.key, &kv.value) else {
            continue;
        };
        let earlier = |(key, create, _): &(Vec<u8>, i64, ServerInfo)| {
            (*create, key.as_slice()) < (kv.create_revision, kv.key.as_slice())
        };
        if !out.get(&server.id).is_some_and(earlier) {
            out.insert(server.id, (kv.key.clone(), kv.create_revision, server));
        }
    }
    out
}

/// The events one revision must give, from the holders before and after it: per id, nothing
/// if the same key and create revision holds it with the same group, host, port and
/// properties; else a leave of the old holder, then a join of the new one.
fn expected_events(
    before: &BTreeMap<u16, (Vec<u8>, i64, ServerInfo)>,
    after: &BTreeMap<u16, (Vec<u8>, i64, ServerInfo)>,
    revision: i64,
) -> Vec<Event> {
    let announced = |(key, create, s): &(Vec<u8>, i64, ServerInfo)| {
        (
            key.clone(),
            *create,
            s.host.clone(),
            s.port,
            s.properties.clone(),
        )
    };
    let ids: BTreeSet<u16> = before.keys().chain(after.keys()).copied().collect();
    let mut out = Vec::new();
    for id in ids {
        let (b, a) = (before.get(&id), after.get(&id));
        if b.map(announced) == a.map(announced) {
            continue;
        }
        if let Some((_, _, server)) = b {
            out.push(Event::Leave {
                id,
                group: server.group.clone(),
                revision,
                departing: server.departing,
            });
        }
        if let Some((_, _, server)) = a {
            out.push(Event::Join {
                server: server.clone(),
                revision,
            });
        }
    }
    out
}

fn run_lying(responses: &[Vec<Vec<Op>>]) -> Result<(), TestCaseError> {
    let mut store = Store::default();
    let mut live = Membership::new(layout());
    // Reloaded at every revision: its events are the snapshot diff of each revision.
    let mut reloaded = Membership::new(layout());
    let mut log = Vec::new();
    for response in responses {
        let mut changes = Vec::new();
        let mut expected = Vec::new();
        let mut diffs = Vec::new();
        for ops in response {
            let before = holders(&store);
            let txn = store.txn(ops);
            if txn.is_empty() {
                continue;
            }
            changes.extend(txn);
            let after = holders(&store);
            expected.extend(expected_events(&before, &after, store.revision));
            diffs.extend(as_events(
                reloaded.reload(&store.snapshot(), store.revision),
            ));
            // At every revision, a fresh snapshot holds what the rules say, records included.
            let mut fresh = Membership::new(layout());
            fresh.reload(&store.snapshot(), store.revision);
            let want: Vec<(ServerInfo, Option<i64>)> = after
                .into_values()
                .map(|(_, create, server)| (server, Some(create)))
                .collect();
            prop_assert_eq!(view_state(&fresh), want);
            prop_assert_eq!(view_state(&fresh), view_state(&reloaded));
        }
        let events = as_events(live.apply(&changes));
        let expected = by_revision(&expected);
        prop_assert_eq!(
            &by_revision(&events),
            &expected,
            "live events of {:?}",
            changes
        );
        prop_assert_eq!(
            &by_revision(&diffs),
            &expected,
            "snapshot diffs of {:?}",
            changes
        );
        log.extend(events);
        prop_assert_eq!(
            view_state(&live),
            view_state(&reloaded),
            "at revision {}",
            store.revision
        );
        let open = check_log(&log)?;
        let ids: BTreeSet<u16> = live.ids().collect();
        prop_assert_eq!(ids, open, "the view holds exactly the joined ids");
    }
    Ok(())
}

/// One transaction per response, so that the view is compared at every single revision.
fn one_revision_per_response(responses: Vec<Vec<Vec<Op>>>) -> Vec<Vec<Vec<Op>>> {
    responses
        .into_iter()
        .flatten()
        .map(|txn| vec![txn])
        .collect()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(1000))]

    #[test]
    fn the_live_view_is_a_snapshot_at_every_revision(responses in responses()) {
        run_lying(&one_revision_per_response(responses))?;
    }

    #[test]
    fn a_response_of_several_revisions_is_their_snapshot_diffs(responses in responses()) {
        run_lying(&responses)?;
    }
}

/// The lying-record generator reaches every rule, so the properties above are not vacuous:
/// lease strips of a member, in-place edits, promotions and take-overs of an id by another
/// key, ties within one transaction, and shadowed claims.
#[test]
fn the_lying_generator_covers_every_rule() {
    use proptest::strategy::ValueTree;
    use proptest::test_runner::TestRunner;

    let mut runner = TestRunner::deterministic();
    let strategy = responses();
    let (mut strips, mut edits, mut take_overs, mut ties, mut shadowed) = (0, 0, 0, 0u64, 0);
    for _ in 0..1000 {
        let responses = strategy.new_tree(&mut runner).expect("tree").current();
        let mut store = Store::default();
        let mut view = Membership::new(layout());
        for txn in responses.iter().flatten() {
            let changes = store.txn(txn);
            let created: Vec<u16> = changes
                .iter()
                .filter_map(|c| match c {
                    KvChange::Put(kv) if kv.create_revision == kv.mod_revision => {
                        match layout().parse_server_key(&kv.key) {
                            ParsedKey::Server { id, .. } => Some(id),
                            ParsedKey::Malformed(_) => None,
                        }
                    }
                    _ => None,
                })
                .collect();
            let distinct: BTreeSet<u16> = created.iter().copied().collect();
            if distinct.len() < created.len() {
                ties += 1;
            }
            let before = view_state(&view);
            let events = as_events(view.apply(&changes));
            for pair in events.windows(2) {
                if let [Event::Leave { id, group, .. }, Event::Join { server, .. }] = pair {
                    if *id != server.id {
                        continue;
                    }
                    let created_before = before
                        .iter()
                        .find(|(s, _)| s.id == *id)
                        .and_then(|(_, revision)| *revision);
                    if *group != server.group {
                        take_overs += 1;
                    } else if created_before == view.create_revision(*id) {
                        edits += 1;
                    }
                }
            }
            for change in &changes {
                if let KvChange::Put(kv) = change {
                    let held = before.iter().any(|(s, _)| {
                        layout().server_key(&s.group, s.id).as_bytes() == kv.key.as_slice()
                    });
                    if held && kv.lease == 0 {
                        strips += 1;
                    }
                }
            }
        }
        shadowed += view.shadowed();
    }
    println!(
        "strips {strips}, edits {edits}, take-overs {take_overs}, ties {ties}, shadowed {shadowed}"
    );
    assert!(strips > 300, "lease strips of a member: {strips}");
    assert!(edits > 300, "in-place edits: {edits}");
    assert!(
        take_overs > 300,
        "an id passing to another key: {take_overs}"
    );
    assert!(
        ties > 100,
        "claims on one id created in one transaction: {ties}"
    );
    assert!(shadowed > 1000, "shadowed claims: {shadowed}");
}
