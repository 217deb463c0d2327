//! `auth_methods {ident}` → `{methods: [METHOD]}`: the method a client
//! should log in with, asked before logging in. Without it a client
//! guesses, and a SCRAM user whose client tried OPAQUE first saw "the
//! server could not be verified", which reads like a forged server.
//!
//! The answer must not tell a stranger which names exist, so every answer
//! has the same shape: one method. A known user gets the first of its
//! methods in the server's order (the current one, then the accepted
//! ones). Any other name — unknown, or a user none of whose methods is
//! accepted — gets one of the accepted methods whose refusal says nothing
//! of the name (the password methods, `cert`), picked by an HMAC
//! of the name under the server's secret (as SCRAM's mock salt is): the
//! same answer every time, and spread over the password methods as real
//! users' answers are. Every name costs the same store reads and the same
//! HMAC, so the time taken does not separate the two either. (A user whose
//! first method checks no secret, such as `_test`, is answered with it: a
//! login with it tells anyone as much.)

use hmac::{Hmac, Mac};
use keycard_auth::ClientRegistry;
use keycard_proto::{Msg, Path, Value};
use sha2::Sha256;

use super::login::user_name;
use super::str_field;
use crate::conn::Responder;
use crate::error::ApiResult;
use crate::state::{auth_root, record_path, AuthConfig, ServerState};

/// Answers `auth_methods`. Needs no login (it is what a client asks before
/// one); the names are those of the connection's root.
pub(super) async fn auth_methods(msg: &Value, r: &mut Responder) -> ApiResult {
    let state = r.conn().state.clone();
    let ident = user_name(str_field(msg, "ident")?)?;
    let base = r.conn().caller().root;
    let accepted = accepted(&state, &base).await?;
    let mut known = Vec::new();
    for m in &accepted {
        let at = base.join(&record_path(m, "user", ident));
        if state.store.get(&at).await?.is_some() {
            known.push(*m);
        }
    }
    let secret = crate::state::server_secret(state.store.as_ref()).await?;
    // The methods whose refusal does not tell a stranger whether the name
    // exists: a password method's, a client certificate's.
    let hiding: Vec<&'static str> = accepted
        .iter()
        .copied()
        .filter(|m| ClientRegistry::info(m).is_some_and(|i| i.needs_password || i.client_cert))
        .collect();
    let stranger = stranger_method(secret.expose(), &base, ident, &hiding);
    // One method, whoever asks about whom: a list of a user's several
    // methods would set real users apart from strangers.
    let answer = known.first().copied().or(stranger);
    let methods: Vec<Value> = answer.into_iter().map(Value::from).collect();
    r.reply(Msg::new().with("methods", Value::Array(methods)))
        .await;
    Ok(())
}

/// The loaded methods a login at `base` may use, in the server's order:
/// the current one, then the accepted ones; every method while no method
/// is current.
async fn accepted(state: &ServerState, base: &Path) -> ApiResult<Vec<&'static str>> {
    let cfg = if base.is_empty() {
        state.auth()
    } else {
        let entry = state.store.get(&base.join(&auth_root())).await?;
        AuthConfig::from_record(entry.map(|e| e.value).as_ref())
    };
    // A second factor is never the method to log in with.
    let first = |m: &&std::sync::Arc<dyn keycard_auth::Method>| !m.info().second_factor;
    Ok(match &cfg.current {
        None => state
            .methods
            .names()
            .filter_map(|m| state.methods.get(m))
            .filter(first)
            .map(|m| m.name())
            .collect(),
        Some(current) => std::iter::once(current)
            .chain(cfg.accept.iter())
            .filter_map(|m| state.methods.get(m))
            .filter(first)
            .map(|m| m.name())
            .collect(),
    })
}

/// The method answered for a name that is no user's: one of `choices`,
/// fixed by the name (and the domain) under `secret`; `None` when there
/// is none to choose from.
fn stranger_method(
    secret: &[u8; 32],
    base: &Path,
    ident: &str,
    choices: &[&'static str],
) -> Option<&'static str> {
    // HMAC takes a key of any length: this cannot fail.
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).ok()?;
    mac.update(b"keycard auth_methods\0");
    // The path's key is self-delimiting: key ++ name is unambiguous.
    mac.update(&base.to_key());
    mac.update(ident.as_bytes());
    let digest = mac.finalize().into_bytes();
    let mut first = [0u8; 8];
    first.copy_from_slice(&digest[..8]);
    let n = u64::try_from(choices.len()).ok().filter(|n| *n > 0)?;
    let i = usize::try_from(u64::from_be_bytes(first) % n).ok()?;
    choices.get(i).copied()
}

#[cfg(test)]
mod tests {
    use super::*;

    const CHOICES: [&str; 3] = ["scram-sha-256", "password", "opaque"];

    /// A stranger's answer is fixed by the name and the secret, one of the
    /// choices, and differs across names and servers.
    #[test]
    fn a_strangers_method_is_fixed_by_name_and_secret() {
        let root = Path::root();
        let pick = |secret: u8, name: &str| stranger_method(&[secret; 32], &root, name, &CHOICES);
        let mut per_name = std::collections::BTreeSet::new();
        for i in 0..60 {
            let name = format!("user-{i}");
            let m = pick(1, &name).expect("a choice");
            assert!(CHOICES.contains(&m));
            assert_eq!(pick(1, &name), Some(m), "stable");
            per_name.insert(m);
        }
        assert_eq!(per_name.len(), 3, "spread over the choices");
        let across_servers: std::collections::BTreeSet<_> =
            (0..30).filter_map(|s| pick(s, "alice")).collect();
        assert!(across_servers.len() > 1, "keyed by the secret");
        // A domain's names are not the server's.
        let domain = Path::parse("org.acme").expect("path");
        let differs = (0..30).any(|i| {
            let name = format!("user-{i}");
            stranger_method(&[1; 32], &domain, &name, &CHOICES) != pick(1, &name)
        });
        assert!(differs);
        assert_eq!(stranger_method(&[1; 32], &root, "alice", &[]), None);
    }
}
