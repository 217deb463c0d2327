//! Keycards beyond the live table: durable ones (tokens) under
//! `(nil, "keycard", ID)`, who owns a keycard, and revoking what a filter
//! matches, live and durable alike.

use keycard_auth::bouncer::{Filter, Keycard, KeycardId, State};
use keycard_proto::{Elem, Path, Value};
use keycard_store::{After, Cond, Op, ScanOpts};

use crate::error::ApiResult;
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
    let opts = ScanOpts {
        min_depth: 1,
        max_depth: Some(1),
    };
    let root = durable_root();
    let mut out = Vec::new();
    let mut page = state.store.scan(&root, opts, After::Start, 1024).await?;
    loop {
        for (p, e) in page.items {
            let id = match p.elems().last() {
                Some(Elem::Str(s)) => s.to_string(),
                _ => continue,
            };
            let Some((user, domain, _)) = owner(None, Some(&e.value)) else {
                continue;
            };
            // As in the live table: a user without a domain is one of
            // the server's own.
            let in_domain = match (&f.domain, &f.user) {
                (Some(d), _) => *d == domain,
                (None, Some(_)) => domain.is_empty(),
                (None, None) => true,
            };
            if in_domain && f.user.as_deref().is_none_or(|u| u == user) && keep(&e.value) {
                out.push((id, e.value));
                if out.len() >= max {
                    return Ok(out);
                }
            }
        }
        match page.next {
            Some(c) => {
                tokio::task::yield_now().await;
                page = state
                    .store
                    .scan(&root, opts, After::Cursor(&c), 1024)
                    .await?;
            }
            None => return Ok(out),
        }
    }
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
        state.audit.keycard("revoked", &card, by).await;
        n += 1;
    }
    for (id, _) in durable(state, f, usize::MAX, |_| true).await? {
        if let Some(id) = KeycardId::parse(&id) {
            n += revoke_durable(state, id, by).await?;
        }
    }
    Ok(n)
}
