//! User management by name, across methods (REST's `/user/{name}`,
//! msgpack's `auth_set`/`auth_delete`): create a user with a credential,
//! set a credential, delete one, and the guards every change to a user
//! passes (its name's turn, the outrank rule, a recent login for one's
//! own credential), and showing a user (what each record shows, its
//! bindings and last logins; the adapters encode it).
//!
//! A user is a name with one record per method
//! (`(…, "auth", METHOD, "user", NAME)`) and the aux nodes below each
//! record ([`AUX`]). Credentials arrive as the method's own registration
//! messages (a SCRAM verifier, OPAQUE's registration request and upload),
//! so the password never travels. A multi-step registration is run
//! statelessly: the client sends every message it has so far, the server
//! replays the (deterministic) exchange and either stores the record or
//! answers the next message to compute.

use keycard_auth::bouncer::{Filter, KeycardId};
use keycard_auth::{AuthError, Kind, LoginCtx, Method, Step};
use keycard_proto::{ErrorCode, Msg, Path, Value};

use crate::logins::Mark;
use keycard_store::{Cond, Op};

use super::access::{check_cap, check_login};
use super::guard::write_guarded;
use super::rank::Rank;
use crate::caller::{domain_text, Caller, Capability};
use crate::error::{ApiError, ApiResult};
use crate::state::{auth_root, record_path, ServerState};

/// Longest user name, in bytes. Names key throttle counters and records:
/// a longer one is refused before anything is stored.
pub(crate) const MAX_USER_NAME: usize = 256;

/// `name`, if it is an acceptable user name (at most [`MAX_USER_NAME`]
/// bytes). The same rule for every name, known or not, so it reveals
/// nothing.
pub(crate) fn user_name(name: &str) -> ApiResult<&str> {
    if name.len() > MAX_USER_NAME {
        return Err(ApiError::bad(format!(
            "user names are at most {MAX_USER_NAME} bytes"
        )));
    }
    Ok(name)
}

/// The error a client gets for a failed exchange.
pub(crate) fn auth_error(e: AuthError) -> ApiError {
    match e {
        // A refusal's reason is for the audit log only.
        AuthError::Failed | AuthError::Refused(_) => {
            ApiError::new(ErrorCode::AuthFailed, "login failed")
        }
        AuthError::Malformed(t) => ApiError::bad(t),
        AuthError::Unsupported(t) => ApiError::bad(t),
    }
}

/// The nodes below a user record that belong to it, deleted with it.
pub(crate) const AUX: [&str; 6] = ["acl", "caps", "factors", "groups", "keycard", "logins"];

/// The aux nodes a record added to an existing user takes from the user's
/// other record: what the user may do, and the further factors it must
/// pass, do not depend on how it logs in.
const BINDINGS: [&str; 5] = ["acl", "caps", "factors", "groups", "keycard"];

/// Most messages a registration may take.
const MAX_MESSAGES: usize = 4;

pub(crate) fn no_such_user() -> ApiError {
    ApiError::new(ErrorCode::NotFound, "no such user")
}

/// The session's user, if user `name` under the session's root is it
/// (by any method: the same name in the same domain).
pub(crate) fn me<'a>(session: &'a Caller, name: &str) -> Option<&'a crate::caller::LoggedIn> {
    session
        .user
        .as_deref()
        .filter(|u| u.is_named(name, &session.root))
}

pub(crate) fn user_kind(m: &dyn Method) -> ApiResult<&'static Kind> {
    m.kinds().iter().find(|k| k.name == "user").ok_or_else(|| {
        ApiError::new(
            ErrorCode::AuthMethod,
            format!("method {} has no users", m.name()),
        )
    })
}

/// `name`'s records under `session`'s root: (method, record path, value).
pub(crate) async fn records(
    state: &ServerState,
    session: &Caller,
    name: &str,
) -> ApiResult<Vec<(&'static str, Path, Value)>> {
    let mut out = Vec::new();
    for m in state.methods.names() {
        let at = session.root.join(&record_path(m, "user", name));
        if let Some(e) = state.store.get(&at).await? {
            out.push((m, at, e.value));
        }
    }
    Ok(out)
}

/// Refuses unless `session` outranks the user whose records are `found`
/// (DESIGN §7.10, [`super::rank`]): a user-admin cannot take over, or
/// delete, a user who may do more than it, or reach more data.
async fn check_outranks(
    state: &ServerState,
    session: &Caller,
    found: &[(&'static str, Path, Value)],
) -> ApiResult {
    let records: Vec<(&str, Path)> = found.iter().map(|(m, at, _)| (*m, at.clone())).collect();
    let rank = Rank::of_records(state, &session.root, &records).await?;
    super::rank::check(state, session, rank.as_ref())
}

/// Revokes `name`'s keycards under `root` (its tokens and their sessions
/// too with `tokens`), but not `keep` (the caller's own); returns how
/// many.
async fn revoke_user(
    state: &ServerState,
    root: &Path,
    name: &str,
    keep: Option<KeycardId>,
    tokens: bool,
    by: Option<&str>,
) -> ApiResult<usize> {
    let filter = Filter {
        user: Some(name.to_owned()),
        domain: (!root.is_empty()).then(|| domain_text(root)),
        ..Filter::default()
    };
    if tokens {
        return super::keycards::revoke_matching(state, &filter, by).await;
    }
    let ids: Vec<KeycardId> = state
        .bouncer
        .table()
        .list(&filter, None, usize::MAX)
        .into_iter()
        // A token's sessions go with the token, not with the password.
        .filter(|c| &*c.method != super::keycards::TOKEN)
        .map(|c| c.id)
        .filter(|id| Some(*id) != keep)
        .collect();
    let mut n = 0;
    for id in ids {
        if let Some(card) = state.bouncer.revoke(id) {
            state.keycard_revoked(&card, by).await;
            n += 1;
        }
    }
    // And on every other node (a shared store).
    for card in super::cluster::matching(state, &filter).await? {
        if card
            .owner()
            .is_some_and(|(_, _, m)| m != super::keycards::TOKEN)
        {
            n += super::cluster::revoke(state, &card, by).await?;
        }
    }
    Ok(n)
}

/// What setting a credential came to.
pub(crate) enum Set {
    /// Stored (at this tock).
    Stored(u64),
    /// The exchange needs the client's next message: compute it from this
    /// one and send every message again with it.
    Continue(Msg),
}

/// May `session` set `name`'s credential for `method` (`create`: create
/// the user)? The user itself may change the credential it logged in with
/// (the record its login read: not add a method); anything else needs
/// `write_auth`, and a `root` method super-root.
fn may_set(
    state: &ServerState,
    session: &Caller,
    name: &str,
    m: &dyn Method,
    create: bool,
) -> ApiResult<bool> {
    if m.super_root() {
        check_cap(state, session, Capability::SuperRoot)?;
        return Ok(false);
    }
    let at = session.root.join(&record_path(m.name(), "user", name));
    let own = !create && me(session, name).is_some_and(|u| u.record == at);
    match own {
        true => check_login(state, session)?,
        false => check_cap(state, session, Capability::WriteAuth)?,
    }
    Ok(own)
}

/// Creates user `name` (`create`, needs `write_auth`; a `409` if any
/// record of the name exists), or sets its credential for `method` (the
/// user must exist; see [`may_set`]). A credential change revokes the
/// user's other keycards. `msgs` are the client's registration messages
/// so far; `acl` binds an ACL on creation. A record added to an existing
/// user takes its bindings ([`BINDINGS`]) from the user's other record.
pub(crate) async fn set_credential(
    state: &ServerState,
    session: &Caller,
    name: &str,
    method: &str,
    msgs: &[Value],
    create: bool,
    acl: Option<&str>,
) -> ApiResult<Set> {
    let m = state.methods.get(method).cloned().ok_or_else(|| {
        ApiError::new(
            ErrorCode::AuthMethod,
            format!("unknown auth method {method:?}"),
        )
    })?;
    may_set(state, session, name, m.as_ref(), create)?;
    if !create {
        fresh_enough(state, session, name)?;
    }
    let name = user_name(name)?;
    if name.is_empty() {
        return Err(ApiError::bad("a user needs a name"));
    }
    if msgs.is_empty() || msgs.len() > MAX_MESSAGES {
        return Err(ApiError::bad(format!(
            "a registration takes 1 to {MAX_MESSAGES} messages"
        )));
    }
    if let Some(a) = acl {
        if a.is_empty() || a.len() > 256 {
            return Err(ApiError::bad("'acl' must be an ACL name of 1 to 256 bytes"));
        }
    }
    let kind = user_kind(m.as_ref())?;
    let _turn = state.names.lock(&session.root, name).await;
    // Checked again: the keycard may have ended while waiting.
    let own = may_set(state, session, name, m.as_ref(), create)?;
    let found = records(state, session, name).await?;
    match (create, found.is_empty()) {
        (true, false) => return Err(ApiError::new(ErrorCode::Conflict, "the user exists")),
        (false, true) => return Err(no_such_user()),
        _ => {}
    }
    if !own {
        check_outranks(state, session, &found).await?;
    }
    let ctx = LoginCtx {
        channel_key: None,
        now_ms: state.now_ms(),
        ..LoginCtx::default()
    };
    let mut step = m.set_record(&ctx, kind, name, &msgs[0]);
    let mut next = 1;
    let record = loop {
        step = match step {
            Step::Done(record) => break record,
            Step::Fail(e) => return Err(auth_error(e)),
            Step::Work(work) => state.run_work(work).await.ok_or_else(|| {
                ApiError::new(ErrorCode::Internal, "the hashing workers are unavailable")
            })?,
            Step::Send(msg, exchange) => match msgs.get(next) {
                Some(answer) => {
                    next += 1;
                    exchange.next(answer)
                }
                None => return Ok(Set::Continue(msg)),
            },
        };
    };
    if next < msgs.len() {
        return Err(ApiError::bad(format!(
            "method {method} took {next} messages, not {}",
            msgs.len()
        )));
    }
    let at = session.root.join(&record_path(m.name(), kind.name, name));
    let (ops, existed) = record_ops(state, session, &at, &found, record, Cond::Any, acl).await?;
    let out = state.store.write(ops).await?;
    super::auth::refresh_auth(state, || ()).await?;
    let by = session.user.as_ref().map(|u| u.qualified());
    let who = crate::caller::qualify(name, &session.root);
    let event = match (create, existed) {
        (true, _) => "user created",
        (false, true) => "credential set",
        (false, false) => "credential added",
    };
    state
        .audit
        .user(event, &who, Some(m.name()), by.as_deref())
        .await;
    if existed {
        // A changed credential ends the user's other sessions (the
        // caller's own goes on).
        let keep = session.user.as_ref().map(|u| u.keycard);
        credential_changed(state, &session.root, name, keep, by.as_deref()).await?;
    }
    Ok(Set::Stored(out.first().map_or(0, |o| o.tock.0)))
}

/// Refuses a change of the session's own user's credential (by any
/// method) unless its login is younger than `reauth_secs`: a session left
/// open somewhere must not take its account over. Proving the current
/// credential is logging in again.
pub(crate) fn fresh_enough(state: &ServerState, session: &Caller, name: &str) -> ApiResult {
    let Some(u) = me(session, name) else {
        return Ok(());
    };
    let max = state.config.reauth_secs.saturating_mul(1000);
    let age = state.now_ms().saturating_sub(u.login_at);
    if age > max {
        return Err(ApiError::new(
            ErrorCode::ReauthRequired,
            format!(
                "changing your own credential needs a login younger than {} s (reauth_secs); log in again",
                state.config.reauth_secs
            ),
        ));
    }
    Ok(())
}

/// The ops that store `record` at `at` as a record of the user whose
/// records are `found` (the caller outranks them), the record's write
/// conditional on `cond`; and whether the record existed. A new record
/// starts clean (nothing left by a record deleted earlier), then takes
/// the user's bindings: those of its other record (what the user may do
/// does not depend on how it logs in), or for a new user those the caller
/// gives it ([`new_user_bindings`]).
pub(crate) async fn record_ops(
    state: &ServerState,
    session: &Caller,
    at: &Path,
    found: &[(&'static str, Path, Value)],
    record: Value,
    cond: Cond,
    acl: Option<&str>,
) -> ApiResult<(Vec<Op>, bool)> {
    let existed = found.iter().any(|(_, p, _)| p == at);
    let cond = match (existed, cond) {
        (false, Cond::Any) => Cond::Absent,
        (_, c) => c,
    };
    let mut ops = vec![Op::Put {
        path: at.clone(),
        value: record,
        cond,
        idem: false,
    }];
    if existed {
        return Ok((ops, true));
    }
    ops.extend(AUX.iter().map(|aux| Op::delete(at.child(*aux))));
    match found.first() {
        Some((_, other, _)) => {
            for aux in BINDINGS {
                if let Some(e) = state.store.get(&other.child(aux)).await? {
                    ops.push(Op::put(at.child(aux), e.value));
                }
            }
        }
        None => {
            for (aux, v) in new_user_bindings(state, session, acl).await? {
                ops.push(Op::put(at.child(aux), v));
            }
        }
    }
    Ok((ops, false))
}

/// The bindings (`acl`, `groups` aux values) of a user `session` creates,
/// `acl` the ACL the request names. An unbound caller (or a super-root)
/// gives what it is asked, nothing by default (full data access). A
/// caller bound to ACLs gives its own bindings, with the named ACL as the
/// user's own if it is one of the caller's: a new user never reaches more
/// data than its creator, so a bound user-admin cannot escape its ACLs
/// through a user it made.
async fn new_user_bindings(
    state: &ServerState,
    session: &Caller,
    acl: Option<&str>,
) -> ApiResult<Vec<(&'static str, Value)>> {
    let given = acl.map(|a| ("acl", Msg::new().with("key", a).into_value()));
    let caller = Rank::of_session(state, session);
    let (Some(mine), Some(u)) = (caller.acls.as_ref(), session.user.as_deref()) else {
        return Ok(given.into_iter().collect());
    };
    if caller.super_root {
        return Ok(given.into_iter().collect());
    }
    let refuse = |why: String| {
        Err(ApiError::new(
            ErrorCode::PermissionDenied,
            format!("refused: {why}; this session is bound to the ACLs {mine:?}"),
        ))
    };
    if u.domain != session.root {
        return refuse("a session bound to ACLs creates users in its own domain only".into());
    }
    if let Some(a) = acl.filter(|a| *a == "*" || !mine.iter().any(|m| m == a)) {
        return refuse(format!(
            "binding a new user to {a:?} needs an unbound caller or super-root"
        ));
    }
    let mut out = Vec::new();
    for aux in ["acl", "groups"] {
        if let Some(e) = state.store.get(&u.record.child(aux)).await? {
            out.push((aux, e.value));
        }
    }
    if let Some(g) = given {
        out.retain(|(k, _)| *k != "acl");
        out.push(g);
    }
    // What they bind resolves within the caller's own ACLs (its record may
    // have changed since its login; then it logs in again first).
    let get = |k: &str| out.iter().find(|(a, _)| *a == k).map(|(_, v)| v);
    let names = crate::acl::bindings_acls(
        state.store.as_ref(),
        &session.root,
        get("acl"),
        get("groups"),
    )
    .await?;
    match names {
        Some(n) if n.iter().all(|a| mine.contains(a)) => Ok(out),
        _ => refuse(
            "the new user would be bound otherwise than this session (its bindings changed since \
             its login: log in again)"
                .into(),
        ),
    }
}

/// Deletes user `name`: every method's record and its aux nodes, and
/// revokes its keycards and tokens (their connections close). Needs
/// `write_auth` and every capability the user holds (super-root for a
/// `root`-method user); refuses to delete the last user of the current
/// method. Returns how many keycards were revoked.
pub(crate) async fn delete(state: &ServerState, session: &Caller, name: &str) -> ApiResult<usize> {
    check_cap(state, session, Capability::WriteAuth)?;
    let name = user_name(name)?;
    let _turn = state.names.lock(&session.root, name).await;
    check_cap(state, session, Capability::WriteAuth)?;
    let found = records(state, session, name).await?;
    if found.is_empty() {
        return Err(no_such_user());
    }
    check_outranks(state, session, &found).await?;
    let auth_at = session.root.join(&auth_root());
    let mut ops = Vec::new();
    let mut checks = Vec::new();
    for (_, at, _) in &found {
        checks.push((at, None));
        ops.push(Op::delete(at.clone()));
        ops.extend(AUX.iter().map(|aux| Op::delete(at.child(*aux))));
    }
    {
        // No last-login flush may write a mark back between the two.
        let _flush = state.logins.exclusive().await;
        write_guarded(state, &auth_at, &checks, ops).await?;
        for (_, at, _) in &found {
            state.logins.forget(at);
        }
    }
    super::auth::refresh_auth(state, || ()).await?;
    let by = session.user.as_ref().map(|u| u.qualified());
    let revoked = revoke_user(state, &session.root, name, None, true, by.as_deref()).await?;
    let who = crate::caller::qualify(name, &session.root);
    state
        .audit
        .user("user deleted", &who, None, by.as_deref())
        .await;
    Ok(revoked)
}

/// What `auth_set` and `auth_delete` (msgpack, one method's record) must
/// hold before they change user `ident`: the name's turn, and to outrank
/// the user (every record of the name). Returns the turn and the records.
pub(crate) async fn guard_user<'a>(
    state: &'a ServerState,
    session: &Caller,
    ident: &str,
) -> ApiResult<(
    tokio::sync::MutexGuard<'a, ()>,
    Vec<(&'static str, Path, Value)>,
)> {
    let turn = state.names.lock(&session.root, ident).await;
    let found = records(state, session, ident).await?;
    check_outranks(state, session, &found).await?;
    Ok((turn, found))
}

/// Ends user `name`'s keycards under `root` after its credential changed,
/// but `keep` (the caller's own). Its tokens stay: they are credentials of
/// their own, which a keycard manager issued and `keycard_revoke {user}`
/// ends.
pub(crate) async fn credential_changed(
    state: &ServerState,
    root: &Path,
    name: &str,
    keep: Option<KeycardId>,
    by: Option<&str>,
) -> ApiResult<usize> {
    revoke_user(state, root, name, keep, false, by).await
}

/// What showing a user finds.
#[derive(Clone, Debug)]
pub(crate) struct Shown {
    /// The user's name.
    pub name: String,
    /// Each record the caller may see, by method.
    pub records: Vec<ShownRecord>,
    /// The most recent logins by those records, newest first (at most
    /// `logins::KEEP`).
    pub last_logins: Vec<Mark>,
}

/// One record of a shown user.
#[derive(Clone, Debug)]
pub(crate) struct ShownRecord {
    /// Its method.
    pub method: &'static str,
    /// What the method shows of it (nothing secret).
    pub fields: Msg,
    /// The ACL it is bound to.
    pub acl: Option<String>,
    /// Its groups.
    pub groups: Option<Vec<Value>>,
}

/// User `name` under the caller's root: its records, bindings and last
/// logins. Needs `read_auth` (which reads every record with `auth_get`
/// already: showing is reading, no outranking needed), or to be the user:
/// then only the record it logged in with (same name, method and
/// domain), and its last logins.
pub(crate) async fn show(state: &ServerState, session: &Caller, name: &str) -> ApiResult<Shown> {
    check_login(state, session)?;
    let own_only = match check_cap(state, session, Capability::ReadAuth) {
        Ok(()) => None,
        Err(e) => Some(me(session, name).ok_or(e)?.record.clone()),
    };
    let name = user_name(name)?;
    let mut found = records(state, session, name).await?;
    if let Some(mine) = &own_only {
        found.retain(|(_, at, _)| at == mine);
    }
    if found.is_empty() {
        return Err(no_such_user());
    }
    let mut shown = Vec::new();
    let mut logins = Vec::new();
    for (m, at, value) in &found {
        let Some(method) = state.methods.get(m) else {
            continue;
        };
        let fields = method.show_record(user_kind(method.as_ref())?, value);
        let acl = match state.store.get(&at.child("acl")).await? {
            Some(e) => e
                .value
                .get("key")
                .and_then(Value::as_str)
                .map(str::to_owned),
            None => None,
        };
        let groups = match state.store.get(&at.child("groups")).await? {
            Some(e) => match e.value.get("groups") {
                Some(Value::Array(g)) => Some(g.clone()),
                _ => None,
            },
            None => None,
        };
        shown.push(ShownRecord {
            method: m,
            fields,
            acl,
            groups,
        });
        logins.extend(state.logins.of(at).await?);
    }
    logins.sort_by_key(|m| std::cmp::Reverse(m.at));
    logins.truncate(crate::logins::KEEP);
    Ok(Shown {
        name: name.to_owned(),
        records: shown,
        last_logins: logins,
    })
}

#[cfg(test)]
mod show_tests {
    //! Showing a user as a plain call.

    use keycard_proto::{ErrorCode, Path};

    use super::show;
    use crate::caller::Capability;
    use crate::clock::ManualClock;
    use crate::core::testkit::{close, login, state, user};

    #[tokio::test]
    async fn a_user_is_shown_to_read_auth_and_to_itself_only() {
        let dir = tempfile::tempdir().expect("tempdir");
        let s = state(&dir, ManualClock::at(1_000_000)).await;
        close(&s).await;
        let root = Path::root();
        let reader = login(&s, &root, "rita", &[Capability::ReadAuth], 1).await;
        let ann = login(&s, &root, "ann", &[], 2).await;
        user(&s, &root, "bob", &[]).await;
        let bob = show(&s, &reader, "bob").await.expect("shown");
        assert_eq!(bob.name, "bob");
        assert_eq!(
            bob.records.iter().map(|r| r.method).collect::<Vec<_>>(),
            vec![keycard_auth::TEST]
        );
        // Itself, without the capability.
        let me = show(&s, &ann, "ann").await.expect("itself");
        assert_eq!(me.records.len(), 1);
        // Another user: the capability is missing, whether or not it exists.
        for name in ["bob", "nobody"] {
            let refused = show(&s, &ann, name).await;
            assert_eq!(
                refused.err().map(|e| e.code),
                Some(ErrorCode::PermissionDenied)
            );
        }
        assert_eq!(
            show(&s, &reader, "nobody").await.err().map(|e| e.code),
            Some(ErrorCode::NotFound)
        );
        // A domain's reader sees only its domain's users.
        let acme = Path::parse("org.acme").expect("path");
        let dom = login(&s, &acme, "dora", &[Capability::ReadAuth], 3).await;
        assert_eq!(
            show(&s, &dom, "bob").await.err().map(|e| e.code),
            Some(ErrorCode::NotFound)
        );
        assert!(show(&s, &dom, "dora").await.is_ok());
    }
}
