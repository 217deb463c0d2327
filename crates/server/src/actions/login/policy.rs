//! What a login decides, with no I/O and no clock: the shell in
//! `actions/login.rs` loads what these functions need (the domain's auth
//! configuration, the throttle's verdict, the method's verdict, the
//! lifetime settings, the user's factor list) and passes the time in;
//! they answer with a typed decision. Every rule here is a plain function
//! call in the tests below.

use std::time::Duration;

use keycard_auth::bouncer::Lifetime;
use keycard_auth::{AuthError, Verdict};
use keycard_proto::{ErrorCode, Value};

use crate::error::ApiError;
use crate::state::AuthConfig;

/// Longest list of further factors a user may be required to pass.
pub(crate) const MAX_FACTORS: usize = 8;

/// Whether a login by a method may start in a domain.
#[derive(Debug)]
pub(crate) enum Admission {
    /// Run it.
    Proceed,
    /// Run it against no record, so that it fails as a wrong credential
    /// does: the domain does not exist (or has no logins) or does not take
    /// this method, which is not for a stranger to learn (DESIGN §7).
    Blind,
    /// Refuse it, saying why (the server's own configuration is no
    /// secret).
    Refuse(ApiError),
}

/// The admission of a login by `method` (`None`: a token, accepted while
/// any method is current) under the auth configuration `cfg`;
/// `in_domain`: the login names a domain below the requester's root.
pub(crate) fn admit(cfg: &AuthConfig, in_domain: bool, method: Option<&str>) -> Admission {
    let accepted = method.is_none_or(|m| cfg.accepts(m));
    if in_domain && (cfg.current.is_none() || !accepted) {
        return Admission::Blind;
    }
    match (method, accepted) {
        (Some(m), false) => {
            let list = cfg
                .current
                .iter()
                .chain(cfg.accept.iter())
                .cloned()
                .collect::<Vec<_>>()
                .join(", ");
            Admission::Refuse(ApiError::new(
                ErrorCode::AuthMethod,
                format!("method {m:?} is not accepted here; the accepted methods are: {list}"),
            ))
        }
        _ => Admission::Proceed,
    }
}

/// Whether a login may carry its credential over this connection: one
/// that sends a secret that logs in by itself (`sends_secret`: a bearer
/// token, DistKV's `password`) is refused over plaintext (`secure`
/// false) from an address beyond loopback, unless the server allows it.
pub(crate) fn carriable(
    sends_secret: bool,
    secure: bool,
    peer: std::net::IpAddr,
    allowed: bool,
    what: &str,
) -> Result<(), ApiError> {
    if !sends_secret || secure || allowed || peer.to_canonical().is_loopback() {
        return Ok(());
    }
    Err(ApiError::new(
        ErrorCode::AuthMethod,
        format!(
            "a {what} login sends a secret that logs in by itself, and this connection is not \
             encrypted: it is refused from beyond loopback (connect over TLS; the server's \
             allow_plaintext_secrets lifts this)"
        ),
    ))
}

/// How the throttle's reservation goes on.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Pace {
    /// Go on now.
    Go,
    /// Go on after this wait (attempts under way fill a limit).
    Wait(Duration),
}

/// The throttle's answer (`Ok(wait)`: reserved; `Err(retry)`: refused) as
/// the login's: a refusal is `throttled` with its `retry_after`.
pub(crate) fn pace(reserved: Result<Duration, Duration>) -> Result<Pace, ApiError> {
    match reserved {
        Ok(w) if w.is_zero() => Ok(Pace::Go),
        Ok(w) => Ok(Pace::Wait(w)),
        Err(retry) => Err(ApiError::new(
            ErrorCode::Throttled,
            format!(
                "too many failed logins from this address; retry in {} s",
                retry.as_secs()
            ),
        )
        .with_retry_after(retry.as_secs().max(1))),
    }
}

/// The further factors a record's `(…, "factors")` node requires of a
/// login that began with method `first`, in order: `{factors:
/// [METHOD…]}`, `first` itself left out (a record copied from the
/// user's other one may name it). Anything malformed — not a list, a
/// non-string, an unknown method (`known`), more than [`MAX_FACTORS`] —
/// is a configuration no login can pass: `Err` (the login then fails as a
/// server error, never as a credential).
pub(crate) fn factors(
    node: Option<&Value>,
    first: &str,
    known: impl Fn(&str) -> bool,
) -> Result<Vec<String>, String> {
    let Some(node) = node else {
        return Ok(Vec::new());
    };
    let Some(Value::Array(items)) = node.get("factors") else {
        return Err("the user's factors node is not {factors: [METHOD…]}".into());
    };
    if items.len() > MAX_FACTORS {
        return Err(format!(
            "the user's factors list more than {MAX_FACTORS} methods"
        ));
    }
    items
        .iter()
        .filter(|i| i.as_str() != Some(first))
        .map(|i| match i.as_str() {
            Some(m) if known(m) => Ok(m.to_owned()),
            Some(m) => Err(format!("the user's factor {m:?} is not a loaded method")),
            None => Err("a factor is not a method's name".into()),
        })
        .collect()
}

/// What one factor's verdict leads to.
#[derive(Debug)]
pub(crate) enum Decision {
    /// The login failed (counted once, and told as any wrong credential).
    Refuse(AuthError),
    /// This factor passed; the client must pass `method` next, in the same
    /// exchange.
    Next(String),
    /// Every factor passed: grant the keycard.
    Grant,
}

/// Decides on a factor's verdict. `blind`: the login could not succeed
/// whatever the verdict; `user`: the name the first factor established
/// (`None` at the first factor), which every later factor must confirm;
/// `remaining`: the factors still to pass after this one.
pub(crate) fn decide(
    verdict: Result<&Verdict, &AuthError>,
    blind: bool,
    user: Option<&str>,
    remaining: &[String],
) -> Decision {
    let v = match verdict {
        Err(e) => return Decision::Refuse(e.clone()),
        Ok(_) if blind => return Decision::Refuse(AuthError::Failed),
        Ok(v) => v,
    };
    // A later factor vouches for the same user, or for nobody.
    if user.is_some_and(|u| u != v.user) {
        return Decision::Refuse(AuthError::Failed);
    }
    match remaining.first() {
        Some(next) => Decision::Next(next.clone()),
        None => Decision::Grant,
    }
}

/// Whether the client's answer starting the next factor is that
/// factor's: it must name the method `expected` (`method`), and the user
/// it names, if any (`ident`), must be `user`. Anything else fails as a
/// wrong credential (a skipped, repeated or foreign factor).
pub(crate) fn factor_message(
    method: Option<&str>,
    ident: Option<&str>,
    expected: &str,
    user: &str,
) -> Result<(), AuthError> {
    if method != Some(expected) || ident.is_some_and(|i| i != user) {
        return Err(AuthError::Failed);
    }
    Ok(())
}

/// What the lifetime of a login's keycard rests on, as loaded.
#[derive(Clone, Debug)]
pub(crate) struct LifetimeInputs<'a> {
    /// The keycard table's default.
    pub base: Lifetime,
    /// `[keycards.method_duration]` for the method, seconds.
    pub method_duration_s: Option<u64>,
    /// `[keycards] max_lifetime`, seconds: never exceeded.
    pub max_lifetime_s: u64,
    /// The domain's `(nil, "auth")` → `keycard: {duration, max_lifetime}`.
    pub domain: Option<&'a Value>,
    /// The user's `(…, "keycard")` → `{duration, max_lifetime}`.
    pub user: Option<&'a Value>,
    /// When the credential ends (Unix ms): a token login's token's
    /// expiry, a certificate login's certificate's `notAfter`.
    pub until: Option<u64>,
}

/// The lifetime of a login's keycard at `now_ms`: the configured one, the
/// method's, then the domain's and the user's own, never beyond the
/// configured maximum, nor beyond the token or the certificate the login
/// came with.
pub(crate) fn lifetime(i: &LifetimeInputs<'_>, now_ms: u64) -> Lifetime {
    let cap = i.max_lifetime_s.saturating_mul(1000);
    let mut life = i.base;
    if let Some(d) = i.method_duration_s {
        life.duration_ms = d.saturating_mul(1000);
    }
    for says in [i.domain, i.user].into_iter().flatten() {
        if let Some(d) = says.get("duration").and_then(Value::as_u64) {
            life.duration_ms = d.saturating_mul(1000);
        }
        if let Some(d) = says.get("max_lifetime").and_then(Value::as_u64) {
            life.max_lifetime_ms = d.saturating_mul(1000);
        }
    }
    life.max_lifetime_ms = life.max_lifetime_ms.min(cap);
    life.duration_ms = life.duration_ms.min(life.max_lifetime_ms);
    if let Some(until) = i.until {
        let left = until.saturating_sub(now_ms);
        life.duration_ms = life.duration_ms.min(left);
        life.max_lifetime_ms = life.max_lifetime_ms.min(left);
    }
    life
}

#[cfg(test)]
mod tests {
    use super::*;
    use keycard_proto::Msg;

    fn cfg(current: Option<&str>, accept: &[&str]) -> AuthConfig {
        AuthConfig {
            configured: true,
            current: current.map(str::to_owned),
            accept: accept.iter().map(|s| s.to_string()).collect(),
        }
    }

    #[test]
    fn admission_refuses_openly_at_the_root_and_blindly_in_a_domain() {
        let c = cfg(Some("scram-sha-256"), &["opaque"]);
        assert!(matches!(
            admit(&c, false, Some("opaque")),
            Admission::Proceed
        ));
        assert!(matches!(admit(&c, false, None), Admission::Proceed));
        match admit(&c, false, Some("_anon")) {
            Admission::Refuse(e) => {
                assert_eq!(e.code, ErrorCode::AuthMethod);
                assert!(e.text.contains("scram-sha-256, opaque"), "{}", e.text);
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(admit(&c, true, Some("_anon")), Admission::Blind));
        // A domain without logins: anything runs blind, a token too.
        let open = cfg(None, &[]);
        assert!(matches!(admit(&open, true, None), Admission::Blind));
        assert!(matches!(
            admit(&open, false, Some("_anon")),
            Admission::Proceed
        ));
    }

    #[test]
    fn the_throttle_answer_becomes_a_wait_or_a_refusal() {
        assert_eq!(pace(Ok(Duration::ZERO)).ok(), Some(Pace::Go));
        let w = Duration::from_millis(300);
        assert_eq!(pace(Ok(w)).ok(), Some(Pace::Wait(w)));
        let e = pace(Err(Duration::from_millis(200))).expect_err("refused");
        assert_eq!(e.code, ErrorCode::Throttled);
        // Never "retry after 0".
        assert_eq!(e.retry_after, Some(1));
    }

    fn v(user: &str) -> Verdict {
        Verdict::user(user)
    }

    #[test]
    fn a_verdict_grants_only_when_every_factor_passed_for_the_same_user() {
        let rest = vec!["_anon".to_owned()];
        assert!(matches!(
            decide(Ok(&v("joe")), false, None, &rest),
            Decision::Next(m) if m == "_anon"
        ));
        assert!(matches!(
            decide(Ok(&v("joe")), false, Some("joe"), &[]),
            Decision::Grant
        ));
        // Another user's factor, a failed factor, a blind login.
        assert!(matches!(
            decide(Ok(&v("eve")), false, Some("joe"), &[]),
            Decision::Refuse(AuthError::Failed)
        ));
        assert!(matches!(
            decide(Err(&AuthError::Failed), false, Some("joe"), &[]),
            Decision::Refuse(AuthError::Failed)
        ));
        assert!(matches!(
            decide(Ok(&v("joe")), true, None, &rest),
            Decision::Refuse(AuthError::Failed)
        ));
    }

    #[test]
    fn a_factor_message_must_be_the_expected_method_for_the_same_user() {
        assert!(factor_message(Some("_anon"), None, "_anon", "joe").is_ok());
        assert!(factor_message(Some("_anon"), Some("joe"), "_anon", "joe").is_ok());
        for (method, ident) in [
            (Some("_test"), None),
            (Some("_anon"), Some("eve")),
            (None, None),
        ] {
            assert_eq!(
                factor_message(method, ident, "_anon", "joe"),
                Err(AuthError::Failed)
            );
        }
    }

    #[test]
    fn factor_lists_parse_or_say_why_not() {
        let known = |m: &str| m == "_anon" || m == "_test";
        let known = |m: &str| known(m) || m == "scram-sha-256";
        assert_eq!(factors(None, "scram-sha-256", known), Ok(vec![]));
        let node = |items: Vec<Value>| Msg::new().with("factors", Value::Array(items)).into_value();
        assert_eq!(
            factors(
                Some(&node(vec![
                    "_anon".into(),
                    "scram-sha-256".into(),
                    "_test".into()
                ])),
                "scram-sha-256",
                known
            ),
            Ok(vec!["_anon".to_owned(), "_test".to_owned()])
        );
        assert!(factors(Some(&node(vec!["nope".into()])), "x", known).is_err());
        assert!(factors(Some(&node(vec![Value::from(3)])), "x", known).is_err());
        assert!(factors(Some(&Value::from("x")), "x", known).is_err());
        let long = vec![Value::from("_anon"); MAX_FACTORS + 1];
        assert!(factors(Some(&node(long)), "x", known).is_err());
    }

    #[test]
    fn lifetime_layers_config_method_domain_user_and_the_token() {
        let base = Lifetime {
            duration_ms: 3_600_000,
            max_lifetime_ms: 86_400_000,
        };
        let mut i = LifetimeInputs {
            base,
            method_duration_s: None,
            max_lifetime_s: 86_400,
            domain: None,
            user: None,
            until: None,
        };
        assert_eq!(lifetime(&i, 0), base);
        i.method_duration_s = Some(60);
        assert_eq!(lifetime(&i, 0).duration_ms, 60_000);
        let domain = Msg::new().with("duration", 120u64).into_value();
        let user = Msg::new()
            .with("max_lifetime", 1_000_000u64)
            .with("duration", 2_000_000u64)
            .into_value();
        i.domain = Some(&domain);
        assert_eq!(lifetime(&i, 0).duration_ms, 120_000);
        i.user = Some(&user);
        // Never beyond the configured maximum.
        assert_eq!(
            lifetime(&i, 0),
            Lifetime {
                duration_ms: 86_400_000,
                max_lifetime_ms: 86_400_000
            }
        );
        // A token's keycard ends with the token, time passed in.
        i.until = Some(1_000_000 + 5_000);
        assert_eq!(
            lifetime(&i, 1_000_000),
            Lifetime {
                duration_ms: 5_000,
                max_lifetime_ms: 5_000
            }
        );
        assert_eq!(lifetime(&i, 2_000_000).duration_ms, 0);
    }

    #[test]
    fn secrets_cross_plaintext_only_on_loopback_or_when_allowed() {
        let far: std::net::IpAddr = "192.0.2.7".parse().expect("ip");
        let near: std::net::IpAddr = "127.0.0.1".parse().expect("ip");
        let mapped: std::net::IpAddr = "::ffff:127.0.0.1".parse().expect("ip");
        let far6: std::net::IpAddr = "2001:db8::1".parse().expect("ip");
        for peer in [far, far6] {
            let e = carriable(true, false, peer, false, "token").expect_err("refused");
            assert_eq!(e.code, ErrorCode::AuthMethod);
            assert!(e.text.contains("allow_plaintext_secrets"), "{}", e.text);
            assert!(
                carriable(true, true, peer, false, "token").is_ok(),
                "over TLS"
            );
            assert!(
                carriable(true, false, peer, true, "token").is_ok(),
                "allowed"
            );
            assert!(
                carriable(false, false, peer, false, "scram").is_ok(),
                "no secret"
            );
        }
        for peer in [near, mapped, "::1".parse().expect("ip")] {
            assert!(
                carriable(true, false, peer, false, "token").is_ok(),
                "{peer}"
            );
        }
    }
}
