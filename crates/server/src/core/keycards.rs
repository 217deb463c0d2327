//! Keycards beyond the live table: durable ones (tokens) under
//! `(nil, "keycard", ID)`, who owns a keycard, and revoking what a filter
//! matches, live and durable alike; listing, showing and revoking them
//! for a caller (`keycard_list`, `keycard_show`, `keycard_revoke`).
//!
//! A caller without `manage_keycards` sees and revokes only its own
//! user's keycards; anything else is `not_found`, as an unknown id is.

use std::collections::HashSet;

use keycard_auth::bouncer::{Filter, Keycard, KeycardId, State};
use keycard_proto::{Elem, ErrorCode, Path, Value};
use keycard_store::{Cond, Op};

use super::access::check_login;
use super::rank::{self, Rank};
use crate::caller::{domain_text, qualify, Caller, Capability, LoggedIn};
use crate::error::{ApiError, ApiResult};
use crate::state::ServerState;

/// The token method's name.
pub(crate) const TOKEN: &str = keycard_auth::TOKEN;
/// Most keycards one listing returns.
pub(crate) const MAX_LIST: usize = 10_000;

/// `(nil, "keycard", ID)`: a durable keycard.
pub(crate) fn durable_path(id: KeycardId) -> Path {
    durable_root().child(id.to_string().as_str())
}

pub(crate) fn durable_root() -> Path {
    Path::new(vec![Elem::Nil, "keycard".into()])
}

/// A keycard's owner: user name, domain (text; empty for the server's own
/// users) and method. Compared as a whole: a `_test` "bob" is not the
/// `scram-sha-256` "bob", and a domain's "joe" is not the server's
/// "joe@org.acme".
pub(crate) type Owner = (String, String, String);

/// Whose a keycard is: a live one's user, domain and method, or a durable
/// one's user, domain and the method of its user record.
pub(crate) fn owner(live: Option<&Keycard>, stored: Option<&Value>) -> Option<Owner> {
    if let Some(c) = live {
        return Some((
            c.user.to_string(),
            c.domain.to_string(),
            c.method.to_string(),
        ));
    }
    let v = stored?;
    let user = v.get("user").and_then(Value::as_str)?;
    let method = v.get("user_method").and_then(Value::as_str)?;
    let domain = v
        .get("domain")
        .and_then(|d| Path::from_value(d).ok())
        .unwrap_or_default();
    Some((
        user.to_owned(),
        crate::caller::domain_text(&domain),
        method.to_owned(),
    ))
}

/// Durable keycards (tokens) matching `f` and `keep`, as `(id, record)`,
/// at most `max`. Every record is looked at (page by page), not only the
/// first few thousand: revoking a user must reach all of its tokens.
pub(crate) async fn durable(
    state: &ServerState,
    f: &Filter,
    max: usize,
    keep: impl Fn(&Value) -> bool,
) -> ApiResult<Vec<(String, Value)>> {
    if f.requester.is_some()
        || f.parent.is_some()
        || f.method.as_deref().is_some_and(|m| m != TOKEN)
    {
        return Ok(Vec::new());
    }
    let mut out = Vec::new();
    crate::state::each_child(state.store.as_ref(), &durable_root(), |p, e| {
        let id = match p.elems().last() {
            Some(Elem::Str(s)) => s.to_string(),
            _ => return true,
        };
        let Some((user, domain, _)) = owner(None, Some(&e.value)) else {
            return true;
        };
        // As in the live table: a user without a domain is one of the
        // server's own.
        let in_domain = match (&f.domain, &f.user) {
            (Some(d), _) => *d == domain,
            (None, Some(_)) => domain.is_empty(),
            (None, None) => true,
        };
        if in_domain && f.user.as_deref().is_none_or(|u| u == user) && keep(&e.value) {
            out.push((id, e.value));
        }
        out.len() < max
    })
    .await?;
    Ok(out)
}

/// Marks a durable keycard revoked (it never works again, across
/// restarts) and revokes the connections using it. Returns whether it was
/// live.
pub(crate) async fn revoke_durable(
    state: &ServerState,
    id: KeycardId,
    by: Option<&str>,
) -> ApiResult<usize> {
    let path = durable_path(id);
    let Some(e) = state.store.get(&path).await? else {
        return Ok(0);
    };
    let mut n = 0;
    if e.value.get("state").and_then(Value::as_str) == Some(State::Authenticated.name()) {
        let mut v = e.value.clone();
        if let Value::Map(m) = &mut v {
            m.retain(|(k, _)| k.as_str() != Some("state"));
            m.push(("state".into(), State::Revoked.name().into()));
            m.push(("revoked_at".into(), state.now_ms().into()));
            m.push(("revoked_by".into(), Value::from(by)));
        }
        state
            .store
            .write(vec![Op::Put {
                path,
                value: v,
                cond: Cond::TockIs(e.tock),
                idem: false,
            }])
            .await?;
        n += 1;
        let user = e.value.get("user").and_then(Value::as_str).unwrap_or("");
        tracing::info!(target: "keycard::audit", keycard = %id, user, by = by.unwrap_or(""), "token revoked");
    }
    let children = state.bouncer.revoke_where(&Filter {
        parent: Some(id),
        ..Filter::default()
    });
    Ok(n + children.len())
}

/// Revokes every live keycard and token `f` matches, audited as revoked
/// `by`; returns how many.
pub(crate) async fn revoke_matching(
    state: &ServerState,
    f: &Filter,
    by: Option<&str>,
) -> ApiResult<usize> {
    let mut n = 0;
    for card in state.bouncer.revoke_where(f) {
        state.keycard_revoked(&card, by).await;
        n += 1;
    }
    for (id, _) in durable(state, f, usize::MAX, |_| true).await? {
        if let Some(id) = KeycardId::parse(&id) {
            n += revoke_durable(state, id, by).await?;
        }
    }
    for card in super::cluster::matching(state, f).await? {
        n += super::cluster::revoke(state, &card, by).await?;
    }
    Ok(n)
}

/// A keycard as a caller sees it.
#[derive(Clone, Debug)]
pub(crate) enum Card {
    /// A keycard of the live table.
    Live(Keycard),
    /// A durable keycard (a token): its id and record (its hash included;
    /// the adapter shows the fields it names).
    Durable {
        /// The keycard's id, as stored.
        id: String,
        /// The stored record.
        record: Value,
        /// Whether an authenticated token is past its time (it shows as
        /// `expired` until the reaper deletes it).
        expired: bool,
    },
}

impl Card {
    fn durable(state: &ServerState, id: String, record: Value) -> Card {
        let now = state.now_ms();
        let expired = record.get("state").and_then(Value::as_str)
            == Some(State::Authenticated.name())
            && record
                .get("expires_at")
                .and_then(Value::as_u64)
                .is_some_and(|t| t <= now);
        Card::Durable {
            id,
            record,
            expired,
        }
    }
}

/// The caller, if logged in (keep-alive and logout need one).
pub(crate) fn own(caller: &Caller) -> ApiResult<&LoggedIn> {
    caller.user.as_deref().ok_or_else(|| {
        ApiError::new(
            ErrorCode::AuthRequired,
            "this connection holds no keycard; log in first",
        )
    })
}

/// Who the caller is to keycards (without `manage_keycards` it owns the
/// keycards with the same owner).
fn me(caller: &Caller) -> Option<Owner> {
    caller
        .user
        .as_ref()
        .map(|u| (u.name.clone(), domain_text(&u.domain), u.method.clone()))
}

/// Whether the caller manages every keycard, or only its own user's.
/// Keycards are server-wide: only the server's own users (not a domain's)
/// manage them all.
pub(crate) fn manages_all(state: &ServerState, caller: &Caller) -> bool {
    match &caller.user {
        None => state.is_open(),
        Some(u) => u.domain.is_empty() && u.has(Capability::ManageKeycards),
    }
}

/// What `keycard_list` asks for.
#[derive(Clone, Debug, Default)]
pub(crate) struct ListQuery {
    /// Which keycards (narrowed to the caller's own without
    /// `manage_keycards`).
    pub filter: Filter,
    /// Live keycards after this id (a later page: no durable ones).
    pub after: Option<KeycardId>,
    /// At most this many live keycards (capped at [`MAX_LIST`]).
    pub limit: usize,
}

/// Lists keycards: live ones by id, then (on the first page) durable ones.
pub(crate) async fn list(
    state: &ServerState,
    caller: &Caller,
    mut q: ListQuery,
) -> ApiResult<Vec<Card>> {
    check_login(state, caller)?;
    narrow(state, caller, &mut q.filter)?;
    let live = state
        .bouncer
        .table()
        .list(&q.filter, q.after, q.limit.min(MAX_LIST));
    let mut out: Vec<Card> = live.into_iter().map(Card::Live).collect();
    if q.after.is_none() {
        // Other nodes' keycards (on a shared store), on the first page.
        let elsewhere = super::cluster::matching(state, &q.filter).await?;
        out.extend(
            elsewhere
                .iter()
                .filter_map(super::cluster::Elsewhere::card)
                .take(MAX_LIST)
                .map(Card::Live),
        );
        for (id, v) in durable(state, &q.filter, MAX_LIST, |_| true).await? {
            out.push(Card::durable(state, id, v));
        }
    }
    Ok(out)
}

/// Narrows `f` to the caller's own keycards (the same user name, domain
/// and method; tokens are listed for keycard managers only) unless it
/// manages them all.
pub(crate) fn narrow(state: &ServerState, caller: &Caller, f: &mut Filter) -> ApiResult {
    if !manages_all(state, caller) {
        let me = own(caller)?;
        f.user = Some(me.name.clone());
        f.domain = Some(domain_text(&me.domain));
        f.method = Some(me.method.clone());
    }
    Ok(())
}

fn no_such_keycard() -> ApiError {
    ApiError::new(ErrorCode::NotFound, "no such keycard")
}

/// One keycard, live or durable, if the caller may see it.
pub(crate) async fn show(state: &ServerState, caller: &Caller, id: KeycardId) -> ApiResult<Card> {
    check_login(state, caller)?;
    let all = manages_all(state, caller);
    let me = me(caller);
    let live = state.bouncer.table().show(id);
    if let Some(c) = live.filter(|c| all || owner(Some(c), None) == me) {
        return Ok(Card::Live(c));
    }
    if let Some(e) = state.store.get(&durable_path(id)).await? {
        if all || owner(None, Some(&e.value)) == me {
            return Ok(Card::durable(state, id.to_string(), e.value));
        }
    }
    if let Some(c) = super::cluster::find(state, id).await? {
        if all || c.owner() == me {
            if let Some(card) = c.card() {
                return Ok(Card::Live(card));
            }
        }
    }
    Err(no_such_keycard())
}

/// Refuses unless the caller may revoke the keycards of `whose`: its own
/// always; another user's with `manage_keycards` when it outranks that
/// user. `ranks` keeps the users already looked up.
async fn may_revoke(
    state: &ServerState,
    caller: &Caller,
    whose: &Owner,
    ranks: &mut HashSet<(String, String)>,
) -> ApiResult {
    if Some(whose) == me(caller).as_ref() {
        return Ok(());
    }
    let (user, domain, _) = whose;
    let key = (user.clone(), domain.clone());
    if ranks.contains(&key) {
        return Ok(());
    }
    let root = match domain.as_str() {
        "" => Path::root(),
        d => Path::parse(d).map_err(|_| {
            ApiError::new(
                ErrorCode::PermissionDenied,
                "refused: the keycard's domain cannot be read",
            )
        })?,
    };
    let rank = Rank::of_user(state, &root, user).await?;
    rank::check(state, caller, rank.as_ref()).map_err(|e| {
        ApiError::new(
            e.code,
            format!("{} (a keycard of {})", e.text, qualify(user, &root)),
        )
    })?;
    ranks.insert(key);
    Ok(())
}

/// Revokes keycard `id` (the caller's own, or with `manage_keycards` one
/// of a user it outranks); how many keycards ended (a token's sessions
/// count). Their connections are closed.
pub(crate) async fn revoke_id(
    state: &ServerState,
    caller: &Caller,
    id: KeycardId,
) -> ApiResult<usize> {
    check_login(state, caller)?;
    let all = manages_all(state, caller);
    let by = caller.user.as_ref().map(|u| u.qualified());
    let live = state.bouncer.table().show(id);
    let stored = state.store.get(&durable_path(id)).await?;
    let elsewhere = match (&live, &stored) {
        (None, None) => super::cluster::find(state, id).await?,
        _ => None,
    };
    let whose = owner(live.as_ref(), stored.as_ref().map(|e| &e.value)).or_else(|| {
        elsewhere
            .as_ref()
            .and_then(super::cluster::Elsewhere::owner)
    });
    let Some(whose) = whose.filter(|w| all || Some(w) == me(caller).as_ref()) else {
        return Err(no_such_keycard());
    };
    may_revoke(state, caller, &whose, &mut HashSet::new()).await?;
    let mut n = 0;
    // Exactly the keycard checked: still of the owner it was checked for.
    if let Some(card) = state
        .bouncer
        .revoke_if(id, |c| owner(Some(c), None).as_ref() == Some(&whose))
    {
        state.keycard_revoked(&card, by.as_deref()).await;
        n += 1;
    }
    if stored.is_some() {
        n += revoke_durable(state, id, by.as_deref()).await?;
    }
    if let Some(card) = &elsewhere {
        n += super::cluster::revoke(state, card, by.as_deref()).await?;
    }
    Ok(n)
}

/// Refuses a caller that may not revoke by filter (it needs
/// `manage_keycards`, as a server user): checked before the filter is
/// read, so such a caller learns nothing about its fields.
pub(crate) fn check_revoke_matching(state: &ServerState, caller: &Caller) -> ApiResult {
    check_login(state, caller)?;
    if !manages_all(state, caller) {
        return Err(ApiError::new(
            ErrorCode::PermissionDenied,
            "revoking by user or requester needs the manage_keycards capability",
        ));
    }
    Ok(())
}

/// Revokes the keycards `f` matches (by `user`, `requester` or `parent`;
/// needs `manage_keycards`); how many. A filter matching a keycard of a
/// user the caller does not outrank is refused as a whole and revokes
/// nothing; exactly the keycards checked are revoked (by id, each still
/// of the owner it was checked for).
pub(crate) async fn revoke_filter(
    state: &ServerState,
    caller: &Caller,
    f: &Filter,
) -> ApiResult<usize> {
    check_revoke_matching(state, caller)?;
    if f.user.is_none() && f.requester.is_none() && f.parent.is_none() {
        return Err(ApiError::bad(
            "say which keycards: 'id', 'user', 'requester' or 'parent'",
        ));
    }
    let by = caller.user.as_ref().map(|u| u.qualified());
    let mut ranks = HashSet::new();
    // A user named is checked whether or not it holds keycards now.
    if let Some(user) = &f.user {
        let named = (
            user.clone(),
            f.domain.clone().unwrap_or_default(),
            String::new(),
        );
        may_revoke(state, caller, &named, &mut ranks).await?;
    }
    let live = state.bouncer.table().list(f, None, usize::MAX);
    let stored = durable(state, f, usize::MAX, |_| true).await?;
    let elsewhere = super::cluster::matching(state, f).await?;
    for whose in live
        .iter()
        .filter_map(|c| owner(Some(c), None))
        .chain(stored.iter().filter_map(|(_, v)| owner(None, Some(v))))
        .chain(
            elsewhere
                .iter()
                .filter_map(super::cluster::Elsewhere::owner),
        )
    {
        may_revoke(state, caller, &whose, &mut ranks).await?;
    }
    let mut n = 0;
    for c in &live {
        let whose = owner(Some(c), None);
        if let Some(card) = state
            .bouncer
            .revoke_if(c.id, |now| owner(Some(now), None) == whose)
        {
            state.keycard_revoked(&card, by.as_deref()).await;
            n += 1;
        }
    }
    for (id, _) in stored {
        if let Some(id) = KeycardId::parse(&id) {
            n += revoke_durable(state, id, by.as_deref()).await?;
        }
    }
    // Exactly the records checked: each write is conditional on the
    // record read.
    for card in &elsewhere {
        n += super::cluster::revoke(state, card, by.as_deref()).await?;
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    //! Listing, showing and revoking as plain calls: users written into an
    //! in-memory store, keycards begun in the bouncer, a manual clock.

    use keycard_auth::bouncer::Filter;
    use keycard_proto::{ErrorCode, Path};

    use super::{check_revoke_matching, list, revoke_filter, revoke_id, show, Card, ListQuery};
    use crate::caller::{Caller, Capability};
    use crate::clock::ManualClock;
    use crate::core::testkit::{close, login, state};

    fn keycard(c: &Caller) -> keycard_auth::bouncer::KeycardId {
        c.user.as_ref().expect("logged in").keycard
    }

    fn users(cards: &[Card]) -> Vec<String> {
        let mut names: Vec<String> = cards
            .iter()
            .map(|c| match c {
                Card::Live(k) => k.user.to_string(),
                Card::Durable { record, .. } => {
                    format!("{:?}", record.get("user"))
                }
            })
            .collect();
        names.sort();
        names
    }

    fn code<T>(r: crate::error::ApiResult<T>) -> Option<ErrorCode> {
        r.err().map(|e| e.code)
    }

    #[tokio::test]
    async fn without_manage_keycards_a_user_sees_and_revokes_only_its_own() {
        let dir = tempfile::tempdir().expect("tempdir");
        let s = state(&dir, ManualClock::at(1_000_000)).await;
        close(&s).await;
        let root = Path::root();
        let ann = login(&s, &root, "ann", &[], 1).await;
        let bob = login(&s, &root, "bob", &[], 2).await;
        let q = ListQuery {
            limit: 100,
            ..ListQuery::default()
        };
        // Asking for everyone's lists its own.
        let seen = list(&s, &ann, q.clone()).await.expect("list");
        assert_eq!(users(&seen), vec!["ann"]);
        // Another user's keycard does not exist for it, to show or revoke.
        assert_eq!(
            code(show(&s, &ann, keycard(&bob)).await),
            Some(ErrorCode::NotFound)
        );
        assert_eq!(
            code(revoke_id(&s, &ann, keycard(&bob)).await),
            Some(ErrorCode::NotFound)
        );
        // Revoking by filter needs the capability, whatever the filter.
        assert_eq!(
            code(check_revoke_matching(&s, &ann)),
            Some(ErrorCode::PermissionDenied)
        );
        let by_user = Filter {
            user: Some("bob".into()),
            ..Filter::default()
        };
        assert_eq!(
            code(revoke_filter(&s, &ann, &by_user).await),
            Some(ErrorCode::PermissionDenied)
        );
        assert!(s.bouncer.table().show(keycard(&bob)).is_some());
        // Its own it shows and revokes.
        assert!(matches!(
            show(&s, &ann, keycard(&ann)).await,
            Ok(Card::Live(_))
        ));
        assert_eq!(revoke_id(&s, &ann, keycard(&ann)).await.ok(), Some(1));
        // Not logged in: nothing.
        assert_eq!(
            code(list(&s, &Caller::default(), q).await),
            Some(ErrorCode::AuthRequired)
        );
    }

    #[tokio::test]
    async fn a_keycard_manager_revokes_only_the_users_it_outranks() {
        let dir = tempfile::tempdir().expect("tempdir");
        let s = state(&dir, ManualClock::at(1_000_000)).await;
        close(&s).await;
        let root = Path::root();
        let keeper = login(&s, &root, "keeper", &[Capability::ManageKeycards], 1).await;
        let boss = login(&s, &root, "boss", &[Capability::SuperRoot], 2).await;
        let carl = login(&s, &root, "carl", &[], 3).await;
        let everyone = list(
            &s,
            &keeper,
            ListQuery {
                limit: 100,
                ..ListQuery::default()
            },
        )
        .await
        .expect("list");
        assert_eq!(users(&everyone), vec!["boss", "carl", "keeper"]);
        // It sees the super-root's keycard but may not end it.
        assert!(show(&s, &keeper, keycard(&boss)).await.is_ok());
        assert_eq!(
            code(revoke_id(&s, &keeper, keycard(&boss)).await),
            Some(ErrorCode::PermissionDenied)
        );
        // A filter reaching a user it does not outrank revokes nothing.
        let f = Filter {
            requester: Some(2),
            ..Filter::default()
        };
        assert_eq!(
            code(revoke_filter(&s, &keeper, &f).await),
            Some(ErrorCode::PermissionDenied)
        );
        assert!(s.bouncer.table().show(keycard(&boss)).is_some());
        // An empty filter says which keycards are meant.
        assert_eq!(
            code(revoke_filter(&s, &keeper, &Filter::default()).await),
            Some(ErrorCode::BadRequest)
        );
        let f = Filter {
            user: Some("carl".into()),
            ..Filter::default()
        };
        assert_eq!(revoke_filter(&s, &keeper, &f).await.ok(), Some(1));
        assert!(s.bouncer.table().show(keycard(&carl)).is_none());
        // The super-root revokes anyone's.
        assert_eq!(revoke_id(&s, &boss, keycard(&keeper)).await.ok(), Some(1));
    }

    #[tokio::test]
    async fn a_domains_keycard_manager_manages_only_its_own_keycards() {
        let dir = tempfile::tempdir().expect("tempdir");
        let s = state(&dir, ManualClock::at(1_000_000)).await;
        close(&s).await;
        let acme = Path::parse("org.acme").expect("path");
        let dom = login(&s, &acme, "dora", &[Capability::ManageKeycards], 1).await;
        let other = login(&s, &Path::root(), "ann", &[], 2).await;
        let seen = list(
            &s,
            &dom,
            ListQuery {
                limit: 100,
                ..ListQuery::default()
            },
        )
        .await
        .expect("list");
        assert_eq!(users(&seen), vec!["dora"]);
        assert_eq!(
            code(show(&s, &dom, keycard(&other)).await),
            Some(ErrorCode::NotFound)
        );
        assert_eq!(
            code(check_revoke_matching(&s, &dom)),
            Some(ErrorCode::PermissionDenied)
        );
    }
}
