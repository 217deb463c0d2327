//! The bouncer's keycard table (DESIGN §1), sans-IO.
//!
//! A keycard is one authentication attempt and, after it succeeds, the
//! session it grants. The table issues ids (128 random bits from a CSPRNG),
//! moves keycards through their states (`requesting → challenged →
//! authenticated`, or refused), extends them on keep-alive up to a maximum
//! lifetime, expires them and revokes them. It owns no clock and no socket:
//! every call takes `now` (milliseconds since the Unix epoch), and
//! revocations and expiries come back as values for the front end to act on
//! (close the requester's connection, end its streams).
//!
//! Everything a keycard holds is set here, from what the server decided;
//! nothing is read from a client's message (Flumotion let a client send a
//! keycard already marked authenticated: DESIGN §8.2, W1).
//!
//! Memory: an entry is 64 bytes plus its 16-byte id in a hash map (about
//! half full just after it grows), the expiry wheel ~20 bytes per keycard;
//! user names are interned (one slot and a 4-byte index entry per user).
//! `keycard-bench --suite keycards` measures bytes per keycard with a
//! million of them.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::hash::{BuildHasherDefault, Hasher};
use std::net::{IpAddr, Ipv6Addr};
use std::sync::Arc;

use rand::RngCore;

/// A keycard's id: 128 bits from the OS-seeded CSPRNG, shown as 32
/// lowercase hex digits. It is an opaque handle; it grants nothing by
/// itself (a connection holds its own keycard, and revoke or keep-alive
/// check who asks).
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct KeycardId(pub [u8; 16]);

impl KeycardId {
    /// A fresh random id.
    pub fn random() -> KeycardId {
        let mut b = [0u8; 16];
        rand::thread_rng().fill_bytes(&mut b);
        KeycardId(b)
    }

    /// Parses the 32-hex-digit form.
    pub fn parse(s: &str) -> Option<KeycardId> {
        let mut b = [0u8; 16];
        keycard_proto::hex::decode_into(s, &mut b)?;
        Some(KeycardId(b))
    }
}

impl fmt::Display for KeycardId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&keycard_proto::hex::encode(&self.0))
    }
}

impl fmt::Debug for KeycardId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "KeycardId({self})")
    }
}

/// Where a keycard is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum State {
    /// The attempt has begun; no challenge was sent yet.
    Requesting,
    /// A challenge is out; the client must answer before the deadline.
    Challenged,
    /// The login succeeded; the keycard grants a session until
    /// `expires_at`.
    Authenticated,
    /// The login failed. (Such keycards leave the table at once; the state
    /// is what the attempt ended in.)
    Refused,
    /// Its duration (or its challenge window) ran out.
    Expired,
    /// An administrator or the user revoked it.
    Revoked,
    /// Its requester went away or logged out.
    Removed,
}

impl State {
    /// The name used on the wire and in the audit log.
    pub fn name(self) -> &'static str {
        match self {
            State::Requesting => "requesting",
            State::Challenged => "challenged",
            State::Authenticated => "authenticated",
            State::Refused => "refused",
            State::Expired => "expired",
            State::Revoked => "revoked",
            State::Removed => "removed",
        }
    }

    /// Whether the attempt is still running.
    pub fn pending(self) -> bool {
        matches!(self, State::Requesting | State::Challenged)
    }
}

/// The table's limits and default lifetimes (all milliseconds).
#[derive(Clone, Debug)]
pub struct Policy {
    /// How long a login attempt may take from its start to the client's
    /// last answer (the challenge window).
    pub challenge_window_ms: u64,
    /// Default duration of an authenticated keycard; a keep-alive extends
    /// it by this much again.
    pub duration_ms: u64,
    /// No keycard lives longer than this from its login, keep-alives or
    /// not.
    pub max_lifetime_ms: u64,
    /// Most keycards in the table (pending ones included).
    pub max_total: usize,
    /// Most authenticated keycards per user.
    pub max_per_user: u32,
}

impl Default for Policy {
    fn default() -> Self {
        Policy {
            challenge_window_ms: 30_000,
            duration_ms: 24 * 3600 * 1000,
            max_lifetime_ms: 7 * 24 * 3600 * 1000,
            max_total: 1_000_000,
            max_per_user: 10_000,
        }
    }
}

/// Lifetimes for one login (the policy's, or a method's, user's or
/// domain's own).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Lifetime {
    /// Duration granted at login and by each keep-alive.
    pub duration_ms: u64,
    /// The cap on keep-alives, counted from the login.
    pub max_lifetime_ms: u64,
}

/// A keycard as the table shows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Keycard {
    /// Its id.
    pub id: KeycardId,
    /// The auth method of the attempt.
    pub method: Arc<str>,
    /// The user: the name asked for while pending, the method's verdict
    /// once authenticated.
    pub user: Arc<str>,
    /// The user's domain, as text (empty: the server's own users). A
    /// domain's "joe" and the server's "joe" are different users.
    pub domain: Arc<str>,
    /// The front end carrying it (a connection id).
    pub requester: u64,
    /// The client's address, if the front end knows it.
    pub addr: Option<IpAddr>,
    /// The keycard this one was issued from (a token's id), if any.
    pub parent: Option<KeycardId>,
    /// Its state.
    pub state: State,
    /// When the attempt began, or when the login succeeded.
    pub issued_at: u64,
    /// When it stops working (for a pending one: the challenge deadline).
    pub expires_at: u64,
    /// The latest `expires_at` keep-alives can reach.
    pub max_until: u64,
    /// The last keep-alive (0: none).
    pub last_keepalive: u64,
}

/// An authenticated keycard as it was kept across a restart.
#[derive(Clone, Debug)]
pub struct Restored<'a> {
    /// Its id.
    pub id: KeycardId,
    /// The method that logged it in.
    pub method: &'a str,
    /// The user.
    pub user: &'a str,
    /// The user's domain, as text.
    pub domain: &'a str,
    /// When the login succeeded (Unix ms).
    pub issued_at: u64,
    /// When it stops working unless kept alive (Unix ms).
    pub expires_at: u64,
    /// The latest `expires_at` keep-alives can reach.
    pub max_until: u64,
    /// What a keep-alive grants.
    pub duration_ms: u64,
}

/// Why the table refused an operation.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum BouncerError {
    /// The table holds its maximum of keycards.
    #[error("the server holds its maximum of {0} keycards; retry later")]
    Full(usize),
    /// The user holds its maximum of keycards.
    #[error("this user holds its maximum of {0} keycards; log out elsewhere or revoke some")]
    UserFull(u32),
    /// No such keycard (or not the caller's).
    #[error("no such keycard")]
    Unknown,
    /// The keycard's time ran out.
    #[error("the keycard has expired")]
    Expired,
    /// The keycard is not in a state that allows this.
    #[error("the keycard is {}", .0.name())]
    WrongState(State),
}

/// Lookups of server-made random ids need no DoS-resistant hashing: the
/// first 8 bytes already are uniformly random.
#[derive(Default)]
pub struct IdHasher(u64);

impl Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        // `[u8; 16]` hashes as its bytes; fold them all so a hand-made id
        // (`keycard_show` of a guessed value) costs the same as any other.
        for chunk in bytes.chunks(8) {
            let mut b = [0u8; 8];
            b[..chunk.len()].copy_from_slice(chunk);
            self.0 = self.0.rotate_left(5) ^ u64::from_le_bytes(b);
        }
    }
    fn write_usize(&mut self, _: usize) {}
}

type IdMap<V> = HashMap<KeycardId, V, BuildHasherDefault<IdHasher>>;

/// One stored keycard (the id is the map key): 64 bytes. Times that only
/// inform are kept in seconds; the ones that decide, in milliseconds.
struct Entry {
    requester: u64,
    expires_at: u64,
    max_until: u64,
    addr: [u8; 16],
    /// Unix seconds.
    issued_at_s: u32,
    /// Unix seconds (0: none).
    last_keepalive_s: u32,
    /// Duration granted by each keep-alive, in seconds.
    duration_s: u32,
    user: u32,
    method: u8,
    state: State,
    has_addr: bool,
}

fn secs(ms: u64) -> u32 {
    u32::try_from(ms / 1000).unwrap_or(u32::MAX)
}

/// One interned user name, in a scope (a user's domain; 0 for the
/// domain interner itself).
struct Name {
    scope: u32,
    name: Arc<str>,
    /// Keycards naming it.
    refs: u32,
    /// Authenticated keycards naming it (the per-user bound).
    authed: u32,
}

/// Interned user names with reference counts. The index holds slot
/// numbers only (4 bytes each), hashed with a per-table random key: names
/// of pending logins are chosen by clients.
struct Interner {
    names: Vec<Name>,
    index: hashbrown::HashTable<u32>,
    hasher: std::collections::hash_map::RandomState,
    free: Vec<u32>,
    /// What a freed slot holds (no allocation per freed name).
    empty: Arc<str>,
}

impl Default for Interner {
    fn default() -> Self {
        Interner {
            names: Vec::new(),
            index: hashbrown::HashTable::new(),
            hasher: Default::default(),
            free: Vec::new(),
            empty: Arc::from(""),
        }
    }
}

impl Interner {
    fn hash(&self, scope: u32, name: &str) -> u64 {
        std::hash::BuildHasher::hash_one(&self.hasher, (scope, name))
    }

    /// The slot of `name` in `scope`, if interned.
    fn find(&self, scope: u32, name: &str) -> Option<u32> {
        let names = &self.names;
        self.index
            .find(self.hash(scope, name), |&ix| {
                let n = &names[ix as usize];
                n.scope == scope && &*n.name == name
            })
            .copied()
    }

    /// The slot of `name` in `scope`, one more reference to it, and
    /// whether it is new.
    fn acquire(&mut self, scope: u32, name: &str) -> (u32, bool) {
        if let Some(ix) = self.find(scope, name) {
            self.names[ix as usize].refs += 1;
            return (ix, false);
        }
        let slot = Name {
            scope,
            name: name.into(),
            refs: 1,
            authed: 0,
        };
        let ix = match self.free.pop() {
            Some(ix) => {
                self.names[ix as usize] = slot;
                ix
            }
            None => {
                self.names.push(slot);
                (self.names.len() - 1) as u32
            }
        };
        let h = self.hash(scope, name);
        let (names, hasher) = (&self.names, &self.hasher);
        self.index.insert_unique(h, ix, |&i| {
            let n = &names[i as usize];
            std::hash::BuildHasher::hash_one(hasher, (n.scope, &*n.name))
        });
        (ix, true)
    }

    /// One reference less; the slot's scope when it was freed.
    fn release(&mut self, ix: u32) -> Option<u32> {
        let slot = &mut self.names[ix as usize];
        slot.refs -= 1;
        if slot.refs > 0 {
            return None;
        }
        let name = std::mem::replace(&mut slot.name, self.empty.clone());
        let scope = slot.scope;
        let h = self.hash(scope, &name);
        if let Ok(e) = self.index.find_entry(h, |&i| i == ix) {
            e.remove();
        }
        self.free.push(ix);
        Some(scope)
    }

    fn name(&self, ix: u32) -> Arc<str> {
        self.names[ix as usize].name.clone()
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.index.len()
    }
}

/// Expiry buckets are this long.
const TICK_MS: u64 = 100;
/// Stale wheel entries allowed beyond one per keycard before the wheel is
/// rebuilt.
const WHEEL_SLACK: usize = 64;

/// Which keycards a listing or a revocation is about.
#[derive(Clone, Debug, Default)]
pub struct Filter {
    /// Only this user's (of `domain`, or of the server's own users).
    pub user: Option<String>,
    /// Only this domain's users (its text form; empty: the server's own).
    pub domain: Option<String>,
    /// Only this method's.
    pub method: Option<String>,
    /// Only this requester's.
    pub requester: Option<u64>,
    /// Only those issued from this keycard (a token).
    pub parent: Option<KeycardId>,
}

/// A [`Filter`] with its names as interned indexes.
struct Resolved {
    user: Option<u32>,
    domain: Option<u32>,
    method: Option<u8>,
    requester: Option<u64>,
    parent: Option<KeycardId>,
}

/// The keycard table.
pub struct Table {
    policy: Policy,
    cards: IdMap<Entry>,
    users: Interner,
    /// The users' scopes.
    domains: Interner,
    methods: Vec<Arc<str>>,
    /// The token a keycard was issued from, for the few that have one.
    parents: IdMap<KeycardId>,
    /// Expiry buckets (`expires_at / TICK_MS`, rounded up) → ids. Lazy: a
    /// kept-alive keycard is queued again and its old entry is skipped when
    /// its bucket comes up.
    wheel: BTreeMap<u64, Vec<KeycardId>>,
    /// Ids in `wheel`.
    queued: usize,
    pending: usize,
}

fn addr_bytes(addr: Option<IpAddr>) -> [u8; 16] {
    match addr {
        Some(IpAddr::V4(a)) => a.to_ipv6_mapped().octets(),
        Some(IpAddr::V6(a)) => a.octets(),
        None => [0; 16],
    }
}

impl Table {
    /// An empty table.
    pub fn new(policy: Policy) -> Table {
        Table {
            policy,
            cards: IdMap::default(),
            users: Interner::default(),
            domains: Interner::default(),
            methods: Vec::new(),
            parents: IdMap::default(),
            wheel: BTreeMap::new(),
            queued: 0,
            pending: 0,
        }
    }

    /// The policy.
    pub fn policy(&self) -> &Policy {
        &self.policy
    }

    /// Keycards in the table.
    pub fn len(&self) -> usize {
        self.cards.len()
    }

    /// Whether the table is empty.
    pub fn is_empty(&self) -> bool {
        self.cards.is_empty()
    }

    /// Pending attempts in the table.
    pub fn pending(&self) -> usize {
        self.pending
    }

    /// Ids queued in the expiry wheel, stale ones included (a bound the
    /// tests check: it stays within a small multiple of `len`).
    pub fn queued(&self) -> usize {
        self.queued
    }

    fn method_ix(&mut self, method: &str) -> u8 {
        if let Some(ix) = self.methods.iter().position(|m| &**m == method) {
            return ix as u8;
        }
        // Methods come from the server's registry, a handful of names.
        self.methods.push(method.into());
        (self.methods.len() - 1).min(u8::MAX as usize) as u8
    }

    fn queue_expiry(&mut self, id: KeycardId, at: u64) {
        self.wheel.entry(at.div_ceil(TICK_MS)).or_default().push(id);
        self.queued += 1;
        // Entries of keycards that left or moved stay until their bucket
        // comes up; keep them within the table's size (W7: keep-alive
        // spam and login churn grew the wheel for a whole duration).
        if self.queued > 2 * self.cards.len() + WHEEL_SLACK {
            self.rebuild_wheel();
        }
    }

    /// One wheel entry per keycard, at its current expiry.
    fn rebuild_wheel(&mut self) {
        let mut wheel: BTreeMap<u64, Vec<KeycardId>> = BTreeMap::new();
        for (id, e) in &self.cards {
            wheel
                .entry(e.expires_at.div_ceil(TICK_MS))
                .or_default()
                .push(*id);
        }
        self.queued = self.cards.len();
        self.wheel = wheel;
    }

    /// Starts a login attempt: a new keycard in state `requesting` whose
    /// challenge window starts now.
    pub fn begin(
        &mut self,
        now: u64,
        method: &str,
        user: &str,
        domain: &str,
        requester: u64,
        addr: Option<IpAddr>,
    ) -> Result<KeycardId, BouncerError> {
        // Expired keycards are not reaped here: whoever reaps must tell
        // their requesters (the front end reaps, then retries).
        if self.cards.len() >= self.policy.max_total {
            return Err(BouncerError::Full(self.policy.max_total));
        }
        let id = loop {
            let id = KeycardId::random();
            if !self.cards.contains_key(&id) {
                break id;
            }
        };
        let deadline = now.saturating_add(self.policy.challenge_window_ms);
        let entry = Entry {
            requester,
            expires_at: deadline,
            max_until: deadline,
            addr: addr_bytes(addr),
            issued_at_s: secs(now),
            last_keepalive_s: 0,
            duration_s: 0,
            user: self.acquire_user(domain, user),
            method: self.method_ix(method),
            state: State::Requesting,
            has_addr: addr.is_some(),
        };
        self.cards.insert(id, entry);
        self.pending += 1;
        self.queue_expiry(id, deadline);
        Ok(id)
    }

    /// The attempt sent a challenge. Its deadline stays the one set when it
    /// began.
    pub fn challenged(&mut self, id: KeycardId, now: u64) -> Result<u64, BouncerError> {
        let e = self.cards.get_mut(&id).ok_or(BouncerError::Unknown)?;
        if !e.state.pending() {
            return Err(BouncerError::WrongState(e.state));
        }
        if now > e.expires_at {
            self.drop_card(id);
            return Err(BouncerError::Expired);
        }
        e.state = State::Challenged;
        Ok(e.expires_at)
    }

    /// The challenge deadline of a pending attempt.
    pub fn deadline(&self, id: KeycardId) -> Option<u64> {
        self.cards
            .get(&id)
            .filter(|e| e.state.pending())
            .map(|e| e.expires_at)
    }

    /// The method's verdict was a success: the keycard becomes
    /// `authenticated` for `user` (the checker's answer, whatever name the
    /// attempt started with). Refused — and removed — when its challenge
    /// window has passed or the user holds its maximum; the one place where
    /// the verdict and the confirmation meet (W8e).
    pub fn authenticate(
        &mut self,
        id: KeycardId,
        now: u64,
        user: &str,
        domain: &str,
        life: Lifetime,
        parent: Option<KeycardId>,
    ) -> Result<Keycard, BouncerError> {
        let e = self.cards.get(&id).ok_or(BouncerError::Unknown)?;
        if !e.state.pending() {
            return Err(BouncerError::WrongState(e.state));
        }
        if now > e.expires_at {
            self.drop_card(id);
            return Err(BouncerError::Expired);
        }
        let uix = self.acquire_user(domain, user);
        if self.users.names[uix as usize].authed >= self.policy.max_per_user {
            self.release_user(uix);
            self.drop_card(id);
            return Err(BouncerError::UserFull(self.policy.max_per_user));
        }
        self.users.names[uix as usize].authed += 1;
        self.pending -= 1;
        let max_until = now.saturating_add(life.max_lifetime_ms);
        let expires_at = now.saturating_add(life.duration_ms).min(max_until);
        let Some(e) = self.cards.get_mut(&id) else {
            return Err(BouncerError::Unknown);
        };
        let old_user = std::mem::replace(&mut e.user, uix);
        e.state = State::Authenticated;
        e.issued_at_s = secs(now);
        e.expires_at = expires_at;
        e.max_until = max_until;
        e.duration_s = secs(life.duration_ms);
        if let Some(p) = parent {
            self.parents.insert(id, p);
        }
        self.release_user(old_user);
        self.queue_expiry(id, expires_at);
        self.show(id).ok_or(BouncerError::Unknown)
    }

    /// Puts back an authenticated keycard kept across a restart (a REST
    /// session), with its own id and times, for `requester`. Refused if
    /// the id is taken, it has expired at `now`, or a bound is full.
    pub fn restore(
        &mut self,
        now: u64,
        card: &Restored<'_>,
        requester: u64,
    ) -> Result<(), BouncerError> {
        if self.cards.contains_key(&card.id) {
            return Err(BouncerError::WrongState(State::Authenticated));
        }
        if now >= card.expires_at {
            return Err(BouncerError::Expired);
        }
        if self.cards.len() >= self.policy.max_total {
            return Err(BouncerError::Full(self.policy.max_total));
        }
        let uix = self.acquire_user(card.domain, card.user);
        if self.users.names[uix as usize].authed >= self.policy.max_per_user {
            self.release_user(uix);
            return Err(BouncerError::UserFull(self.policy.max_per_user));
        }
        self.users.names[uix as usize].authed += 1;
        let expires_at = card.expires_at.min(card.max_until);
        let method = self.method_ix(card.method);
        self.cards.insert(
            card.id,
            Entry {
                requester,
                expires_at,
                max_until: card.max_until,
                addr: addr_bytes(None),
                issued_at_s: secs(card.issued_at),
                last_keepalive_s: 0,
                duration_s: secs(card.duration_ms),
                user: uix,
                method,
                state: State::Authenticated,
                has_addr: false,
            },
        );
        self.queue_expiry(card.id, expires_at);
        Ok(())
    }

    /// The attempt failed: its keycard leaves the table.
    pub fn refuse(&mut self, id: KeycardId) -> bool {
        self.drop_card(id).is_some()
    }

    /// Extends `requester`'s keycard by its duration (or by `ttl_ms` when
    /// that is shorter), never past its maximum lifetime. Another
    /// requester's keycard is `Unknown`: keep-alive checks ownership. An
    /// expired one stays in the table for `reap` to report.
    pub fn keep_alive(
        &mut self,
        id: KeycardId,
        requester: u64,
        now: u64,
        ttl_ms: Option<u64>,
    ) -> Result<u64, BouncerError> {
        let e = self.cards.get_mut(&id).ok_or(BouncerError::Unknown)?;
        if e.requester != requester {
            return Err(BouncerError::Unknown);
        }
        if e.state != State::Authenticated {
            return Err(BouncerError::WrongState(e.state));
        }
        if now >= e.expires_at {
            // Left for `reap`, which reports it: its requester must learn
            // that it ended (its streams end with it).
            return Err(BouncerError::Expired);
        }
        let step = u64::from(e.duration_s) * 1000;
        let step = ttl_ms.map_or(step, |t| t.min(step));
        let new = now.saturating_add(step).min(e.max_until).max(e.expires_at);
        e.last_keepalive_s = secs(now);
        // Its wheel entry still fires in time if the bucket is the same.
        let moved = new.div_ceil(TICK_MS) != e.expires_at.div_ceil(TICK_MS);
        e.expires_at = new;
        if moved {
            self.queue_expiry(id, new);
        }
        Ok(new)
    }

    /// Whether `id` is a live authenticated keycard at `now`.
    pub fn check(&self, id: KeycardId, now: u64) -> Result<u64, BouncerError> {
        let e = self.cards.get(&id).ok_or(BouncerError::Unknown)?;
        if e.state != State::Authenticated {
            return Err(BouncerError::WrongState(e.state));
        }
        if now >= e.expires_at {
            return Err(BouncerError::Expired);
        }
        Ok(e.expires_at)
    }

    /// A keycard as it is now.
    pub fn show(&self, id: KeycardId) -> Option<Keycard> {
        self.cards.get(&id).map(|e| self.snapshot(id, e))
    }

    fn snapshot(&self, id: KeycardId, e: &Entry) -> Keycard {
        let addr = e.has_addr.then(|| {
            let v6 = Ipv6Addr::from(e.addr);
            match v6.to_ipv4_mapped() {
                Some(v4) => IpAddr::V4(v4),
                None => IpAddr::V6(v6),
            }
        });
        Keycard {
            id,
            method: self.methods[e.method as usize].clone(),
            user: self.users.name(e.user),
            domain: self.domains.name(self.users.names[e.user as usize].scope),
            requester: e.requester,
            addr,
            parent: self.parents.get(&id).copied(),
            state: e.state,
            issued_at: u64::from(e.issued_at_s) * 1000,
            expires_at: e.expires_at,
            max_until: e.max_until,
            last_keepalive: u64::from(e.last_keepalive_s) * 1000,
        }
    }

    fn drop_card(&mut self, id: KeycardId) -> Option<Keycard> {
        let e = self.cards.remove(&id)?;
        let card = self.snapshot(id, &e);
        if e.state.pending() {
            self.pending -= 1;
        } else {
            let n = &mut self.users.names[e.user as usize].authed;
            *n = n.saturating_sub(1);
        }
        self.parents.remove(&id);
        self.release_user(e.user);
        Some(card)
    }

    /// The slot of `user` of `domain`, one more reference.
    fn acquire_user(&mut self, domain: &str, user: &str) -> u32 {
        let (d, _) = self.domains.acquire(0, domain);
        let (u, fresh) = self.users.acquire(d, user);
        if !fresh {
            // A user slot holds one reference to its domain.
            self.domains.release(d);
        }
        u
    }

    fn release_user(&mut self, u: u32) {
        if let Some(d) = self.users.release(u) {
            self.domains.release(d);
        }
    }

    /// Revokes one keycard; the front end tells its requester.
    pub fn revoke(&mut self, id: KeycardId) -> Option<Keycard> {
        self.drop_card(id).map(|mut c| {
            c.state = State::Revoked;
            c
        })
    }

    /// Removes `requester`'s keycard `id` (its connection closed, or it
    /// logged out). Another requester's keycard is left alone.
    pub fn remove(&mut self, id: KeycardId, requester: u64) -> Option<Keycard> {
        if self.cards.get(&id)?.requester != requester {
            return None;
        }
        self.drop_card(id).map(|mut c| {
            c.state = State::Removed;
            c
        })
    }

    /// `filter` with names resolved to interned indexes; `None` when a
    /// name it asks for is not in the table (nothing matches).
    fn resolve(&self, f: &Filter) -> Option<Resolved> {
        let domain = match f.domain.as_deref() {
            Some(d) => Some(self.domains.find(0, d)?),
            None => None,
        };
        // A user without a domain is one of the server's own.
        let user = match f.user.as_deref() {
            Some(u) => {
                let d = match domain {
                    Some(d) => d,
                    None => self.domains.find(0, "")?,
                };
                Some(self.users.find(d, u)?)
            }
            None => None,
        };
        let method = match f.method.as_deref() {
            Some(m) => Some(self.methods.iter().position(|x| &**x == m)? as u8),
            None => None,
        };
        Some(Resolved {
            user,
            domain,
            method,
            requester: f.requester,
            parent: f.parent,
        })
    }

    fn matches(&self, id: &KeycardId, e: &Entry, f: &Resolved) -> bool {
        f.requester.is_none_or(|r| r == e.requester)
            && f.user.is_none_or(|u| u == e.user)
            && f.domain
                .is_none_or(|d| d == self.users.names[e.user as usize].scope)
            && f.method.is_none_or(|m| m == e.method)
            && f.parent
                .is_none_or(|p| self.parents.get(id).is_some_and(|q| *q == p))
    }

    /// The keycards matching `filter`, by id, after `after`, at most
    /// `limit`.
    pub fn list(&self, filter: &Filter, after: Option<KeycardId>, limit: usize) -> Vec<Keycard> {
        let Some(filter) = self.resolve(filter) else {
            return Vec::new();
        };
        let mut ids: Vec<KeycardId> = self
            .cards
            .iter()
            .filter(|(id, e)| after.is_none_or(|a| **id > a) && self.matches(id, e, &filter))
            .map(|(id, _)| *id)
            .collect();
        ids.sort_unstable();
        ids.truncate(limit);
        ids.into_iter().filter_map(|id| self.show(id)).collect()
    }

    /// Revokes every keycard matching `filter` (an empty filter matches
    /// all); the front end tells their requesters.
    pub fn revoke_where(&mut self, filter: &Filter) -> Vec<Keycard> {
        let Some(filter) = self.resolve(filter) else {
            return Vec::new();
        };
        let ids: Vec<KeycardId> = self
            .cards
            .iter()
            .filter(|(id, e)| self.matches(id, e, &filter))
            .map(|(id, _)| *id)
            .collect();
        ids.into_iter().filter_map(|id| self.revoke(id)).collect()
    }

    /// Removes keycards whose time ran out by `now` (at most `max`), and
    /// returns them with state `expired`. Pending attempts past their
    /// challenge window go too, whoever started them.
    pub fn reap(&mut self, now: u64, max: usize) -> Vec<Keycard> {
        let mut out = Vec::new();
        let due = now / TICK_MS;
        while out.len() < max {
            match self.wheel.first_key_value() {
                Some((k, _)) if *k <= due => {}
                _ => break,
            }
            let Some((key, mut ids)) = self.wheel.pop_first() else {
                break;
            };
            self.queued -= ids.len();
            while let Some(id) = ids.pop() {
                let expired = self.cards.get(&id).is_some_and(|e| e.expires_at <= now);
                if expired {
                    if let Some(mut c) = self.drop_card(id) {
                        c.state = State::Expired;
                        out.push(c);
                    }
                    if out.len() >= max {
                        break;
                    }
                }
            }
            if !ids.is_empty() {
                // Stopped at `max`: the rest waits for the next call.
                self.queued += ids.len();
                self.wheel.entry(key).or_default().extend(ids);
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIFE: Lifetime = Lifetime {
        duration_ms: 10_000,
        max_lifetime_ms: 25_000,
    };

    fn table() -> Table {
        Table::new(Policy {
            challenge_window_ms: 1_000,
            duration_ms: 10_000,
            max_lifetime_ms: 25_000,
            max_total: 100,
            max_per_user: 3,
        })
    }

    /// A kept keycard comes back under its id, times and user, expires
    /// as it would have, counts against the bounds, and is refused when
    /// it has ended or its id is taken.
    #[test]
    fn a_kept_keycard_is_restored_as_it_was() {
        let mut t = table();
        let id = KeycardId::random();
        let card = Restored {
            id,
            method: "scram-sha-256",
            user: "joe",
            domain: "",
            issued_at: 1_000,
            expires_at: 11_000,
            max_until: 26_000,
            duration_ms: 10_000,
        };
        t.restore(5_000, &card, 7).expect("restored");
        let shown = t.show(id).expect("there");
        assert_eq!(shown.state, State::Authenticated);
        assert_eq!(&*shown.user, "joe");
        assert_eq!(shown.requester, 7);
        assert_eq!(shown.expires_at, 11_000);
        assert_eq!(shown.max_until, 26_000);
        assert_eq!(t.check(id, 6_000), Ok(11_000));
        // Kept alive by its new requester, by its duration, capped.
        assert_eq!(t.keep_alive(id, 7, 9_000, None), Ok(19_000));
        // The same id again, an ended one: refused.
        assert!(t.restore(5_000, &card, 8).is_err());
        let ended = Restored {
            id: KeycardId::random(),
            expires_at: 4_000,
            ..card.clone()
        };
        assert_eq!(t.restore(5_000, &ended, 9), Err(BouncerError::Expired));
        // The per-user bound holds (3).
        for _ in 0..2 {
            let more = Restored {
                id: KeycardId::random(),
                ..card.clone()
            };
            t.restore(5_000, &more, 10).expect("under the bound");
        }
        let over = Restored {
            id: KeycardId::random(),
            ..card
        };
        assert_eq!(t.restore(5_000, &over, 11), Err(BouncerError::UserFull(3)));
        // It expires as it would have.
        assert!(t.reap(30_000, 100).iter().any(|c| c.id == id));
    }

    #[test]
    fn ids_are_random_and_round_trip() {
        let a = KeycardId::random();
        let b = KeycardId::random();
        assert_ne!(a, b);
        assert_eq!(KeycardId::parse(&a.to_string()), Some(a));
        assert_eq!(a.to_string().len(), 32);
        assert_eq!(KeycardId::parse("zz"), None);
        assert_eq!(KeycardId::parse(&"g".repeat(32)), None);
    }

    #[test]
    fn login_lifecycle() {
        let mut t = table();
        let id = t.begin(0, "scram", "alice", "", 7, None).expect("test");
        assert_eq!(t.show(id).expect("test").state, State::Requesting);
        t.challenged(id, 10).expect("test");
        assert_eq!(t.show(id).expect("test").state, State::Challenged);
        assert_eq!(t.pending(), 1);
        let c = t
            .authenticate(id, 20, "alice", "", LIFE, None)
            .expect("test");
        assert_eq!(c.state, State::Authenticated);
        assert_eq!(c.expires_at, 10_020);
        assert_eq!(t.pending(), 0);
        assert_eq!(t.check(id, 10_019), Ok(10_020));
        assert_eq!(t.check(id, 10_020), Err(BouncerError::Expired));
        // A second confirmation of the same attempt is refused.
        assert!(matches!(
            t.authenticate(id, 30, "alice", "", LIFE, None),
            Err(BouncerError::WrongState(State::Authenticated))
        ));
    }

    #[test]
    fn the_verdict_names_the_user() {
        let mut t = table();
        let id = t.begin(0, "scram", "asked-for", "", 1, None).expect("test");
        let c = t
            .authenticate(id, 1, "checker-said", "", LIFE, None)
            .expect("test");
        assert_eq!(&*c.user, "checker-said");
        assert_eq!(t.users.len(), 1, "the asked-for name was released");
    }

    #[test]
    fn challenges_expire_even_without_other_traffic() {
        let mut t = table();
        let id = t.begin(0, "scram", "alice", "", 1, None).expect("test");
        t.challenged(id, 500).expect("test");
        assert_eq!(
            t.authenticate(id, 1_001, "alice", "", LIFE, None),
            Err(BouncerError::Expired)
        );
        assert!(t.is_empty());
        // And the reaper takes abandoned attempts.
        let id = t.begin(2_000, "scram", "bob", "", 1, None).expect("test");
        t.challenged(id, 2_001).expect("test");
        assert!(t.reap(2_999, 10).is_empty());
        let gone = t.reap(3_000, 10);
        assert_eq!(gone.len(), 1);
        assert_eq!(gone[0].state, State::Expired);
        assert!(t.is_empty());
        assert_eq!(t.pending(), 0);
    }

    #[test]
    fn keep_alive_extends_up_to_the_maximum_and_checks_ownership() {
        let mut t = table();
        let id = t.begin(0, "scram", "alice", "", 7, None).expect("test");
        t.authenticate(id, 0, "alice", "", LIFE, None)
            .expect("test");
        assert_eq!(t.keep_alive(id, 8, 5_000, None), Err(BouncerError::Unknown));
        assert_eq!(t.keep_alive(id, 7, 5_000, None), Ok(15_000));
        // A shorter ttl never shortens it.
        assert_eq!(t.keep_alive(id, 7, 6_000, Some(1_000)), Ok(15_000));
        assert_eq!(t.keep_alive(id, 7, 14_000, None), Ok(24_000));
        assert_eq!(t.keep_alive(id, 7, 20_000, None), Ok(25_000));
        assert_eq!(
            t.keep_alive(id, 7, 25_000, None),
            Err(BouncerError::Expired)
        );
        // The reaper reports it, so its requester is told.
        assert_eq!(t.reap(25_000, 10).len(), 1);
        assert!(t.is_empty());
        // The stale wheel entries are skipped.
        assert!(t.reap(100_000, 100).is_empty());
        assert!(t.wheel.is_empty());
    }

    #[test]
    fn the_wheel_stays_within_the_table() {
        let mut t = table();
        let id = t.begin(0, "scram", "alice", "", 7, None).expect("test");
        t.authenticate(id, 0, "alice", "", LIFE, None)
            .expect("test");
        for now in (1..20_000).step_by(7) {
            t.keep_alive(id, 7, now, None).expect("test");
        }
        for i in 0..1000 {
            let x = t.begin(0, "m", "bob", "", i, None).expect("test");
            t.authenticate(x, 0, "bob", "", LIFE, None).ok();
            t.refuse(x);
        }
        assert!(t.queued() <= 2 * t.len() + WHEEL_SLACK, "{}", t.queued());
        // Still reaped on time.
        assert!(t.reap(24_999, 10).is_empty());
        assert_eq!(t.reap(25_000, 10).len(), 1);
        assert!(t.is_empty());
    }

    #[test]
    fn reaping_skips_kept_alive_keycards() {
        let mut t = table();
        let id = t.begin(0, "scram", "alice", "", 7, None).expect("test");
        t.authenticate(id, 0, "alice", "", LIFE, None)
            .expect("test");
        t.keep_alive(id, 7, 9_000, None).expect("test");
        assert!(t.reap(10_000, 10).is_empty());
        assert_eq!(t.len(), 1);
        assert_eq!(t.reap(19_000, 10).len(), 1);
    }

    #[test]
    fn bounds() {
        let mut t = Table::new(Policy {
            max_total: 4,
            max_per_user: 2,
            ..Policy::default()
        });
        let mut ids = Vec::new();
        for i in 0..2 {
            let id = t.begin(0, "m", "alice", "", i, None).expect("test");
            t.authenticate(id, 0, "alice", "", LIFE, None)
                .expect("test");
            ids.push(id);
        }
        let third = t.begin(0, "m", "alice", "", 3, None).expect("test");
        assert_eq!(
            t.authenticate(third, 0, "alice", "", LIFE, None),
            Err(BouncerError::UserFull(2))
        );
        assert_eq!(t.len(), 2, "the refused attempt left the table");
        let b1 = t.begin(0, "m", "bob", "", 4, None).expect("test");
        t.begin(0, "m", "bob", "", 5, None).expect("test");
        assert_eq!(
            t.begin(0, "m", "carol", "", 6, None),
            Err(BouncerError::Full(4))
        );
        // Full means full: expired keycards are for `reap` to report.
        assert_eq!(
            t.begin(u64::MAX / 2, "m", "carol", "", 6, None),
            Err(BouncerError::Full(4))
        );
        // Room again once one goes.
        t.refuse(b1);
        t.begin(0, "m", "carol", "", 6, None).expect("test");
        // A revoked keycard frees its user's slot.
        t.revoke(ids[0]).expect("test");
        assert_eq!(t.users.names.iter().map(|n| n.authed).sum::<u32>(), 1);
    }

    #[test]
    fn revoke_and_remove_by_filter() {
        let mut t = table();
        let token = KeycardId::random();
        let mut all = Vec::new();
        for (i, u) in ["alice", "alice", "bob"].iter().enumerate() {
            let id = t.begin(0, "m", u, "", i as u64, None).expect("test");
            let parent = (i == 1).then_some(token);
            t.authenticate(id, 0, u, "", LIFE, parent).expect("test");
            all.push(id);
        }
        assert_eq!(t.remove(all[2], 99), None, "not bob's requester");
        let by_parent = t.revoke_where(&Filter {
            parent: Some(token),
            ..Filter::default()
        });
        assert_eq!(by_parent.len(), 1);
        assert_eq!(by_parent[0].id, all[1]);
        let alices = t.list(
            &Filter {
                user: Some("alice".into()),
                ..Filter::default()
            },
            None,
            10,
        );
        assert_eq!(alices.len(), 1);
        let gone = t.revoke_where(&Filter {
            user: Some("alice".into()),
            ..Filter::default()
        });
        assert_eq!(gone[0].state, State::Revoked);
        assert_eq!(t.remove(all[2], 2).map(|c| c.state), Some(State::Removed));
        assert!(t.is_empty());
        assert_eq!(t.users.len(), 0);
        assert!(t.users.names.iter().all(|n| n.authed == 0 && n.refs == 0));
        assert!(t.parents.is_empty());
    }

    #[test]
    fn addresses_round_trip() {
        let mut t = table();
        for addr in ["127.0.0.2", "::1", "2001:db8::7"] {
            let a: IpAddr = addr.parse().expect("test");
            let id = t.begin(0, "m", "u", "", 1, Some(a)).expect("test");
            assert_eq!(t.show(id).expect("test").addr, Some(a));
        }
        let id = t.begin(0, "m", "u", "", 1, None).expect("test");
        assert_eq!(t.show(id).expect("test").addr, None);
    }

    #[test]
    fn list_pages_by_id() {
        let mut t = table();
        for i in 0..10 {
            t.begin(0, "m", "u", "", i, None).expect("test");
        }
        let first = t.list(&Filter::default(), None, 4);
        let rest = t.list(&Filter::default(), first.last().map(|c| c.id), 100);
        assert_eq!(first.len() + rest.len(), 10);
        assert!(first.last().expect("test").id < rest[0].id);
    }

    #[test]
    fn a_domains_user_is_not_the_servers_user_of_that_name() {
        let mut t = Table::new(Policy {
            max_per_user: 1,
            ..Policy::default()
        });
        let a = t.begin(0, "m", "joe", "", 1, None).expect("begin");
        t.authenticate(a, 0, "joe", "", LIFE, None)
            .expect("server joe");
        let b = t.begin(0, "m", "joe", "org.acme", 2, None).expect("begin");
        let c = t
            .authenticate(b, 0, "joe", "org.acme", LIFE, None)
            .expect("the domain's joe has its own bound");
        assert_eq!(&*c.domain, "org.acme");
        // A server user named like NAME@DOMAIN is yet another user.
        let d = t.begin(0, "m", "joe@org.acme", "", 3, None).expect("begin");
        t.authenticate(d, 0, "joe@org.acme", "", LIFE, None)
            .expect("its own bound too");
        let server_joe = Filter {
            user: Some("joe".into()),
            ..Filter::default()
        };
        assert_eq!(t.list(&server_joe, None, 10).len(), 1);
        let acme_joe = Filter {
            user: Some("joe".into()),
            domain: Some("org.acme".into()),
            ..Filter::default()
        };
        let gone = t.revoke_where(&acme_joe);
        assert_eq!(gone.len(), 1);
        assert_eq!(gone[0].id, b);
        assert_eq!(t.len(), 2);
        let acme = Filter {
            domain: Some("org.acme".into()),
            ..Filter::default()
        };
        assert!(t.list(&acme, None, 10).is_empty());
        t.revoke_where(&Filter::default());
        assert_eq!(t.domains.len(), 0, "domains are released with their users");
    }
}
