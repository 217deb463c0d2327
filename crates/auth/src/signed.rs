//! Signed REST requests (DESIGN §4.1), sans-IO: the canonical string, the
//! `Authorization: Keycard …` header, signing, constant-time verification,
//! and the per-session replay guard (time window plus seen nonces). No
//! clock: callers pass `now`.
//!
//! ```text
//! Authorization: Keycard sid=SID, ts=UNIX_SECONDS, nonce=NONCE, sig=SIG
//! canonical = METHOD "\n" PATH "\n" QUERY "\n" SID "\n" TS "\n" NONCE "\n" hex(SHA-256(body))
//! SIG = base64url(HMAC-SHA256(K, canonical)), NONCE = base64url(16 random bytes)
//! ```
//!
//! `K` is the session key the login agreed (SCRAM: HMAC-SHA256(ClientKey,
//! "keycard session key" ‖ AuthMessage); OPAQUE: the first 32 bytes of its
//! session key) — never a long-term secret. docs/REST.md has a worked
//! example; the tests below check its vectors, which were computed
//! independently with Python's `hmac`.

use std::collections::{HashMap, VecDeque};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};

use crate::secret::SecretKey;

/// The header's scheme.
pub const SCHEME: &str = "Keycard";
/// Nonce length in bytes.
pub const NONCE_LEN: usize = 16;
/// Longest session id accepted in a header.
pub const MAX_SID: usize = 128;

/// Why a signed request is refused. Every variant answers `401`, and the
/// request changes nothing.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SignError {
    /// No `Authorization: Keycard …` header, or one that does not parse.
    #[error("malformed Authorization header: {0}")]
    Malformed(&'static str),
    /// `ts` is outside the allowed window around the server's clock.
    #[error("the request's time is outside the allowed window")]
    Stale,
    /// The nonce was already used by this session within the window.
    #[error("the nonce was already used")]
    Replayed,
    /// The signature does not match (wrong key, or any byte changed).
    #[error("bad signature")]
    BadSignature,
    /// The session signed more requests within the window than the guard
    /// remembers; retry shortly.
    #[error("too many signed requests in the time window")]
    Busy,
}

/// What is signed of an HTTP request.
#[derive(Clone, Copy, Debug)]
pub struct Request<'a> {
    /// The method (any case; signed in upper case).
    pub method: &'a str,
    /// The path as sent, percent-encoded, without the query.
    pub path: &'a str,
    /// The raw query string after `?` (empty if none).
    pub query: &'a str,
    /// The body (empty if none).
    pub body: &'a [u8],
}

/// A parsed `Authorization: Keycard …` header.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Authorization {
    /// The session (keycard) id.
    pub sid: String,
    /// Unix seconds when the client signed.
    pub ts: u64,
    /// The nonce.
    pub nonce: [u8; NONCE_LEN],
    /// The signature.
    pub sig: [u8; 32],
}

fn b64(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

fn unb64<const N: usize>(text: &str) -> Option<[u8; N]> {
    // Exact length first: no decoding of oversized input.
    if text.len() != (N * 4).div_ceil(3) {
        return None;
    }
    URL_SAFE_NO_PAD.decode(text).ok()?.try_into().ok()
}

/// The canonical string for `req` under (`sid`, `ts`, `nonce`).
pub fn canonical(req: &Request<'_>, sid: &str, ts: u64, nonce: &[u8; NONCE_LEN]) -> String {
    let hex = keycard_proto::hex::encode(&Sha256::digest(req.body));
    [
        req.method.to_ascii_uppercase().as_str(),
        req.path,
        req.query,
        sid,
        &ts.to_string(),
        &b64(nonce),
        &hex,
    ]
    .join("\n")
}

fn mac(key: &SecretKey, text: &str) -> Hmac<Sha256> {
    // HMAC takes keys of any length; 32 bytes cannot fail.
    let mut m = <Hmac<Sha256> as Mac>::new_from_slice(key.expose())
        .unwrap_or_else(|_| unreachable!("HMAC accepts any key length"));
    m.update(text.as_bytes());
    m
}

/// Signs `req` for session `sid` at `ts` with `nonce`.
pub fn sign(
    key: &SecretKey,
    req: &Request<'_>,
    sid: &str,
    ts: u64,
    nonce: [u8; NONCE_LEN],
) -> Authorization {
    let sig: [u8; 32] = mac(key, &canonical(req, sid, ts, &nonce))
        .finalize()
        .into_bytes()
        .into();
    Authorization {
        sid: sid.to_owned(),
        ts,
        nonce,
        sig,
    }
}

/// Whether `auth` is `req` signed with `key` (constant-time comparison).
/// Time and replay are the [`ReplayGuard`]'s business.
pub fn verify(key: &SecretKey, req: &Request<'_>, auth: &Authorization) -> Result<(), SignError> {
    mac(key, &canonical(req, &auth.sid, auth.ts, &auth.nonce))
        .verify_slice(&auth.sig)
        .map_err(|_| SignError::BadSignature)
}

impl Authorization {
    /// Parses the header's value: `Keycard sid=…, ts=…, nonce=…, sig=…`
    /// (each field once, in any order, spaces after commas optional).
    pub fn parse(value: &str) -> Result<Authorization, SignError> {
        if value.len() > 512 {
            return Err(SignError::Malformed("too long"));
        }
        let rest = value
            .strip_prefix(SCHEME)
            .and_then(|r| r.strip_prefix(' '))
            .ok_or(SignError::Malformed("the scheme must be `Keycard`"))?;
        let (mut sid, mut ts, mut nonce, mut sig) = (None, None, None, None);
        for part in rest.split(',') {
            let (k, v) = part
                .trim()
                .split_once('=')
                .ok_or(SignError::Malformed("fields are name=value"))?;
            let slot = match k {
                "sid" => &mut sid,
                "ts" => &mut ts,
                "nonce" => &mut nonce,
                "sig" => &mut sig,
                _ => return Err(SignError::Malformed("unknown field")),
            };
            if slot.replace(v).is_some() {
                return Err(SignError::Malformed("a field appears twice"));
            }
        }
        let sid = sid.ok_or(SignError::Malformed("missing sid"))?;
        if sid.is_empty()
            || sid.len() > MAX_SID
            || !sid
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            return Err(SignError::Malformed("bad sid"));
        }
        let ts = ts.ok_or(SignError::Malformed("missing ts"))?;
        if ts.is_empty() || ts.len() > 20 || !ts.bytes().all(|b| b.is_ascii_digit()) {
            return Err(SignError::Malformed("ts must be decimal Unix seconds"));
        }
        let ts = ts
            .parse()
            .map_err(|_| SignError::Malformed("ts must be decimal Unix seconds"))?;
        let nonce = unb64(nonce.ok_or(SignError::Malformed("missing nonce"))?)
            .ok_or(SignError::Malformed("nonce must be 16 bytes, base64url"))?;
        let sig = unb64(sig.ok_or(SignError::Malformed("missing sig"))?)
            .ok_or(SignError::Malformed("sig must be 32 bytes, base64url"))?;
        Ok(Authorization {
            sid: sid.to_owned(),
            ts,
            nonce,
            sig,
        })
    }

    /// The header's value.
    pub fn to_header(&self) -> String {
        format!(
            "{SCHEME} sid={}, ts={}, nonce={}, sig={}",
            self.sid,
            self.ts,
            b64(&self.nonce),
            b64(&self.sig)
        )
    }
}

/// One session's replay guard: a request's `ts` must be within `window`
/// seconds of `now`, and its nonce unseen within the window. Nonces older
/// than the window are forgotten (their requests are stale anyway), so the
/// guard holds at most `max` nonces.
#[derive(Debug)]
pub struct ReplayGuard {
    window: u64,
    max: usize,
    seen: HashMap<[u8; NONCE_LEN], u64>,
    order: VecDeque<(u64, [u8; NONCE_LEN])>,
}

impl ReplayGuard {
    /// A guard with a `window` in seconds (each side of `now`) that
    /// remembers at most `max` nonces.
    pub fn new(window: u64, max: usize) -> ReplayGuard {
        ReplayGuard {
            window,
            max,
            seen: HashMap::new(),
            order: VecDeque::new(),
        }
    }

    /// Admits a verified request's (`ts`, `nonce`) at `now` (Unix
    /// seconds), or says why not. Call it after [`verify`]: a forged
    /// request must not use up a nonce.
    pub fn admit(&mut self, now: u64, ts: u64, nonce: [u8; NONCE_LEN]) -> Result<(), SignError> {
        if now.abs_diff(ts) > self.window {
            return Err(SignError::Stale);
        }
        // Forget what the window no longer admits: a nonce remembered
        // since `t` can only be replayed with a ts near `t`.
        let horizon = now.saturating_sub(2 * self.window);
        while let Some(&(t, n)) = self.order.front() {
            if t >= horizon {
                break;
            }
            self.order.pop_front();
            if self.seen.get(&n) == Some(&t) {
                self.seen.remove(&n);
            }
        }
        if self.seen.contains_key(&nonce) {
            return Err(SignError::Replayed);
        }
        if self.seen.len() >= self.max {
            return Err(SignError::Busy);
        }
        self.seen.insert(nonce, now);
        self.order.push_back((now, nonce));
        Ok(())
    }

    /// Nonces remembered.
    pub fn len(&self) -> usize {
        self.seen.len()
    }

    /// Whether none is remembered.
    pub fn is_empty(&self) -> bool {
        self.seen.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> SecretKey {
        let mut k = [0u8; 32];
        for (i, b) in k.iter_mut().enumerate() {
            *b = i as u8;
        }
        SecretKey::new(k)
    }

    /// The vectors of docs/REST.md, computed with Python's hmac/hashlib.
    #[test]
    fn rest_md_vectors() {
        let doc = include_str!("../../../docs/REST.md");
        let mut n = 0;
        for block in doc.split("<!-- vector -->").skip(1) {
            let field = |name: &str| -> String {
                let line = block
                    .lines()
                    .map(|l| l.trim_start().trim_start_matches("- "))
                    .find(|l| l.starts_with(&format!("{name}:")))
                    .unwrap_or_else(|| panic!("vector field {name}"));
                let v = line.split_once(':').map(|x| x.1).unwrap_or_default().trim();
                v.trim_matches('`').to_owned()
            };
            let nonce_hex = field("nonce bytes");
            let mut nonce = [0u8; 16];
            for (i, b) in nonce.iter_mut().enumerate() {
                *b = u8::from_str_radix(&nonce_hex[2 * i..2 * i + 2], 16).expect("hex");
            }
            let body = field("body");
            let body = if body == "(none)" {
                String::new()
            } else {
                body
            };
            let req = Request {
                method: &field("method"),
                path: &field("path"),
                query: &field("query").replace("(none)", ""),
                body: body.as_bytes(),
            };
            let ts: u64 = field("ts").parse().expect("ts");
            let auth = sign(&key(), &req, &field("sid"), ts, nonce);
            assert_eq!(auth.to_header(), format!("Keycard {}", field("header")));
            assert_eq!(Authorization::parse(&auth.to_header()), Ok(auth.clone()));
            verify(&key(), &req, &auth).expect("verifies");
            n += 1;
        }
        assert_eq!(n, 3, "docs/REST.md has three vectors");
    }

    #[test]
    fn any_change_breaks_the_signature() {
        let req = Request {
            method: "PUT",
            path: "/kv/a",
            query: "x=1",
            body: b"{}",
        };
        let auth = sign(&key(), &req, "s1", 100, [7; 16]);
        verify(&key(), &req, &auth).expect("ok");
        let changed = [
            Request {
                method: "POST",
                ..req
            },
            Request {
                path: "/kv/b",
                ..req
            },
            Request {
                query: "x=2",
                ..req
            },
            Request {
                body: b"{ }",
                ..req
            },
        ];
        for r in changed {
            assert_eq!(verify(&key(), &r, &auth), Err(SignError::BadSignature));
        }
        for tamper in [
            Authorization {
                sid: "s2".into(),
                ..auth.clone()
            },
            Authorization {
                ts: 101,
                ..auth.clone()
            },
            Authorization {
                nonce: [8; 16],
                ..auth.clone()
            },
        ] {
            assert_eq!(verify(&key(), &req, &tamper), Err(SignError::BadSignature));
        }
        let other = SecretKey::new([9; 32]);
        assert_eq!(verify(&other, &req, &auth), Err(SignError::BadSignature));
    }

    #[test]
    fn malformed_headers_are_refused() {
        let good = sign(
            &key(),
            &Request {
                method: "GET",
                path: "/",
                query: "",
                body: b"",
            },
            "s1",
            1,
            [0; 16],
        )
        .to_header();
        assert!(Authorization::parse(&good).is_ok());
        for bad in [
            "".to_owned(),
            "Bearer x".to_owned(),
            "Keycard".to_owned(),
            "keycard sid=s1".to_owned(),
            good.replace("sid=s1", "sid="),
            good.replace("sid=s1", "sid=s 1"),
            good.replace("sid=s1", &format!("sid={}", "a".repeat(200))),
            good.replace("ts=1", "ts=-1"),
            good.replace("ts=1", "ts=1.5"),
            good.replace("ts=1", "ts=99999999999999999999999"),
            good.replace("nonce=", "nonce=A"),
            good.replace("sig=", "sig=A"),
            format!("{good}, sid=s2"),
            format!("{good}, extra=1"),
            good.replace(", sig=", ", sog="),
            format!("{good}{}", " ".repeat(600)),
        ] {
            assert!(
                matches!(Authorization::parse(&bad), Err(SignError::Malformed(_))),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn the_guard_refuses_stale_and_replayed_requests_and_stays_bounded() {
        let mut g = ReplayGuard::new(60, 3);
        assert_eq!(g.admit(1000, 1000, [1; 16]), Ok(()));
        assert_eq!(g.admit(1000, 1000, [1; 16]), Err(SignError::Replayed));
        assert_eq!(g.admit(1000, 939, [2; 16]), Err(SignError::Stale));
        assert_eq!(g.admit(1000, 1061, [2; 16]), Err(SignError::Stale));
        assert_eq!(g.admit(1000, 1060, [2; 16]), Ok(()));
        assert_eq!(g.admit(1001, 1000, [3; 16]), Ok(()));
        assert_eq!(g.admit(1001, 1000, [4; 16]), Err(SignError::Busy));
        // Later, the old nonces are forgotten; a replay of them is stale.
        assert_eq!(g.admit(1200, 1200, [4; 16]), Ok(()));
        assert_eq!(g.len(), 1);
        assert_eq!(g.admit(1200, 1000, [1; 16]), Err(SignError::Stale));
    }
}
