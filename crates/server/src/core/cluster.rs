//! Several nodes on one store (PostgreSQL): the keycards every node
//! sees, and what a node learns from the others' writes.
//!
//! - **Live keycards are mirrored** at `(nil, "live", ID)` → `{node,
//!   instance, user, domain, method, parent?, issued_at, expires_at,
//!   max_until}`: written before a login is answered (a login whose
//!   record cannot be written fails), deleted, in batches, once the
//!   keycard has left this node's table. So any node lists, shows and
//!   revokes any node's keycards.
//! - **A revocation of a keycard another node holds** adds `revoked_by`
//!   and `revoked_at` to its record, on the condition that the record is
//!   still the one read (the outrank check was made against it). The
//!   holder's follower sees that change, revokes the keycard in its own
//!   table — its connection is closed, the revocation audited there —
//!   and the keycard's end deletes the record.
//! - **The follower** reads this node's feed of the store (every node's
//!   writes, in tock order) and applies what other nodes change to what
//!   this node holds: the compiled ACLs after an edit under `(nil,
//!   "acl")`, the auth configuration after `(nil, "auth")`, revocations
//!   of this node's keycards, and the sessions of a token revoked
//!   elsewhere. A follower that fell behind the log's history
//!   re-reads what it caches and the revocations of its keycards.
//!
//! On a store no other node shares, none of this runs: the node's own
//! writes already keep its caches.

use std::sync::{Arc, Weak};
use std::time::Duration;

use keycard_auth::bouncer::{Filter, Keycard, KeycardId, State};
use keycard_proto::{Elem, Msg, Path, Value};
use keycard_store::{Change, Cond, FeedError, Op, ScanOpts, StoreError, Subscription, Tock};

use crate::error::ApiResult;
use crate::state::ServerState;

/// `(nil, "live")`.
pub(crate) fn live_root() -> Path {
    Path::new(vec![Elem::Nil, "live".into()])
}

/// `(nil, "live", ID)`: a live keycard, as every node sees it.
pub(crate) fn live_path(id: KeycardId) -> Path {
    live_root().child(id.to_string().as_str())
}

/// Most ended keycards whose records one write deletes.
const DELETE_BATCH: usize = 512;

/// The record of `card`, held by this node.
fn record(state: &ServerState, card: &Keycard) -> Value {
    let mut m = Msg::new()
        .with("node", state.config.node.as_str())
        .with("instance", state.instance.as_str())
        .with("user", &*card.user)
        .with("domain", &*card.domain)
        .with("method", &*card.method)
        .with("issued_at", card.issued_at)
        .with("expires_at", card.expires_at)
        .with("max_until", card.max_until);
    if let Some(p) = card.parent {
        m.set("parent", p.to_string().as_str());
    }
    m.into_value()
}

/// Mirrors a keycard just authenticated here, before the login is
/// answered (only on a shared store).
pub(crate) async fn mirror(state: &ServerState, card: &Keycard) -> ApiResult {
    if !state.shared_store() {
        return Ok(());
    }
    // Known before it is written: an end that comes at once deletes it.
    mirrored(state).insert(card.id);
    let written = state
        .store
        .write(vec![Op::Put {
            path: live_path(card.id),
            value: record(state, card),
            cond: Cond::Absent,
            idem: false,
        }])
        .await;
    if let Err(e) = written {
        mirrored(state).remove(&card.id);
        return Err(e.into());
    }
    Ok(())
}

fn mirrored(
    state: &ServerState,
) -> std::sync::MutexGuard<'_, std::collections::HashSet<KeycardId>> {
    state.mirrored.lock().unwrap_or_else(|e| e.into_inner())
}

/// A keycard kept across this node's restart (a REST session) is live
/// here again: its record says so, unless another node revoked it while
/// this one was away — then `false`, and the caller ends it.
pub(crate) async fn mirror_again(state: &ServerState, card: &Keycard) -> ApiResult<bool> {
    if !state.shared_store() {
        return Ok(true);
    }
    let path = live_path(card.id);
    let cond = match state.store.get(&path).await? {
        Some(e) if e.value.get("revoked_by").is_some() => return Ok(false),
        Some(e) => Cond::TockIs(e.tock),
        None => Cond::Absent,
    };
    mirrored(state).insert(card.id);
    let written = state
        .store
        .write(vec![Op::Put {
            path,
            value: record(state, card),
            cond,
            idem: false,
        }])
        .await;
    match written {
        Ok(_) => Ok(true),
        // Changed meanwhile: revoked, most likely.
        Err(StoreError::Conflict { .. }) => Ok(false),
        Err(e) => Err(e.into()),
    }
}

/// A mirrored keycard another node holds.
#[derive(Clone, Debug)]
pub(crate) struct Elsewhere {
    pub id: KeycardId,
    pub record: Value,
    pub tock: Tock,
}

impl Elsewhere {
    /// Its owner: user, domain and method.
    pub(crate) fn owner(&self) -> Option<(String, String, String)> {
        let r = &self.record;
        Some((
            r.get("user").and_then(Value::as_str)?.to_owned(),
            r.get("domain").and_then(Value::as_str)?.to_owned(),
            r.get("method").and_then(Value::as_str)?.to_owned(),
        ))
    }

    /// The keycard as a listing shows it (its requester is the holder's:
    /// 0 here).
    pub(crate) fn card(&self) -> Option<Keycard> {
        let (user, domain, method) = self.owner()?;
        let r = &self.record;
        let at = |k: &str| r.get(k).and_then(Value::as_u64).unwrap_or(0);
        Some(Keycard {
            id: self.id,
            method: method.into(),
            user: user.into(),
            domain: domain.into(),
            requester: 0,
            addr: None,
            parent: r
                .get("parent")
                .and_then(Value::as_str)
                .and_then(KeycardId::parse),
            state: State::Authenticated,
            issued_at: at("issued_at"),
            expires_at: at("expires_at"),
            max_until: at("max_until"),
            last_keepalive: 0,
        })
    }

    fn matches(&self, f: &Filter) -> bool {
        let Some((user, domain, method)) = self.owner() else {
            return false;
        };
        // As in the live table: a user without a domain is one of the
        // server's own.
        let in_domain = match (&f.domain, &f.user) {
            (Some(d), _) => *d == domain,
            (None, Some(_)) => domain.is_empty(),
            (None, None) => true,
        };
        let parent = self
            .record
            .get("parent")
            .and_then(Value::as_str)
            .and_then(KeycardId::parse);
        in_domain
            && f.user.as_deref().is_none_or(|u| u == user)
            && f.method.as_deref().is_none_or(|m| m == method)
            && f.parent.is_none_or(|p| Some(p) == parent)
    }
}

fn elsewhere_of(state: &ServerState, path: &Path, e: keycard_store::Entry) -> Option<Elsewhere> {
    let id = match path.elems().last() {
        Some(Elem::Str(s)) => KeycardId::parse(s)?,
        _ => return None,
    };
    let v = &e.value;
    if v.get("instance").and_then(Value::as_str) == Some(state.instance.as_str())
        || v.get("revoked_by").is_some()
    {
        return None;
    }
    Some(Elsewhere {
        id,
        record: e.value,
        tock: e.tock,
    })
}

/// The keycard `id` if another node holds it (and it is not revoked).
pub(crate) async fn find(state: &ServerState, id: KeycardId) -> ApiResult<Option<Elsewhere>> {
    if !state.shared_store() {
        return Ok(None);
    }
    let path = live_path(id);
    Ok(state
        .store
        .get(&path)
        .await?
        .and_then(|e| elsewhere_of(state, &path, e)))
}

/// The keycards other nodes hold that `f` matches (none for a requester:
/// requesters are one node's connections).
pub(crate) async fn matching(state: &ServerState, f: &Filter) -> ApiResult<Vec<Elsewhere>> {
    if !state.shared_store() || f.requester.is_some() {
        return Ok(Vec::new());
    }
    let mut out = Vec::new();
    crate::state::each_child(state.store.as_ref(), &live_root(), |p, e| {
        if let Some(c) = elsewhere_of(state, &p, e).filter(|c| c.matches(f)) {
            out.push(c);
        }
        true
    })
    .await?;
    Ok(out)
}

/// Revokes a keycard another node holds: its record says so (if it is
/// still the record read), and the holder ends it. Returns 1 if this
/// call revoked it.
pub(crate) async fn revoke(
    state: &ServerState,
    card: &Elsewhere,
    by: Option<&str>,
) -> ApiResult<usize> {
    let mut v = card.record.clone();
    if let Value::Map(m) = &mut v {
        m.push(("revoked_by".into(), Value::from(by)));
        m.push(("revoked_at".into(), state.now_ms().into()));
    }
    let written = state
        .store
        .write(vec![Op::Put {
            path: live_path(card.id),
            value: v,
            cond: Cond::TockIs(card.tock),
            idem: false,
        }])
        .await;
    match written {
        Ok(_) => {
            let user = card.owner().map(|o| o.0).unwrap_or_default();
            let node = card
                .record
                .get("node")
                .and_then(Value::as_str)
                .unwrap_or("");
            tracing::info!(target: "keycard::audit", keycard = %card.id, user = ?user, node = ?node, by = ?by.unwrap_or(""), "keycard revoked on another node");
            Ok(1)
        }
        // Ended or revoked meanwhile.
        Err(StoreError::Conflict { .. }) => Ok(0),
        Err(e) => Err(e.into()),
    }
}

/// `(nil, "lease", JOB)` → `{instance, node, until}`: who runs JOB.
fn lease_path(job: &str) -> Path {
    Path::new(vec![Elem::Nil, "lease".into(), job.into()])
}

/// `(nil, "node", INSTANCE)` → `{node, at}`: a node's last sign of life.
fn beat_path(instance: &str) -> Path {
    Path::new(vec![Elem::Nil, "node".into(), instance.into()])
}

/// How often a node says it is alive, and renews the leases it holds.
const BEAT: Duration = Duration::from_secs(5);

/// A node silent this long is taken for dead: its keycards' records go.
const DEAD_AFTER_MS: u64 = 30_000;

/// Whether this node may run `job` now, which must run on one node at a
/// time: it takes (or renews) the lease for `for_ms`, unless another node
/// holds one that has not run out. On a store no other node shares,
/// always.
pub(crate) async fn lease(state: &ServerState, job: &str, for_ms: u64) -> ApiResult<bool> {
    if !state.shared_store() {
        return Ok(true);
    }
    let path = lease_path(job);
    let now = state.now_ms();
    let held = Msg::new()
        .with("instance", state.instance.as_str())
        .with("node", state.config.node.as_str())
        .with("until", now.saturating_add(for_ms))
        .into_value();
    let cond = match state.store.get(&path).await? {
        None => Cond::Absent,
        Some(e) => {
            let mine =
                e.value.get("instance").and_then(Value::as_str) == Some(state.instance.as_str());
            let over = e
                .value
                .get("until")
                .and_then(Value::as_u64)
                .is_none_or(|t| t <= now);
            if !mine && !over {
                return Ok(false);
            }
            Cond::TockIs(e.tock)
        }
    };
    let took = state
        .store
        .write(vec![Op::Put {
            path,
            value: held,
            cond,
            idem: false,
        }])
        .await;
    match took {
        Ok(_) => Ok(true),
        // Another node took it first.
        Err(StoreError::Conflict { .. }) => Ok(false),
        Err(e) => Err(e.into()),
    }
}

/// Starts the follower, the deleter of ended keycards' records and the
/// heartbeat with its housekeeping, on a shared store.
pub(crate) fn spawn(state: &Arc<ServerState>) {
    if !state.shared_store() {
        return;
    }
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    state.bouncer.tell_ended(tx);
    tokio::spawn(delete_ended(Arc::downgrade(state), rx));
    let sub = state.store.subscribe();
    tokio::spawn(follow(Arc::downgrade(state), sub));
    tokio::spawn(beat(Arc::downgrade(state)));
}

/// Says this node is alive every [`BEAT`]; the node holding the `live`
/// lease also deletes the records of keycards whose node went silent or
/// whose time is up (a node killed leaves its records behind).
async fn beat(state: Weak<ServerState>) {
    let mut tick = tokio::time::interval(BEAT);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let Some(s) = state.upgrade() else { return };
        let me = Msg::new()
            .with("node", s.config.node.as_str())
            .with("at", s.now_ms())
            .into_value();
        if let Err(e) = s
            .store
            .write(vec![Op::put(beat_path(&s.instance), me)])
            .await
        {
            tracing::warn!(error = %e, "this node's heartbeat was not written");
            continue;
        }
        match lease(&s, "live", 3 * BEAT.as_millis() as u64).await {
            Ok(true) => {
                if let Err(e) = sweep(&s).await {
                    tracing::warn!(error = %e.text, "sweeping other nodes' keycards failed");
                }
            }
            Ok(false) => {}
            Err(e) => tracing::warn!(error = %e.text, "the housekeeping lease could not be read"),
        }
    }
}

/// Deletes the records of keycards past their latest possible end, or of
/// nodes silent for [`DEAD_AFTER_MS`], and those nodes' heartbeats and
/// throttle counters.
async fn sweep(state: &ServerState) -> ApiResult {
    let now = state.now_ms();
    let opts = ScanOpts {
        min_depth: 1,
        max_depth: Some(1),
    };
    let node_root = Path::new(vec![Elem::Nil, "node".into()]);
    let mut alive = std::collections::HashSet::new();
    let mut ops = Vec::new();
    for (p, e) in state.store.scan_up_to(&node_root, opts, 100_000).await? {
        let at = e.value.get("at").and_then(Value::as_u64).unwrap_or(0);
        match (p.elems().last(), now.saturating_sub(at) < DEAD_AFTER_MS) {
            (Some(Elem::Str(i)), true) => {
                alive.insert(i.to_string());
            }
            (dead, _) => {
                // A dead node's throttle counters go with it.
                if let Some(Elem::Str(i)) = dead {
                    let root = crate::throttle::shared_root().child(i.as_str());
                    for (q, _) in state
                        .store
                        .scan_up_to(&root, Default::default(), 100_000)
                        .await?
                    {
                        ops.push(Op::delete(q));
                    }
                }
                ops.push(Op::Delete {
                    path: p,
                    cond: Cond::TockIs(e.tock),
                })
            }
        }
    }
    crate::state::each_child(state.store.as_ref(), &live_root(), |p, e| {
        let v = &e.value;
        let owner_alive = v
            .get("instance")
            .and_then(Value::as_str)
            .is_some_and(|i| alive.contains(i));
        let over = v
            .get("max_until")
            .and_then(Value::as_u64)
            .is_some_and(|t| t <= now);
        if !owner_alive || over {
            ops.push(Op::Delete {
                path: p,
                cond: Cond::TockIs(e.tock),
            });
        }
        true
    })
    .await?;
    // One by one: a record changed meanwhile stays (its condition fails
    // alone).
    for op in ops {
        match state.store.write(vec![op]).await {
            Ok(_) | Err(StoreError::Conflict { .. }) => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

/// Deletes the records of keycards that ended here, in batches; a failed
/// batch is tried again (the database may be away). Of the keycards that
/// end, only those whose records were written are deleted (an attempt
/// that never logged in has none).
async fn delete_ended(
    state: Weak<ServerState>,
    mut rx: tokio::sync::mpsc::UnboundedReceiver<KeycardId>,
) {
    let mut batch: Vec<KeycardId> = Vec::new();
    loop {
        let mut ended = Vec::new();
        if batch.is_empty() {
            match rx.recv().await {
                Some(id) => ended.push(id),
                None => return,
            }
        }
        while ended.len() < DELETE_BATCH {
            match rx.try_recv() {
                Ok(id) => ended.push(id),
                Err(_) => break,
            }
        }
        let Some(s) = state.upgrade() else { return };
        {
            let mut known = mirrored(&s);
            batch.extend(ended.into_iter().filter(|id| known.remove(id)));
        }
        if batch.is_empty() {
            continue;
        }
        let ops = batch.iter().map(|id| Op::delete(live_path(*id))).collect();
        match s.store.write(ops).await {
            Ok(_) => batch.clear(),
            Err(e) => {
                tracing::warn!(error = %e, keycards = batch.len(), "ended keycards' records not deleted yet; trying again");
                drop(s);
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
    }
}

/// Applies other nodes' changes, in tock order, as they come.
async fn follow(state: Weak<ServerState>, mut sub: Subscription) {
    loop {
        let got = sub.recv().await;
        let Some(s) = state.upgrade() else { return };
        match got {
            Ok(c) => apply(&s, &c).await,
            Err(FeedError::Lagged) => catch_up(&s, &mut sub).await,
            Err(FeedError::Closed) => return,
        }
    }
}

/// Reads what the feed no longer holds from the change log; when the log
/// no longer holds it either, re-reads everything that matters.
async fn catch_up(state: &ServerState, sub: &mut Subscription) {
    loop {
        match state.store.changes_since(sub.after(), 1024).await {
            Ok(batch) if batch.is_empty() => return,
            Ok(batch) => {
                for c in batch {
                    apply(state, &c).await;
                    sub.resume_after(c.tock);
                }
            }
            Err(StoreError::HistoryGone { .. }) => {
                let now = state.store.tock();
                tracing::warn!(
                    "the follower fell behind the change log: re-reading what it caches"
                );
                state.acls.invalidate();
                let _ = super::auth::refresh_auth(state, || {}).await;
                recheck(state).await;
                sub.resume_after(now);
                return;
            }
            Err(e) => {
                tracing::warn!(error = %e, "the follower cannot read the change log; trying again");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
}

/// Ends the keycards of this node whose records were revoked or deleted
/// by another node (after the follower missed the changes).
async fn recheck(state: &ServerState) {
    let live = state
        .bouncer
        .table()
        .list(&Filter::default(), None, usize::MAX);
    for card in live.into_iter().filter(|c| c.state == State::Authenticated) {
        match state.store.get(&live_path(card.id)).await {
            Ok(Some(e)) if e.value.get("revoked_by").is_none() => {}
            Ok(found) => {
                let by = found
                    .as_ref()
                    .and_then(|e| e.value.get("revoked_by"))
                    .and_then(Value::as_str)
                    .map(str::to_owned);
                if let Some(c) = state.bouncer.revoke(card.id) {
                    state.keycard_revoked(&c, by.as_deref()).await;
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "a keycard's record could not be checked");
                return;
            }
        }
    }
}

/// One change, as this node must see it.
async fn apply(state: &ServerState, c: &Change) {
    let e = c.path.elems();
    let Some(nil) = e.iter().position(|x| matches!(x, Elem::Nil)) else {
        return;
    };
    let Some(Elem::Str(kind)) = e.get(nil + 1) else {
        return;
    };
    match (kind.as_ref(), nil, e.len() - nil) {
        // Any domain's ACLs too: the cache holds them all.
        ("acl", _, _) => state.acls.invalidate(),
        // Another node's login throttle counters.
        ("throttles", 0, _) => state.throttle.remote(&c.path, c.value.as_ref()),
        ("auth", 0, 2) => {
            if let Err(e) = super::auth::refresh_auth(state, || {}).await {
                tracing::warn!(error = %e.text, "the auth configuration could not be re-read");
            }
        }
        ("live", 0, 3) => {
            let Some(v) = &c.value else { return };
            let (Some(Elem::Str(id)), Some(by)) = (e.get(2), v.get("revoked_by")) else {
                return;
            };
            if v.get("instance").and_then(Value::as_str) != Some(state.instance.as_str()) {
                return;
            }
            let Some(id) = KeycardId::parse(id) else {
                return;
            };
            if let Some(card) = state.bouncer.revoke(id) {
                state.keycard_revoked(&card, by.as_str()).await;
            }
        }
        ("keycard", 0, 3) => {
            // A token revoked (on any node): its sessions here end.
            let revoked = c
                .value
                .as_ref()
                .and_then(|v| v.get("state"))
                .and_then(Value::as_str)
                == Some(State::Revoked.name());
            let Some(Elem::Str(id)) = e.get(2) else {
                return;
            };
            let Some(id) = KeycardId::parse(id) else {
                return;
            };
            if revoked {
                let by = c
                    .value
                    .as_ref()
                    .and_then(|v| v.get("revoked_by"))
                    .and_then(Value::as_str);
                for card in state.bouncer.revoke_where(&Filter {
                    parent: Some(id),
                    ..Filter::default()
                }) {
                    state.keycard_revoked(&card, by).await;
                }
            }
        }
        _ => {}
    }
}
