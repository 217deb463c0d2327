//! The outrank rule (DESIGN §7.10): an action on another user — a token
//! for it, revoking its keycards, changing or deleting its records,
//! testing its ACLs — needs the caller to outrank that user. One
//! function, [`check`], decides it for every such action.
//!
//! A caller outranks a user when it is super-root (every connection while
//! the server is open, a `root`-method login, a user granted
//! `super_root`), or when it holds every capability the user holds and
//! has no less data access: an unbound caller has full access; a caller
//! bound to ACLs outranks only users of its own domain whose ACLs (their
//! own binding and their groups') are all among its own. Comparing names
//! is deliberately coarse: two ACLs granting the same are still two names,
//! and a bound caller is refused rather than trusted on an analysis of
//! what each grants.

use keycard_proto::{ErrorCode, Path, Value};

use crate::caller::{Caller, Capability};
use crate::error::{ApiError, ApiResult};
use crate::state::{record_path, ServerState};

/// What a user (or a session) may do, as far as ranking goes.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Rank {
    /// Holds everything: outranks everyone.
    pub super_root: bool,
    /// The capabilities it holds.
    pub caps: Vec<Capability>,
    /// The ACLs it is bound to (its own and its groups'); `None`: full
    /// data access.
    pub acls: Option<Vec<String>>,
    /// The domain those ACL names belong to.
    pub domain: Path,
}

impl Rank {
    /// The rank of `session`, as its login granted it.
    pub(crate) fn of_session(state: &ServerState, session: &Caller) -> Rank {
        match &session.user {
            // Everyone is super-root while the server is open.
            _ if state.is_open() => Rank::top(session.root.clone()),
            Some(u) => Rank {
                super_root: u.has(Capability::SuperRoot),
                caps: u.caps.clone(),
                acls: u.acls.clone(),
                domain: u.domain.clone(),
            },
            // Not logged in on a server requiring logins: nothing (the
            // actions refuse such callers before asking).
            None => Rank {
                super_root: false,
                caps: Vec::new(),
                acls: Some(Vec::new()),
                domain: session.root.clone(),
            },
        }
    }

    fn top(domain: Path) -> Rank {
        Rank {
            super_root: true,
            caps: Capability::ALL.to_vec(),
            acls: None,
            domain,
        }
    }

    /// The rank of the user whose records (under `root`) are at `records`:
    /// the most any of them grants (a user may log in by each). `None`
    /// when there is no record: nobody to protect.
    pub(crate) async fn of_records(
        state: &ServerState,
        root: &Path,
        records: &[(&str, Path)],
    ) -> ApiResult<Option<Rank>> {
        if records.is_empty() {
            return Ok(None);
        }
        let mut rank = Rank {
            super_root: false,
            caps: Vec::new(),
            acls: Some(Vec::new()),
            domain: root.clone(),
        };
        for (method, at) in records {
            if state.methods.get(method).is_some_and(|m| m.super_root()) {
                rank.super_root = true;
            }
            for cap in caps_of(state, at).await? {
                rank.super_root |= cap == Capability::SuperRoot;
                if !rank.caps.contains(&cap) {
                    rank.caps.push(cap);
                }
            }
            let bound = crate::acl::bound_acls(state.store.as_ref(), root, at).await?;
            rank.acls = match (rank.acls, bound) {
                (Some(mut all), Some(names)) => {
                    for n in names {
                        if !all.contains(&n) {
                            all.push(n);
                        }
                    }
                    Some(all)
                }
                // One record with full data access gives the user full
                // data access.
                _ => None,
            };
        }
        Ok(Some(rank))
    }

    /// The rank of user `name` under `root`: every method's record of the
    /// name (`None`: there is none).
    pub(crate) async fn of_user(
        state: &ServerState,
        root: &Path,
        name: &str,
    ) -> ApiResult<Option<Rank>> {
        let mut found = Vec::new();
        for m in state.methods.names() {
            let at = root.join(&record_path(m, "user", name));
            if state.store.get(&at).await?.is_some() {
                found.push((m, at));
            }
        }
        Rank::of_records(state, root, &found).await
    }

    /// Why `self` does not outrank `user` (`None`: it does).
    pub(crate) fn short_of(&self, user: &Rank) -> Option<String> {
        if self.super_root {
            return None;
        }
        if user.super_root {
            return Some("the user is super-root".into());
        }
        if let Some(cap) = user.caps.iter().find(|c| !self.caps.contains(c)) {
            return Some(format!(
                "the user holds the {} capability, which this session lacks",
                cap.name()
            ));
        }
        match (&self.acls, &user.acls) {
            (None, _) => None,
            (Some(_), None) => {
                Some("the user has full data access; this session is bound to ACLs".into())
            }
            (Some(_), Some(_)) if self.domain != user.domain => {
                Some("the user is another domain's; this session is bound to ACLs".into())
            }
            (Some(mine), Some(theirs)) => theirs
                .iter()
                .find(|a| !mine.contains(a))
                .map(|a| format!("the user is bound to the ACL {a:?}, which this session is not")),
        }
    }

    /// What a token login keeps of the capabilities its user holds now,
    /// when the token was issued for a user holding `ceiling`: those in
    /// both (a token never gains what its user gained since).
    pub(crate) fn clamp_caps(caps: &mut Vec<Capability>, ceiling: &[Capability]) {
        caps.retain(|c| ceiling.contains(c));
    }

    /// [`Rank::clamp_caps`] for ACL bindings: a ceiling of full access
    /// keeps what the user has now; else the user's ACLs that the ceiling
    /// also names (possibly none: no data access), or the ceiling's own
    /// when the user is unbound now.
    pub(crate) fn clamp_acls(
        acls: Option<Vec<String>>,
        ceiling: Option<&[String]>,
    ) -> Option<Vec<String>> {
        match (acls, ceiling) {
            (acls, None) => acls,
            (None, Some(c)) => Some(c.to_vec()),
            (Some(mut a), Some(c)) => {
                a.retain(|n| c.contains(n));
                Some(a)
            }
        }
    }

    /// The rank as a token record keeps it: `{caps: [NAME…], acls: nil |
    /// [NAME…]}` fields.
    pub(crate) fn to_fields(&self) -> (Value, Value) {
        let caps = match self.super_root {
            true => Capability::ALL.to_vec(),
            false => self.caps.clone(),
        };
        let caps = Value::Array(caps.iter().map(|c| Value::from(c.name())).collect());
        let acls = match &self.acls {
            None => Value::Nil,
            Some(names) => Value::Array(names.iter().map(|n| Value::from(n.as_str())).collect()),
        };
        (caps, acls)
    }
}

/// The capabilities granted to the record at `at` (`(…, "caps")` →
/// `{caps: [NAME…]}`; unknown names grant nothing).
pub(crate) async fn caps_of(state: &ServerState, at: &Path) -> ApiResult<Vec<Capability>> {
    Ok(match state.store.get(&at.child("caps")).await? {
        Some(e) => match e.value.get("caps") {
            Some(Value::Array(names)) => names
                .iter()
                .filter_map(Value::as_str)
                .filter_map(Capability::parse)
                .collect(),
            _ => Vec::new(),
        },
        None => Vec::new(),
    })
}

/// Refuses unless `session` outranks `user` (`None`: no such user, nobody
/// to protect).
pub(crate) fn check(state: &ServerState, session: &Caller, user: Option<&Rank>) -> ApiResult {
    let Some(user) = user else {
        return Ok(());
    };
    match Rank::of_session(state, session).short_of(user) {
        None => Ok(()),
        // Why names the user's capabilities or ACLs: only for a session
        // that may read them anyway (read_auth).
        Some(why) if super::access::check_cap(state, session, Capability::ReadAuth).is_ok() => {
            Err(ApiError::new(
                ErrorCode::PermissionDenied,
                format!("refused: this session does not outrank the user ({why})"),
            ))
        }
        Some(_) => Err(ApiError::new(
            ErrorCode::PermissionDenied,
            "refused: this session does not outrank the user (acting on a user needs \
             every capability it holds and no less data access)",
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rank(caps: &[Capability], acls: Option<&[&str]>) -> Rank {
        Rank {
            super_root: caps.contains(&Capability::SuperRoot),
            caps: caps.to_vec(),
            acls: acls.map(|a| a.iter().map(|s| s.to_string()).collect()),
            domain: Path::root(),
        }
    }

    #[test]
    fn outranking_needs_every_capability_and_no_less_data_access() {
        use Capability::*;
        let boss = rank(&[SuperRoot], Some(&["ro"]));
        let admin = rank(&[ReadAuth, WriteAuth], None);
        let bound_admin = rank(&[ReadAuth, WriteAuth], Some(&["ro", "app"]));
        let keeper = rank(&[ManageKeycards], Some(&["ro"]));
        let plain = rank(&[], None);
        let ro = rank(&[], Some(&["ro"]));
        let rw = rank(&[], Some(&["rw"]));
        // Super-root outranks everyone, and only super-root outranks it.
        for u in [&boss, &admin, &keeper, &plain, &ro, &rw] {
            assert_eq!(boss.short_of(u), None);
        }
        for c in [&admin, &bound_admin, &keeper, &plain] {
            assert!(c.short_of(&boss).is_some());
        }
        // Capabilities.
        assert!(keeper.short_of(&admin).is_some());
        assert!(admin.short_of(&keeper).is_some());
        assert_eq!(admin.short_of(&plain), None);
        // Data access: bound callers only over users bound among their own.
        assert!(keeper.short_of(&plain).is_some());
        assert!(keeper.short_of(&rw).is_some());
        assert_eq!(keeper.short_of(&ro), None);
        assert_eq!(bound_admin.short_of(&ro), None);
        assert!(ro.short_of(&bound_admin).is_some());
        let mut elsewhere = ro.clone();
        elsewhere.domain = Path::parse("org.acme").expect("path");
        assert!(keeper.short_of(&elsewhere).is_some());
        assert_eq!(admin.short_of(&elsewhere), None);
    }

    #[test]
    fn a_token_keeps_no_more_than_its_ceiling() {
        use Capability::*;
        let mut caps = vec![ReadAuth, SuperRoot];
        Rank::clamp_caps(&mut caps, &[ReadAuth, WriteAuth]);
        assert_eq!(caps, vec![ReadAuth]);
        let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
        assert_eq!(Rank::clamp_acls(None, None), None);
        assert_eq!(Rank::clamp_acls(Some(s(&["a"])), None), Some(s(&["a"])));
        assert_eq!(Rank::clamp_acls(None, Some(&s(&["ro"]))), Some(s(&["ro"])));
        assert_eq!(
            Rank::clamp_acls(Some(s(&["ro", "rw"])), Some(&s(&["ro"]))),
            Some(s(&["ro"]))
        );
        assert_eq!(
            Rank::clamp_acls(Some(s(&["rw"])), Some(&s(&["ro"]))),
            Some(vec![])
        );
    }
}
