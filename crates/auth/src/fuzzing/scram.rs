//! `scram`: the server half of SCRAM-SHA-256 fed arbitrary client-first
//! and client-final messages, against a reference grammar written from
//! RFC 5802 §7 (restricted as DESIGN §2.1 says: `n`/`y` only, no `a=`, no
//! `m=`, an empty name allowed) and a reference computation of the proof.

use std::sync::OnceLock;

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use hmac::{Hmac, Mac};
use keycard_proto::{Msg, Value};
use sha2::{Digest, Sha256};

use crate::scram::{Scram, Verifier, MIN_ITERATIONS};
use crate::{AuthError, LoginCtx, Method, Password, SecretKey, Step, Verdict, USER};

const IDENT: &str = "user";
const PASSWORD: &str = "pencil";
const SALT: &[u8] = b"fuzzing salt";

fn hmac(key: &[u8], msg: &[u8]) -> [u8; 32] {
    let mut m = <Hmac<Sha256> as Mac>::new_from_slice(key).expect("HMAC takes any key");
    m.update(msg);
    m.finalize().into_bytes().into()
}

/// RFC 5802's keys for the fixed password, computed here once.
struct Keys {
    client_key: [u8; 32],
    stored_key: [u8; 32],
    server_key: [u8; 32],
    record: Value,
}

fn keys() -> &'static Keys {
    static KEYS: OnceLock<Keys> = OnceLock::new();
    KEYS.get_or_init(|| {
        let mut salted = [0u8; 32];
        pbkdf2::pbkdf2_hmac::<Sha256>(PASSWORD.as_bytes(), SALT, MIN_ITERATIONS, &mut salted);
        let client_key = hmac(&salted, b"Client Key");
        let stored_key: [u8; 32] = Sha256::digest(client_key).into();
        let server_key = hmac(&salted, b"Server Key");
        let verifier = Verifier::from_password(&Password::new(PASSWORD), SALT, MIN_ITERATIONS)
            .expect("a verifier");
        let text = verifier.to_text();
        assert_eq!(
            text,
            format!(
                "SCRAM-SHA-256${MIN_ITERATIONS}:{}${}:{}",
                B64.encode(SALT),
                B64.encode(stored_key),
                B64.encode(server_key)
            )
        );
        let scram = Scram::new(SecretKey::new([1; 32]), MIN_ITERATIONS);
        let request = Msg::new()
            .with("data", Msg::new().with("verifier", text.as_str()))
            .into_value();
        let record = match scram.set_record(&LoginCtx::default(), &USER, IDENT, &request) {
            Step::Done(r) => r,
            other => panic!("the verifier is refused: {other:?}"),
        };
        Keys {
            client_key,
            stored_key,
            server_key,
            record,
        }
    })
}

/// RFC 5802 `value-char` / `value-safe-char` without `,` (and `=`).
fn saslname_ok(s: &str) -> bool {
    let mut rest = s;
    while let Some(i) = rest.find(['=', '\0']) {
        match rest.get(i..i + 3) {
            Some("=2C") | Some("=3D") => rest = &rest[i + 3..],
            _ => return false,
        }
    }
    true
}

fn unescape(s: &str) -> String {
    s.replace("=2C", ",").replace("=3D", "=")
}

/// `attr-val = ALPHA "=" value`, `value = 1*value-char` (no NUL, no `,`).
fn extension_ok(a: &str) -> bool {
    let b = a.as_bytes();
    b.len() >= 3 && b[0].is_ascii_alphabetic() && b[1] == b'=' && !a[2..].contains('\0')
}

/// `printable` without `,`; keycard takes 1 to 256 of them.
fn nonce_ok(n: &str) -> bool {
    (1..=256).contains(&n.len()) && n.bytes().all(|b| (0x21..=0x7e).contains(&b) && b != b',')
}

/// What keycard accepts of a client-first-message: (GS2 header, bare
/// message, name, client nonce).
fn reference_first(msg: &str) -> Option<(String, String, String, String)> {
    let mut parts = msg.splitn(3, ',');
    let flag = parts.next()?;
    let authzid = parts.next()?;
    let bare = parts.next()?;
    if !(flag == "n" || flag == "y") || !authzid.is_empty() {
        return None;
    }
    let attrs: Vec<&str> = bare.split(',').collect();
    let name = attrs.first()?.strip_prefix("n=")?;
    let nonce = attrs.get(1)?.strip_prefix("r=")?;
    if !saslname_ok(name) || !nonce_ok(nonce) || !attrs[2..].iter().all(|a| extension_ok(a)) {
        return None;
    }
    Some((
        format!("{flag},,"),
        bare.to_owned(),
        unescape(name),
        nonce.to_owned(),
    ))
}

/// The target. The first byte picks the user (known, that is with the
/// record of the password here, or not, and the name the login is for:
/// `n=` may name it or be empty); the rest is the client-first-message, a newline,
/// then the client-final-message, in which `$c` stands for the correct
/// channel binding, `$r` for the combined nonce, and a final `,p=$p` for
/// the correct proof (`,p=$q` a wrong one).
pub fn fuzz_scram(data: &[u8]) {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let known = mode & 1 == 0;
    let ident = if mode & 2 == 0 { IDENT } else { "other" };
    let text = String::from_utf8_lossy(rest);
    let (first, last) = text.split_once('\n').unwrap_or((&text, ""));
    let keys = keys();
    let scram = Scram::new(SecretKey::new([1; 32]), MIN_ITERATIONS);
    let record = known.then_some(&keys.record);
    let request = Msg::new().with("data", first).into_value();
    let step = scram.login(&LoginCtx::default(), ident, &request, record);

    let expected = reference_first(first)
        .filter(|_| first.len() <= 4096)
        .filter(|(_, _, name, _)| name.is_empty() || name == ident);
    let (exchange, server_first) = match (step, &expected) {
        (Step::Send(reply, exchange), Some(_)) => {
            let reply = reply.into_value();
            let Some(Value::Str(server_first)) = reply.get("data") else {
                panic!("server-first is not a string: {reply:?}");
            };
            (exchange, server_first.clone())
        }
        (Step::Fail(AuthError::Malformed(_) | AuthError::Unsupported(_)), None) => return,
        (step, expected) => panic!("login {step:?}, reference {expected:?} for {first:?}"),
    };
    let Some((gs2, bare, _, cnonce)) = expected else {
        return;
    };

    // server-first-message = nonce "," salt "," iteration-count, whose
    // nonce extends the client's.
    let attrs: Vec<&str> = server_first.split(',').collect();
    assert_eq!(attrs.len(), 3, "{server_first:?}");
    let nonce = attrs[0].strip_prefix("r=").expect("r=");
    // (Printable without ','; the 256 bound is on the client's part.)
    assert!(nonce.len() > cnonce.len() && nonce.starts_with(&cnonce));
    assert!(nonce
        .bytes()
        .all(|b| (0x21..=0x7e).contains(&b) && b != b','));
    let salt = B64
        .decode(attrs[1].strip_prefix("s=").expect("s="))
        .expect("salt");
    assert_eq!(attrs[2], format!("i={MIN_ITERATIONS}"));
    if known {
        assert_eq!(salt, SALT);
    }

    let cbind = B64.encode(gs2.as_bytes());
    let mut last = last.replace("$c", &cbind).replace("$r", nonce);
    let mut proved = None;
    for (marker, right) in [(",p=$p", true), (",p=$q", false)] {
        if let Some(head) = last.strip_suffix(marker) {
            let auth_message = format!("{bare},{server_first},{head}");
            let signature = hmac(&keys.stored_key, auth_message.as_bytes());
            let mut proof: Vec<u8> = keys
                .client_key
                .iter()
                .zip(signature)
                .map(|(k, s)| k ^ s)
                .collect();
            if !right {
                proof[0] ^= 1;
            }
            last = format!("{head},p={}", B64.encode(&proof));
            proved = Some((right, auth_message));
            break;
        }
    }
    let verdict = exchange.next(&Msg::new().with("data", last.as_str()).into_value());

    // client-final-message = "c=" cbind "," "r=" nonce ["," extensions]
    // "," proof, with the proof 32 bytes.
    let parts: Vec<&str> = last.split(',').collect();
    let well_formed = last.len() <= 4096
        && parts.len() >= 3
        && parts[0].strip_prefix("c=") == Some(cbind.as_str())
        && parts[1].strip_prefix("r=") == Some(nonce)
        && parts[2..parts.len() - 1].iter().all(|a| extension_ok(a))
        && parts[parts.len() - 1]
            .strip_prefix("p=")
            .and_then(|p| B64.decode(p).ok())
            .is_some_and(|p| p.len() == 32);
    let right = proved.as_ref().map(|(r, _)| *r);
    match (verdict, well_formed, proved) {
        (Step::Done(v), true, Some((true, auth_message))) if known => {
            check_verdict(&v, ident, &auth_message, keys);
        }
        (Step::Fail(AuthError::Failed), true, _) => {
            // A well-formed message fails only on a wrong proof or a
            // stranger.
            assert!(!known || right != Some(true));
        }
        (Step::Fail(AuthError::Malformed(_)), false, _) => {}
        (step, ok, _) => {
            panic!("client-final {last:?}: got {step:?}, well formed {ok}, proof {right:?}")
        }
    }
}

fn check_verdict(v: &Verdict, ident: &str, auth_message: &str, keys: &Keys) {
    assert_eq!(v.user, ident);
    let server_signature = hmac(&keys.server_key, auth_message.as_bytes());
    let reply = v.reply.clone().expect("server-final").into_value();
    assert_eq!(
        reply.get("data").and_then(Value::as_str),
        Some(format!("v={}", B64.encode(server_signature)).as_str())
    );
    let session = hmac(
        &keys.client_key,
        &[b"keycard session key".as_slice(), auth_message.as_bytes()].concat(),
    );
    assert_eq!(
        v.session_key.as_ref().map(|k| *k.expose()),
        Some(session),
        "DESIGN §4.1's session key"
    );
}
