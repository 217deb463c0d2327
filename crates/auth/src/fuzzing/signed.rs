//! `signed_header`: the `Authorization: Keycard …` parser against a
//! reference parser written from DESIGN §4.1, the header's round trip,
//! and signatures over the parsed fields.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use sha2::{Digest, Sha256};

use crate::secret::SecretKey;
use crate::signed::{
    canonical, sign_version, verify, Authorization, Request, SignError, Version, MAX_SID, NONCE_LEN,
};

/// The header as DESIGN §4.1 describes it, parsed the plain way.
fn reference(value: &str) -> Option<Authorization> {
    if value.len() > 512 {
        return None;
    }
    let rest = value.strip_prefix("Keycard ")?;
    let mut fields: Vec<(&str, &str)> = Vec::new();
    for part in rest.split(',') {
        let part = part.trim();
        let eq = part.find('=')?;
        let (k, v) = (&part[..eq], &part[eq + 1..]);
        if !["v", "sid", "ts", "nonce", "sig"].contains(&k) || fields.iter().any(|(f, _)| *f == k) {
            return None;
        }
        fields.push((k, v));
    }
    let get = |k: &str| fields.iter().find(|(f, _)| *f == k).map(|(_, v)| *v);
    let version = match get("v") {
        None => Version::V1,
        Some("2") => Version::V2,
        Some(_) => return None,
    };
    let sid = get("sid")?;
    let sid_ok = (1..=MAX_SID).contains(&sid.len())
        && sid
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
    if !sid_ok {
        return None;
    }
    // At most 20 digits (u64's width), leading zeros or not.
    let ts = get("ts")?;
    if ts.is_empty() || ts.len() > 20 || !ts.chars().all(|c| c.is_ascii_digit()) {
        return None;
    }
    let ts: u64 = ts.parse().ok()?;
    let nonce: [u8; NONCE_LEN] = URL_SAFE_NO_PAD
        .decode(get("nonce")?)
        .ok()?
        .try_into()
        .ok()?;
    let sig: [u8; 32] = URL_SAFE_NO_PAD.decode(get("sig")?).ok()?.try_into().ok()?;
    Some(Authorization {
        version,
        sid: sid.to_owned(),
        ts,
        nonce,
        sig,
    })
}

/// The canonical string as DESIGN §4.1 lists its lines.
fn reference_canonical(version: Version, req: &Request<'_>, a: &Authorization) -> String {
    let body: String = Sha256::digest(req.body)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let mut lines = vec![
        req.method.to_ascii_uppercase(),
        req.path.to_owned(),
        req.query.to_owned(),
        a.sid.clone(),
        a.ts.to_string(),
        URL_SAFE_NO_PAD.encode(a.nonce),
        body,
    ];
    if version == Version::V2 {
        lines.push(req.if_match.to_owned());
        lines.push(req.if_none_match.to_owned());
    }
    lines.join("\n")
}

/// The target: the input's first line is the header's value, the other
/// lines (if any) the request's method, path, query, If-Match,
/// If-None-Match and body.
pub fn fuzz_signed_header(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let mut lines = text.split('\n');
    let header = lines.next().unwrap_or_default();
    let parsed = Authorization::parse(header);
    let expected = reference(header);
    match (&parsed, &expected) {
        (Ok(a), Some(b)) => assert_eq!(a, b, "the parser and the reference disagree"),
        (Err(SignError::Malformed(_)), None) => {}
        (got, want) => panic!("parser {got:?}, reference {want:?} for {header:?}"),
    }
    let Ok(auth) = parsed else {
        return;
    };
    // The header the client library writes parses back to the same fields.
    assert_eq!(Authorization::parse(&auth.to_header()).as_ref(), Ok(&auth));

    let mut field = || lines.next().unwrap_or_default();
    let (method, path, query) = (field(), field(), field());
    let (if_match, if_none_match) = (field(), field());
    let body = field();
    let req = Request {
        method,
        path,
        query,
        body: body.as_bytes(),
        if_match,
        if_none_match,
    };
    assert_eq!(
        canonical(auth.version, &req, &auth.sid, auth.ts, &auth.nonce),
        reference_canonical(auth.version, &req, &auth)
    );
    let key = SecretKey::new([7; 32]);
    let signed = sign_version(auth.version, &key, &req, &auth.sid, auth.ts, auth.nonce);
    let preconditions = !(if_match.is_empty() && if_none_match.is_empty());
    let verdict = verify(&key, &req, &signed);
    if auth.version == Version::V1 && preconditions {
        assert_eq!(verdict, Err(SignError::UnsignedPrecondition));
        return;
    }
    assert_eq!(verdict, Ok(()));
    // The parsed signature is (almost surely) not this one; any other
    // signature, or another key, fails.
    if auth.sig != signed.sig {
        assert_eq!(verify(&key, &req, &auth), Err(SignError::BadSignature));
    }
    let mut flipped = signed.clone();
    let bit = usize::from(auth.sig[0]) % 256;
    flipped.sig[bit / 8] ^= 1 << (bit % 8);
    assert_eq!(verify(&key, &req, &flipped), Err(SignError::BadSignature));
    let other = SecretKey::new([8; 32]);
    assert_eq!(verify(&other, &req, &signed), Err(SignError::BadSignature));
    // A signature binds its sid, ts and nonce.
    let mut moved = signed.clone();
    moved.ts ^= 1;
    assert_eq!(verify(&key, &req, &moved), Err(SignError::BadSignature));
}
