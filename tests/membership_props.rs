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
use darkrift_etcd::membership::{KeyValue, KvChange, Membership};
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
    if id % 2 == 0 {
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
                            bytes = existing.value.clone();
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
                log.extend(view.apply(&changes));
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
                log.extend(view.install(snapshot, etcd.revision));
                etcd.reloaded();
                true
            }
            Step::Reload => {
                log.extend(view.reload(&etcd.snapshot(), etcd.revision));
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
                    let events = view.apply(&[change]);
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
