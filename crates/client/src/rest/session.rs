//! A REST session and the signing of its requests (version 2, through
//! `keycard_auth::signed`), sans-IO: the time and the nonce are arguments.
//! Also the `/kv/…` form of a path.

use keycard_auth::signed::{self, Request, Version};
use keycard_auth::SecretKey;
use keycard_proto::Path;

/// A logged-in REST session: its id (a keycard id) and the session key
/// `K` the login agreed. Both are what a client keeps between requests.
/// It has no `Debug`: the id alone signs nothing, but a session is not
/// something to print whole.
#[derive(Clone)]
pub struct Session {
    /// The session (keycard) id.
    pub sid: String,
    /// The session key that signs its requests.
    pub key: SecretKey,
}

/// What a signature covers of a request besides its method, target and
/// body: the preconditions a `/kv` write obeys.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Precondition {
    /// Unconditional.
    #[default]
    None,
    /// `If-Match: "TOCK"`: only if the node's last change is that tock.
    IfMatch(u64),
    /// `If-None-Match: *`: only if the node holds no value.
    IfNoneMatch,
}

impl Precondition {
    /// The header field it is sent as, if any.
    pub fn field(self) -> Option<(&'static str, String)> {
        match self {
            Precondition::None => None,
            Precondition::IfMatch(tock) => Some(("if-match", format!("\"{tock}\""))),
            Precondition::IfNoneMatch => Some(("if-none-match", "*".to_owned())),
        }
    }
}

impl Session {
    /// The `Authorization` value (version 2) for `method target` with
    /// `body` and the `If-Match` / `If-None-Match` values given (`""` when
    /// not sent), at `ts` (Unix seconds) with `nonce`.
    #[allow(clippy::too_many_arguments)]
    pub fn authorization(
        &self,
        method: &str,
        target: &str,
        body: &[u8],
        if_match: &str,
        if_none_match: &str,
        ts: u64,
        nonce: [u8; signed::NONCE_LEN],
    ) -> String {
        self.authorization_version(
            Version::V2,
            method,
            target,
            body,
            if_match,
            if_none_match,
            ts,
            nonce,
        )
    }

    /// [`Session::authorization`] with the canonical string of `version`
    /// (version 1 only to speak to what old clients sent).
    #[allow(clippy::too_many_arguments)]
    pub fn authorization_version(
        &self,
        version: Version,
        method: &str,
        target: &str,
        body: &[u8],
        if_match: &str,
        if_none_match: &str,
        ts: u64,
        nonce: [u8; signed::NONCE_LEN],
    ) -> String {
        // The signature covers the path and the query apart.
        let (path, query) = target.split_once('?').unwrap_or((target, ""));
        let req = Request {
            method,
            path,
            query,
            body,
            if_match: if_match.trim(),
            if_none_match: if_none_match.trim(),
        };
        signed::sign_version(version, &self.key, &req, &self.sid, ts, nonce).to_header()
    }
}

/// `/kv/…` for `path`: each element in the CLI's text form for one
/// element, percent-encoded, as one URL segment (docs/REST.md, "Paths in
/// URLs"). The root is `/kv`.
pub fn kv_target(path: &Path) -> String {
    let mut out = String::from("/kv");
    for e in path.elems() {
        out.push('/');
        let text = Path::new(vec![e.clone()]).to_string();
        percent_encode(&text, &mut out);
    }
    out
}

/// `/user/NAME`, the name percent-encoded.
pub fn user_target(name: &str) -> String {
    let mut out = String::from("/user/");
    percent_encode(name, &mut out);
    out
}

/// `/session/SID` (a session id is letters, digits, `-` and `_`; anything
/// else is encoded rather than trusted).
pub fn session_target(sid: &str) -> String {
    let mut out = String::from("/session/");
    percent_encode(sid, &mut out);
    out
}

/// Appends `text` with every byte but the unreserved ones and `:`
/// percent-encoded.
fn percent_encode(text: &str, out: &mut String) {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    for b in text.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~' | b':') {
            out.push(char::from(b));
        } else {
            out.push('%');
            out.push(char::from(HEX[usize::from(b >> 4)]));
            out.push(char::from(HEX[usize::from(b & 0x0f)]));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use keycard_proto::Elem;

    /// docs/REST.md's worked example.
    #[test]
    fn the_worked_example() {
        let mut key = [0u8; 32];
        for (i, b) in key.iter_mut().enumerate() {
            *b = i as u8;
        }
        let mut nonce = [0u8; 16];
        for (i, b) in nonce.iter_mut().enumerate() {
            *b = i as u8;
        }
        let s = Session {
            sid: "k7f3Qm2".into(),
            key: SecretKey::new(key),
        };
        assert_eq!(
            s.authorization("GET", "/kv/app/config", b"", "", "", 1_700_000_000, nonce),
            "Keycard v=2, sid=k7f3Qm2, ts=1700000000, nonce=AAECAwQFBgcICQoLDA0ODw, \
             sig=IM-46Wlu_cqUPVzZI99GcS60Ref_bABBOZkf1LkiI-4"
        );
    }

    /// The signature the server checks: the query apart from the path,
    /// the preconditions in v2.
    #[test]
    fn what_is_signed() {
        let s = Session {
            sid: "abc".into(),
            key: SecretKey::new([3; 32]),
        };
        let header = s.authorization("put", "/kv/a?x=1", b"{}", " \"5\" ", "", 9, [1; 16]);
        let auth = signed::Authorization::parse(&header).expect("parses");
        let req = |if_match| Request {
            method: "PUT",
            path: "/kv/a",
            query: "x=1",
            body: b"{}",
            if_match,
            if_none_match: "",
        };
        assert!(signed::verify(&s.key, &req("\"5\""), &auth).is_ok());
        assert!(signed::verify(&s.key, &req("\"6\""), &auth).is_err());
    }

    #[test]
    fn targets() {
        let p = Path::new(vec![
            Elem::from("app"),
            Elem::Int(5),
            Elem::from("a.b"),
            Elem::from("a b/c?d%"),
            Elem::from(""),
            Elem::from("é"),
        ]);
        assert_eq!(kv_target(&p), "/kv/app/:5/a:.b/a:_b%2Fc%3Fd%25/:e/%C3%A9");
        assert_eq!(kv_target(&Path::root()), "/kv");
        assert_eq!(user_target("a b"), "/user/a%20b");
        assert_eq!(session_target("x/y"), "/session/x%2Fy");
        assert_eq!(
            Precondition::IfMatch(7).field(),
            Some(("if-match", "\"7\"".to_owned()))
        );
    }
}
