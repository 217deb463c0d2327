//! The server's bouncer: the sans-IO keycard table (`keycard_auth::bouncer`)
//! behind a lock, the clock, the reaper task, and the requesters to tell
//! when a keycard they carry is revoked or expires.
//!
//! A requester is whatever carries keycards (a msgpack connection). The
//! table knows keycards by requester id; this module maps ids to
//! [`KeycardWatcher`]s and, for each keycard that ends, tells its watcher
//! (a connection marks its session, so its next request is refused at
//! once, and wakes its task, which ends the open streams and, for a
//! revocation, closes the connection). It knows no transport.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::Duration;

use keycard_auth::bouncer::{BouncerError, Filter, Keycard, KeycardId, Lifetime, Policy, Table};
use keycard_proto::ErrorCode;

use crate::clock::ClockHandle;
use crate::error::ApiError;

/// How often the reaper looks for expired keycards.
const REAP_EVERY: Duration = Duration::from_millis(100);
/// Most keycards one reaper pass removes (the lock is released between
/// passes).
const REAP_BATCH: usize = 4096;

/// How a keycard stopped working, as its connection learns it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ended {
    /// Its time ran out: requests are refused until a new login.
    Expired,
    /// It was revoked: the connection is closed.
    Revoked,
}

impl Ended {
    /// The error its requests get.
    pub fn error(self) -> ApiError {
        match self {
            Ended::Expired => ApiError::new(
                ErrorCode::KeycardExpired,
                "this connection's keycard has expired; log in again",
            ),
            Ended::Revoked => ApiError::new(
                ErrorCode::KeycardRevoked,
                "this connection's keycard was revoked",
            ),
        }
    }
}

/// A requester that carries keycards, told when one ends. Registered
/// with [`Bouncer::register`] under its requester id; held weakly.
pub trait KeycardWatcher: Send + Sync {
    /// Keycard `id`, which this requester carried, ended (`how`).
    fn ended(&self, id: KeycardId, how: Ended);

    /// The server stopped being open (a method became current): a
    /// requester without a login loses the open era's access.
    fn open_era_ended(&self);
}

/// The keycard table and the requesters that carry its keycards.
pub struct Bouncer {
    table: Mutex<Table>,
    conns: Mutex<HashMap<u64, Weak<dyn KeycardWatcher>>>,
    clock: ClockHandle,
    /// Told the id of every keycard that leaves the table (on a store
    /// other nodes share, which mirrors live keycards).
    ended: std::sync::OnceLock<tokio::sync::mpsc::UnboundedSender<KeycardId>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl From<BouncerError> for ApiError {
    fn from(e: BouncerError) -> ApiError {
        let code = match e {
            BouncerError::Full(_) | BouncerError::UserFull(_) => ErrorCode::TooManyKeycards,
            BouncerError::Unknown => ErrorCode::NotFound,
            BouncerError::Expired => ErrorCode::KeycardExpired,
            BouncerError::WrongState(_) => ErrorCode::BadRequest,
        };
        ApiError::new(code, e.to_string())
    }
}

impl Bouncer {
    /// An empty bouncer, reading the time from `clock`.
    pub fn new(policy: Policy, clock: ClockHandle) -> Bouncer {
        Bouncer {
            table: Mutex::new(Table::new(policy)),
            conns: Mutex::new(HashMap::new()),
            clock,
            ended: std::sync::OnceLock::new(),
        }
    }

    /// From now on, the id of every keycard that leaves the table goes to
    /// `to` (set once).
    pub(crate) fn tell_ended(&self, to: tokio::sync::mpsc::UnboundedSender<KeycardId>) {
        let _ = self.ended.set(to);
    }

    /// Passes on `cards`, which left the table. (Their state says how
    /// they left, not whether they had logged in: the receiver knows
    /// which of them it cares about.)
    fn gone<'a>(&self, cards: impl IntoIterator<Item = &'a Keycard>) {
        if let Some(to) = self.ended.get() {
            for c in cards {
                let _ = to.send(c.id);
            }
        }
    }

    /// The table, locked (for management actions and tests).
    pub fn table(&self) -> MutexGuard<'_, Table> {
        lock(&self.table)
    }

    /// Keycards in the table.
    pub fn len(&self) -> usize {
        self.table().len()
    }

    /// Whether no keycard is live.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Lifetimes for a login, the policy's unless overridden.
    pub fn lifetime(&self) -> Lifetime {
        let t = self.table();
        let p = t.policy();
        Lifetime {
            duration_ms: p.duration_ms,
            max_lifetime_ms: p.max_lifetime_ms,
        }
    }

    /// A requester that may carry keycards, under its id.
    pub(crate) fn register(&self, requester: u64, watcher: Weak<dyn KeycardWatcher>) {
        lock(&self.conns).insert(requester, watcher);
    }

    /// A requester is gone: forget it, and remove the keycard it held.
    pub(crate) fn unregister(&self, requester: u64, held: Option<KeycardId>) {
        lock(&self.conns).remove(&requester);
        if let Some(id) = held {
            let card = self.table().remove(id, requester);
            self.gone(&card);
        }
    }

    /// Starts a login attempt. A full table first loses one batch of what
    /// expired (through `reap`, so the holders are told; the reaper task
    /// does the rest).
    pub fn begin(
        &self,
        method: &str,
        user: &str,
        domain: &str,
        requester: u64,
        addr: Option<IpAddr>,
    ) -> Result<KeycardId, ApiError> {
        let first = self
            .table()
            .begin(self.clock.now_ms(), method, user, domain, requester, addr);
        if let Err(BouncerError::Full(_)) = first {
            self.reap();
            return Ok(self.table().begin(
                self.clock.now_ms(),
                method,
                user,
                domain,
                requester,
                addr,
            )?);
        }
        Ok(first?)
    }

    /// The attempt sent a challenge; returns its deadline.
    pub fn challenged(&self, id: KeycardId) -> Result<u64, ApiError> {
        Ok(self.table().challenged(id, self.clock.now_ms())?)
    }

    /// The challenge deadline of a pending attempt.
    pub fn deadline(&self, id: KeycardId) -> Option<u64> {
        self.table().deadline(id)
    }

    /// The method said yes: the keycard is authenticated.
    pub fn authenticate(
        &self,
        id: KeycardId,
        user: &str,
        domain: &str,
        life: Lifetime,
        parent: Option<KeycardId>,
    ) -> Result<Keycard, BouncerError> {
        self.table()
            .authenticate(id, self.clock.now_ms(), user, domain, life, parent)
    }

    /// The attempt failed or was abandoned.
    pub fn refuse(&self, id: KeycardId) {
        self.table().refuse(id);
    }

    /// Extends the requester's own keycard.
    pub fn keep_alive(
        &self,
        id: KeycardId,
        requester: u64,
        ttl_ms: Option<u64>,
    ) -> Result<u64, ApiError> {
        Ok(self
            .table()
            .keep_alive(id, requester, self.clock.now_ms(), ttl_ms)?)
    }

    /// Removes the requester's own keycard (logout, a new login).
    pub fn remove(&self, id: KeycardId, requester: u64) -> Option<Keycard> {
        let card = self.table().remove(id, requester);
        self.gone(&card);
        card
    }

    /// Revokes one keycard and tells its requester.
    pub fn revoke(&self, id: KeycardId) -> Option<Keycard> {
        let card = self.table().revoke(id)?;
        self.tell(std::slice::from_ref(&card), Ended::Revoked);
        Some(card)
    }

    /// Revokes keycard `id` if `still` holds for it (checked under the
    /// table's lock, so what the caller checked is what goes), and tells
    /// its requester.
    pub fn revoke_if(
        &self,
        id: KeycardId,
        still: impl FnOnce(&Keycard) -> bool,
    ) -> Option<Keycard> {
        let card = {
            let mut t = self.table();
            if !still(&t.show(id)?) {
                return None;
            }
            t.revoke(id)?
        };
        self.tell(std::slice::from_ref(&card), Ended::Revoked);
        Some(card)
    }

    /// Revokes every keycard matching `filter` and tells their requesters.
    pub fn revoke_where(&self, filter: &Filter) -> Vec<Keycard> {
        let cards = self.table().revoke_where(filter);
        self.tell(&cards, Ended::Revoked);
        cards
    }

    /// The server stopped being open: every requester is told (one that
    /// is not logged in loses the open era's access; see
    /// [`KeycardWatcher::open_era_ended`]).
    pub(crate) fn end_open_era(&self) {
        let watchers: Vec<Arc<dyn KeycardWatcher>> = lock(&self.conns)
            .values()
            .filter_map(Weak::upgrade)
            .collect();
        for w in watchers {
            w.open_era_ended();
        }
    }

    /// Tells the watchers of `cards` that they ended.
    fn tell(&self, cards: &[Keycard], how: Ended) {
        if cards.is_empty() {
            return;
        }
        self.gone(cards);
        let conns: Vec<(KeycardId, Arc<dyn KeycardWatcher>)> = {
            let map = lock(&self.conns);
            cards
                .iter()
                .filter_map(|c| map.get(&c.requester)?.upgrade().map(|conn| (c.id, conn)))
                .collect()
        };
        for (id, conn) in conns {
            conn.ended(id, how);
        }
    }

    /// One reaper pass: removes what expired and tells the requesters.
    /// Returns how many went.
    pub fn reap(&self) -> usize {
        let cards = self.table().reap(self.clock.now_ms(), REAP_BATCH);
        self.tell(&cards, Ended::Expired);
        cards.len()
    }

    /// Runs the reaper until the bouncer is dropped.
    pub fn spawn_reaper(self: &Arc<Self>) {
        let weak = Arc::downgrade(self);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(REAP_EVERY);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let Some(b) = weak.upgrade() else { return };
                while b.reap() == REAP_BATCH {
                    tokio::task::yield_now().await;
                }
            }
        });
    }
}
