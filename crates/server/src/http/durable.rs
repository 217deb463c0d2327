//! REST sessions kept across a restart (docs/SEALING.md): each one is a
//! record at `(nil, "session", SID)` — its user and grants, its keycard's
//! times, its key — which the seal stores sealed. It is written before
//! the login's `303` goes out and after each keep-alive, and deleted when
//! the session ends (logout awaits the delete; a revocation or an expiry
//! reaches it through the bouncer, which tells the REST front end as the
//! session's requester). At start the records are read back: each live
//! one's keycard goes back into the table under its own id, with a new
//! requester id, and its replay guard admits only requests signed from
//! then on (the nonces it had seen are gone).

use std::sync::Arc;

use keycard_auth::bouncer::{KeycardId, Restored};
use keycard_auth::signed::ReplayGuard;
use keycard_auth::SecretKey;
use keycard_proto::{Elem, Msg, Path, Value};
use keycard_store::{Op, ScanOpts};

use super::{lock, Rest, Session};
use crate::bouncer::{Ended, KeycardWatcher};
use crate::caller::{Capability, LoggedIn};
use crate::error::ApiError;

/// `(nil, "session")`.
fn root() -> Path {
    Path::new(vec![Elem::Nil, "session".into()])
}

/// `(nil, "session", SID)`.
fn path(id: KeycardId) -> Path {
    crate::state::session_path(id)
}

/// A session's record.
fn record(s: &Session, max_until: u64, user_tock: u64) -> Value {
    let u = &s.user;
    let acls = match &u.acls {
        None => Value::Nil,
        Some(a) => Value::Array(a.iter().map(|n| Value::from(n.as_str())).collect()),
    };
    Msg::new()
        .with("user", u.name.as_str())
        .with("method", u.method.as_str())
        .with("super_root", u.super_root)
        .with("acls", acls)
        .with(
            "caps",
            Value::Array(u.caps.iter().map(|c| Value::from(c.name())).collect()),
        )
        .with("domain", u.domain.to_value())
        .with("record", u.record.to_value())
        .with("record_tock", user_tock)
        .with("login_at", u.login_at)
        .with("expires_at", u.expires_at)
        .with("max_until", max_until)
        .with("duration_ms", s.duration_ms)
        .with("ahead", s.ahead)
        .with("key", s.key.expose().to_vec())
        .with("last", s.last.clone().unwrap_or(Value::Nil))
        .into_value()
}

/// A record read back: the session, and its keycard's times.
fn parse(id: KeycardId, v: &Value) -> Option<(Session, u64, u64)> {
    let text = |k: &str| v.get(k).and_then(Value::as_str).map(str::to_owned);
    let num = |k: &str| v.get(k).and_then(Value::as_u64);
    let key: [u8; 32] = v.get("key")?.as_bin()?.try_into().ok()?;
    let acls = match v.get("acls")? {
        Value::Nil => None,
        Value::Array(a) => Some(
            a.iter()
                .map(|n| n.as_str().map(str::to_owned))
                .collect::<Option<Vec<_>>>()?,
        ),
        _ => return None,
    };
    let caps = match v.get("caps")? {
        Value::Array(a) => a
            .iter()
            .map(|c| c.as_str().and_then(Capability::parse))
            .collect::<Option<Vec<_>>>()?,
        _ => return None,
    };
    let key = SecretKey::new(key);
    let user = LoggedIn {
        method: text("method")?,
        name: text("user")?,
        super_root: v.get("super_root")?.as_bool()?,
        session_key: Some(key.clone()),
        acls,
        caps,
        domain: Path::from_value(v.get("domain")?).ok()?,
        record: Path::from_value(v.get("record")?).ok()?,
        login_at: num("login_at")?,
        keycard: id,
        expires_at: num("expires_at")?,
        ended: None,
    };
    let last = match v.get("last") {
        None | Some(Value::Nil) => None,
        Some(l) => Some(l.clone()),
    };
    let session = Session {
        user: Arc::new(user),
        key,
        last,
        // Set by the caller (the window is the server's).
        guard: ReplayGuard::new(0, 0),
        requester: 0,
        duration_ms: num("duration_ms")?,
        ahead: num("ahead").unwrap_or(0),
    };
    Some((session, num("max_until")?, num("record_tock")?))
}

impl Rest {
    /// Writes session `id`'s record (after its login or a keep-alive).
    pub(super) async fn persist(&self, id: KeycardId) -> Result<(), ApiError> {
        if !self.state.keeps_sessions() {
            return Ok(());
        }
        let card = self.state.bouncer.table().show(id);
        let Some(card) = card else {
            return Ok(());
        };
        // The user record as it is now: a session whose user's record has
        // changed (a new credential, a deletion) does not come back.
        let record_at = match lock(&self.sessions).get(&id) {
            Some(s) => s.user.record.clone(),
            None => return Ok(()),
        };
        let user_tock = match self.state.store.get(&record_at).await? {
            Some(e) => e.tock.0,
            None => return Ok(()),
        };
        let value = {
            let mut sessions = lock(&self.sessions);
            let Some(s) = sessions.get_mut(&id) else {
                return Ok(());
            };
            if s.user.expires_at != card.expires_at {
                Arc::make_mut(&mut s.user).expires_at = card.expires_at;
            }
            record(s, card.max_until, user_tock)
        };
        self.state
            .store
            .write(vec![Op::put(path(id), value)])
            .await?;
        // Ended while the record was being written (a logout, a
        // revocation): it must not outlive the session.
        if self.state.bouncer.table().show(id).is_none() {
            self.forget(id).await?;
        }
        Ok(())
    }

    /// Deletes session `id`'s record.
    pub(super) async fn forget(&self, id: KeycardId) -> Result<(), ApiError> {
        self.state.store.write(vec![Op::delete(path(id))]).await?;
        Ok(())
    }

    /// Reads the kept sessions back into the bouncer's table and the
    /// sessions map (at start); deletes those that have ended or do not
    /// read. Returns how many came back.
    pub(super) async fn restore(self: &Arc<Self>) -> Result<usize, ApiError> {
        let at = root();
        let one_level = ScanOpts {
            min_depth: 1,
            max_depth: Some(1),
        };
        let now = self.state.now_ms();
        let window = self.state.config.http_signature_window;
        let nonces = self.state.config.http_session_nonces;
        let mut stale = Vec::new();
        let mut back = 0;
        let mut cursor = None;
        loop {
            let after = cursor
                .as_ref()
                .map_or(keycard_store::After::Start, keycard_store::After::Cursor);
            let page = self.state.store.scan(&at, one_level, after, 512).await?;
            for (p, e) in &page.items {
                let id = match p.elems().last() {
                    Some(Elem::Str(s)) => KeycardId::parse(s),
                    _ => None,
                };
                let parsed = id.and_then(|id| parse(id, &e.value).map(|s| (id, s)));
                let Some((id, (mut session, max_until, user_tock))) = parsed else {
                    tracing::warn!(path = %p, "a kept REST session does not read; deleted");
                    stale.push(Op::delete(p.clone()));
                    continue;
                };
                // The user's record must be the one the session knew.
                let now_tock = self.state.store.get(&session.user.record).await?;
                if now_tock.map(|e| e.tock.0) != Some(user_tock) {
                    stale.push(Op::delete(p.clone()));
                    continue;
                }
                let requester = self.state.next_conn_id();
                let u = &session.user;
                let restored = Restored {
                    id,
                    method: &u.method,
                    user: &u.name,
                    domain: &crate::caller::domain_text(&u.domain),
                    issued_at: u.login_at,
                    expires_at: u.expires_at,
                    max_until,
                    duration_ms: session.duration_ms,
                };
                let put_back = self
                    .state
                    .bouncer
                    .table()
                    .restore(now, &restored, requester);
                if put_back.is_err() {
                    stale.push(Op::delete(p.clone()));
                    continue;
                }
                // On a shared store: listed on every node again, unless it
                // was revoked through another node meanwhile.
                let card = self.state.bouncer.table().show(id);
                if let Some(card) = card {
                    if !crate::core::cluster::mirror_again(&self.state, &card).await? {
                        self.state.bouncer.revoke(id);
                        stale.push(Op::delete(p.clone()));
                        continue;
                    }
                }
                session.requester = requester;
                // Requests signed before now may have been seen.
                // And nothing at or before a `ts` it admitted ahead of the
                // clock, which was kept before its request ran.
                let floor = (now / 1000 + 1).max(session.ahead.saturating_add(1));
                session.guard = ReplayGuard::new(window, nonces).since(floor);
                let watcher: std::sync::Weak<dyn KeycardWatcher> = self.me.clone();
                self.state.bouncer.register(requester, watcher);
                lock(&self.sessions).insert(id, session);
                back += 1;
            }
            match page.next {
                Some(next) => cursor = Some(next),
                None => break,
            }
        }
        if !stale.is_empty() {
            self.state.store.write(stale).await?;
        }
        Ok(back)
    }
}

/// The bouncer tells the REST front end when a session's keycard ends
/// (revoked, expired): the session goes, and so does its record.
impl KeycardWatcher for Rest {
    fn ended(&self, id: KeycardId, _how: Ended) {
        let gone = lock(&self.sessions).remove(&id);
        if let Some(s) = &gone {
            self.state.bouncer.unregister(s.requester, None);
        }
        if !self.state.keeps_sessions() {
            return;
        }
        let store = self.state.store.clone();
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(async move {
                if let Err(e) = store.write(vec![Op::delete(path(id))]).await {
                    tracing::error!(keycard = %id, error = %e, "a REST session's record was not deleted");
                }
            });
        }
    }

    fn open_era_ended(&self) {}
}
