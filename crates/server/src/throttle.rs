//! Login throttling: the policy, as a pure function of the counters and
//! the time (so it is tested with time passed in), and the table that
//! holds the counters (in memory, the authority; written behind under the
//! reserved root, so they survive restarts).
//!
//! Three counters of recent unsuccessful attempts:
//! - per (user, source): after `free` failures further attempts wait
//!   exponentially longer (1 s, 2 s, 4 s, … up to `max_delay`), and after
//!   `escalate` more they are refused until `cooldown` has passed;
//! - per source, across users: past `source_limit` its logins are refused
//!   until `cooldown` has passed — except for a (user, source) that logged
//!   in successfully within `known_good_days` (its own pair counter still
//!   applies);
//! - per user, across sources: past `user_slow` failures every attempt on
//!   that user is slowed by `user_delay` — slowed, never refused, so a
//!   guessing storm from elsewhere cannot lock the real user out
//!   (GHSA-cq42-vhv7-xr7p is that denial of service in Keycloak).
//!
//! A source is an IPv4 address or an IPv6 /64 (one IPv6 client commonly
//! holds a whole /64: counting its addresses one by one would count
//! nothing).
//!
//! An attempt is counted before anything expensive runs: [`Throttle::reserve`]
//! decides on the counts including the attempts still under way and
//! counts the attempt, under the locks of its counters, in one step. So N
//! parallel attempts count N and once a limit is reached the rest are
//! refused without running the method. Attempts under way hold a place
//! toward a limit without being failures: an attempt that finds the
//! limit full of them waits for their verdicts ([`Decision::Busy`]), as
//! they may all succeed. A refused attempt is counted on the
//! counters that exist (never creating one: an address past its limit
//! cannot grow the table) and does not move their time, so hammering a
//! refusal does not prolong it. The attempt then ends as a failure
//! ([`Reservation::fail`]), a success ([`Reservation::succeed`]: its own
//! (user, source) counter is cleared and its own attempt taken back from
//! the other two — no one else's failures are forgiven) or neither (a
//! server error, a client gone before the method ran: taken back).
//!
//! Counters forget everything once `max(window, cooldown)` has passed
//! since their last counted attempt; then they leave memory and the store.
//! The table holds at most `max_entries` counters (and as many known-good
//! marks); past that, the least recently counted one in its shard makes
//! room.

use std::collections::hash_map::RandomState;
use std::collections::{HashMap, HashSet};
use std::fmt;
use std::hash::BuildHasher;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use keycard_proto::{Elem, Msg, Path, Value};
use keycard_store::{After, Op, Store, StoreError};
use serde::Deserialize;
use tokio::sync::{watch, Notify};

use crate::clock::ClockHandle;

/// Throttling settings (config `[throttle]`).
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct ThrottleConfig {
    /// Failures per (user, source) before attempts are delayed. Default 5.
    pub free: u32,
    /// Further failures per (user, source), each delayed longer, before
    /// attempts are refused for `cooldown`. Default 5.
    pub escalate: u32,
    /// The first delay, seconds; it doubles. Default 1.
    pub base_delay_secs: u64,
    /// The longest delay, seconds. Default 30.
    pub max_delay_secs: u64,
    /// Attempts per source (all users) before its logins are refused for
    /// `cooldown`. Default 100.
    pub source_limit: u32,
    /// Failures per user (all sources) before each attempt on it is slowed
    /// by `user_delay_secs`. Default 20.
    pub user_slow: u32,
    /// That slow-down, seconds. Default 1.
    pub user_delay_secs: u64,
    /// How long refusals last, seconds. Default 900.
    pub cooldown_secs: u64,
    /// Failures older than this are forgotten, seconds. Default 900.
    pub window_secs: u64,
    /// A (user, source) with a successful login within this many days is
    /// not refused by the source's counter. Default 30; 0 turns it off.
    pub known_good_days: u64,
    /// Most counters kept (and, apart, most known-good marks), rounded up
    /// to a multiple of 32 and at least 96. Default 100000.
    pub max_entries: usize,
}

impl Default for ThrottleConfig {
    fn default() -> Self {
        ThrottleConfig {
            free: 5,
            escalate: 5,
            base_delay_secs: 1,
            max_delay_secs: 30,
            source_limit: 100,
            user_slow: 20,
            user_delay_secs: 1,
            cooldown_secs: 900,
            window_secs: 900,
            known_good_days: 30,
            max_entries: 100_000,
        }
    }
}

impl ThrottleConfig {
    /// How long a counter is kept after its last counted attempt, ms.
    fn keep_ms(&self) -> u64 {
        self.window_secs
            .max(self.cooldown_secs)
            .saturating_mul(1000)
    }

    /// How long a success keeps its (user, source) known-good, ms.
    fn good_ms(&self) -> u64 {
        self.known_good_days.saturating_mul(86_400_000)
    }
}

/// Where an attempt comes from, as throttling counts it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Source {
    /// An IPv4 address (IPv4-mapped IPv6 addresses included).
    V4(Ipv4Addr),
    /// An IPv6 /64: its first 64 bits.
    V6(u64),
}

impl Source {
    /// The source an address counts under.
    pub fn of(ip: IpAddr) -> Source {
        match ip.to_canonical() {
            IpAddr::V4(a) => Source::V4(a),
            IpAddr::V6(a) => Source::V6((u128::from(a) >> 64) as u64),
        }
    }

    /// A source as [`Source`]'s `Display` writes it.
    fn parse(text: &str) -> Option<Source> {
        match text.strip_suffix("/64") {
            Some(net) => net
                .parse::<Ipv6Addr>()
                .ok()
                .map(|a| Source::V6((u128::from(a) >> 64) as u64)),
            None => text.parse().ok().map(Source::V4),
        }
    }
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Source::V4(a) => write!(f, "{a}"),
            Source::V6(p) => write!(f, "{}/64", Ipv6Addr::from(u128::from(*p) << 64)),
        }
    }
}

/// Recent unsuccessful attempts under one key.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counter {
    /// Attempts that ran and failed. The policy decides on these.
    pub failures: u32,
    /// Attempts that showed a challenge and have no verdict yet: durable
    /// as failures (a crash or a client leaving ends them so), but not
    /// failures yet, so they hold their place without refusing anyone.
    pub provisional: u32,
    /// Attempts refused without running. Counted, never decided on: a
    /// refusal of attempts under way (which may all succeed) must not
    /// become a lock-out.
    pub refused: u32,
    /// Attempts under way that have not been counted as failures yet.
    pub pending: u32,
    /// When the last attempt that ran was counted, unix ms.
    pub last: u64,
}

impl Counter {
    /// The failures as of `now`: forgotten once `keep` has passed.
    fn live(&self, now: u64, keep: u64) -> u32 {
        if now.saturating_sub(self.last) >= keep {
            0
        } else {
            self.failures
        }
    }

    /// Forgets everything once `keep` has passed since `last`.
    fn refresh(&mut self, now: u64, keep: u64) {
        if now.saturating_sub(self.last) >= keep {
            self.failures = 0;
            self.refused = 0;
        }
    }

    /// Every unsuccessful attempt counted here: failed, refused, and
    /// under way.
    pub fn attempts(&self) -> u32 {
        self.failures
            .saturating_add(self.refused)
            .saturating_add(self.under_way())
    }

    /// Attempts under way: reserved, or challenged without a verdict.
    pub fn under_way(&self) -> u32 {
        self.pending.saturating_add(self.provisional)
    }

    fn is_empty(&self) -> bool {
        self.attempts() == 0
    }
}

/// The three counters that bear on one attempt.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counters {
    /// This user from this source.
    pub pair: Counter,
    /// This source, all users.
    pub source: Counter,
    /// This user, all sources.
    pub user: Counter,
}

/// What to do with an attempt.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decision {
    /// Go ahead, after waiting this long (zero: at once).
    Proceed(Duration),
    /// Refuse; the client may retry after this long.
    Refuse(Duration),
    /// The attempts under way fill the limit: wait until one of them has
    /// a verdict, then decide again. They may all succeed, so this is not
    /// a refusal — many connections of one service logging in at once as
    /// one user are queued, not turned away.
    Busy,
}

/// When the attempts under way stay at the limit for longer than the
/// wait allows, the client is refused and may retry this soon.
pub const IN_FLIGHT_RETRY: Duration = Duration::from_secs(1);

/// The longest an attempt waits for the attempts under way
/// ([`Decision::Busy`]) before it is refused.
pub const MAX_BUSY_WAIT: Duration = Duration::from_secs(5);

/// The policy: what the counters say about an attempt at `now` (unix
/// milliseconds). Failures refuse for the cool-down and delay; attempts
/// under way only make the next one wait its turn, so at most the limit
/// of attempts that could still fail run at once. `known_good`: this
/// (user, source) logged in successfully lately.
pub fn decide(cfg: &ThrottleConfig, c: &Counters, known_good: bool, now: u64) -> Decision {
    let ms = |secs: u64| secs.saturating_mul(1000);
    let cooldown = ms(cfg.cooldown_secs);
    let keep = cfg.keep_ms();
    // `Some(Some(retry))`: refused; `Some(None)`: busy.
    let refusal = |c: &Counter, limit: u32| {
        let failed = c.live(now, keep);
        let until = c.last.saturating_add(cooldown);
        if failed >= limit && now < until {
            return Some(Some(Duration::from_millis((until - now).max(1))));
        }
        (failed.saturating_add(c.under_way()) >= limit).then_some(None)
    };
    let mut busy = false;
    match refusal(&c.pair, cfg.free.saturating_add(cfg.escalate)) {
        Some(Some(retry)) => return Decision::Refuse(retry),
        Some(None) => busy = true,
        None => {}
    }
    if !known_good {
        match refusal(&c.source, cfg.source_limit) {
            Some(Some(retry)) => return Decision::Refuse(retry),
            Some(None) => busy = true,
            None => {}
        }
    }
    if busy {
        return Decision::Busy;
    }
    let mut wait = Duration::ZERO;
    let pair = c.pair.live(now, keep);
    if pair >= cfg.free {
        let exp = (pair - cfg.free).min(30);
        let delay = cfg
            .base_delay_secs
            .saturating_mul(1u64 << exp)
            .min(cfg.max_delay_secs);
        // The wait counts from the last failure, not from this attempt.
        let ready = c.pair.last.saturating_add(ms(delay));
        if now < ready {
            wait = Duration::from_millis(ready - now);
        }
    }
    if c.user.live(now, ms(cfg.window_secs)) >= cfg.user_slow {
        wait = wait.max(Duration::from_secs(cfg.user_delay_secs));
    }
    Decision::Proceed(wait)
}

/// Longest user key kept as it is. Longer ones (a user of a deeply nested
/// domain: the key holds the domain's path) are kept as their SHA-256, so
/// that a counter's memory and its node stay small whatever the domain.
const MAX_USER_KEY: usize = 256;

/// The key `user` is counted under.
fn user_key(user: &str) -> Arc<str> {
    use sha2::Digest as _;
    use std::fmt::Write as _;
    if user.len() <= MAX_USER_KEY {
        return Arc::from(user);
    }
    let mut text = String::from("sha256:");
    for b in sha2::Sha256::digest(user.as_bytes()) {
        let _ = write!(text, "{b:02x}");
    }
    Arc::from(text)
}

/// What the table keys: the three counters, and the known-good marks.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
enum Key {
    Pair(Arc<str>, Source),
    Source(Source),
    User(Arc<str>),
    Good(Arc<str>, Source),
}

impl Key {
    fn is_good(&self) -> bool {
        matches!(self, Key::Good(..))
    }

    /// Where it is stored: `(nil, "throttle", KIND, …)`.
    #[cfg(test)]
    fn path(&self) -> Path {
        self.path_in(&Path::new(vec![Elem::Nil, "throttle".into()]))
    }

    /// Where it is stored below `base` (a node's own root, see
    /// [`Throttle::load`]): `base + (KIND, …)`.
    fn path_in(&self, base: &Path) -> Path {
        let base = base.clone();
        match self {
            Key::Pair(u, s) => base.child("pair").child(&**u).child(s.to_string().as_str()),
            Key::Source(s) => base.child("source").child(s.to_string().as_str()),
            Key::User(u) => base.child("user").child(&**u),
            Key::Good(u, s) => base.child("good").child(&**u).child(s.to_string().as_str()),
        }
    }

    /// The key stored at `path`, if it is one.
    #[cfg(test)]
    fn from_path(path: &Path) -> Option<Key> {
        let e = path.elems();
        if e.len() < 3 || e[0] != Elem::Nil || e[1] != Elem::Str("throttle".into()) {
            return None;
        }
        Key::from_elems(&e[2..])
    }

    /// The key whose node is `(KIND, …)` below a counters' root.
    fn from_elems(e: &[Elem]) -> Option<Key> {
        fn text(e: &Elem) -> Option<&str> {
            match e {
                Elem::Str(s) => Some(s.as_str()),
                _ => None,
            }
        }
        // Offsets as under `(nil, "throttle")`.
        let mut full = vec![Elem::Nil, Elem::Nil];
        full.extend_from_slice(e);
        let e = full.as_slice();
        if e.len() < 3 {
            return None;
        }
        let user = |i: usize| text(&e[i]).map(Arc::<str>::from);
        let source = |i: usize| text(&e[i]).and_then(Source::parse);
        match (text(&e[2])?, e.len()) {
            ("pair", 5) => Some(Key::Pair(user(3)?, source(4)?)),
            ("source", 4) => Some(Key::Source(source(3)?)),
            ("user", 4) => Some(Key::User(user(3)?)),
            ("good", 5) => Some(Key::Good(user(3)?, source(4)?)),
            _ => None,
        }
    }
}

/// One key's state: a counter (for a known-good mark, `last` is the
/// success), and whether the store holds a node for it.
#[derive(Clone, Copy, Debug, Default)]
struct Slot {
    c: Counter,
    in_store: bool,
}

/// A part of the table behind its own lock.
#[derive(Default)]
struct Shard {
    slots: HashMap<Key, Slot>,
    /// Keys whose node must be written (present) or deleted (absent).
    dirty: HashSet<Key>,
    counters: usize,
    goods: usize,
}

impl Shard {
    fn count(&mut self, key: &Key) -> &mut usize {
        match key.is_good() {
            true => &mut self.goods,
            false => &mut self.counters,
        }
    }

    fn remove(&mut self, key: &Key) {
        if let Some(slot) = self.slots.remove(key) {
            *self.count(key) -= 1;
            // A node that was never written needs no deletion.
            match slot.in_store {
                true => self.dirty.insert(key.clone()),
                false => self.dirty.remove(key),
            };
        }
    }

    /// The slot for `key`, made (with room made for it: the least
    /// recently counted slot of its kind that is not in `keep` and, if
    /// possible, has no attempt under way) if there is none.
    fn slot(&mut self, key: &Key, cap: usize, keep: &[Key]) -> &mut Slot {
        if !self.slots.contains_key(key) {
            while *self.count(key) >= cap {
                let victim = self
                    .slots
                    .iter()
                    .filter(|(k, _)| k.is_good() == key.is_good() && !keep.contains(k))
                    .min_by_key(|(_, s)| (s.c.under_way() > 0, s.c.last))
                    .map(|(k, _)| k.clone());
                match victim {
                    Some(v) => self.remove(&v),
                    None => break,
                }
            }
            *self.count(key) += 1;
            // A key removed since its node was written still has that
            // node (its deletion is queued): the new slot owns it.
            let in_store = self.dirty.contains(key);
            self.slots.insert(
                key.clone(),
                Slot {
                    c: Counter::default(),
                    in_store,
                },
            );
        }
        self.slots.entry(key.clone()).or_default()
    }

    /// Drops a counter with nothing left in it; marks the key for writing.
    fn settle(&mut self, key: &Key) {
        self.dirty.insert(key.clone());
        if self.slots.get(key).is_some_and(|s| s.c.is_empty()) {
            self.remove(key);
        }
    }
}

/// Waiters for one write-behind batch.
struct Batch {
    done: watch::Sender<Option<Result<(), StoreError>>>,
}

impl Batch {
    fn new() -> Arc<Batch> {
        Arc::new(Batch {
            done: watch::Sender::new(None),
        })
    }
}

/// How many shards the table has.
const SHARDS: usize = 32;
/// Most ops in one store write.
const WRITE_CHUNK: usize = 4096;
/// How often expired counters are dropped and changes nobody waits for
/// are written.
pub const FLUSH_EVERY: Duration = Duration::from_secs(1);

/// The throttle table: the counters and known-good marks, in shards
/// behind their own locks, written behind to `(nil, "throttle")`.
pub struct Throttle {
    cfg: ThrottleConfig,
    store: Arc<dyn Store>,
    hasher: RandomState,
    shards: Vec<Mutex<Shard>>,
    /// The batch the next write completes.
    batch: Mutex<Arc<Batch>>,
    /// Wakes the writer for a waiter.
    wake: Arc<Notify>,
    /// Woken whenever an attempt under way gets its verdict (or is taken
    /// back): attempts waiting their turn ([`Decision::Busy`]) decide
    /// again.
    settled: Notify,
    /// One write at a time.
    writing: tokio::sync::Mutex<()>,
    /// Where every window and delay reads the time.
    clock: ClockHandle,
    /// Where this node writes its counters: `(nil, "throttle")`, or on a
    /// store other nodes share `(nil, "throttles", INSTANCE)`.
    base: Path,
    /// The other nodes' counters (a shared store), by key and node: an
    /// attempt is decided on the sum of every node's.
    remote: Mutex<HashMap<Key, HashMap<Arc<str>, Counter>>>,
}

/// `(nil, "throttles")`: the counters of the nodes of a shared store,
/// each under its instance.
pub fn shared_root() -> Path {
    Path::new(vec![Elem::Nil, "throttles".into()])
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Locked shards, taken in index order (so two attempts never wait for
/// each other's locks).
struct Locked<'a>(Vec<(usize, MutexGuard<'a, Shard>)>);

impl Locked<'_> {
    fn shard(&mut self, i: usize) -> Option<&mut Shard> {
        self.0
            .iter_mut()
            .find(|(j, _)| *j == i)
            .map(|(_, g)| &mut **g)
    }
}

impl Throttle {
    /// The table over `store`, with the counters stored there, reading
    /// the time from `clock`; expired and malformed nodes are deleted on
    /// the way.
    ///
    /// With `instance` (a store other nodes share), this node writes its
    /// counters below `(nil, "throttles", instance)` and reads every other
    /// node's, which [`Throttle::remote`] keeps current.
    pub async fn load(
        store: Arc<dyn Store>,
        cfg: ThrottleConfig,
        clock: ClockHandle,
        instance: Option<&str>,
    ) -> Result<Arc<Throttle>, StoreError> {
        let now = clock.now_ms();
        let base = match instance {
            Some(i) => shared_root().child(i),
            None => Path::new(vec![Elem::Nil, "throttle".into()]),
        };
        let t = Throttle {
            base: base.clone(),
            remote: Mutex::default(),
            cfg,
            store,
            hasher: RandomState::new(),
            shards: (0..SHARDS).map(|_| Mutex::default()).collect(),
            batch: Mutex::new(Batch::new()),
            wake: Arc::new(Notify::new()),
            settled: Notify::new(),
            writing: tokio::sync::Mutex::new(()),
            clock,
        };
        if instance.is_some() {
            let root = shared_root();
            let mut page = t
                .store
                .scan(&root, Default::default(), After::Start, 1024)
                .await?;
            loop {
                for (path, entry) in page.items {
                    t.remote(&path, Some(&entry.value));
                }
                let Some(next) = page.next else { break };
                page = t
                    .store
                    .scan(&root, Default::default(), After::Cursor(&next), 1024)
                    .await?;
            }
        }
        let prefix = base;
        let mut junk = Vec::new();
        let mut page = t
            .store
            .scan(&prefix, Default::default(), After::Start, 1024)
            .await?;
        loop {
            for (path, entry) in page.items {
                let key = Key::from_elems(&path.elems()[prefix.len()..]);
                match key.zip(stored_counter(&entry.value)) {
                    Some((key, c)) if !t.expired(&key, &c, now) => {
                        let mut shard = t.lock_one(&key);
                        let slot = shard.slot(&key, t.cap(), &[]);
                        *slot = Slot { c, in_store: true };
                    }
                    _ => junk.push(Op::delete(path)),
                }
            }
            let Some(next) = page.next else { break };
            page = t
                .store
                .scan(&prefix, Default::default(), After::Cursor(&next), 1024)
                .await?;
        }
        for chunk in junk.chunks(WRITE_CHUNK) {
            t.store.write(chunk.to_vec()).await?;
        }
        // Whatever did not fit leaves the store too.
        t.write().await?;
        Ok(Arc::new(t))
    }

    /// Writes changes behind: every [`FLUSH_EVERY`], and at once when an
    /// attempt waits for its count to be durable; until `self` is dropped.
    pub fn spawn_flusher(self: &Arc<Self>) {
        let weak = Arc::downgrade(self);
        let wake = self.wake.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(FLUSH_EVERY);
            loop {
                let sweep = tokio::select! {
                    _ = tick.tick() => true,
                    _ = wake.notified() => false,
                };
                let Some(me) = weak.upgrade() else { return };
                let done = match sweep {
                    true => me.flush().await,
                    false => me.write().await,
                };
                if let Err(e) = done {
                    tracing::warn!(error = %e, "writing throttle counters failed");
                }
            }
        });
    }

    /// Another node's counter changed (a node below `(nil, "throttles")`
    /// written or deleted): it counts here from now on. This node's own
    /// nodes, and nodes that are no counter, are ignored.
    pub fn remote(&self, path: &Path, value: Option<&Value>) {
        let root = shared_root();
        let e = path.elems();
        if !path.starts_with(&root) || e.len() <= root.len() + 1 || path.starts_with(&self.base) {
            return;
        }
        let Elem::Str(instance) = &e[root.len()] else {
            return;
        };
        let Some(key) = Key::from_elems(&e[root.len() + 1..]) else {
            return;
        };
        let mut remote = lock(&self.remote);
        match value.and_then(remote_counter) {
            Some(c) => {
                remote
                    .entry(key)
                    .or_default()
                    .insert(Arc::from(instance.as_str()), c);
            }
            None => {
                if let Some(by) = remote.get_mut(&key) {
                    by.remove(instance.as_str());
                    if by.is_empty() {
                        remote.remove(&key);
                    }
                }
            }
        }
        drop(remote);
        // Attempts waiting for others' verdicts decide again.
        self.settled.notify_waiters();
    }

    /// `c` with the other nodes' live counts under `key` added.
    fn with_remote(&self, key: &Key, mut c: Counter, now: u64) -> Counter {
        let remote = lock(&self.remote);
        let Some(by) = remote.get(key) else {
            return c;
        };
        let keep = match key.is_good() {
            true => self.cfg.good_ms(),
            false => self.cfg.keep_ms(),
        };
        for r in by.values() {
            if now.saturating_sub(r.last) >= keep {
                continue;
            }
            c.failures = c.failures.saturating_add(r.failures);
            c.refused = c.refused.saturating_add(r.refused);
            c.provisional = c.provisional.saturating_add(r.provisional);
            c.last = c.last.max(r.last);
        }
        c
    }

    /// Each shard's share of `max_entries`: at least the three counters
    /// one attempt needs, which may all fall in one shard (a slot never
    /// evicts the attempt's own keys), so no shard ever holds more.
    fn cap(&self) -> usize {
        self.cfg.max_entries.div_ceil(SHARDS).max(3)
    }

    fn shard_of(&self, key: &Key) -> usize {
        (self.hasher.hash_one(key) % SHARDS as u64) as usize
    }

    fn lock_one(&self, key: &Key) -> MutexGuard<'_, Shard> {
        lock(&self.shards[self.shard_of(key)])
    }

    fn lock_all(&self, keys: &[Key]) -> Locked<'_> {
        let mut idx: Vec<usize> = keys.iter().map(|k| self.shard_of(k)).collect();
        idx.sort_unstable();
        idx.dedup();
        Locked(
            idx.into_iter()
                .map(|i| (i, lock(&self.shards[i])))
                .collect(),
        )
    }

    fn expired(&self, key: &Key, c: &Counter, now: u64) -> bool {
        let keep = match key.is_good() {
            true => self.cfg.good_ms(),
            false => self.cfg.keep_ms(),
        };
        c.under_way() == 0 && now.saturating_sub(c.last) >= keep
    }

    fn keys(user: &Arc<str>, source: Source) -> [Key; 3] {
        [
            Key::Pair(user.clone(), source),
            Key::Source(source),
            Key::User(user.clone()),
        ]
    }

    /// Whether `user` logged in successfully from `source` lately.
    fn known_good(&self, user: &Arc<str>, source: Source, now: u64) -> bool {
        let key = Key::Good(user.clone(), source);
        let here = {
            let shard = self.lock_one(&key);
            shard
                .slots
                .get(&key)
                .is_some_and(|s| !self.expired(&key, &s.c, now))
        };
        here || {
            let any = self.with_remote(&key, Counter::default(), now);
            any.last != 0 && !self.expired(&key, &any, now)
        }
    }

    /// Reserves an attempt by `user` from `ip`: decides on the counters
    /// with every attempt under way, and counts this one, in one step.
    /// While the attempts under way fill a limit ([`Decision::Busy`]) it
    /// waits for their verdicts, up to [`MAX_BUSY_WAIT`]. `Ok`: go ahead
    /// after the wait, holding the reservation until the attempt's end;
    /// `Err`: refused (and counted), retry after this long.
    pub(crate) async fn reserve(
        self: &Arc<Self>,
        user: &str,
        ip: IpAddr,
    ) -> Result<(Reservation, Duration), Duration> {
        let deadline = tokio::time::Instant::now() + MAX_BUSY_WAIT;
        loop {
            // Registered before deciding, so a verdict between the
            // decision and the wait is not missed.
            let settled = self.settled.notified();
            tokio::pin!(settled);
            settled.as_mut().enable();
            let now = self.clock.now_ms();
            let last_chance = tokio::time::Instant::now() >= deadline;
            if let Some(done) = self.try_reserve(user, ip, now, last_chance) {
                return done;
            }
            let _ = tokio::time::timeout_at(deadline, settled).await;
        }
    }

    /// One decision of [`Throttle::reserve`] at `now`: `None` while busy
    /// (unless `last_chance`: then busy is a refusal).
    fn try_reserve(
        self: &Arc<Self>,
        user: &str,
        ip: IpAddr,
        now: u64,
        last_chance: bool,
    ) -> Option<Result<(Reservation, Duration), Duration>> {
        let source = Source::of(ip);
        let user = user_key(user);
        let good = self.known_good(&user, source, now);
        let keys = Self::keys(&user, source);
        let keep = self.cfg.keep_ms();
        let mut locked = self.lock_all(&keys);
        let mut read = |k: &Key| {
            let i = self.shard_of(k);
            locked
                .shard(i)
                .and_then(|s| s.slots.get(k))
                .map(|s| s.c)
                .unwrap_or_default()
        };
        let counters = Counters {
            pair: self.with_remote(&keys[0], read(&keys[0]), now),
            source: self.with_remote(&keys[1], read(&keys[1]), now),
            user: self.with_remote(&keys[2], read(&keys[2]), now),
        };
        let decision = match decide(&self.cfg, &counters, good, now) {
            Decision::Busy if !last_chance => return None,
            Decision::Busy => Err(IN_FLIGHT_RETRY),
            Decision::Refuse(retry) => Err(retry),
            Decision::Proceed(wait) => Ok(wait),
        };
        Some(match decision {
            Err(retry) => {
                for k in &keys {
                    let Some(shard) = locked.shard(self.shard_of(k)) else {
                        continue;
                    };
                    if let Some(slot) = shard.slots.get_mut(k) {
                        slot.c.refresh(now, keep);
                        slot.c.refused = slot.c.refused.saturating_add(1);
                        shard.dirty.insert(k.clone());
                    }
                }
                Err(retry)
            }
            Ok(wait) => {
                for k in &keys {
                    let Some(shard) = locked.shard(self.shard_of(k)) else {
                        continue;
                    };
                    let slot = shard.slot(k, self.cap(), &keys);
                    slot.c.refresh(now, keep);
                    slot.c.pending = slot.c.pending.saturating_add(1);
                    slot.c.last = now;
                }
                drop(locked);
                let r = Reservation {
                    throttle: self.clone(),
                    user,
                    source,
                    held: Held::Pending { ran: false },
                };
                Ok((r, wait))
            }
        })
    }

    /// Applies `f` to the counters of `user` from `source` (each made if
    /// missing, when `make`), and settles them.
    fn update(&self, user: &Arc<str>, source: Source, make: bool, f: impl Fn(usize, &mut Counter)) {
        let keys = Self::keys(user, source);
        let mut locked = self.lock_all(&keys);
        for (i, k) in keys.iter().enumerate() {
            let Some(shard) = locked.shard(self.shard_of(k)) else {
                continue;
            };
            let slot = match make {
                true => Some(shard.slot(k, self.cap(), &keys)),
                false => shard.slots.get_mut(k),
            };
            if let Some(slot) = slot {
                f(i, &mut slot.c);
                shard.settle(k);
            }
        }
    }

    /// Notes a success of `user` from `source` at `now`.
    fn mark_good(&self, user: &Arc<str>, source: Source, now: u64) {
        if self.cfg.known_good_days == 0 {
            return;
        }
        let key = Key::Good(user.clone(), source);
        let mut shard = self.lock_one(&key);
        let slot = shard.slot(&key, self.cap(), &[]);
        slot.c.last = now;
        shard.dirty.insert(key);
    }

    /// Resolves once everything marked so far is written (or the write
    /// failed).
    fn persisted(
        &self,
    ) -> impl std::future::Future<Output = Result<(), StoreError>> + Send + 'static {
        let mut rx = lock(&self.batch).done.subscribe();
        self.wake.notify_one();
        async move {
            match rx.wait_for(Option::is_some).await {
                Ok(done) => done.clone().unwrap_or(Err(StoreError::Closed)),
                Err(_) => Err(StoreError::Closed),
            }
        }
    }

    /// The counters of `user` from `ip` now: failures (live) and attempts
    /// under way. For tests and diagnostics.
    pub fn counters(&self, user: &str, ip: IpAddr) -> Counters {
        let now = self.clock.now_ms();
        let source = Source::of(ip);
        let user = user_key(user);
        let keep = self.cfg.keep_ms();
        let get = |k: &Key| {
            self.lock_one(k)
                .slots
                .get(k)
                .map(|s| {
                    let mut c = s.c;
                    c.refresh(now, keep);
                    c
                })
                .unwrap_or_default()
        };
        let [p, s, u] = Self::keys(&user, source);
        Counters {
            pair: get(&p),
            source: get(&s),
            user: get(&u),
        }
    }

    /// How many counters and known-good marks the table holds.
    pub fn len(&self) -> usize {
        self.shards.iter().map(|s| lock(s).slots.len()).sum()
    }

    /// Whether the table is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Drops what has expired, then writes every change to the store.
    pub async fn flush(&self) -> Result<(), StoreError> {
        let now = self.clock.now_ms();
        for shard in &self.shards {
            let mut shard = lock(shard);
            let gone: Vec<Key> = shard
                .slots
                .iter()
                .filter(|(k, s)| self.expired(k, &s.c, now))
                .map(|(k, _)| k.clone())
                .collect();
            for k in &gone {
                shard.remove(k);
            }
        }
        self.write().await
    }

    /// Writes every change to the store: the nodes of changed keys, the
    /// deletions of removed ones; then tells the batch's waiters.
    async fn write(&self) -> Result<(), StoreError> {
        let _turn = self.writing.lock().await;
        let batch = std::mem::replace(&mut *lock(&self.batch), Batch::new());
        let mut ops = Vec::new();
        let mut keys = Vec::new();
        for shard in &self.shards {
            let mut shard = lock(shard);
            let dirty = std::mem::take(&mut shard.dirty);
            for k in dirty {
                match shard.slots.get_mut(&k) {
                    Some(slot) => {
                        // Marked stored now: should it go before the write
                        // lands, its deletion is queued.
                        slot.in_store = true;
                        ops.push(Op::put(k.path_in(&self.base), stored_value(&k, &slot.c)));
                    }
                    None => ops.push(Op::delete(k.path_in(&self.base))),
                }
                keys.push(k);
            }
        }
        let mut result = Ok(());
        for chunk in ops.chunks(WRITE_CHUNK) {
            if let Err(e) = self.store.write(chunk.to_vec()).await {
                result = Err(e);
                break;
            }
        }
        if result.is_err() {
            // Written again with the next batch.
            for k in keys {
                let i = self.shard_of(&k);
                lock(&self.shards[i]).dirty.insert(k);
            }
        }
        batch.done.send_replace(Some(result.clone()));
        result
    }
}

/// A counter's node: `{failures, refused, last}` (attempts under way
/// count as failures: a crash ends them unsuccessfully); a known-good
/// mark's: `{at}`.
fn stored_value(key: &Key, c: &Counter) -> Value {
    match key.is_good() {
        true => Msg::new().with("at", c.last).into_value(),
        false => Msg::new()
            .with("failures", c.failures.saturating_add(c.under_way()))
            .with("under_way", c.under_way())
            .with("refused", c.refused)
            .with("last", c.last)
            .into_value(),
    }
}

/// Another node's stored counter, if it is well formed: its attempts
/// under way are under way here too (they make an attempt wait its turn,
/// never refuse it), not failures as they are in that node's own restart.
fn remote_counter(v: &Value) -> Option<Counter> {
    let mut c = stored_counter(v)?;
    let under_way = v
        .get("under_way")
        .and_then(Value::as_u64)
        .map_or(0, |u| u32::try_from(u).unwrap_or(u32::MAX))
        .min(c.failures);
    c.failures -= under_way;
    c.provisional = under_way;
    Some(c)
}

/// A stored node's counter, if it is well formed (attempts that were
/// under way count as failures: a crash ended them).
fn stored_counter(v: &Value) -> Option<Counter> {
    let n = |k: &str| v.get(k).and_then(Value::as_u64);
    match n("at") {
        Some(at) => Some(Counter {
            last: at,
            ..Counter::default()
        }),
        None => Some(Counter {
            failures: u32::try_from(n("failures")?).unwrap_or(u32::MAX),
            refused: n("refused").map_or(0, |r| u32::try_from(r).unwrap_or(u32::MAX)),
            pending: 0,
            provisional: 0,
            last: n("last")?,
        }),
    }
}

/// Where a reserved attempt stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Held {
    /// Under way, not counted as a failure; `ran`: the method has started
    /// (its work is spent: a client leaving now still counts).
    Pending { ran: bool },
    /// Counted as a failure until a success takes it back (a challenge
    /// went out).
    Counted,
    /// Ended.
    Settled,
}

/// One attempt's place in the counters, from [`Throttle::reserve`] to its
/// end. Dropped unsettled, the attempt counts as a failure if its method
/// had started, and is taken back if not.
pub(crate) struct Reservation {
    throttle: Arc<Throttle>,
    user: Arc<str>,
    source: Source,
    held: Held,
}

impl Reservation {
    /// The method is about to run: from now on the attempt counts even if
    /// the client leaves.
    pub(crate) fn ran(&mut self) {
        if let Held::Pending { .. } = self.held {
            self.held = Held::Pending { ran: true };
        }
    }

    /// Counts the attempt now, before a challenge tells the client
    /// anything: durable as a failure (a crash or the client leaving ends
    /// it so), held as provisional until its verdict; resolves once that
    /// count is durable.
    pub(crate) fn count(
        &mut self,
    ) -> Option<impl std::future::Future<Output = Result<(), StoreError>> + Send + 'static> {
        if !matches!(self.held, Held::Pending { .. }) {
            return None;
        }
        self.held = Held::Counted;
        let keep = self.throttle.cfg.keep_ms();
        let now = self.throttle.clock.now_ms();
        self.throttle.update(&self.user, self.source, true, |_, c| {
            c.refresh(now, keep);
            c.pending = c.pending.saturating_sub(1);
            c.provisional = c.provisional.saturating_add(1);
        });
        Some(self.throttle.persisted())
    }

    /// The attempt failed at `now` (the next delay counts from here);
    /// resolves once its count is durable.
    pub(crate) fn fail(
        mut self,
        now: u64,
    ) -> impl std::future::Future<Output = Result<(), StoreError>> + Send + 'static {
        self.end_failed(now);
        self.throttle.persisted()
    }

    fn end_failed(&mut self, now: u64) {
        let held = std::mem::replace(&mut self.held, Held::Settled);
        let keep = self.throttle.cfg.keep_ms();
        self.throttle.update(&self.user, self.source, true, |_, c| {
            c.refresh(now, keep);
            match held {
                Held::Pending { .. } => c.pending = c.pending.saturating_sub(1),
                Held::Counted => c.provisional = c.provisional.saturating_sub(1),
                Held::Settled => return,
            }
            c.failures = c.failures.saturating_add(1);
            c.last = now;
        });
        self.throttle.settled.notify_waiters();
    }

    /// The attempt succeeded: its own (user, source) counter is cleared,
    /// its own attempt taken back from the source's and the user's, and
    /// the pair is known-good from now on.
    pub(crate) fn succeed(mut self, now: u64) {
        let held = std::mem::replace(&mut self.held, Held::Settled);
        let keep = self.throttle.cfg.keep_ms();
        self.throttle
            .update(&self.user, self.source, false, |i, c| {
                c.refresh(now, keep);
                match held {
                    Held::Pending { .. } => c.pending = c.pending.saturating_sub(1),
                    Held::Counted => c.provisional = c.provisional.saturating_sub(1),
                    Held::Settled => {}
                }
                if i == 0 {
                    // Its own (user, source) starts over; attempts still under
                    // way stay counted.
                    c.failures = 0;
                    c.refused = 0;
                }
            });
        self.throttle.mark_good(&self.user, self.source, now);
        self.throttle.settled.notify_waiters();
    }

    /// The attempt ended without a verdict of the client's making (a
    /// server error): taken back unless a challenge already counted it.
    pub(crate) fn release(mut self) {
        match self.held {
            Held::Counted => self.end_failed(self.throttle.clock.now_ms()),
            _ => self.take_back(),
        }
    }

    fn take_back(&mut self) {
        if let Held::Pending { .. } = self.held {
            self.throttle
                .update(&self.user, self.source, false, |_, c| {
                    c.pending = c.pending.saturating_sub(1);
                });
            self.throttle.settled.notify_waiters();
        }
        self.held = Held::Settled;
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        match self.held {
            // A client that leaves after its method ran (or after its
            // challenge) has failed.
            Held::Pending { ran: true } | Held::Counted => {
                self.end_failed(self.throttle.clock.now_ms())
            }
            Held::Pending { ran: false } => self.take_back(),
            Held::Settled => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> ThrottleConfig {
        ThrottleConfig::default()
    }

    /// Simulates the counters of one (user, source) pair by hand.
    fn fail(c: &mut Counters, now: u64) {
        let w = 900_000;
        for k in [&mut c.pair, &mut c.source, &mut c.user] {
            *k = Counter {
                failures: k.live(now, w) + 1,
                last: now,
                ..Counter::default()
            };
        }
    }

    fn counter(failures: u32, last: u64) -> Counter {
        Counter {
            failures,
            last,
            ..Counter::default()
        }
    }

    #[test]
    fn free_failures_then_exponential_delays_then_refusal() {
        let cfg = cfg();
        let mut c = Counters::default();
        let mut now = 1_000_000_000;
        for _ in 0..5 {
            assert_eq!(
                decide(&cfg, &c, false, now),
                Decision::Proceed(Duration::ZERO)
            );
            fail(&mut c, now);
        }
        // 6th attempt right away: wait 1 s; then 2, 4, 8, 16 s.
        for expect in [1u64, 2, 4, 8, 16] {
            assert_eq!(
                decide(&cfg, &c, false, now),
                Decision::Proceed(Duration::from_secs(expect))
            );
            now += expect * 1000;
            assert_eq!(
                decide(&cfg, &c, false, now),
                Decision::Proceed(Duration::ZERO)
            );
            fail(&mut c, now);
        }
        // Past free + escalate: refused for the cool-down.
        assert_eq!(
            decide(&cfg, &c, false, now + 1000),
            Decision::Refuse(Duration::from_secs(899))
        );
        assert!(matches!(
            decide(&cfg, &c, false, now + 899_000),
            Decision::Refuse(_)
        ));
        // After the cool-down the pair starts over.
        assert_eq!(
            decide(&cfg, &c, false, now + 900_000),
            Decision::Proceed(Duration::ZERO)
        );
    }

    #[test]
    fn a_storm_on_a_user_from_elsewhere_slows_but_never_refuses_the_user() {
        let cfg = cfg();
        // 1000 failures on "alice" from other addresses: her own address's
        // pair and source counters are clean.
        let c = Counters {
            user: counter(1000, 5_000_000),
            ..Counters::default()
        };
        assert_eq!(
            decide(&cfg, &c, false, 5_000_000),
            Decision::Proceed(Duration::from_secs(1))
        );
    }

    #[test]
    fn a_source_guessing_many_users_is_refused() {
        let cfg = cfg();
        let c = Counters {
            pair: counter(1, 100_000),
            source: counter(100, 100_000),
            user: counter(1, 100_000),
        };
        assert!(matches!(
            decide(&cfg, &c, false, 150_000),
            Decision::Refuse(_)
        ));
        assert_eq!(
            decide(&cfg, &c, false, 100_000 + 900_000),
            Decision::Proceed(Duration::ZERO)
        );
        // Not for a (user, source) that logged in from there lately.
        assert_eq!(
            decide(&cfg, &c, true, 150_000),
            Decision::Proceed(Duration::ZERO)
        );
    }

    #[test]
    fn old_failures_are_forgotten() {
        let cfg = cfg();
        let c = Counters {
            pair: counter(7, 100_000),
            ..Counters::default()
        };
        assert!(
            matches!(decide(&cfg, &c, false, 101_000), Decision::Proceed(d) if d > Duration::ZERO)
        );
        assert_eq!(
            decide(&cfg, &c, false, 100_000 + 900_000),
            Decision::Proceed(Duration::ZERO)
        );
    }

    /// Attempts under way (reserved, or challenged without a verdict)
    /// fill the limit: the next one waits its turn (they may all succeed),
    /// it is not refused; failures refuse.
    #[test]
    fn attempts_under_way_fill_the_limit() {
        let cfg = cfg();
        let c = Counters {
            pair: Counter {
                failures: 3,
                pending: 3,
                provisional: 4,
                last: 100_000,
                ..Counter::default()
            },
            ..Counters::default()
        };
        assert_eq!(decide(&cfg, &c, false, 100_000), Decision::Busy);
        // The same attempts, failed: refused for the cool-down.
        let c = Counters {
            pair: Counter {
                failures: 10,
                last: 100_000,
                ..Counter::default()
            },
            ..Counters::default()
        };
        assert!(
            matches!(decide(&cfg, &c, false, 100_000), Decision::Refuse(d) if d > IN_FLIGHT_RETRY)
        );
        // An address full of attempts under way: busy, unless known-good.
        let c = Counters {
            source: Counter {
                pending: 100,
                last: 100_000,
                ..Counter::default()
            },
            ..Counters::default()
        };
        assert_eq!(decide(&cfg, &c, false, 100_000), Decision::Busy);
        assert_eq!(
            decide(&cfg, &c, true, 100_000),
            Decision::Proceed(Duration::ZERO)
        );
        let c = Counters {
            pair: Counter {
                failures: 3,
                pending: 6,
                refused: 1000,
                last: 100_000,
                ..Counter::default()
            },
            ..Counters::default()
        };
        assert_eq!(
            decide(&cfg, &c, false, 100_000),
            Decision::Proceed(Duration::ZERO)
        );
    }

    #[test]
    fn sources_count_ipv4_alone_and_ipv6_by_its_64() {
        let ip = |t: &str| t.parse::<IpAddr>().expect("ip");
        assert_eq!(Source::of(ip("192.0.2.7")).to_string(), "192.0.2.7");
        assert_eq!(
            Source::of(ip("::ffff:192.0.2.7")),
            Source::of(ip("192.0.2.7"))
        );
        let a = Source::of(ip("2001:db8:1:2:aaaa::1"));
        assert_eq!(a, Source::of(ip("2001:db8:1:2:ffff:ffff:ffff:ffff")));
        assert_ne!(a, Source::of(ip("2001:db8:1:3::1")));
        assert_eq!(a.to_string(), "2001:db8:1:2::/64");
        for s in [a, Source::of(ip("192.0.2.7"))] {
            assert_eq!(Source::parse(&s.to_string()), Some(s));
        }
        assert_eq!(Source::parse("2001:db8::1"), None);
        assert_eq!(Source::parse("junk"), None);
    }

    #[test]
    fn keys_round_trip_through_their_paths() {
        let u: Arc<str> = Arc::from("joe\u{0}org.acme");
        let s = Source::of("198.51.100.1".parse().expect("ip"));
        for k in [
            Key::Pair(u.clone(), s),
            Key::Source(s),
            Key::User(u.clone()),
            Key::Good(u, s),
        ] {
            assert_eq!(Key::from_path(&k.path()), Some(k));
        }
        let junk = Path::new(vec![Elem::Nil, "throttle".into(), "pair".into(), 5.into()]);
        assert_eq!(Key::from_path(&junk), None);
    }

    #[test]
    fn long_user_keys_are_kept_as_their_digest() {
        let short = "x".repeat(MAX_USER_KEY);
        assert_eq!(&*user_key(&short), short.as_str());
        let long = format!("joe\u{0}{}", "d".repeat(16_000));
        let k = user_key(&long);
        assert!(k.starts_with("sha256:") && k.len() == 7 + 64, "{k}");
        assert_eq!(k, user_key(&long));
        assert_ne!(k, user_key(&format!("{long}e")));
    }
}
