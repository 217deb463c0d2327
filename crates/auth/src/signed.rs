//! Signed REST requests (DESIGN §4.1), sans-IO: the canonical string, the
//! `Authorization: Keycard …` header, signing, constant-time verification,
//! and the per-session replay guard (time window plus seen nonces). No
//! clock: callers pass `now`.
//!
//! ```text
//! Authorization: Keycard v=2, sid=SID, ts=UNIX_SECONDS, nonce=NONCE, sig=SIG
//! canonical = METHOD "\n" PATH "\n" QUERY "\n" SID "\n" TS "\n" NONCE "\n" hex(SHA-256(body))
//!             "\n" IF_MATCH "\n" IF_NONE_MATCH
//! SIG = base64url(HMAC-SHA256(K, canonical)), NONCE = base64url(16 random bytes)
//! ```
//!
//! The first version (no `v=` in the header) signs the first seven lines
//! only, so it cannot say whether `If-Match` / `If-None-Match` were sent:
//! a v1 request that carries either is refused, whatever its signature.
//!
//! `K` is the session key the login agreed (SCRAM: HMAC-SHA256(ClientKey,
//! "keycard session key" ‖ AuthMessage); OPAQUE: the first 32 bytes of its
//! session key) — never a long-term secret. docs/REST.md has a worked
//! example; the tests below check its vectors, which were computed
//! independently with Python's `hmac`.

use std::collections::hash_map::Entry;
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
    /// A v1 signature on a request with `If-Match` or `If-None-Match`,
    /// which v1 does not sign (anyone on the path could have added it, or
    /// stripped another).
    #[error(
        "If-Match and If-None-Match are signed only by a v=2 signature \
         (Authorization: Keycard v=2, …); this request has a v1 signature"
    )]
    UnsignedPrecondition,
}

/// Which canonical string a signature covers (`v=` in the header).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Version {
    /// No `v=`: the seven lines up to the body's digest. Kept for the
    /// clients written before v2, on requests without preconditions.
    V1,
    /// `v=2`: the seven lines, then the `If-Match` and `If-None-Match`
    /// values (empty when absent).
    V2,
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
    /// The `If-Match` header's value without surrounding whitespace (empty
    /// if none).
    pub if_match: &'a str,
    /// The `If-None-Match` header's value without surrounding whitespace
    /// (empty if none).
    pub if_none_match: &'a str,
}

/// A parsed `Authorization: Keycard …` header.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Authorization {
    /// Which canonical string `sig` covers.
    pub version: Version,
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
    // Decoded on the stack (this runs for every signed request); the same
    // engine as `b64`, so the same texts are accepted.
    let mut buf = [0u8; 36];
    let out = buf.get_mut(..N + 3)?;
    match URL_SAFE_NO_PAD.decode_slice(text, out) {
        Ok(n) if n == N => out[..N].try_into().ok(),
        _ => None,
    }
}

/// The lowercase hex SHA-256 of the empty body (most signed requests).
const EMPTY_BODY_SHA256: &[u8; 64] =
    b"e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

/// Feeds the canonical string of `version` for `req` under (`sid`, `ts`,
/// `nonce`) to `out`, piece by piece, without allocating: the HMAC takes it
/// as it comes, and [`canonical`] collects the same pieces.
fn write_canonical(
    version: Version,
    req: &Request<'_>,
    sid: &str,
    ts: u64,
    nonce: &[u8; NONCE_LEN],
    out: &mut impl FnMut(&[u8]),
) {
    // 1. The method in upper case (ASCII letters only, as
    // `str::to_ascii_uppercase`).
    for chunk in req.method.as_bytes().chunks(32) {
        let mut up = [0u8; 32];
        let up = &mut up[..chunk.len()];
        up.copy_from_slice(chunk);
        up.make_ascii_uppercase();
        out(up);
    }
    out(b"\n");
    // 2.–4. The path, the query and the session id as they are.
    out(req.path.as_bytes());
    out(b"\n");
    out(req.query.as_bytes());
    out(b"\n");
    out(sid.as_bytes());
    out(b"\n");
    // 5. ts in decimal.
    let mut digits = [0u8; 20];
    let mut at = digits.len();
    let mut n = ts;
    loop {
        at -= 1;
        digits[at] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out(&digits[at..]);
    out(b"\n");
    // 6. The nonce, base64url without padding (22 characters).
    let mut text = [0u8; 24];
    let len = URL_SAFE_NO_PAD
        .encode_slice(nonce, &mut text)
        .unwrap_or_else(|_| unreachable!("16 bytes are 22 base64 characters"));
    out(&text[..len]);
    out(b"\n");
    // 7. The body's SHA-256 in lowercase hex.
    if req.body.is_empty() {
        out(EMPTY_BODY_SHA256);
    } else {
        out(&hex64(&Sha256::digest(req.body).into()));
    }
    // 8.–9. v2: the preconditions, which change what a write does. (No
    // line can hold a newline: HTTP forbids them in the path, the query
    // and header values, so the lines cannot be shifted.)
    if version == Version::V2 {
        out(b"\n");
        out(req.if_match.as_bytes());
        out(b"\n");
        out(req.if_none_match.as_bytes());
    }
}

/// Lowercase hex of a 32-byte digest.
fn hex64(digest: &[u8; 32]) -> [u8; 64] {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut hex = [0u8; 64];
    for (i, b) in digest.iter().enumerate() {
        hex[2 * i] = DIGITS[usize::from(b >> 4)];
        hex[2 * i + 1] = DIGITS[usize::from(b & 0x0f)];
    }
    hex
}

/// The canonical string of `version` for `req` under (`sid`, `ts`,
/// `nonce`).
pub fn canonical(
    version: Version,
    req: &Request<'_>,
    sid: &str,
    ts: u64,
    nonce: &[u8; NONCE_LEN],
) -> String {
    let mut bytes = Vec::with_capacity(
        req.method.len()
            + req.path.len()
            + req.query.len()
            + req.if_match.len()
            + req.if_none_match.len()
            + 128,
    );
    write_canonical(version, req, sid, ts, nonce, &mut |piece| {
        bytes.extend_from_slice(piece)
    });
    // Every piece is UTF-8 (the request's strings, ASCII digits, base64
    // and hex), so this never replaces anything.
    String::from_utf8(bytes).unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned())
}

/// The HMAC of the canonical string, fed piece by piece.
fn mac(
    version: Version,
    key: &SecretKey,
    req: &Request<'_>,
    sid: &str,
    ts: u64,
    nonce: &[u8; NONCE_LEN],
) -> Hmac<Sha256> {
    // HMAC takes keys of any length; 32 bytes cannot fail.
    let mut m = <Hmac<Sha256> as Mac>::new_from_slice(key.expose())
        .unwrap_or_else(|_| unreachable!("HMAC accepts any key length"));
    write_canonical(version, req, sid, ts, nonce, &mut |piece| m.update(piece));
    m
}

/// Signs `req` for session `sid` at `ts` with `nonce` (v2: the
/// preconditions included).
pub fn sign(
    key: &SecretKey,
    req: &Request<'_>,
    sid: &str,
    ts: u64,
    nonce: [u8; NONCE_LEN],
) -> Authorization {
    sign_version(Version::V2, key, req, sid, ts, nonce)
}

/// Signs `req` with the canonical string of `version` (v1 only to check
/// what old clients send).
pub fn sign_version(
    version: Version,
    key: &SecretKey,
    req: &Request<'_>,
    sid: &str,
    ts: u64,
    nonce: [u8; NONCE_LEN],
) -> Authorization {
    let sig: [u8; 32] = mac(version, key, req, sid, ts, &nonce)
        .finalize()
        .into_bytes()
        .into();
    Authorization {
        version,
        sid: sid.to_owned(),
        ts,
        nonce,
        sig,
    }
}

/// Whether `auth` is `req` signed with `key` (constant-time comparison),
/// by the canonical string of its version; a v1 signature covers no
/// precondition, so a request with one is refused. Time and replay are
/// the [`ReplayGuard`]'s business.
pub fn verify(key: &SecretKey, req: &Request<'_>, auth: &Authorization) -> Result<(), SignError> {
    if auth.version == Version::V1 && !(req.if_match.is_empty() && req.if_none_match.is_empty()) {
        return Err(SignError::UnsignedPrecondition);
    }
    mac(auth.version, key, req, &auth.sid, auth.ts, &auth.nonce)
        .verify_slice(&auth.sig)
        .map_err(|_| SignError::BadSignature)
}

impl Authorization {
    /// Parses the header's value: `Keycard v=2, sid=…, ts=…, nonce=…,
    /// sig=…` (each field once, in any order, spaces after commas
    /// optional; without `v`, a v1 signature).
    pub fn parse(value: &str) -> Result<Authorization, SignError> {
        if value.len() > 512 {
            return Err(SignError::Malformed("too long"));
        }
        let rest = value
            .strip_prefix(SCHEME)
            .and_then(|r| r.strip_prefix(' '))
            .ok_or(SignError::Malformed("the scheme must be `Keycard`"))?;
        let (mut version, mut sid, mut ts, mut nonce, mut sig) = (None, None, None, None, None);
        for part in rest.split(',') {
            let (k, v) = part
                .trim()
                .split_once('=')
                .ok_or(SignError::Malformed("fields are name=value"))?;
            let slot = match k {
                "v" => &mut version,
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
        let version = match version {
            None => Version::V1,
            Some("2") => Version::V2,
            Some(_) => return Err(SignError::Malformed("unknown version: v must be 2")),
        };
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
            version,
            sid: sid.to_owned(),
            ts,
            nonce,
            sig,
        })
    }

    /// The header's value.
    pub fn to_header(&self) -> String {
        let v = match self.version {
            Version::V1 => "",
            Version::V2 => "v=2, ",
        };
        format!(
            "{SCHEME} {v}sid={}, ts={}, nonce={}, sig={}",
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
///
/// Forgetting is amortised O(1) and bounded per call: each `admit` drops
/// at most [`PRUNE_STEP`] records that fell behind the horizon (each record
/// is dropped once, and a call adds at most one), a remembered nonce older
/// than the horizon counts as forgotten, and only a guard at its maximum
/// drops more — until there is room. (Dropping everything behind the
/// horizon at once cost up to `max` removals in one call, under the
/// caller's lock, after a burst followed by a quiet spell.)
#[derive(Debug)]
pub struct ReplayGuard {
    window: u64,
    max: usize,
    /// No `ts` before this is admitted (the guard's memory began then:
    /// a session kept across a restart lost what it had seen).
    floor: u64,
    seen: HashMap<[u8; NONCE_LEN], u64>,
    order: VecDeque<(u64, [u8; NONCE_LEN])>,
}

/// Most records behind the horizon one `admit` forgets (when the guard is
/// not full).
pub const PRUNE_STEP: usize = 4;

impl ReplayGuard {
    /// This guard admitting no `ts` before `secs`: for a session whose
    /// seen nonces were lost (kept across a restart), a request signed
    /// before its memory began could be a replay.
    pub fn since(mut self, secs: u64) -> ReplayGuard {
        self.floor = secs;
        self
    }

    /// A guard with a `window` in seconds (each side of `now`) that
    /// remembers at most `max` nonces.
    pub fn new(window: u64, max: usize) -> ReplayGuard {
        ReplayGuard {
            window,
            max,
            floor: 0,
            seen: HashMap::new(),
            order: VecDeque::new(),
        }
    }

    /// Forgets records from before `horizon`, oldest first: at most `step`
    /// of them, and none once fewer than `room_below` nonces are held.
    fn forget(&mut self, horizon: u64, step: usize, room_below: usize) {
        for _ in 0..step {
            if self.seen.len() < room_below {
                return;
            }
            match self.order.front() {
                Some(&(t, n)) if t < horizon => {
                    self.order.pop_front();
                    // A nonce admitted again since has a newer record.
                    if self.seen.get(&n) == Some(&t) {
                        self.seen.remove(&n);
                    }
                }
                _ => return,
            }
        }
    }

    /// Admits a verified request's (`ts`, `nonce`) at `now` (Unix
    /// seconds), or says why not. Call it after [`verify`]: a forged
    /// request must not use up a nonce.
    pub fn admit(&mut self, now: u64, ts: u64, nonce: [u8; NONCE_LEN]) -> Result<(), SignError> {
        if now.abs_diff(ts) > self.window || ts < self.floor {
            return Err(SignError::Stale);
        }
        // What the window no longer admits is forgotten: a nonce
        // remembered since `t` can only be replayed with a ts near `t`.
        let horizon = now.saturating_sub(2 * self.window);
        self.forget(horizon, PRUNE_STEP, 0);
        let full = self.seen.len() >= self.max;
        match self.seen.entry(nonce) {
            Entry::Occupied(e) if *e.get() >= horizon => return Err(SignError::Replayed),
            // Remembered from before the horizon: forgotten, reuse it.
            Entry::Occupied(mut e) => {
                e.insert(now);
            }
            Entry::Vacant(v) if !full => {
                v.insert(now);
            }
            Entry::Vacant(_) => {
                // Full: forget what is behind the horizon until there is
                // room (each record once, so still amortised O(1)).
                self.forget(horizon, usize::MAX, self.max);
                if self.seen.len() >= self.max {
                    return Err(SignError::Busy);
                }
                self.seen.insert(nonce, now);
            }
        }
        self.order.push_back((now, nonce));
        Ok(())
    }

    /// Nonces remembered (including up to a few from before the horizon
    /// that are not dropped yet; they no longer refuse anything).
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

    /// The vectors of docs/REST.md, computed with Python's hmac/hashlib:
    /// v2 ones, and the v1 ones old clients still send.
    #[test]
    fn rest_md_vectors() {
        let doc = include_str!("../../../docs/REST.md");
        let mut n = [0, 0];
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
            let none = |v: String| if v == "(none)" { String::new() } else { v };
            let body = none(field("body"));
            let version = match field("version").as_str() {
                "1" => Version::V1,
                "2" => Version::V2,
                v => panic!("version {v}"),
            };
            // v1 vectors have no precondition lines (v1 signs none).
            let (if_match, if_none_match) = match version {
                Version::V1 => (String::new(), String::new()),
                Version::V2 => (none(field("if-match")), none(field("if-none-match"))),
            };
            let req = Request {
                method: &field("method"),
                path: &field("path"),
                query: &none(field("query")),
                body: body.as_bytes(),
                if_match: &if_match,
                if_none_match: &if_none_match,
            };
            let ts: u64 = field("ts").parse().expect("ts");
            let auth = sign_version(version, &key(), &req, &field("sid"), ts, nonce);
            assert_eq!(auth.to_header(), format!("Keycard {}", field("header")));
            assert_eq!(Authorization::parse(&auth.to_header()), Ok(auth.clone()));
            verify(&key(), &req, &auth).expect("verifies");
            n[usize::from(version == Version::V2)] += 1;
        }
        assert_eq!(n, [3, 4], "docs/REST.md has three v1 and four v2 vectors");
    }

    #[test]
    fn any_change_breaks_the_signature() {
        let req = Request {
            method: "PUT",
            path: "/kv/a",
            query: "x=1",
            body: b"{}",
            if_match: "\"5\"",
            if_none_match: "",
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
            // The precondition stripped, changed, moved or joined by another.
            Request {
                if_match: "",
                ..req
            },
            Request {
                if_match: "\"6\"",
                ..req
            },
            Request {
                if_match: "",
                if_none_match: "\"5\"",
                ..req
            },
            Request {
                if_none_match: "*",
                ..req
            },
        ];
        for r in changed {
            assert_eq!(verify(&key(), &r, &auth), Err(SignError::BadSignature));
        }
        // Added to a request signed without one.
        let bare = Request {
            if_match: "",
            ..req
        };
        let signed_bare = sign(&key(), &bare, "s1", 100, [7; 16]);
        verify(&key(), &bare, &signed_bare).expect("ok");
        for r in [
            req,
            Request {
                if_none_match: "*",
                ..bare
            },
        ] {
            assert_eq!(
                verify(&key(), &r, &signed_bare),
                Err(SignError::BadSignature)
            );
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
        // Relabelled v2 → v1: v1 covers no precondition.
        let downgraded = Authorization {
            version: Version::V1,
            ..auth.clone()
        };
        assert_eq!(
            verify(&key(), &req, &downgraded),
            Err(SignError::UnsignedPrecondition)
        );
        let other = SecretKey::new([9; 32]);
        assert_eq!(verify(&other, &req, &auth), Err(SignError::BadSignature));
        // Without preconditions, a v2 signature relabelled v1 (or the
        // other way) does not verify: the canonical strings differ.
        let v1 = sign_version(Version::V1, &key(), &bare, "s1", 100, [7; 16]);
        verify(&key(), &bare, &v1).expect("v1 without preconditions");
        for relabelled in [
            Authorization {
                version: Version::V1,
                ..signed_bare.clone()
            },
            Authorization {
                version: Version::V2,
                ..v1
            },
        ] {
            assert_eq!(
                verify(&key(), &bare, &relabelled),
                Err(SignError::BadSignature)
            );
        }
    }

    /// A v1 signature covers no precondition: a request carrying one is
    /// refused even when its v1 signature is right.
    #[test]
    fn a_v1_signature_with_a_precondition_is_refused() {
        for (if_match, if_none_match) in [("\"5\"", ""), ("", "*"), ("\"5\"", "*")] {
            let req = Request {
                method: "PUT",
                path: "/kv/a",
                query: "",
                body: b"{}",
                if_match,
                if_none_match,
            };
            let v1 = sign_version(Version::V1, &key(), &req, "s1", 100, [7; 16]);
            assert_eq!(
                verify(&key(), &req, &v1),
                Err(SignError::UnsignedPrecondition)
            );
            let v2 = sign(&key(), &req, "s1", 100, [7; 16]);
            assert!(v2.to_header().starts_with("Keycard v=2, sid=s1, "));
            verify(&key(), &req, &v2).expect("v2 signs them");
        }
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
                if_match: "",
                if_none_match: "",
            },
            "s1",
            1,
            [0; 16],
        )
        .to_header();
        assert_eq!(
            Authorization::parse(&good).map(|a| a.version),
            Ok(Version::V2)
        );
        assert_eq!(
            Authorization::parse(&good.replace("v=2, ", "")).map(|a| a.version),
            Ok(Version::V1)
        );
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
            good.replace("v=2", "v=3"),
            good.replace("v=2", "v=1"),
            good.replace("v=2", "v="),
            good.replace("v=2", "v=02"),
            format!("{good}, v=2"),
        ] {
            assert!(
                matches!(Authorization::parse(&bad), Err(SignError::Malformed(_))),
                "{bad:?}"
            );
        }
    }

    /// A guard whose memory began at `since` takes nothing signed before.
    #[test]
    fn a_guard_since_a_restart_takes_nothing_signed_before_it() {
        let mut g = ReplayGuard::new(60, 100).since(1_000);
        assert_eq!(g.admit(1_010, 999, [1; 16]), Err(SignError::Stale));
        assert_eq!(g.admit(1_010, 1_000, [2; 16]), Ok(()));
        assert_eq!(g.admit(1_010, 1_000, [2; 16]), Err(SignError::Replayed));
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

    /// The canonical string as it was first written (one `String` per
    /// piece, `format!` per hex digit), the reference for the streaming one.
    fn canonical_reference(
        version: Version,
        req: &Request<'_>,
        sid: &str,
        ts: u64,
        nonce: &[u8; NONCE_LEN],
    ) -> String {
        let hex = keycard_proto::hex::encode(&Sha256::digest(req.body));
        let ts = ts.to_string();
        let nonce = b64(nonce);
        let mut lines = vec![
            req.method.to_ascii_uppercase(),
            req.path.to_owned(),
            req.query.to_owned(),
            sid.to_owned(),
            ts,
            nonce,
            hex,
        ];
        if version == Version::V2 {
            lines.push(req.if_match.to_owned());
            lines.push(req.if_none_match.to_owned());
        }
        lines.join("\n")
    }

    /// The old `unb64`, the reference for the one that decodes on the stack.
    fn unb64_reference<const N: usize>(text: &str) -> Option<[u8; N]> {
        if text.len() != (N * 4).div_ceil(3) {
            return None;
        }
        URL_SAFE_NO_PAD.decode(text).ok()?.try_into().ok()
    }

    #[test]
    fn the_empty_body_digest_is_sha256_of_nothing() {
        assert_eq!(
            &EMPTY_BODY_SHA256[..],
            keycard_proto::hex::encode(&Sha256::digest(b"")).as_bytes()
        );
    }

    proptest::proptest! {
        /// The streamed canonical string (and so the HMAC input) is the
        /// reference's, byte for byte, for any method (lower case,
        /// non-ASCII, longer than a chunk), path, query, sid, ts and body.
        #[test]
        fn canonical_matches_the_reference(
            method in "[a-zA-Z]{0,40}|[a-zé\u{1F600}]{0,40}",
            path in "\\PC{0,60}",
            query in "\\PC{0,30}",
            sid in "[a-zA-Z0-9_-]{0,40}",
            ts in proptest::prelude::any::<u64>(),
            nonce in proptest::prelude::any::<[u8; 16]>(),
            body in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..200),
            if_match in "|\"[0-9]{1,20}\"|\\PC{0,20}",
            if_none_match in "|\\*|\\PC{0,20}",
            v2 in proptest::prelude::any::<bool>(),
        ) {
            let version = if v2 { Version::V2 } else { Version::V1 };
            // A v1 signature is checked only without preconditions.
            let (if_match, if_none_match) = if v2 {
                (if_match.as_str(), if_none_match.as_str())
            } else {
                ("", "")
            };
            let req = Request {
                method: &method,
                path: &path,
                query: &query,
                body: &body,
                if_match,
                if_none_match,
            };
            let want = canonical_reference(version, &req, &sid, ts, &nonce);
            proptest::prop_assert_eq!(canonical(version, &req, &sid, ts, &nonce), want.clone());
            let key = SecretKey::new([5; 32]);
            let mut m = <Hmac<Sha256> as Mac>::new_from_slice(key.expose()).expect("key");
            m.update(want.as_bytes());
            let sig: [u8; 32] = m.finalize().into_bytes().into();
            let auth = sign_version(version, &key, &req, &sid, ts, nonce);
            proptest::prop_assert_eq!(auth.sig, sig);
            proptest::prop_assert_eq!(verify(&key, &req, &auth), Ok(()));
        }

        /// Stack decoding accepts exactly what the old decoder accepted
        /// (non-canonical trailing bits, padding, the standard alphabet and
        /// wrong lengths are all refused), with the same bytes.
        #[test]
        fn unb64_matches_the_reference(text in "[A-Za-z0-9_+/=-]{20,45}") {
            proptest::prop_assert_eq!(unb64::<16>(&text), unb64_reference::<16>(&text));
            proptest::prop_assert_eq!(unb64::<32>(&text), unb64_reference::<32>(&text));
        }

        /// The guard with bounded forgetting answers every request as one
        /// that forgets everything behind the horizon at once (the first
        /// version), on a clock that does not go back.
        #[test]
        fn the_guard_answers_as_the_eager_one(
            steps in proptest::collection::vec(
                (
                    proptest::prop_oneof![3 => proptest::strategy::Just(0u64), 1 => 0u64..60],
                    -25i64..25,
                    0u8..40,
                ),
                1..600,
            ),
            max in 1usize..30,
        ) {
            let mut g = ReplayGuard::new(10, max);
            let mut eager = EagerGuard::new(10, max);
            let mut now = 1000;
            for (dt, skew, n) in steps {
                now += dt;
                let ts = now.saturating_add_signed(skew);
                let nonce = [n; 16];
                proptest::prop_assert_eq!(g.admit(now, ts, nonce), eager.admit(now, ts, nonce));
                proptest::prop_assert!(g.len() <= max);
            }
        }
    }

    /// The first version of the guard: forgets everything behind the
    /// horizon on every call.
    struct EagerGuard {
        window: u64,
        max: usize,
        seen: HashMap<[u8; NONCE_LEN], u64>,
        order: VecDeque<(u64, [u8; NONCE_LEN])>,
    }

    impl EagerGuard {
        fn new(window: u64, max: usize) -> EagerGuard {
            EagerGuard {
                window,
                max,
                seen: HashMap::new(),
                order: VecDeque::new(),
            }
        }

        fn admit(&mut self, now: u64, ts: u64, nonce: [u8; NONCE_LEN]) -> Result<(), SignError> {
            if now.abs_diff(ts) > self.window {
                return Err(SignError::Stale);
            }
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
    }

    /// After a burst that fills the guard and a quiet spell past the
    /// horizon, no single request pays for forgetting the burst.
    #[test]
    fn forgetting_a_burst_is_spread_over_requests() {
        let max = 10_000;
        let mut g = ReplayGuard::new(60, max);
        for i in 0..max as u32 {
            let mut n = [0u8; 16];
            n[..4].copy_from_slice(&i.to_be_bytes());
            assert_eq!(g.admit(1000, 1000, n), Ok(()));
        }
        assert_eq!(g.admit(1000, 1000, [0xff; 16]), Err(SignError::Busy));
        // Two minutes later: each request forgets a few of the old nonces.
        let later = 1000 + 2 * 60 + 1;
        for i in 0..100u8 {
            let before = g.order.len();
            assert_eq!(g.admit(later, later, [i; 16]), Ok(()));
            assert!(before + 1 - g.order.len() <= PRUNE_STEP);
        }
        // An old nonce is not a replay any more, and the guard stays
        // within its bound while it forgets.
        let mut old = [0u8; 16];
        old[..4].copy_from_slice(&9_999u32.to_be_bytes());
        assert_eq!(g.admit(later, later, old), Ok(()));
        assert!(g.len() <= max);
        for i in 0..max as u32 {
            let mut n = [1u8; 16];
            n[..4].copy_from_slice(&i.to_be_bytes());
            if g.admit(later, later, n).is_err() {
                break;
            }
        }
        assert!(g.len() <= max);
        assert!(g.order.iter().all(|&(t, _)| t == later));
    }
}
