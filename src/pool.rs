//! The etcd members we talk to, and which one each request goes to.
//!
//! etcd-client spreads the requests of one `Client` over all its endpoints (tower's
//! power-of-two-choices balancer). That is right while every member either answers or refuses,
//! and wrong for a *gray* failure: a member that accepts connections and then never answers
//! (SIGSTOP, a stalled disk, a paused VM, a long GC pause) or answers seconds late. Its TCP
//! connection looks healthy, so the balancer keeps sending it requests, and every request,
//! keep-alive and watch that lands there hangs until its caller's timeout, although the other
//! members hold quorum. Leases then expire and live servers "leave".
//!
//! So this module does what etcd's Go client does with its pinned endpoint, per-attempt
//! timeouts and keep-alive pings, but with the decision in our hands:
//!
//! - one etcd-client `Client` per member (`Member`), so a request goes where we send it;
//! - a **preferred** member that every request and stream starts on, sticky while it works.
//!   A new pool does not start on the first endpoint (then every client of a cluster would
//!   load one member): the first pool of a process starts on a random member, and each later
//!   pool of the process on the next one ([`first_member`]), so clients spread over the members
//!   across processes (at random) and within one (evenly). A suspected preferred member hands
//!   over to a random other member, so a member's share spreads over the rest when it fails;
//! - every unary attempt bounded by the **attempt timeout** ([`crate::timing::attempt_timeout`], a third of
//!   the request timeout, 0.5–2 s), far shorter than the request's own bound: a member that
//!   does not answer in time is **suspected** and the next attempt goes to the next member
//!   (with a single endpoint there is no other member, and an attempt may take the whole
//!   request timeout);
//! - a suspicion is broadcast ([`Pool::suspicions`]): the keep-alive and watch streams on that
//!   member move to another at once instead of waiting to notice the silence themselves;
//! - a suspicion expires after [`crate::timing::SUSPICION`]; a suspected member is chosen again only when
//!   every member is suspected (then the one suspected longest ago), so a cluster whose members
//!   are all slow still gets requests.
//!
//! With authentication, building a member's client is itself a request (etcd-client
//! authenticates when it connects), so members are built lazily, on first use, under the same
//! attempt timeout: a member frozen at start-up does not hold up the others.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use etcd_client::{Client, ConnectOptions};
use tokio::sync::{watch, OnceCell};
use tokio::time::Instant;

use crate::timing::{attempt_timeout, SUSPICION};

/// One member: its endpoint, its client once built, and when it was last suspected.
struct Member {
    endpoint: String,
    client: OnceCell<Client>,
    suspected_at: Mutex<Option<Instant>>,
}

impl Member {
    /// When this member was suspected, if that suspicion still holds at `now` (it expires
    /// after [`SUSPICION`]).
    fn suspected(&self, now: Instant) -> Option<Instant> {
        suspicion_holds(*lock(&self.suspected_at), now)
    }
}

/// `at`, if a suspicion raised then still holds at `now`.
fn suspicion_holds(at: Option<Instant>, now: Instant) -> Option<Instant> {
    at.filter(|at| now.saturating_duration_since(*at) < SUSPICION)
}

struct Inner {
    members: Vec<Member>,
    options: Option<ConnectOptions>,
    preferred: AtomicUsize,
    attempt_timeout: Duration,
    /// Bumped on every suspicion; the value is the index of the member suspected last.
    suspicions: watch::Sender<(u64, usize)>,
    /// The keep-alive hub every lease granted through this pool registers into, while any
    /// lease holds it (see [`crate::lease`]). Weak: the hub's task holds the pool, so a
    /// strong reference here would keep both alive forever.
    keep_alive_hub: Mutex<Weak<crate::lease::KeepAliveHub>>,
}

/// A client of one member, picked for one attempt or one stream.
#[derive(Clone)]
pub(crate) struct Picked {
    /// Index of the member, to report a failure with [`Pool::suspect`].
    pub(crate) member: usize,
    /// Its client.
    pub(crate) client: Client,
}

/// The members of one etcd cluster and the choice between them. Cheap to clone (shared).
#[derive(Clone)]
pub(crate) struct Pool {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Pool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pool")
            .field("endpoints", &self.endpoints())
            .field("preferred", &self.inner.preferred.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

impl Pool {
    /// A pool over `endpoints`, each built with `options` when first used.
    pub(crate) fn new(
        endpoints: &[String],
        options: ConnectOptions,
        request_timeout: Duration,
    ) -> Self {
        let members = endpoints
            .iter()
            .map(|e| Member {
                endpoint: e.clone(),
                client: OnceCell::new(),
                suspected_at: Mutex::new(None),
            })
            .collect();
        Self::build(members, Some(options), request_timeout)
    }

    /// A pool of one ready client (which may itself balance over several endpoints: then
    /// this pool cannot steer around a frozen one).
    pub(crate) fn from_client(client: Client, request_timeout: Duration) -> Self {
        let member = Member {
            endpoint: "(client given by the host)".into(),
            client: OnceCell::new_with(Some(client)),
            suspected_at: Mutex::new(None),
        };
        Self::build(vec![member], None, request_timeout)
    }

    fn build(
        members: Vec<Member>,
        options: Option<ConnectOptions>,
        request_timeout: Duration,
    ) -> Self {
        let (suspicions, _) = watch::channel((0, usize::MAX));
        // With one member there is no other to try: an attempt may take the whole request
        // timeout (a slow but healthy etcd under load is not cut short for nothing).
        let attempt_timeout = if members.len() > 1 {
            attempt_timeout(request_timeout)
        } else {
            request_timeout
        };
        Pool {
            inner: Arc::new(Inner {
                preferred: AtomicUsize::new(first_member(members.len())),
                members,
                options,
                attempt_timeout,
                suspicions,
                keep_alive_hub: Mutex::new(Weak::new()),
            }),
        }
    }

    /// The endpoints, in configuration order.
    pub(crate) fn endpoints(&self) -> Vec<&str> {
        self.inner
            .members
            .iter()
            .map(|m| m.endpoint.as_str())
            .collect()
    }

    /// The bound of one attempt.
    pub(crate) fn attempt_timeout(&self) -> Duration {
        self.inner.attempt_timeout
    }

    /// Number of members.
    pub(crate) fn len(&self) -> usize {
        self.inner.members.len()
    }

    /// The member the next attempt should go to: the preferred one unless it is suspected,
    /// else the next one that is not, else the one suspected longest ago.
    pub(crate) fn choose(&self) -> usize {
        let now = Instant::now();
        let suspected: Vec<Option<Instant>> = self
            .inner
            .members
            .iter()
            .map(|m| m.suspected(now))
            .collect();
        choose_member(self.inner.preferred.load(Ordering::Relaxed), &suspected)
    }

    /// True when every member failed an attempt within the last [`SUSPICION`]: the next
    /// attempt goes to one that failed, so it is worth a pause first.
    pub(crate) fn all_suspected(&self) -> bool {
        let now = Instant::now();
        self.inner
            .members
            .iter()
            .all(|m| m.suspected(now).is_some())
    }

    /// True when some member other than `member` is not suspected: somewhere better to go.
    pub(crate) fn another_unsuspected(&self, member: usize) -> bool {
        let now = Instant::now();
        self.inner
            .members
            .iter()
            .enumerate()
            .any(|(i, m)| i != member && m.suspected(now).is_none())
    }

    /// The client of member `member`, built on first use (bounded by the attempt timeout).
    ///
    /// # Errors
    /// Building it failed or timed out (with authentication, building it is a request).
    pub(crate) async fn client(&self, member: usize) -> Result<Client, PickError> {
        let m = self.inner.members.get(member).ok_or(PickError::NoMember)?;
        let options = self.inner.options.clone();
        let build = m
            .client
            .get_or_try_init(|| Client::connect([m.endpoint.as_str()], options));
        match tokio::time::timeout(self.inner.attempt_timeout, build).await {
            Ok(Ok(client)) => Ok(client.clone()),
            Ok(Err(e)) => Err(PickError::Etcd(e)),
            Err(_) => Err(PickError::Timeout),
        }
    }

    /// [`Pool::choose`] and [`Pool::client`]; a member whose client cannot be built is
    /// suspected.
    ///
    /// # Errors
    /// As [`Pool::client`].
    pub(crate) async fn pick(&self) -> Result<Picked, PickError> {
        let member = self.choose();
        match self.client(member).await {
            Ok(client) => Ok(Picked { member, client }),
            Err(e) => {
                self.suspect(member, "its client could not be built");
                Err(e)
            }
        }
    }

    /// Records that `member` failed an attempt (no answer in time, or a transport error):
    /// avoid it for [`SUSPICION`], move the preferred member on, and tell the streams.
    pub(crate) fn suspect(&self, member: usize, why: &str) {
        let Some(m) = self.inner.members.get(member) else {
            return;
        };
        let first = {
            let mut at = lock(&m.suspected_at);
            let now = Instant::now();
            let first = suspicion_holds(*at, now).is_none();
            *at = Some(now);
            first
        };
        if self.len() > 1 {
            // Only the thread that sees `member` preferred moves it on, so two concurrent
            // failures do not skip a healthy member.
            let next = handover(member, self.len(), rand::random_range(0..self.len() - 1));
            let _ = self.inner.preferred.compare_exchange(
                member,
                next,
                Ordering::Relaxed,
                Ordering::Relaxed,
            );
        }
        if first {
            metrics::counter!(crate::metrics::MEMBER_SUSPICIONS).increment(1);
        }
        if first && self.len() > 1 {
            // A failover: worth one line per member and suspicion period.
            tracing::warn!(endpoint = %m.endpoint, reason = why, "etcd member suspected; using another");
        } else {
            // The only member, or suspected again: the caller reports what failed.
            tracing::debug!(endpoint = %m.endpoint, reason = why, "etcd member suspected");
        }
        self.inner.suspicions.send_modify(|(count, last)| {
            *count += 1;
            *last = member;
        });
    }

    /// Records that `member` answered: it is no longer suspected.
    pub(crate) fn confirm(&self, member: usize) {
        if let Some(m) = self.inner.members.get(member) {
            let mut at = lock(&m.suspected_at);
            if at.take().is_some() {
                tracing::info!(endpoint = %m.endpoint, "etcd member answers again");
            }
        }
    }

    /// Every suspicion, as `(count, member)`: streams watch this to leave a suspected member.
    pub(crate) fn suspicions(&self) -> watch::Receiver<(u64, usize)> {
        self.inner.suspicions.subscribe()
    }

    /// The keep-alive hub of this pool: the running one, or `start`'s (which is then kept
    /// while any lease holds it). One hub, so one keep-alive stream, for every lease granted
    /// through this pool.
    pub(crate) fn keep_alive_hub(
        &self,
        start: impl FnOnce() -> Arc<crate::lease::KeepAliveHub>,
    ) -> Arc<crate::lease::KeepAliveHub> {
        let mut slot = lock(&self.inner.keep_alive_hub);
        // A hub whose task is gone (its runtime shut down) keeps nothing: start another.
        if let Some(hub) = slot.upgrade().filter(|hub| hub.is_running()) {
            return hub;
        }
        let hub = start();
        *slot = Arc::downgrade(&hub);
        hub
    }
}

/// Why no client could be had for an attempt.
#[derive(Debug)]
pub(crate) enum PickError {
    /// Building the member's client failed.
    Etcd(etcd_client::Error),
    /// Building the member's client took longer than the attempt timeout.
    Timeout,
    /// The pool has no such member (a pool of no members).
    NoMember,
}

/// The preferred member a new pool of `n` members starts on: a random one for the first pool
/// of the process, the next one (modulo `n`) for each later pool.
fn first_member(n: usize) -> usize {
    static NEXT: std::sync::OnceLock<AtomicUsize> = std::sync::OnceLock::new();
    let next = NEXT.get_or_init(|| AtomicUsize::new(rand::random_range(0..1 << 16)));
    next.fetch_add(1, Ordering::Relaxed) % n.max(1)
}

/// Where the preferred member goes when `member` (one of `n`, `n` > 1) is suspected: the
/// `k`-th of the others (`k` < `n` - 1, drawn at random), so a failed member's clients spread
/// over the rest instead of all landing on its neighbour.
fn handover(member: usize, n: usize, k: usize) -> usize {
    (member + 1 + k % (n - 1)) % n
}

/// The choice of [`Pool::choose`], pure: `suspected[i]` is when member `i` was suspected, if
/// it still is.
fn choose_member(preferred: usize, suspected: &[Option<Instant>]) -> usize {
    let n = suspected.len();
    if n == 0 {
        return 0;
    }
    let preferred = preferred % n;
    (0..n)
        .map(|k| (preferred + k) % n)
        .find(|&i| suspected[i].is_none())
        .or_else(|| {
            // Every member is suspected: the one suspected longest ago has had the most time
            // to recover.
            (0..n).min_by_key(|&i| suspected[i])
        })
        .unwrap_or(preferred)
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A panic while holding this lock leaves a plain value behind: still usable.
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_preferred_member_is_chosen_unless_suspected() {
        let now = Instant::now();
        assert_eq!(choose_member(1, &[None, None, None]), 1);
        assert_eq!(choose_member(1, &[None, Some(now), None]), 2);
        assert_eq!(choose_member(2, &[None, None, Some(now)]), 0);
        assert_eq!(choose_member(4, &[None, None, None]), 1);
    }

    #[test]
    fn new_pools_start_spread_over_the_members() {
        let mut counts = [0; 3];
        for _ in 0..30 {
            counts[first_member(3)] += 1;
        }
        // Other tests of this binary build pools concurrently and may take turns in between,
        // so the spread is checked loosely here; tests/spread.rs checks it on etcd's side.
        assert!(counts.iter().all(|&c| c > 0), "{counts:?}");
        assert_eq!(first_member(1), 0);
        assert_eq!(first_member(0), 0);
    }

    #[test]
    fn a_suspected_member_hands_over_to_any_other() {
        let targets: std::collections::BTreeSet<usize> =
            (0..2).map(|k| handover(1, 3, k)).collect();
        assert_eq!(targets, [0, 2].into());
        assert_eq!(handover(0, 2, 0), 1);
        assert_eq!(handover(2, 3, 5), 1);
    }

    #[test]
    fn another_unsuspected_member_is_somewhere_better_to_go() {
        let endpoints: Vec<String> = (1..=3).map(|i| format!("http://127.0.0.{i}:1")).collect();
        let pool = Pool::new(&endpoints, ConnectOptions::new(), Duration::from_secs(3));
        assert!(pool.another_unsuspected(0));
        pool.suspect(1, "test");
        assert!(pool.another_unsuspected(0), "member 2 is fine");
        pool.suspect(2, "test");
        assert!(
            !pool.another_unsuspected(0),
            "every other member is suspected"
        );
        assert!(pool.another_unsuspected(1), "member 0 is fine");
        pool.confirm(2);
        assert!(pool.another_unsuspected(0));
    }

    #[test]
    fn with_every_member_suspected_the_oldest_suspicion_wins() {
        let now = Instant::now();
        let earlier = now.checked_sub(Duration::from_secs(3)).unwrap_or(now);
        assert_eq!(choose_member(0, &[Some(now), Some(earlier), Some(now)]), 1);
        assert_eq!(choose_member(0, &[]), 0);
    }
}
